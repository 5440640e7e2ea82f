//! The build pipeline: spec → bootstrap (cached) → customise → pack, into a temporary directory
//! beside `--out` that is renamed into place only when everything succeeded.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::artifact::Digested;
use crate::bootstrap::{self, BootstrapInputs};
use crate::cache::{self, CachedFiles, FileEntry, TempDir, cached_dir, cached_files, out_err};
use crate::customise::{self, CustomiseInputs};
use crate::disk::{self, DiskIds};
use crate::events::{Event, Reporter, Stage};
use crate::frames::{FrameIndex, Reuse};
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
    /// The disk's UUIDs (disk builds).
    disk_ids: Option<DiskIds>,
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
    let disk_ids =
        (spec.kind == Kind::Disk).then(|| DiskIds::for_image(&bkey, &spec.name, &spec.disk));
    let keys = match spec.kind {
        Kind::Disk | Kind::Rootfs => {
            let c = CustomiseInputs::new(&spec, &files, opts.source_date_epoch)
                .map_err(stage(Stage::Customise))?;
            let ckey = c.key(&bkey);
            let rootfs = stage_key(
                "rootfs",
                Some(&ckey),
                &(
                    opts.source_date_epoch,
                    crate::tarball::ZSTD_LEVEL,
                    crate::tarball::CHUNKING,
                    crate::frames::FORMAT,
                ),
            );
            let (disk, qcow2, disk_zst) = if let Some(ids) = &disk_ids {
                let dkey = disk::key(&ckey, &spec.disk, ids);
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
        disk_ids,
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

/// Runs the file stage `stage` whose one artifact, `name`, is written as zstd frames by
/// `write(path, reuse)`, which copies what it can from the stage's earlier cache entries.
fn framed_stage(
    opts: &BuildOptions,
    reporter: &dyn Reporter,
    stage: Stage,
    key: &StageKey,
    name: &str,
    level: i32,
    write: impl FnOnce(&Path, Reuse) -> Result<(Digested, FrameIndex), StageError>,
) -> Result<CachedFiles, BuildError> {
    cached_files(opts, reporter, stage, key, &[name], |dir, _| {
        let earlier = cache::siblings(opts, stage, name);
        let path = dir.join(name);
        let (d, index) = write(&path, Reuse::load(&earlier, level))?;
        reporter.event(&index.event(stage, name));
        index.write(&path).map_err(|err| StageError::Io {
            what: "write frame index of",
            path: path.clone(),
            err,
        })?;
        Ok(vec![Artifact {
            name: name.to_owned(),
            size: d.size,
            sha256: d.sha256,
        }])
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
    // Tools that work on a tree under the cache (`useradd --root`, chroots) need absolute paths.
    let absolute = |path: &Path| std::path::absolute(path).map_err(out_err("resolve", path));
    let opts = &BuildOptions {
        out: absolute(&opts.out)?,
        cache_dir: absolute(&opts.cache_dir)?,
        ..opts.clone()
    };
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
                framed_stage(
                    opts,
                    reporter,
                    Stage::Rootfs,
                    rkey,
                    "rootfs.tar.zst",
                    crate::tarball::ZSTD_LEVEL,
                    |path, reuse| {
                        Ok(crate::tarball::write_rootfs_tar_frames(
                            &rootfs, path, sde, reuse,
                        )?)
                    },
                )?
                .link_to(&tmp.path)
            };
            match (&keys.disk, &keys.qcow2, &plan.disk_ids) {
                (Some(dkey), Some(qkey), Some(ids)) => {
                    let disks = || -> Result<Vec<Artifact>, BuildError> {
                        let mut raw =
                            cache::lookup_files(opts, reporter, Stage::Disk, dkey, &["disk.raw"])?;
                        let raw_path = match &raw {
                            FileEntry::Cached(c) => c.path("disk.raw"),
                            FileEntry::Producing(p) => {
                                let path = p.dir().join("disk.raw");
                                disk::build_raw(&rootfs, &path, &spec.disk, ids, p.scratch(), sde)
                                    .map_err(|err| p.fail(err))?;
                                path
                            }
                        };
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
                            .link_to(&tmp.path)
                        };
                        let zst = |zkey: &StageKey| {
                            framed_stage(
                                opts,
                                reporter,
                                Stage::DiskZst,
                                zkey,
                                "disk.raw.zst",
                                disk::ZST_LEVEL,
                                |path, reuse| disk::build_raw_zst(&raw_path, path, reuse),
                            )?
                            .link_to(&tmp.path)
                        };
                        // qcow2 and zst read disk.raw while a new one is hashed: run the three
                        // side by side; a new disk.raw is stored once nothing reads it any more.
                        let (q, z, hashed) = std::thread::scope(|s| {
                            let q = s.spawn(qcow2);
                            let z = keys.disk_zst.as_ref().map(|k| s.spawn(move || zst(k)));
                            let hashed = match &mut raw {
                                FileEntry::Producing(p) => p.hash(Vec::new()),
                                FileEntry::Cached(_) => Ok(()),
                            };
                            let q = q.join().expect("invariant: qcow2 does not panic");
                            let z = z.map(|z| z.join().expect("invariant: zstd does not panic"));
                            (q, z, hashed)
                        });
                        hashed?;
                        let raw = match raw {
                            FileEntry::Cached(c) => c,
                            FileEntry::Producing(p) => p.store(reporter)?,
                        };
                        let mut parts = vec![raw.link_to(&tmp.path), q];
                        parts.extend(z);
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
                    extra.kernel_cmdline = Some(disk::kernel_cmdline(ids, &spec.disk.kernel_args));
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
            .link_to(&tmp.path)?;
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
