//! Latency distributions: an HDR histogram (nanoseconds, 3 significant digits)
//! summarised as percentiles and a percentile curve for the plots.
use hdrhistogram::Histogram;

/// Percentiles of the curve: from the median out to 99.99 %.
const CURVE: [f64; 12] = [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0];

#[allow(clippy::expect_used)] // 1 ns .. 100 s with 3 digits is a valid range: this cannot fail.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    /// (percentile, microseconds) points for the percentile plot.
    pub curve: Vec<(f64, f64)>,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        let q = |p: f64| us(h.value_at_quantile(p / 100.0));
        Self {
            p50_us: q(50.0),
            p90_us: q(90.0),
            p99_us: q(99.0),
            p999_us: q(99.9),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
            curve: CURVE.iter().map(|&p| (p, if p >= 100.0 { us(h.max()) } else { q(p) })).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut h = super::histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let l = super::Latency::from_histogram(&h);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max_us - 1000.0).abs() < 1.0, "{l:?}");
        assert_eq!(l.curve.len(), 12);
    }
}
