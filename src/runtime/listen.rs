//! What every TCP listener shares: the connection gate (a cap on concurrent connections per
//! listener and per source address, with a small reserve kept for health checks) and an
//! accept loop that backs off when `accept` fails (out of descriptors) instead of spinning.
//!
//! The gate counts a connection from `accept` until its socket is dropped: a [`Permit`] travels
//! with the socket (inside the I/O type handed to the protocol), so a connection upgraded to a
//! WebSocket keeps counting until the WebSocket ends.
#![allow(clippy::disallowed_methods)] // the runtime owns the accept loops' clock and pauses

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// How many connections a listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Concurrent connections on the listener, beyond which only the reserve is served.
    pub max_total: usize,
    /// Concurrent connections from one source address (IPv6: one /64).
    pub max_per_source: usize,
    /// Connections taken beyond either cap and served restricted (health checks only).
    pub reserve: usize,
}

/// How a connection was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Within the caps: served normally.
    Full,
    /// Beyond a cap, within the reserve: served restricted.
    Reserve,
}

/// Counts a listener's open connections.
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<Mutex<Counts>>,
    limits: ConnectionLimits,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    reserve: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// The right of one connection to be open; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    gate: Gate,
    source: IpAddr,
    admission: Admission,
}

impl Permit {
    /// How the connection was let in.
    pub fn admission(&self) -> Admission {
        self.admission
    }
}

impl Gate {
    /// A gate admitting connections within `limits`.
    pub fn new(limits: ConnectionLimits) -> Gate {
        Gate {
            inner: Arc::new(Mutex::new(Counts::default())),
            limits,
        }
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // The counts stay consistent even if a holder panicked: each update is one statement.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lets a connection from `source` in, or `None` when even the reserve is used up.
    pub fn admit(&self, source: IpAddr) -> Option<Permit> {
        let source = source_key(source);
        let mut counts = self.counts();
        let from_source = counts.per_source.get(&source).copied().unwrap_or(0);
        let admission =
            if counts.total < self.limits.max_total && from_source < self.limits.max_per_source {
                counts.total += 1;
                Admission::Full
            } else if counts.reserve < self.limits.reserve {
                counts.reserve += 1;
                Admission::Reserve
            } else {
                return None;
            };
        *counts.per_source.entry(source).or_default() += 1;
        Some(Permit {
            gate: self.clone(),
            source,
            admission,
        })
    }

    /// Connections open now (full and reserve).
    pub fn open(&self) -> usize {
        let counts = self.counts();
        counts.total + counts.reserve
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.gate.counts();
        match self.admission {
            Admission::Full => counts.total = counts.total.saturating_sub(1),
            Admission::Reserve => counts.reserve = counts.reserve.saturating_sub(1),
        }
        if let Some(n) = counts.per_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_source.remove(&self.source);
            }
        }
    }
}

/// The address a per-source cap counts: IPv4 as is, IPv6 by its /64 (one host's usual share).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
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

/// Descriptors the process may hold besides its listeners' connections (database pool, media
/// and RTP sockets, files).
const DESCRIPTOR_HEADROOM: u64 = 128;

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

    #[test]
    fn caps_per_source_and_total_then_reserve_then_refuse() {
        let gate = Gate::new(ConnectionLimits {
            max_total: 3,
            max_per_source: 2,
            reserve: 1,
        });
        let a1 = gate.admit(ip("10.0.0.1")).expect("a1");
        let a2 = gate.admit(ip("10.0.0.1")).expect("a2");
        assert_eq!(a2.admission(), Admission::Full);
        let a3 = gate.admit(ip("10.0.0.1")).expect("reserve");
        assert_eq!(a3.admission(), Admission::Reserve);
        assert!(gate.admit(ip("10.0.0.1")).is_none());
        let b1 = gate.admit(ip("10.0.0.2")).expect("b1");
        assert_eq!(b1.admission(), Admission::Full);
        // Total reached and the reserve taken.
        assert!(gate.admit(ip("10.0.0.3")).is_none());
        drop(a3);
        assert_eq!(
            gate.admit(ip("10.0.0.3")).map(|p| p.admission()),
            Some(Admission::Reserve)
        );
        drop((a1, a2, b1));
        assert_eq!(gate.open(), 0);
        assert_eq!(
            gate.admit(ip("10.0.0.1")).map(|p| p.admission()),
            Some(Admission::Full)
        );
    }

    #[test]
    fn ipv6_counts_by_prefix() {
        let gate = Gate::new(ConnectionLimits {
            max_total: 10,
            max_per_source: 1,
            reserve: 0,
        });
        let _a = gate.admit(ip("2001:db8:1:2::1")).expect("first");
        assert!(gate.admit(ip("2001:db8:1:2::ffff")).is_none());
        assert!(gate.admit(ip("2001:db8:1:3::1")).is_some());
        assert_eq!(source_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
    }

    #[test]
    fn descriptor_share_is_bounded() {
        assert!(descriptor_share(0.5, 100) <= 100);
        assert!(descriptor_share(0.0, 100) >= 16);
    }
}
