//! RFC 3261 §17 transactions, sans-IO, with the timers named as in the RFC: the INVITE server
//! transaction (timers G, H, I, plus L from RFC 6026 for the "Accepted" state), the non-INVITE
//! server transaction (timer J) and the non-INVITE client transaction used for our BYE (timers
//! E, F, K). On a reliable transport the retransmission timers (G, E) are not used and the
//! absorption timers (I, J, K) are zero.
//!
//! Transactions hold the last response (or the request) as bytes and their destination; they
//! never parse. The endpoint finds them by [`TransactionKey`] (RFC 3261 §17.2.3 matching, with
//! the RFC 2543 fallback for requests whose branch lacks the magic cookie).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::message::{Method, Request, RequestFields};
use crate::transport::{Transmit, Transport};

/// The protocol timers (RFC 3261 Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// Round-trip estimate, default 500 ms.
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE responses, default 4 s.
    pub t2: Duration,
    /// Longest time a message stays in the network, default 5 s.
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl Timers {
    /// 64·T1: timers B, F, H, J and L.
    pub fn timeout(&self) -> Duration {
        self.t1.saturating_mul(64)
    }
}

/// Identifies a server transaction (RFC 3261 §17.2.3). ACK uses the INVITE's key; CANCEL has its
/// own key and finds the INVITE it cancels with [`TransactionKey::for_method`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransactionKey {
    /// Branch with the magic cookie: branch, sent-by and method.
    Rfc3261 {
        /// The top Via branch.
        branch: String,
        /// The top Via sent-by, lower-cased.
        sent_by: String,
        /// The method (INVITE for ACK).
        method: String,
    },
    /// RFC 2543 peers: Request-URI, From tag, Call-ID, CSeq number, top Via and method.
    Rfc2543 {
        /// The Request-URI.
        request_uri: String,
        /// The From tag, empty if none.
        from_tag: String,
        /// The Call-ID.
        call_id: String,
        /// The CSeq number.
        cseq: u32,
        /// The top via-parm as received.
        top_via: String,
        /// The method (INVITE for ACK).
        method: String,
    },
}

impl TransactionKey {
    /// The key of the server transaction a request belongs to. `None` without a Via.
    pub fn for_request(request: &Request, fields: &RequestFields) -> Option<Self> {
        let top = fields.vias.first()?;
        let method = match request.method() {
            Method::Ack => "INVITE".to_string(),
            other => other.as_str().to_string(),
        };
        Some(match top.branch() {
            Some(branch) if top.has_rfc3261_branch() => Self::Rfc3261 {
                branch: branch.to_string(),
                sent_by: top.sent_by(),
                method,
            },
            _ => Self::Rfc2543 {
                request_uri: request.line.uri.clone(),
                from_tag: fields.from.tag().unwrap_or_default().to_string(),
                call_id: fields.call_id.clone(),
                cseq: fields.cseq.seq,
                top_via: top.raw.clone(),
                method,
            },
        })
    }

    /// The same key for another method (a CANCEL looks for its INVITE).
    pub fn for_method(&self, method: &str) -> Self {
        let mut key = self.clone();
        match &mut key {
            Self::Rfc3261 { method: m, .. } | Self::Rfc2543 { method: m, .. } => {
                *m = method.to_string();
            }
        }
        key
    }
}

/// Which kind of server transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// INVITE server transaction (§17.2.1).
    Invite,
    /// Non-INVITE server transaction (§17.2.2).
    NonInvite,
}

/// Server transaction states. Non-INVITE transactions use Proceeding for "Trying/Proceeding".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// No final response yet.
    Proceeding,
    /// A final response was sent (non-2xx for INVITE).
    Completed,
    /// INVITE only: the ACK for the non-2xx final arrived.
    Confirmed,
    /// INVITE only (RFC 6026): a 2xx was sent; the dialog retransmits it, we absorb INVITE
    /// retransmissions until timer L.
    Accepted,
    /// Done; remove it.
    Terminated,
}

/// What a server transaction reports when its timers fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTimeout {
    /// Timer G: the final response was retransmitted.
    Retransmitted(Transmit),
    /// Timer H: no ACK arrived for the non-2xx final response.
    AckTimeout,
    /// Timer I, J or L: the transaction is over.
    Terminated,
}

/// A server transaction.
#[derive(Debug, Clone)]
pub struct ServerTransaction {
    kind: ServerKind,
    state: ServerState,
    transport: Transport,
    destination: SocketAddr,
    timers: Timers,
    last_response: Option<Vec<u8>>,
    timer_g: Option<Instant>,
    g_interval: Duration,
    timer_h: Option<Instant>,
    /// Timers I, J and L: the instant the transaction ends on its own.
    timer_end: Option<Instant>,
}

impl ServerTransaction {
    /// A new transaction for a request that came from `destination` over `transport`.
    pub fn new(
        kind: ServerKind,
        transport: Transport,
        destination: SocketAddr,
        timers: Timers,
    ) -> Self {
        Self {
            kind,
            state: ServerState::Proceeding,
            transport,
            destination,
            timers,
            last_response: None,
            timer_g: None,
            g_interval: timers.t1,
            timer_h: None,
            timer_end: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// The kind.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// How the request arrived.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    fn transmit(&self, bytes: Vec<u8>) -> Transmit {
        Transmit {
            transport: self.transport,
            destination: self.destination,
            bytes,
        }
    }

    /// Sends a response through the transaction: returns the transmit, or `None` if the
    /// transaction already has a final response (a second final is refused).
    pub fn respond(&mut self, now: Instant, code: u16, bytes: Vec<u8>) -> Option<Transmit> {
        if self.state != ServerState::Proceeding {
            return None;
        }
        self.last_response = Some(bytes.clone());
        let reliable = self.transport.is_reliable();
        match (self.kind, code) {
            (_, 100..=199) => {}
            (ServerKind::Invite, 200..=299) => {
                self.state = ServerState::Accepted;
                self.timer_end = Some(now + self.timers.timeout());
            }
            (ServerKind::Invite, _) => {
                self.state = ServerState::Completed;
                if !reliable {
                    self.g_interval = self.timers.t1;
                    self.timer_g = Some(now + self.g_interval);
                }
                self.timer_h = Some(now + self.timers.timeout());
            }
            (ServerKind::NonInvite, _) => {
                self.state = ServerState::Completed;
                self.timer_end = Some(if reliable {
                    now
                } else {
                    now + self.timers.timeout()
                });
            }
        }
        Some(self.transmit(bytes))
    }

    /// A retransmission of the request arrived: the last response to send again, if any (none
    /// while Confirmed or Accepted, where retransmissions are absorbed).
    pub fn on_request_retransmission(&self) -> Option<Transmit> {
        match self.state {
            ServerState::Proceeding | ServerState::Completed => {
                self.last_response.clone().map(|bytes| self.transmit(bytes))
            }
            _ => None,
        }
    }

    /// An ACK matched this INVITE transaction. Returns whether it was absorbed here (Completed
    /// or Confirmed); in Accepted the ACK is for the 2xx and belongs to the dialog.
    pub fn on_ack(&mut self, now: Instant) -> bool {
        match self.state {
            ServerState::Completed => {
                self.state = ServerState::Confirmed;
                self.timer_g = None;
                self.timer_h = None;
                self.timer_end = Some(if self.transport.is_reliable() {
                    now
                } else {
                    now + self.timers.t4
                });
                true
            }
            ServerState::Confirmed => true,
            _ => false,
        }
    }

    /// The earliest instant a timer fires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.timer_g, self.timer_h, self.timer_end]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<ServerTimeout> {
        let mut out = Vec::new();
        if self.timer_h.is_some_and(|t| t <= now) {
            self.timer_h = None;
            self.timer_g = None;
            self.state = ServerState::Terminated;
            out.push(ServerTimeout::AckTimeout);
            return out;
        }
        if self.timer_g.is_some_and(|t| t <= now) {
            self.g_interval = (self.g_interval * 2).min(self.timers.t2);
            self.timer_g = Some(now + self.g_interval);
            if let Some(bytes) = self.last_response.clone() {
                out.push(ServerTimeout::Retransmitted(self.transmit(bytes)));
            }
        }
        if self.timer_end.is_some_and(|t| t <= now) {
            self.timer_end = None;
            self.state = ServerState::Terminated;
            out.push(ServerTimeout::Terminated);
        }
        out
    }
}

/// Client transaction states (§17.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Request sent, nothing heard.
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived; absorbing its retransmissions until timer K.
    Completed,
    /// Done.
    Terminated,
}

/// What a client transaction reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Timer E: the request was retransmitted.
    Retransmitted(Transmit),
    /// The first final response (its status code).
    Final(u16),
    /// Timer F: no final response.
    Timeout,
    /// Timer K: the transaction is over.
    Terminated,
}

/// A non-INVITE client transaction (our BYE).
#[derive(Debug, Clone)]
pub struct ClientTransaction {
    state: ClientState,
    request: Transmit,
    timers: Timers,
    timer_e: Option<Instant>,
    e_interval: Duration,
    timer_f: Option<Instant>,
    timer_k: Option<Instant>,
}

impl ClientTransaction {
    /// Starts the transaction: returns it and the first transmission of the request.
    pub fn start(now: Instant, request: Transmit, timers: Timers) -> (Self, Transmit) {
        let reliable = request.transport.is_reliable();
        let tx = Self {
            state: ClientState::Trying,
            request: request.clone(),
            timers,
            timer_e: (!reliable).then(|| now + timers.t1),
            e_interval: timers.t1,
            timer_f: Some(now + timers.timeout()),
            timer_k: None,
        };
        (tx, request)
    }

    /// The current state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// How the request is sent.
    pub fn transport(&self) -> Transport {
        self.request.transport
    }

    /// A response matched this transaction.
    pub fn on_response(&mut self, now: Instant, code: u16) -> Option<ClientEvent> {
        match (self.state, code) {
            (ClientState::Trying | ClientState::Proceeding, 100..=199) => {
                self.state = ClientState::Proceeding;
                None
            }
            (ClientState::Trying | ClientState::Proceeding, _) => {
                self.state = ClientState::Completed;
                self.timer_e = None;
                self.timer_f = None;
                self.timer_k = Some(if self.request.transport.is_reliable() {
                    now
                } else {
                    now + self.timers.t4
                });
                Some(ClientEvent::Final(code))
            }
            _ => None,
        }
    }

    /// The earliest instant a timer fires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.timer_e, self.timer_f, self.timer_k]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<ClientEvent> {
        let mut out = Vec::new();
        if self.timer_f.is_some_and(|t| t <= now) {
            self.timer_f = None;
            self.timer_e = None;
            self.state = ClientState::Terminated;
            out.push(ClientEvent::Timeout);
            return out;
        }
        if self.timer_e.is_some_and(|t| t <= now) {
            self.e_interval = match self.state {
                ClientState::Proceeding => self.timers.t2,
                _ => (self.e_interval * 2).min(self.timers.t2),
            };
            self.timer_e = Some(now + self.e_interval);
            out.push(ClientEvent::Retransmitted(self.request.clone()));
        }
        if self.timer_k.is_some_and(|t| t <= now) {
            self.timer_k = None;
            self.state = ClientState::Terminated;
            out.push(ClientEvent::Terminated);
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests start their virtual clock at the real time
mod tests {
    use super::*;

    fn dest() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], 5060))
    }

    #[test]
    fn invite_non_2xx_retransmits_with_timer_g_until_h() {
        let t0 = Instant::now();
        let timers = Timers::default();
        let mut tx = ServerTransaction::new(ServerKind::Invite, Transport::Udp, dest(), timers);
        assert!(tx.respond(t0, 486, b"486".to_vec()).is_some());
        assert!(tx.respond(t0, 500, b"500".to_vec()).is_none());
        let mut fired = Vec::new();
        while let Some(t) = tx.poll_timeout() {
            for event in tx.handle_timeout(t) {
                fired.push((t - t0, matches!(event, ServerTimeout::AckTimeout)));
            }
        }
        let ms: Vec<u128> = fired.iter().map(|(d, _)| d.as_millis()).collect();
        assert_eq!(
            ms,
            [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500, 32000]
        );
        assert!(fired.last().is_some_and(|(_, h)| *h));
        assert_eq!(tx.state(), ServerState::Terminated);
    }

    #[test]
    fn invite_ack_confirms_then_timer_i() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(
            ServerKind::Invite,
            Transport::Udp,
            dest(),
            Timers::default(),
        );
        tx.respond(t0, 404, b"404".to_vec());
        assert!(tx.on_ack(t0 + Duration::from_millis(100)));
        assert_eq!(tx.state(), ServerState::Confirmed);
        assert!(tx.on_request_retransmission().is_none());
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_millis(5100)));
        let mut tcp = ServerTransaction::new(
            ServerKind::Invite,
            Transport::Tcp(crate::transport::ConnectionId(1)),
            dest(),
            Timers::default(),
        );
        tcp.respond(t0, 404, b"404".to_vec());
        assert_eq!(tcp.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        tcp.on_ack(t0);
        assert_eq!(tcp.poll_timeout(), Some(t0));
    }

    #[test]
    fn non_invite_client_timer_e_and_f() {
        let t0 = Instant::now();
        let request = Transmit {
            transport: Transport::Udp,
            destination: dest(),
            bytes: b"BYE".to_vec(),
        };
        let (mut tx, _) = ClientTransaction::start(t0, request, Timers::default());
        let mut at = Vec::new();
        let mut timed_out = false;
        while let Some(t) = tx.poll_timeout() {
            for event in tx.handle_timeout(t) {
                match event {
                    ClientEvent::Retransmitted(_) => at.push((t - t0).as_millis()),
                    ClientEvent::Timeout => timed_out = true,
                    _ => {}
                }
            }
        }
        assert_eq!(
            at,
            [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert!(timed_out);
    }
}
