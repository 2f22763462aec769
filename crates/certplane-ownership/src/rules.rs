//! The rules, as pure functions over what the DNS showed: what proves ownership, whether the
//! name's traffic reaches the platform, which ACME challenge paths can work.
//!
//! Ownership is proven only by records that name THIS app or org for good: the app's dedicated
//! IPv6 address (never handed out again), or a value holding the app's or org's token (never
//! reused). A records, shared or dedicated IPv4s and CNAMEs to a bare app name are recycled
//! and prove nothing: accepting them would let whoever picks up a released IP or app name take
//! over a customer's subdomain.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use certplane_domain::{Hostname, Ipv6Prefix};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::observed::{Answer, Observed, normalize_name};

/// What identifies the app a hostname is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub hostname: Hostname,
    /// The app's dedicated IPv6 address.
    pub app_ipv6: Ipv6Addr,
    /// `<token>.<app>.<apps_domain>`
    pub cname_target: String,
    /// `<base>.<token>.<challenge_zone>`
    pub challenge_target: String,
    /// `app-<token>`
    pub app_value: String,
    /// `org-<token>`
    pub org_value: String,
    /// Every IPv4 address the platform answers on (shared, and the app's dedicated one).
    pub platform_ipv4: Vec<Ipv4Addr>,
    /// The prefix every app's IPv6 address comes from.
    pub platform_ipv6: Ipv6Prefix,
    /// The name of the ownership TXT record, for messages.
    pub ownership_record: String,
}

/// How ownership was proven.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proof {
    Aaaa,
    Cname,
    OwnershipTxt,
    AcmeChallengeCname,
}

/// A problem found, with a stable code, what is wrong and what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub code: String,
    pub message: String,
    pub remediation: String,
}

impl Finding {
    pub fn new(code: &str, message: impl Into<String>, remediation: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            remediation: remediation.into(),
        }
    }
}

/// The ownership verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    pub verified: bool,
    /// Every record found that proves it (several may).
    pub proofs: Vec<Proof>,
    pub txt_configured: bool,
    /// Not verified because a lookup that could have proven it failed (timeout, SERVFAIL): the
    /// answer is "unknown", not "no".
    pub inconclusive: bool,
    /// Why it is not verified; empty when it is.
    pub findings: Vec<Finding>,
}

/// Decides whether the hostname is proven to belong to the app.
pub fn ownership(expected: &Expected, observed: &Observed) -> Ownership {
    let mut proofs = Vec::new();
    let mut findings = Vec::new();
    let host = expected.hostname.as_str();

    if !expected.hostname.is_wildcard() {
        let aaaa = observed.aaaa.records();
        let matching = aaaa.iter().filter(|a| **a == expected.app_ipv6).count();
        if !aaaa.is_empty() && matching == aaaa.len() {
            proofs.push(Proof::Aaaa);
        } else if matching > 0 {
            let others: Vec<String> = aaaa
                .iter()
                .filter(|a| **a != expected.app_ipv6)
                .map(ToString::to_string)
                .collect();
            findings.push(Finding::new(
                "DNS_RECORD_PARTIAL_MATCH",
                format!(
                    "{host} has AAAA {} besides the app's {}",
                    others.join(", "),
                    expected.app_ipv6
                ),
                format!(
                    "Remove the other AAAA records so that {host} has only AAAA {}.",
                    expected.app_ipv6
                ),
            ));
        } else if let Some(other) = aaaa.iter().find(|a| expected.platform_ipv6.contains(**a)) {
            findings.push(Finding::new(
                "DNS_RECORD_MISMATCH",
                format!("{host} has AAAA {other}, which is not this app's address"),
                format!("Change the AAAA record of {host} to {}.", expected.app_ipv6),
            ));
        }
        if observed
            .cname_chain
            .iter()
            .any(|t| normalize_name(t) == expected.cname_target)
        {
            proofs.push(Proof::Cname);
        }
    }

    let txt = observed.ownership_txt.records();
    // Values as DNS provider forms store them: several per record separated by ';', and
    // sometimes with the quotes the form asked for kept as part of the value.
    let values = || {
        txt.iter()
            .flat_map(|v| v.split(';'))
            .map(|v| v.trim().trim_matches('"').trim())
    };
    let txt_configured = values().any(|v| v == expected.app_value || v == expected.org_value);
    if txt_configured {
        proofs.push(Proof::OwnershipTxt);
    } else if let Some(other) = values().find(|v| v.starts_with("app-") || v.starts_with("org-")) {
        findings.push(Finding::new(
            "DNS_RECORD_MISMATCH",
            format!(
                "{} holds {other:?}, which names another app or org",
                expected.ownership_record
            ),
            format!(
                "Set {} to \"{}\" (or \"{}\").",
                expected.ownership_record, expected.app_value, expected.org_value
            ),
        ));
    }
    if observed
        .acme_challenge_cname
        .records()
        .iter()
        .any(|t| normalize_name(t) == expected.challenge_target)
    {
        proofs.push(Proof::AcmeChallengeCname);
    }

    let verified = !proofs.is_empty();
    let mut inconclusive = false;
    if !verified {
        for (what, answer) in [
            ("the AAAA lookup", outcome(&observed.aaaa)),
            ("the ownership TXT lookup", outcome(&observed.ownership_txt)),
            (
                "the _acme-challenge lookup",
                outcome(&observed.acme_challenge_cname),
            ),
        ] {
            if let Some(f) = lookup_failure(what, host, answer) {
                inconclusive = true;
                if !findings.iter().any(|x| x.code == f.code) {
                    findings.push(f);
                }
            }
        }
        let how = if expected.hostname.is_wildcard() {
            format!(
                "A wildcard is proven by the TXT record {} = \"{}\" (or a CNAME _acme-challenge.{} -> {}).",
                expected.ownership_record,
                expected.app_value,
                expected.hostname.base(),
                expected.challenge_target
            )
        } else {
            format!(
                "Set AAAA {host} -> {}, or CNAME {host} -> {}, or the TXT record {} = \"{}\" (works behind a CDN).",
                expected.app_ipv6,
                expected.cname_target,
                expected.ownership_record,
                expected.app_value
            )
        };
        findings.push(Finding::new(
            "OWNERSHIP_NOT_VERIFIED",
            format!("no DNS record proves that {host} belongs to this app (A records and CNAMEs to a bare app name do not)"),
            how,
        ));
    }
    Ownership {
        verified,
        proofs,
        txt_configured,
        inconclusive,
        findings,
    }
}

/// An outcome without its records, for failure reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    ServFail,
    Timeout,
    Failed,
}

fn outcome<T>(answer: &Answer<T>) -> Outcome {
    match answer {
        Answer::ServFail => Outcome::ServFail,
        Answer::Timeout => Outcome::Timeout,
        Answer::Failed(_) => Outcome::Failed,
        _ => Outcome::Ok,
    }
}

fn lookup_failure(what: &str, host: &str, outcome: Outcome) -> Option<Finding> {
    match outcome {
        Outcome::Ok => None,
        Outcome::Timeout => Some(Finding::new(
            "DNS_TIMEOUT",
            format!("{what} for {host} got no answer in time"),
            "Check that the domain's DNS servers are up and reachable; the check is retried automatically.",
        )),
        Outcome::ServFail | Outcome::Failed => Some(Finding::new(
            "DNS_VALIDATION_FAILED",
            format!("{what} for {host} failed (the DNS server answered with an error)"),
            "Check the domain's DNS servers (a broken DNSSEC chain or a lame delegation gives SERVFAIL); the check is retried automatically.",
        )),
    }
}

/// Where the name's traffic goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// A/AAAA/CNAME point at the platform.
    pub configured: bool,
    /// The name resolves to addresses that are not the platform's: a CDN or proxy in front.
    pub is_proxied: bool,
    /// The proxy's name, when its published ranges are known.
    pub proxy_provider: Option<String>,
    /// TLS-ALPN-01 can work: the name points straight at the platform.
    pub alpn_configured: bool,
    /// HTTP-01 can work: straight at the platform, or through a proxy that forwards HTTP.
    pub http_configured: bool,
    /// DNS-01 can work: `_acme-challenge` is delegated to the platform.
    pub dns_configured: bool,
    pub findings: Vec<Finding>,
}

/// Named address ranges of known proxies and CDNs (operator-extendable).
pub type ProxyRanges = BTreeMap<String, Vec<IpNet>>;

/// Decides where the hostname's traffic goes and which challenges can work. Addresses that are
/// not the platform's mean a proxy or CDN in front when they are in a known proxy's ranges, or
/// when the ownership TXT record says the name is the app's all the same (`txt_proven`);
/// otherwise the name is misconfigured.
pub fn traffic(
    expected: &Expected,
    observed: &Observed,
    proxies: &ProxyRanges,
    txt_proven: bool,
) -> Traffic {
    let host = expected.hostname.as_str();
    let v4 = observed.a.records();
    let v6 = observed.aaaa.records();
    let ours_v4 = |a: &Ipv4Addr| expected.platform_ipv4.contains(a);
    let ours_v6 = |a: &Ipv6Addr| *a == expected.app_ipv6;
    let cname_ok = observed
        .cname_chain
        .iter()
        .any(|t| normalize_name(t) == expected.cname_target);
    let foreign: Vec<IpAddr> = v4
        .iter()
        .filter(|a| !ours_v4(a))
        .map(|a| IpAddr::V4(*a))
        .chain(
            v6.iter()
                .filter(|a| !ours_v6(a) && !expected.platform_ipv6.contains(**a))
                .map(|a| IpAddr::V6(*a)),
        )
        .collect();
    // Another app's dedicated address: the platform's, but IPv6 clients (and the CA, which
    // prefers IPv6) would reach the wrong app.
    let other_app_v6: Vec<String> = v6
        .iter()
        .filter(|a| !ours_v6(a) && expected.platform_ipv6.contains(**a))
        .map(ToString::to_string)
        .collect();
    let any_ours = v4.iter().any(ours_v4) || v6.iter().any(ours_v6);
    let configured = cname_ok || (any_ours && foreign.is_empty() && other_app_v6.is_empty());
    let provider = foreign.iter().find_map(|ip| {
        proxies
            .iter()
            .find(|(_, nets)| nets.iter().any(|n| n.contains(ip)))
            .map(|(name, _)| name.clone())
    });
    let is_proxied = !configured && !foreign.is_empty() && (provider.is_some() || txt_proven);
    let dns_configured = observed
        .acme_challenge_cname
        .records()
        .iter()
        .any(|t| normalize_name(t) == expected.challenge_target);
    let mut findings = Vec::new();
    if !cname_ok && !other_app_v6.is_empty() {
        findings.push(Finding::new(
            "DNS_RECORD_MISMATCH",
            format!(
                "{host} has AAAA {}, the address of another app: IPv6 clients reach that app",
                other_app_v6.join(", ")
            ),
            format!("Change the AAAA record of {host} to {}.", expected.app_ipv6),
        ));
    } else if !configured && !is_proxied {
        let none = v4.is_empty() && v6.is_empty() && observed.cname_chain.is_empty();
        if none && !observed.a.is_failure() && !observed.aaaa.is_failure() {
            findings.push(Finding::new(
                "DNS_NOT_CONFIGURED",
                format!("{host} has no A, AAAA or CNAME record"),
                format!(
                    "Set A {host} -> {} and AAAA {host} -> {} (see `certplane certs setup`).",
                    join(&expected.platform_ipv4),
                    expected.app_ipv6
                ),
            ));
        } else if !foreign.is_empty() {
            let shown: Vec<String> = foreign.iter().map(ToString::to_string).collect();
            findings.push(Finding::new(
                "DNS_RECORD_MISMATCH",
                format!("{host} resolves to {}, which is not this platform", shown.join(", ")),
                format!(
                    "Point {host} at A {} / AAAA {}; if a CDN or proxy is in front on purpose, set the TXT record {} = \"{}\" to prove ownership.",
                    join(&expected.platform_ipv4), expected.app_ipv6, expected.ownership_record, expected.app_value
                ),
            ));
        }
    }
    if configured && v6.is_empty() && !cname_ok {
        findings.push(Finding::new(
            "IPV6_NOT_FOUND",
            format!("{host} has no AAAA record"),
            format!(
                "Add AAAA {host} -> {}: it serves IPv6 clients and proves ownership on its own.",
                expected.app_ipv6
            ),
        ));
    }
    Traffic {
        configured,
        is_proxied,
        proxy_provider: provider,
        alpn_configured: configured,
        http_configured: configured || is_proxied,
        dns_configured,
        findings,
    }
}

fn join(addrs: &[Ipv4Addr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::CaaFound;

    fn expected(host: &str) -> Expected {
        let hostname = Hostname::parse(host).expect("valid");
        let base = hostname.base().to_owned();
        Expected {
            app_ipv6: "fdaa::7".parse().expect("valid"),
            cname_target: "tok123ab.web.apps.plat.test".into(),
            challenge_target: format!("{base}.tok123ab.acme.plat.test"),
            app_value: "app-tok123ab".into(),
            org_value: "org-orgtok99".into(),
            platform_ipv4: vec!["203.0.113.10".parse().expect("valid")],
            platform_ipv6: "fdaa::/48".parse().expect("valid"),
            ownership_record: format!("_certplane-ownership.{base}"),
            hostname,
        }
    }

    fn nothing() -> Observed {
        Observed {
            a: Answer::NxDomain,
            aaaa: Answer::NxDomain,
            cname_chain: vec![],
            ownership_txt: Answer::NxDomain,
            acme_challenge_cname: Answer::NxDomain,
            caa: CaaFound {
                at: None,
                records: vec![],
                failed: None,
            },
            soa: Answer::NoData,
        }
    }

    fn codes(findings: &[Finding]) -> Vec<&str> {
        findings.iter().map(|f| f.code.as_str()).collect()
    }

    #[test]
    fn aaaa_of_the_app_proves() {
        let e = expected("www.example.com");
        let o = Observed {
            aaaa: Answer::Records(vec![e.app_ipv6]),
            ..nothing()
        };
        let v = ownership(&e, &o);
        assert!(v.verified);
        assert_eq!(v.proofs, vec![Proof::Aaaa]);
        assert!(v.findings.is_empty());
    }

    #[test]
    fn partial_and_foreign_aaaa_do_not_prove() {
        let e = expected("www.example.com");
        let o = Observed {
            aaaa: Answer::Records(vec![e.app_ipv6, "2001:db8::1".parse().expect("valid")]),
            ..nothing()
        };
        let v = ownership(&e, &o);
        assert!(!v.verified);
        assert_eq!(
            codes(&v.findings),
            vec!["DNS_RECORD_PARTIAL_MATCH", "OWNERSHIP_NOT_VERIFIED"]
        );
        let o = Observed {
            aaaa: Answer::Records(vec!["fdaa::8".parse().expect("valid")]),
            ..nothing()
        };
        let v = ownership(&e, &o);
        assert!(!v.verified);
        assert_eq!(
            codes(&v.findings),
            vec!["DNS_RECORD_MISMATCH", "OWNERSHIP_NOT_VERIFIED"]
        );
    }

    #[test]
    fn a_records_never_prove() {
        let e = expected("www.example.com");
        let o = Observed {
            a: Answer::Records(e.platform_ipv4.clone()),
            ..nothing()
        };
        assert!(!ownership(&e, &o).verified);
        let t = traffic(&e, &o, &ProxyRanges::new(), false);
        assert!(t.configured, "an A record to the platform carries traffic");
        assert_eq!(codes(&t.findings), vec!["IPV6_NOT_FOUND"]);
    }

    #[test]
    fn cnames_prove_only_with_the_token() {
        let e = expected("www.example.com");
        let o = Observed {
            cname_chain: vec!["web.apps.plat.test.".into()],
            ..nothing()
        };
        assert!(!ownership(&e, &o).verified);
        let o = Observed {
            cname_chain: vec![
                "edge.cdn.test.".into(),
                "TOK123AB.web.apps.plat.test.".into(),
            ],
            ..nothing()
        };
        assert_eq!(ownership(&e, &o).proofs, vec![Proof::Cname]);
    }

    #[test]
    fn txt_values_of_the_app_or_org_prove() {
        let e = expected("www.example.com");
        for value in ["app-tok123ab", "other=1; org-orgtok99 ;x", " app-tok123ab"] {
            let o = Observed {
                ownership_txt: Answer::Records(vec!["unrelated".into(), value.into()]),
                ..nothing()
            };
            let v = ownership(&e, &o);
            assert_eq!(v.proofs, vec![Proof::OwnershipTxt], "{value:?}");
            assert!(v.txt_configured);
        }
        let o = Observed {
            ownership_txt: Answer::Records(vec!["app-someoneelse".into()]),
            ..nothing()
        };
        let v = ownership(&e, &o);
        assert!(!v.verified);
        assert_eq!(
            codes(&v.findings),
            vec!["DNS_RECORD_MISMATCH", "OWNERSHIP_NOT_VERIFIED"]
        );
        // Case matters: tokens are lower case, and a value is compared exactly.
        let o = Observed {
            ownership_txt: Answer::Records(vec!["APP-TOK123AB".into()]),
            ..nothing()
        };
        assert!(!ownership(&e, &o).verified);
    }

    #[test]
    fn wildcards_need_txt_or_challenge_cname() {
        let e = expected("*.example.com");
        let o = Observed {
            aaaa: Answer::Records(vec![e.app_ipv6]),
            cname_chain: vec![e.cname_target.clone()],
            ..nothing()
        };
        let v = ownership(&e, &o);
        assert!(!v.verified, "AAAA and CNAME do not prove a wildcard");
        assert!(
            v.findings
                .last()
                .expect("finding")
                .remediation
                .contains("_certplane-ownership.example.com")
        );
        let o = Observed {
            acme_challenge_cname: Answer::Records(vec![
                "example.com.tok123ab.acme.plat.test.".into(),
            ]),
            ..nothing()
        };
        assert_eq!(ownership(&e, &o).proofs, vec![Proof::AcmeChallengeCname]);
    }

    #[test]
    fn lookup_failures_are_reported_not_verified() {
        let e = expected("www.example.com");
        let o = Observed {
            aaaa: Answer::ServFail,
            ownership_txt: Answer::Timeout,
            ..nothing()
        };
        let v = ownership(&e, &o);
        assert!(!v.verified);
        assert_eq!(
            codes(&v.findings),
            vec![
                "DNS_VALIDATION_FAILED",
                "DNS_TIMEOUT",
                "OWNERSHIP_NOT_VERIFIED"
            ]
        );
    }

    #[test]
    fn another_apps_aaaa_beside_the_shared_a_is_not_configured() {
        let e = expected("www.example.com");
        let o = Observed {
            a: Answer::Records(e.platform_ipv4.clone()),
            aaaa: Answer::Records(vec!["fdaa::99".parse().expect("ip")]),
            ..nothing()
        };
        let t = traffic(&e, &o, &ProxyRanges::new(), false);
        assert!(!t.configured && !t.alpn_configured);
        assert_eq!(codes(&t.findings), vec!["DNS_RECORD_MISMATCH"]);
    }

    #[test]
    fn quoted_txt_values_prove() {
        let e = expected("www.example.com");
        let o = Observed {
            ownership_txt: Answer::Records(vec!["\"app-tok123ab\"".into()]),
            ..nothing()
        };
        assert_eq!(ownership(&e, &o).proofs, vec![Proof::OwnershipTxt]);
    }

    #[test]
    fn failed_lookups_are_inconclusive_absent_records_are_not() {
        let e = expected("www.example.com");
        let o = Observed {
            aaaa: Answer::Timeout,
            ..nothing()
        };
        assert!(ownership(&e, &o).inconclusive);
        assert!(!ownership(&e, &nothing()).inconclusive);
    }

    #[test]
    fn proxies_are_detected_by_range() {
        let e = expected("www.example.com");
        let mut proxies = ProxyRanges::new();
        proxies.insert(
            "testcdn".into(),
            vec!["198.51.100.0/24".parse().expect("net")],
        );
        let o = Observed {
            a: Answer::Records(vec!["198.51.100.7".parse().expect("ip")]),
            ..nothing()
        };
        let t = traffic(&e, &o, &proxies, false);
        assert!(t.is_proxied && !t.configured && !t.alpn_configured && t.http_configured);
        assert_eq!(t.proxy_provider.as_deref(), Some("testcdn"));
        assert!(t.findings.is_empty());
        let o = Observed {
            a: Answer::Records(vec!["192.0.2.99".parse().expect("ip")]),
            ..nothing()
        };
        let t = traffic(&e, &o, &proxies, false);
        assert!(!t.is_proxied && !t.configured);
        assert_eq!(codes(&t.findings), vec!["DNS_RECORD_MISMATCH"]);
        // An unknown proxy is recognised when the TXT record proves the name all the same.
        let t = traffic(&e, &o, &proxies, true);
        assert!(t.is_proxied && t.proxy_provider.is_none() && t.findings.is_empty());
        let t = traffic(&e, &nothing(), &proxies, false);
        assert_eq!(codes(&t.findings), vec!["DNS_NOT_CONFIGURED"]);
    }
}
