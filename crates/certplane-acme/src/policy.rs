//! The issuer's decisions, as pure functions: which challenge to try, when to retry, when to
//! renew, whether the CA's limits allow another order, and what a CA problem means for the
//! customer. No I/O, so every rule is unit-tested here.

use serde::{Deserialize, Serialize};

/// An ACME challenge type the platform can answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChallengeChoice {
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "dns-01")]
    Dns01,
}

impl ChallengeChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TlsAlpn01 => "tls-alpn-01",
            Self::Http01 => "http-01",
            Self::Dns01 => "dns-01",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "tls-alpn-01" => Some(Self::TlsAlpn01),
            "http-01" => Some(Self::Http01),
            "dns-01" => Some(Self::Dns01),
            _ => None,
        }
    }
}

/// What the last DNS check said can work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChallengePaths {
    /// The name points straight at the platform.
    pub alpn: bool,
    /// Straight at the platform, or through a proxy that forwards HTTP.
    pub http: bool,
    /// `_acme-challenge` is delegated to the platform's challenge zone.
    pub dns: bool,
}

/// The challenges to try, best first: TLS-ALPN-01 when the name points straight at the
/// platform, HTTP-01 when only HTTP reaches it (a CDN in front), DNS-01 through the delegation.
/// A wildcard can only be validated by DNS-01. Types in `failed` (tried this round) are left
/// out, so a failure moves on to the next type the records allow.
pub fn challenge_order(
    wildcard: bool,
    paths: ChallengePaths,
    failed: &[ChallengeChoice],
) -> Vec<ChallengeChoice> {
    let all = if wildcard {
        vec![(ChallengeChoice::Dns01, paths.dns)]
    } else {
        vec![
            (ChallengeChoice::TlsAlpn01, paths.alpn),
            (ChallengeChoice::Http01, paths.http),
            (ChallengeChoice::Dns01, paths.dns),
        ]
    };
    all.into_iter()
        .filter(|(c, ok)| *ok && !failed.contains(c))
        .map(|(c, _)| c)
        .collect()
}

/// Seconds to wait after `failures` consecutive failed rounds: 1 min, 10 min, 100 min, then
/// daily.
pub fn backoff(failures: i64) -> i64 {
    match failures {
        i64::MIN..=1 => 60,
        2 => 600,
        3 => 6_000,
        _ => 86_400,
    }
}

/// Seconds to wait after the `failures`-th attempt in a row that ended on a transient error (the
/// CA unreachable, a timeout, a 5xx): soon at first (5 s, 30 s), then the failure back-off.
pub fn transient_backoff(failures: i64) -> i64 {
    match failures {
        i64::MIN..=1 => 5,
        2 => 30,
        n => backoff(n - 2),
    }
}

/// When to renew a certificate valid from `not_before` to `not_after` without renewal
/// information from the CA: when a third of its lifetime remains, moved earlier by up to a
/// twelfth of the lifetime (`spread` in `[0, 1)`), so that certificates issued together do
/// not all renew at the same moment.
pub fn renew_at(not_before: i64, not_after: i64, spread: f64) -> i64 {
    let lifetime = (not_after - not_before).max(0);
    let spread = spread.clamp(0.0, 1.0);
    let early = ((lifetime / 12) as f64 * spread) as i64;
    not_after - lifetime / 3 - early
}

/// When to renew from the CA's suggested window (ACME Renewal Information, RFC 9773 §4.2): a
/// window that has started (or is malformed: its end not after its start) means now; otherwise a
/// uniformly chosen moment in it (`pick` in `[0, 1)`).
pub fn ari_renew_at(window_start: i64, window_end: i64, now: i64, pick: f64) -> i64 {
    if window_end <= window_start || window_start <= now {
        return now;
    }
    let span = (window_end - window_start) as f64;
    window_start + (span * pick.clamp(0.0, 1.0)) as i64
}

/// The CA's limits the platform keeps itself to (Let's Encrypt's by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub certificates_per_domain_per_week: u32,
    pub duplicate_certificates_per_week: u32,
    pub failed_validations_per_hour: u32,
    pub orders_per_3_hours: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            certificates_per_domain_per_week: 50,
            duplicate_certificates_per_week: 5,
            failed_validations_per_hour: 5,
            orders_per_3_hours: 300,
        }
    }
}

/// One past request to the CA, as the budget counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spent {
    /// `order`, `certificate` or `failed_validation`.
    pub kind: String,
    /// The order's identifiers, sorted, comma-separated.
    pub names: String,
    pub at: i64,
}

/// Why the budget refuses an order now, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverBudget {
    pub until: i64,
    pub message: String,
}

const WEEK: i64 = 7 * 86_400;
const HOUR: i64 = 3_600;

/// Whether another order for `names` fits the CA's limits, given what was spent under its
/// registered domain (`domain`, the last week) and the account's orders (`orders`, times of
/// the last three hours). `renewal` orders count against the same limits: a CA counts them too.
pub fn budget(
    limits: &Limits,
    names: &str,
    domain: &[Spent],
    orders: &[i64],
    now: i64,
) -> Result<(), OverBudget> {
    // The moment the oldest of the `limit` newest entries in the window leaves it.
    fn over(times: &mut Vec<i64>, limit: u32, window: i64, now: i64) -> Option<i64> {
        times.retain(|t| *t > now - window);
        times.sort_unstable();
        let limit = limit as usize;
        if limit == 0 {
            return Some(now + window);
        }
        (times.len() >= limit).then(|| times[times.len() - limit] + window)
    }
    let pick = |kind: &str, same_names: bool| -> Vec<i64> {
        domain
            .iter()
            .filter(|s| s.kind == kind && (!same_names || s.names == names))
            .map(|s| s.at)
            .collect()
    };
    let registered = names
        .split(',')
        .next()
        .map(|n| n.trim_start_matches("*."))
        .unwrap_or_default();
    let mut checks: Vec<(Option<i64>, String)> = Vec::new();
    checks.push((
        over(
            &mut orders.to_vec(),
            limits.orders_per_3_hours,
            3 * HOUR,
            now,
        ),
        format!(
            "the platform's ACME account has sent {} new orders in 3 hours, the CA's limit",
            limits.orders_per_3_hours
        ),
    ));
    checks.push((
        over(
            &mut pick("failed_validation", true),
            limits.failed_validations_per_hour,
            HOUR,
            now,
        ),
        format!(
            "{names} failed validation {} times in the last hour, the CA's limit",
            limits.failed_validations_per_hour
        ),
    ));
    checks.push((
        over(
            &mut pick("certificate", true),
            limits.duplicate_certificates_per_week,
            WEEK,
            now,
        ),
        format!(
            "{} certificates for exactly {names} were issued in 7 days, the CA's duplicate limit",
            limits.duplicate_certificates_per_week
        ),
    ));
    checks.push((
        over(
            &mut pick("certificate", false),
            limits.certificates_per_domain_per_week,
            WEEK,
            now,
        ),
        format!(
            "{} certificates under the registered domain of {registered} were issued in 7 days, the CA's limit",
            limits.certificates_per_domain_per_week
        ),
    ));
    match checks
        .into_iter()
        .filter_map(|(until, why)| until.map(|u| (u, why)))
        .max_by_key(|(until, _)| *until)
    {
        Some((until, message)) => Err(OverBudget { until, message }),
        None => Ok(()),
    }
}

/// A failure of an issuance attempt, in the customer's terms: a stable code, what happened,
/// and who must do what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    pub code: String,
    pub message: String,
    pub remediation: String,
    /// Unix seconds.
    pub at: i64,
    /// The challenge tried, when the failure was a validation.
    pub challenge: Option<ChallengeChoice>,
    /// `ecdsa` or `rsa`.
    pub key_type: String,
    /// The issuance round it belongs to (the hostname's failed rounds before it).
    pub round: i64,
    /// The CA's problem document (RFC 7807 JSON), when the CA sent one.
    pub problem: Option<serde_json::Value>,
}

/// What the platform knows of the hostname's records, for remediations.
#[derive(Clone, Debug, Default)]
pub struct RecordHints {
    pub hostname: String,
    pub challenge_record: String,
    pub challenge_target: String,
    pub caa_identities: Vec<String>,
}

/// Turns a CA problem (its `type` URN and `detail`) met while validating `challenge` (or
/// ordering, `None`) into a code and a remediation.
pub fn classify(
    problem_type: &str,
    detail: &str,
    challenge: Option<ChallengeChoice>,
    hints: &RecordHints,
) -> (String, String, String) {
    let kind = problem_type
        .strip_prefix("urn:ietf:params:acme:error:")
        .unwrap_or(problem_type);
    let host = &hints.hostname;
    let (code, remediation) = match (kind, challenge) {
        ("rateLimited", _) => (
            "RATE_LIMITED",
            "Nothing to do: the platform waits until the CA's limit allows another order, then retries by itself.".to_owned(),
        ),
        ("caa", _) => (
            "CAA_RECORD_INVALID",
            format!(
                "A CAA record of {host} or a parent forbids this CA: add CAA 0 issue \"{}\" (and issuewild for a wildcard), or remove the CAA records, then run `certplane certs check`.",
                hints.caa_identities.first().map_or("letsencrypt.org", String::as_str)
            ),
        ),
        (_, Some(ChallengeChoice::Dns01)) => (
            "DNS_VALIDATION_FAILED",
            format!(
                "Make sure CNAME {} -> {} is set at your DNS provider and no other record sits at that name, then run `certplane certs check`.",
                hints.challenge_record, hints.challenge_target
            ),
        ),
        (_, Some(ChallengeChoice::TlsAlpn01)) => (
            "TLS_ALPN_VALIDATION_FAILED",
            format!(
                "The CA could not reach the platform over TLS at {host}: make sure the A/AAAA records point straight at the platform (no proxy in front), then run `certplane certs check`; behind a proxy, the platform uses HTTP-01 or DNS-01 instead."
            ),
        ),
        (_, Some(ChallengeChoice::Http01)) => (
            "HTTP_VALIDATION_FAILED",
            format!(
                "The CA could not fetch http://{host}/.well-known/acme-challenge/ from the platform: point the A/AAAA records at the platform, or make the proxy in front forward that path over plain HTTP, or set CNAME {} -> {} for DNS-01; then run `certplane certs check`.",
                hints.challenge_record, hints.challenge_target
            ),
        ),
        (_, None) => (
            "ACME_ORDER_FAILED",
            "Nothing to do for now: the platform retries with back-off. If it persists, the platform operator should look at the CA's problem below.".to_owned(),
        ),
    };
    let message = if detail.is_empty() {
        format!("the CA refused ({kind})")
    } else {
        format!("the CA says: {detail} ({kind})")
    };
    (code.to_owned(), message, remediation)
}

#[cfg(test)]
mod tests {
    use super::*;

    use ChallengeChoice::{Dns01, Http01, TlsAlpn01};

    const ALL: ChallengePaths = ChallengePaths {
        alpn: true,
        http: true,
        dns: true,
    };

    #[test]
    fn challenges_follow_the_records_and_fall_through_on_failure() {
        assert_eq!(
            challenge_order(false, ALL, &[]),
            vec![TlsAlpn01, Http01, Dns01]
        );
        assert_eq!(
            challenge_order(false, ALL, &[TlsAlpn01]),
            vec![Http01, Dns01]
        );
        assert_eq!(
            challenge_order(false, ALL, &[TlsAlpn01, Http01]),
            vec![Dns01]
        );
        assert!(challenge_order(false, ALL, &[TlsAlpn01, Http01, Dns01]).is_empty());
        // Behind a CDN: no TLS-ALPN-01.
        let proxied = ChallengePaths {
            alpn: false,
            http: true,
            dns: false,
        };
        assert_eq!(challenge_order(false, proxied, &[]), vec![Http01]);
        // Only the delegation.
        let delegated = ChallengePaths {
            dns: true,
            ..ChallengePaths::default()
        };
        assert_eq!(challenge_order(false, delegated, &[]), vec![Dns01]);
        // A wildcard: DNS-01 or nothing, whatever else works.
        assert_eq!(challenge_order(true, ALL, &[]), vec![Dns01]);
        let no_delegation = ChallengePaths { dns: false, ..ALL };
        assert!(challenge_order(true, no_delegation, &[]).is_empty());
    }

    #[test]
    fn back_off_is_1_10_100_minutes_then_daily() {
        let steps: Vec<i64> = (1..=6).map(backoff).collect();
        assert_eq!(steps, vec![60, 600, 6_000, 86_400, 86_400, 86_400]);
    }

    #[test]
    fn transient_errors_retry_soon_then_back_off() {
        let steps: Vec<i64> = (1..=6).map(transient_backoff).collect();
        assert_eq!(steps, vec![5, 30, 60, 600, 6_000, 86_400]);
    }

    #[test]
    fn renewal_at_a_third_of_the_lifetime_left_spread_earlier() {
        let day = 86_400;
        let (nb, na) = (0, 90 * day);
        assert_eq!(renew_at(nb, na, 0.0), 60 * day);
        let earliest = renew_at(nb, na, 0.999_999);
        assert!(
            earliest < 60 * day && earliest >= 60 * day - 90 * day / 12,
            "{earliest}"
        );
        // Short test certificates follow the same rule.
        assert_eq!(renew_at(100, 130, 0.0), 120);
        // Malformed validity does not panic.
        assert!(renew_at(10, 0, 0.5) <= 10);
    }

    #[test]
    fn ari_window_in_the_past_means_now_else_a_moment_inside_it() {
        let now = 1_000;
        assert_eq!(ari_renew_at(500, 2_000, now, 0.7), now, "window started");
        assert_eq!(ari_renew_at(100, 900, now, 0.2), now, "window over");
        assert_eq!(ari_renew_at(2_000, 1_500, now, 0.5), now, "malformed");
        assert_eq!(ari_renew_at(2_000, 3_000, now, 0.0), 2_000);
        assert_eq!(ari_renew_at(2_000, 3_000, now, 0.5), 2_500);
        let late = ari_renew_at(2_000, 3_000, now, 0.999_999);
        assert!((2_000..3_000).contains(&late));
    }

    fn spent(kind: &str, names: &str, at: i64) -> Spent {
        Spent {
            kind: kind.into(),
            names: names.into(),
            at,
        }
    }

    #[test]
    fn the_budget_keeps_each_of_the_cas_limits() {
        let limits = Limits {
            certificates_per_domain_per_week: 3,
            duplicate_certificates_per_week: 2,
            failed_validations_per_hour: 2,
            orders_per_3_hours: 4,
        };
        let now = 10 * WEEK;
        let n = "www.example.com";
        assert_eq!(budget(&limits, n, &[], &[], now), Ok(()));

        // Duplicates: two certificates for the same names in a week.
        let dups = [
            spent("certificate", n, now - 100),
            spent("certificate", n, now - 50),
        ];
        let refused = budget(&limits, n, &dups, &[], now).expect_err("over");
        assert_eq!(refused.until, now - 100 + WEEK);
        assert!(refused.message.contains("duplicate"), "{}", refused.message);
        // ...another name under the domain is still fine, until the domain's limit.
        assert_eq!(budget(&limits, "api.example.com", &dups, &[], now), Ok(()));
        let mut domain = dups.to_vec();
        domain.push(spent("certificate", "api.example.com", now - 10));
        let refused = budget(&limits, "x.example.com", &domain, &[], now).expect_err("over");
        assert!(
            refused.message.contains("registered domain"),
            "{}",
            refused.message
        );
        assert_eq!(refused.until, now - 100 + WEEK);
        // Older than a week: forgotten.
        let old = [
            spent("certificate", n, now - WEEK - 1),
            spent("certificate", n, now - WEEK),
        ];
        assert_eq!(budget(&limits, n, &old, &[], now), Ok(()));

        // Failed validations: per identifier per hour.
        let failed = [
            spent("failed_validation", n, now - 3_000),
            spent("failed_validation", n, now - 60),
        ];
        let refused = budget(&limits, n, &failed, &[], now).expect_err("over");
        assert_eq!(refused.until, now - 3_000 + HOUR);

        // Orders per account per 3 hours.
        let orders = [now - 10_000, now - 9_000, now - 5, now - 1];
        let refused = budget(&limits, n, &[], &orders, now).expect_err("over");
        assert_eq!(refused.until, now - 10_000 + 3 * HOUR);
        assert_eq!(budget(&limits, n, &[], &orders[1..], now), Ok(()));

        // Several limits at once: the later end wins.
        let refused = budget(&limits, n, &dups, &orders, now).expect_err("over");
        assert_eq!(refused.until, now - 100 + WEEK);
    }

    #[test]
    fn problems_become_codes_that_say_who_acts() {
        let hints = RecordHints {
            hostname: "www.example.com".into(),
            challenge_record: "_acme-challenge.www.example.com".into(),
            challenge_target: "www.example.com.tok.acme.plat.test".into(),
            caa_identities: vec!["letsencrypt.org".into()],
        };
        let cases = [
            (
                "urn:ietf:params:acme:error:rateLimited",
                None,
                "RATE_LIMITED",
            ),
            (
                "urn:ietf:params:acme:error:caa",
                Some(Http01),
                "CAA_RECORD_INVALID",
            ),
            (
                "urn:ietf:params:acme:error:connection",
                Some(Http01),
                "HTTP_VALIDATION_FAILED",
            ),
            (
                "urn:ietf:params:acme:error:tls",
                Some(TlsAlpn01),
                "TLS_ALPN_VALIDATION_FAILED",
            ),
            (
                "urn:ietf:params:acme:error:unauthorized",
                Some(Dns01),
                "DNS_VALIDATION_FAILED",
            ),
            (
                "urn:ietf:params:acme:error:serverInternal",
                None,
                "ACME_ORDER_FAILED",
            ),
        ];
        for (kind, challenge, code) in cases {
            let (got, message, remediation) = classify(kind, "it broke", challenge, &hints);
            assert_eq!(got, code, "{kind}");
            assert!(message.contains("it broke"), "{message}");
            assert!(!remediation.is_empty());
        }
        let (_, _, remediation) =
            classify("urn:ietf:params:acme:error:dns", "", Some(Dns01), &hints);
        assert!(remediation.contains("www.example.com.tok.acme.plat.test"));
    }
}
