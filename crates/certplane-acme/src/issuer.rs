//! The issuer: gets and renews each verified hostname's ACME certificates (ECDSA P-256 and RSA
//! 2048), one order at a time per hostname, as persistent state machines in the store.
//!
//! # How a hostname is worked on
//!
//! [`Issuer::run`] leases due hostnames from the store (`claim_acme_work`: one worker per
//! hostname across every control plane, renewed while it works) and, for each, loops:
//!
//! 1. an open order in the store is resumed from the CA's view of it (a control plane that
//!    stopped anywhere carries on; an order whose creation was cut short is looked up in the
//!    account's order list before a new one is made);
//! 2. else the first key type without a certificate, or whose certificate is due for renewal
//!    (ACME Renewal Information when the CA offers it, else a third of the lifetime left, spread
//!    per certificate), gets a new order: ownership re-checked first for a renewal, the challenge
//!    chosen from the last DNS check ([`policy::challenge_order`]), the platform's budget of the
//!    CA's limits consulted, the row stored (`creating`) before the request;
//! 3. the order is driven: answers published (edge challenges through the store and the
//!    propagation feed, waiting until the edges serve them; DNS-01 values for the challenge
//!    zone's DNS server), challenges readied, the CSR's key sealed and stored before the CSR is
//!    sent, the certificate checked like an import and stored in one transaction with the
//!    order's end, the answers withdrawn;
//! 4. a validation failure kills the order and the next challenge type the records allow is
//!    tried; when none is left the round failed: back-off (1 min, 10 min, 100 min, daily) and
//!    `failed` unless a certificate is still served.
//!
//! New-order requests go out one at a time per account (Pebble 2.4 deadlocks on concurrent
//! ones, and it costs nothing: creating an order is one quick request).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use certplane_domain::{CertificateStatus, Hostname};
use certplane_ownership::{CheckReport, Verifier};
use certplane_secrets::{MasterKeys, Sealed};
use certplane_store::{
    AcmeLedgerEntry, AcmeOrderRecord, AcmeOrderState, AcmeOrderUpdate, AcmeRelease, App, AppId,
    CertSource, CertificateRecord, ChallengeKind, ChallengeRecord, HostnameRecord, NewCertificate,
    OrderBudget, Store, StoreError, sealing_context,
};
use futures_core_like::BoxFuture;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeStatus, ChallengeType, Identifier, NewOrder, Order,
    OrderStatus, Problem, RetryPolicy,
};
use tokio::sync::{Mutex, Notify};

use crate::policy::{
    self, AttemptError, ChallengeChoice, ChallengePaths, Limits, RecordHints, Spent,
};

/// A boxed future, without a dependency for it.
mod futures_core_like {
    pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}

/// Opens the platform's ACME account (restoring or creating it); called on first need and
/// again after a failure.
pub type AccountOpener =
    Box<dyn Fn() -> BoxFuture<'static, Result<Account, String>> + Send + Sync + 'static>;

/// The issuer's view of the edges: it publishes challenge answers through the store and must
/// know when the edges serve them before telling the CA to look.
#[async_trait]
pub trait EdgeSync: Send + Sync + 'static {
    /// The store changed what edges serve: send it now.
    fn poke(&self);
    /// Waits until every live edge serves `hostname`'s newest revision; `false` on timeout.
    async fn propagated(&self, hostname: &Hostname, timeout: Duration) -> bool;
}

/// How the issuer works.
#[derive(Clone, Debug)]
pub struct IssuerSettings {
    /// This control plane's name in leases.
    pub owner: String,
    /// The CA's directory URL (for messages).
    pub directory_url: String,
    /// Hostnames worked on at once.
    pub concurrency: usize,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    pub limits: Limits,
    /// The platform's challenge zone (DNS-01 values live under it).
    pub challenge_zone: String,
    /// For remediations about CAA records.
    pub caa_identities: Vec<String>,
    /// How long the DNS-01 server may take to pick up a new value (it reloads every 250 ms).
    pub dns_publish_delay: Duration,
    /// How long to wait for the edges to serve a challenge answer.
    pub edge_timeout: Duration,
    /// How long the CA may take to validate, and to issue.
    pub validation_timeout: Duration,
}

impl IssuerSettings {
    pub fn new(owner: String, challenge_zone: String) -> Self {
        Self {
            owner,
            directory_url: String::new(),
            concurrency: 16,
            lease: Duration::from_secs(30),
            limits: Limits::default(),
            challenge_zone,
            caa_identities: vec!["letsencrypt.org".into()],
            dns_publish_delay: Duration::from_millis(600),
            edge_timeout: Duration::from_secs(10),
            validation_timeout: Duration::from_secs(120),
        }
    }
}

/// The ACME issuer of one control plane. See the module documentation.
pub struct Issuer {
    store: Arc<dyn Store>,
    keys: Arc<MasterKeys>,
    verifier: Arc<Verifier>,
    edges: Arc<dyn EdgeSync>,
    settings: IssuerSettings,
    opener: AccountOpener,
    account: Mutex<Option<Account>>,
    /// One new-order request at a time per account.
    new_orders: Mutex<()>,
    /// Whether the CA's directory offers renewal information (ARI): learnt at the first
    /// renewal-time lookup; only then do renewal orders say which certificate they replace.
    ari: std::sync::atomic::AtomicBool,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Key types the platform issues, in order.
const KEY_TYPES: [&str; 2] = ["ecdsa", "rsa"];
/// Attempt errors kept per hostname.
const ERRORS_KEPT: usize = 10;
/// Orders worked on per hostname per lease, at most (each failure moves to the next challenge
/// type, so a round never needs more).
const STEPS_PER_LEASE: usize = 8;
/// A challenge answer outlives its order by at most this (purged after).
const ANSWER_TTL: i64 = 600;
/// How long a CA that cannot be reached is left alone.
const CA_RETRY: i64 = 30;

/// How a driven order ended.
enum Step {
    /// The certificate is stored.
    Stored,
    /// The order died; the attempt's error (a validation failure counts against the budget).
    Dead(Box<AttemptError>, bool),
    /// The CA refused with a rate limit until then.
    RateLimited(i64, Box<AttemptError>),
    /// Something to retry later (network, timeouts, store): the error, already logged.
    Retry(Box<AttemptError>),
}

impl Issuer {
    pub fn new(
        store: Arc<dyn Store>,
        keys: Arc<MasterKeys>,
        verifier: Arc<Verifier>,
        edges: Arc<dyn EdgeSync>,
        settings: IssuerSettings,
        opener: AccountOpener,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            keys,
            verifier,
            edges,
            settings,
            opener,
            account: Mutex::new(None),
            new_orders: Mutex::new(()),
            ari: std::sync::atomic::AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
        })
    }

    /// Wakes the loop now (a hostname became due).
    pub fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Works until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut running = tokio::task::JoinSet::new();
        loop {
            if *stop.borrow() {
                break;
            }
            let free = self.settings.concurrency.saturating_sub(running.len());
            let mut claimed = 0;
            if free > 0 {
                let now = unix_now();
                match self
                    .store
                    .claim_acme_work(
                        &self.settings.owner,
                        now,
                        free as u32,
                        now + self.settings.lease.as_secs() as i64,
                    )
                    .await
                {
                    Ok(work) => {
                        claimed = work.len();
                        for (app, hostname) in work {
                            let this = self.clone();
                            running.spawn(async move { this.work_leased(app, hostname).await });
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "claiming ACME work failed"),
                }
            }
            let pause = if claimed > 0 && running.len() < self.settings.concurrency {
                Duration::from_millis(10)
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                () = self.wake.notified() => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
        // Leases run out by themselves; what was in flight resumes from the store.
        running.abort_all();
        while running.join_next().await.is_some() {}
    }

    /// Works on one leased hostname, keeping the lease alive meanwhile, and releases it.
    async fn work_leased(self: Arc<Self>, app: AppId, hostname: Hostname) {
        let lease = self.settings.lease;
        let keeper = {
            let store = self.store.clone();
            let owner = self.settings.owner.clone();
            let hostname = hostname.clone();
            async move {
                // The lease runs until `held_until`; stop working well before another node may
                // take the hostname over.
                let mut held_until = tokio::time::Instant::now() + lease;
                loop {
                    tokio::time::sleep(lease / 3).await;
                    let until = unix_now() + lease.as_secs() as i64;
                    let asked = tokio::time::Instant::now();
                    match store.renew_acme_lease(&hostname, &owner, until).await {
                        Ok(true) => held_until = asked + lease,
                        Ok(false) => return,
                        Err(e) => {
                            tracing::warn!(%hostname, error = %e, "renewing an ACME lease failed")
                        }
                    }
                    if tokio::time::Instant::now() + lease / 3 >= held_until {
                        return;
                    }
                }
            }
        };
        let release = tokio::select! {
            release = self.work(app, &hostname) => release,
            () = keeper => {
                tracing::warn!(%hostname, "lost the ACME lease; another worker has the hostname");
                return;
            }
        };
        let release = match release {
            Ok(Some(release)) => release,
            Ok(None) => return,
            Err(e) => {
                // The hostname's state stays as stored; it is due again when the lease ends.
                tracing::error!(%hostname, error = %e, "ACME work failed on the store; retried when the lease ends");
                return;
            }
        };
        if let Err(e) = self
            .store
            .release_acme_work(app, &hostname, &self.settings.owner, &release)
            .await
        {
            tracing::error!(%hostname, error = %e, "releasing an ACME lease failed");
        }
    }

    async fn account(&self) -> Result<Account, String> {
        let mut slot = self.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let account = (self.opener)().await?;
        *slot = Some(account.clone());
        Ok(account)
    }

    /// One lease's work on a hostname; what to store when letting go (`None`: it is gone).
    async fn work(
        &self,
        app_id: AppId,
        hostname: &Hostname,
    ) -> Result<Option<AcmeRelease>, StoreError> {
        let store = &self.store;
        let Some(app) = store.app_by_id(app_id).await? else {
            return Ok(None);
        };
        let Some(org) = store.org_by_id(app.org_id).await? else {
            return Ok(None);
        };
        let Some(mut record) = store.hostname(app_id, hostname).await? else {
            return Ok(None);
        };
        let now = unix_now();
        let mut errors: Vec<AttemptError> = record
            .acme_errors
            .as_deref()
            .and_then(|e| serde_json::from_str(e).ok())
            .unwrap_or_default();
        let failures = record.acme_failures;
        if let Some(until) = record.rate_limited_until.filter(|u| *u > now) {
            return Ok(Some(limited(&record, until, errors)));
        }
        let registered = hostname.registrable_domain().to_owned();
        let mut reverified = false;
        for _ in 0..STEPS_PER_LEASE {
            let orders = store.acme_orders(hostname, 20).await?;
            // `fresh`: inserted by this lease, so a `creating` row is surely not at the CA yet.
            let (order, fresh) = match orders.iter().find(|o| o.state.is_open()) {
                Some(open) => (open.clone(), false),
                None => {
                    let certs: Vec<CertificateRecord> = store
                        .certificates(app_id, hostname)
                        .await?
                        .into_iter()
                        .filter(|c| c.cert.source == CertSource::Acme)
                        .collect();
                    let now = unix_now();
                    let mut next_renewal = i64::MAX;
                    let mut need = None;
                    for key_type in KEY_TYPES {
                        match certs.iter().find(|c| c.cert.key_type == key_type) {
                            None => {
                                need = Some((key_type, false));
                                break;
                            }
                            Some(cert) => {
                                let at = self.renewal_time(cert, now).await;
                                if at <= now {
                                    need = Some((key_type, true));
                                    break;
                                }
                                next_renewal = next_renewal.min(at);
                            }
                        }
                    }
                    let Some((key_type, renewal)) = need else {
                        // Everything issued and fresh: come back at the next renewal.
                        return Ok(Some(AcmeRelease {
                            next_at: next_renewal,
                            failures: 0,
                            rate_limited_until: None,
                            errors: None,
                            status: None,
                        }));
                    };
                    if renewal && !reverified {
                        // Ownership is re-verified before a renewal: a name that moved away
                        // gets no new certificate (the check records the loss).
                        match self.verifier.check_now(&org, &app, &record).await? {
                            Some((fresh, report)) if report.ownership_verified => {
                                record = fresh;
                                reverified = true;
                            }
                            Some(_) => {
                                tracing::warn!(%hostname, "ownership not verified at renewal; not renewing");
                                return Ok(Some(keep(&record, unix_now() + 3_600, errors)));
                            }
                            None => return Ok(None),
                        }
                    }
                    let report: Option<CheckReport> = record
                        .check_report
                        .as_deref()
                        .and_then(|r| serde_json::from_str(r).ok());
                    let paths =
                        report
                            .as_ref()
                            .map_or_else(ChallengePaths::default, |r| ChallengePaths {
                                alpn: r.alpn_configured,
                                http: r.http_configured,
                                dns: r.dns_configured,
                            });
                    let failed: Vec<ChallengeChoice> = errors
                        .iter()
                        .filter(|e| e.round == failures && e.key_type == key_type)
                        .filter_map(|e| e.challenge)
                        .collect();
                    let candidates =
                        policy::challenge_order(hostname.is_wildcard(), paths, &failed);
                    let Some(&choice) = candidates.first() else {
                        if failed.is_empty() {
                            errors.push(self.no_path(&app, hostname, key_type, failures));
                        }
                        return Ok(Some(self.round_failed(&record, errors)));
                    };
                    // The CA's limits, checked against the ledger in the order's own
                    // transaction (serialised across control planes).
                    let limits = self.settings.limits;
                    let names = hostname.as_str().to_owned();
                    let check = move |entries: &[AcmeLedgerEntry], orders: &[i64]| {
                        let spent: Vec<Spent> = entries
                            .iter()
                            .map(|e| Spent {
                                kind: e.kind.clone(),
                                names: e.names.clone(),
                                at: e.at,
                            })
                            .collect();
                        policy::budget(&limits, &names, &spent, orders, now)
                            .map_err(|over| (over.until, over.message))
                    };
                    let budget = OrderBudget {
                        since: now - 7 * 86_400,
                        orders_since: now - 3 * 3_600,
                        check: &check,
                    };
                    let inserted = match store
                        .insert_acme_order(
                            hostname,
                            key_type,
                            renewal,
                            choice.as_str(),
                            &registered,
                            Some(&budget),
                        )
                        .await?
                    {
                        Ok(inserted) => inserted,
                        Err((until, why)) => {
                            tracing::warn!(%hostname, until, reason = %why, "holding back an order: the CA's limit");
                            push(&mut errors, AttemptError {
                                code: "RATE_LIMITED".into(),
                                message: format!("no order sent: {why}"),
                                remediation: "Nothing to do: the platform sends the order by itself once the CA's limit allows it (see rate_limited_until).".into(),
                                at: now,
                                challenge: None,
                                key_type: key_type.into(),
                                round: failures,
                                problem: None,
                            });
                            return Ok(Some(limited(&record, until, errors)));
                        }
                    };
                    (inserted, true)
                }
            };
            // `issuing` while the order runs (a hostname with a certificate stays `active`).
            store.mark_issuing(hostname, &self.settings.owner).await?;
            let account = match self.account().await {
                Ok(account) => account,
                Err(e) => {
                    tracing::warn!(error = %e, "the ACME account cannot be opened");
                    push(&mut errors, AttemptError {
                        code: "ACME_CA_UNAVAILABLE".into(),
                        message: format!("the ACME CA cannot be reached: {e}"),
                        remediation: "Nothing to do for the customer: the platform retries by itself. The platform operator should check acme.directory_url and the CA's status.".into(),
                        at: unix_now(),
                        challenge: None,
                        key_type: order.key_type.clone(),
                        round: failures,
                        problem: None,
                    });
                    return Ok(Some(keep(&record, unix_now() + CA_RETRY, errors)));
                }
            };
            let first_ecdsa = order.key_type == "ecdsa" && !order.renewal;
            match self
                .drive(&account, &app, &record, order, fresh, failures)
                .await?
            {
                Step::Stored => {
                    // This key type is done; its errors are history.
                    errors.clear();
                    // Served now (ECDSA first): let hostnames still waiting for their first
                    // certificate go before this one's RSA certificate.
                    if first_ecdsa {
                        return Ok(Some(AcmeRelease {
                            next_at: unix_now(),
                            failures: 0,
                            rate_limited_until: None,
                            errors: None,
                            status: None,
                        }));
                    }
                    if let Some(fresh) = store.hostname(app_id, hostname).await? {
                        record = fresh;
                    }
                }
                Step::Dead(error, validation) => {
                    if validation {
                        store
                            .record_acme_event(&AcmeLedgerEntry {
                                kind: "failed_validation".into(),
                                registered_domain: registered.clone(),
                                names: hostname.as_str().to_owned(),
                                at: unix_now(),
                            })
                            .await?;
                    }
                    push(&mut errors, *error);
                }
                Step::RateLimited(until, error) => {
                    push(&mut errors, *error);
                    return Ok(Some(limited(&record, until, errors)));
                }
                Step::Retry(error) => {
                    push(&mut errors, *error);
                    let failures = failures + 1;
                    return Ok(Some(AcmeRelease {
                        next_at: unix_now() + policy::transient_backoff(failures),
                        failures,
                        rate_limited_until: None,
                        errors: errors_json(&errors),
                        // A glitch keeps `issuing`; an error that persists is a failure.
                        status: (failures >= 3).then_some(CertificateStatus::Failed),
                    }));
                }
            }
        }
        // More steps than a round can need: look again soon.
        Ok(Some(keep(&record, unix_now() + 1, errors)))
    }

    /// When the certificate should be renewed: from the CA's renewal information when it offers
    /// it, else a third of the lifetime before expiry, spread per certificate.
    async fn renewal_time(&self, cert: &CertificateRecord, now: i64) -> i64 {
        let pick = spread_of(&cert.cert.fingerprint);
        if let Ok(account) = self.account().await
            && let Some(leaf) = leaf_der(&cert.cert.chain_pem)
            && let Ok(id) = instant_acme::CertificateIdentifier::try_from(&leaf)
        {
            match account.renewal_info(&id).await {
                Ok((info, _)) => {
                    self.ari.store(true, std::sync::atomic::Ordering::Relaxed);
                    let window = &info.suggested_window;
                    return policy::ari_renew_at(
                        window.start.unix_timestamp(),
                        window.end.unix_timestamp(),
                        now,
                        pick,
                    );
                }
                Err(instant_acme::Error::Unsupported(_)) => {}
                Err(e) => tracing::debug!(error = %e, "no renewal information; using the lifetime"),
            }
        }
        policy::renew_at(cert.cert.not_before, cert.cert.not_after, pick)
    }

    fn no_path(&self, app: &App, hostname: &Hostname, key_type: &str, round: i64) -> AttemptError {
        let hints = self.hints(app, hostname);
        let (message, remediation) = if hostname.is_wildcard() {
            (
                format!(
                    "{hostname} is a wildcard: only DNS-01 can validate it, and _acme-challenge is not delegated to the platform"
                ),
                format!(
                    "Set CNAME {} -> {}, then run `certplane certs check`.",
                    hints.challenge_record, hints.challenge_target
                ),
            )
        } else {
            (
                format!(
                    "no ACME challenge can work for {hostname}: it does not point at the platform (directly or through a proxy) and _acme-challenge is not delegated"
                ),
                format!(
                    "Point {hostname} at the platform (see `certplane certs setup`), or set CNAME {} -> {}; then run `certplane certs check`.",
                    hints.challenge_record, hints.challenge_target
                ),
            )
        };
        AttemptError {
            code: "DNS_NOT_CONFIGURED".into(),
            message,
            remediation,
            at: unix_now(),
            challenge: None,
            key_type: key_type.into(),
            round,
            problem: None,
        }
    }

    fn round_failed(&self, record: &HostnameRecord, errors: Vec<AttemptError>) -> AcmeRelease {
        let failures = record.acme_failures + 1;
        AcmeRelease {
            next_at: unix_now() + policy::backoff(failures),
            failures,
            rate_limited_until: None,
            errors: errors_json(&errors),
            status: Some(CertificateStatus::Failed),
        }
    }

    fn hints(&self, app: &App, hostname: &Hostname) -> RecordHints {
        let base = hostname.base();
        RecordHints {
            hostname: hostname.to_string(),
            challenge_record: format!("_acme-challenge.{base}"),
            challenge_target: format!("{base}.{}.{}", app.token, self.settings.challenge_zone),
            caa_identities: self.settings.caa_identities.clone(),
        }
    }

    /// Drives one order as far as it goes.
    async fn drive(
        &self,
        account: &Account,
        app: &App,
        record: &HostnameRecord,
        order: AcmeOrderRecord,
        fresh: bool,
        round: i64,
    ) -> Result<Step, StoreError> {
        let hostname = &record.hostname;
        let Some(choice) = ChallengeChoice::parse(&order.challenge) else {
            self.kill(&order, "unknown challenge type").await?;
            return Ok(Step::Retry(Box::new(self.internal(
                &order,
                round,
                "an order with an unknown challenge type was dropped",
            ))));
        };
        let attempt =
            |code: &str, message: String, remediation: &str, problem: Option<&Problem>| {
                Box::new(AttemptError {
                    code: code.into(),
                    message,
                    remediation: remediation.into(),
                    at: unix_now(),
                    challenge: Some(choice),
                    key_type: order.key_type.clone(),
                    round,
                    problem: problem.map(problem_json),
                })
            };
        // The order at the CA: created now, recovered, or fetched again.
        let mut ca_order = match order.order_url.clone() {
            Some(url) => match crate::observe(account.order(url)).await {
                (Ok(o), _) => o,
                (Err(instant_acme::Error::Api(problem)), seen) => {
                    if is_rate_limited(&problem) {
                        return Ok(self.rate_limited(&order, round, &problem, seen.retry_after));
                    }
                    if problem.status != Some(404) {
                        return Ok(Step::Retry(self.transient(
                            &order,
                            round,
                            &instant_acme::Error::Api(problem),
                        )));
                    }
                    // Gone or expired at the CA: it is dead, a new one follows.
                    self.kill(&order, &problem_text(&problem)).await?;
                    return Ok(Step::Dead(
                        attempt(
                            "ACME_ORDER_FAILED",
                            format!("the CA no longer has the order: {}", problem_text(&problem)),
                            "Nothing to do: the platform creates a new order by itself.",
                            Some(&problem),
                        ),
                        false,
                    ));
                }
                (Err(e), _) => return Ok(Step::Retry(self.transient(&order, round, &e))),
            },
            None => {
                // A row left `creating` by an earlier lease may be at the CA already.
                if !fresh {
                    if let Some(found) = self.recover(account, &order).await? {
                        found
                    } else {
                        match self.create(account, &order, app.id).await? {
                            Ok(o) => o,
                            Err(step) => return Ok(step),
                        }
                    }
                } else {
                    match self.create(account, &order, app.id).await? {
                        Ok(o) => o,
                        Err(step) => return Ok(step),
                    }
                }
            }
        };
        let mut published = Published::default();
        let step = loop {
            let status = ca_order.state().status;
            match status {
                OrderStatus::Pending => {
                    match self
                        .validate(&mut ca_order, app, hostname, choice, &mut published)
                        .await
                    {
                        Ok(()) => {}
                        Err(Failure::Api(problem)) => {
                            // An error answer alone does not say the validation failed: the
                            // order's state does.
                            match ca_order.refresh().await.map(|state| state.status) {
                                Ok(OrderStatus::Invalid) => {}
                                Ok(_) => {
                                    break Step::Retry(self.transient(
                                        &order,
                                        round,
                                        &instant_acme::Error::Api(problem),
                                    ));
                                }
                                Err(e) => break Step::Retry(self.transient(&order, round, &e)),
                            }
                            break self
                                .validation_failed(&order, app, choice, Some(&problem), round)
                                .await?;
                        }
                        Err(Failure::Validation(problem)) => {
                            break self
                                .validation_failed(&order, app, choice, Some(&problem), round)
                                .await?;
                        }
                        Err(Failure::Other(e)) => {
                            break Step::Retry(self.transient(&order, round, &e));
                        }
                        Err(Failure::Store(e)) => {
                            self.withdraw(hostname, &published).await;
                            return Err(e);
                        }
                    }
                }
                OrderStatus::Ready => {
                    let key = match self.csr_key(&order).await {
                        Ok(k) => k,
                        Err(StoreError::Corrupt(why)) => {
                            // Unusable key (e.g. sealed under a retired master key): a new
                            // order, not a loop.
                            self.kill(&order, &why).await?;
                            break Step::Dead(
                                Box::new(self.internal(
                                    &order,
                                    round,
                                    &format!("the order's key is unusable: {why}"),
                                )),
                                false,
                            );
                        }
                        Err(e) => {
                            self.withdraw(hostname, &published).await;
                            return Err(e);
                        }
                    };
                    let csr = match csr_der(hostname, &key) {
                        Ok(csr) => csr,
                        Err(e) => {
                            break Step::Retry(Box::new(self.internal(
                                &order,
                                round,
                                &format!("building the CSR failed: {e}"),
                            )));
                        }
                    };
                    match crate::observe(ca_order.finalize_csr(&csr)).await {
                        (Ok(()), _) => {
                            self.store
                                .update_acme_order(
                                    order.id,
                                    &AcmeOrderUpdate {
                                        state: Some(AcmeOrderState::Processing),
                                        ..Default::default()
                                    },
                                )
                                .await?;
                        }
                        (Err(instant_acme::Error::Api(problem)), seen) => {
                            if is_rate_limited(&problem) {
                                break self.rate_limited(&order, round, &problem, seen.retry_after);
                            }
                            // Only an order the CA made invalid is dead; anything else (a nonce
                            // refused once too often, a 5xx) is tried again with the same order.
                            match ca_order.refresh().await.map(|state| state.status) {
                                Ok(OrderStatus::Invalid) => {}
                                Ok(_) => {
                                    break Step::Retry(self.transient(
                                        &order,
                                        round,
                                        &instant_acme::Error::Api(problem),
                                    ));
                                }
                                Err(e) => break Step::Retry(self.transient(&order, round, &e)),
                            }
                            self.kill(&order, &problem_text(&problem)).await?;
                            break Step::Dead(
                                attempt(
                                    "ACME_ORDER_FAILED",
                                    format!("the CA refused the CSR: {}", problem_text(&problem)),
                                    "Nothing to do: the platform retries with a new order.",
                                    Some(&problem),
                                ),
                                false,
                            );
                        }
                        (Err(e), _) => break Step::Retry(self.transient(&order, round, &e)),
                    }
                }
                OrderStatus::Processing | OrderStatus::Valid => {
                    let retries = RetryPolicy::new()
                        .initial_delay(Duration::from_millis(50))
                        .backoff(1.5)
                        .timeout(self.settings.validation_timeout);
                    let chain = match crate::observe(ca_order.poll_certificate(&retries)).await {
                        (Ok(chain), _) => chain,
                        (Err(instant_acme::Error::Api(problem)), _)
                            if ca_order.state().status == OrderStatus::Invalid =>
                        {
                            self.kill(&order, &problem_text(&problem)).await?;
                            break Step::Dead(
                                attempt(
                                    "ACME_ORDER_FAILED",
                                    format!("the CA did not issue: {}", problem_text(&problem)),
                                    "Nothing to do: the platform retries with a new order.",
                                    Some(&problem),
                                ),
                                false,
                            );
                        }
                        (Err(e), _) => break Step::Retry(self.transient(&order, round, &e)),
                    };
                    match self
                        .store_certificate(app, hostname, &order, &chain)
                        .await?
                    {
                        Ok(()) => break Step::Stored,
                        Err(why) => {
                            self.kill(&order, &why).await?;
                            break Step::Dead(
                                attempt(
                                    "ACME_CERTIFICATE_INVALID",
                                    format!("the CA's certificate was refused: {why}"),
                                    "Nothing to do for the customer: the platform retries with a new order; the operator should look at the CA.",
                                    None,
                                ),
                                false,
                            );
                        }
                    }
                }
                OrderStatus::Invalid => {
                    // An order that died validating.
                    let problem = ca_order.state().error.clone();
                    break self
                        .validation_failed(&order, app, choice, problem.as_ref(), round)
                        .await?;
                }
            }
        };
        if matches!(step, Step::Stored | Step::Dead(..)) {
            self.withdraw(hostname, &published).await;
            if !published.is_empty() {
                self.edges.poke();
            }
        }
        Ok(step)
    }

    /// The CA found the `choice` challenge failed (`problem`, when it said why): the order is
    /// dead, and the attempt's error says who must fix what.
    async fn validation_failed(
        &self,
        order: &AcmeOrderRecord,
        app: &App,
        choice: ChallengeChoice,
        problem: Option<&Problem>,
        round: i64,
    ) -> Result<Step, StoreError> {
        let hostname = &order.hostname;
        let text = problem.map_or_else(|| "the order is invalid".to_owned(), problem_text);
        let (code, message, remediation) = policy::classify(
            problem
                .and_then(|p| p.r#type.as_deref())
                .unwrap_or_default(),
            problem.and_then(|p| p.detail.as_deref()).unwrap_or(&text),
            Some(choice),
            &self.hints(app, hostname),
        );
        tracing::info!(%hostname, challenge = choice.as_str(), %code, detail = %text, "validation failed");
        self.kill(order, &text).await?;
        Ok(Step::Dead(
            Box::new(AttemptError {
                code,
                message,
                remediation,
                at: unix_now(),
                challenge: Some(choice),
                key_type: order.key_type.clone(),
                round,
                problem: problem.map(problem_json),
            }),
            true,
        ))
    }

    /// Sends the new-order request for a `creating` row and stores its URL.
    async fn create(
        &self,
        account: &Account,
        order: &AcmeOrderRecord,
        app: AppId,
    ) -> Result<Result<Order, Step>, StoreError> {
        let identifiers = [Identifier::Dns(order.hostname.as_str().to_owned())];
        // A renewal says which certificate it replaces (RFC 9773 §5), when the CA does ARI.
        let replaced = if order.renewal && self.ari.load(std::sync::atomic::Ordering::Relaxed) {
            self.store
                .certificates(app, &order.hostname)
                .await?
                .into_iter()
                .find(|c| c.cert.source == CertSource::Acme && c.cert.key_type == order.key_type)
                .and_then(|c| leaf_der(&c.cert.chain_pem))
        } else {
            None
        };
        let replaces = replaced
            .as_ref()
            .and_then(|leaf| instant_acme::CertificateIdentifier::try_from(leaf).ok());
        let mut request = NewOrder::new(&identifiers);
        if let Some(id) = replaces {
            request = request.replaces(id);
        }
        let (created, seen) = {
            let _one_at_a_time = self.new_orders.lock().await;
            crate::observe(account.new_order(&request)).await
        };
        match created {
            Ok(ca_order) => {
                self.store
                    .update_acme_order(
                        order.id,
                        &AcmeOrderUpdate {
                            state: Some(AcmeOrderState::Pending),
                            order_url: Some(ca_order.url().to_owned()),
                            ..Default::default()
                        },
                    )
                    .await?;
                tracing::info!(hostname = %order.hostname, key_type = %order.key_type, challenge = %order.challenge, url = %ca_order.url(), "ACME order created");
                Ok(Ok(ca_order))
            }
            Err(instant_acme::Error::Api(problem)) => {
                let round = 0;
                if account_gone(&problem) {
                    // The CA deactivated or lost the account: forget it, so the next attempt
                    // registers a new one.
                    tracing::warn!(account = %account.id(), problem = %problem_text(&problem), "the CA no longer accepts the platform's ACME account; a new one is made on the next attempt");
                    self.store
                        .remove_acme_account(&self.settings.directory_url, account.id())
                        .await?;
                    *self.account.lock().await = None;
                }
                self.kill(order, &problem_text(&problem)).await?;
                if is_rate_limited(&problem) {
                    return Ok(Err(self.rate_limited(
                        order,
                        round,
                        &problem,
                        seen.retry_after,
                    )));
                }
                let (code, message, remediation) = policy::classify(
                    problem.r#type.as_deref().unwrap_or_default(),
                    problem.detail.as_deref().unwrap_or_default(),
                    None,
                    &RecordHints {
                        hostname: order.hostname.to_string(),
                        caa_identities: self.settings.caa_identities.clone(),
                        ..RecordHints::default()
                    },
                );
                Ok(Err(Step::Retry(Box::new(AttemptError {
                    code,
                    message,
                    remediation,
                    at: unix_now(),
                    challenge: None,
                    key_type: order.key_type.clone(),
                    round,
                    problem: Some(problem_json(&problem)),
                }))))
            }
            Err(e) => {
                // Unknown outcome (the request may have reached the CA): the row stays
                // `creating`, and the next attempt looks for the order before making one.
                Ok(Err(Step::Retry(self.transient(order, 0, &e))))
            }
        }
    }

    /// An order whose creation was cut short (a crash between the request and storing its
    /// URL): looks for it in the account's order list. Found: adopted. Not found, or the CA
    /// does not list orders: the row is re-used for a new request (a CA that reuses pending
    /// orders, like Let's Encrypt, returns the same one).
    async fn recover(
        &self,
        account: &Account,
        order: &AcmeOrderRecord,
    ) -> Result<Option<Order>, StoreError> {
        let listed = match crate::account_orders(account, 200).await {
            Ok(Some(urls)) => urls,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the account's orders; creating a new one");
                return Ok(None);
            }
        };
        for url in listed.into_iter().rev() {
            if self.store.acme_order_known(&url).await? {
                continue;
            }
            let Ok(mut candidate) = account.order(url.clone()).await else {
                continue;
            };
            if !matches!(
                candidate.state().status,
                OrderStatus::Pending | OrderStatus::Ready
            ) {
                continue;
            }
            let mut names = Vec::new();
            let mut identifiers = candidate.identifiers();
            while let Some(Ok(id)) = identifiers.next().await {
                names.push(id.to_string());
            }
            if names != [order.hostname.as_str()] {
                continue;
            }
            self.store
                .update_acme_order(
                    order.id,
                    &AcmeOrderUpdate {
                        state: Some(AcmeOrderState::Pending),
                        order_url: Some(url.clone()),
                        ..Default::default()
                    },
                )
                .await?;
            tracing::info!(hostname = %order.hostname, %url, "recovered an order whose creation was cut short");
            // Fetch again: the identifiers walk moved the order's nonce along.
            return Ok(account.order(url).await.ok());
        }
        Ok(None)
    }

    /// Publishes the answers of every pending authorization, tells the CA, and waits for the
    /// order to leave `pending`.
    async fn validate(
        &self,
        ca_order: &mut Order,
        app: &App,
        hostname: &Hostname,
        choice: ChallengeChoice,
        published: &mut Published,
    ) -> Result<(), Failure> {
        let kind = match choice {
            ChallengeChoice::TlsAlpn01 => ChallengeType::TlsAlpn01,
            ChallengeChoice::Http01 => ChallengeType::Http01,
            ChallengeChoice::Dns01 => ChallengeType::Dns01,
        };
        let expires = unix_now() + ANSWER_TTL;
        let mut to_ready: Vec<String> = Vec::new();
        let mut edge_changed = false;
        let mut dns_changed = false;
        {
            let mut authorizations = ca_order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(Failure::Other)?;
                match authz.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    _ => {
                        let problem = authz
                            .challenges
                            .iter()
                            .find_map(|c| c.error.clone())
                            .unwrap_or_else(|| {
                                synthetic_problem("the authorization is no longer pending")
                            });
                        return Err(Failure::Validation(problem));
                    }
                }
                let Some(challenge) = authz.challenge(kind.clone()) else {
                    return Err(Failure::Validation(synthetic_problem(&format!(
                        "the CA offers no {} challenge for {hostname}",
                        choice.as_str()
                    ))));
                };
                let key_authorization = challenge.key_authorization();
                let token = challenge.token.clone();
                let url = challenge.url.clone();
                let ready = challenge.status == ChallengeStatus::Pending;
                match choice {
                    ChallengeChoice::Dns01 => {
                        let name = format!(
                            "{}.{}.{}",
                            hostname.base(),
                            app.token,
                            self.settings.challenge_zone
                        )
                        .to_ascii_lowercase();
                        let value = key_authorization.dns_value();
                        self.store
                            .put_dns_challenge(&name, &value, expires)
                            .await
                            .map_err(Failure::Store)?;
                        published.dns.push((name, value));
                        dns_changed = true;
                    }
                    ChallengeChoice::TlsAlpn01 | ChallengeChoice::Http01 => {
                        let kind = if choice == ChallengeChoice::Http01 {
                            ChallengeKind::Http01
                        } else {
                            ChallengeKind::TlsAlpn01
                        };
                        self.store
                            .put_challenge(&ChallengeRecord {
                                hostname: hostname.clone(),
                                kind,
                                token: token.clone(),
                                key_authorization: key_authorization.as_str().to_owned(),
                                expires_at: expires,
                            })
                            .await
                            .map_err(Failure::Store)?;
                        published.edge.push((kind, token));
                        edge_changed = true;
                    }
                }
                if ready {
                    to_ready.push(url);
                }
            }
        }
        if edge_changed {
            self.edges.poke();
            if !self
                .edges
                .propagated(hostname, self.settings.edge_timeout)
                .await
            {
                tracing::warn!(%hostname, "the edges did not confirm the challenge answer in time; asking the CA anyway");
            }
        }
        if dns_changed {
            tokio::time::sleep(self.settings.dns_publish_delay).await;
        }
        if !to_ready.is_empty() {
            let mut authorizations = ca_order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(Failure::Other)?;
                let Some(mut challenge) = authz.challenge(kind.clone()) else {
                    continue;
                };
                if to_ready.contains(&challenge.url) {
                    match challenge.set_ready().await {
                        Ok(()) => {}
                        Err(instant_acme::Error::Api(problem)) => {
                            return Err(Failure::Api(problem));
                        }
                        Err(e) => return Err(Failure::Other(e)),
                    }
                }
            }
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(50))
            .backoff(1.5)
            .timeout(self.settings.validation_timeout);
        match ca_order.poll_ready(&retries).await {
            Ok(OrderStatus::Invalid) => {
                // Why: the failed challenge's error, fetched fresh.
                let mut why = ca_order.state().error.clone();
                let mut authorizations = ca_order.authorizations();
                while let Some(Ok(mut authz)) = authorizations.next().await {
                    if let Ok(state) = authz.refresh().await
                        && let Some(p) = state.challenges.iter().find_map(|c| c.error.clone())
                    {
                        why = Some(p);
                        break;
                    }
                }
                Err(Failure::Validation(why.unwrap_or_else(|| {
                    synthetic_problem("the CA marked the order invalid")
                })))
            }
            Ok(_) => Ok(()),
            // The order (or its authorization) carries the CA's verdict.
            Err(instant_acme::Error::Api(problem)) => Err(Failure::Api(problem)),
            Err(e) => Err(Failure::Other(e)),
        }
    }

    /// The CSR's private key: stored (sealed) in the order row before the CSR is first sent, so
    /// an order finalized before a crash can still be paired with its certificate.
    async fn csr_key(
        &self,
        order: &AcmeOrderRecord,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, StoreError> {
        let aad = order_key_context(order);
        if let (Some(key_id), Some(blob)) = (&order.key_id, &order.key_sealed) {
            let opened = self
                .keys
                .open(
                    &Sealed {
                        key_id: key_id.clone(),
                        blob: blob.clone(),
                    },
                    &aad,
                )
                .map_err(|e| StoreError::Corrupt(format!("an order's sealed key: {e}")))?;
            return Ok(zeroize::Zeroizing::new(opened.to_vec()));
        }
        let key_type = order.key_type.clone();
        let pkcs8 = tokio::task::spawn_blocking(move || generate_key(&key_type))
            .await
            .map_err(|e| StoreError::Corrupt(format!("key generation: {e}")))?
            .map_err(StoreError::Corrupt)?;
        let sealed = self
            .keys
            .seal(&pkcs8, &aad)
            .map_err(|e| StoreError::Corrupt(format!("sealing an order key: {e}")))?;
        self.store
            .update_acme_order(
                order.id,
                &AcmeOrderUpdate {
                    key: Some((sealed.key_id, sealed.blob)),
                    state: Some(AcmeOrderState::Ready),
                    ..Default::default()
                },
            )
            .await?;
        Ok(pkcs8)
    }

    /// Checks the CA's chain like an import (key match, name, validity, chain) and stores it.
    async fn store_certificate(
        &self,
        app: &App,
        hostname: &Hostname,
        order: &AcmeOrderRecord,
        chain: &str,
    ) -> Result<Result<(), String>, StoreError> {
        // The key was stored before the CSR went out.
        let Some(order) = self
            .store
            .acme_orders(hostname, 20)
            .await?
            .into_iter()
            .find(|o| o.id == order.id)
        else {
            return Ok(Err("the order vanished".into()));
        };
        let pkcs8 = self.csr_key(&order).await?;
        let key_pem = zeroize::Zeroizing::new(certplane_import::pem("PRIVATE KEY", &pkcs8));
        let now = unix_now();
        // A CA whose clock runs a little ahead issues certificates valid from a moment from
        // now: allow five minutes.
        let validated = match certplane_import::validate(chain, &key_pem, hostname, now) {
            Err(e) if e.code() == "CERT_NOT_YET_VALID" => {
                certplane_import::validate(chain, &key_pem, hostname, now + 300)
            }
            other => other,
        };
        let bundle = match validated {
            Ok(bundle) => bundle,
            Err(e) => return Ok(Err(format!("{}: {}", e.code(), e.message))),
        };
        let key_type = bundle.key_type.as_str();
        if key_type != order.key_type {
            return Ok(Err(format!(
                "a {key_type} certificate for a {} order",
                order.key_type
            )));
        }
        let sealed = self
            .keys
            .seal(
                key_pem.as_bytes(),
                &sealing_context(hostname, CertSource::Acme, key_type),
            )
            .map_err(|e| StoreError::Corrupt(format!("sealing a certificate key: {e}")))?;
        let cert = NewCertificate {
            source: CertSource::Acme,
            key_type: key_type.to_owned(),
            chain_pem: bundle.chain_pem(),
            key_id: sealed.key_id,
            key_sealed: sealed.blob,
            not_before: bundle.not_before,
            not_after: bundle.not_after,
            issuer: bundle.issuer.clone(),
            fingerprint: bundle.fingerprint.clone(),
            // The CA's chain is the CA's business; untrusted roots (a test CA) are expected.
            warnings: "[]".into(),
        };
        self.store
            .finish_acme_order(
                order.id,
                app.id,
                hostname,
                &cert,
                hostname.registrable_domain(),
            )
            .await?;
        self.edges.poke();
        tracing::info!(%hostname, key_type, fingerprint = %bundle.fingerprint, renewal = order.renewal, "ACME certificate stored");
        Ok(Ok(()))
    }

    async fn withdraw(&self, hostname: &Hostname, published: &Published) {
        for (kind, token) in &published.edge {
            if let Err(e) = self.store.remove_challenge(hostname, *kind, token).await {
                tracing::warn!(%hostname, error = %e, "withdrawing a challenge answer failed; it expires by itself");
            }
        }
        for (name, value) in &published.dns {
            if let Err(e) = self.store.remove_dns_challenge(name, value).await {
                tracing::warn!(%name, error = %e, "withdrawing a DNS-01 value failed; it expires by itself");
            }
        }
    }

    async fn kill(&self, order: &AcmeOrderRecord, why: &str) -> Result<(), StoreError> {
        self.store
            .update_acme_order(
                order.id,
                &AcmeOrderUpdate {
                    state: Some(AcmeOrderState::Dead),
                    problem: Some(why.to_owned()),
                    ..Default::default()
                },
            )
            .await
    }

    fn rate_limited(
        &self,
        order: &AcmeOrderRecord,
        round: i64,
        problem: &Problem,
        retry_after: Option<std::time::SystemTime>,
    ) -> Step {
        let until = retry_after
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(unix_now() + 3_600, |d| d.as_secs() as i64);
        tracing::warn!(hostname = %order.hostname, until, "the CA answered with a rate limit");
        Step::RateLimited(
            until,
            Box::new(AttemptError {
                code: "RATE_LIMITED".into(),
                message: format!("the CA refused with a rate limit: {}", problem_text(problem)),
                remediation: "Nothing to do: the platform sends no order for this name until rate_limited_until, then retries by itself.".into(),
                at: unix_now(),
                challenge: None,
                key_type: order.key_type.clone(),
                round,
                problem: Some(problem_json(problem)),
            }),
        )
    }

    fn transient(
        &self,
        order: &AcmeOrderRecord,
        round: i64,
        e: &instant_acme::Error,
    ) -> Box<AttemptError> {
        let error = crate::AcmeError::from_acme(&self.settings.directory_url, clone_error(e));
        tracing::warn!(hostname = %order.hostname, error = %error, "ACME request failed; retrying later");
        Box::new(AttemptError {
            code: "ACME_CA_UNAVAILABLE".into(),
            message: error.to_string(),
            remediation: "Nothing to do for the customer: the platform retries with back-off."
                .into(),
            at: unix_now(),
            challenge: None,
            key_type: order.key_type.clone(),
            round,
            problem: None,
        })
    }

    fn internal(&self, order: &AcmeOrderRecord, round: i64, why: &str) -> AttemptError {
        AttemptError {
            code: "ACME_ORDER_FAILED".into(),
            message: why.to_owned(),
            remediation: "Nothing to do: the platform retries with back-off.".into(),
            at: unix_now(),
            challenge: None,
            key_type: order.key_type.clone(),
            round,
            problem: None,
        }
    }
}

/// Challenge answers published for one order, to withdraw after it.
#[derive(Default)]
struct Published {
    edge: Vec<(ChallengeKind, String)>,
    dns: Vec<(String, String)>,
}

impl Published {
    fn is_empty(&self) -> bool {
        self.edge.is_empty() && self.dns.is_empty()
    }
}

enum Failure {
    /// The CA says the validation failed.
    Validation(Problem),
    /// The CA answered with a problem; whether the validation failed, the order's state says.
    Api(Problem),
    Other(instant_acme::Error),
    Store(StoreError),
}

/// instant-acme errors are not `Clone`; keep what matters for the message.
fn clone_error(e: &instant_acme::Error) -> instant_acme::Error {
    match e {
        instant_acme::Error::Api(p) => instant_acme::Error::Api(p.clone()),
        other => instant_acme::Error::Other(other.to_string().into()),
    }
}

/// Whether the CA says the account is gone (RFC 8555 `accountDoesNotExist`, or refused as
/// deactivated or revoked).
fn account_gone(problem: &Problem) -> bool {
    let kind = problem.r#type.as_deref().unwrap_or_default();
    let detail = problem
        .detail
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    kind.ends_with(":accountDoesNotExist")
        || (kind.ends_with(":unauthorized")
            && detail.contains("account")
            && (detail.contains("deactivated")
                || detail.contains("revoked")
                || detail.contains("not valid")))
}

fn is_rate_limited(problem: &Problem) -> bool {
    problem
        .r#type
        .as_deref()
        .is_some_and(|t| t.ends_with(":rateLimited"))
}

fn problem_text(problem: &Problem) -> String {
    match (&problem.r#type, &problem.detail) {
        (Some(t), Some(d)) => format!("{d} ({t})"),
        (None, Some(d)) => d.clone(),
        (Some(t), None) => t.clone(),
        (None, None) => "no detail".into(),
    }
}

fn problem_json(problem: &Problem) -> serde_json::Value {
    serde_json::json!({
        "type": problem.r#type,
        "detail": problem.detail,
        "status": problem.status,
        "subproblems": problem.subproblems.iter().map(|s| serde_json::json!({
            "type": s.r#type,
            "detail": s.detail,
        })).collect::<Vec<_>>(),
    })
}

/// A failure the platform saw itself (no problem document from the CA), in the same shape.
fn synthetic_problem(detail: &str) -> Problem {
    Problem {
        r#type: None,
        detail: Some(detail.to_owned()),
        status: None,
        subproblems: Vec::new(),
    }
}

fn push(errors: &mut Vec<AttemptError>, error: AttemptError) {
    errors.push(error);
    let excess = errors.len().saturating_sub(ERRORS_KEPT);
    errors.drain(..excess);
}

fn errors_json(errors: &[AttemptError]) -> Option<String> {
    (!errors.is_empty()).then(|| serde_json::to_string(errors).unwrap_or_default())
}

/// Lets go without counting a failure: back at `next_at`.
fn keep(record: &HostnameRecord, next_at: i64, errors: Vec<AttemptError>) -> AcmeRelease {
    AcmeRelease {
        next_at,
        failures: record.acme_failures,
        rate_limited_until: None,
        errors: errors_json(&errors),
        status: None,
    }
}

fn limited(record: &HostnameRecord, until: i64, errors: Vec<AttemptError>) -> AcmeRelease {
    AcmeRelease {
        next_at: until,
        failures: record.acme_failures,
        rate_limited_until: Some(until),
        errors: errors_json(&errors),
        status: None,
    }
}

/// The associated data an order's CSR key is sealed with.
fn order_key_context(order: &AcmeOrderRecord) -> Vec<u8> {
    format!(
        "{}|acme-order|{}|{}",
        order.hostname, order.id, order.key_type
    )
    .into_bytes()
}

/// A fresh private key, PKCS#8 DER: ECDSA P-256 or RSA 2048.
fn generate_key(key_type: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    match key_type {
        "ecdsa" => {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| format!("ECDSA key generation: {e}"))?;
            Ok(zeroize::Zeroizing::new(key.serialize_der()))
        }
        "rsa" => {
            use rsa::pkcs8::EncodePrivateKey as _;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| format!("RSA key generation: {e}"))?;
            let der = key
                .to_pkcs8_der()
                .map_err(|e| format!("RSA key encoding: {e}"))?;
            Ok(zeroize::Zeroizing::new(der.as_bytes().to_vec()))
        }
        other => Err(format!("unknown key type {other}")),
    }
}

/// A CSR for `hostname` signed by the PKCS#8 key.
fn csr_der(hostname: &Hostname, pkcs8: &[u8]) -> Result<Vec<u8>, String> {
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.to_vec());
    let key = rcgen::KeyPair::try_from(&der).map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(vec![hostname.as_str().to_owned()])
        .map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    Ok(csr.der().to_vec())
}

fn leaf_der(chain_pem: &str) -> Option<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()?
        .ok()
}

/// A stable number in `[0, 1)` per certificate, so its renewal moment does not move.
fn spread_of(fingerprint: &str) -> f64 {
    let hex: String = fingerprint
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    u64::from_str_radix(&hex, 16).map_or(0.5, |n| n as f64 / (1u64 << 48) as f64)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_csrs_of_both_types() {
        let host = Hostname::parse("www.example.com").expect("valid");
        for key_type in KEY_TYPES {
            let key = generate_key(key_type).expect("key");
            let csr = csr_der(&host, &key).expect("csr");
            assert!(csr.len() > 100, "{key_type}");
        }
        assert!(generate_key("dsa").is_err());
    }

    #[test]
    fn spread_is_stable_and_in_range() {
        let a = spread_of("ab:cd:ef:01:23:45:67");
        assert_eq!(a, spread_of("ab:cd:ef:01:23:45:67"));
        assert!((0.0..1.0).contains(&a));
        assert!((0.0..1.0).contains(&spread_of("")));
    }
}
