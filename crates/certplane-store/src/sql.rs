//! [`SqlStore`]: the [`Store`] over SQLite or PostgreSQL.
//!
//! Both backends run the same SQL through sqlx's `Any` driver (`$N` placeholders, `ON CONFLICT`,
//! `RETURNING` and integer-only columns are common ground); what differs is the schema
//! (`migrations/sqlite`, `migrations/postgres`) and the pools. SQLite gets one writer
//! connection, so write transactions queue instead of failing with `SQLITE_BUSY`, and a few
//! reader connections, which WAL mode lets run beside the writer.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use certplane_domain::{
    AppName, Backend as AppBackend, CertificateStatus, DeleteScope, Hostname, Ipv6Prefix, OrgName,
    OrgSlug, OwnershipToken, TokenHash,
};
use futures_core::future::BoxFuture;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::{Any, AnyConnection, AnyPool, Row, Transaction};

use crate::{
    AcmeAccountRecord, AcmeLedgerEntry, AcmeOrderRecord, AcmeOrderState, AcmeOrderUpdate,
    AcmeRelease, App, AppId, CertSource, CertificateRecord, ChallengeKind, ChallengeRecord,
    CheckUpdate, DeleteOutcome, EdgeApp, EdgeHostRecord, EdgeRecord, HostnameRecord,
    NewCertificate, OrderBudget, Org, OrgId, Page, Principal, Store, StoreError, TokenKind,
};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// How many fresh tokens to draw before giving up; with 40-bit tokens a second draw is
/// already rare.
const TOKEN_ATTEMPTS: usize = 16;
/// How many used addresses to step over when allocating an IPv6 address (they are there only
/// when the operator moved to a prefix that overlaps an earlier one).
const ADDRESS_ATTEMPTS: u128 = 4096;

/// Which database a [`SqlStore`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The SQL implementation of [`Store`].
#[derive(Clone, Debug)]
pub struct SqlStore {
    backend: Backend,
    writer: AnyPool,
    reader: AnyPool,
}

impl SqlStore {
    /// Opens (creating a SQLite file when needed) and migrates the database at `url`:
    /// `sqlite://PATH` or `postgres://USER@HOST[:PORT]/DB`.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let store = if url.starts_with("sqlite:") {
            let url = if url.contains('?') {
                url.to_owned()
            } else {
                format!("{url}?mode=rwc")
            };
            let options: AnyConnectOptions = url.parse()?;
            let pool = |max| {
                AnyPoolOptions::new()
                    .max_connections(max)
                    .after_connect(sqlite_pragmas)
                    .connect_with(options.clone())
            };
            let writer = pool(1).await?;
            // The writer creates the file and switches it to WAL before any reader opens it.
            SQLITE_MIGRATIONS.run(&writer).await?;
            let reader = pool(4).await?;
            Self {
                backend: Backend::Sqlite,
                writer,
                reader,
            }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = AnyPoolOptions::new()
                .max_connections(16)
                .connect(url)
                .await?;
            POSTGRES_MIGRATIONS.run(&pool).await?;
            Self {
                backend: Backend::Postgres,
                writer: pool.clone(),
                reader: pool,
            }
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        tracing::debug!(backend = ?store.backend, "store opened and migrated");
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Every row of every table as PostgreSQL prints it (`bytea` as `\x` hex), followed by the
    /// raw bytes of the sealed keys: for audits such as "no private key is stored in clear".
    /// PostgreSQL only; SQLite's file can be read as it is.
    pub async fn audit_dump(&self) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        for table in [
            "orgs",
            "api_tokens",
            "token_ledger",
            "ipv6_ledger",
            "apps",
            "hostnames",
            "certificates",
            "challenges",
            "edges",
        ] {
            let rows: Vec<String> =
                sqlx::query_scalar(&format!("SELECT CAST(t AS TEXT) FROM {table} t"))
                    .fetch_all(&self.reader)
                    .await?;
            for row in rows {
                out.extend_from_slice(row.as_bytes());
                out.push(b'\n');
            }
        }
        let sealed: Vec<Vec<u8>> = sqlx::query_scalar("SELECT key_sealed FROM certificates")
            .fetch_all(&self.reader)
            .await?;
        for blob in sealed {
            out.extend_from_slice(&blob);
        }
        Ok(out)
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// WAL lets readers run beside the writer; NORMAL sync is durable across process crashes and
/// loses at most the last transactions on power loss; the busy timeout covers the moments two
/// pools touch the file at once.
fn sqlite_pragmas(
    conn: &mut AnyConnection,
    _: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        for pragma in [
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = NORMAL",
            "PRAGMA busy_timeout = 10000",
            "PRAGMA foreign_keys = ON",
        ] {
            sqlx::query(pragma).execute(&mut *conn).await?;
        }
        Ok(())
    })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Draws a token that was never issued before and records it in the ledger.
async fn issue_token(conn: &mut AnyConnection, kind: &str) -> Result<OwnershipToken, StoreError> {
    for _ in 0..TOKEN_ATTEMPTS {
        let token = OwnershipToken::generate();
        let inserted = sqlx::query(
            "INSERT INTO token_ledger (token, kind, issued_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(token.as_str())
        .bind(kind)
        .bind(now())
        .execute(&mut *conn)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(token);
        }
    }
    Err(StoreError::TokensExhausted)
}

/// Takes the next address of `prefix` that was never handed out and records it in the ledger.
async fn allocate_ipv6(
    conn: &mut AnyConnection,
    prefix: &Ipv6Prefix,
    app: &AppName,
) -> Result<Ipv6Addr, StoreError> {
    let prefix_text = prefix.to_string();
    let max: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(idx), 0) FROM ipv6_ledger WHERE prefix = $1")
            .bind(&prefix_text)
            .fetch_one(&mut *conn)
            .await?;
    let first =
        u128::try_from(max).map_err(|_| StoreError::Corrupt("negative ipv6 index".into()))? + 1;
    for idx in first..first + ADDRESS_ATTEMPTS {
        let address = prefix
            .address(idx)
            .ok_or(StoreError::Ipv6Exhausted(*prefix))?;
        let idx = i64::try_from(idx).map_err(|_| StoreError::Ipv6Exhausted(*prefix))?;
        // A concurrent allocation of the same index (PostgreSQL) or an address an overlapping
        // earlier prefix handed out makes this a no-op; then the next index is tried.
        let inserted = sqlx::query(
            "INSERT INTO ipv6_ledger (address, prefix, idx, app_name, allocated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(address.to_string())
        .bind(&prefix_text)
        .bind(idx)
        .bind(app.as_str())
        .bind(now())
        .execute(&mut *conn)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(address);
        }
    }
    Err(StoreError::Ipv6Exhausted(*prefix))
}

const ORG_COLUMNS: &str = "o.id, o.slug, o.name, o.token, o.is_admin, o.created_at";
const APP_COLUMNS: &str = "id, org_id, name, token, ipv6, dedicated_ipv4, backends, created_at";
const HOSTNAME_COLUMNS: &str = "app_id, hostname, acme_requested, status, created_at, updated_at, \
     ownership_verified, configured, check_report, checked_at, next_check_at, check_failures, \
     acme_next_at, acme_failures, rate_limited_until, acme_errors";

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {value:?}"))
}

fn org_from_row(row: &AnyRow) -> Result<Org, StoreError> {
    let slug: String = row.try_get("slug")?;
    Ok(Org {
        id: OrgId(row.try_get("id")?),
        slug: OrgSlug::parse(&slug).map_err(|_| corrupt("org slug", &slug))?,
        name: row.try_get("name")?,
        token: OwnershipToken::from_stored(row.try_get("token")?),
        is_admin: row.try_get::<i64, _>("is_admin")? != 0,
        created_at: row.try_get("created_at")?,
    })
}

fn app_from_row(row: &AnyRow) -> Result<App, StoreError> {
    let name: String = row.try_get("name")?;
    let ipv6: String = row.try_get("ipv6")?;
    let backends: String = row.try_get("backends")?;
    let dedicated_ipv4: Option<String> = row.try_get("dedicated_ipv4")?;
    let dedicated_ipv4 = dedicated_ipv4
        .map(|ip| ip.parse().map_err(|_| corrupt("dedicated ipv4", &ip)))
        .transpose()?;
    Ok(App {
        id: AppId(row.try_get("id")?),
        org_id: OrgId(row.try_get("org_id")?),
        name: AppName::parse(&name).map_err(|_| corrupt("app name", &name))?,
        token: OwnershipToken::from_stored(row.try_get("token")?),
        ipv6: ipv6.parse().map_err(|_| corrupt("ipv6", &ipv6))?,
        dedicated_ipv4,
        backends: parse_backends(&backends)?,
        created_at: row.try_get("created_at")?,
    })
}

/// An app's backends from their stored JSON array.
fn parse_backends(json: &str) -> Result<Vec<AppBackend>, StoreError> {
    let backends: Vec<String> =
        serde_json::from_str(json).map_err(|_| corrupt("backends", json))?;
    backends
        .iter()
        .map(|b| AppBackend::parse(b).map_err(|_| corrupt("backend", b)))
        .collect()
}

fn hostname_from_row(row: &AnyRow) -> Result<HostnameRecord, StoreError> {
    let hostname: String = row.try_get("hostname")?;
    let status: String = row.try_get("status")?;
    Ok(HostnameRecord {
        app_id: AppId(row.try_get("app_id")?),
        hostname: Hostname::from_stored(&hostname),
        acme_requested: row.try_get::<i64, _>("acme_requested")? != 0,
        status: CertificateStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        ownership_verified: row.try_get::<i64, _>("ownership_verified")? != 0,
        configured: row.try_get::<i64, _>("configured")? != 0,
        check_report: row.try_get("check_report")?,
        checked_at: row.try_get("checked_at")?,
        next_check_at: row.try_get("next_check_at")?,
        check_failures: row.try_get("check_failures")?,
        acme_next_at: row.try_get("acme_next_at")?,
        acme_failures: row.try_get("acme_failures")?,
        rate_limited_until: row.try_get("rate_limited_until")?,
        acme_errors: row.try_get("acme_errors")?,
    })
}

const ORDER_COLUMNS: &str = "id, hostname, key_type, renewal, challenge, state, order_url, key_id, \
     key_sealed, problem, created_at, updated_at";

fn order_from_row(row: &AnyRow) -> Result<AcmeOrderRecord, StoreError> {
    let hostname: String = row.try_get("hostname")?;
    let state: String = row.try_get("state")?;
    Ok(AcmeOrderRecord {
        id: row.try_get("id")?,
        hostname: Hostname::from_stored(&hostname),
        key_type: row.try_get("key_type")?,
        renewal: row.try_get::<i64, _>("renewal")? != 0,
        challenge: row.try_get("challenge")?,
        state: AcmeOrderState::parse(&state).ok_or_else(|| corrupt("order state", &state))?,
        order_url: row.try_get("order_url")?,
        key_id: row.try_get("key_id")?,
        key_sealed: row.try_get("key_sealed")?,
        problem: row.try_get("problem")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn ledger_insert(
    conn: &mut AnyConnection,
    entry: &AcmeLedgerEntry,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO acme_ledger (kind, registered_domain, names, at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&entry.kind)
    .bind(&entry.registered_domain)
    .bind(&entry.names)
    .bind(entry.at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn backends_json(backends: &[AppBackend]) -> String {
    serde_json::Value::from(backends.iter().map(|b| b.as_str()).collect::<Vec<_>>()).to_string()
}

async fn insert_org(
    conn: &mut AnyConnection,
    name: &str,
    slug: &str,
    is_admin: bool,
) -> Result<Org, StoreError> {
    let token = issue_token(conn, "org").await?;
    let created_at = now();
    let inserted = sqlx::query(
        "INSERT INTO orgs (slug, name, token, is_admin, created_at) VALUES ($1, $2, $3, $4, $5) \
         RETURNING id",
    )
    .bind(slug)
    .bind(name)
    .bind(token.as_str())
    .bind(i64::from(is_admin))
    .bind(created_at)
    .fetch_one(&mut *conn)
    .await;
    let id: i64 = match inserted {
        Ok(row) => row.try_get("id")?,
        Err(e) if is_unique_violation(&e) => return Err(StoreError::OrgTaken),
        Err(e) => return Err(e.into()),
    };
    Ok(Org {
        id: OrgId(id),
        slug: OrgSlug::parse(slug).map_err(|_| corrupt("org slug", slug))?,
        name: name.to_owned(),
        token,
        is_admin,
        created_at,
    })
}

async fn insert_api_token(
    conn: &mut AnyConnection,
    org: OrgId,
    token: &TokenHash,
    kind: TokenKind,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_tokens (token_hash, org_id, kind, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(token.as_str())
    .bind(org.0)
    .bind(kind.as_str())
    .bind(now())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn hostname_row(
    conn: &mut AnyConnection,
    app: AppId,
    hostname: &Hostname,
) -> Result<Option<HostnameRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {HOSTNAME_COLUMNS} FROM hostnames WHERE app_id = $1 AND hostname = $2"
    ))
    .bind(app.0)
    .bind(hostname.as_str())
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(hostname_from_row)
    .transpose()
}

const CERT_COLUMNS: &str = "id, hostname, source, key_type, chain_pem, key_id, key_sealed, \
     not_before, not_after, issuer, fingerprint, warnings, created_at";

fn certificate_from_row(row: &AnyRow) -> Result<CertificateRecord, StoreError> {
    let hostname: String = row.try_get("hostname")?;
    let source: String = row.try_get("source")?;
    Ok(CertificateRecord {
        id: row.try_get("id")?,
        hostname: Hostname::from_stored(&hostname),
        cert: NewCertificate {
            source: CertSource::parse(&source)
                .ok_or_else(|| corrupt("certificate source", &source))?,
            key_type: row.try_get("key_type")?,
            chain_pem: row.try_get("chain_pem")?,
            key_id: row.try_get("key_id")?,
            key_sealed: row.try_get("key_sealed")?,
            not_before: row.try_get("not_before")?,
            not_after: row.try_get("not_after")?,
            issuer: row.try_get("issuer")?,
            fingerprint: row.try_get("fingerprint")?,
            warnings: row.try_get("warnings")?,
        },
        created_at: row.try_get("created_at")?,
    })
}

/// The status a hostname has: unverified names wait for ownership; verified ones are active
/// while a certificate is within its validity, expired when all are past it, and otherwise
/// wait for issuance (keeping an `issuing` or `failed` state the issuer set).
fn derive_status(
    verified: bool,
    validity: &[(i64, i64)],
    now: i64,
    current: CertificateStatus,
) -> CertificateStatus {
    if !verified {
        CertificateStatus::PendingOwnership
    } else if validity.iter().any(|&(nb, na)| nb <= now && now < na) {
        CertificateStatus::Active
    } else if !validity.is_empty() {
        CertificateStatus::Expired
    } else if matches!(
        current,
        CertificateStatus::Issuing | CertificateStatus::Failed
    ) {
        current
    } else {
        CertificateStatus::PendingValidation
    }
}

/// Recomputes and stores the hostname's status from its ownership and certificates.
async fn refresh_status(
    conn: &mut AnyConnection,
    app: AppId,
    hostname: &Hostname,
    now: i64,
) -> Result<Option<HostnameRecord>, StoreError> {
    let Some(record) = hostname_row(conn, app, hostname).await? else {
        return Ok(None);
    };
    let rows = sqlx::query("SELECT not_before, not_after FROM certificates WHERE hostname = $1")
        .bind(hostname.as_str())
        .fetch_all(&mut *conn)
        .await?;
    let validity: Vec<(i64, i64)> = rows
        .iter()
        .map(|r| Ok((r.try_get("not_before")?, r.try_get("not_after")?)))
        .collect::<Result<_, sqlx::Error>>()?;
    let status = derive_status(record.ownership_verified, &validity, now, record.status);
    if status == record.status {
        return Ok(Some(record));
    }
    sqlx::query(
        "UPDATE hostnames SET status = $1, updated_at = $2 WHERE app_id = $3 AND hostname = $4",
    )
    .bind(status.as_str())
    .bind(now)
    .bind(app.0)
    .bind(hostname.as_str())
    .execute(&mut *conn)
    .await?;
    hostname_row(conn, app, hostname).await
}

async fn insert_certificate(
    conn: &mut AnyConnection,
    hostname: &Hostname,
    cert: &NewCertificate,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO certificates (hostname, source, key_type, chain_pem, key_id, key_sealed, \
         not_before, not_after, issuer, fingerprint, warnings, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(hostname.as_str())
    .bind(cert.source.as_str())
    .bind(&cert.key_type)
    .bind(&cert.chain_pem)
    .bind(&cert.key_id)
    .bind(&cert.key_sealed)
    .bind(cert.not_before)
    .bind(cert.not_after)
    .bind(&cert.issuer)
    .bind(&cert.fingerprint)
    .bind(&cert.warnings)
    .bind(now())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Stores `cert` as the hostname's ACME certificate of its key type, replacing the previous one.
async fn replace_acme_certificate(
    conn: &mut AnyConnection,
    hostname: &Hostname,
    cert: &NewCertificate,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM certificates WHERE hostname = $1 AND source = $2 AND key_type = $3")
        .bind(hostname.as_str())
        .bind(CertSource::Acme.as_str())
        .bind(&cert.key_type)
        .execute(&mut *conn)
        .await?;
    insert_certificate(conn, hostname, cert).await
}

/// Appends to the propagation log that what edges serve for `hostnames` changed. Called last in
/// the transaction of the change. On PostgreSQL the writers first take one transaction-scoped
/// advisory lock, so revisions are numbered in commit order: an edge that has read revision N
/// can never later find a smaller one it missed. SQLite has one writer anyway.
async fn bump(
    conn: &mut AnyConnection,
    backend: Backend,
    hostnames: &[&str],
) -> Result<(), StoreError> {
    if hostnames.is_empty() {
        return Ok(());
    }
    if backend == Backend::Postgres {
        sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock(72437001)) AS serialised")
            .execute(&mut *conn)
            .await?;
    }
    let at = now();
    for hostname in hostnames {
        sqlx::query("INSERT INTO revisions (hostname, created_at) VALUES ($1, $2)")
            .bind(*hostname)
            .bind(at)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

const CHALLENGE_COLUMNS: &str = "hostname, kind, token, key_authorization, expires_at";

fn challenge_from_row(row: &AnyRow) -> Result<ChallengeRecord, StoreError> {
    let hostname: String = row.try_get("hostname")?;
    let kind: String = row.try_get("kind")?;
    Ok(ChallengeRecord {
        hostname: Hostname::from_stored(&hostname),
        kind: ChallengeKind::parse(&kind).ok_or_else(|| corrupt("challenge kind", &kind))?,
        token: row.try_get("token")?,
        key_authorization: row.try_get("key_authorization")?,
        expires_at: row.try_get("expires_at")?,
    })
}

/// How many hostnames one statement of an edge snapshot binds (well under the parameter limits
/// of both backends).
const NAMES_PER_QUERY: usize = 500;

/// `$1, $2, ...`: one placeholder per value.
fn placeholders(count: usize) -> String {
    (1..=count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What edges serve for each of `names`, in the order given, leaving out the names with nothing
/// to serve. Three queries per [`NAMES_PER_QUERY`] names: holders, certificates, challenges.
async fn edge_records(
    conn: &mut AnyConnection,
    names: &[String],
) -> Result<Vec<EdgeHostRecord>, StoreError> {
    let mut records = Vec::with_capacity(names.len());
    for chunk in names.chunks(NAMES_PER_QUERY) {
        let list = placeholders(chunk.len());
        let sql = format!(
            "SELECT h.hostname, h.ownership_verified, a.id, a.name, a.backends \
             FROM hostnames h JOIN apps a ON a.id = h.app_id WHERE h.hostname IN ({list})"
        );
        let mut query = sqlx::query(&sql);
        for name in chunk {
            query = query.bind(name.as_str());
        }
        let mut apps = HashMap::new();
        for row in query.fetch_all(&mut *conn).await? {
            let app_name: String = row.try_get("name")?;
            let backends: String = row.try_get("backends")?;
            let app = EdgeApp {
                id: AppId(row.try_get("id")?),
                name: AppName::parse(&app_name).map_err(|_| corrupt("app name", &app_name))?,
                backends: parse_backends(&backends)?,
                ownership_verified: row.try_get::<i64, _>("ownership_verified")? != 0,
            };
            apps.insert(row.try_get::<String, _>("hostname")?, app);
        }

        // Certificates are served only for hostnames whose holder proved ownership.
        let verified: Vec<&str> = chunk
            .iter()
            .filter(|name| apps.get(*name).is_some_and(|app| app.ownership_verified))
            .map(String::as_str)
            .collect();
        let mut certificates: HashMap<String, Vec<CertificateRecord>> = HashMap::new();
        if !verified.is_empty() {
            let sql = format!(
                "SELECT {CERT_COLUMNS} FROM certificates WHERE hostname IN ({}) \
                 ORDER BY hostname, source, key_type",
                placeholders(verified.len())
            );
            let mut query = sqlx::query(&sql);
            for name in &verified {
                query = query.bind(*name);
            }
            for row in query.fetch_all(&mut *conn).await? {
                let cert = certificate_from_row(&row)?;
                certificates
                    .entry(cert.hostname.as_str().to_owned())
                    .or_default()
                    .push(cert);
            }
        }

        let sql = format!(
            "SELECT {CHALLENGE_COLUMNS} FROM challenges WHERE hostname IN ({list}) \
             ORDER BY hostname, kind, token"
        );
        let mut query = sqlx::query(&sql);
        for name in chunk {
            query = query.bind(name.as_str());
        }
        let mut challenges: HashMap<String, Vec<ChallengeRecord>> = HashMap::new();
        for row in query.fetch_all(&mut *conn).await? {
            let challenge = challenge_from_row(&row)?;
            challenges
                .entry(challenge.hostname.as_str().to_owned())
                .or_default()
                .push(challenge);
        }

        for name in chunk {
            let record = EdgeHostRecord {
                hostname: Hostname::from_stored(name),
                app: apps.remove(name),
                certificates: certificates.remove(name).unwrap_or_default(),
                challenges: challenges.remove(name).unwrap_or_default(),
            };
            if !record.certificates.is_empty() || !record.challenges.is_empty() {
                records.push(record);
            }
        }
    }
    Ok(records)
}

/// `(app_id, hostname)` rows of due checks.
fn due_rows(rows: &[AnyRow]) -> Result<Vec<(AppId, Hostname)>, StoreError> {
    rows.iter()
        .map(|row| {
            let name: String = row.try_get("hostname")?;
            Ok((AppId(row.try_get("app_id")?), Hostname::from_stored(&name)))
        })
        .collect()
}

impl SqlStore {
    /// A read transaction that sees one snapshot of the database throughout: SQLite's WAL gives
    /// each read transaction one; PostgreSQL's default (read committed) takes one per statement.
    async fn read_snapshot(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let mut tx = self.reader.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    async fn try_create_app(
        &self,
        org: OrgId,
        name: &AppName,
        backends: &[AppBackend],
        prefix: &Ipv6Prefix,
        ipv4_pool: Option<&[Ipv4Addr]>,
    ) -> Result<App, StoreError> {
        let mut tx = self.writer.begin().await?;

        let taken: Option<i64> = sqlx::query_scalar("SELECT id FROM apps WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(StoreError::AppNameTaken);
        }
        let dedicated_ipv4 = match ipv4_pool {
            Some(pool) => Some(free_ipv4(&mut tx, pool).await?),
            None => None,
        };
        let token = issue_token(&mut tx, "app").await?;
        let ipv6 = allocate_ipv6(&mut tx, prefix, name).await?;
        let created_at = now();
        let inserted = sqlx::query(
            "INSERT INTO apps (org_id, name, token, ipv6, dedicated_ipv4, backends, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(org.0)
        .bind(name.as_str())
        .bind(token.as_str())
        .bind(ipv6.to_string())
        .bind(dedicated_ipv4.map(|ip| ip.to_string()))
        .bind(backends_json(backends))
        .bind(created_at)
        .fetch_one(&mut *tx)
        .await;
        let id: i64 = match inserted {
            Ok(row) => row.try_get("id")?,
            Err(e) if is_unique_violation(&e) && e.to_string().contains("dedicated_ipv4") => {
                return Err(StoreError::Ipv4Taken);
            }
            Err(e) if is_unique_violation(&e) => return Err(StoreError::AppNameTaken),
            Err(e) => return Err(e.into()),
        };
        tx.commit().await?;
        Ok(App {
            id: AppId(id),
            org_id: org,
            name: name.clone(),
            token,
            ipv6,
            dedicated_ipv4,
            backends: backends.to_vec(),
            created_at,
        })
    }
}

/// The first address of `pool` that no app holds now.
async fn free_ipv4(conn: &mut AnyConnection, pool: &[Ipv4Addr]) -> Result<Ipv4Addr, StoreError> {
    let held: Vec<String> =
        sqlx::query_scalar("SELECT dedicated_ipv4 FROM apps WHERE dedicated_ipv4 IS NOT NULL")
            .fetch_all(&mut *conn)
            .await?;
    pool.iter()
        .copied()
        .find(|ip| !held.contains(&ip.to_string()))
        .ok_or(StoreError::Ipv4Exhausted)
}

#[async_trait]
impl Store for SqlStore {
    async fn bootstrap_admin(&self, token: &TokenHash) -> Result<Org, StoreError> {
        let mut retried = false;
        loop {
            let mut tx = self.writer.begin().await?;
            let existing = sqlx::query(&format!(
                "SELECT {ORG_COLUMNS} FROM orgs o WHERE o.is_admin = 1 ORDER BY o.id LIMIT 1"
            ))
            .fetch_optional(&mut *tx)
            .await?;
            let org = match existing {
                Some(row) => org_from_row(&row)?,
                None => match insert_org(&mut tx, "Platform admin", "admin", true).await {
                    Ok(org) => org,
                    // Another node's first start created it at the same moment: use that one (the
                    // second attempt finds it; a customer org can never hold the slug, as only the
                    // admin creates orgs).
                    Err(StoreError::OrgTaken) if !retried => {
                        drop(tx);
                        retried = true;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            insert_api_token(&mut tx, org.id, token, TokenKind::Admin).await?;
            tx.commit().await?;
            return Ok(org);
        }
    }

    async fn create_org(
        &self,
        name: &OrgName,
        slug: &OrgSlug,
        token: &TokenHash,
    ) -> Result<Org, StoreError> {
        let mut tx = self.writer.begin().await?;
        let org = insert_org(&mut tx, name.as_str(), slug.as_str(), false).await?;
        insert_api_token(&mut tx, org.id, token, TokenKind::Org).await?;
        tx.commit().await?;
        Ok(org)
    }

    async fn create_edge_token(&self, token: &TokenHash) -> Result<Org, StoreError> {
        let mut tx = self.writer.begin().await?;
        let org = sqlx::query(&format!(
            "SELECT {ORG_COLUMNS} FROM orgs o WHERE o.is_admin = 1 ORDER BY o.id LIMIT 1"
        ))
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(org_from_row)
        .transpose()?
        .ok_or(StoreError::NoAdminOrg)?;
        insert_api_token(&mut tx, org.id, token, TokenKind::Edge).await?;
        tx.commit().await?;
        Ok(org)
    }

    async fn principal(&self, token: &TokenHash) -> Result<Option<Principal>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ORG_COLUMNS}, t.kind FROM api_tokens t JOIN orgs o ON o.id = t.org_id \
             WHERE t.token_hash = $1"
        ))
        .bind(token.as_str())
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let kind: String = row.try_get("kind")?;
        Ok(Some(Principal {
            org: org_from_row(&row)?,
            kind: TokenKind::parse(&kind).ok_or_else(|| corrupt("token kind", &kind))?,
        }))
    }

    async fn create_app(
        &self,
        org: OrgId,
        name: &AppName,
        backends: &[AppBackend],
        prefix: &Ipv6Prefix,
        ipv4_pool: Option<&[Ipv4Addr]>,
    ) -> Result<App, StoreError> {
        // A concurrent creation (PostgreSQL) may take the same free pool address first; the
        // unique index refuses the second, which then tries again with the next one.
        let mut attempts = 0;
        loop {
            match self
                .try_create_app(org, name, backends, prefix, ipv4_pool)
                .await
            {
                Err(StoreError::Ipv4Taken) if attempts < 8 => attempts += 1,
                Err(StoreError::Ipv4Taken) => return Err(StoreError::Ipv4Exhausted),
                other => return other,
            }
        }
    }

    async fn apps(&self, org: OrgId) -> Result<Vec<App>, StoreError> {
        sqlx::query(&format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE org_id = $1 ORDER BY name"
        ))
        .bind(org.0)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(app_from_row)
        .collect()
    }

    async fn app(&self, org: OrgId, name: &AppName) -> Result<Option<App>, StoreError> {
        sqlx::query(&format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE org_id = $1 AND name = $2"
        ))
        .bind(org.0)
        .bind(name.as_str())
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(app_from_row)
        .transpose()
    }

    async fn set_backends(
        &self,
        org: OrgId,
        name: &AppName,
        backends: &[AppBackend],
    ) -> Result<Option<App>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let app = sqlx::query(&format!(
            "UPDATE apps SET backends = $1 WHERE org_id = $2 AND name = $3 RETURNING {APP_COLUMNS}"
        ))
        .bind(backends_json(backends))
        .bind(org.0)
        .bind(name.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(app_from_row)
        .transpose()?;
        if let Some(app) = &app {
            // Edges route each hostname of the app to its backends.
            let names: Vec<String> =
                sqlx::query_scalar("SELECT hostname FROM hostnames WHERE app_id = $1")
                    .bind(app.id.0)
                    .fetch_all(&mut *tx)
                    .await?;
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            bump(&mut tx, self.backend, &names).await?;
        }
        tx.commit().await?;
        Ok(app)
    }

    async fn delete_app(&self, org: OrgId, name: &AppName) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM apps WHERE org_id = $1 AND name = $2")
                .bind(org.0)
                .bind(name.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(id) = id else { return Ok(false) };
        let names: Vec<String> =
            sqlx::query_scalar("SELECT hostname FROM hostnames WHERE app_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM certificates WHERE hostname IN (SELECT hostname FROM hostnames WHERE app_id = $1)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM hostnames WHERE app_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM apps WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        bump(&mut tx, self.backend, &names).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn request_acme(
        &self,
        app: AppId,
        hostname: &Hostname,
    ) -> Result<(HostnameRecord, bool), StoreError> {
        let mut tx = self.writer.begin().await?;
        let holder: Option<i64> =
            sqlx::query_scalar("SELECT app_id FROM hostnames WHERE hostname = $1")
                .bind(hostname.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        match holder {
            Some(holder) if holder != app.0 => return Err(StoreError::HostnameTaken),
            Some(_) => {
                sqlx::query(
                    "UPDATE hostnames SET acme_requested = 1, acme_next_at = 0, updated_at = $1 \
                     WHERE app_id = $2 AND hostname = $3 AND acme_requested = 0",
                )
                .bind(now())
                .bind(app.0)
                .bind(hostname.as_str())
                .execute(&mut *tx)
                .await?;
                let record = hostname_row(&mut tx, app, hostname)
                    .await?
                    .ok_or_else(|| corrupt("vanished hostname", hostname.as_str()))?;
                tx.commit().await?;
                return Ok((record, false));
            }
            None => {}
        }
        let at = now();
        let status = CertificateStatus::PendingOwnership;
        let inserted = sqlx::query(
            "INSERT INTO hostnames (app_id, hostname, acme_requested, status, created_at, updated_at) \
             VALUES ($1, $2, 1, $3, $4, $4)",
        )
        .bind(app.0)
        .bind(hostname.as_str())
        .bind(status.as_str())
        .bind(at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                // A concurrent claim won. If it was this same app's, the add is idempotent.
                drop(tx);
                let mut conn = self.reader.acquire().await?;
                return match hostname_row(&mut conn, app, hostname).await? {
                    Some(record) => Ok((record, false)),
                    None => Err(StoreError::HostnameTaken),
                };
            }
            Err(e) => return Err(e.into()),
        }
        // No revision: a hostname without a certificate changes nothing an edge serves.
        tx.commit().await?;
        Ok((
            HostnameRecord {
                app_id: app,
                hostname: hostname.clone(),
                acme_requested: true,
                status,
                created_at: at,
                updated_at: at,
                ownership_verified: false,
                configured: false,
                check_report: None,
                checked_at: None,
                next_check_at: 0,
                check_failures: 0,
                acme_next_at: 0,
                acme_failures: 0,
                rate_limited_until: None,
                acme_errors: None,
            },
            true,
        ))
    }

    async fn hostname(
        &self,
        app: AppId,
        hostname: &Hostname,
    ) -> Result<Option<HostnameRecord>, StoreError> {
        let mut conn = self.reader.acquire().await?;
        hostname_row(&mut conn, app, hostname).await
    }

    async fn hostnames(
        &self,
        app: AppId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page, StoreError> {
        let items = sqlx::query(&format!(
            "SELECT {HOSTNAME_COLUMNS} FROM hostnames WHERE app_id = $1 AND hostname > $2 \
             ORDER BY hostname LIMIT $3"
        ))
        .bind(app.0)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(hostname_from_row)
        .collect::<Result<_, _>>()?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM hostnames WHERE app_id = $1")
            .bind(app.0)
            .fetch_one(&self.reader)
            .await?;
        Ok(Page {
            items,
            total: u64::try_from(total).unwrap_or(0),
        })
    }

    async fn delete_hostname(
        &self,
        app: AppId,
        hostname: &Hostname,
        scope: DeleteScope,
    ) -> Result<DeleteOutcome, StoreError> {
        let mut tx = self.writer.begin().await?;
        let Some(record) = hostname_row(&mut tx, app, hostname).await? else {
            return Ok(DeleteOutcome::NotFound);
        };
        let sources: Vec<String> =
            sqlx::query_scalar("SELECT source FROM certificates WHERE hostname = $1")
                .bind(hostname.as_str())
                .fetch_all(&mut *tx)
                .await?;
        let has = |s: CertSource| sources.iter().any(|x| x == s.as_str());
        let (acme_left, custom_left) = match scope {
            DeleteScope::All => (false, false),
            DeleteScope::Acme if record.acme_requested || has(CertSource::Acme) => {
                (false, has(CertSource::Custom))
            }
            DeleteScope::Custom if has(CertSource::Custom) => {
                (record.acme_requested || has(CertSource::Acme), false)
            }
            DeleteScope::Acme | DeleteScope::Custom => return Ok(DeleteOutcome::NothingToDelete),
        };
        let removed_source = match scope {
            DeleteScope::All => None,
            DeleteScope::Acme => Some(CertSource::Acme),
            DeleteScope::Custom => Some(CertSource::Custom),
        };
        if !acme_left && !custom_left {
            for table in ["certificates", "acme_orders"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE hostname = $1"))
                    .bind(hostname.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM hostnames WHERE app_id = $1 AND hostname = $2")
                .bind(app.0)
                .bind(hostname.as_str())
                .execute(&mut *tx)
                .await?;
            bump(&mut tx, self.backend, &[hostname.as_str()]).await?;
            tx.commit().await?;
            return Ok(DeleteOutcome::Removed);
        }
        if let Some(source) = removed_source {
            sqlx::query("DELETE FROM certificates WHERE hostname = $1 AND source = $2")
                .bind(hostname.as_str())
                .bind(source.as_str())
                .execute(&mut *tx)
                .await?;
        }
        if scope == DeleteScope::Acme {
            // Open orders stop with the request; at the CA they expire unused.
            sqlx::query("DELETE FROM acme_orders WHERE hostname = $1")
                .bind(hostname.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE hostnames SET acme_requested = 0, updated_at = $1 WHERE app_id = $2 AND hostname = $3")
                .bind(now())
                .bind(app.0)
                .bind(hostname.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let record = refresh_status(&mut tx, app, hostname, now())
            .await?
            .ok_or_else(|| corrupt("vanished hostname", hostname.as_str()))?;
        bump(&mut tx, self.backend, &[hostname.as_str()]).await?;
        tx.commit().await?;
        Ok(DeleteOutcome::Updated(record))
    }

    async fn record_check(
        &self,
        app: AppId,
        hostname: &Hostname,
        update: &CheckUpdate,
    ) -> Result<Option<HostnameRecord>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let Some(current) = hostname_row(&mut tx, app, hostname).await? else {
            return Ok(None);
        };
        let updated_at = if update.verified != current.ownership_verified {
            update.checked_at
        } else {
            current.updated_at
        };
        let updated = sqlx::query(
            "UPDATE hostnames SET ownership_verified = $1, configured = $2, check_report = $3, \
             checked_at = $4, next_check_at = $5, check_failures = $6, updated_at = $7 \
             WHERE app_id = $8 AND hostname = $9 AND (checked_at IS NULL OR checked_at <= $4)",
        )
        .bind(i64::from(update.verified))
        .bind(i64::from(update.configured))
        .bind(&update.report)
        .bind(update.checked_at)
        .bind(update.next_check_at)
        .bind(update.failures)
        .bind(updated_at)
        .bind(app.0)
        .bind(hostname.as_str())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            // A check that started later has already stored its result: this one is stale.
            return Ok(Some(current));
        }
        let record = refresh_status(&mut tx, app, hostname, update.checked_at).await?;
        if record.as_ref().is_some_and(|r| {
            r.ownership_verified != current.ownership_verified || r.status != current.status
        }) {
            bump(&mut tx, self.backend, &[hostname.as_str()]).await?;
        }
        tx.commit().await?;
        Ok(record)
    }

    async fn due_checks(&self, now: i64, limit: u32) -> Result<Vec<(AppId, Hostname)>, StoreError> {
        let rows = sqlx::query(
            "SELECT app_id, hostname FROM hostnames WHERE next_check_at <= $1 \
             ORDER BY next_check_at, hostname LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        due_rows(&rows)
    }

    async fn changes_since(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Hostname)>, StoreError> {
        let rows = sqlx::query("SELECT revision, hostname FROM revisions WHERE revision > $1 ORDER BY revision LIMIT $2")
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|row| {
                let name: String = row.try_get("hostname")?;
                Ok((row.try_get("revision")?, Hostname::from_stored(&name)))
            })
            .collect()
    }

    async fn latest_revision(&self) -> Result<i64, StoreError> {
        // Never below what compaction deleted, even when it deleted everything: a snapshot taken
        // at this revision must not look stale.
        Ok(sqlx::query_scalar(
            "SELECT MAX(revision) FROM ( \
               SELECT COALESCE(MAX(revision), 0) AS revision FROM revisions \
               UNION ALL SELECT compacted_through FROM revision_compaction \
             ) latest",
        )
        .fetch_one(&self.reader)
        .await?)
    }

    async fn holder_verified(&self, hostname: &Hostname) -> Result<Option<bool>, StoreError> {
        let verified: Option<i64> =
            sqlx::query_scalar("SELECT ownership_verified FROM hostnames WHERE hostname = $1")
                .bind(hostname.as_str())
                .fetch_optional(&self.reader)
                .await?;
        Ok(verified.map(|v| v != 0))
    }

    async fn release_unverified(&self, hostname: &Hostname, to: AppId) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let holder =
            sqlx::query("SELECT app_id, ownership_verified FROM hostnames WHERE hostname = $1")
                .bind(hostname.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(holder) = holder else {
            return Ok(false);
        };
        let app_id: i64 = holder.try_get("app_id")?;
        let verified: i64 = holder.try_get("ownership_verified")?;
        if app_id == to.0 || verified != 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM certificates WHERE hostname = $1")
            .bind(hostname.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM hostnames WHERE hostname = $1 AND ownership_verified = 0")
            .bind(hostname.as_str())
            .execute(&mut *tx)
            .await?;
        bump(&mut tx, self.backend, &[hostname.as_str()]).await?;
        tx.commit().await?;
        tracing::info!(%hostname, from = app_id, to = to.0, "unverified claim released to an app that proved ownership");
        Ok(true)
    }

    async fn claim_due_checks(
        &self,
        now: i64,
        limit: u32,
        lease_until: i64,
    ) -> Result<Vec<(AppId, Hostname)>, StoreError> {
        // SQLite has one writer, so the subquery cannot race; PostgreSQL skips rows another
        // node's claim holds.
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let rows = sqlx::query(&format!(
            "UPDATE hostnames SET next_check_at = $3 WHERE id IN \
             (SELECT id FROM hostnames WHERE next_check_at <= $1 ORDER BY next_check_at LIMIT $2{lock}) \
             RETURNING app_id, hostname"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .bind(lease_until)
        .fetch_all(&self.writer)
        .await?;
        due_rows(&rows)
    }

    async fn app_by_id(&self, app: AppId) -> Result<Option<App>, StoreError> {
        sqlx::query(&format!("SELECT {APP_COLUMNS} FROM apps WHERE id = $1"))
            .bind(app.0)
            .fetch_optional(&self.reader)
            .await?
            .as_ref()
            .map(app_from_row)
            .transpose()
    }

    async fn org_by_id(&self, org: OrgId) -> Result<Option<Org>, StoreError> {
        sqlx::query(&format!("SELECT {ORG_COLUMNS} FROM orgs o WHERE o.id = $1"))
            .bind(org.0)
            .fetch_optional(&self.reader)
            .await?
            .as_ref()
            .map(org_from_row)
            .transpose()
    }

    async fn import_custom(
        &self,
        app: AppId,
        hostname: &Hostname,
        cert: &NewCertificate,
    ) -> Result<(HostnameRecord, bool), StoreError> {
        let mut tx = self.writer.begin().await?;
        let holder: Option<i64> =
            sqlx::query_scalar("SELECT app_id FROM hostnames WHERE hostname = $1")
                .bind(hostname.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let created = match holder {
            Some(holder) if holder != app.0 => return Err(StoreError::HostnameTaken),
            Some(_) => false,
            None => {
                let at = now();
                let inserted = sqlx::query(
                    "INSERT INTO hostnames (app_id, hostname, acme_requested, status, created_at, updated_at) \
                     VALUES ($1, $2, 0, $3, $4, $4)",
                )
                .bind(app.0)
                .bind(hostname.as_str())
                .bind(CertificateStatus::PendingOwnership.as_str())
                .bind(at)
                .execute(&mut *tx)
                .await;
                match inserted {
                    Ok(_) => true,
                    Err(e) if is_unique_violation(&e) => return Err(StoreError::HostnameTaken),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        sqlx::query("DELETE FROM certificates WHERE hostname = $1 AND source = $2")
            .bind(hostname.as_str())
            .bind(CertSource::Custom.as_str())
            .execute(&mut *tx)
            .await?;
        insert_certificate(&mut tx, hostname, cert).await?;
        let record = refresh_status(&mut tx, app, hostname, now())
            .await?
            .ok_or_else(|| corrupt("vanished hostname", hostname.as_str()))?;
        bump(&mut tx, self.backend, &[hostname.as_str()]).await?;
        tx.commit().await?;
        Ok((record, created))
    }

    async fn store_acme_certificate(
        &self,
        app: AppId,
        hostname: &Hostname,
        cert: &NewCertificate,
    ) -> Result<Option<HostnameRecord>, StoreError> {
        let mut tx = self.writer.begin().await?;
        if hostname_row(&mut tx, app, hostname).await?.is_none() {
            return Ok(None);
        }
        replace_acme_certificate(&mut tx, hostname, cert).await?;
        let record = refresh_status(&mut tx, app, hostname, now()).await?;
        bump(&mut tx, self.backend, &[hostname.as_str()]).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn certificates(
        &self,
        app: AppId,
        hostname: &Hostname,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        sqlx::query(&format!(
            // EXISTS on the hostname's own row: an IN over the app's hostnames made SQLite list
            // them all on every call (3 ms at 20k hostnames, against 0.01 ms).
            "SELECT {CERT_COLUMNS} FROM certificates WHERE hostname = $1 \
             AND EXISTS (SELECT 1 FROM hostnames h WHERE h.hostname = $1 AND h.app_id = $2) \
             ORDER BY source, key_type"
        ))
        .bind(hostname.as_str())
        .bind(app.0)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(certificate_from_row)
        .collect()
    }

    async fn all_certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates ORDER BY id"
        ))
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(certificate_from_row)
        .collect()
    }

    async fn reseal_key(
        &self,
        id: i64,
        old_key_id: &str,
        new_key_id: &str,
        sealed: &[u8],
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE certificates SET key_id = $1, key_sealed = $2 WHERE id = $3 AND key_id = $4",
        )
        .bind(new_key_id)
        .bind(sealed)
        .bind(id)
        .bind(old_key_id)
        .execute(&self.writer)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn token_issued(&self, token: &OwnershipToken) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM token_ledger WHERE token = $1")
            .bind(token.as_str())
            .fetch_optional(&self.reader)
            .await?;
        Ok(found.is_some())
    }

    async fn record_edge(&self, id: &str, revision: i64, seen_at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO edges (id, revision, first_seen, last_seen) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (id) DO UPDATE SET revision = excluded.revision, \
             last_seen = excluded.last_seen",
        )
        .bind(id)
        .bind(revision)
        .bind(seen_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn edges(&self) -> Result<Vec<EdgeRecord>, StoreError> {
        let rows = sqlx::query("SELECT id, revision, first_seen, last_seen FROM edges ORDER BY id")
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(EdgeRecord {
                    id: row.try_get("id")?,
                    revision: row.try_get("revision")?,
                    first_seen: row.try_get("first_seen")?,
                    last_seen: row.try_get("last_seen")?,
                })
            })
            .collect()
    }

    async fn put_challenge(&self, challenge: &ChallengeRecord) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        if challenge.kind == ChallengeKind::TlsAlpn01 {
            // A TLS handshake can present one validation certificate per name: the newest
            // answer replaces any other (e.g. one an order that ended uncleanly left behind).
            sqlx::query("DELETE FROM challenges WHERE hostname = $1 AND kind = $2 AND token <> $3")
                .bind(challenge.hostname.as_str())
                .bind(challenge.kind.as_str())
                .bind(&challenge.token)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO challenges (hostname, kind, token, key_authorization, created_at, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (hostname, kind, token) DO UPDATE SET \
             key_authorization = excluded.key_authorization, expires_at = excluded.expires_at",
        )
        .bind(challenge.hostname.as_str())
        .bind(challenge.kind.as_str())
        .bind(&challenge.token)
        .bind(&challenge.key_authorization)
        .bind(now())
        .bind(challenge.expires_at)
        .execute(&mut *tx)
        .await?;
        bump(&mut tx, self.backend, &[challenge.hostname.as_str()]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn remove_challenge(
        &self,
        hostname: &Hostname,
        kind: ChallengeKind,
        token: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let removed =
            sqlx::query("DELETE FROM challenges WHERE hostname = $1 AND kind = $2 AND token = $3")
                .bind(hostname.as_str())
                .bind(kind.as_str())
                .bind(token)
                .execute(&mut *tx)
                .await?;
        if removed.rows_affected() == 0 {
            // Nothing an edge serves changed: no revision.
            return Ok(false);
        }
        bump(&mut tx, self.backend, &[hostname.as_str()]).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn acme_account(
        &self,
        directory_url: &str,
    ) -> Result<Option<AcmeAccountRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT directory_url, account_url, key_id, credentials_sealed FROM acme_accounts \
             WHERE directory_url = $1",
        )
        .bind(directory_url)
        .fetch_optional(&self.writer)
        .await?;
        row.map(|row| {
            Ok(AcmeAccountRecord {
                directory_url: row.try_get("directory_url")?,
                account_url: row.try_get("account_url")?,
                key_id: row.try_get("key_id")?,
                credentials_sealed: row.try_get("credentials_sealed")?,
            })
        })
        .transpose()
    }

    async fn store_acme_account(
        &self,
        account: &AcmeAccountRecord,
    ) -> Result<AcmeAccountRecord, StoreError> {
        sqlx::query(
            "INSERT INTO acme_accounts (directory_url, account_url, key_id, credentials_sealed, \
             created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (directory_url) DO NOTHING",
        )
        .bind(&account.directory_url)
        .bind(&account.account_url)
        .bind(&account.key_id)
        .bind(&account.credentials_sealed)
        .bind(now())
        .execute(&self.writer)
        .await?;
        self.acme_account(&account.directory_url)
            .await?
            .ok_or_else(|| StoreError::Corrupt("the stored ACME account vanished".into()))
    }

    async fn remove_acme_account(
        &self,
        directory_url: &str,
        account_url: &str,
    ) -> Result<bool, StoreError> {
        let done =
            sqlx::query("DELETE FROM acme_accounts WHERE directory_url = $1 AND account_url = $2")
                .bind(directory_url)
                .bind(account_url)
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn purge_expired_challenges(&self, now: i64) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin().await?;
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT hostname FROM challenges WHERE expires_at <= $1 ORDER BY hostname",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let edge = sqlx::query("DELETE FROM challenges WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let dns = sqlx::query("DELETE FROM dns_challenges WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // The CA's longest window is a week; older ledger entries count for nothing.
        sqlx::query("DELETE FROM acme_ledger WHERE at <= $1")
            .bind(now - 8 * 86_400)
            .execute(&mut *tx)
            .await?;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        bump(&mut tx, self.backend, &names).await?;
        tx.commit().await?;
        Ok(edge + dns)
    }

    async fn edge_host(&self, hostname: &Hostname) -> Result<Option<EdgeHostRecord>, StoreError> {
        let mut tx = self.read_snapshot().await?;
        let mut records = edge_records(&mut tx, &[hostname.as_str().to_owned()]).await?;
        tx.commit().await?;
        Ok(records.pop())
    }

    async fn edge_hosts(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EdgeHostRecord>, StoreError> {
        let mut tx = self.read_snapshot().await?;
        // The first `limit` served names of each kind, merged: each side walks its index in
        // name order from `after` and stops early, so a page costs the same at the start and the
        // end of 100k names (the certificates' redundant `> $1` lets a merge join start there
        // too).
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT hostname FROM ( \
               SELECT hostname FROM ( \
                 SELECT h.hostname FROM hostnames h \
                 WHERE h.hostname > $1 AND h.ownership_verified = 1 \
                 AND EXISTS (SELECT 1 FROM certificates c \
                   WHERE c.hostname = h.hostname AND c.hostname > $1) \
                 ORDER BY h.hostname LIMIT $2) served \
               UNION \
               SELECT hostname FROM ( \
                 SELECT DISTINCT hostname FROM challenges WHERE hostname > $1 \
                 ORDER BY hostname LIMIT $2) answered \
             ) names ORDER BY hostname LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let records = edge_records(&mut tx, &names).await?;
        tx.commit().await?;
        Ok(records)
    }

    async fn hostname_revision(&self, hostname: &Hostname) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(MAX(revision), 0) FROM revisions WHERE hostname = $1",
        )
        .bind(hostname.as_str())
        .fetch_one(&self.reader)
        .await?)
    }

    async fn compact_revisions(&self, keep: u64) -> Result<u64, StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let mut tx = self.writer.begin().await?;
        // The newest entry to delete. Entries of transactions still running (PostgreSQL) are
        // numbered above every committed one (see `bump`), so none of them is deleted.
        let through: Option<i64> = sqlx::query_scalar(
            "SELECT revision FROM revisions ORDER BY revision DESC LIMIT 1 OFFSET $1",
        )
        .bind(keep)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(through) = through else {
            return Ok(0);
        };
        let deleted = sqlx::query("DELETE FROM revisions WHERE revision <= $1")
            .bind(through)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE revision_compaction SET compacted_through = $1 WHERE compacted_through < $1",
        )
        .bind(through)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected())
    }

    async fn compacted_through(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT compacted_through FROM revision_compaction")
                .fetch_one(&self.reader)
                .await?,
        )
    }

    async fn put_dns_challenge(
        &self,
        name: &str,
        value: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO dns_challenges (name, value, created_at, expires_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name, value) DO UPDATE SET expires_at = excluded.expires_at",
        )
        .bind(name)
        .bind(value)
        .bind(now())
        .bind(expires_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn remove_dns_challenge(&self, name: &str, value: &str) -> Result<bool, StoreError> {
        let removed = sqlx::query("DELETE FROM dns_challenges WHERE name = $1 AND value = $2")
            .bind(name)
            .bind(value)
            .execute(&self.writer)
            .await?;
        Ok(removed.rows_affected() > 0)
    }

    async fn dns_challenges(&self, now: i64) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, value FROM dns_challenges WHERE expires_at > $1 ORDER BY name, value",
        )
        .bind(now)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("name")?, row.try_get("value")?)))
            .collect()
    }

    async fn log_id(&self) -> Result<String, StoreError> {
        let current: String = sqlx::query_scalar("SELECT log_id FROM revision_compaction")
            .fetch_one(&self.reader)
            .await?;
        if !current.is_empty() {
            return Ok(current);
        }
        // The first caller's draw wins; a concurrent one reads it back.
        let drawn = certplane_domain::ApiToken::generate()
            .hash()
            .as_str()
            .to_owned();
        sqlx::query("UPDATE revision_compaction SET log_id = $1 WHERE log_id = ''")
            .bind(&drawn[..32.min(drawn.len())])
            .execute(&self.writer)
            .await?;
        Ok(sqlx::query_scalar("SELECT log_id FROM revision_compaction")
            .fetch_one(&self.writer)
            .await?)
    }

    async fn claim_acme_work(
        &self,
        owner: &str,
        now: i64,
        limit: u32,
        lease_until: i64,
    ) -> Result<Vec<(AppId, Hostname)>, StoreError> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let rows = sqlx::query(&format!(
            "UPDATE hostnames SET acme_lease_owner = $1, acme_lease_until = $4, acme_next_at = $4 WHERE id IN \
             (SELECT id FROM hostnames WHERE acme_requested = 1 AND ownership_verified = 1 \
              AND acme_next_at <= $2 AND acme_lease_until <= $2 \
              ORDER BY acme_next_at LIMIT $3{lock}) \
             RETURNING app_id, hostname"
        ))
        .bind(owner)
        .bind(now)
        .bind(i64::from(limit))
        .bind(lease_until)
        .fetch_all(&self.writer)
        .await?;
        due_rows(&rows)
    }

    async fn renew_acme_lease(
        &self,
        hostname: &Hostname,
        owner: &str,
        until: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE hostnames SET acme_lease_until = $1 WHERE hostname = $2 AND acme_lease_owner = $3",
        )
        .bind(until)
        .bind(hostname.as_str())
        .bind(owner)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_acme_work(
        &self,
        app: AppId,
        hostname: &Hostname,
        owner: &str,
        release: &AcmeRelease,
    ) -> Result<Option<HostnameRecord>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            // A wake during the lease (a customer's check: acme_next_at set to 0; the claim
            // set it to the lease's end) wins over the round's schedule and back-off.
            "UPDATE hostnames SET acme_lease_owner = NULL, acme_lease_until = 0, \
             acme_next_at = CASE WHEN acme_next_at = 0 THEN 0 ELSE $1 END, \
             acme_failures = CASE WHEN acme_next_at = 0 THEN 0 ELSE $2 END, \
             rate_limited_until = $3, \
             acme_errors = CASE WHEN acme_next_at = 0 THEN NULL ELSE $4 END \
             WHERE app_id = $5 AND hostname = $6 AND acme_lease_owner = $7",
        )
        .bind(release.next_at)
        .bind(release.failures)
        .bind(release.rate_limited_until)
        .bind(release.errors.as_deref())
        .bind(app.0)
        .bind(hostname.as_str())
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        if let Some(status) = release.status {
            sqlx::query(
                "UPDATE hostnames SET status = $1, updated_at = $2 WHERE app_id = $3 AND hostname = $4 \
                 AND ownership_verified = 1 AND status <> $1 \
                 AND NOT EXISTS (SELECT 1 FROM certificates c WHERE c.hostname = hostnames.hostname)",
            )
            .bind(status.as_str())
            .bind(now())
            .bind(app.0)
            .bind(hostname.as_str())
            .execute(&mut *tx)
            .await?;
        }
        let record = refresh_status(&mut tx, app, hostname, now()).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn mark_issuing(&self, hostname: &Hostname, owner: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE hostnames SET status = $1, updated_at = $2 WHERE hostname = $3 \
             AND acme_lease_owner = $4 AND ownership_verified = 1 AND status <> $1 \
             AND NOT EXISTS (SELECT 1 FROM certificates c WHERE c.hostname = hostnames.hostname)",
        )
        .bind(CertificateStatus::Issuing.as_str())
        .bind(now())
        .bind(hostname.as_str())
        .bind(owner)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn wake_acme(&self, hostname: &Hostname, reset: bool) -> Result<(), StoreError> {
        // A reset starts a new round: the failed attempts' challenge types are tried again.
        let sql = if reset {
            "UPDATE hostnames SET acme_next_at = 0, acme_failures = 0, acme_errors = NULL WHERE hostname = $1"
        } else {
            "UPDATE hostnames SET acme_next_at = 0 WHERE hostname = $1"
        };
        sqlx::query(sql)
            .bind(hostname.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn acme_orders(
        &self,
        hostname: &Hostname,
        limit: u32,
    ) -> Result<Vec<AcmeOrderRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ORDER_COLUMNS} FROM acme_orders WHERE hostname = $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(hostname.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await?;
        rows.iter().map(order_from_row).collect()
    }

    async fn insert_acme_order(
        &self,
        hostname: &Hostname,
        key_type: &str,
        renewal: bool,
        challenge: &str,
        registered_domain: &str,
        budget: Option<&OrderBudget<'_>>,
    ) -> Result<Result<AcmeOrderRecord, (i64, String)>, StoreError> {
        let mut tx = self.writer.begin().await?;
        if let Some(budget) = budget {
            // Budget and order in one transaction, one at a time across control planes (SQLite
            // has one writer): two nodes cannot both take the last order a limit allows.
            if self.backend == Backend::Postgres {
                sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock(72437002)) AS serialised")
                    .execute(&mut *tx)
                    .await?;
            }
            let (entries, orders) = ledger_rows(
                &mut tx,
                registered_domain,
                budget.since,
                budget.orders_since,
            )
            .await?;
            if let Err(refused) = (budget.check)(&entries, &orders) {
                return Ok(Err(refused));
            }
        }
        let at = now();
        let row = sqlx::query(&format!(
            "INSERT INTO acme_orders (hostname, key_type, renewal, challenge, state, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING {ORDER_COLUMNS}"
        ))
        .bind(hostname.as_str())
        .bind(key_type)
        .bind(i64::from(renewal))
        .bind(challenge)
        .bind(AcmeOrderState::Creating.as_str())
        .bind(at)
        .fetch_one(&mut *tx)
        .await?;
        let record = order_from_row(&row)?;
        ledger_insert(
            &mut tx,
            &AcmeLedgerEntry {
                kind: "order".into(),
                registered_domain: registered_domain.to_owned(),
                names: hostname.as_str().to_owned(),
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(record))
    }

    async fn update_acme_order(&self, id: i64, update: &AcmeOrderUpdate) -> Result<(), StoreError> {
        let (key_id, key_sealed) = match &update.key {
            Some((id, blob)) => (Some(id.as_str()), Some(blob.as_slice())),
            None => (None, None),
        };
        sqlx::query(
            "UPDATE acme_orders SET state = COALESCE($1, state), order_url = COALESCE($2, order_url), \
             key_id = COALESCE($3, key_id), key_sealed = COALESCE($4, key_sealed), \
             problem = COALESCE($5, problem), updated_at = $6 WHERE id = $7",
        )
        .bind(update.state.map(AcmeOrderState::as_str))
        .bind(update.order_url.as_deref())
        .bind(key_id)
        .bind(key_sealed)
        .bind(update.problem.as_deref())
        .bind(now())
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn acme_order_known(&self, order_url: &str) -> Result<bool, StoreError> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT id FROM acme_orders WHERE order_url = $1")
                .bind(order_url)
                .fetch_optional(&self.writer)
                .await?;
        Ok(found.is_some())
    }

    async fn finish_acme_order(
        &self,
        order_id: i64,
        app: AppId,
        hostname: &Hostname,
        cert: &NewCertificate,
        registered_domain: &str,
    ) -> Result<Option<HostnameRecord>, StoreError> {
        let mut tx = self.writer.begin().await?;
        // ACME given up (or the hostname gone) while the order ran: nothing is stored.
        match hostname_row(&mut tx, app, hostname).await? {
            Some(record) if record.acme_requested => {}
            _ => return Ok(None),
        }
        let open: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM acme_orders WHERE id = $1 AND hostname = $2 AND state NOT IN ('done', 'dead')",
        )
        .bind(order_id)
        .bind(hostname.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if open.is_none() {
            return Ok(None);
        }
        replace_acme_certificate(&mut tx, hostname, cert).await?;
        let at = now();
        sqlx::query("UPDATE acme_orders SET state = $1, updated_at = $2 WHERE id = $3")
            .bind(AcmeOrderState::Done.as_str())
            .bind(at)
            .bind(order_id)
            .execute(&mut *tx)
            .await?;
        ledger_insert(
            &mut tx,
            &AcmeLedgerEntry {
                kind: "certificate".into(),
                registered_domain: registered_domain.to_owned(),
                names: hostname.as_str().to_owned(),
                at,
            },
        )
        .await?;
        let record = refresh_status(&mut tx, app, hostname, at).await?;
        bump(&mut tx, self.backend, &[hostname.as_str()]).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn record_acme_event(&self, entry: &AcmeLedgerEntry) -> Result<(), StoreError> {
        let mut conn = self.writer.acquire().await?;
        ledger_insert(&mut conn, entry).await
    }

    async fn acme_ledger(
        &self,
        registered_domain: &str,
        since: i64,
        orders_since: i64,
    ) -> Result<(Vec<AcmeLedgerEntry>, Vec<i64>), StoreError> {
        let mut conn = self.reader.acquire().await?;
        ledger_rows(&mut conn, registered_domain, since, orders_since).await
    }
}

/// The ledger's entries for a registered domain since `since`, and the times of every order
/// since `orders_since`.
async fn ledger_rows(
    conn: &mut AnyConnection,
    registered_domain: &str,
    since: i64,
    orders_since: i64,
) -> Result<(Vec<AcmeLedgerEntry>, Vec<i64>), StoreError> {
    {
        let rows = sqlx::query(
            "SELECT kind, registered_domain, names, at FROM acme_ledger \
             WHERE registered_domain = $1 AND at > $2 ORDER BY at",
        )
        .bind(registered_domain)
        .bind(since)
        .fetch_all(&mut *conn)
        .await?;
        let entries = rows
            .iter()
            .map(|r| {
                Ok(AcmeLedgerEntry {
                    kind: r.try_get("kind")?,
                    registered_domain: r.try_get("registered_domain")?,
                    names: r.try_get("names")?,
                    at: r.try_get("at")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let orders: Vec<i64> = sqlx::query_scalar(
            "SELECT at FROM acme_ledger WHERE kind = 'order' AND at > $1 ORDER BY at",
        )
        .bind(orders_since)
        .fetch_all(&mut *conn)
        .await?;
        Ok((entries, orders))
    }
}
