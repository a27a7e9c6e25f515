//! [`EngineConfig`]: how an engine presents itself to devices (its addresses, certificate,
//! ICE prefix, the credentials of connections other processes answered, and whether subscribe
//! connections estimate their links).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use str0m::config::DtlsCert;

use super::error::MediaError;
use super::ice;
use crate::domain::PublishCredentials;

/// How an engine presents itself to devices.
#[derive(Clone)]
pub struct EngineConfig {
    /// The addresses devices send media to, each an ICE host candidate (`--public-ip` may
    /// name several, IPv4 and IPv6). Never empty; the first is the engine's own address (see
    /// [`EngineConfig::primary_addr`]). Datagrams are handed to the engine as received on the
    /// one of the source's address family.
    pub public_addrs: Vec<SocketAddr>,
    /// The addresses devices may open ICE-TCP connections to (RFC 6544 passive host
    /// candidates, offered next to the UDP ones); empty when ICE over TCP is off. Segments
    /// of those connections are handed in with [`Transport::Tcp`](super::Transport::Tcp).
    pub tcp_addrs: Vec<SocketAddr>,
    /// The DTLS certificate shared by every peer connection of the process.
    pub cert: DtlsCert,
    /// The prefix of every local ICE username fragment the process issues, random per
    /// process and the same for all its shards: a ufrag without it was issued by another
    /// process.
    pub ice_prefix: String,
    /// The publish connections' credentials other processes issued (stored), by ufrag: a
    /// consent check naming one, from a device that has reconnected here, is answered with a
    /// signed error (see `Engine::refuse_check`).
    pub previous_credentials: Arc<HashMap<String, PublishCredentials>>,
    /// Subscribe connections estimate their link (TWCC) and pause the video it cannot carry
    /// (`allocation`); off: every subscriber is sent everything it subscribes to.
    pub subscriber_bwe: bool,
}

impl EngineConfig {
    /// A config with a freshly generated certificate.
    pub fn generate(public_addr: SocketAddr) -> Result<EngineConfig, MediaError> {
        let provider = str0m::crypto::from_feature_flags();
        let cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| MediaError::Internal("cannot generate a DTLS certificate".into()))?;
        Ok(EngineConfig {
            public_addrs: vec![public_addr],
            tcp_addrs: Vec::new(),
            cert,
            ice_prefix: ice::random_chars(ice::PREFIX_LEN),
            previous_credentials: Arc::default(),
            subscriber_bwe: false,
        })
    }

    /// The engine's own address: the first advertised one.
    pub fn primary_addr(&self) -> Option<SocketAddr> {
        self.public_addrs.first().copied()
    }
}
