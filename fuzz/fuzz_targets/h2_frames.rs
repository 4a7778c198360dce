//! HTTP/2 frames through the proxy's frame guard and h2 server with the proxy's limits.
//! The logic is in `src/targets.rs` (shared with the stable corpus replay).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| outrider_fuzz::targets::h2_frames(data));
