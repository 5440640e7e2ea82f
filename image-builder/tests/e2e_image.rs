//! End to end: build the `minimal` template once per test run (shared between the tests of
//! this binary through a file lock), boot its `disk.raw` under QEMU TCG in BIOS and UEFI mode and
//! its `disk.qcow2` through an overlay, each to the first-boot unit's marker; check the tarball;
//! rebuild after a one-file change (bootstrap cached, asserted from `--json` events); check that
//! the same inputs give identical tarball bytes and that a failing hook leaves `--out` untouched.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};

const BIN: &str = env!("CARGO_BIN_EXE_image-builder");
const MARKER: &str = "IMAGE-BUILDER-FIRSTBOOT-DONE";
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate sits in the workspace")
        .to_owned()
}

fn base() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("image-builder-e2e")
}

/// The bootstrap cache, kept across runs (its keys cover every bootstrap input).
fn cache_dir() -> PathBuf {
    base().join("cache")
}

/// This test run's directory: one per nextest run, so the tests of this binary share a build.
fn run_dir() -> PathBuf {
    let id =
        std::env::var("NEXTEST_RUN_ID").unwrap_or_else(|_| format!("pid-{}", std::process::id()));
    base().join(format!("run-{id}"))
}

/// Runs the image-builder binary with `--json` and returns its events.
fn build(template: &Path, out: &Path, extra: &[&str]) -> Result<Vec<serde_json::Value>> {
    let mut cmd = Command::new(BIN);
    cmd.arg("build")
        .arg(template)
        .arg("--out")
        .arg(out)
        .arg("--cache-dir")
        .arg(cache_dir())
        .arg("--json")
        .args(extra)
        .env("SOURCE_DATE_EPOCH", "1700000000");
    let out = common::run_cmd(&mut cmd).context("image-builder build")?;
    out.stdout_lossy()
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("event line {l:?}")))
        .collect()
}

fn has_event(events: &[serde_json::Value], event: &str, stage: &str) -> bool {
    events
        .iter()
        .any(|e| e["event"] == event && e["stage"] == stage)
}

/// The shared build of the minimal template: built by the first test that needs it.
fn shared_image() -> Result<PathBuf> {
    std::fs::create_dir_all(base())?;
    let lock = std::fs::File::create(base().join("lock"))?;
    let _guard = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("lock the shared build")?;
    let run = run_dir();
    let out = run.join("minimal");
    if out.join("manifest.json").exists() {
        return Ok(out);
    }
    // Leftovers of earlier runs (each holds GBs of images).
    for e in std::fs::read_dir(base())?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("run-") && e.path() != run {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    std::fs::create_dir_all(&run)?;
    let events = build(&repo().join("templates/images/minimal"), &out, &[])?;
    for stage in ["customise", "rootfs", "disk", "qcow2", "manifest"] {
        assert!(
            has_event(&events, "stage_finished", stage),
            "{stage}: {events:?}"
        );
    }
    Ok(out)
}

/// A QEMU guest writing its serial console to a file; killed on drop.
struct Qemu {
    child: Child,
    log: PathBuf,
}

impl Qemu {
    fn start(log: &Path, args: &[String]) -> Result<Qemu> {
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg,thread=multi", "-smp", "2", "-m", "1024"])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start qemu-system-x86_64")?;
        Ok(Qemu {
            child,
            log: log.to_owned(),
        })
    }

    /// Waits for a console line containing `marker` and returns it.
    async fn wait_line(&mut self, marker: &str) -> Result<String> {
        let log = self.log.clone();
        let found = common::wait_for(BOOT_TIMEOUT, || {
            let log = log.clone();
            async move {
                let text = std::fs::read(&log).ok()?;
                String::from_utf8_lossy(&text)
                    .lines()
                    .find(|l| l.contains(marker))
                    .map(|l| l.trim().to_owned())
            }
        })
        .await;
        match found {
            Some(l) => Ok(l),
            None => {
                let text = std::fs::read(&self.log).unwrap_or_default();
                let text = String::from_utf8_lossy(&text);
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "no `{marker}` on the console; last lines:\n{}",
                    tail.join("\n")
                )
            }
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The marker's `key=value` fields.
fn fields(line: &str) -> BTreeMap<String, String> {
    let start = line.find(MARKER).map(|i| i + MARKER.len()).unwrap_or(0);
    line[start..]
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Checks a first boot regenerated the identity, and that it differs from earlier boots of
/// the same image in this run (each boot is a first boot of a fresh copy).
fn check_identity(mode: &str, line: &str) -> Result<BTreeMap<String, String>> {
    let f = fields(line);
    let mid = f.get("machine-id").context("machine-id field")?;
    assert_eq!(mid.len(), 32, "{line}");
    assert!(mid.chars().all(|c| c.is_ascii_hexdigit()), "{line}");
    let key = f.get("ssh-host-key").context("ssh-host-key field")?;
    assert!(
        key.starts_with("SHA256:"),
        "host keys not regenerated: {line}"
    );
    let dir = run_dir().join("identities");
    std::fs::create_dir_all(&dir)?;
    for e in std::fs::read_dir(&dir)?.flatten() {
        let other = std::fs::read_to_string(e.path())?;
        let o = fields(&other);
        assert_ne!(
            o.get("machine-id"),
            Some(mid),
            "machine-id reused: {other} / {line}"
        );
        assert_ne!(
            o.get("ssh-host-key"),
            Some(key),
            "host key reused: {other} / {line}"
        );
    }
    std::fs::write(dir.join(mode), line)?;
    Ok(f)
}

fn sparse_copy(src: &Path, dst: &Path) -> Result<()> {
    common::run_cmd(Command::new("cp").arg("--sparse=always").arg(src).arg(dst))?;
    Ok(())
}

#[tokio::test]
async fn bios_boot_of_disk_raw_reaches_first_boot_marker() -> Result<()> {
    let img = shared_image()?;
    let tmp = tempfile::tempdir()?;
    let disk = tmp.path().join("disk.raw");
    sparse_copy(&img.join("disk.raw"), &disk)?;
    let mut vm = Qemu::start(
        &tmp.path().join("console.log"),
        &[
            "-nic".into(),
            "none".into(),
            "-drive".into(),
            format!("file={},format=raw,if=virtio", disk.display()),
        ],
    )?;
    let line = vm.wait_line(MARKER).await?;
    check_identity("bios", &line)?;
    Ok(())
}

#[tokio::test]
async fn uefi_boot_of_disk_raw_reaches_first_boot_marker() -> Result<()> {
    let img = shared_image()?;
    let tmp = tempfile::tempdir()?;
    let disk = tmp.path().join("disk.raw");
    sparse_copy(&img.join("disk.raw"), &disk)?;
    let vars = tmp.path().join("vars.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).context("copy OVMF vars")?;
    let mut vm = Qemu::start(
        &tmp.path().join("console.log"),
        &[
            "-drive".into(),
            "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            "-drive".into(),
            format!("if=pflash,format=raw,file={}", vars.display()),
            "-nic".into(),
            "none".into(),
            "-drive".into(),
            format!("file={},format=raw,if=virtio", disk.display()),
        ],
    )?;
    let line = vm.wait_line(MARKER).await?;
    check_identity("uefi", &line)?;
    Ok(())
}

#[tokio::test]
async fn qcow2_overlay_boots_and_first_boot_grows_the_root() -> Result<()> {
    let img = shared_image()?;
    let tmp = tempfile::tempdir()?;
    let ovl = tmp.path().join("overlay.qcow2");
    common::run_cmd(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(img.join("disk.qcow2"))
            .arg(&ovl)
            .arg("1536M"),
    )?;
    let mut vm = Qemu::start(
        &tmp.path().join("console.log"),
        &[
            "-nic".into(),
            "none".into(),
            "-drive".into(),
            format!("file={},format=qcow2,if=virtio", ovl.display()),
        ],
    )?;
    let line = vm.wait_line(MARKER).await?;
    let f = check_identity("qcow2", &line)?;
    let root: u64 = f.get("root-bytes").context("root-bytes")?.parse()?;
    // The image's root partition is ~957 MiB; the overlay disk is 1536 MiB.
    assert!(root > 1300 * 1024 * 1024, "root not grown: {line}");
    Ok(())
}

#[test]
fn tarball_keeps_capabilities_hardlinks_devices_and_setuid() -> Result<()> {
    let img = shared_image()?;
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("root");
    std::fs::create_dir(&root)?;
    common::run_cmd(
        Command::new("tar")
            .args([
                "--zstd",
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "-xpf",
            ])
            .arg(img.join("rootfs.tar.zst"))
            .arg("-C")
            .arg(&root),
    )?;
    let caps = common::run_cmd(Command::new("getcap").arg(root.join("usr/bin/ping")))?;
    assert!(
        caps.stdout_lossy().contains("cap_net_raw"),
        "{}",
        caps.stdout_lossy()
    );

    let a = std::fs::metadata(root.join("usr/bin/perl"))?;
    let b = std::fs::metadata(root.join("usr/bin/perl5.36.0"))?;
    assert_eq!(a.ino(), b.ino(), "perl hardlink became a copy");
    assert!(a.nlink() >= 2);

    let null = std::fs::symlink_metadata(root.join("dev/null"))?;
    assert!(null.file_type().is_char_device(), "dev/null: {null:?}");
    assert_eq!((libc::major(null.rdev()), libc::minor(null.rdev())), (1, 3));

    let su = std::fs::metadata(root.join("usr/bin/su"))?;
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755, "su lost setuid");
    assert_eq!(su.uid(), 0);

    // The identity the first boot regenerates is absent from the image.
    assert_eq!(std::fs::read(root.join("etc/machine-id"))?, b"");
    let keys: Vec<_> = std::fs::read_dir(root.join("etc/ssh"))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("ssh_host_"))
        .collect();
    assert!(keys.is_empty(), "host keys shipped: {keys:?}");
    let wants =
        root.join("etc/systemd/system/multi-user.target.wants/image-builder-firstboot.service");
    assert!(
        std::fs::symlink_metadata(&wants)?.file_type().is_symlink(),
        "first-boot unit not enabled"
    );
    Ok(())
}

fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let to = dst.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to)?;
        } else {
            std::fs::copy(e.path(), &to)?;
        }
    }
    Ok(())
}

fn tar_member(tarball: &Path, member: &str) -> Result<Vec<u8>> {
    let out = common::run_cmd(
        Command::new("tar")
            .args(["--zstd", "-xOf"])
            .arg(tarball)
            .arg(member),
    )?;
    Ok(out.stdout)
}

#[test]
fn rebuild_after_one_file_change_reuses_bootstrap_and_same_inputs_give_same_bytes() -> Result<()> {
    let img = shared_image()?;
    let tmp = tempfile::tempdir()?;
    let tpl = tmp.path().join("minimal");
    copy_dir(&repo().join("templates/images/minimal"), &tpl)?;
    std::fs::write(
        tpl.join("files/motd.hbs"),
        "changed motd for {{image.name}}\n",
    )?;
    let out = tmp.path().join("changed");
    let events = build(&tpl, &out, &[])?;
    assert!(
        has_event(&events, "stage_cached", "bootstrap"),
        "{events:?}"
    );
    assert!(
        !has_event(&events, "stage_started", "bootstrap"),
        "{events:?}"
    );
    assert!(
        has_event(&events, "stage_finished", "customise"),
        "{events:?}"
    );
    assert_eq!(
        tar_member(&out.join("rootfs.tar.zst"), "etc/motd")?,
        b"changed motd for minimal\n"
    );
    // The customise stage works on a hardlink farm of the cached tree: the cache is untouched.
    let key = events
        .iter()
        .find(|e| e["event"] == "stage_cached")
        .and_then(|e| e["key"].as_str())
        .context("bootstrap key")?;
    let cached = cache_dir().join("bootstrap").join(key);
    let motd = std::fs::read_to_string(cached.join("etc/motd"))?;
    assert!(!motd.contains("changed"), "cache modified: {motd}");
    assert!(
        cached.join("etc/ssh/ssh_host_ed25519_key").exists(),
        "cache lost host keys"
    );

    // Same inputs as the shared build: byte-identical tarball.
    let again = tmp.path().join("again");
    let events = build(&repo().join("templates/images/minimal"), &again, &[])?;
    assert!(
        has_event(&events, "stage_cached", "bootstrap"),
        "{events:?}"
    );
    let a = std::fs::read(img.join("rootfs.tar.zst"))?;
    let b = std::fs::read(again.join("rootfs.tar.zst"))?;
    assert!(
        a == b,
        "rootfs.tar.zst differs between two builds of the same inputs"
    );
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(again.join("manifest.json"))?)?;
    let artifacts = m["artifacts"].as_array().context("artifacts")?;
    let names: Vec<&str> = artifacts
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["disk.qcow2", "disk.raw", "rootfs.tar.zst"]);
    assert!(
        m["packages"]
            .as_array()
            .context("packages")?
            .iter()
            .any(|p| p["name"] == "linux-image-cloud-amd64")
    );
    Ok(())
}

#[test]
fn failing_hook_names_stage_hook_and_code_and_leaves_out_untouched() -> Result<()> {
    shared_image()?; // bootstrap cached: this build fails fast in customise
    let tmp = tempfile::tempdir()?;
    let tpl = tmp.path().join("minimal");
    copy_dir(&repo().join("templates/images/minimal"), &tpl)?;
    std::fs::create_dir_all(tpl.join("hooks"))?;
    std::fs::write(
        tpl.join("hooks/fail.sh"),
        "echo 'agent install exploded' >&2\nexit 7\n",
    )?;
    let mut spec = std::fs::read_to_string(tpl.join("image.toml"))?;
    spec.push_str("\n[[hooks]]\nname = \"fail\"\nstage = \"agent\"\nscript = \"hooks/fail.sh\"\n");
    std::fs::write(tpl.join("image.toml"), spec)?;
    let out = tmp.path().join("out");
    std::fs::create_dir(&out)?;
    std::fs::write(out.join("previous"), "old build")?;
    let err = build(&tpl, &out, &[]).expect_err("the hook fails");
    let msg = format!("{err:#}");
    for want in [
        "stage customise failed",
        "hook `fail`",
        "agent",
        "code 7",
        "agent install exploded",
    ] {
        assert!(msg.contains(want), "missing {want:?} in {msg}");
    }
    let left: Vec<String> = std::fs::read_dir(tmp.path())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, ["minimal", "out"], "half-written leftovers");
    let kept: Vec<_> = std::fs::read_dir(&out)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(kept, ["previous"]);
    Ok(())
}
