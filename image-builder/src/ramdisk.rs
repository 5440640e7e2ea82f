//! The deploy ramdisk: the kernel of the extracted kernel package and an initramfs holding
//! busybox, the needed kernel modules (with their dependencies), the template's `/init` and
//! files, and the provisioner's imager as `/bin/imager`.
//!
//! The imager is linked dynamically against glibc, and busybox is all the bootstrap tree runs
//! otherwise, so its shared-library closure is copied too: the interpreter and `DT_NEEDED`
//! entries `readelf` reports, looked up (recursively) in the bootstrap tree's library
//! directories, never on the build host, so the libraries are the ramdisk's own Debian release
//! (the template lists `libc6` and `libgcc-s1`). The copies are `strip --strip-debug`ged: a
//! debug build of the imager is mostly DWARF.

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

/// Library directories of a Debian tree, in the dynamic loader's search order.
const LIB_DIRS: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib/aarch64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib64",
    "usr/lib64",
    "lib",
    "usr/lib",
];

/// What an ELF file asks the dynamic loader for.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ElfNeeds {
    /// `PT_INTERP` (`/lib64/ld-linux-x86-64.so.2`); none for a static binary.
    pub(crate) interpreter: Option<String>,
    /// `DT_NEEDED` sonames.
    pub(crate) needed: Vec<String>,
}

/// Parses `readelf --wide --program-headers --dynamic` output.
pub(crate) fn parse_readelf(text: &str) -> ElfNeeds {
    let bracketed = |line: &str, marker: &str| {
        let rest = &line[line.find(marker)? + marker.len()..];
        Some(rest[..rest.find(']')?].trim().to_owned())
    };
    let mut needs = ElfNeeds::default();
    for line in text.lines() {
        if let Some(i) = bracketed(line, "[Requesting program interpreter:") {
            needs.interpreter = Some(i);
        } else if line.contains("(NEEDED)")
            && let Some(lib) = bracketed(line, "Shared library: [")
        {
            needs.needed.push(lib);
        }
    }
    needs
}

fn is_elf(path: &Path) -> Result<bool, StageError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(io("read", path))?;
    Ok(f.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF")
}

fn elf_needs(path: &Path) -> Result<ElfNeeds, StageError> {
    let out = common::run_cmd(
        Command::new("readelf")
            .args(["--wide", "--program-headers", "--dynamic"])
            .arg(path),
    )?;
    Ok(parse_readelf(&out.stdout_lossy()))
}

/// The regular file `rel` names inside `tree`, following symlinks as if `tree` were `/`
/// (an absolute link target is taken relative to `tree`, not the build host).
fn resolve_in_tree(tree: &Path, rel: &Path) -> Option<PathBuf> {
    let mut p = tree.join(rel.strip_prefix("/").unwrap_or(rel));
    for _ in 0..32 {
        let meta = std::fs::symlink_metadata(&p).ok()?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&p).ok()?;
            p = match target.strip_prefix("/") {
                Ok(abs) => tree.join(abs),
                Err(_) => p.parent()?.join(target),
            };
        } else if meta.is_file() {
            // Directory symlinks along the way (merged /usr) must stay inside the tree too.
            let inside = p
                .canonicalize()
                .ok()?
                .starts_with(tree.canonicalize().ok()?);
            return inside.then_some(p);
        } else {
            return None;
        }
    }
    None
}

/// A shared library to put into the initramfs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LibCopy {
    /// The file in the bootstrap tree.
    pub(crate) source: PathBuf,
    /// Where it goes, relative to the initramfs root (a directory ld.so searches, or the
    /// interpreter's exact path).
    pub(crate) dest: PathBuf,
}

/// The interpreter and shared libraries `elf` needs, recursively, found in `tree`. A static
/// binary needs none. A library missing from the tree is an error naming it.
pub(crate) fn library_closure(tree: &Path, elf: &Path) -> Result<Vec<LibCopy>, StageError> {
    let mut out: Vec<LibCopy> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue = vec![elf.to_owned()];
    while let Some(file) = queue.pop() {
        let needs = elf_needs(&file)?;
        if let Some(interp) = needs.interpreter
            && seen.insert(interp.clone())
        {
            let rel = PathBuf::from(interp.trim_start_matches('/'));
            let source = resolve_in_tree(tree, &rel).ok_or_else(|| missing(tree, &rel))?;
            queue.push(source.clone());
            out.push(LibCopy { source, dest: rel });
        }
        for name in needs.needed {
            // The interpreter is often also a DT_NEEDED entry (by soname).
            let is_interp = out
                .iter()
                .any(|l| l.dest.file_name() == Some(name.as_ref()));
            if is_interp || !seen.insert(name.clone()) {
                continue;
            }
            let (dir, source) = LIB_DIRS
                .iter()
                .find_map(|d| Some((*d, resolve_in_tree(tree, &Path::new(d).join(&name))?)))
                .ok_or_else(|| missing(tree, Path::new(&name)))?;
            queue.push(source.clone());
            out.push(LibCopy {
                source,
                dest: Path::new(dir).join(&name),
            });
        }
    }
    out.sort_by(|a, b| a.dest.cmp(&b.dest));
    Ok(out)
}

fn missing(tree: &Path, lib: &Path) -> StageError {
    StageError::Io {
        what: "find the imager's shared library in the bootstrap tree (add its package to bootstrap.packages)",
        path: tree.join(lib),
        err: std::io::ErrorKind::NotFound.into(),
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
    // A script (a test stand-in) runs under busybox sh: no libraries, nothing to strip.
    let elf = is_elf(&imager)?;
    let mut stripped = if elf {
        vec![imager.clone()]
    } else {
        Vec::new()
    };
    let libs = if elf {
        library_closure(tree, &r.imager)?
    } else {
        Vec::new()
    };
    for lib in libs {
        let dest = staging.join(&lib.dest);
        copy(&lib.source, &dest)?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod", &dest))?;
        stripped.push(dest);
    }
    if !stripped.is_empty() {
        common::run_cmd(Command::new("strip").arg("--strip-debug").args(&stripped))?;
    }
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
    fn readelf_output_parses() {
        let text = "  INTERP         0x000318 0x0000000000000318 0x0000000000000318 0x00001c 0x00001c R   0x1\n\
      [Requesting program interpreter: /lib64/ld-linux-x86-64.so.2]\n\
 0x0000000000000001 (NEEDED)             Shared library: [libgcc_s.so.1]\n\
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]\n\
 0x000000000000000e (SONAME)             Library soname: [libfoo.so.1]\n";
        let n = parse_readelf(text);
        assert_eq!(
            n.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert_eq!(n.needed, ["libgcc_s.so.1", "libc.so.6"]);
        assert_eq!(parse_readelf("no dynamic section"), ElfNeeds::default());
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("stand-in.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(!is_elf(&script).unwrap());
        assert!(is_elf(Path::new("/bin/sh")).unwrap());
    }

    /// A Debian-shaped tree (merged /usr, an absolute interpreter link) holding this build
    /// host's glibc, as `mmdebstrap --variant=extract` lays out `libc6` and `libgcc-s1`.
    #[test]
    fn closure_of_a_real_binary_comes_from_the_tree() {
        let host = Path::new("/usr/lib/x86_64-linux-gnu");
        if !host.join("libc.so.6").exists() {
            return; // Not an x86-64 Debian build host.
        }
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path();
        let lib = tree.join("usr/lib/x86_64-linux-gnu");
        std::fs::create_dir_all(&lib).unwrap();
        for f in [
            "libc.so.6",
            "libm.so.6",
            "libgcc_s.so.1",
            "ld-linux-x86-64.so.2",
        ] {
            if host.join(f).exists() {
                std::fs::copy(host.join(f), lib.join(f)).unwrap();
            }
        }
        std::os::unix::fs::symlink("usr/lib", tree.join("lib")).unwrap();
        std::fs::create_dir_all(tree.join("usr/lib64")).unwrap();
        std::os::unix::fs::symlink("usr/lib64", tree.join("lib64")).unwrap();
        std::os::unix::fs::symlink(
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            tree.join("usr/lib64/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        // Any dynamically linked program of the host: it needs libc and the interpreter.
        let got = library_closure(tree, Path::new("/bin/true")).unwrap();
        let dests: Vec<String> = got.iter().map(|l| l.dest.display().to_string()).collect();
        assert!(
            dests.contains(&"lib/x86_64-linux-gnu/libc.so.6".to_owned()),
            "{dests:?}"
        );
        assert!(
            dests.contains(&"lib64/ld-linux-x86-64.so.2".to_owned()),
            "{dests:?}"
        );
        for l in &got {
            assert!(l.source.starts_with(tree), "{l:?} comes from the tree");
        }
        // A library the tree lacks is named in the error.
        std::fs::remove_file(lib.join("libc.so.6")).unwrap();
        let err = library_closure(tree, Path::new("/bin/true")).unwrap_err();
        let msg = common::ErrorChain(&err).to_string();
        assert!(
            msg.contains("libc.so.6") && msg.contains("bootstrap.packages"),
            "{msg}"
        );
    }

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
