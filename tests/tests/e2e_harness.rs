//! The harness itself: a kernel boots the marker initramfs under QEMU, and a rack segment
//! carries traffic between the appliance namespace and a client namespace.

use std::process::Command;
use std::time::Duration;

use rack_tests::{Firmware, Qemu, QemuSpec, RackNet, marker_initramfs, test_kernel};

#[test]
fn kernel_boots_marker_initramfs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let initrd = dir.path().join("initrd.cpio");
    marker_initramfs(&initrd, "HARNESS-MARKER-42")?;
    let mut spec = QemuSpec::new(Firmware::Bios);
    spec.kernel = Some((test_kernel()?, initrd, "console=ttyS0 quiet".into()));
    let mut vm = Qemu::start(&spec)?;
    let (line, _) = vm.wait_for_line("HARNESS-MARKER-42", Duration::from_secs(120))?;
    assert!(line.contains("HARNESS-MARKER-42"));
    vm.wait_exit(Duration::from_secs(30))?;
    Ok(())
}

#[test]
fn rack_segment_connects_namespaces_and_cleans_up() -> anyhow::Result<()> {
    let (ns, bridge) = {
        let mut rack = RackNet::create([70, 1])?;
        let (client, iface) = rack.add_client_ns()?;
        common::run_cmd(Command::new("ip").args([
            "-n",
            &client,
            "addr",
            "add",
            "10.70.1.2/24",
            "dev",
            &iface,
        ]))?;
        let ping = common::run_cmd(rack.in_ns("ping").args(["-c", "1", "-W", "5", "10.70.1.2"]));
        assert!(ping.is_ok(), "ping across the rack failed: {ping:?}");
        (rack.ns.clone(), rack.bridge.clone())
    };
    let links = common::run_cmd(Command::new("ip").args(["-o", "link", "show"]))?.stdout_lossy();
    assert!(!links.contains(&bridge), "bridge {bridge} left behind");
    let namespaces = common::run_cmd(Command::new("ip").args(["netns", "list"]))?.stdout_lossy();
    assert!(!namespaces.contains(&ns), "namespace {ns} left behind");
    Ok(())
}
