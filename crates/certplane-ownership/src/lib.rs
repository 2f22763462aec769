//! Ownership verification and DNS checks.
//!
//! - [`rules`]: pure functions deciding, from what the DNS showed ([`observed`]), whether a
//!   hostname is proven to belong to an app, whether its traffic reaches the platform and which
//!   ACME challenges can work.
//! - [`caa`]: whether CAA lets the configured CA issue (RFC 8659).
//! - [`resolver`]: the lookups, over hickory-resolver with caching off.
//! - [`check`]: one check: every lookup at once, then the rules, giving a [`CheckReport`].
//! - [`verify`]: checks stored hostnames, records results and ownership loss, and re-checks in
//!   the background with back-off.
//!
//! It asks the configured resolvers (`dns.nameservers`), not the zone's authoritative servers
//! directly; point `dns.nameservers` at a resolver without a cache, or rely on the short
//! negative TTLs of the records involved.

#![forbid(unsafe_code)]

pub mod caa;
pub mod check;
pub mod observed;
pub mod resolver;
pub mod rules;
pub mod verify;

pub use check::{CheckReport, Checker, DnsRecords};
pub use resolver::ResolverSetupError;
pub use rules::{Finding, Proof, ProxyRanges};
pub use verify::Verifier;
