//! Values from any xDS server: out-of-range ones are rejected with a message that
//! names the field; huge but valid ones are capped; none panics.
use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection;
use envoy_types::pb::envoy::config::route::v3::RetryPolicy as XRetryPolicy;
use envoy_types::pb::envoy::config::route::v3::retry_policy::RetryBackOff;
use envoy_types::pb::google::protobuf::{Duration as PDuration, UInt32Value};
use outrider_xds::resources::ext::BreakerStateMachine;

use super::*;
use crate::state::build::MAX_DURATION;

fn pd(seconds: i64, nanos: i32) -> PDuration {
    PDuration { seconds, nanos }
}

fn route(action: RouteAction) -> Result<RoutePolicy, String> {
    route_policy(&XRoute::default(), &action)
}

#[test]
fn protobuf_durations_are_checked_and_capped() {
    assert_eq!(duration_from("f", &pd(0, 1)), Ok(Duration::from_nanos(1)));
    assert_eq!(duration_from("f", &pd(4_294_967, 295_000_000)), Ok(Duration::from_millis(u64::from(u32::MAX))));
    // Envoy's (protobuf's) largest duration is valid, and means "practically never".
    assert_eq!(duration_from("f", &pd(315_576_000_000, 999_999_999)), Ok(MAX_DURATION));
    for (d, says) in [
        (pd(315_576_000_001, 0), "315576000001s is out of range (a google.protobuf.Duration is at most 315576000000s)"),
        (pd(i64::MAX, 0), "out of range"),
        (pd(-1, 0), "negative duration"),
        (pd(0, -1), "negative duration"),
        (pd(1, 1_000_000_000), "nanos 1000000000 is out of range"),
        (pd(1, i32::MAX), "out of range"),
    ] {
        let err = duration_from("route timeout", &d).unwrap_err();
        assert!(err.starts_with("route timeout: ") && err.contains(says), "{d:?}: {err}");
    }
}

#[test]
fn a_route_with_extreme_values_is_capped_or_rejected_by_name() {
    let huge = Some(pd(315_576_000_000, 0));
    let action = RouteAction {
        timeout: huge,
        idle_timeout: huge,
        retry_policy: Some(XRetryPolicy {
            retry_on: "5xx".into(),
            num_retries: Some(UInt32Value { value: 100 }),
            per_try_timeout: huge,
            retry_back_off: Some(RetryBackOff { base_interval: huge, max_interval: None }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let p = route(action.clone()).expect("valid, if extreme");
    assert_eq!(p.timeout, Some(MAX_DURATION));
    let retry = p.retry.unwrap();
    assert_eq!(retry.backoff.base, MAX_DURATION);
    assert_eq!(retry.backoff.max, MAX_DURATION, "10 × base saturates instead of overflowing");
    assert!(retry.backoff.delay(u32::MAX) <= MAX_DURATION);

    let mut too_many = action.clone();
    too_many.retry_policy.as_mut().unwrap().num_retries = Some(UInt32Value { value: u32::MAX });
    let err = route(too_many).unwrap_err();
    assert!(err.contains("retry_policy.num_retries 4294967295"), "{err}");

    let mut bad = action;
    bad.timeout = Some(pd(-5, 0));
    assert!(route(bad).unwrap_err().starts_with("route timeout: negative duration"));
}

#[test]
fn a_cluster_with_extreme_values_is_capped_or_rejected_by_name() {
    let max = |value| Some(UInt32Value { value });
    let mut xc = XCluster {
        outlier_detection: Some(OutlierDetection {
            interval: Some(pd(315_576_000_000, 0)),
            base_ejection_time: Some(pd(0, 1)),
            max_ejection_time: Some(pd(315_576_000_000, 0)),
            max_ejection_percent: max(u32::MAX),
            consecutive_5xx: max(u32::MAX),
            enforcing_failure_percentage: max(100),
            failure_percentage_threshold: max(100),
            failure_percentage_request_volume: max(u32::MAX),
            ..Default::default()
        }),
        ..Default::default()
    };
    let p = cluster_policy(&xc).expect("valid, if extreme");
    let o = p.outlier.unwrap();
    assert_eq!((o.interval, o.max_ejection, o.max_ejection_percent), (MAX_DURATION, MAX_DURATION, 100));

    xc.outlier_detection.as_mut().unwrap().failure_percentage_threshold = max(u32::MAX);
    let err = cluster_policy(&xc).unwrap_err();
    assert!(err.contains("failure_percentage_threshold 4294967295 is over 100"), "{err}");

    let breaker = |window, half_open_calls| {
        let r = Resilience {
            breaker: Some(BreakerStateMachine { window, half_open_calls, ..Default::default() }),
            ..Default::default()
        };
        let any = envoy_types::pb::google::protobuf::Any {
            type_url: names::RESILIENCE_TYPE_URL.into(),
            value: prost::Message::encode_to_vec(&r),
        };
        let mut xc = XCluster::default();
        xc.typed_extension_protocol_options.insert(names::RESILIENCE_KEY.into(), any);
        cluster_policy(&xc)
    };
    assert!(breaker(10_000, 1000).is_ok());
    let err = breaker(u32::MAX, 1).unwrap_err();
    assert!(err.contains("window 4294967295"), "{err}");
    assert!(breaker(10, u32::MAX).unwrap_err().contains("half_open_calls 4294967295"));
}
