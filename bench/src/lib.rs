//! Shared pieces of the benchmark programs: starting the real `certplane serve`, measuring a
//! process's CPU time, summarising latencies, and recording results.

#![forbid(unsafe_code)]

pub mod edge;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The release `certplane` binary beside this benchmark's own executable, or `CERTPLANE_BIN`.
pub fn certplane_binary() -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("CERTPLANE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let candidate = exe
        .parent()
        .map(|dir| dir.join("certplane"))
        .ok_or("no executable directory")?;
    if candidate.exists() {
        Ok(candidate)
    } else {
        Err(format!(
            "{} is missing: run `cargo build --release` first (or set CERTPLANE_BIN)",
            candidate.display()
        ))
    }
}

/// A `certplane serve` process, killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts `serve` in `dir`, pinned to CPU `cpu` with `taskset` when it is available.
    pub fn start(dir: &Path, database_url: Option<&str>, cpu: u32) -> Result<Self, String> {
        let mut env = Vec::new();
        if let Some(url) = database_url {
            env.push(("CERTPLANE_DATABASE_URL", url.to_owned()));
        }
        Self::spawn(dir, dir.join("data"), &env, Some(cpu))
    }

    /// Starts `serve` on a data directory seeded beforehand (`CERTPLANE_DATA_DIR`), with its
    /// built-in edge off, pinned to `cpu` when given.
    pub fn start_seeded(data_dir: &Path, cpu: Option<u32>) -> Result<Self, String> {
        let env = [
            ("CERTPLANE_DATA_DIR", data_dir.display().to_string()),
            ("CERTPLANE_EDGE_ENABLED", "false".to_owned()),
            ("CERTPLANE_DNS_LISTEN", "127.0.0.1:0".to_owned()),
        ];
        Self::spawn(data_dir, data_dir.to_owned(), &env, cpu)
    }

    fn spawn(
        dir: &Path,
        data_dir: PathBuf,
        env: &[(&str, String)],
        cpu: Option<u32>,
    ) -> Result<Self, String> {
        let bin = certplane_binary()?;
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?;
        let mut cmd = match cpu {
            Some(cpu) if has_taskset() => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(&bin);
                c
            }
            _ => Command::new(&bin),
        };
        cmd.arg("serve")
            .current_dir(dir)
            .env("CERTPLANE_API_LISTEN", addr.to_string())
            .env("RUST_LOG", "warn")
            // The API alone is measured: no background DNS checks, and no DNS traffic at all.
            .env("CERTPLANE_DNS_BACKGROUND_CHECKS", "false")
            .env("CERTPLANE_DNS_NAMESERVERS", "127.0.0.1:9")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            cmd.env(key, value);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline || child.try_wait().is_ok_and(|s| s.is_some()) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("serve did not listen on {addr}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            child,
            addr,
            data_dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn admin_token(&self) -> Result<String, String> {
        std::fs::read_to_string(self.data_dir.join("admin-token"))
            .map(|t| t.trim().to_owned())
            .map_err(|e| e.to_string())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn has_taskset() -> bool {
    Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// User + system CPU time of a process (and its threads), from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // Linux reports in USER_HZ, 100 on every mainstream configuration.
    Duration::from_millis(ticks * 10)
}

/// The `q` quantile (0..=1) of sorted samples.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The median of unsorted values, with min and max.
pub fn median_min_max(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.get(v.len() / 2).copied().unwrap_or(0.0);
    (
        mid,
        v.first().copied().unwrap_or(0.0),
        v.last().copied().unwrap_or(0.0),
    )
}

/// `date, commit, machine` for a results header.
pub fn provenance() -> String {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    // Counted from /proc, not the affinity mask: the benchmark pins itself to one core.
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    format!("{date}, commit {commit}, {cores} cores ({cpu})")
}

/// Appends a section to `bench/RESULTS.md` (not when `BENCH_NO_RECORD` is set: trial runs).
pub fn record(section: &str) -> Result<(), String> {
    if std::env::var_os("BENCH_NO_RECORD").is_some() {
        println!("BENCH_NO_RECORD is set: not appended to RESULTS.md");
        return Ok(());
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| e.to_string())?;
    writeln!(file, "{section}").map_err(|e| e.to_string())?;
    println!("appended to {}", path.display());
    Ok(())
}
