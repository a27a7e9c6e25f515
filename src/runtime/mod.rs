//! Drivers: the only code that owns sockets, clocks and tasks. Each pumps a sans-IO engine
//! (see the engines' drive contracts) and talks to the rest over channels.

pub mod doorbell;
pub mod http;
pub mod listen;
pub mod media;
pub mod media_tcp;
pub mod media_udp;
pub mod metrics;
pub mod phone_records;
pub mod sip;
pub mod tls;
pub mod webhooks;
