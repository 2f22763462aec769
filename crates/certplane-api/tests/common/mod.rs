//! The API under test: a real router on a real store, served over loopback HTTP.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use certplane_api::ApiDeps;
use certplane_domain::{ApiToken, Hostname, PlatformSettings};
use certplane_ownership::{Checker, ProxyRanges, Verifier};
use certplane_secrets::MasterKeys;
use certplane_store::Store;
use certplane_test_support::TestDb;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub struct TestApi {
    store: Arc<dyn Store>,
    pub keys: Arc<MasterKeys>,
    _keys_dir: tempfile::TempDir,
    pub verifier: Arc<Verifier>,
    pub base: String,
    pub admin: String,
    pub client: reqwest::Client,
    _db: TestDb,
    server: tokio::task::JoinHandle<()>,
    pub propagation: Arc<certplane_api::Propagation>,
    _stop_feed: tokio::sync::watch::Sender<bool>,
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub fn platform() -> PlatformSettings {
    PlatformSettings {
        name: "certplane".into(),
        apps_domain: Hostname::parse("apps.plat.test").expect("valid"),
        challenge_zone: Hostname::parse("acme.plat.test").expect("valid"),
        ipv6_prefix: "fdaa::/48".parse().expect("valid"),
        shared_ipv4: vec!["203.0.113.10".parse().expect("valid")],
        dedicated_ipv4_pool: vec![
            "192.0.2.50".parse().expect("valid"),
            "192.0.2.51".parse().expect("valid"),
        ],
    }
}

impl TestApi {
    /// The API over `db`, its checks asking `nameservers` (a loopback port where nothing
    /// answers when the test does no DNS).
    pub async fn start_with_dns(db: TestDb, nameservers: &[SocketAddr]) -> Self {
        Self::start_with_keys(db, nameservers, None).await
    }

    /// Another control plane over the same database (a fleet on PostgreSQL), sharing this
    /// one's master keys. `self` owns the database and must outlive it.
    pub async fn peer(&self) -> Self {
        let db = self._db.peer().await;
        Self::start_with_keys(
            db,
            &[SocketAddr::from(([127, 0, 0, 1], 9))],
            Some(self.keys.clone()),
        )
        .await
    }

    async fn start_with_keys(
        db: TestDb,
        nameservers: &[SocketAddr],
        shared_keys: Option<Arc<MasterKeys>>,
    ) -> Self {
        let store: Arc<dyn Store> = db.store();
        let admin = ApiToken::generate();
        store.bootstrap_admin(&admin.hash()).await.expect("admin");
        let mut proxies = ProxyRanges::new();
        proxies.insert(
            "testcdn".into(),
            vec!["198.51.100.0/24".parse().expect("net")],
        );
        let checker =
            Checker::new(nameservers, proxies, vec!["letsencrypt.org".into()]).expect("checker");
        let platform = Arc::new(platform());
        let verifier = Arc::new(Verifier::new(store.clone(), checker, platform.clone()));
        let keys_dir = tempfile::tempdir().expect("tempdir");
        let keys = shared_keys.unwrap_or_else(|| {
            Arc::new(
                MasterKeys::load_or_create(&keys_dir.path().join("master-keys"))
                    .expect("master keys"),
            )
        });
        let store_handle = store.clone();
        let propagation = certplane_api::Propagation::new(store.clone(), keys.clone());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(propagation.clone().run_feed(stop_rx));
        let router = certplane_api::router(ApiDeps {
            store,
            platform,
            verifier: verifier.clone(),
            keys: keys.clone(),
            propagation: propagation.clone(),
            acme: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve");
        });
        Self {
            store: store_handle,
            keys,
            _keys_dir: keys_dir,
            verifier,
            base: format!("http://{addr}"),
            admin: admin.expose().to_owned(),
            client: reqwest::Client::new(),
            _db: db,
            server,
            propagation,
            _stop_feed: stop,
        }
    }

    pub async fn start(db: TestDb) -> Self {
        Self::start_with_dns(db, &[SocketAddr::from(([127, 0, 0, 1], 9))]).await
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    pub async fn sqlite() -> Self {
        Self::start(TestDb::sqlite().await).await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        };
        (status, value)
    }

    pub async fn org(&self, name: &str) -> String {
        let (status, body) = self
            .send(
                Method::POST,
                "/v1/orgs",
                Some(&self.admin),
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }

    pub async fn app(&self, token: &str, name: &str) -> Value {
        let (status, body) = self
            .send(
                Method::POST,
                "/v1/apps",
                Some(token),
                Some(json!({"app_name": name, "backends": ["127.0.0.1:9000"]})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    pub async fn add(&self, token: &str, app: &str, hostname: &str) -> (StatusCode, Value) {
        self.send(
            Method::POST,
            &format!("/v1/apps/{app}/certificates/acme"),
            Some(token),
            Some(json!({"hostname": hostname})),
        )
        .await
    }
}

pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}
