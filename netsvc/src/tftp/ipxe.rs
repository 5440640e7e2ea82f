//! The iPXE network boot programs, taken at run time from Debian's `ipxe` package.

use camino::{Utf8Path, Utf8PathBuf};

/// Where Debian's `ipxe` package installs its binaries.
pub const DEFAULT_IPXE_DIR: &str = "/usr/lib/ipxe";

/// The file names served: BIOS PXE chain-loader, full UEFI build, UEFI build on the firmware's
/// network driver.
pub const IPXE_FILES: [&str; 3] = ["undionly.kpxe", "ipxe.efi", "snponly.efi"];

/// An iPXE binary that is not installed.
#[derive(Debug, thiserror::Error)]
#[error("iPXE binary `{path}` is missing (install the Debian package `ipxe`)")]
pub struct IpxeError {
    /// The file looked for.
    pub path: Utf8PathBuf,
    /// Why it could not be used.
    #[source]
    pub err: std::io::Error,
}

/// The located iPXE binaries: each of [`IPXE_FILES`] exists as a regular file in `dir`.
#[derive(Debug, Clone)]
pub struct IpxeBinaries {
    dir: Utf8PathBuf,
}

impl IpxeBinaries {
    /// Checks that every file of [`IPXE_FILES`] is in `dir`.
    pub fn locate(dir: &Utf8Path) -> Result<Self, IpxeError> {
        for name in IPXE_FILES {
            let path = dir.join(name);
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => {}
                Ok(_) => {
                    return Err(IpxeError {
                        path,
                        err: std::io::Error::other("not a regular file"),
                    });
                }
                Err(err) => return Err(IpxeError { path, err }),
            }
        }
        Ok(IpxeBinaries {
            dir: dir.to_owned(),
        })
    }

    /// The path of `name` if it is one of the served iPXE binaries.
    pub fn path_of(&self, name: &str) -> Option<Utf8PathBuf> {
        IPXE_FILES.contains(&name).then(|| self.dir.join(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_name_the_package() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dir = Utf8Path::from_path(dir.path()).expect("utf-8 temp path");
        let err = IpxeBinaries::locate(dir).expect_err("empty dir");
        let msg = common::ErrorChain(&err).to_string();
        assert!(msg.contains("undionly.kpxe"), "{msg}");
        assert!(msg.contains("Debian package `ipxe`"), "{msg}");
    }

    #[test]
    fn finds_the_installed_package() {
        let b = IpxeBinaries::locate(Utf8Path::new(DEFAULT_IPXE_DIR)).expect("ipxe installed");
        assert_eq!(
            b.path_of("snponly.efi").as_deref(),
            Some(Utf8Path::new("/usr/lib/ipxe/snponly.efi"))
        );
        assert_eq!(b.path_of("ipxe.lkrn"), None);
    }
}
