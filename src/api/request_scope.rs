//! [`RequestScope`]: the HTTP request being handled (its id, method and path), known to
//! everything that runs in the request's task through a task-local: error bodies take their
//! `requestId` from it, and the app's log format adds it to every line written there.
//!
//! A task-local rather than a tracing span: a span is entered and left on every poll of the
//! request and around each of the database driver's futures (two dozen times per request),
//! which cost more than the rest of the request's logging and metrics together; the
//! task-local costs nothing until a line is written. What it does not reach: tasks the
//! request spawns and the database driver's own threads (SQLite's worker), whose lines carry
//! no request.
//!
//! The path never includes the query (`/v3?token=<device token>`).

use std::future::Future;

use axum::http::{Method, Request, Uri};
use tokio::task::futures::TaskLocalFuture;

/// The request id header, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    static CURRENT: RequestScope;
}

/// What the log lines and error bodies of one request say about it. Its `Debug` shows the
/// path only, never the query.
#[derive(Clone)]
pub struct RequestScope {
    id: String,
    method: Method,
    uri: Uri,
}

impl std::fmt::Debug for RequestScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestScope")
            .field("id", &self.id)
            .field("method", &self.method)
            .field("path", &self.path())
            .finish()
    }
}

impl RequestScope {
    /// The scope of `request`: its `x-request-id` (a fresh UUID when it has none or one that
    /// is not text), method and path.
    pub fn of<B>(request: &Request<B>) -> RequestScope {
        let id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        RequestScope {
            id,
            method: request.method().clone(),
            uri: request.uri().clone(),
        }
    }

    /// The request's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The request's method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request's path, without the query.
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// Runs `future` with this request as the current one.
    pub fn scope<F: Future>(self, future: F) -> TaskLocalFuture<RequestScope, F> {
        CURRENT.scope(self, future)
    }

    /// Calls `f` with the current request, if this task is handling one.
    pub fn with_current<R>(f: impl FnOnce(&RequestScope) -> R) -> Option<R> {
        CURRENT.try_with(f).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_scope_is_current_inside_and_only_there() {
        let request = Request::post("/v3/x?token=secret")
            .header(REQUEST_ID_HEADER, "abc-1")
            .body(())
            .expect("request");
        let scope = RequestScope::of(&request);
        let seen = scope
            .scope(async {
                tokio::task::yield_now().await;
                RequestScope::with_current(|r| {
                    (r.id().to_owned(), r.method().clone(), r.path().to_owned())
                })
            })
            .await;
        assert_eq!(
            seen,
            Some(("abc-1".to_owned(), Method::POST, "/v3/x".to_owned()))
        );
        assert!(RequestScope::with_current(|_| ()).is_none());
    }

    #[test]
    fn debug_never_shows_the_query() {
        let request = Request::get("/v3?token=secret-token")
            .body(())
            .expect("request");
        let shown = format!("{:?}", RequestScope::of(&request));
        assert!(
            shown.contains("/v3") && !shown.contains("secret"),
            "{shown}"
        );
    }

    #[test]
    fn a_request_without_an_id_gets_a_uuid() {
        let request = Request::get("/").body(()).expect("request");
        let scope = RequestScope::of(&request);
        assert!(uuid::Uuid::parse_str(scope.id()).is_ok(), "{}", scope.id());
    }
}
