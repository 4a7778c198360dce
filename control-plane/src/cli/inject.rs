//! `outrider inject -f FILE`: Kubernetes YAML in, the same YAML with the sidecar injected out,
//! by the code the webhook runs ([`crate::kubernetes::inject::manifest`]). The roots injected
//! proxies trust for the control plane are `--ca-root FILE`, else the control plane's
//! `GET /v1/ca/bundle` (at `--server`).

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::ExitCode;

use http::Method;

use super::{Connection, call};
use crate::kubernetes::inject::InjectArgs;
use crate::kubernetes::inject::manifest::{DocOutcome, inject_stream};

/// The input: a file, or standard input for `-`.
fn read_input(path: &Path) -> Result<String, String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| format!("standard input: {e}"))?;
        return Ok(text);
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The PEM roots injected proxies trust.
fn roots(conn: &Connection) -> Result<String, ExitCode> {
    if let Some(path) = &conn.ca_root {
        return std::fs::read_to_string(path).map_err(|e| {
            eprintln!("outrider: --ca-root {}: {e}", path.display());
            ExitCode::from(2)
        });
    }
    let reply = call(conn, Method::GET, "/v1/ca/bundle", None)?;
    if !reply.status.is_success() {
        eprintln!(
            "outrider: cannot read the mesh's roots from {}: {} (give them with --ca-root FILE)",
            conn.server, reply.status
        );
        return Err(ExitCode::from(1));
    }
    let roots: Vec<String> = reply
        .json()
        .get("roots")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    if roots.is_empty() {
        eprintln!("outrider: {} answered no roots at /v1/ca/bundle (give them with --ca-root FILE)", conn.server);
        return Err(ExitCode::from(1));
    }
    Ok(roots.concat())
}

/// Writes the injected stream to stdout and one line per workload to stderr.
pub fn inject(conn: &Connection, file: &Path, args: &InjectArgs) -> ExitCode {
    let text = match read_input(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("outrider: {e}");
            return ExitCode::from(2);
        }
    };
    let roots = match roots(conn) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let config = match args.config(&roots) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("outrider: {e}");
            return ExitCode::from(2);
        }
    };
    let (out, reports) = match inject_stream(&text, &config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("outrider: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    for r in &reports {
        match &r.outcome {
            DocOutcome::Injected => eprintln!("{}/{}: injected", r.kind, r.name),
            DocOutcome::Skipped(why) => eprintln!("{}/{}: not injected: {why}", r.kind, r.name),
            DocOutcome::NotAWorkload => {}
        }
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()) {
        eprintln!("outrider: cannot write the output: {e}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
