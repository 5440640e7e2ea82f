//! Untrusted machine-facing input: request bodies from imagers and enrolling hosts, and the
//! inventory-driven rule evaluation and hostname rendering that follow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provisioner::api::{
    EnrolRequest, HardwareInventory, ImagingResult, MacAddr, NewRule, ProgressReport, Rule, RuleId,
};
use provisioner::rules;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<ProgressReport>(data);
    let _ = serde_json::from_slice::<ImagingResult>(data);
    let _ = serde_json::from_slice::<EnrolRequest>(data);
    let _ = serde_json::from_slice::<NewRule>(data);
    let mac = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    if let Ok(inv) = serde_json::from_slice::<HardwareInventory>(data) {
        let rule = |id, pattern: &str| Rule {
            id: RuleId(id),
            rule: NewRule {
                matches: Default::default(),
                image: "img".parse().expect("valid image name"),
                hostname: pattern.into(),
                disk: Default::default(),
            },
        };
        let rules = [rule(1, "{vendor}-{product}-{serial}"), rule(2, "{mac}")];
        if let Some((_, plan)) = rules::evaluate(&rules, &inv, mac) {
            assert!(plan.hostname.len() <= 63);
            assert!(
                plan.hostname
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            );
        }
    }
    if let Ok(pattern) = std::str::from_utf8(data) {
        let inv: HardwareInventory = serde_json::from_value(serde_json::json!({
            "cpu_model": "c", "cpu_count": 1, "memory_bytes": 1, "disks": [], "nics": [],
            "vendor": pattern, "serial": pattern, "boot_mode": "bios",
        }))
        .expect("valid inventory");
        if let Ok(h) = rules::render_hostname(pattern, &inv, mac) {
            assert!(!h.is_empty() && h.len() <= 63 && !h.starts_with('-') && !h.ends_with('-'));
        }
    }
});
