//! The build pipeline: spec → bootstrap (cached) → customise → pack, into a temporary directory
//! beside `--out` that is renamed into place only when everything succeeded.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::bootstrap::{self, BootstrapInputs};
use crate::customise::{self, CustomiseInputs};
use crate::disk::{self, DiskIds};
use crate::events::{Event, Reporter, Stage};
use crate::keys::{StageKey, stage_key};
use crate::manifest::{self, Manifest};
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
        Kind::Disk => {
            t.push(match spec.bootstrap.tool {
                crate::BootstrapTool::Debootstrap => ("debootstrap", "debootstrap"),
                crate::BootstrapTool::Mmdebstrap => ("mmdebstrap", "mmdebstrap"),
            });
            t.extend([
                ("systemctl", "systemd"),
                ("useradd", "passwd"),
                ("unshare", "util-linux"),
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
    /// Artifact keys after customise.
    pub rootfs: Option<StageKey>,
    /// `disk.raw` key.
    pub disk: Option<StageKey>,
    /// `disk.qcow2` key.
    pub qcow2: Option<StageKey>,
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
        Kind::Disk => {
            let c = CustomiseInputs::new(&spec, &files, opts.source_date_epoch)
                .map_err(stage(Stage::Customise))?;
            let ckey = c.key(&bkey);
            let rootfs = stage_key("rootfs", Some(&ckey), &opts.source_date_epoch);
            let dkey = disk::key(&ckey, &spec.disk);
            let qkey = stage_key("qcow2", Some(&dkey), &spec.disk.qcow2_compress);
            StageKeys {
                bootstrap: bkey,
                customise: ckey,
                rootfs: Some(rootfs),
                disk: Some(dkey),
                qcow2: Some(qkey),
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

/// Returns the cached bootstrap tree, building it first if needed.
fn bootstrap_tree(
    opts: &BuildOptions,
    plan: &Plan,
    reporter: &dyn Reporter,
) -> Result<PathBuf, BuildError> {
    let key = &plan.keys.bootstrap;
    let root = opts.cache_dir.join("bootstrap");
    let dir = root.join(&key.0);
    if dir.is_dir() {
        reporter.event(&Event::StageCached {
            stage: Stage::Bootstrap,
            key: key.0.clone(),
        });
        return Ok(dir);
    }
    std::fs::create_dir_all(&root).map_err(out_err("create cache directory", &root))?;
    let tmp = TempDir {
        path: root.join(format!(".{}.tmp-{}", key.0, std::process::id())),
    };
    let scratch = TempDir {
        path: root.join(format!(".{}.scratch-{}", key.0, std::process::id())),
    };
    std::fs::create_dir_all(&scratch.path).map_err(out_err("create directory", &scratch.path))?;
    timed(reporter, Stage::Bootstrap, key, || {
        bootstrap::run(&plan.bootstrap, &tmp.path, &scratch.path)
    })?;
    match std::fs::rename(&tmp.path, &dir) {
        Ok(()) => {}
        // Another build finished the same key first: use theirs.
        Err(_) if dir.is_dir() => {}
        Err(err) => return Err(out_err("store cache entry", &dir)(err)),
    }
    Ok(dir)
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
    let work = TempDir {
        path: parent.join(format!(".{name}.work-{pid}")),
    };
    for d in [&tmp.path, &work.path] {
        if d.exists() {
            std::fs::remove_dir_all(d).map_err(out_err("remove leftover", d))?;
        }
        std::fs::create_dir_all(d).map_err(out_err("create directory", d))?;
    }

    let tree = bootstrap_tree(opts, &plan, reporter)?;
    let spec = &plan.spec;
    let keys = &plan.keys;
    let mut extra = manifest::Extra::default();
    let packages = manifest::dpkg_packages(&tree);
    match spec.kind {
        Kind::Disk => {
            let rootfs = work.path.join("rootfs");
            timed(reporter, Stage::Customise, &keys.customise, || {
                common::run_cmd(
                    Command::new("cp")
                        .arg(customise::copy_mode(spec))
                        .arg(&tree)
                        .arg(&rootfs),
                )?;
                customise::run(spec, &plan.files, &rootfs, opts.source_date_epoch, reporter)
            })?;
            let rkey = keys
                .rootfs
                .as_ref()
                .expect("invariant: disk plans have a rootfs key");
            let dkey = keys
                .disk
                .as_ref()
                .expect("invariant: disk plans have a disk key");
            let qkey = keys
                .qcow2
                .as_ref()
                .expect("invariant: disk plans have a qcow2 key");
            let ids = DiskIds::new(dkey);
            let raw = tmp.path.join("disk.raw");
            // The tarball and the disks only read the tree: build them side by side.
            let (tar, disks) = std::thread::scope(|s| {
                let tar = s.spawn(|| {
                    timed(reporter, Stage::Rootfs, rkey, || {
                        Ok(crate::tarball::write_rootfs_tar(
                            &rootfs,
                            &tmp.path.join("rootfs.tar.zst"),
                            opts.source_date_epoch,
                        )?)
                    })
                });
                let disks = (|| {
                    timed(reporter, Stage::Disk, dkey, || {
                        disk::build_raw(
                            &rootfs,
                            &raw,
                            &spec.disk,
                            &ids,
                            &work.path,
                            opts.source_date_epoch,
                        )
                    })?;
                    timed(reporter, Stage::Qcow2, qkey, || {
                        disk::build_qcow2(
                            &raw,
                            &tmp.path.join("disk.qcow2"),
                            spec.disk.qcow2_compress,
                        )
                    })
                })();
                (tar.join(), disks)
            });
            tar.expect("invariant: the tarball thread does not panic")?;
            disks?;
            extra.kernel_cmdline = Some(disk::kernel_cmdline(&ids, &spec.disk.kernel_args));
            extra.root_partuuid = Some(ids.root.clone());
        }
        Kind::Ramdisk => {
            timed(reporter, Stage::Initramfs, &keys.customise, || {
                ramdisk::build(
                    spec,
                    &plan.files,
                    &tree,
                    &tmp.path,
                    &work.path,
                    opts.source_date_epoch,
                )
            })?;
        }
    }
    let mkey = stage_key("manifest", Some(&input_hash), &());
    let manifest = timed(reporter, Stage::Manifest, &mkey, || {
        manifest::write(spec, &input_hash, keys, packages, extra, &tmp.path)
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
    drop(work);
    reporter.event(&Event::BuildFinished {
        out: out.display().to_string(),
        duration_ms: ms(started),
    });
    Ok(BuildOutput {
        out: out.clone(),
        manifest,
    })
}
