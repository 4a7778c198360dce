//! h2spec (HTTP/2 conformance: RFC 7540/9113, HPACK, generic) against the proxy's h2c
//! listeners: outbound (routed by `:authority` to an h2c upstream) and inbound (delivered to an
//! h2c app), with and without `--strict`. Skips when h2spec is not installed, unless
//! `OUTRIDER_REQUIRE_ALL=1` (`.ci/run` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use outrider_tests::policy::{docs, service};
use outrider_tests::{ProxyHarness, h2spec, upstream};

/// Every test of h2spec 2.2.1, and with `--strict` the one strict test more.
const EXPECTED: u32 = 145;
const EXPECTED_STRICT: u32 = 146;

/// Both runs against `addr`, each summary printed, then both checked: every test passed.
async fn assert_passes_h2spec(addr: SocketAddr, listener: &str) {
    let Some(bin) = h2spec::binary() else {
        return outrider_tests::skip("skipping h2spec: it is not installed (.ci/run installs it)");
    };
    let runs = [(false, EXPECTED), (true, EXPECTED_STRICT)];
    let mut results = Vec::new();
    for (strict, expected) in runs {
        let run = h2spec::run(&bin, addr, strict).await;
        eprintln!("h2spec {} {listener}{}: {:?}", h2spec::VERSION, if strict { " --strict" } else { "" }, run.summary);
        results.push((strict, expected, run));
    }
    for (strict, expected, run) in results {
        let s = run.summary;
        assert!(
            s.failed == 0 && s.skipped == 0 && s.passed == expected && s.total == expected,
            "h2spec {} against the {listener} listener{}: {s:?}, expected {expected}/{expected} passed\n{}",
            h2spec::VERSION,
            if strict { " (--strict)" } else { "" },
            h2spec::failures(&run.report)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_h2c_listener_passes_h2spec() {
    let up = upstream::h2().name("h2spec-up").start().await;
    let proxy = ProxyHarness::start(&docs(&[service("h2spec").protocol("http2").endpoint(up.addr).yaml()])).await;
    // h2spec sends `:authority: 127.0.0.1:PORT`: route that authority to the upstream.
    let port = proxy.addrs.outbound.port();
    proxy
        .reload(&docs(&[service("h2spec").protocol("http2").port(port).address("127.0.0.1").endpoint(up.addr).yaml()]))
        .await;
    assert_passes_h2spec(proxy.addrs.outbound, "outbound").await;
    if h2spec::binary().is_some() {
        assert!(up.request_count() > 0, "h2spec's requests reached the upstream through the proxy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_h2c_listener_passes_h2spec() {
    let app = upstream::h2().name("h2spec-app").start().await;
    let proxy = ProxyHarness::start_with(&docs(&[service("other").yaml()]), Some(app.addr.port())).await;
    assert_passes_h2spec(proxy.addrs.inbound, "inbound").await;
    if h2spec::binary().is_some() {
        assert!(app.request_count() > 0, "h2spec's requests reached the app through the proxy");
    }
}
