//! gRPC through the outbound port: a unary call, a bidirectional stream, and a
//! call to an unknown service answered with a gRPC status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request as AttrRequest};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use outrider_tests::policy::{docs, service};
use outrider_tests::upstream::{self, Upstream};
use outrider_tests::{ProxyHarness, wait};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// A channel to the proxy's outbound port whose requests carry `:authority` `authority`.
async fn channel(proxy: &ProxyHarness, authority: &str) -> Channel {
    Endpoint::from_shared(format!("http://{}", proxy.addrs.outbound))
        .unwrap()
        .origin(format!("http://{authority}").parse().unwrap())
        .connect()
        .await
        .expect("connect to the proxy")
}

fn check_request(path: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest { path: path.into(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

async fn setup() -> (Upstream, ProxyHarness) {
    let up = upstream::grpc().name("grpc-up").start().await;
    let proxy =
        ProxyHarness::start(&docs(&[service("grpc-echo").protocol("grpc").port(50051).endpoint(up.addr).yaml()])).await;
    (up, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_check() {
    let (up, proxy) = setup().await;
    let mut c = AuthorizationClient::new(channel(&proxy, "grpc-echo:50051").await);
    let resp = wait::within("Check", c.check(check_request("/some/path"))).await.expect("Check succeeds");
    assert_eq!(resp.metadata().get("x-upstream").and_then(|v| v.to_str().ok()), Some("grpc-up"));
    let status = resp.into_inner().status.expect("a status in the CheckResponse");
    assert_eq!(status.message, "grpc-up checked /some/path");
    let seen = up.last();
    assert_eq!(seen.path, "/envoy.service.auth.v3.Authorization/Check");
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.header("te"), Some("trailers"), "TE: trailers survives header hygiene");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_stream_in_order() {
    let (_up, proxy) = setup().await;
    let mut c = AggregatedDiscoveryServiceClient::new(channel(&proxy, "grpc-echo:50051").await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut responses = wait::within("the stream to open", c.stream_aggregated_resources(ReceiverStream::new(rx)))
        .await
        .expect("StreamAggregatedResources starts")
        .into_inner();
    // One message at a time: each answer must arrive while the stream stays open.
    for i in 1..=3 {
        let req = DiscoveryRequest {
            version_info: format!("v{i}"),
            response_nonce: format!("nonce-{i}"),
            type_url: "type.googleapis.com/test".into(),
            ..Default::default()
        };
        tx.send(req).await.unwrap();
        let resp = wait::within("a response on the stream", responses.message())
            .await
            .expect("no stream error")
            .expect("a response, not the end of the stream");
        assert_eq!(
            (resp.version_info.as_str(), resp.nonce.as_str()),
            (format!("v{i}").as_str(), format!("nonce-{i}").as_str())
        );
        assert_eq!(resp.control_plane.map(|c| c.identifier).as_deref(), Some("grpc-up"));
    }
    drop(tx);
    let end = wait::within("the end of the stream", responses.message()).await.expect("the stream ends with status OK");
    assert!(end.is_none(), "no more responses after the client closed: {end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_gets_a_grpc_status() {
    let (up, proxy) = setup().await;
    let mut c = AuthorizationClient::new(channel(&proxy, "no-such-service:50051").await);
    let err = wait::within("Check to an unknown service", c.check(check_request("/"))).await.expect_err("no route");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    // A real grpc-status from the proxy, not tonic mapping an HTTP 404 to a code.
    assert!(err.message().contains("no-such-service"), "the proxy's own message: {err:?}");
    assert_eq!(err.metadata().get("x-outrider-local-reply").and_then(|v| v.to_str().ok()), Some("no-route"));
    assert_eq!(up.request_count(), 0);

    // A known service whose endpoint is gone: UNAVAILABLE, also as a gRPC status.
    drop(up);
    let mut c = AuthorizationClient::new(channel(&proxy, "grpc-echo:50051").await);
    let err = wait::within("Check to a dead endpoint", c.check(check_request("/"))).await.expect_err("connect failure");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(err.metadata().get("x-outrider-local-reply").and_then(|v| v.to_str().ok()), Some("connect-failure"));
}
