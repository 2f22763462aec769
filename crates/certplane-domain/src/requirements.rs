//! The DNS records a customer sets for a hostname, derived from the app and the platform.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::{AppName, Hostname, OwnershipToken, PlatformSettings};

/// Every record the customer may set for one hostname, with the exact values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DnsRequirements {
    /// `A <host>` values: the platform's shared IPv4 addresses.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub a: Vec<Ipv4Addr>,
    /// `AAAA <host>` values: the app's dedicated IPv6 address.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub aaaa: Vec<Ipv6Addr>,
    /// `CNAME <host>` target; absent for an apex name, which cannot carry a CNAME.
    pub cname: Option<String>,
    /// The DNS-01 delegation record.
    pub acme_challenge: AcmeChallengeRecord,
    /// The ownership TXT record.
    pub ownership: OwnershipRecord,
}

/// `CNAME _acme-challenge.<base> <base>.<app token>.<challenge zone>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AcmeChallengeRecord {
    pub name: String,
    pub target: String,
}

/// `TXT _<platform>-ownership.<base>` holding `app_value` or `org_value`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OwnershipRecord {
    pub name: String,
    pub app_value: String,
    pub org_value: String,
}

impl DnsRequirements {
    /// `app_ipv4` is the app's dedicated IPv4 address, when it has one: its A record points
    /// there instead of at the shared addresses.
    pub fn new(
        platform: &PlatformSettings,
        hostname: &Hostname,
        app: &AppName,
        app_token: &OwnershipToken,
        app_ipv4: Option<Ipv4Addr>,
        app_ipv6: Ipv6Addr,
        org_token: &OwnershipToken,
    ) -> Self {
        let base = hostname.base();
        Self {
            a: app_ipv4.map_or_else(|| platform.shared_ipv4.clone(), |ip| vec![ip]),
            aaaa: vec![app_ipv6],
            cname: (!hostname.is_apex()).then(|| cname_target(platform, app, app_token)),
            acme_challenge: AcmeChallengeRecord {
                name: format!("_acme-challenge.{base}"),
                target: format!("{base}.{app_token}.{}", platform.challenge_zone),
            },
            ownership: OwnershipRecord {
                name: platform.ownership_record_name(base),
                app_value: app_ownership_value(app_token),
                org_value: org_ownership_value(org_token),
            },
        }
    }
}

/// `<token>.<app>.<apps_domain>`: the app's unique CNAME target.
pub fn cname_target(platform: &PlatformSettings, app: &AppName, token: &OwnershipToken) -> String {
    format!("{token}.{app}.{}", platform.apps_domain)
}

/// `app-<token>`: the ownership TXT value naming one app.
pub fn app_ownership_value(token: &OwnershipToken) -> String {
    format!("app-{token}")
}

/// `org-<token>`: the ownership TXT value naming every app of one org.
pub fn org_ownership_value(token: &OwnershipToken) -> String {
    format!("org-{token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform() -> PlatformSettings {
        PlatformSettings {
            name: "certplane".into(),
            apps_domain: Hostname::parse("apps.example.net").expect("valid"),
            challenge_zone: Hostname::parse("acme.example.net").expect("valid"),
            ipv6_prefix: "fdaa::/48".parse().expect("valid"),
            shared_ipv4: vec![Ipv4Addr::new(203, 0, 113, 10)],
            dedicated_ipv4_pool: vec![],
        }
    }

    fn requirements(host: &str) -> DnsRequirements {
        DnsRequirements::new(
            &platform(),
            &Hostname::parse(host).expect("valid"),
            &AppName::parse("web").expect("valid"),
            &OwnershipToken::from_stored("x7k2q9ab".into()),
            None,
            "fdaa::7".parse().expect("valid"),
            &OwnershipToken::from_stored("orgtok22".into()),
        )
    }

    #[test]
    fn subdomain_records() {
        let r = requirements("www.example.com");
        assert_eq!(r.a, vec![Ipv4Addr::new(203, 0, 113, 10)]);
        assert_eq!(r.aaaa, vec!["fdaa::7".parse::<Ipv6Addr>().expect("valid")]);
        assert_eq!(r.cname.as_deref(), Some("x7k2q9ab.web.apps.example.net"));
        assert_eq!(r.acme_challenge.name, "_acme-challenge.www.example.com");
        assert_eq!(
            r.acme_challenge.target,
            "www.example.com.x7k2q9ab.acme.example.net"
        );
        assert_eq!(r.ownership.name, "_certplane-ownership.www.example.com");
        assert_eq!(r.ownership.app_value, "app-x7k2q9ab");
        assert_eq!(r.ownership.org_value, "org-orgtok22");
    }

    #[test]
    fn a_dedicated_ipv4_replaces_the_shared_ones() {
        let r = DnsRequirements::new(
            &platform(),
            &Hostname::parse("www.example.com").expect("valid"),
            &AppName::parse("web").expect("valid"),
            &OwnershipToken::from_stored("x7k2q9ab".into()),
            Some(Ipv4Addr::new(192, 0, 2, 50)),
            "fdaa::7".parse().expect("valid"),
            &OwnershipToken::from_stored("orgtok22".into()),
        );
        assert_eq!(r.a, vec![Ipv4Addr::new(192, 0, 2, 50)]);
    }

    #[test]
    fn apex_has_no_cname_and_wildcards_drop_the_star() {
        assert_eq!(requirements("example.com").cname, None);
        let w = requirements("*.example.com");
        assert_eq!(w.cname.as_deref(), Some("x7k2q9ab.web.apps.example.net"));
        assert_eq!(w.acme_challenge.name, "_acme-challenge.example.com");
        assert_eq!(
            w.acme_challenge.target,
            "example.com.x7k2q9ab.acme.example.net"
        );
        assert_eq!(w.ownership.name, "_certplane-ownership.example.com");
    }
}
