//! `Publishing`: what each device of the engine publishes. Owns device → its publish
//! endpoint id and its published MediaStreams (alias, and the m-lines carrying each kind).
//! It answers a device's publish offer, and points the fan-out at what is published; the
//! other parts it works on are lent to it for each call as [`Parts`].

use super::keys::TrackKey;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use str0m::change::SdpOffer;
use str0m::ice::IceCreds;
use str0m::media::{MediaKind as RtcKind, Mid};
use str0m::{Input, Rtc};

use super::config::EngineConfig;
use super::demux::Demux;
use super::devices::Devices;
use super::fanout::Fanout;
use super::ice;
use super::keys::{PeerId, Source};
use super::output::EngineEvent;
use super::peers::{open_builtin_channels, Peers};
use super::{DeclaredStreams, DeviceId, MediaError, PublishAnswer, StreamMetadata};
use crate::domain::{
    MediaKind, MediaKinds, ParticipantId, PublishPermissions, StreamAlias, StreamId,
};
use crate::forwarding::PublishedStream;

/// One published MediaStream of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Publication {
    pub(super) alias: Option<StreamAlias>,
    /// The m-lines carrying it, with their kind (only kinds the participant may publish).
    pub(super) mids: Vec<(Mid, MediaKind)>,
}

impl Publication {
    pub(super) fn kinds(&self) -> MediaKinds {
        MediaKinds::from_kinds(self.mids.iter().map(|(_, k)| *k))
    }
}

/// What one device publishes.
pub(super) struct Published {
    pub(super) participant: ParticipantId,
    /// The endpoint id of its publish connection.
    pub(super) endpoint: String,
    pub(super) streams: BTreeMap<StreamId, Publication>,
}

impl Published {
    /// Its tracks, each with the m-line carrying it.
    pub(super) fn tracks(&self) -> impl Iterator<Item = (TrackKey, Mid)> + '_ {
        self.streams.iter().flat_map(move |(stream, p)| {
            p.mids.iter().map(move |(mid, kind)| {
                (
                    TrackKey {
                        publisher: self.participant,
                        stream: stream.clone(),
                        kind: *kind,
                    },
                    *mid,
                )
            })
        })
    }

    /// Its streams as control records them.
    pub(super) fn streams(&self) -> Vec<PublishedStream> {
        self.streams
            .iter()
            .map(|(stream, p)| PublishedStream {
                publisher: self.participant,
                stream: stream.clone(),
                alias: p.alias.clone(),
                kinds: p.kinds(),
            })
            .collect()
    }
}

#[derive(Default)]
pub(super) struct Publishing {
    by_device: HashMap<DeviceId, Published>,
}

impl Publishing {
    /// A device that publishes nothing yet.
    pub(super) fn open(&mut self, device: DeviceId, participant: ParticipantId) {
        self.by_device.insert(
            device,
            Published {
                participant,
                endpoint: uuid::Uuid::new_v4().to_string(),
                streams: BTreeMap::new(),
            },
        );
    }

    /// Adopts what a device published on another engine.
    pub(super) fn adopt(&mut self, device: DeviceId, published: Published) {
        self.by_device.insert(device, published);
    }

    pub(super) fn remove(&mut self, device: DeviceId) -> Option<Published> {
        self.by_device.remove(&device)
    }

    pub(super) fn get(&self, device: DeviceId) -> Option<&Published> {
        self.by_device.get(&device)
    }

    /// Replaces what `device` publishes. Returns the previous publications if they differ.
    pub(super) fn set(
        &mut self,
        device: DeviceId,
        streams: BTreeMap<StreamId, Publication>,
    ) -> Option<Published> {
        let published = self.by_device.get_mut(&device)?;
        if published.streams == streams {
            return None;
        }
        let old = std::mem::replace(&mut published.streams, streams);
        Some(Published {
            participant: published.participant,
            endpoint: published.endpoint.clone(),
            streams: old,
        })
    }
}

/// What a publish connection carries after its offer was accepted: every receiving, enabled
/// m-line (in the offer's order) of a declared stream, in a kind the participant may publish.
pub(super) fn publications(
    rtc: &Rtc,
    mids: &[Mid],
    declared: &DeclaredStreams,
    permissions: PublishPermissions,
) -> BTreeMap<StreamId, Publication> {
    let mut published: BTreeMap<StreamId, Publication> = BTreeMap::new();
    for &line in mids {
        let Some(media) = rtc.media(line) else {
            continue;
        };
        if media.disabled() || !media.direction().is_receiving() {
            continue;
        }
        let kind = match media.kind() {
            RtcKind::Audio => MediaKind::Audio,
            RtcKind::Video => MediaKind::Video,
        };
        if !permissions.contains(kind) {
            continue;
        }
        let Some(alias) = declared.get(media.stream_id()) else {
            continue;
        };
        let Ok(stream) = StreamId::parse(media.stream_id()) else {
            continue;
        };
        published
            .entry(stream)
            .or_insert_with(|| Publication {
                alias: alias.clone(),
                mids: Vec::new(),
            })
            .mids
            .push((line, kind));
    }
    published
}

/// The parts of the engine a publish negotiation works on, lent for one call.
pub(super) struct Parts<'a> {
    pub(super) config: &'a EngineConfig,
    pub(super) demux: &'a mut Demux,
    pub(super) peers: &'a mut Peers,
    pub(super) devices: &'a mut Devices,
    pub(super) fanout: &'a mut Fanout,
    /// The engine's events (the queue is the packet path's, `Relay`'s).
    pub(super) events: &'a mut VecDeque<EngineEvent>,
}

impl Publishing {
    /// The device's publish offer: answer its publish connection (made by its first offer).
    /// `declared` is the MediaStreams the device declares (msid → alias); m-lines of other
    /// streams are accepted but publish nothing. Returns the connection, for the caller to
    /// drain, and the answer.
    pub(super) fn accept_offer(
        &mut self,
        parts: &mut Parts<'_>,
        device: DeviceId,
        sdp: &str,
        declared: &DeclaredStreams,
        now: Instant,
    ) -> Result<(PeerId, PublishAnswer), MediaError> {
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| MediaError::BadSdp(e.to_string()))?;
        let dev = parts
            .devices
            .get(device)
            .filter(|d| !d.is_local())
            .ok_or(MediaError::UnknownDevice)?;
        let (permissions, participant) = (dev.permissions, dev.participant);
        let (peer_id, created) = match dev.publish_peer() {
            Some(p) => (p, false),
            None => {
                let id =
                    parts
                        .peers
                        .open(parts.config, parts.demux, device, false, permissions, now);
                (id, true)
            }
        };
        let peer = parts
            .peers
            .get_mut(peer_id)
            .ok_or(MediaError::UnknownDevice)?;
        peer.rtc
            .handle_input(Input::Timeout(now))
            .map_err(|e| MediaError::Internal(e.to_string()))?;
        let answer = match peer.rtc.sdp_api().accept_offer(offer) {
            Ok(a) => a,
            Err(e) => {
                if created {
                    parts.peers.close(parts.demux, peer_id);
                }
                return Err(MediaError::Negotiation(e.to_string()));
            }
        };
        if created {
            open_builtin_channels(&mut peer.rtc);
        }
        // An ICE restart gives the peer new local credentials, str0m's own: they get this
        // process's prefix (in the answer too), and the demux map follows.
        let mut answer = answer.to_sdp_string();
        let restarted = peer.rtc.direct_api().local_ice_credentials();
        let mut issued = created.then(|| restarted.clone());
        if restarted.ufrag != peer.ufrag {
            let tagged = IceCreds {
                ufrag: ice::tagged_ufrag(&parts.config.ice_prefix),
                pass: restarted.pass,
            };
            peer.rtc
                .direct_api()
                .set_local_ice_credentials(tagged.clone());
            // str0m's candidates keep its own ufrag (in this and every later answer).
            peer.candidate_ufrag = Some(restarted.ufrag.clone());
            answer = answer.replace(
                &format!("a=ice-ufrag:{}", restarted.ufrag),
                &format!("a=ice-ufrag:{}", tagged.ufrag),
            );
            peer.ufrag = tagged.ufrag.clone();
            parts.demux.add_ufrag(peer_id, tagged.ufrag.clone());
            issued = Some(tagged);
        }
        // A browser drops candidates whose ufrag is not the session's.
        if let Some(stale) = &peer.candidate_ufrag {
            answer = answer.replace(
                &format!(" ufrag {stale}"),
                &format!(" ufrag {}", peer.ufrag),
            );
        }
        if let Some(IceCreds { ufrag, pass }) = issued {
            parts.events.push_back(EngineEvent::PublishCredentials {
                device,
                ufrag,
                pwd: pass,
            });
        }
        let published = publications(&peer.rtc, &offer_mids(sdp), declared, permissions);
        if let Some(dev) = parts.devices.get_mut(device) {
            dev.set_peer(false, Some(peer_id));
        }
        let endpoint_id = self
            .get(device)
            .map(|p| p.endpoint.clone())
            .unwrap_or_default();
        let stream_metadata = declared
            .iter()
            .map(|(msid, alias)| {
                let kinds = StreamId::parse(msid)
                    .ok()
                    .and_then(|s| published.get(&s))
                    .map(Publication::kinds)
                    .unwrap_or_default();
                let meta = StreamMetadata {
                    endpoint_id: format!("{endpoint_id}:{msid}"),
                    kinds,
                    alias: alias.clone(),
                    participant,
                };
                (msid.clone(), meta)
            })
            .collect();
        self.set_publications(parts, device, published);
        let answer = PublishAnswer {
            sdp_answer: answer,
            endpoint_id,
            stream_metadata,
        };
        Ok((peer_id, answer))
    }

    /// Replaces what `device` publishes; the fan-out follows and control is told.
    pub(super) fn set_publications(
        &mut self,
        parts: &mut Parts<'_>,
        device: DeviceId,
        streams: BTreeMap<StreamId, Publication>,
    ) {
        let Some(old) = self.set(device, streams) else {
            return;
        };
        for (key, _) in old.tracks() {
            parts.fanout.set_source(&key, None);
        }
        self.register_sources(parts.fanout, parts.devices, device);
        if let Some(published) = self.get(device) {
            parts.events.push_back(EngineEvent::StreamsChanged {
                device,
                participant: published.participant,
                streams: published.streams(),
            });
        }
    }

    /// Points the fan-out at the device's published tracks.
    pub(super) fn register_sources(
        &self,
        fanout: &mut Fanout,
        devices: &Devices,
        device: DeviceId,
    ) {
        let Some(published) = self.get(device) else {
            return;
        };
        for (key, mid) in published.tracks() {
            let source = source_for(devices, device, mid);
            fanout.set_source(&key, source);
        }
    }

    /// Takes the device's publications out of the fan-out and returns them.
    pub(super) fn withdraw_publications(
        &mut self,
        fanout: &mut Fanout,
        device: DeviceId,
    ) -> Option<Published> {
        let published = self.remove(device)?;
        for (key, _) in published.tracks() {
            fanout.set_source(&key, None);
        }
        Some(published)
    }
}

/// The source of a device's published m-line.
pub(super) fn source_for(devices: &Devices, device: DeviceId, mid: Mid) -> Option<Source> {
    let dev = devices.get(device)?;
    if dev.is_local() {
        return Some(Source::Local(device));
    }
    Some(Source::Peer {
        peer: dev.publish_peer()?,
        mid,
    })
}

/// The `a=mid` values of an SDP, in order.
fn offer_mids(sdp: &str) -> Vec<Mid> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .map(|m| Mid::from(m.trim()))
        .collect()
}
