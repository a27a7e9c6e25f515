//! # patchbay
//!
//! A self-hostable, server-authoritative WebRTC call-control server, wire-compatible with
//! Bandwidth's WebRTC platform. A customer's backend drives it over REST ("third-party call
//! control"): it creates sessions and participants, adds participants to sessions and decides
//! who hears and sees whom through subscriptions. Devices never decide what they receive.
//!
//! ```text
//!  customer backend ──REST──▶ api ──▶ control ──▶ store (SQLite | Postgres)
//!                                       │  ▲
//!                    compile rules ◀────┘  │ events (webhooks, logs, metrics)
//!                           │              │
//!                           ▼              │
//!  browser ──JSON-RPC/WS──▶ signaling ──▶ media engine (str0m SFU, sans-IO) ◀──UDP── browsers
//!                                          ▲
//!  phone ──SIP/UDP,TCP──▶ sip bridge (sans-IO: transaction, dialog, call, RTP, codecs, mixer)
//! ```
//!
//! Modules and what they own:
//! - [`domain`]: typed ids and values that cannot hold invalid states (pure).
//! - [`forwarding`]: the pure compiler from rules to [`forwarding::ForwardingTable`], and diffs.
//! - [`store`]: the [`store::Store`] trait and its SQLite and Postgres adapters.
//! - [`token`]: device tokens (JWT): minting and the one verification function.
//! - [`control`]: the orchestrator every verb goes through; the only caller of the store.
//! - [`api`]: the Bandwidth-compatible REST adapter (axum), plus patchbay's extensions.
//! - [`config`] and [`app`]: the command line and the wiring of a running server.
//!
//! - [`media`]: the SFU engine on str0m, sans-IO (browsers' peer connections, and local devices:
//!   phones).
//! - [`signaling`]: the device WebSocket (JSON-RPC 2.0, protocol v3).
//! - [`runtime`]: the only owner of sockets and tasks: the media shards (one engine and one UDP
//!   socket per core) and the SIP driver over the sans-IO `patchbay-sip` crate (`sip/`).
//!
//! ## Panic policy
//! A panic is a bug. Nothing that came from the network reaches `unwrap`/`expect`; each
//! remaining one states the invariant that makes it unreachable. Client errors are typed
//! (`DomainError`, `StoreError`, `ControlError`, `api::Error`) and rendered as 4xx JSON.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
#![warn(missing_docs)]

#[allow(unreachable_pub)] // the REST handlers' visibility is settled by the control-port change
pub mod api;
pub mod app;
pub mod config;
pub mod control;
pub mod domain;
pub mod forwarding;
pub mod media;
pub mod runtime;
pub mod signaling;
pub mod store;
pub mod token;
