//! Full TLS handshakes at the edge with 1, 10k and 100k hostnames, each with its own ECDSA
//! P-256 key: handshakes per second, the edge's CPU time per handshake, its start-up time and
//! its memory per hostname.
//!
//! For each N, a data directory is seeded directly in the store (verified hostnames
//! `h{i}.bench.test`, each with a custom certificate from a test CA), then the real release
//! `certplane serve` (built-in edge off) runs on it. Each round, for each N in turn (1, 10k,
//! 100k, 1, …), one `certplane edge` following that control plane is started pinned to CPU 0
//! with resumption off (`CERTPLANE_EDGE_TLS_RESUMPTION=false`); start-up is from its start until
//! a handshake for the last hostname succeeds, and its RSS is read a second later. Then this
//! program runs itself again as the load generator (`--load`), pinned to CPU 1: rustls, TLS 1.3
//! only, X25519 only, never resuming, SNI rotating over all N names, many connections at once,
//! each closed after its handshake. The control planes are pinned to CPU 1 too: they work only
//! while an edge takes its snapshot (no load runs then) and idle during the load.
//!
//! The load generator checks that each leaf names the host asked for, but not its signatures
//! (chain or handshake): that keeps the client cheap, since on two cores the client saturates
//! before the server; the edge's work is the same either way.
//!
//! Environment: `BENCH_SIZES` (default `1,10000,100000`), `BENCH_ROUNDS` (3), `BENCH_SECONDS`
//! per load round (10), `BENCH_CONCURRENCY` (64).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use certplane_bench::edge::{
    Edge, EdgeSpec, Seeded, TestCa, pin_self, rss_kib, served_leaf, verifying_client,
    x25519_provider,
};
use certplane_bench::{Server, cpu_time, median_min_max, provenance, record};
use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

const DOMAIN: &str = "bench.test";
const OK_SERIES: &str = "certplane_edge_handshakes_total{result=\"ok\"}";
const FAILED_SERIES: &str = "certplane_edge_handshakes_total{result=\"failed\"}";
const UNKNOWN_SERIES: &str = "certplane_edge_handshakes_total{result=\"unknown_sni\"}";

fn host(i: usize) -> String {
    format!("h{i}.{DOMAIN}")
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--load") {
        return load_main(&args[2..]);
    }
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1,10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();
    let rounds = env_usize("BENCH_ROUNDS", 3).max(1);
    let seconds = env_usize("BENCH_SECONDS", 10).max(1);
    let concurrency = env_usize("BENCH_CONCURRENCY", 64).max(1);
    certplane_bench::certplane_binary()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run(&sizes, rounds, seconds, concurrency))
}

/// One data directory and the control plane serving it.
struct Setup {
    n: usize,
    server: Server,
    base: String,
    token: String,
    seed_secs: f64,
    _dir: tempfile::TempDir,
}

#[derive(Clone, Copy, Debug, Default)]
struct Round {
    startup_secs: f64,
    rss_kib: f64,
    rss_after_load_kib: f64,
    per_second: f64,
    cpu_us: f64,
    /// The edge's CPU time over the load's wall time.
    busy: f64,
    client_ok: u64,
    client_errors: u64,
    edge_ok: f64,
    edge_refused_or_failed: f64,
}

async fn run(
    sizes: &[usize],
    rounds: usize,
    seconds: usize,
    concurrency: usize,
) -> Result<(), String> {
    let ca = Arc::new(TestCa::new()?);
    let verify = verifying_client(&ca.cert_der)?;
    let http = reqwest::Client::new();
    let logs = tempfile::tempdir().map_err(|e| e.to_string())?;

    // Everything on this side runs on CPU 1, seeding too: the store's round trips between this
    // thread and SQLite's worker thread are about three times faster on one core than across
    // two (measured here: ~1,700 against ~530 hostnames/s).
    let pinned = pin_self(1);
    let mut setups = Vec::new();
    for &n in sizes {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let started = Instant::now();
        let seeded = seed(dir.path(), n, ca.clone()).await?;
        let seed_secs = started.elapsed().as_secs_f64();
        println!(
            "seeded {n} verified hostnames directly in the store in {seed_secs:.1} s ({:.0}/s)",
            n as f64 / seed_secs
        );
        let token = seeded.admin_token.clone();
        seeded.close().await;
        drop(seeded);
        setups.push((n, dir, token, seed_secs));
    }
    let mut running = Vec::new();
    for (n, dir, token, seed_secs) in setups {
        let server = Server::start_seeded(dir.path(), Some(1))?;
        running.push(Setup {
            n,
            base: format!("http://{}", server.addr),
            server,
            token,
            seed_secs,
            _dir: dir,
        });
    }
    println!(
        "control planes: {} (pinned to CPU 1); this program pinned to CPU 1: {pinned}",
        running
            .iter()
            .map(|s| format!("N={} at {} (pid {})", s.n, s.base, s.server.pid()))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut results: Vec<Vec<Round>> = vec![Vec::new(); running.len()];
    for round in 0..rounds {
        for (k, setup) in running.iter().enumerate() {
            let r = one_round(setup, &verify, &http, logs.path(), seconds, concurrency).await?;
            println!(
                "round {round} N={:<6} start-up {:>6.2} s | RSS {:>7.1} MiB (after load {:>7.1}) | {:>6.0} handshakes/s | edge CPU {:>4.0} µs/handshake, {:>3.0}% busy | client ok {} errors {} | edge ok {:.0} refused/failed {:.0}",
                setup.n,
                r.startup_secs,
                r.rss_kib / 1024.0,
                r.rss_after_load_kib / 1024.0,
                r.per_second,
                r.cpu_us,
                100.0 * r.busy,
                r.client_ok,
                r.client_errors,
                r.edge_ok,
                r.edge_refused_or_failed,
            );
            results[k].push(r);
        }
    }
    report(&running, &results, rounds, seconds, concurrency)?;
    drop(running);
    Ok(())
}

/// Seeds `n` verified hostnames: certificates are made on another thread while the store
/// takes them one by one.
async fn seed(dir: &std::path::Path, n: usize, ca: Arc<TestCa>) -> Result<Seeded, String> {
    let seeded = Seeded::create(dir).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let maker = std::thread::spawn(move || {
        for i in 0..n {
            let name = host(i);
            let leaf = ca.leaf(&name);
            if tx.blocking_send((name, leaf)).is_err() {
                return;
            }
        }
    });
    while let Some((name, leaf)) = rx.recv().await {
        seeded.add_verified(&name, &leaf?).await?;
    }
    maker.join().map_err(|_| "the certificate maker panicked")?;
    Ok(seeded)
}

async fn one_round(
    setup: &Setup,
    verify: &Arc<rustls::ClientConfig>,
    http: &reqwest::Client,
    logs: &std::path::Path,
    seconds: usize,
    concurrency: usize,
) -> Result<Round, String> {
    let id = format!("bench-edge-{}", setup.n);
    let mut edge = Edge::start(&EdgeSpec {
        control_plane: &setup.base,
        token: &setup.token,
        id: &id,
        cpu: Some(0),
        resumption: false,
        log_dir: logs,
    })?;
    let last = host(setup.n - 1);
    let limit = Duration::from_secs(300);
    loop {
        edge.check_alive()?;
        if edge.started.elapsed() > limit {
            return Err(format!(
                "edge for N={} did not serve {last} within {limit:?}: {}",
                setup.n,
                edge.log_tail()
            ));
        }
        match served_leaf(edge.https, &last, verify, Duration::from_secs(5)).await {
            Ok(_) => break,
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    let startup_secs = edge.started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = rss_kib(edge.pid()).ok_or("cannot read the edge's RSS")? as f64;

    let metric = |series: &'static str| {
        let edge = &edge;
        async move { edge.metric(http, series).await.unwrap_or(f64::NAN) }
    };
    let refused_before = metric(FAILED_SERIES).await + metric(UNKNOWN_SERIES).await;
    let ok_before = metric(OK_SERIES).await;
    let cpu_before = cpu_time(edge.pid());
    let (client_ok, client_errors, load_secs, first_error) =
        run_load(edge.https, setup.n, seconds, concurrency).await?;
    let cpu = cpu_time(edge.pid()).saturating_sub(cpu_before);
    let edge_ok = metric(OK_SERIES).await - ok_before;
    let refused = metric(FAILED_SERIES).await + metric(UNKNOWN_SERIES).await - refused_before;
    edge.check_alive()?;
    let rss_after_load_kib = rss_kib(edge.pid()).unwrap_or(0) as f64;
    if let Some(e) = first_error {
        println!("  load errors: {client_errors}, the first: {e}");
    }
    Ok(Round {
        startup_secs,
        rss_kib: rss,
        rss_after_load_kib,
        per_second: client_ok as f64 / load_secs,
        cpu_us: cpu.as_secs_f64() * 1e6 / (client_ok.max(1) as f64),
        busy: cpu.as_secs_f64() / load_secs,
        client_ok,
        client_errors,
        edge_ok,
        edge_refused_or_failed: refused,
    })
}

/// Runs this program as the load generator on CPU 1; returns (handshakes, errors, seconds,
/// first error).
async fn run_load(
    addr: SocketAddr,
    n: usize,
    seconds: usize,
    concurrency: usize,
) -> Result<(u64, u64, f64, Option<String>), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::new("taskset");
    cmd.arg("-c")
        .arg("1")
        .arg(exe)
        .arg("--load")
        .arg(addr.to_string())
        .arg(n.to_string())
        .arg(seconds.to_string())
        .arg(concurrency.to_string())
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let output = tokio::time::timeout(Duration::from_secs(seconds as u64 + 60), cmd.output())
        .await
        .map_err(|_| "the load generator did not finish")?
        .map_err(|e| format!("cannot run the load generator under taskset: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "load generator failed ({}): {stderr}",
            output.status
        ));
    }
    let mut ok = None;
    let mut errors = None;
    let mut secs = None;
    for part in stdout.split_whitespace() {
        if let Some(v) = part.strip_prefix("ok=") {
            ok = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("errors=") {
            errors = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("secs=") {
            secs = v.parse::<f64>().ok().filter(|s| *s > 0.0);
        }
    }
    let first = stderr
        .lines()
        .find_map(|l| l.strip_prefix("first error: "))
        .map(str::to_owned);
    match (ok, errors, secs) {
        (Some(ok), Some(errors), Some(secs)) => Ok((ok, errors, secs, first)),
        _ => Err(format!("unexpected load generator output: {stdout}")),
    }
}

fn report(
    setups: &[Setup],
    results: &[Vec<Round>],
    rounds: usize,
    seconds: usize,
    concurrency: usize,
) -> Result<(), String> {
    let med = |k: usize, f: &dyn Fn(&Round) -> f64| {
        median_min_max(&results[k].iter().map(f).collect::<Vec<_>>())
    };
    let mut table = format!(
        "\n## Edge TLS handshakes ({})\n\n\
         One `certplane edge` pinned to CPU 0, resumption off (`CERTPLANE_EDGE_TLS_RESUMPTION=false`), \
         following a `certplane serve` (SQLite, built-in edge off) pinned to CPU 1 that idles during the load. \
         Load: this program's rustls client (ring, TLS 1.3 only, X25519 only, never resuming, leaf name checked but \
         no signature checks) pinned to CPU 1, {concurrency} connections at once, each closed after its handshake, \
         SNI rotating over all N hostnames, each with its own ECDSA P-256 key; {seconds} s per round, {rounds} rounds \
         alternating N, the edge started afresh each round. Start-up: from the edge's start until a handshake for the \
         last hostname succeeds (it takes a full snapshot from the control plane first). RSS 1 s after start-up. \
         Medians (min–max).\n\n\
         | hostnames | seeding s | start-up s | RSS MiB | handshakes/s | edge CPU µs/handshake | edge CPU busy % |\n|---|---|---|---|---|---|---|\n",
        provenance()
    );
    for (k, setup) in setups.iter().enumerate() {
        let startup = med(k, &|r| r.startup_secs);
        let rss = med(k, &|r| r.rss_kib / 1024.0);
        let rate = med(k, &|r| r.per_second);
        let cpu = med(k, &|r| r.cpu_us);
        let busy = med(k, &|r| 100.0 * r.busy);
        table.push_str(&format!(
            "| {} | {:.1} | {:.2} ({:.2}–{:.2}) | {:.1} ({:.1}–{:.1}) | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) |\n",
            setup.n, setup.seed_secs, startup.0, startup.1, startup.2, rss.0, rss.1, rss.2,
            rate.0, rate.1, rate.2, cpu.0, cpu.1, cpu.2, busy.0, busy.1, busy.2
        ));
    }
    let one = setups.iter().position(|s| s.n == 1);
    let mut notes = String::from("\n");
    if let Some(one) = one {
        let rss1 = med(one, &|r| r.rss_kib).0;
        let rate1 = med(one, &|r| r.per_second).0;
        let cpu1 = med(one, &|r| r.cpu_us).0;
        for (k, setup) in setups.iter().enumerate().filter(|(_, s)| s.n > 1) {
            let per_host = (med(k, &|r| r.rss_kib).0 - rss1) / (setup.n - 1) as f64;
            let rate = med(k, &|r| r.per_second).0;
            let cpu = med(k, &|r| r.cpu_us).0;
            notes.push_str(&format!(
                "- N = {}: RSS per hostname {:.2} KiB; handshakes/s {:.1}% of N = 1 (goal ≥ 95%); CPU per handshake {:.1}% of N = 1.\n",
                setup.n,
                per_host,
                100.0 * rate / rate1,
                100.0 * cpu / cpu1
            ));
        }
    }
    let errors: u64 = results.iter().flatten().map(|r| r.client_errors).sum();
    let refused: f64 = results
        .iter()
        .flatten()
        .map(|r| r.edge_refused_or_failed)
        .sum();
    notes.push_str(&format!(
        "- Handshakes that failed: {errors} at the client, {refused:.0} refused or failed at the edge (its /metrics).\n\
         - Peers on this machine (BENCHMARKING.md, one core each): HAProxy 2.6 14.7 s start-up at 10k, 21 KiB/host, \
         ~620–670 µs/handshake; nginx 1.22 17.4 s, 43 KiB, ~585–620 µs; a minimal rustls 0.23 + aws-lc-rs SNI server \
         0.9 s, 1.4 KiB, ~280–320 µs (certplane's edge uses ring).\n"
    ));
    table.push_str(&notes);
    print!("{table}");
    record(&table)
}

// ---- the load generator (`--load ADDR N SECONDS CONCURRENCY`) ----

/// Accepts a leaf that names the host asked for; checks no signature.
#[derive(Debug)]
struct NameOnly {
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for NameOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ServerName::DnsName(name) = server_name else {
            return Err(rustls::Error::General("not a DNS name".into()));
        };
        let needle = name.as_ref().as_bytes();
        if end_entity
            .as_ref()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the leaf does not name {}",
                name.as_ref()
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

fn load_main(args: &[String]) -> Result<(), String> {
    let [addr, n, seconds, concurrency] = args else {
        return Err("usage: --load ADDR N SECONDS CONCURRENCY".into());
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    let n: usize = n.parse().map_err(|e| format!("{e}"))?;
    let seconds: u64 = seconds.parse().map_err(|e| format!("{e}"))?;
    let concurrency: usize = concurrency.parse().map_err(|e| format!("{e}"))?;
    let provider = x25519_provider();
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NameOnly { schemes }))
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (ok, errors, first, elapsed) = rt.block_on(async move {
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(seconds);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let next = next.clone();
            let connector = connector.clone();
            tasks.spawn(async move {
                let (mut ok, mut errors, mut first) = (0u64, 0u64, None::<String>);
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed) % n;
                    let Ok(name) = ServerName::try_from(host(i)) else {
                        errors += 1;
                        continue;
                    };
                    let attempt = async {
                        let tcp = tokio::net::TcpStream::connect(addr)
                            .await
                            .map_err(|e| format!("connect: {e}"))?;
                        let _ = tcp.set_nodelay(true);
                        connector
                            .connect(name, tcp)
                            .await
                            .map_err(|e| format!("handshake: {e}"))
                    };
                    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                        // Dropping the stream closes the connection.
                        Ok(Ok(_tls)) => ok += 1,
                        Ok(Err(e)) => {
                            errors += 1;
                            first.get_or_insert(e);
                        }
                        Err(_) => {
                            errors += 1;
                            first.get_or_insert_with(|| "handshake timed out".into());
                        }
                    }
                }
                (ok, errors, first)
            });
        }
        let (mut ok, mut errors, mut first) = (0, 0, None);
        while let Some(done) = tasks.join_next().await {
            if let Ok((o, e, f)) = done {
                ok += o;
                errors += e;
                if first.is_none() {
                    first = f;
                }
            }
        }
        (ok, errors, first, started.elapsed())
    });
    if let Some(e) = first {
        eprintln!("first error: {e}");
    }
    println!("ok={ok} errors={errors} secs={:.3}", elapsed.as_secs_f64());
    Ok(())
}
