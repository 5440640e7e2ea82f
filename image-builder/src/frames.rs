//! Compressed artifacts as a sequence of independent zstd frames, reused across builds.
//!
//! `rootfs.tar.zst` and `disk.raw.zst` are written as one zstd frame per chunk of their
//! uncompressed stream (any zstd decoder reads the concatenation as one stream). The chunks of
//! a tarball end at entry boundaries chosen by the entry's path ([`Chunking::Entries`]), so a
//! changed file moves no boundary elsewhere; the chunks of a disk are aligned 4 MiB blocks
//! ([`Chunking::Fixed`]). Every frame is recorded in an index stored beside the artifact in its
//! cache entry (`<artifact>.frames`): the BLAKE3 of the chunk and of the frame, and where the
//! frame is. A later build of the same stage looks each chunk up in the indexes of the entries
//! already cached ([`Reuse`]) and copies the frame instead of compressing the chunk again, so
//! rebuilding after a one-file change compresses only the chunks that changed.
//!
//! The bytes do not depend on what was reused: a frame is a pure function of its chunk, the
//! level and the zstd library, and an index of another level or library is not used. A reused
//! frame is checked against the BLAKE3 in its index before it is copied (its file may be an
//! output edited in place since), and compressed afresh if it does not match.
//!
//! Chunks are hashed, looked up and compressed on a fixed pool of worker threads, and written
//! in order by one more, so compression runs on every core as zstd's own threads would.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::artifact::{Digested, HashingWriter};
use crate::events::{Event, Stage};

/// Worker threads; fixed so that nothing depends on the machine (the bytes never do).
const WORKERS: usize = 4;
/// Bump when the frame layout or the index format changes.
pub(crate) const FORMAT: u32 = 1;

/// Where chunks end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Chunking {
    /// Every `size` bytes.
    Fixed {
        /// Chunk size.
        size: usize,
    },
    /// At an entry boundary whose key hashes to a cut once the chunk holds `min` bytes, and
    /// after `max` bytes anywhere.
    Entries {
        /// Smallest chunk ended at an entry boundary.
        min: usize,
        /// Largest chunk.
        max: usize,
    },
}

impl Chunking {
    fn max(self) -> usize {
        match self {
            Chunking::Fixed { size } => size,
            Chunking::Entries { max, .. } => max,
        }
    }
}

/// One frame of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FrameEntry {
    /// BLAKE3 of the uncompressed chunk (hex).
    chunk: String,
    /// BLAKE3 of the frame (hex).
    frame: String,
    /// Offset of the frame in the artifact.
    offset: u64,
    /// Length of the frame.
    len: u64,
}

/// The index of an artifact's frames, stored as `<artifact>.frames` in its cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FrameIndex {
    format: u32,
    zstd: u32,
    level: i32,
    frames: Vec<FrameEntry>,
    /// How many of the frames were copied from earlier artifacts (not stored).
    #[serde(skip)]
    reused: usize,
}

impl FrameIndex {
    /// The index file of `artifact`.
    pub(crate) fn path(artifact: &Path) -> PathBuf {
        let mut name = artifact.as_os_str().to_owned();
        name.push(".frames");
        PathBuf::from(name)
    }

    /// Writes the index of `artifact` beside it.
    pub(crate) fn write(&self, artifact: &Path) -> io::Result<()> {
        let json = serde_json::to_vec(self).expect("invariant: an index is plain data");
        common::write_atomic(&Self::path(artifact), &json, 0o644)
    }

    /// How many frames the artifact has.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.frames.len()
    }

    /// How many of them were copied from earlier artifacts by the build that wrote them.
    #[cfg(test)]
    fn reused(&self) -> usize {
        self.reused
    }

    /// The event reporting how `artifact` of `stage` was written.
    pub(crate) fn event(&self, stage: Stage, artifact: &str) -> Event {
        Event::FramesWritten {
            stage,
            artifact: artifact.to_owned(),
            frames: self.frames.len(),
            reused: self.reused,
        }
    }
}

/// A frame found in an earlier artifact.
#[derive(Debug, Clone)]
struct Hit {
    source: usize,
    offset: u64,
    len: u64,
    frame: blake3::Hash,
}

/// The frames of earlier artifacts that a new one may copy, by the BLAKE3 of their chunk.
#[derive(Debug, Default)]
pub(crate) struct Reuse {
    sources: Vec<File>,
    frames: HashMap<blake3::Hash, Hit>,
}

impl Reuse {
    /// Nothing to reuse.
    pub(crate) fn none() -> Reuse {
        Reuse::default()
    }

    /// The frames of the artifacts `paths` whose index is there and of this format, library
    /// and `level`. Anything unreadable is passed over: reuse only saves time.
    pub(crate) fn load(paths: &[PathBuf], level: i32) -> Reuse {
        let mut r = Reuse::none();
        for path in paths {
            let Some(index) = std::fs::read(FrameIndex::path(path))
                .ok()
                .and_then(|b| serde_json::from_slice::<FrameIndex>(&b).ok())
                .filter(|i| i.format == FORMAT && i.zstd == zstd_version() && i.level == level)
            else {
                continue;
            };
            let Ok(file) = File::open(path) else {
                continue;
            };
            let source = r.sources.len();
            r.sources.push(file);
            for f in index.frames {
                let (Ok(chunk), Ok(frame)) = (
                    blake3::Hash::from_hex(&f.chunk),
                    blake3::Hash::from_hex(&f.frame),
                ) else {
                    continue;
                };
                r.frames.entry(chunk).or_insert(Hit {
                    source,
                    offset: f.offset,
                    len: f.len,
                    frame,
                });
            }
        }
        r
    }

    /// The frame of `chunk` and its BLAKE3, if an earlier artifact has it intact.
    fn frame(&self, chunk: &blake3::Hash) -> Option<(Vec<u8>, blake3::Hash)> {
        let hit = self.frames.get(chunk)?;
        let mut buf = vec![0u8; usize::try_from(hit.len).ok()?];
        self.sources[hit.source]
            .read_exact_at(&mut buf, hit.offset)
            .ok()?;
        if blake3::hash(&buf) != hit.frame {
            tracing::debug!(chunk = %chunk, "cached frame changed: compressing again");
            return None;
        }
        Some((buf, hit.frame))
    }
}

fn zstd_version() -> u32 {
    zstd::zstd_safe::version_number()
}

/// A chunk to hash, look up and compress.
enum Chunk {
    Data(Vec<u8>),
    Zeros(usize),
}

/// A chunk's frame.
#[derive(Clone)]
struct Made {
    /// BLAKE3 of the chunk.
    chunk: blake3::Hash,
    /// BLAKE3 of the frame.
    frame: blake3::Hash,
    bytes: Arc<[u8]>,
    /// Copied, not compressed by this build.
    reused: bool,
}

/// A chunk's frame, in stream order.
struct Frame {
    seq: u64,
    made: Made,
}

/// Frames of zero chunks, by length: a disk is mostly zeros.
type ZeroFrames = Mutex<HashMap<usize, Made>>;

/// A frame's compressor: the level, a checksum, the content size in the header.
fn compressor(level: i32) -> io::Result<zstd::bulk::Compressor<'static>> {
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
    Ok(c)
}

/// The frame of `data`: copied from `reuse` if it has it intact, else compressed.
fn make_frame(data: &[u8], reuse: &Reuse, c: &mut zstd::bulk::Compressor<'_>) -> io::Result<Made> {
    let chunk = blake3::hash(data);
    if let Some((bytes, frame)) = reuse.frame(&chunk) {
        return Ok(Made {
            chunk,
            frame,
            bytes: bytes.into(),
            reused: true,
        });
    }
    let bytes = c.compress(data)?;
    Ok(Made {
        chunk,
        frame: blake3::hash(&bytes),
        bytes: bytes.into(),
        reused: false,
    })
}

/// The frame of `len` zero bytes, made once per writer.
fn zero_frame(
    len: usize,
    reuse: &Reuse,
    c: &mut zstd::bulk::Compressor<'_>,
    zeros: &ZeroFrames,
) -> io::Result<Made> {
    let lock = || {
        zeros
            .lock()
            .expect("invariant: no worker panics holding the zero frames")
    };
    if let Some(made) = lock().get(&len) {
        return Ok(Made {
            reused: true,
            ..made.clone()
        });
    }
    let made = make_frame(&vec![0u8; len], reuse, c)?;
    lock().insert(len, made.clone());
    Ok(made)
}

fn worker(
    jobs: &Mutex<Receiver<(u64, Chunk)>>,
    done: &SyncSender<io::Result<Frame>>,
    reuse: &Reuse,
    zeros: &ZeroFrames,
    level: i32,
) {
    let mut c = match compressor(level) {
        Ok(c) => c,
        Err(err) => {
            let _ = done.send(Err(err));
            return;
        }
    };
    loop {
        let job = jobs
            .lock()
            .expect("invariant: no worker panics holding the queue")
            .recv();
        let Ok((seq, chunk)) = job else {
            return;
        };
        let made = match chunk {
            Chunk::Data(data) => make_frame(&data, reuse, &mut c),
            Chunk::Zeros(len) => zero_frame(len, reuse, &mut c, zeros),
        };
        if done.send(made.map(|made| Frame { seq, made })).is_err() {
            return;
        }
    }
}

/// Writes frames to `out` in stream order; returns the digest of what it wrote and the index.
fn write_in_order<W: Write>(
    out: W,
    done: &Receiver<io::Result<Frame>>,
    level: i32,
) -> io::Result<(W, Digested, FrameIndex)> {
    let mut out = HashingWriter::new(out);
    let mut waiting: BTreeMap<u64, Frame> = BTreeMap::new();
    let mut next = 0u64;
    let mut offset = 0u64;
    let mut frames = Vec::new();
    let mut reused = 0;
    for msg in done {
        let f = msg?;
        waiting.insert(f.seq, f);
        while let Some(Frame { made, .. }) = waiting.remove(&next) {
            out.write_all(&made.bytes)?;
            let len = made.bytes.len() as u64;
            frames.push(FrameEntry {
                chunk: made.chunk.to_hex().to_string(),
                frame: made.frame.to_hex().to_string(),
                offset,
                len,
            });
            offset += len;
            next += 1;
            reused += usize::from(made.reused);
        }
    }
    if !waiting.is_empty() {
        return Err(io::Error::other(
            "a frame was lost between the workers and the writer",
        ));
    }
    let (w, digest) = out.finish();
    Ok((
        w,
        digest,
        FrameIndex {
            format: FORMAT,
            zstd: zstd_version(),
            level,
            frames,
            reused,
        },
    ))
}

/// A writer that cuts what it is given into chunks and writes their frames to `W`.
#[derive(Debug)]
pub(crate) struct FrameWriter<W: Write + Send + 'static> {
    chunking: Chunking,
    pending: Vec<u8>,
    /// Zeros not yet materialised in `pending` (only while `pending` is empty).
    zeros: usize,
    seq: u64,
    jobs: Option<SyncSender<(u64, Chunk)>>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<io::Result<(W, Digested, FrameIndex)>>>,
}

impl<W: Write + Send + 'static> FrameWriter<W> {
    /// Starts the workers and the writer.
    pub(crate) fn new(out: W, level: i32, chunking: Chunking, reuse: Reuse) -> FrameWriter<W> {
        let (jobs_tx, jobs_rx) = sync_channel::<(u64, Chunk)>(WORKERS);
        let (done_tx, done_rx) = sync_channel::<io::Result<Frame>>(WORKERS * 2);
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let reuse = Arc::new(reuse);
        let zeros: Arc<ZeroFrames> = Arc::default();
        let workers = (0..WORKERS)
            .map(|_| {
                let (jobs, done, reuse, zeros) = (
                    jobs_rx.clone(),
                    done_tx.clone(),
                    reuse.clone(),
                    zeros.clone(),
                );
                std::thread::spawn(move || worker(&jobs, &done, &reuse, &zeros, level))
            })
            .collect();
        drop(done_tx);
        let writer = std::thread::spawn(move || write_in_order(out, &done_rx, level));
        FrameWriter {
            chunking,
            pending: Vec::new(),
            zeros: 0,
            seq: 0,
            jobs: Some(jobs_tx),
            workers,
            writer: Some(writer),
        }
    }

    fn len(&self) -> usize {
        self.pending.len() + self.zeros
    }

    /// Hands the pending chunk to the workers.
    fn cut(&mut self) -> io::Result<()> {
        let chunk = if self.zeros > 0 {
            Chunk::Zeros(std::mem::take(&mut self.zeros))
        } else if !self.pending.is_empty() {
            let cap = self.chunking.max();
            Chunk::Data(std::mem::replace(
                &mut self.pending,
                Vec::with_capacity(cap),
            ))
        } else {
            return Ok(());
        };
        let sent = self
            .jobs
            .as_ref()
            .map(|j| j.send((self.seq, chunk)).is_ok());
        if sent != Some(true) {
            return Err(self.failure());
        }
        self.seq += 1;
        Ok(())
    }

    /// The writer's error once the pipeline has stopped.
    fn failure(&mut self) -> io::Error {
        self.jobs = None;
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(Err(err))) => err,
            _ => io::Error::other("the frame writer stopped"),
        }
    }

    /// An entry boundary (for [`Chunking::Entries`]): the chunk ends here if it holds `min`
    /// bytes and `key` (the entry's path) hashes to a cut.
    pub(crate) fn boundary(&mut self, key: &[u8]) -> io::Result<()> {
        if let Chunking::Entries { min, .. } = self.chunking
            && self.len() >= min
            && blake3::hash(key).as_bytes()[0] & 7 == 0
        {
            self.cut()?;
        }
        Ok(())
    }

    /// `n` zero bytes, without materialising whole zero chunks.
    pub(crate) fn write_zeros(&mut self, mut n: u64) -> io::Result<()> {
        let max = self.chunking.max();
        while n > 0 {
            let room = max - self.len();
            let k = usize::try_from(n).unwrap_or(usize::MAX).min(room);
            if self.pending.is_empty() {
                self.zeros += k;
            } else {
                self.pending.resize(self.pending.len() + k, 0);
            }
            n -= k as u64;
            if self.len() == max {
                self.cut()?;
            }
        }
        Ok(())
    }

    /// Ends the last chunk, waits for every frame and returns `W`, the digest of what was
    /// written to it and the index of its frames.
    pub(crate) fn finish(mut self) -> io::Result<(W, Digested, FrameIndex)> {
        self.cut()?;
        self.jobs = None;
        for w in self.workers.drain(..) {
            w.join()
                .map_err(|_| io::Error::other("a compression worker panicked"))?;
        }
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(io::Error::other("the frame writer panicked")),
        }
    }
}

impl<W: Write + Send + 'static> Write for FrameWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let max = self.chunking.max();
        if self.zeros > 0 {
            // Data after zeros in one chunk: materialise them.
            self.pending.resize(std::mem::take(&mut self.zeros), 0);
        }
        let k = buf.len().min(max - self.pending.len());
        self.pending.extend_from_slice(&buf[..k]);
        if self.pending.len() == max {
            self.cut()?;
        }
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for FrameWriter<W> {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn data(seed: u64, len: usize) -> Vec<u8> {
        // Compressible but not trivial: words from a small LCG.
        let mut x = seed;
        (0..len)
            .map(|i| {
                if i % 7 == 0 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                }
                b"abcdefghij"[usize::try_from(x >> 60).expect("4 bits") % 10]
            })
            .collect()
    }

    /// Writes `parts` (data, or zeros) through a FrameWriter into `path`; returns the index.
    fn write(path: &Path, parts: &[Option<Vec<u8>>], n_zeros: u64, reuse: Reuse) -> FrameIndex {
        let file = File::create(path).expect("create");
        let mut w = FrameWriter::new(file, 3, Chunking::Fixed { size: 1 << 16 }, reuse);
        for p in parts {
            match p {
                Some(d) => w.write_all(d).expect("write"),
                None => w.write_zeros(n_zeros).expect("zeros"),
            }
        }
        let (_, digest, index) = w.finish().expect("finish");
        assert_eq!(digest.size, std::fs::metadata(path).expect("stat").len());
        index.write(path).expect("index");
        index
    }

    fn decode(path: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        zstd::stream::read::Decoder::new(File::open(path).expect("open"))
            .expect("decoder")
            .read_to_end(&mut out)
            .expect("decode");
        out
    }

    #[test]
    fn frames_decode_as_one_stream_and_a_rebuild_reuses_unchanged_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.zst");
        let parts = vec![Some(data(1, 300_000)), None, Some(data(2, 100_000))];
        let ia = write(&a, &parts, 200_000, Reuse::none());
        let mut want = data(1, 300_000);
        want.extend(vec![0u8; 200_000]);
        want.extend(data(2, 100_000));
        assert_eq!(decode(&a), want);
        assert_eq!(ia.len(), want.len().div_ceil(1 << 16));

        // The same content again, reusing: identical bytes.
        let b = dir.path().join("b.zst");
        let ib = write(
            &b,
            &parts,
            200_000,
            Reuse::load(std::slice::from_ref(&a), 3),
        );
        assert_eq!(std::fs::read(&a).expect("a"), std::fs::read(&b).expect("b"));
        assert_eq!(ia.frames, ib.frames);
        assert_eq!(ib.reused(), ib.len(), "every frame is copied");

        // One chunk changed: only its frame is compressed.
        let mut changed = parts.clone();
        if let Some(Some(d)) = changed.get_mut(2) {
            d[50_000] ^= 1;
        }
        let d = dir.path().join("d.zst");
        let id = write(
            &d,
            &changed,
            200_000,
            Reuse::load(std::slice::from_ref(&a), 3),
        );
        assert_eq!(id.reused(), id.len() - 1);
        want[500_000 + 50_000] ^= 1;
        assert_eq!(decode(&d), want);

        // A reused frame whose file changed is not copied: the output is still right.
        let mut bytes = std::fs::read(&a).expect("a");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&a, &bytes).expect("corrupt a");
        let c = dir.path().join("c.zst");
        let ic = write(
            &c,
            &parts,
            200_000,
            Reuse::load(std::slice::from_ref(&a), 3),
        );
        assert_eq!(std::fs::read(&c).expect("c"), std::fs::read(&b).expect("b"));
        assert_eq!(ic.reused(), ic.len() - 1, "the changed frame was copied");

        // Another level's index is not used.
        assert!(Reuse::load(std::slice::from_ref(&b), 4).frames.is_empty());
        assert!(!Reuse::load(std::slice::from_ref(&b), 3).frames.is_empty());
    }

    #[test]
    fn entry_boundaries_cut_chunks_only_after_min_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t.zst");
        let mut w = FrameWriter::new(
            File::create(&p).expect("create"),
            3,
            Chunking::Entries {
                min: 1000,
                max: 1 << 20,
            },
            Reuse::none(),
        );
        let mut want = Vec::new();
        for i in 0..400u32 {
            w.boundary(format!("file-{i}").as_bytes())
                .expect("boundary");
            let d = data(u64::from(i), 100);
            w.write_all(&d).expect("write");
            want.extend(d);
        }
        let (_, _, index) = w.finish().expect("finish");
        assert_eq!(decode(&p), want);
        // 40 000 bytes, cut only after 1000 of them at about one boundary in eight.
        assert!(
            index.len() > 5 && index.len() <= 40,
            "{} frames",
            index.len()
        );
    }
}
