//! Certificate statuses and delete scopes.

use std::fmt;

/// Where a hostname's certificate stands. Stored as its [`as_str`](Self::as_str) text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CertificateStatus {
    /// Nobody has proven yet that the hostname points at this app.
    PendingOwnership,
    /// Ownership is proven; the CA's challenge has not succeeded yet.
    PendingValidation,
    /// An order with the CA is in progress.
    Issuing,
    /// A valid certificate is being served.
    Active,
    /// The certificate served last has expired.
    Expired,
    /// Issuance failed; see the validation errors.
    Failed,
}

impl CertificateStatus {
    pub const ALL: [Self; 6] = [
        Self::PendingOwnership,
        Self::PendingValidation,
        Self::Issuing,
        Self::Active,
        Self::Expired,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingOwnership => "pending_ownership",
            Self::PendingValidation => "pending_validation",
            Self::Issuing => "issuing",
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for CertificateStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a delete removes from a hostname.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteScope {
    /// The hostname and every certificate on it.
    All,
    /// The ACME requirement and ACME certificates; a custom certificate stays.
    Acme,
    /// The custom certificate; ACME stays.
    Custom,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_round_trips() {
        for s in CertificateStatus::ALL {
            assert_eq!(CertificateStatus::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).expect("serialises");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert_eq!(CertificateStatus::parse("bogus"), None);
    }
}
