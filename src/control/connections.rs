//! Device verbs: what a browser's signalling connection and a phone call do, decided here and
//! carried out through the [`MediaPort`]. Signaling and the SIP runtime call these verbs and
//! nothing else of the media plane: connect with a token, publish, answer, leave; admit a
//! phone, feed and drain its audio, hang it up. A device whose participant leaves its session
//! stays connected (a phone keeps its call): added to another session, it is wired there.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::port::{
    Connection, DeviceNotice, DeviceRequest, LocalConnection, LocalRequest, MediaPort,
};
use super::{
    CallEndReason, Control, ControlError, DeviceTokenError, Host, LifecycleEvent, Resource,
};
use crate::domain::{AccountId, ParticipantId, SessionId, StreamAlias, StreamId};
use crate::domain::{DeclaredStreams, PublishAnswer};
use crate::media::{DeviceId, MediaError};
use crate::token::TokenError;

/// How many times a connect is tried with checked routing counts before the device is placed
/// where the session last read says (see [`MediaPort::routes_applied`]).
const PLACE_ATTEMPTS: u32 = 4;

/// Control's device verbs, bound to the media plane. Cheap to clone.
#[derive(Clone)]
pub struct DeviceControl {
    control: Control,
    media: Arc<dyn MediaPort>,
}

/// A browser device connected through control: what its connection needs to act later.
#[derive(Debug, Clone)]
pub struct ConnectedDevice {
    /// Its device in the media plane.
    pub device: DeviceId,
    /// The participant whose token it presented.
    pub participant: ParticipantId,
    /// The SDK instance's `uniqueId` (empty when the device gave none).
    pub unique_id: String,
    connection: Connection,
}

/// How a device's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The device said `leave` ([`DeviceControl::leave`] recorded it).
    Left,
    /// The server removed it (its session expired): reported as a leave.
    Removed,
    /// The connection was lost or closed without `leave`.
    Lost,
}

/// What became of a call's start (see [`DeviceControl::phone_joined`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhoneJoined {
    /// Its events are in the outbox: answer it.
    Recorded,
    /// Its events could not be written in time: refuse it, and end it.
    NotRecorded,
    /// The participant has a device here already: refuse it (nothing was recorded).
    AlreadyConnected,
}

/// Why a device could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The token is missing, invalid, expired or revoked: do not retry with it.
    #[error("refused: {0}")]
    Refused(#[source] DeviceTokenError),
    /// The token could not be checked now, or the media plane is down: retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The server is draining before it stops: connect to another one.
    #[error("server draining")]
    Draining,
    /// The participant's session is hosted by another process: reconnect (through the door,
    /// which carries the device there).
    #[error("session hosted by another process")]
    Moved,
}

/// Where a device's connection is served (see [`DeviceControl::door`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Door {
    /// Here.
    Here,
    /// By the process that hosts its session, whose device WebSocket is at this URL base.
    Carry(String),
}

/// A phone call that passed admission.
#[derive(Debug, Clone)]
pub struct AdmittedPhone {
    /// The participant's account.
    pub account: AccountId,
    /// The participant the token names.
    pub participant: ParticipantId,
    /// The session it is a member of: the call joins it.
    pub session: SessionId,
    /// The media plane's routing changes before `session` was read.
    routes_seen: u64,
}

/// A phone call taken over from another process, joined to the media plane.
#[derive(Debug)]
pub struct ResumedPhone {
    /// Its participant's session now (`None`: in none).
    pub session: Option<SessionId>,
    /// Its device in the media plane.
    pub connection: LocalConnection,
}

/// Why a phone call is refused (the SIP runtime renders each as a status and a `Reason`).
#[derive(Debug, thiserror::Error)]
pub enum PhoneRefusal {
    /// The token does not verify (403).
    #[error("{0}")]
    BadToken(TokenError),
    /// The token's participant no longer exists (404).
    #[error("participant not found")]
    ParticipantNotFound,
    /// The participant is in no session (480).
    #[error("participant is in no session")]
    NotInSession,
    /// The participant already has a device in the media plane (486).
    #[error("participant already connected")]
    AlreadyConnected,
    /// The token cannot be checked now (503).
    #[error("try again later")]
    Unavailable,
    /// The server is draining before it stops (503).
    #[error("server draining")]
    Draining,
    /// The participant's session is hosted by another process, whose SIP listener this is
    /// (302 there; 503 when it gave none).
    #[error("session hosted by another server")]
    HostedElsewhere {
        /// The host's SIP listener (`host:port`).
        sip: Option<String>,
    },
}

impl DeviceControl {
    /// Control's device verbs over the media plane `media`.
    pub fn new(control: Control, media: Arc<dyn MediaPort>) -> DeviceControl {
        DeviceControl { control, media }
    }

    /// The orchestrator these verbs belong to.
    pub fn control(&self) -> &Control {
        &self.control
    }

    // ---- browsers ---------------------------------------------------------------------------

    /// Where the device presenting `token` is served: here, or carried to the process that
    /// hosts its participant's session (placing the session if no live process hosts it). A
    /// token that does not verify, a participant in no session and a store that cannot answer
    /// are served here (the connect then says what is wrong, or the device waits here in no
    /// session); so is a device whose host the others cannot reach (see
    /// [`Control::host_of`]): the connect agrees, so the device is not sent back and forth.
    pub async fn door(&self, token: &str) -> Door {
        if !self.control.places_sessions() || self.control.is_draining() {
            return Door::Here;
        }
        let Ok(verified) = self.control.verify_device_token(token).await else {
            return Door::Here;
        };
        let Some(session) = verified.participant.session else {
            return Door::Here;
        };
        match self.control.host_of(session).await {
            Ok(Host::Here) => Door::Here,
            // `host_of` names only hosts the others can reach.
            Ok(Host::Elsewhere(host)) => Door::Carry(host.cluster_address.unwrap_or_default()),
            // Refused by `connect` with "try again later" until the loss is accounted for.
            Ok(Host::Lost) => Door::Here,
            Err(e) => {
                tracing::warn!(%session, error = %e, "cannot read where a session is hosted");
                Door::Here
            }
        }
    }

    /// A device connects with its token: verified, placed in the media plane, announced.
    /// Notices for its connection (offers, close) arrive on `notices`.
    pub async fn connect(
        &self,
        token: &str,
        unique_id: String,
        notices: mpsc::UnboundedSender<DeviceNotice>,
    ) -> Result<ConnectedDevice, ConnectError> {
        if self.control.is_draining() {
            return Err(ConnectError::Draining);
        }
        // Before the participant's session is read (see `MediaPort::routes_applied`).
        let routes_seen = self.media.routes_applied();
        let verified = match self.control.verify_device_token(token).await {
            Ok(v) => v,
            Err(DeviceTokenError::Control(e)) => {
                tracing::warn!(error = %e, "cannot verify a device token");
                return Err(ConnectError::Unavailable("try again later".into()));
            }
            Err(e) => return Err(ConnectError::Refused(e)),
        };
        let participant = verified.participant.id;
        // Only the session's host serves its devices (issue 20).
        if let Some(session) = verified.participant.session {
            match self.control.host_of(session).await {
                Ok(Host::Here) => {}
                Ok(Host::Elsewhere(_)) => return Err(ConnectError::Moved),
                Ok(Host::Lost) => {
                    return Err(ConnectError::Unavailable(
                        "the session's server was lost; try again later".into(),
                    ))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read where a device's session is hosted");
                    return Err(ConnectError::Unavailable("try again later".into()));
                }
            }
        }
        // What this SDK instance's subscribe connection looks like, if a process offered it
        // one: without it a restarted process cannot resume that connection, but the device
        // still connects (its subscribe side starts afresh).
        let layout = match self.control.subscribe_layout(participant).await {
            Ok(layout) => layout.filter(|l| !unique_id.is_empty() && l.unique_id == unique_id),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a device's subscribe layout");
                None
            }
        };
        let mut request = DeviceRequest {
            account: verified.claims.account,
            participant,
            session: verified.participant.session,
            permissions: verified.participant.publish_permissions,
            unique_id: unique_id.clone(),
            layout,
            routes_seen: Some(routes_seen),
        };
        let mut attempt = 1;
        let (device, connection) = loop {
            match self.media.connect(request.clone(), notices.clone()).await {
                Ok(placed) => break placed,
                Err(MediaError::SessionChanged) => {
                    let (session, seen) = self
                        .session_again(&request.account, participant, attempt)
                        .await
                        .map_err(|e| ConnectError::Unavailable(e.to_string()))?;
                    // Its new session may be hosted elsewhere.
                    if let Some(s) = session.filter(|s| Some(*s) != request.session) {
                        match self.control.host_of(s).await {
                            Ok(Host::Here) => {}
                            Ok(Host::Elsewhere(_)) => return Err(ConnectError::Moved),
                            Ok(Host::Lost) => {
                                return Err(ConnectError::Unavailable(
                                    "the session's server was lost; try again later".into(),
                                ))
                            }
                            Err(e) => return Err(ConnectError::Unavailable(e.to_string())),
                        }
                    }
                    request.session = session;
                    request.routes_seen = seen;
                    attempt += 1;
                }
                Err(e) => return Err(ConnectError::Unavailable(e.to_string())),
            }
        };
        let resumed = self.control.resumes_foreign(participant, &unique_id);
        let recorded = self.control.device_event(LifecycleEvent::Connected {
            participant,
            device: unique_id.clone(),
            resumed,
        });
        // The connect is acknowledged only once its event is in the outbox: a crash after it
        // must not lose the backend's onConnect. A database that cannot take it in time gets
        // the device "try again later" (its media stays for the reconnect grace), and the
        // connection's end is recorded after it, so the backend never sees a device left
        // connected.
        if !recorded.wait().await {
            self.media.disconnect(connection, device, false);
            let _ = self.control.device_event(LifecycleEvent::Disconnected {
                participant,
                device: unique_id,
                left: false,
            });
            return Err(ConnectError::Unavailable(
                "the connection's event cannot be recorded now".into(),
            ));
        }
        Ok(ConnectedDevice {
            device,
            participant,
            unique_id,
            connection,
        })
    }

    /// The device's publish offer (`offerSdp`).
    pub async fn publish_offer(
        &self,
        device: &ConnectedDevice,
        sdp: String,
        declared: DeclaredStreams,
    ) -> Result<PublishAnswer, MediaError> {
        self.media.publish_offer(device.device, sdp, declared).await
    }

    /// The device's answer to its pending subscribe offer (`answerSdp`).
    pub async fn subscribe_answer(
        &self,
        device: &ConnectedDevice,
        sdp: String,
    ) -> Result<(), MediaError> {
        self.media.subscribe_answer(device.device, sdp).await
    }

    /// The device said `leave`: its media ends now, and its `onLeave` is recorded; answer the
    /// `leave` once the returned receipt resolves (a leave cannot be refused: a database that
    /// cannot take the event in time delays the answer by the recorder's bound, and the event
    /// is still written when it can be).
    pub fn leave(&self, device: &ConnectedDevice) -> super::Recorded {
        self.media
            .disconnect(device.connection, device.device, true);
        self.control.device_event(LifecycleEvent::Disconnected {
            participant: device.participant,
            device: device.unique_id.clone(),
            left: true,
        })
    }

    /// The connection is over. `ended`: how (after [`DeviceControl::leave`] its event is
    /// recorded already). Without `leave` the media plane keeps the device for a while, for
    /// the SDK's reconnect.
    pub fn disconnected(&self, device: ConnectedDevice, ended: Ended) {
        let left = match ended {
            Ended::Left => return,
            Ended::Removed => true,
            Ended::Lost => {
                self.media
                    .disconnect(device.connection, device.device, false);
                false
            }
        };
        let _ = self.control.device_event(LifecycleEvent::Disconnected {
            participant: device.participant,
            device: device.unique_id,
            left,
        });
    }

    // ---- phones -----------------------------------------------------------------------------

    /// Decides whether a call carrying `token` may join (reference §4.2).
    pub async fn admit_phone(&self, token: &str) -> Result<AdmittedPhone, PhoneRefusal> {
        if self.control.is_draining() {
            return Err(PhoneRefusal::Draining);
        }
        let routes_seen = self.media.routes_applied();
        let verified = match self.control.verify_device_token(token).await {
            Ok(v) => v,
            Err(DeviceTokenError::Token(TokenError::Revoked)) => {
                return Err(PhoneRefusal::ParticipantNotFound)
            }
            Err(DeviceTokenError::Token(e)) => return Err(PhoneRefusal::BadToken(e)),
            Err(DeviceTokenError::Control(e)) => {
                tracing::warn!(error = %e, "cannot verify a phone's token");
                return Err(PhoneRefusal::Unavailable);
            }
        };
        let participant = verified.participant.id;
        let session = verified
            .participant
            .session
            .ok_or(PhoneRefusal::NotInSession)?;
        if self.media.is_connected(participant) {
            return Err(PhoneRefusal::AlreadyConnected);
        }
        // Only the session's host takes its calls (issue 20): the others redirect them there.
        match self.control.host_of(session).await {
            Ok(Host::Here) => {}
            Ok(Host::Elsewhere(host)) => {
                return Err(PhoneRefusal::HostedElsewhere {
                    sip: host.sip_address,
                })
            }
            Ok(Host::Lost) => return Err(PhoneRefusal::Unavailable),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read where a phone's session is hosted");
                return Err(PhoneRefusal::Unavailable);
            }
        }
        Ok(AdmittedPhone {
            account: verified.claims.account,
            participant,
            session,
            routes_seen,
        })
    }

    /// An admitted phone whose media was negotiated joins the media plane as a local device
    /// publishing `stream`.
    pub async fn connect_phone(
        &self,
        phone: &AdmittedPhone,
        stream: StreamId,
        alias: Option<StreamAlias>,
    ) -> Result<LocalConnection, MediaError> {
        self.place_local(LocalRequest {
            account: phone.account.clone(),
            participant: phone.participant,
            session: Some(phone.session),
            stream,
            alias,
            routes_seen: Some(phone.routes_seen),
        })
        .await
        .map(|(_, connection)| connection)
    }

    /// Connects a local device; while routing changes keep coming between reading the
    /// participant's session and placing the device, reads the session again. Returns the
    /// session it was placed for.
    async fn place_local(
        &self,
        mut request: LocalRequest,
    ) -> Result<(Option<SessionId>, LocalConnection), MediaError> {
        let mut attempt = 1;
        loop {
            match self.media.connect_local(request.clone()).await {
                Ok(connection) => return Ok((request.session, connection)),
                Err(MediaError::SessionChanged) => {
                    let (session, seen) = self
                        .session_again(&request.account, request.participant, attempt)
                        .await
                        .map_err(|e| MediaError::Internal(e.to_string()))?;
                    request.session = session;
                    request.routes_seen = seen;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The participant's session read again after a connect found it changed, and the
    /// routing count read before it; after [`PLACE_ATTEMPTS`] the count is not checked any
    /// more (the device is placed where the session last read says; a routing change naming
    /// its participant moves it).
    async fn session_again(
        &self,
        account: &AccountId,
        participant: ParticipantId,
        attempt: u32,
    ) -> Result<(Option<SessionId>, Option<u64>), ControlError> {
        let seen = (attempt < PLACE_ATTEMPTS).then(|| self.media.routes_applied());
        let session = match self.control.participant(account, participant).await {
            Ok(p) => p.session,
            Err(ControlError::NotFound(Resource::Participant)) => None,
            Err(e) => return Err(e),
        };
        Ok((session, seen))
    }

    /// A phone call another process carried (stored by the SIP bridge) is taken over: its
    /// participant must still exist and have no device here; its media joins as a local device
    /// publishing `stream`. Returns the participant's session now (`None`: in none, the call
    /// hears the hold tone), its device and what it receives.
    pub async fn resume_phone(
        &self,
        account: &AccountId,
        participant: ParticipantId,
        stream: StreamId,
        alias: Option<StreamAlias>,
    ) -> Result<ResumedPhone, PhoneRefusal> {
        let routes_seen = self.media.routes_applied();
        let found = match self.control.participant(account, participant).await {
            Ok(p) => p,
            Err(ControlError::NotFound(_)) => return Err(PhoneRefusal::ParticipantNotFound),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a resumed phone's participant");
                return Err(PhoneRefusal::Unavailable);
            }
        };
        if self.media.is_connected(participant) {
            return Err(PhoneRefusal::AlreadyConnected);
        }
        let (session, connection) = self
            .place_local(LocalRequest {
                account: account.clone(),
                participant,
                session: found.session,
                stream,
                alias,
                routes_seen: Some(routes_seen),
            })
            .await
            .map_err(|_| PhoneRefusal::Unavailable)?;
        Ok(ResumedPhone {
            session,
            connection,
        })
    }

    /// A call taken over from another process is up again: its backend was told
    /// `onConnect` and `onCallAnswered` by that process, so nothing is sent.
    pub fn phone_resumed(&self, participant: ParticipantId, call: String) {
        self.control.device_event(LifecycleEvent::Connected {
            participant,
            device: call.clone(),
            resumed: true,
        });
        self.control
            .device_event(LifecycleEvent::CallResumed { participant, call });
    }

    /// A graceful stop leaves the call up for the next process: its media here ends, and it
    /// no longer counts as this process's device (nothing is announced: the call goes on).
    pub fn phone_left_up(&self, device: DeviceId, participant: ParticipantId, call: &str) {
        self.media.remove_local(device);
        self.control.forget_device(participant, call);
    }

    /// A call another process carried could not be taken over (it got a BYE): its
    /// participant's device is gone.
    pub fn phone_lost(&self, participant: ParticipantId, call: String) {
        self.control.device_event(LifecycleEvent::Disconnected {
            participant,
            device: call.clone(),
            left: false,
        });
        self.control.device_event(LifecycleEvent::CallEnded {
            participant,
            call,
            reason: CallEndReason::Ended,
        });
    }

    /// The call is about to be answered: announced like a browser's connection. Answer it
    /// only once this says [`PhoneJoined::Recorded`] (both events are in the outbox, so a crash
    /// after the answer loses neither). On [`PhoneJoined::NotRecorded`] the database could not
    /// take them in time: refuse the call ("try again later") and end it with
    /// [`DeviceControl::phone_not_answered`], so that the backend never sees a call left up.
    /// [`PhoneJoined::AlreadyConnected`]: the participant has a device here already (a second
    /// call with the same token, which [`DeviceControl::admit_phone`] could not see yet):
    /// nothing was recorded.
    pub async fn phone_joined(&self, participant: ParticipantId, call: String) -> PhoneJoined {
        let Some([connected, answered]) = self.control.phone_answering(participant, &call) else {
            return PhoneJoined::AlreadyConnected;
        };
        if connected.wait().await & answered.wait().await {
            PhoneJoined::Recorded
        } else {
            PhoneJoined::NotRecorded
        }
    }

    /// The phone pressed a key, for `duration_ms`.
    pub fn phone_dtmf(&self, participant: ParticipantId, digit: char, duration_ms: u32) {
        self.control.device_event(LifecycleEvent::PhoneDtmf {
            participant,
            digit,
            duration_ms,
        });
    }

    /// The phone's media ends (the call was refused late, or failed to start).
    pub fn phone_dropped(&self, device: DeviceId) {
        self.media.remove_local(device);
    }

    /// The call ended (`left`: the phone hung up): its media ends and its participant's
    /// device is gone.
    pub fn phone_ended(
        &self,
        device: DeviceId,
        participant: ParticipantId,
        call: String,
        left: bool,
    ) {
        self.media.remove_local(device);
        self.call_gone(participant, call, left);
    }

    /// Whether a call announced by [`DeviceControl::phone_joined`] and placed in the media
    /// plane may still be answered: its participant may have been deleted meanwhile. If not,
    /// the call's device is removed and its end recorded (unless the deletion recorded it),
    /// and the caller refuses the call.
    pub async fn phone_still_wanted(
        &self,
        account: &AccountId,
        participant: ParticipantId,
        device: DeviceId,
        call: &str,
    ) -> bool {
        if !self.control.is_live(participant, call) {
            // A deletion ended it (and recorded its end) while it was being admitted.
            self.media.remove_local(device);
            return false;
        }
        match self.control.participant(account, participant).await {
            Err(ControlError::NotFound(Resource::Participant)) => {
                // Deleted before its start was recorded: its end follows it.
                self.phone_ended(device, participant, call.to_owned(), false);
                false
            }
            // A store that cannot tell does not refuse a call its checks let in.
            _ => true,
        }
    }

    /// A call announced by [`DeviceControl::phone_joined`] is refused after all, before the
    /// media plane took its device: its end is announced.
    pub fn phone_not_answered(&self, participant: ParticipantId, call: String) {
        self.call_gone(participant, call, false);
    }

    fn call_gone(&self, participant: ParticipantId, call: String, left: bool) {
        self.control.device_event(LifecycleEvent::Disconnected {
            participant,
            device: call.clone(),
            left,
        });
        let reason = if left {
            CallEndReason::Hangup
        } else {
            CallEndReason::Ended
        };
        self.control.device_event(LifecycleEvent::CallEnded {
            participant,
            call,
            reason,
        });
    }

    /// The session a phone's participant is in now (`Some(None)`: in none, or deleted);
    /// `None` when the store cannot tell. Leaving a session does not end a call: only
    /// deleting the participant does (the media plane closes its device).
    pub async fn phone_session(
        &self,
        account: &AccountId,
        participant: ParticipantId,
    ) -> Option<Option<SessionId>> {
        match self.control.participant(account, participant).await {
            Ok(p) => Some(p.session),
            Err(ControlError::NotFound(Resource::Participant)) => Some(None),
            Err(_) => None,
        }
    }
}
