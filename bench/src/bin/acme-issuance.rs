//! ACME issuance throughput: 200 hostnames against Pebble, three ways.
//!
//! 1. A bare instant-acme loop: [`CONCURRENCY`] orders at once on one account, HTTP-01 answered
//!    by this program's own tiny HTTP server, ECDSA P-256 keys, a TCP_NODELAY HTTP client and
//!    fast polling (50 ms first delay). The limit of the CA and the client library.
//! 2. `lego` (Debian package) in [`CONCURRENCY`] parallel processes, one hostname per process
//!    (each registers its own account), HTTP-01 through `--http.webroot`, served by this
//!    program's HTTP server. Skipped, with the reason printed, when `lego` is not installed.
//! 3. The platform: a real `certplane serve` pinned to CPU 0, driven through its REST API. It
//!    issues two certificates per hostname (ECDSA P-256 and RSA 2048), so its row counts 400
//!    certificates for 200 hostnames.
//!
//! Every row runs against a fresh Pebble (Debian package `pebble` 2.4: `PEBBLE_VA_NOSLEEP=1`,
//! no nonce rejections, no authorization reuse) whose `-dnsserver` is a `pebble-challtestsrv`
//! answering `A 127.0.0.1` for `h{i}.bench.test`. Loopback only; every process started here is
//! killed by a guard.
//!
//! Pebble 2.4 deadlocks when several new-order requests on one account arrive at once
//! (TESTING.md), so the bare loop sends its new-order requests one at a time; everything else
//! runs concurrently.
//!
//! Environment: `BENCH_ROWS` (default `bare,lego,platform`), `BENCH_NO_RECORD` (do not append
//! to RESULTS.md), `CERTPLANE_BIN` (the `certplane` binary; default: beside this program).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use certplane_bench::{certplane_binary, cpu_time, provenance, record};
use certplane_test_support::dns::{ChallTestSrv, free_port};
use certplane_test_support::pebble::{Pebble, PebbleOptions};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, ChallengeType, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Orders (or processes) at once: the platform's default `acme.concurrency`.
const CONCURRENCY: usize = 16;
/// Hostnames issued per row.
const NAMES: usize = 200;
/// `h{i}.<DOMAIN>`.
const DOMAIN: &str = "bench.test";
/// How long the platform may take to make every hostname active.
const PLATFORM_TIMEOUT: Duration = Duration::from_secs(300);
/// The platform row gives up early when no new-order request reached Pebble by then.
const PLATFORM_FIRST_ORDER_TIMEOUT: Duration = Duration::from_secs(60);
/// Whole-row limits for the bare loop and for lego (Pebble can deadlock: never wait forever).
const BARE_TIMEOUT: Duration = Duration::from_secs(120);
const LEGO_TIMEOUT: Duration = Duration::from_secs(240);
/// One lego process.
const LEGO_PROCESS_TIMEOUT: Duration = Duration::from_secs(120);

fn host(i: usize) -> String {
    format!("h{i}.{DOMAIN}")
}

/// One measured row.
#[derive(Debug)]
struct Row {
    client: String,
    concurrency: String,
    hostnames: usize,
    certificates: usize,
    seconds: f64,
    /// Certificates Pebble logged as issued during the row.
    pebble_issued: usize,
    /// CPU time (user + system) `certplane serve` spent while the clock ran.
    server_cpu_seconds: Option<f64>,
    /// When every hostname was first served (`active`: its ECDSA certificate), if measured.
    all_served_seconds: Option<f64>,
}

impl Row {
    fn hostnames_per_second(&self) -> f64 {
        self.hostnames as f64 / self.seconds
    }

    fn certificates_per_second(&self) -> f64 {
        self.certificates as f64 / self.seconds
    }
}

/// A row's outcome: measured, or not measured and why.
#[derive(Debug)]
enum Outcome {
    Measured(Row),
    NotMeasured { client: String, reason: String },
}

fn main() -> Result<(), String> {
    let rows = std::env::var("BENCH_ROWS").unwrap_or_else(|_| "bare,lego,platform".to_owned());
    let rows: Vec<String> = rows
        .split(',')
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .collect();
    for row in &rows {
        if !["bare", "lego", "platform"].contains(&row.as_str()) {
            return Err(format!(
                "BENCH_ROWS: unknown row {row:?} (bare, lego, platform)"
            ));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run(&rows))
}

async fn run(rows: &[String]) -> Result<(), String> {
    let challtestsrv = tokio::task::block_in_place(ChallTestSrv::start);
    for i in 0..NAMES {
        challtestsrv.add_a(&host(i), &["127.0.0.1"]).await;
    }
    println!(
        "challtestsrv on {}: A 127.0.0.1 for h0..h{}.{DOMAIN}",
        challtestsrv.dns,
        NAMES - 1
    );

    let mut outcomes = Vec::new();
    for row in rows {
        let outcome = match row.as_str() {
            "bare" => match bare_row(&challtestsrv).await {
                Ok(row) => Outcome::Measured(row),
                Err(reason) => Outcome::NotMeasured {
                    client: "bare instant-acme loop".to_owned(),
                    reason,
                },
            },
            "lego" => lego_row(&challtestsrv).await,
            _ => platform_row(&challtestsrv).await,
        };
        match &outcome {
            Outcome::Measured(r) => println!(
                "{}: {} hostnames, {} certificates in {:.2} s: {:.1} certificates/s (Pebble logged {} issued)",
                r.client,
                r.hostnames,
                r.certificates,
                r.seconds,
                r.certificates_per_second(),
                r.pebble_issued
            ),
            Outcome::NotMeasured { client, reason } => {
                println!("{client} row: not measured: {reason}")
            }
        }
        outcomes.push(outcome);
    }

    let section = report(&outcomes);
    print!("{section}");
    record(&section)
}

/// The results table and its notes, as a RESULTS.md section.
fn report(outcomes: &[Outcome]) -> String {
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--", "crates", "Cargo.lock"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let mut s = format!(
        "\n## ACME issuance ({})\n\n{NAMES} hostnames (`h{{i}}.{DOMAIN}`) per row, HTTP-01, each row against a fresh Debian Pebble 2.4 (`PEBBLE_VA_NOSLEEP=1`, no nonce rejections, `PEBBLE_AUTHZREUSE=0`) asking `pebble-challtestsrv` (A 127.0.0.1), all on loopback. One run per row. The clock runs from the first order (or the first API request) to the last certificate; account registration counts only where the client does it per hostname (lego). `certplane serve` pinned to CPU 0, everything else unpinned.\n\n| client | concurrency | hostnames | certificates | seconds | hostnames/s | certificates/s |\n|---|---|---|---|---|---|---|\n",
        provenance()
    );
    for outcome in outcomes {
        match outcome {
            Outcome::Measured(r) => s.push_str(&format!(
                "| {} | {} | {} | {} | {:.2} | {:.1} | {:.1} |\n",
                r.client,
                r.concurrency,
                r.hostnames,
                r.certificates,
                r.seconds,
                r.hostnames_per_second(),
                r.certificates_per_second()
            )),
            Outcome::NotMeasured { client, .. } => {
                s.push_str(&format!("| {client} | | | | not measured | | |\n"))
            }
        }
    }
    s.push('\n');
    for outcome in outcomes {
        if let Outcome::NotMeasured { client, reason } = outcome {
            s.push_str(&format!("- {client} row: not measured: {reason}\n"));
        }
    }
    let platform = outcomes.iter().find_map(|o| match o {
        Outcome::Measured(r) if r.client.starts_with("certplane") => Some(r),
        _ => None,
    });
    if let Some(p) = platform {
        if let Some(cpu) = p.server_cpu_seconds {
            s.push_str(&format!(
                "- `certplane serve` (one core) used {cpu:.1} s of CPU over the {:.1} s run ({:.0}% of its core), {:.1} ms per certificate.\n",
                p.seconds,
                100.0 * cpu / p.seconds,
                1000.0 * cpu / p.certificates.max(1) as f64
            ));
        }
        if let Some(first) = p.all_served_seconds {
            s.push_str(&format!(
                "- Every hostname was served (`active`, its ECDSA certificate at the edges) after {first:.1} s ({:.1} hostnames/s); the RSA certificates followed. The issuer orders each hostname's ECDSA certificate before any RSA one.\n",
                p.hostnames as f64 / first.max(0.001)
            ));
        }
        s.push_str(&format!(
            "- The platform issues two certificates per hostname (ECDSA P-256 and RSA 2048; RSA key generation included), the other clients one (ECDSA P-256): compare certificates/s for the work done at the CA, hostnames/s for what a customer sees ({:.1} hostnames/s = {:.1} certificates/s).\n",
            p.hostnames_per_second(),
            p.certificates_per_second()
        ));
        s.push_str("- Platform clock: from the first `POST …/certificates/acme` (the DNS records were set before) through `POST …/check` for every hostname until every hostname is `active` and its detail lists `ecdsa` and `rsa` under `issued[]`; the API was polled every 200 ms. The platform's rate-limit budget was raised (`CERTPLANE_ACME_*_PER_*` = 100000): all 200 names share one registered domain.\n");
    }
    let ran = |prefix: &str| {
        outcomes.iter().any(|o| match o {
            Outcome::Measured(r) => r.client.starts_with(prefix),
            Outcome::NotMeasured { client, .. } => client.starts_with(prefix),
        })
    };
    if ran("bare") {
        s.push_str(&format!(
            "- Bare loop: instant-acme 0.8 on a hyper-rustls client with TCP_NODELAY (ring), one account (registered before the clock), new-order requests serialised (Pebble 2.4 deadlock), `RetryPolicy` 50 ms first delay ×1.5; CSR from rcgen; {CONCURRENCY} orders at once.\n"
        ));
    }
    if ran("lego") {
        s.push_str(&format!(
            "- lego: one process per hostname, {CONCURRENCY} at a time, each registering its own account (`--path` per process), `--http --http.webroot`, `--key-type ec256`, Pebble's CA via `LEGO_CA_CERTIFICATES`.\n"
        ));
    }
    if dirty && ran("certplane") {
        s.push_str("- The working tree had uncommitted changes under crates/ (other work in progress) when this ran; `certplane` was built from it.\n");
    }
    s
}

// ---------------------------------------------------------------------------------------------
// HTTP-01 answers
// ---------------------------------------------------------------------------------------------

/// What the challenge server answers: tokens in memory (bare loop), then files under a webroot
/// (lego's `--http.webroot`).
#[derive(Clone, Debug, Default)]
struct Challenges {
    tokens: Arc<Mutex<HashMap<String, String>>>,
    webroot: Option<PathBuf>,
}

impl Challenges {
    fn insert(&self, token: String, key_authorization: String) {
        if let Ok(mut map) = self.tokens.lock() {
            map.insert(token, key_authorization);
        }
    }

    fn remove(&self, token: &str) {
        if let Ok(mut map) = self.tokens.lock() {
            map.remove(token);
        }
    }

    async fn lookup(&self, token: &str) -> Option<String> {
        if let Some(value) = self.tokens.lock().ok().and_then(|m| m.get(token).cloned()) {
            return Some(value);
        }
        let webroot = self.webroot.as_ref()?;
        let safe = !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !safe {
            return None;
        }
        tokio::fs::read_to_string(webroot.join(".well-known/acme-challenge").join(token))
            .await
            .ok()
    }
}

/// The challenge HTTP server's task, aborted on drop.
#[derive(Debug)]
struct ChallengeServer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl ChallengeServer {
    async fn start(challenges: Challenges) -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("challenge server: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let challenges = challenges.clone();
                tokio::spawn(async move {
                    let _ = answer(stream, &challenges).await;
                });
            }
        });
        Ok(Self { port, task })
    }
}

impl Drop for ChallengeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers one HTTP/1.1 request, then closes the connection.
async fn answer(mut stream: TcpStream, challenges: &Challenges) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Ok(());
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or("");
    let body = match path.strip_prefix("/.well-known/acme-challenge/") {
        Some(token) => challenges.lookup(token).await,
        None => None,
    };
    let response = match body {
        Some(body) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        None => {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        }
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

// ---------------------------------------------------------------------------------------------
// Pebble
// ---------------------------------------------------------------------------------------------

fn start_pebble(dns: SocketAddr, http_port: u16, tls_port: u16) -> Pebble {
    let mut options = PebbleOptions::new(dns, http_port, tls_port);
    options.nonce_reject_percent = 0;
    options.authz_reuse_percent = Some(0);
    // Pebble::start polls on a thread of its own and sleeps: keep it off the runtime's workers.
    tokio::task::block_in_place(|| Pebble::start(options))
}

/// Lines of Pebble's log that mark a new order / an issued certificate (Pebble 2.4.0 formats).
fn pebble_counts(pebble: &Pebble) -> (usize, usize) {
    let log = pebble.log();
    (
        log.matches("POST /order-plz").count(),
        log.matches("Issued certificate serial").count(),
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Bare instant-acme loop
// ---------------------------------------------------------------------------------------------

type AcmeHttpClient = HyperClient<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

/// An HTTPS client for instant-acme that trusts `ca_pem` only, with TCP_NODELAY on (as
/// certplane-acme's `acme_http_client`; instant-acme's default client leaves Nagle on).
fn acme_http_client(ca_pem: &str) -> Result<AcmeHttpClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("Pebble CA PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("Pebble CA certificate: {e}"))?;
    }
    // ring, like the rest of the workspace; rustls 0.23.48 deprecates its provider only for
    // lacking post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(Duration::from_secs(10)));
    tcp.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    Ok(HyperClient::builder(TokioExecutor::new()).build(https))
}

async fn bare_row(challtestsrv: &ChallTestSrv) -> Result<Row, String> {
    let challenges = Challenges::default();
    let server = ChallengeServer::start(challenges.clone()).await?;
    let pebble = start_pebble(challtestsrv.dns, server.port, free_port());
    let http = acme_http_client(&pebble.ca_pem())?;
    let (account, _credentials) = Account::builder_with_http(Box::new(http))
        .create(
            &NewAccount {
                contact: &["mailto:bench@bench.test"],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            pebble.directory_url(),
            None,
        )
        .await
        .map_err(|e| format!("account at Pebble: {e}"))?;
    let account = Arc::new(account);
    let new_order_lock = Arc::new(tokio::sync::Mutex::new(()));
    let next = Arc::new(AtomicUsize::new(0));

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let account = account.clone();
        let lock = new_order_lock.clone();
        let next = next.clone();
        let challenges = challenges.clone();
        tasks.spawn(async move {
            let mut issued = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= NAMES {
                    return Ok::<_, String>(issued);
                }
                let name = host(i);
                issue_one(&account, &lock, &challenges, &name)
                    .await
                    .map_err(|e| format!("{name}: {e}"))?;
                issued += 1;
            }
        });
    }
    let joined = join_issued(&mut tasks, BARE_TIMEOUT, &pebble).await;
    let seconds = started.elapsed().as_secs_f64();
    let issued = joined?;
    drop(server);
    Ok(Row {
        client: "bare instant-acme 0.8 loop (TCP_NODELAY, 50 ms first poll)".to_owned(),
        concurrency: format!("{CONCURRENCY} orders"),
        hostnames: issued,
        certificates: issued,
        seconds,
        pebble_issued: pebble_counts(&pebble).1,
        server_cpu_seconds: None,
        all_served_seconds: None,
    })
}

/// One order for `name`: HTTP-01, ECDSA P-256 key, certificate downloaded.
async fn issue_one(
    account: &Account,
    new_order_lock: &tokio::sync::Mutex<()>,
    challenges: &Challenges,
    name: &str,
) -> Result<(), String> {
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(50))
        .backoff(1.5)
        .timeout(Duration::from_secs(60));
    let identifiers = [Identifier::Dns(name.to_owned())];
    let mut order = {
        // Pebble 2.4 deadlocks on concurrent new-order requests of one account.
        let _one_at_a_time = new_order_lock.lock().await;
        account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| format!("new order: {e}"))?
    };
    let mut tokens = Vec::new();
    {
        let mut authorizations = order.authorizations();
        while let Some(result) = authorizations.next().await {
            let mut authz = result.map_err(|e| format!("authorization: {e}"))?;
            if matches!(authz.status, AuthorizationStatus::Valid) {
                continue;
            }
            let mut challenge = authz
                .challenge(ChallengeType::Http01)
                .ok_or("no http-01 challenge offered")?;
            challenges.insert(
                challenge.token.clone(),
                challenge.key_authorization().as_str().to_owned(),
            );
            tokens.push(challenge.token.clone());
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge ready: {e}"))?;
        }
    }
    let status = order
        .poll_ready(&retry)
        .await
        .map_err(|e| format!("poll ready: {e}"))?;
    for token in &tokens {
        challenges.remove(token);
    }
    if status != OrderStatus::Ready {
        return Err(format!("order {status:?}"));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| format!("key: {e}"))?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| format!("CSR: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("CSR: {e}"))?;
    order
        .finalize_csr(csr.der().as_ref())
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain = order
        .poll_certificate(&retry)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    if !chain.contains("-----BEGIN CERTIFICATE-----") {
        return Err("no certificate in the answer".to_owned());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. lego in parallel processes
// ---------------------------------------------------------------------------------------------

fn lego_version() -> Option<String> {
    let found = Command::new("lego")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        return None;
    }
    // Debian's build reports `lego version dev`: take the package's version.
    let package = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "lego"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty());
    Some(package.map_or_else(
        || "lego".to_owned(),
        |v| format!("lego {}", v.split('-').next().unwrap_or(&v)),
    ))
}

async fn lego_row(challtestsrv: &ChallTestSrv) -> Outcome {
    let Some(version) = lego_version() else {
        return Outcome::NotMeasured {
            client: "lego".to_owned(),
            reason: "`lego` is not installed (Debian package `lego`: apt-get install -y lego)"
                .to_owned(),
        };
    };
    let client = format!("{version}, one process per hostname");
    match lego_measure(challtestsrv, &client).await {
        Ok(row) => Outcome::Measured(row),
        Err(reason) => Outcome::NotMeasured { client, reason },
    }
}

async fn lego_measure(challtestsrv: &ChallTestSrv, client: &str) -> Result<Row, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let webroot = dir.path().join("webroot");
    std::fs::create_dir_all(webroot.join(".well-known/acme-challenge"))
        .map_err(|e| e.to_string())?;
    let challenges = Challenges {
        tokens: Arc::default(),
        webroot: Some(webroot.clone()),
    };
    let server = ChallengeServer::start(challenges).await?;
    let pebble = start_pebble(challtestsrv.dns, server.port, free_port());
    let ca_file = dir.path().join("pebble-ca.pem");
    std::fs::write(&ca_file, pebble.ca_pem()).map_err(|e| e.to_string())?;
    let directory = pebble.directory_url();
    let next = Arc::new(AtomicUsize::new(0));

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let next = next.clone();
        let webroot = webroot.clone();
        let ca_file = ca_file.clone();
        let directory = directory.clone();
        let base = dir.path().to_owned();
        tasks.spawn(async move {
            let mut issued = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= NAMES {
                    return Ok::<_, String>(issued);
                }
                let name = host(i);
                run_lego(
                    &directory,
                    &name,
                    &webroot,
                    &base.join(format!("lego-{i}")),
                    &ca_file,
                )
                .await
                .map_err(|e| format!("{name}: {e}"))?;
                issued += 1;
            }
        });
    }
    let joined = join_issued(&mut tasks, LEGO_TIMEOUT, &pebble).await;
    let seconds = started.elapsed().as_secs_f64();
    // Dropping the tasks kills their lego processes (kill_on_drop).
    tasks.abort_all();
    let issued = joined?;
    Ok(Row {
        client: client.to_owned(),
        concurrency: format!("{CONCURRENCY} processes"),
        hostnames: issued,
        certificates: issued,
        seconds,
        pebble_issued: pebble_counts(&pebble).1,
        server_cpu_seconds: None,
        all_served_seconds: None,
    })
}

async fn run_lego(
    directory: &str,
    name: &str,
    webroot: &Path,
    path: &Path,
    ca_file: &Path,
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("lego");
    cmd.arg("--server")
        .arg(directory)
        .args(["--accept-tos", "--email", "bench@bench.test"])
        .args(["--domains", name])
        .args(["--key-type", "ec256"])
        .arg("--http")
        .arg("--http.webroot")
        .arg(webroot)
        .arg("--path")
        .arg(path)
        .arg("run")
        .env("LEGO_CA_CERTIFICATES", ca_file)
        .env_remove("LEGO_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(LEGO_PROCESS_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("lego did not finish within {LEGO_PROCESS_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot run lego: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("").trim().to_owned();
        return Err(format!("lego exited with {}: {last}", output.status));
    }
    let crt = path.join("certificates").join(format!("{name}.crt"));
    let pem = std::fs::read_to_string(&crt).map_err(|e| format!("{}: {e}", crt.display()))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{} holds no certificate", crt.display()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. The platform
// ---------------------------------------------------------------------------------------------

/// A `certplane serve` process, killed on drop.
#[derive(Debug)]
struct Platform {
    child: Child,
    api: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Platform {
    fn start(
        dir: &Path,
        challtestsrv_dns: SocketAddr,
        pebble: &Pebble,
        edge_http_port: u16,
        edge_tls_port: u16,
    ) -> Result<Self, String> {
        let bin = certplane_binary()?;
        let data_dir = dir.join("data");
        let ca_file = dir.join("pebble-ca.pem");
        std::fs::write(&ca_file, pebble.ca_pem()).map_err(|e| e.to_string())?;
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join("serve.log");
        let stderr = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let taskset = Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let mut cmd = if taskset {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        let loopback = |port: u16| format!("127.0.0.1:{port}");
        cmd.arg("serve")
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .env("CERTPLANE_DATA_DIR", &data_dir)
            .env("CERTPLANE_API_LISTEN", api.to_string())
            .env("CERTPLANE_EDGE_HTTPS_LISTEN", loopback(edge_tls_port))
            .env("CERTPLANE_EDGE_HTTP_LISTEN", loopback(edge_http_port))
            .env("CERTPLANE_EDGE_ADMIN_LISTEN", loopback(free_port()))
            .env("CERTPLANE_DNS_LISTEN", loopback(free_port()))
            .env("CERTPLANE_DNS_NAMESERVERS", challtestsrv_dns.to_string())
            .env("CERTPLANE_PLATFORM_SHARED_IPV4", "127.0.0.1")
            .env("CERTPLANE_PLATFORM_APPS_DOMAIN", "apps.plat.test")
            .env("CERTPLANE_PLATFORM_CHALLENGE_ZONE", "acme.plat.test")
            .env("CERTPLANE_ACME_DIRECTORY_URL", pebble.directory_url())
            .env("CERTPLANE_ACME_CA_ROOT_FILE", &ca_file)
            .env("CERTPLANE_ACME_CAA_IDENTITIES", "pebble")
            // All 200 names share one registered domain: lift the platform's own budget of
            // the CA's limits (Let's Encrypt's by default) out of the way.
            .env("CERTPLANE_ACME_CERTIFICATES_PER_DOMAIN_PER_WEEK", "100000")
            .env("CERTPLANE_ACME_DUPLICATE_CERTIFICATES_PER_WEEK", "100000")
            .env("CERTPLANE_ACME_FAILED_VALIDATIONS_PER_HOUR", "100000")
            .env("CERTPLANE_ACME_ORDERS_PER_3_HOURS", "100000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut this = Self {
            child,
            api,
            data_dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while StdTcpStream::connect(api).is_err() || !this.data_dir.join("admin-token").exists() {
            if let Ok(Some(status)) = this.child.try_wait() {
                return Err(format!("serve exited with {status}: {}", this.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "serve did not listen on {api} within 30 s: {}",
                    this.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(this)
    }

    fn admin_token(&self) -> Result<String, String> {
        std::fs::read_to_string(self.data_dir.join("admin-token"))
            .map(|t| t.trim().to_owned())
            .map_err(|e| format!("admin token: {e}"))
    }

    /// The last lines serve wrote to stderr.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
        if tail.is_empty() {
            "(nothing on stderr)".to_owned()
        } else {
            tail
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PLATFORM_CLIENT: &str = "certplane serve (ECDSA P-256 + RSA 2048 per hostname)";

async fn platform_row(challtestsrv: &ChallTestSrv) -> Outcome {
    match platform_measure(challtestsrv).await {
        Ok(row) => Outcome::Measured(row),
        Err(reason) => Outcome::NotMeasured {
            client: PLATFORM_CLIENT.to_owned(),
            reason,
        },
    }
}

/// A request to the platform's API; the answer's JSON on a 2xx status.
async fn api(request: reqwest::RequestBuilder, what: &str) -> Result<Value, String> {
    let resp = request
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| format!("{what}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{what}: HTTP {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{what}: {e}: {body}"))
}

/// Whether a certificate detail lists an ACME certificate issued as both ECDSA and RSA.
fn has_both_keys(detail: &Value) -> bool {
    detail["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["source"] == "acme")
        .any(|c| {
            let types: Vec<&str> = c["issued"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k["type"].as_str())
                .collect();
            types.contains(&"ecdsa") && types.contains(&"rsa")
        })
}

async fn platform_measure(challtestsrv: &ChallTestSrv) -> Result<Row, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let edge_http_port = free_port();
    let edge_tls_port = free_port();
    let pebble = start_pebble(challtestsrv.dns, edge_http_port, edge_tls_port);
    let mut platform = tokio::task::block_in_place(|| {
        Platform::start(
            dir.path(),
            challtestsrv.dns,
            &pebble,
            edge_http_port,
            edge_tls_port,
        )
    })?;
    let token = platform.admin_token()?;
    let base = format!("http://{}/v1/apps", platform.api);
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .map_err(|e| e.to_string())?;

    let app = api(
        http.post(&base)
            .bearer_auth(&token)
            .json(&json!({"app_name": "bench", "backends": ["127.0.0.1:9"]})),
        "POST /v1/apps",
    )
    .await?;
    let ownership = app["ownership_value"]
        .as_str()
        .ok_or_else(|| format!("POST /v1/apps: no ownership_value in {app}"))?
        .to_owned();
    for i in 0..NAMES {
        challtestsrv
            .add_txt(&format!("_certplane-ownership.{}", host(i)), &ownership)
            .await;
    }

    // The clock starts before the first hostname is added: `serve` checks new hostnames by
    // itself, so issuance may start before the explicit check.
    let cpu_before = cpu_time(platform.child.id());
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let next = next.clone();
        let http = http.clone();
        let base = base.clone();
        let token = token.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= NAMES {
                    return Ok::<_, String>(());
                }
                let name = host(i);
                api(
                    http.post(format!("{base}/bench/certificates/acme"))
                        .bearer_auth(&token)
                        .json(&json!({"hostname": name})),
                    &format!("POST …/certificates/acme {name}"),
                )
                .await?;
                api(
                    http.post(format!("{base}/bench/certificates/{name}/check"))
                        .bearer_auth(&token),
                    &format!("POST …/certificates/{name}/check"),
                )
                .await?;
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.map_err(|e| e.to_string())??;
    }
    println!(
        "platform: {NAMES} hostnames added and checked through the API in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let mut done: HashMap<String, f64> = HashMap::new();
    let mut served: HashMap<String, f64> = HashMap::new();
    let mut last_progress = Instant::now();
    loop {
        let list = api(
            http.get(format!("{base}/bench/certificates?limit=500"))
                .bearer_auth(&token),
            "GET …/certificates",
        )
        .await?;
        let mut statuses: HashMap<String, usize> = HashMap::new();
        let mut active = Vec::new();
        for item in list["certificates"].as_array().into_iter().flatten() {
            let status = item["status"].as_str().unwrap_or("?").to_owned();
            let name = item["hostname"].as_str().unwrap_or("").to_owned();
            if status == "active" {
                served
                    .entry(name.clone())
                    .or_insert_with(|| started.elapsed().as_secs_f64());
            }
            if status == "active" && !done.contains_key(&name) {
                active.push(name);
            }
            *statuses.entry(status).or_default() += 1;
        }
        for name in active {
            let detail = api(
                http.get(format!("{base}/bench/certificates/{name}"))
                    .bearer_auth(&token),
                &format!("GET …/certificates/{name}"),
            )
            .await?;
            if has_both_keys(&detail) {
                done.insert(name, started.elapsed().as_secs_f64());
            }
        }
        if done.len() >= NAMES {
            break;
        }
        let elapsed = started.elapsed();
        let (orders, issued) = pebble_counts(&pebble);
        let mut summary: Vec<String> = statuses.iter().map(|(s, n)| format!("{s} {n}")).collect();
        summary.sort();
        let progress = format!(
            "{} of {NAMES} hostnames active with ECDSA and RSA; statuses: {}; Pebble: {orders} orders, {issued} issued; serve CPU {:.1} s",
            done.len(),
            summary.join(", "),
            cpu_time(platform.child.id())
                .saturating_sub(cpu_before)
                .as_secs_f64()
        );
        if orders == 0 && elapsed > PLATFORM_FIRST_ORDER_TIMEOUT {
            return Err(format!(
                "no new-order request reached Pebble within {PLATFORM_FIRST_ORDER_TIMEOUT:?} (ACME issuance not in this build?); {progress}; {}",
                first_error(&http, &base, &token, &list).await
            ));
        }
        if elapsed > PLATFORM_TIMEOUT {
            return Err(format!(
                "not every hostname active within {PLATFORM_TIMEOUT:?}; {progress}; {}",
                first_error(&http, &base, &token, &list).await
            ));
        }
        if let Ok(Some(status)) = platform.child.try_wait() {
            return Err(format!(
                "serve exited with {status}: {}",
                platform.log_tail()
            ));
        }
        if last_progress.elapsed() >= Duration::from_secs(10) {
            println!("platform: {:.0} s: {progress}", elapsed.as_secs_f64());
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let server_cpu = cpu_time(platform.child.id()).saturating_sub(cpu_before);
    let seconds = done.values().copied().fold(0.0, f64::max);
    Ok(Row {
        client: PLATFORM_CLIENT.to_owned(),
        concurrency: format!("{CONCURRENCY} (default acme.concurrency)"),
        hostnames: done.len(),
        certificates: 2 * done.len(),
        seconds,
        pebble_issued: pebble_counts(&pebble).1,
        server_cpu_seconds: Some(server_cpu.as_secs_f64()),
        all_served_seconds: Some(served.values().copied().fold(0.0, f64::max)),
    })
}

/// Waits for the workers' counts of issued certificates, at most `timeout`: their sum.
async fn join_issued(
    tasks: &mut tokio::task::JoinSet<Result<usize, String>>,
    timeout: Duration,
    pebble: &Pebble,
) -> Result<usize, String> {
    let joined = tokio::time::timeout(timeout, async {
        let mut issued = 0;
        while let Some(result) = tasks.join_next().await {
            issued += result.map_err(|e| e.to_string())??;
        }
        Ok::<_, String>(issued)
    })
    .await;
    match joined {
        Ok(result) => result,
        Err(_) => {
            let (orders, done) = pebble_counts(pebble);
            Err(format!(
                "not done within {timeout:?} (Pebble: {orders} orders, {done} issued)"
            ))
        }
    }
}

/// What the platform says about a hostname that is not active (its status detail and
/// validation errors), for a "not measured" reason.
async fn first_error(http: &reqwest::Client, base: &str, token: &str, list: &Value) -> String {
    let Some(name) = list["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["status"] != "active")
        .and_then(|c| c["hostname"].as_str())
    else {
        return "every hostname is active".to_owned();
    };
    let detail = api(
        http.get(format!("{base}/bench/certificates/{name}"))
            .bearer_auth(token),
        "detail",
    )
    .await;
    match detail {
        Ok(d) => {
            let errors: Vec<String> = d["validation_errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e["code"].as_str().unwrap_or("?"),
                        e["message"].as_str().unwrap_or("")
                    )
                })
                .collect();
            format!(
                "{name}: status {} ({}); validation errors: [{}]",
                d["status"].as_str().unwrap_or("?"),
                d["status_detail"].as_str().unwrap_or(""),
                errors.join("; ")
            )
        }
        Err(e) => e,
    }
}
