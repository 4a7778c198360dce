//! The authorization path normaliser: idempotent, no dot or empty segments left.
//! The logic is in `src/targets.rs` (shared with the stable corpus replay).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| outrider_fuzz::targets::authz_path(data));
