//! Rack network services of the appliance: DHCPv4, TFTP, HTTP boot, DNS, NBD and NFS export
//! management.
//!
//! The control node (`provisioner serve`) embeds these servers; the `netsvc` binary runs them
//! standalone. Every protocol is split into a pure `codec` (bytes ↔ types, no I/O) and a `server`
//! (sockets, tasks); every server has the same shape: a `Config`, `Server::start(cfg, deps)`
//! returning a handle with `local_addr()` and `shutdown()`, and dropping the handle stops it.
#![warn(clippy::print_stdout)]

pub mod dns;
mod types;

pub use types::{MacAddr, ParseMacError};

/// Runs the standalone network services until `shutdown` is cancelled.
pub async fn run(shutdown: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    shutdown.cancelled().await;
    Ok(())
}
