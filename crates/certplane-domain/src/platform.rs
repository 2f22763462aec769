//! The operator's platform settings that answers and DNS requirements are derived from.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::Hostname;

/// What the platform tells customers to point their names at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformSettings {
    /// The platform's name, used in the ownership record `_<name>-ownership.<host>`.
    pub name: String,
    /// CNAME targets are `<token>.<app>.<apps_domain>`.
    pub apps_domain: Hostname,
    /// DNS-01 delegation targets are `<host>.<token>.<challenge_zone>`.
    pub challenge_zone: Hostname,
    /// Dedicated app IPv6 addresses come from here, never reused.
    pub ipv6_prefix: Ipv6Prefix,
    /// The shared IPv4 addresses every app answers on.
    pub shared_ipv4: Vec<Ipv4Addr>,
    /// Addresses an app may get for itself on request. Unlike IPv6 addresses they ARE handed
    /// out again after their app is deleted, which is why an A record never proves ownership.
    pub dedicated_ipv4_pool: Vec<Ipv4Addr>,
}

impl PlatformSettings {
    /// The ownership TXT record's name for a hostname's base name.
    pub fn ownership_record_name(&self, base: &str) -> String {
        format!("_{}-ownership.{base}", self.name)
    }
}

/// An IPv6 prefix such as `fdaa::/48`, from which addresses are handed out by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Prefix {
    network: Ipv6Addr,
    len: u8,
}

impl Ipv6Prefix {
    /// The longest prefix accepted: it must leave room for at least 65,535 apps.
    pub const MAX_LEN: u8 = 112;
    /// The shortest prefix accepted: nobody is delegated more than a /16.
    pub const MIN_LEN: u8 = 16;

    /// The `index`th address of the prefix (1-based: the all-zero subnet-router anycast
    /// address is never handed out), or `None` when the prefix has no such address.
    pub fn address(&self, index: u128) -> Option<Ipv6Addr> {
        let host_bits = 128 - u32::from(self.len);
        if index == 0 || index.checked_shr(host_bits).unwrap_or(0) != 0 {
            return None;
        }
        Some(Ipv6Addr::from(u128::from(self.network) | index))
    }

    /// Whether `addr` lies inside this prefix.
    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        let host_mask = u128::MAX.checked_shr(u32::from(self.len)).unwrap_or(0);
        u128::from(addr) & !host_mask == u128::from(self.network)
    }

    /// How many addresses [`address`](Self::address) can hand out.
    pub fn capacity(&self) -> u128 {
        1u128
            .checked_shl(128 - u32::from(self.len))
            .map_or(u128::MAX, |n| n - 1)
    }
}

impl FromStr for Ipv6Prefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.split_once('/').ok_or(PrefixError::Syntax)?;
        let network: Ipv6Addr = addr.parse().map_err(|_| PrefixError::Syntax)?;
        let len: u8 = len.parse().map_err(|_| PrefixError::Syntax)?;
        if len > Self::MAX_LEN {
            return Err(PrefixError::TooLong);
        }
        if len < Self::MIN_LEN {
            return Err(PrefixError::TooShort);
        }
        let host_mask = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
        if u128::from(network) & host_mask != 0 {
            return Err(PrefixError::HostBitsSet);
        }
        Ok(Self { network, len })
    }
}

impl fmt::Display for Ipv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrefixError {
    #[error("expected an IPv6 prefix such as 'fdaa::/48'")]
    Syntax,
    #[error(
        "the prefix is longer than /{}: it would run out of app addresses",
        Ipv6Prefix::MAX_LEN
    )]
    TooLong,
    #[error(
        "the prefix is shorter than /{}: use the prefix delegated to the platform",
        Ipv6Prefix::MIN_LEN
    )]
    TooShort,
    #[error(
        "the prefix has bits set after its length; write the network address, e.g. 'fdaa::/48'"
    )]
    HostBitsSet,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_addresses() {
        let p: Ipv6Prefix = "fdaa::/48".parse().expect("valid");
        assert_eq!(p.address(0), None);
        assert_eq!(p.address(1), Some("fdaa::1".parse().expect("valid")));
        assert_eq!(
            p.address(0x1_0000),
            Some("fdaa::1:0".parse().expect("valid"))
        );
        assert_eq!(p.address(1 << 80), None);
        assert_eq!(p.to_string(), "fdaa::/48");
        assert!(p.contains("fdaa::1:0".parse().expect("valid")));
        assert!(!p.contains("fdab::1".parse().expect("valid")));

        let small: Ipv6Prefix = "fdaa::/112".parse().expect("valid");
        assert_eq!(small.capacity(), 65_535);
        assert!(small.address(65_535).is_some());
        assert_eq!(small.address(65_536), None);
    }

    #[test]
    fn prefix_refusals() {
        assert_eq!("fdaa::".parse::<Ipv6Prefix>(), Err(PrefixError::Syntax));
        assert_eq!("10.0.0.0/8".parse::<Ipv6Prefix>(), Err(PrefixError::Syntax));
        assert_eq!(
            "fdaa::/120".parse::<Ipv6Prefix>(),
            Err(PrefixError::TooLong)
        );
        assert_eq!(
            "fdaa::1/48".parse::<Ipv6Prefix>(),
            Err(PrefixError::HostBitsSet)
        );
        assert_eq!("::/0".parse::<Ipv6Prefix>(), Err(PrefixError::TooShort));
        let wide: Ipv6Prefix = "fd00::/16".parse().expect("valid");
        assert_eq!(wide.address(1 << 112), None);
        assert!(wide.address((1 << 112) - 1).is_some());
    }
}
