//! `POST /v1/orgs` (admin).

use axum::extract::State;
use axum::http::StatusCode;
use certplane_api_types::{CreateOrgRequest, CreatedOrg, ErrorBody};
use certplane_domain::{ApiToken, OrgName, org_ownership_value};

use crate::auth::Admin;
use crate::extract::Json;
use crate::{ApiError, ApiState};

/// Creates an org and its first API token, shown in this answer only.
#[utoipa::path(post, path = "/v1/orgs", tag = "orgs",
    request_body = CreateOrgRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, body = CreatedOrg),
        (status = 403, description = "Not the admin token", body = ErrorBody),
        (status = 409, description = "ORG_TAKEN", body = ErrorBody),
        (status = 422, description = "ORG_NAME_INVALID", body = ErrorBody),
    ))]
pub async fn create_org(
    State(state): State<ApiState>,
    Admin(admin): Admin,
    Json(body): Json<CreateOrgRequest>,
) -> Result<(StatusCode, axum::Json<CreatedOrg>), ApiError> {
    let name = OrgName::parse(&body.name)?;
    let slug = name.slug()?;
    let token = ApiToken::generate();
    let org = state.store.create_org(&name, &slug, &token.hash()).await?;
    tracing::info!(org = %org.slug, by = %admin.org.slug, "org created");
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedOrg {
            slug: org.slug.to_string(),
            name: org.name,
            token: token.expose().to_owned(),
            ownership_value: org_ownership_value(&org.token),
        }),
    ))
}
