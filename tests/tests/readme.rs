//! The README's "Try the proxy with curl" runs as written: its shell blocks, in order, from the
//! repository root, with this build's binaries on `PATH`, in a network namespace of its own (so
//! that its fixed ports never meet another run's). Each command's output is checked, against the
//! output the README shows under it where that output is always the same.
//! Needs root, `ip`, `python3` and `curl`; skipped otherwise. And its "Run the tests" names
//! every package `.ci/run` installs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use outrider_tests::binary::proxy_bin;
use outrider_tests::netns::{Netns, unsupported};

/// The comment that opens the section's tested blocks.
const START: &str = "<!-- The fenced blocks of this section run in CI";
/// Printed before each command, to split the output.
const MARK: &str = "@@@ command ";
/// The whole walkthrough is bounded (it makes about 110 requests).
const BOUND: Duration = Duration::from_secs(120);

/// A command of the README and the output it shows under it (its `# ` comment lines).
#[derive(Debug)]
struct Step {
    command: String,
    shown: Vec<String>,
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The commands of the fenced `sh` blocks from [`START`] to the next `## ` heading.
fn walkthrough(readme: &str) -> Vec<Step> {
    let from = readme.find(START).expect("the README marks its tested section");
    let section = &readme[from..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut steps: Vec<Step> = Vec::new();
    let mut in_block = false;
    for line in section.lines() {
        match (in_block, line.trim_end()) {
            (false, "```sh") => in_block = true,
            (true, "```") => in_block = false,
            (true, "") => {}
            (true, comment) if comment.starts_with('#') => {
                let shown = comment.trim_start_matches('#').strip_prefix(' ').unwrap_or("");
                steps.last_mut().expect("a command before its output").shown.push(shown.to_owned());
            }
            (true, command) => steps.push(Step { command: command.to_owned(), shown: Vec::new() }),
            (false, _) => {}
        }
    }
    steps
}

/// `text` with every 16-hex-digit word (a config version) replaced by `VERSION`, and how many
/// distinct versions it held.
fn versions_hidden(text: &str) -> (String, usize) {
    let mut hidden = text.to_owned();
    let mut found = BTreeSet::new();
    for word in text.split(|c: char| !c.is_ascii_hexdigit()) {
        if word.len() == 16 {
            found.insert(word);
            hidden = hidden.replace(word, "VERSION");
        }
    }
    (hidden, found.len())
}

/// What a command must print.
fn check(step: &Step, output: &str) {
    let lines: Vec<&str> = output.lines().collect();
    let command = step.command.as_str();
    // Versions are content hashes of the example policy's resources: the same every run, but
    // they change whenever the translation does, so they are compared as `VERSION`.
    let exact = || {
        let printed: Vec<String> = lines.iter().map(|l| versions_hidden(l).0).collect();
        let shown: Vec<String> = step.shown.iter().map(|l| versions_hidden(l).0).collect();
        assert_eq!(printed, shown, "`{command}` prints what the README shows");
    };
    let one_version = || {
        assert!(lines == ["v1"] || lines == ["v2"], "`{command}`: v1 or v2, got {output:?}");
        assert!(step.shown == ["v1"] || step.shown == ["v2"], "`{command}`: the README shows a version");
    };
    if command.ends_with('&') || command.starts_with("kill ") {
        assert!(lines.is_empty(), "`{command}` prints nothing, got {output:?}");
    } else if command.contains("uniq -c") {
        // 100 requests split at random 90/10.
        let mut counts = std::collections::BTreeMap::new();
        for line in lines.iter().copied().chain(step.shown.iter().map(String::as_str)) {
            let (n, version) = line.trim().split_once(' ').expect("COUNT VERSION");
            assert!(version == "v1" || version == "v2", "`{command}`: {line:?}");
            counts.entry(version).or_insert_with(Vec::new).push(n.parse::<u32>().unwrap());
        }
        for (version, n) in &counts {
            assert_eq!(n.len(), 2, "{version} in the output and in the README: {output:?}");
        }
        let (printed, shown): (Vec<u32>, Vec<u32>) =
            (counts.values().map(|n| n[0]).collect(), counts.values().map(|n| n[1]).collect());
        assert_eq!(printed.iter().sum::<u32>(), 100, "{output:?}");
        assert_eq!(shown.iter().sum::<u32>(), 100, "the README's counts add up to 100");
        assert!(counts["v1"][0] > counts["v2"][0], "mostly v1: {output:?}");
    } else if command == "curl -s -H 'Host: echo:8080' http://127.0.0.1:15001/" || command.starts_with("http_proxy=") {
        one_version();
    } else if command.contains("/metrics") {
        // The same lines, in any order (the text exposition does not sort them).
        let printed: BTreeSet<&str> = lines.iter().copied().collect();
        let shown: BTreeSet<&str> = step.shown.iter().map(String::as_str).collect();
        assert_eq!(printed, shown, "`{command}` prints what the README shows");
    } else if command.contains("[\"versions\"]") {
        // One file: one version for all four resource types.
        let (_, distinct) = versions_hidden(output);
        assert_eq!(distinct, 1, "`{command}`: one version for all four types: {output:?}");
        exact();
    } else {
        // Everything else prints the same every time: the versions are content hashes of the
        // example policy, the canary always goes to v2, an unknown name always gets the 404.
        exact();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_as_written() {
    if let Some(why) = unsupported() {
        return outrider_tests::skip(&format!("skipping the README walkthrough: {why}"));
    }
    let curl = std::process::Command::new("curl").arg("--version").stdout(Stdio::null()).status();
    if !curl.is_ok_and(|s| s.success()) {
        return outrider_tests::skip("skipping the README walkthrough: curl is not installed");
    }
    let readme = std::fs::read_to_string(repository().join("README.md")).unwrap();
    let steps = walkthrough(&readme);
    assert!(steps.len() >= 10, "the walkthrough has its commands: {steps:#?}");

    let bin = proxy_bin();
    let bin_dir = bin.parent().unwrap();
    assert!(bin_dir.join("outrider").exists(), "build the binaries first (cargo build --workspace --all-targets)");
    let python = std::process::Command::new("python3")
        .args(["-c", "import sys, os; print(os.path.dirname(sys.executable))"])
        .output()
        .unwrap();
    let python_dir = String::from_utf8_lossy(&python.stdout).trim().to_owned();
    let mut script = format!(
        "set -e\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\nexport PATH='{}:{python_dir}':\"$PATH\"\ncd '{}'\n",
        bin_dir.display(),
        repository().display()
    );
    for (i, step) in steps.iter().enumerate() {
        script.push_str(&format!("echo '{MARK}{i}'\n{}\n", step.command));
    }

    let ns = Netns::create().expect("a network namespace");
    let mut cmd = ns.command("bash");
    cmd.arg("-c").arg(&script).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let child = cmd.spawn().unwrap();
    let out = tokio::time::timeout(BOUND, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the walkthrough did not finish within {BOUND:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the walkthrough failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);

    let mut outputs = vec![String::new(); steps.len()];
    let mut current = None;
    for line in stdout.lines() {
        if let Some(i) = line.strip_prefix(MARK) {
            current = Some(i.parse::<usize>().unwrap());
        } else if let Some(i) = current {
            outputs[i].push_str(line);
            outputs[i].push('\n');
        }
    }
    for (step, output) in steps.iter().zip(&outputs) {
        check(step, output);
    }
}

/// The README's "Run the tests" names everything `.ci/run` installs: each Debian package of its
/// `apt-get install` lines, each Python package of its `pip install` lines (with its pinned
/// version), each crate of its `cargo install` lines. One list, kept in one place.
#[test]
fn the_test_dependencies_in_the_readme_match_what_ci_installs() {
    let root = repository();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let from = readme.find("## Run the tests").expect("the README has a \"Run the tests\" section");
    let section = &readme[from..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    // Continuation lines joined, so a command is one line.
    let ci = ci.replace("\\\n", " ");
    let mut wanted = BTreeSet::new();
    for line in ci.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let args = |after: &[&str]| -> Vec<String> {
            let Some(at) = words.windows(after.len()).position(|w| w == after) else { return Vec::new() };
            words[at + after.len()..]
                .iter()
                .take_while(|w| !w.starts_with('>') && !w.starts_with('|') && **w != "||")
                .filter(|w| !w.starts_with('-'))
                .map(|w| w.trim_matches('"').to_string())
                .collect()
        };
        wanted.extend(args(&["apt-get", "install"]));
        wanted.extend(args(&["pip", "install"]));
        wanted.extend(args(&["cargo", "install"]));
    }
    assert!(wanted.len() > 20, "the install lines of .ci/run were found: {wanted:?}");
    let missing: Vec<&String> = wanted.iter().filter(|w| !section.contains(w.as_str())).collect();
    assert!(missing.is_empty(), "installed by .ci/run but not named in the README's \"Run the tests\": {missing:?}");
}
