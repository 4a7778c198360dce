//! The injection settings as command-line flags (each also an `OUTRIDER_*` variable). The
//! control plane's webhook and `outrider inject` take the same flags, so one set of values
//! gives the same pods.

use std::time::Duration;

use super::{InjectConfig, PullPolicy, Resources, defaults};

#[derive(Debug, Clone, clap::Args)]
pub struct InjectArgs {
    /// Image of the injected proxy (a native sidecar).
    #[arg(long, env = "OUTRIDER_PROXY_IMAGE", default_value = defaults::PROXY_IMAGE)]
    pub proxy_image: String,
    /// Image of the injected init container that installs the iptables redirection.
    #[arg(long, env = "OUTRIDER_PROXY_INIT_IMAGE", default_value = defaults::INIT_IMAGE)]
    pub proxy_init_image: String,
    /// imagePullPolicy of both injected containers.
    #[arg(long, env = "OUTRIDER_IMAGE_PULL_POLICY", value_enum, default_value = "if-not-present")]
    pub image_pull_policy: PullPolicy,
    /// The control plane's xDS address as injected proxies reach it (https: its CA is the same
    /// host on port 15014).
    #[arg(long, env = "OUTRIDER_PROXY_XDS_ADDRESS", default_value = defaults::XDS_ADDRESS)]
    pub proxy_xds_address: String,
    /// Audience of the proxies' service-account tokens; the control plane accepts no other.
    #[arg(long, env = "OUTRIDER_TOKEN_AUDIENCE", default_value = defaults::TOKEN_AUDIENCE)]
    pub token_audience: String,
    /// Lifetime of the projected token (at least 10m; the kubelet renews it at 80 %).
    #[arg(long, env = "OUTRIDER_TOKEN_TTL", default_value = "1h", value_parser = duration)]
    pub token_ttl: Duration,
    /// How long an injected proxy finishes in-flight requests after SIGTERM.
    #[arg(long, env = "OUTRIDER_PROXY_DRAIN_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub proxy_drain_timeout: Duration,
    /// Data-plane worker threads of an injected proxy.
    #[arg(long, env = "OUTRIDER_PROXY_WORKERS", default_value_t = defaults::WORKERS)]
    pub proxy_workers: u16,
    /// The proxy container's CPU request ("" for none).
    #[arg(long, env = "OUTRIDER_PROXY_CPU_REQUEST", default_value = "50m")]
    pub proxy_cpu_request: String,
    /// The proxy container's memory request ("" for none).
    #[arg(long, env = "OUTRIDER_PROXY_MEMORY_REQUEST", default_value = "64Mi")]
    pub proxy_memory_request: String,
    /// The proxy container's CPU limit ("" for none: throttling a proxy delays every request).
    #[arg(long, env = "OUTRIDER_PROXY_CPU_LIMIT", default_value = "")]
    pub proxy_cpu_limit: String,
    /// The proxy container's memory limit ("" for none).
    #[arg(long, env = "OUTRIDER_PROXY_MEMORY_LIMIT", default_value = "1Gi")]
    pub proxy_memory_limit: String,
}

fn duration(s: &str) -> Result<Duration, String> {
    outrider_xds::duration::parse(s).map_err(|e| e.to_string())
}

/// A setting that cannot be used; the message names the flag.
#[derive(Debug, thiserror::Error)]
#[error("--{flag} {value:?}: {reason}")]
pub struct ArgError {
    pub flag: &'static str,
    pub value: String,
    pub reason: &'static str,
}

impl InjectArgs {
    /// The settings, trusting `ca_roots_pem` for the control plane's TLS.
    pub fn config(&self, ca_roots_pem: &str) -> Result<InjectConfig, ArgError> {
        let bad =
            |flag: &'static str, value: &str, reason: &'static str| ArgError { flag, value: value.to_owned(), reason };
        for (flag, image) in [("proxy-image", &self.proxy_image), ("proxy-init-image", &self.proxy_init_image)] {
            if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
                return Err(bad(flag, image, "not an image reference"));
            }
        }
        let url = self.proxy_xds_address.parse::<http::Uri>().ok();
        if !url.as_ref().is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()) {
            return Err(bad("proxy-xds-address", &self.proxy_xds_address, "expected https://HOST:PORT (or http://)"));
        }
        if self.token_audience.is_empty() || self.token_audience.chars().any(|c| c.is_whitespace() || c == '$') {
            return Err(bad("token-audience", &self.token_audience, "expected a name such as outrider"));
        }
        // The API server refuses projected tokens shorter than 10 minutes.
        if self.token_ttl < Duration::from_secs(600) || self.token_ttl > Duration::from_secs(48 * 3600) {
            return Err(bad("token-ttl", &format!("{:?}", self.token_ttl), "must be between 10m and 48h"));
        }
        if self.proxy_workers == 0 {
            return Err(bad("proxy-workers", "0", "must be at least 1"));
        }
        let quantity = |flag: &'static str, v: &str| -> Result<Option<String>, ArgError> {
            match v.trim() {
                "" => Ok(None),
                q if is_quantity(q) => Ok(Some(q.to_owned())),
                _ => Err(bad(flag, v, "not a Kubernetes quantity such as 100m, 64Mi or 1")),
            }
        };
        let mut config = InjectConfig::new(ca_roots_pem);
        config.proxy_image = self.proxy_image.clone();
        config.init_image = self.proxy_init_image.clone();
        config.pull_policy = self.image_pull_policy;
        config.xds_address = self.proxy_xds_address.clone();
        config.token_audience = self.token_audience.clone();
        config.token_ttl = self.token_ttl;
        config.drain_timeout = self.proxy_drain_timeout;
        config.workers = self.proxy_workers;
        config.resources = Resources {
            cpu_request: quantity("proxy-cpu-request", &self.proxy_cpu_request)?,
            memory_request: quantity("proxy-memory-request", &self.proxy_memory_request)?,
            cpu_limit: quantity("proxy-cpu-limit", &self.proxy_cpu_limit)?,
            memory_limit: quantity("proxy-memory-limit", &self.proxy_memory_limit)?,
        };
        Ok(config)
    }
}

/// A Kubernetes resource quantity: a decimal number with an optional suffix (`m`, `k`, `M`,
/// `G`, `Ki`, `Mi`, `Gi`, …).
fn is_quantity(q: &str) -> bool {
    let digits = q.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &q[digits.len()..];
    let number_ok = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|b| *b == b'.').count() <= 1
        && digits != ".";
    let suffix_ok =
        matches!(suffix, "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei");
    number_ok && suffix_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["50m", "64Mi", "1", "0.5", "1Gi", "100k"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "64MB", "1.2.3", "-1", "64 Mi", "."] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
