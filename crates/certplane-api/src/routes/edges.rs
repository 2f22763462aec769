//! `GET /v1/edges` (admin): which revision each edge serves. Edges arrive with propagation.

use certplane_api_types::ErrorBody;

use crate::ApiError;
use crate::auth::Admin;

/// Each edge with the revision it serves. Not supported yet: edges and propagation come later.
#[utoipa::path(get, path = "/v1/edges", tag = "meta",
    security(("bearer" = [])),
    responses(
        (status = 403, description = "Not the admin token", body = ErrorBody),
        (status = 501, description = "NOT_SUPPORTED_YET", body = ErrorBody),
    ))]
pub async fn list_edges(_admin: Admin) -> ApiError {
    ApiError::not_supported_yet("listing edges")
}

/// Creates an edge token (for `certplane edge --token`). Not supported yet: edges come later.
#[utoipa::path(post, path = "/v1/edges/tokens", tag = "meta",
    security(("bearer" = [])),
    responses(
        (status = 403, description = "Not the admin token", body = ErrorBody),
        (status = 501, description = "NOT_SUPPORTED_YET", body = ErrorBody),
    ))]
pub async fn create_edge_token(_admin: Admin) -> ApiError {
    ApiError::not_supported_yet("edge tokens")
}
