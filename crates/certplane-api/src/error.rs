//! [`ApiError`]: the one place errors become HTTP answers with a stable code and a remediation.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use certplane_api_types::{ErrorBody, ErrorDetail};
use certplane_domain::{HostnameError, NameError};
use certplane_store::StoreError;

/// An error answer: `{"error":{"code","message","remediation"}}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub remediation: String,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        remediation: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            remediation: remediation.into(),
        }
    }

    pub fn app_not_found(app: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "APP_NOT_FOUND",
            format!("no app named {app:?} in this org"),
            "Check the app name with `certplane apps list`; the token must belong to the app's org.",
        )
    }

    pub fn certificate_not_found(app: &str, hostname: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "CERTIFICATE_NOT_FOUND",
            format!("the app {app:?} has no hostname {hostname:?}"),
            "List the app's hostnames with `certplane certs list`, or add this one with `certplane certs add`.",
        )
    }

    pub fn not_supported_yet(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "NOT_SUPPORTED_YET",
            format!("{what} is not supported yet by this version of certplane"),
            "Upgrade certplane when a version supports it; nothing was changed.",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "the server failed to handle the request",
            "Try again; if it keeps failing, the operator will find the cause in the server log.",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                remediation: self.remediation,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::HostnameTaken => Self::new(
                StatusCode::CONFLICT,
                "HOSTNAME_TAKEN",
                "this hostname is already added to another app",
                "Remove it from the other app first (`certplane certs remove HOST -a OTHER_APP`); if that app is not yours, contact the platform's support.",
            ),
            StoreError::AppNameTaken => Self::new(
                StatusCode::CONFLICT,
                "APP_NAME_TAKEN",
                "an app with this name already exists on the platform",
                "Choose another app name.",
            ),
            StoreError::OrgTaken => Self::new(
                StatusCode::CONFLICT,
                "ORG_TAKEN",
                "an org with this name's slug already exists",
                "Choose another org name.",
            ),
            StoreError::Ipv6Exhausted(prefix) => {
                tracing::error!(%prefix, "IPv6 prefix exhausted");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "NO_ALLOCATED_IPS",
                    "the platform has no unused IPv6 address left for a new app",
                    "The operator must configure a larger or new platform.ipv6_prefix.",
                )
            }
            StoreError::Ipv4Exhausted | StoreError::Ipv4Taken => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "NO_ALLOCATED_IPS",
                "every dedicated IPv4 address of the platform is in use",
                "Create the app without a dedicated IPv4 (it still gets a dedicated IPv6 and the shared IPv4), or ask the operator to extend platform.dedicated_ipv4_pool.",
            ),
            other => {
                tracing::error!(error = %other, "store call failed");
                Self::internal()
            }
        }
    }
}

impl From<HostnameError> for ApiError {
    fn from(e: HostnameError) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.code(),
            e.to_string(),
            e.remediation(),
        )
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.code(),
            e.to_string(),
            e.remediation(),
        )
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let (status, code, remediation) = match &rejection {
            JsonRejection::JsonDataError(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "INVALID_BODY",
                "Send the fields the OpenAPI document (/v1/openapi.json) lists for this route.",
            ),
            JsonRejection::JsonSyntaxError(_) => (
                StatusCode::BAD_REQUEST,
                "INVALID_JSON",
                "Send a well-formed JSON object.",
            ),
            JsonRejection::MissingJsonContentType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "Send the body with 'Content-Type: application/json'.",
            ),
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "Send a smaller body; see the limit in the message.",
            ),
            _ => (
                StatusCode::BAD_REQUEST,
                "INVALID_BODY",
                "Send a JSON body as the OpenAPI document describes.",
            ),
        };
        Self::new(status, code, rejection.body_text(), remediation)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_QUERY",
            rejection.body_text(),
            "Check the query parameters against the OpenAPI document (/v1/openapi.json).",
        )
    }
}
