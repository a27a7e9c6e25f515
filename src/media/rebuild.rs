//! The fan-out rebuilt from scratch (from the routes, each device's negotiated tracks and the
//! publications), to check the one the engine keeps up to date change by change against it:
//! tests call it after every step (`Engine::check_fanout`). It owns nothing; the hot path
//! never runs it.

use std::collections::BTreeMap;

use super::devices::Devices;
use super::fanout::Fanout;
use super::keys::{SourceKey, Target, TrackKey};
use super::publishing::{self, Publishing};
use super::routes::HostedRoutes;
use super::subscribing::Subscribing;
use super::DeviceId;
use crate::domain::MediaKind;

/// The parts the fan-out is rebuilt from (read only).
pub(super) struct Parts<'a> {
    pub devices: &'a Devices,
    pub routes: &'a HostedRoutes,
    pub publishing: &'a Publishing,
    pub subscribing: &'a Subscribing,
    pub fanout: &'a Fanout,
}

/// Compares `parts.fanout` with a rebuild from scratch; the first difference, if any.
pub(super) fn check(parts: Parts<'_>) -> Result<(), String> {
    let targets: Vec<(DeviceId, BTreeMap<TrackKey, Target>)> = parts
        .devices
        .ids()
        .map(|device| (device, expected_targets(&parts, device)))
        .collect();
    let mut sources = Vec::new();
    for device in parts.devices.ids() {
        let Some(published) = parts.publishing.get(device) else {
            continue;
        };
        for (key, mid) in published.tracks() {
            sources.push((key, publishing::source_for(parts.devices, device, mid)));
        }
    }
    parts.fanout.check_against(&targets, &sources)
}

/// What a device's targets are, from its routes and (a browser's) negotiated tracks.
fn expected_targets(parts: &Parts<'_>, device: DeviceId) -> BTreeMap<TrackKey, Target> {
    let Some(dev) = parts.devices.get(device) else {
        return BTreeMap::new();
    };
    let desired = parts.routes.desired_tracks(dev.participant);
    if dev.is_local() {
        return desired
            .keys()
            .filter(|k| k.kind == MediaKind::Audio)
            .map(|k| {
                let source = SourceKey::of(k.publisher, &k.stream);
                (k.clone(), Target::Local { device, source })
            })
            .collect();
    }
    parts.subscribing.targets(parts.devices, device, &desired)
}
