//! After a verified write: the host's identity goes into the installed system.
//!
//! The kernel re-reads the partition table (`BLKRRPART`), the GPT partition named `root` (the
//! layout image-builder's `disk` stage writes: `bios-boot`, `esp`, `root`) is mounted as ext4,
//! and [`write_identity`] writes the hostname, a fresh machine-id, the enrolment file, the
//! enrolment unit (enabled) and a copy of this binary. Then it is unmounted and synced.
//!
//! The root partition is *not* grown here: the golden image's first-boot unit
//! (`image-builder-firstboot.service`, from image-builder's `firstboot.sh.hbs`) grows it to the
//! disk's size on the first boot of the installed system.

use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::enrol::{ENROL_FILE, EnrolFile, UNIT_NAME, UNIT_TEXT, WANTS_DIR};
use super::write::Target;

/// Where the imager mounts the installed system's root inside the ramdisk.
const MOUNT_POINT: &str = "/run/imager/root";
/// Where the imager's copy goes in the installed system (the enrolment unit runs it).
pub const INSTALLED_BINARY: &str = "usr/local/sbin/provisioner-imager";
/// GPT name of the root partition (image-builder's `disk` stage).
const ROOT_PART_NAME: &str = "root";
/// How long to wait for the kernel to create the partition's device node.
const NODE_WAIT: Duration = Duration::from_secs(10);

/// Errors writing the host identity.
#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    /// The disk's partition table could not be read.
    #[error("failed to read the partition table of `{disk}`")]
    ReadTable {
        /// The disk.
        disk: PathBuf,
        /// Cause.
        #[source]
        err: io::Error,
    },
    /// The disk has no GPT partition named `root`.
    #[error("no GPT partition named `{ROOT_PART_NAME}` on `{disk}`")]
    NoRoot {
        /// The disk.
        disk: PathBuf,
    },
    /// The partition's device node never appeared.
    #[error("partition {number} of `{disk}` has no device node")]
    NoNode {
        /// The disk.
        disk: PathBuf,
        /// Partition number.
        number: u32,
    },
    /// Mounting or unmounting the root file system failed.
    #[error("failed to {what} `{path}`")]
    Mount {
        /// `mount` or `unmount`.
        what: &'static str,
        /// The partition or mount point.
        path: PathBuf,
        /// Cause.
        #[source]
        err: nix::Error,
    },
    /// A file of the identity could not be written.
    #[error("failed to write `{path}` in the installed system")]
    Write {
        /// The path (inside the mounted root).
        path: PathBuf,
        /// Cause.
        #[source]
        err: io::Error,
    },
}

/// What makes an installed system this host.
#[derive(Clone)]
pub struct Identity {
    /// Hostname.
    pub hostname: String,
    /// Base URL of the control node, for enrolment.
    pub control_url: String,
    /// The one-time enrolment secret.
    pub enrol_secret: crate::secret::Secret,
    /// OpenSSH public keys for `root`.
    pub ssh_authorized_keys: Vec<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("hostname", &self.hostname)
            .field("control_url", &self.control_url)
            .field("enrol_secret", &self.enrol_secret)
            .field("ssh_authorized_keys", &self.ssh_authorized_keys)
            .finish()
    }
}

/// A fresh random machine-id: 32 lowercase hex digits.
pub(crate) fn new_machine_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("invariant: the OS random source is available");
    hex::encode(b)
}

fn write_file(root: &Path, rel: &str, data: &[u8], mode: u32) -> Result<(), FinalizeError> {
    let path = root.join(rel);
    let err = |err| FinalizeError::Write {
        path: path.clone(),
        err,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    common::write_atomic(&path, data, mode).map_err(err)?;
    // write_atomic's mode is subject to the umask; secrets and binaries need the exact bits.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(err)
}

/// Writes the identity into the installed system mounted at `root`: `/etc/hostname`, the
/// `127.0.1.1` line of `/etc/hosts`, a fresh `/etc/machine-id`, `/etc/provisioner/enrol.json`
/// (0600), the enrolment unit enabled for `multi-user.target`, and `imager` (this binary) as
/// `/usr/local/sbin/provisioner-imager`. Returns the machine-id.
pub fn write_identity(root: &Path, id: &Identity, imager: &Path) -> Result<String, FinalizeError> {
    write_file(
        root,
        "etc/hostname",
        format!("{}\n", id.hostname).as_bytes(),
        0o644,
    )?;
    let hosts_path = root.join("etc/hosts");
    let hosts = std::fs::read_to_string(&hosts_path).unwrap_or_default();
    let mut lines: Vec<&str> = hosts
        .lines()
        .filter(|l| !l.starts_with("127.0.1.1"))
        .collect();
    let own = format!("127.0.1.1\t{}", id.hostname);
    lines.insert(lines.len().min(1), &own);
    write_file(
        root,
        "etc/hosts",
        format!("{}\n", lines.join("\n")).as_bytes(),
        0o644,
    )?;

    write_network(root)?;
    write_authorized_keys(root, &id.ssh_authorized_keys)?;

    let machine_id = new_machine_id();
    write_file(
        root,
        "etc/machine-id",
        format!("{machine_id}\n").as_bytes(),
        0o444,
    )?;

    let enrol = EnrolFile {
        url: id.control_url.clone(),
        secret: id.enrol_secret.expose().to_owned(),
    };
    let json = serde_json::to_vec_pretty(&enrol).expect("invariant: the enrol file serializes");
    let dir = root.join("etc/provisioner");
    std::fs::create_dir_all(&dir).map_err(|err| FinalizeError::Write {
        path: dir.clone(),
        err,
    })?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(|err| {
        FinalizeError::Write {
            path: dir.clone(),
            err,
        }
    })?;
    write_file(root, ENROL_FILE, &json, 0o600)?;

    let unit_rel = format!("etc/systemd/system/{UNIT_NAME}");
    write_file(root, &unit_rel, UNIT_TEXT.as_bytes(), 0o644)?;
    let wants = root.join(WANTS_DIR);
    let link = wants.join(UNIT_NAME);
    let link_err = |err| FinalizeError::Write {
        path: link.clone(),
        err,
    };
    std::fs::create_dir_all(&wants).map_err(link_err)?;
    match std::fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(link_err(e)),
    }
    std::os::unix::fs::symlink(format!("/{unit_rel}"), &link).map_err(link_err)?;

    let bin = std::fs::read(imager).map_err(|err| FinalizeError::Write {
        path: imager.to_owned(),
        err,
    })?;
    write_file(root, INSTALLED_BINARY, &bin, 0o755)?;
    Ok(machine_id)
}

/// Adds `keys` to `root`'s `~/.ssh/authorized_keys` in the installed system (the image's own
/// keys stay; a key already there is not repeated), directory 0700, file 0600, owned by root.
fn write_authorized_keys(root: &Path, keys: &[String]) -> Result<(), FinalizeError> {
    if keys.is_empty() {
        return Ok(());
    }
    let rel = "root/.ssh/authorized_keys";
    let existing = std::fs::read_to_string(root.join(rel)).unwrap_or_default();
    let mut lines: Vec<&str> = existing.lines().filter(|l| !l.trim().is_empty()).collect();
    for key in keys {
        let key = key.trim();
        if !lines.contains(&key) {
            lines.push(key);
        }
    }
    write_file(
        root,
        rel,
        format!("{}\n", lines.join("\n")).as_bytes(),
        0o600,
    )?;
    let dir = root.join("root/.ssh");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|err| FinalizeError::Write { path: dir, err })
}

/// networkd configuration written into images that bring none of their own.
const DHCP_NETWORK: &str = "etc/systemd/network/80-provisioner-dhcp.network";
const DHCP_NETWORK_TEXT: &str = "# Written by the provisioner's imager: this image configured no network.\n\
[Match]\nType=ether\n\n[Network]\nDHCP=yes\n";

/// Whether the installed system configures its network itself (networkd, ifupdown, netplan).
fn has_network_config(root: &Path) -> bool {
    let any_file = |dir: &str, ext: &str| {
        std::fs::read_dir(root.join(dir)).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(ext))
        })
    };
    let ifupdown = std::fs::read_to_string(root.join("etc/network/interfaces")).is_ok_and(|t| {
        t.lines()
            .any(|l| l.trim_start().starts_with("iface") && !l.contains(" lo "))
    });
    any_file("etc/systemd/network", ".network") || any_file("etc/netplan", ".yaml") || ifupdown
}

/// An image without network configuration gets DHCP on every Ethernet NIC through
/// systemd-networkd (enabled), so the installed system can reach the control node to enrol.
/// An image that configures its network keeps its own.
fn write_network(root: &Path) -> Result<(), FinalizeError> {
    if has_network_config(root) {
        return Ok(());
    }
    let unit = ["usr/lib/systemd/system", "lib/systemd/system"]
        .iter()
        .map(|d| Path::new(d).join("systemd-networkd.service"))
        .find(|u| root.join(u).is_file());
    let Some(unit) = unit else {
        warn!("the image has no network configuration and no systemd-networkd: it may not enrol");
        return Ok(());
    };
    write_file(root, DHCP_NETWORK, DHCP_NETWORK_TEXT.as_bytes(), 0o644)?;
    let dir = unit
        .parent()
        .expect("invariant: the unit path has a directory");
    for (wants, name) in [
        ("multi-user.target.wants", "systemd-networkd.service"),
        ("sockets.target.wants", "systemd-networkd.socket"),
        (
            "network-online.target.wants",
            "systemd-networkd-wait-online.service",
        ),
    ] {
        if !root.join(dir).join(name).is_file() {
            continue;
        }
        let link = root.join("etc/systemd/system").join(wants).join(name);
        let err = |err| FinalizeError::Write {
            path: link.clone(),
            err,
        };
        std::fs::create_dir_all(link.parent().expect("invariant: a link has a directory"))
            .map_err(err)?;
        match std::os::unix::fs::symlink(Path::new("/").join(dir).join(name), &link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(e)),
        }
    }
    debug!("networkd DHCP configured for an image without network configuration");
    Ok(())
}

/// The number (1-based) of the GPT partition called `name`, from the start of a disk.
pub(crate) fn gpt_partition_number(
    disk: &mut impl ReadSeek,
    name: &str,
) -> io::Result<Option<u32>> {
    for sector in [512u64, 4096] {
        let mut hdr = [0u8; 92];
        disk.seek(SeekFrom::Start(sector))?;
        disk.read_exact(&mut hdr)?;
        if &hdr[..8] != b"EFI PART" {
            continue;
        }
        let u64_at = |o: usize| u64::from_le_bytes(hdr[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(hdr[o..o + 4].try_into().expect("4 bytes"));
        let (entries_lba, count, size) = (u64_at(72), u32_at(80), u32_at(84));
        if !(128..=4096).contains(&size) || count > 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "implausible GPT header",
            ));
        }
        let esize = usize::try_from(size).expect("invariant: at most 4096");
        let mut entry = vec![0u8; esize];
        disk.seek(SeekFrom::Start(entries_lba * sector))?;
        for i in 0..count {
            disk.read_exact(&mut entry)?;
            if entry[..16].iter().all(|&b| b == 0) {
                continue; // Unused entry.
            }
            let utf16: Vec<u16> = entry[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&c| c != 0)
                .collect();
            if String::from_utf16_lossy(&utf16) == name {
                return Ok(Some(i + 1));
            }
        }
        return Ok(None);
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "no GPT header"))
}

/// Read + Seek, for [`gpt_partition_number`].
pub(crate) trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// The device node of partition `number` of `disk` (`/dev/vda`): from sysfs, else by the
/// kernel's naming (`vda3`, `nvme0n1p3`).
fn partition_node(disk: &Path, number: u32) -> Option<PathBuf> {
    let name = disk.file_name()?.to_string_lossy().into_owned();
    let dev = disk.parent()?;
    let sys = Path::new("/sys/class/block").join(&name);
    if let Ok(rd) = std::fs::read_dir(&sys) {
        for e in rd.filter_map(Result::ok) {
            let p = std::fs::read_to_string(e.path().join("partition")).unwrap_or_default();
            if p.trim() == number.to_string() {
                return Some(dev.join(e.file_name()));
            }
        }
    }
    let sep = if name.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    Some(dev.join(format!("{name}{sep}{number}")))
}

/// Mounts the root partition of the freshly written `disk`, writes the identity and unmounts.
/// Needs a real block device and root: tests cover [`write_identity`] on a directory, and the
/// QEMU end-to-end test covers this.
pub(crate) fn finalize(
    target: &Target,
    disk: &Path,
    id: &Identity,
) -> Result<PathBuf, FinalizeError> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    if let Err(err) = target.reread_partitions() {
        // The kernel may still know the partitions (e.g. the same layout as before).
        warn!(disk = %disk.display(), error = %err, "BLKRRPART failed");
    }
    let table_err = |err| FinalizeError::ReadTable {
        disk: disk.to_owned(),
        err,
    };
    let mut f = std::fs::File::open(disk).map_err(table_err)?;
    let number = gpt_partition_number(&mut f, ROOT_PART_NAME)
        .map_err(table_err)?
        .ok_or_else(|| FinalizeError::NoRoot {
            disk: disk.to_owned(),
        })?;
    let deadline = Instant::now() + NODE_WAIT;
    let node = loop {
        match partition_node(disk, number) {
            Some(n) if n.exists() => break n,
            _ if Instant::now() >= deadline => {
                return Err(FinalizeError::NoNode {
                    disk: disk.to_owned(),
                    number,
                });
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let mnt = Path::new(MOUNT_POINT);
    std::fs::create_dir_all(mnt).map_err(|err| FinalizeError::Write {
        path: mnt.to_owned(),
        err,
    })?;
    mount(
        Some(&node),
        mnt,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|err| FinalizeError::Mount {
        what: "mount",
        path: node.clone(),
        err,
    })?;
    let me = std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| PathBuf::from("/bin/imager"));
    let written = write_identity(mnt, id, &me);
    let unmounted = umount2(mnt, MntFlags::empty()).map_err(|err| FinalizeError::Mount {
        what: "unmount",
        path: mnt.to_owned(),
        err,
    });
    nix::unistd::sync();
    let machine_id = written?;
    unmounted?;
    debug!(root = %node.display(), %machine_id, "identity written");
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_without_network_configuration_get_networkd_dhcp() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        let units = root.join("usr/lib/systemd/system");
        std::fs::create_dir_all(&units).expect("mkdir");
        for u in ["systemd-networkd.service", "systemd-networkd.socket"] {
            std::fs::write(units.join(u), "[Unit]\n").expect("write unit");
        }
        write_network(root).expect("network written");
        let net = std::fs::read_to_string(root.join(DHCP_NETWORK)).expect("network file");
        assert!(net.contains("DHCP=yes"), "{net}");
        let link = root.join("etc/systemd/system/multi-user.target.wants/systemd-networkd.service");
        assert_eq!(
            std::fs::read_link(&link).expect("enabled"),
            Path::new("/usr/lib/systemd/system/systemd-networkd.service")
        );
        assert!(
            root.join("etc/systemd/system/sockets.target.wants/systemd-networkd.socket")
                .exists()
        );
        // No wait-online unit in this image: no dangling link to it.
        assert!(
            !root
                .join("etc/systemd/system/network-online.target.wants")
                .exists()
        );
        write_network(root).expect("a second run is harmless");

        // An image with its own configuration keeps it, untouched.
        let own = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(own.path().join("etc/systemd/network")).expect("mkdir");
        std::fs::write(own.path().join("etc/systemd/network/10-lan.network"), "x").expect("write");
        write_network(own.path()).expect("nothing to do");
        assert!(!own.path().join(DHCP_NETWORK).exists());
    }

    #[test]
    fn identity_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/hosts"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tgolden\n::1\tlocalhost\n",
        )
        .unwrap();
        let bin = root.join("imager-src");
        std::fs::write(&bin, b"\x7fELF...").unwrap();
        let id = Identity {
            hostname: "node-sn1".into(),
            control_url: "http://10.0.0.1:8080".into(),
            enrol_secret: crate::secret::Secret::from_plaintext("e-secret"),
            ssh_authorized_keys: vec![
                "ssh-ed25519 AAAAnew op@x".into(),
                "ssh-ed25519 AAAAold image@x".into(),
            ],
        };
        std::fs::create_dir_all(root.join("root/.ssh")).unwrap();
        std::fs::write(
            root.join("root/.ssh/authorized_keys"),
            "ssh-ed25519 AAAAold image@x\n",
        )
        .unwrap();
        let mid = write_identity(root, &id, &bin).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(
            read("root/.ssh/authorized_keys"),
            "ssh-ed25519 AAAAold image@x\nssh-ed25519 AAAAnew op@x\n"
        );
        let mode = |p: &str| {
            std::fs::metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("root/.ssh/authorized_keys"), 0o600);
        assert_eq!(mode("root/.ssh"), 0o700);
        let mode = |p: &str| {
            std::fs::metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(read("etc/hostname"), "node-sn1\n");
        assert_eq!(
            read("etc/hosts"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tnode-sn1\n::1\tlocalhost\n"
        );
        assert_eq!(mid.len(), 32);
        assert!(
            mid.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(read("etc/machine-id"), format!("{mid}\n"));
        assert_ne!(mid, new_machine_id());
        let enrol: EnrolFile = serde_json::from_str(&read(ENROL_FILE)).unwrap();
        assert_eq!(
            (enrol.url.as_str(), enrol.secret.as_str()),
            ("http://10.0.0.1:8080", "e-secret")
        );
        assert_eq!(mode(ENROL_FILE), 0o600);
        assert_eq!(mode("etc/provisioner"), 0o700);
        assert_eq!(read(&format!("etc/systemd/system/{UNIT_NAME}")), UNIT_TEXT);
        let link = std::fs::read_link(root.join(WANTS_DIR).join(UNIT_NAME)).unwrap();
        assert_eq!(link, Path::new("/etc/systemd/system").join(UNIT_NAME));
        assert_eq!(
            std::fs::read(root.join(INSTALLED_BINARY)).unwrap(),
            b"\x7fELF..."
        );
        assert_eq!(mode(INSTALLED_BINARY), 0o755);
        assert!(UNIT_TEXT.contains("ExecStart=/usr/local/sbin/provisioner-imager enrol"));
        // Writing again (a retried finalize) replaces everything, including the link.
        write_identity(root, &id, &bin).unwrap();
    }

    #[test]
    fn finds_the_root_partition_in_image_builders_layout() {
        // The layout image-builder's disk stage writes, made by the real sfdisk.
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("disk.raw");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let script = "label: gpt\nfirst-lba: 2048\n\
            start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=\"bios-boot\"\n\
            start=4096, size=20480, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"esp\"\n\
            start=24576, size=65536, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"root\"\n";
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg("printf '%s' \"$1\" > \"$2.script\" && sfdisk --quiet \"$2\" < \"$2.script\"")
            .arg("sh")
            .arg(script)
            .arg(&img);
        common::run_cmd(&mut cmd).unwrap();
        let mut f = std::fs::File::open(&img).unwrap();
        assert_eq!(gpt_partition_number(&mut f, "root").unwrap(), Some(3));
        assert_eq!(gpt_partition_number(&mut f, "esp").unwrap(), Some(2));
        assert_eq!(gpt_partition_number(&mut f, "home").unwrap(), None);
        let blank = tmp.path().join("blank");
        std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
        let mut f = std::fs::File::open(&blank).unwrap();
        assert!(gpt_partition_number(&mut f, "root").is_err());
    }
}
