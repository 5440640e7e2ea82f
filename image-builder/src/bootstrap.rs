//! The bootstrap stage: debootstrap (default) or mmdebstrap with the whole package set, into a
//! directory that is cached under the stage key.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::build::StageError;
use crate::keys::{StageKey, sha256_hex, stage_key};
use crate::mirror::AptLine;
use crate::spec::{BootstrapTool, Kind, Spec};

/// Everything the bootstrap output depends on.
#[derive(Debug, Serialize)]
pub(crate) struct BootstrapInputs {
    tool: BootstrapTool,
    kind: Kind,
    suite: String,
    variant: String,
    mirrors: Vec<String>,
    components: Vec<String>,
    packages: Vec<String>,
    /// Extra sources with the sha256 of their key files.
    extra_sources: Vec<(String, Option<String>)>,
    #[serde(skip)]
    extra_keys: Vec<(String, Option<PathBuf>)>,
}

impl BootstrapInputs {
    pub(crate) fn new(spec: &Spec, mirrors: &[AptLine]) -> Result<Self, StageError> {
        let mut extra_sources = Vec::new();
        let mut extra_keys = Vec::new();
        for s in &spec.apt_sources {
            let key = match &s.key {
                Some(k) => {
                    let p = spec.dir.join(k);
                    let data = std::fs::read(&p).map_err(|err| StageError::Io {
                        what: "read apt key",
                        path: p.clone(),
                        err,
                    })?;
                    Some((sha256_hex(&data), p))
                }
                None => None,
            };
            extra_sources.push((s.line.clone(), key.as_ref().map(|k| k.0.clone())));
            extra_keys.push((s.line.clone(), key.map(|k| k.1)));
        }
        Ok(BootstrapInputs {
            tool: spec.bootstrap.tool,
            kind: spec.kind,
            suite: spec.bootstrap.suite.clone(),
            variant: spec.bootstrap.variant.clone(),
            mirrors: mirrors
                .iter()
                .map(|m| {
                    AptLine {
                        components: spec.bootstrap.components.clone(),
                        ..m.clone()
                    }
                    .one_line()
                })
                .collect(),
            components: spec.bootstrap.components.clone(),
            packages: spec.bootstrap.packages.clone(),
            extra_sources,
            extra_keys,
        })
    }

    pub(crate) fn key(&self) -> StageKey {
        stage_key("bootstrap", None, self)
    }
}

/// Runs the bootstrap into `dir` (which must not exist yet).
pub(crate) fn run(inputs: &BootstrapInputs, dir: &Path, scratch: &Path) -> Result<(), StageError> {
    // The ramdisk only needs the kernel's and busybox's files, not an installed system.
    if inputs.kind == Kind::Ramdisk {
        let mut cmd = Command::new("mmdebstrap");
        cmd.args(["--mode=root", "--variant=extract", "--quiet"])
            .arg(format!("--include={}", inputs.packages.join(",")))
            .arg(&inputs.suite)
            .arg(dir)
            .args(&inputs.mirrors);
        common::run_cmd(&mut cmd)?;
        return Ok(());
    }
    match inputs.tool {
        BootstrapTool::Mmdebstrap => {
            let mut mirrors = inputs.mirrors.clone();
            for (i, (line, key)) in inputs.extra_keys.iter().enumerate() {
                match key {
                    Some(k) => {
                        let dest = scratch.join(format!("extra-{i}.asc"));
                        std::fs::copy(k, &dest).map_err(|err| StageError::Io {
                            what: "copy apt key",
                            path: k.clone(),
                            err,
                        })?;
                        let line = line.strip_prefix("deb ").unwrap_or(line);
                        mirrors.push(format!("deb [signed-by={}] {line}", dest.display()));
                    }
                    None => mirrors.push(line.clone()),
                }
            }
            let mut cmd = Command::new("mmdebstrap");
            cmd.args(["--mode=root", "--quiet", "--dpkgopt=force-unsafe-io"])
                .arg(format!("--variant={}", inputs.variant))
                .arg(format!("--components={}", inputs.components.join(",")));
            if !inputs.packages.is_empty() {
                cmd.arg(format!("--include={}", inputs.packages.join(",")));
            }
            cmd.arg(&inputs.suite).arg(dir).args(&mirrors);
            common::run_cmd(&mut cmd)?;
        }
        BootstrapTool::Debootstrap => {
            if !inputs.extra_keys.is_empty() {
                return Err(StageError::Unsupported {
                    what: "extra apt sources need bootstrap.tool = \"mmdebstrap\"",
                });
            }
            let mirror = inputs
                .mirrors
                .first()
                .and_then(|l| l.split_whitespace().nth(1))
                .expect("invariant: mirror::for_suite returns at least one source");
            let mut cmd = Command::new("debootstrap");
            cmd.arg(format!("--variant={}", inputs.variant))
                .arg(format!("--components={}", inputs.components.join(",")));
            if !inputs.packages.is_empty() {
                cmd.arg(format!("--include={}", inputs.packages.join(",")));
            }
            cmd.arg(&inputs.suite).arg(dir).arg(mirror);
            common::run_cmd(&mut cmd)?;
            debootstrap_finish(inputs, dir)?;
        }
    }
    Ok(())
}

/// debootstrap installs from the first source only and leaves apt's lists and downloads
/// behind: give the tree every source of the suite (`-updates`, `-security`), bring it up to
/// date from them and clean up, so that it matches what mmdebstrap makes.
fn debootstrap_finish(inputs: &BootstrapInputs, dir: &Path) -> Result<(), StageError> {
    let list = dir.join("etc/apt/sources.list");
    let mut lines = inputs.mirrors.join("\n");
    lines.push('\n');
    std::fs::write(&list, lines).map_err(|err| StageError::Io {
        what: "write",
        path: list.clone(),
        err,
    })?;
    if inputs.mirrors.len() > 1 {
        let mut cmd = crate::customise::chroot_shell(
            dir,
            "debootstrap-upgrade",
            &[
                "-ec",
                "apt-get -qq update; \
                 apt-get -qq -y -o Dpkg::Options::=--force-unsafe-io dist-upgrade",
            ],
        );
        common::run_cmd(&mut cmd)?;
    }
    let _ = std::fs::remove_dir_all(dir.join("var/cache/apt/archives"));
    let _ = std::fs::create_dir_all(dir.join("var/cache/apt/archives/partial"));
    for d in ["var/lib/apt/lists", "var/cache/apt"] {
        let Ok(entries) = std::fs::read_dir(dir.join(d)) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) && e.file_name() != "lock" {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}
