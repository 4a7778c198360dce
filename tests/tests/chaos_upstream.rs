//! Chaos at the upstream, through the real `outrider-proxy` binary: upstreams that reset
//! mid-response, stop reading, accept and never answer, or break the protocol (chunked
//! encoding, HTTP/2 frames). For each: what the client sees, that what a policy can save is
//! saved, and that the proxy keeps serving afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http_body_util::BodyExt;
use outrider_tests::binary::{ProxyProcess, proxy_command};
use outrider_tests::client::{self, Client};
use outrider_tests::fault::{self, OnConnect};
use outrider_tests::harness::TempDir;
use outrider_tests::policy::{docs, service};
use outrider_tests::raw::read_request_head;
use outrider_tests::raw_h2::{Conn, Frame};
use outrider_tests::upstream::{self, Upstream};
use outrider_tests::{eventually, wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn traffic_policy(service: &str, spec: &str) -> String {
    format!(
        "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: {service}}}\nspec:\n  service: {service}\n{spec}"
    )
}

/// The proxy binary with `policy`, plus a control service `ok` to prove it still serves.
struct Chaos {
    proxy: ProxyProcess,
    client: Client,
    ok: Upstream,
    _dir: TempDir,
}

impl Chaos {
    async fn start(documents: &[String]) -> Self {
        let ok = upstream::http1().name("ok").start().await;
        let mut all = documents.to_vec();
        all.push(service("ok").endpoint(ok.addr).yaml());
        let dir = TempDir::new("outrider-chaos");
        let policy = dir.write("policy.yaml", &docs(&all));
        let proxy = ProxyProcess::spawn(proxy_command(&policy)).await;
        let client = client::http1(proxy.addrs.outbound);
        Self { proxy, client, ok, _dir: dir }
    }

    /// The process is alive and a healthy service is served as before.
    async fn assert_still_serving(&mut self) {
        assert!(self.proxy.try_wait().is_none(), "the proxy exited; stderr:\n{}", self.proxy.stderr());
        let r = client::send(&self.client, client::get("http://ok:8080/after")).await;
        r.assert_status(200);
        assert_eq!(r.upstream(), Some("ok"));
        assert!(self.ok.request_count() >= 1);
    }
}

/// Send and read as far as the response goes: the status and either the whole body or the
/// error that cut it.
async fn send_lenient(
    client: &Client,
    req: http::Request<http_body_util::Full<Bytes>>,
) -> Result<(u16, Result<Bytes, String>), String> {
    let resp = wait::within("the response head", client.request(req)).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = wait::within("the response body", resp.into_body().collect()).await;
    Ok((status, body.map(|b| b.to_bytes()).map_err(|e| format!("{e:?}"))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_the_response_is_retried_on_another_endpoint_and_reported_without_retries() {
    let a = upstream::http1().name("a").start().await;
    let b = upstream::http1().name("b").start().await;
    let cut = fault::relay(a.addr).await;
    cut.set(|f| f.reset_after_down = Some(0));
    let mut chaos = Chaos::start(&[
        service("saved").endpoint(cut.addr).endpoint(b.addr).yaml(),
        traffic_policy(
            "saved",
            "  loadBalancer: round-robin\n  retries:\n    attempts: 2\n    retryOn: [reset, connect-failure]\n    backoff: {base: 1ms, max: 5ms}\n",
        ),
        service("lost").endpoint(cut.addr).yaml(),
    ])
    .await;

    // With a retry on reset and a healthy second endpoint, every GET is saved.
    for i in 0..20 {
        let r = client::send(&chaos.client, client::get(&format!("http://saved:8080/{i}"))).await;
        r.assert_status(200);
        assert_eq!(r.upstream(), Some("b"));
        assert_eq!(r.echo().path, format!("/{i}"));
    }
    assert!(cut.resets() >= 1, "round robin sent no first try through the resetting relay");
    assert_eq!(b.request_count(), 20);

    // Without another endpoint the client gets a clear 502, not a hang or a dropped connection.
    let r = client::send(&chaos.client, client::get("http://lost:8080/x")).await;
    r.assert_status(502);
    assert_eq!(r.header("x-outrider-local-reply"), Some("upstream-reset"));
    chaos.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_body_is_never_passed_on_as_a_complete_response() {
    let up = upstream::http1().name("big").start().await;
    let cut = fault::relay(up.addr).await;
    let mut chaos = Chaos::start(&[service("big").endpoint(cut.addr).yaml()]).await;
    // The echo of a 256 KiB body is > 256 KiB; cut it after the head and 4 KiB of body.
    cut.set(|f| f.reset_after_down = Some(4096));
    let body = Bytes::from(vec![b'x'; 256 * 1024]);
    for version in ["http1", "h2"] {
        let c = if version == "h2" {
            client::h2(chaos.proxy.addrs.outbound)
        } else {
            client::http1(chaos.proxy.addrs.outbound)
        };
        let outcome = send_lenient(&c, client::request("POST", "http://big:8080/cut", body.clone())).await;
        match outcome {
            // The head went through: the body must end in an error, never a clean short end.
            Ok((200, body)) => {
                assert!(body.is_err(), "{version}: a cut response ended cleanly ({} bytes)", body.unwrap().len())
            }
            // Or the proxy saw the cut before sending the head: a 502 local reply.
            Ok((502, Ok(_))) => {}
            // Over h2 the proxy resets the stream when the upstream body breaks. The head and the
            // first 4 KiB often arrive in the same read as the cut, so the reset follows the
            // response at once; if it overtakes the HEADERS still queued for the stream (h2 drops
            // a reset stream's queued frames), the client sees the reset instead of the head:
            // still an error, never a clean answer.
            Err(e) if version == "h2" && e.contains("Reset(") => {}
            Ok((status, body)) => panic!("{version}: unexpected {status}: {body:?}"),
            Err(e) => panic!("{version}: the request failed before a response head: {e}"),
        }
    }
    assert!(cut.resets() >= 2);
    chaos.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_stops_reading_holds_the_upload_and_the_timeout_answers() {
    let up = upstream::http1().name("full").start().await;
    let stall = fault::relay(up.addr).await;
    let mut chaos =
        Chaos::start(&[service("full").endpoint(stall.addr).yaml(), traffic_policy("full", "  timeout: 1s\n")]).await;
    // The upstream side stops reading: the proxy's writes fill the window and wait.
    stall.set(|f| f.stall_up = true);
    let (tx, body) = client::fed();
    let outbound = chaos.proxy.addrs.outbound;
    let upload =
        tokio::spawn(async move { client::send_streamed(outbound, false, "POST", "http://full:8080/up", body).await });
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    // Far more than the socket buffers hold; the client keeps feeding until the reply ends it.
    for _ in 0..256 {
        if tx.send(chunk.clone()).is_err() {
            break;
        }
    }
    let r = wait::within("the timeout reply", upload).await.unwrap();
    r.assert_status(504);
    assert_eq!(r.header("x-outrider-local-reply"), Some("timeout"));
    assert_eq!(up.complete_requests().len(), 0, "a stalled upload reached the application whole");
    drop(tx);
    stall.heal();
    chaos.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_accepts_and_never_answers_times_out_and_retries_save_idempotent_calls() {
    let good = upstream::http1().name("good").start().await;
    let hole = fault::relay(good.addr).await;
    hole.set(|f| f.on_connect = OnConnect::Blackhole);
    let mut chaos = Chaos::start(&[
        service("hole").endpoint(hole.addr).yaml(),
        traffic_policy("hole", "  timeout: 300ms\n"),
        service("pair").endpoint(hole.addr).endpoint(good.addr).yaml(),
        traffic_policy(
            "pair",
            "  loadBalancer: round-robin\n  timeout: 5s\n  retries:\n    attempts: 1\n    perTryTimeout: 300ms\n    retryOn: [reset]\n    backoff: {base: 1ms, max: 5ms}\n",
        ),
    ])
    .await;
    let r = client::send(&chaos.client, client::get("http://hole:8080/x")).await;
    r.assert_status(504);
    assert_eq!(r.header("x-outrider-local-reply"), Some("timeout"));
    for i in 0..6 {
        let r = client::send(&chaos.client, client::get(&format!("http://pair:8080/{i}"))).await;
        r.assert_status(200);
        assert_eq!(r.upstream(), Some("good"));
    }
    assert!(hole.accepted() >= 2, "no try went to the black hole");
    assert_eq!(hole.forwarded(), 0);
    chaos.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_chunked_encoding_from_the_upstream_is_an_error_for_the_client() {
    let broken = upstream::scripted("broken-chunked", |mut s| async move {
        if read_request_head(&mut s).await {
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nZZ-not-hex\r\n").await;
            // Hold the socket: the client must not wait for more.
            let mut rest = [0u8; 1];
            let _ = s.read(&mut rest).await;
        }
    })
    .await;
    let mut chaos = Chaos::start(&[service("broken").endpoint(broken.addr).yaml()]).await;
    for version in ["http1", "h2"] {
        let c = if version == "h2" {
            client::h2(chaos.proxy.addrs.outbound)
        } else {
            client::http1(chaos.proxy.addrs.outbound)
        };
        match send_lenient(&c, client::get("http://broken:8080/x")).await {
            Ok((200, body)) => assert!(body.is_err(), "{version}: a broken chunked body ended cleanly: {body:?}"),
            Ok((502, Ok(_))) => {}
            // Over h2 the proxy resets the stream when the upstream body breaks; if the reset
            // overtakes the response HEADERS still queued for the stream (h2 drops a reset
            // stream's queued frames), the client sees the reset instead of the head: still an
            // error, never a clean answer.
            Err(e) if version == "h2" && e.contains("Reset(") => {}
            other => panic!("{version}: unexpected outcome {other:?}"),
        }
    }
    chaos.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_protocol_error_from_the_upstream_is_a_502_and_the_next_connection_works() {
    let broken = upstream::scripted("h2-broken", |s| async move {
        let Some(mut conn) = Conn::accept(s).await else { return };
        // Wait for the request's HEADERS, then send DATA on stream 0: a connection error
        // (PROTOCOL_ERROR) for any conforming client.
        while let Some(f) = conn.frame().await {
            if f.kind == outrider_tests::raw_h2::kind::HEADERS {
                conn.send(&Frame::data(0, b"not on stream zero", false)).await;
                break;
            }
        }
        let _ = conn.frames_until_close().await;
    })
    .await;
    let mut chaos = Chaos::start(&[service("h2bad").protocol("http2").endpoint(broken.addr).yaml()]).await;
    for _ in 0..3 {
        let r = client::send(&chaos.client, client::get("http://h2bad:8080/x")).await;
        r.assert_status(502);
        assert_eq!(r.header("x-outrider-local-reply"), Some("upstream-reset"));
    }
    eventually!("each failed request to have used its own upstream connection", broken.connections() >= 2);
    chaos.assert_still_serving().await;
}
