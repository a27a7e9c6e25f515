//! The media driver: one task per shard (one per core by default), each pumping one UDP
//! socket, the frames of its ICE-TCP connections (`runtime::media_tcp` owns those), its
//! inbox (device commands, routing diffs, deletions, disconnects and the stop from control's
//! port, in the order control made them; messages of other shards) and a timer into one
//! [`Shard`], and carrying
//! out what the shard asks: datagrams to send, notices to device connections, frames to local
//! devices, messages to other shards, published streams to control. All decisions (devices,
//! resume and replacement, the reconnect grace, moves, redirects) are the shard's; see
//! `media::shard`. Device connections talk to the shards through a [`MediaHandle`].
//!
//! What the tasks share: the inboxes and sockets (every shard may send from every socket, for
//! devices that moved), and the [`Placement`] directory behind a lock, touched when a device
//! connects, moves or goes away and when a command picks its shard, never per datagram.
//!
//! The UDP socket is read and written in batches (`recvmmsg`, UDP GRO and GSO where the kernel
//! has them): `runtime::media_udp` owns that; a shard still sees one datagram at a time.
//!
//! Reports (published streams, subscribe layouts) go to control through one channel and one
//! reporter task, so control sees a participant's updates in the order the shards produced
//! them.
#![allow(clippy::disallowed_methods)] // the runtime owns the clock, the tasks and the threads

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::epoch_ms;
use crate::control::port::{
    Connection, DeviceNotice, DeviceRequest, LocalConnection, LocalDownlink, LocalRequest,
    LocalUplink, MediaPort,
};
use crate::control::{Control, ControlError, Resource};
use crate::domain::{
    AccountId, ConnectionQuality, ParticipantId, ParticipantQuality, PublishPermissions, SessionId,
    StreamAlias, StreamId, SubscribeLayout,
};
use crate::forwarding::{PublishedStream, TableDiff};
pub use crate::media::RECONNECT_GRACE;
use crate::media::{
    DeclaredStreams, Delivery, DeviceId, Engine, EngineConfig, MediaError, Placement,
    PublishAnswer, Resumption, Shard, ShardMessage, ShardOutput, SpeakerChange, Transport,
};
use crate::runtime::listen::{descriptor_share, ConnectionLimits, Gate};
use crate::runtime::media_tcp::{self, Sent, TcpConnections, TcpFrame, TcpShard, TcpWriters};
use crate::runtime::media_udp::{MediaSocket, Receiver, Sender};

enum Command {
    Connect {
        connection: u64,
        account: AccountId,
        participant: ParticipantId,
        permissions: PublishPermissions,
        unique_id: String,
        layout: Option<SubscribeLayout>,
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
        metadata: DeclaredStreams,
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
        level: Option<u8>,
    },
    /// A local device's leg, as its driver measured it.
    LocalLeg {
        device: DeviceId,
        leg: Box<(ConnectionQuality, ConnectionQuality)>,
    },
    RemoveLocal {
        device: DeviceId,
    },
    /// What a participant's device here measured.
    Quality {
        participant: ParticipantId,
        reply: oneshot::Sender<Option<ParticipantQuality>>,
    },
    /// What every device of the shard measured.
    Qualities {
        reply: oneshot::Sender<Vec<(ParticipantId, ParticipantQuality)>>,
    },
}

/// A handle on the media driver. Cheap to clone.
#[derive(Clone)]
pub struct MediaHandle {
    shared: Arc<Shared>,
    next_connection: Arc<AtomicU64>,
}

/// What every shard task and handle can see.
struct Shared {
    inboxes: Vec<mpsc::UnboundedSender<Inbox>>,
    sockets: Vec<Arc<MediaSocket>>,
    /// The public address of each shard's socket (its first ICE candidate), by shard.
    public: Vec<SocketAddr>,
    /// Every advertised address of each shard's socket (its ICE candidates), by shard.
    advertised: Vec<Vec<SocketAddr>>,
    placement: Mutex<Placement>,
}

impl Shared {
    fn placement(&self) -> MutexGuard<'_, Placement> {
        // A poisoned lock only means a panic elsewhere; the maps themselves stay consistent.
        self.placement.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Sends a connect command to the shard a new device of `participant` goes to, and waits
    /// for the reply. Chosen and sent under the placement lock, which routing changes also
    /// take to be sent ([`MediaHandle::apply_routes`]): each shard's inbox has the connect
    /// and every routing change in one order, so a change that moves the participant reaches
    /// the shard after its device. A change taken after `routes_seen` (the count when the
    /// session was read) may already have moved the participant: refused, to be retried
    /// with the session read again.
    async fn place<T>(
        &self,
        participant: ParticipantId,
        session: Option<SessionId>,
        routes_seen: Option<u64>,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MediaError> {
        let (reply, answer) = oneshot::channel();
        {
            let placement = self.placement();
            if routes_seen.is_some_and(|seen| seen != placement.routes_applied()) {
                return Err(MediaError::SessionChanged);
            }
            let shard = placement.shard_for(participant, session, self.inboxes.len());
            self.send(shard, Inbox::Command(make(reply)))?;
        }
        answer
            .await
            .map_err(|_| MediaError::Internal("media plane stopped".into()))
    }

    /// Sends `message` to every shard, in the order of every other message sent to them.
    fn send_all(&self, message: impl Fn() -> Inbox) {
        for inbox in &self.inboxes {
            let _ = inbox.send(message());
        }
    }

    fn shard_of_device(&self, device: DeviceId) -> usize {
        self.placement().shard_of_device(device)
    }

    /// The number of the socket bound for the public address `source`.
    fn socket_for(&self, source: SocketAddr) -> Option<usize> {
        self.advertised.iter().position(|a| a.contains(&source))
    }
}

/// What a shard's task receives besides its socket and its TCP frames: everything control and
/// the other shards tell it, in one order.
enum Inbox {
    Command(Command),
    /// A message of another shard, with the channels of a device moving in.
    Shard(ShardMessage, Links),
    /// A session's forwarding table changed.
    Routes(SessionId, Arc<TableDiff>),
    /// A participant was deleted: its devices go.
    ParticipantDeleted(ParticipantId),
    /// A participant's devices go, told `reason`.
    Disconnect {
        participant: ParticipantId,
        reason: &'static str,
    },
    /// The process stops: the shard lets its devices go and its task ends.
    Stop,
}

/// Where a moving device's notices and frames go: they travel with it.
#[derive(Default)]
struct Links {
    notices: Option<(u64, mpsc::UnboundedSender<DeviceNotice>)>,
    downlink: Option<(DeviceId, mpsc::UnboundedSender<LocalDownlink>)>,
}

impl MediaHandle {
    /// The public media address of each shard (its ICE host candidate).
    pub fn public_addrs(&self) -> &[SocketAddr] {
        &self.shared.public
    }

    /// How many devices (browsers and phones) are attached to the media plane now.
    pub fn connected_devices(&self) -> usize {
        self.shared.placement().device_count()
    }
}

/// The media plane as control drives it.
#[async_trait]
impl MediaPort for MediaHandle {
    /// A connection of the same participant with the same `uniqueId` (the SDK reconnecting)
    /// resumes the device and its media; any other replaces it. The participant's session, if
    /// any, decides the shard.
    async fn connect(
        &self,
        request: DeviceRequest,
        notices: mpsc::UnboundedSender<DeviceNotice>,
    ) -> Result<(DeviceId, Connection), MediaError> {
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let device = self
            .shared
            .place(
                request.participant,
                request.session,
                request.routes_seen,
                |reply| Command::Connect {
                    connection,
                    account: request.account,
                    participant: request.participant,
                    permissions: request.permissions,
                    unique_id: request.unique_id,
                    layout: request.layout,
                    notices,
                    reply,
                },
            )
            .await?;
        Ok((device, Connection(connection)))
    }

    fn disconnect(&self, connection: Connection, device: DeviceId, left: bool) {
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

    async fn publish_offer(
        &self,
        device: DeviceId,
        sdp: String,
        declared: DeclaredStreams,
    ) -> Result<PublishAnswer, MediaError> {
        let shard = self.shared.shard_of_device(device);
        self.shared
            .request(shard, |reply| Command::PublishOffer {
                device,
                sdp,
                metadata: declared,
                reply,
            })
            .await?
    }

    async fn subscribe_answer(&self, device: DeviceId, sdp: String) -> Result<(), MediaError> {
        let shard = self.shared.shard_of_device(device);
        self.shared
            .request(shard, |reply| Command::SubscribeAnswer {
                device,
                sdp,
                reply,
            })
            .await?
    }

    fn is_connected(&self, participant: ParticipantId) -> bool {
        self.shared.placement().is_connected(participant)
    }

    async fn quality(
        &self,
        participant: ParticipantId,
    ) -> Result<Option<ParticipantQuality>, MediaError> {
        let placed = self.shared.placement().shard_of_participant(participant);
        let Some(shard) = placed else {
            return Ok(None);
        };
        self.shared
            .request(shard, |reply| Command::Quality { participant, reply })
            .await
    }

    async fn qualities(&self) -> Result<Vec<(ParticipantId, ParticipantQuality)>, MediaError> {
        let mut all = Vec::new();
        for shard in 0..self.shared.inboxes.len() {
            let measured = self
                .shared
                .request(shard, |reply| Command::Qualities { reply })
                .await?;
            all.extend(measured);
        }
        Ok(all)
    }

    async fn connect_local(&self, request: LocalRequest) -> Result<LocalConnection, MediaError> {
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let (downlink, frames) = mpsc::unbounded_channel();
        let device = self
            .shared
            .place(
                request.participant,
                request.session,
                request.routes_seen,
                |reply| Command::ConnectLocal {
                    connection,
                    account: request.account,
                    participant: request.participant,
                    stream: request.stream,
                    alias: request.alias,
                    downlink,
                    reply,
                },
            )
            .await?;
        // The shard that took it (the command may have followed the participant's device
        // elsewhere): looked up once here, never per frame.
        let placed = self.shared.shard_of_device(device);
        let inbox = self
            .shared
            .inboxes
            .get(placed)
            .cloned()
            .ok_or_else(|| MediaError::Internal("no such media shard".into()))?;
        Ok(LocalConnection {
            device,
            uplink: Box::new(ShardUplink { device, inbox }),
            downlink: frames,
        })
    }

    fn remove_local(&self, device: DeviceId) {
        let shard = self.shared.shard_of_device(device);
        let _ = self
            .shared
            .send(shard, Inbox::Command(Command::RemoveLocal { device }));
    }

    fn routes_applied(&self) -> u64 {
        self.shared.placement().routes_applied()
    }

    /// Every shard takes the change: the session's home applies it, the others send their
    /// devices of the participants it names home.
    fn apply_routes(&self, session: SessionId, diff: Arc<TableDiff>) {
        let mut placement = self.shared.placement();
        placement.note_routes();
        self.shared
            .send_all(|| Inbox::Routes(session, diff.clone()));
        drop(placement);
    }

    fn participant_deleted(&self, participant: ParticipantId) {
        self.shared
            .send_all(|| Inbox::ParticipantDeleted(participant));
    }

    fn disconnect_participant(&self, participant: ParticipantId, reason: &'static str) {
        self.shared.send_all(|| Inbox::Disconnect {
            participant,
            reason,
        });
    }

    fn stop(&self) {
        self.shared.send_all(|| Inbox::Stop);
    }
}

/// A local device's frames into the inbox of the shard that took it; a shard the device
/// has moved away from sends the command on (`Shard::locate`).
struct ShardUplink {
    device: DeviceId,
    inbox: mpsc::UnboundedSender<Inbox>,
}

impl LocalUplink for ShardUplink {
    fn write(&self, rtp_time: u64, data: Vec<u8>, level: Option<u8>) {
        let _ = self.inbox.send(Inbox::Command(Command::WriteLocal {
            device: self.device,
            rtp_time,
            data,
            level,
        }));
    }

    fn report(&self, publish: ConnectionQuality, subscribe: ConnectionQuality) {
        let _ = self.inbox.send(Inbox::Command(Command::LocalLeg {
            device: self.device,
            leg: Box::new((publish, subscribe)),
        }));
    }
}

/// Which of a shard's advertised addresses a datagram from `source` was sent to, as far as
/// the socket can tell: the first of the source's address family (an ICE check pairs
/// candidates of one family), else the first.
fn sent_to(source: SocketAddr, advertised: &[SocketAddr]) -> SocketAddr {
    advertised
        .iter()
        .find(|a| a.is_ipv4() == source.is_ipv4())
        .or_else(|| advertised.first())
        .copied()
        .unwrap_or(source)
}

/// Datagrams taken from the socket or the TCP frames in one go before the driver looks at
/// anything else (for UDP, rounded up to whole `recvmmsg` batches).
const RECEIVE_BATCH: usize = 64;

/// One shard: its engine's config and its bound sockets.
pub struct ShardSetup {
    /// The engine's settings: its public addresses (UDP and TCP) and the DTLS certificate.
    pub config: EngineConfig,
    /// The shard's bound UDP socket.
    pub socket: UdpSocket,
    /// The shard's ICE-TCP listener (advertised at `config.tcp_addrs`); none when ICE over
    /// TCP is off.
    pub tcp: Option<tokio::net::TcpListener>,
}

/// Connections from one source network (IPv4 /24, IPv6 /64) the media TCP listeners take at
/// once while they are less than half full (and never more than half of their total; see
/// [`crate::runtime::listen`]): room for a few hundred devices behind one NAT, two
/// connections each.
const TCP_MAX_PER_SOURCE: usize = 512;

/// How often this process writes what its media plane measured to the store, for the
/// operator's `patchbay session inspect` (issue 21).
pub const QUALITY_RECORD_EVERY: Duration = Duration::from_secs(5);

/// Writes what the media plane measured to the store every [`QUALITY_RECORD_EVERY`]
/// ([`Control::record_quality`]); a failed write is logged and tried again at the next tick.
/// While the process has no device, nothing is written after the first empty write.
pub fn spawn_quality_recorder(control: Control) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(QUALITY_RECORD_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut written_none = false;
        loop {
            every.tick().await;
            match control.record_quality(epoch_ms(), written_none).await {
                Ok(n) => written_none = n == 0,
                Err(e) => {
                    written_none = false;
                    tracing::debug!(error = %e, "cannot record the media quality measured here");
                }
            }
        }
    });
}

/// Starts one task per shard and the reporter of their reports.
pub fn spawn(shards: Vec<ShardSetup>, control: Control) -> std::io::Result<MediaHandle> {
    if shards.is_empty() {
        return Err(std::io::Error::other("at least one media shard is needed"));
    }
    let count = shards.len();
    let mut inboxes = Vec::new();
    let mut receivers = Vec::new();
    let mut sockets = Vec::new();
    let mut public = Vec::new();
    let mut advertised = Vec::new();
    let mut engines = Vec::new();
    let mut tcp_listeners = Vec::new();
    let mut tcp_senders = Vec::new();
    let mut tcp_receivers = Vec::new();
    for (index, setup) in shards.into_iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        inboxes.push(tx);
        receivers.push(rx);
        let (frames_tx, frames_rx) = mpsc::channel(media_tcp::FRAME_QUEUE);
        tcp_senders.push(frames_tx);
        tcp_receivers.push(frames_rx);
        if let Some(listener) = setup.tcp {
            tcp_listeners.push(TcpShard {
                shard: index,
                listener,
                advertised: setup.config.tcp_addrs.clone(),
            });
        }
        let primary = setup
            .config
            .primary_addr()
            .ok_or_else(|| std::io::Error::other("a media shard needs a public address"))?;
        public.push(primary);
        advertised.push(setup.config.public_addrs.clone());
        sockets.push(Arc::new(MediaSocket::new(setup.socket)?));
        engines.push(Engine::new(setup.config));
    }
    let shared = Arc::new(Shared {
        inboxes,
        sockets,
        public,
        advertised,
        placement: Mutex::new(Placement::default()),
    });
    let reports = spawn_reporters(control.clone());
    let connections = TcpConnections::default();
    let max_total = descriptor_share(0.25, 16_384);
    let gate = Gate::new(
        "ice-tcp",
        ConnectionLimits {
            max_total,
            max_per_source: TCP_MAX_PER_SOURCE.min(max_total / 2),
            reserve: 0,
        },
    );
    media_tcp::spawn(tcp_listeners, tcp_senders, connections.clone(), gate);
    for (index, ((engine, inbox), frames)) in engines
        .into_iter()
        .zip(receivers)
        .zip(tcp_receivers)
        .enumerate()
    {
        let pump = Pump {
            shard: Shard::new(index, count, engine),
            shared: shared.clone(),
            stopped: false,
            notices: HashMap::new(),
            downlinks: HashMap::new(),
            reports: reports.clone(),
            noise: NoiseCounter::default(),
            tcp: TcpWriters::new(connections.clone()),
            udp: Sender::default(),
            dropped: 0,
            meter: super::metrics::ShardMeter::new(index, Instant::now()),
        };
        tokio::spawn(pump.run(inbox, frames));
    }
    Ok(MediaHandle {
        shared,
        next_connection: Arc::new(AtomicU64::new(1)),
    })
}

/// What the shards report to control, in order.
enum Report {
    /// A participant's published streams.
    Published {
        account: AccountId,
        participant: ParticipantId,
        streams: Vec<PublishedStream>,
    },
    /// What a later process needs to resume a device's connections.
    Resumption(Resumption),
    /// A session's dominant speaker changed, at this epoch millisecond.
    ActiveSpeaker(SpeakerChange, i64),
}

/// Where the shards' reports go: two tasks, each recording its reports with control one after
/// the other. Published streams (each a recompile that routes media) never wait behind the
/// store writes of resumption state (a layout per subscriber per offer); each kind keeps its
/// own order, which is the one that matters (a participant's streams; a device's layouts,
/// then its forgetting).
///
/// Order holds per participant, even across a move: the shard a device leaves queues its
/// updates before it queues the device's arrival in the new shard's inbox, and the new shard
/// queues its own only after taking the device from its inbox, so every update of the old
/// shard is in its channel before any of the new one.
#[derive(Clone)]
struct Reporters {
    published: mpsc::UnboundedSender<Report>,
    resumption: mpsc::UnboundedSender<Report>,
    /// Dominant speakers: never behind a store write.
    speakers: mpsc::UnboundedSender<Report>,
}

impl Reporters {
    fn send(&self, report: Report) {
        let to = match report {
            Report::Published { .. } => &self.published,
            Report::ActiveSpeaker(..) => &self.speakers,
            _ => &self.resumption,
        };
        let _ = to.send(report);
    }
}

fn spawn_reporters(control: Control) -> Reporters {
    Reporters {
        published: spawn_reporter(control.clone()),
        resumption: spawn_reporter(control.clone()),
        speakers: spawn_reporter(control),
    }
}

fn spawn_reporter(control: Control) -> mpsc::UnboundedSender<Report> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Report>();
    tokio::spawn(async move {
        while let Some(report) = rx.recv().await {
            let outcome = match report {
                Report::Published {
                    account,
                    participant,
                    streams,
                } => control.set_published(&account, participant, streams).await,
                Report::Resumption(Resumption::Layout {
                    participant,
                    layout,
                }) => control.save_subscribe_layout(participant, &layout).await,
                Report::Resumption(Resumption::PublishCredentials(credentials)) => {
                    control.save_publish_credentials(&credentials).await
                }
                Report::Resumption(Resumption::Forgotten {
                    participant,
                    unique_id,
                }) => {
                    control
                        .forget_subscribe_layout(participant, &unique_id)
                        .await
                }
                Report::ActiveSpeaker(change, at_ms) => {
                    control.active_speaker_changed(
                        change.session,
                        change.participant,
                        change.phone,
                        at_ms,
                    );
                    Ok(())
                }
            };
            match outcome {
                Ok(()) => {}
                // Deleted meanwhile (a device leaving just before a REST delete).
                Err(ControlError::NotFound(Resource::Participant | Resource::Session)) => {}
                Err(e) => tracing::warn!(error = %e, "cannot record a media report"),
            }
        }
    });
    tx
}

/// One shard's task: the shard and the channels of its devices.
struct Pump {
    shard: Shard,
    shared: Arc<Shared>,
    /// The stop came: the task ends after this turn.
    stopped: bool,
    /// Where each attached connection's notices go.
    notices: HashMap<u64, mpsc::UnboundedSender<DeviceNotice>>,
    /// Where each local device's frames go.
    downlinks: HashMap<DeviceId, mpsc::UnboundedSender<LocalDownlink>>,
    reports: Reporters,
    noise: NoiseCounter,
    /// The write queues of ICE-TCP connections (any shard's).
    tcp: TcpWriters,
    /// The UDP datagrams of a flush, on their way out in batches.
    udp: Sender<Vec<u8>>,
    /// Datagrams no device took, since the start (the noise counter's are per report).
    dropped: u64,
    /// The shard's counters on their way to the metrics recorder.
    meter: super::metrics::ShardMeter,
}

/// How often dropped unauthenticated datagrams are reported (one line per shard, while
/// they keep coming).
const NOISE_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Most distinct source addresses remembered per report.
const NOISE_MAX_SOURCES: usize = 4096;

/// Datagrams this shard dropped because no device knows them (garbage, probes, STUN for no
/// connection): network noise anyone can send, so it is counted, never logged one by one,
/// and reported as at most one INFO line per [`NOISE_REPORT_INTERVAL`].
#[derive(Default)]
struct NoiseCounter {
    since: Option<Instant>,
    dropped: u64,
    sources: std::collections::HashSet<std::net::IpAddr>,
}

impl NoiseCounter {
    fn count(&mut self, shard: usize, source: SocketAddr, now: Instant) {
        let since = *self.since.get_or_insert(now);
        self.dropped += 1;
        if self.sources.len() < NOISE_MAX_SOURCES {
            self.sources.insert(source.ip());
        }
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= NOISE_REPORT_INTERVAL {
            tracing::info!(
                shard,
                dropped = self.dropped,
                sources = self.sources.len(),
                seconds = elapsed.as_secs(),
                "dropped {} unauthenticated datagrams from {} sources",
                self.dropped,
                self.sources.len()
            );
            *self = NoiseCounter::default();
        }
    }
}

impl Pump {
    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<Inbox>,
        mut frames: mpsc::Receiver<TcpFrame>,
    ) {
        let index = self.shard.index();
        let Some(socket) = self.shared.sockets.get(index).cloned() else {
            return;
        };
        let Some(advertised) = self.shared.advertised.get(index).cloned() else {
            return;
        };
        let mut received = Receiver::new(&socket);
        loop {
            let deadline = self
                .shard
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            // Each branch answers when it woke: the time from there to the end of the flush is
            // the shard's busy time.
            let woke = tokio::select! {
                ready = socket.readable() => {
                    let now = Instant::now();
                    match ready {
                        Ok(()) => self.receive_udp(&socket, &mut received, &mut inbox, &advertised, now),
                        Err(e) => tracing::debug!(error = %e, "media socket receive error"),
                    }
                    now
                },
                Some(frame) = frames.recv() => {
                    let now = Instant::now();
                    self.receive(&mut inbox, Transport::Tcp, frame.source, frame.destination, &frame.data, now);
                    for _ in 0..RECEIVE_BATCH {
                        match frames.try_recv() {
                            Ok(f) => self.receive(&mut inbox, Transport::Tcp, f.source, f.destination, &f.data, now),
                            Err(_) => break,
                        }
                    }
                    now
                }
                message = inbox.recv() => {
                    let woke = Instant::now();
                    let Some(message) = message else { break };
                    self.handle_inbox(message);
                    woke
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let woke = Instant::now();
                    self.shard.handle_timeout(woke);
                    woke
                }
            };
            self.flush(index).await;
            if self.stopped {
                // Dropping the shard drops its devices' notice channels: each connection
                // closes with 1001 "server shutting down".
                break;
            }
            let done = Instant::now();
            self.meter.busy(done.saturating_duration_since(woke));
            if self.meter.due(done) {
                let counters = self.shard.engine().counters();
                self.meter
                    .publish(counters, self.dropped, inbox.len(), done);
                self.meter.record_quality(self.shard.take_quality_samples());
            }
        }
    }

    /// Takes what this shard's socket has queued, [`RECEIVE_BATCH`] datagrams at most (whole
    /// `recvmmsg` batches), and hands it to the shard one datagram at a time.
    fn receive_udp(
        &mut self,
        socket: &MediaSocket,
        received: &mut Receiver,
        inbox: &mut mpsc::UnboundedReceiver<Inbox>,
        advertised: &[SocketAddr],
        now: Instant,
    ) {
        let mut taken = 0;
        while taken < RECEIVE_BATCH {
            let filled = match received.recv(socket) {
                Ok(filled) => filled,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        tracing::debug!(error = %e, "media socket receive error");
                    }
                    break;
                }
            };
            for (source, data) in received.datagrams() {
                let public = sent_to(source, advertised);
                self.receive(inbox, Transport::Udp, source, public, data, now);
            }
            taken += filled;
            // A short batch emptied the queue: the next wake-up finds what arrives after it
            // (the socket stays readable until a receive finds nothing).
            if filled < quinn_udp::BATCH_SIZE {
                break;
            }
        }
    }

    /// A datagram on this shard's own socket, or a frame of a TCP connection its listener took.
    fn receive(
        &mut self,
        inbox: &mut mpsc::UnboundedReceiver<Inbox>,
        transport: Transport,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
        now: Instant,
    ) {
        let mut delivery = self
            .shard
            .handle_receive_on(transport, source, destination, data, now);
        if delivery == Delivery::Unplaced {
            // A redirect for this address may be queued: it was put in the inbox before the
            // datagram that made the peer send this one left (see `media::shard`).
            while let Ok(message) = inbox.try_recv() {
                self.handle_inbox(message);
            }
            delivery = self
                .shard
                .handle_receive_on(transport, source, destination, data, now);
        }
        if matches!(delivery, Delivery::Dropped | Delivery::Unplaced) {
            self.dropped += 1;
            self.noise.count(self.shard.index(), source, now);
        }
    }

    fn handle_inbox(&mut self, message: Inbox) {
        match message {
            Inbox::Command(command) => self.handle_command(command),
            Inbox::Shard(message, links) => {
                if let Some((connection, tx)) = links.notices {
                    self.notices.insert(connection, tx);
                }
                if let Some((device, tx)) = links.downlink {
                    self.downlinks.insert(device, tx);
                }
                self.shard.handle_message(message, Instant::now());
            }
            Inbox::Routes(session, diff) => {
                self.shard.handle_routes(session, &diff, Instant::now());
            }
            Inbox::ParticipantDeleted(participant) => {
                self.shard
                    .handle_participant_deleted(participant, Instant::now());
            }
            Inbox::Disconnect {
                participant,
                reason,
            } => {
                self.shard
                    .handle_participant_disconnect(participant, reason, Instant::now());
            }
            Inbox::Stop => self.stopped = true,
        }
    }

    /// Carries out the shard's outputs, then sends its datagrams: TCP frames to their
    /// connections' queues, UDP datagrams in batches (see `runtime::media_udp`) from the socket
    /// of their source address, else shard `own`'s.
    async fn flush(&mut self, own: usize) {
        self.route_outputs();
        while let Some(t) = self.shard.poll_transmit() {
            if t.transport == Transport::Tcp {
                // A slow or gone connection loses the packet, like a congested UDP path; the
                // shard never waits for it.
                let sent = self.tcp.send(t.source, t.destination, &t.contents);
                if sent != Sent::Queued {
                    tracing::debug!(to = %t.destination, ?sent, "media TCP frame dropped");
                }
                continue;
            }
            let socket = self.shared.socket_for(t.source).unwrap_or(own);
            self.udp.push(socket, t.destination, t.contents);
        }
        self.udp.send_all(&self.shared.sockets, own).await;
    }

    fn route_outputs(&mut self) {
        let index = self.shard.index();
        while let Some(output) = self.shard.poll_output() {
            match output {
                ShardOutput::Notice { connection, notice } => {
                    let last = matches!(notice, DeviceNotice::Close(_));
                    tell(&mut self.notices, connection, notice, last);
                }
                ShardOutput::Local { device, downlink } => {
                    let last = matches!(downlink, LocalDownlink::Closed(_));
                    tell(&mut self.downlinks, device, downlink, last);
                }
                ShardOutput::Published {
                    account,
                    participant,
                    streams,
                } => {
                    self.reports.send(Report::Published {
                        account,
                        participant,
                        streams,
                    });
                }
                ShardOutput::Resumption(resumption) => {
                    self.reports.send(Report::Resumption(resumption));
                }
                ShardOutput::ActiveSpeaker(change) => {
                    self.reports.send(Report::ActiveSpeaker(change, epoch_ms()));
                }
                ShardOutput::Message { shard, message } => self.send_message(shard, message),
                ShardOutput::Placed {
                    device,
                    participant,
                } => self.shared.placement().place(device, participant, index),
                ShardOutput::Removed {
                    device,
                    participant,
                    last,
                } => self
                    .shared
                    .placement()
                    .remove(device, participant, index, last),
            }
        }
    }

    /// Puts a message in another shard's inbox; a device moving there takes its channels,
    /// and the directory says it is there only once it is in that inbox.
    fn send_message(&mut self, shard: usize, message: ShardMessage) {
        let mut links = Links::default();
        let mut arrival = None;
        if let ShardMessage::Arrive(a) = &message {
            let device = a.device();
            links.notices = a
                .connection()
                .and_then(|c| self.notices.remove(&c).map(|tx| (c, tx)));
            links.downlink = self.downlinks.remove(&device).map(|tx| (device, tx));
            arrival = Some((device, a.participant()));
        }
        if self
            .shared
            .send(shard, Inbox::Shard(message, links))
            .is_err()
        {
            return;
        }
        if let Some((device, participant)) = arrival {
            tracing::debug!(
                device = device.0,
                from = self.shard.index(),
                to = shard,
                "device moves"
            );
            self.shared.placement().place(device, participant, shard);
        }
    }

    fn handle_command(&mut self, command: Command) {
        let now = Instant::now();
        // A new connection goes where the participant's device is, which may have moved since
        // the handle looked.
        if let Some(participant) = command.connecting() {
            let placed = self.shared.placement().shard_of_participant(participant);
            if let Some(shard) = placed.filter(|&s| s != self.shard.index()) {
                let _ = self.shared.send(shard, Inbox::Command(command));
                return;
            }
        }
        // A participant's device may have moved to another shard since the handle looked.
        if let Command::Quality { participant, .. } = &command {
            let placed = self.shared.placement().shard_of_participant(*participant);
            if let Some(shard) = placed.filter(|&s| s != self.shard.index()) {
                let _ = self.shared.send(shard, Inbox::Command(command));
                return;
            }
        }
        // A command for a device that moved away follows it.
        if let Some(shard) = command.device().and_then(|d| self.shard.locate(d)) {
            let _ = self.shared.send(shard, Inbox::Command(command));
            return;
        }
        match command {
            Command::Connect {
                connection,
                account,
                participant,
                permissions,
                unique_id,
                layout,
                notices,
                reply,
            } => {
                self.notices.insert(connection, notices);
                let device = self.shard.handle_connect(
                    connection,
                    account,
                    participant,
                    permissions,
                    unique_id,
                    layout,
                    now,
                );
                // The directory knows the device before its connection can address it.
                self.route_outputs();
                let _ = reply.send(device);
            }
            Command::Disconnect {
                connection,
                device,
                left,
            } => {
                self.shard.handle_disconnect(connection, device, left, now);
                self.notices.remove(&connection);
            }
            Command::PublishOffer {
                device,
                sdp,
                metadata,
                reply,
            } => {
                let _ = reply.send(
                    self.shard
                        .handle_publish_offer(device, &sdp, &metadata, now),
                );
            }
            Command::SubscribeAnswer { device, sdp, reply } => {
                let _ = reply.send(self.shard.handle_subscribe_answer(device, &sdp, now));
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
                let device = DeviceId(connection);
                self.downlinks.insert(device, downlink);
                self.shard.handle_connect_local(
                    connection,
                    account,
                    participant,
                    stream,
                    alias,
                    now,
                );
                self.route_outputs();
                let _ = reply.send(device);
            }
            Command::WriteLocal {
                device,
                rtp_time,
                data,
                level,
            } => self
                .shard
                .handle_write_local(device, rtp_time, data, level, now),
            Command::LocalLeg { device, leg } => {
                let (publish, subscribe) = *leg;
                self.shard.handle_local_leg(device, publish, subscribe, now);
            }
            Command::RemoveLocal { device } => {
                self.shard.handle_remove_local(device, now);
                self.downlinks.remove(&device);
            }
            Command::Quality { participant, reply } => {
                let _ = reply.send(self.shard.engine().quality(participant, now));
            }
            Command::Qualities { reply } => {
                let _ = reply.send(self.shard.engine().qualities_of(None, now));
            }
        }
    }
}

/// Sends `message` on the channel of `key`; the channel is dropped after the `last` one.
fn tell<K: std::hash::Hash + Eq, T>(
    channels: &mut HashMap<K, mpsc::UnboundedSender<T>>,
    key: K,
    message: T,
    last: bool,
) {
    if let Some(tx) = channels.get(&key) {
        let _ = tx.send(message);
    }
    if last {
        channels.remove(&key);
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
            Command::Connect { .. }
            | Command::ConnectLocal { .. }
            | Command::Quality { .. }
            | Command::Qualities { .. } => None,
            Command::Disconnect { device, .. }
            | Command::PublishOffer { device, .. }
            | Command::SubscribeAnswer { device, .. }
            | Command::WriteLocal { device, .. }
            | Command::LocalLeg { device, .. }
            | Command::RemoveLocal { device } => Some(*device),
        }
    }
}
