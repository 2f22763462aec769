//! Bearer-token authentication as extractors: [`Auth`] for any org token, [`Admin`] for the
//! admin token alone, [`EdgeAuth`] for an edge token or the admin token (edges follow the event
//! stream; an edge token opens nothing else).

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use certplane_domain::ApiToken;
use certplane_store::{Principal, TokenKind};

use crate::{ApiError, ApiState};

/// The caller, authenticated by `Authorization: Bearer TOKEN`.
#[derive(Debug)]
pub struct Auth(pub Principal);

/// The caller, who must hold the admin token.
#[derive(Debug)]
pub struct Admin(pub Principal);

/// An edge: an edge token or the admin token.
#[derive(Debug)]
pub struct EdgeAuth(pub Principal);

impl FromRequestParts<ApiState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let principal = authenticate(parts, state).await?;
        if principal.kind == TokenKind::Edge {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "EDGE_TOKEN_NOT_ALLOWED",
                "an edge token may only follow the edge stream",
                "Use an org token (`certplane orgs create`) or the admin token for this call.",
            ));
        }
        Ok(Self(principal))
    }
}

impl FromRequestParts<ApiState> for EdgeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let principal = authenticate(parts, state).await?;
        if !matches!(principal.kind, TokenKind::Edge | TokenKind::Admin) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "EDGE_ONLY",
                "only an edge token or the admin token may follow the edge stream",
                "Create an edge token with `POST /v1/edges/tokens` (admin) and start the edge with it.",
            ));
        }
        Ok(Self(principal))
    }
}

async fn authenticate(parts: &mut Parts, state: &ApiState) -> Result<Principal, ApiError> {
    {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| unauthenticated("no Authorization header"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                // RFC 7235: the scheme is case-insensitive.
                let (scheme, token) = h.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token)
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthenticated("the Authorization header is not 'Bearer TOKEN'"))?;
        let principal = state
            .store
            .principal(&ApiToken::presented(token).hash())
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "INVALID_TOKEN",
                    "the API token is not valid",
                    "Use a token printed by `certplane orgs create` or the admin token file.",
                )
            })?;
        Ok(principal)
    }
}

impl FromRequestParts<ApiState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let Auth(principal) = Auth::from_request_parts(parts, state).await?;
        if principal.kind != TokenKind::Admin {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "ADMIN_ONLY",
                "only the platform's admin token may do this",
                "Ask the platform operator; the admin token is in <data_dir>/admin-token.",
            ));
        }
        Ok(Self(principal))
    }
}

fn unauthenticated(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        why,
        "Send 'Authorization: Bearer TOKEN' (the CLI reads CERTPLANE_TOKEN or --token).",
    )
}
