//! End to end: build the `minimal` template once per test run (shared between the tests of
//! this binary through a file lock), boot its `disk.raw` under QEMU TCG in BIOS and UEFI mode and
//! its `disk.qcow2` through an overlay, each to the first-boot unit's marker; check the tarball
//! (capabilities, links, devices, and every customise feature the template uses: users, system
//! settings, services, hooks) and the manifest; rebuild after a one-file change with a compressed
//! qcow2 (bootstrap cached, later stages rerun, asserted from `--json` events); rebuild the same
//! inputs (every stage cached) and, from the bootstrap tree alone, get identical tarball bytes;
//! check that a failing hook leaves `--out` untouched; build a rootfs with debootstrap.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
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

/// Runs the image-builder binary with `--json` and the shared cache, and returns its events.
fn build(template: &Path, out: &Path, extra: &[&str]) -> Result<Vec<serde_json::Value>> {
    build_with_cache(template, out, &cache_dir(), extra)
}

/// Runs the image-builder binary with `--json` and returns its events.
fn build_with_cache(
    template: &Path,
    out: &Path,
    cache: &Path,
    extra: &[&str],
) -> Result<Vec<serde_json::Value>> {
    let mut cmd = Command::new(BIN);
    cmd.arg("build")
        .arg(template)
        .arg("--out")
        .arg(out)
        .arg("--cache-dir")
        .arg(cache)
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
    let _ = std::fs::remove_dir_all(&out);
    // Leftovers of earlier runs (each holds GBs of images).
    for e in std::fs::read_dir(base())?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("run-") && e.path() != run {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    std::fs::create_dir_all(&run)?;
    let events = build(&repo().join("templates/images/minimal"), &out, &[])?;
    std::fs::write(
        run.join("minimal-events.json"),
        serde_json::to_vec(&events)?,
    )?;
    Ok(out)
}

/// The `--json` events of the shared build.
fn shared_events() -> Result<Vec<serde_json::Value>> {
    shared_image()?;
    Ok(serde_json::from_slice(&std::fs::read(
        run_dir().join("minimal-events.json"),
    )?)?)
}

/// The cached bootstrap tree of the shared build.
fn shared_bootstrap_tree() -> Result<PathBuf> {
    let m = manifest(&shared_image()?)?;
    let key = m["bootstrap_key"].as_str().context("bootstrap_key")?;
    Ok(cache_dir().join("bootstrap").join(key))
}

fn manifest(out: &Path) -> Result<serde_json::Value> {
    Ok(serde_json::from_slice(&std::fs::read(
        out.join("manifest.json"),
    )?)?)
}

/// One member of a tarball: its header fields, and its content if it was asked for.
#[derive(Debug)]
struct Member {
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    link: Option<PathBuf>,
    data: Option<Vec<u8>>,
}

impl Member {
    fn text(&self) -> &str {
        std::str::from_utf8(self.data.as_deref().unwrap_or_default()).unwrap_or("<not utf-8>")
    }
}

/// Reads every member of a `rootfs.tar.zst` (paths without a trailing `/`), keeping the
/// content of those `want` names: cheaper than extracting or booting.
fn read_tarball(path: &Path, want: &[&str]) -> Result<BTreeMap<String, Member>> {
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut ar = tar::Archive::new(zstd::Decoder::new(f)?);
    let mut out = BTreeMap::new();
    for e in ar.entries()? {
        let mut e = e?;
        let name = e.path()?.to_string_lossy().trim_end_matches('/').to_owned();
        let h = e.header();
        let mut m = Member {
            kind: h.entry_type(),
            mode: h.mode()?,
            uid: h.uid()?,
            gid: h.gid()?,
            link: e.link_name()?.map(|l| l.into_owned()),
            data: None,
        };
        if want.contains(&name.as_str()) {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data)?;
            m.data = Some(data);
        }
        out.insert(name, m);
    }
    Ok(out)
}

fn member<'a>(t: &'a BTreeMap<String, Member>, name: &str) -> Result<&'a Member> {
    t.get(name)
        .with_context(|| format!("`{name}` missing from the tarball"))
}

fn stages(events: &[serde_json::Value], event: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == event)
        .filter_map(|e| e["stage"].as_str().map(str::to_owned))
        .collect()
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
                // Whole lines only: QEMU may have written half of the marker's line so far.
                let end = text.iter().rposition(|b| *b == b'\n')?;
                String::from_utf8_lossy(&text[..end])
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
fn tarball_has_the_templates_users_settings_services_and_hook_effects() -> Result<()> {
    let img = shared_image()?;
    let t = read_tarball(
        &img.join("rootfs.tar.zst"),
        &[
            "etc/passwd",
            "etc/shadow",
            "etc/group",
            "etc/hostname",
            "etc/hosts",
            "etc/resolv.conf",
            "etc/timezone",
            "etc/default/locale",
            "home/ci/.ssh/authorized_keys",
            "var/lib/image-builder-test/hooks.log",
            "usr/lib/image-builder-test/agent",
        ],
    )?;

    // The user, with the spec's password hash, group and shell.
    let passwd = member(&t, "etc/passwd")?.text();
    let ci: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("ci:"))
        .with_context(|| format!("no ci user in /etc/passwd:\n{passwd}"))?
        .split(':')
        .collect();
    assert_eq!(ci[5..], ["/home/ci", "/bin/bash"], "{ci:?}");
    let (uid, gid): (u64, u64) = (ci[2].parse()?, ci[3].parse()?);
    assert!(uid >= 1000, "{ci:?}");
    let shadow = member(&t, "etc/shadow")?;
    assert_eq!(shadow.mode & 0o007, 0, "/etc/shadow world-readable");
    let hash = shadow
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("ci:"))
        .and_then(|rest| rest.split(':').next())
        .context("no ci entry in /etc/shadow")?;
    assert_eq!(
        hash,
        "$6$imagebuilderci$ySJUBhvTa4rweGzpN2N/jKsCsnAtfB1oFWWeeTUpouDqsYa6qQkTpCZwoSWpQoAW7sU3XmiRi6rI4F0JE72Py0"
    );
    let adm = member(&t, "etc/group")?
        .text()
        .lines()
        .find(|l| l.starts_with("adm:"))
        .context("adm group")?
        .to_owned();
    assert!(
        adm.split(':')
            .nth(3)
            .is_some_and(|m| m.split(',').any(|u| u == "ci")),
        "{adm}"
    );

    // Its authorized keys: every key of the spec, private to the user.
    let keys = member(&t, "home/ci/.ssh/authorized_keys")?;
    let lines: Vec<&str> = keys.text().lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].ends_with(" ci-one@test") && lines[1].ends_with(" ci-two@test"));
    assert_eq!((keys.mode & 0o7777, keys.uid, keys.gid), (0o600, uid, gid));
    let ssh = member(&t, "home/ci/.ssh")?;
    assert_eq!(ssh.kind, tar::EntryType::Directory);
    assert_eq!((ssh.mode & 0o7777, ssh.uid, ssh.gid), (0o700, uid, gid));
    let home = member(&t, "home/ci")?;
    assert_eq!((home.uid, home.gid), (uid, gid));

    // System settings; the build machine's resolver is not shipped.
    assert_eq!(member(&t, "etc/resolv.conf")?.text(), "");
    assert_eq!(member(&t, "etc/hostname")?.text(), "minimal\n");
    assert!(
        member(&t, "etc/hosts")?
            .text()
            .contains("127.0.1.1\tminimal\n")
    );
    assert_eq!(member(&t, "etc/default/locale")?.text(), "LANG=C\n");
    assert_eq!(member(&t, "etc/timezone")?.text(), "Europe/Berlin\n");
    let lt = member(&t, "etc/localtime")?;
    assert_eq!(lt.kind, tar::EntryType::Symlink);
    assert_eq!(
        lt.link.as_deref(),
        Some(Path::new("/usr/share/zoneinfo/Europe/Berlin"))
    );
    member(&t, "usr/share/zoneinfo/Europe/Berlin")?;

    // Services: enabled ones gained their wants links, disabled ones lost theirs, against the
    // bootstrap tree they were customised from.
    let boot = shared_bootstrap_tree()?;
    let sd = "etc/systemd/system";
    for (link, enabled) in [
        ("multi-user.target.wants/systemd-networkd.service", true),
        ("getty.target.wants/serial-getty@ttyS0.service", true),
        (
            "multi-user.target.wants/image-builder-firstboot.service",
            true,
        ),
        ("timers.target.wants/apt-daily.timer", false),
        ("timers.target.wants/apt-daily-upgrade.timer", false),
    ] {
        let path = format!("{sd}/{link}");
        let in_image = t
            .get(&path)
            .is_some_and(|m| m.kind == tar::EntryType::Symlink);
        let in_bootstrap = boot.join(&path).symlink_metadata().is_ok();
        assert_eq!(in_image, enabled, "{path} in the image");
        assert_eq!(in_bootstrap, !enabled, "{path} in the bootstrap tree");
    }

    // Hooks ran by hook point (the spec lists them finalise, agent, customise), each after
    // what it should see was applied.
    assert_eq!(
        member(&t, "var/lib/image-builder-test/hooks.log")?.text(),
        "customise record-customise files+users\n\
         agent install-agent\n\
         finalise record-finalise files+users agent\n"
    );
    assert_eq!(
        member(&t, "usr/lib/image-builder-test/agent")?.text(),
        "agent of minimal 1\n"
    );
    Ok(())
}

fn sha256sum(path: &Path) -> Result<String> {
    let out = common::run_cmd(Command::new("sha256sum").arg(path))?;
    Ok(out
        .stdout_lossy()
        .split_whitespace()
        .next()
        .context("sha256sum output")?
        .to_owned())
}

#[test]
fn manifest_hashes_every_artifact_and_lists_the_customised_trees_packages() -> Result<()> {
    let img = shared_image()?;
    let m = manifest(&img)?;
    assert_eq!(
        (m["template"].as_str(), m["version"].as_str()),
        (Some("minimal"), Some("1"))
    );
    assert_eq!(m["kind"], "disk");
    let started = shared_events()?
        .into_iter()
        .find(|e| e["event"] == "build_started")
        .context("build_started event")?;
    let input_hash = m["input_hash"].as_str().context("input_hash")?;
    assert_eq!(input_hash.len(), 64, "{input_hash}");
    assert_eq!(started["input_hash"].as_str(), Some(input_hash));

    // Every file of the output but the manifest is listed, with its real size and sha256.
    let mut files: Vec<String> = std::fs::read_dir(&img)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "manifest.json")
        .collect();
    files.sort();
    let artifacts = m["artifacts"].as_array().context("artifacts")?;
    let names: Vec<&str> = artifacts
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, files);
    assert_eq!(
        names,
        ["disk.qcow2", "disk.raw", "disk.raw.zst", "rootfs.tar.zst"]
    );
    for a in artifacts {
        let path = img.join(a["name"].as_str().context("name")?);
        assert_eq!(
            a["size"].as_u64(),
            Some(std::fs::metadata(&path)?.len()),
            "{a}"
        );
        assert_eq!(
            a["sha256"].as_str(),
            Some(sha256sum(&path)?.as_str()),
            "{a}"
        );
    }

    // disk.raw.zst, what the imager downloads, decompresses to the bytes the manifest lists for
    // disk.raw (what the imager verifies the written disk against), and is much smaller.
    let artifact = |name: &str| {
        artifacts
            .iter()
            .find(|a| a["name"] == name)
            .with_context(|| format!("{name} in the manifest"))
    };
    let (raw, zst) = (artifact("disk.raw")?, artifact("disk.raw.zst")?);
    zst_decompresses_to_disk_raw(&img)?;
    let size = |a: &serde_json::Value| a["size"].as_u64().unwrap_or(0);
    assert!(size(zst) * 4 < size(raw), "{zst} vs {raw}");

    // Packages come from the customised tree: the one a hook installed is listed, though the
    // bootstrap tree does not have it.
    let packages = m["packages"].as_array().context("packages")?;
    let version = |name: &str| {
        packages
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["version"].as_str())
    };
    assert_eq!(version("image-builder-test-agent"), Some("1.0-1"));
    assert!(version("linux-image-cloud-amd64").is_some());
    assert!(version("openssh-server").is_some());
    let status = std::fs::read_to_string(shared_bootstrap_tree()?.join("var/lib/dpkg/status"))?;
    assert!(!status.contains("Package: image-builder-test-agent"));
    Ok(())
}

/// Checks that `out/disk.raw.zst` decompresses to the size and sha256 the manifest lists for
/// `disk.raw` (what the imager verifies the written disk against).
fn zst_decompresses_to_disk_raw(out: &Path) -> Result<()> {
    let m = manifest(out)?;
    let raw = m["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == "disk.raw"))
        .context("manifest: disk.raw")?;
    let mut decoder =
        zstd::stream::read::Decoder::new(std::fs::File::open(out.join("disk.raw.zst"))?)?;
    let mut hasher = sha2::Sha256::default();
    let decompressed = std::io::copy(&mut decoder, &mut hasher)?;
    let sha256 = hex::encode(sha2::Digest::finalize(hasher));
    assert_eq!(Some(decompressed), raw["size"].as_u64(), "{raw}");
    assert_eq!(Some(sha256.as_str()), raw["sha256"].as_str(), "{raw}");
    Ok(())
}

fn qemu_img_json(args: &[&str], path: &Path) -> Result<serde_json::Value> {
    let out = common::run_cmd(
        Command::new("qemu-img")
            .args(args)
            .arg("--output=json")
            .arg(path),
    )?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Adds lines to a template copy's `image.toml`.
fn patch_spec(tpl: &Path, from: &str, to: &str) -> Result<()> {
    let spec = std::fs::read_to_string(tpl.join("image.toml"))?;
    ensure!(spec.contains(from), "`{from}` not in the spec");
    std::fs::write(tpl.join("image.toml"), spec.replacen(from, to, 1))?;
    Ok(())
}

/// A cache at `dir` holding only the shared build's bootstrap tree (linked, not copied).
fn bootstrap_only_cache(dir: &Path) -> Result<PathBuf> {
    let boot = shared_bootstrap_tree()?;
    std::fs::create_dir_all(dir.join("bootstrap"))?;
    common::run_cmd(
        Command::new("cp")
            .arg("-al")
            .arg(&boot)
            .arg(dir.join("bootstrap").join(boot.file_name().context("key")?)),
    )?;
    Ok(dir.to_owned())
}

#[test]
fn rebuild_after_one_file_change_reuses_bootstrap_and_compresses_the_qcow2() -> Result<()> {
    let img = shared_image()?;
    let tmp = tempfile::tempdir()?;
    let tpl = tmp.path().join("minimal");
    copy_dir(&repo().join("templates/images/minimal"), &tpl)?;
    // Unique to this run, so that no earlier run's cache entries match.
    let motd = format!(
        "changed motd for {{{{image.name}}}} in {}\n",
        tmp.path().display()
    );
    std::fs::write(tpl.join("files/motd.hbs"), &motd)?;
    patch_spec(&tpl, "[disk]\n", "[disk]\nqcow2_compress = true\n")?;
    let out = tmp.path().join("changed");
    let events = build(&tpl, &out, &[])?;
    // The bootstrap stage is also the package stage (the package set is its --include).
    assert_eq!(stages(&events, "stage_cached"), ["bootstrap"], "{events:?}");
    let mut ran = stages(&events, "stage_finished");
    ran.sort();
    assert_eq!(
        ran,
        [
            "customise",
            "disk",
            "disk_zst",
            "manifest",
            "qcow2",
            "rootfs"
        ],
        "{events:?}"
    );
    assert_eq!(
        String::from_utf8(tar_member(&out.join("rootfs.tar.zst"), "etc/motd")?)?,
        motd.replace("{{image.name}}", "minimal")
    );
    // Only the chunks holding what changed are compressed again: the other zstd frames of
    // both compressed artifacts are copied from the shared build's.
    let frames: Vec<(&str, u64, u64)> = events
        .iter()
        .filter(|e| e["event"] == "frames_written")
        .filter_map(|e| {
            Some((
                e["artifact"].as_str()?,
                e["frames"].as_u64()?,
                e["reused"].as_u64()?,
            ))
        })
        .collect();
    let mut names: Vec<&str> = frames.iter().map(|f| f.0).collect();
    names.sort();
    assert_eq!(names, ["disk.raw.zst", "rootfs.tar.zst"], "{events:?}");
    for (artifact, n, reused) in frames {
        assert!(reused < n, "{artifact}: no frame was compressed again");
        assert!(
            reused * 10 >= n * 9,
            "{artifact}: only {reused} of {n} frames reused"
        );
    }
    // What was reused does not change the bytes: the same template built from a cache that
    // holds only the bootstrap tree (every frame compressed) gives the same tarball.
    // (`mkfs.ext4 -d` fills the file system in the order the customised tree's directories
    // list, so disk.raw itself may differ between two customised copies.)
    let cold = tmp.path().join("cold");
    let cold_events = build_with_cache(
        &tpl,
        &cold,
        &bootstrap_only_cache(&tmp.path().join("cache"))?,
        &[],
    )?;
    assert!(
        cold_events.iter().any(|e| e["event"] == "frames_written"
            && e["artifact"] == "rootfs.tar.zst"
            && e["reused"] == 0),
        "{cold_events:?}"
    );
    let (a, b) = (
        std::fs::read(out.join("rootfs.tar.zst"))?,
        std::fs::read(cold.join("rootfs.tar.zst"))?,
    );
    assert!(
        a == b,
        "rootfs.tar.zst differs between a warm and a cold cache"
    );
    // The reused frames of disk.raw.zst decompress to this build's disk.raw.
    zst_decompresses_to_disk_raw(&out)?;
    // The hooks ran again, reported in hook-point order.
    let hooks: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["event"] == "hook_finished")
        .filter_map(|e| Some((e["stage"].as_str()?, e["hook"].as_str()?)))
        .collect();
    assert_eq!(
        hooks,
        [
            ("customise", "record-customise"),
            ("agent", "install-agent"),
            ("finalise", "record-finalise")
        ]
    );
    // The customise stage works on a copy of the cached tree: the cache is untouched.
    let cached = shared_bootstrap_tree()?;
    let motd = std::fs::read_to_string(cached.join("etc/motd"))?;
    assert!(!motd.contains("changed"), "cache modified: {motd}");
    assert!(
        cached.join("etc/ssh/ssh_host_ed25519_key").exists(),
        "cache lost host keys"
    );

    // qcow2_compress: compressed clusters (the shared build has none), the same disk content
    // as disk.raw, and a smaller file.
    let compressed = qemu_img_json(&["check"], &out.join("disk.qcow2"))?;
    let plain = qemu_img_json(&["check"], &img.join("disk.qcow2"))?;
    let clusters = |v: &serde_json::Value| v["compressed-clusters"].as_u64().unwrap_or(0);
    assert!(clusters(&compressed) > 0, "{compressed}");
    assert_eq!(clusters(&plain), 0, "{plain}");
    common::run_cmd(
        Command::new("qemu-img")
            .args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
            .arg(out.join("disk.qcow2"))
            .arg(out.join("disk.raw")),
    )
    .context("disk.qcow2 differs from disk.raw")?;
    let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len());
    let (small, big) = (size(out.join("disk.qcow2"))?, size(img.join("disk.qcow2"))?);
    assert!(small * 10 < big * 7, "compressed {small} vs plain {big}");
    Ok(())
}

#[test]
fn same_inputs_reuse_every_stage_and_give_identical_tarball_bytes() -> Result<()> {
    let img = shared_image()?;
    let tmp = tempfile::tempdir()?;

    // With the shared build's cache every stage's output is reused.
    let again = tmp.path().join("again");
    let events = build(&repo().join("templates/images/minimal"), &again, &[])?;
    let mut cached = stages(&events, "stage_cached");
    cached.sort();
    assert_eq!(
        cached,
        [
            "bootstrap",
            "customise",
            "disk",
            "disk_zst",
            "qcow2",
            "rootfs"
        ],
        "{events:?}"
    );
    assert_eq!(stages(&events, "stage_started"), ["manifest"], "{events:?}");
    let (a, b) = (manifest(&img)?, manifest(&again)?);
    assert_eq!(a, b, "manifests differ");

    // From the bootstrap tree alone (a cache holding only that entry), customise and pack run
    // again and give byte-identical tarball bytes.
    let fresh = bootstrap_only_cache(&tmp.path().join("cache"))?;
    let rebuilt = tmp.path().join("rebuilt");
    let events = build_with_cache(
        &repo().join("templates/images/minimal"),
        &rebuilt,
        &fresh,
        &[],
    )?;
    assert_eq!(stages(&events, "stage_cached"), ["bootstrap"], "{events:?}");
    assert!(has_event(&events, "stage_finished", "rootfs"), "{events:?}");
    let a = std::fs::read(img.join("rootfs.tar.zst"))?;
    let b = std::fs::read(rebuilt.join("rootfs.tar.zst"))?;
    assert!(
        a == b,
        "rootfs.tar.zst differs between two builds of the same inputs"
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

#[test]
fn debootstrap_builds_a_rootfs_from_the_machines_mirror() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let tpl = repo().join("image-builder/tests/data/debootstrap-rootfs");
    let out = tmp.path().join("out");
    let events = build(&tpl, &out, &[])?;
    // Cached from an earlier run of this test, or built now; either way by debootstrap (its key
    // covers the tool), and only the tarball is packed.
    assert!(
        has_event(&events, "stage_finished", "bootstrap")
            || has_event(&events, "stage_cached", "bootstrap"),
        "{events:?}"
    );
    for stage in ["disk", "qcow2"] {
        assert!(
            !events.iter().any(|e| e["stage"] == stage),
            "{stage}: {events:?}"
        );
    }
    let m = manifest(&out)?;
    assert_eq!(m["kind"], "rootfs");
    let names: Vec<&str> = m["artifacts"]
        .as_array()
        .context("artifacts")?
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["rootfs.tar.zst"]);
    let packages = m["packages"].as_array().context("packages")?;
    for want in ["iputils-ping", "debianutils", "dpkg"] {
        assert!(packages.iter().any(|p| p["name"] == want), "{want}");
    }
    assert!(
        !packages.iter().any(|p| p["name"] == "systemd"),
        "not minbase"
    );

    let t = read_tarball(
        &out.join("rootfs.tar.zst"),
        &[
            "etc/debian_version",
            "etc/apt/sources.list",
            "etc/hostname",
            "etc/resolv.conf",
            "etc/issue.d/image-builder.issue",
        ],
    )?;
    assert!(member(&t, "etc/debian_version")?.text().starts_with("12."));
    member(&t, "usr/bin/ping")?;
    assert_eq!(member(&t, "etc/hostname")?.text(), "deboot\n");
    assert_eq!(
        member(&t, "etc/issue.d/image-builder.issue")?.text(),
        "bootstrapped by debootstrap: debootstrap-rootfs 0.1\n"
    );
    // The image has every source of the machine's for the suite (debootstrap itself uses the
    // first only), and no apt lists, downloads or build-machine resolver are left behind.
    let sources = member(&t, "etc/apt/sources.list")?.text();
    let apt = Path::new("/etc/apt");
    let machine = image_builder::mirror::machine_sources(apt)?;
    let wanted = image_builder::mirror::for_suite(apt, &machine, "bookworm")?;
    let got: Vec<&str> = sources.lines().collect();
    let want: Vec<String> = wanted
        .into_iter()
        .map(|l| {
            image_builder::mirror::AptLine {
                components: vec!["main".into()],
                ..l
            }
            .one_line()
        })
        .collect();
    assert_eq!(got, want);
    let left: Vec<&String> = t
        .keys()
        .filter(|n| {
            let apt_file = n.starts_with("var/lib/apt/lists/") || n.starts_with("var/cache/apt/");
            apt_file && t[*n].kind == tar::EntryType::Regular && !n.ends_with("/lock")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(member(&t, "etc/resolv.conf")?.text(), "");

    // No hooks: customise worked on a hardlink farm of the cached tree, which is unchanged.
    let key = m["bootstrap_key"].as_str().context("bootstrap_key")?;
    let cached = cache_dir().join("bootstrap").join(key);
    let hostname = std::fs::read_to_string(cached.join("etc/hostname")).unwrap_or_default();
    assert_ne!(hostname, "deboot\n", "cached bootstrap tree modified");
    assert!(!cached.join("etc/issue.d/image-builder.issue").exists());
    Ok(())
}
