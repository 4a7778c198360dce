//! Rollout → TrafficPolicy: the document that puts a rollout's split in place. The control
//! plane writes it through the same path as any `apply`, so a rollout changes the mesh only the
//! way a person can.
//!
//! Documents are handled as JSON (as the control plane stores them) so that every field the
//! rollout does not own — timeouts, retries, other routes, the order of keys — stays as its
//! author wrote it. The rollout owns the `split` of the routes `spec.routes` names (all routes
//! when empty; a policy without routes gets one named `default`, the name the translation gives
//! the implicit route) and, during a blue/green preview, the route `rollout-preview` in front.

use serde_json::{Map, Value, json};

use crate::policy::{API_VERSION, DEFAULT_ROUTE, PREVIEW_ROUTE, Position, Rollout, Step};

/// The service's TrafficPolicy document with `rollout`'s split at `position`: `current` (the
/// document as stored), or a new document named after the service when there is none.
pub fn traffic_policy_document(current: Option<&Value>, rollout: &Rollout, position: Position) -> Value {
    let spec = &rollout.spec;
    let mut doc = current.cloned().unwrap_or_else(|| {
        json!({
            "apiVersion": API_VERSION,
            "kind": "TrafficPolicy",
            "metadata": {"name": spec.service, "namespace": rollout.metadata.namespace},
            "spec": {"service": spec.service},
        })
    });
    let Some(object) = doc.as_object_mut() else { return doc };
    let spec_value = object.entry("spec").or_insert_with(|| json!({"service": spec.service}));
    if !spec_value.is_object() {
        *spec_value = json!({"service": spec.service});
    }
    let Some(policy) = spec_value.as_object_mut() else { return doc };
    let mut routes = named_routes(policy);
    if routes.is_empty() {
        routes.push(json!({"name": DEFAULT_ROUTE, "split": []}));
    }
    let weight = spec.canary_weight(position);
    let split = json!([
        {"subset": spec.stable, "weight": 100 - weight},
        {"subset": spec.canary, "weight": weight},
    ]);
    for route in routes.iter_mut() {
        if owns(rollout, route)
            && let Some(route) = route.as_object_mut()
        {
            route.insert("split".to_owned(), split.clone());
        }
    }
    let preview = matches!(position, Position::Step(i) if spec.steps().get(i) == Some(&Step::Preview));
    if preview && let Some(blue_green) = &spec.strategy.blue_green {
        routes.insert(
            0,
            json!({
                "name": PREVIEW_ROUTE,
                "match": {"headers": blue_green.preview_headers},
                "split": [{"subset": spec.canary, "weight": 100}],
            }),
        );
    }
    policy.insert("routes".to_owned(), Value::Array(routes));
    doc
}

/// What of a TrafficPolicy document a rollout owns (the splits of its routes and the preview
/// route), to tell an edit of them from an edit of anything else. `None` (no document) owns
/// nothing.
pub fn owned_part(doc: Option<&Value>, rollout: &Rollout) -> Value {
    let Some(policy) = doc.and_then(|d| d.get("spec")).and_then(Value::as_object) else {
        return Value::Null;
    };
    let mut owned = Map::new();
    let routes = policy.get("routes").and_then(Value::as_array).cloned().unwrap_or_default();
    for (i, route) in routes.iter().enumerate() {
        let name = route_name(route, i);
        if name == PREVIEW_ROUTE {
            owned.insert(name, route.clone());
        } else if owns_name(rollout, &name) || (routes.len() == 1 && rollout.spec.routes.is_empty()) {
            owned.insert(name, route.get("split").cloned().unwrap_or(Value::Null));
        }
    }
    Value::Object(owned)
}

/// The routes without the preview route, each with an explicit name (a route without one is
/// named as the validation would name it, from its position before the preview route was put
/// in front), so that a route keeps its name when the preview route comes and goes.
fn named_routes(policy: &Map<String, Value>) -> Vec<Value> {
    let routes = policy.get("routes").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for (i, mut route) in routes.into_iter().enumerate() {
        let name = route_name(&route, i);
        if name == PREVIEW_ROUTE {
            continue;
        }
        if let Some(object) = route.as_object_mut() {
            object.entry("name").or_insert(Value::String(name));
        }
        out.push(route);
    }
    out
}

fn route_name(route: &Value, index: usize) -> String {
    route.get("name").and_then(Value::as_str).map_or_else(|| format!("route-{index}"), str::to_owned)
}

fn owns_name(rollout: &Rollout, name: &str) -> bool {
    name != PREVIEW_ROUTE && (rollout.spec.routes.is_empty() || rollout.spec.routes.iter().any(|r| r == name))
}

fn owns(rollout: &Rollout, route: &Value) -> bool {
    route.get("name").and_then(Value::as_str).is_some_and(|name| owns_name(rollout, name))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::load_str;

    const SERVICE: &str = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: reviews}\nspec: {port: 80}\n";

    fn rollout(strategy: &str, routes: &str) -> Rollout {
        let spec = format!(
            "service: reviews\nstable: {{version: v1}}\ncanary: {{version: v2}}\nstrategy: {strategy}\nroutes: {routes}\n"
        );
        let metadata =
            crate::policy::Metadata { name: "r".into(), namespace: "default".into(), labels: Default::default() };
        Rollout { metadata, spec: serde_yaml_ng::from_str(&spec).unwrap() }
    }

    /// The document is valid together with the service, and translates.
    fn valid(doc: &Value) -> crate::PolicySet {
        let text = format!("{SERVICE}---\n{}", serde_json::to_string(doc).unwrap());
        load_str("t.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn splits(set: &crate::PolicySet) -> Vec<(String, Vec<u32>)> {
        set.traffic_policies["reviews"]
            .spec
            .routes
            .iter()
            .map(|r| (r.name.clone().unwrap(), r.split.iter().map(|s| s.weight).collect()))
            .collect()
    }

    #[test]
    fn a_service_without_a_policy_gets_one_with_the_default_route() {
        let r = rollout("{canary: {steps: [5, 50]}}", "[]");
        let doc = traffic_policy_document(None, &r, Position::Step(1));
        let set = valid(&doc);
        assert_eq!(splits(&set), [("default".to_owned(), vec![50, 50])]);
        let split = &set.traffic_policies["reviews"].spec.routes[0].split;
        assert_eq!(split[1].subset, [("version".to_owned(), "v2".to_owned())].into());
        let promoted = valid(&traffic_policy_document(Some(&doc), &r, Position::Promoted));
        assert_eq!(splits(&promoted), [("default".to_owned(), vec![0, 100])]);
        let back = valid(&traffic_policy_document(Some(&doc), &r, Position::Stable));
        assert_eq!(splits(&back), [("default".to_owned(), vec![100, 0])]);
    }

    #[test]
    fn only_the_owned_routes_change_and_every_other_field_stays() {
        let current = json!({
            "apiVersion": "outrider.io/v1", "kind": "TrafficPolicy", "metadata": {"name": "tp"},
            "spec": {"service": "reviews", "timeout": "2s", "routes": [
                {"match": {"headers": {"x-debug": "1"}}, "split": [{"subset": {"version": "v2"}, "weight": 100}]},
                {"name": "main", "split": [{"weight": 100}], "faults": {}},
            ]},
        });
        let r = rollout("{linear: {stepWeight: 20}}", "[main]");
        let doc = traffic_policy_document(Some(&current), &r, Position::Step(1));
        let set = valid(&doc);
        assert_eq!(splits(&set), [("route-0".to_owned(), vec![100]), ("main".to_owned(), vec![60, 40])]);
        assert_eq!(doc["spec"]["timeout"], "2s");
        assert_eq!(doc["spec"]["routes"][1]["faults"], json!({}));
        // Owned: main's split only; the debug route's is not.
        let owned = owned_part(Some(&doc), &r);
        assert_eq!(owned.as_object().unwrap().keys().collect::<Vec<_>>(), ["main"]);
        let mut edited = doc.clone();
        edited["spec"]["timeout"] = json!("5s");
        edited["spec"]["routes"][0]["split"][0]["weight"] = json!(100);
        assert_eq!(owned_part(Some(&edited), &r), owned, "edits elsewhere leave the owned part alone");
        edited["spec"]["routes"][1]["split"][0]["weight"] = json!(50);
        assert_ne!(owned_part(Some(&edited), &r), owned);
    }

    #[test]
    fn blue_green_preview_adds_a_header_route_in_front_and_keeps_route_names() {
        let current = json!({
            "apiVersion": "outrider.io/v1", "kind": "TrafficPolicy", "metadata": {"name": "tp"},
            "spec": {"service": "reviews", "routes": [
                {"match": {"pathPrefix": "/api"}, "split": [{"weight": 100}]},
                {"split": [{"weight": 100}]},
            ]},
        });
        let r = rollout("{blueGreen: {previewHeaders: {x-env: preview}}}", "[]");
        let preview = traffic_policy_document(Some(&current), &r, Position::Step(0));
        let set = valid(&preview);
        assert_eq!(
            splits(&set),
            [
                (PREVIEW_ROUTE.to_owned(), vec![100]),
                ("route-0".to_owned(), vec![100, 0]),
                ("route-1".to_owned(), vec![100, 0])
            ]
        );
        let first = &set.traffic_policies["reviews"].spec.routes[0];
        assert_eq!(first.matcher.headers, [("x-env".to_owned(), "preview".to_owned())].into());
        let switched = valid(&traffic_policy_document(Some(&preview), &r, Position::Promoted));
        assert_eq!(splits(&switched), [("route-0".to_owned(), vec![0, 100]), ("route-1".to_owned(), vec![0, 100])]);
        assert!(owned_part(Some(&preview), &r).get(PREVIEW_ROUTE).is_some());
        assert_eq!(owned_part(None, &r), Value::Null);
    }
}
