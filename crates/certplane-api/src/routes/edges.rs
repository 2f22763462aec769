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
