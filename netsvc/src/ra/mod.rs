//! IPv6 router advertisements on the provisioning link.
//!
//! iPXE configures IPv6 before it asks for DHCPv4 and waits about 16 s for a router
//! advertisement when none comes. This server announces a unique-local /64 on every DHCP
//! interface: router lifetime 0 (we are not a default router, so no client sends traffic
//! through us), one Prefix Information option with the on-link and autonomous flags, sent
//! to `ff02::1` periodically and in answer to every Router Solicitation.
//!
//! - `codec`: the RA bytes, the RS check and the default prefix (pure).
//! - `server`: one raw ICMPv6 socket per interface (hop limit 255, `SO_BINDTODEVICE`).

mod codec;
mod server;

use std::time::Duration;

use ipnet::Ipv6Net;

pub use codec::{Advert, default_prefix, encode_advert, is_solicitation};
pub use server::{RaError, Server, ServerHandle};

/// Router advertisement settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Interfaces to advertise on; each needs an IPv6 link-local address to send from.
    pub interfaces: Vec<String>,
    /// The /64 announced; `None`: [`default_prefix`] of each interface.
    pub prefix: Option<Ipv6Net>,
    /// Time between unsolicited advertisements.
    pub interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interfaces: Vec::new(),
            prefix: None,
            interval: Duration::from_secs(30),
        }
    }
}
