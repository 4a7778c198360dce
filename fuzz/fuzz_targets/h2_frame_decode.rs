//! HTTP/2 frames through the proxy's own frame decoder (`http::h2::frame`).
//! The logic is in `src/targets.rs` (shared with the stable corpus replay).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| outrider_fuzz::targets::h2_frame_decode(data));
