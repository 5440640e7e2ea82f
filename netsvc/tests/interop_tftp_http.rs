//! Interop in network namespaces (root): the boot servers run inside a server namespace on their
//! real ports, stock clients (`curl`, tftp-hpa's `tftp`, `atftp`) run in a client namespace
//! joined to it by a veth pair.

use rack_tests::pseudo_random;
use std::any::Any;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use camino::{Utf8Path, Utf8PathBuf};
use common::{run_cmd, run_cmd_async};
use tokio::process::Command;

/// Name prefix of everything these tests create.
const PREFIX: &str = "nb-";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Two namespaces joined by a veth pair: server 10.62.N.1, client 10.62.N.2.
struct Rack {
    server_ns: String,
    client_ns: String,
    server_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<()> {
    run_cmd(std::process::Command::new("ip").args(args))?;
    Ok(())
}

/// Removes namespaces of earlier runs whose process is gone.
fn remove_leftovers() -> Result<()> {
    let out = run_cmd(std::process::Command::new("ip").args(["netns", "list"]))?;
    for line in out.stdout_lossy().lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !Utf8Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
    Ok(())
}

impl Rack {
    fn new() -> Result<Rack> {
        remove_leftovers()?;
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let subnet = u8::try_from((pid + n * 37) % 250 + 1).context("subnet")?;
        let rack = Rack {
            server_ns: format!("{PREFIX}{pid}-{n}-s"),
            client_ns: format!("{PREFIX}{pid}-{n}-c"),
            server_ip: Ipv4Addr::new(10, 62, subnet, 1),
        };
        let client_ip = Ipv4Addr::new(10, 62, subnet, 2);
        ip(&["netns", "add", &rack.server_ns])?;
        ip(&["netns", "add", &rack.client_ns])?;
        ip(&[
            "link",
            "add",
            "nbs",
            "netns",
            &rack.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            "nbc",
            "netns",
            &rack.client_ns,
        ])?;
        for (ns, dev, addr) in [
            (&rack.server_ns, "nbs", rack.server_ip),
            (&rack.client_ns, "nbc", client_ip),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(rack)
    }

    /// Runs a client command in the client namespace.
    async fn client(&self, argv: &[&str]) -> Result<common::CommandOutput> {
        Ok(run_cmd_async(
            Command::new("ip")
                .args(["netns", "exec", &self.client_ns])
                .args(argv),
        )
        .await?)
    }
}

impl Drop for Rack {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.client_ns]);
        let _ = ip(&["netns", "del", &self.server_ns]);
    }
}

type Started = Pin<Box<dyn Future<Output = Result<Box<dyn Any + Send>>>>>;

/// Servers running on a thread that entered the server namespace; stopped on drop.
struct InNetns {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InNetns {
    /// Enters `ns` on a new thread, runs `start` on a runtime there and keeps what it returns
    /// (the server handles) alive until dropped.
    fn start(ns: &str, start: impl FnOnce() -> Started + Send + 'static) -> Result<InNetns> {
        let path = format!("/run/netns/{ns}");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let run = || -> Result<tokio::runtime::Runtime> {
                let fd = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
                Ok(tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?)
            };
            let rt = match run() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                match start().await {
                    Ok(handles) => {
                        let _ = ready_tx.send(Ok(()));
                        let _ = stop_rx.await;
                        drop(handles);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .context("servers did not start")??;
        Ok(InNetns {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Files {
    _tmp: tempfile::TempDir,
    base: Utf8PathBuf,
    root: Utf8PathBuf,
}

fn boot_files() -> Result<Files> {
    let tmp = tempfile::tempdir()?;
    let base = Utf8Path::from_path(tmp.path())
        .context("temp dir is not UTF-8")?
        .to_owned();
    let root = base.join("root");
    std::fs::create_dir_all(root.join("deploy"))?;
    std::fs::write(base.join("outside.txt"), b"must not be served")?;
    std::fs::write(root.join("deploy/vmlinuz"), pseudo_random(4 << 20, 7))?;
    std::fs::write(root.join("hello.txt"), b"hello\n")?;
    Ok(Files {
        _tmp: tmp,
        base,
        root,
    })
}

fn same(got: &Utf8Path, want: &Utf8Path) -> Result<()> {
    let (a, b) = (std::fs::read(got)?, std::fs::read(want)?);
    ensure!(
        a == b,
        "{got} ({} bytes) differs from {want} ({} bytes)",
        a.len(),
        b.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_clients_across_namespaces() -> Result<()> {
    let files = boot_files()?;
    let rack = Rack::new()?;
    let cfg = netsvc::tftp::Config {
        listen: SocketAddr::new(IpAddr::V4(rack.server_ip), 69),
        boot_dir: files.root.clone(),
        ipxe_dir: Some(netsvc::tftp::DEFAULT_IPXE_DIR.into()),
        max_transfers: NonZeroUsize::new(64).context("zero")?,
        max_blksize: 1468,
        max_windowsize: 64,
        timeout: Duration::from_secs(1),
        retries: 5,
    };
    let _servers = InNetns::start(&rack.server_ns, move || {
        Box::pin(async move {
            let h = netsvc::tftp::Server::start(cfg, netsvc::tftp::TftpDeps::default()).await?;
            Ok(Box::new(h) as Box<dyn Any + Send>)
        })
    })?;
    let srv = rack.server_ip.to_string();
    let want = files.root.join("deploy/vmlinuz");

    let dest = files.base.join("curl.bin");
    rack.client(&[
        "curl",
        "-sS",
        "--fail",
        "--tftp-blksize",
        "1468",
        "-o",
        dest.as_str(),
        &format!("tftp://{srv}/deploy/vmlinuz"),
    ])
    .await?;
    same(&dest, &want)?;

    let dest = files.base.join("hpa.bin");
    rack.client(&[
        "tftp",
        "-m",
        "binary",
        &srv,
        "-c",
        "get",
        "/deploy/vmlinuz",
        dest.as_str(),
    ])
    .await?;
    same(&dest, &want)?;

    let dest = files.base.join("atftp.bin");
    let out = rack
        .client(&[
            "atftp",
            "--trace",
            "--option",
            "blksize 1468",
            "--option",
            "windowsize 16",
            "-g",
            "-r",
            "deploy/vmlinuz",
            "-l",
            dest.as_str(),
            &srv,
            "69",
        ])
        .await?;
    let text = out.stdout_lossy() + &String::from_utf8_lossy(&out.stderr);
    ensure!(
        text.lines()
            .any(|l| l.contains("received OACK") && l.contains("windowsize: 16")),
        "window not granted"
    );
    same(&dest, &want)?;

    let dest = files.base.join("ipxe.efi");
    rack.client(&[
        "curl",
        "-sS",
        "--fail",
        "-o",
        dest.as_str(),
        &format!("tftp://{srv}/ipxe.efi"),
    ])
    .await?;
    same(&dest, Utf8Path::new("/usr/lib/ipxe/ipxe.efi"))?;

    for bad in [
        "../outside.txt".to_owned(),
        format!("{}/outside.txt", files.base),
    ] {
        let dest = files.base.join("refused");
        let r = rack
            .client(&[
                "curl",
                "-sS",
                "--fail",
                "--path-as-is",
                "--max-time",
                "5",
                "-o",
                dest.as_str(),
                &format!("tftp://{srv}/{bad}"),
            ])
            .await;
        if r.is_ok() {
            bail!("{bad} was served");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_boot_across_namespaces() -> Result<()> {
    let files = boot_files()?;
    let rack = Rack::new()?;
    let cfg = netsvc::http::Config {
        listen: SocketAddr::new(IpAddr::V4(rack.server_ip), 80),
        boot_dir: files.root.clone(),
        ipxe_dir: Some(netsvc::tftp::DEFAULT_IPXE_DIR.into()),
        template_dir: None,
        default_boot: netsvc::http::DefaultBoot {
            kernel: Some("deploy/vmlinuz".into()),
            initrd: None,
            cmdline: "console=ttyS0".into(),
        },
    };
    let _servers = InNetns::start(&rack.server_ns, move || {
        Box::pin(async move {
            let deps = netsvc::http::HttpDeps {
                scripts: std::sync::Arc::new(netsvc::http::DefaultScripts),
                extra_routes: None,
            };
            let h = netsvc::http::Server::start(cfg, deps).await?;
            Ok(Box::new(h) as Box<dyn Any + Send>)
        })
    })?;
    let base = format!("http://{}", rack.server_ip);

    let out = rack
        .client(&[
            "curl",
            "-sS",
            "--fail",
            &format!("{base}/boot/52-54-00-62-00-09.ipxe"),
        ])
        .await?;
    let script = out.stdout_lossy();
    ensure!(script.starts_with("#!ipxe\n"), "{script}");
    ensure!(
        script.contains("kernel /files/deploy/vmlinuz console=ttyS0"),
        "{script}"
    );

    // The kernel line's relative URL resolves against the script's: fetch it the same way.
    let dest = files.base.join("kernel");
    rack.client(&[
        "curl",
        "-sS",
        "--fail",
        "-o",
        dest.as_str(),
        &format!("{base}/files/deploy/vmlinuz"),
    ])
    .await?;
    same(&dest, &files.root.join("deploy/vmlinuz"))?;

    let out = rack
        .client(&[
            "curl",
            "-sS",
            "--fail",
            "-r",
            "10-19",
            &format!("{base}/files/deploy/vmlinuz"),
        ])
        .await?;
    let want = std::fs::read(files.root.join("deploy/vmlinuz"))?;
    ensure!(out.stdout == want[10..20], "range differs");

    let dest = files.base.join("snponly.efi");
    rack.client(&[
        "curl",
        "-sS",
        "--fail",
        "-o",
        dest.as_str(),
        &format!("{base}/ipxe/snponly.efi"),
    ])
    .await?;
    same(&dest, Utf8Path::new("/usr/lib/ipxe/snponly.efi"))?;

    let r = rack
        .client(&[
            "curl",
            "-sS",
            "--fail",
            "--path-as-is",
            &format!("{base}/files/../outside.txt"),
        ])
        .await;
    ensure!(r.is_err(), "../outside.txt was served");
    Ok(())
}
