//! Outrider on Kubernetes.

/// Sidecar injection (the webhook's mutation and `outrider inject`).
pub mod inject;
/// The mutating admission webhook at `/inject`.
pub mod webhook;
