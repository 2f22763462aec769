//! The one store test suite: every test runs against SQLite and against PostgreSQL.

use std::collections::HashSet;
use std::sync::Arc;

use certplane_domain::{
    ApiToken, AppName, Backend, CertificateStatus, DeleteScope, Hostname, Ipv6Prefix, OrgName,
    OrgSlug,
};
use certplane_store::{
    AcmeLedgerEntry, AcmeOrderState, AcmeOrderUpdate, AcmeRelease, AppId, CertSource,
    ChallengeKind, ChallengeRecord, CheckUpdate, DeleteOutcome, EdgeRecord, NewCertificate,
    OrderBudget, Org, Store, StoreError, TokenKind,
};
use certplane_test_support::TestDb;

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let db = certplane_test_support::TestDb::sqlite().await;
                    super::$test(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let db = certplane_test_support::TestDb::postgres().await;
                    super::$test(&db).await;
                }
            )*
        }
    };
}

suite!(
    admin_bootstrap_and_principals,
    orgs_are_unique_by_slug,
    apps_belong_to_their_org,
    addresses_and_tokens_are_never_reused,
    concurrent_app_creation_allocates_distinct_addresses,
    hostnames_are_unique_across_the_platform,
    pagination_returns_each_hostname_once,
    delete_scopes,
    deleting_an_app_releases_its_hostnames,
    data_survives_reopening,
    checks_move_status_and_schedule,
    dedicated_ipv4_addresses_are_recycled,
    custom_and_acme_certificates,
    concurrent_claims_take_each_check_once,
    serving_changes_are_logged_in_order,
    a_follower_never_misses_a_revision,
    edge_tokens_belong_to_the_admin_org,
    edges_report_their_revision,
    challenges_are_served_and_logged,
    edges_serve_certificates_of_verified_hostnames,
    edge_snapshot_pages_match_edge_host,
    revisions_per_hostname_and_compaction,
    the_log_keeps_one_identity,
    dns_challenge_values_add_up_and_expire,
    expired_challenges_are_purged_and_logged,
    one_acme_account_per_directory,
    acme_work_is_leased_to_one_worker,
    acme_orders_step_by_step,
);

fn prefix() -> Ipv6Prefix {
    "fdaa::/48".parse().expect("valid prefix")
}

fn app_name(name: &str) -> AppName {
    AppName::parse(name).expect("valid app name")
}

fn host(name: &str) -> Hostname {
    Hostname::parse(name).expect("valid hostname")
}

async fn org(store: &Arc<dyn Store>, name: &str) -> Org {
    let name = OrgName::parse(name).expect("valid org name");
    let slug = name.slug().expect("valid slug");
    store
        .create_org(&name, &slug, &ApiToken::generate().hash())
        .await
        .expect("org created")
}

async fn admin_bootstrap_and_principals(db: &TestDb) {
    let store = db.store();
    let admin_token = ApiToken::generate();
    let admin = store
        .bootstrap_admin(&admin_token.hash())
        .await
        .expect("bootstrap");
    assert!(admin.is_admin);
    // A second bootstrap (a restart that lost the token file) adds a token to the same org.
    let second_token = ApiToken::generate();
    let again = store
        .bootstrap_admin(&second_token.hash())
        .await
        .expect("bootstrap again");
    assert_eq!(again.id, admin.id);
    for token in [&admin_token, &second_token] {
        let p = store
            .principal(&token.hash())
            .await
            .expect("lookup")
            .expect("known");
        assert_eq!(p.kind, TokenKind::Admin);
        assert_eq!(p.org.id, admin.id);
    }

    let org_token = ApiToken::generate();
    let name = OrgName::parse("Acme Corp").expect("valid");
    let acme = store
        .create_org(&name, &name.slug().expect("slug"), &org_token.hash())
        .await
        .expect("org");
    assert_eq!(acme.slug.as_str(), "acme-corp");
    assert!(!acme.is_admin);
    assert_ne!(acme.token, admin.token);
    let p = store
        .principal(&org_token.hash())
        .await
        .expect("lookup")
        .expect("known");
    assert_eq!((p.kind, p.org), (TokenKind::Org, acme));

    let unknown = store
        .principal(&ApiToken::generate().hash())
        .await
        .expect("lookup");
    assert_eq!(unknown, None);
}

async fn orgs_are_unique_by_slug(db: &TestDb) {
    let store = db.store();
    let first = org(&store, "Acme").await;
    let token = ApiToken::generate();
    let name = OrgName::parse("ACME").expect("valid");
    let err = store
        .create_org(&name, &OrgSlug::parse("acme").expect("slug"), &token.hash())
        .await
        .expect_err("duplicate slug");
    assert!(matches!(err, StoreError::OrgTaken), "{err:?}");
    // Nothing of the refused org was written: its token authenticates nobody.
    assert_eq!(store.principal(&token.hash()).await.expect("lookup"), None);
    assert!(store.token_issued(&first.token).await.expect("ledger"));
}

async fn apps_belong_to_their_org(db: &TestDb) {
    let store = db.store();
    let a = org(&store, "Org A").await;
    let b = org(&store, "Org B").await;
    let backends = vec![Backend::parse("10.0.0.5:8080").expect("valid")];
    let web = store
        .create_app(a.id, &app_name("web"), &backends, &prefix(), None)
        .await
        .expect("app");
    assert_eq!(web.name.as_str(), "web");
    assert_eq!(web.org_id, a.id);
    assert_eq!(web.backends, backends);
    assert!(web.ipv6.to_string().starts_with("fdaa:"), "{}", web.ipv6);

    assert_eq!(
        store.app(a.id, &app_name("web")).await.expect("get"),
        Some(web.clone())
    );
    assert_eq!(store.app(b.id, &app_name("web")).await.expect("get"), None);
    assert_eq!(store.apps(a.id).await.expect("list"), vec![web.clone()]);
    assert!(store.apps(b.id).await.expect("list").is_empty());

    // App names are unique on the whole platform.
    let err = store
        .create_app(b.id, &app_name("web"), &[], &prefix(), None)
        .await
        .expect_err("taken");
    assert!(matches!(err, StoreError::AppNameTaken), "{err:?}");

    let new_backends = vec![
        Backend::parse("10.0.0.6:8080").expect("valid"),
        Backend::parse("web.internal:80").expect("valid"),
    ];
    assert_eq!(
        store
            .set_backends(b.id, &app_name("web"), &new_backends)
            .await
            .expect("patch"),
        None
    );
    let patched = store
        .set_backends(a.id, &app_name("web"), &new_backends)
        .await
        .expect("patch")
        .expect("found");
    assert_eq!(patched.backends, new_backends);
    assert_eq!(patched.ipv6, web.ipv6);

    assert!(
        !store
            .delete_app(b.id, &app_name("web"))
            .await
            .expect("delete")
    );
    assert!(
        store
            .delete_app(a.id, &app_name("web"))
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_app(a.id, &app_name("web"))
            .await
            .expect("delete")
    );
    assert_eq!(store.app(a.id, &app_name("web")).await.expect("get"), None);
}

async fn addresses_and_tokens_are_never_reused(db: &TestDb) {
    let store = db.store();
    let o = org(&store, "Churn").await;
    let mut addresses = HashSet::new();
    let mut tokens = HashSet::new();
    for i in 0..1000 {
        let name = app_name(&format!("churn-{i}"));
        let app = store
            .create_app(o.id, &name, &[], &prefix(), None)
            .await
            .expect("app");
        assert!(
            addresses.insert(app.ipv6),
            "address {} handed out twice",
            app.ipv6
        );
        assert!(tokens.insert(app.token.as_str().to_owned()), "token reused");
        assert!(store.delete_app(o.id, &name).await.expect("delete"));
        assert!(
            store.token_issued(&app.token).await.expect("ledger"),
            "ledger forgot a token"
        );
    }
    // The same names again, after every earlier app is gone.
    for i in 0..1000 {
        let name = app_name(&format!("churn-{i}"));
        let app = store
            .create_app(o.id, &name, &[], &prefix(), None)
            .await
            .expect("app");
        assert!(
            addresses.insert(app.ipv6),
            "address {} handed out twice",
            app.ipv6
        );
        assert!(tokens.insert(app.token.as_str().to_owned()), "token reused");
    }
    assert_eq!(addresses.len(), 2000);
    assert_eq!(tokens.len(), 2000);
    assert!(!tokens.contains(o.token.as_str()));
}

async fn concurrent_app_creation_allocates_distinct_addresses(db: &TestDb) {
    let store = db.store();
    let o = org(&store, "Parallel").await;
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create_app(o.id, &app_name(&format!("par-{i}")), &[], &prefix(), None)
                    .await
            })
        })
        .collect();
    let mut addresses = HashSet::new();
    for task in tasks {
        let app = task.await.expect("task").expect("app");
        assert!(addresses.insert(app.ipv6));
    }
    assert_eq!(addresses.len(), 32);
    assert_eq!(store.apps(o.id).await.expect("list").len(), 32);
}

async fn hostnames_are_unique_across_the_platform(db: &TestDb) {
    let store = db.store();
    let a = org(&store, "A").await;
    let b = org(&store, "B").await;
    let app_a = store
        .create_app(a.id, &app_name("a-web"), &[], &prefix(), None)
        .await
        .expect("app");
    let app_a2 = store
        .create_app(a.id, &app_name("a-api"), &[], &prefix(), None)
        .await
        .expect("app");
    let app_b = store
        .create_app(b.id, &app_name("b-web"), &[], &prefix(), None)
        .await
        .expect("app");

    let (rec, created) = store
        .request_acme(app_a.id, &host("www.example.com"))
        .await
        .expect("add");
    assert!(created);
    assert!(rec.acme_requested);
    assert_eq!(rec.status, CertificateStatus::PendingOwnership);
    assert_eq!(rec.hostname.as_str(), "www.example.com");

    // Adding it again to the same app is idempotent.
    let (again, created) = store
        .request_acme(app_a.id, &host("www.example.com"))
        .await
        .expect("add");
    assert!(!created);
    assert_eq!(again, rec);

    for other in [app_a2.id, app_b.id] {
        let err = store
            .request_acme(other, &host("www.example.com"))
            .await
            .expect_err("taken");
        assert!(matches!(err, StoreError::HostnameTaken), "{err:?}");
        let page = store.hostnames(other, None, 10).await.expect("list");
        assert_eq!(page.total, 0, "a refused claim wrote something");
    }
    assert_eq!(
        store
            .hostname(app_b.id, &host("www.example.com"))
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        store
            .hostname(app_a.id, &host("www.example.com"))
            .await
            .expect("get"),
        Some(rec)
    );
    let holder = |name: &'static str| {
        let store = store.clone();
        async move { store.holder_verified(&host(name)).await.expect("holder") }
    };
    assert_eq!(holder("www.example.com").await, Some(false));
    assert_eq!(holder("free.example.com").await, None);
    // A wildcard and its apex are names of their own.
    store
        .request_acme(app_b.id, &host("*.example.com"))
        .await
        .expect("wildcard");
    store
        .request_acme(app_b.id, &host("example.com"))
        .await
        .expect("apex");
}

async fn pagination_returns_each_hostname_once(db: &TestDb) {
    let store = db.store();
    let o = org(&store, "Pages").await;
    let app = store
        .create_app(o.id, &app_name("pages"), &[], &prefix(), None)
        .await
        .expect("app");
    let other = store
        .create_app(o.id, &app_name("other"), &[], &prefix(), None)
        .await
        .expect("app");
    store
        .request_acme(other.id, &host("noise.example.org"))
        .await
        .expect("add");
    let mut expected = Vec::new();
    for i in 0..1234 {
        let h = host(&format!("h{i}.example.com"));
        store.request_acme(app.id, &h).await.expect("add");
        expected.push(h.as_str().to_owned());
    }
    store
        .request_acme(app.id, &host("*.wild.example.com"))
        .await
        .expect("add");
    expected.push("*.wild.example.com".to_owned());
    expected.sort();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .hostnames(app.id, after.as_deref(), 100)
            .await
            .expect("page");
        assert_eq!(page.total, 1235);
        assert!(page.items.len() <= 100);
        let Some(last) = page.items.last() else { break };
        after = Some(last.hostname.as_str().to_owned());
        seen.extend(page.items.iter().map(|r| r.hostname.as_str().to_owned()));
    }
    assert_eq!(seen, expected, "every hostname exactly once, in byte order");
}

async fn delete_scopes(db: &TestDb) {
    let store = db.store();
    let o = org(&store, "Deletes").await;
    let app = store
        .create_app(o.id, &app_name("del"), &[], &prefix(), None)
        .await
        .expect("app");
    let h = host("www.example.net");
    assert_eq!(
        store
            .delete_hostname(app.id, &h, DeleteScope::All)
            .await
            .expect("delete"),
        DeleteOutcome::NotFound
    );
    store.request_acme(app.id, &h).await.expect("add");
    assert_eq!(
        store
            .delete_hostname(app.id, &h, DeleteScope::Custom)
            .await
            .expect("delete"),
        DeleteOutcome::NothingToDelete
    );
    assert!(store.hostname(app.id, &h).await.expect("get").is_some());
    // The ACME requirement was all the hostname had: it is released.
    assert_eq!(
        store
            .delete_hostname(app.id, &h, DeleteScope::Acme)
            .await
            .expect("delete"),
        DeleteOutcome::Removed
    );
    assert_eq!(store.hostname(app.id, &h).await.expect("get"), None);

    store.request_acme(app.id, &h).await.expect("add again");
    assert_eq!(
        store
            .delete_hostname(app.id, &h, DeleteScope::All)
            .await
            .expect("delete"),
        DeleteOutcome::Removed
    );
    assert_eq!(
        store.hostnames(app.id, None, 10).await.expect("list").total,
        0
    );
}

async fn deleting_an_app_releases_its_hostnames(db: &TestDb) {
    let store = db.store();
    let a = org(&store, "Leaving").await;
    let b = org(&store, "Arriving").await;
    let old = store
        .create_app(a.id, &app_name("old"), &[], &prefix(), None)
        .await
        .expect("app");
    store
        .request_acme(old.id, &host("shop.example.com"))
        .await
        .expect("add");
    assert!(
        store
            .delete_app(a.id, &app_name("old"))
            .await
            .expect("delete")
    );
    let new = store
        .create_app(b.id, &app_name("new"), &[], &prefix(), None)
        .await
        .expect("app");
    let (_, created) = store
        .request_acme(new.id, &host("shop.example.com"))
        .await
        .expect("claim");
    assert!(created);
}

async fn data_survives_reopening(db: &TestDb) {
    let store = db.store();
    let o = org(&store, "Durable").await;
    let app = store
        .create_app(o.id, &app_name("durable"), &[], &prefix(), None)
        .await
        .expect("app");
    store
        .request_acme(app.id, &host("www.durable.example"))
        .await
        .expect("add");
    db.sql_store().close().await;

    // Opening runs the migrations again, which must be a no-op.
    let reopened = certplane_store::SqlStore::open(db.url())
        .await
        .expect("reopen");
    assert_eq!(
        reopened.app(o.id, &app_name("durable")).await.expect("get"),
        Some(app.clone())
    );
    let page = reopened.hostnames(app.id, None, 10).await.expect("list");
    assert_eq!(page.items.len(), 1);
    let next = reopened
        .create_app(o.id, &app_name("durable-2"), &[], &prefix(), None)
        .await
        .expect("app");
    assert_ne!(next.ipv6, app.ipv6);
    reopened.close().await;
}

async fn checks_move_status_and_schedule(db: &TestDb) {
    let store = db.store();
    let o = org(&store, "Checks").await;
    let app = store
        .create_app(o.id, &app_name("checked"), &[], &prefix(), None)
        .await
        .expect("app");
    let h = host("www.checked.example");
    let (added, _) = store.request_acme(app.id, &h).await.expect("add");
    assert_eq!(added.next_check_at, 0, "a new hostname is checked at once");
    assert_eq!(
        store.due_checks(100, 10).await.expect("due"),
        vec![(app.id, h.clone())]
    );

    let verified = CheckUpdate {
        verified: true,
        configured: true,
        report: "{\"v\":1}".into(),
        checked_at: 1_000,
        next_check_at: 4_600,
        failures: 0,
    };
    let rec = store
        .record_check(app.id, &h, &verified)
        .await
        .expect("record")
        .expect("exists");
    assert_eq!(rec.status, CertificateStatus::PendingValidation);
    assert!(rec.ownership_verified && rec.configured);
    assert_eq!(rec.check_report.as_deref(), Some("{\"v\":1}"));
    assert_eq!((rec.checked_at, rec.next_check_at), (Some(1_000), 4_600));
    assert!(store.due_checks(4_599, 10).await.expect("due").is_empty());
    assert_eq!(store.due_checks(4_600, 10).await.expect("due").len(), 1);
    // Claiming takes a due check once: a second claim (another node) gets nothing until the
    // lease ends.
    assert_eq!(
        store
            .claim_due_checks(4_600, 10, 4_900)
            .await
            .expect("claim"),
        vec![(app.id, h.clone())]
    );
    assert!(
        store
            .claim_due_checks(4_600, 10, 4_900)
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(
        store
            .claim_due_checks(4_900, 10, 5_200)
            .await
            .expect("claim")
            .len(),
        1,
        "taken again after the lease"
    );

    // Ownership lost: back to pending_ownership, failures counted.
    let lost = CheckUpdate {
        verified: false,
        configured: false,
        failures: 1,
        checked_at: 5_000,
        next_check_at: 5_005,
        ..verified
    };
    let rec = store
        .record_check(app.id, &h, &lost)
        .await
        .expect("record")
        .expect("exists");
    assert_eq!(rec.status, CertificateStatus::PendingOwnership);
    assert!(!rec.ownership_verified);
    assert_eq!(rec.check_failures, 1);
    assert_eq!(rec.updated_at, 5_000);

    let other = host("gone.checked.example");
    assert_eq!(
        store
            .record_check(app.id, &other, &lost)
            .await
            .expect("record"),
        None
    );
    assert_eq!(
        store.app_by_id(app.id).await.expect("app"),
        Some(app.clone())
    );
    assert_eq!(store.org_by_id(o.id).await.expect("org"), Some(o));
}

async fn dedicated_ipv4_addresses_are_recycled(db: &TestDb) {
    let store = db.store();
    let o = org(&store, "Ipv4").await;
    let pool: Vec<std::net::Ipv4Addr> = vec![
        "192.0.2.50".parse().expect("ip"),
        "192.0.2.51".parse().expect("ip"),
    ];
    let first = store
        .create_app(o.id, &app_name("v4-a"), &[], &prefix(), Some(&pool))
        .await
        .expect("app");
    let second = store
        .create_app(o.id, &app_name("v4-b"), &[], &prefix(), Some(&pool))
        .await
        .expect("app");
    let plain = store
        .create_app(o.id, &app_name("v4-none"), &[], &prefix(), None)
        .await
        .expect("app");
    assert_eq!(first.dedicated_ipv4, Some(pool[0]));
    assert_eq!(second.dedicated_ipv4, Some(pool[1]));
    assert_eq!(plain.dedicated_ipv4, None);
    let err = store
        .create_app(o.id, &app_name("v4-c"), &[], &prefix(), Some(&pool))
        .await
        .expect_err("pool empty");
    assert!(matches!(err, StoreError::Ipv4Exhausted), "{err:?}");
    assert_eq!(
        store.app(o.id, &app_name("v4-c")).await.expect("get"),
        None,
        "nothing written"
    );
    // Unlike IPv6, a released IPv4 goes to the next app that asks.
    assert!(
        store
            .delete_app(o.id, &app_name("v4-a"))
            .await
            .expect("delete")
    );
    let third = store
        .create_app(o.id, &app_name("v4-c"), &[], &prefix(), Some(&pool))
        .await
        .expect("app");
    assert_eq!(third.dedicated_ipv4, Some(pool[0]));
    assert_ne!(third.ipv6, first.ipv6);
    assert_eq!(
        store.app(o.id, &app_name("v4-c")).await.expect("get"),
        Some(third)
    );
}

fn cert(source: CertSource, key_type: &str, fingerprint: &str, not_after: i64) -> NewCertificate {
    NewCertificate {
        source,
        key_type: key_type.into(),
        chain_pem: format!(
            "-----BEGIN CERTIFICATE-----\n{fingerprint}\n-----END CERTIFICATE-----\n"
        ),
        key_id: "k1".into(),
        key_sealed: vec![1, 2, 3, 0, 255],
        not_before: 0,
        not_after,
        issuer: "Test CA".into(),
        fingerprint: fingerprint.into(),
        warnings: "[]".into(),
    }
}

async fn custom_and_acme_certificates(db: &TestDb) {
    let store = db.store();
    let o = org(&store, "Certs").await;
    let app = store
        .create_app(o.id, &app_name("certs"), &[], &prefix(), None)
        .await
        .expect("app");
    let other = store
        .create_app(o.id, &app_name("other"), &[], &prefix(), None)
        .await
        .expect("app");
    let h = host("www.certs.example");
    let far = i64::MAX / 2;

    // Importing adds the hostname (no ACME requested) and waits for ownership.
    let (rec, created) = store
        .import_custom(app.id, &h, &cert(CertSource::Custom, "ecdsa", "one", far))
        .await
        .expect("import");
    assert!(created);
    assert!(!rec.acme_requested);
    assert_eq!(rec.status, CertificateStatus::PendingOwnership);
    let err = store
        .import_custom(other.id, &h, &cert(CertSource::Custom, "ecdsa", "x", far))
        .await
        .expect_err("taken");
    assert!(matches!(err, StoreError::HostnameTaken));
    assert!(
        store
            .certificates(other.id, &h)
            .await
            .expect("list")
            .is_empty(),
        "another app sees nothing"
    );

    // Re-import replaces, atomically: still one custom certificate.
    let (_, created) = store
        .import_custom(app.id, &h, &cert(CertSource::Custom, "rsa", "two", far))
        .await
        .expect("re-import");
    assert!(!created);
    let certs = store.certificates(app.id, &h).await.expect("list");
    assert_eq!(certs.len(), 1);
    assert_eq!(
        (
            certs[0].cert.fingerprint.as_str(),
            certs[0].cert.key_type.as_str()
        ),
        ("two", "rsa")
    );
    assert_eq!(
        certs[0].cert.key_sealed,
        vec![1, 2, 3, 0, 255],
        "bytes round-trip"
    );

    // Verified ownership with a valid certificate is active.
    let verified = CheckUpdate {
        verified: true,
        configured: true,
        report: "{}".into(),
        checked_at: 1_000,
        next_check_at: 2_000,
        failures: 0,
    };
    let rec = store
        .record_check(app.id, &h, &verified)
        .await
        .expect("check")
        .expect("exists");
    assert_eq!(rec.status, CertificateStatus::Active);

    // An ACME pair joins; deleting the custom one falls back to it.
    store
        .store_acme_certificate(app.id, &h, &cert(CertSource::Acme, "ecdsa", "acme-ec", far))
        .await
        .expect("acme")
        .expect("exists");
    store
        .store_acme_certificate(app.id, &h, &cert(CertSource::Acme, "rsa", "acme-rsa", far))
        .await
        .expect("acme")
        .expect("exists");
    store
        .store_acme_certificate(
            app.id,
            &h,
            &cert(CertSource::Acme, "ecdsa", "acme-ec-2", far),
        )
        .await
        .expect("renewal")
        .expect("exists");
    assert_eq!(store.certificates(app.id, &h).await.expect("list").len(), 3);
    match store
        .delete_hostname(app.id, &h, DeleteScope::Custom)
        .await
        .expect("delete")
    {
        DeleteOutcome::Updated(rec) => assert_eq!(rec.status, CertificateStatus::Active),
        other => panic!("{other:?}"),
    }
    let left: Vec<String> = store
        .certificates(app.id, &h)
        .await
        .expect("list")
        .iter()
        .map(|c| c.cert.fingerprint.clone())
        .collect();
    assert_eq!(left, vec!["acme-ec-2", "acme-rsa"]);
    assert_eq!(
        store
            .delete_hostname(app.id, &h, DeleteScope::Custom)
            .await
            .expect("delete"),
        DeleteOutcome::NothingToDelete
    );
    // Deleting ACME with nothing else left releases the hostname.
    assert_eq!(
        store
            .delete_hostname(app.id, &h, DeleteScope::Acme)
            .await
            .expect("delete"),
        DeleteOutcome::Removed
    );
    assert!(
        store
            .certificates(app.id, &h)
            .await
            .expect("list")
            .is_empty()
    );

    // Expired certificates make a verified hostname expired; deleting ACME keeps the custom one.
    let h2 = host("old.certs.example");
    store.request_acme(app.id, &h2).await.expect("add");
    store
        .import_custom(app.id, &h2, &cert(CertSource::Custom, "ecdsa", "old", 10))
        .await
        .expect("import");
    let rec = store
        .record_check(app.id, &h2, &verified)
        .await
        .expect("check")
        .expect("exists");
    assert_eq!(rec.status, CertificateStatus::Expired);
    match store
        .delete_hostname(app.id, &h2, DeleteScope::Acme)
        .await
        .expect("delete")
    {
        DeleteOutcome::Updated(rec) => assert!(!rec.acme_requested),
        other => panic!("{other:?}"),
    }

    // Re-sealing is conditional on the key id it replaces.
    let all = store.all_certificates().await.expect("all");
    assert_eq!(all.len(), 1);
    assert!(
        store
            .reseal_key(all[0].id, "k1", "k2", &[9, 9])
            .await
            .expect("reseal")
    );
    assert!(
        !store
            .reseal_key(all[0].id, "k1", "k3", &[8])
            .await
            .expect("stale reseal")
    );
    let after = store.all_certificates().await.expect("all");
    assert_eq!(
        (
            after[0].cert.key_id.as_str(),
            after[0].cert.key_sealed.clone()
        ),
        ("k2", vec![9, 9])
    );

    // Deleting the app removes its certificates.
    assert!(
        store
            .delete_app(o.id, &app_name("certs"))
            .await
            .expect("delete")
    );
    assert!(store.all_certificates().await.expect("all").is_empty());
}

async fn concurrent_claims_take_each_check_once(db: &TestDb) {
    let store = db.store();
    let o = org(&store, "Claims").await;
    let app = store
        .create_app(o.id, &app_name("claims"), &[], &prefix(), None)
        .await
        .expect("app");
    for i in 0..40 {
        store
            .request_acme(app.id, &host(&format!("c{i}.claims.example")))
            .await
            .expect("add");
    }
    let nodes: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(
                async move { store.claim_due_checks(100, 15, 1_000).await.expect("claim") },
            )
        })
        .collect();
    let mut claimed = Vec::new();
    for node in nodes {
        claimed.extend(node.await.expect("node"));
    }
    let unique: HashSet<_> = claimed.iter().map(|(_, h)| h.as_str().to_owned()).collect();
    assert_eq!(unique.len(), claimed.len(), "a check was claimed twice");
    assert_eq!(unique.len(), 40, "every due check was claimed");
}

async fn serving_changes_are_logged_in_order(db: &TestDb) {
    let store = db.store();
    let o = org(&store, "Revisions").await;
    let app = store
        .create_app(o.id, &app_name("rev"), &[], &prefix(), None)
        .await
        .expect("app");
    let h = host("www.rev.example");
    let h2 = host("api.rev.example");
    let start = store.latest_revision().await.expect("latest");
    let log = |after| {
        let store = store.clone();
        async move {
            store
                .changes_since(after, 1000)
                .await
                .expect("changes")
                .into_iter()
                .map(|(_, h)| h.as_str().to_owned())
                .collect::<Vec<_>>()
        }
    };
    store.request_acme(app.id, &h).await.expect("add");
    store
        .request_acme(app.id, &h)
        .await
        .expect("add again: no change");
    store.request_acme(app.id, &h2).await.expect("add");
    store
        .import_custom(
            app.id,
            &h,
            &cert(CertSource::Custom, "ecdsa", "c", i64::MAX / 2),
        )
        .await
        .expect("import");
    let verified = CheckUpdate {
        verified: true,
        configured: true,
        report: "{}".into(),
        checked_at: 1_000,
        next_check_at: 2_000,
        failures: 0,
    };
    store
        .record_check(app.id, &h, &verified)
        .await
        .expect("verified");
    store
        .record_check(
            app.id,
            &h,
            &CheckUpdate {
                checked_at: 1_001,
                ..verified.clone()
            },
        )
        .await
        .expect("same again");
    store
        .set_backends(
            o.id,
            &app_name("rev"),
            &[Backend::parse("10.0.0.1:80").expect("valid")],
        )
        .await
        .expect("backends");
    store
        .delete_hostname(app.id, &h, DeleteScope::Custom)
        .await
        .expect("delete custom");
    store
        .delete_app(o.id, &app_name("rev"))
        .await
        .expect("delete app");
    let expected = [
        // Adding the hostnames changes nothing an edge serves: no revision.
        "www.rev.example", // custom imported
        "www.rev.example", // ownership verified: now served
        "api.rev.example", // backends changed (order of the app's hostnames)
        "www.rev.example",
        "www.rev.example", // custom deleted
        "api.rev.example", // app deleted
        "www.rev.example",
    ];
    let mut got = log(start).await;
    // The two hostnames of one change may come in either order.
    for pair in [2usize, 5] {
        got[pair..pair + 2].sort();
    }
    let mut want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    for pair in [2usize, 5] {
        want[pair..pair + 2].sort();
    }
    assert_eq!(got, want);
    let all = store.changes_since(start, 1000).await.expect("changes");
    assert!(
        all.windows(2).all(|w| w[0].0 < w[1].0),
        "strictly increasing revisions"
    );
    assert_eq!(
        store.latest_revision().await.expect("latest"),
        all.last().expect("some").0
    );
    assert_eq!(store.changes_since(start, 3).await.expect("page").len(), 3);
}

async fn a_follower_never_misses_a_revision(db: &TestDb) {
    let store = db.store();
    let o = org(&store, "Follow").await;
    let app = store
        .create_app(o.id, &app_name("follow"), &[], &prefix(), None)
        .await
        .expect("app");
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let h = host(&format!("w{w}-{i}.follow.example"));
                    store.request_acme(app.id, &h).await.expect("add");
                    let c = cert(CertSource::Acme, "ecdsa", "f", i64::MAX / 2);
                    store
                        .store_acme_certificate(app.id, &h, &c)
                        .await
                        .expect("store")
                        .expect("exists");
                }
            })
        })
        .collect();
    // A follower reads the log as it grows, the way an edge does, and remembers what it saw.
    let follower = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut last = 0;
            for _ in 0..10_000 {
                let batch = store.changes_since(last, 50).await.expect("changes");
                if let Some((rev, _)) = batch.last() {
                    last = *rev;
                }
                seen.extend(batch.into_iter().map(|(rev, _)| rev));
                if seen.len() >= 200 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            seen
        })
    };
    for w in writers {
        w.await.expect("writer");
    }
    let seen = follower.await.expect("follower");
    let all: Vec<i64> = store
        .changes_since(0, 10_000)
        .await
        .expect("log")
        .into_iter()
        .map(|(rev, _)| rev)
        .collect();
    assert_eq!(all.len(), 200);
    assert_eq!(
        seen, all,
        "the follower saw every revision, in order, none filled in behind it"
    );
}

async fn edge_tokens_belong_to_the_admin_org(db: &TestDb) {
    let store = db.store();
    let edge_token = ApiToken::generate();
    let err = store
        .create_edge_token(&edge_token.hash())
        .await
        .expect_err("no admin yet");
    assert!(matches!(err, StoreError::NoAdminOrg), "{err:?}");
    assert_eq!(
        store.principal(&edge_token.hash()).await.expect("lookup"),
        None,
        "a refused edge token authenticates nobody"
    );

    let admin_token = ApiToken::generate();
    let admin = store
        .bootstrap_admin(&admin_token.hash())
        .await
        .expect("bootstrap");
    let customer = org(&store, "Customer").await;
    let held_by = store
        .create_edge_token(&edge_token.hash())
        .await
        .expect("edge token");
    assert_eq!(held_by, admin);
    let p = store
        .principal(&edge_token.hash())
        .await
        .expect("lookup")
        .expect("known");
    assert_eq!((p.kind, p.org.id), (TokenKind::Edge, admin.id));
    assert_ne!(p.org.id, customer.id);
    // The operator's token is still the operator's.
    let p = store
        .principal(&admin_token.hash())
        .await
        .expect("lookup")
        .expect("known");
    assert_eq!(p.kind, TokenKind::Admin);
}

async fn edges_report_their_revision(db: &TestDb) {
    let store = db.store();
    assert!(store.edges().await.expect("edges").is_empty());
    store.record_edge("edge-b", 7, 100).await.expect("record");
    store.record_edge("edge-a", 5, 110).await.expect("record");
    store.record_edge("edge-b", 9, 120).await.expect("record");
    // edge-a restarted and took a fresh snapshot at a lower revision.
    store.record_edge("edge-a", 2, 130).await.expect("record");
    assert_eq!(
        store.edges().await.expect("edges"),
        vec![
            EdgeRecord {
                id: "edge-a".into(),
                revision: 2,
                first_seen: 110,
                last_seen: 130,
            },
            EdgeRecord {
                id: "edge-b".into(),
                revision: 9,
                first_seen: 100,
                last_seen: 120,
            },
        ]
    );
}

fn challenge(name: &str, kind: ChallengeKind, token: &str, key_auth: &str) -> ChallengeRecord {
    ChallengeRecord {
        hostname: host(name),
        kind,
        token: token.into(),
        key_authorization: key_auth.into(),
        expires_at: 9_000,
    }
}

/// The hostnames the log names after revision `after`.
async fn logged(store: &Arc<dyn Store>, after: i64) -> Vec<String> {
    store
        .changes_since(after, 10_000)
        .await
        .expect("changes")
        .into_iter()
        .map(|(_, h)| h.as_str().to_owned())
        .collect()
}

async fn challenges_are_served_and_logged(db: &TestDb) {
    let store = db.store();
    let h = host("acme.challenge.example");
    assert_eq!(ChallengeKind::Http01.as_str(), "http-01");
    assert_eq!(ChallengeKind::TlsAlpn01.as_str(), "tls-alpn-01");
    assert_eq!(store.edge_host(&h).await.expect("edge host"), None);

    // No app holds the hostname: the answer is served all the same.
    let start = store.latest_revision().await.expect("latest");
    let http = challenge(h.as_str(), ChallengeKind::Http01, "tok-1", "tok-1.thumb");
    store.put_challenge(&http).await.expect("put");
    assert_eq!(logged(&store, start).await, vec![h.as_str()]);
    let served = store
        .edge_host(&h)
        .await
        .expect("edge host")
        .expect("served");
    assert_eq!(served.hostname, h);
    assert_eq!(served.app, None);
    assert!(served.certificates.is_empty());
    assert_eq!(served.challenges, vec![http.clone()]);

    // Putting the same challenge again replaces its answer (and is logged).
    let replaced = ChallengeRecord {
        key_authorization: "tok-1.other".into(),
        expires_at: 9_500,
        ..http.clone()
    };
    store.put_challenge(&replaced).await.expect("put again");
    let alpn = challenge(h.as_str(), ChallengeKind::TlsAlpn01, "tok-1", "alpn");
    store.put_challenge(&alpn).await.expect("put alpn");
    let other = challenge("other.challenge.example", ChallengeKind::Http01, "t", "t.k");
    store.put_challenge(&other).await.expect("put other");
    assert_eq!(
        logged(&store, start).await,
        vec![
            h.as_str(),
            h.as_str(),
            h.as_str(),
            "other.challenge.example"
        ]
    );
    let served = store
        .edge_host(&h)
        .await
        .expect("edge host")
        .expect("served");
    assert_eq!(served.challenges, vec![replaced.clone(), alpn.clone()]);
    // A newer TLS-ALPN-01 answer replaces the older one (a handshake presents only one);
    // HTTP-01 answers add up by token.
    let newer_alpn = challenge(h.as_str(), ChallengeKind::TlsAlpn01, "tok-2", "alpn-2");
    store
        .put_challenge(&newer_alpn)
        .await
        .expect("put newer alpn");
    let served = store
        .edge_host(&h)
        .await
        .expect("edge host")
        .expect("served");
    assert_eq!(
        served.challenges,
        vec![replaced.clone(), newer_alpn.clone()]
    );
    store.put_challenge(&alpn).await.expect("put alpn back");

    // Removing is logged; removing what is not there is not.
    let before = store.latest_revision().await.expect("latest");
    assert!(
        store
            .remove_challenge(&h, ChallengeKind::Http01, "tok-1")
            .await
            .expect("remove")
    );
    assert_eq!(logged(&store, before).await, vec![h.as_str()]);
    let before = store.latest_revision().await.expect("latest");
    assert!(
        !store
            .remove_challenge(&h, ChallengeKind::Http01, "tok-1")
            .await
            .expect("remove again")
    );
    assert!(
        !store
            .remove_challenge(&h, ChallengeKind::TlsAlpn01, "tok-2")
            .await
            .expect("remove unknown token")
    );
    assert!(logged(&store, before).await.is_empty());
    assert_eq!(
        store
            .edge_host(&h)
            .await
            .expect("edge host")
            .expect("served")
            .challenges,
        vec![alpn]
    );
    assert!(
        store
            .remove_challenge(&h, ChallengeKind::TlsAlpn01, "tok-1")
            .await
            .expect("remove")
    );
    // Nothing left to serve: edges drop the name.
    assert_eq!(store.edge_host(&h).await.expect("edge host"), None);
    assert_eq!(
        logged(&store, before).await,
        vec![h.as_str()],
        "the last removal is logged so edges drop the name"
    );
    assert!(
        store
            .edge_host(&host("other.challenge.example"))
            .await
            .expect("edge host")
            .is_some()
    );
}

fn verified_at(checked_at: i64) -> CheckUpdate {
    CheckUpdate {
        verified: true,
        configured: true,
        report: "{}".into(),
        checked_at,
        next_check_at: checked_at + 3_600,
        failures: 0,
    }
}

async fn edges_serve_certificates_of_verified_hostnames(db: &TestDb) {
    let store = db.store();
    let o = org(&store, "Edge").await;
    let backends = vec![Backend::parse("10.0.0.7:8080").expect("valid")];
    let app = store
        .create_app(o.id, &app_name("edge-app"), &backends, &prefix(), None)
        .await
        .expect("app");
    let h = host("www.edge.example");
    let far = i64::MAX / 2;

    // A certificate of a hostname whose ownership is not proven is not served.
    store
        .import_custom(app.id, &h, &cert(CertSource::Custom, "ecdsa", "c1", far))
        .await
        .expect("import");
    assert_eq!(store.edge_host(&h).await.expect("edge host"), None);

    // A challenge answer is served, with the app, but still without the certificate.
    let answer = challenge(h.as_str(), ChallengeKind::TlsAlpn01, "tok", "tok.thumb");
    store.put_challenge(&answer).await.expect("put");
    let served = store
        .edge_host(&h)
        .await
        .expect("edge host")
        .expect("served");
    let app_of = served.app.clone().expect("held");
    assert_eq!(
        (
            app_of.id,
            app_of.name.as_str(),
            app_of.backends.clone(),
            app_of.ownership_verified
        ),
        (app.id, "edge-app", backends.clone(), false)
    );
    assert!(served.certificates.is_empty());
    assert_eq!(served.challenges, vec![answer.clone()]);

    // Verified: the certificates are served too.
    store
        .record_check(app.id, &h, &verified_at(1_000))
        .await
        .expect("check")
        .expect("exists");
    store
        .store_acme_certificate(app.id, &h, &cert(CertSource::Acme, "rsa", "a1", far))
        .await
        .expect("acme")
        .expect("exists");
    let served = store
        .edge_host(&h)
        .await
        .expect("edge host")
        .expect("served");
    assert!(served.app.as_ref().expect("held").ownership_verified);
    assert_eq!(
        served.certificates,
        store.certificates(app.id, &h).await.expect("certificates")
    );
    let fingerprints: Vec<&str> = served
        .certificates
        .iter()
        .map(|c| c.cert.fingerprint.as_str())
        .collect();
    assert_eq!(fingerprints, vec!["a1", "c1"]);
    assert_eq!(
        served.certificates[0].cert.key_sealed,
        vec![1, 2, 3, 0, 255]
    );

    // Without the challenge the certificates alone keep it served.
    assert!(
        store
            .remove_challenge(&h, ChallengeKind::TlsAlpn01, "tok")
            .await
            .expect("remove")
    );
    let served = store
        .edge_host(&h)
        .await
        .expect("edge host")
        .expect("served");
    assert!(served.challenges.is_empty());
    assert_eq!(served.certificates.len(), 2);

    // New backends are what edges route to, and the change is logged.
    let before = store.latest_revision().await.expect("latest");
    let moved = vec![Backend::parse("10.0.0.8:9090").expect("valid")];
    store
        .set_backends(o.id, &app_name("edge-app"), &moved)
        .await
        .expect("backends")
        .expect("found");
    assert_eq!(logged(&store, before).await, vec![h.as_str()]);
    assert_eq!(
        store
            .edge_host(&h)
            .await
            .expect("edge host")
            .expect("served")
            .app
            .expect("held")
            .backends,
        moved
    );

    // Ownership lost: nothing to serve any more.
    let lost = CheckUpdate {
        verified: false,
        failures: 1,
        ..verified_at(2_000)
    };
    store
        .record_check(app.id, &h, &lost)
        .await
        .expect("check")
        .expect("exists");
    assert_eq!(store.edge_host(&h).await.expect("edge host"), None);
    store
        .record_check(app.id, &h, &verified_at(3_000))
        .await
        .expect("check")
        .expect("exists");
    assert!(store.edge_host(&h).await.expect("edge host").is_some());

    // Deleting the hostname is logged and leaves nothing to serve.
    let before = store.latest_revision().await.expect("latest");
    assert_eq!(
        store
            .delete_hostname(app.id, &h, DeleteScope::All)
            .await
            .expect("delete"),
        DeleteOutcome::Removed
    );
    assert_eq!(logged(&store, before).await, vec![h.as_str()]);
    assert_eq!(store.edge_host(&h).await.expect("edge host"), None);

    // Deleting the app is logged; a challenge of its hostname outlives it, without the app.
    let h2 = host("api.edge.example");
    store
        .import_custom(app.id, &h2, &cert(CertSource::Custom, "ecdsa", "c2", far))
        .await
        .expect("import");
    store
        .record_check(app.id, &h2, &verified_at(1_000))
        .await
        .expect("check")
        .expect("exists");
    let answer2 = challenge(h2.as_str(), ChallengeKind::Http01, "t2", "t2.k");
    store.put_challenge(&answer2).await.expect("put");
    let before = store.latest_revision().await.expect("latest");
    assert!(
        store
            .delete_app(o.id, &app_name("edge-app"))
            .await
            .expect("delete app")
    );
    assert_eq!(logged(&store, before).await, vec![h2.as_str()]);
    let served = store
        .edge_host(&h2)
        .await
        .expect("edge host")
        .expect("served");
    assert_eq!(served.app, None);
    assert!(served.certificates.is_empty());
    assert_eq!(served.challenges, vec![answer2]);
}

async fn edge_snapshot_pages_match_edge_host(db: &TestDb) {
    let store = db.store();
    let o = org(&store, "Snapshot").await;
    let app = store
        .create_app(
            o.id,
            &app_name("snap"),
            &[Backend::parse("10.0.0.9:80").expect("valid")],
            &prefix(),
            None,
        )
        .await
        .expect("app");
    let far = i64::MAX / 2;
    let mut candidates = Vec::new();
    let mut add = |name: &str| {
        let h = host(name);
        candidates.push(h.clone());
        h
    };
    let import = |app: AppId, h: Hostname, verify: bool| {
        let store = store.clone();
        async move {
            store
                .import_custom(app, &h, &cert(CertSource::Custom, "ecdsa", h.as_str(), far))
                .await
                .expect("import");
            if verify {
                store
                    .record_check(app, &h, &verified_at(1_000))
                    .await
                    .expect("check")
                    .expect("exists");
            }
        }
    };
    // Served: verified with a certificate (one a wildcard).
    for name in ["a.snap.example", "*.wild.snap.example", "m.snap.example"] {
        import(app.id, add(name), true).await;
    }
    // Not served: a certificate without proven ownership; ownership without a certificate.
    import(app.id, add("b.snap.example"), false).await;
    let bare = add("c.snap.example");
    store.request_acme(app.id, &bare).await.expect("add");
    store
        .record_check(app.id, &bare, &verified_at(1_000))
        .await
        .expect("check")
        .expect("exists");
    // Served through challenges: unverified with a certificate, held without one, not held;
    // and verified with a certificate and a challenge.
    let unverified = add("d.snap.example");
    import(app.id, unverified.clone(), false).await;
    let held = add("e.snap.example");
    store.request_acme(app.id, &held).await.expect("add");
    let free = add("z.snap.example");
    let both = host("m.snap.example");
    for (i, h) in [&unverified, &held, &free, &both, &free]
        .into_iter()
        .enumerate()
    {
        store
            .put_challenge(&challenge(
                h.as_str(),
                ChallengeKind::Http01,
                &format!("t{i}"),
                "k",
            ))
            .await
            .expect("put");
    }
    // Enough challenge-only names that one page spans more than one chunk of queries.
    for i in 0..1100 {
        let h = add(&format!("n{i:04}.bulk.snap.example"));
        store
            .put_challenge(&challenge(h.as_str(), ChallengeKind::TlsAlpn01, "t", "k"))
            .await
            .expect("put");
    }

    let mut expected = Vec::new();
    for h in &candidates {
        if let Some(record) = store.edge_host(h).await.expect("edge host") {
            expected.push(record);
        }
    }
    expected.sort_by(|a, b| a.hostname.as_str().cmp(b.hostname.as_str()));
    let served: Vec<&str> = expected
        .iter()
        .map(|r| r.hostname.as_str())
        .filter(|n| !n.ends_with(".bulk.snap.example"))
        .collect();
    assert_eq!(
        served,
        vec![
            "*.wild.snap.example",
            "a.snap.example",
            "d.snap.example",
            "e.snap.example",
            "m.snap.example",
            "z.snap.example",
        ]
    );
    assert_eq!(expected.len(), 1106);
    let m = expected
        .iter()
        .find(|r| r.hostname.as_str() == "m.snap.example")
        .expect("m");
    assert_eq!((m.certificates.len(), m.challenges.len()), (1, 1));
    let z = expected
        .iter()
        .find(|r| r.hostname.as_str() == "z.snap.example")
        .expect("z");
    assert_eq!((z.app.is_none(), z.challenges.len()), (true, 2));

    for limit in [1u32, 7, 1000, 5000] {
        let mut got = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store
                .edge_hosts(after.as_deref(), limit)
                .await
                .expect("page");
            assert!(page.len() <= limit as usize);
            let Some(last) = page.last() else { break };
            after = Some(last.hostname.as_str().to_owned());
            got.extend(page);
        }
        assert_eq!(
            got, expected,
            "pages of {limit} equal edge_host, in byte order"
        );
    }
    assert!(
        store
            .edge_hosts(Some("z.snap.example"), 10)
            .await
            .expect("page")
            .is_empty()
    );
    assert!(store.edge_hosts(None, 0).await.expect("page").is_empty());
}

async fn revisions_per_hostname_and_compaction(db: &TestDb) {
    let store = db.store();
    let a = host("a.compact.example");
    let b = host("b.compact.example");
    assert_eq!(store.hostname_revision(&a).await.expect("revision"), 0);
    assert_eq!(store.compacted_through().await.expect("compacted"), 0);
    assert_eq!(store.compact_revisions(10).await.expect("compact"), 0);
    assert_eq!(store.compacted_through().await.expect("compacted"), 0);

    for i in 0..5 {
        for h in [&a, &b] {
            store
                .put_challenge(&challenge(
                    h.as_str(),
                    ChallengeKind::Http01,
                    &format!("t{i}"),
                    "k",
                ))
                .await
                .expect("put");
        }
    }
    let log = store.changes_since(0, 100).await.expect("log");
    assert_eq!(log.len(), 10);
    let newest = |h: &Hostname| {
        log.iter()
            .filter(|(_, x)| x == h)
            .map(|(rev, _)| *rev)
            .max()
            .expect("logged")
    };
    assert_eq!(
        store.hostname_revision(&a).await.expect("revision"),
        newest(&a)
    );
    assert_eq!(
        store.hostname_revision(&b).await.expect("revision"),
        newest(&b)
    );
    assert!(newest(&a) < newest(&b));
    assert_eq!(
        store
            .hostname_revision(&host("never.compact.example"))
            .await
            .expect("revision"),
        0
    );

    // Keep the newest 3: the 7 older ones go.
    assert_eq!(store.compact_revisions(3).await.expect("compact"), 7);
    assert_eq!(
        store.compacted_through().await.expect("compacted"),
        log[6].0
    );
    assert_eq!(
        store.changes_since(0, 100).await.expect("log"),
        log[7..].to_vec()
    );
    assert_eq!(store.latest_revision().await.expect("latest"), log[9].0);
    // Nothing beyond what is kept: no change, and compacted_through never goes down.
    assert_eq!(store.compact_revisions(3).await.expect("compact"), 0);
    assert_eq!(store.compact_revisions(100).await.expect("compact"), 0);
    assert_eq!(
        store.compacted_through().await.expect("compacted"),
        log[6].0
    );

    // Compacting everything: the latest revision stays where it was, and revision numbers are
    // never reused.
    assert_eq!(store.compact_revisions(0).await.expect("compact"), 3);
    assert_eq!(
        store.compacted_through().await.expect("compacted"),
        log[9].0
    );
    assert!(store.changes_since(0, 100).await.expect("log").is_empty());
    assert_eq!(store.latest_revision().await.expect("latest"), log[9].0);
    assert_eq!(store.hostname_revision(&a).await.expect("revision"), 0);
    assert!(
        store
            .remove_challenge(&a, ChallengeKind::Http01, "t0")
            .await
            .expect("remove")
    );
    let next = store.changes_since(0, 100).await.expect("log");
    assert_eq!(next.len(), 1);
    assert!(
        next[0].0 > log[9].0,
        "a new revision is above every compacted one"
    );
    assert_eq!(
        store.hostname_revision(&a).await.expect("revision"),
        next[0].0
    );
    assert_eq!(store.latest_revision().await.expect("latest"), next[0].0);
    assert_eq!(
        store.compacted_through().await.expect("compacted"),
        log[9].0
    );
}

async fn the_log_keeps_one_identity(db: &TestDb) {
    let store = db.store();
    let first = store.log_id().await.expect("log id");
    assert!(first.len() >= 16, "{first}");
    let again = store.log_id().await.expect("log id");
    assert_eq!(first, again, "drawn once, then kept");
    // Another database is another log.
    let other = TestDb::sqlite().await;
    assert_ne!(other.store().log_id().await.expect("log id"), first);
}

async fn dns_challenge_values_add_up_and_expire(db: &TestDb) {
    let store = db.store();
    let name = "www.example.com.tok.acme.plat.test";
    // The apex and the wildcard order validate at the same name: both values stay.
    store
        .put_dns_challenge(name, "apex-value", 2_000)
        .await
        .expect("put");
    store
        .put_dns_challenge(name, "wild-value", 2_000)
        .await
        .expect("put");
    store
        .put_dns_challenge("other.tok.acme.plat.test", "old", 1_000)
        .await
        .expect("put");
    let live = store.dns_challenges(1_500).await.expect("list");
    assert_eq!(
        live,
        vec![
            (name.to_owned(), "apex-value".to_owned()),
            (name.to_owned(), "wild-value".to_owned()),
        ],
        "expired values are not served"
    );
    // Putting again extends, never duplicates.
    store
        .put_dns_challenge(name, "apex-value", 3_000)
        .await
        .expect("put");
    assert_eq!(store.dns_challenges(2_500).await.expect("list").len(), 1);
    assert!(
        store
            .remove_dns_challenge(name, "apex-value")
            .await
            .expect("remove")
    );
    assert!(
        !store
            .remove_dns_challenge(name, "apex-value")
            .await
            .expect("remove")
    );
    assert!(
        store
            .dns_challenges(0)
            .await
            .expect("list")
            .iter()
            .all(|(_, v)| v != "apex-value")
    );
}

async fn expired_challenges_are_purged_and_logged(db: &TestDb) {
    let store = db.store();
    let old = host("old.purge.example");
    let live = host("live.purge.example");
    for (name, expires_at) in [(&old, 100), (&live, 10_000)] {
        store
            .put_challenge(&ChallengeRecord {
                hostname: name.clone(),
                kind: ChallengeKind::Http01,
                token: "t".into(),
                key_authorization: "t.k".into(),
                expires_at,
            })
            .await
            .expect("put");
    }
    store
        .put_dns_challenge("old.tok.acme.plat.test", "v", 100)
        .await
        .expect("put");
    let before = store.latest_revision().await.expect("revision");
    let live_before = store.hostname_revision(&live).await.expect("revision");
    assert_eq!(
        store.purge_expired_challenges(500).await.expect("purged"),
        2
    );
    assert!(
        store.edge_host(&old).await.expect("read").is_none(),
        "edges drop it"
    );
    assert!(store.edge_host(&live).await.expect("read").is_some());
    assert!(
        store.hostname_revision(&old).await.expect("revision") > before,
        "logged"
    );
    assert_eq!(
        store.hostname_revision(&live).await.expect("revision"),
        live_before,
        "a live challenge's name is not logged again"
    );
    assert_eq!(
        store.purge_expired_challenges(500).await.expect("purged"),
        0
    );
}

async fn one_acme_account_per_directory(db: &TestDb) {
    let store = db.store();
    let dir = "https://ca.example/dir";
    assert!(store.acme_account(dir).await.expect("read").is_none());
    let first = certplane_store::AcmeAccountRecord {
        directory_url: dir.into(),
        account_url: "https://ca.example/acct/1".into(),
        key_id: "k1".into(),
        credentials_sealed: vec![1, 2, 3],
    };
    assert_eq!(
        store.store_acme_account(&first).await.expect("stored"),
        first
    );
    // A second control plane that created one at the same moment gets the first back.
    let second = certplane_store::AcmeAccountRecord {
        account_url: "https://ca.example/acct/2".into(),
        credentials_sealed: vec![9],
        ..first.clone()
    };
    assert_eq!(
        store.store_acme_account(&second).await.expect("stored"),
        first
    );
    assert_eq!(
        store.acme_account(dir).await.expect("read"),
        Some(first.clone())
    );
    assert!(
        !format!("{first:?}").contains("[1, 2, 3]"),
        "Debug leaves the credentials out"
    );
    // Another directory is another account.
    assert!(
        store
            .acme_account("https://other.example/dir")
            .await
            .expect("read")
            .is_none()
    );
}

async fn acme_work_is_leased_to_one_worker(db: &TestDb) {
    let store = db.store();
    let o = org(&store, "Issuer").await;
    let app = store
        .create_app(o.id, &app_name("issuer"), &[], &prefix(), None)
        .await
        .expect("app");
    let now = 1_000_000;
    for i in 0..30 {
        let h = host(&format!("i{i}.issuer.example"));
        store.request_acme(app.id, &h).await.expect("add");
        if i < 20 {
            store
                .record_check(app.id, &h, &verified_at(now))
                .await
                .expect("check");
        }
    }
    // Only verified hostnames are due; four workers take each once.
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .claim_acme_work(&format!("node-{w}"), now, 8, now + 30)
                    .await
                    .expect("claim")
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for w in workers {
        claimed.extend(w.await.expect("worker"));
    }
    let unique: HashSet<_> = claimed.iter().map(|(_, h)| h.as_str().to_owned()).collect();
    assert_eq!(unique.len(), claimed.len(), "a hostname was leased twice");
    assert_eq!(unique.len(), 20, "every verified hostname was leased");
    // Leased: nobody else gets them until the lease ends; then anyone does.
    assert!(
        store
            .claim_acme_work("other", now + 10, 100, now + 40)
            .await
            .expect("claim")
            .is_empty()
    );
    let h = host("i0.issuer.example");
    assert!(
        !store
            .renew_acme_lease(&h, "other", now + 99)
            .await
            .expect("renew")
    );
    let holder = claimed
        .iter()
        .position(|(_, x)| x == &h)
        .map(|_| ())
        .is_some();
    assert!(holder);
    let retaken = store
        .claim_acme_work("other", now + 31, 100, now + 60)
        .await
        .expect("claim");
    assert_eq!(retaken.len(), 20, "expired leases are taken over");
    // The release stores the round's outcome, and only the holder may release.
    let release = AcmeRelease {
        next_at: now + 600,
        failures: 2,
        rate_limited_until: Some(now + 3_600),
        errors: Some(r#"[{"code":"RATE_LIMITED"}]"#.into()),
        status: Some(CertificateStatus::Failed),
    };
    assert!(
        store
            .release_acme_work(app.id, &h, "node-0", &release)
            .await
            .expect("release")
            .is_none()
    );
    let record = store
        .release_acme_work(app.id, &h, "other", &release)
        .await
        .expect("release")
        .expect("held");
    assert_eq!(record.status, CertificateStatus::Failed);
    assert_eq!(record.acme_failures, 2);
    assert_eq!(record.rate_limited_until, Some(now + 3_600));
    assert_eq!(record.acme_next_at, now + 600);
    assert!(
        record
            .acme_errors
            .as_deref()
            .is_some_and(|e| e.contains("RATE_LIMITED"))
    );
    // Not due until then, unless woken (a customer's check), which can also reset the back-off.
    let due = |at| {
        let store = store.clone();
        async move {
            store
                .claim_acme_work("third", at, 100, at + 1)
                .await
                .expect("claim")
                .into_iter()
                .any(|(_, x)| x.as_str() == "i0.issuer.example")
        }
    };
    assert!(!due(now + 100).await);
    store.wake_acme(&h, true).await.expect("wake");
    let record = store
        .hostname(app.id, &h)
        .await
        .expect("read")
        .expect("there");
    assert_eq!(record.acme_failures, 0);
    assert_eq!(record.acme_errors, None, "a reset starts a new round");
    assert!(due(now + 100).await);
    // A wake while a worker holds the lease outlives that worker's release.
    let h2 = host("i1.issuer.example");
    let held = store
        .claim_acme_work("late", now + 200, 100, now + 260)
        .await
        .expect("claim");
    assert!(held.iter().any(|(_, x)| x == &h2), "{held:?}");
    store.wake_acme(&h2, true).await.expect("wake");
    let record = store
        .release_acme_work(app.id, &h2, "late", &release)
        .await
        .expect("release")
        .expect("held");
    assert_eq!(record.acme_next_at, 0, "the wake wins");
    assert_eq!(record.acme_failures, 0);
}

async fn acme_orders_step_by_step(db: &TestDb) {
    let store = db.store();
    let o = org(&store, "Orders").await;
    let app = store
        .create_app(o.id, &app_name("orders"), &[], &prefix(), None)
        .await
        .expect("app");
    let h = host("www.orders.example");
    store.request_acme(app.id, &h).await.expect("add");
    store
        .record_check(app.id, &h, &verified_at(1_000))
        .await
        .expect("check");
    let order = store
        .insert_acme_order(&h, "ecdsa", false, "tls-alpn-01", "orders.example", None)
        .await
        .expect("insert")
        .expect("no budget to keep");
    assert_eq!(order.state, AcmeOrderState::Creating);
    assert_eq!(order.order_url, None);
    let url = "https://ca.example/order/1";
    assert!(!store.acme_order_known(url).await.expect("known"));
    store
        .update_acme_order(
            order.id,
            &AcmeOrderUpdate {
                state: Some(AcmeOrderState::Pending),
                order_url: Some(url.into()),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    assert!(store.acme_order_known(url).await.expect("known"));
    store
        .update_acme_order(
            order.id,
            &AcmeOrderUpdate {
                state: Some(AcmeOrderState::Processing),
                key: Some(("k1".into(), vec![1, 2, 3])),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    let stored = store.acme_orders(&h, 10).await.expect("orders");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].state, AcmeOrderState::Processing);
    assert_eq!(
        stored[0].order_url.as_deref(),
        Some(url),
        "kept across updates"
    );
    assert_eq!(stored[0].key_sealed.as_deref(), Some(&[1u8, 2, 3][..]));
    assert!(
        !format!("{:?}", stored[0]).contains("[1, 2, 3]"),
        "Debug hides the key"
    );

    let before = store.latest_revision().await.expect("revision");
    let record = store
        .finish_acme_order(
            order.id,
            app.id,
            &h,
            &cert(CertSource::Acme, "ecdsa", "a1", i64::MAX / 2),
            "orders.example",
        )
        .await
        .expect("finish")
        .expect("there");
    assert_eq!(record.status, CertificateStatus::Active);
    assert!(
        store.latest_revision().await.expect("revision") > before,
        "edges told"
    );
    let stored = store.acme_orders(&h, 10).await.expect("orders");
    assert_eq!(stored[0].state, AcmeOrderState::Done);
    let certs = store.certificates(app.id, &h).await.expect("certs");
    assert_eq!(certs.len(), 1);

    store
        .record_acme_event(&AcmeLedgerEntry {
            kind: "failed_validation".into(),
            registered_domain: "orders.example".into(),
            names: h.as_str().into(),
            at: i64::MAX / 4,
        })
        .await
        .expect("event");
    let (entries, orders) = store
        .acme_ledger("orders.example", 0, 0)
        .await
        .expect("ledger");
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, vec!["order", "certificate", "failed_validation"]);
    assert_eq!(orders.len(), 1);
    let (entries, _) = store
        .acme_ledger("other.example", 0, 0)
        .await
        .expect("ledger");
    assert!(entries.is_empty());

    // Giving up ACME drops the open orders with it.
    store
        .insert_acme_order(&h, "rsa", false, "http-01", "orders.example", None)
        .await
        .expect("insert")
        .expect("no budget to keep");
    // With a budget, its check sees the ledger and can refuse: then nothing is stored.
    let refuse_after_two = |entries: &[AcmeLedgerEntry], orders: &[i64]| {
        let domain_orders = entries.iter().filter(|e| e.kind == "order").count();
        if domain_orders >= 2 && orders.len() >= 2 {
            Err((42, "two orders is the limit".to_owned()))
        } else {
            Ok(())
        }
    };
    let budget = OrderBudget {
        since: 0,
        orders_since: 0,
        check: &refuse_after_two,
    };
    let refused = store
        .insert_acme_order(&h, "rsa", false, "http-01", "orders.example", Some(&budget))
        .await
        .expect("insert");
    assert_eq!(refused, Err((42, "two orders is the limit".to_owned())));
    assert_eq!(store.acme_orders(&h, 10).await.expect("orders").len(), 2);
    store
        .delete_hostname(app.id, &h, DeleteScope::Acme)
        .await
        .expect("delete");
    assert!(store.acme_orders(&h, 10).await.expect("orders").is_empty());
}
