//! TLS termination: the certificate resolver over the live snapshot, and the HTTPS listener.
//!
//! [`Resolver`] answers each ClientHello from the snapshot published at that instant: the
//! exact name, then the wildcard one label up; custom before ACME; the first key type the
//! client can verify; never a certificate outside its validity. A ClientHello without SNI, or
//! for a name the edge holds no valid certificate for, gets no certificate, so rustls ends the
//! handshake with an `access_denied` alert: there is no default certificate to leak another
//! customer's name. rustls asks the resolver on every ClientHello, resumed or not, so a ticket
//! issued before a deletion does not keep the name alive.
//!
//! With ALPN `acme-tls/1` (RFC 8737) the resolver answers with the validation certificate of an
//! open TLS-ALPN-01 challenge for exactly that name, and the connection ends after the
//! handshake.

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certplane_events::ACME_TLS_ALPN;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::metrics::{Handshake, Metrics};
use crate::proxy::Proxy;
use crate::{SnapshotHandle, unix_now};

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Picks the certificate for each handshake from the current snapshot.
#[derive(Debug)]
pub struct Resolver {
    snapshot: SnapshotHandle,
    metrics: Arc<Metrics>,
}

impl Resolver {
    pub fn new(snapshot: SnapshotHandle, metrics: Arc<Metrics>) -> Self {
        Self { snapshot, metrics }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else {
            self.metrics.handshake(Handshake::NoSni);
            return None;
        };
        let name = lowercase(sni);
        let snapshot = self.snapshot.load();
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        let chosen = if acme {
            snapshot.alpn_challenge(&name)
        } else {
            snapshot.certificate(&name, hello.signature_schemes(), unix_now())
        };
        match (&chosen, acme) {
            (None, _) => self.metrics.handshake(Handshake::UnknownSni),
            (Some(_), true) => self.metrics.handshake(Handshake::AcmeChallenge),
            (Some(_), false) => {}
        }
        chosen
    }
}

fn lowercase(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// TLS settings of the HTTPS listener.
#[derive(Clone, Copy, Debug)]
pub struct TlsOptions {
    /// Session tickets and the session cache (on in production; off to measure full
    /// handshakes).
    pub resumption: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self { resumption: true }
    }
}

/// The server configuration: TLS 1.2 and 1.3 with the ring provider's defaults, the snapshot
/// resolver, ALPN h2, http/1.1 and acme-tls/1.
pub fn server_config(
    snapshot: SnapshotHandle,
    metrics: Arc<Metrics>,
    options: TlsOptions,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    // ring, not aws-lc-rs: no cmake/NASM in the build. Its default groups are X25519 and the
    // NIST curves (no ML-KEM), the same key exchange the peers in BENCHMARKING.md were measured with.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver::new(snapshot, metrics)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    if options.resumption {
        config.session_storage = ServerSessionMemoryCache::new(65_536);
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    } else {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// Accepts TLS connections until `shutdown`, and hands each finished handshake to the proxy.
pub async fn serve_https(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    proxy: Proxy,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let acceptor = TlsAcceptor::from(config);
    let proxy = Arc::new(proxy);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTPS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let proxy = proxy.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            handle(acceptor, tcp, peer, proxy, metrics).await;
        });
    }
}

async fn handle(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
) {
    let mut stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            if !refused(&e) {
                metrics.handshake(Handshake::Failed);
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
            }
            return;
        }
        Err(_) => {
            metrics.handshake(Handshake::Failed);
            return;
        }
    };
    let (_, conn) = stream.get_ref();
    if conn.alpn_protocol() == Some(ACME_TLS_ALPN) {
        // The validation is the handshake itself; nothing is served on this connection.
        let _ = stream.shutdown().await;
        return;
    }
    metrics.handshake(Handshake::Ok);
    let sni = conn
        .server_name()
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    proxy.serve_connection(stream, peer, sni).await;
}

/// Whether the handshake ended because the resolver refused it (counted there).
fn refused(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(e, rustls::Error::General(m) if m == "no server certificate chain resolved")
        })
}
