//! [`DnsClient`]: the lookups a check needs, over hickory-resolver with caching off, each
//! outcome mapped to an [`Answer`] that keeps NODATA, NXDOMAIN, SERVFAIL and timeouts apart.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

use crate::observed::{Answer, CaaFound, CaaRecord, normalize_name};

/// How long one try of a lookup waits for an answer.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Retries after the first try (so a silent server costs `(1 + ATTEMPTS) × TIMEOUT`).
const ATTEMPTS: usize = 1;

/// DNS lookups for checks. Never caches: a check must see the records as they are now.
#[derive(Clone)]
pub struct DnsClient {
    resolver: TokioResolver,
}

impl std::fmt::Debug for DnsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DnsClient")
    }
}

impl DnsClient {
    /// Asks `nameservers` (UDP, with TCP for truncated answers), or the system's resolvers
    /// (`/etc/resolv.conf`) when the list is empty.
    pub fn new(nameservers: &[SocketAddr]) -> Result<Self, ResolverSetupError> {
        let config = if nameservers.is_empty() {
            let (config, _) = hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                ResolverSetupError(format!(
                    "cannot read the system resolver configuration: {e}"
                ))
            })?;
            ResolverConfig::from_name_servers(config.name_servers().to_vec())
        } else {
            ResolverConfig::from_name_servers(
                nameservers
                    .iter()
                    .map(|sa| {
                        let mut udp = ConnectionConfig::udp();
                        udp.port = sa.port();
                        let mut tcp = ConnectionConfig::tcp();
                        tcp.port = sa.port();
                        NameServerConfig::new(sa.ip(), true, vec![udp, tcp])
                    })
                    .collect(),
            )
        };
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        opts.timeout = TIMEOUT;
        opts.attempts = ATTEMPTS;
        opts.ndots = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.preserve_intermediates = true;
        let resolver = hickory_resolver::Resolver::builder_with_config(
            config,
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .map_err(|e| ResolverSetupError(e.to_string()))?;
        Ok(Self { resolver })
    }

    async fn lookup(&self, name: &str, rtype: RecordType) -> Answer<Record> {
        let mut fqdn = match Name::from_ascii(name) {
            Ok(n) => n,
            Err(e) => return Answer::Failed(format!("invalid name {name:?}: {e}")),
        };
        fqdn.set_fqdn(true);
        match self.resolver.lookup(fqdn, rtype).await {
            Ok(lookup) => {
                let records = lookup.answers().to_vec();
                if records.is_empty() {
                    Answer::NoData
                } else {
                    Answer::Records(records)
                }
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. }))) => {
                match response_code {
                    ResponseCode::NXDomain => Answer::NxDomain,
                    ResponseCode::NoError => Answer::NoData,
                    _ => Answer::ServFail,
                }
            }
            Err(NetError::Dns(DnsError::ResponseCode(_))) => Answer::ServFail,
            Err(NetError::Timeout) => Answer::Timeout,
            Err(e) => Answer::Failed(e.to_string()),
        }
    }

    /// A and AAAA records after following CNAMEs, and the CNAME chain from `host`.
    pub async fn addresses(&self, host: &str) -> (Answer<Ipv4Addr>, Answer<Ipv6Addr>, Vec<String>) {
        let (a, aaaa, cname) = tokio::join!(
            self.lookup(host, RecordType::A),
            self.lookup(host, RecordType::AAAA),
            self.lookup(host, RecordType::CNAME),
        );
        let mut chain = cname_chain(host, a.records().iter().chain(aaaa.records()));
        if chain.is_empty() {
            // A chain whose end has no A/AAAA comes back as an error without its CNAMEs.
            chain = cname_chain(host, cname.records().iter());
        }
        let v4 = only(a, |d| match d {
            RData::A(a) => Some(a.0),
            _ => None,
        });
        let v6 = only(aaaa, |d| match d {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        });
        (v4, v6, chain)
    }

    /// TXT records of `name`, each record's character strings joined.
    pub async fn txt(&self, name: &str) -> Answer<String> {
        only(self.lookup(name, RecordType::TXT).await, |d| match d {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s))
                    .collect::<String>(),
            ),
            _ => None,
        })
    }

    /// CNAME targets of `name`, without the trailing dot.
    pub async fn cname(&self, name: &str) -> Answer<String> {
        only(self.lookup(name, RecordType::CNAME).await, |d| match d {
            RData::CNAME(c) => Some(normalize_name(&c.0.to_string())),
            _ => None,
        })
    }

    /// The SOA of the zone `name` lies in, as `zone mname serial`: from the answer when `name`
    /// is the zone's apex, from the authority section of the negative answer otherwise.
    pub async fn soa(&self, name: &str) -> Answer<String> {
        let Ok(mut fqdn) = Name::from_ascii(name) else {
            return Answer::Failed(format!("invalid name {name:?}"));
        };
        fqdn.set_fqdn(true);
        let show = |zone: &Name, soa: &hickory_resolver::proto::rr::rdata::SOA| {
            format!(
                "{} {} {}",
                normalize_name(&zone.to_string()),
                normalize_name(&soa.mname.to_string()),
                soa.serial
            )
        };
        match self.resolver.lookup(fqdn, RecordType::SOA).await {
            Ok(lookup) => {
                let found: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::SOA(soa) => Some(show(&r.name, soa)),
                        _ => None,
                    })
                    .collect();
                if found.is_empty() {
                    Answer::NoData
                } else {
                    Answer::Records(found)
                }
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords { soa: Some(soa), .. }))) => {
                Answer::Records(vec![show(&soa.name, &soa.data)])
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. }))) => {
                if response_code == ResponseCode::NXDomain {
                    Answer::NxDomain
                } else {
                    Answer::NoData
                }
            }
            Err(NetError::Dns(DnsError::ResponseCode(_))) => Answer::ServFail,
            Err(NetError::Timeout) => Answer::Timeout,
            Err(e) => Answer::Failed(e.to_string()),
        }
    }

    /// The CAA set that applies to `name` (RFC 8659 §3): climbs from `name` towards the root
    /// until a name has CAA records.
    pub async fn caa(&self, name: &str) -> CaaFound {
        let mut current = normalize_name(name);
        loop {
            match self.lookup(&current, RecordType::CAA).await {
                Answer::Records(records) => {
                    let records: Vec<CaaRecord> = records
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::CAA(caa) => Some(CaaRecord {
                                critical: caa.issuer_critical,
                                tag: caa.tag.clone(),
                                value: String::from_utf8_lossy(&caa.value).into_owned(),
                            }),
                            _ => None,
                        })
                        .collect();
                    if !records.is_empty() {
                        return CaaFound {
                            at: Some(current),
                            records,
                            failed: None,
                        };
                    }
                }
                Answer::NoData | Answer::NxDomain => {}
                Answer::ServFail => return failed_caa(&current, "SERVFAIL"),
                Answer::Timeout => return failed_caa(&current, "timeout"),
                Answer::Failed(e) => return failed_caa(&current, &e),
            }
            match current.split_once('.') {
                Some((_, parent)) if !parent.is_empty() => current = parent.to_owned(),
                _ => {
                    return CaaFound {
                        at: None,
                        records: Vec::new(),
                        failed: None,
                    };
                }
            }
        }
    }
}

fn failed_caa(at: &str, why: &str) -> CaaFound {
    CaaFound {
        at: Some(at.to_owned()),
        records: Vec::new(),
        failed: Some(format!("{why} at {at}")),
    }
}

/// Keeps the records whose data `f` maps; a lookup that found only other types (a CNAME whose
/// target has none of this type) is NODATA.
fn only<T>(answer: Answer<Record>, f: impl Fn(&RData) -> Option<T>) -> Answer<T> {
    match answer {
        Answer::Records(records) => {
            let kept: Vec<T> = records.iter().filter_map(|r| f(&r.data)).collect();
            if kept.is_empty() {
                Answer::NoData
            } else {
                Answer::Records(kept)
            }
        }
        Answer::NoData => Answer::NoData,
        Answer::NxDomain => Answer::NxDomain,
        Answer::ServFail => Answer::ServFail,
        Answer::Timeout => Answer::Timeout,
        Answer::Failed(e) => Answer::Failed(e),
    }
}

/// Follows CNAME records from `host` through `records`, in order.
fn cname_chain<'a>(host: &str, records: impl Iterator<Item = &'a Record>) -> Vec<String> {
    let links: Vec<(String, String)> = records
        .filter_map(|r| match &r.data {
            RData::CNAME(c) => Some((
                normalize_name(&r.name.to_string()),
                normalize_name(&c.0.to_string()),
            )),
            _ => None,
        })
        .collect();
    let mut chain = Vec::new();
    let mut at = normalize_name(host);
    while let Some((_, target)) = links.iter().find(|(from, _)| *from == at) {
        if chain.contains(target) || chain.len() > 16 {
            break;
        }
        chain.push(target.clone());
        at = target.clone();
    }
    chain
}

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ResolverSetupError(String);
