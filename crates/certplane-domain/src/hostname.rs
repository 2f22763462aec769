//! [`Hostname`]: a name a certificate can be requested for, parsed from untrusted input.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest input looked at before refusing; keeps IDNA work on hostile input bounded.
const MAX_INPUT_LEN: usize = 1024;
/// RFC 1035: a name is at most 255 octets on the wire, 253 characters in text form.
const MAX_NAME_LEN: usize = 253;
/// RFC 1035: a label is at most 63 octets.
const MAX_LABEL_LEN: usize = 63;

/// A fully qualified host name, or a wildcard (`*.example.com`) for one.
///
/// Lower case, A-labels (punycode) for internationalised names, no trailing dot, at least two
/// labels, and never a public suffix (`com`, `co.uk`) or a wildcard over one (`*.co.uk`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname {
    name: String,
    wildcard: bool,
    apex: bool,
}

impl Hostname {
    /// Parses untrusted input: `WWW.Example.COM.`, `*.example.com`, `bücher.example`.
    pub fn parse(input: &str) -> Result<Self, HostnameError> {
        if input.is_empty() {
            return Err(HostnameError::Empty);
        }
        if input.len() > MAX_INPUT_LEN {
            return Err(HostnameError::TooLong);
        }
        let input = input.strip_suffix('.').unwrap_or(input);
        if input.starts_with('[') || input.parse::<IpAddr>().is_ok() {
            return Err(HostnameError::IpLiteral);
        }
        let (wildcard, base) = match input.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, input),
        };
        if base.contains('*') {
            return Err(HostnameError::InvalidWildcard);
        }
        if base.is_empty() {
            return Err(HostnameError::Empty);
        }
        let lower = base.to_ascii_lowercase();
        let ascii = if !lower.is_ascii() || lower.contains("xn--") {
            idna::domain_to_ascii(&lower).map_err(|_| HostnameError::InvalidIdn)?
        } else {
            lower
        };
        check_labels(&ascii)?;
        let total = ascii.len() + if wildcard { 2 } else { 0 };
        if total > MAX_NAME_LEN {
            return Err(HostnameError::TooLong);
        }
        let suffix = psl::suffix_str(&ascii).ok_or(HostnameError::PublicSuffix)?;
        if suffix == ascii {
            return Err(HostnameError::PublicSuffix);
        }
        let apex = !wildcard && psl::domain_str(&ascii) == Some(ascii.as_str());
        let name = if wildcard {
            format!("*.{ascii}")
        } else {
            ascii
        };
        Ok(Self {
            name,
            wildcard,
            apex,
        })
    }

    /// A hostname read back from storage, where it was stored after [`parse`](Self::parse).
    /// Not re-checked against the public suffix list: a list update must not make stored names
    /// unreadable (they stay listable, checkable and deletable).
    pub fn from_stored(name: &str) -> Self {
        let name = name.to_ascii_lowercase();
        let wildcard = name.starts_with("*.");
        let base = name.strip_prefix("*.").unwrap_or(&name);
        let apex = !wildcard && psl::domain_str(base) == Some(base);
        Self {
            name,
            wildcard,
            apex,
        }
    }

    /// The name as text, `*.` included for a wildcard.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// Whether this is `*.something`.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Whether this is a registrable domain (eTLD+1) such as `example.com` or `example.co.uk`:
    /// such a name cannot carry a CNAME next to its SOA and NS records.
    pub fn is_apex(&self) -> bool {
        self.apex
    }

    /// The name without a leading `*.`: where a wildcard's DNS records live.
    pub fn base(&self) -> &str {
        self.name.strip_prefix("*.").unwrap_or(&self.name)
    }

    /// The registrable domain (eTLD+1) this name belongs to.
    pub fn registrable_domain(&self) -> &str {
        // Parsing refused every name that is itself a public suffix, so a registrable domain exists.
        psl::domain_str(self.base()).unwrap_or(self.base())
    }

    /// Whether this name is `zone` or lies below it (`a.b.zone`); a wildcard counts by its base.
    pub fn is_within(&self, zone: &str) -> bool {
        let base = self.base();
        base == zone
            || (base.len() > zone.len()
                && base.ends_with(zone)
                && base.as_bytes()[base.len() - zone.len() - 1] == b'.')
    }
}

fn check_labels(name: &str) -> Result<(), HostnameError> {
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(HostnameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostnameError::LabelTooLong);
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(HostnameError::InvalidCharacter(bad));
        }
        let reserved_hyphens =
            label.len() >= 4 && &label[2..4] == "--" && !label.starts_with("xn--");
        if label.starts_with('-') || label.ends_with('-') || reserved_hyphens {
            return Err(HostnameError::InvalidHyphen);
        }
    }
    if labels.len() < 2 {
        // A known top-level domain ('com') is a public suffix; anything else ('localhost') is
        // just not a fully qualified name.
        let known = psl::suffix(name.as_bytes()).is_some_and(|s| s.is_known());
        return Err(if known {
            HostnameError::PublicSuffix
        } else {
            HostnameError::NotFullyQualified
        });
    }
    let all_digits = |l: &&str| l.bytes().all(|b| b.is_ascii_digit());
    if labels.iter().all(all_digits) {
        return Err(HostnameError::IpLiteral);
    }
    if labels.last().is_some_and(all_digits) {
        return Err(HostnameError::NumericTld);
    }
    Ok(())
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl FromStr for Hostname {
    type Err = HostnameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Hostname {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for Hostname {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Why a hostname was refused. Each variant has a stable [`code`](Self::code).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostnameError {
    #[error("the hostname is empty")]
    Empty,
    #[error("the hostname is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("a label of the hostname is longer than {MAX_LABEL_LEN} characters")]
    LabelTooLong,
    #[error("the hostname has an empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    #[error("the hostname contains the character {0:?}, which is not allowed")]
    InvalidCharacter(char),
    #[error(
        "a label starts or ends with a hyphen, or has '--' in third and fourth place without being an 'xn--' label"
    )]
    InvalidHyphen,
    #[error("a wildcard is allowed only as the whole leftmost label ('*.example.com')")]
    InvalidWildcard,
    #[error("IP addresses cannot be added as hostnames")]
    IpLiteral,
    #[error("the hostname has a single label; a fully qualified name is needed")]
    NotFullyQualified,
    #[error("the top-level domain is numeric")]
    NumericTld,
    #[error("the hostname is a public suffix (or a wildcard over one), which nobody can own")]
    PublicSuffix,
    #[error("the internationalised hostname is not valid under IDNA (UTS #46)")]
    InvalidIdn,
}

impl HostnameError {
    /// The stable machine-readable code of this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "HOSTNAME_EMPTY",
            Self::TooLong => "HOSTNAME_TOO_LONG",
            Self::LabelTooLong => "HOSTNAME_LABEL_TOO_LONG",
            Self::EmptyLabel => "HOSTNAME_EMPTY_LABEL",
            Self::InvalidCharacter(_) => "HOSTNAME_INVALID_CHARACTER",
            Self::InvalidHyphen => "HOSTNAME_INVALID_HYPHEN",
            Self::InvalidWildcard => "HOSTNAME_INVALID_WILDCARD",
            Self::IpLiteral => "HOSTNAME_IP_LITERAL",
            Self::NotFullyQualified => "HOSTNAME_NOT_FULLY_QUALIFIED",
            Self::NumericTld => "HOSTNAME_NUMERIC_TLD",
            Self::PublicSuffix => "HOSTNAME_PUBLIC_SUFFIX",
            Self::InvalidIdn => "HOSTNAME_INVALID_IDN",
        }
    }

    /// What the user can do about it.
    pub fn remediation(&self) -> &'static str {
        match self {
            Self::Empty => "Pass the hostname to add, for example 'www.example.com'.",
            Self::TooLong => "Use a hostname of at most 253 characters.",
            Self::LabelTooLong => {
                "Keep each dot-separated part of the hostname to at most 63 characters."
            }
            Self::EmptyLabel => {
                "Remove the extra dots: 'www.example.com', not 'www..example.com' or '.example.com'."
            }
            Self::InvalidCharacter(_) => {
                "Use only letters, digits and hyphens in each label (internationalised names are converted for you); underscores and spaces are not valid in certificate hostnames."
            }
            Self::InvalidHyphen => {
                "Remove the hyphen at the start or end of the label, or the '--' in its third and fourth characters."
            }
            Self::InvalidWildcard => {
                "Write a wildcard as '*.example.com'; '*' may not appear anywhere else, and '*.*.example.com' is not allowed."
            }
            Self::IpLiteral => "Add a DNS name that points at the app instead of an IP address.",
            Self::NotFullyQualified => "Add the full name, for example 'www.example.com'.",
            Self::NumericTld => "Check the spelling: top-level domains are never all digits.",
            Self::PublicSuffix => {
                "Add a name you registered, such as 'example.com' or 'www.example.com', not a public suffix like 'com' or 'co.uk'."
            }
            Self::InvalidIdn => {
                "Check the spelling of the internationalised name, or pass its punycode ('xn--') form."
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (input, Ok((normalised, wildcard, apex)) or Err(code))
    type Case = (
        &'static str,
        Result<(&'static str, bool, bool), &'static str>,
    );

    const CASES: &[Case] = &[
        // Plain, normalised names.
        ("www.example.com", Ok(("www.example.com", false, false))),
        ("example.com", Ok(("example.com", false, true))),
        ("WWW.Example.COM", Ok(("www.example.com", false, false))),
        ("www.example.com.", Ok(("www.example.com", false, false))),
        ("Example.COM.", Ok(("example.com", false, true))),
        (
            "a.b.c.d.example.org",
            Ok(("a.b.c.d.example.org", false, false)),
        ),
        ("example.co.uk", Ok(("example.co.uk", false, true))),
        (
            "shop.example.co.uk",
            Ok(("shop.example.co.uk", false, false)),
        ),
        (
            "my-app.example.com",
            Ok(("my-app.example.com", false, false)),
        ),
        ("123.example.com", Ok(("123.example.com", false, false))),
        (
            "xn--bcher-kva.example",
            Ok(("xn--bcher-kva.example", false, true)),
        ),
        ("alice.github.io", Ok(("alice.github.io", false, true))),
        ("example.test", Ok(("example.test", false, true))),
        // Internationalised names become A-labels.
        ("bücher.example", Ok(("xn--bcher-kva.example", false, true))),
        ("BÜCHER.example", Ok(("xn--bcher-kva.example", false, true))),
        (
            "www.münchen.de",
            Ok(("www.xn--mnchen-3ya.de", false, false)),
        ),
        ("例え.テスト", Ok(("xn--r8jz45g.xn--zckzah", false, true))),
        ("xn--zz", Err("HOSTNAME_INVALID_IDN")),
        ("xn--a-ecp.example.com", Err("HOSTNAME_INVALID_IDN")),
        // Wildcards.
        ("*.example.com", Ok(("*.example.com", true, false))),
        ("*.EXAMPLE.com.", Ok(("*.example.com", true, false))),
        (
            "*.shop.example.co.uk",
            Ok(("*.shop.example.co.uk", true, false)),
        ),
        (
            "*.bücher.example",
            Ok(("*.xn--bcher-kva.example", true, false)),
        ),
        ("*.*.example.com", Err("HOSTNAME_INVALID_WILDCARD")),
        ("www.*.example.com", Err("HOSTNAME_INVALID_WILDCARD")),
        ("w*.example.com", Err("HOSTNAME_INVALID_WILDCARD")),
        ("*example.com", Err("HOSTNAME_INVALID_WILDCARD")),
        ("*.", Err("HOSTNAME_INVALID_WILDCARD")),
        ("*.com", Err("HOSTNAME_PUBLIC_SUFFIX")),
        ("*.co.uk", Err("HOSTNAME_PUBLIC_SUFFIX")),
        // Public suffixes.
        ("com", Err("HOSTNAME_PUBLIC_SUFFIX")),
        ("intranet", Err("HOSTNAME_NOT_FULLY_QUALIFIED")),
        ("co.uk", Err("HOSTNAME_PUBLIC_SUFFIX")),
        ("github.io", Err("HOSTNAME_PUBLIC_SUFFIX")),
        ("CO.UK.", Err("HOSTNAME_PUBLIC_SUFFIX")),
        // Lengths.
        ("", Err("HOSTNAME_EMPTY")),
        (".", Err("HOSTNAME_EMPTY")),
        (
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example.com",
            Err("HOSTNAME_LABEL_TOO_LONG"),
        ),
        (
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example.com",
            Ok((
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example.com",
                false,
                false,
            )),
        ),
        ("www..example.com", Err("HOSTNAME_EMPTY_LABEL")),
        (".example.com", Err("HOSTNAME_EMPTY_LABEL")),
        ("www.example.com..", Err("HOSTNAME_EMPTY_LABEL")),
        // Characters and hyphens.
        ("www_1.example.com", Err("HOSTNAME_INVALID_CHARACTER")),
        (
            "_acme-challenge.example.com",
            Err("HOSTNAME_INVALID_CHARACTER"),
        ),
        ("www example.com", Err("HOSTNAME_INVALID_CHARACTER")),
        ("www.exa!mple.com", Err("HOSTNAME_INVALID_CHARACTER")),
        ("user@example.com", Err("HOSTNAME_INVALID_CHARACTER")),
        ("example.com/path", Err("HOSTNAME_INVALID_CHARACTER")),
        ("example.com:443", Err("HOSTNAME_INVALID_CHARACTER")),
        ("-www.example.com", Err("HOSTNAME_INVALID_HYPHEN")),
        ("www-.example.com", Err("HOSTNAME_INVALID_HYPHEN")),
        ("ab--cd.example.com", Err("HOSTNAME_INVALID_HYPHEN")),
        // IP literals and numbers.
        ("192.0.2.1", Err("HOSTNAME_IP_LITERAL")),
        ("192.0.2.1.", Err("HOSTNAME_IP_LITERAL")),
        ("2001:db8::1", Err("HOSTNAME_IP_LITERAL")),
        ("[2001:db8::1]", Err("HOSTNAME_IP_LITERAL")),
        ("127.1", Err("HOSTNAME_IP_LITERAL")),
        ("www.example.123", Err("HOSTNAME_NUMERIC_TLD")),
        ("localhost", Err("HOSTNAME_NOT_FULLY_QUALIFIED")),
    ];

    #[test]
    fn table() {
        assert!(CASES.len() >= 40);
        for (input, expected) in CASES {
            let got = Hostname::parse(input)
                .map(|h| (h.as_str().to_owned(), h.is_wildcard(), h.is_apex()))
                .map_err(|e| e.code());
            let expected = expected.map(|(n, w, a)| (n.to_owned(), w, a));
            assert_eq!(got, expected, "input {input:?}");
        }
    }

    #[test]
    fn too_long_names_are_refused() {
        let label = "a".repeat(63);
        let name = format!("{label}.{label}.{label}.{label}.com");
        assert_eq!(name.len(), 259);
        assert_eq!(Hostname::parse(&name), Err(HostnameError::TooLong));
        assert_eq!(
            Hostname::parse(&"a".repeat(5000)),
            Err(HostnameError::TooLong)
        );
        let fits = format!("{label}.{label}.{label}.{}.com", "a".repeat(57));
        assert_eq!(fits.len(), 253);
        assert!(Hostname::parse(&fits).is_ok());
        // The "*." of a wildcard counts.
        assert_eq!(
            Hostname::parse(&format!("*.{fits}")),
            Err(HostnameError::TooLong)
        );
    }

    #[test]
    fn base_registrable_domain_and_within() {
        let h = Hostname::parse("*.shop.example.co.uk").expect("valid");
        assert_eq!(h.base(), "shop.example.co.uk");
        assert_eq!(h.registrable_domain(), "example.co.uk");
        assert!(h.is_within("example.co.uk"));
        assert!(h.is_within("shop.example.co.uk"));
        assert!(!h.is_within("ample.co.uk"));
        assert!(!h.is_within("x.shop.example.co.uk"));
    }

    #[test]
    fn stored_names_are_taken_as_they_are() {
        let h = Hostname::from_stored("*.shop.example.co.uk");
        assert!(h.is_wildcard() && !h.is_apex());
        assert_eq!(h, Hostname::parse("*.shop.example.co.uk").expect("valid"));
        assert!(Hostname::from_stored("example.com").is_apex());
        // A name a later public suffix list would refuse still reads back.
        assert_eq!(Hostname::from_stored("co.uk").as_str(), "co.uk");
    }

    #[test]
    fn serde_round_trip_parses() {
        let h: Hostname = serde_json::from_str("\"WWW.Example.com.\"").expect("valid");
        assert_eq!(
            serde_json::to_string(&h).expect("serialises"),
            "\"www.example.com\""
        );
        assert!(serde_json::from_str::<Hostname>("\"co.uk\"").is_err());
    }
}
