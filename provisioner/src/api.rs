//! Wire types of the control node's REST API: the only types serialized over HTTP.
//!
//! The daemon (`http`), the CLI (`client`) and later the imager and the host agent
//! all use these types. Identifiers are newtypes; MAC addresses are [`netsvc::MacAddr`].

use std::fmt;
use std::str::FromStr;

pub use netsvc::MacAddr;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Path prefix of every API route.
pub const API_PREFIX: &str = "/api/v1";

/// Identifies a host (a physical server) for its whole life in the inventory.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct HostId(pub Uuid);

impl HostId {
    /// A fresh random identifier.
    pub fn new_random() -> Self {
        HostId(Uuid::new_v4())
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for HostId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(HostId)
    }
}

/// Error for a malformed identifier or name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{value}`: {rule}")]
pub struct ParseNameError {
    what: &'static str,
    value: String,
    rule: &'static str,
}

/// The name of a golden image in the image store (`debian-bookworm-server`).
///
/// 1 to 64 characters of `[a-z0-9._-]`, starting with a letter or digit, so it is safe as a
/// directory name and in URLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "debian-bookworm-server")]
pub struct ImageName(String);

impl ImageName {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ImageName {
    type Err = ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
        let first_ok = s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if s.len() > 64 || !first_ok || !s.chars().all(ok_char) {
            return Err(ParseNameError {
                what: "image name",
                value: s.to_owned(),
                rule: "1-64 characters of [a-z0-9._-] starting with a letter or digit",
            });
        }
        Ok(ImageName(s.to_owned()))
    }
}

impl TryFrom<String> for ImageName {
    type Error = ParseNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ImageName> for String {
    fn from(n: ImageName) -> String {
        n.0
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies a deployment rule.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct RuleId(pub u64);

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RuleId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(RuleId)
    }
}

/// Position of an event in the event log; strictly increasing.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct EventSeq(pub u64);

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with second precision (`2026-11-22T03:48:54Z`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0 / 1000;
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Civil-from-days (Howard Hinnant), valid for every day after 1970-01-01.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Host lifecycle

/// What an imager or operator must do to deploy a host: which image, under which name, onto
/// which disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployPlan {
    /// The golden image to write.
    pub image: ImageName,
    /// The hostname written into the installed system.
    pub hostname: String,
    /// Kernel name of the target disk as the ramdisk sees it (`sda`, `vda`, `nvme0n1`).
    pub disk: String,
}

/// Phase of a deployment in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeployPhase {
    /// Waiting for the deploy ramdisk to boot and fetch its plan.
    Pending,
    /// Streaming the image onto the disk.
    Writing,
    /// Reading the disk back against the manifest's checksum.
    Verifying,
    /// Growing the root partition and writing the host identity.
    Finalizing,
    /// The imager is done; waiting for the installed system to boot and enrol.
    Rebooting,
}

impl fmt::Display for DeployPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeployPhase::Pending => "pending",
            DeployPhase::Writing => "writing",
            DeployPhase::Verifying => "verifying",
            DeployPhase::Finalizing => "finalizing",
            DeployPhase::Rebooting => "rebooting",
        })
    }
}

/// Bytes done out of a total in the current phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// Bytes processed so far.
    pub done: u64,
    /// Bytes in the whole phase (0 when unknown).
    pub total: u64,
}

impl Progress {
    /// Whole percent done, 0 when the total is unknown.
    pub fn percent(&self) -> u64 {
        (self.done.min(self.total) * 100)
            .checked_div(self.total)
            .unwrap_or(0)
    }
}

/// The stage in which a host failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureStage {
    /// Collecting or posting the hardware inventory.
    Inspect,
    /// Downloading or writing the image.
    Write,
    /// Reading back the disk against the checksum.
    Verify,
    /// Growing the root partition or writing the host identity.
    Finalize,
    /// Booting the installed system and enrolling.
    Enrol,
}

impl fmt::Display for FailureStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureStage::Inspect => "inspect",
            FailureStage::Write => "write",
            FailureStage::Verify => "verify",
            FailureStage::Finalize => "finalize",
            FailureStage::Enrol => "enrol",
        })
    }
}

/// The lifecycle state of a host; each variant carries only the data valid in that state.
///
/// See [`crate::lifecycle::step`] for the transitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum HostState {
    /// The host PXE-booted with an unknown MAC; its deploy ramdisk has not reported yet.
    Discovered,
    /// The hardware inventory arrived; deployment rules are being evaluated.
    Inspected,
    /// No rule matched: waiting for an operator's `deploy`.
    Ready,
    /// An image is being deployed.
    Deploying {
        /// What is being deployed where.
        plan: DeployPlan,
        /// How far the deployment got.
        phase: DeployPhase,
        /// Progress within the phase.
        progress: Progress,
    },
    /// The image was written and verified, and the installed system enrolled.
    Deployed {
        /// What was deployed.
        plan: DeployPlan,
    },
    /// Something failed; `retry` starts over from the last plan.
    Failed {
        /// Where it failed.
        stage: FailureStage,
        /// Why, as reported.
        reason: String,
        /// The plan being deployed when it failed, if any.
        plan: Option<DeployPlan>,
    },
}

impl HostState {
    /// The state's name, as in the JSON `state` tag.
    pub fn name(&self) -> StateName {
        match self {
            HostState::Discovered => StateName::Discovered,
            HostState::Inspected => StateName::Inspected,
            HostState::Ready => StateName::Ready,
            HostState::Deploying { .. } => StateName::Deploying,
            HostState::Deployed { .. } => StateName::Deployed,
            HostState::Failed { .. } => StateName::Failed,
        }
    }
}

/// The name of a [`HostState`] without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    /// See [`HostState::Discovered`].
    Discovered,
    /// See [`HostState::Inspected`].
    Inspected,
    /// See [`HostState::Ready`].
    Ready,
    /// See [`HostState::Deploying`].
    Deploying,
    /// See [`HostState::Deployed`].
    Deployed,
    /// See [`HostState::Failed`].
    Failed,
}

impl fmt::Display for StateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StateName::Discovered => "discovered",
            StateName::Inspected => "inspected",
            StateName::Ready => "ready",
            StateName::Deploying => "deploying",
            StateName::Deployed => "deployed",
            StateName::Failed => "failed",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Hardware inventory (posted by the imager)

/// One disk as the deploy ramdisk sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Disk {
    /// Kernel name (`sda`, `vda`, `nvme0n1`).
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Model string, if the disk reports one.
    #[serde(default)]
    pub model: Option<String>,
    /// Serial number, if the disk reports one.
    #[serde(default)]
    pub serial: Option<String>,
    /// Whether the disk is rotational (a spinning disk).
    #[serde(default)]
    pub rotational: bool,
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Nic {
    /// Kernel name (`eth0`).
    pub name: String,
    /// Hardware address.
    #[schema(value_type = String, example = "52:54:00:12:34:56")]
    pub mac: MacAddr,
    /// Whether the link is up.
    #[serde(default)]
    pub link: bool,
    /// Link speed in Mbit/s, if known.
    #[serde(default)]
    pub speed_mbps: Option<u32>,
}

/// Firmware the host booted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BootMode {
    /// Legacy BIOS.
    Bios,
    /// UEFI.
    Uefi,
}

/// Hardware inventory of a host, as collected by the imager in the deploy ramdisk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HardwareInventory {
    /// CPU model string.
    pub cpu_model: String,
    /// Number of logical CPUs.
    pub cpu_count: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Disks.
    pub disks: Vec<Disk>,
    /// Network interfaces.
    pub nics: Vec<Nic>,
    /// DMI system vendor.
    #[serde(default)]
    pub vendor: Option<String>,
    /// DMI product name.
    #[serde(default)]
    pub product: Option<String>,
    /// DMI system serial number.
    #[serde(default)]
    pub serial: Option<String>,
    /// Firmware the ramdisk booted with.
    pub boot_mode: BootMode,
}

// ---------------------------------------------------------------------------------------------
// Hosts

/// A host as listed by `GET /api/v1/hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostSummary {
    /// Identifier.
    pub id: HostId,
    /// MAC address it PXE-booted with.
    #[schema(value_type = String, example = "52:54:00:12:34:56")]
    pub mac: MacAddr,
    /// Hostname from its deployment plan, if any.
    pub hostname: Option<String>,
    /// Lifecycle state.
    pub state: HostState,
    /// Incremented on every state change.
    pub generation: u64,
    /// When the host was first seen.
    pub created_at: Timestamp,
    /// When its state last changed.
    pub updated_at: Timestamp,
}

/// A host with its inventory, as returned by `GET /api/v1/hosts/{host}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostDetail {
    /// The summary fields.
    #[serde(flatten)]
    pub host: HostSummary,
    /// Hardware inventory, once the imager posted it.
    pub inventory: Option<HardwareInventory>,
}

/// Body of `POST /api/v1/hosts/{host}/deploy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// Image to deploy.
    pub image: ImageName,
    /// Hostname; defaults to `node-{serial}` (or `node-{mac}` without a serial).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Target disk; defaults to the first non-rotational disk, else the first disk.
    #[serde(default)]
    pub disk: Option<String>,
}

/// Body of `POST /api/v1/hosts/{host}/redeploy`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeployRequest {
    /// A different image; defaults to the one deployed.
    #[serde(default)]
    pub image: Option<ImageName>,
}

// ---------------------------------------------------------------------------------------------
// Images

/// One file of an image, as listed in its `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Artifact {
    /// File name relative to the image directory (`disk.raw`, `rootfs.tar.zst`); image-builder's
    /// manifest calls it `name`.
    #[serde(alias = "name")]
    pub path: String,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageInfo {
    /// Name.
    pub name: ImageName,
    /// Its verified files.
    pub artifacts: Vec<Artifact>,
    /// When it was imported.
    pub imported_at: Timestamp,
}

/// Body of `POST /api/v1/images`: import a directory built by image-builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportImageRequest {
    /// Directory on the control node holding `manifest.json` and the artifacts.
    pub dir: String,
    /// Name to store it under; defaults to the manifest's `name`.
    #[serde(default)]
    pub name: Option<ImageName>,
}

// ---------------------------------------------------------------------------------------------
// Rules

/// Which disk a rule deploys onto.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiskSelector {
    /// The first non-rotational disk, else the first disk.
    #[default]
    First,
    /// The largest disk.
    Largest,
    /// The disk with this kernel name (`sda`).
    Name(String),
    /// The disk with this serial number.
    Serial(String),
}

/// Conditions of a rule; all given ones must hold (an empty match matches every host).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleMatch {
    /// One of the host's NICs has this MAC.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "52:54:00:12:34:56")]
    pub mac: Option<MacAddr>,
    /// DMI serial equals this.
    #[serde(default)]
    pub serial: Option<String>,
    /// DMI vendor equals this (case-insensitive).
    #[serde(default)]
    pub vendor: Option<String>,
    /// DMI product equals this (case-insensitive).
    #[serde(default)]
    pub product: Option<String>,
    /// At least this much memory, in bytes.
    #[serde(default)]
    pub min_memory_bytes: Option<u64>,
    /// At least one disk of at least this size, in bytes.
    #[serde(default)]
    pub min_disk_bytes: Option<u64>,
}

/// What to create: a rule without its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRule {
    /// Conditions.
    #[serde(rename = "match", default)]
    pub matches: RuleMatch,
    /// Image to deploy.
    pub image: ImageName,
    /// Hostname pattern with `{serial}`, `{mac}` (hyphenated), `{vendor}`, `{product}` placeholders.
    pub hostname: String,
    /// Target disk.
    #[serde(default)]
    pub disk: DiskSelector,
}

/// A deployment rule; rules are tried in id order and the first match wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rule {
    /// Identifier (also its order).
    pub id: RuleId,
    /// The rule.
    #[serde(flatten)]
    pub rule: NewRule,
}

// ---------------------------------------------------------------------------------------------
// Events

/// One entry of the event log: a host's state changed (or it was deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Position in the log.
    pub seq: EventSeq,
    /// When it happened.
    pub at: Timestamp,
    /// The host.
    pub host: HostId,
    /// Its MAC.
    #[schema(value_type = String, example = "52:54:00:12:34:56")]
    pub mac: MacAddr,
    /// What happened (`pxe_boot`, `inventory_posted`, `deploy_requested`, `deleted`...).
    pub event: String,
    /// State before.
    pub from: Option<StateName>,
    /// State after (none when deleted).
    pub to: Option<StateName>,
    /// The new host state in full.
    pub state: Option<HostState>,
}

/// Query of `GET /api/v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events after this sequence number.
    #[serde(default)]
    pub after: Option<u64>,
    /// Only this host's events.
    #[serde(default)]
    #[param(value_type = Option<String>)]
    pub host: Option<HostId>,
    /// At most this many events (default and maximum 10000; ignored with `follow`).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Keep the response open and stream new events as JSON lines.
    #[serde(default)]
    pub follow: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// Machine-facing endpoints (imager in the deploy ramdisk, enrolling installed host)

/// What the imager should do next, from `GET /api/v1/machine/plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum MachinePlan {
    /// Post the hardware inventory.
    Inventory,
    /// Nothing to do yet: ask again later.
    Wait {
        /// Suggested delay before asking again.
        retry_after_secs: u32,
    },
    /// Write this image.
    Deploy(DeployInstructions),
    /// Set local boot and reboot.
    BootLocal,
}

/// Everything the imager needs to write a host's disk.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeployInstructions {
    /// The plan.
    pub plan: DeployPlan,
    /// The image's files; the imager picks the disk artifact (`disk.raw` or `disk.raw.zst`).
    pub artifacts: Vec<Artifact>,
    /// URL path prefix under which the artifacts are served (`/images/{name}/`).
    pub artifact_base: String,
    /// One-time enrolment secret the installed system presents to `POST /api/v1/machine/enrol`.
    pub enrol_secret: String,
    /// OpenSSH public keys the imager installs for `root` on the host (one per entry).
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
}

impl fmt::Debug for DeployInstructions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeployInstructions")
            .field("plan", &self.plan)
            .field("artifacts", &self.artifacts)
            .field("artifact_base", &self.artifact_base)
            .field("enrol_secret", &"<redacted>")
            .field("ssh_authorized_keys", &self.ssh_authorized_keys)
            .finish()
    }
}

/// Body of `POST /api/v1/machine/progress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressReport {
    /// Current phase (`writing`, `verifying` or `finalizing`).
    pub phase: DeployPhase,
    /// Progress within it.
    pub progress: Progress,
}

/// Body of `POST /api/v1/machine/result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum ImagingResult {
    /// The disk was read back and matches the image's checksum.
    Verified,
    /// Identity written, local boot set: the host reboots now.
    Done,
    /// Imaging failed (the imager has wiped the partition table).
    Failed {
        /// Where.
        stage: FailureStage,
        /// Why.
        reason: String,
    },
}

/// Body of `POST /api/v1/machine/enrol`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// Hostname the installed system runs under.
    pub hostname: String,
    /// `/etc/machine-id` of the installed system.
    pub machine_id: String,
}

/// Response of `POST /api/v1/machine/enrol`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnrolResponse {
    /// The enrolled host.
    pub host: HostId,
}

/// Error body of every non-2xx response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable kind (`not_found`, `conflict`, `unauthorized`, `bad_request`, `internal`).
    pub error: String,
    /// Human-readable message.
    pub message: String,
    /// Request id to find the server's log lines (5xx only).
    #[serde(default)]
    pub request_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        assert!("debian-bookworm-server".parse::<ImageName>().is_ok());
        assert!("a.b_c-1".parse::<ImageName>().is_ok());
        for bad in ["", "-x", "Upper", "a/b", "..", &"x".repeat(65)] {
            assert!(bad.parse::<ImageName>().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<ImageName>("\"../etc\"").is_err());
    }

    #[test]
    fn timestamp_display() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Timestamp(1_795_837_734_000).to_string(),
            "2026-11-28T03:48:54Z"
        );
        assert_eq!(
            Timestamp(951_782_400_000).to_string(),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn state_json_is_tagged() {
        let s = HostState::Deploying {
            plan: DeployPlan {
                image: "img".parse().unwrap(),
                hostname: "node-1".into(),
                disk: "vda".into(),
            },
            phase: DeployPhase::Writing,
            progress: Progress { done: 1, total: 4 },
        };
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["state"], "deploying");
        assert_eq!(j["phase"], "writing");
        assert_eq!(serde_json::from_value::<HostState>(j).unwrap(), s);
    }

    #[test]
    fn deploy_instructions_debug_redacts_secret() {
        let d = DeployInstructions {
            plan: DeployPlan {
                image: "img".parse().unwrap(),
                hostname: "h".into(),
                disk: "vda".into(),
            },
            artifacts: vec![],
            artifact_base: "/images/img/".into(),
            enrol_secret: "s3cr3t".into(),
            ssh_authorized_keys: vec![],
        };
        assert!(!format!("{d:?}").contains("s3cr3t"));
    }
}
