//! Outrider's policy files: the YAML model, its validation, and its translation to Envoy v3
//! xDS resources.
#![forbid(unsafe_code)]

/// The YAML model: serde structs with `deny_unknown_fields`, and the validated [`PolicySet`].
pub mod policy;

/// Durations as policy files write them (`250ms`, `2s`, `1m30s`): parsing and formatting.
pub mod duration;

/// Validation of a whole set of documents, and the [`PolicyError`]s it reports.
pub mod validate;

/// [`PolicySet`] → Envoy v3 listeners, routes, clusters and endpoints.
pub mod translate;

/// Type URLs, resource names, and `Any`/`Struct` helpers.
pub mod resources;

/// Reading files and directories of YAML documents (re-exported below).
mod load;

/// Validating documents from several sources (files, stored documents, a request) as one set.
pub mod sources;

/// The one jittered exponential backoff (xDS reconnects; reused by the proxy).
pub mod backoff;

/// TCP + TLS connector for gRPC channels to `https://` endpoints.
pub mod tls;

/// Latency histograms: the one fixed bucket scheme proxies count in, load reports carry and
/// the control plane merges.
pub mod latency;

/// Join tokens on the proxy side: the token file, and the xDS stream metadata carrying it.
pub mod join_token;

/// ADS client (Delta by default, SotW): subscribe, hand updates to a handler, ACK/NACK, reconnect.
pub mod ads;

pub use load::{load_dir, load_file, load_str};
pub use policy::{
    Backoff, BreakerScope, CircuitBreaker, Endpoint, Fallback, FaultAbort, FaultDelay, Faults, LoadBalancer, Metadata,
    MtlsMode, OutlierDetection, PolicySet, Position, Protocol, Retries, RetryBudget, RetryOn, Rollout, RolloutSpec,
    Route, RouteMatch, Service, ServiceSpec, SplitEntry, StateMachine, Step, TrafficPolicy, TrafficPolicySpec,
};
pub use translate::{Resources, translate};
pub use validate::{PolicyError, PolicyErrors};
