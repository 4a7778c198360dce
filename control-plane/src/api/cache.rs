//! The answers of the dashboard's aggregated reads (`GET /v1/mesh`, `GET /v1/stats/SERVICE`),
//! built at most once per [`MAX_AGE`] per distinct question and shared by every reader: a
//! dashboard open in many browsers costs the control plane one build per second per page
//! shown, plus a copy of the answer's bytes per reader, whatever the number of readers or of
//! reporting proxies.
//!
//! An answer is at most [`MAX_AGE`] older than the reports (which arrive every load-report
//! interval, 200 ms at the shortest). Only successful answers are kept, at most
//! [`MAX_ENTRIES`] of them (past that, answers are built per read until old ones expire).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

/// How long an answer is shared.
pub const MAX_AGE: Duration = Duration::from_secs(1);
/// Distinct questions kept.
pub const MAX_ENTRIES: usize = 256;

/// Serialised answers by question.
#[derive(Debug, Default)]
pub struct Views {
    entries: Mutex<HashMap<String, (Instant, Bytes)>>,
}

impl Views {
    /// The answer to `key` built within the last [`MAX_AGE`], or `build`'s (kept when it is
    /// `Ok`). Builds for different readers of the same question do not overlap: the second
    /// waits for the first and takes its answer.
    pub fn get<E>(&self, key: &str, build: impl FnOnce() -> Result<Bytes, E>) -> Result<Bytes, E> {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        if let Some((at, body)) = entries.get(key)
            && now.duration_since(*at) < MAX_AGE
        {
            return Ok(body.clone());
        }
        let body = build()?;
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(key) {
            entries.retain(|_, (at, _)| now.duration_since(*at) < MAX_AGE);
        }
        if entries.len() < MAX_ENTRIES || entries.contains_key(key) {
            entries.insert(key.to_owned(), (now, body.clone()));
        }
        Ok(body)
    }

    /// Answers kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_built_once_per_second_and_shared_errors_are_not_kept() {
        let views = Views::default();
        let builds = Cell::new(0);
        let build = || {
            builds.set(builds.get() + 1);
            Ok::<_, ()>(Bytes::from(format!("build {}", builds.get())))
        };
        // Many readers within a second: one build, the same bytes.
        for _ in 0..100 {
            assert_eq!(views.get("mesh 60", build).unwrap(), "build 1");
        }
        assert_eq!(builds.get(), 1);
        // Another question is another answer.
        assert_eq!(views.get("stats reviews 60", build).unwrap(), "build 2");
        tokio::time::advance(MAX_AGE - Duration::from_millis(1)).await;
        assert_eq!(views.get("mesh 60", build).unwrap(), "build 1");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(views.get("mesh 60", build).unwrap(), "build 3", "rebuilt after a second");
        // A failed build is not kept: the next read builds again.
        assert_eq!(views.get("nope", || Err::<Bytes, _>("not found")), Err("not found"));
        assert_eq!(views.get("nope", build).unwrap(), "build 4");
    }

    #[tokio::test(start_paused = true)]
    async fn distinct_questions_are_bounded() {
        let views = Views::default();
        for i in 0..MAX_ENTRIES + 10 {
            assert_eq!(views.get(&format!("q{i}"), || Ok::<_, ()>(Bytes::from(i.to_string()))).unwrap(), i.to_string());
        }
        assert_eq!(views.len(), MAX_ENTRIES, "past the limit, answers are built but not kept");
        tokio::time::advance(MAX_AGE).await;
        views.get("fresh", || Ok::<_, ()>(Bytes::new())).unwrap();
        assert_eq!(views.len(), 1, "expired answers make room");
    }
}
