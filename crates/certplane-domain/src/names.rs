//! Names of apps and orgs, and app backend addresses.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An app's name: one DNS label (it appears in `<token>.<app>.<apps_domain>`), unique on the
/// platform while the app exists. Names are recycled after deletion, which is why they never
/// prove ownership on their own.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppName(String);

impl AppName {
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let name = input.to_ascii_lowercase();
        if is_dns_label(&name) {
            Ok(Self(name))
        } else {
            Err(NameError::App)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An org's display name, as given when it was created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgName(String);

impl OrgName {
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let name = input.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(NameError::Org);
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The slug this name gives: lower case, runs of other characters folded into one hyphen.
    pub fn slug(&self) -> Result<OrgSlug, NameError> {
        let mut slug = String::new();
        for c in self.0.chars().flat_map(char::to_lowercase) {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                slug.push(c);
            } else if !slug.is_empty() && !slug.ends_with('-') {
                slug.push('-');
            }
        }
        let slug = slug.trim_end_matches('-');
        // The slug is ASCII, so byte slicing stays on character boundaries.
        OrgSlug::parse(slug[..slug.len().min(63)].trim_end_matches('-'))
    }
}

/// An org's stable identifier in URLs and answers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OrgSlug(String);

impl OrgSlug {
    pub fn parse(input: &str) -> Result<Self, NameError> {
        if is_dns_label(input) {
            Ok(Self(input.to_owned()))
        } else {
            Err(NameError::Org)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where an edge forwards an app's traffic: `host:port`, host an IP address or a DNS name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend(String);

impl Backend {
    pub fn parse(input: &str) -> Result<Self, NameError> {
        if let Ok(addr) = input.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(NameError::Backend(input.to_owned()));
            }
            return Ok(Self(addr.to_string()));
        }
        let (host, port) = input
            .rsplit_once(':')
            .ok_or_else(|| NameError::Backend(input.to_owned()))?;
        let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
        let host = host.to_ascii_lowercase();
        let host_ok = host.parse::<IpAddr>().is_err()
            && host.len() <= 253
            && host.split('.').all(is_dns_label);
        if port_ok && host_ok {
            Ok(Self(format!("{host}:{port}")))
        } else {
            Err(NameError::Backend(input.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

macro_rules! text_newtype {
    ($($ty:ident),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    )*};
}

text_newtype!(AppName, OrgName, OrgSlug, Backend);

/// Why a name or address was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error(
        "the app name must be one DNS label: 1 to 63 letters, digits or hyphens, not starting or ending with a hyphen"
    )]
    App,
    #[error(
        "the org name must be 1 to 100 printable characters and contain at least one letter or digit"
    )]
    Org,
    #[error(
        "the backend {0:?} is not 'host:port' (an IP address or DNS name, and a port from 1 to 65535)"
    )]
    Backend(String),
}

impl NameError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::App => "APP_NAME_INVALID",
            Self::Org => "ORG_NAME_INVALID",
            Self::Backend(_) => "BACKEND_INVALID",
        }
    }

    pub fn remediation(&self) -> &'static str {
        match self {
            Self::App => "Choose a name such as 'my-app': lower-case letters, digits and hyphens.",
            Self::Org => "Choose a name such as 'Acme Corp'.",
            Self::Backend(_) => {
                "Give backends as '10.0.0.5:8080', '[fd00::5]:8080' or 'web.internal:8080'."
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names() {
        assert_eq!(
            AppName::parse("My-App").map(|n| n.0),
            Ok("my-app".to_owned())
        );
        for bad in ["", "-a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert_eq!(AppName::parse(bad), Err(NameError::App), "{bad:?}");
        }
    }

    #[test]
    fn org_slugs() {
        let slug = |n: &str| OrgName::parse(n).and_then(|n| n.slug()).map(|s| s.0);
        assert_eq!(slug("Acme Corp"), Ok("acme-corp".to_owned()));
        assert_eq!(slug("  Ünïcode -- Ltd. "), Ok("n-code-ltd".to_owned()));
        assert_eq!(slug("!!!"), Err(NameError::Org));
        assert_eq!(slug(""), Err(NameError::Org));
        assert_eq!(slug(&"x".repeat(101)), Err(NameError::Org));
        assert_eq!(slug(&"x".repeat(100)), Ok("x".repeat(63)));
    }

    #[test]
    fn backends() {
        let ok = |s: &str| Backend::parse(s).map(|b| b.0);
        assert_eq!(ok("10.0.0.5:8080"), Ok("10.0.0.5:8080".to_owned()));
        assert_eq!(ok("[fd00::5]:80"), Ok("[fd00::5]:80".to_owned()));
        assert_eq!(ok("Web.Internal:8080"), Ok("web.internal:8080".to_owned()));
        for bad in [
            "10.0.0.5",
            "10.0.0.5:0",
            "host:99999",
            ":80",
            "a b:80",
            "fd00::5:80x",
        ] {
            assert!(Backend::parse(bad).is_err(), "{bad:?}");
        }
    }
}
