//! The build pipeline: spec → bootstrap (cached) → customise → pack, into a temporary directory
//! beside `--out` that is renamed into place only when everything succeeded.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::bootstrap::{self, BootstrapInputs};
use crate::customise::{self, CustomiseInputs};
use crate::disk::{self, DiskIds};
use crate::events::{Event, Reporter, Stage};
use crate::keys::{StageKey, stage_key};
use crate::manifest::{self, Artifact, Manifest};
use crate::mirror::{self, AptLine, MirrorError};
use crate::ramdisk;
use crate::render::RenderError;
use crate::spec::{Kind, Spec, SpecError};

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The template folder (holding `image.toml`).
    pub template: PathBuf,
    /// The output directory; replaced atomically at the end.
    pub out: PathBuf,
    /// `--set key=value` overrides of the template's `[vars]`.
    pub sets: Vec<(String, String)>,
    /// Where stage outputs are cached.
    pub cache_dir: PathBuf,
    /// The apt configuration directory the mirror is taken from (normally `/etc/apt`).
    pub apt_root: PathBuf,
    /// SOURCE_DATE_EPOCH: every mtime in the tarball.
    pub source_date_epoch: u64,
}

/// What a successful build produced.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The output directory.
    pub out: PathBuf,
    /// Its manifest (also written as `manifest.json`).
    pub manifest: Manifest,
}

/// Why a stage failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// An external command failed (its argv, status and stderr tail are in the source).
    #[error("command failed")]
    Command(#[from] common::CommandError),
    /// A file operation failed.
    #[error("failed to {what} `{path}`")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        err: std::io::Error,
    },
    /// A template file could not be rendered.
    #[error("template rendering failed")]
    Render(#[from] RenderError),
    /// A template file that should be rendered is not UTF-8.
    #[error("template file `{path}` is not UTF-8 (set render = false for binary files)")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// The tarball could not be written.
    #[error("rootfs tarball failed")]
    Tar(#[from] crate::tarball::TarError),
    /// A hook script failed.
    #[error("hook `{hook}` at hook point {at} exited with code {code}: {stderr}")]
    Hook {
        /// Hook name.
        hook: String,
        /// Hook point.
        at: &'static str,
        /// Exit code (-1 when killed by a signal).
        code: i32,
        /// The tail of its stderr.
        stderr: String,
    },
    /// The request cannot be carried out.
    #[error("{what}")]
    Unsupported {
        /// What is wrong.
        what: &'static str,
    },
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The template spec is invalid.
    #[error("invalid template")]
    Spec(#[from] SpecError),
    /// The mirror could not be determined.
    #[error("cannot determine the Debian mirror")]
    Mirror(#[from] MirrorError),
    /// A program the build needs is not installed.
    #[error("`{tool}` not found: install the Debian package `{package}`")]
    MissingTool {
        /// The program.
        tool: &'static str,
        /// The package providing it.
        package: &'static str,
    },
    /// A stage failed.
    #[error("stage {stage} failed")]
    Stage {
        /// Which stage.
        stage: Stage,
        /// Why.
        #[source]
        err: StageError,
    },
    /// The output directory could not be prepared or moved into place.
    #[error("failed to {what} `{path}`")]
    Output {
        /// The operation.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        err: std::io::Error,
    },
}

const TOOL_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The programs (and files) a build of this kind needs, with their Debian packages.
fn required_tools(spec: &Spec) -> Vec<(&'static str, &'static str)> {
    let mut t = vec![("cp", "coreutils")];
    match spec.kind {
        Kind::Ramdisk => {
            t.extend([
                ("mmdebstrap", "mmdebstrap"),
                ("depmod", "kmod"),
                ("cpio", "cpio"),
            ]);
        }
        Kind::Disk | Kind::Rootfs => {
            t.push(match spec.bootstrap.tool {
                crate::BootstrapTool::Debootstrap => ("debootstrap", "debootstrap"),
                crate::BootstrapTool::Mmdebstrap => ("mmdebstrap", "mmdebstrap"),
            });
            t.extend([
                ("systemctl", "systemd"),
                ("useradd", "passwd"),
                ("unshare", "util-linux"),
            ]);
        }
    }
    if spec.kind == Kind::Disk {
        t.extend([
            ("sfdisk", "fdisk"),
            ("mkfs.ext4", "e2fsprogs"),
            ("mkfs.vfat", "dosfstools"),
            ("mcopy", "mtools"),
            ("qemu-img", "qemu-utils"),
        ]);
        if spec.disk.boot.bios() {
            t.extend([
                ("syslinux", "syslinux"),
                ("/usr/lib/SYSLINUX/gptmbr.bin", "syslinux-common"),
            ]);
        }
        if spec.disk.boot.uefi() {
            t.push((
                "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
                "systemd-boot-efi",
            ));
        }
    }
    t
}

fn check_tools(spec: &Spec) -> Result<(), BuildError> {
    for (tool, package) in required_tools(spec) {
        let found = if tool.starts_with('/') {
            Path::new(tool).exists()
        } else {
            TOOL_DIRS.iter().any(|d| Path::new(d).join(tool).exists())
        };
        if !found {
            return Err(BuildError::MissingTool { tool, package });
        }
    }
    Ok(())
}

fn ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Removes a directory tree when dropped unless disarmed.
struct TempDir {
    path: PathBuf,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.path.exists() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn out_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + use<> {
    let path = path.to_owned();
    move |err| BuildError::Output {
        what,
        path: path.to_owned(),
        err,
    }
}

/// The stage keys of a build, computed before anything runs.
#[derive(Debug, Clone, Serialize)]
pub struct StageKeys {
    /// Bootstrap key.
    pub bootstrap: StageKey,
    /// Customise (disk) or initramfs (ramdisk) key.
    pub customise: StageKey,
    /// `rootfs.tar.zst` key (disk and rootfs builds).
    pub rootfs: Option<StageKey>,
    /// `disk.raw` key (disk builds).
    pub disk: Option<StageKey>,
    /// `disk.qcow2` key (disk builds).
    pub qcow2: Option<StageKey>,
    /// `disk.raw.zst` key (disk builds with `[disk] zstd`).
    pub disk_zst: Option<StageKey>,
}

impl StageKeys {
    /// One hash over every stage key: the build's input hash.
    pub fn input_hash(&self) -> StageKey {
        stage_key("input", None, self)
    }
}

/// The resolved inputs of a build, for key computation and the pipeline.
#[derive(Debug)]
pub struct Plan {
    /// The validated spec.
    pub spec: Spec,
    /// Bootstrap inputs.
    bootstrap: BootstrapInputs,
    /// Rendered files.
    files: Vec<customise::RenderedFile>,
    /// Stage keys.
    pub keys: StageKeys,
}

/// Loads the template and computes every stage key without running anything.
pub fn plan(opts: &BuildOptions) -> Result<Plan, BuildError> {
    let spec = Spec::load(&opts.template, &opts.sets)?;
    let mirrors: Vec<AptLine> = match &spec.bootstrap.mirror {
        Some(uri) => vec![AptLine {
            uri: uri.clone(),
            suite: spec.bootstrap.suite.clone(),
            components: spec.bootstrap.components.clone(),
        }],
        None => {
            let all = mirror::machine_sources(&opts.apt_root)?;
            mirror::for_suite(&opts.apt_root, &all, &spec.bootstrap.suite)?
        }
    };
    let stage = |stage| move |err| BuildError::Stage { stage, err };
    let bootstrap = BootstrapInputs::new(&spec, &mirrors).map_err(stage(Stage::Bootstrap))?;
    let bkey = bootstrap.key();
    let files = customise::render_files(&spec).map_err(stage(Stage::Customise))?;
    let keys = match spec.kind {
        Kind::Disk | Kind::Rootfs => {
            let c = CustomiseInputs::new(&spec, &files, opts.source_date_epoch)
                .map_err(stage(Stage::Customise))?;
            let ckey = c.key(&bkey);
            let rootfs = stage_key("rootfs", Some(&ckey), &opts.source_date_epoch);
            let (disk, qcow2, disk_zst) = if spec.kind == Kind::Disk {
                let dkey = disk::key(&ckey, &spec.disk);
                let qkey = stage_key("qcow2", Some(&dkey), &spec.disk.qcow2_compress);
                let zkey = spec.disk.zstd.then(|| disk::zst_key(&dkey));
                (Some(dkey), Some(qkey), zkey)
            } else {
                (None, None, None)
            };
            StageKeys {
                bootstrap: bkey,
                customise: ckey,
                rootfs: Some(rootfs),
                disk,
                qcow2,
                disk_zst,
            }
        }
        Kind::Ramdisk => {
            let ikey = ramdisk::key(&spec, &bkey, &files, opts.source_date_epoch)
                .map_err(stage(Stage::Initramfs))?;
            StageKeys {
                bootstrap: bkey,
                customise: ikey,
                rootfs: None,
                disk: None,
                qcow2: None,
                disk_zst: None,
            }
        }
    };
    Ok(Plan {
        spec,
        bootstrap,
        files,
        keys,
    })
}

/// Runs `f` as `stage`, reporting its start and end.
fn timed<T>(
    reporter: &dyn Reporter,
    stage: Stage,
    key: &StageKey,
    f: impl FnOnce() -> Result<T, StageError>,
) -> Result<T, BuildError> {
    reporter.event(&Event::StageStarted {
        stage,
        key: key.0.clone(),
    });
    let started = Instant::now();
    let v = f().map_err(|err| BuildError::Stage { stage, err })?;
    reporter.event(&Event::StageFinished {
        stage,
        key: key.0.clone(),
        duration_ms: ms(started),
    });
    Ok(v)
}

/// Tells apart the temporary directories of concurrent stages of one process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// How many entries the cache keeps per stage after bootstrap, most recently used first: each
/// one-file change of a template adds a tree and its disks. Bootstrap trees (slow to make, and
/// whose keys change only with the package set) stay until removed by hand.
const CACHE_KEEP: usize = 4;

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

/// Returns the cache directory of `stage` under `key` (`CACHE/<stage>/<key>`), running
/// `produce(dir, scratch)` first if there is none. `dir` does not exist yet when `produce` is
/// called; it is renamed into the cache only when `produce` succeeded, so an entry that exists
/// is complete.
fn cached_dir(
    opts: &BuildOptions,
    reporter: &dyn Reporter,
    stage: Stage,
    key: &StageKey,
    produce: impl FnOnce(&Path, &Path) -> Result<(), StageError>,
) -> Result<PathBuf, BuildError> {
    let root = opts.cache_dir.join(stage.as_str());
    let dir = root.join(&key.0);
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
    std::fs::create_dir_all(&root).map_err(out_err("create cache directory", &root))?;
    let tag = format!(
        "{}-{}",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    );
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
    std::fs::create_dir_all(&scratch.path).map_err(out_err("create directory", &scratch.path))?;
    timed(reporter, stage, key, || produce(&tmp.path, &scratch.path))?;
    match std::fs::rename(&tmp.path, &dir) {
        Ok(()) => {}
        // Another build finished the same key first: use theirs.
        Err(_) if dir.is_dir() => {}
        Err(err) => return Err(out_err("store cache entry", &dir)(err)),
    }
    if bounded {
        touch(&dir);
        prune(&root, &dir);
    }
    Ok(dir)
}

/// The digests of a file-stage cache entry's artifacts, written into the entry before it is
/// renamed into place so that the manifest does not read the artifacts again.
const DIGESTS: &str = "digests.json";

/// The artifacts of one file stage, in its cache entry.
#[derive(Debug)]
struct CachedFiles {
    stage: Stage,
    dir: PathBuf,
    artifacts: Vec<Artifact>,
}

impl CachedFiles {
    /// The cached file `name`.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Copies every artifact into `out` and returns their digests. Copies, never links: booting
    /// or editing an output must not change the cache.
    fn copy_to(&self, out: &Path) -> Result<Vec<Artifact>, BuildError> {
        for a in &self.artifacts {
            let src = self.dir.join(&a.name);
            crate::artifact::sparse_copy(&src, &out.join(&a.name)).map_err(|err| {
                BuildError::Stage {
                    stage: self.stage,
                    err: StageError::Io {
                        what: "copy",
                        path: src,
                        err,
                    },
                }
            })?;
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

/// Returns the cached files `names` of `stage` under `key` with their digests, producing them
/// first if the cache has none: `produce(dir, scratch)` writes them into `dir` and returns the
/// digests of those it hashed while writing; the others are hashed before the entry is stored.
fn cached_files(
    opts: &BuildOptions,
    reporter: &dyn Reporter,
    stage: Stage,
    key: &StageKey,
    names: &[&str],
    produce: impl FnOnce(&Path, &Path) -> Result<Vec<Artifact>, StageError>,
) -> Result<CachedFiles, BuildError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |err| StageError::Io { what, path, err }
    };
    let dir = cached_dir(opts, reporter, stage, key, |dir, scratch| {
        std::fs::create_dir(dir).map_err(io("create directory", dir))?;
        let known = produce(dir, scratch)?;
        let artifacts = digests(dir, names, known).map_err(io("hash", dir))?;
        let mut json =
            serde_json::to_vec_pretty(&artifacts).expect("invariant: digests are plain data");
        json.push(b'\n');
        let path = dir.join(DIGESTS);
        common::write_atomic(&path, &json, 0o644).map_err(io("write", &path))
    })?;
    let stored: Option<Vec<Artifact>> = std::fs::read(dir.join(DIGESTS))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let artifacts = match stored {
        Some(a) if a.iter().map(|a| a.name.as_str()).eq(names.iter().copied()) => a,
        // An entry of an older image-builder, without digests.
        _ => digests(&dir, names, Vec::new()).map_err(|err| BuildError::Stage {
            stage,
            err: io("hash", &dir)(err),
        })?,
    };
    Ok(CachedFiles {
        stage,
        dir,
        artifacts,
    })
}

/// The first error of several stages run side by side.
fn first_err<T>(
    results: impl IntoIterator<Item = Result<T, BuildError>>,
) -> Result<Vec<T>, BuildError> {
    results.into_iter().collect()
}

/// Builds the template described by `opts`, reporting progress to `reporter`.
pub fn build(opts: &BuildOptions, reporter: &dyn Reporter) -> Result<BuildOutput, BuildError> {
    let started = Instant::now();
    let plan = plan(opts)?;
    check_tools(&plan.spec)?;
    let input_hash = plan.keys.input_hash();
    reporter.event(&Event::BuildStarted {
        template: plan.spec.name.clone(),
        input_hash: input_hash.0.clone(),
    });

    let out = &opts.out;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    std::fs::create_dir_all(&parent).map_err(out_err("create directory", &parent))?;
    let pid = std::process::id();
    let tmp = TempDir {
        path: parent.join(format!(".{name}.tmp-{pid}")),
    };
    if tmp.path.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&tmp.path).map_err(out_err("remove leftover", &tmp.path))?;
    }
    std::fs::create_dir_all(&tmp.path).map_err(out_err("create directory", &tmp.path))?;

    let spec = &plan.spec;
    let keys = &plan.keys;
    let sde = opts.source_date_epoch;
    let tree = cached_dir(
        opts,
        reporter,
        Stage::Bootstrap,
        &keys.bootstrap,
        |dir, scratch| bootstrap::run(&plan.bootstrap, dir, scratch),
    )?;
    let mut extra = manifest::Extra::default();
    let artifacts: Vec<Artifact>;
    let packages = match spec.kind {
        Kind::Disk | Kind::Rootfs => {
            // The customised tree is cached too; the artifacts below only read it.
            let rootfs = cached_dir(
                opts,
                reporter,
                Stage::Customise,
                &keys.customise,
                |dir, _| {
                    common::run_cmd(
                        Command::new("cp")
                            .arg(customise::copy_mode(spec))
                            .arg(&tree)
                            .arg(dir),
                    )?;
                    customise::run(spec, &plan.files, dir, sde, reporter)
                },
            )?;
            let rkey = keys
                .rootfs
                .as_ref()
                .expect("invariant: disk and rootfs plans have a rootfs key");
            let tarball = || {
                cached_files(
                    opts,
                    reporter,
                    Stage::Rootfs,
                    rkey,
                    &["rootfs.tar.zst"],
                    |dir, _| {
                        let d = crate::tarball::write_rootfs_tar_digest(
                            &rootfs,
                            &dir.join("rootfs.tar.zst"),
                            sde,
                        )?;
                        Ok(vec![Artifact {
                            name: "rootfs.tar.zst".into(),
                            size: d.size,
                            sha256: d.sha256,
                        }])
                    },
                )?
                .copy_to(&tmp.path)
            };
            match (&keys.disk, &keys.qcow2) {
                (Some(dkey), Some(qkey)) => {
                    let ids = DiskIds::new(dkey);
                    let disks = || -> Result<Vec<Artifact>, BuildError> {
                        let raw = cached_files(
                            opts,
                            reporter,
                            Stage::Disk,
                            dkey,
                            &["disk.raw"],
                            |dir, scratch| {
                                disk::build_raw(
                                    &rootfs,
                                    &dir.join("disk.raw"),
                                    &spec.disk,
                                    &ids,
                                    scratch,
                                    sde,
                                )?;
                                Ok(Vec::new())
                            },
                        )?;
                        let raw_path = raw.path("disk.raw");
                        let qcow2 = || {
                            cached_files(
                                opts,
                                reporter,
                                Stage::Qcow2,
                                qkey,
                                &["disk.qcow2"],
                                |dir, _| {
                                    disk::build_qcow2(
                                        &raw_path,
                                        &dir.join("disk.qcow2"),
                                        spec.disk.qcow2_compress,
                                    )?;
                                    Ok(Vec::new())
                                },
                            )?
                            .copy_to(&tmp.path)
                        };
                        let zst = |zkey: &StageKey| {
                            cached_files(
                                opts,
                                reporter,
                                Stage::DiskZst,
                                zkey,
                                &["disk.raw.zst"],
                                |dir, _| {
                                    let d =
                                        disk::build_raw_zst(&raw_path, &dir.join("disk.raw.zst"))?;
                                    Ok(vec![Artifact {
                                        name: "disk.raw.zst".into(),
                                        size: d.size,
                                        sha256: d.sha256,
                                    }])
                                },
                            )?
                            .copy_to(&tmp.path)
                        };
                        // qcow2, zst and the output's copy of disk.raw all read the cached
                        // disk.raw: run them side by side.
                        let parts = std::thread::scope(|s| {
                            let q = s.spawn(qcow2);
                            let z = keys.disk_zst.as_ref().map(|k| s.spawn(move || zst(k)));
                            let r = raw.copy_to(&tmp.path);
                            let mut parts =
                                vec![r, q.join().expect("invariant: qcow2 does not panic")];
                            if let Some(z) = z {
                                parts.push(z.join().expect("invariant: zstd does not panic"));
                            }
                            parts
                        });
                        Ok(first_err(parts)?.concat())
                    };
                    // The tarball and the disks only read the tree: build them side by side.
                    let (tar, disks) = std::thread::scope(|s| {
                        let tar = s.spawn(tarball);
                        let disks = disks();
                        (tar.join(), disks)
                    });
                    let tar = tar.expect("invariant: the tarball thread does not panic")?;
                    artifacts = first_err([Ok(tar), disks])?.concat();
                    extra.kernel_cmdline = Some(disk::kernel_cmdline(&ids, &spec.disk.kernel_args));
                    extra.root_partuuid = Some(ids.root.clone());
                }
                _ => artifacts = tarball()?,
            }
            // What a hook installed is in the image: list the customised tree, not the bootstrap.
            manifest::dpkg_packages(&rootfs)
        }
        Kind::Ramdisk => {
            artifacts = cached_files(
                opts,
                reporter,
                Stage::Initramfs,
                &keys.customise,
                &["initrd.img", "vmlinuz"],
                |dir, scratch| {
                    ramdisk::build(spec, &plan.files, &tree, dir, scratch, sde)?;
                    Ok(Vec::new())
                },
            )?
            .copy_to(&tmp.path)?;
            manifest::dpkg_packages(&tree)
        }
    };
    let mkey = stage_key("manifest", Some(&input_hash), &());
    let manifest = timed(reporter, Stage::Manifest, &mkey, || {
        manifest::write(
            spec,
            &input_hash,
            keys,
            packages,
            extra,
            artifacts,
            &tmp.path,
        )
    })?;

    // Move into place: the old output (if any) is replaced only now.
    let old = TempDir {
        path: parent.join(format!(".{name}.old-{pid}")),
    };
    if out.exists() {
        std::fs::rename(out, &old.path).map_err(out_err("move aside", out))?;
    }
    std::fs::rename(&tmp.path, out).map_err(out_err("move into place", out))?;
    drop(old);
    reporter.event(&Event::BuildFinished {
        out: out.display().to_string(),
        duration_ms: ms(started),
    });
    Ok(BuildOutput {
        out: out.clone(),
        manifest,
    })
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
}
