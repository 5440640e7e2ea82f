//! The virtual tree a TFTP client sees: per-host generated files, the boot directory, then the
//! iPXE binaries.

use std::fs::File;
use std::net::IpAddr;
use std::sync::Arc;

use camino::{Utf8Path, Utf8PathBuf};

use super::ipxe::IpxeBinaries;
use super::policy::{self, PathError};

/// Files generated per host, which the control node provides.
///
/// Looked up before the boot directory, so a host can get its own version of any file.
pub trait HostFiles: Send + Sync + 'static {
    /// The content of `path` (relative, `/`-separated, already checked against traversal) for
    /// the client at `client`, or `None` to fall through to the boot directory.
    ///
    /// Called on the async runtime: it must answer from memory, without blocking.
    fn file_for(&self, client: IpAddr, path: &str) -> Option<Vec<u8>>;
}

/// What a resolved name is served from.
#[derive(Debug)]
pub(crate) enum Content {
    /// A regular file, opened, of `len` bytes.
    File { file: Arc<File>, len: u64 },
    /// Bytes held in memory.
    Memory(Arc<[u8]>),
}

impl Content {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Content::File { len, .. } => *len,
            Content::Memory(m) => m.len() as u64,
        }
    }
}

/// Why a name cannot be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    /// The name itself is refused.
    #[error("refused file name")]
    Path(#[source] PathError),
    /// The name resolves (through a symlink) outside the root.
    #[error("`{path}` resolves outside the root")]
    Escapes { path: Utf8PathBuf },
    /// Nothing of that name.
    #[error("`{path}` not found")]
    NotFound { path: String },
    /// Not a regular file.
    #[error("`{path}` is not a regular file")]
    NotAFile { path: Utf8PathBuf },
    /// The file exists but could not be opened.
    #[error("failed to open `{path}`")]
    Open {
        path: Utf8PathBuf,
        #[source]
        err: std::io::Error,
    },
}

/// The served tree.
#[derive(Clone)]
pub(crate) struct Root {
    /// The boot directory, canonical.
    dir: Utf8PathBuf,
    ipxe: Option<IpxeBinaries>,
    host_files: Option<Arc<dyn HostFiles>>,
}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Root")
            .field("dir", &self.dir)
            .field("ipxe", &self.ipxe)
            .field("host_files", &self.host_files.is_some())
            .finish()
    }
}

impl Root {
    /// `dir` must already be canonical (no symlinks, absolute).
    pub(crate) fn new(
        dir: Utf8PathBuf,
        ipxe: Option<IpxeBinaries>,
        host_files: Option<Arc<dyn HostFiles>>,
    ) -> Self {
        Root {
            dir,
            ipxe,
            host_files,
        }
    }

    /// Finds and opens `requested` for `client`. Blocking (file system calls).
    pub(crate) fn open(&self, client: IpAddr, requested: &str) -> Result<Content, ResolveError> {
        let rel =
            policy::relative_path(requested, self.dir.as_str()).map_err(ResolveError::Path)?;
        if let Some(bytes) = self
            .host_files
            .as_ref()
            .and_then(|h| h.file_for(client, &rel))
        {
            return Ok(Content::Memory(bytes.into()));
        }
        if let Some(real) = confine(&self.dir, &rel)? {
            return open_regular(&real);
        }
        if let Some(path) = self.ipxe.as_ref().and_then(|i| i.path_of(&rel)) {
            return open_regular(&path);
        }
        Err(ResolveError::NotFound { path: rel })
    }
}

/// The real path of `rel` under the canonical directory `dir`, following symlinks only as long
/// as they stay inside it; `None` when nothing of that name exists.
pub(crate) fn confine(dir: &Utf8Path, rel: &str) -> Result<Option<Utf8PathBuf>, ResolveError> {
    let candidate = dir.join(rel);
    match candidate.canonicalize_utf8() {
        Ok(real) if real.starts_with(dir) => Ok(Some(real)),
        Ok(_) => Err(ResolveError::Escapes { path: candidate }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(ResolveError::Open {
            path: candidate,
            err,
        }),
    }
}

/// Opens `path` if it is a regular file.
pub(crate) fn open_regular(path: &Utf8Path) -> Result<Content, ResolveError> {
    let file = File::open(path).map_err(|err| ResolveError::Open {
        path: path.to_owned(),
        err,
    })?;
    let meta = file.metadata().map_err(|err| ResolveError::Open {
        path: path.to_owned(),
        err,
    })?;
    if !meta.is_file() {
        return Err(ResolveError::NotAFile {
            path: path.to_owned(),
        });
    }
    Ok(Content::File {
        file: Arc::new(file),
        len: meta.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    struct OneHost;
    impl HostFiles for OneHost {
        fn file_for(&self, client: IpAddr, path: &str) -> Option<Vec<u8>> {
            (client == IpAddr::V4(Ipv4Addr::new(10, 62, 0, 5)) && path == "host.cfg")
                .then(|| b"generated".to_vec())
        }
    }

    #[test]
    fn resolution_order_and_traversal() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = Utf8Path::from_path(tmp.path())
            .expect("utf-8")
            .canonicalize_utf8()
            .expect("canon");
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("sub/a.txt"), b"aaa").expect("write");
        std::fs::write(root.join("host.cfg"), b"on disk").expect("write");
        std::fs::write(base.join("secret"), b"secret").expect("write");
        std::os::unix::fs::symlink(base.join("secret"), root.join("leak")).expect("symlink");
        std::os::unix::fs::symlink("sub/a.txt", root.join("inside")).expect("symlink");
        let ipxe = IpxeBinaries::locate(Utf8Path::new(super::super::ipxe::DEFAULT_IPXE_DIR)).ok();
        let r = Root::new(root.clone(), ipxe, Some(Arc::new(OneHost)));
        let host = IpAddr::V4(Ipv4Addr::new(10, 62, 0, 5));
        let other = IpAddr::V4(Ipv4Addr::new(10, 62, 0, 6));

        assert!(matches!(r.open(host, "host.cfg"), Ok(Content::Memory(m)) if &*m == b"generated"));
        assert!(matches!(
            r.open(other, "host.cfg"),
            Ok(Content::File { len: 7, .. })
        ));
        assert!(matches!(
            r.open(other, "/sub/a.txt"),
            Ok(Content::File { len: 3, .. })
        ));
        assert!(matches!(
            r.open(other, "inside"),
            Ok(Content::File { len: 3, .. })
        ));
        assert!(matches!(
            r.open(other, &format!("{root}/sub/a.txt")),
            Ok(Content::File { .. })
        ));
        assert!(matches!(
            r.open(other, "snponly.efi"),
            Ok(Content::File { .. })
        ));
        assert!(matches!(
            r.open(other, "leak"),
            Err(ResolveError::Escapes { .. })
        ));
        assert!(matches!(
            r.open(other, "../secret"),
            Err(ResolveError::Path(_))
        ));
        assert!(matches!(
            r.open(other, "sub"),
            Err(ResolveError::NotAFile { .. })
        ));
        assert!(matches!(
            r.open(other, "/etc/passwd"),
            Err(ResolveError::NotFound { .. })
        ));
    }
}
