//! Golden image builder: a template spec is bootstrapped with debootstrap (or mmdebstrap),
//! customised and packed into `rootfs.tar.zst`, bootable `disk.raw`/`disk.qcow2` and
//! `disk.raw.zst` (the zstd stream of `disk.raw` the imager downloads; unless `kind = "rootfs"`)
//! and a `manifest.json`; a `kind = "ramdisk"` template gives the deploy ramdisk (`vmlinuz` +
//! `initrd.img` with busybox and the provisioner's imager).
//!
//! How the pieces fit:
//! - [`Spec`] parses `templates/images/<name>/image.toml` strictly ([`SpecError`] names the file,
//!   line and key) and applies `--set` overrides of its `[vars]`.
//! - [`plan`] resolves the mirror from the machine's apt sources ([`mirror`]) and computes every
//!   stage's cache key ([`StageKeys`]): the bootstrap key hashes suite, variant, mirrors and
//!   packages; customise hashes the bootstrap key plus rendered files, users, services and
//!   hooks; the artifact keys chain from there.
//! - [`build`] runs the stages ([`Stage`]), reusing every stage output cached under its key
//!   (the bootstrap tree, which holds the whole package set, the customised tree, and the
//!   artifacts, stored with their sha256 so that the manifest does not read them again, and
//!   hard-linked into the output). The zstd artifacts are sequences of frames, one per chunk,
//!   and a rebuild compresses only the chunks that changed, copying the other frames from the
//!   cache ([`Event::FramesWritten`] counts them). It reports [`Event`]s to a [`Reporter`]
//!   ([`JsonReporter`] for `--json`, [`TerminalReporter`] for a TTY), and moves the output into
//!   place only when everything succeeded ([`BuildError`] names the stage, and for hooks the
//!   hook, exit code and stderr tail). [`Kind`] picks what is built: disk images, a rootfs
//!   tarball only, or the ramdisk.
//! - [`write_rootfs_tar`] is the deterministic tar writer (PAX xattrs, hardlinks, devices).
//! - [`run`] is the command-line entry point used by the thin binary.
#![warn(clippy::print_stdout)]

mod artifact;
mod bootstrap;
mod build;
mod cache;
mod cli;
mod customise;
mod disk;
mod events;
mod frames;
mod keys;
mod manifest;
pub mod mirror;
mod ramdisk;
mod render;
mod spec;
mod tarball;

pub use build::{BuildError, BuildOptions, BuildOutput, Plan, StageError, StageKeys, build, plan};
pub use cli::{Args, Command, JsonReporter, TerminalReporter, run};
pub use customise::{RenderedFile, render_files};
pub use disk::{DiskIds, Layout, kernel_cmdline, sfdisk_script};
pub use events::{Event, NullReporter, Reporter, Stage};
pub use keys::StageKey;
pub use manifest::{Artifact, Extra, Manifest, Package};
pub use render::{RenderError, render_template};
pub use spec::{
    AptSource, BootMode, BootstrapSpec, BootstrapTool, DiskSpec, FileSpec, FirstbootSpec, Hook,
    HookStage, Kind, RamdiskSpec, SPEC_FILE, Spec, SpecError, User,
};
pub use tarball::{TarError, write_rootfs_tar};
