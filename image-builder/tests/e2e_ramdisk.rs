//! End to end: build the `deploy-ramdisk` template with a test-only imager stand-in and boot it
//! with `qemu -kernel -initrd` and a QEMU user-mode NIC (no host networking is touched): /init
//! must load the NIC driver, get a DHCP lease with udhcpc, print its marker and exec the imager
//! with the kernel command line's `provisioner.*` arguments.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

const BIN: &str = env!("CARGO_BIN_EXE_image-builder");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate sits in the workspace")
        .to_owned()
}

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_line(log: &Path, marker: &str) -> Result<String> {
    let found = common::wait_for(Duration::from_secs(240), || async move {
        let text = std::fs::read(log).ok()?;
        String::from_utf8_lossy(&text)
            .lines()
            .find(|l| l.contains(marker))
            .map(|l| l.trim().to_owned())
    })
    .await;
    match found {
        Some(l) => Ok(l),
        None => {
            let text =
                String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
            bail!("no `{marker}` on the console:\n{text}")
        }
    }
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

    let log = tmp.path().join("console.log");
    let _vm = Qemu(
        Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", "512", "-display", "none", "-monitor", "none"])
            .args(["-no-reboot", "-serial"])
            .arg(format!("file:{}", log.display()))
            .arg("-kernel")
            .arg(out.join("vmlinuz"))
            .arg("-initrd")
            .arg(out.join("initrd.img"))
            .args(["-append", "console=ttyS0 panic=-1 provisioner.url=http://10.0.2.2:9/api provisioner.token=abc"])
            .args(["-nic", "user,model=virtio-net-pci,restrict=on"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start qemu")?,
    );
    let ready = wait_line(&log, "DEPLOY-RAMDISK-READY").await?;
    // QEMU's user-mode network hands out 10.0.2.15 by DHCP: udhcpc configured the NIC.
    assert!(ready.contains("=10.0.2.15/24"), "{ready}");
    let imager = wait_line(&log, "TEST-IMAGER-STAND-IN started").await?;
    assert!(imager.contains("--url=http://10.0.2.2:9/api"), "{imager}");
    assert!(imager.contains("--token=abc"), "{imager}");
    assert!(imager.contains("url=http://10.0.2.2:9/api"), "{imager}");
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
