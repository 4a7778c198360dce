use super::*;

const SERVICE: &str = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: reviews}\nspec: {port: 9080, endpoints: [{address: \"127.0.0.1:9081\"}]}\n";
const POLICY: &str = "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: reviews}\nspec: {service: reviews, connectTimeout: 2s}\n";

fn temp(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("outrider-policies-{name}-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn accepted_writes_survive_a_restart() {
    let dir = temp("restart");
    let p = Policies::open(DataDir::new(dir.clone()), None).unwrap();
    let out = p.apply(&format!("{SERVICE}---\n{POLICY}"), None, false).await.unwrap();
    assert_eq!(out.revision, 1);
    assert!(out.changes.iter().all(|c| c.action == "created"));
    drop(p);
    let p = Policies::open(DataDir::new(dir.clone()), None).unwrap();
    assert!(p.current().traffic_policies.contains_key("reviews"));
    let (revision, listed) = p.list(Some("Service"), None).await;
    assert_eq!((revision, listed.len()), (1, 1));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn an_invalid_write_changes_nothing() {
    let dir = temp("invalid");
    let p = Policies::open(DataDir::new(dir.clone()), None).unwrap();
    p.apply(SERVICE, None, false).await.unwrap();
    let bad = POLICY.replace("connectTimeout: 2s", "connectTimeout: 2s, retriez: 3");
    let Err(WriteError::Invalid(errors)) = p.apply(&bad, None, false).await else {
        panic!("expected a validation error");
    };
    let e = errors.iter().next().unwrap();
    assert_eq!(e.file, "request");
    assert!(e.field.as_deref().unwrap_or("").contains("spec"), "{e}");
    assert!(p.current().traffic_policies.is_empty());
    // Deleting a service a policy refers to is refused too.
    p.apply(POLICY, None, false).await.unwrap();
    assert!(matches!(p.delete("Service", "reviews", None).await, Err(WriteError::Invalid(_))));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_stale_if_match_is_a_conflict() {
    let dir = temp("conflict");
    let p = Policies::open(DataDir::new(dir.clone()), None).unwrap();
    let v = p.apply(SERVICE, Some("0"), false).await.unwrap().revision;
    let updated = SERVICE.replace("9081", "9082");
    p.apply(&updated, Some(&v.to_string()), false).await.unwrap();
    let again = SERVICE.replace("9081", "9083");
    assert!(matches!(p.apply(&again, Some(&v.to_string()), false).await, Err(WriteError::Conflict { .. })));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn directory_documents_combine_with_api_documents() {
    let data = temp("data");
    let dir = temp("dir");
    std::fs::write(dir.join("svc.yaml"), SERVICE).unwrap();
    let p = Policies::open(DataDir::new(data.clone()), Some(dir.clone())).unwrap();
    p.apply(POLICY, None, false).await.unwrap();
    assert!(matches!(p.delete("Service", "reviews", None).await, Err(WriteError::OwnedByDir { .. })));
    // A directory change that breaks the set is refused; the previous set stays.
    std::fs::write(dir.join("svc.yaml"), "kind: Nope\n").unwrap();
    assert!(p.reload_dir().await.is_err());
    assert!(p.current().services.contains_key("reviews"));
    std::fs::write(dir.join("svc.yaml"), SERVICE.replace("9081", "9085")).unwrap();
    assert!(p.reload_dir().await.unwrap());
    std::fs::remove_dir_all(data).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_list_for_a_service_has_only_the_documents_that_name_it() {
    let dir = temp("service-filter");
    let p = Policies::open(DataDir::new(dir.clone()), None).unwrap();
    let ratings = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: ratings}\nspec: {port: 9080}\n---\n\
                   apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: ratings-timeouts}\n\
                   spec: {service: ratings, connectTimeout: 1s}\n";
    p.apply(&format!("{SERVICE}---\n{POLICY}---\n{ratings}"), None, false).await.unwrap();
    let names = |listed: Vec<Listed>| listed.into_iter().map(|l| format!("{}/{}", l.kind, l.name)).collect::<Vec<_>>();
    assert_eq!(names(p.list_where(None, None, Some("reviews")).await.1), ["Service/reviews", "TrafficPolicy/reviews"]);
    assert_eq!(
        names(p.list_where(None, None, Some("ratings")).await.1),
        ["Service/ratings", "TrafficPolicy/ratings-timeouts"],
        "by spec.service, whatever the document's name"
    );
    assert_eq!(names(p.list_where(Some("TrafficPolicy"), None, Some("reviews")).await.1), ["TrafficPolicy/reviews"]);
    assert!(p.list_where(None, None, Some("nope")).await.1.is_empty());
    assert_eq!(p.list(None, None).await.1.len(), 4);
    std::fs::remove_dir_all(dir).unwrap();
}
