//! `/v1/apps/{app}/certificates…`: an app's hostnames and their certificates.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use certplane_api_types::{
    AddAcmeRequest, CertificateDetail, CertificateList, ErrorBody, ImportCustomRequest,
    PropagationStatus,
};
use certplane_domain::{DeleteScope, Hostname};
use certplane_store::{
    App, CertSource, DeleteOutcome, HostnameRecord, NewCertificate, Principal, StoreError,
    sealing_context,
};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Auth;
use crate::extract::{Json, Path, Query};
use crate::routes::apps;
use crate::{ApiError, ApiState, present};

pub const DEFAULT_LIMIT: u32 = 25;
pub const MAX_LIMIT: u32 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 500 (default 25).
    limit: Option<u32>,
}

/// `?wait=propagated[&timeout=SECONDS]` on calls that change what edges serve.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitParams {
    /// `propagated`: answer only once every live edge serves the change.
    wait: Option<String>,
    /// Seconds to wait for the edges, 1 to 300 (default 30); then 504 PROPAGATION_TIMEOUT.
    timeout: Option<u64>,
}

pub const DEFAULT_WAIT_SECS: u64 = 30;
pub const MAX_WAIT_SECS: u64 = 300;

impl WaitParams {
    /// The wait asked for, refused before anything is changed when it is malformed.
    fn parse(&self) -> Result<Option<std::time::Duration>, ApiError> {
        match self.wait.as_deref() {
            None => Ok(None),
            Some("propagated") => {
                let secs = self.timeout.unwrap_or(DEFAULT_WAIT_SECS);
                if !(1..=MAX_WAIT_SECS).contains(&secs) {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "WAIT_TIMEOUT_OUT_OF_RANGE",
                        format!("timeout={secs} is out of range"),
                        format!("Give a timeout from 1 to {MAX_WAIT_SECS} seconds."),
                    ));
                }
                Ok(Some(std::time::Duration::from_secs(secs)))
            }
            Some(other) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "WAIT_INVALID",
                format!("wait={other:?} is not understood"),
                "Use wait=propagated, or leave wait out.",
            )),
        }
    }
}

/// After a change to `hostname`: wakes the feed to edges and, when asked, waits until every
/// live edge serves it.
async fn propagate(
    state: &ApiState,
    hostname: &Hostname,
    wait: Option<std::time::Duration>,
) -> Result<(), ApiError> {
    state.propagation.poke();
    let Some(timeout) = wait else {
        return Ok(());
    };
    let revision = state.store.hostname_revision(hostname).await?;
    match state.propagation.wait_for(revision, timeout).await? {
        Ok(()) => Ok(()),
        Err(behind) => {
            let edges: Vec<String> = behind
                .iter()
                .map(|e| format!("{} (at revision {})", e.id, e.revision))
                .collect();
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "PROPAGATION_TIMEOUT",
                format!(
                    "the change to {hostname} is saved (revision {revision}), but within {} s these edges did not confirm serving it: {}",
                    timeout.as_secs(),
                    edges.join(", ")
                ),
                "Nothing needs to be sent again: the edges get the change when they catch up. `GET /v1/edges` shows each edge's revision; an edge that stays behind is disconnected or failing (see its log).",
            ))
        }
    }
}

/// The caller's app and one of its hostnames; anything else is 404.
async fn load(
    state: &ApiState,
    principal: &Principal,
    app: &str,
    hostname: &str,
) -> Result<(App, HostnameRecord), ApiError> {
    let app = apps::load(state, principal, app).await?;
    let not_found = || ApiError::certificate_not_found(app.name.as_str(), hostname);
    let Ok(name) = Hostname::parse(hostname) else {
        return Err(not_found());
    };
    let record = state
        .store
        .hostname(app.id, &name)
        .await?
        .ok_or_else(not_found)?;
    Ok((app, record))
}

async fn detail(
    state: &ApiState,
    principal: &Principal,
    app: &App,
    record: &HostnameRecord,
) -> Result<CertificateDetail, ApiError> {
    let certs = state.store.certificates(app.id, &record.hostname).await?;
    let mut detail = present::detail(&state.platform, &principal.org, app, record, &certs);
    if record.acme_requested {
        let orders = state.store.acme_orders(&record.hostname, 1).await?;
        present::acme_status(
            &mut detail,
            record,
            orders.first(),
            state
                .acme
                .as_ref()
                .map(|a| a.certificate_authority.as_str()),
        );
    }
    detail.propagation = Some(propagation_status(state, &record.hostname).await?);
    Ok(detail)
}

async fn propagation_status(
    state: &ApiState,
    hostname: &Hostname,
) -> Result<PropagationStatus, ApiError> {
    let revision = state.store.hostname_revision(hostname).await?;
    let (live, serving) = state.propagation.serving(revision).await?;
    Ok(PropagationStatus {
        revision,
        edges_live: live as u32,
        edges_serving: serving as u32,
        propagated: serving == live,
    })
}

/// The app's hostnames in name order, a page at a time.
#[utoipa::path(get, path = "/v1/apps/{app}/certificates", tag = "certificates",
    params(("app" = String, Path, description = "App name"), ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = CertificateList),
        (status = 404, description = "APP_NOT_FOUND", body = ErrorBody),
        (status = 422, description = "LIMIT_OUT_OF_RANGE, INVALID_CURSOR", body = ErrorBody),
    ))]
pub async fn list_certificates(
    State(state): State<ApiState>,
    Auth(principal): Auth,
    Path(app): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<CertificateList>, ApiError> {
    let app = apps::load(&state, &principal, &app).await?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "LIMIT_OUT_OF_RANGE",
            format!("limit {limit} is outside 1..={MAX_LIMIT}"),
            format!("Pass a limit from 1 to {MAX_LIMIT}, or none for {DEFAULT_LIMIT}."),
        ));
    }
    let after = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let page = state
        .store
        .hostnames(app.id, after.as_deref(), limit)
        .await?;
    let full = page.items.len() == limit as usize;
    let next_cursor = page
        .items
        .last()
        .filter(|_| full)
        .map(|r| URL_SAFE_NO_PAD.encode(r.hostname.as_str()));
    Ok(axum::Json(CertificateList {
        certificates: page.items.iter().map(present::summary).collect(),
        next_cursor,
        total_count: page.total,
    }))
}

fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "INVALID_CURSOR",
                "the cursor is not one this API handed out",
                "Pass next_cursor from the previous page unchanged, or no cursor for the first page.",
            )
        })
}

/// Adds a hostname to the app and asks for an ACME certificate for it.
///
/// 201 when the hostname is new; 200 when the app already had it (the ACME requirement is
/// recorded either way).
#[utoipa::path(post, path = "/v1/apps/{app}/certificates/acme", tag = "certificates",
    params(("app" = String, Path, description = "App name"), WaitParams),
    request_body = AddAcmeRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, body = CertificateDetail),
        (status = 200, description = "The app already had the hostname", body = CertificateDetail),
        (status = 404, description = "APP_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "HOSTNAME_TAKEN", body = ErrorBody),
        (status = 422, description = "HOSTNAME_* codes", body = ErrorBody),
    ))]
pub async fn add_acme(
    State(state): State<ApiState>,
    Auth(principal): Auth,
    Path(app): Path<String>,
    Query(wait): Query<WaitParams>,
    Json(body): Json<AddAcmeRequest>,
) -> Result<(StatusCode, axum::Json<CertificateDetail>), ApiError> {
    let wait = wait.parse()?;
    let app = apps::load(&state, &principal, &app).await?;
    let hostname = Hostname::parse(&body.hostname)?;
    refuse_reserved(&state, &hostname)?;
    let (record, created) = match state.store.request_acme(app.id, &hostname).await {
        Err(StoreError::HostnameTaken) => {
            contest(&state, &principal, &app, &hostname).await?;
            state.store.request_acme(app.id, &hostname).await?
        }
        other => other?,
    };
    if created {
        tracing::info!(%hostname, app = %app.name, "hostname added");
    }
    propagate(&state, &hostname, wait).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    // A hostname created just now has no certificate yet: no need to look.
    let detail = if created && wait.is_none() {
        present::detail(&state.platform, &principal.org, &app, &record, &[])
    } else {
        detail(&state, &principal, &app, &record).await?
    };
    Ok((status, axum::Json(detail)))
}

/// Imports a custom certificate (and its key) for a hostname, adding the hostname to the app
/// when it lacks it. A hostname that already has a custom certificate gets the new one in its
/// place, atomically. It is served once ownership is verified, in preference to ACME.
#[utoipa::path(post, path = "/v1/apps/{app}/certificates/custom", tag = "certificates",
    params(("app" = String, Path, description = "App name"), WaitParams),
    request_body = ImportCustomRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Imported for a new hostname", body = CertificateDetail),
        (status = 200, description = "Imported for a hostname the app had", body = CertificateDetail),
        (status = 404, description = "APP_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "HOSTNAME_TAKEN", body = ErrorBody),
        (status = 422, description = "HOSTNAME_* codes, or why the certificate was refused: IMPORT_TOO_LARGE, CERT_MISSING, KEY_MISSING, PEM_INVALID, CERT_INVALID, KEY_INVALID, KEY_MULTIPLE, KEY_ENCRYPTED, KEY_MISMATCH, CERT_SAN_MISSING, CERT_HOSTNAME_MISMATCH, CERT_EXPIRED, CERT_NOT_YET_VALID, KEY_TOO_WEAK, KEY_UNSUPPORTED, SIGNATURE_WEAK, CERT_IS_CA, CHAIN_BROKEN, CERT_WRONG_USAGE", body = ErrorBody),
    ))]
pub async fn import_custom(
    State(state): State<ApiState>,
    Auth(principal): Auth,
    Path(app): Path<String>,
    Query(wait): Query<WaitParams>,
    Json(body): Json<ImportCustomRequest>,
) -> Result<(StatusCode, axum::Json<CertificateDetail>), ApiError> {
    let wait = wait.parse()?;
    let app = apps::load(&state, &principal, &app).await?;
    let hostname = Hostname::parse(&body.hostname)?;
    refuse_reserved(&state, &hostname)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let bundle = certplane_import::validate(&body.fullchain, &body.private_key, &hostname, now)
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                e.code(),
                e.message.clone(),
                e.remediation(),
            )
        })?;
    let key_type = bundle.key_type.as_str();
    let key_pem = zeroize::Zeroizing::new(key_pem(bundle.key()));
    let sealed = state
        .keys
        .seal(
            key_pem.as_bytes(),
            &sealing_context(&hostname, CertSource::Custom, key_type),
        )
        .map_err(|e| {
            tracing::error!(error = %e, "sealing a private key failed");
            ApiError::internal()
        })?;
    let warnings: Vec<serde_json::Value> = bundle
        .warnings
        .iter()
        .map(|w| serde_json::json!({"code": w.kind.code(), "message": w.message}))
        .collect();
    let cert = NewCertificate {
        source: CertSource::Custom,
        key_type: key_type.to_owned(),
        chain_pem: bundle.chain_pem(),
        key_id: sealed.key_id,
        key_sealed: sealed.blob,
        not_before: bundle.not_before,
        not_after: bundle.not_after,
        issuer: bundle.issuer.clone(),
        fingerprint: bundle.fingerprint.clone(),
        warnings: serde_json::Value::from(warnings).to_string(),
    };
    let (record, created) = match state.store.import_custom(app.id, &hostname, &cert).await {
        Err(StoreError::HostnameTaken) => {
            contest(&state, &principal, &app, &hostname).await?;
            state.store.import_custom(app.id, &hostname, &cert).await?
        }
        other => other?,
    };
    tracing::info!(%hostname, app = %app.name, fingerprint = %bundle.fingerprint, "custom certificate imported");
    propagate(&state, &hostname, wait).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(detail(&state, &principal, &app, &record).await?),
    ))
}

fn key_pem(key: &rustls_pki_types::PrivateKeyDer<'_>) -> String {
    let label = match key {
        rustls_pki_types::PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        rustls_pki_types::PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    certplane_import::pem(label, key.secret_der())
}

/// Another app holds `hostname`. A claim nobody proved must not block the name's owner: when
/// DNS proves now that the name belongs to `app`, an unverified claim gives way. Otherwise
/// `HOSTNAME_TAKEN`, saying how to prove it.
async fn contest(
    state: &ApiState,
    principal: &Principal,
    app: &App,
    hostname: &Hostname,
) -> Result<(), ApiError> {
    // The DNS check only when it can change the outcome: a verified holder keeps the name.
    if state.store.holder_verified(hostname).await? == Some(false)
        && state.verifier.proves(&principal.org, app, hostname).await
        && state.store.release_unverified(hostname, app.id).await?
    {
        return Ok(());
    }
    let record = state.platform.ownership_record_name(hostname.base());
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "HOSTNAME_TAKEN",
        "this hostname is already added to another app",
        format!(
            "Remove it from the other app first (`certplane certs remove {hostname} -a OTHER_APP`). If the name is yours and the other claim is not yours, set the TXT record {record} = \"{}\" and add it again: a claim that never proved ownership gives way to one that does.",
            certplane_domain::app_ownership_value(&app.token)
        ),
    ))
}

fn refuse_reserved(state: &ApiState, hostname: &Hostname) -> Result<(), ApiError> {
    for zone in [&state.platform.apps_domain, &state.platform.challenge_zone] {
        if hostname.is_within(zone.as_str()) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "HOSTNAME_RESERVED",
                format!("{hostname} is inside the platform's own zone {zone}"),
                "Add a hostname of a domain you registered; the platform's own names cannot be claimed.",
            ));
        }
    }
    Ok(())
}

/// One hostname with its certificates, status and the DNS records to set.
#[utoipa::path(get, path = "/v1/apps/{app}/certificates/{hostname}", tag = "certificates",
    params(
        ("app" = String, Path, description = "App name"),
        ("hostname" = String, Path, description = "Percent-encoded hostname (`*` as %2A)"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = CertificateDetail),
        (status = 404, description = "APP_NOT_FOUND, CERTIFICATE_NOT_FOUND", body = ErrorBody),
    ))]
pub async fn get_certificate(
    State(state): State<ApiState>,
    Auth(principal): Auth,
    Path((app, hostname)): Path<(String, String)>,
) -> Result<axum::Json<CertificateDetail>, ApiError> {
    let (app, record) = load(&state, &principal, &app, &hostname).await?;
    Ok(axum::Json(detail(&state, &principal, &app, &record).await?))
}

/// Runs the ownership and DNS checks for a hostname now and stores the result: the detail with
/// `dns_records` (what was found), `validation` and `validation_errors`.
#[utoipa::path(post, path = "/v1/apps/{app}/certificates/{hostname}/check", tag = "certificates",
    params(
        ("app" = String, Path, description = "App name"),
        ("hostname" = String, Path, description = "Percent-encoded hostname (`*` as %2A)"),
        WaitParams,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = CertificateDetail),
        (status = 404, description = "APP_NOT_FOUND, CERTIFICATE_NOT_FOUND", body = ErrorBody),
        (status = 504, description = "PROPAGATION_TIMEOUT (with wait=propagated)", body = ErrorBody),
    ))]
pub async fn check_certificate(
    State(state): State<ApiState>,
    Auth(principal): Auth,
    Path((app, hostname)): Path<(String, String)>,
    Query(wait): Query<WaitParams>,
) -> Result<axum::Json<CertificateDetail>, ApiError> {
    let wait = wait.parse()?;
    let (app, record) = load(&state, &principal, &app, &hostname).await?;
    let (record, _) = state
        .verifier
        .check_now(&principal.org, &app, &record)
        .await?
        .ok_or_else(|| ApiError::certificate_not_found(app.name.as_str(), &hostname))?;
    // A customer's check after fixing records starts issuance now, back-off forgotten (a CA
    // rate limit and the platform's budget of the CA's limits still hold).
    if record.acme_requested && record.ownership_verified {
        state.store.wake_acme(&record.hostname, true).await?;
        if let Some(acme) = &state.acme {
            acme.wake.notify_one();
        }
    }
    propagate(&state, &record.hostname, wait).await?;
    Ok(axum::Json(detail(&state, &principal, &app, &record).await?))
}

/// Removes the hostname and every certificate on it.
#[utoipa::path(delete, path = "/v1/apps/{app}/certificates/{hostname}", tag = "certificates",
    params(
        ("app" = String, Path, description = "App name"),
        ("hostname" = String, Path, description = "Percent-encoded hostname (`*` as %2A)"),
        WaitParams,
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "APP_NOT_FOUND, CERTIFICATE_NOT_FOUND", body = ErrorBody),
    ))]
pub async fn delete_certificate(
    State(state): State<ApiState>,
    Auth(principal): Auth,
    Path((app, hostname)): Path<(String, String)>,
    Query(wait): Query<WaitParams>,
) -> Result<Response, ApiError> {
    delete(&state, &principal, &app, &hostname, DeleteScope::All, &wait).await
}

/// Removes the ACME certificates and requirement; a custom certificate stays. When nothing is
/// left the hostname is released and the answer is 204.
#[utoipa::path(delete, path = "/v1/apps/{app}/certificates/{hostname}/acme", tag = "certificates",
    params(
        ("app" = String, Path, description = "App name"),
        ("hostname" = String, Path, description = "Percent-encoded hostname (`*` as %2A)"),
        WaitParams,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What is left", body = CertificateDetail),
        (status = 204, description = "Nothing was left: the hostname is released"),
        (status = 404, description = "APP_NOT_FOUND, CERTIFICATE_NOT_FOUND, ACME_NOT_REQUESTED", body = ErrorBody),
    ))]
pub async fn delete_acme(
    State(state): State<ApiState>,
    Auth(principal): Auth,
    Path((app, hostname)): Path<(String, String)>,
    Query(wait): Query<WaitParams>,
) -> Result<Response, ApiError> {
    delete(
        &state,
        &principal,
        &app,
        &hostname,
        DeleteScope::Acme,
        &wait,
    )
    .await
}

/// Removes the custom certificate; ACME stays. When nothing is left the hostname is released
/// and the answer is 204.
#[utoipa::path(delete, path = "/v1/apps/{app}/certificates/{hostname}/custom", tag = "certificates",
    params(
        ("app" = String, Path, description = "App name"),
        ("hostname" = String, Path, description = "Percent-encoded hostname (`*` as %2A)"),
        WaitParams,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What is left", body = CertificateDetail),
        (status = 204, description = "Nothing was left: the hostname is released"),
        (status = 404, description = "APP_NOT_FOUND, CERTIFICATE_NOT_FOUND, CUSTOM_CERTIFICATE_NOT_FOUND", body = ErrorBody),
    ))]
pub async fn delete_custom(
    State(state): State<ApiState>,
    Auth(principal): Auth,
    Path((app, hostname)): Path<(String, String)>,
    Query(wait): Query<WaitParams>,
) -> Result<Response, ApiError> {
    delete(
        &state,
        &principal,
        &app,
        &hostname,
        DeleteScope::Custom,
        &wait,
    )
    .await
}

async fn delete(
    state: &ApiState,
    principal: &Principal,
    app: &str,
    hostname: &str,
    scope: DeleteScope,
    wait: &WaitParams,
) -> Result<Response, ApiError> {
    let wait = wait.parse()?;
    let (app, record) = load(state, principal, app, hostname).await?;
    let outcome = state
        .store
        .delete_hostname(app.id, &record.hostname, scope)
        .await?;
    if matches!(outcome, DeleteOutcome::Removed | DeleteOutcome::Updated(_)) {
        propagate(state, &record.hostname, wait).await?;
    }
    match outcome {
        DeleteOutcome::NotFound => {
            Err(ApiError::certificate_not_found(app.name.as_str(), hostname))
        }
        DeleteOutcome::NothingToDelete => Err(match scope {
            DeleteScope::Custom => ApiError::new(
                StatusCode::NOT_FOUND,
                "CUSTOM_CERTIFICATE_NOT_FOUND",
                format!("{} has no custom certificate", record.hostname),
                "Nothing to remove; `certplane certs show HOST` lists what the hostname has.",
            ),
            _ => ApiError::new(
                StatusCode::NOT_FOUND,
                "ACME_NOT_REQUESTED",
                format!("{} has no ACME certificate or request", record.hostname),
                "Nothing to remove; `certplane certs show HOST` lists what the hostname has.",
            ),
        }),
        DeleteOutcome::Removed => {
            tracing::info!(hostname = %record.hostname, app = %app.name, ?scope, "hostname removed");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        DeleteOutcome::Updated(record) => {
            Ok(axum::Json(detail(state, principal, &app, &record).await?).into_response())
        }
    }
}
