//! Rate limiting of failed HTTP Basic authentication, per source address and per username.
//!
//! This module owns the counting and the verdicts; [`super::extract::Scope`] asks it. Only
//! credentials that were presented and did not authenticate count as failures (a request
//! without credentials guesses nothing). Two budgets, each a GCRA bucket of "failures per
//! minute" (the `governor` crate): a burst of that many failures, then one more per
//! `60 s / N`.
//!
//! - **Per source address** (IPv6 by its /64): once the budget is spent, every request from
//!   the address is refused with 429 and `Retry-After` *before* its credentials are checked,
//!   so an attacker's guesses cost no store lookup, and the address is free again as soon as
//!   its bucket allows one more failure.
//! - **Per username**: a failure over the budget is answered 429 (not 401) with
//!   `Retry-After`. Credentials are still checked first, so a third party who knows a
//!   backend's username cannot lock that backend out with wrong passwords.
//!
//! The success path asks nothing of the store beyond what authentication does anyway: one
//! look into the (usually empty) penalty map, under a std mutex never held across an await.
//! The source address comes from axum's `ConnectInfo`; when the server runs without it, only
//! the per-username budget applies.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// Failed-authentication budgets, in failures per minute; 0 turns a budget off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailureLimits {
    /// Failures per minute from one source address (IPv6: one /64).
    pub per_address: u32,
    /// Failures per minute for one username.
    pub per_username: u32,
}

impl AuthFailureLimits {
    /// The defaults of `--auth-failures-per-address` and `--auth-failures-per-username`.
    pub const DEFAULT: AuthFailureLimits = AuthFailureLimits {
        per_address: 100,
        per_username: 30,
    };
}

impl Default for AuthFailureLimits {
    fn default() -> Self {
        AuthFailureLimits::DEFAULT
    }
}

/// Keys the maps keep before stale ones are swept (and the most penalties remembered).
const SWEEP_ABOVE: usize = 10_000;

/// Usernames are counted by at most this many leading characters (the header is the limit of
/// what a client can send; the counter need not keep all of it).
const USERNAME_KEY_CHARS: usize = 128;

type Limiter<K, C> =
    RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The failed-authentication counters of one server. Cheap to clone (shared).
#[derive(Clone)]
pub struct AuthFailures<C: Clock + Clone = DefaultClock> {
    inner: Arc<Inner<C>>,
}

struct Inner<C: Clock + Clone> {
    clock: C,
    per_address: Option<Limiter<IpAddr, C>>,
    per_username: Option<Limiter<String, C>>,
    /// Addresses whose budget is spent, and until when.
    penalties: Mutex<HashMap<IpAddr, C::Instant>>,
}

impl<C: Clock + Clone> std::fmt::Debug for AuthFailures<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthFailures(..)")
    }
}

/// A refusal for too many failures: how long until the client may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyFailures {
    /// Whole seconds, at least 1 (the `Retry-After` value).
    pub retry_after_secs: u64,
}

impl AuthFailures<DefaultClock> {
    /// Counters with `limits` on the real clock.
    pub fn new(limits: AuthFailureLimits) -> Self {
        AuthFailures::with_clock(limits, DefaultClock::default())
    }
}

impl Default for AuthFailures<DefaultClock> {
    fn default() -> Self {
        AuthFailures::new(AuthFailureLimits::DEFAULT)
    }
}

impl<C: Clock + Clone> AuthFailures<C> {
    /// Counters with `limits` on `clock` (tests use a fake one).
    pub fn with_clock(limits: AuthFailureLimits, clock: C) -> Self {
        fn limiter<K: Clone + Hash + Eq, C: Clock + Clone>(
            per_minute: u32,
            clock: &C,
        ) -> Option<Limiter<K, C>> {
            let n = NonZeroU32::new(per_minute)?;
            Some(RateLimiter::new(
                Quota::per_minute(n),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ))
        }
        AuthFailures {
            inner: Arc::new(Inner {
                per_address: limiter(limits.per_address, &clock),
                per_username: limiter(limits.per_username, &clock),
                penalties: Mutex::new(HashMap::new()),
                clock,
            }),
        }
    }

    /// Before checking credentials: whether `source` has spent its budget.
    pub fn check_address(&self, source: Option<IpAddr>) -> Result<(), TooManyFailures> {
        let inner = &self.inner;
        let (Some(_), Some(ip)) = (&inner.per_address, source.map(address_key)) else {
            return Ok(());
        };
        // A poisoned map only loses penalties; authentication goes on.
        let Ok(penalties) = inner.penalties.lock() else {
            return Ok(());
        };
        if penalties.is_empty() {
            return Ok(());
        }
        match penalties.get(&ip) {
            Some(until) => {
                let left = Duration::from(until.duration_since(inner.clock.now()));
                if left == Duration::ZERO {
                    Ok(())
                } else {
                    Err(TooManyFailures::after(left))
                }
            }
            None => Ok(()),
        }
    }

    /// After credentials failed: counts the failure against `source` and `username`. `Err`
    /// when either budget is spent (answer 429), `Ok` when this failure is a plain 401.
    pub fn failed(&self, source: Option<IpAddr>, username: &str) -> Result<(), TooManyFailures> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let mut verdict = Ok(());
        if let (Some(limiter), Some(ip)) = (&inner.per_address, source.map(address_key)) {
            if let Err(not_until) = limiter.check_key(&ip) {
                let wait = not_until.wait_time_from(now);
                self.penalize(ip, now + Nanos::from(wait));
                verdict = Err(TooManyFailures::after(wait));
            }
            sweep(limiter);
        }
        if let Some(limiter) = &inner.per_username {
            let key: String = username.chars().take(USERNAME_KEY_CHARS).collect();
            if let Err(not_until) = limiter.check_key(&key) {
                let wait = not_until.wait_time_from(now);
                let mine = TooManyFailures::after(wait);
                verdict = match verdict {
                    Err(other) if other.retry_after_secs >= mine.retry_after_secs => Err(other),
                    _ => Err(mine),
                };
            }
            sweep(limiter);
        }
        verdict
    }

    fn penalize(&self, ip: IpAddr, until: C::Instant) {
        let Ok(mut penalties) = self.inner.penalties.lock() else {
            return;
        };
        if penalties.len() >= SWEEP_ABOVE {
            let now = self.inner.clock.now();
            penalties.retain(|_, t| Duration::from(t.duration_since(now)) > Duration::ZERO);
        }
        if penalties.len() < SWEEP_ABOVE {
            penalties.insert(ip, until);
        }
    }
}

/// Forgets keys whose buckets are full again once a limiter holds many.
fn sweep<K: Clone + Hash + Eq, C: Clock>(limiter: &Limiter<K, C>) {
    if limiter.len() > SWEEP_ABOVE {
        limiter.retain_recent();
    }
}

impl TooManyFailures {
    fn after(wait: Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        TooManyFailures {
            retry_after_secs: secs.max(1),
        }
    }
}

/// The key an address is counted under: IPv4 as is (IPv4-mapped IPv6 as IPv4), IPv6 by its
/// /64, the smallest block one subscriber is usually given.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn failures(
        per_address: u32,
        per_username: u32,
    ) -> (AuthFailures<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limits = AuthFailureLimits {
            per_address,
            per_username,
        };
        (AuthFailures::with_clock(limits, clock.clone()), clock)
    }

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)));
    const B: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2)));

    #[test]
    fn an_address_is_refused_after_its_budget_until_the_bucket_refills() {
        let (f, clock) = failures(3, 0);
        for i in 0..3 {
            assert_eq!(f.check_address(A), Ok(()), "{i}");
            assert_eq!(f.failed(A, &format!("user{i}")), Ok(()), "{i}");
        }
        // The fourth failure is over the budget: 3 per minute refills one per 20 s.
        let refused = f.failed(A, "user3").unwrap_err();
        assert_eq!(refused.retry_after_secs, 20);
        assert_eq!(f.check_address(A), Err(refused));
        assert_eq!(
            f.check_address(B),
            Ok(()),
            "other addresses are not touched"
        );
        assert_eq!(
            f.check_address(None),
            Ok(()),
            "no address, no address budget"
        );
        clock.advance(Duration::from_secs(19));
        assert_eq!(
            f.check_address(A),
            Err(TooManyFailures {
                retry_after_secs: 1
            })
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(f.check_address(A), Ok(()));
        assert_eq!(f.failed(A, "again"), Ok(()), "one failure refilled");
        assert!(f.failed(A, "again").is_err());
    }

    #[test]
    fn a_username_is_refused_after_its_budget_whatever_the_address() {
        let (f, clock) = failures(0, 2);
        assert_eq!(f.failed(A, "alice"), Ok(()));
        assert_eq!(f.failed(B, "alice"), Ok(()));
        assert_eq!(
            f.failed(None, "alice"),
            Err(TooManyFailures {
                retry_after_secs: 30
            })
        );
        assert_eq!(
            f.failed(A, "bob"),
            Ok(()),
            "other usernames are not touched"
        );
        assert_eq!(
            f.check_address(A),
            Ok(()),
            "the username budget blocks no address"
        );
        clock.advance(Duration::from_secs(30));
        assert_eq!(f.failed(A, "alice"), Ok(()));
    }

    #[test]
    fn zero_turns_a_budget_off() {
        let (f, _) = failures(0, 0);
        for _ in 0..1000 {
            assert_eq!(f.failed(A, "alice"), Ok(()));
        }
        assert_eq!(f.check_address(A), Ok(()));
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(Some(address_key(mapped)), A);
    }
}
