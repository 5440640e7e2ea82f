//! The inventory store: hosts, hardware inventories, images, rules, the event log and hashed
//! per-host secrets, behind the [`Store`] trait. [`SqliteStore`] is the embedded default.

mod sqlite;

pub use sqlite::{SqliteStore, StoreError};

use crate::api::{
    Event, EventSeq, HardwareInventory, HostId, HostState, HostSummary, ImageInfo, ImageName,
    MacAddr, NewRule, Rule, RuleId, Timestamp,
};
use crate::secret::SecretHash;

/// What a per-host secret authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretKind {
    /// The imager in the deploy ramdisk (from the host's iPXE script).
    Imager,
    /// The installed system's one-time enrolment.
    Enrol,
}

impl SecretKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SecretKind::Imager => "imager",
            SecretKind::Enrol => "enrol",
        }
    }
}

/// Outcome of [`Store::compare_and_swap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The state was written; the host record after the write and the logged event.
    Swapped(Box<HostSummary>, Box<Event>),
    /// The host's generation was not the expected one (a concurrent transition won).
    Stale,
    /// The host no longer exists.
    Missing,
}

/// Persistent inventory. Every method is one transaction: after a crash, each call either
/// happened completely or not at all.
///
/// Methods block; async callers run them on a blocking thread.
pub trait Store: Send + Sync + 'static {
    /// The backend's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The host with this MAC, created in `discovered` (generation 0) if it is new; `true` when
    /// it was created.
    fn upsert_host_by_mac(
        &self,
        mac: MacAddr,
        now: Timestamp,
    ) -> Result<(HostSummary, bool), Self::Error>;
    /// One host.
    fn host(&self, id: HostId) -> Result<Option<HostSummary>, Self::Error>;
    /// The host with this MAC.
    fn host_by_mac(&self, mac: MacAddr) -> Result<Option<HostSummary>, Self::Error>;
    /// Every host, oldest first.
    fn hosts(&self) -> Result<Vec<HostSummary>, Self::Error>;
    /// Deletes a host with its inventory and secrets and logs a `deleted` event; `None` if it
    /// did not exist.
    fn delete_host(&self, id: HostId, now: Timestamp) -> Result<Option<Event>, Self::Error>;
    /// Writes `state` with generation `expected + 1` if the host's generation is `expected`,
    /// and appends the event to the log, in one transaction.
    fn compare_and_swap(
        &self,
        id: HostId,
        expected: u64,
        state: &HostState,
        event: &str,
        now: Timestamp,
    ) -> Result<CasOutcome, Self::Error>;

    /// Stores a host's hardware inventory (replacing an earlier one).
    fn put_inventory(
        &self,
        id: HostId,
        inv: &HardwareInventory,
        now: Timestamp,
    ) -> Result<(), Self::Error>;
    /// A host's hardware inventory.
    fn inventory(&self, id: HostId) -> Result<Option<HardwareInventory>, Self::Error>;

    /// Records an imported image; `false` if the name is taken.
    fn insert_image(&self, image: &ImageInfo) -> Result<bool, Self::Error>;
    /// Every image, by name.
    fn images(&self) -> Result<Vec<ImageInfo>, Self::Error>;
    /// One image.
    fn image(&self, name: &ImageName) -> Result<Option<ImageInfo>, Self::Error>;

    /// Appends a rule (it is tried after every existing one).
    fn add_rule(&self, rule: &NewRule) -> Result<Rule, Self::Error>;
    /// Every rule, in evaluation order.
    fn rules(&self) -> Result<Vec<Rule>, Self::Error>;
    /// Deletes a rule; `false` if it did not exist.
    fn delete_rule(&self, id: RuleId) -> Result<bool, Self::Error>;

    /// Up to `limit` events after `after` (oldest first), optionally only one host's.
    fn events(
        &self,
        after: Option<EventSeq>,
        host: Option<HostId>,
        limit: u32,
    ) -> Result<Vec<Event>, Self::Error>;

    /// Sets (or replaces) the host's secret of this kind.
    fn set_secret(
        &self,
        host: HostId,
        kind: SecretKind,
        hash: &SecretHash,
        now: Timestamp,
    ) -> Result<(), Self::Error>;
    /// The host owning a secret of this kind with this hash.
    fn secret_owner(
        &self,
        kind: SecretKind,
        hash: &SecretHash,
    ) -> Result<Option<HostId>, Self::Error>;
    /// Deletes every secret of a host.
    fn revoke_secrets(&self, host: HostId) -> Result<(), Self::Error>;
}
