//! Private keys at rest.
//!
//! Every private key the platform stores is sealed with AES-256-GCM under a master key; the
//! master key's id is stored beside the ciphertext, so keys can be rotated: a new master key
//! becomes current and `certplane keys rotate` re-seals every stored key under it. The row a
//! key belongs to is bound in as associated data, so a ciphertext moved to another row does not
//! open.
//!
//! Master keys live in a file (`<data_dir>/master-keys`, mode 0600, created on first start):
//! one `<id> <base64 key>` per line, the last line current. `CERTPLANE_MASTER_KEY` (base64 of 32
//! bytes) may supply a single key instead, for deployments that inject secrets by environment.

#![forbid(unsafe_code)]

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;

/// The master keys, the last one current.
pub struct MasterKeys {
    keys: Vec<(String, Zeroizing<[u8; 32]>)>,
    file: Option<PathBuf>,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("MasterKeys")
            .field("ids", &ids)
            .field("file", &self.file)
            .finish()
    }
}

/// A sealed secret: the id of the master key, and nonce followed by ciphertext and tag.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub blob: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({}, {} bytes)", self.key_id, self.blob.len())
    }
}

impl MasterKeys {
    /// Reads the key file at `path`, creating it with one fresh key (mode 0600) when missing.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretsError> {
        if !path.exists() {
            let mut keys = Self {
                keys: Vec::new(),
                file: Some(path.to_owned()),
            };
            keys.add_key()?;
            return Ok(keys);
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| SecretsError::File(path.to_owned(), e))?,
        );
        let mut keys = Vec::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let bad = || SecretsError::Malformed(format!("{} line {}", path.display(), n + 1));
            let (id, b64) = line.trim().split_once(' ').ok_or_else(bad)?;
            keys.push((id.to_owned(), decode_key(b64).ok_or_else(bad)?));
        }
        if keys.is_empty() {
            return Err(SecretsError::Malformed(format!(
                "{} holds no key",
                path.display()
            )));
        }
        Ok(Self {
            keys,
            file: Some(path.to_owned()),
        })
    }

    /// One key from `CERTPLANE_MASTER_KEY`'s value (base64 of 32 bytes).
    pub fn from_env_value(value: &str) -> Result<Self, SecretsError> {
        let key = decode_key(value.trim()).ok_or_else(|| {
            SecretsError::Malformed(
                "CERTPLANE_MASTER_KEY must be the base64 of 32 random bytes".into(),
            )
        })?;
        Ok(Self {
            keys: vec![("env".to_owned(), key)],
            file: None,
        })
    }

    /// The current key's id.
    pub fn current_id(&self) -> &str {
        self.keys.last().map_or("", |(id, _)| id.as_str())
    }

    /// Every key's id, oldest first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// Appends a fresh key to the file and makes it current; returns its id.
    pub fn add_key(&mut self) -> Result<String, SecretsError> {
        let path = self.file.clone().ok_or(SecretsError::NotRotatable)?;
        let key = Aes256Gcm::generate_key(OsRng);
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(key.as_slice());
        let id = format!("k{}", self.keys.len() + 1);
        let line = Zeroizing::new(format!("{id} {}\n", STANDARD.encode(bytes.as_slice())));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| SecretsError::File(path.clone(), e))?;
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| SecretsError::File(path.clone(), e))?;
        self.keys.push((id.clone(), bytes));
        Ok(id)
    }

    fn cipher(&self, id: &str) -> Result<Aes256Gcm, SecretsError> {
        let (_, key) = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or_else(|| SecretsError::UnknownKey(id.to_owned()))?;
        Ok(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.as_slice())))
    }

    /// Seals `plaintext` under the current key, bound to `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed, SecretsError> {
        let id = self.current_id().to_owned();
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher(&id)?
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| SecretsError::Crypto)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        Ok(Sealed { key_id: id, blob })
    }

    /// Opens a sealed secret; fails when the key is unknown, or the blob or `aad` altered.
    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        if sealed.blob.len() < NONCE_LEN {
            return Err(SecretsError::Crypto);
        }
        let (nonce, ciphertext) = sealed.blob.split_at(NONCE_LEN);
        self.cipher(&sealed.key_id)?
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SecretsError::Crypto)
    }
}

fn decode_key(b64: &str) -> Option<Zeroizing<[u8; 32]>> {
    let bytes = Zeroizing::new(STANDARD.decode(b64.trim()).ok()?);
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return None;
    }
    key.copy_from_slice(&bytes);
    Some(key)
}

/// Why sealing or opening failed. Never carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    #[error("cannot use the master key file {0}: {1}")]
    File(PathBuf, std::io::Error),
    #[error("malformed master key: {0}")]
    Malformed(String),
    #[error("the master key {0:?} that sealed this secret is not configured")]
    UnknownKey(String),
    #[error("a sealed secret did not open: it was altered, or sealed for another record")]
    Crypto,
    #[error(
        "master keys given by environment cannot be rotated here; set a new CERTPLANE_MASTER_KEY and re-import"
    )]
    NotRotatable,
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn seal_open_rotate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master-keys");
        let mut keys = MasterKeys::load_or_create(&path).expect("created");
        assert_eq!(
            std::fs::metadata(&path).expect("file").permissions().mode() & 0o777,
            0o600
        );
        let sealed = keys
            .seal(b"secret key", b"www.example.com|custom")
            .expect("sealed");
        assert_eq!(sealed.key_id, "k1");
        assert!(!sealed.blob.windows(10).any(|w| w == b"secret key"));
        assert_eq!(
            keys.open(&sealed, b"www.example.com|custom")
                .expect("opens")
                .as_slice(),
            b"secret key"
        );
        assert!(
            matches!(
                keys.open(&sealed, b"other.example.com|custom"),
                Err(SecretsError::Crypto)
            ),
            "bound to its row"
        );
        let mut tampered = sealed.clone();
        let last = tampered.blob.len() - 1;
        tampered.blob[last] ^= 1;
        assert!(keys.open(&tampered, b"www.example.com|custom").is_err());

        assert_eq!(keys.add_key().expect("rotated"), "k2");
        let reloaded = MasterKeys::load_or_create(&path).expect("reloads");
        assert_eq!(reloaded.ids(), vec!["k1", "k2"]);
        assert_eq!(reloaded.current_id(), "k2");
        assert_eq!(
            reloaded
                .open(&sealed, b"www.example.com|custom")
                .expect("old key still opens")
                .as_slice(),
            b"secret key"
        );
        assert_eq!(reloaded.seal(b"x", b"").expect("sealed").key_id, "k2");
    }

    #[test]
    fn env_keys_and_malformed_files() {
        let key = STANDARD.encode([9u8; 32]);
        let keys = MasterKeys::from_env_value(&key).expect("env key");
        let sealed = keys.seal(b"k", b"a").expect("sealed");
        assert_eq!(keys.open(&sealed, b"a").expect("opens").as_slice(), b"k");
        assert!(MasterKeys::from_env_value("short").is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad");
        std::fs::write(&path, "k1 notbase64!\n").expect("write");
        assert!(matches!(
            MasterKeys::load_or_create(&path),
            Err(SecretsError::Malformed(_))
        ));
        assert!(!format!("{keys:?}").contains(&key));
    }
}
