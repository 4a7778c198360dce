//! The Kubernetes test bed itself: a real etcd + kube-apiserver (tests/src/kube.rs) serves what
//! the control plane's Kubernetes mode relies on — namespaces, Services, EndpointSlices
//! (discovery.k8s.io/v1), CRDs with CEL validation rules, Pods with native sidecars, and
//! service-account tokens (TokenRequest) checked with TokenReview.
//! Skips when the binaries are absent (build them with tests/k8s/build-testbed.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::Method;
use outrider_tests::kube::{ApiServer, SA_ISSUER};
use serde_json::{Value, json};

async fn namespace(api: &ApiServer, name: &str) {
    api.create("/api/v1/namespaces", &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_version_it_was_built_from_with_rbac() {
    let Some(api) = ApiServer::start().await else { return };
    let version = api.get("/version").await;
    assert_eq!(version["gitVersion"], outrider_tests::kube::version("K8S_VERSION"), "{version}");

    // Anonymous requests are not the admin: RBAC forbids listing namespaces.
    let anon = api.request_as(None, Method::GET, "/api/v1/namespaces", None, "application/json").await.unwrap();
    assert!(matches!(anon.status.as_u16(), 401 | 403), "anonymous list: {} {}", anon.status, anon.body);
    // A client certificate of the test CA authenticates; without a binding it may do nothing.
    let (cert, _key) = api.client_cert("someone", &["developers"]);
    assert!(cert.contains("BEGIN CERTIFICATE"));
    let review = api
        .create(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            &json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
                "user": "someone", "groups": ["developers"],
                "resourceAttributes": {"verb": "list", "resource": "pods", "namespace": "default"}}}),
        )
        .await;
    assert_eq!(review["status"]["allowed"], false, "{review}");
    // The kubeconfig names the server and carries the admin token.
    let kubeconfig: Value = serde_json::from_str(&std::fs::read_to_string(api.kubeconfig()).unwrap()).unwrap();
    assert_eq!(kubeconfig["clusters"][0]["cluster"]["server"], api.url.as_str());
    assert_eq!(kubeconfig["users"][0]["user"]["token"], api.token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_services_endpointslices_crds_with_cel_and_native_sidecars() {
    let Some(api) = ApiServer::start().await else { return };
    namespace(&api, "shop").await;

    // A Service gets a cluster IP from --service-cluster-ip-range; its appProtocol is kept.
    let svc = api
        .create(
            "/api/v1/namespaces/shop/services",
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews"},
                "spec": {"selector": {"app": "reviews"},
                    "ports": [{"name": "http", "port": 8080, "targetPort": 9080, "appProtocol": "http"}]}}),
        )
        .await;
    let cluster_ip = svc["spec"]["clusterIP"].as_str().expect("a cluster IP");
    assert!(cluster_ip.starts_with("10.96."), "cluster IP {cluster_ip}");
    assert_eq!(svc["spec"]["ports"][0]["appProtocol"], "http");

    // An EndpointSlice (discovery.k8s.io/v1) with a ready and a terminating endpoint.
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "reviews-abc", "labels": {"kubernetes.io/service-name": "reviews"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 9080, "protocol": "TCP", "appProtocol": "http"}],
        "endpoints": [
            {"addresses": ["10.1.0.5"], "conditions": {"ready": true, "serving": true, "terminating": false},
             "targetRef": {"kind": "Pod", "name": "reviews-v1-0", "namespace": "shop"}},
            {"addresses": ["10.1.0.6"], "conditions": {"ready": false, "serving": true, "terminating": true}}]});
    api.create("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices", &slice).await;
    let listed = api.get("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dreviews").await;
    let items = listed["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{listed}");
    assert_eq!(items[0]["endpoints"][1]["conditions"]["terminating"], true);
    // Validation is the real one: an endpoint without addresses is refused.
    let bad = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "bad"},
        "addressType": "IPv4", "endpoints": [{"addresses": []}]});
    let r = api
        .request(Method::POST, "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices", Some(&bad))
        .await
        .unwrap();
    assert_eq!(r.status, 422, "{}", r.body);

    // A CRD with a CEL rule (x-kubernetes-validations): the server enforces it.
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.test.outrider.io"},
        "spec": {"group": "test.outrider.io", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object",
                        "x-kubernetes-validations": [{"rule": "self.min <= self.max", "message": "min must not exceed max"}],
                        "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}}},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]}});
    api.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", &crd).await;
    outrider_tests::wait::wait_until("the CRD is established", || async {
        let c = api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.test.outrider.io").await;
        c["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Established" && c["status"] == "True"))
    })
    .await;
    let widgets = "/apis/test.outrider.io/v1/namespaces/shop/widgets";
    let widget = |name: &str, min: i64, max: i64| json!({"apiVersion": "test.outrider.io/v1", "kind": "Widget", "metadata": {"name": name}, "spec": {"min": min, "max": max}});
    // Served as soon as Established may lag the discovery cache by a moment: poll the create.
    let created = outrider_tests::wait::wait_for("the Widget kind to be served", || async {
        let r = api.request(Method::POST, widgets, Some(&widget("ok", 1, 2))).await.ok()?;
        (r.status == 201).then_some(r.body)
    })
    .await;
    assert_eq!(created["spec"]["max"], 2);
    let r = api.request(Method::POST, widgets, Some(&widget("inverted", 3, 2))).await.unwrap();
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body["message"].as_str().unwrap_or("").contains("min must not exceed max"), "{}", r.body);
    // The status subresource takes a condition (what the control plane writes on a rejected object).
    let status = json!({"status": {"conditions": [{"type": "Accepted", "status": "False", "reason": "Invalid", "message": "m"}]}});
    let r = api
        .request_as(
            Some(api.token()),
            Method::PATCH,
            &format!("{widgets}/ok/status"),
            Some(&status),
            "application/merge-patch+json",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(api.get(&format!("{widgets}/ok")).await["status"]["conditions"][0]["reason"], "Invalid");

    // A Pod with a native sidecar: an init container with restartPolicy Always is kept as such.
    api.create(
        "/api/v1/namespaces/shop/serviceaccounts",
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reviews"}}),
    )
    .await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "reviews-v1-0", "labels": {"app": "reviews", "version": "v1"}},
        "spec": {"serviceAccountName": "reviews",
            "initContainers": [{"name": "outrider-proxy", "image": "localhost/outrider-proxy:dev", "restartPolicy": "Always",
                "startupProbe": {"httpGet": {"path": "/ready", "port": 15021}}}],
            "containers": [{"name": "app", "image": "localhost/reviews:dev"}]}});
    let created = api.create("/api/v1/namespaces/shop/pods", &pod).await;
    assert_eq!(created["spec"]["initContainers"][0]["restartPolicy"], "Always", "{created}");
    // The ServiceAccount admission plugin mounted the projected token, as on a real cluster.
    let volumes = created["spec"]["volumes"].as_array().expect("volumes");
    assert!(
        volumes.iter().any(|v| v["projected"]["sources"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["serviceAccountToken"].is_object()))),
        "{created}"
    );
    // …and a sidecar with an invalid restart policy is refused.
    let mut bad = pod.clone();
    bad["metadata"]["name"] = json!("bad");
    bad["spec"]["initContainers"][0]["restartPolicy"] = json!("OnFailure");
    let r = api.request(Method::POST, "/api/v1/namespaces/shop/pods", Some(&bad)).await.unwrap();
    assert_eq!(r.status, 422, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_service_account_tokens_that_token_review_validates() {
    let Some(api) = ApiServer::start().await else { return };
    namespace(&api, "shop").await;
    for sa in ["reviews", "ratings"] {
        api.create(
            "/api/v1/namespaces/shop/serviceaccounts",
            &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}}),
        )
        .await;
    }
    // TokenRequest: a token for reviews with the mesh's own audience.
    let request = |aud: &str| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [aud], "expirationSeconds": 600}})
    };
    let issued = api.create("/api/v1/namespaces/shop/serviceaccounts/reviews/token", &request("outrider")).await;
    let token = issued["status"]["token"].as_str().expect("a token").to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT");

    let review = |token: &str, aud: &str| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": [aud]}})
    };
    let r = api.create("/apis/authentication.k8s.io/v1/tokenreviews", &review(&token, "outrider")).await;
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    assert_eq!(r["status"]["user"]["username"], "system:serviceaccount:shop:reviews", "{r}");
    assert_eq!(r["status"]["audiences"], json!(["outrider"]));
    let groups = r["status"]["user"]["groups"].as_array().expect("groups");
    assert!(groups.contains(&json!("system:serviceaccounts:shop")), "{r}");

    let claims = jwt_claims(&token);
    assert_eq!(claims["iss"], SA_ISSUER);
    assert_eq!(claims["sub"], "system:serviceaccount:shop:reviews");

    // The same token for another audience, a forged signature: refused, with the reason.
    let r = api.create("/apis/authentication.k8s.io/v1/tokenreviews", &review(&token, "someone-else")).await;
    refused(&r, "audiences");
    let mut forged = token.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let r = api.create("/apis/authentication.k8s.io/v1/tokenreviews", &review(&forged, "outrider")).await;
    refused(&r, "invalid");

    // A mesh-audience token is no key to the API server itself…
    let as_mesh = api
        .request_as(Some(&token), Method::GET, "/api/v1/namespaces/shop/secrets", None, "application/json")
        .await
        .unwrap();
    assert_eq!(as_mesh.status, 401, "{}", as_mesh.body);
    // …and an API token of the account authenticates there but RBAC gives it nothing.
    let api_token = api
        .create(
            "/api/v1/namespaces/shop/serviceaccounts/reviews/token",
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}),
        )
        .await;
    let api_token = api_token["status"]["token"].as_str().expect("a token");
    let as_sa = api
        .request_as(Some(api_token), Method::GET, "/api/v1/namespaces/shop/secrets", None, "application/json")
        .await
        .unwrap();
    assert_eq!(as_sa.status, 403, "{}", as_sa.body);

    // Deleting the service account invalidates its tokens.
    let other = api.create("/api/v1/namespaces/shop/serviceaccounts/ratings/token", &request("outrider")).await;
    let other = other["status"]["token"].as_str().expect("a token").to_owned();
    api.request(Method::DELETE, "/api/v1/namespaces/shop/serviceaccounts/ratings", None).await.unwrap().expect(200);
    outrider_tests::wait::wait_until("the deleted account's token is refused", || async {
        let r = api.create("/apis/authentication.k8s.io/v1/tokenreviews", &review(&other, "outrider")).await;
        r["status"]["authenticated"] != true
    })
    .await;
}

/// A TokenReview that did not authenticate (`authenticated` is omitted when false) and says why.
#[track_caller]
fn refused(review: &Value, reason: &str) {
    assert_ne!(review["status"]["authenticated"], true, "{review}");
    assert!(review["status"]["user"]["username"].is_null(), "{review}");
    let error = review["status"]["error"].as_str().unwrap_or("");
    assert!(error.contains(reason), "the error names {reason:?}: {review}");
}

/// The claims of a JWT (unverified: the server verified it).
fn jwt_claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}
