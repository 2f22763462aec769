//! What the store hands back: records with their storage ids.

use std::net::{Ipv4Addr, Ipv6Addr};

use certplane_domain::{AppName, Backend, CertificateStatus, Hostname, OrgSlug, OwnershipToken};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrgId(pub i64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AppId(pub i64);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Org {
    pub id: OrgId,
    pub slug: OrgSlug,
    pub name: String,
    /// Its ownership token: the TXT value `org-<token>` proves ownership for all its apps.
    pub token: OwnershipToken,
    pub is_admin: bool,
    /// Unix seconds.
    pub created_at: i64,
}

/// What an API token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// The operator: everything an org token may, plus admin routes.
    Admin,
    /// One org's customer token.
    Org,
    /// An edge node's token (held by the admin org): it reads what edges serve and reports how
    /// far it follows the propagation log; it is no customer and no operator.
    Edge,
}

impl TokenKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Org => "org",
            Self::Edge => "edge",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Self::Admin),
            "org" => Some(Self::Org),
            "edge" => Some(Self::Edge),
            _ => None,
        }
    }
}

/// The holder of an API token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub org: Org,
    pub kind: TokenKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct App {
    pub id: AppId,
    pub org_id: OrgId,
    pub name: AppName,
    pub token: OwnershipToken,
    pub ipv6: Ipv6Addr,
    /// A dedicated IPv4 address from the operator's pool, when the app asked for one.
    pub dedicated_ipv4: Option<Ipv4Addr>,
    pub backends: Vec<Backend>,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostnameRecord {
    pub app_id: AppId,
    pub hostname: Hostname,
    pub acme_requested: bool,
    pub status: CertificateStatus,
    pub created_at: i64,
    pub updated_at: i64,
    /// What the last ownership check concluded.
    pub ownership_verified: bool,
    /// Whether the last check found the traffic records pointing at the platform.
    pub configured: bool,
    /// The last check's report as JSON (the ownership crate's `CheckReport`); `None` before
    /// the first check.
    pub check_report: Option<String>,
    pub checked_at: Option<i64>,
    /// When the background verifier checks the hostname next (unix seconds; 0 = now).
    pub next_check_at: i64,
    /// Consecutive checks that did not verify ownership.
    pub check_failures: i64,
    /// When the issuer looks at the hostname next (unix seconds; 0 = as soon as it is due).
    pub acme_next_at: i64,
    /// Consecutive issuance rounds that failed (drives the back-off).
    pub acme_failures: i64,
    /// Until when the CA (or the platform's own budget) refuses orders for it.
    pub rate_limited_until: Option<i64>,
    /// The last issuance attempts' errors, JSON `[{code,message,remediation,timestamp,
    /// challenge,key_type}]`.
    pub acme_errors: Option<String>,
}

/// Where a certificate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertSource {
    Acme,
    Custom,
}

impl CertSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Acme => "acme",
            Self::Custom => "custom",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "acme" => Some(Self::Acme),
            "custom" => Some(Self::Custom),
            _ => None,
        }
    }
}

/// A certificate to store; its private key already sealed.
#[derive(Clone, PartialEq, Eq)]
pub struct NewCertificate {
    pub source: CertSource,
    /// `ecdsa` or `rsa`.
    pub key_type: String,
    pub chain_pem: String,
    /// The master key that sealed `key_sealed`.
    pub key_id: String,
    pub key_sealed: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
    pub issuer: String,
    pub fingerprint: String,
    /// JSON array of `{"code","message"}`.
    pub warnings: String,
}

impl std::fmt::Debug for NewCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCertificate")
            .field("source", &self.source)
            .field("key_type", &self.key_type)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// A stored certificate. `Debug` leaves out the sealed key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    pub id: i64,
    pub hostname: Hostname,
    pub cert: NewCertificate,
    pub created_at: i64,
}

/// What a stored private key is sealed to (the associated data of its encryption): its
/// hostname, source and key type, so a sealed key moved to another row does not open.
pub fn sealing_context(hostname: &Hostname, source: CertSource, key_type: &str) -> Vec<u8> {
    format!("{hostname}|{}|{key_type}", source.as_str()).into_bytes()
}

impl CertificateRecord {
    /// The associated data this record's key was sealed with.
    pub fn sealing_context(&self) -> Vec<u8> {
        sealing_context(&self.hostname, self.cert.source, &self.cert.key_type)
    }
}

impl std::fmt::Debug for CertificateRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateRecord")
            .field("id", &self.id)
            .field("hostname", &self.hostname)
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

/// The result of one ownership check, to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckUpdate {
    pub verified: bool,
    pub configured: bool,
    pub report: String,
    pub checked_at: i64,
    pub next_check_at: i64,
    pub failures: i64,
}

/// One page of an app's hostnames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<HostnameRecord>,
    /// All of the app's hostnames, not just this page's.
    pub total: u64,
}

/// An edge node as it last reported in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeRecord {
    pub id: String,
    /// The revision of the propagation log it had applied.
    pub revision: i64,
    /// Unix seconds.
    pub first_seen: i64,
    /// Unix seconds.
    pub last_seen: i64,
}

/// Which ACME challenge an answer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChallengeKind {
    /// Answered over HTTP at `/.well-known/acme-challenge/<token>`.
    Http01,
    /// Answered in a TLS handshake negotiating `acme-tls/1`.
    TlsAlpn01,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "http-01" => Some(Self::Http01),
            "tls-alpn-01" => Some(Self::TlsAlpn01),
            _ => None,
        }
    }
}

/// The answer to one ACME challenge, for the edges to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChallengeRecord {
    pub hostname: Hostname,
    pub kind: ChallengeKind,
    pub token: String,
    pub key_authorization: String,
    /// Unix seconds; after it the answer is of no use.
    pub expires_at: i64,
}

/// The app holding a hostname, as edges need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeApp {
    pub id: AppId,
    pub name: AppName,
    pub backends: Vec<Backend>,
    /// Whether the app has proven ownership of the hostname (only then are its certificates
    /// served).
    pub ownership_verified: bool,
}

/// Everything an edge serves for one hostname.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeHostRecord {
    pub hostname: Hostname,
    /// The app holding the hostname, if any.
    pub app: Option<EdgeApp>,
    /// Empty unless the app's ownership is verified.
    pub certificates: Vec<CertificateRecord>,
    pub challenges: Vec<ChallengeRecord>,
}

/// The platform's ACME account at one directory, credentials sealed. `Debug` leaves them out.
#[derive(Clone, PartialEq, Eq)]
pub struct AcmeAccountRecord {
    pub directory_url: String,
    /// The account's URL at the CA (not secret).
    pub account_url: String,
    /// The master key that sealed `credentials_sealed`.
    pub key_id: String,
    pub credentials_sealed: Vec<u8>,
}

impl std::fmt::Debug for AcmeAccountRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeAccountRecord")
            .field("directory_url", &self.directory_url)
            .field("account_url", &self.account_url)
            .finish_non_exhaustive()
    }
}

/// Where an ACME order stands. Each step is stored before the next request to the CA, so a
/// control plane that stops anywhere resumes the order instead of creating another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AcmeOrderState {
    /// Stored before the new-order request; no URL yet. Found after a crash, the order may or
    /// may not exist at the CA.
    Creating,
    /// Created at the CA; challenges to publish and validate.
    Pending,
    /// Every authorization valid; the CSR is next.
    Ready,
    /// The CSR was sent (its key is stored sealed in the row); the certificate is next.
    Processing,
    /// The certificate is stored.
    Done,
    /// Invalid, expired or given up at the CA.
    Dead,
}

impl AcmeOrderState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Pending => "pending",
            Self::Ready => "ready",
            Self::Processing => "processing",
            Self::Done => "done",
            Self::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "creating" => Self::Creating,
            "pending" => Self::Pending,
            "ready" => Self::Ready,
            "processing" => Self::Processing,
            "done" => Self::Done,
            "dead" => Self::Dead,
            _ => return None,
        })
    }

    /// Whether the order still needs driving.
    pub fn is_open(self) -> bool {
        !matches!(self, Self::Done | Self::Dead)
    }
}

/// One ACME order of a hostname. `Debug` leaves the sealed key out.
#[derive(Clone, PartialEq, Eq)]
pub struct AcmeOrderRecord {
    pub id: i64,
    pub hostname: Hostname,
    /// `ecdsa` or `rsa`: the certificate this order is for.
    pub key_type: String,
    /// Whether it replaces a certificate the hostname has.
    pub renewal: bool,
    /// `tls-alpn-01`, `http-01` or `dns-01`.
    pub challenge: String,
    pub state: AcmeOrderState,
    /// The order at the CA (not secret).
    pub order_url: Option<String>,
    /// The CSR's private key, sealed (stored before the CSR is sent): master key id and blob.
    pub key_id: Option<String>,
    pub key_sealed: Option<Vec<u8>>,
    /// The CA's problem document (RFC 7807 JSON) or the failure, when the order died.
    pub problem: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for AcmeOrderRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeOrderRecord")
            .field("id", &self.id)
            .field("hostname", &self.hostname)
            .field("key_type", &self.key_type)
            .field("renewal", &self.renewal)
            .field("challenge", &self.challenge)
            .field("state", &self.state)
            .field("order_url", &self.order_url)
            .field("problem", &self.problem)
            .finish_non_exhaustive()
    }
}

/// A change to an order's row: the new state, and what became known with it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AcmeOrderUpdate {
    pub state: Option<AcmeOrderState>,
    pub order_url: Option<String>,
    /// `(master key id, sealed key)`.
    pub key: Option<(String, Vec<u8>)>,
    pub problem: Option<String>,
}

impl std::fmt::Debug for AcmeOrderUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeOrderUpdate")
            .field("state", &self.state)
            .field("order_url", &self.order_url)
            .field("problem", &self.problem)
            .finish_non_exhaustive()
    }
}

/// What the issuer leaves on a hostname when it lets go of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeRelease {
    /// When to look at it again.
    pub next_at: i64,
    pub failures: i64,
    pub rate_limited_until: Option<i64>,
    /// JSON, as [`HostnameRecord::acme_errors`]; `None` clears them.
    pub errors: Option<String>,
    /// The status to show while the hostname has no certificate (`issuing`, `failed`,
    /// `pending_validation`); a hostname with certificates keeps the status they give it.
    pub status: Option<CertificateStatus>,
}

/// One entry of the platform's ledger of requests to the CA (its rate-limit budget).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeLedgerEntry {
    /// `order`, `certificate` or `failed_validation`.
    pub kind: String,
    pub registered_domain: String,
    /// The order's identifiers, sorted, comma-separated.
    pub names: String,
    pub at: i64,
}
