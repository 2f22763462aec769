//! Propagation on the control plane: the feed of changes to edges, and what each edge serves.
//!
//! [`Propagation::run_feed`] follows the store's propagation log (woken at once by
//! [`Propagation::poke`] after a local change, and every [`POLL`] for changes other control
//! planes made) and broadcasts each changed hostname's new state, read once for all edge streams.
//! Each stream (`routes::edges::stream`) first sends a snapshot or catches up from the store,
//! then relays the broadcast, sealing private keys under its own stream key; a stream that falls
//! behind the broadcast catches up from the store again. So every edge gets every change in log
//! order, and only a hostname's newest state when several changes to it queue up.
//!
//! The registry keeps, per edge, the revision it acknowledged and when it was last heard from;
//! it is written through to the store so `GET /v1/edges` and other control planes see it.
//! [`Propagation::wait_for`] is `?wait=propagated`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certplane_events::transport::StreamKey;
use certplane_events::{CertSource, EdgeApp, EdgeCertificate, EdgeChallenge, EdgeHost};
use certplane_secrets::{MasterKeys, Sealed};
use certplane_store::{ChallengeKind, EdgeHostRecord, Store, StoreError};
use tokio::sync::{Notify, broadcast, watch};
use zeroize::Zeroizing;

/// How often the feed looks for changes made by other control planes.
pub const POLL: Duration = Duration::from_millis(100);
/// Log entries read per query.
pub(crate) const BATCH: u32 = 500;
/// An edge another control plane heard from this recently counts as live.
pub const LIVE_WITHIN_MS: i64 = 30_000;
/// Changes kept in the broadcast for streams that are momentarily slow.
const BROADCAST_DEPTH: usize = 4096;

/// One entry of the log with the hostname's newest state, keys in clear (in memory only;
/// sealed per stream when sent).
#[derive(Debug)]
pub struct Change {
    pub revision: i64,
    pub hostname: String,
    pub host: Option<Arc<PlainHost>>,
}

/// What the feed broadcasts.
#[derive(Debug)]
pub enum FeedItem {
    Change(Change),
    /// The log was compacted past entries the feed had not read: every stream must send a
    /// fresh snapshot.
    Resync,
}

/// Why the feed or a stream cannot go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PropagationError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored key does not open on this control plane (its master key is missing here).
    /// Edges keep their last good state rather than lose the certificate.
    #[error(
        "the private key of a certificate of {hostname} does not open on this control plane: {reason}"
    )]
    KeyUnavailable { hostname: String, reason: String },
}

/// What edges serve for a hostname, before sealing.
pub struct PlainHost {
    host: EdgeHost,
    keys: Vec<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for PlainHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainHost")
            .field("hostname", &self.host.hostname)
            .finish_non_exhaustive()
    }
}

impl PlainHost {
    /// The state to send on one stream: each private key sealed under the stream's key.
    pub fn sealed(
        &self,
        key: &StreamKey,
    ) -> Result<EdgeHost, certplane_events::transport::TransportError> {
        let mut host = self.host.clone();
        for (cert, plain) in host.certificates.iter_mut().zip(&self.keys) {
            let aad = EdgeCertificate::sealing_context(&host.hostname, cert.source, &cert.key_type);
            cert.key_sealed = key.seal(plain, &aad)?;
        }
        Ok(host)
    }
}

/// An edge as this control plane knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeView {
    pub id: String,
    pub revision: i64,
    /// Unix milliseconds.
    pub last_seen_ms: i64,
    /// Streams open to this control plane now.
    pub connected: bool,
    /// Whether it counts for `?wait=propagated`.
    pub live: bool,
}

#[derive(Debug, Default)]
struct Known {
    revision: i64,
    /// The edge's own last contact: opening a stream or an ack (pings the control plane
    /// writes do not count: they succeed into a dead peer's socket buffer).
    last_seen_ms: i64,
    streams: usize,
    /// It said it is stopping; it counts again at its next contact.
    left: bool,
}

/// The feed and the edge registry of one control plane.
pub struct Propagation {
    store: Arc<dyn Store>,
    keys: Arc<MasterKeys>,
    feed: broadcast::Sender<Arc<FeedItem>>,
    wake: Notify,
    edges: Mutex<HashMap<String, Known>>,
    acked: watch::Sender<u64>,
    stopping: watch::Sender<bool>,
    /// The store's edge rows, read at most every [`POLL`]: what other control planes heard
    /// changes no faster than that matters, and the certificate detail asks on every GET.
    stored: Mutex<Option<(tokio::time::Instant, Vec<certplane_store::EdgeRecord>)>>,
}

impl std::fmt::Debug for Propagation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Propagation").finish_non_exhaustive()
    }
}

impl Propagation {
    pub fn new(store: Arc<dyn Store>, keys: Arc<MasterKeys>) -> Arc<Self> {
        let (feed, _) = broadcast::channel(BROADCAST_DEPTH);
        let (acked, _) = watch::channel(0);
        let (stopping, _) = watch::channel(false);
        Arc::new(Self {
            stopping,
            stored: Mutex::new(None),
            store,
            keys,
            feed,
            wake: Notify::new(),
            edges: Mutex::new(HashMap::new()),
            acked,
        })
    }

    /// Ends every edge stream (the server is shutting down: open streams would keep its
    /// graceful shutdown waiting forever). Edges reconnect to another control plane or later.
    pub fn shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once [`Propagation::shutdown`] was called.
    pub async fn stopping(&self) {
        let mut stopping = self.stopping.subscribe();
        let _ = stopping.wait_for(|s| *s).await;
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Something was committed to the propagation log: look now rather than at the next poll.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedItem>> {
        self.feed.subscribe()
    }

    /// Follows the log and broadcasts changes until `stop` turns true.
    pub async fn run_feed(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut head = loop {
            match self.store.latest_revision().await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::error!(error = %e, "propagation feed cannot read the log; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        };
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = self.advance(&mut head).await {
                tracing::error!(error = %e, "propagation feed is stuck; edges keep what they serve");
            }
        }
    }

    /// Reads and broadcasts everything after `head`.
    async fn advance(&self, head: &mut i64) -> Result<(), PropagationError> {
        loop {
            let changes = self.changes_after(*head).await?;
            // Entries after `head` compacted away before they were read: only a snapshot is
            // sure to be whole.
            if self.store.compacted_through().await? > *head {
                *head = self.store.latest_revision().await?;
                tracing::warn!(
                    head = *head,
                    "the log was compacted past the feed; edges take snapshots"
                );
                let _ = self.feed.send(Arc::new(FeedItem::Resync));
                continue;
            }
            let Some(last) = changes.last() else {
                return Ok(());
            };
            let last = last.revision;
            for change in changes {
                // No receivers is fine: no edge is connected.
                let _ = self.feed.send(Arc::new(FeedItem::Change(change)));
            }
            *head = last;
        }
    }

    /// The entries after `after` (one batch), in log order, each with its hostname's newest
    /// state (read once per hostname). Every entry is kept, not only a hostname's last: an edge
    /// that has applied the entry at revision N has then applied every change up to N.
    pub async fn changes_after(&self, after: i64) -> Result<Vec<Change>, PropagationError> {
        let entries = self.store.changes_since(after, BATCH).await?;
        let mut states: HashMap<&str, Option<Arc<PlainHost>>> = HashMap::new();
        for (_, hostname) in &entries {
            if states.contains_key(hostname.as_str()) {
                continue;
            }
            let state = match self.store.edge_host(hostname).await {
                Ok(Some(record)) => Some(Arc::new(self.plain(record)?)),
                Ok(None) => None,
                Err(StoreError::Corrupt(reason)) => {
                    // One bad row must not stop every later change: edges stop serving it.
                    tracing::error!(%hostname, reason, "unreadable hostname state; edges drop it");
                    None
                }
                Err(e) => return Err(e.into()),
            };
            states.insert(hostname.as_str(), state);
        }
        Ok(entries
            .iter()
            .map(|(revision, hostname)| Change {
                revision: *revision,
                hostname: hostname.as_str().to_owned(),
                host: states.get(hostname.as_str()).cloned().flatten(),
            })
            .collect())
    }

    /// Builds the state to send from a store record. The app is named only when its ownership
    /// of the name is verified: an unproven claim never routes traffic.
    pub fn plain(&self, record: EdgeHostRecord) -> Result<PlainHost, PropagationError> {
        let hostname = record.hostname.as_str().to_owned();
        let mut certificates = Vec::new();
        let mut keys = Vec::new();
        for c in &record.certificates {
            let opened = self.keys.open(
                &Sealed {
                    key_id: c.cert.key_id.clone(),
                    blob: c.cert.key_sealed.clone(),
                },
                &c.sealing_context(),
            );
            let plain = opened.map_err(|e| PropagationError::KeyUnavailable {
                hostname: hostname.clone(),
                reason: e.to_string(),
            })?;
            certificates.push(EdgeCertificate {
                source: match c.cert.source {
                    certplane_store::CertSource::Acme => CertSource::Acme,
                    certplane_store::CertSource::Custom => CertSource::Custom,
                },
                key_type: c.cert.key_type.clone(),
                chain_pem: c.cert.chain_pem.clone(),
                key_sealed: String::new(),
                not_before: c.cert.not_before,
                not_after: c.cert.not_after,
                fingerprint: c.cert.fingerprint.clone(),
            });
            keys.push(plain);
        }
        let challenges = record
            .challenges
            .iter()
            .map(|c| match c.kind {
                ChallengeKind::Http01 => EdgeChallenge::Http01 {
                    token: c.token.clone(),
                    key_authorization: c.key_authorization.clone(),
                },
                ChallengeKind::TlsAlpn01 => EdgeChallenge::TlsAlpn01 {
                    key_authorization: c.key_authorization.clone(),
                },
            })
            .collect();
        let app = record
            .app
            .as_ref()
            .filter(|a| a.ownership_verified)
            .map(|a| EdgeApp {
                name: a.name.as_str().to_owned(),
                backends: a.backends.iter().map(|b| b.as_str().to_owned()).collect(),
            });
        Ok(PlainHost {
            host: EdgeHost {
                hostname,
                app,
                certificates,
                challenges,
                changed_at_ms: unix_ms(),
            },
            keys,
        })
    }

    /// An edge opened a stream (`revision`: what it said it serves, 0 for none).
    pub async fn connected(&self, id: &str, revision: i64) {
        let now = unix_ms();
        {
            let mut edges = lock(&self.edges);
            let known = edges.entry(id.to_owned()).or_default();
            known.streams += 1;
            known.revision = revision;
            known.last_seen_ms = now;
            known.left = false;
        }
        self.persist(id, revision, now).await;
        self.acked.send_modify(|v| *v += 1);
    }

    /// An edge's stream closed.
    pub fn disconnected(&self, id: &str) {
        if let Some(known) = lock(&self.edges).get_mut(id) {
            known.streams = known.streams.saturating_sub(1);
        }
        self.acked.send_modify(|v| *v += 1);
    }

    /// An edge serves `revision` now (`leaving`: and is stopping).
    pub async fn ack(&self, id: &str, revision: i64, leaving: bool) {
        let now = unix_ms();
        {
            let mut edges = lock(&self.edges);
            let known = edges.entry(id.to_owned()).or_default();
            known.revision = revision;
            known.last_seen_ms = now;
            known.left = leaving;
        }
        self.acked.send_modify(|v| *v += 1);
        self.persist(id, revision, now).await;
    }

    async fn persist(&self, id: &str, revision: i64, now_ms: i64) {
        if let Err(e) = self.store.record_edge(id, revision, now_ms / 1000).await {
            tracing::warn!(edge = id, error = %e, "cannot record the edge's revision");
        }
    }

    async fn stored_edges(&self) -> Result<Vec<certplane_store::EdgeRecord>, StoreError> {
        if let Some((at, edges)) = &*lock(&self.stored)
            && at.elapsed() < POLL
        {
            return Ok(edges.clone());
        }
        let edges = self.store.edges().await?;
        *lock(&self.stored) = Some((tokio::time::Instant::now(), edges.clone()));
        Ok(edges)
    }

    /// Every edge known here or to the store.
    pub async fn edges(&self) -> Result<Vec<EdgeView>, StoreError> {
        let stored = self.stored_edges().await?;
        let now = unix_ms();
        let local = lock(&self.edges);
        let mut views: HashMap<String, EdgeView> = stored
            .into_iter()
            .map(|e| {
                let last_seen_ms = e.last_seen * 1000;
                (
                    e.id.clone(),
                    EdgeView {
                        id: e.id,
                        revision: e.revision,
                        last_seen_ms,
                        connected: false,
                        live: now - last_seen_ms <= LIVE_WITHIN_MS,
                    },
                )
            })
            .collect();
        for (id, known) in local.iter() {
            let view = views.entry(id.clone()).or_insert_with(|| EdgeView {
                id: id.clone(),
                revision: known.revision,
                last_seen_ms: known.last_seen_ms,
                connected: false,
                live: false,
            });
            view.connected = known.streams > 0;
            // The store has what other control planes heard; the newer contact wins.
            if known.last_seen_ms >= view.last_seen_ms {
                view.revision = known.revision;
                view.last_seen_ms = known.last_seen_ms;
            }
            // Live: heard from lately, wherever. An edge whose stream broke is still serving
            // (its old state) and acks every 10 s while it reconnects, so it is waited for; one
            // that said it is leaving is not, here.
            view.live = !known.left && now - view.last_seen_ms <= LIVE_WITHIN_MS;
        }
        let mut out: Vec<EdgeView> = views.into_values().collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Waits until every live edge serves `revision` or later. On timeout, the edges still
    /// behind.
    pub async fn wait_for(
        &self,
        revision: i64,
        timeout: Duration,
    ) -> Result<Result<(), Vec<EdgeView>>, StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut acked = self.acked.subscribe();
        loop {
            acked.borrow_and_update();
            let behind: Vec<EdgeView> = self
                .edges()
                .await?
                .into_iter()
                .filter(|e| e.live && e.revision < revision)
                .collect();
            if behind.is_empty() {
                return Ok(Ok(()));
            }
            tokio::select! {
                _ = acked.changed() => {}
                // Acks that reach other control planes arrive through the store.
                _ = tokio::time::sleep(POLL) => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Err(behind)),
                _ = self.stopping() => return Ok(Err(behind)),
            }
        }
    }

    /// Whether every live edge serves `revision`: (edges live, edges serving it).
    pub async fn serving(&self, revision: i64) -> Result<(usize, usize), StoreError> {
        let live: Vec<EdgeView> = self.edges().await?.into_iter().filter(|e| e.live).collect();
        let serving = live.iter().filter(|e| e.revision >= revision).count();
        Ok((live.len(), serving))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock leaves plain data behind; keep going with it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
