//! TFTP server (RFC 1350; options RFC 2347, block size RFC 2348, timeout and transfer size
//! RFC 2349, window size RFC 7440), read-only.
//!
//! [`Server::start`] binds one request socket and answers each read request from a task with
//! its own ephemeral socket, bounded by [`Config::max_transfers`]. Clients see a virtual tree:
//! files a [`HostFiles`] implementation generates for their address, then the boot directory,
//! then the iPXE binaries of Debian's `ipxe` package ([`IpxeBinaries`]). Write requests, names
//! that climb out of the root (also through symlinks) and bad options are refused with a TFTP
//! error; malformed datagrams are dropped.
//!
//! The protocol is written here rather than taken from `async-tftp`, which grants no window
//! size and serves only what its handler opens.

pub mod codec;
mod config;
mod ipxe;
pub mod policy;
mod root;
mod server;
mod transfer;

pub use config::{Config, TftpConfigError, TftpSection};
pub use ipxe::{DEFAULT_IPXE_DIR, IPXE_FILES, IpxeBinaries, IpxeError};
pub use root::HostFiles;
pub(crate) use root::{ResolveError, confine};
pub use server::{Server, ServerHandle, TftpDeps, TftpError};

/// Runs the request decoder and the decisions on one datagram, as the server does before any
/// I/O: decode, option negotiation (for a 1 MiB file) and the path check. For fuzzing.
#[doc(hidden)]
pub fn fuzz_request(data: &[u8]) {
    if let Ok(codec::Packet::Rrq(req) | codec::Packet::Wrq(req)) = codec::decode(data) {
        let limits = policy::Limits {
            max_blksize: 1468,
            max_windowsize: 64,
        };
        if let Ok(n) = policy::negotiate(&req, &limits, Some(1 << 20)) {
            assert!((policy::MIN_BLKSIZE..=1468).contains(&n.blksize));
            assert!((1..=64).contains(&n.windowsize));
        }
        if let Ok(rel) = policy::relative_path(&req.filename, "/srv/tftp") {
            assert!(!rel.split('/').any(|p| p == ".." || p.is_empty()));
        }
        let _ = codec::encode(&codec::Packet::Rrq(req));
    }
}
