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
            .env("CERTPLANE_DNS_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("certplane serve starts");
        wait_listening(addr, 20, &mut child);
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
    SocketAddr::from(([127, 0, 0, 1], certplane_test_support::dns::free_port()))
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
    String::from_utf8(ok_bytes(output)).expect("UTF-8")
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

/// Waits until something listens on `addr`, or panics after `secs`.
fn wait_listening(addr: SocketAddr, secs: u64, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            child.stderr.take().map(|mut s| s.read_to_string(&mut err));
            panic!("exited early with {status}: {err}");
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {addr} after {secs} s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A separate `certplane edge` process, with an edge token, serves an imported certificate to
/// `openssl s_client` and proxies `curl` to the app's backend: the README's commands.
#[test]
fn a_separate_edge_process_serves_openssl_and_curl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dns = certplane_test_support::dns::ChallTestSrv::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let nameserver = dns.dns.to_string();
    let serve = Serve::start(
        dir.path(),
        &[
            ("CERTPLANE_DNS_NAMESERVERS", nameserver.as_str()),
            ("CERTPLANE_EDGE_ENABLED", "false"),
        ],
    );
    let admin = admin_token(dir.path());
    // The app's backend: answers every request with a fixed body.
    let backend = TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend_addr = backend.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in backend.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut buf);
            let _ = std::io::Write::write_all(
                &mut stream,
                b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\nConnection: close\r\n\r\nhello from app\n",
            );
        }
    });
    let token = ok(&cli(
        &serve,
        &admin,
        &["orgs", "create", "Edge Co", "--token-only"],
    ))
    .trim()
    .to_owned();
    let app: serde_json::Value = serde_json::from_str(&ok(&cli(
        &serve,
        &token,
        &[
            "apps",
            "create",
            "web",
            "--backend",
            &backend_addr.to_string(),
            "--json",
        ],
    )))
    .expect("json");
    let host = "www.edge-binary.test";
    let pki = certplane_test_support::pki::Pki::new();
    let (leaf, key) = pki.leaf(&[host], 90);
    let chain_file = dir.path().join("fullchain.pem");
    let key_file = dir.path().join("key.pem");
    let root_file = dir.path().join("root.pem");
    std::fs::write(&chain_file, format!("{leaf}{}", pki.intermediate_pem())).expect("write");
    std::fs::write(&key_file, &key).expect("write");
    std::fs::write(&root_file, pki.root_pem()).expect("write");
    ok(&cli(
        &serve,
        &token,
        &[
            "certs",
            "import",
            host,
            "-a",
            "web",
            "--fullchain",
            chain_file.to_str().expect("path"),
            "--private-key",
            key_file.to_str().expect("path"),
        ],
    ));
    rt.block_on(dns.add_aaaa(host, &[app["ipv6"].as_str().expect("ipv6")]));
    let checked = ok(&cli(
        &serve,
        &token,
        &["certs", "check", host, "-a", "web", "--json"],
    ));
    assert!(
        checked.contains("\"status\": \"active\"") || checked.contains("\"status\":\"active\""),
        "{checked}"
    );

    // An edge token, and the edge process.
    let edge_token = ok(&cli(&serve, &admin, &["edges", "token"]))
        .trim()
        .to_owned();
    assert!(
        !cli(&serve, &edge_token, &["apps", "list"]).status.success(),
        "an edge token opens no customer command"
    );
    let https = free_addr();
    let http = free_addr();
    let admin_listen = free_addr();
    let mut edge = Command::new(BIN)
        .args([
            "edge",
            "--control-plane",
            &serve.url(),
            "--token",
            &edge_token,
            "--id",
            "edge-b",
        ])
        .env("CERTPLANE_EDGE_HTTPS_LISTEN", https.to_string())
        .env("CERTPLANE_EDGE_HTTP_LISTEN", http.to_string())
        .env("CERTPLANE_EDGE_ADMIN_LISTEN", admin_listen.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("edge starts");
    let _guard = KillOnDrop(edge.id());
    wait_listening(https, 20, &mut edge);

    let s_client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &https.to_string(),
            "-servername",
            host,
            "-CAfile",
        ])
        .arg(&root_file)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&s_client.stdout);
    assert!(
        text.contains(&format!("CN = {host}")) || text.contains(&format!("CN={host}")),
        "{text}"
    );
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let unknown = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &https.to_string(),
            "-servername",
            "other.test",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&unknown.stdout).to_string()
        + &String::from_utf8_lossy(&unknown.stderr);
    assert!(
        !unknown.status.success() || text.contains("no peer certificate available"),
        "{text}"
    );
    assert!(
        text.contains("alert access denied") || text.contains("no peer certificate"),
        "{text}"
    );

    let curl = Command::new("curl")
        .args(["-sS", "--resolve"])
        .arg(format!("{host}:{}:127.0.0.1", https.port()))
        .arg("--cacert")
        .arg(&root_file)
        .arg(format!("https://{host}:{}/", https.port()))
        .output()
        .expect("curl runs");
    assert_eq!(
        String::from_utf8_lossy(&ok_bytes(&curl)),
        "hello from app\n"
    );

    // The platform lists the edge at the latest revision.
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&cli(&serve, &admin, &["edges", "list", "--json"])))
            .expect("json");
    let edge_b = listed["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .find(|e| e["id"] == "edge-b")
        .cloned()
        .expect("edge-b listed");
    assert_eq!(edge_b["revision"], listed["revision"], "{listed:#}");
    let table = ok(&cli(&serve, &admin, &["edges", "list"]));
    assert!(
        table.contains("edge-b") && table.contains("CONNECTED"),
        "{table}"
    );
    assert_eq!(edge_b["connected"], true, "{listed:#}");
    let metrics = Command::new("curl")
        .arg("-sf")
        .arg(format!("http://{admin_listen}/metrics"))
        .output()
        .expect("curl runs");
    let metrics = String::from_utf8_lossy(&ok_bytes(&metrics)).to_string();
    assert!(
        metrics.contains("certplane_edge_handshakes_total{result=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("certplane_edge_hostnames 1\n"),
        "{metrics}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &edge.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = edge.try_wait().expect("wait") {
            assert!(status.success(), "edge exits 0 on SIGTERM: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "edge did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ok_bytes(output: &Output) -> Vec<u8> {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout.clone()
}

/// Kills a process by PID when dropped (a failed assertion must not leave it running).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// A TXT question for `name`, by hand (the test needs no DNS library).
fn txt_question(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 16, 0, 1]);
    q
}

/// Asks `addr` over UDP; (rcode, authoritative, answer count, raw answer). The server may
/// still be binding (it starts after the API is ready, and a datagram sent before is lost),
/// so a question without an answer is asked again for up to 10 s.
fn ask_txt(addr: SocketAddr, name: &str) -> (u8, bool, u16, Vec<u8>) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    let len = loop {
        socket.send_to(&txt_question(name), addr).expect("send");
        match socket.recv(&mut buf) {
            Ok(len) => break len,
            Err(e) => assert!(Instant::now() < deadline, "no answer from {addr}: {e}"),
        }
    };
    let answer = buf[..len].to_vec();
    let count = u16::from_be_bytes([answer[6], answer[7]]);
    (answer[3] & 0x0f, answer[2] & 0x04 != 0, count, answer)
}

/// The challenge-zone DNS server runs inside `serve` and alone (`certplane dns`), answering the
/// DNS-01 values in the store.
#[test]
fn the_challenge_dns_server_answers_in_serve_and_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dns = free_addr();
    let listen = dns.to_string();
    let serve = Serve::start(
        dir.path(),
        &[
            ("CERTPLANE_DNS_LISTEN", listen.as_str()),
            ("CERTPLANE_PLATFORM_CHALLENGE_ZONE", "acme.plat.test"),
        ],
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let url = format!(
        "sqlite://{}",
        dir.path().join("data/certplane.db").display()
    );
    let name = "www.example.com.tok.acme.plat.test";
    rt.block_on(async {
        let store = certplane_store::SqlStore::open(&url).await.expect("store");
        use certplane_store::Store;
        store
            .put_dns_challenge(name, "value-one", i64::MAX / 2)
            .await
            .expect("put");
        store
            .put_dns_challenge(name, "value-two", i64::MAX / 2)
            .await
            .expect("put");
        store.close().await;
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let answered = loop {
        let got = ask_txt(dns, name);
        if got.2 == 2 {
            break got;
        }
        assert!(Instant::now() < deadline, "values not answered: {got:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (rcode, aa, _, raw) = answered;
    assert_eq!((rcode, aa), (0, true));
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.contains("value-one") && text.contains("value-two"),
        "{text}"
    );
    let (rcode, aa, count, _) = ask_txt(dns, "nope.acme.plat.test");
    assert_eq!((rcode, aa, count), (3, true, 0), "NXDOMAIN inside the zone");
    let (rcode, aa, _, _) = ask_txt(dns, "example.com");
    assert_eq!((rcode, aa), (5, false), "REFUSED outside it");
    assert!(serve.terminate().success());

    // Alone, over the same database.
    let mut alone = Command::new(BIN)
        .arg("dns")
        .current_dir(dir.path())
        .env("CERTPLANE_DNS_LISTEN", &listen)
        .env("CERTPLANE_PLATFORM_CHALLENGE_ZONE", "acme.plat.test")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("certplane dns starts");
    let _guard = KillOnDrop(alone.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = alone.try_wait() {
            panic!("certplane dns exited early with {status}");
        }
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        socket.send_to(&txt_question(name), dns).expect("send");
        let mut buf = [0u8; 2048];
        if let Ok(len) = socket.recv(&mut buf) {
            assert_eq!(u16::from_be_bytes([buf[6], buf[7]]), 2, "both values");
            let _ = len;
            break;
        }
        assert!(Instant::now() < deadline, "certplane dns does not answer");
    }
    let _ = Command::new("kill")
        .args(["-TERM", &alone.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = alone.try_wait().expect("wait") {
            assert!(
                status.success(),
                "certplane dns exits 0 on SIGTERM: {status}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "certplane dns did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}
