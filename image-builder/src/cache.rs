//! The stage cache: `CACHE/<stage>/<key>/`, a tree (bootstrap, customise) or the artifacts of a
//! file stage with a `digests.json` of their size, sha256 and stat stamp. An entry is produced
//! in a temporary directory beside it and renamed into place only when complete, so an entry
//! that exists is whole; it is never written to afterwards.
//!
//! Outputs get hard links to a file stage's artifacts (a copy only where the output is on
//! another file system): writing a multi-GB disk image twice, once into the cache and once into
//! `--out`, would cost as much as building it. An output is the user's to boot or edit, and such
//! a change reaches the cache entry through the link; it also changes the file's mtime, so an
//! entry whose files no longer match the stamps taken when it was stored is discarded and built
//! again, never reused.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::build::{BuildError, BuildOptions, StageError};
use crate::events::{Event, Reporter, Stage};
use crate::keys::StageKey;
use crate::manifest::Artifact;

/// How many entries the cache keeps per stage after bootstrap, most recently used first: each
/// one-file change of a template adds a tree and its disks. Bootstrap trees (slow to make, and
/// whose keys change only with the package set) stay until removed by hand.
const CACHE_KEEP: usize = 4;

/// The digests and stamps of a file-stage entry's artifacts, written into the entry before it
/// is renamed into place so that the manifest does not read the artifacts again.
const DIGESTS: &str = "digests.json";

/// Tells apart the temporary directories of concurrent stages of one process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Removes a directory tree when dropped.
#[derive(Debug)]
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.path.symlink_metadata().is_ok() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub(crate) fn out_err(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> BuildError + use<> {
    let path = path.to_owned();
    move |err| BuildError::Output { what, path, err }
}

/// Marks a cache entry as just used.
fn touch(dir: &Path) {
    if let Err(err) = std::fs::File::open(dir).and_then(|f| f.set_modified(SystemTime::now())) {
        tracing::debug!(dir = %dir.display(), error = %common::ErrorChain(&err), "cache entry not touched");
    }
}

/// Removes all but the `CACHE_KEEP` most recently used entries under `root`, never `current`.
/// A build still reading an evicted entry (more than `CACHE_KEEP` concurrent builds of one
/// stage) would fail; entries are large enough that an unbounded cache is the worse problem.
fn prune(root: &Path, current: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut entries: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, path) in entries.into_iter().skip(CACHE_KEEP) {
        if path == current {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::debug!(entry = %path.display(), "cache entry evicted"),
            Err(err) => {
                tracing::warn!(entry = %path.display(), error = %common::ErrorChain(&err), "cache entry not evicted");
            }
        }
    }
}

/// A unique suffix for this process's temporary directories.
fn tag() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A stage being produced: its temporary entry and scratch directories (removed when dropped
/// unless the entry was stored), and when it started.
#[derive(Debug)]
struct Producing {
    stage: Stage,
    key: StageKey,
    root: PathBuf,
    tmp: TempDir,
    scratch: TempDir,
    started: Instant,
}

impl Producing {
    /// Creates the scratch directory under `CACHE/<stage>/` and reports the stage as started.
    fn begin(
        opts: &BuildOptions,
        reporter: &dyn Reporter,
        stage: Stage,
        key: &StageKey,
    ) -> Result<Producing, BuildError> {
        let root = opts.cache_dir.join(stage.as_str());
        std::fs::create_dir_all(&root).map_err(out_err("create cache directory", &root))?;
        let tag = tag();
        let tmp = TempDir {
            path: root.join(format!(".{}.tmp-{tag}", key.0)),
        };
        let scratch = TempDir {
            path: root.join(format!(".{}.scratch-{tag}", key.0)),
        };
        for d in [&tmp.path, &scratch.path] {
            if d.symlink_metadata().is_ok() {
                std::fs::remove_dir_all(d).map_err(out_err("remove leftover", d))?;
            }
        }
        std::fs::create_dir_all(&scratch.path)
            .map_err(out_err("create directory", &scratch.path))?;
        reporter.event(&Event::StageStarted {
            stage,
            key: key.0.clone(),
        });
        Ok(Producing {
            stage,
            key: key.clone(),
            root,
            tmp,
            scratch,
            started: Instant::now(),
        })
    }

    fn fail(&self, err: StageError) -> BuildError {
        BuildError::Stage {
            stage: self.stage,
            err,
        }
    }

    /// Reports the stage as finished (at `finished`) and renames the entry into place;
    /// returns its path, and whether it is this build's (not another's that stored the same
    /// key first).
    fn store(
        self,
        reporter: &dyn Reporter,
        bounded: bool,
        finished: Instant,
    ) -> Result<(PathBuf, bool), BuildError> {
        let duration = finished.duration_since(self.started).as_millis();
        reporter.event(&Event::StageFinished {
            stage: self.stage,
            key: self.key.0.clone(),
            duration_ms: u64::try_from(duration).unwrap_or(u64::MAX),
        });
        let dir = self.root.join(&self.key.0);
        let ours = match std::fs::rename(&self.tmp.path, &dir) {
            Ok(()) => true,
            // Another build finished the same key first: use theirs.
            Err(_) if dir.is_dir() => false,
            Err(err) => return Err(out_err("store cache entry", &dir)(err)),
        };
        if bounded {
            touch(&dir);
            prune(&self.root, &dir);
        }
        Ok((dir, ours))
    }
}

/// Returns the cache directory of the tree stage `stage` under `key` (`CACHE/<stage>/<key>`),
/// running `produce(dir, scratch)` first if there is none. `dir` does not exist yet when
/// `produce` is called; it is renamed into the cache only when `produce` succeeded.
pub(crate) fn cached_dir(
    opts: &BuildOptions,
    reporter: &dyn Reporter,
    stage: Stage,
    key: &StageKey,
    produce: impl FnOnce(&Path, &Path) -> Result<(), StageError>,
) -> Result<PathBuf, BuildError> {
    let dir = opts.cache_dir.join(stage.as_str()).join(&key.0);
    let bounded = stage != Stage::Bootstrap;
    if dir.is_dir() {
        if bounded {
            touch(&dir);
        }
        reporter.event(&Event::StageCached {
            stage,
            key: key.0.clone(),
        });
        return Ok(dir);
    }
    let p = Producing::begin(opts, reporter, stage, key)?;
    produce(&p.tmp.path, &p.scratch.path).map_err(|err| p.fail(err))?;
    Ok(p.store(reporter, bounded, Instant::now())?.0)
}

/// What tells whether a file changed since its entry was stored: writing to it (through an
/// output's hard link) changes its mtime, replacing it changes its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        let md = std::fs::symlink_metadata(path)?;
        Ok(Stamp {
            ino: md.ino(),
            size: md.len(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
        })
    }
}

/// One artifact as `digests.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    artifact: Artifact,
    stamp: Stamp,
}

/// The artifacts `names` of the entry `dir` with their digests, if its `digests.json` lists
/// exactly them and every file still matches its stamp.
fn intact(dir: &Path, names: &[&str]) -> Option<Vec<Artifact>> {
    let stored: Vec<Stored> = serde_json::from_slice(&std::fs::read(dir.join(DIGESTS)).ok()?)
        .ok()
        .filter(|s: &Vec<Stored>| {
            s.iter()
                .map(|s| s.artifact.name.as_str())
                .eq(names.iter().copied())
        })?;
    stored
        .into_iter()
        .map(|s| {
            let now = Stamp::of(&dir.join(&s.artifact.name)).ok()?;
            (now == s.stamp).then_some(s.artifact)
        })
        .collect()
}

/// The artifacts of one file stage, in its cache entry.
#[derive(Debug)]
pub(crate) struct CachedFiles {
    stage: Stage,
    dir: PathBuf,
    artifacts: Vec<Artifact>,
}

impl CachedFiles {
    /// The cached file `name`.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Links every artifact into `out` (copies where a link cannot be made) and returns their
    /// digests.
    pub(crate) fn link_to(&self, out: &Path) -> Result<Vec<Artifact>, BuildError> {
        for a in &self.artifacts {
            let src = self.dir.join(&a.name);
            let dst = out.join(&a.name);
            if let Err(err) = std::fs::hard_link(&src, &dst) {
                tracing::debug!(src = %src.display(), error = %common::ErrorChain(&err), "artifact copied, not linked");
                crate::artifact::sparse_copy(&src, &dst).map_err(|err| BuildError::Stage {
                    stage: self.stage,
                    err: StageError::Io {
                        what: "copy",
                        path: src,
                        err,
                    },
                })?;
            }
        }
        Ok(self.artifacts.clone())
    }
}

/// Digests of the files `names` in `dir`: from `known` where the stage hashed them as it wrote
/// them, the others hashed now, side by side.
fn digests(dir: &Path, names: &[&str], known: Vec<Artifact>) -> std::io::Result<Vec<Artifact>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|&name| {
                let known = known.iter().find(|a| a.name == name).cloned();
                s.spawn(move || match known {
                    Some(a) => Ok(a),
                    None => crate::artifact::hash_file(&dir.join(name)).map(|d| Artifact {
                        name: name.to_owned(),
                        size: d.size,
                        sha256: d.sha256,
                    }),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("invariant: hashing does not panic"))
            .collect()
    })
}

/// A file-stage entry looked up in the cache: there, or to be produced.
#[derive(Debug)]
pub(crate) enum FileEntry {
    /// The entry exists and is intact.
    Cached(CachedFiles),
    /// The entry is being produced.
    Producing(ProducingFiles),
}

/// A file-stage entry being produced: write the artifacts into [`ProducingFiles::dir`], then
/// [`ProducingFiles::store`] it.
#[derive(Debug)]
pub(crate) struct ProducingFiles {
    inner: Producing,
    names: Vec<String>,
    /// The artifacts' digests, once [`ProducingFiles::hash`] ran, and when.
    hashed: Option<(Instant, Vec<Artifact>)>,
}

impl ProducingFiles {
    /// Where the artifacts are written (it exists).
    pub(crate) fn dir(&self) -> &Path {
        &self.inner.tmp.path
    }

    /// Scratch space, removed afterwards.
    pub(crate) fn scratch(&self) -> &Path {
        &self.inner.scratch.path
    }

    /// The stage's error for `err`.
    pub(crate) fn fail(&self, err: StageError) -> BuildError {
        self.inner.fail(err)
    }

    /// Takes the digests of every artifact, `known` (hashed while written) or hashed now. The
    /// stage counts as finished from here: what reads the artifacts may run before it is stored.
    pub(crate) fn hash(&mut self, known: Vec<Artifact>) -> Result<(), BuildError> {
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        let d = digests(self.dir(), &names, known).map_err(|err| {
            self.fail(StageError::Io {
                what: "hash",
                path: self.dir().to_owned(),
                err,
            })
        })?;
        self.hashed = Some((Instant::now(), d));
        Ok(())
    }

    /// Records the digests (hashing the artifacts first unless [`ProducingFiles::hash`] did)
    /// and stamps, and stores the entry.
    pub(crate) fn store(mut self, reporter: &dyn Reporter) -> Result<CachedFiles, BuildError> {
        if self.hashed.is_none() {
            self.hash(Vec::new())?;
        }
        let (finished, artifacts) = self.hashed.take().expect("invariant: hashed just above");
        let io = |what: &'static str, path: &Path| {
            let path = path.to_owned();
            move |err| StageError::Io { what, path, err }
        };
        let dir = self.dir().to_owned();
        let stored = artifacts
            .iter()
            .map(|a| {
                let path = dir.join(&a.name);
                Ok(Stored {
                    artifact: a.clone(),
                    stamp: Stamp::of(&path).map_err(io("stat", &path))?,
                })
            })
            .collect::<Result<Vec<_>, StageError>>()
            .map_err(|err| self.fail(err))?;
        let mut json =
            serde_json::to_vec_pretty(&stored).expect("invariant: digests are plain data");
        json.push(b'\n');
        let path = dir.join(DIGESTS);
        common::write_atomic(&path, &json, 0o644)
            .map_err(io("write", &path))
            .map_err(|err| self.fail(err))?;
        let stage = self.inner.stage;
        let names = self.names;
        let (dir, ours) = self.inner.store(reporter, true, finished)?;
        let artifacts = if ours {
            artifacts
        } else {
            // Another build stored the same key first: describe what is there.
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            intact(&dir, &names).unwrap_or(artifacts)
        };
        Ok(CachedFiles {
            stage,
            dir,
            artifacts,
        })
    }
}

/// Looks up the file stage `stage` under `key`: an intact entry is reused; one whose files
/// changed since they were stored (an output edited in place) is discarded and produced again.
pub(crate) fn lookup_files(
    opts: &BuildOptions,
    reporter: &dyn Reporter,
    stage: Stage,
    key: &StageKey,
    names: &[&str],
) -> Result<FileEntry, BuildError> {
    let root = opts.cache_dir.join(stage.as_str());
    let dir = root.join(&key.0);
    if dir.is_dir() {
        if let Some(artifacts) = intact(&dir, names) {
            touch(&dir);
            reporter.event(&Event::StageCached {
                stage,
                key: key.0.clone(),
            });
            return Ok(FileEntry::Cached(CachedFiles {
                stage,
                dir,
                artifacts,
            }));
        }
        tracing::warn!(%stage, entry = %dir.display(), "cache entry changed since it was stored (an output edited in place?): building it again");
        let stale = root.join(format!(".{}.stale-{}", key.0, tag()));
        match std::fs::rename(&dir, &stale) {
            Ok(()) => drop(TempDir { path: stale }),
            // Another build replaced it first.
            Err(_) if !dir.exists() => {}
            Err(err) => return Err(out_err("discard changed cache entry", &dir)(err)),
        }
    }
    let inner = Producing::begin(opts, reporter, stage, key)?;
    std::fs::create_dir(&inner.tmp.path).map_err(|err| {
        inner.fail(StageError::Io {
            what: "create directory",
            path: inner.tmp.path.clone(),
            err,
        })
    })?;
    Ok(FileEntry::Producing(ProducingFiles {
        inner,
        names: names.iter().map(|&n| n.to_owned()).collect(),
        hashed: None,
    }))
}

/// The artifact `name` of every intact entry of the one-artifact file stage `stage`: what a
/// new entry of the stage may copy pieces of.
pub(crate) fn siblings(opts: &BuildOptions, stage: Stage, name: &str) -> Vec<PathBuf> {
    let root = opts.cache_dir.join(stage.as_str());
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|dir| intact(dir, &[name]).is_some())
        .map(|dir| dir.join(name))
        .collect()
}

/// Returns the cached files `names` of `stage` under `key` with their digests, producing them
/// first if the cache has no intact entry: `produce(dir, scratch)` writes them into `dir` and
/// returns the digests of those it hashed while writing; the others are hashed before the entry
/// is stored.
pub(crate) fn cached_files(
    opts: &BuildOptions,
    reporter: &dyn Reporter,
    stage: Stage,
    key: &StageKey,
    names: &[&str],
    produce: impl FnOnce(&Path, &Path) -> Result<Vec<Artifact>, StageError>,
) -> Result<CachedFiles, BuildError> {
    match lookup_files(opts, reporter, stage, key, names)? {
        FileEntry::Cached(c) => Ok(c),
        FileEntry::Producing(mut p) => {
            let known = produce(p.dir(), p.scratch()).map_err(|err| p.fail(err))?;
            p.hash(known)?;
            p.store(reporter)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn prune_keeps_the_most_recently_used_entries_and_the_current_one() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        let t0 = SystemTime::now() - Duration::from_secs(3600);
        for (i, name) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
            let d = root.join(name);
            std::fs::create_dir(&d).expect("mkdir");
            std::fs::write(d.join("data"), name).expect("write");
            let age = u64::try_from(i).expect("small") * 60;
            std::fs::File::open(&d)
                .and_then(|f| f.set_modified(t0 + Duration::from_secs(age)))
                .expect("set mtime");
        }
        std::fs::create_dir(root.join(".g.tmp-1")).expect("in-progress entry");
        // "a" is the oldest but in use by this build; "b" was just used again.
        touch(&root.join("b"));
        prune(root, &root.join("a"));
        let mut left: Vec<String> = std::fs::read_dir(root)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".g.tmp-1", "a", "b", "d", "e", "f"]);
    }

    fn opts(cache: &Path) -> BuildOptions {
        BuildOptions {
            template: PathBuf::new(),
            out: PathBuf::new(),
            sets: Vec::new(),
            cache_dir: cache.to_owned(),
            apt_root: PathBuf::new(),
            source_date_epoch: 0,
        }
    }

    /// Runs a file stage writing `content` as `a.bin`; returns whether it ran.
    fn stage(opts: &BuildOptions, content: &[u8]) -> (bool, CachedFiles) {
        let mut ran = false;
        let c = cached_files(
            opts,
            &crate::events::NullReporter,
            Stage::Disk,
            &StageKey("k".into()),
            &["a.bin"],
            |dir, _| {
                ran = true;
                std::fs::write(dir.join("a.bin"), content).map_err(|err| StageError::Io {
                    what: "write",
                    path: dir.to_owned(),
                    err,
                })?;
                Ok(Vec::new())
            },
        )
        .expect("stage");
        (ran, c)
    }

    #[test]
    fn outputs_are_links_and_an_entry_edited_through_one_is_built_again() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let o = opts(&tmp.path().join("cache"));
        let (ran, c) = stage(&o, b"golden");
        assert!(ran);
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).expect("mkdir");
        let a = c.link_to(&out).expect("link");
        assert_eq!(a[0].size, 6);
        let linked = std::fs::metadata(out.join("a.bin")).expect("stat");
        assert_eq!(
            linked.ino(),
            std::fs::metadata(c.path("a.bin")).expect("stat").ino()
        );

        // Unchanged: reused.
        let (ran, _) = stage(&o, b"golden");
        assert!(!ran, "an intact entry was built again");

        // The output is edited in place (as booting it would): the entry is not reused, and
        // the edited bytes never come back out of the cache.
        std::thread::sleep(Duration::from_millis(10));
        std::fs::OpenOptions::new()
            .write(true)
            .open(out.join("a.bin"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"EDITED"))
            .expect("edit output");
        let (ran, c) = stage(&o, b"golden");
        assert!(ran, "an entry edited through an output was reused");
        assert_eq!(std::fs::read(c.path("a.bin")).expect("read"), b"golden");
        assert_eq!(std::fs::read(out.join("a.bin")).expect("read"), b"EDITED");
        let (ran, _) = stage(&o, b"golden");
        assert!(!ran, "the rebuilt entry was not reused");
    }
}
