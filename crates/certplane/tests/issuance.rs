//! ACME issuance and renewal end to end: the real `certplane serve` (API, issuer, edge,
//! challenge DNS server) against real Pebble, with the customers' DNS on pebble-challtestsrv
//! and a real recursive resolver (unbound) in front of both it and the platform's DNS server,
//! as Pebble asks one resolver. Certificates are checked with TLS handshakes that trust only
//! Pebble's issuing root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use certplane_test_support::dns::{ChallTestSrv, Unbound, free_port};
use certplane_test_support::pebble::{Pebble, PebbleOptions};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_certplane");
const ZONE: &str = "acme.plat.test";
const APP: &str = "web";

/// Pebble, the customers' DNS, the resolver Pebble asks, and one `certplane serve` whose edge
/// Pebble validates against.
struct World {
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    dns: ChallTestSrv,
    _unbound: Unbound,
    pebble: Pebble,
    platform_dns: SocketAddr,
    https: SocketAddr,
    http: SocketAddr,
    api: SocketAddr,
    serve: Option<Child>,
    extra_env: Vec<(String, String)>,
    token: String,
    /// The app's ownership TXT value and token.
    ownership_value: String,
    app_token: String,
}

struct Setup {
    validity_seconds: Option<u64>,
    nonce_reject_percent: u8,
    customer_zones: &'static [&'static str],
    extra_env: Vec<(&'static str, String)>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            validity_seconds: None,
            nonce_reject_percent: 0,
            customer_zones: &["example.com", "example.org"],
            extra_env: Vec::new(),
        }
    }
}

impl World {
    fn start(setup: Setup) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dns = rt.block_on(async { ChallTestSrv::start() });
        let platform_dns = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut stubs: Vec<(&str, SocketAddr)> =
            setup.customer_zones.iter().map(|z| (*z, dns.dns)).collect();
        stubs.push((ZONE, platform_dns));
        let unbound = Unbound::start(&stubs);
        let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut options = PebbleOptions::new(unbound.dns, http.port(), https.port());
        options.validity_seconds = setup.validity_seconds;
        options.nonce_reject_percent = setup.nonce_reject_percent;
        options.authz_reuse_percent = Some(0);
        let pebble = Pebble::start(options);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pebble-ca.pem"), pebble.ca_pem()).expect("ca file");
        let mut world = Self {
            dir,
            rt,
            dns,
            _unbound: unbound,
            pebble,
            platform_dns,
            https,
            http,
            api: SocketAddr::from(([127, 0, 0, 1], free_port())),
            serve: None,
            extra_env: setup
                .extra_env
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            token: String::new(),
            ownership_value: String::new(),
            app_token: String::new(),
        };
        world.start_serve();
        world.token = std::fs::read_to_string(world.dir.path().join("data/admin-token"))
            .expect("admin token")
            .trim()
            .to_owned();
        let app = world.json(&["apps", "create", APP, "--backend", "127.0.0.1:9"]);
        world.ownership_value = app["ownership_value"].as_str().expect("value").to_owned();
        world.app_token = world
            .ownership_value
            .strip_prefix("app-")
            .expect("app- prefix")
            .to_owned();
        world
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("CERTPLANE_API_LISTEN", self.api.to_string()),
            ("CERTPLANE_EDGE_HTTPS_LISTEN", self.https.to_string()),
            ("CERTPLANE_EDGE_HTTP_LISTEN", self.http.to_string()),
            (
                "CERTPLANE_EDGE_ADMIN_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            ),
            ("CERTPLANE_DNS_LISTEN", self.platform_dns.to_string()),
            ("CERTPLANE_DNS_NAMESERVERS", self.dns.dns.to_string()),
            ("CERTPLANE_DNS_PROXY_RANGES", "testcdn=127.0.0.2/32".into()),
            ("CERTPLANE_PLATFORM_SHARED_IPV4", "127.0.0.1".into()),
            ("CERTPLANE_PLATFORM_APPS_DOMAIN", "apps.plat.test".into()),
            ("CERTPLANE_PLATFORM_CHALLENGE_ZONE", ZONE.into()),
            ("CERTPLANE_ACME_DIRECTORY_URL", self.pebble.directory_url()),
            (
                "CERTPLANE_ACME_CA_ROOT_FILE",
                self.dir.path().join("pebble-ca.pem").display().to_string(),
            ),
            (
                "CERTPLANE_ACME_CAA_IDENTITIES",
                "pebble.letsencrypt.org".into(),
            ),
            ("CERTPLANE_ACME_CONTACT", "mailto:ops@plat.test".into()),
            ("RUST_LOG", "warn,certplane_acme=info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(self.extra_env.iter().cloned());
        env
    }

    fn start_serve(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .expect("log file");
        let mut child = Command::new(BIN)
            .arg("serve")
            .current_dir(self.dir.path())
            .envs(self.env())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("certplane serve starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(self.api).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("serve exited: {status}\n{}", self.serve_log());
            }
            assert!(Instant::now() < deadline, "serve does not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.serve = Some(child);
    }

    fn kill_serve(&mut self) {
        if let Some(mut child) = self.serve.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn serve_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("CERTPLANE_API_URL", format!("http://{}", self.api))
            .env("CERTPLANE_TOKEN", &self.token)
            .stdin(Stdio::null())
            .output()
            .expect("cli runs")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let output = self.cli(&all);
        assert!(
            output.status.success(),
            "certplane {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON")
    }

    fn show(&self, host: &str) -> Value {
        self.json(&["certs", "show", host, "-a", APP])
    }

    fn add(&self, host: &str) {
        self.json(&["certs", "add", host, "-a", APP]);
    }

    fn check(&self, host: &str) -> Value {
        self.json(&["certs", "check", host, "-a", APP])
    }

    /// The customer's records: ownership TXT at the base name, and what else the case needs.
    fn prove(&self, host: &str) {
        let base = host.trim_start_matches("*.");
        self.rt.block_on(self.dns.add_txt(
            &format!("_certplane-ownership.{base}"),
            &self.ownership_value,
        ));
    }

    fn point(&self, host: &str, address: &str) {
        self.rt.block_on(async {
            self.dns.clear("a", host).await;
            self.dns.add_a(host, &[address]).await;
        });
    }

    fn delegate(&self, host: &str) {
        let base = host.trim_start_matches("*.");
        self.rt.block_on(self.dns.set_cname(
            &format!("_acme-challenge.{base}"),
            &format!("{base}.{}.{ZONE}", self.app_token),
        ));
    }

    /// The customer's whole setup for a name pointed at `address`: A record, ownership TXT,
    /// `certs add`, `certs check`.
    fn request(&self, host: &str, address: &str) {
        self.point(host, address);
        self.prove(host);
        self.add(host);
        self.check(host);
    }

    /// Waits until the hostname's detail satisfies `done` (or `timeout`), then returns it.
    fn wait_detail(&self, host: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let detail = self.show(host);
            if done(&detail) {
                return detail;
            }
            assert!(
                Instant::now() < deadline,
                "{host} not as expected in time: {detail:#}\n{}",
                self.serve_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the hostname has both certificates (or `timeout`), then returns its detail.
    fn wait_issued(&self, host: &str, timeout: Duration) -> Value {
        self.wait_detail(host, timeout, |detail| {
            issued_types(detail) == ["ecdsa", "rsa"] && detail["status"] == "active"
        })
    }

    /// The SQLite database of `serve`.
    fn database_url(&self) -> String {
        format!(
            "sqlite://{}",
            self.dir.path().join("data/certplane.db").display()
        )
    }

    /// The platform's stored ACME account at Pebble.
    fn stored_account(&self) -> certplane_store::AcmeAccountRecord {
        self.rt.block_on(async {
            use certplane_store::Store as _;
            let store = certplane_store::SqlStore::open(&self.database_url())
                .await
                .expect("store");
            let record = store
                .acme_account(&self.pebble.directory_url())
                .await
                .expect("read")
                .expect("stored");
            store.close().await;
            record
        })
    }

    /// A client that trusts only Pebble's issuing root.
    fn roots(&self) -> Arc<rustls::RootCertStore> {
        let pem = self.rt.block_on(self.pebble.issuing_roots_pem());
        let mut roots = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject as _;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.expect("PEM")).expect("root");
        }
        Arc::new(roots)
    }

    fn new_orders_at_pebble(&self) -> usize {
        self.pebble.log().matches("POST /order-plz").count()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill_serve();
    }
}

fn issued_types(detail: &Value) -> Vec<String> {
    let mut types: Vec<String> = detail["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["source"] == "acme")
        .flat_map(|c| c["issued"].as_array().cloned().unwrap_or_default())
        .filter_map(|i| i["type"].as_str().map(str::to_owned))
        .collect();
    types.sort();
    types
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Offer {
    Ecdsa,
    Rsa,
}

fn provider(offer: Offer) -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    let keep = |s: &rustls::SignatureScheme| {
        let name = format!("{s:?}");
        match offer {
            Offer::Ecdsa => name.starts_with("ECDSA"),
            Offer::Rsa => name.starts_with("RSA"),
        }
    };
    let mapping: Vec<_> = provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .filter(|(s, _)| keep(s))
        .cloned()
        .collect();
    provider.signature_verification_algorithms.mapping = Box::leak(mapping.into_boxed_slice());
    Arc::new(provider)
}

/// One full handshake with `addr` for `sni`, verifying against `roots`: the leaf's DER.
fn handshake(
    addr: SocketAddr,
    sni: &str,
    roots: &Arc<rustls::RootCertStore>,
    offer: Offer,
) -> Result<Vec<u8>, String> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider(offer))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?
        .as_ref()
        .to_vec();
    Ok(leaf)
}

fn sha256_hex(der: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn leaf_fingerprints(detail: &Value) -> BTreeSet<String> {
    detail["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["source"] == "acme")
        .flat_map(|c| c["issued"].as_array().cloned().unwrap_or_default())
        .filter_map(|i| {
            i["fingerprint"]
                .as_str()
                .map(|f| f.replace(':', "").to_lowercase())
        })
        .collect()
}

/// A TCP relay from `listen` to `to`: a CDN in front of the platform that forwards plain HTTP
/// only. Stops with the test process.
fn relay(listen: SocketAddr, to: SocketAddr) {
    let listener = TcpListener::bind(listen).expect("relay bind");
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(upstream) = TcpStream::connect(to) else {
                continue;
            };
            let (mut c2, mut u2) = (
                client.try_clone().expect("clone"),
                upstream.try_clone().expect("clone"),
            );
            let (mut c1, mut u1) = (client, upstream);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut u1);
                let _ = u1.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
        }
    });
}

/// TLS-ALPN-01 (name straight at the platform), HTTP-01 (behind a CDN that forwards only
/// HTTP), DNS-01 (delegated to the platform's DNS server through unbound), and a wildcard with
/// its apex validating at one name at once: each gets an ECDSA and an RSA certificate that the
/// edge serves to clients trusting only Pebble's root.
#[test]
fn each_challenge_type_issues_a_pair_that_the_edge_serves() {
    let world = World::start(Setup::default());
    // Straight at the platform.
    world.point("alpn.example.com", "127.0.0.1");
    world.prove("alpn.example.com");
    // Behind a CDN (a known proxy range) that forwards plain HTTP to the edge only.
    relay(
        SocketAddr::from(([127, 0, 0, 2], world.http.port())),
        world.http,
    );
    world.point("cdn.example.com", "127.0.0.2");
    world.prove("cdn.example.com");
    // Not pointed anywhere yet, but delegated: DNS-01.
    world.prove("dns.example.com");
    world.delegate("dns.example.com");
    // A wildcard and its apex: DNS-01 both, at the same challenge name.
    world.prove("example.org");
    world.delegate("example.org");

    let hosts = [
        ("alpn.example.com", "tls-alpn-01"),
        ("cdn.example.com", "http-01"),
        ("dns.example.com", "dns-01"),
        ("example.org", "dns-01"),
        ("*.example.org", "dns-01"),
    ];
    for (host, _) in hosts {
        world.add(host);
        let checked = world.check(host);
        assert_eq!(
            checked["validation"]["ownership_verified"], true,
            "{host}: {checked:#}"
        );
    }
    let roots = world.roots();
    for (host, challenge) in hosts {
        let detail = world.wait_issued(host, Duration::from_secs(90));
        assert_eq!(
            detail["acme_order"]["challenge"], challenge,
            "{host}: {detail:#}"
        );
        assert_eq!(detail["acme_order"]["state"], "done", "{detail:#}");
        assert_eq!(
            detail["certificate_authority"],
            world.pebble.directory_url().as_str()
        );
        assert_eq!(detail["served"], "acme");
        let fingerprints = leaf_fingerprints(&detail);
        let sni = if host.starts_with("*.") {
            "any.example.org".to_owned()
        } else {
            host.to_owned()
        };
        for offer in [Offer::Ecdsa, Offer::Rsa] {
            let leaf = handshake(world.https, &sni, &roots, offer)
                .unwrap_or_else(|e| panic!("{sni} {offer:?}: {e}"));
            assert!(
                fingerprints.contains(&sha256_hex(&leaf)),
                "{sni} {offer:?}: the edge serves the issued certificate"
            );
        }
    }
    // The answers are withdrawn after the orders: nothing left in the challenge zone.
    let target = format!("example.org.{}.{ZONE}", world.app_token);
    // (The server reloads from the store every 250 ms.)
    let deadline = Instant::now() + Duration::from_secs(3);
    while txt_count(world.platform_dns, &target) != 0 {
        assert!(Instant::now() < deadline, "DNS-01 values withdrawn");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asks `server` for TXT at `name`: the answer count.
fn txt_count(server: SocketAddr, name: &str) -> u16 {
    let mut q = vec![0x12, 0x34, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 16, 0, 1]);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    for _ in 0..20 {
        socket.send_to(&q, server).expect("send");
        if let Ok(len) = socket.recv(&mut buf) {
            assert!(len >= 12);
            return u16::from_be_bytes([buf[6], buf[7]]);
        }
    }
    panic!("no DNS answer from {server}");
}

/// Pebble rejecting 30% of nonces and never reusing authorizations: issuance still completes.
#[test]
fn issuance_survives_nonce_rejections_without_authorization_reuse() {
    let world = World::start(Setup {
        nonce_reject_percent: 30,
        ..Setup::default()
    });
    let hosts = ["n1.example.com", "n2.example.com", "n3.example.com"];
    for host in hosts {
        world.request(host, "127.0.0.1");
    }
    for host in hosts {
        world.wait_issued(host, Duration::from_secs(120));
    }
    // Pebble ran with the rejections (its start-up line; it logs no line per rejection), and the
    // retried requests made no extra orders: one order per hostname and key type, all done.
    let log = world.pebble.log();
    assert!(
        log.contains("Configured to reject 30% of good nonces"),
        "{log}"
    );
    let hosts: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
    let rows = world
        .rt
        .block_on(orders_in_store(&world.database_url(), &hosts));
    // (A new-order refused every time instant-acme retried leaves a row without a URL, dead.)
    let urls: BTreeSet<&str> = rows.iter().filter_map(|r| r.2.as_deref()).collect();
    assert_eq!(urls.len(), 6, "{rows:#?}");
    assert!(
        rows.iter().all(|r| if r.2.is_some() {
            r.3 == "done"
        } else {
            r.3 == "dead"
        }),
        "{rows:#?}"
    );
}

/// `certplane serve` killed (SIGKILL) while issuing 20 hostnames and started again: all 20
/// get their pair, and every order Pebble created is one the store knows (none lost, none
/// made twice), at most one live order per hostname and key type.
#[test]
fn a_control_plane_killed_mid_issuance_resumes_without_duplicate_orders() {
    let mut world = World::start(Setup {
        extra_env: vec![("CERTPLANE_ACME_LEASE_SECONDS", "5".into())],
        ..Setup::default()
    });
    let hosts: Vec<String> = (0..20).map(|i| format!("k{i}.example.com")).collect();
    for host in &hosts {
        world.point(host, "127.0.0.1");
        world.prove(host);
        world.add(host);
    }
    for host in &hosts {
        world.check(host);
    }
    // Kill it mid-way: some orders made, not all.
    let deadline = Instant::now() + Duration::from_secs(60);
    while world.new_orders_at_pebble() < 12 {
        assert!(
            Instant::now() < deadline,
            "no orders: {}",
            world.serve_log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    world.kill_serve();
    let at_kill = world.new_orders_at_pebble();
    assert!(
        at_kill < 40,
        "killed before everything was ordered ({at_kill})"
    );
    world.start_serve();
    for host in &hosts {
        world.wait_issued(host, Duration::from_secs(120));
    }
    // Every order Pebble created is in the store; one per hostname and key type unless dead.
    let rows = world
        .rt
        .block_on(orders_in_store(&world.database_url(), &hosts));
    let at_pebble = world.new_orders_at_pebble();
    let known = rows.iter().filter(|r| r.2.is_some()).count();
    assert_eq!(
        at_pebble, known,
        "orders at Pebble vs in the store: {rows:#?}"
    );
    let mut live: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (host, key_type, _, state, _) in &rows {
        if state != "dead" {
            *live.entry((host.clone(), key_type.clone())).or_default() += 1;
        }
    }
    assert_eq!(live.len(), 40, "{live:?}");
    assert!(live.values().all(|n| *n == 1), "{live:?}");
}

/// (hostname, key type, order URL, state, problem) of every stored order of `hosts`.
#[allow(clippy::type_complexity)]
async fn orders_in_store(
    url: &str,
    hosts: &[String],
) -> Vec<(String, String, Option<String>, String, Option<String>)> {
    use certplane_store::Store as _;
    let store = certplane_store::SqlStore::open(url).await.expect("store");
    let mut rows = Vec::new();
    for host in hosts {
        let host = certplane_domain::Hostname::parse(host).expect("host");
        for o in store.acme_orders(&host, 100).await.expect("orders") {
            rows.push((
                o.hostname.to_string(),
                o.key_type,
                o.order_url,
                o.state.as_str().to_owned(),
                o.problem,
            ));
        }
    }
    store.close().await;
    rows
}

/// Records pointed elsewhere: validation fails with a code saying what to fix, issuance backs
/// off (no new order by itself), and after the fix a check issues at once.
#[test]
fn a_failed_validation_backs_off_until_the_records_are_fixed_and_checked() {
    let world = World::start(Setup::default());
    let host = "moved.example.com";
    // Pointed at an address that is not the platform's; the TXT record proves ownership, so
    // the platform takes it for a proxy in front and tries HTTP-01 there: nothing answers.
    world.request(host, "127.0.0.3");
    let failed = world.wait_detail(host, Duration::from_secs(60), |d| d["status"] == "failed");
    let errors = failed["validation_errors"].as_array().expect("errors");
    let attempt = errors
        .iter()
        .find(|e| e["code"] == "HTTP_VALIDATION_FAILED")
        .unwrap_or_else(|| panic!("{failed:#}"));
    assert_eq!(attempt["challenge"], "http-01");
    assert!(
        attempt["remediation"]
            .as_str()
            .is_some_and(|r| r.contains("point the A/AAAA records at the platform")),
        "{attempt:#}"
    );
    assert!(attempt["problem"]["type"].as_str().is_some(), "{attempt:#}");
    assert_eq!(failed["acme_order"]["state"], "dead");
    assert!(failed["next_issuance_at"].is_string(), "{failed:#}");
    // Backing off: no new order in the next seconds.
    let orders = world.new_orders_at_pebble();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(world.new_orders_at_pebble(), orders, "backed off");

    // Fixed and checked: issued straight away (TLS-ALPN-01 now that it points at us).
    world.point(host, "127.0.0.1");
    let checked = world.check(host);
    assert_eq!(
        checked["validation"]["alpn_configured"], true,
        "{checked:#}"
    );
    let detail = world.wait_issued(host, Duration::from_secs(60));
    assert_eq!(detail["acme_order"]["challenge"], "tls-alpn-01");
}

/// With short-lived certificates, the platform renews before expiry, and the built-in edge and
/// a separate edge process switch to the new certificate without one failed handshake.
#[test]
fn renewal_before_expiry_switches_every_edge_without_a_failed_handshake() {
    let world = World::start(Setup {
        validity_seconds: Some(60),
        ..Setup::default()
    });
    let host = "renew.example.com";
    world.request(host, "127.0.0.1");
    let first = world.wait_issued(host, Duration::from_secs(60));
    let first_prints = leaf_fingerprints(&first);

    // A second edge, its own process, following the control plane.
    let edge_https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut edge = Command::new(BIN)
        .args([
            "edge",
            "--control-plane",
            &format!("http://{}", world.api),
            "--token",
            &world.token,
        ])
        .env("CERTPLANE_EDGE_HTTPS_LISTEN", edge_https.to_string())
        .env(
            "CERTPLANE_EDGE_HTTP_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env(
            "CERTPLANE_EDGE_ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("CERTPLANE_EDGE_ID", "second-edge")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("edge starts");
    let edge_guard = KillOnDrop(edge.id());
    let roots = world.roots();
    let deadline = Instant::now() + Duration::from_secs(15);
    while handshake(edge_https, host, &roots, Offer::Ecdsa).is_err() {
        assert!(edge.try_wait().expect("wait").is_none(), "edge exited");
        assert!(Instant::now() < deadline, "second edge never served");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Handshakes on both edges until both serve a new certificate; none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let roots = roots.clone();
        let edges = [world.https, edge_https];
        let host = host.to_owned();
        let first = first_prints.clone();
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            // (edge, key type) pairs serving a renewed certificate.
            let mut switched = [[false, false], [false, false]];
            let mut count = 0u32;
            let deadline = Instant::now() + Duration::from_secs(90);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                for (i, addr) in edges.iter().enumerate() {
                    for (j, offer) in [Offer::Ecdsa, Offer::Rsa].into_iter().enumerate() {
                        count += 1;
                        match handshake(*addr, &host, &roots, offer) {
                            Ok(leaf) => {
                                if !first.contains(&sha256_hex(&leaf)) {
                                    switched[i][j] = true;
                                }
                            }
                            Err(e) => failures.push(format!("{addr} {offer:?}: {e}")),
                        }
                    }
                }
                if switched == [[true, true], [true, true]] {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (failures, switched, count)
        })
    };
    let (failures, switched, count) = prober.join().expect("prober");
    stop.store(true, Ordering::Relaxed);
    assert!(failures.is_empty(), "failed handshakes: {failures:?}");
    assert_eq!(
        switched,
        [[true, true], [true, true]],
        "both edges serve both renewed certificates"
    );
    assert!(count > 10, "{count} handshakes");
    let renewed = world.show(host);
    assert_eq!(renewed["acme_order"]["renewal"], true, "{renewed:#}");
    let now_prints = leaf_fingerprints(&renewed);
    assert!(
        now_prints.is_disjoint(&first_prints),
        "both key types renewed: {renewed:#}"
    );
    drop(edge_guard);
    let _ = edge.wait();
}

/// Kills and reaps a child process when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// The platform's own budget of the CA's limits: with room for one order per 3 hours, the
/// ECDSA certificate is issued and the RSA order is held back, with `rate_limited_until` and a
/// RATE_LIMITED error; a customer's check does not lift it.
#[test]
fn the_budget_holds_orders_back_with_rate_limited_until() {
    let world = World::start(Setup {
        extra_env: vec![("CERTPLANE_ACME_ORDERS_PER_3_HOURS", "1".into())],
        ..Setup::default()
    });
    let host = "budget.example.com";
    world.request(host, "127.0.0.1");
    let limited = world.wait_detail(host, Duration::from_secs(60), |d| {
        d["rate_limited_until"].is_string()
    });
    assert_eq!(issued_types(&limited), ["ecdsa"], "{limited:#}");
    assert_eq!(
        limited["status"], "active",
        "the ECDSA certificate is served"
    );
    let error = limited["validation_errors"]
        .as_array()
        .expect("errors")
        .iter()
        .find(|e| e["code"] == "RATE_LIMITED")
        .unwrap_or_else(|| panic!("{limited:#}"))
        .clone();
    assert_eq!(error["key_type"], "rsa");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("3 hours")),
        "{error:#}"
    );
    assert_eq!(world.new_orders_at_pebble(), 1);
    let checked = world.check(host);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        world.new_orders_at_pebble(),
        1,
        "still held back after a check"
    );
    assert_eq!(checked["rate_limited_until"], limited["rate_limited_until"]);
}

/// Two control planes on one PostgreSQL database share the work through leases: every
/// hostname is issued, both issued some, and Pebble saw exactly one order per hostname and key
/// type, each one the store knows.
#[test]
fn two_control_planes_on_postgresql_never_order_twice() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (admin_url, name, url) = rt.block_on(certplane_test_support::create_postgres_database());
    struct DropDb(String, String);
    impl Drop for DropDb {
        fn drop(&mut self) {
            certplane_test_support::drop_postgres_database(&self.0, &self.1);
        }
    }
    let _db = DropDb(admin_url, name);
    // Both control planes seal and open keys with one master key.
    let master = "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";
    let shared = vec![
        ("CERTPLANE_DATABASE_URL", url.clone()),
        ("CERTPLANE_MASTER_KEY", master.to_owned()),
        ("CERTPLANE_ACME_CONCURRENCY", "2".to_owned()),
    ];
    let world = World::start(Setup {
        extra_env: shared.clone(),
        ..Setup::default()
    });
    // The second control plane: its own API, edge and data directory, the same database.
    let second_dir = tempfile::tempdir().expect("tempdir");
    let second_api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let second_log = std::fs::File::create(second_dir.path().join("serve.log")).expect("log");
    let mut env = world.env();
    for (key, value) in [
        ("CERTPLANE_API_LISTEN", second_api.to_string()),
        (
            "CERTPLANE_EDGE_HTTPS_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ),
        (
            "CERTPLANE_EDGE_HTTP_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ),
        ("CERTPLANE_DNS_LISTEN", format!("127.0.0.1:{}", free_port())),
        ("CERTPLANE_EDGE_ID", "second-cp-edge".to_owned()),
    ] {
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value));
    }
    let second = Command::new(BIN)
        .arg("serve")
        .current_dir(second_dir.path())
        .envs(env)
        .stdout(Stdio::null())
        .stderr(second_log)
        .spawn()
        .expect("second serve");
    let _second = ChildGuard(second);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(second_api).is_err() {
        assert!(
            Instant::now() < deadline,
            "the second control plane does not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let hosts: Vec<String> = (0..10).map(|i| format!("p{i}.example.com")).collect();
    for host in &hosts {
        world.point(host, "127.0.0.1");
        world.prove(host);
        world.add(host);
    }
    for host in &hosts {
        world.check(host);
    }
    for host in &hosts {
        world.wait_issued(host, Duration::from_secs(120));
    }
    let rows = world.rt.block_on(orders_in_store(&url, &hosts));
    let known = rows.iter().filter(|r| r.2.is_some()).count();
    assert_eq!(world.new_orders_at_pebble(), known, "{rows:#?}");
    assert_eq!(known, 20, "one order per hostname and key type: {rows:#?}");
    let second_log =
        std::fs::read_to_string(second_dir.path().join("serve.log")).unwrap_or_default();
    assert!(
        world.serve_log().contains("ACME order created")
            && second_log.contains("ACME order created"),
        "both control planes issued:\n{}\n---\n{second_log}",
        world.serve_log()
    );
}

/// The CA deactivates the platform's account behind its back: the next order is refused, the
/// platform forgets the account, registers a new one and issues.
#[test]
fn a_deactivated_account_is_replaced_by_a_new_one() {
    let world = World::start(Setup::default());
    let first = "before.example.com";
    world.request(first, "127.0.0.1");
    world.wait_issued(first, Duration::from_secs(60));

    let directory = world.pebble.directory_url();
    let record = world.stored_account();
    world.rt.block_on(async {
        let keys = certplane_secrets::MasterKeys::load_or_create(
            &world.dir.path().join("data/master-keys"),
        )
        .expect("master keys");
        let credentials = keys
            .open(
                &certplane_secrets::Sealed {
                    key_id: record.key_id.clone(),
                    blob: record.credentials_sealed.clone(),
                },
                directory.as_bytes(),
            )
            .expect("opened");
        let config = certplane_acme::AcmeClientConfig {
            directory_url: directory.clone(),
            ca_root_pem: Some(world.pebble.ca_pem()),
            contact: Vec::new(),
            eab: None,
        };
        let (account, _) = certplane_acme::Accounts::open(
            &config,
            Some(std::str::from_utf8(&credentials).expect("UTF-8")),
        )
        .await
        .expect("restored");
        account.deactivate().await.expect("deactivated at the CA");
    });
    let registrations = world.pebble.log().matches("POST /sign-me-up").count();

    let second = "after.example.com";
    world.request(second, "127.0.0.1");
    world.wait_issued(second, Duration::from_secs(90));
    assert_eq!(
        world.pebble.log().matches("POST /sign-me-up").count(),
        registrations + 1,
        "a new account was registered"
    );
    assert_ne!(world.stored_account().account_url, record.account_url);
}
