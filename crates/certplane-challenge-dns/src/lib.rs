//! The platform's authoritative DNS server for `platform.challenge_zone`.
//!
//! Customers delegate `_acme-challenge.<host>` to `<host>.<token>.<challenge_zone>` (a CNAME);
//! during a DNS-01 order the platform publishes the TXT value there (`Store::put_dns_challenge`)
//! and this server answers it. It answers nothing else: SOA and NS at the zone's apex, TXT at
//! published names (every value at once, so an apex order and a wildcard order of one name do
//! not clobber each other), NODATA for other types at existing names (and empty non-terminals),
//! NXDOMAIN for the rest of the zone, REFUSED outside it. No recursion, no zone transfers.
//!
//! The answers come from a map reloaded from the store every [`RELOAD_EVERY`], swapped whole,
//! so a query reads one consistent set and a withdrawn value stops being answered within that
//! time; several control planes over one PostgreSQL database answer alike.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use certplane_domain::Hostname;
use certplane_store::Store;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{NS, SOA, TXT};
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};
use tokio::net::{TcpListener, UdpSocket};

/// How often the published values are reloaded from the store.
pub const RELOAD_EVERY: Duration = Duration::from_millis(250);
/// TTL of every answer and of negative answers (SOA minimum): short, values change per order.
pub const TTL: u32 = 30;

type Values = HashMap<Name, Vec<String>>;

/// Answers for one zone from the values published now.
#[derive(Debug)]
pub struct ZoneHandler {
    zone: LowerName,
    soa: Record,
    ns: Vec<Record>,
    values: Arc<ArcSwap<Values>>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0} is not a usable zone or name server name")]
    Name(String),
    #[error("DNS server failed: {0}")]
    Server(String),
}

fn fqdn(name: &str) -> Result<Name, DnsError> {
    let text = format!("{}.", name.trim_end_matches('.'));
    Name::from_ascii(&text).map_err(|_| DnsError::Name(name.to_owned()))
}

impl ZoneHandler {
    /// `nameservers` empty means `ns1.<zone>`.
    pub fn new(zone: &Hostname, nameservers: &[String]) -> Result<Self, DnsError> {
        let origin = fqdn(zone.as_str())?;
        let mut ns_names = nameservers
            .iter()
            .map(|n| fqdn(n))
            .collect::<Result<Vec<_>, _>>()?;
        if ns_names.is_empty() {
            ns_names.push(fqdn(&format!("ns1.{zone}"))?);
        }
        let hostmaster = fqdn(&format!("hostmaster.{zone}"))?;
        let soa = SOA::new(ns_names[0].clone(), hostmaster, 1, 3600, 600, 86_400, TTL);
        let soa = Record::from_rdata(origin.clone(), TTL, RData::SOA(soa));
        let ns = ns_names
            .into_iter()
            .map(|n| Record::from_rdata(origin.clone(), TTL, RData::NS(NS(n))))
            .collect();
        Ok(Self {
            zone: LowerName::new(&origin),
            soa,
            ns,
            values: Arc::new(ArcSwap::from_pointee(Values::new())),
        })
    }

    /// Replaces the published values (`(name, value)` pairs, names without a trailing dot).
    /// Names outside the zone are ignored.
    pub fn publish(&self, pairs: &[(String, String)]) {
        let mut values = Values::new();
        for (name, value) in pairs {
            let Ok(name) = fqdn(name) else { continue };
            if self.zone.zone_of(&LowerName::new(&name)) {
                values.entry(name).or_default().push(value.clone());
            }
        }
        self.values.store(Arc::new(values));
    }

    /// The records at `qname` of `qtype`, and whether the name exists (itself, or above a
    /// published name: NODATA, not NXDOMAIN).
    fn resolve(&self, qname: &Name, qtype: RecordType) -> (Vec<Record>, bool) {
        let want = |t: RecordType| qtype == t || qtype == RecordType::ANY;
        let apex = LowerName::new(qname) == self.zone;
        let mut out = Vec::new();
        if apex && want(RecordType::SOA) {
            out.push(self.soa.clone());
        }
        if apex && want(RecordType::NS) {
            out.extend(self.ns.iter().cloned());
        }
        let values = self.values.load();
        let mut exists = apex;
        if let Some(found) = values.get(qname).filter(|v| !v.is_empty()) {
            exists = true;
            if want(RecordType::TXT) {
                for value in found {
                    // One record per value; a string longer than 255 bytes is split (clients
                    // join the parts).
                    let txt = TXT::from_bytes(value.as_bytes().chunks(255).collect());
                    out.push(Record::from_rdata(qname.clone(), TTL, RData::TXT(txt)));
                }
            }
        }
        if !exists {
            exists = values.keys().any(|k| qname.zone_of(k));
        }
        (out, exists)
    }
}

#[async_trait::async_trait]
impl RequestHandler for ZoneHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let bad_version = request.edns.as_ref().is_some_and(|e| e.version() > 0);
        // Echo EDNS, or UDP answers are capped at 512 bytes.
        let edns = request.edns.as_ref().map(|asked| {
            let mut e = Edns::new();
            e.set_max_payload(asked.max_payload().max(512));
            e.set_version(0);
            if bad_version {
                e.set_rcode_high(ResponseCode::BADVERS.high());
            }
            e
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let query = request.request_info().ok().map(|info| info.query);
        let error = match query {
            _ if request.metadata.message_type != MessageType::Query => Some(ResponseCode::FormErr),
            _ if request.metadata.op_code != OpCode::Query => Some(ResponseCode::NotImp),
            _ if bad_version => Some(ResponseCode::BADVERS),
            None => Some(ResponseCode::FormErr),
            Some(q) if q.query_class() != DNSClass::IN || !self.zone.zone_of(q.name()) => {
                Some(ResponseCode::Refused)
            }
            Some(q) if matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR) => {
                Some(ResponseCode::Refused)
            }
            Some(_) => None,
        };
        let Some(q) = query.filter(|_| error.is_none()) else {
            let answer =
                builder.error_msg(&request.metadata, error.unwrap_or(ResponseCode::FormErr));
            return send(&mut response, answer, request).await;
        };
        // The name as asked (resolvers randomise case).
        let qname = q.original().name().clone();
        let (answers, exists) = self.resolve(&qname, q.query_type());
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.response_code = if answers.is_empty() && !exists {
            ResponseCode::NXDomain
        } else {
            ResponseCode::NoError
        };
        // Negative answers carry the SOA in the authority section.
        let soa: &[Record] = if answers.is_empty() {
            std::slice::from_ref(&self.soa)
        } else {
            &[]
        };
        let answer = builder.build(metadata, answers.iter(), [], soa.iter(), []);
        send(&mut response, answer, request).await
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    answer: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match handle.send_response(answer).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "DNS answer not sent");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: Default::default(),
            })
        }
    }
}

/// Serves the challenge zone on UDP and TCP at `listen` until `shutdown`, answering from the
/// store's DNS-01 values. `ready` is told the bound address (the same port for both).
pub async fn run(
    store: Arc<dyn Store>,
    zone: &Hostname,
    nameservers: &[String],
    listen: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), DnsError> {
    let handler = ZoneHandler::new(zone, nameservers)?;
    let values = handler.values.clone();
    let reload_handler = ZoneHandler {
        zone: handler.zone.clone(),
        soa: handler.soa.clone(),
        ns: handler.ns.clone(),
        values,
    };
    let bind_error = |addr, source| DnsError::Bind { addr, source };
    let udp = UdpSocket::bind(listen)
        .await
        .map_err(|e| bind_error(listen, e))?;
    let addr = udp.local_addr().map_err(|e| bind_error(listen, e))?;
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|e| bind_error(addr, e))?;
    // Load once before answering, so the first query already sees what is published.
    load(store.as_ref(), &reload_handler).await;
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(10), 32);
    tracing::info!(%addr, %zone, "challenge DNS server answering");
    ready(addr);
    let reloading = async {
        loop {
            tokio::time::sleep(RELOAD_EVERY).await;
            load(store.as_ref(), &reload_handler).await;
        }
    };
    tokio::select! {
        _ = reloading => {}
        _ = shutdown => {}
    }
    server
        .shutdown_gracefully()
        .await
        .map_err(|e| DnsError::Server(e.to_string()))
}

async fn load(store: &dyn Store, handler: &ZoneHandler) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    match store.dns_challenges(now).await {
        Ok(pairs) => handler.publish(&pairs),
        // Keep answering what was published; the next reload tries again.
        Err(e) => tracing::warn!(error = %e, "cannot reload DNS-01 values"),
    }
}
