//! `Speakers`: who is speaking in each session (issue 21, step 5), from the audio levels the
//! publishers send: the RFC 6464 audio-level header extension browsers put on their audio,
//! and for a phone the level the SIP bridge measures of its decoded audio. Sans-IO and pure:
//! it is told each level with the time it arrived, and never reads a clock.
//!
//! ## The rules
//! - Each participant has a *loudness*: how far its level is above [`FLOOR_DBOV`] (an RFC 6464
//!   level is -dBov, 0 the loudest, 127 silence), smoothed over time with the time constant
//!   [`SMOOTHING`]. Time without a level beyond the gap between two packets (a browser's
//!   Opus DTX sends next to nothing in silence) counts as silence.
//! - A participant *speaks* while its loudness is at least [`SPEAKING`].
//! - A participant becomes the dominant speaker after it has *led* for [`CONFIRM`] without a
//!   break: it speaks, it is the loudest of those who lead, and the current dominant speaker
//!   either does not speak or is quieter by at least [`MARGIN`]. A cough or any burst shorter
//!   than that does not take over; two people talking over each other at about the same
//!   level do not flip it; a new speaker is followed within about `CONFIRM` plus the rise of
//!   its loudness (well within a second).
//! - A change is made at most once per [`MIN_INTERVAL`] per session; one that becomes due
//!   meanwhile waits for the end of the interval, and is made only if it still holds then
//!   (the latest state, never a burst). This is what limits the webhooks.
//! - Silence keeps the last dominant speaker: nothing ever changes to "nobody". A speaker who
//!   leaves stays the last one until someone else speaks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::domain::{ParticipantId, SessionId};

/// Levels at or below this (-dBov) count as silence (the noise of a quiet room).
pub(super) const FLOOR_DBOV: u8 = 70;
/// The loudness (dB above [`FLOOR_DBOV`]) from which a participant speaks.
pub(super) const SPEAKING: f32 = 20.0;
/// How much quieter than a candidate the current speaker must be for the candidate to lead
/// while both speak, dB.
pub(super) const MARGIN: f32 = 8.0;
/// Time constant of the loudness.
pub(super) const SMOOTHING: Duration = Duration::from_millis(100);
/// How long a candidate must lead without a break to take over.
pub(super) const CONFIRM: Duration = Duration::from_millis(600);
/// At most one change per session per this.
pub(super) const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The time between two levels of a stream that does not count as silence (20 ms packets,
/// jitter; Opus DTX leaves longer gaps in silence).
const GAP: Duration = Duration::from_millis(60);
/// How often a session's candidates are weighed at most (levels arrive every 20 ms per
/// publisher; weighing is O(publishers)).
const EVALUATE_EVERY: Duration = Duration::from_millis(20);

/// A participant became a session's dominant speaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeakerChange {
    /// The session.
    pub session: SessionId,
    /// Its dominant speaker now.
    pub participant: ParticipantId,
    /// The speaker is a phone (its levels came from the bridge).
    pub phone: bool,
}

/// The dominant speakers of the sessions of one engine.
#[derive(Debug, Default)]
pub(super) struct Speakers {
    sessions: HashMap<SessionId, Detector>,
}

impl Speakers {
    /// `participant` of `session` sent audio of RFC 6464 `level` at `now`; the change of
    /// dominant speaker this makes, if any.
    pub(super) fn hear(
        &mut self,
        session: SessionId,
        participant: ParticipantId,
        phone: bool,
        level: u8,
        now: Instant,
    ) -> Option<SpeakerChange> {
        let detector = self.sessions.entry(session).or_default();
        detector
            .hear(participant, phone, level, now)
            .map(|(participant, phone)| SpeakerChange {
                session,
                participant,
                phone,
            })
    }

    /// The participant has no device here any more: its levels are forgotten (if it was the
    /// dominant speaker, it stays that until someone else speaks).
    pub(super) fn forget(&mut self, participant: ParticipantId) {
        self.sessions.retain(|_, d| {
            d.voices.remove(&participant);
            !d.voices.is_empty() || d.current.is_some()
        });
    }

    /// The session is no longer hosted here.
    pub(super) fn forget_session(&mut self, session: SessionId) {
        self.sessions.remove(&session);
    }

    /// When `participant` of `session` last spoke (its loudness at least [`SPEAKING`]), as far
    /// as this engine heard it: what orders a subscriber's video when its link is short.
    pub(super) fn last_spoke(
        &self,
        session: SessionId,
        participant: ParticipantId,
    ) -> Option<Instant> {
        self.sessions
            .get(&session)?
            .voices
            .get(&participant)?
            .spoke_at
    }

    /// The session's dominant speaker as this engine knows it.
    #[cfg(test)]
    pub(super) fn current(&self, session: SessionId) -> Option<ParticipantId> {
        self.sessions.get(&session).and_then(|d| d.current)
    }
}

/// One session's detector.
#[derive(Debug, Default)]
struct Detector {
    voices: HashMap<ParticipantId, Voice>,
    current: Option<ParticipantId>,
    /// When the last change was made.
    changed_at: Option<Instant>,
    /// The participant leading now, and since when without a break.
    leader: Option<(ParticipantId, Instant)>,
    evaluated_at: Option<Instant>,
}

#[derive(Debug)]
struct Voice {
    phone: bool,
    /// Smoothed loudness at `at`.
    loudness: f32,
    at: Instant,
    /// The last time its loudness was at least [`SPEAKING`].
    spoke_at: Option<Instant>,
}

impl Voice {
    /// The loudness at `now`, counting the time since the last level as silence once it is
    /// longer than a packet's gap ([`GAP`]): otherwise whoever's packet came last would look
    /// louder than whoever's came a few milliseconds before.
    fn loudness_at(&self, now: Instant) -> f32 {
        let silent = now.saturating_duration_since(self.at).saturating_sub(GAP);
        self.loudness * decay(silent)
    }
}

/// The share of a loudness left after `elapsed` of silence.
fn decay(elapsed: Duration) -> f32 {
    (-(elapsed.as_secs_f32() / SMOOTHING.as_secs_f32())).exp()
}

/// dB above the floor of an RFC 6464 level.
fn loudness(level: u8) -> f32 {
    f32::from(FLOOR_DBOV.saturating_sub(level.min(127)))
}

impl Detector {
    fn hear(
        &mut self,
        participant: ParticipantId,
        phone: bool,
        level: u8,
        now: Instant,
    ) -> Option<(ParticipantId, bool)> {
        let sample = loudness(level);
        match self.voices.get_mut(&participant) {
            Some(v) => {
                let keep = decay(now.saturating_duration_since(v.at));
                v.loudness = v.loudness * keep + sample * (1.0 - keep);
                v.at = v.at.max(now);
                v.phone = phone;
                if v.loudness >= SPEAKING {
                    v.spoke_at = Some(now);
                }
            }
            None => {
                // The first level weighs like one packet's worth (20 ms) after silence.
                let keep = decay(Duration::from_millis(20));
                self.voices.insert(
                    participant,
                    Voice {
                        phone,
                        loudness: sample * (1.0 - keep),
                        at: now,
                        spoke_at: None,
                    },
                );
            }
        }
        if self
            .evaluated_at
            .is_some_and(|t| now.saturating_duration_since(t) < EVALUATE_EVERY)
        {
            return None;
        }
        self.evaluated_at = Some(now);
        self.evaluate(now)
    }

    /// Weighs the candidates at `now`; the change it makes, if any.
    fn evaluate(&mut self, now: Instant) -> Option<(ParticipantId, bool)> {
        let current = self
            .current
            .and_then(|c| self.voices.get(&c))
            .map_or(0.0, |v| v.loudness_at(now));
        let current_speaks = current >= SPEAKING;
        let leader = self
            .voices
            .iter()
            .filter(|(p, _)| Some(**p) != self.current)
            .map(|(p, v)| (*p, v.loudness_at(now)))
            .filter(|(_, l)| *l >= SPEAKING && (!current_speaks || *l >= current + MARGIN))
            // Ties go to the lower id, so the choice does not depend on the map's order.
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(p, _)| p);
        let Some(leader) = leader else {
            self.leader = None;
            return None;
        };
        let since = match self.leader {
            Some((p, since)) if p == leader => since,
            _ => {
                self.leader = Some((leader, now));
                now
            }
        };
        let led = now.saturating_duration_since(since) >= CONFIRM;
        let may_change = self
            .changed_at
            .is_none_or(|t| now.saturating_duration_since(t) >= MIN_INTERVAL);
        if !(led && may_change) {
            return None;
        }
        self.current = Some(leader);
        self.changed_at = Some(now);
        self.leader = None;
        let phone = self.voices.get(&leader).is_some_and(|v| v.phone);
        Some((leader, phone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TALK: u8 = 25;
    const QUIET_TALK: u8 = 40;
    const SILENCE: u8 = 127;
    const FRAME: Duration = Duration::from_millis(20);

    fn p(n: u128) -> ParticipantId {
        ParticipantId::from(uuid::Uuid::from_u128(n))
    }

    fn session() -> SessionId {
        SessionId::from(uuid::Uuid::from_u128(99))
    }

    /// A session and a clock, fed 20 ms frames of every voice at once.
    struct Call {
        speakers: Speakers,
        now: Instant,
        changes: Vec<(Duration, ParticipantId)>,
        origin: Instant,
    }

    impl Call {
        fn new() -> Call {
            #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
            let origin = Instant::now();
            Call {
                speakers: Speakers::default(),
                now: origin,
                changes: Vec::new(),
                origin,
            }
        }

        /// `duration` of 20 ms frames, each participant at its level (`None`: sends nothing).
        fn run(&mut self, duration: Duration, levels: &[(ParticipantId, Option<u8>)]) {
            let end = self.now + duration;
            while self.now < end {
                for (who, level) in levels {
                    if let Some(level) = level {
                        if let Some(c) =
                            self.speakers.hear(session(), *who, false, *level, self.now)
                        {
                            self.changes.push((self.now - self.origin, c.participant));
                        }
                    }
                }
                self.now += FRAME;
            }
        }

        fn current(&self) -> Option<ParticipantId> {
            self.speakers.current(session())
        }

        fn at(&self) -> Duration {
            self.now - self.origin
        }
    }

    #[test]
    fn a_new_speaker_is_followed_within_a_second() {
        let mut call = Call::new();
        call.run(
            Duration::from_secs(2),
            &[(p(1), Some(TALK)), (p(2), Some(SILENCE))],
        );
        assert_eq!(call.current(), Some(p(1)));
        assert_eq!(call.changes.len(), 1);
        assert!(
            call.changes[0].0 < Duration::from_secs(1),
            "{:?}",
            call.changes
        );
        // Turn: 2 speaks, 1 is silent.
        let turn = call.at();
        call.run(
            Duration::from_secs(2),
            &[(p(1), Some(SILENCE)), (p(2), Some(TALK))],
        );
        assert_eq!(call.current(), Some(p(2)));
        assert_eq!(call.changes.len(), 2);
        assert!(
            call.changes[1].0 - turn < Duration::from_secs(1),
            "{:?}",
            call.changes
        );
        // And back, with 2 sending nothing at all (DTX) instead of silence levels.
        let turn = call.at();
        call.run(Duration::from_secs(2), &[(p(1), Some(TALK)), (p(2), None)]);
        assert_eq!(call.current(), Some(p(1)));
        assert_eq!(call.changes.len(), 3);
        assert!(
            call.changes[2].0 - turn < Duration::from_secs(1),
            "{:?}",
            call.changes
        );
    }

    #[test]
    fn last_spoke_is_the_last_time_a_voice_was_loud_enough() {
        let mut call = Call::new();
        // 1 talks for a second, then is silent; 2 only ever makes room noise; 3 talks last.
        call.run(
            Duration::from_secs(1),
            &[(p(1), Some(TALK)), (p(2), Some(SILENCE)), (p(3), None)],
        );
        let one_stopped = call.now;
        call.run(
            Duration::from_secs(1),
            &[
                (p(1), Some(SILENCE)),
                (p(2), Some(SILENCE)),
                (p(3), Some(TALK)),
            ],
        );
        let spoke = |n| call.speakers.last_spoke(session(), p(n));
        let one = spoke(1).expect("1 spoke");
        let three = spoke(3).expect("3 spoke");
        assert!(one <= one_stopped + SMOOTHING * 3, "{one:?}");
        assert!(one < three);
        assert_eq!(spoke(2), None, "noise is not speech");
        assert_eq!(call.speakers.last_spoke(session(), p(4)), None);
    }

    #[test]
    fn a_cough_does_not_take_over() {
        let mut call = Call::new();
        call.run(
            Duration::from_secs(2),
            &[(p(1), Some(TALK)), (p(2), Some(SILENCE))],
        );
        assert_eq!(call.current(), Some(p(1)));
        // 1 pauses, 2 coughs loudly for 300 ms, then silence again.
        call.run(
            Duration::from_millis(300),
            &[(p(1), Some(SILENCE)), (p(2), Some(5))],
        );
        call.run(
            Duration::from_secs(3),
            &[(p(1), Some(SILENCE)), (p(2), Some(SILENCE))],
        );
        assert_eq!(call.current(), Some(p(1)));
        assert_eq!(call.changes.len(), 1, "{:?}", call.changes);
        // Nor while 1 speaks.
        call.run(
            Duration::from_millis(300),
            &[(p(1), Some(TALK)), (p(2), Some(0))],
        );
        call.run(
            Duration::from_secs(2),
            &[(p(1), Some(TALK)), (p(2), Some(SILENCE))],
        );
        assert_eq!(call.changes.len(), 1, "{:?}", call.changes);
    }

    #[test]
    fn talking_over_each_other_does_not_flip() {
        let mut call = Call::new();
        call.run(
            Duration::from_secs(2),
            &[(p(1), Some(TALK)), (p(2), Some(SILENCE))],
        );
        // Both at about the same level, each a little louder in turn (by less than the
        // margin), each time long enough to take over if there were no margin.
        for _ in 0..6 {
            call.run(
                Duration::from_millis(900),
                &[(p(1), Some(TALK)), (p(2), Some(TALK - 5))],
            );
            call.run(
                Duration::from_millis(900),
                &[(p(1), Some(TALK - 5)), (p(2), Some(TALK))],
            );
        }
        assert_eq!(call.current(), Some(p(1)));
        assert_eq!(call.changes.len(), 1, "{:?}", call.changes);
        // Much louder than the current speaker takes over, though the current one still talks.
        call.run(
            Duration::from_secs(2),
            &[(p(1), Some(QUIET_TALK)), (p(2), Some(5))],
        );
        assert_eq!(call.current(), Some(p(2)));
    }

    #[test]
    fn silence_keeps_the_last_speaker() {
        let mut call = Call::new();
        call.run(
            Duration::from_secs(2),
            &[(p(1), Some(SILENCE)), (p(2), Some(SILENCE))],
        );
        assert_eq!(call.current(), None);
        assert!(call.changes.is_empty());
        call.run(
            Duration::from_secs(2),
            &[(p(1), Some(SILENCE)), (p(2), Some(TALK))],
        );
        call.run(
            Duration::from_secs(10),
            &[(p(1), Some(SILENCE)), (p(2), Some(SILENCE))],
        );
        call.run(Duration::from_secs(10), &[(p(1), None), (p(2), None)]);
        assert_eq!(call.current(), Some(p(2)));
        assert_eq!(call.changes.len(), 1);
        // Leaving does not make it "nobody" either.
        call.speakers.forget(p(2));
        call.run(Duration::from_secs(1), &[(p(1), Some(SILENCE))]);
        assert_eq!(call.current(), Some(p(2)));
    }

    #[test]
    fn changes_are_at_most_one_a_second_and_the_latest_wins() {
        let mut call = Call::new();
        // Turns of 750 ms: each would be confirmed, but only one change per second is made.
        let people = [p(1), p(2), p(3)];
        for round in 0..10 {
            let speaking = people[round % 3];
            let levels: Vec<_> = people
                .iter()
                .map(|&q| (q, Some(if q == speaking { TALK } else { SILENCE })))
                .collect();
            call.run(Duration::from_millis(750), &levels);
        }
        assert!(
            call.changes.len() >= 4,
            "turns are followed: {:?}",
            call.changes
        );
        for pair in call.changes.windows(2) {
            let apart = pair[1].0 - pair[0].0;
            assert!(apart >= Duration::from_secs(1), "{:?}", call.changes);
            assert_ne!(pair[1].1, pair[0].1, "{:?}", call.changes);
        }
        // The last turn was people[0]'s (round 9): it holds the floor once the interval allows.
        call.run(
            Duration::from_secs(2),
            &[
                (people[0], Some(TALK)),
                (people[1], Some(SILENCE)),
                (people[2], Some(SILENCE)),
            ],
        );
        assert_eq!(call.current(), Some(people[0]));
    }

    #[test]
    fn sessions_are_independent() {
        let mut speakers = Speakers::default();
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let mut now = Instant::now();
        let other = SessionId::from(uuid::Uuid::from_u128(7));
        let mut changes = Vec::new();
        for _ in 0..100 {
            changes.extend(speakers.hear(session(), p(1), false, TALK, now));
            changes.extend(speakers.hear(other, p(2), true, TALK, now));
            now += FRAME;
        }
        assert_eq!(speakers.current(session()), Some(p(1)));
        assert_eq!(speakers.current(other), Some(p(2)));
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().any(|c| c.session == other && c.phone));
    }
}
