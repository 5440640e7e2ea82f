//! Interop tests of the rack DNS server with stock `dig` (dnsutils), over UDP and TCP.
//!
//! Every test starts the real server in-process on its own loopback address (127.0.63.x, port
//! picked by the kernel) and talks to it with `dig` or a raw UDP socket, except forwarding:
//! two `netsvc` binaries in two network namespaces joined by a veth pair (needs root).

mod support;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::{run_cmd_async, wait_for};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use netsvc::dns::{Config, DnsDeps, Server, ServerHandle, UpsertOutcome, ZoneFile};

const DOMAIN: &str = "rack.test.";

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 63, last], 0))
}

fn base_config(last: u8) -> Config {
    let mut cfg = Config::new(addr(last), Name::from_ascii(DOMAIN).expect("domain"));
    cfg.subnets = vec!["10.63.0.0/16".parse().expect("net")];
    cfg.appliance = Some(Ipv4Addr::new(10, 63, 0, 1));
    cfg.api_port = Some(8443);
    cfg.udp_workers = std::num::NonZeroUsize::new(2).expect("two");
    cfg
}

async fn start(cfg: Config) -> Result<ServerHandle> {
    Server::start(cfg, DnsDeps::default())
        .await
        .context("starting the dns server")
}

/// Runs dig against `server` with `args`; returns stdout.
async fn dig(server: SocketAddr, args: &[&str]) -> Result<String> {
    let mut cmd = tokio::process::Command::new("dig");
    cmd.arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+time=2", "+tries=1"])
        .args(args);
    let out = run_cmd_async(&mut cmd)
        .await
        .with_context(|| format!("dig {args:?}"))?;
    Ok(out.stdout_lossy())
}

/// The answer lines of `dig +short`.
async fn short(server: SocketAddr, args: &[&str]) -> Result<Vec<String>> {
    let mut a = vec!["+short"];
    a.extend_from_slice(args);
    Ok(dig(server, &a)
        .await?
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect())
}

fn status(out: &str) -> Option<&str> {
    let at = out.find("status: ")? + 8;
    out[at..].split(',').next()
}

async fn serial(server: SocketAddr) -> Result<u32> {
    let soa = short(server, &[DOMAIN, "SOA"]).await?;
    let line = soa.first().context("no SOA answer")?;
    line.split_whitespace()
        .nth(2)
        .context("SOA without serial")?
        .parse()
        .context("serial is not a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_authoritative_types_over_udp_and_tcp() -> Result<()> {
    let h = start(base_config(1)).await?;
    let rec = h.records();
    assert!(matches!(
        rec.upsert_host("node1", Ipv4Addr::new(10, 63, 1, 5), "52:54:00:00:00:01"),
        UpsertOutcome::Published {
            suffixed: false,
            ..
        }
    ));
    let s = h.local_addr();
    for transport in ["+notcp", "+tcp"] {
        let a = short(s, &[transport, "node1.rack.test.", "A"]).await?;
        assert_eq!(a, ["10.63.1.5"], "{transport}");
        let ptr = short(s, &[transport, "-x", "10.63.1.5"]).await?;
        assert_eq!(ptr, ["node1.rack.test."], "{transport}");
        let soa = short(s, &[transport, DOMAIN, "SOA"]).await?;
        assert!(
            soa[0].starts_with("ns.rack.test. hostmaster.rack.test. "),
            "{soa:?}"
        );
        let ns = short(s, &[transport, DOMAIN, "NS"]).await?;
        assert_eq!(ns, ["ns.rack.test."]);
        let srv = short(s, &[transport, "_provisioner._tcp.rack.test.", "SRV"]).await?;
        assert_eq!(srv, ["0 0 8443 provisioner.rack.test."]);
        let wk = short(s, &[transport, "provisioner.rack.test.", "A"]).await?;
        assert_eq!(wk, ["10.63.0.1"]);
        let full = dig(s, &[transport, "node1.rack.test.", "A"]).await?;
        assert!(full.contains("flags: qr aa"), "{full}");
        let nx = dig(s, &[transport, "nothere.rack.test.", "A"]).await?;
        assert_eq!(status(&nx), Some("NXDOMAIN"), "{nx}");
        assert!(nx.contains("AUTHORITY: 1"), "{nx}");
        let nodata = dig(s, &[transport, "node1.rack.test.", "AAAA"]).await?;
        assert_eq!(status(&nodata), Some("NOERROR"), "{nodata}");
        assert!(nodata.contains("ANSWER: 0"), "{nodata}");
        // Minimal ANY: one RRset only.
        let any = short(s, &[transport, DOMAIN, "ANY"]).await?;
        assert_eq!(any.len(), 1, "{any:?}");
        // No forwarders configured: other names are refused.
        let other = dig(s, &[transport, "example.org.", "A"]).await?;
        assert_eq!(status(&other), Some("REFUSED"), "{other}");
    }
    h.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_is_resolvable_with_bumped_serial_and_removal_works() -> Result<()> {
    let h = start(base_config(2)).await?;
    let s = h.local_addr();
    let rec = h.records();
    let before = serial(s).await?;
    assert_eq!(before, rec.serial());
    rec.upsert_host("fresh", Ipv4Addr::new(10, 63, 2, 9), "owner-a");
    let after = rec.serial();
    assert!(after > before);
    let seen = wait_for(Duration::from_secs(1), || async {
        let a = short(s, &["fresh.rack.test."]).await.ok()?;
        let sn = serial(s).await.ok()?;
        (a == ["10.63.2.9"] && sn == after).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "new host not served with serial {after} within 1 s"
    );
    // Moving the address updates both A and PTR.
    rec.upsert_host("fresh", Ipv4Addr::new(10, 63, 2, 10), "owner-a");
    assert_eq!(short(s, &["fresh.rack.test."]).await?, ["10.63.2.10"]);
    assert_eq!(short(s, &["-x", "10.63.2.10"]).await?, ["fresh.rack.test."]);
    assert!(short(s, &["-x", "10.63.2.9"]).await?.is_empty());
    rec.remove_owner("owner-a");
    let nx = dig(s, &["fresh.rack.test."]).await?;
    assert_eq!(status(&nx), Some("NXDOMAIN"), "{nx}");
    assert!(rec.serial() > after);
    h.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_conflicts_keep_the_first_owner() -> Result<()> {
    let mut cfg = base_config(3);
    cfg.conflict_suffix = Some("-dup".into());
    let h = start(cfg).await?;
    let s = h.local_addr();
    let rec = h.records();
    let first = rec.upsert_host("web", Ipv4Addr::new(10, 63, 3, 1), "mac-1");
    let second = rec.upsert_host("WEB", Ipv4Addr::new(10, 63, 3, 2), "mac-2");
    let third = rec.upsert_host("web", Ipv4Addr::new(10, 63, 3, 3), "mac-3");
    assert_eq!(
        first,
        UpsertOutcome::Published {
            name: "web".into(),
            suffixed: false
        }
    );
    assert_eq!(
        second,
        UpsertOutcome::Published {
            name: "web-dup".into(),
            suffixed: true
        }
    );
    assert_eq!(
        third,
        UpsertOutcome::Published {
            name: "web-dup2".into(),
            suffixed: true
        }
    );
    // A static/well-known name is never taken by a host.
    let wk = rec.upsert_host("provisioner", Ipv4Addr::new(10, 63, 3, 4), "mac-4");
    assert!(matches!(
        wk,
        UpsertOutcome::Published { suffixed: true, .. }
    ));
    assert_eq!(short(s, &["web.rack.test."]).await?, ["10.63.3.1"]);
    assert_eq!(short(s, &["web-dup.rack.test."]).await?, ["10.63.3.2"]);
    assert_eq!(short(s, &["provisioner.rack.test."]).await?, ["10.63.0.1"]);
    assert_eq!(
        rec.upsert_host("bad.name", Ipv4Addr::new(10, 63, 3, 5), "mac-5"),
        UpsertOutcome::InvalidName
    );
    h.shutdown().await;

    let mut cfg = base_config(4);
    cfg.conflict_suffix = None;
    let h = start(cfg).await?;
    let rec = h.records();
    rec.upsert_host("db", Ipv4Addr::new(10, 63, 4, 1), "mac-1");
    assert_eq!(
        rec.upsert_host("db", Ipv4Addr::new(10, 63, 4, 2), "mac-2"),
        UpsertOutcome::Conflict {
            holder: "mac-1".into()
        }
    );
    assert_eq!(
        short(h.local_addr(), &["db.rack.test."]).await?,
        ["10.63.4.1"]
    );
    h.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answer_is_truncated_and_retried_over_tcp() -> Result<()> {
    let mut cfg = base_config(5);
    cfg.records = (1..=120).map(|i| format!("big IN A 10.63.5.{i}")).collect();
    let h = start(cfg).await?;
    let s = h.local_addr();
    // dig's default (UDP, EDNS 1232) gets TC and retries over TCP by itself.
    let out = dig(s, &["big.rack.test.", "A"]).await?;
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert!(out.contains("ANSWER: 120"), "{out}");
    // With TCP fallback disabled the truncated answer itself is visible.
    let out = dig(s, &["+ignore", "big.rack.test.", "A"]).await?;
    assert!(out.contains(" tc"), "{out}");
    h.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_transfer_only_to_secondaries_and_notify_on_change() -> Result<()> {
    // The "secondary" is a UDP socket on its own loopback address that acknowledges NOTIFY.
    let secondary = UdpSocket::bind(SocketAddr::from(([127, 0, 63, 7], 0)))?;
    secondary.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut cfg = base_config(6);
    cfg.secondaries = vec![secondary.local_addr()?];
    let h = start(cfg).await?;
    let s = h.local_addr();
    let rec = h.records();
    for i in 0..300u16 {
        let [a, b] = i.to_be_bytes();
        rec.upsert_host(
            &format!("h{i}"),
            Ipv4Addr::new(10, 63, 6 + a, b),
            &format!("o{i}"),
        );
    }
    // From the secondary's address: a full transfer over TCP, SOA first and last.
    let axfr = dig(s, &["-b", "127.0.63.7", DOMAIN, "AXFR"]).await?;
    let lines: Vec<&str> = axfr
        .lines()
        .filter(|l| !l.starts_with(';') && !l.is_empty())
        .collect();
    assert!(lines.first().is_some_and(|l| l.contains("SOA")), "{axfr}");
    assert!(lines.last().is_some_and(|l| l.contains("SOA")), "{axfr}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("h299.rack.test.") || l.starts_with("h29.rack.test."))
    );
    assert!(lines.len() >= 300 + 5, "{} records", lines.len());
    let ixfr = dig(s, &["-b", "127.0.63.7", DOMAIN, "IXFR=1"]).await?;
    assert!(ixfr.contains("h12.rack.test."), "{ixfr}");
    let rev = dig(s, &["-b", "127.0.63.7", "63.10.in-addr.arpa.", "AXFR"]).await?;
    assert!(rev.contains("PTR\th5.rack.test."), "{rev}");
    // From anywhere else: refused.
    let refused = dig(s, &["-b", "127.0.63.8", DOMAIN, "AXFR"]).await?;
    assert!(refused.contains("Transfer failed"), "{refused}");
    assert!(!refused.contains("SOA"), "{refused}");

    // A change sends NOTIFY for the zone to the secondary.
    let sock = secondary.try_clone()?;
    let got = tokio::task::spawn_blocking(move || -> Result<Message> {
        let mut buf = [0u8; 1500];
        loop {
            let (n, from) = sock.recv_from(&mut buf).context("no NOTIFY within 3 s")?;
            let m = Message::from_vec(&buf[..n])?;
            if m.metadata.op_code == OpCode::Notify && m.queries[0].name().to_ascii() == DOMAIN {
                let mut ack = Message::new(m.metadata.id, MessageType::Response, OpCode::Notify);
                ack.metadata.authoritative = true;
                ack.add_query(m.queries[0].clone());
                sock.send_to(&ack.to_vec()?, from)?;
                return Ok(m);
            }
        }
    });
    rec.upsert_host("late", Ipv4Addr::new(10, 63, 6, 200), "late-owner");
    let notify = got.await??;
    assert_eq!(notify.queries[0].query_type(), RecordType::SOA);
    h.shutdown().await;
    Ok(())
}

/// `dig` run inside namespace `ns` against `server` (port 53); returns stdout.
fn dig_in(ns: &str, server: &str, args: &[&str]) -> Result<String> {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns, "dig", "+time=2", "+tries=1"])
        .arg(format!("@{server}"))
        .args(args);
    let out = common::run_cmd(&mut cmd).with_context(|| format!("dig {args:?} in {ns}"))?;
    Ok(out.stdout_lossy())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_to_a_resolver_in_another_namespace_and_caches() -> Result<()> {
    // Namespace `cli` runs the upstream: a second netsvc binary, authoritative for another
    // zone. Namespace `srv` runs ours, forwarding to it across the veth pair.
    let link = support::Link::new()?;
    support::sh(&[
        "ip",
        "-n",
        &link.cli,
        "addr",
        "add",
        "10.61.1.2/24",
        "dev",
        &link.cli_if,
    ])?;
    let (_up_dir, up_cfg) = support::config_dir(
        "[dns]\nlisten = \"10.61.1.2:53\"\ndomain = \"upstream.test\"\n\
         records = [\"www IN A 192.0.2.80\", \"www IN TXT \\\"hello\\\"\", \"mail IN A 192.0.2.25\"]\n",
    )?;
    let mut upstream =
        support::Netsvc::start_for(Some(&link.cli), &["--config", &up_cfg], "dns").await?;
    let (_dir, cfg) = support::config_dir(
        "[dns]\nlisten = \"10.61.1.1:53\"\ndomain = \"rack.test\"\nappliance = \"10.61.1.1\"\n\
         forwarders = [\"10.61.1.2:53\"]\nforward_clients = [\"10.61.1.0/24\"]\n",
    )?;
    let ours = support::Netsvc::start_for(Some(&link.srv), &["--config", &cfg], "dns").await?;
    let ask = |args: &[&str]| dig_in(&link.srv, "10.61.1.1", args);
    let up_log = upstream.log.clone();
    let log = || {
        let up = up_log.lock().map(|l| l.clone()).unwrap_or_default();
        format!("ours:\n{}\nupstream:\n{up}", ours.log())
    };

    let out = ask(&["www.upstream.test.", "A"]).with_context(log)?;
    ensure!(status(&out) == Some("NOERROR"), "{out}\n{}", log());
    ensure!(out.contains("192.0.2.80"), "{out}\n{}", log());
    let txt = ask(&["+tcp", "+short", "www.upstream.test.", "TXT"])?;
    ensure!(txt.trim() == "\"hello\"", "{txt}\n{}", log());
    let nx = ask(&["missing.upstream.test."])?;
    ensure!(status(&nx) == Some("NXDOMAIN"), "{nx}\n{}", log());

    // The upstream goes away: what was asked before is answered from the cache, a name never
    // asked is not (so the cached answer really came from the cache).
    ensure!(
        upstream.term()? == Some(0),
        "upstream did not stop: {}",
        log()
    );
    let again = ask(&["+short", "www.upstream.test.", "A"])?;
    ensure!(
        again.trim() == "192.0.2.80",
        "not cached: {again}\n{}",
        log()
    );
    ensure!(ours.log().contains("forward cache hit"), "{}", log());
    let fresh = ask(&["mail.upstream.test.", "A"])?;
    ensure!(status(&fresh) == Some("SERVFAIL"), "{fresh}\n{}", log());
    // Our own zone is still ours.
    let own = ask(&["+short", "provisioner.rack.test."])?;
    ensure!(own.trim() == "10.61.1.1", "{own}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_is_refused_to_clients_outside_allowed_networks() -> Result<()> {
    let mut cfg = base_config(11);
    cfg.forwarders = vec![SocketAddr::from(([127, 0, 63, 250], 9))];
    cfg.forward_clients = vec!["127.0.63.12/32".parse()?];
    let h = start(cfg).await?;
    let out = dig(h.local_addr(), &["-b", "127.0.63.13", "example.org."]).await?;
    assert_eq!(status(&out), Some("REFUSED"), "{out}");
    h.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_zone_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let fwd = dir.path().join("rack.zone");
    std::fs::write(
        &fwd,
        "$ORIGIN rack.test.\n$TTL 600\n\
         @ IN SOA ns1.rack.test. admin.rack.test. 4000000000 3600 600 86400 30\n\
         @ IN NS ns1\nns1 IN A 10.63.14.1\nmail IN MX 10 ns1\nalias IN CNAME ns1\n\
         txt IN TXT \"v=spf1 -all\"\n",
    )?;
    let other = dir.path().join("other.zone");
    std::fs::write(
        &other,
        "$ORIGIN other.test.\n$TTL 60\n\
         @ IN SOA ns.other.test. h.other.test. 7 3600 600 86400 30\n@ IN NS ns\nns IN A 192.0.2.53\n\
         *.wild IN A 192.0.2.99\n",
    )?;
    let mut cfg = base_config(14);
    cfg.zone_files = vec![
        ZoneFile {
            origin: Name::from_ascii(DOMAIN)?,
            path: fwd.clone(),
        },
        ZoneFile {
            origin: Name::from_ascii("other.test.")?,
            path: other.clone(),
        },
    ];
    let h = start(cfg).await?;
    let s = h.local_addr();
    let soa = short(s, &[DOMAIN, "SOA"]).await?;
    assert_eq!(
        soa,
        ["ns1.rack.test. admin.rack.test. 4000000000 3600 600 86400 30"]
    );
    assert_eq!(short(s, &["ns1.rack.test."]).await?, ["10.63.14.1"]);
    assert_eq!(
        short(s, &["mail.rack.test.", "MX"]).await?,
        ["10 ns1.rack.test."]
    );
    assert_eq!(
        short(s, &["alias.rack.test.", "A"]).await?,
        ["ns1.rack.test.", "10.63.14.1"]
    );
    assert_eq!(
        short(s, &["txt.rack.test.", "TXT"]).await?,
        ["\"v=spf1 -all\""]
    );
    assert_eq!(short(s, &["ns.other.test."]).await?, ["192.0.2.53"]);
    assert_eq!(short(s, &["x.wild.other.test."]).await?, ["192.0.2.99"]);
    // The serial of an upserted zone moves on from the file's.
    h.records()
        .upsert_host("n", Ipv4Addr::new(10, 63, 14, 2), "o");
    assert_eq!(h.records().serial(), 4_000_000_001);
    h.shutdown().await;

    // A broken file is a startup error naming the file.
    std::fs::write(&other, "$ORIGIN other.test.\n@ IN SOA garbage\n")?;
    let mut cfg = base_config(15);
    cfg.zone_files = vec![ZoneFile {
        origin: Name::from_ascii("other.test.")?,
        path: other.clone(),
    }];
    let err = Server::start(cfg, DnsDeps::default())
        .await
        .expect_err("broken zone");
    ensure!(
        err.to_string().contains(&other.display().to_string()),
        "{err}"
    );
    ensure!(Path::new(&other).exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queries_get_formerr_or_are_dropped() -> Result<()> {
    let h = start(base_config(16)).await?;
    let s = h.local_addr();
    let sock = UdpSocket::bind(SocketAddr::from(([127, 0, 63, 17], 0)))?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 3],
        vec![
            0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 0x0C, 0, 1, 0, 1,
        ],
        vec![0x12, 0x34, 0x01, 0x00, 0, 9, 0, 9, 0, 9, 0, 9, 63, b'a'],
        (0..=255u8).collect(),
        vec![
            0xAB, 0xCD, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 41,
        ],
    ];
    for g in &garbage {
        sock.send_to(g, s)?;
    }
    // A query with a bogus question (compression loop) gets FORMERR with its ID.
    sock.send_to(&garbage[2], s)?;
    let mut buf = [0u8; 1500];
    let mut formerr = false;
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        if n >= 12 && buf[0] == 0x12 && buf[1] == 0x34 && buf[3] & 0x0F == 1 {
            formerr = true;
        }
    }
    assert!(formerr, "no FORMERR for a malformed question");
    // An oversized datagram with a query header also gets FORMERR.
    let mut big = vec![0x56, 0x78, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    big.resize(6000, b'x');
    sock.send_to(&big, s)?;
    let (n, _) = sock.recv_from(&mut buf)?;
    assert!(
        n >= 12 && buf[..2] == [0x56, 0x78] && buf[3] & 0x0F == 1,
        "{:?}",
        &buf[..n]
    );
    // Still serving.
    let mut q = Message::new(7, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(
        Name::from_ascii("provisioner.rack.test.")?,
        RecordType::A,
    ));
    sock.send_to(&q.to_vec()?, s)?;
    let (n, _) = sock.recv_from(&mut buf)?;
    let r = Message::from_vec(&buf[..n])?;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(
        short(s, &["+tcp", "provisioner.rack.test."]).await?,
        ["10.63.0.1"]
    );
    h.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_caps_udp_responses() -> Result<()> {
    let mut cfg = base_config(18);
    cfg.rate_limit = Some(netsvc::dns::RateLimit {
        responses_per_second: std::num::NonZeroU32::new(20).expect("20"),
        slip: 0,
    });
    let h = start(cfg).await?;
    let sock = UdpSocket::bind(SocketAddr::from(([127, 0, 63, 19], 0)))?;
    sock.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut q = Message::new(1, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(
        Name::from_ascii("ns.rack.test.")?,
        RecordType::A,
    ));
    let q = q.to_vec()?;
    for _ in 0..200 {
        sock.send_to(&q, h.local_addr())?;
    }
    let mut buf = [0u8; 1500];
    let mut answers = 0;
    while sock.recv_from(&mut buf).is_ok() {
        answers += 1;
    }
    assert!(
        (20..=40).contains(&answers),
        "{answers} answers to 200 queries at 20/s"
    );
    // TCP is not limited.
    assert_eq!(
        short(h.local_addr(), &["+tcp", "ns.rack.test."]).await?,
        ["10.63.0.1"]
    );
    h.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_ten_thousand_hosts_is_fast() -> Result<()> {
    let h = start(base_config(20)).await?;
    let rec = h.records();
    let t = std::time::Instant::now();
    for i in 0..10_000u32 {
        let [_, _, a, b] = i.to_be_bytes();
        rec.upsert_host(
            &format!("n{i:05}"),
            Ipv4Addr::new(10, 63, a + 100, b),
            &format!("o{i}"),
        );
    }
    let took = t.elapsed();
    // Debug builds (the CI test profile) are ~20x slower than release.
    let limit = Duration::from_secs(if cfg!(debug_assertions) { 10 } else { 1 });
    assert!(took < limit, "10k upserts took {took:?}");
    assert_eq!(
        short(h.local_addr(), &["n09999.rack.test."]).await?,
        ["10.63.139.15"]
    );
    assert_eq!(
        short(h.local_addr(), &["-x", "10.63.139.15"]).await?,
        ["n09999.rack.test."]
    );
    h.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_replay_keeps_records_and_serial_does_not_go_back() -> Result<()> {
    let hosts = [("alpha", 21u8), ("beta", 22), ("gamma", 23)];
    let h = start(base_config(21)).await?;
    let s = h.local_addr();
    for (name, last) in hosts {
        h.records()
            .upsert_host(name, Ipv4Addr::new(10, 63, 21, last), name);
    }
    let before = serial(s).await?;
    h.shutdown().await;

    // Same address again; the caller replays its persisted hosts.
    let mut cfg = base_config(21);
    cfg.listen = s;
    let h = start(cfg).await?;
    for (name, last) in hosts {
        h.records()
            .upsert_host(name, Ipv4Addr::new(10, 63, 21, last), name);
    }
    assert_eq!(short(s, &["beta.rack.test."]).await?, ["10.63.21.22"]);
    assert_eq!(
        short(s, &["-x", "10.63.21.23"]).await?,
        ["gamma.rack.test."]
    );
    let after = serial(s).await?;
    assert!(after >= before, "serial went back from {before} to {after}");
    h.shutdown().await;
    Ok(())
}
