//! The deploy ramdisk: the kernel of the extracted kernel package and an initramfs holding
//! busybox, the needed kernel modules (with their dependencies), the template's `/init` and
//! files, and the provisioner's imager as `/bin/imager`.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::build::StageError;
use crate::customise::RenderedFile;
use crate::keys::{StageKey, sha256_hex, stage_key};
use crate::render::{self, FileContext};
use crate::spec::Spec;

/// The initramfs stage's own inputs.
#[derive(Debug, Serialize)]
struct InitramfsInputs<'a> {
    init: String,
    imager_sha256: String,
    module_dirs: &'a [String],
    files: Vec<(String, u32, String)>,
    source_date_epoch: u64,
}

fn rd(spec: &Spec) -> Result<&crate::spec::RamdiskSpec, StageError> {
    spec.ramdisk.as_ref().ok_or(StageError::Unsupported {
        what: "not a ramdisk template",
    })
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StageError + use<> {
    let path = path.to_owned();
    move |err| StageError::Io {
        what,
        path: path.to_owned(),
        err,
    }
}

/// Renders the template's `/init`.
pub(crate) fn render_init(spec: &Spec) -> Result<String, StageError> {
    let r = rd(spec)?;
    let path = spec.dir.join(&r.init);
    let text = std::fs::read_to_string(&path).map_err(io("read init template", &path))?;
    Ok(render::render_template(
        &r.init.to_string_lossy(),
        &text,
        &FileContext::new(spec),
    )?)
}

/// The initramfs key: bootstrap key, rendered init, imager bytes, modules, files.
pub(crate) fn key(
    spec: &Spec,
    bootstrap: &StageKey,
    files: &[RenderedFile],
    source_date_epoch: u64,
) -> Result<StageKey, StageError> {
    let r = rd(spec)?;
    let imager = std::fs::read(&r.imager).map_err(io("read imager binary", &r.imager))?;
    let inputs = InitramfsInputs {
        init: render_init(spec)?,
        imager_sha256: sha256_hex(&imager),
        module_dirs: &r.module_dirs,
        files: files
            .iter()
            .map(|f| (f.spec.dest.clone(), f.spec.mode, sha256_hex(&f.content)))
            .collect(),
        source_date_epoch,
    };
    Ok(stage_key("initramfs", Some(bootstrap), &inputs))
}

fn kernel_version(tree: &Path) -> Result<String, StageError> {
    let dir = tree.join("lib/modules");
    let mut versions: Vec<String> = std::fs::read_dir(&dir)
        .map_err(io("list kernel modules", &dir))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    versions.sort();
    versions.pop().ok_or(StageError::Unsupported {
        what: "no kernel in the ramdisk's bootstrap: set bootstrap.kernel",
    })
}

/// The modules under `module_dirs` plus everything they depend on, as paths relative to the
/// version's module directory, from a `modules.dep` text.
pub(crate) fn module_closure(dep: &str, module_dirs: &[String]) -> BTreeSet<String> {
    let deps: Vec<(&str, Vec<&str>)> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m.trim(), d.split_whitespace().collect()))
        .collect();
    let mut out = BTreeSet::new();
    for (m, d) in &deps {
        let rel = m.strip_prefix("kernel/").unwrap_or(m);
        if module_dirs.iter().any(|dir| {
            rel == dir.as_str() || rel.starts_with(&format!("{}/", dir.trim_end_matches('/')))
        }) {
            out.insert((*m).to_owned());
            out.extend(d.iter().map(|s| (*s).to_owned()));
        }
    }
    // Dependencies of dependencies (modules.dep lists the full closure already, but be safe).
    loop {
        let before = out.len();
        for (m, d) in &deps {
            if out.contains(*m) {
                out.extend(d.iter().map(|s| (*s).to_owned()));
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

fn copy(src: &Path, dest: &Path) -> Result<(), StageError> {
    if let Some(p) = dest.parent() {
        std::fs::create_dir_all(p).map_err(io("create directory", p))?;
    }
    std::fs::copy(src, dest).map_err(io("copy", src))?;
    Ok(())
}

fn write(dest: &Path, data: &[u8], mode: u32) -> Result<(), StageError> {
    if let Some(p) = dest.parent() {
        std::fs::create_dir_all(p).map_err(io("create directory", p))?;
    }
    std::fs::write(dest, data).map_err(io("write", dest))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", dest))
}

/// Builds `vmlinuz` and `initrd.img` into `out` from the extracted package tree.
pub(crate) fn build(
    spec: &Spec,
    files: &[RenderedFile],
    tree: &Path,
    out: &Path,
    work: &Path,
    source_date_epoch: u64,
) -> Result<(), StageError> {
    let r = rd(spec)?;
    let version = kernel_version(tree)?;
    let staging = work.join("initramfs");
    let _ = std::fs::remove_dir_all(&staging);
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "etc",
    ] {
        let p = staging.join(d);
        std::fs::create_dir_all(&p).map_err(io("create directory", &p))?;
    }
    copy(&tree.join("bin/busybox"), &staging.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", staging.join("bin/sh"))
        .map_err(io("create symlink", &staging))?;
    write(&staging.join("init"), render_init(spec)?.as_bytes(), 0o755)?;
    let imager = staging.join("bin/imager");
    copy(&r.imager, &imager)?;
    std::fs::set_permissions(&imager, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod", &imager))?;
    for f in files {
        write(
            &staging.join(f.spec.dest.trim_start_matches('/')),
            &f.content,
            f.spec.mode,
        )?;
    }

    // Modules: depmod the full tree once to learn dependencies, copy the closure, depmod again.
    // depmod writes next to the modules: it runs on a hardlink farm of the module directory
    // (its files replace inodes), never on the cached bootstrap tree.
    let mdir = PathBuf::from("lib/modules").join(&version);
    let full = work.join("depmod");
    let parent = full.join("lib/modules");
    let _ = std::fs::remove_dir_all(&full);
    std::fs::create_dir_all(&parent).map_err(io("create directory", &parent))?;
    common::run_cmd(
        Command::new("cp")
            .arg("-al")
            .arg(tree.join(&mdir))
            .arg(&parent),
    )?;
    common::run_cmd(Command::new("depmod").arg("-b").arg(&full).arg(&version))?;
    let dep_path = full.join(&mdir).join("modules.dep");
    let dep = std::fs::read_to_string(&dep_path).map_err(io("read", &dep_path))?;
    for m in module_closure(&dep, &r.module_dirs) {
        copy(&tree.join(&mdir).join(&m), &staging.join(&mdir).join(&m))?;
    }
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let src = tree.join(&mdir).join(f);
        if src.exists() {
            copy(&src, &staging.join(&mdir).join(f))?;
        }
    }
    common::run_cmd(Command::new("depmod").arg("-b").arg(&staging).arg(&version))?;

    let cpio = work.join("initrd.cpio");
    common::run_cmd(
        Command::new("sh")
            .arg("-c")
            .arg(concat!(
                "cd \"$1\" && find . -exec touch -h -d \"@$3\" {} + && ",
                "find . -print0 | LC_ALL=C sort -z | ",
                "cpio --null --create --format=newc --reproducible --quiet --owner=0:0 > \"$2\""
            ))
            .arg("mkinitramfs")
            .arg(&staging)
            .arg(&cpio)
            .arg(source_date_epoch.to_string()),
    )?;
    let data = std::fs::read(&cpio).map_err(io("read", &cpio))?;
    let initrd = out.join("initrd.img");
    let compressed = zstd::encode_all(data.as_slice(), 19).map_err(io("compress", &initrd))?;
    write(&initrd, &compressed, 0o644)?;
    copy(
        &tree.join(format!("boot/vmlinuz-{version}")),
        &out.join("vmlinuz"),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_follows_dependencies() {
        let dep = "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
                   kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
                   kernel/net/core/failover.ko:\n\
                   kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko\n\
                   kernel/drivers/virtio/virtio.ko:\n\
                   kernel/fs/vfat/vfat.ko:\n";
        let got = module_closure(
            dep,
            &["drivers/net/virtio_net.ko".into(), "drivers/virtio".into()],
        );
        let want: BTreeSet<String> = [
            "kernel/drivers/net/virtio_net.ko",
            "kernel/drivers/net/net_failover.ko",
            "kernel/net/core/failover.ko",
            "kernel/drivers/virtio/virtio_pci.ko",
            "kernel/drivers/virtio/virtio.ko",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(got, want);
    }
}
