//! Which balancer a cluster asks for: `load_balancing_policy` (gRFC A52: an ordered list of
//! typed policies, the first one this proxy supports wins), else the legacy `lb_policy`.
//!
//! Supported typed policies: least_request (→ P2C peak-EWMA: two random choices, the lower
//! cost wins; `choice_count` other than 2 is read as 2), round_robin, random, and wrr_locality
//! around any of them (the proxy balances over one locality, so the wrapper adds nothing).
use envoy_types::pb::envoy::config::cluster::v3::{Cluster as XCluster, LoadBalancingPolicy, cluster};
use envoy_types::pb::envoy::extensions::load_balancing_policies::wrr_locality::v3::WrrLocality;
use outrider_xds::resources::{
    self as names, LEAST_REQUEST_POLICY_TYPE_URL, RANDOM_POLICY_TYPE_URL, ROUND_ROBIN_POLICY_TYPE_URL,
    WRR_LOCALITY_POLICY_TYPE_URL,
};

use crate::balance::LbPolicy;

/// How deep wrr_locality wrappers may nest (gRPC allows 16).
const MAX_DEPTH: usize = 16;

/// The balancer of `cluster`, or why it has none this proxy supports.
pub(super) fn lb_policy_of(cluster: &XCluster) -> Result<LbPolicy, String> {
    match &cluster.load_balancing_policy {
        Some(list) if !list.policies.is_empty() => first_supported(list, 0),
        _ => legacy(cluster.lb_policy),
    }
}

fn legacy(lb_policy: i32) -> Result<LbPolicy, String> {
    match cluster::LbPolicy::try_from(lb_policy) {
        Ok(cluster::LbPolicy::LeastRequest) => Ok(LbPolicy::P2cEwma),
        Ok(cluster::LbPolicy::RoundRobin) => Ok(LbPolicy::RoundRobin),
        Ok(cluster::LbPolicy::Random) => Ok(LbPolicy::Random),
        other => Err(format!(
            "lb_policy {other:?} is not supported (use LEAST_REQUEST, ROUND_ROBIN or RANDOM, or load_balancing_policy)"
        )),
    }
}

fn first_supported(list: &LoadBalancingPolicy, depth: usize) -> Result<LbPolicy, String> {
    if depth > MAX_DEPTH {
        return Err(format!("load_balancing_policy: wrr_locality nested more than {MAX_DEPTH} deep"));
    }
    let mut seen = Vec::new();
    for policy in &list.policies {
        let Some(typed) = policy.typed_extension_config.as_ref().and_then(|c| c.typed_config.as_ref()) else {
            continue;
        };
        match typed.type_url.as_str() {
            LEAST_REQUEST_POLICY_TYPE_URL => return Ok(LbPolicy::P2cEwma),
            ROUND_ROBIN_POLICY_TYPE_URL => return Ok(LbPolicy::RoundRobin),
            RANDOM_POLICY_TYPE_URL => return Ok(LbPolicy::Random),
            WRR_LOCALITY_POLICY_TYPE_URL => {
                let wrapper: WrrLocality = names::decode_any(WRR_LOCALITY_POLICY_TYPE_URL, typed)
                    .map_err(|e| format!("load_balancing_policy: {e}"))?;
                let Some(inner) = wrapper.endpoint_picking_policy else {
                    return Err("load_balancing_policy: wrr_locality without endpoint_picking_policy".into());
                };
                return first_supported(&inner, depth + 1);
            }
            other => seen.push(other.rsplit('/').next().unwrap_or(other).to_owned()),
        }
    }
    Err(format!(
        "load_balancing_policy lists no policy this proxy supports (got [{}]; supported: least_request, round_robin, random, wrr_locality)",
        seen.join(", ")
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::load_balancing_policy::Policy;
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    use envoy_types::pb::google::protobuf::Any;

    use super::*;

    fn policy(type_url: &str, value: Vec<u8>) -> Policy {
        Policy {
            typed_extension_config: Some(TypedExtensionConfig {
                name: "p".into(),
                typed_config: Some(Any { type_url: type_url.into(), value }),
            }),
        }
    }

    fn cluster(policies: Vec<Policy>, legacy: cluster::LbPolicy) -> XCluster {
        XCluster {
            lb_policy: legacy as i32,
            load_balancing_policy: Some(LoadBalancingPolicy { policies }),
            ..Default::default()
        }
    }

    const RING_HASH: &str = "type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash";

    #[test]
    fn the_first_supported_policy_of_the_list_wins_over_the_legacy_field() {
        let c = cluster(
            vec![policy(RING_HASH, vec![]), policy(LEAST_REQUEST_POLICY_TYPE_URL, vec![])],
            cluster::LbPolicy::Random,
        );
        assert_eq!(lb_policy_of(&c), Ok(LbPolicy::P2cEwma));
        let c = cluster(
            vec![policy(ROUND_ROBIN_POLICY_TYPE_URL, vec![]), policy(RANDOM_POLICY_TYPE_URL, vec![])],
            cluster::LbPolicy::LeastRequest,
        );
        assert_eq!(lb_policy_of(&c), Ok(LbPolicy::RoundRobin));
    }

    #[test]
    fn what_the_translation_writes_reads_back_as_the_policy_balancer() {
        use outrider_xds::policy::LoadBalancer;
        for (balancer, expected) in [
            (LoadBalancer::P2cEwma, LbPolicy::P2cEwma),
            (LoadBalancer::RoundRobin, LbPolicy::RoundRobin),
            (LoadBalancer::Random, LbPolicy::Random),
        ] {
            let yaml = format!(
                "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: s}}\nspec: {{port: 80}}\n---\napiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: s}}\nspec: {{service: s, loadBalancer: {}}}\n",
                balancer.as_str()
            );
            let resources = outrider_xds::translate(&outrider_xds::load_str("t.yaml", &yaml).unwrap());
            let c = resources.clusters.iter().find(|c| c.name == "outbound|80||s").unwrap();
            assert_eq!(lb_policy_of(c), Ok(expected), "{balancer:?}");
        }
    }

    #[test]
    fn wrr_locality_is_unwrapped() {
        use prost::Message as _;
        let inner = LoadBalancingPolicy { policies: vec![policy(RANDOM_POLICY_TYPE_URL, vec![])] };
        let wrapper = WrrLocality { endpoint_picking_policy: Some(inner) };
        let c =
            cluster(vec![policy(WRR_LOCALITY_POLICY_TYPE_URL, wrapper.encode_to_vec())], cluster::LbPolicy::RoundRobin);
        assert_eq!(lb_policy_of(&c), Ok(LbPolicy::Random));
        let empty = WrrLocality::default();
        let c =
            cluster(vec![policy(WRR_LOCALITY_POLICY_TYPE_URL, empty.encode_to_vec())], cluster::LbPolicy::RoundRobin);
        assert!(lb_policy_of(&c).unwrap_err().contains("endpoint_picking_policy"));
    }

    #[test]
    fn a_list_without_a_supported_policy_is_an_error_naming_what_it_got() {
        let c = cluster(vec![policy(RING_HASH, vec![])], cluster::LbPolicy::RoundRobin);
        let err = lb_policy_of(&c).unwrap_err();
        assert!(err.contains("envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash"), "{err}");
        assert!(err.contains("supported: least_request"), "{err}");
    }

    #[test]
    fn without_a_list_the_legacy_field_decides() {
        let mut c = cluster(vec![], cluster::LbPolicy::LeastRequest);
        assert_eq!(lb_policy_of(&c), Ok(LbPolicy::P2cEwma));
        c.load_balancing_policy = None;
        c.lb_policy = cluster::LbPolicy::Maglev as i32;
        assert!(lb_policy_of(&c).unwrap_err().contains("lb_policy"));
    }
}
