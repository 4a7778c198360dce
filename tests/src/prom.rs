//! Reading values out of the Prometheus text exposition.

/// One sample: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Every sample of an exposition (comments skipped).
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.trim().parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)),
        None => (series, Vec::new()),
    };
    Some(Sample { name: name.to_string(), labels, value })
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((k.trim_start_matches(',').trim().to_string(), value));
        rest = &after[end..];
    }
    out
}

/// Sum of every sample named `name` whose labels include all of `labels`.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v)))
        .map(|s| s.value)
        .sum()
}

/// Whether a family is declared (`# TYPE name ...`) or has a sample named `name`.
pub fn has(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix("# TYPE ").and_then(|r| r.split_whitespace().next()) == Some(name)
            || l.split(['{', ' ']).next() == Some(name)
    })
}

/// `promtool check metrics` on `text`; false (after saying so) when promtool is not installed.
pub async fn promtool_check(what: &str, text: &str) -> bool {
    let mut child = match tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::skip("skipping the promtool check: promtool is not installed (CI installs it)");
            return false;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let mut stdin = child.stdin.take().expect("promtool's stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, text.as_bytes()).await.expect("writing to promtool");
    drop(stdin);
    let out = crate::wait::within("promtool", child.wait_with_output()).await.expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics failed for {what}:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_sums() {
        let text = "# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"z\"} 2\nx_total{a=\"2\",b=\"y\"} 3\ny 1.5\n";
        assert_eq!(sum(text, "x_total", &[]), 5.0);
        assert_eq!(sum(text, "x_total", &[("b", "q\"z")]), 2.0);
        assert_eq!(sum(text, "y", &[]), 1.5);
        assert!(has(text, "x") && has(text, "y") && !has(text, "z"));
    }
}
