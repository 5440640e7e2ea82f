//! The lifecycle driver and the operations behind every API endpoint.
//!
//! [`Control`] feeds [`HostEvent`]s through [`lifecycle::step`], persists the new state with a
//! compare-and-swap on the host's generation (retrying when a concurrent transition won), then
//! runs the effects. Effects are idempotent, and [`Control::recover`] re-runs the one that can be
//! interrupted by a crash (rule evaluation), so a kill -9 at any point loses nothing.

use std::sync::Arc;

use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use crate::api::{
    DeployInstructions, DeployPhase, DeployPlan, DeployRequest, DiskSelector, EnrolRequest,
    EnrolResponse, Event, EventSeq, HostDetail, HostId, HostState, HostSummary, ImageInfo,
    ImageName, ImagingResult, ImportImageRequest, MacAddr, MachinePlan, NewRule, ProgressReport,
    RedeployRequest, Rule, RuleId, Timestamp,
};
use crate::images::{ImageError, ImageStore};
use crate::lifecycle::{self, Effect, HostEvent, InvalidTransition};
use crate::rules::{self, PatternError};
use crate::secret::Secret;
use crate::store::{CasOutcome, SecretKind, Store};

/// How many times a transition is retried when concurrent transitions keep winning.
const CAS_ATTEMPTS: usize = 16;

/// How long the imager should wait before asking for its plan again.
const WAIT_SECS: u32 = 5;

/// Errors of control-node operations.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No host matches the reference.
    #[error("host {host} not found")]
    HostNotFound {
        /// The id, MAC or hostname asked for.
        host: String,
    },
    /// No such image.
    #[error("image {name} not found")]
    ImageNotFound {
        /// The image.
        name: ImageName,
    },
    /// No such rule.
    #[error("rule {id} not found")]
    RuleNotFound {
        /// The rule.
        id: RuleId,
    },
    /// An image of that name exists.
    #[error("image {name} already exists")]
    ImageExists {
        /// The image.
        name: ImageName,
    },
    /// The host's state does not allow this.
    #[error("host {host} cannot take this request now")]
    Transition {
        /// The host.
        host: HostId,
        /// Why.
        #[source]
        err: InvalidTransition,
    },
    /// Concurrent transitions kept winning.
    #[error("host {host} is changing too fast to update")]
    Contended {
        /// The host.
        host: HostId,
    },
    /// The host has no inventory yet, so there is no disk to choose.
    #[error("host {host} has no hardware inventory yet")]
    NoInventory {
        /// The host.
        host: HostId,
    },
    /// The requested disk is not in the host's inventory.
    #[error("host {host} has no disk {disk}")]
    NoDisk {
        /// The host.
        host: HostId,
        /// The disk asked for.
        disk: String,
    },
    /// A hostname (pattern) is invalid.
    #[error("invalid hostname")]
    Hostname {
        /// Why.
        #[source]
        err: PatternError,
    },
    /// The image import failed (bad manifest, checksum mismatch...).
    #[error("image import from `{dir}` failed")]
    Import {
        /// The directory.
        dir: String,
        /// Why.
        #[source]
        err: ImageError,
    },
    /// The inventory store failed.
    #[error("inventory store failed")]
    Store {
        /// Why.
        #[source]
        err: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A blocking task panicked or was cancelled.
    #[error("blocking task failed")]
    Join {
        /// Why.
        #[source]
        err: tokio::task::JoinError,
    },
}

impl ControlError {
    /// Whether the error is the client's (a 4xx) rather than the server's.
    pub fn is_client_error(&self) -> bool {
        match self {
            ControlError::HostNotFound { .. }
            | ControlError::ImageNotFound { .. }
            | ControlError::RuleNotFound { .. }
            | ControlError::ImageExists { .. }
            | ControlError::Transition { .. }
            | ControlError::Contended { .. }
            | ControlError::NoInventory { .. }
            | ControlError::NoDisk { .. }
            | ControlError::Hostname { .. } => true,
            ControlError::Import { err, .. } => !matches!(err, ImageError::Store { .. }),
            ControlError::Store { .. } | ControlError::Join { .. } => false,
        }
    }
}

/// How to answer a host's PXE boot (rendered into its iPXE script by the HTTP boot service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDirective {
    /// Boot the deploy ramdisk; the imager authenticates with this one-time secret.
    Ramdisk {
        /// The host.
        host: HostId,
        /// Fresh imager secret (replaces any earlier one).
        imager_secret: Secret,
    },
    /// Boot from the local disk.
    LocalDisk {
        /// The host.
        host: HostId,
    },
}

struct Inner<S> {
    store: Arc<S>,
    images: ImageStore,
    ssh_authorized_keys: Vec<String>,
    events: broadcast::Sender<Event>,
    import_lock: tokio::sync::Mutex<()>,
}

/// The control node's operations over a [`Store`] and an [`ImageStore`]. Cheap to clone.
pub struct Control<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Control<S> {
    fn clone(&self) -> Self {
        Control {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S> std::fmt::Debug for Control<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("images", &self.inner.images)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Control<S> {
    /// A controller over `store`, with images under `images`.
    pub fn new(store: S, images: ImageStore) -> Self {
        Control::with_ssh_keys(store, images, Vec::new())
    }

    /// [`Control::new`], installing `ssh_authorized_keys` for `root` on every deployed host.
    pub fn with_ssh_keys(store: S, images: ImageStore, ssh_authorized_keys: Vec<String>) -> Self {
        let (events, _) = broadcast::channel(1024);
        Control {
            inner: Arc::new(Inner {
                store: Arc::new(store),
                images,
                ssh_authorized_keys,
                events,
                import_lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The image store.
    pub fn images_store(&self) -> &ImageStore {
        &self.inner.images
    }

    async fn db<T, F>(&self, f: F) -> Result<T, ControlError>
    where
        T: Send + 'static,
        F: FnOnce(&S) -> Result<T, S::Error> + Send + 'static,
    {
        let store = Arc::clone(&self.inner.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|err| ControlError::Join { err })?
            .map_err(|err| ControlError::Store { err: Box::new(err) })
    }

    fn publish(&self, ev: Event) {
        // No subscribers is fine: the event is in the log.
        let _ = self.inner.events.send(ev);
    }

    /// Subscribes to new events (use [`Control::events`] for the backlog).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Applies one event with compare-and-swap; returns the host after it and the effects.
    async fn apply(
        &self,
        id: HostId,
        ev: &HostEvent,
    ) -> Result<(HostSummary, Vec<Effect>), ControlError> {
        for _ in 0..CAS_ATTEMPTS {
            let host = self.host_by_id(id).await?;
            let (next, effects) = lifecycle::step(&host.state, ev).map_err(|err| {
                debug!(host = %id, from = %err.from, event = err.event, "invalid transition");
                ControlError::Transition { host: id, err }
            })?;
            let name = ev.name();
            let generation = host.generation;
            let outcome = self
                .db(move |s| s.compare_and_swap(id, generation, &next, name, Timestamp::now()))
                .await?;
            match outcome {
                CasOutcome::Swapped(host, event) => {
                    info!(
                        host = %id,
                        event = name,
                        from = ?event.from,
                        to = ?event.to,
                        generation = host.generation,
                        "host transition"
                    );
                    self.publish(*event);
                    return Ok((*host, effects));
                }
                CasOutcome::Stale => {
                    tokio::task::yield_now().await;
                    continue;
                }
                CasOutcome::Missing => {
                    return Err(ControlError::HostNotFound {
                        host: id.to_string(),
                    });
                }
            }
        }
        Err(ControlError::Contended { host: id })
    }

    /// Applies an event and runs its effects, feeding follow-up events (rule outcomes) back in.
    async fn drive(
        &self,
        id: HostId,
        ev: HostEvent,
    ) -> Result<(HostSummary, Option<BootDirective>), ControlError> {
        let mut next = Some(ev);
        let mut directive = None;
        let mut last = None;
        while let Some(ev) = next.take() {
            let (host, effects) = self.apply(id, &ev).await?;
            for effect in effects {
                match effect {
                    Effect::BootRamdisk => {
                        let secret = Secret::generate();
                        let hash = secret.hash();
                        self.db(move |s| {
                            s.set_secret(id, SecretKind::Imager, &hash, Timestamp::now())
                        })
                        .await?;
                        directive = Some(BootDirective::Ramdisk {
                            host: id,
                            imager_secret: secret,
                        });
                    }
                    Effect::BootLocalDisk => {
                        directive = Some(BootDirective::LocalDisk { host: id })
                    }
                    Effect::EvaluateRules => next = Some(self.evaluate_rules(&host).await?),
                    Effect::RevokeSecrets => self.db(move |s| s.revoke_secrets(id)).await?,
                }
            }
            last = Some(host);
        }
        let host = last.expect("invariant: the loop ran at least once");
        Ok((host, directive))
    }

    async fn evaluate_rules(&self, host: &HostSummary) -> Result<HostEvent, ControlError> {
        let id = host.id;
        let (rules, inv) = self.db(move |s| Ok((s.rules()?, s.inventory(id)?))).await?;
        let Some(inv) = inv else {
            return Err(ControlError::NoInventory { host: id });
        };
        Ok(match rules::evaluate(&rules, &inv, host.mac) {
            Some((rule, plan)) => {
                info!(host = %id, %rule, image = %plan.image, hostname = %plan.hostname, "rule matched");
                HostEvent::RuleMatched(plan)
            }
            None => {
                info!(host = %id, "no rule matched");
                HostEvent::NoRuleMatched
            }
        })
    }

    /// Re-runs effects a crash may have interrupted: hosts left in `inspected` get their rules
    /// evaluated. Call once at startup.
    pub async fn recover(&self) -> Result<(), ControlError> {
        for host in self.db(|s| s.hosts()).await? {
            if host.state == HostState::Inspected {
                let ev = self.evaluate_rules(&host).await?;
                if let Err(err) = self.drive(host.id, ev).await {
                    warn!(host = %host.id, error = %common::ErrorChain(&err), "recovery failed");
                }
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Machine-facing

    /// A host PXE-booted: creates it (`discovered`) if its MAC is new, and says what to boot.
    pub async fn pxe_boot(&self, mac: MacAddr) -> Result<BootDirective, ControlError> {
        let (host, created) = self
            .db(move |s| s.upsert_host_by_mac(mac, Timestamp::now()))
            .await?;
        if created {
            info!(host = %host.id, %mac, "host discovered");
            let id = host.id;
            if let Some(ev) = self.db(move |s| s.events(None, Some(id), 1)).await?.pop() {
                self.publish(ev);
            }
        }
        let (_, directive) = self.drive(host.id, HostEvent::PxeBoot).await?;
        Ok(directive.expect("invariant: every pxe_boot transition answers with a boot effect"))
    }

    /// The host a secret of this kind belongs to.
    pub async fn authenticate(
        &self,
        kind: SecretKind,
        secret: &Secret,
    ) -> Result<Option<HostId>, ControlError> {
        let hash = secret.hash();
        self.db(move |s| s.secret_owner(kind, &hash)).await
    }

    /// The imager posted its host's hardware inventory.
    pub async fn post_inventory(
        &self,
        id: HostId,
        inv: crate::api::HardwareInventory,
    ) -> Result<HostSummary, ControlError> {
        self.db(move |s| s.put_inventory(id, &inv, Timestamp::now()))
            .await?;
        Ok(self.drive(id, HostEvent::InventoryPosted).await?.0)
    }

    /// What the imager should do now. A deploy plan carries a fresh enrolment secret.
    pub async fn machine_plan(&self, id: HostId) -> Result<MachinePlan, ControlError> {
        let host = self.host_by_id(id).await?;
        Ok(match host.state {
            HostState::Discovered => MachinePlan::Inventory,
            HostState::Inspected | HostState::Ready | HostState::Failed { .. } => {
                MachinePlan::Wait {
                    retry_after_secs: WAIT_SECS,
                }
            }
            HostState::Deploying {
                phase: DeployPhase::Rebooting,
                ..
            }
            | HostState::Deployed { .. } => MachinePlan::BootLocal,
            HostState::Deploying { plan, .. } => {
                let image = self.image_info(&plan.image).await?;
                let secret = Secret::generate();
                let hash = secret.hash();
                self.db(move |s| s.set_secret(id, SecretKind::Enrol, &hash, Timestamp::now()))
                    .await?;
                MachinePlan::Deploy(DeployInstructions {
                    artifact_base: format!("/images/{}/", plan.image),
                    plan,
                    artifacts: image.artifacts,
                    enrol_secret: secret.expose().to_owned(),
                    ssh_authorized_keys: self.inner.ssh_authorized_keys.clone(),
                })
            }
        })
    }

    /// The imager reported progress.
    pub async fn report_progress(
        &self,
        id: HostId,
        report: ProgressReport,
    ) -> Result<HostSummary, ControlError> {
        let ev = HostEvent::Progress(report.phase, report.progress);
        Ok(self.drive(id, ev).await?.0)
    }

    /// The imager reported a result.
    pub async fn report_result(
        &self,
        id: HostId,
        result: ImagingResult,
    ) -> Result<HostSummary, ControlError> {
        let ev = match result {
            ImagingResult::Verified => HostEvent::Verified,
            ImagingResult::Done => HostEvent::ImagingDone,
            ImagingResult::Failed { stage, reason } => {
                warn!(host = %id, %stage, %reason, "imaging failed");
                HostEvent::ImagingFailed { stage, reason }
            }
        };
        Ok(self.drive(id, ev).await?.0)
    }

    /// The installed system enrolled with its one-time secret; `None` if the secret is unknown.
    pub async fn enrol(
        &self,
        secret: &Secret,
        req: EnrolRequest,
    ) -> Result<Option<EnrolResponse>, ControlError> {
        let Some(id) = self.authenticate(SecretKind::Enrol, secret).await? else {
            return Ok(None);
        };
        let (host, _) = self.drive(id, HostEvent::Enrolled).await?;
        if host.hostname.as_deref() != Some(req.hostname.as_str()) {
            warn!(host = %id, reported = %req.hostname, "enrolled with an unexpected hostname");
        }
        info!(host = %id, hostname = %req.hostname, machine_id = %req.machine_id, "host enrolled");
        Ok(Some(EnrolResponse { host: id }))
    }

    // -----------------------------------------------------------------------------------------
    // Operator-facing

    /// The host with this id.
    pub async fn host_by_id(&self, id: HostId) -> Result<HostSummary, ControlError> {
        self.db(move |s| s.host(id))
            .await?
            .ok_or_else(|| ControlError::HostNotFound {
                host: id.to_string(),
            })
    }

    /// Finds a host by id, MAC or hostname.
    pub async fn resolve(&self, host: &str) -> Result<HostSummary, ControlError> {
        let not_found = || ControlError::HostNotFound {
            host: host.to_owned(),
        };
        if let Ok(id) = host.parse::<HostId>() {
            return self.db(move |s| s.host(id)).await?.ok_or_else(not_found);
        }
        if let Ok(mac) = host.parse::<MacAddr>() {
            return self
                .db(move |s| s.host_by_mac(mac))
                .await?
                .ok_or_else(not_found);
        }
        self.hosts()
            .await?
            .into_iter()
            .find(|h| h.hostname.as_deref() == Some(host))
            .ok_or_else(not_found)
    }

    /// Every host.
    pub async fn hosts(&self) -> Result<Vec<HostSummary>, ControlError> {
        self.db(|s| s.hosts()).await
    }

    /// One host with its inventory.
    pub async fn host(&self, host: &str) -> Result<HostDetail, ControlError> {
        let host = self.resolve(host).await?;
        let id = host.id;
        let inventory = self.db(move |s| s.inventory(id)).await?;
        Ok(HostDetail { host, inventory })
    }

    async fn image_info(&self, name: &ImageName) -> Result<ImageInfo, ControlError> {
        let n = name.clone();
        self.db(move |s| s.image(&n))
            .await?
            .ok_or_else(|| ControlError::ImageNotFound { name: name.clone() })
    }

    /// Deploys an image on a host that is inspected, ready or failed.
    pub async fn deploy(
        &self,
        host: &str,
        req: DeployRequest,
    ) -> Result<HostSummary, ControlError> {
        let host = self.resolve(host).await?;
        self.image_info(&req.image).await?;
        let id = host.id;
        let inv = self
            .db(move |s| s.inventory(id))
            .await?
            .ok_or(ControlError::NoInventory { host: id })?;
        let disk = match req.disk {
            Some(d) => rules::select_disk(&DiskSelector::Name(d.clone()), &inv)
                .ok_or(ControlError::NoDisk { host: id, disk: d })?,
            None => rules::select_disk(&DiskSelector::First, &inv).ok_or(ControlError::NoDisk {
                host: id,
                disk: "(any)".into(),
            })?,
        };
        let pattern = req.hostname.unwrap_or_else(|| {
            if inv.serial.as_deref().is_some_and(|s| !s.trim().is_empty()) {
                "node-{serial}".into()
            } else {
                "node-{mac}".into()
            }
        });
        let hostname = rules::render_hostname(&pattern, &inv, host.mac)
            .map_err(|err| ControlError::Hostname { err })?;
        let plan = DeployPlan {
            image: req.image,
            hostname,
            disk,
        };
        Ok(self.drive(id, HostEvent::DeployRequested(plan)).await?.0)
    }

    /// Redeploys a deployed host (same plan, or another image); its next PXE boot gets the
    /// deploy ramdisk instead of the local disk.
    pub async fn redeploy(
        &self,
        host: &str,
        req: RedeployRequest,
    ) -> Result<HostSummary, ControlError> {
        let host = self.resolve(host).await?;
        let HostState::Deployed { plan } = &host.state else {
            return Err(ControlError::Transition {
                host: host.id,
                err: InvalidTransition {
                    from: host.state.name(),
                    event: "redeploy_requested",
                },
            });
        };
        let mut plan = plan.clone();
        if let Some(image) = req.image {
            self.image_info(&image).await?;
            plan.image = image;
        }
        Ok(self
            .drive(host.id, HostEvent::RedeployRequested(plan))
            .await?
            .0)
    }

    /// Retries a failed host.
    pub async fn retry(&self, host: &str) -> Result<HostSummary, ControlError> {
        let host = self.resolve(host).await?;
        Ok(self.drive(host.id, HostEvent::RetryRequested).await?.0)
    }

    /// Deletes a host, its inventory and its secrets.
    pub async fn delete(&self, host: &str) -> Result<(), ControlError> {
        let host = self.resolve(host).await?;
        let id = host.id;
        match self
            .db(move |s| s.delete_host(id, Timestamp::now()))
            .await?
        {
            Some(ev) => {
                info!(host = %id, "host deleted");
                self.publish(ev);
                Ok(())
            }
            None => Err(ControlError::HostNotFound {
                host: id.to_string(),
            }),
        }
    }

    /// Every image.
    pub async fn images(&self) -> Result<Vec<ImageInfo>, ControlError> {
        self.db(|s| s.images()).await
    }

    /// Imports an image directory after verifying every artifact's size and SHA-256.
    pub async fn import_image(&self, req: ImportImageRequest) -> Result<ImageInfo, ControlError> {
        // One import at a time, so two imports of one name cannot interleave their copies.
        let _guard = self.inner.import_lock.lock().await;
        let dir = std::path::PathBuf::from(&req.dir);
        let import_err = |err| ControlError::Import {
            dir: req.dir.clone(),
            err,
        };
        let images = self.inner.images.clone();
        let (d, n) = (dir.clone(), req.name.clone());
        let (name, artifacts) = tokio::task::spawn_blocking(move || images.read_manifest(&d, n))
            .await
            .map_err(|err| ControlError::Join { err })?
            .map_err(import_err)?;
        let n = name.clone();
        if self.db(move |s| s.image(&n)).await?.is_some() {
            return Err(ControlError::ImageExists { name });
        }
        let images = self.inner.images.clone();
        let info = tokio::task::spawn_blocking(move || {
            images.install(&dir, &name, &artifacts, Timestamp::now())
        })
        .await
        .map_err(|err| ControlError::Join { err })?
        .map_err(import_err)?;
        let i = info.clone();
        if !self.db(move |s| s.insert_image(&i)).await? {
            return Err(ControlError::ImageExists { name: info.name });
        }
        info!(image = %info.name, artifacts = info.artifacts.len(), "image imported");
        Ok(info)
    }

    /// Every rule, in evaluation order.
    pub async fn rules(&self) -> Result<Vec<Rule>, ControlError> {
        self.db(|s| s.rules()).await
    }

    /// Appends a rule after checking its image exists and its hostname pattern renders.
    pub async fn add_rule(&self, rule: NewRule) -> Result<Rule, ControlError> {
        rules::check_pattern(&rule.hostname).map_err(|err| ControlError::Hostname { err })?;
        self.image_info(&rule.image).await?;
        let rule = self.db(move |s| s.add_rule(&rule)).await?;
        info!(rule = %rule.id, image = %rule.rule.image, "rule added");
        Ok(rule)
    }

    /// Deletes a rule.
    pub async fn delete_rule(&self, id: RuleId) -> Result<(), ControlError> {
        if self.db(move |s| s.delete_rule(id)).await? {
            info!(rule = %id, "rule deleted");
            Ok(())
        } else {
            Err(ControlError::RuleNotFound { id })
        }
    }

    /// Events after `after`, optionally one host's.
    pub async fn events(
        &self,
        after: Option<EventSeq>,
        host: Option<HostId>,
        limit: u32,
    ) -> Result<Vec<Event>, ControlError> {
        self.db(move |s| s.events(after, host, limit)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NewRule;
    use crate::store::SqliteStore;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x64, 0, 9]);

    fn control(dir: &std::path::Path) -> Control<SqliteStore> {
        let store = SqliteStore::open(&dir.join("inventory.db")).unwrap();
        Control::new(store, ImageStore::new(dir.join("images")))
    }

    async fn with_image_and_rule(c: &Control<SqliteStore>, dir: &std::path::Path) {
        let src = dir.join("build");
        crate::images::tests::make_image_dir(&src, "golden", &[("disk.raw", b"x")]);
        c.import_image(ImportImageRequest {
            dir: src.to_str().unwrap().into(),
            name: None,
        })
        .await
        .unwrap();
        c.add_rule(NewRule {
            matches: Default::default(),
            image: "golden".parse().unwrap(),
            hostname: "node-{serial}".into(),
            disk: DiskSelector::First,
        })
        .await
        .unwrap();
    }

    /// A crash between persisting `inspected` and evaluating the rules is repaired at startup.
    #[tokio::test]
    async fn recover_evaluates_rules_left_pending_by_a_crash() {
        let tmp = tempfile::tempdir().unwrap();
        let c = control(tmp.path());
        with_image_and_rule(&c, tmp.path()).await;
        let BootDirective::Ramdisk { host, .. } = c.pxe_boot(MAC).await.unwrap() else {
            panic!("a new host boots the ramdisk");
        };
        // What the driver had persisted when the process died: inventory and `inspected`.
        let inv = rules::tests::inventory();
        let store = SqliteStore::open(&tmp.path().join("inventory.db")).unwrap();
        store.put_inventory(host, &inv, Timestamp(1)).unwrap();
        let generation = store.host(host).unwrap().unwrap().generation;
        store
            .compare_and_swap(
                host,
                generation,
                &HostState::Inspected,
                "inventory_posted",
                Timestamp(2),
            )
            .unwrap();
        drop(c);

        let c = control(tmp.path());
        c.recover().await.unwrap();
        let h = c.resolve(&MAC.to_string()).await.unwrap();
        assert!(
            matches!(&h.state, HostState::Deploying { plan, phase: DeployPhase::Pending, .. } if plan.hostname == "node-sn-0042"),
            "{:?}",
            h.state
        );
    }

    /// Concurrent reports for one host are serialised by the compare-and-swap: every accepted
    /// event bumps the generation exactly once and is logged exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_transitions_are_serialised() {
        let tmp = tempfile::tempdir().unwrap();
        let c = control(tmp.path());
        with_image_and_rule(&c, tmp.path()).await;
        c.pxe_boot(MAC).await.unwrap();
        let h = c.resolve(&MAC.to_string()).await.unwrap();
        c.post_inventory(h.id, rules::tests::inventory())
            .await
            .unwrap();
        let before = c.resolve(&MAC.to_string()).await.unwrap().generation;
        let tasks: Vec<_> = (0..20u64)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    let report = ProgressReport {
                        phase: DeployPhase::Writing,
                        progress: crate::api::Progress { done: i, total: 20 },
                    };
                    c.report_progress(h.id, report).await
                })
            })
            .collect();
        let mut accepted = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => accepted += 1,
                // Losing the race too many times in a row is reported, never half-applied.
                Err(ControlError::Contended { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert!(accepted > 0);
        let after = c.resolve(&MAC.to_string()).await.unwrap().generation;
        assert_eq!(after, before + accepted);
        let progress_events = c
            .events(None, Some(h.id), 1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.event == "progress")
            .count();
        assert_eq!(progress_events as u64, accepted);
    }
}
