//! `api::Error`: every way a REST request can fail, rendered as the reference's JSON bodies.
//!
//! 400/404/405/409/413/5xx: `{"error": "<message>", "requestId": "<uuid>"}`;
//! 401: `{"message": "Unauthorized"}` with `WWW-Authenticate: Basic`.
//! 503 (the database cannot answer now, or readiness failed) also carries `Retry-After`.
//!
//! Rendering ([`IntoResponse`]) is pure: it builds the body and nothing else. A server fault
//! (5xx) gets a safe message in its body, and its details travel with the response as a
//! [`ServerFault`] extension; a client's mistake (4xx) carries its reason as a
//! [`ClientFault`]. [`log_server_faults`], a layer of the API router, logs each one once with
//! the same request id as the body (5xx at ERROR, 4xx at INFO), takes the extension off the
//! response and marks it [`Logged`] for the request logger of the app.
//!
//! The `requestId` of a body is the request's id (the `x-request-id` the app's request-id
//! layer set, which the response also carries and every log line of the request shows), made
//! known to rendering by the request's [`RequestScope`]; outside one it is a fresh UUID.

use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, RawPathParamsRejection};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::RequestScope;
use crate::control::ControlError;
use crate::domain::DomainError;

/// Why a REST request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Control's answer (not found, conflict, invalid) or fault (unavailable, internal).
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A value of the request is not a valid domain value; the message names the field.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The request body cannot be read or parsed.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The path's parameters cannot be read.
    #[error("path: {0}")]
    Path(#[from] RawPathParamsRejection),
    /// Missing or wrong API credentials (401); why, for the log only (the body says
    /// `Unauthorized` whatever the reason).
    #[error("Unauthorized")]
    Unauthorized(AuthFailure),
    /// No route matches the path (404).
    #[error("no such endpoint: {method} {path}")]
    NoSuchEndpoint {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
    },
    /// A route matches the path, but not with this method (405).
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
    },
    /// Readiness failed: control cannot serve verbs now.
    #[error("database unreachable: {0}")]
    NotReady(ControlError),
    /// Readiness failed: the server is draining before it stops.
    #[error("server draining: it takes no new devices or calls")]
    Draining,
    /// A handler asked for a path parameter its route does not have (a bug).
    #[error("route has no {0}")]
    RouteWithout(&'static str),
}

/// The `Retry-After` of every 503 (the database cannot answer now), in seconds: about how long
/// the store's timeouts let a probe of a recovered database take.
pub const RETRY_AFTER_SECONDS: &str = "2";

/// Why a request body was refused.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is longer than `limit` bytes (413).
    #[error("request body exceeds {limit} bytes")]
    TooLarge {
        /// The largest accepted body, in bytes.
        limit: usize,
    },
    /// Reading the body failed for another reason than its size.
    #[error("request body: {0}")]
    Unreadable(BytesRejection),
    /// The body is not UTF-8 text.
    #[error("request body is not UTF-8")]
    NotUtf8,
    /// The body is not well-formed JSON.
    #[error("request body is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    /// Valid JSON of the wrong shape as a whole.
    #[error("request body: {0}")]
    Shape(serde_json::Error),
    /// Valid JSON with a wrong value at `path`.
    #[error("{path}: {error}")]
    Field {
        /// Where the wrong value is, as a JSON path.
        path: String,
        /// What is wrong with it.
        error: serde_json::Error,
    },
    /// A field the body's type does not have (400), and the known field it most resembles.
    #[error("{}unknown field `{field}`; {}", at(path), hint(suggestion.as_deref(), known))]
    UnknownField {
        /// The object that has the field, as a JSON path (`.` for the body itself).
        path: String,
        /// The field as sent.
        field: String,
        /// The closest known field, if one is close.
        suggestion: Option<String>,
        /// The fields that object may have.
        known: Vec<String>,
    },
    /// A required body is absent; says what was expected.
    #[error("request body: expected {0}")]
    Missing(&'static str),
    /// The body names more participants than a session may hold.
    #[error("request body: names {given} participants; a session has at most {max}")]
    TooManyParticipants {
        /// How many it names.
        given: usize,
        /// How many a session holds at most.
        max: usize,
    },
}

/// `path: ` before a message, unless the path is the body itself.
fn at(path: &str) -> String {
    if path == "." {
        String::new()
    } else {
        format!("{path}: ")
    }
}

/// What to say after an unknown field: the likely intended one, else the known ones.
fn hint(suggestion: Option<&str>, known: &[String]) -> String {
    match (suggestion, known) {
        (Some(s), _) => format!("did you mean `{s}`?"),
        (None, []) => "this object has no fields".to_owned(),
        (None, known) => format!(
            "known fields: {}",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The error body of 400, 404, 405, 409, 413 and 5xx responses.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// What went wrong, naming the field or resource at fault.
    pub error: String,
    /// The request's id (its `x-request-id` response header), also in the server's log
    /// lines of this request.
    pub request_id: String,
}

/// The error body of 401 responses.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnauthorizedBody {
    /// Always `Unauthorized`.
    pub message: String,
}

/// The id of the request being handled ([`RequestScope`]), else a fresh UUID.
pub(super) fn current_request_id() -> String {
    RequestScope::with_current(|request| request.id().to_owned())
        .unwrap_or_else(|| Uuid::new_v4().to_string())
}

/// Why credentials were refused (logged with the 401; never in its body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Basic` header, or one that does not decode to `user:password`.
    NoCredentials,
    /// No account has this username and password.
    WrongCredentials,
    /// The credentials are another account's than the one in the path.
    OtherAccount,
}

impl AuthFailure {
    fn reason(self) -> &'static str {
        match self {
            AuthFailure::NoCredentials => {
                "no Basic credentials (Authorization header missing or malformed)"
            }
            AuthFailure::WrongCredentials => "unknown username or wrong password",
            AuthFailure::OtherAccount => "the credentials are another account's than the path's",
        }
    }
}

/// A client's mistake (4xx) carried by its response to the layer that logs it.
#[derive(Debug, Clone)]
pub struct ClientFault {
    /// The `requestId` of the response body (none for 401, whose body has none).
    pub request_id: Option<String>,
    /// Why the request was refused (the body's message).
    pub reason: String,
}

/// Marks a response whose outcome the API already logged (the app's request logger skips it).
#[derive(Debug, Clone, Copy)]
pub struct Logged;

/// A server fault carried by its response (as an extension) to the layer that logs it.
#[derive(Debug, Clone)]
pub struct ServerFault {
    /// The `requestId` of the response body.
    pub request_id: String,
    /// The fault, for the log.
    pub error: Arc<Error>,
}

impl Error {
    /// The HTTP status this error is rendered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Control(e) => match e {
                ControlError::NotFound(_) => StatusCode::NOT_FOUND,
                ControlError::Conflict(_) => StatusCode::CONFLICT,
                ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
                ControlError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
                ControlError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Error::Domain(_) | Error::Path(_) => StatusCode::BAD_REQUEST,
            Error::Body(BodyError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Body(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::NoSuchEndpoint { .. } => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::NotReady(_) | Error::Draining => StatusCode::SERVICE_UNAVAILABLE,
            Error::RouteWithout(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Error::Unauthorized(why) = self {
            let body = UnauthorizedBody {
                message: "Unauthorized".into(),
            };
            let mut response = (
                status,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"patchbay\"")],
                Json(body),
            )
                .into_response();
            response.extensions_mut().insert(ClientFault {
                request_id: None,
                reason: why.reason().into(),
            });
            return response;
        }
        let request_id = current_request_id();
        let draining = matches!(self, Error::Draining);
        let message = match status {
            // Not a fault, and nothing to hide: the balancer's probe says why.
            _ if draining => self.to_string(),
            StatusCode::SERVICE_UNAVAILABLE => {
                "service temporarily unavailable; retry later".to_owned()
            }
            s if s.is_server_error() => "internal server error".to_owned(),
            _ => self.to_string(),
        };
        let body = Json(ErrorBody {
            error: message.clone(),
            request_id: request_id.clone(),
        });
        let mut response = if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read: this connection cannot carry another request,
            // and the client must know it before reusing it.
            (status, [(header::CONNECTION, "close")], body).into_response()
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            (status, [(header::RETRY_AFTER, RETRY_AFTER_SECONDS)], body).into_response()
        } else {
            (status, body).into_response()
        };
        if status.is_server_error() && !draining {
            response.extensions_mut().insert(ServerFault {
                request_id,
                error: Arc::new(self),
            });
        } else {
            response.extensions_mut().insert(ClientFault {
                request_id: Some(request_id),
                reason: message,
            });
        }
        response
    }
}

/// Logs the fault a response carries, once, with its request id (a response layer of the
/// API router): a server fault at ERROR, a client's mistake at INFO with its reason; takes
/// it off the response and marks the response [`Logged`].
pub async fn log_server_faults(mut response: Response) -> Response {
    if let Some(fault) = response.extensions_mut().remove::<ServerFault>() {
        tracing::error!(
            request_id = %fault.request_id,
            status = %response.status(),
            error = %fault.error,
            "request failed"
        );
        response.extensions_mut().insert(Logged);
    } else if let Some(fault) = response.extensions_mut().remove::<ClientFault>() {
        // The line's request (the app's log format) carries its id; the body's (the same) is
        // repeated here for 400-409.
        tracing::info!(
            request_id = fault.request_id.as_deref(),
            status = response.status().as_u16(),
            reason = %fault.reason,
            "request refused"
        );
        response.extensions_mut().insert(Logged);
    }
    response
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use axum::body::{to_bytes, Body};
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    use super::*;

    /// An event's fields, as (name, value as text).
    type EventFields = Vec<(String, String)>;

    /// Records every event's fields as text (a real subscriber: what is logged reaches it).
    #[derive(Default, Clone)]
    struct Recorder {
        events: Arc<Mutex<Vec<EventFields>>>,
        spans: Arc<AtomicUsize>,
    }

    struct Fields<'a>(&'a mut EventFields);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push((field.name().to_owned(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.push((field.name().to_owned(), value.to_owned()));
        }
    }

    impl Subscriber for Recorder {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(self.spans.fetch_add(1, Ordering::Relaxed) as u64 + 1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut fields = Vec::new();
            event.record(&mut Fields(&mut fields));
            self.events.lock().unwrap().push(fields);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    fn unavailable() -> Error {
        Error::Control(ControlError::Unavailable {
            source: "pool timed out while waiting for an open connection".into(),
        })
    }

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_unavailable_store_is_a_503_with_the_safe_body_and_rendering_logs_nothing() {
        let recorder = Recorder::default();
        let response =
            tracing::subscriber::with_default(recorder.clone(), || unavailable().into_response());
        assert!(
            recorder.events.lock().unwrap().is_empty(),
            "into_response logged: {:?}",
            recorder.events.lock().unwrap()
        );
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let fault = response
            .extensions()
            .get::<ServerFault>()
            .cloned()
            .expect("a 5xx carries its fault");
        let body = body_json(response).await;
        assert_eq!(
            body,
            serde_json::json!({
                "error": "service temporarily unavailable; retry later",
                "requestId": fault.request_id,
            })
        );
        assert!(fault.error.to_string().contains("pool timed out"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn every_503_says_when_to_retry_and_nothing_else_does() {
        let not_ready = Error::NotReady(ControlError::Unavailable {
            source: "database did not answer within 1s".into(),
        });
        for error in [unavailable(), not_ready] {
            let response = error.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                response.headers().get(header::RETRY_AFTER).unwrap(),
                RETRY_AFTER_SECONDS
            );
            let body = body_json(response).await;
            assert_eq!(
                body["error"],
                "service temporarily unavailable; retry later"
            );
        }
        let internal = Error::Control(ControlError::Internal {
            source: "bad uuid".into(),
        })
        .into_response();
        assert_eq!(internal.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(internal.headers().get(header::RETRY_AFTER).is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn client_errors_carry_no_fault_and_keep_their_message() {
        let response = Error::Control(ControlError::NotFound(crate::control::Resource::Session))
            .into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(response.extensions().get::<ServerFault>().is_none());
        assert_eq!(body_json(response).await["error"], "session not found");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_layer_logs_a_fault_once_with_the_body_request_id() {
        let app = Router::new()
            .route("/fault", get(|| async { Err::<(), Error>(unavailable()) }))
            .route(
                "/missing",
                get(|| async {
                    Err::<(), Error>(Error::Unauthorized(AuthFailure::WrongCredentials))
                }),
            )
            .layer(axum::middleware::map_response(log_server_faults));
        let recorder = Recorder::default();
        let _guard = tracing::subscriber::set_default(recorder.clone());
        let request = |path: &str| axum::http::Request::get(path).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request("/fault")).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            response.extensions().get::<ServerFault>().is_none(),
            "the layer takes the fault off"
        );
        let body = body_json(response).await;
        let events = recorder.events.lock().unwrap().clone();
        assert_eq!(events.len(), 1, "{events:?}");
        let field = |name: &str| {
            events[0]
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(field("request_id"), body["requestId"].as_str().unwrap());
        assert!(field("error").contains("pool timed out"), "{events:?}");
        let response = app.oneshot(request("/missing")).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let events = recorder.events.lock().unwrap().clone();
        assert_eq!(events.len(), 2, "one line per failed request: {events:?}");
        assert!(
            events[1]
                .iter()
                .any(|(n, v)| n == "reason" && v == "unknown username or wrong password"),
            "a 4xx is logged with its reason: {events:?}"
        );
    }
}
