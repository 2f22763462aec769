//! How private keys travel to edges: sealed under a key of their own stream.
//!
//! The edge makes an ephemeral X25519 key pair per connection and sends its public half with
//! the stream request; the control plane makes its own for that stream and sends its public half
//! in `Hello`. Both derive the same AES-256-GCM key with HKDF-SHA256 over the shared secret and
//! both public keys. A recording of a stream does not hold a usable key, and nothing sealed for
//! one stream opens on another. What this does not do: authenticate the control plane, or hide
//! the edge token, which authenticates the request. Whoever reads the token off a plain-HTTP
//! connection can open a stream of their own, so between machines the control plane must be
//! reached over HTTPS (the edge warns when it is not).

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf;
use zeroize::Zeroizing;

const SALT: &[u8] = b"certplane edge stream v1";
const NONCE_LEN: usize = 12;

/// The edge's half of a stream's key agreement.
pub struct EdgeKeyPair {
    private: EphemeralPrivateKey,
    public: Vec<u8>,
}

impl std::fmt::Debug for EdgeKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeKeyPair").finish_non_exhaustive()
    }
}

impl EdgeKeyPair {
    pub fn generate() -> Result<Self, TransportError> {
        let rng = ring::rand::SystemRandom::new();
        let private =
            EphemeralPrivateKey::generate(&X25519, &rng).map_err(|_| TransportError::Random)?;
        let public = private
            .compute_public_key()
            .map_err(|_| TransportError::Random)?
            .as_ref()
            .to_vec();
        Ok(Self { private, public })
    }

    /// The public key to send with the stream request (base64).
    pub fn public_base64(&self) -> String {
        B64.encode(&self.public)
    }

    /// The stream key, from the control plane's public key in `Hello`.
    pub fn agree(self, server_key: &str) -> Result<StreamKey, TransportError> {
        let server = decode_public(server_key)?;
        derive(self.private, &server, &self.public, &server)
    }
}

/// The control plane's side: the stream key and the public key to put in `Hello` (base64).
pub fn server_agree(edge_key: &str) -> Result<(StreamKey, String), TransportError> {
    let edge = decode_public(edge_key)?;
    let rng = ring::rand::SystemRandom::new();
    let private =
        EphemeralPrivateKey::generate(&X25519, &rng).map_err(|_| TransportError::Random)?;
    let public = private
        .compute_public_key()
        .map_err(|_| TransportError::Random)?
        .as_ref()
        .to_vec();
    let key = derive(private, &edge, &edge, &public)?;
    Ok((key, B64.encode(&public)))
}

fn decode_public(text: &str) -> Result<Vec<u8>, TransportError> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|_| TransportError::BadPublicKey)?;
    if bytes.len() != 32 {
        return Err(TransportError::BadPublicKey);
    }
    Ok(bytes)
}

fn derive(
    private: EphemeralPrivateKey,
    peer: &[u8],
    edge_public: &[u8],
    server_public: &[u8],
) -> Result<StreamKey, TransportError> {
    let peer = UnparsedPublicKey::new(&X25519, peer);
    let mut okm = Zeroizing::new([0u8; 32]);
    agreement::agree_ephemeral(private, &peer, |shared| {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(shared);
        let info = [edge_public, server_public];
        prk.expand(&info, KeyLen)
            .and_then(|material| material.fill(okm.as_mut()))
    })
    .map_err(|_| TransportError::BadPublicKey)?
    .map_err(|_| TransportError::BadPublicKey)?;
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(okm.as_ref()));
    Ok(StreamKey { cipher })
}

struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

/// One stream's key: seals private keys on the control plane, opens them on the edge.
#[derive(Clone)]
pub struct StreamKey {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamKey").finish_non_exhaustive()
    }
}

impl StreamKey {
    /// `base64(nonce || ciphertext)`, bound to `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, TransportError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| TransportError::Seal)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        Ok(B64.encode(blob))
    }

    /// Opens what [`StreamKey::seal`] made with the same stream key and `aad`.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, TransportError> {
        let blob = B64.decode(sealed).map_err(|_| TransportError::Open)?;
        if blob.len() < NONCE_LEN {
            return Err(TransportError::Open);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| TransportError::Open)
    }
}

/// Why a key could not be agreed, sealed or opened. Never carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("no randomness for a key pair")]
    Random,
    #[error("the peer's X25519 public key is not 32 bytes of base64")]
    BadPublicKey,
    #[error("sealing failed")]
    Seal,
    #[error("a sealed key does not open with this stream's key (wrong stream or context)")]
    Open,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_agree_and_only_the_right_stream_and_context_open() {
        let edge = EdgeKeyPair::generate().expect("key pair");
        let (server_key, server_public) = server_agree(&edge.public_base64()).expect("server side");
        let edge_key = edge.agree(&server_public).expect("edge side");
        let sealed = server_key
            .seal(b"private key der", b"edge|a.example|custom|ecdsa")
            .expect("seals");
        assert!(!sealed.contains("private"));
        let opened = edge_key
            .open(&sealed, b"edge|a.example|custom|ecdsa")
            .expect("opens");
        assert_eq!(opened.as_slice(), b"private key der");
        // Another context, or another stream's key, does not open it.
        assert!(matches!(
            edge_key.open(&sealed, b"edge|b.example|custom|ecdsa"),
            Err(TransportError::Open)
        ));
        let other = EdgeKeyPair::generate().expect("key pair");
        let (_, other_public) = server_agree(&other.public_base64()).expect("server side");
        let other_key = other.agree(&other_public).expect("edge side");
        assert!(
            other_key
                .open(&sealed, b"edge|a.example|custom|ecdsa")
                .is_err()
        );
        // Garbage is refused, not panicked on.
        assert!(edge_key.open("!!", b"").is_err());
        assert!(edge_key.open("AAAA", b"").is_err());
        assert!(matches!(
            server_agree("c2hvcnQ="),
            Err(TransportError::BadPublicKey)
        ));
    }
}
