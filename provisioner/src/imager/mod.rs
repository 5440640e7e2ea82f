//! The imager: `/bin/imager` in the deploy ramdisk, where busybox's `/init` `exec`s it, so it
//! runs as PID 1. It asks the control node what to do ([`MachinePlan`]) and does it:
//! posts the hardware inventory ([`collect_inventory`]), waits, writes and verifies an image
//! ([`image_disk`]), writes the host's identity into the installed system ([`write_identity`]),
//! and reboots. Installed on the target as `provisioner-imager`, its `enrol` subcommand
//! ([`enrol`]) enrols the installed system on its first boot.
//!
//! The loop never exits while it is PID 1 (that would panic the kernel): every failure is
//! logged, reported as `failed` with its stage and reason, and the loop keeps polling, so an
//! operator's `retry` works without a reboot. Short `IMAGER: ...` lines on the [`Console`]
//! tell the story on the serial console; the imager secret never appears in them.

mod console;
mod enrol;
mod finalize;
mod inventory;
mod progress;
mod write;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tracing::{error, info, warn};

pub use self::console::Console;
pub use self::enrol::{ENROL_FILE, EnrolError, UNIT_NAME, UNIT_TEXT, enrol};
pub use self::finalize::{FinalizeError, INSTALLED_BINARY, Identity, write_identity};
pub use self::inventory::{InventoryError, collect as collect_inventory};
pub use self::write::{VerifyError, WriteError};
use crate::api::{DeployInstructions, FailureStage, ImagingResult, MachinePlan};
use crate::client::{Client, ClientError};
use crate::secret::Secret;

/// Exit status of `enrol` when the control node refused the secret (final: the unit does not
/// restart on it).
pub const EXIT_REJECTED: u8 = 77;
/// Longest wait between two polls of an unreachable control node.
const MAX_POLL_BACKOFF: Duration = Duration::from_secs(30);
/// Attempts at delivering a result to the control node.
const RESULT_ATTEMPTS: u32 = 10;

/// Command line of `imager` (and of its installed copy `provisioner-imager`).
#[derive(Debug, clap::Parser)]
#[command(
    name = "imager",
    about = "Deploy-ramdisk imager: inventory, image write and verify, host identity; `enrol` on the installed system"
)]
pub struct Args {
    /// Base URL of the control node (`http://10.0.0.1:8080`), without `/api/v1`.
    #[arg(long, global = true, env = "PROVISIONER_URL")]
    pub url: Option<String>,
    /// This host's one-time imager secret.
    #[arg(long, global = true, env = "PROVISIONER_SECRET", hide_env_values = true,
        value_parser = |s: &str| Ok::<_, std::convert::Infallible>(Secret::from_plaintext(s)))]
    pub secret: Option<Secret>,
    /// Leave the disk as it is after a failed write or verification (default: wipe its
    /// partition table so that it never boots half-written).
    #[arg(long, global = true)]
    pub preserve_on_error: bool,
    /// What to do (default: `run`).
    #[command(subcommand)]
    pub command: Option<ImagerCommand>,
}

/// Subcommands of `imager`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::Subcommand)]
pub enum ImagerCommand {
    /// Poll the control node and image this machine (the deploy ramdisk's job).
    #[default]
    Run,
    /// Enrol the installed system with the control node (run by `provisioner-enrol.service`).
    Enrol,
}

/// Errors turning [`Args`] into [`Settings`].
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A required option is missing.
    #[error("missing {flag} (kernel argument provisioner.{arg}=)")]
    Missing {
        /// The flag.
        flag: &'static str,
        /// The kernel argument that sets it.
        arg: &'static str,
    },
    /// The URL is not an http(s) URL.
    #[error("invalid control node URL `{url}`: not an http(s) URL")]
    Url {
        /// The URL.
        url: String,
    },
}

/// Validated settings of the imager's `run`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL of the control node.
    pub url: String,
    /// The imager secret.
    pub secret: Secret,
    /// Skip the wipe after a failed write or verification.
    pub preserve_on_error: bool,
    /// Where procfs and sysfs are mounted (`/`).
    pub root: PathBuf,
    /// Where the target disk's device node is (`/dev`).
    pub dev_dir: PathBuf,
}

impl Args {
    /// The settings of `run`.
    pub fn settings(&self) -> Result<Settings, SettingsError> {
        let url = self.url.clone().ok_or(SettingsError::Missing {
            flag: "--url",
            arg: "url",
        })?;
        let secret = self.secret.clone().ok_or(SettingsError::Missing {
            flag: "--secret",
            arg: "secret",
        })?;
        let http = reqwest::Url::parse(&url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
        if !http {
            return Err(SettingsError::Url { url });
        }
        Ok(Settings {
            url: url.trim_end_matches('/').to_owned(),
            secret,
            preserve_on_error: self.preserve_on_error,
            root: PathBuf::from("/"),
            dev_dir: PathBuf::from("/dev"),
        })
    }
}

/// Why a deployment failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Writing the image failed.
    #[error("write failed")]
    Write(#[source] WriteError),
    /// The disk does not read back as the image.
    #[error("verification failed")]
    Verify(#[source] VerifyError),
    /// Writing the identity failed.
    #[error("finalize failed")]
    Finalize(#[source] FinalizeError),
    /// The control node did not take the result.
    #[error("the control node did not accept the result")]
    Report(#[source] ClientError),
}

impl DeployError {
    /// The stage reported to the control node.
    pub fn stage(&self) -> FailureStage {
        match self {
            DeployError::Write(_) => FailureStage::Write,
            DeployError::Verify(_) => FailureStage::Verify,
            DeployError::Finalize(_) | DeployError::Report(_) => FailureStage::Finalize,
        }
    }

    /// The reason reported: the inner error chain (this layer's message only adds the stage).
    pub fn reason(&self) -> String {
        match self {
            DeployError::Write(e) => common::ErrorChain(e).to_string(),
            DeployError::Verify(e) => common::ErrorChain(e).to_string(),
            DeployError::Finalize(e) => common::ErrorChain(e).to_string(),
            DeployError::Report(e) => common::ErrorChain(e).to_string(),
        }
    }
}

/// A verified disk.
#[derive(Debug)]
pub struct Verified {
    /// SHA-256 read back (equal to the manifest's).
    pub sha256: String,
    /// Image bytes on the disk.
    pub size: u64,
    /// Of which zeroed without being written.
    pub zero_bytes: u64,
    target: write::Target,
}

/// Posts a result, retrying while the control node is unreachable or failing (5xx). A conflict
/// after a lost answer means the earlier attempt landed: the result counts as delivered.
async fn report(client: &Client, result: &ImagingResult) -> Result<(), ClientError> {
    let mut attempt = 0;
    let mut lost_answer = false;
    loop {
        match client.report_result(result).await {
            Ok(_) => return Ok(()),
            Err(err) if lost_answer && err.status() == Some(reqwest::StatusCode::CONFLICT) => {
                warn!(error = %common::ErrorChain(&err), "result already taken by an earlier attempt");
                return Ok(());
            }
            Err(err)
                if attempt + 1 < RESULT_ATTEMPTS
                    && err.status().is_none_or(|s| s.is_server_error()) =>
            {
                warn!(error = %common::ErrorChain(&err), attempt, "result report failed, retrying");
                lost_answer |= err.status().is_none();
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(u64::from(attempt.min(5)))).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Handles a failed deployment: wipes the disk's partition table (unless `preserve_on_error`)
/// and reports `failed` with the stage and reason.
async fn fail(
    client: &Client,
    console: &Console,
    target: &Path,
    err: &DeployError,
    preserve_on_error: bool,
) {
    let (stage, reason) = (err.stage(), err.reason());
    error!(%stage, %reason, "deployment failed");
    console.say(&format!("failed stage={stage} reason={reason}"));
    let wipe_it = !matches!(err, DeployError::Report(_));
    if wipe_it && preserve_on_error {
        console.say("disk left as it is (--preserve-on-error)");
    } else if wipe_it {
        let path = target.to_owned();
        match tokio::task::spawn_blocking(move || write::wipe(&path)).await {
            Ok(Ok(())) => console.say("partition table wiped"),
            Ok(Err(e)) => {
                console.say(&format!("wipe failed: {}", common::ErrorChain(&e)));
            }
            Err(_) => console.say("wipe failed: worker panicked"),
        }
    }
    if let Err(e) = report(client, &ImagingResult::Failed { stage, reason }).await {
        warn!(error = %common::ErrorChain(&e), "failure report not delivered");
    }
}

/// Streams the image of `instr` onto `target` (a block device, or a regular file standing in
/// for one), verifies it by read-back against the manifest's `disk.raw` checksum, and reports
/// `verified`. On failure the disk is wiped (unless `preserve_on_error`) and `failed` is
/// reported with the stage (`write`/`verify`) and a reason naming the offset or both hashes.
pub async fn image_disk(
    client: &Client,
    console: &Console,
    instr: &DeployInstructions,
    target: &Path,
    preserve_on_error: bool,
) -> Result<Verified, DeployError> {
    let result = async {
        let image = write::DiskImage::pick(instr).map_err(DeployError::Write)?;
        let path = target.to_owned();
        let t = tokio::task::spawn_blocking(move || write::Target::open(&path))
            .await
            .unwrap_or_else(|_| {
                Err(WriteError::Worker {
                    path: target.to_owned(),
                })
            })
            .map_err(DeployError::Write)?;
        let started = std::time::Instant::now();
        let (t, stats) = write::write_image(client, console, &instr.artifact_base, &image, t)
            .await
            .map_err(DeployError::Write)?;
        console.say(&format!(
            "written {} bytes ({} zeroed, {} written) in {:.1} s",
            stats.size,
            stats.zero_bytes,
            stats.data_bytes,
            started.elapsed().as_secs_f64()
        ));
        let (t, sha256) = write::verify(client, console, t, &image.raw)
            .await
            .map_err(DeployError::Verify)?;
        Ok(Verified {
            sha256,
            size: stats.size,
            zero_bytes: stats.zero_bytes,
            target: t,
        })
    }
    .await;
    match result {
        Ok(v) => {
            console.say(&format!("verified sha256={}", v.sha256));
            report(client, &ImagingResult::Verified)
                .await
                .map_err(DeployError::Report)?;
            Ok(v)
        }
        Err(err) => {
            fail(client, console, target, &err, preserve_on_error).await;
            Err(err)
        }
    }
}

/// Writes the identity onto a verified disk (mounting its root partition) and reports `done`.
/// Needs a real block device and root; the QEMU end-to-end test covers it.
async fn finalize_disk(
    client: &Client,
    console: &Console,
    settings: &Settings,
    instr: &DeployInstructions,
    target: &Path,
    verified: Verified,
) -> Result<(), DeployError> {
    let id = Identity {
        hostname: instr.plan.hostname.clone(),
        control_url: settings.url.clone(),
        enrol_secret: Secret::from_plaintext(instr.enrol_secret.clone()),
        ssh_authorized_keys: instr.ssh_authorized_keys.clone(),
    };
    let disk = target.to_owned();
    let done =
        tokio::task::spawn_blocking(move || finalize::finalize(&verified.target, &disk, &id)).await;
    match done {
        Ok(Ok(root)) => {
            console.say(&format!(
                "identity written to {} hostname={}",
                root.display(),
                instr.plan.hostname
            ));
        }
        Ok(Err(e)) => {
            let err = DeployError::Finalize(e);
            fail(client, console, target, &err, settings.preserve_on_error).await;
            return Err(err);
        }
        Err(_) => {
            let err = DeployError::Finalize(FinalizeError::NoRoot {
                disk: target.to_owned(),
            });
            fail(client, console, target, &err, settings.preserve_on_error).await;
            return Err(err);
        }
    }
    report(client, &ImagingResult::Done)
        .await
        .map_err(DeployError::Report)
}

/// The device node of a plan's disk (`vda` → `/dev/vda`), refusing anything but a plain name.
fn disk_path(dev_dir: &Path, disk: &str) -> Result<PathBuf, WriteError> {
    let plain = !disk.is_empty()
        && disk != "."
        && disk != ".."
        && disk
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c));
    if plain {
        Ok(dev_dir.join(disk))
    } else {
        Err(WriteError::BadDiskName {
            disk: disk.to_owned(),
        })
    }
}

/// Reboots (as PID 1), or says why not. Returns only when this is not PID 1.
fn reboot(console: &Console) {
    nix::unistd::sync();
    if std::process::id() != 1 {
        console.say("not PID 1: exiting instead of rebooting");
        return;
    }
    loop {
        let Err(err) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
        console.say(&format!("reboot failed: {err}"));
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// Prints `msg` once, until a different message comes.
fn note(console: &Console, last: &mut Option<String>, msg: String) {
    if last.as_deref() != Some(msg.as_str()) {
        console.say(&msg);
        *last = Some(msg);
    }
}

/// The imager's main loop: polls the plan and carries it out. As PID 1 it only ends by
/// rebooting; otherwise (a developer running it by hand) it returns after the host is done.
pub async fn run(settings: Settings, console: Console) -> ExitCode {
    let client = Client::new(&settings.url, Some(settings.secret.clone()));
    console.say(&format!("starting, control node {}", settings.url));
    info!(url = %settings.url, "imager starting");
    let mut delay = Duration::from_secs(1);
    let mut last: Option<String> = None;
    loop {
        let plan = match client.machine_plan().await {
            Ok(p) => {
                delay = Duration::from_secs(1);
                p
            }
            Err(err) => {
                let msg = match err.status() {
                    Some(status) => format!("control node answered {status}, retrying"),
                    None => format!(
                        "control node not answering ({}), retrying",
                        common::ErrorChain(&err)
                    ),
                };
                note(&console, &mut last, msg);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_POLL_BACKOFF);
                continue;
            }
        };
        match plan {
            MachinePlan::Inventory => {
                let root = settings.root.clone();
                let inv = tokio::task::spawn_blocking(move || collect_inventory(&root)).await;
                match inv {
                    Ok(Ok(inv)) => match client.post_inventory(&inv).await {
                        Ok(_) => {
                            last = None;
                            console.say(&format!(
                                "inventory posted ({} CPUs, {} MiB, {} disk(s), {} NIC(s), {:?})",
                                inv.cpu_count,
                                inv.memory_bytes >> 20,
                                inv.disks.len(),
                                inv.nics.len(),
                                inv.boot_mode
                            ));
                        }
                        Err(err) => {
                            let msg =
                                format!("inventory not accepted: {}", common::ErrorChain(&err));
                            note(&console, &mut last, msg);
                            tokio::time::sleep(delay).await;
                        }
                    },
                    Ok(Err(err)) => {
                        let reason = common::ErrorChain(&err).to_string();
                        note(&console, &mut last, format!("inventory failed: {reason}"));
                        let failed = ImagingResult::Failed {
                            stage: FailureStage::Inspect,
                            reason,
                        };
                        if let Err(e) = report(&client, &failed).await {
                            warn!(error = %common::ErrorChain(&e), "failure report not delivered");
                        }
                        tokio::time::sleep(MAX_POLL_BACKOFF).await;
                    }
                    Err(_) => tokio::time::sleep(delay).await,
                }
            }
            MachinePlan::Wait { retry_after_secs } => {
                note(&console, &mut last, "waiting for a deployment".to_owned());
                tokio::time::sleep(Duration::from_secs(u64::from(retry_after_secs.max(1)))).await;
            }
            MachinePlan::Deploy(instr) => {
                last = None;
                let target = match disk_path(&settings.dev_dir, &instr.plan.disk) {
                    Ok(t) => t,
                    Err(e) => {
                        let err = DeployError::Write(e);
                        let failed = ImagingResult::Failed {
                            stage: err.stage(),
                            reason: err.reason(),
                        };
                        console.say(&format!("failed stage=write reason={}", err.reason()));
                        if let Err(e) = report(&client, &failed).await {
                            warn!(error = %common::ErrorChain(&e), "failure report not delivered");
                        }
                        continue;
                    }
                };
                console.say(&format!(
                    "deploying image {} to {} as {}",
                    instr.plan.image,
                    target.display(),
                    instr.plan.hostname
                ));
                let Ok(verified) = image_disk(
                    &client,
                    &console,
                    &instr,
                    &target,
                    settings.preserve_on_error,
                )
                .await
                else {
                    continue; // Reported; wait for a retry.
                };
                match finalize_disk(&client, &console, &settings, &instr, &target, verified).await {
                    Ok(()) => {
                        console.say("done, rebooting");
                        reboot(&console);
                        return ExitCode::SUCCESS;
                    }
                    Err(err) => {
                        warn!(error = %common::ErrorChain(&err), "deployment not completed");
                    }
                }
            }
            MachinePlan::BootLocal => {
                console.say("booting the local disk, rebooting");
                reboot(&console);
                return ExitCode::SUCCESS;
            }
        }
    }
}

/// `enrol` on the installed system (root `/`): exit 0 when enrolled, [`EXIT_REJECTED`] when
/// the control node refused, 1 on any other failure.
pub async fn enrol_command(console: &Console) -> ExitCode {
    match enrol(Path::new("/"), console).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            console.line(&format!(
                "PROVISIONER-ENROL-FAILED {}",
                common::ErrorChain(&err)
            ));
            match err {
                EnrolError::Rejected { .. } => ExitCode::from(EXIT_REJECTED),
                EnrolError::File { .. } | EnrolError::Parse { .. } => ExitCode::from(1),
            }
        }
    }
}

/// Reports a fatal startup error and returns exit `code`; as PID 1 it never returns (exiting
/// would panic the kernel), so the error stays on the console for the operator.
pub fn fatal(console: &Console, err: &(dyn std::error::Error + 'static), code: u8) -> ExitCode {
    console.say(&format!("error: {}", common::ErrorChain(err)));
    if std::process::id() == 1 {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn args_and_settings() {
        let a =
            Args::try_parse_from(["imager", "--url=http://10.0.0.1:8080/", "--secret=s3"]).unwrap();
        assert_eq!(a.command, None);
        assert!(!format!("{a:?}").contains("s3"), "the secret is redacted");
        let s = a.settings().unwrap();
        assert_eq!(s.url, "http://10.0.0.1:8080");
        assert_eq!(s.secret.expose(), "s3");
        let a = Args::try_parse_from(["imager", "enrol"]).unwrap();
        assert_eq!(a.command, Some(ImagerCommand::Enrol));
        assert!(matches!(
            a.settings(),
            Err(SettingsError::Missing { flag: "--url", .. })
        ));
        let a = Args::try_parse_from(["imager", "--url=ftp://x", "--secret=s"]).unwrap();
        assert!(matches!(a.settings(), Err(SettingsError::Url { .. })));
        let a = Args::try_parse_from(["imager", "--preserve-on-error", "run", "--url=http://h"])
            .unwrap();
        assert!(a.preserve_on_error && a.command == Some(ImagerCommand::Run));
    }

    #[test]
    fn disk_names() {
        let dev = Path::new("/dev");
        assert_eq!(disk_path(dev, "vda").unwrap(), Path::new("/dev/vda"));
        assert_eq!(
            disk_path(dev, "nvme0n1").unwrap(),
            Path::new("/dev/nvme0n1")
        );
        for bad in ["", "..", "../sda", "a/b", "sda "] {
            assert!(disk_path(dev, bad).is_err(), "{bad:?}");
        }
    }
}
