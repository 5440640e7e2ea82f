//! Component tests: the TFTP server in-process on 127.0.0.1, real client programs
//! (tftp-hpa's `tftp`, `curl`, `atftp`).

use rack_tests::pseudo_random;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use camino::{Utf8Path, Utf8PathBuf};
use common::run_cmd_async;
use netsvc::tftp::{Config, HostFiles, Server, ServerHandle, TftpDeps};
use tokio::process::Command;

struct Fixture {
    _tmp: tempfile::TempDir,
    root: Utf8PathBuf,
    out: Utf8PathBuf,
    server: ServerHandle,
}

struct Generated;
impl HostFiles for Generated {
    fn file_for(&self, client: IpAddr, path: &str) -> Option<Vec<u8>> {
        (path == "host/boot.cfg").then(|| format!("generated for {client}\n").into_bytes())
    }
}

async fn fixture(max_transfers: usize) -> Result<Fixture> {
    fixture_on("127.0.0.1:0", max_transfers).await
}

async fn fixture_on(listen: &str, max_transfers: usize) -> Result<Fixture> {
    let tmp = tempfile::tempdir()?;
    let base = Utf8Path::from_path(tmp.path())
        .context("temp dir is not UTF-8")?
        .to_owned();
    let root = base.join("root");
    let out = base.join("out");
    std::fs::create_dir_all(root.join("sub"))?;
    std::fs::create_dir_all(&out)?;
    std::fs::write(base.join("outside.txt"), b"secret")?;
    std::os::unix::fs::symlink(base.join("outside.txt"), root.join("escape"))?;
    std::fs::write(root.join("hello.txt"), b"hello\nworld\r\n")?;
    std::fs::write(root.join("sub/big.bin"), pseudo_random(3 << 20, 1))?;
    std::fs::write(root.join("small.bin"), pseudo_random(1 << 20, 2))?;
    std::fs::write(root.join("rollover.bin"), pseudo_random(530_000, 3))?;
    let cfg = Config {
        listen: listen.parse()?,
        boot_dir: root.clone(),
        ipxe_dir: Some(netsvc::tftp::DEFAULT_IPXE_DIR.into()),
        max_transfers: NonZeroUsize::new(max_transfers).context("zero")?,
        max_blksize: 1468,
        max_windowsize: 64,
        timeout: Duration::from_millis(500),
        retries: 5,
    };
    let server = Server::start(
        cfg,
        TftpDeps {
            host_files: Some(Arc::new(Generated)),
        },
    )
    .await?;
    Ok(Fixture {
        _tmp: tmp,
        root,
        out,
        server,
    })
}

fn port(addr: SocketAddr) -> String {
    addr.port().to_string()
}

async fn curl(addr: SocketAddr, path: &str, blksize: u32, dest: &Utf8Path) -> Result<()> {
    run_cmd_async(Command::new("curl").args([
        "-sS",
        "--fail",
        "--path-as-is",
        "--max-time",
        "60",
        "--tftp-blksize",
        &blksize.to_string(),
        "-o",
        dest.as_str(),
        &format!("tftp://{addr}/{path}"),
    ]))
    .await?;
    Ok(())
}

fn same(a: &Utf8Path, b: &Utf8Path) -> Result<()> {
    let (x, y) = (std::fs::read(a)?, std::fs::read(b)?);
    ensure!(
        x.len() == y.len(),
        "{a}: {} bytes, {b}: {} bytes",
        x.len(),
        y.len()
    );
    ensure!(x == y, "{a} and {b} differ");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_binary_and_ascii() -> Result<()> {
    let f = fixture(16).await?;
    let addr = f.server.local_addr();
    let dest = f.out.join("big.bin");
    let get = format!("get sub/big.bin {dest}");
    run_cmd_async(
        Command::new("tftp")
            .args(["-m", "binary", "127.0.0.1", &port(addr), "-c"])
            .args(get.split(' ')),
    )
    .await?;
    same(&dest, &f.root.join("sub/big.bin"))?;

    // netascii: the client converts CR LF back, so the text arrives unchanged.
    let dest = f.out.join("hello.txt");
    let get = format!("get hello.txt {dest}");
    run_cmd_async(
        Command::new("tftp")
            .args(["-m", "ascii", "127.0.0.1", &port(addr), "-c"])
            .args(get.split(' ')),
    )
    .await?;
    same(&dest, &f.root.join("hello.txt"))?;

    // The iPXE binaries of the `ipxe` package appear at the root.
    let dest = f.out.join("snponly.efi");
    let get = format!("get snponly.efi {dest}");
    run_cmd_async(
        Command::new("tftp")
            .args(["-m", "binary", "127.0.0.1", &port(addr), "-c"])
            .args(get.split(' ')),
    )
    .await?;
    same(&dest, Utf8Path::new("/usr/lib/ipxe/snponly.efi"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_blksize_rollover_and_generated_files() -> Result<()> {
    let f = fixture(16).await?;
    let addr = f.server.local_addr();
    for blksize in [1468, 1024] {
        let dest = f.out.join(format!("big-{blksize}.bin"));
        curl(addr, "sub/big.bin", blksize, &dest).await?;
        same(&dest, &f.root.join("sub/big.bin"))?;
    }
    // 530000 bytes in blocks of 8 is more than 65535 blocks: the block number wraps to 0.
    let dest = f.out.join("rollover.bin");
    curl(addr, "rollover.bin", 8, &dest).await?;
    same(&dest, &f.root.join("rollover.bin"))?;

    let dest = f.out.join("boot.cfg");
    curl(addr, "host/boot.cfg", 512, &dest).await?;
    ensure!(std::fs::read_to_string(&dest)? == "generated for 127.0.0.1\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_windowsize() -> Result<()> {
    let f = fixture(16).await?;
    let addr = f.server.local_addr();
    for opts in [
        &["blksize 1468", "windowsize 16"][..],
        &["blksize 512", "windowsize 4", "tsize 0"],
    ] {
        let dest = f.out.join("win.bin");
        let mut cmd = Command::new("atftp");
        for o in opts {
            cmd.args(["--option", o]);
        }
        let out = run_cmd_async(cmd.args([
            "--trace",
            "-g",
            "-r",
            "sub/big.bin",
            "-l",
            dest.as_str(),
            "127.0.0.1",
            &port(addr),
        ]))
        .await?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let window = opts[1].split(' ').nth(1).context("window")?;
        let oack = text
            .lines()
            .find(|l| l.contains("received OACK"))
            .context("no OACK received")?;
        ensure!(
            oack.contains(&format!("windowsize: {window}")),
            "server did not grant the window: {oack}"
        );
        same(&dest, &f.root.join("sub/big.bin"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_missing_files_and_writes_are_refused() -> Result<()> {
    let f = fixture(16).await?;
    let addr = f.server.local_addr();
    let dest = f.out.join("x");
    for path in [
        "../outside.txt",
        "sub/../../outside.txt",
        "escape",
        "missing.bin",
        "sub",
    ] {
        let r = curl(addr, path, 512, &dest).await;
        ensure!(r.is_err(), "{path} was served");
    }
    // An absolute path is taken inside the root: /etc/passwd does not exist there.
    let r = curl(addr, "/etc/passwd", 512, &dest).await;
    ensure!(r.is_err(), "/etc/passwd was served");
    let src = f.root.join("hello.txt");
    let put = format!("put {src} uploaded.txt");
    let r = run_cmd_async(
        Command::new("tftp")
            .args(["-m", "binary", "127.0.0.1", &port(addr), "-c"])
            .args(put.split(' ')),
    )
    .await;
    // tftp-hpa exits 0 even on errors but prints the server's message.
    let text = match r {
        Ok(o) => {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        }
        Err(e) => e.to_string(),
    };
    ensure!(text.contains("read-only"), "write not refused: {text}");
    ensure!(!f.root.join("uploaded.txt").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_transfers_at_once() -> Result<()> {
    let f = fixture(256).await?;
    let addr = f.server.local_addr();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..64 {
        let dest = f.out.join(format!("small-{i}.bin"));
        set.spawn(async move { curl(addr, "small.bin", 1468, &dest).await.map(|()| dest) });
    }
    while let Some(r) = set.join_next().await {
        same(&r??, &f.root.join("small.bin"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_does_not_stop_the_server() -> Result<()> {
    let f = fixture(16).await?;
    let addr = f.server.local_addr();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let mut junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        b"\x00\x01".to_vec(),
        b"\x00\x01name-without-nul".to_vec(),
        b"\x00\x01f\x00octet\x00blksize\x00".to_vec(),
        b"\x00\x03\x00\x01data".to_vec(),
        b"\xff\xff\xff".to_vec(),
        vec![0u8; 65000],
    ];
    for seed in 0..200 {
        junk.push(pseudo_random(usize::try_from(seed * 7 % 700)?, seed + 10));
    }
    for j in &junk {
        sock.send_to(j, addr).await?;
    }
    // A bad option value is answered with error 8 from the transfer's own socket. The flood
    // may overflow the socket buffer, so the request is retransmitted as a client would.
    let mut buf = [0u8; 600];
    let mut answer = None;
    for _ in 0..10 {
        sock.send_to(b"\x00\x01hello.txt\x00octet\x00blksize\x00huge\x00", addr)
            .await?;
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await
        {
            answer = Some(r?.0);
            break;
        }
    }
    let n = answer.context("no answer to the bad option")?;
    ensure!(
        buf[..4] == *b"\x00\x05\x00\x08",
        "expected error 8, got {:?}",
        &buf[..n]
    );
    let dest = f.out.join("after.bin");
    curl(addr, "small.bin", 1468, &dest).await?;
    same(&dest, &f.root.join("small.bin"))
}

/// A hand-driven client for what stock clients do not exercise: lost ACKs and partial windows.
struct RawClient {
    sock: tokio::net::UdpSocket,
    server: SocketAddr,
    tid: Option<SocketAddr>,
}

impl RawClient {
    async fn new(server: SocketAddr) -> Result<Self> {
        Ok(RawClient {
            sock: tokio::net::UdpSocket::bind("127.0.0.1:0").await?,
            server,
            tid: None,
        })
    }

    async fn send(&self, pkt: &[u8]) -> Result<()> {
        self.sock
            .send_to(pkt, self.tid.unwrap_or(self.server))
            .await?;
        Ok(())
    }

    async fn ack(&self, block: u16) -> Result<()> {
        let mut p = vec![0, 4];
        p.extend_from_slice(&block.to_be_bytes());
        self.send(&p).await
    }

    /// Next packet as (opcode, block or code, payload length).
    async fn recv(&mut self) -> Result<(u16, u16, usize)> {
        let mut buf = vec![0u8; 2000];
        let (n, from) =
            tokio::time::timeout(Duration::from_secs(5), self.sock.recv_from(&mut buf)).await??;
        self.tid.get_or_insert(from);
        ensure!(n >= 4, "short packet");
        Ok((
            u16::from_be_bytes([buf[0], buf[1]]),
            u16::from_be_bytes([buf[2], buf[3]]),
            n - 4,
        ))
    }
}

#[tokio::test]
async fn lost_acks_and_partial_windows_are_retransmitted() -> Result<()> {
    let f = fixture(16).await?;
    let addr = f.server.local_addr();

    // Lock-step: no ACK for block 1, so it comes again after the timeout.
    let mut c = RawClient::new(addr).await?;
    c.send(b"\x00\x01small.bin\x00octet\x00").await?;
    ensure!(c.recv().await? == (3, 1, 512));
    ensure!(c.recv().await? == (3, 1, 512), "block 1 not retransmitted");
    c.ack(1).await?;
    ensure!(c.recv().await? == (3, 2, 512));
    // A duplicate ACK of block 1 must not trigger a second block 2 (Sorcerer's Apprentice).
    c.ack(1).await?;
    c.ack(2).await?;
    ensure!(c.recv().await? == (3, 3, 512), "duplicate ACK answered");
    c.send(b"\x00\x05\x00\x00done\x00").await?;

    // Window of 4: acknowledging block 2 of 1..=4 gets 3 and 4 again, then 5 and 6.
    let mut c = RawClient::new(addr).await?;
    c.send(b"\x00\x01small.bin\x00octet\x00windowsize\x004\x00")
        .await?;
    ensure!(c.recv().await?.0 == 6, "no OACK");
    c.ack(0).await?;
    for b in 1..=4 {
        ensure!(c.recv().await? == (3, b, 512), "block {b}");
    }
    c.ack(2).await?;
    for b in [3, 4, 5, 6] {
        ensure!(
            c.recv().await? == (3, b, 512),
            "block {b} after partial ACK"
        );
    }
    c.send(b"\x00\x05\x00\x00done\x00").await?;
    Ok(())
}

#[tokio::test]
async fn wildcard_listener_answers_from_the_address_asked() -> Result<()> {
    let f = fixture_on("0.0.0.0:0", 16).await?;
    // 127.0.0.2 is local too, but not the address a reply to 127.0.0.1 would pick by route.
    let server = SocketAddr::from(([127, 0, 0, 2], f.server.local_addr().port()));
    let mut c = RawClient::new(server).await?;
    c.send(b"\x00\x01hello.txt\x00octet\x00").await?;
    ensure!(c.recv().await?.0 == 3, "no DATA");
    let from = c.tid.context("no reply")?;
    ensure!(from.ip() == server.ip(), "reply came from {from}");
    c.ack(1).await?;
    Ok(())
}
