//! Deterministic `rootfs.tar.zst`: sorted entries, normalised mtimes, numeric owners only,
//! extended attributes as PAX `SCHILY.xattr.*` records, hardlinks as link entries, device nodes
//! and setuid bits kept. The `tar` crate does none of the xattr and hardlink work by itself.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use crate::artifact::Digested;
use crate::frames::{Chunking, FrameIndex, FrameWriter, Reuse};

/// zstd level: fast, and the output is stable for a given level.
pub(crate) const ZSTD_LEVEL: i32 = 3;
/// Chunks of the tar stream, one zstd frame each: cut at an entry boundary after 2 MiB, and
/// after 8 MiB anywhere (in a large file).
pub(crate) const CHUNKING: Chunking = Chunking::Entries {
    min: 2 << 20,
    max: 8 << 20,
};

/// The tarball could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// Reading the tree failed.
    #[error("failed to read `{path}`")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        err: io::Error,
    },
    /// Writing the archive failed.
    #[error("failed to write `{path}`")]
    Write {
        /// The archive.
        path: PathBuf,
        /// Why.
        #[source]
        err: io::Error,
    },
}

/// Lists the extended attributes of `path` (not following symlinks), sorted by name.
pub(crate) fn xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path; a null buffer with size 0 asks for the size.
    let len = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if len < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOTSUP) => Ok(Vec::new()),
            _ => Err(err),
        };
    }
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut names = vec![0u8; len.unsigned_abs()];
    // SAFETY: `names` has `names.len()` writable bytes.
    let len = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    names.truncate(len.unsigned_abs());
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).map_err(io::Error::other)?;
        // SAFETY: valid C strings; null buffer with size 0 asks for the value's size.
        let vlen = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if vlen < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut value = vec![0u8; vlen.unsigned_abs()];
        // SAFETY: `value` has `value.len()` writable bytes.
        let vlen = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if vlen < 0 {
            return Err(io::Error::last_os_error());
        }
        value.truncate(vlen.unsigned_abs());
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

/// Encodes PAX extended header records (`LEN KEY=VALUE\n`, LEN counting itself).
pub(crate) fn pax_records(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// Every path under `root`, relative, sorted by components (a directory before its contents).
fn walk(root: &Path) -> Result<Vec<PathBuf>, TarError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = std::fs::read_dir(&dir).map_err(|err| TarError::Read {
            path: dir.clone(),
            err,
        })?;
        for e in entries {
            let e = e.map_err(|err| TarError::Read {
                path: dir.clone(),
                err,
            })?;
            let child = rel.join(e.file_name());
            let ft = e.file_type().map_err(|err| TarError::Read {
                path: root.join(&child),
                err,
            })?;
            if ft.is_dir() {
                stack.push(child.clone());
            }
            out.push(child);
        }
    }
    out.sort();
    Ok(out)
}

/// Writes the tree at `root` to `out` as a zstd-compressed tar with every mtime set to
/// `mtime` (SOURCE_DATE_EPOCH). Same tree, same bytes.
pub fn write_rootfs_tar(root: &Path, out: &Path, mtime: u64) -> Result<(), TarError> {
    write_rootfs_tar_frames(root, out, mtime, Reuse::none()).map(drop)
}

/// [`write_rootfs_tar`] as zstd frames (`frames`), copying those `reuse` has; returns the size
/// and sha256 of the archive, hashed as it is written, and the index of its frames.
pub(crate) fn write_rootfs_tar_frames(
    root: &Path,
    out: &Path,
    mtime: u64,
    reuse: Reuse,
) -> Result<(Digested, FrameIndex), TarError> {
    let werr = |err: io::Error| TarError::Write {
        path: out.to_owned(),
        err,
    };
    let file = File::create(out).map_err(werr)?;
    let w = FrameWriter::new(
        BufWriter::with_capacity(1 << 20, file),
        ZSTD_LEVEL,
        CHUNKING,
        reuse,
    );
    let mut builder = tar::Builder::new(w);
    append_tree(&mut builder, root, mtime)?;
    let w = builder.into_inner().map_err(werr)?;
    let (mut buf, digest, index) = w.finish().map_err(werr)?;
    buf.flush().map_err(werr)?;
    buf.get_ref().sync_all().map_err(werr)?;
    Ok((digest, index))
}

fn append_tree<W: Write + Send + 'static>(
    builder: &mut tar::Builder<FrameWriter<W>>,
    root: &Path,
    mtime: u64,
) -> Result<(), TarError> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let werr = |err: io::Error| TarError::Write {
        path: PathBuf::from("rootfs.tar"),
        err,
    };
    for rel in walk(root)? {
        let path = root.join(&rel);
        let rerr = |err: io::Error| TarError::Read {
            path: path.clone(),
            err,
        };
        let md = std::fs::symlink_metadata(&path).map_err(rerr)?;
        let ft = md.file_type();
        if ft.is_socket() {
            continue;
        }
        builder
            .get_mut()
            .boundary(rel.as_os_str().as_bytes())
            .map_err(werr)?;
        let mut h = Header::new_gnu();
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(u64::from(md.uid()));
        h.set_gid(u64::from(md.gid()));
        h.set_mtime(mtime);
        h.set_size(0);
        let xattrs = xattrs(&path).map_err(rerr)?;
        if !xattrs.is_empty() {
            let recs: Vec<(Vec<u8>, Vec<u8>)> = xattrs
                .into_iter()
                .map(|(k, v)| ([b"SCHILY.xattr.".as_slice(), &k].concat(), v))
                .collect();
            let data = pax_records(&recs);
            let mut xh = Header::new_ustar();
            let name = format!(
                "PaxHeaders/{}",
                rel.file_name()
                    .map(OsStr::to_string_lossy)
                    .unwrap_or_default()
            );
            let name: String = name.chars().take(99).collect();
            xh.set_path(&name).map_err(werr)?;
            xh.set_entry_type(EntryType::XHeader);
            xh.set_mode(0o644);
            xh.set_mtime(mtime);
            xh.set_size(data.len() as u64);
            xh.set_cksum();
            builder.append(&xh, data.as_slice()).map_err(werr)?;
        }
        if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
            builder
                .append_data(&mut h, &rel, io::empty())
                .map_err(werr)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(rerr)?;
            h.set_entry_type(EntryType::Symlink);
            builder.append_link(&mut h, &rel, &target).map_err(werr)?;
        } else if md.nlink() > 1
            && let Some(first) = links.get(&(md.dev(), md.ino()))
        {
            h.set_entry_type(EntryType::Link);
            builder.append_link(&mut h, &rel, first).map_err(werr)?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                links.insert((md.dev(), md.ino()), rel.clone());
            }
            h.set_entry_type(EntryType::Regular);
            h.set_size(md.len());
            let f = File::open(&path).map_err(rerr)?;
            builder.append_data(&mut h, &rel, f).map_err(werr)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            h.set_entry_type(if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            });
            let rdev = md.rdev();
            h.set_device_major(libc::major(rdev)).map_err(werr)?;
            h.set_device_minor(libc::minor(rdev)).map_err(werr)?;
            builder
                .append_data(&mut h, &rel, io::empty())
                .map_err(werr)?;
        } else if ft.is_fifo() {
            h.set_entry_type(EntryType::Fifo);
            builder
                .append_data(&mut h, &rel, io::empty())
                .map_err(werr)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_records(&[(b"a".to_vec(), b"b".to_vec())]);
        assert_eq!(r, b"6 a=b\n");
        let long = vec![b'x'; 95];
        let r = pax_records(&[(b"k".to_vec(), long)]);
        // 95 + 1 + 3 = 99 bytes of body: with a 3-digit length the record is 102 bytes.
        assert!(
            r.starts_with(b"102 k="),
            "{:?}",
            String::from_utf8_lossy(&r[..8])
        );
        assert_eq!(r.len(), 102);
    }
}
