//! End to end, the product's main job: empty QEMU servers on a virtual rack network-boot from
//! `provisioner serve`, are discovered, inventoried by the real imager in the deploy ramdisk,
//! matched to a rule, imaged with the golden `minimal` image (written straight to their disks,
//! verified by read-back), rebooted from their own disks, and enrol: `deployed` with no human
//! step. Each disk is then inspected from the host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rack_tests::{ApplianceRack, Firmware, ImageBuilds, Qemu, require_root, workspace_bin};

/// From power-on to enrolled, under TCG, with two servers sharing two cores.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(900);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate sits in the workspace")
        .to_owned()
}

fn builds() -> Result<ImageBuilds> {
    Ok(ImageBuilds {
        image_builder: workspace_bin("image-builder")?,
        base: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("image-builder-e2e"),
    })
}

/// The golden image and the deploy ramdisk (with this build's imager).
fn images() -> Result<(PathBuf, PathBuf)> {
    let b = builds()?;
    let golden = b.build(&repo().join("templates/images/minimal"), "minimal", &[])?;
    let imager = workspace_bin("imager")?;
    let ramdisk = b.build(
        &repo().join("templates/images/deploy-ramdisk"),
        "deploy-ramdisk",
        &[format!("imager={}", imager.display())],
    )?;
    Ok((golden, ramdisk))
}

fn blank_disk(dir: &Path, name: &str) -> Result<PathBuf> {
    let disk = dir.join(format!("{name}.qcow2"));
    common::run_cmd(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("4G"),
    )?;
    Ok(disk)
}

/// The host's record as the CLI shows it.
fn host_json(app: &ApplianceRack, host: &str) -> Result<serde_json::Value> {
    let out = app.cli(&["hosts", "show", host, "--json"])?;
    serde_json::from_str(&out).with_context(|| format!("hosts show {host}: {out}"))
}

/// Waits until the host is `deployed`, failing early when it is `failed`.
fn wait_deployed(app: &ApplianceRack, mac: &str, vm: &mut Qemu, deadline: Instant) -> Result<()> {
    loop {
        if let Ok(h) = host_json(app, mac) {
            match h["state"]["state"].as_str() {
                Some("deployed") => return Ok(()),
                Some("failed") => bail!("host {mac} failed: {h}\nconsole:\n{}", vm.console()),
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "host {mac} not deployed within {DEPLOY_TIMEOUT:?}; console:\n{}",
                vm.console()
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A file of the installed root filesystem (GPT partition `root`) of a qcow2 disk, read from
/// the host without mounting: qemu-img to raw, sfdisk for the offset, debugfs to read.
fn read_installed_file(disk: &Path, dir: &Path, file: &str) -> Result<String> {
    let raw = dir.join("inspect.raw");
    if !raw.exists() {
        common::run_cmd(
            Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(disk)
                .arg(&raw),
        )?;
        let table = common::run_cmd(Command::new("sfdisk").arg("--json").arg(&raw))?;
        let table: serde_json::Value = serde_json::from_str(&table.stdout_lossy())?;
        let part = table["partitiontable"]["partitions"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "root"))
            .with_context(|| format!("no root partition: {table}"))?;
        let start = part["start"].as_u64().context("start")?;
        let size = part["size"].as_u64().context("size")?;
        common::run_cmd(
            Command::new("dd")
                .arg(format!("if={}", raw.display()))
                .arg(format!("of={}", dir.join("root.ext4").display()))
                .args(["bs=512", "status=none", "conv=sparse"])
                .arg(format!("skip={start}"))
                .arg(format!("count={size}")),
        )?;
    }
    let out = common::run_cmd(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat {file}"))
            .arg(dir.join("root.ext4")),
    )?;
    Ok(out.stdout_lossy())
}

#[test]
fn bios_and_uefi_servers_are_imaged_and_enrol_with_no_human_step() -> Result<()> {
    require_root()?;
    let (golden, ramdisk) = images()?;
    let tmp = tempfile::tempdir()?;
    let mut app = ApplianceRack::start(&workspace_bin("provisioner")?, [73, 1], &ramdisk)?;
    app.cli(&["images", "import", &golden.to_string_lossy()])?;
    app.cli(&[
        "rules",
        "add",
        "--image",
        "minimal",
        "--hostname",
        "node-{mac}",
    ])?;

    let servers = [
        ("bios", Firmware::Bios, "52:54:00:73:01:01"),
        (
            "uefi",
            Firmware::Uefi { ipxe_rom: false },
            "52:54:00:73:01:02",
        ),
    ];
    let started = Instant::now();
    let mut vms = Vec::new();
    for (name, firmware, mac) in servers {
        let disk = blank_disk(tmp.path(), name)?;
        vms.push((name, mac, disk.clone(), app.power_on(firmware, mac, &disk)?));
    }
    let deadline = started + DEPLOY_TIMEOUT;
    for (name, mac, _, vm) in &mut vms {
        wait_deployed(&app, mac, vm, deadline)?;
        let (enrolled, t) = vm.wait_for_line("PROVISIONER-ENROLLED", Duration::from_secs(60))?;
        eprintln!("{name} server {mac}: deployed and enrolled after {t:.1?}: {enrolled}");
        let console = vm.console();
        ensure!(
            console.contains("IMAGE-BUILDER-FIRSTBOOT-DONE"),
            "{name}: the installed image's first boot did not run"
        );
        ensure!(
            !console.contains("provisioner.secret="),
            "{name}: a secret reached the console"
        );
    }
    // Stop the servers, then look at what is on their disks.
    let mut machine_ids = Vec::new();
    for (name, mac, disk, vm) in vms {
        drop(vm);
        let dir = tmp.path().join(format!("inspect-{name}"));
        std::fs::create_dir_all(&dir)?;
        let hostname = read_installed_file(&disk, &dir, "/etc/hostname")?;
        let expected = format!("node-{}", mac.replace(':', "-"));
        ensure!(hostname.trim() == expected, "{name}: hostname {hostname:?}");
        let machine_id = read_installed_file(&disk, &dir, "/etc/machine-id")?;
        let machine_id = machine_id.trim().to_owned();
        ensure!(
            machine_id.len() == 32 && machine_id.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}: machine-id {machine_id:?}"
        );
        machine_ids.push(machine_id);
        let h = host_json(&app, mac)?;
        ensure!(h["hostname"] == expected.as_str(), "{h}");
    }
    ensure!(
        machine_ids[0] != machine_ids[1],
        "machine-ids are not unique"
    );
    let log = app.daemon().log();
    ensure!(
        !log.iter().any(|l| l.contains("provisioner.secret=")),
        "a secret reached the control node's log"
    );
    Ok(())
}
