//! Top-level `netsvc` configuration: command-line flags, the TOML file and its drop-ins, and
//! the validated [`Settings`] that [`crate::run`] takes.
//!
//! Layers: `wire` (serde, unknown keys rejected) → merged (the file, then `FILE.d/*.toml` in
//! lexical order, later wins, tables merged key by key) → [`Settings`] via `TryFrom`. Every
//! error names the file and the key. Every key and its default is documented in
//! `templates/config/netsvc.toml`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::num::NonZeroUsize;
use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};
use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::MacAddr;
use crate::dhcp::{self, BootConfig, Mode, Reservation, Subnet, UnknownClients};

/// Command-line flags of the `netsvc` binary.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "netsvc",
    version,
    about = "Rack network services: DHCPv4 (PXE/iPXE), and more"
)]
pub struct Args {
    /// TOML config file; drop-ins in `FILE.d/*.toml` are merged after it in lexical order.
    #[arg(long, value_name = "FILE")]
    pub config: Option<Utf8PathBuf>,
    /// Serve DHCP on this interface (repeatable); adds to `dhcp.interfaces`.
    #[arg(long = "interface", value_name = "IF")]
    pub interfaces: Vec<String>,
    /// Dynamic range `START-END` on the first interface's subnet (enables DHCP).
    #[arg(long, value_name = "START-END")]
    pub dhcp_range: Option<String>,
    /// Directory with boot files (iPXE binaries, kernels); overrides `boot_dir`.
    #[arg(long, value_name = "DIR")]
    pub boot_dir: Option<Utf8PathBuf>,
    /// Directory for state (the lease database); overrides `state_dir`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<Utf8PathBuf>,
    /// Address (`IP` or `IP:PORT`) the DHCP server binds; overrides `dhcp.listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address (`IP:PORT`) of the TFTP server; overrides `tftp.listen`.
    #[arg(long, value_name = "ADDR")]
    pub tftp_listen: Option<std::net::SocketAddr>,
    /// Address (`IP:PORT`) of the HTTP boot server; overrides `http.listen`.
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Print the number of live leases in the state directory and exit.
    #[arg(long)]
    pub count_leases: bool,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config file could not be read.
    #[error("failed to read config file `{path}`")]
    Read {
        /// The file.
        path: Utf8PathBuf,
        /// Why.
        #[source]
        err: std::io::Error,
    },
    /// A config file is not valid TOML or has unknown keys or wrong types.
    #[error("invalid config file `{path}`")]
    Parse {
        /// The file.
        path: Utf8PathBuf,
        /// Where and why (toml's message names the key and line).
        #[source]
        err: toml::de::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid `{key}` in `{file}`: {reason}")]
    Invalid {
        /// The file that set the key (`<command line>` for flags, `<default>` otherwise).
        file: String,
        /// The dotted key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Validated settings for the whole `netsvc` process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// State directory (lease database).
    pub state_dir: Utf8PathBuf,
    /// Boot files directory.
    pub boot_dir: Utf8PathBuf,
    /// DHCP server settings; `None` when DHCP is disabled.
    pub dhcp: Option<dhcp::Config>,
    /// IPv6 router advertisements on the DHCP interfaces; `None` when DHCP is disabled, serves
    /// no interface, or `dhcp.router_advertisements = false`.
    pub ra: Option<crate::ra::Config>,
    /// TFTP server settings; `None` when TFTP is off. It runs when `[tftp]` is present or DHCP
    /// is enabled (PXE firmware fetches iPXE over TFTP).
    pub tftp: Option<crate::tftp::Config>,
    /// HTTP boot server settings; `None` when off. It runs when `[http]` is present or DHCP is
    /// enabled (iPXE fetches its script and kernels over HTTP).
    pub http: Option<crate::http::Config>,
    /// DNS server settings; `None` when `[dns]` is absent.
    pub dns: Option<crate::dns::Config>,
    /// Interface whose IPv4 address the DNS server binds (keeping the configured port), when
    /// `dns.listen` is not set and DHCP serves that interface.
    pub dns_iface: Option<String>,
    /// Interface whose IPv4 address the TFTP server binds (keeping the configured port), when
    /// `tftp.listen` is not set and DHCP serves that interface.
    pub tftp_iface: Option<String>,
    /// Interface whose IPv4 address the HTTP server binds (keeping the configured port), when
    /// `http.listen` is not set and DHCP serves that interface.
    pub http_iface: Option<String>,
}

mod wire {
    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct File {
        pub(super) state_dir: Option<Utf8PathBuf>,
        pub(super) boot_dir: Option<Utf8PathBuf>,
        pub(super) dhcp: Option<Dhcp>,
        pub(super) tftp: Option<crate::tftp::TftpSection>,
        pub(super) http: Option<crate::http::HttpSection>,
        pub(super) dns: Option<crate::dns::DnsSection>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Dhcp {
        pub(super) enabled: Option<bool>,
        pub(super) interfaces: Option<Vec<String>>,
        pub(super) listen: Option<String>,
        pub(super) mode: Option<String>,
        pub(super) unknown_clients: Option<String>,
        pub(super) lease_time_secs: Option<u64>,
        pub(super) offer_hold_secs: Option<u64>,
        pub(super) decline_quarantine_secs: Option<u64>,
        pub(super) max_in_flight: Option<usize>,
        pub(super) http_base: Option<String>,
        pub(super) http_port: Option<u16>,
        pub(super) bios_boot_file: Option<String>,
        pub(super) uefi_boot_file: Option<String>,
        pub(super) http_boot_file: Option<String>,
        pub(super) subnet: Option<Vec<Subnet>>,
        pub(super) reservation: Option<Vec<Reservation>>,
        pub(super) router_advertisements: Option<bool>,
        pub(super) ra_prefix: Option<String>,
        pub(super) ra_interval_secs: Option<u64>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Subnet {
        pub(super) net: String,
        pub(super) pools: Option<Vec<String>>,
        pub(super) lease_time_secs: Option<u64>,
        pub(super) routers: Option<Vec<Ipv4Addr>>,
        pub(super) dns_servers: Option<Vec<Ipv4Addr>>,
        pub(super) domain: Option<String>,
        pub(super) ntp_servers: Option<Vec<Ipv4Addr>>,
        pub(super) mtu: Option<u16>,
        pub(super) routes: Option<Vec<Route>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Route {
        pub(super) dest: String,
        pub(super) via: Ipv4Addr,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Reservation {
        pub(super) mac: String,
        pub(super) ip: Ipv4Addr,
        pub(super) hostname: Option<String>,
    }
}

/// Which file set each dotted key (for error messages).
#[derive(Debug, Default)]
struct Origins(BTreeMap<String, String>);

impl Origins {
    fn record(&mut self, prefix: &str, v: &toml::Value, file: &str) {
        self.0.insert(prefix.to_owned(), file.to_owned());
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    self.record(&key, v, file);
                }
            }
            toml::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    self.record(&format!("{prefix}[{i}]"), v, file);
                }
            }
            _ => {}
        }
    }

    fn file_of(&self, key: &str) -> String {
        let mut k = key;
        loop {
            if let Some(f) = self.0.get(k) {
                return f.clone();
            }
            match k.rfind(['.', '[']) {
                Some(i) => k = &k[..i],
                None => return "<default>".to_owned(),
            }
        }
    }
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// The config file plus its drop-ins, in merge order.
fn files(main: &Utf8Path) -> Result<Vec<Utf8PathBuf>, ConfigError> {
    let layers = common::config_layers(main.as_std_path()).map_err(|e| ConfigError::Read {
        path: Utf8PathBuf::from(format!("{main}.d")),
        err: e.err,
    })?;
    Ok(layers
        .into_iter()
        .filter_map(|p| Utf8PathBuf::from_path_buf(p).ok())
        .collect())
}

/// Merged wire config with the origin of every key.
#[derive(Debug)]
struct Merged {
    wire: wire::File,
    origins: Origins,
}

fn read_merged(main: Option<&Utf8Path>) -> Result<Merged, ConfigError> {
    let mut table = toml::Table::new();
    let mut origins = Origins::default();
    if let Some(main) = main {
        for path in files(main)? {
            let text = std::fs::read_to_string(&path).map_err(|err| ConfigError::Read {
                path: path.clone(),
                err,
            })?;
            let parse = |err| ConfigError::Parse {
                path: path.clone(),
                err,
            };
            // Each file on its own first, so a bad key is reported against its file.
            let _: wire::File = toml::from_str(&text).map_err(parse)?;
            let t: toml::Table = toml::from_str(&text).map_err(parse)?;
            origins.record("", &toml::Value::Table(t.clone()), path.as_str());
            merge(&mut table, t);
        }
    }
    let wire =
        wire::File::deserialize(toml::Value::Table(table)).map_err(|err| ConfigError::Parse {
            path: main.map(Utf8Path::to_owned).unwrap_or_default(),
            err,
        })?;
    Ok(Merged { wire, origins })
}

fn parse_range(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("`{s}` is not a range START-END"))?;
    let a: Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
    let b: Ipv4Addr = b
        .trim()
        .parse()
        .map_err(|_| format!("`{b}` is not an IPv4 address"))?;
    if a > b {
        return Err(format!("range `{s}` ends before it starts"));
    }
    Ok((a, b))
}

fn parse_listen(s: &str) -> Result<SocketAddrV4, String> {
    if let Ok(sa) = s.parse::<SocketAddrV4>() {
        return Ok(sa);
    }
    s.parse::<Ipv4Addr>()
        .map(|ip| SocketAddrV4::new(ip, 67))
        .map_err(|_| format!("`{s}` is not an IPv4 address or IPv4 address:port"))
}

/// The network (address and prefix) of `iface`, for `--dhcp-range` without a configured subnet.
fn iface_net(iface: &str) -> Option<Ipv4Net> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        if a.interface_name != iface {
            continue;
        }
        let ip = a.address.as_ref()?.as_sockaddr_in().map(|s| s.ip());
        let mask = a
            .netmask
            .as_ref()
            .and_then(|m| m.as_sockaddr_in())
            .map(|s| s.ip());
        if let (Some(ip), Some(mask)) = (ip, mask) {
            let prefix = u8::try_from(u32::from(mask).leading_ones()).ok()?;
            return Ipv4Net::new(ip, prefix).ok().map(|n| n.trunc());
        }
    }
    None
}

impl Settings {
    /// Reads the config file (if any) and its drop-ins, applies `args` on top and validates.
    pub fn load(args: &Args) -> Result<Self, ConfigError> {
        let merged = read_merged(args.config.as_deref())?;
        Settings::try_from((merged, args))
    }

    /// Parses one TOML document as if it were the whole config (no flags, no drop-ins).
    pub fn from_toml(text: &str, file: &str) -> Result<Self, ConfigError> {
        let parse = |err| ConfigError::Parse {
            path: file.into(),
            err,
        };
        let wire: wire::File = toml::from_str(text).map_err(parse)?;
        let t: toml::Table = toml::from_str(text).map_err(parse)?;
        let mut origins = Origins::default();
        origins.record("", &toml::Value::Table(t), file);
        Settings::try_from((Merged { wire, origins }, &Args::default()))
    }
}

const CLI: &str = "<command line>";

impl TryFrom<(Merged, &Args)> for Settings {
    type Error = ConfigError;

    fn try_from((m, args): (Merged, &Args)) -> Result<Self, Self::Error> {
        let origins = &m.origins;
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            file: origins.file_of(key),
            key: key.to_owned(),
            reason,
        };
        let flag = |key: &str, reason: String| ConfigError::Invalid {
            file: CLI.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let w = m.wire;
        let d = w.dhcp.unwrap_or_default();
        let mut cfg = dhcp::Config {
            interfaces: d.interfaces.unwrap_or_default(),
            ..dhcp::Config::default()
        };
        cfg.interfaces.extend(args.interfaces.iter().cloned());
        if let Some(l) = &d.listen {
            cfg.listen = parse_listen(l).map_err(|r| invalid("dhcp.listen", r))?;
        }
        if let Some(l) = &args.listen {
            cfg.listen = parse_listen(l).map_err(|r| flag("--listen", r))?;
        }
        cfg.mode = match d.mode.as_deref() {
            None | Some("server") => Mode::Server,
            Some("proxy") => Mode::Proxy,
            Some(o) => {
                return Err(invalid(
                    "dhcp.mode",
                    format!("`{o}` is not one of server, proxy"),
                ));
            }
        };
        cfg.unknown_clients = match d.unknown_clients.as_deref() {
            None | Some("all") => UnknownClients::All,
            Some("pxe-only") => UnknownClients::PxeOnly,
            Some("known-only") => UnknownClients::KnownOnly,
            Some(o) => {
                return Err(invalid(
                    "dhcp.unknown_clients",
                    format!("`{o}` is not one of all, pxe-only, known-only"),
                ));
            }
        };
        let secs = |key: &str, v: Option<u64>, default: u64| -> Result<Duration, ConfigError> {
            match v.unwrap_or(default) {
                0 => Err(invalid(key, "must be at least 1 second".into())),
                s if s > u64::from(u32::MAX) => Err(invalid(key, "must fit in 32 bits".into())),
                s => Ok(Duration::from_secs(s)),
            }
        };
        let lease_time = secs("dhcp.lease_time_secs", d.lease_time_secs, 3600)?;
        cfg.offer_hold = secs("dhcp.offer_hold_secs", d.offer_hold_secs, 30)?;
        cfg.decline_quarantine = secs(
            "dhcp.decline_quarantine_secs",
            d.decline_quarantine_secs,
            3600,
        )?;
        if let Some(n) = d.max_in_flight {
            cfg.max_in_flight = NonZeroUsize::new(n)
                .ok_or_else(|| invalid("dhcp.max_in_flight", "must be at least 1".into()))?;
        }
        if let Some(b) = d.http_base {
            if !(b.starts_with("http://") || b.starts_with("https://")) {
                return Err(invalid(
                    "dhcp.http_base",
                    format!("`{b}` is not an http:// or https:// URL"),
                ));
            }
            cfg.http_base = Some(b);
        }
        cfg.http_port = d.http_port.unwrap_or(80);
        let file_name = |key: &str, v: Option<String>, default: String| {
            let v = v.unwrap_or(default);
            if v.is_empty() || v.len() > 127 || v.contains(char::is_whitespace) {
                Err(invalid(
                    key,
                    format!("`{v}` is not a usable boot file name"),
                ))
            } else {
                Ok(v)
            }
        };
        let defaults = BootConfig::default();
        cfg.boot = BootConfig {
            bios_file: file_name("dhcp.bios_boot_file", d.bios_boot_file, defaults.bios_file)?,
            uefi_file: file_name("dhcp.uefi_boot_file", d.uefi_boot_file, defaults.uefi_file)?,
            http_uefi_file: file_name(
                "dhcp.http_boot_file",
                d.http_boot_file,
                defaults.http_uefi_file,
            )?,
        };

        for (i, s) in d.subnet.unwrap_or_default().into_iter().enumerate() {
            let key = |k: &str| format!("dhcp.subnet[{i}].{k}");
            let net: Ipv4Net = s
                .net
                .parse()
                .map_err(|_| invalid(&key("net"), format!("`{}` is not a CIDR network", s.net)))?;
            let net = net.trunc();
            let mut pools = Vec::new();
            for (j, p) in s.pools.unwrap_or_default().iter().enumerate() {
                let k = format!("dhcp.subnet[{i}].pools[{j}]");
                let (a, b) = parse_range(p).map_err(|r| invalid(&k, r))?;
                if !net.contains(&a) || !net.contains(&b) {
                    return Err(invalid(&k, format!("range `{p}` is outside {net}")));
                }
                pools.push((a, b));
            }
            let mut routes = Vec::new();
            for (j, r) in s.routes.unwrap_or_default().iter().enumerate() {
                let k = format!("dhcp.subnet[{i}].routes[{j}].dest");
                let dest: Ipv4Net = r
                    .dest
                    .parse()
                    .map_err(|_| invalid(&k, format!("`{}` is not a CIDR network", r.dest)))?;
                routes.push((dest.trunc(), r.via));
            }
            if s.mtu.is_some_and(|m| m < 68) {
                return Err(invalid(&key("mtu"), "must be at least 68".into()));
            }
            cfg.subnets.push(Subnet {
                net,
                pools,
                lease_time: match s.lease_time_secs {
                    Some(v) => secs(&key("lease_time_secs"), Some(v), 0)?,
                    None => lease_time,
                },
                routers: s.routers.unwrap_or_default(),
                dns_servers: s.dns_servers.unwrap_or_default(),
                domain: s.domain,
                ntp_servers: s.ntp_servers.unwrap_or_default(),
                mtu: s.mtu,
                routes,
            });
        }

        if let Some(range) = &args.dhcp_range {
            let (a, b) = parse_range(range).map_err(|r| flag("--dhcp-range", r))?;
            match cfg.subnets.iter_mut().find(|s| s.net.contains(&a)) {
                Some(s) => s.pools.push((a, b)),
                None => {
                    let iface = cfg.interfaces.first().ok_or_else(|| {
                        flag(
                            "--dhcp-range",
                            "needs --interface or a matching dhcp.subnet".into(),
                        )
                    })?;
                    let net = iface_net(iface).ok_or_else(|| {
                        flag(
                            "--dhcp-range",
                            format!("interface {iface} has no IPv4 address"),
                        )
                    })?;
                    if !net.contains(&a) || !net.contains(&b) {
                        return Err(flag(
                            "--dhcp-range",
                            format!("range `{range}` is outside {net} of {iface}"),
                        ));
                    }
                    cfg.subnets.push(Subnet {
                        net,
                        pools: vec![(a, b)],
                        lease_time,
                        routers: vec![],
                        dns_servers: vec![],
                        domain: None,
                        ntp_servers: vec![],
                        mtu: None,
                        routes: vec![],
                    });
                }
            }
        }

        for (i, r) in d.reservation.unwrap_or_default().into_iter().enumerate() {
            let key = |k: &str| format!("dhcp.reservation[{i}].{k}");
            let mac: MacAddr = r
                .mac
                .parse()
                .map_err(|_| invalid(&key("mac"), format!("`{}` is not a MAC address", r.mac)))?;
            if !cfg.subnets.iter().any(|s| s.net.contains(&r.ip)) {
                return Err(invalid(
                    &key("ip"),
                    format!("{} is in no dhcp.subnet", r.ip),
                ));
            }
            if cfg
                .reservations
                .iter()
                .any(|o| o.mac == mac || o.ip == r.ip)
            {
                return Err(invalid(&key("mac"), "duplicate MAC or address".into()));
            }
            cfg.reservations.push(Reservation {
                mac,
                ip: r.ip,
                hostname: r.hostname,
            });
        }

        let enabled = d
            .enabled
            .unwrap_or(!cfg.subnets.is_empty() || cfg.mode == Mode::Proxy);
        if enabled && cfg.mode == Mode::Server && cfg.subnets.is_empty() {
            return Err(invalid(
                "dhcp.subnet",
                "DHCP is enabled in server mode but no subnet is configured".into(),
            ));
        }
        if enabled && cfg.interfaces.is_empty() && cfg.listen.ip().is_unspecified() {
            return Err(invalid(
                "dhcp.interfaces",
                "DHCP is enabled but no interface is configured (or pass --interface)".into(),
            ));
        }
        let state_dir = args
            .state_dir
            .clone()
            .or(w.state_dir)
            .unwrap_or_else(|| "/var/lib/netsvc".into());
        let boot_dir = args
            .boot_dir
            .clone()
            .or(w.boot_dir)
            .unwrap_or_else(|| "/srv/netsvc/boot".into());
        // TFTP and HTTP listen on the first DHCP interface's address unless configured: servers
        // bind only where configured, never on every interface by accident. The address is
        // looked up when the servers start (`run`), not here.
        let boot_iface = if enabled {
            cfg.interfaces.first().cloned()
        } else {
            None
        };
        let bind_iface = |section: &str| {
            boot_iface
                .clone()
                .filter(|_| !origins.0.contains_key(&format!("{section}.listen")))
        };
        let tftp = match (w.tftp, enabled) {
            (None, false) => None,
            (section, _) => {
                let mut section = section.unwrap_or_default();
                if !origins.0.contains_key("tftp.boot_dir") {
                    section.boot_dir = boot_dir.clone();
                }
                if let Some(l) = args.tftp_listen {
                    section.listen = l;
                }
                Some(
                    crate::tftp::Config::try_from(section)
                        .map_err(|e| invalid(&format!("tftp.{}", e.key), e.reason.clone()))?,
                )
            }
        };
        let http = match (w.http, enabled) {
            (None, false) => None,
            (section, _) => {
                let mut section = section.unwrap_or_default();
                if !origins.0.contains_key("http.boot_dir") {
                    section.boot_dir = boot_dir.clone();
                }
                if let Some(l) = args.http_listen {
                    section.listen = l;
                }
                Some(
                    crate::http::Config::try_from(section)
                        .map_err(|e| invalid(&format!("http.{}", e.key), e.reason.clone()))?,
                )
            }
        };
        let dns = match w.dns {
            None => None,
            Some(mut section) => {
                // The reverse zones follow the DHCP subnets unless configured.
                if section.subnets.is_empty() && enabled {
                    section.subnets = cfg.subnets.iter().map(|s| s.net).collect();
                }
                Some(
                    crate::dns::Config::try_from(section)
                        .map_err(|e| invalid("dns", common::ErrorChain(&e).to_string()))?,
                )
            }
        };
        // DHCP points iPXE at our HTTP server unless told otherwise.
        if let Some(h) = &http
            && d.http_port.is_none()
        {
            cfg.http_port = h.listen.port();
        }
        let ra = if enabled && d.router_advertisements.unwrap_or(true) && !cfg.interfaces.is_empty()
        {
            let prefix = match &d.ra_prefix {
                None => None,
                Some(p) => {
                    let net: ipnet::Ipv6Net = p.parse().map_err(|_| {
                        invalid("dhcp.ra_prefix", format!("`{p}` is not an IPv6 prefix"))
                    })?;
                    if net.prefix_len() != 64 {
                        return Err(invalid(
                            "dhcp.ra_prefix",
                            "must be a /64 (address autoconfiguration)".into(),
                        ));
                    }
                    Some(net.trunc())
                }
            };
            Some(crate::ra::Config {
                interfaces: cfg.interfaces.clone(),
                prefix,
                interval: secs("dhcp.ra_interval_secs", d.ra_interval_secs, 30)?,
            })
        } else {
            None
        };
        Ok(Settings {
            state_dir,
            boot_dir,
            ra,
            dhcp: enabled.then_some(cfg),
            tftp_iface: tftp
                .as_ref()
                .filter(|_| args.tftp_listen.is_none())
                .and_then(|_| bind_iface("tftp")),
            dns_iface: dns.as_ref().and_then(|_| bind_iface("dns")),
            dns,
            http_iface: http
                .as_ref()
                .filter(|_| args.http_listen.is_none())
                .and_then(|_| bind_iface("http")),
            tftp,
            http,
        })
    }
}

/// The first IPv4 address of `iface`.
pub(crate) fn iface_addr(iface: &str) -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|a| a.interface_name == iface)
        .find_map(|a| a.address.as_ref()?.as_sockaddr_in().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        let e = Settings::from_toml(text, "t.toml").expect_err("invalid");
        common::ErrorChain(&e).to_string()
    }

    #[test]
    fn embedded_default_needs_no_file() {
        let s = Settings::load(&Args::default()).expect("defaults");
        assert!(s.dhcp.is_none());
        assert_eq!(s.state_dir, "/var/lib/netsvc");
    }

    #[test]
    fn shipped_example_parses() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../templates/config/netsvc.toml"
        );
        let text = std::fs::read_to_string(path).expect("example config");
        let s = Settings::from_toml(&text, path).expect("valid example");
        let d = s.dhcp.expect("dhcp enabled in the example");
        assert_eq!(d.subnets.len(), 1);
        assert_eq!(d.reservations.len(), 1);
        assert_eq!(d.subnets[0].pools.len(), 1);
        let ra = s.ra.expect("router advertisements on by default");
        assert_eq!(ra.interfaces, d.interfaces);
        assert_eq!(ra.prefix, None);
        assert_eq!(ra.interval, Duration::from_secs(30));
        assert_eq!(s.tftp.expect("tftp section").max_windowsize, 64);
        assert!(s.http.expect("http section").default_boot.kernel.is_some());
        assert_eq!(
            s.dns.expect("dns section").domain.to_string(),
            "rack.example."
        );
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = err(
            "[dhcp]\ninterfaces = [\"x\"]\n[[dhcp.subnet]]\nnet = \"10.61.0.0/24\"\npools = [\"10.61.0.9-10.61.1.5\"]\n",
        );
        assert!(e.contains("`dhcp.subnet[0].pools[0]` in `t.toml`"), "{e}");
        let e = err("[dhcp]\nmode = \"relay\"\n");
        assert!(e.contains("`dhcp.mode` in `t.toml`"), "{e}");
        let e = err("[dhcp]\nbogus = 1\n");
        assert!(e.contains("t.toml") && e.contains("bogus"), "{e}");
        let e = err("[[dhcp.subnet]]\nnet = \"10.61.0.0/24\"\n");
        assert!(e.contains("dhcp.interfaces"), "{e}");
        let e = err("[dhcp]\nlease_time_secs = 0\n");
        assert!(e.contains("dhcp.lease_time_secs"), "{e}");
        let e = err(
            "[dhcp]\ninterfaces=[\"x\"]\n[[dhcp.subnet]]\nnet=\"10.61.0.0/24\"\n[[dhcp.reservation]]\nmac=\"52:54:00:00:00:01\"\nip=\"10.62.0.5\"\n",
        );
        assert!(e.contains("dhcp.reservation[0].ip"), "{e}");
    }

    #[test]
    fn router_advertisements() {
        let base = "[dhcp]\ninterfaces = [\"x\"]\n[[dhcp.subnet]]\nnet = \"10.61.0.0/24\"\n";
        let s = Settings::from_toml(base, "t.toml").expect("valid");
        assert_eq!(
            s.ra.expect("on by default").interfaces,
            vec!["x".to_owned()]
        );
        let s = Settings::from_toml(&format!("{base}[dhcp]\n"), "t.toml");
        assert!(s.is_err(), "duplicate table");
        let off = base.replace(
            "[[dhcp.subnet]]",
            "router_advertisements = false\n[[dhcp.subnet]]",
        );
        assert!(
            Settings::from_toml(&off, "t.toml")
                .expect("valid")
                .ra
                .is_none()
        );
        let p = base.replace(
            "[[dhcp.subnet]]",
            "ra_prefix = \"fd00:65::1/64\"\nra_interval_secs = 5\n[[dhcp.subnet]]",
        );
        let ra = Settings::from_toml(&p, "t.toml")
            .expect("valid")
            .ra
            .expect("on");
        assert_eq!(ra.prefix, Some("fd00:65::/64".parse().expect("net")));
        assert_eq!(ra.interval, Duration::from_secs(5));
        let bad = base.replace(
            "[[dhcp.subnet]]",
            "ra_prefix = \"fd00:65::/48\"\n[[dhcp.subnet]]",
        );
        assert!(
            err(&bad).contains("`dhcp.ra_prefix` in `t.toml`"),
            "{}",
            err(&bad)
        );
        let bad = base.replace("[[dhcp.subnet]]", "ra_prefix = \"nope\"\n[[dhcp.subnet]]");
        assert!(err(&bad).contains("dhcp.ra_prefix"), "{}", err(&bad));
        // No DHCP, no advertisements.
        assert!(
            Settings::from_toml("", "t.toml")
                .expect("valid")
                .ra
                .is_none()
        );
    }

    #[test]
    fn drop_ins_merge_in_order_and_errors_name_the_drop_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let main = Utf8PathBuf::from_path_buf(dir.path().join("n.toml")).expect("utf8");
        std::fs::write(
            &main,
            "state_dir = \"/a\"\n[dhcp]\ninterfaces = [\"eth9\"]\nlease_time_secs = 100\n[[dhcp.subnet]]\nnet = \"10.61.0.0/24\"\n",
        )
        .expect("write");
        std::fs::create_dir(format!("{main}.d")).expect("mkdir");
        std::fs::write(
            format!("{main}.d/20-b.toml"),
            "[dhcp]\nlease_time_secs = 300\n",
        )
        .expect("write");
        std::fs::write(
            format!("{main}.d/10-a.toml"),
            "state_dir = \"/b\"\n[dhcp]\nlease_time_secs = 200\n",
        )
        .expect("write");
        let args = Args {
            config: Some(main.clone()),
            ..Args::default()
        };
        let s = Settings::load(&args).expect("valid");
        assert_eq!(s.state_dir, "/b");
        let d = s.dhcp.expect("enabled");
        assert_eq!(d.interfaces, vec!["eth9".to_owned()]);
        assert_eq!(d.subnets[0].lease_time, Duration::from_secs(300));
        std::fs::write(format!("{main}.d/30-c.toml"), "[dhcp]\nmode = \"nope\"\n").expect("write");
        let e = Settings::load(&args).expect_err("invalid");
        let e = common::ErrorChain(&e).to_string();
        assert!(e.contains("30-c.toml") && e.contains("dhcp.mode"), "{e}");
    }

    #[test]
    fn flags_override_and_enable() {
        let args = Args {
            interfaces: vec!["lo".into()],
            dhcp_range: Some("127.0.0.100-127.0.0.200".into()),
            listen: Some("127.0.0.1:6767".into()),
            state_dir: Some("/s".into()),
            ..Args::default()
        };
        let s = Settings::load(&args).expect("valid");
        let d = s.dhcp.expect("enabled by flags");
        assert_eq!(
            d.subnets[0].net,
            "127.0.0.0/8".parse::<Ipv4Net>().expect("net")
        );
        assert_eq!(
            d.listen,
            "127.0.0.1:6767".parse::<SocketAddrV4>().expect("addr")
        );
        assert_eq!(s.state_dir, "/s");
        let bad = Args {
            dhcp_range: Some("10.0.0.9-10.0.0.1".into()),
            ..args
        };
        let e = Settings::load(&bad).expect_err("invalid");
        assert!(e.to_string().contains("--dhcp-range"), "{e}");
    }
}
