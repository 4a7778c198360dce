//! Checks of Rollout documents: within the document, then against the Service and the
//! TrafficPolicy they act on.

use std::collections::{BTreeMap, BTreeSet};

use super::{PolicyError, is_header_name, is_route_name, labels_text, missing_service};
use crate::load::Origin;
use crate::policy::{DEFAULT_ROUTE, PREVIEW_ROUTE, Rollout, Service, TrafficPolicy, defaults};

/// Checks that need no other document.
pub(super) fn check_rollout(origin: &Origin, rollout: &Rollout, errors: &mut Vec<PolicyError>) {
    let spec = &rollout.spec;
    let mut error = |field: &str, message: String| errors.push(origin.error(Some(field.to_owned()), message));
    for (field, labels) in [("spec.stable", &spec.stable), ("spec.canary", &spec.canary)] {
        if labels.is_empty() {
            error(field, "must name the subset's endpoint labels, e.g. {version: v1}".into());
        }
    }
    let disjoint = spec.stable.iter().any(|(k, v)| spec.canary.get(k).is_some_and(|c| c != v));
    if !spec.stable.is_empty() && !spec.canary.is_empty() && !disjoint {
        error(
            "spec.canary",
            format!(
                "{} could select the same endpoints as spec.stable {}: give both a label with different \
                 values (e.g. version: v1 and version: v2)",
                labels_text(&spec.canary),
                labels_text(&spec.stable)
            ),
        );
    }
    check_strategy(spec, &mut error);
    if spec.interval < defaults::rollout::MIN_INTERVAL {
        error(
            "spec.interval",
            format!(
                "must be at least {} (got {})",
                crate::duration::format(defaults::rollout::MIN_INTERVAL),
                crate::duration::format(spec.interval)
            ),
        );
    }
    let mut names = BTreeMap::new();
    for (i, name) in spec.routes.iter().enumerate() {
        let field = format!("spec.routes[{i}]");
        if name == PREVIEW_ROUTE {
            error(&field, format!("\"{PREVIEW_ROUTE}\" is the route a blue/green rollout adds; name another route"));
        } else if !is_route_name(name) {
            error(&field, format!("invalid route name \"{name}\": use 1 to 63 lowercase letters, digits and '-'"));
        }
        if let Some(first) = names.insert(name, i) {
            error(&field, format!("duplicate route \"{name}\" (also spec.routes[{first}])"));
        }
    }
    let analysis = &spec.analysis;
    if !(0.0..=100.0).contains(&analysis.min_success_rate) {
        error(
            "spec.analysis.minSuccessRate",
            format!("must be a percentage between 0 and 100 (got {})", analysis.min_success_rate),
        );
    }
    for (field, value) in [("maxP99Latency", analysis.max_p99_latency), ("maxMeanLatency", analysis.max_mean_latency)] {
        if value.is_some_and(|d| d.is_zero()) {
            error(&format!("spec.analysis.{field}"), "must be more than 0s".into());
        }
    }
    if analysis.min_requests == 0 {
        error("spec.analysis.minRequests", "must be at least 1: a check of no requests would pass anything".into());
    }
    if analysis.abort_after_failures == 0 {
        error("spec.analysis.abortAfterFailures", "must be at least 1".into());
    }
    for (field, hook) in [("gate", &spec.webhooks.gate), ("notify", &spec.webhooks.notify)] {
        let Some(hook) = hook else { continue };
        if let Err(reason) = check_url(&hook.url) {
            error(&format!("spec.webhooks.{field}.url"), reason);
        }
        if hook.timeout.is_zero() {
            error(&format!("spec.webhooks.{field}.timeout"), "must be more than 0s".into());
        }
    }
}

fn check_strategy(spec: &crate::policy::RolloutSpec, error: &mut impl FnMut(&str, String)) {
    let strategy = &spec.strategy;
    let given = [strategy.canary.is_some(), strategy.linear.is_some(), strategy.blue_green.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        error("spec.strategy", "give exactly one of canary, linear or blueGreen".into());
        return;
    }
    if let Some(canary) = &strategy.canary {
        if canary.steps.is_empty() {
            error("spec.strategy.canary.steps", "must list at least one weight, e.g. [5, 10, 25, 50]".into());
        }
        let mut last = 0;
        for (i, weight) in canary.steps.iter().enumerate() {
            let field = format!("spec.strategy.canary.steps[{i}]");
            if !(1..=100).contains(weight) {
                error(&field, format!("must be a percentage between 1 and 100 (got {weight})"));
            } else if *weight <= last {
                error(&field, format!("weights must increase (got {weight} after {last})"));
            }
            last = last.max(*weight);
        }
    }
    if let Some(linear) = &strategy.linear {
        if !(1..=100).contains(&linear.step_weight) {
            error(
                "spec.strategy.linear.stepWeight",
                format!("must be a percentage between 1 and 100 (got {})", linear.step_weight),
            );
        } else if let Some(max) = linear.max_weight
            && !(linear.step_weight..=100).contains(&max)
        {
            error(
                "spec.strategy.linear.maxWeight",
                format!("must be between stepWeight ({}) and 100 (got {max})", linear.step_weight),
            );
        }
    }
    if let Some(blue_green) = &strategy.blue_green {
        if blue_green.preview_headers.is_empty() {
            error(
                "spec.strategy.blueGreen.previewHeaders",
                "must name at least one header, e.g. {x-outrider-preview: \"true\"}".into(),
            );
        }
        for name in blue_green.preview_headers.keys() {
            if !is_header_name(name) {
                error("spec.strategy.blueGreen.previewHeaders", format!("invalid header name \"{name}\""));
            }
        }
    }
}

/// An absolute `http://` or `https://` URL with a host.
fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("invalid URL \"{url}\": {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("invalid URL \"{url}\": use http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("invalid URL \"{url}\": it names no host"));
    }
    Ok(())
}

/// Checks against the rest of the set, once every document is read; returns the rollouts by
/// name.
pub(super) fn check_rollouts(
    docs: Vec<(Origin, Rollout)>,
    services: &BTreeMap<String, (Origin, Service)>,
    base: &BTreeMap<String, Service>,
    policies: &BTreeMap<String, (Origin, TrafficPolicy)>,
    broken: &[(String, String)],
    errors: &mut Vec<PolicyError>,
) -> BTreeMap<String, Rollout> {
    let mut by_service: BTreeMap<String, Origin> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (origin, rollout) in docs {
        let target = &rollout.spec.service;
        match services.get(target).map(|(_, s)| s).or_else(|| base.get(target)) {
            Some(service) => {
                check_against_service(&origin, &rollout, service, errors);
                check_routes(&origin, &rollout, policies.get(target).map(|(_, p)| p), errors);
            }
            None if broken.iter().any(|(k, n)| k == "Service" && n == target) => {}
            None => {
                errors.push(origin.error(Some("spec.service".into()), missing_service(target, services, base, broken)))
            }
        }
        if let Some(first) = by_service.get(target) {
            errors.push(origin.error(
                Some("spec.service".into()),
                format!(
                    "service \"{target}\" already has a Rollout (in {}); one release runs at a time per service",
                    first.describe()
                ),
            ));
            continue;
        }
        by_service.insert(target.clone(), origin);
        out.insert(rollout.metadata.name.clone(), rollout);
    }
    out
}

fn check_against_service(origin: &Origin, rollout: &Rollout, service: &Service, errors: &mut Vec<PolicyError>) {
    let name = service.name();
    if !service.spec.protocol.is_http() {
        errors.push(origin.error(
            Some("spec.service".into()),
            format!("service \"{name}\" is tcp: a rollout splits requests, so it needs an http, http2 or grpc service"),
        ));
        return;
    }
    // Static endpoints: the subsets must exist among them, as a TrafficPolicy's must (sidecars
    // registering later may bring others, so without static endpoints nothing is checked).
    let endpoints = &service.spec.endpoints;
    if endpoints.is_empty() {
        return;
    }
    for (field, subset) in [("spec.stable", &rollout.spec.stable), ("spec.canary", &rollout.spec.canary)] {
        let matches = endpoints.iter().any(|e| subset.iter().all(|(k, v)| e.labels.get(k) == Some(v)));
        if !matches && !subset.is_empty() {
            let have: BTreeSet<String> = endpoints.iter().map(|e| labels_text(&e.labels)).collect();
            errors.push(origin.error(
                Some(field.into()),
                format!(
                    "{} matches no endpoint of service \"{name}\" (endpoint labels: {})",
                    labels_text(subset),
                    have.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
}

/// `spec.routes` must name routes of the service's TrafficPolicy (or the implicit `default`).
fn check_routes(origin: &Origin, rollout: &Rollout, policy: Option<&TrafficPolicy>, errors: &mut Vec<PolicyError>) {
    let existing: Vec<String> = match policy.map(|p| &p.spec.routes) {
        Some(routes) if !routes.is_empty() => {
            routes.iter().enumerate().map(|(i, r)| r.name_or_default(i)).filter(|n| n != PREVIEW_ROUTE).collect()
        }
        _ => vec![DEFAULT_ROUTE.to_owned()],
    };
    for (i, name) in rollout.spec.routes.iter().enumerate() {
        if !existing.contains(name) {
            errors.push(origin.error(
                Some(format!("spec.routes[{i}]")),
                format!(
                    "the TrafficPolicy of service \"{}\" has no route \"{name}\" (routes: {})",
                    rollout.spec.service,
                    existing.join(", ")
                ),
            ));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "rollout_tests.rs"]
mod tests;
