//! Batched UDP I/O on a media shard's socket (issue #13), through `quinn-udp`. This module owns
//! each socket's kernel-feature state ([`MediaSocket`]), the receive buffers of one shard
//! ([`Receiver`]) and the datagrams a shard's flush has gathered ([`Sender`]); what the
//! datagrams mean is the shard's (`runtime::media` feeds them in and takes them out).
//!
//! Receiving: one `recvmmsg` takes up to [`quinn_udp::BATCH_SIZE`] datagrams. Where the kernel
//! has UDP GRO, one buffer may hold several datagrams of one source coalesced at a fixed
//! stride; [`Receiver::datagrams`] splits them again, so the shard always sees one datagram at
//! a time with its source address.
//!
//! Sending: the datagrams of one flush are grouped by socket and destination (their order
//! towards one destination is kept; between destinations it does not matter to UDP). Where
//! the kernel has UDP GSO, a run of datagrams to one destination with equal sizes (the last
//! may be shorter) goes as one send with a segment size; anything else goes as one `sendmsg`
//! per datagram (`quinn-udp` 0.5 has no `sendmmsg`, and this crate has no unsafe code to call
//! it). A failed datagram is logged at debug and the others still go; a full socket buffer
//! waits for the socket to be writable, as before. `quinn-udp` stops using GSO on a socket for
//! good after a send fails with EIO or EINVAL (its sign of a driver without GSO); a run that
//! failed that way goes again one datagram at a time.
//!
//! `quinn-udp` also turns on, for each socket: IP_PKTINFO (the destination address of each
//! datagram, unused here), IP_RECVTOS (ECN, unused), UDP_GRO, and "don't fragment" with
//! `IP_PMTUDISC_PROBE` (a datagram larger than the interface MTU fails instead of going out in
//! fragments; the engine's packets stay far below it).

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState, BATCH_SIZE};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// One bound media socket and what `quinn-udp` knows of the kernel features it may use.
pub struct MediaSocket {
    socket: UdpSocket,
    state: UdpSocketState,
}

impl MediaSocket {
    /// Sets the socket up for batched I/O (see the module docs for the options it turns on).
    pub fn new(socket: UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        Ok(Self { socket, state })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Waits until the socket has something to read (cancel-safe).
    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Whether the kernel coalesces received datagrams (UDP GRO).
    pub fn gro(&self) -> bool {
        self.state.gro_segments() > 1
    }

    /// How many datagrams one GSO send may carry (1: no GSO).
    pub fn gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Sends one transmit (one datagram, or several of one size with `segment_size`); on a
    /// full socket buffer, waits until the socket is writable and tries again.
    async fn send(&self, transmit: &quinn_udp::Transmit<'_>) -> io::Result<()> {
        let attempt = || {
            self.state
                .try_send(UdpSockRef::from(&self.socket), transmit)
        };
        match self.socket.try_io(Interest::WRITABLE, attempt) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.socket.async_io(Interest::WRITABLE, attempt).await
            }
            other => other,
        }
    }
}

/// The largest datagram taken whole without GRO (a longer one is cut to this, as before).
const DATAGRAM_BUFFER: usize = 2048;

/// Room for one GRO buffer: the largest UDP payload, which bounds what the kernel coalesces.
const GRO_BUFFER: usize = u16::MAX as usize;

/// One shard's receive buffers: [`BATCH_SIZE`] slots, each one datagram or one GRO buffer.
pub struct Receiver {
    buffers: Vec<u8>,
    slot: usize,
    meta: [RecvMeta; BATCH_SIZE],
    /// Slots the last receive filled.
    filled: usize,
}

impl Receiver {
    /// Buffers sized for `socket` (GRO slots are 64 KiB: with 32 slots, 2 MiB of address
    /// space per shard, of which only the pages the kernel writes become resident).
    pub fn new(socket: &MediaSocket) -> Self {
        let slot = if socket.gro() {
            GRO_BUFFER
        } else {
            DATAGRAM_BUFFER
        };
        Self {
            buffers: vec![0; slot * BATCH_SIZE],
            slot,
            meta: [RecvMeta::default(); BATCH_SIZE],
            filled: 0,
        }
    }

    /// One `recvmmsg` on `socket`, without waiting: how many slots it filled, or `WouldBlock`
    /// when nothing is queued (which also clears the socket's readiness).
    pub fn recv(&mut self, socket: &MediaSocket) -> io::Result<usize> {
        self.filled = 0;
        let mut slots = self.buffers.chunks_mut(self.slot);
        let mut bufs: [IoSliceMut<'_>; BATCH_SIZE] =
            std::array::from_fn(|_| IoSliceMut::new(slots.next().unwrap_or(&mut [])));
        let meta = &mut self.meta;
        let filled = socket.socket.try_io(Interest::READABLE, || {
            socket
                .state
                .recv(UdpSockRef::from(&socket.socket), &mut bufs, meta)
        })?;
        self.filled = filled.min(BATCH_SIZE);
        Ok(self.filled)
    }

    /// The datagrams the last [`Receiver::recv`] took, each with its source: a GRO buffer is
    /// split at its stride (the last datagram of it may be shorter).
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.meta[..self.filled]
            .iter()
            .zip(self.buffers.chunks(self.slot))
            .flat_map(|(meta, slot)| {
                let data = &slot[..meta.len.min(slot.len())];
                // Without GRO on this buffer the stride is its length: one datagram. An empty
                // datagram is still one.
                let stride = match meta.stride {
                    0 => data.len(),
                    s => s.min(data.len()),
                }
                .max(1);
                let count = data.len().div_ceil(stride).max(1);
                (0..count).map(move |i| {
                    let from = i * stride;
                    (meta.addr, &data[from..(from + stride).min(data.len())])
                })
            })
    }
}

/// Bytes one GSO send may carry: the largest UDP payload over IPv6 (IPv4 allows 8 more).
const GSO_MAX_BYTES: usize = 65_527;

/// One datagram waiting in a flush.
struct Pending<T> {
    socket: usize,
    destination: SocketAddr,
    datagram: T,
}

/// The datagrams of one flush, and the scratch space that joins a GSO run into one buffer.
/// Kept between flushes so a flush allocates nothing of its own once warmed up.
pub struct Sender<T> {
    pending: Vec<Pending<T>>,
    scratch: Vec<u8>,
}

impl<T: AsRef<[u8]>> Default for Sender<T> {
    fn default() -> Self {
        Self {
            pending: Vec::new(),
            scratch: Vec::new(),
        }
    }
}

impl<T: AsRef<[u8]>> Sender<T> {
    /// Queues `datagram` for `destination` from socket number `socket` (an index into the
    /// slice [`Sender::send_all`] gets).
    pub fn push(&mut self, socket: usize, destination: SocketAddr, datagram: T) {
        self.pending.push(Pending {
            socket,
            destination,
            datagram,
        });
    }

    /// Sends every queued datagram from its socket (`own` when its index names none), in runs
    /// as the module docs say. Returns how many sends (system calls that succeeded or failed,
    /// a GSO run counting once) it made.
    pub async fn send_all(&mut self, sockets: &[std::sync::Arc<MediaSocket>], own: usize) -> usize {
        if self.pending.is_empty() {
            return 0;
        }
        let gso = sockets.iter().any(|s| s.gso_segments() > 1);
        if gso && self.pending.len() > 1 {
            // Stable: each destination's datagrams keep their order.
            self.pending.sort_by_key(|p| (p.socket, p.destination));
        }
        let Self { pending, scratch } = self;
        let mut sends = 0;
        let mut start = 0;
        while start < pending.len() {
            let first = &pending[start];
            let Some(socket) = sockets.get(first.socket).or_else(|| sockets.get(own)) else {
                start += 1;
                continue;
            };
            let end = run_end(pending, start, socket.gso_segments());
            sends += 1;
            if end - start == 1 {
                send_logged(socket, first.destination, first.datagram.as_ref(), None).await;
            } else {
                let size = first.datagram.as_ref().len();
                scratch.clear();
                for p in &pending[start..end] {
                    scratch.extend_from_slice(p.datagram.as_ref());
                }
                let sent = send_logged(socket, first.destination, scratch, Some(size)).await;
                if !sent && socket.gso_segments() <= 1 {
                    // The kernel or the driver refused GSO (`quinn-udp` then stops using it):
                    // the run goes again one datagram at a time.
                    for p in &pending[start..end] {
                        sends += 1;
                        send_logged(socket, p.destination, p.datagram.as_ref(), None).await;
                    }
                }
            }
            start = end;
        }
        // The allocation stays for the next flush.
        pending.clear();
        sends
    }
}

/// Where the run starting at `start` ends: the datagrams after it to the same socket and
/// destination with its size (the last may be shorter), at most `max_segments` of them and
/// [`GSO_MAX_BYTES`] in all.
fn run_end<T: AsRef<[u8]>>(pending: &[Pending<T>], start: usize, max_segments: usize) -> usize {
    let first = &pending[start];
    let size = first.datagram.as_ref().len();
    let mut end = start + 1;
    let mut total = size;
    if size == 0 {
        return end;
    }
    while end < pending.len() && end - start < max_segments {
        let next = &pending[end];
        let len = next.datagram.as_ref().len();
        if next.socket != first.socket
            || next.destination != first.destination
            || len == 0
            || len > size
            || total + len > GSO_MAX_BYTES
        {
            break;
        }
        end += 1;
        total += len;
        if len < size {
            break;
        }
    }
    end
}

/// Sends one datagram, or a GSO run with `segment_size`, and logs a failure at debug (a failed
/// datagram never stops the pump). Whether it went.
async fn send_logged(
    socket: &MediaSocket,
    destination: SocketAddr,
    contents: &[u8],
    segment_size: Option<usize>,
) -> bool {
    let transmit = quinn_udp::Transmit {
        destination,
        ecn: None,
        contents,
        segment_size,
        src_ip: None,
    };
    match socket.send(&transmit).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, to = %destination, bytes = contents.len(), ?segment_size, "media send failed");
            false
        }
    }
}
