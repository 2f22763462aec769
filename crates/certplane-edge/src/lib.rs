//! The edge proxy.
//!
//! An edge follows a control plane's event stream ([`sync`]), keeps what it serves in an
//! immutable [`state::Snapshot`] swapped atomically on every change, terminates TLS with its own
//! certificate resolver over that snapshot ([`tls`]), answers ACME challenges and redirects plain
//! HTTP ([`http`]), and forwards requests to the app's backends ([`proxy`]). It never reads the
//! database and never holds the ACME account: it knows only what the control plane sends.

#![forbid(unsafe_code)]

mod admin;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod state;
pub mod sync;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use metrics::Metrics;
pub use proxy::{Proxy, ProxyConfig};
pub use state::Snapshot;
pub use sync::{FollowOptions, Follower, SyncError};
pub use tls::TlsOptions;

/// The snapshot every listener reads; replaced whole, never changed in place.
pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

/// Unix seconds now.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Everything an edge needs to run.
#[derive(Clone, Debug)]
pub struct EdgeOptions {
    pub follow: FollowOptions,
    pub https_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// `/metrics` (Prometheus) and `/healthz`; `None` for none.
    pub admin_listen: Option<SocketAddr>,
    pub tls: TlsOptions,
    pub proxy: ProxyConfig,
}

/// Where a running edge listens.
#[derive(Clone, Copy, Debug)]
pub struct EdgeAddrs {
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: Option<SocketAddr>,
}

/// Why an edge could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EdgeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("stopped before the first snapshot arrived")]
    StoppedBeforeReady,
}

/// Runs an edge until `shutdown` completes. It follows the control plane first and opens its
/// listeners only once it holds a complete snapshot, so it never answers from a partial or
/// stale state; `ready` is told the bound addresses then.
pub async fn run(
    options: EdgeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(EdgeAddrs),
) -> Result<(), EdgeError> {
    if plain_http_off_host(&options.follow.control_plane) {
        tracing::warn!(
            control_plane = %options.follow.control_plane,
            "the control plane is reached over plain HTTP on another host: the edge token travels in clear and whoever reads it can follow the stream; use https://"
        );
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let snapshot: SnapshotHandle = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
    let metrics = Arc::new(Metrics::default());
    let follower = Follower::new(options.follow.clone(), snapshot.clone(), metrics.clone())?;
    let mut served = follower.served();
    let mut following = tokio::spawn(follower.run(stop_rx.clone()));
    tokio::select! {
        r = served.wait_for(Option::is_some) => { r.map_err(|_| EdgeError::StoppedBeforeReady)?; }
        ended = &mut following => {
            return match ended {
                Ok(Err(e)) => Err(EdgeError::Sync(e)),
                _ => Err(EdgeError::StoppedBeforeReady),
            };
        }
    }
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| EdgeError::Bind { addr, source })
    };
    let https = bind(options.https_listen).await?;
    let http = bind(options.http_listen).await?;
    let admin = match options.admin_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let local = |l: &TcpListener, fallback: SocketAddr| l.local_addr().unwrap_or(fallback);
    let addrs = EdgeAddrs {
        https: local(&https, options.https_listen),
        http: local(&http, options.http_listen),
        admin: admin.as_ref().map(|l| local(l, options.https_listen)),
    };
    let config = tls::server_config(snapshot.clone(), metrics.clone(), options.tls)?;
    let proxy = Proxy::new(snapshot.clone(), metrics.clone(), options.proxy.clone());
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(tls::serve_https(
        https,
        config,
        proxy,
        metrics.clone(),
        stopped(stop_rx.clone()),
    ));
    {
        let (snapshot, metrics, stop) = (snapshot.clone(), metrics.clone(), stop_rx.clone());
        let port = addrs.https.port();
        tasks.spawn(async move {
            if let Err(e) = http::serve_http(http, snapshot, metrics, port, stopped(stop)).await {
                tracing::error!(error = %e, "HTTP listener failed");
            }
        });
    }
    if let Some(admin) = admin {
        tasks.spawn(admin::serve_admin(
            admin,
            snapshot.clone(),
            metrics.clone(),
            stopped(stop_rx.clone()),
        ));
    }
    tracing::info!(https = %addrs.https, http = %addrs.http, admin = ?addrs.admin, revision = snapshot.load().revision(), "edge serving");
    ready(addrs);
    while tasks.join_next().await.is_some() {}
    let _ = following.await;
    Ok(())
}

/// Whether `url` is `http://` to anything but this machine.
fn plain_http_off_host(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !loopback
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_flagged_only_off_this_machine() {
        assert!(!plain_http_off_host("http://127.0.0.1:4000"));
        assert!(!plain_http_off_host("http://localhost:4000/"));
        assert!(!plain_http_off_host("http://[::1]:4000"));
        assert!(!plain_http_off_host("https://cp.example.net"));
        assert!(plain_http_off_host("http://10.0.0.5:4000"));
        assert!(plain_http_off_host("http://cp.internal"));
    }
}
