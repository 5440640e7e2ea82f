//! Inputs that once crashed a fuzz target, replayed through the same entry points on every test
//! run (debug assertions on, as under cargo fuzz). A new crash found in CI is added here as
//! `tests/data/fuzz-regressions/<target>/<artifact>`.

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz-regressions")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("regression directory exists")
        .map(|e| {
            let p = e.expect("directory entry").path();
            let bytes = std::fs::read(&p).expect("read regression input");
            (p.display().to_string(), bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no regression inputs in {}", dir.display());
    out
}

#[test]
fn dhcp_regressions_do_not_panic() {
    for (name, data) in inputs("dhcp") {
        let _ = netsvc::dhcp::decode(&data);
        if let Some(reply) = netsvc::dhcp::fuzz_decide(&data) {
            assert!(reply.len() >= 300, "{name}: short reply");
        }
        let _ = netsvc::dhcp::parse_suboptions(&data);
    }
}
