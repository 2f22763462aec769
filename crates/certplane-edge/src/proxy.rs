//! The reverse proxy: serves HTTP/1.1 and HTTP/2 on a TLS-terminated connection and forwards
//! each request to one of its app's backends over plain HTTP/1.1.
//!
//! Per request: the Host must name the TLS server name (else 421, so one customer's
//! certificate cannot be used to reach another's app), the app is looked up in the current
//! snapshot, and backends are tried round robin, skipping those that recently refused a
//! connection (passive health). A backend that cannot be connected to is skipped for the
//! next; the request body is handed to a backend only once it is connected, so even a request
//! with a body moves on safely. Bodies stream both ways; nothing is buffered. HTTP/1.1
//! upgrades (WebSocket) are relayed as a byte tunnel once the backend answers 101.
//!
//! It does not: terminate TLS (see `tls`), speak TLS or HTTP/2 to backends, check backends
//! actively, retry a request a backend has already received (it may not be idempotent),
//! cache, or relay HTTP/2 extended CONNECT.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONNECTION, CONTENT_TYPE, COOKIE, FORWARDED, HOST, HeaderName,
    PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
    X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::SnapshotHandle;
use crate::http::request_host;
use crate::metrics::{Metrics, Request as Outcome};
use crate::state::AppRoute;

/// The body of every answer the proxy gives: a backend's, streamed, or one of its own pages.
pub type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// A client that has not sent a whole HTTP/1 request head by then is dropped (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle backend connections are closed after this; backends often close theirs sooner, and
/// the client notices a closed pooled connection before reusing it.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Timeouts and passive health.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// How long connecting to one backend may take before the next is tried.
    pub connect_timeout: Duration,
    /// How long a backend may take to send its response headers (504 after). Counted from the
    /// start of the attempt, so it includes connecting; it does not limit the body.
    pub response_timeout: Duration,
    /// How long a backend that refused a connection is skipped.
    pub unhealthy_for: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            unhealthy_for: Duration::from_secs(10),
        }
    }
}

/// The reverse proxy. Cheap to clone: clones share the backend connection pool and the
/// passive health marks.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    snapshot: SnapshotHandle,
    metrics: Arc<Metrics>,
    config: ProxyConfig,
    client: Client<HttpConnector, AttemptBody>,
    /// Backend (`host:port`) → skipped until then. Entries go when the backend answers again
    /// or, expired, when another backend is marked.
    unhealthy: Mutex<HashMap<String, Instant>>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    pub fn new(snapshot: SnapshotHandle, metrics: Arc<Metrics>, config: ProxyConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        // Request heads are written whole; Nagle would only delay them.
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Self {
            inner: Arc::new(Inner {
                snapshot,
                metrics,
                config,
                client,
                unhealthy: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Serves HTTP/1.1 and HTTP/2 (with HTTP/1.1 upgrades) on one accepted, already
    /// TLS-terminated connection until it closes. `sni` is the TLS server name (lowercase);
    /// `peer` the client's address.
    pub async fn serve_connection<I>(&self, io: I, peer: SocketAddr, sni: String)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let sni: Arc<str> = Arc::from(normalize_name(&sni));
        let proxy = self.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let (proxy, sni) = (proxy.clone(), sni.clone());
            async move { Ok::<_, Infallible>(proxy.handle(req, peer, &sni).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        builder.http2().timer(TokioTimer::new());
        if let Err(e) = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .await
        {
            // Mostly clients going away mid-request; nothing to act on.
            tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
        }
    }

    async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        sni: &str,
    ) -> Response<ProxyBody> {
        let metrics = &self.inner.metrics;
        if req.method() == Method::CONNECT {
            // A reverse proxy opens no tunnels to arbitrary places; counted with the requests
            // that name no app.
            metrics.request(Outcome::Misrouted);
            return page(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not served here.",
            );
        }
        let Some(host) = request_host(&req) else {
            metrics.request(Outcome::Misrouted);
            return page(
                StatusCode::BAD_REQUEST,
                "The request names no valid host (Host header or :authority).",
            );
        };
        if host != sni {
            metrics.request(Outcome::Misrouted);
            return page(
                StatusCode::MISDIRECTED_REQUEST,
                &format!(
                    "The requested host {} does not match the TLS server name {} of this \
                     connection. Open a new connection for {0}.",
                    escape(&host),
                    escape(sni)
                ),
            );
        }
        // Clone the route out: a snapshot guard must not be held across the awaits below.
        let route = self.inner.snapshot.load().route(&host).cloned();
        let route = match route {
            Some(route) if !route.backends.is_empty() => route,
            found => {
                // No app at all is a routing matter; an app without backends is a broken app.
                metrics.request(match found {
                    None => Outcome::Misrouted,
                    Some(_) => Outcome::BadGateway,
                });
                return page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("No backend is configured for {}.", escape(&host)),
                );
            }
        };

        let client_version = req.version();
        let upgrade = (client_version == Version::HTTP_11)
            .then(|| wanted_upgrade(req.headers()))
            .flatten();
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let Some(headers) = forward_headers(&parts, peer, upgrade) else {
            metrics.request(Outcome::Misrouted);
            return page(StatusCode::BAD_REQUEST, "The request's host is not valid.");
        };
        let path = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .filter(|pq| pq.starts_with('/'))
            .unwrap_or("/");

        let body = SharedBody::new(body);
        for backend in self.order(&route) {
            let Ok(uri) = Uri::try_from(format!("http://{backend}{path}")) else {
                tracing::warn!(app = %route.name, backend, "backend address is not a valid authority; skipped");
                continue;
            };
            let mut out = Request::new(body.attempt());
            *out.method_mut() = parts.method.clone();
            *out.uri_mut() = uri;
            // HTTP/2 requests too: the backends speak HTTP/1.1.
            *out.version_mut() = Version::HTTP_11;
            *out.headers_mut() = headers.clone();
            let answered = tokio::time::timeout(
                self.inner.config.response_timeout,
                self.inner.client.request(out),
            )
            .await;
            match answered {
                Ok(Ok(response)) => {
                    self.mark_healthy(backend);
                    return self.relay(response, client_upgrade, client_version, &route, &host);
                }
                Ok(Err(e)) if e.is_connect() => {
                    tracing::warn!(app = %route.name, backend, error = ?e, "cannot connect to backend");
                    self.mark_unhealthy(backend);
                    if body.taken() {
                        // Not expected before a connection exists; never send a body twice.
                        break;
                    }
                }
                Ok(Err(e)) => {
                    // The backend has (maybe) seen the request: do not try another.
                    tracing::warn!(app = %route.name, backend, error = ?e, "backend failed to answer");
                    return self.bad_gateway(&route, &host);
                }
                Err(_) => {
                    tracing::warn!(app = %route.name, backend, timeout = ?self.inner.config.response_timeout, "backend did not answer in time");
                    metrics.request(Outcome::GatewayTimeout);
                    return page(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!(
                            "The backend of app {} did not answer in time for {}.",
                            escape(&route.name),
                            escape(&host)
                        ),
                    );
                }
            }
        }
        self.bad_gateway(&route, &host)
    }

    /// The client's answer from the backend's.
    fn relay(
        &self,
        mut response: Response<Incoming>,
        client_upgrade: Option<OnUpgrade>,
        client_version: Version,
        route: &AppRoute,
        host: &str,
    ) -> Response<ProxyBody> {
        let mut tunnel = None;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let protocol = response.headers().get(UPGRADE).cloned();
            match (client_upgrade, protocol) {
                (Some(client), Some(protocol)) => {
                    let backend = hyper::upgrade::on(&mut response);
                    tokio::spawn(relay_upgraded(client, backend));
                    tunnel = Some(protocol);
                }
                _ => {
                    // A 101 nobody asked for (or naming no protocol) cannot be relayed.
                    tracing::warn!(app = %route.name, "backend switched protocols unasked");
                    return self.bad_gateway(route, host);
                }
            }
        }
        self.inner.metrics.request(Outcome::Proxied);
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(protocol) = tunnel {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, protocol);
        }
        parts.version = client_version;
        // Client-side connection details mean nothing to the server side.
        parts.extensions = http::Extensions::new();
        Response::from_parts(parts, body.boxed_unsync())
    }

    fn bad_gateway(&self, route: &AppRoute, host: &str) -> Response<ProxyBody> {
        self.inner.metrics.request(Outcome::BadGateway);
        // Backend addresses stay in the log: they are nobody else's business.
        page(
            StatusCode::BAD_GATEWAY,
            &format!(
                "certplane could not reach any backend of app {} for {}.",
                escape(&route.name),
                escape(host)
            ),
        )
    }

    /// Backends in the order to try: round robin from the route's next start, those marked
    /// unhealthy moved to the end (a mark is a hint, not a verdict: if the others fail, they
    /// are tried anyway).
    fn order<'a>(&self, route: &'a AppRoute) -> Vec<&'a str> {
        let n = route.backends.len();
        let start = route.next_start();
        let rotation = route.backends.iter().cycle().skip(start).take(n);
        let now = Instant::now();
        let unhealthy = self.unhealthy();
        let (healthy, sick): (Vec<&str>, Vec<&str>) = rotation
            .map(String::as_str)
            .partition(|b| unhealthy.get(*b).is_none_or(|until| *until <= now));
        healthy.into_iter().chain(sick).collect()
    }

    fn mark_unhealthy(&self, backend: &str) {
        let now = Instant::now();
        let mut unhealthy = self.unhealthy();
        unhealthy.retain(|_, until| *until > now);
        unhealthy.insert(backend.to_owned(), now + self.inner.config.unhealthy_for);
    }

    fn mark_healthy(&self, backend: &str) {
        let mut unhealthy = self.unhealthy();
        if !unhealthy.is_empty() {
            unhealthy.remove(backend);
        }
    }

    fn unhealthy(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        lock(&self.inner.unhealthy)
    }
}

/// The protocol an HTTP/1.1 client asks to switch to (`Connection: upgrade` + `Upgrade`).
fn wanted_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asked = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asked.then(|| headers.get(UPGRADE).cloned()).flatten()
}

/// The headers sent to the backend: the client's without hop-by-hop ones, `Host` naming what
/// the client asked for, and the forwarding headers. `None` when the host is not a valid
/// header value.
fn forward_headers(
    parts: &http::request::Parts,
    peer: SocketAddr,
    upgrade: Option<HeaderValue>,
) -> Option<HeaderMap> {
    let mut headers = parts.headers.clone();
    // The host as the client wrote it (with its port, if any): HTTP/2's `:authority` and an
    // absolute-form target win over `Host`. Taken before stripping, as `Connection` could
    // name `Host`.
    let original_host = match parts.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok()?,
        None => headers.get(HOST)?.clone(),
    };
    let client_ip = peer.ip().to_canonical();
    let forwarded_for = append(&headers, &X_FORWARDED_FOR, client_ip.to_string().as_bytes())?;
    let for_node = match client_ip {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("\"[{ip}]\""),
    };
    // RFC 7239: the host is quoted, as it may carry a port (`:` is not a token character);
    // it came from a parsed authority, so it has no quote or backslash to escape.
    let original_host_text = original_host.to_str().ok()?;
    let forwarded = append(
        &headers,
        &FORWARDED,
        format!("for={for_node};proto=https;host=\"{original_host_text}\"").as_bytes(),
    )?;
    strip_hop_by_hop(&mut headers);
    if parts.version == Version::HTTP_2 {
        // RFC 9113 §8.2.3: HTTP/2 may split Cookie into several fields; HTTP/1.1 wants one.
        let cookies: Vec<&[u8]> = headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        if cookies.len() > 1 {
            let joined = HeaderValue::from_bytes(&cookies.join(&b"; "[..])).ok()?;
            headers.insert(COOKIE, joined);
        }
    }
    headers.insert(HOST, original_host.clone());
    headers.insert(X_FORWARDED_FOR, forwarded_for);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    headers.insert(X_FORWARDED_HOST, original_host);
    headers.insert(FORWARDED, forwarded);
    if let Some(protocol) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol);
    }
    Some(headers)
}

/// `name`'s existing values and `value`, as one comma-separated list. The client's values
/// are kept (the backend decides how far to trust them); ours is the last.
fn append(headers: &HeaderMap, name: &HeaderName, value: &[u8]) -> Option<HeaderValue> {
    let mut joined = Vec::new();
    for existing in headers.get_all(name) {
        joined.extend_from_slice(existing.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(value);
    HeaderValue::from_bytes(&joined).ok()
}

/// Removes the headers that concern one connection only (RFC 9110 §7.6.1): the fixed set,
/// every `Proxy-*`, and whatever `Connection` names. Framing is hyper's job on each side: it
/// derives it from the body.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        CONNECTION,
        KEEP_ALIVE,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
    ] {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// Splices the client's and the backend's upgraded connections together until either closes.
async fn relay_upgraded(client: OnUpgrade, backend: OnUpgrade) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

/// The client's request body, shared by the attempts on successive backends. The first
/// attempt that polls it takes it; the client polls a body only once it is connected to the
/// backend, so an attempt that failed to connect leaves it for the next.
struct SharedBody {
    slot: Arc<Mutex<Option<Incoming>>>,
    hint: SizeHint,
    end_stream: bool,
}

impl SharedBody {
    fn new(body: Incoming) -> Self {
        // Read now: hyper asks for these to frame the request, before it polls the body.
        let hint = body.size_hint();
        let end_stream = body.is_end_stream();
        Self {
            slot: Arc::new(Mutex::new(Some(body))),
            hint,
            end_stream,
        }
    }

    fn attempt(&self) -> AttemptBody {
        AttemptBody {
            slot: self.slot.clone(),
            body: None,
            hint: self.hint,
            end_stream: self.end_stream,
        }
    }

    /// Whether some attempt has started sending the body.
    fn taken(&self) -> bool {
        lock(&self.slot).is_none()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // What these mutexes hold is replaced whole; a panic elsewhere cannot leave it half-changed.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The body one attempt sends: the client's, once taken from the shared slot.
struct AttemptBody {
    slot: Arc<Mutex<Option<Incoming>>>,
    body: Option<Incoming>,
    hint: SizeHint,
    end_stream: bool,
}

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.body.is_none() {
            match lock(&this.slot).take() {
                Some(body) => this.body = Some(body),
                // The retry loop stops once a body is taken, so this is a bug, not a client's
                // doing: fail the request rather than send a partial body.
                None => {
                    return Poll::Ready(Some(Err(
                        "request body already sent to another backend".into()
                    )));
                }
            }
        }
        match this.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(body) => body.is_end_stream(),
            None => self.end_stream,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(body) => body.size_hint(),
            None => self.hint,
        }
    }
}

/// An HTML page of the proxy's own. `message` is HTML already (escape what it quotes).
fn page(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>{title}</h1>\n<p>{message}</p>\n<hr><p>certplane</p></body></html>\n"
    );
    let body = Full::new(Bytes::from(html))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A TLS server name as compared with a request's host.
fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use arc_swap::ArcSwap;
    use http::header::CONTENT_LENGTH;
    use http_body_util::Empty;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::state::{HostEntry, Snapshot};

    const HOST_NAME: &str = "app.example.test";

    fn peer() -> SocketAddr {
        SocketAddr::from(([203, 0, 113, 7], 50_000))
    }

    /// A plain HTTP/1.1 backend that answers with what it received: a `backend TAG` line,
    /// the request line, every header as `name: value`, and the body. `Upgrade: echo`
    /// requests get a 101 and an echo of every byte after it.
    async fn backend(tag: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| echo(tag, req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        addr.to_string()
    }

    async fn echo(
        tag: &'static str,
        mut req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, hyper::Error> {
        if req.headers().get(UPGRADE).is_some_and(|v| v == "echo") {
            let upgraded = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgraded.await else { return };
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = io.read(&mut buf).await {
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            response
                .headers_mut()
                .insert(UPGRADE, HeaderValue::from_static("echo"));
            return Ok(response);
        }
        let mut out = format!(
            "backend {tag}\n{} {} {:?}\n",
            req.method(),
            req.uri(),
            req.version()
        );
        for (name, value) in req.headers() {
            out.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        let body = req.into_body().collect().await?.to_bytes();
        out.push_str(&format!("body: {}\n", String::from_utf8_lossy(&body)));
        let mut response = Response::new(Full::new(Bytes::from(out)));
        // Hop-by-hop headers the proxy must not pass back to the client.
        response
            .headers_mut()
            .insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        response
            .headers_mut()
            .insert("x-backend", HeaderValue::from_static(tag));
        Ok(response)
    }

    /// An address nothing listens on.
    async fn dead_backend() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        drop(listener);
        addr.to_string()
    }

    /// A backend that accepts connections and never answers.
    async fn silent_backend() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        addr.to_string()
    }

    fn proxy(backends: Vec<String>, config: ProxyConfig) -> (Proxy, Arc<Metrics>) {
        let mut snapshot = Snapshot::default();
        snapshot.insert(HostEntry {
            hostname: Arc::from(HOST_NAME),
            app: Some(Arc::new(AppRoute::new("shop".into(), backends))),
            certificates: Vec::new(),
            http01: HashMap::new(),
            alpn: None,
            changed_at_ms: 0,
        });
        snapshot.insert(HostEntry {
            hostname: Arc::from("empty.example.test"),
            app: Some(Arc::new(AppRoute::new("empty".into(), Vec::new()))),
            certificates: Vec::new(),
            http01: HashMap::new(),
            alpn: None,
            changed_at_ms: 0,
        });
        let metrics = Arc::new(Metrics::default());
        let handle: SnapshotHandle = Arc::new(ArcSwap::from_pointee(snapshot));
        (Proxy::new(handle, metrics.clone(), config), metrics)
    }

    /// The client end of a connection the proxy serves for `sni`.
    fn connection(proxy: &Proxy, sni: &str) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (proxy, sni) = (proxy.clone(), sni.to_owned());
        tokio::spawn(async move { proxy.serve_connection(server, peer(), sni).await });
        client
    }

    async fn h1(proxy: &Proxy, sni: &str) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let io = TokioIo::new(connection(proxy, sni));
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn.with_upgrades());
        sender
    }

    fn get(host: &str, target: &str) -> Request<Full<Bytes>> {
        Request::get(target)
            .header(HOST, host)
            .body(Full::new(Bytes::new()))
            .expect("request")
    }

    async fn send(
        sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        req: Request<Full<Bytes>>,
    ) -> (StatusCode, HeaderMap, String) {
        sender.ready().await.expect("connection ready");
        let response = sender.send_request(req).await.expect("response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).expect("utf-8 body"),
        )
    }

    #[tokio::test]
    async fn forwards_with_forwarding_headers_and_without_hop_by_hop_ones() {
        let live = backend("one").await;
        let (proxy, metrics) = proxy(vec![live], ProxyConfig::default());
        let mut sender = h1(&proxy, HOST_NAME).await;
        let req = Request::get("/cart?id=7")
            .header(HOST, "App.Example.test")
            .header(X_FORWARDED_FOR, "198.51.100.1")
            .header(X_FORWARDED_PROTO, "http")
            .header(CONNECTION, "keep-alive, x-secret")
            .header("x-secret", "hop")
            .header("proxy-authorization", "Basic x")
            .header("x-app", "kept")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let (status, headers, body) = send(&mut sender, req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            body.starts_with("backend one\nGET /cart?id=7 HTTP/1.1\n"),
            "{body}"
        );
        assert!(body.contains("\nhost: App.Example.test\n"), "{body}");
        assert!(
            body.contains("\nx-forwarded-for: 198.51.100.1, 203.0.113.7\n"),
            "{body}"
        );
        assert!(body.contains("\nx-forwarded-proto: https\n"), "{body}");
        assert!(
            body.contains("\nx-forwarded-host: App.Example.test\n"),
            "{body}"
        );
        assert!(
            body.contains("\nforwarded: for=203.0.113.7;proto=https;host=\"App.Example.test\"\n"),
            "{body}"
        );
        assert!(body.contains("\nx-app: kept\n"), "{body}");
        for gone in ["x-secret", "proxy-authorization", "connection"] {
            assert!(
                !body.contains(&format!("\n{gone}:")),
                "{gone} forwarded: {body}"
            );
        }
        assert_eq!(
            headers.get("x-backend").map(|v| v.as_bytes()),
            Some(&b"one"[..])
        );
        assert!(
            headers.get(KEEP_ALIVE).is_none(),
            "hop-by-hop header relayed"
        );
        assert_eq!(metrics.requests(Outcome::Proxied), 1);
    }

    #[tokio::test]
    async fn host_not_matching_the_tls_name_is_misdirected() {
        let live = backend("one").await;
        let (proxy, metrics) = proxy(vec![live], ProxyConfig::default());
        let mut sender = h1(&proxy, "other.example.test").await;
        let (status, headers, body) = send(&mut sender, get(HOST_NAME, "/")).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
        assert!(
            body.contains("does not match the TLS server name"),
            "{body}"
        );
        assert!(headers.get("x-backend").is_none());
        assert_eq!(metrics.requests(Outcome::Misrouted), 1);
    }

    #[tokio::test]
    async fn connect_is_refused() {
        let live = backend("one").await;
        let (proxy, _) = proxy(vec![live], ProxyConfig::default());
        let mut sender = h1(&proxy, HOST_NAME).await;
        let req = Request::connect(format!("{HOST_NAME}:443"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let (status, headers, _) = send(&mut sender, req).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(headers.get("x-backend").is_none());
    }

    #[tokio::test]
    async fn unrouted_hosts_and_apps_without_backends_are_unavailable() {
        let (proxy, metrics) = proxy(Vec::new(), ProxyConfig::default());
        let mut sender = h1(&proxy, "nowhere.example.test").await;
        let (status, _, body) = send(&mut sender, get("nowhere.example.test", "/")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("No backend is configured for nowhere.example.test"),
            "{body}"
        );
        assert_eq!(metrics.requests(Outcome::Misrouted), 1);

        let mut sender = h1(&proxy, "empty.example.test").await;
        let (status, _, _) = send(&mut sender, get("empty.example.test", "/")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(metrics.requests(Outcome::BadGateway), 1);
    }

    #[tokio::test]
    async fn dead_backends_give_a_bad_gateway_page_without_addresses() {
        let dead = dead_backend().await;
        let port = dead.rsplit(':').next().expect("port").to_owned();
        let (proxy, metrics) = proxy(vec![dead], ProxyConfig::default());
        let mut sender = h1(&proxy, HOST_NAME).await;
        let (status, headers, body) = send(&mut sender, get(HOST_NAME, "/")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            headers.get(CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(&b"text/html; charset=utf-8"[..])
        );
        assert!(body.contains("502 Bad Gateway"), "{body}");
        assert!(
            body.contains("certplane could not reach any backend of app shop for app.example.test"),
            "{body}"
        );
        assert!(
            !body.contains("127.0.0.1") && !body.contains(&port),
            "address leaked: {body}"
        );
        assert_eq!(metrics.requests(Outcome::BadGateway), 1);
    }

    #[tokio::test]
    async fn round_robin_over_live_backends_skips_the_dead_one() {
        let (one, two, dead) = (
            backend("one").await,
            backend("two").await,
            dead_backend().await,
        );
        let (proxy, metrics) = proxy(vec![one, dead, two], ProxyConfig::default());
        let mut sender = h1(&proxy, HOST_NAME).await;
        let mut served = Vec::new();
        for _ in 0..6 {
            let (status, headers, body) = send(&mut sender, get(HOST_NAME, "/")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let tag = headers.get("x-backend").expect("x-backend").clone();
            served.push(String::from_utf8_lossy(tag.as_bytes()).into_owned());
        }
        // Starts 0, 1, 2, 0, 1, 2: the dead backend's turns go to the next live one.
        assert_eq!(served, ["one", "two", "two", "one", "two", "two"]);
        assert_eq!(metrics.requests(Outcome::Proxied), 6);
        assert_eq!(metrics.requests(Outcome::BadGateway), 0);
    }

    #[tokio::test]
    async fn a_request_body_survives_a_refused_connection() {
        let (dead, live) = (dead_backend().await, backend("one").await);
        let (proxy, _) = proxy(vec![dead, live], ProxyConfig::default());
        let mut sender = h1(&proxy, HOST_NAME).await;
        let req = Request::post("/orders")
            .header(HOST, HOST_NAME)
            .header(CONTENT_LENGTH, "11")
            .body(Full::new(Bytes::from_static(b"hello world")))
            .expect("request");
        let (status, _, body) = send(&mut sender, req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("\ncontent-length: 11\n"), "{body}");
        assert!(body.ends_with("body: hello world\n"), "{body}");
    }

    #[tokio::test]
    async fn a_backend_silent_past_the_response_timeout_is_a_gateway_timeout() {
        let silent = silent_backend().await;
        let config = ProxyConfig {
            response_timeout: Duration::from_millis(200),
            ..ProxyConfig::default()
        };
        let (proxy, metrics) = proxy(vec![silent], config);
        let mut sender = h1(&proxy, HOST_NAME).await;
        let (status, _, body) = send(&mut sender, get(HOST_NAME, "/")).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert!(body.contains("did not answer in time"), "{body}");
        assert_eq!(metrics.requests(Outcome::GatewayTimeout), 1);
    }

    #[tokio::test]
    async fn http2_clients_reach_http1_backends() {
        let live = backend("one").await;
        let (proxy, metrics) = proxy(vec![live], ProxyConfig::default());
        let io = TokioIo::new(connection(&proxy, HOST_NAME));
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        for target in ["/h2?x=1", "/h2?x=2"] {
            let req = Request::get(format!("https://{HOST_NAME}{target}"))
                .header(COOKIE, "a=1")
                .header(COOKIE, "b=2")
                .body(Empty::<Bytes>::new())
                .expect("request");
            let response = sender.send_request(req).await.expect("response");
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.version(), Version::HTTP_2);
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            let body = String::from_utf8_lossy(&body);
            assert!(
                body.contains(&format!("\nGET {target} HTTP/1.1\n")),
                "{body}"
            );
            assert!(body.contains(&format!("\nhost: {HOST_NAME}\n")), "{body}");
            assert!(
                body.contains(&format!("\nx-forwarded-host: {HOST_NAME}\n")),
                "{body}"
            );
            assert!(body.contains("\ncookie: a=1; b=2\n"), "{body}");
        }
        // Host ≠ SNI applies to HTTP/2 as well (connection coalescing).
        let req = Request::get("https://other.example.test/")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(req).await.expect("response");
        assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(metrics.requests(Outcome::Proxied), 2);
    }

    #[tokio::test]
    async fn upgrades_are_tunnelled() {
        let live = backend("one").await;
        let (proxy, _) = proxy(vec![live], ProxyConfig::default());
        let mut sender = h1(&proxy, HOST_NAME).await;
        let req = Request::get("/socket")
            .header(HOST, HOST_NAME)
            .header(CONNECTION, "Upgrade")
            .header(UPGRADE, "echo")
            .body(Full::new(Bytes::new()))
            .expect("request");
        sender.ready().await.expect("ready");
        let response = sender.send_request(req).await.expect("response");
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            response.headers().get(UPGRADE).map(|v| v.as_bytes()),
            Some(&b"echo"[..])
        );
        let upgraded = hyper::upgrade::on(response).await.expect("upgraded");
        let mut io = TokioIo::new(upgraded);
        io.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        io.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("close, X-Trace"));
        headers.insert("x-trace", HeaderValue::from_static("1"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn pages_escape_what_they_quote() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
