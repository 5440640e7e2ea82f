//! Secrets: the admin API token and per-host one-time secrets. Only their SHA-256 hashes are
//! stored; the plaintext never reaches a log (`Debug` is redacted, there is no `Display`).

use std::fmt;

use sha2::{Digest, Sha256};

/// A secret token in plaintext. `Debug` prints `Secret(<redacted>)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// 32 random bytes from the OS, hex-encoded.
    pub fn generate() -> Self {
        let mut buf = [0u8; 32];
        getrandom::fill(&mut buf).expect("invariant: the OS random source is available");
        Secret(hex::encode(buf))
    }

    /// Wraps a secret received from outside (a request header, the token file).
    pub fn from_plaintext(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The plaintext, to hand to its owner exactly once (an iPXE script, the token file).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its SHA-256 hash, the only form that is stored.
    pub fn hash(&self) -> SecretHash {
        SecretHash(hex::encode(Sha256::digest(self.0.as_bytes())))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The hex SHA-256 hash of a [`Secret`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretHash(String);

impl SecretHash {
    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the hashes differ.
    pub fn ct_eq(&self, other: &SecretHash) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_hash_and_redact() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 64);
        assert!(!format!("{a:?}").contains(a.expose()));
        assert!(a.hash().ct_eq(&Secret::from_plaintext(a.expose()).hash()));
        assert!(!a.hash().ct_eq(&b.hash()));
        assert_ne!(a.hash().as_str(), a.expose());
    }
}
