//! The REST API over real HTTP, on a real store (SQLite, and PostgreSQL where it matters).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use certplane_test_support::TestDb;
use common::{TestApi, code};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The routes of the pinned contract plus the ones this server adds, exactly.
const SERVED: &[(&str, &str)] = &[
    ("get", "/v1/health"),
    ("get", "/v1/openapi.json"),
    ("post", "/v1/orgs"),
    ("get", "/v1/apps"),
    ("post", "/v1/apps"),
    ("get", "/v1/apps/{app}"),
    ("patch", "/v1/apps/{app}"),
    ("delete", "/v1/apps/{app}"),
    ("get", "/v1/apps/{app}/certificates"),
    ("post", "/v1/apps/{app}/certificates/acme"),
    ("post", "/v1/apps/{app}/certificates/custom"),
    ("get", "/v1/apps/{app}/certificates/{hostname}"),
    ("delete", "/v1/apps/{app}/certificates/{hostname}"),
    ("post", "/v1/apps/{app}/certificates/{hostname}/check"),
    ("delete", "/v1/apps/{app}/certificates/{hostname}/acme"),
    ("delete", "/v1/apps/{app}/certificates/{hostname}/custom"),
    ("get", "/v1/edges"),
    ("post", "/v1/edges/tokens"),
    ("get", "/v1/edges/stream"),
    ("post", "/v1/edges/{id}/ack"),
];

fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "patch", "delete", "head", "options"]
                .contains(&method.as_str())
            {
                ops.insert((method.clone(), path.clone()));
            }
        }
    }
    ops
}

fn method(m: &str) -> Method {
    Method::from_bytes(m.to_ascii_uppercase().as_bytes()).expect("method")
}

#[tokio::test]
async fn openapi_lists_every_route_served() {
    let api = TestApi::sqlite().await;
    let (status, doc) = api.send(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    let documented = documented_operations(&doc);
    let served: BTreeSet<(String, String)> = SERVED
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        documented, served,
        "the OpenAPI document and the contract's routes differ"
    );

    // Every documented operation is routed (it never falls through to the router's own 404/405),
    // and every other method on a documented path is not.
    for (m, path) in &documented {
        let concrete = path
            .replace("{app}", "some-app")
            .replace("{hostname}", "www.example.com");
        let (status, body) = api
            .send(method(m), &concrete, Some(&api.admin), Some(json!({})))
            .await;
        assert!(
            !["ROUTE_NOT_FOUND", "METHOD_NOT_ALLOWED"].contains(&code(&body)),
            "{m} {path} is documented but not served: {status} {body}"
        );
        for other in ["get", "post", "put", "patch", "delete"] {
            if documented.contains(&(other.to_owned(), path.clone())) {
                continue;
            }
            let (status, body) = api
                .send(method(other), &concrete, Some(&api.admin), None)
                .await;
            assert_eq!(
                (status, code(&body)),
                (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
                "{other} {path}"
            );
        }
    }
    let (status, body) = api
        .send(Method::GET, "/v1/nope", Some(&api.admin), None)
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "ROUTE_NOT_FOUND")
    );
}

/// For every operation of the OpenAPI document, org B's token on org A's app and hostname.
async fn tenant_isolation(api: TestApi) {
    let a = api.org("Org A").await;
    let b = api.org("Org B").await;
    api.app(&a, "a-app").await;
    let (status, _) = api.add(&a, "a-app", "www.a-example.com").await;
    assert_eq!(status, StatusCode::CREATED);
    api.app(&b, "b-app").await;
    let (_, a_before) = api
        .send(Method::GET, "/v1/apps/a-app", Some(&a), None)
        .await;
    let (_, a_cert_before) = api
        .send(
            Method::GET,
            "/v1/apps/a-app/certificates/www.a-example.com",
            Some(&a),
            None,
        )
        .await;

    let (_, doc) = api.send(Method::GET, "/v1/openapi.json", None, None).await;
    let mut covered = 0;
    for (m, path) in documented_operations(&doc) {
        let body = match (m.as_str(), path.as_str()) {
            ("post", "/v1/orgs") => Some(json!({"name": "Evil"})),
            ("post", "/v1/apps") => Some(json!({"app_name": "evil"})),
            ("patch", _) => Some(json!({"backends": ["10.9.9.9:1"]})),
            ("post", "/v1/edges/{id}/ack") => Some(json!({"revision": 1})),
            ("post", p) if p.ends_with("/acme") => Some(json!({"hostname": "www.a-example.com"})),
            ("post", p) if p.ends_with("/custom") => {
                Some(json!({"hostname": "www.a-example.com", "fullchain": "x", "private_key": "x"}))
            }
            _ => None,
        };
        let on_a = path
            .replace("{id}", "edge-1")
            .replace("/v1/edges/stream", "/v1/edges/stream?edge_id=edge-1")
            .replace("{app}", "a-app")
            .replace("{hostname}", "www.a-example.com");
        let (status, body) = api.send(method(&m), &on_a, Some(&b), body).await;
        let expected: (StatusCode, &str) = match (m.as_str(), path.as_str()) {
            (_, "/v1/health") | (_, "/v1/openapi.json") => (StatusCode::OK, "<no error code>"),
            (_, "/v1/orgs") | (_, "/v1/edges") | (_, "/v1/edges/tokens") => {
                (StatusCode::FORBIDDEN, "ADMIN_ONLY")
            }
            // An org token neither follows the edge stream nor speaks for an edge.
            (_, "/v1/edges/stream") | (_, "/v1/edges/{id}/ack") => {
                (StatusCode::FORBIDDEN, "EDGE_ONLY")
            }
            ("get", "/v1/apps") => {
                assert_eq!(status, StatusCode::OK);
                let names: Vec<&str> = body["apps"]
                    .as_array()
                    .expect("apps")
                    .iter()
                    .map(|a| a["name"].as_str().expect("name"))
                    .collect();
                assert_eq!(names, vec!["b-app"], "B sees only its own apps");
                covered += 1;
                continue;
            }
            ("post", "/v1/apps") => {
                // B cannot take over A's app by creating one of the same name.
                let (status, body) = api
                    .send(
                        Method::POST,
                        "/v1/apps",
                        Some(&b),
                        Some(json!({"app_name": "a-app"})),
                    )
                    .await;
                assert_eq!(
                    (status, code(&body)),
                    (StatusCode::CONFLICT, "APP_NAME_TAKEN")
                );
                covered += 1;
                continue;
            }
            (_, p) if p.starts_with("/v1/apps/{app}") => (StatusCode::NOT_FOUND, "APP_NOT_FOUND"),
            _ => panic!("{m} {path} has no isolation expectation: add one"),
        };
        assert_eq!(
            (status, code(&body)),
            expected,
            "{m} {path} with another org's token: {body}"
        );
        covered += 1;

        // The same hostname through B's own app is not found either.
        if path.contains("{hostname}") {
            let on_b = path
                .replace("{app}", "b-app")
                .replace("{hostname}", "www.a-example.com");
            let (status, body) = api.send(method(&m), &on_b, Some(&b), None).await;
            assert_eq!(
                (status, code(&body)),
                (StatusCode::NOT_FOUND, "CERTIFICATE_NOT_FOUND"),
                "{m} {on_b}"
            );
        }
    }
    assert_eq!(covered, SERVED.len());
    // B's claim on A's hostname from its own app is refused, and nothing of A changed.
    let (status, body) = api.add(&b, "b-app", "www.a-example.com").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "HOSTNAME_TAKEN")
    );
    assert!(
        !body.to_string().contains("a-app"),
        "the conflict names the other app: {body}"
    );
    let (_, a_after) = api
        .send(Method::GET, "/v1/apps/a-app", Some(&a), None)
        .await;
    assert_eq!(a_after, a_before);
    let (status, a_cert_after) = api
        .send(
            Method::GET,
            "/v1/apps/a-app/certificates/www.a-example.com",
            Some(&a),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(a_cert_after, a_cert_before);
}

#[tokio::test]
async fn tenant_isolation_sqlite() {
    tenant_isolation(TestApi::sqlite().await).await;
}

#[tokio::test]
async fn tenant_isolation_postgres() {
    tenant_isolation(TestApi::start(TestDb::postgres().await).await).await;
}

#[tokio::test]
async fn authentication_is_required_and_checked() {
    let api = TestApi::sqlite().await;
    let (status, body) = api.send(Method::GET, "/v1/apps", None, None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
    );
    assert!(
        !body["error"]["remediation"]
            .as_str()
            .expect("remediation")
            .is_empty()
    );
    let (status, body) = api
        .send(Method::GET, "/v1/apps", Some("cp_wrong"), None)
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "INVALID_TOKEN")
    );
    let resp = api
        .client
        .get(format!("{}/v1/apps", api.base))
        .header("Authorization", "Basic abc")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let org = api.org("Customer").await;
    let (status, body) = api
        .send(
            Method::POST,
            "/v1/orgs",
            Some(&org),
            Some(json!({"name": "Other"})),
        )
        .await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "ADMIN_ONLY"));
    let (status, body) = api
        .send(
            Method::POST,
            "/v1/orgs",
            Some(&api.admin),
            Some(json!({"name": "customer"})),
        )
        .await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "ORG_TAKEN"));
    let (status, body) = api
        .send(
            Method::POST,
            "/v1/orgs",
            Some(&api.admin),
            Some(json!({"name": "!!!"})),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "ORG_NAME_INVALID")
    );
}

#[tokio::test]
async fn apps_and_certificate_detail() {
    let api = TestApi::sqlite().await;
    let org = api.org("Shop").await;
    let app = api.app(&org, "shop").await;
    let ipv6: std::net::Ipv6Addr = app["ipv6"]
        .as_str()
        .expect("ipv6")
        .parse()
        .expect("an address");
    assert_eq!(ipv6.segments()[0], 0xfdaa);
    assert_eq!(app["ipv4"], json!(["203.0.113.10"]));
    let cname = app["cname_target"].as_str().expect("cname");
    let token = cname
        .strip_suffix(".shop.apps.plat.test")
        .expect("<token>.<app>.<apps_domain>");
    assert_eq!(app["ownership_value"], json!(format!("app-{token}")));
    assert!(
        app["org_ownership_value"]
            .as_str()
            .expect("org value")
            .starts_with("org-")
    );
    assert_eq!(app["backends"], json!(["127.0.0.1:9000"]));

    let (status, body) = api
        .send(
            Method::PATCH,
            "/v1/apps/shop",
            Some(&org),
            Some(json!({"backends": ["10.0.0.1:80", "[fd00::1]:81"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["backends"], json!(["10.0.0.1:80", "[fd00::1]:81"]));
    assert_eq!(body["ipv6"], app["ipv6"]);
    let (status, body) = api
        .send(
            Method::PATCH,
            "/v1/apps/shop",
            Some(&org),
            Some(json!({"backends": ["nope"]})),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "BACKEND_INVALID")
    );
    for (name, expected) in [("own-v4-1", "192.0.2.50"), ("own-v4-2", "192.0.2.51")] {
        let (status, body) = api
            .send(
                Method::POST,
                "/v1/apps",
                Some(&org),
                Some(json!({"app_name": name, "dedicated_ipv4": true})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(
            (body["ipv4"].clone(), body["dedicated_ipv4"].clone()),
            (json!([expected]), json!(expected))
        );
    }
    let (status, body) = api
        .send(
            Method::POST,
            "/v1/apps",
            Some(&org),
            Some(json!({"app_name": "own-v4-3", "dedicated_ipv4": true})),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "NO_ALLOCATED_IPS")
    );
    let (status, body) = api
        .send(
            Method::POST,
            "/v1/apps",
            Some(&org),
            Some(json!({"app_name": "Bad_Name"})),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "APP_NAME_INVALID")
    );

    let (status, detail) = api.add(&org, "shop", "WWW.Shop-Example.COM.").await;
    assert_eq!(status, StatusCode::CREATED, "{detail}");
    assert_eq!(detail["hostname"], "www.shop-example.com");
    assert_eq!(detail["status"], "pending_ownership");
    assert_eq!(detail["acme_requested"], true);
    assert_eq!(detail["certificates"], json!([]));
    assert_eq!(detail["validation"]["ownership_verified"], false);
    let req = &detail["dns_requirements"];
    assert_eq!(req["a"], json!(["203.0.113.10"]));
    assert_eq!(req["aaaa"], json!([app["ipv6"]]));
    assert_eq!(req["cname"], json!(cname));
    assert_eq!(
        req["acme_challenge"]["name"],
        "_acme-challenge.www.shop-example.com"
    );
    assert_eq!(
        req["acme_challenge"]["target"],
        json!(format!("www.shop-example.com.{token}.acme.plat.test"))
    );
    assert_eq!(
        req["ownership"]["name"],
        "_certplane-ownership.www.shop-example.com"
    );
    assert_eq!(req["ownership"]["app_value"], app["ownership_value"]);
    assert_eq!(req["ownership"]["org_value"], app["org_ownership_value"]);
    assert!(detail.get("private_key").is_none());

    // Adding it again answers 200 with the same record.
    let (status, again) = api.add(&org, "shop", "www.shop-example.com").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["created_at"], detail["created_at"]);

    // A wildcard, addressed with %2A, and an apex without a CNAME.
    let (status, wild) = api.add(&org, "shop", "*.shop-example.com").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(wild["is_wildcard"], true);
    assert_eq!(
        wild["dns_requirements"]["acme_challenge"]["name"],
        "_acme-challenge.shop-example.com"
    );
    let (status, got) = api
        .send(
            Method::GET,
            "/v1/apps/shop/certificates/%2A.shop-example.com",
            Some(&org),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["hostname"], "*.shop-example.com");
    let (status, apex) = api.add(&org, "shop", "shop-example.com").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        (
            apex["is_apex"].clone(),
            apex["dns_requirements"]["cname"].clone()
        ),
        (json!(true), Value::Null)
    );

    // A check against DNS servers that do not answer says so, and leaves ownership unproven.
    let (status, checked) = api
        .send(
            Method::POST,
            "/v1/apps/shop/certificates/www.shop-example.com/check",
            Some(&org),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{checked}");
    assert_eq!(checked["status"], "pending_ownership");
    let codes: Vec<&str> = checked["validation_errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["code"].as_str().expect("code"))
        .collect();
    assert!(codes.contains(&"DNS_TIMEOUT"), "{codes:?}");
    assert!(codes.contains(&"OWNERSHIP_NOT_VERIFIED"), "{codes:?}");

    // Deletes: custom (there is none), then acme, which releases the hostname.
    let host = "/v1/apps/shop/certificates/www.shop-example.com";
    let (status, body) = api
        .send(Method::DELETE, &format!("{host}/custom"), Some(&org), None)
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "CUSTOM_CERTIFICATE_NOT_FOUND")
    );
    let (status, _) = api
        .send(Method::DELETE, &format!("{host}/acme"), Some(&org), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api.send(Method::GET, host, Some(&org), None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "CERTIFICATE_NOT_FOUND")
    );
    let (status, _) = api
        .send(
            Method::DELETE,
            "/v1/apps/shop/certificates/%2A.shop-example.com",
            Some(&org),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Deleting the app releases its remaining hostnames for anyone.
    let (status, _) = api
        .send(Method::DELETE, "/v1/apps/shop", Some(&org), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api
        .send(Method::GET, "/v1/apps/shop", Some(&org), None)
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "APP_NOT_FOUND")
    );
    let other = api.org("Next").await;
    api.app(&other, "next").await;
    let (status, _) = api.add(&other, "next", "shop-example.com").await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn refused_hostnames_write_nothing() {
    let api = TestApi::sqlite().await;
    let a = api.org("A").await;
    let b = api.org("B").await;
    api.app(&a, "first").await;
    api.app(&a, "second").await;
    api.app(&b, "third").await;
    assert_eq!(
        api.add(&a, "first", "www.taken.example").await.0,
        StatusCode::CREATED
    );

    let cases = [
        (
            "second",
            "www.taken.example",
            StatusCode::CONFLICT,
            "HOSTNAME_TAKEN",
        ),
        (
            "third",
            "WWW.TAKEN.EXAMPLE.",
            StatusCode::CONFLICT,
            "HOSTNAME_TAKEN",
        ),
        (
            "second",
            "co.uk",
            StatusCode::UNPROCESSABLE_ENTITY,
            "HOSTNAME_PUBLIC_SUFFIX",
        ),
        (
            "second",
            "*.*.example.com",
            StatusCode::UNPROCESSABLE_ENTITY,
            "HOSTNAME_INVALID_WILDCARD",
        ),
        (
            "second",
            "192.0.2.1",
            StatusCode::UNPROCESSABLE_ENTITY,
            "HOSTNAME_IP_LITERAL",
        ),
        (
            "second",
            "bad_name.example.com",
            StatusCode::UNPROCESSABLE_ENTITY,
            "HOSTNAME_INVALID_CHARACTER",
        ),
        (
            "second",
            "",
            StatusCode::UNPROCESSABLE_ENTITY,
            "HOSTNAME_EMPTY",
        ),
        (
            "second",
            "x.first.apps.plat.test",
            StatusCode::UNPROCESSABLE_ENTITY,
            "HOSTNAME_RESERVED",
        ),
        (
            "second",
            "www.example.com.tok.acme.plat.test",
            StatusCode::UNPROCESSABLE_ENTITY,
            "HOSTNAME_RESERVED",
        ),
    ];
    for (app, hostname, status, expected) in cases {
        let token = if app == "third" { &b } else { &a };
        let (got, body) = api.add(token, app, hostname).await;
        assert_eq!((got, code(&body)), (status, expected), "{hostname:?}");
        assert!(
            !body["error"]["remediation"]
                .as_str()
                .unwrap_or("")
                .is_empty()
        );
    }
    for (token, app) in [(&a, "second"), (&b, "third")] {
        let (_, list) = api
            .send(
                Method::GET,
                &format!("/v1/apps/{app}/certificates"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(
            list["total_count"], 0,
            "{app} got a hostname from a refused request"
        );
    }
    let (_, list) = api
        .send(Method::GET, "/v1/apps/first/certificates", Some(&a), None)
        .await;
    assert_eq!(list["total_count"], 1);
}

#[tokio::test]
async fn bodies_are_limited_and_checked() {
    let api = TestApi::sqlite().await;
    let org = api.org("Bodies").await;
    api.app(&org, "bodies").await;
    let url = format!("{}/v1/apps/bodies/certificates/acme", api.base);
    let huge = json!({"hostname": "a".repeat(certplane_api::MAX_BODY_BYTES + 1)});
    let resp = api
        .client
        .post(&url)
        .bearer_auth(&org)
        .json(&huge)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = resp.json().await.expect("JSON error");
    assert_eq!(code(&body), "PAYLOAD_TOO_LARGE");

    let resp = api
        .client
        .post(&url)
        .bearer_auth(&org)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        code(&resp.json::<Value>().await.expect("JSON")),
        "INVALID_JSON"
    );
    let resp = api
        .client
        .post(&url)
        .bearer_auth(&org)
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    for bad in [
        json!({}),
        json!({"hostname": 5}),
        json!({"hostname": "a.example.com", "extra": 1}),
    ] {
        let (status, body) = api
            .send(
                Method::POST,
                "/v1/apps/bodies/certificates/acme",
                Some(&org),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_BODY"),
            "{bad}"
        );
    }
    let (_, list) = api
        .send(
            Method::GET,
            "/v1/apps/bodies/certificates",
            Some(&org),
            None,
        )
        .await;
    assert_eq!(list["total_count"], 0);
}

#[tokio::test]
async fn pagination_lists_1234_hostnames_once_each() {
    let api = TestApi::sqlite().await;
    let org = api.org("Many").await;
    api.app(&org, "many").await;
    let api = Arc::new(api);
    let mut expected = BTreeSet::new();
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let api = api.clone();
        let org = org.clone();
        tasks.push(tokio::spawn(async move {
            for i in (chunk..1234).step_by(8) {
                let (status, body) = api.add(&org, "many", &format!("h{i}.many.example")).await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
            }
        }));
        for i in (chunk..1234).step_by(8) {
            expected.insert(format!("h{i}.many.example"));
        }
    }
    for t in tasks {
        t.await.expect("adder");
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/apps/many/certificates?limit=100&cursor={c}"),
            None => "/v1/apps/many/certificates?limit=100".to_owned(),
        };
        let (status, page) = api.send(Method::GET, &path, Some(&org), None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["total_count"], 1234);
        pages += 1;
        let items = page["certificates"].as_array().expect("certificates");
        assert!(items.len() <= 100);
        seen.extend(
            items
                .iter()
                .map(|c| c["hostname"].as_str().expect("hostname").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 13);
    assert_eq!(seen.len(), 1234, "no hostname twice");
    assert_eq!(
        seen.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "every hostname once"
    );
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "stable name order");

    let (_, first) = api
        .send(Method::GET, "/v1/apps/many/certificates", Some(&org), None)
        .await;
    assert_eq!(
        first["certificates"].as_array().expect("list").len(),
        25,
        "default limit"
    );
    let (_, max) = api
        .send(
            Method::GET,
            "/v1/apps/many/certificates?limit=500",
            Some(&org),
            None,
        )
        .await;
    assert_eq!(max["certificates"].as_array().expect("list").len(), 500);
    for bad in ["limit=0", "limit=501", "limit=abc"] {
        let (status, body) = api
            .send(
                Method::GET,
                &format!("/v1/apps/many/certificates?{bad}"),
                Some(&org),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert!(
            ["LIMIT_OUT_OF_RANGE", "INVALID_QUERY"].contains(&code(&body)),
            "{bad}: {body}"
        );
    }
    let (status, body) = api
        .send(
            Method::GET,
            "/v1/apps/many/certificates?cursor=%%%",
            Some(&org),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = api
        .send(
            Method::GET,
            "/v1/apps/many/certificates?cursor=_-_-_",
            Some(&org),
            None,
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_CURSOR")
    );
}
