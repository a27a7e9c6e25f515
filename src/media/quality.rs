//! `PeerQuality`: what one peer connection measured (issue 21, "measure first"), kept in its
//! `Peer` so it moves with the connection between shards; and the shard's share of it, the
//! quality counters of [`super::MediaCounters`] and the subscriber samples the driver turns
//! into histograms.
//!
//! str0m produces the figures (statistics are enabled on every connection, once per
//! [`STATS_INTERVAL`]; they work in RTP mode): per track, `MediaIngressStats` on a publish
//! connection (bytes, packets, the loss and jitter of the receiver reports the server sends,
//! NACKs/PLIs/FIRs it sent) and `MediaEgressStats` on a subscribe connection (bytes, packets,
//! the loss, lost count, jitter and RTT of the device's receiver reports, NACKs/PLIs/FIRs it
//! sent). This part turns them into rates and milliseconds, and counts what str0m cannot
//! see: which of a subscriber's keyframe requests were passed on to a publisher and which
//! were merged, and how many the server asked of each publisher. Nothing here runs per
//! packet.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use str0m::media::{MediaKind as RtcKind, Mid};
use str0m::stats::{MediaEgressStats, MediaIngressStats};
use str0m::Rtc;

use super::MediaCounters;
use crate::domain::{ConnectionQuality, MediaKind, TrackQuality, STATS_INTERVAL_MS};

/// How often each connection's statistics are sampled.
pub(super) const STATS_INTERVAL: Duration = Duration::from_millis(STATS_INTERVAL_MS);

/// Samples kept between two reads by the driver ([`QualitySamples::take`]); beyond it the
/// oldest are not kept (a driver that stopped reading must not grow the engine).
const MAX_SAMPLES: usize = 8_192;

/// What one connection measured so far.
#[derive(Debug, Default)]
pub(super) struct PeerQuality {
    connected: bool,
    tracks: BTreeMap<Mid, Track>,
    keyframe_requests: u64,
    keyframe_requests_suppressed: u64,
}

#[derive(Debug, Default)]
struct Track {
    kind: Option<MediaKind>,
    sampled_at: Option<Instant>,
    bytes: u64,
    packets: u64,
    bitrate_bps: Option<u64>,
    loss_fraction: Option<f32>,
    packets_lost: Option<u64>,
    rtt_ms: Option<f64>,
    jitter_ms: Option<f64>,
    nacks: u64,
    plis: u64,
    firs: u64,
}

impl Track {
    /// Takes a new cumulative sample: the bitrate from the bytes since the last one.
    fn sample(&mut self, kind: Option<MediaKind>, at: Instant, bytes: u64, packets: u64) {
        self.kind = kind.or(self.kind);
        self.bitrate_bps = self
            .sampled_at
            .and_then(|before| bitrate_bps(bytes.saturating_sub(self.bytes), at - before));
        self.sampled_at = Some(at);
        self.bytes = bytes;
        self.packets = packets;
    }

    /// The track's NACK count becomes `nacks`; returns the increase.
    fn nacks_now(&mut self, nacks: u64) -> u64 {
        let increase = nacks.saturating_sub(self.nacks);
        self.nacks = nacks;
        increase
    }
}

/// Bits per second of `bytes` over `elapsed` (`None` over no time).
fn bitrate_bps(bytes: u64, elapsed: Duration) -> Option<u64> {
    let micros = elapsed.as_micros();
    (micros > 0).then(|| (u128::from(bytes) * 8 * 1_000_000 / micros) as u64)
}

/// RTP timestamp units of a track's clock as milliseconds (audio here is Opus at 48 kHz,
/// video VP8/H.264 at 90 kHz).
fn rtp_units_ms(units: u32, kind: Option<MediaKind>) -> Option<f64> {
    let rate = match kind? {
        MediaKind::Audio => 48_000.0,
        MediaKind::Video => 90_000.0,
    };
    Some(f64::from(units) * 1_000.0 / rate)
}

/// The kind of a connection's m-line.
pub(super) fn kind_of(rtc: &Rtc, mid: Mid) -> Option<MediaKind> {
    rtc.media(mid).map(|m| match m.kind() {
        RtcKind::Audio => MediaKind::Audio,
        RtcKind::Video => MediaKind::Video,
    })
}

impl PeerQuality {
    /// ICE and DTLS came up.
    pub(super) fn connected(&mut self) {
        self.connected = true;
    }

    /// A publish connection's track statistics (what the server received).
    pub(super) fn ingress(
        &mut self,
        stats: &MediaIngressStats,
        kind: Option<MediaKind>,
        counters: &mut MediaCounters,
    ) {
        let track = self.tracks.entry(stats.mid).or_default();
        track.sample(kind, stats.timestamp, stats.bytes, stats.packets);
        track.loss_fraction = stats.loss;
        track.rtt_ms = stats.rtt.map(|d| d.as_secs_f64() * 1_000.0);
        track.jitter_ms = rtp_units_ms(stats.jitter, track.kind);
        counters.nacks_sent += track.nacks_now(stats.nacks);
        track.plis = stats.plis;
        track.firs = stats.firs;
    }

    /// A subscribe connection's track statistics (what the server sent, and what the device
    /// reported of it).
    pub(super) fn egress(
        &mut self,
        stats: &MediaEgressStats,
        kind: Option<MediaKind>,
        counters: &mut MediaCounters,
        samples: &mut QualitySamples,
    ) {
        let track = self.tracks.entry(stats.mid).or_default();
        track.sample(kind, stats.timestamp, stats.bytes, stats.packets);
        track.loss_fraction = stats.loss;
        track.rtt_ms = stats.rtt.map(|d| d.as_secs_f64() * 1_000.0);
        track.packets_lost = stats.remote.as_ref().map(|r| r.packets_lost);
        track.jitter_ms = stats
            .remote
            .as_ref()
            .and_then(|r| rtp_units_ms(r.jitter, track.kind));
        counters.nacks_received += track.nacks_now(stats.nacks);
        track.plis = stats.plis;
        track.firs = stats.firs;
        samples.push(stats.loss, stats.rtt);
    }

    /// The server asked this publisher for a keyframe.
    pub(super) fn keyframe_asked(&mut self) {
        self.keyframe_requests += 1;
    }

    /// A keyframe request of this subscriber was passed on to a publisher (`true`) or not.
    pub(super) fn keyframe_request_passed(&mut self, passed: bool) {
        if passed {
            self.keyframe_requests += 1;
        } else {
            self.keyframe_requests_suppressed += 1;
        }
    }

    /// The connection as reported, at `now`.
    pub(super) fn report(&self, now: Instant) -> ConnectionQuality {
        let mut out = ConnectionQuality {
            connected: self.connected,
            sample_age_ms: self
                .tracks
                .values()
                .filter_map(|t| t.sampled_at)
                .max()
                .map(|at| now.saturating_duration_since(at).as_millis() as u64),
            keyframe_requests: self.keyframe_requests,
            keyframe_requests_suppressed: self.keyframe_requests_suppressed,
            tracks: self
                .tracks
                .iter()
                .map(|(mid, t)| TrackQuality {
                    mid: mid.to_string(),
                    kind: t.kind,
                    bitrate_bps: t.bitrate_bps,
                    bytes: t.bytes,
                    packets: t.packets,
                    loss_fraction: t.loss_fraction,
                    packets_lost: t.packets_lost,
                    rtt_ms: t.rtt_ms,
                    jitter_ms: t.jitter_ms,
                    nacks: t.nacks,
                    plis: t.plis,
                    firs: t.firs,
                })
                .collect(),
            ..ConnectionQuality::default()
        };
        out.summarize();
        out
    }
}

/// Subscriber loss fractions and round-trip times, one per track statistics sample, for the
/// driver's histograms (no participant label: a shard's distribution).
#[derive(Debug, Default)]
pub struct QualitySamples {
    /// Loss fractions (0 to 1) the subscribers reported.
    pub loss: Vec<f32>,
    /// Round-trip times to the subscribers.
    pub rtt: Vec<Duration>,
}

impl QualitySamples {
    fn push(&mut self, loss: Option<f32>, rtt: Option<Duration>) {
        if let Some(loss) = loss {
            if self.loss.len() < MAX_SAMPLES {
                self.loss.push(loss);
            }
        }
        if let Some(rtt) = rtt {
            if self.rtt.len() < MAX_SAMPLES {
                self.rtt.push(rtt);
            }
        }
    }

    /// The samples taken since the last call.
    pub fn take(&mut self) -> QualitySamples {
        std::mem::take(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitrate_is_bits_over_the_elapsed_time() {
        assert_eq!(
            bitrate_bps(125_000, Duration::from_secs(1)),
            Some(1_000_000)
        );
        assert_eq!(bitrate_bps(1_000, Duration::from_millis(500)), Some(16_000));
        assert_eq!(bitrate_bps(1_000, Duration::ZERO), None);
    }

    #[test]
    fn jitter_units_follow_the_track_clock() {
        assert_eq!(rtp_units_ms(480, Some(MediaKind::Audio)), Some(10.0));
        assert_eq!(rtp_units_ms(900, Some(MediaKind::Video)), Some(10.0));
        assert_eq!(rtp_units_ms(900, None), None);
    }

    #[test]
    fn a_track_has_a_bitrate_from_its_second_sample_and_counts_nack_increases() {
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let t0 = Instant::now();
        let mut track = Track::default();
        track.sample(Some(MediaKind::Video), t0, 10_000, 10);
        assert_eq!(track.bitrate_bps, None);
        track.sample(None, t0 + Duration::from_secs(1), 135_000, 110);
        assert_eq!(track.bitrate_bps, Some(1_000_000));
        assert_eq!(track.kind, Some(MediaKind::Video));
        assert_eq!(track.nacks_now(3), 3);
        assert_eq!(track.nacks_now(5), 2);
        assert_eq!(track.nacks_now(5), 0);
    }

    #[test]
    fn keyframe_requests_are_counted_passed_or_suppressed() {
        let mut q = PeerQuality::default();
        q.keyframe_request_passed(true);
        q.keyframe_request_passed(false);
        q.keyframe_request_passed(false);
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let r = q.report(Instant::now());
        assert_eq!(
            (r.keyframe_requests, r.keyframe_requests_suppressed),
            (1, 2)
        );
        assert!(!r.connected);
        assert_eq!(r.sample_age_ms, None);
    }

    #[test]
    fn samples_are_bounded_and_taken_once() {
        let mut s = QualitySamples::default();
        for _ in 0..MAX_SAMPLES + 10 {
            s.push(Some(0.5), None);
        }
        s.push(None, Some(Duration::from_millis(20)));
        let taken = s.take();
        assert_eq!(taken.loss.len(), MAX_SAMPLES);
        assert_eq!(taken.rtt, vec![Duration::from_millis(20)]);
        assert!(s.take().loss.is_empty());
    }
}
