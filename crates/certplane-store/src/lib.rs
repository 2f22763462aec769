//! certplane's storage.
//!
//! One [`Store`] trait: everything the control plane keeps, behind methods that each run as one
//! transaction. [`SqlStore`] implements it over SQLite (the embedded default: one file under the
//! data directory) and over PostgreSQL (a fleet of control-plane nodes), with versioned
//! migrations per backend. The shared test suite in `tests/suite.rs` runs every test against
//! both.
//!
//! The store keeps two ledgers that are never pruned: every ownership token and every dedicated
//! IPv6 address ever handed out. That is what makes "never reused" hold across deletes.

#![forbid(unsafe_code)]

mod records;
mod sql;

use std::net::Ipv4Addr;

use async_trait::async_trait;
use certplane_domain::{
    AppName, Backend, DeleteScope, Hostname, Ipv6Prefix, OrgName, OrgSlug, OwnershipToken,
    TokenHash,
};

pub use records::{
    AcmeAccountRecord, AcmeLedgerEntry, AcmeOrderRecord, AcmeOrderState, AcmeOrderUpdate,
    AcmeRelease, App, AppId, CertSource, CertificateRecord, ChallengeKind, ChallengeRecord,
    CheckUpdate, EdgeApp, EdgeHostRecord, EdgeRecord, HostnameRecord, NewCertificate, Org, OrgId,
    Page, Principal, TokenKind, sealing_context,
};
pub use sql::{Backend as SqlBackend, SqlStore};

/// Everything the control plane keeps. Implementations must make each method atomic.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates the admin org when there is none, and adds `token` to it.
    async fn bootstrap_admin(&self, token: &TokenHash) -> Result<Org, StoreError>;

    /// Creates an org with its first API token.
    async fn create_org(
        &self,
        name: &OrgName,
        slug: &OrgSlug,
        token: &TokenHash,
    ) -> Result<Org, StoreError>;

    /// Adds `token` to the admin org as an edge token: edges authenticate with it, apart from
    /// the operator's. [`StoreError::NoAdminOrg`] before the admin is bootstrapped.
    async fn create_edge_token(&self, token: &TokenHash) -> Result<Org, StoreError>;

    /// Who holds this API token, if anyone.
    async fn principal(&self, token: &TokenHash) -> Result<Option<Principal>, StoreError>;

    /// Creates an app with a fresh ownership token and the next never-used IPv6 address of
    /// `prefix`; with `ipv4_pool`, also the first address of the pool no app holds now.
    async fn create_app(
        &self,
        org: OrgId,
        name: &AppName,
        backends: &[Backend],
        prefix: &Ipv6Prefix,
        ipv4_pool: Option<&[Ipv4Addr]>,
    ) -> Result<App, StoreError>;

    /// The org's apps, by name.
    async fn apps(&self, org: OrgId) -> Result<Vec<App>, StoreError>;

    /// One of the org's apps; another org's app is `None`.
    async fn app(&self, org: OrgId, name: &AppName) -> Result<Option<App>, StoreError>;

    /// Replaces an app's backends.
    async fn set_backends(
        &self,
        org: OrgId,
        name: &AppName,
        backends: &[Backend],
    ) -> Result<Option<App>, StoreError>;

    /// Deletes an app and its hostnames. Its token and address stay in the ledgers.
    async fn delete_app(&self, org: OrgId, name: &AppName) -> Result<bool, StoreError>;

    /// Records that `hostname` wants an ACME certificate on `app`. Returns the record and
    /// whether it was created (`false`: the app already had the hostname).
    /// [`StoreError::HostnameTaken`] when another app, of any org, holds it.
    async fn request_acme(
        &self,
        app: AppId,
        hostname: &Hostname,
    ) -> Result<(HostnameRecord, bool), StoreError>;

    /// One hostname of the app.
    async fn hostname(
        &self,
        app: AppId,
        hostname: &Hostname,
    ) -> Result<Option<HostnameRecord>, StoreError>;

    /// The app's hostnames in name order, after the name `after`, at most `limit`.
    async fn hostnames(
        &self,
        app: AppId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page, StoreError>;

    /// Removes what `scope` names from a hostname; the hostname itself goes when nothing is left.
    async fn delete_hostname(
        &self,
        app: AppId,
        hostname: &Hostname,
        scope: DeleteScope,
    ) -> Result<DeleteOutcome, StoreError>;

    /// Stores a check's result, unless a check that started later already stored one (then the
    /// current record is returned unchanged). The status follows ownership: a verified hostname waiting for
    /// ownership moves on to `pending_validation`; one that is no longer verified goes back to
    /// `pending_ownership`. `None` when the hostname is gone.
    async fn record_check(
        &self,
        app: AppId,
        hostname: &Hostname,
        update: &CheckUpdate,
    ) -> Result<Option<HostnameRecord>, StoreError>;

    /// Hostnames whose next check is due at `now`, soonest first.
    async fn due_checks(&self, now: i64, limit: u32) -> Result<Vec<(AppId, Hostname)>, StoreError>;

    /// The propagation log after revision `after`, in order, at most `limit`: each entry says
    /// that what edges serve for the hostname changed at that revision.
    async fn changes_since(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Hostname)>, StoreError>;

    /// The newest revision of the propagation log (0 when empty); after a compaction that left
    /// nothing, the newest one it deleted.
    async fn latest_revision(&self) -> Result<i64, StoreError>;

    /// Whether the app holding `hostname` has proven ownership (`None` when nobody holds it).
    async fn holder_verified(&self, hostname: &Hostname) -> Result<Option<bool>, StoreError>;

    /// Releases `hostname` from the app holding it when that app has not proven ownership, so
    /// that `to` (which has) can claim it. `false` when the holder is verified, is `to`, or the
    /// hostname is free.
    async fn release_unverified(&self, hostname: &Hostname, to: AppId) -> Result<bool, StoreError>;

    /// Takes up to `limit` due hostnames for checking: their next check moves to `lease_until`,
    /// so another control-plane node does not check them too (and a node that dies mid-check
    /// leaves them to be taken again then). Rows other nodes are taking are skipped.
    async fn claim_due_checks(
        &self,
        now: i64,
        limit: u32,
        lease_until: i64,
    ) -> Result<Vec<(AppId, Hostname)>, StoreError>;

    /// An app by id, whatever its org (for the background workers, never for API callers).
    async fn app_by_id(&self, app: AppId) -> Result<Option<App>, StoreError>;

    /// An org by id (for the background workers, never for API callers).
    async fn org_by_id(&self, org: OrgId) -> Result<Option<Org>, StoreError>;

    /// Stores `cert` as the hostname's custom certificate, replacing any previous one in the same
    /// transaction (the old one stays in force until the new one is committed). Adds the hostname
    /// to the app when it lacks it. [`StoreError::HostnameTaken`] when another app holds it.
    async fn import_custom(
        &self,
        app: AppId,
        hostname: &Hostname,
        cert: &NewCertificate,
    ) -> Result<(HostnameRecord, bool), StoreError>;

    /// Stores an ACME certificate of the hostname, replacing the one of the same key type.
    async fn store_acme_certificate(
        &self,
        app: AppId,
        hostname: &Hostname,
        cert: &NewCertificate,
    ) -> Result<Option<HostnameRecord>, StoreError>;

    /// The hostname's certificates.
    async fn certificates(
        &self,
        app: AppId,
        hostname: &Hostname,
    ) -> Result<Vec<CertificateRecord>, StoreError>;

    /// Every stored certificate, for re-sealing keys under a new master key.
    async fn all_certificates(&self) -> Result<Vec<CertificateRecord>, StoreError>;

    /// Replaces a certificate's sealed key if it is still sealed under `old_key_id`.
    async fn reseal_key(
        &self,
        id: i64,
        old_key_id: &str,
        new_key_id: &str,
        sealed: &[u8],
    ) -> Result<bool, StoreError>;

    /// Whether this token is in the ledger of issued ownership tokens.
    async fn token_issued(&self, token: &OwnershipToken) -> Result<bool, StoreError>;

    /// Records that edge `id` reported in at `seen_at` having applied `revision`. The revision
    /// is set as given, even lower than before: a restarted edge starts over from a snapshot.
    async fn record_edge(&self, id: &str, revision: i64, seen_at: i64) -> Result<(), StoreError>;

    /// Every edge that has reported in, by id.
    async fn edges(&self) -> Result<Vec<EdgeRecord>, StoreError>;

    /// Stores the answer to an ACME challenge (replacing one for the same hostname, kind and
    /// token; a TLS-ALPN-01 answer replaces every other TLS-ALPN-01 answer of the hostname, as a
    /// handshake can present only one) and logs the hostname: edges serve the answer. The
    /// hostname need not be held.
    async fn put_challenge(&self, challenge: &ChallengeRecord) -> Result<(), StoreError>;

    /// Removes a challenge answer, logging the hostname when there was one. `false` when there
    /// was none.
    async fn remove_challenge(
        &self,
        hostname: &Hostname,
        kind: ChallengeKind,
        token: &str,
    ) -> Result<bool, StoreError>;

    /// What edges serve for `hostname`: the holding app, its certificates when its ownership is
    /// verified, and the challenge answers. `None` when that is nothing to serve (no served
    /// certificate and no challenge): the edge drops the name.
    async fn edge_host(&self, hostname: &Hostname) -> Result<Option<EdgeHostRecord>, StoreError>;

    /// A page of a full snapshot for edges: every hostname [`Store::edge_host`] returns a
    /// record for, as it returns it, in byte order of the name, after `after`, at most `limit`.
    async fn edge_hosts(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EdgeHostRecord>, StoreError>;

    /// The newest revision of the propagation log for `hostname`; 0 when the log has none
    /// (never changed, or compacted away).
    async fn hostname_revision(&self, hostname: &Hostname) -> Result<i64, StoreError>;

    /// Deletes all but the newest `keep` entries of the propagation log, so it does not grow
    /// without end; raises [`Store::compacted_through`] to the newest one deleted. Returns how
    /// many were deleted. Revision numbers are never reused.
    async fn compact_revisions(&self, keep: u64) -> Result<u64, StoreError>;

    /// The highest revision compaction has deleted (0 before any). An edge resuming after an
    /// older revision may have missed changes and needs a fresh snapshot; it reads this after
    /// [`Store::changes_since`], so a compaction in between cannot go unnoticed.
    async fn compacted_through(&self) -> Result<i64, StoreError>;

    /// The platform's ACME account at `directory_url`, if one was stored.
    async fn acme_account(
        &self,
        directory_url: &str,
    ) -> Result<Option<AcmeAccountRecord>, StoreError>;

    /// Stores the account for its directory unless one is stored already (two control planes
    /// creating it at once: the first stored wins, and is returned either way).
    async fn store_acme_account(
        &self,
        account: &AcmeAccountRecord,
    ) -> Result<AcmeAccountRecord, StoreError>;

    /// Forgets the account at `directory_url` if it is still `account_url` (the CA deactivated
    /// or lost it: the next use creates a new one). `false` when another is stored.
    async fn remove_acme_account(
        &self,
        directory_url: &str,
        account_url: &str,
    ) -> Result<bool, StoreError>;

    /// Removes every edge challenge and DNS-01 value that expired before `now` (edge challenges
    /// with a revision, so edges stop answering them). Returns how many went.
    async fn purge_expired_challenges(&self, now: i64) -> Result<u64, StoreError>;

    /// Publishes a DNS-01 TXT value at `name` (lowercase, no trailing dot) in the platform's
    /// challenge zone until `expires_at` (unix seconds). Values add up: several orders can
    /// validate at one name at once.
    async fn put_dns_challenge(
        &self,
        name: &str,
        value: &str,
        expires_at: i64,
    ) -> Result<(), StoreError>;

    /// Withdraws one DNS-01 value. `false` when it was not published.
    async fn remove_dns_challenge(&self, name: &str, value: &str) -> Result<bool, StoreError>;

    /// Every DNS-01 value not expired at `now`: `(name, value)` by name.
    async fn dns_challenges(&self, now: i64) -> Result<Vec<(String, String)>, StoreError>;

    /// Takes up to `limit` hostnames whose ACME work is due at `now` (ACME requested,
    /// ownership verified, `acme_next_at` passed, no live lease of another owner): they are
    /// leased to `owner` until `lease_until`, so only one worker drives a hostname at a time,
    /// on any number of control planes.
    async fn claim_acme_work(
        &self,
        owner: &str,
        now: i64,
        limit: u32,
        lease_until: i64,
    ) -> Result<Vec<(AppId, Hostname)>, StoreError>;

    /// Extends `owner`'s lease on the hostname; `false` when it no longer holds it.
    async fn renew_acme_lease(
        &self,
        hostname: &Hostname,
        owner: &str,
        until: i64,
    ) -> Result<bool, StoreError>;

    /// Ends `owner`'s lease, storing what the round left (next time, back-off, errors, status).
    /// `None` when the hostname is gone or `owner` no longer holds it.
    async fn release_acme_work(
        &self,
        app: AppId,
        hostname: &Hostname,
        owner: &str,
        release: &AcmeRelease,
    ) -> Result<Option<HostnameRecord>, StoreError>;

    /// Shows `issuing` on a verified hostname without a certificate while `owner` works on it.
    async fn mark_issuing(&self, hostname: &Hostname, owner: &str) -> Result<(), StoreError>;

    /// Makes the hostname's ACME work due now (a customer's check after fixing records); with
    /// `reset`, also forgets the back-off. A CA rate limit stays in force.
    async fn wake_acme(&self, hostname: &Hostname, reset: bool) -> Result<(), StoreError>;

    /// The hostname's ACME orders, newest first, at most `limit`.
    async fn acme_orders(
        &self,
        hostname: &Hostname,
        limit: u32,
    ) -> Result<Vec<AcmeOrderRecord>, StoreError>;

    /// Stores a new order in state `creating` (before the new-order request) and counts it in
    /// the ledger under `registered_domain`. With a `budget`, its check sees the ledger in the
    /// same transaction, serialised with every other control plane's, and may refuse with
    /// `(until, why)`: then nothing is stored.
    async fn insert_acme_order(
        &self,
        hostname: &Hostname,
        key_type: &str,
        renewal: bool,
        challenge: &str,
        registered_domain: &str,
        budget: Option<&OrderBudget<'_>>,
    ) -> Result<Result<AcmeOrderRecord, (i64, String)>, StoreError>;

    /// Applies `update` to an order.
    async fn update_acme_order(&self, id: i64, update: &AcmeOrderUpdate) -> Result<(), StoreError>;

    /// Whether an order with this URL is stored (recovering an order whose creation was cut
    /// short: the CA's orders the store does not know are candidates).
    async fn acme_order_known(&self, order_url: &str) -> Result<bool, StoreError>;

    /// In one transaction: stores `cert` as the hostname's ACME certificate of its key type
    /// (replacing the previous one, which edges serve until this commit propagates), marks the
    /// order done, counts the certificate in the ledger, and logs the change for the edges.
    /// `None` when the hostname is gone.
    async fn finish_acme_order(
        &self,
        order_id: i64,
        app: AppId,
        hostname: &Hostname,
        cert: &NewCertificate,
        registered_domain: &str,
    ) -> Result<Option<HostnameRecord>, StoreError>;

    /// Adds an entry to the ledger (e.g. a failed validation).
    async fn record_acme_event(&self, entry: &AcmeLedgerEntry) -> Result<(), StoreError>;

    /// The ledger's entries since `since` for `registered_domain`, and (second) the times of
    /// every order since `orders_since`, whatever the domain (the CA's per-account limit).
    async fn acme_ledger(
        &self,
        registered_domain: &str,
        since: i64,
        orders_since: i64,
    ) -> Result<(Vec<AcmeLedgerEntry>, Vec<i64>), StoreError>;

    /// The propagation log's identity, drawn on first call and kept with the database: revision
    /// numbers compare only within one log (a restored backup is another log).
    async fn log_id(&self) -> Result<String, StoreError>;
}

/// The CA's limits, checked against the ledger when an order is stored.
pub struct OrderBudget<'a> {
    /// Ledger entries of the registered domain after this time are shown to `check`.
    pub since: i64,
    /// The account's orders after this time are shown to `check`.
    pub orders_since: i64,
    /// `Err((until, why))` refuses the order.
    #[allow(clippy::type_complexity)]
    pub check: &'a (dyn Fn(&[AcmeLedgerEntry], &[i64]) -> Result<(), (i64, String)> + Send + Sync),
}

impl std::fmt::Debug for OrderBudget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderBudget")
            .field("since", &self.since)
            .field("orders_since", &self.orders_since)
            .finish_non_exhaustive()
    }
}

/// What [`Store::delete_hostname`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The app has no such hostname.
    NotFound,
    /// The hostname had nothing of what the scope names.
    NothingToDelete,
    /// The hostname is gone, released for any app to claim.
    Removed,
    /// The scope's part is gone; the hostname stays with what is left.
    Updated(HostnameRecord),
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("the hostname is already held by another app")]
    HostnameTaken,
    #[error("an app with this name already exists")]
    AppNameTaken,
    #[error("an org with this slug already exists")]
    OrgTaken,
    #[error("the IPv6 prefix {0} has no unused address left")]
    Ipv6Exhausted(Ipv6Prefix),
    #[error("every address of the dedicated IPv4 pool is in use")]
    Ipv4Exhausted,
    /// A concurrent creation took the pool address chosen; `create_app` retries on it.
    #[error("a concurrent app creation took the dedicated IPv4 address")]
    Ipv4Taken,
    #[error("there is no admin org yet: bootstrap the admin first")]
    NoAdminOrg,
    #[error("could not draw an unused ownership token")]
    TokensExhausted,
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("the stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}
