//! The real binary: `certplane serve` and the customer CLI, as a user runs them.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_certplane");

/// A running `certplane serve`, killed on drop.
struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Serve {
    fn start(dir: &Path, extra_env: &[(&str, &str)]) -> Self {
        let addr = free_addr();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .current_dir(dir)
            .env("CERTPLANE_API_LISTEN", addr.to_string())
            .env("RUST_LOG", "warn")
            // Background checks ask a loopback port where nothing answers: tests send no DNS
            // queries off this machine.
            .env("CERTPLANE_DNS_NAMESERVERS", "127.0.0.1:9")
            // The built-in edge on free loopback ports, never 443/80 of the machine.
            .env("CERTPLANE_EDGE_HTTPS_LISTEN", "127.0.0.1:0")
            .env("CERTPLANE_EDGE_HTTP_LISTEN", "127.0.0.1:0")
            .env("CERTPLANE_EDGE_ADMIN_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("certplane serve starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                child.stderr.take().map(|mut s| s.read_to_string(&mut err));
                panic!("serve exited early with {status}: {err}");
            }
            assert!(
                Instant::now() < deadline,
                "serve did not listen on {addr} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

fn cli(serve: &Serve, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CERTPLANE_API_URL", serve.url())
        .env("CERTPLANE_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .expect("cli runs")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8")
}

fn admin_token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("data/admin-token"))
        .expect("admin token")
        .trim()
        .to_owned()
}

/// The README's quick tour, exactly as printed, against a fresh `serve`.
#[test]
fn readme_quick_tour_works_as_printed() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("README.md");
    let start = readme
        .find("<!-- tour:start -->")
        .expect("tour start marker");
    let end = readme.find("<!-- tour:end -->").expect("tour end marker");
    let block = &readme[start..end];
    let script: String = block
        .lines()
        .skip_while(|l| !l.starts_with("```sh"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        script.contains("certplane certs add"),
        "the tour adds a hostname"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let serve = Serve::start(dir.path(), &[]);
    let bin_dir = PathBuf::from(BIN).parent().expect("bin dir").to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("CERTPLANE_API_URL", serve.url())
        .env_remove("CERTPLANE_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("bash runs");
    let stdout = ok(&output);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("Org ") && l.ends_with(" acme-corp")),
        "the app belongs to the new org, not the admin's:\n{stdout}"
    );
    for expected in [
        "Created app web",
        "Added www.example.com to web",
        "_certplane-ownership.www.example.com",
        "HOSTNAME",
        "pending_ownership",
    ] {
        assert!(
            stdout.contains(expected),
            "the tour's output lacks {expected:?}:\n{stdout}"
        );
    }
    assert!(serve.terminate().success(), "serve exits 0 on SIGTERM");
}

#[test]
fn first_start_creates_a_private_admin_token_and_restarts_keep_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = Serve::start(dir.path(), &[]);
    let token_file = dir.path().join("data/admin-token");
    let mode = std::fs::metadata(&token_file)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let data_mode = std::fs::metadata(dir.path().join("data"))
        .expect("data dir")
        .permissions()
        .mode();
    assert_eq!(data_mode & 0o077, 0, "the data directory is private");
    let keys_mode = std::fs::metadata(dir.path().join("data/master-keys"))
        .expect("serve creates the master key file")
        .permissions()
        .mode();
    assert_eq!(keys_mode & 0o777, 0o600);
    assert!(dir.path().join("data/certplane.db").exists());
    let token = admin_token(dir.path());
    let out = ok(&cli(
        &serve,
        &token,
        &["orgs", "create", "Durable", "--json"],
    ));
    let org: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let org_token = org["token"].as_str().expect("token").to_owned();
    ok(&cli(&serve, &org_token, &["apps", "create", "keep"]));
    ok(&cli(
        &serve,
        &org_token,
        &["certs", "add", "www.keep.example", "-a", "keep"],
    ));
    // A wildcard's setup puts its required records first.
    let wild = ok(&cli(
        &serve,
        &org_token,
        &["certs", "add", "*.keep.example", "-a", "keep"],
    ));
    assert!(
        wild.contains("1. Required: prove ownership of the wildcard"),
        "{wild}"
    );
    assert!(wild.contains("_certplane-ownership.keep.example"), "{wild}");
    assert!(serve.terminate().success());

    let serve = Serve::start(dir.path(), &[]);
    assert_eq!(admin_token(dir.path()), token, "the token file is kept");
    ok(&cli(&serve, &token, &["apps", "list"]));
    let out = ok(&cli(
        &serve,
        &org_token,
        &["certs", "list", "-a", "keep", "--json"],
    ));
    let list: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(list["total_count"], 2);
    assert_eq!(list["certificates"][1]["hostname"], "www.keep.example");
}

#[test]
fn cli_errors_are_one_line_with_a_code_and_nonzero_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = Serve::start(dir.path(), &[]);
    let token = admin_token(dir.path());
    ok(&cli(&serve, &token, &["apps", "create", "web"]));
    let cases: &[(&[&str], &str)] = &[
        (
            &["certs", "add", "co.uk", "-a", "web"],
            "HOSTNAME_PUBLIC_SUFFIX",
        ),
        (
            &["certs", "show", "nope.example.com", "-a", "web"],
            "CERTIFICATE_NOT_FOUND",
        ),
        (&["certs", "list", "-a", "ghost"], "APP_NOT_FOUND"),
        (
            &["certs", "remove", "www.example.com", "-a", "web"],
            "Pass -y",
        ),
        (&["apps", "create", "web"], "APP_NAME_TAKEN"),
    ];
    for (args, expected) in cases {
        let out = cli(&serve, &token, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(expected),
            "{args:?}: {err}"
        );
    }
    let out = cli(&serve, "cp_wrong", &["apps", "list"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("INVALID_TOKEN"));
    let out = Command::new(BIN)
        .args(["apps", "list"])
        .env("CERTPLANE_API_URL", "http://127.0.0.1:9")
        .env("CERTPLANE_TOKEN", "x")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

#[test]
fn unknown_config_keys_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("certplane.toml");
    std::fs::write(
        &config,
        "[api]\nlisten = \"127.0.0.1:0\"\nlisten_port = 1\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `listen_port`"), "{err}");
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before the config is valid"
    );
}

#[test]
fn serve_runs_on_postgresql() {
    let (admin_url, name, url) = tokio::runtime::Runtime::new()
        .expect("rt")
        .block_on(certplane_test_support::create_postgres_database());
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let serve = Serve::start(dir.path(), &[("CERTPLANE_DATABASE_URL", &url)]);
        let token = admin_token(dir.path());
        ok(&cli(&serve, &token, &["apps", "create", "pg-app"]));
        ok(&cli(
            &serve,
            &token,
            &["certs", "add", "www.pg.example", "-a", "pg-app"],
        ));
        let out = ok(&cli(&serve, &token, &["certs", "list", "-a", "pg-app"]));
        assert!(out.contains("www.pg.example"), "{out}");
        assert!(
            !dir.path().join("data/certplane.db").exists(),
            "no SQLite file with PostgreSQL"
        );
        assert!(serve.terminate().success());
    }
    certplane_test_support::drop_postgres_database(&admin_url, &name);
}

/// `certs import` with one file holding key and chain (either order), then `keys rotate`:
/// every stored key re-sealed under the new master key and still the key of its certificate.
#[test]
fn import_from_one_file_then_rotate_master_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = certplane_test_support::pki::Pki::new();
    let serve = Serve::start(dir.path(), &[]);
    let token = admin_token(dir.path());
    ok(&cli(&serve, &token, &["apps", "create", "shop"]));
    let hosts = ["a.import.test", "b.import.test"];
    for (i, host) in hosts.iter().enumerate() {
        let (leaf, key) = pki.leaf(&[host], 90);
        let chain = format!("{leaf}{}", pki.intermediate_pem());
        let combined = if i == 0 {
            format!("{key}{chain}")
        } else {
            format!("{chain}{key}")
        };
        let file = dir.path().join(format!("combined-{i}.pem"));
        std::fs::write(&file, combined).expect("write");
        let f = file.to_str().expect("utf-8 path");
        let out = ok(&cli(
            &serve,
            &token,
            &[
                "certs",
                "import",
                host,
                "-a",
                "shop",
                "--fullchain",
                f,
                "--private-key",
                f,
            ],
        ));
        assert!(
            out.contains(&format!("Imported a certificate for {host}")),
            "{out}"
        );
        assert!(
            out.contains("CHAIN_UNTRUSTED"),
            "the private test CA is flagged: {out}"
        );
    }
    let shown = ok(&cli(
        &serve,
        &token,
        &["certs", "show", hosts[0], "-a", "shop"],
    ));
    assert!(
        shown.contains("SOURCE") && shown.contains("custom"),
        "{shown}"
    );
    assert!(serve.terminate().success());

    let out = Command::new(BIN)
        .args(["keys", "rotate"])
        .current_dir(dir.path())
        .output()
        .expect("runs");
    let stdout = ok(&out);
    assert!(
        stdout.contains("New master key k2 is current; re-sealed 2 private key(s)."),
        "{stdout}"
    );

    let keys = certplane_secrets::MasterKeys::load_or_create(&dir.path().join("data/master-keys"))
        .expect("keys");
    assert_eq!(keys.ids(), vec!["k1", "k2"]);
    let url = format!(
        "sqlite://{}",
        dir.path().join("data/certplane.db").display()
    );
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let records = rt.block_on(async {
        let store = certplane_store::SqlStore::open(&url).await.expect("store");
        let all = certplane_store::Store::all_certificates(&store)
            .await
            .expect("certificates");
        store.close().await;
        all
    });
    assert_eq!(records.len(), 2);
    for record in records {
        assert_eq!(record.cert.key_id, "k2");
        let sealed = certplane_secrets::Sealed {
            key_id: record.cert.key_id.clone(),
            blob: record.cert.key_sealed.clone(),
        };
        let key_pem = keys
            .open(&sealed, &record.sealing_context())
            .expect("opens under the new key");
        let key_pem = String::from_utf8(key_pem.to_vec()).expect("PEM");
        let bundle =
            certplane_import::validate(&record.cert.chain_pem, &key_pem, &record.hostname, now())
                .expect("the re-sealed key is still the certificate's key");
        assert_eq!(bundle.fingerprint, record.cert.fingerprint);
    }

    // And the platform keeps working with the rotated keys.
    let serve = Serve::start(dir.path(), &[]);
    let out = ok(&cli(
        &serve,
        &token,
        &["certs", "list", "-a", "shop", "--json"],
    ));
    assert!(
        out.contains("a.import.test") && out.contains("b.import.test"),
        "{out}"
    );
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}
