//! Load reports (LRS) from any client of the xDS port: counted or dropped, never a panic.
//! The logic is in `src/targets.rs` (shared with the stable corpus replay).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| outrider_fuzz::targets::load_report(data));
