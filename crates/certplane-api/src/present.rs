//! Store records turned into wire types.

use certplane_api_types::{AppResponse, CertificateDetail, CertificateSummary, Validation};
use certplane_domain::{
    CertificateStatus, DnsRequirements, PlatformSettings, app_ownership_value, cname_target,
    org_ownership_value,
};
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
        ipv4: platform
            .shared_ipv4
            .iter()
            .map(ToString::to_string)
            .collect(),
        cname_target: cname_target(platform, &app.name, &app.token),
        ownership_value: app_ownership_value(&app.token),
        org_ownership_value: org_ownership_value(&org.token),
        backends: app.backends.iter().map(ToString::to_string).collect(),
        created_at: timestamp(app.created_at),
    }
}

fn status_detail(record: &HostnameRecord) -> String {
    match record.status {
        CertificateStatus::PendingOwnership => "Waiting for proof that this hostname points at the app: set the AAAA record or the ownership TXT record from dns_requirements. Automatic DNS checks and ACME issuance are not supported yet by this version; the hostname is recorded and keeps its place.".into(),
        other => format!("The hostname is {other}."),
    }
}

pub fn summary(record: &HostnameRecord) -> CertificateSummary {
    CertificateSummary {
        hostname: record.hostname.to_string(),
        status: record.status,
        configured: false,
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
    CertificateDetail {
        hostname: record.hostname.to_string(),
        app: app.name.to_string(),
        status: record.status,
        status_detail: status_detail(record),
        // Nothing has been checked yet, so nothing is known to be configured.
        configured: false,
        acme_requested: record.acme_requested,
        is_wildcard: record.hostname.is_wildcard(),
        is_apex: record.hostname.is_apex(),
        rate_limited_until: None,
        certificates: Vec::new(),
        validation: Validation::default(),
        dns_requirements: DnsRequirements::new(
            platform,
            &record.hostname,
            &app.name,
            &app.token,
            app.ipv6,
            &org.token,
        ),
        validation_errors: Vec::new(),
        created_at: timestamp(record.created_at),
        updated_at: timestamp(record.updated_at),
    }
}
