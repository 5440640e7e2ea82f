//! Golden image builder: a template spec is bootstrapped with debootstrap, customised and packed
//! into `rootfs.tar.zst`, bootable `disk.raw`/`disk.qcow2` and a `manifest.json`.
#![warn(clippy::print_stdout)]
