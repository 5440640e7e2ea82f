//! DHCP message types beyond DORA against the real `netsvc` binary, from a client in a network
//! namespace speaking DHCP over real sockets: RELEASE frees the address, DECLINE quarantines
//! it, INFORM returns options without an address, and proxyDHCP answers PXE clients with boot
//! information and no address on ports 67 and 4011. Also: renew (unicast) and rebind
//! (broadcast) extend the lease, NAKs for foreign and taken addresses, the pxe-only and
//! known-only policies, no answer on an interface not configured, the iPXE and UEFI HTTP boot
//! options as bytes on the wire, and where replies really go (a packet-socket capture: unicast
//! to `chaddr`/`yiaddr` unless the client asked for broadcast). Needs root.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, ensure};
use dhcproto::Encodable;
use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use support::dhcp::{
    BROADCAST, Capture, SERVER, SHORT, chaddr, dora, exchange, exchange_raw, in_ns, message,
    msg_type, option, raw_options,
};
use support::{Link, Netsvc, config_dir, sh};

const POOL_IP: Ipv4Addr = Ipv4Addr::new(10, 61, 1, 100);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 61, 1, 50);

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
    rig_on(Link::new()?, extra).await
}

/// [`rig`] on a link the caller prepared (extra interfaces, addresses).
async fn rig_on(link: Link, extra: &str) -> anyhow::Result<Rig> {
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

/// One /24 subnet on the link with the pool `first..=last` (last octets).
fn subnet(first: u8, last: u8) -> String {
    format!(
        "[[dhcp.subnet]]\nnet = \"10.61.1.0/24\"\npools = [\"10.61.1.{first}-10.61.1.{last}\"]\n"
    )
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `expires` of every `lease bound` log line for `ip`, in order.
fn bound_expiries(log: &str, ip: Ipv4Addr) -> Vec<u64> {
    let ip = ip.to_string();
    log.lines()
        .filter(|l| l.contains("\"lease bound\""))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("ip").and_then(|i| i.as_str()) == Some(ip.as_str()))
        .filter_map(|v| v.get("expires")?.as_u64())
        .collect()
}

/// Waits until the server has logged `n` bindings of `ip`; returns the last expiry.
async fn nth_binding(srv: &Netsvc, ip: Ipv4Addr, n: usize) -> anyhow::Result<u64> {
    common::wait_for(Duration::from_secs(5), || {
        let e = bound_expiries(&srv.log(), ip);
        async move { (e.len() >= n).then(|| e[n - 1]) }
    })
    .await
    .with_context(|| format!("binding {n} of {ip} not logged; log:\n{}", srv.log()))
}

/// Waits until the clock has moved past the second in which a lease of `lease_secs` that
/// expires at `expires` was bound, so a renewal must move the expiry.
async fn next_second(expires: u64, lease_secs: u64) -> anyhow::Result<()> {
    common::wait_for(Duration::from_secs(3), || async move {
        (now_secs() + lease_secs > expires).then_some(())
    })
    .await
    .context("clock did not advance")
}

fn mac_of(ns: &str, iface: &str) -> anyhow::Result<[u8; 6]> {
    let out = sh(&["ip", "-n", ns, "-br", "link", "show", iface])?;
    let text = out.split_whitespace().nth(2).context("no MAC")?;
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

#[tokio::test]
async fn renew_unicast_and_rebind_broadcast_extend_the_lease() -> anyhow::Result<()> {
    let rig = rig(&format!("lease_time_secs = 600\n{}", subnet(100, 100))).await?;
    let (link, srv) = (&rig.link, &rig.srv);
    // The client holds the leased address, as dhclient's script configures it after BOUND.
    sh(&[
        "ip",
        "-n",
        &link.cli,
        "addr",
        "add",
        &format!("{POOL_IP}/24"),
        "dev",
        &link.cli_if,
    ])?;
    let cli_mac = mac_of(&link.cli, &link.cli_if)?;
    let got = in_ns(&link.cli, &link.cli_if, |sock| dora(sock, 0xa))?;
    ensure!(got == Some(POOL_IP), "no lease: {got:?}\n{}", srv.log());
    let mut expires = nth_binding(srv, POOL_IP, 1).await?;

    // RENEWING: unicast to the server, ciaddr set, no server id; RFC 2131 4.3.2: the ACK goes
    // unicast to ciaddr:68. REBINDING: the same REQUEST broadcast.
    for (n, (what, dest)) in [("renew", (SERVER, 67)), ("rebind", BROADCAST)]
        .into_iter()
        .enumerate()
    {
        next_second(expires, 600).await?;
        let cli_if = link.cli_if.clone();
        let (ack, frame) = in_ns(&link.cli, &link.cli_if, move |sock| {
            let cap = Capture::open(&cli_if)?;
            let mut req = message(0xa, MessageType::Request, POOL_IP);
            req.set_flags(v4::Flags::default());
            let ack = exchange(sock, &req, dest, SHORT)?.context("no reply")?;
            let frame = cap.reply(req.xid(), SHORT)?.context("reply not captured")?;
            Ok((ack, frame))
        })
        .with_context(|| format!("{what}; log:\n{}", srv.log()))?;
        ensure!(msg_type(&ack) == Some(MessageType::Ack), "{what}: {ack:?}");
        ensure!(ack.yiaddr() == POOL_IP, "{what}: {ack:?}");
        ensure!(
            ack.opts().get(OptionCode::AddressLeaseTime)
                == Some(&DhcpOption::AddressLeaseTime(600)),
            "{what}: {ack:?}"
        );
        ensure!(
            frame.dst_ip == POOL_IP && frame.dst_port == 68 && frame.dst_mac == cli_mac,
            "{what}: ACK not unicast to ciaddr:68: {frame:?}"
        );
        let renewed = nth_binding(srv, POOL_IP, n + 2).await?;
        ensure!(
            renewed > expires,
            "{what} did not extend the lease ({expires} -> {renewed})"
        );
        expires = renewed;
    }
    Ok(())
}

fn request(mac: u8, requested: Ipv4Addr, server_id: Option<Ipv4Addr>) -> v4::Message {
    let mut m = message(mac, MessageType::Request, Ipv4Addr::UNSPECIFIED);
    m.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(requested));
    if let Some(id) = server_id {
        m.opts_mut().insert(DhcpOption::ServerIdentifier(id));
    }
    m
}

#[tokio::test]
async fn requests_for_foreign_or_taken_addresses_are_naked() -> anyhow::Result<()> {
    let Rig { link, srv, .. } = &rig(&subnet(100, 110)).await?;
    let replies = in_ns(&link.cli, &link.cli_if, |sock| {
        ensure!(dora(sock, 0xa)? == Some(POOL_IP), "A got no lease");
        let (nak, ack) = (Some(MessageType::Nak), Some(MessageType::Ack));
        let cases = [
            // INIT-REBOOT with an address from another network.
            (
                "foreign network",
                request(0xb, Ipv4Addr::new(10, 99, 0, 5), None),
                nak,
            ),
            // INIT-REBOOT with an address of our subnet outside every pool.
            (
                "outside the pool",
                request(0xb, Ipv4Addr::new(10, 61, 1, 200), None),
                nak,
            ),
            // SELECTING, naming us, for the address A holds.
            ("held by A", request(0xb, POOL_IP, Some(SERVER)), nak),
            // INIT-REBOOT of a free pool address by a client we never saw: silence
            // (RFC 2131 4.3.2: another server may hold its lease).
            (
                "unknown client",
                request(0xb, Ipv4Addr::new(10, 61, 1, 105), None),
                None,
            ),
            // Control: A rebooting with its own address is welcome.
            ("A's own", request(0xa, POOL_IP, None), ack),
        ];
        let mut out = Vec::new();
        for (what, m, want) in cases {
            out.push((what, exchange(sock, &m, BROADCAST, SHORT)?, want));
        }
        Ok(out)
    })
    .with_context(|| format!("log:\n{}", srv.log()))?;
    for (what, reply, want) in replies {
        ensure!(
            reply.as_ref().and_then(msg_type) == want,
            "{what}: want {want:?}, got {reply:?}"
        );
        if let Some(reply) = reply.filter(|_| want == Some(MessageType::Nak)) {
            ensure!(
                reply.yiaddr().is_unspecified()
                    && !reply.opts().contains(OptionCode::AddressLeaseTime)
                    && reply.opts().get(OptionCode::ServerIdentifier)
                        == Some(&DhcpOption::ServerIdentifier(SERVER)),
                "{what}: malformed NAK {reply:?}"
            );
        }
    }
    Ok(())
}

fn pxe_bios(m: &mut v4::Message) {
    m.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    m.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(0.into()));
}

const RESERVED: &str = "[[dhcp.reservation]]\nmac = \"52:54:00:65:00:03\"\nip = \"10.61.1.20\"\n";

/// The answers to an unknown plain client's and an unknown BIOS PXE client's DISCOVER, and the
/// address a reserved plain client gets through a whole DORA.
type PolicyAnswers = (Option<v4::Message>, Option<v4::Message>, Option<Ipv4Addr>);

fn plain_pxe_and_reserved(link: &Link) -> anyhow::Result<PolicyAnswers> {
    in_ns(&link.cli, &link.cli_if, |sock| {
        let plain = message(0x1, MessageType::Discover, Ipv4Addr::UNSPECIFIED);
        let plain = exchange(sock, &plain, BROADCAST, SHORT)?;
        let mut pxe = message(0x2, MessageType::Discover, Ipv4Addr::UNSPECIFIED);
        pxe_bios(&mut pxe);
        let pxe = exchange(sock, &pxe, BROADCAST, SHORT)?;
        let known = dora(sock, 0x3)?;
        Ok((plain, pxe, known))
    })
}

#[tokio::test]
async fn pxe_only_ignores_plain_clients() -> anyhow::Result<()> {
    let Rig { link, srv, .. } = &rig(&format!(
        "unknown_clients = \"pxe-only\"\n{}{RESERVED}",
        subnet(100, 110)
    ))
    .await?;
    // A plain client with a reservation is known: served.
    let (plain, pxe, known) = plain_pxe_and_reserved(link)?;
    let log = srv.log();
    ensure!(plain.is_none(), "plain client answered: {plain:?}");
    ensure!(
        pxe.as_ref().and_then(msg_type) == Some(MessageType::Offer),
        "PXE client not offered: {pxe:?}\n{log}"
    );
    ensure!(
        known == Some(Ipv4Addr::new(10, 61, 1, 20)),
        "reserved client: {known:?}\n{log}"
    );
    ensure!(
        log.contains("client not admitted by policy"),
        "no policy drop logged:\n{log}"
    );
    Ok(())
}

#[tokio::test]
async fn known_only_serves_only_reserved_macs() -> anyhow::Result<()> {
    let Rig { link, srv, .. } = &rig(&format!(
        "unknown_clients = \"known-only\"\n{}{RESERVED}",
        subnet(100, 110)
    ))
    .await?;
    // Booting from the network does not make an unknown MAC known.
    let (plain, pxe, known) = plain_pxe_and_reserved(link)?;
    let log = srv.log();
    ensure!(plain.is_none(), "unknown plain client answered: {plain:?}");
    ensure!(pxe.is_none(), "unknown PXE client answered: {pxe:?}");
    ensure!(
        known == Some(Ipv4Addr::new(10, 61, 1, 20)),
        "reserved client: {known:?}\n{log}"
    );
    Ok(())
}

#[tokio::test]
async fn serves_only_configured_interfaces() -> anyhow::Result<()> {
    let link = Link::new()?;
    // A second link into the server's namespace with a subnet the config also covers: only
    // the interface list keeps the server off it.
    let (_, other_cli) = link.add_pair("10.61.9.1/24")?;
    let Rig { link, srv, .. } = &rig_on(
        link,
        &format!(
            "{}[[dhcp.subnet]]\nnet = \"10.61.9.0/24\"\npools = [\"10.61.9.100-10.61.9.110\"]\n",
            subnet(100, 110)
        ),
    )
    .await?;
    let off = in_ns(&link.cli, &other_cli, |sock| {
        let d = message(0x1, MessageType::Discover, Ipv4Addr::UNSPECIFIED);
        exchange(sock, &d, BROADCAST, SHORT)
    })?;
    ensure!(
        off.is_none(),
        "answered on an unconfigured interface: {off:?}"
    );
    let on = in_ns(&link.cli, &link.cli_if, |sock| {
        let d = message(0x1, MessageType::Discover, Ipv4Addr::UNSPECIFIED);
        exchange(sock, &d, BROADCAST, SHORT)
    })?;
    ensure!(
        on.as_ref().and_then(msg_type) == Some(MessageType::Offer),
        "not answered on the configured interface: {on:?}\n{}",
        srv.log()
    );
    Ok(())
}

/// The `file` field of a reply, up to its first NUL.
fn file_field(m: &v4::Message) -> String {
    let f = m.fname().unwrap_or_default();
    let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
    String::from_utf8_lossy(&f[..end]).into_owned()
}

/// DISCOVER then REQUEST from client `mac` dressed by `dress`: the OFFER and ACK as bytes.
fn boot_exchange(
    link: &Link,
    mac: u8,
    dress: fn(&mut v4::Message),
) -> anyhow::Result<[(v4::Message, Vec<u8>); 2]> {
    in_ns(&link.cli, &link.cli_if, move |sock| {
        let mut d = message(mac, MessageType::Discover, Ipv4Addr::UNSPECIFIED);
        dress(&mut d);
        let offer = exchange_raw(sock, &d, BROADCAST, SHORT)?.context("no OFFER")?;
        let mut r = message(mac, MessageType::Request, Ipv4Addr::UNSPECIFIED);
        dress(&mut r);
        r.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.0.yiaddr()));
        r.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        let ack = exchange_raw(sock, &r, BROADCAST, SHORT)?.context("no ACK")?;
        Ok([offer, ack])
    })
}

fn ipxe(m: &mut v4::Message) {
    m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    // iPXE's feature flags (HTTP, DNS) in its encapsulated option 175.
    m.opts_mut()
        .insert(DhcpOption::Unknown(v4::UnknownOption::new(
            175.into(),
            vec![0x13, 1, 1, 0x17, 1, 1],
        )));
    pxe_bios(m);
}

fn uefi_http(m: &mut v4::Message) {
    m.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"HTTPClient:Arch:00016:UNDI:003001".to_vec(),
    ));
    m.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(16.into()));
}

#[tokio::test]
async fn boot_replies_on_the_wire_for_ipxe_and_uefi_http() -> anyhow::Result<()> {
    let rig = rig(&format!("http_port = 8080\n{}", subnet(100, 110))).await?;
    let (link, srv) = (&rig.link, &rig.srv);

    // iPXE: the per-host script URL, and 175.176 = 1 so it does not wait for ProxyDHCP.
    let script = "http://10.61.1.1:8080/boot/52-54-00-65-00-05.ipxe";
    for (m, bytes) in boot_exchange(link, 0x5, ipxe).with_context(|| srv.log())? {
        let opts = raw_options(&bytes)?;
        let o175 = option(&opts, 175).with_context(|| format!("no option 175: {m:?}"))?;
        ensure!(
            o175.windows(3).any(|w| w == [176, 1, 1]) && o175.len() == 3,
            "option 175 = {o175:?}"
        );
        ensure!(option(&opts, 67) == Some(script.as_bytes()), "{opts:?}");
        ensure!(file_field(&m) == script, "file {:?}", file_field(&m));
    }

    // UEFI HTTP boot: HTTPClient echoed in option 60 and an http:// URL of the EFI binary.
    let efi = "http://10.61.1.1:8080/ipxe/snponly.efi";
    for (m, bytes) in boot_exchange(link, 0x6, uefi_http).with_context(|| srv.log())? {
        let opts = raw_options(&bytes)?;
        ensure!(option(&opts, 60) == Some(&b"HTTPClient"[..]), "{opts:?}");
        ensure!(option(&opts, 67) == Some(efi.as_bytes()), "{opts:?}");
        ensure!(file_field(&m) == efi, "file {:?}", file_field(&m));
        ensure!(option(&opts, 175).is_none(), "HTTP boot got iPXE options");
    }

    // Control: a BIOS PXE client gets neither.
    for (_, bytes) in boot_exchange(link, 0x7, pxe_bios)? {
        let opts = raw_options(&bytes)?;
        ensure!(option(&opts, 175).is_none(), "{opts:?}");
        ensure!(option(&opts, 60).is_none(), "{opts:?}");
        ensure!(option(&opts, 67) == Some(&b"undionly.kpxe"[..]), "{opts:?}");
    }
    Ok(())
}

#[tokio::test]
async fn replies_to_clients_without_address_are_unicast_unless_broadcast_asked()
-> anyhow::Result<()> {
    let Rig { link, srv, .. } = &rig(&subnet(100, 110)).await?;
    let cli_if = link.cli_if.clone();
    let frames = in_ns(&link.cli, &link.cli_if, move |sock| {
        let cap = Capture::open(&cli_if)?;
        let mut out = Vec::new();
        for (mac, broadcast) in [(0x6, false), (0x7, true)] {
            let mut d = message(mac, MessageType::Discover, Ipv4Addr::UNSPECIFIED);
            if !broadcast {
                d.set_flags(v4::Flags::default());
            }
            // A unicast OFFER is for an address this namespace does not have: only the capture
            // sees it.
            sock.send_to(&d.to_vec()?, BROADCAST)?;
            let offer = cap.reply(d.xid(), SHORT)?.context("no OFFER on the wire")?;
            let mut r = message(mac, MessageType::Request, Ipv4Addr::UNSPECIFIED);
            if !broadcast {
                r.set_flags(v4::Flags::default());
            }
            r.opts_mut()
                .insert(DhcpOption::RequestedIpAddress(offer.msg.yiaddr()));
            r.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
            sock.send_to(&r.to_vec()?, BROADCAST)?;
            let ack = cap.reply(r.xid(), SHORT)?.context("no ACK on the wire")?;
            out.push((mac, broadcast, offer, ack));
        }
        Ok(out)
    })
    .with_context(|| format!("log:\n{}", srv.log()))?;
    for (mac, broadcast, offer, ack) in frames {
        ensure!(
            msg_type(&offer.msg) == Some(MessageType::Offer),
            "{offer:?}"
        );
        ensure!(msg_type(&ack.msg) == Some(MessageType::Ack), "{ack:?}");
        for f in [&offer, &ack] {
            let (want_mac, want_ip) = if broadcast {
                ([0xff; 6], Ipv4Addr::BROADCAST)
            } else {
                (chaddr(mac), offer.msg.yiaddr())
            };
            ensure!(
                f.dst_mac == want_mac && f.dst_ip == want_ip && f.dst_port == 68,
                "broadcast flag {broadcast}: sent to {:02x?} {}:{}, want {want_mac:02x?} {want_ip}",
                f.dst_mac,
                f.dst_ip,
                f.dst_port
            );
        }
    }
    Ok(())
}
