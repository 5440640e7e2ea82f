//! DHCP message types beyond DORA against the real `netsvc` binary, from a client in a network
//! namespace speaking DHCP over real sockets: RELEASE frees the address, DECLINE quarantines
//! it, INFORM returns options without an address, and proxyDHCP answers PXE clients with boot
//! information and no address on ports 67 and 4011. Needs root.

mod support;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Decodable, Encodable};
use support::{Link, Netsvc, config_dir, sh};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 61, 1, 1);
const POOL_IP: Ipv4Addr = Ipv4Addr::new(10, 61, 1, 100);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 61, 1, 50);

/// Runs `f` on a thread inside namespace `ns` with a DHCP client socket (port 68, bound to
/// `iface`, broadcast allowed).
fn in_ns<T: Send + 'static>(
    ns: &str,
    iface: &str,
    f: impl FnOnce(&UdpSocket) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/run/netns/{ns}");
    let iface = iface.to_owned();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        s.set_reuse_address(true)?;
        s.set_broadcast(true)?;
        s.bind_device(Some(iface.as_bytes()))?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())?;
        let sock = UdpSocket::from(s);
        f(&sock)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))?
}

fn message(mac: u8, ty: MessageType, ciaddr: Ipv4Addr) -> v4::Message {
    let mut m = v4::Message::new(
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &[0x52, 0x54, 0x00, 0x65, 0x00, mac],
    );
    m.set_flags(m.flags().set_broadcast());
    m.opts_mut().insert(DhcpOption::MessageType(ty));
    m
}

/// Sends `msg` to `dest` and returns the first reply with its xid within `wait`.
fn exchange(
    sock: &UdpSocket,
    msg: &v4::Message,
    dest: (Ipv4Addr, u16),
    wait: Duration,
) -> anyhow::Result<Option<v4::Message>> {
    sock.send_to(&msg.to_vec()?, dest)?;
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        sock.set_read_timeout(Some(left))?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let Ok(reply) = v4::Message::from_bytes(&buf[..n]) else {
            continue;
        };
        if reply.xid() == msg.xid() && reply.opcode() == v4::Opcode::BootReply {
            return Ok(Some(reply));
        }
    }
}

fn msg_type(m: &v4::Message) -> Option<MessageType> {
    match m.opts().get(OptionCode::MessageType) {
        Some(DhcpOption::MessageType(t)) => Some(*t),
        _ => None,
    }
}

const BROADCAST: (Ipv4Addr, u16) = (Ipv4Addr::BROADCAST, 67);
const SHORT: Duration = Duration::from_secs(2);

/// DISCOVER then REQUEST for client `mac`; the ACKed address, if any.
fn dora(sock: &UdpSocket, mac: u8) -> anyhow::Result<Option<Ipv4Addr>> {
    let Some(offer) = exchange(
        sock,
        &message(mac, MessageType::Discover, Ipv4Addr::UNSPECIFIED),
        BROADCAST,
        SHORT,
    )?
    else {
        return Ok(None);
    };
    ensure!(msg_type(&offer) == Some(MessageType::Offer), "{offer:?}");
    let mut req = message(mac, MessageType::Request, Ipv4Addr::UNSPECIFIED);
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    let ack = exchange(sock, &req, BROADCAST, SHORT)?.context("no reply to REQUEST")?;
    ensure!(msg_type(&ack) == Some(MessageType::Ack), "{ack:?}");
    Ok(Some(ack.yiaddr()))
}

/// A link whose client side has [`CLIENT_IP`], and `netsvc` serving its server side with the
/// `[dhcp]` keys and tables in `extra` (router advertisements off: IPv6 is off on the link).
struct Rig {
    // Fields drop in order: the server stops before its namespaces go.
    srv: Netsvc,
    link: Link,
    _state: tempfile::TempDir,
    _config: tempfile::TempDir,
}

async fn rig(extra: &str) -> anyhow::Result<Rig> {
    let link = Link::new()?;
    sh(&[
        "ip",
        "-n",
        &link.cli,
        "addr",
        "add",
        &format!("{CLIENT_IP}/24"),
        "dev",
        &link.cli_if,
    ])?;
    let state = tempfile::tempdir()?;
    let (config, cfg) = config_dir(&format!(
        "state_dir = \"{}\"\n[dhcp]\ninterfaces = [\"{}\"]\nrouter_advertisements = false\n{extra}",
        state.path().to_str().context("utf8")?,
        link.srv_if
    ))?;
    let srv = Netsvc::start(Some(&link.srv), &["--config", &cfg]).await?;
    Ok(Rig {
        srv,
        link,
        _state: state,
        _config: config,
    })
}

#[tokio::test]
async fn release_frees_decline_quarantines_inform_answers() -> anyhow::Result<()> {
    let Rig { link, srv, .. } = &rig(
        "decline_quarantine_secs = 3600\n[[dhcp.subnet]]\nnet = \"10.61.1.0/24\"\n\
         pools = [\"10.61.1.100-10.61.1.100\"]\nrouters = [\"10.61.1.1\"]\n\
         dns_servers = [\"10.61.1.3\"]\ndomain = \"rack.test\"\n",
    )
    .await?;

    let outcome = in_ns(&link.cli, &link.cli_if, |sock| {
        // A holds the only address; B gets nothing.
        ensure!(dora(sock, 0xa)? == Some(POOL_IP), "A got no lease");
        ensure!(
            dora(sock, 0xb)?.is_none(),
            "B got an address from a full pool"
        );
        // A releases it: B gets it.
        let mut rel = message(0xa, MessageType::Release, POOL_IP);
        rel.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        ensure!(
            exchange(sock, &rel, (SERVER, 67), Duration::from_millis(300))?.is_none(),
            "RELEASE answered"
        );
        ensure!(
            dora(sock, 0xb)? == Some(POOL_IP),
            "released address not offered again"
        );
        // B declines it: it is quarantined, nobody gets it.
        let mut dec = message(0xb, MessageType::Decline, Ipv4Addr::UNSPECIFIED);
        dec.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(POOL_IP));
        dec.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        sock.send_to(&dec.to_vec()?, BROADCAST)?;
        std::thread::sleep(Duration::from_millis(300));
        ensure!(dora(sock, 0xc)?.is_none(), "declined address offered to C");
        ensure!(
            dora(sock, 0xb)?.is_none(),
            "declined address offered to B again"
        );
        // INFORM from a configured client: options, no address.
        let mut inf = message(0xd, MessageType::Inform, CLIENT_IP);
        inf.set_flags(v4::Flags::default());
        let ack = exchange(sock, &inf, (SERVER, 67), SHORT)?.context("no reply to INFORM")?;
        Ok(ack)
    });
    let ack = outcome.with_context(|| format!("log:\n{}", srv.log()))?;
    ensure!(msg_type(&ack) == Some(MessageType::Ack), "{ack:?}");
    ensure!(
        ack.yiaddr().is_unspecified(),
        "INFORM got an address: {ack:?}"
    );
    ensure!(
        matches!(ack.opts().get(OptionCode::Router), Some(DhcpOption::Router(r)) if r == &vec![SERVER]),
        "{ack:?}"
    );
    ensure!(
        matches!(ack.opts().get(OptionCode::DomainNameServer), Some(DhcpOption::DomainNameServer(r)) if r == &vec![Ipv4Addr::new(10, 61, 1, 3)]),
        "{ack:?}"
    );
    ensure!(
        !ack.opts().contains(OptionCode::AddressLeaseTime),
        "INFORM reply carries a lease time: {ack:?}"
    );
    let log = srv.log();
    ensure!(log.contains("quarantined"), "no quarantine logged:\n{log}");
    Ok(())
}

#[tokio::test]
async fn proxy_dhcp_gives_boot_info_without_address_on_67_and_4011() -> anyhow::Result<()> {
    let Rig { link, srv, .. } = &rig("mode = \"proxy\"\n").await?;
    let pxe = |m: &mut v4::Message| {
        m.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
        ));
        m.opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(0.into()));
    };
    let outcome = in_ns(&link.cli, &link.cli_if, move |sock| {
        // Not a boot client: ignored.
        let plain = message(0x1, MessageType::Discover, Ipv4Addr::UNSPECIFIED);
        ensure!(
            exchange(sock, &plain, BROADCAST, SHORT)?.is_none(),
            "plain DISCOVER answered in proxy mode"
        );
        let mut d = message(0x2, MessageType::Discover, Ipv4Addr::UNSPECIFIED);
        pxe(&mut d);
        let offer = exchange(sock, &d, BROADCAST, SHORT)?.context("no proxy OFFER")?;
        let mut r = message(0x2, MessageType::Request, CLIENT_IP);
        r.set_flags(v4::Flags::default());
        pxe(&mut r);
        let ack = exchange(sock, &r, (SERVER, 4011), SHORT)?.context("no ACK on port 4011")?;
        Ok((offer, ack))
    });
    let (offer, ack) = outcome.with_context(|| format!("log:\n{}", srv.log()))?;
    for (m, ty) in [(&offer, MessageType::Offer), (&ack, MessageType::Ack)] {
        ensure!(msg_type(m) == Some(ty), "{m:?}");
        ensure!(
            m.yiaddr().is_unspecified(),
            "proxyDHCP gave an address: {m:?}"
        );
        ensure!(
            matches!(m.opts().get(OptionCode::ClassIdentifier), Some(DhcpOption::ClassIdentifier(v)) if v == b"PXEClient"),
            "{m:?}"
        );
        ensure!(
            !m.opts().contains(OptionCode::AddressLeaseTime),
            "proxyDHCP reply has a lease time: {m:?}"
        );
    }
    let file = String::from_utf8_lossy(ack.fname().unwrap_or_default()).into_owned();
    ensure!(
        file.trim_end_matches('\0') == "undionly.kpxe",
        "boot file {file:?}: {ack:?}"
    );
    Ok(())
}
