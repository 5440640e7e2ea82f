//! The TFTP server: one request socket, one task and ephemeral socket per transfer, bounded by a
//! semaphore.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use camino::Utf8PathBuf;
use common::ErrorChain;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::{self, ErrorCode, Mode, Packet, Request};
use super::config::Config;
use super::ipxe::{IpxeBinaries, IpxeError};
use super::policy::{self, Limits};
use super::root::{HostFiles, ResolveError, Root};
use super::transfer;

/// What the TFTP server needs from its embedder.
#[derive(Default, Clone)]
pub struct TftpDeps {
    /// Per-host generated files, looked up before the boot directory.
    pub host_files: Option<Arc<dyn HostFiles>>,
}

impl std::fmt::Debug for TftpDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TftpDeps")
            .field("host_files", &self.host_files.is_some())
            .finish()
    }
}

/// Why the TFTP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    /// The request socket could not be bound.
    #[error("failed to bind the TFTP socket on {addr}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// The boot directory is missing or unreadable.
    #[error("boot directory `{path}` is not usable")]
    BootDir {
        /// The configured directory.
        path: Utf8PathBuf,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// The iPXE binaries are not installed.
    #[error("cannot serve the iPXE binaries")]
    Ipxe(#[source] IpxeError),
}

/// The TFTP server.
#[derive(Debug)]
pub struct Server;

/// A running TFTP server; dropping it stops the server and its transfers.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    token: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the request socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting requests, aborts running transfers and waits for the server task.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Everything a transfer task shares with the request loop.
#[derive(Debug)]
struct Shared {
    root: Root,
    cfg: Config,
    limits: Limits,
}

impl Server {
    /// Binds the request socket and starts serving.
    pub async fn start(cfg: Config, deps: TftpDeps) -> Result<ServerHandle, TftpError> {
        let dir = cfg
            .boot_dir
            .canonicalize_utf8()
            .and_then(|d| std::fs::read_dir(&d).map(|_| d))
            .map_err(|err| TftpError::BootDir {
                path: cfg.boot_dir.clone(),
                err,
            })?;
        let ipxe = match &cfg.ipxe_dir {
            Some(d) => Some(IpxeBinaries::locate(d).map_err(TftpError::Ipxe)?),
            None => None,
        };
        let sock = UdpSocket::bind(cfg.listen)
            .await
            .map_err(|err| TftpError::Bind {
                addr: cfg.listen,
                err,
            })?;
        let local_addr = sock.local_addr().map_err(|err| TftpError::Bind {
            addr: cfg.listen,
            err,
        })?;
        // On a wildcard IPv4 address, learn which local address each request was sent to, so
        // its transfer answers from that address.
        let pktinfo = cfg.listen.ip() == IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        if pktinfo {
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Ipv4PacketInfo, &true)
                .map_err(|err| TftpError::Bind {
                addr: cfg.listen,
                err: err.into(),
            })?;
        }
        let shared = Arc::new(Shared {
            root: Root::new(dir, ipxe, deps.host_files),
            limits: Limits {
                max_blksize: cfg.max_blksize,
                max_windowsize: cfg.max_windowsize,
            },
            cfg,
        });
        let token = CancellationToken::new();
        let task = tokio::spawn(serve(sock, pktinfo, shared, token.clone()));
        info!(proto = "tftp", addr = %local_addr, "listening");
        Ok(ServerHandle {
            local_addr,
            token,
            task: Some(task),
        })
    }
}

/// What the request socket does with one datagram.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    /// Start a transfer for this read request.
    Transfer(Request),
    /// Answer from the request socket and forget.
    Reply(Packet),
    /// Ignore (with a debug log).
    Drop,
}

fn error(code: ErrorCode, message: &str) -> Flow {
    Flow::Reply(Packet::Error {
        code,
        message: message.to_owned(),
    })
}

/// Stage order for a datagram on the request socket: decode, refuse what is not a read request.
fn classify(buf: &[u8]) -> Flow {
    match codec::decode(buf) {
        Ok(Packet::Rrq(req)) if req.mode == Mode::Mail => {
            error(ErrorCode::ILLEGAL_OPERATION, "mail mode is not supported")
        }
        Ok(Packet::Rrq(req)) => Flow::Transfer(req),
        Ok(Packet::Wrq(_)) => error(ErrorCode::ACCESS_VIOLATION, "read-only server"),
        Ok(_) => Flow::Drop,
        Err(err) => {
            debug!(error = %ErrorChain(&err), "malformed request dropped");
            Flow::Drop
        }
    }
}

/// Receives one datagram with the local address it was sent to (`IP_PKTINFO` must be on).
async fn recv_with_dst(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg};
    sock.async_io(Interest::READABLE, || {
        let mut iov = [io::IoSliceMut::new(buf)];
        let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
        let msg = recvmsg::<SockaddrIn>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .map_err(io::Error::from)?;
        let peer = msg
            .address
            .map(|a| SocketAddr::V4(SocketAddrV4::from(a)))
            .ok_or_else(|| io::Error::other("datagram without a source address"))?;
        let dst = msg.cmsgs().ok().and_then(|mut it| {
            it.find_map(|c| match c {
                ControlMessageOwned::Ipv4PacketInfo(info) => Some(IpAddr::V4(Ipv4Addr::from(
                    u32::from_be(info.ipi_spec_dst.s_addr),
                ))),
                _ => None,
            })
        });
        Ok((msg.bytes, peer, dst))
    })
    .await
}

async fn serve(sock: UdpSocket, pktinfo: bool, shared: Arc<Shared>, token: CancellationToken) {
    let sem = Arc::new(Semaphore::new(shared.cfg.max_transfers.get()));
    let mut buf = vec![0u8; 65536];
    loop {
        let received = async {
            if pktinfo {
                recv_with_dst(&sock, &mut buf).await
            } else {
                sock.recv_from(&mut buf)
                    .await
                    .map(|(n, peer)| (n, peer, None))
            }
        };
        let (n, peer, dst) = tokio::select! {
            () = token.cancelled() => return,
            r = received => match r {
                Ok(r) => r,
                Err(err) => {
                    debug!(error = %ErrorChain(&err), "request socket receive failed");
                    continue;
                }
            },
        };
        let reply = match classify(&buf[..n]) {
            Flow::Drop => {
                debug!(%peer, len = n, "datagram dropped");
                continue;
            }
            Flow::Reply(p) => p,
            Flow::Transfer(req) => match sem.clone().try_acquire_owned() {
                Ok(permit) => {
                    let span = tracing::debug_span!("tftp_transfer", %peer, file = %req.filename);
                    let shared = shared.clone();
                    let token = token.child_token();
                    tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        span.in_scope(|| transfer_task(&shared, peer, dst, &req, &token));
                    });
                    continue;
                }
                Err(_) => {
                    warn!(%peer, "too many transfers, request refused");
                    Packet::Error {
                        code: ErrorCode::NOT_DEFINED,
                        message: "server busy, try again".to_owned(),
                    }
                }
            },
        };
        if let Err(err) = sock.send_to(&codec::encode(&reply), peer).await {
            debug!(%peer, error = %ErrorChain(&err), "reply failed");
        }
    }
}

/// Answers one read request from a fresh socket (its transfer ID). Blocking: runs on its own
/// thread, like a tftpd-hpa child process.
/// `dst` is the local address the request was sent to, when the request socket is on a
/// wildcard address: the transfer answers from it, as clients expect.
fn transfer_task(
    shared: &Shared,
    peer: SocketAddr,
    dst: Option<IpAddr>,
    req: &Request,
    cancel: &CancellationToken,
) {
    let local = SocketAddr::new(dst.unwrap_or(shared.cfg.listen.ip()), 0);
    let sock = match std::net::UdpSocket::bind(local).and_then(|s| s.connect(peer).map(|()| s)) {
        Ok(s) => s,
        Err(err) => {
            warn!(error = %ErrorChain(&err), "failed to open a transfer socket");
            return;
        }
    };
    let refuse = |code, message: &str| {
        let pkt = codec::encode(&Packet::Error {
            code,
            message: message.to_owned(),
        });
        let _ = sock.send(&pkt);
    };
    let content = match shared.root.open(peer.ip(), &req.filename) {
        Ok(c) => c,
        Err(err) => {
            debug!(error = %ErrorChain(&err), "request refused");
            let (code, msg) = match err {
                ResolveError::NotFound { .. } | ResolveError::NotAFile { .. } => {
                    (ErrorCode::FILE_NOT_FOUND, "file not found")
                }
                ResolveError::Path(_) | ResolveError::Escapes { .. } => {
                    (ErrorCode::ACCESS_VIOLATION, "access violation")
                }
                ResolveError::Open { .. } => (ErrorCode::ACCESS_VIOLATION, "cannot open file"),
            };
            refuse(code, msg);
            return;
        }
    };
    let neg = match policy::negotiate(req, &shared.limits, Some(content.len())) {
        Ok(n) => n,
        Err(err) => {
            debug!(error = %ErrorChain(&err), "option negotiation failed");
            refuse(ErrorCode::OPTION_NEGOTIATION, "option negotiation failed");
            return;
        }
    };
    let timeout = neg.timeout.unwrap_or(shared.cfg.timeout);
    let started = Instant::now();
    let netascii = req.mode == Mode::Netascii;
    let result = transfer::send(
        &sock,
        content,
        netascii,
        &neg,
        timeout,
        shared.cfg.retries,
        cancel,
    );
    match result {
        Ok(stats) => debug!(
            bytes = stats.bytes,
            retransmits = stats.retransmits,
            blksize = neg.blksize,
            windowsize = neg.windowsize,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "transfer complete"
        ),
        Err(err) => debug!(error = %ErrorChain(&err), "transfer failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_socket_stages() {
        let rrq = codec::encode(&Packet::Rrq(Request {
            filename: "a".into(),
            mode: Mode::Octet,
            options: vec![],
        }));
        assert!(matches!(classify(&rrq), Flow::Transfer(_)));
        let wrq = codec::encode(&Packet::Wrq(Request {
            filename: "a".into(),
            mode: Mode::Octet,
            options: vec![],
        }));
        assert!(matches!(
            classify(&wrq),
            Flow::Reply(Packet::Error {
                code: ErrorCode::ACCESS_VIOLATION,
                ..
            })
        ));
        let mail = b"\x00\x01a\x00mail\x00";
        assert!(matches!(
            classify(mail),
            Flow::Reply(Packet::Error {
                code: ErrorCode::ILLEGAL_OPERATION,
                ..
            })
        ));
        assert_eq!(classify(b"\x00\x04\x00\x01"), Flow::Drop);
        assert_eq!(classify(b"garbage"), Flow::Drop);
    }
}
