//! The workspace has one `unsafe` block: `proxy/src/heap.rs` (glibc's `malloc_trim`, with the
//! comment that proves it sound). The workspace lint is `deny` rather than `forbid` so that one
//! exception can be allowed; this test keeps it the only one: no other `unsafe` keyword and no
//! other `allow(unsafe_code)` / `expect(unsafe_code)` in any Rust source of the repository.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// The one file allowed an `unsafe` block, and how many it has.
const EXCEPTION: (&str, usize) = ("proxy/src/heap.rs", 1);

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | "node_modules" | ".git" | "corpus" | "artifacts") {
                rust_sources(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// Lines of `text` that use the `unsafe` keyword or allow unsafe code (comments and string
/// literals on a line of their own are not code, but a keyword after code on the line counts).
fn unsafe_uses(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = without_strings(line);
        let code = code.split("//").next().unwrap_or("");
        let words = code.split(|c: char| !(c.is_alphanumeric() || c == '_'));
        let keyword = words.clone().any(|w| w == "unsafe");
        let allows = code.contains("allow(unsafe_code") || code.contains("expect(unsafe_code");
        if keyword || allows {
            found.push(line.trim().to_string());
        }
    }
    found
}

/// `line` with the contents of its string literals left out (`"--unsafe-no-fsync"` is an
/// argument, not code; a `//` inside a string does not start a comment).
fn without_strings(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in line.chars() {
        if in_string {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => {
                    in_string = false;
                    out.push('"');
                }
                _ => escaped = false,
            }
        } else {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

#[test]
fn the_only_unsafe_code_is_the_audited_malloc_trim() {
    let root = repository();
    let mut files = Vec::new();
    for dir in ["proxy", "control-plane", "xds", "tests", "benches", "fuzz"] {
        rust_sources(&root.join(dir), &mut files);
    }
    assert!(files.len() > 100, "found only {} Rust files under {}", files.len(), root.display());
    let mut outside = Vec::new();
    let mut in_exception = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
        if rel == "tests/tests/unsafe_code.rs" {
            continue; // this file names what it looks for
        }
        let uses = unsafe_uses(&std::fs::read_to_string(file).unwrap());
        if rel == EXCEPTION.0 {
            in_exception = uses;
        } else {
            outside.extend(uses.into_iter().map(|l| format!("{rel}: {l}")));
        }
    }
    assert!(outside.is_empty(), "unsafe code outside {}:\n{}", EXCEPTION.0, outside.join("\n"));
    let blocks = in_exception.iter().filter(|l| l.contains("unsafe {")).count();
    assert_eq!(blocks, EXCEPTION.1, "{} should hold exactly one unsafe block: {in_exception:?}", EXCEPTION.0);
}

#[test]
fn the_scan_sees_unsafe_code() {
    // The scan itself: a keyword in code counts, in a comment it does not.
    assert_eq!(unsafe_uses("let x = unsafe { f() };\n// unsafe in a comment\n").len(), 1);
    assert_eq!(unsafe_uses("#[allow(unsafe_code)]\nfn f() {}").len(), 1);
    assert_eq!(unsafe_uses("unsafe fn g() {}").len(), 1);
    assert!(unsafe_uses("let unsafe_code = 1; // unsafe").is_empty());
    assert!(unsafe_uses(r#"cmd.args(["--unsafe-no-fsync"]);"#).is_empty());
    assert_eq!(unsafe_uses(r#"let u = "http://x"; unsafe { f() }"#).len(), 1);
    assert_eq!(unsafe_uses(r#"let q = "a\"b"; unsafe { f() }"#).len(), 1);
}
