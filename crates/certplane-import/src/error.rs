//! Why an import is refused, and what is flagged on an accepted one.

use std::fmt;

/// A refusal. Each kind has a stable [`code`](Self::code) and a [`remediation`](Self::remediation).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ImportError {
    pub kind: ImportErrorKind,
    pub message: String,
}

/// The kinds of refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ImportErrorKind {
    TooLarge,
    CertMissing,
    KeyMissing,
    PemInvalid,
    CertInvalid,
    KeyInvalid,
    KeyMultiple,
    KeyEncrypted,
    KeyMismatch,
    SanMissing,
    HostnameNotCovered,
    Expired,
    NotYetValid,
    KeyTooWeak,
    KeyUnsupported,
    SignatureWeak,
    LeafIsCa,
    ChainBroken,
    WrongUsage,
}

impl ImportErrorKind {
    pub const ALL: [Self; 19] = [
        Self::TooLarge,
        Self::CertMissing,
        Self::KeyMissing,
        Self::PemInvalid,
        Self::CertInvalid,
        Self::KeyInvalid,
        Self::KeyMultiple,
        Self::KeyEncrypted,
        Self::KeyMismatch,
        Self::SanMissing,
        Self::HostnameNotCovered,
        Self::Expired,
        Self::NotYetValid,
        Self::KeyTooWeak,
        Self::KeyUnsupported,
        Self::SignatureWeak,
        Self::LeafIsCa,
        Self::ChainBroken,
        Self::WrongUsage,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::TooLarge => "IMPORT_TOO_LARGE",
            Self::CertMissing => "CERT_MISSING",
            Self::KeyMissing => "KEY_MISSING",
            Self::PemInvalid => "PEM_INVALID",
            Self::CertInvalid => "CERT_INVALID",
            Self::KeyInvalid => "KEY_INVALID",
            Self::KeyMultiple => "KEY_MULTIPLE",
            Self::KeyEncrypted => "KEY_ENCRYPTED",
            Self::KeyMismatch => "KEY_MISMATCH",
            Self::SanMissing => "CERT_SAN_MISSING",
            Self::HostnameNotCovered => "CERT_HOSTNAME_MISMATCH",
            Self::Expired => "CERT_EXPIRED",
            Self::NotYetValid => "CERT_NOT_YET_VALID",
            Self::KeyTooWeak => "KEY_TOO_WEAK",
            Self::KeyUnsupported => "KEY_UNSUPPORTED",
            Self::SignatureWeak => "SIGNATURE_WEAK",
            Self::LeafIsCa => "CERT_IS_CA",
            Self::ChainBroken => "CHAIN_BROKEN",
            Self::WrongUsage => "CERT_WRONG_USAGE",
        }
    }

    pub fn remediation(self) -> &'static str {
        match self {
            Self::TooLarge => {
                "Send only the certificate chain (leaf first) and its private key; a chain is a few kilobytes."
            }
            Self::CertMissing => {
                "Pass the certificate chain in PEM: '-----BEGIN CERTIFICATE-----' blocks, your certificate first."
            }
            Self::KeyMissing => {
                "Pass the private key in PEM ('-----BEGIN PRIVATE KEY-----', 'RSA PRIVATE KEY' or 'EC PRIVATE KEY')."
            }
            Self::PemInvalid => {
                "A PEM block is damaged (bad base64 or a missing END line): export the file again rather than editing it by hand."
            }
            Self::CertInvalid => {
                "A certificate block does not hold a valid X.509 certificate: export it again from your CA."
            }
            Self::KeyInvalid => {
                "The private key could not be read: export it as PKCS#8 with `openssl pkey -in key.pem -out key-pkcs8.pem`."
            }
            Self::KeyMultiple => "Pass exactly one private key: the one of the certificate.",
            Self::KeyEncrypted => {
                "Decrypt the key first: `openssl pkey -in encrypted.pem -out key.pem` (it asks for the passphrase)."
            }
            Self::KeyMismatch => {
                "Pass the private key that belongs to the certificate (compare `openssl x509 -noout -pubkey -in cert.pem` with `openssl pkey -pubout -in key.pem`)."
            }
            Self::SanMissing => {
                "Browsers ignore the Common Name: get a certificate that lists the hostname in its Subject Alternative Name."
            }
            Self::HostnameNotCovered => {
                "Get a certificate whose Subject Alternative Names include this hostname (a '*.example.com' name covers 'a.example.com', not 'example.com' or 'a.b.example.com')."
            }
            Self::Expired => "Renew the certificate with your CA and import the new one.",
            Self::NotYetValid => {
                "Import it once its validity starts, or check the clock of the machine that issued it."
            }
            Self::KeyTooWeak => "Use an RSA key of at least 2048 bits, or ECDSA P-256/P-384.",
            Self::KeyUnsupported => {
                "Use RSA (2048 bits or more) or ECDSA on P-256 or P-384; browsers do not accept Ed25519 certificates, and other curves are not supported."
            }
            Self::SignatureWeak => {
                "Get a certificate signed with SHA-256 or stronger; SHA-1 and MD5 signatures are rejected by browsers."
            }
            Self::LeafIsCa => {
                "Import your server certificate (not the CA certificate) first in the chain."
            }
            Self::ChainBroken => {
                "Put the certificates in order, each signed by the next: your certificate, then its intermediates (the root may be left out)."
            }
            Self::WrongUsage => {
                "Get a certificate issued for TLS servers (extended key usage serverAuth, key usage digitalSignature)."
            }
        }
    }
}

impl ImportError {
    pub(crate) fn new(kind: ImportErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    pub fn remediation(&self) -> &'static str {
        self.kind.remediation()
    }
}

/// Something flagged on an accepted import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportWarning {
    pub kind: WarningKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WarningKind {
    /// The chain does not lead to a publicly trusted root (a CDN's origin CA, a private CA).
    ChainUntrusted,
    /// The leaf's issuer is not in the chain and cannot be found among public roots.
    ChainIncomplete,
    /// The root was included and has been dropped (clients must already have it).
    RootDropped,
    /// The certificates were not in order (leaf first); they were reordered.
    ChainReordered,
}

impl WarningKind {
    pub fn code(self) -> &'static str {
        match self {
            Self::ChainUntrusted => "CHAIN_UNTRUSTED",
            Self::ChainIncomplete => "CHAIN_INCOMPLETE",
            Self::RootDropped => "ROOT_DROPPED",
            Self::ChainReordered => "CHAIN_REORDERED",
        }
    }
}

impl fmt::Display for ImportWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)
    }
}
