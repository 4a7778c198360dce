//! The verbs that talk to a running control plane: `apply`, `get`, `delete`, `status`, `rollout`,
//! `token create`.
//! Exit codes: 0 ok, 1 runtime failure (server unreachable, conflict, server error), 2 bad
//! usage or invalid input.

/// `outrider check`.
pub mod check;
pub mod client;
/// `outrider inject`.
pub mod inject;
/// `outrider rollout VERB NAME [-w]`.
pub mod rollout;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use http::{Method, StatusCode};
use serde_json::Value;

use client::Reply;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// Where the control plane is and who we are.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// URL of the control plane's API.
    #[arg(long, env = "OUTRIDER_SERVER", default_value = "http://127.0.0.1:15014", global = true)]
    pub server: String,
    /// Bearer token for writes.
    #[arg(long, env = "OUTRIDER_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Root certificate(s) (PEM) to trust for an https:// server (a control plane run with
    /// `--tls`: its DATA_DIR/root.pem).
    #[arg(long, env = "OUTRIDER_CA_ROOT", global = true)]
    pub ca_root: Option<PathBuf>,
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("outrider: cannot start a runtime: {e}");
            None
        }
    }
}

fn call(conn: &Connection, method: Method, path: &str, body: Option<String>) -> Result<Reply, ExitCode> {
    let rt = runtime().ok_or(ExitCode::from(1))?;
    rt.block_on(client::send_with_root(
        &conn.server,
        conn.ca_root.as_deref(),
        method,
        path,
        conn.token.as_deref(),
        body,
    ))
    .map_err(|e| {
        eprintln!("outrider: {e}");
        ExitCode::from(1)
    })
}

/// Exit code and message for a failed reply; `sent` maps errors about the request body back
/// to the files it was made of.
pub(crate) fn failed(reply: &Reply, sent: Option<&Body>) -> ExitCode {
    let v = reply.json();
    if let Some(errors) = v.get("errors").and_then(Value::as_array) {
        for e in errors {
            eprintln!("{}", describe_error(e, sent));
        }
    } else {
        let msg = v.get("error").and_then(Value::as_str).unwrap_or(&reply.body);
        eprintln!("outrider: {} {}", reply.status, msg.trim());
        if reply.status == StatusCode::UNAUTHORIZED {
            eprintln!("{}", token_hint());
        }
    }
    match reply.status {
        StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::PAYLOAD_TOO_LARGE => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

/// What to do about a 401: where the token is and how to pass it.
fn token_hint() -> String {
    let generated = match crate::server::default_data_dir() {
        Some(dir) => format!("{}", dir.join(crate::server::TOKEN_FILE).display()),
        None => format!("DATA_DIR/{}", crate::server::TOKEN_FILE),
    };
    format!(
        "Writes need the control plane's API token: the one it was started with (--api-token, \
         --api-token-file) or, without those, the one it generated in DATA_DIR/{file} (with the \
         default --data-dir: {generated}). Pass it with --token or OUTRIDER_TOKEN, e.g.\n  \
         OUTRIDER_TOKEN=$(cat {generated}) outrider ...",
        file = crate::server::TOKEN_FILE,
    )
}

fn describe_error(e: &Value, sent: Option<&Body>) -> String {
    let s = |k: &str| e.get(k).and_then(Value::as_str);
    let line = e.get("line").and_then(Value::as_u64).and_then(|l| usize::try_from(l).ok());
    let column = e.get("column").and_then(Value::as_u64);
    let file = s("file").unwrap_or("request");
    // An error about the body sent: name the file (and its line) it came from.
    let local = match (file, sent) {
        ("request", Some(body)) => body.locate(line),
        _ => None,
    };
    let mut out = match &local {
        Some((name, _)) => name.clone(),
        None => file.to_owned(),
    };
    if let (Some(line), Some(column)) = (local.as_ref().map_or(line, |(_, l)| *l), column) {
        out.push_str(&format!(":{line}:{column}"));
    }
    if let Some(d) = e.get("document").and_then(Value::as_u64) {
        // Document numbers count through the whole body, which is one file only for `-f FILE`.
        if sent.is_none_or(|body| body.files.len() == 1) {
            out.push_str(&format!(": document {d}"));
        } else {
            out.push(':');
        }
    }
    if let (Some(k), Some(n)) = (s("kind"), s("name")) {
        out.push_str(&format!(" ({k}/{n})"));
    }
    out.push(':');
    if let Some(f) = s("field") {
        out.push_str(&format!(" {f}:"));
    }
    out.push_str(&format!(" {}", s("message").unwrap_or("")));
    out
}

/// The request body of `apply`: the files it was made of, and where each starts.
pub(crate) struct Body {
    text: String,
    /// (file name, line of the body where the file starts), in order.
    files: Vec<(String, usize)>,
}

impl Body {
    /// The file and the line in it for a line of the body.
    fn locate(&self, line: Option<usize>) -> Option<(String, Option<usize>)> {
        match line {
            None if self.files.len() == 1 => self.files.first().map(|(name, _)| (name.clone(), None)),
            None => None,
            Some(line) => {
                let (name, start) = self.files.iter().rev().find(|(_, start)| *start <= line)?;
                Some((name.clone(), Some(line - start + 1)))
            }
        }
    }
}

/// The text of a file, or of every `*.yaml`/`*.yml` of a directory, as one YAML stream.
fn read_documents(path: &Path) -> Result<Body, String> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Body { text: String::new(), files: Vec::new() };
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        if !out.files.is_empty() {
            out.text.push_str("\n---\n");
        }
        let start = out.text.matches('\n').count() + 1;
        out.files.push((f.display().to_string(), start));
        out.text.push_str(&text);
    }
    Ok(out)
}

pub fn apply(conn: &Connection, path: &Path, output: Output) -> ExitCode {
    let body = match read_documents(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("outrider: cannot read {e}");
            return ExitCode::from(2);
        }
    };
    let reply = match call(conn, Method::PUT, "/v1/policies", Some(body.text.clone())) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if !reply.status.is_success() {
        return failed(&reply, Some(&body));
    }
    let v = reply.json();
    match output {
        Output::Table => {
            for c in v["changes"].as_array().into_iter().flatten() {
                println!(
                    "{}/{} {}",
                    c["kind"].as_str().unwrap_or(""),
                    c["name"].as_str().unwrap_or(""),
                    c["action"].as_str().unwrap_or("")
                );
            }
        }
        other => print_value(&v, other),
    }
    ExitCode::SUCCESS
}

pub fn get(conn: &Connection, kind: Option<&str>, name: Option<&str>, output: Output) -> ExitCode {
    let mut path = "/v1/policies".to_owned();
    for part in [kind, name].into_iter().flatten() {
        path.push('/');
        path.push_str(part);
    }
    let reply = match call(conn, Method::GET, &path, None) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if !reply.status.is_success() {
        return failed(&reply, None);
    }
    let v = reply.json();
    let items: Vec<Value> = match v.get("items").and_then(Value::as_array) {
        Some(items) => items.clone(),
        None => vec![v.clone()],
    };
    match output {
        Output::Table => {
            let text = |v: &Value| match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            let rows = items
                .iter()
                .map(|i| vec![text(&i["kind"]), text(&i["name"]), text(&i["resourceVersion"]), text(&i["source"])])
                .collect();
            print!("{}", table(&["KIND", "NAME", "VERSION", "SOURCE"], rows));
        }
        Output::Json => print_value(&v, Output::Json),
        Output::Yaml => {
            // The documents themselves, ready for `apply -f`.
            for (n, i) in items.iter().enumerate() {
                if n > 0 {
                    println!("---");
                }
                print!("{}", serde_yaml_ng::to_string(&i["document"]).unwrap_or_default());
            }
        }
    }
    ExitCode::SUCCESS
}

pub fn delete(conn: &Connection, kind: &str, name: &str) -> ExitCode {
    let reply = match call(conn, Method::DELETE, &format!("/v1/policies/{kind}/{name}"), None) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if !reply.status.is_success() {
        return failed(&reply, None);
    }
    println!("{kind}/{name} deleted");
    ExitCode::SUCCESS
}

pub fn status(conn: &Connection, output: Output) -> ExitCode {
    let reply = match call(conn, Method::GET, "/v1/status", None) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if !reply.status.is_success() {
        return failed(&reply, None);
    }
    let v = reply.json();
    if output != Output::Table {
        print_value(&v, output);
        return ExitCode::SUCCESS;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    println!("config version {}", v["version"].as_str().unwrap_or(""));
    let mut rows = Vec::new();
    let mut nacks = Vec::new();
    let mut warnings = Vec::new();
    for p in v["proxies"].as_array().into_iter().flatten() {
        let node = p["nodeId"].as_str().unwrap_or("");
        if let Some(why) = p["registrationRefused"].as_str() {
            warnings.push(format!("REGISTRATION REFUSED {node}: {why}"));
        }
        if p["serviceMissing"].as_bool() == Some(true) {
            warnings.push(format!(
                "SERVICE MISSING {node}: service {:?} is not in the config; its inbound traffic has no mTLS mode or authorization policy",
                p["service"].as_str().unwrap_or("")
            ));
        }
        let mut cell = |t: &str| {
            let s = &p["types"][t];
            if s.is_null() {
                return "-".to_owned();
            }
            if let Some(n) = s.get("nack").filter(|n| !n.is_null()) {
                nacks.push(format!("{node} {t}: {}", n["error"].as_str().unwrap_or("")));
                return format!("NACK {}", short(n["version"].as_str().unwrap_or("")));
            }
            let (sent, acked) = (s["sent"].as_str().unwrap_or(""), s["acked"].as_str().unwrap_or(""));
            if !sent.is_empty() && sent == acked {
                format!("ACK {}", short(acked))
            } else {
                format!("SENT {}", short(sent))
            }
        };
        let types = [cell("Cluster"), cell("ClusterLoadAssignment"), cell("Listener"), cell("RouteConfiguration")];
        let seen = now.saturating_sub(p["lastSeen"].as_u64().unwrap_or(now));
        let mut row = vec![
            node.to_owned(),
            p["service"].as_str().unwrap_or("").to_owned(),
            p["protocol"].as_str().unwrap_or("").to_owned(),
        ];
        row.extend(types);
        row.push(format!("{seen}s ago"));
        row.push(p["identity"].as_str().unwrap_or("-").to_owned());
        rows.push(row);
    }
    let header = ["NODE", "SERVICE", "XDS", "CDS", "EDS", "LDS", "RDS", "LAST SEEN", "IDENTITY"];
    print!("{}", table(&header, rows));
    for n in nacks {
        println!("NACK {n}");
    }
    for w in warnings {
        println!("{w}");
    }
    ExitCode::SUCCESS
}

/// What `outrider token create` asks for.
#[derive(Debug, Clone)]
pub struct TokenArgs {
    pub namespace: String,
    pub service_account: String,
    pub ttl: Option<std::time::Duration>,
    pub single_use: bool,
}

/// `outrider token create`: `output` `None` prints only the token (`-q`).
pub fn token_create(conn: &Connection, args: &TokenArgs, output: Option<Output>) -> ExitCode {
    let mut body = serde_json::json!({
        "namespace": args.namespace,
        "serviceAccount": args.service_account,
        "singleUse": args.single_use,
    });
    if let Some(ttl) = args.ttl {
        body["ttl"] = Value::String(format!("{}s", ttl.as_secs().max(1)));
    }
    let reply = match call(conn, Method::POST, "/v1/tokens", Some(body.to_string())) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if !reply.status.is_success() {
        return failed(&reply, None);
    }
    let v = reply.json();
    let Some(token) = v["token"].as_str() else {
        eprintln!("outrider: the server's answer has no token: {}", reply.body.trim());
        return ExitCode::from(1);
    };
    match output {
        None => println!("{token}"),
        Some(Output::Table) => {
            let expires = v["expiresAt"].as_u64().unwrap_or(0);
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let left = expires.saturating_sub(now);
            println!("TOKEN      {token}");
            println!("IDENTITY   {}", v["identity"].as_str().unwrap_or(""));
            println!("EXPIRES    {expires} (unix seconds; in {}h{:02}m)", left / 3600, left % 3600 / 60);
            println!("SINGLE USE {}", v["singleUse"].as_bool().unwrap_or(false));
        }
        Some(other) => print_value(&v, other),
    }
    ExitCode::SUCCESS
}

/// `outrider token revoke`: prints how many tokens were revoked.
pub fn token_revoke(conn: &Connection, namespace: &str, service_account: &str) -> ExitCode {
    let path = format!("/v1/tokens/{namespace}/{service_account}");
    let reply = match call(conn, Method::DELETE, &path, None) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if !reply.status.is_success() {
        return failed(&reply, None);
    }
    let v = reply.json();
    println!(
        "revoked {} of {}",
        count(v["revoked"].as_u64().unwrap_or(0) as usize, "join token", "join tokens"),
        v["identity"].as_str().unwrap_or("")
    );
    ExitCode::SUCCESS
}

/// `1 service`, `2 services`.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Columns as wide as their widest cell, three spaces apart (as kubectl prints them); the last
/// column is not padded.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}   "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn short(version: &str) -> &str {
    version.get(..8).unwrap_or(version)
}

pub(crate) fn print_value(v: &Value, output: Output) {
    match output {
        Output::Yaml => print!("{}", serde_yaml_ng::to_string(v).unwrap_or_default()),
        _ => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_line_up_whatever_the_cell_widths() {
        let rows = vec![
            vec!["Service".into(), "a-name-longer-than-thirty-characters-x".into(), "12".into(), "api".into()],
            vec!["TrafficPolicy".into(), "b".into(), "3".into(), "dir/b.yaml".into()],
        ];
        let text = table(&["KIND", "NAME", "VERSION", "SOURCE"], rows);
        let lines: Vec<&str> = text.lines().collect();
        let column = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(column(lines[0], "VERSION"), column(lines[1], "12"));
        assert_eq!(column(lines[0], "VERSION"), column(lines[2], "3"));
        assert_eq!(column(lines[0], "SOURCE"), column(lines[2], "dir/b.yaml"));
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn counts_are_singular_for_one() {
        assert_eq!(count(1, "traffic policy", "traffic policies"), "1 traffic policy");
        assert_eq!(count(0, "service", "services"), "0 services");
        assert_eq!(count(2, "service", "services"), "2 services");
    }

    #[test]
    fn errors_about_the_body_name_the_file_and_its_line() {
        let body = Body { text: String::new(), files: vec![("a.yaml".into(), 1), ("b.yaml".into(), 12)] };
        let error = serde_json::json!({
            "file": "request", "document": 4, "kind": "Service", "name": "x", "field": "spec.port",
            "message": "required field is missing", "line": 14, "column": 1,
        });
        assert_eq!(
            describe_error(&error, Some(&body)),
            "b.yaml:3:1: (Service/x): spec.port: required field is missing"
        );
        let one = Body { text: String::new(), files: vec![("a.yaml".into(), 1)] };
        assert_eq!(
            describe_error(&error, Some(&one)),
            "a.yaml:14:1: document 4 (Service/x): spec.port: required field is missing"
        );
        let stored = serde_json::json!({"file": "stored Service/y", "document": 1, "message": "m"});
        assert_eq!(describe_error(&stored, Some(&one)), "stored Service/y: document 1: m");
    }
}
