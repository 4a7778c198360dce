use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::Service;
use tower::load::{CompleteOnResponse, Load};

use super::*;

#[tokio::test(start_paused = true)]
async fn peak_is_taken_at_once_and_decays_on_read() {
    let e = PeakEwma::new(Duration::from_secs(10));
    e.observe(Duration::from_millis(10));
    assert_eq!(e.rtt(), Some(Duration::from_millis(10)));
    e.observe(Duration::from_millis(50));
    assert_eq!(e.rtt(), Some(Duration::from_millis(50)), "a peak is taken at once");
    // A fast sample right away barely moves it...
    e.observe(Duration::from_millis(1));
    assert!(e.rtt().unwrap() > Duration::from_millis(49));
    // ...and with no sample at all, time alone brings the cost down: e^-1 after one decay.
    let before = e.cost();
    tokio::time::advance(Duration::from_secs(10)).await;
    let after = e.cost();
    assert!((after / before - (-1.0f64).exp()).abs() < 1e-3, "{before} → {after}");
    tokio::time::advance(Duration::from_secs(40)).await;
    assert!(e.cost() < before * 0.01, "after five decay windows an old peak is all but gone");
}

#[tokio::test(start_paused = true)]
async fn an_unmeasured_endpoint_is_tried_once_then_waits_for_its_answer() {
    let e = PeakEwma::default();
    assert_eq!(e.cost(), 0.0, "idle and never measured: try it");
    let first = e.start();
    assert_eq!(e.cost(), UNMEASURED_PENALTY + 1.0, "its first request is out: wait for the answer");
    let second = e.start();
    assert_eq!(e.cost(), UNMEASURED_PENALTY + 2.0, "more in flight costs more");
    drop(second);
    tokio::time::advance(Duration::from_millis(3)).await;
    first.complete();
    assert_eq!(e.pending(), 0);
    assert_eq!(e.cost(), 3_000_000.0, "measured now: 3 ms");
}

#[tokio::test(start_paused = true)]
async fn pending_requests_raise_the_cost() {
    let e = PeakEwma::default();
    e.observe(Duration::from_millis(2));
    let base = e.cost();
    let a = e.start();
    let b = e.start();
    assert_eq!(e.pending(), 2);
    assert!((e.cost() - base * 3.0).abs() < 1.0);
    a.complete();
    drop(b);
    assert_eq!(e.pending(), 0);
    e.remove_pending();
    assert_eq!(e.pending(), 0, "never below zero");
}

/// A service whose response takes `latency` (paused time).
#[derive(Clone)]
struct Sleepy;

impl Service<Duration> for Sleepy {
    type Response = ();
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<(), Self::Error>> + Send>>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, latency: Duration) -> Self::Future {
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            Ok(())
        })
    }
}

/// tower's cost as a number (its `Cost` keeps the f64 private; `Debug` prints it exactly).
fn tower_cost<L: Load>(l: &L) -> f64
where
    L::Metric: std::fmt::Debug,
{
    let text = format!("{:?}", l.load());
    text.trim_start_matches("Cost(").trim_end_matches(')').parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_estimate_follows_towers_peak_ewma_exactly() {
    let decay = Duration::from_secs(10);
    // tower needs a default estimate; 1 ns is replaced by the first sample, as ours is.
    let mut theirs = tower::load::PeakEwma::new(
        Sleepy,
        Duration::from_nanos(1),
        decay.as_nanos() as f64,
        CompleteOnResponse::default(),
    );
    let ours = PeakEwma::new(decay);
    // (gap before, latency, reads while in flight): slow, fast, faster, a spike, quiet spells.
    let steps = [
        (0u64, 20u64, 1u32),
        (5, 5, 2),
        (100, 1, 0),
        (2_000, 300, 3),
        (50, 2, 1),
        (15_000, 2, 0),
        (0, 40, 2),
        (30_000, 1, 1),
        (1, 1, 0),
    ];
    let mut compared = 0;
    // Before the first answer the two differ by design (tower starts from its default
    // estimate, ours from "unmeasured"); from the first answer on they must agree exactly.
    let mut measured = false;
    for (gap_ms, latency_ms, reads) in steps {
        tokio::time::advance(Duration::from_millis(gap_ms)).await;
        if measured {
            assert_eq!(ours.cost(), tower_cost(&theirs), "idle, after {gap_ms} ms");
        }
        let latency = Duration::from_millis(latency_ms);
        let call = theirs.call(latency);
        let guard = ours.start();
        let mut call = Box::pin(call);
        // Read both while the request is in flight (one pending each).
        for _ in 0..reads {
            tokio::time::advance(latency / (reads + 1)).await;
            assert!(futures_util::FutureExt::now_or_never(&mut call).is_none(), "still in flight");
            if measured {
                assert_eq!(ours.cost(), tower_cost(&theirs), "in flight");
                compared += 1;
            }
        }
        call.await.unwrap();
        guard.complete();
        measured = true;
        assert_eq!(ours.cost(), tower_cost(&theirs), "after a {latency_ms} ms answer");
        compared += 2;
    }
    assert!(compared > 20);
}
