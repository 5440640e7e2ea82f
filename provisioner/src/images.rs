//! The image store: golden images imported from image-builder output directories.
//!
//! An import reads `manifest.json`, copies every listed artifact into a staging directory beside
//! the store while hashing the bytes it copies, and renames the staging directory into place only
//! when every size and SHA-256 matches. A crash leaves at most a `.staging-*` directory, which
//! the next import of any image removes.
//!
//! The manifest format accepted (unknown keys are ignored, so image-builder may add more):
//! ```json
//! { "template": "debian-bookworm-server",
//!   "artifacts": [ { "name": "disk.raw", "sha256": "<64 hex>", "size": 2147483648 } ] }
//! ```

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::api::{Artifact, ImageInfo, ImageName, ParseNameError, Timestamp};

/// Name of the manifest in an image directory.
pub const MANIFEST: &str = "manifest.json";

/// Errors of an image import.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// `manifest.json` could not be read.
    #[error("failed to read manifest `{path}`")]
    ReadManifest {
        /// The manifest.
        path: PathBuf,
        /// Cause.
        #[source]
        err: io::Error,
    },
    /// `manifest.json` is not valid.
    #[error("invalid manifest `{path}`")]
    ParseManifest {
        /// The manifest.
        path: PathBuf,
        /// Cause.
        #[source]
        err: serde_json::Error,
    },
    /// Neither the request nor the manifest names the image.
    #[error("manifest `{path}` has no name and none was given")]
    NoName {
        /// The manifest.
        path: PathBuf,
    },
    /// The manifest's name is not a valid image name.
    #[error("manifest `{path}` has an invalid image name")]
    BadName {
        /// The manifest.
        path: PathBuf,
        /// Cause.
        #[source]
        err: ParseNameError,
    },
    /// The manifest lists no artifacts.
    #[error("manifest `{path}` lists no artifacts")]
    NoArtifacts {
        /// The manifest.
        path: PathBuf,
    },
    /// An artifact path is not a plain file name inside the image directory.
    #[error("artifact path `{artifact}` in image {name} is not a plain file name")]
    BadArtifactPath {
        /// The image.
        name: ImageName,
        /// The offending path.
        artifact: String,
    },
    /// An artifact's checksum is not 64 hex digits.
    #[error("artifact `{artifact}` in image {name} has a malformed sha256")]
    BadChecksum {
        /// The image.
        name: ImageName,
        /// The artifact.
        artifact: String,
    },
    /// An artifact could not be read or copied.
    #[error("failed to copy artifact `{path}` into the image store")]
    Copy {
        /// The source file.
        path: PathBuf,
        /// Cause.
        #[source]
        err: io::Error,
    },
    /// An artifact's size differs from the manifest.
    #[error("artifact `{path}` is {actual} bytes, manifest says {expected}")]
    SizeMismatch {
        /// The source file.
        path: PathBuf,
        /// From the manifest.
        expected: u64,
        /// On disk.
        actual: u64,
    },
    /// An artifact's SHA-256 differs from the manifest.
    #[error("artifact `{path}` has sha256 {actual}, manifest says {expected}")]
    ChecksumMismatch {
        /// The source file.
        path: PathBuf,
        /// From the manifest.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The image store directory could not be written.
    #[error("failed to write image store `{path}`")]
    Store {
        /// The path being written.
        path: PathBuf,
        /// Cause.
        #[source]
        err: io::Error,
    },
}

/// `manifest.json` as image-builder writes it (`template`, artifacts with `name`); the older
/// `name`/`path` spelling is accepted too.
#[derive(Deserialize)]
struct Manifest {
    #[serde(default, alias = "template")]
    name: Option<String>,
    #[serde(default)]
    artifacts: Vec<Artifact>,
}

/// A directory holding one subdirectory per imported image.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// An image store rooted at `root` (created on first import).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ImageStore { root: root.into() }
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of an imported image.
    pub fn image_dir(&self, name: &ImageName) -> PathBuf {
        self.root.join(name.as_str())
    }

    /// Reads and checks `dir/manifest.json`: the image's name (`name` overrides the manifest's)
    /// and its artifacts.
    pub fn read_manifest(
        &self,
        dir: &Path,
        name: Option<ImageName>,
    ) -> Result<(ImageName, Vec<Artifact>), ImageError> {
        let manifest_path = dir.join(MANIFEST);
        let text = fs::read(&manifest_path).map_err(|err| ImageError::ReadManifest {
            path: manifest_path.clone(),
            err,
        })?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|err| ImageError::ParseManifest {
                path: manifest_path.clone(),
                err,
            })?;
        let name = match (name, manifest.name) {
            (Some(n), _) => n,
            (None, Some(n)) => n.parse().map_err(|err| ImageError::BadName {
                path: manifest_path.clone(),
                err,
            })?,
            (None, None) => {
                return Err(ImageError::NoName {
                    path: manifest_path,
                });
            }
        };
        if manifest.artifacts.is_empty() {
            return Err(ImageError::NoArtifacts {
                path: manifest_path,
            });
        }
        for a in &manifest.artifacts {
            let plain = Path::new(&a.path)
                .file_name()
                .is_some_and(|f| f == a.path.as_str())
                && a.path != MANIFEST
                && !a.path.starts_with('.');
            if !plain {
                return Err(ImageError::BadArtifactPath {
                    name,
                    artifact: a.path.clone(),
                });
            }
            if a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ImageError::BadChecksum {
                    name,
                    artifact: a.path.clone(),
                });
            }
        }
        Ok((name, manifest.artifacts))
    }

    /// Copies the artifacts of `dir` (from [`ImageStore::read_manifest`]) into the store as
    /// image `name`, verifying every size and SHA-256. The caller ensures the name is not taken
    /// in the inventory; a directory of that name left by a crashed import is replaced.
    pub fn install(
        &self,
        dir: &Path,
        name: &ImageName,
        artifacts: &[Artifact],
        now: Timestamp,
    ) -> Result<ImageInfo, ImageError> {
        let name = name.clone();
        let store_err = |path: &Path| {
            let path = path.to_owned();
            move |err| ImageError::Store { path, err }
        };
        fs::create_dir_all(&self.root).map_err(store_err(&self.root))?;
        self.remove_stale_staging();
        let staging = self
            .root
            .join(format!(".staging-{name}-{}", uuid::Uuid::new_v4()));
        fs::create_dir(&staging).map_err(store_err(&staging))?;
        let result = (|| {
            let mut copied = Vec::new();
            for a in artifacts {
                copy_verified(&dir.join(&a.path), &staging.join(&a.path), a)?;
                copied.push(Artifact {
                    path: a.path.clone(),
                    sha256: a.sha256.to_ascii_lowercase(),
                    size: a.size,
                });
            }
            let info = ImageInfo {
                name: name.clone(),
                artifacts: copied,
                imported_at: now,
            };
            let manifest = serde_json::json!({ "name": info.name, "artifacts": info.artifacts });
            let m_path = staging.join(MANIFEST);
            common::write_atomic(&m_path, manifest.to_string().as_bytes(), 0o644)
                .map_err(store_err(&m_path))?;
            let dest = self.image_dir(&name);
            if dest.exists() {
                // Left by an import that crashed after its rename but before the inventory
                // recorded it: the caller checked the inventory does not know this name.
                fs::remove_dir_all(&dest).map_err(store_err(&dest))?;
            }
            fs::rename(&staging, &dest).map_err(store_err(&dest))?;
            File::open(&self.root)
                .and_then(|d| d.sync_all())
                .map_err(store_err(&self.root))?;
            Ok(info)
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        result
    }

    /// [`ImageStore::read_manifest`] then [`ImageStore::install`].
    #[cfg(test)]
    fn import(
        &self,
        dir: &Path,
        name: Option<ImageName>,
        now: Timestamp,
    ) -> Result<ImageInfo, ImageError> {
        let (name, artifacts) = self.read_manifest(dir, name)?;
        self.install(dir, &name, &artifacts, now)
    }

    fn remove_stale_staging(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let stale = e.file_name().to_string_lossy().starts_with(".staging-");
            // Another import may be running right now: only remove directories an hour old.
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600);
            if stale && old {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Copies `src` to `dst`, hashing the copied bytes, and checks size and SHA-256.
fn copy_verified(src: &Path, dst: &Path, want: &Artifact) -> Result<(), ImageError> {
    let copy_err = |err| ImageError::Copy {
        path: src.to_owned(),
        err,
    };
    let mut input = File::open(src).map_err(copy_err)?;
    let mut output = File::create(dst).map_err(|err| ImageError::Store {
        path: dst.to_owned(),
        err,
    })?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(copy_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output
            .write_all(&buf[..n])
            .map_err(|err| ImageError::Store {
                path: dst.to_owned(),
                err,
            })?;
        size += n as u64;
    }
    if size != want.size {
        return Err(ImageError::SizeMismatch {
            path: src.to_owned(),
            expected: want.size,
            actual: size,
        });
    }
    let actual = hex::encode(hasher.finalize());
    if !actual.eq_ignore_ascii_case(&want.sha256) {
        return Err(ImageError::ChecksumMismatch {
            path: src.to_owned(),
            expected: want.sha256.clone(),
            actual,
        });
    }
    output.sync_all().map_err(|err| ImageError::Store {
        path: dst.to_owned(),
        err,
    })?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes an image directory with the given files and a manifest listing them, spelled as
    /// image-builder writes it (`template`, artifact `name`).
    pub(crate) fn make_image_dir(dir: &Path, name: &str, files: &[(&str, &[u8])]) {
        fs::create_dir_all(dir).unwrap();
        let mut artifacts = Vec::new();
        for (f, data) in files {
            fs::write(dir.join(f), data).unwrap();
            artifacts.push(serde_json::json!({
                "name": f, "sha256": hex::encode(Sha256::digest(data)), "size": data.len(),
                "kind": "extra keys are ignored",
            }));
        }
        let m = serde_json::json!({ "template": name, "version": "1", "kind": "disk",
            "artifacts": artifacts, "packages": [] });
        fs::write(dir.join(MANIFEST), m.to_string()).unwrap();
    }

    #[test]
    fn import_verifies_and_copies() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("out");
        make_image_dir(
            &src,
            "img",
            &[("disk.raw", b"disk bytes"), ("rootfs.tar.zst", b"tar")],
        );
        let store = ImageStore::new(tmp.path().join("images"));
        let info = store.import(&src, None, Timestamp(1)).unwrap();
        assert_eq!(info.name.as_str(), "img");
        assert_eq!(info.artifacts.len(), 2);
        let dest = store.image_dir(&info.name);
        assert_eq!(fs::read(dest.join("disk.raw")).unwrap(), b"disk bytes");
        assert!(dest.join(MANIFEST).exists());
        // Renamed on import.
        let other = store
            .import(&src, Some("other".parse().unwrap()), Timestamp(1))
            .unwrap();
        assert_eq!(other.name.as_str(), "other");
        let names: Vec<_> = fs::read_dir(store.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(".staging")),
            "{names:?}"
        );
    }

    #[test]
    fn corrupted_artifact_is_refused_and_nothing_lands() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("out");
        make_image_dir(&src, "img", &[("disk.raw", b"disk bytes")]);
        fs::write(src.join("disk.raw"), b"disk bytez").unwrap();
        let store = ImageStore::new(tmp.path().join("images"));
        let err = store.import(&src, None, Timestamp(1)).unwrap_err();
        assert!(matches!(err, ImageError::ChecksumMismatch { .. }), "{err}");
        fs::write(src.join("disk.raw"), b"disk").unwrap();
        let err = store.import(&src, None, Timestamp(1)).unwrap_err();
        assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err}");
        assert_eq!(fs::read_dir(store.root()).unwrap().count(), 0);
    }

    #[test]
    fn bad_manifests_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore::new(tmp.path().join("images"));
        let src = tmp.path().join("out");
        fs::create_dir_all(&src).unwrap();
        let err = store.import(&src, None, Timestamp(1)).unwrap_err();
        assert!(matches!(err, ImageError::ReadManifest { .. }), "{err}");
        let cases = [
            (r#"{"artifacts": 3}"#, "ParseManifest"),
            (r#"{"artifacts": []}"#, "NoName"),
            (r#"{"name": "Bad Name", "artifacts": []}"#, "BadName"),
            (r#"{"name": "x", "artifacts": []}"#, "NoArtifacts"),
            (
                r#"{"name": "x", "artifacts": [{"path": "../etc/passwd", "sha256": "00", "size": 1}]}"#,
                "BadArtifactPath",
            ),
            (
                r#"{"name": "x", "artifacts": [{"path": "d", "sha256": "zz", "size": 1}]}"#,
                "BadChecksum",
            ),
        ];
        for (m, want) in cases {
            fs::write(src.join(MANIFEST), m).unwrap();
            let err = store.import(&src, None, Timestamp(1)).unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{m}: {err:?}");
        }
    }
}
