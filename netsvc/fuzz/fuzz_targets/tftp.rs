//! TFTP decode-and-decide: arbitrary bytes through the request decoder, option negotiation and
//! the path check, as the server runs them before any I/O. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    netsvc::tftp::fuzz_request(data);
});
