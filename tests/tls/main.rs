//! TLS on the HTTP listener (`--tls-cert`/`--tls-key`) against the running app, with a
//! certificate made at test time: https works, plain HTTP on the TLS port is answered 400 and
//! closed, a handshake that stalls is cut by the header timeout and frees its place, and
//! unusable TLS settings refuse the start with a message naming the problem.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use patchbay::app::App;
use patchbay::config::ServeConfig;
use patchbay_testkit::app::{spawn_app_with, RunningApp};
use patchbay_testkit::db::sqlite_url;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound on any single wait (the machine is shared and noisy).
const WAIT: Duration = Duration::from_secs(30);

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files.
struct TestCert {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn test_cert() -> TestCert {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let dir = std::env::temp_dir().join(format!("patchbay-tls-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    TestCert {
        cert: cert_path,
        key: key_path,
        der: cert.der().clone(),
    }
}

fn tls_config(cert: &TestCert) -> ServeConfig {
    let mut config = ServeConfig::for_database(&sqlite_url());
    config.tls_cert = Some(cert.cert.clone());
    config.tls_key = Some(cert.key.clone());
    config
}

async fn tls_app(cert: &TestCert, configure: impl FnOnce(&mut ServeConfig)) -> RunningApp {
    let mut config = tls_config(cert);
    configure(&mut config);
    spawn_app_with(&config).await
}

/// A TLS client trusting only `cert`, on aws-lc-rs like the server.
fn connector(cert: &TestCert) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One HTTP/1.1 request over TLS (verifying the certificate for 127.0.0.1); the response.
async fn https(cert: &TestCert, addr: SocketAddr, path: &str) -> String {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let mut tls = tokio::time::timeout(WAIT, connector(cert).connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("write");
    read_to_close(&mut tls).await
}

/// Everything the peer sends until it closes the connection (bounded by [`WAIT`]).
async fn read_to_close(stream: &mut (impl AsyncRead + Unpin)) -> String {
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

#[tokio::test]
async fn https_serves_the_api() {
    let cert = test_cert();
    let app = tls_app(&cert, |_| {}).await;
    let response = https(&cert, app.http, "/healthz").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let response = https(&cert, app.http, "/v1/accounts/nobody/sessions").await;
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_told_to_use_https() {
    let cert = test_cert();
    let app = tls_app(&cert, |_| {}).await;
    let mut s = TcpStream::connect(app.http).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let response = read_to_close(&mut s).await;
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{response}"
    );
    assert!(
        response.ends_with("\r\n\r\nthis port speaks TLS: use https:// or wss://\n"),
        "{response}"
    );
    app.stop().await.expect("stop");
}

/// A client that opens TCP and sends nothing, or half a handshake, is cut by the header
/// timeout; meanwhile it holds the listener's one place, which is free again afterwards.
#[tokio::test]
async fn a_stalled_handshake_is_cut_by_the_header_timeout() {
    let cert = test_cert();
    let app = tls_app(&cert, |c| {
        c.listeners.http_header_timeout = 1;
        c.listeners.http_max_connections = Some(1);
    })
    .await;
    // Nothing at all.
    let mut silent = TcpStream::connect(app.http).await.expect("connect");
    assert_eq!(read_to_close(&mut silent).await, "");
    // A TLS record header, then nothing.
    let mut half = TcpStream::connect(app.http).await.expect("connect");
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .expect("write");
    assert_eq!(read_to_close(&mut half).await, "");
    // The one place is free: a request beyond the health checks is routed (405: sessions are
    // POSTed), not refused 503 as it is on the health-check reserve.
    let response = https(&cert, app.http, "/v1/accounts/nobody/sessions").await;
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    app.stop().await.expect("stop");
}

async fn refusal(config: &ServeConfig) -> String {
    match App::build(config).await {
        Ok(_) => panic!("the server started"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn unusable_tls_settings_refuse_the_start() {
    let cert = test_cert();
    let other = test_cert();
    let mut only_cert = tls_config(&cert);
    only_cert.tls_key = None;
    assert_eq!(
        refusal(&only_cert).await,
        "--tls-cert needs --tls-key (the certificate's private key)"
    );
    let mut mismatched = tls_config(&cert);
    mismatched.tls_key = Some(other.key.clone());
    assert_eq!(
        refusal(&mismatched).await,
        format!(
            "--tls-cert {} and --tls-key {}: the private key is not the key of the certificate (the first in the chain)",
            cert.cert.display(),
            other.key.display()
        )
    );
    let mut swapped = tls_config(&cert);
    swapped.tls_cert = Some(cert.key.clone());
    let e = refusal(&swapped).await;
    assert!(
        e.starts_with(&format!(
            "--tls-cert {}: no PEM certificate",
            cert.key.display()
        )),
        "{e}"
    );
}

/// The webhook client verifies a receiver's certificate against the public trust anchors: a
/// receiver with a self-signed certificate (this server's own TLS listener) gets no delivery,
/// and the delivery log says why, cause included.
#[tokio::test]
async fn a_webhook_receiver_whose_certificate_is_not_trusted_is_not_delivered_to() {
    use patchbay::control::NewParticipant;
    use patchbay::domain::{AccountId, CallbackUrl};
    let cert = test_cert();
    let app = tls_app(&cert, |c| c.webhooks.webhook_first_retry_ms = 50).await;
    let account = AccountId::parse("tls-hooks").expect("id");
    app.control
        .create_account(account.clone())
        .await
        .expect("account");
    let hook = format!("https://127.0.0.1:{}/hook", app.http.port());
    let (participant, token) = app
        .control
        .create_participant(
            &account,
            NewParticipant {
                callback_url: Some(CallbackUrl::parse(&hook).expect("callback")),
                ..Default::default()
            },
        )
        .await
        .expect("participant");
    let session = app
        .control
        .create_session(&account, None)
        .await
        .expect("session");
    app.control
        .add_member(&account, session.id, participant.id, None)
        .await
        .expect("member");
    let _phone = patchbay_testkit::phone_ua::dial(
        app.sip,
        &patchbay_testkit::phone_ua::Dial::with_token(&token),
    )
    .await
    .expect("answered");
    patchbay_testkit::wait::eventually("a delivery attempt", WAIT, || async {
        !app.control
            .delivery_log(&account, participant.id, 10)
            .await
            .expect("log")
            .is_empty()
    })
    .await;
    let log = app
        .control
        .delivery_log(&account, participant.id, 10)
        .await
        .expect("log");
    let attempt = &log[log.len() - 1];
    assert_eq!(attempt.status, None, "{attempt:?}");
    let error = attempt.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("certificate") && error.contains("UnknownIssuer"),
        "{attempt:?}"
    );
    app.stop().await.expect("stop");
}
