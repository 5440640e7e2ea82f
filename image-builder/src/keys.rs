//! Stage cache keys: each hashes the previous stage's key plus this stage's own inputs, so a
//! change to a rendered file changes the customise key and everything after it, never the
//! bootstrap key.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Bump when a stage's implementation changes what it produces from the same inputs.
const FORMAT: &str = "image-builder/2";

/// A stage cache key (hex sha256).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StageKey(pub String);

impl std::fmt::Display for StageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hashes `stage`, the previous key (if any) and `inputs` (as canonical JSON).
pub(crate) fn stage_key<T: Serialize>(
    stage: &str,
    prev: Option<&StageKey>,
    inputs: &T,
) -> StageKey {
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update([0]);
    h.update(stage.as_bytes());
    h.update([0]);
    if let Some(p) = prev {
        h.update(p.0.as_bytes());
    }
    h.update([0]);
    let json = serde_json::to_vec(inputs).expect("invariant: stage inputs are plain data");
    h.update(&json);
    StageKey(hex::encode(h.finalize()))
}

/// Hex sha256 of bytes.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}
