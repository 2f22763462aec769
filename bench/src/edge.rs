//! Pieces of the edge benchmarks: a test CA and its leaves, a data directory seeded directly in
//! the store (verified hostnames with their certificates, so edges serve them at once), the real
//! `certplane edge` as a child process, and a TLS 1.3 client that reads the leaf an edge serves.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use certplane_domain::{ApiToken, AppName, Hostname, Ipv6Prefix, OrgName};
use certplane_secrets::MasterKeys;
use certplane_store::{
    AppId, CertSource, CheckUpdate, NewCertificate, SqlStore, Store, sealing_context,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls_pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use crate::{certplane_binary, has_taskset};

/// The name of the CA the benchmarks' certificates chain to.
pub const CA_NAME: &str = "certplane bench CA";

/// A self-made ECDSA P-256 CA.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A leaf certificate for one hostname, with its own P-256 key.
#[derive(Clone)]
pub struct Leaf {
    pub der: Vec<u8>,
    /// The leaf, then the CA.
    pub chain_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    pub not_before: i64,
    pub not_after: i64,
    /// SHA-256 of the leaf's DER, lower-case hex (as the import computes it).
    pub fingerprint: String,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl TestCa {
    pub fn new() -> Result<Self, String> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, CA_NAME);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(2);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A fresh key and a leaf for `hostname`: SAN and CN the name, serverAuth, valid from a
    /// day ago for 90 days.
    pub fn leaf(&self, hostname: &str) -> Result<Leaf, String> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let mut params = CertificateParams::new(vec![hostname.to_owned()]).map_err(err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, hostname);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        let not_before = now - time::Duration::days(1);
        let not_after = now + time::Duration::days(90);
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        let der = cert.der().to_vec();
        Ok(Leaf {
            fingerprint: Sha256::digest(&der)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
            der,
            not_before: not_before.unix_timestamp(),
            not_after: not_after.unix_timestamp(),
        })
    }
}

/// A data directory seeded directly in the store: an admin token (in `<dir>/admin-token`), an
/// org with a token of its own, one app, and the data directory's master keys.
pub struct Seeded {
    pub dir: PathBuf,
    pub store: SqlStore,
    pub keys: MasterKeys,
    pub admin_token: String,
    pub org_token: String,
    pub app_name: String,
    pub app: AppId,
}

impl std::fmt::Debug for Seeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seeded")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Seeded {
    /// Creates the store under `dir` (which `serve` then uses as its data directory).
    pub async fn create(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(err)?;
        let url = format!("sqlite://{}", dir.join("certplane.db").display());
        let store = SqlStore::open(&url).await.map_err(err)?;
        let keys = MasterKeys::load_or_create(&dir.join("master-keys")).map_err(err)?;
        let admin = ApiToken::generate();
        store.bootstrap_admin(&admin.hash()).await.map_err(err)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("admin-token"))
            .map_err(err)?;
        std::io::Write::write_all(&mut file, format!("{}\n", admin.expose()).as_bytes())
            .map_err(err)?;
        let org_token = ApiToken::generate();
        let name = OrgName::parse("bench").map_err(err)?;
        let org = store
            .create_org(&name, &name.slug().map_err(err)?, &org_token.hash())
            .await
            .map_err(err)?;
        let prefix: Ipv6Prefix = "fdaa::/48".parse().map_err(|e| format!("{e:?}"))?;
        let app_name = AppName::parse("bench").map_err(err)?;
        let app = store
            .create_app(org.id, &app_name, &[], &prefix, None)
            .await
            .map_err(err)?;
        Ok(Self {
            dir: dir.to_owned(),
            store,
            keys,
            admin_token: admin.expose().to_owned(),
            org_token: org_token.expose().to_owned(),
            app_name: app_name.as_str().to_owned(),
            app: app.id,
        })
    }

    /// The certificate record for `leaf`, its key sealed with this data directory's master key.
    pub fn certificate(
        &self,
        hostname: &Hostname,
        source: CertSource,
        leaf: &Leaf,
    ) -> Result<NewCertificate, String> {
        let sealed = self
            .keys
            .seal(
                leaf.key_pem.as_bytes(),
                &sealing_context(hostname, source, "ecdsa"),
            )
            .map_err(err)?;
        Ok(NewCertificate {
            source,
            key_type: "ecdsa".into(),
            chain_pem: leaf.chain_pem.clone(),
            key_id: sealed.key_id,
            key_sealed: sealed.blob,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            issuer: CA_NAME.into(),
            fingerprint: leaf.fingerprint.clone(),
            warnings: "[]".into(),
        })
    }

    /// Adds `hostname` with `leaf` as its custom certificate and marks its ownership verified,
    /// so edges serve it.
    pub async fn add_verified(&self, hostname: &str, leaf: &Leaf) -> Result<(), String> {
        let name = Hostname::parse(hostname).map_err(err)?;
        let cert = self.certificate(&name, CertSource::Custom, leaf)?;
        self.store
            .import_custom(self.app, &name, &cert)
            .await
            .map_err(err)?;
        let now = crate::unix_now();
        let update = CheckUpdate {
            verified: true,
            configured: true,
            report: "{}".into(),
            checked_at: now,
            // Far off: the background checks are off anyway.
            next_check_at: now + 365 * 86_400,
            failures: 0,
        };
        let record = self
            .store
            .record_check(self.app, &name, &update)
            .await
            .map_err(err)?
            .ok_or_else(|| format!("{hostname} vanished"))?;
        if !record.ownership_verified {
            return Err(format!("{hostname} is not verified after record_check"));
        }
        Ok(())
    }

    /// Stores `leaf` as the hostname's ACME certificate.
    pub async fn add_acme(&self, hostname: &str, leaf: &Leaf) -> Result<(), String> {
        let name = Hostname::parse(hostname).map_err(err)?;
        let cert = self.certificate(&name, CertSource::Acme, leaf)?;
        self.store
            .store_acme_certificate(self.app, &name, &cert)
            .await
            .map_err(err)?
            .ok_or_else(|| format!("{hostname} is not held"))?;
        Ok(())
    }

    /// Closes the store, so `serve` is the only one writing.
    pub async fn close(&self) {
        self.store.close().await;
    }
}

/// A free address on 127.0.0.1 for a listener: bound and released, so the caller binds it
/// again at once. Taken below the ephemeral range (32768 and up on Linux) so that the many
/// client connections of a benchmark cannot be holding it by the time it is bound.
pub fn free_addr() -> Result<SocketAddr, String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + std::process::id() % 6_000;
    for _ in 0..6_000 {
        let port = 20_000 + (base - 20_000 + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if let Ok(addr) = TcpListener::bind(("127.0.0.1", port)).and_then(|l| l.local_addr()) {
            return Ok(addr);
        }
    }
    Err("no free port between 20000 and 32000 on 127.0.0.1".into())
}

/// A process's resident set (VmRSS) in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Pins every thread of this process to `cpu` (threads started later inherit it).
pub fn pin_self(cpu: u32) -> bool {
    has_taskset()
        && Command::new("taskset")
            .args([
                "-a",
                "-p",
                "-c",
                &cpu.to_string(),
                &std::process::id().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// A `certplane edge` process, killed on drop. Its log (warnings and up) goes to a file.
#[derive(Debug)]
pub struct Edge {
    child: Child,
    pub id: String,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
    /// When the process was started.
    pub started: std::time::Instant,
}

/// How to start an edge.
#[derive(Clone, Debug)]
pub struct EdgeSpec<'a> {
    pub control_plane: &'a str,
    pub token: &'a str,
    pub id: &'a str,
    /// Pinned with `taskset -c` when `Some`.
    pub cpu: Option<u32>,
    /// Session tickets and cache (`CERTPLANE_EDGE_TLS_RESUMPTION`).
    pub resumption: bool,
    pub log_dir: &'a Path,
}

impl Edge {
    pub fn start(spec: &EdgeSpec<'_>) -> Result<Self, String> {
        let bin = certplane_binary()?;
        let https = free_addr()?;
        let http = free_addr()?;
        let admin = free_addr()?;
        let log = spec.log_dir.join(format!("{}.log", spec.id));
        let log_file = std::fs::File::create(&log).map_err(err)?;
        let mut cmd = match spec.cpu {
            Some(cpu) if has_taskset() => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(&bin);
                c
            }
            _ => Command::new(&bin),
        };
        cmd.arg("edge")
            .arg("--control-plane")
            .arg(spec.control_plane)
            .arg("--id")
            .arg(spec.id)
            .env("CERTPLANE_TOKEN", spec.token)
            .env("CERTPLANE_EDGE_HTTPS_LISTEN", https.to_string())
            .env("CERTPLANE_EDGE_HTTP_LISTEN", http.to_string())
            .env("CERTPLANE_EDGE_ADMIN_LISTEN", admin.to_string())
            .env(
                "CERTPLANE_EDGE_TLS_RESUMPTION",
                if spec.resumption { "true" } else { "false" },
            )
            .env("CERTPLANE_DNS_NAMESERVERS", "127.0.0.1:9")
            .env("CERTPLANE_DNS_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        let started = std::time::Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        Ok(Self {
            child,
            id: spec.id.to_owned(),
            https,
            admin,
            log,
            started,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error when the process has exited, with the end of its log.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "edge {} exited ({status}): {}",
                self.id,
                self.log_tail()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// `/healthz`'s revision, `None` while it does not answer.
    pub async fn revision(&self, client: &reqwest::Client) -> Option<i64> {
        let text = client
            .get(format!("http://{}/healthz", self.admin))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.trim().strip_prefix("ok revision ")?.parse().ok()
    }

    /// `/metrics` as text.
    pub async fn metrics(&self, client: &reqwest::Client) -> Option<String> {
        client
            .get(format!("http://{}/metrics", self.admin))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    /// A counter or gauge from `/metrics` (the line of exactly `series`).
    pub async fn metric(&self, client: &reqwest::Client, series: &str) -> Option<f64> {
        metric_value(&self.metrics(client).await?, series)
    }
}

/// The value of `series` (name and labels, exactly) in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The probes' and load's crypto: ring with X25519 as the only key exchange (the edge's own
/// provider is ring too).
pub fn x25519_provider() -> Arc<rustls::crypto::CryptoProvider> {
    // Deprecated only for lacking ML-KEM, which is left out on purpose here.
    #[allow(deprecated)]
    Arc::new(rustls::crypto::CryptoProvider {
        kx_groups: vec![rustls::crypto::ring::kx_group::X25519],
        ..rustls::crypto::ring::default_provider()
    })
}

/// A TLS 1.3-only, X25519-only client that trusts `ca` alone and never resumes.
pub fn verifying_client(ca: &CertificateDer<'static>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(err)?;
    let mut config = ClientConfig::builder_with_provider(x25519_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// One full handshake with `addr` for `name`; the leaf the server presented (DER).
pub async fn served_leaf(
    addr: SocketAddr,
    name: &str,
    config: &Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let server_name = ServerName::try_from(name.to_owned()).map_err(err)?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let attempt = async {
        let tcp = TcpStream::connect(addr).await.map_err(err)?;
        let _ = tcp.set_nodelay(true);
        let tls = connector.connect(server_name, tcp).await.map_err(err)?;
        let (_, conn) = tls.get_ref();
        conn.peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .ok_or_else(|| "no certificate presented".to_owned())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("handshake for {name} timed out"))?
}
