//! Ownership verification and DNS checks against real DNS servers (pebble-challtestsrv, NSD,
//! a silent socket), through the API's check route.

mod common;

use certplane_test_support::TestDb;
use certplane_test_support::dns::{ChallTestSrv, Nsd, SilentDns};
use common::TestApi;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct World {
    api: TestApi,
    dns: ChallTestSrv,
    org: String,
}

async fn world() -> World {
    let dns = ChallTestSrv::start();
    let api = TestApi::start_with_dns(TestDb::sqlite().await, &[dns.dns]).await;
    let org = api.org("Owner").await;
    World { api, dns, org }
}

impl World {
    /// Creates `app` in `token`'s org and adds `host` to it; returns the app.
    async fn app_with(&self, token: &str, app: &str, host: &str) -> Value {
        let created = self.api.app(token, app).await;
        let (status, body) = self.api.add(token, app, host).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        created
    }

    async fn check(&self, token: &str, app: &str, host: &str) -> Value {
        let path = format!(
            "/v1/apps/{app}/certificates/{}/check",
            host.replace('*', "%2A")
        );
        let (status, body) = self.api.send(Method::POST, &path, Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

fn codes(detail: &Value) -> Vec<String> {
    detail["validation_errors"]
        .as_array()
        .expect("validation_errors")
        .iter()
        .map(|e| {
            assert!(
                !e["remediation"].as_str().expect("remediation").is_empty(),
                "{e}"
            );
            e["code"].as_str().expect("code").to_owned()
        })
        .collect()
}

fn assert_not_verified(detail: &Value) {
    assert_eq!(
        detail["validation"]["ownership_verified"], false,
        "{detail:#}"
    );
    assert_eq!(detail["status"], "pending_ownership", "{detail:#}");
    assert_eq!(detail["ownership_proofs"], json!([]));
    assert!(
        codes(detail).contains(&"OWNERSHIP_NOT_VERIFIED".to_owned()),
        "{detail:#}"
    );
    assert_eq!(detail["certificates"], json!([]), "nothing is issued");
}

fn assert_verified(detail: &Value, proof: &str) {
    assert_eq!(
        detail["validation"]["ownership_verified"], true,
        "{detail:#}"
    );
    assert_eq!(detail["status"], "pending_validation", "{detail:#}");
    let proofs = detail["ownership_proofs"].as_array().expect("proofs");
    assert!(proofs.contains(&json!(proof)), "{proof} not in {proofs:?}");
    assert!(
        !codes(detail).contains(&"OWNERSHIP_NOT_VERIFIED".to_owned()),
        "{detail:#}"
    );
}

// ---- takeover attempts: each must end "not verified" ----------------------------------------

#[tokio::test]
async fn a_record_to_the_shared_ipv4_does_not_prove() {
    let w = world().await;
    w.app_with(&w.org, "victim", "www.a-shared.example").await;
    w.dns.add_a("www.a-shared.example", &["203.0.113.10"]).await;
    let d = w.check(&w.org, "victim", "www.a-shared.example").await;
    assert_not_verified(&d);
    assert_eq!(d["configured"], true, "the traffic does reach the platform");
    assert!(codes(&d).contains(&"IPV6_NOT_FOUND".to_owned()));
    assert_eq!(d["dns_records"]["a"], json!(["203.0.113.10"]));
    assert_eq!(
        d["dns_records"]["resolved_addresses"],
        json!(["203.0.113.10"])
    );
}

#[tokio::test]
async fn a_record_to_a_recycled_dedicated_ipv4_does_not_prove() {
    let w = world().await;
    // The victim's app had a dedicated IPv4 and an A record to it; the app is deleted, the
    // record stays (as customers' records do).
    let (_, victim) = w
        .api
        .send(
            Method::POST,
            "/v1/apps",
            Some(&w.org),
            Some(json!({"app_name": "victim", "dedicated_ipv4": true})),
        )
        .await;
    let ip = victim["dedicated_ipv4"]
        .as_str()
        .expect("dedicated ipv4")
        .to_owned();
    assert_eq!(victim["ipv4"], json!([ip]));
    w.dns.add_a("www.recycled-v4.example", &[&ip]).await;
    w.api
        .send(Method::DELETE, "/v1/apps/victim", Some(&w.org), None)
        .await;

    // An attacker's new app is handed the same address and claims the name.
    let attacker = w.api.org("Attacker").await;
    let (status, grab) = w
        .api
        .send(
            Method::POST,
            "/v1/apps",
            Some(&attacker),
            Some(json!({"app_name": "grab", "dedicated_ipv4": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{grab}");
    assert_eq!(
        grab["dedicated_ipv4"],
        json!(ip),
        "IPv4 addresses are recycled"
    );
    let (status, added) = w
        .api
        .add(&attacker, "grab", "www.recycled-v4.example")
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(added["dns_requirements"]["a"], json!([ip]));
    let d = w.check(&attacker, "grab", "www.recycled-v4.example").await;
    assert_not_verified(&d);
    assert_eq!(
        d["configured"], true,
        "the traffic does reach the attacker's app"
    );
}

#[tokio::test]
async fn an_unverified_claim_gives_way_to_the_proven_owner_and_a_verified_one_does_not() {
    let w = world().await;
    let squatter = w.api.org("Squatter").await;
    w.app_with(&squatter, "squat", "www.squatted.example").await;

    // The owner cannot take it without proof...
    let owner_app = w.api.app(&w.org, "owner").await;
    let (status, body) = w.api.add(&w.org, "owner", "www.squatted.example").await;
    assert_eq!(status, StatusCode::CONFLICT);
    let remediation = body["error"]["remediation"].as_str().expect("remediation");
    assert!(
        remediation.contains(owner_app["ownership_value"].as_str().expect("value")),
        "{remediation}"
    );
    // ...and takes it with the TXT record the answer named.
    w.dns
        .add_txt(
            "_certplane-ownership.www.squatted.example",
            owner_app["ownership_value"].as_str().expect("value"),
        )
        .await;
    let (status, body) = w.api.add(&w.org, "owner", "www.squatted.example").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = w
        .api
        .send(
            Method::GET,
            "/v1/apps/squat/certificates/www.squatted.example",
            Some(&squatter),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the squatter's claim is gone"
    );

    // Once the owner's claim is verified, nobody takes it, proof or not.
    assert_verified(
        &w.check(&w.org, "owner", "www.squatted.example").await,
        "ownership_txt",
    );
    let thief = w.api.app(&squatter, "thief").await;
    w.dns
        .add_txt(
            "_certplane-ownership.www.squatted.example",
            thief["ownership_value"].as_str().expect("value"),
        )
        .await;
    let (status, _) = w.api.add(&squatter, "thief", "www.squatted.example").await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn cname_to_the_bare_app_name_does_not_prove() {
    let w = world().await;
    w.app_with(&w.org, "shop", "www.bare-cname.example").await;
    w.dns
        .set_cname("www.bare-cname.example", "shop.apps.plat.test")
        .await;
    let d = w.check(&w.org, "shop", "www.bare-cname.example").await;
    assert_not_verified(&d);
    assert_eq!(
        d["dns_records"]["cname_chain"],
        json!(["shop.apps.plat.test"])
    );
}

#[tokio::test]
async fn cname_to_a_deleted_apps_target_does_not_prove_for_the_names_new_owner() {
    let w = world().await;
    let old = w.app_with(&w.org, "shop", "www.recycled.example").await;
    w.dns
        .set_cname(
            "www.recycled.example",
            old["cname_target"].as_str().expect("target"),
        )
        .await;
    assert_verified(
        &w.check(&w.org, "shop", "www.recycled.example").await,
        "cname",
    );
    let (status, _) = w
        .api
        .send(Method::DELETE, "/v1/apps/shop", Some(&w.org), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let attacker = w.api.org("Attacker").await;
    let new = w.app_with(&attacker, "shop", "www.recycled.example").await;
    assert_ne!(
        new["cname_target"], old["cname_target"],
        "a re-created name gets a new token"
    );
    assert_not_verified(&w.check(&attacker, "shop", "www.recycled.example").await);
}

#[tokio::test]
async fn aaaa_of_another_app_does_not_prove() {
    let w = world().await;
    let other = w.api.app(&w.org, "other").await;
    w.app_with(&w.org, "mine", "www.other-aaaa.example").await;
    w.dns
        .add_aaaa(
            "www.other-aaaa.example",
            &[other["ipv6"].as_str().expect("ipv6")],
        )
        .await;
    let d = w.check(&w.org, "mine", "www.other-aaaa.example").await;
    assert_not_verified(&d);
    assert!(
        codes(&d).contains(&"DNS_RECORD_MISMATCH".to_owned()),
        "{d:#}"
    );
}

#[tokio::test]
async fn txt_of_another_app_or_org_does_not_prove() {
    let w = world().await;
    let other = w.api.app(&w.org, "other").await;
    let stranger = w.api.org("Stranger").await;
    let (_, stranger_app) = w
        .api
        .send(
            Method::POST,
            "/v1/apps",
            Some(&stranger),
            Some(json!({"app_name": "theirs"})),
        )
        .await;
    w.app_with(&w.org, "mine", "www.other-txt.example").await;
    let name = "_certplane-ownership.www.other-txt.example";
    w.dns
        .add_txt(name, other["ownership_value"].as_str().expect("value"))
        .await;
    w.dns
        .add_txt(
            name,
            stranger_app["org_ownership_value"].as_str().expect("value"),
        )
        .await;
    let d = w.check(&w.org, "mine", "www.other-txt.example").await;
    assert_not_verified(&d);
    assert!(codes(&d).contains(&"DNS_RECORD_MISMATCH".to_owned()));
    assert_eq!(
        d["dns_records"]["ownership_txt"]
            .as_array()
            .expect("txt")
            .len(),
        2
    );
}

#[tokio::test]
async fn txt_of_a_deleted_app_does_not_prove() {
    let w = world().await;
    let gone = w.app_with(&w.org, "gone", "www.deleted-txt.example").await;
    w.dns
        .add_txt(
            "_certplane-ownership.www.deleted-txt.example",
            gone["ownership_value"].as_str().expect("value"),
        )
        .await;
    assert_verified(
        &w.check(&w.org, "gone", "www.deleted-txt.example").await,
        "ownership_txt",
    );
    w.api
        .send(Method::DELETE, "/v1/apps/gone", Some(&w.org), None)
        .await;
    let attacker = w.api.org("Attacker").await;
    w.app_with(&attacker, "grab", "www.deleted-txt.example")
        .await;
    assert_not_verified(&w.check(&attacker, "grab", "www.deleted-txt.example").await);
}

// ---- ways that do prove ownership ------------------------------------------------------------

#[tokio::test]
async fn aaaa_alone_proves() {
    let w = world().await;
    let app = w.app_with(&w.org, "web", "www.aaaa.example").await;
    w.dns
        .add_aaaa("www.aaaa.example", &[app["ipv6"].as_str().expect("ipv6")])
        .await;
    let d = w.check(&w.org, "web", "www.aaaa.example").await;
    assert_verified(&d, "aaaa");
    assert_eq!(d["configured"], true);
    assert_eq!(d["validation"]["alpn_configured"], true);
}

#[tokio::test]
async fn cname_to_the_apps_target_proves() {
    let w = world().await;
    let app = w.app_with(&w.org, "web", "www.cname.example").await;
    w.dns
        .set_cname(
            "www.cname.example",
            app["cname_target"].as_str().expect("target"),
        )
        .await;
    let d = w.check(&w.org, "web", "www.cname.example").await;
    assert_verified(&d, "cname");
    assert_eq!(d["configured"], true);
}

#[tokio::test]
async fn txt_with_the_app_value_proves() {
    let w = world().await;
    let app = w.app_with(&w.org, "web", "www.txt.example").await;
    w.dns
        .add_txt(
            "_certplane-ownership.www.txt.example",
            app["ownership_value"].as_str().expect("v"),
        )
        .await;
    let d = w.check(&w.org, "web", "www.txt.example").await;
    assert_verified(&d, "ownership_txt");
    assert_eq!(d["validation"]["ownership_txt_configured"], true);
}

#[tokio::test]
async fn txt_with_the_org_value_among_others_proves() {
    let w = world().await;
    let app = w.app_with(&w.org, "web", "www.orgtxt.example").await;
    let value = format!(
        "app-someoneelse; {} ;other",
        app["org_ownership_value"].as_str().expect("v")
    );
    w.dns
        .add_txt("_certplane-ownership.www.orgtxt.example", &value)
        .await;
    assert_verified(
        &w.check(&w.org, "web", "www.orgtxt.example").await,
        "ownership_txt",
    );
}

#[tokio::test]
async fn acme_challenge_cname_proves_and_enables_dns_01() {
    let w = world().await;
    let (_, detail) = {
        w.api.app(&w.org, "web").await;
        w.api.add(&w.org, "web", "www.delegated.example").await
    };
    let target = detail["dns_requirements"]["acme_challenge"]["target"]
        .as_str()
        .expect("target");
    w.dns
        .set_cname("_acme-challenge.www.delegated.example", target)
        .await;
    let d = w.check(&w.org, "web", "www.delegated.example").await;
    assert_verified(&d, "acme_challenge_cname");
    assert_eq!(d["validation"]["dns_configured"], true);
}

#[tokio::test]
async fn wildcard_is_proven_by_the_txt_of_its_base_name_only() {
    let w = world().await;
    let app = w.app_with(&w.org, "web", "*.wild.example").await;
    w.dns
        .add_aaaa("*.wild.example", &[app["ipv6"].as_str().expect("ipv6")])
        .await;
    let d = w.check(&w.org, "web", "*.wild.example").await;
    assert_not_verified(&d);
    w.dns
        .add_txt(
            "_certplane-ownership.wild.example",
            app["ownership_value"].as_str().expect("v"),
        )
        .await;
    assert_verified(
        &w.check(&w.org, "web", "*.wild.example").await,
        "ownership_txt",
    );
}

#[tokio::test]
async fn behind_a_cdn_the_txt_record_proves_and_the_proxy_is_named() {
    let w = world().await;
    let app = w.app_with(&w.org, "web", "www.cdn.example").await;
    w.dns.add_a("www.cdn.example", &["198.51.100.7"]).await;
    let d = w.check(&w.org, "web", "www.cdn.example").await;
    assert_not_verified(&d);
    assert_eq!(
        (d["is_proxied"].clone(), d["proxy_provider"].clone()),
        (json!(true), json!("testcdn"))
    );
    w.dns
        .add_txt(
            "_certplane-ownership.www.cdn.example",
            app["ownership_value"].as_str().expect("v"),
        )
        .await;
    let d = w.check(&w.org, "web", "www.cdn.example").await;
    assert_verified(&d, "ownership_txt");
    assert_eq!(d["is_proxied"], true);
    assert_eq!(d["configured"], false);
    assert_eq!(
        d["validation"]["alpn_configured"], false,
        "TLS-ALPN cannot pass a proxy"
    );
    assert_eq!(d["validation"]["http_configured"], true);
}

#[tokio::test]
async fn losing_ownership_is_recorded() {
    let w = world().await;
    let app = w.app_with(&w.org, "web", "www.lost.example").await;
    w.dns
        .add_aaaa("www.lost.example", &[app["ipv6"].as_str().expect("ipv6")])
        .await;
    assert_verified(&w.check(&w.org, "web", "www.lost.example").await, "aaaa");
    w.dns.clear("aaaa", "www.lost.example").await;
    let d = w.check(&w.org, "web", "www.lost.example").await;
    assert_not_verified(&d);
    assert_eq!(
        codes(&d).first().map(String::as_str),
        Some("OWNERSHIP_LOST")
    );
}

#[tokio::test]
async fn a_dns_outage_does_not_take_ownership_away() {
    let w = world().await;
    let app = w.app_with(&w.org, "web", "www.outage.example").await;
    w.dns
        .add_aaaa("www.outage.example", &[app["ipv6"].as_str().expect("ipv6")])
        .await;
    assert_verified(&w.check(&w.org, "web", "www.outage.example").await, "aaaa");
    w.dns.set_servfail("www.outage.example").await;
    w.dns
        .set_servfail("_certplane-ownership.www.outage.example")
        .await;
    w.dns
        .set_servfail("_acme-challenge.www.outage.example")
        .await;
    let d = w.check(&w.org, "web", "www.outage.example").await;
    assert_eq!(d["validation"]["ownership_verified"], true, "{d:#}");
    assert_eq!(d["status"], "pending_validation");
    let codes = codes(&d);
    assert!(
        codes.contains(&"DNS_VALIDATION_FAILED".to_owned()),
        "{codes:?}"
    );
    assert!(!codes.contains(&"OWNERSHIP_LOST".to_owned()), "{codes:?}");
}

#[tokio::test]
async fn background_checks_verify_new_hostnames() {
    let w = world().await;
    let app = w.app_with(&w.org, "web", "www.background.example").await;
    w.dns
        .add_aaaa(
            "www.background.example",
            &[app["ipv6"].as_str().expect("ipv6")],
        )
        .await;
    let checked = w.api.verifier.run_due().await.expect("due checks run");
    assert_eq!(checked, 1);
    let (_, d) = w
        .api
        .send(
            Method::GET,
            "/v1/apps/web/certificates/www.background.example",
            Some(&w.org),
            None,
        )
        .await;
    assert_verified(&d, "aaaa");
    assert!(d["next_check_at"].is_string());
    assert_eq!(
        w.api.verifier.run_due().await.expect("due checks run"),
        0,
        "the next check is an hour away"
    );
}

// ---- DNS failures ------------------------------------------------------------------------------

#[tokio::test]
async fn servfail_is_reported_and_the_server_keeps_serving() {
    let w = world().await;
    w.app_with(&w.org, "web", "www.servfail.example").await;
    w.dns.set_servfail("www.servfail.example").await;
    w.dns
        .set_servfail("_certplane-ownership.www.servfail.example")
        .await;
    let d = w.check(&w.org, "web", "www.servfail.example").await;
    assert_not_verified(&d);
    assert!(
        codes(&d).contains(&"DNS_VALIDATION_FAILED".to_owned()),
        "{d:#}"
    );
    assert_eq!(d["dns_records"]["outcomes"]["aaaa"], "serv_fail");
    let (status, _) = w.api.send(Method::GET, "/v1/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn timeout_is_reported() {
    let silent = SilentDns::start();
    let api = TestApi::start_with_dns(TestDb::sqlite().await, &[silent.dns]).await;
    let org = api.org("Slow").await;
    api.app(&org, "web").await;
    api.add(&org, "web", "www.timeout.example").await;
    let (status, d) = api
        .send(
            Method::POST,
            "/v1/apps/web/certificates/www.timeout.example/check",
            Some(&org),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_not_verified(&d);
    assert!(codes(&d).contains(&"DNS_TIMEOUT".to_owned()), "{d:#}");
    assert_eq!(d["dns_records"]["outcomes"]["aaaa"], "timeout");
}

#[tokio::test]
async fn nxdomain_is_reported() {
    let nsd = Nsd::start("nx.test", "other IN A 192.0.2.1");
    let api = TestApi::start_with_dns(TestDb::sqlite().await, &[nsd.dns]).await;
    let org = api.org("Missing").await;
    api.app(&org, "web").await;
    api.add(&org, "web", "www.nx.test").await;
    let (status, d) = api
        .send(
            Method::POST,
            "/v1/apps/web/certificates/www.nx.test/check",
            Some(&org),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_not_verified(&d);
    assert!(
        codes(&d).contains(&"DNS_NOT_CONFIGURED".to_owned()),
        "{d:#}"
    );
    assert_eq!(d["dns_records"]["outcomes"]["aaaa"], "nx_domain");
    assert_eq!(
        d["dns_records"]["soa"], "nx.test ns1.nx.test 1",
        "the zone, from the negative answer"
    );
}

// ---- CAA -----------------------------------------------------------------------------------------

async fn caa_case(w: &World, app: &str, host: &str) -> Value {
    let created = w.app_with(&w.org, app, host).await;
    let base = host.trim_start_matches("*.");
    w.dns
        .add_txt(
            &format!("_certplane-ownership.{base}"),
            created["ownership_value"].as_str().expect("v"),
        )
        .await;
    w.check(&w.org, app, host).await
}

#[tokio::test]
async fn caa_permitting_the_ca_passes() {
    let w = world().await;
    w.dns
        .add_caa("caa-ok.example", &[("issue", "letsencrypt.org")])
        .await;
    let d = caa_case(&w, "web", "caa-ok.example").await;
    assert_eq!(d["validation"]["caa_permits"], true);
    assert_eq!(d["dns_records"]["caa_at"], "caa-ok.example");
    assert!(!codes(&d).contains(&"CAA_RECORD_INVALID".to_owned()));
}

#[tokio::test]
async fn caa_forbidding_the_ca_is_reported_with_the_record_to_add() {
    let w = world().await;
    w.dns
        .add_caa("caa-no.example", &[("issue", "digicert.com")])
        .await;
    let d = caa_case(&w, "web", "caa-no.example").await;
    assert_eq!(d["validation"]["caa_permits"], false);
    let err = d["validation_errors"]
        .as_array()
        .expect("errors")
        .iter()
        .find(|e| e["code"] == "CAA_RECORD_INVALID")
        .expect("CAA error");
    assert!(
        err["remediation"]
            .as_str()
            .expect("r")
            .contains("CAA 0 issue \"letsencrypt.org\""),
        "{err}"
    );
}

#[tokio::test]
async fn caa_issuewild_applies_to_the_wildcard_only() {
    let w = world().await;
    w.dns
        .add_caa(
            "caa-wild.example",
            &[("issue", "letsencrypt.org"), ("issuewild", ";")],
        )
        .await;
    let plain = caa_case(&w, "plain", "www.caa-wild.example").await;
    assert_eq!(plain["validation"]["caa_permits"], true, "{plain:#}");
    assert_eq!(
        plain["dns_records"]["caa_at"], "caa-wild.example",
        "inherited from the parent"
    );
    let wild = caa_case(&w, "wild", "*.caa-wild.example").await;
    assert_eq!(wild["validation"]["caa_permits"], false, "{wild:#}");
}

#[tokio::test]
async fn caa_is_inherited_from_the_parent() {
    let w = world().await;
    w.dns
        .add_caa("caa-parent.example", &[("issue", "digicert.com")])
        .await;
    let d = caa_case(&w, "web", "deep.www.caa-parent.example").await;
    assert_eq!(d["validation"]["caa_permits"], false);
    assert_eq!(d["dns_records"]["caa_at"], "caa-parent.example");
}
