//! `outrider rollout start|status|pause|resume|promote|abort NAME [-w]`.
//!
//! `-w` watches the rollout: on a terminal the view is redrawn in place every second (the
//! step, a bar of the canary's weight, the canary's and the stable version's numbers side by
//! side, the last events); otherwise one line is printed each time something changes. The
//! watch ends when the rollout is promoted (exit 0) or aborted (exit 1).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use http::Method;
use serde_json::Value;

use super::client::{Reply, send_with_root};
use super::{Connection, Output, failed, print_value};

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Verb {
    /// Start a promoted or aborted rollout over from its first step.
    Start,
    /// Show where it is (with -w: keep showing it).
    Status,
    /// Stop at the current step; the split may then be edited.
    Pause,
    /// Go on from the current step (its split is set again).
    Resume,
    /// Skip the remaining steps: all traffic to the canary now.
    Promote,
    /// All traffic back to the stable version now (a promoted rollout: roll back).
    Abort,
}

/// How often a watch asks.
const POLL: Duration = Duration::from_secs(1);
/// Width of the weight bar.
const BAR: usize = 30;
/// Events shown in the terminal view.
const EVENTS: usize = 6;

/// Run `outrider rollout VERB NAME`.
pub fn run(conn: &Connection, verb: Verb, name: &str, watch: bool, output: Output) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outrider: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        let first = match verb {
            Verb::Status => request(conn, Method::GET, &format!("/v1/rollouts/{name}")).await,
            other => {
                let command = format!("{other:?}").to_ascii_lowercase();
                request(conn, Method::POST, &format!("/v1/rollouts/{name}/{command}")).await
            }
        };
        let reply = match first {
            Ok(reply) => reply,
            Err(code) => return code,
        };
        if !reply.status.is_success() {
            return failed(&reply, None);
        }
        let status = reply.json();
        if !watch {
            match output {
                Output::Table => {
                    if verb == Verb::Status {
                        print!("{}", render(&status));
                    } else {
                        println!("{}", line(&status));
                    }
                }
                other => print_value(&status, other),
            }
            return ExitCode::SUCCESS;
        }
        watch_loop(conn, name, status, output).await
    })
}

async fn request(conn: &Connection, method: Method, path: &str) -> Result<Reply, ExitCode> {
    send_with_root(&conn.server, conn.ca_root.as_deref(), method, path, conn.token.as_deref(), None).await.map_err(
        |e| {
            eprintln!("outrider: {e}");
            ExitCode::from(1)
        },
    )
}

async fn watch_loop(conn: &Connection, name: &str, mut status: Value, output: Output) -> ExitCode {
    let tty = output == Output::Table && std::io::stdout().is_terminal();
    let mut drawn_lines = 0usize;
    let mut last_line = String::new();
    loop {
        match output {
            Output::Table if tty => {
                let view = render(&status);
                let mut out = std::io::stdout().lock();
                // Move up over the previous view and clear it, then draw the new one.
                if drawn_lines > 0 {
                    let _ = write!(out, "\x1b[{drawn_lines}A\x1b[J");
                }
                let _ = write!(out, "{view}");
                let _ = out.flush();
                drawn_lines = view.lines().count();
            }
            Output::Table => {
                let now = line(&status);
                // A line per change; the numbers alone changing do not make one.
                let key = change_key(&status);
                if key != last_line {
                    println!("{} {now}", clock(now_ms()));
                    last_line = key;
                }
            }
            other => print_value(&status, other),
        }
        let done = status["splitWritten"] == true;
        match status["phase"].as_str() {
            Some("promoted") if done => return ExitCode::SUCCESS,
            Some("aborted") if done => return ExitCode::from(1),
            _ => {}
        }
        tokio::time::sleep(POLL).await;
        match request(conn, Method::GET, &format!("/v1/rollouts/{name}")).await {
            Ok(reply) if reply.status.is_success() => status = reply.json(),
            Ok(reply) => return failed(&reply, None),
            Err(code) => return code,
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `HH:MM:SS` (UTC) of unix milliseconds.
fn clock(ms: u64) -> String {
    let s = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// What makes a new line in a non-terminal watch.
fn change_key(s: &Value) -> String {
    format!("{}|{}|{}|{}|{}|{}", s["phase"], s["step"], s["weight"], s["failedChecks"], s["message"], s["splitWritten"])
}

/// `k=v,k=v`.
fn labels(v: &Value) -> String {
    v.as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

fn pct(v: &Value) -> String {
    v.as_f64().map_or("-".to_owned(), |r| format!("{r:.2}%"))
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or("-".to_owned(), |m| format!("{m:.1}ms"))
}

/// One line: phase, step, weight, both versions' numbers, what it is doing.
pub fn line(s: &Value) -> String {
    let side = |v: &Value| {
        format!("{} req {} p99 {}", v["requests"].as_u64().unwrap_or(0), pct(&v["successRate"]), ms(&v["p99Ms"]))
    };
    let (step, steps) = (s["step"].as_u64().unwrap_or(0), s["steps"].as_array().map_or(0, Vec::len) as u64);
    let at = if (1..=steps).contains(&step) { format!(" step {step}/{steps}") } else { String::new() };
    let mut out = format!(
        "{} {}{at} weight {}%{} | canary {} | stable {}",
        s["name"].as_str().unwrap_or(""),
        s["phase"].as_str().unwrap_or(""),
        s["weight"].as_u64().unwrap_or(0),
        if s["preview"] == true { " (preview)" } else { "" },
        side(&s["canary"]),
        side(&s["stable"]),
    );
    for (key, label) in [("reason", ""), ("message", "")] {
        if let Some(text) = s[key].as_str().filter(|t| !t.is_empty()) {
            out.push_str(&format!(" | {label}{text}"));
        }
    }
    out
}

/// The terminal view.
pub fn render(s: &Value) -> String {
    let mut out = String::new();
    let phase = s["phase"].as_str().unwrap_or("");
    let symbol = match phase {
        "progressing" => "◷",
        "paused" => "॥",
        "promoted" => "✔",
        "aborted" => "✖",
        _ => "?",
    };
    out.push_str(&format!(
        "Rollout   {}  (service {}, {} strategy, interval {})\n",
        s["name"].as_str().unwrap_or(""),
        s["service"].as_str().unwrap_or(""),
        s["strategy"].as_str().unwrap_or(""),
        s["interval"].as_str().unwrap_or("")
    ));
    let mut status = format!("{symbol} {phase}");
    if let Some(reason) = s["reason"].as_str() {
        status.push_str(&format!(": {reason}"));
    }
    if let Some(message) = s["message"].as_str().filter(|m| !m.is_empty()) {
        status.push_str(&format!(" — {message}"));
    }
    out.push_str(&format!("Status    {status}\n"));
    let steps = s["steps"].as_array().cloned().unwrap_or_default();
    let current = s["step"].as_u64().unwrap_or(0) as usize;
    let mut marks: Vec<String> = steps
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let text = match w.as_u64() {
                Some(w) => format!("{w}%"),
                None => w.as_str().unwrap_or("").to_owned(),
            };
            if i + 1 == current { format!("[{text}]") } else { text }
        })
        .collect();
    let promoted = if current == steps.len() + 1 { "[100%]" } else { "100%" };
    marks.push(promoted.to_owned());
    out.push_str(&format!("Steps     {}  (step {current} of {})\n", marks.join(" → "), steps.len()));
    let weight = s["weight"].as_u64().unwrap_or(0).min(100) as usize;
    let filled = weight * BAR / 100;
    out.push_str(&format!(
        "Weight    [{}{}] {weight:>3}% canary{}\n",
        "█".repeat(filled),
        "░".repeat(BAR - filled),
        if s["preview"] == true { " (preview: header-routed requests only)" } else { "" }
    ));
    let remaining = s["checkRemainingMs"].as_u64().map(|ms| format!(", judged in {:.0}s", (ms as f64 / 1000.0).ceil()));
    out.push_str(&format!(
        "Checks    {} failed (aborts at {}){}\n",
        s["failedChecks"].as_u64().unwrap_or(0),
        s["abortAfterFailures"].as_u64().unwrap_or(0),
        remaining.unwrap_or_default()
    ));
    let a = &s["analysis"];
    let mut bounds = vec![format!("success ≥ {}%", a["minSuccessRate"].as_f64().unwrap_or(0.0))];
    if let Some(p99) = a["maxP99LatencyMs"].as_f64() {
        bounds.push(format!("p99 ≤ {p99}ms"));
    }
    if let Some(mean) = a["maxMeanLatencyMs"].as_f64() {
        bounds.push(format!("mean ≤ {mean}ms"));
    }
    bounds.push(format!("≥ {} requests", a["minRequests"].as_u64().unwrap_or(0)));
    out.push_str(&format!("Analysis  {}\n", bounds.join(", ")));
    out.push_str(&format!(
        "          {:<22} {:>9} {:>9} {:>10} {:>10} {:>10}\n",
        "this check", "endpoints", "requests", "success", "p99", "mean"
    ));
    for (what, v) in [("canary", &s["canary"]), ("stable", &s["stable"])] {
        out.push_str(&format!(
            "          {:<22} {:>9} {:>9} {:>10} {:>10} {:>10}\n",
            format!("{what} {}", labels(&v["labels"])),
            v["endpoints"].as_u64().unwrap_or(0),
            v["requests"].as_u64().unwrap_or(0),
            pct(&v["successRate"]),
            ms(&v["p99Ms"]),
            ms(&v["meanMs"]),
        ));
    }
    out.push_str("Events\n");
    let history = s["history"].as_array().cloned().unwrap_or_default();
    for e in history.iter().skip(history.len().saturating_sub(EVENTS)) {
        out.push_str(&format!(
            "  {}  {:<13} {}\n",
            clock(e["at"].as_u64().unwrap_or(0)),
            e["event"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn status() -> Value {
        json!({
            "name": "reviews", "service": "reviews", "strategy": "canary", "phase": "progressing",
            "reason": null, "message": "step 2 of 4: checking the canary", "step": 2, "steps": [5, 10, 25, 50],
            "weight": 10, "preview": false, "interval": "30s", "failedChecks": 0, "abortAfterFailures": 2,
            "splitWritten": true, "checkRemainingMs": 11_200,
            "analysis": {"minSuccessRate": 99.0, "maxP99LatencyMs": 500.0, "maxMeanLatencyMs": null, "minRequests": 20},
            "canary": {"labels": {"version": "v2"}, "endpoints": 1, "requests": 124, "errors": 1, "successRate": 99.1935, "p99Ms": 12.34, "meanMs": 5.1},
            "stable": {"labels": {"version": "v1"}, "endpoints": 2, "requests": 1109, "errors": 1, "successRate": 99.91, "p99Ms": 10.1, "meanMs": 4.9},
            "history": [{"at": 3_600_000, "event": "started", "step": 0, "weight": 0, "message": "canary rollout of reviews started"}],
        })
    }

    #[test]
    fn the_view_shows_the_step_the_weight_and_both_versions_side_by_side() {
        let view = render(&status());
        assert!(view.contains("Status    ◷ progressing — step 2 of 4: checking the canary"), "{view}");
        assert!(view.contains("Steps     5% → [10%] → 25% → 50% → 100%  (step 2 of 4)"), "{view}");
        assert!(view.contains(&format!("Weight    [{}{}]  10% canary", "█".repeat(3), "░".repeat(27))), "{view}");
        assert!(view.contains("judged in 12s"), "{view}");
        assert!(view.contains("success ≥ 99%, p99 ≤ 500ms, ≥ 20 requests"), "{view}");
        let canary = view.lines().find(|l| l.contains("canary version=v2")).unwrap();
        assert!(canary.contains("124") && canary.contains("99.19%") && canary.contains("12.3ms"), "{canary}");
        let stable = view.lines().find(|l| l.contains("stable version=v1")).unwrap();
        assert!(stable.contains("1109") && stable.contains("99.91%") && stable.contains("10.1ms"), "{stable}");
        assert!(view.contains("01:00:00  started"), "{view}");
    }

    #[test]
    fn the_line_for_logs_has_everything_on_one_line() {
        assert_eq!(
            line(&status()),
            "reviews progressing step 2/4 weight 10% | canary 124 req 99.19% p99 12.3ms | stable 1109 req 99.91% p99 \
             10.1ms | step 2 of 4: checking the canary"
        );
        let mut aborted = status();
        aborted["phase"] = json!("aborted");
        aborted["reason"] = json!("1 failed checks; the last: success rate 90.00% < 99%");
        aborted["message"] = json!("");
        assert!(line(&aborted).ends_with("| 1 failed checks; the last: success rate 90.00% < 99%"));
        assert_ne!(change_key(&status()), change_key(&aborted));
    }
}
