//! The edge protocol.
//!
//! A control plane streams [`EdgeEvent`]s to each edge as newline-delimited JSON
//! (`GET /v1/edges/stream`, one event per line). The first line is [`EdgeEvent::Hello`]; then
//! either a full snapshot ([`EdgeEvent::SnapshotBegin`], one [`EdgeEvent::Host`] per hostname,
//! [`EdgeEvent::SnapshotEnd`]) or, for an edge resuming from a revision the log still holds,
//! nothing; then the changes in revision order, each a [`EdgeEvent::Host`] (the hostname's whole
//! new state) or an [`EdgeEvent::Remove`], and a [`EdgeEvent::Ping`] when nothing changed for a
//! while. An edge applies events in order, publishes a snapshot only at `SnapshotEnd` (so it
//! never serves half a snapshot) and reports the revision it serves with
//! `POST /v1/edges/{id}/ack`.
//!
//! Private keys never appear in clear: each stream has its own key, agreed by X25519 between
//! the edge's ephemeral key (sent with the request) and the control plane's (in `Hello`), and
//! every private key travels sealed under it ([`transport`]).
//!
//! This crate holds types and the sealing; it does no I/O.

#![forbid(unsafe_code)]

pub mod transport;

use serde::{Deserialize, Serialize};

/// The request header that carries the edge's ephemeral X25519 public key (base64).
pub const EDGE_KEY_HEADER: &str = "x-certplane-edge-key";

/// The ALPN protocol of ACME TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// One line of the edge stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EdgeEvent {
    /// The stream's first line.
    Hello {
        /// The id the control plane knows this edge by.
        edge_id: String,
        /// The control plane's ephemeral X25519 public key for this stream (base64).
        server_key: String,
        /// Whether a full snapshot follows (else the changes after the requested revision).
        snapshot: bool,
        /// The identity of the control plane's log: revisions compare only within one log, so
        /// an edge resumes with `after` only together with this id.
        #[serde(default)]
        log_id: String,
    },
    /// A full snapshot follows: the edge starts a new, empty state.
    SnapshotBegin { revision: i64 },
    /// A hostname's whole state at `revision`; it replaces what the edge had for the name.
    Host { revision: i64, host: EdgeHost },
    /// The edge no longer serves anything for the hostname.
    Remove { revision: i64, hostname: String },
    /// The snapshot is complete at `revision`: the edge publishes it.
    SnapshotEnd { revision: i64 },
    /// Nothing changed; the stream is alive and the log is at `revision`.
    Ping { revision: i64 },
}

impl EdgeEvent {
    /// The revision an event brings the edge to, if it brings it anywhere.
    pub fn revision(&self) -> Option<i64> {
        match self {
            Self::Host { revision, .. }
            | Self::Remove { revision, .. }
            | Self::SnapshotEnd { revision }
            | Self::Ping { revision } => Some(*revision),
            Self::Hello { .. } | Self::SnapshotBegin { .. } => None,
        }
    }
}

/// What an edge serves for one hostname.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdgeHost {
    /// Lowercase ASCII (A-label) name; `*.example.com` for a wildcard.
    pub hostname: String,
    /// The app the requests go to, when an app with verified ownership holds the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<EdgeApp>,
    /// Certificates the edge may serve (the control plane leaves out any whose ownership is not
    /// verified); the edge still checks validity times at each handshake.
    #[serde(default)]
    pub certificates: Vec<EdgeCertificate>,
    /// ACME challenge answers the edge gives for this name.
    #[serde(default)]
    pub challenges: Vec<EdgeChallenge>,
    /// When the control plane read the change from its log (unix milliseconds, a few ms after
    /// the commit), for the edge's propagation-lag metric.
    pub changed_at_ms: i64,
}

/// Where requests for a hostname go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdgeApp {
    pub name: String,
    /// `host:port` or `ip:port`; empty when the app has none.
    pub backends: Vec<String>,
}

/// Where a certificate came from; custom ones win over ACME ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertSource {
    Custom,
    Acme,
}

/// One certificate with its private key, sealed for this stream.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeCertificate {
    pub source: CertSource,
    /// `ecdsa` or `rsa`.
    pub key_type: String,
    /// Leaf first, PEM.
    pub chain_pem: String,
    /// The private key as PEM (PKCS#8, SEC1 or PKCS#1), sealed by [`transport::StreamKey`]
    /// with [`EdgeCertificate::sealing_context`] as associated data (base64).
    pub key_sealed: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub fingerprint: String,
}

impl EdgeCertificate {
    /// The associated data a certificate's key is sealed with: a sealed key moved to another
    /// hostname or slot does not open.
    pub fn sealing_context(hostname: &str, source: CertSource, key_type: &str) -> Vec<u8> {
        let source = match source {
            CertSource::Custom => "custom",
            CertSource::Acme => "acme",
        };
        format!("edge|{hostname}|{source}|{key_type}").into_bytes()
    }
}

impl std::fmt::Debug for EdgeCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeCertificate")
            .field("source", &self.source)
            .field("key_type", &self.key_type)
            .field("not_after", &self.not_after)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// An ACME challenge answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum EdgeChallenge {
    /// `GET /.well-known/acme-challenge/{token}` answers `key_authorization`.
    Http01 {
        token: String,
        key_authorization: String,
    },
    /// A handshake with ALPN `acme-tls/1` for the name gets a self-signed certificate carrying
    /// the SHA-256 of `key_authorization` (RFC 8737); the edge makes it.
    TlsAlpn01 { key_authorization: String },
}

/// `POST /v1/edges/{id}/ack`: the revision an edge serves now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeAck {
    pub revision: i64,
    /// The edge is stopping: do not wait for it any more.
    #[serde(default)]
    pub leaving: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_one_json_line_each() {
        let events = [
            EdgeEvent::Hello {
                edge_id: "e1".into(),
                server_key: "AAAA".into(),
                snapshot: true,
                log_id: "log".into(),
            },
            EdgeEvent::SnapshotBegin { revision: 4 },
            EdgeEvent::Host {
                revision: 4,
                host: EdgeHost {
                    hostname: "www.example.com".into(),
                    app: Some(EdgeApp {
                        name: "shop".into(),
                        backends: vec!["127.0.0.1:8080".into()],
                    }),
                    certificates: Vec::new(),
                    challenges: vec![
                        EdgeChallenge::Http01 {
                            token: "t".into(),
                            key_authorization: "t.k".into(),
                        },
                        EdgeChallenge::TlsAlpn01 {
                            key_authorization: "u.k".into(),
                        },
                    ],
                    changed_at_ms: 1,
                },
            },
            EdgeEvent::Remove {
                revision: 5,
                hostname: "old.example.com".into(),
            },
            EdgeEvent::SnapshotEnd { revision: 5 },
            EdgeEvent::Ping { revision: 5 },
        ];
        for event in events {
            let line = serde_json::to_string(&event).expect("serialises");
            assert!(!line.contains('\n'));
            let back: EdgeEvent = serde_json::from_str(&line).expect("parses");
            assert_eq!(back, event);
        }
        let ping: EdgeEvent =
            serde_json::from_str(r#"{"type":"ping","revision":9}"#).expect("parses");
        assert_eq!(ping.revision(), Some(9));
    }
}
