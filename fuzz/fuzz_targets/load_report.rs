//! Load reports come from any client of the xDS port: any bytes decoded as a `LoadStatsRequest`
//! must be counted or dropped, never panic, and the numbers must stay readable.
#![no_main]
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use outrider_control_plane::stats::{Labels, Stats};
use prost::Message;

fn stats() -> &'static Arc<Stats> {
    static STATS: OnceLock<Arc<Stats>> = OnceLock::new();
    STATS.get_or_init(|| {
        let stats = Stats::new(Duration::from_secs(5), outrider_control_plane::metrics::Metrics::new());
        let set = outrider_xds::load_str(
            "mesh.yaml",
            "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  port: 80\n  endpoints:\n    - {address: \"127.0.0.1:1\", labels: {v: \"1\"}}\n    - {address: \"[::1]:2\", labels: {v: \"2\"}}\n",
        )
        .expect("a valid mesh");
        stats.update_mesh(&set);
        stats
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) =
        envoy_types::pb::envoy::service::load_stats::v3::LoadStatsRequest::decode(data)
    else {
        return;
    };
    let stats = stats();
    stats.ingest("fuzz", &request.cluster_stats);
    let _ = stats.service("a", &Labels::new(), Duration::from_secs(60));
    let _ = stats.summary(Duration::from_secs(900));
    let _ = stats.since("a", &Labels::new(), &Default::default()).quantile_ms(0.99);
});
