//! The virtual rack lab behind `provisioner lab up | status | down`: the appliance
//! (`provisioner serve`, network services embedded) in a namespace on a rack bridge, the golden
//! image and deploy ramdisk built (or reused from the cache), and N empty QEMU servers with
//! blank disks that network-boot and are imaged with no human step.
//!
//! `up` builds the images in the foreground, then starts a supervisor process (`provisioner lab
//! supervise`, in its own process group, logging to `<dir>/lab.log`) that owns the rack, the
//! appliance and the servers, writes `<dir>/lab.json` and holds everything until SIGTERM; `up`
//! then shows a live table until every server is deployed or failed and leaves the lab running.
//! `down` stops the supervisor, which removes everything it created. A supervisor that died
//! (kill -9, reboot) leaves names that the next `up` removes first (they carry its pid).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{ApplianceRack, Firmware, ImageBuilds, Qemu};

/// The lab's rack segment, `10.79.1.0/24`.
pub const LAB_NET: [u8; 2] = [79, 1];

/// Which firmware the servers boot with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabFirmware {
    /// Alternating: the first server BIOS, the second UEFI, and so on.
    Mixed,
    /// Every server BIOS (SeaBIOS + iPXE ROM).
    Bios,
    /// Every server UEFI (OVMF's own PXE → snponly.efi → iPXE).
    Uefi,
}

/// What `lab up` needs.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// The lab's directory (state, disks, consoles, log).
    pub dir: PathBuf,
    /// Where images are built and cached.
    pub images: PathBuf,
    /// Number of servers.
    pub servers: usize,
    /// Their firmware.
    pub firmware: LabFirmware,
    /// The `provisioner` binary (the appliance and the supervisor).
    pub provisioner: PathBuf,
    /// The `image-builder` binary.
    pub image_builder: PathBuf,
    /// The `imager` binary, put into the deploy ramdisk.
    pub imager: PathBuf,
    /// The repository's `templates/` folder.
    pub templates: PathBuf,
    /// How long `up` waits for every server to be deployed or failed.
    pub timeout: Duration,
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("lab.json")
}

fn read_state(dir: &Path) -> anyhow::Result<Option<Value>> {
    match std::fs::read_to_string(state_file(dir)) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
            format!("lab state {} is corrupt", state_file(dir).display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", state_file(dir).display())),
    }
}

/// Whether `pid` is alive and still a lab supervisor (not a reused pid).
fn pid_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
        args.windows(2)
            .any(|w| w[0] == b"lab" && w[1] == b"supervise")
    })
}

fn state_pid(state: &Value) -> Option<u32> {
    state["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

fn server_firmware(opts: &LabFirmware, i: usize) -> Firmware {
    match opts {
        LabFirmware::Bios => Firmware::Bios,
        LabFirmware::Uefi => Firmware::Uefi { ipxe_rom: false },
        LabFirmware::Mixed if i.is_multiple_of(2) => Firmware::Bios,
        LabFirmware::Mixed => Firmware::Uefi { ipxe_rom: false },
    }
}

fn server_mac(i: usize) -> String {
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        LAB_NET[0],
        LAB_NET[1],
        i + 1
    )
}

/// `lab up`: builds the images, starts the supervisor, shows the live table until every server
/// is deployed or failed. Returns the exit code: 0 when all deployed, 1 otherwise.
pub fn up(opts: &LabOptions) -> anyhow::Result<i32> {
    crate::require_root()?;
    anyhow::ensure!(
        (1..=40).contains(&opts.servers),
        "--servers must be 1 to 40"
    );
    if let Some(state) = read_state(&opts.dir)? {
        if let Some(pid) = state_pid(&state).filter(|p| pid_alive(*p)) {
            bail!(
                "a lab is already up (supervisor pid {pid}, {}): `provisioner lab down` first",
                opts.dir.display()
            );
        }
        eprintln!("lab: clearing the leftovers of a lab whose supervisor is gone");
    }
    // Leftovers of a crashed lab: its state, disks and consoles (its network names are removed
    // by the rack harness, which knows them by the dead pid they carry).
    for sub in ["run", "lab.json"] {
        let p = opts.dir.join(sub);
        let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
    }
    anyhow::ensure!(
        opts.templates.join("images/minimal").is_dir(),
        "no templates in {}: pass --templates (the repository's templates/ folder)",
        opts.templates.display()
    );
    std::fs::create_dir_all(opts.dir.join("run"))
        .with_context(|| format!("create {}", opts.dir.join("run").display()))?;
    let builds = ImageBuilds {
        image_builder: opts.image_builder.clone(),
        base: opts.images.clone(),
    };
    let started = Instant::now();
    eprintln!("lab: building (or reusing) the golden image `minimal` and the deploy ramdisk");
    let (golden, ramdisk) = builds.zero_touch(&opts.templates, &opts.imager)?;
    eprintln!("lab: images ready after {:.0?}", started.elapsed());

    let log = std::fs::File::create(opts.dir.join("lab.log"))?;
    let mut cmd = Command::new(&opts.provisioner);
    cmd.args(["lab", "supervise", "--dir"])
        .arg(&opts.dir)
        .arg("--servers")
        .arg(opts.servers.to_string())
        .arg("--firmware")
        .arg(match opts.firmware {
            LabFirmware::Mixed => "mixed",
            LabFirmware::Bios => "bios",
            LabFirmware::Uefi => "uefi",
        })
        .arg("--golden")
        .arg(&golden)
        .arg("--ramdisk")
        .arg(&ramdisk)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own process group: a Ctrl-C on `up` leaves the lab running.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("start the lab supervisor")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let state = loop {
        if let Some(state) = read_state(&opts.dir)? {
            break state;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the lab supervisor exited ({status}); its log:\n{}",
                log_tail(&opts.dir)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the lab did not come up in 120 s; its log:\n{}",
                log_tail(&opts.dir)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "lab: appliance up in namespace {} (API {}); servers powered on",
        state["ns"].as_str().unwrap_or("?"),
        state["api_url"].as_str().unwrap_or("?")
    );
    let tty = nix::unistd::isatty(std::io::stdout()).unwrap_or(false);
    let mut last = String::new();
    loop {
        let rows = rows(&state)?;
        let table = table(&rows);
        // On a terminal the table is redrawn as time passes; in a log, only when a server moves.
        let key = if tty {
            table.clone()
        } else {
            let mut moved = rows.clone();
            for r in &mut moved {
                r["elapsed_secs"] = Value::Null;
            }
            serde_json::to_string(&moved)?
        };
        if key != last {
            let mut out = std::io::stdout().lock();
            if tty {
                // Redraw in place: home, clear.
                write!(out, "\x1b[H\x1b[2J")?;
            }
            write!(out, "{table}")?;
            out.flush()?;
            last = key;
        }
        let finished = rows
            .iter()
            .all(|r| matches!(r["state"].as_str(), Some("deployed" | "failed")));
        if finished {
            let deployed = rows.iter().filter(|r| r["state"] == "deployed").count();
            println!(
                "lab: {deployed} of {} servers deployed; the lab keeps running \
                 (`provisioner lab status`, `provisioner lab down`)",
                rows.len()
            );
            return Ok(if deployed == rows.len() { 0 } else { 1 });
        }
        if !state_pid(&state).is_some_and(pid_alive) {
            bail!("the lab supervisor died; its log:\n{}", log_tail(&opts.dir));
        }
        if started.elapsed() >= opts.timeout {
            println!(
                "lab: not every server finished within {:?}; the lab keeps running \
                 (consoles in {})",
                opts.timeout,
                opts.dir.join("run").display()
            );
            return Ok(1);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn log_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("lab.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// One row per server: its lab facts joined with the control node's record of it.
fn rows(state: &Value) -> anyhow::Result<Vec<Value>> {
    let ns = state["ns"].as_str().context("lab state: ns")?;
    let out = common::run_cmd(
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(
                state["provisioner"]
                    .as_str()
                    .context("lab state: provisioner")?,
            )
            .arg("--url")
            .arg(state["api_url"].as_str().context("lab state: api_url")?)
            .arg("--token-file")
            .arg(
                state["token_file"]
                    .as_str()
                    .context("lab state: token_file")?,
            )
            .args(["hosts", "list", "--json"]),
    )
    .context("ask the appliance for its hosts")?;
    let hosts: Vec<Value> = serde_json::from_str(&out.stdout_lossy())?;
    let started = state["started_at"].as_u64().unwrap_or(0);
    let now = common::unix_now();
    let servers = state["servers"].as_array().context("lab state: servers")?;
    Ok(servers
        .iter()
        .map(|s| {
            let host = hosts.iter().find(|h| h["mac"] == s["mac"]);
            let st = host.map(|h| &h["state"]);
            let progress = st
                .and_then(|st| {
                    let done = st["progress"]["done"].as_u64()?;
                    let total = st["progress"]["total"].as_u64().filter(|t| *t > 0)?;
                    Some(format!("{}%", done * 100 / total))
                })
                .unwrap_or_default();
            json!({
                "server": s["name"],
                "firmware": s["firmware"],
                "mac": s["mac"],
                "host": host.map(|h| h["hostname"].clone()).unwrap_or(Value::Null),
                "state": st.map(|st| st["state"].clone()).unwrap_or_else(|| "powered-on".into()),
                "phase": st.map(|st| st["phase"].clone()).unwrap_or(Value::Null),
                "reason": st.map(|st| st["reason"].clone()).unwrap_or(Value::Null),
                "progress": progress,
                "elapsed_secs": now.saturating_sub(started),
                "console": s["console"],
                "disk": s["disk"],
            })
        })
        .collect())
}

fn table(rows: &[Value]) -> String {
    let cell = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut lines = vec![
        [
            "SERVER", "FIRMWARE", "MAC", "HOST", "STATE", "PHASE", "PROGRESS", "ELAPSED",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for r in rows {
        let mut state = cell(&r["state"]);
        if r["reason"].is_string() {
            state = format!("{state} ({})", cell(&r["reason"]));
        }
        lines.push(vec![
            cell(&r["server"]),
            cell(&r["firmware"]),
            cell(&r["mac"]),
            cell(&r["host"]),
            state,
            cell(&r["phase"]),
            cell(&r["progress"]),
            format!("{}s", r["elapsed_secs"].as_u64().unwrap_or(0)),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `lab status`: the table (or JSON) of a running lab. Exit code 0, or 3 when no lab is up.
pub fn status(dir: &Path, as_json: bool) -> anyhow::Result<i32> {
    let Some(state) = read_state(dir)? else {
        eprintln!("no lab is up in {}", dir.display());
        return Ok(3);
    };
    if !state_pid(&state).is_some_and(pid_alive) {
        eprintln!(
            "the lab in {} is not running (its supervisor is gone)",
            dir.display()
        );
        return Ok(3);
    }
    let rows = rows(&state)?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "ns": state["ns"], "api_url": state["api_url"],
                "token_file": state["token_file"], "servers": rows,
            }))?
        );
    } else {
        print!("{}", table(&rows));
    }
    Ok(0)
}

/// `lab down`: stops the supervisor (which removes the rack, the appliance and the servers)
/// and removes the lab's run state. Images stay cached in `<dir>/images`.
pub fn down(dir: &Path) -> anyhow::Result<i32> {
    let Some(state) = read_state(dir)? else {
        eprintln!("no lab is up in {}", dir.display());
        return Ok(0);
    };
    if let Some(pid) = state_pid(&state).filter(|p| pid_alive(*p)) {
        let raw = i32::try_from(pid).context("pid fits i32")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(raw),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while pid_alive(pid) {
            if Instant::now() >= deadline {
                bail!("the lab supervisor (pid {pid}) did not stop within 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let _ = std::fs::remove_file(state_file(dir));
    let _ = std::fs::remove_dir_all(dir.join("run"));
    eprintln!("lab: down; everything it created is removed");
    Ok(0)
}

/// What `lab supervise` is given by `up`.
#[derive(Debug, Clone)]
pub struct SuperviseOptions {
    /// The lab's directory.
    pub dir: PathBuf,
    /// Number of servers.
    pub servers: usize,
    /// Their firmware.
    pub firmware: LabFirmware,
    /// The golden image (an image-builder output directory).
    pub golden: PathBuf,
    /// The deploy ramdisk (an image-builder output directory).
    pub ramdisk: PathBuf,
    /// The `provisioner` binary.
    pub provisioner: PathBuf,
}

/// `lab supervise`: creates the rack, starts the appliance, imports the golden image, adds a
/// rule that deploys it to every server, powers the servers on, writes `lab.json`, and holds
/// it all until SIGTERM or SIGINT, then removes everything.
pub fn supervise(opts: &SuperviseOptions) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
    // Block the stop signals first, so they wait for `wait()` below instead of killing us
    // before the rack is removed.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&stop), None)?;

    let run = opts.dir.join("run");
    std::fs::create_dir_all(&run)?;
    let mut app = ApplianceRack::start(&opts.provisioner, LAB_NET, &opts.ramdisk)?;
    app.offer_image(&opts.golden, "minimal", true)?;
    let mut servers = Vec::new();
    let mut vms: Vec<Qemu> = Vec::new();
    for i in 0..opts.servers {
        let name = format!("server{}", i + 1);
        let firmware = server_firmware(&opts.firmware, i);
        let mac = server_mac(i);
        let disk = run.join(format!("{name}.qcow2"));
        crate::blank_disk(&disk, "4G")?;
        let console = run.join(format!("{name}.console"));
        vms.push(app.power_on_logged(firmware, &mac, &disk, Some(console.clone()))?);
        servers.push(json!({
            "name": name,
            "firmware": if firmware == Firmware::Bios { "bios" } else { "uefi" },
            "mac": mac,
            "disk": disk,
            "console": console,
        }));
    }
    let state = json!({
        "pid": std::process::id(),
        "ns": app.rack.ns,
        "api_url": app.api_url(),
        "token_file": app.token_file(),
        "state_dir": app.state_dir(),
        "provisioner": opts.provisioner,
        "started_at": common::unix_now(),
        "servers": servers,
    });
    common::write_atomic(
        &state_file(&opts.dir),
        serde_json::to_string_pretty(&state)?.as_bytes(),
        0o600,
    )?;
    eprintln!("lab: up; waiting for SIGTERM");
    let signal = stop.wait()?;
    eprintln!("lab: {signal:?}: removing the servers, the appliance and the rack");
    drop(vms);
    drop(app);
    Ok(())
}
