//! The harness cannot rot: `loadtest --quick` runs against every target and
//! writes sane results (every target present or explicitly skipped, every
//! workload run with requests or skipped with a reason). It checks that the
//! harness works, never a speed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

/// As `outrider_tests::skip`: say why and return, unless `OUTRIDER_REQUIRE_ALL=1`.
fn skip(why: &str) {
    if require_all() {
        panic!("{why} (OUTRIDER_REQUIRE_ALL=1: prerequisites must be installed)");
    }
    eprintln!("{why}");
}

fn require_all() -> bool {
    std::env::var("OUTRIDER_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

fn installed(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// `$OUTRIDER_PROXY_BIN`, else `outrider-proxy` of this build profile
/// (`target/debug/outrider-proxy` next to `target/debug/deps/quick-HASH`).
fn proxy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OUTRIDER_PROXY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let dir = if dir.ends_with("deps") { dir.parent().unwrap() } else { dir };
    dir.join("outrider-proxy")
}

/// `$OUTRIDER_CONTROL_PLANE_BIN`, else `outrider` next to the proxy binary.
fn control_plane_bin(proxy: &std::path::Path) -> PathBuf {
    if let Some(p) = std::env::var_os("OUTRIDER_CONTROL_PLANE_BIN") {
        return PathBuf::from(p);
    }
    proxy.with_file_name("outrider")
}

const WORKLOADS: [&str; 6] = ["http1", "http1-open-1000", "http1-open-5000", "h2c", "grpc", "tcp"];

#[test]
fn quick_run_writes_sane_results() {
    for tool in ["wrk", "h2load", "taskset"] {
        if !installed(tool) {
            return skip(&format!(
                "skipping the load-harness smoke test: {tool} is not installed (apt-get install haproxy nginx wrk nghttp2-client)"
            ));
        }
    }
    let proxy = proxy_bin();
    if !proxy.exists() {
        return skip(&format!(
            "skipping the load-harness smoke test: {} does not exist (cargo build -p outrider-proxy, or set OUTRIDER_PROXY_BIN)",
            proxy.display()
        ));
    }
    let control_plane = control_plane_bin(&proxy);
    if !control_plane.exists() && require_all() {
        panic!(
            "{} does not exist (cargo build -p outrider-control-plane --bins, or set OUTRIDER_CONTROL_PLANE_BIN; OUTRIDER_REQUIRE_ALL=1)",
            control_plane.display()
        );
    }
    let out = std::env::temp_dir().join(format!("outrider-bench-quick-{}", std::process::id()));
    let start = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("--quick")
        .arg("--out")
        .arg(&out)
        .arg("--proxy")
        .arg(&proxy)
        .arg("--control-plane")
        .arg(&control_plane)
        .stdin(Stdio::null())
        .output()
        .expect("running loadtest");
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "loadtest --quick failed:\n{stderr}");
    eprintln!("loadtest --quick took {took:?}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("results.json")).unwrap();
    assert_eq!(json["quick"], true);
    let targets = json["targets"].as_array().expect("targets");
    for name in ["direct", "outrider", "haproxy", "nginx"] {
        let t = targets.iter().find(|t| t["target"] == name).unwrap_or_else(|| panic!("{name} missing:\n{json:#}"));
        assert!(t["error"].is_null(), "{name} failed to start: {}", t["error"]);
        if let Some(why) = t["skipped"].as_str() {
            assert!(!why.is_empty());
            if require_all() {
                panic!("{name} was skipped: {why} (OUTRIDER_REQUIRE_ALL=1)");
            }
            continue;
        }
        let wls = t["workloads"].as_array().expect("workloads");
        for w in WORKLOADS {
            let wl = wls.iter().find(|x| x["name"] == w).unwrap_or_else(|| panic!("{name}: workload {w} missing"));
            assert!(wl["error"].is_null(), "{name} {w} failed: {}", wl["error"]);
            if wl["skipped"].as_str().is_some_and(|s| !s.is_empty()) {
                continue;
            }
            let n = wl["requests"].as_u64().unwrap_or(0);
            assert!(n > 0, "{name} {w}: no requests (bytes for tcp):\n{wl:#}");
            if w != "tcp" {
                assert!(wl["latency"]["p50_us"].as_f64().unwrap_or(0.0) > 0.0, "{name} {w}: no latency");
            }
            if name != "direct" {
                assert!(wl["cpu_s"].as_f64().is_some(), "{name} {w}: proxy CPU not measured");
            }
        }
        if name != "direct" {
            assert!(t["ready_ms"].as_f64().unwrap_or(0.0) > 0.0, "{name}: no ready time");
            assert!(t["idle_rss_kb"].as_u64().unwrap_or(0) > 0, "{name}: no idle RSS");
            assert!(t["idle_connections"].as_u64().unwrap_or(0) > 0, "{name}: idle connections not measured");
        }
    }
    check_mtls(&json["mtls"]);
    check_idle(&json["idle"]);
    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    assert!(md.contains("### mTLS between sidecars"), "{md}");
    assert!(md.contains("### Idle connections"), "{md}");
    assert!(md.contains("| outrider |"), "{md}");
    for svg in ["latency.svg", "throughput.svg", "cpu.svg"] {
        let s = std::fs::read_to_string(out.join(svg)).unwrap_or_default();
        assert!(s.contains("<svg"), "{svg} is not an SVG");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// The mTLS scenario ran (or says why not): both pairs carried load, the mTLS pair's hop was
/// really mutual TLS and the plaintext pair's was not, and handshakes completed.
fn check_mtls(m: &serde_json::Value) {
    assert!(m.is_object(), "no mtls part in results.json");
    assert!(m["error"].is_null(), "the mTLS scenario failed: {}", m["error"]);
    if let Some(why) = m["skipped"].as_str() {
        assert!(!why.is_empty());
        if require_all() {
            panic!("the mTLS scenario was skipped: {why} (OUTRIDER_REQUIRE_ALL=1)");
        }
        eprintln!("mTLS scenario skipped: {why}");
        return;
    }
    assert!(m["direct_open"]["requests"].as_u64().unwrap_or(0) > 0, "direct open loop: no requests:\n{m:#}");
    for name in ["plaintext", "mtls"] {
        let pairs = m["pairs"].as_array().expect("pairs");
        let p = pairs.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("pair {name} missing:\n{m:#}"));
        for w in ["closed", "open"] {
            let wl = &p[w];
            assert!(wl["error"].is_null(), "{name} {w} failed: {}", wl["error"]);
            if wl["skipped"].as_str().is_some_and(|s| !s.is_empty()) {
                continue;
            }
            assert!(wl["requests"].as_u64().unwrap_or(0) > 0, "{name} {w}: no requests:\n{wl:#}");
            assert!(wl["cpu_s"].as_f64().is_some(), "{name} {w}: sidecar CPU not measured");
        }
        let tls = p["server_inbound_tls_connections"].as_f64().expect("the server's TLS connection count");
        if name == "mtls" {
            assert!(tls >= 1.0, "the mTLS pair's hop was not mutual TLS:\n{p:#}");
        } else {
            assert_eq!(tls, 0.0, "the plaintext pair used TLS:\n{p:#}");
        }
    }
    let h = &m["handshakes"];
    assert!(h["handshakes"].as_u64().unwrap_or(0) > 0, "no mTLS handshakes completed:\n{h:#}");
    assert!(h["server_cpu_us_per_handshake"].as_f64().is_some(), "server CPU per handshake not measured");
}

/// The idle part ran: outrider held connections in all four modes (a fresh process each) and
/// its RSS was read before and with them; HAProxy and nginx in the plaintext modes, or skipped.
fn check_idle(i: &serde_json::Value) {
    assert!(i.is_object(), "no idle part in results.json");
    let rows = i["rows"].as_array().expect("rows");
    for (target, modes) in [
        ("outrider", &["http1", "h2c", "http1-mtls", "h2-mtls"][..]),
        ("haproxy", &["http1", "h2c"][..]),
        ("nginx", &["http1", "h2c"][..]),
    ] {
        for mode in modes {
            let r = rows
                .iter()
                .find(|r| r["target"] == target && r["mode"] == *mode)
                .unwrap_or_else(|| panic!("idle {target} {mode} missing:\n{i:#}"));
            assert!(r["error"].is_null(), "idle {target} {mode} failed: {}", r["error"]);
            if let Some(why) = r["skipped"].as_str() {
                if require_all() {
                    panic!("idle {target} {mode} was skipped: {why} (OUTRIDER_REQUIRE_ALL=1)");
                }
                continue;
            }
            assert_eq!(r["connections"], r["wanted"], "idle {target} {mode}: not every connection held:\n{r:#}");
            assert!(r["rss_before_kb"].as_u64().unwrap_or(0) > 0, "idle {target} {mode}: no RSS before");
            assert!(r["rss_kb"].as_u64().unwrap_or(0) > 0, "idle {target} {mode}: no RSS with them");
        }
    }
}
