//! The short soak CI runs: `loadtest --soak 60s` (meshed sidecar pair with mTLS, control plane,
//! HTTP/1.1, h2 and gRPC at a fixed rate, a policy change every 10 s) with the binaries of this
//! build. It fails on any failed request or refused policy change, and checks the report has
//! what the long run is judged by (samples of every process, per-minute latency). Never a speed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

fn proxy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OUTRIDER_PROXY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let dir = if dir.ends_with("deps") { dir.parent().unwrap() } else { dir };
    dir.join("outrider-proxy")
}

/// `OUTRIDER_SOAK_SECS` (default 60): how long the soak runs.
fn secs() -> u64 {
    std::env::var("OUTRIDER_SOAK_SECS").ok().and_then(|s| s.parse().ok()).filter(|&s| s > 0).unwrap_or(60)
}

#[test]
fn a_short_soak_fails_no_request_and_samples_every_process() {
    let proxy = proxy_bin();
    let control_plane = std::env::var_os("OUTRIDER_CONTROL_PLANE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| proxy.with_file_name("outrider"));
    for bin in [&proxy, &control_plane] {
        if !bin.exists() {
            let why =
                format!("skipping the short soak: {} does not exist (cargo build --workspace --bins)", bin.display());
            if std::env::var("OUTRIDER_REQUIRE_ALL").is_ok_and(|v| v == "1") {
                panic!("{why} (OUTRIDER_REQUIRE_ALL=1)");
            }
            return eprintln!("{why}");
        }
    }
    let out = std::env::temp_dir().join(format!("outrider-soak-{}", std::process::id()));
    let secs = secs();
    let run = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--soak", &format!("{secs}s"), "--soak-rate", "20", "--out"])
        .arg(&out)
        .arg("--proxy")
        .arg(&proxy)
        .arg("--control-plane")
        .arg(&control_plane)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    let report = std::fs::read_to_string(out.join("soak.json"));
    let _ = std::fs::remove_dir_all(&out);
    assert!(run.status.success(), "the soak failed: {}\n{stderr}", String::from_utf8_lossy(&run.stdout));
    let r: serde_json::Value = serde_json::from_str(&report.expect("soak.json written")).unwrap();
    assert_eq!(r["errors"], 0, "{}", r["first_errors"]);
    assert!(r["requests"].as_u64().unwrap() >= 3 * 20 * secs / 2, "the load ran: {}", r["requests"]);
    assert_eq!(r["policy_change_errors"], 0);
    assert!(r["policy_changes"].as_u64().unwrap() >= secs / 10 - 1, "policy changes: {}", r["policy_changes"]);
    let samples = r["samples"].as_array().unwrap();
    assert!(samples.len() >= (secs / 5) as usize, "{} samples", samples.len());
    for p in ["control-plane", "client-sidecar", "server-sidecar"] {
        assert!(samples.iter().all(|s| s["procs"][p]["rss_kb"].as_u64().is_some_and(|k| k > 0)), "RSS of {p}");
        assert!(samples.iter().all(|s| s["procs"][p]["fds"].as_u64().is_some_and(|n| n > 0)), "fds of {p}");
    }
    let protocols: std::collections::BTreeSet<&str> =
        r["minutes"].as_array().unwrap().iter().map(|m| m["protocol"].as_str().unwrap()).collect();
    assert_eq!(protocols, ["grpc", "h2", "http1"].into_iter().collect());
}
