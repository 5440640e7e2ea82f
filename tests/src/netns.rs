//! The virtual rack network: namespace + bridge + veth + taps (recipe in RIG.md).

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::bail;
use common::run_cmd;

/// Prefix of every interface and namespace this harness creates, so leftovers can be found.
const PREFIX: &str = "rk";

/// Fails the test with a clear message when not running as root (namespaces need it).
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("this test needs root (network namespaces, taps); run it as root as CI does");
    }
    Ok(())
}

/// A short string unique to this process and call: the pid in base 36, `-`, a counter.
///
/// Interface names are limited to 15 bytes, so names built from it stay short.
pub fn unique_suffix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}", base36(std::process::id()), base36(n))
}

fn base36(mut v: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("invariant: base36 digits are ASCII")
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = run_cmd(Command::new("ip").args(args))?;
    Ok(out.stdout_lossy())
}

fn sysctl_disable_ipv6(iface: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6"), "1");
}

/// A rack segment: the appliance's namespace on a bridge, QEMU servers on taps of the same bridge.
///
/// The appliance address is `10.A.B.1/24` inside the namespace on interface [`RackNet::ns_iface`].
/// The host itself has no address on the bridge and never speaks on the rack.
#[derive(Debug)]
pub struct RackNet {
    /// Name of the appliance's network namespace.
    pub ns: String,
    /// The bridge joining the namespace and the taps.
    pub bridge: String,
    /// The appliance's interface inside the namespace.
    pub ns_iface: String,
    /// The appliance's address on the rack.
    pub addr: Ipv4Addr,
    host_veth: String,
    taps: Vec<String>,
    extra_namespaces: Vec<String>,
}

impl RackNet {
    /// Creates a segment with the appliance at `10.{net[0]}.{net[1]}.1/24`.
    pub fn create(net: [u8; 2]) -> anyhow::Result<Self> {
        require_root()?;
        cleanup_leftovers();
        let s = unique_suffix();
        let ns = format!("{PREFIX}{s}n");
        let bridge = format!("{PREFIX}{s}b");
        let host_veth = format!("{PREFIX}{s}h");
        let ns_iface = format!("{PREFIX}{s}a");
        let addr = Ipv4Addr::new(10, net[0], net[1], 1);
        let me = RackNet {
            ns: ns.clone(),
            bridge: bridge.clone(),
            ns_iface: ns_iface.clone(),
            addr,
            host_veth: host_veth.clone(),
            taps: Vec::new(),
            extra_namespaces: Vec::new(),
        };
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link",
            "add",
            &bridge,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
        ])?;
        sysctl_disable_ipv6(&bridge);
        ip(&[
            "link", "add", &host_veth, "type", "veth", "peer", "name", &ns_iface,
        ])?;
        sysctl_disable_ipv6(&host_veth);
        ip(&["link", "set", &ns_iface, "netns", &ns])?;
        ip(&["link", "set", &host_veth, "master", &bridge, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &ns_iface,
        ])?;
        ip(&["-n", &ns, "link", "set", &ns_iface, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["link", "set", &bridge, "up"])?;
        Ok(me)
    }

    /// Adds a tap on the bridge for a QEMU server and returns its name.
    pub fn add_tap(&mut self) -> anyhow::Result<String> {
        let tap = format!("{PREFIX}{}t", unique_suffix());
        ip(&["tuntap", "add", &tap, "mode", "tap"])?;
        self.taps.push(tap.clone());
        sysctl_disable_ipv6(&tap);
        ip(&["link", "set", &tap, "master", &self.bridge, "up"])?;
        Ok(tap)
    }

    /// Adds a client namespace joined to the bridge by a veth pair, its interface up and without an
    /// address (for stock DHCP clients). Returns (namespace, interface inside it).
    pub fn add_client_ns(&mut self) -> anyhow::Result<(String, String)> {
        let s = unique_suffix();
        let ns = format!("{PREFIX}{s}n");
        let host = format!("{PREFIX}{s}h");
        let inner = format!("{PREFIX}{s}c");
        ip(&["netns", "add", &ns])?;
        self.extra_namespaces.push(ns.clone());
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
        sysctl_disable_ipv6(&host);
        ip(&["link", "set", &inner, "netns", &ns])?;
        ip(&["link", "set", &host, "master", &self.bridge, "up"])?;
        ip(&["-n", &ns, "link", "set", &inner, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok((ns, inner))
    }

    /// A command that runs `program` inside the appliance's namespace.
    pub fn in_ns(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, program]);
        cmd
    }
}

impl Drop for RackNet {
    fn drop(&mut self) {
        for tap in &self.taps {
            let _ = ip(&["link", "del", tap]);
        }
        let _ = ip(&["link", "del", &self.host_veth]);
        let _ = ip(&["link", "del", &self.bridge]);
        for ns in self
            .extra_namespaces
            .iter()
            .chain(std::iter::once(&self.ns))
        {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Removes interfaces and namespaces left by earlier runs of this harness whose process is gone.
fn cleanup_leftovers() {
    let alive = |name: &str| -> bool {
        let pid = name[PREFIX.len()..]
            .split_once('-')
            .and_then(|(pid, _)| u32::from_str_radix(pid, 36).ok());
        match pid {
            Some(pid) => std::path::Path::new(&format!("/proc/{pid}")).exists(),
            None => true, // not one of ours: leave it alone
        }
    };
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for line in links.lines() {
            let Some(name) = line
                .split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap_or(""))
            else {
                continue;
            };
            if name.starts_with(PREFIX) && !alive(name) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
    if let Ok(list) = ip(&["netns", "list"]) {
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(PREFIX) && !alive(name) {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
}
