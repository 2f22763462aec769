//! API throughput and latency for `POST /v1/apps/{app}/certificates/acme` and
//! `GET /v1/apps/{app}/certificates/{host}` with 100k hostnames stored, on SQLite and on
//! PostgreSQL.
//!
//! Runs the real release `certplane serve` twice (one per backend), pinned to CPU 0, and drives
//! both from this process over HTTP/1.1 keep-alive from CPU 1's side of the machine. Rounds
//! alternate between the backends (A B A B …) and the medians are reported with min–max; the
//! server's CPU time per request comes from `/proc/PID/stat` (PostgreSQL's own processes are
//! not counted in it).
//!
//! Environment: `BENCH_HOSTNAMES` (default 100000), `BENCH_REQUESTS` per round (default 5000),
//! `BENCH_CONCURRENCY` (default 32), `BENCH_ROUNDS` (default 3).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use certplane_bench::{Server, cpu_time, median_min_max, provenance, quantile, record};
use reqwest::StatusCode;
use serde_json::json;

struct Target {
    name: &'static str,
    server: Server,
    base: String,
    token: String,
    _dir: tempfile::TempDir,
}

#[derive(Clone, Copy)]
enum Op {
    Post,
    Get,
}

struct RoundResult {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    cpu_per_request: Duration,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), String> {
    let hostnames = env_usize("BENCH_HOSTNAMES", 100_000);
    let requests = env_usize("BENCH_REQUESTS", 5_000);
    let concurrency = env_usize("BENCH_CONCURRENCY", 32);
    let rounds = env_usize("BENCH_ROUNDS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run(hostnames, requests, concurrency, rounds))
}

async fn run(
    hostnames: usize,
    requests: usize,
    concurrency: usize,
    rounds: usize,
) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .map_err(|e| e.to_string())?;
    let (pg_admin, pg_name, pg_url) = certplane_test_support::create_postgres_database().await;
    let mut targets = Vec::new();
    for (name, url) in [("sqlite", None), ("postgres", Some(pg_url.as_str()))] {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let server = Server::start(dir.path(), url, 0)?;
        let base = format!("http://{}", server.addr);
        let token = server.admin_token()?;
        let resp = client
            .post(format!("{base}/v1/apps"))
            .bearer_auth(&token)
            .json(&json!({"app_name": "bench"}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::CREATED {
            return Err(format!("creating the app failed: {}", resp.status()));
        }
        let target = Target {
            name,
            server,
            base,
            token,
            _dir: dir,
        };
        let started = Instant::now();
        let seeded = drive(
            &client,
            &target,
            Op::Post,
            "seed",
            0..hostnames,
            concurrency,
        )
        .await?;
        println!(
            "{name}: seeded {hostnames} hostnames through the API in {:.1} s ({:.0}/s)",
            started.elapsed().as_secs_f64(),
            seeded.per_second
        );
        targets.push(target);
    }

    let mut results: Vec<Vec<(usize, &'static str, RoundResult)>> = vec![Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (t, target) in targets.iter().enumerate() {
            let start = hostnames + round * requests;
            let post = drive(
                &client,
                target,
                Op::Post,
                "new",
                start..start + requests,
                concurrency,
            )
            .await?;
            let get = drive(&client, target, Op::Get, "seed", 0..requests, concurrency).await?;
            println!(
                "round {round} {:<8} POST {:>7.0}/s p50 {:>6.2} ms p99 {:>6.2} ms cpu {:>4} µs/req | GET {:>7.0}/s p50 {:>6.2} ms p99 {:>6.2} ms cpu {:>4} µs/req",
                target.name,
                post.per_second,
                ms(post.p50),
                ms(post.p99),
                post.cpu_per_request.as_micros(),
                get.per_second,
                ms(get.p50),
                ms(get.p99),
                get.cpu_per_request.as_micros(),
            );
            results[t].push((round, "POST", post));
            results[t].push((round, "GET", get));
        }
    }

    let mut table = format!(
        "\n## API throughput ({})\n\n{hostnames} hostnames stored; {requests} requests per round, {concurrency} concurrent, HTTP/1.1 keep-alive; {rounds} rounds alternating backends; server pinned to CPU 0. Medians (min–max).\n\n| backend | route | requests/s | p50 ms | p99 ms | server CPU µs/request |\n|---|---|---|---|---|---|\n",
        provenance()
    );
    for (t, target) in targets.iter().enumerate() {
        for op in ["POST", "GET"] {
            let rows: Vec<&RoundResult> = results[t]
                .iter()
                .filter(|(_, o, _)| *o == op)
                .map(|(_, _, r)| r)
                .collect();
            let rate = median_min_max(&rows.iter().map(|r| r.per_second).collect::<Vec<_>>());
            let p50 = median_min_max(&rows.iter().map(|r| ms(r.p50)).collect::<Vec<_>>());
            let p99 = median_min_max(&rows.iter().map(|r| ms(r.p99)).collect::<Vec<_>>());
            let cpu = median_min_max(
                &rows
                    .iter()
                    .map(|r| r.cpu_per_request.as_micros() as f64)
                    .collect::<Vec<_>>(),
            );
            let route = if op == "POST" {
                "POST …/certificates/acme"
            } else {
                "GET …/certificates/{host}"
            };
            table.push_str(&format!(
                "| {} | {route} | {:.0} ({:.0}–{:.0}) | {:.2} ({:.2}–{:.2}) | {:.2} ({:.2}–{:.2}) | {:.0} ({:.0}–{:.0}) |\n",
                target.name, rate.0, rate.1, rate.2, p50.0, p50.1, p50.2, p99.0, p99.1, p99.2, cpu.0, cpu.1, cpu.2
            ));
        }
    }
    print!("{table}");
    record(&table)?;
    drop(targets);
    certplane_test_support::drop_postgres_database(&pg_admin, &pg_name);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sends one request per index in `range`, `concurrency` at a time.
async fn drive(
    client: &reqwest::Client,
    target: &Target,
    op: Op,
    prefix: &'static str,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> Result<RoundResult, String> {
    let next = Arc::new(AtomicUsize::new(range.start));
    let end = range.end;
    let cpu_before = cpu_time(target.server.pid());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let next = next.clone();
        let base = target.base.clone();
        let token = target.token.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                let host = format!("h{i}.{prefix}.bench.example");
                let t = Instant::now();
                let resp = match op {
                    Op::Post => {
                        client
                            .post(format!("{base}/v1/apps/bench/certificates/acme"))
                            .bearer_auth(&token)
                            .json(&json!({"hostname": host}))
                            .send()
                            .await
                    }
                    Op::Get => {
                        client
                            .get(format!("{base}/v1/apps/bench/certificates/{host}"))
                            .bearer_auth(&token)
                            .send()
                            .await
                    }
                }
                .map_err(|e| e.to_string())?;
                let status = resp.status();
                resp.bytes().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("{host}: {status}"));
                }
                latencies.push(t.elapsed());
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.map_err(|e| e.to_string())??);
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time(target.server.pid()).saturating_sub(cpu_before);
    all.sort();
    let n = all.len().max(1);
    Ok(RoundResult {
        per_second: n as f64 / elapsed.as_secs_f64(),
        p50: quantile(&all, 0.50),
        p99: quantile(&all, 0.99),
        cpu_per_request: cpu / u32::try_from(n).unwrap_or(u32::MAX),
    })
}
