//! One media shard as a state machine: its [`Engine`], the devices placed on it and their
//! connections, the reconnect grace, device moves to other shards and the redirects of its
//! socket. Sans-IO like the engine: no sockets, tasks, channels or clock; `now` is passed in.
//!
//! # Drive contract
//!
//! ```text
//! Shard::new(index, shards, engine)
//! handle_receive(source, destination, bytes, now) -> Delivery   a datagram on this shard's socket
//! handle_receive_on(transport, source, destination, bytes, now)  the same, or an ICE-TCP frame
//! handle_message(ShardMessage, now)             what another shard's poll_output addressed here
//! handle_connect / handle_connect_local / handle_disconnect / handle_publish_offer /
//! handle_subscribe_answer / handle_write_local / handle_remove_local       device commands
//! handle_routes(session, diff, now) / handle_participant_deleted / handle_participant_disconnect
//! handle_timeout(now)                           at (or after) poll_timeout()
//! poll_output() -> Option<ShardOutput>          drain after every call above, before transmits
//! poll_transmit() -> Option<Transmit>           send from the socket of `transmit.source`
//! poll_timeout() -> Option<Instant>
//! locate(device) -> Option<usize>               "it is on shard N": forward the command there
//! ```
//!
//! # Devices
//! One device per participant. A connection of a participant whose device is here with the
//! same non-empty `uniqueId` *resumes* it (the SDK reconnecting: same device, media untouched,
//! its pending subscribe offer sent again, the previous connection closed); any other
//! connection *replaces* it (the old connection is closed "replaced by a newer connection").
//! A connection that drops without `leave` keeps its device for [`RECONNECT_GRACE`]; the
//! device is removed by [`Shard::handle_timeout`] once that passed without a resume.
//!
//! # Sessions and moves
//! A session is *hosted* by one shard ([`home_of_session`]): only that shard applies the
//! session's routing diffs to its engine. Every other shard only looks at the participants a
//! diff names and exports its devices of those participants to the home shard (a
//! [`ShardMessage`] "arrive" carries the device, peer connections included, so media keeps
//! flowing without renegotiation). A command for a device that moved away is answered by
//! [`Shard::locate`] with the shard it went to.
//!
//! # Redirects
//! The peers of a moved device keep sending to the address they reached first, another
//! shard's socket. Each shard keeps its own map "remote address → shard" for datagrams
//! reaching ITS socket that belong to a device elsewhere; no map is shared between shards, so
//! nothing on the packet path takes a lock. The maps are kept right by messages:
//! - moving a device, the shard points its own map at the new shard for the device's paths
//!   on its socket, and sends a redirect to the shard whose socket carries each other path;
//! - a shard that takes a STUN request another shard offered it (a moved peer on a new path)
//!   queues "redirect this address to me" for the receiving shard, and holds back every
//!   transmit until that message was polled ([`Shard::poll_transmit`] returns nothing while
//!   one is queued). The runtime enqueues messages before it sends transmits, so the redirect
//!   sits in the origin's inbox before the reply that makes the peer use the path leaves;
//! - the origin, when a non-STUN datagram from an address it does not know finds no redirect,
//!   reports it [`Delivery::Unplaced`]; the runtime then drains that shard's inbox without
//!   blocking (the redirect is already there, by the order above) and hands the datagram in
//!   once more;
//! - a forwarded datagram no device takes any more clears the origin's redirect; a removed
//!   device's paths clear theirs.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::domain::{
    AccountId, ConnectionQuality, ParticipantId, PublishCredentials, PublishPermissions, SessionId,
    StreamAlias, StreamId, SubscribeLayout,
};
use crate::forwarding::{PublishedStream, TableDiff};
use crate::media::placement::home_of_session;
use crate::media::{
    DeclaredStreams, DeviceId, Engine, EngineEvent, MediaError, MovedDevice, PublishAnswer,
    SourceKey, SubscribeOffer, Transmit, Transport,
};

/// How long a device whose signalling connection dropped (without `leave`) keeps its media,
/// waiting for the SDK to reconnect.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(20);

/// Why a connection is closed when another connection of its participant takes over.
pub const REPLACED: &str = "replaced by a newer connection";
/// Why a connection is reset when its device answers no subscribe offer.
pub const UNANSWERED: &str = "subscribe offer not answered";
/// Why a connection is closed when its participant is deleted.
pub const PARTICIPANT_DELETED: &str = "participant deleted";

/// What a device connection is told.
#[derive(Debug)]
pub enum DeviceNotice {
    /// Send this `sdpOffer` notification.
    Offer(SubscribeOffer),
    /// Close the connection (code 1000) with this reason: replaced by a newer connection of
    /// the same participant, or the participant was deleted.
    Close(&'static str),
    /// Close the connection with a code the SDK reconnects on (its device is gone: the
    /// reconnect starts afresh), with this reason.
    Reset(&'static str),
}

/// What the media plane gives a local device's driver (the SIP bridge, for a phone).
#[derive(Debug)]
pub enum LocalDownlink {
    /// A frame of one of the audio tracks the device receives.
    Frame {
        /// Which received track (publisher and stream) the frame belongs to.
        source: SourceKey,
        /// RTP time of the frame, at 48 kHz.
        rtp_time: u64,
        /// A telephone-event (RFC 4733) payload rather than Opus.
        dtmf: bool,
        /// The payload, without RTP header.
        data: Arc<[u8]>,
    },
    /// The tracks it receives now; others are gone.
    Sources(Vec<SourceKey>),
    /// The device was removed (participant deleted, or replaced by another device).
    Closed(&'static str),
    /// A session's forwarding table changed; `names_device`: the change names the device's
    /// participant. Its driver may check whether the participant's session changed.
    Routes {
        /// The session.
        session: SessionId,
        /// The change names the device's participant.
        names_device: bool,
    },
}

/// What became of a datagram received on the shard's own socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A device here took it.
    Taken,
    /// Handed to the shard its address is redirected to (a [`ShardOutput::Message`]).
    Forwarded,
    /// A STUN request nobody here knows, offered to every other shard.
    Offered,
    /// Not STUN, from an address nobody here knows and no redirect names: a redirect may be
    /// waiting in this shard's inbox. Handle the inbox, then hand the datagram in once more.
    Unplaced,
    /// Dropped.
    Dropped,
}

/// What the shard asks its driver to do.
#[derive(Debug)]
pub enum ShardOutput {
    /// Tell a device connection.
    Notice {
        /// The connection to tell.
        connection: u64,
        /// What to tell it.
        notice: DeviceNotice,
    },
    /// Give a local device's driver this.
    Local {
        /// The local device.
        device: DeviceId,
        /// What its driver is given.
        downlink: LocalDownlink,
    },
    /// The streams a participant publishes now, for control (in this order).
    Published {
        /// The publisher's account.
        account: AccountId,
        /// The publisher.
        participant: ParticipantId,
        /// Every stream it publishes now (empty: none).
        streams: Vec<PublishedStream>,
    },
    /// Put this in another shard's inbox.
    Message {
        /// The receiving shard.
        shard: usize,
        /// What to put there.
        message: ShardMessage,
    },
    /// A device connected here (for the placement directory).
    Placed {
        /// The device placed here.
        device: DeviceId,
        /// Its participant.
        participant: ParticipantId,
    },
    /// What a later process needs to resume a device's connections changed (for the store).
    Resumption(Resumption),
    /// A hosted session's dominant speaker changed, for control.
    ActiveSpeaker(super::SpeakerChange),
    /// A device was removed here; `last` when its participant has no device here any more.
    Removed {
        /// The device removed.
        device: DeviceId,
        /// Its participant.
        participant: ParticipantId,
        /// No other device of the participant is left on this shard.
        last: bool,
    },
}

/// What a later process needs to resume a device's connections (issue 19), for the store.
#[derive(Debug)]
pub enum Resumption {
    /// The shape of a device's subscribe connection after an offer.
    Layout {
        /// The device's participant.
        participant: ParticipantId,
        /// The connection as the offer gives it to the device.
        layout: SubscribeLayout,
    },
    /// A device's publish connection got new ICE credentials.
    PublishCredentials(PublishCredentials),
    /// A device left: its SDK instance's connections are closed, nothing to resume.
    Forgotten {
        /// The device's participant.
        participant: ParticipantId,
        /// The SDK instance whose connections are gone.
        unique_id: String,
    },
}

/// What one shard tells another.
#[derive(Debug)]
pub enum ShardMessage {
    /// A datagram the shard `origin` received on its socket and could not place.
    Datagram {
        /// The remote address it came from.
        source: SocketAddr,
        /// The local address it was received on (the origin's socket).
        destination: SocketAddr,
        /// The datagram.
        data: Vec<u8>,
        /// UDP, or a frame of an ICE-TCP connection the origin's listener accepted.
        transport: Transport,
        /// The shard whose socket received it.
        origin: usize,
        /// Shards it went through (a bound on forwarding chains).
        hops: u8,
    },
    /// Datagrams from `addr` reaching the receiver's socket go to `to` (none: nowhere, if
    /// they went to `from` so far).
    Redirect {
        /// The remote address.
        addr: SocketAddr,
        /// The shard its datagrams go to now; `None`: drop the redirect if it names `from`.
        to: Option<usize>,
        /// The sending shard.
        from: usize,
    },
    /// A device moving in.
    Arrive(Box<Arrival>),
}

/// A device on its way to another shard.
pub struct Arrival {
    moved: MovedDevice,
    entry: DeviceEntry,
    account: Option<AccountId>,
    /// The shard whose socket each of its paths reaches.
    origins: Vec<(SocketAddr, usize)>,
}

impl std::fmt::Debug for Arrival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arrival")
            .field("device", &self.moved.id())
            .field("connection", &self.entry.connection)
            .finish_non_exhaustive()
    }
}

impl Arrival {
    /// The device moving.
    pub fn device(&self) -> DeviceId {
        self.moved.id()
    }

    /// Its participant.
    pub fn participant(&self) -> ParticipantId {
        self.moved.participant()
    }

    /// The connection attached to the device, if one is.
    pub fn connection(&self) -> Option<u64> {
        self.entry.connection
    }
}

#[derive(Debug)]
struct DeviceEntry {
    participant: ParticipantId,
    unique_id: String,
    /// The connection attached now.
    connection: Option<u64>,
    /// Detached without `leave`: removed at this time unless a connection resumes it.
    expires: Option<Instant>,
    /// A local device (a phone): its driver is told through [`ShardOutput::Local`].
    local: bool,
}

/// A packet on its way between shards: how it came, from where, to which of our addresses.
type Datagram = (Transport, SocketAddr, SocketAddr, Vec<u8>);

/// A first byte below 2 and a header's length: a STUN message (RFC 7983 demultiplexing).
fn looks_like_stun(data: &[u8]) -> bool {
    data.len() >= 20 && data[0] < 2
}

/// One shard. See the module docs.
pub struct Shard {
    index: usize,
    shards: usize,
    engine: Engine,
    devices: HashMap<DeviceId, DeviceEntry>,
    /// The account of each participant seen here, for published streams (remembered after
    /// its device left: its last streams are reported after it).
    accounts: HashMap<ParticipantId, AccountId>,
    /// Devices that moved away, for commands still addressed here.
    moved: HashMap<DeviceId, usize>,
    /// Remote addresses reaching this shard's socket whose device is on another shard.
    redirects: HashMap<SocketAddr, usize>,
    /// Remote addresses of devices here that reach another shard's socket, by that shard.
    origins: HashMap<SocketAddr, usize>,
    outputs: VecDeque<ShardOutput>,
    /// "Redirect to me" messages queued in `outputs`: transmits wait for them.
    claims_queued: usize,
    /// Devices the engine gave up on (they answer no subscribe offer), to reset.
    unanswered: Vec<DeviceId>,
    /// The last subscribe revision of a reset device, by participant and `uniqueId`: the SDK
    /// instance reconnecting after the reset ignores offers numbered at or below it.
    reset_revisions: HashMap<(ParticipantId, String), u64>,
}

impl Shard {
    /// Shard `index` of `shards`, around its engine.
    pub fn new(index: usize, shards: usize, engine: Engine) -> Shard {
        Shard {
            index,
            shards: shards.max(1),
            engine,
            devices: HashMap::new(),
            accounts: HashMap::new(),
            moved: HashMap::new(),
            redirects: HashMap::new(),
            origins: HashMap::new(),
            outputs: VecDeque::new(),
            claims_queued: 0,
            unanswered: Vec::new(),
            reset_revisions: HashMap::new(),
        }
    }

    /// This shard's index among the shards.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The engine (read-only: counters, tests).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The subscribers' loss and RTT samples since the last call ([`Engine::take_quality_samples`]).
    pub fn take_quality_samples(&mut self) -> crate::media::QualitySamples {
        self.engine.take_quality_samples()
    }

    /// Whether this shard hosts `session` (applies its routes).
    pub fn hosts(&self, session: SessionId) -> bool {
        home_of_session(session, self.shards) == self.index
    }

    /// The shard a device that moved away went to; `None` when it is here or unknown.
    pub fn locate(&self, device: DeviceId) -> Option<usize> {
        if self.devices.contains_key(&device) {
            return None;
        }
        self.moved.get(&device).copied()
    }

    /// Whether `device` is here.
    pub fn has_device(&self, device: DeviceId) -> bool {
        self.devices.contains_key(&device)
    }

    // ---- device commands ----------------------------------------------------------------

    /// A device connection of `participant`: resumes its device (same non-empty `unique_id`)
    /// or replaces it with a new one, [`DeviceId`]`(connection)`.
    /// `layout` is the stored shape of the SDK instance's subscribe connection, offered by
    /// this process or another (a restart): a new device's subscribe connection resumes it
    /// (see `media::subscribing`).
    #[allow(clippy::too_many_arguments)] // the connect verb's fields, plus what it resumes
    pub fn handle_connect(
        &mut self,
        connection: u64,
        account: AccountId,
        participant: ParticipantId,
        permissions: PublishPermissions,
        unique_id: String,
        layout: Option<SubscribeLayout>,
        now: Instant,
    ) -> DeviceId {
        self.accounts.insert(participant, account);
        let existing = self
            .devices
            .iter_mut()
            .find(|(_, d)| d.participant == participant);
        if let Some((&id, entry)) = existing {
            if !unique_id.is_empty() && entry.unique_id == unique_id {
                // The same SDK instance reconnecting: resume its device and media.
                let previous = entry.connection.replace(connection);
                entry.expires = None;
                if let Some(c) = previous {
                    self.notice(c, DeviceNotice::Close(REPLACED));
                }
                if let Some(offer) = self.engine.pending_offer(id) {
                    self.notice(connection, DeviceNotice::Offer(offer));
                }
                return id;
            }
        }
        let device = DeviceId(connection);
        self.outputs.push_back(ShardOutput::Placed {
            device,
            participant,
        });
        if let Some(revision) = self
            .reset_revisions
            .remove(&(participant, unique_id.clone()))
        {
            self.engine.continue_revisions(device, revision);
        }
        self.engine
            .resume_subscriber(device, unique_id.clone(), layout);
        let replaced = self
            .engine
            .add_device(device, participant, permissions, now);
        self.devices.insert(
            device,
            DeviceEntry {
                participant,
                unique_id,
                connection: Some(connection),
                expires: None,
                local: false,
            },
        );
        if let Some(old) = replaced {
            self.replaced(old);
        }
        self.collect();
        device
    }

    /// A local device (a phone call) of `participant` publishing `stream`.
    pub fn handle_connect_local(
        &mut self,
        connection: u64,
        account: AccountId,
        participant: ParticipantId,
        stream: StreamId,
        alias: Option<StreamAlias>,
        now: Instant,
    ) -> DeviceId {
        self.accounts.insert(participant, account);
        let device = DeviceId(connection);
        self.outputs.push_back(ShardOutput::Placed {
            device,
            participant,
        });
        // The entry first: the engine's first events (its sources) go to the bridge.
        self.devices.insert(
            device,
            DeviceEntry {
                participant,
                unique_id: String::new(),
                connection: None,
                expires: None,
                local: true,
            },
        );
        if let Some(old) = self
            .engine
            .add_local_device(device, participant, stream, alias, now)
        {
            self.replaced(old);
        }
        self.collect();
        device
    }

    /// The connection ended. After `leave` the device is removed at once; otherwise it is
    /// kept for [`RECONNECT_GRACE`]. A connection the device no longer has changes nothing.
    pub fn handle_disconnect(
        &mut self,
        connection: u64,
        device: DeviceId,
        left: bool,
        now: Instant,
    ) {
        let Some(entry) = self.devices.get_mut(&device) else {
            return;
        };
        if entry.connection != Some(connection) {
            return; // a superseded connection
        }
        if left {
            // The SDK closes its connections after `leave`: nothing to resume.
            let forgotten = ShardOutput::Resumption(Resumption::Forgotten {
                participant: entry.participant,
                unique_id: entry.unique_id.clone(),
            });
            self.remove_device(device, now);
            self.outputs.push_back(forgotten);
        } else {
            entry.connection = None;
            entry.expires = Some(now + RECONNECT_GRACE);
        }
        self.collect();
    }

    /// The device's publish offer (`offerSdp`) with the streams it declares: the answer for
    /// its publish connection.
    pub fn handle_publish_offer(
        &mut self,
        device: DeviceId,
        sdp: &str,
        metadata: &DeclaredStreams,
        now: Instant,
    ) -> Result<PublishAnswer, MediaError> {
        let answer = self.engine.handle_publish_offer(device, sdp, metadata, now);
        self.collect();
        answer
    }

    /// The device's answer to its pending subscribe offer (`answerSdp`).
    pub fn handle_subscribe_answer(
        &mut self,
        device: DeviceId,
        sdp: &str,
        now: Instant,
    ) -> Result<(), MediaError> {
        let done = self.engine.handle_subscribe_answer(device, sdp, now);
        self.collect();
        done
    }

    /// An Opus frame of a local device's stream.
    pub fn handle_write_local(
        &mut self,
        device: DeviceId,
        rtp_time: u64,
        data: Vec<u8>,
        level: Option<u8>,
        now: Instant,
    ) {
        self.engine.write_local(device, rtp_time, data, level, now);
        self.collect();
    }

    /// A local device's driver reported its leg ([`Engine::report_local_leg`]).
    pub fn handle_local_leg(
        &mut self,
        device: DeviceId,
        publish: ConnectionQuality,
        subscribe: ConnectionQuality,
        now: Instant,
    ) {
        self.engine
            .report_local_leg(device, (publish, subscribe), now);
    }

    /// A local device's call ended.
    pub fn handle_remove_local(&mut self, device: DeviceId, now: Instant) {
        if self.devices.contains_key(&device) {
            self.remove_device(device, now);
            self.collect();
        }
    }

    /// The participant was deleted: its devices here are closed.
    pub fn handle_participant_deleted(&mut self, participant: ParticipantId, now: Instant) {
        self.accounts.remove(&participant);
        self.disconnect_participant(participant, PARTICIPANT_DELETED, now);
    }

    /// `participant`'s devices here are removed and their connections (or local drivers)
    /// told `reason`; the participant stays known.
    pub fn handle_participant_disconnect(
        &mut self,
        participant: ParticipantId,
        reason: &'static str,
        now: Instant,
    ) {
        self.disconnect_participant(participant, reason, now);
    }

    fn disconnect_participant(
        &mut self,
        participant: ParticipantId,
        reason: &'static str,
        now: Instant,
    ) {
        let gone: Vec<DeviceId> = self
            .devices
            .iter()
            .filter(|(_, d)| d.participant == participant)
            .map(|(id, _)| *id)
            .collect();
        for device in gone {
            if let Some(entry) = self.remove_device(device, now) {
                self.close(device, &entry, reason);
            }
        }
        self.collect();
    }

    // ---- routes ---------------------------------------------------------------------------

    /// A session's forwarding table changed: applied here if this shard hosts the session;
    /// otherwise this shard's devices of the participants it names go to the session's home.
    pub fn handle_routes(&mut self, session: SessionId, diff: &TableDiff, now: Instant) {
        // Local devices' drivers learn of every change before their device may move.
        for (&device, entry) in self.devices.iter().filter(|(_, d)| d.local) {
            self.outputs.push_back(ShardOutput::Local {
                device,
                downlink: LocalDownlink::Routes {
                    session,
                    names_device: diff.names(entry.participant),
                },
            });
        }
        if self.hosts(session) {
            self.engine.apply_routes(session, diff, now);
            self.collect();
            return;
        }
        let named = diff
            .links
            .upserted
            .iter()
            .map(|(k, _)| (k.subscriber, k.publisher))
            .chain(
                diff.routes
                    .upserted
                    .iter()
                    .map(|(k, _)| (k.subscriber, k.publisher)),
            )
            .flat_map(|(s, p)| [s, p]);
        let home = home_of_session(session, self.shards);
        self.move_home(named.collect(), home, now);
    }

    fn move_home(&mut self, mut participants: Vec<ParticipantId>, home: usize, now: Instant) {
        participants.sort();
        participants.dedup();
        for participant in participants {
            if let Some(device) = self.engine.device_of(participant) {
                self.move_device(device, home, now);
            }
        }
    }

    /// Exports `device` to shard `to`.
    fn move_device(&mut self, device: DeviceId, to: usize, now: Instant) {
        if to == self.index || to >= self.shards {
            return;
        }
        // What the engine said about the device so far reaches its connection first.
        self.collect();
        let Some(entry) = self.devices.remove(&device) else {
            return;
        };
        let Some(moved) = self.engine.export_device(device, now) else {
            self.devices.insert(device, entry);
            return;
        };
        let mut origins = Vec::new();
        for addr in moved.paths() {
            let origin = self.origins.remove(&addr).unwrap_or(self.index);
            origins.push((addr, origin));
            // Stray datagrams still handed here follow the device.
            self.redirects.insert(addr, to);
            if origin != self.index && origin != to {
                self.message(
                    origin,
                    ShardMessage::Redirect {
                        addr,
                        to: Some(to),
                        from: self.index,
                    },
                );
            }
        }
        self.moved.insert(device, to);
        let account = self.accounts.get(&moved.participant()).cloned();
        self.message(
            to,
            ShardMessage::Arrive(Box::new(Arrival {
                moved,
                entry,
                account,
                origins,
            })),
        );
        self.collect();
    }

    // ---- network ----------------------------------------------------------------------------

    /// A datagram received on this shard's socket (public address `destination`).
    pub fn handle_receive(
        &mut self,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Delivery {
        self.handle_receive_on(Transport::Udp, source, destination, data, now)
    }

    /// A packet received on this shard's socket, or a frame of an ICE-TCP connection its
    /// listener accepted (`transport`); placed like a datagram: the remote address and the
    /// first STUN request's ufrag find the device, here or on another shard.
    pub fn handle_receive_on(
        &mut self,
        transport: Transport,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Delivery {
        let delivery = if self
            .engine
            .handle_receive_on(transport, source, destination, data, now)
        {
            Delivery::Taken
        } else {
            self.not_taken(transport, source, destination, data)
        };
        self.collect();
        delivery
    }

    /// A datagram on this shard's socket that no device here took.
    fn not_taken(
        &mut self,
        transport: Transport,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) -> Delivery {
        let datagram = |data: &[u8]| (transport, source, destination, data.to_vec());
        if let Some(&shard) = self.redirects.get(&source) {
            self.forward(shard, datagram(data), self.index, 0);
            return Delivery::Forwarded;
        }
        if !looks_like_stun(data) {
            return if self.shards > 1 {
                Delivery::Unplaced
            } else {
                Delivery::Dropped
            };
        }
        if self.shards == 1 {
            return Delivery::Dropped;
        }
        let index = self.index;
        for shard in (0..self.shards).filter(|&s| s != index) {
            self.forward(shard, datagram(data), index, 0);
        }
        Delivery::Offered
    }

    fn forward(&mut self, shard: usize, datagram: Datagram, origin: usize, hops: u8) {
        let (transport, source, destination, data) = datagram;
        self.message(
            shard,
            ShardMessage::Datagram {
                source,
                destination,
                data,
                transport,
                origin,
                hops,
            },
        );
    }

    /// A message another shard addressed to this one.
    pub fn handle_message(&mut self, message: ShardMessage, now: Instant) {
        match message {
            ShardMessage::Datagram {
                source,
                destination,
                data,
                transport,
                origin,
                hops,
            } => self.receive_forwarded((transport, source, destination, data), origin, hops, now),
            ShardMessage::Redirect { addr, to, from } => match to {
                Some(shard) if shard != self.index => {
                    self.redirects.insert(addr, shard);
                }
                Some(_) => {
                    self.redirects.remove(&addr);
                }
                None => {
                    if self.redirects.get(&addr) == Some(&from) {
                        self.redirects.remove(&addr);
                    }
                }
            },
            ShardMessage::Arrive(arrival) => self.arrive(*arrival, now),
        }
        self.collect();
    }

    fn receive_forwarded(&mut self, datagram: Datagram, origin: usize, hops: u8, now: Instant) {
        let (transport, source, destination, data) = datagram;
        let stun = looks_like_stun(&data);
        if self
            .engine
            .handle_receive_on(transport, source, destination, &data, now)
        {
            if stun && origin != self.index && self.origins.get(&source) != Some(&origin) {
                // A peer of a device here on a path through `origin`'s socket: its datagrams
                // come here from now on. Queued before the STUN reply can leave.
                self.origins.insert(source, origin);
                self.message(
                    origin,
                    ShardMessage::Redirect {
                        addr: source,
                        to: Some(self.index),
                        from: self.index,
                    },
                );
            }
            return;
        }
        if let Some(&shard) = self.redirects.get(&source) {
            if shard != origin && usize::from(hops) < self.shards {
                self.forward(
                    shard,
                    (transport, source, destination, data),
                    origin,
                    hops + 1,
                );
                return;
            }
        }
        if !stun && origin != self.index {
            // Nobody here knows it any more.
            self.origins.remove(&source);
            self.message(
                origin,
                ShardMessage::Redirect {
                    addr: source,
                    to: None,
                    from: self.index,
                },
            );
        }
    }

    fn arrive(&mut self, arrival: Arrival, now: Instant) {
        let Arrival {
            moved,
            entry,
            account,
            origins,
        } = arrival;
        let device = moved.id();
        self.moved.remove(&device);
        if let Some(account) = account {
            self.accounts.insert(moved.participant(), account);
        }
        for (addr, origin) in origins {
            self.redirects.remove(&addr);
            if origin != self.index {
                self.origins.insert(addr, origin);
            }
        }
        let replaced = self.engine.import_device(moved, now);
        self.devices.insert(device, entry);
        if let Some(old) = replaced {
            self.replaced(old);
        }
    }

    // ---- clock ------------------------------------------------------------------------------

    /// Time passed: devices whose grace ended are removed, the engine's timers run.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<DeviceId> = self
            .devices
            .iter()
            .filter(|(_, d)| d.expires.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for device in expired {
            tracing::debug!(device = device.0, "reconnect grace over");
            self.remove_device(device, now);
        }
        self.engine.handle_timeout(now);
        self.collect();
        // A device that answers no offer is started afresh: its connection is closed with a
        // code the SDK reconnects on, and the device goes now (no grace), so the reconnect
        // builds new peer connections.
        for device in std::mem::take(&mut self.unanswered) {
            let Some(entry) = self.devices.get(&device) else {
                continue;
            };
            let connection = entry.connection;
            let key = (entry.participant, entry.unique_id.clone());
            if let Some(revision) = self.engine.subscribe_revision(device) {
                self.reset_revisions.insert(key, revision);
            }
            tracing::info!(
                device = device.0,
                "device answers no subscribe offer: resetting it"
            );
            if let Some(c) = connection {
                self.notice(c, DeviceNotice::Reset(UNANSWERED));
            }
            self.remove_device(device, now);
            self.collect();
        }
    }

    /// When [`Shard::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiry = self.devices.values().filter_map(|d| d.expires).min();
        self.engine.poll_timeout().into_iter().chain(expiry).min()
    }

    // ---- outputs ----------------------------------------------------------------------------

    /// The next thing to do. Drain before [`Shard::poll_transmit`].
    pub fn poll_output(&mut self) -> Option<ShardOutput> {
        let output = self.outputs.pop_front()?;
        if let ShardOutput::Message {
            message: ShardMessage::Redirect { to: Some(_), .. },
            ..
        } = &output
        {
            self.claims_queued = self.claims_queued.saturating_sub(1);
        }
        Some(output)
    }

    /// The next datagram to send; none while a redirect it may depend on is still queued.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.claims_queued > 0 {
            return None;
        }
        self.engine.poll_transmit()
    }

    // ---- internals --------------------------------------------------------------------------

    fn message(&mut self, shard: usize, message: ShardMessage) {
        if let ShardMessage::Redirect { to: Some(_), .. } = &message {
            self.claims_queued += 1;
        }
        self.outputs
            .push_back(ShardOutput::Message { shard, message });
    }

    fn notice(&mut self, connection: u64, notice: DeviceNotice) {
        self.outputs
            .push_back(ShardOutput::Notice { connection, notice });
    }

    /// Tells a removed device's connection, or its local driver, that it is closed.
    fn close(&mut self, device: DeviceId, entry: &DeviceEntry, reason: &'static str) {
        if entry.local {
            self.outputs.push_back(ShardOutput::Local {
                device,
                downlink: LocalDownlink::Closed(reason),
            });
        }
        if let Some(c) = entry.connection {
            self.notice(c, DeviceNotice::Close(reason));
        }
    }

    /// The engine replaced `old` (already out of it) with a newer device of its participant.
    fn replaced(&mut self, old: DeviceId) {
        if let Some(entry) = self.devices.remove(&old) {
            self.outputs.push_back(ShardOutput::Removed {
                device: old,
                participant: entry.participant,
                last: false,
            });
            self.close(old, &entry, REPLACED);
        }
    }

    /// Removes a device from the engine and from this shard; returns its entry.
    fn remove_device(&mut self, device: DeviceId, now: Instant) -> Option<DeviceEntry> {
        // Redirects other shards keep for its paths end with it.
        for addr in self.engine.paths_of(device) {
            if let Some(origin) = self.origins.remove(&addr) {
                self.message(
                    origin,
                    ShardMessage::Redirect {
                        addr,
                        to: None,
                        from: self.index,
                    },
                );
            }
        }
        self.engine.remove_device(device, now);
        let entry = self.devices.remove(&device)?;
        let last = !self
            .devices
            .values()
            .any(|d| d.participant == entry.participant);
        self.outputs.push_back(ShardOutput::Removed {
            device,
            participant: entry.participant,
            last,
        });
        Some(entry)
    }

    /// Turns the engine's events into outputs, in order.
    fn collect(&mut self) {
        while let Some(event) = self.engine.poll_event() {
            match event {
                EngineEvent::SubscribeOffer {
                    device,
                    offer,
                    layout,
                } => {
                    let Some(entry) = self.devices.get(&device) else {
                        continue;
                    };
                    let (participant, connection) = (entry.participant, entry.connection);
                    if let Some(c) = connection {
                        self.notice(c, DeviceNotice::Offer(offer));
                    }
                    self.outputs
                        .push_back(ShardOutput::Resumption(Resumption::Layout {
                            participant,
                            layout,
                        }));
                }
                EngineEvent::StreamsChanged {
                    participant,
                    streams,
                    ..
                } => {
                    // The device may have left already (its streams go with it): the account
                    // is remembered per participant.
                    if let Some(account) = self.accounts.get(&participant).cloned() {
                        self.outputs.push_back(ShardOutput::Published {
                            account,
                            participant,
                            streams,
                        });
                    }
                }
                EngineEvent::Connected { device, subscribe } => {
                    tracing::debug!(device = device.0, subscribe, "peer connection up");
                }
                EngineEvent::LocalMedia {
                    device,
                    source,
                    rtp_time,
                    dtmf,
                    data,
                } => self.outputs.push_back(ShardOutput::Local {
                    device,
                    downlink: LocalDownlink::Frame {
                        source,
                        rtp_time,
                        dtmf,
                        data,
                    },
                }),
                EngineEvent::LocalSources { device, sources } => {
                    self.outputs.push_back(ShardOutput::Local {
                        device,
                        downlink: LocalDownlink::Sources(sources),
                    })
                }
                EngineEvent::Unanswered { device } => self.unanswered.push(device),
                EngineEvent::ActiveSpeaker(change) => {
                    self.outputs.push_back(ShardOutput::ActiveSpeaker(change));
                }
                EngineEvent::PublishCredentials { device, ufrag, pwd } => {
                    if let Some(entry) = self.devices.get(&device) {
                        let credentials = PublishCredentials {
                            participant: entry.participant,
                            unique_id: entry.unique_id.clone(),
                            ufrag,
                            pwd,
                        };
                        self.outputs.push_back(ShardOutput::Resumption(
                            Resumption::PublishCredentials(credentials),
                        ));
                    }
                }
            }
        }
    }
}
