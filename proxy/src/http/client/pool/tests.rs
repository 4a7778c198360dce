use std::time::Duration;

use super::{MESH_IDLE, h1_idle_timeout};

#[test]
fn a_peer_proxys_idle_connection_goes_before_the_peer_would_close_it() {
    let s = Duration::from_secs;
    // Plaintext: the cluster's idle timeout as it is (none: kept until the upstream closes it).
    assert_eq!(h1_idle_timeout(None, false), None);
    assert_eq!(h1_idle_timeout(Some(s(3600)), false), Some(s(3600)));
    // To a peer proxy: at most MESH_IDLE, well under the peer's 30 s header read timeout.
    assert!(MESH_IDLE < crate::http::server::ServerLimits::default().header_read_timeout / 2);
    assert_eq!(h1_idle_timeout(None, true), Some(MESH_IDLE));
    assert_eq!(h1_idle_timeout(Some(s(3600)), true), Some(MESH_IDLE));
    assert_eq!(h1_idle_timeout(Some(s(2)), true), Some(s(2)), "a shorter cluster timeout wins");
}
