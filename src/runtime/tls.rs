//! TLS on the HTTP listener (`--tls-cert`/`--tls-key`): https for the REST API and wss for the
//! device WebSocket, with rustls on aws-lc-rs, the one crypto library of the binary (str0m's
//! DTLS uses it too).
//!
//! This module owns loading the certificate chain and key (PEM files read once at startup:
//! replacing them needs a restart) and the server side of a connection's handshake. The HTTP
//! listener ([`super::http`]) calls [`TlsAcceptor::accept`] on each admitted connection, so a
//! TLS connection holds its gate permit like a plain one, and the handshake must finish within
//! the header timeout: a client that opens TCP and never completes it is cut.
//!
//! A client speaking plain HTTP to the TLS port gets a `400` telling it to use https (its
//! first byte is not a TLS handshake record), then the connection is closed.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The first byte of a TLS record carrying a handshake message (RFC 8446 §5.1).
const HANDSHAKE_RECORD: u8 = 0x16;

/// The answer to plain HTTP on the TLS port.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain; charset=utf-8\r\n\
connection: close\r\n\
content-length: 45\r\n\
\r\n\
this port speaks TLS: use https:// or wss://\n";

/// Installs aws-lc-rs as the process's default rustls provider (for the webhook client, which
/// takes the default), unless one is installed already.
pub fn install_crypto_provider() {
    // Err: a provider is installed already (by an earlier start in this process).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Accepts TLS connections with one certificate chain and key.
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsAcceptor(..)")
    }
}

impl TlsAcceptor {
    /// Reads the PEM certificate chain (leaf first) at `cert` and the PEM private key (PKCS#8,
    /// PKCS#1 or SEC1) at `key`; the error names the file and says what is wrong with it.
    pub fn from_pem_files(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
        let cert_pem = read(cert, "--tls-cert")?;
        let key_pem = read(key, "--tls-key")?;
        TlsAcceptor::from_pem(&cert_pem, &key_pem).map_err(|e| match e {
            PemError::Cert(why) => anyhow::anyhow!("--tls-cert {}: {why}", cert.display()),
            PemError::Key(why) => anyhow::anyhow!("--tls-key {}: {why}", key.display()),
            PemError::Pair(why) => anyhow::anyhow!(
                "--tls-cert {} and --tls-key {}: {why}",
                cert.display(),
                key.display()
            ),
        })
    }

    fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsAcceptor, PemError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PemError::Cert(pem_problem(&e, "certificate")))?;
        if chain.is_empty() {
            return Err(PemError::Cert(
                "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".to_owned(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| PemError::Key(pem_problem(&e, "private key")))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PemError::Pair(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                PemError::Pair(match e {
                    rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                        "the private key is not the key of the certificate (the first in the chain)"
                            .to_owned()
                    }
                    other => format!("unusable certificate or key: {other}"),
                })
            })?;
        // The listener speaks HTTP/1.1 only (WebSocket upgrades included).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Completes the server handshake on `io` (whose socket is `tcp`) within `timeout`,
    /// counted from now. `None` when the client sent plain HTTP (answered 400), failed the
    /// handshake, closed, or ran out of time; the reason is logged at debug level.
    pub async fn accept<IO>(
        &self,
        io: IO,
        tcp: impl FnOnce(&IO) -> &TcpStream,
        timeout: Duration,
        remote: SocketAddr,
    ) -> Option<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(timeout, self.handshake(io, tcp)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%remote, "TLS handshake timed out");
                None
            }
        }
    }

    async fn handshake<IO>(
        &self,
        mut io: IO,
        tcp: impl FnOnce(&IO) -> &TcpStream,
    ) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut first = [0u8; 1];
        let peeked = tcp(&io).peek(&mut first).await?;
        if peeked == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the handshake",
            ));
        }
        if first[0] != HANDSHAKE_RECORD {
            io.write_all(PLAIN_HTTP_ANSWER).await?;
            io.shutdown().await?;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "plain HTTP on the TLS port: answered 400",
            ));
        }
        self.inner.accept(io).await
    }
}

/// What is wrong with the PEM files.
#[derive(Debug)]
enum PemError {
    Cert(String),
    Key(String),
    Pair(String),
}

fn read(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {flag} {}: {e}", path.display()))
}

fn pem_problem(e: &pem::Error, what: &str) -> String {
    match e {
        pem::Error::NoItemsFound => format!(
            "no PEM {what} in the file (expected -----BEGIN PRIVATE KEY-----, \
             -----BEGIN RSA PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY-----)"
        ),
        // Only keys are read with `from_pem_slice`; a file without certificates is an empty
        // chain, refused by the caller.
        pem::Error::MissingSectionEnd { .. } => format!("a PEM {what} section has no END line"),
        pem::Error::IllegalSectionStart { .. } => "a malformed PEM BEGIN line".to_owned(),
        pem::Error::Base64Decode(why) => format!("a PEM {what} is not valid base64: {why}"),
        other => format!("not a PEM {what}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn refusal(cert: &str, key: &str) -> String {
        match TlsAcceptor::from_pem(cert.as_bytes(), key.as_bytes()) {
            Ok(_) => panic!("accepted"),
            Err(PemError::Cert(why)) => format!("cert: {why}"),
            Err(PemError::Key(why)) => format!("key: {why}"),
            Err(PemError::Pair(why)) => format!("pair: {why}"),
        }
    }

    #[test]
    fn a_matching_pair_loads() {
        let (cert, key) = pair();
        assert!(TlsAcceptor::from_pem(cert.as_bytes(), key.as_bytes()).is_ok());
    }

    #[test]
    fn bad_files_are_refused_precisely() {
        let (cert, key) = pair();
        let (_, other_key) = pair();
        assert!(refusal("", &key).starts_with("cert: no PEM certificate"));
        assert!(refusal(&key, &key).starts_with("cert: no PEM certificate"));
        assert!(refusal(&cert, &cert).starts_with("key: no PEM private key"));
        assert!(refusal(&cert, "garbage").starts_with("key: no PEM private key"));
        let truncated = &cert[..cert.len() - 30];
        assert!(
            refusal(truncated, &key).starts_with("cert: a PEM certificate section has no END"),
            "{}",
            refusal(truncated, &key)
        );
        assert_eq!(
            refusal(&cert, &other_key),
            "pair: the private key is not the key of the certificate (the first in the chain)"
        );
    }

    #[test]
    fn unreadable_files_are_named() {
        let missing = Path::new("/nonexistent/patchbay-cert.pem");
        let e = TlsAcceptor::from_pem_files(missing, missing)
            .expect_err("missing")
            .to_string();
        assert!(
            e.starts_with("cannot read --tls-cert /nonexistent/patchbay-cert.pem: "),
            "{e}"
        );
    }
}
