//! Artifact files: sha256 while writing (`HashingWriter`) or of a finished file (`hash_file`),
//! reading sparse files (`for_each_chunk`: holes are fed as zeros without reading them) and
//! copying them with their holes (`sparse_copy`: a reflink where the file system has them,
//! otherwise `copy_file_range` over the data segments only).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::unistd::{Whence, lseek};
use sha2::{Digest, Sha256};

/// Size and hex sha256 of a file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Digested {
    /// Size in bytes.
    pub(crate) size: u64,
    /// Hex sha256.
    pub(crate) sha256: String,
}

/// What holes are fed as, and the read buffer size.
const CHUNK: usize = 1 << 20;
static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// The data segments `(start, end)` of a file of `len` bytes, from SEEK_DATA/SEEK_HOLE; the whole
/// file when the file system cannot tell.
fn data_segments(f: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let at = i64::try_from(pos).map_err(io::Error::other)?;
        let start = match lseek(f, at, Whence::SeekData) {
            Ok(s) => s.unsigned_abs(),
            // No data after `pos`: the rest is a hole.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::EOPNOTSUPP) if pos == 0 => {
                return Ok(vec![(0, len)]);
            }
            Err(e) => return Err(e.into()),
        };
        let end = lseek(
            f,
            i64::try_from(start).map_err(io::Error::other)?,
            Whence::SeekHole,
        )
        .map_err(io::Error::from)?
        .unsigned_abs()
        .min(len);
        if end > start {
            out.push((start, end));
        }
        pos = end.max(start + 1);
    }
    Ok(out)
}

/// A piece of a sparse file's content.
#[derive(Debug)]
pub(crate) enum Segment<'a> {
    /// Bytes read from a data segment.
    Data(&'a [u8]),
    /// This many zero bytes of a hole.
    Hole(u64),
}

/// Calls `f` with the whole content of `path` in order: data read in pieces of at most 1 MiB,
/// holes as their length without a read. Returns the file size.
pub(crate) fn for_each_segment(
    path: &Path,
    mut f: impl FnMut(Segment<'_>) -> io::Result<()>,
) -> io::Result<u64> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    for (start, end) in data_segments(&file, len)? {
        if start > pos {
            f(Segment::Hole(start - pos))?;
        }
        file.seek(SeekFrom::Start(start))?;
        let mut left = end - start;
        while left > 0 {
            let k = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
            file.read_exact(&mut buf[..k])?;
            f(Segment::Data(&buf[..k]))?;
            left -= k as u64;
        }
        pos = end;
    }
    if len > pos {
        f(Segment::Hole(len - pos))?;
    }
    Ok(len)
}

/// Calls `f` with the whole content of `path` in order, in chunks of at most 1 MiB: data is
/// read, holes are passed as zeros without a read. Returns the file size.
pub(crate) fn for_each_chunk(
    path: &Path,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    for_each_segment(path, |seg| match seg {
        Segment::Data(b) => f(b),
        Segment::Hole(mut n) => {
            while n > 0 {
                let k = usize::try_from(n).unwrap_or(CHUNK).min(CHUNK);
                f(&ZEROS[..k])?;
                n -= k as u64;
            }
            Ok(())
        }
    })
}

/// Size and sha256 of a file, holes hashed as zeros without reading them.
pub(crate) fn hash_file(path: &Path) -> io::Result<Digested> {
    let mut h = Sha256::new();
    let size = for_each_chunk(path, |b| {
        h.update(b);
        Ok(())
    })?;
    Ok(Digested {
        size,
        sha256: hex::encode(h.finalize()),
    })
}

/// A writer that hashes and counts what goes through it.
#[derive(Debug)]
pub(crate) struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hash: Sha256::new(),
            size: 0,
        }
    }

    /// The inner writer and the digest of everything written.
    pub(crate) fn finish(self) -> (W, Digested) {
        let d = Digested {
            size: self.size,
            sha256: hex::encode(self.hash.finalize()),
        };
        (self.inner, d)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Copies `src` to a new file `dst` (mode 0644) keeping its holes: a reflink when the file
/// system supports them, otherwise an in-kernel copy of the data segments only.
pub(crate) fn sparse_copy(src: &Path, dst: &Path) -> io::Result<()> {
    let from = File::open(src)?;
    let len = from.metadata()?.len();
    let to = File::create(dst)?;
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the source
    // descriptor as its argument and touches no memory of ours.
    let cloned = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) } == 0;
    if !cloned {
        for (start, end) in data_segments(&from, len)? {
            let mut off_in = i64::try_from(start).map_err(io::Error::other)?;
            let mut off_out = off_in;
            let mut left = end - start;
            while left > 0 {
                let k = usize::try_from(left).unwrap_or(usize::MAX).min(1 << 30);
                // SAFETY: both descriptors are open, and the offsets point to live i64s that
                // the kernel updates in place.
                let n = unsafe {
                    libc::copy_file_range(
                        from.as_raw_fd(),
                        &mut off_in,
                        to.as_raw_fd(),
                        &mut off_out,
                        k,
                        0,
                    )
                };
                let Ok(n) = usize::try_from(n) else {
                    let err = io::Error::last_os_error();
                    match err.raw_os_error() {
                        // Across file systems, or not supported by this one: copy through user
                        // space.
                        Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => {
                            copy_range(&from, &to, off_in.unsigned_abs(), left)?;
                            break;
                        }
                        _ => return Err(err),
                    }
                };
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "source shrank while copying",
                    ));
                }
                left -= n as u64;
            }
        }
        to.set_len(len)?;
    }
    Ok(())
}

/// Copies `len` bytes at `off` of `from` to the same offset of `to` with reads and writes.
fn copy_range(from: &File, to: &File, mut off: u64, mut len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; CHUNK];
    while len > 0 {
        let k = usize::try_from(len).unwrap_or(CHUNK).min(CHUNK);
        from.read_exact_at(&mut buf[..k], off)?;
        to.write_all_at(&buf[..k], off)?;
        off += k as u64;
        len -= k as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_files_hash_and_copy_like_their_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sparse");
        {
            let mut f = File::create(&p).expect("create");
            f.seek(SeekFrom::Start(3 << 20)).expect("seek");
            f.write_all(b"data in the middle").expect("write");
            f.set_len(9 << 20).expect("extend");
        }
        let content = std::fs::read(&p).expect("read");
        let want = Digested {
            size: content.len() as u64,
            sha256: hex::encode(Sha256::digest(&content)),
        };
        assert_eq!(hash_file(&p).expect("hash"), want);

        let q = dir.path().join("copy");
        sparse_copy(&p, &q).expect("copy");
        assert_eq!(std::fs::read(&q).expect("read copy"), content);
        let blocks = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).expect("stat").blocks()
        };
        assert!(
            blocks(&q) < 1024,
            "copy is not sparse: {} blocks",
            blocks(&q)
        );

        let mut w = HashingWriter::new(Vec::new());
        w.write_all(&content).expect("write");
        let (bytes, d) = w.finish();
        assert_eq!((bytes, d), (content, want));
    }
}
