//! QEMU (TCG) servers network-boot from `netsvc` alone, on a virtual rack segment: DHCP hands
//! out the boot file, TFTP (BIOS: QEMU's iPXE ROM; UEFI: OVMF's PXE client fetching
//! `snponly.efi`) and HTTP (the iPXE script, kernel and initrd) carry the rest, and the tiny
//! initramfs prints a marker on the serial console.

use std::path::Path;
use std::time::Duration;

use rack_tests::{Daemon, Firmware, PxeRack, RackNet};

fn boot_to_marker(firmware: Firmware, net: [u8; 2], mac: &str) -> anyhow::Result<Duration> {
    let mut rack = PxeRack::start(Path::new(env!("CARGO_BIN_EXE_netsvc")), net)?;
    let mut vm = rack.power_on(firmware, mac)?;
    let (_, elapsed) = vm.wait_for_line(&rack.marker, Duration::from_secs(240))?;
    eprintln!("{firmware:?}: power-on to marker in {elapsed:?}");
    // The server's DHCP exchange is on record in netsvc's log.
    let acks = rack
        .netsvc()
        .wait_for_lines(&["lease bound", mac], 1, Duration::from_secs(5))?;
    assert!(!acks.is_empty());
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
    let mut cmd = rack.in_ns(env!("CARGO_BIN_EXE_netsvc"));
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
