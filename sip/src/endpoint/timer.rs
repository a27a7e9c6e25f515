//! RFC 4028 session timers, as a UAS that never refreshes itself: what an INVITE asks for,
//! the headers of our 2xx, and when an unrefreshed session is over.
//!
//! - A timer runs only when the INVITE carries `Session-Expires` *and* the caller supports the
//!   extension (`Supported: timer` or `Require: timer`). The caller is always the refresher
//!   (`refresher=uac`); an INVITE that asks us to refresh (`refresher=uas`) is answered as by
//!   a UAS without the extension (no `Session-Expires` in the 2xx: RFC 4028 §7.4, no timer).
//! - An interval under [`MIN_SE`] is refused with 422 and `Min-SE`.
//! - A 2xx to a re-INVITE that carries `Session-Expires` is a refresh: the interval is the new
//!   one and the session lives on; a re-INVITE without it turns the timer off (§9).
//! - Without a refresh, the session is over at `expiry − min(32 s, expiry / 3)` after the last
//!   2xx (§10): the endpoint sends BYE and the call ends with `SessionExpired`.

use std::time::{Duration, Instant};

use crate::message::{self, Headers};

/// The smallest interval we accept, in seconds (RFC 4028's minimum).
pub const MIN_SE: u32 = 90;

/// What a request asks of the session timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asked {
    /// No timer (no `Session-Expires`, the extension not supported, or we would refresh).
    Nothing,
    /// An interval below [`MIN_SE`]: refuse with 422.
    TooSmall,
    /// A timer of this many seconds, refreshed by the caller.
    Interval(u32),
}

/// What the request's headers ask for.
pub(super) fn asked(headers: &Headers) -> Asked {
    let Some(value) = headers.get("Session-Expires") else {
        return Asked::Nothing;
    };
    let supported = headers
        .get_all("Supported")
        .chain(headers.get_all("Require"))
        .flat_map(|v| message::parse_token_list(v).unwrap_or_default())
        .any(|tag| tag.eq_ignore_ascii_case("timer"));
    if !supported {
        return Asked::Nothing;
    }
    let mut parts = value.split(';').map(message::trim_lws);
    let Some(Ok(seconds)) = parts.next().map(str::parse::<u32>) else {
        return Asked::Nothing;
    };
    let we_refresh = parts.any(|p| {
        p.split_once('=').is_some_and(|(name, v)| {
            message::trim_lws(name).eq_ignore_ascii_case("refresher")
                && message::trim_lws(v).eq_ignore_ascii_case("uas")
        })
    });
    if we_refresh {
        return Asked::Nothing;
    }
    if seconds < MIN_SE {
        return Asked::TooSmall;
    }
    Asked::Interval(seconds)
}

/// A running session timer.
#[derive(Debug, Clone, Copy)]
pub(super) struct SessionTimer {
    /// Seconds.
    pub(super) interval: u32,
    /// When the session is over without a refresh.
    pub(super) expires: Instant,
}

impl SessionTimer {
    /// Starts (or restarts, on a refresh) at `now`, when the 2xx is sent.
    pub(super) fn start(interval: u32, now: Instant) -> SessionTimer {
        let margin = (interval / 3).min(32);
        let after = Duration::from_secs(u64::from(interval.saturating_sub(margin)));
        SessionTimer {
            interval,
            expires: now + after,
        }
    }

    /// The headers of a 2xx that keeps this timer.
    pub(super) fn headers(&self) -> [(&'static str, String); 2] {
        [
            (
                "Session-Expires",
                format!("{};refresher=uac", self.interval),
            ),
            ("Require", "timer".to_string()),
        ]
    }
}
