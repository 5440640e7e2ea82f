//! DHCP and DNS together in the `netsvc` binary: a lease granted to a stock dhclient in a
//! namespace becomes resolvable by dig with a bumped SOA serial, DHCP hands out the appliance as
//! DNS server and the rack domain, and the record survives a restart (rebuilt from the leases).
//! Needs root.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use rack_tests::{Daemon, RackNet};

fn start_netsvc(rack: &RackNet, config: &Path) -> anyhow::Result<Daemon> {
    let mut cmd = rack.in_ns(env!("CARGO_BIN_EXE_netsvc"));
    cmd.arg("--config")
        .arg(config)
        .env("RUST_LOG", "netsvc=debug");
    let mut d = Daemon::spawn(cmd)?;
    for proto in ["dhcp", "dns"] {
        d.wait_for_lines(
            &["listening", &format!("\"proto\":\"{proto}\"")],
            1,
            Duration::from_secs(30),
        )?;
    }
    Ok(d)
}

/// `dig +short` from inside the client namespace.
fn dig(ns: &str, server: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "dig", "+short", "+time=2", "+tries=2"])
        .arg(format!("@{server}"))
        .args(args);
    Ok(common::run_cmd(&mut cmd)?.stdout_lossy().trim().to_owned())
}

fn soa_serial(ns: &str, server: &str) -> anyhow::Result<u32> {
    let soa = dig(ns, server, &["rack.test", "SOA"])?;
    soa.split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no serial in SOA answer {soa:?}"))
}

#[tokio::test]
async fn lease_becomes_resolvable_and_survives_restart() -> anyhow::Result<()> {
    let mut rack = RackNet::create([70, 20])?;
    let (client_ns, client_if) = rack.add_client_ns()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("netsvc.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
boot_dir = "{state}"
[dhcp]
interfaces = ["{iface}"]
[[dhcp.subnet]]
net = "10.70.20.0/24"
pools = ["10.70.20.100-10.70.20.120"]
[dns]
domain = "rack.test"
"#,
            state = dir.path().display(),
            iface = rack.ns_iface,
        ),
    )?;
    let mut netsvc = start_netsvc(&rack, &config)?;
    let server = rack.addr.to_string();
    // Before the lease, asked from the appliance's own namespace (the client has no address).
    let serial_before = soa_serial(&rack.ns, &server)?;
    ensure!(
        dig(&rack.ns, &server, &["web1.rack.test", "A"])?.is_empty(),
        "web1 resolves before it has a lease"
    );

    // A stock dhclient asks for a lease and sends its host name.
    let out = dir.path().join("hook.out");
    let hook = dir.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nif [ \"$reason\" = BOUND ]; then ip addr add \"$new_ip_address/$new_subnet_mask\" dev \"$interface\"; fi\nenv >> {0}\necho --- >> {0}\n",
            out.display()
        ),
    )?;
    common::run_cmd(Command::new("chmod").arg("+x").arg(&hook))?;
    let conf = dir.path().join("dhclient.conf");
    std::fs::write(
        &conf,
        "send host-name \"web1\";\nrequest subnet-mask, domain-name, domain-name-servers;\n",
    )?;
    let lease_file = dir.path().join("dhclient.leases");
    std::fs::write(&lease_file, "")?;
    let mut dhclient = Command::new("ip");
    dhclient
        .args(["netns", "exec", &client_ns, "dhclient", "-d", "-1", "-cf"])
        .arg(&conf)
        .arg("-sf")
        .arg(&hook)
        .arg("-lf")
        .arg(&lease_file)
        .arg("-pf")
        .arg(dir.path().join("dhclient.pid"))
        .arg(&client_if)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = dhclient
        .spawn()
        .context("spawn dhclient (isc-dhcp-client)")?;
    let bound = common::wait_for(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        async move {
            text.split("---\n")
                .find(|run| run.contains("reason=BOUND"))
                .map(str::to_owned)
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let bound = bound.context("dhclient never reached BOUND")?;
    let var = |k: &str| {
        bound
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('\'').to_owned())
    };
    let ip = var("new_ip_address").context("no address in BOUND")?;
    assert_eq!(var("new_domain_name").as_deref(), Some("rack.test"));
    assert_eq!(var("new_domain_name_servers"), Some(server.clone()));

    // Resolvable within a second, with a bumped serial, forward and reverse.
    let resolved = common::wait_for(Duration::from_secs(1), || {
        let r = dig(&client_ns, &server, &["web1.rack.test", "A"]).unwrap_or_default();
        let ip = ip.clone();
        async move { (r == ip).then_some(()) }
    })
    .await;
    ensure!(
        resolved.is_some(),
        "web1.rack.test did not resolve to {ip} within 1 s; netsvc log:\n{}",
        netsvc.log().join("\n")
    );
    ensure!(
        soa_serial(&client_ns, &server)? > serial_before,
        "SOA serial not bumped"
    );
    let reverse = dig(&client_ns, &server, &["-x", &ip])?;
    assert_eq!(reverse, "web1.rack.test.");

    // A restart rebuilds the record from the persisted leases.
    netsvc.signal(nix::sys::signal::Signal::SIGTERM)?;
    ensure!(
        netsvc.wait(Duration::from_secs(15))?.success(),
        "netsvc did not stop cleanly"
    );
    drop(netsvc);
    let _netsvc = start_netsvc(&rack, &config)?;
    assert_eq!(dig(&client_ns, &server, &["web1.rack.test", "A"])?, ip);
    Ok(())
}
