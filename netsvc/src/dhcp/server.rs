//! Sockets and tasks: one UDP socket per interface (`SO_BINDTODEVICE`, broadcast), a task per
//! packet under a semaphore, the pipeline, durable persistence before the reply, then hooks.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, field, info, warn};

use super::lease::{Lease, LeaseTable};
use super::policy::{self, Ctx, Dest, Flow, Iface, Port, Shared, Stage};
use super::rawsend::RawSender;
use super::store::{LeaseStore, Persister};
use super::{Config, Deps, Mode, codec};
use common::ErrorChain;

/// The pipeline, in order. This is the one place the order is declared.
pub(crate) const STAGES: &[Stage] = &[
    policy::classify,
    policy::proxy,
    policy::select_subnet,
    policy::admit,
    policy::server_id,
    policy::dispatch,
];

/// The PXE boot server discovery port proxyDHCP also answers on.
const PXE_PORT: u16 = 4011;
/// How often expired leases are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How long shutdown waits for in-flight packets.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The DHCP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// Loading the stored leases failed.
    #[error("failed to load leases")]
    LoadLeases {
        /// The store's error.
        #[source]
        err: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The lease writer thread could not start.
    #[error("failed to start the lease writer")]
    Writer {
        /// Why.
        #[source]
        err: std::io::Error,
    },
    /// An interface has no IPv4 address or does not exist.
    #[error("interface {iface} has no IPv4 address")]
    NoAddress {
        /// The interface.
        iface: String,
    },
    /// Listing interfaces failed.
    #[error("failed to list network interfaces")]
    Interfaces {
        /// Why.
        #[source]
        err: nix::Error,
    },
    /// A socket could not be set up.
    #[error("failed to bind DHCP socket {addr} on interface `{iface}`")]
    Bind {
        /// The address.
        addr: SocketAddrV4,
        /// The interface (empty: none).
        iface: String,
        /// Why.
        #[source]
        err: std::io::Error,
    },
    /// Server mode without subnets.
    #[error("DHCP server mode needs at least one subnet")]
    NoSubnet,
}

/// The DHCPv4 server.
#[derive(Debug)]
pub struct Server;

/// A running server. Dropping it stops the server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    token: CancellationToken,
    tracker: TaskTracker,
    shared: Arc<Shared>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn iface_addr(name: &str) -> Result<Iface, DhcpError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|err| DhcpError::Interfaces { err })?;
    for a in addrs {
        if a.interface_name != name {
            continue;
        }
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            let index = nix::net::if_::if_nametoindex(name).ok();
            return Ok(Iface {
                name: name.to_owned(),
                index,
                addr: sin.ip(),
            });
        }
    }
    Err(DhcpError::NoAddress {
        iface: name.to_owned(),
    })
}

fn bind(addr: SocketAddrV4, iface: &str) -> Result<UdpSocket, DhcpError> {
    let err = |err| DhcpError::Bind {
        addr,
        iface: iface.to_owned(),
        err,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    // Bursts of a whole rack booting at once: a large buffer rather than drops.
    let _ = s.set_recv_buffer_size(4 << 20);
    if !iface.is_empty() {
        s.bind_device(Some(iface.as_bytes())).map_err(err)?;
    }
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&SocketAddr::V4(addr).into()).map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

impl Server {
    /// Loads the leases, binds every socket and starts serving.
    pub async fn start<S: LeaseStore>(
        cfg: Config,
        deps: Deps<S>,
    ) -> Result<ServerHandle, DhcpError> {
        if cfg.mode == Mode::Server && cfg.subnets.is_empty() {
            return Err(DhcpError::NoSubnet);
        }
        let Deps { mut store, hooks } = deps;
        let stored = store
            .load()
            .map_err(|err| DhcpError::LoadLeases { err: Box::new(err) })?;
        let table = LeaseTable::from_leases(stored, now_secs());
        let persister = Persister::spawn(store).map_err(|err| DhcpError::Writer { err })?;

        let mut ifaces = Vec::new();
        if cfg.interfaces.is_empty() {
            ifaces.push(Iface {
                name: String::new(),
                index: None,
                addr: *cfg.listen.ip(),
            });
        } else {
            for name in &cfg.interfaces {
                ifaces.push(iface_addr(name)?);
            }
        }
        let mut sockets = Vec::new();
        for iface in &ifaces {
            sockets.push((bind(cfg.listen, &iface.name)?, iface.clone(), Port::Dhcp));
            if cfg.mode == Mode::Proxy {
                let pxe = SocketAddrV4::new(*cfg.listen.ip(), PXE_PORT);
                sockets.push((bind(pxe, &iface.name)?, iface.clone(), Port::Pxe));
            }
        }
        let local_addr = sockets[0].0.local_addr().map_err(|err| DhcpError::Bind {
            addr: cfg.listen,
            iface: ifaces[0].name.clone(),
            err,
        })?;
        let raw = match RawSender::new() {
            Ok(r) => Some(Arc::new(r)),
            Err(err) => {
                let err = std::io::Error::other(err);
                warn!(error = %ErrorChain(&err), "no packet socket: replies to clients without an address are broadcast");
                None
            }
        };
        let sem = Arc::new(Semaphore::new(cfg.max_in_flight.get()));
        let shared = Arc::new(Shared::new(cfg, table, hooks));
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
        info!(proto = "dhcp", addr = %local_addr, interfaces = ?names, "listening");
        for (sock, iface, port) in sockets {
            let w = Worker {
                sock: Arc::new(sock),
                iface: Arc::new(iface),
                port,
                shared: shared.clone(),
                persister: persister.clone(),
                raw: raw.clone(),
            };
            tracker.spawn(w.recv_loop(token.clone(), sem.clone(), tracker.clone()));
        }
        tracker.spawn(sweep(shared.clone(), persister, token.clone()));
        Ok(ServerHandle {
            local_addr,
            token,
            tracker,
            shared,
        })
    }
}

impl ServerHandle {
    /// The address of the first socket (the one on the first interface).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every live lease (for rebuilding DNS at start, for the UI).
    pub fn leases(&self) -> Vec<Lease> {
        let now = now_secs();
        let t = self.shared.table.lock().unwrap_or_else(|p| p.into_inner());
        t.live_leases(now)
    }

    /// Stops receiving and waits (bounded) for in-flight packets to finish.
    pub async fn shutdown(self) {
        self.token.cancel();
        self.tracker.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("dhcp shutdown timed out with packets in flight");
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

struct Worker {
    sock: Arc<UdpSocket>,
    iface: Arc<Iface>,
    port: Port,
    shared: Arc<Shared>,
    persister: Persister,
    raw: Option<Arc<RawSender>>,
}

impl Clone for Worker {
    fn clone(&self) -> Self {
        Worker {
            sock: self.sock.clone(),
            iface: self.iface.clone(),
            port: self.port,
            shared: self.shared.clone(),
            persister: self.persister.clone(),
            raw: self.raw.clone(),
        }
    }
}

impl Worker {
    async fn recv_loop(self, token: CancellationToken, sem: Arc<Semaphore>, tracker: TaskTracker) {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = tokio::select! {
                () = token.cancelled() => break,
                r = self.sock.recv_from(&mut buf) => match r {
                    Ok(v) => v,
                    Err(err) => {
                        debug!(error = %ErrorChain(&err), "dhcp receive failed");
                        continue;
                    }
                },
            };
            let SocketAddr::V4(peer) = peer else { continue };
            let permit = tokio::select! {
                () = token.cancelled() => break,
                p = sem.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let bytes = buf[..n].to_vec();
            let w = self.clone();
            let span =
                tracing::debug_span!("dhcp", %peer, iface = %w.iface.name, xid = field::Empty);
            tracker.spawn(
                async move {
                    w.handle(&bytes, peer).await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }

    async fn handle(&self, bytes: &[u8], peer: SocketAddrV4) {
        let req = match codec::decode(bytes) {
            Ok(r) => r,
            Err(err) => {
                debug!(error = %ErrorChain(&err), len = bytes.len(), "malformed packet dropped");
                return;
            }
        };
        tracing::Span::current().record("xid", format_args!("{:#010x}", req.msg.xid()));
        let mut ctx = Ctx::new(&req, &self.iface, self.port, peer, now_secs());
        let resp = match policy::run(STAGES, &mut ctx, &self.shared) {
            Flow::Reply(r) => r,
            Flow::Drop(reason) => {
                debug!(mac = %req.mac, msg_type = ?req.msg_type, reason, "request dropped");
                return;
            }
            Flow::Continue => unreachable!("policy::run never returns Continue"),
        };
        if !resp.persist.is_empty()
            && let Err(err) = self.persister.persist(resp.persist).await
        {
            warn!(error = %ErrorChain(&err), mac = %req.mac, "lease not persisted: no reply");
            return;
        }
        if let Some((reply, dest)) = resp.reply {
            match codec::encode(&reply) {
                Ok(out) => {
                    debug!(mac = %req.mac, msg_type = ?req.msg_type, yiaddr = %reply.msg.yiaddr(), ?dest, "reply");
                    self.send(&out, dest).await;
                }
                Err(err) => warn!(error = %ErrorChain(&err), "reply encoding failed"),
            }
        }
        let hooks = &self.shared.hooks;
        if let Some(l) = &resp.bound {
            info!(mac = %l.mac, ip = %l.ip, expires = l.expires, "lease bound");
            hooks.lease_bound(l);
        }
        for l in &resp.ended {
            info!(mac = %l.mac, ip = %l.ip, state = l.state.as_str(), "lease ended");
            hooks.lease_ended(l);
        }
        if let Some(c) = &resp.boot {
            hooks.boot_request(req.mac, c);
        }
    }

    async fn send(&self, out: &[u8], dest: Dest) {
        let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
        let target = match dest {
            Dest::Relay(ip) => SocketAddrV4::new(ip, 67),
            Dest::Unicast(sa) => sa,
            Dest::Broadcast => bcast,
            Dest::Hardware { ip, mac } => match (&self.raw, self.iface.index) {
                (Some(raw), Some(index)) => match raw.send(index, mac, self.iface.addr, ip, out) {
                    Ok(()) => return,
                    Err(err) => {
                        debug!(error = %ErrorChain(&err), "packet-socket unicast failed: broadcasting");
                        bcast
                    }
                },
                _ => bcast,
            },
        };
        if let Err(err) = self.sock.send_to(out, target).await {
            debug!(error = %ErrorChain(&err), %target, "dhcp send failed");
        }
    }
}

async fn sweep(shared: Arc<Shared>, persister: Persister, token: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            _ = tick.tick() => {}
        }
        let ended = {
            let mut t = shared.table.lock().unwrap_or_else(|p| p.into_inner());
            t.expire(now_secs())
        };
        if ended.is_empty() {
            continue;
        }
        if let Err(err) = persister.persist(ended.clone()).await {
            warn!(error = %ErrorChain(&err), "expired leases not persisted");
            continue;
        }
        for l in &ended {
            info!(mac = %l.mac, ip = %l.ip, state = l.state.as_str(), "lease ended");
            shared.hooks.lease_ended(l);
        }
    }
}
