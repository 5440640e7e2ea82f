//! DNS configuration: the serde wire section and the validated [`Config`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;

use hickory_proto::rr::Name;
use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;

use super::DnsError;

/// Response-rate limiting of UDP answers, per client network (/24 for IPv4, /56 for IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Responses per second allowed to one client network (also the burst size).
    pub responses_per_second: NonZeroU32,
    /// Every `slip`-th suppressed response is sent as an empty truncated answer, so real clients
    /// retry over TCP; 0 drops them all.
    pub slip: u32,
}

/// A zone file to import (RFC 1035 master format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneFile {
    /// Origin of the file. When it is the rack domain or one of the reverse zones the records are
    /// merged into that zone (its SOA, if present, replaces the generated one); otherwise the file
    /// is served as a zone of its own.
    pub origin: Name,
    /// Path of the file.
    pub path: PathBuf,
}

/// Validated configuration of the DNS server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address for UDP and TCP (port 0 picks a free one, the same for both).
    pub listen: SocketAddr,
    /// The rack domain (for example `rack.internal.`), authoritative.
    pub domain: Name,
    /// Provisioning subnets: the reverse zones for them are authoritative, and their clients may
    /// use forwarding. Prefixes that are not a multiple of 8 are served as several zones.
    pub subnets: Vec<Ipv4Net>,
    /// Address of the appliance, target of the well-known names.
    pub appliance: Option<Ipv4Addr>,
    /// Well-known single-label names pointing at `appliance` (default `provisioner`, `ns`).
    pub well_known: Vec<String>,
    /// Port of the provisioner API, published as `_provisioner._tcp.<domain>` SRV.
    pub api_port: Option<u16>,
    /// TTL of host, well-known and generated records.
    pub ttl: u32,
    /// Extra records in master-file syntax, relative to the rack domain.
    pub records: Vec<String>,
    /// Zone files to import.
    pub zone_files: Vec<ZoneFile>,
    /// Secondaries: they may transfer our zones (AXFR/IXFR) and get NOTIFY on change.
    pub secondaries: Vec<SocketAddr>,
    /// Upstream resolvers for names outside our zones; empty means REFUSED.
    pub forwarders: Vec<SocketAddr>,
    /// Clients allowed to use forwarding (loopback and `subnets` when not configured).
    pub forward_clients: Vec<IpNet>,
    /// Entries in the forwarding cache.
    pub cache_entries: usize,
    /// Suffix for the name of a later owner of a taken host name (`None`: no record).
    pub conflict_suffix: Option<String>,
    /// UDP response-rate limiting, `None` for none.
    pub rate_limit: Option<RateLimit>,
    /// UDP sockets (SO_REUSEPORT), each served by its own thread.
    pub udp_workers: NonZeroUsize,
    /// Simultaneous TCP connections.
    pub max_tcp_connections: NonZeroUsize,
    /// Queries handled at once on the slow path (catalog, forwarding, transfers).
    pub max_inflight: NonZeroUsize,
    /// EDNS UDP payload size we advertise and accept.
    pub edns_payload: u16,
}

impl Config {
    /// A configuration with every default, for `domain` on `listen`.
    pub fn new(listen: SocketAddr, domain: Name) -> Self {
        let mut domain = domain;
        domain.set_fqdn(true);
        Self {
            listen,
            domain,
            subnets: Vec::new(),
            appliance: None,
            well_known: default_well_known(),
            api_port: None,
            ttl: default_ttl(),
            records: Vec::new(),
            zone_files: Vec::new(),
            secondaries: Vec::new(),
            forwarders: Vec::new(),
            forward_clients: Vec::new(),
            cache_entries: default_cache_entries(),
            conflict_suffix: default_conflict_suffix(),
            rate_limit: None,
            udp_workers: default_workers(),
            max_tcp_connections: NonZeroUsize::new(256).expect("invariant: 256 is not zero"),
            max_inflight: NonZeroUsize::new(1024).expect("invariant: 1024 is not zero"),
            edns_payload: 1232,
        }
    }

    /// Clients allowed to use forwarding: the configured ones, or loopback and our subnets.
    pub(crate) fn effective_forward_clients(&self) -> Vec<IpNet> {
        if !self.forward_clients.is_empty() {
            return self.forward_clients.clone();
        }
        let mut v: Vec<IpNet> = vec![
            "127.0.0.0/8".parse().expect("invariant: literal network"),
            "::1/128".parse().expect("invariant: literal network"),
        ];
        v.extend(self.subnets.iter().map(|n| IpNet::V4(*n)));
        v
    }
}

fn default_well_known() -> Vec<String> {
    vec!["provisioner".into(), "ns".into()]
}
fn default_ttl() -> u32 {
    300
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_conflict_suffix() -> Option<String> {
    Some("-dup".into())
}
fn default_workers() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 53))
}
fn default_domain() -> String {
    "rack.internal.".into()
}
fn default_rrl() -> u32 {
    1000
}
fn default_slip() -> u32 {
    2
}
fn default_tcp() -> usize {
    256
}
fn default_inflight() -> usize {
    1024
}
fn default_edns() -> u16 {
    1232
}

/// `[dns]` section of the configuration file (wire form).
///
/// Every key is optional; the defaults are documented on each field.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// Address for UDP and TCP. Default `0.0.0.0:53`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The rack domain. Default `rack.internal.`.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// Provisioning subnets (reverse zones). Default none.
    #[serde(default)]
    pub subnets: Vec<Ipv4Net>,
    /// Address of the appliance for the well-known names. Default none.
    #[serde(default)]
    pub appliance: Option<Ipv4Addr>,
    /// Well-known names. Default `["provisioner", "ns"]`.
    #[serde(default = "default_well_known")]
    pub well_known: Vec<String>,
    /// API port published as SRV `_provisioner._tcp`. Default none.
    #[serde(default)]
    pub api_port: Option<u16>,
    /// TTL of generated records in seconds. Default 300.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Static records, master-file lines relative to the domain. Default none.
    #[serde(default)]
    pub records: Vec<String>,
    /// Zone files: `{ origin = "example.", path = "/etc/zone" }`. Default none.
    #[serde(default)]
    pub zone_files: Vec<ZoneFileSection>,
    /// Secondaries (`ip:port`) allowed to transfer and notified on change. Default none.
    #[serde(default)]
    pub secondaries: Vec<SocketAddr>,
    /// Upstream resolvers (`ip:port`). Default none (other names are REFUSED).
    #[serde(default)]
    pub forwarders: Vec<SocketAddr>,
    /// Networks allowed to use forwarding. Default loopback and `subnets`.
    #[serde(default)]
    pub forward_clients: Vec<IpNet>,
    /// Forwarding cache entries. Default 10000.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// Suffix for a later owner of a taken host name; empty string: no record. Default `-dup`.
    #[serde(default = "default_conflict_suffix")]
    pub conflict_suffix: Option<String>,
    /// UDP responses per second per client network; 0 disables rate limiting. Default 1000.
    #[serde(default = "default_rrl")]
    pub rate_limit: u32,
    /// Every n-th rate-limited response is sent truncated; 0 drops all. Default 2.
    #[serde(default = "default_slip")]
    pub rate_limit_slip: u32,
    /// UDP sockets/threads. Default: number of CPUs.
    #[serde(default)]
    pub udp_workers: Option<NonZeroUsize>,
    /// Simultaneous TCP connections. Default 256.
    #[serde(default = "default_tcp")]
    pub max_tcp_connections: usize,
    /// Slow-path queries in flight. Default 1024.
    #[serde(default = "default_inflight")]
    pub max_inflight: usize,
    /// EDNS UDP payload size. Default 1232.
    #[serde(default = "default_edns")]
    pub edns_payload: u16,
}

/// One zone file of [`DnsSection`].
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ZoneFileSection {
    /// Origin of the zone.
    pub origin: String,
    /// Path of the file.
    pub path: PathBuf,
}

impl Default for DnsSection {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            domain: default_domain(),
            subnets: Vec::new(),
            appliance: None,
            well_known: default_well_known(),
            api_port: None,
            ttl: default_ttl(),
            records: Vec::new(),
            zone_files: Vec::new(),
            secondaries: Vec::new(),
            forwarders: Vec::new(),
            forward_clients: Vec::new(),
            cache_entries: default_cache_entries(),
            conflict_suffix: default_conflict_suffix(),
            rate_limit: default_rrl(),
            rate_limit_slip: default_slip(),
            udp_workers: None,
            max_tcp_connections: default_tcp(),
            max_inflight: default_inflight(),
            edns_payload: default_edns(),
        }
    }
}

fn parse_name(key: &'static str, value: &str) -> Result<Name, DnsError> {
    let mut name = Name::from_ascii(value).map_err(|err| DnsError::ConfigName {
        key,
        value: value.to_owned(),
        err,
    })?;
    name.set_fqdn(true);
    Ok(name)
}

fn nonzero(key: &'static str, v: usize) -> Result<NonZeroUsize, DnsError> {
    NonZeroUsize::new(v).ok_or(DnsError::ConfigValue {
        key,
        reason: "must be at least 1",
    })
}

impl TryFrom<DnsSection> for Config {
    type Error = DnsError;

    fn try_from(w: DnsSection) -> Result<Self, DnsError> {
        let domain = parse_name("dns.domain", &w.domain)?;
        if domain.is_root() {
            return Err(DnsError::ConfigValue {
                key: "dns.domain",
                reason: "must not be the root",
            });
        }
        if w.edns_payload < 512 {
            return Err(DnsError::ConfigValue {
                key: "dns.edns_payload",
                reason: "must be at least 512",
            });
        }
        for n in &w.well_known {
            if super::zone::valid_label(n).is_none() {
                return Err(DnsError::ConfigValue {
                    key: "dns.well_known",
                    reason: "names must be single DNS labels",
                });
            }
        }
        let zone_files = w
            .zone_files
            .into_iter()
            .map(|z| {
                Ok(ZoneFile {
                    origin: parse_name("dns.zone_files.origin", &z.origin)?,
                    path: z.path,
                })
            })
            .collect::<Result<_, DnsError>>()?;
        let rate_limit = NonZeroU32::new(w.rate_limit).map(|r| RateLimit {
            responses_per_second: r,
            slip: w.rate_limit_slip,
        });
        Ok(Self {
            listen: w.listen,
            domain,
            subnets: w.subnets,
            appliance: w.appliance,
            well_known: w.well_known,
            api_port: w.api_port,
            ttl: w.ttl,
            records: w.records,
            zone_files,
            secondaries: w.secondaries,
            forwarders: w.forwarders,
            forward_clients: w.forward_clients,
            cache_entries: w.cache_entries,
            conflict_suffix: w.conflict_suffix.filter(|s| !s.is_empty()),
            rate_limit,
            udp_workers: w.udp_workers.unwrap_or_else(default_workers),
            max_tcp_connections: nonzero("dns.max_tcp_connections", w.max_tcp_connections)?,
            max_inflight: nonzero("dns.max_inflight", w.max_inflight)?,
            edns_payload: w.edns_payload,
        })
    }
}

/// Whether `ip` is inside one of `nets`.
pub(crate) fn allowed(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_gives_documented_defaults() {
        let w: DnsSection = toml::from_str("").unwrap();
        assert_eq!(w, DnsSection::default());
        let c = Config::try_from(w).unwrap();
        assert_eq!(c.domain.to_ascii(), "rack.internal.");
        assert_eq!(c.rate_limit.unwrap().responses_per_second.get(), 1000);
        assert_eq!(c.conflict_suffix.as_deref(), Some("-dup"));
    }

    #[test]
    fn full_section_parses_and_rejects_unknown_keys() {
        let w: DnsSection = toml::from_str(
            r#"
            listen = "127.0.0.1:5353"
            domain = "rack.example"
            subnets = ["10.1.0.0/16"]
            appliance = "10.1.0.1"
            api_port = 8080
            records = ["www IN A 10.1.0.9"]
            zone_files = [{ origin = "other.example.", path = "/tmp/z" }]
            secondaries = ["10.1.0.2:53"]
            forwarders = ["9.9.9.9:53"]
            conflict_suffix = ""
            rate_limit = 0
            "#,
        )
        .unwrap();
        let c = Config::try_from(w).unwrap();
        assert_eq!(c.domain.to_ascii(), "rack.example.");
        assert!(c.conflict_suffix.is_none());
        assert!(c.rate_limit.is_none());
        assert!(toml::from_str::<DnsSection>("bogus = 1").is_err());
    }
}
