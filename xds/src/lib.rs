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

pub use load::{load_dir, load_file, load_str};
pub use policy::{
    Endpoint, LoadBalancer, Metadata, MtlsMode, PolicySet, Protocol, Route, RouteMatch, Service,
    ServiceSpec, SplitEntry, TrafficPolicy, TrafficPolicySpec,
};
pub use translate::{Resources, translate};
pub use validate::{PolicyError, PolicyErrors};
