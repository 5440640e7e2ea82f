//! Fuzzes the DNS query path: the fast path, then the slow path (hickory's decoder and Catalog,
//! zone transfers, minimal ANY) over UDP and TCP, on arbitrary datagrams.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    netsvc::dns::fuzzing::fuzz_query(data);
});
