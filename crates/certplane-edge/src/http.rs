//! The plain-HTTP listener (port 80).
//!
//! It does three things only: answers ACME HTTP-01 challenges
//! (`GET /.well-known/acme-challenge/{token}`, for any host, before anything else, so a name can
//! be validated before the edge serves it), sends requests for names served over HTTPS there
//! with a 308, and says 404 to everything else. It never forwards plain HTTP to a backend (apps
//! are reachable over TLS only), does not speak h2c, and keeps no state besides the snapshot.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST, LOCATION, X_CONTENT_TYPE_OPTIONS};
use http::uri::Authority;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::metrics::{Metrics, Request as Outcome};
use crate::{SnapshotHandle, unix_now};

/// Where ACME validators look (RFC 8555 §8.3).
const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// How long in-flight connections may take to finish once shutdown starts.
const DRAIN: Duration = Duration::from_secs(5);

/// A client that has not sent a whole request head by then is dropped (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves plain HTTP on `listener` until `shutdown` completes, then stops accepting, gives
/// in-flight connections up to 5 s to finish (idle keep-alive connections close at once), and
/// returns.
///
/// Redirects go to `https_port` (left out of the `Location` when it is 443). Accept errors
/// (a client that went away, running out of file descriptors) are logged and the loop goes
/// on: one bad moment must not take port 80 down, so this returns `Ok` in practice; the
/// `Result` leaves room for a fatal error.
pub async fn serve_http(
    listener: TcpListener,
    snapshot: SnapshotHandle,
    metrics: Arc<Metrics>,
    https_port: u16,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handler = Arc::new(Handler {
        snapshot,
        metrics,
        https_port,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            // Reap finished connections so the set does not grow with every client ever seen.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_one(stream, handler.clone(), stop_rx.clone()));
                }
                Err(e) if is_per_connection(&e) => {
                    tracing::debug!(error = %e, "HTTP accept failed for one connection");
                }
                Err(e) => {
                    // Typically EMFILE: back off a little instead of spinning on the error.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    // Close the port now, not when the last in-flight request is done.
    drop(listener);
    stop_tx.send_replace(true);
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "HTTP connections still open after the drain period; closing them"
        );
        connections.abort_all();
    }
    Ok(())
}

/// Accept errors that concern only the connection being accepted.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

async fn serve_one(stream: TcpStream, handler: Arc<Handler>, mut stop: watch::Receiver<bool>) {
    // Answers are one small write; do not let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler.answer(&req)) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let stopping = async {
        // An error means the listener is gone, which is a stop as well.
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopping => {
            // Finishes the request in flight, if any, then closes; an idle connection closes now.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

struct Handler {
    snapshot: SnapshotHandle,
    metrics: Arc<Metrics>,
    https_port: u16,
}

impl Handler {
    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(host) = request_host(req) else {
            self.metrics.request(Outcome::UnknownHost);
            return text(
                StatusCode::BAD_REQUEST,
                "missing or invalid Host header\n".into(),
            );
        };
        let path = req.uri().path();
        if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
            let answer = if matches!(*req.method(), Method::GET | Method::HEAD) {
                self.snapshot.load().http01(&host, token).map(str::to_owned)
            } else {
                None
            };
            return match answer {
                Some(key_authorization) => {
                    self.metrics.request(Outcome::Http01);
                    text(StatusCode::OK, key_authorization)
                }
                // Not counted: it is neither a served name nor a stranger's, and validators
                // probing a stale token are not worth an outcome of their own.
                None => text(StatusCode::NOT_FOUND, "no such ACME challenge\n".into()),
            };
        }
        if self.snapshot.load().serves_https(&host, unix_now()) {
            return self.redirect(req, &host);
        }
        self.metrics.request(Outcome::UnknownHost);
        text(
            StatusCode::NOT_FOUND,
            format!("certplane does not serve {host}\n"),
        )
    }

    /// 308, not 301: the client must repeat the method and body as they were.
    fn redirect(&self, req: &Request<Incoming>, host: &str) -> Response<Full<Bytes>> {
        let target = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            // `OPTIONS *` and the like have no path to keep.
            .filter(|pq| pq.starts_with('/'))
            .unwrap_or("/");
        let location = match self.https_port {
            443 => format!("https://{host}{target}"),
            port => format!("https://{host}:{port}{target}"),
        };
        let Ok(value) = HeaderValue::from_str(&location) else {
            // Host and target come from parsed values, so this is not expected; refuse rather
            // than redirect somewhere mangled.
            self.metrics.request(Outcome::UnknownHost);
            return text(StatusCode::BAD_REQUEST, "invalid request target\n".into());
        };
        self.metrics.request(Outcome::Redirected);
        let mut response = text(
            StatusCode::PERMANENT_REDIRECT,
            format!("moved to {location}\n"),
        );
        response.headers_mut().insert(LOCATION, value);
        response
    }
}

/// A plain-text answer. Text, not HTML, so the host echoed back needs no escaping.
fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if status != StatusCode::PERMANENT_REDIRECT {
        // Challenge answers and refusals change as the snapshot does.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The host a request is for: the URI's authority (HTTP/2 `:authority`, or an absolute-form
/// request target, which RFC 9112 §3.2.2 puts before `Host`), else the `Host` header; port and
/// a trailing dot dropped, lowercased. `None` when there is none, when it does not parse as
/// an authority or carries user info, or when `Host` is repeated (RFC 9112 §3.2: 400).
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<String> {
    if let Some(authority) = req.uri().authority() {
        return normalize_host(authority);
    }
    let mut values = req.headers().get_all(HOST).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let authority: Authority = value.to_str().ok()?.parse().ok()?;
    normalize_host(&authority)
}

fn normalize_host(authority: &Authority) -> Option<String> {
    // `user@host` is no way to name a host in a request; refuse rather than guess.
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host();
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use arc_swap::ArcSwap;
    use certplane_events::CertSource;
    use rustls::sign::CertifiedKey;
    use rustls_pki_types::PrivateKeyDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::state::{HostEntry, ServedCertificate, Snapshot};

    fn entry(hostname: &str) -> HostEntry {
        HostEntry {
            hostname: Arc::from(hostname),
            app: None,
            certificates: Vec::new(),
            http01: HashMap::new(),
            alpn: None,
            changed_at_ms: 0,
        }
    }

    fn served_certificate(name: &str) -> ServedCertificate {
        let generated =
            rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("self-signed");
        let private = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
        let signing = rustls::crypto::ring::sign::any_supported_type(&private).expect("key");
        ServedCertificate {
            source: CertSource::Acme,
            key_type: "ecdsa",
            key: Arc::new(CertifiedKey::new(
                vec![generated.cert.der().clone()],
                signing,
            )),
            not_before: 0,
            not_after: i64::MAX / 2,
        }
    }

    fn snapshot() -> Snapshot {
        let mut snapshot = Snapshot::default();
        let mut served = entry("a.example.test");
        served
            .certificates
            .push(served_certificate("a.example.test"));
        snapshot.insert(served);
        // Not served yet: only a challenge is open.
        let mut pending = entry("new.example.test");
        pending
            .http01
            .insert("tok-123".into(), "tok-123.thumbprint".into());
        snapshot.insert(pending);
        snapshot
    }

    struct Running {
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        stop: oneshot::Sender<()>,
        task: JoinHandle<std::io::Result<()>>,
    }

    async fn start(https_port: u16) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let metrics = Arc::new(Metrics::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_http(
            listener,
            Arc::new(ArcSwap::from_pointee(snapshot())),
            metrics.clone(),
            https_port,
            async move {
                let _ = stopped.await;
            },
        ));
        Running {
            addr,
            metrics,
            stop,
            task,
        }
    }

    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// One request on its own connection, written by hand: the crate's tests have no HTTP
    /// client besides hyper's, and this keeps the exchange visible.
    async fn get(addr: SocketAddr, host: Option<&str>, target: &str) -> Answer {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let host_line = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
        let request = format!("GET {target} HTTP/1.1\r\n{host_line}Connection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read answer");
        let raw = String::from_utf8(raw).expect("utf-8 answer");
        let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Answer {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    async fn stop(running: Running) {
        let _ = running.stop.send(());
        tokio::time::timeout(Duration::from_secs(2), running.task)
            .await
            .expect("stopped in time")
            .expect("task ran to the end")
            .expect("clean stop");
    }

    #[tokio::test]
    async fn answers_http01_challenges_for_any_host_state() {
        let running = start(443).await;
        let answer = get(
            running.addr,
            Some("new.example.test"),
            "/.well-known/acme-challenge/tok-123",
        )
        .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "tok-123.thumbprint");
        assert_eq!(
            answer.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        // Case and port of the Host do not matter.
        let answer = get(
            running.addr,
            Some("NEW.example.test:80"),
            "/.well-known/acme-challenge/tok-123",
        )
        .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "tok-123.thumbprint");
        assert_eq!(running.metrics.requests(Outcome::Http01), 2);

        let unknown = get(
            running.addr,
            Some("new.example.test"),
            "/.well-known/acme-challenge/other",
        )
        .await;
        assert_eq!(unknown.status, 404);
        // A served host's unknown token is a 404 too, not a redirect.
        let unknown = get(
            running.addr,
            Some("a.example.test"),
            "/.well-known/acme-challenge/tok-123",
        )
        .await;
        assert_eq!(unknown.status, 404);
        assert_eq!(unknown.header("location"), None);
        stop(running).await;
    }

    #[tokio::test]
    async fn redirects_served_hosts_with_port_path_and_query() {
        let running = start(8443).await;
        let answer = get(
            running.addr,
            Some("A.example.test:8080"),
            "/shop/cart?id=7&x=y",
        )
        .await;
        assert_eq!(answer.status, 308);
        assert_eq!(
            answer.header("location"),
            Some("https://a.example.test:8443/shop/cart?id=7&x=y")
        );
        assert_eq!(running.metrics.requests(Outcome::Redirected), 1);
        stop(running).await;

        let running = start(443).await;
        let answer = get(running.addr, Some("a.example.test"), "/").await;
        assert_eq!(answer.status, 308);
        assert_eq!(answer.header("location"), Some("https://a.example.test/"));
        stop(running).await;
    }

    #[tokio::test]
    async fn refuses_unknown_and_missing_hosts() {
        let running = start(443).await;
        let answer = get(running.addr, Some("other.example.test"), "/").await;
        assert_eq!(answer.status, 404);
        assert_eq!(answer.body, "certplane does not serve other.example.test\n");
        // A name with only an open challenge is not served yet either.
        let answer = get(running.addr, Some("new.example.test"), "/").await;
        assert_eq!(answer.status, 404);
        assert_eq!(running.metrics.requests(Outcome::UnknownHost), 2);

        let answer = get(running.addr, None, "/").await;
        assert_eq!(answer.status, 400);
        stop(running).await;
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_the_port() {
        let running = start(443).await;
        let addr = running.addr;
        // An idle keep-alive connection must not hold shutdown for the whole drain period.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        idle.write_all(b"GET / HTTP/1.1\r\nHost: other.example.test\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 404"));
        let started = std::time::Instant::now();
        stop(running).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(TcpStream::connect(addr).await.is_err(), "port closed");
    }

    #[test]
    fn request_host_prefers_the_authority_and_normalizes() {
        let req = Request::get("https://App.Example.test:8443/x")
            .header(HOST, "other.example.test")
            .body(())
            .expect("request");
        assert_eq!(request_host(&req).as_deref(), Some("app.example.test"));
        let req = Request::get("/x")
            .header(HOST, "App.Example.test.")
            .body(())
            .expect("request");
        assert_eq!(request_host(&req).as_deref(), Some("app.example.test"));
        let req = Request::get("/x")
            .header(HOST, "a.example.test")
            .header(HOST, "b.example.test")
            .body(())
            .expect("request");
        assert_eq!(request_host(&req), None);
        let req = Request::get("/x")
            .header(HOST, "user@a.example.test")
            .body(())
            .expect("request");
        assert_eq!(request_host(&req), None);
        let req = Request::get("/x").body(()).expect("request");
        assert_eq!(request_host(&req), None);
    }
}
