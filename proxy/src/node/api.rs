//! The local workload API: HTTP/1.1 on a Unix socket (what a CNI plugin or node agent calls),
//! and `outrider-proxy node add-workload | remove-workload | list`, its client.
//!
//! - `POST /v1/workloads` with a [`WorkloadSpec`] (JSON) → 200 and the [`WorkloadInfo`];
//! - `DELETE /v1/workloads?netns=PATH` → 204;
//! - `GET /v1/workloads` → the list.
//!
//! Errors are JSON `{"error": "..."}` with 400 (bad input), 404, 409 or 503.
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};

use super::{Node, NodeError, WorkloadInfo, WorkloadSpec};

/// Largest request body accepted.
const MAX_BODY: usize = 64 << 10;

/// Bind the API socket (mode 0600: root only), replacing a stale one.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serve the API until the task is dropped.
pub async fn serve(listener: UnixListener, node: Arc<Node>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let node = node.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(handle(&node, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": msg.to_string() }))
}

fn node_error(e: &NodeError) -> Response<Full<Bytes>> {
    error(e.status(), e)
}

async fn handle(node: &Arc<Node>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/v1/workloads") => json(StatusCode::OK, &serde_json::json!(node.list())),
        (Method::POST, "/v1/workloads") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}")),
            };
            let spec: WorkloadSpec = match serde_json::from_slice(&body) {
                Ok(s) => s,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid workload: {e}")),
            };
            match node.add(spec).await {
                Ok(info) => json(StatusCode::OK, &serde_json::json!(info)),
                Err(e) => node_error(&e),
            }
        }
        (Method::DELETE, "/v1/workloads") => {
            let netns = req.uri().query().unwrap_or_default().split('&').find_map(|kv| kv.strip_prefix("netns="));
            let Some(netns) = netns.map(percent_decode) else {
                return error(StatusCode::BAD_REQUEST, "netns=PATH is required");
            };
            match node.remove(Path::new(&netns)).await {
                Ok(()) => json(StatusCode::OK, &serde_json::json!({ "removed": netns })),
                Err(e) => node_error(&e),
            }
        }
        (_, "/v1/workloads") => error(StatusCode::METHOD_NOT_ALLOWED, "use GET, POST or DELETE"),
        _ => error(StatusCode::NOT_FOUND, format!("no such path {path}; the API is /v1/workloads")),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `outrider-proxy node …`.
#[derive(Debug, Args)]
pub struct NodeCli {
    /// The node proxy's local API socket (the node proxy's `--node-socket`).
    // `OUTRIDER_NODE_<FLAG>` for a flag of `node`: the same variable as the node proxy's
    // `--node-socket`, so the CLI finds the socket the proxy listens on.
    #[arg(long, env = "OUTRIDER_NODE_SOCKET", default_value = super::DEFAULT_SOCKET, global = true)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Serve a workload: its namespace's traffic goes through this node's proxy.
    AddWorkload {
        /// The workload's network namespace (`/var/run/netns/NAME` or `/proc/PID/ns/net`).
        #[arg(long)]
        netns: PathBuf,
        /// The workload's namespace: the `ns` of its identity `spiffe://TD/ns/NS/sa/SA`.
        #[arg(long)]
        namespace: String,
        /// The workload's service account: the `sa` of its identity.
        #[arg(long)]
        service_account: String,
        /// The Service the workload is an endpoint of.
        #[arg(long)]
        service: String,
        /// KEY=VALUE, repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// The workload's IP (default: found in its namespace).
        #[arg(long)]
        address: Option<std::net::IpAddr>,
        /// The port the workload serves (default: the Service's port).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Stop serving the workload of a namespace.
    RemoveWorkload {
        /// The workload's network namespace, as it was added.
        #[arg(long)]
        netns: PathBuf,
    },
    /// The workloads served.
    List,
}

/// Run a CLI command against the node proxy's socket: 0 ok, 1 failure, 2 bad input.
pub fn run(cli: NodeCli) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outrider-proxy: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let (method, uri, body) = match cli.command {
            NodeCommand::AddWorkload { netns, namespace, service_account, service, labels, address, port } => {
                let mut map = std::collections::BTreeMap::new();
                for l in labels {
                    match l.split_once('=') {
                        Some((k, v)) if !k.is_empty() => {
                            map.insert(k.to_owned(), v.to_owned());
                        }
                        _ => {
                            eprintln!("outrider-proxy: --label: expected KEY=VALUE, got {l:?}");
                            return ExitCode::from(2);
                        }
                    }
                }
                let spec = WorkloadSpec { netns, namespace, service_account, service, labels: map, address, port };
                (Method::POST, "/v1/workloads".to_owned(), serde_json::to_vec(&spec).unwrap_or_default())
            }
            NodeCommand::RemoveWorkload { netns } => (
                Method::DELETE,
                format!("/v1/workloads?netns={}", percent_encode(&netns.display().to_string())),
                Vec::new(),
            ),
            NodeCommand::List => (Method::GET, "/v1/workloads".to_owned(), Vec::new()),
        };
        match call(&cli.socket, method, &uri, body).await {
            Ok((status, text)) if status.is_success() => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Ok((status, text)) => {
                let msg = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                eprintln!("outrider-proxy: {msg}");
                ExitCode::from(if status.is_client_error() { 2 } else { 1 })
            }
            Err(e) => {
                eprintln!("outrider-proxy: {e}");
                ExitCode::from(1)
            }
        }
    })
}

/// One request to the API socket.
pub async fn call(socket: &Path, method: Method, uri: &str, body: Vec<u8>) -> Result<(StatusCode, String), String> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        format!("cannot reach the node proxy at {}: {e}; is `outrider-proxy --mode node` running?", socket.display())
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("node API handshake: {e}"))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::HOST, "node")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| format!("node API request: {e}"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The workloads as the API lists them.
pub fn parse_list(text: &str) -> Result<Vec<WorkloadInfo>, serde_json::Error> {
    serde_json::from_str(text)
}
