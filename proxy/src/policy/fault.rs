//! Fault injection (Envoy's fault filter): delay a percentage of requests, abort
//! a percentage with a status. Runs before the timeout, as Envoy's filter runs
//! before the router.
use std::time::Duration;

use super::config::FaultPolicy;

/// What to do to this request.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Injected {
    pub delay: Option<Duration>,
    pub abort: Option<u16>,
}

fn hit(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
}

impl FaultPolicy {
    pub fn roll(&self) -> Injected {
        Injected {
            delay: self.delay.and_then(|(p, d)| hit(p).then_some(d)),
            abort: self.abort.and_then(|(p, s)| hit(p).then_some(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_hold() {
        let f = FaultPolicy { delay: Some((10.0, Duration::from_secs(1))), abort: Some((100.0, 503)) };
        let n = 20_000;
        let delayed = (0..n).filter(|_| f.roll().delay.is_some()).count();
        assert!((1700..2300).contains(&delayed), "{delayed}");
        assert!((0..100).all(|_| f.roll().abort == Some(503)));
        let none = FaultPolicy { delay: Some((0.0, Duration::from_secs(1))), abort: None };
        assert!((0..1000).all(|_| none.roll() == Injected::default()));
    }
}
