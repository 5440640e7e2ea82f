//! DHCP interop with stock clients, in network namespaces, against the real `netsvc` binary:
//! dhclient, udhcpc and perfdhcp (relayed), a hand-made relay with option 82, and kill -9
//! with a restart. Needs root.

mod support;

use std::collections::HashMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use camino::Utf8PathBuf;
use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Decodable, Encodable};
use netsvc::dhcp::{LeaseStore, SqliteLeaseStore};
use support::{Link, Netsvc, config_dir, sh};

const MAC_RESERVED: &str = "52:54:00:61:00:10";

fn config(link: &Link, state: &str, pool_end: u8) -> String {
    format!(
        r#"state_dir = "{state}"
[dhcp]
interfaces = ["{iface}"]
lease_time_secs = 600
http_port = 8080
[[dhcp.subnet]]
net = "10.61.1.0/24"
pools = ["10.61.1.100-10.61.1.{pool_end}"]
routers = ["10.61.1.1"]
dns_servers = ["10.61.1.1", "10.61.1.3"]
domain = "rack.test"
ntp_servers = ["10.61.1.1"]
mtu = 1400
routes = [{{ dest = "192.168.50.0/24", via = "10.61.1.254" }}]
[[dhcp.subnet]]
net = "10.61.2.0/24"
pools = ["10.61.2.100-10.61.2.150"]
routers = ["10.61.2.1"]
[[dhcp.reservation]]
mac = "{MAC_RESERVED}"
ip = "10.61.1.10"
hostname = "node10"
"#,
        iface = link.srv_if
    )
}

/// The environment of each hook-script invocation, in order.
fn hook_runs(path: &str) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split("---\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            b.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
                .collect()
        })
        .collect()
}

fn hook_script(dir: &std::path::Path, out: &str) -> anyhow::Result<String> {
    let path = dir.join("hook.sh");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nenv >> {out}\necho --- >> {out}\n"),
    )?;
    sh(&["chmod", "+x", path.to_str().context("utf8")?])?;
    Ok(path.to_string_lossy().into_owned())
}

/// Runs dhclient once in the client namespace with `conf`; returns the BOUND environment.
async fn dhclient(
    link: &Link,
    dir: &std::path::Path,
    conf: &str,
) -> anyhow::Result<HashMap<String, String>> {
    let out = dir.join("hook.out").to_string_lossy().into_owned();
    let _ = std::fs::remove_file(&out);
    let script = hook_script(dir, &out)?;
    let cf = dir.join("dhclient.conf");
    std::fs::write(&cf, conf)?;
    let lf = dir.join("dhclient.leases");
    // dhclient insists that the lease file exists.
    std::fs::write(&lf, "")?;
    let pf = dir.join("dhclient.pid");
    let mut child = Link::cmd(
        &link.cli,
        &[
            "dhclient",
            "-d",
            "-1",
            "-cf",
            cf.to_str().context("utf8")?,
            "-sf",
            &script,
            "-lf",
            lf.to_str().context("utf8")?,
            "-pf",
            pf.to_str().context("utf8")?,
            &link.cli_if,
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()?;
    let bound = common::wait_for(Duration::from_secs(20), || {
        let runs = hook_runs(&out);
        async move {
            runs.into_iter()
                .find(|r| r.get("reason").map(String::as_str) == Some("BOUND"))
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    bound.context("dhclient never reached BOUND")
}

const DHCLIENT_CONF: &str =
    "option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
request subnet-mask, routers, domain-name, domain-name-servers, host-name, interface-mtu,
  rfc3442-classless-static-routes, ntp-servers;
";

#[tokio::test]
async fn dhclient_gets_lease_with_options_and_it_is_durable() -> anyhow::Result<()> {
    let link = Link::new()?;
    sh(&[
        "ip",
        "-n",
        &link.cli,
        "link",
        "set",
        &link.cli_if,
        "address",
        MAC_RESERVED,
    ])?;
    let state = tempfile::tempdir()?;
    let (dir, cfg) = config_dir(&config(&link, state.path().to_str().context("utf8")?, 150))?;
    let mut srv = Netsvc::start(Some(&link.srv), &["--config", &cfg]).await?;

    let env = dhclient(&link, dir.path(), DHCLIENT_CONF).await?;
    let want = [
        ("new_ip_address", "10.61.1.10"),
        ("new_subnet_mask", "255.255.255.0"),
        ("new_routers", "10.61.1.1"),
        ("new_domain_name_servers", "10.61.1.1 10.61.1.3"),
        ("new_domain_name", "rack.test"),
        ("new_host_name", "node10"),
        ("new_ntp_servers", "10.61.1.1"),
        ("new_interface_mtu", "1400"),
        ("new_dhcp_lease_time", "600"),
        ("new_dhcp_renewal_time", "300"),
        ("new_dhcp_rebinding_time", "525"),
        ("new_dhcp_server_identifier", "10.61.1.1"),
        (
            "new_rfc3442_classless_static_routes",
            "24 192 168 50 10 61 1 254",
        ),
    ];
    for (k, v) in want {
        assert_eq!(
            env.get(k).map(String::as_str),
            Some(v),
            "{k} in {env:?}\nlog:\n{}",
            srv.log()
        );
    }
    // A plain client gets no boot information.
    assert!(!env.contains_key("new_filename"), "{env:?}");

    // SIGTERM drains and exits 0; the lease is in the database.
    assert_eq!(srv.term()?, Some(0), "log:\n{}", srv.log());
    let db = Utf8PathBuf::from_path_buf(state.path().join(SqliteLeaseStore::FILE_NAME))
        .map_err(|_| anyhow::anyhow!("utf8"))?;
    let leases = SqliteLeaseStore::open(&db)?.load()?;
    ensure!(leases.len() == 1, "{leases:?}");
    assert_eq!(leases[0].ip, Ipv4Addr::new(10, 61, 1, 10));
    assert_eq!(leases[0].mac.to_string(), MAC_RESERVED);
    assert_eq!(leases[0].hostname.as_deref(), Some("node10"));
    Ok(())
}

#[tokio::test]
async fn pxe_and_ipxe_clients_get_their_boot_files() -> anyhow::Result<()> {
    let link = Link::new()?;
    let state = tempfile::tempdir()?;
    let (dir, cfg) = config_dir(&config(&link, state.path().to_str().context("utf8")?, 150))?;
    let srv = Netsvc::start(Some(&link.srv), &["--config", &cfg]).await?;

    // dhclient as a legacy BIOS PXE client.
    let conf = format!(
        "{DHCLIENT_CONF}send vendor-class-identifier \"PXEClient:Arch:00000:UNDI:002001\";\n"
    );
    let env = dhclient(&link, dir.path(), &conf).await?;
    assert_eq!(
        env.get("new_filename").map(String::as_str),
        Some("undionly.kpxe"),
        "{env:?}\n{}",
        srv.log()
    );
    assert!(
        env.get("new_ip_address")
            .is_some_and(|ip| ip.starts_with("10.61.1.1")),
        "{env:?}"
    );

    // dhclient as iPXE (user class): the per-host script URL.
    let mac = sh(&["ip", "-n", &link.cli, "-br", "link", "show", &link.cli_if])?;
    let mac = mac
        .split_whitespace()
        .nth(2)
        .context("mac")?
        .replace(':', "-");
    let conf = format!("{DHCLIENT_CONF}send user-class \"iPXE\";\n");
    let env = dhclient(&link, dir.path(), &conf).await?;
    assert_eq!(
        env.get("new_filename").map(String::as_str),
        Some(format!("http://10.61.1.1:8080/boot/{mac}.ipxe").as_str()),
        "{env:?}"
    );

    // udhcpc with the broadcast flag, as a UEFI x64 PXE client (option 93 = 7).
    let out = dir.path().join("udhcpc.out").to_string_lossy().into_owned();
    let script = hook_script(dir.path(), &out)?;
    let _ = std::fs::remove_file(&out);
    let mut c = Link::cmd(
        &link.cli,
        &[
            "busybox",
            "udhcpc",
            "-i",
            &link.cli_if,
            "-f",
            "-q",
            "-n",
            "-B",
            "-t",
            "5",
            "-s",
            &script,
            "-V",
            "PXEClient:Arch:00007:UNDI:003016",
            "-x",
            "93:0007",
            "-O",
            "staticroutes",
        ],
    );
    let res = common::run_cmd(&mut c)?;
    drop(res);
    let runs = hook_runs(&out);
    let bound = runs
        .iter()
        .find(|r| r.get("1").is_none() && r.contains_key("ip"))
        .with_context(|| format!("udhcpc got no lease: {runs:?}\n{}", srv.log()))?;
    assert_eq!(
        bound.get("boot_file").map(String::as_str),
        Some("snponly.efi"),
        "{bound:?}"
    );
    assert_eq!(
        bound.get("siaddr").map(String::as_str),
        Some("10.61.1.1"),
        "{bound:?}"
    );
    assert_eq!(
        bound.get("mtu").map(String::as_str),
        Some("1400"),
        "{bound:?}"
    );
    assert_eq!(
        bound.get("staticroutes").map(String::as_str),
        Some("192.168.50.0/24 10.61.1.254"),
        "{bound:?}"
    );
    Ok(())
}

/// Counts from perfdhcp's report: (DISCOVERs sent, ACKs received).
fn perfdhcp_counts(out: &str) -> (u64, u64) {
    let mut section = "";
    let (mut sent, mut acks) = (0, 0);
    for line in out.lines() {
        if line.contains("Statistics for: DISCOVER-OFFER") {
            section = "do";
        } else if line.contains("Statistics for: REQUEST-ACK") {
            section = "ra";
        }
        let num = |l: &str| {
            l.split_whitespace()
                .nth(2)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        if section == "do" && line.starts_with("sent packets:") {
            sent = num(line);
        }
        if section == "ra" && line.starts_with("received packets:") {
            acks = num(line);
        }
    }
    (sent, acks)
}

/// perfdhcp from the client namespace, as a relay (giaddr = 10.61.1.2).
fn perfdhcp(
    link: &Link,
    clients: u32,
    mac_base: &str,
    rate: u32,
    secs: u32,
) -> anyhow::Result<(u64, u64)> {
    let mut c = Link::cmd(
        &link.cli,
        &[
            "perfdhcp",
            "-4",
            "-l",
            &link.cli_if,
            "-R",
            &clients.to_string(),
            "-b",
            &format!("mac={mac_base}"),
            "-r",
            &rate.to_string(),
            "-p",
            &secs.to_string(),
            "-n",
            &clients.to_string(),
            "-W",
            "500000",
            "-o",
            "60,505845436c69656e74",
            "-o",
            "93,0007",
            "10.61.1.1",
        ],
    );
    c.stderr(Stdio::piped());
    // perfdhcp exits 3 when some exchanges did not complete; that is a result, not an error.
    let out = match common::run_cmd(&mut c) {
        Ok(o) => o.stdout_lossy(),
        Err(common::CommandError::Failed { status, .. }) if status.code() == Some(3) => {
            bail!("perfdhcp lost exchanges (exit 3)");
        }
        Err(e) => return Err(e.into()),
    };
    Ok(perfdhcp_counts(&out))
}

#[tokio::test]
async fn relayed_requests_are_answered() -> anyhow::Result<()> {
    let link = Link::new()?;
    sh(&[
        "ip",
        "-n",
        &link.cli,
        "addr",
        "add",
        "10.61.1.2/24",
        "dev",
        &link.cli_if,
    ])?;
    sh(&[
        "ip",
        "-n",
        &link.cli,
        "addr",
        "add",
        "10.61.2.1/24",
        "dev",
        "lo",
    ])?;
    sh(&[
        "ip",
        "-n",
        &link.srv,
        "route",
        "add",
        "10.61.2.0/24",
        "via",
        "10.61.1.2",
    ])?;
    let state = tempfile::tempdir()?;
    let (_dir, cfg) = config_dir(&config(&link, state.path().to_str().context("utf8")?, 199))?;
    let srv = Netsvc::start(Some(&link.srv), &["--config", &cfg]).await?;

    // perfdhcp smoke: 50 full DORA exchanges through the relay path, every one ACKed.
    let (sent, acks) = perfdhcp(&link, 50, "02:61:00:00:00:01", 100, 5)?;
    assert_eq!((sent, acks), (50, 50), "log:\n{}", srv.log());

    // A relay on another subnet (giaddr 10.61.2.1) with option 82: answered from that
    // subnet's pool, to the relay's port 67, with option 82 echoed byte for byte.
    let ns = link.cli.clone();
    let reply = std::thread::spawn(move || relay_exchange(&ns))
        .join()
        .map_err(|_| anyhow::anyhow!("relay thread panicked"))??;
    assert_eq!(reply.opts().msg_type(), Some(MessageType::Offer));
    let yiaddr = reply.yiaddr();
    assert!(
        (100..=150).contains(&yiaddr.octets()[3]) && yiaddr.octets()[..3] == [10, 61, 2],
        "{yiaddr}"
    );
    assert_eq!(reply.giaddr(), Ipv4Addr::new(10, 61, 2, 1));
    assert_eq!(
        reply.opts().get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 61, 2, 1)]))
    );
    Ok(())
}

const OPT82: [u8; 12] = [1, 4, b'p', b'o', b'r', b't', 2, 4, b's', b'w', b'0', b'1'];

/// In namespace `ns`: sends a relayed DISCOVER from 10.61.2.1:67 and returns the reply.
fn relay_exchange(ns: &str) -> anyhow::Result<v4::Message> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: setns on a valid namespace fd; it only affects this (dedicated) thread.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    ensure!(rc == 0, "setns: {}", std::io::Error::last_os_error());
    let sock = UdpSocket::bind("10.61.2.1:67")?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut msg = v4::Message::new(
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::new(10, 61, 2, 1),
        &[2, 0x61, 2, 0, 0, 1],
    );
    msg.set_hops(1);
    msg.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    let mut bytes = msg.to_vec()?;
    // Option 82 appended raw, before End.
    ensure!(bytes.pop() == Some(255));
    bytes.extend_from_slice(&[82, u8::try_from(OPT82.len())?]);
    bytes.extend_from_slice(&OPT82);
    bytes.push(255);
    sock.send_to(&bytes, "10.61.1.1:67")?;
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf)?;
    let raw = &buf[..n];
    let pos = raw
        .windows(OPT82.len() + 2)
        .position(|w| w[0] == 82 && w[2..] == OPT82);
    ensure!(pos.is_some(), "option 82 not echoed: {raw:?}");
    Ok(v4::Message::from_bytes(raw)?)
}

#[tokio::test]
async fn kill9_restart_reuses_no_live_address() -> anyhow::Result<()> {
    let link = Link::new()?;
    sh(&[
        "ip",
        "-n",
        &link.cli,
        "addr",
        "add",
        "10.61.1.2/24",
        "dev",
        &link.cli_if,
    ])?;
    let state = tempfile::tempdir()?;
    let (_dir, cfg) = config_dir(&config(&link, state.path().to_str().context("utf8")?, 219))?;
    let db = Utf8PathBuf::from_path_buf(state.path().join(SqliteLeaseStore::FILE_NAME))
        .map_err(|_| anyhow::anyhow!("utf8"))?;
    let mut srv = Netsvc::start(Some(&link.srv), &["--config", &cfg]).await?;

    // 60 clients at 30/s: kill -9 the server about a second into the run.
    let cli = link.cli.clone();
    let cli_if = link.cli_if.clone();
    let load = std::thread::spawn(move || {
        let mut c = Link::cmd(
            &cli,
            &[
                "perfdhcp",
                "-4",
                "-l",
                &cli_if,
                "-R",
                "60",
                "-b",
                "mac=02:61:01:00:00:01",
                "-r",
                "30",
                "-p",
                "4",
                "-n",
                "60",
                "-W",
                "500000",
                "10.61.1.1",
            ],
        );
        match common::run_cmd(&mut c) {
            Ok(o) => o.stdout_lossy(),
            Err(common::CommandError::Failed { .. }) => String::new(),
            Err(e) => panic!("perfdhcp: {e}"),
        }
    });
    common::wait_for(Duration::from_secs(10), || {
        let n = srv.log().matches("lease bound").count();
        async move { (n >= 10).then_some(()) }
    })
    .await
    .context("no leases bound before the kill")?;
    srv.kill9();
    let out = load
        .join()
        .map_err(|_| anyhow::anyhow!("perfdhcp thread panicked"))?;
    let (_, acked) = perfdhcp_counts(&out);
    let before = SqliteLeaseStore::open(&db)?.load()?;
    // Every ACK the clients saw was durable before it was sent.
    ensure!(
        before.len() as u64 >= acked,
        "{} stored < {acked} ACKed",
        before.len()
    );
    ensure!(before.len() >= 10, "only {} leases stored", before.len());

    // Restart; 60 new clients: none may get an address a live lease of another client holds.
    let srv = Netsvc::start(Some(&link.srv), &["--config", &cfg]).await?;
    let (sent, acks) = perfdhcp(&link, 60, "02:61:02:00:00:01", 100, 5)?;
    assert_eq!((sent, acks), (60, 60), "log:\n{}", srv.log());
    drop(srv);
    let after = SqliteLeaseStore::open(&db)?.load()?;
    for old in &before {
        let holder = after
            .iter()
            .find(|l| l.ip == old.ip)
            .context("old lease vanished")?;
        assert_eq!(
            holder.mac, old.mac,
            "address {} reused after restart",
            old.ip
        );
    }
    assert_eq!(after.len(), before.len() + 60);
    Ok(())
}

#[tokio::test]
async fn dhclient_release_frees_the_address() -> anyhow::Result<()> {
    let link = Link::new()?;
    let state = tempfile::tempdir()?;
    // A pool of one address: the second client gets it only once the first released it.
    let (dir, cfg) = config_dir(&config(&link, state.path().to_str().context("utf8")?, 100))?;
    let srv = Netsvc::start(Some(&link.srv), &["--config", &cfg]).await?;
    let env = dhclient(&link, dir.path(), DHCLIENT_CONF).await?;
    ensure!(
        env.get("new_ip_address").map(String::as_str) == Some("10.61.1.100"),
        "{env:?}"
    );
    let lf = dir.path().join("dhclient.leases");
    let written = common::wait_for(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&lf).unwrap_or_default();
        async move { text.contains("fixed-address 10.61.1.100").then_some(()) }
    })
    .await;
    ensure!(written.is_some(), "dhclient wrote no lease");
    // What dhclient's stock script does on BOUND: RELEASE is unicast from the leased address.
    sh(&[
        "ip",
        "-n",
        &link.cli,
        "addr",
        "add",
        "10.61.1.100/24",
        "dev",
        &link.cli_if,
    ])?;
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let mut c = Link::cmd(
        &link.cli,
        &[
            "dhclient",
            "-r",
            "-cf",
            &path("dhclient.conf"),
            "-sf",
            &path("hook.sh"),
            "-lf",
            &path("dhclient.leases"),
            "-pf",
            &path("dhclient.pid"),
            &link.cli_if,
        ],
    );
    common::run_cmd(&mut c)?;
    let released = common::wait_for(Duration::from_secs(5), || {
        let log = srv.log();
        async move { log.contains("\"state\":\"released\"").then_some(()) }
    })
    .await;
    ensure!(
        released.is_some(),
        "the lease did not end as released; log:\n{}",
        srv.log()
    );
    sh(&["ip", "-n", &link.cli, "addr", "flush", "dev", &link.cli_if])?;
    sh(&[
        "ip",
        "-n",
        &link.cli,
        "link",
        "set",
        &link.cli_if,
        "address",
        "52:54:00:65:00:42",
    ])?;
    let env = dhclient(&link, dir.path(), DHCLIENT_CONF).await?;
    ensure!(
        env.get("new_ip_address").map(String::as_str) == Some("10.61.1.100"),
        "released address not handed to the next client: {env:?}\n{}",
        srv.log()
    );
    Ok(())
}
