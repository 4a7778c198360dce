//! What the demo measures and how it reports it: the caller's outcomes per phase (the load
//! generator attributes each request to the phase it started in), what the `reviews`
//! workloads answered (their raw success, before any retry), the breaker state of each subset
//! as the frontend's sidecar sees it, and the final JSON document (`outrider demo -o json`).
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde_json::{Value, json};

use super::apps::Reviews;

/// The scenario's phases, in order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    Steady,
    Broken,
    Healed,
    Shifted,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::Steady, Phase::Broken, Phase::Healed, Phase::Shifted];

    /// The label in the live view.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Steady => "steady",
            Phase::Broken => "v2 down",
            Phase::Healed => "v2 back",
            Phase::Shifted => "50/50",
        }
    }

    /// The key in the JSON document.
    pub fn key(self) -> &'static str {
        match self {
            Phase::Steady => "steady",
            Phase::Broken => "broken",
            Phase::Healed => "healed",
            Phase::Shifted => "shifted",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Caller outcomes, overall and per phase, and latencies.
#[derive(Debug, Default)]
pub struct Load {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// The phase new requests are attributed to.
    pub phase: AtomicUsize,
    pub phase_ok: [AtomicU64; 4],
    pub phase_failed: [AtomicU64; 4],
    /// Latencies (µs) of the current second.
    pub window: Mutex<Vec<u64>>,
    /// All latencies (µs).
    pub all: Mutex<Vec<u64>>,
}

impl Load {
    /// Record one caller request that started in `phase`.
    pub fn record(&self, phase: usize, ok: bool, micros: u64) {
        let (total, per_phase) = if ok { (&self.ok, &self.phase_ok) } else { (&self.failed, &self.phase_failed) };
        total.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = per_phase.get(phase) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut w) = self.window.lock() {
            w.push(micros);
        }
        if let Ok(mut a) = self.all.lock() {
            a.push(micros);
        }
    }

    pub fn done(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

/// What the two `reviews` workloads answered so far: (v1 ok, v1 failed, v2 ok, v2 failed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Answers {
    pub v1_ok: u64,
    pub v1_failed: u64,
    pub v2_ok: u64,
    pub v2_failed: u64,
}

impl Answers {
    pub fn read(v1: &Reviews, v2: &Reviews) -> Self {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Answers {
            v1_ok: l(&v1.counts.ok),
            v1_failed: l(&v1.counts.failed),
            v2_ok: l(&v2.counts.ok),
            v2_failed: l(&v2.counts.failed),
        }
    }

    pub fn since(self, before: Answers) -> Answers {
        Answers {
            v1_ok: self.v1_ok - before.v1_ok,
            v1_failed: self.v1_failed - before.v1_failed,
            v2_ok: self.v2_ok - before.v2_ok,
            v2_failed: self.v2_failed - before.v2_failed,
        }
    }

    pub fn v1(self) -> u64 {
        self.v1_ok + self.v1_failed
    }

    pub fn v2(self) -> u64 {
        self.v2_ok + self.v2_failed
    }

    pub fn ok(self) -> u64 {
        self.v1_ok + self.v2_ok
    }

    pub fn total(self) -> u64 {
        self.v1() + self.v2()
    }

    /// v2's share of the calls the workloads saw, if they saw any.
    pub fn v2_share(self) -> Option<f64> {
        ratio(self.v2(), self.total())
    }
}

/// `part / whole`, or `None` for an empty whole.
pub fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// The breaker state of each `version` subset of `reviews` in the frontend sidecar's
/// `/clusters` (the worst of the subset's endpoints): `(v1, v2)`.
pub fn subset_breakers(clusters: &Value) -> (String, String) {
    let rank = |s: &str| match s {
        "open" => 2,
        "half-open" => 1,
        _ => 0,
    };
    let mut v1 = "closed".to_owned();
    let mut v2 = "closed".to_owned();
    let reviews = clusters["clusters"].as_array().into_iter().flatten().filter(|c| c["service"] == "reviews");
    for ep in reviews.flat_map(|c| c["endpoints"].as_array().into_iter().flatten()) {
        let state = ep["circuit_breaker"].as_str().unwrap_or("closed");
        let slot = match ep["labels"]["version"].as_str() {
            Some("v1") => &mut v1,
            Some("v2") => &mut v2,
            _ => continue,
        };
        if rank(state) > rank(slot) {
            *slot = state.to_owned();
        }
    }
    (v1, v2)
}

/// Sum of the samples of `name` whose labels contain every `key="value"` of `labels`.
pub fn prom_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (lbl, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let end = r.find('}')?;
                    (&r[..end], r[end + 1..].trim())
                }
                None if rest.starts_with(' ') => ("", rest.trim()),
                None => return None,
            };
            labels.iter().all(|want| lbl.contains(want)).then(|| value.split(' ').next()?.parse::<f64>().ok())?
        })
        .sum()
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Microseconds as milliseconds, one decimal.
pub fn ms(us: u64) -> String {
    format!("{:.1}ms", us as f64 / 1000.0)
}

/// A share as a percentage with one decimal, or `-`.
pub fn pct(share: Option<f64>) -> String {
    share.map_or_else(|| "    -".into(), |s| format!("{:5.1}%", 100.0 * s))
}

/// The widest line the demo prints (a terminal of 100 columns shows every line whole).
pub const WIDTH: usize = 100;

/// `text` wrapped at [`WIDTH`] columns on spaces: the first line starts with `first`, the
/// others with `indent`. A word longer than a line is kept whole on a line of its own.
pub fn wrap(first: &str, indent: &str, text: &str) -> String {
    let mut out = String::new();
    let mut line = first.to_owned();
    let mut fresh = true;
    for word in text.split_whitespace() {
        let width = line.chars().count();
        if !fresh && width + 1 + word.chars().count() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = indent.to_owned();
            fresh = true;
        }
        if !fresh {
            line.push(' ');
        }
        line.push_str(word);
        fresh = false;
    }
    out.push_str(&line);
    out
}

/// Per phase: caller success, what the workloads answered and v2's share of their calls.
pub fn phase_json(load: &Load, answers: &[Answers; 4], seconds: &[Value]) -> Value {
    let mut out = serde_json::Map::new();
    for phase in Phase::ALL {
        let i = phase.index();
        let ok = load.phase_ok[i].load(Ordering::Relaxed);
        let failed = load.phase_failed[i].load(Ordering::Relaxed);
        let a = answers[i];
        let rows: Vec<&Value> = seconds.iter().filter(|s| s["phase"] == phase.key()).collect();
        let v2_open = rows.iter().filter(|s| s["breaker"]["v2"] == "open").count();
        out.insert(
            phase.key().to_owned(),
            json!({
                "seconds": rows.len(),
                "requests": ok + failed,
                "caller_success": ratio(ok, ok + failed),
                "upstream_calls": a.total(),
                "upstream_success": ratio(a.ok(), a.total()),
                "v1_calls": a.v1(),
                "v2_calls": a.v2(),
                "v2_share": a.v2_share(),
                "seconds_v2_breaker_open": v2_open,
            }),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_keeps_lines_within_the_width() {
        let text = "word ".repeat(80) + "a-very-long-word-".repeat(8).as_str();
        let wrapped = wrap("summary: ", "  ", &text);
        let lines: Vec<&str> = wrapped.lines().collect();
        assert!(lines[0].starts_with("summary: word"), "{wrapped}");
        assert!(lines[1..].iter().all(|l| l.starts_with("  ")), "{wrapped}");
        for l in &lines[..lines.len() - 1] {
            assert!(l.chars().count() <= WIDTH, "{l:?} is over {WIDTH} columns");
        }
        // The long word is whole on its own line; no word is lost or split.
        assert_eq!(lines.last().map(|l| l.trim()), Some("a-very-long-word-".repeat(8).as_str()));
        let words: Vec<&str> = wrapped.split_whitespace().skip(1).collect();
        assert_eq!(words, text.split_whitespace().collect::<Vec<_>>());
        assert_eq!(wrap("x: ", "  ", "short"), "x: short");
    }

    #[test]
    fn prom_sum_filters_by_name_and_labels() {
        let text = "# HELP x\noutrider_retries_total{service=\"reviews\",reason=\"5xx\"} 3\n\
                    outrider_retries_total{service=\"reviews\",reason=\"reset\"} 2\n\
                    outrider_retries_total{service=\"other\",reason=\"5xx\"} 7\n\
                    outrider_retries_total_x 9\nup 1\n";
        assert_eq!(prom_sum(text, "outrider_retries_total", &["service=\"reviews\""]), 5.0);
        assert_eq!(prom_sum(text, "up", &[]), 1.0);
    }

    #[test]
    fn subset_breakers_take_the_worst_endpoint_of_each_version() {
        let clusters = json!({"clusters": [
            {"service": "frontend", "endpoints": [{"labels": {"version": "v2"}, "circuit_breaker": "open"}]},
            {"service": "reviews", "endpoints": [
                {"labels": {"version": "v1"}, "circuit_breaker": "closed"},
                {"labels": {"version": "v2"}, "circuit_breaker": "half-open"},
                {"labels": {"version": "v2"}, "circuit_breaker": "open"},
            ]},
        ]});
        assert_eq!(subset_breakers(&clusters), ("closed".to_owned(), "open".to_owned()));
        assert_eq!(subset_breakers(&json!({})), ("closed".to_owned(), "closed".to_owned()));
    }
}
