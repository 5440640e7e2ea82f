//! The `provisioner` command line: `serve` runs the daemon; every other command is a client of
//! its REST API. Human tables by default, `--json` for scripts.
#![allow(clippy::print_stdout, reason = "the CLI's output is its interface")]

use std::process::ExitCode;

use camino::Utf8PathBuf;
use clap::{Args, Parser, Subcommand};
use reqwest::StatusCode;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::api::{
    DeployRequest, DiskSelector, Event, EventsQuery, HostDetail, HostState, HostSummary, ImageInfo,
    ImageName, ImportImageRequest, MacAddr, NewRule, RedeployRequest, Rule, RuleId, RuleMatch,
};
use crate::client::{Client, ClientError};
use crate::config::{ConfigError, NetOverrides, Settings, WireConfig};
use crate::secret::Secret;

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: any other failure.
pub const EXIT_OTHER: u8 = 1;
/// Exit status: bad command line (clap's own).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the host, image or rule does not exist.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit status: the request conflicts with the current state (e.g. deploying a deployed host).
pub const EXIT_CONFLICT: u8 = 4;
/// Exit status: missing or wrong admin token.
pub const EXIT_UNAUTHORIZED: u8 = 5;
/// Exit status: the control node could not be reached.
pub const EXIT_UNREACHABLE: u8 = 6;
/// Exit status: invalid configuration (EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;

const EXIT_CODES: &str = "Exit codes: 0 ok, 1 other error, 2 usage, 3 not found, 4 conflict \
(not valid in the host's state, or already exists), 5 unauthorized, 6 control node unreachable, \
78 configuration error.";

/// Command line of `provisioner`.
#[derive(Debug, Parser)]
#[command(name = "provisioner", version, about = "Bare-metal provisioning control node", after_help = EXIT_CODES)]
pub struct Cli {
    /// Options of the API client commands.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by the client commands.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Base URL of the control node's API.
    #[arg(
        long,
        global = true,
        env = "PROVISIONER_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// Admin API token (default: read from --token-file).
    #[arg(long, global = true, env = "PROVISIONER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the admin API token.
    #[arg(
        long,
        global = true,
        env = "PROVISIONER_TOKEN_FILE",
        default_value = "/var/lib/provisioner/admin-token"
    )]
    pub token_file: Utf8PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hosts and their lifecycle.
    #[command(subcommand)]
    Hosts(HostsCmd),
    /// Golden images.
    #[command(subcommand)]
    Images(ImagesCmd),
    /// Deployment rules (first match wins).
    #[command(subcommand)]
    Rules(RulesCmd),
    /// The event log.
    Events {
        /// Keep printing new events as they happen.
        #[arg(long)]
        follow: bool,
        /// Only events after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        /// Only this host's events (id, MAC or hostname).
        #[arg(long)]
        host: Option<String>,
    },
    /// Run the control-node daemon.
    Serve(ServeArgs),
    /// The virtual rack lab: the appliance and empty QEMU servers on this machine, imaged with
    /// no human step (needs root, QEMU and the workspace's binaries side by side).
    #[cfg(feature = "lab")]
    #[command(subcommand)]
    Lab(LabCmd),
}

/// Default directory of the virtual rack lab.
#[cfg(feature = "lab")]
pub const DEFAULT_LAB_DIR: &str = "/var/tmp/provisioner-lab";

/// `provisioner lab ...`.
#[cfg(feature = "lab")]
#[derive(Debug, Subcommand)]
pub enum LabCmd {
    /// Create the rack, build or reuse the images, start the appliance, power on the servers and
    /// show a live table until each is deployed or failed (the lab keeps running).
    Up {
        /// Number of servers (alternately BIOS and UEFI unless --bios or --uefi).
        #[arg(long, default_value_t = 2)]
        servers: usize,
        /// Every server boots UEFI.
        #[arg(long, conflicts_with = "bios")]
        uefi: bool,
        /// Every server boots BIOS.
        #[arg(long)]
        bios: bool,
        /// The lab's directory (state, image cache, disks, consoles).
        #[arg(long, default_value = DEFAULT_LAB_DIR)]
        dir: std::path::PathBuf,
        /// The repository's templates folder (default: found beside the binary).
        #[arg(long)]
        templates: Option<std::path::PathBuf>,
        /// Where images are built and cached (default: `<dir>/images`).
        #[arg(long)]
        images: Option<std::path::PathBuf>,
        /// Give up waiting (the lab keeps running) after this many seconds.
        #[arg(long, default_value_t = 1800)]
        timeout_secs: u64,
    },
    /// The servers of the running lab (`--json` for scripts).
    Status {
        /// The lab's directory.
        #[arg(long, default_value = DEFAULT_LAB_DIR)]
        dir: std::path::PathBuf,
    },
    /// Remove everything the lab created (the image cache stays).
    Down {
        /// The lab's directory.
        #[arg(long, default_value = DEFAULT_LAB_DIR)]
        dir: std::path::PathBuf,
    },
    /// (internal) The process that holds a lab until SIGTERM; started by `up`.
    #[command(hide = true)]
    Supervise {
        /// The lab's directory.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Number of servers.
        #[arg(long)]
        servers: usize,
        /// `mixed`, `bios` or `uefi`.
        #[arg(long)]
        firmware: String,
        /// The golden image's build directory.
        #[arg(long)]
        golden: std::path::PathBuf,
        /// The deploy ramdisk's build directory.
        #[arg(long)]
        ramdisk: std::path::PathBuf,
    },
}

/// Runs a `lab` command; blocking (it drives processes and waits on them).
#[cfg(feature = "lab")]
pub fn lab(cmd: LabCmd, json: bool) -> ExitCode {
    use rack_tests::lab::{self, LabFirmware};
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(err) => return fail(&err, EXIT_OTHER),
    };
    let sibling = |name: &str| exe.with_file_name(name);
    let result = match cmd {
        LabCmd::Up {
            servers,
            uefi,
            bios,
            dir,
            templates,
            images,
            timeout_secs,
        } => {
            // In a checkout the binary is target/<profile>/provisioner: templates are two up.
            let templates = templates.unwrap_or_else(|| {
                let beside = exe
                    .parent()
                    .and_then(|d| d.parent())
                    .and_then(|d| d.parent());
                beside
                    .map(|d| d.join("templates"))
                    .unwrap_or_else(|| "templates".into())
            });
            lab::up(&lab::LabOptions {
                images: images.unwrap_or_else(|| dir.join("images")),
                dir,
                servers,
                firmware: match (uefi, bios) {
                    (true, _) => LabFirmware::Uefi,
                    (_, true) => LabFirmware::Bios,
                    _ => LabFirmware::Mixed,
                },
                provisioner: exe.clone(),
                image_builder: sibling("image-builder"),
                imager: sibling("imager"),
                templates,
                timeout: std::time::Duration::from_secs(timeout_secs),
            })
        }
        LabCmd::Status { dir } => lab::status(&dir, json),
        LabCmd::Down { dir } => lab::down(&dir),
        LabCmd::Supervise {
            dir,
            servers,
            firmware,
            golden,
            ramdisk,
        } => {
            let firmware = match firmware.as_str() {
                "bios" => LabFirmware::Bios,
                "uefi" => LabFirmware::Uefi,
                _ => LabFirmware::Mixed,
            };
            lab::supervise(&lab::SuperviseOptions {
                dir,
                servers,
                firmware,
                golden,
                ramdisk,
                provisioner: exe.clone(),
            })
            .map(|()| 0)
        }
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(EXIT_OTHER)),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_OTHER)
        }
    }
}

/// `provisioner hosts ...`.
#[derive(Debug, Subcommand)]
pub enum HostsCmd {
    /// List hosts.
    List,
    /// Show one host with its inventory.
    Show {
        /// Host id, MAC or hostname.
        host: String,
    },
    /// Deploy an image on an inspected, ready or failed host.
    Deploy {
        /// Host id, MAC or hostname.
        host: String,
        /// Image name.
        #[arg(long)]
        image: ImageName,
        /// Hostname pattern (`{serial}`, `{mac}`, `{vendor}`, `{product}`); default node-{serial}.
        #[arg(long)]
        hostname: Option<String>,
        /// Target disk kernel name (`vda`); default the first non-rotational disk.
        #[arg(long)]
        disk: Option<String>,
    },
    /// Redeploy a deployed host at its next PXE boot.
    Redeploy {
        /// Host id, MAC or hostname.
        host: String,
        /// Another image (default: the deployed one).
        #[arg(long)]
        image: Option<ImageName>,
    },
    /// Retry a failed host.
    Retry {
        /// Host id, MAC or hostname.
        host: String,
    },
    /// Forget a host (its inventory and secrets too).
    Delete {
        /// Host id, MAC or hostname.
        host: String,
    },
}

/// `provisioner images ...`.
#[derive(Debug, Subcommand)]
pub enum ImagesCmd {
    /// List images.
    List,
    /// Import an image-builder output directory (checked against its manifest.json).
    Import {
        /// The directory, on the control node.
        dir: Utf8PathBuf,
        /// Name to store it under (default: the manifest's).
        #[arg(long)]
        name: Option<ImageName>,
    },
}

/// `provisioner rules ...`.
#[derive(Debug, Subcommand)]
pub enum RulesCmd {
    /// List rules in evaluation order.
    List,
    /// Append a rule; all given conditions must hold.
    Add {
        /// Image to deploy.
        #[arg(long)]
        image: ImageName,
        /// Hostname pattern (`{serial}`, `{mac}`, `{vendor}`, `{product}`).
        #[arg(long, default_value = "node-{serial}")]
        hostname: String,
        /// Target disk: `first`, `largest`, `name:DEV` or `serial:SERIAL`.
        #[arg(long, default_value = "first", value_parser = parse_disk)]
        disk: DiskSelector,
        /// Match a NIC's MAC.
        #[arg(long)]
        mac: Option<MacAddr>,
        /// Match the DMI serial.
        #[arg(long)]
        serial: Option<String>,
        /// Match the DMI vendor (case-insensitive).
        #[arg(long)]
        vendor: Option<String>,
        /// Match the DMI product (case-insensitive).
        #[arg(long)]
        product: Option<String>,
        /// Minimum memory (bytes, or with K/M/G/T suffix).
        #[arg(long, value_parser = parse_size)]
        min_memory: Option<u64>,
        /// Minimum size of some disk (bytes, or with K/M/G/T suffix).
        #[arg(long, value_parser = parse_size)]
        min_disk: Option<u64>,
    },
    /// Delete a rule.
    Delete {
        /// Rule id.
        id: RuleId,
    },
}

/// `provisioner serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (drop-ins from FILE.d/*.toml); built-in defaults without one.
    #[arg(long)]
    pub config: Option<Utf8PathBuf>,
    /// Override `listen`.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Override `state_dir`.
    #[arg(long)]
    pub state_dir: Option<Utf8PathBuf>,
    /// Serve the rack network services (DHCP, TFTP, HTTP boot, DNS when configured) on this
    /// interface (repeatable); adds to the netsvc config's `dhcp.interfaces`.
    #[arg(long = "interface", value_name = "IF")]
    pub interfaces: Vec<String>,
    /// DHCP dynamic range `START-END` on the first interface's subnet.
    #[arg(long, value_name = "START-END", requires = "interfaces")]
    pub dhcp_range: Option<String>,
    /// Override `ramdisk_dir`.
    #[arg(long, value_name = "DIR")]
    pub ramdisk_dir: Option<Utf8PathBuf>,
}

impl ServeArgs {
    /// Loads and validates the settings.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let overrides = WireConfig {
            listen: self.listen,
            state_dir: self.state_dir.clone(),
            ramdisk_dir: self.ramdisk_dir.clone(),
            ..WireConfig::default()
        };
        let net = NetOverrides {
            interfaces: self.interfaces.clone(),
            dhcp_range: self.dhcp_range.clone(),
        };
        Settings::load_with_net(self.config.as_deref(), overrides, &net)
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix in `{s}` (use K, M, G or T)")),
            };
            (&s[..i], 1u64 << shift)
        }
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size `{s}`"))
}

fn parse_disk(s: &str) -> Result<DiskSelector, String> {
    match s.split_once(':') {
        None if s == "first" => Ok(DiskSelector::First),
        None if s == "largest" => Ok(DiskSelector::Largest),
        Some(("name", n)) if !n.is_empty() => Ok(DiskSelector::Name(n.to_owned())),
        Some(("serial", n)) if !n.is_empty() => Ok(DiskSelector::Serial(n.to_owned())),
        _ => Err(format!(
            "invalid disk `{s}` (use first, largest, name:DEV or serial:SERIAL)"
        )),
    }
}

/// Runs the daemon until SIGTERM/SIGINT. Prints the admin token once, when it is created.
pub async fn serve(settings: Settings) -> ExitCode {
    let shutdown = match common::shutdown_token() {
        Ok(t) => t,
        Err(err) => return fail(&err, EXIT_OTHER),
    };
    run_serve(settings, shutdown).await
}

async fn run_serve(settings: Settings, shutdown: CancellationToken) -> ExitCode {
    let token_file = settings.token_file.clone();
    let result = crate::server::serve(&settings, shutdown, |token| {
        println!(
            "admin token (stored in {token_file}, shown only once): {}",
            token.expose()
        );
    })
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err, EXIT_OTHER),
    }
}

fn fail(err: &(dyn std::error::Error + 'static), code: u8) -> ExitCode {
    eprintln!("error: {}", common::ErrorChain(err));
    ExitCode::from(code)
}

fn client_exit(err: &ClientError) -> u8 {
    match err.status() {
        Some(StatusCode::NOT_FOUND) => EXIT_NOT_FOUND,
        Some(StatusCode::CONFLICT) => EXIT_CONFLICT,
        Some(StatusCode::UNAUTHORIZED) => EXIT_UNAUTHORIZED,
        Some(_) => EXIT_OTHER,
        None if err.is_connect() => EXIT_UNREACHABLE,
        None => EXIT_OTHER,
    }
}

/// Errors of the client commands before any request is sent.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("no admin token: pass --token or make `{path}` readable")]
    Token {
        path: Utf8PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("cannot resolve image directory `{path}`")]
    Dir {
        path: Utf8PathBuf,
        #[source]
        err: std::io::Error,
    },
}

/// Runs a client command against the API and returns the exit status.
pub async fn run(global: GlobalArgs, command: Command) -> ExitCode {
    let token = match &global.token {
        Some(t) => Secret::from_plaintext(t.trim()),
        None => match std::fs::read_to_string(&global.token_file) {
            Ok(t) => Secret::from_plaintext(t.trim()),
            Err(err) => {
                let err = CliError::Token {
                    path: global.token_file.clone(),
                    err,
                };
                return fail(&err, EXIT_CONFIG);
            }
        },
    };
    let client = Client::new(&global.url, Some(token));
    match dispatch(&client, global.json, command).await {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Client(err)) => fail(&err, client_exit(&err)),
        Err(Failure::Cli(err)) => fail(&err, EXIT_OTHER),
    }
}

enum Failure {
    Client(ClientError),
    Cli(CliError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

fn print_json<T: Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("invariant: API types serialize to JSON")
    );
}

async fn dispatch(client: &Client, json: bool, command: Command) -> Result<u8, Failure> {
    match command {
        Command::Hosts(cmd) => hosts(client, json, cmd).await,
        Command::Images(ImagesCmd::List) => {
            let images = client.images().await?;
            if json {
                print_json(&images);
            } else {
                print!("{}", images_table(&images));
            }
            Ok(EXIT_OK)
        }
        Command::Images(ImagesCmd::Import { dir, name }) => {
            let abs = std::path::absolute(&dir).map_err(|err| {
                Failure::Cli(CliError::Dir {
                    path: dir.clone(),
                    err,
                })
            })?;
            let req = ImportImageRequest {
                dir: abs.to_string_lossy().into_owned(),
                name,
            };
            let image = client.import_image(&req).await?;
            if json {
                print_json(&image);
            } else {
                print!("{}", images_table(std::slice::from_ref(&image)));
            }
            Ok(EXIT_OK)
        }
        Command::Rules(RulesCmd::List) => {
            let rules = client.rules().await?;
            if json {
                print_json(&rules);
            } else {
                print!("{}", rules_table(&rules));
            }
            Ok(EXIT_OK)
        }
        Command::Rules(RulesCmd::Add {
            image,
            hostname,
            disk,
            mac,
            serial,
            vendor,
            product,
            min_memory,
            min_disk,
        }) => {
            let rule = NewRule {
                matches: RuleMatch {
                    mac,
                    serial,
                    vendor,
                    product,
                    min_memory_bytes: min_memory,
                    min_disk_bytes: min_disk,
                },
                image,
                hostname,
                disk,
            };
            let rule = client.add_rule(&rule).await?;
            if json {
                print_json(&rule);
            } else {
                print!("{}", rules_table(std::slice::from_ref(&rule)));
            }
            Ok(EXIT_OK)
        }
        Command::Rules(RulesCmd::Delete { id }) => {
            client.delete_rule(id).await?;
            Ok(EXIT_OK)
        }
        Command::Events {
            follow,
            after,
            host,
        } => {
            let host = match host {
                Some(h) => Some(client.host(&h).await?.host.id),
                None => None,
            };
            let query = EventsQuery {
                after,
                host,
                limit: None,
                follow: None,
            };
            let print = |e: &Event| {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string(e).expect("invariant: events serialize to JSON")
                    );
                } else {
                    println!("{}", event_line(e));
                }
            };
            if follow {
                client
                    .follow_events(&query, |e| {
                        print(&e);
                        true
                    })
                    .await?;
            } else {
                let events = client.events(&query).await?;
                if json {
                    print_json(&events);
                } else {
                    events.iter().for_each(print);
                }
            }
            Ok(EXIT_OK)
        }
        Command::Serve(_) => unreachable!("main runs `serve` without an API client"),
        #[cfg(feature = "lab")]
        Command::Lab(_) => unreachable!("main runs `lab` without an API client"),
    }
}

async fn hosts(client: &Client, json: bool, cmd: HostsCmd) -> Result<u8, Failure> {
    let summary = match cmd {
        HostsCmd::List => {
            let hosts = client.hosts().await?;
            if json {
                print_json(&hosts);
            } else {
                print!("{}", hosts_table(&hosts));
            }
            return Ok(EXIT_OK);
        }
        HostsCmd::Show { host } => {
            let detail = client.host(&host).await?;
            if json {
                print_json(&detail);
            } else {
                print!("{}", host_detail(&detail));
            }
            return Ok(EXIT_OK);
        }
        HostsCmd::Delete { host } => {
            client.delete_host(&host).await?;
            return Ok(EXIT_OK);
        }
        HostsCmd::Deploy {
            host,
            image,
            hostname,
            disk,
        } => {
            let req = DeployRequest {
                image,
                hostname,
                disk,
            };
            client.deploy(&host, &req).await?
        }
        HostsCmd::Redeploy { host, image } => {
            client.redeploy(&host, &RedeployRequest { image }).await?
        }
        HostsCmd::Retry { host } => client.retry(&host).await?,
    };
    if json {
        print_json(&summary);
    } else {
        print!("{}", hosts_table(std::slice::from_ref(&summary)));
    }
    Ok(EXIT_OK)
}

/// Left-aligned columns separated by two spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

fn gib(bytes: u64) -> String {
    let tenths = bytes.saturating_mul(10) >> 30;
    format!("{}.{} GiB", tenths / 10, tenths % 10)
}

fn state_cells(s: &HostState) -> (String, String, String) {
    match s {
        HostState::Deploying {
            phase, progress, ..
        } => (
            "deploying".into(),
            phase.to_string(),
            if progress.total > 0 {
                format!("{}%", progress.percent())
            } else {
                "-".into()
            },
        ),
        HostState::Failed { stage, reason, .. } => {
            ("failed".into(), stage.to_string(), reason.clone())
        }
        other => (other.name().to_string(), "-".into(), "-".into()),
    }
}

fn hosts_table(hosts: &[HostSummary]) -> String {
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let (state, phase, detail) = state_cells(&h.state);
            vec![
                h.id.to_string(),
                h.mac.to_string(),
                h.hostname.clone().unwrap_or_else(|| "-".into()),
                state,
                phase,
                detail,
                h.updated_at.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "MAC",
            "HOSTNAME",
            "STATE",
            "PHASE",
            "PROGRESS/REASON",
            "UPDATED",
        ],
        &rows,
    )
}

fn host_detail(d: &HostDetail) -> String {
    let h = &d.host;
    let (state, phase, detail) = state_cells(&h.state);
    let mut out = format!(
        "id:         {}\nmac:        {}\nhostname:   {}\nstate:      {state}\nphase:      {phase}\ndetail:     {detail}\ngeneration: {}\ncreated:    {}\nupdated:    {}\n",
        h.id,
        h.mac,
        h.hostname.as_deref().unwrap_or("-"),
        h.generation,
        h.created_at,
        h.updated_at,
    );
    if let HostState::Deploying { plan, .. }
    | HostState::Deployed { plan }
    | HostState::Failed {
        plan: Some(plan), ..
    } = &h.state
    {
        out.push_str(&format!(
            "image:      {}\ndisk:       {}\n",
            plan.image, plan.disk
        ));
    }
    match &d.inventory {
        None => out.push_str("inventory:  -\n"),
        Some(inv) => {
            let dmi = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "system:     {} {} (serial {})\ncpu:        {} x {}\nmemory:     {}\nboot mode:  {:?}\n",
                dmi(&inv.vendor),
                dmi(&inv.product),
                dmi(&inv.serial),
                inv.cpu_count,
                inv.cpu_model,
                gib(inv.memory_bytes),
                inv.boot_mode,
            ));
            for disk in &inv.disks {
                out.push_str(&format!(
                    "disk:       {} {} {} serial {}{}\n",
                    disk.name,
                    gib(disk.size_bytes),
                    dmi(&disk.model),
                    dmi(&disk.serial),
                    if disk.rotational { " (rotational)" } else { "" },
                ));
            }
            for nic in &inv.nics {
                out.push_str(&format!(
                    "nic:        {} {} link {}{}\n",
                    nic.name,
                    nic.mac,
                    if nic.link { "up" } else { "down" },
                    nic.speed_mbps
                        .map(|s| format!(" {s} Mb/s"))
                        .unwrap_or_default(),
                ));
            }
        }
    }
    out
}

fn images_table(images: &[ImageInfo]) -> String {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            let size: u64 = i.artifacts.iter().map(|a| a.size).sum();
            let files: Vec<&str> = i.artifacts.iter().map(|a| a.path.as_str()).collect();
            vec![
                i.name.to_string(),
                gib(size),
                files.join(","),
                i.imported_at.to_string(),
            ]
        })
        .collect();
    table(&["NAME", "SIZE", "ARTIFACTS", "IMPORTED"], &rows)
}

fn rules_table(rules: &[Rule]) -> String {
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| {
            let m = &r.rule.matches;
            let mut conds = Vec::new();
            if let Some(v) = &m.mac {
                conds.push(format!("mac={v}"));
            }
            if let Some(v) = &m.serial {
                conds.push(format!("serial={v}"));
            }
            if let Some(v) = &m.vendor {
                conds.push(format!("vendor={v}"));
            }
            if let Some(v) = &m.product {
                conds.push(format!("product={v}"));
            }
            if let Some(v) = m.min_memory_bytes {
                conds.push(format!("memory>={}", gib(v)));
            }
            if let Some(v) = m.min_disk_bytes {
                conds.push(format!("disk>={}", gib(v)));
            }
            let disk = match &r.rule.disk {
                DiskSelector::First => "first".to_owned(),
                DiskSelector::Largest => "largest".to_owned(),
                DiskSelector::Name(n) => format!("name:{n}"),
                DiskSelector::Serial(s) => format!("serial:{s}"),
            };
            vec![
                r.id.to_string(),
                if conds.is_empty() {
                    "*".into()
                } else {
                    conds.join(" ")
                },
                r.rule.image.to_string(),
                r.rule.hostname.clone(),
                disk,
            ]
        })
        .collect();
    table(&["ID", "MATCH", "IMAGE", "HOSTNAME", "DISK"], &rows)
}

fn event_line(e: &Event) -> String {
    let arrow = match (e.from, e.to) {
        (Some(f), Some(t)) => format!("{f} -> {t}"),
        (None, Some(t)) => format!("-> {t}"),
        (Some(f), None) => format!("{f} ->"),
        (None, None) => String::new(),
    };
    let detail = match &e.state {
        Some(s) => {
            let (_, phase, detail) = state_cells(s);
            if phase == "-" {
                String::new()
            } else {
                format!(" ({phase} {detail})")
            }
        }
        None => String::new(),
    };
    format!(
        "{} #{} {} {} {arrow}{detail}",
        e.at, e.seq.0, e.mac, e.event
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_and_disks_parse() {
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("G").is_err());
        assert_eq!(parse_disk("largest"), Ok(DiskSelector::Largest));
        assert_eq!(parse_disk("name:vda"), Ok(DiskSelector::Name("vda".into())));
        assert!(parse_disk("name:").is_err());
        assert!(parse_disk("biggest").is_err());
    }

    #[test]
    fn usage_errors_exit_2() {
        let err = Cli::try_parse_from(["provisioner", "hosts", "deploy", "h1"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(EXIT_USAGE));
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xxxx".into(), "1".into()],
                vec!["y".into(), "2".into()],
            ],
        );
        assert_eq!(t, "A     LONGER\nxxxx  1\ny     2\n");
    }
}
