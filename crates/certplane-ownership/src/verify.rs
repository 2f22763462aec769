//! [`Verifier`]: checks a stored hostname and records the result; and the background loop that
//! re-checks pending hostnames with back-off and verified ones periodically.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certplane_domain::{
    Hostname, PlatformSettings, app_ownership_value, cname_target, org_ownership_value,
};
use certplane_store::{App, CheckUpdate, HostnameRecord, Org, Store, StoreError};
use rand::Rng;

use crate::check::{CheckReport, Checker};
use crate::rules::{Expected, Finding};

/// First re-check of a name not yet verified, doubled after each further failure...
const PENDING_FIRST: i64 = 5;
/// ...up to this.
const PENDING_MAX: i64 = 600;
/// A verified name is re-checked this often (plus up to 10% jitter, so checks spread out).
const VERIFIED_EVERY: i64 = 3600;
/// A verified hostname whose re-check could not reach DNS is tried again this soon.
const RETRY_INCONCLUSIVE: i64 = 60;
/// How long a claimed check is reserved for the node that claimed it.
const CLAIM_LEASE: i64 = 300;
/// Checks the background loop runs at once.
const CONCURRENCY: usize = 8;

/// Checks hostnames and stores the outcome.
#[derive(Clone)]
pub struct Verifier {
    store: Arc<dyn Store>,
    checker: Checker,
    platform: Arc<PlatformSettings>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("checker", &self.checker)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(store: Arc<dyn Store>, checker: Checker, platform: Arc<PlatformSettings>) -> Self {
        Self {
            store,
            checker,
            platform,
        }
    }

    /// What identifies `app` in DNS, for `record`'s hostname.
    pub fn expected(&self, org: &Org, app: &App, hostname: &Hostname) -> Expected {
        let p = &self.platform;
        let base = hostname.base();
        Expected {
            hostname: hostname.clone(),
            app_ipv6: app.ipv6,
            cname_target: cname_target(p, &app.name, &app.token),
            challenge_target: format!("{base}.{}.{}", app.token, p.challenge_zone),
            app_value: app_ownership_value(&app.token),
            org_value: org_ownership_value(&org.token),
            platform_ipv4: p
                .shared_ipv4
                .iter()
                .copied()
                .chain(app.dedicated_ipv4)
                .collect(),
            platform_ipv6: p.ipv6_prefix,
            ownership_record: p.ownership_record_name(base),
        }
    }

    /// Whether DNS proves, now, that `hostname` belongs to `app` (nothing is stored).
    pub async fn proves(&self, org: &Org, app: &App, hostname: &Hostname) -> bool {
        let (report, _) = self
            .checker
            .check(&self.expected(org, app, hostname), unix_now())
            .await;
        report.ownership_verified
    }

    /// Checks `record` now, stores the result and returns the updated record with the report.
    pub async fn check_now(
        &self,
        org: &Org,
        app: &App,
        record: &HostnameRecord,
    ) -> Result<Option<(HostnameRecord, CheckReport)>, StoreError> {
        let now = unix_now();
        let (mut report, inconclusive) = self
            .checker
            .check(&self.expected(org, app, &record.hostname), now)
            .await;
        // A failed lookup is "unknown", not "gone": a verified hostname stays verified through a
        // resolver outage and is re-checked soon; only a clear negative answer loses it.
        let keep = record.ownership_verified && !report.ownership_verified && inconclusive;
        if keep {
            tracing::warn!(hostname = %record.hostname, app = %app.name, "ownership re-check inconclusive; keeping the verified state");
        } else if record.ownership_verified && !report.ownership_verified {
            tracing::warn!(hostname = %record.hostname, app = %app.name, "ownership lost");
            report.findings.insert(
                0,
                Finding::new(
                    "OWNERSHIP_LOST",
                    format!(
                        "{} was verified until this check, which found no record proving it still belongs to the app; issuance and renewal stop until it does",
                        record.hostname
                    ),
                    "Restore the AAAA, CNAME or ownership TXT record that proved ownership (see `certplane certs setup`).",
                ),
            );
        }
        let verified = report.ownership_verified || keep;
        let failures = if verified {
            0
        } else {
            record.check_failures + 1
        };
        let delay = if keep {
            RETRY_INCONCLUSIVE
        } else {
            next_delay(verified, failures)
        };
        let update = CheckUpdate {
            verified,
            configured: report.configured,
            report: serde_json::to_string(&report).unwrap_or_default(),
            checked_at: now,
            next_check_at: now + delay,
            failures,
        };
        let stored = self
            .store
            .record_check(app.id, &record.hostname, &update)
            .await?;
        Ok(stored.map(|r| (r, report)))
    }

    /// Re-checks due hostnames until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let worked = match self.run_due().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "background checks failed");
                    0
                }
            };
            let pause = if worked > 0 {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Checks the hostnames due now, [`CONCURRENCY`] at a time; returns how many.
    pub async fn run_due(&self) -> Result<usize, StoreError> {
        let now = unix_now();
        let due = self
            .store
            .claim_due_checks(now, 64, now + CLAIM_LEASE)
            .await?;
        let count = due.len();
        let mut pending = due.into_iter();
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < CONCURRENCY {
                let Some((app_id, hostname)) = pending.next() else {
                    break;
                };
                let this = self.clone();
                running.spawn(async move {
                    let store = &this.store;
                    let Some(app) = store.app_by_id(app_id).await? else {
                        return Ok(());
                    };
                    let Some(org) = store.org_by_id(app.org_id).await? else {
                        return Ok(());
                    };
                    let Some(record) = store.hostname(app_id, &hostname).await? else {
                        return Ok(());
                    };
                    this.check_now(&org, &app, &record).await.map(drop)
                });
            }
            match running.join_next().await {
                Some(Ok(Err(e))) => tracing::error!(error = %e, "a background check failed"),
                Some(Err(e)) => tracing::error!(error = %e, "a background check panicked"),
                Some(Ok(Ok(()))) => {}
                None => break,
            }
        }
        Ok(count)
    }
}

/// Seconds until the next check: back-off while pending, a jittered period once verified.
fn next_delay(verified: bool, failures: i64) -> i64 {
    if verified {
        VERIFIED_EVERY + rand::rng().random_range(0..=VERIFIED_EVERY / 10)
    } else {
        let exp = u32::try_from(failures.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
        (PENDING_FIRST.saturating_mul(1i64 << exp)).min(PENDING_MAX)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_then_caps() {
        let delays: Vec<i64> = (1..=10).map(|f| next_delay(false, f)).collect();
        assert_eq!(delays, vec![5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
        let v = next_delay(true, 0);
        assert!((VERIFIED_EVERY..=VERIFIED_EVERY + VERIFIED_EVERY / 10).contains(&v));
    }
}
