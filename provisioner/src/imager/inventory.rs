//! The hardware inventory, read from procfs and sysfs under a root directory (`/` in the deploy
//! ramdisk, a fixture tree in tests): CPU, memory, disks, NICs, DMI identity and boot mode.

use std::io;
use std::path::{Path, PathBuf};

use crate::api::{BootMode, Disk, HardwareInventory, MacAddr, Nic};

/// Errors collecting the inventory.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// A file every Linux system has could not be read.
    #[error("failed to read `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        err: io::Error,
    },
    /// A file every Linux system has does not hold what it should.
    #[error("unexpected content in `{path}`: {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was missing or malformed.
        what: &'static str,
    },
}

/// Kernel block device name prefixes that are never install targets.
const SKIP_BLOCK: &[&str] = &["loop", "ram", "sr", "zram", "fd", "nbd", "dm-", "md"];

/// DMI values firmware uses for "not set".
const DMI_PLACEHOLDERS: &[&str] = &[
    "",
    "none",
    "not specified",
    "not applicable",
    "to be filled by o.e.m.",
    "default string",
    "system serial number",
    "0",
];

fn read(path: &Path) -> Result<String, InventoryError> {
    std::fs::read_to_string(path).map_err(|err| InventoryError::Read {
        path: path.to_owned(),
        err,
    })
}

/// A trimmed, non-empty attribute, or `None` when the file is missing, unreadable or empty.
fn attr(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty()).then(|| s.to_owned())
}

/// Directory entries sorted by name; a missing directory is empty.
fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// CPU model and logical CPU count from `/proc/cpuinfo`.
pub(crate) fn parse_cpuinfo(text: &str) -> (String, u32) {
    let mut count = 0u32;
    let mut model = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim() {
            "processor" => count += 1,
            // x86 says `model name`; other architectures `cpu model`, `Model` or `uarch`.
            "model name" | "cpu model" | "Model" | "uarch" if model.is_none() => {
                model = Some(v.trim().to_owned());
            }
            _ => {}
        }
    }
    (model.unwrap_or_else(|| "unknown".to_owned()), count.max(1))
}

/// `MemTotal` in bytes from `/proc/meminfo`.
pub(crate) fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => n.checked_mul(1024),
        Some(_) => None,
    }
}

/// The serial number in a SCSI VPD page 0x80 (4-byte header, then ASCII).
fn vpd_serial(page: &[u8]) -> Option<String> {
    let len = usize::from(*page.get(3)?);
    let s = String::from_utf8_lossy(page.get(4..4 + len)?);
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty()).then(|| s.to_owned())
}

fn disks(sys: &Path) -> Vec<Disk> {
    let mut out = Vec::new();
    for (name, dir) in entries(&sys.join("class/block")) {
        if SKIP_BLOCK.iter().any(|p| name.starts_with(p)) || dir.join("partition").exists() {
            continue;
        }
        let sectors: u64 = attr(&dir.join("size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let size_bytes = sectors.saturating_mul(512);
        if size_bytes == 0 {
            continue; // An empty CD drive or card reader.
        }
        let serial = attr(&dir.join("serial"))
            .or_else(|| attr(&dir.join("device/serial")))
            .or_else(|| {
                std::fs::read(dir.join("device/vpd_pg80"))
                    .ok()
                    .and_then(|p| vpd_serial(&p))
            });
        out.push(Disk {
            model: attr(&dir.join("device/model")),
            serial,
            rotational: attr(&dir.join("queue/rotational")).as_deref() == Some("1"),
            size_bytes,
            name,
        });
    }
    out
}

fn nics(sys: &Path) -> Vec<Nic> {
    let mut out = Vec::new();
    for (name, dir) in entries(&sys.join("class/net")) {
        // Only Ethernet (ARPHRD_ETHER = 1); skips loopback, tunnels and the like.
        if name == "lo" || attr(&dir.join("type")).as_deref() != Some("1") {
            continue;
        }
        let Some(mac) = attr(&dir.join("address")).and_then(|a| a.parse::<MacAddr>().ok()) else {
            continue;
        };
        let link = attr(&dir.join("carrier")).as_deref() == Some("1")
            || attr(&dir.join("operstate")).as_deref() == Some("up");
        // `speed` is -1 (or unreadable) when unknown or the link is down.
        let speed_mbps = attr(&dir.join("speed"))
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|&s| s > 0);
        out.push(Nic {
            name,
            mac,
            link,
            speed_mbps,
        });
    }
    out
}

fn dmi(sys: &Path, file: &str) -> Option<String> {
    attr(&sys.join("class/dmi/id").join(file))
        .filter(|v| !DMI_PLACEHOLDERS.contains(&v.to_ascii_lowercase().as_str()))
}

/// Collects the inventory from `root/proc` and `root/sys`.
///
/// CPU and memory are required; disks, NICs and DMI fields are whatever the machine shows.
pub fn collect(root: &Path) -> Result<HardwareInventory, InventoryError> {
    let proc = root.join("proc");
    let sys = root.join("sys");
    let (cpu_model, cpu_count) = parse_cpuinfo(&read(&proc.join("cpuinfo"))?);
    let meminfo = proc.join("meminfo");
    let memory_bytes = parse_meminfo(&read(&meminfo)?).ok_or(InventoryError::Parse {
        path: meminfo,
        what: "no MemTotal line in kB",
    })?;
    Ok(HardwareInventory {
        cpu_model,
        cpu_count,
        memory_bytes,
        disks: disks(&sys),
        nics: nics(&sys),
        vendor: dmi(&sys, "sys_vendor"),
        product: dmi(&sys, "product_name"),
        serial: dmi(&sys, "product_serial"),
        boot_mode: if sys.join("firmware/efi").is_dir() {
            BootMode::Uefi
        } else {
            BootMode::Bios
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, content: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// A fixture tree shaped like a QEMU guest's procfs and sysfs.
    fn fixture(root: &Path, uefi: bool) {
        put(
            root,
            "proc/cpuinfo",
            b"processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: QEMU Virtual CPU version 2.5+\n\n\
              processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: QEMU Virtual CPU version 2.5+\n\n",
        );
        put(
            root,
            "proc/meminfo",
            b"MemTotal:        2030612 kB\nMemFree:         1730000 kB\n",
        );
        // virtio disk with a serial on the gendisk, a partition, SATA disk with VPD serial.
        put(root, "sys/class/block/vda/size", b"20971520\n");
        put(root, "sys/class/block/vda/serial", b"D1\n");
        put(root, "sys/class/block/vda/queue/rotational", b"0\n");
        put(root, "sys/class/block/vda1/size", b"2048\n");
        put(root, "sys/class/block/vda1/partition", b"1\n");
        put(root, "sys/class/block/sda/size", b"4194304\n");
        put(
            root,
            "sys/class/block/sda/device/model",
            b"QEMU HARDDISK   \n",
        );
        put(
            root,
            "sys/class/block/sda/device/vpd_pg80",
            b"\x00\x80\x00\x04QM01",
        );
        put(root, "sys/class/block/sda/queue/rotational", b"1\n");
        put(root, "sys/class/block/nvme0n1/size", b"8388608\n");
        put(root, "sys/class/block/nvme0n1/device/serial", b"NV1 \n");
        put(
            root,
            "sys/class/block/nvme0n1/device/model",
            b"QEMU NVMe Ctrl\n",
        );
        // Never targets: loop, ram, an empty CD drive, zram.
        put(root, "sys/class/block/loop0/size", b"1000\n");
        put(root, "sys/class/block/ram0/size", b"8192\n");
        put(root, "sys/class/block/sr0/size", b"0\n");
        put(root, "sys/class/block/zram0/size", b"1000\n");
        put(root, "sys/class/block/vdb/size", b"0\n");
        put(root, "sys/class/net/lo/type", b"772\n");
        put(root, "sys/class/net/lo/address", b"00:00:00:00:00:00\n");
        put(root, "sys/class/net/eth0/type", b"1\n");
        put(root, "sys/class/net/eth0/address", b"52:54:00:12:34:56\n");
        put(root, "sys/class/net/eth0/carrier", b"1\n");
        put(root, "sys/class/net/eth0/operstate", b"up\n");
        put(root, "sys/class/net/eth0/speed", b"1000\n");
        put(root, "sys/class/net/eth1/type", b"1\n");
        put(root, "sys/class/net/eth1/address", b"52:54:00:12:34:57\n");
        put(root, "sys/class/net/eth1/operstate", b"down\n");
        put(root, "sys/class/net/eth1/speed", b"-1\n");
        put(root, "sys/class/dmi/id/sys_vendor", b"QEMU\n");
        put(
            root,
            "sys/class/dmi/id/product_name",
            b"Standard PC (Q35 + ICH9, 2009)\n",
        );
        put(
            root,
            "sys/class/dmi/id/product_serial",
            b"To Be Filled By O.E.M.\n",
        );
        if uefi {
            std::fs::create_dir_all(root.join("sys/firmware/efi/efivars")).unwrap();
        }
    }

    #[test]
    fn collects_a_qemu_guest() {
        let tmp = tempfile::tempdir().unwrap();
        fixture(tmp.path(), true);
        let inv = collect(tmp.path()).unwrap();
        assert_eq!(inv.cpu_model, "QEMU Virtual CPU version 2.5+");
        assert_eq!(inv.cpu_count, 2);
        assert_eq!(inv.memory_bytes, 2_030_612 * 1024);
        assert_eq!(inv.boot_mode, BootMode::Uefi);
        assert_eq!(inv.vendor.as_deref(), Some("QEMU"));
        assert_eq!(
            inv.product.as_deref(),
            Some("Standard PC (Q35 + ICH9, 2009)")
        );
        assert_eq!(inv.serial, None, "firmware placeholder is not a serial");
        type Row<'a> = (&'a str, u64, Option<&'a str>, Option<&'a str>, bool);
        let disks: Vec<Row<'_>> = inv
            .disks
            .iter()
            .map(|d| {
                (
                    d.name.as_str(),
                    d.size_bytes,
                    d.model.as_deref(),
                    d.serial.as_deref(),
                    d.rotational,
                )
            })
            .collect();
        assert_eq!(
            disks,
            [
                (
                    "nvme0n1",
                    8_388_608 * 512,
                    Some("QEMU NVMe Ctrl"),
                    Some("NV1"),
                    false
                ),
                (
                    "sda",
                    4_194_304 * 512,
                    Some("QEMU HARDDISK"),
                    Some("QM01"),
                    true
                ),
                ("vda", 20_971_520 * 512, None, Some("D1"), false),
            ]
        );
        assert_eq!(inv.nics.len(), 2);
        assert_eq!(inv.nics[0].name, "eth0");
        assert_eq!(inv.nics[0].mac.to_string(), "52:54:00:12:34:56");
        assert!(inv.nics[0].link);
        assert_eq!(inv.nics[0].speed_mbps, Some(1000));
        assert_eq!(inv.nics[1].name, "eth1");
        assert!(!inv.nics[1].link);
        assert_eq!(inv.nics[1].speed_mbps, None);
        // What the control node receives parses back as the wire type.
        let json = serde_json::to_string(&inv).unwrap();
        assert_eq!(
            serde_json::from_str::<HardwareInventory>(&json).unwrap(),
            inv
        );
    }

    #[test]
    fn bios_without_efi_dir_and_missing_optional_parts() {
        let tmp = tempfile::tempdir().unwrap();
        put(tmp.path(), "proc/cpuinfo", b"processor : 0\n");
        put(tmp.path(), "proc/meminfo", b"MemTotal: 1024 kB\n");
        let inv = collect(tmp.path()).unwrap();
        assert_eq!(inv.boot_mode, BootMode::Bios);
        assert_eq!((inv.cpu_model.as_str(), inv.cpu_count), ("unknown", 1));
        assert!(inv.disks.is_empty() && inv.nics.is_empty());
        assert_eq!(inv.vendor, None);
    }

    #[test]
    fn missing_procfs_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let err = collect(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("proc/cpuinfo"), "{err}");
        put(tmp.path(), "proc/cpuinfo", b"processor : 0\n");
        put(tmp.path(), "proc/meminfo", b"MemFree: 1 kB\n");
        let err = collect(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("MemTotal"), "{err}");
    }

    #[test]
    fn collects_this_machine() {
        // The real procfs and sysfs parse (whatever this machine has).
        let inv = collect(Path::new("/")).unwrap();
        assert!(inv.cpu_count >= 1 && inv.memory_bytes > 0);
    }
}
