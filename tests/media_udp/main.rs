//! Batched UDP I/O of the media shards (`runtime::media_udp`) on real loopback sockets: every
//! datagram arrives whole, once, in order per destination, whether the kernel coalesces them
//! (GSO on send, GRO on receive) or not, and an empty datagram is still one datagram.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use patchbay::runtime::media_udp::{MediaSocket, Receiver, Sender};
use tokio::net::UdpSocket;

async fn bound() -> MediaSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    MediaSocket::new(socket).expect("quinn-udp state")
}

fn addr(socket: &MediaSocket) -> SocketAddr {
    socket.local_addr().expect("local address")
}

/// Datagram `n` of a test: `len` bytes that say which one it is.
fn datagram(n: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| n.wrapping_add(i as u8)).collect()
}

/// Receives until `count` datagrams came in (the test fails by timing out otherwise), and
/// returns them with their sources and how many buffers (`recvmmsg` slots) held them.
async fn receive(socket: &MediaSocket, count: usize) -> (Vec<(SocketAddr, Vec<u8>)>, usize) {
    let mut receiver = Receiver::new(socket);
    let mut got = Vec::new();
    let mut slots = 0;
    let taken = tokio::time::timeout(Duration::from_secs(10), async {
        while got.len() < count {
            socket.readable().await.expect("readable");
            match receiver.recv(socket) {
                Ok(filled) => {
                    slots += filled;
                    got.extend(receiver.datagrams().map(|(a, d)| (a, d.to_vec())));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("receive failed: {e}"),
            }
        }
    })
    .await;
    assert!(
        taken.is_ok(),
        "only {} of {count} datagrams arrived",
        got.len()
    );
    (got, slots)
}

#[tokio::test]
async fn datagrams_to_two_destinations_arrive_whole_and_in_order() {
    let from = Arc::new(bound().await);
    let a = bound().await;
    let b = bound().await;
    // Interleaved, as a fan-out produces them: equal sizes (a GSO run each), a shorter last
    // one, then a longer one that must start a new run.
    let plan: Vec<(SocketAddr, Vec<u8>)> = vec![
        (addr(&a), datagram(1, 1000)),
        (addr(&b), datagram(2, 1000)),
        (addr(&a), datagram(3, 1000)),
        (addr(&b), datagram(4, 1000)),
        (addr(&a), datagram(5, 600)),
        (addr(&b), datagram(6, 1000)),
        (addr(&a), datagram(7, 1200)),
        (addr(&b), datagram(8, 0)),
    ];
    let mut sender = Sender::default();
    for (to, d) in &plan {
        sender.push(0, *to, d.clone());
    }
    let sends = sender.send_all(std::slice::from_ref(&from), 0).await;
    let want = |to: SocketAddr| -> Vec<(SocketAddr, Vec<u8>)> {
        plan.iter()
            .filter(|(t, _)| *t == to)
            .map(|(_, d)| (addr(&from), d.clone()))
            .collect()
    };
    let (at_a, _) = receive(&a, 4).await;
    let (at_b, _) = receive(&b, 4).await;
    assert_eq!(at_a, want(addr(&a)));
    assert_eq!(at_b, want(addr(&b)));
    if from.gso_segments() > 1 {
        // a: [1000, 1000, 600] then [1200]; b: [1000, 1000, 1000] then the empty one.
        assert_eq!(sends, 4, "GSO runs per destination");
    } else {
        assert_eq!(sends, plan.len(), "one send per datagram without GSO");
    }
}

#[tokio::test]
async fn a_coalesced_buffer_is_split_back_into_its_datagrams() {
    let from = Arc::new(bound().await);
    let to = bound().await;
    // Twenty equal datagrams and a short one to one destination: one GSO send where the kernel
    // has it, which loopback hands to a GRO socket as one buffer.
    let mut sent = Vec::new();
    let mut sender = Sender::default();
    for n in 0..20u8 {
        let d = datagram(n, 1100);
        sender.push(0, addr(&to), d.clone());
        sent.push(d);
    }
    let last = datagram(99, 37);
    sender.push(0, addr(&to), last.clone());
    sent.push(last);
    sender.send_all(std::slice::from_ref(&from), 0).await;
    let (got, slots) = receive(&to, sent.len()).await;
    let got: Vec<Vec<u8>> = got
        .into_iter()
        .map(|(source, d)| {
            assert_eq!(source, addr(&from));
            d
        })
        .collect();
    assert_eq!(got, sent);
    eprintln!(
        "gso segments {}, gro {}: {} datagrams in {slots} buffers",
        from.gso_segments(),
        to.gro(),
        sent.len()
    );
}

#[tokio::test]
async fn a_datagram_to_nowhere_does_not_stop_the_others() {
    let from = Arc::new(bound().await);
    let to = bound().await;
    let mut sender = Sender::default();
    // Port 0 is not a destination: the kernel refuses that send, the next ones still go.
    sender.push(0, "127.0.0.1:0".parse().expect("addr"), datagram(1, 100));
    sender.push(0, addr(&to), datagram(2, 100));
    sender.push(0, addr(&to), datagram(3, 50));
    sender.send_all(std::slice::from_ref(&from), 0).await;
    let (got, _) = receive(&to, 2).await;
    let got: Vec<Vec<u8>> = got.into_iter().map(|(_, d)| d).collect();
    assert_eq!(got, vec![datagram(2, 100), datagram(3, 50)]);
}
