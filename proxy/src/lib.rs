//! Outrider's data plane: the sidecar / node proxy.
//!
//! Configuration enters one way: Envoy v3 resources (translated in-process from a
//! policy file, or from an xDS server) become a [`state::Snapshot`] that the request
//! path reads with one `ArcSwap::load`.
#![forbid(unsafe_code)]

/// Command-line flags and environment variables of `outrider-proxy`.
pub mod config;
/// Wires listeners, the config source and the admin servers together.
pub mod app;
/// Listeners, socket options, original destination, protocol detection.
pub mod transport;
/// Outbound traffic: route → split → balancer → endpoint, for HTTP and TCP.
pub mod outbound;
/// Inbound traffic: delivery to the local application.
pub mod inbound;
/// HTTP server, upstream connection pools, header hygiene, bodies.
pub mod http;
/// Endpoint sets and load balancers (P2C peak-EWMA, round robin, random).
pub mod balance;
/// The Snapshot model built from Envoy resources, and its ArcSwap handle.
pub mod state;
/// Where configuration comes from: the policy file (watched) today, xDS later.
pub mod source;
/// Metrics registry and families, access log.
pub mod telemetry;
/// Admin, metrics and health HTTP servers.
pub mod admin;
/// Errors to local replies, in one place.
pub mod rescue;
/// Graceful drain: stop accepting, finish in-flight work, exit.
pub mod drain;
/// `outrider-proxy iptables`: interception rules for a network namespace.
pub mod iptables;
