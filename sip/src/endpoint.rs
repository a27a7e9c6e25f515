//! The user-agent server: it answers every request it can, runs the server transactions, keeps
//! one dialog per accepted call and reports to the application what happened to each call and
//! how it ended. Sans-IO, with the same drive contract as the media engine: the driver hands in
//! bytes with `now`, then polls transmits, events and the next deadline. Nothing here reads a
//! clock or touches a socket.
//!
//! # Drive contract
//!
//! ```text
//! Endpoint::new(EndpointConfig)
//! handle_datagram(now, source, bytes)          one UDP datagram = one message
//! handle_stream(now, conn, source, bytes)      TCP bytes in any chunking
//! connection_closed(conn)                      calls on it end with TransportClosed
//! handle_timeout(now)                          at (or after) poll_timeout()
//! poll_transmit() -> Option<Transmit>          drain after every call above
//! poll_event() -> Option<CallEvent>            drain after the transmits
//! poll_timeout() -> Option<Instant>
//!
//! accept(call, sdp_answer, now)                200 OK, retransmitted until ACK (64·T1 → BYE)
//! reject(call, code, reason, now)              4xx–6xx with a Reason header
//! answer_update(call, Ok(sdp) | Err((code, reason)), now)   answers a Reoffer
//! hangup(call, now)                            BYE (timers E/F); ends LocalBye or ByeTimeout
//! dialog(call) -> Option<DialogState>          an established UDP call's dialog, to store
//! restore(DialogState, now) -> CallId          takes over a dialog another process stored
//! calls() -> usize
//! ```
//!
//! Drain `poll_transmit` before acting on [`CallEvent::CloseConnection`]: the 400 that explains
//! a framing error is queued before the event.
//!
//! # Behaviour
//!
//! - Every request is answered through a server transaction when it parses (so retransmissions
//!   get the same answer and non-2xx INVITE answers are retransmitted on timer G until ACK);
//!   malformed requests get a stateless 400 whose reason phrase says what is wrong (505 for
//!   another SIP version). Requests without any Via, unparseable bytes and ACKs that match
//!   nothing are dropped and counted in [`EndpointStats`]; so are responses that do not answer
//!   one of our BYEs.
//! - Checks, in order: syntax (400/505) → unknown method (501 with Allow) → CSeq method
//!   mismatch (400) → method we do not serve (405 with Allow) → Request-URI scheme other than
//!   sip/sips/tel (416) → Max-Forwards 0 (483, except OPTIONS, which we answer as its final
//!   recipient per RFC 3261 §16.3) → Require with any option tag but `timer` (420 with
//!   Unsupported listing every required tag) → for INVITE: a body that is not `application/sdp` or is content-encoded
//!   (415 with Accept), an Accept without SDP (406).
//! - Methods served: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO. INFO in a dialog is answered 200
//!   and ignored (DTMF travels in RTP, RFC 4733, handled by the media side).
//! - 100 Trying is sent as soon as an INVITE arrives (no To tag); every other response carries
//!   our To tag, generated per call (or per request for out-of-dialog errors).
//! - Answers go to the request's source address over the transport it came on (symmetric
//!   signalling), with `received`/`rport` filled into the top Via. Our BYE goes to where the
//!   dialog's last request came from; its Request-URI and Route follow the remote target and the
//!   route set (strict routers handled).
//! - A request with a To tag must match a dialog (Call-ID, our tag, the peer's tag) or gets 481;
//!   a lower or equal CSeq than the last one in the dialog gets 500. A re-INVITE while another
//!   re-INVITE awaits the application, or while a 2xx awaits its ACK, gets 491. (RFC 3261
//!   §14.2 prescribes 500 with Retry-After for the first case; 491 was chosen by the design.)
//!   A re-INVITE without SDP is answered at once with our last SDP.
//! - An INVITE that matches a call's Call-ID, From tag and CSeq but not its transaction (it
//!   forked and looped back) gets 482.
//! - RFC 2543 peers (no magic cookie in the branch, no tags, no Content-Length on UDP) are
//!   matched by Request-URI, From tag, Call-ID, CSeq and top Via; their remote target is the
//!   From URI when they send no Contact.
//! - After our 2xx, hangup() waits for the ACK (RFC 3261 §15) and sends BYE then.
//! - Session timers (RFC 4028, see `timer`): when the INVITE asks for one and supports the
//!   extension, our 2xx carries `Session-Expires: N;refresher=uac` and `Require: timer`; each
//!   2xx to a re-INVITE that asks again restarts it; without a refresh the call gets BYE and
//!   ends with [`CallEnd::SessionExpired`]. Intervals under [`MIN_SE`] get 422 with `Min-SE`.

mod call;
mod forward;
mod reply;
mod timer;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::Instant;

use self::call::{contact_for, Call, DialogKey, OkRetransmit, PendingReoffer, Phase};
use self::reply::Reply;
pub use self::timer::MIN_SE;
use self::timer::{Asked, SessionTimer};
use crate::message::{self, Message, Method, ParseError, Request, RequestFields, Response};
pub use crate::transaction::Timers;
use crate::transaction::{
    ClientEvent, ClientTransaction, ServerKind, ServerState, ServerTimeout, ServerTransaction,
    TransactionKey,
};
use crate::transport::{self, FramingError, StreamFramer, StreamItem};
pub use crate::transport::{ConnectionId, Transmit, Transport};
use crate::uui;

/// What an established call's dialog needs to go on in another process (RFC 3261 §12.1.1:
/// Call-ID, tags, the parties, the remote target, the route set, both CSeqs) and where the
/// peer's requests come from; the driver stores it, and [`Endpoint::restore`] makes a call of
/// it again. UDP only: a TCP connection ends with its process.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "camelCase")
)]
pub struct DialogState {
    /// The SIP Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag (empty for RFC 2543 peers).
    pub remote_tag: String,
    /// The INVITE's To value: our From in requests we send.
    pub local_party: String,
    /// The INVITE's From value (with the peer's tag): our To in requests we send.
    pub remote_party: String,
    /// Where our requests are addressed (the peer's Contact).
    pub remote_target: String,
    /// Record-Route URIs, in order.
    pub route_set: Vec<String>,
    /// The last CSeq we sent in the dialog.
    pub local_cseq: u32,
    /// The last CSeq the peer sent in the dialog.
    pub remote_cseq: u32,
    /// Where the peer's requests came from; our requests go there.
    pub peer: SocketAddr,
    /// Our last SDP (answered to a re-INVITE without an offer).
    pub local_sdp: Option<String>,
    /// The session timer the call runs (seconds), if any.
    pub session_expires: Option<u32>,
}

/// Methods this endpoint serves (the Allow header).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO";

/// More server transactions than this and new requests are answered statelessly.
const MAX_SERVER_TRANSACTIONS: usize = 65_536;

/// Static configuration.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Our address as written in Via and Contact.
    pub local_addr: SocketAddr,
    /// Sent as Server in responses and User-Agent in requests.
    pub user_agent: String,
    /// T1 (500 ms), T2 (4 s), T4 (5 s).
    pub timers: Timers,
    /// Seed of the generator of tags and branches. [`EndpointConfig::new`] takes it from the
    /// operating system's randomness (through `RandomState`); tests may fix it.
    pub rng_seed: u64,
}

impl EndpointConfig {
    /// Default timers, `patchbay` as user agent, a random seed.
    pub fn new(local_addr: SocketAddr) -> Self {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            local_addr,
            user_agent: "patchbay".to_string(),
            timers: Timers::default(),
            rng_seed: seed,
        }
    }
}

/// A call, numbered by the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(u64);

impl CallId {
    /// The number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Every way a call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallEnd {
    /// The peer sent BYE.
    RemoteBye,
    /// We sent BYE and it was answered (any final response ends the dialog).
    LocalBye,
    /// The peer sent CANCEL before we answered.
    Cancelled,
    /// The application rejected the call with this status code.
    Rejected {
        /// The status code sent.
        code: u16,
    },
    /// No ACK for our 2xx within 64·T1; we sent BYE.
    AckTimeout,
    /// No final response to our BYE within 64·T1 (timer F).
    ByeTimeout,
    /// The TCP connection that carried the call closed.
    TransportClosed,
    /// The caller asked for a session timer (RFC 4028) and did not refresh in time; we sent BYE.
    SessionExpired,
    /// The application sent the INVITE on to another server ([`Endpoint::forward`]); that
    /// server answers it.
    Forwarded,
}

impl CallEnd {
    /// A stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RemoteBye => "remote_bye",
            Self::LocalBye => "local_bye",
            Self::Cancelled => "cancelled",
            Self::Rejected { .. } => "rejected",
            Self::AckTimeout => "ack_timeout",
            Self::ByeTimeout => "bye_timeout",
            Self::TransportClosed => "transport_closed",
            Self::SessionExpired => "session_expired",
            Self::Forwarded => "forwarded",
        }
    }
}

impl fmt::Display for CallEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RemoteBye => f.write_str("the caller hung up"),
            Self::LocalBye => f.write_str("we hung up"),
            Self::Cancelled => f.write_str("the caller cancelled before answer"),
            Self::Rejected { code } => write!(f, "rejected with {code}"),
            Self::AckTimeout => f.write_str("no ACK for our 200 OK"),
            Self::ByeTimeout => f.write_str("no answer to our BYE"),
            Self::TransportClosed => f.write_str("the TCP connection closed"),
            Self::SessionExpired => f.write_str("the session timer expired without a refresh"),
            Self::Forwarded => f.write_str("forwarded to another server"),
        }
    }
}

/// What the application learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// A new INVITE: answer with [`Endpoint::accept`] or [`Endpoint::reject`].
    Incoming {
        /// The call.
        call: CallId,
        /// Where it came from.
        source: SocketAddr,
        /// How it came.
        transport: Transport,
        /// The Request-URI.
        request_uri: String,
        /// The From URI.
        from: String,
        /// The To URI.
        to: String,
        /// The SIP Call-ID (for logs and correlation).
        sip_call_id: String,
        /// Every User-to-User / X-User-to-User value, in order (see [`crate::uui`]).
        user_to_user: Vec<String>,
        /// The SDP offer, absent for an offerless INVITE (then the SDP given to `accept` is
        /// our offer and the answer comes with `Established`).
        sdp_offer: Option<String>,
    },
    /// The ACK for our 2xx arrived: the call is up.
    Established {
        /// The call.
        call: CallId,
        /// The SDP carried by the ACK (the answer to our offer after an offerless INVITE).
        ack_sdp: Option<String>,
    },
    /// A re-INVITE with a new offer (hold, resume, address change): answer with
    /// [`Endpoint::answer_update`].
    Reoffer {
        /// The call.
        call: CallId,
        /// The new offer.
        sdp_offer: String,
    },
    /// The call is over; the id is no longer valid.
    Ended {
        /// The call.
        call: CallId,
        /// How it ended.
        end: CallEnd,
    },
    /// Not about a call: close this TCP connection (its byte stream cannot be framed any more)
    /// once the queued transmits are sent.
    CloseConnection {
        /// The connection.
        conn: ConnectionId,
    },
}

/// Misuse of the application-facing methods.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SipError {
    /// The call never existed or has ended.
    #[error("no call {0}")]
    UnknownCall(CallId),
    /// The call is not in a state where this is possible.
    #[error("call {call}: cannot {action} while {state}")]
    InvalidState {
        /// The call.
        call: CallId,
        /// What was attempted.
        action: &'static str,
        /// The call's state.
        state: &'static str,
    },
    /// The status code is not allowed for this answer.
    #[error("status code {0} is not allowed here")]
    InvalidStatus(u16),
}

/// Counters of what was dropped or answered without reaching the application.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Bytes that could not be read as SIP, or requests without Via (nothing to answer).
    pub unparseable: u64,
    /// Requests answered with 4xx/5xx because of their syntax.
    pub malformed_requests: u64,
    /// Responses that answer none of our requests.
    pub stray_responses: u64,
    /// ACKs that match neither a transaction nor a 2xx awaiting its ACK.
    pub stray_acks: u64,
    /// Request retransmissions answered by their transaction.
    pub retransmissions: u64,
    /// Requests sent on to another server ([`Endpoint::forward`] and what followed its route:
    /// retransmissions, CANCEL, ACK).
    pub forwarded_requests: u64,
    /// Responses to forwarded requests relayed back to their caller.
    pub relayed_responses: u64,
    /// Responses that carried one of our forwarding Vias but could not be relayed (a branch we
    /// did not make, no address to send to).
    pub unrelayable_responses: u64,
}

struct ServerEntry {
    tx: ServerTransaction,
    call: Option<CallId>,
}

struct ClientEntry {
    tx: ClientTransaction,
    call: Option<CallId>,
}

/// A refusal decided by the policy checks.
struct Refusal {
    code: u16,
    reason: String,
    headers: Vec<(&'static str, String)>,
}

impl Refusal {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// The user-agent server. See the module documentation.
pub struct Endpoint {
    config: EndpointConfig,
    rng: u64,
    next_call: u64,
    calls: HashMap<CallId, Call>,
    dialogs: HashMap<DialogKey, CallId>,
    server: HashMap<TransactionKey, ServerEntry>,
    client: HashMap<String, ClientEntry>,
    framers: HashMap<ConnectionId, StreamFramer>,
    /// Where forwarded calls went ([`Endpoint::forward`]).
    routes: forward::Routes,
    /// When expired routes are next forgotten.
    routes_sweep: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<CallEvent>,
    stats: EndpointStats,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.config.local_addr)
            .field("calls", &self.calls.len())
            .field("server_transactions", &self.server.len())
            .field("client_transactions", &self.client.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Endpoint {
    /// A new endpoint.
    pub fn new(config: EndpointConfig) -> Self {
        Self {
            rng: config.rng_seed,
            config,
            next_call: 1,
            calls: HashMap::new(),
            dialogs: HashMap::new(),
            server: HashMap::new(),
            client: HashMap::new(),
            framers: HashMap::new(),
            routes: forward::Routes::default(),
            routes_sweep: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: EndpointStats::default(),
        }
    }

    /// The dialog of `call`, to store: `None` unless the call is established (its ACK came)
    /// and runs over UDP.
    pub fn dialog(&self, call: CallId) -> Option<DialogState> {
        let c = self.calls.get(&call)?;
        if c.phase != Phase::Confirmed || c.transport != Transport::Udp {
            return None;
        }
        Some(DialogState {
            call_id: c.call_id.clone(),
            local_tag: c.local_tag.clone(),
            remote_tag: c.remote_tag.clone(),
            local_party: c.local_party.clone(),
            remote_party: c.remote_party.clone(),
            remote_target: c.remote_target.clone(),
            route_set: c.route_set.clone(),
            local_cseq: c.local_cseq,
            remote_cseq: c.remote_cseq,
            peer: c.peer,
            local_sdp: c.local_sdp.clone(),
            session_expires: c.session_expires,
        })
    }

    /// Takes over an established call another process stored ([`Endpoint::dialog`]), over
    /// UDP: the peer's in-dialog requests (BYE, re-INVITE, INFO) match it again and
    /// [`Endpoint::hangup`] sends its BYE. Its session timer, if it runs one, starts anew at
    /// `now`. No event is reported for it.
    pub fn restore(&mut self, state: DialogState, now: Instant) -> CallId {
        let id = CallId(self.next_call);
        self.next_call += 1;
        let call = Call {
            id,
            phase: Phase::Confirmed,
            transport: Transport::Udp,
            peer: state.peer,
            call_id: state.call_id,
            local_tag: state.local_tag,
            remote_tag: state.remote_tag,
            local_party: state.local_party,
            remote_party: state.remote_party,
            remote_target: state.remote_target,
            route_set: state.route_set,
            remote_cseq: state.remote_cseq,
            local_cseq: state.local_cseq,
            invite_cseq: 0,
            // No INVITE transaction: the dialog's INVITE was answered by another process.
            invite_key: TransactionKey::Rfc3261 {
                branch: format!("restored-{}", id.0),
                sent_by: String::new(),
                method: "INVITE".into(),
            },
            invite_reply: Reply::restored(Transport::Udp, state.peer),
            offer: None,
            ok: None,
            reoffer: None,
            hangup_requested: false,
            local_sdp: state.local_sdp,
            session_expires: state.session_expires,
            session_timer: state.session_expires.map(|s| SessionTimer::start(s, now)),
        };
        self.dialogs.insert(call.dialog_key(), id);
        self.calls.insert(id, call);
        id
    }

    /// Calls not ended yet (offered, answered, up or hanging up).
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// What was dropped so far.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// One UDP datagram (one message; bytes after its Content-Length are ignored).
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        match transport::frame_datagram(data) {
            Ok(None) => {}
            Ok(Some((head, body))) => {
                self.on_message(now, Transport::Udp, source, head.into_message(body))
            }
            Err(error) => self.on_framing_error(Transport::Udp, source, error),
        }
    }

    /// Bytes read from a TCP connection, in any chunking.
    pub fn handle_stream(
        &mut self,
        now: Instant,
        conn: ConnectionId,
        source: SocketAddr,
        data: &[u8],
    ) {
        let framer = self.framers.entry(conn).or_default();
        if framer.has_failed() {
            return;
        }
        framer.push(data);
        while let Some(item) = self
            .framers
            .get_mut(&conn)
            .and_then(StreamFramer::next_item)
        {
            match item {
                StreamItem::Message(head, body) => {
                    self.on_message(now, Transport::Tcp(conn), source, head.into_message(body))
                }
                StreamItem::Error(error) => {
                    self.on_framing_error(Transport::Tcp(conn), source, error);
                    self.events.push_back(CallEvent::CloseConnection { conn });
                    break;
                }
            }
        }
    }

    /// The driver closed (or lost) a TCP connection.
    pub fn connection_closed(&mut self, conn: ConnectionId) {
        self.framers.remove(&conn);
        let transport = Transport::Tcp(conn);
        let ended: Vec<CallId> = self
            .calls
            .values()
            .filter(|c| c.transport == transport)
            .map(|c| c.id)
            .collect();
        for id in ended {
            self.end_call(id, CallEnd::TransportClosed);
        }
        self.server.retain(|_, e| e.tx.transport() != transport);
        self.client.retain(|_, e| e.tx.transport() != transport);
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.routes_sweep.is_some_and(|t| t <= now) {
            self.routes.expire(now);
            self.routes_sweep = (self.routes.len() > 0).then(|| now + self.config.timers.timeout());
        }
        let due: Vec<TransactionKey> = self
            .server
            .iter()
            .filter(|(_, e)| e.tx.poll_timeout().is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let Some(entry) = self.server.get_mut(&key) else {
                continue;
            };
            for event in entry.tx.handle_timeout(now) {
                if let ServerTimeout::Retransmitted(t) = event {
                    self.transmits.push_back(t);
                }
            }
            if entry.tx.state() == ServerState::Terminated {
                self.server.remove(&key);
            }
        }

        let due: Vec<String> = self
            .client
            .iter()
            .filter(|(_, e)| e.tx.poll_timeout().is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for branch in due {
            let Some(entry) = self.client.get_mut(&branch) else {
                continue;
            };
            let call = entry.call;
            let mut finished = false;
            for event in entry.tx.handle_timeout(now) {
                match event {
                    ClientEvent::Retransmitted(t) => self.transmits.push_back(t),
                    ClientEvent::Timeout => {
                        finished = true;
                        if let Some(id) = call {
                            self.end_call(id, CallEnd::ByeTimeout);
                        }
                    }
                    ClientEvent::Terminated => finished = true,
                    ClientEvent::Final(_) => {}
                }
            }
            if finished {
                self.client.remove(&branch);
            }
        }

        let due: Vec<CallId> = self
            .calls
            .values()
            .filter(|c| c.ok.as_ref().is_some_and(|ok| ok.deadline() <= now))
            .map(|c| c.id)
            .collect();
        for id in due {
            self.on_ok_timer(now, id);
        }

        let expired: Vec<CallId> = self
            .calls
            .values()
            .filter(|c| c.phase == Phase::Confirmed)
            .filter(|c| c.session_timer.is_some_and(|t| t.expires <= now))
            .map(|c| c.id)
            .collect();
        for id in expired {
            self.send_bye(now, id, false);
            self.end_call(id, CallEnd::SessionExpired);
        }
    }

    /// The earliest instant `handle_timeout` has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let server = self.server.values().filter_map(|e| e.tx.poll_timeout());
        let client = self.client.values().filter_map(|e| e.tx.poll_timeout());
        let calls = self
            .calls
            .values()
            .filter_map(|c| c.ok.as_ref().map(OkRetransmit::deadline));
        let sessions = self
            .calls
            .values()
            .filter(|c| c.phase == Phase::Confirmed)
            .filter_map(|c| c.session_timer.map(|t| t.expires));
        server
            .chain(client)
            .chain(calls)
            .chain(sessions)
            .chain(self.routes_sweep)
            .min()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    /// Answers an offered call with 200 OK carrying `sdp_answer`. The 200 is retransmitted
    /// (T1 doubling to T2) until its ACK; without ACK after 64·T1 the call ends with
    /// [`CallEnd::AckTimeout`] and a BYE is sent.
    pub fn accept(&mut self, call: CallId, sdp_answer: &str, now: Instant) -> Result<(), SipError> {
        let timers = self.config.timers;
        let local_addr = self.config.local_addr;
        let c = self
            .calls
            .get_mut(&call)
            .ok_or(SipError::UnknownCall(call))?;
        if c.phase != Phase::Offered {
            return Err(SipError::InvalidState {
                call,
                action: "accept",
                state: c.phase.describe(),
            });
        }
        c.session_timer = c.session_expires.map(|s| SessionTimer::start(s, now));
        let supported = if c.session_timer.is_some() {
            "timer"
        } else {
            ""
        };
        let mut extra = vec![
            ("Contact", c.contact(local_addr)),
            ("Allow", ALLOW.to_string()),
            ("Supported", supported.to_string()),
        ];
        extra.extend(c.session_timer.iter().flat_map(SessionTimer::headers));
        extra.extend(
            c.invite_reply
                .record_route()
                .iter()
                .map(|rr| ("Record-Route", rr.clone())),
        );
        let bytes = c.invite_reply.build(
            200,
            "OK",
            Some(&c.local_tag),
            &self.config.user_agent,
            &extra,
            Some(("application/sdp", sdp_answer.as_bytes())),
        );
        let entry = self
            .server
            .get_mut(&c.invite_key)
            .ok_or(SipError::InvalidState {
                call,
                action: "accept",
                state: "its INVITE transaction is gone",
            })?;
        let transmit = entry
            .tx
            .respond(now, 200, bytes.clone())
            .ok_or(SipError::InvalidState {
                call,
                action: "accept",
                state: "already answered",
            })?;
        self.transmits.push_back(transmit);
        c.phase = Phase::Answered;
        c.offer = None;
        c.ok = Some(OkRetransmit::new(bytes, now, timers, c.invite_cseq, true));
        c.local_sdp = Some(sdp_answer.to_string());
        self.dialogs.insert(c.dialog_key(), call);
        Ok(())
    }

    /// Refuses an offered call with a 4xx–6xx final response carrying
    /// `Reason: SIP ;cause=<code> ;text="<reason>"`. The call ends at once with
    /// [`CallEnd::Rejected`]; the transaction retransmits the response until the ACK.
    pub fn reject(
        &mut self,
        call: CallId,
        code: u16,
        reason: &str,
        now: Instant,
    ) -> Result<(), SipError> {
        if !(400..=699).contains(&code) {
            return Err(SipError::InvalidStatus(code));
        }
        self.refuse_call(call, code, reason, None, now)
    }

    /// Redirects an offered call with `302 Moved Temporarily` whose `Contact` is
    /// `<sip:{target}>` (`target`: `host:port`, where the caller dials again), with a `Reason`
    /// as [`Endpoint::reject`]'s. The call ends at once with [`CallEnd::Rejected`] (code 302).
    pub fn redirect(
        &mut self,
        call: CallId,
        target: &str,
        reason: &str,
        now: Instant,
    ) -> Result<(), SipError> {
        self.refuse_call(call, 302, reason, Some(format!("<sip:{target}>")), now)
    }

    /// Sends an offered call's INVITE on to `target` (the server that hosts its session) as a
    /// stateless proxy would (RFC 3261 §16.11; see `forward`'s module documentation): our Via
    /// on top, Max-Forwards decremented, over UDP. The endpoint forgets the call's transaction
    /// (no final response of ours: the target's come back through our Via and are relayed), and
    /// for 64·T1 after its last use the call's retransmissions, CANCEL and non-2xx ACK follow it
    /// there. The call ends at once with [`CallEnd::Forwarded`]. A call whose INVITE has run
    /// out of hops (Max-Forwards 0 after ours) is refused with 483 instead (ending
    /// [`CallEnd::Rejected`]); `target` being this endpoint's own address is refused with 482.
    pub fn forward(
        &mut self,
        call: CallId,
        target: SocketAddr,
        now: Instant,
    ) -> Result<(), SipError> {
        let c = self.calls.get(&call).ok_or(SipError::UnknownCall(call))?;
        let Some(offer) = c.offer.as_ref().filter(|_| c.phase == Phase::Offered) else {
            return Err(SipError::InvalidState {
                call,
                action: "forward",
                state: c.phase.describe(),
            });
        };
        if target == self.config.local_addr {
            return self.refuse_call(call, 482, "Loop Detected: forwarded to itself", None, now);
        }
        let Ok(fields) = message::check_request(offer) else {
            return self.refuse_call(call, 500, "the INVITE cannot be forwarded", None, now);
        };
        let sent = forward::request(
            offer,
            &fields,
            c.peer,
            c.transport,
            self.config.local_addr,
            self.config.rng_seed,
            target,
        );
        let transmit = match sent {
            Ok(t) => t,
            Err(_) => return self.refuse_call(call, 483, "", None, now),
        };
        let expires = now + self.config.timers.timeout();
        self.routes.insert(&fields, target, now, expires);
        self.routes_sweep.get_or_insert(expires);
        self.stats.forwarded_requests += 1;
        self.transmits.push_back(transmit);
        // Its transaction goes silently: the target answers the INVITE from now on.
        self.server.remove(&c.invite_key);
        self.end_call(call, CallEnd::Forwarded);
        Ok(())
    }

    fn refuse_call(
        &mut self,
        call: CallId,
        code: u16,
        reason: &str,
        contact: Option<String>,
        now: Instant,
    ) -> Result<(), SipError> {
        let c = self.calls.get(&call).ok_or(SipError::UnknownCall(call))?;
        if c.phase != Phase::Offered {
            return Err(SipError::InvalidState {
                call,
                action: "reject",
                state: c.phase.describe(),
            });
        }
        let text = if reason.is_empty() {
            message::default_reason(code)
        } else {
            reason
        };
        let mut extra = vec![(
            "Reason",
            format!("SIP ;cause={code} ;text={}", message::quote(text)),
        )];
        if let Some(contact) = contact {
            extra.push(("Contact", contact));
        }
        let bytes = c.invite_reply.build(
            code,
            text,
            Some(&c.local_tag),
            &self.config.user_agent,
            &extra,
            None,
        );
        if let Some(entry) = self.server.get_mut(&c.invite_key) {
            if let Some(t) = entry.tx.respond(now, code, bytes) {
                self.transmits.push_back(t);
            }
            entry.call = None;
        }
        self.end_call(call, CallEnd::Rejected { code });
        Ok(())
    }

    /// Answers the pending re-INVITE of a call (see [`CallEvent::Reoffer`]): `Ok(sdp)` sends
    /// 200 OK (retransmitted until ACK), `Err((code, reason))` a 3xx–6xx final response (for
    /// example 488); the call goes on either way.
    pub fn answer_update(
        &mut self,
        call: CallId,
        sdp_answer: Result<&str, (u16, &str)>,
        now: Instant,
    ) -> Result<(), SipError> {
        if let Err((code, _)) = sdp_answer {
            if !(300..=699).contains(&code) {
                return Err(SipError::InvalidStatus(code));
            }
        }
        let timers = self.config.timers;
        let local_addr = self.config.local_addr;
        let c = self
            .calls
            .get_mut(&call)
            .ok_or(SipError::UnknownCall(call))?;
        let pending = c.reoffer.take().ok_or(SipError::InvalidState {
            call,
            action: "answer a re-INVITE",
            state: "no re-INVITE is pending",
        })?;
        let (code, bytes) = match sdp_answer {
            Ok(sdp) => {
                c.session_timer = pending.session_expires.map(|s| SessionTimer::start(s, now));
                let mut extra = vec![
                    ("Contact", c.contact(local_addr)),
                    ("Allow", ALLOW.to_string()),
                ];
                extra.extend(c.session_timer.iter().flat_map(SessionTimer::headers));
                let bytes = pending.reply.build(
                    200,
                    "OK",
                    Some(&c.local_tag),
                    &self.config.user_agent,
                    &extra,
                    Some(("application/sdp", sdp.as_bytes())),
                );
                c.ok = Some(OkRetransmit::new(
                    bytes.clone(),
                    now,
                    timers,
                    pending.cseq,
                    false,
                ));
                c.local_sdp = Some(sdp.to_string());
                (200, bytes)
            }
            Err((code, reason)) => {
                let bytes = pending.reply.build(
                    code,
                    reason,
                    Some(&c.local_tag),
                    &self.config.user_agent,
                    &[],
                    None,
                );
                (code, bytes)
            }
        };
        if let Some(entry) = self.server.get_mut(&pending.key) {
            if let Some(t) = entry.tx.respond(now, code, bytes) {
                self.transmits.push_back(t);
            }
        }
        Ok(())
    }

    /// Ends an answered call with BYE (a non-INVITE client transaction: timer E retransmits on
    /// UDP, timer F gives up). The call ends with [`CallEnd::LocalBye`] on any final response,
    /// [`CallEnd::ByeTimeout`] without one. Before the ACK of our 200 arrives the BYE is held
    /// back until it does (RFC 3261 §15). An offered call is refused with `reject` instead.
    pub fn hangup(&mut self, call: CallId, now: Instant) -> Result<(), SipError> {
        let c = self
            .calls
            .get_mut(&call)
            .ok_or(SipError::UnknownCall(call))?;
        match c.phase {
            Phase::Offered | Phase::Terminating => Err(SipError::InvalidState {
                call,
                action: "hang up",
                state: c.phase.describe(),
            }),
            Phase::Answered => {
                c.hangup_requested = true;
                Ok(())
            }
            Phase::Confirmed => {
                self.send_bye(now, call, true);
                Ok(())
            }
        }
    }

    // -----------------------------------------------------------------------------------------

    fn random(&mut self) -> u64 {
        // SplitMix64.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn random_token(&mut self) -> String {
        format!("{:016x}", self.random())
    }

    fn end_call(&mut self, id: CallId, end: CallEnd) {
        if let Some(call) = self.calls.remove(&id) {
            self.dialogs.remove(&call.dialog_key());
            for entry in self.client.values_mut() {
                if entry.call == Some(id) {
                    entry.call = None;
                }
            }
            self.events.push_back(CallEvent::Ended { call: id, end });
        }
    }

    /// Sends BYE for a call (answering a pending re-INVITE with 487 first). With `track` the
    /// call waits in Terminating for the BYE's outcome; otherwise the BYE runs on its own.
    fn send_bye(&mut self, now: Instant, id: CallId, track: bool) {
        let branch = format!("{}{}", message::MAGIC_COOKIE, self.random_token());
        let local_addr = self.config.local_addr;
        let timers = self.config.timers;
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if let Some(pending) = c.reoffer.take() {
            let bytes = pending.reply.build(
                487,
                "",
                Some(&c.local_tag),
                &self.config.user_agent,
                &[],
                None,
            );
            if let Some(entry) = self.server.get_mut(&pending.key) {
                if let Some(t) = entry.tx.respond(now, 487, bytes) {
                    self.transmits.push_back(t);
                }
            }
        }
        let request = c.bye(&branch, local_addr, &self.config.user_agent);
        if track {
            c.phase = Phase::Terminating;
            c.ok = None;
        }
        let (tx, first) = ClientTransaction::start(now, request, timers);
        self.transmits.push_back(first);
        self.client.insert(
            branch,
            ClientEntry {
                tx,
                call: track.then_some(id),
            },
        );
    }

    fn on_ok_timer(&mut self, now: Instant, id: CallId) {
        let t2 = self.config.timers.t2;
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(ok) = c.ok.as_mut() else {
            return;
        };
        if ok.give_up <= now {
            c.ok = None;
            self.send_bye(now, id, false);
            self.end_call(id, CallEnd::AckTimeout);
            return;
        }
        if ok.next <= now {
            ok.interval = (ok.interval * 2).min(t2);
            ok.next = now + ok.interval;
            let transmit = Transmit {
                transport: c.transport,
                destination: c.peer,
                bytes: ok.bytes.clone(),
            };
            self.transmits.push_back(transmit);
        }
    }

    fn on_framing_error(&mut self, transport: Transport, source: SocketAddr, error: FramingError) {
        let request = match error.head.map(|h| (*h).into_message(Vec::new())) {
            Some(Message::Request(request)) if *request.method() != Method::Ack => request,
            _ => {
                self.stats.unparseable += 1;
                return;
            }
        };
        self.stats.malformed_requests += 1;
        let Some(reply) = Reply::new(&request, transport, source) else {
            self.stats.unparseable += 1;
            return;
        };
        let tag = self.random_token();
        let reason = capitalise(&error.error.to_string());
        let bytes = reply.build(
            error.status,
            &reason,
            Some(&tag),
            &self.config.user_agent,
            &[],
            None,
        );
        self.transmits.push_back(reply.transmit(bytes));
    }

    fn on_message(
        &mut self,
        now: Instant,
        transport: Transport,
        source: SocketAddr,
        message: Message,
    ) {
        match message {
            Message::Response(response) => self.on_response(now, response),
            Message::Request(request) => self.on_request(now, transport, source, request),
        }
    }

    fn on_response(&mut self, now: Instant, response: Response) {
        if forward::is_ours(&response) {
            match forward::response(&response, self.config.rng_seed) {
                Ok(t) => {
                    self.stats.relayed_responses += 1;
                    self.transmits.push_back(t);
                }
                Err(_) => self.stats.unrelayable_responses += 1,
            }
            return;
        }
        let branch = message::parse_vias(&response.headers)
            .ok()
            .and_then(|vias| vias.first().and_then(|v| v.branch().map(str::to_string)));
        let is_bye = response
            .headers
            .single("CSeq")
            .ok()
            .flatten()
            .and_then(|v| message::parse_cseq(v).ok())
            .is_some_and(|cseq| cseq.method == Method::Bye);
        let entry = branch.and_then(|b| self.client.get_mut(&b));
        let (Some(entry), true, true) = (
            entry,
            is_bye,
            response.status.version.eq_ignore_ascii_case("SIP/2.0"),
        ) else {
            self.stats.stray_responses += 1;
            return;
        };
        if let Some(ClientEvent::Final(_)) = entry.tx.on_response(now, response.status.code) {
            if let Some(id) = entry.call.take() {
                self.end_call(id, CallEnd::LocalBye);
            }
        }
    }

    fn on_request(
        &mut self,
        now: Instant,
        transport: Transport,
        source: SocketAddr,
        request: Request,
    ) {
        let method = request.method().clone();
        let fields = match message::check_request(&request) {
            Ok(fields) => fields,
            Err(error) => {
                if method == Method::Ack {
                    self.stats.stray_acks += 1;
                    return;
                }
                let code = if error == ParseError::Version {
                    505
                } else {
                    400
                };
                self.stats.malformed_requests += 1;
                self.respond_stateless(
                    &request,
                    transport,
                    source,
                    code,
                    &capitalise(&error.to_string()),
                );
                return;
            }
        };
        let Some(key) = TransactionKey::for_request(&request, &fields) else {
            self.stats.unparseable += 1;
            return;
        };
        if self.routes.len() > 0 && self.follow_route(now, &request, &fields, transport, source) {
            return;
        }
        if method == Method::Ack {
            self.on_ack(now, &request, &fields, &key);
            return;
        }
        if let Some(entry) = self.server.get(&key) {
            self.stats.retransmissions += 1;
            if let Some(t) = entry.tx.on_request_retransmission() {
                self.transmits.push_back(t);
            }
            return;
        }
        let Some(reply) = Reply::new(&request, transport, source) else {
            self.stats.unparseable += 1;
            return;
        };
        let kind = if method == Method::Invite {
            ServerKind::Invite
        } else {
            ServerKind::NonInvite
        };
        if self.server.len() >= MAX_SERVER_TRANSACTIONS {
            let tag = self.random_token();
            let bytes = reply.build(503, "", Some(&tag), &self.config.user_agent, &[], None);
            self.transmits.push_back(reply.transmit(bytes));
            return;
        }
        if let Err(refusal) = policy(&request, &fields) {
            self.refuse(now, key, kind, &reply, refusal, None);
            return;
        }
        match method {
            Method::Cancel => self.on_cancel(now, key, &reply),
            _ if fields.to.tag().is_some() => {
                self.on_in_dialog(now, key, reply, &request, &fields, source)
            }
            Method::Invite => {
                self.on_new_invite(now, key, reply, &request, &fields, transport, source)
            }
            Method::Options => {
                let tag = self.random_token();
                self.respond_options(now, key, &reply, &tag);
            }
            _ => self.refuse(
                now,
                key,
                kind,
                &reply,
                Refusal::new(481, "No dialog for this request"),
                None,
            ),
        }
    }

    /// Sends a request of a forwarded call where its INVITE went (see [`Endpoint::forward`]);
    /// false when its call was not forwarded (or its route has expired).
    fn follow_route(
        &mut self,
        now: Instant,
        request: &Request,
        fields: &RequestFields,
        transport: Transport,
        source: SocketAddr,
    ) -> bool {
        let expires = now + self.config.timers.timeout();
        let Some(target) = self.routes.follow(fields, now, expires) else {
            return false;
        };
        let local = self.config.local_addr;
        match forward::request(
            request,
            fields,
            source,
            transport,
            local,
            self.config.rng_seed,
            target,
        ) {
            Ok(t) => {
                self.stats.forwarded_requests += 1;
                self.transmits.push_back(t);
            }
            Err(_) if *request.method() == Method::Ack => {}
            Err(_) => self.respond_stateless(request, transport, source, 483, ""),
        }
        true
    }

    fn respond_stateless(
        &mut self,
        request: &Request,
        transport: Transport,
        source: SocketAddr,
        code: u16,
        reason: &str,
    ) {
        let Some(reply) = Reply::new(request, transport, source) else {
            self.stats.unparseable += 1;
            return;
        };
        let tag = self.random_token();
        let bytes = reply.build(code, reason, Some(&tag), &self.config.user_agent, &[], None);
        self.transmits.push_back(reply.transmit(bytes));
    }

    /// Answers a request with a final error through a new server transaction.
    fn refuse(
        &mut self,
        now: Instant,
        key: TransactionKey,
        kind: ServerKind,
        reply: &Reply,
        refusal: Refusal,
        to_tag: Option<&str>,
    ) {
        let tag = match to_tag {
            Some(tag) => tag.to_string(),
            None => self.random_token(),
        };
        let bytes = reply.build(
            refusal.code,
            &refusal.reason,
            Some(&tag),
            &self.config.user_agent,
            &refusal.headers,
            None,
        );
        self.respond_new(now, key, kind, reply, refusal.code, bytes, None);
    }

    #[allow(clippy::too_many_arguments)]
    fn respond_new(
        &mut self,
        now: Instant,
        key: TransactionKey,
        kind: ServerKind,
        reply: &Reply,
        code: u16,
        bytes: Vec<u8>,
        call: Option<CallId>,
    ) {
        let mut tx =
            ServerTransaction::new(kind, reply.transport, reply.destination, self.config.timers);
        if let Some(t) = tx.respond(now, code, bytes) {
            self.transmits.push_back(t);
        }
        self.server.insert(key, ServerEntry { tx, call });
    }

    fn respond_options(&mut self, now: Instant, key: TransactionKey, reply: &Reply, tag: &str) {
        let extra = [
            ("Allow", ALLOW.to_string()),
            ("Accept", "application/sdp".to_string()),
            ("Supported", String::new()),
            (
                "Contact",
                contact_for(reply.transport, self.config.local_addr),
            ),
        ];
        let bytes = reply.build(200, "OK", Some(tag), &self.config.user_agent, &extra, None);
        self.respond_new(now, key, ServerKind::NonInvite, reply, 200, bytes, None);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        request: &Request,
        fields: &RequestFields,
        key: &TransactionKey,
    ) {
        if let Some(entry) = self.server.get_mut(key) {
            if entry.tx.kind() == ServerKind::Invite && entry.tx.on_ack(now) {
                return;
            }
        }
        if let Some(to_tag) = fields.to.tag() {
            let dialog = DialogKey {
                call_id: fields.call_id.clone(),
                local_tag: to_tag.to_string(),
                remote_tag: fields.from.tag().unwrap_or_default().to_string(),
            };
            if let Some(&id) = self.dialogs.get(&dialog) {
                let Some(c) = self.calls.get_mut(&id) else {
                    return;
                };
                let Some(ok) = c.ok.as_ref().filter(|ok| ok.cseq == fields.cseq.seq) else {
                    // A retransmitted ACK, or one for an older 2xx.
                    return;
                };
                let initial = ok.initial;
                c.ok = None;
                if initial {
                    c.phase = Phase::Confirmed;
                    let ack_sdp = (!request.body.is_empty())
                        .then(|| String::from_utf8_lossy(&request.body).into_owned());
                    let hangup = c.hangup_requested;
                    self.events
                        .push_back(CallEvent::Established { call: id, ack_sdp });
                    if hangup {
                        self.send_bye(now, id, true);
                    }
                }
                return;
            }
        }
        self.stats.stray_acks += 1;
    }

    fn on_cancel(&mut self, now: Instant, key: TransactionKey, reply: &Reply) {
        let invite_key = key.for_method("INVITE");
        let Some((state, call)) = self.server.get(&invite_key).map(|e| (e.tx.state(), e.call))
        else {
            self.refuse(
                now,
                key,
                ServerKind::NonInvite,
                reply,
                Refusal::new(481, "No transaction to cancel"),
                None,
            );
            return;
        };
        let local_tag = call
            .and_then(|id| self.calls.get(&id))
            .map(|c| c.local_tag.clone())
            .unwrap_or_else(|| self.random_token());
        let bytes = reply.build(
            200,
            "OK",
            Some(&local_tag),
            &self.config.user_agent,
            &[],
            None,
        );
        self.respond_new(now, key, ServerKind::NonInvite, reply, 200, bytes, None);
        if state != ServerState::Proceeding {
            // Too late: the INVITE already has its final response; the CANCEL has no effect.
            return;
        }
        let Some(id) = call else {
            return;
        };
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let cancelled_reply = if c.phase == Phase::Offered && c.invite_key == invite_key {
            Some((c.invite_reply.clone(), true))
        } else if c.reoffer.as_ref().is_some_and(|p| p.key == invite_key) {
            c.reoffer.take().map(|p| (p.reply, false))
        } else {
            None
        };
        let Some((cancelled, initial)) = cancelled_reply else {
            return;
        };
        let bytes = cancelled.build(
            487,
            "",
            Some(&local_tag),
            &self.config.user_agent,
            &[],
            None,
        );
        if let Some(entry) = self.server.get_mut(&invite_key) {
            if let Some(t) = entry.tx.respond(now, 487, bytes) {
                self.transmits.push_back(t);
            }
            entry.call = None;
        }
        if initial {
            self.end_call(id, CallEnd::Cancelled);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_new_invite(
        &mut self,
        now: Instant,
        key: TransactionKey,
        reply: Reply,
        request: &Request,
        fields: &RequestFields,
        transport: Transport,
        source: SocketAddr,
    ) {
        let remote_tag = fields.from.tag().unwrap_or_default().to_string();
        let same_invite = self.calls.values().find(|c| {
            c.call_id == fields.call_id
                && c.remote_tag == remote_tag
                && c.invite_cseq == fields.cseq.seq
        });
        if same_invite.is_some_and(|c| c.invite_key == key) {
            // A retransmission arriving after its transaction ended (timer L): the call's own
            // 2xx retransmissions answer it.
            self.stats.retransmissions += 1;
            return;
        }
        if same_invite.is_some() {
            self.refuse(
                now,
                key,
                ServerKind::Invite,
                &reply,
                Refusal::new(482, ""),
                None,
            );
            return;
        }
        let remote_target = match fields.contacts.first() {
            Some(contact) if contact.uri == "*" => {
                let refusal = Refusal::new(400, "Malformed Contact header: * in an INVITE");
                self.refuse(now, key, ServerKind::Invite, &reply, refusal, None);
                return;
            }
            Some(contact) => contact.uri.clone(),
            None => fields.from.uri.clone(),
        };
        // Our BYE goes to this URI, without its headers part: one that is not a URI then would
        // make a BYE no peer can parse.
        if let Err(why) = message::check_uri(message::strip_uri_headers(&remote_target)) {
            let header = if fields.contacts.is_empty() {
                "From"
            } else {
                "Contact"
            };
            let refusal = Refusal::new(400, format!("Malformed {header} header: {why}"));
            self.refuse(now, key, ServerKind::Invite, &reply, refusal, None);
            return;
        }
        let session_expires = match timer::asked(&request.headers) {
            Asked::Nothing => None,
            Asked::Interval(seconds) => Some(seconds),
            Asked::TooSmall => {
                let refusal = Refusal::new(422, "").with("Min-SE", MIN_SE.to_string());
                self.refuse(now, key, ServerKind::Invite, &reply, refusal, None);
                return;
            }
        };
        let id = CallId(self.next_call);
        self.next_call += 1;
        let local_tag = self.random_token();
        let trying = reply.build(100, "Trying", None, &self.config.user_agent, &[], None);
        self.respond_new(
            now,
            key.clone(),
            ServerKind::Invite,
            &reply,
            100,
            trying,
            Some(id),
        );
        let headers = &request.headers;
        let call = Call {
            id,
            phase: Phase::Offered,
            transport,
            peer: source,
            call_id: fields.call_id.clone(),
            local_tag,
            remote_tag,
            local_party: headers.get("To").unwrap_or_default().to_string(),
            remote_party: headers.get("From").unwrap_or_default().to_string(),
            remote_target,
            route_set: fields.record_route.iter().map(|r| r.uri.clone()).collect(),
            remote_cseq: fields.cseq.seq,
            local_cseq: 0,
            invite_cseq: fields.cseq.seq,
            invite_key: key,
            invite_reply: reply,
            offer: Some(Box::new(request.clone())),
            ok: None,
            reoffer: None,
            hangup_requested: false,
            local_sdp: None,
            session_expires,
            session_timer: None,
        };
        self.calls.insert(id, call);
        let user_to_user = headers
            .iter()
            .filter(|h| uui::is_uui_header(&h.name))
            .map(|h| h.value.clone())
            .collect();
        self.events.push_back(CallEvent::Incoming {
            call: id,
            source,
            transport,
            request_uri: request.line.uri.clone(),
            from: fields.from.uri.clone(),
            to: fields.to.uri.clone(),
            sip_call_id: fields.call_id.clone(),
            user_to_user,
            sdp_offer: body_text(request),
        });
    }

    fn on_in_dialog(
        &mut self,
        now: Instant,
        key: TransactionKey,
        reply: Reply,
        request: &Request,
        fields: &RequestFields,
        source: SocketAddr,
    ) {
        let method = request.method();
        let kind = if *method == Method::Invite {
            ServerKind::Invite
        } else {
            ServerKind::NonInvite
        };
        let dialog = DialogKey {
            call_id: fields.call_id.clone(),
            local_tag: fields.to.tag().unwrap_or_default().to_string(),
            remote_tag: fields.from.tag().unwrap_or_default().to_string(),
        };
        let Some(id) = self
            .dialogs
            .get(&dialog)
            .copied()
            .filter(|id| self.calls.contains_key(id))
        else {
            self.refuse(
                now,
                key,
                kind,
                &reply,
                Refusal::new(481, ""),
                to_tag_of(fields),
            );
            return;
        };
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let local_tag = c.local_tag.clone();
        if fields.cseq.seq <= c.remote_cseq {
            let refusal = Refusal::new(500, "CSeq out of order");
            self.refuse(now, key, kind, &reply, refusal, Some(&local_tag));
            return;
        }
        c.remote_cseq = fields.cseq.seq;
        c.peer = source;
        match method {
            Method::Bye => {
                let end = if c.phase == Phase::Terminating {
                    CallEnd::LocalBye
                } else {
                    CallEnd::RemoteBye
                };
                if let Some(pending) = c.reoffer.take() {
                    let bytes = pending.reply.build(
                        487,
                        "",
                        Some(&local_tag),
                        &self.config.user_agent,
                        &[],
                        None,
                    );
                    if let Some(entry) = self.server.get_mut(&pending.key) {
                        if let Some(t) = entry.tx.respond(now, 487, bytes) {
                            self.transmits.push_back(t);
                        }
                    }
                }
                let bytes = reply.build(
                    200,
                    "OK",
                    Some(&local_tag),
                    &self.config.user_agent,
                    &[],
                    None,
                );
                self.respond_new(now, key, kind, &reply, 200, bytes, None);
                self.end_call(id, end);
            }
            Method::Invite => self.on_reinvite(now, key, reply, request, fields, id),
            Method::Options => self.respond_options(now, key, &reply, &local_tag),
            _ => {
                let bytes = reply.build(
                    200,
                    "OK",
                    Some(&local_tag),
                    &self.config.user_agent,
                    &[],
                    None,
                );
                self.respond_new(now, key, kind, &reply, 200, bytes, None);
            }
        }
    }

    fn on_reinvite(
        &mut self,
        now: Instant,
        key: TransactionKey,
        reply: Reply,
        request: &Request,
        fields: &RequestFields,
        id: CallId,
    ) {
        let timers = self.config.timers;
        let local_addr = self.config.local_addr;
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        let local_tag = c.local_tag.clone();
        let asked = timer::asked(&request.headers);
        let refusal = match c.phase {
            Phase::Terminating => Some(Refusal::new(481, "Call is being terminated")),
            _ if c.reoffer.is_some() || c.ok.is_some() => Some(Refusal::new(491, "")),
            _ if asked == Asked::TooSmall => {
                Some(Refusal::new(422, "").with("Min-SE", MIN_SE.to_string()))
            }
            _ => None,
        };
        let session_expires = match asked {
            Asked::Interval(seconds) => Some(seconds),
            Asked::Nothing | Asked::TooSmall => None,
        };
        if let Some(refusal) = refusal {
            self.refuse(
                now,
                key,
                ServerKind::Invite,
                &reply,
                refusal,
                Some(&local_tag),
            );
            return;
        }
        let trying = reply.build(100, "Trying", None, &self.config.user_agent, &[], None);
        self.respond_new(
            now,
            key.clone(),
            ServerKind::Invite,
            &reply,
            100,
            trying,
            Some(id),
        );
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        match body_text(request) {
            Some(sdp_offer) => {
                c.reoffer = Some(PendingReoffer {
                    key,
                    reply,
                    cseq: fields.cseq.seq,
                    session_expires,
                });
                self.events.push_back(CallEvent::Reoffer {
                    call: id,
                    sdp_offer,
                });
            }
            None => {
                // Offerless re-INVITE (a session refresh): offer our current session again.
                let sdp = c.local_sdp.clone().unwrap_or_default();
                c.session_timer = session_expires.map(|s| SessionTimer::start(s, now));
                let mut extra = vec![
                    ("Contact", c.contact(local_addr)),
                    ("Allow", ALLOW.to_string()),
                ];
                extra.extend(c.session_timer.iter().flat_map(SessionTimer::headers));
                let bytes = reply.build(
                    200,
                    "OK",
                    Some(&local_tag),
                    &self.config.user_agent,
                    &extra,
                    Some(("application/sdp", sdp.as_bytes())),
                );
                c.ok = Some(OkRetransmit::new(
                    bytes.clone(),
                    now,
                    timers,
                    fields.cseq.seq,
                    false,
                ));
                if let Some(entry) = self.server.get_mut(&key) {
                    if let Some(t) = entry.tx.respond(now, 200, bytes) {
                        self.transmits.push_back(t);
                    }
                }
            }
        }
    }
}

/// The policy checks after the syntax checks (see the module documentation for the order).
fn policy(request: &Request, fields: &RequestFields) -> Result<(), Refusal> {
    let method = request.method();
    if !method.is_known() {
        return Err(Refusal::new(501, "").with("Allow", ALLOW));
    }
    let served = matches!(
        method,
        Method::Invite
            | Method::Ack
            | Method::Cancel
            | Method::Bye
            | Method::Options
            | Method::Info
    );
    if !served {
        return Err(Refusal::new(405, "").with("Allow", ALLOW));
    }
    if !matches!(fields.uri_scheme.as_str(), "sip" | "sips" | "tel") {
        return Err(Refusal::new(416, ""));
    }
    if fields.max_forwards == Some(0) && *method != Method::Options {
        return Err(Refusal::new(483, ""));
    }
    if *method != Method::Cancel {
        let required: Vec<String> = request
            .headers
            .get_all("Require")
            .flat_map(|v| message::parse_token_list(v).unwrap_or_else(|_| vec![v.to_string()]))
            .collect();
        // `timer` (RFC 4028) alone is supported; with any other tag, all are listed.
        if required
            .iter()
            .any(|tag| !tag.eq_ignore_ascii_case("timer"))
        {
            return Err(Refusal::new(420, "").with("Unsupported", required.join(", ")));
        }
    }
    if *method == Method::Invite {
        let encoded = request
            .headers
            .get_all("Content-Encoding")
            .any(|v| !message::trim_lws(v).eq_ignore_ascii_case("identity"));
        let content_type = request
            .headers
            .get("Content-Type")
            .and_then(message::media_type);
        let is_sdp = content_type
            .as_ref()
            .is_some_and(|(ty, sub)| ty == "application" && sub == "sdp");
        if encoded || (!request.body.is_empty() && !is_sdp) {
            return Err(Refusal::new(415, "")
                .with("Accept", "application/sdp")
                .with("Accept-Encoding", "identity"));
        }
        if !message::accepts_sdp(&request.headers) {
            return Err(Refusal::new(
                406,
                "Not Acceptable: responses carry application/sdp",
            ));
        }
    }
    Ok(())
}

fn to_tag_of(fields: &RequestFields) -> Option<&str> {
    fields.to.tag()
}

fn body_text(request: &Request) -> Option<String> {
    (!request.body.is_empty()).then(|| String::from_utf8_lossy(&request.body).into_owned())
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
