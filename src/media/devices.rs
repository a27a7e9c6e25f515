//! `Devices`: the devices of one engine. Owns device → (participant, permissions, its peer
//! connections) and participant → device (one live device per participant); and reads a
//! device's quality report off its connections.

use std::collections::HashMap;
use std::time::Instant;

use super::keys::PeerId;
use super::peers::Peers;
use super::DeviceId;
use crate::domain::{
    ConnectionQuality, ParticipantId, ParticipantQuality, PublishPermissions, QualityDevice,
    SessionId,
};

pub(super) struct Device {
    pub(super) participant: ParticipantId,
    pub(super) permissions: PublishPermissions,
    pub(super) kind: DeviceKind,
}

pub(super) enum DeviceKind {
    /// A browser (or any WebRTC device): up to two peer connections, made on demand.
    Browser {
        publish: Option<PeerId>,
        subscribe: Option<PeerId>,
    },
    /// A phone call bridged by the SIP runtime: no peer connection at all.
    Local,
}

impl Device {
    pub(super) fn browser(participant: ParticipantId, permissions: PublishPermissions) -> Device {
        Device {
            participant,
            permissions,
            kind: DeviceKind::Browser {
                publish: None,
                subscribe: None,
            },
        }
    }

    pub(super) fn local(participant: ParticipantId) -> Device {
        Device {
            participant,
            permissions: PublishPermissions::AUDIO,
            kind: DeviceKind::Local,
        }
    }

    pub(super) fn is_local(&self) -> bool {
        matches!(self.kind, DeviceKind::Local)
    }

    pub(super) fn publish_peer(&self) -> Option<PeerId> {
        match self.kind {
            DeviceKind::Browser { publish, .. } => publish,
            DeviceKind::Local => None,
        }
    }

    pub(super) fn subscribe_peer(&self) -> Option<PeerId> {
        match self.kind {
            DeviceKind::Browser { subscribe, .. } => subscribe,
            DeviceKind::Local => None,
        }
    }

    /// Its peer connections.
    pub(super) fn peers(&self) -> impl Iterator<Item = PeerId> {
        [self.publish_peer(), self.subscribe_peer()]
            .into_iter()
            .flatten()
    }

    pub(super) fn set_peer(&mut self, subscribe: bool, peer: Option<PeerId>) {
        if let DeviceKind::Browser {
            publish,
            subscribe: sub,
        } = &mut self.kind
        {
            if subscribe {
                *sub = peer;
            } else {
                *publish = peer;
            }
        }
    }
}

#[derive(Default)]
pub(super) struct Devices {
    devices: HashMap<DeviceId, Device>,
    of_participant: HashMap<ParticipantId, DeviceId>,
}

impl Devices {
    /// Adds a device. The caller removes the participant's previous device first.
    pub(super) fn insert(&mut self, id: DeviceId, device: Device) {
        self.of_participant.insert(device.participant, id);
        self.devices.insert(id, device);
    }

    pub(super) fn remove(&mut self, id: DeviceId) -> Option<Device> {
        let device = self.devices.remove(&id)?;
        if self.of_participant.get(&device.participant) == Some(&id) {
            self.of_participant.remove(&device.participant);
        }
        Some(device)
    }

    pub(super) fn get(&self, id: DeviceId) -> Option<&Device> {
        self.devices.get(&id)
    }

    pub(super) fn get_mut(&mut self, id: DeviceId) -> Option<&mut Device> {
        self.devices.get_mut(&id)
    }

    /// The live device of `participant` here.
    pub(super) fn of_participant(&self, participant: ParticipantId) -> Option<DeviceId> {
        self.of_participant.get(&participant).copied()
    }

    pub(super) fn ids(&self) -> impl Iterator<Item = DeviceId> + '_ {
        self.devices.keys().copied()
    }
}

/// A local device's leg as its driver reported it: what it sends (publish, measured as
/// received) and what it is sent (subscribe).
pub(super) type Leg = (ConnectionQuality, ConnectionQuality);

/// What `device`'s connections measured, at `now` (for a local device, `leg`); `session`: the
/// session whose table names its participant here.
fn quality_report(
    device: &Device,
    peers: &Peers,
    leg: Option<Leg>,
    session: Option<SessionId>,
    now: Instant,
) -> ParticipantQuality {
    if device.is_local() {
        let (publish, subscribe) = leg.unzip();
        return ParticipantQuality {
            device: QualityDevice::Phone,
            session,
            publish,
            subscribe,
        };
    }
    let connection = |p: Option<u64>| {
        let peer = peers.get(p?)?;
        let mut c = peer.quality.report(now);
        c.estimate_bps = peer.allocation.estimate();
        c.paused_video_tracks = peer.allocation.paused_tracks();
        c.video_ceiling_bps = peer.caps.ceiling();
        Some(c)
    };
    ParticipantQuality {
        device: QualityDevice::Browser,
        session,
        publish: connection(device.publish_peer()),
        subscribe: connection(device.subscribe_peer()),
    }
}

/// What every participant's live device (`only`: that participant's) measured, at `now`
/// (`leg`: a local device's leg; `session`: a participant's session here).
pub(super) fn quality_reports(
    devices: &Devices,
    peers: &Peers,
    only: Option<ParticipantId>,
    leg: impl Fn(DeviceId) -> Option<Leg>,
    session: impl Fn(ParticipantId) -> Option<SessionId>,
    now: Instant,
) -> Vec<(ParticipantId, ParticipantQuality)> {
    let ids: Box<dyn Iterator<Item = DeviceId> + '_> = match only {
        Some(p) => Box::new(devices.of_participant(p).into_iter()),
        None => Box::new(devices.ids()),
    };
    ids.filter_map(|id| {
        let device = devices.get(id)?;
        let p = device.participant;
        (devices.of_participant(p) == Some(id))
            .then(|| (p, quality_report(device, peers, leg(id), session(p), now)))
    })
    .collect()
}
