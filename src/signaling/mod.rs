//! Device signalling: Bandwidth's protocol v3, JSON-RPC 2.0 over a WebSocket at `/v3`.
//!
//! A device connects with its participant token in the query string; the token is checked
//! with `Control::verify_device_token` after the upgrade, and a refusal closes the socket with
//! code 1000 and a reason (any other code makes the browser SDK retry forever). Requests are
//! answered with their id echoed in its JSON type; the server's `sdpOffer` notifications use
//! the standard form `{"jsonrpc":"2.0","method":"sdpOffer","params":…}`. Text frames only.
//!
//! When several processes share the database, a device whose session is hosted by another
//! process is carried there (`carry.rs`): its WebSocket is relayed to the host.
//!
//! One live device per participant: a newer connection replaces the older one, which is
//! closed with code 1000 (the SDK's automatic reconnects therefore take over cleanly).

mod carry;
#[allow(unreachable_pub)] // the JSON-RPC frames' visibility is settled by the control-port change
mod rpc;
pub mod wire;
mod ws;

pub use rpc::{RpcError, RpcRequest};
#[doc(hidden)]
pub use ws::parse_device_frame;
pub use ws::{router, OriginPolicy, SignalingState, MAX_FRAME_BYTES, RESET_CODE};
