//! What the media plane measured of a participant's connections (issue 21, "measure first"):
//! the media plane produces it, control hands it over, the REST adapter and the operator's
//! views render it. Plain values; every figure says its unit in its name.

use super::MediaKind;

/// What kind of device a participant has connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QualityDevice {
    /// A WebRTC device (a browser): a publish and a subscribe connection, each measured.
    Browser,
    /// A phone call bridged by the SIP runtime: it has no WebRTC connection; its RTP leg, as
    /// the SIP runtime measures it, stands for its connections (what the phone sends, as
    /// received: packets, bytes, loss at the jitter buffer, interarrival jitter; what it is
    /// sent: packets and bytes).
    Phone,
}

/// The measured quality of a participant's device on this process's media plane.
#[derive(Debug, Clone, PartialEq)]
pub struct ParticipantQuality {
    /// The device's kind.
    pub device: QualityDevice,
    /// The session whose table names the participant on this media plane, if any.
    pub session: Option<super::SessionId>,
    /// Its publish connection (media from the device to the server), if it has one.
    pub publish: Option<ConnectionQuality>,
    /// Its subscribe connection (media from the server to the device), if it has one.
    pub subscribe: Option<ConnectionQuality>,
}

/// One peer connection, measured in one direction: what the server received on a publish
/// connection, what it sent on a subscribe connection.
///
/// Cumulative counts run from the connection's start (a connection that moved between shards
/// keeps them; a new connection after a reconnect starts again). Rates, loss, jitter and RTT
/// are the latest sample (statistics are taken once per [`STATS_INTERVAL_MS`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionQuality {
    /// ICE and DTLS are up.
    pub connected: bool,
    /// Milliseconds since the last statistics sample; `None` before the first.
    pub sample_age_ms: Option<u64>,
    /// RTP payload bits per second over the last sample interval, all tracks.
    pub bitrate_bps: Option<u64>,
    /// RTP payload bytes, all tracks, retransmissions included.
    pub bytes: u64,
    /// RTP packets, all tracks, retransmissions included.
    pub packets: u64,
    /// The worst track's loss fraction (0 to 1) in the last report (see [`TrackQuality`]).
    pub loss_fraction: Option<f32>,
    /// Packets the device reported lost, all tracks (subscribe connections only: from the
    /// device's receiver reports; `None` on a publish connection, where it is not measured).
    pub packets_lost: Option<u64>,
    /// The highest track round-trip time in the last sample, milliseconds.
    pub rtt_ms: Option<f64>,
    /// The highest track interarrival jitter in the last sample, milliseconds.
    pub jitter_ms: Option<f64>,
    /// NACK feedback messages (each may name several packets): sent to the device on a
    /// publish connection, received from it on a subscribe connection.
    pub nacks: u64,
    /// PLIs: sent to the device on a publish connection, received from it on a subscribe one.
    pub plis: u64,
    /// FIRs, likewise.
    pub firs: u64,
    /// Publish: keyframe requests the server asked of this publisher (for its subscribers'
    /// PLIs/FIRs and for source switches), after merging. Subscribe: this subscriber's PLIs and
    /// FIRs that the server passed on to a publisher.
    pub keyframe_requests: u64,
    /// Subscribe: this subscriber's PLIs and FIRs not passed on (merged with a request sent
    /// to the same track within the last 300 ms, or none could be sent: no publisher on the
    /// m-line now, or its connection negotiated no PLI/FIR).
    /// Always 0 on a publish connection.
    pub keyframe_requests_suppressed: u64,
    /// Subscribe, with the subscriber's bandwidth estimation on: the link's latest estimate,
    /// bits per second (`None` without one).
    pub estimate_bps: Option<u64>,
    /// Publish, with the subscriber's bandwidth estimation on: the lowest REMB ceiling the
    /// server holds this device's video to (a track with one viewer whose link is congested),
    /// bits per second; `None` when no track is capped.
    pub video_ceiling_bps: Option<u64>,
    /// Subscribe: video tracks held back because the link cannot carry them (audio first).
    pub paused_video_tracks: u32,
    /// Per track (m-line) that carried media, in mid order.
    pub tracks: Vec<TrackQuality>,
}

/// One track (m-line) of a connection, in the connection's direction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackQuality {
    /// The m-line's mid (the server's mid on a subscribe connection).
    pub mid: String,
    /// Audio or video.
    pub kind: Option<MediaKind>,
    /// RTP payload bits per second over the last sample interval.
    pub bitrate_bps: Option<u64>,
    /// RTP payload bytes, retransmissions included.
    pub bytes: u64,
    /// RTP packets, retransmissions included.
    pub packets: u64,
    /// Publish: the fraction lost in the last receiver report the server sent for the track.
    /// Subscribe: the fraction the device reported lost, averaged over the reports of the
    /// last sample interval (`None` when none came).
    pub loss_fraction: Option<f32>,
    /// Subscribe only: packets the device reported lost (cumulative, its last report).
    pub packets_lost: Option<u64>,
    /// Round-trip time from the last report that allowed computing it, milliseconds
    /// (publish: RTCP XR DLRR, which browsers rarely send; subscribe: receiver reports).
    pub rtt_ms: Option<f64>,
    /// Interarrival jitter, milliseconds (publish: as the server computed it; subscribe: as
    /// the device reported it).
    pub jitter_ms: Option<f64>,
    /// NACK feedback messages (sent on publish, received on subscribe).
    pub nacks: u64,
    /// PLIs (sent on publish, received on subscribe).
    pub plis: u64,
    /// FIRs (sent on publish, received on subscribe).
    pub firs: u64,
}

/// How often the media plane samples each connection's statistics, in milliseconds.
pub const STATS_INTERVAL_MS: u64 = 1_000;

/// A participant's call quality in one word (issue 21, step 6), from what its connections
/// measured in their latest sample: the worst of loss, round-trip time and audio jitter
/// against the thresholds below, and poor while the subscriber's link cannot carry its
/// video (a track paused by the audio-first allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QualityLevel {
    /// Nothing measured reaches the fair thresholds.
    Good,
    /// Noticeable: some loss, delay or jitter that the codecs still hide mostly.
    Fair,
    /// The call suffers: heavy loss, long delays, or video paused for a thin link.
    Poor,
}

impl QualityLevel {
    /// `good`, `fair` or `poor`.
    pub fn as_str(self) -> &'static str {
        match self {
            QualityLevel::Good => "good",
            QualityLevel::Fair => "fair",
            QualityLevel::Poor => "poor",
        }
    }
}

/// A track's loss fraction from which a connection is fair (Opus and NACKs hide less).
pub(crate) const FAIR_LOSS: f32 = 0.02;
/// … and poor.
pub(crate) const POOR_LOSS: f32 = 0.08;
/// A round-trip time from which a connection is fair, milliseconds (a one-way delay past
/// 150 ms is where conversation starts to suffer, ITU-T G.114).
pub(crate) const FAIR_RTT_MS: f64 = 300.0;
/// … and poor.
pub(crate) const POOR_RTT_MS: f64 = 600.0;
/// An audio track's interarrival jitter from which a connection is fair, milliseconds (video
/// is left out: its frames leave in bursts of packets with one timestamp, which reads as
/// jitter however good the link).
pub(crate) const FAIR_JITTER_MS: f64 = 30.0;
/// … and poor.
pub(crate) const POOR_JITTER_MS: f64 = 80.0;

/// A sample older than this many intervals is no longer current.
const CURRENT_SAMPLES: u64 = 3;

impl ConnectionQuality {
    /// The connection's level from its latest sample; `None` when it is not connected or has
    /// no current sample.
    pub fn level(&self) -> Option<QualityLevel> {
        let current = self
            .sample_age_ms
            .is_some_and(|age| age <= CURRENT_SAMPLES * STATS_INTERVAL_MS);
        if !self.connected || !current {
            return None;
        }
        let grade = |value: f64, fair: f64, poor: f64| {
            if value >= poor {
                QualityLevel::Poor
            } else if value >= fair {
                QualityLevel::Fair
            } else {
                QualityLevel::Good
            }
        };
        let paused = if self.paused_video_tracks > 0 {
            QualityLevel::Poor
        } else {
            QualityLevel::Good
        };
        let tracks = self.tracks.iter().flat_map(|t| {
            let audio = t.kind == Some(MediaKind::Audio);
            [
                t.loss_fraction
                    .map(|l| grade(f64::from(l), f64::from(FAIR_LOSS), f64::from(POOR_LOSS))),
                t.rtt_ms.map(|r| grade(r, FAIR_RTT_MS, POOR_RTT_MS)),
                t.jitter_ms
                    .filter(|_| audio)
                    .map(|j| grade(j, FAIR_JITTER_MS, POOR_JITTER_MS)),
            ]
        });
        tracks.flatten().chain([paused]).max()
    }
}

/// How many samples in a row (taken every few seconds for the store) a new level must show
/// before it is reported as a change.
pub(crate) const LEVEL_CONFIRMATIONS: u32 = 2;

/// A participant's level as reported to its backend (`onQualityChanged`): the first level
/// measured is taken as it is, and a different one is reported once it has shown in
/// [`LEVEL_CONFIRMATIONS`] samples in a row, so a single bad second does not make a webhook.
/// Samples with no current level change nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LevelWatch {
    reported: Option<QualityLevel>,
    pending: Option<(QualityLevel, u32)>,
}

impl LevelWatch {
    /// One sample's level; `Some((previous, new))` when it makes a change to report.
    pub fn observe(&mut self, level: Option<QualityLevel>) -> Option<(QualityLevel, QualityLevel)> {
        let level = level?;
        let Some(reported) = self.reported else {
            self.reported = Some(level);
            return None;
        };
        if level == reported {
            self.pending = None;
            return None;
        }
        let seen = match self.pending {
            Some((pending, n)) if pending == level => n + 1,
            _ => 1,
        };
        if seen >= LEVEL_CONFIRMATIONS {
            self.reported = Some(level);
            self.pending = None;
            return Some((reported, level));
        }
        self.pending = Some((level, seen));
        None
    }
}

impl ParticipantQuality {
    /// The worse of its connections' levels; `None` when neither has one (not connected yet,
    /// or no current sample).
    pub fn level(&self) -> Option<QualityLevel> {
        let publish = self.publish.as_ref().and_then(ConnectionQuality::level);
        let subscribe = self.subscribe.as_ref().and_then(ConnectionQuality::level);
        publish.max(subscribe)
    }
}

impl ConnectionQuality {
    /// Derives the connection's summary fields (bitrate, bytes, packets, loss, lost, RTT,
    /// jitter, NACK/PLI/FIR counts) from its tracks: sums of counts, the worst loss, the
    /// highest RTT and jitter. A connection with no track keeps `None`/0.
    pub fn summarize(&mut self) {
        let tracks = &self.tracks;
        self.bytes = tracks.iter().map(|t| t.bytes).sum();
        self.packets = tracks.iter().map(|t| t.packets).sum();
        self.nacks = tracks.iter().map(|t| t.nacks).sum();
        self.plis = tracks.iter().map(|t| t.plis).sum();
        self.firs = tracks.iter().map(|t| t.firs).sum();
        self.bitrate_bps = sum_some(tracks.iter().map(|t| t.bitrate_bps));
        self.packets_lost = sum_some(tracks.iter().map(|t| t.packets_lost));
        self.loss_fraction = max_some(tracks.iter().map(|t| t.loss_fraction));
        self.rtt_ms = max_some(tracks.iter().map(|t| t.rtt_ms));
        self.jitter_ms = max_some(tracks.iter().map(|t| t.jitter_ms));
    }
}

fn sum_some(values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    values.flatten().reduce(|a, b| a.saturating_add(b))
}

fn max_some<T: PartialOrd>(values: impl Iterator<Item = Option<T>>) -> Option<T> {
    values.flatten().reduce(|a, b| if b > a { b } else { a })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(mid: &str, bitrate: Option<u64>, loss: Option<f32>, rtt: Option<f64>) -> TrackQuality {
        TrackQuality {
            mid: mid.into(),
            kind: Some(MediaKind::Video),
            bitrate_bps: bitrate,
            bytes: 100,
            packets: 10,
            loss_fraction: loss,
            packets_lost: loss.map(|_| 2),
            rtt_ms: rtt,
            jitter_ms: None,
            nacks: 1,
            plis: 2,
            firs: 3,
        }
    }

    #[test]
    fn a_connection_sums_counts_and_takes_the_worst_track() {
        let mut c = ConnectionQuality {
            tracks: vec![
                track("0", Some(64_000), Some(0.01), Some(20.0)),
                track("1", None, Some(0.25), None),
                track("2", Some(1_000_000), None, Some(35.5)),
            ],
            ..ConnectionQuality::default()
        };
        c.summarize();
        assert_eq!(c.bytes, 300);
        assert_eq!(c.packets, 30);
        assert_eq!((c.nacks, c.plis, c.firs), (3, 6, 9));
        assert_eq!(c.bitrate_bps, Some(1_064_000));
        assert_eq!(c.loss_fraction, Some(0.25));
        assert_eq!(c.packets_lost, Some(4));
        assert_eq!(c.rtt_ms, Some(35.5));
        assert_eq!(c.jitter_ms, None);
    }

    fn measured(tracks: Vec<TrackQuality>) -> ConnectionQuality {
        let mut c = ConnectionQuality {
            connected: true,
            sample_age_ms: Some(400),
            tracks,
            ..ConnectionQuality::default()
        };
        c.summarize();
        c
    }

    fn audio(loss: f32, rtt: f64, jitter: f64) -> TrackQuality {
        TrackQuality {
            kind: Some(MediaKind::Audio),
            jitter_ms: Some(jitter),
            ..track("0", Some(32_000), Some(loss), Some(rtt))
        }
    }

    #[test]
    fn a_level_is_the_worst_figure_against_its_thresholds() {
        use QualityLevel::*;
        assert_eq!(measured(vec![audio(0.0, 40.0, 5.0)]).level(), Some(Good));
        assert_eq!(measured(vec![audio(0.03, 40.0, 5.0)]).level(), Some(Fair));
        assert_eq!(measured(vec![audio(0.0, 350.0, 5.0)]).level(), Some(Fair));
        assert_eq!(measured(vec![audio(0.0, 40.0, 45.0)]).level(), Some(Fair));
        assert_eq!(measured(vec![audio(0.03, 700.0, 5.0)]).level(), Some(Poor));
        assert_eq!(measured(vec![audio(0.0, 40.0, 90.0)]).level(), Some(Poor));
        // Video's jitter does not count; its loss does.
        let mut video = track("1", Some(500_000), Some(0.0), Some(40.0));
        video.jitter_ms = Some(120.0);
        assert_eq!(
            measured(vec![audio(0.0, 40.0, 5.0), video.clone()]).level(),
            Some(Good)
        );
        video.loss_fraction = Some(0.1);
        assert_eq!(
            measured(vec![audio(0.0, 40.0, 5.0), video]).level(),
            Some(Poor)
        );
        // A subscriber whose video is paused for its link is poor.
        let mut paused = measured(vec![audio(0.0, 40.0, 5.0)]);
        paused.paused_video_tracks = 1;
        assert_eq!(paused.level(), Some(Poor));
    }

    #[test]
    fn no_current_sample_no_level_and_a_participant_takes_its_worse_connection() {
        let mut stale = measured(vec![audio(0.3, 40.0, 5.0)]);
        stale.sample_age_ms = Some(10_000);
        assert_eq!(stale.level(), None);
        let mut down = measured(vec![audio(0.3, 40.0, 5.0)]);
        down.connected = false;
        assert_eq!(down.level(), None);
        let p = ParticipantQuality {
            device: QualityDevice::Browser,
            session: None,
            publish: Some(measured(vec![audio(0.0, 40.0, 5.0)])),
            subscribe: Some(measured(vec![audio(0.05, 40.0, 5.0)])),
        };
        assert_eq!(p.level(), Some(QualityLevel::Fair));
        let p = ParticipantQuality {
            subscribe: Some(stale),
            ..p
        };
        assert_eq!(p.level(), Some(QualityLevel::Good));
        let phone = ParticipantQuality {
            device: QualityDevice::Phone,
            session: None,
            publish: None,
            subscribe: None,
        };
        assert_eq!(phone.level(), None);
    }

    #[test]
    fn a_level_change_is_reported_once_it_holds() {
        use QualityLevel::*;
        let mut w = LevelWatch::default();
        assert_eq!(w.observe(Some(Good)), None, "the first level is no change");
        assert_eq!(w.observe(None), None);
        assert_eq!(w.observe(Some(Poor)), None, "one sample is not enough");
        assert_eq!(w.observe(Some(Good)), None, "and it went back");
        assert_eq!(w.observe(Some(Poor)), None);
        assert_eq!(w.observe(None), None, "no current sample breaks nothing");
        assert_eq!(w.observe(Some(Poor)), Some((Good, Poor)));
        assert_eq!(w.observe(Some(Poor)), None, "reported once");
        assert_eq!(w.observe(Some(Fair)), None);
        assert_eq!(
            w.observe(Some(Good)),
            None,
            "a different level starts again"
        );
        assert_eq!(w.observe(Some(Good)), Some((Poor, Good)));
    }

    #[test]
    fn a_connection_without_tracks_measured_nothing() {
        let mut c = ConnectionQuality::default();
        c.summarize();
        assert_eq!(c, ConnectionQuality::default());
    }
}
