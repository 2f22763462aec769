//! Custom certificate import: untrusted PEM in, a [`ValidatedBundle`] or a precise
//! [`ImportError`] out.
//!
//! Parse, don't validate: a `ValidatedBundle` that exists holds a chain that starts with a
//! server certificate covering the hostname, valid now, with a key browsers accept, each
//! certificate signed by the next, and the private key of that certificate. What is accepted
//! but worth knowing (a chain not trusted by public roots, a root that was dropped, a chain that
//! was reordered) is listed in its warnings.
//!
//! PEM and DER are read by rustls-pki-types and x509-parser, keys by rustls (ring), chains are
//! checked against the public roots with webpki; nothing here parses ASN.1 by hand. Text outside
//! PEM blocks (what `openssl x509 -text` or a PKCS#12 export prints) is ignored (RFC 7468).

#![forbid(unsafe_code)]

mod error;

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use certplane_domain::Hostname;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

pub use error::{ImportError, ImportErrorKind, ImportWarning, WarningKind};

/// Largest `fullchain` or `private_key` input looked at.
pub const MAX_INPUT_BYTES: usize = 128 * 1024;
/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// The leaf key's algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Ecdsa,
    Rsa,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ecdsa => "ecdsa",
            Self::Rsa => "rsa",
        }
    }
}

/// A certificate chain and its key, validated for one hostname.
#[derive(Debug)]
pub struct ValidatedBundle {
    /// Leaf first, then intermediates; never the root.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pub key_type: KeyType,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// The leaf issuer's common name or organisation.
    pub issuer: String,
    /// DNS names of the leaf's Subject Alternative Name.
    pub sans: Vec<String>,
    /// SHA-256 of the leaf, hex.
    pub fingerprint: String,
    pub warnings: Vec<ImportWarning>,
}

impl ValidatedBundle {
    /// The private key, DER (PKCS#8, PKCS#1 or SEC1 as given). Handle with care: store it only
    /// encrypted.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The chain as PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem("CERTIFICATE", c.as_ref()))
            .collect()
    }
}

/// Encodes DER as one PEM block.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn refuse(kind: ImportErrorKind, message: impl Into<String>) -> ImportError {
    ImportError::new(kind, message)
}

/// Validates an import of `fullchain` and `private_key` for `hostname` at `now` (unix seconds).
///
/// Certificates are read from `fullchain` and keys from `private_key` only, so one file holding
/// both, in either order, can be passed as both.
pub fn validate(
    fullchain: &str,
    private_key: &str,
    hostname: &Hostname,
    now: i64,
) -> Result<ValidatedBundle, ImportError> {
    if fullchain.len() > MAX_INPUT_BYTES || private_key.len() > MAX_INPUT_BYTES {
        return Err(refuse(
            ImportErrorKind::TooLarge,
            format!("the input is larger than {} KiB", MAX_INPUT_BYTES / 1024),
        ));
    }
    if private_key.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || private_key.contains("Proc-Type: 4,ENCRYPTED")
    {
        return Err(refuse(
            ImportErrorKind::KeyEncrypted,
            "the private key is encrypted with a passphrase",
        ));
    }
    let certs_der = certificates(fullchain)?;
    let key = single_key(private_key)?;

    let mut parsed = Vec::with_capacity(certs_der.len());
    for (i, der) in certs_der.iter().enumerate() {
        match X509Certificate::from_der(der.as_ref()) {
            Ok(([], cert)) => parsed.push(cert),
            _ => {
                return Err(refuse(
                    ImportErrorKind::CertInvalid,
                    format!(
                        "certificate {} of the chain is not a valid X.509 certificate",
                        i + 1
                    ),
                ));
            }
        }
    }

    // Before linking: ring cannot verify SHA-1 signatures, so a weak one would look like a
    // broken chain. A self-signed root's own signature is never checked by clients.
    if let Some(weak) = parsed
        .iter()
        .find(|c| weak_signature(c) && !(is_ca(c) && is_self_issued(c)))
    {
        return Err(refuse(
            ImportErrorKind::SignatureWeak,
            format!("{} is signed with SHA-1 or MD5", describe(weak)),
        ));
    }
    let mut warnings = Vec::new();
    let mut ordered = chain_order(&parsed, &mut warnings)?;
    let top = *ordered.last().unwrap_or(&0);
    if ordered.len() > 1 && is_self_issued(&parsed[top]) {
        ordered.pop();
        warnings.push(ImportWarning {
            kind: WarningKind::RootDropped,
            message: "the chain included its root certificate, which was dropped: clients must already trust the root".into(),
        });
    }
    let leaf = &parsed[ordered[0]];

    let key_type = key_type(leaf)?;
    let sans = dns_sans(leaf);
    if sans.is_empty() {
        return Err(refuse(
            ImportErrorKind::SanMissing,
            "the certificate has no DNS names in its Subject Alternative Name extension; browsers ignore the Common Name",
        ));
    }
    if !sans.iter().any(|san| covers(san, hostname)) {
        return Err(refuse(
            ImportErrorKind::HostnameNotCovered,
            format!(
                "the certificate is for {} and does not cover {hostname}",
                sans.join(", ")
            ),
        ));
    }
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    if now < not_before {
        return Err(refuse(
            ImportErrorKind::NotYetValid,
            format!(
                "the certificate is valid only from {}",
                leaf.validity().not_before
            ),
        ));
    }
    if now > not_after {
        return Err(refuse(
            ImportErrorKind::Expired,
            format!("the certificate expired at {}", leaf.validity().not_after),
        ));
    }
    check_usage(leaf)?;

    let chain: Vec<CertificateDer<'static>> =
        ordered.iter().map(|&i| certs_der[i].clone()).collect();
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|_| {
        refuse(
            ImportErrorKind::KeyInvalid,
            "the private key is not a usable RSA or ECDSA key",
        )
    })?;
    match CertifiedKey::new(chain.clone(), signing_key).keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(refuse(
                ImportErrorKind::KeyMismatch,
                "the private key does not belong to the certificate",
            ));
        }
        Err(_) => {
            return Err(refuse(
                ImportErrorKind::KeyInvalid,
                "the private key's public half could not be compared with the certificate",
            ));
        }
    }

    trust(&chain, &parsed, &ordered, now, &mut warnings);
    Ok(ValidatedBundle {
        fingerprint: Sha256::digest(chain[0].as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        issuer: issuer_name(leaf),
        chain,
        key,
        key_type,
        not_before,
        not_after,
        sans,
        warnings,
    })
}

/// Every certificate block of `text`, in order; keys and other blocks are skipped.
fn certificates(text: &str) -> Result<Vec<CertificateDer<'static>>, ImportError> {
    let mut certs = Vec::new();
    for section in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(text.as_bytes()) {
        let (kind, der) = section.map_err(|e| {
            refuse(
                ImportErrorKind::PemInvalid,
                format!("a PEM block is damaged: {e}"),
            )
        })?;
        if kind == SectionKind::Certificate {
            certs.push(CertificateDer::from(der));
        }
    }
    if certs.is_empty() {
        return Err(refuse(
            ImportErrorKind::CertMissing,
            "no '-----BEGIN CERTIFICATE-----' block was found in the fullchain",
        ));
    }
    Ok(certs)
}

/// The one private key of `text` (PKCS#8, PKCS#1 or SEC1); certificates are skipped.
fn single_key(text: &str) -> Result<PrivateKeyDer<'static>, ImportError> {
    let mut keys: Vec<PrivateKeyDer<'static>> = Vec::new();
    let mut seen = HashSet::new();
    for section in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(text.as_bytes()) {
        let (kind, der) = section.map_err(|e| {
            refuse(
                ImportErrorKind::PemInvalid,
                format!("a PEM block of the key is damaged: {e}"),
            )
        })?;
        let key = match kind {
            SectionKind::PrivateKey => PrivateKeyDer::Pkcs8(der.clone().into()),
            SectionKind::RsaPrivateKey => PrivateKeyDer::Pkcs1(der.clone().into()),
            SectionKind::EcPrivateKey => PrivateKeyDer::Sec1(der.clone().into()),
            _ => continue,
        };
        if seen.insert(der) {
            keys.push(key);
        }
    }
    match keys.len() {
        0 => Err(refuse(
            ImportErrorKind::KeyMissing,
            "no private key block was found",
        )),
        1 => Ok(keys.remove(0)),
        n => Err(refuse(
            ImportErrorKind::KeyMultiple,
            format!("{n} different private keys were given"),
        )),
    }
}

fn is_ca(cert: &X509Certificate<'_>) -> bool {
    cert.basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca)
}

fn is_self_issued(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw()
}

fn describe(cert: &X509Certificate<'_>) -> String {
    format!("the certificate '{}'", cert.subject())
}

/// The chain's order, leaf first, each certificate followed by its issuer. Reorders a complete,
/// unambiguous set (with a warning); refuses one that does not link.
fn chain_order(
    certs: &[X509Certificate<'_>],
    warnings: &mut Vec<ImportWarning>,
) -> Result<Vec<usize>, ImportError> {
    let servers: Vec<usize> = (0..certs.len()).filter(|&i| !is_ca(&certs[i])).collect();
    let leaf = if !is_ca(&certs[0]) {
        0
    } else {
        match servers.as_slice() {
            [] => {
                return Err(refuse(
                    ImportErrorKind::LeafIsCa,
                    format!(
                        "{} is a CA certificate, not a server certificate",
                        describe(&certs[0])
                    ),
                ));
            }
            [one] => *one,
            _ => {
                return Err(refuse(
                    ImportErrorKind::ChainBroken,
                    "the chain holds several server certificates and none comes first",
                ));
            }
        }
    };
    let mut order = vec![leaf];
    let mut remaining: Vec<usize> = (0..certs.len()).filter(|&i| i != leaf).collect();
    loop {
        let current = &certs[*order.last().unwrap_or(&leaf)];
        if is_self_issued(current) && order.len() > 1 {
            break;
        }
        let next = remaining.iter().position(|&i| {
            certs[i].subject().as_raw() == current.issuer().as_raw()
                && current
                    .verify_signature(Some(certs[i].public_key()))
                    .is_ok()
        });
        match next {
            Some(pos) => order.push(remaining.remove(pos)),
            None => break,
        }
    }
    if let Some(&stray) = remaining.first() {
        return Err(refuse(
            ImportErrorKind::ChainBroken,
            format!(
                "{} does not sign the certificate before it: the chain does not link",
                describe(&certs[stray])
            ),
        ));
    }
    if order != (0..certs.len()).collect::<Vec<_>>() {
        warnings.push(ImportWarning {
            kind: WarningKind::ChainReordered,
            message: "the certificates were not in order (server certificate first, each followed by its issuer) and were reordered".into(),
        });
    }
    Ok(order)
}

fn key_type(leaf: &X509Certificate<'_>) -> Result<KeyType, ImportError> {
    let spki = leaf.public_key();
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => {
                return Err(refuse(
                    ImportErrorKind::CertInvalid,
                    "the certificate's RSA public key cannot be read",
                ));
            }
        };
        if bits < MIN_RSA_BITS {
            return Err(refuse(
                ImportErrorKind::KeyTooWeak,
                format!("the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"),
            ));
        }
        return Ok(KeyType::Rsa);
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => Ok(KeyType::Ecdsa),
            Some(c) => Err(refuse(
                ImportErrorKind::KeyUnsupported,
                format!("the ECDSA key is on the curve {c}; only P-256 and P-384 are accepted"),
            )),
            None => Err(refuse(
                ImportErrorKind::KeyUnsupported,
                "the ECDSA key does not name its curve",
            )),
        };
    }
    let name = match alg.to_id_string().as_str() {
        "1.3.101.112" => "Ed25519".to_owned(),
        "1.3.101.113" => "Ed448".to_owned(),
        other => other.to_owned(),
    };
    Err(refuse(
        ImportErrorKind::KeyUnsupported,
        format!(
            "the certificate's key is {name}; browsers accept only RSA and ECDSA (P-256, P-384) server certificates"
        ),
    ))
}

fn weak_signature(cert: &X509Certificate<'_>) -> bool {
    matches!(
        cert.signature_algorithm.algorithm.to_id_string().as_str(),
        // md2/md4/md5/sha1 with RSA, DSA with SHA-1, ECDSA with SHA-1
        "1.2.840.113549.1.1.2"
            | "1.2.840.113549.1.1.3"
            | "1.2.840.113549.1.1.4"
            | "1.2.840.113549.1.1.5"
            | "1.2.840.10040.4.3"
            | "1.2.840.10045.4.1"
            | "1.3.14.3.2.29"
    )
}

fn dns_sans(leaf: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = leaf.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => {
                Some(d.trim_end_matches('.').to_ascii_lowercase())
            }
            _ => None,
        })
        .collect()
}

/// Whether a SAN DNS name covers `hostname` as browsers match it: exactly, or as a wildcard
/// over exactly one leftmost label. A wildcard hostname needs the same wildcard SAN.
pub fn covers(san: &str, hostname: &Hostname) -> bool {
    let host = hostname.as_str();
    if san == host {
        return true;
    }
    if hostname.is_wildcard() {
        return false;
    }
    match (san.strip_prefix("*."), host.split_once('.')) {
        (Some(san_rest), Some((label, host_rest))) => {
            !label.is_empty() && san_rest == host_rest && san_rest.contains('.')
        }
        _ => false,
    }
}

fn check_usage(leaf: &X509Certificate<'_>) -> Result<(), ImportError> {
    if let Ok(Some(eku)) = leaf.extended_key_usage()
        && !eku.value.server_auth
        && !eku.value.any
    {
        return Err(refuse(
            ImportErrorKind::WrongUsage,
            "the certificate's extended key usage does not include TLS server authentication (serverAuth)",
        ));
    }
    if let Ok(Some(ku)) = leaf.key_usage()
        && !ku.value.digital_signature()
    {
        return Err(refuse(
            ImportErrorKind::WrongUsage,
            "the certificate's key usage does not include digitalSignature",
        ));
    }
    Ok(())
}

fn issuer_name(leaf: &X509Certificate<'_>) -> String {
    let issuer = leaf.issuer();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_owned)
    };
    first(&mut issuer.iter_common_name())
        .or_else(|| first(&mut issuer.iter_organization()))
        .unwrap_or_else(|| issuer.to_string())
}

/// Flags a chain that public roots do not trust.
fn trust(
    chain: &[CertificateDer<'static>],
    parsed: &[X509Certificate<'_>],
    ordered: &[usize],
    now: i64,
    warnings: &mut Vec<ImportWarning>,
) {
    let Ok(leaf) = webpki::EndEntityCert::try_from(&chain[0]) else {
        return;
    };
    let algs = webpki::ALL_VERIFICATION_ALGS;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now).unwrap_or(0),
    ));
    let trusted = leaf
        .verify_for_usage(
            algs,
            webpki_roots::TLS_SERVER_ROOTS,
            &chain[1..],
            time,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .is_ok();
    if trusted {
        return;
    }
    let top = &parsed[*ordered.last().unwrap_or(&0)];
    if ordered.len() == 1 && !is_self_issued(top) {
        warnings.push(ImportWarning {
            kind: WarningKind::ChainIncomplete,
            message: format!("the chain lacks the intermediate that issued the certificate ('{}'); some clients will fail to connect", top.issuer()),
        });
    } else {
        warnings.push(ImportWarning {
            kind: WarningKind::ChainUntrusted,
            message: format!("the chain is not trusted by public root CAs (issuer '{}'): fine behind a CDN that trusts it, such as an origin CA", issuer_name(&parsed[ordered[0]])),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hostname {
        Hostname::parse(s).expect("valid")
    }

    #[test]
    fn wildcard_coverage_follows_browsers() {
        assert!(covers("www.example.com", &h("www.example.com")));
        assert!(covers("*.example.com", &h("a.example.com")));
        assert!(!covers("*.example.com", &h("example.com")));
        assert!(!covers("*.example.com", &h("a.b.example.com")));
        assert!(covers("*.example.com", &h("*.example.com")));
        assert!(!covers("www.example.com", &h("*.example.com")));
        assert!(
            !covers("*.com", &h("example.com")),
            "no wildcard over a single label"
        );
        assert!(!covers("f*.example.com", &h("foo.example.com")));
    }

    #[test]
    fn every_error_kind_has_a_distinct_code_and_a_remediation() {
        let codes: HashSet<&str> = ImportErrorKind::ALL.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), ImportErrorKind::ALL.len());
        assert!(
            ImportErrorKind::ALL
                .iter()
                .all(|k| !k.remediation().is_empty())
        );
    }

    #[test]
    fn pem_encoding_wraps_at_64() {
        let p = pem("CERTIFICATE", &[7u8; 100]);
        let lines: Vec<&str> = p.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines.last().copied(), Some("-----END CERTIFICATE-----"));
        let back: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(p.as_bytes())
            .collect::<Result<_, _>>()
            .expect("parses");
        assert_eq!(back[0].as_ref(), &[7u8; 100][..]);
    }
}
