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

/// Milliseconds since the Unix epoch, this process's clock (the runtime owns the clock).
#[allow(clippy::disallowed_methods)]
pub(crate) fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
