//! End to end: build the `deploy-ramdisk` template with a test-only imager stand-in and
//! network-boot it on a virtual rack served by `netsvc` (DHCP, iPXE, kernel and initrd over
//! HTTP): /init must load the NIC driver, get a DHCP lease from netsvc with udhcpc, print its
//! marker and exec the imager with the kernel command line's `provisioner.*` arguments.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

const BIN: &str = env!("CARGO_BIN_EXE_image-builder");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate sits in the workspace")
        .to_owned()
}

#[tokio::test]
async fn deploy_ramdisk_boots_to_the_imager() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("image-builder-e2e/cache");
    let out = tmp.path().join("ramdisk");
    let imager = repo().join("image-builder/tests/data/test-imager-stand-in.sh");
    let built = common::run_cmd(
        Command::new(BIN)
            .arg("build")
            .arg(repo().join("templates/images/deploy-ramdisk"))
            .arg("--out")
            .arg(&out)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--json")
            .arg("--set")
            .arg(format!("imager={}", imager.display())),
    )
    .context("build the deploy ramdisk")?;
    assert!(built.stdout_lossy().contains(r#""stage":"initramfs""#));
    for f in ["vmlinuz", "initrd.img", "manifest.json"] {
        assert!(out.join(f).exists(), "{f} missing");
    }

    let netsvc = rack_tests::workspace_bin("netsvc")?;
    let mut rack = rack_tests::PxeRack::start_with(
        &netsvc,
        [72, 1],
        &out.join("vmlinuz"),
        &out.join("initrd.img"),
        "console=ttyS0 panic=-1 provisioner.url=http://10.72.1.1:8080/api provisioner.token=abc",
    )?;
    let mut vm = rack.power_on(rack_tests::Firmware::Bios, "52:54:00:72:01:01")?;
    let (ready, _) = vm.wait_for_line("DEPLOY-RAMDISK-READY", Duration::from_secs(240))?;
    // netsvc's pool is .100-.150: udhcpc in the ramdisk configured the NIC from our DHCP.
    assert!(ready.contains("=10.72.1.1"), "{ready}");
    let (imager, _) = vm.wait_for_line("TEST-IMAGER-STAND-IN started", Duration::from_secs(60))?;
    assert!(
        imager.contains("--url=http://10.72.1.1:8080/api"),
        "{imager}"
    );
    assert!(imager.contains("--token=abc"), "{imager}");
    Ok(())
}

#[test]
fn deploy_ramdisk_without_imager_refuses_to_build() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let err = common::run_cmd(
        Command::new(BIN)
            .arg("build")
            .arg(repo().join("templates/images/deploy-ramdisk"))
            .arg("--out")
            .arg(tmp.path().join("out"))
            .arg("--cache-dir")
            .arg(tmp.path().join("cache")),
    )
    .expect_err("no imager");
    let msg = err.to_string();
    assert!(msg.contains("--set imager=PATH"), "{msg}");
    assert!(msg.contains("exit status: 78"), "{msg}");
    assert!(!tmp.path().join("out").exists());
    Ok(())
}
