//! The media driver: the media plane runs as shards, one per core by default. Each shard is
//! one task owning one UDP socket and one [`Engine`]; it feeds the engine datagrams, commands
//! from device connections, routing changes from control and the clock, and sends what it
//! produces. Device connections talk to the shards through a [`MediaHandle`].
//!
//! ## Placement
//! A session lives on one shard (a hash of its id), so a call's packets never cross threads.
//! A device is placed on the shard of its participant's session when it connects (on a shard
//! chosen by its participant id when it is in no session). When membership changes put a
//! connected device into a session that lives elsewhere, the device *moves*: its engine state,
//! peer connections included, goes to the session's shard ([`Engine::export_device`],
//! [`Engine::import_device`]). Its peers keep the address they reached first, so the old shard
//! hands their datagrams over and the new shard sends from the old socket (every shard can send
//! on every socket). A STUN request no shard recognises at once (a moved peer on a new path) is
//! offered to the other shards; the shard that takes it tells the receiving one to hand that
//! address over from then on.
#![allow(clippy::disallowed_methods)] // the runtime owns the clock, the tasks and the threads

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::control::{Control, ControlError, ControlEvent};
use crate::domain::{
    AccountId, ParticipantId, PublishPermissions, SessionId, StreamAlias, StreamId,
};
use crate::media::{
    DeviceId, Engine, EngineConfig, EngineEvent, MediaError, MovedDevice, PublishAnswer,
    PublishMetadata, SourceKey, SubscribeOffer,
};
use crate::store::StoreError;

/// What the driver tells a device connection.
#[derive(Debug)]
pub enum DeviceNotice {
    /// Send this `sdpOffer` notification.
    Offer(SubscribeOffer),
    /// Close the connection (code 1000) with this reason: replaced by a newer connection of
    /// the same participant, or the participant was deleted.
    Close(&'static str),
}

enum Command {
    Connect {
        connection: u64,
        account: AccountId,
        participant: ParticipantId,
        permissions: PublishPermissions,
        unique_id: String,
        notices: mpsc::UnboundedSender<DeviceNotice>,
        reply: oneshot::Sender<DeviceId>,
    },
    Disconnect {
        connection: u64,
        device: DeviceId,
        left: bool,
    },
    PublishOffer {
        device: DeviceId,
        sdp: String,
        metadata: PublishMetadata,
        reply: oneshot::Sender<Result<PublishAnswer, MediaError>>,
    },
    SubscribeAnswer {
        device: DeviceId,
        sdp: String,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    ConnectLocal {
        connection: u64,
        account: AccountId,
        participant: ParticipantId,
        stream: StreamId,
        alias: Option<StreamAlias>,
        downlink: mpsc::UnboundedSender<LocalDownlink>,
        reply: oneshot::Sender<DeviceId>,
    },
    WriteLocal {
        device: DeviceId,
        rtp_time: u64,
        data: Vec<u8>,
    },
    RemoveLocal {
        device: DeviceId,
    },
}

/// What the media plane gives a local device's driver (the SIP bridge, for a phone).
#[derive(Debug)]
pub enum LocalDownlink {
    /// A frame of one of the audio tracks the device receives.
    Frame {
        source: SourceKey,
        rtp_time: u64,
        dtmf: bool,
        data: Arc<[u8]>,
    },
    /// The tracks it receives now; others are gone.
    Sources(Vec<SourceKey>),
    /// The device was removed (participant deleted, or replaced by another device).
    Closed(&'static str),
}

/// A handle on the media driver. Cheap to clone.
#[derive(Clone)]
pub struct MediaHandle {
    shared: Arc<Shared>,
    next_connection: Arc<AtomicU64>,
}

/// What every shard and handle can see.
struct Shared {
    inboxes: Vec<mpsc::UnboundedSender<Inbox>>,
    sockets: Vec<Arc<UdpSocket>>,
    /// The public address of each shard's socket (its ICE candidate), by shard.
    public: Vec<SocketAddr>,
    placement: Mutex<Placement>,
    /// Remote addresses whose datagrams belong to a device on another shard than the one
    /// whose socket they reach. Read only for datagrams the receiving engine did not take;
    /// written by the shard that takes over an address before it sends anything from it, so a
    /// reply can never outrun its redirect.
    redirect: RwLock<HashMap<SocketAddr, usize>>,
}

/// Where devices and participants are: changed only on connect, move and removal.
#[derive(Default)]
struct Placement {
    participants: HashMap<ParticipantId, usize>,
    devices: HashMap<DeviceId, usize>,
}

impl Shared {
    fn placement(&self) -> std::sync::MutexGuard<'_, Placement> {
        // A poisoned lock only means a panic elsewhere; the maps themselves stay consistent.
        self.placement.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `device` of `participant` lives on `shard`.
    fn place(&self, device: DeviceId, participant: ParticipantId, shard: usize) {
        let mut placement = self.placement();
        placement.devices.insert(device, shard);
        placement.participants.insert(participant, shard);
    }

    fn redirect_of(&self, addr: SocketAddr) -> Option<usize> {
        let map = self.redirect.read().unwrap_or_else(|e| e.into_inner());
        map.get(&addr).copied()
    }

    fn set_redirect(&self, addr: SocketAddr, shard: Option<usize>) {
        let mut map = self.redirect.write().unwrap_or_else(|e| e.into_inner());
        match shard {
            Some(s) => map.insert(addr, s),
            None => map.remove(&addr),
        };
    }

    fn send(&self, shard: usize, message: Inbox) -> Result<(), MediaError> {
        self.inboxes
            .get(shard)
            .ok_or_else(|| MediaError::Internal("no such media shard".into()))?
            .send(message)
            .map_err(|_| MediaError::Internal("media plane stopped".into()))
    }

    /// Sends the command `make` builds around a reply channel to `shard`, and waits for the
    /// reply.
    async fn request<T>(
        &self,
        shard: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MediaError> {
        let (reply, answer) = oneshot::channel();
        self.send(shard, Inbox::Command(make(reply)))?;
        answer
            .await
            .map_err(|_| MediaError::Internal("media plane stopped".into()))
    }

    fn shard_of_session(&self, session: SessionId) -> usize {
        shard_by_hash(session.as_uuid().as_u128(), self.inboxes.len())
    }

    /// Where a new device of `participant` goes: where its device is, else its session's
    /// shard, else one chosen by its id.
    fn shard_for(&self, participant: ParticipantId, session: Option<SessionId>) -> usize {
        if let Some(&shard) = self.placement().participants.get(&participant) {
            return shard;
        }
        match session {
            Some(s) => self.shard_of_session(s),
            None => shard_by_hash(participant.as_uuid().as_u128(), self.inboxes.len()),
        }
    }

    fn shard_of_device(&self, device: DeviceId) -> usize {
        self.placement().devices.get(&device).copied().unwrap_or(0)
    }

    /// The socket bound for the public address `source`.
    fn socket_for(&self, source: SocketAddr) -> Option<&Arc<UdpSocket>> {
        let i = self.public.iter().position(|a| *a == source)?;
        self.sockets.get(i)
    }
}

fn shard_by_hash(id: u128, shards: usize) -> usize {
    let folded = (id as u64) ^ ((id >> 64) as u64);
    (folded % shards.max(1) as u64) as usize
}

/// What a shard's task receives besides its socket and control's events.
enum Inbox {
    Command(Command),
    /// A datagram another shard received and could not place.
    Datagram {
        source: SocketAddr,
        destination: SocketAddr,
        data: Vec<u8>,
        origin: usize,
    },
    /// A device moving in.
    Arrive(Box<Arrival>),
}

struct Arrival {
    moved: MovedDevice,
    entry: DeviceEntry,
    account: Option<AccountId>,
}

impl MediaHandle {
    /// The public media address of each shard (its ICE host candidate).
    pub fn public_addrs(&self) -> &[SocketAddr] {
        &self.shared.public
    }

    /// Registers a device connection; notices for it arrive on `notices`. A connection of the
    /// same participant with the same `uniqueId` (the SDK reconnecting) resumes the device and
    /// its media; any other replaces it. `session` is the participant's session now, if any:
    /// it decides the shard.
    pub async fn connect(
        &self,
        account: AccountId,
        participant: ParticipantId,
        session: Option<SessionId>,
        permissions: PublishPermissions,
        unique_id: String,
        notices: mpsc::UnboundedSender<DeviceNotice>,
    ) -> Result<(DeviceId, Connection), MediaError> {
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let shard = self.shared.shard_for(participant, session);
        let device = self
            .shared
            .request(shard, |reply| Command::Connect {
                connection,
                account,
                participant,
                permissions,
                unique_id,
                notices,
                reply,
            })
            .await?;
        Ok((device, Connection(connection)))
    }

    /// The connection ended. After `leave` the device's media ends at once; otherwise it is
    /// kept for [`RECONNECT_GRACE`] so that the SDK's automatic reconnect can resume it.
    pub fn disconnect(&self, connection: Connection, device: DeviceId, left: bool) {
        let shard = self.shared.shard_of_device(device);
        let _ = self.shared.send(
            shard,
            Inbox::Command(Command::Disconnect {
                connection: connection.0,
                device,
                left,
            }),
        );
    }

    pub async fn publish_offer(
        &self,
        device: DeviceId,
        sdp: String,
        metadata: PublishMetadata,
    ) -> Result<PublishAnswer, MediaError> {
        let shard = self.shared.shard_of_device(device);
        self.shared
            .request(shard, |reply| Command::PublishOffer {
                device,
                sdp,
                metadata,
                reply,
            })
            .await?
    }

    pub async fn subscribe_answer(&self, device: DeviceId, sdp: String) -> Result<(), MediaError> {
        let shard = self.shared.shard_of_device(device);
        self.shared
            .request(shard, |reply| Command::SubscribeAnswer {
                device,
                sdp,
                reply,
            })
            .await?
    }
}

impl MediaHandle {
    /// Whether `participant` has a live device (a browser or a phone) anywhere.
    pub fn is_connected(&self, participant: ParticipantId) -> bool {
        self.shared
            .placement()
            .participants
            .contains_key(&participant)
    }

    /// Connects a local device (a phone call) publishing one audio stream; what it receives
    /// arrives on the returned channel.
    pub async fn connect_local(
        &self,
        account: AccountId,
        participant: ParticipantId,
        session: Option<SessionId>,
        stream: StreamId,
        alias: Option<StreamAlias>,
    ) -> Result<(DeviceId, mpsc::UnboundedReceiver<LocalDownlink>), MediaError> {
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let shard = self.shared.shard_for(participant, session);
        let (downlink, frames) = mpsc::unbounded_channel();
        let device = self
            .shared
            .request(shard, |reply| Command::ConnectLocal {
                connection,
                account,
                participant,
                stream,
                alias,
                downlink,
                reply,
            })
            .await?;
        Ok((device, frames))
    }

    /// An Opus frame of a local device's stream (RTP time at 48 kHz).
    pub fn write_local(&self, device: DeviceId, rtp_time: u64, data: Vec<u8>) {
        let shard = self.shared.shard_of_device(device);
        let _ = self.shared.send(
            shard,
            Inbox::Command(Command::WriteLocal {
                device,
                rtp_time,
                data,
            }),
        );
    }

    /// The local device's call ended: its stream is unpublished.
    pub fn remove_local(&self, device: DeviceId) {
        let shard = self.shared.shard_of_device(device);
        let _ = self
            .shared
            .send(shard, Inbox::Command(Command::RemoveLocal { device }));
    }
}

/// How long a device whose signalling connection dropped (without `leave`) keeps its media,
/// waiting for the SDK to reconnect.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(20);

/// Datagrams taken from the socket in one go before the driver looks at anything else.
const RECEIVE_BATCH: usize = 64;

/// One signalling connection of a device (a device may be resumed by a later connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection(u64);

/// One shard: its engine's config and its bound socket.
pub struct ShardSetup {
    pub config: EngineConfig,
    pub socket: UdpSocket,
}

/// Starts one task per shard; they run until every handle is dropped.
pub fn spawn(shards: Vec<ShardSetup>, control: Control) -> std::io::Result<MediaHandle> {
    if shards.is_empty() {
        return Err(std::io::Error::other("at least one media shard is needed"));
    }
    let mut inboxes = Vec::new();
    let mut receivers = Vec::new();
    let mut sockets = Vec::new();
    let mut public = Vec::new();
    let mut engines = Vec::new();
    for setup in shards {
        let (tx, rx) = mpsc::unbounded_channel();
        inboxes.push(tx);
        receivers.push(rx);
        public.push(setup.config.public_addr);
        sockets.push(Arc::new(setup.socket));
        engines.push(Engine::new(setup.config));
    }
    let shared = Arc::new(Shared {
        inboxes,
        sockets,
        public,
        placement: Mutex::new(Placement::default()),
        redirect: RwLock::new(HashMap::new()),
    });
    for (index, (engine, inbox)) in engines.into_iter().zip(receivers).enumerate() {
        let shard = Shard {
            index,
            engine,
            shared: shared.clone(),
            control: control.clone(),
            devices: HashMap::new(),
            accounts: HashMap::new(),
            moved: HashMap::new(),
        };
        tokio::spawn(shard.run(inbox, control.watch()));
    }
    Ok(MediaHandle {
        shared,
        next_connection: Arc::new(AtomicU64::new(1)),
    })
}

struct DeviceEntry {
    participant: ParticipantId,
    unique_id: String,
    /// The connection currently attached, and where its notices go.
    connection: Option<(u64, mpsc::UnboundedSender<DeviceNotice>)>,
    /// Detached without `leave`: removed at this time unless a connection resumes it.
    expires: Option<Instant>,
    /// For a local device: where its frames go.
    downlink: Option<mpsc::UnboundedSender<LocalDownlink>>,
}

impl DeviceEntry {
    fn notify(&self, notice: DeviceNotice) {
        if let (Some(tx), DeviceNotice::Close(reason)) = (&self.downlink, &notice) {
            let _ = tx.send(LocalDownlink::Closed(reason));
        }
        if let Some((_, tx)) = &self.connection {
            let _ = tx.send(notice);
        }
    }
}

/// A first byte below 2 and a header's length: a STUN message (RFC 7983 demultiplexing).
fn looks_like_stun(data: &[u8]) -> bool {
    data.len() >= 20 && data[0] < 2
}

struct Shard {
    index: usize,
    engine: Engine,
    shared: Arc<Shared>,
    control: Control,
    devices: HashMap<DeviceId, DeviceEntry>,
    accounts: HashMap<ParticipantId, AccountId>,
    /// Devices that moved away, for commands still addressed here.
    moved: HashMap<DeviceId, usize>,
}

impl Shard {
    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<Inbox>,
        mut control_events: broadcast::Receiver<ControlEvent>,
    ) {
        let Some(socket) = self.shared.sockets.get(self.index).cloned() else {
            return;
        };
        let Some(&public) = self.shared.public.get(self.index) else {
            return;
        };
        let mut buf = vec![0u8; 2048];
        loop {
            let expiry = self.devices.values().filter_map(|d| d.expires).min();
            let deadline = self
                .engine
                .poll_timeout()
                .into_iter()
                .chain(expiry)
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                received = socket.recv_from(&mut buf) => match received {
                    Ok((n, source)) => {
                        let now = Instant::now();
                        self.receive(source, public, &buf[..n], now);
                        // Take what else is already queued before going round the loop again.
                        for _ in 0..RECEIVE_BATCH {
                            match socket.try_recv_from(&mut buf) {
                                Ok((n, source)) => self.receive(source, public, &buf[..n], now),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "media socket receive error"),
                },
                message = inbox.recv() => {
                    let Some(message) = message else { break };
                    self.handle_inbox(message);
                }
                event = control_events.recv() => match event {
                    Ok(ControlEvent::Routes(update)) => {
                        self.engine.apply_routes(update.session, &update.diff, Instant::now());
                        // Offers made for devices about to move go out first.
                        self.dispatch_events();
                        self.place_session(update.session);
                    }
                    Ok(ControlEvent::ParticipantDeleted(participant)) => {
                        self.accounts.remove(&participant);
                        let gone: Vec<DeviceId> = self.devices.iter().filter(|(_, d)| d.participant == participant).map(|(id, _)| *id).collect();
                        for device in gone {
                            self.remove_device(device, Instant::now());
                            if let Some(d) = self.devices.remove(&device) {
                                d.notify(DeviceNotice::Close("participant deleted"));
                            }
                        }
                    }
                    Ok(ControlEvent::Lifecycle(_)) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // Missed diffs: start again from control's current tables. Diffs still
                        // queued after this are replayed in order on top, which converges.
                        tracing::warn!(missed = n, shard = self.index, "media plane fell behind control; resynchronizing routes");
                        let tables = self.control.tables_snapshot();
                        self.engine.set_all_routes(&tables, Instant::now());
                        self.dispatch_events();
                        for session in tables.keys() {
                            self.place_session(*session);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let now = Instant::now();
                    let expired: Vec<DeviceId> = self.devices.iter().filter(|(_, d)| d.expires.is_some_and(|t| t <= now)).map(|(id, _)| *id).collect();
                    for device in expired {
                        self.devices.remove(&device);
                        self.remove_device(device, now);
                    }
                    self.engine.handle_timeout(now);
                }
            }
            self.flush(&socket, public).await;
        }
    }

    /// A datagram on this shard's own socket.
    fn receive(&mut self, source: SocketAddr, destination: SocketAddr, data: &[u8], now: Instant) {
        if self.engine.handle_receive(source, destination, data, now) {
            return;
        }
        let shards = self.shared.inboxes.len();
        if let Some(shard) = self.shared.redirect_of(source).filter(|&s| s != self.index) {
            let _ = self.shared.send(
                shard,
                Inbox::Datagram {
                    source,
                    destination,
                    data: data.to_vec(),
                    origin: self.index,
                },
            );
        } else if shards > 1 && looks_like_stun(data) {
            for shard in (0..shards).filter(|&s| s != self.index) {
                let _ = self.shared.send(
                    shard,
                    Inbox::Datagram {
                        source,
                        destination,
                        data: data.to_vec(),
                        origin: self.index,
                    },
                );
            }
        }
    }

    fn handle_inbox(&mut self, message: Inbox) {
        let now = Instant::now();
        match message {
            Inbox::Command(command) => self.handle_command(command),
            Inbox::Datagram {
                source,
                destination,
                data,
                origin,
            } => {
                let stun = looks_like_stun(&data);
                let known = self.shared.redirect_of(source) == Some(self.index);
                if self.engine.handle_receive(source, destination, &data, now) {
                    if stun && !known && origin != self.index {
                        // A moved peer on a new path: its datagrams reach `origin` from now on.
                        self.shared.set_redirect(source, Some(self.index));
                    }
                } else if !stun && known {
                    // Nobody here knows it any more.
                    self.shared.set_redirect(source, None);
                }
            }
            Inbox::Arrive(arrival) => {
                let Arrival {
                    moved,
                    entry,
                    account,
                } = *arrival;
                let device = moved.id();
                let participant = moved.participant();
                self.moved.remove(&device);
                if let Some(account) = account {
                    self.accounts.insert(participant, account);
                }
                if let Some(old) = self.engine.import_device(moved, now) {
                    if let Some(d) = self.devices.remove(&old) {
                        d.notify(DeviceNotice::Close("replaced by a newer connection"));
                    }
                }
                self.devices.insert(device, entry);
                tracing::debug!(device = device.0, shard = self.index, "device moved in");
            }
        }
    }

    /// Moves away the devices of `session` if the session lives on another shard.
    fn place_session(&mut self, session: SessionId) {
        let home = self.shared.shard_of_session(session);
        if home == self.index {
            return;
        }
        for device in self.engine.devices_in_session(session) {
            self.move_device(device, home);
        }
    }

    fn move_device(&mut self, device: DeviceId, shard: usize) {
        let now = Instant::now();
        let Some(entry) = self.devices.remove(&device) else {
            return;
        };
        let Some(moved) = self.engine.export_device(device, now) else {
            self.devices.insert(device, entry);
            return;
        };
        for addr in moved.paths() {
            self.shared.set_redirect(addr, Some(shard));
        }
        self.moved.insert(device, shard);
        let participant = moved.participant();
        let account = self.accounts.get(&participant).cloned();
        tracing::debug!(
            device = device.0,
            from = self.index,
            to = shard,
            "device moves"
        );
        // The device reaches its new shard before any command can be addressed there.
        let _ = self.shared.send(
            shard,
            Inbox::Arrive(Box::new(Arrival {
                moved,
                entry,
                account,
            })),
        );
        self.shared.place(device, participant, shard);
    }

    /// Removes a device from the engine and from the placement.
    fn remove_device(&mut self, device: DeviceId, now: Instant) {
        // Redirects to this shard for the device's addresses end with it.
        for addr in self.engine.paths_of(device) {
            if self.shared.redirect_of(addr) == Some(self.index) {
                self.shared.set_redirect(addr, None);
            }
        }
        self.engine.remove_device(device, now);
        let mut placement = self.shared.placement();
        if placement.devices.get(&device) == Some(&self.index) {
            placement.devices.remove(&device);
        }
        let participant = self.devices.get(&device).map(|d| d.participant);
        if let Some(p) = participant {
            let still_here = self
                .devices
                .iter()
                .any(|(id, d)| *id != device && d.participant == p);
            if !still_here && placement.participants.get(&p) == Some(&self.index) {
                placement.participants.remove(&p);
            }
        }
    }

    /// Sends what the engine produced and acts on its events.
    async fn flush(&mut self, socket: &Arc<UdpSocket>, public: SocketAddr) {
        while let Some(t) = self.engine.poll_transmit() {
            let socket = if t.source == public {
                socket
            } else {
                self.shared.socket_for(t.source).unwrap_or(socket)
            };
            let sent = match socket.try_send_to(&t.contents, t.destination) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    socket.send_to(&t.contents, t.destination).await
                }
                other => other,
            };
            if let Err(e) = sent {
                tracing::debug!(error = %e, to = %t.destination, "media send failed");
            }
        }
        self.dispatch_events();
    }

    /// Acts on the engine's events: offers to devices, published streams to control.
    fn dispatch_events(&mut self) {
        while let Some(event) = self.engine.poll_event() {
            match event {
                EngineEvent::SubscribeOffer { device, offer } => {
                    if let Some(d) = self.devices.get(&device) {
                        d.notify(DeviceNotice::Offer(offer));
                    }
                }
                EngineEvent::StreamsChanged {
                    participant,
                    streams,
                    ..
                } => {
                    // The device may have left already (its streams go with it): the account
                    // is remembered per participant.
                    let Some(account) = self.accounts.get(&participant).cloned() else {
                        continue;
                    };
                    let control = self.control.clone();
                    tokio::spawn(async move {
                        match control.set_published(&account, participant, streams).await {
                            Ok(()) => {}
                            // Deleted meanwhile (a device leaving just before a REST delete).
                            Err(ControlError::Store(
                                StoreError::ParticipantNotFound | StoreError::SessionNotFound,
                            )) => {}
                            Err(e) => tracing::warn!(error = %e, "cannot record published streams"),
                        }
                    });
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
                } => {
                    if let Some(tx) = self.devices.get(&device).and_then(|d| d.downlink.as_ref()) {
                        let _ = tx.send(LocalDownlink::Frame {
                            source,
                            rtp_time,
                            dtmf,
                            data,
                        });
                    }
                }
                EngineEvent::LocalSources { device, sources } => {
                    if let Some(tx) = self.devices.get(&device).and_then(|d| d.downlink.as_ref()) {
                        let _ = tx.send(LocalDownlink::Sources(sources));
                    }
                }
            }
        }
    }

    fn handle_command(&mut self, command: Command) {
        let now = Instant::now();
        // A new connection goes where the participant's device is, which may have moved since
        // the handle looked.
        if let Some(participant) = command.connecting() {
            let placed = self
                .shared
                .placement()
                .participants
                .get(&participant)
                .copied();
            if let Some(shard) = placed.filter(|&s| s != self.index) {
                let _ = self.shared.send(shard, Inbox::Command(command));
                return;
            }
        }
        // A command for a device that moved away follows it.
        if let Some(device) = command.device() {
            if !self.devices.contains_key(&device) {
                if let Some(&shard) = self.moved.get(&device) {
                    let _ = self.shared.send(shard, Inbox::Command(command));
                    return;
                }
            }
        }
        match command {
            Command::Connect {
                connection,
                account,
                participant,
                permissions,
                unique_id,
                notices,
                reply,
            } => {
                self.accounts.insert(participant, account);
                let existing = self
                    .devices
                    .iter()
                    .find(|(_, d)| d.participant == participant)
                    .map(|(id, _)| *id);
                if let Some(id) = existing {
                    let Some(entry) = self.devices.get_mut(&id) else {
                        return;
                    };
                    if !unique_id.is_empty() && entry.unique_id == unique_id {
                        // The same SDK instance reconnecting: resume its device and media.
                        entry.notify(DeviceNotice::Close("replaced by a newer connection"));
                        entry.connection = Some((connection, notices));
                        entry.expires = None;
                        if let Some(offer) = self.engine.pending_offer(id) {
                            entry.notify(DeviceNotice::Offer(offer));
                        }
                        let _ = reply.send(id);
                        return;
                    }
                }
                let device = DeviceId(connection);
                self.shared.place(device, participant, self.index);
                if let Some(old) = self
                    .engine
                    .add_device(device, participant, permissions, now)
                {
                    if let Some(d) = self.devices.remove(&old) {
                        d.notify(DeviceNotice::Close("replaced by a newer connection"));
                    }
                    self.shared.placement().devices.remove(&old);
                }
                self.devices.insert(
                    device,
                    DeviceEntry {
                        participant,
                        unique_id,
                        connection: Some((connection, notices)),
                        expires: None,
                        downlink: None,
                    },
                );
                let _ = reply.send(device);
            }
            Command::Disconnect {
                connection,
                device,
                left,
            } => {
                let Some(entry) = self.devices.get_mut(&device) else {
                    return;
                };
                if entry.connection.as_ref().map(|(c, _)| *c) != Some(connection) {
                    return; // a superseded connection
                }
                if left {
                    self.remove_device(device, now);
                    self.devices.remove(&device);
                } else {
                    entry.connection = None;
                    entry.expires = Some(now + RECONNECT_GRACE);
                }
            }
            Command::PublishOffer {
                device,
                sdp,
                metadata,
                reply,
            } => {
                let _ = reply.send(
                    self.engine
                        .handle_publish_offer(device, &sdp, &metadata, now),
                );
            }
            Command::SubscribeAnswer { device, sdp, reply } => {
                let _ = reply.send(self.engine.handle_subscribe_answer(device, &sdp, now));
            }
            Command::ConnectLocal {
                connection,
                account,
                participant,
                stream,
                alias,
                downlink,
                reply,
            } => {
                self.accounts.insert(participant, account);
                let device = DeviceId(connection);
                self.shared.place(device, participant, self.index);
                // The entry first: the engine's first events (its sources) go to the bridge.
                self.devices.insert(
                    device,
                    DeviceEntry {
                        participant,
                        unique_id: String::new(),
                        connection: None,
                        expires: None,
                        downlink: Some(downlink),
                    },
                );
                if let Some(old) =
                    self.engine
                        .add_local_device(device, participant, stream, alias, now)
                {
                    if let Some(d) = self.devices.remove(&old) {
                        d.notify(DeviceNotice::Close("replaced by a newer connection"));
                    }
                    self.shared.placement().devices.remove(&old);
                }
                let _ = reply.send(device);
            }
            Command::WriteLocal {
                device,
                rtp_time,
                data,
            } => self.engine.write_local(device, rtp_time, data, now),
            Command::RemoveLocal { device } => {
                if self.devices.contains_key(&device) {
                    self.remove_device(device, now);
                    self.devices.remove(&device);
                }
            }
        }
    }
}

impl Command {
    /// The participant a new connection is for.
    fn connecting(&self) -> Option<ParticipantId> {
        match self {
            Command::Connect { participant, .. } | Command::ConnectLocal { participant, .. } => {
                Some(*participant)
            }
            _ => None,
        }
    }

    /// The device a command is about (none for a new connection).
    fn device(&self) -> Option<DeviceId> {
        match self {
            Command::Connect { .. } | Command::ConnectLocal { .. } => None,
            Command::Disconnect { device, .. }
            | Command::PublishOffer { device, .. }
            | Command::SubscribeAnswer { device, .. }
            | Command::WriteLocal { device, .. }
            | Command::RemoveLocal { device } => Some(*device),
        }
    }
}
