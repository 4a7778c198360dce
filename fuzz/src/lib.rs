//! The fuzz targets' logic (see `targets.rs`); `fuzz_targets/` holds one thin cargo-fuzz
//! entry point per target.
pub mod targets;
