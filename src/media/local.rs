//! `LocalDevices`: devices without WebRTC connections (a phone call bridged by the SIP
//! runtime). Owns each local device's received audio tracks, each named by a [`SourceKey`]
//! its driver mixes by. Nothing is negotiated: a local device receives its routes' audio at
//! once.

use std::collections::{BTreeMap, HashMap};

use super::keys::{SourceKey, Target, TrackKey};
use super::DeviceId;
use crate::domain::{MediaKind, StreamAlias};

/// What one local device receives, and the numbering of what it publishes.
#[derive(Default)]
pub(super) struct LocalDevice {
    tracks: BTreeMap<TrackKey, SourceKey>,
    /// The sequence number of the next packet of its published audio (its frames have none:
    /// the engine numbers them like a publisher's RTP).
    next_seq: u64,
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

    /// The sequence number for the device's next published packet.
    pub(super) fn next_seq(&mut self, device: DeviceId) -> Option<u64> {
        let state = self.by_device.get_mut(&device)?;
        let seq = state.next_seq;
        state.next_seq += 1;
        Some(seq)
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
