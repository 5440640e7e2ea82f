//! Random event sequences through the host state machine: it never panics (no internal
//! `unreachable!` is reachable), and a host only becomes `deployed` by enrolling after a
//! verified write.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provisioner::api::{DeployPhase, DeployPlan, FailureStage, HostState, Progress};
use provisioner::lifecycle::{HostEvent, step};

fn event(b: &[u8]) -> HostEvent {
    let plan = DeployPlan {
        image: "img".parse().expect("valid image name"),
        hostname: "h".into(),
        disk: "vda".into(),
    };
    let phase = match b[1] % 5 {
        0 => DeployPhase::Pending,
        1 => DeployPhase::Writing,
        2 => DeployPhase::Verifying,
        3 => DeployPhase::Finalizing,
        _ => DeployPhase::Rebooting,
    };
    let progress = Progress {
        done: u64::from(b[2]) << 20,
        total: u64::from(b[1]) << 20,
    };
    match b[0] % 12 {
        0 => HostEvent::PxeBoot,
        1 => HostEvent::InventoryPosted,
        2 => HostEvent::RuleMatched(plan),
        3 => HostEvent::NoRuleMatched,
        4 => HostEvent::DeployRequested(plan),
        5 => HostEvent::RedeployRequested(plan),
        6 => HostEvent::RetryRequested,
        7 => HostEvent::Progress(phase, progress),
        8 => HostEvent::Verified,
        9 => HostEvent::ImagingDone,
        10 => HostEvent::ImagingFailed {
            stage: FailureStage::Write,
            reason: "r".into(),
        },
        _ => HostEvent::Enrolled,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut s = HostState::Discovered;
    let mut verified = false;
    for chunk in data.chunks_exact(3) {
        let ev = event(chunk);
        if let Ok((next, _effects)) = step(&s, &ev) {
            if let HostState::Deploying {
                phase: DeployPhase::Pending,
                ..
            } = next
            {
                verified = false;
            }
            if ev == HostEvent::Verified {
                verified = true;
            }
            if let HostState::Deployed { .. } = next {
                assert!(verified, "deployed without a verified write");
            }
            s = next;
        }
    }
});
