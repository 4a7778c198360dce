//! Policy files are operator input: any bytes give a set or errors, never a panic.
//! The logic is in `src/targets.rs` (shared with the stable corpus replay).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| outrider_fuzz::targets::policy_yaml(data));
