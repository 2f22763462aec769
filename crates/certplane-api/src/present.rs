//! Store records turned into wire types.

use certplane_api_types::{
    AppResponse, CertificateDetail, CertificateSummary, DnsRecordsFound, Validation,
    ValidationError,
};
use certplane_domain::{
    CertificateStatus, DnsRequirements, PlatformSettings, app_ownership_value, cname_target,
    org_ownership_value,
};
use certplane_ownership::{CheckReport, Proof};
use certplane_store::{App, HostnameRecord, Org};
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
        (CertificateStatus::PendingOwnership, None) => "Waiting for the first DNS check, which runs within seconds of adding the hostname: set the AAAA record or the ownership TXT record from dns_requirements.".into(),
        (CertificateStatus::PendingOwnership, Some(_)) => "Ownership is not verified yet: no DNS record proves that this hostname belongs to the app. See validation_errors; the platform re-checks by itself with back-off, or run `certplane certs check`.".into(),
        (CertificateStatus::PendingValidation, _) => "Ownership is verified. ACME issuance is not supported yet by this version of certplane, so no certificate is requested yet.".into(),
        (other, _) => format!("The hostname is {other}."),
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

pub fn detail(
    platform: &PlatformSettings,
    org: &Org,
    app: &App,
    record: &HostnameRecord,
) -> CertificateDetail {
    let report = report(record);
    let validation = report
        .as_ref()
        .map_or_else(Validation::default, |r| Validation {
            dns_configured: r.dns_configured,
            alpn_configured: r.alpn_configured,
            http_configured: r.http_configured,
            ownership_txt_configured: r.ownership_txt_configured,
            ownership_verified: record.ownership_verified,
            caa_permits: r.caa_permits,
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
        rate_limited_until: None,
        certificates: Vec::new(),
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
    }
}
