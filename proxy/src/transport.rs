//! Listeners, socket options, original destination and protocol detection.

/// HTTP/2 preface, HTTP/1.x request line, or opaque TCP.
pub mod detect;
/// Binding listeners with the proxy's socket options.
pub mod listen;
/// Entering a workload's network namespace to create or bind a socket (node mode).
pub mod netns;
/// `SO_ORIGINAL_DST`: where an iptables-redirected connection was going.
pub mod orig_dst;
/// The mark and namespace of the proxy's upstream sockets.
pub mod socket;
