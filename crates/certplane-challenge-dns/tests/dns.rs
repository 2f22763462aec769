//! The challenge DNS server over a real store, asked over real UDP and TCP sockets.

use std::net::SocketAddr;
use std::time::Duration;

use certplane_challenge_dns::RELOAD_EVERY;
use certplane_domain::Hostname;
use certplane_test_support::TestDb;
use certplane_test_support::dns::{ChallTestSrv, Unbound};
use hickory_server::proto::op::{Edns, Message, Query, ResponseCode};
use hickory_server::proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn question(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 4242;
    // Ignored by the authoritative server; what a resolver needs to chase the CNAME.
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    m.set_edns(Edns::new());
    m.to_vec().expect("encodes")
}

async fn udp(addr: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket
        .send_to(&question(name, qtype), addr)
        .await
        .expect("send");
    let mut buf = vec![0u8; 4096];
    let len = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
        .await
        .expect("answer in time")
        .expect("answer");
    Message::from_vec(&buf[..len]).expect("decodes")
}

async fn tcp(addr: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let q = question(name, qtype);
    stream
        .write_all(&(q.len() as u16).to_be_bytes())
        .await
        .expect("write");
    stream.write_all(&q).await.expect("write");
    let len = stream.read_u16().await.expect("length") as usize;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.expect("answer");
    Message::from_vec(&buf).expect("decodes")
}

fn txts(m: &Message) -> Vec<String> {
    let mut values: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    values.sort();
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_published_values_and_nothing_else() {
    let db = TestDb::sqlite().await;
    let store = db.store();
    let target = "www.example.com.tok1.acme.plat.test";
    // An apex order and a wildcard order of one name validate at the same name.
    store
        .put_dns_challenge(target, "apex-value", i64::MAX / 2)
        .await
        .expect("put");
    store
        .put_dns_challenge(target, "wildcard-value", i64::MAX / 2)
        .await
        .expect("put");
    store
        .put_dns_challenge("expired.tok1.acme.plat.test", "gone", 1)
        .await
        .expect("put");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (addr, task) = start(store.clone(), stop_rx).await;
    let fq = format!("{target}.");
    for over_tcp in [false, true] {
        let ask = |name: String, t: RecordType| async move {
            if over_tcp {
                tcp(addr, &name, t).await
            } else {
                udp(addr, &name, t).await
            }
        };
        let m = ask(fq.clone(), RecordType::TXT).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(
            txts(&m),
            vec!["apex-value", "wildcard-value"],
            "tcp={over_tcp}"
        );
        // Case as asked by resolvers that randomise it.
        let m = ask(fq.to_uppercase(), RecordType::TXT).await;
        assert_eq!(txts(&m).len(), 2);
        let m = ask("acme.plat.test.".into(), RecordType::SOA).await;
        assert!(m.metadata.authoritative);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].record_type(), RecordType::SOA);
        let m = ask("acme.plat.test.".into(), RecordType::NS).await;
        assert_eq!(m.answers[0].record_type(), RecordType::NS);
        assert_eq!(
            m.answers[0].data.to_string(),
            "ns1.acme.plat.test.",
            "the default name server"
        );
        // Expired values and unknown names: NXDOMAIN with the SOA.
        for name in ["expired.tok1.acme.plat.test.", "nope.acme.plat.test."] {
            let m = ask(name.into(), RecordType::TXT).await;
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
            assert!(m.metadata.authoritative && m.answers.is_empty());
            assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        }
        // Another type at a published name, and a name above one: NODATA.
        for (name, t) in [
            (fq.clone(), RecordType::A),
            ("tok1.acme.plat.test.".to_owned(), RecordType::TXT),
        ] {
            let m = ask(name.clone(), t).await;
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
            assert!(m.answers.is_empty());
            assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        }
        // Outside the zone: refused, not authoritative.
        let m = ask("example.com.".into(), RecordType::TXT).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert!(!m.metadata.authoritative);
    }
    // Withdrawn: gone within a reload.
    assert!(
        store
            .remove_dns_challenge(target, "apex-value")
            .await
            .expect("removed")
    );
    tokio::time::sleep(RELOAD_EVERY * 3).await;
    assert_eq!(
        txts(&udp(addr, &fq, RecordType::TXT).await),
        vec!["wildcard-value"]
    );
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops in time")
        .expect("task")
        .expect("ran without error");
}

/// Starts the server over `store` on a free loopback port; stops when `stop` turns true.
async fn start(
    store: std::sync::Arc<dyn certplane_store::Store>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<Result<(), certplane_challenge_dns::DnsError>>,
) {
    let zone = Hostname::parse("acme.plat.test").expect("zone");
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut stop = stop;
        certplane_challenge_dns::run(
            store,
            &zone,
            // No name servers configured: the default, ns1.<zone>.
            &[],
            SocketAddr::from(([127, 0, 0, 1], 0)),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
            move |addr| {
                let _ = ready_tx.send(addr);
            },
        )
        .await
    });
    let addr = tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .expect("ready in time")
        .expect("started");
    (addr, task)
}

/// What a CA's resolver does for DNS-01: `_acme-challenge.<host>` is a CNAME in the customer's
/// zone (on pebble-challtestsrv) into the platform's challenge zone (this server); a real
/// recursive resolver (unbound) chases it and gets every published value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_resolver_follows_the_delegation_into_the_challenge_zone() {
    let db = TestDb::sqlite().await;
    let store = db.store();
    let target = "www.example.com.tok1.acme.plat.test";
    store
        .put_dns_challenge(target, "from-the-apex-order", i64::MAX / 2)
        .await
        .expect("put");
    store
        .put_dns_challenge(target, "from-the-wildcard-order", i64::MAX / 2)
        .await
        .expect("put");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (platform_dns, task) = start(store.clone(), stop_rx).await;
    let customer_dns = ChallTestSrv::start();
    customer_dns
        .set_cname("_acme-challenge.www.example.com", &format!("{target}."))
        .await;
    let resolver = Unbound::start(&[
        ("example.com", customer_dns.dns),
        ("acme.plat.test", platform_dns),
    ]);
    let m = udp(
        resolver.dns,
        "_acme-challenge.www.example.com.",
        RecordType::TXT,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
    assert!(
        m.answers
            .iter()
            .any(|r| r.record_type() == RecordType::CNAME),
        "{m:?}"
    );
    assert_eq!(
        txts(&m),
        vec!["from-the-apex-order", "from-the-wildcard-order"]
    );
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops in time")
        .expect("task")
        .expect("ran without error");
}
