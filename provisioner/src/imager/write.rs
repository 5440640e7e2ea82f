//! Streaming an image onto the target disk, verifying it by read-back, and wiping it after a
//! failure.
//!
//! The image comes over HTTP straight onto the device: `disk.raw.zst` when the image has one
//! (decompressed on the fly), else `disk.raw`. A dropped raw connection resumes with
//! `Range: bytes=N-` from the last byte handed to the disk; a dropped compressed stream
//! continues the same way from `disk.raw`, since a zstd stream cannot be resumed mid-frame.
//! Runs of zero blocks (most of a golden image) are not written byte by byte: `BLKZEROOUT` on a
//! block device, a punched hole in a regular file. A regular file stands in for a disk in tests:
//! it takes exactly the same path except for those two ioctl-or-fallocate choices.
//!
//! Download and disk run in parallel: the async side reads the HTTP body and feeds a bounded
//! channel; one blocking worker owns the device, decompresses and writes.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::console::Console;
use super::progress::Reporter;
use crate::api::{Artifact, DeployInstructions, DeployPhase};
use crate::client::{Client, ClientError};

/// The raw disk image artifact: what is verified, whatever was streamed.
pub(crate) const RAW: &str = "disk.raw";
/// The compressed disk image artifact, preferred for streaming when present.
pub(crate) const ZST: &str = "disk.raw.zst";

/// Granularity of zero detection; offsets and lengths of zeroed runs are multiples of it.
const ZBLOCK: u64 = 64 * 1024;
/// Data is collected into writes of up to this many bytes.
const WRITE_BATCH: usize = 4 << 20;
/// Size of the area wiped at each end of a failed disk (the GPT and its backup live there).
const WIPE: u64 = 1 << 20;
/// Chunks in flight between the download and the disk worker.
const CHANNEL_CHUNKS: usize = 64;
/// Failed attempts in a row (without a byte of progress) before a download gives up.
const MAX_ATTEMPTS: u32 = 5;
/// Read size of the verification pass.
const VERIFY_BUF: usize = 4 << 20;

/// Errors writing the image.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The image lists no `disk.raw` to write and verify against.
    #[error("image has no `{RAW}` artifact to write and verify against")]
    NoDiskArtifact,
    /// The plan names a disk that is not a plain kernel device name.
    #[error("target disk `{disk}` is not a kernel device name")]
    BadDiskName {
        /// The name in the plan.
        disk: String,
    },
    /// The target could not be opened or sized.
    #[error("failed to open target `{path}`")]
    Open {
        /// The device or file.
        path: PathBuf,
        /// Cause.
        #[source]
        err: io::Error,
    },
    /// The target is smaller than the image.
    #[error("target `{path}` is {size} bytes, the image needs {needed}")]
    TooSmall {
        /// The device.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The image's size.
        needed: u64,
    },
    /// The download failed for good.
    #[error("download of `{file}` failed at offset {offset} after {attempts} attempt(s)")]
    Download {
        /// The artifact.
        file: String,
        /// Bytes of the image written when it gave up.
        offset: u64,
        /// Attempts in a row without progress.
        attempts: u32,
        /// The last failure.
        #[source]
        err: Box<ClientError>,
    },
    /// Writing to the target failed.
    #[error("write to `{path}` failed at offset {offset}")]
    Write {
        /// The device or file.
        path: PathBuf,
        /// Where the failed write started.
        offset: u64,
        /// Cause.
        #[source]
        err: io::Error,
    },
    /// The compressed stream is corrupt.
    #[error(
        "`{file}` failed its integrity check (checksum or corrupt data) at image offset {offset}"
    )]
    Decompress {
        /// The artifact.
        file: String,
        /// Image bytes written before the failure.
        offset: u64,
        /// Cause.
        #[source]
        err: io::Error,
    },
    /// The stream holds more bytes than the manifest says.
    #[error("`{file}` is longer than the manifest's {size} bytes")]
    TooLong {
        /// The artifact.
        file: String,
        /// Size from the manifest.
        size: u64,
    },
    /// The stream ended early.
    #[error("`{file}` ended after {written} bytes, the manifest says {size}")]
    Short {
        /// The artifact.
        file: String,
        /// Image bytes written.
        written: u64,
        /// Size from the manifest.
        size: u64,
    },
    /// Flushing the target to stable storage failed.
    #[error("fsync of `{path}` failed")]
    Sync {
        /// The device or file.
        path: PathBuf,
        /// Cause.
        #[source]
        err: io::Error,
    },
    /// The disk worker died.
    #[error("disk worker for `{path}` panicked")]
    Worker {
        /// The device or file.
        path: PathBuf,
    },
}

/// Errors verifying the image on the disk.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Reading the target back failed.
    #[error("read-back of `{path}` failed at offset {offset}")]
    Read {
        /// The device or file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// Cause.
        #[source]
        err: io::Error,
    },
    /// The disk does not hold the image.
    #[error(
        "checksum mismatch on `{path}`: read back sha256 {actual} over {size} bytes, manifest says {expected}"
    )]
    Mismatch {
        /// The device or file.
        path: PathBuf,
        /// Bytes hashed.
        size: u64,
        /// From the manifest.
        expected: String,
        /// Read back.
        actual: String,
    },
    /// The verification worker died.
    #[error("verification worker for `{path}` panicked")]
    Worker {
        /// The device or file.
        path: PathBuf,
    },
}

/// Linux block-device ioctls (`linux/fs.h`).
mod ioctl {
    nix::ioctl_none!(blkrrpart, 0x12, 95);
    nix::ioctl_none!(blkflsbuf, 0x12, 97);
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
}

fn off_t(v: u64) -> io::Result<i64> {
    i64::try_from(v).map_err(|_| io::Error::other("offset beyond i64"))
}

/// The device (or regular file) an image goes onto.
#[derive(Debug)]
pub(crate) struct Target {
    file: File,
    path: PathBuf,
    block: bool,
}

impl Target {
    /// Opens `path` for reading and writing; a regular file is created if missing.
    pub(crate) fn open(path: &Path) -> Result<Target, WriteError> {
        let open_err = |err| WriteError::Open {
            path: path.to_owned(),
            err,
        };
        let block = std::fs::metadata(path)
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(!block)
            .truncate(false)
            .open(path)
            .map_err(open_err)?;
        Ok(Target {
            file,
            path: path.to_owned(),
            block,
        })
    }

    /// The device's size, or a regular file's current length.
    pub(crate) fn size(&self) -> io::Result<u64> {
        if self.block {
            let mut n = 0u64;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid and
            // exclusively borrowed for the call; the fd is open.
            unsafe { ioctl::blkgetsize64(self.file.as_raw_fd(), &mut n) }
                .map_err(io::Error::from)?;
            Ok(n)
        } else {
            Ok(self.file.metadata()?.len())
        }
    }

    /// Zeroes `[off, off + len)`: `BLKZEROOUT` on a block device (the device may do it without
    /// any data transfer), a punched hole in a regular file; plain zero writes if neither works.
    fn zero_range(&self, off: u64, len: u64) -> io::Result<()> {
        let fast = if self.block {
            let range = [off, len];
            // SAFETY: BLKZEROOUT reads two u64 (start, length) through the pointer, which
            // points at a live array for the duration of the call; the fd is open.
            unsafe { ioctl::blkzeroout(self.file.as_raw_fd(), &range) }
                .map(drop)
                .map_err(io::Error::from)
        } else {
            use nix::fcntl::{FallocateFlags as F, fallocate};
            fallocate(
                &self.file,
                F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE,
                off_t(off)?,
                off_t(len)?,
            )
            .map_err(io::Error::from)
        };
        if let Err(err) = fast {
            debug!(error = %err, off, len, "fast zeroing unavailable: writing zeros");
            let zeros = vec![0u8; WRITE_BATCH];
            let mut done = 0u64;
            while done < len {
                let n = usize::try_from((len - done).min(zeros.len() as u64))
                    .expect("invariant: bounded by the buffer length");
                self.file.write_all_at(&zeros[..n], off + done)?;
                done += n as u64;
            }
        }
        Ok(())
    }

    /// Drops the kernel's cached pages of the target so that a read really hits the disk.
    fn drop_cache(&self) {
        if self.block {
            // SAFETY: BLKFLSBUF takes no argument; the fd is open.
            if let Err(err) = unsafe { ioctl::blkflsbuf(self.file.as_raw_fd()) } {
                warn!(path = %self.path.display(), error = %err, "BLKFLSBUF failed");
            }
        }
        use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
        if let Err(err) = posix_fadvise(&self.file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED) {
            warn!(path = %self.path.display(), error = %err, "posix_fadvise failed");
        }
    }

    /// Asks the kernel to re-read a block device's partition table (no-op for a file).
    pub(crate) fn reread_partitions(&self) -> io::Result<()> {
        if !self.block {
            return Ok(());
        }
        // SAFETY: BLKRRPART takes no argument; the fd is open.
        unsafe { ioctl::blkrrpart(self.file.as_raw_fd()) }
            .map(drop)
            .map_err(io::Error::from)
    }

    /// Whether the target is a block device.
    pub(crate) fn is_block(&self) -> bool {
        self.block
    }
}

/// The blocking side: bytes in at a position, zero runs zeroed, data batched into big writes.
#[derive(Debug)]
struct DiskSink {
    target: Target,
    /// Absolute offset of the next byte to arrive.
    pos: u64,
    /// Bytes the image has (from the manifest); more is an error.
    limit: u64,
    /// Bytes of the block being assembled, starting at `carry_off`.
    carry: Vec<u8>,
    carry_off: u64,
    /// Data waiting to be written at `out_off`.
    out: Vec<u8>,
    out_off: u64,
    /// A run of zero blocks waiting to be zeroed.
    zero_off: u64,
    zero_len: u64,
    /// Totals, for the log line.
    data_bytes: u64,
    zero_bytes: u64,
    /// `pos`, shared with the progress reporter.
    progress: Arc<AtomicU64>,
    /// Set when a write failed, so the error names the offset.
    failed_at: Option<u64>,
}

fn all_zero(b: &[u8]) -> bool {
    // Compares the buffer with itself shifted by one: a memcmp, which is vectorised.
    b.first().is_none_or(|&f| f == 0) && b[..b.len().saturating_sub(1)] == b[1.min(b.len())..]
}

impl DiskSink {
    fn new(target: Target, pos: u64, limit: u64, progress: Arc<AtomicU64>) -> Self {
        DiskSink {
            target,
            pos,
            limit,
            carry: Vec::with_capacity(usize::try_from(ZBLOCK).expect("invariant: 64 KiB fits")),
            carry_off: pos,
            out: Vec::with_capacity(WRITE_BATCH),
            out_off: pos,
            zero_off: pos,
            zero_len: 0,
            data_bytes: 0,
            zero_bytes: 0,
            progress,
            failed_at: None,
        }
    }

    fn flush_out(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        if let Err(err) = self.target.file.write_all_at(&self.out, self.out_off) {
            self.failed_at = Some(self.out_off);
            return Err(err);
        }
        self.data_bytes += self.out.len() as u64;
        self.out_off += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    fn flush_zero(&mut self) -> io::Result<()> {
        if self.zero_len == 0 {
            return Ok(());
        }
        if let Err(err) = self.target.zero_range(self.zero_off, self.zero_len) {
            self.failed_at = Some(self.zero_off);
            return Err(err);
        }
        self.zero_bytes += self.zero_len;
        self.zero_off += self.zero_len;
        self.zero_len = 0;
        Ok(())
    }

    /// The block in `carry` is complete (or the stream ended): zero run or data.
    fn complete_block(&mut self, at_end: bool) -> io::Result<()> {
        let aligned = self.carry_off.is_multiple_of(ZBLOCK) && self.carry.len() as u64 == ZBLOCK;
        if aligned && !at_end && all_zero(&self.carry) {
            self.flush_out()?;
            if self.zero_len == 0 {
                self.zero_off = self.carry_off;
            }
            self.zero_len += ZBLOCK;
        } else if !self.carry.is_empty() {
            self.flush_zero()?;
            if self.out.is_empty() {
                self.out_off = self.carry_off;
            }
            self.out.extend_from_slice(&self.carry);
            if self.out.len() >= WRITE_BATCH {
                self.flush_out()?;
            }
        }
        self.carry.clear();
        self.carry_off = self.pos;
        Ok(())
    }

    /// Writes everything pending and makes it durable: the last block, the zero run, the data,
    /// a regular file's length, fsync.
    fn finish(&mut self) -> io::Result<()> {
        self.complete_block(true)?;
        self.flush_zero()?;
        self.flush_out()?;
        if !self.target.block && self.target.file.metadata()?.len() < self.pos {
            self.target.file.set_len(self.pos)?;
        }
        self.target.file.sync_all()
    }
}

impl Write for DiskSink {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        if self.pos + n as u64 > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "stream longer than the image",
            ));
        }
        while !data.is_empty() {
            let boundary = (self.carry_off / ZBLOCK + 1) * ZBLOCK;
            let room = boundary - (self.carry_off + self.carry.len() as u64);
            let take = usize::try_from(room.min(data.len() as u64))
                .expect("invariant: bounded by the slice length");
            self.carry.extend_from_slice(&data[..take]);
            self.pos += take as u64;
            data = &data[take..];
            if self.carry_off + self.carry.len() as u64 == boundary {
                self.complete_block(false)?;
            }
        }
        self.progress.store(self.pos, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // Durability is `finish`'s job; the zstd decoder calls this freely.
    }
}

/// What the download side hands the disk worker.
enum Feed {
    /// Image bytes at the sink's position.
    Raw(Bytes),
    /// Compressed bytes of `disk.raw.zst` (from its start).
    Zstd(Bytes),
    /// The compressed stream stopped: reply with the image offset written so far and accept
    /// raw bytes from there.
    EndZstd(oneshot::Sender<u64>),
}

enum Stage {
    Raw(DiskSink),
    Zstd(Box<zstd::stream::write::Decoder<'static, DiskSink>>),
}

impl Stage {
    fn into_raw(self) -> DiskSink {
        match self {
            Stage::Raw(s) => s,
            Stage::Zstd(mut d) => {
                let _ = d.flush(); // A truncated frame keeps what it could not decode.
                d.into_inner()
            }
        }
    }
}

/// Totals of a finished write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteStats {
    /// Image bytes on the disk.
    pub(crate) size: u64,
    /// Of which written as data.
    pub(crate) data_bytes: u64,
    /// Of which zeroed without writing.
    pub(crate) zero_bytes: u64,
}

/// The disk worker: runs until the channel closes, then finishes the sink.
fn disk_worker(
    sink: DiskSink,
    mut rx: mpsc::Receiver<Feed>,
    zst_name: &str,
) -> Result<(Target, WriteStats), WriteError> {
    let write_err = |s: &DiskSink, err| WriteError::Write {
        path: s.target.path.clone(),
        offset: s.failed_at.unwrap_or(s.pos),
        err,
    };
    let mut stage = Stage::Raw(sink);
    while let Some(feed) = rx.blocking_recv() {
        stage = match (stage, feed) {
            (Stage::Raw(mut s), Feed::Raw(b)) => {
                s.write_all(&b).map_err(|err| write_err(&s, err))?;
                Stage::Raw(s)
            }
            (Stage::Raw(s), Feed::Zstd(b)) => {
                let pos = s.pos;
                let d =
                    zstd::stream::write::Decoder::new(s).map_err(|err| WriteError::Decompress {
                        file: zst_name.to_owned(),
                        offset: pos,
                        err,
                    })?;
                feed_zstd(Box::new(d), &b, zst_name)?
            }
            (Stage::Zstd(d), Feed::Zstd(b)) => feed_zstd(d, &b, zst_name)?,
            (stage, Feed::EndZstd(reply)) => {
                let s = stage.into_raw();
                let _ = reply.send(s.pos);
                Stage::Raw(s)
            }
            (Stage::Zstd(_), Feed::Raw(_)) => {
                unreachable!("the download side ends the compressed stream before raw bytes")
            }
        };
    }
    let mut s = match stage {
        Stage::Raw(s) => s,
        Stage::Zstd(mut d) => {
            let pos = d.get_ref().pos;
            d.flush().map_err(|err| WriteError::Decompress {
                file: zst_name.to_owned(),
                offset: pos,
                err,
            })?;
            d.into_inner()
        }
    };
    let size = s.limit;
    if s.pos < size {
        return Err(WriteError::Short {
            file: zst_name.to_owned(),
            written: s.pos,
            size,
        });
    }
    s.finish().map_err(|err| match s.failed_at {
        Some(_) => write_err(&s, err),
        None => WriteError::Sync {
            path: s.target.path.clone(),
            err,
        },
    })?;
    let stats = WriteStats {
        size,
        data_bytes: s.data_bytes,
        zero_bytes: s.zero_bytes,
    };
    Ok((s.target, stats))
}

fn feed_zstd(
    mut d: Box<zstd::stream::write::Decoder<'static, DiskSink>>,
    b: &[u8],
    zst_name: &str,
) -> Result<Stage, WriteError> {
    match d.write_all(b) {
        Ok(()) => Ok(Stage::Zstd(d)),
        Err(err) => {
            let s = d.get_ref();
            if let Some(offset) = s.failed_at {
                return Err(WriteError::Write {
                    path: s.target.path.clone(),
                    offset,
                    err,
                });
            }
            if err.kind() == io::ErrorKind::FileTooLarge {
                return Err(WriteError::TooLong {
                    file: zst_name.to_owned(),
                    size: s.limit,
                });
            }
            Err(WriteError::Decompress {
                file: zst_name.to_owned(),
                offset: s.pos,
                err,
            })
        }
    }
}

/// The artifacts to stream and verify against.
#[derive(Debug, Clone)]
pub(crate) struct DiskImage {
    /// `disk.raw`: size and checksum to verify; the fallback stream.
    pub(crate) raw: Artifact,
    /// `disk.raw.zst`, streamed first when present.
    pub(crate) zst: Option<Artifact>,
}

impl DiskImage {
    /// Picks the disk artifacts from a deploy plan.
    pub(crate) fn pick(instr: &DeployInstructions) -> Result<DiskImage, WriteError> {
        let find = |name: &str| instr.artifacts.iter().find(|a| a.path == name).cloned();
        Ok(DiskImage {
            raw: find(RAW).ok_or(WriteError::NoDiskArtifact)?,
            zst: find(ZST),
        })
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64 << attempt.min(4))
}

/// Streams the image onto `target` and makes it durable. Progress goes to the control node
/// (phase `writing`) and the console.
pub(crate) async fn write_image(
    client: &Client,
    console: &Console,
    artifact_base: &str,
    image: &DiskImage,
    target: Target,
) -> Result<(Target, WriteStats), WriteError> {
    let total = image.raw.size;
    if target.is_block() {
        let size = target.size().map_err(|err| WriteError::Open {
            path: target.path.clone(),
            err,
        })?;
        if size < total {
            return Err(WriteError::TooSmall {
                path: target.path.clone(),
                size,
                needed: total,
            });
        }
    }
    let path = target.path.clone();
    let first = image.zst.as_ref().unwrap_or(&image.raw).path.clone();
    let reporter = Reporter::start(client, console, DeployPhase::Writing, &first, total);
    let sink = DiskSink::new(target, 0, total, reporter.position());
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let zst_name = first.clone();
    let worker = tokio::task::spawn_blocking(move || disk_worker(sink, rx, &zst_name));
    let fed = feed(client, console, artifact_base, image, &tx).await;
    drop(tx);
    let result = match worker.await {
        Ok(r) => r,
        Err(_) => Err(WriteError::Worker { path }),
    };
    // A worker error explains a feed that stopped (its channel closed): report the cause. A
    // short image is the worker's view of a failed download: then the download error says why.
    let result = match (result, fed) {
        (Err(WriteError::Short { .. }), Err(e)) => Err(e),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e),
        (Ok(v), Ok(())) => Ok(v),
    };
    reporter.finish(result.is_ok()).await;
    result
}

/// The download side: streams into the worker until the whole image is fed, resuming after
/// failures. Returns `Ok` also when the worker stopped early (it holds the reason).
async fn feed(
    client: &Client,
    console: &Console,
    base: &str,
    image: &DiskImage,
    tx: &mpsc::Sender<Feed>,
) -> Result<(), WriteError> {
    let total = image.raw.size;
    let mut compressed = image.zst.is_some();
    let mut offset = 0u64; // Image bytes fed (raw mode).
    let mut attempts = 0u32;
    loop {
        let (file, start) = match (&image.zst, compressed) {
            (Some(z), true) => (z.path.as_str(), 0),
            _ => (image.raw.path.as_str(), offset),
        };
        if !compressed && offset >= total {
            return Ok(());
        }
        let mut progressed = false;
        let outcome: Result<(), ClientError> = async {
            let mut dl = client.download(base, file, start).await?;
            while let Some(chunk) = dl.chunk().await? {
                progressed = true;
                let n = chunk.len() as u64;
                let msg = if compressed {
                    Feed::Zstd(chunk)
                } else {
                    Feed::Raw(chunk)
                };
                if tx.send(msg).await.is_err() {
                    return Ok(()); // The worker stopped; it has the error.
                }
                if !compressed {
                    offset += n;
                }
            }
            Ok(())
        }
        .await;
        if tx.is_closed() {
            return Ok(());
        }
        match outcome {
            Ok(()) if compressed => return Ok(()),
            Ok(()) => {
                if offset >= total {
                    return Ok(());
                }
                // The body ended cleanly but early (a server that closed on a length it
                // did not announce): ask for the rest.
                warn!(%file, offset, total, "artifact body ended early");
            }
            Err(err) => {
                let retryable = err.status().is_none_or(|s| s.is_server_error());
                if progressed {
                    attempts = 0;
                }
                attempts += 1;
                if !retryable || attempts >= MAX_ATTEMPTS {
                    let offset = if compressed {
                        resume_point(tx).await.unwrap_or(0)
                    } else {
                        offset
                    };
                    return Err(WriteError::Download {
                        file: file.to_owned(),
                        offset,
                        attempts,
                        err: Box::new(err),
                    });
                }
                warn!(%file, offset, attempts, error = %common::ErrorChain(&err), "download interrupted");
            }
        }
        if compressed {
            // A zstd stream cannot resume mid-frame: continue from the raw image instead.
            let Some(pos) = resume_point(tx).await else {
                return Ok(());
            };
            compressed = false;
            offset = pos;
        }
        console.say(&format!(
            "connection lost, resuming {} at offset {offset} (attempt {}/{MAX_ATTEMPTS})",
            image.raw.path,
            attempts + 1
        ));
        tokio::time::sleep(backoff(attempts)).await;
    }
}

/// Ends the compressed stream in the worker and returns the image offset it reached; `None` if
/// the worker stopped.
async fn resume_point(tx: &mpsc::Sender<Feed>) -> Option<u64> {
    let (reply, rx) = oneshot::channel();
    tx.send(Feed::EndZstd(reply)).await.ok()?;
    rx.await.ok()
}

/// Reads back exactly `size` bytes of the target, from the disk rather than the page cache, and
/// compares their SHA-256 with `expected`. Progress goes out as phase `verifying`.
pub(crate) async fn verify(
    client: &Client,
    console: &Console,
    target: Target,
    image: &Artifact,
) -> Result<(Target, String), VerifyError> {
    let reporter = Reporter::start(client, console, DeployPhase::Verifying, "", image.size);
    let pos = reporter.position();
    let size = image.size;
    let path = target.path.clone();
    let expected = image.sha256.to_ascii_lowercase();
    let result = tokio::task::spawn_blocking(move || -> Result<(Target, String), VerifyError> {
        target.drop_cache();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; VERIFY_BUF];
        let mut done = 0u64;
        let mut file = &target.file;
        file.seek(io::SeekFrom::Start(0))
            .map_err(|err| VerifyError::Read {
                path: target.path.clone(),
                offset: 0,
                err,
            })?;
        while done < size {
            let want = usize::try_from((size - done).min(buf.len() as u64))
                .expect("invariant: bounded by the buffer length");
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(VerifyError::Read {
                        path: target.path.clone(),
                        offset: done,
                        err: io::ErrorKind::UnexpectedEof.into(),
                    });
                }
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    return Err(VerifyError::Read {
                        path: target.path.clone(),
                        offset: done,
                        err,
                    });
                }
            };
            hasher.update(&buf[..n]);
            done += n as u64;
            pos.store(done, Ordering::Relaxed);
        }
        let actual = hex::encode(hasher.finalize());
        Ok((target, actual))
    })
    .await
    .unwrap_or(Err(VerifyError::Worker { path: path.clone() }));
    let result = result.and_then(|(t, actual)| {
        if actual == expected {
            Ok((t, actual))
        } else {
            Err(VerifyError::Mismatch {
                path: t.path.clone(),
                size,
                expected,
                actual,
            })
        }
    });
    reporter.finish(result.is_ok()).await;
    result
}

/// Zeroes the first and last MiB of `path` (both GPT copies and the MBR), so that a machine
/// never boots a half-written or unverified disk, and makes it durable.
pub(crate) fn wipe(path: &Path) -> Result<(), WriteError> {
    let target = Target::open(path)?;
    let err_at = |offset| {
        let path = path.to_owned();
        move |err| WriteError::Write { path, offset, err }
    };
    let size = target.size().map_err(err_at(0))?;
    let zeros = vec![0u8; usize::try_from(WIPE).expect("invariant: 1 MiB fits")];
    let head = usize::try_from(size.min(WIPE)).expect("invariant: at most 1 MiB");
    target
        .file
        .write_all_at(&zeros[..head], 0)
        .map_err(err_at(0))?;
    let tail_start = size.saturating_sub(WIPE).max(WIPE.min(size));
    let tail = usize::try_from(size - tail_start).expect("invariant: at most 1 MiB");
    target
        .file
        .write_all_at(&zeros[..tail], tail_start)
        .map_err(err_at(tail_start))?;
    target.file.sync_all().map_err(|err| WriteError::Sync {
        path: path.to_owned(),
        err,
    })?;
    if let Err(err) = target.reread_partitions() {
        debug!(error = %err, "BLKRRPART after wipe failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const Z: usize = 64 * 1024;
    const W: usize = 1 << 20;

    fn sink_into(path: &Path, limit: u64) -> DiskSink {
        DiskSink::new(
            Target::open(path).unwrap(),
            0,
            limit,
            Arc::new(AtomicU64::new(0)),
        )
    }

    /// An image: zeros, with data at an unaligned offset and in the last partial block.
    fn image() -> Vec<u8> {
        let mut img = vec![0u8; 5 * Z + 1000];
        img[100..200].fill(0xab);
        img[3 * Z - 10..3 * Z + 10].fill(1);
        let n = img.len();
        img[n - 1] = 7;
        img
    }

    #[test]
    fn zero_runs_are_punched_and_data_lands_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("disk");
        // Stale bytes where the image has zeros must not survive.
        std::fs::write(&path, vec![0xffu8; 6 * Z]).unwrap();
        let img = image();
        let mut s = sink_into(&path, img.len() as u64);
        // Odd chunk sizes, as a network delivers them.
        for c in img.chunks(7777) {
            s.write_all(c).unwrap();
        }
        s.finish().unwrap();
        assert_eq!(s.pos, img.len() as u64);
        assert_eq!(s.zero_bytes, 2 * ZBLOCK, "blocks 1 and 4 are zero");
        let got = std::fs::read(&path).unwrap();
        assert_eq!(&got[..img.len()], &img[..]);
    }

    #[test]
    fn longer_stream_than_manifest_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = sink_into(&tmp.path().join("disk"), 10);
        s.write_all(&[1; 10]).unwrap();
        assert_eq!(
            s.write_all(&[1]).unwrap_err().kind(),
            io::ErrorKind::FileTooLarge
        );
    }

    #[test]
    fn zstd_worker_then_raw_resume() {
        // The worker takes a truncated compressed stream, then raw bytes from where it got.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("disk");
        let img = image();
        let zst = zstd::encode_all(img.as_slice(), 3).unwrap();
        let sink = sink_into(&path, img.len() as u64);
        let (tx, rx) = mpsc::channel(4);
        let worker = std::thread::spawn(move || disk_worker(sink, rx, ZST));
        tx.blocking_send(Feed::Zstd(Bytes::copy_from_slice(&zst[..zst.len() / 2])))
            .unwrap();
        let (reply, got) = oneshot::channel();
        tx.blocking_send(Feed::EndZstd(reply)).unwrap();
        let pos = got.blocking_recv().unwrap();
        assert!(pos < img.len() as u64);
        let start = usize::try_from(pos).unwrap();
        tx.blocking_send(Feed::Raw(Bytes::copy_from_slice(&img[start..])))
            .unwrap();
        drop(tx);
        let (_, stats) = worker.join().unwrap().unwrap();
        assert_eq!(stats.size, img.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), img);
    }

    #[test]
    fn corrupt_zstd_is_a_decompress_error() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = sink_into(&tmp.path().join("disk"), 1 << 20);
        let (tx, rx) = mpsc::channel(4);
        let worker = std::thread::spawn(move || disk_worker(sink, rx, ZST));
        let _ = tx.blocking_send(Feed::Zstd(Bytes::from_static(b"not zstd at all")));
        drop(tx);
        let err = worker.join().unwrap().unwrap_err();
        assert!(matches!(err, WriteError::Decompress { .. }), "{err}");
    }

    #[test]
    fn wipe_zeroes_both_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("disk");
        let size = 3 * W + 5;
        std::fs::write(&path, vec![0x5au8; size]).unwrap();
        wipe(&path).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), size);
        let w = W;
        assert!(got[..w].iter().all(|&b| b == 0));
        assert!(got[w..size - w].iter().all(|&b| b == 0x5a));
        assert!(got[size - w..].iter().all(|&b| b == 0));
        // A disk smaller than the wiped area is zeroed whole.
        std::fs::write(&path, [1u8; 1000]).unwrap();
        wipe(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![0u8; 1000]);
    }

    #[test]
    fn all_zero_detects() {
        assert!(all_zero(&[]));
        assert!(all_zero(&[0; 100]));
        let mut b = [0u8; 100];
        b[99] = 1;
        assert!(!all_zero(&b));
        b[99] = 0;
        b[0] = 1;
        assert!(!all_zero(&b));
    }
}
