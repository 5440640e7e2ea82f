//! QEMU (TCG) machines watched over their serial console.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Firmware a machine boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with QEMU's iPXE option ROM on the NIC.
    Bios,
    /// OVMF. With `ipxe_rom: false` the NIC has no option ROM, so OVMF's own PXE client runs
    /// and the real NBP chain (`snponly.efi` → iPXE) is exercised.
    Uefi {
        /// Keep QEMU's iPXE option ROM on the NIC.
        ipxe_rom: bool,
    },
}

/// What to start.
#[derive(Debug, Clone)]
pub struct QemuSpec {
    /// Firmware.
    pub firmware: Firmware,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// A tap to attach a virtio NIC to, with this MAC.
    pub nic: Option<(String, String)>,
    /// Boot from the network first.
    pub boot_network: bool,
    /// A disk image (format, path) on virtio-blk.
    pub disk: Option<(String, PathBuf)>,
    /// Direct kernel boot: kernel, initrd, command line.
    pub kernel: Option<(PathBuf, PathBuf, String)>,
    /// Extra arguments appended as they are.
    pub extra: Vec<String>,
    /// Virtual CPUs; more than one runs TCG multi-threaded.
    pub cpus: u32,
    /// A guest reboot restarts the machine (instead of ending QEMU).
    pub allow_reboot: bool,
    /// Where the serial console goes (default: a file in the machine's temporary directory).
    pub console_log: Option<PathBuf>,
}

impl QemuSpec {
    /// A machine with 1 GiB, no NIC, no disk.
    pub fn new(firmware: Firmware) -> Self {
        QemuSpec {
            firmware,
            memory_mib: 1024,
            nic: None,
            boot_network: false,
            disk: None,
            kernel: None,
            extra: Vec::new(),
            cpus: 1,
            allow_reboot: false,
            console_log: None,
        }
    }
}

/// A running QEMU machine; killed in `Drop`.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    serial: PathBuf,
    started: Instant,
    _dir: tempfile::TempDir,
}

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

impl Qemu {
    /// Starts the machine. Its serial console goes to a file read by [`Qemu::wait_for_line`].
    pub fn start(spec: &QemuSpec) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let serial = spec
            .console_log
            .clone()
            .unwrap_or_else(|| dir.path().join("serial.log"));
        let mut cmd = Command::new("qemu-system-x86_64");
        let accel = if spec.cpus > 1 {
            "tcg,thread=multi"
        } else {
            "tcg"
        };
        cmd.args(["-accel", accel, "-machine", "q35", "-nodefaults"]);
        cmd.args(["-display", "none", "-smp", &spec.cpus.to_string()]);
        cmd.args(["-m", &spec.memory_mib.to_string()]);
        cmd.arg("-serial").arg(format!("file:{}", serial.display()));
        cmd.args(["-monitor", "none"]);
        if !spec.allow_reboot {
            cmd.arg("-no-reboot");
        }
        let mut romfile = None;
        if let Firmware::Uefi { ipxe_rom } = spec.firmware {
            let vars = dir.path().join("vars.fd");
            std::fs::copy(OVMF_VARS, &vars)
                .with_context(|| format!("copy {OVMF_VARS} (package ovmf)"))?;
            cmd.arg("-drive")
                .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"));
            cmd.arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()));
            if !ipxe_rom {
                romfile = Some("romfile=");
            }
        }
        if let Some((tap, mac)) = &spec.nic {
            cmd.arg("-netdev")
                .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"));
            let mut dev = format!("virtio-net-pci,netdev=n0,mac={mac}");
            if spec.boot_network {
                dev.push_str(",bootindex=1");
            }
            if let Some(r) = romfile {
                dev.push(',');
                dev.push_str(r);
            }
            cmd.arg("-device").arg(dev);
        }
        if let Some((format, path)) = &spec.disk {
            cmd.arg("-drive").arg(format!(
                "if=none,id=d0,format={format},file={}",
                path.display()
            ));
            let idx = if spec.boot_network { 2 } else { 1 };
            cmd.arg("-device")
                .arg(format!("virtio-blk-pci,drive=d0,bootindex={idx}"));
        }
        if let Some((kernel, initrd, append)) = &spec.kernel {
            cmd.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd);
            cmd.arg("-append").arg(append);
        }
        cmd.args(&spec.extra);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(
                dir.path().join("stderr.log"),
            )?));
        tracing::debug!(?cmd, "starting qemu");
        let child = cmd
            .spawn()
            .context("start qemu-system-x86_64 (package qemu-system-x86)")?;
        Ok(Qemu {
            child,
            serial,
            started: Instant::now(),
            _dir: dir,
        })
    }

    /// Everything the machine printed on its serial console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// The serial console log file.
    pub fn serial_path(&self) -> &Path {
        &self.serial
    }

    /// Waits until a console line contains `needle`; returns that line and the time since start.
    ///
    /// Fails with the console's tail when QEMU exits or `timeout` passes first.
    pub fn wait_for_line(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<(String, Duration)> {
        let deadline = Instant::now() + timeout;
        loop {
            let console = self.console();
            if let Some(line) = console.lines().find(|l| l.contains(needle)) {
                return Ok((line.to_owned(), self.started.elapsed()));
            }
            if let Some(status) = self.child.try_wait()? {
                let stderr = std::fs::read_to_string(self._dir.path().join("stderr.log"))
                    .unwrap_or_default();
                bail!(
                    "qemu exited ({status}) before printing {needle:?}\nstderr: {stderr}\nconsole tail:\n{}",
                    tail(&console)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "no {needle:?} on the console within {timeout:?}; console tail:\n{}",
                    tail(&console)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the machine to power off by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("qemu still running after {timeout:?}")
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates `path` as an empty qcow2 disk of `size` (`qemu-img` syntax, e.g. `4G`): a server's
/// blank disk.
pub fn blank_disk(path: &Path, size: &str) -> anyhow::Result<()> {
    common::run_cmd(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(path)
            .arg(size),
    )?;
    Ok(())
}
