//! Policy file reloads: open streams and connections survive, new requests follow
//! the new routes, and a broken file leaves the previous config in force.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use outrider_tests::client::{self, h1_get};
use outrider_tests::policy::{docs, service};
use outrider_tests::upstream::{self, Upstream};
use outrider_tests::{ProxyHarness, eventually, prom, wait};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Endpoint;

/// The policy with `/x` sent to the subset `version: x_to`.
fn policy(a: &Upstream, b: &Upstream, g: &Upstream, x_to: &str) -> String {
    docs(&[
        service("api")
            .endpoint_labeled(a.addr, &[("version", "a")])
            .endpoint_labeled(b.addr, &[("version", "b")])
            .yaml(),
        format!(
            "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: api}}\nspec:\n  service: api\n  routes:\n    \
             - name: x\n      match: {{pathPrefix: /x}}\n      split: [{{subset: {{version: {x_to}}}, weight: 100}}]\n    \
             - name: main\n      match: {{pathPrefix: /}}\n      split: [{{subset: {{version: a}}, weight: 100}}]\n"
        ),
        service("grpc-echo").protocol("grpc").port(50051).endpoint(g.addr).yaml(),
    ])
}

async fn exchange(tx: &mpsc::Sender<DiscoveryRequest>, rx: &mut Streaming<DiscoveryResponse>, i: u32) {
    tx.send(DiscoveryRequest { version_info: format!("v{i}"), ..Default::default() }).await.unwrap();
    let resp = wait::within("a response on the long-lived stream", rx.message())
        .await
        .expect("the stream is still healthy")
        .expect("a response, not the end");
    assert_eq!(resp.version_info, format!("v{i}"));
}

fn rejected(metrics: &str) -> f64 {
    prom::sum(metrics, "outrider_xds_updates_total", &[("result", "rejected")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_connections_and_applies_new_routes() {
    let a = upstream::http1().name("a").start().await;
    let b = upstream::http1().name("b").start().await;
    let g = upstream::grpc().name("g").start().await;
    let proxy = ProxyHarness::start(&policy(&a, &b, &g, "a")).await;

    // A long-lived HTTP/2 stream (gRPC bidi) and an HTTP/1.1 keep-alive connection.
    let channel = Endpoint::from_shared(format!("http://{}", proxy.addrs.outbound))
        .unwrap()
        .origin("http://grpc-echo:50051".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut ads = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    let mut stream = wait::within("the stream to open", ads.stream_aggregated_resources(ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    exchange(&tx, &mut stream, 1).await;
    let mut conn = client::h1_connection(proxy.addrs.outbound).await;
    assert_eq!(client::send_h1(&mut conn, h1_get("api:8080", "/x/1")).await.upstream(), Some("a"));

    proxy.reload(&policy(&a, &b, &g, "b")).await;

    exchange(&tx, &mut stream, 2).await;
    let r = client::send_h1(&mut conn, h1_get("api:8080", "/x/2")).await;
    assert_eq!(r.upstream(), Some("b"), "the open connection's next request follows the new route");
    let r = client::send_h1(&mut conn, h1_get("api:8080", "/other")).await;
    assert_eq!(r.upstream(), Some("a"), "unchanged routes stay");
    assert_eq!(proxy.get("http://api:8080/x/3").await.upstream(), Some("b"), "a new connection follows the new route");

    // A broken file: rejected, counted, and the last good config stays.
    let before = rejected(&proxy.metrics().await);
    let versions = |dump: serde_json::Value| dump["versions"].clone();
    let good_versions = versions(serde_json::from_slice(&proxy.admin("GET", "/config_dump").await.body).unwrap());
    proxy.write_policy(&policy(&a, &b, &g, "b").replace("weight: 100", "wieght: 100"));
    eventually!("the broken policy file is counted as rejected", rejected(&proxy.metrics().await) > before);
    let now_versions = versions(serde_json::from_slice(&proxy.admin("GET", "/config_dump").await.body).unwrap());
    assert_eq!(now_versions, good_versions, "the config in force did not change");
    assert_eq!(proxy.get("http://api:8080/x/4").await.assert_status(200).upstream(), Some("b"));
    assert_eq!(client::send_h1(&mut conn, h1_get("api:8080", "/x/5")).await.upstream(), Some("b"));
    exchange(&tx, &mut stream, 3).await;

    drop(tx);
    let end = wait::within("the end of the stream", stream.message()).await.expect("the stream ends cleanly");
    assert!(end.is_none());
}

/// SIGHUP reloads the binary's policy file, even a rewrite the 1 s poll cannot
/// see (same length, same modification time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_rewrite_the_poll_cannot_see() {
    use outrider_tests::binary::{ProxyProcess, proxy_command};
    use outrider_tests::harness::TempDir;

    let a = upstream::http1().name("a").start().await;
    let b = upstream::http1().name("b").start().await;
    let dir = TempDir::new("outrider-sighup");
    // Two versions of the same length: pad the shorter with a comment.
    let mut v1 = docs(&[service("s").endpoint(a.addr).yaml()]);
    let mut v2 = docs(&[service("s").endpoint(b.addr).yaml()]);
    let len = v1.len().max(v2.len()) + 2;
    for v in [&mut v1, &mut v2] {
        v.push('#');
        v.push_str(&"-".repeat(len - v.len() - 1));
        v.push('\n');
    }
    let path = dir.write("policy.yaml", &v1);
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut proxy = ProxyProcess::spawn(proxy_command(&path)).await;
    let c = client::http1(proxy.addrs.outbound);
    assert_eq!(client::send(&c, client::get("http://s:8080/")).await.upstream(), Some("a"));
    // The admin server answering means the control runtime (and its SIGHUP handler)
    // is up; a SIGHUP before that kills the process (reported as a proxy bug).
    let admin = client::http1(proxy.addrs.admin);
    client::send(&admin, client::get("http://admin/ready")).await.assert_status(200);

    dir.write("policy.yaml", &v2);
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (meta.modified().unwrap(), meta.len() as usize),
        (mtime, v1.len()),
        "the rewrite is invisible to the poll"
    );

    proxy.signal("HUP");
    eventually!(
        "requests go to the new endpoint after SIGHUP",
        client::send(&c, client::get("http://s:8080/")).await.upstream() == Some("b")
    );
    assert!(proxy.try_wait().is_none(), "SIGHUP does not stop the proxy");
}
