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
                    .with_writer(std::io::stdout),
            )
            .try_init(),
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stdout)).try_init(),
    };
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
