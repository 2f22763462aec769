//! certplane's REST API.
//!
//! [`router`] builds the axum router for `/v1`: orgs, apps and certificates, bearer-token
//! authentication on every route but the health check and the OpenAPI document, and JSON error
//! bodies with stable codes ([`ApiError`]). Every route is registered through utoipa-axum, so the
//! OpenAPI document at `/v1/openapi.json` is generated from the routes the server serves and
//! cannot list fewer or more. Tenant isolation: every lookup is scoped by the caller's org, and
//! anything of another org answers 404 exactly as if it did not exist.
//!
//! This crate does not listen on a socket or own a runtime: the server crate does.

#![forbid(unsafe_code)]

mod auth;
mod error;
mod extract;
mod present;
pub mod propagation;
mod routes;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use certplane_domain::PlatformSettings;
use certplane_ownership::Verifier;
use certplane_secrets::MasterKeys;
use certplane_store::Store;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
pub use propagation::Propagation;

/// Largest request body accepted, in bytes. Requests are small JSON objects...
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// ...but a certificate import carries a chain and a key, each up to the import limit.
pub const MAX_IMPORT_BODY_BYTES: usize = 3 * certplane_import::MAX_INPUT_BYTES;

/// What the API works with.
#[derive(Clone)]
#[allow(missing_debug_implementations)]
pub struct ApiDeps {
    pub store: Arc<dyn Store>,
    pub platform: Arc<PlatformSettings>,
    pub verifier: Arc<Verifier>,
    /// Seals the private keys of imported certificates.
    pub keys: Arc<MasterKeys>,
    /// The feed to edges and their registry (run its feed with [`Propagation::run_feed`]).
    pub propagation: Arc<Propagation>,
    /// The ACME issuer, when this control plane runs one.
    pub acme: Option<AcmeInfo>,
}

/// What the API knows of the ACME issuer.
#[derive(Clone, Debug)]
pub struct AcmeInfo {
    /// The CA's directory URL, shown as `certificate_authority`.
    pub certificate_authority: String,
    /// Wakes the issuer when a hostname becomes due (a customer's check).
    pub wake: Arc<tokio::sync::Notify>,
}

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub platform: Arc<PlatformSettings>,
    pub verifier: Arc<Verifier>,
    pub keys: Arc<MasterKeys>,
    pub propagation: Arc<Propagation>,
    pub acme: Option<AcmeInfo>,
    openapi: Arc<String>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("platform", &self.platform)
            .finish_non_exhaustive()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "certplane",
        description = "Custom hostnames and their TLS certificates: ownership, ACME issuance, imports, propagation to every edge."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "orgs", description = "Orgs and their API tokens (admin)"),
        (name = "apps", description = "Apps, their addresses and backends"),
        (name = "certificates", description = "Hostnames and their certificates"),
        (name = "edges", description = "Edge proxies: their event stream, acknowledgements and tokens"),
        (name = "meta", description = "Health and this document"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

fn api_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::meta::health))
        .routes(routes!(routes::meta::openapi_json))
        .routes(routes!(routes::orgs::create_org))
        .routes(routes!(routes::apps::list_apps, routes::apps::create_app))
        .routes(routes!(
            routes::apps::get_app,
            routes::apps::patch_app,
            routes::apps::delete_app
        ))
        .routes(routes!(routes::certificates::list_certificates))
        .routes(routes!(routes::certificates::add_acme))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(routes::certificates::import_custom))
                .layer(DefaultBodyLimit::max(MAX_IMPORT_BODY_BYTES)),
        )
        .routes(routes!(
            routes::certificates::get_certificate,
            routes::certificates::delete_certificate
        ))
        .routes(routes!(routes::certificates::check_certificate))
        .routes(routes!(routes::certificates::delete_acme))
        .routes(routes!(routes::certificates::delete_custom))
        .routes(routes!(routes::edges::list_edges))
        .routes(routes!(routes::edges::create_edge_token))
        .routes(routes!(routes::edges::stream))
        .routes(routes!(routes::edges::ack))
}

/// The OpenAPI document of every route [`router`] serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().into_openapi()
}

/// The API's router, ready to serve.
pub fn router(deps: ApiDeps) -> Router {
    let ApiDeps {
        store,
        platform,
        verifier,
        keys,
        propagation,
        acme,
    } = deps;
    let (router, doc) = api_routes().split_for_parts();
    let openapi = doc.to_pretty_json().unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialise the OpenAPI document");
        String::from("{}")
    });
    let state = ApiState {
        store,
        platform,
        verifier,
        keys,
        propagation,
        acme,
        openapi: Arc::new(openapi),
    };
    router
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn route_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "ROUTE_NOT_FOUND",
        "no such route",
        "See /v1/openapi.json for the routes this server serves.",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "this route does not take this method",
        "See /v1/openapi.json for the methods of each route.",
    )
}
