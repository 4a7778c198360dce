//! Header blocks through the proxy's own HPACK decoder (`http::h2::hpack`), and back through
//! its encoder. The logic is in `src/targets.rs` (shared with the stable corpus replay).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| outrider_fuzz::targets::hpack_decode(data));
