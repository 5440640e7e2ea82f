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
pub mod dns;
pub mod http;
pub mod tftp;
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
    /// A boot server was to bind an interface that has no IPv4 address.
    #[error("interface {iface} has no IPv4 address for the {proto} server")]
    NoAddress {
        /// The interface.
        iface: String,
        /// Which server.
        proto: &'static str,
    },
    /// The TFTP server did not start.
    #[error("failed to start the TFTP server")]
    Tftp {
        /// Why.
        #[source]
        err: tftp::TftpError,
    },
    /// The HTTP boot server did not start.
    #[error("failed to start the HTTP boot server")]
    Http {
        /// Why.
        #[source]
        err: http::HttpStartError,
    },
}

fn lease_db(settings: &config::Settings) -> Utf8PathBuf {
    settings.state_dir.join(dhcp::SqliteLeaseStore::FILE_NAME)
}

/// Runs the standalone network services until `shutdown` is cancelled, then drains them.
pub async fn run(settings: config::Settings, shutdown: CancellationToken) -> Result<(), RunError> {
    // Boot-file servers first, so no client is sent to a server that is not there yet.
    let bind = |iface: &Option<String>, listen: &mut std::net::SocketAddr, proto| {
        if let Some(iface) = iface {
            let ip = config::iface_addr(iface).ok_or_else(|| RunError::NoAddress {
                iface: iface.clone(),
                proto,
            })?;
            listen.set_ip(ip.into());
        }
        Ok::<_, RunError>(())
    };
    let tftp_handle = match settings.tftp.clone() {
        Some(mut cfg) => Some({
            bind(&settings.tftp_iface, &mut cfg.listen, "tftp")?;
            tftp::Server::start(cfg, tftp::TftpDeps::default())
                .await
                .map_err(|err| RunError::Tftp { err })?
        }),
        None => None,
    };
    let http_handle = match settings.http.clone() {
        Some(mut cfg) => {
            bind(&settings.http_iface, &mut cfg.listen, "http")?;
            let deps = http::HttpDeps {
                scripts: Arc::new(http::DefaultScripts),
                extra_routes: None,
            };
            Some(
                http::Server::start(cfg, deps)
                    .await
                    .map_err(|err| RunError::Http { err })?,
            )
        }
        None => None,
    };
    let mut dhcp_handle = None;
    if let Some(cfg) = settings.dhcp.clone() {
        std::fs::create_dir_all(&settings.state_dir).map_err(|err| RunError::StateDir {
            path: settings.state_dir.clone(),
            err,
        })?;
        let store = dhcp::SqliteLeaseStore::open(&lease_db(&settings))
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
    if let Some(h) = http_handle {
        h.shutdown().await;
    }
    if let Some(h) = tftp_handle {
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
