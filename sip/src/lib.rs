//! # patchbay-sip: the SIP bridge, sans-IO
//!
//! Everything a phone call needs between the wire and patchbay's media engine, with no sockets,
//! no clocks and no tasks: callers hand in bytes and `now`, and take out datagrams, events and
//! the next deadline (the same drive contract as the media engine). The runtime in the
//! `patchbay` crate (`src/runtime/sip.rs`) owns the sockets and the timers.
//!
//! Signalling:
//! - [`message`]: SIP syntax (compact header forms, multiple Via, line folding, parse errors
//!   that say what is wrong); our own lexer, because `rsip` 0.4 rejects valid and accepts
//!   invalid RFC 4475 messages (the module docs say which). `rsip` remains the independent
//!   parser the tests check our output against;
//! - [`transport`]: UDP datagrams and TCP Content-Length framing;
//! - [`transaction`]: RFC 3261 server transactions with named timers;
//! - [`endpoint`]: the user-agent server: dialogs, calls and how each one ends;
//! - [`uui`]: the participant token carried in `User-To-User`.
//!
//! Media:
//! - [`sdp`]: offer/answer for plain RTP/AVP (PCMU, PCMA, telephone-event);
//! - [`rtp`]: RTP packets and RFC 4733 telephone events;
//! - [`g711`], [`opus`]: the codecs;
//! - [`jitter`]: a small jitter buffer;
//! - [`mixer`] and [`phone`]: one phone's audio in both directions;
//! - [`liveness`]: whether a phone's media leg is still alive (RTP inactivity);
//! - [`tone`]: sine/DTMF generators and Goertzel detection for tests and diagnostics.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
#![warn(missing_docs)]

// Signalling.
pub mod endpoint;
pub mod message;
pub mod transaction;
pub mod transport;
pub mod uui;

// Media.
pub mod g711;
pub mod jitter;
pub mod latch;
pub mod liveness;
pub mod mixer;
pub mod opus;
pub mod phone;
pub mod rtp;
pub mod sdp;
pub mod tone;
