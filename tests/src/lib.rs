//! Test harnesses shared by the interop and end-to-end tests of every crate.
//!
//! - [`RackNet`]: a virtual rack segment — a network namespace for the appliance, a Linux bridge,
//!   a veth pair into the namespace, and one tap per QEMU server — with unique names, removed in
//!   `Drop`, and leftovers of crashed runs removed before a new one starts.
//! - [`Qemu`]: a QEMU (TCG) machine, BIOS or UEFI, booted from the network, a disk or a kernel,
//!   whose serial console is watched for marker lines with [`Qemu::wait_for_line`].
//! - [`test_kernel`] and [`marker_initramfs`]: a Linux kernel from Debian's cloud kernel package
//!   and a tiny busybox initramfs that prints a marker and powers off.
//! - [`PxeRack`]: a rack segment served by `netsvc` alone, for network-boot runs.
//! - [`ApplianceRack`]: a rack segment served by `provisioner serve` (network services
//!   embedded), with its CLI and empty QEMU servers that network-boot from it.
//! - [`ImageBuilds`]: images built by `image-builder` once per test run, shared by every test.
//! - [`lab`]: the virtual rack lab behind `provisioner lab up | status | down`.
//! - [`Daemon`]: a daemon under test whose log lines are collected, killed in `Drop`.
//! - [`dhclient_bound`]: a stock dhclient run once in a client namespace, its BOUND values.
//! - [`workspace_bin`]: the path of a binary built from this workspace (nextest builds them all).
//!
//! Every harness owns what it creates and cleans it up in `Drop`.

mod appliance;
mod boot;
mod daemon;
mod dhclient;
mod images;
pub mod lab;
mod netns;
mod pxe;
mod qemu;

pub use appliance::{API_PORT, ApplianceRack};
pub use boot::{marker_initramfs, test_kernel};
pub use daemon::Daemon;
pub use dhclient::dhclient_bound;
pub use images::ImageBuilds;
pub use netns::{RackNet, require_root, unique_suffix};
pub use pxe::PxeRack;
pub use qemu::{Firmware, Qemu, QemuSpec, blank_disk};

use std::path::PathBuf;

/// The path of binary `name` built from this workspace, in the running executable's target
/// directory (`target/<profile>/`, the parent of a test binary's `deps/`).
///
/// `cargo nextest run --workspace` builds every binary of the workspace before running tests.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("executable {} has no directory", exe.display()))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    let bin = dir.join(name);
    anyhow::ensure!(
        bin.is_file(),
        "binary {} not built: build the workspace (`cargo build --release --workspace`) first",
        bin.display()
    );
    Ok(bin)
}

/// `len` deterministic pseudo-random bytes (xorshift from `seed`): test payloads whose
/// corruption a checksum or comparison would catch.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}
