//! A typed client for certplane's REST API.
//!
//! One method per route, returning the API's own wire types; an error answer becomes
//! [`ClientError::Api`] with the server's code, message and remediation.

#![forbid(unsafe_code)]

use std::time::Duration;

use certplane_api_types::{
    AddAcmeRequest, AppList, AppResponse, CertificateDetail, CertificateList, CreateAppRequest,
    CreateOrgRequest, CreatedOrg, ErrorBody,
};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What a delete removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteScope {
    All,
    Acme,
    Custom,
}

/// A client for one API endpoint and token.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// `base` is the API's URL, e.g. `http://127.0.0.1:4000`.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::InvalidUrl(base.to_owned()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("certplane-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError::Transport)?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<Option<T>, ClientError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_connect() {
                ClientError::Unreachable(self.base.clone())
            } else {
                ClientError::Transport(e)
            }
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(ClientError::Transport)?;
        if status.is_success() {
            if status == StatusCode::NO_CONTENT || bytes.is_empty() {
                return Ok(None);
            }
            return serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ClientError::Decode(e.to_string()));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ClientError::Api {
                status: status.as_u16(),
                code: body.error.code,
                message: body.error.message,
                remediation: body.error.remediation,
            }),
            Err(_) => Err(ClientError::Api {
                status: status.as_u16(),
                code: format!("HTTP_{}", status.as_u16()),
                message: String::from_utf8_lossy(&bytes)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .chars()
                    .take(200)
                    .collect(),
                remediation: "Check --api-url: it must point at a certplane API.".into(),
            }),
        }
    }

    async fn expect<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<T, ClientError> {
        self.call(method, path, body)
            .await?
            .ok_or_else(|| ClientError::Decode("the answer has no body".into()))
    }

    pub async fn create_org(&self, name: &str) -> Result<CreatedOrg, ClientError> {
        let body = CreateOrgRequest { name: name.into() };
        self.expect(Method::POST, "/v1/orgs", Some(&body)).await
    }

    /// Every edge and the revision it serves (admin).
    pub async fn edges(&self) -> Result<certplane_api_types::EdgeList, ClientError> {
        self.expect(Method::GET, "/v1/edges", NO_BODY).await
    }

    /// A new edge token (admin), shown once.
    pub async fn create_edge_token(
        &self,
    ) -> Result<certplane_api_types::CreatedEdgeToken, ClientError> {
        self.expect(Method::POST, "/v1/edges/tokens", NO_BODY).await
    }

    pub async fn apps(&self) -> Result<AppList, ClientError> {
        self.expect(Method::GET, "/v1/apps", NO_BODY).await
    }

    pub async fn create_app(
        &self,
        name: &str,
        backends: &[String],
        dedicated_ipv4: bool,
    ) -> Result<AppResponse, ClientError> {
        let body = CreateAppRequest {
            app_name: name.into(),
            backends: backends.to_vec(),
            dedicated_ipv4,
        };
        self.expect(Method::POST, "/v1/apps", Some(&body)).await
    }

    pub async fn app(&self, name: &str) -> Result<AppResponse, ClientError> {
        self.expect(Method::GET, &format!("/v1/apps/{}", encode(name)), NO_BODY)
            .await
    }

    pub async fn delete_app(&self, name: &str) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(
            Method::DELETE,
            &format!("/v1/apps/{}", encode(name)),
            NO_BODY,
        )
        .await
        .map(drop)
    }

    /// One page of an app's hostnames.
    pub async fn certificates(
        &self,
        app: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<CertificateList, ClientError> {
        let mut path = format!("/v1/apps/{}/certificates?limit={limit}", encode(app));
        if let Some(cursor) = cursor {
            path.push_str(&format!("&cursor={}", encode(cursor)));
        }
        self.expect(Method::GET, &path, NO_BODY).await
    }

    pub async fn add_acme(
        &self,
        app: &str,
        hostname: &str,
    ) -> Result<CertificateDetail, ClientError> {
        let body = AddAcmeRequest {
            hostname: hostname.into(),
        };
        let path = format!("/v1/apps/{}/certificates/acme", encode(app));
        self.expect(Method::POST, &path, Some(&body)).await
    }

    pub async fn import_custom(
        &self,
        app: &str,
        hostname: &str,
        fullchain: &str,
        private_key: &str,
    ) -> Result<CertificateDetail, ClientError> {
        let body = serde_json::json!({
            "hostname": hostname,
            "fullchain": fullchain,
            "private_key": private_key,
        });
        let path = format!("/v1/apps/{}/certificates/custom", encode(app));
        self.expect(Method::POST, &path, Some(&body)).await
    }

    pub async fn certificate(
        &self,
        app: &str,
        hostname: &str,
    ) -> Result<CertificateDetail, ClientError> {
        self.expect(Method::GET, &cert_path(app, hostname), NO_BODY)
            .await
    }

    pub async fn check(&self, app: &str, hostname: &str) -> Result<CertificateDetail, ClientError> {
        let path = format!("{}/check", cert_path(app, hostname));
        self.expect(Method::POST, &path, NO_BODY).await
    }

    /// Deletes what `scope` names; `None` when the hostname is gone, or what is left.
    pub async fn delete_certificate(
        &self,
        app: &str,
        hostname: &str,
        scope: DeleteScope,
    ) -> Result<Option<CertificateDetail>, ClientError> {
        let mut path = cert_path(app, hostname);
        match scope {
            DeleteScope::All => {}
            DeleteScope::Acme => path.push_str("/acme"),
            DeleteScope::Custom => path.push_str("/custom"),
        }
        self.call(Method::DELETE, &path, NO_BODY).await
    }
}

const NO_BODY: Option<&()> = None;

fn cert_path(app: &str, hostname: &str) -> String {
    format!("/v1/apps/{}/certificates/{}", encode(app), encode(hostname))
}

/// Percent-encodes everything but RFC 3986's unreserved characters (so `*` becomes `%2A`).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("{message} ({code}). {remediation}")]
    Api {
        status: u16,
        code: String,
        message: String,
        remediation: String,
    },
    #[error(
        "cannot reach the certplane API at {0}; is `certplane serve` running, and is --api-url / CERTPLANE_API_URL right?"
    )]
    Unreachable(String),
    #[error("the API URL {0:?} must start with http:// or https://")]
    InvalidUrl(String),
    #[error("request failed: {0}")]
    Transport(reqwest::Error),
    #[error("unexpected answer from the API: {0}")]
    Decode(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("*.example.com"), "%2A.example.com");
        assert_eq!(encode("www.example.com"), "www.example.com");
        assert_eq!(encode("a/b?c"), "a%2Fb%3Fc");
        assert_eq!(
            cert_path("web", "*.x.io"),
            "/v1/apps/web/certificates/%2A.x.io"
        );
    }
}
