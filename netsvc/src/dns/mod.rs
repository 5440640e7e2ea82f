//! Rack DNS: authoritative for the rack domain and the provisioning reverse zones, following the
//! live inventory, and forwarding everything else.
//!
//! [`Server::start`] builds the zones from a [`Config`] (generated SOA/NS, well-known names, the
//! API's SRV record, static records and imported zone files) and serves them on UDP and TCP.
//! [`ServerHandle::records`] gives the [`RecordsHandle`] through which DHCP leases and the
//! inventory publish hosts ([`RecordsHandle::upsert_host`]); every change bumps the SOA serial,
//! answers at once and NOTIFYs the configured secondaries, which alone may transfer the zones.
//!
//! The binary and the control node read a [`DnsSection`] (`[dns]` in TOML) and convert it with
//! `Config::try_from`; startup rebuild is the caller's: replay persisted leases and inventory
//! through `upsert_host` after `start`, in the order the owners first got their names (the
//! first owner keeps a contested name; `netsvc::run` sorts leases by `Lease::seq`). 10,000
//! hosts take about 0.2 s in a release build.
//!
//! Serving path: a pure fast path (module `codec`) answers A/PTR/NXDOMAIN from a precomputed map
//! on one thread per SO_REUSEPORT socket; everything else goes through hickory-server's
//! `Catalog` (kept in sync with our master copy), forwarding, or our zone-transfer code.

mod codec;
mod config;
mod forward;
mod mmsg;
mod rrl;
mod server;
mod zone;

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

pub use config::{Config, DnsSection, RateLimit, ZoneFile, ZoneFileSection};
pub use server::{Server, ServerHandle};
pub use zone::{RecordsHandle, UpsertOutcome};

/// What the DNS server needs from its host process.
#[derive(Debug, Clone, Default)]
pub struct DnsDeps {
    /// Cancelling this token stops the server (a child token is used internally).
    pub shutdown: CancellationToken,
}

/// Errors of the DNS server's configuration and startup.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A name in the configuration is not a valid domain name.
    #[error("invalid domain name `{value}` in `{key}`")]
    ConfigName {
        /// Configuration key.
        key: &'static str,
        /// The offending value.
        value: String,
        /// Parser error.
        #[source]
        err: hickory_proto::ProtoError,
    },
    /// A configuration value is out of range.
    #[error("invalid value for `{key}`: {reason}")]
    ConfigValue {
        /// Configuration key.
        key: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A zone file could not be read.
    #[error("failed to read zone file `{}`", path.display())]
    ZoneRead {
        /// Path of the file.
        path: PathBuf,
        /// I/O error.
        #[source]
        err: std::io::Error,
    },
    /// Records in master-file format could not be parsed.
    #[error("failed to parse zone data from {what}")]
    ZoneParse {
        /// File or configuration key.
        what: String,
        /// Parser error.
        #[source]
        err: Box<hickory_proto::serialize::txt::ParseError>,
    },
    /// An imported zone of its own has no SOA.
    #[error("zone file `{}` has no SOA record", path.display())]
    ZoneNoSoa {
        /// Path of the file.
        path: PathBuf,
    },
    /// hickory refused the zone data.
    #[error("failed to build zone {origin}: {reason}")]
    ZoneBuild {
        /// Zone origin.
        origin: String,
        /// hickory's reason (a plain string, no error type).
        reason: String,
    },
    /// A socket could not be bound.
    #[error("failed to bind dns socket on {addr}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// I/O error.
        #[source]
        err: std::io::Error,
    },
    /// A worker thread could not be started.
    #[error("failed to start a dns worker thread")]
    Thread {
        /// I/O error.
        #[source]
        err: std::io::Error,
    },
}

/// Entry points for the fuzz target: the query path on bytes, without sockets.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::server::fuzz_query;
}
