//! Propagation: from the API's answer to a certificate change until a TLS handshake at each
//! edge shows the new state, with 1, 8 and 32 edges.
//!
//! One real release `certplane serve` (SQLite, built-in edge off) runs on a data directory
//! seeded directly in the store with 20 verified hostnames, each with a custom certificate and,
//! under it, an ACME one. N `certplane edge` processes (`--id edge-{i}`, admin token) follow it
//! over loopback; the control plane and the edges are pinned to CPU 0, this program (API calls
//! and probes) to CPU 1. Changes go through the REST API with the org's token, one at a time:
//! import a custom certificate on a hostname serving its ACME one, replace a custom
//! certificate, or delete it (the edges then serve the ACME one again). After each answer
//! every edge is probed with full TLS 1.3 handshakes (rustls trusting the bench CA, SNI the
//! hostname, never resuming) until the leaf it serves is the new state; the lag is the time
//! from the answer to that handshake's end. Probes go round-robin over the edges not yet
//! updated, a few in flight at once, so probing does not starve the machine. Rounds alternate
//! N (1, 8, 32, 1, …), starting or stopping edges between them. `?wait=propagated` is not used.
//!
//! Environment: `BENCH_EDGES` (default `1,8,32`), `BENCH_CHANGES` per N (200), `BENCH_ROUNDS`
//! (3), `BENCH_PROBES` in flight (2), `BENCH_HOSTNAMES` (20), `BENCH_GAP_MS` between changes
//! (0: the next change goes as soon as every edge shows the last); `BENCH_VERBOSE` prints every
//! lag over 20 ms.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certplane_bench::edge::{
    Edge, EdgeSpec, Leaf, Seeded, TestCa, metric_value, pin_self, served_leaf, verifying_client,
};
use certplane_bench::{Server, median_min_max, provenance, quantile, record};
use serde_json::json;

const DOMAIN: &str = "bench.test";
/// Longest wait for one change to show at every edge.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), String> {
    let sizes: Vec<usize> = std::env::var("BENCH_EDGES")
        .unwrap_or_else(|_| "1,8,32".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();
    let settings = Settings {
        changes: env_usize("BENCH_CHANGES", 200).max(1),
        rounds: env_usize("BENCH_ROUNDS", 3).max(1),
        probes: env_usize("BENCH_PROBES", 2).max(1),
        hostnames: env_usize("BENCH_HOSTNAMES", 20).max(1),
        gap: Duration::from_millis(env_usize("BENCH_GAP_MS", 0) as u64),
    };
    certplane_bench::certplane_binary()?;
    let pinned = pin_self(1);
    println!("this program pinned to CPU 1: {pinned}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run(&sizes, settings))
}

#[derive(Clone, Copy, Debug)]
struct Settings {
    changes: usize,
    rounds: usize,
    probes: usize,
    hostnames: usize,
    /// Pause after each change has reached every edge.
    gap: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// A custom certificate on a hostname serving its ACME one.
    Import,
    /// A new custom certificate over the current one.
    Replace,
    /// The custom certificate deleted: the ACME one is served again.
    Delete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Import => "import",
            Op::Replace => "replace",
            Op::Delete => "delete",
        }
    }
}

/// What one hostname has.
struct Host {
    name: String,
    acme: Leaf,
    custom: Option<Leaf>,
}

/// One (change, edge) measurement.
#[derive(Clone, Copy, Debug)]
struct Sample {
    edges: usize,
    round: usize,
    op: Op,
    lag: Duration,
}

struct Bench {
    ca: TestCa,
    base: String,
    admin_token: String,
    org_token: String,
    app: String,
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
    hosts: Vec<Host>,
    rng: u64,
    next_host: usize,
    probe_times: Vec<Duration>,
    probe_errors: u64,
    first_probe_error: Option<String>,
    api_times: Vec<(Op, Duration)>,
    probes: usize,
    verbose: bool,
}

async fn run(sizes: &[usize], settings: Settings) -> Result<(), String> {
    let ca = TestCa::new()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let logs = tempfile::tempdir().map_err(|e| e.to_string())?;
    let seeded = Seeded::create(dir.path()).await?;
    let mut hosts = Vec::new();
    for i in 0..settings.hostnames {
        let name = format!("p{i}.{DOMAIN}");
        let custom = ca.leaf(&name)?;
        let acme = ca.leaf(&name)?;
        seeded.add_verified(&name, &custom).await?;
        seeded.add_acme(&name, &acme).await?;
        hosts.push(Host {
            name,
            acme,
            custom: Some(custom),
        });
    }
    let (admin_token, org_token, app) = (
        seeded.admin_token.clone(),
        seeded.org_token.clone(),
        seeded.app_name.clone(),
    );
    seeded.close().await;
    drop(seeded);
    let server = Server::start_seeded(dir.path(), Some(0))?;
    println!(
        "control plane at http://{} (pid {}), pinned to CPU 0 with every edge; {} hostnames seeded",
        server.addr,
        server.pid(),
        hosts.len()
    );
    let tls = verifying_client(&ca.cert_der)?;
    let mut bench = Bench {
        ca,
        base: format!("http://{}", server.addr),
        admin_token,
        org_token,
        app,
        http: reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .map_err(|e| e.to_string())?,
        tls,
        hosts,
        rng: 0x9e37_79b9_7f4a_7c15,
        next_host: 0,
        probe_times: Vec::new(),
        probe_errors: 0,
        first_probe_error: None,
        api_times: Vec::new(),
        probes: settings.probes,
        verbose: std::env::var_os("BENCH_VERBOSE").is_some(),
    };
    let mut edges: Vec<Edge> = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut timeouts = 0usize;
    let mut edge_reported: std::collections::BTreeMap<usize, [f64; 5]> = Default::default();
    let per_round = settings.changes.div_ceil(settings.rounds);
    for round in 0..settings.rounds {
        for &n in sizes {
            let count = per_round.min(settings.changes - round * per_round);
            if count == 0 {
                continue;
            }
            set_edges(&mut edges, n, &bench, logs.path()).await?;
            let lags_before = edge_lags(&edges, &bench.http).await;
            let started = Instant::now();
            let mut lags = Vec::new();
            for change in 0..count {
                let (op, lag, missed) = bench.change(&mut edges, change).await?;
                if !settings.gap.is_zero() {
                    tokio::time::sleep(settings.gap).await;
                }
                timeouts += missed;
                for l in lag {
                    lags.push(l);
                    samples.push(Sample {
                        edges: n,
                        round,
                        op,
                        lag: l,
                    });
                }
            }
            let lags_after = edge_lags(&edges, &bench.http).await;
            let slot = edge_reported.entry(n).or_insert([0.0; 5]);
            for (k, total) in slot.iter_mut().enumerate() {
                *total += lags_after[k] - lags_before[k];
            }
            lags.sort();
            println!(
                "round {round} edges {n:>2}: {count} changes in {:.1} s, lag p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
                started.elapsed().as_secs_f64(),
                ms(quantile(&lags, 0.5)),
                ms(quantile(&lags, 0.99)),
                ms(lags.last().copied().unwrap_or_default()),
            );
        }
    }
    let final_check = bench.check_edges(&edges).await;
    println!("{final_check}");
    report(
        &bench,
        &samples,
        sizes,
        settings,
        timeouts,
        &final_check,
        &edge_reported,
    )?;
    drop(edges);
    drop(server);
    Ok(())
}

/// The bounds (seconds) of the edge's lag histogram that the report shows.
const LAG_BOUNDS: [&str; 5] = ["0.005", "0.01", "0.025", "0.05", "+Inf"];

/// The edges' own propagation-lag histograms, summed: cumulative counts per [`LAG_BOUNDS`].
async fn edge_lags(edges: &[Edge], http: &reqwest::Client) -> [f64; 5] {
    let mut sum = [0.0; 5];
    for edge in edges {
        let Some(text) = edge.metrics(http).await else {
            continue;
        };
        for (slot, bound) in sum.iter_mut().zip(LAG_BOUNDS) {
            let series = format!("certplane_edge_propagation_lag_seconds_bucket{{le=\"{bound}\"}}");
            *slot += metric_value(&text, &series).unwrap_or(0.0);
        }
    }
    sum
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Starts or stops edges until `n` run, and waits until each serves the latest revision.
async fn set_edges(
    edges: &mut Vec<Edge>,
    n: usize,
    bench: &Bench,
    logs: &std::path::Path,
) -> Result<(), String> {
    while edges.len() > n {
        edges.pop();
    }
    while edges.len() < n {
        let id = format!("edge-{}", edges.len());
        edges.push(Edge::start(&EdgeSpec {
            control_plane: &bench.base,
            token: &bench.admin_token,
            id: &id,
            cpu: Some(0),
            resumption: true,
            log_dir: logs,
        })?);
    }
    let latest = bench.latest_revision().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for edge in edges.iter_mut() {
        loop {
            edge.check_alive()?;
            if edge
                .revision(&bench.http)
                .await
                .is_some_and(|r| r >= latest)
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "edge {} did not catch up to revision {latest}: {}",
                    edge.id,
                    edge.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Quiet for a moment: the new edges' snapshots and acks are done.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

impl Bench {
    fn random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    async fn latest_revision(&self) -> Result<i64, String> {
        let list: serde_json::Value = self
            .http
            .get(format!("{}/v1/edges", self.base))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        list["revision"]
            .as_i64()
            .ok_or_else(|| format!("GET /v1/edges: {list}"))
    }

    /// Makes one change through the API and measures when each edge shows it. Returns the
    /// operation, the lags of the edges that showed it, and how many did not within
    /// [`CHANGE_TIMEOUT`].
    async fn change(
        &mut self,
        edges: &mut [Edge],
        seq: usize,
    ) -> Result<(Op, Vec<Duration>, usize), String> {
        let k = self.next_host % self.hosts.len();
        self.next_host += 1;
        let coin = self.random().is_multiple_of(2);
        let op = match (&self.hosts[k].custom, coin) {
            (None, _) => Op::Import,
            (Some(_), true) => Op::Replace,
            (Some(_), false) => Op::Delete,
        };
        let name = self.hosts[k].name.clone();
        let new_leaf = match op {
            Op::Import | Op::Replace => Some(self.ca.leaf(&name)?),
            Op::Delete => None,
        };
        let expected = new_leaf
            .as_ref()
            .map_or_else(|| self.hosts[k].acme.der.clone(), |l| l.der.clone());
        let request = match &new_leaf {
            Some(leaf) => self
                .http
                .post(format!(
                    "{}/v1/apps/{}/certificates/custom",
                    self.base, self.app
                ))
                .json(&json!({
                    "hostname": name,
                    "fullchain": leaf.chain_pem,
                    "private_key": leaf.key_pem,
                })),
            None => self.http.delete(format!(
                "{}/v1/apps/{}/certificates/{name}/custom",
                self.base, self.app
            )),
        };
        let sent = Instant::now();
        let response = request
            .bearer_auth(&self.org_token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        self.api_times.push((op, t0 - sent));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("{} {name}: {status} {body}", op.name()));
        }
        self.hosts[k].custom = new_leaf;

        // Probe round-robin over the edges not updated yet, starting at a different edge each
        // change, at most `probes` handshakes in flight and one per edge.
        let n = edges.len();
        let mut pending: VecDeque<usize> = (0..n).map(|i| (i + seq) % n).collect();
        let mut lags = Vec::with_capacity(n);
        let mut in_flight = tokio::task::JoinSet::new();
        let expected = Arc::new(expected);
        let probes = self.probes;
        let deadline = t0 + CHANGE_TIMEOUT;
        loop {
            while in_flight.len() < probes {
                let Some(i) = pending.pop_front() else { break };
                let addr: SocketAddr = edges[i].https;
                let tls = self.tls.clone();
                let name = name.clone();
                in_flight.spawn(async move {
                    let start = Instant::now();
                    let leaf = served_leaf(addr, &name, &tls, PROBE_TIMEOUT).await;
                    (i, leaf, start, Instant::now())
                });
            }
            let Some(done) = in_flight.join_next().await else {
                break;
            };
            let (i, leaf, start, end) = done.map_err(|e| e.to_string())?;
            self.probe_times.push(end - start);
            match leaf {
                Ok(der) if der == *expected => {
                    if self.verbose && end - t0 > Duration::from_millis(20) {
                        println!(
                            "  slow: {} {name} at {}: {:.1} ms after the answer (API took {:.1} ms, probe {:.1} ms)",
                            op.name(),
                            edges[i].id,
                            ms(end - t0),
                            ms(t0 - sent),
                            ms(end - start)
                        );
                    }
                    lags.push(end - t0);
                }
                Ok(_) => pending.push_back(i),
                Err(e) => {
                    self.probe_errors += 1;
                    self.first_probe_error
                        .get_or_insert(format!("{}: {e}", edges[i].id));
                    edges[i].check_alive()?;
                    pending.push_back(i);
                }
            }
            if Instant::now() > deadline {
                in_flight.abort_all();
                let missed = n - lags.len();
                println!(
                    "  {} {name}: {missed} edge(s) did not show it within {CHANGE_TIMEOUT:?}",
                    op.name()
                );
                return Ok((op, lags, missed));
            }
        }
        Ok((op, lags, 0))
    }

    /// `GET /v1/edges`: how many edges are connected, and whether all of them acknowledged the
    /// latest revision (waiting up to 5 s for the last acks).
    async fn check_edges(&self, edges: &[Edge]) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let listed: Result<serde_json::Value, String> = async {
                self.http
                    .get(format!("{}/v1/edges", self.base))
                    .bearer_auth(&self.admin_token)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            let summary = match listed {
                Ok(list) => {
                    let revision = list["revision"].as_i64().unwrap_or(-1);
                    let connected: Vec<&serde_json::Value> = list["edges"]
                        .as_array()
                        .map(|a| a.iter().filter(|e| e["connected"] == true).collect())
                        .unwrap_or_default();
                    let current = connected
                        .iter()
                        .filter(|e| e["revision"].as_i64() == Some(revision))
                        .count();
                    let ok = connected.len() == edges.len() && current == edges.len();
                    (
                        ok,
                        format!(
                            "GET /v1/edges: revision {revision}, {} edge(s) connected, {current} of them at it (expected {})",
                            connected.len(),
                            edges.len()
                        ),
                    )
                }
                Err(e) => (false, format!("GET /v1/edges failed: {e}")),
            };
            if summary.0 || Instant::now() > deadline {
                return summary.1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn report(
    bench: &Bench,
    samples: &[Sample],
    sizes: &[usize],
    settings: Settings,
    timeouts: usize,
    final_check: &str,
    edge_reported: &std::collections::BTreeMap<usize, [f64; 5]>,
) -> Result<(), String> {
    let mut probe_times = bench.probe_times.clone();
    probe_times.sort();
    let mut table = format!(
        "\n## Edge propagation ({})\n\n\
         One `certplane serve` (SQLite, built-in edge off) and N `certplane edge` processes, all pinned to CPU 0, \
         following it over loopback; this program pinned to CPU 1. {} verified hostnames, each with an ACME \
         certificate under its custom one; {} changes per N through the REST API (org token), one at a time, \
         the next {} after every edge showed the last: import (custom over ACME), replace (custom over custom), \
         delete the custom one (ACME served again), in {} rounds alternating N. Lag: from the API's answer to the end of the first TLS 1.3 handshake at that \
         edge (rustls, X25519, trusting the bench CA, no resumption) whose leaf is the new one; probes \
         round-robin over the edges not yet updated, {} in flight (a probe handshake takes {:.2} ms at p50, \
         {:.2} ms at p99). Over all (change, edge) pairs; per-round p99 as median (min–max).\n\n\
         | edges | pairs | p50 ms | p99 ms | max ms | p99 per round ms |\n|---|---|---|---|---|---|\n",
        provenance(),
        settings.hostnames,
        settings.changes,
        if settings.gap.is_zero() {
            "at once".to_owned()
        } else {
            format!("{} ms", settings.gap.as_millis())
        },
        settings.rounds,
        settings.probes,
        ms(quantile(&probe_times, 0.5)),
        ms(quantile(&probe_times, 0.99)),
    );
    let mut by_op = String::from(
        "\n| edges | operation | changes | lag p50 ms | lag p99 ms |\n|---|---|---|---|---|\n",
    );
    for &n in sizes {
        let mut lags: Vec<Duration> = samples
            .iter()
            .filter(|s| s.edges == n)
            .map(|s| s.lag)
            .collect();
        lags.sort();
        let per_round: Vec<f64> = (0..settings.rounds)
            .filter_map(|r| {
                let mut l: Vec<Duration> = samples
                    .iter()
                    .filter(|s| s.edges == n && s.round == r)
                    .map(|s| s.lag)
                    .collect();
                l.sort();
                (!l.is_empty()).then(|| ms(quantile(&l, 0.99)))
            })
            .collect();
        let p99r = median_min_max(&per_round);
        table.push_str(&format!(
            "| {n} | {} | {:.1} | {:.1} | {:.1} | {:.1} ({:.1}–{:.1}) |\n",
            lags.len(),
            ms(quantile(&lags, 0.5)),
            ms(quantile(&lags, 0.99)),
            ms(lags.last().copied().unwrap_or_default()),
            p99r.0,
            p99r.1,
            p99r.2
        ));
        for op in [Op::Import, Op::Replace, Op::Delete] {
            let mut l: Vec<Duration> = samples
                .iter()
                .filter(|s| s.edges == n && s.op == op)
                .map(|s| s.lag)
                .collect();
            l.sort();
            let changes = l.len() / n;
            by_op.push_str(&format!(
                "| {n} | {} | {changes} | {:.1} | {:.1} |\n",
                op.name(),
                ms(quantile(&l, 0.5)),
                ms(quantile(&l, 0.99)),
            ));
        }
    }
    // The API's answer time does not depend on N much; one line per operation.
    let mut api_line = String::from("\nAPI answer time p50 (p99):");
    for op in [Op::Import, Op::Replace, Op::Delete] {
        let mut t: Vec<Duration> = bench
            .api_times
            .iter()
            .filter(|(o, _)| *o == op)
            .map(|(_, d)| *d)
            .collect();
        t.sort();
        api_line.push_str(&format!(
            " {} {:.1} ms ({:.1} ms);",
            op.name(),
            ms(quantile(&t, 0.5)),
            ms(quantile(&t, 0.99))
        ));
    }
    table.push_str(&by_op);
    table.push_str(
        "\nThe edges' own lag histogram (`certplane_edge_propagation_lag_seconds`: from when the control plane \
         read the change for the feed to when the edge published it), share of (change, edge) pairs:\n\n\
         | edges | pairs | ≤ 5 ms | ≤ 10 ms | ≤ 25 ms | ≤ 50 ms |\n|---|---|---|---|---|---|\n",
    );
    for (n, counts) in edge_reported {
        let total = counts[4].max(1.0);
        table.push_str(&format!(
            "| {n} | {:.0} | {:.1}% | {:.1}% | {:.1}% | {:.1}% |\n",
            counts[4],
            100.0 * counts[0] / total,
            100.0 * counts[1] / total,
            100.0 * counts[2] / total,
            100.0 * counts[3] / total,
        ));
    }
    table.push_str(&api_line);
    table.push('\n');
    let goal = samples
        .iter()
        .filter(|s| s.edges == 32)
        .map(|s| s.lag)
        .collect::<Vec<_>>();
    if !goal.is_empty() {
        let mut g = goal;
        g.sort();
        let p99 = ms(quantile(&g, 0.99));
        table.push_str(&format!(
            "\nGoal p99 < 50 ms at 32 edges: {p99:.1} ms, {}.\n",
            if p99 < 50.0 { "met" } else { "NOT met" }
        ));
    }
    table.push_str(&format!(
        "Edges that did not show a change within {CHANGE_TIMEOUT:?}: {timeouts}. Probe handshakes that failed: {}{}. {final_check}.\n",
        bench.probe_errors,
        bench
            .first_probe_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    ));
    print!("{table}");
    record(&table)
}
