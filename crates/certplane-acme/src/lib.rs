//! The platform's ACME account at the configured CA (groundwork for issuance), on
//! [instant-acme](https://docs.rs/instant-acme/0.8) 0.8.
//!
//! [`Accounts::open`] gives the account for [`AcmeClientConfig::directory_url`]: restored from
//! stored credentials when the caller has them, otherwise created at the CA, in which case the
//! new credentials come back for the caller to store.
//!
//! # Credentials are secret
//!
//! The credentials JSON holds the account's private key. This crate never logs it and never puts
//! it (or any part of the stored JSON) in an error message or `Debug` output. The caller must
//! seal it (certplane-secrets' `MasterKeys`) before storing it, and unseal it only to pass it
//! back to [`Accounts::open`].
//!
//! # HTTP client
//!
//! Requests go through a hyper client of this crate's own: TCP_NODELAY on (instant-acme's
//! default client leaves Nagle's algorithm on, five times slower against Pebble), a connect
//! timeout, a timeout on every request, HTTPS only, and the Mozilla roots (`webpki-roots`) plus
//! the optional extra root [`AcmeClientConfig::ca_root_pem`].

#![forbid(unsafe_code)]

pub mod issuer;
pub mod policy;

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, BodyWrapper, BytesResponse, HttpClient, NewAccount, Problem,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// How long a TCP connection to the CA may take to establish.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one request to the CA may take until its response headers arrive.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how to reach the ACME CA (from the `[acme]` configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeClientConfig {
    /// The CA's ACME directory, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory_url: String,
    /// An extra root certificate (PEM) to trust for the CA's HTTPS server, besides the Mozilla
    /// roots (the contents of `acme.ca_root_file`); e.g. the test CA in front of Pebble.
    pub ca_root_pem: Option<String>,
    /// Contact URIs registered with a new account (`mailto:…`).
    pub contact: Vec<String>,
    /// External account binding (RFC 8555 §7.3.4) for CAs that require it: the key id and the
    /// base64url HMAC key the CA gave. Used only when the account is created.
    pub eab: Option<(String, String)>,
}

/// The platform's ACME accounts: one account per directory URL.
///
/// The caller keeps one sealed credentials blob per directory URL and hands it back to
/// [`Accounts::open`]; credentials for another directory are refused.
#[derive(Debug)]
#[non_exhaustive]
pub struct Accounts;

impl Accounts {
    /// The account for the configured directory: restored from `stored` credentials JSON when
    /// given, else created at the CA (agreeing to its terms of service).
    ///
    /// Returns the account and, when it was just created, its credentials JSON, which the caller
    /// must seal (certplane-secrets `MasterKeys`) and store: it contains the account's private
    /// key. A restored account returns `None` (nothing new to store).
    ///
    /// Restoring fetches the CA's directory (so the CA must be reachable) but does not ask the
    /// CA whether the account still exists: that shows at the first signed request.
    pub async fn open(
        config: &AcmeClientConfig,
        stored: Option<&str>,
    ) -> Result<(Account, Option<String>), AcmeError> {
        let http = acme_http_client(config.ca_root_pem.as_deref())?;
        let builder = Account::builder_with_http(Box::new(http));
        let directory_url = config.directory_url.as_str();

        if let Some(stored) = stored {
            let credentials = parse_credentials(stored, directory_url)?;
            let account = builder
                .from_credentials(credentials)
                .await
                .map_err(|e| AcmeError::from_acme(directory_url, e))?;
            return Ok((account, None));
        }

        let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
        let new_account = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let eab = match &config.eab {
            Some((kid, hmac)) => {
                use base64::Engine as _;
                let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(hmac.trim().trim_end_matches('='))
                    .map_err(|_| AcmeError::Eab {
                        reason: "acme.eab_hmac_key is not base64url",
                    })?;
                Some(instant_acme::ExternalAccountKey::new(kid.clone(), &key))
            }
            None => None,
        };
        let (account, credentials) = builder
            .create(&new_account, config.directory_url.clone(), eab.as_ref())
            .await
            .map_err(|e| AcmeError::from_acme(directory_url, e))?;
        // Serializing these credentials cannot fail (strings and base64); never echo them.
        let json =
            serde_json::to_string(&credentials).map_err(|_| AcmeError::StoredCredentials {
                reason: "the new credentials could not be serialized",
            })?;
        Ok((account, Some(json)))
    }
}

/// Parses stored credentials JSON without ever echoing its contents, and checks it belongs to
/// `directory_url`.
fn parse_credentials(stored: &str, directory_url: &str) -> Result<AccountCredentials, AcmeError> {
    // serde_json's data errors quote the offending value (`invalid type: string "…"`), which
    // may be key material: report only the category.
    let value: serde_json::Value =
        serde_json::from_str(stored).map_err(|_| AcmeError::StoredCredentials {
            reason: "not valid JSON",
        })?;
    match value.get("directory").and_then(serde_json::Value::as_str) {
        Some(stored_url) if stored_url == directory_url => {}
        Some(stored_url) => {
            return Err(AcmeError::DirectoryMismatch {
                stored: stored_url.to_owned(),
                configured: directory_url.to_owned(),
            });
        }
        None => {
            return Err(AcmeError::StoredCredentials {
                reason: "no directory URL in the stored credentials",
            });
        }
    }
    serde_json::from_value(value).map_err(|_| AcmeError::StoredCredentials {
        reason: "not instant-acme account credentials",
    })
}

/// Why an ACME account could not be opened. Messages and `Debug` output never contain credential
/// material: only URLs, the CA's problem documents and network or TLS failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// The extra root certificate (`acme.ca_root_file`) is unusable.
    #[error("acme.ca_root_file: {reason}")]
    CaRoot {
        /// What is wrong with it.
        reason: String,
    },
    /// The external account binding configured is unusable (its key is never shown).
    #[error("external account binding: {reason}")]
    Eab {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The stored credentials cannot be used (their contents are never shown).
    #[error("stored ACME account credentials: {reason}")]
    StoredCredentials {
        /// What is wrong with them.
        reason: &'static str,
    },
    /// The stored credentials are for another ACME directory.
    #[error(
        "stored ACME account credentials are for directory {stored}, not the configured {configured}"
    )]
    DirectoryMismatch {
        /// The stored credentials' directory URL.
        stored: String,
        /// The configured directory URL.
        configured: String,
    },
    /// No connection to the CA (refused, unreachable, name not found, connect timeout).
    #[error("cannot connect to the ACME CA at {url}: {reason}")]
    Connect {
        /// The configured directory URL.
        url: String,
        /// The network failure.
        reason: String,
    },
    /// The TLS handshake with the CA failed, e.g. its certificate is not signed by a trusted
    /// root (set `acme.ca_root_file` for a test CA).
    #[error("TLS with the ACME CA at {url} failed: {reason}")]
    Tls {
        /// The configured directory URL.
        url: String,
        /// The TLS failure.
        reason: String,
    },
    /// A request to the CA did not answer in time.
    #[error("the ACME CA at {url} did not answer within {timeout:?}")]
    Timeout {
        /// The configured directory URL.
        url: String,
        /// The time allowed.
        timeout: Duration,
    },
    /// The CA refused the request with an ACME problem document.
    #[error("the ACME CA at {url} refused: {problem}")]
    Rejected {
        /// The configured directory URL.
        url: String,
        /// The CA's problem document (`type`, `detail`, `status`).
        problem: Problem,
    },
    /// The CA's list of the account's orders could not be read.
    #[error("the ACME CA's order list at {url} could not be read")]
    Listing {
        /// The list's URL.
        url: String,
    },
    /// Anything else the ACME exchange failed on (unexpected responses, malformed JSON, …).
    #[error("ACME exchange with {url} failed: {source}")]
    Protocol {
        /// The configured directory URL.
        url: String,
        /// instant-acme's error.
        #[source]
        source: instant_acme::Error,
    },
}

impl AcmeError {
    /// Sorts an instant-acme error by cause; instant-acme wraps transport failures in
    /// `Error::Other`.
    pub fn from_acme(url: &str, error: instant_acme::Error) -> Self {
        let url = url.to_owned();
        match error {
            instant_acme::Error::Api(problem) => Self::Rejected { url, problem },
            instant_acme::Error::Other(other) => match transport_failure(other.as_ref()) {
                Some(Transport::Tls(reason)) => Self::Tls { url, reason },
                Some(Transport::Connect(reason)) => Self::Connect { url, reason },
                Some(Transport::Timeout) => Self::Timeout {
                    url,
                    timeout: REQUEST_TIMEOUT,
                },
                None => Self::Protocol {
                    url,
                    source: instant_acme::Error::Other(other),
                },
            },
            source => Self::Protocol { url, source },
        }
    }
}

enum Transport {
    Tls(String),
    Connect(String),
    Timeout,
}

/// Looks through an error's causes for a timeout, TLS or connect failure.
fn transport_failure(error: &(dyn StdError + 'static)) -> Option<Transport> {
    let chain = causes(error);
    if chain.iter().any(|e| e.is::<RequestTimeout>()) {
        return Some(Transport::Timeout);
    }
    if let Some(tls) = chain.iter().find_map(|e| e.downcast_ref::<rustls::Error>()) {
        return Some(Transport::Tls(tls.to_string()));
    }
    let connect = chain.iter().any(|e| {
        e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
    });
    // The innermost cause says what happened ("Connection refused (os error 111)").
    connect.then(|| Transport::Connect(chain.last().unwrap_or(&error).to_string()))
}

/// An error and its causes, outermost first. `io::Error::source` skips the error an
/// `io::Error` wraps (tokio-rustls wraps `rustls::Error` so), hence `get_ref` for those.
fn causes<'e>(error: &'e (dyn StdError + 'static)) -> Vec<&'e (dyn StdError + 'static)> {
    let mut chain = vec![error];
    let mut current = error;
    loop {
        let next = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => current.source(),
        };
        match next {
            Some(next) if chain.len() < 32 => {
                chain.push(next);
                current = next;
            }
            _ => return chain,
        }
    }
}

/// The HTTP client instant-acme talks to the CA with.
fn acme_http_client(ca_root_pem: Option<&str>) -> Result<AcmeHttpClient, AcmeError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = ca_root_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| AcmeError::CaRoot {
                reason: format!("invalid PEM: {e}"),
            })?;
            roots.add(cert).map_err(|e| AcmeError::CaRoot {
                reason: format!("not a usable root certificate: {e}"),
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(AcmeError::CaRoot {
                reason: "no PEM certificate in it".to_owned(),
            });
        }
    }
    // ring, like the rest of the workspace (no cmake/NASM for aws-lc-sys); rustls 0.23.48
    // deprecates its provider only for lacking post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::CaRoot {
            reason: format!("TLS configuration: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    tcp.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    Ok(AcmeHttpClient {
        inner: HyperClient::builder(TokioExecutor::new()).build(https),
    })
}

/// A hyper client (NODELAY, HTTPS only) with a timeout on every request.
struct AcmeHttpClient {
    inner: HyperClient<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
}

impl HttpClient for AcmeHttpClient {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        // The exchange of the task making the request (instant-acme calls this synchronously
        // from the caller's task), if it asked for one.
        let exchange = EXCHANGE.try_with(Arc::clone).ok();
        let response = self.inner.request(req);
        Box::pin(async move {
            let response = match tokio::time::timeout(REQUEST_TIMEOUT, response).await {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => return Err(instant_acme::Error::Other(Box::new(e))),
                Err(_) => return Err(instant_acme::Error::Other(Box::new(RequestTimeout))),
            };
            let Some(exchange) = exchange else {
                return Ok(BytesResponse::from(response));
            };
            let (parts, body) = response.into_parts();
            if let Some(at) = retry_after(&parts.headers) {
                lock(&exchange).retry_after = Some(at);
            }
            if !lock(&exchange).capture_body {
                return Ok(BytesResponse::from(http::Response::from_parts(parts, body)));
            }
            let bytes =
                match tokio::time::timeout(REQUEST_TIMEOUT, http_body_util::BodyExt::collect(body))
                    .await
                {
                    Ok(Ok(collected)) => collected.to_bytes(),
                    Ok(Err(e)) => return Err(instant_acme::Error::Other(Box::new(e))),
                    Err(_) => return Err(instant_acme::Error::Other(Box::new(RequestTimeout))),
                };
            let next = next_link(&parts.headers);
            lock(&exchange).body = Some((bytes.clone(), next));
            Ok(BytesResponse::from(http::Response::from_parts(
                parts,
                http_body_util::Full::new(bytes),
            )))
        })
    }
}

tokio::task_local! {
    /// What the CA's responses said beyond what instant-acme keeps: set by [`observe`].
    static EXCHANGE: Arc<std::sync::Mutex<Exchange>>;
}

/// What [`observe`] saw of the CA's responses.
#[derive(Debug, Default)]
pub struct Exchange {
    /// The latest `Retry-After` (a rate-limit answer's end; instant-acme drops it).
    pub retry_after: Option<std::time::SystemTime>,
    capture_body: bool,
    /// The last response body and its `Link: rel="next"`, when capturing.
    body: Option<(Bytes, Option<String>)>,
}

/// Runs `f` (ACME calls on this crate's client) and returns what the CA's responses said
/// besides: the `Retry-After` of a refusal.
pub async fn observe<T>(f: impl Future<Output = T>) -> (T, Exchange) {
    let exchange = Arc::new(std::sync::Mutex::new(Exchange::default()));
    let out = EXCHANGE.scope(exchange.clone(), f).await;
    let seen = std::mem::take(&mut *lock(&exchange));
    (out, seen)
}

fn lock(m: &std::sync::Mutex<Exchange>) -> std::sync::MutexGuard<'_, Exchange> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn retry_after(headers: &http::HeaderMap) -> Option<std::time::SystemTime> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    // At most a week: an absurd value must not park a hostname for good.
    let now = std::time::SystemTime::now();
    let latest = now + Duration::from_secs(7 * 86_400);
    let at = match value.parse::<u64>() {
        Ok(secs) => now.checked_add(Duration::from_secs(secs)).unwrap_or(latest),
        Err(_) => httpdate::parse_http_date(value).ok()?,
    };
    Some(at.min(latest))
}

fn next_link(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find(|l| l.contains("rel=\"next\""))
        .and_then(|l| {
            let start = l.find('<')? + 1;
            let end = l.find('>')?;
            (start < end).then(|| l[start..end].to_owned())
        })
}

/// The URLs of the account's orders at the CA (RFC 8555 §7.1.2.1), all pages, or `None` when
/// the CA does not list them. instant-acme has no call for this, so it is fetched with its
/// signed POST-as-GET (`Account::order`) and the body read from this crate's client; the
/// account object's `orders` URL comes the same way. At most `max_pages` pages are read.
pub async fn account_orders(
    account: &Account,
    max_pages: usize,
) -> Result<Option<Vec<String>>, AcmeError> {
    async fn fetch(account: &Account, url: &str) -> Option<(serde_json::Value, Option<String>)> {
        let (_, mut seen) = observe(async {
            lock(&EXCHANGE.with(Arc::clone)).capture_body = true;
            // The answer is not an order, so instant-acme's parse fails; the body is captured.
            let _ = account.order(url.to_owned()).await;
        })
        .await;
        let (body, next) = seen.body.take()?;
        Some((serde_json::from_slice(&body).ok()?, next))
    }
    let Some((account_object, _)) = fetch(account, account.id()).await else {
        return Ok(None);
    };
    let Some(mut url) = account_object
        .get("orders")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
    else {
        return Ok(None);
    };
    let mut orders = Vec::new();
    for _ in 0..max_pages {
        let Some((page, next)) = fetch(account, &url).await else {
            return Err(AcmeError::Listing { url });
        };
        orders.extend(
            page.get("orders")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_str)
                .map(str::to_owned),
        );
        match next {
            Some(n) if n != url => url = n,
            _ => break,
        }
    }
    Ok(Some(orders))
}

/// A request to the CA took longer than [`REQUEST_TIMEOUT`].
#[derive(Debug)]
struct RequestTimeout;

impl fmt::Display for RequestTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no response within {REQUEST_TIMEOUT:?}")
    }
}

impl StdError for RequestTimeout {}

#[cfg(test)]
mod tests {
    use super::*;

    const DIRECTORY: &str = "https://127.0.0.1:14000/dir";
    const SECRET: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg";

    fn assert_no_secret(error: &AcmeError) {
        assert!(!error.to_string().contains(SECRET), "{error}");
        assert!(!format!("{error:?}").contains(SECRET), "{error:?}");
    }

    #[test]
    fn malformed_credentials_are_not_echoed() {
        for stored in [
            format!("{{\"key_pkcs8\":\"{SECRET}\""),
            format!("{{\"id\":1,\"key_pkcs8\":\"{SECRET}\",\"directory\":\"{DIRECTORY}\"}}"),
            format!("{{\"id\":\"x\",\"key_pkcs8\":[\"{SECRET}\"],\"directory\":\"{DIRECTORY}\"}}"),
            format!("{{\"key_pkcs8\":\"{SECRET}\"}}"),
        ] {
            let Err(error) = parse_credentials(&stored, DIRECTORY) else {
                panic!("{stored} parses");
            };
            assert!(
                matches!(error, AcmeError::StoredCredentials { .. }),
                "{error:?}"
            );
            assert_no_secret(&error);
        }
    }

    #[test]
    fn credentials_for_another_directory_are_refused() {
        let stored = format!(
            "{{\"id\":\"x\",\"key_pkcs8\":\"{SECRET}\",\"directory\":\"https://other.test/dir\"}}"
        );
        let Err(error) = parse_credentials(&stored, DIRECTORY) else {
            panic!("credentials for another directory accepted");
        };
        assert!(
            matches!(error, AcmeError::DirectoryMismatch { .. }),
            "{error:?}"
        );
        assert_no_secret(&error);
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date_capped_at_a_week() {
        let now = std::time::SystemTime::now();
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "120".parse().expect("value"));
        let at = retry_after(&headers).expect("parsed");
        let secs = at.duration_since(now).expect("future").as_secs();
        assert!((119..=121).contains(&secs), "{secs}");
        headers.insert(
            http::header::RETRY_AFTER,
            "18446744073709551615".parse().expect("value"),
        );
        let capped = retry_after(&headers).expect("capped");
        assert!(capped.duration_since(now).expect("future").as_secs() <= 7 * 86_400 + 1);
        let date = httpdate::fmt_http_date(now + Duration::from_secs(3_600));
        headers.insert(http::header::RETRY_AFTER, date.parse().expect("value"));
        let at = retry_after(&headers).expect("date");
        let secs = at.duration_since(now).expect("future").as_secs();
        assert!((3_598..=3_600).contains(&secs), "{secs}");
        headers.insert(http::header::RETRY_AFTER, "soon".parse().expect("value"));
        assert!(retry_after(&headers).is_none());
    }

    #[test]
    fn a_bad_extra_root_is_reported() {
        for pem in ["", "not a certificate"] {
            let Err(error) = acme_http_client(Some(pem)) else {
                panic!("{pem:?} accepted as a root");
            };
            assert!(matches!(error, AcmeError::CaRoot { .. }), "{error:?}");
        }
    }
}
