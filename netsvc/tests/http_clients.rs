//! Component tests: the HTTP boot server in-process on 127.0.0.1, `curl` as the client.

use rack_tests::pseudo_random;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use camino::{Utf8Path, Utf8PathBuf};
use common::run_cmd_async;
use netsvc::MacAddr;
use netsvc::http::{
    BootScripts, ChooseError, Config, DefaultBoot, HttpDeps, ScriptChoice, Server, ServerHandle,
};
use tokio::process::Command;

const KNOWN: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x62, 0x00, 0x01]);
const DEPLOYING: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x62, 0x00, 0x02]);
const BROKEN: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x62, 0x00, 0x03]);

struct Inventory;
#[async_trait::async_trait]
impl BootScripts for Inventory {
    async fn script_for(&self, mac: MacAddr) -> Result<Option<ScriptChoice>, ChooseError> {
        if mac == KNOWN {
            return Ok(Some(ScriptChoice {
                template: "local".into(),
                vars: serde_json::Map::new(),
            }));
        }
        if mac == BROKEN {
            return Err("inventory unreachable".into());
        }
        Ok((mac == DEPLOYING).then(|| {
            let mut vars = serde_json::Map::new();
            vars.insert("token".into(), "a&b<c>".into());
            ScriptChoice {
                template: "deploy".into(),
                vars,
            }
        }))
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    base: Utf8PathBuf,
    root: Utf8PathBuf,
    server: ServerHandle,
}

async fn fixture() -> Result<Fixture> {
    let tmp = tempfile::tempdir()?;
    let base = Utf8Path::from_path(tmp.path())
        .context("temp dir is not UTF-8")?
        .to_owned();
    let root = base.join("root");
    let templates = base.join("templates");
    std::fs::create_dir_all(root.join("deploy"))?;
    std::fs::create_dir_all(&templates)?;
    std::fs::write(base.join("outside.txt"), b"must not be served")?;
    std::os::unix::fs::symlink(base.join("outside.txt"), root.join("escape"))?;
    std::fs::write(root.join("deploy/vmlinuz"), pseudo_random(1 << 20, 5))?;
    std::fs::write(
        templates.join("deploy.ipxe.hbs"),
        "#!ipxe\nchain /api/deploy?mac={{mac_hyphenated}}&token={{token}}\n",
    )?;
    let cfg = Config {
        listen: "127.0.0.1:0".parse()?,
        boot_dir: root.clone(),
        ipxe_dir: Some(netsvc::tftp::DEFAULT_IPXE_DIR.into()),
        template_dir: Some(templates),
        default_boot: DefaultBoot {
            kernel: Some("deploy/vmlinuz".into()),
            initrd: Some("deploy/initrd.img".into()),
            cmdline: "console=ttyS0".into(),
        },
    };
    let api = axum::Router::new().route("/api/ping", axum::routing::get(|| async { "pong" }));
    let server = Server::start(
        cfg,
        HttpDeps {
            scripts: Arc::new(Inventory),
            extra_routes: Some(api),
        },
    )
    .await?;
    Ok(Fixture {
        _tmp: tmp,
        base,
        root,
        server,
    })
}

/// Runs curl; returns (status, headers, body).
async fn curl(addr: SocketAddr, path: &str, extra: &[&str]) -> Result<(u16, String, Vec<u8>)> {
    let tmp = tempfile::tempdir()?;
    let headers = tmp.path().join("h");
    let body = tmp.path().join("b");
    let headers_s = headers.to_str().context("utf-8")?;
    let body_s = body.to_str().context("utf-8")?;
    let out = run_cmd_async(
        Command::new("curl")
            .args(["-sS", "--path-as-is", "-D", headers_s, "-o", body_s])
            .args(["-w", "%{http_code}"])
            .args(extra)
            .arg(format!("http://{addr}{path}")),
    )
    .await?;
    let status = out.stdout_lossy().trim().parse()?;
    let body = std::fs::read(&body).unwrap_or_default();
    Ok((status, std::fs::read_to_string(&headers)?, body))
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn boot_scripts_by_mac() -> Result<()> {
    let f = fixture().await?;
    let addr = f.server.local_addr();
    let (status, _, body) = curl(addr, "/boot/52-54-00-aa-bb-cc.ipxe", &[]).await?;
    let body = String::from_utf8(body)?;
    ensure!(status == 200, "{status}");
    ensure!(
        body.contains("kernel /files/deploy/vmlinuz initrd=initrd.img console=ttyS0"),
        "{body}"
    );
    ensure!(
        body.contains("initrd --name initrd.img /files/deploy/initrd.img"),
        "{body}"
    );

    let (status, _, body) = curl(addr, &format!("/boot/{KNOWN}.ipxe"), &[]).await?;
    ensure!(
        status == 200 && String::from_utf8(body)?.contains("sanboot --no-describe --drive 0x80")
    );

    let (status, _, body) =
        curl(addr, &format!("/boot/{}.ipxe", DEPLOYING.hyphenated()), &[]).await?;
    let body = String::from_utf8(body)?;
    ensure!(status == 200, "{status}");
    ensure!(
        body == "#!ipxe\nchain /api/deploy?mac=52-54-00-62-00-02&token=a&b<c>\n",
        "{body}"
    );

    // A chooser that fails gives a generic 500 (iPXE retries), never the default script.
    let (status, _, body) = curl(addr, &format!("/boot/{BROKEN}.ipxe"), &[]).await?;
    ensure!(status == 500, "{status}");
    ensure!(body == b"internal server error\n", "{body:?}");

    for bad in ["/boot/nonsense.ipxe", "/boot/52-54-00-aa-bb-cc.txt"] {
        let (status, _, _) = curl(addr, bad, &[]).await?;
        ensure!(status == 400, "{bad}: {status}");
    }
    let (status, _, body) = curl(addr, "/api/ping", &[]).await?;
    ensure!(
        status == 200 && body == b"pong",
        "extra routes are not mounted"
    );
    Ok(())
}

#[tokio::test]
async fn static_files_with_ranges_and_head() -> Result<()> {
    let f = fixture().await?;
    let addr = f.server.local_addr();
    let want = std::fs::read(f.root.join("deploy/vmlinuz"))?;
    let len = want.len();

    let (status, h, body) = curl(addr, "/files/deploy/vmlinuz", &[]).await?;
    ensure!(status == 200 && body == want);
    ensure!(
        header(&h, "content-length") == Some(len.to_string().as_str()),
        "{h}"
    );
    ensure!(header(&h, "accept-ranges") == Some("bytes"), "{h}");

    let cases = [
        ("0-99", 0, 99),
        ("1000-", 1000, len - 1),
        ("-50", len - 50, len - 1),
    ];
    for (range, start, end) in cases {
        let (status, h, body) = curl(addr, "/files/deploy/vmlinuz", &["-r", range]).await?;
        ensure!(status == 206, "{range}: {status}");
        ensure!(body == want[start..=end], "{range}: wrong bytes");
        let cr = format!("bytes {start}-{end}/{len}");
        ensure!(
            header(&h, "content-range") == Some(cr.as_str()),
            "{range}: {h}"
        );
        let cl = (end - start + 1).to_string();
        ensure!(
            header(&h, "content-length") == Some(cl.as_str()),
            "{range}: {h}"
        );
    }
    let (status, h, _) = curl(addr, "/files/deploy/vmlinuz", &["-r", &format!("{len}-")]).await?;
    ensure!(status == 416, "{status}");
    ensure!(
        header(&h, "content-range") == Some(format!("bytes */{len}").as_str()),
        "{h}"
    );

    let (status, h, body) = curl(addr, "/files/deploy/vmlinuz", &["-I"]).await?;
    // With -I curl writes the headers where the body would go: no file bytes may follow.
    ensure!(
        status == 200 && body.len() < 1000,
        "HEAD: {status}, {} bytes",
        body.len()
    );
    ensure!(
        header(&h, "content-length") == Some(len.to_string().as_str()),
        "HEAD: {h}"
    );

    let (status, _, body) = curl(addr, "/ipxe/snponly.efi", &[]).await?;
    ensure!(status == 200 && body == std::fs::read("/usr/lib/ipxe/snponly.efi")?);
    let (status, _, _) = curl(addr, "/ipxe/ipxe.lkrn", &[]).await?;
    ensure!(status == 404, "{status}");
    Ok(())
}

#[tokio::test]
async fn nothing_outside_the_boot_dir() -> Result<()> {
    let f = fixture().await?;
    let addr = f.server.local_addr();
    let abs = format!("/files/{}/outside.txt", f.base);
    for path in [
        "/files/../outside.txt",
        "/files/deploy/../../outside.txt",
        "/files/%2e%2e/outside.txt",
        "/files/..%2foutside.txt",
        "/files/escape",
        "/files/deploy",
        "/files/missing",
        abs.as_str(),
    ] {
        let (status, _, body) = curl(addr, path, &[]).await?;
        ensure!((400..500).contains(&status), "{path}: {status}");
        ensure!(
            !String::from_utf8_lossy(&body).contains("must not"),
            "{path} leaked"
        );
    }
    Ok(())
}
