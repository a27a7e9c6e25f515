//! The HTTP listener (REST API and device WebSocket upgrades): an accept loop with back-off,
//! the connection gate, and per-connection timeouts.
//!
//! - A request's head must arrive within the header timeout, counted from when the server
//!   waits for it (HTTP/1: hyper's header-read timer also runs while a keep-alive connection
//!   sits idle, so this is also the keep-alive idle limit).
//! - A request body that stalls (no bytes) for the body timeout fails the request.
//! - A response to a request whose body was not read to its end (refused before reading it)
//!   carries `Connection: close`, and the connection is closed after it.
//! - A connection that carries no bytes either way for the idle timeout is shut down
//!   gracefully (covers stalled requests and readers); an in-flight request is finished first.
//! - When the listener is full, a newcomer within its source's share sheds the oldest
//!   connection that has not yet delivered a request head (see [`super::listen`]).
//! - Connections beyond the listener's or a source's cap, within a small reserve, are served
//!   for `/healthz` and `/readyz` only (others: 503 with `Retry-After`), one request each;
//!   beyond the reserve they are closed at once.
//! - A request with both `Content-Length` and `Transfer-Encoding` (request smuggling) is
//!   handled by hyper as RFC 9112 §6.3 allows: `Content-Length` is dropped, the body is read
//!   by `Transfer-Encoding` alone and the connection is closed after the response, so bytes
//!   after that body are never read as another request (tested in `tests/listeners`).
//!
//! - With TLS (`--tls-cert`, see [`super::tls`]), the handshake must finish within the header
//!   timeout, counted from `accept`, and holds the connection's place at the gate.
//!
//! Every request carries the peer's address as `ConnectInfo<SocketAddr>`.
#![allow(clippy::disallowed_methods)] // the runtime owns the listener's tasks and timers

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use super::listen::{Acceptor, Activity, Admission, ConnectionLimits, Gate, Head, Peers, Permit};
use super::tls::TlsAcceptor;

/// Timeouts and caps of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// Time for a request's head; also how long a kept-alive connection may wait for the next.
    pub header_timeout: Duration,
    /// How long a request body may stall (no bytes) before the request fails.
    pub body_timeout: Duration,
    /// How long a connection may move no bytes either way before it is closed.
    pub idle_timeout: Duration,
    /// Caps on concurrent connections, per listener and per source address.
    pub limits: ConnectionLimits,
}

/// What the listener serves: the app, as a cloneable tower service that never fails.
pub trait Handler:
    tower::Service<Request<Body>, Response = Response, Error = Infallible, Future = Self::Fut>
    + Clone
    + Send
    + 'static
{
    /// The service's future, sendable to a connection task.
    type Fut: std::future::Future<Output = Result<Response, Infallible>> + Send + 'static;
}

impl<S> Handler for S
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Fut = S::Future;
}

/// Connections kept beyond the caps for health checks.
pub const HEALTH_RESERVE: usize = 32;

/// Serves `app` on `listener` (over TLS when `tls` is given) until `shutdown` completes, then
/// lets every connection finish its in-flight request (upgraded WebSockets live on in their
/// own tasks).
/// Connections from `peers` (the other serving processes) count toward the total cap only.
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    settings: HttpSettings,
    tls: Option<TlsAcceptor>,
    peers: Peers,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) where
    S: Handler,
{
    let gate = Gate::new("http", settings.limits).with_peers(peers);
    let mut acceptor = Acceptor::new(listener, "http");
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    let builder = Arc::new(builder);
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = acceptor.accept() => accepted,
            () = &mut shutdown => break,
        };
        let Some(permit) = gate.admit(remote.ip()) else {
            drop(stream); // over every cap: closed at once, the descriptor freed
            continue;
        };
        let head = permit.head();
        let io = Watched::new(stream, permit);
        let (service, http, stopping) = (app.clone(), builder.clone(), stopped.clone());
        let Some(tls) = tls.clone() else {
            tokio::spawn(connection(
                io, remote, service, http, settings, head, stopping,
            ));
            continue;
        };
        // The handshake counts against the header timeout, holding the connection's permit;
        // a connection shed meanwhile is dropped.
        tokio::spawn(async move {
            let accepted = tokio::select! {
                io = tls.accept(io, tcp_of, settings.header_timeout, remote) => io,
                () = head.shed() => None,
            };
            if let Some(io) = accepted {
                connection(io, remote, service, http, settings, head, stopping).await;
            }
        });
    }
    let _ = stop.send(true);
    drop(stopped);
    // Every connection task holds a receiver: all have ended when the channel closes.
    stop.closed().await;
}

async fn connection<S, IO>(
    io: IO,
    remote: SocketAddr,
    app: S,
    builder: Arc<http1::Builder>,
    settings: HttpSettings,
    head: Head,
    mut stop: watch::Receiver<bool>,
) where
    S: Handler,
    IO: Connection,
{
    let reserve = io.watched().admission == Admission::Reserve;
    let activity = io.watched().activity.clone();
    let body_timeout = settings.body_timeout;
    let established = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (arrived, request_head) = (established.clone(), head.clone());
    let service = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        let app = app.clone();
        // A request's head arrived: the connection is established, never shed.
        if !arrived.swap(true, std::sync::atomic::Ordering::Relaxed) {
            request_head.done();
        }
        async move {
            let read = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let req = req.map(|b| {
                let b = ReadToEnd::new(b, read.clone());
                Body::new(tower_http::timeout::TimeoutBody::new(body_timeout, b))
            });
            let response = respond(app, req, remote, reserve).await;
            // A body left unread cannot be skipped: hyper closes the connection after this
            // response, so the response says so and the client does not reuse it.
            let unread = !read.load(std::sync::atomic::Ordering::Relaxed)
                && response.status() != StatusCode::SWITCHING_PROTOCOLS;
            Ok::<_, Infallible>(if unread { closing(response) } else { response })
        }
    });
    let service = hyper_util::service::TowerToHyperService::new(service);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let idle_at = activity.last() + settings.idle_timeout;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%remote, error = %e, "HTTP connection ended with an error");
                }
                break;
            }
            () = tokio::time::sleep_until(idle_at.into()) => {
                if activity.last().elapsed() < settings.idle_timeout {
                    continue;
                }
                if closing {
                    break; // still silent after the graceful shutdown: drop it
                }
                tracing::debug!(%remote, "HTTP connection idle: closing");
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            // Always listened to: a connection chosen just before its head completed is closed
            // all the same (its place went to the newcomer).
            () = head.shed() => {
                tracing::debug!(%remote, "HTTP connection shed: the listener is full");
                break;
            }
            _ = stop.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

async fn respond<S>(app: S, mut req: Request<Body>, remote: SocketAddr, reserve: bool) -> Response
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>,
{
    if reserve && !matches!(req.uri().path(), "/healthz" | "/readyz") {
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections: try again later",
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return closing(response);
    }
    req.extensions_mut().insert(ConnectInfo(remote));
    let response = match app.oneshot(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if reserve {
        closing(response)
    } else {
        response
    }
}

pin_project_lite::pin_project! {
    /// A request body that notes when it has been read to its end (or had none).
    struct ReadToEnd<B> {
        #[pin]
        inner: B,
        read: Arc<std::sync::atomic::AtomicBool>,
    }
}

impl<B: hyper::body::Body> ReadToEnd<B> {
    fn new(inner: B, read: Arc<std::sync::atomic::AtomicBool>) -> Self {
        if inner.is_end_stream() {
            read.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        ReadToEnd { inner, read }
    }
}

impl<B: hyper::body::Body> hyper::body::Body for ReadToEnd<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.read.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Asks hyper to close the connection once `response` is written.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn tcp_of(io: &Watched) -> &TcpStream {
    &io.stream
}

/// A connection's byte stream, plain or TLS, over its [`Watched`] socket.
trait Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn watched(&self) -> &Watched;
}

impl Connection for Watched {
    fn watched(&self) -> &Watched {
        self
    }
}

impl Connection for tokio_rustls::server::TlsStream<Watched> {
    fn watched(&self) -> &Watched {
        self.get_ref().0
    }
}

/// A connection's socket with its gate permit (freed when the socket is dropped, upgraded
/// or not) and its activity clock.
struct Watched {
    stream: TcpStream,
    activity: Activity,
    admission: Admission,
    _permit: Permit,
}

impl Watched {
    fn new(stream: TcpStream, permit: Permit) -> Watched {
        Watched {
            stream,
            activity: Activity::new(),
            admission: permit.admission(),
            _permit: permit,
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
