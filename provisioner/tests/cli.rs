//! Binary tests: spawn `provisioner serve` on 127.0.0.1:0, read its `listening` line, drive it
//! with the `provisioner` CLI (and the machine endpoints through the library client), kill it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use provisioner::api::{HardwareInventory, ImagingResult, MacAddr, ProgressReport};
use provisioner::client::Client;
use provisioner::secret::Secret;
use provisioner::store::{SecretKind, SqliteStore, Store};
use serde_json::Value;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_provisioner");

struct Daemon {
    child: Child,
    addr: String,
    /// Every `listening` line's (proto, addr), in order; the API's comes first.
    listening: Vec<(String, String)>,
    /// The admin token, if this start created it.
    new_token: Option<String>,
    /// Output lines (`true` for stdout) not yet read.
    rx: mpsc::Receiver<(bool, String)>,
    /// Every stderr (log) line read so far.
    log: Vec<String>,
    /// Every stdout line read so far.
    stdout: Vec<String>,
}

impl Daemon {
    /// Starts the daemon and waits for its `listening` line (and, with `expect_token`, for the
    /// admin token it prints at first start; stdout and stderr are separate pipes, so their
    /// lines may arrive in either order).
    fn start(state_dir: &Path, expect_token: bool) -> anyhow::Result<Daemon> {
        Daemon::start_with(state_dir, expect_token, &[], 1)
    }

    /// [`Daemon::start`] with more arguments, waiting for `servers` listening lines.
    fn start_with(
        state_dir: &Path,
        expect_token: bool,
        args: &[&str],
        servers: usize,
    ) -> anyhow::Result<Daemon> {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn provisioner serve")?;
        let (tx, rx) = mpsc::channel::<(bool, String)>();
        let stderr = child.stderr.take().context("stderr")?;
        let stdout = child.stdout.take().context("stdout")?;
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx2.send((false, line));
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send((true, line));
            }
        });
        let mut new_token = None;
        let mut listening = Vec::new();
        let mut log = Vec::new();
        let mut stdout = Vec::new();
        while listening.len() < servers || (expect_token && new_token.is_none()) {
            let (is_stdout, line) = rx
                .recv_timeout(Duration::from_secs(30))
                .with_context(|| format!("no listening/token line; log so far: {log:#?}"))?;
            if is_stdout {
                new_token = line.rsplit(' ').next().map(str::to_owned);
                stdout.push(line);
                continue;
            }
            log.push(line.clone());
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["message"] == "listening"
            {
                let proto = v["proto"].as_str().context("proto field")?.to_owned();
                let addr = v["addr"].as_str().context("addr field")?.to_owned();
                listening.push((proto, addr));
            }
        }
        assert_eq!(
            listening[0].0, "http",
            "the API listens first: {listening:?}"
        );
        Ok(Daemon {
            child,
            addr: listening[0].1.clone(),
            listening,
            new_token,
            rx,
            log,
            stdout,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every log line so far.
    fn drain_log(&mut self) -> Vec<String> {
        while let Ok((is_stdout, line)) = self.rx.try_recv() {
            if is_stdout {
                self.stdout.push(line);
            } else {
                self.log.push(line);
            }
        }
        self.log.clone()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the CLI; returns (exit code, stdout, stderr tail).
fn cli(url: &str, token_file: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--url")
        .arg(url)
        .arg("--token-file")
        .arg(token_file)
        .args(args);
    match common::run_cmd(&mut cmd) {
        Ok(out) => (0, out.stdout_lossy(), String::new()),
        Err(common::CommandError::Failed { status, stderr, .. }) => {
            (status.code().unwrap_or(-1), String::new(), stderr)
        }
        Err(e) => panic!("cannot run the CLI: {e}"),
    }
}

fn ok_json(url: &str, token_file: &Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let (code, out, err) = cli(url, token_file, &a);
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn make_image(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(format!("build-{name}"));
    std::fs::create_dir_all(&out).unwrap();
    let data = vec![7u8; 4096];
    std::fs::write(out.join("disk.raw"), &data).unwrap();
    let manifest = serde_json::json!({
        "name": name,
        "artifacts": [{"path": "disk.raw", "sha256": hex::encode(Sha256::digest(&data)), "size": data.len()}],
    });
    std::fs::write(out.join("manifest.json"), manifest.to_string()).unwrap();
    out
}

fn inventory(mac: MacAddr) -> HardwareInventory {
    serde_json::from_value(serde_json::json!({
        "cpu_model": "QEMU Virtual CPU", "cpu_count": 2, "memory_bytes": 2147483648u64,
        "disks": [{"name": "vda", "size_bytes": 10737418240u64, "rotational": false}],
        "nics": [{"name": "eth0", "mac": mac.to_string(), "link": true}],
        "vendor": "QEMU", "product": "Standard PC", "serial": "SN-7", "boot_mode": "bios",
    }))
    .unwrap()
}

/// Stands in for the PXE boot the lead's HTTP boot service will drive: registers the host in
/// the daemon's database and gives it an imager secret.
fn pxe_register(state_dir: &Path, mac: MacAddr) -> Secret {
    let store = SqliteStore::open(&state_dir.join("inventory.db")).unwrap();
    let (host, _) = store
        .upsert_host_by_mac(mac, provisioner::api::Timestamp::now())
        .unwrap();
    let secret = Secret::generate();
    store
        .set_secret(
            host.id,
            SecretKind::Imager,
            &secret.hash(),
            provisioner::api::Timestamp::now(),
        )
        .unwrap();
    secret
}

#[tokio::test]
async fn cli_drives_a_running_daemon_and_state_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let token_file = state.join("admin-token");
    let mut daemon = Daemon::start(&state, true).unwrap();
    let url = daemon.url();

    // The token was printed once and stored with mode 0600.
    let printed = daemon
        .new_token
        .clone()
        .expect("token printed at first start");
    let stored = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(stored.trim(), printed);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    assert_eq!(
        ok_json(&url, &token_file, &["hosts", "list"]),
        serde_json::json!([])
    );
    let (code, out, _) = cli(&url, &token_file, &["hosts", "list"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ID  MAC  HOSTNAME  STATE"), "{out}");

    // Exit codes: bad token 5, no token 78, unreachable 6, usage 2.
    let bad = tmp.path().join("bad-token");
    std::fs::write(&bad, "nope").unwrap();
    let (code, _, err) = cli(&url, &bad, &["hosts", "list"]);
    assert_eq!(code, 5, "{err}");
    let (code, _, _) = cli(&url, &tmp.path().join("missing"), &["hosts", "list"]);
    assert_eq!(code, 78);
    let (code, _, _) = cli("http://127.0.0.1:1", &token_file, &["hosts", "list"]);
    assert_eq!(code, 6);
    let (code, _, _) = cli(&url, &token_file, &["hosts", "deploy", "x"]);
    assert_eq!(code, 2);

    // Images and rules.
    let img = make_image(tmp.path(), "golden");
    let v = ok_json(
        &url,
        &token_file,
        &["images", "import", img.to_str().unwrap()],
    );
    assert_eq!(v["name"], "golden");
    let (code, _, err) = cli(
        &url,
        &token_file,
        &["images", "import", img.to_str().unwrap()],
    );
    assert_eq!(code, 4, "{err}");
    assert_eq!(
        ok_json(&url, &token_file, &["images", "list"])[0]["name"],
        "golden"
    );
    let rule = ok_json(
        &url,
        &token_file,
        &[
            "rules",
            "add",
            "--image",
            "golden",
            "--vendor",
            "qemu",
            "--min-memory",
            "1G",
        ],
    );
    assert_eq!(rule["match"]["min_memory_bytes"], 1u64 << 30);
    let (code, out, _) = cli(&url, &token_file, &["rules", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("vendor=qemu memory>=1.0 GiB  golden  node-{serial}  first"),
        "{out}"
    );

    // A host PXE-boots and its imager reports through the machine API.
    let mac = MacAddr([0x52, 0x54, 0, 0x64, 0, 1]);
    let secret = pxe_register(&state, mac);
    let imager = Client::new(&url, Some(secret.clone()));
    let h = imager.post_inventory(&inventory(mac)).await.unwrap();
    assert_eq!(h.hostname.as_deref(), Some("node-sn-7"));
    let report = ProgressReport {
        phase: provisioner::api::DeployPhase::Writing,
        progress: provisioner::api::Progress {
            done: 1024,
            total: 4096,
        },
    };
    imager.report_progress(&report).await.unwrap();

    let (code, out, _) = cli(&url, &token_file, &["hosts", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("node-sn-7") && out.contains("deploying  writing  25%"),
        "{out}"
    );
    let show = ok_json(&url, &token_file, &["hosts", "show", "node-sn-7"]);
    assert_eq!(show["inventory"]["serial"], "SN-7");
    let (code, out, _) = cli(&url, &token_file, &["hosts", "show", &mac.to_string()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("system:     QEMU Standard PC (serial SN-7)"),
        "{out}"
    );
    let (code, _, _) = cli(&url, &token_file, &["hosts", "show", "nope"]);
    assert_eq!(code, 3);
    let (code, _, err) = cli(&url, &token_file, &["hosts", "retry", "node-sn-7"]);
    assert_eq!(code, 4, "{err}");

    // `events --follow` streams: start it, make an event, see it arrive.
    let mut follow = Command::new(BIN)
        .arg("--url")
        .arg(&url)
        .arg("--token-file")
        .arg(&token_file)
        .args(["events", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let fail = ImagingResult::Failed {
        stage: provisioner::api::FailureStage::Write,
        reason: "disk vda went away".into(),
    };
    imager.report_result(&fail).await.unwrap();
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &Value| e["event"] == "imaging_failed") {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("followed event");
        seen.push(serde_json::from_str(&line).unwrap());
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(seen[0]["event"], "discovered");
    let (code, out, _) = cli(&url, &token_file, &["events"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("imaging_failed deploying -> failed (write disk vda went away)"),
        "{out}"
    );

    // Retry, then kill -9 mid-deploy and restart: nothing is lost.
    let v = ok_json(&url, &token_file, &["hosts", "retry", "node-sn-7"]);
    assert_eq!(v["state"]["phase"], "pending");
    imager.report_progress(&report).await.unwrap();
    let before = ok_json(&url, &token_file, &["hosts", "show", "node-sn-7"]);
    daemon.kill9();
    let first_log = daemon.drain_log();
    let mut daemon = Daemon::start(&state, false).unwrap();
    let url = daemon.url();
    let after = ok_json(&url, &token_file, &["hosts", "show", "node-sn-7"]);
    assert_eq!(before, after);
    // The imager carries on where it was.
    let imager = Client::new(&url, Some(secret.clone()));
    imager
        .report_result(&ImagingResult::Verified)
        .await
        .unwrap();
    let (code, _, _) = cli(&url, &token_file, &["hosts", "delete", "node-sn-7"]);
    assert_eq!(code, 0);
    assert_eq!(
        ok_json(&url, &token_file, &["hosts", "list"]),
        serde_json::json!([])
    );

    // SIGTERM: the daemon ends open event streams and exits 0; so does the follower.
    let mut follow = Command::new(BIN)
        .arg("--url")
        .arg(&url)
        .arg("--token-file")
        .arg(&token_file)
        .args(["events", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let follow_out = follow.stdout.take().unwrap();
    let (ftx, frx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(follow_out).lines().map_while(Result::ok) {
            let _ = ftx.send(line);
        }
    });
    // The backlog arrives first, so the stream is open before the signal.
    frx.recv_timeout(Duration::from_secs(10))
        .expect("backlog line");
    common::run_cmd(Command::new("kill").args(["-TERM", &daemon.child.id().to_string()])).unwrap();
    let status = common::wait_for(Duration::from_secs(15), || {
        let s = daemon.child.try_wait().unwrap();
        async move { s }
    })
    .await
    .expect("daemon exits after SIGTERM");
    assert!(status.success(), "{status}");
    let fstatus = common::wait_for(Duration::from_secs(10), || {
        let s = follow.try_wait().unwrap();
        async move { s }
    })
    .await
    .expect("follower ends with the server");
    assert!(fstatus.success(), "{fstatus}");

    // Secrets never reach the logs; the token was printed only at first start.
    let mut log = first_log;
    log.extend(daemon.drain_log());
    assert_eq!(
        daemon.stdout,
        Vec::<String>::new(),
        "the token is printed only once"
    );
    assert!(
        log.iter().any(|l| l.contains("host transition")),
        "{log:#?}"
    );
    for l in &log {
        assert!(!l.contains(&printed), "admin token in log: {l}");
        assert!(!l.contains(secret.expose()), "imager secret in log: {l}");
    }
}

/// The `provisioner.secret=` of an iPXE script's kernel line.
fn script_secret(script: &str) -> Secret {
    let s = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("provisioner.secret="))
        .unwrap_or_else(|| panic!("no secret in {script}"));
    assert_eq!(s.len(), 64, "{s}");
    Secret::from_plaintext(s)
}

async fn get_text(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn network_boot_scripts_follow_the_inventory() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let token_file = state.join("admin-token");
    let ramdisk = tmp.path().join("ramdisk");
    std::fs::create_dir_all(&ramdisk).unwrap();
    std::fs::write(ramdisk.join("vmlinuz"), "KERNEL").unwrap();
    std::fs::write(ramdisk.join("initrd.img"), "INITRD").unwrap();
    let netsvc = tmp.path().join("netsvc.toml");
    std::fs::write(
        &netsvc,
        format!(
            "state_dir = \"{0}/netsvc\"\nboot_dir = \"{0}/boot\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    let cfg = tmp.path().join("provisioner.toml");
    std::fs::write(
        &cfg,
        format!(
            "netsvc_config = \"{}\"\nramdisk_dir = \"{}\"\n",
            netsvc.display(),
            ramdisk.display()
        ),
    )
    .unwrap();
    let mut daemon =
        Daemon::start_with(&state, true, &["--config", cfg.to_str().unwrap()], 2).unwrap();
    let api = daemon.url();
    let boot = format!("http://{}", daemon.listening[1].1);
    let mac = MacAddr([0x52, 0x54, 0, 0x65, 0, 1]);
    let script_url = format!("{boot}/boot/{}.ipxe", mac.hyphenated());

    // An unknown MAC is discovered and gets the deploy ramdisk with a one-time imager secret.
    let (status, script) = get_text(&script_url).await;
    assert_eq!(status, 200, "{script}");
    assert!(
        script.contains(&format!(
            "kernel {boot}/ramdisk/vmlinuz initrd=initrd.img console=ttyS0 quiet panic=10 \
             provisioner.url={boot} provisioner.secret="
        )),
        "{script}"
    );
    assert!(script.contains(&format!(
        "initrd --name initrd.img {boot}/ramdisk/initrd.img"
    )));
    assert_eq!(
        get_text(&format!("{boot}/ramdisk/vmlinuz")).await,
        (200, "KERNEL".into())
    );
    let first = script_secret(&script);
    let hosts = ok_json(&api, &token_file, &["hosts", "list"]);
    assert_eq!(hosts[0]["state"]["state"], "discovered", "{hosts}");

    // Booting again replaces the secret: the first no longer authenticates.
    let (_, script) = get_text(&script_url).await;
    let secret = script_secret(&script);
    assert_ne!(first.expose(), secret.expose());
    let stale = Client::new(&boot, Some(first.clone()));
    let err = stale.machine_plan().await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401), "{err}");

    // The imager's whole protocol through the HTTP boot server, to `rebooting`: from then on
    // the host boots its own disk, also once deployed.
    let imager = Client::new(&boot, Some(secret.clone()));
    assert!(matches!(
        imager.machine_plan().await.unwrap(),
        provisioner::api::MachinePlan::Inventory
    ));
    let img = make_image(tmp.path(), "golden");
    ok_json(
        &api,
        &token_file,
        &["images", "import", img.to_str().unwrap()],
    );
    ok_json(&api, &token_file, &["rules", "add", "--image", "golden"]);
    imager.post_inventory(&inventory(mac)).await.unwrap();
    let provisioner::api::MachinePlan::Deploy(plan) = imager.machine_plan().await.unwrap() else {
        panic!("a matched host deploys");
    };
    let (status, body) = get_text(&format!("{boot}{}disk.raw", plan.artifact_base)).await;
    assert_eq!((status, body.len()), (200, 4096));
    let report = ProgressReport {
        phase: provisioner::api::DeployPhase::Writing,
        progress: provisioner::api::Progress {
            done: 4096,
            total: 4096,
        },
    };
    imager.report_progress(&report).await.unwrap();
    imager
        .report_result(&ImagingResult::Verified)
        .await
        .unwrap();
    imager.report_result(&ImagingResult::Done).await.unwrap();
    let (_, script) = get_text(&script_url).await;
    assert!(
        script.contains("sanboot --no-describe --drive 0x80"),
        "{script}"
    );
    let enrol = Client::new(&boot, Some(Secret::from_plaintext(&plan.enrol_secret)));
    enrol
        .enrol(&provisioner::api::EnrolRequest {
            hostname: "node-sn-7".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
        })
        .await
        .unwrap();
    let (_, script) = get_text(&script_url).await;
    assert!(script.contains("sanboot"), "{script}");
    let hosts = ok_json(&api, &token_file, &["hosts", "list"]);
    assert_eq!(hosts[0]["state"]["state"], "deployed", "{hosts}");

    // Secrets never reach the logs.
    let log = daemon.drain_log();
    assert!(
        log.iter().any(|l| l.contains("network boot: local disk")),
        "{log:#?}"
    );
    for l in &log {
        for s in [&first, &secret] {
            assert!(!l.contains(s.expose()), "imager secret in log: {l}");
        }
        assert!(!l.contains(&plan.enrol_secret), "enrol secret in log: {l}");
    }
}

#[test]
fn bad_config_exits_78_naming_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("p.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nstate_dri = \"/x\"\n").unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").arg("--config").arg(&cfg);
    match common::run_cmd(&mut cmd) {
        Err(common::CommandError::Failed { status, stderr, .. }) => {
            assert_eq!(status.code(), Some(78));
            assert!(
                stderr.contains("p.toml") && stderr.contains("state_dri"),
                "{stderr}"
            );
        }
        other => panic!("expected exit 78, got {other:?}"),
    }
}
