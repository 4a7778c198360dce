//! The verbs that talk to a running control plane: `apply`, `get`, `delete`, `status`, `rollout`,
//! `token create`.
//! Exit codes: 0 ok, 1 runtime failure (server unreachable, conflict, server error), 2 bad
//! usage or invalid input.

pub mod client;
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

/// Exit code and message for a failed reply.
pub(crate) fn failed(reply: &Reply) -> ExitCode {
    let v = reply.json();
    if let Some(errors) = v.get("errors").and_then(Value::as_array) {
        for e in errors {
            eprintln!("{}", describe_error(e));
        }
    } else {
        let msg = v.get("error").and_then(Value::as_str).unwrap_or(&reply.body);
        eprintln!("outrider: {} {}", reply.status, msg.trim());
    }
    match reply.status {
        StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::PAYLOAD_TOO_LARGE => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

fn describe_error(e: &Value) -> String {
    let s = |k: &str| e.get(k).and_then(Value::as_str);
    let mut out = s("file").unwrap_or("request").to_owned();
    if let Some(d) = e.get("document").and_then(Value::as_u64) {
        out.push_str(&format!(": document {d}"));
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

/// The text of a file, or of every `*.yaml`/`*.yml` of a directory, as one YAML stream.
fn read_documents(path: &Path) -> Result<String, String> {
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
    let mut out = String::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        if !out.is_empty() {
            out.push_str("\n---\n");
        }
        out.push_str(&text);
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
    let reply = match call(conn, Method::PUT, "/v1/policies", Some(body)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if !reply.status.is_success() {
        return failed(&reply);
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
        return failed(&reply);
    }
    let v = reply.json();
    let items: Vec<Value> = match v.get("items").and_then(Value::as_array) {
        Some(items) => items.clone(),
        None => vec![v.clone()],
    };
    match output {
        Output::Table => {
            println!("{:<15} {:<30} {:<9} SOURCE", "KIND", "NAME", "VERSION");
            for i in &items {
                println!(
                    "{:<15} {:<30} {:<9} {}",
                    i["kind"].as_str().unwrap_or(""),
                    i["name"].as_str().unwrap_or(""),
                    i["resourceVersion"],
                    i["source"].as_str().unwrap_or("")
                );
            }
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
        return failed(&reply);
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
        return failed(&reply);
    }
    let v = reply.json();
    if output != Output::Table {
        print_value(&v, output);
        return ExitCode::SUCCESS;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    println!("config version {}", v["version"].as_str().unwrap_or(""));
    println!(
        "{:<32} {:<16} {:<6} {:<20} {:<20} {:<20} {:<20} {:<12} IDENTITY",
        "NODE", "SERVICE", "XDS", "CDS", "EDS", "LDS", "RDS", "LAST SEEN"
    );
    let mut nacks = Vec::new();
    for p in v["proxies"].as_array().into_iter().flatten() {
        let node = p["nodeId"].as_str().unwrap_or("");
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
        let row = [cell("Cluster"), cell("ClusterLoadAssignment"), cell("Listener"), cell("RouteConfiguration")];
        let seen = now.saturating_sub(p["lastSeen"].as_u64().unwrap_or(now));
        println!(
            "{:<32} {:<16} {:<6} {:<20} {:<20} {:<20} {:<20} {:<12} {}",
            node,
            p["service"].as_str().unwrap_or(""),
            p["protocol"].as_str().unwrap_or(""),
            row[0],
            row[1],
            row[2],
            row[3],
            format!("{seen}s ago"),
            p["identity"].as_str().unwrap_or("-"),
        );
    }
    for n in nacks {
        println!("NACK {n}");
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
        return failed(&reply);
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

fn short(version: &str) -> &str {
    version.get(..8).unwrap_or(version)
}

pub(crate) fn print_value(v: &Value, output: Output) {
    match output {
        Output::Yaml => print!("{}", serde_yaml_ng::to_string(v).unwrap_or_default()),
        _ => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
}
