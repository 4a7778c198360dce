//! The Outrider control plane: policy sources (watched directory, HTTP API, durable store), the
//! xDS server that serves them to proxies, and the CLI that talks to it.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

/// The HTTP API: policies, validation, proxy status, metrics.
pub mod api;
/// The mesh CA: root, workload certificates from CSRs, trust bundle, join tokens.
pub mod ca;
/// The CLI verbs that talk to a running control plane (`apply`, `get`, `delete`, `status`, `rollout`).
pub mod cli;
/// `outrider demo`: the mesh in one process, with load and a live view.
pub mod demo;
/// Registered endpoints (sidecars, `POST /v1/endpoints`) behind the `EndpointSource` trait.
pub mod endpoints;
/// `--kubernetes`: discovery, custom resources, the CA Secret and leader election from the API
/// server; sidecar injection (the webhook and `outrider inject`).
pub mod kubernetes;
/// The control plane's own Prometheus metrics.
pub mod metrics;
/// Policy documents from the directory and the API, validated as one set, persisted.
pub mod policies;
/// Rollouts: the state machine per `kind: Rollout`, its checks and webhooks.
pub mod rollout;
/// `outrider control-plane`: wiring, debounce, start/kill.
pub mod server;
/// Policy set → versioned xDS resources (plus gRPC API listeners).
pub mod snapshot;
/// Load reports (LRS) from the proxies, aggregated per service, subset and endpoint.
pub mod stats;
/// Connected proxies and their ACK/NACK state per resource type.
pub mod tracker;
/// The ADS server: SotW and Delta streams.
pub mod xds;
