//! The REST API's request and answer bodies.
//!
//! The server serialises these and documents them in its OpenAPI document; the CLI's client
//! deserialises the same types. Field names are part of the pinned contract: add fields, never
//! rename them.

#![forbid(unsafe_code)]

use certplane_domain::{CertificateStatus, DnsRequirements};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{"error": {...}}`: every 4xx and 5xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable.
    #[schema(example = "HOSTNAME_TAKEN")]
    pub code: String,
    pub message: String,
    /// What to do about it.
    pub remediation: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgRequest {
    #[schema(example = "Acme Corp")]
    pub name: String,
}

/// A new org. `token` is its API token, shown this once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedOrg {
    pub slug: String,
    pub name: String,
    pub token: String,
    /// The TXT value that proves ownership for every app of the org.
    pub ownership_value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAppRequest {
    #[schema(example = "web")]
    pub app_name: String,
    /// `host:port` addresses the edges forward to.
    #[serde(default)]
    #[schema(example = json!(["10.0.0.5:8080"]))]
    pub backends: Vec<String>,
    /// Give the app an IPv4 address of its own from the operator's pool.
    #[serde(default)]
    pub dedicated_ipv4: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchAppRequest {
    /// Replaces the backends when present.
    pub backends: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppResponse {
    pub name: String,
    /// The owning org's slug.
    pub org: String,
    /// The app's dedicated IPv6 address: never handed to another app, even after deletion.
    pub ipv6: String,
    /// The IPv4 addresses to point A records at: the app's dedicated one when it has one,
    /// otherwise the platform's shared ones.
    pub ipv4: Vec<String>,
    /// The app's dedicated IPv4 address, if it has one. Recycled after the app is deleted.
    pub dedicated_ipv4: Option<String>,
    /// `<token>.<app>.<apps_domain>`
    pub cname_target: String,
    /// `app-<token>`, for the ownership TXT record.
    pub ownership_value: String,
    /// `org-<token>`, valid for every app of the org.
    pub org_ownership_value: String,
    pub backends: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppList {
    pub apps: Vec<AppResponse>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddAcmeRequest {
    #[schema(example = "www.example.com")]
    pub hostname: String,
}

/// A certificate and its key to import. The key is stored encrypted and never returned.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportCustomRequest {
    #[schema(example = "www.example.com")]
    pub hostname: String,
    /// PEM: the certificate, then its intermediates (the root may be left out).
    pub fullchain: String,
    /// PEM: the unencrypted private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: String,
}

impl std::fmt::Debug for ImportCustomRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportCustomRequest")
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

/// Something to know that does not stop the hostname from working.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Warning {
    #[schema(example = "CHAIN_UNTRUSTED")]
    pub code: String,
    pub message: String,
    pub remediation: String,
}

/// One hostname and its certificates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CertificateDetail {
    pub hostname: String,
    pub app: String,
    pub status: CertificateStatus,
    /// Why the status is what it is, and what happens next.
    pub status_detail: String,
    /// Whether the hostname's traffic records point at the platform.
    pub configured: bool,
    pub acme_requested: bool,
    pub is_wildcard: bool,
    pub is_apex: bool,
    /// RFC 3339; set while the CA's rate limits hold issuance back.
    pub rate_limited_until: Option<String>,
    pub certificates: Vec<CertificateEntry>,
    /// Which certificate the edges serve: `custom`, `acme`, or none.
    pub served: Option<String>,
    /// Flagged but not blocking: an untrusted chain, a certificate expiring soon.
    pub warnings: Vec<Warning>,
    pub validation: Validation,
    pub dns_requirements: DnsRequirements,
    pub validation_errors: Vec<ValidationError>,
    /// The records a proxy or CDN answers for the hostname point elsewhere.
    pub is_proxied: bool,
    /// The proxy, when its published ranges are known.
    pub proxy_provider: Option<String>,
    /// Which records prove ownership: `aaaa`, `cname`, `ownership_txt`, `acme_challenge_cname`.
    pub ownership_proofs: Vec<String>,
    /// What the last DNS check found; absent before the first check.
    pub dns_records: Option<DnsRecordsFound>,
    /// RFC 3339; absent before the first check.
    pub checked_at: Option<String>,
    /// When the platform checks again by itself (RFC 3339).
    pub next_check_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// The ACME CA (its directory URL) issuing this hostname's platform-managed certificates.
    #[serde(default)]
    pub certificate_authority: Option<String>,
    /// The latest ACME order and where it stands.
    #[serde(default)]
    pub acme_order: Option<AcmeOrderProgress>,
    /// When the platform works on issuance or renewal next (RFC 3339): after a back-off, at
    /// the renewal time, or at the end of a rate limit.
    #[serde(default)]
    pub next_issuance_at: Option<String>,
    /// Whether the edges serve the hostname's newest state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<PropagationStatus>,
}

/// Whether every live edge serves a hostname's newest state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PropagationStatus {
    /// The newest revision of the propagation log for the hostname (0: never changed what
    /// edges serve).
    pub revision: i64,
    /// Edges connected now (or heard from by another control plane in the last 30 s).
    pub edges_live: u32,
    /// Live edges that serve `revision` or later.
    pub edges_serving: u32,
    /// `edges_serving == edges_live`.
    pub propagated: bool,
}

/// What the last DNS check found for a hostname.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DnsRecordsFound {
    pub a: Vec<String>,
    pub aaaa: Vec<String>,
    /// CNAME targets from the hostname, in order.
    pub cname_chain: Vec<String>,
    /// Every address the hostname resolves to, after the CNAME chain.
    pub resolved_addresses: Vec<String>,
    /// The SOA of the hostname's zone: `zone primary-ns serial`.
    pub soa: Option<String>,
    pub acme_challenge_cname: Vec<String>,
    pub ownership_txt: Vec<String>,
    /// The CAA records that apply, `flags tag "value"`.
    pub caa: Vec<String>,
    /// The name the applicable CAA records were found at.
    pub caa_at: Option<String>,
    /// Each lookup's outcome: `records`, `no_data`, `nx_domain`, `serv_fail`, `timeout`.
    pub outcomes: std::collections::BTreeMap<String, String>,
}

/// A certificate stored for a hostname.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CertificateEntry {
    /// `acme` or `custom`.
    pub source: String,
    /// `active`, `pending_ownership`, `expired` or `not_yet_valid`.
    pub status: String,
    /// `primary` (served), `fallback` (served if the primary goes) or `inactive`.
    pub role: String,
    pub created_at: String,
    pub not_before: String,
    pub expires_at: String,
    pub issuer: String,
    /// SHA-256 of the leaf certificate, hex.
    pub fingerprint: String,
    pub issued: Vec<IssuedKey>,
    pub warnings: Vec<Warning>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IssuedKey {
    /// `ecdsa` or `rsa`.
    #[serde(rename = "type")]
    pub key_type: String,
    pub expires_at: String,
    /// SHA-256 of this certificate (hex).
    #[serde(default)]
    pub fingerprint: String,
    /// RFC 3339.
    #[serde(default)]
    pub not_before: String,
}

/// What the DNS checks found configured.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Validation {
    pub dns_configured: bool,
    pub alpn_configured: bool,
    pub http_configured: bool,
    pub ownership_txt_configured: bool,
    pub ownership_verified: bool,
    /// Whether CAA lets the platform's CA issue; absent before the first check.
    pub caa_permits: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ValidationError {
    pub code: String,
    pub message: String,
    pub remediation: String,
    pub timestamp: String,
    /// For an issuance attempt: the ACME challenge tried (`tls-alpn-01`, `http-01`, `dns-01`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
    /// For an issuance attempt: the certificate's key type (`ecdsa`, `rsa`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_type: Option<String>,
    /// For an issuance attempt the CA refused: its RFC 7807 problem document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub problem: Option<serde_json::Value>,
}

/// The hostname's latest ACME order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AcmeOrderProgress {
    /// `creating`, `pending` (challenges published and validating), `ready`, `processing`
    /// (CSR sent), `done` (certificate stored; see `propagation` for the edges), `dead`.
    pub state: String,
    /// `ecdsa` or `rsa`.
    pub key_type: String,
    /// `tls-alpn-01`, `http-01` or `dns-01`.
    pub challenge: String,
    /// Whether it replaces a certificate the hostname has.
    pub renewal: bool,
    /// The order at the CA.
    pub order_url: Option<String>,
    /// Why it died, when it did.
    pub problem: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A hostname in a list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CertificateSummary {
    pub hostname: String,
    pub status: CertificateStatus,
    pub configured: bool,
    pub acme_requested: bool,
    pub is_wildcard: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CertificateList {
    pub certificates: Vec<CertificateSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
    /// All of the app's hostnames.
    pub total_count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// One edge proxy and the state it serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EdgeStatus {
    pub id: String,
    /// The propagation-log revision the edge serves.
    pub revision: i64,
    /// RFC 3339: the last time a control plane heard from it.
    pub last_seen: String,
    /// Whether its event stream is open to the control plane that answered.
    pub connected: bool,
    /// Whether `?wait=propagated` waits for it.
    pub live: bool,
}

/// `GET /v1/edges`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EdgeList {
    /// The newest revision of the propagation log.
    pub revision: i64,
    pub edges: Vec<EdgeStatus>,
}

/// `POST /v1/edges/tokens`: shown in this answer only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedEdgeToken {
    /// For `certplane edge --token`: it reads the edge stream and nothing else.
    pub token: String,
}
