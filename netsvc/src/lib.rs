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
//! - [`ra`]: IPv6 router advertisements on the DHCP interfaces, so iPXE does not wait for one.
//! - [`config`]: flags, the TOML file and drop-ins → validated [`config::Settings`].
//! - [`Services`]: every configured server started from those settings, with what an embedder
//!   plugs in ([`RunDeps`]); [`run`] is what the `netsvc` binary does with them.
#![warn(clippy::print_stdout)]

pub mod config;
pub mod dhcp;
pub mod dns;
pub mod http;
pub mod ra;
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
    /// The boot directory could not be created.
    #[error("failed to create boot directory `{path}`")]
    BootDir {
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
    /// The stored leases could not be read to publish them in DNS.
    #[error("failed to load the DHCP leases to publish in DNS")]
    LoadLeases {
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
    /// The router advertisement server did not start.
    #[error("failed to start the IPv6 router advertisement server")]
    Ra {
        /// Why.
        #[source]
        err: ra::RaError,
    },
    /// The DNS server did not start.
    #[error("failed to start the DNS server")]
    Dns {
        /// Why.
        #[source]
        err: dns::DnsError,
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

/// What an embedder (the control node) plugs into the services; [`RunDeps::default`] is the
/// standalone binary's choice: the default boot script for everyone, no extra routes, no hooks.
pub struct RunDeps {
    /// Chooses each host's iPXE script.
    pub scripts: Arc<dyn http::BootScripts>,
    /// More routes on the HTTP boot server (the control node's REST API).
    pub extra_routes: Option<axum::Router>,
    /// Called on the DHCP packet path, after the built-in publishing of leases in DNS.
    pub dhcp_hooks: Option<Arc<dyn dhcp::DhcpHooks>>,
}

impl Default for RunDeps {
    fn default() -> Self {
        RunDeps {
            scripts: Arc::new(http::DefaultScripts),
            extra_routes: None,
            dhcp_hooks: None,
        }
    }
}

impl std::fmt::Debug for RunDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunDeps")
            .field("extra_routes", &self.extra_routes.is_some())
            .field("dhcp_hooks", &self.dhcp_hooks.is_some())
            .finish_non_exhaustive()
    }
}

/// The running network services of one [`config::Settings`]; dropping it stops them.
#[derive(Debug)]
pub struct Services {
    tftp: Option<tftp::ServerHandle>,
    http: Option<http::ServerHandle>,
    dns: Option<dns::ServerHandle>,
    dhcp: Option<dhcp::ServerHandle>,
    ra: Option<ra::ServerHandle>,
    cancel: CancellationToken,
}

impl Services {
    /// Starts every configured server: the boot-file servers first (no client is sent to a
    /// server that is not there yet), DNS before DHCP (every lease DHCP binds is published),
    /// then DHCP (replaying the leases that survived a restart into DNS), then RAs.
    pub async fn start(settings: config::Settings, deps: RunDeps) -> Result<Services, RunError> {
        let cancel = CancellationToken::new();
        let mut services = Services {
            tftp: None,
            http: None,
            dns: None,
            dhcp: None,
            ra: None,
            cancel,
        };
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
        // The boot directory exists even before anything is put there, as tftpd-hpa's /srv/tftp.
        let boot_dirs = settings
            .tftp
            .iter()
            .map(|c| &c.boot_dir)
            .chain(settings.http.iter().map(|c| &c.boot_dir));
        for dir in boot_dirs {
            std::fs::create_dir_all(dir).map_err(|err| RunError::BootDir {
                path: dir.clone(),
                err,
            })?;
        }
        if let Some(mut cfg) = settings.tftp.clone() {
            bind(&settings.tftp_iface, &mut cfg.listen, "tftp")?;
            services.tftp = Some(
                tftp::Server::start(cfg, tftp::TftpDeps::default())
                    .await
                    .map_err(|err| RunError::Tftp { err })?,
            );
        }
        if let Some(mut cfg) = settings.http.clone() {
            bind(&settings.http_iface, &mut cfg.listen, "http")?;
            let http_deps = http::HttpDeps {
                scripts: deps.scripts,
                extra_routes: deps.extra_routes,
            };
            services.http = Some(
                http::Server::start(cfg, http_deps)
                    .await
                    .map_err(|err| RunError::Http { err })?,
            );
        }
        if let Some(mut cfg) = settings.dns.clone() {
            bind(&settings.dns_iface, &mut cfg.listen, "dns")?;
            if let std::net::IpAddr::V4(ip) = cfg.listen.ip()
                && cfg.appliance.is_none()
                && !ip.is_unspecified()
            {
                cfg.appliance = Some(ip);
            }
            let dns_deps = dns::DnsDeps {
                shutdown: services.cancel.child_token(),
            };
            services.dns = Some(
                dns::Server::start(cfg, dns_deps)
                    .await
                    .map_err(|err| RunError::Dns { err })?,
            );
        }
        if let Some(mut cfg) = settings.dhcp.clone() {
            let mut hooks: Option<Arc<dyn dhcp::DhcpHooks>> = None;
            if let Some(dns) = &services.dns {
                // Clients learn our DNS server and the rack domain unless the subnet names others.
                let dns_cfg = settings
                    .dns
                    .as_ref()
                    .expect("invariant: a DNS handle has settings");
                let server_ip = match dns.local_addr().ip() {
                    std::net::IpAddr::V4(ip) if !ip.is_unspecified() && !ip.is_loopback() => {
                        Some(ip)
                    }
                    _ => None,
                };
                for subnet in &mut cfg.subnets {
                    if subnet.dns_servers.is_empty()
                        && let Some(ip) = server_ip
                    {
                        subnet.dns_servers.push(ip);
                    }
                    if subnet.domain.is_none() {
                        subnet.domain =
                            Some(dns_cfg.domain.to_string().trim_end_matches('.').to_owned());
                    }
                }
                hooks = Some(Arc::new(LeasesToDns(dns.records())));
            }
            let hooks: Arc<dyn dhcp::DhcpHooks> = match (hooks, deps.dhcp_hooks) {
                (Some(a), Some(b)) => Arc::new(BothHooks(a, b)),
                (Some(h), None) | (None, Some(h)) => h,
                (None, None) => Arc::new(dhcp::NoHooks),
            };
            std::fs::create_dir_all(&settings.state_dir).map_err(|err| RunError::StateDir {
                path: settings.state_dir.clone(),
                err,
            })?;
            let mut store = dhcp::SqliteLeaseStore::open(&lease_db(&settings))
                .map_err(|err| RunError::LeaseStore { err })?;
            store
                .checkpoint_in_background()
                .map_err(|err| RunError::LeaseStore { err })?;
            // Publish the leases that survived the restart before DHCP can renew any of them,
            // in the order their bindings began: the first owner of a host name keeps it, as it
            // did before the restart (a renewal racing the replay could otherwise take it).
            let now = common::unix_now();
            let stored =
                dhcp::LeaseStore::load(&mut store).map_err(|err| RunError::LoadLeases { err })?;
            let mut live = dhcp::LeaseTable::from_leases(stored, now).live_leases(now);
            live.sort_by_key(|l| (l.seq, l.ip));
            for lease in &live {
                hooks.lease_bound(lease);
            }
            let dhcp_deps = dhcp::Deps {
                store,
                hooks: hooks.clone(),
            };
            let handle = dhcp::Server::start(cfg, dhcp_deps)
                .await
                .map_err(|err| RunError::Dhcp { err })?;
            services.dhcp = Some(handle);
        }
        if let Some(cfg) = settings.ra.clone() {
            services.ra = Some(
                ra::Server::start(cfg)
                    .await
                    .map_err(|err| RunError::Ra { err })?,
            );
        }
        Ok(services)
    }

    /// Where the HTTP boot server listens, if it runs.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(http::ServerHandle::local_addr)
    }

    /// The rack zone's records, if DNS runs (the control node publishes its inventory there).
    pub fn dns_records(&self) -> Option<dns::RecordsHandle> {
        self.dns.as_ref().map(dns::ServerHandle::records)
    }

    /// Stops every server, DHCP first (no new client is sent anywhere), draining each.
    pub async fn shutdown(mut self) {
        if let Some(h) = self.ra.take() {
            h.shutdown().await;
        }
        if let Some(h) = self.dhcp.take() {
            h.shutdown().await;
        }
        self.cancel.cancel();
        if let Some(h) = self.dns.take() {
            h.shutdown().await;
        }
        if let Some(h) = self.http.take() {
            h.shutdown().await;
        }
        if let Some(h) = self.tftp.take() {
            h.shutdown().await;
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Runs the standalone network services until `shutdown` is cancelled, then drains them.
pub async fn run(settings: config::Settings, shutdown: CancellationToken) -> Result<(), RunError> {
    let services = Services::start(settings, RunDeps::default()).await?;
    // Every socket is bound: tell systemd (Type=notify); a no-op without NOTIFY_SOCKET.
    if let Err(err) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %common::ErrorChain(&err), "systemd readiness notification failed");
    }
    shutdown.cancelled().await;
    services.shutdown().await;
    Ok(())
}

/// Publishes every bound lease with a hostname as A and PTR records of the rack zone.
#[derive(Debug)]
struct LeasesToDns(dns::RecordsHandle);

/// Two sets of hooks, called in order; the first one's reservation wins.
struct BothHooks(Arc<dyn dhcp::DhcpHooks>, Arc<dyn dhcp::DhcpHooks>);

impl dhcp::DhcpHooks for BothHooks {
    fn reservation(&self, mac: MacAddr) -> Option<dhcp::Reservation> {
        self.0.reservation(mac).or_else(|| self.1.reservation(mac))
    }
    fn lease_bound(&self, lease: &dhcp::Lease) {
        self.0.lease_bound(lease);
        self.1.lease_bound(lease);
    }
    fn lease_ended(&self, lease: &dhcp::Lease) {
        self.0.lease_ended(lease);
        self.1.lease_ended(lease);
    }
    fn boot_request(&self, mac: MacAddr, client: &dhcp::BootClient) {
        self.0.boot_request(mac, client);
        self.1.boot_request(mac, client);
    }
}

impl dhcp::DhcpHooks for LeasesToDns {
    fn lease_bound(&self, lease: &dhcp::Lease) {
        if let Some(name) = &lease.hostname {
            let outcome = self.0.upsert_host(name, lease.ip, &lease.mac.to_string());
            tracing::debug!(mac = %lease.mac, ip = %lease.ip, ?outcome, "lease published in DNS");
        }
    }

    fn lease_ended(&self, lease: &dhcp::Lease) {
        self.0.remove_owner(&lease.mac.to_string());
    }
}

/// Number of live DHCP leases stored under the settings' state directory.
pub fn count_leases(settings: &config::Settings) -> Result<u64, RunError> {
    let now = common::unix_now();
    dhcp::SqliteLeaseStore::open(&lease_db(settings))
        .and_then(|s| s.count_live(now))
        .map_err(|err| RunError::LeaseStore { err })
}
