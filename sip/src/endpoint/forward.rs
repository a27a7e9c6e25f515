//! Forwarding a call to the process that hosts its session, as a stateless proxy (RFC 3261
//! §16.11): the application decides where an offered INVITE belongs, and from then on the
//! endpoint keeps no transaction for it. What it keeps is a *route*: the Call-ID and From tag
//! of the forwarded call and where it went, for 64·T1 after its last use, so that a
//! retransmitted INVITE, its CANCEL and the ACK of a non-2xx final answer follow it without
//! asking the application again. Responses come back through our Via and are relayed to the
//! next one; nothing else is remembered.
//!
//! Our Via's branch is a keyed hash of what identifies the caller's transaction (its top Via's
//! branch and sent-by, Call-ID, From tag, CSeq number, and the transport it came on), so that a
//! retransmission, a CANCEL and a non-2xx ACK get the same branch as their INVITE (the host
//! matches them to its transaction), and so that a response naming a branch we did not make
//! is not relayed anywhere (no reflection through us). Forwarded requests leave over UDP;
//! one that came over TCP carries its connection in our Via (`pbconn`, covered by the hash)
//! so that the answers go back on it. patchbay does not Record-Route: the caller's in-dialog
//! requests (the 2xx's ACK, BYE, re-INVITE) go to the host's Contact directly.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::reply;
use crate::message::{self, MessageWriter, Request, RequestFields, Response, Via};
use crate::transport::{ConnectionId, Transmit, Transport};

/// Our branches start with the magic cookie and this mark.
const MARK: &str = "z9hG4bKpbfw";

/// At most this many calls' routes are kept; beyond, a forwarded call's CANCEL or ACK is
/// answered by us instead (481 / dropped).
const MAX_ROUTES: usize = 65_536;

/// Where a forwarded call went, and until when its later requests follow it.
#[derive(Debug, Clone, Copy)]
struct Route {
    target: SocketAddr,
    expires: Instant,
}

/// The routes of forwarded calls, by Call-ID and From tag.
#[derive(Debug, Default)]
pub(super) struct Routes {
    map: HashMap<(String, String), Route>,
}

impl Routes {
    /// Remembers, at `now`, that the call of `fields` went to `target`, until `expires`.
    pub(super) fn insert(
        &mut self,
        fields: &RequestFields,
        target: SocketAddr,
        now: Instant,
        expires: Instant,
    ) {
        if self.map.len() >= MAX_ROUTES {
            self.expire(now);
            if self.map.len() >= MAX_ROUTES {
                return;
            }
        }
        self.map.insert(key(fields), Route { target, expires });
    }

    /// Where a request of a forwarded call goes (refreshing its route until `expires`), if
    /// its call was forwarded and the route has not expired at `now`.
    pub(super) fn follow(
        &mut self,
        fields: &RequestFields,
        now: Instant,
        expires: Instant,
    ) -> Option<SocketAddr> {
        let k = key(fields);
        match self.map.get_mut(&k) {
            Some(route) if route.expires > now => {
                route.expires = expires;
                Some(route.target)
            }
            Some(_) => {
                self.map.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Forgets the routes expired at `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        self.map.retain(|_, r| r.expires > now);
    }

    /// Number of routes kept.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

fn key(fields: &RequestFields) -> (String, String) {
    (
        fields.call_id.clone(),
        fields.from.tag().unwrap_or_default().to_string(),
    )
}

/// Why a forwarded request or a relayed response is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotForwarded {
    /// Max-Forwards reached 0 (RFC 3261 §16.3: 483).
    TooManyHops,
    /// The response's top Via is ours but its branch is not one we made.
    ForgedBranch,
    /// The response has no Via below ours, or its address cannot be read (a host name: this
    /// endpoint resolves nothing).
    NoReturnPath,
}

/// The branch of our Via for a request of the caller's transaction.
pub(super) fn branch(
    seed: u64,
    caller: &Via,
    fields_call_id: &str,
    from_tag: &str,
    cseq: u32,
    conn: Option<ConnectionId>,
) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut h);
    caller.branch().unwrap_or_default().hash(&mut h);
    caller.sent_by().hash(&mut h);
    fields_call_id.hash(&mut h);
    from_tag.hash(&mut h);
    cseq.hash(&mut h);
    conn.map(|c| c.0).hash(&mut h);
    format!("{MARK}{:016x}", h.finish())
}

/// Whether a response's top Via is one of ours (by its branch's mark).
pub(super) fn is_ours(response: &Response) -> bool {
    message::parse_vias(&response.headers)
        .ok()
        .and_then(|vias| {
            vias.first()
                .and_then(|v| v.branch().map(|b| b.starts_with(MARK)))
        })
        .unwrap_or(false)
}

/// The request as it is forwarded to `target` from `local` (our address in the Via): our Via
/// on top, the caller's top Via with `received`/`rport` filled in from `source`, Max-Forwards
/// decremented (70 when absent), everything else as received.
pub(super) fn request(
    request: &Request,
    fields: &RequestFields,
    source: SocketAddr,
    transport: Transport,
    local: SocketAddr,
    seed: u64,
    target: SocketAddr,
) -> Result<Transmit, NotForwarded> {
    let max_forwards = match fields.max_forwards {
        Some(0) => return Err(NotForwarded::TooManyHops),
        Some(n) => n - 1,
        None => 70,
    };
    let Some(caller) = fields.vias.first() else {
        return Err(NotForwarded::NoReturnPath);
    };
    let conn = match transport {
        Transport::Tcp(conn) => Some(conn),
        Transport::Udp => None,
    };
    let from_tag = fields.from.tag().unwrap_or_default();
    let branch = branch(
        seed,
        caller,
        &fields.call_id,
        from_tag,
        fields.cseq.seq,
        conn,
    );
    let mut ours = format!("SIP/2.0/UDP {local};branch={branch}");
    if let Some(conn) = conn {
        ours.push_str(&format!(";pbconn={}", conn.0));
    }
    let mut w = MessageWriter::request(request.method().as_str(), &request.line.uri);
    w.header("Via", &ours);
    w.header("Via", &reply::top_via(caller, source));
    for via in &fields.vias[1..] {
        w.header("Via", &via.raw);
    }
    w.header("Max-Forwards", &max_forwards.to_string());
    for header in request.headers.iter() {
        let skip = ["Via", "Max-Forwards", "Content-Length"]
            .iter()
            .any(|n| header.name.eq_ignore_ascii_case(n));
        if !skip {
            w.header(&header.name, &header.value);
        }
    }
    Ok(Transmit {
        transport: Transport::Udp,
        destination: target,
        bytes: w.finish(&request.body),
    })
}

/// The response relayed toward the caller: our Via removed, sent where the next Via says
/// (`received` and `rport` first), on the caller's TCP connection when it came over one.
pub(super) fn response(response: &Response, seed: u64) -> Result<Transmit, NotForwarded> {
    let vias = message::parse_vias(&response.headers).map_err(|_| NotForwarded::NoReturnPath)?;
    let (Some(ours), Some(caller)) = (vias.first(), vias.get(1)) else {
        return Err(NotForwarded::NoReturnPath);
    };
    let conn = match ours.param("pbconn") {
        Some(Some(n)) => Some(ConnectionId(
            n.parse().map_err(|_| NotForwarded::ForgedBranch)?,
        )),
        Some(None) => return Err(NotForwarded::ForgedBranch),
        None => None,
    };
    let headers = &response.headers;
    let call_id = headers.get("Call-ID").unwrap_or_default();
    let from_tag = headers
        .get("From")
        .and_then(|f| message::parse_name_addr(f).ok())
        .and_then(|f| f.tag().map(str::to_string))
        .unwrap_or_default();
    let cseq = headers
        .get("CSeq")
        .and_then(|c| message::parse_cseq(c).ok())
        .map(|c| c.seq)
        .unwrap_or_default();
    if ours.branch() != Some(branch(seed, caller, call_id, &from_tag, cseq, conn).as_str()) {
        return Err(NotForwarded::ForgedBranch);
    }
    let destination = return_address(caller).ok_or(NotForwarded::NoReturnPath)?;
    let mut w = MessageWriter::response(response.status.code, &response.status.reason);
    let mut skipped_ours = false;
    for header in headers.iter() {
        if header.name.eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        if header.name.eq_ignore_ascii_case("Via") && !skipped_ours {
            // Our Via is the first via-parm of the first Via field; the rest of that field
            // (when the host folded several into one) stays.
            skipped_ours = true;
            let rest: Vec<&str> = message::split_list(&header.value)
                .into_iter()
                .skip(1)
                .collect();
            if !rest.is_empty() {
                w.header("Via", &rest.join(", "));
            }
            continue;
        }
        w.header(&header.name, &header.value);
    }
    Ok(Transmit {
        transport: conn.map_or(Transport::Udp, Transport::Tcp),
        destination,
        bytes: w.finish(&response.body),
    })
}

/// Where responses for the sender of `via` go (RFC 3261 §18.2.2, RFC 3581): `received` or
/// the sent-by host (an address: nothing is resolved here), `rport` or the sent-by port, or
/// 5060.
fn return_address(via: &Via) -> Option<SocketAddr> {
    let host = match via.param("received") {
        Some(Some(received)) => received,
        _ => via.host.as_str(),
    };
    let ip: IpAddr = host.trim_matches(['[', ']']).parse().ok()?;
    let port = match via.param("rport") {
        Some(Some(port)) => port.parse().ok()?,
        _ => via.port.unwrap_or(5060),
    };
    Some(SocketAddr::new(ip, port))
}
