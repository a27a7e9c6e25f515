//! Carrying a device's WebSocket to the process that hosts its session (issue 20).
//!
//! When several processes share the database, a session's media is served by one of them
//! (see `control::placement`). A device whose WebSocket reaches another process (through a
//! balancer: the SDK has one URL, and browsers follow no redirect on a WebSocket handshake)
//! is carried through: this process opens a WebSocket to the host's cluster address with the
//! device's query string (its token), marked with [`CARRIED_BY`] so that the host serves it
//! rather than carry it again, and relays frames both ways. Signalling only: the host's
//! answers name the host's ICE candidates, so media goes straight to the host.
//!
//! Each hop keeps its own liveness: the host pings the carrying process (answered here), and
//! this process pings a silent device and closes both ends after the idle timeout. A close
//! frame from either end is passed to the other with its code and reason (the SDK reconnects
//! on any code but 1000); a device's frame too large or malformed gets it the close the host
//! would send (1009, 1002); an end that stops reading for [`SEND_WAIT`] gets both ends closed.
//! A host that cannot be reached, or that goes away without a close, gets the device 1013
//! "try again later". Over `wss` the host's certificate must be valid for the cluster
//! address's name under the public roots (webpki-roots); a private CA is not supported yet.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use axum::http::HeaderValue;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self as tg};

/// The request header that marks a carried connection: its value names the carrying process.
pub(super) const CARRIED_BY: &str = "x-patchbay-carried-by";

/// How long reaching the host may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a close waits for the other end's answer before the connection is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long relaying one frame may wait for the receiving end to take it: an end that stops
/// reading gets both ends closed rather than holding the relay.
const SEND_WAIT: Duration = Duration::from_secs(10);

/// Where a carried connection goes and what it carries.
#[derive(Debug, Clone)]
pub(super) struct Carry {
    /// The host's device WebSocket base (`ws://10.0.0.5:8080`, `wss://…`).
    pub(super) host: String,
    /// The device's query string (its token, its `uniqueId`).
    pub(super) query: String,
    /// The device's `Origin`, for the host's origin policy.
    pub(super) origin: Option<HeaderValue>,
    /// This process's id.
    pub(super) by: String,
    /// After this long without a frame from the device it is closed (pinged after half).
    pub(super) idle_timeout: Duration,
}

/// A connection to the host, plain or TLS.
trait HostIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> HostIo for T {}

type Upstream = tokio_tungstenite::WebSocketStream<Box<dyn HostIo>>;

/// Why the host could not be reached.
#[derive(Debug, thiserror::Error)]
enum Unreachable {
    #[error("bad host address {0:?}")]
    Address(String),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out")]
    TimedOut,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("WebSocket handshake: {0}")]
    Handshake(tg::Error),
}

/// The TLS settings for hosts reached over `wss` (the public trust anchors).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, Unreachable> {
    static CONFIG: OnceLock<Option<Arc<rustls::ClientConfig>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .ok()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
        })
        .clone()
        .ok_or_else(|| Unreachable::Tls("no TLS protocol version available".into()))
}

async fn open(carry: &Carry) -> Result<Upstream, Unreachable> {
    let url = format!("{}/v3/?{}", carry.host.trim_end_matches('/'), carry.query);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|_| Unreachable::Address(carry.host.clone()))?;
    let headers = request.headers_mut();
    if let Ok(by) = HeaderValue::from_str(&carry.by) {
        headers.insert(CARRIED_BY, by);
    }
    if let Some(origin) = &carry.origin {
        headers.insert(axum::http::header::ORIGIN, origin.clone());
    }
    let uri = request.uri().clone();
    let (Some(host), Some(scheme)) = (uri.host(), uri.scheme_str()) else {
        return Err(Unreachable::Address(carry.host.clone()));
    };
    let tls = scheme == "wss";
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let work = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(Unreachable::Connect)?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn HostIo> = if tls {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| Unreachable::Tls(e.to_string()))?;
            let connector = tokio_rustls::TlsConnector::from(tls_config()?);
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| Unreachable::Tls(e.to_string()))?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        let config = tg::protocol::WebSocketConfig::default()
            .max_message_size(Some(super::MAX_FRAME_BYTES))
            .max_frame_size(Some(super::MAX_FRAME_BYTES));
        let (upstream, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(Unreachable::Handshake)?;
        Ok(upstream)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, work)
        .await
        .map_err(|_| Unreachable::TimedOut)?
}

/// Idle checks per idle timeout (as for devices served here).
const IDLE_TICKS: u32 = 4;

/// Relays `device` to the host until either end closes.
pub(super) async fn carry(mut device: WebSocket, carry: Carry) {
    let mut upstream = match open(&carry).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(host = %carry.host, error = %e, "cannot carry a device to its session's host");
            super::ws::close_with(device, 1013, "try again later").await;
            return;
        }
    };
    tracing::debug!(host = %carry.host, "device carried to its session's host");
    let mut idle_check =
        tokio::time::interval((carry.idle_timeout / IDLE_TICKS).max(Duration::from_millis(10)));
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    idle_check.tick().await;
    let mut silent_ticks = 0u32;
    loop {
        tokio::select! {
            frame = device.recv() => {
                silent_ticks = 0;
                let message = match frame {
                    Some(Ok(Message::Text(t))) => tg::Message::Text(t.as_str().into()),
                    Some(Ok(Message::Binary(b))) => tg::Message::Binary(b),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(frame))) => {
                        let frame = frame.map(|f| tg::protocol::CloseFrame {
                            code: CloseCode::from(f.code),
                            reason: f.reason.as_str().into(),
                        });
                        // Let the device's close echo be flushed, and pass it on.
                        let _ = tokio::time::timeout(CLOSE_WAIT, device.recv()).await;
                        close_upstream(upstream, frame).await;
                        return;
                    }
                    Some(Err(e)) => {
                        // A frame too large or a protocol error: the device gets the close
                        // it would get from the host, and the host a lost connection.
                        if let Some((code, reason)) = super::ws::close_for(e) {
                            super::ws::close_with(device, code, reason).await;
                        }
                        close_upstream(upstream, Some(tg::protocol::CloseFrame {
                            code: CloseCode::Away,
                            reason: "device connection lost".into(),
                        })).await;
                        return;
                    }
                    None => {
                        // The device is gone without a close: the host sees a lost connection.
                        close_upstream(upstream, Some(tg::protocol::CloseFrame {
                            code: CloseCode::Away,
                            reason: "device connection lost".into(),
                        })).await;
                        return;
                    }
                };
                if !matches!(tokio::time::timeout(SEND_WAIT, upstream.send(message)).await, Ok(Ok(()))) {
                    super::ws::close_with(device, 1013, "try again later").await;
                    return;
                }
            }
            frame = upstream.next() => {
                let message = match frame {
                    Some(Ok(tg::Message::Text(t))) => Message::Text(t.as_str().into()),
                    Some(Ok(tg::Message::Binary(b))) => Message::Binary(b),
                    Some(Ok(tg::Message::Close(frame))) => {
                        let (code, reason) = frame.map_or((1000, String::new()), |f| {
                            (u16::from(f.code), f.reason.as_str().to_owned())
                        });
                        // Answer the host's close (flushed by the next read), then the device.
                        let _ = tokio::time::timeout(CLOSE_WAIT, upstream.next()).await;
                        super::ws::close_with(device, code, &reason).await;
                        return;
                    }
                    Some(Ok(_)) => continue, // ping, pong, raw frames: this hop's own
                    None | Some(Err(_)) => {
                        // The host went away without a close: the device reconnects.
                        super::ws::close_with(device, 1013, "try again later").await;
                        return;
                    }
                };
                if !matches!(tokio::time::timeout(SEND_WAIT, device.send(message)).await, Ok(Ok(()))) {
                    close_upstream(upstream, Some(tg::protocol::CloseFrame {
                        code: CloseCode::Away,
                        reason: "device connection lost".into(),
                    })).await;
                    return;
                }
            }
            _ = idle_check.tick() => {
                silent_ticks += 1;
                if silent_ticks >= IDLE_TICKS {
                    super::ws::close_with(device, 1001, "idle timeout").await;
                    close_upstream(upstream, Some(tg::protocol::CloseFrame {
                        code: CloseCode::Away,
                        reason: "device idle".into(),
                    })).await;
                    return;
                }
                if silent_ticks == IDLE_TICKS / 2
                    && !matches!(tokio::time::timeout(SEND_WAIT, device.send(Message::Ping(Default::default()))).await, Ok(Ok(())))
                {
                    close_upstream(upstream, None).await;
                    return;
                }
            }
        }
    }
}

async fn close_upstream(mut upstream: Upstream, frame: Option<tg::protocol::CloseFrame>) {
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if upstream.close(frame).await.is_ok() {
            while let Some(Ok(_)) = upstream.next().await {}
        }
    })
    .await;
}
