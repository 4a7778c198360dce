//! The generator that keeps each service's resources against one that starts from nothing,
//! over random sequences of changes: after every change both must serve the same resources,
//! and a resource's version must move exactly when the resource changed.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::*;

/// A small mesh the changes act on, rendered as policy documents.
#[derive(Clone, Debug)]
struct Mesh {
    services: Vec<Option<Svc>>,
    /// Per service (same index): its TrafficPolicy.
    policies: Vec<Option<Policy>>,
    /// (name, service index, deny, identity)
    authz: Vec<(String, usize, bool, String)>,
    telemetry: Option<u32>,
    /// Per service: hosts set as Kubernetes discovery sets them (by index of other services
    /// whose names they claim).
    hosts: Vec<Vec<usize>>,
}

#[derive(Clone, Debug)]
struct Svc {
    protocol: &'static str,
    port: u16,
    address: Option<u8>,
    strict: bool,
    /// (port, version label)
    endpoints: Vec<(u16, &'static str)>,
}

#[derive(Clone, Debug)]
struct Policy {
    /// Weight of v1 in a v1/v2 split; `None`: no routes.
    split: Option<u32>,
    idle_secs: Option<u32>,
    /// Index of the service the breaker falls back to.
    fallback: Option<usize>,
    faults: bool,
    balancer: &'static str,
}

const SERVICES: usize = 6;
const PROTOCOLS: [&str; 3] = ["http", "grpc", "tcp"];
const BALANCERS: [&str; 3] = ["p2c-ewma", "round-robin", "random"];

fn name(i: usize) -> String {
    format!("s{i}")
}

impl Mesh {
    fn random(rng: &mut fastrand::Rng) -> Self {
        let mut mesh = Mesh {
            services: (0..SERVICES).map(|_| rng.bool().then(|| Svc::random(rng))).collect(),
            policies: vec![None; SERVICES],
            authz: Vec::new(),
            telemetry: None,
            hosts: vec![Vec::new(); SERVICES],
        };
        for _ in 0..8 {
            mesh.change(rng);
        }
        mesh
    }

    /// One random change, as one object of a cluster changes.
    fn change(&mut self, rng: &mut fastrand::Rng) {
        let i = rng.usize(..SERVICES);
        match rng.u8(..12) {
            0 => self.services[i] = if self.services[i].is_some() { None } else { Some(Svc::random(rng)) },
            1 => {
                if let Some(s) = &mut self.services[i] {
                    s.port = 8000 + rng.u16(..4);
                }
            }
            2 => {
                // An EndpointSlice moves a port, gains or loses an endpoint, relabels one.
                if let Some(s) = &mut self.services[i] {
                    match rng.u8(..3) {
                        0 if !s.endpoints.is_empty() => {
                            let e = rng.usize(..s.endpoints.len());
                            s.endpoints[e].0 = 9000 + rng.u16(..5);
                        }
                        1 => s.endpoints.push((9000 + rng.u16(..5), if rng.bool() { "v1" } else { "v2" })),
                        _ if !s.endpoints.is_empty() => {
                            let e = rng.usize(..s.endpoints.len());
                            s.endpoints[e].1 = if s.endpoints[e].1 == "v1" { "v2" } else { "v1" };
                        }
                        _ => s.endpoints.clear(),
                    }
                }
            }
            3 => {
                if let Some(s) = &mut self.services[i] {
                    s.protocol = PROTOCOLS[rng.usize(..PROTOCOLS.len())];
                }
            }
            4 => {
                if let Some(s) = &mut self.services[i] {
                    s.address = if s.address.is_some() && rng.bool() { None } else { Some(rng.u8(1..4)) };
                    s.strict = rng.bool();
                }
            }
            5 | 6 => {
                self.policies[i] = rng.bool().then(|| Policy {
                    split: rng.bool().then(|| rng.u32(0..=100)),
                    idle_secs: rng.bool().then(|| rng.u32(1..4)),
                    fallback: rng.bool().then(|| rng.usize(..SERVICES)),
                    faults: rng.u8(..4) == 0,
                    balancer: BALANCERS[rng.usize(..BALANCERS.len())],
                })
            }
            7 => {
                if let Some(p) = &mut self.policies[i] {
                    p.fallback = rng.bool().then(|| rng.usize(..SERVICES));
                }
            }
            8 | 9 => {
                if self.authz.is_empty() || rng.bool() {
                    let deny = rng.bool();
                    let id = format!("spiffe://td/ns/x/sa/{}", rng.u8(..3));
                    self.authz.push((format!("a{}", rng.u8(..6)), i, deny, id));
                } else {
                    self.authz.remove(rng.usize(..self.authz.len()));
                }
            }
            10 => self.telemetry = if self.telemetry.is_some() { None } else { Some(rng.u32(1..=100)) },
            _ => {
                self.hosts[i] = if self.hosts[i].is_empty() { vec![rng.usize(..SERVICES)] } else { Vec::new() };
            }
        }
    }

    /// The validated set, or `None` when the documents do not validate (a policy of a missing
    /// service, a split on a TCP service): such a change is refused, as the cluster refuses it.
    fn set(&self) -> Option<PolicySet> {
        let mut docs = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            let Some(s) = s else { continue };
            let endpoints: Vec<String> = s
                .endpoints
                .iter()
                .enumerate()
                .map(|(n, (port, v))| format!("{{address: \"127.0.{i}.{}:{port}\", labels: {{version: {v}}}}}", n + 1))
                .collect();
            // TCP is routed by original destination: a tcp service has an address.
            let address = s.address.or((s.protocol == "tcp").then_some(1));
            let addresses = address.map(|a| format!("[10.0.{i}.{a}]")).unwrap_or_else(|| "[]".to_owned());
            docs.push(format!(
                "kind: Service\nmetadata: {{name: {}}}\nspec: {{protocol: {}, port: {}, addresses: {addresses}, \
                 mtls: {}, endpoints: [{}]}}",
                name(i),
                s.protocol,
                s.port,
                if s.strict { "strict" } else { "permissive" },
                endpoints.join(", ")
            ));
        }
        // Documents that name a missing service are left out, as a cluster leaves them out.
        let present = |i: usize| self.services[i].is_some();
        for (i, p) in self.policies.iter().enumerate() {
            let (Some(p), Some(s)) = (p, &self.services[i]) else { continue };
            let http = s.protocol != "tcp";
            let mut spec = format!("  service: {}\n  loadBalancer: {}\n", name(i), p.balancer);
            if let Some(w) = p.split.filter(|_| http) {
                spec.push_str(&format!(
                    "  routes:\n    - split: [{{subset: {{version: v1}}, weight: {w}}}, \
                     {{subset: {{version: v2}}, weight: {}}}]\n",
                    100 - w
                ));
            }
            if let Some(idle) = p.idle_secs {
                spec.push_str(&format!("  idleTimeout: {idle}s\n"));
            }
            if let Some(f) = p.fallback.filter(|f| http && present(*f)) {
                spec.push_str(&format!("  circuitBreaker: {{fallback: {{service: {}}}}}\n", name(f)));
            }
            if p.faults && http {
                spec.push_str("  faults: {abort: {percent: 5, status: 503}}\n");
            }
            docs.push(format!("kind: TrafficPolicy\nmetadata: {{name: {}}}\nspec:\n{spec}", name(i)));
        }
        for (n, service, deny, id) in self.authz.iter().filter(|a| present(a.1)) {
            docs.push(format!(
                "kind: AuthorizationPolicy\nmetadata: {{name: {n}-{}}}\nspec: {{service: {}, action: {}, \
                 from: [{{identities: [\"{id}\"]}}]}}",
                name(*service),
                name(*service),
                if *deny { "deny" } else { "allow" }
            ));
        }
        if let Some(percent) = self.telemetry {
            docs.push(format!(
                "kind: Telemetry\nmetadata: {{name: mesh}}\nspec: {{tracing: {{samplingPercent: {percent}}}}}"
            ));
        }
        let text: Vec<String> = docs.into_iter().map(|d| format!("apiVersion: outrider.io/v1\n{d}\n")).collect();
        let mut set = outrider_xds::load_str("mesh.yaml", &text.join("---\n")).ok()?;
        for (i, claimed) in self.hosts.iter().enumerate() {
            if let Some(s) = set.services.get_mut(&name(i))
                && !claimed.is_empty()
            {
                s.spec.hosts =
                    claimed.iter().map(|c| name(*c)).chain([format!("{}:{}", name(i), s.spec.port)]).collect();
            }
        }
        Some(set)
    }
}

impl Svc {
    fn random(rng: &mut fastrand::Rng) -> Self {
        Svc {
            protocol: PROTOCOLS[rng.usize(..PROTOCOLS.len())],
            port: 8000 + rng.u16(..4),
            address: rng.bool().then(|| rng.u8(1..4)),
            strict: rng.bool(),
            endpoints: (0..rng.usize(..3))
                .map(|_| (9000 + rng.u16(..5), if rng.bool() { "v1" } else { "v2" }))
                .collect(),
        }
    }
}

/// Both snapshots serve the same resources of `type_url`: the same names, scopes and messages.
fn assert_same<M: prost::Message + Default + PartialEq + std::fmt::Debug>(
    incremental: &Snapshot,
    fresh: &Snapshot,
    type_url: &str,
    context: &str,
) {
    let (a, b) = (&incremental.get(type_url).unwrap().resources, &fresh.get(type_url).unwrap().resources);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{type_url} names, {context}");
    for (name, r) in a {
        let f = &b[name];
        assert_eq!(r.scope, f.scope, "{name}, {context}");
        if !same_encoding::<M>(r.encoded(), f.encoded()) {
            let decode =
                |r: &XdsResource| outrider_xds::resources::decode_any::<M>(type_url, &r.any().unwrap()).unwrap();
            assert_eq!(decode(r), decode(f), "{name} differs from a translation from scratch, {context}");
        }
    }
}

/// Each resource of `now` keeps its version from `before` when it is the same resource, and
/// has the snapshot's version when it is new or changed.
fn assert_versions<M: prost::Message + Default + PartialEq>(before: &Snapshot, now: &Snapshot, type_url: &str) {
    let (b, n) = (&before.get(type_url).unwrap().resources, &now.get(type_url).unwrap().resources);
    for (name, r) in n {
        match b.get(name) {
            Some(old) if old.scope == r.scope && same_encoding::<M>(old.encoded(), r.encoded()) => {
                assert_eq!(r.version, old.version, "{name} did not change, its version must not")
            }
            _ => assert_eq!(r.version, now.version, "{name} changed, its version must"),
        }
    }
}

/// What `snapshot` serves to every proxy is what `outrider_xds::translate` gives (the
/// outbound listener and route configuration put together from pieces included).
fn assert_translated(snapshot: &Snapshot, set: &PolicySet, context: &str) {
    fn check<M: prost::Message + Default + PartialEq + std::fmt::Debug>(
        snapshot: &Snapshot,
        type_url: &str,
        expected: &[M],
        name: impl Fn(&M) -> &str,
        context: &str,
    ) {
        let served = &snapshot.get(type_url).unwrap().resources;
        for m in expected {
            let r = &served[name(m)];
            let decoded: M = outrider_xds::resources::decode_any(type_url, &r.any().unwrap()).unwrap();
            assert_eq!(&decoded, m, "{context}");
        }
    }
    let translated = outrider_xds::translate(set);
    check(snapshot, LISTENER_TYPE_URL, &translated.listeners, |l| &l.name, context);
    check(snapshot, ROUTE_CONFIGURATION_TYPE_URL, &translated.routes, |r| &r.name, context);
    check(snapshot, CLUSTER_TYPE_URL, &translated.clusters, |c| &c.name, context);
}

#[test]
fn kept_resources_equal_a_translation_from_scratch_over_random_changes() {
    let (mut steps, mut refused) = (0, 0);
    for seed in 0..25 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut mesh = Mesh::random(&mut rng);
        let mut g = Generator::new();
        let mut before: Option<Snapshot> = None;
        for step in 0..30 {
            let mut next = mesh.clone();
            next.change(&mut rng);
            let Some(set) = next.set() else {
                refused += 1;
                continue;
            };
            mesh = next;
            steps += 1;
            let context = format!("seed {seed} step {step}: {mesh:?}");
            let now = g.generate(&set);
            let fresh = Generator::new().generate(&set);
            assert_eq!(now.version, fresh.version);
            assert_same::<Listener>(&now, &fresh, LISTENER_TYPE_URL, &context);
            assert_same::<RouteConfiguration>(&now, &fresh, ROUTE_CONFIGURATION_TYPE_URL, &context);
            assert_same::<Cluster>(&now, &fresh, CLUSTER_TYPE_URL, &context);
            assert_same::<ClusterLoadAssignment>(&now, &fresh, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, &context);
            assert_translated(&fresh, &set, &context);
            if let Some(before) = &before {
                assert_versions::<Listener>(before, &now, LISTENER_TYPE_URL);
                assert_versions::<RouteConfiguration>(before, &now, ROUTE_CONFIGURATION_TYPE_URL);
                assert_versions::<Cluster>(before, &now, CLUSTER_TYPE_URL);
                assert_versions::<ClusterLoadAssignment>(before, &now, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL);
            }
            before = Some(now);
        }
    }
    // The changes exercise the generator, not the validator.
    assert!(steps > 4 * refused, "{steps} steps, {refused} refused");
}
