//! Rack network services of the appliance: DHCPv4, TFTP, HTTP boot, DNS, NBD and NFS export
//! management.
//!
//! The control node (`provisioner serve`) embeds these servers; the `netsvc` binary runs them
//! standalone. Every protocol is split into a pure `codec` (bytes ↔ types, no I/O) and a `server`
//! (sockets, tasks); every server has the same shape: a `Config`, `Server::start(cfg, deps)`
//! returning a handle with `local_addr()` and `shutdown()`, and dropping the handle stops it.
//!
//! - [`dhcp`]: the DHCPv4 server ([`dhcp::Server`], [`dhcp::DhcpHooks`], leases in
//!   [`dhcp::SqliteLeaseStore`]).
//! - [`config`]: flags, the TOML file and drop-ins → validated [`config::Settings`].
//! - [`run`]: what the `netsvc` binary does with those settings.
#![warn(clippy::print_stdout)]

pub mod config;
pub mod dhcp;
mod types;

use std::sync::Arc;

use camino::Utf8PathBuf;
use tokio_util::sync::CancellationToken;

pub use types::{MacAddr, ParseMacError};

/// The standalone services failed to start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The state directory could not be created.
    #[error("failed to create state directory `{path}`")]
    StateDir {
        /// The directory.
        path: Utf8PathBuf,
        /// Why.
        #[source]
        err: std::io::Error,
    },
    /// The lease database could not be opened.
    #[error("failed to open the DHCP lease store")]
    LeaseStore {
        /// Why.
        #[source]
        err: dhcp::SqliteStoreError,
    },
    /// The DHCP server did not start.
    #[error("failed to start the DHCP server")]
    Dhcp {
        /// Why.
        #[source]
        err: dhcp::DhcpError,
    },
}

fn lease_db(settings: &config::Settings) -> Utf8PathBuf {
    settings.state_dir.join(dhcp::SqliteLeaseStore::FILE_NAME)
}

/// Runs the standalone network services until `shutdown` is cancelled, then drains them.
pub async fn run(settings: config::Settings, shutdown: CancellationToken) -> Result<(), RunError> {
    let mut dhcp_handle = None;
    if let Some(cfg) = settings.dhcp.clone() {
        std::fs::create_dir_all(&settings.state_dir).map_err(|err| RunError::StateDir {
            path: settings.state_dir.clone(),
            err,
        })?;
        let mut store = dhcp::SqliteLeaseStore::open(&lease_db(&settings))
            .map_err(|err| RunError::LeaseStore { err })?;
        store
            .checkpoint_in_background()
            .map_err(|err| RunError::LeaseStore { err })?;
        let deps = dhcp::Deps {
            store,
            hooks: Arc::new(dhcp::NoHooks),
        };
        dhcp_handle = Some(
            dhcp::Server::start(cfg, deps)
                .await
                .map_err(|err| RunError::Dhcp { err })?,
        );
    }
    shutdown.cancelled().await;
    if let Some(h) = dhcp_handle {
        h.shutdown().await;
    }
    Ok(())
}

/// Number of live DHCP leases stored under the settings' state directory.
pub fn count_leases(settings: &config::Settings) -> Result<u64, RunError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    dhcp::SqliteLeaseStore::open(&lease_db(settings))
        .and_then(|s| s.count_live(now))
        .map_err(|err| RunError::LeaseStore { err })
}
