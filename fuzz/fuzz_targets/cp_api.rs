//! Control plane API bodies on every write route: an answer, never a 500.
//! The logic is in `src/targets.rs` (shared with the stable corpus replay).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| outrider_fuzz::targets::cp_api(data));
