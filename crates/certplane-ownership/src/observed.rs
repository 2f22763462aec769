//! What the DNS showed for a hostname: every lookup's outcome, kept precise enough to tell
//! "no such record" from "no such name" from "the server failed" from "no answer".

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// The outcome of one DNS lookup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "records", rename_all = "snake_case")]
pub enum Answer<T> {
    /// The name has records of the type asked for.
    Records(Vec<T>),
    /// The name exists but has no records of this type (NOERROR, empty answer).
    NoData,
    /// The name does not exist.
    NxDomain,
    /// The server answered SERVFAIL, REFUSED or another error code.
    ServFail,
    /// No server answered in time.
    Timeout,
    /// The lookup failed another way (message for the log and the report).
    Failed(String),
}

impl<T> Answer<T> {
    /// The records, or none for any other outcome.
    pub fn records(&self) -> &[T] {
        match self {
            Self::Records(r) => r,
            _ => &[],
        }
    }

    /// Whether the lookup itself failed (as opposed to answering "nothing here").
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::ServFail | Self::Timeout | Self::Failed(_))
    }

    pub fn map<U>(self, f: impl Fn(T) -> U) -> Answer<U> {
        match self {
            Self::Records(r) => Answer::Records(r.into_iter().map(f).collect()),
            Self::NoData => Answer::NoData,
            Self::NxDomain => Answer::NxDomain,
            Self::ServFail => Answer::ServFail,
            Self::Timeout => Answer::Timeout,
            Self::Failed(m) => Answer::Failed(m),
        }
    }
}

/// One CAA record: `flags tag "value"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaaRecord {
    pub critical: bool,
    pub tag: String,
    pub value: String,
}

/// The CAA record set that applies to a name (RFC 8659 §3): the first non-empty set found
/// climbing from the name towards the root, and where it was found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaaFound {
    /// The name whose CAA set applies; `None` when no name up the tree has one.
    pub at: Option<String>,
    pub records: Vec<CaaRecord>,
    /// A lookup on the way failed: a CA must then refuse to issue.
    pub failed: Option<String>,
}

/// Everything looked up for one hostname.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// A records of the hostname, after following its CNAME chain.
    pub a: Answer<Ipv4Addr>,
    /// AAAA records of the hostname, after following its CNAME chain.
    pub aaaa: Answer<Ipv6Addr>,
    /// The CNAME chain from the hostname, in order (empty when it has none).
    pub cname_chain: Vec<String>,
    /// TXT values of `_<platform>-ownership.<base>` (one string per record, its character
    /// strings joined).
    pub ownership_txt: Answer<String>,
    /// CNAME targets of `_acme-challenge.<base>`.
    pub acme_challenge_cname: Answer<String>,
    /// The CAA set that applies.
    pub caa: CaaFound,
    /// The SOA of the hostname's zone (`zone mname serial`).
    pub soa: Answer<String>,
}

/// Lower case, no trailing dot: how names are compared.
pub fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}
