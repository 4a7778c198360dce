use tracing_subscriber::{EnvFilter, layer::SubscriberExt, reload, util::SubscriberInitExt};

use crate::config::LogFormat;

/// Changes the log level at run time (`PUT /logging?level=debug`).
#[derive(Clone)]
pub struct LogHandle {
    reload: Option<reload::Handle<EnvFilter, tracing_subscriber::Registry>>,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle").finish_non_exhaustive()
    }
}

const DEFAULT_FILTER: &str = "info";

/// Set once this process installed the JSON subscriber on stdout: the HTTP access log then
/// writes its lines itself, in that subscriber's format (`telemetry::access`).
static JSON_ON_STDOUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Are logs JSON lines on stdout, written by the subscriber [`init`] installed?
pub fn json_on_stdout() -> bool {
    JSON_ON_STDOUT.load(std::sync::atomic::Ordering::Relaxed)
}

/// `09:47:35 UTC, 42s ago`: when something began, for a log line that says it ended.
pub fn since(start: std::time::SystemTime) -> String {
    since_at(start, std::time::SystemTime::now())
}

fn since_at(start: std::time::SystemTime, now: std::time::SystemTime) -> String {
    let secs = start.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let ago = now.duration_since(start).map(|d| d.as_secs()).unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02} UTC, {} ago",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        outrider_xds::duration::format(std::time::Duration::from_secs(ago))
    )
}

/// Install the global subscriber: one JSON object per line on stdout (or text).
pub fn init(format: LogFormat) -> LogHandle {
    let filter = EnvFilter::try_from_env("OUTRIDER_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let res = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    // Access-log lines batched once `stdout::start`ed, in order with the rest.
                    .with_writer(super::stdout::Lines),
            )
            .try_init(),
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stdout)).try_init(),
    };
    if res.is_ok() && matches!(format, LogFormat::Json) {
        JSON_ON_STDOUT.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    LogHandle { reload: res.is_ok().then_some(handle) }
}

impl LogHandle {
    /// A handle that changes nothing (when a subscriber was already installed).
    pub fn disabled() -> Self {
        Self { reload: None }
    }

    /// Set a new filter such as `debug` or `info,outrider_proxy=trace`.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(level).map_err(|e| format!("invalid level {level:?}: {e}"))?;
        match &self.reload {
            Some(h) => h.reload(filter).map_err(|e| e.to_string()),
            None => Err("logging is not owned by this process".into()),
        }
    }
}

#[cfg(test)]
mod since_tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn since_names_the_time_of_day_and_how_long_ago() {
        let start = UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 9 * 3600 + 47 * 60 + 5);
        assert_eq!(super::since_at(start, start + Duration::from_secs(90)), "09:47:05 UTC, 1m30s ago");
        assert_eq!(super::since_at(start, start), "09:47:05 UTC, 0s ago");
    }
}
