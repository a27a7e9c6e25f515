//! [`MediaError`]: what the media plane answers a device's request it cannot serve.

/// Errors answered to a device's request; the engine itself keeps running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The device is not on this engine (never added, removed, or moved away), or is a local
    /// device where a browser was expected.
    #[error("unknown device")]
    UnknownDevice,
    /// The SDP text does not parse; the parser's message.
    #[error("invalid SDP: {0}")]
    BadSdp(String),
    /// The SDP parses but cannot be applied to the connection; the reason.
    #[error("negotiation failed: {0}")]
    Negotiation(String),
    /// An answer came while the device's subscribe connection had no offer outstanding.
    #[error("no offer is waiting for an answer")]
    NoPendingOffer,
    /// A declared stream alias is not a valid [`StreamAlias`](crate::domain::StreamAlias); the reason.
    #[error("invalid stream alias: {0}")]
    BadAlias(String),
    /// A routing change reached the media plane after the participant's session was read
    /// for this connect: read it again and retry (see `control::port::MediaPort`).
    #[error("the participant's session changed while connecting")]
    SessionChanged,
    /// A failure of the server, not of the request (answered as an internal error).
    #[error("{0}")]
    Internal(String),
}
