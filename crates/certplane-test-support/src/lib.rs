//! Fixtures shared by certplane's tests.
//!
//! [`TestDb`] gives each test its own database: a SQLite file in a temporary directory, or a
//! fresh PostgreSQL database on the server named by `CERTPLANE_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, which the test command starts), dropped again
//! when the fixture goes. A PostgreSQL server that does not answer fails the test: the suite
//! never skips a backend silently.

#![forbid(unsafe_code)]

pub mod dns;
pub mod pebble;
pub mod pki;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use certplane_store::{SqlStore, Store};
use sqlx::{Connection, Executor, PgConnection};

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("CERTPLANE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of a test's own, removed on drop.
#[derive(Debug)]
pub struct TestDb {
    store: Arc<SqlStore>,
    url: String,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Postgres {
        admin_url: String,
        name: String,
    },
    /// Another connection to a database another `TestDb` owns.
    Peer,
}

impl TestDb {
    /// A fresh SQLite database file.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("certplane.db").display());
        let store = SqlStore::open(&url).await.expect("SQLite store opens");
        Self {
            store: Arc::new(store),
            url,
            cleanup: Cleanup::Dir(dir),
        }
    }

    /// A fresh PostgreSQL database.
    pub async fn postgres() -> Self {
        let (admin_url, name, url) = create_postgres_database().await;
        let store = SqlStore::open(&url).await.expect("PostgreSQL store opens");
        Self {
            store: Arc::new(store),
            url,
            cleanup: Cleanup::Postgres { admin_url, name },
        }
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    pub fn sql_store(&self) -> Arc<SqlStore> {
        self.store.clone()
    }

    /// A second store over the same database (a second control plane of a fleet); the first
    /// `TestDb` still owns the database and must outlive this one.
    pub async fn peer(&self) -> Self {
        let store = SqlStore::open(&self.url).await.expect("second store opens");
        Self {
            store: Arc::new(store),
            url: self.url.clone(),
            cleanup: Cleanup::Peer,
        }
    }

    /// The database URL, for a `certplane serve` under test.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Creates an empty PostgreSQL database; returns the admin URL, its name and its URL.
pub async fn create_postgres_database() -> (String, String, String) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let admin_url = postgres_admin_url();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!(
        "certplane_test_{}_{}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let mut conn = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
        panic!("PostgreSQL at {admin_url} does not answer ({e}); the test command starts it")
    });
    conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await
        .expect("CREATE DATABASE");
    conn.close().await.ok();
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(base, _)| base);
    let url = format!("{base}/{name}");
    (admin_url, name, url)
}

/// Drops a database made by [`create_postgres_database`].
pub fn drop_postgres_database(admin_url: &str, name: &str) {
    let admin_url = admin_url.to_owned();
    let statement = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    // Drop runs outside any async context; a thread of its own can block on a small runtime.
    let dropped = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let mut conn = PgConnection::connect(&admin_url).await?;
            conn.execute(statement.as_str()).await?;
            conn.close().await
        })
    })
    .join();
    if !matches!(dropped, Ok(Ok(()))) {
        eprintln!("warning: could not drop test database {name}");
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Cleanup::Postgres { admin_url, name } = &self.cleanup {
            drop_postgres_database(admin_url, name);
        }
    }
}
