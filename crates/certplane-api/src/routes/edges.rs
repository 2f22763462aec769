//! `/v1/edges…`: the event stream edges follow, their acknowledgements, the list of edges
//! (admin) and edge tokens (admin).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use certplane_api_types::{CreatedEdgeToken, EdgeList, EdgeStatus, ErrorBody};
use certplane_domain::ApiToken;
use certplane_events::transport::{StreamKey, server_agree};
use certplane_events::{EDGE_KEY_HEADER, EdgeEvent};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use utoipa::IntoParams;

use crate::auth::{Admin, EdgeAuth};
use crate::extract::{Json, Path, Query};
use crate::present::timestamp;
use crate::propagation::{BATCH, Change, FeedItem, Propagation};
use crate::{ApiError, ApiState};

/// A stream with nothing to send says so this often, so edges notice a dead stream.
pub const PING_EVERY: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// The edge's id: 1 to 128 of `A-Z a-z 0-9 . _ : -`.
    edge_id: String,
    /// The revision the edge serves; the changes after it follow (or a full snapshot when the
    /// log no longer reaches back that far). Absent: a full snapshot.
    after: Option<i64>,
    /// The `log_id` of the `hello` the edge got `after` from; another log means a snapshot.
    log_id: Option<String>,
}

/// The edge event stream: newline-delimited JSON events (`certplane-events`), a `hello`, then a
/// snapshot or the changes after `after`, then every change as it is committed, and a `ping`
/// every 15 s when idle. Requires the `x-certplane-edge-key` header (the edge's X25519 public
/// key, base64): private keys in the stream are sealed under the key agreed with it.
#[utoipa::path(get, path = "/v1/edges/stream", tag = "edges",
    params(StreamParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The event stream (application/x-ndjson)", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "EDGE_KEY_MISSING, EDGE_KEY_INVALID", body = ErrorBody),
        (status = 403, description = "EDGE_ONLY: not an edge or admin token", body = ErrorBody),
        (status = 422, description = "EDGE_ID_INVALID", body = ErrorBody),
    ))]
pub async fn stream(
    State(state): State<ApiState>,
    edge: EdgeAuth,
    Query(params): Query<StreamParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let edge_id = valid_edge_id(&params.edge_id)?;
    tracing::info!(edge = %edge_id, token = ?edge.0.kind, after = ?params.after, "edge stream opened");
    let edge_key = headers
        .get(EDGE_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "EDGE_KEY_MISSING",
                "the stream request has no x-certplane-edge-key header",
                "Send the edge's ephemeral X25519 public key (base64) in x-certplane-edge-key; `certplane edge` does.",
            )
        })?;
    let (key, server_key) = server_agree(edge_key).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "EDGE_KEY_INVALID",
            e.to_string(),
            "Send a fresh X25519 public key: 32 bytes, base64.",
        )
    })?;
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let propagation = state.propagation.clone();
    tokio::spawn(async move {
        let out = Out { tx, key };
        let result = tokio::select! {
            r = relay(&propagation, &out, &edge_id, server_key, params.after, params.log_id) => r,
            _ = propagation.stopping() => Ok(()),
        };
        propagation.disconnected(&edge_id);
        match result {
            Ok(()) | Err(RelayError::Gone) => {
                tracing::info!(edge = %edge_id, "edge stream closed")
            }
            Err(e) => tracing::warn!(edge = %edge_id, error = %e, "edge stream ended"),
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    }));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

fn valid_edge_id(id: &str) -> Result<String, ApiError> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(id.to_owned())
    } else {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "EDGE_ID_INVALID",
            format!("{id:?} is not an edge id"),
            "Use 1 to 128 characters of letters, digits, '.', '_', ':' and '-'.",
        ))
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("the edge went away")]
    Gone,
    #[error("store: {0}")]
    Store(#[from] certplane_store::StoreError),
    #[error(transparent)]
    Propagation(#[from] crate::propagation::PropagationError),
    #[error("sealing: {0}")]
    Seal(#[from] certplane_events::transport::TransportError),
}

/// One stream's sending side.
struct Out {
    tx: mpsc::Sender<Bytes>,
    key: StreamKey,
}

impl Out {
    async fn send(&self, event: &EdgeEvent) -> Result<(), RelayError> {
        let mut line = serde_json::to_vec(event).map_err(|_| RelayError::Gone)?;
        line.push(b'\n');
        self.tx
            .send(Bytes::from(line))
            .await
            .map_err(|_| RelayError::Gone)
    }

    async fn change(&self, change: &Change) -> Result<(), RelayError> {
        let event = match &change.host {
            Some(plain) => EdgeEvent::Host {
                revision: change.revision,
                host: plain.sealed(&self.key)?,
            },
            None => EdgeEvent::Remove {
                revision: change.revision,
                hostname: change.hostname.clone(),
            },
        };
        self.send(&event).await
    }
}

async fn relay(
    propagation: &Arc<Propagation>,
    out: &Out,
    edge_id: &str,
    server_key: String,
    after: Option<i64>,
    edge_log: Option<String>,
) -> Result<(), RelayError> {
    let store = propagation.store();
    // Subscribe before reading the store: whatever the feed sends from now on is either read
    // below or received here, so nothing falls between the two.
    let mut feed = propagation.subscribe();
    let log_id = store.log_id().await?;
    let latest = store.latest_revision().await?;
    // Revision numbers compare only within one log: after a restore from backup the same
    // number means something else.
    let resumable = match (after, edge_log) {
        (Some(a), Some(l)) if l == log_id => a >= store.compacted_through().await? && a <= latest,
        _ => false,
    };
    let registered = if resumable { after.unwrap_or(0) } else { 0 };
    propagation.connected(edge_id, registered).await;
    out.send(&EdgeEvent::Hello {
        edge_id: edge_id.to_owned(),
        server_key,
        snapshot: !resumable,
        log_id,
    })
    .await?;
    let from = match (after, resumable) {
        (Some(a), true) => a,
        _ => snapshot(propagation, out, latest).await?,
    };
    let mut served = follow_from(propagation, out, from).await?;
    loop {
        tokio::select! {
            received = feed.recv() => match received {
                Ok(item) => match item.as_ref() {
                    FeedItem::Change(change) => {
                        if change.revision > served {
                            out.change(change).await?;
                            served = change.revision;
                        }
                    }
                    FeedItem::Resync => {
                        let from = snapshot(propagation, out, store.latest_revision().await?).await?;
                        served = follow_from(propagation, out, from).await?;
                    }
                },
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    served = follow_from(propagation, out, served).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = tokio::time::sleep(PING_EVERY) => {
                out.send(&EdgeEvent::Ping { revision: served }).await?;
            }
            _ = out.tx.closed() => return Err(RelayError::Gone),
        }
    }
}

/// Sends the changes after `from` from the store, and a new snapshot when compaction removed
/// some of them before they were read; returns the last revision sent.
async fn follow_from(
    propagation: &Arc<Propagation>,
    out: &Out,
    mut from: i64,
) -> Result<i64, RelayError> {
    let store = propagation.store();
    loop {
        let served = catch_up(propagation, out, from).await?;
        if store.compacted_through().await? <= from {
            return Ok(served);
        }
        from = snapshot(propagation, out, store.latest_revision().await?).await?;
    }
}

/// Sends every hostname edges serve, as of `revision` or later; returns `revision`.
async fn snapshot(
    propagation: &Arc<Propagation>,
    out: &Out,
    revision: i64,
) -> Result<i64, RelayError> {
    let store = propagation.store();
    out.send(&EdgeEvent::SnapshotBegin { revision }).await?;
    let mut after: Option<String> = None;
    loop {
        let page = store.edge_hosts(after.as_deref(), BATCH).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.hostname.as_str().to_owned());
        let full = page.len() as u32 == BATCH;
        for record in page {
            let plain = propagation.plain(record)?;
            out.send(&EdgeEvent::Host {
                revision,
                host: plain.sealed(&out.key)?,
            })
            .await?;
        }
        if !full {
            break;
        }
    }
    out.send(&EdgeEvent::SnapshotEnd { revision }).await?;
    Ok(revision)
}

/// Sends the changes after `served` from the store; returns the last revision sent.
async fn catch_up(
    propagation: &Arc<Propagation>,
    out: &Out,
    mut served: i64,
) -> Result<i64, RelayError> {
    loop {
        let changes = propagation.changes_after(served).await?;
        if changes.is_empty() {
            return Ok(served);
        }
        for change in &changes {
            out.change(change).await?;
            served = change.revision;
        }
    }
}

/// An edge serves `revision` now.
#[utoipa::path(post, path = "/v1/edges/{id}/ack", tag = "edges",
    params(("id" = String, Path, description = "The edge's id")),
    request_body = EdgeAckBody,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Recorded"),
        (status = 403, description = "EDGE_ONLY", body = ErrorBody),
        (status = 422, description = "EDGE_ID_INVALID, REVISION_OUT_OF_RANGE", body = ErrorBody),
    ))]
pub async fn ack(
    State(state): State<ApiState>,
    _edge: EdgeAuth,
    Path(id): Path<String>,
    Json(body): Json<EdgeAckBody>,
) -> Result<StatusCode, ApiError> {
    let id = valid_edge_id(&id)?;
    let latest = state.store.latest_revision().await?;
    if !(0..=latest).contains(&body.revision) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "REVISION_OUT_OF_RANGE",
            format!(
                "revision {} is not in the log (0 to {latest})",
                body.revision
            ),
            "Acknowledge the revision of the last event applied; after a control-plane restore, reconnect for a snapshot.",
        ));
    }
    state
        .propagation
        .ack(&id, body.revision, body.leaving)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `{"revision": N, "leaving": false}` (the wire form of `certplane_events::EdgeAck`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EdgeAckBody {
    pub revision: i64,
    /// The edge is stopping: `?wait=propagated` stops waiting for it.
    #[serde(default)]
    pub leaving: bool,
}

/// Each edge with the revision it serves and when it was last heard from.
#[utoipa::path(get, path = "/v1/edges", tag = "edges",
    security(("bearer" = [])),
    responses(
        (status = 200, body = EdgeList),
        (status = 403, description = "ADMIN_ONLY", body = ErrorBody),
    ))]
pub async fn list_edges(
    State(state): State<ApiState>,
    _admin: Admin,
) -> Result<axum::Json<EdgeList>, ApiError> {
    let revision = state.store.latest_revision().await?;
    let edges = state
        .propagation
        .edges()
        .await?
        .into_iter()
        .map(|e| EdgeStatus {
            id: e.id,
            revision: e.revision,
            last_seen: timestamp(e.last_seen_ms / 1000),
            connected: e.connected,
            live: e.live,
        })
        .collect();
    Ok(axum::Json(EdgeList { revision, edges }))
}

/// Creates an edge token for `certplane edge --token`, shown in this answer only. It follows
/// the edge stream and can call nothing else.
#[utoipa::path(post, path = "/v1/edges/tokens", tag = "edges",
    security(("bearer" = [])),
    responses(
        (status = 201, body = CreatedEdgeToken),
        (status = 403, description = "ADMIN_ONLY", body = ErrorBody),
    ))]
pub async fn create_edge_token(
    State(state): State<ApiState>,
    Admin(admin): Admin,
) -> Result<(StatusCode, axum::Json<CreatedEdgeToken>), ApiError> {
    let token = ApiToken::generate();
    state.store.create_edge_token(&token.hash()).await?;
    tracing::info!(by = %admin.org.slug, "edge token created");
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedEdgeToken {
            token: token.expose().to_owned(),
        }),
    ))
}
