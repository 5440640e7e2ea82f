//! `manifest.json`: template name and version, input hash, stage keys, installed packages with
//! versions, and the sha256 and size of every artifact.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex::encode(h.finalize())))
}

/// Hashes every file in `dir` and writes `dir/manifest.json`.
pub(crate) fn write(
    spec: &Spec,
    input_hash: &StageKey,
    keys: &StageKeys,
    packages: Vec<Package>,
    extra: Extra,
    dir: &Path,
) -> Result<Manifest, StageError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |err| StageError::Io { what, path, err }
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io("list", dir))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n != "manifest.json")
        .collect();
    names.sort();
    // Multi-GB artifacts: hash them in parallel.
    let hashed: Vec<std::io::Result<(u64, String)>> = std::thread::scope(|s| {
        let handles: Vec<_> = names
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
    let mut artifacts = Vec::new();
    for (name, h) in names.into_iter().zip(hashed) {
        let p = dir.join(&name);
        let (size, sha256) = h.map_err(io("hash", &p))?;
        artifacts.push(Artifact { name, size, sha256 });
    }
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
