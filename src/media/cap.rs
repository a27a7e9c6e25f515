//! `Caps`: what one publish connection's video tracks are asked to send at most (issue 21,
//! step 4: the 1:1 and contact-centre case). A pure state machine per publish connection, told
//! once a second who watches each of its video tracks; it answers with the REMB
//! (`draft-alvestrand-rmcat-remb`) to send on the track's incoming stream, if any.
//!
//! The rules:
//! - **One viewer.** A video track forwarded, unpaused, to exactly one subscribe connection
//!   whose bandwidth is estimated is capped at [`CAP_SHARE`] of the lowest estimate of the
//!   last [`ESTIMATE_WINDOW`] (a viewer sent several video tracks shares its estimate equally
//!   among them; an estimate jumps above a thin link's rate for a moment while it probes, and
//!   the lowest recent one is the link), never below [`CAP_FLOOR_BPS`]. The publisher's
//!   encoder then sends what the viewer's link carries, a watchable stream instead of a
//!   queue, and the viewer's allocation does not pause the track while its estimate stays
//!   above the floor (`Allocation::set_capped`). What the capped publisher sends says nothing
//!   of the link, so the viewer's estimator probes above its own estimate
//!   (`Allocation::probe_target`): on a fat link the estimate, and the cap with it, climb
//!   until the publisher sends all it wants.
//! - **Several viewers, or none with an estimate.** No cap: lowering the publisher for one
//!   thin viewer would lower it for everyone; that viewer's own allocation pauses the track
//!   for it instead. A track that was capped is sent [`LIFTED_BPS`] [`LIFT_REPEATS`] times,
//!   a second apart (a browser keeps the last REMB it heard as a ceiling, and one RTCP
//!   packet can be lost), then nothing.
//! - A cap is repeated every second while it holds (covering a lost packet).
//!
//! Chrome honours a REMB next to transport-wide feedback: its send-side estimate is capped by
//! the receiver's limit, and its encoder's target follows.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use str0m::media::Mid;

/// The lowest cap: below it a stream is not worth watching, and the viewer's allocation
/// pauses the track instead.
pub(super) const CAP_FLOOR_BPS: u64 = 150_000;
/// The share of the viewer's estimate a capped publisher may send (its audio and the packets'
/// overhead share the link with the video).
pub(super) const CAP_SHARE: f64 = 0.8;
/// The cap follows the lowest viewer estimate of this long.
pub(super) const ESTIMATE_WINDOW: Duration = Duration::from_secs(5);
/// What a REMB lifting a cap says: more than any publisher sends.
pub(super) const LIFTED_BPS: u64 = 100_000_000;
/// How many times a lift is sent, a second apart.
pub(super) const LIFT_REPEATS: u8 = 3;
/// The caps are weighed this often.
pub(super) const CAP_EVERY: Duration = Duration::from_secs(1);

/// Who watches one video track of the publisher, as [`Caps::decide`] weighs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Viewers {
    /// Exactly one subscribe connection receives it unpaused: its bandwidth estimate, if it
    /// has one, divided among the video tracks it is sent.
    One(Option<u64>),
    /// None, or several.
    NotOne,
}

/// One track's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Standing {
    /// Capped: the viewer's recent estimates, and the cap they give.
    Capped {
        estimates: VecDeque<(Instant, u64)>,
        cap: u64,
    },
    /// A cap was lifted; this many lifts are still to be sent.
    Lifting(u8),
}

/// The caps of one publish connection. See the module documentation.
#[derive(Debug, Clone, Default)]
pub(super) struct Caps {
    tracks: BTreeMap<Mid, Standing>,
    next: Option<Instant>,
}

impl Caps {
    /// Whether the caps should be weighed at `now` (once every [`CAP_EVERY`]); if so, the
    /// next weighing is set.
    pub(super) fn due(&mut self, now: Instant) -> bool {
        if self.next.is_some_and(|t| now < t) {
            return false;
        }
        self.next = Some(now + CAP_EVERY);
        true
    }

    /// The REMB (bits per second) to send now on `mid`'s stream, given who watches it.
    pub(super) fn decide(&mut self, mid: Mid, viewers: Viewers, now: Instant) -> Option<u64> {
        if let Viewers::One(Some(estimate)) = viewers {
            let mut estimates = match self.tracks.remove(&mid) {
                Some(Standing::Capped { estimates, .. }) => estimates,
                _ => VecDeque::new(),
            };
            estimates.push_back((now, estimate));
            while estimates
                .front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) > ESTIMATE_WINDOW)
            {
                estimates.pop_front();
            }
            let lowest = estimates.iter().map(|(_, e)| *e).min().unwrap_or(estimate);
            let cap = ((lowest as f64 * CAP_SHARE) as u64).max(CAP_FLOOR_BPS);
            self.tracks.insert(mid, Standing::Capped { estimates, cap });
            return Some(cap);
        }
        let left = match self.tracks.get(&mid)? {
            Standing::Capped { .. } => LIFT_REPEATS,
            Standing::Lifting(n) => *n,
        };
        if left <= 1 {
            self.tracks.remove(&mid);
        } else {
            self.tracks.insert(mid, Standing::Lifting(left - 1));
        }
        Some(LIFTED_BPS)
    }

    /// The lowest cap standing on any track, if one is capped.
    pub(super) fn ceiling(&self) -> Option<u64> {
        self.tracks
            .values()
            .filter_map(|s| match s {
                Standing::Capped { cap, .. } => Some(*cap),
                Standing::Lifting(_) => None,
            })
            .min()
    }

    /// Whether `mid` is capped now.
    #[cfg(test)]
    fn is_capped(&self, mid: Mid) -> bool {
        matches!(self.tracks.get(&mid), Some(Standing::Capped { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mid(s: &str) -> Mid {
        Mid::from(s)
    }

    #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
    fn origin() -> Instant {
        Instant::now()
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_cap_follows_the_lowest_recent_estimate_with_a_floor() {
        let (t0, mut caps) = (origin(), Caps::default());
        let one = |e| Viewers::One(Some(e));
        assert_eq!(caps.decide(mid("1"), one(500_000), t0), Some(400_000));
        assert!(caps.is_capped(mid("1")));
        assert_eq!(caps.ceiling(), Some(400_000));
        // A probe's overshoot does not lift the cap above the link.
        assert_eq!(caps.decide(mid("1"), one(830_000), t0 + S), Some(400_000));
        // The low estimate leaves the window after five seconds: the cap climbs with the
        // estimate.
        for at in 2..=5 {
            assert_eq!(
                caps.decide(mid("1"), one(600_000), t0 + S * at),
                Some(400_000)
            );
        }
        assert_eq!(
            caps.decide(mid("1"), one(600_000), t0 + S * 6),
            Some(480_000)
        );
        // Never below the floor.
        assert_eq!(
            caps.decide(mid("1"), one(50_000), t0 + S * 7),
            Some(CAP_FLOOR_BPS)
        );
    }

    #[test]
    fn a_second_viewer_lifts_the_cap_a_few_times_then_nothing() {
        let (t0, mut caps) = (origin(), Caps::default());
        caps.decide(mid("1"), Viewers::One(Some(400_000)), t0);
        for i in 0..LIFT_REPEATS {
            let at = t0 + S * (1 + u32::from(i));
            assert_eq!(caps.decide(mid("1"), Viewers::NotOne, at), Some(LIFTED_BPS));
            assert!(!caps.is_capped(mid("1")));
            assert_eq!(caps.ceiling(), None);
        }
        assert_eq!(caps.decide(mid("1"), Viewers::NotOne, t0 + S * 9), None);
        // A viewer without an estimate caps nothing either.
        assert_eq!(caps.decide(mid("1"), Viewers::One(None), t0 + S * 10), None);
        // Back to one viewer: capped afresh, from its estimate now.
        assert_eq!(
            caps.decide(mid("1"), Viewers::One(Some(2_000_000)), t0 + S * 11),
            Some(1_600_000)
        );
    }

    #[test]
    fn caps_are_weighed_once_a_second() {
        let (t0, mut caps) = (origin(), Caps::default());
        assert!(caps.due(t0));
        assert!(!caps.due(t0 + Duration::from_millis(999)));
        assert!(caps.due(t0 + CAP_EVERY));
    }
}
