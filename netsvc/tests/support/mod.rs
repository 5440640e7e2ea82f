//! Harness for the DHCP interop and binary tests: a pair of network namespaces joined by a
//! veth pair, the real `netsvc` binary started in one of them, and helpers to run stock
//! clients in the other. Everything is named `nd-<pid>-<k>` and removed in `Drop`; leftovers
//! of dead test processes are removed before starting.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};

pub mod dhcp;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command, failing with its stderr.
pub fn sh(argv: &[&str]) -> anyhow::Result<String> {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]);
    let out = common::run_cmd(&mut c).with_context(|| format!("running {argv:?}"))?;
    Ok(out.stdout_lossy())
}

/// Removes namespaces left by test processes that no longer exist.
fn remove_leftovers() {
    let Ok(list) = sh(&["ip", "netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("nd-") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sh(&["ip", "netns", "del", name]);
        }
    }
}

/// Two namespaces (`srv`, `cli`) joined by a veth pair on 10.61.1.0/24: the server side is
/// 10.61.1.1, the client side gets nothing (DHCP clients configure it) unless asked.
pub struct Link {
    pub srv: String,
    pub cli: String,
    pub srv_if: String,
    pub cli_if: String,
}

impl Link {
    pub fn new() -> anyhow::Result<Self> {
        remove_leftovers();
        let pid = std::process::id();
        let k = COUNTER.fetch_add(1, Ordering::SeqCst);
        let l = Link {
            srv: format!("nd-{pid}-{k}-s"),
            cli: format!("nd-{pid}-{k}-c"),
            srv_if: format!("nd{pid}{k}s"),
            cli_if: format!("nd{pid}{k}c"),
        };
        sh(&["ip", "netns", "add", &l.srv])?;
        sh(&["ip", "netns", "add", &l.cli])?;
        for ns in [&l.srv, &l.cli] {
            sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
            ])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        sh(&[
            "ip", "link", "add", &l.srv_if, "netns", &l.srv, "type", "veth", "peer", "name",
            &l.cli_if, "netns", &l.cli,
        ])?;
        sh(&[
            "ip",
            "-n",
            &l.srv,
            "addr",
            "add",
            "10.61.1.1/24",
            "dev",
            &l.srv_if,
        ])?;
        sh(&["ip", "-n", &l.srv, "link", "set", &l.srv_if, "up"])?;
        sh(&["ip", "-n", &l.cli, "link", "set", &l.cli_if, "up"])?;
        Ok(l)
    }

    /// A second veth pair between the two namespaces, `{srv_if}x` (with `srv_addr`, a CIDR) and
    /// `{cli_if}x` (no address), both up. Returns (server side, client side); removed with the
    /// namespaces.
    pub fn add_pair(&self, srv_addr: &str) -> anyhow::Result<(String, String)> {
        let (s, c) = (format!("{}x", self.srv_if), format!("{}x", self.cli_if));
        sh(&[
            "ip", "link", "add", &s, "netns", &self.srv, "type", "veth", "peer", "name", &c,
            "netns", &self.cli,
        ])?;
        sh(&["ip", "-n", &self.srv, "addr", "add", srv_addr, "dev", &s])?;
        sh(&["ip", "-n", &self.srv, "link", "set", &s, "up"])?;
        sh(&["ip", "-n", &self.cli, "link", "set", &c, "up"])?;
        Ok((s, c))
    }

    /// A command run inside namespace `ns`.
    pub fn cmd(ns: &str, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(argv);
        c
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.srv]);
        let _ = sh(&["ip", "netns", "del", &self.cli]);
    }
}

/// The real `netsvc` binary, killed on drop.
pub struct Netsvc {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
    pub addr: String,
}

impl Netsvc {
    /// Starts `netsvc ARGS` (in namespace `ns` when given) and waits for its DHCP
    /// `listening` line.
    pub async fn start(ns: Option<&str>, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_for(ns, args, "dhcp").await
    }

    /// Starts `netsvc ARGS` (in namespace `ns` when given) and waits for the `listening` line
    /// of `proto`; `addr` is the address that line reports.
    pub async fn start_for(ns: Option<&str>, args: &[&str], proto: &str) -> anyhow::Result<Self> {
        let bin = env!("CARGO_BIN_EXE_netsvc");
        let mut c = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin]);
                c
            }
            None => Command::new(bin),
        };
        c.args(args)
            .env("RUST_LOG", "netsvc=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().context("spawning netsvc")?;
        let stderr = child.stderr.take().context("stderr")?;
        let log = Arc::new(Mutex::new(String::new()));
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut g = l2.lock().expect("log lock");
                g.push_str(&line);
                g.push('\n');
            }
        });
        let mut s = Netsvc {
            child,
            log,
            addr: String::new(),
        };
        let addr = common::wait_for(Duration::from_secs(10), || {
            let log = s.log.lock().expect("log lock").clone();
            async move {
                log.lines()
                    .filter(|l| l.contains("\"listening\"") && l.contains(&format!("\"{proto}\"")))
                    .find_map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).ok()?;
                        v.get("addr")?.as_str().map(str::to_owned)
                    })
            }
        })
        .await;
        match addr {
            Some(a) => s.addr = a,
            None => {
                let _ = s.child.kill();
                bail!(
                    "netsvc did not report listening for {proto}; log:\n{}",
                    s.log()
                );
            }
        }
        Ok(s)
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit code.
    pub fn term(&mut self) -> anyhow::Result<Option<i32>> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        for _ in 0..100 {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st.code());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("netsvc did not exit after SIGTERM")
    }
}

impl Drop for Netsvc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temp dir with a config file `netsvc.toml` written from `text`.
pub fn config_dir(text: &str) -> anyhow::Result<(tempfile::TempDir, String)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("netsvc.toml");
    std::fs::write(&path, text)?;
    Ok((dir, path.to_string_lossy().into_owned()))
}
