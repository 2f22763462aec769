//! `certplane serve`: the whole platform on one machine.
//!
//! [`serve`] opens (and migrates) the store named by the configuration, makes sure an admin
//! token exists (`<data_dir>/admin-token`, mode 0600, created on first start), and serves the
//! API, the background ownership checks, the propagation feed to edges and one edge of its own
//! (following the API over loopback like any other edge) until the shutdown future completes,
//! letting requests in flight finish. The challenge DNS server and ACME join here as later parts
//! of certplane land.

#![forbid(unsafe_code)]

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use certplane_api::{ApiDeps, Propagation};
use certplane_config::{Config, ConfigError};
use certplane_domain::ApiToken;
use certplane_ownership::{Checker, ResolverSetupError, Verifier};
use certplane_secrets::{MasterKeys, SecretsError};
use certplane_store::{SqlStore, Store, StoreError};
use tokio::net::TcpListener;

/// The admin token's file name under the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Runs the platform until `shutdown` completes. `ready` is told the API's bound address once
/// it accepts connections.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let platform = config.platform_settings()?;
    create_data_dir(&config.data_dir)?;
    let url = config.database_url();
    let store = SqlStore::open(&url).await?;
    tracing::info!(backend = ?store.backend(), "store ready");
    let store: Arc<dyn Store> = Arc::new(store);
    let token_path = config.data_dir.join(ADMIN_TOKEN_FILE);
    let admin_token = ensure_admin_token(store.as_ref(), &token_path).await?;

    let listener = TcpListener::bind(config.api.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.api.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServerError::Io)?;
    let platform = Arc::new(platform);
    let checker = Checker::new(
        &config.dns.nameservers,
        config.proxy_ranges()?,
        config.acme.caa_identities.clone(),
    )
    .map_err(ServerError::Resolver)?;
    let verifier = Arc::new(Verifier::new(store.clone(), checker, platform.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let background = config.dns.background_checks.then(|| {
        let mut stop = stop_rx.clone();
        tokio::spawn(verifier.clone().run(async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    });
    let keys = Arc::new(master_keys(&config)?);
    tracing::info!(current = keys.current_id(), "master keys ready");
    let propagation = Propagation::new(store.clone(), keys.clone());
    let feed = tokio::spawn(propagation.clone().run_feed(stop_rx.clone()));
    let issuer = issuer(
        &config,
        &platform,
        store.clone(),
        keys.clone(),
        verifier.clone(),
        propagation.clone(),
    )?;
    let acme = certplane_api::AcmeInfo {
        certificate_authority: config.acme.directory_url.clone(),
        wake: issuer.wake_handle(),
    };
    let issuing = tokio::spawn(issuer.run(stop_rx.clone()));
    let compaction = tokio::spawn(compact_log(store.clone(), stop_rx.clone()));
    let router_store = store.clone();
    let router = certplane_api::router(ApiDeps {
        store,
        platform,
        verifier,
        keys,
        propagation: propagation.clone(),
        acme: Some(acme),
    });
    tracing::info!(
        background_checks = config.dns.background_checks,
        "API listening on http://{addr}"
    );
    ready(addr);
    let edge = config
        .edge
        .enabled
        .then(|| tokio::spawn(run_edge(config.clone(), addr, admin_token, stop_rx.clone())));
    let dns = tokio::spawn(run_challenge_dns(
        config.clone(),
        router_store.clone(),
        stop_rx.clone(),
    ));
    let stop_all = {
        let propagation = propagation.clone();
        async move {
            shutdown.await;
            // Edge streams never end by themselves: end them, or graceful shutdown would wait
            // for them forever.
            propagation.shutdown();
        }
    };
    // No Nagle: the edge stream writes one small line per change, and a line held back until
    // the previous one is acknowledged waits out the peer's delayed ACK (40 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(stop_all)
        .await;
    let _ = stop_tx.send(true);
    if let Some(task) = background {
        let _ = task.await;
    }
    let _ = feed.await;
    let _ = issuing.await;
    let _ = compaction.await;
    if let Some(task) = edge {
        let _ = task.await;
    }
    let _ = dns.await;
    served.map_err(ServerError::Io)?;
    tracing::info!("stopped");
    Ok(())
}

fn create_data_dir(dir: &Path) -> Result<(), ServerError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ServerError::DataDir {
            path: dir.to_owned(),
            source,
        })
}

/// The master keys: `CERTPLANE_MASTER_KEY` when set, else the key file (created on first
/// start).
pub fn master_keys(config: &Config) -> Result<MasterKeys, ServerError> {
    match std::env::var("CERTPLANE_MASTER_KEY") {
        Ok(value) => Ok(MasterKeys::from_env_value(&value)?),
        Err(_) => Ok(MasterKeys::load_or_create(&config.master_key_file())?),
    }
}

/// Seals every stored private key under a new master key, keeping the old keys in the file
/// (backups sealed under them stay readable). Returns the new key's id and how many keys were
/// re-sealed.
pub async fn rotate_keys(config: &Config) -> Result<(String, usize), ServerError> {
    create_data_dir(&config.data_dir)?;
    let store = SqlStore::open(&config.database_url()).await?;
    let mut keys = master_keys(config)?;
    let new_id = keys.add_key()?;
    let mut resealed = 0;
    for record in store.all_certificates().await? {
        let cert = &record.cert;
        if cert.key_id == new_id {
            continue;
        }
        let aad = record.sealing_context();
        let opened = keys.open(
            &certplane_secrets::Sealed {
                key_id: cert.key_id.clone(),
                blob: cert.key_sealed.clone(),
            },
            &aad,
        )?;
        let sealed = keys.seal(&opened, &aad)?;
        if store
            .reseal_key(record.id, &cert.key_id, &sealed.key_id, &sealed.blob)
            .await?
        {
            resealed += 1;
        }
    }
    store.close().await;
    Ok((new_id, resealed))
}

/// Entries of the propagation log kept; an edge further behind than this takes a snapshot.
pub const LOG_KEEP: u64 = 100_000;

/// Trims the propagation log and removes expired challenge answers, every minute.
async fn compact_log(store: Arc<dyn Store>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match store.compact_revisions(LOG_KEEP).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "propagation log compacted"),
            Err(e) => tracing::warn!(error = %e, "cannot compact the propagation log"),
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        match store.purge_expired_challenges(now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired challenge answers removed"),
            Err(e) => tracing::warn!(error = %e, "cannot remove expired challenge answers"),
        }
    }
}

/// The `[acme]` section as the ACME client takes it (reads `ca_root_file`).
pub fn acme_client_config(
    config: &Config,
) -> Result<certplane_acme::AcmeClientConfig, ServerError> {
    let acme = &config.acme;
    let ca_root_pem = if acme.ca_root_file.as_os_str().is_empty() {
        None
    } else {
        Some(std::fs::read_to_string(&acme.ca_root_file).map_err(|e| {
            ServerError::Acme(format!(
                "acme.ca_root_file {}: {e}",
                acme.ca_root_file.display()
            ))
        })?)
    };
    let eab = (!acme.eab_kid.trim().is_empty()).then(|| {
        (
            acme.eab_kid.trim().to_owned(),
            acme.eab_hmac_key.trim().to_owned(),
        )
    });
    Ok(certplane_acme::AcmeClientConfig {
        directory_url: acme.directory_url.clone(),
        ca_root_pem,
        contact: acme.contact.clone(),
        eab,
    })
}

/// The issuer's view of the edges: the propagation feed and the edges' acknowledgements.
struct FeedSync {
    store: Arc<dyn Store>,
    propagation: Arc<Propagation>,
}

#[async_trait::async_trait]
impl certplane_acme::issuer::EdgeSync for FeedSync {
    fn poke(&self) {
        self.propagation.poke();
    }

    async fn propagated(
        &self,
        hostname: &certplane_domain::Hostname,
        timeout: std::time::Duration,
    ) -> bool {
        let Ok(revision) = self.store.hostname_revision(hostname).await else {
            return false;
        };
        matches!(
            self.propagation.wait_for(revision, timeout).await,
            Ok(Ok(()))
        )
    }
}

/// The ACME issuer of this control plane (its account is opened on first need).
fn issuer(
    config: &Config,
    platform: &certplane_domain::PlatformSettings,
    store: Arc<dyn Store>,
    keys: Arc<MasterKeys>,
    verifier: Arc<Verifier>,
    propagation: Arc<Propagation>,
) -> Result<Arc<certplane_acme::issuer::Issuer>, ServerError> {
    use certplane_acme::issuer::{AccountOpener, Issuer, IssuerSettings};
    let client = Arc::new(acme_client_config(config)?);
    let acme = &config.acme;
    let mut settings = IssuerSettings::new(
        // Unique per process, even for two containers with the same edge id and PID.
        format!(
            "{}:{}:{:08x}",
            default_edge_id(config),
            std::process::id(),
            rand::random::<u32>()
        ),
        platform.challenge_zone.as_str().to_owned(),
    );
    settings.directory_url = acme.directory_url.clone();
    settings.concurrency = acme.concurrency as usize;
    settings.lease = std::time::Duration::from_secs(u64::from(acme.lease_seconds));
    settings.limits = certplane_acme::policy::Limits {
        certificates_per_domain_per_week: acme.certificates_per_domain_per_week,
        duplicate_certificates_per_week: acme.duplicate_certificates_per_week,
        failed_validations_per_hour: acme.failed_validations_per_hour,
        orders_per_3_hours: acme.orders_per_3_hours,
    };
    settings.caa_identities = acme.caa_identities.clone();
    let opener: AccountOpener = {
        let store = store.clone();
        let keys = keys.clone();
        Box::new(move || {
            let store = store.clone();
            let keys = keys.clone();
            let client = client.clone();
            Box::pin(async move {
                acme_account(store.as_ref(), &keys, &client)
                    .await
                    .map_err(|e| e.to_string())
            })
        })
    };
    let sync = Arc::new(FeedSync {
        store: store.clone(),
        propagation,
    });
    Ok(Issuer::new(store, keys, verifier, sync, settings, opener))
}

/// The id an edge goes by when the configuration names none: `<host name>:<https port>`.
pub fn default_edge_id(config: &Config) -> String {
    if !config.edge.id.is_empty() {
        return config.edge.id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "edge".to_owned());
    format!("{host}:{}", config.edge.https_listen.port())
}

/// The options of an edge following `control_plane` with `token`, from the `[edge]` section.
pub fn edge_options(
    config: &Config,
    control_plane: String,
    token: String,
) -> certplane_edge::EdgeOptions {
    certplane_edge::EdgeOptions {
        follow: certplane_edge::FollowOptions {
            control_plane,
            token,
            edge_id: default_edge_id(config),
        },
        https_listen: config.edge.https_listen,
        http_listen: config.edge.http_listen,
        admin_listen: Some(config.edge.admin_listen),
        tls: certplane_edge::TlsOptions {
            resumption: config.edge.tls_resumption,
        },
        proxy: certplane_edge::ProxyConfig::default(),
    }
}

/// `serve`'s own edge: it follows the API over loopback with the admin token, exactly like a
/// separate `certplane edge`. If it cannot listen, the API keeps running and the log says why.
async fn run_edge(
    config: Config,
    api: SocketAddr,
    token: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let ip = if api.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        api.ip()
    };
    let url = format!("http://{}", SocketAddr::new(ip, api.port()));
    let options = edge_options(&config, url, token);
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    match certplane_edge::run(options, shutdown, |_| {}).await {
        Ok(()) | Err(certplane_edge::EdgeError::StoppedBeforeReady) => {}
        Err(e) => {
            tracing::error!(error = %e, "the built-in edge is not running; set edge.https_listen / edge.http_listen to free addresses, or edge.enabled = false")
        }
    }
}

/// `serve`'s challenge-zone DNS server. If it cannot listen (port 53 needs privileges, or a
/// local resolver holds it), the rest of the platform keeps running and the log says why.
async fn run_challenge_dns(
    config: Config,
    store: Arc<dyn Store>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    if let Err(e) = challenge_dns(&config, store, stop).await {
        tracing::error!(error = %e, "the challenge DNS server is not running; set dns.listen to a free address");
    }
}

/// The challenge-zone DNS server until `stop` turns true (`serve`, and `certplane dns` alone).
pub async fn challenge_dns(
    config: &Config,
    store: Arc<dyn Store>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ServerError> {
    let platform = config.platform_settings()?;
    certplane_challenge_dns::run(
        store,
        &platform.challenge_zone,
        &config.dns.zone_nameservers,
        config.dns.listen,
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
        |_| {},
    )
    .await
    .map_err(|e| ServerError::Dns(e.to_string()))
}

/// The platform's ACME account at the configured directory: restored from the store (its
/// credentials sealed under the master keys, the directory URL as associated data), or created
/// at the CA and stored sealed. When two control planes create one at the same moment, the
/// first stored is the account both use.
pub async fn acme_account(
    store: &dyn Store,
    keys: &MasterKeys,
    acme: &certplane_acme::AcmeClientConfig,
) -> Result<instant_acme::Account, ServerError> {
    let aad = acme.directory_url.as_bytes();
    if let Some(record) = store.acme_account(&acme.directory_url).await? {
        return restore_acme_account(keys, acme, record).await;
    }
    let (account, created) = certplane_acme::Accounts::open(acme, None)
        .await
        .map_err(|e| ServerError::Acme(e.to_string()))?;
    let Some(credentials) = created else {
        return Ok(account);
    };
    let credentials = zeroize::Zeroizing::new(credentials);
    let sealed = keys.seal(credentials.as_bytes(), aad)?;
    let stored = store
        .store_acme_account(&certplane_store::AcmeAccountRecord {
            directory_url: acme.directory_url.clone(),
            account_url: account.id().to_owned(),
            key_id: sealed.key_id,
            credentials_sealed: sealed.blob,
        })
        .await?;
    if stored.account_url == account.id() {
        tracing::info!(directory = %acme.directory_url, account = %stored.account_url, "ACME account created");
        return Ok(account);
    }
    // Another control plane stored its account first: use that one.
    restore_acme_account(keys, acme, stored).await
}

/// Opens stored credentials (sealed with the directory URL as associated data) at the CA.
async fn restore_acme_account(
    keys: &MasterKeys,
    acme: &certplane_acme::AcmeClientConfig,
    record: certplane_store::AcmeAccountRecord,
) -> Result<instant_acme::Account, ServerError> {
    let credentials = keys.open(
        &certplane_secrets::Sealed {
            key_id: record.key_id,
            blob: record.credentials_sealed,
        },
        acme.directory_url.as_bytes(),
    )?;
    let text = std::str::from_utf8(&credentials)
        .map_err(|_| ServerError::Acme("the stored ACME credentials are not UTF-8".into()))?;
    let (account, _) = certplane_acme::Accounts::open(acme, Some(text))
        .await
        .map_err(|e| ServerError::Acme(e.to_string()))?;
    Ok(account)
}

/// `certplane dns`: the challenge-zone DNS server alone, over the configured database, until
/// `shutdown` completes.
pub async fn serve_dns(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let store: Arc<dyn Store> = Arc::new(SqlStore::open(&config.database_url()).await?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    challenge_dns(&config, store, stop_rx).await
}

/// Registers the token in `path` as an admin token, creating both on first start. Returns it.
async fn ensure_admin_token(store: &dyn Store, path: &Path) -> Result<String, ServerError> {
    let file_error = |source| ServerError::AdminToken {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)
                .map_err(file_error)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the admin token file is readable by other users; chmod 600 it");
            }
            let token = ApiToken::presented(text.trim());
            store.bootstrap_admin(&token.hash()).await?;
            tracing::info!(path = %path.display(), "admin token loaded");
            Ok(text.trim().to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = ApiToken::generate();
            store.bootstrap_admin(&token.hash()).await?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(file_error)?;
            writeln!(file, "{}", token.expose()).map_err(file_error)?;
            tracing::info!(path = %path.display(), "admin org created; admin token written (mode 0600)");
            Ok(token.expose().to_owned())
        }
        Err(e) => Err(file_error(e)),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

/// Why the platform could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot use the admin token file {path}: {source}")]
    AdminToken {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("cannot set up DNS lookups: {0}")]
    Resolver(ResolverSetupError),
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    #[error("challenge DNS server: {0}")]
    Dns(String),
    #[error("ACME: {0}")]
    Acme(String),
}
