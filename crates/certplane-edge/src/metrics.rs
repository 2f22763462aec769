//! The edge's counters, rendered as Prometheus text on the admin listener (`/metrics`).
//!
//! Plain atomics, no registry: the set is small and fixed, and a handshake pays one relaxed
//! increment.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Upper bounds (seconds) of the propagation-lag histogram buckets.
const LAG_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// How a TLS handshake ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    Ok,
    /// The client sent no SNI: refused.
    NoSni,
    /// No valid certificate for the name the client asked for: refused.
    UnknownSni,
    /// An ACME TLS-ALPN-01 validation handshake.
    AcmeChallenge,
    /// Anything else (protocol error, client went away, timeout).
    Failed,
}

impl Handshake {
    const ALL: [Self; 5] = [
        Self::Ok,
        Self::NoSni,
        Self::UnknownSni,
        Self::AcmeChallenge,
        Self::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NoSni => "no_sni",
            Self::UnknownSni => "unknown_sni",
            Self::AcmeChallenge => "acme_challenge",
            Self::Failed => "failed",
        }
    }
}

/// What happened to a proxied or plain-HTTP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Forwarded to a backend, which answered.
    Proxied,
    /// No backend answered: 502.
    BadGateway,
    /// The backend did not answer in time: 504.
    GatewayTimeout,
    /// No app for the hostname, or the Host does not match the TLS name.
    Misrouted,
    /// Plain HTTP sent on to HTTPS (308).
    Redirected,
    /// An ACME HTTP-01 answer.
    Http01,
    /// Plain HTTP for a name the edge does not serve.
    UnknownHost,
}

impl Request {
    const ALL: [Self; 7] = [
        Self::Proxied,
        Self::BadGateway,
        Self::GatewayTimeout,
        Self::Misrouted,
        Self::Redirected,
        Self::Http01,
        Self::UnknownHost,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Proxied => "proxied",
            Self::BadGateway => "bad_gateway",
            Self::GatewayTimeout => "gateway_timeout",
            Self::Misrouted => "misrouted",
            Self::Redirected => "redirected",
            Self::Http01 => "http01",
            Self::UnknownHost => "unknown_host",
        }
    }
}

/// The edge's counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    handshakes: [AtomicU64; 5],
    requests: [AtomicU64; 7],
    revision: AtomicI64,
    hosts: AtomicI64,
    certificates: AtomicI64,
    connected: AtomicI64,
    reconnects: AtomicU64,
    snapshots: AtomicU64,
    lag_buckets: [AtomicU64; LAG_BUCKETS.len()],
    lag_count: AtomicU64,
    lag_sum_micros: AtomicU64,
}

impl Metrics {
    pub fn handshake(&self, result: Handshake) {
        self.handshakes[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn handshakes(&self, result: Handshake) -> u64 {
        self.handshakes[result as usize].load(Ordering::Relaxed)
    }

    pub fn request(&self, result: Request) {
        self.requests[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests(&self, result: Request) -> u64 {
        self.requests[result as usize].load(Ordering::Relaxed)
    }

    /// A snapshot was published.
    pub fn published(&self, revision: i64, hosts: usize, certificates: usize) {
        self.revision.store(revision, Ordering::Relaxed);
        self.hosts.store(hosts as i64, Ordering::Relaxed);
        self.certificates
            .store(certificates as i64, Ordering::Relaxed);
    }

    /// A change committed at the control plane `lag_ms` ago is now served.
    pub fn lag(&self, lag_ms: i64) {
        let seconds = lag_ms.max(0) as f64 / 1000.0;
        for (bucket, bound) in self.lag_buckets.iter().zip(LAG_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.lag_count.fetch_add(1, Ordering::Relaxed);
        self.lag_sum_micros
            .fetch_add(lag_ms.max(0) as u64 * 1000, Ordering::Relaxed);
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected
            .store(i64::from(connected), Ordering::Relaxed);
    }

    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// A full snapshot was received and published.
    pub fn snapshot_taken(&self) {
        self.snapshots.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let _ = writeln!(
            out,
            "# HELP certplane_edge_handshakes_total TLS handshakes by result.\n# TYPE certplane_edge_handshakes_total counter"
        );
        for h in Handshake::ALL {
            let _ = writeln!(
                out,
                "certplane_edge_handshakes_total{{result=\"{}\"}} {}",
                h.label(),
                self.handshakes(h)
            );
        }
        let _ = writeln!(
            out,
            "# HELP certplane_edge_requests_total HTTP requests by outcome.\n# TYPE certplane_edge_requests_total counter"
        );
        for r in Request::ALL {
            let _ = writeln!(
                out,
                "certplane_edge_requests_total{{result=\"{}\"}} {}",
                r.label(),
                self.requests(r)
            );
        }
        let gauges = [
            (
                "certplane_edge_revision",
                "The control plane revision this edge serves.",
                self.revision.load(Ordering::Relaxed),
            ),
            (
                "certplane_edge_hostnames",
                "Hostnames in the served snapshot.",
                self.hosts.load(Ordering::Relaxed),
            ),
            (
                "certplane_edge_certificates",
                "Certificates in the served snapshot (the certificate cache).",
                self.certificates.load(Ordering::Relaxed),
            ),
            (
                "certplane_edge_control_plane_connected",
                "1 while the event stream from the control plane is open.",
                self.connected.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP certplane_edge_reconnects_total Times the event stream was opened again.\n# TYPE certplane_edge_reconnects_total counter\ncertplane_edge_reconnects_total {}",
            self.reconnects.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP certplane_edge_snapshots_total Full snapshots taken (first start, a compacted or foreign log).\n# TYPE certplane_edge_snapshots_total counter\ncertplane_edge_snapshots_total {}",
            self.snapshots.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP certplane_edge_propagation_lag_seconds From the control plane's commit to this edge serving the change.\n# TYPE certplane_edge_propagation_lag_seconds histogram"
        );
        for (bucket, bound) in self.lag_buckets.iter().zip(LAG_BUCKETS) {
            let _ = writeln!(
                out,
                "certplane_edge_propagation_lag_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.lag_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "certplane_edge_propagation_lag_seconds_bucket{{le=\"+Inf\"}} {count}\ncertplane_edge_propagation_lag_seconds_sum {}\ncertplane_edge_propagation_lag_seconds_count {count}",
            self.lag_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_the_lag_histogram() {
        let m = Metrics::default();
        m.handshake(Handshake::Ok);
        m.handshake(Handshake::Ok);
        m.handshake(Handshake::UnknownSni);
        m.request(Request::BadGateway);
        m.published(42, 3, 5);
        m.lag(7);
        m.lag(2_000);
        let text = m.render();
        assert!(text.contains("certplane_edge_handshakes_total{result=\"ok\"} 2\n"));
        assert!(text.contains("certplane_edge_handshakes_total{result=\"unknown_sni\"} 1\n"));
        assert!(text.contains("certplane_edge_requests_total{result=\"bad_gateway\"} 1\n"));
        assert!(text.contains("certplane_edge_revision 42\n"));
        assert!(text.contains("certplane_edge_certificates 5\n"));
        assert!(text.contains("certplane_edge_propagation_lag_seconds_bucket{le=\"0.01\"} 1\n"));
        assert!(text.contains("certplane_edge_propagation_lag_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("certplane_edge_propagation_lag_seconds_count 2\n"));
    }
}
