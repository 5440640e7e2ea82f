//! `deploy-bench`: how long zero-touch imaging takes on the virtual rack, phase by phase, and
//! how fast the imager writes next to a plain `wget | dd` of the same image. A benchmark, not
//! a test: it asserts nothing beyond the runs completing, and prints figures.
//!
//! Run as root after a release build of the workspace (it finds `provisioner`, `imager` and
//! `image-builder` beside itself):
//!
//! ```text
//! cargo build --release --workspace
//! target/release/deploy-bench [--servers N] [--images DIR] [--templates DIR]
//! ```
//!
//! - `--servers N` (default 2): servers in the rack run, alternately BIOS and UEFI.
//! - `--images DIR` (default `/var/tmp/deploy-bench/images`): where the golden image `minimal`,
//!   the deploy ramdisk and the baseline ramdisk are built; the stage cache there makes later
//!   runs fast.
//! - `--templates DIR` (default: the repository's `templates/`).
//!
//! In one run it:
//! 1. deploys one BIOS server alone on rack A (`provisioner serve`, image imported, one rule)
//!    and times each phase from power-on to `deployed`: boot to ramdisk (→ `inventory_posted`
//!    in the event log), inventory → write start (first `IMAGER: writing` console line), write
//!    (→ `IMAGER: written`), verify (→ `IMAGER: verified`), finalize + reboot (→
//!    `IMAGE-BUILDER-FIRSTBOOT-DONE` of the installed OS), enrol (→ the `deployed` event);
//! 2. measures the baseline: on rack B (a second appliance, its own namespace and subnet, the
//!    same image imported, the same QEMU settings) a BIOS server boots a deploy ramdisk whose
//!    imager is `tests/data/baseline-imager.sh`: busybox `wget -O - URL | dd of=/dev/vda
//!    bs=1M` + `sync` of the raw `disk.raw` (the ramdisk has no curl or zstd), timed in the
//!    guest from /proc/uptime; its byte count is the Content-Length of a body wget completed;
//! 3. deploys N servers at once on rack A and times each phase per server, and the rack's
//!    wall time (first power-on → last `deployed`).
//!
//! Console marker times are taken by the harness (the console is polled every 100 ms); event
//! times come from the control node's event log (`provisioner events --json`). Throughput is
//! in MB/s (10^6 bytes) of image bytes (the size of `disk.raw` in the manifest), whichever
//! artifact the imager streamed (`disk.raw.zst` when the image has one, else `disk.raw`; the
//! output says which). Our write time is the imager's own (`IMAGER: written ... in X s`), our
//! verify time the harness's (written → verified). The last line is `SUMMARY deploy ...`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use rack_tests::{ApplianceRack, Firmware, ImageBuilds, Qemu, require_root, workspace_bin};
use serde_json::Value;

/// Rack A (our imager) and rack B (the baseline): their segments `10.86.{1,2}.0/24`.
const RACK_NET: [u8; 2] = [86, 1];
const BASELINE_NET: [u8; 2] = [86, 2];
/// The golden image (a template under `templates/images/`, and its name once imported).
const IMAGE: &str = "minimal";
/// How long one deploy (or the rack's) may take under TCG on a shared machine.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(1800);
/// The baseline's script, written into its ramdisk as the imager.
const BASELINE_SCRIPT: &str = include_str!("../../data/baseline-imager.sh");

const USAGE: &str = "usage: deploy-bench [--servers N] [--images DIR] [--templates DIR]";

/// Console markers of one deploy, in the order they appear.
const MARKERS: [&str; 5] = [
    "IMAGER: writing ",
    "IMAGER: written ",
    "IMAGER: verified ",
    "IMAGER: done, rebooting",
    "IMAGE-BUILDER-FIRSTBOOT-DONE",
];
const WRITE_START: usize = 0;
const WRITTEN: usize = 1;
const VERIFIED: usize = 2;
const FIRST_BOOT: usize = 4;

#[derive(Debug)]
struct Args {
    servers: usize,
    images: PathBuf,
    templates: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        servers: 2,
        images: PathBuf::from("/var/tmp/deploy-bench/images"),
        templates: Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--servers" => {
                args.servers = value("--servers")?
                    .parse()
                    .context("--servers is a number")?;
            }
            "--images" => args.images = value("--images")?.into(),
            "--templates" => args.templates = value("--templates")?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    ensure!(
        (1..=40).contains(&args.servers),
        "--servers must be 1 to 40"
    );
    Ok(args)
}

/// The three builds and what the bench needs to know about the golden image.
#[derive(Debug)]
struct Builds {
    golden: PathBuf,
    ramdisk: PathBuf,
    baseline_ramdisk: PathBuf,
    /// Size of `disk.raw` in the golden image's manifest.
    raw_bytes: u64,
    /// The golden image has `disk.raw.zst` (the imager streams it then).
    has_zst: bool,
}

fn build_images(args: &Args) -> Result<Builds> {
    let builds = ImageBuilds {
        image_builder: workspace_bin("image-builder")?,
        base: args.images.clone(),
    };
    let images = args.templates.join("images");
    let started = Instant::now();
    eprintln!(
        "bench: building (or reusing) the golden image, the deploy ramdisk and the baseline ramdisk"
    );
    let (golden, ramdisk) = builds.zero_touch(&args.templates, &workspace_bin("imager")?)?;
    // A stable path, so that the ramdisk's stage cache is reused by the next run.
    std::fs::create_dir_all(&args.images)?;
    let script = args.images.join("baseline-imager.sh");
    std::fs::write(&script, BASELINE_SCRIPT)
        .with_context(|| format!("write {}", script.display()))?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let baseline_ramdisk = builds.build(
        &images.join("deploy-ramdisk"),
        "baseline-ramdisk",
        &[format!("imager={}", script.display())],
    )?;
    eprintln!("bench: images ready after {:.0?}", started.elapsed());
    let manifest = golden.join("manifest.json");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(&manifest)
            .with_context(|| format!("read {}", manifest.display()))?,
    )
    .context("parse the golden image's manifest")?;
    let artifacts = manifest["artifacts"]
        .as_array()
        .context("manifest: artifacts")?;
    let raw_bytes = artifacts
        .iter()
        .find(|a| a["name"] == "disk.raw")
        .and_then(|a| a["size"].as_u64())
        .context("manifest: no disk.raw size")?;
    let has_zst = artifacts.iter().any(|a| a["name"] == "disk.raw.zst");
    Ok(Builds {
        golden,
        ramdisk,
        baseline_ramdisk,
        raw_bytes,
        has_zst,
    })
}

/// One server of a run.
#[derive(Debug, Clone)]
struct Server {
    name: String,
    firmware: Firmware,
    mac: String,
}

impl Server {
    fn firmware_name(&self) -> &'static str {
        match self.firmware {
            Firmware::Bios => "bios",
            Firmware::Uefi { .. } => "uefi",
        }
    }
}

/// What one deploy went through, in seconds since its power-on.
#[derive(Debug, Clone)]
struct Timeline {
    server: Server,
    inventory: f64,
    marks: [f64; MARKERS.len()],
    deployed: f64,
    /// Wall-clock `deployed`, ms since the epoch.
    deployed_ms: u64,
    /// The imager's own write time (`IMAGER: written ... in X s`).
    imager_write_secs: f64,
    /// The artifact it streamed (from `IMAGER: writing <artifact> N%`).
    artifact: String,
}

impl Timeline {
    /// The phases: name and duration in seconds.
    fn phases(&self) -> Vec<(&'static str, f64)> {
        let m = &self.marks;
        vec![
            ("boot to ramdisk (power-on → inventory)", self.inventory),
            ("inventory → write start", m[WRITE_START] - self.inventory),
            ("write", m[WRITTEN] - m[WRITE_START]),
            ("verify", m[VERIFIED] - m[WRITTEN]),
            (
                "finalize + reboot (verified → first boot)",
                m[FIRST_BOOT] - m[VERIFIED],
            ),
            (
                "enrol (first boot → deployed)",
                self.deployed - m[FIRST_BOOT],
            ),
            ("total (power-on → deployed)", self.deployed),
        ]
    }

    fn verify_secs(&self) -> f64 {
        self.marks[VERIFIED] - self.marks[WRITTEN]
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn blank_disk(dir: &Path, name: &str) -> Result<PathBuf> {
    let disk = dir.join(format!("{name}.qcow2"));
    common::run_cmd(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("4G"),
    )
    .with_context(|| format!("create disk {}", disk.display()))?;
    Ok(disk)
}

/// A powered-on server and the console markers seen so far.
#[derive(Debug)]
struct Running {
    server: Server,
    vm: Qemu,
    started: Instant,
    power_on_ms: u64,
    marks: [Option<f64>; MARKERS.len()],
}

/// The events of the control node's log, oldest first.
fn events(app: &ApplianceRack) -> Result<Vec<Value>> {
    let out = app.cli(&["events", "--json"])?;
    serde_json::from_str(&out).with_context(|| format!("parse `events --json`: {out}"))
}

/// Wall-clock time (ms) of the first event for `mac` that `pred` accepts.
fn event_at(events: &[Value], mac: &str, pred: impl Fn(&Value) -> bool) -> Option<u64> {
    events
        .iter()
        .find(|e| e["mac"].as_str() == Some(mac) && pred(e))
        .and_then(|e| e["at"].as_u64())
}

/// Powers on `servers` on `app` at once with blank disks and follows each to `deployed`.
/// Returns their timelines and the run's wall time (first power-on → last `deployed`).
fn deploy(app: &mut ApplianceRack, servers: &[Server], dir: &Path) -> Result<(Vec<Timeline>, f64)> {
    let mut running = Vec::new();
    for s in servers {
        let disk = blank_disk(dir, &s.name)?;
        let console = dir.join(format!("{}.console", s.name));
        let power_on_ms = unix_ms();
        let vm = app.power_on_logged(s.firmware, &s.mac, &disk, Some(console))?;
        running.push(Running {
            server: s.clone(),
            vm,
            started: Instant::now(),
            power_on_ms,
            marks: [None; MARKERS.len()],
        });
        eprintln!(
            "bench: powered on {} ({}, {})",
            s.name,
            s.firmware_name(),
            s.mac
        );
    }
    let first_power_on = running
        .iter()
        .map(|r| r.power_on_ms)
        .min()
        .context("no servers")?;
    let deadline = Instant::now() + DEPLOY_TIMEOUT;
    let mut consoles = vec![String::new(); running.len()];
    // The harness's marker times: every console polled every 100 ms.
    loop {
        let mut all = true;
        for (r, text) in running.iter_mut().zip(&mut consoles) {
            if r.marks.iter().all(Option::is_some) {
                continue;
            }
            all = false;
            *text = r.vm.console();
            let now = r.started.elapsed().as_secs_f64();
            for (mark, needle) in r.marks.iter_mut().zip(MARKERS) {
                if mark.is_none() && text.contains(needle) {
                    *mark = Some(now);
                    eprintln!("bench: {} {needle:?} after {now:.1} s", r.server.name);
                }
            }
            if let Some(line) = text.lines().find(|l| l.contains("IMAGER: failed")) {
                bail!("{}: {line}\nconsole:\n{text}", r.server.name);
            }
        }
        if all {
            break;
        }
        if Instant::now() >= deadline {
            bail!("not every server reached first boot within {DEPLOY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // `deployed` follows the enrol handshake of the first boot.
    let deadline = Instant::now() + Duration::from_secs(300);
    let log = loop {
        let log = events(app)?;
        let done = running
            .iter()
            .all(|r| event_at(&log, &r.server.mac, |e| e["to"] == "deployed").is_some());
        if done {
            break log;
        }
        if Instant::now() >= deadline {
            bail!("not every server deployed within 300 s of its first boot");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut timelines = Vec::new();
    for (r, text) in running.iter().zip(&consoles) {
        let mac = &r.server.mac;
        let since = |at: u64| Duration::from_millis(at.saturating_sub(r.power_on_ms)).as_secs_f64();
        let inventory = event_at(&log, mac, |e| e["event"] == "inventory_posted")
            .with_context(|| format!("{mac}: no inventory_posted event"))?;
        let deployed_ms =
            event_at(&log, mac, |e| e["to"] == "deployed").expect("invariant: waited for above");
        let write_line = text
            .lines()
            .find(|l| l.contains(MARKERS[WRITE_START]))
            .unwrap_or_default();
        let artifact = write_line
            .split(MARKERS[WRITE_START])
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("?")
            .to_owned();
        let imager_write_secs = text
            .lines()
            .find(|l| l.contains(MARKERS[WRITTEN]))
            .and_then(|l| l.rsplit(" in ").next())
            .and_then(|t| t.trim().trim_end_matches('s').trim().parse().ok())
            .with_context(|| format!("{mac}: no write time in the `written` line"))?;
        timelines.push(Timeline {
            server: r.server.clone(),
            inventory: since(inventory),
            marks: r.marks.map(|m| m.expect("invariant: every mark was seen")),
            deployed: since(deployed_ms),
            deployed_ms,
            imager_write_secs,
            artifact,
        });
    }
    let last = timelines
        .iter()
        .map(|t| t.deployed_ms)
        .max()
        .context("no servers")?;
    let wall = Duration::from_millis(last.saturating_sub(first_power_on)).as_secs_f64();
    Ok((timelines, wall))
}

/// The baseline's result: bytes written and in-guest seconds.
#[derive(Debug)]
struct Baseline {
    bytes: u64,
    secs: f64,
}

fn baseline(app: &mut ApplianceRack, dir: &Path) -> Result<Baseline> {
    let server = Server {
        name: "baseline".into(),
        firmware: Firmware::Bios,
        mac: format!(
            "52:54:00:{:02x}:{:02x}:01",
            BASELINE_NET[0], BASELINE_NET[1]
        ),
    };
    let disk = blank_disk(dir, &server.name)?;
    let console = dir.join("baseline.console");
    let mut vm = app.power_on_logged(server.firmware, &server.mac, &disk, Some(console))?;
    eprintln!("bench: powered on the baseline server ({})", server.mac);
    let (line, _) = vm.wait_for_line("BASELINE: wrote ", DEPLOY_TIMEOUT)?;
    let _ = vm.wait_exit(Duration::from_secs(60));
    let console = vm.console();
    let report: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("BASELINE:"))
        .collect();
    eprintln!("bench: baseline console:\n{}", report.join("\n"));
    let rest = line
        .split("BASELINE: wrote ")
        .nth(1)
        .context("baseline line")?;
    let mut words = rest.split_whitespace();
    let bytes: u64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("baseline bytes in {line:?}"))?;
    let secs: f64 = words
        .nth(2)
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("baseline seconds in {line:?}"))?;
    Ok(Baseline { bytes, secs })
}

/// An appliance with the golden image imported (and, for rack A, a rule deploying it).
fn appliance(net: [u8; 2], ramdisk: &Path, golden: &Path, rule: bool) -> Result<ApplianceRack> {
    let app = ApplianceRack::start(&workspace_bin("provisioner")?, net, ramdisk)?;
    app.offer_image(golden, IMAGE, rule)?;
    Ok(app)
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    // Exact below 2^53 bytes.
    bytes as f64 / 1e6 / secs
}

/// The phase table: one column per timeline.
fn phase_table(title: &str, timelines: &[Timeline]) -> String {
    let mut out = format!("{title}\n");
    let names: Vec<&str> = timelines[0].phases().iter().map(|(n, _)| *n).collect();
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    let _ = write!(out, "  {:<width$}", "phase");
    for t in timelines {
        let _ = write!(
            out,
            "  {:>16}",
            format!("{} ({})", t.server.name, t.server.firmware_name())
        );
    }
    out.push('\n');
    for (i, name) in names.iter().enumerate() {
        let pad = width - name.chars().count();
        let _ = write!(out, "  {name}{:pad$}", "");
        for t in timelines {
            let _ = write!(out, "  {:>14.1} s", t.phases()[i].1);
        }
        out.push('\n');
    }
    out
}

fn main() -> Result<()> {
    common::init_tracing();
    let args = parse_args()?;
    require_root()?;
    let work = tempfile::Builder::new().prefix("deploy-bench-").tempdir()?;
    let b = build_images(&args)?;

    let mut ours = appliance(RACK_NET, &b.ramdisk, &b.golden, true)?;
    let mut base = appliance(BASELINE_NET, &b.baseline_ramdisk, &b.golden, false)?;
    let mac = |i: usize| format!("52:54:00:{:02x}:{:02x}:{:02x}", RACK_NET[0], RACK_NET[1], i);

    // 1. One server alone.
    let single = [Server {
        name: "single".into(),
        firmware: Firmware::Bios,
        mac: mac(1),
    }];
    let started = Instant::now();
    let (single, _) = deploy(&mut ours, &single, work.path()).context("the single deploy")?;
    let single = single.into_iter().next().context("the single timeline")?;
    eprintln!(
        "bench: single server deployed after {:.0?}",
        started.elapsed()
    );

    // 2. The baseline, alone too.
    // A failed baseline is reported, and the rack run still measured.
    let bl = baseline(&mut base, work.path())
        .context("the baseline")
        .and_then(|bl| {
            ensure!(
                bl.bytes == b.raw_bytes,
                "the baseline wrote {} bytes, disk.raw has {}",
                bl.bytes,
                b.raw_bytes
            );
            Ok(bl)
        });
    drop(base);
    if let Err(e) = &bl {
        eprintln!("bench: baseline failed: {e:#}");
    }

    // 3. The rack at once.
    let rack: Vec<Server> = (0..args.servers)
        .map(|i| Server {
            name: format!("server{}", i + 1),
            firmware: if i % 2 == 0 {
                Firmware::Bios
            } else {
                Firmware::Uefi { ipxe_rom: false }
            },
            mac: mac(i + 2),
        })
        .collect();
    let (rack, wall) = deploy(&mut ours, &rack, work.path()).context("the rack deploy")?;

    // The report.
    let write_mbps = mbps(b.raw_bytes, single.imager_write_secs);
    let wv_secs = single.imager_write_secs + single.verify_secs();
    let wv_mbps = mbps(b.raw_bytes, wv_secs);
    let (base_mbps, ratio, base_note) = match &bl {
        Ok(bl) => {
            let m = mbps(bl.bytes, bl.secs);
            (
                m,
                wv_mbps / m,
                format!(
                    "busybox wget | dd bs=1M + sync of the raw disk.raw, {:.1} s in the guest; \
                     no curl/zstd in the ramdisk",
                    bl.secs
                ),
            )
        }
        Err(e) => (f64::NAN, f64::NAN, format!("FAILED: {e:#}")),
    };
    let artifact = &single.artifact;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "deploy-bench: image `{IMAGE}`, disk.raw {:.1} MB (manifest){}; the imager streamed {artifact}",
        b.raw_bytes as f64 / 1e6,
        if b.has_zst {
            ", disk.raw.zst present"
        } else {
            ", no disk.raw.zst"
        },
    );
    out.push_str(&phase_table(
        "\none server alone:",
        std::slice::from_ref(&single),
    ));
    out.push_str(&phase_table(
        &format!("\nthe rack at once ({} servers):", rack.len()),
        &rack,
    ));
    let _ = writeln!(
        out,
        "  rack wall time (first power-on → last deployed): {wall:.1} s"
    );
    let _ = writeln!(
        out,
        "\nwrite throughput (MB = 10^6 bytes of disk.raw, one server alone on each rack):"
    );
    let _ = writeln!(
        out,
        "  ours, write           {write_mbps:>7.1} MB/s  ({artifact}, imager's own {:.1} s)",
        single.imager_write_secs
    );
    let _ = writeln!(
        out,
        "  ours, write + verify  {wv_mbps:>7.1} MB/s  (+ read-back verify {:.1} s)",
        single.verify_secs()
    );
    let _ = writeln!(
        out,
        "  baseline, write       {base_mbps:>7.1} MB/s  ({base_note})"
    );
    let _ = writeln!(
        out,
        "  ratio ours(write+verify) / baseline(write): {ratio:.2} (target ≥ 0.9)"
    );
    let totals: Vec<String> = rack
        .iter()
        .map(|t| format!("{}={:.1}", t.server.name, t.deployed))
        .collect();
    let _ = writeln!(
        out,
        "SUMMARY deploy single_total_s={:.1} rack_servers={} rack_wall_s={wall:.1} rack_totals_s={} \
         write_mbps={write_mbps:.1} write_verify_mbps={wv_mbps:.1} baseline_write_mbps={base_mbps:.1} \
         ratio={ratio:.2} artifact={artifact} baseline_artifact=disk.raw",
        single.deployed,
        rack.len(),
        totals.join(","),
    );
    print!("{out}");
    drop(ours);
    Ok(())
}
