//! `rack-demo`: the virtual rack demo on embedded defaults. Creates a rack segment, starts
//! `netsvc` in its namespace (SQLite leases, no config file to write), network-boots one BIOS
//! and one UEFI QEMU server from it to a marker, prints the times, and removes everything.

use std::time::Duration;

use rack_tests::{Firmware, PxeRack, workspace_bin};

fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let netsvc = workspace_bin("netsvc")?;
    let mut rack = PxeRack::start(&netsvc, [71, 1])?;
    println!(
        "appliance up in namespace {} at {}",
        rack.rack.ns, rack.rack.addr
    );
    let servers = [
        (Firmware::Bios, "52:54:00:71:01:01"),
        (Firmware::Uefi { ipxe_rom: false }, "52:54:00:71:01:02"),
    ];
    let mut vms = Vec::new();
    for (firmware, mac) in servers {
        println!("powering on {firmware:?} server {mac}");
        vms.push((firmware, mac, rack.power_on(firmware, mac)?));
    }
    for (firmware, mac, vm) in &mut vms {
        let (_, t) = vm.wait_for_line(&rack.marker, Duration::from_secs(300))?;
        println!("{firmware:?} server {mac}: network-booted to its initramfs in {t:.1?}");
    }
    println!("done; removing the rack");
    Ok(())
}
