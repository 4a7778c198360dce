//! Every stored fuzz input, replayed on the stable toolchain: the seeds (`fuzz/seeds/TARGET/`)
//! and every input a fuzzing run found a crash with (`fuzz/regressions/TARGET/`), through the
//! same code the cargo-fuzz targets run (`fuzz/src/targets.rs`, included here). This needs no
//! cargo-fuzz; the fuzzing itself is `cargo fuzz run TARGET`, which CI does on the stable
//! toolchain with `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none` (docs/reliability.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../fuzz/src/targets.rs"]
mod targets;

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for e in entries {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            out.push((path, data));
        }
    }
    out.sort();
    out
}

fn replay(target: &str) {
    let (_, run) = targets::TARGETS.iter().find(|(n, _)| *n == target).expect("a known target");
    let inputs = inputs(target);
    assert!(!inputs.is_empty(), "no stored inputs for {target} under fuzz/seeds/{target}/");
    for (path, data) in &inputs {
        let outcome = std::panic::catch_unwind(|| run(data));
        assert!(outcome.is_ok(), "{target}: the stored input {} is a finding again", path.display());
    }
}

#[test]
fn every_target_has_a_replay_test() {
    let tested = [
        "policy_yaml",
        "protocol_detect",
        "xds_snapshot",
        "http1_head",
        "h2_frames",
        "authz_path",
        "cp_api",
        "load_report",
        "h2_frame_decode",
        "hpack_decode",
    ];
    let all: Vec<&str> = targets::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(all, tested);
    let bins = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/Cargo.toml")).unwrap();
    for t in tested {
        assert!(bins.contains(&format!("name = \"{t}\"")), "fuzz/Cargo.toml has no [[bin]] {t}");
    }
}

#[test]
fn policy_yaml() {
    replay("policy_yaml");
}

#[test]
fn protocol_detect() {
    replay("protocol_detect");
}

#[test]
fn xds_snapshot() {
    replay("xds_snapshot");
}

#[test]
fn http1_head() {
    replay("http1_head");
}

#[test]
fn h2_frames() {
    replay("h2_frames");
}

#[test]
fn authz_path() {
    replay("authz_path");
}

#[test]
fn cp_api() {
    replay("cp_api");
}

#[test]
fn load_report() {
    replay("load_report");
}

#[test]
fn h2_frame_decode() {
    replay("h2_frame_decode");
}

#[test]
fn hpack_decode() {
    replay("hpack_decode");
}

/// The first `cp_api` finding was the target's, not the control plane's: the API closes a
/// keep-alive connection left idle for its header read timeout, and the fuzzer, starved of CPU,
/// reused one after that (`IncompleteMessage`). The target now sends such an input again on a
/// new connection. Between the two inputs the test waits until the API has closed the kept
/// connection: the target's client socket to the API is in CLOSE_WAIT (the API sent its FIN),
/// which the client itself has not seen yet (its connection task runs only while an input is
/// sent), so the second input meets exactly the race of the finding. The fuzz target's API
/// closes idle connections after 1 s rather than the default 10 s.
#[test]
fn cp_api_reuses_no_connection_the_api_closed_for_idleness() {
    let (_, input) = inputs("cp_api")
        .into_iter()
        .find(|(p, _)| p.to_string_lossy().contains("idle-keepalive-closed"))
        .expect("the stored input");
    targets::cp_api(&input);
    let api = targets::cp_api_address();
    assert!(!closed_by_peer(api).is_empty(), "the target keeps its connection to the API open between inputs");
    // The target runs its own runtime; wait on another one, outside any target call.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(outrider_tests::wait::wait_until("the API to close the idle kept-alive connection", || async {
        closed_by_peer(api).iter().all(|&closed| closed)
    }));
    targets::cp_api(&input);
}

/// This process's TCP connections to `peer` (loopback IPv4, from /proc/net/tcp): for each,
/// whether the peer has closed it (CLOSE_WAIT).
fn closed_by_peer(peer: std::net::SocketAddr) -> Vec<bool> {
    let std::net::IpAddr::V4(ip) = peer.ip() else { panic!("the API listens on IPv4 loopback: {peer}") };
    // The kernel prints the address as the 32-bit word in host (little-endian) order.
    let want = format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), peer.port());
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    let own = own_socket_inodes();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&want.as_str()) && own.iter().any(|i| Some(&i.as_str()) == f.get(9)))
                .then(|| f[3] == "08")
        })
        .collect()
}

/// Inodes of the sockets this process holds (/proc/self/fd links `socket:[INODE]`).
fn own_socket_inodes() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| Some(l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned()))
        .collect()
}
