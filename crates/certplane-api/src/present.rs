//! Store records turned into wire types.

use certplane_api_types::{
    AcmeOrderProgress, AppResponse, CertificateDetail, CertificateEntry, CertificateSummary,
    DnsRecordsFound, IssuedKey, Validation, ValidationError, Warning,
};
use certplane_domain::{
    CertificateStatus, DnsRequirements, PlatformSettings, app_ownership_value, cname_target,
    org_ownership_value,
};
use certplane_ownership::{CheckReport, Proof};
use certplane_store::{
    AcmeOrderRecord, App, CertSource, CertificateRecord, HostnameRecord, NewCertificate, Org,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Unix seconds as RFC 3339.
pub fn timestamp(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

pub fn app(platform: &PlatformSettings, org: &Org, app: &App) -> AppResponse {
    AppResponse {
        name: app.name.to_string(),
        org: org.slug.to_string(),
        ipv6: app.ipv6.to_string(),
        ipv4: match app.dedicated_ipv4 {
            Some(ip) => vec![ip.to_string()],
            None => platform
                .shared_ipv4
                .iter()
                .map(ToString::to_string)
                .collect(),
        },
        dedicated_ipv4: app.dedicated_ipv4.map(|ip| ip.to_string()),
        cname_target: cname_target(platform, &app.name, &app.token),
        ownership_value: app_ownership_value(&app.token),
        org_ownership_value: org_ownership_value(&org.token),
        backends: app.backends.iter().map(ToString::to_string).collect(),
        created_at: timestamp(app.created_at),
    }
}

fn status_detail(record: &HostnameRecord, report: Option<&CheckReport>) -> String {
    match (record.status, report) {
        (CertificateStatus::PendingOwnership, None) if record.hostname.is_wildcard() => "Waiting for the first DNS check, which runs within seconds of adding the hostname: a wildcard is proven only by the ownership TXT record of its base name (or the _acme-challenge delegation) from dns_requirements.".into(),
        (CertificateStatus::PendingOwnership, None) => "Waiting for the first DNS check, which runs within seconds of adding the hostname: set the AAAA record or the ownership TXT record from dns_requirements.".into(),
        (CertificateStatus::PendingOwnership, Some(_)) => "Ownership is not verified yet: no DNS record proves that this hostname belongs to the app. See validation_errors; the platform re-checks by itself with back-off, or run `certplane certs check`.".into(),
        (CertificateStatus::PendingValidation, _) if record.acme_requested => "Ownership is verified: the platform requests the ACME certificates within seconds (see acme_order).".into(),
        (CertificateStatus::PendingValidation, _) => "Ownership is verified. No ACME certificate was requested for this hostname: import one, or add the hostname with `certplane certs add` to have the platform issue it.".into(),
        (CertificateStatus::Issuing, _) => "Ownership is verified and the platform is getting the certificates from the ACME CA (see acme_order).".into(),
        (CertificateStatus::Failed, _) => "Issuance failed with every challenge the DNS records allow; the platform retries with back-off (next_issuance_at). See validation_errors for who must do what, then run `certplane certs check` to retry at once.".into(),
        (CertificateStatus::Active, _) => "A certificate is active: see `served` for which one the edges serve.".into(),
        (CertificateStatus::Expired, _) if record.acme_requested => "Every certificate of this hostname has expired; the platform keeps trying to renew the ACME ones (see validation_errors).".into(),
        (CertificateStatus::Expired, _) => "Every certificate of this hostname has expired: import a renewed one.".into(),
    }
}

/// The stored report of the last check, if any (one that no longer parses counts as none).
pub fn report(record: &HostnameRecord) -> Option<CheckReport> {
    record
        .check_report
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
}

fn proof_name(p: Proof) -> String {
    match p {
        Proof::Aaaa => "aaaa",
        Proof::Cname => "cname",
        Proof::OwnershipTxt => "ownership_txt",
        Proof::AcmeChallengeCname => "acme_challenge_cname",
    }
    .into()
}

pub fn summary(record: &HostnameRecord) -> CertificateSummary {
    CertificateSummary {
        hostname: record.hostname.to_string(),
        status: record.status,
        configured: record.configured,
        acme_requested: record.acme_requested,
        is_wildcard: record.hostname.is_wildcard(),
        created_at: timestamp(record.created_at),
        updated_at: timestamp(record.updated_at),
    }
}

/// Days before expiry at which a certificate is flagged.
const EXPIRY_WARNINGS: [i64; 3] = [1, 7, 30];

/// The stored import warnings of a certificate.
#[derive(serde::Deserialize)]
struct StoredWarning {
    code: String,
    message: String,
}

fn cert_status(verified: bool, cert: &NewCertificate, now: i64) -> &'static str {
    if now >= cert.not_after {
        "expired"
    } else if now < cert.not_before {
        "not_yet_valid"
    } else if !verified {
        "pending_ownership"
    } else {
        "active"
    }
}

fn cert_warnings(cert: &NewCertificate, now: i64) -> Vec<Warning> {
    let mut warnings: Vec<Warning> = serde_json::from_str::<Vec<StoredWarning>>(&cert.warnings)
        .unwrap_or_default()
        .into_iter()
        .map(|w| Warning {
            remediation: import_warning_remediation(&w.code).into(),
            code: w.code,
            message: w.message,
        })
        .collect();
    let left = cert.not_after - now;
    if left > 0
        && let Some(days) = EXPIRY_WARNINGS.iter().find(|&&d| left <= d * 86_400)
    {
        let renew = match cert.source {
            CertSource::Custom => {
                "Import a renewed certificate (`certplane certs import`); until then the ACME certificate, if any, takes over when this one expires."
            }
            CertSource::Acme => {
                "The platform renews ACME certificates by itself; check validation_errors if it does not."
            }
        };
        warnings.push(Warning {
            code: "CERTIFICATE_EXPIRING".into(),
            message: format!(
                "the {} certificate expires within {days} day{} ({})",
                cert.source.as_str(),
                if *days == 1 { "" } else { "s" },
                timestamp(cert.not_after)
            ),
            remediation: renew.into(),
        });
    }
    warnings
}

fn import_warning_remediation(code: &str) -> &'static str {
    match code {
        "CHAIN_UNTRUSTED" => {
            "Nothing to do behind a CDN that trusts this CA (an origin CA); browsers reaching the platform directly will not trust it."
        }
        "CHAIN_INCOMPLETE" => {
            "Import the full chain: your certificate followed by its intermediate certificates."
        }
        "ROOT_DROPPED" => "Nothing to do: the root was left out, as clients already have it.",
        "CHAIN_REORDERED" => {
            "Nothing to do: the chain was put in order (certificate first, then its issuers)."
        }
        _ => "",
    }
}

/// The hostname's certificates as entries, which one is served, and their warnings.
fn certificate_entries(
    record: &HostnameRecord,
    certs: &[CertificateRecord],
    now: i64,
) -> (Vec<CertificateEntry>, Option<String>, Vec<Warning>) {
    let verified = record.ownership_verified;
    let usable =
        |c: &&CertificateRecord| verified && cert_status(verified, &c.cert, now) == "active";
    let custom: Vec<&CertificateRecord> = certs
        .iter()
        .filter(|c| c.cert.source == CertSource::Custom)
        .collect();
    let acme: Vec<&CertificateRecord> = certs
        .iter()
        .filter(|c| c.cert.source == CertSource::Acme)
        .collect();
    let custom_ok = custom.iter().any(usable);
    let acme_ok = acme.iter().any(usable);
    let served = if custom_ok {
        Some(CertSource::Custom)
    } else if acme_ok {
        Some(CertSource::Acme)
    } else {
        None
    };
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    for (source, group, ok) in [
        (CertSource::Custom, &custom, custom_ok),
        (CertSource::Acme, &acme, acme_ok),
    ] {
        let Some(first) = group.first() else { continue };
        let role = match (served, ok) {
            (Some(s), true) if s == source => "primary",
            (Some(_), true) => "fallback",
            _ => "inactive",
        };
        let expires = group
            .iter()
            .map(|c| c.cert.not_after)
            .min()
            .unwrap_or(first.cert.not_after);
        let entry_warnings: Vec<Warning> = group
            .iter()
            .flat_map(|c| cert_warnings(&c.cert, now))
            .collect();
        warnings.extend(entry_warnings.iter().cloned());
        entries.push(CertificateEntry {
            source: source.as_str().into(),
            status: cert_status(verified, &first.cert, now).into(),
            role: role.into(),
            created_at: timestamp(first.created_at),
            not_before: timestamp(first.cert.not_before),
            expires_at: timestamp(expires),
            issuer: first.cert.issuer.clone(),
            fingerprint: first.cert.fingerprint.clone(),
            issued: group
                .iter()
                .map(|c| IssuedKey {
                    key_type: c.cert.key_type.clone(),
                    expires_at: timestamp(c.cert.not_after),
                    fingerprint: c.cert.fingerprint.clone(),
                    not_before: timestamp(c.cert.not_before),
                })
                .collect(),
            warnings: entry_warnings,
        });
    }
    (entries, served.map(|s| s.as_str().to_owned()), warnings)
}

pub fn detail(
    platform: &PlatformSettings,
    org: &Org,
    app: &App,
    record: &HostnameRecord,
    certs: &[CertificateRecord],
) -> CertificateDetail {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (certificates, served, warnings) = certificate_entries(record, certs, now);
    let report = report(record);
    let validation = report
        .as_ref()
        .map_or_else(Validation::default, |r| Validation {
            dns_configured: r.dns_configured,
            alpn_configured: r.alpn_configured,
            http_configured: r.http_configured,
            ownership_txt_configured: r.ownership_txt_configured,
            ownership_verified: record.ownership_verified,
            caa_permits: Some(r.caa_permits),
        });
    let validation_errors = report
        .as_ref()
        .map(|r| {
            r.findings
                .iter()
                .map(|f| ValidationError {
                    code: f.code.clone(),
                    message: f.message.clone(),
                    remediation: f.remediation.clone(),
                    timestamp: timestamp(r.checked_at),
                    challenge: None,
                    key_type: None,
                    problem: None,
                })
                .collect()
        })
        .unwrap_or_default();
    CertificateDetail {
        hostname: record.hostname.to_string(),
        app: app.name.to_string(),
        status: record.status,
        status_detail: status_detail(record, report.as_ref()),
        configured: record.configured,
        acme_requested: record.acme_requested,
        is_wildcard: record.hostname.is_wildcard(),
        is_apex: record.hostname.is_apex(),
        rate_limited_until: record
            .rate_limited_until
            .filter(|u| *u > now)
            .map(timestamp),
        certificates,
        served,
        warnings,
        validation,
        dns_requirements: DnsRequirements::new(
            platform,
            &record.hostname,
            &app.name,
            &app.token,
            app.dedicated_ipv4,
            app.ipv6,
            &org.token,
        ),
        validation_errors,
        is_proxied: report.as_ref().is_some_and(|r| r.is_proxied),
        proxy_provider: report.as_ref().and_then(|r| r.proxy_provider.clone()),
        ownership_proofs: report
            .as_ref()
            .map(|r| r.proofs.iter().copied().map(proof_name).collect())
            .unwrap_or_default(),
        dns_records: report.as_ref().map(|r| {
            let d = &r.dns_records;
            DnsRecordsFound {
                a: d.a.clone(),
                aaaa: d.aaaa.clone(),
                cname_chain: d.cname_chain.clone(),
                resolved_addresses: d.resolved_addresses.clone(),
                soa: d.soa.clone(),
                acme_challenge_cname: d.acme_challenge_cname.clone(),
                ownership_txt: d.ownership_txt.clone(),
                caa: d.caa.clone(),
                caa_at: d.caa_at.clone(),
                outcomes: d.outcomes.clone(),
            }
        }),
        checked_at: record.checked_at.map(timestamp),
        next_check_at: Some(timestamp(record.next_check_at))
            .filter(|_| record.checked_at.is_some()),
        created_at: timestamp(record.created_at),
        updated_at: timestamp(record.updated_at),
        certificate_authority: None,
        acme_order: None,
        next_issuance_at: None,
        propagation: None,
    }
}

/// One issuance attempt's error as the issuer stores it.
#[derive(serde::Deserialize)]
struct StoredAttempt {
    code: String,
    message: String,
    remediation: String,
    at: i64,
    challenge: Option<String>,
    key_type: String,
    problem: Option<serde_json::Value>,
}

/// Adds what the ACME issuer knows: the CA, the latest order, the next attempt, and each
/// attempt's error after the DNS check's findings.
pub fn acme_status(
    detail: &mut CertificateDetail,
    record: &HostnameRecord,
    order: Option<&AcmeOrderRecord>,
    certificate_authority: Option<&str>,
) {
    detail.certificate_authority = certificate_authority.map(str::to_owned);
    detail.acme_order = order.map(|o| AcmeOrderProgress {
        state: o.state.as_str().into(),
        key_type: o.key_type.clone(),
        challenge: o.challenge.clone(),
        renewal: o.renewal,
        order_url: o.order_url.clone(),
        problem: o.problem.clone(),
        created_at: timestamp(o.created_at),
        updated_at: timestamp(o.updated_at),
    });
    detail.next_issuance_at = (record.ownership_verified && record.acme_next_at > 0)
        .then(|| timestamp(record.acme_next_at));
    let attempts: Vec<StoredAttempt> = record
        .acme_errors
        .as_deref()
        .and_then(|e| serde_json::from_str(e).ok())
        .unwrap_or_default();
    detail
        .validation_errors
        .extend(attempts.into_iter().map(|a| ValidationError {
            code: a.code,
            message: a.message,
            remediation: a.remediation,
            timestamp: timestamp(a.at),
            challenge: a.challenge,
            key_type: Some(a.key_type),
            problem: a.problem,
        }));
}

#[cfg(test)]
mod tests {
    use certplane_domain::Hostname;
    use certplane_store::AppId;

    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;

    fn record(verified: bool) -> HostnameRecord {
        HostnameRecord {
            app_id: AppId(1),
            hostname: Hostname::parse("www.example.com").expect("valid"),
            acme_requested: true,
            status: CertificateStatus::Active,
            created_at: 0,
            updated_at: 0,
            ownership_verified: verified,
            configured: true,
            check_report: None,
            checked_at: Some(NOW),
            next_check_at: NOW + 3600,
            check_failures: 0,
            acme_next_at: 0,
            acme_failures: 0,
            rate_limited_until: None,
            acme_errors: None,
        }
    }

    fn cert(source: CertSource, key_type: &str, not_after: i64) -> CertificateRecord {
        CertificateRecord {
            id: 1,
            hostname: Hostname::parse("www.example.com").expect("valid"),
            cert: NewCertificate {
                source,
                key_type: key_type.into(),
                chain_pem: String::new(),
                key_id: "k1".into(),
                key_sealed: vec![],
                not_before: NOW - 10 * DAY,
                not_after,
                issuer: "CA".into(),
                fingerprint: "f".into(),
                warnings: r#"[{"code":"CHAIN_UNTRUSTED","message":"m"}]"#.into(),
            },
            created_at: 0,
        }
    }

    fn roles(entries: &[CertificateEntry]) -> Vec<(&str, &str, &str)> {
        entries
            .iter()
            .map(|e| (e.source.as_str(), e.role.as_str(), e.status.as_str()))
            .collect()
    }

    #[test]
    fn an_expired_custom_certificate_is_never_served() {
        let certs = [
            cert(CertSource::Custom, "ecdsa", NOW - DAY),
            cert(CertSource::Acme, "ecdsa", NOW + 60 * DAY),
            cert(CertSource::Acme, "rsa", NOW + 60 * DAY),
        ];
        let (entries, served, _) = certificate_entries(&record(true), &certs, NOW);
        assert_eq!(served.as_deref(), Some("acme"));
        assert_eq!(
            roles(&entries),
            vec![
                ("custom", "inactive", "expired"),
                ("acme", "primary", "active")
            ]
        );
        // Nothing valid at all: nothing is served.
        let (_, served, _) = certificate_entries(&record(true), &certs[..1], NOW);
        assert_eq!(served, None);
    }

    #[test]
    fn custom_wins_only_with_verified_ownership() {
        let certs = [
            cert(CertSource::Custom, "rsa", NOW + 90 * DAY),
            cert(CertSource::Acme, "ecdsa", NOW + 60 * DAY),
        ];
        let (entries, served, _) = certificate_entries(&record(true), &certs, NOW);
        assert_eq!(served.as_deref(), Some("custom"));
        assert_eq!(
            roles(&entries),
            vec![
                ("custom", "primary", "active"),
                ("acme", "fallback", "active")
            ]
        );
        let (entries, served, _) = certificate_entries(&record(false), &certs, NOW);
        assert_eq!(served, None);
        assert_eq!(
            roles(&entries),
            vec![
                ("custom", "inactive", "pending_ownership"),
                ("acme", "inactive", "pending_ownership")
            ]
        );
    }

    #[test]
    fn expiry_is_flagged_at_30_7_and_1_days() {
        for (left, flagged) in [
            (31 * DAY, None),
            (30 * DAY, Some("30 days")),
            (6 * DAY, Some("7 days")),
            (3600, Some("1 day ")),
        ] {
            let warnings = cert_warnings(&cert(CertSource::Custom, "ecdsa", NOW + left).cert, NOW);
            let expiring: Vec<&Warning> = warnings
                .iter()
                .filter(|w| w.code == "CERTIFICATE_EXPIRING")
                .collect();
            match flagged {
                None => assert!(expiring.is_empty(), "{left}"),
                Some(text) => assert!(
                    expiring.len() == 1 && expiring[0].message.contains(text),
                    "{left}: {expiring:?}"
                ),
            }
            assert!(
                warnings
                    .iter()
                    .any(|w| w.code == "CHAIN_UNTRUSTED" && !w.remediation.is_empty())
            );
        }
    }
}
