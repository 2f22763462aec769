//! Real DNS servers for tests: `pebble-challtestsrv` (records set through its management API)
//! and NSD (an authoritative server with a zone file, for NXDOMAIN and real SOA/NS answers).
//! Both listen on loopback ports of their own and are killed on drop.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port, for both TCP and UDP, for a server a test starts next.
///
/// Drawn at random from 20000–32767, below the kernel's ephemeral range (32768–60999 here):
/// a port the kernel handed out (`bind(0)`) is free again once returned and can be taken by any
/// outgoing connection before the server binds it; tests make thousands of connections.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..256 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let port = 20_000 + (hasher.finish() % 12_768) as u16;
        let Ok(_tcp) = TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port for TCP and UDP");
}

fn wait_for_tcp(addr: SocketAddr, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before listening on {addr}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `pebble-challtestsrv` (Debian package `pebble`): a DNS server whose records tests set.
/// Unknown names get an empty NOERROR answer (it never says NXDOMAIN).
#[derive(Debug)]
pub struct ChallTestSrv {
    child: Child,
    /// Its DNS listener (UDP and TCP).
    pub dns: SocketAddr,
    management: String,
    http: reqwest::Client,
}

impl ChallTestSrv {
    pub fn start() -> Self {
        let dns = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mgmt = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut child = Command::new("pebble-challtestsrv")
            .args(["-management", &mgmt.to_string(), "-dns01", &dns.to_string()])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "pebble-challtestsrv runs (Debian package `pebble`; the test command installs it)",
            );
        wait_for_tcp(mgmt, &mut child, "pebble-challtestsrv");
        wait_for_tcp(dns, &mut child, "pebble-challtestsrv DNS");
        Self {
            child,
            dns,
            management: format!("http://{mgmt}"),
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, body: serde_json::Value) {
        let resp = self
            .http
            .post(format!("{}/{path}", self.management))
            .json(&body)
            .send()
            .await
            .expect("challtestsrv management answers");
        assert!(
            resp.status().is_success(),
            "challtestsrv {path}: {}",
            resp.status()
        );
    }

    fn fqdn(host: &str) -> String {
        format!("{}.", host.trim_end_matches('.'))
    }

    pub async fn add_a(&self, host: &str, addresses: &[&str]) {
        self.post(
            "add-a",
            serde_json::json!({"host": Self::fqdn(host), "addresses": addresses}),
        )
        .await;
    }

    pub async fn add_aaaa(&self, host: &str, addresses: &[&str]) {
        self.post(
            "add-aaaa",
            serde_json::json!({"host": Self::fqdn(host), "addresses": addresses}),
        )
        .await;
    }

    /// Adds one TXT record (calling again adds another).
    pub async fn add_txt(&self, host: &str, value: &str) {
        self.post(
            "set-txt",
            serde_json::json!({"host": Self::fqdn(host), "value": value}),
        )
        .await;
    }

    pub async fn set_cname(&self, host: &str, target: &str) {
        self.post(
            "set-cname",
            serde_json::json!({"host": Self::fqdn(host), "target": Self::fqdn(target)}),
        )
        .await;
    }

    /// Adds CAA records `(tag, value)` (flags are always 0).
    pub async fn add_caa(&self, host: &str, policies: &[(&str, &str)]) {
        let policies: Vec<serde_json::Value> = policies
            .iter()
            .map(|(tag, value)| serde_json::json!({"tag": tag, "value": value}))
            .collect();
        self.post(
            "add-caa",
            serde_json::json!({"host": Self::fqdn(host), "policies": policies}),
        )
        .await;
    }

    /// Every query for `host` answers SERVFAIL.
    pub async fn set_servfail(&self, host: &str) {
        self.post(
            "set-servfail",
            serde_json::json!({"host": Self::fqdn(host)}),
        )
        .await;
    }

    /// Removes `kind` records (`a`, `aaaa`, `txt`, `cname`, `caa`, `servfail`) of `host`.
    pub async fn clear(&self, kind: &str, host: &str) {
        self.post(
            &format!("clear-{kind}"),
            serde_json::json!({"host": Self::fqdn(host)}),
        )
        .await;
    }
}

impl Drop for ChallTestSrv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// NSD serving one zone from a zone file: answers NXDOMAIN for names the zone lacks.
#[derive(Debug)]
pub struct Nsd {
    child: Child,
    pub dns: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nsd {
    /// Serves `zone` (e.g. `nx.test`) with the resource records in `records` (zone-file lines,
    /// relative names allowed); an SOA and NS are added.
    pub fn start(zone: &str, records: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        let zone_text = format!(
            "$ORIGIN {zone}.\n$TTL 60\n@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n@ IN NS ns1.{zone}.\nns1 IN A 127.0.0.1\n{records}\n"
        );
        std::fs::write(dir.path().join("zone.db"), zone_text).expect("zone file");
        let conf = format!(
            "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  logfile: \"{d}/nsd.log\"\n  verbosity: 0\nremote-control:\n  control-enable: no\nzone:\n  name: \"{zone}\"\n  zonefile: \"{d}/zone.db\"\n"
        );
        let conf_path = dir.path().join("nsd.conf");
        std::fs::write(&conf_path, conf).expect("nsd.conf");
        let mut child = spawn_nsd(&conf_path);
        let dns = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_tcp(dns, &mut child, "nsd");
        Self {
            child,
            dns,
            _dir: dir,
        }
    }
}

fn spawn_nsd(conf: &Path) -> Child {
    let nsd = ["/usr/sbin/nsd", "nsd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nsd");
    Command::new(nsd)
        .arg("-d")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nsd runs (Debian package `nsd`; the test command installs it)")
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's `unbound` as a recursive resolver in front of test DNS servers: one stub zone per
/// `(zone, server)`, no caching, so a CNAME in one zone is chased into another (the way a CA's
/// resolver follows `_acme-challenge` delegations into the platform's challenge zone).
#[derive(Debug)]
pub struct Unbound {
    child: Child,
    pub dns: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Unbound {
    pub fn start(stubs: &[(&str, SocketAddr)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        let mut conf = format!(
            "server:\n  interface: 127.0.0.1@{port}\n  port: {port}\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"{d}/unbound.log\"\n  do-not-query-localhost: no\n  module-config: \"iterator\"\n  access-control: 127.0.0.0/8 allow\n  cache-max-ttl: 0\n  cache-max-negative-ttl: 0\n  qname-minimisation: no\n  do-ip6: no\n  remote-control:\n"
        );
        // `remote-control:` above is a clause of its own in unbound.conf; keep it off.
        conf = conf.replace(
            "  remote-control:\n",
            "remote-control:\n  control-enable: no\n",
        );
        for (zone, server) in stubs {
            conf.push_str(&format!(
                "stub-zone:\n  name: \"{zone}\"\n  stub-addr: {}@{}\n",
                server.ip(),
                server.port()
            ));
        }
        let conf_path = dir.path().join("unbound.conf");
        std::fs::write(&conf_path, conf).expect("unbound.conf");
        let unbound = ["/usr/sbin/unbound", "unbound"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("unbound");
        let mut child = Command::new(unbound)
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unbound runs (Debian package `unbound`; the test command installs it)");
        let dns = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_tcp(dns, &mut child, "unbound");
        Self {
            child,
            dns,
            _dir: dir,
        }
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP socket that receives queries and never answers: a DNS server that times out.
#[derive(Debug)]
pub struct SilentDns {
    _socket: UdpSocket,
    pub dns: SocketAddr,
}

impl SilentDns {
    pub fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let dns = socket.local_addr().expect("addr");
        Self {
            _socket: socket,
            dns,
        }
    }
}
