//! The HTTP and SIP TCP listeners against the running app, over raw sockets: header, body and
//! SIP head timeouts close slow clients; the per-source cap with its health-check reserve;
//! a request with both Content-Length and Transfer-Encoding ends its connection.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use patchbay::config::ServeConfig;
use patchbay::domain::AccountId;
use patchbay_testkit::app::{spawn_app_with, RunningApp};
use patchbay_testkit::db::sqlite_url;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Generous bound on any single wait (the machine is shared and noisy).
const WAIT: Duration = Duration::from_secs(10);

async fn app_with(configure: impl FnOnce(&mut ServeConfig)) -> RunningApp {
    let mut config = ServeConfig::for_database(&sqlite_url());
    configure(&mut config);
    spawn_app_with(&config).await
}

/// Everything the peer sends until it closes the connection (bounded by [`WAIT`]).
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("the server closes the connection within the bounded wait")
        {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&all).into_owned(),
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

async fn send(addr: SocketAddr, bytes: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes.as_bytes()).await.expect("write");
    stream
}

/// hyper does not refuse it: it drops `Content-Length`, reads the body by its chunks and
/// closes the connection after the response, which is what RFC 9112 §6.3 requires of a
/// server that does not refuse. What matters against smuggling: bytes after the body are
/// never served as a second request.
#[tokio::test]
async fn content_length_with_transfer_encoding_ends_the_connection_after_one_response() {
    let app = app_with(|_| {}).await;
    let mut s = send(
        app.http,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let response = read_to_close(&mut s).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(response.matches("HTTP/1.1 ").count(), 1, "{response}");
    // Without a body the same two requests are both served on one connection. (With only
    // `Transfer-Encoding` the health check leaves the body unread, and its response says
    // `Connection: close`: see below.)
    let mut s = send(
        app.http,
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let response = read_to_close(&mut s).await;
    assert_eq!(response.matches("HTTP/1.1 200").count(), 2, "{response}");
}

#[tokio::test]
async fn half_a_header_and_silence_are_closed_after_the_header_timeout() {
    let app = app_with(|c| c.listeners.http_header_timeout = 1).await;
    for start in ["GET /healthz HTTP/1.1\r\nHost: x\r\nAcc", ""] {
        let began = Instant::now();
        let mut s = send(app.http, start).await;
        read_to_close(&mut s).await;
        // Not before the timeout (some slack for timer granularity).
        assert!(began.elapsed() >= Duration::from_millis(900), "{start:?}");
    }
    // A keep-alive connection left idle after a response is closed too.
    let mut s = send(app.http, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let response = read_to_close(&mut s).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test]
async fn a_stalled_body_fails_after_the_body_timeout() {
    let app = app_with(|c| c.listeners.http_body_timeout = 1).await;
    let creds = app
        .control
        .create_account(AccountId::parse("slow").expect("id"))
        .await
        .expect("account");
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", creds.username, creds.password));
    let began = Instant::now();
    let mut s = send(
        app.http,
        &format!(
            "POST /v1/accounts/slow/participants HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {basic}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"tag\":"
        ),
    )
    .await;
    let response = read_to_close(&mut s).await;
    assert!(response.starts_with("HTTP/1.1 4"), "{response}");
    assert!(began.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn over_the_per_source_cap_only_health_checks_are_served() {
    let app = app_with(|c| c.listeners.http_max_connections_per_ip = 2).await;
    let held = [send(app.http, "").await, send(app.http, "").await];
    // Wait until both are counted: a third connection is then in the reserve.
    let mut s = send(
        app.http,
        "GET /v1/accounts/x/participants/y HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let response = read_to_close(&mut s).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("retry-after: 1"),
        "{response}"
    );
    for path in ["/healthz", "/readyz"] {
        let mut s = send(app.http, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        let response = read_to_close(&mut s).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
    }
    drop(held);
    // Places freed: a normal request is served again (the drop is seen shortly after).
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = send(
            app.http,
            "GET /v1/accounts/x/participants/y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        let response = read_to_close(&mut s).await;
        if response.starts_with("HTTP/1.1 401") {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {response}");
        tokio::task::yield_now().await;
    }
}

const OPTIONS: &str = "OPTIONS sip:patchbay@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bK-h9l\r\nFrom: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:patchbay@127.0.0.1>\r\nCall-ID: h9l-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";

#[tokio::test]
async fn sip_tcp_half_messages_and_silence_are_closed_after_the_head_timeout() {
    let app = app_with(|c| c.listeners.sip_tcp_head_timeout = 1).await;
    for start in [&OPTIONS[..60], ""] {
        let began = Instant::now();
        let mut s = send(app.sip, start).await;
        read_to_close(&mut s).await;
        assert!(began.elapsed() >= Duration::from_millis(900), "{start:?}");
    }
    // A whole message is answered, and the connection then outlives the head timeout.
    let mut s = send(app.sip, OPTIONS).await;
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    assert!(
        buf[..n].starts_with(b"SIP/2.0 "),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let still_open = tokio::time::timeout(Duration::from_millis(2500), s.read(&mut buf)).await;
    assert!(
        still_open.is_err(),
        "closed between messages: {still_open:?}"
    );
}

#[tokio::test]
async fn sip_tcp_connections_beyond_the_per_source_cap_are_closed_at_once() {
    let app = app_with(|c| c.listeners.sip_tcp_max_connections_per_ip = 1).await;
    let mut first = send(app.sip, OPTIONS).await;
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(WAIT, first.read(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    assert!(n > 0);
    let mut second = send(app.sip, "").await;
    assert_eq!(read_to_close(&mut second).await, "");
    drop(first);
}

/// A request refused before its body is read (here: no credentials) gets a response that says
/// `Connection: close`, and the connection is closed after it; a request whose body was read
/// keeps its connection (keep-alive, no such header).
#[tokio::test]
async fn a_response_to_a_request_with_an_unread_body_says_connection_close() {
    let app = app_with(|_| {}).await;
    let body = "{\"tag\":\"unread\"}";
    let mut s = send(
        app.http,
        &format!(
            "POST /v1/accounts/x/participants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    let response = read_to_close(&mut s).await;
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{response}"
    );
    // No body (nothing left unread): keep-alive, two answers on one connection.
    let mut s = send(
        app.http,
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let response = read_to_close(&mut s).await;
    assert_eq!(response.matches("HTTP/1.1 200").count(), 2, "{response}");
    assert_eq!(
        response
            .to_ascii_lowercase()
            .matches("connection: close")
            .count(),
        1,
        "only the second, which asked for it: {response}"
    );
}
