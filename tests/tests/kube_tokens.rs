//! Join tokens across control plane replicas (tests/src/kube.rs's real API server): the token
//! store is a Secret every replica reads and writes with optimistic concurrency, so a token
//! created through one replica is redeemed through another, a single-use token is redeemed once
//! across them, a revocation at one is a refusal at the other, and concurrent creations at two
//! replicas all survive. Skips when the test bed's binaries are absent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use http::{Method, StatusCode};
use outrider_control_plane::cli::client as api;
use outrider_control_plane::kubernetes::defaults::LEASE_DURATION;
use outrider_proxy::tls::{self, Identity};
use outrider_tests::kube::ApiServer;
use outrider_tests::kube_mesh::{self, Replica, SYSTEM, namespace};
use outrider_tests::wait;
use serde_json::{Value, json};

const CHECKOUT: &str = "spiffe://outrider.local/ns/shop/sa/checkout";
const SECRET: &str = "/api/v1/namespaces/outrider-system/secrets/outrider-join-tokens";

async fn call(
    replica: &Replica,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let server = format!("http://{}", replica.api);
    let reply = api::send_with_root(&server, None, method, path, bearer, body.map(|b| b.to_string()))
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    (reply.status, reply.json())
}

/// A join token for shop/checkout created through `replica`'s API.
async fn create_token(replica: &Replica, single_use: bool) -> String {
    let body = json!({"namespace": "shop", "serviceAccount": "checkout", "singleUse": single_use});
    let (status, reply) = call(replica, Method::POST, "/v1/tokens", Some(&replica.api_token()), Some(body)).await;
    assert_eq!(status, 200, "{reply}");
    reply["token"].as_str().unwrap().to_owned()
}

/// `POST /v1/certificates` at `replica` with `token`.
async fn certificate(replica: &Replica, token: &str) -> (StatusCode, Value) {
    let key = tls::new_key_and_csr(&Identity::parse(CHECKOUT).unwrap()).unwrap();
    call(replica, Method::POST, "/v1/certificates", Some(token), Some(json!({"csr": key.csr_pem}))).await
}

async fn replicas(api: &ApiServer) -> (Replica, Replica) {
    namespace(api, SYSTEM).await;
    kube_mesh::install_crds(api).await;
    tokio::join!(Replica::start(api, "cp-a", LEASE_DURATION), Replica::start(api, "cp-b", LEASE_DURATION))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_created_at_one_replica_is_redeemed_at_another_and_a_revocation_at_one_is_refused_at_the_other() {
    let Some(api) = ApiServer::start().await else { return };
    let (a, b) = replicas(&api).await;

    let token = create_token(&a, false).await;
    // The Secret holds the token's hash, never the token.
    let secret = api.get(SECRET).await;
    let stored =
        base64::engine::general_purpose::STANDARD.decode(secret["data"]["tokens.json"].as_str().unwrap()).unwrap();
    let stored = String::from_utf8(stored).unwrap();
    assert!(!stored.contains(&token) && !stored.contains(&token["ort_".len()..]), "{stored}");
    assert!(stored.contains("checkout"), "{stored}");

    let (status, reply) = certificate(&b, &token).await;
    assert_eq!(status, 200, "the other replica redeems it: {reply}");
    assert_eq!(reply["identity"], CHECKOUT);
    // B's xDS streams accept it too (its watched copy).
    let b_tokens = b.tokens();
    wait::wait_until("replica B's copy to know the token", || async { b_tokens.verify(&token).is_ok() }).await;

    // Revoked at A: refused at B, for certificates and for xDS streams.
    let (status, reply) = call(&a, Method::DELETE, "/v1/tokens/shop/checkout", Some(&a.api_token()), None).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["revoked"], 1, "{reply}");
    let (status, reply) = certificate(&b, &token).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("unknown"), "{reply}");
    wait::wait_until("replica B's copy to drop the revoked token", || async { b_tokens.verify(&token).is_err() }).await;
    // Revocation needs the API token.
    let (status, _) = call(&b, Method::DELETE, "/v1/tokens/shop/checkout", None, None).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_use_token_is_redeemed_once_across_replicas_and_concurrent_creations_all_survive() {
    let Some(api) = ApiServer::start().await else { return };
    let (a, b) = replicas(&api).await;

    let single = create_token(&b, true).await;
    let (status, reply) = certificate(&a, &single).await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = certificate(&b, &single).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("already redeemed"), "{reply}");

    // Both replicas create at once: every write is a compare-and-swap, so none is lost.
    let creations = (0..6).map(|i| {
        let r = if i % 2 == 0 { &a } else { &b };
        create_token(r, false)
    });
    let tokens = futures_util::future::join_all(creations).await;
    for (i, token) in tokens.iter().enumerate() {
        let r = if i % 2 == 0 { &b } else { &a };
        let (status, reply) = certificate(r, token).await;
        assert_eq!(status, 200, "token {i}: {reply}");
    }
}
