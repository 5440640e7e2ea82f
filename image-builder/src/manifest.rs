//! `manifest.json`: template name and version, input hash, stage keys, installed packages with
//! versions, and the sha256 and size of every artifact.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::artifact::{Digested, hash_file};

use crate::build::{StageError, StageKeys};
use crate::keys::StageKey;
use crate::spec::{Kind, Spec};

/// An installed Debian package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Installed version.
    pub version: String,
}

/// One output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// File name inside the output directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Hex sha256 of the content.
    pub sha256: String,
}

/// Facts only some kinds of build have.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extra {
    /// The kernel command line installed in the boot loaders.
    pub kernel_cmdline: Option<String>,
    /// PARTUUID of the root partition.
    pub root_partuuid: Option<String>,
}

/// The content of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Template name.
    pub template: String,
    /// Template version.
    pub version: String,
    /// `disk`, `rootfs` or `ramdisk`.
    pub kind: String,
    /// Hash over every stage key.
    pub input_hash: String,
    /// The bootstrap stage key.
    pub bootstrap_key: String,
    /// Installed packages, sorted by name.
    pub packages: Vec<Package>,
    /// Output files, sorted by name.
    pub artifacts: Vec<Artifact>,
    /// Kind-specific facts.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Installed packages from a tree's dpkg status file (empty if it has none).
pub(crate) fn dpkg_packages(root: &Path) -> Vec<Package> {
    let text = std::fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap_or_default();
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut name = None;
        let mut version = None;
        let mut installed = false;
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim().ends_with(" installed");
            }
        }
        if let (Some(name), Some(version), true) = (name, version, installed) {
            out.push(Package { name, version });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Writes `dir/manifest.json`, listing every file in `dir`: with the digests in `known` (taken
/// from the stages that wrote them) or, for any other file, hashed now.
pub(crate) fn write(
    spec: &Spec,
    input_hash: &StageKey,
    keys: &StageKeys,
    packages: Vec<Package>,
    extra: Extra,
    known: Vec<Artifact>,
    dir: &Path,
) -> Result<Manifest, StageError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |err| StageError::Io { what, path, err }
    };
    let mut known: BTreeMap<String, Artifact> =
        known.into_iter().map(|a| (a.name.clone(), a)).collect();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io("list", dir))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n != "manifest.json")
        .collect();
    names.sort();
    let unknown: Vec<&String> = names.iter().filter(|n| !known.contains_key(*n)).collect();
    let hashed: Vec<std::io::Result<Digested>> = std::thread::scope(|s| {
        let handles: Vec<_> = unknown
            .iter()
            .map(|n| {
                let p = dir.join(n);
                s.spawn(move || hash_file(&p))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("invariant: hashing does not panic"))
            .collect()
    });
    for (name, h) in unknown.into_iter().zip(hashed) {
        let Digested { size, sha256 } = h.map_err(io("hash", &dir.join(name)))?;
        known.insert(
            name.clone(),
            Artifact {
                name: name.clone(),
                size,
                sha256,
            },
        );
    }
    let artifacts: Vec<Artifact> = names.iter().filter_map(|n| known.remove(n)).collect();
    let m = Manifest {
        template: spec.name.clone(),
        version: spec.version.clone(),
        kind: match spec.kind {
            Kind::Disk => "disk".into(),
            Kind::Rootfs => "rootfs".into(),
            Kind::Ramdisk => "ramdisk".into(),
        },
        input_hash: input_hash.0.clone(),
        bootstrap_key: keys.bootstrap.0.clone(),
        packages,
        artifacts,
        extra,
    };
    let mut json = serde_json::to_vec_pretty(&m).expect("invariant: manifest is plain data");
    json.push(b'\n');
    let path = dir.join("manifest.json");
    common::write_atomic(&path, &json, 0o644).map_err(io("write", &path))?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_parsing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("var/lib/dpkg");
        std::fs::create_dir_all(&p).expect("mkdir");
        std::fs::write(
            p.join("status"),
            "Package: zz\nStatus: install ok installed\nVersion: 1.0\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 2\n\nPackage: aa\nStatus: install ok installed\nVersion: 3:4-5\n",
        )
        .expect("write");
        let got = dpkg_packages(dir.path());
        assert_eq!(
            got,
            vec![
                Package {
                    name: "aa".into(),
                    version: "3:4-5".into()
                },
                Package {
                    name: "zz".into(),
                    version: "1.0".into()
                }
            ]
        );
    }
}
