//! Edges end to end: a real control plane (the API on SQLite or PostgreSQL), real edges
//! (`certplane_edge::run`, the code `certplane edge` runs) following it over HTTP on loopback,
//! and real TLS clients (rustls, reqwest) probing the edges from outside. Ownership is proven
//! with real DNS (pebble-challtestsrv) and the API's check, as a customer would.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certplane_domain::Hostname;
use certplane_edge::{EdgeAddrs, EdgeOptions, FollowOptions, ProxyConfig, TlsOptions};
use certplane_store::{ChallengeKind, ChallengeRecord};
use certplane_test_support::TestDb;
use certplane_test_support::dns::ChallTestSrv;
use certplane_test_support::pki::Pki;
use common::{TestApi, code};
use reqwest::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

const DAY: i64 = 86_400;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An edge running in this process, exactly as `certplane edge` runs it.
struct TestEdge {
    addrs: EdgeAddrs,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<Result<(), certplane_edge::EdgeError>>>,
}

impl TestEdge {
    async fn start(control_plane: &str, token: &str, id: &str) -> Self {
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let options = EdgeOptions {
            follow: FollowOptions {
                control_plane: control_plane.to_owned(),
                token: token.to_owned(),
                edge_id: id.to_owned(),
            },
            https_listen: local,
            http_listen: local,
            admin_listen: Some(local),
            tls: TlsOptions::default(),
            proxy: ProxyConfig {
                connect_timeout: Duration::from_secs(2),
                response_timeout: Duration::from_secs(5),
                ..ProxyConfig::default()
            },
        };
        let (stop, mut stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(certplane_edge::run(
            options,
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
            move |addrs| {
                let _ = ready_tx.send(addrs);
            },
        ));
        let addrs = tokio::time::timeout(Duration::from_secs(20), ready_rx)
            .await
            .expect("the edge takes its snapshot within 20 s")
            .expect("the edge started");
        Self {
            addrs,
            stop,
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        let task = self.task.take().expect("running");
        let ended = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the edge stops within 10 s");
        ended.expect("edge task").expect("edge ran without error");
    }

    async fn metrics(&self) -> String {
        let admin = self.addrs.admin.expect("admin listener");
        reqwest::get(format!("http://{admin}/metrics"))
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }
}

impl Drop for TestEdge {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// What a TLS client offers for the server's signature.
#[derive(Clone, Copy, Debug)]
enum Offer {
    Any,
    EcdsaOnly,
    RsaOnly,
}

/// What a handshake with an edge showed.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    /// The leaf certificate's DER.
    Leaf(Vec<u8>),
    /// The handshake failed (the edge refused it).
    Refused(String),
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("leaf PEM")
        .as_ref()
        .to_vec()
}

fn roots(pki: &Pki) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.root_pem().as_bytes()).expect("root PEM"))
        .expect("root added");
    Arc::new(roots)
}

fn provider(offer: Offer) -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    let keep = |s: &SignatureScheme| match offer {
        Offer::Any => true,
        Offer::EcdsaOnly => matches!(
            s,
            SignatureScheme::ECDSA_NISTP256_SHA256 | SignatureScheme::ECDSA_NISTP384_SHA384
        ),
        Offer::RsaOnly => matches!(
            s,
            SignatureScheme::RSA_PSS_SHA256
                | SignatureScheme::RSA_PSS_SHA384
                | SignatureScheme::RSA_PSS_SHA512
                | SignatureScheme::RSA_PKCS1_SHA256
                | SignatureScheme::RSA_PKCS1_SHA384
                | SignatureScheme::RSA_PKCS1_SHA512
        ),
    };
    // What the client offers for the handshake signature is this mapping; chains are still
    // verified with every algorithm (the test CA is ECDSA).
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

/// One full handshake with `addr` for `sni` (or none), trusting `roots`.
async fn probe_with(
    addr: SocketAddr,
    sni: Option<&str>,
    roots: &Arc<RootCertStore>,
    offer: Offer,
) -> Served {
    let mut config = rustls::ClientConfig::builder_with_provider(provider(offer))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.enable_sni = sni.is_some();
    config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    // Without SNI the client still needs a name to verify against.
    let name = ServerName::try_from(sni.unwrap_or("no-sni.test").to_owned()).expect("name");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    match tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => {
            let (_, conn) = stream.get_ref();
            let leaf = conn.peer_certificates().expect("certificates")[0]
                .as_ref()
                .to_vec();
            Served::Leaf(leaf)
        }
        Ok(Err(e)) => Served::Refused(e.to_string()),
        Err(_) => Served::Refused("timeout".into()),
    }
}

/// Whether the edge itself refused the handshake with its `access_denied` alert (a certificate
/// the client rejected would be another error: the edge served something).
fn refused(served: &Served) -> bool {
    matches!(served, Served::Refused(why) if why.contains("AccessDenied"))
}

async fn probe(addr: SocketAddr, sni: &str, roots: &Arc<RootCertStore>) -> Served {
    probe_with(addr, Some(sni), roots, Offer::Any).await
}

/// The customer's side: an org, an app, hostnames proven through real DNS.
struct Customer {
    org: String,
    app: String,
    ipv6: String,
    dns: ChallTestSrv,
}

impl Customer {
    async fn new(api: &TestApi, dns: ChallTestSrv, backends: &[String]) -> Self {
        let org = api.org("Edge customer").await;
        let (status, app) = api
            .send(
                Method::POST,
                "/v1/apps",
                Some(&org),
                Some(json!({"app_name": "shop", "backends": backends})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{app}");
        Self {
            org,
            app: "shop".into(),
            ipv6: app["ipv6"].as_str().expect("ipv6").to_owned(),
            dns,
        }
    }

    async fn import(
        &self,
        api: &TestApi,
        host: &str,
        chain: &str,
        key: &str,
        query: &str,
    ) -> (StatusCode, Value) {
        api.send(
            Method::POST,
            &format!("/v1/apps/{}/certificates/custom{query}", self.app),
            Some(&self.org),
            Some(json!({"hostname": host, "fullchain": chain, "private_key": key})),
        )
        .await
    }

    /// Points the name at the app (AAAA) and runs the check: ownership verified.
    async fn prove(&self, api: &TestApi, host: &str, query: &str) {
        let record = host.trim_start_matches("*.");
        self.dns.add_aaaa(record, &[&self.ipv6]).await;
        if host.starts_with("*.") {
            // A wildcard is proven by the TXT record of its base name.
            let (_, app) = api
                .send(
                    Method::GET,
                    &format!("/v1/apps/{}", self.app),
                    Some(&self.org),
                    None,
                )
                .await;
            let name = format!("_certplane-ownership.{record}");
            let value = app["ownership_value"]
                .as_str()
                .expect("ownership value")
                .to_owned();
            self.dns.add_txt(&name, &value).await;
        }
        let (status, body) = api
            .send(
                Method::POST,
                &format!(
                    "/v1/apps/{}/certificates/{}/check{query}",
                    self.app,
                    host.replace('*', "%2A")
                ),
                Some(&self.org),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["validation"]["ownership_verified"], true, "{body:#}");
    }

    async fn delete(&self, api: &TestApi, host: &str, query: &str) -> (StatusCode, Value) {
        api.send(
            Method::DELETE,
            &format!(
                "/v1/apps/{}/certificates/{}{query}",
                self.app,
                host.replace('*', "%2A")
            ),
            Some(&self.org),
            None,
        )
        .await
    }
}

async fn edge_token(api: &TestApi) -> String {
    let (status, body) = api
        .send(Method::POST, "/v1/edges/tokens", Some(&api.admin), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

fn chain(pki: &Pki, leaf: &str) -> String {
    format!("{leaf}{}", pki.intermediate_pem())
}

async fn import_replace_delete_reach_all_three_edges(db: TestDb) {
    let dns = ChallTestSrv::start();
    let api = TestApi::start_with_dns(db, &[dns.dns]).await;
    let customer = Customer::new(&api, dns, &[]).await;
    let token = edge_token(&api).await;
    let mut edges = Vec::new();
    for i in 0..3 {
        edges.push(TestEdge::start(&api.base, &token, &format!("edge-{i}")).await);
    }
    let pki = Pki::new();
    let roots = roots(&pki);
    let host = "www.propagate.test";

    // Import: the name is not proven yet, so nothing is served anywhere.
    let (leaf_a, key_a) = pki.leaf(&[host], 90);
    let (status, body) = customer
        .import(
            &api,
            host,
            &chain(&pki, &leaf_a),
            &key_a,
            "?wait=propagated",
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for edge in &edges {
        assert!(refused(&probe(edge.addrs.https, host, &roots).await));
    }
    // Proven: every edge serves it as soon as the call returns.
    customer.prove(&api, host, "?wait=propagated").await;
    for edge in &edges {
        assert_eq!(
            probe(edge.addrs.https, host, &roots).await,
            Served::Leaf(der_of(&leaf_a))
        );
    }

    // Replace.
    let (leaf_b, key_b) = pki.leaf(&[host], 60);
    let (status, body) = customer
        .import(
            &api,
            host,
            &chain(&pki, &leaf_b),
            &key_b,
            "?wait=propagated",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["propagation"]["propagated"], true, "{body:#}");
    assert_eq!(body["propagation"]["edges_live"], 3);
    for edge in &edges {
        assert_eq!(
            probe(edge.addrs.https, host, &roots).await,
            Served::Leaf(der_of(&leaf_b))
        );
    }

    // The platform says which revision each edge serves.
    let (status, list) = api
        .send(Method::GET, "/v1/edges", Some(&api.admin), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let listed = list["edges"].as_array().expect("edges");
    assert_eq!(listed.len(), 3, "{list:#}");
    for e in listed {
        assert_eq!(e["revision"], list["revision"], "{list:#}");
        assert_eq!(e["connected"], true);
        assert!(e["last_seen"].as_str().is_some_and(|s| s.ends_with('Z')));
    }

    // Delete: every edge refuses the name.
    let (status, _) = customer.delete(&api, host, "?wait=propagated").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for edge in &edges {
        match probe(edge.addrs.https, host, &roots).await {
            Served::Refused(why) => assert!(
                why.contains("AccessDenied") || why.contains("access"),
                "{why}"
            ),
            other => panic!("deleted name still served: {other:?}"),
        }
    }
    let metrics = edges[0].metrics().await;
    assert!(
        metrics.contains("certplane_edge_handshakes_total{result=\"ok\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("certplane_edge_handshakes_total{result=\"unknown_sni\"} 2\n"),
        "{metrics}"
    );
    // The deletion was the last change: every edge serves the log's newest revision.
    let latest = api.store().latest_revision().await.expect("revision");
    assert!(latest > list["revision"].as_i64().expect("revision"));
    for edge in &edges {
        let metrics = edge.metrics().await;
        assert!(
            metrics.contains(&format!("certplane_edge_revision {latest}\n")),
            "{metrics}"
        );
    }
    for edge in edges {
        edge.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_replace_delete_reach_all_three_edges_sqlite() {
    import_replace_delete_reach_all_three_edges(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_replace_delete_reach_all_three_edges_postgres() {
    import_replace_delete_reach_all_three_edges(TestDb::postgres().await).await;
}

/// Re-starts `api` with the DNS server of `dns` (the checks need it).
async fn api_with(dns: &ChallTestSrv) -> TestApi {
    TestApi::start_with_dns(TestDb::sqlite().await, &[dns.dns]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_restarted_after_50_changes_serves_exactly_the_final_state() {
    let dns = ChallTestSrv::start();
    let api = api_with(&dns).await;
    let customer = Customer::new(&api, dns, &[]).await;
    let pki = Pki::new();
    let roots = roots(&pki);
    let hosts: Vec<String> = (0..5).map(|i| format!("h{i}.restart.test")).collect();
    for host in &hosts {
        let (leaf, key) = pki.leaf(&[host], 90);
        let (status, body) = customer
            .import(&api, host, &chain(&pki, &leaf), &key, "")
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        customer.prove(&api, host, "").await;
    }
    let edge = TestEdge::start(&api.base, &api.admin, "restarted").await;
    edge.stop().await;

    // 50 changes while the edge is down: imports, replacements, deletions.
    let mut expected: Vec<Option<String>> = vec![None; hosts.len()];
    for round in 0..50 {
        let i = round % hosts.len();
        let host = &hosts[i];
        if round % 7 == 6 && expected[i].is_some() {
            let (status, _) = customer.delete(&api, host, "").await;
            assert_eq!(status, StatusCode::NO_CONTENT);
            expected[i] = None;
        } else {
            let (leaf, key) = pki.leaf(&[host], 30 + round as i64);
            let (status, body) = customer
                .import(&api, host, &chain(&pki, &leaf), &key, "")
                .await;
            assert!(status.is_success(), "{body}");
            if expected[i].is_none() || status == StatusCode::CREATED {
                customer.prove(&api, host, "").await;
            }
            expected[i] = Some(leaf);
        }
    }
    assert!(
        expected.iter().any(Option::is_none),
        "some names end deleted"
    );

    // Started again: it serves the final state before it accepts a connection (no waiting).
    let edge = TestEdge::start(&api.base, &api.admin, "restarted").await;
    for (host, leaf) in hosts.iter().zip(&expected) {
        let served = probe(edge.addrs.https, host, &roots).await;
        match leaf {
            Some(leaf) => assert_eq!(served, Served::Leaf(der_of(leaf)), "{host}"),
            None => assert!(refused(&served), "{host}: {served:?}"),
        }
    }
    edge.stop().await;
}

/// A TCP relay between an edge and the control plane, which the test can cut.
struct Relay {
    addr: SocketAddr,
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (cut, cut_rx) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut cut = cut_rx.clone();
                cut.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { addr, cut, task }
    }

    /// Breaks every connection open now.
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_whose_stream_breaks_reconnects_and_catches_up() {
    let dns = ChallTestSrv::start();
    let api = api_with(&dns).await;
    let customer = Customer::new(&api, dns, &[]).await;
    let pki = Pki::new();
    let roots = roots(&pki);
    let host = "www.reconnect.test";
    let (leaf, key) = pki.leaf(&[host], 90);
    customer
        .import(&api, host, &chain(&pki, &leaf), &key, "")
        .await;
    customer.prove(&api, host, "").await;
    let gone = "gone.reconnect.test";
    let (gone_leaf, gone_key) = pki.leaf(&[gone], 90);
    customer
        .import(&api, gone, &chain(&pki, &gone_leaf), &gone_key, "")
        .await;
    customer.prove(&api, gone, "").await;

    let control_plane: SocketAddr = api
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let relay = Relay::start(control_plane).await;
    let edge = TestEdge::start(&format!("http://{}", relay.addr), &api.admin, "flaky").await;
    assert_eq!(
        probe(edge.addrs.https, host, &roots).await,
        Served::Leaf(der_of(&leaf))
    );

    assert_eq!(
        probe(edge.addrs.https, gone, &roots).await,
        Served::Leaf(der_of(&gone_leaf))
    );

    // The stream breaks; meanwhile one certificate is deleted, then the other replaced.
    relay.cut();
    let (status, _) = customer.delete(&api, gone, "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (leaf2, key2) = pki.leaf(&[host], 45);
    let (status, _) = customer
        .import(&api, host, &chain(&pki, &leaf2), &key2, "")
        .await;
    assert_eq!(status, StatusCode::OK);
    // The edge reconnects (back-off from 100 ms) and catches up: bounded wait.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if probe(edge.addrs.https, host, &roots).await == Served::Leaf(der_of(&leaf2)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edge did not catch up within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It resumed (no snapshot) and the deletion, logged before the replacement, is applied.
    assert!(refused(&probe(edge.addrs.https, gone, &roots).await));
    let metrics = edge.metrics().await;
    let reconnects: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("certplane_edge_reconnects_total "))
        .and_then(|v| v.parse().ok())
        .expect("reconnect counter");
    assert!(reconnects >= 1, "{metrics}");
    assert!(
        metrics.contains("certplane_edge_snapshots_total 1\n"),
        "resumed from its revision, no second snapshot: {metrics}"
    );
    assert!(
        metrics.contains("certplane_edge_control_plane_connected 1\n"),
        "{metrics}"
    );
    edge.stop().await;
}

/// Stores an ACME certificate as issuance will.
async fn store_acme(
    api: &TestApi,
    customer: &Customer,
    host: &str,
    leaf_chain: &str,
    key: &str,
    key_type: &str,
    not_after: i64,
) {
    let store = api.store();
    let principal = store
        .principal(&certplane_domain::ApiToken::presented(&customer.org).hash())
        .await
        .expect("lookup")
        .expect("org");
    let app = store
        .app(
            principal.org.id,
            &certplane_domain::AppName::parse(&customer.app).expect("name"),
        )
        .await
        .expect("app")
        .expect("exists");
    let hostname = Hostname::parse(host).expect("valid");
    let sealed = api
        .keys
        .seal(
            key.as_bytes(),
            &certplane_store::sealing_context(
                &hostname,
                certplane_store::CertSource::Acme,
                key_type,
            ),
        )
        .expect("seal");
    store
        .store_acme_certificate(
            app.id,
            &hostname,
            &certplane_store::NewCertificate {
                source: certplane_store::CertSource::Acme,
                key_type: key_type.into(),
                chain_pem: leaf_chain.into(),
                key_id: sealed.key_id,
                key_sealed: sealed.blob,
                not_before: now() - DAY,
                not_after,
                issuer: "test".into(),
                fingerprint: format!("acme-{key_type}"),
                warnings: "[]".into(),
            },
        )
        .await
        .expect("stored")
        .expect("hostname exists");
    api.propagation.poke();
}

/// Waits until `check` holds for what the edge serves `host` (for changes made behind the
/// API's back, which has no `wait` to give).
async fn until_served(
    addr: SocketAddr,
    host: &str,
    roots: &Arc<RootCertStore>,
    offer: Offer,
    want: &Served,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = probe_with(addr, Some(host), roots, offer).await;
        let matches = match (want, &got) {
            (Served::Refused(_), got) => refused(got),
            _ => &got == want,
        };
        if matches {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{host}: wanted {want:?}, got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_selection_by_name_key_type_source_and_validity() {
    let dns = ChallTestSrv::start();
    let api = api_with(&dns).await;
    let customer = Customer::new(&api, dns, &[]).await;
    let pki = Pki::new();
    let roots = roots(&pki);
    let edge = TestEdge::start(&api.base, &api.admin, "selector").await;
    let at = edge.addrs.https;

    // Wildcard and exact.
    let (wild, wild_key) = pki.leaf(&["*.wild.test"], 90);
    customer
        .import(&api, "*.wild.test", &chain(&pki, &wild), &wild_key, "")
        .await;
    customer.prove(&api, "*.wild.test", "").await;
    let (exact, exact_key) = pki.leaf(&["exact.wild.test"], 90);
    customer
        .import(
            &api,
            "exact.wild.test",
            &chain(&pki, &exact),
            &exact_key,
            "",
        )
        .await;
    customer
        .prove(&api, "exact.wild.test", "?wait=propagated")
        .await;
    assert_eq!(
        probe(at, "a.wild.test", &roots).await,
        Served::Leaf(der_of(&wild))
    );
    assert_eq!(
        probe(at, "exact.wild.test", &roots).await,
        Served::Leaf(der_of(&exact))
    );
    assert!(
        refused(&probe(at, "b.c.wild.test", &roots).await),
        "one label only"
    );
    assert!(
        refused(&probe(at, "wild.test", &roots).await),
        "not the base name"
    );

    // ECDSA or RSA by what the client offers (an ACME pair), custom first where it fits.
    let host = "pair.select.test";
    let (ec, ec_key) = pki.leaf_with(&[host], None, now() - DAY, now() + 60 * DAY);
    let (rsa, rsa_key) = pki.leaf_with(&[host], Some(2048), now() - DAY, now() + 60 * DAY);
    let (status, _) = api
        .send(
            Method::POST,
            &format!("/v1/apps/{}/certificates/acme", customer.app),
            Some(&customer.org),
            Some(json!({"hostname": host})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    customer.prove(&api, host, "").await;
    store_acme(
        &api,
        &customer,
        host,
        &chain(&pki, &ec),
        &ec_key,
        "ecdsa",
        now() + 60 * DAY,
    )
    .await;
    store_acme(
        &api,
        &customer,
        host,
        &chain(&pki, &rsa),
        &rsa_key,
        "rsa",
        now() + 60 * DAY,
    )
    .await;
    until_served(
        at,
        host,
        &roots,
        Offer::RsaOnly,
        &Served::Leaf(der_of(&rsa)),
    )
    .await;
    assert_eq!(
        probe_with(at, Some(host), &roots, Offer::EcdsaOnly).await,
        Served::Leaf(der_of(&ec))
    );
    assert_eq!(
        probe_with(at, Some(host), &roots, Offer::Any).await,
        Served::Leaf(der_of(&ec)),
        "ECDSA first"
    );
    let (custom, custom_key) = pki.leaf(&[host], 90);
    let (status, body) = customer
        .import(
            &api,
            host,
            &chain(&pki, &custom),
            &custom_key,
            "?wait=propagated",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        probe_with(at, Some(host), &roots, Offer::Any).await,
        Served::Leaf(der_of(&custom)),
        "custom over ACME"
    );
    assert_eq!(
        probe_with(at, Some(host), &roots, Offer::EcdsaOnly).await,
        Served::Leaf(der_of(&custom))
    );
    assert_eq!(
        probe_with(at, Some(host), &roots, Offer::RsaOnly).await,
        Served::Leaf(der_of(&rsa)),
        "an RSA-only client gets the ACME RSA certificate the ECDSA custom one cannot serve"
    );

    // Expired never: an ACME certificate that expired is not served, even as the only one.
    let old = "old.select.test";
    let (expired, expired_key) = pki.leaf_with(&[old], None, now() - 90 * DAY, now() - DAY);
    api.send(
        Method::POST,
        &format!("/v1/apps/{}/certificates/acme", customer.app),
        Some(&customer.org),
        Some(json!({"hostname": old})),
    )
    .await;
    customer.prove(&api, old, "").await;
    store_acme(
        &api,
        &customer,
        old,
        &chain(&pki, &expired),
        &expired_key,
        "ecdsa",
        now() - DAY,
    )
    .await;
    // The change has reached the edge when its revision has.
    let revision = api.store().latest_revision().await.expect("revision");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !edge
        .metrics()
        .await
        .contains(&format!("certplane_edge_revision {revision}\n"))
    {
        assert!(
            Instant::now() < deadline,
            "edge did not reach revision {revision}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        refused(&probe(at, old, &roots).await),
        "expired is never served"
    );

    // Unknown names and no SNI at all are refused: no default certificate.
    assert!(refused(&probe(at, "unknown.example.test", &roots).await));
    assert!(refused(&probe_with(at, None, &roots, Offer::Any).await));
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains("certplane_edge_handshakes_total{result=\"no_sni\"} 1\n"),
        "{metrics}"
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_propagated_times_out_while_an_edge_does_not_acknowledge() {
    let dns = ChallTestSrv::start();
    let api = api_with(&dns).await;
    let customer = Customer::new(&api, dns, &[]).await;
    let pki = Pki::new();
    let roots = roots(&pki);
    let host = "www.wait.test";
    let edge = TestEdge::start(&api.base, &api.admin, "good").await;

    // A stuck edge: it opens the stream and never acknowledges anything.
    let pair = certplane_events::transport::EdgeKeyPair::generate().expect("key pair");
    let stuck = reqwest::Client::new()
        .get(format!("{}/v1/edges/stream?edge_id=stuck-edge", api.base))
        .bearer_auth(&api.admin)
        .header(certplane_events::EDGE_KEY_HEADER, pair.public_base64())
        .send()
        .await
        .expect("stream opens");
    assert_eq!(stuck.status(), StatusCode::OK);

    let (leaf, key) = pki.leaf(&[host], 90);
    customer
        .import(&api, host, &chain(&pki, &leaf), &key, "")
        .await;
    customer.dns.add_aaaa(host, &[&customer.ipv6]).await;
    let started = Instant::now();
    let (status, body) = api
        .send(
            Method::POST,
            &format!(
                "/v1/apps/{}/certificates/{host}/check?wait=propagated&timeout=2",
                customer.app
            ),
            Some(&customer.org),
            None,
        )
        .await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(code(&body), "PROPAGATION_TIMEOUT");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("stuck-edge") && !message.contains("good"),
        "{message}"
    );
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    // The change itself is saved, and the good edge serves it.
    assert_eq!(
        probe(edge.addrs.https, host, &roots).await,
        Served::Leaf(der_of(&leaf))
    );

    // Its stream closing is not enough: an edge whose stream broke still serves its old state
    // (and keeps acking while it reconnects), so it is still waited for...
    drop(stuck);
    let stuck_view = |list: &Value| {
        list["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .find(|e| e["id"] == "stuck-edge")
            .cloned()
            .expect("stuck-edge listed")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, list) = api
            .send(Method::GET, "/v1/edges", Some(&api.admin), None)
            .await;
        let view = stuck_view(&list);
        if view["connected"] == false {
            assert_eq!(view["live"], true, "{list:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream is still open: {list:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...until it says it is leaving (what `certplane edge` does when it stops).
    let (status, body) = api
        .send(
            Method::POST,
            "/v1/edges/stuck-edge/ack",
            Some(&api.admin),
            Some(json!({"revision": 0, "leaving": true})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (_, list) = api
        .send(Method::GET, "/v1/edges", Some(&api.admin), None)
        .await;
    assert_eq!(stuck_view(&list)["live"], false, "{list:#}");
    // An ack of a revision the log does not have is refused.
    let (status, body) = api
        .send(
            Method::POST,
            "/v1/edges/stuck-edge/ack",
            Some(&api.admin),
            Some(json!({"revision": i64::MAX})),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "REVISION_OUT_OF_RANGE")
    );
    let (leaf2, key2) = pki.leaf(&[host], 80);
    let (status, body) = customer
        .import(
            &api,
            host,
            &chain(&pki, &leaf2),
            &key2,
            "?wait=propagated&timeout=5",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        probe(edge.addrs.https, host, &roots).await,
        Served::Leaf(der_of(&leaf2))
    );

    // Malformed waits are refused before anything changes.
    let (status, body) = customer
        .import(&api, host, &chain(&pki, &leaf), &key, "?wait=soon")
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "WAIT_INVALID")
    );
    let (status, body) = customer
        .import(
            &api,
            host,
            &chain(&pki, &leaf),
            &key,
            "?wait=propagated&timeout=0",
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "WAIT_TIMEOUT_OUT_OF_RANGE"
        )
    );
    assert_eq!(
        probe(edge.addrs.https, host, &roots).await,
        Served::Leaf(der_of(&leaf2))
    );
    // A stopped edge said goodbye: no longer waited for.
    edge.stop().await;
    let (_, list) = api
        .send(Method::GET, "/v1/edges", Some(&api.admin), None)
        .await;
    let good = list["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .find(|e| e["id"] == "good")
        .cloned()
        .expect("good listed");
    assert_eq!(
        (good["connected"].clone(), good["live"].clone()),
        (json!(false), json!(false)),
        "{list:#}"
    );
}

/// A backend that answers with the request's headers as JSON.
async fn echo_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().fallback(|request: axum::extract::Request| async move {
        let headers: serde_json::Map<String, Value> = request
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), Value::from(v.to_str().unwrap_or(""))))
            .collect();
        axum::Json(json!({
            "path": request.uri().to_string(),
            "version": format!("{:?}", request.version()),
            "headers": headers,
        }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_backend_with_forwarding_headers_and_a_dead_one_gives_502() {
    let (backend, _backend_task) = echo_backend().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let dns = ChallTestSrv::start();
    let api = api_with(&dns).await;
    let customer = Customer::new(&api, dns, &[backend.to_string()]).await;
    let pki = Pki::new();
    let host = "www.proxy.test";
    let (leaf, key) = pki.leaf(&[host], 90);
    customer
        .import(&api, host, &chain(&pki, &leaf), &key, "")
        .await;
    customer.prove(&api, host, "").await;
    let edge = TestEdge::start(&api.base, &api.admin, "proxying").await;
    let root = reqwest::Certificate::from_pem(pki.root_pem().as_bytes()).expect("root");
    let client = |http1: bool| {
        let b = reqwest::Client::builder()
            .resolve(host, edge.addrs.https)
            .add_root_certificate(root.clone())
            .redirect(reqwest::redirect::Policy::none());
        let b = if http1 { b.http1_only() } else { b };
        b.build().expect("client")
    };
    let url = format!("https://{host}:{}/some/path?x=1", edge.addrs.https.port());
    for http1 in [true, false] {
        let response = client(http1).get(&url).send().await.expect("answer");
        assert_eq!(response.status(), StatusCode::OK);
        let want = if http1 {
            reqwest::Version::HTTP_11
        } else {
            reqwest::Version::HTTP_2
        };
        assert_eq!(response.version(), want);
        let body: Value = response.json().await.expect("json");
        let headers = &body["headers"];
        assert_eq!(body["path"], "/some/path?x=1", "{body:#}");
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{body:#}");
        assert_eq!(headers["x-forwarded-proto"], "https");
        // As the client wrote it, port included (the edge listens on a test port here).
        assert_eq!(
            headers["x-forwarded-host"],
            format!("{host}:{}", edge.addrs.https.port()).as_str()
        );
        assert!(
            headers["host"]
                .as_str()
                .is_some_and(|h| h.starts_with(host)),
            "{body:#}"
        );
    }
    // Plain HTTP: redirected to HTTPS, keeping path and query.
    let plain = reqwest::Client::builder()
        .resolve(host, edge.addrs.http)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = plain
        .get(format!("http://{host}:{}/a/b?c=d", edge.addrs.http.port()))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        response.headers()["location"],
        format!("https://{host}:{}/a/b?c=d", edge.addrs.https.port()).as_str()
    );

    // Only dead backends: a clear 502.
    let (status, body) = api
        .send(
            Method::PATCH,
            &format!("/v1/apps/{}", customer.app),
            Some(&customer.org),
            Some(json!({"backends": [dead.to_string()]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.propagation.poke();
    let deadline = Instant::now() + Duration::from_secs(10);
    let response = loop {
        let response = client(true).get(&url).send().await.expect("answer");
        if response.status() != StatusCode::OK {
            break response;
        }
        assert!(Instant::now() < deadline, "backend change not applied");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let page = response.text().await.expect("page");
    assert!(page.contains("502") && page.contains(host), "{page}");
    assert!(
        !page.contains(&dead.to_string()),
        "no internal address leaks: {page}"
    );
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains("certplane_edge_requests_total{result=\"bad_gateway\"} 1\n"),
        "{metrics}"
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_answer_http_01_and_tls_alpn_01_challenges() {
    let api = TestApi::start(TestDb::sqlite().await).await;
    let edge = TestEdge::start(&api.base, &api.admin, "challenges").await;
    let store = api.store();
    let host = "issue.challenge.test";
    let hostname = Hostname::parse(host).expect("valid");
    store
        .put_challenge(&ChallengeRecord {
            hostname: hostname.clone(),
            kind: ChallengeKind::Http01,
            token: "tok-123".into(),
            key_authorization: "tok-123.thumb".into(),
            expires_at: now() + 3600,
        })
        .await
        .expect("challenge stored");
    store
        .put_challenge(&ChallengeRecord {
            hostname: hostname.clone(),
            kind: ChallengeKind::TlsAlpn01,
            token: "alpn-tok".into(),
            key_authorization: "alpn-tok.thumb".into(),
            expires_at: now() + 3600,
        })
        .await
        .expect("challenge stored");
    api.propagation.poke();
    let client = reqwest::Client::builder()
        .resolve(host, edge.addrs.http)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let url = format!(
        "http://{host}:{}/.well-known/acme-challenge/tok-123",
        edge.addrs.http.port()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let response = client.get(&url).send().await.expect("answer");
        if response.status() == StatusCode::OK {
            break response.text().await.expect("text");
        }
        assert!(Instant::now() < deadline, "challenge not propagated");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(answer, "tok-123.thumb");
    let other = client
        .get(format!(
            "http://{host}:{}/.well-known/acme-challenge/nope",
            edge.addrs.http.port()
        ))
        .send()
        .await
        .expect("answer");
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    // Without a certificate the name is not redirected to HTTPS.
    let plain = client
        .get(format!("http://{host}:{}/", edge.addrs.http.port()))
        .send()
        .await
        .expect("answer");
    assert_eq!(plain.status(), StatusCode::NOT_FOUND);

    // TLS-ALPN-01: the validation certificate for exactly that name, with the acmeIdentifier.
    // Each challenge is its own change: the feed may have sent the HTTP-01 one first.
    let deadline = Instant::now() + Duration::from_secs(10);
    let cert = loop {
        match alpn_handshake(edge.addrs.https, host).await {
            Ok(cert) => break cert,
            Err(e) => assert!(Instant::now() < deadline, "acme-tls/1 handshake: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let oid = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
    assert!(cert.windows(oid.len()).any(|w| w == oid));
    let digest = ring_sha256(b"alpn-tok.thumb");
    assert!(cert.windows(32).any(|w| w == digest));
    assert!(
        alpn_handshake(edge.addrs.https, "other.challenge.test")
            .await
            .is_err()
    );

    // Removed challenges stop being answered.
    assert!(
        store
            .remove_challenge(&hostname, ChallengeKind::Http01, "tok-123")
            .await
            .expect("removed")
    );
    api.propagation.poke();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(&url).send().await.expect("answer").status() != StatusCode::NOT_FOUND {
        assert!(Instant::now() < deadline, "removal not propagated");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    edge.stop().await;
}

fn ring_sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

/// Accepts any certificate: the ACME CA checks the validation certificate's content, not its
/// chain, and so does this test.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    // webpki refuses to parse a certificate with the critical acmeIdentifier extension, so the
    // handshake signature is not checked here either (an ACME CA checks it its own way).
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn alpn_handshake(addr: SocketAddr, host: &str) -> Result<Vec<u8>, String> {
    let provider = provider(Offer::Any);
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let stream = connector
        .connect(
            ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?,
            tcp,
        )
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = stream.get_ref();
    assert_eq!(conn.alpn_protocol(), Some(&b"acme-tls/1"[..]));
    Ok(conn.peer_certificates().ok_or("no certificate")?[0]
        .as_ref()
        .to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_tokens_follow_the_stream_only_and_keys_never_travel_in_clear() {
    let dns = ChallTestSrv::start();
    let api = api_with(&dns).await;
    let customer = Customer::new(&api, dns, &[]).await;
    let pki = Pki::new();
    let host = "www.sealed.test";
    let (leaf, key) = pki.leaf(&[host], 90);
    customer
        .import(&api, host, &chain(&pki, &leaf), &key, "")
        .await;
    customer.prove(&api, host, "").await;
    let token = edge_token(&api).await;

    // An edge token opens no customer or admin route.
    for (method, path) in [
        (Method::GET, "/v1/apps".to_owned()),
        (
            Method::GET,
            format!("/v1/apps/{}/certificates", customer.app),
        ),
        (Method::GET, "/v1/edges".to_owned()),
        (Method::POST, "/v1/edges/tokens".to_owned()),
    ] {
        let (status, body) = api.send(method, &path, Some(&token), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
    }
    // An org token cannot follow the stream; the stream needs the edge's key.
    let client = reqwest::Client::new();
    let url = format!("{}/v1/edges/stream?edge_id=probe", api.base);
    let pair = certplane_events::transport::EdgeKeyPair::generate().expect("key pair");
    let refused = client
        .get(&url)
        .bearer_auth(&customer.org)
        .header(certplane_events::EDGE_KEY_HEADER, pair.public_base64())
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let no_key = client
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("answer");
    assert_eq!(no_key.status(), StatusCode::BAD_REQUEST);
    let bad_id = client
        .get(format!("{}/v1/edges/stream?edge_id=a%20b", api.base))
        .bearer_auth(&token)
        .header(certplane_events::EDGE_KEY_HEADER, pair.public_base64())
        .send()
        .await
        .expect("answer");
    assert_eq!(bad_id.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // The raw stream: the snapshot carries the certificate, and its key only sealed.
    let mut stream = client
        .get(&url)
        .bearer_auth(&token)
        .header(certplane_events::EDGE_KEY_HEADER, pair.public_base64())
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), StatusCode::OK);
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text.contains("snapshot_end") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("chunk in time")
            .expect("chunk")
            .expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        assert!(Instant::now() < deadline);
    }
    assert!(
        text.contains(host) && text.contains("BEGIN CERTIFICATE"),
        "{text}"
    );
    let key_der = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
    let key_b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(key_der.secret_der())
    };
    assert!(!text.contains("PRIVATE KEY"), "a key travelled in clear");
    assert!(!text.contains(&key_b64[..40]), "a key travelled in clear");
    // The sealed key opens with this stream's key, and is the certificate's key.
    let hello: Value = serde_json::from_str(text.lines().next().expect("hello")).expect("json");
    let stream_key = pair
        .agree(hello["server_key"].as_str().expect("server key"))
        .expect("agreed");
    let host_line: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "host")
        .expect("host event");
    let sealed = host_line["host"]["certificates"][0]["key_sealed"]
        .as_str()
        .expect("sealed key");
    let aad = certplane_events::EdgeCertificate::sealing_context(
        host,
        certplane_events::CertSource::Custom,
        "ecdsa",
    );
    let opened = stream_key
        .open(sealed, &aad)
        .expect("opens with the stream key");
    assert_eq!(
        rustls::pki_types::PrivateKeyDer::from_pem_slice(&opened)
            .expect("PEM key")
            .secret_der(),
        key_der.secret_der()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_behind_a_compacted_log_takes_a_fresh_snapshot() {
    let dns = ChallTestSrv::start();
    let api = api_with(&dns).await;
    let customer = Customer::new(&api, dns, &[]).await;
    let pki = Pki::new();
    let roots = roots(&pki);
    let hosts = ["a.compact.test", "b.compact.test"];
    let mut leaves = Vec::new();
    for host in hosts {
        let (leaf, key) = pki.leaf(&[host], 90);
        customer
            .import(&api, host, &chain(&pki, &leaf), &key, "")
            .await;
        customer.prove(&api, host, "").await;
        leaves.push(leaf);
    }
    let control_plane: SocketAddr = api
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let relay = Relay::start(control_plane).await;
    let edge = TestEdge::start(&format!("http://{}", relay.addr), &api.admin, "behind").await;
    assert_eq!(
        probe(edge.addrs.https, hosts[0], &roots).await,
        Served::Leaf(der_of(&leaves[0]))
    );
    // While it is cut off: a deletion and a replacement, then the log is compacted to nothing,
    // so the changes after the edge's revision are gone from it.
    relay.cut();
    let (status, _) = customer.delete(&api, hosts[0], "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (leaf_b2, key_b2) = pki.leaf(&[hosts[1]], 30);
    customer
        .import(&api, hosts[1], &chain(&pki, &leaf_b2), &key_b2, "")
        .await;
    let removed = api.store().compact_revisions(0).await.expect("compacted");
    assert!(removed > 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while probe(edge.addrs.https, hosts[1], &roots).await != Served::Leaf(der_of(&leaf_b2)) {
        assert!(Instant::now() < deadline, "the edge did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused(&probe(edge.addrs.https, hosts[0], &roots).await));
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains("certplane_edge_snapshots_total 2\n"),
        "a second snapshot replaced the resume: {metrics}"
    );
    edge.stop().await;
}

/// Two control planes over one PostgreSQL database: an edge follows the first; a change made
/// through the second reaches it (the first's feed polls the shared log), and the second's
/// `?wait=propagated` sees the edge's acks through the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_two_control_planes_propagates_through_the_shared_log() {
    let dns = ChallTestSrv::start();
    let first = TestApi::start_with_dns(TestDb::postgres().await, &[dns.dns]).await;
    let second = first.peer().await;
    let customer = Customer::new(&first, dns, &[]).await;
    let pki = Pki::new();
    let roots = roots(&pki);
    let host = "www.fleet.test";
    let (leaf, key) = pki.leaf(&[host], 90);
    customer
        .import(&first, host, &chain(&pki, &leaf), &key, "")
        .await;
    customer.prove(&first, host, "").await;
    let edge = TestEdge::start(&first.base, &first.admin, "fleet-edge").await;
    assert_eq!(
        probe(edge.addrs.https, host, &roots).await,
        Served::Leaf(der_of(&leaf))
    );
    // The edge's acks reach the second control plane through the store.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, list) = second
            .send(Method::GET, "/v1/edges", Some(&first.admin), None)
            .await;
        let seen = list["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .any(|e| e["id"] == "fleet-edge" && e["live"] == true && e["connected"] == false);
        if seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second control plane does not see the edge: {list:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A replacement through the second control plane, waiting for every live edge.
    let (leaf2, key2) = pki.leaf(&[host], 45);
    let (status, body) = customer
        .import(
            &second,
            host,
            &chain(&pki, &leaf2),
            &key2,
            "?wait=propagated&timeout=10",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["propagation"]["propagated"], true, "{body:#}");
    assert_eq!(body["propagation"]["edges_live"], 1, "{body:#}");
    assert_eq!(
        probe(edge.addrs.https, host, &roots).await,
        Served::Leaf(der_of(&leaf2))
    );
    edge.stop().await;
}
