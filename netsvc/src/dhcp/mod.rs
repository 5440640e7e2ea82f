//! DHCPv4 server: PXE/iPXE/UEFI-aware, pools and reservations, durable leases, relays,
//! proxyDHCP.
//!
//! - `codec`: bytes ↔ [`Request`]/[`Reply`] over `dhcproto` (no I/O).
//! - `boot`: the pure boot decision ([`decide`]) from options 93/60/77/175.
//! - `lease`: [`Lease`] and the in-memory [`LeaseTable`] the pipeline allocates from.
//! - `policy`: the ordered pipeline stages, each returning a `Flow`; their order is declared
//!   once in `server`.
//! - `store`: the [`LeaseStore`] trait and [`SqliteLeaseStore`]; a group-commit writer makes
//!   every ACKed lease durable before the ACK leaves.
//! - `server`: sockets (one per interface, `SO_BINDTODEVICE`), bounded concurrency, replies.

mod boot;
mod codec;
mod lease;
mod policy;
mod rawsend;
mod server;
mod store;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::num::NonZeroUsize;
use std::time::Duration;

use ipnet::Ipv4Net;

pub use boot::{BootClient, BootConfig, BootDecision, decide};
pub use codec::{
    CodecError, Reply, Request, SubOption, decode, encode, encode_suboptions, parse_suboptions,
};
pub use lease::{Conflict, Lease, LeaseState, LeaseTable, Pool};
pub use policy::fuzz_decide;
pub use server::{DhcpError, Server, ServerHandle};
pub use store::{LeaseStore, PersistError, SqliteLeaseStore, SqliteStoreError};

use crate::MacAddr;

/// A fixed address (and name) for a MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The client.
    pub mac: MacAddr,
    /// Its address; may lie outside the dynamic pool but must be inside a subnet.
    pub ip: Ipv4Addr,
    /// Hostname handed out in option 12.
    pub hostname: Option<String>,
}

/// Callbacks into the control node. Every method has a do-nothing default. They run on the
/// packet path: keep them quick and non-blocking.
pub trait DhcpHooks: Send + Sync + 'static {
    /// Reservation the inventory holds for this MAC (config reservations win).
    fn reservation(&self, mac: MacAddr) -> Option<Reservation> {
        let _ = mac;
        None
    }
    /// A lease was bound or renewed (after it is durable).
    fn lease_bound(&self, lease: &Lease) {
        let _ = lease;
    }
    /// A lease was released, declined or expired.
    fn lease_ended(&self, lease: &Lease) {
        let _ = lease;
    }
    /// A PXE/iPXE client asked to boot (decision already made).
    fn boot_request(&self, mac: MacAddr, client: &BootClient) {
        let _ = (mac, client);
    }
}

/// Hooks that do nothing: the standalone binary uses these.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl DhcpHooks for NoHooks {}

/// Whether the server hands out addresses or only boot information.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A full DHCP server.
    #[default]
    Server,
    /// proxyDHCP (PXE spec): boot information only, on ports 67 and 4011, next to another DHCP
    /// server that hands out the addresses.
    Proxy,
}

/// Which clients get addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownClients {
    /// Everyone.
    #[default]
    All,
    /// Only clients that network-boot (PXE, UEFI HTTP, iPXE) or have a reservation.
    PxeOnly,
    /// Only clients with a reservation (config or inventory).
    KnownOnly,
}

/// One IPv4 subnet served, with its pool and the options its clients get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    /// The network (option 1 comes from its prefix).
    pub net: Ipv4Net,
    /// Dynamic ranges, inclusive.
    pub pools: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Lease time (option 51); T1 (58) is half of it and T2 (59) seven eighths.
    pub lease_time: Duration,
    /// Option 3.
    pub routers: Vec<Ipv4Addr>,
    /// Option 6.
    pub dns_servers: Vec<Ipv4Addr>,
    /// Option 15.
    pub domain: Option<String>,
    /// Option 42.
    pub ntp_servers: Vec<Ipv4Addr>,
    /// Option 26.
    pub mtu: Option<u16>,
    /// Option 121 (RFC 3442). Clients that get it ignore option 3: include the default route.
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

/// DHCP server settings (validated).
#[derive(Debug, Clone)]
pub struct Config {
    /// Interfaces to serve on (each gets its own socket bound with `SO_BINDTODEVICE`). Empty:
    /// one socket on `listen` without a device (relayed traffic only; for tests).
    pub interfaces: Vec<String>,
    /// Address and port to bind (`0.0.0.0:67`).
    pub listen: SocketAddrV4,
    /// Server or proxyDHCP.
    pub mode: Mode,
    /// Which clients get addresses.
    pub unknown_clients: UnknownClients,
    /// Subnets served (server mode needs at least one).
    pub subnets: Vec<Subnet>,
    /// Static reservations by MAC.
    pub reservations: Vec<Reservation>,
    /// Boot file names.
    pub boot: BootConfig,
    /// Base URL of the HTTP boot server; `None`: `http://<our address>:<http_port>`.
    pub http_base: Option<String>,
    /// Port of the HTTP boot server, used when `http_base` is `None`.
    pub http_port: u16,
    /// How long an offered address is held for the client.
    pub offer_hold: Duration,
    /// How long a declined address is quarantined.
    pub decline_quarantine: Duration,
    /// Packets handled at once.
    pub max_in_flight: NonZeroUsize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interfaces: Vec::new(),
            listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67),
            mode: Mode::Server,
            unknown_clients: UnknownClients::All,
            subnets: Vec::new(),
            reservations: Vec::new(),
            boot: BootConfig::default(),
            http_base: None,
            http_port: 80,
            offer_hold: Duration::from_secs(30),
            decline_quarantine: Duration::from_secs(3600),
            max_in_flight: NonZeroUsize::new(1024).expect("invariant: 1024 is not zero"),
        }
    }
}

/// What the server needs from its embedder.
#[derive(Debug)]
pub struct Deps<S> {
    /// Lease storage (moved into the writer thread).
    pub store: S,
    /// Control-node callbacks.
    pub hooks: std::sync::Arc<dyn DhcpHooks>,
}

impl std::fmt::Debug for dyn DhcpHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DhcpHooks")
    }
}
