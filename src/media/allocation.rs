//! What one subscriber connection is sent when its link is thinner than its subscriptions
//! need (issue 21, audio first): a pure state machine fed with the connection's bandwidth
//! estimate (str0m's TWCC estimator on the subscribe connection) and the bytes forwarded on
//! each of its m-lines, deciding which video m-lines are paused. Audio is never paused.
//!
//! The rules:
//! - **Pause.** When the estimate has stayed below what the connection is being sent (audio
//!   plus its unpaused video) for [`PAUSE_AFTER`], and the link shows congestion by two
//!   signals at once, both within [`CONGESTION_RECENT`]: the estimate fell (an estimate still
//!   climbing from its initial guess toward a fat link's capacity is no reason to pause), and
//!   the subscriber's transport-wide feedback reported at least [`LOSS_CONGESTED`] of the
//!   connection's packets lost over a second (a delay-only fall of the estimate on a link that
//!   loses nothing is what a busy machine's scheduling looks like, not a thin link: measured
//!   on this project's test machines, it paused a clean subscriber's video for seconds), the
//!   unpaused video track with the lowest
//!   priority is paused (the one whose publisher spoke least recently; then the highest mid).
//!   One pause per [`PAUSE_AFTER`]: a second track goes only if the first was not enough.
//! - **Resume.** A paused track comes back once it has been paused for the current resume
//!   hold and the estimate has stayed, for [`ROOM_STABLE`], above [`HEADROOM`] times what the
//!   connection would be sent with it (its rate before it was paused); the most important
//!   paused track first. The hold starts at [`RESUME_HOLD_MIN`]; a resume followed by a pause
//!   of the same track within [`FAILED_RESUME`] doubles it (up to [`RESUME_HOLD_MAX`]), so a
//!   link that cannot carry a track sees at most a couple of attempts a minute, never a
//!   flip-flop; a link that has recovered needs only its room to hold for [`ROOM_STABLE`]
//!   once the hold is over (a long hold asking for that long a stretch of room without one
//!   dip kept video away from links that had recovered).
//! - **Keyframes.** A subscriber's keyframe requests for a paused track, or while it is
//!   congested (estimate below what it is sent), do not reach the publisher: a keyframe would
//!   only deepen the congestion, and every other subscriber would pay for it.
//! - **Probing.** [`Allocation::probe_target`] is what the connection's estimator should try
//!   to discover: while a track is paused, everything unpaused plus the paused tracks, with
//!   more than the resume's [`HEADROOM`] on top (an estimator probing only up to the need
//!   itself settles just around it, and the track would stay paused on a link that has
//!   recovered); str0m pads up to it, so a paused track's return is found by probing, not by
//!   sending it blind. While a track's publisher is capped to this connection's estimate
//!   (`cap.rs`), the same margin above the estimate itself (what a capped publisher sends
//!   says nothing of the link), so that the estimate, and the cap with it, rise when the
//!   link allows. With nothing paused or capped, what is sent.
//! - **Capped tracks.** A track this connection is the only viewer of has its publisher
//!   capped to the estimate instead (`cap.rs`): it is not paused while the estimate stays at
//!   or above `CAP_FLOOR_BPS`.
//!
//! Without an estimate (no TWCC negotiated, or none yet) nothing is ever paused.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use str0m::media::Mid;

use super::cap::CAP_FLOOR_BPS;

/// How long the estimate must stay below the sent rate before a track is paused.
pub(super) const PAUSE_AFTER: Duration = Duration::from_secs(1);
/// The first hold before a paused track is tried again.
pub(super) const RESUME_HOLD_MIN: Duration = Duration::from_secs(4);
/// How long the estimate must leave room for a paused track before it resumes.
pub(super) const ROOM_STABLE: Duration = Duration::from_secs(4);
/// The longest hold.
pub(super) const RESUME_HOLD_MAX: Duration = Duration::from_secs(32);
/// A resume followed by a pause of the same track within this counts as failed.
pub(super) const FAILED_RESUME: Duration = Duration::from_secs(15);
/// The margin a resume needs above what the connection would then be sent.
pub(super) const HEADROOM: f64 = 1.15;
/// The probing target's margin over what resuming every paused track needs (more than
/// [`HEADROOM`], so that the estimate can reach the resume's threshold).
const PROBE_HEADROOM: f64 = 1.3;
/// A fall of the estimate within this long before counts as congestion now.
pub(super) const CONGESTION_RECENT: Duration = Duration::from_secs(5);
/// A second with at least this fraction of the connection's packets lost (transport-wide
/// feedback) is a lossy one.
pub(super) const LOSS_CONGESTED: f32 = 0.02;
/// A new estimate below this fraction of the previous one is a fall.
const FALL: f64 = 0.95;
/// Assumed rate of a video track never measured (paused before it sent a second of media).
const UNMEASURED_VIDEO_BPS: u64 = 500_000;
/// The sent rate is measured over this window.
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// Buckets of the window.
const BUCKETS: usize = 10;

/// An estimate this many times below what the connection is sent, on a link that reports no
/// loss, is the estimator lagging behind a fat link, not a thin link (see
/// [`Allocation::restart_due`]).
const LAGGING: f64 = 1.25;
/// The estimator is restarted at most this often.
const RESTART_EVERY: Duration = Duration::from_secs(10);
/// Below this sent rate the estimator is never restarted (nothing worth pacing late).
const RESTART_MIN_BPS: u64 = 300_000;
/// A restarted estimator starts this much above what the connection is sent.
const RESTART_HEADROOM: f64 = 1.1;
/// An estimate that has not moved for this long while a paused track waits for it is stalled
/// (see [`Allocation::restart_due`]).
const STALLED: Duration = Duration::from_secs(8);

/// Decisions are taken at most this often.
const DECIDE_EVERY: Duration = Duration::from_millis(100);
/// The estimator's probing target is updated at most this often.
const PROBE_TARGET_EVERY: Duration = Duration::from_secs(1);

/// Bytes sent over the last [`RATE_WINDOW`], in [`BUCKETS`] slots.
#[derive(Debug, Clone, Default)]
struct Rate {
    slots: [u64; BUCKETS],
    /// Index of the slot of `slot_start`.
    current: usize,
    slot_start: Option<Instant>,
}

impl Rate {
    fn slot(&self) -> Duration {
        RATE_WINDOW / BUCKETS as u32
    }

    fn advance(&mut self, now: Instant) {
        let Some(start) = self.slot_start else {
            self.slot_start = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        let steps = (elapsed.as_nanos() / self.slot().as_nanos()) as usize;
        if steps == 0 {
            return;
        }
        for i in 1..=steps.min(BUCKETS) {
            self.slots[(self.current + i) % BUCKETS] = 0;
        }
        self.current = (self.current + steps) % BUCKETS;
        self.slot_start = Some(start + self.slot() * steps as u32);
    }

    fn add(&mut self, bytes: usize, now: Instant) {
        self.advance(now);
        self.slots[self.current] += bytes as u64;
    }

    /// Bits per second over the window ending at `now`.
    fn bps(&mut self, now: Instant) -> u64 {
        self.advance(now);
        self.slots.iter().sum::<u64>() * 8 * 1000 / RATE_WINDOW.as_millis() as u64
    }
}

/// One video m-line of the connection.
#[derive(Debug, Clone, Default)]
struct Track {
    rate: Rate,
    paused: bool,
    /// Its rate when it was paused: what resuming it costs.
    rate_when_paused: u64,
    /// When it was last resumed.
    resumed_at: Option<Instant>,
    /// The hold before the next resume.
    hold: Option<Duration>,
    /// When the estimate first stood high enough for it (reset when it drops).
    room_since: Option<Instant>,
    paused_at: Option<Instant>,
    /// Its publisher is capped to this connection's estimate (`cap.rs`): it is the track's
    /// one viewer.
    capped: bool,
}

impl Track {
    /// Sent now: not paused, and something of it arrived lately.
    fn sending(&self) -> bool {
        !self.paused && self.rate.slots.iter().any(|&b| b > 0)
    }
}

/// Whether `at` lies within [`CONGESTION_RECENT`] of `now`.
fn recent(at: Option<Instant>, now: Instant) -> bool {
    at.is_some_and(|at| now.saturating_duration_since(at) < CONGESTION_RECENT)
}

/// A pause or a resume decided by [`Allocation::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Stop forwarding this video m-line.
    Pause(Mid),
    /// Forward it again (ask its publisher for a keyframe).
    Resume(Mid),
}

/// The allocation of one subscriber connection. See the module documentation.
#[derive(Debug, Clone, Default)]
pub(super) struct Allocation {
    estimate: Option<u64>,
    /// When the estimate last changed.
    estimate_moved_at: Option<Instant>,
    /// When the estimate last fell (congestion seen by the estimator).
    fell_at: Option<Instant>,
    /// When the subscriber last reported a lossy second.
    lossy_at: Option<Instant>,
    audio: Rate,
    video: BTreeMap<Mid, Track>,
    /// Since when the estimate has stood below the sent rate.
    short_since: Option<Instant>,
    last_pause: Option<Instant>,
    next_decision: Option<Instant>,
    next_probe_target: Option<Instant>,
    /// When the estimator was last restarted from what the connection is sent.
    restarted_at: Option<Instant>,
    next_restart_check: Option<Instant>,
}

impl Allocation {
    /// The connection's latest bandwidth estimate, bits per second, given at `now`.
    pub(super) fn set_estimate(&mut self, bps: u64, now: Instant) {
        if self
            .estimate
            .is_some_and(|prev| (bps as f64) < prev as f64 * FALL)
        {
            self.fell_at = Some(now);
        }
        if self.estimate != Some(bps) {
            self.estimate_moved_at = Some(now);
        }
        self.estimate = Some(bps);
    }

    /// The fraction of the connection's packets lost over the last second, from the
    /// subscriber's transport-wide feedback, given at `now`.
    pub(super) fn set_loss(&mut self, fraction: f32, now: Instant) {
        if fraction >= LOSS_CONGESTED {
            self.lossy_at = Some(now);
        }
    }

    /// The latest estimate, if any.
    pub(super) fn estimate(&self) -> Option<u64> {
        self.estimate
    }

    /// `bytes` of media were sent on `mid` (`video`: a video m-line).
    pub(super) fn sent(&mut self, mid: Mid, video: bool, bytes: usize, now: Instant) {
        if video {
            self.video.entry(mid).or_default().rate.add(bytes, now);
        } else {
            self.audio.add(bytes, now);
        }
    }

    /// How many video tracks are being sent (measured and not paused).
    pub(super) fn sending_video_tracks(&self) -> u32 {
        self.video.values().filter(|t| t.sending()).count() as u32
    }

    /// How many video tracks are paused.
    pub(super) fn paused_tracks(&self) -> u32 {
        self.video.values().filter(|t| t.paused).count() as u32
    }

    /// Whether `mid`'s publisher is capped to this connection's estimate (it is the track's
    /// only viewer, `cap.rs`): the track is then not paused while the estimate stays at or
    /// above [`CAP_FLOOR_BPS`], and probing looks for room above what it is sent.
    pub(super) fn set_capped(&mut self, mid: Mid, capped: bool) {
        if let Some(track) = self.video.get_mut(&mid) {
            track.capped = capped;
        }
    }

    /// Whether `mid`'s media is held back.
    pub(super) fn is_paused(&self, mid: Mid) -> bool {
        self.video.get(&mid).is_some_and(|t| t.paused)
    }

    /// Whether the subscriber's keyframe requests for `mid` should reach its publisher: not
    /// for a paused track, nor while the connection is sent more than its estimate.
    pub(super) fn passes_keyframe_requests(&self, mid: Mid) -> bool {
        !self.is_paused(mid) && self.short_since.is_none()
    }

    /// What the estimator should try to discover (bits per second): the audio and every
    /// video track, paused ones at their rate before the pause, all times [`PROBE_HEADROOM`]
    /// while any is paused.
    pub(super) fn probe_target(&mut self, now: Instant) -> u64 {
        let audio = self.audio.bps(now);
        let all = audio
            + self
                .video
                .values_mut()
                .map(|t| {
                    if t.paused {
                        t.rate_when_paused
                    } else {
                        t.rate.bps(now)
                    }
                })
                .sum::<u64>();
        if self.video.values().any(|t| t.capped) {
            // The publisher follows this estimate: what it sends says nothing of the link,
            // so look for room above the estimate itself.
            (all.max(self.estimate.unwrap_or(0)) as f64 * PROBE_HEADROOM) as u64
        } else if self.video.values().any(|t| t.paused) {
            (all as f64 * PROBE_HEADROOM) as u64
        } else {
            all
        }
    }

    /// [`Allocation::probe_target`], when it is time to tell the estimator again (once a
    /// second, and only once there is an estimate). Never for a connection that has sent no
    /// video: there is nothing to pause or resume, and str0m would pad its probes on the
    /// audio m-line under an SSRC of their own, which a browser shows as one more inbound
    /// audio stream.
    pub(super) fn probe_target_due(&mut self, now: Instant) -> Option<u64> {
        self.estimate?;
        if self.video.is_empty() {
            return None;
        }
        if self.next_probe_target.is_some_and(|t| now < t) {
            return None;
        }
        self.next_probe_target = Some(now + PROBE_TARGET_EVERY);
        Some(self.probe_target(now))
    }

    /// What the connection is being sent now (audio and unpaused video), bits per second.
    fn sent_bps(&mut self, now: Instant) -> u64 {
        self.audio.bps(now)
            + self
                .video
                .values_mut()
                .filter(|t| !t.paused)
                .map(|t| t.rate.bps(now))
                .sum::<u64>()
    }

    /// Whether the link has shown congestion by both signals within [`CONGESTION_RECENT`]:
    /// the estimate fell, and the subscriber reported a lossy second.
    fn congestion_seen(&self, now: Instant) -> bool {
        recent(self.fell_at, now) && recent(self.lossy_at, now)
    }

    /// The rate to restart the connection's estimator from, when it is due (checked at most
    /// once a second), the subscriber has reported no lossy second within
    /// [`CONGESTION_RECENT`], and the last restart is [`RESTART_EVERY`] old:
    /// - **lagging**: the estimate is more than [`LAGGING`] times below what the connection
    ///   is sent (at least [`RESTART_MIN_BPS`]); it restarts from what is sent;
    /// - **stalled**: a video track is paused, the estimate is below what resuming the
    ///   cheapest paused track needs, and it has not moved for [`STALLED`]; it restarts from
    ///   the estimate itself, which starts str0m's initial probing again.
    ///
    /// Why: str0m's estimator falls to 0.85 of the throughput it observed at the first sign of
    /// delay (a call's first second, a busy machine's scheduling), then climbs 8 % a second at
    /// most, while its pacer sends no faster than the estimate: a subscriber sent 1.7 Mbit/s
    /// on a fat link was paced at about 450 kbit/s for tens of seconds, its video seconds
    /// late, and nothing was lost, so nothing was paused or capped. Restarted from what is
    /// sent, the pacer lets the media through; on a thin link the losses that follow are the
    /// congestion signal the allocation and the publisher's cap need.
    ///
    /// Why stalled: with its video paused, a connection sends its audio and a little padding;
    /// str0m's estimate then rises no higher than about 1.5 times that unless a probe
    /// finds more, and its probing can stay off for good (measured: an estimate that did not
    /// move from 479 kbit/s for the last 60 s of a run, 2 Mbit/s restored for 40 of them,
    /// below the 600 the video needed: it never came back).
    pub(super) fn restart_due(&mut self, now: Instant) -> Option<u64> {
        if self.next_restart_check.is_some_and(|t| now < t) {
            return None;
        }
        self.next_restart_check = Some(now + PROBE_TARGET_EVERY);
        let estimate = self.estimate?;
        let lossy = recent(self.lossy_at, now);
        let restarted = self
            .restarted_at
            .is_some_and(|at| now.saturating_duration_since(at) < RESTART_EVERY);
        if lossy || restarted {
            return None;
        }
        let sent = self.sent_bps(now);
        let from = if sent >= RESTART_MIN_BPS && estimate as f64 * LAGGING < sent as f64 {
            (sent as f64 * RESTART_HEADROOM) as u64
        } else if self.stalled(estimate, sent, now) {
            estimate
        } else {
            return None;
        };
        self.restarted_at = Some(now);
        self.estimate = Some(from);
        self.estimate_moved_at = Some(now);
        self.fell_at = None;
        Some(from)
    }

    /// Whether a paused track waits on an estimate that has not moved for [`STALLED`] and
    /// is below what resuming the cheapest paused track needs.
    fn stalled(&self, estimate: u64, sent: u64, now: Instant) -> bool {
        let Some(cheapest) = self
            .video
            .values()
            .filter(|t| t.paused)
            .map(|t| t.rate_when_paused)
            .min()
        else {
            return false;
        };
        let needs = (sent + cheapest) as f64 * HEADROOM;
        (estimate as f64) < needs
            && self
                .estimate_moved_at
                .is_some_and(|at| now.saturating_duration_since(at) >= STALLED)
    }

    /// Whether [`Allocation::decide`] would weigh anything at `now` (there is an estimate and
    /// the last decision is [`DECIDE_EVERY`] old): the caller gathers the priorities then.
    pub(super) fn decision_due(&self, now: Instant) -> bool {
        self.estimate.is_some() && self.next_decision.is_none_or(|t| now >= t)
    }

    /// The video m-lines this connection has sent on.
    pub(super) fn video_mids(&self) -> impl Iterator<Item = Mid> + '_ {
        self.video.keys().copied()
    }

    /// Decides what changes at `now` (at most every 100 ms; `None` between). `spoke(mid)`:
    /// when the publisher of the track on `mid` last spoke (more recent: more important).
    pub(super) fn decide(
        &mut self,
        now: Instant,
        spoke: impl Fn(Mid) -> Option<Instant>,
    ) -> Option<Change> {
        if !self.decision_due(now) {
            return None;
        }
        let estimate = self.estimate?;
        self.next_decision = Some(now + DECIDE_EVERY);
        let sent = self.sent_bps(now);
        // Priority order, least important first.
        let mut order: Vec<Mid> = self.video.keys().copied().collect();
        order.sort_by(|a, b| spoke(*a).cmp(&spoke(*b)).then(b.cmp(a)));

        let congested = self.congestion_seen(now);
        if estimate < sent && congested {
            let since = *self.short_since.get_or_insert(now);
            for t in self.video.values_mut() {
                t.room_since = None;
            }
            let waited = now.saturating_duration_since(since) >= PAUSE_AFTER
                && self
                    .last_pause
                    .is_none_or(|at| now.saturating_duration_since(at) >= PAUSE_AFTER);
            if !waited {
                return None;
            }
            // A capped track follows the estimate at its source: it is paused only once
            // the estimate is below the cap's floor.
            let floor = estimate < CAP_FLOOR_BPS;
            let mid = order.iter().copied().find(|m| {
                self.video
                    .get(m)
                    .is_some_and(|t| t.sending() && (!t.capped || floor))
            })?;
            let track = self.video.get_mut(&mid)?;
            let rate = track.rate.bps(now);
            track.paused = true;
            track.rate_when_paused = if rate > 0 { rate } else { UNMEASURED_VIDEO_BPS };
            track.paused_at = Some(now);
            let failed = track
                .resumed_at
                .is_some_and(|at| now.saturating_duration_since(at) < FAILED_RESUME);
            track.hold = Some(match (failed, track.hold) {
                (true, Some(hold)) => (hold * 2).min(RESUME_HOLD_MAX),
                _ => RESUME_HOLD_MIN,
            });
            track.room_since = None;
            self.last_pause = Some(now);
            self.short_since = Some(now);
            return Some(Change::Pause(mid));
        }
        self.short_since = None;

        // The most important paused track whose cost fits, once its hold is over and it has
        // fitted for ROOM_STABLE.
        let candidate = order
            .iter()
            .rev()
            .copied()
            .find(|m| self.video.get(m).is_some_and(|t| t.paused))?;
        let track = self.video.get_mut(&candidate)?;
        let with = (sent + track.rate_when_paused) as f64 * HEADROOM;
        if (estimate as f64) < with {
            track.room_since = None;
            return None;
        }
        let since = *track.room_since.get_or_insert(now);
        let hold = track.hold.unwrap_or(RESUME_HOLD_MIN);
        let paused_for = track
            .paused_at
            .map_or(hold, |at| now.saturating_duration_since(at));
        if now.saturating_duration_since(since) < ROOM_STABLE || paused_for < hold {
            return None;
        }
        track.paused = false;
        track.resumed_at = Some(now);
        track.room_since = None;
        track.rate = Rate::default();
        Some(Change::Resume(candidate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn mid(s: &str) -> Mid {
        Mid::from(s)
    }

    /// Sends 32 kbit/s of audio on "0" and `kbps` of video on each of `video` from `from_ms`
    /// to `to_ms`, in 20 ms steps, deciding every 100 ms, on a link as thin as the estimate
    /// (what is sent beyond it is reported lost, once a second); returns the changes with
    /// their offset from `t0`.
    fn run(
        a: &mut Allocation,
        t0: Instant,
        from_ms: u64,
        to_ms: u64,
        estimate_kbps: u64,
        video: &[(&str, u64)],
    ) -> Vec<(u64, Change)> {
        run_on(a, t0, from_ms, to_ms, estimate_kbps, video, true)
    }

    /// [`run`], on a link that loses what exceeds the estimate (`loses`) or nothing.
    fn run_on(
        a: &mut Allocation,
        t0: Instant,
        from_ms: u64,
        to_ms: u64,
        estimate_kbps: u64,
        video: &[(&str, u64)],
        loses: bool,
    ) -> Vec<(u64, Change)> {
        let mut out = Vec::new();
        let mut at = from_ms;
        while at < to_ms {
            let now = t0 + MS * at as u32;
            a.sent(mid("0"), false, 32_000 / 8 / 50, now);
            let mut sent_kbps = 32;
            for (m, kbps) in video {
                if !a.is_paused(mid(m)) {
                    a.sent(mid(m), true, (*kbps * 1000 / 8 / 50) as usize, now);
                    sent_kbps += kbps;
                }
            }
            if loses && at.is_multiple_of(1_000) {
                let lost = 1.0 - (estimate_kbps as f32 / sent_kbps as f32).min(1.0);
                a.set_loss(lost, now);
            }
            if at.is_multiple_of(100) {
                a.set_estimate(estimate_kbps * 1000, now);
                if let Some(c) = a.decide(now, |m| (m == mid("1")).then_some(t0)) {
                    out.push((at, c));
                }
            }
            at += 20;
        }
        out
    }

    #[test]
    fn a_thin_link_pauses_video_keeps_audio_and_stops_keyframe_requests() {
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let t0 = Instant::now();
        let mut a = Allocation::default();
        assert!(run(&mut a, t0, 0, 2_000, 2_000, &[("1", 480)]).is_empty());
        assert!(a.passes_keyframe_requests(mid("1")));
        let changes = run(&mut a, t0, 2_000, 10_000, 300, &[("1", 480)]);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let (at, change) = changes[0];
        assert_eq!(change, Change::Pause(mid("1")));
        assert!(
            (3_000..=3_200).contains(&at),
            "paused after a second short: {at}"
        );
        assert!(a.is_paused(mid("1")));
        assert!(!a.is_paused(mid("0")), "audio is never paused");
        assert!(!a.passes_keyframe_requests(mid("1")));
        // It probes for the paused video, beyond what resuming it needs (audio 32 kbit/s and
        // the video at 480, with the headroom a resume asks for).
        let needed = (32_000.0 + 480_000.0) * HEADROOM;
        let target = a.probe_target(t0 + MS * 10_000) as f64;
        assert!(
            target > needed,
            "probe target {target} for a need of {needed}"
        );
    }

    #[test]
    fn a_capped_track_is_not_paused_until_the_estimate_is_below_the_floor() {
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let t0 = Instant::now();
        let mut a = Allocation::default();
        assert!(run(&mut a, t0, 0, 2_000, 2_000, &[("1", 480)]).is_empty());
        a.set_capped(mid("1"), true);
        // Short and losing, as in the test above, but the publisher follows the estimate.
        let changes = run(&mut a, t0, 2_000, 10_000, 300, &[("1", 480)]);
        assert!(changes.is_empty(), "{changes:?}");
        // While it is capped, probing looks for room above what it is sent.
        let sent = (32_000 + 480_000) as f64;
        assert!(a.probe_target(t0 + MS * 10_000) as f64 > sent);
        // Below the floor the allocation pauses it after all.
        let floor_kbps = CAP_FLOOR_BPS / 1000 - 10;
        let changes = run(&mut a, t0, 10_000, 14_000, floor_kbps, &[("1", 480)]);
        assert_eq!(changes.first().map(|c| c.1), Some(Change::Pause(mid("1"))));
        // No longer the one viewer: the ordinary rules apply.
        let mut b = Allocation::default();
        run(&mut b, t0, 0, 2_000, 2_000, &[("1", 480)]);
        b.set_capped(mid("1"), true);
        b.set_capped(mid("1"), false);
        let changes = run(&mut b, t0, 2_000, 10_000, 300, &[("1", 480)]);
        assert_eq!(changes.first().map(|c| c.1), Some(Change::Pause(mid("1"))));
    }

    #[test]
    fn a_lagging_estimate_on_a_link_losing_nothing_is_restarted_from_what_is_sent() {
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let t0 = Instant::now();
        let mut a = Allocation::default();
        // Sent 1.5 Mbit/s of video (and 32 of audio), estimated at 400 kbit/s, no loss.
        run_on(&mut a, t0, 0, 3_000, 400, &[("1", 1_500)], false);
        let now = t0 + MS * 3_000;
        let from = a.restart_due(now).expect("a restart is due");
        assert!((1_400_000..1_800_000).contains(&from), "from {from}");
        assert_eq!(a.estimate(), Some(from));
        // Not twice within RESTART_EVERY, even if the estimate lags again.
        a.set_estimate(400_000, now);
        assert_eq!(a.restart_due(now + MS * 1_000), None);
        assert_eq!(a.restart_due(now + MS * 5_000), None);
        run_on(&mut a, t0, 3_000, 13_100, 400, &[("1", 1_500)], false);
        assert!(a.restart_due(t0 + MS * 13_100).is_some());

        // A link reporting loss is thin, not lagging: no restart (the allocation acts).
        let mut b = Allocation::default();
        run_on(&mut b, t0, 0, 3_000, 400, &[("1", 1_500)], true);
        assert_eq!(b.restart_due(t0 + MS * 3_000), None);
        // Nor is an estimate near what is sent, or a small stream.
        let mut c = Allocation::default();
        run_on(&mut c, t0, 0, 3_000, 1_400, &[("1", 1_500)], false);
        assert_eq!(c.restart_due(t0 + MS * 3_000), None);
        let mut d = Allocation::default();
        run_on(&mut d, t0, 0, 3_000, 100, &[("1", 200)], false);
        assert_eq!(d.restart_due(t0 + MS * 3_000), None);
    }

    #[test]
    fn a_stalled_estimate_under_a_paused_track_is_restarted_from_itself() {
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let t0 = Instant::now();
        let mut a = Allocation::default();
        run(&mut a, t0, 0, 2_000, 2_000, &[("1", 480)]);
        let changes = run(&mut a, t0, 2_000, 4_000, 300, &[("1", 480)]);
        assert_eq!(changes.first().map(|c| c.1), Some(Change::Pause(mid("1"))));
        // Paused; the estimate stops at 400 kbit/s, under the ~590 resuming needs, and the
        // link loses nothing (audio only).
        run_on(&mut a, t0, 4_000, 9_000, 400, &[("1", 480)], false);
        assert_eq!(a.restart_due(t0 + MS * 9_000), None, "it moved 5 s ago");
        run_on(&mut a, t0, 9_000, 12_100, 400, &[("1", 480)], false);
        assert_eq!(a.restart_due(t0 + MS * 12_100), Some(400_000));
        // Not again within RESTART_EVERY, and not while the estimate moves.
        run_on(&mut a, t0, 12_100, 21_000, 400, &[("1", 480)], false);
        assert_eq!(a.restart_due(t0 + MS * 21_000), None);
        let mut at = 21_000;
        while at < 40_000 {
            let kbps = if (at / 1_000) % 2 == 0 { 400 } else { 420 };
            run_on(&mut a, t0, at, at + 1_000, kbps, &[("1", 480)], false);
            at += 1_000;
            assert_eq!(a.restart_due(t0 + MS * at as u32), None, "at {at}");
        }
    }

    #[test]
    fn an_audio_only_connection_is_never_probed() {
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let t0 = Instant::now();
        let mut a = Allocation::default();
        for at in (0..5_000).step_by(100) {
            let now = t0 + MS * at;
            a.sent(mid("0"), false, 80, now);
            a.set_estimate(300_000, now);
            assert_eq!(a.probe_target_due(now), None, "at {at} ms");
        }
        // Once video is sent, the estimator is told what to look for.
        let now = t0 + MS * 5_000;
        a.sent(mid("1"), true, 1_000, now);
        assert!(a.probe_target_due(now).is_some_and(|t| t > 0));
    }

    #[test]
    fn the_least_recent_speaker_goes_first_and_the_second_only_if_needed() {
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let t0 = Instant::now();
        let mut a = Allocation::default();
        run(&mut a, t0, 0, 2_000, 3_000, &[("1", 500), ("2", 500)]);
        // 700 kbit/s: one of the two 500 kbit/s tracks must go; "1" spoke, so "2" goes.
        let changes = run(&mut a, t0, 2_000, 8_000, 700, &[("1", 500), ("2", 500)]);
        assert_eq!(
            changes.iter().map(|c| c.1).collect::<Vec<_>>(),
            vec![Change::Pause(mid("2"))]
        );
        // 300 kbit/s: the second goes too.
        let changes = run(&mut a, t0, 8_000, 12_000, 300, &[("1", 500), ("2", 500)]);
        assert_eq!(
            changes.iter().map(|c| c.1).collect::<Vec<_>>(),
            vec![Change::Pause(mid("1"))]
        );
    }

    #[test]
    fn a_link_that_recovers_gets_its_video_back_after_the_hold() {
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let t0 = Instant::now();
        let mut a = Allocation::default();
        run(&mut a, t0, 0, 1_000, 2_000, &[("1", 480)]);
        run(&mut a, t0, 1_000, 5_000, 300, &[("1", 480)]);
        assert!(a.is_paused(mid("1")));
        let changes = run(&mut a, t0, 5_000, 20_000, 2_000, &[("1", 480)]);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let (at, change) = changes[0];
        assert_eq!(change, Change::Resume(mid("1")));
        assert!(
            at - 5_000 <= RESUME_HOLD_MIN.as_millis() as u64 + 200,
            "{at}"
        );
        assert!(!a.is_paused(mid("1")));
        assert!(a.passes_keyframe_requests(mid("1")));
    }

    #[test]
    fn a_link_that_cannot_carry_the_track_is_not_flipped_more_than_twice_a_minute() {
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let t0 = Instant::now();
        let mut a = Allocation::default();
        run(&mut a, t0, 0, 1_000, 2_000, &[("1", 480)]);
        // The estimate says 700 while nothing but audio is sent (probing finds room), and
        // drops to 400 as soon as the video flows again: every resume fails.
        let mut changes = Vec::new();
        let mut at = 1_000;
        while at < 61_000 {
            let estimate = if a.is_paused(mid("1")) { 700 } else { 400 };
            changes.extend(run(&mut a, t0, at, at + 100, estimate, &[("1", 480)]));
            at += 100;
        }
        let resumes = changes
            .iter()
            .filter(|c| matches!(c.1, Change::Resume(_)))
            .count();
        assert!(resumes <= 3, "{changes:?}");
        assert!(resumes >= 1, "it does try again: {changes:?}");
    }

    #[test]
    fn a_recovered_link_gets_its_video_back_after_a_long_hold_despite_dips() {
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let t0 = Instant::now();
        let mut a = Allocation::default();
        run(&mut a, t0, 0, 1_000, 2_000, &[("1", 480)]);
        // A link that cannot carry the track: every resume fails, the hold grows.
        let mut at = 1_000;
        while at < 61_000 {
            let estimate = if a.is_paused(mid("1")) { 700 } else { 400 };
            run(&mut a, t0, at, at + 100, estimate, &[("1", 480)]);
            at += 100;
        }
        assert!(a.is_paused(mid("1")));
        // The link recovers; its estimate still dips for half a second every 8 s.
        let mut resumed = None;
        while at < 121_000 && resumed.is_none() {
            let estimate = if at % 8_500 < 500 { 500 } else { 3_000 };
            let changes = run(&mut a, t0, at, at + 100, estimate, &[("1", 480)]);
            resumed = changes
                .into_iter()
                .find(|c| c.1 == Change::Resume(mid("1")));
            at += 100;
        }
        let (at, _) = resumed.expect("the video comes back");
        assert!(
            at - 61_000 <= (RESUME_HOLD_MAX + ROOM_STABLE * 2).as_millis() as u64,
            "resumed {} ms after the recovery",
            at - 61_000
        );
    }

    #[test]
    fn an_estimate_climbing_from_its_first_guess_pauses_nothing() {
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let t0 = Instant::now();
        let mut a = Allocation::default();
        // Four 1.5 Mbit/s tracks on a fat link, the estimator starting at 2.5 Mbit/s and
        // climbing 10 % a second: below what is sent for seconds, but it never fell.
        let tracks = [("1", 1500), ("2", 1500), ("3", 1500), ("4", 1500)];
        let mut estimate = 2_500.0;
        let mut at = 0;
        while at < 20_000 {
            let changes = run(&mut a, t0, at, at + 1_000, estimate as u64, &tracks);
            assert!(changes.is_empty(), "at {at} ms: {changes:?}");
            estimate *= 1.1;
            at += 1_000;
        }
        assert!(a.passes_keyframe_requests(mid("1")));
    }

    #[test]
    fn an_estimate_that_falls_on_a_link_losing_nothing_pauses_nothing() {
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let t0 = Instant::now();
        let mut a = Allocation::default();
        // A busy machine's scheduling delays the feedback: the delay-based estimate falls to
        // 300 kbit/s under 512 kbit/s sent, yet every packet arrives.
        run_on(&mut a, t0, 0, 2_000, 2_000, &[("1", 480)], false);
        let changes = run_on(&mut a, t0, 2_000, 10_000, 300, &[("1", 480)], false);
        assert!(changes.is_empty(), "{changes:?}");
        assert!(a.passes_keyframe_requests(mid("1")));
        // A further fall with the link losing what exceeds it pauses the video.
        let changes = run_on(&mut a, t0, 10_000, 14_000, 250, &[("1", 480)], true);
        assert_eq!(
            changes.iter().map(|c| c.1).collect::<Vec<_>>(),
            vec![Change::Pause(mid("1"))]
        );
    }

    #[test]
    fn without_an_estimate_nothing_is_paused() {
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let t0 = Instant::now();
        let mut a = Allocation::default();
        for i in 0..200u32 {
            let now = t0 + MS * (i * 20);
            a.sent(mid("1"), true, 3_000, now);
            assert_eq!(a.decide(now, |_| None), None);
        }
        assert!(a.passes_keyframe_requests(mid("1")));
    }
}
