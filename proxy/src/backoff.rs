//! The one jittered exponential backoff (`random(0, min(max, base · 2^n))`),
//! shared with the xDS client: retries, certificate renewal and reconnects all
//! use `outrider_xds::backoff::ExponentialBackoff` (tests live there).
pub use outrider_xds::backoff::ExponentialBackoff;
