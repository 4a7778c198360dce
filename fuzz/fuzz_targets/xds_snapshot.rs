//! Resources from an xDS server are untrusted: decoding any bytes as a Cluster,
//! RouteConfiguration or Listener and building a snapshot must not panic.
#![no_main]
use envoy_types::pb::envoy::config::{cluster::v3::Cluster, listener::v3::Listener, route::v3::RouteConfiguration};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let mut res = outrider_xds::Resources::default();
    let third = data.len() / 3;
    if let Ok(c) = Cluster::decode(&data[..third]) {
        res.clusters.push(c);
    }
    if let Ok(r) = RouteConfiguration::decode(&data[third..2 * third]) {
        res.routes.push(r);
    }
    if let Ok(l) = Listener::decode(&data[2 * third..]) {
        res.listeners.push(l);
    }
    let _ = outrider_proxy::state::Builder::new().build(&res);
});
