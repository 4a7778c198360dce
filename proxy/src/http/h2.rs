//! An HTTP/2 codec of our own (RFC 9113 frames, RFC 7541 HPACK), for a downstream HTTP/2
//! server that holds no buffer while a connection is idle.
//!
//! why our own: hyper's server runs on the h2 crate, whose codec keeps a 16 KiB write buffer,
//! an 8 KiB read buffer and a 4 KiB HPACK scratch buffer for a connection's whole life (24 KB
//! of RSS per idle h2c connection, measured: docs/benchmarks.md), and none of its options
//! sizes or releases them; it also spawns a task per stream. These modules are the layers the
//! server is built on: they own no socket and no buffer between calls.

/// Frames: the 9-byte header, every frame type's payload, their limits and errors.
pub mod frame;
/// HPACK: header blocks decoded into fields and fields encoded into blocks.
pub mod hpack;
