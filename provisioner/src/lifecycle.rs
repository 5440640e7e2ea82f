//! The host lifecycle state machine: a pure transition function over [`HostState`].
//!
//! ```text
//!            pxe_boot (unknown MAC)
//!                   │
//!                   ▼
//!             ┌──────────┐ inventory_posted ┌───────────┐ no_rule_matched ┌───────┐
//!             │discovered├─────────────────►│ inspected ├────────────────►│ ready │
//!             └──────────┘                  └─────┬─────┘                 └───┬───┘
//!                   ▲                rule_matched │ deploy_requested          │ deploy_requested
//!                   │ retry (no plan)             ▼                           │
//!                   │                ┌─────────────────────────────┐◄─────────┘
//!                   │                │ deploying                   │
//!                   │    ┌───────────┤  pending → writing →        │◄── redeploy_requested ──┐
//!                   │    │  failed   │  verifying → (verified)     │                         │
//!             ┌─────┴────▼┐          │  finalizing → (done)        │                         │
//!             │  failed   │◄─────────┤  rebooting                  │                    ┌────┴─────┐
//!             └─────┬─────┘          └──────────────┬──────────────┘    enrolled        │ deployed │
//!                   │ retry (plan) / deploy ───────►▲               └──────────────────►└──────────┘
//! ```
//!
//! A PXE boot is answered by an effect: [`Effect::BootRamdisk`] everywhere except for a
//! deployed host or one rebooting into its freshly written disk, which get
//! [`Effect::BootLocalDisk`]. A redeploy moves a deployed host back to `deploying/pending`, so
//! its next PXE boot gets the ramdisk again. `deploying/rebooting` is only reachable through
//! `verified` then `imaging_done`: an unverified write can never become `deployed`.
//!
//! The driver (`Control`) persists the new state with a compare-and-swap on the host's
//! generation and then runs the effects, which are idempotent.

use crate::api::{DeployPhase, DeployPlan, FailureStage, HostState, Progress, StateName};

/// Something that happened to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// The host PXE-booted (asked for its iPXE script).
    PxeBoot,
    /// The imager posted the hardware inventory.
    InventoryPosted,
    /// A deployment rule matched the inventory.
    RuleMatched(DeployPlan),
    /// No deployment rule matched the inventory.
    NoRuleMatched,
    /// An operator asked to deploy an image.
    DeployRequested(DeployPlan),
    /// An operator asked to redeploy a deployed host.
    RedeployRequested(DeployPlan),
    /// An operator asked to retry a failed host.
    RetryRequested,
    /// The imager reported progress.
    Progress(DeployPhase, Progress),
    /// The imager read the disk back and it matches the checksum.
    Verified,
    /// The imager finished (identity written, local boot set) and reboots the host.
    ImagingDone,
    /// The imager failed.
    ImagingFailed {
        /// Where.
        stage: FailureStage,
        /// Why.
        reason: String,
    },
    /// The installed system enrolled with its one-time secret.
    Enrolled,
}

impl HostEvent {
    /// The event's name in the event log.
    pub fn name(&self) -> &'static str {
        match self {
            HostEvent::PxeBoot => "pxe_boot",
            HostEvent::InventoryPosted => "inventory_posted",
            HostEvent::RuleMatched(_) => "rule_matched",
            HostEvent::NoRuleMatched => "no_rule_matched",
            HostEvent::DeployRequested(_) => "deploy_requested",
            HostEvent::RedeployRequested(_) => "redeploy_requested",
            HostEvent::RetryRequested => "retry_requested",
            HostEvent::Progress(..) => "progress",
            HostEvent::Verified => "verified",
            HostEvent::ImagingDone => "imaging_done",
            HostEvent::ImagingFailed { .. } => "imaging_failed",
            HostEvent::Enrolled => "enrolled",
        }
    }
}

/// Work the driver does after persisting a transition. Every effect is idempotent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Answer the PXE boot with the deploy ramdisk, carrying a fresh imager secret.
    BootRamdisk,
    /// Answer the PXE boot with "boot from the local disk".
    BootLocalDisk,
    /// Evaluate the deployment rules against the inventory and feed back the outcome.
    EvaluateRules,
    /// Revoke the host's imager and enrolment secrets.
    RevokeSecrets,
}

/// An event that is not valid in the host's current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event} is not valid in state {from}")]
pub struct InvalidTransition {
    /// The state the host was in.
    pub from: StateName,
    /// The event's name.
    pub event: &'static str,
}

fn deploying(plan: &DeployPlan, phase: DeployPhase, progress: Progress) -> HostState {
    HostState::Deploying {
        plan: plan.clone(),
        phase,
        progress,
    }
}

fn pending(plan: &DeployPlan) -> HostState {
    deploying(plan, DeployPhase::Pending, Progress::default())
}

/// The transition function: the next state and the effects to run, or why the event is invalid.
pub fn step(s: &HostState, ev: &HostEvent) -> Result<(HostState, Vec<Effect>), InvalidTransition> {
    use DeployPhase as P;
    use HostEvent as E;
    use HostState as S;
    let invalid = || InvalidTransition {
        from: s.name(),
        event: ev.name(),
    };
    let to = |state: HostState, effects: &[Effect]| Ok((state, effects.to_vec()));
    match (s, ev) {
        // PXE boots: the ramdisk, except when the disk holds the deployed image.
        (S::Discovered | S::Inspected | S::Ready | S::Failed { .. }, E::PxeBoot) => {
            to(s.clone(), &[Effect::BootRamdisk])
        }
        (S::Deployed { .. }, E::PxeBoot) => to(s.clone(), &[Effect::BootLocalDisk]),
        (
            S::Deploying {
                phase: P::Rebooting,
                ..
            },
            E::PxeBoot,
        ) => to(s.clone(), &[Effect::BootLocalDisk]),
        // The ramdisk (re)started mid-deploy: it starts the write over.
        (S::Deploying { plan, .. }, E::PxeBoot) => to(pending(plan), &[Effect::BootRamdisk]),

        // Inventory.
        (S::Discovered | S::Inspected | S::Ready, E::InventoryPosted) => {
            to(S::Inspected, &[Effect::EvaluateRules])
        }
        (
            S::Deploying {
                phase: P::Pending, ..
            }
            | S::Failed { .. },
            E::InventoryPosted,
        ) => to(s.clone(), &[]),
        (S::Deploying { .. } | S::Deployed { .. }, E::InventoryPosted) => Err(invalid()),

        // Rules.
        (S::Inspected, E::RuleMatched(plan)) => to(pending(plan), &[]),
        (S::Inspected, E::NoRuleMatched) => to(S::Ready, &[]),
        (
            S::Discovered | S::Ready | S::Deploying { .. } | S::Deployed { .. } | S::Failed { .. },
            E::RuleMatched(_) | E::NoRuleMatched,
        ) => Err(invalid()),

        // Operator commands.
        (S::Inspected | S::Ready | S::Failed { .. }, E::DeployRequested(plan)) => {
            to(pending(plan), &[])
        }
        (S::Discovered | S::Deploying { .. } | S::Deployed { .. }, E::DeployRequested(_)) => {
            Err(invalid())
        }
        (S::Deployed { .. }, E::RedeployRequested(plan)) => to(pending(plan), &[]),
        (
            S::Discovered | S::Inspected | S::Ready | S::Deploying { .. } | S::Failed { .. },
            E::RedeployRequested(_),
        ) => Err(invalid()),
        (
            S::Failed {
                plan: Some(plan), ..
            },
            E::RetryRequested,
        ) => to(pending(plan), &[]),
        (S::Failed { plan: None, .. }, E::RetryRequested) => to(S::Discovered, &[]),
        (
            S::Discovered | S::Inspected | S::Ready | S::Deploying { .. } | S::Deployed { .. },
            E::RetryRequested,
        ) => Err(invalid()),

        // Imager reports.
        (
            S::Deploying { plan, phase, .. },
            E::Progress(new @ (P::Writing | P::Verifying | P::Finalizing), progress),
        ) => match (phase, new) {
            // Phases only move forward, and `finalizing` is only entered through `verified`.
            (P::Pending | P::Writing, P::Writing)
            | (P::Writing | P::Verifying, P::Verifying)
            | (P::Finalizing, P::Finalizing) => to(deploying(plan, *new, *progress), &[]),
            (P::Pending, P::Verifying | P::Finalizing)
            | (P::Writing | P::Verifying, P::Finalizing)
            | (P::Verifying | P::Finalizing, P::Writing)
            | (P::Finalizing, P::Verifying)
            | (P::Rebooting, _) => Err(invalid()),
            (_, P::Pending | P::Rebooting) => {
                unreachable!("the outer pattern only binds writing, verifying and finalizing")
            }
        },
        (S::Deploying { .. }, E::Progress(P::Pending | P::Rebooting, _)) => Err(invalid()),
        (
            S::Discovered | S::Inspected | S::Ready | S::Deployed { .. } | S::Failed { .. },
            E::Progress(..),
        ) => Err(invalid()),
        (S::Deploying { plan, phase, .. }, E::Verified) => match phase {
            P::Writing | P::Verifying => {
                to(deploying(plan, P::Finalizing, Progress::default()), &[])
            }
            P::Pending | P::Finalizing | P::Rebooting => Err(invalid()),
        },
        (S::Deploying { plan, phase, .. }, E::ImagingDone) => match phase {
            P::Finalizing => to(deploying(plan, P::Rebooting, Progress::default()), &[]),
            P::Pending | P::Writing | P::Verifying | P::Rebooting => Err(invalid()),
        },
        (
            S::Discovered | S::Inspected | S::Ready | S::Deployed { .. } | S::Failed { .. },
            E::Verified | E::ImagingDone,
        ) => Err(invalid()),
        (S::Deploying { plan, phase, .. }, E::ImagingFailed { stage, reason }) => match phase {
            P::Pending | P::Writing | P::Verifying | P::Finalizing => to(
                S::Failed {
                    stage: *stage,
                    reason: reason.clone(),
                    plan: Some(plan.clone()),
                },
                &[],
            ),
            P::Rebooting => Err(invalid()),
        },
        (S::Discovered | S::Inspected | S::Ready, E::ImagingFailed { stage, reason }) => to(
            S::Failed {
                stage: *stage,
                reason: reason.clone(),
                plan: None,
            },
            &[],
        ),
        (S::Deployed { .. } | S::Failed { .. }, E::ImagingFailed { .. }) => Err(invalid()),

        // Enrolment of the installed system.
        (
            S::Deploying {
                plan,
                phase: P::Rebooting,
                ..
            },
            E::Enrolled,
        ) => to(S::Deployed { plan: plan.clone() }, &[Effect::RevokeSecrets]),
        (
            S::Discovered
            | S::Inspected
            | S::Ready
            | S::Deploying { .. }
            | S::Deployed { .. }
            | S::Failed { .. },
            E::Enrolled,
        ) => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan() -> DeployPlan {
        DeployPlan {
            image: "img".parse().unwrap(),
            hostname: "node-1".into(),
            disk: "vda".into(),
        }
    }

    fn dep(phase: DeployPhase) -> HostState {
        deploying(&plan(), phase, Progress { done: 5, total: 10 })
    }

    /// One sample of every state (every deploy phase, failed with and without a plan).
    fn states() -> Vec<(&'static str, HostState)> {
        let failed = |plan| HostState::Failed {
            stage: FailureStage::Write,
            reason: "disk gone".into(),
            plan,
        };
        vec![
            ("discovered", HostState::Discovered),
            ("inspected", HostState::Inspected),
            ("ready", HostState::Ready),
            ("dep/pending", dep(DeployPhase::Pending)),
            ("dep/writing", dep(DeployPhase::Writing)),
            ("dep/verifying", dep(DeployPhase::Verifying)),
            ("dep/finalizing", dep(DeployPhase::Finalizing)),
            ("dep/rebooting", dep(DeployPhase::Rebooting)),
            ("deployed", HostState::Deployed { plan: plan() }),
            ("failed+plan", failed(Some(plan()))),
            ("failed", failed(None)),
        ]
    }

    fn events() -> Vec<HostEvent> {
        let prog = Progress { done: 1, total: 2 };
        vec![
            HostEvent::PxeBoot,
            HostEvent::InventoryPosted,
            HostEvent::RuleMatched(plan()),
            HostEvent::NoRuleMatched,
            HostEvent::DeployRequested(plan()),
            HostEvent::RedeployRequested(plan()),
            HostEvent::RetryRequested,
            HostEvent::Progress(DeployPhase::Pending, prog),
            HostEvent::Progress(DeployPhase::Writing, prog),
            HostEvent::Progress(DeployPhase::Verifying, prog),
            HostEvent::Progress(DeployPhase::Finalizing, prog),
            HostEvent::Progress(DeployPhase::Rebooting, prog),
            HostEvent::Verified,
            HostEvent::ImagingDone,
            HostEvent::ImagingFailed {
                stage: FailureStage::Verify,
                reason: "checksum mismatch".into(),
            },
            HostEvent::Enrolled,
        ]
    }

    fn label(r: &Result<(HostState, Vec<Effect>), InvalidTransition>) -> String {
        match r {
            Err(_) => "-".into(),
            Ok((s, eff)) => {
                let mut out = match s {
                    HostState::Deploying { phase, .. } => format!("dep/{phase}"),
                    HostState::Failed { plan: Some(_), .. } => "failed+plan".into(),
                    other => other.name().to_string(),
                };
                for e in eff {
                    out.push_str(match e {
                        Effect::BootRamdisk => "+ramdisk",
                        Effect::BootLocalDisk => "+local",
                        Effect::EvaluateRules => "+rules",
                        Effect::RevokeSecrets => "+revoke",
                    });
                }
                out
            }
        }
    }

    /// The full table: rows are states, columns the events of [`events`] in order.
    /// `=` means "same state, no effects"; `-` means invalid.
    #[test]
    fn transition_table() {
        #[rustfmt::skip]
        let expected: &[(&str, [&str; 16])] = &[
            //                 pxe                     inventory           rule_m         no_rule  deploy         redeploy       retry          p:pend p:writ         p:verif          p:final          p:reb verified          done            failed          enrolled
            ("discovered",    ["discovered+ramdisk",   "inspected+rules",  "-",           "-",     "-",           "-",           "-",           "-",   "-",           "-",             "-",             "-",  "-",              "-",            "failed",       "-"]),
            ("inspected",     ["inspected+ramdisk",    "inspected+rules",  "dep/pending", "ready",  "dep/pending", "-",           "-",           "-",   "-",           "-",             "-",             "-",  "-",              "-",            "failed",       "-"]),
            ("ready",         ["ready+ramdisk",        "inspected+rules",  "-",           "-",     "dep/pending", "-",           "-",           "-",   "-",           "-",             "-",             "-",  "-",              "-",            "failed",       "-"]),
            ("dep/pending",   ["dep/pending+ramdisk",  "=",                "-",           "-",     "-",           "-",           "-",           "-",   "dep/writing", "-",             "-",              "-",  "-",              "-",            "failed+plan",  "-"]),
            ("dep/writing",   ["dep/pending+ramdisk",  "-",                "-",           "-",     "-",           "-",           "-",           "-",   "dep/writing", "dep/verifying", "-",              "-",  "dep/finalizing", "-",            "failed+plan",  "-"]),
            ("dep/verifying", ["dep/pending+ramdisk",  "-",                "-",           "-",     "-",           "-",           "-",           "-",   "-",           "dep/verifying", "-",              "-",  "dep/finalizing", "-",            "failed+plan",  "-"]),
            ("dep/finalizing",["dep/pending+ramdisk",  "-",                "-",           "-",     "-",           "-",           "-",           "-",   "-",           "-",             "dep/finalizing", "-",  "-",              "dep/rebooting", "failed+plan", "-"]),
            ("dep/rebooting", ["dep/rebooting+local",  "-",                "-",           "-",     "-",           "-",           "-",           "-",   "-",           "-",             "-",             "-",  "-",              "-",            "-",            "deployed+revoke"]),
            ("deployed",      ["deployed+local",       "-",                "-",           "-",     "-",           "dep/pending", "-",           "-",   "-",           "-",             "-",             "-",  "-",              "-",            "-",            "-"]),
            ("failed+plan",   ["failed+plan+ramdisk",  "=",                "-",           "-",     "dep/pending", "-",           "dep/pending", "-",   "-",           "-",             "-",             "-",  "-",              "-",            "-",            "-"]),
            ("failed",        ["failed+ramdisk",       "=",                "-",           "-",     "dep/pending", "-",           "discovered",  "-",   "-",           "-",             "-",             "-",  "-",              "-",            "-",            "-"]),
        ];
        let states = states();
        let events = events();
        assert_eq!(states.len(), expected.len());
        for ((name, s), (row_name, row)) in states.iter().zip(expected) {
            assert_eq!(name, row_name);
            for (ev, want) in events.iter().zip(row.iter()) {
                let got = step(s, ev);
                let want = if *want == "=" {
                    label(&Ok((s.clone(), vec![])))
                } else {
                    (*want).to_string()
                };
                assert_eq!(label(&got), want, "state {name}, event {}", ev.name());
                if let Err(e) = &got {
                    assert_eq!(e.from, s.name());
                    assert_eq!(e.event, ev.name());
                }
            }
        }
    }

    #[test]
    fn failure_keeps_plan_and_reason() {
        let (s, _) = step(
            &dep(DeployPhase::Verifying),
            &HostEvent::ImagingFailed {
                stage: FailureStage::Verify,
                reason: "sha256 mismatch".into(),
            },
        )
        .unwrap();
        assert_eq!(
            s,
            HostState::Failed {
                stage: FailureStage::Verify,
                reason: "sha256 mismatch".into(),
                plan: Some(plan()),
            }
        );
    }

    fn arb_event() -> impl Strategy<Value = HostEvent> {
        let evs = events();
        (0..evs.len()).prop_map(move |i| evs[i].clone())
    }

    proptest! {
        /// Over random event sequences: `deployed` is only ever entered by an enrolment after
        /// a verified write, local boot is only answered once the disk holds a verified image,
        /// and rejected events leave the state as it was.
        #[test]
        fn random_sequences_keep_invariants(evs in proptest::collection::vec(arb_event(), 0..60)) {
            let mut s = HostState::Discovered;
            let mut generation = 0u64;
            let mut verified_since_pending = false;
            for ev in &evs {
                match step(&s, ev) {
                    Err(e) => {
                        prop_assert_eq!(e.from, s.name());
                    }
                    Ok((next, effects)) => {
                        generation += 1;
                        if let HostState::Deploying { phase: DeployPhase::Pending, .. } = next {
                            verified_since_pending = false;
                        }
                        if *ev == HostEvent::Verified {
                            verified_since_pending = true;
                        }
                        if let HostState::Deployed { .. } = next {
                            if !matches!(s, HostState::Deployed { .. }) {
                                prop_assert_eq!(ev, &HostEvent::Enrolled);
                            }
                            prop_assert!(verified_since_pending);
                        }
                        if let HostState::Deploying { phase: DeployPhase::Rebooting, .. } = next {
                            prop_assert!(verified_since_pending);
                        }
                        if effects.contains(&Effect::BootLocalDisk) {
                            let local_ok = matches!(
                                next,
                                HostState::Deployed { .. }
                                    | HostState::Deploying { phase: DeployPhase::Rebooting, .. }
                            );
                            prop_assert!(local_ok);
                        }
                        prop_assert_eq!(
                            effects.contains(&Effect::BootRamdisk) || effects.contains(&Effect::BootLocalDisk),
                            *ev == HostEvent::PxeBoot
                        );
                        s = next;
                    }
                }
            }
            prop_assert!(generation <= evs.len() as u64);
        }
    }
}
