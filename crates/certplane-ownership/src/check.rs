//! [`Checker`]: runs every lookup of a check concurrently and applies the rules, giving a
//! [`CheckReport`].

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::caa;
use crate::observed::{Answer, Observed};
use crate::resolver::{DnsClient, ResolverSetupError};
use crate::rules::{self, Expected, Finding, Proof, ProxyRanges};

/// Everything one check concluded; stored as JSON with the hostname and shown by the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Unix seconds.
    pub checked_at: i64,
    pub ownership_verified: bool,
    /// The records that prove ownership.
    pub proofs: Vec<Proof>,
    pub configured: bool,
    pub is_proxied: bool,
    pub proxy_provider: Option<String>,
    pub alpn_configured: bool,
    pub http_configured: bool,
    pub dns_configured: bool,
    pub ownership_txt_configured: bool,
    /// Whether CAA lets the configured CA issue.
    pub caa_permits: bool,
    pub dns_records: DnsRecords,
    /// What is wrong and what to do, most important last (the ownership verdict).
    pub findings: Vec<Finding>,
}

/// What the lookups found, as text.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRecords {
    /// A records, after following the CNAME chain.
    pub a: Vec<String>,
    /// AAAA records, after following the CNAME chain.
    pub aaaa: Vec<String>,
    pub cname_chain: Vec<String>,
    /// Every address the hostname resolves to (A and AAAA).
    pub resolved_addresses: Vec<String>,
    /// The SOA of the hostname's zone, `zone mname serial`.
    pub soa: Option<String>,
    pub acme_challenge_cname: Vec<String>,
    pub ownership_txt: Vec<String>,
    /// `flags tag "value"` of the CAA set that applies.
    pub caa: Vec<String>,
    /// Where that CAA set was found.
    pub caa_at: Option<String>,
    /// Each lookup's outcome: `records`, `no_data`, `nx_domain`, `serv_fail`, `timeout`, `failed`.
    pub outcomes: std::collections::BTreeMap<String, String>,
}

/// Runs checks.
#[derive(Clone, Debug)]
pub struct Checker {
    dns: DnsClient,
    proxies: ProxyRanges,
    ca_identities: Vec<String>,
}

impl Checker {
    /// `nameservers` as [`DnsClient::new`]; `proxies` the known proxy/CDN ranges;
    /// `ca_identities` the CA's CAA identifiers (`letsencrypt.org`).
    pub fn new(
        nameservers: &[SocketAddr],
        proxies: ProxyRanges,
        ca_identities: Vec<String>,
    ) -> Result<Self, ResolverSetupError> {
        Ok(Self {
            dns: DnsClient::new(nameservers)?,
            proxies,
            ca_identities,
        })
    }

    /// Looks everything up now and applies the rules.
    ///
    /// The flag says whether a failed lookup left ownership unknown rather than disproven.
    pub async fn check(&self, expected: &Expected, now: i64) -> (CheckReport, bool) {
        let host = expected.hostname.as_str();
        let base = expected.hostname.base();
        let challenge = format!("_acme-challenge.{base}");
        let ((a, aaaa, cname_chain), ownership_txt, acme_challenge_cname, caa_found, soa) = tokio::join!(
            self.dns.addresses(host),
            self.dns.txt(&expected.ownership_record),
            self.dns.cname(&challenge),
            self.dns.caa(base),
            self.dns.soa(base),
        );
        let observed = Observed {
            a,
            aaaa,
            cname_chain,
            ownership_txt,
            acme_challenge_cname,
            caa: caa_found,
            soa,
        };
        let ownership = rules::ownership(expected, &observed);
        let traffic = rules::traffic(expected, &observed, &self.proxies, ownership.txt_configured);
        let caa = caa::evaluate(
            &observed.caa,
            &self.ca_identities,
            expected.hostname.is_wildcard(),
        );
        let mut findings = traffic.findings.clone();
        match (&caa, &observed.caa.failed) {
            // A CAA lookup that failed is a DNS problem, not a CAA record to change.
            (Err(refusal), Some(why)) => findings.push(Finding::new(
                if why.starts_with("timeout") {
                    "DNS_TIMEOUT"
                } else {
                    "DNS_VALIDATION_FAILED"
                },
                refusal.message.clone(),
                refusal.remediation.clone(),
            )),
            (Err(refusal), None) => findings.push(Finding::new(
                "CAA_RECORD_INVALID",
                refusal.message.clone(),
                refusal.remediation.clone(),
            )),
            (Ok(()), _) => {}
        }
        findings.extend(ownership.findings.iter().cloned());
        let report = CheckReport {
            checked_at: now,
            ownership_verified: ownership.verified,
            proofs: ownership.proofs.clone(),
            configured: traffic.configured,
            is_proxied: traffic.is_proxied,
            proxy_provider: traffic.proxy_provider.clone(),
            alpn_configured: traffic.alpn_configured,
            http_configured: traffic.http_configured,
            dns_configured: traffic.dns_configured,
            ownership_txt_configured: ownership.txt_configured,
            caa_permits: caa.is_ok(),
            dns_records: records(&observed),
            findings,
        };
        (report, ownership.inconclusive)
    }
}

fn records(o: &Observed) -> DnsRecords {
    let strings = |v: &[String]| v.to_vec();
    let mut outcomes = std::collections::BTreeMap::new();
    outcomes.insert("a".into(), outcome(&o.a));
    outcomes.insert("aaaa".into(), outcome(&o.aaaa));
    outcomes.insert("ownership_txt".into(), outcome(&o.ownership_txt));
    outcomes.insert(
        "acme_challenge_cname".into(),
        outcome(&o.acme_challenge_cname),
    );
    outcomes.insert("soa".into(), outcome(&o.soa));
    if let Some(failed) = &o.caa.failed {
        outcomes.insert("caa".into(), format!("failed: {failed}"));
    }
    DnsRecords {
        a: o.a.records().iter().map(ToString::to_string).collect(),
        aaaa: o.aaaa.records().iter().map(ToString::to_string).collect(),
        cname_chain: o.cname_chain.clone(),
        resolved_addresses: o
            .a
            .records()
            .iter()
            .map(ToString::to_string)
            .chain(o.aaaa.records().iter().map(ToString::to_string))
            .collect(),
        soa: o.soa.records().first().cloned(),
        acme_challenge_cname: strings(o.acme_challenge_cname.records()),
        ownership_txt: strings(o.ownership_txt.records()),
        caa: o
            .caa
            .records
            .iter()
            .map(|r| {
                format!(
                    "{} {} \"{}\"",
                    if r.critical { 128 } else { 0 },
                    r.tag,
                    r.value
                )
            })
            .collect(),
        caa_at: o.caa.at.clone().filter(|_| !o.caa.records.is_empty()),
        outcomes,
    }
}

fn outcome<T>(a: &Answer<T>) -> String {
    match a {
        Answer::Records(_) => "records".into(),
        Answer::NoData => "no_data".into(),
        Answer::NxDomain => "nx_domain".into(),
        Answer::ServFail => "serv_fail".into(),
        Answer::Timeout => "timeout".into(),
        Answer::Failed(e) => format!("failed: {e}"),
    }
}
