//! Whether a phone's media leg is still alive: a call whose phone should be sending RTP and
//! sent nothing (no RTP, nor RTCP on the RTP port, that [`crate::latch`] took as the phone's)
//! for the configured time is a dead leg, gone without BYE.
//!
//! A phone that has put the call on hold, or is not meant to send (its SDP said `recvonly`
//! or `inactive`), is never dead by silence: the watch is off until it sends again. The
//! caller feeds every datagram's arrival and every direction change with `now`, and asks
//! [`MediaWatch::is_dead`] at (or after) [`MediaWatch::poll_timeout`].

use std::time::{Duration, Instant};

/// The inactivity watch of one call's media.
#[derive(Debug, Clone)]
pub struct MediaWatch {
    timeout: Duration,
    last_heard: Instant,
    expecting: bool,
}

impl MediaWatch {
    /// A watch started at `now`; `timeout` zero disables it. `expecting`: the phone is meant
    /// to send (its direction is `sendrecv` or `sendonly`).
    pub fn new(timeout: Duration, expecting: bool, now: Instant) -> MediaWatch {
        MediaWatch {
            timeout,
            last_heard: now,
            expecting,
        }
    }

    /// A datagram the latch took as the phone's (RTP, or RTCP on the RTP port) arrived.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// The phone's direction changed (re-INVITE); turning the watch on restarts its clock.
    pub fn set_expecting(&mut self, expecting: bool, now: Instant) {
        if expecting && !self.expecting {
            self.last_heard = now;
        }
        self.expecting = expecting;
    }

    /// When the leg is dead unless something arrives first; `None` when not watching.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.expecting && !self.timeout.is_zero()).then(|| self.last_heard + self.timeout)
    }

    /// Whether the leg is dead at `now`.
    pub fn is_dead(&self, now: Instant) -> bool {
        self.poll_timeout().is_some_and(|t| t <= now)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests start their virtual clock at the real time
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn silence_for_the_timeout_is_a_dead_leg() {
        let start = Instant::now();
        let mut w = MediaWatch::new(T, true, start);
        w.heard(start + Duration::from_secs(10));
        assert!(!w.is_dead(start + Duration::from_secs(39)));
        assert_eq!(w.poll_timeout(), Some(start + Duration::from_secs(40)));
        assert!(w.is_dead(start + Duration::from_secs(40)));
    }

    #[test]
    fn a_held_call_is_not_dead_and_resuming_restarts_the_clock() {
        let start = Instant::now();
        let mut w = MediaWatch::new(T, true, start);
        w.set_expecting(false, start + Duration::from_secs(5));
        assert_eq!(w.poll_timeout(), None);
        assert!(!w.is_dead(start + Duration::from_secs(3600)));
        let resumed = start + Duration::from_secs(3600);
        w.set_expecting(true, resumed);
        assert!(!w.is_dead(resumed + Duration::from_secs(29)));
        assert!(w.is_dead(resumed + T));
    }

    #[test]
    fn zero_disables_the_watch() {
        let start = Instant::now();
        let w = MediaWatch::new(Duration::ZERO, true, start);
        assert_eq!(w.poll_timeout(), None);
        assert!(!w.is_dead(start + Duration::from_secs(86_400)));
    }
}
