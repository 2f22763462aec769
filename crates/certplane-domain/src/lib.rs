//! certplane's domain types.
//!
//! Plain values that are valid by construction ("parse, don't validate"): a [`Hostname`] that
//! exists is a hostname a certificate may be requested for, an [`AppName`] is a DNS label, and so
//! on. This crate does no I/O: storage, DNS and HTTP live in the crates above it.

#![forbid(unsafe_code)]

mod hostname;
mod names;
mod platform;
mod requirements;
mod status;
mod token;

pub use hostname::{Hostname, HostnameError};
pub use names::{AppName, Backend, NameError, OrgName, OrgSlug};
pub use platform::{Ipv6Prefix, PlatformSettings, PrefixError};
pub use requirements::{
    AcmeChallengeRecord, DnsRequirements, OwnershipRecord, app_ownership_value, cname_target,
    org_ownership_value,
};
pub use status::{CertificateStatus, DeleteScope};
pub use token::{ApiToken, OwnershipToken, TokenHash};
