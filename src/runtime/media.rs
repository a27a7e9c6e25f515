//! The media driver: one task owns the UDP socket and the [`Engine`], feeds it datagrams,
//! commands from device connections, routing changes from control and the clock, and sends
//! what it produces. Device connections talk to it through a [`MediaHandle`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::control::{Control, ControlError, ControlEvent};
use crate::domain::{AccountId, ParticipantId, PublishPermissions};
use crate::media::{
    DeviceId, Engine, EngineConfig, EngineEvent, MediaError, PublishAnswer, PublishMetadata,
    SubscribeOffer,
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
}

/// A handle on the media driver. Cheap to clone.
#[derive(Clone)]
pub struct MediaHandle {
    commands: mpsc::UnboundedSender<Command>,
    next_device: Arc<AtomicU64>,
    local_addr: SocketAddr,
}

impl MediaHandle {
    /// The address the media socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Registers a device connection; notices for it arrive on `notices`. A connection of the
    /// same participant with the same `uniqueId` (the SDK reconnecting) resumes the device and
    /// its media; any other replaces it.
    pub async fn connect(
        &self,
        account: AccountId,
        participant: ParticipantId,
        permissions: PublishPermissions,
        unique_id: String,
        notices: mpsc::UnboundedSender<DeviceNotice>,
    ) -> Result<(DeviceId, Connection), MediaError> {
        let connection = self.next_device.fetch_add(1, Ordering::Relaxed);
        let (reply, device) = oneshot::channel();
        self.commands
            .send(Command::Connect {
                connection,
                account,
                participant,
                permissions,
                unique_id,
                notices,
                reply,
            })
            .map_err(|_| MediaError::Internal("media plane stopped".into()))?;
        let device = device
            .await
            .map_err(|_| MediaError::Internal("media plane stopped".into()))?;
        Ok((device, Connection(connection)))
    }

    /// The connection ended. After `leave` the device's media ends at once; otherwise it is
    /// kept for [`RECONNECT_GRACE`] so that the SDK's automatic reconnect can resume it.
    pub fn disconnect(&self, connection: Connection, device: DeviceId, left: bool) {
        let _ = self.commands.send(Command::Disconnect {
            connection: connection.0,
            device,
            left,
        });
    }

    pub async fn publish_offer(
        &self,
        device: DeviceId,
        sdp: String,
        metadata: PublishMetadata,
    ) -> Result<PublishAnswer, MediaError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::PublishOffer {
                device,
                sdp,
                metadata,
                reply,
            })
            .map_err(|_| MediaError::Internal("media plane stopped".into()))?;
        answer
            .await
            .map_err(|_| MediaError::Internal("media plane stopped".into()))?
    }

    pub async fn subscribe_answer(&self, device: DeviceId, sdp: String) -> Result<(), MediaError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::SubscribeAnswer { device, sdp, reply })
            .map_err(|_| MediaError::Internal("media plane stopped".into()))?;
        answer
            .await
            .map_err(|_| MediaError::Internal("media plane stopped".into()))?
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

/// Starts the driver on `socket`; it runs until every handle is dropped.
pub fn spawn(
    config: EngineConfig,
    socket: UdpSocket,
    control: Control,
) -> std::io::Result<MediaHandle> {
    let local_addr = socket.local_addr()?;
    let (commands, rx) = mpsc::unbounded_channel();
    let events = control.watch();
    tokio::spawn(run(Engine::new(config), socket, rx, events, control));
    Ok(MediaHandle {
        commands,
        next_device: Arc::new(AtomicU64::new(1)),
        local_addr,
    })
}

struct DeviceEntry {
    participant: ParticipantId,
    unique_id: String,
    /// The connection currently attached, and where its notices go.
    connection: Option<(u64, mpsc::UnboundedSender<DeviceNotice>)>,
    /// Detached without `leave`: removed at this time unless a connection resumes it.
    expires: Option<Instant>,
}

impl DeviceEntry {
    fn notify(&self, notice: DeviceNotice) {
        if let Some((_, tx)) = &self.connection {
            let _ = tx.send(notice);
        }
    }
}

async fn run(
    mut engine: Engine,
    socket: UdpSocket,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut control_events: broadcast::Receiver<ControlEvent>,
    control: Control,
) {
    let mut devices: HashMap<DeviceId, DeviceEntry> = HashMap::new();
    let mut accounts: HashMap<ParticipantId, AccountId> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    loop {
        let expiry = devices.values().filter_map(|d| d.expires).min();
        let deadline = engine
            .poll_timeout()
            .into_iter()
            .chain(expiry)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, source)) => {
                    let now = Instant::now();
                    engine.handle_receive(source, &buf[..n], now);
                    // Take what else is already queued before going round the loop again.
                    for _ in 0..RECEIVE_BATCH {
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, source)) => engine.handle_receive(source, &buf[..n], now),
                            Err(_) => break,
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "media socket receive error"),
            },
            command = commands.recv() => {
                let Some(command) = command else { break };
                if let Command::Connect { account, participant, .. } = &command {
                    accounts.insert(*participant, account.clone());
                }
                handle_command(&mut engine, &mut devices, command);
            }
            event = control_events.recv() => match event {
                Ok(ControlEvent::Routes(update)) => engine.apply_routes(update.session, &update.diff, Instant::now()),
                Ok(ControlEvent::ParticipantDeleted(participant)) => {
                    accounts.remove(&participant);
                    let gone: Vec<DeviceId> = devices.iter().filter(|(_, d)| d.participant == participant).map(|(id, _)| *id).collect();
                    for device in gone {
                        engine.remove_device(device, Instant::now());
                        if let Some(d) = devices.remove(&device) {
                            d.notify(DeviceNotice::Close("participant deleted"));
                        }
                    }
                }
                Ok(ControlEvent::Lifecycle(_)) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // Missed diffs: start again from control's current tables. Diffs still
                    // queued after this are replayed in order on top, which converges.
                    tracing::warn!(missed = n, "media plane fell behind control; resynchronizing routes");
                    engine.set_all_routes(&control.tables_snapshot(), Instant::now());
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                let expired: Vec<DeviceId> = devices.iter().filter(|(_, d)| d.expires.is_some_and(|t| t <= now)).map(|(id, _)| *id).collect();
                for device in expired {
                    devices.remove(&device);
                    engine.remove_device(device, now);
                }
                engine.handle_timeout(now);
            }
        }
        while let Some(t) = engine.poll_transmit() {
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
        while let Some(event) = engine.poll_event() {
            match event {
                EngineEvent::SubscribeOffer { device, offer } => {
                    if let Some(d) = devices.get(&device) {
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
                    let Some(account) = accounts.get(&participant).cloned() else {
                        continue;
                    };
                    let control = control.clone();
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
            }
        }
    }
}

fn handle_command(
    engine: &mut Engine,
    devices: &mut HashMap<DeviceId, DeviceEntry>,
    command: Command,
) {
    let now = Instant::now();
    match command {
        Command::Connect {
            connection,
            participant,
            permissions,
            unique_id,
            notices,
            reply,
            ..
        } => {
            let existing = devices
                .iter()
                .find(|(_, d)| d.participant == participant)
                .map(|(id, _)| *id);
            if let Some(id) = existing {
                let Some(entry) = devices.get_mut(&id) else {
                    return;
                };
                if !unique_id.is_empty() && entry.unique_id == unique_id {
                    // The same SDK instance reconnecting: resume its device and media.
                    entry.notify(DeviceNotice::Close("replaced by a newer connection"));
                    entry.connection = Some((connection, notices));
                    entry.expires = None;
                    if let Some(offer) = engine.pending_offer(id) {
                        entry.notify(DeviceNotice::Offer(offer));
                    }
                    let _ = reply.send(id);
                    return;
                }
            }
            let device = DeviceId(connection);
            if let Some(old) = engine.add_device(device, participant, permissions, now) {
                if let Some(d) = devices.remove(&old) {
                    d.notify(DeviceNotice::Close("replaced by a newer connection"));
                }
            }
            devices.insert(
                device,
                DeviceEntry {
                    participant,
                    unique_id,
                    connection: Some((connection, notices)),
                    expires: None,
                },
            );
            let _ = reply.send(device);
        }
        Command::Disconnect {
            connection,
            device,
            left,
        } => {
            let Some(entry) = devices.get_mut(&device) else {
                return;
            };
            if entry.connection.as_ref().map(|(c, _)| *c) != Some(connection) {
                return; // a superseded connection
            }
            if left {
                devices.remove(&device);
                engine.remove_device(device, now);
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
            let _ = reply.send(engine.handle_publish_offer(device, &sdp, &metadata, now));
        }
        Command::SubscribeAnswer { device, sdp, reply } => {
            let _ = reply.send(engine.handle_subscribe_answer(device, &sdp, now));
        }
    }
}
