//! Router solicitation check: arbitrary ICMPv6 bytes through the option walk the RA server
//! runs on every received packet. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = netsvc::ra::is_solicitation(data);
});
