//! A hand-driven DHCP client for interop tests: real sockets inside a client namespace, one
//! message at a time, plus a packet-socket capture that shows where a reply was really sent
//! (Ethernet and IP destination), not just that it arrived.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Decodable, Encodable};

/// The server side of every [`super::Link`].
pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 61, 1, 1);
/// Limited broadcast to the server port.
pub const BROADCAST: (Ipv4Addr, u16) = (Ipv4Addr::BROADCAST, 67);
/// How long a client waits for an answer that should come.
pub const SHORT: Duration = Duration::from_secs(2);

/// Runs `f` on a thread inside namespace `ns` with a DHCP client socket (port 68, bound to
/// `iface`, broadcast allowed).
pub fn in_ns<T: Send + 'static>(
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

/// The hardware address of test client `mac`.
pub fn chaddr(mac: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x65, 0x00, mac]
}

/// A client message of type `ty` from client `mac` with the broadcast flag set.
pub fn message(mac: u8, ty: MessageType, ciaddr: Ipv4Addr) -> v4::Message {
    let mut m = v4::Message::new(
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &chaddr(mac),
    );
    m.set_flags(m.flags().set_broadcast());
    m.opts_mut().insert(DhcpOption::MessageType(ty));
    m
}

/// A read that ran into its socket timeout is `None`; other errors stay errors.
fn timed_out_is_none(read: std::io::Result<usize>) -> anyhow::Result<Option<usize>> {
    match read {
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Sends `msg` to `dest` and returns the first reply with its xid within `wait`, decoded and
/// as bytes.
pub fn exchange_raw(
    sock: &UdpSocket,
    msg: &v4::Message,
    dest: (Ipv4Addr, u16),
    wait: Duration,
) -> anyhow::Result<Option<(v4::Message, Vec<u8>)>> {
    sock.send_to(&msg.to_vec()?, dest)?;
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        sock.set_read_timeout(Some(left))?;
        let Some(n) = timed_out_is_none(sock.recv(&mut buf))? else {
            return Ok(None);
        };
        let Ok(reply) = v4::Message::from_bytes(&buf[..n]) else {
            continue;
        };
        if reply.xid() == msg.xid() && reply.opcode() == v4::Opcode::BootReply {
            return Ok(Some((reply, buf[..n].to_vec())));
        }
    }
}

/// [`exchange_raw`] without the bytes.
pub fn exchange(
    sock: &UdpSocket,
    msg: &v4::Message,
    dest: (Ipv4Addr, u16),
    wait: Duration,
) -> anyhow::Result<Option<v4::Message>> {
    Ok(exchange_raw(sock, msg, dest, wait)?.map(|(m, _)| m))
}

/// The message type of `m`.
pub fn msg_type(m: &v4::Message) -> Option<MessageType> {
    match m.opts().get(OptionCode::MessageType) {
        Some(DhcpOption::MessageType(t)) => Some(*t),
        _ => None,
    }
}

/// DISCOVER then REQUEST for client `mac`; the ACKed address, if any.
pub fn dora(sock: &UdpSocket, mac: u8) -> anyhow::Result<Option<Ipv4Addr>> {
    dora_with(sock, mac, |_| {})
}

/// [`dora`] with `extra` applied to both messages (options such as a host name).
pub fn dora_with(
    sock: &UdpSocket,
    mac: u8,
    extra: impl Fn(&mut v4::Message),
) -> anyhow::Result<Option<Ipv4Addr>> {
    let mut discover = message(mac, MessageType::Discover, Ipv4Addr::UNSPECIFIED);
    extra(&mut discover);
    let Some(offer) = exchange(sock, &discover, BROADCAST, SHORT)? else {
        return Ok(None);
    };
    ensure!(msg_type(&offer) == Some(MessageType::Offer), "{offer:?}");
    let mut req = message(mac, MessageType::Request, Ipv4Addr::UNSPECIFIED);
    extra(&mut req);
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    let ack = exchange(sock, &req, BROADCAST, SHORT)?.context("no reply to REQUEST")?;
    ensure!(msg_type(&ack) == Some(MessageType::Ack), "{ack:?}");
    Ok(Some(ack.yiaddr()))
}

/// The options of an encoded DHCP message as `(code, value)`, in wire order (no parsing by
/// dhcproto: what a client's own parser would see).
pub fn raw_options(bytes: &[u8]) -> anyhow::Result<Vec<(u8, Vec<u8>)>> {
    ensure!(bytes.len() >= 240, "short message: {} bytes", bytes.len());
    ensure!(bytes[236..240] == [99, 130, 83, 99], "no magic cookie");
    let mut out = Vec::new();
    let mut i = 240;
    while i < bytes.len() {
        match bytes[i] {
            0 => i += 1,
            255 => return Ok(out),
            code => {
                let len = usize::from(*bytes.get(i + 1).context("option without length")?);
                let val = bytes
                    .get(i + 2..i + 2 + len)
                    .with_context(|| format!("option {code} runs past the end"))?;
                out.push((code, val.to_vec()));
                i += 2 + len;
            }
        }
    }
    anyhow::bail!("options without End")
}

/// The value of option `code` in `opts`.
pub fn option(opts: &[(u8, Vec<u8>)], code: u8) -> Option<&[u8]> {
    opts.iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v.as_slice())
}

/// A DHCP reply as seen on the wire by [`Capture`].
#[derive(Debug, Clone)]
pub struct Frame {
    /// Ethernet destination.
    pub dst_mac: [u8; 6],
    /// IPv4 destination.
    pub dst_ip: Ipv4Addr,
    /// UDP destination port.
    pub dst_port: u16,
    /// The decoded reply.
    pub msg: v4::Message,
}

/// Every frame arriving on one interface of the current thread's namespace (`AF_PACKET`), so a
/// test sees replies addressed to an address or MAC the client does not have.
#[derive(Debug)]
pub struct Capture {
    sock: socket2::Socket,
}

const ETH_P_ALL: u16 = 0x0003;

impl Capture {
    /// Opens the capture on `iface` (in the calling thread's namespace). Frames are kept from
    /// now on, so open it before sending.
    pub fn open(iface: &str) -> anyhow::Result<Self> {
        let index = nix::net::if_::if_nametoindex(iface).context("interface index")?;
        // SAFETY: plain socket(2) call with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            )
        };
        ensure!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = u16::try_from(libc::AF_PACKET)?;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = i32::try_from(index)?;
        let len = u32::try_from(size_of::<libc::sockaddr_ll>())?;
        // SAFETY: the address points to a live sockaddr_ll of the length given.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&sll).cast(), len) };
        ensure!(
            rc == 0,
            "bind packet socket: {}",
            std::io::Error::last_os_error()
        );
        Ok(Capture {
            sock: socket2::Socket::from(fd),
        })
    }

    /// The next DHCP reply (UDP from port 67) with `xid` captured within `wait`.
    pub fn reply(&self, xid: u32, wait: Duration) -> anyhow::Result<Option<Frame>> {
        use std::io::Read;
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.sock.set_read_timeout(Some(left))?;
            let Some(n) = timed_out_is_none((&self.sock).read(&mut buf))? else {
                return Ok(None);
            };
            if let Some(f) = parse_frame(&buf[..n]).filter(|f| f.msg.xid() == xid) {
                return Ok(Some(f));
            }
        }
    }
}

/// An Ethernet/IPv4/UDP frame from port 67 carrying a BOOTREPLY.
fn parse_frame(b: &[u8]) -> Option<Frame> {
    if b.len() < 14 + 20 + 8 || b[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &b[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ip[9] != 17 || ip.len() < ihl + 8 {
        return None;
    }
    let udp = &ip[ihl..];
    if u16::from_be_bytes([udp[0], udp[1]]) != 67 {
        return None;
    }
    let msg = v4::Message::from_bytes(&udp[8..]).ok()?;
    if msg.opcode() != v4::Opcode::BootReply {
        return None;
    }
    let mut dst_mac = [0u8; 6];
    dst_mac.copy_from_slice(&b[..6]);
    Some(Frame {
        dst_mac,
        dst_ip: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        msg,
    })
}
