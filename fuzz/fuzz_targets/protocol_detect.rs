//! Protocol detection sees the first bytes of every accepted connection.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = outrider_proxy::transport::detect::classify(data);
});
