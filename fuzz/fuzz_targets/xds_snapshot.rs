//! xDS resources are untrusted: decoding any bytes and building a snapshot.
//! The logic is in `src/targets.rs` (shared with the stable corpus replay).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| outrider_fuzz::targets::xds_snapshot(data));
