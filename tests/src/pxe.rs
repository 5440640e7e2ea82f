//! A rack segment served by `netsvc` alone: DHCP, TFTP and HTTP boot of a marker initramfs.

use std::path::Path;
use std::time::Duration;

use crate::{Daemon, Firmware, Qemu, QemuSpec, RackNet, marker_initramfs, test_kernel};

/// The appliance side of a network-boot run: a rack segment and `netsvc` in its namespace,
/// serving a kernel and an initramfs that prints [`PxeRack::marker`].
#[derive(Debug)]
pub struct PxeRack {
    /// The rack segment.
    pub rack: RackNet,
    /// The line the booted marker initramfs prints (empty with [`PxeRack::start_with`]).
    pub marker: String,
    netsvc: Daemon,
    _dir: tempfile::TempDir,
}

impl PxeRack {
    /// Creates the segment `10.{net[0]}.{net[1]}.0/24` and starts the `netsvc` binary at
    /// `netsvc_bin` in its namespace with a config file written here (DHCP pool .100–.150),
    /// serving the test kernel and a marker initramfs.
    pub fn start(netsvc_bin: &Path, net: [u8; 2]) -> anyhow::Result<Self> {
        let marker = format!("PXE-MARKER-{}-{}", net[0], net[1]);
        let dir = tempfile::tempdir()?;
        let initrd = dir.path().join("marker-initrd.img");
        marker_initramfs(&initrd, &marker)?;
        let mut me = Self::start_with(
            netsvc_bin,
            net,
            &test_kernel()?,
            &initrd,
            "console=ttyS0 quiet",
        )?;
        me.marker = marker;
        Ok(me)
    }

    /// Like [`PxeRack::start`], serving `kernel` and `initrd` booted with `cmdline` instead (the
    /// appliance address is `10.{net[0]}.{net[1]}.1`; the HTTP server listens on port 80).
    pub fn start_with(
        netsvc_bin: &Path,
        net: [u8; 2],
        kernel: &Path,
        initrd: &Path,
        cmdline: &str,
    ) -> anyhow::Result<Self> {
        let rack = RackNet::create(net)?;
        let marker = String::new();
        let dir = tempfile::tempdir()?;
        let boot = dir.path().join("boot");
        std::fs::create_dir_all(&boot)?;
        std::fs::copy(kernel, boot.join("vmlinuz"))?;
        std::fs::copy(initrd, boot.join("initrd.img"))?;
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
cmdline = "{cmdline}"
"#,
                state = dir.path().join("state").display(),
                boot = boot.display(),
                iface = rack.ns_iface,
            ),
        )?;
        let mut cmd = rack.in_ns(&netsvc_bin.to_string_lossy());
        cmd.arg("--config").arg(&config);
        let mut netsvc = Daemon::spawn(cmd)?;
        for proto in ["dhcp", "tftp", "http"] {
            netsvc.wait_for_lines(
                &["listening", &format!("\"proto\":\"{proto}\"")],
                1,
                Duration::from_secs(30),
            )?;
        }
        Ok(PxeRack {
            rack,
            marker,
            netsvc,
            _dir: dir,
        })
    }

    /// Powers on an empty QEMU server with `firmware` and `mac` on a new tap of the rack.
    pub fn power_on(&mut self, firmware: Firmware, mac: &str) -> anyhow::Result<Qemu> {
        let tap = self.rack.add_tap()?;
        let mut spec = QemuSpec::new(firmware);
        spec.nic = Some((tap, mac.to_owned()));
        spec.boot_network = true;
        Qemu::start(&spec)
    }

    /// The `netsvc` daemon.
    pub fn netsvc(&mut self) -> &mut Daemon {
        &mut self.netsvc
    }
}
