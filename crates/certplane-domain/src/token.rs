//! Random tokens: the short public ones that tie DNS records to an app or org, and the secret
//! API tokens, which are stored only as hashes.

use std::fmt;

use rand::Rng;
use sha2::{Digest, Sha256};

/// Lower-case letters and digits without the look-alikes `0 o 1 l`: tokens are typed by hand
/// into DNS provider forms.
const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";

fn random_text(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// The public random token of an app or org (`x7k2q9ab`). It appears in the app's CNAME target,
/// ownership value and challenge target. It is not secret, but it is unguessable and the
/// platform never hands the same token out twice, so a record holding it names one app or org
/// for good.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OwnershipToken(String);

impl OwnershipToken {
    pub const LEN: usize = 8;

    /// A fresh random token. Uniqueness is the store's job: it keeps every token ever issued.
    pub fn generate() -> Self {
        Self(random_text(Self::LEN))
    }

    /// A token read back from storage.
    pub fn from_stored(token: String) -> Self {
        Self(token)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OwnershipToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A secret bearer token for the API (`cp_…`). Shown once, when created; stored as a
/// [`TokenHash`]. Its `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    const PREFIX: &'static str = "cp_";
    /// 40 characters of a 32-letter alphabet: 200 bits.
    const SECRET_LEN: usize = 40;

    pub fn generate() -> Self {
        Self(format!("{}{}", Self::PREFIX, random_text(Self::SECRET_LEN)))
    }

    /// A token presented by a client, taken as it is: a wrong one simply matches no hash.
    pub fn presented(token: &str) -> Self {
        Self(token.to_owned())
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash(hex(&Sha256::digest(self.0.as_bytes())))
    }

    /// The secret itself, for showing it once to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// SHA-256 of an API token, hex. The tokens carry 200 random bits, so a fast hash is enough:
/// there is nothing to brute-force.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenHash(String);

impl TokenHash {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ownership_tokens_use_the_alphabet() {
        let tokens: HashSet<String> = (0..1000).map(|_| OwnershipToken::generate().0).collect();
        assert_eq!(tokens.len(), 1000);
        for t in &tokens {
            assert_eq!(t.len(), OwnershipToken::LEN);
            assert!(t.bytes().all(|b| ALPHABET.contains(&b)), "{t}");
        }
    }

    #[test]
    fn api_tokens_hash_stably_and_never_debug_print() {
        let t = ApiToken::generate();
        assert!(t.expose().starts_with("cp_"));
        assert_eq!(t.expose().len(), 43);
        assert_eq!(t.hash(), ApiToken::presented(t.expose()).hash());
        assert_ne!(t.hash(), ApiToken::generate().hash());
        assert_eq!(t.hash().as_str().len(), 64);
        assert!(!format!("{t:?}").contains(&t.expose()[3..]));
    }
}
