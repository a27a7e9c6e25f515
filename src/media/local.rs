//! `LocalDevices`: devices without WebRTC connections (a phone call bridged by the SIP
//! runtime). Owns each local device's received audio tracks, each named by a [`SourceKey`]
//! its driver mixes by, and the numbering of its published audio (its frames become the
//! packets a publisher's RTP would be), and the latest report its driver made of the device's
//! own leg (a phone call's RTP, measured by the SIP runtime). Nothing is negotiated: a local
//! device receives its routes' audio at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use str0m::format::Codec;
use str0m::media::Mid;

use super::devices::Leg;
use super::keys::{Source, SourceKey, Target, TrackKey};
use super::publishing::Publication;
use super::relay::Packet;
use super::rewrite::Origin;
use super::DeviceId;
use crate::domain::{ConnectionQuality, MediaKind, StreamAlias, StreamId};

/// The one "m-line" of a local device's published audio.
const LOCAL_AUDIO_MID: &str = "phone";

/// The highest RFC 6464 level (-dBov) a phone's frame is marked as voice at (the V bit).
const VOICE_LEVEL: u8 = 50;

/// What a local device publishes: one audio stream, `stream` with `alias`.
pub(super) fn publication(
    stream: StreamId,
    alias: Option<StreamAlias>,
) -> BTreeMap<StreamId, Publication> {
    let publication = Publication {
        alias,
        mids: vec![(Mid::from(LOCAL_AUDIO_MID), MediaKind::Audio)],
    };
    BTreeMap::from([(stream, publication)])
}

/// What one local device receives, and the numbering of what it publishes.
#[derive(Default)]
pub(super) struct LocalDevice {
    tracks: BTreeMap<TrackKey, SourceKey>,
    /// The sequence number of the next packet of its published audio (its frames have none:
    /// the engine numbers them like a publisher's RTP).
    next_seq: u64,
    /// What its driver last reported of its leg: what the device sent (received by the
    /// server), what it was sent, and when the report came.
    leg: Option<(Leg, Instant)>,
}

#[derive(Default)]
pub(super) struct LocalDevices {
    by_device: HashMap<DeviceId, LocalDevice>,
}

impl LocalDevices {
    pub(super) fn add(&mut self, device: DeviceId, state: LocalDevice) {
        self.by_device.insert(device, state);
    }

    pub(super) fn remove(&mut self, device: DeviceId) -> Option<LocalDevice> {
        self.by_device.remove(&device)
    }

    /// The driver's report of the device's leg at `now`: `publish`, what the device sends
    /// (measured as received), `subscribe`, what it is sent.
    pub(super) fn set_leg(&mut self, device: DeviceId, leg: Leg, now: Instant) {
        if let Some(state) = self.by_device.get_mut(&device) {
            state.leg = Some((leg, now));
        }
    }

    /// The last report of the device's leg, with its age at `now` (publish, subscribe).
    pub(super) fn leg(&self, device: DeviceId, now: Instant) -> Option<Leg> {
        let ((publish, subscribe), at) = self.by_device.get(&device)?.leg.as_ref()?;
        let age = Some(now.saturating_duration_since(*at).as_millis() as u64);
        let aged = |c: &ConnectionQuality| ConnectionQuality {
            sample_age_ms: age,
            ..c.clone()
        };
        Some((aged(publish), aged(subscribe)))
    }

    /// The sequence number for the device's next published packet.
    pub(super) fn next_seq(&mut self, device: DeviceId) -> Option<u64> {
        let state = self.by_device.get_mut(&device)?;
        let seq = state.next_seq;
        state.next_seq += 1;
        Some(seq)
    }

    /// An Opus frame (20 ms, RTP time at 48 kHz) of the device's published stream, as the
    /// packet a publisher's RTP would be: numbered, and with `level` (RFC 6464, -dBov, 0 to
    /// 127, when its driver measured it) as the audio-level header extension would carry it.
    /// `None` for a device that is not here.
    pub(super) fn packet<'a>(
        &mut self,
        device: DeviceId,
        rtp_time: u64,
        payload: &'a Arc<[u8]>,
        level: Option<u8>,
        now: Instant,
    ) -> Option<Packet<'a>> {
        let seq = self.next_seq(device)?;
        Some(Packet {
            origin: Origin {
                source: Source::Local(device),
                ssrc: 0,
            },
            params: None,
            codec: Codec::Opus,
            clock_rate: 48_000,
            seq,
            ts: rtp_time as u32,
            time_48k: rtp_time,
            marker: false,
            audio_level: level.map(|l| -(l.min(127) as i8)),
            voice_activity: level.map(|l| l <= VOICE_LEVEL),
            video_orientation: None,
            arrival: now,
            payload,
        })
    }

    /// The device receives the audio of `desired` from now on. Returns its fan-out targets
    /// and its sources.
    pub(super) fn set_tracks(
        &mut self,
        device: DeviceId,
        desired: &BTreeMap<TrackKey, Option<StreamAlias>>,
    ) -> (BTreeMap<TrackKey, Target>, Vec<SourceKey>) {
        let state = self.by_device.entry(device).or_default();
        state.tracks = desired
            .keys()
            .filter(|k| k.kind == MediaKind::Audio)
            .map(|k| (k.clone(), SourceKey::of(k.publisher, &k.stream)))
            .collect();
        let targets = state
            .tracks
            .iter()
            .map(|(k, &source)| (k.clone(), Target::Local { device, source }))
            .collect();
        (targets, state.tracks.values().copied().collect())
    }
}
