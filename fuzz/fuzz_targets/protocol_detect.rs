//! The first bytes of every accepted connection: classifier, ClientHello peek, preface.
//! The logic is in `src/targets.rs` (shared with the stable corpus replay).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| outrider_fuzz::targets::protocol_detect(data));
