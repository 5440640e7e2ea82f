//! The `netsvc` binary: exit codes, the `listening` line, a relayed exchange on loopback,
//! SIGTERM draining to exit 0, and a DNS-only configuration answering from its zone files.

mod support;

use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use dhcproto::v4::{self, DhcpOption, MessageType};
use dhcproto::{Decodable, Encodable};
use support::{Netsvc, config_dir};

fn exit_code(args: &[&str]) -> anyhow::Result<Option<i32>> {
    let st = Command::new(env!("CARGO_BIN_EXE_netsvc"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    Ok(st.code())
}

#[test]
fn usage_error_exits_2() -> anyhow::Result<()> {
    assert_eq!(exit_code(&["--no-such-flag"])?, Some(2));
    Ok(())
}

#[test]
fn config_errors_exit_78() -> anyhow::Result<()> {
    let (_d, cfg) = config_dir("[dhcp]\nmode = \"relay\"\n")?;
    assert_eq!(exit_code(&["--config", &cfg])?, Some(78));
    assert_eq!(
        exit_code(&["--config", "/nonexistent/netsvc.toml"])?,
        Some(78)
    );
    assert_eq!(exit_code(&["--dhcp-range", "10.0.0.9-10.0.0.1"])?, Some(78));
    Ok(())
}

#[tokio::test]
async fn serves_relayed_discover_on_loopback_and_drains_on_sigterm() -> anyhow::Result<()> {
    // A relay address unique to this process, on loopback (127/8 is all local).
    let pid = std::process::id();
    let relay = Ipv4Addr::new(
        127,
        61,
        u8::try_from((pid >> 8) & 0xff)?,
        u8::try_from(pid & 0xff)?.max(2),
    );
    let state = tempfile::tempdir()?;
    let mut srv = Netsvc::start(
        None,
        &[
            "--interface",
            "lo",
            "--listen",
            "127.0.0.1:0",
            "--dhcp-range",
            "127.61.250.10-127.61.250.20",
            "--state-dir",
            state.path().to_str().context("utf8")?,
            "--boot-dir",
            state.path().to_str().context("utf8")?,
            "--tftp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
    )
    .await?;
    assert!(
        srv.addr.starts_with("127.0.0.1:") && !srv.addr.ends_with(":0"),
        "{}",
        srv.addr
    );

    let sock = UdpSocket::bind((relay, 67))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut msg = v4::Message::new(
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        relay,
        &[2, 0x61, 0, 0, 0, 9],
    );
    msg.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    // Garbage first: it must be dropped without disturbing the next client.
    sock.send_to(&[1, 2, 3], &srv.addr)?;
    sock.send_to(&msg.to_vec()?, &srv.addr)?;
    let mut buf = [0u8; 1500];
    let (n, _) = sock
        .recv_from(&mut buf)
        .with_context(|| format!("no offer; log:\n{}", srv.log()))?;
    let offer = v4::Message::from_bytes(&buf[..n])?;
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.xid(), msg.xid());
    assert!(
        (10..=20).contains(&offer.yiaddr().octets()[3]),
        "{}",
        offer.yiaddr()
    );
    assert!(
        srv.log().contains("malformed packet dropped"),
        "{}",
        srv.log()
    );

    assert_eq!(srv.term()?, Some(0), "log:\n{}", srv.log());
    Ok(())
}

#[test]
fn notifies_systemd_ready_after_binding() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let notify = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let dirs = dir.path().to_str().context("utf8")?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_netsvc"))
        .args([
            "--interface",
            "lo",
            "--listen",
            "127.0.0.1:0",
            "--dhcp-range",
            "127.61.251.10-127.61.251.20",
            "--state-dir",
            dirs,
            "--boot-dir",
            dirs,
            "--tftp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .env("NOTIFY_SOCKET", &notify)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut buf = [0u8; 256];
    let got = sock.recv(&mut buf);
    let _ = child.kill();
    let _ = child.wait();
    let n = got.context("no sd_notify message")?;
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    Ok(())
}

#[tokio::test]
async fn dns_only_config_serves_its_zone_files() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let zone = dir.path().join("lab.zone");
    std::fs::write(
        &zone,
        "$ORIGIN lab.test.\n$TTL 60\n\
         @ IN SOA ns.lab.test. admin.lab.test. 42 3600 600 86400 30\n\
         @ IN NS ns\nns IN A 192.0.2.53\nbmc7 IN A 192.0.2.7\n",
    )?;
    let (_cfg_dir, cfg) = config_dir(&format!(
        "[dns]\nlisten = \"127.0.0.1:0\"\nzone_files = [{{ origin = \"lab.test.\", path = \"{}\" }}]\n",
        zone.display()
    ))?;
    let mut srv = Netsvc::start_for(None, &["--config", &cfg], "dns").await?;
    let addr: std::net::SocketAddr = srv.addr.parse().context("dns listening addr")?;
    assert!(addr.port() != 0, "{addr}");
    for transport in ["+notcp", "+tcp"] {
        let mut dig = Command::new("dig");
        dig.args([
            &format!("@{}", addr.ip()),
            "-p",
            &addr.port().to_string(),
            "+time=2",
            "+tries=1",
            "+short",
            transport,
        ]);
        let a = common::run_cmd(dig.args(["bmc7.lab.test.", "A"]))?.stdout_lossy();
        assert_eq!(a.trim(), "192.0.2.7", "{transport}; log:\n{}", srv.log());
    }
    // DNS only: nothing else was started.
    let log = srv.log();
    for proto in ["dhcp", "tftp", "http"] {
        assert!(
            !log.lines()
                .any(|l| l.contains("\"listening\"") && l.contains(&format!("\"{proto}\""))),
            "{proto} started:\n{log}"
        );
    }
    assert_eq!(srv.term()?, Some(0), "log:\n{log}");
    Ok(())
}
