//! The media port: the verbs control needs from the media plane, defined here and implemented
//! by the runtime (`runtime::media::MediaHandle`). Control never imports the runtime; the
//! adapters (signaling, the SIP runtime) reach the media plane only through control's device
//! verbs ([`super::DeviceControl`]), which use this port.
//!
//! It is the one door from control to the media plane: device commands, routing diffs,
//! deletions, disconnects and the stop all go through it, into each shard's one inbox, so a
//! shard sees them in the order control made them. What comes back (published streams,
//! resumption state) comes as reports, through the runtime's reporters.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::domain::{
    AccountId, ConnectionQuality, ParticipantId, ParticipantQuality, PublishPermissions, SessionId,
    StreamAlias, StreamId, SubscribeLayout,
};
use crate::domain::{DeclaredStreams, PublishAnswer};
use crate::forwarding::TableDiff;
use crate::media::DeviceId;
pub use crate::media::{DeviceNotice, LocalDownlink, MediaError};

/// One signalling connection of a device (a device may be resumed by a later connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Connection(pub u64);

/// A browser device asking to be connected.
#[derive(Debug, Clone)]
pub struct DeviceRequest {
    /// The participant's account.
    pub account: AccountId,
    /// The participant whose token the device presented.
    pub participant: ParticipantId,
    /// Its session now, if any: it decides where the device is placed.
    pub session: Option<SessionId>,
    /// What the participant may publish.
    pub permissions: PublishPermissions,
    /// The SDK instance's `uniqueId`: the same one reconnecting resumes the device.
    pub unique_id: String,
    /// The stored shape of the participant's subscribe connection (possibly offered by
    /// another process): a new device of the same SDK instance resumes it.
    pub layout: Option<SubscribeLayout>,
    /// [`MediaPort::routes_applied`] before `session` was read: a routing change taken since
    /// may have moved the participant, and the connect is refused with
    /// [`MediaError::SessionChanged`] (read the session again). `None`: not checked.
    pub routes_seen: Option<u64>,
}

/// A local device (a phone call) asking to be connected: it publishes one audio stream.
#[derive(Debug, Clone)]
pub struct LocalRequest {
    /// The participant's account.
    pub account: AccountId,
    /// The participant the call's token names.
    pub participant: ParticipantId,
    /// Its session now, if any: it decides where the device is placed.
    pub session: Option<SessionId>,
    /// The stream the phone publishes.
    pub stream: StreamId,
    /// That stream's alias, if any.
    pub alias: Option<StreamAlias>,
    /// As in [`DeviceRequest::routes_seen`].
    pub routes_seen: Option<u64>,
}

/// Where a local device's frames go: straight to the media shard that holds the device (one
/// that moved on is followed from there), so a frame takes no lock on its way.
pub trait LocalUplink: Send + Sync + 'static {
    /// An Opus frame of the device's stream (RTP time at 48 kHz), with its audio level
    /// (RFC 6464, -dBov, 0 to 127) when the caller measured it (it counts for the session's
    /// dominant speaker).
    fn write(&self, rtp_time: u64, data: Vec<u8>, level: Option<u8>);

    /// What the caller measured of the device's own leg (a phone call's RTP), about once a
    /// second: `publish`, what the device sends, as received; `subscribe`, what it is sent.
    /// It is what the quality view shows of the device.
    fn report(&self, publish: ConnectionQuality, subscribe: ConnectionQuality);
}

/// A local device connected to the media plane.
pub struct LocalConnection {
    /// Its id.
    pub device: DeviceId,
    /// Where its frames go.
    pub uplink: Box<dyn LocalUplink>,
    /// What it receives.
    pub downlink: mpsc::UnboundedReceiver<LocalDownlink>,
}

impl std::fmt::Debug for LocalConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalConnection")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// The media plane as control sees it.
#[async_trait]
pub trait MediaPort: Send + Sync + 'static {
    /// Registers a device connection; notices for it arrive on `notices`.
    async fn connect(
        &self,
        request: DeviceRequest,
        notices: mpsc::UnboundedSender<DeviceNotice>,
    ) -> Result<(DeviceId, Connection), MediaError>;

    /// The connection ended. After `leave` the device's media ends at once; otherwise it is
    /// kept for a grace period so that the SDK's automatic reconnect can resume it.
    fn disconnect(&self, connection: Connection, device: DeviceId, left: bool);

    /// The device's publish offer (`offerSdp`) with the streams it declares; returns the
    /// answer for its publish connection.
    async fn publish_offer(
        &self,
        device: DeviceId,
        sdp: String,
        declared: DeclaredStreams,
    ) -> Result<PublishAnswer, MediaError>;

    /// The device's answer to its pending subscribe offer (`answerSdp`).
    async fn subscribe_answer(&self, device: DeviceId, sdp: String) -> Result<(), MediaError>;

    /// Connects a local device: its id, where its frames go, and what it receives.
    async fn connect_local(&self, request: LocalRequest) -> Result<LocalConnection, MediaError>;

    /// The local device's call ended: its stream is unpublished.
    fn remove_local(&self, device: DeviceId);

    /// Whether `participant` has a live device (a browser or a phone) anywhere.
    fn is_connected(&self, participant: ParticipantId) -> bool;

    /// What `participant`'s device on this process's media plane measured (issue 21); `None`
    /// when it has no device here.
    async fn quality(
        &self,
        participant: ParticipantId,
    ) -> Result<Option<ParticipantQuality>, MediaError>;

    /// What the media plane of this process measured of every device it holds, by participant.
    async fn qualities(&self) -> Result<Vec<(ParticipantId, ParticipantQuality)>, MediaError>;

    /// How many routing changes the media plane has taken ([`MediaPort::apply_routes`]). A
    /// connect carries the count it read before the participant's session, and is refused if
    /// a change came in between: the placement of a device and the routing changes are
    /// ordered, so a device never lands away from its session's shard unnoticed.
    fn routes_applied(&self) -> u64;

    /// A session's forwarding table changed by `diff`.
    fn apply_routes(&self, session: SessionId, diff: Arc<TableDiff>);

    /// The participant was deleted: its devices are removed and their connections closed
    /// (browsers' WebSockets; phones are hung up).
    fn participant_deleted(&self, participant: ParticipantId);

    /// `participant`'s devices are removed and their connections closed with `reason`; the
    /// participant stays.
    fn disconnect_participant(&self, participant: ParticipantId, reason: &'static str);

    /// The process stops: every device is let go (browsers' WebSockets are closed with 1001
    /// "server shutting down").
    fn stop(&self);
}
