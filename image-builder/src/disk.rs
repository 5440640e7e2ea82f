//! `disk.raw` without loop devices or mounts: sfdisk GPT (BIOS boot, ESP with
//! LegacyBIOSBootable, root), `mkfs.ext4 -d` at the root offset, `mkfs.vfat --offset` + mtools
//! for the ESP, systemd-boot for UEFI and syslinux + gptmbr.bin for BIOS. Then `disk.qcow2`.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::artifact::{Digested, Segment};
use crate::build::StageError;
use crate::frames::{Chunking, FrameIndex, FrameWriter, Reuse};
use crate::keys::{StageKey, stage_key};
use crate::spec::DiskSpec;

const SECTOR: u64 = 512;
const MIB_SECTORS: u64 = 2048;
/// Sectors GPT keeps at the end of the disk for the backup table.
const GPT_TAIL: u64 = 34;
const GPTMBR: &str = "/usr/lib/SYSLINUX/gptmbr.bin";
const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// Partition layout in sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// BIOS boot partition start.
    pub bios_start: u64,
    /// ESP start.
    pub esp_start: u64,
    /// ESP size.
    pub esp_size: u64,
    /// Root start.
    pub root_start: u64,
    /// Root size.
    pub root_size: u64,
    /// Whole disk size in sectors.
    pub total: u64,
}

impl Layout {
    /// The layout for a disk spec: 1 MiB BIOS boot at 1 MiB, the ESP, then root to the
    /// last whole MiB before the backup GPT.
    pub fn new(spec: &DiskSpec) -> Layout {
        let total = spec.size_mib * MIB_SECTORS;
        let bios_start = MIB_SECTORS;
        let esp_start = bios_start + MIB_SECTORS;
        let esp_size = spec.esp_mib * MIB_SECTORS;
        let root_start = esp_start + esp_size;
        let root_size = (total - GPT_TAIL - root_start) / MIB_SECTORS * MIB_SECTORS;
        Layout {
            bios_start,
            esp_start,
            esp_size,
            root_start,
            root_size,
            total,
        }
    }
}

/// Stable partition and file system UUIDs, derived from the bootstrap key, the template's name
/// and its partition layout (not from what a template renders or customises, nor from the
/// output formats): the same inputs give the same kernel command line, and a rebuild after a
/// one-file change lays out the same ext4 metadata (its checksums and directory hashes are
/// seeded by these), so that the frames of `disk.raw.zst` that hold no changed file are reused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskIds {
    /// GPT disk GUID.
    pub disk: String,
    /// BIOS boot partition.
    pub bios: String,
    /// ESP.
    pub esp: String,
    /// Root partition (the kernel's `root=PARTUUID=`).
    pub root: String,
    /// Root ext4 file system UUID.
    pub root_fs: String,
}

fn uuid_from(key: &StageKey, what: &str) -> String {
    let h = crate::keys::sha256_hex(format!("{key}/{what}").as_bytes());
    let mut b: Vec<char> = h.chars().take(32).collect();
    b[12] = '4'; // version 4 layout
    b[16] = match b[16] {
        '0'..='3' => '8',
        '4'..='7' => '9',
        '8' | '9' | 'a' | 'b' => 'a',
        _ => 'b',
    };
    let s: String = b.into_iter().collect();
    format!(
        "{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

impl DiskIds {
    /// IDs for an image: its bootstrap key, template name and partition layout.
    pub fn for_image(bootstrap: &StageKey, name: &str, spec: &DiskSpec) -> DiskIds {
        let layout = (Layout::new(spec), spec.boot);
        DiskIds::new(&stage_key("disk-ids", Some(bootstrap), &(name, layout)))
    }

    /// IDs derived from a key.
    pub fn new(key: &StageKey) -> DiskIds {
        DiskIds {
            disk: uuid_from(key, "disk"),
            bios: uuid_from(key, "bios"),
            esp: uuid_from(key, "esp"),
            root: uuid_from(key, "root"),
            root_fs: uuid_from(key, "root-fs"),
        }
    }
}

/// The disk stage's own inputs.
#[derive(Debug, Serialize)]
pub(crate) struct DiskInputs<'a> {
    disk: &'a DiskSpec,
    ids: &'a DiskIds,
    loader: &'static str,
}

pub(crate) fn key(customise: &StageKey, spec: &DiskSpec, ids: &DiskIds) -> StageKey {
    stage_key(
        "disk",
        Some(customise),
        &DiskInputs {
            disk: spec,
            ids,
            loader: "systemd-boot+syslinux/2",
        },
    )
}

/// The `sfdisk` script for a layout.
pub fn sfdisk_script(l: &Layout, ids: &DiskIds) -> String {
    format!(
        "label: gpt\nlabel-id: {}\nfirst-lba: 2048\n\
         start={}, size={}, type=21686148-6449-6E6F-744E-656564454649, uuid={}, name=\"bios-boot\"\n\
         start={}, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={}, name=\"esp\", attrs=\"LegacyBIOSBootable\"\n\
         start={}, size={}, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid={}, name=\"root\"\n",
        ids.disk,
        l.bios_start,
        MIB_SECTORS,
        ids.bios,
        l.esp_start,
        l.esp_size,
        ids.esp,
        l.root_start,
        l.root_size,
        ids.root,
    )
}

/// The kernel command line of the image.
pub fn kernel_cmdline(ids: &DiskIds, extra: &str) -> String {
    let mut s = format!(
        "root=PARTUUID={} rw console=tty0 console=ttyS0,115200",
        ids.root
    );
    if !extra.is_empty() {
        s.push(' ');
        s.push_str(extra);
    }
    s
}

/// The kernel and initramfs found in a root tree's `/boot`.
#[derive(Debug, Clone)]
pub(crate) struct BootFiles {
    pub(crate) kernel: PathBuf,
    pub(crate) initrd: PathBuf,
}

pub(crate) fn find_boot_files(root: &Path) -> Result<BootFiles, StageError> {
    let boot = root.join("boot");
    let mut names: Vec<String> = std::fs::read_dir(&boot)
        .map_err(|err| StageError::Io {
            what: "list kernels",
            path: boot.clone(),
            err,
        })?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    let kernel =
        names
            .iter()
            .rfind(|n| n.starts_with("vmlinuz-"))
            .ok_or(StageError::Unsupported {
                what: "no /boot/vmlinuz-* in the image: set bootstrap.kernel",
            })?;
    let version = kernel.trim_start_matches("vmlinuz-");
    let initrd = boot.join(format!("initrd.img-{version}"));
    Ok(BootFiles {
        kernel: boot.join(kernel),
        initrd,
    })
}

fn mtools_target(img: &Path, offset: u64) -> String {
    format!("{}@@{}", img.display(), offset)
}

/// A command that writes to the ESP: mtools, mkfs.vfat and syslinux take every timestamp
/// from SOURCE_DATE_EPOCH, so that the same inputs give the same ESP bytes.
fn esp_cmd(program: &str, mtime: u64) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("SOURCE_DATE_EPOCH", mtime.to_string());
    cmd
}

fn mcopy_data(
    img: &Path,
    offset: u64,
    scratch: &Path,
    name: &str,
    data: &[u8],
    mtime: u64,
) -> Result<(), StageError> {
    let tmp = scratch.join(name.replace('/', "_"));
    std::fs::write(&tmp, data).map_err(|err| StageError::Io {
        what: "write ESP file",
        path: tmp.clone(),
        err,
    })?;
    mcopy(img, offset, &tmp, name, mtime)
}

fn mcopy(img: &Path, offset: u64, src: &Path, name: &str, mtime: u64) -> Result<(), StageError> {
    common::run_cmd(
        esp_cmd("mcopy", mtime)
            .arg("-o")
            .arg("-i")
            .arg(mtools_target(img, offset))
            .arg(src)
            .arg(format!("::{name}")),
    )?;
    Ok(())
}

/// Builds `img` from the tree at `root`.
pub(crate) fn build_raw(
    root: &Path,
    img: &Path,
    spec: &DiskSpec,
    ids: &DiskIds,
    scratch: &Path,
    mtime: u64,
) -> Result<(), StageError> {
    let l = Layout::new(spec);
    let boot = find_boot_files(root)?;
    let ioerr = |what: &'static str| {
        move |err| StageError::Io {
            what,
            path: img.to_owned(),
            err,
        }
    };
    {
        let f = std::fs::File::create(img).map_err(ioerr("create disk image"))?;
        f.set_len(l.total * SECTOR)
            .map_err(ioerr("size disk image"))?;
    }
    let script = scratch.join("sfdisk.script");
    std::fs::write(&script, sfdisk_script(&l, ids)).map_err(|err| StageError::Io {
        what: "write sfdisk script",
        path: script.clone(),
        err,
    })?;
    common::run_cmd(
        Command::new("sh")
            .arg("-c")
            .arg("sfdisk --quiet --no-reread --no-tell-kernel \"$1\" < \"$2\"")
            .arg("sfdisk")
            .arg(img)
            .arg(&script),
    )?;

    // Root file system straight from the tree: keeps hardlinks, setuid bits and capabilities.
    common::run_cmd(
        Command::new("mkfs.ext4")
            .env("E2FSPROGS_FAKE_TIME", mtime.to_string())
            .args(["-q", "-F", "-L", "root", "-U"])
            .arg(&ids.root_fs)
            .arg("-E")
            .arg(format!(
                "offset={},hash_seed={}",
                l.root_start * SECTOR,
                ids.root_fs
            ))
            .arg("-d")
            .arg(root)
            .arg(img)
            .arg(format!("{}k", l.root_size * SECTOR / 1024)),
    )?;

    // ESP.
    let esp_off = l.esp_start * SECTOR;
    let volid = &ids.esp[..8];
    common::run_cmd(
        esp_cmd("mkfs.vfat", mtime)
            .args([
                "--invariant",
                "-F",
                "32",
                "-s",
                "1",
                "-n",
                "ESP",
                "-i",
                volid,
            ])
            .arg("--offset")
            .arg(l.esp_start.to_string())
            .arg(img)
            .arg((l.esp_size * SECTOR / 1024).to_string()),
    )?;
    let target = mtools_target(img, esp_off);
    common::run_cmd(esp_cmd("mmd", mtime).arg("-i").arg(&target).args([
        "::/EFI",
        "::/EFI/BOOT",
        "::/loader",
        "::/loader/entries",
        "::/syslinux",
    ]))?;
    mcopy(img, esp_off, &boot.kernel, "/vmlinuz", mtime)?;
    mcopy(img, esp_off, &boot.initrd, "/initrd.img", mtime)?;
    let cmdline = kernel_cmdline(ids, &spec.kernel_args);
    if spec.boot.uefi() {
        mcopy(
            img,
            esp_off,
            Path::new(SYSTEMD_BOOT),
            "/EFI/BOOT/BOOTX64.EFI",
            mtime,
        )?;
        mcopy_data(
            img,
            esp_off,
            scratch,
            "/loader/loader.conf",
            b"default golden.conf\ntimeout 0\n",
            mtime,
        )?;
        mcopy_data(
            img,
            esp_off,
            scratch,
            "/loader/entries/golden.conf",
            format!("title Golden image\nlinux /vmlinuz\ninitrd /initrd.img\noptions {cmdline}\n")
                .as_bytes(),
            mtime,
        )?;
    }
    if spec.boot.bios() {
        mcopy_data(
            img,
            esp_off,
            scratch,
            "/syslinux/syslinux.cfg",
            format!("SERIAL 0 115200\nDEFAULT golden\nPROMPT 0\nTIMEOUT 0\nLABEL golden\n  KERNEL /vmlinuz\n  APPEND initrd=/initrd.img {cmdline}\n").as_bytes(),
            mtime,
        )?;
        common::run_cmd(
            esp_cmd("syslinux", mtime)
                .arg("--offset")
                .arg(esp_off.to_string())
                .args(["--install", "--directory", "/syslinux"])
                .arg(img),
        )?;
        let mbr = std::fs::read(GPTMBR).map_err(|err| StageError::Io {
            what: "read gptmbr.bin",
            path: PathBuf::from(GPTMBR),
            err,
        })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(img)
            .map_err(ioerr("open disk image"))?;
        f.seek(SeekFrom::Start(0))
            .map_err(ioerr("seek disk image"))?;
        f.write_all(&mbr[..mbr.len().min(440)])
            .map_err(ioerr("write boot code"))?;
        f.sync_all().map_err(ioerr("sync disk image"))?;
    }
    Ok(())
}

/// Converts the raw disk to qcow2.
pub(crate) fn build_qcow2(raw: &Path, qcow2: &Path, compress: bool) -> Result<(), StageError> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-f", "raw", "-O", "qcow2"]);
    if compress {
        cmd.arg("-c");
    }
    common::run_cmd(cmd.arg(raw).arg(qcow2))?;
    Ok(())
}

/// zstd level of `disk.raw.zst`: fast; most of a fresh disk is zeros, which cost nothing at any level.
pub(crate) const ZST_LEVEL: i32 = 3;
/// Chunks of `disk.raw`, one zstd frame each.
const ZST_CHUNKING: Chunking = Chunking::Fixed { size: 4 << 20 };

/// The `disk.raw.zst` stage key: the disk's key and the compression settings.
pub(crate) fn zst_key(disk: &StageKey) -> StageKey {
    stage_key(
        "disk_zst",
        Some(disk),
        &(ZST_LEVEL, ZST_CHUNKING, crate::frames::FORMAT),
    )
}

/// Writes `raw` to `zst` as one zstd frame (with content size and checksum) per 4 MiB chunk,
/// copying the frames `reuse` has, reading only the data segments of the sparse file; returns
/// the digest of what it wrote and the index of its frames.
pub(crate) fn build_raw_zst(
    raw: &Path,
    zst: &Path,
    reuse: Reuse,
) -> Result<(Digested, FrameIndex), StageError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |err| StageError::Io { what, path, err }
    };
    let file = std::fs::File::create(zst).map_err(io("create", zst))?;
    let buf = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut w = FrameWriter::new(buf, ZST_LEVEL, ZST_CHUNKING, reuse);
    crate::artifact::for_each_segment(raw, |seg| match seg {
        Segment::Data(b) => w.write_all(b),
        Segment::Hole(n) => w.write_zeros(n),
    })
    .map_err(io("compress", raw))?;
    let (mut buf, digest, index) = w.finish().map_err(io("compress into", zst))?;
    buf.flush().map_err(io("write", zst))?;
    buf.get_ref().sync_all().map_err(io("sync", zst))?;
    Ok((digest, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_script() {
        let spec = DiskSpec {
            size_mib: 1024,
            esp_mib: 64,
            boot: crate::BootMode::Both,
            qcow2_compress: false,
            zstd: true,
            kernel_args: String::new(),
        };
        let l = Layout::new(&spec);
        assert_eq!(l.root_start, 2048 * 66);
        assert_eq!(l.root_size, 2048 * (1024 - 66 - 1));
        let ids = DiskIds::new(&StageKey("k".into()));
        assert_eq!(ids, DiskIds::new(&StageKey("k".into())));
        assert_ne!(ids.root, ids.esp);
        let s = sfdisk_script(&l, &ids);
        expectorate::assert_contents("tests/output/sfdisk-1024m.txt", &s);
        assert!(s.contains("attrs=\"LegacyBIOSBootable\""), "{s}");
        assert!(kernel_cmdline(&ids, "quiet").starts_with(&format!("root=PARTUUID={} ", ids.root)));
    }
}
