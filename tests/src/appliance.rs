//! The appliance on a rack segment: `provisioner serve` in the segment's namespace with the
//! rack network services embedded (DHCP, TFTP, HTTP boot, DNS), its REST API, and empty QEMU
//! servers that network-boot from it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::{Daemon, Firmware, Qemu, QemuSpec, RackNet};

/// Port of the REST API inside the namespace.
pub const API_PORT: u16 = 8080;

/// `provisioner serve` on its own rack segment `10.{net[0]}.{net[1]}.0/24` (the appliance is
/// `.1`, DHCP hands out `.100`–`.150`, the rack domain is `rack.test.`).
#[derive(Debug)]
pub struct ApplianceRack {
    /// The rack segment.
    pub rack: RackNet,
    bin: PathBuf,
    config: PathBuf,
    daemon: Option<Daemon>,
    dir: tempfile::TempDir,
}

impl ApplianceRack {
    /// Creates the segment and starts the `provisioner` binary at `bin` in its namespace,
    /// serving the deploy ramdisk in `ramdisk_dir` (`vmlinuz`, `initrd.img`).
    pub fn start(bin: &Path, net: [u8; 2], ramdisk_dir: &Path) -> anyhow::Result<Self> {
        let rack = RackNet::create(net)?;
        let dir = tempfile::tempdir()?;
        let [a, b] = net;
        let netsvc = dir.path().join("netsvc.toml");
        std::fs::write(
            &netsvc,
            format!(
                r#"state_dir = "{state}/netsvc"
boot_dir = "{state}/boot"
[dhcp]
interfaces = ["{iface}"]
[[dhcp.subnet]]
net = "10.{a}.{b}.0/24"
pools = ["10.{a}.{b}.100-10.{a}.{b}.150"]
[http]
[dns]
domain = "rack.test."
"#,
                state = dir.path().display(),
                iface = rack.ns_iface,
            ),
        )?;
        let config = dir.path().join("provisioner.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{addr}:{API_PORT}\"\nstate_dir = \"{state}/state\"\n\
                 netsvc_config = \"{netsvc}\"\nramdisk_dir = \"{ramdisk}\"\n",
                addr = rack.addr,
                state = dir.path().display(),
                netsvc = netsvc.display(),
                ramdisk = ramdisk_dir.display(),
            ),
        )?;
        let mut me = ApplianceRack {
            rack,
            bin: bin.to_owned(),
            config,
            daemon: None,
            dir,
        };
        me.start_daemon()?;
        Ok(me)
    }

    fn start_daemon(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.rack.in_ns(&self.bin.to_string_lossy());
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info");
        let mut daemon = Daemon::spawn(cmd)?;
        // The API, then netsvc's TFTP, HTTP, DNS and DHCP servers.
        daemon.wait_for_lines(
            &["listening", "\"proto\":\"http\""],
            2,
            Duration::from_secs(30),
        )?;
        daemon.wait_for_lines(
            &["listening", "\"proto\":\"dhcp\""],
            1,
            Duration::from_secs(30),
        )?;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// The API's base URL (reachable inside the namespace).
    pub fn api_url(&self) -> String {
        format!("http://{}:{API_PORT}", self.rack.addr)
    }

    /// The admin token file.
    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("state/admin-token")
    }

    /// The control node's state directory (inventory database, image store).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs the `provisioner` CLI against the API, inside the namespace; returns its stdout.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.cli_command(args);
        Ok(common::run_cmd(&mut cmd)
            .with_context(|| format!("provisioner {args:?}"))?
            .stdout_lossy())
    }

    /// Imports the image built in `dir` (its manifest names it `image`) and, with `rule`, adds a
    /// rule that deploys it to every host as `node-<mac>`.
    pub fn offer_image(&self, dir: &Path, image: &str, rule: bool) -> anyhow::Result<()> {
        self.cli(&["images", "import", &dir.to_string_lossy()])?;
        if rule {
            self.cli(&["rules", "add", "--image", image, "--hostname", "node-{mac}"])?;
        }
        Ok(())
    }

    /// The CLI command for `args`, to run it and look at the exit code.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.rack.in_ns(&self.bin.to_string_lossy());
        cmd.arg("--url")
            .arg(self.api_url())
            .arg("--token-file")
            .arg(self.token_file())
            .args(args);
        cmd
    }

    /// The running daemon.
    pub fn daemon(&mut self) -> &mut Daemon {
        self.daemon
            .as_mut()
            .expect("invariant: the daemon runs except inside restart")
    }

    /// Kills the daemon with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        // Dropping a Daemon kills it with SIGKILL and reaps it.
        self.daemon = None;
    }

    /// Starts the daemon again on the same state (after [`ApplianceRack::kill9`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.start_daemon()
    }

    /// Powers on an empty server with `firmware`, `mac` on a new tap and `disk` (a qcow2 file)
    /// on virtio-blk, network first; a guest reboot restarts it (as a real server's would).
    pub fn power_on(&mut self, firmware: Firmware, mac: &str, disk: &Path) -> anyhow::Result<Qemu> {
        self.power_on_logged(firmware, mac, disk, None)
    }

    /// [`ApplianceRack::power_on`] with the serial console written to `console_log`.
    pub fn power_on_logged(
        &mut self,
        firmware: Firmware,
        mac: &str,
        disk: &Path,
        console_log: Option<PathBuf>,
    ) -> anyhow::Result<Qemu> {
        let tap = self.rack.add_tap()?;
        let mut spec = QemuSpec::new(firmware);
        spec.nic = Some((tap, mac.to_owned()));
        spec.boot_network = true;
        spec.disk = Some(("qcow2".into(), disk.to_owned()));
        spec.memory_mib = 1536;
        spec.cpus = 2;
        spec.allow_reboot = true;
        spec.console_log = console_log;
        Qemu::start(&spec)
    }
}
