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
//! ## Modules and what they own
//! - [`domain`]: typed ids and values that cannot hold invalid states (pure).
//! - [`forwarding`]: the pure compiler from rules to [`forwarding::ForwardingTable`], and diffs.
//! - [`store`]: the [`store::Store`] trait and its SQLite and Postgres adapters (one conformance
//!   suite, behind the `conformance` feature).
//! - [`token`]: device tokens (JWT): minting and decoding.
//! - [`control`]: the orchestrator every verb goes through, and the only door to the store and
//!   to the media plane. By file: `sessions.rs` (sessions, participants, membership),
//!   `auth.rs` (API credentials), `devices.rs` (device-token verification, lifecycle events),
//!   `connections.rs` ([`control::DeviceControl`]: the verbs of a browser connection and of a
//!   phone call), `port.rs` ([`control::port::MediaPort`], what control needs from the media
//!   plane), `routing.rs` ([`control::Routing`], the pure core: published streams and last
//!   tables → diffs), `routes.rs`, `quality.rs` (a member's measured media quality, and its
//!   summary in the store for the operator), `speakers.rs` (each hosted session's dominant
//!   speaker, in memory, and its `onActiveSpeaker`), `serial.rs`, `events.rs`, `error.rs`
//!   ([`control::ControlError`]).
//! - [`api`]: the Bandwidth-compatible REST adapter (axum): parses, calls control, renders
//!   [`api::Error`]; server faults are logged once, by a layer.
//! - [`signaling`]: the device WebSocket (JSON-RPC 2.0, protocol v3); `wire.rs` holds
//!   Bandwidth's JSON shapes of offers and answers.
//! - [`media`]: the SFU on str0m and its shard, sans-IO (no tokio, no sockets, no clock).
//! - [`webhooks`]: the webhook slice, sans-IO over domain types: the bodies of each event,
//!   Standard Webhooks signing, the retry schedule, the per-participant ordering and per-account
//!   shares of deliveries (`Dispatcher`), where deliveries may go (`Destinations`), and the
//!   outbox's types, which the store maps its rows to. The lifecycle events it renders are
//!   `domain::LifecycleEvent`, raised by control.
//! - [`runtime`]: the only owner of sockets, clocks and tasks: the media pump (one task per
//!   shard, `media.rs`), the SIP driver over the sans-IO `patchbay-sip` crate (`sip.rs`), the
//!   HTTP listener with its connection gate and timeouts (`http.rs`, `listen.rs`), and the
//!   webhook outbox's recorder, delivery worker and session cleanup (`webhooks.rs`).
//! - [`config`] and [`app`]: the command line and the wiring of a running server.
//! - [`reach`]: the addresses devices and phones are told to use (`--public-ip`, STUN for
//!   `auto`), printed at startup.
//!
//! ## Who may call whom
//! ```text
//! api ─────────┐
//! signaling ───┼──▶ control ──▶ store, forwarding, token ──▶ domain
//! runtime::sip ┘       │  ▲
//!                      │  └── reports: published streams, resumption state (ordered channels)
//!                      ▼
//!              port::MediaPort ◀── implemented by runtime::media ──▶ media::Shard ──▶ media::Engine
//!              (device commands, routing diffs, deletions, disconnects, stop: one inbox a shard)
//! ```
//! Adapters call control only; control never names the runtime or an adapter; `media` names
//! neither tokio nor control. `tests/layering` fails on an import that breaks this, and clippy's
//! `disallowed-methods` (clippy.toml) keeps clocks, sleeps and spawns in the runtime.
//!
//! ## The media plane: which file owns which map
//! | file | part | owns |
//! |---|---|---|
//! | `media/demux.rs` | `Demux` | remote address → peer, ICE ufrag → peer, each peer's paths |
//! | `media/peers.rs` | `Peers` | peer id → `str0m::Rtc`; the timer queue of deadlines |
//! | `media/devices.rs` | `Devices` | device → participant, permissions, its peers; participant → device |
//! | `media/publishing.rs` | `Publishing` | each device's published streams and their m-lines (it answers a publish offer, lent the parts it needs) |
//! | `media/subscribing.rs` | `Subscribing` | each browser's subscribe negotiation: tracks, mids, revision, pending offer (it makes the offers and takes the answers, lent the parts it needs) |
//! | `media/local.rs` | `LocalDevices` | each phone's received audio tracks (`SourceKey`s) |
//! | `media/routes.rs` | `HostedRoutes` | the tables of the sessions this shard hosts; participant → session |
//! | `media/fanout.rs` | `Fanout` | source → targets (the hot path), track → source, subscriber → targets, upstream |
//! | `media/rewrite.rs` | `Rewrite` | per subscriber m-line: its origin, sequence/timestamp offsets, payload-type map |
//! | `media/quality.rs` | `PeerQuality` | per peer connection (in its `Peer`): its tracks' statistics, its keyframe requests passed on, merged or asked |
//! | `media/speaker.rs` | `Speakers` | per hosted session: each publisher's smoothed audio level, the dominant speaker |
//! | `media/counters.rs` | `MediaCounters` | the engine's counters for the metrics |
//! | `media/shard.rs` | `Shard` | device entries, resume/replacement, reconnect grace, moves, shard-local redirects |
//! | `media/placement.rs` | `Placement` | participant/device → shard (the runtime's directory, never per packet) |
//!
//! ## Three paths
//! - **A datagram**: `runtime::media` `Pump::run` (socket) → `Shard::handle_receive` →
//!   `Engine::handle_receive` → `Demux::lookup` → the peer's `Rtc` → `Relay::drain_peer` →
//!   `Relay::forward` (per RTP packet) → `Fanout::targets` → each subscriber m-line's
//!   `Rewrite` and send stream (`write_rtp`; the subscriber is made due now, and the next
//!   `Engine::handle_timeout` sends all that was written to it), or a `LocalMedia` event for
//!   a phone. Datagrams for a device that moved away: `Shard`'s redirect map →
//!   `ShardOutput::Message` → the other shard's inbox.
//! - **A subscription change**: `api` handler → `Control::set_subscriptions` → store →
//!   `Routing::compile` (a diff) → `MediaPort::apply_routes` → every shard's inbox →
//!   `Pump::run` →
//!   `Shard::handle_routes` (hosted sessions only; others just move devices home) →
//!   `Engine::apply_routes` → `HostedRoutes::apply` → `Engine::renegotiate` (an offer, or a
//!   phone's new sources) → `Fanout::set_targets` for that subscriber only.
//! - **A phone's audio frame**: `runtime::sip` `CallMedia` (RTP socket) → `PhoneMedia`
//!   (jitter buffer, G.711 → Opus, and the frame's RFC 6464 level) → `LocalUplink::write`
//!   → the shard's inbox → `Shard::handle_write_local` → `Engine::write_local` →
//!   `LocalDevices::packet` → `Relay::forward` (the same loop as a browser's packet).
//!
//! ## Drive contracts
//! `media::Engine` and `media::Shard` take inputs through `handle_*(…, now)` and give outputs
//! through `poll_transmit`, `poll_event`/`poll_output` and `poll_timeout`; after every input
//! the driver drains every output (tables in the module docs of [`media`] and
//! `media::shard`). The same holds for `patchbay_sip::endpoint::Endpoint`.
//!
//! ## Panic policy
//! A panic is a bug. Nothing that came from the network reaches `unwrap`/`expect`; each
//! remaining one states the invariant that makes it unreachable. Errors are typed per layer
//! (`DomainError`, `StoreError`, `ControlError`, `MediaError`, `api::Error`) and each stops at
//! its layer: the store's are translated once, in control.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
#![warn(missing_docs)]

#[allow(unreachable_pub)] // the REST handlers' visibility is settled by the control-port change
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod control;
pub mod domain;
pub mod forwarding;
pub mod media;
pub mod reach;
pub mod runtime;
pub mod signaling;
pub mod store;
pub mod token;
pub mod webhooks;
