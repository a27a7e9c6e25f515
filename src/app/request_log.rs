//! Request logging: every HTTP request gets a request id (tower-http's `SetRequestId`, a
//! UUID unless the client sent a sane `x-request-id`), returned as the `x-request-id`
//! response header, and runs in its [`RequestScope`] (id, method, path), which the log format
//! ([`init_logs`]) adds to every line written in the request's task: under `request` in JSON
//! (`"request":{"id":…,"method":…,"path":…}`), as `request.id=… request.method=…
//! request.path=…` at the end of a text line.
//!
//! What is never logged: the query string (`/v3/?token=<device token>`), headers
//! (`Authorization: Basic …`), bodies. The scope holds the path only.
//!
//! How a response is logged ([`RequestLogLayer`]): the REST adapter logs its own errors with
//! their reason (4xx at INFO, 5xx at ERROR; see `api::error`) and marks the response; any
//! other response is logged here: 5xx at ERROR, 4xx at INFO, the rest at DEBUG.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Response};
use tower::{Layer, Service};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::api::{Logged, RequestScope, REQUEST_ID_HEADER as ID_HEADER};
use crate::config::LogFormat;

/// The request id header, in and out.
pub(super) const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(ID_HEADER);

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

/// The layer that runs each request in its [`RequestScope`] and logs its response (see the
/// module docs). Inside the request-id layers: the scope takes the id they set.
#[derive(Debug, Clone, Copy)]
pub(super) struct RequestLogLayer;

impl<S> Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;

    fn layer(&self, inner: S) -> RequestLog<S> {
        RequestLog { inner }
    }
}

/// The service of [`RequestLogLayer`].
#[derive(Debug, Clone)]
pub(super) struct RequestLog<S> {
    inner: S,
}

impl<S, B> Service<Request> for RequestLog<S>
where
    S: Service<Request, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // The request's latency is read from the monotonic clock, for its log line.
    #[allow(clippy::disallowed_methods)]
    fn call(&mut self, request: Request) -> Self::Future {
        let scope = RequestScope::of(&request);
        // The service made ready is the one called; a clone waits for the next request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(scope.scope(async move {
            let started = std::time::Instant::now();
            let result = inner.call(request).await;
            if let Ok(response) = &result {
                log_response(response, started.elapsed());
            }
            result
        }))
    }
}

/// Logs a response the REST adapter did not log itself (see the module docs).
fn log_response<B>(response: &Response<B>, latency: Duration) {
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

/// The log filter when `RUST_LOG` is not set: INFO, except the ICE library's STUN parser,
/// which warns about odd attributes in any datagram anyone sends to the media port (four
/// lines for one 96-byte packet); the media runtime counts such noise instead, in one line per
/// interval.
pub const DEFAULT_LOG_FILTER: &str = "info,is::stun=error";

/// Starts the process's log subscriber: `RUST_LOG` (else [`DEFAULT_LOG_FILTER`]) to stderr,
/// as text or as one JSON object per line (the event's fields at the top level, a library's
/// current span under `span`), each line written in a request's task with its
/// [`RequestScope`].
pub fn init_logs(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => {
            let lines = format::Format::default()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false);
            logs.json()
                .event_format(WithRequest {
                    inner: lines,
                    json: true,
                })
                .init()
        }
        LogFormat::Text => {
            // Colours only for a terminal: logs written to files stay plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            logs.with_ansi(ansi)
                .event_format(WithRequest {
                    inner: format::Format::default().with_ansi(ansi),
                    json: false,
                })
                .init()
        }
    }
}

/// An event format that adds the current [`RequestScope`] to the line `inner` writes.
struct WithRequest<F> {
    inner: F,
    /// `inner` writes one JSON object per line.
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithRequest<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let scoped = RequestScope::with_current(|request| {
            let mut line = String::with_capacity(256);
            self.inner
                .format_event(ctx, Writer::new(&mut line), event)?;
            add_request(&mut line, request, self.json);
            writer.write_str(&line)
        });
        match scoped {
            Some(written) => written,
            None => self.inner.format_event(ctx, writer, event),
        }
    }
}

/// Adds `request` to a formatted line: a `request` member at the end of a JSON object, or
/// `request.*=` fields at the end of a text line (before its newline).
fn add_request(line: &mut String, request: &RequestScope, json: bool) {
    let at = if json {
        line.rfind('}')
    } else {
        Some(line.trim_end_matches('\n').len())
    };
    let Some(at) = at else {
        return;
    };
    let text = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"?\"".to_owned());
    let added = if json {
        format!(
            ",\"request\":{{\"id\":{},\"method\":{},\"path\":{}}}",
            text(request.id()),
            text(request.method().as_str()),
            text(request.path()),
        )
    } else {
        // Ids are sane tokens (see `drop_insane_request_id`) and methods are tokens; a path
        // has no spaces but may carry non-ASCII text, whose control characters are escaped so
        // that no request can write terminal escapes into a log.
        format!(
            " request.id={} request.method={} request.path={}",
            request.id(),
            request.method(),
            request
                .path()
                .chars()
                .map(|c| if c.is_control() {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                })
                .collect::<String>()
        )
    };
    line.insert_str(at, &added);
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

    fn scope(path: &str) -> RequestScope {
        let request = axum::http::Request::delete(path)
            .header("x-request-id", "id-1")
            .body(())
            .expect("request");
        RequestScope::of(&request)
    }

    #[test]
    fn a_json_line_gets_the_request_as_a_member() {
        // `"` and `\` are legal in a request target and must be escaped.
        for path in ["/v1/accounts/a/sessions/b", "/a\"b\\c{d}"] {
            let mut line = r#"{"level":"INFO","message":"m","status":400}"#.to_owned() + "\n";
            add_request(&mut line, &scope(path), true);
            assert!(line.ends_with("}\n"), "{line}");
            let parsed: serde_json::Value = serde_json::from_str(&line).expect("still JSON");
            assert_eq!(parsed["status"], 400);
            assert_eq!(
                parsed["request"],
                serde_json::json!({"id": "id-1", "method": "DELETE", "path": path})
            );
        }
    }

    #[test]
    fn a_text_line_gets_the_request_before_its_newline() {
        let mut line = "2026-11-29T00:00:00Z  INFO patchbay: m status=400\n".to_owned();
        add_request(&mut line, &scope("/x/y?token=secret"), false);
        assert_eq!(
            line,
            "2026-11-29T00:00:00Z  INFO patchbay: m status=400 \
             request.id=id-1 request.method=DELETE request.path=/x/y\n"
        );
    }

    #[test]
    fn a_text_line_escapes_control_characters_of_the_path() {
        let mut line = "m\n".to_owned();
        add_request(&mut line, &scope("/a/\u{9b}31m"), false);
        assert!(line.ends_with("request.path=/a/\\u{9b}31m\n"), "{line:?}");
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
