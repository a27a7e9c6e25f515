//! The SIP driver. One task owns the SIP sockets (UDP and TCP on `--sip-listen`) and the sans-IO
//! [`Endpoint`] of `patchbay-sip`: signalling and admission. Each answered call gets its own
//! task owning its RTP socket and its [`PhoneMedia`] (jitter buffer, codecs, mixer), so calls'
//! audio runs on every core. A call is a *local device* of the media plane:
//! the phone's audio is published as one Opus stream, and the Opus frames of exactly the audio
//! tracks its participant is subscribed to come back, are decoded and mixed into the G.711
//! stream the phone hears.
//!
//! A call outlives its participant's session membership (reference §4.1): removed from its
//! session, the phone stays on the line and hears silence or the hold tone
//! ([`SipSettings::hold_tone_hz`]); added to another session, its device is wired there (the
//! media plane moves it to that session's shard, downlink included) without a new INVITE.
//! Only deleting the participant hangs up (the media plane closes its device). A call ends
//! by itself when its leg is dead: no RTP or RTCP for [`SipSettings::rtp_timeout`] from a phone
//! that should be sending, or a session timer (RFC 4028) not refreshed in time.
//!
//! Admission (reference §4.2): the participant token from `User-To-User` is verified like a
//! browser's; refusals carry a precise status and a `Reason` header: no, bad or expired token
//! 403; deleted participant 404; participant in no session 480; already connected 486; no
//! common codec 488. When several processes share the database, a call for a session hosted
//! by another process is sent on there as a stateless proxy would (RFC 3261 §16.11, see
//! `patchbay_sip::endpoint::Endpoint::forward`), or, with [`SipSettings::proxy_elsewhere`]
//! off, redirected there: 302 with `Contact: <sip:HOST:PORT>` (its SIP listener; issue 20).
//! Every call end is logged with its [`CallEnd`] and counted.
#![allow(clippy::disallowed_methods)] // the runtime owns the clock, the tasks and the sockets' timers

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use patchbay_sip::endpoint::{CallEnd, CallEvent, CallId, Endpoint, EndpointConfig};
use patchbay_sip::latch::{Admission, RtpLatch};
use patchbay_sip::liveness::MediaWatch;
use patchbay_sip::mixer::SourceId;
use patchbay_sip::phone::{PhoneConfig, PhoneMedia};
use patchbay_sip::sdp::{self, AnswerParams, Negotiated};
use patchbay_sip::transport::{ConnectionId, StreamFramer, StreamItem, Transport};
use patchbay_sip::uui;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};

use crate::control::port::{LocalConnection, LocalDownlink, LocalUplink};
use crate::control::{AdmittedPhone, DeviceControl, LostCalls, PhoneJoined, PhoneRefusal};
use crate::domain::{
    AccountId, ConnectionQuality, MediaKind, ParticipantId, SessionId, StreamAlias, StreamId,
    TrackQuality,
};
use crate::media::DeviceId;
use crate::runtime::listen::{Acceptor, Activity, ConnectionLimits, Gate, Head as ConnectionHead};
use crate::runtime::phone_records::{self, CallOwner, PhoneRecord, RecordChange, StoredCall};

/// Settings of the SIP bridge.
#[derive(Debug, Clone)]
pub struct SipSettings {
    /// The address written into SDP answers (where phones send RTP).
    pub media_ip: IpAddr,
    /// RTP ports, inclusive; `(0, 0)`: any free port.
    pub rtp_ports: (u16, u16),
    /// The alias of the audio stream a phone publishes.
    pub stream_alias: Option<StreamAlias>,
    /// Timeouts and caps of SIP over TCP.
    pub tcp: SipTcpSettings,
    /// The tone (Hz) a call hears while its participant is in no session; 0: silence.
    pub hold_tone_hz: u32,
    /// A phone that should be sending and sent no RTP or RTCP for this long is hung up
    /// (zero: never).
    pub rtp_timeout: Duration,
    /// A graceful stop leaves up the calls the next process can take over (else: BYE).
    pub keep_calls_on_stop: bool,
    /// How long a call left up by a process that stopped waits for that process's successor
    /// (on the same SIP address) before this process ends it (`None`: forever).
    pub successor_wait: Option<Duration>,
    /// An INVITE for a session hosted by another process is sent on to it (a stateless
    /// proxy); else it is answered 302 with the host's address.
    pub proxy_elsewhere: bool,
}

/// Timeouts and caps of SIP over TCP.
#[derive(Debug, Clone, Copy)]
pub struct SipTcpSettings {
    /// How long a message may take from its first byte (the first message: from the
    /// connection's start) before the connection is closed.
    pub head_timeout: Duration,
    /// How long a connection may carry no bytes either way before it is closed.
    pub idle_timeout: Duration,
    /// Caps on concurrent connections, per listener and per source address.
    pub limits: ConnectionLimits,
}

/// The clock of telephone-event payloads from the media plane (see `media::engine`).
const TELEPHONE_EVENT_CLOCK: u32 = 48_000;

/// A handle on the running bridge.
#[derive(Clone)]
pub struct SipHandle {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    stopped: watch::Receiver<bool>,
}

impl SipHandle {
    /// The address the SIP sockets are bound to (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sends BYE to every call; the driver ends once they are answered (or after a while).
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Completes when the driver has ended (after [`SipHandle::shutdown`]: every call hung up).
    pub async fn stopped(&self) {
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|s| *s).await;
    }
}

/// How long shutdown waits for the answers to its BYEs.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The bridge's side of [`LostCalls`]: the calls of dead processes reach its loop.
struct LostCallsHere(mpsc::UnboundedSender<Message>);

impl LostCalls for LostCallsHere {
    fn hang_up(&self, participant: ParticipantId, record: String) {
        let _ = self.0.send(Message::HangUpLost {
            participant,
            record,
        });
    }
}

/// The SIP sockets, bound and not yet served: the process learns where it is reached
/// ([`Bound::local_addr`]) and records it before [`Bound::start`], since the driver's first act
/// is to take over the calls stored under that address.
pub struct Bound {
    udp: UdpSocket,
    tcp: TcpListener,
    local_addr: SocketAddr,
}

/// The bridge's side of [`phone_records::Orphans`]: the calls nobody took over reach its loop.
struct OrphansHere(mpsc::UnboundedSender<Message>);

impl phone_records::Orphans for OrphansHere {
    fn end(&self, call: StoredCall) -> bool {
        self.0.send(Message::EndOrphan(Box::new(call))).is_ok()
    }
}

/// Binds UDP and TCP on `listen`.
pub async fn bind(listen: SocketAddr) -> std::io::Result<Bound> {
    let (udp, tcp) = bind_both(listen).await?;
    let local_addr = udp.local_addr()?;
    Ok(Bound {
        udp,
        tcp,
        local_addr,
    })
}

impl Bound {
    /// The address the SIP sockets are bound to (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts the driver: it takes over the stored calls whose owner is this process's
    /// address as [`crate::control::Control::address`] says now, then serves.
    pub fn start(self, settings: SipSettings, devices: DeviceControl) -> SipHandle {
        let Bound {
            udp,
            tcp,
            local_addr,
        } = self;
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        devices
            .control()
            .attach_lost_calls(Arc::new(LostCallsHere(tx.clone())));
        tokio::spawn(accept_tcp(tcp, settings.tcp, tx.clone()));
        if let Some(wait) = settings.successor_wait {
            tokio::spawn(phone_records::sweep_orphans(
                devices.control().clone(),
                wait,
                OrphansHere(tx.clone()),
            ));
        }
        let advertised = SocketAddr::new(
            if local_addr.ip().is_unspecified() {
                settings.media_ip
            } else {
                local_addr.ip()
            },
            local_addr.port(),
        );
        let bridge = Bridge {
            endpoint: Endpoint::new(EndpointConfig::new(advertised)),
            udp: Arc::new(udp),
            settings,
            devices: devices.clone(),
            tx,
            calls: HashMap::new(),
            tcp: HashMap::new(),
            ends: HashMap::new(),
            next_port: 0,
            records: phone_records::spawn_writer(devices.control().clone()),
            name_tag: format!("{:06x}", rand::random::<u32>() & 0x00ff_ffff),
            left_up: HashMap::new(),
        };
        let (stopped_tx, stopped) = watch::channel(false);
        tokio::spawn(async move {
            bridge.run(rx, stop_rx).await;
            let _ = stopped_tx.send(true);
        });
        SipHandle {
            local_addr,
            stop,
            stopped,
        }
    }
}

/// UDP and TCP on the same port. With port 0 the port UDP got may be taken for TCP: try again.
async fn bind_both(listen: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut attempts = 0;
    loop {
        let udp = UdpSocket::bind(listen).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if listen.port() == 0 && attempts < 20 => {
                attempts += 1;
                tracing::debug!(error = %e, "SIP port taken for TCP; trying another");
            }
            Err(e) => return Err(e),
        }
    }
}

/// What the driver's task receives besides the UDP socket: from its listeners, its calls'
/// tasks and admissions.
enum Message {
    TcpOpen {
        conn: ConnectionId,
        writer: mpsc::UnboundedSender<Vec<u8>>,
    },
    TcpData {
        conn: ConnectionId,
        source: SocketAddr,
        data: Vec<u8>,
    },
    TcpClosed(ConnectionId),
    Admitted(CallId, Result<Box<Admitted>, Refusal>),
    /// The call's device was closed (its participant was deleted): hang up.
    Hangup(CallId),
    /// Nothing arrived from the phone for the RTP timeout: hang up, its device goes now.
    Dead(CallId),
    /// A call left up by a process that stopped, which no successor took over and this
    /// process took (its record is forgotten): its BYE and its end.
    EndOrphan(Box<StoredCall>),
    /// A call of a process that died, whose loss this process claimed: its BYE, in that
    /// process's dialog (its stored record).
    HangUpLost {
        participant: ParticipantId,
        record: String,
    },
    /// The session the call's participant is in now (`None`: in none), by the call's
    /// `lookup`th lookup.
    Membership {
        call: CallId,
        session: Option<SessionId>,
        lookup: u64,
    },
    /// A session's forwarding table changed (`names_call`: the change names the call's
    /// participant): the call's session may have changed.
    Routes {
        call: CallId,
        session: SessionId,
        names_call: bool,
    },
}

struct Refusal {
    code: u16,
    reason: String,
    /// With 302: where the caller dials again (`host:port`).
    redirect: Option<String>,
}

impl Refusal {
    fn new(code: u16, reason: impl Into<String>) -> Refusal {
        Refusal {
            code,
            reason: reason.into(),
            redirect: None,
        }
    }
}

struct Admitted {
    account: AccountId,
    participant: ParticipantId,
    session: SessionId,
    /// Its device name (its `onConnect` and `onCallAnswered` are recorded under it).
    name: String,
    connection: LocalConnection,
    rtp: Arc<UdpSocket>,
    negotiated: Negotiated,
    stream: StreamId,
    /// The `o=` session id of its answer (fixed for the dialog).
    sdp_session: u64,
}

/// A call as the signalling task sees it; its audio runs in its own task ([`CallMedia`]).
struct Call {
    participant: ParticipantId,
    account: AccountId,
    /// The session its participant is in (`None`: in none, the call hears the hold tone).
    session: Option<SessionId>,
    device: DeviceId,
    /// The port of its RTP socket (for answers to re-offers).
    rtp_port: u16,
    /// The `o=` session id and version of its last answer: a re-offer's answer keeps the id
    /// and raises the version by one (RFC 3264 §8). A call taken over from a previous
    /// process starts a new id (the record does not keep it).
    sdp_origin: (u64, u64),
    media: mpsc::UnboundedSender<CallCommand>,
    task: tokio::task::JoinHandle<()>,
    /// Its device id in webhooks and the live state (`sip-N`; kept across a restart).
    name: String,
    /// The stream it publishes.
    stream: StreamId,
    /// Its codec settings.
    phone: PhoneConfig,
    /// Where its RTP goes (`None`: on hold), and whether the phone is meant to send.
    remote: Option<SocketAddr>,
    phone_sends: bool,
    /// Its record is in the store: the next process can take it over.
    stored: bool,
    /// Session lookups started for the call: only the latest one's answer is taken.
    lookups: u64,
}

/// What the signalling task tells a call's audio task.
enum CallCommand {
    /// The direction changed (re-INVITE).
    Remote {
        /// Where to send RTP now (`None`: on hold).
        to: Option<SocketAddr>,
        /// Whether the phone is meant to send (else its silence is not a dead leg).
        phone_sends: bool,
    },
    /// The tone to play while nobody is heard (0: silence).
    HoldTone(u32),
    /// The call is over (how, for the log): log the stats and stop.
    End(String),
}

struct Bridge {
    endpoint: Endpoint,
    udp: Arc<UdpSocket>,
    settings: SipSettings,
    devices: DeviceControl,
    tx: mpsc::UnboundedSender<Message>,
    calls: HashMap<CallId, Call>,
    tcp: HashMap<ConnectionId, mpsc::UnboundedSender<Vec<u8>>>,
    /// Calls ended, by how.
    ends: HashMap<&'static str, u64>,
    next_port: u32,
    /// Changes to the stored calls, written in order (`runtime::phone_records`).
    records: mpsc::UnboundedSender<RecordChange>,
    /// Random per process: call names (`sip-TAG-N`) never repeat across processes, whose
    /// call numbers all start at 1.
    name_tag: String,
    /// Calls a graceful stop left up for the next process (participant, name), until it exits.
    left_up: HashMap<CallId, (ParticipantId, String)>,
}

impl Bridge {
    async fn run(
        mut self,
        mut messages: mpsc::UnboundedReceiver<Message>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut buf = vec![0u8; 65_535];
        let mut stopping: Option<Instant> = None;
        self.resume_stored().await;
        self.flush().await;
        loop {
            let deadline = self
                .endpoint
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            let udp = self.udp.clone();
            tokio::select! {
                received = udp.recv_from(&mut buf) => match received {
                    Ok((n, source)) => self.endpoint.handle_datagram(Instant::now(), source, &buf[..n]),
                    Err(e) => tracing::debug!(error = %e, "SIP socket receive error"),
                },
                message = messages.recv() => match message {
                    Some(m) => self.handle(m),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => self.endpoint.handle_timeout(Instant::now()),
                changed = stop.changed(), if stopping.is_none() => {
                    if changed.is_err() || *stop.borrow() {
                        let now = Instant::now();
                        stopping = Some(now + SHUTDOWN_GRACE);
                        let calls: Vec<CallId> = self.calls.keys().copied().collect();
                        tracing::info!(calls = calls.len(), "SIP bridge stopping: hanging up every call the next process cannot take over");
                        let mut saving = Vec::new();
                        for call in calls {
                            let keep = self.settings.keep_calls_on_stop
                                && self.calls.get(&call).is_some_and(|c| c.stored);
                            // A call is left up only once its latest record is written.
                            let (ack, written) = tokio::sync::oneshot::channel();
                            if keep && self.store_call(call, Some(ack)) {
                                saving.push((call, written));
                            } else {
                                let _ = self.endpoint.hangup(call, now);
                            }
                        }
                        for (call, written) in saving {
                            match tokio::time::timeout(SHUTDOWN_GRACE, written).await {
                                Ok(Ok(true)) => self.leave_up(call),
                                _ => {
                                    tracing::warn!(call = %call, "cannot store a call for the next process: hanging up");
                                    let _ = self.endpoint.hangup(call, Instant::now());
                                }
                            }
                        }
                    }
                }
            }
            self.flush().await;
            if let Some(limit) = stopping {
                if self.calls.is_empty() || Instant::now() >= limit {
                    break;
                }
            }
        }
        for (_, call) in self.calls.drain() {
            self.devices.phone_dropped(call.device);
            call.task.abort();
            metrics::counter!("patchbay_sip_calls_ended_total", "reason" => "shutdown")
                .increment(1);
        }
        metrics::gauge!("patchbay_phone_calls").set(0.0);
    }

    fn handle(&mut self, message: Message) {
        let now = Instant::now();
        match message {
            Message::TcpOpen { conn, writer } => {
                self.tcp.insert(conn, writer);
            }
            Message::TcpData { conn, source, data } => {
                self.endpoint.handle_stream(now, conn, source, &data)
            }
            Message::TcpClosed(conn) => {
                self.tcp.remove(&conn);
                self.endpoint.connection_closed(conn);
            }
            Message::Admitted(call, Err(refusal)) => {
                let host = refusal.redirect.as_deref().map(str::parse::<SocketAddr>);
                if let (Some(Ok(host)), true) = (host, self.settings.proxy_elsewhere) {
                    tracing::info!(call = %call, %host, "SIP call forwarded to the process that hosts its session");
                    if self.endpoint.forward(call, host, now).is_ok() {
                        metrics::counter!("patchbay_sip_calls_forwarded_total").increment(1);
                    }
                    return;
                }
                tracing::info!(call = %call, code = refusal.code, reason = %refusal.reason, "SIP call refused");
                let _ = match &refusal.redirect {
                    Some(target) => self.endpoint.redirect(call, target, &refusal.reason, now),
                    None => self
                        .endpoint
                        .reject(call, refusal.code, &refusal.reason, now),
                };
            }
            Message::Admitted(call, Ok(admitted)) => self.start_call(call, *admitted, now),
            Message::Hangup(call) => {
                let _ = self.endpoint.hangup(call, now);
            }
            Message::HangUpLost {
                participant,
                record,
            } => match PhoneRecord::parse(participant, &record) {
                Ok(lost) => {
                    let call = self.endpoint.restore(lost.record.dialog, now);
                    tracing::info!(call = %call, %participant, name = %lost.record.name, "a call of a process that died: hanging up");
                    let _ = self.endpoint.hangup(call, now);
                }
                Err(why) => {
                    tracing::warn!(%participant, %why, "a call of a process that died cannot be read: no BYE");
                }
            },
            Message::EndOrphan(orphan) => {
                let call = self.endpoint.restore(orphan.record.dialog.clone(), now);
                tracing::info!(
                    call = %call,
                    participant = %orphan.participant,
                    name = %orphan.record.name,
                    owner = ?orphan.record.owner,
                    "a phone call left up by a process that stopped was not taken over: hanging up"
                );
                let _ = self.endpoint.hangup(call, now);
                self.devices
                    .phone_lost(orphan.participant, orphan.record.name.clone());
                metrics::counter!("patchbay_sip_calls_ended_total", "reason" => "no_successor")
                    .increment(1);
            }
            Message::Dead(call) => {
                tracing::info!(call = %call, timeout = ?self.settings.rtp_timeout, "no RTP from the phone: hanging up");
                let _ = self.endpoint.hangup(call, now);
                // The BYE will not be answered by a dead phone: the device goes now, so that
                // the participant may dial again at once.
                self.finish_call(call, "rtp_timeout", "no RTP from the phone".into(), false);
            }
            Message::Routes {
                call,
                session,
                names_call,
            } => {
                // A change of the call's session, or naming its participant, or any change
                // while it is in none, may have moved it. A store hiccup changes nothing.
                let concerned = self
                    .calls
                    .get(&call)
                    .is_some_and(|c| names_call || c.session.is_none_or(|s| s == session));
                if concerned {
                    self.check_membership(call);
                }
            }
            Message::Membership {
                call,
                session,
                lookup,
            } => {
                let hold_tone = self.settings.hold_tone_hz;
                let Some(c) = self.calls.get_mut(&call).filter(|c| c.lookups == lookup) else {
                    return;
                };
                if c.session != session {
                    tracing::info!(call = %call, participant = %c.participant, from = ?c.session, to = ?session, "phone moved");
                    c.session = session;
                    let tone = if session.is_none() { hold_tone } else { 0 };
                    let _ = c.media.send(CallCommand::HoldTone(tone));
                }
            }
        }
    }

    fn start_call(&mut self, call: CallId, admitted: Admitted, now: Instant) {
        let Admitted {
            account,
            participant,
            session,
            name,
            connection,
            rtp,
            negotiated,
            stream,
            sdp_session,
        } = admitted;
        let LocalConnection {
            device,
            uplink,
            downlink,
        } = connection;
        let ssrc = rand::random::<u32>();
        let config = PhoneConfig::from_negotiated(&negotiated, ssrc);
        let phone = match PhoneMedia::new(config) {
            Ok(p) => p,
            Err(e) => {
                // Its onConnect and onCallAnswered are recorded: its end is too.
                self.devices.phone_ended(device, participant, name, false);
                let _ = self.endpoint.reject(call, 500, &format!("media: {e}"), now);
                return;
            }
        };
        if self
            .endpoint
            .accept(call, &negotiated.answer_sdp, now)
            .is_err()
        {
            // Cancelled while it was being admitted.
            self.devices.phone_ended(device, participant, name, true);
            return;
        }
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let rtp_port = rtp.local_addr().map(|a| a.port()).unwrap_or(0);
        let audio = CallMedia {
            call,
            participant,
            uplink,
            phone,
            rtp,
            watch: MediaWatch::new(
                self.settings.rtp_timeout,
                negotiated.direction.receives(),
                now,
            ),
            latch: RtpLatch::new(),
            remote: negotiated.remote.filter(|_| negotiated.direction.sends()),
            ptime: Duration::from_millis(u64::from(negotiated.ptime_ms)),
            sources: Default::default(),
            devices: self.devices.clone(),
            bridge: self.tx.clone(),
            underruns: UnderrunMeter::new(Instant::now()),
            leg: LegMeter::new(Instant::now()),
        };
        let task = tokio::spawn(audio.run(downlink, commands_rx));
        tracing::info!(call = %call, %participant, "phone joined");
        self.calls.insert(
            call,
            Call {
                participant,
                account,
                session: Some(session),
                device,
                rtp_port,
                sdp_origin: (sdp_session, sdp_session),
                media: commands,
                task,
                name,
                stream,
                phone: config,
                remote: negotiated.remote.filter(|_| negotiated.direction.sends()),
                phone_sends: negotiated.direction.receives(),
                stored: false,
                lookups: 0,
            },
        );
        // Its session may have changed between admission and the media plane taking the
        // device (changes before that reached no device of the call).
        self.check_membership(call);
        metrics::counter!("patchbay_sip_calls_started_total").increment(1);
        metrics::gauge!("patchbay_phone_calls").set(self.calls.len() as f64);
    }

    /// Looks up, in a task, the session of `call`'s participant (a store hiccup changes
    /// nothing). Lookups may finish out of order: only the answer of the latest one started,
    /// which read the store after the latest change, is taken.
    fn check_membership(&mut self, call: CallId) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        c.lookups += 1;
        let (account, participant, lookup) = (c.account.clone(), c.participant, c.lookups);
        let devices = self.devices.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            if let Some(session) = devices.phone_session(&account, participant).await {
                let _ = tx.send(Message::Membership {
                    call,
                    session,
                    lookup,
                });
            }
        });
    }

    /// Sends what the endpoint produced and acts on its events, until neither is left:
    /// acting on an event (answering a re-offer, hanging up) produces more to send.
    async fn flush(&mut self) {
        loop {
            self.send_transmits().await;
            if !self.handle_events() {
                return;
            }
        }
    }

    async fn send_transmits(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            match t.transport {
                Transport::Udp => {
                    if let Err(e) = self.udp.send_to(&t.bytes, t.destination).await {
                        tracing::debug!(error = %e, to = %t.destination, "SIP send failed");
                    }
                }
                Transport::Tcp(conn) => {
                    if let Some(w) = self.tcp.get(&conn) {
                        let _ = w.send(t.bytes);
                    }
                }
            }
        }
    }

    /// Handles the endpoint's pending events; false if there were none.
    fn handle_events(&mut self) -> bool {
        let now = Instant::now();
        let mut any = false;
        while let Some(event) = self.endpoint.poll_event() {
            any = true;
            match event {
                CallEvent::Incoming {
                    call,
                    source,
                    user_to_user,
                    sdp_offer,
                    sip_call_id,
                    ..
                } => {
                    let correlation = uui::correlation_id(&user_to_user);
                    tracing::info!(call = %call, %source, sip_call_id, ?correlation, "SIP call arriving");
                    let port = self.next_rtp_port();
                    tokio::spawn(admit(
                        call,
                        format!("sip-{}-{call}", self.name_tag),
                        user_to_user,
                        sdp_offer,
                        self.settings.clone(),
                        port,
                        self.devices.clone(),
                        self.tx.clone(),
                    ));
                }
                CallEvent::Established { call, .. } => {
                    tracing::debug!(call = %call, "SIP call established");
                    self.store_call(call, None);
                }
                CallEvent::Reoffer { call, sdp_offer } => {
                    let Some(c) = self.calls.get_mut(&call) else {
                        let _ = self
                            .endpoint
                            .answer_update(call, Err((481, "no such call")), now);
                        continue;
                    };
                    c.sdp_origin.1 = c.sdp_origin.1.wrapping_add(1);
                    let params = answer_params(&self.settings, c.rtp_port, c.sdp_origin);
                    match sdp::answer(&sdp_offer, &params) {
                        Ok(n) => {
                            c.remote = n.remote.filter(|_| n.direction.sends());
                            c.phone_sends = n.direction.receives();
                            let _ = c.media.send(CallCommand::Remote {
                                to: c.remote,
                                phone_sends: c.phone_sends,
                            });
                            let stored = c.stored;
                            let _ = self.endpoint.answer_update(call, Ok(&n.answer_sdp), now);
                            if stored {
                                self.store_call(call, None);
                            }
                        }
                        Err(e) => {
                            let _ = self.endpoint.answer_update(
                                call,
                                Err((e.sip_status(), &e.to_string())),
                                now,
                            );
                        }
                    }
                }
                CallEvent::Ended { call, end } => self.end_call(call, end),
                CallEvent::CloseConnection { conn } => {
                    self.tcp.remove(&conn);
                }
            }
        }
        any
    }

    fn end_call(&mut self, call: CallId, end: CallEnd) {
        if let Some((participant, name)) = self.left_up.remove(&call) {
            // Ended while the stop finishes (the phone hung up): not the next process's.
            tracing::info!(call = %call, end = %end, "a call left up ended before the stop");
            let _ = self
                .records
                .send(RecordChange::Forget(participant, name.clone()));
            self.devices.phone_lost(participant, name);
            return;
        }
        let left = matches!(end, CallEnd::RemoteBye);
        self.finish_call(call, end.as_str(), end.to_string(), left);
    }

    /// The call is over (`how` counts it; `left`: the phone hung up): its device goes.
    fn finish_call(&mut self, call: CallId, how: &'static str, why: String, left: bool) {
        let Some(c) = self.calls.remove(&call) else {
            // Not answered yet, or its device already went (a dead leg's BYE ending).
            tracing::info!(call = %call, end = %why, "SIP call ended");
            return;
        };
        *self.ends.entry(how).or_default() += 1;
        metrics::counter!("patchbay_sip_calls_ended_total", "reason" => how).increment(1);
        metrics::gauge!("patchbay_phone_calls").set(self.calls.len() as f64);
        // The audio task logs the call's stats and stops.
        let _ = c.media.send(CallCommand::End(why));
        tracing::debug!(call = %call, ends = ?self.ends, "calls ended so far, by how");
        if c.stored {
            let _ = self
                .records
                .send(RecordChange::Forget(c.participant, c.name.clone()));
        }
        self.devices
            .phone_ended(c.device, c.participant, c.name, left);
    }

    /// Stores what the next process needs to take `call` over (an established call over
    /// UDP; a call over TCP ends with its connection, and with this process); `ack` learns
    /// whether it was written. Whether a record was queued.
    fn store_call(
        &mut self,
        call: CallId,
        ack: Option<tokio::sync::oneshot::Sender<bool>>,
    ) -> bool {
        let Some(dialog) = self.endpoint.dialog(call) else {
            return false;
        };
        let Some(c) = self.calls.get_mut(&call) else {
            return false;
        };
        c.stored = true;
        let record = PhoneRecord {
            account: c.account.as_str().to_owned(),
            name: c.name.clone(),
            stream: c.stream.as_str().to_owned(),
            dialog,
            rtp_port: c.rtp_port,
            remote: c.remote,
            phone_sends: c.phone_sends,
            codec: PhoneRecord::law_name(c.phone.codec).to_owned(),
            payload_type: c.phone.payload_type,
            dtmf_pt: c.phone.dtmf_pt,
            ptime_ms: c.phone.ptime_ms,
            owner: Some(CallOwner {
                sip: self.devices.control().address().sip,
            }),
        };
        self.records
            .send(RecordChange::Save(c.participant, Box::new(record), ack))
            .is_ok()
    }

    /// A graceful stop leaves a stored call up, for the next process on the same ports and
    /// database: no BYE; its media stops with this process and its record stays.
    fn leave_up(&mut self, call: CallId) {
        let Some(c) = self.calls.remove(&call) else {
            return;
        };
        tracing::info!(call = %call, participant = %c.participant, "phone call left up for the next process");
        self.devices.phone_left_up(c.device, c.participant, &c.name);
        self.left_up.insert(call, (c.participant, c.name.clone()));
        let _ = c
            .media
            .send(CallCommand::End("left up for the next process".into()));
        metrics::gauge!("patchbay_phone_calls").set(self.calls.len() as f64);
    }

    /// Takes over the calls a previous process on this SIP address stored (issue 19): each
    /// binds its RTP port again and its dialog goes on, with no new INVITE; a call that cannot
    /// (its port is taken, its participant is gone, its record unreadable) gets a BYE instead
    /// of silence. Calls another process answered are left alone ([`PhoneRecord::belongs_to`]).
    async fn resume_stored(&mut self) {
        let stored = match self.devices.control().phone_calls().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the stored phone calls: none is taken over");
                return;
            }
        };
        let here = self.devices.control().address().sip;
        for stored in stored {
            let (participant, name) = (stored.participant, stored.call.clone());
            match PhoneRecord::parse(participant, &stored.record) {
                Ok(call) if !call.record.belongs_to(here.as_deref()) => {
                    // Another process's call (issue 20): alive, it goes on there; dead, the
                    // process that claims its loss ends it; stopped, a process ends it once
                    // its successor has had its time (`phone_records::sweep_orphans`).
                    tracing::debug!(%participant, call = %name, owner = ?call.record.owner, "a stored phone call of another process: left alone");
                }
                Ok(call) => {
                    // Taken as read, unless a process that found it orphaned ended it first.
                    let taken = self
                        .devices
                        .control()
                        .take_phone_call(&stored, super::epoch_ms())
                        .await;
                    match taken {
                        Ok(false) => {
                            tracing::info!(%participant, call = %name, "a stored phone call was ended by another process meanwhile: not taken over")
                        }
                        Ok(true) => self.resume_call(call).await,
                        Err(e) => {
                            tracing::warn!(%participant, call = %name, error = %e, "cannot mark a stored phone call taken: taking it over anyway");
                            self.resume_call(call).await
                        }
                    }
                }
                Err(why) => {
                    tracing::warn!(%participant, call = %name, %why, "a stored phone call cannot be read: forgotten");
                    let _ = self.records.send(RecordChange::Forget(participant, name));
                }
            }
        }
    }

    async fn resume_call(&mut self, stored: StoredCall) {
        let now = Instant::now();
        let StoredCall {
            participant,
            account,
            record,
            stream,
            phone: config,
        } = stored;
        let name = record.name.clone();
        // This process accounts for the call from here on, whatever becomes of it.
        self.devices.control().resumes_foreign(participant, &name);
        let call = self.endpoint.restore(record.dialog.clone(), now);
        let taken = match UdpSocket::bind((IpAddr::from([0, 0, 0, 0]), record.rtp_port)).await {
            Err(e) => Err(format!("its RTP port {} is taken: {e}", record.rtp_port)),
            Ok(rtp) => match PhoneMedia::new(config) {
                Err(e) => Err(format!("media: {e}")),
                Ok(phone) => match self
                    .devices
                    .resume_phone(
                        &account,
                        participant,
                        stream.clone(),
                        self.settings.stream_alias.clone(),
                    )
                    .await
                {
                    Err(refusal) => Err(refusal.to_string()),
                    Ok(resumed) => Ok((rtp, phone, resumed)),
                },
            },
        };
        let (rtp, phone, resumed) = match taken {
            Ok(t) => t,
            Err(why) => {
                tracing::warn!(call = %call, %participant, %why, "cannot take a phone call over: hanging up");
                let _ = self.endpoint.hangup(call, now);
                let _ = self
                    .records
                    .send(RecordChange::Forget(participant, name.clone()));
                self.devices.phone_lost(participant, name);
                metrics::counter!("patchbay_sip_calls_ended_total", "reason" => "not_resumed")
                    .increment(1);
                return;
            }
        };
        let (commands, commands_rx) = mpsc::unbounded_channel();
        if resumed.session.is_none() {
            let _ = commands.send(CallCommand::HoldTone(self.settings.hold_tone_hz));
        }
        let LocalConnection {
            device,
            uplink,
            downlink,
        } = resumed.connection;
        let audio = CallMedia {
            call,
            participant,
            uplink,
            phone,
            rtp: Arc::new(rtp),
            watch: MediaWatch::new(self.settings.rtp_timeout, record.phone_sends, now),
            latch: RtpLatch::new(),
            remote: record.remote,
            ptime: Duration::from_millis(u64::from(config.ptime_ms)),
            sources: Default::default(),
            devices: self.devices.clone(),
            bridge: self.tx.clone(),
            underruns: UnderrunMeter::new(Instant::now()),
            leg: LegMeter::new(Instant::now()),
        };
        let task = tokio::spawn(audio.run(downlink, commands_rx));
        tracing::info!(call = %call, %participant, name = %name, "phone call taken over from the previous process");
        self.devices.phone_resumed(participant, name.clone());
        self.calls.insert(
            call,
            Call {
                participant,
                account,
                session: resumed.session,
                device,
                rtp_port: record.rtp_port,
                sdp_origin: new_sdp_origin(),
                media: commands,
                task,
                name,
                stream,
                phone: config,
                remote: record.remote,
                phone_sends: record.phone_sends,
                stored: true,
                lookups: 0,
            },
        );
        metrics::gauge!("patchbay_phone_calls").set(self.calls.len() as f64);
    }

    /// The next RTP port to try (0 when any free port will do).
    fn next_rtp_port(&mut self) -> u16 {
        let (low, high) = self.settings.rtp_ports;
        if low == 0 {
            return 0;
        }
        let span = u32::from(high.saturating_sub(low)) + 1;
        let port = u32::from(low) + self.next_port % span;
        self.next_port = self.next_port.wrapping_add(2);
        u16::try_from(port).unwrap_or(low)
    }
}

/// One call's audio, in its own task so that calls use every core: the RTP socket, the
/// frames of the tracks the phone receives, and the phone's clock (one tick per ptime).
struct CallMedia {
    call: CallId,
    participant: ParticipantId,
    /// Where the phone's frames go, straight to its media shard.
    uplink: Box<dyn LocalUplink>,
    phone: PhoneMedia,
    rtp: Arc<UdpSocket>,
    /// Whether the leg is alive (RTP, or RTCP on the RTP port, from the phone).
    watch: MediaWatch,
    /// Which datagrams are the phone's, and where they come from.
    latch: RtpLatch,
    remote: Option<SocketAddr>,
    ptime: Duration,
    /// The downlink sources fed into the mixer so far.
    sources: std::collections::HashSet<u64>,
    devices: DeviceControl,
    bridge: mpsc::UnboundedSender<Message>,
    /// The call's jitter-buffer underruns on their way to the metrics.
    underruns: UnderrunMeter,
    /// The call's RTP leg on its way to the quality view.
    leg: LegMeter,
}

/// The track name of a phone's RTP leg in the quality view (the media plane names the phone's
/// published audio the same).
const PHONE_LEG_MID: &str = "phone";

/// What a call's RTP leg measured, turned once a second (with the underruns) into the quality
/// view's terms (a connection each way, one audio track each) and reported to the media plane.
/// From the phone: packets taken, payload bytes, the fraction of the interval's packets missing
/// at playout (lost, or too late for their turn), and the interarrival jitter (RFC 3550). To
/// the phone: packets and payload bytes sent. Nothing of the phone's own view (it sends no
/// RTCP here): no loss toward it, no round-trip time.
struct LegMeter {
    last: Instant,
    /// Counters at the last report: packets received in time (not late, not duplicates),
    /// packets missing at playout, bytes received, bytes sent.
    at_last: (u64, u64, u64, u64),
}

impl LegMeter {
    fn new(now: Instant) -> LegMeter {
        LegMeter {
            last: now,
            at_last: (0, 0, 0, 0),
        }
    }

    /// The leg's report at `now` from the phone's counters; `alive`: RTP or RTCP still comes.
    fn measure(
        &mut self,
        stats: &patchbay_sip::phone::PhoneStats,
        alive: bool,
        now: Instant,
    ) -> (ConnectionQuality, ConnectionQuality) {
        let secs = now.saturating_duration_since(self.last).as_secs_f64();
        // A late packet's turn was played as missing: it counts once, as missing.
        let useless = stats.late_packets + stats.duplicate_packets;
        let (received, missing) = (
            stats.rtp_received.saturating_sub(useless),
            stats.lost_packets,
        );
        let (r0, m0, b0, s0) = self.at_last;
        let (new_received, new_missing) = (received.saturating_sub(r0), missing.saturating_sub(m0));
        let rate = |bytes: u64, before: u64| {
            (secs > 0.0).then(|| (bytes.saturating_sub(before) as f64 * 8.0 / secs) as u64)
        };
        let expected = new_received + new_missing;
        let track = |packets: u64, bytes: u64, before: u64| TrackQuality {
            mid: PHONE_LEG_MID.to_owned(),
            kind: Some(MediaKind::Audio),
            bitrate_bps: rate(bytes, before),
            bytes,
            packets,
            ..TrackQuality::default()
        };
        let mut from_phone = track(stats.rtp_received, stats.audio_bytes_received, b0);
        from_phone.loss_fraction = (expected > 0).then(|| new_missing as f32 / expected as f32);
        from_phone.jitter_ms = Some(stats.interarrival_jitter_us as f64 / 1000.0);
        let to_phone = track(stats.rtp_sent, stats.bytes_sent, s0);
        self.at_last = (
            received,
            missing,
            stats.audio_bytes_received,
            stats.bytes_sent,
        );
        self.last = now;
        // The media plane stamps the report's age when it is read.
        let connection = |t: TrackQuality| {
            let mut c = ConnectionQuality {
                connected: alive,
                tracks: vec![t],
                ..ConnectionQuality::default()
            };
            c.summarize();
            c
        };
        (connection(from_phone), connection(to_phone))
    }
}

/// A call's underrun counts published so far, by direction; published once a second and at
/// the end of the call.
struct UnderrunMeter {
    uplink: u64,
    downlink: u64,
    last: Instant,
}

impl UnderrunMeter {
    fn new(now: Instant) -> UnderrunMeter {
        UnderrunMeter {
            uplink: 0,
            downlink: 0,
            last: now,
        }
    }

    fn due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last) >= super::metrics::PUBLISH_EVERY
    }

    fn publish(&mut self, stats: &patchbay_sip::phone::PhoneStats) {
        let (up, down) = (stats.uplink_underruns, stats.mixer_underruns);
        metrics::counter!("patchbay_sip_jitter_underruns_total", "direction" => "uplink")
            .increment(up.saturating_sub(self.uplink));
        metrics::counter!("patchbay_sip_jitter_underruns_total", "direction" => "downlink")
            .increment(down.saturating_sub(self.downlink));
        self.uplink = up;
        self.downlink = down;
        self.last = Instant::now();
    }
}

impl CallMedia {
    async fn run(
        mut self,
        mut downlink: mpsc::UnboundedReceiver<LocalDownlink>,
        mut commands: mpsc::UnboundedReceiver<CallCommand>,
    ) {
        let mut buf = vec![0u8; 2048];
        let mut tick = tokio::time::interval(self.ptime);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let rtp = self.rtp.clone();
        // The media plane drops the device when the call ends, maybe before the End command
        // arrives: the call's stats are logged on End either way.
        let mut downlink_open = true;
        let mut dead = false;
        loop {
            tokio::select! {
                received = rtp.recv_from(&mut buf) => {
                    let Ok((n, source)) = received else { continue };
                    self.heard_from_phone(source, &buf[..n]);
                }
                frame = downlink.recv(), if downlink_open => match frame {
                    Some(frame) => self.frame_for_phone(frame),
                    None => downlink_open = false,
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    // The leg's liveness is checked on the phone's clock (timeouts are seconds).
                    if !dead && self.watch.is_dead(now) {
                        dead = true;
                        let _ = self.bridge.send(Message::Dead(self.call));
                    }
                    let packets = self.phone.tick(now);
                    // Once a second: the underruns to the metrics, the leg to the quality view.
                    if self.underruns.due(now) {
                        let stats = self.phone.stats();
                        self.underruns.publish(&stats);
                        let (publish, subscribe) = self.leg.measure(&stats, !dead, now);
                        self.uplink.report(publish, subscribe);
                    }
                    if let Some(remote) = self.remote {
                        for p in packets {
                            let _ = rtp.try_send_to(&p, remote);
                        }
                    }
                }
                command = commands.recv() => match command {
                    Some(CallCommand::Remote { to, phone_sends }) => {
                        self.remote = to;
                        self.latch.reset();
                        self.watch.set_expecting(phone_sends, Instant::now());
                    }
                    Some(CallCommand::HoldTone(hz)) => self.phone.set_hold_tone(hz),
                    Some(CallCommand::End(end)) => {
                        let stats = self.phone.stats();
                        self.underruns.publish(&stats);
                        tracing::info!(call = %self.call, end = %end, participant = %self.participant, ?stats, "SIP call ended");
                        break;
                    }
                    None => break,
                },
            }
        }
    }

    fn heard_from_phone(&mut self, source: SocketAddr, data: &[u8]) {
        let now = Instant::now();
        match self.latch.admit(source, data) {
            Admission::Phone { reply_to } => {
                self.watch.heard(now);
                // Symmetric RTP: answer where the phone actually sends from (unless on hold).
                if self.remote.is_some() {
                    self.remote = Some(reply_to);
                }
            }
            refused => {
                tracing::trace!(call = %self.call, %source, ?refused, "datagram not taken as the phone's");
                return;
            }
        }
        if let Err(e) = self.phone.receive_rtp(data, now) {
            tracing::trace!(call = %self.call, error = %e, "unusable RTP from the phone");
        }
        while let Some(frame) = self.phone.poll_uplink(now) {
            self.uplink
                .write(u64::from(frame.rtp_time_48k), frame.opus, Some(frame.level));
        }
        while let Some(d) = self.phone.poll_digit() {
            self.devices
                .phone_dtmf(self.participant, d.digit, d.duration_ms);
        }
    }

    fn frame_for_phone(&mut self, downlink: LocalDownlink) {
        match downlink {
            LocalDownlink::Frame {
                source,
                rtp_time,
                dtmf,
                data,
            } => {
                if dtmf {
                    // Browser DTMF: one digit per event, however many end packets repeat it.
                    self.phone.push_downlink_event(
                        SourceId(source.0),
                        &data,
                        rtp_time as u32,
                        TELEPHONE_EVENT_CLOCK,
                    );
                } else {
                    self.sources.insert(source.0);
                    self.phone
                        .push_downlink(SourceId(source.0), &data, rtp_time as u32);
                }
            }
            LocalDownlink::Sources(sources) => {
                let keep: std::collections::HashSet<u64> = sources.iter().map(|s| s.0).collect();
                let gone: Vec<u64> = self
                    .sources
                    .iter()
                    .copied()
                    .filter(|s| !keep.contains(s))
                    .collect();
                for s in gone {
                    self.sources.remove(&s);
                    self.phone.remove_source(SourceId(s));
                }
            }
            LocalDownlink::Closed(reason) => {
                tracing::info!(call = %self.call, reason, "phone's device closed: hanging up");
                let _ = self.bridge.send(Message::Hangup(self.call));
            }
            LocalDownlink::Routes {
                session,
                names_device,
            } => {
                let _ = self.bridge.send(Message::Routes {
                    call: self.call,
                    session,
                    names_call: names_device,
                });
            }
        }
    }
}

/// The answer's parameters: this bridge's media address, the call's RTP port, and its `o=`
/// session id and version.
fn answer_params(
    settings: &SipSettings,
    port: u16,
    (session_id, version): (u64, u64),
) -> AnswerParams {
    AnswerParams {
        ip: settings.media_ip,
        port,
        session_id,
        session_version: version,
    }
}

/// A new dialog's `o=` session id and version (equal, as RFC 3264 suggests: both start from
/// one random number; 32 bits keep them readable and far from overflow).
fn new_sdp_origin() -> (u64, u64) {
    let id = u64::from(rand::random::<u32>());
    (id, id)
}

/// Binds an RTP socket at `port` or, if taken, the next free ones of the range.
async fn bind_rtp(settings: &SipSettings, port: u16) -> std::io::Result<UdpSocket> {
    let (low, high) = settings.rtp_ports;
    if low == 0 {
        return UdpSocket::bind((IpAddr::from([0, 0, 0, 0]), 0)).await;
    }
    let mut p = port;
    for _ in 0..=u32::from(high - low) {
        if let Ok(s) = UdpSocket::bind((IpAddr::from([0, 0, 0, 0]), p)).await {
            return Ok(s);
        }
        p = if p >= high { low } else { p + 1 };
    }
    Err(std::io::Error::other("no free RTP port in --rtp-ports"))
}

/// Admits an arriving call (reference §4.2) and reports to the driver. `name`: the call's
/// device name in webhooks and the live state.
#[allow(clippy::too_many_arguments)]
async fn admit(
    call: CallId,
    name: String,
    user_to_user: Vec<String>,
    sdp_offer: Option<String>,
    settings: SipSettings,
    port: u16,
    devices: DeviceControl,
    tx: mpsc::UnboundedSender<Message>,
) {
    let result = admit_inner(name, user_to_user, sdp_offer, &settings, port, &devices).await;
    if let Err(tokio::sync::mpsc::error::SendError(Message::Admitted(_, Ok(admitted)))) =
        tx.send(Message::Admitted(call, result.map(Box::new)))
    {
        // The bridge stopped meanwhile: the call is never answered, and its start, already
        // announced, gets its end.
        devices.phone_ended(
            admitted.connection.device,
            admitted.participant,
            admitted.name,
            false,
        );
    }
}

/// Control decides whether the participant may join; this adds what is SIP's own: the token
/// found in `User-To-User`, an SDP offer with a common codec, an RTP port.
async fn admit_inner(
    name: String,
    user_to_user: Vec<String>,
    sdp_offer: Option<String>,
    settings: &SipSettings,
    port: u16,
    devices: &DeviceControl,
) -> Result<Admitted, Refusal> {
    let token = uui::participant_token(&user_to_user)
        .map_err(|e| Refusal::new(403, format!("no participant token: {e}")))?;
    let phone = devices.admit_phone(&token).await.map_err(refusal)?;
    let offer = sdp_offer.ok_or_else(|| Refusal::new(488, "an SDP offer is required"))?;
    let rtp = bind_rtp(settings, port)
        .await
        .map_err(|e| Refusal::new(503, format!("no RTP port: {e}")))?;
    let rtp_port = rtp.local_addr().map(|a| a.port()).unwrap_or(0);
    let origin = new_sdp_origin();
    let sdp_session = origin.0;
    let params = answer_params(settings, rtp_port, origin);
    let negotiated =
        sdp::answer(&offer, &params).map_err(|e| Refusal::new(e.sip_status(), e.to_string()))?;
    let stream = StreamId::parse(&format!("phone-{}", uuid::Uuid::new_v4().simple()))
        .map_err(|e| Refusal::new(500, e.to_string()))?;
    // The call is answered only once its onConnect and onCallAnswered are in the outbox (a
    // crash after the 200 OK loses neither); they come before its stream's onStreamPublished.
    // Once they are recorded, every refusal records the call's end too.
    let participant = phone.participant;
    match devices.phone_joined(participant, name.clone()).await {
        PhoneJoined::Recorded => {}
        PhoneJoined::NotRecorded => {
            devices.phone_not_answered(participant, name);
            return Err(Refusal::new(
                503,
                "the call's events cannot be recorded now; try again later",
            ));
        }
        PhoneJoined::AlreadyConnected => return Err(refusal(PhoneRefusal::AlreadyConnected)),
    }
    let connection = match devices
        .connect_phone(&phone, stream.clone(), settings.stream_alias.clone())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            devices.phone_not_answered(participant, name);
            return Err(Refusal::new(503, e.to_string()));
        }
    };
    let AdmittedPhone {
        account, session, ..
    } = phone;
    if !devices
        .phone_still_wanted(&account, participant, connection.device, &name)
        .await
    {
        return Err(Refusal::new(
            404,
            "the participant was deleted while the call was being admitted",
        ));
    }
    Ok(Admitted {
        account,
        participant,
        session,
        name,
        connection,
        rtp: Arc::new(rtp),
        negotiated,
        stream,
        sdp_session,
    })
}

/// The SIP status and reason of control's refusal.
fn refusal(refusal: PhoneRefusal) -> Refusal {
    let reason = refusal.to_string();
    let code = match refusal {
        PhoneRefusal::BadToken(_) => 403,
        PhoneRefusal::ParticipantNotFound => 404,
        PhoneRefusal::NotInSession => 480,
        PhoneRefusal::AlreadyConnected => 486,
        PhoneRefusal::Unavailable | PhoneRefusal::Draining => 503,
        PhoneRefusal::HostedElsewhere { sip: Some(target) } => {
            // Redirected to the process that hosts the session (issue 20).
            return Refusal {
                code: 302,
                reason,
                redirect: Some(target),
            };
        }
        PhoneRefusal::HostedElsewhere { sip: None } => {
            return Refusal::new(
                503,
                "session hosted by another server, which gave no SIP address",
            )
        }
    };
    Refusal::new(code, reason)
}

/// Accepts SIP TCP connections (backing off while `accept` fails, within the gate's caps)
/// and runs a reader and a writer task for each.
async fn accept_tcp(
    listener: TcpListener,
    settings: SipTcpSettings,
    tx: mpsc::UnboundedSender<Message>,
) {
    let gate = Gate::new("sip-tcp", settings.limits);
    let mut acceptor = Acceptor::new(listener, "sip-tcp");
    let mut next = 1u64;
    loop {
        let (stream, source) = acceptor.accept().await;
        let Some(permit) = gate.admit(source.ip()) else {
            continue; // over the caps: closed at once
        };
        // Both tasks hold the permit: the place is freed when the socket is fully closed.
        let permit = Arc::new(permit);
        let conn = ConnectionId(next);
        next += 1;
        let (reader, mut writer) = stream.into_split();
        let (wtx, mut wrx) = mpsc::unbounded_channel::<Vec<u8>>();
        if tx.send(Message::TcpOpen { conn, writer: wtx }).is_err() {
            return;
        }
        let activity = Activity::new();
        let written = activity.clone();
        let writer_permit = permit.clone();
        tokio::spawn(async move {
            let _permit = writer_permit;
            while let Some(bytes) = wrx.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    break;
                }
                written.touch();
            }
        });
        let tx = tx.clone();
        let head = permit.head();
        tokio::spawn(async move {
            let _permit = permit;
            let why = read_tcp(reader, conn, source, settings, activity, head, &tx).await;
            tracing::debug!(%source, why, "SIP TCP connection closed");
            let _ = tx.send(Message::TcpClosed(conn));
        });
    }
}

/// Reads one SIP TCP connection into the driver until it ends, stalls mid-message for the
/// head timeout, or is idle for the idle timeout; says which.
async fn read_tcp(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    conn: ConnectionId,
    source: SocketAddr,
    settings: SipTcpSettings,
    activity: Activity,
    head: ConnectionHead,
    tx: &mpsc::UnboundedSender<Message>,
) -> &'static str {
    // A framer of its own tells whether a message is under way (the driver's endpoint frames
    // the same bytes for itself).
    let mut framer = StreamFramer::new();
    let mut message_started = Some(Instant::now());
    let mut established = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let idle_at = activity.last() + settings.idle_timeout;
        let deadline = match message_started {
            Some(started) => idle_at.min(started + settings.head_timeout),
            None => idle_at,
        };
        let n = tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) => return "closed by the peer",
                Err(_) => return "read error",
                Ok(n) => n,
            },
            // Always listened to: a connection chosen just before its message completed is
            // closed all the same (its place went to the newcomer).
            () = head.shed() => return "shed: the listener is full",
            () = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                if message_started.is_some_and(|s| now >= s + settings.head_timeout) {
                    return "message incomplete within the head timeout";
                }
                if now >= activity.last() + settings.idle_timeout {
                    return "idle timeout";
                }
                continue;
            }
        };
        let data = buf.get(..n).unwrap_or_default();
        activity.touch();
        framer.push(data);
        while let Some(item) = framer.next_item() {
            match item {
                StreamItem::Error(_) => break, // the driver answers and closes the connection
                StreamItem::Message(..) if !established => {
                    // A whole message arrived: established, never shed.
                    head.done();
                    established = true;
                }
                StreamItem::Message(..) => {}
            }
        }
        if !framer.is_mid_message() {
            message_started = None;
        } else if message_started.is_none() {
            message_started = Some(Instant::now());
        }
        let data = data.to_vec();
        if tx.send(Message::TcpData { conn, source, data }).is_err() {
            return "driver stopped";
        }
    }
}
