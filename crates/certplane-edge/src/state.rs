//! What an edge serves: an immutable [`Snapshot`] built from the control plane's events.
//!
//! A snapshot is never changed once published; the edge builds the next one beside it and
//! swaps it in atomically (see `crate::Edge`), so a handshake or a request sees one whole
//! state. Lookups are exact name first, then the wildcard one label up (`a.example.com` →
//! `*.example.com`); a wildcard never covers a deeper name or its own base.
//!
//! Certificate choice, per handshake: among certificates valid at that moment (expired or not
//! yet valid ones are never served), custom before ACME, and within a source the first key
//! type the client can verify (ECDSA before RSA).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use certplane_events::transport::StreamKey;
use certplane_events::{CertSource, EdgeCertificate, EdgeChallenge, EdgeHost};
use rustls::SignatureScheme;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Shards of the hostname map. The follower publishes a new snapshot per change: cloning a
/// snapshot copies only the shard pointers, and a change copies only its own shard, so a change
/// costs O(N / SHARDS + SHARDS), not O(N).
const SHARDS: usize = 256;

type Shard = HashMap<Arc<str>, Arc<HostEntry>>;

/// Everything the edge serves at one revision.
#[derive(Clone)]
pub struct Snapshot {
    revision: i64,
    shards: Vec<Arc<Shard>>,
    hosts: usize,
    certificates: usize,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("revision", &self.revision)
            .field("hosts", &self.hosts)
            .field("certificates", &self.certificates)
            .finish_non_exhaustive()
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            revision: 0,
            shards: (0..SHARDS).map(|_| Arc::new(Shard::new())).collect(),
            hosts: 0,
            certificates: 0,
        }
    }
}

/// FNV-1a: cheap, and good enough to spread names over shards (each shard hashes again).
fn shard_of(name: &str) -> usize {
    let mut hash: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash as usize % SHARDS
}

/// What the edge serves for one hostname.
#[derive(Debug)]
pub struct HostEntry {
    pub hostname: Arc<str>,
    pub app: Option<Arc<AppRoute>>,
    /// In serving priority: custom before ACME, ECDSA before RSA.
    pub certificates: Vec<ServedCertificate>,
    /// HTTP-01 answers: token → key authorization.
    pub http01: HashMap<String, String>,
    /// The TLS-ALPN-01 validation certificate, when a challenge for the name is open.
    pub alpn: Option<Arc<CertifiedKey>>,
    /// When the control plane read this state from its log (unix ms).
    pub changed_at_ms: i64,
}

/// Where an app's requests go.
#[derive(Debug)]
pub struct AppRoute {
    pub name: String,
    /// `host:port` or `ip:port`.
    pub backends: Vec<String>,
    next: AtomicUsize,
}

/// One [`AppRoute`] per app for all its hostnames: less memory per hostname, and round robin
/// across the app rather than per name.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: HashMap<(String, Vec<String>), Arc<AppRoute>>,
}

impl RouteTable {
    /// The shared route equal to `entry`'s.
    pub fn share(&mut self, entry: &mut HostEntry) {
        let Some(app) = entry.app.take() else { return };
        let key = (app.name.clone(), app.backends.clone());
        entry.app = Some(self.routes.entry(key).or_insert(app).clone());
    }

    /// Forgets routes (before a full snapshot, which brings every one still in use again).
    pub fn clear(&mut self) {
        self.routes.clear();
    }
}

impl AppRoute {
    pub fn new(name: String, backends: Vec<String>) -> Self {
        Self {
            name,
            backends,
            next: AtomicUsize::new(0),
        }
    }

    /// The backend index to try first for the next request (round robin).
    pub fn next_start(&self) -> usize {
        match self.backends.len() {
            0 => 0,
            n => self.next.fetch_add(1, Ordering::Relaxed) % n,
        }
    }
}

/// A certificate ready for handshakes.
#[derive(Debug)]
pub struct ServedCertificate {
    pub source: CertSource,
    /// `ecdsa`, `rsa` (or `other`).
    pub key_type: &'static str,
    pub key: Arc<CertifiedKey>,
    pub not_before: i64,
    pub not_after: i64,
}

impl ServedCertificate {
    pub fn valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

impl Snapshot {
    /// The revision of the control plane's log this snapshot reflects.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn set_revision(&mut self, revision: i64) {
        self.revision = revision;
    }

    /// Hostnames held.
    pub fn len(&self) -> usize {
        self.hosts
    }

    pub fn is_empty(&self) -> bool {
        self.hosts == 0
    }

    /// Certificates held (all hostnames).
    pub fn certificate_count(&self) -> usize {
        self.certificates
    }

    /// The entry for exactly this name.
    pub fn host(&self, name: &str) -> Option<&Arc<HostEntry>> {
        self.shards[shard_of(name)].get(name)
    }

    /// Replaces (or adds) a hostname's entry. Copies the entry's shard if another snapshot
    /// shares it.
    pub fn insert(&mut self, entry: HostEntry) {
        self.certificates += entry.certificates.len();
        let shard = Arc::make_mut(&mut self.shards[shard_of(&entry.hostname)]);
        match shard.insert(entry.hostname.clone(), Arc::new(entry)) {
            Some(old) => self.certificates -= old.certificates.len(),
            None => self.hosts += 1,
        }
    }

    /// Drops a hostname. Returns whether it was held.
    pub fn remove(&mut self, name: &str) -> bool {
        let index = shard_of(name);
        if !self.shards[index].contains_key(name) {
            return false;
        }
        let shard = Arc::make_mut(&mut self.shards[index]);
        match shard.remove(name) {
            Some(old) => {
                self.certificates -= old.certificates.len();
                self.hosts -= 1;
                true
            }
            None => false,
        }
    }

    /// The entries that can answer for `name`: the exact one, then the wildcard one label up.
    fn candidates<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a Arc<HostEntry>> + use<'a, 'n> {
        let exact = self.host(name);
        // Looked up only when the exact entry does not answer (most handshakes stop there).
        let wildcard = std::iter::once_with(move || wildcard_of(name).and_then(|w| self.host(&w)));
        exact.into_iter().chain(wildcard.flatten())
    }

    /// The certificate to present for `sni` to a client that accepts `schemes`, at `now`
    /// (unix seconds). `None`: refuse the handshake.
    pub fn certificate(
        &self,
        sni: &str,
        schemes: &[SignatureScheme],
        now: i64,
    ) -> Option<Arc<CertifiedKey>> {
        self.candidates(sni).find_map(|entry| {
            entry
                .certificates
                .iter()
                .filter(|c| c.valid_at(now))
                .find(|c| c.key.key.choose_scheme(schemes).is_some())
                .map(|c| c.key.clone())
        })
    }

    /// The certificate that would be served to a client accepting everything (for probes and
    /// the redirect decision).
    pub fn served(&self, name: &str, now: i64) -> Option<&ServedCertificate> {
        self.candidates(name)
            .find_map(|entry| entry.certificates.iter().find(|c| c.valid_at(now)))
    }

    /// The TLS-ALPN-01 validation certificate for exactly `sni`.
    pub fn alpn_challenge(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        self.host(sni).and_then(|e| e.alpn.clone())
    }

    /// The HTTP-01 answer for exactly `host` and `token`.
    pub fn http01(&self, host: &str, token: &str) -> Option<&str> {
        self.host(host)
            .and_then(|e| e.http01.get(token))
            .map(String::as_str)
    }

    /// Where requests for `host` go: the exact name's app, else the wildcard's.
    pub fn route(&self, host: &str) -> Option<&Arc<AppRoute>> {
        self.candidates(host).find_map(|e| e.app.as_ref())
    }

    /// Whether the edge serves HTTPS for `host` now (so plain HTTP is redirected to it).
    pub fn serves_https(&self, host: &str, now: i64) -> bool {
        self.served(host, now).is_some()
    }
}

/// `*.example.com` for `a.example.com`; `None` for a single label or a wildcard itself.
fn wildcard_of(name: &str) -> Option<String> {
    if name.starts_with("*.") {
        return None;
    }
    let (_, parent) = name.split_once('.')?;
    parent.contains('.').then(|| format!("*.{parent}"))
}

/// Why part of a host's state could not be used. The rest of the host is still served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    #[error("{hostname}: the {cert_source:?} {key_type} certificate's key does not open: {reason}")]
    Key {
        hostname: String,
        cert_source: CertSource,
        key_type: String,
        reason: String,
    },
    #[error("{hostname}: the {cert_source:?} {key_type} certificate is unusable: {reason}")]
    Certificate {
        hostname: String,
        cert_source: CertSource,
        key_type: String,
        reason: String,
    },
    #[error("{hostname}: cannot make the TLS-ALPN-01 certificate: {reason}")]
    Alpn { hostname: String, reason: String },
}

impl HostEntry {
    /// Builds an entry from the control plane's state for the host, opening each key with the
    /// stream's key. Unusable certificates are left out and reported; the rest is served.
    pub fn build(host: EdgeHost, key: &StreamKey) -> (Self, Vec<EntryError>) {
        let hostname: Arc<str> = Arc::from(host.hostname.as_str());
        let mut errors = Vec::new();
        let mut certificates: Vec<ServedCertificate> = host
            .certificates
            .iter()
            .filter_map(|c| match served_certificate(&host.hostname, c, key) {
                Ok(served) => Some(served),
                Err(e) => {
                    errors.push(e);
                    None
                }
            })
            .collect();
        certificates.sort_by_key(|c| (source_rank(c.source), key_rank(c.key_type)));
        let mut http01 = HashMap::new();
        let mut alpn = None;
        for challenge in host.challenges {
            match challenge {
                EdgeChallenge::Http01 {
                    token,
                    key_authorization,
                } => {
                    http01.insert(token, key_authorization);
                }
                EdgeChallenge::TlsAlpn01 { key_authorization } => {
                    match alpn_certificate(&host.hostname, &key_authorization) {
                        Ok(k) => alpn = Some(Arc::new(k)),
                        Err(reason) => errors.push(EntryError::Alpn {
                            hostname: host.hostname.clone(),
                            reason,
                        }),
                    }
                }
            }
        }
        let entry = Self {
            hostname,
            app: host
                .app
                .map(|a| Arc::new(AppRoute::new(a.name, a.backends))),
            certificates,
            http01,
            alpn,
            changed_at_ms: host.changed_at_ms,
        };
        (entry, errors)
    }
}

fn source_rank(source: CertSource) -> u8 {
    match source {
        CertSource::Custom => 0,
        CertSource::Acme => 1,
    }
}

fn key_rank(key_type: &str) -> u8 {
    if key_type == "ecdsa" { 0 } else { 1 }
}

fn served_certificate(
    hostname: &str,
    cert: &EdgeCertificate,
    key: &StreamKey,
) -> Result<ServedCertificate, EntryError> {
    let unusable = |reason: String| EntryError::Certificate {
        hostname: hostname.to_owned(),
        cert_source: cert.source,
        key_type: cert.key_type.clone(),
        reason,
    };
    let aad = EdgeCertificate::sealing_context(hostname, cert.source, &cert.key_type);
    let pem = key
        .open(&cert.key_sealed, &aad)
        .map_err(|e| EntryError::Key {
            hostname: hostname.to_owned(),
            cert_source: cert.source,
            key_type: cert.key_type.clone(),
            reason: e.to_string(),
        })?;
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| EntryError::Key {
        hostname: hostname.to_owned(),
        cert_source: cert.source,
        key_type: cert.key_type.clone(),
        reason: "not a PEM private key".into(),
    })?;
    let mut chain = CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(format!("bad PEM chain: {e:?}")))?;
    if chain.is_empty() {
        return Err(unusable("empty chain".into()));
    }
    // Intermediates are shared by many certificates (a CA's by all it issues): hold one copy.
    for issuer in chain.iter_mut().skip(1) {
        if let Some(shared) = intern(issuer.as_ref()) {
            *issuer = CertificateDer::from(shared);
        }
    }
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| unusable(format!("unsupported key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| unusable(format!("key does not match the certificate: {e}")))?;
    Ok(ServedCertificate {
        source: cert.source,
        key_type: match cert.key_type.as_str() {
            "ecdsa" => "ecdsa",
            "rsa" => "rsa",
            _ => "other",
        },
        key: Arc::new(certified),
        not_before: cert.not_before,
        not_after: cert.not_after,
    })
}

/// Distinct intermediates held once for the whole process. Bounded: past the limit (far more
/// CAs than exist; a flood of made-up chains in imports) certificates keep their own copies.
const INTERN_LIMIT: usize = 4096;

fn interned() -> &'static std::sync::Mutex<HashMap<[u8; 32], &'static [u8]>> {
    static INTERNED: std::sync::OnceLock<std::sync::Mutex<HashMap<[u8; 32], &'static [u8]>>> =
        std::sync::OnceLock::new();
    INTERNED.get_or_init(|| std::sync::Mutex::new(HashMap::new()))
}

/// The process's one copy of this certificate's DER (`None` past [`INTERN_LIMIT`]). The copies
/// live as long as the process, which the limit bounds.
fn intern(der: &[u8]) -> Option<&'static [u8]> {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut id = [0u8; 32];
    id.copy_from_slice(digest.as_ref());
    // A panic while holding the lock leaves a consistent map; keep using it.
    let mut map = interned()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(shared) = map.get(&id) {
        return Some(shared);
    }
    if map.len() >= INTERN_LIMIT {
        return None;
    }
    let shared: &'static [u8] = Box::leak(der.to_vec().into_boxed_slice());
    map.insert(id, shared);
    Some(shared)
}

/// RFC 8737: a self-signed certificate for the name with the critical acmeIdentifier
/// extension holding SHA-256(key authorization).
fn alpn_certificate(hostname: &str, key_authorization: &str) -> Result<CertifiedKey, String> {
    let digest = ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes());
    let mut params =
        rcgen::CertificateParams::new(vec![hostname.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let key_pair = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key_pair).map_err(|e| e.to_string())?;
    let private = PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&private).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> HostEntry {
        HostEntry {
            hostname: Arc::from(name),
            app: Some(Arc::new(AppRoute::new(name.to_owned(), Vec::new()))),
            certificates: Vec::new(),
            http01: HashMap::new(),
            alpn: None,
            changed_at_ms: 0,
        }
    }

    #[test]
    fn a_published_snapshot_never_changes_when_the_next_one_is_built() {
        let mut working = Snapshot::default();
        for i in 0..2000 {
            working.insert(entry(&format!("h{i}.example.com")));
        }
        let published = working.clone();
        working.remove("h1.example.com");
        working.insert(entry("new.example.com"));
        working.insert(entry("h2.example.com"));
        assert_eq!(published.len(), 2000);
        assert!(published.host("h1.example.com").is_some());
        assert!(published.host("new.example.com").is_none());
        assert_eq!(working.len(), 2000);
        assert!(working.host("h1.example.com").is_none());
        assert!(working.host("new.example.com").is_some());
        assert!(!working.remove("h1.example.com"), "removed once");
        // Only the changed shards were copied; the others are shared.
        let shared = published
            .shards
            .iter()
            .zip(&working.shards)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(shared >= SHARDS - 3, "{shared} of {SHARDS} shards shared");
        assert!(working.route("a.h5.example.com").is_none());
        assert!(working.route("h5.example.com").is_some());
    }

    #[test]
    fn hostnames_of_one_app_share_its_route() {
        let mut table = RouteTable::default();
        let (mut a, mut b, mut c) = (entry("a.x.test"), entry("b.x.test"), entry("c.x.test"));
        for e in [&mut a, &mut b] {
            e.app = Some(Arc::new(AppRoute::new(
                "web".into(),
                vec!["10.0.0.1:80".into()],
            )));
        }
        c.app = Some(Arc::new(AppRoute::new(
            "web".into(),
            vec!["10.0.0.2:80".into()],
        )));
        table.share(&mut a);
        table.share(&mut b);
        table.share(&mut c);
        let route = |e: &HostEntry| e.app.clone().expect("app");
        assert!(Arc::ptr_eq(&route(&a), &route(&b)));
        assert!(
            !Arc::ptr_eq(&route(&a), &route(&c)),
            "other backends, other route"
        );
        assert_eq!(route(&c).backends, vec!["10.0.0.2:80".to_owned()]);
    }

    #[test]
    fn intermediates_are_held_once() {
        let der = b"an intermediate's DER, for this test".to_vec();
        let a = intern(&der).expect("interned");
        let b = intern(&der.clone()).expect("interned");
        assert!(std::ptr::eq(a, b), "one copy");
        assert_eq!(a, der.as_slice());
        assert!(!std::ptr::eq(intern(b"another").expect("interned"), a));
    }

    #[test]
    fn wildcard_is_one_label_up_only() {
        assert_eq!(
            wildcard_of("a.example.com").as_deref(),
            Some("*.example.com")
        );
        assert_eq!(
            wildcard_of("b.a.example.com").as_deref(),
            Some("*.a.example.com")
        );
        assert_eq!(
            wildcard_of("example.com"),
            None,
            "no wildcard of a registrable name's TLD"
        );
        assert_eq!(wildcard_of("localhost"), None);
        assert_eq!(wildcard_of("*.example.com"), None);
    }

    #[test]
    fn alpn_certificate_carries_the_acme_identifier() {
        let k = alpn_certificate("a.example.com", "token.thumbprint").expect("made");
        let der = k.cert[0].as_ref();
        // id-pe-acmeIdentifier 1.3.6.1.5.5.7.1.31, DER-encoded OID body.
        let oid = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
        assert!(der.windows(oid.len()).any(|w| w == oid));
        let digest = ring::digest::digest(&ring::digest::SHA256, b"token.thumbprint");
        assert!(der.windows(32).any(|w| w == digest.as_ref()));
    }
}
