//! ICE over TCP (RFC 6544, passive candidates only): the TCP listeners next to the media UDP
//! sockets, one per shard, and one task per accepted connection. A connection carries
//! RFC 4571 frames (a 2-byte big-endian length, then one STUN, DTLS or SRTP packet); its
//! frames go to the shard whose listener accepted it, which places them like datagrams on its
//! UDP socket (remote address, then the first STUN request's ufrag, here or on another shard;
//! see `media::shard`). The engine stays sans-IO: it sees `Transport::Tcp` packets and emits
//! `Transport::Tcp` transmits, which any shard's task hands to the connection's write queue
//! through [`TcpWriters`].
//!
//! Bounds, all enforced here: a connection cap (the listeners' shared [`Gate`]); a connection
//! must open with a STUN binding request and be answered within [`ANSWER_TIMEOUT`] (the engine
//! answers only a request naming a peer's ufrag with a valid MESSAGE-INTEGRITY), and is closed
//! after [`IDLE_TIMEOUT`] without a frame (ICE consent checks come every few seconds); a frame
//! that is empty or longer than [`MAX_FRAME`] closes the connection; each connection's write
//! queue holds [`WRITE_QUEUE`] frames and a frame for a full queue is dropped (the shard loop
//! never waits on a slow reader); a shard's queue of received frames holds [`FRAME_QUEUE`] and
//! makes the connections' readers wait (TCP flow control reaches the sender).
#![allow(clippy::disallowed_methods)] // the runtime owns the clock and the tasks

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::runtime::listen::{Acceptor, Gate, Permit};

/// The longest frame taken: a packet the size of a full Ethernet MTU and then some (browsers
/// keep SRTP and DTLS records near 1200 bytes).
pub const MAX_FRAME: usize = 1600;
/// How long a new connection may take to send a STUN binding request the engine answers.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay silent before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames queued for writing per connection; more are dropped.
pub const WRITE_QUEUE: usize = 256;
/// Frames queued from the connections of one shard to its task.
pub const FRAME_QUEUE: usize = 1024;

/// Why a connection's byte stream is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A frame of length zero.
    Empty,
    /// A frame longer than [`MAX_FRAME`] (its announced length).
    TooLong(usize),
    /// The first frame is not a STUN binding request.
    NotStun,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Empty => write!(f, "empty frame"),
            FrameError::TooLong(n) => write!(f, "frame of {n} bytes (at most {MAX_FRAME})"),
            FrameError::NotStun => write!(f, "first frame is not a STUN binding request"),
        }
    }
}

/// Splits a connection's bytes into RFC 4571 frames. Sans-IO: bytes in, frames out.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: Vec<u8>,
    frames: u64,
}

impl Deframer {
    /// Bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame's payload, `None` until one is complete, or why the stream is
    /// refused (the connection should then be closed: framing cannot be recovered).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(header) = self.buf.get(..2) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > MAX_FRAME {
            return Err(FrameError::TooLong(len));
        }
        if self.buf.len() < 2 + len {
            return Ok(None);
        }
        let frame: Vec<u8> = self.buf.drain(..2 + len).skip(2).collect();
        if self.frames == 0 && !is_binding_request(&frame) {
            return Err(FrameError::NotStun);
        }
        self.frames += 1;
        Ok(Some(frame))
    }
}

/// A STUN binding request's header: type 0x0001, a length that fits, the magic cookie.
fn is_binding_request(data: &[u8]) -> bool {
    data.len() >= 20
        && data[..2] == [0x00, 0x01]
        && usize::from(u16::from_be_bytes([data[2], data[3]])) + 20 == data.len()
        && data[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

/// `payload` with its RFC 4571 length prefix; `None` if it cannot be framed (over 65535).
pub fn frame(payload: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(payload.len()).ok()?;
    let mut out = Vec::with_capacity(payload.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Some(out)
}

/// A frame on its way to a shard.
#[derive(Debug)]
pub struct TcpFrame {
    /// The connection's remote address.
    pub source: SocketAddr,
    /// Our advertised TCP address the connection reached.
    pub destination: SocketAddr,
    /// The frame's payload.
    pub data: Vec<u8>,
}

/// Every open connection's write queue, by (our advertised address, remote address): what a
/// transmit names. Touched when a connection opens or closes and when a shard's task first
/// writes to a connection, never per packet (see [`TcpWriters`]).
#[derive(Clone, Default)]
pub struct TcpConnections {
    inner: Arc<Mutex<HashMap<(SocketAddr, SocketAddr), Writer>>>,
}

/// A connection's write queue, and whether anything was queued on it yet.
#[derive(Clone)]
struct Writer {
    queue: mpsc::Sender<Vec<u8>>,
}

impl TcpConnections {
    fn lock(&self) -> MutexGuard<'_, HashMap<(SocketAddr, SocketAddr), Writer>> {
        // Each update is one statement: the map stays consistent after a panic elsewhere.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: (SocketAddr, SocketAddr)) -> Option<Writer> {
        self.lock().get(&key).cloned()
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().len()
    }
}

/// What became of a transmit handed to [`TcpWriters::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Queued on the connection.
    Queued,
    /// The connection's queue is full: dropped.
    Full,
    /// No such connection (closed): dropped.
    Gone,
}

/// One shard task's view of the connections' write queues: a cache in front of
/// [`TcpConnections`], so the shared map is locked once per connection, not per packet.
pub struct TcpWriters {
    shared: TcpConnections,
    cache: HashMap<(SocketAddr, SocketAddr), Writer>,
    /// The cache is swept of closed connections when it grows past this.
    sweep_at: usize,
}

/// The smallest cache size at which closed connections are swept out.
const SWEEP_MIN: usize = 64;

impl TcpWriters {
    /// A cache in front of `shared`.
    pub fn new(shared: TcpConnections) -> TcpWriters {
        TcpWriters {
            shared,
            cache: HashMap::new(),
            sweep_at: SWEEP_MIN,
        }
    }

    /// Queues `payload` (framed here) on the connection from `remote` to our `local` address;
    /// never waits.
    pub fn send(&mut self, local: SocketAddr, remote: SocketAddr, payload: &[u8]) -> Sent {
        let key = (local, remote);
        let writer = match self.cache.get(&key) {
            Some(w) => w,
            None => {
                let Some(w) = self.shared.get(key) else {
                    return Sent::Gone;
                };
                if self.cache.len() >= self.sweep_at {
                    // Connections that closed without a packet for them since.
                    self.cache.retain(|_, w| !w.queue.is_closed());
                    self.sweep_at = (self.cache.len() * 2).max(SWEEP_MIN);
                }
                self.cache.entry(key).or_insert(w)
            }
        };
        let Some(framed) = frame(payload) else {
            return Sent::Full;
        };
        match writer.queue.try_send(framed) {
            Ok(()) => Sent::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Sent::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.cache.remove(&key);
                Sent::Gone
            }
        }
    }
}

/// One shard's TCP listener and what its connections need.
pub struct TcpShard {
    /// The shard whose listener this is.
    pub shard: usize,
    /// The bound listener.
    pub listener: TcpListener,
    /// Its advertised addresses (the shard's passive TCP candidates).
    pub advertised: Vec<SocketAddr>,
}

/// Accepts connections on every shard's listener; each connection's frames go to its shard's
/// queue in `frames` (by shard index).
pub fn spawn(
    listeners: Vec<TcpShard>,
    frames: Vec<mpsc::Sender<TcpFrame>>,
    connections: TcpConnections,
    gate: Gate,
) {
    for setup in listeners {
        let Some(to_shard) = frames.get(setup.shard).cloned() else {
            continue;
        };
        let connections = connections.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let mut acceptor = Acceptor::new(setup.listener, "media TCP");
            loop {
                let (stream, remote) = acceptor.accept().await;
                // A dual-stack listener reports IPv4 peers as IPv4-mapped IPv6 addresses: the
                // engine and the candidates speak of them as IPv4.
                let remote = canonical(remote);
                let Some(permit) = gate.admit(remote.ip()) else {
                    tracing::debug!(%remote, "media TCP connection refused: connection cap reached");
                    continue;
                };
                let local = stream.local_addr().ok().map(canonical);
                let destination = advertised_for(local, remote, &setup.advertised);
                let connection = Connection {
                    shard: setup.shard,
                    remote,
                    destination,
                    to_shard: to_shard.clone(),
                    connections: connections.clone(),
                    permit,
                };
                tokio::spawn(connection.run(stream));
            }
        });
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Which advertised address a connection reached: its local address if advertised as such,
/// else the first of the remote's address family, else the first.
fn advertised_for(
    local: Option<SocketAddr>,
    remote: SocketAddr,
    advertised: &[SocketAddr],
) -> SocketAddr {
    if let Some(l) = local.filter(|l| advertised.contains(l)) {
        return l;
    }
    advertised
        .iter()
        .find(|a| a.is_ipv4() == remote.is_ipv4())
        .or_else(|| advertised.first())
        .copied()
        .or(local)
        .unwrap_or(remote)
}

struct Connection {
    shard: usize,
    remote: SocketAddr,
    destination: SocketAddr,
    to_shard: mpsc::Sender<TcpFrame>,
    connections: TcpConnections,
    permit: Permit,
}

/// What a connection moved, for its closing log line (shared by its reading and writing
/// halves, which run in one task).
#[derive(Default)]
struct Counts {
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// When a frame last came in, in milliseconds after the connection opened.
    last_in_ms: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Connection {
    async fn run(self, mut stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let key = (self.destination, self.remote);
        let (queue, mut outgoing) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        self.connections.lock().insert(key, Writer { queue });
        let counts = Counts::default();
        let why = self.pump(&mut stream, &mut outgoing, &counts).await;
        self.connections.lock().remove(&key);
        let (frames_in, frames_out) = (get(&counts.frames_in), get(&counts.frames_out));
        if frames_out > 0 {
            tracing::info!(
                shard = self.shard,
                remote = %self.remote,
                local = %self.destination,
                frames_in,
                frames_out,
                bytes_in = get(&counts.bytes_in),
                bytes_out = get(&counts.bytes_out),
                "ICE-TCP connection closed ({why}): {frames_in} frames in, {frames_out} frames out"
            );
        } else {
            tracing::debug!(shard = self.shard, remote = %self.remote, frames_in, "media TCP connection closed unanswered ({why})");
        }
    }

    /// Moves frames both ways until the connection ends; returns why it ended. Reading and
    /// writing run side by side: a reader waiting for room in the shard's queue does not
    /// hold up what the shard has to send.
    async fn pump(
        &self,
        stream: &mut TcpStream,
        outgoing: &mut mpsc::Receiver<Vec<u8>>,
        counts: &Counts,
    ) -> String {
        let (mut reader, mut writer) = stream.split();
        let opened = tokio::time::Instant::now();
        let read = async {
            let mut deframer = Deframer::default();
            let mut buf = vec![0u8; 4096];
            loop {
                let n = match reader.read(&mut buf).await {
                    Ok(0) => return "closed by the peer".to_owned(),
                    Ok(n) => n,
                    Err(e) => return format!("read error: {e}"),
                };
                deframer.push(&buf[..n]);
                loop {
                    match deframer.next_frame() {
                        Ok(Some(data)) => {
                            add(&counts.frames_in, 1);
                            add(&counts.bytes_in, data.len() as u64);
                            let ms = opened.elapsed().as_millis();
                            counts
                                .last_in_ms
                                .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
                            let frame = TcpFrame {
                                source: self.remote,
                                destination: self.destination,
                                data,
                            };
                            if self.to_shard.send(frame).await.is_err() {
                                return "media plane stopped".to_owned();
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return e.to_string(),
                    }
                }
            }
        };
        let write = async {
            while let Some(framed) = outgoing.recv().await {
                if get(&counts.frames_out) == 0 {
                    // Answered: established, never shed.
                    self.permit.head().done();
                    tracing::info!(shard = self.shard, remote = %self.remote, local = %self.destination, "ICE-TCP connection answered");
                }
                add(&counts.frames_out, 1);
                add(&counts.bytes_out, framed.len().saturating_sub(2) as u64);
                if let Err(e) = writer.write_all(&framed).await {
                    return format!("write error: {e}");
                }
            }
            "write queue closed".to_owned()
        };
        // Unanswered: the answer timeout from the start; answered: the idle timeout from the
        // last frame in.
        let timer = async {
            loop {
                let answered = get(&counts.frames_out) > 0;
                let deadline = if answered {
                    opened + Duration::from_millis(get(&counts.last_in_ms)) + IDLE_TIMEOUT
                } else {
                    opened + ANSWER_TIMEOUT
                };
                if tokio::time::Instant::now() >= deadline {
                    return if !answered {
                        "no STUN request answered in time".to_owned()
                    } else {
                        "idle".to_owned()
                    };
                }
                tokio::time::sleep_until(deadline).await;
            }
        };
        let head = self.permit.head();
        let shed = async {
            head.shed().await;
            "shed: the listener is full".to_owned()
        };
        tokio::select! {
            why = read => why,
            why = write => why,
            why = timer => why,
            why = shed => why,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request() -> Vec<u8> {
        let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        m.extend_from_slice(&[9u8; 12]);
        m
    }

    #[test]
    fn frames_split_across_reads_come_out_whole() {
        let mut d = Deframer::default();
        let mut bytes = frame(&binding_request()).unwrap();
        bytes.extend(frame(&[0x80; 100]).unwrap());
        for chunk in bytes.chunks(7) {
            d.push(chunk);
        }
        assert_eq!(d.next_frame(), Ok(Some(binding_request())));
        assert_eq!(d.next_frame(), Ok(Some(vec![0x80; 100])));
        assert_eq!(d.next_frame(), Ok(None));
    }

    #[test]
    fn garbage_is_refused_with_its_reason() {
        let mut d = Deframer::default();
        d.push(&[0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::Empty));
        let mut d = Deframer::default();
        d.push(&[0xff, 0xff, 1, 2, 3]);
        assert_eq!(d.next_frame(), Err(FrameError::TooLong(65535)));
        let mut d = Deframer::default();
        d.push(&frame(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap());
        assert_eq!(d.next_frame(), Err(FrameError::NotStun));
        let mut d = Deframer::default();
        d.push(&[0x00]);
        assert_eq!(d.next_frame(), Ok(None));
    }

    #[test]
    fn writes_queue_until_full_and_stop_when_the_connection_is_gone() {
        let shared = TcpConnections::default();
        let local: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let mut writers = TcpWriters::new(shared.clone());
        assert_eq!(writers.send(local, remote, b"x"), Sent::Gone);
        let (queue, mut rx) = mpsc::channel(2);
        shared.lock().insert((local, remote), Writer { queue });
        assert_eq!(writers.send(local, remote, b"ab"), Sent::Queued);
        assert_eq!(writers.send(local, remote, b"c"), Sent::Queued);
        assert_eq!(writers.send(local, remote, b"d"), Sent::Full);
        assert_eq!(rx.try_recv().unwrap(), vec![0, 2, b'a', b'b']);
        drop(rx);
        shared.lock().remove(&(local, remote));
        assert_eq!(writers.send(local, remote, b"e"), Sent::Gone);
        assert!(writers.cache.is_empty());
    }

    #[test]
    fn advertised_address_prefers_the_one_reached() {
        let a: SocketAddr = "203.0.113.7:3478".parse().unwrap();
        let b: SocketAddr = "[2001:db8::7]:3478".parse().unwrap();
        let remote6: SocketAddr = "[2001:db8::9]:5000".parse().unwrap();
        let remote4: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        assert_eq!(advertised_for(Some(b), remote4, &[a, b]), b);
        let local: SocketAddr = "10.0.0.5:3478".parse().unwrap();
        assert_eq!(advertised_for(Some(local), remote6, &[a, b]), b);
        assert_eq!(advertised_for(Some(local), remote4, &[a, b]), a);
    }
}
