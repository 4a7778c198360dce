//! Outrider's data plane: the sidecar / node proxy.
//!
//! Configuration enters one way: Envoy v3 resources (translated in-process from a
//! policy file, or from an xDS server) become a [`state::Snapshot`] that the request
//! path reads with one `ArcSwap::load`.
// One audited exception: `heap::release_free_memory` (glibc `malloc_trim`).
#![deny(unsafe_code)]
// Proving the serving futures `Sync` walks the config types they hold (down to protobuf
// `Value`s); with the HTTP/1.1 client's futures that is deeper than the default 128.
#![recursion_limit = "256"]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

/// Admin, metrics and health HTTP servers.
pub mod admin;
/// Wires listeners, the config source and the admin servers together.
pub mod app;
/// Inbound authorization (AuthorizationPolicy as Envoy RBAC) and mTLS mode per service.
pub mod authz;
/// The one jittered exponential backoff.
pub mod backoff;
/// Endpoint sets and load balancers (P2C peak-EWMA, round robin, random).
pub mod balance;
/// Deadlines from configured durations that never overflow the clock.
pub mod clock;
/// Command-line flags and environment variables of `outrider-proxy`.
pub mod config;
/// Graceful drain: stop accepting, finish in-flight work, exit.
pub mod drain;
/// HBONE: TCP tunnelled as HTTP/2 CONNECT in mutual TLS on port 15008 (ztunnel-compatible).
pub mod hbone;
/// Gives the memory the allocator holds free back to the system, periodically.
pub mod heap;
/// HTTP server, upstream connection pools, header hygiene, bodies.
pub mod http;
/// Inbound traffic: delivery to the local application.
pub mod inbound;
/// `outrider-proxy iptables`: interception rules for a network namespace.
pub mod iptables;
/// Load reports to the control plane (LRS): per-endpoint counters and the reporting stream.
pub mod load_report;
/// Workload identity on the data path: certificate bootstrap and renewal, TLS configs.
pub mod mesh;
/// Node mode: one proxy for every workload of a machine, each in its own network namespace.
pub mod node;
/// Outbound traffic: route → split → balancer → endpoint, for HTTP and TCP.
pub mod outbound;
/// Resilience policies: timeouts, retries, budgets, breakers, outliers, faults.
pub mod policy;
/// Errors to local replies, in one place.
pub mod rescue;
/// Where configuration comes from: the policy file (watched) today, xDS later.
pub mod source;
/// The Snapshot model built from Envoy resources, and its ArcSwap handle.
pub mod state;
/// Metrics registry and families, access log.
pub mod telemetry;
/// Workload identity, certificates and rotation, rustls configs for mTLS between proxies.
pub mod tls;
/// Listeners, socket options, original destination, protocol detection.
pub mod transport;
