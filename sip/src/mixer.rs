//! The downlink mixer: N decoded sources in, one 20 ms frame of 8 kHz mono out per tick.
//!
//! This module owns per-source PCM queues, their timing policy and the sum. Sources are
//! identified by an opaque [`SourceId`] (the caller's stream id); their PCM comes from an
//! Opus decoder already at 8 kHz and may arrive in any length (10, 20, 60 ms packets), so each
//! source keeps a sample queue that the mixer takes [`FRAME_SAMPLES`] at a time.
//!
//! Policy, per source:
//! - **Pre-buffer**: a source is first heard once it has [`MixerConfig::prebuffer_frames`]
//!   frames queued (the same after every underrun), which absorbs the network jitter of the
//!   forwarded stream.
//! - **Underrun**: when a playing source has less than a frame on a tick, it is counted once,
//!   gets *one* concealment frame from the caller's callback (Opus PLC in the phone pipeline),
//!   then is silent until it has pre-buffered again. A talker that simply stops (DTX, mute)
//!   costs one underrun, not one per tick.
//! - **Bounded latency**: after a tick, more than [`MixerConfig::max_backlog_frames`] frames
//!   still queued for [`MixerConfig::trim_after_ticks`] ticks in a row is a persistent backlog
//!   (the sender's clock runs fast, or a burst arrived); the oldest samples are dropped down to
//!   that backlog. With the defaults a source is at most 60 ms behind (the frame playing plus
//!   two queued), beyond a transient of 100 ms. A hard limit
//!   ([`MixerConfig::hard_limit_frames`]) is applied at push time so memory stays bounded
//!   whatever arrives.
//! - **Sum**: samples are added in 32 bits and clamped to `i16` (saturation, no limiter:
//!   a conference of phones rarely has more than one loud talker at a time).
//! - At most [`MixerConfig::max_sources`] sources; pushes for further new sources are refused.

use std::collections::{BTreeMap, VecDeque};

/// Samples per mixer frame: 20 ms at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;

/// One mixer frame.
pub type Frame = [i16; FRAME_SAMPLES];

/// An opaque source identity chosen by the caller (for example the SFU's track id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u64);

impl From<u64> for SourceId {
    fn from(id: u64) -> Self {
        SourceId(id)
    }
}

/// Tuning of the [`Mixer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixerConfig {
    /// Frames a source must have queued before it is heard (at start and after an underrun).
    pub prebuffer_frames: usize,
    /// Frames that may stay queued after a tick without counting as backlog.
    pub max_backlog_frames: usize,
    /// Consecutive ticks over the backlog before the excess is dropped.
    pub trim_after_ticks: u32,
    /// Frames a source may queue at all; the oldest are dropped at push time beyond this.
    pub hard_limit_frames: usize,
    /// Sources mixed at most.
    pub max_sources: usize,
}

impl Default for MixerConfig {
    /// Pre-buffer 2 frames, backlog 2 frames, trimmed after 5 ticks, hard limit 10 frames
    /// (200 ms), 32 sources.
    fn default() -> Self {
        MixerConfig {
            prebuffer_frames: 2,
            max_backlog_frames: 2,
            trim_after_ticks: 5,
            hard_limit_frames: 10,
            max_sources: 32,
        }
    }
}

/// Mixer counters since creation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MixerStats {
    /// Ticks run.
    pub ticks: u64,
    /// Underruns (a playing source found less than a frame), over all sources.
    pub underruns: u64,
    /// Concealment frames mixed in.
    pub concealed: u64,
    /// Samples dropped by the backlog trim or the hard limit.
    pub trimmed_samples: u64,
    /// Pushes refused because [`MixerConfig::max_sources`] sources were already present.
    pub refused_pushes: u64,
}

#[derive(Debug, Default)]
struct Source {
    queue: VecDeque<i16>,
    playing: bool,
    concealed: bool,
    backlog_ticks: u32,
}

/// Mixes any number of sources into 20 ms frames.
#[derive(Debug)]
pub struct Mixer {
    config: MixerConfig,
    sources: BTreeMap<SourceId, Source>,
    stats: MixerStats,
}

impl Default for Mixer {
    fn default() -> Self {
        Mixer::new(MixerConfig::default())
    }
}

impl Mixer {
    /// An empty mixer. Zero limits are raised to 1.
    pub fn new(mut config: MixerConfig) -> Self {
        config.prebuffer_frames = config.prebuffer_frames.max(1);
        config.hard_limit_frames = config
            .hard_limit_frames
            .max(config.prebuffer_frames)
            .max(config.max_backlog_frames.saturating_add(1));
        config.trim_after_ticks = config.trim_after_ticks.max(1);
        Mixer {
            config,
            sources: BTreeMap::new(),
            stats: MixerStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> MixerStats {
        self.stats
    }

    /// Sources present.
    pub fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// Whether `source` is present.
    pub fn contains(&self, source: SourceId) -> bool {
        self.sources.contains_key(&source)
    }

    /// Samples queued for `source` (0 if absent).
    pub fn queued_samples(&self, source: SourceId) -> usize {
        self.sources.get(&source).map_or(0, |s| s.queue.len())
    }

    /// Queues decoded 8 kHz PCM of any length for `source`, adding the source if new.
    /// Returns `false` if the source is new and the mixer is full.
    pub fn push(&mut self, source: SourceId, pcm: &[i16]) -> bool {
        if !self.sources.contains_key(&source) && self.sources.len() >= self.config.max_sources {
            self.stats.refused_pushes += 1;
            return false;
        }
        let limit = self.config.hard_limit_frames.saturating_mul(FRAME_SAMPLES);
        let entry = self.sources.entry(source).or_default();
        entry.queue.extend(pcm.iter().copied());
        if entry.queue.len() > limit {
            let excess = entry.queue.len() - limit;
            entry.queue.drain(..excess);
            self.stats.trimmed_samples += excess as u64;
        }
        true
    }

    /// Adds `source` with nothing queued (so it is known before its first frame).
    pub fn add(&mut self, source: SourceId) -> bool {
        self.push(source, &[])
    }

    /// Removes `source` and whatever it had queued. Returns whether it was present.
    pub fn remove(&mut self, source: SourceId) -> bool {
        self.sources.remove(&source).is_some()
    }

    /// One 20 ms mix with silence for starving sources.
    pub fn tick(&mut self) -> Frame {
        self.tick_with(|_| None)
    }

    /// One 20 ms mix; `conceal` is asked once per underrun for a concealment frame of the
    /// starving source (return `None` for silence).
    pub fn tick_with(&mut self, mut conceal: impl FnMut(SourceId) -> Option<Frame>) -> Frame {
        self.stats.ticks += 1;
        let mut acc = [0i32; FRAME_SAMPLES];
        let prebuffer = self.config.prebuffer_frames.saturating_mul(FRAME_SAMPLES);
        let backlog = self.config.max_backlog_frames.saturating_mul(FRAME_SAMPLES);
        for (&id, source) in self.sources.iter_mut() {
            if !source.playing {
                if source.queue.len() < prebuffer {
                    continue;
                }
                source.playing = true;
            }
            if source.queue.len() >= FRAME_SAMPLES {
                for (slot, sample) in acc.iter_mut().zip(source.queue.drain(..FRAME_SAMPLES)) {
                    *slot += i32::from(sample);
                }
                source.concealed = false;
                if source.queue.len() > backlog {
                    source.backlog_ticks += 1;
                    if source.backlog_ticks >= self.config.trim_after_ticks {
                        let excess = source.queue.len() - backlog;
                        source.queue.drain(..excess);
                        self.stats.trimmed_samples += excess as u64;
                        source.backlog_ticks = 0;
                    }
                } else {
                    source.backlog_ticks = 0;
                }
            } else {
                self.stats.underruns += 1;
                source.playing = false;
                source.backlog_ticks = 0;
                if !source.concealed {
                    source.concealed = true;
                    if let Some(frame) = conceal(id) {
                        self.stats.concealed += 1;
                        for (slot, sample) in acc.iter_mut().zip(frame) {
                            *slot += i32::from(sample);
                        }
                    }
                }
            }
        }
        let mut out = [0i16; FRAME_SAMPLES];
        for (o, a) in out.iter_mut().zip(acc) {
            *o = a.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_saturates() {
        let mut m = Mixer::new(MixerConfig {
            prebuffer_frames: 1,
            ..MixerConfig::default()
        });
        m.push(SourceId(1), &[30_000; FRAME_SAMPLES]);
        m.push(SourceId(2), &[30_000; FRAME_SAMPLES]);
        m.push(SourceId(3), &[-100; FRAME_SAMPLES]);
        let out = m.tick();
        assert!(out.iter().all(|&s| s == i16::MAX));
    }

    #[test]
    fn one_underrun_per_gap_and_one_concealment() {
        let mut m = Mixer::new(MixerConfig {
            prebuffer_frames: 1,
            ..MixerConfig::default()
        });
        m.push(SourceId(7), &[100; FRAME_SAMPLES]);
        assert_eq!(m.tick()[0], 100);
        let mut asked = 0;
        for _ in 0..5 {
            m.tick_with(|id| {
                assert_eq!(id, SourceId(7));
                asked += 1;
                Some([5; FRAME_SAMPLES])
            });
        }
        assert_eq!(asked, 1);
        assert_eq!(m.stats().underruns, 1);
        assert_eq!(m.stats().concealed, 1);
    }

    #[test]
    fn persistent_backlog_is_trimmed() {
        let mut m = Mixer::default();
        m.push(SourceId(1), &[1; FRAME_SAMPLES * 8]);
        let mut ticks = 0;
        while m.queued_samples(SourceId(1)) > 2 * FRAME_SAMPLES {
            m.tick();
            ticks += 1;
            assert!(ticks <= 5);
        }
        assert!(m.stats().trimmed_samples > 0);
        assert_eq!(m.queued_samples(SourceId(1)), 2 * FRAME_SAMPLES);
    }
}
