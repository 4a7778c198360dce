//! Polling with a deadline instead of sleeping. The deadline comes from
//! `OUTRIDER_TEST_DEADLINE_SECS` (default 10) so slow CI machines can raise it.
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Default deadline when `OUTRIDER_TEST_DEADLINE_SECS` is unset.
pub const DEFAULT_DEADLINE_SECS: u64 = 10;

/// Time between two polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long any single wait in a test may take.
pub fn deadline() -> Duration {
    let secs = std::env::var("OUTRIDER_TEST_DEADLINE_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .unwrap_or(DEFAULT_DEADLINE_SECS);
    Duration::from_secs(secs)
}

/// Poll `check` until it returns true; panic naming `what` when the deadline passes.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let limit = deadline();
    let end = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= end {
            panic!("timed out after {limit:?} waiting until {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Poll `attempt` until it returns `Some`; panic naming `what` at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let limit = deadline();
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = attempt().await {
            return v;
        }
        if Instant::now() >= end {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Await `fut`, panicking naming `what` if it takes longer than the deadline.
/// For operations that should finish on their own (a response, a process exit).
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    let limit = deadline();
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// `eventually!("what", async { condition })`: poll the async block until it is true.
#[macro_export]
macro_rules! eventually {
    ($what:expr, $cond:expr $(,)?) => {
        $crate::wait::wait_until($what, || async { $cond }).await
    };
}
