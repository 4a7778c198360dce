//! Test support for Outrider's end-to-end tests (the tests live in `tests/`).
//!
//! Run them with `cargo build -p outrider-proxy -p outrider-control-plane --bins && cargo
//! nextest run -p outrider-tests`: `drain`, `policy_errors`, `reload` (SIGHUP), `netns` and the
//! `chaos_*` tests start the real binaries, found next to the test executable
//! (`target/debug/outrider-proxy`, `target/debug/outrider`) or at `$OUTRIDER_PROXY_BIN` /
//! `$OUTRIDER_BIN`. Waits are
//! bounded by `$OUTRIDER_TEST_DEADLINE_SECS` (default 10). `netns` needs root, `ip`,
//! `iptables` and `python3` and skips itself otherwise; the `promtool` check in `admin`
//! skips itself when `promtool` is not installed, and `hbone_istio` when Go is not.
#![forbid(unsafe_code)]
// Test support: a failed setup step should stop the test loudly, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// The `outrider-proxy` binary as a child process.
pub mod binary;
/// HTTP clients aimed at the proxy, and fully read replies.
pub mod client;
/// The control plane in-process, its API, and proxies fed by it over xDS.
pub mod control_plane;
/// The control plane as a child process: killed with SIGKILL, restarted on the same ports.
pub mod cp_process;
/// A small tmpfs for a data dir that a test fills up or remounts read-only (root).
pub mod disk;
/// A TCP relay that injects network faults: delay, drops, resets, stalls, bandwidth limits.
pub mod fault;
/// Running the h2spec HTTP/2 conformance tool and reading its summary.
pub mod h2spec;
/// The proxy in-process: policy file, `App`, clients, reloads.
pub mod harness;
/// Istio's Go HBONE implementation as a peer (built from `tests/interop/istio-hbone/`).
pub mod istio_hbone;
/// A real etcd + kube-apiserver on loopback (the Kubernetes test bed).
pub mod kube;
/// The control plane's Kubernetes mode on the test API server: replicas, CRDs, sidecars, and a
/// balancer standing for the replicas' Service.
pub mod kube_mesh;
/// Steady load through a proxy, with what each request saw.
pub mod load;
/// Meshed sidecars with workload identities (mTLS).
pub mod mesh;
/// Throw-away network namespaces (interception tests).
pub mod netns;
/// An OTLP/gRPC trace receiver on a listener of the test's choosing (any namespace).
pub mod otlp;
/// Policy YAML builders.
pub mod policy;
/// Reading the Prometheus text exposition.
pub mod prom;
/// Raw HTTP/1.1 over a socket (100-continue, upgrades).
pub mod raw;
/// Raw HTTP/2 frames over a socket (bad prefaces, malformed trailers).
pub mod raw_h2;
/// Real upstream servers (HTTP/1.1, h2c, upgrades, TCP echo, gRPC) that stop on drop.
pub mod upstream;
/// Polling with a deadline (`eventually!`, `wait_until`), never a bare sleep.
pub mod wait;

pub use harness::ProxyHarness;

/// `OUTRIDER_LONG_TESTS=1`: tests that can run for a while (today: certificate rotation under
/// load) run their long version, as before a release; by default they stop as soon as what they
/// check has happened.
pub fn long_tests() -> bool {
    std::env::var("OUTRIDER_LONG_TESTS").is_ok_and(|v| v == "1")
}

/// A test whose prerequisites are missing says so and returns — unless
/// `OUTRIDER_REQUIRE_ALL=1` (set by `.ci/run`), where a skip would hide a gap
/// and fails instead.
pub fn skip(why: &str) {
    if std::env::var("OUTRIDER_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{why} (OUTRIDER_REQUIRE_ALL=1: prerequisites must be installed)");
    }
    eprintln!("{why}");
}
