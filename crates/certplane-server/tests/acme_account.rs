//! The platform's ACME account against real Pebble: created once, stored sealed, restored.

use std::net::SocketAddr;

use certplane_acme::AcmeClientConfig;
use certplane_secrets::MasterKeys;
use certplane_test_support::TestDb;
use certplane_test_support::pebble::{Pebble, PebbleOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_is_created_once_stored_sealed_and_restored() {
    let pebble = Pebble::start(PebbleOptions::new(
        SocketAddr::from(([127, 0, 0, 1], 9)),
        5002,
        5001,
    ));
    let db = TestDb::sqlite().await;
    let store = db.store();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = MasterKeys::load_or_create(&dir.path().join("master-keys")).expect("keys");
    let config = AcmeClientConfig {
        directory_url: pebble.directory_url(),
        ca_root_pem: Some(pebble.ca_pem()),
        contact: vec!["mailto:ops@example.test".into()],
        eab: None,
    };
    let created = certplane_server::acme_account(store.as_ref(), &keys, &config)
        .await
        .expect("account created");
    let record = store
        .acme_account(&config.directory_url)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(record.account_url, created.id());
    // Sealed: the stored bytes hold neither the JSON field names nor the key.
    let raw = String::from_utf8_lossy(&record.credentials_sealed);
    assert!(
        !raw.contains("key_pkcs8") && !raw.contains(created.id()),
        "{raw}"
    );

    // A restart restores the same account instead of creating another.
    let restored = certplane_server::acme_account(store.as_ref(), &keys, &config)
        .await
        .expect("account restored");
    assert_eq!(restored.id(), created.id());
    assert_eq!(restored.key_thumbprint(), created.key_thumbprint());
    assert_eq!(
        pebble.log().matches("POST /sign-me-up").count(),
        1,
        "one account created at the CA: {}",
        pebble.log()
    );

    // Other master keys cannot open the stored credentials: a clear error, no new account.
    let other = MasterKeys::load_or_create(&dir.path().join("other-keys")).expect("keys");
    let refused = certplane_server::acme_account(store.as_ref(), &other, &config).await;
    assert!(refused.is_err());
}
