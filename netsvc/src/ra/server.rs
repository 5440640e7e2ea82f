//! One raw ICMPv6 socket and task per interface: periodic RAs and answers to solicitations.

use std::io::{self, Read};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

use ipnet::Ipv6Net;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Config;
use super::codec::{Advert, default_prefix, encode_advert, is_solicitation};
use crate::MacAddr;

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// Solicitations closer together than this share one (multicast) answer.
const MIN_ANSWER_GAP: Duration = Duration::from_millis(300);

/// The router advertisement server did not start.
#[derive(Debug, thiserror::Error)]
pub enum RaError {
    /// The interface does not exist.
    #[error("no interface {iface} for router advertisements")]
    NoInterface {
        /// The interface.
        iface: String,
        /// Why.
        #[source]
        err: nix::Error,
    },
    /// The raw ICMPv6 socket could not be set up.
    #[error("failed to set up the ICMPv6 socket on {iface}")]
    Socket {
        /// The interface.
        iface: String,
        /// Why.
        #[source]
        err: io::Error,
    },
}

/// The IPv6 router advertisement server.
#[derive(Debug)]
pub struct Server;

/// A running router advertisement server; dropping it stops it.
#[derive(Debug)]
pub struct ServerHandle {
    prefixes: Vec<(String, Ipv6Net)>,
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    /// The interfaces advertised on, each with its prefix.
    pub fn prefixes(&self) -> &[(String, Ipv6Net)] {
        &self.prefixes
    }

    /// Stops the server and waits for its tasks.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

struct Link {
    iface: String,
    ifindex: u32,
    socket: AsyncFd<Socket>,
    advert: Vec<u8>,
    interval: Duration,
}

impl Server {
    /// Opens a socket on every interface of `cfg` (needs `CAP_NET_RAW`) and starts advertising.
    pub async fn start(cfg: Config) -> Result<ServerHandle, RaError> {
        let token = CancellationToken::new();
        let mut links = Vec::new();
        let mut prefixes = Vec::new();
        for iface in &cfg.interfaces {
            let ifindex = nix::net::if_::if_nametoindex(iface.as_str()).map_err(|err| {
                RaError::NoInterface {
                    iface: iface.clone(),
                    err,
                }
            })?;
            let socket = match open(iface, ifindex) {
                Ok(s) => s,
                // A kernel without IPv6 (ipv6.disable=1): nothing to advertise, DHCP goes on.
                Err(err) if err.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                    warn!(iface = %iface, error = %err, "no IPv6: router advertisements off");
                    continue;
                }
                Err(err) => {
                    return Err(RaError::Socket {
                        iface: iface.clone(),
                        err,
                    });
                }
            };
            let prefix = cfg.prefix.unwrap_or_else(|| default_prefix(iface));
            let source_mac = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
                .ok()
                .and_then(|s| s.trim().parse::<MacAddr>().ok());
            let advert = encode_advert(&Advert {
                prefix,
                valid_lifetime: 1800,
                preferred_lifetime: 900,
                source_mac,
            });
            info!(proto = "ra", addr = %format!("[{ALL_ROUTERS}%{iface}]"), %prefix, "listening");
            prefixes.push((iface.clone(), prefix));
            links.push(Link {
                iface: iface.clone(),
                ifindex,
                socket,
                advert,
                interval: cfg.interval,
            });
        }
        let tasks = links
            .into_iter()
            .map(|l| tokio::spawn(serve(l, token.clone())))
            .collect();
        Ok(ServerHandle {
            prefixes,
            token,
            tasks,
        })
    }
}

fn open(iface: &str, ifindex: u32) -> io::Result<AsyncFd<Socket>> {
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    s.set_nonblocking(true)?;
    s.bind_device(Some(iface.as_bytes()))?;
    // RFC 4861: hosts drop neighbour discovery messages whose hop limit is not 255.
    s.set_multicast_hops_v6(255)?;
    s.set_unicast_hops_v6(255)?;
    s.set_multicast_if_v6(ifindex)?;
    s.set_multicast_loop_v6(false)?;
    s.join_multicast_v6(&ALL_ROUTERS, ifindex)?;
    // SAFETY: `s` owns its descriptor, which stays open and the same until the `AsyncFd`
    // that owns `s` is dropped.
    Ok(unsafe { AsyncFd::register(s) }?)
}

async fn serve(link: Link, token: CancellationToken) {
    let dest = SockAddr::from(SocketAddrV6::new(ALL_NODES, 0, 0, link.ifindex));
    let mut tick = tokio::time::interval(link.interval);
    let mut last_sent: Option<tokio::time::Instant> = None;
    let mut warned = false;
    let mut buf = [0u8; 1500];
    loop {
        let solicited = tokio::select! {
            () = token.cancelled() => return,
            _ = tick.tick() => false,
            ready = link.socket.readable() => {
                let Ok(mut guard) = ready else { return };
                match guard.try_io(|s| s.get_ref().read(&mut buf)) {
                    Ok(Ok(n)) => {
                        let rs = buf.get(..n).is_some_and(is_solicitation);
                        if rs {
                            debug!(iface = %link.iface, "router solicitation");
                        }
                        if !rs || last_sent.is_some_and(|t| t.elapsed() < MIN_ANSWER_GAP) {
                            continue;
                        }
                        true
                    }
                    Ok(Err(err)) => {
                        debug!(iface = %link.iface, %err, "icmpv6 receive failed");
                        continue;
                    }
                    Err(_would_block) => continue,
                }
            }
        };
        match link.socket.get_ref().send_to(&link.advert, &dest) {
            Ok(_) => {
                last_sent = Some(tokio::time::Instant::now());
                debug!(iface = %link.iface, solicited, "router advertisement sent");
            }
            // Typically no IPv6 link-local address on the interface (IPv6 disabled there).
            Err(err) if !warned => {
                warned = true;
                warn!(iface = %link.iface, error = %err, "router advertisement not sent");
            }
            Err(err) => debug!(iface = %link.iface, error = %err, "router advertisement not sent"),
        }
    }
}
