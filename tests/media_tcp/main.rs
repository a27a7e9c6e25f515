//! The ICE-TCP listener through real ports (`runtime::media_tcp`): every shard listens on TCP
//! at its UDP port by default and advertises it; a connection that does not open with an
//! RFC 4571 frame holding a STUN binding request (garbage, an empty frame, an oversized frame)
//! is closed at once, without a byte in reply; one whose binding request names no peer is
//! never answered and is closed after the answer timeout; `--media-tcp-listen off` listens on
//! nothing. Media over ICE-TCP itself is proven in Chromium (`tests/interop/browser/icetcp.test.mjs`).
//!
//! Run with `cargo test --test media_tcp`.
#![allow(clippy::disallowed_methods)] // a test drives a real server in real time

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use patchbay::app::App;
use patchbay::config::ServeConfig;
use patchbay::reach::MediaTcpListen;
use patchbay::runtime::media_tcp::{ANSWER_TIMEOUT, MAX_FRAME};
use patchbay_testkit::db::sqlite_url;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Bound on waiting for the server to close a connection it refuses at once: far below the
/// answer timeout, far above any scheduling delay.
const PROMPT: Duration = Duration::from_secs(5);

struct Server {
    udp: Vec<Vec<SocketAddr>>,
    tcp: Vec<Vec<SocketAddr>>,
    _stop: oneshot::Sender<()>,
}

async fn start(tcp: MediaTcpListen) -> Server {
    let mut config = ServeConfig::for_database(&sqlite_url());
    config.media_shards = Some(2);
    config.media_tcp_listen = tcp;
    let app = App::build(&config).await.expect("build app");
    let udp = app.addresses().media.clone();
    let tcp = app.addresses().media_tcp.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Server {
        udp,
        tcp,
        _stop: stop,
    }
}

/// What the server sends before it closes the connection, and when it closed it (`None`: still
/// open at `deadline`).
async fn read_until_closed(
    stream: &mut TcpStream,
    deadline: Duration,
) -> (Vec<u8>, Option<Instant>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let end = Instant::now() + deadline;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(Instant::now())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, None),
        }
    }
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(payload.len())
        .expect("short")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(payload);
    out
}

/// A STUN binding request (RFC 5389 header, USERNAME "nobody:x") naming no peer of the server.
fn binding_request_for_nobody() -> Vec<u8> {
    let username = b"nobody:x";
    let mut attr = vec![0x00, 0x06, 0x00, username.len() as u8];
    attr.extend_from_slice(username);
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    m.extend_from_slice(&[7u8; 12]);
    m.extend_from_slice(&attr);
    m
}

#[tokio::test]
async fn each_shard_listens_on_tcp_at_its_udp_port() {
    // The system picks the UDP ports; when the same TCP port happens to be taken (by another
    // test's connection), the server falls back to any TCP port, as documented: start again,
    // a few times, before calling it a failure.
    let mut server = start(MediaTcpListen::Same).await;
    for _ in 0..4 {
        if server.udp == server.tcp {
            break;
        }
        server = start(MediaTcpListen::Same).await;
    }
    assert_eq!(server.tcp.len(), 2, "one TCP listener per shard");
    for (udp, tcp) in server.udp.iter().zip(&server.tcp) {
        assert_eq!(udp, tcp, "TCP candidates on the UDP addresses and ports");
        TcpStream::connect(tcp[0])
            .await
            .expect("the TCP candidate accepts");
    }
}

#[tokio::test]
async fn garbage_is_refused_at_once_without_a_reply() {
    let server = start(MediaTcpListen::Same).await;
    let addr = server.tcp[0][0];
    let oversized = {
        let mut b = u16::try_from(MAX_FRAME + 1)
            .expect("fits")
            .to_be_bytes()
            .to_vec();
        b.extend(std::iter::repeat_n(0u8, MAX_FRAME + 1));
        b
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "not STUN (an HTTP request)",
            framed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ),
        (
            "not STUN (a DTLS-looking record)",
            framed(&[
                0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]),
        ),
        ("a STUN response, not a request", {
            let mut m = binding_request_for_nobody();
            m[1] = 0x01;
            m[0] = 0x01;
            framed(&m)
        }),
        ("an empty frame", vec![0, 0]),
        ("an oversized frame", oversized),
        ("the largest length", vec![0xff, 0xff, 1, 2, 3]),
    ];
    for (what, bytes) in cases {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        // The server may close while the rest is still being written.
        let _ = stream.write_all(&bytes).await;
        let (got, closed) = read_until_closed(&mut stream, PROMPT).await;
        assert!(closed.is_some(), "{what}: the connection stayed open");
        assert!(got.is_empty(), "{what}: the server replied {got:?}");
    }
    // The listener still serves: a well-formed request is taken (the connection stays open).
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(&framed(&binding_request_for_nobody()))
        .await
        .expect("write");
    let (got, closed) = read_until_closed(&mut stream, Duration::from_millis(500)).await;
    assert_eq!(
        (got, closed),
        (Vec::new(), None),
        "a binding request is not refused as garbage"
    );
}

#[tokio::test]
async fn a_request_for_no_peer_is_never_answered_and_times_out() {
    let server = start(MediaTcpListen::Same).await;
    let mut stream = TcpStream::connect(server.tcp[1][0]).await.expect("connect");
    let opened = Instant::now();
    // Split across writes: the framing does not depend on segment boundaries.
    let bytes = framed(&binding_request_for_nobody());
    let (a, b) = bytes.split_at(5);
    stream.write_all(a).await.expect("write");
    stream.flush().await.expect("flush");
    stream.write_all(b).await.expect("write");
    let (got, closed) = read_until_closed(&mut stream, ANSWER_TIMEOUT * 4).await;
    let closed = closed.expect("closed after the answer timeout");
    assert!(
        got.is_empty(),
        "a request naming no peer was answered: {got:?}"
    );
    assert!(
        closed.duration_since(opened) >= ANSWER_TIMEOUT,
        "closed before the answer timeout: {:?}",
        closed.duration_since(opened)
    );
}

#[tokio::test]
async fn off_listens_on_nothing() {
    let server = start(MediaTcpListen::Off).await;
    assert!(
        server.tcp.is_empty(),
        "TCP candidates with ICE-TCP off: {:?}",
        server.tcp
    );
    let udp = server.udp[0][0];
    assert!(
        TcpStream::connect(udp).await.is_err(),
        "something accepts TCP on the media port {udp}"
    );
}
