//! The decision pipeline: ordered stages over one request, each returning a [`Flow`].
//! The order is declared once, in `server.rs` (`STAGES`). Stages do no I/O: they read the
//! config, update the in-memory lease table and describe the reply and what must be persisted
//! before it is sent.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use dhcproto::v4::{self, DhcpOption, MessageType};

use super::boot::{self, BootClient, BootDecision};
use super::codec::{self, IPXE_NO_PXEDHCP, OPT_IPXE, Reply, Request, SubOption};
use super::lease::{Lease, LeaseTable, Pool};
use super::{Config, DhcpHooks, Mode, Reservation, UnknownClients};
use crate::MacAddr;

/// What a stage decided.
#[derive(Debug)]
pub(crate) enum Flow {
    /// Go on with the next stage.
    Continue,
    /// Stop: send this (after persisting its leases).
    Reply(Box<Response>),
    /// Stop: no answer. The reason is logged at debug.
    Drop(&'static str),
}

/// Where a reply goes (RFC 2131 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dest {
    /// To the relay agent at `giaddr`, server port 67.
    Relay(Ipv4Addr),
    /// To 255.255.255.255:68 on the interface.
    Broadcast,
    /// To an address the client already has.
    Unicast(SocketAddrV4),
    /// To a client without an address yet: `ip` at hardware address `mac`, port 68.
    Hardware { ip: Ipv4Addr, mac: MacAddr },
}

/// The outcome of a request that is answered or changes state.
#[derive(Debug, Default)]
pub(crate) struct Response {
    /// The reply and its destination, if one is sent.
    pub(crate) reply: Option<(Reply, Dest)>,
    /// Leases to make durable before the reply leaves.
    pub(crate) persist: Vec<Lease>,
    /// Lease to report to `lease_bound` once durable.
    pub(crate) bound: Option<Lease>,
    /// Leases to report to `lease_ended` once durable.
    pub(crate) ended: Vec<Lease>,
    /// Report a boot request for this client.
    pub(crate) boot: Option<BootClient>,
}

/// The port a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Port {
    /// 67 (or the configured one).
    Dhcp,
    /// 4011, PXE boot server discovery (proxyDHCP).
    Pxe,
}

/// The interface a request arrived on.
#[derive(Debug, Clone)]
pub(crate) struct Iface {
    /// Interface name (empty when listening without a device).
    pub(crate) name: String,
    /// Interface index for hardware-addressed replies.
    pub(crate) index: Option<u32>,
    /// Our address there: server identifier and next-server.
    pub(crate) addr: Ipv4Addr,
}

/// State shared by every packet.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) table: Mutex<LeaseTable>,
    pub(crate) hooks: Arc<dyn DhcpHooks>,
    pools: Vec<Pool>,
    reserved: HashSet<Ipv4Addr>,
    by_mac: HashMap<MacAddr, Reservation>,
}

impl Shared {
    pub(crate) fn new(cfg: Config, table: LeaseTable, hooks: Arc<dyn DhcpHooks>) -> Self {
        let pools = cfg.subnets.iter().map(|s| Pool::new(&s.pools)).collect();
        let reserved = cfg.reservations.iter().map(|r| r.ip).collect();
        let by_mac = cfg
            .reservations
            .iter()
            .map(|r| (r.mac, r.clone()))
            .collect();
        Shared {
            cfg,
            table: Mutex::new(table),
            hooks,
            pools,
            reserved,
            by_mac,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, LeaseTable> {
        // A panic while holding the lock cannot leave the table half-updated in a way that
        // matters more than stopping service would: keep serving.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One request moving through the stages.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) req: &'a Request,
    pub(crate) iface: &'a Iface,
    pub(crate) port: Port,
    pub(crate) peer: SocketAddrV4,
    pub(crate) now: u64,
    client: BootClient,
    boot: Option<BootDecision>,
    reservation: Option<Reservation>,
    subnet: Option<usize>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        req: &'a Request,
        iface: &'a Iface,
        port: Port,
        peer: SocketAddrV4,
        now: u64,
    ) -> Self {
        Ctx {
            req,
            iface,
            port,
            peer,
            now,
            client: BootClient::default(),
            boot: None,
            reservation: None,
            subnet: None,
        }
    }
}

/// A pipeline stage.
pub(crate) type Stage = fn(&mut Ctx<'_>, &Shared) -> Flow;

/// Runs `stages` in order until one stops.
pub(crate) fn run(stages: &[Stage], ctx: &mut Ctx<'_>, shared: &Shared) -> Flow {
    for stage in stages {
        match stage(ctx, shared) {
            Flow::Continue => {}
            stop => return stop,
        }
    }
    Flow::Drop("no stage answered")
}

/// Stage: who is asking: boot client facts, reservation (config first, then inventory), and
/// the boot decision.
pub(crate) fn classify(ctx: &mut Ctx<'_>, shared: &Shared) -> Flow {
    let req = ctx.req;
    ctx.client = BootClient {
        arch: req.arch.first().copied(),
        vendor_class: req.vendor_class.clone(),
        user_class: req.user_class.clone(),
        has_ipxe_options: req.ipxe.is_some(),
    };
    ctx.reservation = shared
        .by_mac
        .get(&req.mac)
        .cloned()
        .or_else(|| shared.hooks.reservation(req.mac));
    let base = match &shared.cfg.http_base {
        Some(b) => b.trim_end_matches('/').to_owned(),
        None if shared.cfg.http_port == 80 => format!("http://{}", ctx.iface.addr),
        None => format!("http://{}:{}", ctx.iface.addr, shared.cfg.http_port),
    };
    ctx.boot = boot::decide(&ctx.client, &shared.cfg.boot, req.mac, &base);
    Flow::Continue
}

/// Stage: proxyDHCP answers boot clients only and never hands out addresses. In server mode
/// requests on the PXE port are dropped.
pub(crate) fn proxy(ctx: &mut Ctx<'_>, shared: &Shared) -> Flow {
    if shared.cfg.mode != Mode::Proxy {
        return match ctx.port {
            Port::Dhcp => Flow::Continue,
            Port::Pxe => Flow::Drop("pxe port request in server mode"),
        };
    }
    let Some(decision) = ctx.boot.clone() else {
        return Flow::Drop("proxy mode: not a boot client");
    };
    let (ty, dest) = match (ctx.port, ctx.req.msg_type) {
        (Port::Dhcp, MessageType::Discover) => (
            MessageType::Offer,
            if ctx.req.msg.giaddr().is_unspecified() {
                Dest::Broadcast
            } else {
                Dest::Relay(ctx.req.msg.giaddr())
            },
        ),
        (Port::Pxe, MessageType::Request | MessageType::Inform) => {
            (MessageType::Ack, Dest::Unicast(ctx.peer))
        }
        _ => return Flow::Drop("proxy mode: nothing to answer"),
    };
    let mut msg = base_reply(ctx.req, ty, ctx.iface.addr);
    let mut tail = Vec::new();
    add_boot(&mut msg, &mut tail, ctx, &decision, true);
    Flow::Reply(Box::new(Response {
        reply: Some((finish(msg, ctx.req, tail), dest)),
        boot: Some(ctx.client.clone()),
        ..Response::default()
    }))
}

/// Stage: the subnet the client is on: the relay's (giaddr) or our interface's.
pub(crate) fn select_subnet(ctx: &mut Ctx<'_>, shared: &Shared) -> Flow {
    let giaddr = ctx.req.msg.giaddr();
    let link = if giaddr.is_unspecified() {
        ctx.iface.addr
    } else {
        giaddr
    };
    ctx.subnet = shared
        .cfg
        .subnets
        .iter()
        .position(|s| s.net.contains(&link));
    match ctx.subnet {
        Some(_) => Flow::Continue,
        None => Flow::Drop("no subnet for this link"),
    }
}

/// Stage: the unknown-client policy.
pub(crate) fn admit(ctx: &mut Ctx<'_>, shared: &Shared) -> Flow {
    if matches!(
        ctx.req.msg_type,
        MessageType::Release | MessageType::Decline
    ) {
        return Flow::Continue;
    }
    let known = ctx.reservation.is_some();
    let ok = match shared.cfg.unknown_clients {
        UnknownClients::All => true,
        UnknownClients::PxeOnly => known || ctx.client.is_boot_client(),
        UnknownClients::KnownOnly => known,
    };
    if ok {
        Flow::Continue
    } else {
        Flow::Drop("client not admitted by policy")
    }
}

/// Stage: a REQUEST, RELEASE or DECLINE naming another server is not for us.
pub(crate) fn server_id(ctx: &mut Ctx<'_>, shared: &Shared) -> Flow {
    match ctx.req.server_id {
        Some(id) if id != ctx.iface.addr => {
            if ctx.req.msg_type == MessageType::Request {
                shared.table().withdraw_offer(ctx.req.mac);
            }
            Flow::Drop("client chose another server")
        }
        _ => Flow::Continue,
    }
}

/// Stage: the RFC 2131 state machine per message type.
pub(crate) fn dispatch(ctx: &mut Ctx<'_>, shared: &Shared) -> Flow {
    let subnet_idx = ctx
        .subnet
        .expect("invariant: select_subnet runs before dispatch");
    let subnet = &shared.cfg.subnets[subnet_idx];
    let pool = &shared.pools[subnet_idx];
    let req = ctx.req;
    let mac = req.mac;
    let now = ctx.now;
    let fixed = ctx
        .reservation
        .as_ref()
        .map(|r| r.ip)
        .filter(|ip| subnet.net.contains(ip));
    let lease_secs = u32::try_from(subnet.lease_time.as_secs()).unwrap_or(u32::MAX);
    let hostname = ctx
        .reservation
        .as_ref()
        .and_then(|r| r.hostname.clone())
        .or_else(|| req.hostname.clone());
    let reserved = |ip: Ipv4Addr| shared.reserved.contains(&ip) && fixed != Some(ip);
    match req.msg_type {
        MessageType::Discover => {
            let until = now + shared.cfg.offer_hold.as_secs();
            let offered =
                shared
                    .table()
                    .offer(pool, mac, fixed, req.requested_ip, reserved, (now, until));
            let Some(ip) = offered else {
                tracing::warn!(%mac, subnet = %subnet.net, "no free address to offer");
                return Flow::Drop("pool exhausted");
            };
            let reply = address_reply(
                ctx,
                MessageType::Offer,
                ip,
                lease_secs,
                hostname.as_deref(),
                shared,
            );
            Flow::Reply(Box::new(Response {
                reply: Some(reply),
                ..Response::default()
            }))
        }
        MessageType::Request => {
            let ciaddr = req.msg.ciaddr();
            let ip = if ciaddr.is_unspecified() {
                match req.requested_ip {
                    Some(ip) => ip,
                    None => return Flow::Drop("request without an address"),
                }
            } else {
                ciaddr
            };
            let acceptable = subnet.net.contains(&ip)
                && (fixed == Some(ip) || (fixed.is_none() && pool.contains(ip) && !reserved(ip)));
            let expires = now + u64::from(lease_secs);
            let mut table = shared.table();
            // INIT-REBOOT (no server id, no ciaddr) from a client we have no record of: RFC 2131
            // 4.3.2 says remain silent (another server may know it), unless the address is
            // wrong for this link or taken, which earns the NAK below.
            let init_reboot = ciaddr.is_unspecified() && req.server_id.is_none();
            if acceptable
                && init_reboot
                && ctx.reservation.is_none()
                && !table.knows(mac)
                && table.available_to(ip, mac, now)
            {
                return Flow::Drop("init-reboot from a client without a record");
            }
            let bound = if acceptable {
                table
                    .bind(
                        ip,
                        mac,
                        req.client_id.clone(),
                        hostname.clone(),
                        now,
                        expires,
                    )
                    .ok()
            } else {
                None
            };
            drop(table);
            let Some(lease) = bound else {
                return Flow::Reply(Box::new(Response {
                    reply: Some(nak(ctx, "requested address not available")),
                    ..Response::default()
                }));
            };
            let reply = address_reply(
                ctx,
                MessageType::Ack,
                ip,
                lease_secs,
                hostname.as_deref(),
                shared,
            );
            Flow::Reply(Box::new(Response {
                reply: Some(reply),
                persist: vec![lease.clone()],
                bound: Some(lease),
                boot: ctx.boot.is_some().then(|| ctx.client.clone()),
                ..Response::default()
            }))
        }
        MessageType::Release => match shared.table().release(req.msg.ciaddr(), mac, now) {
            Some(l) => Flow::Reply(Box::new(Response {
                persist: vec![l.clone()],
                ended: vec![l],
                ..Response::default()
            })),
            None => Flow::Drop("release of an address the client does not hold"),
        },
        MessageType::Decline => {
            let Some(ip) = req.requested_ip else {
                return Flow::Drop("decline without an address");
            };
            let until = now + shared.cfg.decline_quarantine.as_secs();
            tracing::warn!(%mac, %ip, "client declined address: quarantined");
            match shared.table().decline(ip, mac, now, until) {
                Some(l) => Flow::Reply(Box::new(Response {
                    persist: vec![l.clone()],
                    ended: vec![l],
                    ..Response::default()
                })),
                None => Flow::Drop("decline of an address the client does not hold"),
            }
        }
        MessageType::Inform => {
            let ciaddr = req.msg.ciaddr();
            if ciaddr.is_unspecified() {
                return Flow::Drop("inform without ciaddr");
            }
            let mut msg = base_reply(req, MessageType::Ack, ctx.iface.addr);
            let mut tail = Vec::new();
            add_subnet_options(&mut msg, subnet, hostname.as_deref(), None);
            if let Some(d) = &ctx.boot {
                add_boot(&mut msg, &mut tail, ctx, d, false);
            }
            let dest = if req.msg.giaddr().is_unspecified() {
                Dest::Unicast(SocketAddrV4::new(ciaddr, 68))
            } else {
                Dest::Relay(req.msg.giaddr())
            };
            Flow::Reply(Box::new(Response {
                reply: Some((finish(msg, req, tail), dest)),
                ..Response::default()
            }))
        }
        _ => Flow::Drop("not a client message"),
    }
}

/// The skeleton of a reply: header copied from the request, message type and server id.
fn base_reply(req: &Request, ty: MessageType, our: Ipv4Addr) -> v4::Message {
    let r = &req.msg;
    let mut msg = v4::Message::new_with_id(
        r.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        r.giaddr(),
        &r.chaddr()[..6],
    );
    msg.set_opcode(v4::Opcode::BootReply)
        .set_flags(r.flags())
        .set_secs(0);
    if ty != MessageType::Nak {
        msg.set_ciaddr(r.ciaddr());
    }
    msg.opts_mut().insert(DhcpOption::MessageType(ty));
    msg.opts_mut().insert(DhcpOption::ServerIdentifier(our));
    if let Some(id) = &req.client_id {
        msg.opts_mut()
            .insert(DhcpOption::ClientIdentifier(id.clone()));
    }
    msg
}

/// Adds the echoed option 82, if any, as the last option.
fn finish(msg: v4::Message, req: &Request, mut tail: Vec<(u8, Vec<u8>)>) -> Reply {
    if let Some(ri) = &req.relay_info {
        tail.push((82, ri.clone()));
    }
    Reply {
        msg,
        raw_tail: tail,
    }
}

fn add_subnet_options(
    msg: &mut v4::Message,
    s: &super::Subnet,
    hostname: Option<&str>,
    lease_secs: Option<u32>,
) {
    let o = msg.opts_mut();
    o.insert(DhcpOption::SubnetMask(s.net.netmask()));
    if !s.routers.is_empty() {
        o.insert(DhcpOption::Router(s.routers.clone()));
    }
    if !s.dns_servers.is_empty() {
        o.insert(DhcpOption::DomainNameServer(s.dns_servers.clone()));
    }
    if let Some(d) = &s.domain {
        o.insert(DhcpOption::DomainName(d.clone()));
    }
    if !s.ntp_servers.is_empty() {
        o.insert(DhcpOption::NtpServers(s.ntp_servers.clone()));
    }
    if let Some(mtu) = s.mtu {
        o.insert(DhcpOption::InterfaceMtu(mtu));
    }
    if !s.routes.is_empty() {
        o.insert(DhcpOption::ClasslessStaticRoute(s.routes.clone()));
    }
    if let Some(h) = hostname {
        o.insert(DhcpOption::Hostname(h.to_owned()));
    }
    if let Some(secs) = lease_secs {
        o.insert(DhcpOption::AddressLeaseTime(secs));
        o.insert(DhcpOption::Renewal(secs / 2));
        o.insert(DhcpOption::Rebinding(secs / 8 * 7));
    }
}

/// Boot fields: next-server, `file` (and option 67), iPXE's 175.176, HTTPClient echo; in
/// proxy mode also option 60 `PXEClient` and option 43 "boot from the file, no discovery".
fn add_boot(
    msg: &mut v4::Message,
    tail: &mut Vec<(u8, Vec<u8>)>,
    ctx: &Ctx<'_>,
    decision: &BootDecision,
    proxy: bool,
) {
    msg.set_siaddr(ctx.iface.addr);
    let file = decision.file();
    if file.len() < 128 {
        msg.set_fname_str(file);
    }
    msg.opts_mut()
        .insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    if ctx.client.is_ipxe() {
        if !proxy {
            tail.push((
                OPT_IPXE,
                codec::encode_suboptions(&[SubOption {
                    code: IPXE_NO_PXEDHCP,
                    data: vec![1],
                }]),
            ));
        }
    } else if matches!(
        decision,
        BootDecision::Http {
            echo_http_client: true,
            ..
        }
    ) {
        msg.opts_mut()
            .insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
    } else if proxy {
        msg.opts_mut()
            .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        // PXE_DISCOVERY_CONTROL = 8: boot the file named here, skip boot server discovery.
        msg.opts_mut()
            .insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    }
}

/// An OFFER or ACK for `ip`.
fn address_reply(
    ctx: &Ctx<'_>,
    ty: MessageType,
    ip: Ipv4Addr,
    lease_secs: u32,
    hostname: Option<&str>,
    shared: &Shared,
) -> (Reply, Dest) {
    let subnet = &shared.cfg.subnets[ctx.subnet.expect("invariant: subnet selected")];
    let req = ctx.req;
    let mut msg = base_reply(req, ty, ctx.iface.addr);
    msg.set_yiaddr(ip);
    let mut tail = Vec::new();
    add_subnet_options(&mut msg, subnet, hostname, Some(lease_secs));
    if let Some(d) = &ctx.boot {
        add_boot(&mut msg, &mut tail, ctx, d, false);
    }
    let r = &req.msg;
    let dest = if !r.giaddr().is_unspecified() {
        Dest::Relay(r.giaddr())
    } else if !r.ciaddr().is_unspecified() {
        Dest::Unicast(SocketAddrV4::new(r.ciaddr(), 68))
    } else if r.flags().broadcast() {
        Dest::Broadcast
    } else {
        Dest::Hardware { ip, mac: req.mac }
    };
    (finish(msg, req, tail), dest)
}

fn nak(ctx: &Ctx<'_>, why: &str) -> (Reply, Dest) {
    let req = ctx.req;
    let mut msg = base_reply(req, MessageType::Nak, ctx.iface.addr);
    msg.opts_mut().insert(DhcpOption::Message(why.to_owned()));
    let dest = if req.msg.giaddr().is_unspecified() {
        Dest::Broadcast
    } else {
        msg.set_flags(req.msg.flags().set_broadcast());
        Dest::Relay(req.msg.giaddr())
    };
    (finish(msg, req, Vec::new()), dest)
}

/// Decode-and-decide over one packet against a fixed configuration, for fuzzing: returns the
/// encoded reply, if any. Stateful across calls (one process-wide lease table).
#[doc(hidden)]
pub fn fuzz_decide(bytes: &[u8]) -> Option<Vec<u8>> {
    use std::sync::OnceLock;
    static SHARED: OnceLock<Shared> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        let cfg = Config {
            subnets: vec![super::Subnet {
                net: "10.61.0.0/24".parse().expect("invariant: literal subnet"),
                pools: vec![(Ipv4Addr::new(10, 61, 0, 10), Ipv4Addr::new(10, 61, 0, 20))],
                lease_time: std::time::Duration::from_secs(600),
                routers: vec![Ipv4Addr::new(10, 61, 0, 1)],
                dns_servers: vec![Ipv4Addr::new(10, 61, 0, 1)],
                domain: Some("rack.test".into()),
                ntp_servers: vec![],
                mtu: Some(1500),
                routes: vec![],
            }],
            ..Config::default()
        };
        Shared::new(cfg, LeaseTable::default(), Arc::new(super::NoHooks))
    });
    let req = codec::decode(bytes).ok()?;
    let iface = Iface {
        name: "fuzz0".into(),
        index: None,
        addr: Ipv4Addr::new(10, 61, 0, 1),
    };
    let mut ctx = Ctx::new(
        &req,
        &iface,
        Port::Dhcp,
        SocketAddrV4::new(Ipv4Addr::new(10, 61, 0, 2), 68),
        1_000_000,
    );
    match run(super::server::STAGES, &mut ctx, shared) {
        Flow::Reply(resp) => resp.reply.and_then(|(reply, _)| codec::encode(&reply).ok()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use dhcproto::Encodable;

    use super::*;
    use crate::dhcp::NoHooks;

    const OUR: Ipv4Addr = Ipv4Addr::new(10, 61, 0, 1);
    const NOW: u64 = 1_000_000;
    /// Holds the pool's first address.
    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    /// Knows nobody's address.
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    /// Has a config reservation (10.61.0.5, outside the pool).
    const R: [u8; 6] = [2, 0, 0, 0, 0, 0xc];
    /// Known to the inventory (the `reservation` hook), not to the config.
    const K: [u8; 6] = [2, 0, 0, 0, 0, 0xd];

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 61, 0, last)
    }

    /// The inventory knows K.
    #[derive(Debug)]
    struct Inventory;

    impl DhcpHooks for Inventory {
        fn reservation(&self, mac: MacAddr) -> Option<Reservation> {
            (mac == MacAddr(K)).then(|| Reservation {
                mac,
                ip: ip(6),
                hostname: None,
            })
        }
    }

    fn shared(unknown_clients: UnknownClients, hooks: Arc<dyn DhcpHooks>) -> Shared {
        let cfg = Config {
            unknown_clients,
            subnets: vec![super::super::Subnet {
                net: "10.61.0.0/24".parse().expect("net"),
                pools: vec![(ip(10), ip(20))],
                lease_time: std::time::Duration::from_secs(600),
                routers: vec![],
                dns_servers: vec![],
                domain: None,
                ntp_servers: vec![],
                mtu: None,
                routes: vec![],
            }],
            reservations: vec![Reservation {
                mac: MacAddr(R),
                ip: ip(5),
                hostname: None,
            }],
            ..Config::default()
        };
        let s = Shared::new(cfg, LeaseTable::default(), hooks);
        s.table()
            .bind(ip(10), MacAddr(A), None, None, NOW - 10, NOW + 500)
            .expect("A binds");
        s
    }

    /// A request as it comes off the wire: encoded by dhcproto, decoded by our codec.
    fn request(
        mac: [u8; 6],
        ty: MessageType,
        ciaddr: Ipv4Addr,
        giaddr: Ipv4Addr,
        opts: Vec<DhcpOption>,
    ) -> Request {
        let mut m = v4::Message::new(
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            giaddr,
            &mac,
        );
        m.opts_mut().insert(DhcpOption::MessageType(ty));
        for o in opts {
            m.opts_mut().insert(o);
        }
        codec::decode(&m.to_vec().expect("encodes")).expect("decodes")
    }

    /// What the pipeline did, reduced to what a client sees.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Reply(MessageType, Dest),
        /// State changed, nothing sent (RELEASE, DECLINE).
        Silent,
        Dropped(&'static str),
    }

    fn run_one(shared: &Shared, req: &Request) -> Seen {
        let iface = Iface {
            name: "t0".into(),
            index: Some(1),
            addr: OUR,
        };
        let mut ctx = Ctx::new(
            req,
            &iface,
            Port::Dhcp,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
            NOW,
        );
        match run(super::super::server::STAGES, &mut ctx, shared) {
            Flow::Reply(r) => match r.reply {
                Some((reply, dest)) => Seen::Reply(
                    reply.msg.opts().msg_type().expect("replies have a type"),
                    dest,
                ),
                None => Seen::Silent,
            },
            Flow::Drop(why) => Seen::Dropped(why),
            Flow::Continue => unreachable!("run never returns Continue"),
        }
    }

    #[test]
    fn request_table_acks_naks_and_drops() {
        use MessageType::{Ack, Nak, Request as Req};
        let none = Ipv4Addr::UNSPECIFIED;
        let relay = ip(254);
        let want = |mac: Option<[u8; 6]>, yiaddr: Ipv4Addr| match mac {
            Some(mac) => Dest::Hardware {
                ip: yiaddr,
                mac: MacAddr(mac),
            },
            None => Dest::Broadcast,
        };
        let asks = |a: Ipv4Addr| DhcpOption::RequestedIpAddress(a);
        let sid = |a: Ipv4Addr| DhcpOption::ServerIdentifier(a);
        let table: Vec<(&str, Request, Seen)> = vec![
            (
                "INIT-REBOOT, address of another network",
                request(B, Req, none, none, vec![asks(Ipv4Addr::new(10, 99, 0, 5))]),
                Seen::Reply(Nak, Dest::Broadcast),
            ),
            (
                "INIT-REBOOT, our subnet outside the pool",
                request(B, Req, none, none, vec![asks(ip(200))]),
                Seen::Reply(Nak, Dest::Broadcast),
            ),
            (
                "INIT-REBOOT, another client's reservation",
                request(B, Req, none, none, vec![asks(ip(5))]),
                Seen::Reply(Nak, Dest::Broadcast),
            ),
            (
                "SELECTING us, address another client holds",
                request(B, Req, none, none, vec![asks(ip(10)), sid(OUR)]),
                Seen::Reply(Nak, Dest::Broadcast),
            ),
            (
                "RENEWING an address another client holds",
                request(B, Req, ip(10), none, vec![]),
                Seen::Reply(Nak, Dest::Broadcast),
            ),
            (
                "relayed INIT-REBOOT, foreign address: NAK to the relay",
                request(B, Req, none, relay, vec![asks(Ipv4Addr::new(10, 99, 0, 5))]),
                Seen::Reply(Nak, Dest::Relay(relay)),
            ),
            (
                "reservation holder asking for a pool address",
                request(R, Req, none, none, vec![asks(ip(11))]),
                Seen::Reply(Nak, Dest::Broadcast),
            ),
            (
                "RENEWING its own lease: unicast to ciaddr",
                request(A, Req, ip(10), none, vec![]),
                Seen::Reply(Ack, Dest::Unicast(SocketAddrV4::new(ip(10), 68))),
            ),
            (
                "INIT-REBOOT with its own address",
                request(A, Req, none, none, vec![asks(ip(10))]),
                Seen::Reply(Ack, want(Some(A), ip(10))),
            ),
            (
                "reservation holder asking for its reservation",
                request(R, Req, none, none, vec![asks(ip(5)), sid(OUR)]),
                Seen::Reply(Ack, want(Some(R), ip(5))),
            ),
            (
                "INIT-REBOOT of a client without a record, free address: silent",
                request(B, Req, none, none, vec![asks(ip(12))]),
                Seen::Dropped("init-reboot from a client without a record"),
            ),
            (
                "SELECTING us, free address, no record needed",
                request(B, Req, none, none, vec![asks(ip(12)), sid(OUR)]),
                Seen::Reply(Ack, want(Some(B), ip(12))),
            ),
            (
                "SELECTING another server",
                request(B, Req, none, none, vec![asks(ip(12)), sid(ip(2))]),
                Seen::Dropped("client chose another server"),
            ),
            (
                "REQUEST naming no address",
                request(B, Req, none, none, vec![]),
                Seen::Dropped("request without an address"),
            ),
        ];
        for (what, req, seen) in table {
            let s = shared(UnknownClients::All, Arc::new(NoHooks));
            assert_eq!(run_one(&s, &req), seen, "{what}");
            if let Seen::Reply(Nak, _) = seen {
                // A NAK changes nothing: A still holds its address.
                assert_eq!(
                    s.table().lease_of(MacAddr(A), NOW).map(|l| l.ip),
                    Some(ip(10)),
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn unknown_client_policy_table() {
        use MessageType::{Discover, Offer, Release};
        use UnknownClients::{All, KnownOnly, PxeOnly};
        let none = Ipv4Addr::UNSPECIFIED;
        let pxe = || {
            vec![
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
                DhcpOption::ClientSystemArchitecture(0.into()),
            ]
        };
        let clients: Vec<(&str, Request)> = vec![
            ("plain, unknown", request(B, Discover, none, none, vec![])),
            ("PXE, unknown", request(B, Discover, none, none, pxe())),
            (
                "iPXE, unknown",
                request(
                    B,
                    Discover,
                    none,
                    none,
                    vec![DhcpOption::UserClass(b"iPXE".to_vec())],
                ),
            ),
            (
                "UEFI HTTP, unknown",
                request(
                    B,
                    Discover,
                    none,
                    none,
                    vec![DhcpOption::ClassIdentifier(
                        b"HTTPClient:Arch:00016:UNDI:003001".to_vec(),
                    )],
                ),
            ),
            (
                "vendor class of a plain client",
                request(
                    B,
                    Discover,
                    none,
                    none,
                    vec![DhcpOption::ClassIdentifier(b"udhcp 1.35.0".to_vec())],
                ),
            ),
            (
                "plain, config reservation",
                request(R, Discover, none, none, vec![]),
            ),
            (
                "plain, inventory reservation",
                request(K, Discover, none, none, vec![]),
            ),
            // Giving an address back is never refused by policy.
            (
                "RELEASE, unknown",
                request(A, Release, ip(10), none, vec![]),
            ),
        ];
        let offered = |mac: [u8; 6], at: u8| {
            Seen::Reply(
                Offer,
                Dest::Hardware {
                    ip: ip(at),
                    mac: MacAddr(mac),
                },
            )
        };
        let refused = || Seen::Dropped("client not admitted by policy");
        // Per client: (all, pxe-only, known-only).
        let want: Vec<[Seen; 3]> = vec![
            [offered(B, 11), refused(), refused()],
            [offered(B, 11), offered(B, 11), refused()],
            [offered(B, 11), offered(B, 11), refused()],
            [offered(B, 11), offered(B, 11), refused()],
            [offered(B, 11), refused(), refused()],
            [offered(R, 5), offered(R, 5), offered(R, 5)],
            [offered(K, 6), offered(K, 6), offered(K, 6)],
            [Seen::Silent, Seen::Silent, Seen::Silent],
        ];
        for ((what, req), want) in clients.iter().zip(want) {
            for (mode, want) in [All, PxeOnly, KnownOnly].into_iter().zip(want) {
                let s = shared(mode, Arc::new(Inventory));
                assert_eq!(run_one(&s, req), want, "{what} under {mode:?}");
            }
        }
    }
}
