//! `kind: Rollout`: a progressive delivery of a new version of a service (its canary subset)
//! next to the version in service (its stable subset), run by the control plane step by step
//! and judged by the numbers the proxies report. Semantics: docs/rollouts.md.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::Metadata;

/// Defaults of the Rollout fields (reached as `policy::defaults::rollout`).
pub mod defaults {
    use std::time::Duration;

    /// `spec.interval`: how long each step lasts (and each check).
    pub const INTERVAL: Duration = Duration::from_secs(60);
    /// `spec.analysis.minSuccessRate`, percent.
    pub const MIN_SUCCESS_RATE: f64 = 99.0;
    /// `spec.analysis.minRequests`: canary requests a check needs before it is judged.
    pub const MIN_REQUESTS: u64 = 20;
    /// `spec.analysis.abortAfterFailures`: failed checks that abort the rollout.
    pub const ABORT_AFTER_FAILURES: u32 = 2;
    /// `spec.webhooks.*.timeout`.
    pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
    /// `spec.strategy.blueGreen.previewHeaders`.
    pub const PREVIEW_HEADER: (&str, &str) = ("x-outrider-preview", "true");
    /// The shortest `spec.interval` accepted.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

    pub(crate) fn interval() -> Duration {
        INTERVAL
    }
    pub(crate) fn min_success_rate() -> f64 {
        MIN_SUCCESS_RATE
    }
    pub(crate) fn min_requests() -> u64 {
        MIN_REQUESTS
    }
    pub(crate) fn abort_after_failures() -> u32 {
        ABORT_AFTER_FAILURES
    }
    pub(crate) fn webhook_timeout() -> Duration {
        WEBHOOK_TIMEOUT
    }
    pub(crate) fn preview_headers() -> std::collections::BTreeMap<String, String> {
        [(PREVIEW_HEADER.0.to_owned(), PREVIEW_HEADER.1.to_owned())].into()
    }
}

/// Name of the route a blue/green rollout adds in front of the others while the new version
/// is in preview (reserved in the service's TrafficPolicy).
pub const PREVIEW_ROUTE: &str = "rollout-preview";

/// Name of the route a rollout adds when the service's TrafficPolicy has none (the name the
/// translation gives the implicit route, so the `route` metrics label stays the same).
pub const DEFAULT_ROUTE: &str = "default";

/// `kind: Rollout`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    pub metadata: Metadata,
    pub spec: RolloutSpec,
}

impl Rollout {
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

/// `spec` of a Rollout.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutSpec {
    /// The Service being released (HTTP protocols only: the split is per request).
    pub service: String,
    /// Endpoint labels of the version in service.
    pub stable: BTreeMap<String, String>,
    /// Endpoint labels of the new version.
    pub canary: BTreeMap<String, String>,
    /// How traffic moves: exactly one of `canary`, `linear`, `blueGreen`.
    pub strategy: Strategy,
    /// How long each step (and each check) lasts.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::duration::schema"))]
    #[serde(default = "defaults::interval", deserialize_with = "crate::duration::deserialize")]
    pub interval: Duration,
    /// Names of the routes of the service's TrafficPolicy whose split the rollout sets; empty:
    /// every route.
    #[serde(default)]
    pub routes: Vec<String>,
    /// What a check looks at.
    #[serde(default)]
    pub analysis: Analysis,
    /// Optional HTTP callbacks.
    #[serde(default)]
    pub webhooks: Webhooks,
    /// While true, the rollout stays at its step (it is paused as soon as it would progress);
    /// setting it back to false resumes it. Not part of the release: changing it never starts
    /// the rollout over.
    #[serde(default)]
    pub paused: bool,
}

/// `spec.strategy`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Strategy {
    pub canary: Option<CanaryStrategy>,
    pub linear: Option<LinearStrategy>,
    pub blue_green: Option<BlueGreenStrategy>,
}

/// `strategy.canary`: explicit weights.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CanaryStrategy {
    /// The canary's weight (percent) at each step, increasing, each 1..=100.
    pub steps: Vec<u32>,
}

/// `strategy.linear`: equal steps.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LinearStrategy {
    /// Percent added at each step, 1..=100.
    pub step_weight: u32,
    /// The last step's weight; absent: the largest multiple of `stepWeight` up to 100.
    #[serde(default)]
    pub max_weight: Option<u32>,
}

/// `strategy.blueGreen`: the new version reachable only with the preview headers until it
/// passes a check, then all traffic at once.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlueGreenStrategy {
    /// Headers (name → exact value) that reach the new version during the preview.
    #[serde(default = "defaults::preview_headers")]
    pub preview_headers: BTreeMap<String, String>,
}

/// `spec.analysis`. A check passes when every bound given holds for the canary's requests of
/// the check's interval.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Analysis {
    /// Lowest share of successful requests, percent.
    pub min_success_rate: f64,
    /// Highest 99th percentile latency.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::duration::schema"))]
    #[serde(deserialize_with = "crate::duration::deserialize_option")]
    pub max_p99_latency: Option<Duration>,
    /// Highest mean latency.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::duration::schema"))]
    #[serde(deserialize_with = "crate::duration::deserialize_option")]
    pub max_mean_latency: Option<Duration>,
    /// Canary requests a check needs before it is judged; until then the step waits.
    pub min_requests: u64,
    /// Failed checks that abort the rollout.
    pub abort_after_failures: u32,
}

impl Default for Analysis {
    fn default() -> Self {
        Self {
            min_success_rate: defaults::min_success_rate(),
            max_p99_latency: None,
            max_mean_latency: None,
            min_requests: defaults::min_requests(),
            abort_after_failures: defaults::abort_after_failures(),
        }
    }
}

/// `spec.webhooks`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Webhooks {
    /// Called (POST, JSON) before each step and before the promotion; the step waits until it
    /// answers 200, asking again every interval.
    #[serde(default)]
    pub gate: Option<Webhook>,
    /// Told (POST, JSON) of every step, promotion, abort, pause and resume.
    #[serde(default)]
    pub notify: Option<Webhook>,
}

/// One webhook.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://` or `https://` URL.
    pub url: String,
    /// How long one call may take.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::duration::schema"))]
    #[serde(default = "defaults::webhook_timeout", deserialize_with = "crate::duration::deserialize")]
    pub timeout: Duration,
}

/// What traffic the canary gets at one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// This share (percent) of the owned routes' requests.
    Weight(u32),
    /// Only requests with the preview headers (blue/green).
    Preview,
}

/// Where a rollout's split is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// At step `i` (0-based) of [`RolloutSpec::steps`].
    Step(usize),
    /// Promoted: all traffic to the canary, the stable version kept at weight 0.
    Promoted,
    /// Aborted or rolled back: all traffic to the stable version, the canary at weight 0.
    Stable,
}

impl RolloutSpec {
    /// The steps, in order. Empty only for an invalid spec.
    pub fn steps(&self) -> Vec<Step> {
        if let Some(canary) = &self.strategy.canary {
            return canary.steps.iter().map(|w| Step::Weight(*w)).collect();
        }
        if let Some(linear) = &self.strategy.linear {
            if linear.step_weight == 0 {
                return Vec::new();
            }
            let max = linear.max_weight.unwrap_or(100).min(100);
            return (1..).map(|k| k * linear.step_weight).take_while(|w| *w <= max).map(Step::Weight).collect();
        }
        if self.strategy.blue_green.is_some() {
            return vec![Step::Preview];
        }
        Vec::new()
    }

    /// `canary`, `linear` or `blueGreen`.
    pub fn strategy_name(&self) -> &'static str {
        match (&self.strategy.canary, &self.strategy.linear) {
            (Some(_), _) => "canary",
            (None, Some(_)) => "linear",
            (None, None) => "blueGreen",
        }
    }

    /// The canary's weight on the owned routes at `position`.
    pub fn canary_weight(&self, position: Position) -> u32 {
        match position {
            Position::Step(i) => match self.steps().get(i) {
                Some(Step::Weight(w)) => *w,
                Some(Step::Preview) | None => 0,
            },
            Position::Promoted => 100,
            Position::Stable => 0,
        }
    }
}
