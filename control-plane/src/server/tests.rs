use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{DEBOUNCE, Sets, debounce};
use crate::endpoints::Registry;
use crate::metrics::Metrics;
use crate::snapshot::{Generator, Snapshot};
use crate::stats::Stats;

fn set(port: u16) -> Arc<outrider_xds::PolicySet> {
    let doc = format!("apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: a}}\nspec: {{port: {port}}}\n");
    Arc::new(outrider_xds::load_str("t.yaml", &doc).unwrap())
}

/// How long after a new set its snapshot is published.
async fn published_after(sets: Sets) -> Duration {
    let (set_tx, set_rx) = watch::channel(set(80));
    let mut generator = Generator::new();
    let (snap_tx, mut snap_rx) = watch::channel(Arc::new(generator.generate(&set_rx.borrow())));
    let stats = Stats::new(Duration::from_secs(5), Metrics::new());
    let task = tokio::spawn(debounce(set_rx, sets, Registry::new(Duration::from_secs(1)), generator, snap_tx, stats));
    tokio::task::yield_now().await;
    let start = Instant::now();
    set_tx.send_replace(set(81));
    snap_rx.changed().await.unwrap();
    let elapsed = start.elapsed();
    let snapshot: Arc<Snapshot> = snap_rx.borrow().clone();
    assert_eq!(snapshot.version, outrider_xds::translate(&set(81)).version);
    task.abort();
    elapsed
}

#[tokio::test(start_paused = true)]
async fn a_debounced_set_is_published_without_a_second_wait() {
    assert!(published_after(Sets::Debounced).await < DEBOUNCE);
}

#[tokio::test(start_paused = true)]
async fn a_set_as_it_comes_waits_for_quiet() {
    assert!(published_after(Sets::AsTheyCome).await >= DEBOUNCE);
}

#[test]
fn a_new_api_token_is_128_random_bits_in_hex() {
    let a = super::random_token().unwrap();
    let b = super::random_token().unwrap();
    assert_eq!(a.len(), 32, "{a}");
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{a}");
    assert_ne!(a, b, "two tokens from the system's random number generator");
}
