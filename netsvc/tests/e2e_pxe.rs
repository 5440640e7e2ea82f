//! QEMU (TCG) servers network-boot from `netsvc` alone, on a virtual rack segment: DHCP hands
//! out the boot file, TFTP (BIOS: QEMU's iPXE ROM; UEFI: OVMF's PXE client fetching
//! `snponly.efi`) and HTTP (the iPXE script, kernel and initrd) carry the rest, and the tiny
//! initramfs prints a marker on the serial console.

use std::process::Command;
use std::time::Duration;

use rack_tests::{Daemon, Firmware, Qemu, QemuSpec, RackNet, marker_initramfs, test_kernel};

struct Appliance {
    rack: RackNet,
    _netsvc: Daemon,
    _dir: tempfile::TempDir,
}

/// A rack segment with netsvc serving DHCP, TFTP and HTTP boot of a marker initramfs.
fn appliance(net: [u8; 2], marker: &str) -> anyhow::Result<Appliance> {
    let rack = RackNet::create(net)?;
    let dir = tempfile::tempdir()?;
    let boot = dir.path().join("boot");
    std::fs::create_dir_all(&boot)?;
    std::fs::copy(test_kernel()?, boot.join("vmlinuz"))?;
    marker_initramfs(&boot.join("initrd.img"), marker)?;
    let config = dir.path().join("netsvc.toml");
    let [a, b] = net;
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
boot_dir = "{boot}"
[dhcp]
interfaces = ["{iface}"]
[[dhcp.subnet]]
net = "10.{a}.{b}.0/24"
pools = ["10.{a}.{b}.100-10.{a}.{b}.150"]
[http]
kernel = "vmlinuz"
initrd = "initrd.img"
cmdline = "console=ttyS0 quiet"
"#,
            state = dir.path().join("state").display(),
            boot = boot.display(),
            iface = rack.ns_iface,
        ),
    )?;
    let mut cmd = rack.in_ns(env!("CARGO_BIN_EXE_netsvc"));
    cmd.arg("--config").arg(&config);
    let mut netsvc = Daemon::spawn(cmd)?;
    for proto in ["dhcp", "tftp", "http"] {
        netsvc.wait_for_lines(
            &["listening", &format!("\"proto\":\"{proto}\"")],
            1,
            Duration::from_secs(30),
        )?;
    }
    Ok(Appliance {
        rack,
        _netsvc: netsvc,
        _dir: dir,
    })
}

fn boot_to_marker(firmware: Firmware, net: [u8; 2], mac: &str) -> anyhow::Result<Duration> {
    let marker = format!("PXE-MARKER-{}", net[1]);
    let mut app = appliance(net, &marker)?;
    let tap = app.rack.add_tap()?;
    let mut spec = QemuSpec::new(firmware);
    spec.nic = Some((tap, mac.to_owned()));
    spec.boot_network = true;
    let mut vm = Qemu::start(&spec)?;
    let (_, elapsed) = vm.wait_for_line(&marker, Duration::from_secs(240))?;
    eprintln!("{firmware:?}: power-on to marker in {elapsed:?}");
    Ok(elapsed)
}

#[test]
fn bios_client_boots_from_netsvc() -> anyhow::Result<()> {
    boot_to_marker(Firmware::Bios, [70, 10], "52:54:00:70:0a:01")?;
    Ok(())
}

#[test]
fn uefi_pxe_client_chains_snponly_and_boots_from_netsvc() -> anyhow::Result<()> {
    boot_to_marker(
        Firmware::Uefi { ipxe_rom: false },
        [70, 11],
        "52:54:00:70:0b:01",
    )?;
    Ok(())
}

#[test]
fn netsvc_stops_cleanly_on_sigterm() -> anyhow::Result<()> {
    let rack = RackNet::create([70, 12])?;
    let dir = tempfile::tempdir()?;
    let mut cmd: Command = rack.in_ns(env!("CARGO_BIN_EXE_netsvc"));
    cmd.args([
        "--interface",
        &rack.ns_iface,
        "--dhcp-range",
        "10.70.12.100-10.70.12.110",
    ])
    .arg("--boot-dir")
    .arg(dir.path())
    .arg("--state-dir")
    .arg(dir.path().join("state"));
    let mut netsvc = Daemon::spawn(cmd)?;
    netsvc.wait_for_lines(&["listening"], 3, Duration::from_secs(30))?;
    netsvc.signal(nix::sys::signal::Signal::SIGTERM)?;
    let status = netsvc.wait(Duration::from_secs(15))?;
    assert!(status.success(), "netsvc exited with {status} on SIGTERM");
    Ok(())
}
