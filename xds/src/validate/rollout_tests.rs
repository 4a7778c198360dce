//! Tests of the Rollout checks.

use crate::load_str;
use crate::policy::{Position, Step};

fn errors(yaml: &str) -> Vec<String> {
    match load_str("t.yaml", yaml) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

const SERVICE: &str = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: reviews}\nspec: {port: 80}\n---\n";

fn rollout(spec: &str) -> String {
    format!("{SERVICE}apiVersion: outrider.io/v1\nkind: Rollout\nmetadata: {{name: reviews}}\nspec:\n{spec}")
}

const BASE: &str = "  service: reviews\n  stable: {version: v1}\n  canary: {version: v2}\n";

#[test]
fn a_full_rollout_loads_with_its_defaults() {
    let set =
        load_str("t.yaml", &rollout(&format!("{BASE}  strategy: {{canary: {{steps: [5, 10, 25, 50]}}}}\n"))).unwrap();
    let r = &set.rollouts["reviews"];
    assert_eq!(r.spec.interval, std::time::Duration::from_secs(60));
    assert_eq!(r.spec.analysis.min_success_rate, 99.0);
    assert_eq!(r.spec.analysis.min_requests, 20);
    assert_eq!(r.spec.analysis.abort_after_failures, 2);
    assert_eq!(r.spec.steps(), [5, 10, 25, 50].map(Step::Weight));
    assert_eq!(r.spec.canary_weight(Position::Step(2)), 25);
    assert_eq!(set.rollout_of("reviews").map(|r| r.name()), Some("reviews"));

    let full = format!(
        "{BASE}  strategy: {{linear: {{stepWeight: 30}}}}\n  interval: 2s\n  analysis: {{minSuccessRate: 99.5, \
         maxP99Latency: 300ms, maxMeanLatency: 100ms, minRequests: 50, abortAfterFailures: 1}}\n  webhooks:\n    \
         gate: {{url: \"http://127.0.0.1:9000/gate\"}}\n    notify: {{url: \"https://hooks.example/r\", timeout: 1s}}\n"
    );
    let set = load_str("t.yaml", &rollout(&full)).unwrap();
    let spec = &set.rollouts["reviews"].spec;
    assert_eq!(spec.steps(), [30, 60, 90].map(Step::Weight));
    assert_eq!(spec.webhooks.gate.as_ref().unwrap().timeout, std::time::Duration::from_secs(5));
    let bg = load_str("t.yaml", &rollout(&format!("{BASE}  strategy: {{blueGreen: {{}}}}\n"))).unwrap();
    let spec = &bg.rollouts["reviews"].spec;
    assert_eq!(spec.steps(), [Step::Preview]);
    assert_eq!(spec.strategy.blue_green.as_ref().unwrap().preview_headers["x-outrider-preview"], "true");
    let linear =
        load_str("t.yaml", &rollout(&format!("{BASE}  strategy: {{linear: {{stepWeight: 25, maxWeight: 50}}}}\n")))
            .unwrap();
    assert_eq!(linear.rollouts["reviews"].spec.steps(), [25, 50].map(Step::Weight));
}

#[test]
fn every_field_error_names_its_field_and_what_is_allowed() {
    // Every message carries FILE:LINE:COLUMN of its field (docs/policy.md, "Error messages"); the
    // Rollout is document 2, its spec from line 10.
    let at = |line: u32, column: u32| format!("t.yaml:{line}:{column}: document 2 (Rollout/reviews):");
    let cases = [
        (
            "  service: reviews\n  stable: {version: v1}\n  canary: {version: v1, track: canary}\n  strategy: {canary: {steps: [5]}}\n",
            format!(
                "{} spec.canary: {{track: canary, version: v1}} could select the same endpoints as spec.stable {{version: v1}}: give both a label with different values (e.g. version: v1 and version: v2)",
                at(12, 3)
            ),
        ),
        (
            &format!("{BASE}  strategy: {{}}\n"),
            format!("{} spec.strategy: give exactly one of canary, linear or blueGreen", at(13, 3)),
        ),
        (
            &format!("{BASE}  strategy: {{canary: {{steps: [10, 5, 101]}}}}\n"),
            format!("{} spec.strategy.canary.steps[1]: weights must increase (got 5 after 10)", at(13, 35)),
        ),
        (
            &format!("{BASE}  strategy: {{linear: {{stepWeight: 40, maxWeight: 20}}}}\n"),
            format!("{} spec.strategy.linear.maxWeight: must be between stepWeight (40) and 100 (got 20)", at(13, 39)),
        ),
        (
            &format!("{BASE}  strategy: {{canary: {{steps: [5]}}}}\n  interval: 10ms\n"),
            format!("{} spec.interval: must be at least 100ms (got 10ms)", at(14, 3)),
        ),
        (
            &format!("{BASE}  strategy: {{canary: {{steps: [5]}}}}\n  analysis: {{minSuccessRate: 120}}\n"),
            format!("{} spec.analysis.minSuccessRate: must be a percentage between 0 and 100 (got 120)", at(14, 14)),
        ),
        (
            &format!("{BASE}  strategy: {{canary: {{steps: [5]}}}}\n  analysis: {{minRequests: 0}}\n"),
            format!(
                "{} spec.analysis.minRequests: must be at least 1: a check of no requests would pass anything",
                at(14, 14)
            ),
        ),
        (
            &format!("{BASE}  strategy: {{canary: {{steps: [5]}}}}\n  webhooks: {{gate: {{url: \"ftp://x/y\"}}}}\n"),
            format!("{} spec.webhooks.gate.url: invalid URL \"ftp://x/y\": use http:// or https://", at(14, 21)),
        ),
        (
            &format!("{BASE}  strategy: {{canary: {{steps: [5]}}}}\n  routes: [main]\n"),
            format!(
                "{} spec.routes[0]: the TrafficPolicy of service \"reviews\" has no route \"main\" (routes: default)",
                at(14, 12)
            ),
        ),
        (
            &format!("{BASE}  strategy: {{canray: {{steps: [5]}}}}\n"),
            format!(
                "{} spec.strategy.canray: unknown field; did you mean `canary`? (expected one of canary, linear, blueGreen)",
                at(13, 14)
            ),
        ),
        (
            "  service: ratings\n  stable: {version: v1}\n  canary: {version: v2}\n  strategy: {canary: {steps: [5]}}\n",
            format!("{} spec.service: no Service named \"ratings\" (known services: reviews)", at(10, 3)),
        ),
    ];
    for (spec, want) in cases {
        let got = errors(&rollout(spec));
        assert!(got.contains(&want), "for\n{spec}\nwant {want}\ngot {got:#?}");
    }
}

#[test]
fn subsets_must_exist_among_static_endpoints_and_one_rollout_per_service() {
    let yaml = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: reviews}\nspec:\n  port: 80\n  endpoints: [{address: \"127.0.0.1:1\", labels: {version: v1}}]\n---\napiVersion: outrider.io/v1\nkind: Rollout\nmetadata: {name: a}\nspec: {service: reviews, stable: {version: v1}, canary: {version: v2}, strategy: {blueGreen: {}}}\n---\napiVersion: outrider.io/v1\nkind: Rollout\nmetadata: {name: b}\nspec: {service: reviews, stable: {version: v1}, canary: {version: v3}, strategy: {blueGreen: {}}}\n";
    let got = errors(yaml);
    assert!(
        got.contains(&"t.yaml:11:49: document 2 (Rollout/a): spec.canary: {version: v2} matches no endpoint of service \"reviews\" (endpoint labels: {version: v1})".to_owned()),
        "{got:#?}"
    );
    assert!(
        got.contains(&"t.yaml:16:8: document 3 (Rollout/b): spec.service: service \"reviews\" already has a Rollout (in t.yaml document 2); one release runs at a time per service".to_owned()),
        "{got:#?}"
    );
    let tcp = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: db}\nspec: {protocol: tcp, port: 5432, addresses: [\"10.0.0.1\"]}\n---\napiVersion: outrider.io/v1\nkind: Rollout\nmetadata: {name: db}\nspec: {service: db, stable: {v: a}, canary: {v: b}, strategy: {canary: {steps: [50]}}}\n";
    assert_eq!(
        errors(tcp),
        [
            "t.yaml:9:8: document 2 (Rollout/db): spec.service: service \"db\" is tcp: a rollout splits requests, so it needs an http, http2 or grpc service"
        ]
    );
}

#[test]
fn a_rollout_changes_no_xds_version() {
    let bare = load_str("t.yaml", SERVICE.trim_end_matches("---\n")).unwrap();
    let with = load_str("t.yaml", &rollout(&format!("{BASE}  strategy: {{canary: {{steps: [5]}}}}\n"))).unwrap();
    assert_eq!(crate::translate(&bare).version, crate::translate(&with).version);
}
