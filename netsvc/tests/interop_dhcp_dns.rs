//! DHCP and DNS together in the `netsvc` binary: a lease granted to a stock dhclient in a
//! namespace becomes resolvable by dig with a bumped SOA serial, DHCP hands out the appliance as
//! DNS server and the rack domain, and the record survives a restart (rebuilt from the leases).
//! Two clients asking for one host name: the first keeps it across renewals and a restart, and
//! the conflict is logged once. Needs root.

mod support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use dhcproto::v4::{self, DhcpOption, MessageType};
use rack_tests::{Daemon, RackNet};
use support::dhcp::{BROADCAST, SHORT, dora_with, exchange, in_ns, message, msg_type};
use support::{Link, Netsvc, config_dir, sh};

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
    let bound = rack_tests::dhclient_bound(
        &client_ns,
        &client_if,
        dir.path(),
        "send host-name \"web1\";\nrequest subnet-mask, domain-name, domain-name-servers;\n",
        true,
    )
    .await?;
    let var = |k: &str| bound.get(k).cloned();
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

/// DHCP options of a client asking for host name `web` at `ip`.
fn wants_web_at(ip: Ipv4Addr) -> impl Fn(&mut v4::Message) + Send + 'static {
    move |m: &mut v4::Message| {
        m.opts_mut().insert(DhcpOption::Hostname("web".into()));
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    }
}

#[tokio::test]
async fn first_owner_keeps_a_contested_name_across_restart_and_conflict_is_logged_once()
-> anyhow::Result<()> {
    let link = Link::new()?;
    sh(&[
        "ip",
        "-n",
        &link.cli,
        "addr",
        "add",
        "10.61.1.50/24",
        "dev",
        &link.cli_if,
    ])?;
    let state = tempfile::tempdir()?;
    let (_config, cfg) = config_dir(&format!(
        r#"state_dir = "{state}"
boot_dir = "{state}"
[dhcp]
interfaces = ["{iface}"]
router_advertisements = false
[[dhcp.subnet]]
net = "10.61.1.0/24"
pools = ["10.61.1.100-10.61.1.120"]
[dns]
domain = "rack.test"
conflict_suffix = ""
"#,
        state = state.path().display(),
        iface = link.srv_if,
    ))?;
    let mut srv = Netsvc::start(Some(&link.srv), &["--config", &cfg]).await?;
    // The first owner has the higher address, so replaying in address order would be wrong.
    let (first, second) = (Ipv4Addr::new(10, 61, 1, 120), Ipv4Addr::new(10, 61, 1, 110));
    in_ns(&link.cli, &link.cli_if, move |sock| {
        ensure!(dora_with(sock, 0x1, wants_web_at(first))? == Some(first));
        ensure!(dora_with(sock, 0x2, wants_web_at(second))? == Some(second));
        // The second client renews twice (INIT-REBOOT style): still a conflict, not news.
        for _ in 0..2 {
            let mut r = message(0x2, MessageType::Request, Ipv4Addr::UNSPECIFIED);
            wants_web_at(second)(&mut r);
            let ack = exchange(sock, &r, BROADCAST, SHORT)?.context("no ACK")?;
            ensure!(msg_type(&ack) == Some(MessageType::Ack), "{ack:?}");
        }
        Ok(())
    })
    .with_context(|| format!("log:\n{}", srv.log()))?;
    let published = common::wait_for(Duration::from_secs(5), || {
        let log = srv.log();
        async move {
            let n = log
                .lines()
                .filter(|l| l.contains("lease published in DNS") && l.contains("10.61.1.110"))
                .count();
            (n >= 3).then_some(())
        }
    })
    .await;
    ensure!(
        published.is_some(),
        "bindings not published:\n{}",
        srv.log()
    );
    let web = |srv: &Netsvc| {
        dig(&link.cli, "10.61.1.1", &["web.rack.test", "A"])
            .with_context(|| format!("log:\n{}", srv.log()))
    };
    assert_eq!(web(&srv)?, first.to_string());
    let conflicts = srv.log().matches("\"host name conflict\"").count();
    assert_eq!(
        conflicts,
        1,
        "conflict logged {conflicts} times:\n{}",
        srv.log()
    );

    // Restart: the records are rebuilt from the leases, and the first owner keeps the name.
    assert_eq!(srv.term()?, Some(0), "log:\n{}", srv.log());
    drop(srv);
    let srv = Netsvc::start(Some(&link.srv), &["--config", &cfg]).await?;
    let answer = common::wait_for(Duration::from_secs(5), || {
        let a = web(&srv).unwrap_or_default();
        async move { (!a.is_empty()).then_some(a) }
    })
    .await
    .with_context(|| format!("web.rack.test gone after restart:\n{}", srv.log()))?;
    assert_eq!(answer, first.to_string(), "log:\n{}", srv.log());
    Ok(())
}
