//! Which peer may take a datagram from a remote address no peer is known at yet: the rules by
//! which a new path opens (ICE: a STUN binding request naming one of our ufrags, passing that
//! peer's integrity check), and the signed refusal of a check meant for the process this one
//! replaced. It owns nothing: it reads the demultiplexer, the peers, the devices and the
//! engine's configuration; the engine learns the path or sends the refusal.

use std::net::SocketAddr;

use str0m::ice::{StunMessage, TransId};
use str0m::Input;

use super::config::EngineConfig;
use super::demux::Demux;
use super::devices::Devices;
use super::ice;
use super::keys::PeerId;
use super::output::{Transmit, Transport};
use super::peers::Peers;

/// What a datagram from an unknown remote address opens.
pub(super) enum NewPath {
    /// A binding request for this peer that its connection accepts: the address becomes one
    /// of its paths.
    Peer(PeerId),
    /// A binding request for a connection the process this one replaced answered, whose
    /// device is connected here again: it is answered with a signed error (see
    /// [`refusal`]), keyed by the request's transaction and that connection's password.
    Refuse(TransId, String),
    /// Nothing here: dropped, or left for another shard when the ufrag is this process's.
    Nothing,
}

/// The parts a new path is looked up in (read only).
pub(super) struct Parts<'a> {
    pub config: &'a EngineConfig,
    pub demux: &'a Demux,
    pub peers: &'a Peers,
    pub devices: &'a Devices,
}

/// What `data`, arrived from an address no peer is known at (`input` is it, as str0m's input),
/// opens. Only a STUN binding request naming one of our ufrags, and carrying a valid
/// MESSAGE-INTEGRITY for that peer, opens a path (ufrags travel in clear).
pub(super) fn new_path(parts: Parts<'_>, data: &[u8], input: &Input<'_>) -> NewPath {
    let Some(request) = StunMessage::parse(data)
        .ok()
        .filter(|m| m.is_binding_request())
    else {
        return NewPath::Nothing;
    };
    let Some(local) = request.split_username().map(|(local, _)| local) else {
        return NewPath::Nothing;
    };
    let Some(peer) = parts.demux.by_ufrag(local) else {
        if local.starts_with(parts.config.ice_prefix.as_str()) {
            return NewPath::Nothing; // ours, unknown here: another shard may know it
        }
        // Issued by the process this one replaced: refused once its device is back here (its
        // signalling can carry the renegotiation).
        return parts
            .config
            .previous_credentials
            .get(local)
            .filter(|c| parts.devices.of_participant(c.participant).is_some())
            .map_or(NewPath::Nothing, |c| {
                NewPath::Refuse(request.trans_id(), c.pwd.to_owned())
            });
    };
    if parts.peers.get(peer).is_some_and(|p| p.rtc.accepts(input)) {
        NewPath::Peer(peer)
    } else {
        NewPath::Nothing
    }
}

/// The answer to a consent check of a publish connection another process answered before (a
/// restart): a signed error ([`ice::refusal`]), so that Chrome drops the path and Bandwidth's
/// SDK re-offers the connection with an ICE restart at once. The device must be connected
/// here first: the SDK's re-offer of a failed connection is made once, and lost if its
/// WebSocket is still reconnecting. `source` is where the check came from, `destination` the
/// address it was sent to.
pub(super) fn refusal(
    transport: Transport,
    source: SocketAddr,
    destination: SocketAddr,
    trans_id: TransId,
    pwd: &str,
) -> Option<Transmit> {
    let contents = ice::refusal(trans_id, pwd)?;
    tracing::debug!(from = %source, "refused a connectivity check meant for another process");
    Some(Transmit {
        source: destination,
        destination: source,
        transport,
        contents,
    })
}
