//! One call: its dialog state (RFC 3261 §12 as a UAS), the 2xx retransmission the UAS core
//! owns (§13.3.1.4), a pending re-INVITE, and the BYE we build to end it (§12.2.1.1, §15).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::reply::Reply;
use super::timer::SessionTimer;
use super::CallId;
use crate::message::{self, MessageWriter};
use crate::transaction::{Timers, TransactionKey};
use crate::transport::{Transmit, Transport};

/// Where a call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// INVITE received, the application has not decided.
    Offered,
    /// 200 OK sent, waiting for its ACK.
    Answered,
    /// ACK received: the call is up.
    Confirmed,
    /// We sent BYE and wait for its final response.
    Terminating,
}

impl Phase {
    pub(super) fn describe(self) -> &'static str {
        match self {
            Self::Offered => "not answered yet",
            Self::Answered => "waiting for the ACK",
            Self::Confirmed => "established",
            Self::Terminating => "hanging up",
        }
    }
}

/// Identifies a dialog: Call-ID, our tag, the peer's tag (empty for RFC 2543 peers).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct DialogKey {
    pub(super) call_id: String,
    pub(super) local_tag: String,
    pub(super) remote_tag: String,
}

/// A 2xx to an INVITE, retransmitted by the dialog from T1 doubling to T2 until its ACK
/// arrives, for at most 64·T1.
#[derive(Debug, Clone)]
pub(super) struct OkRetransmit {
    pub(super) bytes: Vec<u8>,
    pub(super) next: Instant,
    pub(super) interval: Duration,
    pub(super) give_up: Instant,
    /// CSeq of the INVITE it answers (its ACK carries the same number).
    pub(super) cseq: u32,
    /// Answers the dialog-creating INVITE (its ACK is reported as `Established`).
    pub(super) initial: bool,
}

impl OkRetransmit {
    pub(super) fn new(
        bytes: Vec<u8>,
        now: Instant,
        timers: Timers,
        cseq: u32,
        initial: bool,
    ) -> Self {
        Self {
            bytes,
            next: now + timers.t1,
            interval: timers.t1,
            give_up: now + timers.timeout(),
            cseq,
            initial,
        }
    }

    pub(super) fn deadline(&self) -> Instant {
        self.next.min(self.give_up)
    }
}

/// A re-INVITE waiting for the application's `answer_update`.
#[derive(Debug, Clone)]
pub(super) struct PendingReoffer {
    pub(super) key: TransactionKey,
    pub(super) reply: Reply,
    pub(super) cseq: u32,
    /// The session timer its 2xx keeps (seconds), if it asked for one.
    pub(super) session_expires: Option<u32>,
}

#[derive(Debug, Clone)]
pub(super) struct Call {
    pub(super) id: CallId,
    pub(super) phase: Phase,
    pub(super) transport: Transport,
    /// Where in-dialog requests come from; our requests go there (symmetric signalling).
    pub(super) peer: SocketAddr,
    pub(super) call_id: String,
    pub(super) local_tag: String,
    pub(super) remote_tag: String,
    /// The INVITE's To value: our From in requests we send.
    pub(super) local_party: String,
    /// The INVITE's From value (with the peer's tag): our To in requests we send.
    pub(super) remote_party: String,
    /// The Contact URI of the INVITE (the From URI for RFC 2543 peers without Contact).
    pub(super) remote_target: String,
    /// Record-Route URIs of the INVITE, in order.
    pub(super) route_set: Vec<String>,
    pub(super) remote_cseq: u32,
    pub(super) local_cseq: u32,
    pub(super) invite_cseq: u32,
    pub(super) invite_key: TransactionKey,
    pub(super) invite_reply: Reply,
    /// The INVITE itself while the application decides (it may forward it elsewhere).
    pub(super) offer: Option<Box<crate::message::Request>>,
    pub(super) ok: Option<OkRetransmit>,
    pub(super) reoffer: Option<PendingReoffer>,
    pub(super) hangup_requested: bool,
    pub(super) local_sdp: Option<String>,
    /// The session timer the INVITE asked for (seconds), started by `accept`.
    pub(super) session_expires: Option<u32>,
    /// The running session timer (RFC 4028).
    pub(super) session_timer: Option<SessionTimer>,
}

impl Call {
    pub(super) fn dialog_key(&self) -> DialogKey {
        DialogKey {
            call_id: self.call_id.clone(),
            local_tag: self.local_tag.clone(),
            remote_tag: self.remote_tag.clone(),
        }
    }

    /// Our Contact, on the transport the call uses.
    pub(super) fn contact(&self, local_addr: SocketAddr) -> String {
        contact_for(self.transport, local_addr)
    }

    /// Builds our BYE (RFC 3261 §12.2.1.1): Request-URI is the remote target, Route the route
    /// set; when the first route is a strict router (no `lr`), it becomes the Request-URI and the
    /// remote target goes last in Route.
    pub(super) fn bye(
        &mut self,
        branch: &str,
        local_addr: SocketAddr,
        user_agent: &str,
    ) -> Transmit {
        self.local_cseq = self.local_cseq.saturating_add(1);
        let strict = self
            .route_set
            .first()
            .is_some_and(|first| !message::uri_has_param(first, "lr"));
        let (request_uri, routes) = if strict {
            let mut routes: Vec<String> = self.route_set.iter().skip(1).cloned().collect();
            routes.push(self.remote_target.clone());
            (self.route_set.first().cloned().unwrap_or_default(), routes)
        } else {
            (self.remote_target.clone(), self.route_set.clone())
        };
        let mut w = MessageWriter::request("BYE", message::strip_uri_headers(&request_uri));
        w.header(
            "Via",
            &format!(
                "SIP/2.0/{} {};branch={};rport",
                self.transport.via_token(),
                local_addr,
                branch
            ),
        );
        w.header("Max-Forwards", "70");
        for route in &routes {
            w.header("Route", &format!("<{route}>"));
        }
        w.header(
            "From",
            &format!("{};tag={}", self.local_party, self.local_tag),
        );
        w.header("To", &self.remote_party);
        w.header("Call-ID", &self.call_id);
        w.header("CSeq", &format!("{} BYE", self.local_cseq));
        w.header("User-Agent", user_agent);
        Transmit {
            transport: self.transport,
            destination: self.peer,
            bytes: w.finish(&[]),
        }
    }
}

pub(super) fn contact_for(transport: Transport, local_addr: SocketAddr) -> String {
    match transport {
        Transport::Udp => format!("<sip:{local_addr}>"),
        Transport::Tcp(_) => format!("<sip:{local_addr};transport=tcp>"),
    }
}
