//! Policy files are operator input: any bytes must give a set or errors, never a panic,
//! and a valid set must translate.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(set) = outrider_xds::load_str("fuzz.yaml", text)
    {
        let _ = outrider_xds::translate(&set);
    }
});
