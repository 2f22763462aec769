//! certplane's configuration.
//!
//! A TOML file in which every key is optional, then `CERTPLANE_<SECTION>_<KEY>` environment
//! variables over it (`CERTPLANE_DATA_DIR`, `CERTPLANE_API_LISTEN`; lists comma-separated), then
//! typed, validated values. Unknown keys are refused with the TOML error naming them, so a typo
//! never silently falls back to a default. This crate reads the file and the environment it is
//! given; it starts nothing.

#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use certplane_domain::{Hostname, Ipv6Prefix, PlatformSettings};
use serde::{Deserialize, Serialize};

/// The whole configuration. [`Default`] is what an empty file gives.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the SQLite database, the admin token and keys live.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; empty means `sqlite://<data_dir>/certplane.db`.
    pub database_url: String,
    /// The master key file that seals stored private keys; empty means
    /// `<data_dir>/master-keys`. `CERTPLANE_MASTER_KEY` (base64 of 32 bytes) replaces the file.
    pub master_key_file: PathBuf,
    pub api: ApiConfig,
    pub edge: EdgeConfig,
    pub dns: DnsConfig,
    pub acme: AcmeConfig,
    pub platform: PlatformConfig,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The REST API and dashboard listener.
    pub listen: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    pub https_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// `/metrics` (Prometheus) and `/healthz`; no authentication, so keep it private.
    pub admin_listen: SocketAddr,
    /// Whether `serve` runs its own edge (a platform whose edges all run `certplane edge`
    /// elsewhere turns it off).
    pub enabled: bool,
    /// The id the control plane knows this edge by; empty means `<host name>:<https port>`.
    pub id: String,
    /// TLS session resumption (tickets and the session cache); off only to measure full
    /// handshakes.
    pub tls_resumption: bool,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// The platform's authoritative server for the challenge zone.
    pub listen: SocketAddr,
    /// Resolvers for ownership and DNS checks; empty means the system's.
    pub nameservers: Vec<SocketAddr>,
    /// Known proxy and CDN address ranges, `"provider=CIDR"`: a hostname resolving into them is
    /// reported as proxied by that provider. Defaults to Cloudflare's published ranges.
    pub proxy_ranges: Vec<String>,
    /// Whether `serve` re-checks hostnames in the background (pending ones with back-off,
    /// verified ones hourly).
    pub background_checks: bool,
    /// The challenge zone's name servers, as its parent zone delegates it (the NS records the
    /// platform's DNS server answers); empty means `ns1.<challenge_zone>`.
    pub zone_nameservers: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    pub directory_url: String,
    /// An extra root certificate (PEM) to trust for the ACME server; empty for none.
    pub ca_root_file: PathBuf,
    pub contact: Vec<String>,
    /// The CA's CAA identifiers: a CAA `issue` record must name one of them.
    pub caa_identities: Vec<String>,
    /// External account binding for CAs that require it (RFC 8555 §7.3.4): the key id the CA
    /// gave, and its HMAC key (base64url). Both empty: no binding.
    pub eab_kid: String,
    pub eab_hmac_key: String,
    /// Hostnames the issuer works on at once.
    pub concurrency: u32,
    /// How long a control plane holds a hostname's issuance before another may take it over
    /// (renewed while it works; what a crashed node leaves behind waits this long).
    pub lease_seconds: u32,
    /// The CA's limits, kept by the platform's own budget so it never sends an order the CA
    /// would refuse (defaults: Let's Encrypt's).
    pub certificates_per_domain_per_week: u32,
    pub duplicate_certificates_per_week: u32,
    pub failed_validations_per_hour: u32,
    pub orders_per_3_hours: u32,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformConfig {
    /// One DNS label; the ownership record is `_<name>-ownership.<host>`.
    pub name: String,
    pub apps_domain: String,
    pub challenge_zone: String,
    pub ipv6_prefix: String,
    pub shared_ipv4: Vec<Ipv4Addr>,
    /// Addresses apps may get for themselves (`apps create --dedicated-ipv4`); recycled after
    /// the app is deleted.
    pub dedicated_ipv4_pool: Vec<Ipv4Addr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            database_url: String::new(),
            master_key_file: PathBuf::new(),
            api: ApiConfig::default(),
            edge: EdgeConfig::default(),
            dns: DnsConfig::default(),
            acme: AcmeConfig::default(),
            platform: PlatformConfig::default(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4000)),
        }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            https_listen: SocketAddr::from(([0, 0, 0, 0], 443)),
            http_listen: SocketAddr::from(([0, 0, 0, 0], 80)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
            enabled: true,
            id: String::new(),
            tls_resumption: true,
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 53)),
            nameservers: Vec::new(),
            proxy_ranges: CLOUDFLARE_RANGES
                .iter()
                .map(|r| format!("cloudflare={r}"))
                .collect(),
            background_checks: true,
            zone_nameservers: Vec::new(),
        }
    }
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            directory_url: "https://acme-v02.api.letsencrypt.org/directory".into(),
            ca_root_file: PathBuf::new(),
            contact: Vec::new(),
            caa_identities: vec!["letsencrypt.org".into()],
            eab_kid: String::new(),
            eab_hmac_key: String::new(),
            concurrency: 16,
            lease_seconds: 30,
            certificates_per_domain_per_week: 50,
            duplicate_certificates_per_week: 5,
            failed_validations_per_hour: 5,
            orders_per_3_hours: 300,
        }
    }
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            name: "certplane".into(),
            apps_domain: "apps.example.net".into(),
            challenge_zone: "acme.example.net".into(),
            ipv6_prefix: "fdaa::/48".into(),
            shared_ipv4: vec![Ipv4Addr::new(203, 0, 113, 10)],
            dedicated_ipv4_pool: Vec::new(),
        }
    }
}

/// Cloudflare's published proxy ranges (cloudflare.com/ips), the default `dns.proxy_ranges`.
const CLOUDFLARE_RANGES: &[&str] = &[
    "173.245.48.0/20",
    "103.21.244.0/22",
    "103.22.200.0/22",
    "103.31.4.0/22",
    "141.101.64.0/18",
    "108.162.192.0/18",
    "190.93.240.0/20",
    "188.114.96.0/20",
    "197.234.240.0/22",
    "198.41.128.0/17",
    "162.158.0.0/15",
    "104.16.0.0/13",
    "104.24.0.0/14",
    "172.64.0.0/13",
    "131.0.72.0/22",
    "2400:cb00::/32",
    "2606:4700::/32",
    "2803:f800::/32",
    "2405:b500::/32",
    "2405:8100::/32",
    "2a06:98c0::/29",
    "2c0f:f248::/32",
];

/// How an environment variable's text becomes a configuration value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvKind {
    Text,
    /// Comma-separated.
    List,
    /// `true` or `false`.
    Bool,
    /// A whole number.
    Integer,
}

/// The keys an environment variable can override, and how each variable's text is read.
/// `("api", "listen")` is `CERTPLANE_API_LISTEN`; a top-level key has section `""`.
pub const ENV_KEYS: &[(&str, &str, EnvKind)] = &[
    ("", "data_dir", EnvKind::Text),
    ("", "database_url", EnvKind::Text),
    ("", "master_key_file", EnvKind::Text),
    ("api", "listen", EnvKind::Text),
    ("edge", "https_listen", EnvKind::Text),
    ("edge", "http_listen", EnvKind::Text),
    ("edge", "admin_listen", EnvKind::Text),
    ("edge", "enabled", EnvKind::Bool),
    ("edge", "id", EnvKind::Text),
    ("edge", "tls_resumption", EnvKind::Bool),
    ("dns", "listen", EnvKind::Text),
    ("dns", "nameservers", EnvKind::List),
    ("dns", "proxy_ranges", EnvKind::List),
    ("dns", "background_checks", EnvKind::Bool),
    ("dns", "zone_nameservers", EnvKind::List),
    ("acme", "directory_url", EnvKind::Text),
    ("acme", "ca_root_file", EnvKind::Text),
    ("acme", "contact", EnvKind::List),
    ("acme", "caa_identities", EnvKind::List),
    ("acme", "eab_kid", EnvKind::Text),
    ("acme", "eab_hmac_key", EnvKind::Text),
    ("acme", "concurrency", EnvKind::Integer),
    ("acme", "lease_seconds", EnvKind::Integer),
    ("acme", "certificates_per_domain_per_week", EnvKind::Integer),
    ("acme", "duplicate_certificates_per_week", EnvKind::Integer),
    ("acme", "failed_validations_per_hour", EnvKind::Integer),
    ("acme", "orders_per_3_hours", EnvKind::Integer),
    ("platform", "name", EnvKind::Text),
    ("platform", "apps_domain", EnvKind::Text),
    ("platform", "challenge_zone", EnvKind::Text),
    ("platform", "ipv6_prefix", EnvKind::Text),
    ("platform", "shared_ipv4", EnvKind::List),
    ("platform", "dedicated_ipv4_pool", EnvKind::List),
];

/// The environment variable that overrides `section.key`.
pub fn env_var_name(section: &str, key: &str) -> String {
    if section.is_empty() {
        format!("CERTPLANE_{}", key.to_ascii_uppercase())
    } else {
        format!(
            "CERTPLANE_{}_{}",
            section.to_ascii_uppercase(),
            key.to_ascii_uppercase()
        )
    }
}

impl Config {
    /// Reads `file` (when given; a missing file is an error), applies the overrides found by
    /// `env` and validates the result.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        let origin = file.map_or_else(|| "defaults".to_owned(), |p| p.display().to_string());
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: origin.clone(),
                    message: e.to_string(),
                })?;
        apply_env(&mut table, &env)?;
        let config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin,
                message: e.to_string(),
            })?;
        config.platform_settings()?;
        config.proxy_ranges()?;
        if config
            .acme
            .caa_identities
            .iter()
            .all(|id| id.trim().is_empty())
        {
            return Err(ConfigError::Invalid {
                key: "acme.caa_identities".into(),
                message: "must name the CA's CAA identifier, e.g. [\"letsencrypt.org\"]".into(),
            });
        }
        let acme = &config.acme;
        if acme.eab_kid.trim().is_empty() != acme.eab_hmac_key.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "acme.eab_kid".into(),
                message: "external account binding needs both acme.eab_kid and acme.eab_hmac_key (from the CA's account page)".into(),
            });
        }
        if acme.concurrency == 0 || acme.concurrency > 1024 {
            return Err(ConfigError::Invalid {
                key: "acme.concurrency".into(),
                message: "must be between 1 and 1024".into(),
            });
        }
        if acme.lease_seconds < 5 {
            return Err(ConfigError::Invalid {
                key: "acme.lease_seconds".into(),
                message: "must be at least 5".into(),
            });
        }
        Ok(config)
    }

    /// The database URL in force: `database_url`, or SQLite under `data_dir`.
    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("certplane.db").display())
        } else {
            self.database_url.clone()
        }
    }

    /// The master key file in force.
    pub fn master_key_file(&self) -> PathBuf {
        if self.master_key_file.as_os_str().is_empty() {
            self.data_dir.join("master-keys")
        } else {
            self.master_key_file.clone()
        }
    }

    /// `dns.proxy_ranges` parsed: provider name → ranges.
    pub fn proxy_ranges(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Vec<ipnet::IpNet>>, ConfigError> {
        let mut ranges: std::collections::BTreeMap<String, Vec<ipnet::IpNet>> = Default::default();
        for entry in &self.dns.proxy_ranges {
            let parsed = entry
                .split_once('=')
                .and_then(|(name, net)| {
                    Some((name.trim(), net.trim().parse::<ipnet::IpNet>().ok()?))
                })
                .filter(|(name, _)| !name.is_empty());
            let Some((name, net)) = parsed else {
                return Err(ConfigError::Invalid {
                    key: "dns.proxy_ranges".into(),
                    message: format!(
                        "{entry:?} is not \"provider=CIDR\", e.g. \"cloudflare=104.16.0.0/13\""
                    ),
                });
            };
            ranges.entry(name.to_owned()).or_default().push(net);
        }
        Ok(ranges)
    }

    /// The `[platform]` section as validated domain values.
    pub fn platform_settings(&self) -> Result<PlatformSettings, ConfigError> {
        let p = &self.platform;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: format!("platform.{key}"),
            message,
        };
        let label_ok = !p.name.is_empty()
            && p.name.len() <= 50
            && p.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !label_ok {
            return Err(invalid(
                "name",
                "must be lower-case letters, digits and hyphens (at most 50), e.g. \"certplane\""
                    .into(),
            ));
        }
        let zone = |key: &str, value: &str| {
            Hostname::parse(value)
                .ok()
                .filter(|h| !h.is_wildcard())
                .ok_or_else(|| {
                    invalid(
                        key,
                        format!("{value:?} is not a DNS name such as \"apps.example.net\""),
                    )
                })
        };
        let ipv6_prefix: Ipv6Prefix = p
            .ipv6_prefix
            .parse()
            .map_err(|e| invalid("ipv6_prefix", format!("{:?}: {e}", p.ipv6_prefix)))?;
        Ok(PlatformSettings {
            name: p.name.clone(),
            apps_domain: zone("apps_domain", &p.apps_domain)?,
            challenge_zone: zone("challenge_zone", &p.challenge_zone)?,
            ipv6_prefix,
            shared_ipv4: p.shared_ipv4.clone(),
            dedicated_ipv4_pool: p.dedicated_ipv4_pool.clone(),
        })
    }
}

fn apply_env(
    table: &mut toml::Table,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for &(section, key, kind) in ENV_KEYS {
        let var = env_var_name(section, key);
        let Some(raw) = env(&var) else { continue };
        let value = match kind {
            EnvKind::List => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ),
            EnvKind::Bool => match raw.trim() {
                "true" | "1" => toml::Value::Boolean(true),
                "false" | "0" => toml::Value::Boolean(false),
                _ => {
                    return Err(ConfigError::Invalid {
                        key: var,
                        message: "must be true or false".into(),
                    });
                }
            },
            EnvKind::Integer => match raw.trim().parse::<i64>() {
                Ok(n) => toml::Value::Integer(n),
                Err(_) => {
                    return Err(ConfigError::Invalid {
                        key: var,
                        message: "must be a whole number".into(),
                    });
                }
            },
            EnvKind::Text => toml::Value::String(raw),
        };
        let target = if section.is_empty() {
            &mut *table
        } else {
            let entry = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            entry.as_table_mut().ok_or_else(|| ConfigError::Invalid {
                key: section.to_owned(),
                message: format!("must be a table to apply {var}"),
            })?
        };
        target.insert(key.to_owned(), value);
    }
    Ok(())
}

/// Why the configuration could not be loaded. The message names the file or key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration ({origin}): {message}")]
    Parse { origin: String, message: String },
    #[error("invalid configuration: {key} {message}")]
    Invalid { key: String, message: String },
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("certplane-config-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("c.toml");
        std::fs::write(&path, text).expect("write");
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let result = Config::load(Some(&path), |k| env.get(k).cloned());
        std::fs::remove_dir_all(&dir).expect("cleanup");
        result
    }

    fn rand_suffix() -> String {
        format!("{}-{:?}", std::process::id(), std::thread::current().id())
            .replace(|c: char| !c.is_ascii_alphanumeric(), "")
    }

    #[test]
    fn empty_file_gives_the_contract_defaults() {
        let c = Config::load(None, no_env).expect("defaults load");
        assert_eq!(c, Config::default());
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:4000");
        assert_eq!(c.edge.https_listen.to_string(), "0.0.0.0:443");
        assert_eq!(c.database_url(), "sqlite://./data/certplane.db");
        let p = c.platform_settings().expect("valid");
        assert_eq!(p.apps_domain.as_str(), "apps.example.net");
        assert_eq!(p.ipv6_prefix.to_string(), "fdaa::/48");
    }

    #[test]
    fn file_values_and_env_overrides() {
        let c = load_str(
            "data_dir = \"/tmp/x\"\n[api]\nlisten = \"127.0.0.1:5000\"\n[platform]\nname = \"acme\"\n",
            &[
                ("CERTPLANE_API_LISTEN", "127.0.0.1:6000"),
                ("CERTPLANE_PLATFORM_SHARED_IPV4", "192.0.2.1, 192.0.2.2"),
                ("CERTPLANE_DATABASE_URL", "postgres://u@h/db"),
                ("CERTPLANE_PLATFORM_NAME", "true"),
                ("CERTPLANE_DNS_BACKGROUND_CHECKS", "false"),
            ],
        )
        .expect("loads");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:6000");
        assert_eq!(c.platform.name, "true", "a text key takes 'true' as text");
        assert!(!c.dns.background_checks);
        assert_eq!(c.platform.shared_ipv4.len(), 2);
        assert_eq!(c.database_url(), "postgres://u@h/db");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err =
            load_str("[api]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n", &[]).expect_err("refused");
        assert!(err.to_string().contains("unknown field `lisen`"), "{err}");
        let err = load_str("[apii]\n", &[]).expect_err("refused");
        assert!(err.to_string().contains("unknown field `apii`"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let err = load_str("[platform]\nipv6_prefix = \"fdaa::1/48\"\n", &[]).expect_err("refused");
        assert!(err.to_string().contains("platform.ipv6_prefix"), "{err}");
        let err = load_str("[platform]\napps_domain = \"com\"\n", &[]).expect_err("refused");
        assert!(err.to_string().contains("platform.apps_domain"), "{err}");
        let err = load_str("[api]\nlisten = \"nope\"\n", &[]).expect_err("refused");
        assert!(err.to_string().contains("listen"), "{err}");
        let missing = Config::load(Some(Path::new("/nonexistent/certplane.toml")), no_env);
        assert!(matches!(missing, Err(ConfigError::Read { .. })));
    }

    /// Every key of the configuration can be overridden from the environment.
    #[test]
    fn env_keys_cover_every_key() {
        let table = toml::Table::try_from(Config::default()).expect("serialises");
        let mut keys = Vec::new();
        for (k, v) in &table {
            match v.as_table() {
                Some(section) => keys.extend(section.keys().map(|key| (k.as_str(), key.as_str()))),
                None => keys.push(("", k.as_str())),
            }
        }
        for (section, key) in keys {
            assert!(
                ENV_KEYS.iter().any(|&(s, k, _)| s == section && k == key),
                "{section}.{key} has no environment override"
            );
        }
        assert_eq!(env_var_name("", "data_dir"), "CERTPLANE_DATA_DIR");
        assert_eq!(
            env_var_name("dns", "nameservers"),
            "CERTPLANE_DNS_NAMESERVERS"
        );
    }
}
