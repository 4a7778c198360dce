//! Where the run stalled: the seconds in which some leg's tasks took [`STALL`] or more from
//! their intended start, run together into spans, each with what may explain it — whether the
//! control probe (straight to the upstream, not through the mesh) was slow too (then the
//! harness or the machine stalled, not the sidecars), how long after a policy change it began
//! and how long that change's API call took, and the certificate rotations near it.
use std::collections::BTreeMap;
use std::time::Duration;

use super::load::Worst;
use super::report::Sample;

/// A task this late counts its second as stalled.
pub const STALL: Duration = Duration::from_millis(500);
/// The control probe's leg name (in its own accounting: its failures are not the mesh's).
pub const DIRECT: &str = "direct";
/// The control probe's rate (requests per second).
pub const DIRECT_RATE: f64 = 20.0;

/// One policy change of the run.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PolicyChange {
    /// When it was sent (seconds from the start).
    pub at_s: f64,
    /// How long the control plane took to answer the `PUT`.
    pub took_ms: f64,
    pub ok: bool,
}

/// A span of stalled seconds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stall {
    /// First and last stalled second (of the tasks' intended start).
    pub from_s: u64,
    pub to_s: u64,
    /// The legs with a task at least [`STALL`] late in the span.
    pub legs: Vec<String>,
    /// The latest task of the span (ms).
    pub worst_ms: f64,
    /// The control probe's latest request in the span (ms); `None` when it had none.
    pub direct_worst_ms: Option<f64>,
    /// Seconds from the last policy change before the span to its start, and how long that
    /// change's API call took (ms).
    pub after_policy_change: Option<(f64, f64)>,
    /// Sidecars whose certificate rotated between the samples around the span (5 s apart).
    pub rotations: Vec<String>,
}

/// The stalled spans of a run: `legs` are the mesh's, `direct` the control probe's.
pub fn find(legs: &Worst, direct: &Worst, changes: &[PolicyChange], samples: &[Sample]) -> Vec<Stall> {
    let threshold = STALL.as_nanos() as u64;
    let ms = |ns: u64| ns as f64 / 1e6;
    let mut out: Vec<Stall> = Vec::new();
    for (&second, by_leg) in legs {
        let slow: Vec<(&str, u64)> =
            by_leg.iter().filter(|(_, ns)| **ns >= threshold).map(|(l, ns)| (*l, *ns)).collect();
        if slow.is_empty() {
            continue;
        }
        let worst = slow.iter().map(|(_, ns)| *ns).max().unwrap_or(0);
        let direct_worst = direct.get(&second).and_then(|d| d.values().copied().max());
        match out.last_mut() {
            Some(last) if last.to_s + 1 == second => {
                last.to_s = second;
                last.worst_ms = last.worst_ms.max(ms(worst));
                last.direct_worst_ms = match (last.direct_worst_ms, direct_worst.map(ms)) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                for (leg, _) in slow {
                    if !last.legs.iter().any(|l| l == leg) {
                        last.legs.push(leg.to_owned());
                    }
                }
            }
            _ => out.push(Stall {
                from_s: second,
                to_s: second,
                legs: slow.iter().map(|(l, _)| (*l).to_owned()).collect(),
                worst_ms: ms(worst),
                direct_worst_ms: direct_worst.map(ms),
                ..Stall::default()
            }),
        }
    }
    for stall in &mut out {
        let from = stall.from_s as f64;
        stall.after_policy_change =
            changes.iter().rfind(|c| c.at_s <= from + 1.0).map(|c| ((from - c.at_s).max(0.0), c.took_ms));
        stall.rotations = rotations_near(samples, from - 5.0, stall.to_s as f64 + 1.0);
    }
    out
}

/// Sidecars whose installed certificates went up between two samples, the later one at or after
/// `from` and the earlier one at or before `to`.
fn rotations_near(samples: &[Sample], from: f64, to: f64) -> Vec<String> {
    let mut names: BTreeMap<String, ()> = BTreeMap::new();
    for pair in samples.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.t_s < from || a.t_s > to {
            continue;
        }
        for (name, cert) in &b.certs {
            let before = a.certs.get(name).and_then(|c| c.installed);
            if matches!((before, cert.installed), (Some(x), Some(y)) if y > x) {
                names.insert(name.clone(), ());
            }
        }
    }
    names.into_keys().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::report::CertSample;

    fn worst(rows: &[(u64, &'static str, u64)]) -> Worst {
        let mut w = Worst::new();
        for (second, leg, ms) in rows {
            w.entry(*second).or_default().insert(*leg, ms * 1_000_000);
        }
        w
    }

    fn sample(t_s: f64, installed: u64) -> Sample {
        let mut s = Sample { t_s, ..Sample::default() };
        s.certs.insert("client-sidecar".into(), CertSample { installed: Some(installed), not_after_unix: None });
        s
    }

    #[test]
    fn late_seconds_run_together_with_what_was_near_them() {
        let legs = worst(&[
            (10, "http1", 3),
            (37, "http1", 900),
            (37, "tcp", 20),
            (38, "tcp", 1300),
            (38, "h2", 499),
            (39, "h2", 700),
            (50, "grpc", 40),
            (52, "grpc", 600),
        ]);
        let direct = worst(&[(37, DIRECT, 2), (38, DIRECT, 1200), (52, DIRECT, 1)]);
        let changes = [
            PolicyChange { at_s: 30.0, took_ms: 4.0, ok: true },
            PolicyChange { at_s: 40.0, took_ms: 2500.0, ok: true },
            PolicyChange { at_s: 50.0, took_ms: 3.0, ok: true },
        ];
        let samples = [sample(30.0, 1), sample(35.0, 1), sample(40.0, 2), sample(45.0, 2), sample(55.0, 2)];
        let found = find(&legs, &direct, &changes, &samples);
        assert_eq!(
            found,
            vec![
                Stall {
                    from_s: 37,
                    to_s: 39,
                    legs: vec!["http1".into(), "tcp".into(), "h2".into()],
                    worst_ms: 1300.0,
                    direct_worst_ms: Some(1200.0),
                    after_policy_change: Some((7.0, 4.0)),
                    rotations: vec!["client-sidecar".into()],
                },
                Stall {
                    from_s: 52,
                    to_s: 52,
                    legs: vec!["grpc".into()],
                    worst_ms: 600.0,
                    direct_worst_ms: Some(1.0),
                    after_policy_change: Some((2.0, 3.0)),
                    rotations: vec![],
                },
            ]
        );
    }

    #[test]
    fn a_run_without_late_tasks_has_no_stalls() {
        let legs = worst(&[(1, "http1", 499), (2, "tcp", 3)]);
        assert!(find(&legs, &Worst::new(), &[], &[]).is_empty());
    }
}
