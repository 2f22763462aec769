//! `/v1/apps` and `/v1/apps/{app}`.

use axum::extract::State;
use axum::http::StatusCode;
use certplane_api_types::{AppList, AppResponse, CreateAppRequest, ErrorBody, PatchAppRequest};
use certplane_domain::{AppName, Backend};
use certplane_store::{App, Principal};

use crate::auth::Auth;
use crate::extract::{Json, Path};
use crate::{ApiError, ApiState, present};

/// The most backends one app may list.
const MAX_BACKENDS: usize = 64;

/// Loads one of the caller's apps; another org's app, or a name that cannot exist, is 404.
pub async fn load(state: &ApiState, principal: &Principal, app: &str) -> Result<App, ApiError> {
    let Ok(name) = AppName::parse(app) else {
        return Err(ApiError::app_not_found(app));
    };
    state
        .store
        .app(principal.org.id, &name)
        .await?
        .ok_or_else(|| ApiError::app_not_found(app))
}

fn parse_backends(backends: &[String]) -> Result<Vec<Backend>, ApiError> {
    if backends.len() > MAX_BACKENDS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "BACKEND_INVALID",
            format!(
                "{} backends given; at most {MAX_BACKENDS} are allowed",
                backends.len()
            ),
            "Put a load balancer in front of larger pools.",
        ));
    }
    Ok(backends
        .iter()
        .map(|b| Backend::parse(b))
        .collect::<Result<_, _>>()?)
}

/// The caller's apps.
#[utoipa::path(get, path = "/v1/apps", tag = "apps",
    security(("bearer" = [])),
    responses((status = 200, body = AppList), (status = 401, body = ErrorBody)))]
pub async fn list_apps(
    State(state): State<ApiState>,
    Auth(principal): Auth,
) -> Result<axum::Json<AppList>, ApiError> {
    let apps = state.store.apps(principal.org.id).await?;
    Ok(axum::Json(AppList {
        apps: apps
            .iter()
            .map(|a| present::app(&state.platform, &principal.org, a))
            .collect(),
    }))
}

/// Creates an app with its dedicated IPv6 address and ownership token.
#[utoipa::path(post, path = "/v1/apps", tag = "apps",
    request_body = CreateAppRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, body = AppResponse),
        (status = 409, description = "APP_NAME_TAKEN", body = ErrorBody),
        (status = 422, description = "APP_NAME_INVALID, BACKEND_INVALID", body = ErrorBody),
        (status = 503, description = "NO_ALLOCATED_IPS: no dedicated IPv4 (or IPv6) address left", body = ErrorBody),
    ))]
pub async fn create_app(
    State(state): State<ApiState>,
    Auth(principal): Auth,
    Json(body): Json<CreateAppRequest>,
) -> Result<(StatusCode, axum::Json<AppResponse>), ApiError> {
    let name = AppName::parse(&body.app_name)?;
    let backends = parse_backends(&body.backends)?;
    let app = state
        .store
        .create_app(
            principal.org.id,
            &name,
            &backends,
            &state.platform.ipv6_prefix,
            body.dedicated_ipv4
                .then_some(state.platform.dedicated_ipv4_pool.as_slice()),
        )
        .await?;
    tracing::info!(app = %app.name, org = %principal.org.slug, ipv6 = %app.ipv6, "app created");
    Ok((
        StatusCode::CREATED,
        axum::Json(present::app(&state.platform, &principal.org, &app)),
    ))
}

/// One app.
#[utoipa::path(get, path = "/v1/apps/{app}", tag = "apps",
    params(("app" = String, Path, description = "App name")),
    security(("bearer" = [])),
    responses((status = 200, body = AppResponse), (status = 404, description = "APP_NOT_FOUND", body = ErrorBody)))]
pub async fn get_app(
    State(state): State<ApiState>,
    Auth(principal): Auth,
    Path(app): Path<String>,
) -> Result<axum::Json<AppResponse>, ApiError> {
    let app = load(&state, &principal, &app).await?;
    Ok(axum::Json(present::app(
        &state.platform,
        &principal.org,
        &app,
    )))
}

/// Changes an app's backends.
#[utoipa::path(patch, path = "/v1/apps/{app}", tag = "apps",
    params(("app" = String, Path, description = "App name")),
    request_body = PatchAppRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, body = AppResponse),
        (status = 404, description = "APP_NOT_FOUND", body = ErrorBody),
        (status = 422, description = "BACKEND_INVALID", body = ErrorBody),
    ))]
pub async fn patch_app(
    State(state): State<ApiState>,
    Auth(principal): Auth,
    Path(app): Path<String>,
    Json(body): Json<PatchAppRequest>,
) -> Result<axum::Json<AppResponse>, ApiError> {
    let current = load(&state, &principal, &app).await?;
    let updated = match body.backends {
        Some(backends) => {
            let backends = parse_backends(&backends)?;
            state
                .store
                .set_backends(principal.org.id, &current.name, &backends)
                .await?
                .ok_or_else(|| ApiError::app_not_found(&app))?
        }
        None => current,
    };
    Ok(axum::Json(present::app(
        &state.platform,
        &principal.org,
        &updated,
    )))
}

/// Deletes an app and releases its hostnames. Its IPv6 address and token are never reused.
#[utoipa::path(delete, path = "/v1/apps/{app}", tag = "apps",
    params(("app" = String, Path, description = "App name")),
    security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 404, description = "APP_NOT_FOUND", body = ErrorBody)))]
pub async fn delete_app(
    State(state): State<ApiState>,
    Auth(principal): Auth,
    Path(app): Path<String>,
) -> Result<StatusCode, ApiError> {
    let current = load(&state, &principal, &app).await?;
    if !state
        .store
        .delete_app(principal.org.id, &current.name)
        .await?
    {
        return Err(ApiError::app_not_found(&app));
    }
    tracing::info!(app = %current.name, org = %principal.org.slug, "app deleted");
    Ok(StatusCode::NO_CONTENT)
}
