//! Pebble (Debian package `pebble`, 2.4.0): a small ACME CA for tests.
//!
//! [`Pebble::start`] makes a throwaway test CA and a `localhost` leaf with the `openssl`
//! command-line tool (Pebble ships no certificates), writes a config, runs
//! `pebble -config cfg.json -dnsserver <dns> -strict=false` on loopback ports of its own and
//! waits until its directory answers over HTTPS. Pebble's output goes to a log file in its
//! temporary directory ([`Pebble::log`]); the process is killed on drop.
//!
//! Two CAs are involved: [`Pebble::ca_pem`] signed the HTTPS certificate Pebble serves (trust it
//! in the ACME client), while the certificates Pebble issues chain to a root it generates at
//! every start ([`Pebble::issuing_roots_pem`]).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::dns::free_port;

/// How long [`Pebble::start`] waits for Pebble to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How [`Pebble::start`] configures Pebble.
#[derive(Clone, Debug)]
pub struct PebbleOptions {
    /// The one DNS server Pebble's validator asks (`-dnsserver`).
    pub dns_server: SocketAddr,
    /// The port Pebble connects to for HTTP-01 (`httpPort`).
    pub http_port: u16,
    /// The port Pebble connects to for TLS-ALPN-01 (`tlsPort`).
    pub tls_port: u16,
    /// Lifetime of issued certificates (`certificateValidityPeriod`); Pebble's default (5 years)
    /// when `None`.
    pub validity_seconds: Option<u64>,
    /// Percentage of good nonces Pebble rejects with `badNonce` (`PEBBLE_WFE_NONCEREJECT`).
    pub nonce_reject_percent: u8,
    /// Percentage of authorizations Pebble reuses (`PEBBLE_AUTHZREUSE`); Pebble's default when
    /// `None`.
    pub authz_reuse_percent: Option<u8>,
    /// Require external account binding with this `(key id, base64url HMAC key)`.
    pub eab: Option<(String, String)>,
}

impl PebbleOptions {
    /// Options with no nonce rejections, Pebble's default validity and authorization reuse.
    pub fn new(dns_server: SocketAddr, http_port: u16, tls_port: u16) -> Self {
        Self {
            dns_server,
            http_port,
            tls_port,
            validity_seconds: None,
            nonce_reject_percent: 0,
            authz_reuse_percent: None,
            eab: None,
        }
    }
}

/// A running Pebble, killed on drop.
#[derive(Debug)]
pub struct Pebble {
    child: Child,
    listen: SocketAddr,
    management: SocketAddr,
    ca_pem: String,
    log_path: PathBuf,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Pebble {
    /// Starts Pebble with a fresh test CA; panics (with Pebble's log) if it does not answer
    /// within 20 seconds.
    pub fn start(options: PebbleOptions) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_pem, cert_path, key_path) = make_certificates(dir.path());
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let management = SocketAddr::from(([127, 0, 0, 1], free_port()));

        let mut pebble = serde_json::json!({
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": cert_path,
            "privateKey": key_path,
            "httpPort": options.http_port,
            "tlsPort": options.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(seconds) = options.validity_seconds {
            pebble["certificateValidityPeriod"] = seconds.into();
        }
        if let Some((kid, key)) = &options.eab {
            pebble["externalAccountBindingRequired"] = true.into();
            pebble["externalAccountMACKeys"] = serde_json::json!({ kid.as_str(): key });
        }
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&serde_json::json!({ "pebble": pebble }))
                .expect("config JSON"),
        )
        .expect("write Pebble config");

        let log_path = dir.path().join("pebble.log");
        let log = File::create(&log_path).expect("Pebble log file");
        let log_err = log.try_clone().expect("Pebble log file");
        let mut command = Command::new("pebble");
        // Only the variables set below: no PEBBLE_* knob leaks in from the caller's environment.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PEBBLE_") {
                command.env_remove(name);
            }
        }
        command
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &options.dns_server.to_string()])
            .arg("-strict=false")
            .current_dir(dir.path())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env(
                "PEBBLE_WFE_NONCEREJECT",
                options.nonce_reject_percent.to_string(),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if let Some(percent) = options.authz_reuse_percent {
            command.env("PEBBLE_AUTHZREUSE", percent.to_string());
        }
        let child = command
            .spawn()
            .expect("pebble runs (Debian package `pebble`; the test command installs it)");

        let http = https_client(&ca_pem);
        let mut this = Self {
            child,
            listen,
            management,
            ca_pem,
            log_path,
            http,
            _dir: dir,
        };
        this.wait_ready();
        this
    }

    /// Polls the directory and the management interface over HTTPS until both answer. The
    /// polling runs on a thread with a runtime of its own, since `start` may be called from
    /// inside a Tokio runtime (where blocking on another runtime is not allowed).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let stop = AtomicBool::new(false);
        let urls = [self.directory_url(), self.roots_url()];
        let http = self.http.clone();
        let outcome = std::thread::scope(|scope| {
            let poller = scope.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(async {
                    let mut last = String::from("no answer yet");
                    for url in &urls {
                        loop {
                            if stop.load(Ordering::Relaxed) {
                                return Err(last);
                            }
                            let attempt =
                                http.get(url).timeout(Duration::from_secs(2)).send().await;
                            match attempt {
                                Ok(resp) if resp.status().is_success() => break,
                                Ok(resp) => last = format!("{url}: HTTP {}", resp.status()),
                                Err(e) => last = format!("{url}: {e}"),
                            }
                            if Instant::now() >= deadline {
                                return Err(last);
                            }
                            tokio::time::sleep(Duration::from_millis(25)).await;
                        }
                    }
                    Ok(())
                })
            });
            loop {
                if poller.is_finished() {
                    return poller.join().expect("readiness poller");
                }
                if let Ok(Some(status)) = self.child.try_wait() {
                    stop.store(true, Ordering::Relaxed);
                    let _ = poller.join();
                    return Err(format!("pebble exited with {status}"));
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        if let Err(why) = outcome {
            panic!(
                "Pebble did not answer within {START_TIMEOUT:?} ({why}); its log:\n{}",
                self.log()
            );
        }
    }

    /// The ACME directory: `https://127.0.0.1:P/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.listen)
    }

    /// The management interface: `https://127.0.0.1:M` (same HTTPS certificate as the ACME
    /// server).
    pub fn management_url(&self) -> String {
        format!("https://{}", self.management)
    }

    fn roots_url(&self) -> String {
        format!("{}/roots/0", self.management_url())
    }

    /// PEM of the test CA that signed Pebble's own HTTPS certificate (for `localhost` and
    /// `127.0.0.1`): what an ACME client must trust to talk to Pebble.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// PEM of the root Pebble signs issued certificates under (through an intermediate), from
    /// the management interface; a new one at every start.
    pub async fn issuing_roots_pem(&self) -> String {
        self.management_get("roots/0").await
    }

    /// PEM of the intermediate that signs issued certificates; a new one at every start.
    pub async fn issuing_intermediate_pem(&self) -> String {
        self.management_get("intermediates/0").await
    }

    async fn management_get(&self, path: &str) -> String {
        let url = format!("{}/{path}", self.management_url());
        let resp = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("Pebble management {url} answers: {e}"));
        assert!(
            resp.status().is_success(),
            "Pebble management {url}: {}",
            resp.status()
        );
        resp.text().await.expect("Pebble management body")
    }

    /// Everything Pebble printed so far (stdout and stderr). Each request logs
    /// `POST /order-plz -> calling handler()` (new order), `There are now N orders in the db`
    /// follows each order created and `Issued certificate serial S for order O` each issuance
    /// (line formats from the Pebble 2.4.0 binary).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reqwest client that trusts only `ca_pem`, with no proxy.
fn https_client(ca_pem: &str) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("test CA PEM");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .no_proxy()
        .build()
        .expect("HTTPS client")
}

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = certplane Pebble test CA

[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[leaf_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// A test CA and a `localhost` leaf it signed (ECDSA P-256), in `dir`. Returns the CA's PEM and
/// the paths of the leaf and its key.
fn make_certificates(dir: &Path) -> (String, PathBuf, PathBuf) {
    let config = dir.join("openssl.cnf");
    std::fs::write(&config, OPENSSL_CONFIG).expect("openssl.cnf");
    let ca_key = dir.join("ca.key");
    let ca_cert = dir.join("ca.pem");
    let csr = dir.join("leaf.csr");
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

    openssl(
        Command::new("openssl")
            .args(["req", "-x509", "-noenc", "-sha256", "-days", "3650"])
            .args(p256)
            .args(["-subj", "/CN=certplane Pebble test CA"])
            .args(["-extensions", "ca_ext", "-config"])
            .arg(&config)
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca_cert),
    );
    openssl(
        Command::new("openssl")
            .args(["req", "-new", "-noenc"])
            .args(p256)
            .args(["-subj", "/CN=localhost", "-config"])
            .arg(&config)
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    );
    openssl(
        Command::new("openssl")
            .args(["x509", "-req", "-sha256", "-days", "30", "-set_serial"])
            .arg(random_serial())
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&ca_cert)
            .arg("-CAkey")
            .arg(&ca_key)
            .args(["-extensions", "leaf_ext", "-extfile"])
            .arg(&config)
            .arg("-out")
            .arg(&cert),
    );
    let ca_pem = std::fs::read_to_string(&ca_cert).expect("read CA PEM");
    (ca_pem, cert, key)
}

/// A positive serial number in `0x…` form, unique enough for throwaway leaves.
fn random_serial() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("0x{:x}{:08x}", nanos, std::process::id())
}

/// Runs an openssl command; panics with its stderr if it fails.
fn openssl(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("openssl runs ({e}); it is /usr/bin/openssl: {cmd:?}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pebble_serves_its_directory_and_issuing_root() {
        // Nothing answers DNS on port 9: enough for a check that makes no validations.
        let dns: SocketAddr = "127.0.0.1:9".parse().expect("address");
        let pebble = Pebble::start(PebbleOptions::new(dns, free_port(), free_port()));
        assert!(pebble.directory_url().starts_with("https://127.0.0.1:"));

        let client = https_client(&pebble.ca_pem());
        let directory: serde_json::Value = client
            .get(pebble.directory_url())
            .send()
            .await
            .expect("directory answers")
            .error_for_status()
            .expect("directory status")
            .json()
            .await
            .expect("directory JSON");
        for key in ["newAccount", "newOrder", "newNonce"] {
            let url = directory[key].as_str().unwrap_or_else(|| {
                panic!("directory has {key}: {directory}");
            });
            assert!(url.starts_with("https://127.0.0.1:"), "{key}: {url}");
        }

        let root = pebble.issuing_roots_pem().await;
        assert!(
            root.trim_start().starts_with("-----BEGIN CERTIFICATE-----"),
            "issuing root is a PEM certificate: {root}"
        );
        assert!(root.trim_end().ends_with("-----END CERTIFICATE-----"));
        assert!(reqwest::Certificate::from_pem(root.as_bytes()).is_ok());
        // Pebble's issuing root is not the test CA that signed its HTTPS certificate.
        assert_ne!(root.trim(), pebble.ca_pem().trim());

        let intermediate = pebble.issuing_intermediate_pem().await;
        assert!(intermediate.contains("-----BEGIN CERTIFICATE-----"));
    }

    #[tokio::test]
    async fn options_reach_pebble() {
        let dns: SocketAddr = "127.0.0.1:9".parse().expect("address");
        let mut options = PebbleOptions::new(dns, free_port(), free_port());
        options.validity_seconds = Some(3600);
        options.nonce_reject_percent = 100;
        options.authz_reuse_percent = Some(0);
        let pebble = Pebble::start(options);
        let log = pebble.log();
        for line in [
            "Using certificate validity period of 3600 seconds",
            "Using custom DNS resolver for ACME challenges: 127.0.0.1:9",
            "Disabling random VA sleeps",
            "Configured to reject 100% of good nonces",
            "Configured to attempt authz reuse for each identifier 0% of the time",
        ] {
            assert!(log.contains(line), "Pebble logs {line:?}:\n{log}");
        }
    }

    #[test]
    fn start_works_outside_a_runtime() {
        let dns: SocketAddr = "127.0.0.1:9".parse().expect("address");
        let pebble = Pebble::start(PebbleOptions::new(dns, free_port(), free_port()));
        assert!(pebble.log().contains("Listening on"), "{}", pebble.log());
    }
}
