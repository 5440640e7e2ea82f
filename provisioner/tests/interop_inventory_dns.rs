//! The inventory in the rack zone, through the real `provisioner serve` binary with the network
//! services embedded, on a rack segment: a stock dhclient gets a lease from its DHCP, the host
//! network-boots (its iPXE script is fetched), the imager's inventory matches a rule that names
//! it, and the name resolves (dig, A and PTR) to the leased address at once, without the client
//! ever sending a name; it survives kill -9 and restart, and goes when the host is deleted.
//! Needs root.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use rack_tests::{ApplianceRack, RackNet, workspace_bin};
use sha2::{Digest, Sha256};

const MAC: &str = "52:54:00:74:01:07";
const NAME: &str = "node-52-54-00-74-01-07";

fn dig(rack: &RackNet, args: &[&str]) -> Result<String> {
    let mut cmd = rack.in_ns("dig");
    cmd.arg(format!("@{}", rack.addr))
        .args(["+short", "+time=1", "+tries=1"])
        .args(args);
    Ok(common::run_cmd(&mut cmd)?.stdout_lossy().trim().to_owned())
}

async fn wait_dig(rack: &RackNet, args: &[&str], want: &str) -> Result<()> {
    let found = common::wait_for(Duration::from_secs(5), || {
        let got = dig(rack, args).unwrap_or_default();
        async move { (got == want).then_some(()) }
    })
    .await;
    ensure!(
        found.is_some(),
        "dig {args:?}: wanted {want:?}, got {:?}",
        dig(rack, args)
    );
    Ok(())
}

fn curl(rack: &RackNet, args: &[&str]) -> Result<String> {
    let mut cmd = rack.in_ns("curl");
    cmd.args(["-sS", "--fail-with-body", "--max-time", "10"])
        .args(args);
    Ok(common::run_cmd(&mut cmd)?.stdout_lossy())
}

fn tiny_image(dir: &Path) -> Result<std::path::PathBuf> {
    let out = dir.join("tiny");
    std::fs::create_dir_all(&out)?;
    let data = vec![9u8; 8192];
    std::fs::write(out.join("disk.raw"), &data)?;
    let manifest = serde_json::json!({
        "name": "tiny",
        "artifacts": [{"path": "disk.raw", "sha256": hex::encode(Sha256::digest(&data)), "size": data.len()}],
    });
    std::fs::write(out.join("manifest.json"), manifest.to_string())?;
    Ok(out)
}

#[tokio::test]
async fn inventory_hostnames_resolve_at_the_leased_address() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ramdisk = dir.path().join("ramdisk");
    std::fs::create_dir_all(&ramdisk)?;
    let mut app = ApplianceRack::start(&workspace_bin("provisioner")?, [74, 1], &ramdisk)?;
    let (client_ns, client_if) = app.rack.add_client_ns()?;
    common::run_cmd(
        Command::new("ip").args(["-n", &client_ns, "link", "set", &client_if, "address", MAC]),
    )?;

    // A stock dhclient gets a lease and sends no host name.
    let bound = rack_tests::dhclient_bound(&client_ns, &client_if, dir.path(), "", false).await?;
    let ip = bound
        .get("new_ip_address")
        .context("no new_ip_address")?
        .clone();
    ensure!(dig(&app.rack, &[&format!("{NAME}.rack.test")])?.is_empty());

    // The host network-boots: its script carries the imager secret.
    let base = format!("http://{}", app.rack.addr);
    let script = curl(
        &app.rack,
        &[&format!("{base}/boot/{}.ipxe", MAC.replace(':', "-"))],
    )?;
    let secret = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("provisioner.secret="))
        .with_context(|| format!("no secret in {script}"))?
        .to_owned();
    app.cli(&[
        "images",
        "import",
        &tiny_image(dir.path())?.to_string_lossy(),
    ])?;
    app.cli(&[
        "rules",
        "add",
        "--image",
        "tiny",
        "--hostname",
        "node-{mac}",
    ])?;
    let inventory = serde_json::json!({
        "cpu_model": "QEMU Virtual CPU", "cpu_count": 1, "memory_bytes": 1073741824u64,
        "disks": [{"name": "vda", "size_bytes": 4294967296u64, "rotational": false}],
        "nics": [{"name": "eth0", "mac": MAC, "link": true}],
        "boot_mode": "bios",
    });
    curl(
        &app.rack,
        &[
            "-H",
            &format!("Authorization: Bearer {secret}"),
            "-H",
            "Content-Type: application/json",
            "--data",
            &inventory.to_string(),
            &format!("{base}/api/v1/machine/inventory"),
        ],
    )?;

    // The rule named it: A and PTR answer at once, with the leased address.
    let fqdn = format!("{NAME}.rack.test");
    wait_dig(&app.rack, &[&fqdn], &ip).await?;
    let octets: Vec<&str> = ip.split('.').rev().collect();
    let ptr = format!("{}.in-addr.arpa", octets.join("."));
    wait_dig(&app.rack, &["-t", "PTR", &ptr], &format!("{fqdn}.")).await?;

    // kill -9 and restart: rebuilt from the persisted leases and inventory.
    app.kill9();
    app.restart()?;
    wait_dig(&app.rack, &[&fqdn], &ip).await?;

    // Deleting the host removes its records.
    app.cli(&["hosts", "delete", MAC])?;
    wait_dig(&app.rack, &[&fqdn], "").await?;
    let log = app.daemon().log().join("\n");
    ensure!(!log.contains(&secret), "the imager secret reached the log");
    Ok(())
}
