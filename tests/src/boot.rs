//! A kernel and a marker initramfs for boot tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use common::run_cmd;

/// The newest Debian cloud kernel installed on this machine (`linux-image-cloud-amd64`).
pub fn test_kernel() -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64"))
        })
        .collect();
    found.sort();
    found.pop().context(
        "no /boot/vmlinuz-*-cloud-amd64: install linux-image-cloud-amd64 (tests/setup.sh does)",
    )
}

/// Writes a busybox initramfs to `out` whose `/init` prints `marker` on the console (ttyS0) and
/// powers the machine off.
pub fn marker_initramfs(out: &Path, marker: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    for d in ["bin", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copy /bin/busybox (package busybox-static)")?;
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         echo \"{marker}\" > /dev/ttyS0\necho \"{marker}\"\n/bin/busybox poweroff -f\n"
    );
    std::fs::write(root.join("init"), init)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755))?;
    let script = format!(
        "cd '{}' && find . | cpio --quiet -o -H newc -R 0:0 > '{}'",
        root.display(),
        out.display()
    );
    run_cmd(Command::new("sh").args(["-c", &script]))?;
    Ok(())
}
