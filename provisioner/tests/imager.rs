//! Component tests of the imager against the real control node: its HTTP server on
//! 127.0.0.1:0 over a real SQLite file and image store. A regular file stands in for the
//! target disk (the imager's real write path; only the zeroing call differs from a block
//! device). Mounting the root partition needs a VM: the QEMU end-to-end test covers it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use futures::StreamExt;
use provisioner::api::{
    DeployInstructions, HardwareInventory, HostState, ImageName, ImportImageRequest, MacAddr,
    MachinePlan, NewRule, StateName,
};
use provisioner::client::Client;
use provisioner::control::{BootDirective, Control};
use provisioner::imager::{self, Console, DeployError, Identity, VerifyError};
use provisioner::images::ImageStore;
use provisioner::secret::Secret;
use provisioner::server::{Config, Deps, Server, ServerHandle};
use provisioner::store::SqliteStore;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0xbb, 0, 1]);
const MIB: usize = 1 << 20;

/// A golden image: a boot area of data, a sparse middle with a few data islands, zeros at the
/// end, as image-builder's raw disks look. 8 MiB plus an odd tail.
fn golden() -> Vec<u8> {
    let mut img = vec![0u8; 8 * MIB + 4096 + 512];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut fill = |r: std::ops::Range<usize>, img: &mut Vec<u8>| {
        for b in &mut img[r] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x.to_le_bytes()[3] | 1;
        }
    };
    fill(0..MIB + 333, &mut img);
    fill(3 * MIB..3 * MIB + 70_000, &mut img);
    fill(5 * MIB - 5..5 * MIB + 5, &mut img);
    fill(6 * MIB + 1..7 * MIB, &mut img);
    img
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Writes an image-builder output directory with `disk.raw` (and `disk.raw.zst`).
fn image_dir(dir: &Path, name: &str, img: &[u8], with_zst: bool) -> PathBuf {
    let out = dir.join(format!("build-{name}"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("disk.raw"), img).unwrap();
    let mut artifacts =
        vec![serde_json::json!({"name": "disk.raw", "sha256": sha(img), "size": img.len()})];
    if with_zst {
        let z = zstd::encode_all(img, 3).unwrap();
        std::fs::write(out.join("disk.raw.zst"), &z).unwrap();
        artifacts
            .push(serde_json::json!({"name": "disk.raw.zst", "sha256": sha(&z), "size": z.len()}));
    }
    let m = serde_json::json!({"template": name, "version": "1", "kind": "disk", "artifacts": artifacts});
    std::fs::write(out.join("manifest.json"), m.to_string()).unwrap();
    out
}

fn inventory() -> HardwareInventory {
    serde_json::from_value(serde_json::json!({
        "cpu_model": "QEMU Virtual CPU", "cpu_count": 2, "memory_bytes": 2147483648u64,
        "disks": [{"name": "vda", "size_bytes": 10737418240u64, "rotational": false}],
        "nics": [{"name": "eth0", "mac": MAC.to_string(), "link": true}],
        "vendor": "QEMU", "product": "Standard PC", "serial": "SN1", "boot_mode": "bios",
    }))
    .unwrap()
}

/// The control node, in-process, with one imported image and a rule that deploys it.
/// The operator's key every deployed host gets for root.
const OPERATOR_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorTestKey operator@rack";

struct Rack {
    dir: tempfile::TempDir,
    control: Control<SqliteStore>,
    server: ServerHandle,
    admin: Secret,
}

impl Rack {
    async fn start(img: &[u8], with_zst: bool) -> Rack {
        let rack = Rack::without_rules(img, with_zst).await;
        let rule: NewRule = serde_json::from_value(serde_json::json!(
            {"match": {"vendor": "qemu"}, "image": "golden", "hostname": "node-{serial}"}
        ))
        .unwrap();
        rack.control.add_rule(rule).await.unwrap();
        rack
    }

    /// The control node with the image imported but no deployment rule: nothing gets deployed
    /// without an operator.
    async fn without_rules(img: &[u8], with_zst: bool) -> Rack {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("inventory.db")).unwrap();
        let control = Control::with_ssh_keys(
            store,
            ImageStore::new(dir.path().join("images")),
            vec![OPERATOR_KEY.to_owned()],
        );
        let admin = Secret::generate();
        let server = Server::start(
            Config {
                listen: "127.0.0.1:0".parse().unwrap(),
            },
            Deps {
                control: control.clone(),
                admin: admin.hash(),
            },
        )
        .await
        .unwrap();
        let src = image_dir(dir.path(), "golden", img, with_zst);
        control
            .import_image(ImportImageRequest {
                dir: src.to_str().unwrap().to_owned(),
                name: None,
            })
            .await
            .unwrap();
        Rack {
            dir,
            control,
            server,
            admin,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.server.local_addr())
    }

    /// The served copy of an artifact.
    fn served(&self, file: &str) -> PathBuf {
        let name: ImageName = "golden".parse().unwrap();
        self.control.images_store().image_dir(&name).join(file)
    }

    /// PXE-boots the host and returns its imager secret.
    async fn pxe(&self) -> Secret {
        match self.control.pxe_boot(MAC).await.unwrap() {
            BootDirective::Ramdisk { imager_secret, .. } => imager_secret,
            other => panic!("expected the deploy ramdisk, got {other:?}"),
        }
    }

    async fn state(&self) -> HostState {
        self.control
            .host(&MAC.to_string())
            .await
            .unwrap()
            .host
            .state
    }

    /// What the imager's loop does up to the deploy plan: inventory, then plan.
    async fn to_deploy(&self, client: &Client) -> DeployInstructions {
        assert_eq!(client.machine_plan().await.unwrap(), MachinePlan::Inventory);
        client.post_inventory(&inventory()).await.unwrap();
        match client.machine_plan().await.unwrap() {
            MachinePlan::Deploy(d) => d,
            other => panic!("expected deploy, got {other:?}"),
        }
    }

    fn disk(&self) -> PathBuf {
        let dev = self.dir.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        dev.join("vda")
    }

    async fn event_names(&self) -> Vec<(String, Option<HostState>)> {
        self.control
            .events(None, None, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.event, e.state))
            .collect()
    }
}

fn deploying_phase(s: &HostState) -> Option<String> {
    match s {
        HostState::Deploying { phase, .. } => Some(phase.to_string()),
        _ => None,
    }
}

#[tokio::test]
async fn deploys_verifies_and_enrols_through_the_real_control_node() {
    let img = golden();
    let rack = Rack::start(&img, true).await;
    let client = Client::new(&rack.url(), Some(rack.pxe().await));
    let instr = rack.to_deploy(&client).await;
    assert_eq!(instr.plan.hostname, "node-sn1");
    let disk = rack.disk();
    // Stale content on the "disk" where the image has zeros must not survive.
    std::fs::write(&disk, vec![0xeeu8; img.len() + MIB]).unwrap();

    let console = Console::capture();
    let verified = imager::image_disk(&client, &console, &instr, &disk, false)
        .await
        .unwrap();
    assert_eq!(verified.sha256, sha(&img));
    assert!(verified.zero_bytes >= 4 * MIB as u64, "{verified:?}");
    let written = std::fs::read(&disk).unwrap();
    assert_eq!(sha(&written[..img.len()]), sha(&img));
    assert_eq!(
        deploying_phase(&rack.state().await).as_deref(),
        Some("finalizing")
    );

    let lines = console.lines();
    for want in [
        "IMAGER: writing disk.raw.zst 100%",
        "IMAGER: verifying 100%",
        &format!("IMAGER: verified sha256={}", sha(&img)),
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "{want:?} not in {lines:#?}"
        );
    }
    let events = rack.event_names().await;
    let progress: Vec<String> = events
        .iter()
        .filter(|(e, _)| e == "progress")
        .filter_map(|(_, s)| s.as_ref().and_then(deploying_phase))
        .collect();
    assert!(
        progress.iter().any(|p| p == "writing") && progress.iter().any(|p| p == "verifying"),
        "{events:?}"
    );

    // Finalize mounts the root partition (QEMU e2e); the identity it writes is the same as
    // here, into a directory standing in for the mounted root. Then `done`, and the installed
    // system's first boot enrols with the secret from the plan.
    let root = rack.dir.path().join("installed");
    let id = Identity {
        hostname: instr.plan.hostname.clone(),
        control_url: rack.url(),
        enrol_secret: Secret::from_plaintext(instr.enrol_secret.clone()),
        ssh_authorized_keys: instr.ssh_authorized_keys.clone(),
    };
    assert_eq!(instr.ssh_authorized_keys, [OPERATOR_KEY]);
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_imager"));
    let machine_id = imager::write_identity(&root, &id, &bin).unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("root/.ssh/authorized_keys")).unwrap(),
        format!("{OPERATOR_KEY}\n")
    );
    client
        .report_result(&provisioner::api::ImagingResult::Done)
        .await
        .unwrap();
    assert_eq!(
        deploying_phase(&rack.state().await).as_deref(),
        Some("rebooting")
    );
    assert_eq!(client.machine_plan().await.unwrap(), MachinePlan::BootLocal);

    let console = Console::capture();
    let resp = imager::enrol(&root, &console).await.unwrap();
    assert_eq!(rack.state().await.name(), StateName::Deployed);
    assert_eq!(
        console.lines(),
        [format!("PROVISIONER-ENROLLED host={}", resp.host)]
    );
    assert!(!root.join(imager::ENROL_FILE).exists(), "secret deleted");
    assert!(
        !root
            .join("etc/systemd/system/multi-user.target.wants")
            .join(imager::UNIT_NAME)
            .exists(),
        "unit disabled"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/machine-id")).unwrap(),
        format!("{machine_id}\n")
    );
    // The one-time secret is spent: a second enrolment is refused, and that is final.
    let file = serde_json::json!({"url": rack.url(), "secret": instr.enrol_secret});
    std::fs::write(root.join(imager::ENROL_FILE), file.to_string()).unwrap();
    let err = imager::enrol(&root, &Console::capture()).await.unwrap_err();
    assert!(matches!(err, imager::EnrolError::Rejected { .. }), "{err}");
    // The admin token is not what the imager uses, and nothing printed the secrets.
    let all = console.lines().join("\n");
    assert!(!all.contains(&instr.enrol_secret) && !all.contains(rack.admin.expose()));
}

#[tokio::test]
async fn corrupted_served_image_fails_verification_and_wipes_the_disk() {
    let img = golden();
    let rack = Rack::start(&img, false).await;
    // Flip bytes in the served copy (after import checked it).
    let served = rack.served("disk.raw");
    let mut bad = std::fs::read(&served).unwrap();
    bad[3 * MIB + 100] ^= 0xff;
    bad[6 * MIB + 7] ^= 0x01;
    std::fs::write(&served, &bad).unwrap();

    let secret = rack.pxe().await;
    let client = Client::new(&rack.url(), Some(secret.clone()));
    let instr = rack.to_deploy(&client).await;
    let disk = rack.disk();
    let console = Console::capture();
    let err = imager::image_disk(&client, &console, &instr, &disk, false)
        .await
        .unwrap_err();
    match &err {
        DeployError::Verify(VerifyError::Mismatch {
            expected, actual, ..
        }) => {
            assert_eq!(expected, &sha(&img));
            assert_eq!(actual, &sha(&bad));
        }
        other => panic!("expected a checksum mismatch, got {other}"),
    }
    let HostState::Failed { stage, reason, .. } = rack.state().await else {
        panic!("host not failed: {:?}", rack.state().await);
    };
    assert_eq!(stage.to_string(), "verify");
    assert!(
        reason.contains("checksum mismatch")
            && reason.contains(&sha(&img))
            && reason.contains(&sha(&bad)),
        "{reason}"
    );
    let on_disk = std::fs::read(&disk).unwrap();
    assert!(on_disk[..MIB].iter().all(|&b| b == 0), "first MiB wiped");
    assert!(
        on_disk[on_disk.len() - MIB..].iter().all(|&b| b == 0),
        "last MiB wiped"
    );
    let lines = console.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("IMAGER: failed stage=verify reason=checksum mismatch")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l == "IMAGER: partition table wiped"),
        "{lines:#?}"
    );

    // The loop keeps polling: the failed host waits until the operator retries. With
    // --preserve-on-error the (still corrupt) write is left on the disk for inspection.
    assert!(matches!(
        client.machine_plan().await.unwrap(),
        MachinePlan::Wait { .. }
    ));
    rack.control.retry(&MAC.to_string()).await.unwrap();
    let MachinePlan::Deploy(instr) = client.machine_plan().await.unwrap() else {
        panic!("retry gives a deploy plan");
    };
    let console = Console::capture();
    let err = imager::image_disk(&client, &console, &instr, &disk, true)
        .await
        .unwrap_err();
    assert!(matches!(err, DeployError::Verify(_)));
    assert_eq!(std::fs::read(&disk).unwrap()[..MIB], img[..MIB]);
    assert!(
        console
            .lines()
            .iter()
            .any(|l| l.contains("--preserve-on-error"))
    );

    // Restoring the image and retrying deploys.
    std::fs::write(&served, &img).unwrap();
    rack.control.retry(&MAC.to_string()).await.unwrap();
    let MachinePlan::Deploy(instr) = client.machine_plan().await.unwrap() else {
        panic!("retry gives a deploy plan");
    };
    imager::image_disk(&client, &Console::capture(), &instr, &disk, false)
        .await
        .unwrap();
    assert_eq!(
        deploying_phase(&rack.state().await).as_deref(),
        Some("finalizing")
    );
}

#[tokio::test]
async fn missing_served_artifact_fails_the_write_with_the_http_status() {
    let img = golden();
    let rack = Rack::start(&img, false).await;
    std::fs::remove_file(rack.served("disk.raw")).unwrap();
    let client = Client::new(&rack.url(), Some(rack.pxe().await));
    let instr = rack.to_deploy(&client).await;
    let disk = rack.disk();
    std::fs::write(&disk, vec![0x33u8; 3 * MIB]).unwrap();
    let err = imager::image_disk(&client, &Console::capture(), &instr, &disk, false)
        .await
        .unwrap_err();
    assert!(matches!(err, DeployError::Write(_)), "{err}");
    let HostState::Failed { stage, reason, .. } = rack.state().await else {
        panic!("host not failed");
    };
    assert_eq!(stage.to_string(), "write");
    assert!(
        reason.contains("download of `disk.raw` failed at offset 0") && reason.contains("404"),
        "{reason}"
    );
    let on_disk = std::fs::read(&disk).unwrap();
    assert!(on_disk[..MIB].iter().all(|&b| b == 0) && on_disk[2 * MIB..].iter().all(|&b| b == 0));
}

/// A request seen by the [`Cutter`]: path and Range header.
type Seen = (String, Option<String>);

/// A front server for the control node that cuts the first response for `cut_path` after
/// `cut_after` body bytes, and records the Range header of every request for it.
#[derive(Clone)]
struct Cutter {
    inner: axum::Router,
    cut_path: &'static str,
    cut_after: usize,
    hits: Arc<AtomicUsize>,
    ranges: Arc<Mutex<Vec<Seen>>>,
}

async fn cutting(State(c): State<Cutter>, req: Request) -> axum::response::Response {
    let path = req.uri().path().to_owned();
    let range = req
        .headers()
        .get("range")
        .map(|v| v.to_str().unwrap().to_owned());
    if path.starts_with("/images/") {
        c.ranges.lock().unwrap().push((path.clone(), range));
    }
    let resp = c.inner.clone().oneshot(req).await.unwrap();
    if path != c.cut_path || c.hits.fetch_add(1, Ordering::SeqCst) > 0 {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let mut left = c.cut_after;
    let stream = body.into_data_stream().flat_map(move |chunk| {
        let chunk = chunk.unwrap();
        let out: Vec<Result<bytes::Bytes, std::io::Error>> = if left == 0 {
            vec![Err(std::io::Error::other("cut"))]
        } else if chunk.len() >= left {
            let head = chunk.slice(..left);
            left = 0;
            vec![Ok(head), Err(std::io::Error::other("cut"))]
        } else {
            left -= chunk.len();
            vec![Ok(chunk)]
        };
        futures::stream::iter(out)
    });
    axum::response::Response::from_parts(parts, Body::from_stream(stream))
}

async fn start_cutter(rack: &Rack, cut_path: &'static str, cut_after: usize) -> (String, Cutter) {
    let inner = provisioner::http::router(
        rack.control.clone(),
        rack.admin.hash(),
        CancellationToken::new(),
    );
    let c = Cutter {
        inner,
        cut_path,
        cut_after,
        hits: Arc::new(AtomicUsize::new(0)),
        ranges: Arc::new(Mutex::new(Vec::new())),
    };
    let app = axum::Router::new().fallback(cutting).with_state(c.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), c)
}

/// N of a `bytes=N-` header.
fn range_offset(range: Option<&str>) -> u64 {
    range
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .unwrap_or_else(|| panic!("not an open-ended Range: {range:?}"))
}

#[tokio::test]
async fn dropped_raw_connection_resumes_with_range() {
    let img = golden();
    let rack = Rack::start(&img, false).await;
    let cut = 3 * MIB + 12_345;
    let (url, cutter) = start_cutter(&rack, "/images/golden/disk.raw", cut).await;
    let client = Client::new(&url, Some(rack.pxe().await));
    let instr = rack.to_deploy(&client).await;
    let disk = rack.disk();
    let console = Console::capture();
    imager::image_disk(&client, &console, &instr, &disk, false)
        .await
        .unwrap();
    let ranges = cutter.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0].1, None);
    // The server cut after `cut` bytes; the client may have lost the last bytes in flight.
    let offset = range_offset(ranges[1].1.as_deref());
    assert!(offset > 2 * MIB as u64 && offset <= cut as u64, "{offset}");
    assert_eq!(sha(&std::fs::read(&disk).unwrap()), sha(&img));
    assert_eq!(
        deploying_phase(&rack.state().await).as_deref(),
        Some("finalizing")
    );
    let lines = console.lines();
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "IMAGER: connection lost, resuming disk.raw at offset {offset}"
        ))),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn dropped_zstd_stream_continues_from_the_raw_image() {
    let img = golden();
    let rack = Rack::start(&img, true).await;
    let (url, cutter) = start_cutter(&rack, "/images/golden/disk.raw.zst", 600_000).await;
    let client = Client::new(&url, Some(rack.pxe().await));
    let instr = rack.to_deploy(&client).await;
    let disk = rack.disk();
    imager::image_disk(&client, &Console::capture(), &instr, &disk, false)
        .await
        .unwrap();
    let ranges = cutter.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], ("/images/golden/disk.raw.zst".to_owned(), None));
    assert_eq!(ranges[1].0, "/images/golden/disk.raw");
    let offset = range_offset(ranges[1].1.as_deref());
    assert!(offset > 0 && offset < img.len() as u64, "{offset}");
    assert_eq!(sha(&std::fs::read(&disk).unwrap()), sha(&img));
}

/// The `imager` binary, killed on drop; its stdout (the console) collected line by line.
struct ImagerProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl ImagerProcess {
    fn spawn(args: &[&str]) -> ImagerProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imager"))
            .args(args)
            .env_remove("PROVISIONER_URL")
            .env_remove("PROVISIONER_SECRET")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        ImagerProcess {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a console line equal to `want`.
    fn wait_line(&mut self, want: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !self.seen.iter().any(|l| l == want) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("no {want:?} in {:#?}", self.seen),
            }
        }
    }
}

impl Drop for ImagerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn imager_binary_posts_this_machines_inventory_and_waits() {
    // No rule matches (there is none), so the host waits in `ready`: nothing is written.
    let rack = Rack::without_rules(&golden(), false).await;
    let secret = rack.pxe().await;
    let url = format!("--url={}", rack.url());
    let secret_arg = format!("--secret={}", secret.expose());
    let mut imager = ImagerProcess::spawn(&[&url, &secret_arg]);
    imager.wait_line(&format!("IMAGER: starting, control node {}", rack.url()));
    let detail = common::wait_for(std::time::Duration::from_secs(30), || async {
        let d = rack.control.host(&MAC.to_string()).await.ok()?;
        d.inventory.is_some().then_some(d)
    })
    .await
    .expect("inventory posted");
    assert_eq!(detail.host.state.name(), StateName::Ready);
    assert!(detail.inventory.unwrap().cpu_count >= 1);
    imager.wait_line("IMAGER: waiting for a deployment");
    assert!(
        imager
            .seen
            .iter()
            .any(|l| l.starts_with("IMAGER: inventory posted ("))
    );
    assert!(!imager.seen.join("\n").contains(secret.expose()));
}

#[test]
fn imager_binary_without_url_says_so_and_exits_2() {
    let mut imager = ImagerProcess::spawn(&["--secret=TOPSECRET"]);
    imager.wait_line("IMAGER: error: missing --url (kernel argument provisioner.url=)");
    assert_eq!(imager.child.wait().unwrap().code(), Some(2));
    assert!(!imager.seen.join("\n").contains("TOPSECRET"));
}
