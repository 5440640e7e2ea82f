//! Deployment rules: the first rule whose conditions all hold for a host's inventory assigns
//! its image, hostname (from a pattern) and target disk.

use crate::api::{DeployPlan, DiskSelector, HardwareInventory, MacAddr, Rule, RuleId, RuleMatch};

/// Errors of a hostname pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// `{name}` is not a known placeholder.
    #[error("unknown placeholder `{{{name}}}` in hostname pattern `{pattern}`")]
    UnknownPlaceholder {
        /// The pattern.
        pattern: String,
        /// The placeholder.
        name: String,
    },
    /// A `{` without its `}`.
    #[error("unclosed `{{` in hostname pattern `{pattern}`")]
    Unclosed {
        /// The pattern.
        pattern: String,
    },
    /// The rendered name is empty.
    #[error("hostname pattern `{pattern}` renders to an empty name")]
    Empty {
        /// The pattern.
        pattern: String,
    },
}

const PLACEHOLDERS: [&str; 4] = ["serial", "mac", "vendor", "product"];

/// Checks a hostname pattern's placeholders without rendering it.
pub fn check_pattern(pattern: &str) -> Result<(), PatternError> {
    let inv = HardwareInventory {
        cpu_model: String::new(),
        cpu_count: 1,
        memory_bytes: 0,
        disks: vec![],
        nics: vec![],
        vendor: Some("v".into()),
        product: Some("p".into()),
        serial: Some("s".into()),
        boot_mode: crate::api::BootMode::Bios,
    };
    render_hostname(pattern, &inv, MacAddr([0; 6])).map(drop)
}

/// Renders a hostname pattern: `{serial}`, `{mac}` (hyphenated), `{vendor}`, `{product}`; a
/// missing value renders as `unknown`. The result is lowercased, characters outside
/// `[a-z0-9-]` become `-`, and it is cut to 63 characters (one DNS label).
pub fn render_hostname(
    pattern: &str,
    inv: &HardwareInventory,
    mac: MacAddr,
) -> Result<String, PatternError> {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(PatternError::Unclosed {
                pattern: pattern.to_owned(),
            });
        };
        let name = &after[..close];
        let value = match name {
            "serial" => inv.serial.clone(),
            "mac" => Some(mac.hyphenated()),
            "vendor" => inv.vendor.clone(),
            "product" => inv.product.clone(),
            _ => {
                return Err(PatternError::UnknownPlaceholder {
                    pattern: pattern.to_owned(),
                    name: name.to_owned(),
                });
            }
        };
        debug_assert!(PLACEHOLDERS.contains(&name));
        out.push_str(value.as_deref().unwrap_or("unknown"));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    let label: String = out
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let label = label.trim_matches('-');
    let label: String = label.chars().take(63).collect();
    let label = label.trim_end_matches('-').to_owned();
    if label.is_empty() {
        return Err(PatternError::Empty {
            pattern: pattern.to_owned(),
        });
    }
    Ok(label)
}

/// The disk a selector picks from an inventory.
pub fn select_disk(sel: &DiskSelector, inv: &HardwareInventory) -> Option<String> {
    let disk = match sel {
        DiskSelector::First => inv
            .disks
            .iter()
            .find(|d| !d.rotational)
            .or_else(|| inv.disks.first()),
        DiskSelector::Largest => inv.disks.iter().max_by_key(|d| d.size_bytes),
        DiskSelector::Name(n) => inv.disks.iter().find(|d| &d.name == n),
        DiskSelector::Serial(s) => inv
            .disks
            .iter()
            .find(|d| d.serial.as_deref() == Some(s.as_str())),
    };
    disk.map(|d| d.name.clone())
}

fn eq_ci(want: &Option<String>, have: &Option<String>) -> bool {
    match (want, have) {
        (None, _) => true,
        (Some(w), Some(h)) => w.trim().eq_ignore_ascii_case(h.trim()),
        (Some(_), None) => false,
    }
}

/// Whether every condition of `m` holds for the host.
pub fn matches(m: &RuleMatch, inv: &HardwareInventory, boot_mac: MacAddr) -> bool {
    let mac_ok = m
        .mac
        .is_none_or(|want| want == boot_mac || inv.nics.iter().any(|n| n.mac == want));
    let serial_ok = match (&m.serial, &inv.serial) {
        (None, _) => true,
        (Some(w), Some(h)) => w.trim() == h.trim(),
        (Some(_), None) => false,
    };
    let mem_ok = m.min_memory_bytes.is_none_or(|min| inv.memory_bytes >= min);
    let disk_ok = m
        .min_disk_bytes
        .is_none_or(|min| inv.disks.iter().any(|d| d.size_bytes >= min));
    mac_ok
        && serial_ok
        && eq_ci(&m.vendor, &inv.vendor)
        && eq_ci(&m.product, &inv.product)
        && mem_ok
        && disk_ok
}

/// The first rule that matches and can be applied (its disk exists, its pattern renders), with
/// the plan it yields.
pub fn evaluate(
    rules: &[Rule],
    inv: &HardwareInventory,
    boot_mac: MacAddr,
) -> Option<(RuleId, DeployPlan)> {
    rules.iter().find_map(|r| {
        if !matches(&r.rule.matches, inv, boot_mac) {
            return None;
        }
        let disk = select_disk(&r.rule.disk, inv)?;
        let hostname = render_hostname(&r.rule.hostname, inv, boot_mac).ok()?;
        Some((
            r.id,
            DeployPlan {
                image: r.rule.image.clone(),
                hostname,
                disk,
            },
        ))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::{BootMode, Disk, NewRule, Nic};

    const GIB: u64 = 1 << 30;

    pub(crate) fn inventory() -> HardwareInventory {
        HardwareInventory {
            cpu_model: "QEMU Virtual CPU".into(),
            cpu_count: 2,
            memory_bytes: 4 * GIB,
            disks: vec![
                Disk {
                    name: "sda".into(),
                    size_bytes: 100 * GIB,
                    model: Some("HDD".into()),
                    serial: Some("HDD-1".into()),
                    rotational: true,
                },
                Disk {
                    name: "vda".into(),
                    size_bytes: 20 * GIB,
                    model: None,
                    serial: Some("SSD-1".into()),
                    rotational: false,
                },
            ],
            nics: vec![Nic {
                name: "eth0".into(),
                mac: MacAddr([0x52, 0x54, 0, 0, 0, 1]),
                link: true,
                speed_mbps: Some(1000),
            }],
            vendor: Some("QEMU".into()),
            product: Some("Standard PC (Q35 + ICH9, 2009)".into()),
            serial: Some("SN 0042".into()),
            boot_mode: BootMode::Uefi,
        }
    }

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);

    fn rule(id: u64, m: RuleMatch, image: &str) -> Rule {
        Rule {
            id: RuleId(id),
            rule: NewRule {
                matches: m,
                image: image.parse().unwrap(),
                hostname: "node-{serial}".into(),
                disk: DiskSelector::First,
            },
        }
    }

    #[test]
    fn each_condition_matches_and_rejects() {
        let inv = inventory();
        let cases: Vec<(RuleMatch, bool)> = vec![
            (RuleMatch::default(), true),
            (
                RuleMatch {
                    mac: Some(MAC),
                    ..Default::default()
                },
                true,
            ),
            (
                RuleMatch {
                    mac: Some(MacAddr([2; 6])),
                    ..Default::default()
                },
                false,
            ),
            (
                RuleMatch {
                    serial: Some("SN 0042".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                RuleMatch {
                    serial: Some("sn 0042".into()),
                    ..Default::default()
                },
                false,
            ),
            (
                RuleMatch {
                    vendor: Some("qemu".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                RuleMatch {
                    vendor: Some("Dell Inc.".into()),
                    ..Default::default()
                },
                false,
            ),
            (
                RuleMatch {
                    vendor: Some("QEMU".into()),
                    product: Some("standard pc (q35 + ich9, 2009)".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                RuleMatch {
                    product: Some("R640".into()),
                    ..Default::default()
                },
                false,
            ),
            (
                RuleMatch {
                    min_memory_bytes: Some(4 * GIB),
                    ..Default::default()
                },
                true,
            ),
            (
                RuleMatch {
                    min_memory_bytes: Some(4 * GIB + 1),
                    ..Default::default()
                },
                false,
            ),
            (
                RuleMatch {
                    min_disk_bytes: Some(100 * GIB),
                    ..Default::default()
                },
                true,
            ),
            (
                RuleMatch {
                    min_disk_bytes: Some(101 * GIB),
                    ..Default::default()
                },
                false,
            ),
            (
                RuleMatch {
                    vendor: Some("QEMU".into()),
                    min_memory_bytes: Some(8 * GIB),
                    ..Default::default()
                },
                false,
            ),
        ];
        for (m, want) in cases {
            assert_eq!(matches(&m, &inv, MAC), want, "{m:?}");
        }
        let mut no_dmi = inv.clone();
        no_dmi.serial = None;
        no_dmi.vendor = None;
        assert!(!matches(
            &RuleMatch {
                serial: Some("x".into()),
                ..Default::default()
            },
            &no_dmi,
            MAC
        ));
        assert!(!matches(
            &RuleMatch {
                vendor: Some("x".into()),
                ..Default::default()
            },
            &no_dmi,
            MAC
        ));
    }

    #[test]
    fn first_match_wins() {
        let inv = inventory();
        let rules = vec![
            rule(
                1,
                RuleMatch {
                    vendor: Some("Dell".into()),
                    ..Default::default()
                },
                "dell",
            ),
            rule(
                2,
                RuleMatch {
                    min_memory_bytes: Some(GIB),
                    ..Default::default()
                },
                "big",
            ),
            rule(3, RuleMatch::default(), "catch-all"),
        ];
        let (id, plan) = evaluate(&rules, &inv, MAC).unwrap();
        assert_eq!(id, RuleId(2));
        assert_eq!(plan.image.as_str(), "big");
        assert_eq!(plan.hostname, "node-sn-0042");
        assert_eq!(plan.disk, "vda");
        assert_eq!(evaluate(&rules[..1], &inv, MAC), None);
        assert_eq!(evaluate(&[], &inv, MAC), None);
    }

    #[test]
    fn rule_whose_disk_is_missing_is_skipped() {
        let inv = inventory();
        let mut r1 = rule(1, RuleMatch::default(), "a");
        r1.rule.disk = DiskSelector::Name("nvme0n1".into());
        let r2 = rule(2, RuleMatch::default(), "b");
        assert_eq!(evaluate(&[r1, r2], &inv, MAC).unwrap().0, RuleId(2));
    }

    #[test]
    fn disk_selectors() {
        let inv = inventory();
        assert_eq!(
            select_disk(&DiskSelector::First, &inv).as_deref(),
            Some("vda")
        );
        assert_eq!(
            select_disk(&DiskSelector::Largest, &inv).as_deref(),
            Some("sda")
        );
        assert_eq!(
            select_disk(&DiskSelector::Name("sda".into()), &inv).as_deref(),
            Some("sda")
        );
        assert_eq!(
            select_disk(&DiskSelector::Serial("SSD-1".into()), &inv).as_deref(),
            Some("vda")
        );
        assert_eq!(
            select_disk(&DiskSelector::Serial("nope".into()), &inv),
            None
        );
        let mut all_hdd = inv.clone();
        all_hdd.disks.retain(|d| d.rotational);
        assert_eq!(
            select_disk(&DiskSelector::First, &all_hdd).as_deref(),
            Some("sda")
        );
        all_hdd.disks.clear();
        assert_eq!(select_disk(&DiskSelector::First, &all_hdd), None);
    }

    #[test]
    fn hostname_patterns() {
        let inv = inventory();
        let r = |p: &str| render_hostname(p, &inv, MAC);
        assert_eq!(r("node-{serial}").unwrap(), "node-sn-0042");
        assert_eq!(r("{mac}").unwrap(), "52-54-00-00-00-01");
        assert_eq!(
            r("{vendor}-{product}").unwrap(),
            "qemu-standard-pc--q35---ich9--2009"
        );
        assert_eq!(r("static").unwrap(), "static");
        assert_eq!(r(&"x".repeat(80)).unwrap().len(), 63);
        assert!(matches!(
            r("{nope}"),
            Err(PatternError::UnknownPlaceholder { .. })
        ));
        assert!(matches!(
            r("node-{serial"),
            Err(PatternError::Unclosed { .. })
        ));
        assert!(matches!(r("..."), Err(PatternError::Empty { .. })));
        let mut no_serial = inv.clone();
        no_serial.serial = None;
        assert_eq!(
            render_hostname("node-{serial}", &no_serial, MAC).unwrap(),
            "node-unknown"
        );
        assert!(check_pattern("node-{serial}-{mac}").is_ok());
        assert!(check_pattern("node-{cpu}").is_err());
    }
}
