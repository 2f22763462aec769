//! ACME accounts against a real Pebble (Debian package `pebble` 2.4.0).

use std::net::SocketAddr;
use std::time::Duration;

use certplane_acme::{Accounts, AcmeClientConfig, AcmeError};
use certplane_test_support::dns::free_port;
use certplane_test_support::pebble::{Pebble, PebbleOptions};
use instant_acme::{Identifier, NewOrder, OrderStatus};

/// Every step gets a timeout (Pebble can stall).
const STEP: Duration = Duration::from_secs(30);

fn start_pebble() -> Pebble {
    // Nothing answers DNS on port 9: these tests make no validations.
    let dns: SocketAddr = "127.0.0.1:9".parse().expect("address");
    Pebble::start(PebbleOptions::new(dns, free_port(), free_port()))
}

fn config(pebble: &Pebble) -> AcmeClientConfig {
    AcmeClientConfig {
        directory_url: pebble.directory_url(),
        ca_root_pem: Some(pebble.ca_pem()),
        contact: vec!["mailto:ops@example.test".to_owned()],
        eab: None,
    }
}

async fn open(
    config: &AcmeClientConfig,
    stored: Option<&str>,
) -> Result<(instant_acme::Account, Option<String>), AcmeError> {
    tokio::time::timeout(STEP, Accounts::open(config, stored))
        .await
        .expect("Accounts::open finishes in time")
}

#[tokio::test]
async fn creates_then_restores_an_account() {
    let pebble = start_pebble();
    let config = config(&pebble);

    let (created, credentials) = open(&config, None).await.expect("account created");
    let credentials = credentials.expect("a new account returns credentials to store");
    let json: serde_json::Value = serde_json::from_str(&credentials).expect("credentials JSON");
    assert_eq!(json["directory"], pebble.directory_url().as_str());
    assert_eq!(json["id"], created.id());
    assert!(
        created.id().starts_with("https://127.0.0.1:"),
        "{}",
        created.id()
    );

    let (restored, again) = open(&config, Some(&credentials))
        .await
        .expect("account restored");
    assert!(
        again.is_none(),
        "a restored account has nothing new to store"
    );
    assert_eq!(restored.id(), created.id());
    assert_eq!(restored.key_thumbprint(), created.key_thumbprint());

    // The restored account signs requests the CA accepts.
    let identifiers = [Identifier::Dns("a.example.test".into())];
    let mut order = tokio::time::timeout(STEP, restored.new_order(&NewOrder::new(&identifiers)))
        .await
        .expect("new order finishes in time")
        .expect("order created with the restored account");
    assert_eq!(order.state().status, OrderStatus::Pending);
    assert_eq!(order.state().authorizations.len(), 1);

    // A second creation makes a second, different account.
    let (other, other_credentials) = open(&config, None).await.expect("second account");
    assert!(other_credentials.is_some());
    assert_ne!(other.id(), created.id());
}

#[tokio::test]
async fn stored_credentials_for_another_directory_are_refused() {
    let pebble = start_pebble();
    let config = config(&pebble);
    let (_, credentials) = open(&config, None).await.expect("account created");
    let credentials = credentials.expect("credentials");

    let other = AcmeClientConfig {
        directory_url: format!("{}/elsewhere", pebble.directory_url()),
        ..config
    };
    let error = open(&other, Some(&credentials))
        .await
        .err()
        .expect("credentials of another directory refused");
    assert!(
        matches!(error, AcmeError::DirectoryMismatch { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let pebble = start_pebble();
    let port = free_port();
    let config = AcmeClientConfig {
        directory_url: format!("https://127.0.0.1:{port}/dir"),
        ca_root_pem: Some(pebble.ca_pem()),
        contact: Vec::new(),
        eab: None,
    };
    let error = open(&config, None).await.err().expect("no CA at that port");
    assert!(matches!(error, AcmeError::Connect { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&config.directory_url), "{message}");
    assert!(message.to_lowercase().contains("refused"), "{message}");
}

#[tokio::test]
async fn an_untrusted_ca_is_a_tls_error() {
    let pebble = start_pebble();
    let config = AcmeClientConfig {
        ca_root_pem: None,
        ..config(&pebble)
    };
    let error = open(&config, None)
        .await
        .err()
        .expect("Pebble's test CA is not trusted");
    assert!(matches!(error, AcmeError::Tls { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("UnknownIssuer"), "{message}");
}

/// The account's order list (what recovers an order whose creation was cut short): every
/// order created is listed, across Pebble's pages of three.
#[tokio::test]
async fn the_account_lists_its_orders_across_pages() {
    let pebble = start_pebble();
    let (account, _) = open(&config(&pebble), None).await.expect("account");
    let mut created = Vec::new();
    for i in 0..7 {
        let ids = [Identifier::Dns(format!("o{i}.example.com"))];
        let order = tokio::time::timeout(STEP, account.new_order(&NewOrder::new(&ids)))
            .await
            .expect("in time")
            .expect("order");
        created.push(order.url().to_owned());
    }
    let listed = tokio::time::timeout(STEP, certplane_acme::account_orders(&account, 50))
        .await
        .expect("in time")
        .expect("listed")
        .expect("Pebble lists orders");
    for url in &created {
        assert!(listed.contains(url), "{url} not in {listed:?}");
    }
    assert_eq!(listed.len(), created.len(), "{listed:?}");
}

/// A CA that requires external account binding: the configured key id and HMAC key bind the
/// new account; without them the CA refuses, and a malformed key is reported without echoing it.
#[tokio::test]
async fn external_account_binding_when_the_ca_requires_it() {
    let dns: SocketAddr = "127.0.0.1:9".parse().expect("address");
    let key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let mut options = PebbleOptions::new(dns, free_port(), free_port());
    options.eab = Some(("kid-1".into(), key.into()));
    let pebble = Pebble::start(options);

    let error = open(&config(&pebble), None)
        .await
        .err()
        .expect("refused without a binding");
    assert!(
        matches!(&error, AcmeError::Rejected { problem, .. } if problem.r#type.as_deref().is_some_and(|t| t.ends_with("externalAccountRequired"))),
        "{error:?}"
    );

    let bound = AcmeClientConfig {
        eab: Some(("kid-1".into(), key.into())),
        ..config(&pebble)
    };
    let (account, credentials) = open(&bound, None).await.expect("bound account");
    assert!(credentials.is_some());
    assert!(account.id().starts_with("https://127.0.0.1:"));

    let malformed = AcmeClientConfig {
        eab: Some(("kid-1".into(), "not base64url!".into())),
        ..config(&pebble)
    };
    let error = open(&malformed, None).await.err().expect("malformed key");
    assert!(matches!(error, AcmeError::Eab { .. }), "{error:?}");
    assert!(!format!("{error:?}").contains("not base64url!"));
}
