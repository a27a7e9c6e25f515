//! The placement directory: which shard a participant's device lives on. It owns nothing but
//! two maps (participant → shard, device → shard) and is sans-IO; the runtime keeps one
//! behind a lock shared by the handles. It is read when a device connects (where does it
//! go?), when a command names a device (which shard's inbox?) and to answer "is this
//! participant connected"; it is written when a device connects, moves or is removed. It is
//! never read per datagram: packets find their shard through each shard's own redirects.
//!
//! When a device moves, the runtime records the new shard only after the device's arrival
//! message is queued in that shard's inbox, so a command routed by the directory never
//! reaches a shard before the device does.

use std::collections::HashMap;

use crate::domain::{ParticipantId, SessionId};
use crate::media::DeviceId;

/// Spreads ids over `shards` shards: the home shard of a session, and the shard of a
/// participant in no session.
pub fn shard_by_hash(id: u128, shards: usize) -> usize {
    let folded = (id as u64) ^ ((id >> 64) as u64);
    (folded % shards.max(1) as u64) as usize
}

/// The shard hosting `session`: the one that applies its forwarding table.
pub fn home_of_session(session: SessionId, shards: usize) -> usize {
    shard_by_hash(session.as_uuid().as_u128(), shards)
}

/// Where participants' devices are. See the module docs.
#[derive(Debug, Default)]
pub struct Placement {
    participants: HashMap<ParticipantId, usize>,
    devices: HashMap<DeviceId, usize>,
    /// How many routing changes were handed to the shards: a connect that read its session
    /// before the last of them must read it again.
    routes_applied: u64,
}

impl Placement {
    /// How many devices are placed (browsers and phones' local devices).
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Records that `device` of `participant` lives on `shard` now.
    pub fn place(&mut self, device: DeviceId, participant: ParticipantId, shard: usize) {
        self.devices.insert(device, shard);
        self.participants.insert(participant, shard);
    }

    /// `device` was removed from `shard`. The participant is forgotten too when it has no
    /// other device there (`last`). Entries another shard has taken over since are kept.
    pub fn remove(
        &mut self,
        device: DeviceId,
        participant: ParticipantId,
        shard: usize,
        last: bool,
    ) {
        if self.devices.get(&device) == Some(&shard) {
            self.devices.remove(&device);
        }
        if last && self.participants.get(&participant) == Some(&shard) {
            self.participants.remove(&participant);
        }
    }

    /// The shard of the participant's device, if it has one.
    pub fn shard_of_participant(&self, participant: ParticipantId) -> Option<usize> {
        self.participants.get(&participant).copied()
    }

    /// Where a new device of `participant` goes: where its device is, else its session's
    /// home, else a shard chosen by its id.
    pub fn shard_for(
        &self,
        participant: ParticipantId,
        session: Option<SessionId>,
        shards: usize,
    ) -> usize {
        if let Some(shard) = self.shard_of_participant(participant) {
            return shard;
        }
        match session {
            Some(s) => home_of_session(s, shards),
            None => shard_by_hash(participant.as_uuid().as_u128(), shards),
        }
    }

    /// The shard a command for `device` goes to (shard 0 for a device never seen: it answers
    /// "unknown device").
    pub fn shard_of_device(&self, device: DeviceId) -> usize {
        self.devices.get(&device).copied().unwrap_or(0)
    }

    /// Whether `participant` has a live device anywhere.
    pub fn is_connected(&self, participant: ParticipantId) -> bool {
        self.participants.contains_key(&participant)
    }

    /// How many routing changes were handed to the shards.
    pub fn routes_applied(&self) -> u64 {
        self.routes_applied
    }

    /// One more routing change is handed to the shards (under the same lock as the
    /// placements, so every connect is ordered before or after it).
    pub fn note_routes(&mut self) {
        self.routes_applied += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_by_a_shard_the_device_left_keeps_the_new_place() {
        let mut p = Placement::default();
        let participant = ParticipantId::random();
        let device = DeviceId(1);
        p.place(device, participant, 0);
        p.place(device, participant, 1);
        p.remove(device, participant, 0, true);
        assert_eq!(p.shard_of_device(device), 1);
        assert!(p.is_connected(participant));
        p.remove(device, participant, 1, true);
        assert!(!p.is_connected(participant));
    }
}
