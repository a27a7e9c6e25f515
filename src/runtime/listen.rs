//! What every TCP listener shares: the connection gate (caps on concurrent connections per
//! listener and per source network, with a small reserve kept for health checks, and the
//! shedding of connections still in their head when the listener is full) and an accept loop
//! that backs off when `accept` fails (out of descriptors) instead of spinning.
//!
//! The gate counts a connection from `accept` until its socket is dropped: a [`Permit`] travels
//! with the socket (inside the I/O type handed to the protocol), so a connection upgraded to a
//! WebSocket keeps counting until the WebSocket ends.
//!
//! How the places are shared out, so that a few addresses cannot fill a listener:
//! - A source is a network: an IPv4 /24, an IPv6 /64 (one site's or one host's usual share).
//! - A source may hold up to the listener's per-source cap while the listener is less than half
//!   full; beyond that, at most an eighth of the listener's total (its fair share under
//!   pressure).
//! - When the listener is full, a newcomer within its share takes the place of the oldest
//!   connection still in its head (a request head, a SIP message, an ICE-TCP connection not yet
//!   answered): that one is shed, the established ones (devices, calls, requests under way)
//!   never are. A slow client therefore holds a place only until others need it.
//! - The health-check reserve is shared too: one source takes at most an eighth of it.
#![allow(clippy::disallowed_methods)] // the runtime owns the accept loops' clock and pauses

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// How many connections a listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Concurrent connections on the listener, beyond which only the reserve is served.
    pub max_total: usize,
    /// Concurrent connections from one source network (IPv4 /24, IPv6 /64) while the listener
    /// is less than half full; beyond half, a source holds at most an eighth of `max_total`.
    pub max_per_source: usize,
    /// Connections taken beyond either cap and served restricted (health checks only); one
    /// source takes at most an eighth of it.
    pub reserve: usize,
}

impl ConnectionLimits {
    /// The most a source may hold when `open` connections are open on the listener.
    fn share(&self, open: usize) -> usize {
        if open < self.max_total / 2 {
            self.max_per_source
        } else {
            self.max_per_source.min((self.max_total / 8).max(1))
        }
    }

    /// The most of the reserve one source may hold.
    fn reserve_share(&self) -> usize {
        (self.reserve / 8).max(1)
    }
}

/// How a connection was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Within the caps: served normally.
    Full,
    /// Beyond a cap, within the reserve: served restricted.
    Reserve,
}

/// The addresses of the other serving processes on the database (issue 20), kept up to date
/// by the heartbeat: a process carrying devices to this one opens one connection per device
/// from its own address, so its connections count toward the listener's total only, not
/// toward a source's share. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Peers(Arc<std::sync::RwLock<std::collections::HashSet<IpAddr>>>);

impl Peers {
    /// The peers are now `addresses`.
    pub fn replace(&self, addresses: impl IntoIterator<Item = IpAddr>) {
        let set = addresses.into_iter().collect();
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = set;
    }

    /// Whether `address` is a peer's.
    pub fn contains(&self, address: IpAddr) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&address)
    }
}

/// Counts a listener's open connections.
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<Mutex<Counts>>,
    limits: ConnectionLimits,
    name: &'static str,
    peers: Peers,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    reserve: usize,
    per_source: HashMap<IpAddr, usize>,
    reserve_per_source: HashMap<IpAddr, usize>,
    /// Connections still in their head, oldest first, with the signal that sheds each.
    heads: BTreeMap<u64, Arc<Notify>>,
    admitted: u64,
}

/// The right of one connection to be open; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    head: Head,
    source: IpAddr,
    admission: Admission,
    /// From another serving process: counted in the total only, not in its source's share.
    peer: bool,
}

/// A connection's place in the queue of connections that may be shed: the protocol says when
/// its head is complete, and stops serving it when it is shed.
#[derive(Debug, Clone)]
pub struct Head {
    gate: Gate,
    id: u64,
    shed: Arc<Notify>,
}

impl Head {
    /// The connection's head is complete (a request or message arrived, or an ICE-TCP check
    /// was answered): it is established and never shed. Idempotent.
    pub fn done(&self) {
        self.gate.counts().heads.remove(&self.id);
    }

    /// Completes when the connection is shed to make room for another; the protocol then
    /// closes it. A connection shed before anyone waited is told at the first wait.
    pub async fn shed(&self) {
        self.shed.notified().await
    }
}

impl Permit {
    /// How the connection was let in.
    pub fn admission(&self) -> Admission {
        self.admission
    }

    /// The connection's head: tell it when the head is complete, wait on it to be shed.
    pub fn head(&self) -> Head {
        self.head.clone()
    }
}

impl Gate {
    /// A gate admitting connections within `limits`; `name` labels its metrics and logs.
    pub fn new(name: &'static str, limits: ConnectionLimits) -> Gate {
        Gate {
            inner: Arc::new(Mutex::new(Counts::default())),
            limits,
            name,
            peers: Peers::default(),
        }
    }

    /// The same gate, where connections from `peers` count toward the total only.
    pub fn with_peers(mut self, peers: Peers) -> Gate {
        self.peers = peers;
        self
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // The counts stay consistent even if a holder panicked: each update is one statement.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lets a connection from `source` in, or `None` when even the reserve is used up (or
    /// this source's share of it). A newcomer within its share when the listener is full
    /// sheds the oldest connection still in its head.
    pub fn admit(&self, source: IpAddr) -> Option<Permit> {
        let peer = self.peers.contains(source);
        let source = source_key(source);
        let mut counts = self.counts();
        let from_source = counts.per_source.get(&source).copied().unwrap_or(0);
        let within_share = peer || from_source < self.limits.share(counts.total);
        let admission = if within_share && counts.total < self.limits.max_total {
            Admission::Full
        } else if within_share {
            match counts.heads.pop_first() {
                Some((_, victim)) => {
                    // Its place passes to the newcomer; its permit is dropped when the
                    // protocol has closed it.
                    victim.notify_one();
                    metrics::counter!("patchbay_connections_shed_total", "listener" => self.name)
                        .increment(1);
                    Admission::Full
                }
                None => self.reserve_or_refuse(&counts, source)?,
            }
        } else {
            self.reserve_or_refuse(&counts, source)?
        };
        match admission {
            Admission::Full => {
                counts.total += 1;
                if !peer {
                    *counts.per_source.entry(source).or_default() += 1;
                }
            }
            Admission::Reserve => {
                counts.reserve += 1;
                *counts.reserve_per_source.entry(source).or_default() += 1;
            }
        }
        counts.admitted += 1;
        let id = counts.admitted;
        let shed = Arc::new(Notify::new());
        if admission == Admission::Full {
            counts.heads.insert(id, shed.clone());
        }
        Some(Permit {
            head: Head {
                gate: self.clone(),
                id,
                shed,
            },
            source,
            admission,
            peer,
        })
    }

    fn reserve_or_refuse(&self, counts: &Counts, source: IpAddr) -> Option<Admission> {
        let from_source = counts.reserve_per_source.get(&source).copied().unwrap_or(0);
        (counts.reserve < self.limits.reserve && from_source < self.limits.reserve_share())
            .then_some(Admission::Reserve)
    }

    /// Connections open now (full and reserve).
    pub fn open(&self) -> usize {
        let counts = self.counts();
        counts.total + counts.reserve
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.head.gate.counts();
        counts.heads.remove(&self.head.id);
        let per_source = match self.admission {
            Admission::Full => {
                counts.total = counts.total.saturating_sub(1);
                if self.peer {
                    return;
                }
                &mut counts.per_source
            }
            Admission::Reserve => {
                counts.reserve = counts.reserve.saturating_sub(1);
                &mut counts.reserve_per_source
            }
        };
        if let Some(n) = per_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_source.remove(&self.source);
            }
        }
    }
}

/// The network a per-source cap counts: IPv4 by its /24, IPv6 by its /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(by_24(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(by_24(v4)),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn by_24(v4: std::net::Ipv4Addr) -> std::net::Ipv4Addr {
    let [a, b, c, _] = v4.octets();
    std::net::Ipv4Addr::new(a, b, c, 0)
}

/// When a connection last moved bytes.
#[derive(Debug, Clone)]
pub struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: Arc<AtomicU64>,
}

impl Activity {
    /// A clock started now.
    pub fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records bytes moved now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// When bytes last moved.
    pub fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// The first pause after a failed `accept`; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// The longest pause between `accept` attempts while they keep failing.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one warning per this interval about failed accepts (with their count).
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Accepts connections on one listener, pausing (5 ms doubling to 1 s) while `accept` fails:
/// out of descriptors, the pending connection stays in the kernel's queue and accepting again
/// at once would spin a core. Failures are logged at most once per 10 s, with their count.
pub struct Acceptor {
    listener: TcpListener,
    name: &'static str,
    backoff: Duration,
    failures: u64,
    last_warning: Option<Instant>,
}

impl Acceptor {
    /// Accepts on `listener`, naming it `name` in its log lines.
    pub fn new(listener: TcpListener, name: &'static str) -> Acceptor {
        Acceptor {
            listener,
            name,
            backoff: FIRST_BACKOFF,
            failures: 0,
            last_warning: None,
        }
    }

    /// The next connection.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    self.backoff = FIRST_BACKOFF;
                    return accepted;
                }
                Err(e) => {
                    self.failures += 1;
                    let now = Instant::now();
                    if self
                        .last_warning
                        .is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL)
                    {
                        tracing::warn!(
                            listener = self.name,
                            error = %e,
                            failures = self.failures,
                            "accept failed; backing off"
                        );
                        self.last_warning = Some(now);
                        self.failures = 0;
                    }
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Descriptors the process may hold besides its listeners' connections: the database pool,
/// media and RTP sockets, files, and webhook deliveries (at most their concurrency plus 64
/// idle connections, 96 by default).
const DESCRIPTOR_HEADROOM: u64 = 256;

/// A default cap for a listener: `share` of the descriptors the process may open (its soft
/// `RLIMIT_NOFILE`, less a headroom), at least 16 and at most `ceiling`.
pub fn descriptor_share(share: f64, ceiling: usize) -> usize {
    let limit = open_files_limit().unwrap_or(1024);
    let usable = limit.saturating_sub(DESCRIPTOR_HEADROOM) as f64 * share;
    (usable as usize).clamp(16, ceiling)
}

/// The soft limit on open files, read from `/proc/self/limits` (Linux); `None` elsewhere or
/// when unlimited.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    fn limits(max_total: usize, max_per_source: usize, reserve: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_total,
            max_per_source,
            reserve,
        }
    }

    fn established(permit: Permit) -> Permit {
        permit.head().done();
        permit
    }

    #[test]
    fn a_peer_process_is_capped_by_the_total_only() {
        let peers = Peers::default();
        let gate = Gate::new("test", limits(16, 2, 0)).with_peers(peers.clone());
        let mut open = Vec::new();
        for _ in 0..2 {
            open.push(established(gate.admit(ip("10.0.1.1")).expect("room")));
        }
        assert!(gate.admit(ip("10.0.1.1")).is_none(), "a source's cap");
        peers.replace([ip("10.0.1.1")]);
        open.clear();
        for _ in 0..10 {
            let p = gate.admit(ip("10.0.1.1")).expect("a peer: the total only");
            assert_eq!(p.admission(), Admission::Full);
            open.push(established(p));
        }
        // The peer's connections do not count in its network's share: a balancer beside it
        // (same /24) still gets its own, and no more.
        for _ in 0..2 {
            open.push(established(
                gate.admit(ip("10.0.1.2"))
                    .expect("not crowded out by the peer"),
            ));
        }
        assert!(
            gate.admit(ip("10.0.1.2")).is_none(),
            "another address of the peer's network is no peer: its share holds"
        );
        for _ in 0..4 {
            open.push(established(gate.admit(ip("10.0.1.1")).expect("a peer")));
        }
        assert!(gate.admit(ip("10.0.1.1")).is_none(), "the total holds");
        peers.replace([]);
        drop(open);
        for _ in 0..2 {
            gate.admit(ip("10.0.1.1")).map(established).expect("room");
        }
    }

    #[test]
    fn a_source_holds_its_cap_while_there_is_room_then_its_share() {
        let gate = Gate::new("test", limits(16, 10, 8));
        let mut open = Vec::new();
        for _ in 0..8 {
            open.push(established(gate.admit(ip("10.0.1.1")).expect("room")));
        }
        // Half full: 10.0.1.0/24 already holds more than its share (16 / 8 = 2).
        let restricted = gate.admit(ip("10.0.1.77")).expect("the reserve");
        assert_eq!(restricted.admission(), Admission::Reserve);
        assert!(
            gate.admit(ip("10.0.1.1")).is_none(),
            "one source takes one eighth of the reserve"
        );
        for source in ["10.0.2.1", "10.0.3.1", "10.0.4.1", "10.0.5.1"] {
            for _ in 0..2 {
                let p = gate.admit(ip(source)).expect("within the share");
                assert_eq!(p.admission(), Admission::Full);
                open.push(established(p));
            }
            let over = gate.admit(ip(source)).expect("the reserve");
            assert_eq!(over.admission(), Admission::Reserve);
            open.push(over);
        }
        // Full, and nobody in a head to shed: the reserve, then nothing once it is used up.
        assert_eq!(gate.open(), 16 + 5);
        let reserve: Vec<Permit> = (6..=8)
            .map(|n| gate.admit(ip(&format!("10.0.{n}.1"))).expect("reserve"))
            .collect();
        assert!(reserve.iter().all(|p| p.admission() == Admission::Reserve));
        assert!(gate.admit(ip("10.0.9.1")).is_none());
        drop((open, reserve, restricted));
        assert_eq!(gate.open(), 0);
        assert_eq!(
            gate.admit(ip("10.0.1.1")).map(|p| p.admission()),
            Some(Admission::Full)
        );
    }

    #[test]
    fn a_full_listener_sheds_the_oldest_connection_still_in_its_head() {
        use futures_util::FutureExt;
        let gate = Gate::new("test", limits(4, 4, 0));
        let slow1 = gate.admit(ip("10.0.1.1")).expect("slow 1");
        let slow2 = gate.admit(ip("10.0.1.2")).expect("slow 2");
        let device = established(gate.admit(ip("10.0.2.1")).expect("device"));
        let slow3 = gate.admit(ip("10.0.3.1")).expect("slow 3");
        let newcomer = gate.admit(ip("10.0.4.1")).expect("room made");
        assert_eq!(newcomer.admission(), Admission::Full);
        assert!(
            slow1.head().shed().now_or_never().is_some(),
            "the oldest head is shed"
        );
        assert!(slow2.head().shed().now_or_never().is_none());
        // 10.0.1.0/24 holds 2, more than its share of a full listener (4 / 8 → 1): it cannot
        // shed others to come back.
        assert!(gate.admit(ip("10.0.1.3")).is_none());
        let _second = gate.admit(ip("10.0.5.1")).expect("sheds slow 2");
        assert!(slow2.head().shed().now_or_never().is_some());
        assert!(device.head().shed().now_or_never().is_none());
        let _third = gate.admit(ip("10.0.6.1")).expect("sheds slow 3");
        assert!(slow3.head().shed().now_or_never().is_some());
        newcomer.head().done();
        let _fourth = gate
            .admit(ip("10.0.7.1"))
            .expect("sheds the second newcomer");
        assert!(
            device.head().shed().now_or_never().is_none(),
            "an established connection is never shed"
        );
        drop((slow1, slow2, slow3));
        assert_eq!(gate.open(), 5, "the newcomers and the device");
    }

    #[test]
    fn ipv6_counts_by_prefix() {
        let gate = Gate::new(
            "test",
            ConnectionLimits {
                max_total: 10,
                max_per_source: 1,
                reserve: 0,
            },
        );
        let _a = gate.admit(ip("2001:db8:1:2::1")).expect("first");
        assert!(gate.admit(ip("2001:db8:1:2::ffff")).is_none());
        assert!(gate.admit(ip("2001:db8:1:3::1")).is_some());
        assert_eq!(source_key(ip("::ffff:10.1.2.3")), ip("10.1.2.0"));
        assert_eq!(source_key(ip("10.1.2.200")), ip("10.1.2.0"));
    }

    #[test]
    fn descriptor_share_is_bounded() {
        assert!(descriptor_share(0.5, 100) <= 100);
        assert!(descriptor_share(0.0, 100) >= 16);
    }
}
