//! `certplane serve`: the whole platform on one machine.
//!
//! [`serve`] opens (and migrates) the store named by the configuration, makes sure an admin
//! token exists (`<data_dir>/admin-token`, mode 0600, created on first start), and serves the
//! API and the background ownership checks until the shutdown future completes, letting
//! requests in flight finish. The edge, the challenge DNS server and ACME join here as later
//! parts of certplane land.

#![forbid(unsafe_code)]

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use certplane_api::ApiDeps;
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
    ensure_admin_token(store.as_ref(), &token_path).await?;

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
    let router = certplane_api::router(ApiDeps {
        store,
        platform,
        verifier,
        keys,
    });
    tracing::info!(
        background_checks = config.dns.background_checks,
        "API listening on http://{addr}"
    );
    ready(addr);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = stop_tx.send(true);
    if let Some(task) = background {
        let _ = task.await;
    }
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

/// Registers the token in `path` as an admin token, creating both on first start.
async fn ensure_admin_token(store: &dyn Store, path: &Path) -> Result<(), ServerError> {
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
        }
        Err(e) => return Err(file_error(e)),
    }
    Ok(())
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
}
