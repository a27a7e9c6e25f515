//! Request logging: every HTTP request gets a request id (tower-http's `SetRequestId`, a
//! UUID unless the client sent a sane `x-request-id`), returned as the `x-request-id`
//! response header, and one INFO span (`request`, with `method`, `path` and `request_id`)
//! around everything logged while it is handled, so each of those lines carries the id.
//!
//! What is never logged: the query string (`/v3/?token=<device token>`), headers
//! (`Authorization: Basic …`), bodies. The span holds the path only.
//!
//! How a response is logged: the REST adapter logs its own errors with their reason (4xx at
//! INFO, 5xx at ERROR; see `api::error`) and marks the response; any other response is
//! logged here: 5xx at ERROR, 4xx at INFO, the rest at DEBUG.

use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Response};
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tracing::Span;

use crate::api::Logged;

/// The request id header, in and out.
pub(super) const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming request id honoured.
const MAX_INCOMING_ID: usize = 64;

/// The layer that gives each request an id (kept from the client when sane).
pub(super) fn set_request_id() -> SetRequestIdLayer<MakeRequestUuid> {
    SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid)
}

/// The layer that copies the request's id to the response.
pub(super) fn propagate_request_id() -> PropagateRequestIdLayer {
    PropagateRequestIdLayer::new(REQUEST_ID_HEADER)
}

/// Drops an incoming `x-request-id` that is not a short token (1 to 64 of A-Z, a-z, 0-9,
/// `-`, `_`, `.`), so that a fresh UUID takes its place: ids end up in log lines, and a
/// client must not be able to write arbitrary text (or very long text) there.
pub(super) fn drop_insane_request_id(mut request: Request) -> Request {
    let mut ids = request.headers().get_all(&REQUEST_ID_HEADER).iter();
    let sane = match (ids.next(), ids.next()) {
        (None, _) => true,
        (Some(id), None) => is_sane(id),
        (Some(_), Some(_)) => false, // two ids: neither is trusted
    };
    if !sane {
        request.headers_mut().remove(&REQUEST_ID_HEADER);
    }
    request
}

fn is_sane(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_INCOMING_ID
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The request's span: method, path (never the query) and request id.
pub(super) fn make_span<B>(request: &axum::http::Request<B>) -> Span {
    let id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %id,
    )
}

/// Logs a response the REST adapter did not log itself (see the module docs).
pub(super) fn on_response<B>(response: &Response<B>, latency: Duration, _span: &Span) {
    if response.extensions().get::<Logged>().is_some() {
        return;
    }
    let status = response.status();
    let ms = latency.as_secs_f64() * 1000.0;
    if status.is_server_error() {
        tracing::error!(status = status.as_u16(), latency_ms = ms, "request failed");
    } else if status.is_client_error() {
        tracing::info!(status = status.as_u16(), latency_ms = ms, "request refused");
    } else {
        tracing::debug!(status = status.as_u16(), latency_ms = ms, "request done");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(ids: &[&str]) -> Request {
        let mut builder = axum::http::Request::get("/x");
        for id in ids {
            builder = builder.header("x-request-id", *id);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn a_sane_id_is_kept_and_others_are_dropped() {
        let kept = drop_insane_request_id(request(&["abc-123_X.y"]));
        assert_eq!(kept.headers()["x-request-id"], "abc-123_X.y");
        for bad in [
            "with space",
            "quote\"",
            "{\"json\":1}",
            &"a".repeat(65),
            "é",
        ] {
            let Ok(value) = HeaderValue::from_str(bad) else {
                continue;
            };
            let mut r = request(&[]);
            r.headers_mut().insert("x-request-id", value);
            let r = drop_insane_request_id(r);
            assert!(r.headers().get("x-request-id").is_none(), "{bad:?} kept");
        }
        let two = drop_insane_request_id(request(&["a", "b"]));
        assert!(two.headers().get("x-request-id").is_none());
    }
}
