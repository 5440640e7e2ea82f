//! DHCP decode-and-decide: arbitrary bytes through the codec and the server pipeline (with a
//! process-wide lease table, so sequences of packets build state). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = netsvc::dhcp::decode(data);
    if let Some(reply) = netsvc::dhcp::fuzz_decide(data) {
        // Whatever we answer must itself decode as DHCP.
        assert!(reply.len() >= 300);
    }
    let _ = netsvc::dhcp::parse_suboptions(data);
});
