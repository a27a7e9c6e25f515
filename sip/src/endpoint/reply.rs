//! What it takes to answer one request, captured when the request arrives (the application may
//! answer an INVITE much later): the Via values (top one with `received`/`rport` filled in per
//! RFC 3261 §18.2.1 and RFC 3581), From, To, Call-ID, CSeq and Record-Route exactly as received,
//! and where the answer goes (the request's source, over the transport it came on).

use std::net::{IpAddr, SocketAddr};

use crate::message::{self, MessageWriter, Request, Via};
use crate::transport::{Transmit, Transport};

#[derive(Debug, Clone)]
pub(super) struct Reply {
    vias: Vec<String>,
    from: Option<String>,
    to: Option<String>,
    /// The To value parses and has no tag: ours can be appended.
    to_taggable: bool,
    call_id: Option<String>,
    cseq: Option<String>,
    record_route: Vec<String>,
    /// Copied into 100 Trying (RFC 3261 §8.2.6.1).
    timestamp: Option<String>,
    pub(super) transport: Transport,
    pub(super) destination: SocketAddr,
}

impl Reply {
    /// The reply of a call taken over from another process (its INVITE is long answered): it
    /// answers nothing; in-dialog requests bring replies of their own.
    pub(super) fn restored(transport: Transport, destination: SocketAddr) -> Self {
        Self {
            vias: Vec::new(),
            from: None,
            to: None,
            to_taggable: false,
            call_id: None,
            cseq: None,
            record_route: Vec::new(),
            timestamp: None,
            transport,
            destination,
        }
    }

    /// `None` when the request has no Via at all: a response could not be matched by the peer.
    pub(super) fn new(request: &Request, transport: Transport, source: SocketAddr) -> Option<Self> {
        let headers = &request.headers;
        let vias: Vec<String> = match message::parse_vias(headers) {
            Ok(vias) => vias
                .iter()
                .enumerate()
                .map(|(i, via)| {
                    if i == 0 {
                        top_via(via, source)
                    } else {
                        via.raw.clone()
                    }
                })
                .collect(),
            Err(_) => headers.get_all("Via").map(str::to_string).collect(),
        };
        if vias.is_empty() {
            return None;
        }
        let to = headers.get("To").map(str::to_string);
        let to_taggable = to
            .as_deref()
            .and_then(|t| message::parse_name_addr(t).ok())
            .is_some_and(|t| t.tag().is_none());
        Some(Self {
            vias,
            from: headers.get("From").map(str::to_string),
            to,
            to_taggable,
            call_id: headers.get("Call-ID").map(str::to_string),
            cseq: headers.get("CSeq").map(str::to_string),
            record_route: headers
                .get_all("Record-Route")
                .map(str::to_string)
                .collect(),
            timestamp: headers.get("Timestamp").map(str::to_string),
            transport,
            destination: source,
        })
    }

    /// The Record-Route values to copy into a dialog-establishing response.
    pub(super) fn record_route(&self) -> &[String] {
        &self.record_route
    }

    /// Builds a response. `to_tag` is appended to To when To has none (never for 100 Trying,
    /// whose callers pass `None`).
    pub(super) fn build(
        &self,
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
        server: &str,
        extra: &[(&str, String)],
        body: Option<(&str, &[u8])>,
    ) -> Vec<u8> {
        let reason = if reason.is_empty() {
            message::default_reason(code)
        } else {
            reason
        };
        let mut w = MessageWriter::response(code, reason);
        for via in &self.vias {
            w.header("Via", via);
        }
        if let Some(from) = &self.from {
            w.header("From", from);
        }
        if let Some(to) = &self.to {
            match to_tag {
                Some(tag) if self.to_taggable => w.header("To", &format!("{to};tag={tag}")),
                _ => w.header("To", to),
            };
        }
        if let Some(call_id) = &self.call_id {
            w.header("Call-ID", call_id);
        }
        if let Some(cseq) = &self.cseq {
            w.header("CSeq", cseq);
        }
        if code == 100 {
            if let Some(timestamp) = &self.timestamp {
                w.header("Timestamp", timestamp);
            }
        }
        w.header("Server", server);
        for (name, value) in extra {
            w.header(name, value);
        }
        match body {
            Some((content_type, bytes)) => {
                w.header("Content-Type", content_type);
                w.finish(bytes)
            }
            None => w.finish(&[]),
        }
    }

    pub(super) fn transmit(&self, bytes: Vec<u8>) -> Transmit {
        Transmit {
            transport: self.transport,
            destination: self.destination,
            bytes,
        }
    }
}

/// The top via-parm as it goes back: `received` when the sent-by host is not the source address
/// or when `rport` was asked for, and `rport` filled with the source port (RFC 3581).
pub(super) fn top_via(via: &Via, source: SocketAddr) -> String {
    let rport = via.param("rport").is_some();
    let host_is_source = via
        .host
        .trim_matches(['[', ']'])
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip == source.ip());
    let mut extra = Vec::new();
    if rport || !host_is_source {
        extra.push(("received", source.ip().to_string()));
    }
    if rport {
        extra.push(("rport", source.port().to_string()));
    }
    if extra.is_empty() {
        via.raw.clone()
    } else {
        via.to_string_with(&extra)
    }
}
