//! A device moving from one shard's engine to another's ([`MovedDevice`]): the state it takes
//! out of every part of the engine it leaves, and puts into the parts of the one it joins,
//! untouched (its peer connections stay up, its streams stay published, its subscribe
//! negotiation and local tracks go with it). It owns nothing while the device is in an engine.
//! The engine coordinates a move (`Engine::export_device`, `Engine::import_device`): it
//! replaces a device of the same participant and renegotiates the subscribers the move
//! concerns; this part only carries the state across.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::demux::Demux;
use super::devices::{Device, Devices};
use super::fanout::Fanout;
use super::local::{LocalDevice, LocalDevices};
use super::peers::{Peer, Peers};
use super::publishing::{Published, Publishing};
use super::subscribing::{Subscriber, Subscribing};
use super::DeviceId;
use crate::domain::ParticipantId;

/// A device on its way from one shard's engine to another's: its state in every part and its
/// peer connections, moved as they are.
pub struct MovedDevice {
    id: DeviceId,
    device: Device,
    published: Option<Published>,
    subscriber: Option<Subscriber>,
    local: Option<LocalDevice>,
    /// Its peer connections, each with the remote addresses it was reached at.
    peers: Vec<(Peer, Vec<SocketAddr>)>,
}

/// The parts of an engine a device is taken out of or put into, lent per move.
pub(super) struct Parts<'a> {
    pub demux: &'a mut Demux,
    pub peers: &'a mut Peers,
    pub devices: &'a mut Devices,
    pub publishing: &'a mut Publishing,
    pub subscribing: &'a mut Subscribing,
    pub local: &'a mut LocalDevices,
    pub fanout: &'a mut Fanout,
}

impl MovedDevice {
    /// The device's connection id, the same on the engine it leaves and the one it joins.
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// The participant the device belongs to.
    pub fn participant(&self) -> ParticipantId {
        self.device.participant
    }

    /// The remote addresses its peers were reached at.
    pub fn paths(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers
            .iter()
            .flat_map(|(_, paths)| paths.iter().copied())
    }

    /// Takes `device` out of `parts`: its peers leave the demultiplexer with the paths they
    /// were reached at, its publications and its targets leave the fan-out.
    pub(super) fn take(parts: Parts<'_>, device: DeviceId) -> Option<MovedDevice> {
        let dev = parts.devices.remove(device)?;
        let mut peers = Vec::new();
        for id in dev.peers() {
            let paths = parts.demux.forget_peer(id);
            if let Some(peer) = parts.peers.remove(id) {
                peers.push((peer, paths));
            }
        }
        let published = parts.publishing.withdraw_publications(parts.fanout, device);
        let subscriber = parts.subscribing.remove(device);
        let local = parts.local.remove(device);
        parts.fanout.set_targets(device, BTreeMap::new());
        Some(MovedDevice {
            id: device,
            device: dev,
            published,
            subscriber,
            local,
            peers,
        })
    }

    /// Puts the device into `parts` (whose engine has no other device of its participant):
    /// its peers get new ids there and are found at their old paths and ufrags; its
    /// publications feed the fan-out again. Returns its id.
    pub(super) fn put(self, parts: Parts<'_>) -> DeviceId {
        let MovedDevice {
            id: device,
            device: mut dev,
            published,
            subscriber,
            local,
            peers,
        } = self;
        dev.set_peer(false, None);
        dev.set_peer(true, None);
        for (peer, paths) in peers {
            let subscribe = peer.subscribe;
            let ufrag = peer.ufrag.clone();
            let id = parts.peers.insert(peer);
            parts.demux.add_ufrag(id, ufrag);
            for addr in paths {
                parts.demux.learn(addr, id);
            }
            dev.set_peer(subscribe, Some(id));
        }
        parts.devices.insert(device, dev);
        if let Some(subscriber) = subscriber {
            parts.subscribing.adopt(device, subscriber);
        }
        if let Some(local) = local {
            parts.local.add(device, local);
        }
        if let Some(published) = published {
            parts.publishing.adopt(device, published);
            parts
                .publishing
                .register_sources(parts.fanout, parts.devices, device);
        }
        device
    }
}
