//! The customise stage: system settings, rendered files, first-boot units, users, services and
//! hooks, applied to a copy of the cached bootstrap tree.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::build::StageError;
use crate::events::{Event, Reporter};
use crate::keys::{StageKey, sha256_hex, stage_key};
use crate::render::{self, FileContext};
use crate::spec::{FileSpec, FirstbootSpec, HookStage, Spec, User};

/// The first-boot script: host keys, root partition growth, then the marker line on the console.
const FIRSTBOOT_SCRIPT: &str = include_str!("firstboot.sh.hbs");
/// Its systemd unit.
const FIRSTBOOT_UNIT: &str = include_str!("image-builder-firstboot.service");
/// Where the script lives in the image.
const FIRSTBOOT_PATH: &str = "usr/lib/image-builder/firstboot";
/// The unit's name.
const FIRSTBOOT_UNIT_NAME: &str = "image-builder-firstboot.service";

/// A file of the template with its final content.
#[derive(Debug, Clone)]
pub struct RenderedFile {
    /// The spec entry.
    pub spec: FileSpec,
    /// The bytes installed.
    pub content: Vec<u8>,
}

/// Reads and renders every `[[files]]` entry of `spec`.
pub fn render_files(spec: &Spec) -> Result<Vec<RenderedFile>, StageError> {
    let ctx = FileContext::new(spec);
    let mut out = Vec::new();
    for f in &spec.files {
        let path = spec.dir.join(&f.src);
        let raw = std::fs::read(&path).map_err(|err| StageError::Io {
            what: "read template file",
            path: path.clone(),
            err,
        })?;
        let content = if f.render {
            let text =
                String::from_utf8(raw).map_err(|_| StageError::NotUtf8 { path: path.clone() })?;
            render::render_template(&f.src.to_string_lossy(), &text, &ctx)?.into_bytes()
        } else {
            raw
        };
        out.push(RenderedFile {
            spec: f.clone(),
            content,
        });
    }
    Ok(out)
}

/// Renders the first-boot script for these settings.
pub(crate) fn firstboot_script(fb: &FirstbootSpec) -> Result<String, StageError> {
    Ok(render::render_template(
        "firstboot.sh",
        FIRSTBOOT_SCRIPT,
        fb,
    )?)
}

/// Everything the customise output depends on besides the bootstrap tree.
#[derive(Debug, Serialize)]
pub(crate) struct CustomiseInputs<'a> {
    hostname: &'a str,
    locale: &'a str,
    timezone: &'a str,
    users: &'a [User],
    enable: &'a [String],
    disable: &'a [String],
    apt_sources: Vec<(String, Option<String>)>,
    /// (dest, mode, sha256 of the rendered content).
    files: Vec<(String, u32, String)>,
    /// (name, stage, sha256 of the script).
    hooks: Vec<(String, HookStage, String)>,
    firstboot: FirstbootSpec,
    firstboot_script: String,
    firstboot_unit: &'static str,
    source_date_epoch: u64,
}

impl<'a> CustomiseInputs<'a> {
    pub(crate) fn new(
        spec: &'a Spec,
        files: &[RenderedFile],
        source_date_epoch: u64,
    ) -> Result<Self, StageError> {
        let mut hooks = Vec::new();
        for h in &spec.hooks {
            let p = spec.dir.join(&h.script);
            let data = std::fs::read(&p).map_err(|err| StageError::Io {
                what: "read hook script",
                path: p,
                err,
            })?;
            hooks.push((h.name.clone(), h.stage, sha256_hex(&data)));
        }
        let mut apt_sources = Vec::new();
        for s in &spec.apt_sources {
            let key = match &s.key {
                Some(k) => {
                    let p = spec.dir.join(k);
                    let data = std::fs::read(&p).map_err(|err| StageError::Io {
                        what: "read apt key",
                        path: p,
                        err,
                    })?;
                    Some(sha256_hex(&data))
                }
                None => None,
            };
            apt_sources.push((s.line.clone(), key));
        }
        Ok(CustomiseInputs {
            hostname: &spec.hostname,
            locale: &spec.locale,
            timezone: &spec.timezone,
            users: &spec.users,
            enable: &spec.enable,
            disable: &spec.disable,
            apt_sources,
            files: files
                .iter()
                .map(|f| (f.spec.dest.clone(), f.spec.mode, sha256_hex(&f.content)))
                .collect(),
            hooks,
            firstboot: spec.firstboot,
            firstboot_script: firstboot_script(&spec.firstboot)?,
            firstboot_unit: FIRSTBOOT_UNIT,
            source_date_epoch,
        })
    }

    pub(crate) fn key(&self, bootstrap: &StageKey) -> StageKey {
        stage_key("customise", Some(bootstrap), self)
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StageError + use<> {
    let path = path.to_owned();
    move |err| StageError::Io {
        what,
        path: path.to_owned(),
        err,
    }
}

/// Writes `data` at `rel` (absolute image path) under `root` with `mode`, creating parents.
fn install(root: &Path, rel: &str, data: &[u8], mode: u32) -> Result<(), StageError> {
    let path = root.join(rel.trim_start_matches('/'));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("create directory", parent))?;
    }
    // Replace symlinks (e.g. /etc/resolv.conf) rather than writing through them.
    if path
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        std::fs::remove_file(&path).map_err(io("remove symlink", &path))?;
    }
    // Write a new inode and rename it over the old one: the tree may be a hardlink farm of
    // the cached bootstrap, which must never change.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.image-builder-new"));
    std::fs::write(&tmp, data).map_err(io("write file", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(io("set permissions", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
    Ok(())
}

/// Gives `rel` its own inode (a copy renamed over it) if it is shared with another tree.
fn unshare_file(root: &Path, rel: &str) -> Result<(), StageError> {
    let path = root.join(rel.trim_start_matches('/'));
    let Ok(md) = path.symlink_metadata() else {
        return Ok(());
    };
    if !md.file_type().is_file() || md.nlink() < 2 {
        return Ok(());
    }
    let tmp = path.with_extension("image-builder-unshare");
    std::fs::copy(&path, &tmp).map_err(io("copy", &path))?;
    std::os::unix::fs::chown(&tmp, Some(md.uid()), Some(md.gid())).map_err(io("chown", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(md.mode() & 0o7777))
        .map_err(io("set permissions", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))
}

/// Files `useradd` may rewrite in place rather than by rename.
const USERADD_IN_PLACE: &[&str] = &[
    "/var/log/lastlog",
    "/var/log/faillog",
    "/etc/passwd",
    "/etc/shadow",
    "/etc/group",
    "/etc/gshadow",
    "/etc/subuid",
    "/etc/subgid",
];

/// How the customise stage gets its working tree from the cached bootstrap tree.
pub(crate) fn copy_mode(spec: &Spec) -> &'static str {
    // Hooks may modify any file in place, so they get a real copy; otherwise a hardlink farm
    // (every write of this module replaces inodes) makes a warm rebuild much cheaper.
    if spec.hooks.is_empty() { "-al" } else { "-a" }
}

fn symlink(root: &Path, rel: &str, target: &str) -> Result<(), StageError> {
    let path = root.join(rel.trim_start_matches('/'));
    if path.symlink_metadata().is_ok() {
        std::fs::remove_file(&path).map_err(io("remove file", &path))?;
    }
    std::os::unix::fs::symlink(target, &path).map_err(io("create symlink", &path))
}

/// Applies the spec to the tree at `root`.
pub(crate) fn run(
    spec: &Spec,
    files: &[RenderedFile],
    root: &Path,
    source_date_epoch: u64,
    reporter: &dyn Reporter,
) -> Result<(), StageError> {
    let sde = source_date_epoch.to_string();
    // The bootstrap copied the build machine's resolver in; it means nothing where the image
    // runs. A link (systemd-resolved's stub) stays, and a template file may set its own.
    let resolv = root.join("etc/resolv.conf");
    if resolv.symlink_metadata().is_ok_and(|m| m.is_file()) {
        install(root, "/etc/resolv.conf", b"", 0o644)?;
    }
    // System settings.
    install(
        root,
        "/etc/hostname",
        format!("{}\n", spec.hostname).as_bytes(),
        0o644,
    )?;
    install(
        root,
        "/etc/hosts",
        format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
            spec.hostname
        )
        .as_bytes(),
        0o644,
    )?;
    install(
        root,
        "/etc/default/locale",
        format!("LANG={}\n", spec.locale).as_bytes(),
        0o644,
    )?;
    install(
        root,
        "/etc/timezone",
        format!("{}\n", spec.timezone).as_bytes(),
        0o644,
    )?;
    symlink(
        root,
        "/etc/localtime",
        &format!("/usr/share/zoneinfo/{}", spec.timezone),
    )?;

    // Extra apt sources so the image can update from them.
    for (i, s) in spec.apt_sources.iter().enumerate() {
        let line = match &s.key {
            Some(k) => {
                let src = spec.dir.join(k);
                let data = std::fs::read(&src).map_err(io("read apt key", &src))?;
                let dest = format!("/etc/apt/keyrings/image-builder-{i}.asc");
                install(root, &dest, &data, 0o644)?;
                let rest = s.line.strip_prefix("deb ").unwrap_or(&s.line);
                format!("deb [signed-by={dest}] {rest}\n")
            }
            None => format!("{}\n", s.line),
        };
        install(
            root,
            &format!("/etc/apt/sources.list.d/image-builder-{i}.list"),
            line.as_bytes(),
            0o644,
        )?;
    }

    for f in files {
        install(root, &f.spec.dest, &f.content, f.spec.mode)?;
    }

    // First-boot unit.
    install(
        root,
        FIRSTBOOT_PATH,
        firstboot_script(&spec.firstboot)?.as_bytes(),
        0o755,
    )?;
    install(
        root,
        &format!("/etc/systemd/system/{FIRSTBOOT_UNIT_NAME}"),
        FIRSTBOOT_UNIT.as_bytes(),
        0o644,
    )?;

    for u in &spec.users {
        add_user(root, u, &sde)?;
    }

    let mut enable: Vec<&str> = vec![FIRSTBOOT_UNIT_NAME];
    enable.extend(spec.enable.iter().map(String::as_str));
    let mut cmd = Command::new("systemctl");
    cmd.arg(format!("--root={}", root.display()))
        .arg("enable")
        .args(&enable);
    common::run_cmd(&mut cmd)?;
    if !spec.disable.is_empty() {
        let mut cmd = Command::new("systemctl");
        cmd.arg(format!("--root={}", root.display()))
            .arg("disable")
            .args(&spec.disable);
        common::run_cmd(&mut cmd)?;
    }

    for stage in [HookStage::Customise, HookStage::Agent, HookStage::Finalise] {
        for h in spec.hooks.iter().filter(|h| h.stage == stage) {
            let started = Instant::now();
            run_hook(spec, root, &h.name, stage, &spec.dir.join(&h.script), &sde)?;
            reporter.event(&Event::HookFinished {
                stage: stage.as_str().to_owned(),
                hook: h.name.clone(),
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            });
        }
    }

    // Logs of the bootstrap (dpkg, apt) say when the image was built: empty them.
    let logs = root.join("var/log");
    let mut stack = vec![logs];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let path = e.path();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let md = path.metadata().map_err(io("stat", &path))?;
                if md.len() > 0 {
                    let rel = path
                        .strip_prefix(root)
                        .expect("invariant: walked below root")
                        .to_string_lossy()
                        .into_owned();
                    install(root, &rel, b"", md.permissions().mode() & 0o7777)?;
                    std::os::unix::fs::chown(&path, Some(md.uid()), Some(md.gid()))
                        .map_err(io("chown", &path))?;
                }
            }
        }
    }

    // The build machine's resolver must not ship: systemd-resolved's postinst keeps the
    // resolv.conf the bootstrap copied in from the host as a backup.
    let bak = root.join("etc/.resolv.conf.systemd-resolved.bak");
    if bak.symlink_metadata().is_ok() {
        std::fs::remove_file(&bak).map_err(io("remove file", &bak))?;
    }

    // Identity that must be unique per machine: regenerated on first boot.
    if spec.firstboot.regenerate_machine_id {
        install(root, "/etc/machine-id", b"", 0o444)?;
        let dbus = root.join("var/lib/dbus/machine-id");
        if dbus.symlink_metadata().is_ok() {
            std::fs::remove_file(&dbus).map_err(io("remove file", &dbus))?;
            std::os::unix::fs::symlink("/etc/machine-id", &dbus)
                .map_err(io("create symlink", &dbus))?;
        }
    }
    if spec.firstboot.regenerate_host_keys {
        let ssh = root.join("etc/ssh");
        if let Ok(entries) = std::fs::read_dir(&ssh) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                    std::fs::remove_file(e.path()).map_err(io("remove file", &e.path()))?;
                }
            }
        }
    }
    Ok(())
}

fn passwd_ids(root: &Path, name: &str) -> Result<(u32, u32), StageError> {
    let path = root.join("etc/passwd");
    let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name) && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .ok_or(StageError::Unsupported {
            what: "user missing from /etc/passwd after useradd",
        })
}

fn add_user(root: &Path, u: &User, sde: &str) -> Result<(), StageError> {
    for f in USERADD_IN_PLACE {
        unshare_file(root, f)?;
    }
    let mut cmd = Command::new("useradd");
    cmd.env("SOURCE_DATE_EPOCH", sde)
        .arg("--root")
        .arg(root)
        .args(["--create-home", "--shell", &u.shell]);
    if !u.groups.is_empty() {
        cmd.arg("--groups").arg(u.groups.join(","));
    }
    if let Some(h) = &u.password_hash {
        cmd.arg("--password").arg(h);
    }
    cmd.arg(&u.name);
    common::run_cmd(&mut cmd)?;
    if !u.ssh_keys.is_empty() {
        let (uid, gid) = passwd_ids(root, &u.name)?;
        let ssh = format!("/home/{}/.ssh", u.name);
        let mut keys = u.ssh_keys.join("\n");
        keys.push('\n');
        install(
            root,
            &format!("{ssh}/authorized_keys"),
            keys.as_bytes(),
            0o600,
        )?;
        let dir = root.join(ssh.trim_start_matches('/'));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("set permissions", &dir))?;
        for p in [dir.clone(), dir.join("authorized_keys")] {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(io("chown", &p))?;
        }
    }
    Ok(())
}

/// `/bin/sh SH_ARGS...` chrooted into `root`, in a private mount namespace with /proc, /sys
/// and /dev mounted, and a clean environment (callers add their own variables).
pub(crate) fn chroot_shell(root: &Path, label: &str, sh_args: &[&str]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C.UTF-8")
        .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(concat!(
            "mount -t proc proc \"$1/proc\" && mount -t sysfs sys \"$1/sys\" && ",
            "mount --rbind /dev \"$1/dev\" && root=$1 && shift && ",
            "exec chroot \"$root\" /bin/sh \"$@\""
        ))
        .arg(label)
        .arg(root)
        .args(sh_args);
    cmd
}

/// Runs a hook script in the image's chroot, with /proc, /sys and /dev mounted in a private
/// mount namespace that disappears with the hook.
fn run_hook(
    spec: &Spec,
    root: &Path,
    name: &str,
    stage: HookStage,
    script: &Path,
    sde: &str,
) -> Result<(), StageError> {
    let data = std::fs::read(script).map_err(io("read hook script", script))?;
    let inside = format!("/tmp/image-builder-hook-{name}");
    install(root, &inside, &data, 0o755)?;
    let mut cmd = chroot_shell(root, "image-builder-hook", &["-e", &inside]);
    cmd.env("SOURCE_DATE_EPOCH", sde)
        .env("IMAGE_BUILDER_HOOK", name)
        .env("IMAGE_BUILDER_STAGE", stage.as_str())
        .env("IMAGE_NAME", &spec.name)
        .env("IMAGE_VERSION", &spec.version);
    let result = common::run_cmd(&mut cmd);
    let host_copy: PathBuf = root.join(inside.trim_start_matches('/'));
    let _ = std::fs::remove_file(host_copy);
    match result {
        Ok(_) => Ok(()),
        Err(common::CommandError::Failed { status, stderr, .. }) => Err(StageError::Hook {
            hook: name.to_owned(),
            at: stage.as_str(),
            code: status.code().unwrap_or(-1),
            stderr,
        }),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firstboot_script_golden() {
        let all = firstboot_script(&FirstbootSpec {
            regenerate_machine_id: true,
            regenerate_host_keys: true,
            grow_root: true,
        })
        .expect("renders");
        expectorate::assert_contents("tests/output/firstboot.sh.txt", &all);
        let none = firstboot_script(&FirstbootSpec {
            regenerate_machine_id: false,
            regenerate_host_keys: false,
            grow_root: false,
        })
        .expect("renders");
        assert!(
            !none.contains("ssh-keygen -A") && !none.contains("resize2fs"),
            "{none}"
        );
        assert!(none.contains("IMAGE-BUILDER-FIRSTBOOT-DONE"));
    }
}
