//! Following the control plane: the event stream in, published snapshots and acks out.
//!
//! [`Follower::run`] keeps one stream open (`GET /v1/edges/stream`, newline-delimited
//! [`EdgeEvent`]s). The first connection asks for a full snapshot; after a break the follower
//! asks for the changes after the revision it serves, and the control plane answers with a new
//! snapshot instead when its log no longer reaches back that far. Events are applied in order
//! to a working copy; a snapshot is published only when it is complete, changes as soon as the
//! lines at hand are applied (one publication per batch). Each published revision is reported
//! with `POST /v1/edges/{id}/ack`, off the stream's path.
//!
//! A stream that breaks, or stays silent past [`STALE_AFTER`] (the control plane pings more
//! often), is opened again after a back-off doubling from [`BACKOFF_MIN`] to [`BACKOFF_MAX`],
//! with jitter. The follower never invents state: until its first snapshot it serves nothing.

use std::sync::Arc;
use std::time::Duration;

use certplane_events::transport::{EdgeKeyPair, StreamKey, TransportError};
use certplane_events::{EDGE_KEY_HEADER, EdgeAck, EdgeEvent};
use tokio::sync::watch;

use crate::SnapshotHandle;
use crate::metrics::Metrics;
use crate::state::{HostEntry, RouteTable, Snapshot};

/// A stream with no line for this long is taken as broken.
pub const STALE_AFTER: Duration = Duration::from_secs(45);
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Sent even without a new revision, so the control plane sees the edge alive.
const ACK_EVERY: Duration = Duration::from_secs(10);

/// Where and as whom to follow.
#[derive(Clone)]
pub struct FollowOptions {
    /// The control plane's base URL, e.g. `http://127.0.0.1:4000`.
    pub control_plane: String,
    /// An edge token or the admin token.
    pub token: String,
    pub edge_id: String,
}

impl std::fmt::Debug for FollowOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowOptions")
            .field("control_plane", &self.control_plane)
            .field("edge_id", &self.edge_id)
            .finish_non_exhaustive()
    }
}

/// Why one stream ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    #[error("cannot reach the control plane: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the control plane refused the stream ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("the stream sent a line that is not an event: {0}")]
    BadEvent(String),
    #[error("the stream did not start with hello")]
    NoHello,
    #[error("no line from the control plane for {0:?}")]
    Stale(Duration),
    #[error("the stream ended")]
    Ended,
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Follows one control plane and publishes what it sends.
#[derive(Debug)]
pub struct Follower {
    options: FollowOptions,
    client: reqwest::Client,
    snapshot: SnapshotHandle,
    metrics: Arc<Metrics>,
    /// The revision published (`None` until the first snapshot).
    served: watch::Sender<Option<i64>>,
    working: Snapshot,
    /// The control plane log the served revision belongs to.
    log_id: Option<String>,
    routes: RouteTable,
}

impl Follower {
    pub fn new(
        options: FollowOptions,
        snapshot: SnapshotHandle,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SyncError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        let (served, _) = watch::channel(None);
        Ok(Self {
            options,
            client,
            snapshot,
            metrics,
            served,
            working: Snapshot::default(),
            log_id: None,
            routes: RouteTable::default(),
        })
    }

    /// The revision published, `None` before the first snapshot. Changes on every publication.
    pub fn served(&self) -> watch::Receiver<Option<i64>> {
        self.served.subscribe()
    }

    /// Follows until `stop` turns true. Gives up only when the control plane refuses the
    /// token before the first snapshot (a configuration error no retry fixes).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), SyncError> {
        let mut acks = tokio::spawn(ack_loop(
            self.client.clone(),
            self.options.clone(),
            self.served.subscribe(),
            stop.clone(),
        ));
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                r = self.stream_once() => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            self.metrics.set_connected(false);
            match result {
                Ok(()) => {}
                Err(SyncError::Refused {
                    status: 401 | 403, ..
                }) if self.served.borrow().is_none() => {
                    stop_acks(acks).await;
                    return result;
                }
                Err(e) => {
                    tracing::warn!(error = %e, control_plane = %self.options.control_plane, "edge stream broke; reconnecting")
                }
            }
            // A stream that ran a while was healthy: start the back-off over.
            if started.elapsed() > Duration::from_secs(5) {
                backoff = BACKOFF_MIN;
            }
            let jitter = Duration::from_millis(rand_jitter(backoff.as_millis() as u64 / 4 + 1));
            tokio::select! {
                _ = tokio::time::sleep(backoff + jitter) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            self.metrics.reconnected();
        }
        // The ack loop sends a last "leaving" ack on stop; give it a moment.
        if tokio::time::timeout(Duration::from_secs(3), &mut acks)
            .await
            .is_err()
        {
            stop_acks(acks).await;
        }
        Ok(())
    }

    async fn stream_once(&mut self) -> Result<(), SyncError> {
        let pair = EdgeKeyPair::generate()?;
        let base = self.options.control_plane.trim_end_matches('/');
        let mut url = format!(
            "{base}/v1/edges/stream?edge_id={}",
            urlencode(&self.options.edge_id)
        );
        if let (Some(revision), Some(log_id)) = (*self.served.borrow(), &self.log_id) {
            url.push_str(&format!("&after={revision}&log_id={}", urlencode(log_id)));
        }
        let mut response = self
            .client
            .get(url)
            .bearer_auth(&self.options.token)
            .header(EDGE_KEY_HEADER, pair.public_base64())
            .send()
            .await?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            return Err(SyncError::Refused {
                status,
                body: body.chars().take(500).collect(),
            });
        }
        let mut buffer: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut key: Option<StreamKey> = None;
        let mut pair = Some(pair);
        let mut building: Option<Snapshot> = None;
        loop {
            let chunk = tokio::time::timeout(STALE_AFTER, response.chunk())
                .await
                .map_err(|_| SyncError::Stale(STALE_AFTER))??;
            let Some(chunk) = chunk else {
                return Err(SyncError::Ended);
            };
            buffer.extend_from_slice(&chunk);
            let mut changed = false;
            let mut lags = Vec::new();
            let mut consumed = 0;
            while let Some(end) = buffer[consumed..].iter().position(|b| *b == b'\n') {
                let line = &buffer[consumed..consumed + end];
                consumed += end + 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let event: EdgeEvent =
                    serde_json::from_slice(line).map_err(|e| SyncError::BadEvent(e.to_string()))?;
                match event {
                    EdgeEvent::Hello {
                        server_key, log_id, ..
                    } => {
                        let pair = pair.take().ok_or(SyncError::NoHello)?;
                        key = Some(pair.agree(&server_key)?);
                        self.log_id = Some(log_id);
                        self.metrics.set_connected(true);
                    }
                    EdgeEvent::SnapshotBegin { .. } => {
                        key.as_ref().ok_or(SyncError::NoHello)?;
                        building = Some(Snapshot::default());
                        self.routes.clear();
                    }
                    EdgeEvent::Host { revision, host } => {
                        let key = key.as_ref().ok_or(SyncError::NoHello)?;
                        let changed_at = host.changed_at_ms;
                        let (mut entry, errors) = HostEntry::build(host, key);
                        self.routes.share(&mut entry);
                        for e in errors {
                            tracing::warn!(error = %e, "part of a hostname's state is not served");
                        }
                        match building.as_mut() {
                            Some(snapshot) => snapshot.insert(entry),
                            None => {
                                self.working.insert(entry);
                                self.working.set_revision(revision);
                                lags.push(changed_at);
                                changed = true;
                            }
                        }
                    }
                    EdgeEvent::Remove { revision, hostname } => {
                        key.as_ref().ok_or(SyncError::NoHello)?;
                        match building.as_mut() {
                            Some(snapshot) => {
                                snapshot.remove(&hostname);
                            }
                            None => {
                                self.working.remove(&hostname);
                                self.working.set_revision(revision);
                                changed = true;
                            }
                        }
                    }
                    EdgeEvent::SnapshotEnd { revision } => {
                        let mut snapshot = building.take().ok_or(SyncError::NoHello)?;
                        snapshot.set_revision(revision);
                        self.working = snapshot;
                        self.metrics.snapshot_taken();
                        changed = true;
                    }
                    EdgeEvent::Ping { revision } => {
                        let caught_up = building.is_none()
                            && self.served.borrow().is_some()
                            && revision > self.working.revision();
                        if caught_up {
                            self.working.set_revision(revision);
                            changed = true;
                        }
                    }
                }
            }
            buffer.drain(..consumed);
            if changed {
                self.publish();
                let now = unix_ms();
                for at in lags {
                    self.metrics.lag(now - at);
                }
            }
        }
    }

    fn publish(&self) {
        let snapshot = Arc::new(self.working.clone());
        self.metrics.published(
            snapshot.revision(),
            snapshot.len(),
            snapshot.certificate_count(),
        );
        let revision = snapshot.revision();
        self.snapshot.store(snapshot);
        self.served.send_replace(Some(revision));
    }
}

async fn stop_acks(acks: tokio::task::JoinHandle<()>) {
    acks.abort();
    let _ = acks.await;
}

/// Reports the served revision: at once when it changes, and every [`ACK_EVERY`] anyway.
async fn ack_loop(
    client: reqwest::Client,
    options: FollowOptions,
    mut served: watch::Receiver<Option<i64>>,
    mut stop: watch::Receiver<bool>,
) {
    let base = options.control_plane.trim_end_matches('/').to_owned();
    let url = format!("{base}/v1/edges/{}/ack", urlencode(&options.edge_id));
    let send = |revision: i64, leaving: bool| {
        let request = client
            .post(&url)
            .bearer_auth(&options.token)
            .json(&EdgeAck { revision, leaving })
            .timeout(Duration::from_secs(if leaving { 2 } else { 5 }));
        async move {
            match request.send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::debug!(status = %r.status(), "ack refused"),
                Err(e) => tracing::debug!(error = %e, "ack failed"),
            }
        }
    };
    loop {
        let revision = *served.borrow_and_update();
        if let Some(revision) = revision {
            send(revision, false).await;
        }
        let stopping = tokio::select! {
            _ = served.changed() => false,
            _ = tokio::time::sleep(ACK_EVERY) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopping {
            // Say goodbye, so nobody waits for this edge to confirm later changes.
            let last = *served.borrow();
            if let Some(revision) = last {
                send(revision, true).await;
            }
            return;
        }
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A few random milliseconds below `bound`, so edges cut off together do not reconnect in step.
fn rand_jitter(bound: u64) -> u64 {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u64::from_le_bytes(bytes) % bound.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_ids_are_encoded_for_the_path() {
        assert_eq!(urlencode("edge-1.example_x"), "edge-1.example_x");
        assert_eq!(urlencode("host:443/x y"), "host%3A443%2Fx%20y");
    }
}
