//! What each fuzz target does with its input, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`, built by cargo-fuzz; CI runs them on the stable toolchain with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none`) and the replay of the stored inputs in
//! the tests (`tests/tests/fuzz_corpus.rs` includes this file), so every test run checks every
//! stored input without cargo-fuzz. Each function panics only on a finding: a property broken,
//! or a panic inside the code under test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a target does with one input.
pub type Target = fn(&[u8]);

/// Every target, by name (the directory names under `fuzz/seeds/` and `fuzz/corpus/`).
pub const TARGETS: [(&str, Target); 10] = [
    ("policy_yaml", policy_yaml),
    ("protocol_detect", protocol_detect),
    ("xds_snapshot", xds_snapshot),
    ("http1_head", http1_head),
    ("h2_frames", h2_frames),
    ("authz_path", authz_path),
    ("cp_api", cp_api),
    ("load_report", load_report),
    ("h2_frame_decode", h2_frame_decode),
    ("hpack_decode", hpack_decode),
];

/// Policy files are operator input: any bytes give a set or errors, and a valid set translates.
pub fn policy_yaml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(set) = outrider_xds::load_str("fuzz.yaml", text)
    {
        let _ = outrider_xds::translate(&set);
    }
}

/// The first bytes of every accepted connection: the HTTP/opaque classifier, the TLS
/// ClientHello peek (a peer proxy's ALPN), and the HTTP/1-or-h2 preface check.
pub fn protocol_detect(data: &[u8]) {
    let _ = outrider_proxy::transport::detect::classify(data);
    let _ = outrider_proxy::transport::detect::client_hello_alpn(data);
    let _ = outrider_proxy::http::preface::classify(data);
}

/// Resources from an xDS server: decoding any bytes as a Cluster, RouteConfiguration or
/// Listener and building a snapshot.
pub fn xds_snapshot(data: &[u8]) {
    use envoy_types::pb::envoy::config::{cluster::v3::Cluster, listener::v3::Listener, route::v3::RouteConfiguration};
    use prost::Message;
    let mut res = outrider_xds::Resources::default();
    let third = data.len() / 3;
    if let Ok(c) = Cluster::decode(&data[..third]) {
        res.clusters.push(c);
    }
    if let Ok(r) = RouteConfiguration::decode(&data[third..2 * third]) {
        res.routes.push(r);
    }
    if let Ok(l) = Listener::decode(&data[2 * third..]) {
        res.listeners.push(l);
    }
    let _ = outrider_proxy::state::Builder::new().build(&res);
}

/// A stuck connection ends after the header read timeout; this short one keeps a fuzzer that
/// finds one from stalling (the whole input is sent and half-closed, so none should stall).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one input: the longest a connection may take before it is a finding (a hang).
const INPUT_LIMIT: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// What the proxy's outbound handler does to a request before routing it: request id,
/// authority (Host rules), gRPC detection, hop-by-hop headers, `x-forwarded-for`, and the
/// authorization path normaliser; a bad request becomes the proxy's own 4xx reply.
async fn normalise(
    mut req: http::Request<outrider_proxy::http::Body>,
) -> Result<http::Response<outrider_proxy::http::Body>, std::convert::Infallible> {
    use outrider_proxy::http::{Body, forward, headers};
    let grpc = outrider_proxy::rescue::is_grpc(&req);
    headers::ensure_request_id(req.headers_mut());
    if let Err(e) = forward::authority_of(&req) {
        let (resp, _) = e.to_response(grpc);
        // A gRPC caller gets its error the gRPC way: HTTP 200 with a non-zero grpc-status.
        let grpc_error = grpc && resp.headers().get("grpc-status").is_some_and(|s| s != "0");
        assert!(
            resp.status().is_client_error() || grpc_error,
            "a bad request head is a 4xx (or a gRPC error), got {} {:?}",
            resp.status(),
            resp.headers()
        );
        return Ok(resp);
    }
    let upgrade = headers::is_upgrade(req.headers());
    headers::strip_hop_by_hop(req.headers_mut(), upgrade);
    headers::append_forwarded_for(req.headers_mut(), std::net::Ipv4Addr::LOCALHOST.into());
    authz_path(req.uri().path().as_bytes());
    // Read the body as the proxy would stream it (bounded by the input's size).
    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
    Ok(http::Response::new(Body::full("ok")))
}

/// Serve `input` as one downstream connection through the proxy's HTTP server with the proxy's
/// limits (HTTP/1.x: its own server; HTTP/2: hyper, read through the proxy's frame guard); the
/// bytes written back.
fn serve(input: &[u8], http2: bool) -> Vec<u8> {
    use outrider_proxy::http::server::{Downstream, HttpServer, ServerLimits};
    let rt = runtime();
    rt.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let drain = outrider_proxy::drain::Drain::new();
        let http =
            HttpServer::new(&ServerLimits { header_read_timeout: HEADER_READ_TIMEOUT, ..ServerLimits::default() });
        let conn = if http2 { Downstream::Http2(server) } else { Downstream::Http1(server) };
        let serving = tokio::spawn({
            let signal = drain.signal();
            async move { http.serve(conn, normalise, signal).await }
        });
        let (mut rd, mut wr) = tokio::io::split(client);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
            // Keep the write half open until the server is done (a shutdown is a half-close).
            wr
        });
        let mut out = Vec::new();
        let read = tokio::time::timeout(INPUT_LIMIT, rd.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the connection neither answered nor closed within {INPUT_LIMIT:?}");
        let _ = writer.await;
        let served = tokio::time::timeout(INPUT_LIMIT, serving).await;
        assert!(served.is_ok(), "the server task did not end after the connection closed");
        out
    })
}

/// HTTP/1 request heads (and whatever follows) through the proxy's server and normaliser:
/// never a panic or a hang; whatever is written back starts with an HTTP/1.x status line
/// (the server answers every request, HTTP/1.0 ones included, with an HTTP/1.1 status line).
pub fn http1_head(data: &[u8]) {
    let out = serve(data, false);
    assert!(
        out.is_empty() || out.starts_with(b"HTTP/1.1 "),
        "not an HTTP/1.1 response: {:?}",
        &out[..out.len().min(64)]
    );
}

/// The client connection preface and the first SETTINGS frame, as every h2 client sends them.
const H2_PREFIX: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// HTTP/2 frames through the proxy's frame guard and hyper's h2 with the proxy's limits.
/// The first byte chooses whether a valid preface is put in front (to reach the frame path)
/// or the input is the whole connection (to reach the preface check).
pub fn h2_frames(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let input = if mode & 1 == 1 { [H2_PREFIX, rest].concat() } else { rest.to_vec() };
    let _ = serve(&input, true);
}

/// One outcome of decoding: a frame, or an error (after a connection error, nothing more).
type Decoded = Result<outrider_proxy::http::h2::frame::Frame, outrider_proxy::http::h2::frame::FrameError>;

/// Decodes `input` fed `piece` bytes at a time, as reads from a socket would bring it: every
/// frame and error in order, and the bytes left (a partial frame) unless a connection error
/// ended it. Each frame or stream error takes exactly its own bytes off the buffer.
fn h2_decode_all(input: &[u8], max: u32, piece: usize) -> (Vec<Decoded>, Option<usize>) {
    use outrider_proxy::http::h2::frame::{self, FrameError};
    let mut buf = bytes::BytesMut::new();
    let mut out = Vec::new();
    for chunk in input.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            let head = frame::Head::parse(&buf);
            match frame::decode(&mut buf, max) {
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) took bytes off the buffer");
                    break;
                }
                Ok(Some(f)) => {
                    let head = head.expect("a frame decoded from fewer than 9 bytes");
                    assert_eq!(before - buf.len(), 9 + head.len as usize, "{f:?} took the wrong number of bytes");
                    out.push(Ok(f));
                }
                Err(e @ FrameError::Stream { .. }) => {
                    let head = head.expect("an error from fewer than 9 bytes");
                    assert_eq!(before - buf.len(), 9 + head.len as usize, "{e:?} took the wrong number of bytes");
                    out.push(Err(e));
                }
                Err(e) => {
                    out.push(Err(e));
                    return (out, None);
                }
            }
        }
    }
    (out, Some(buf.len()))
}

/// HTTP/2 frames through the proxy's own frame decoder: never a panic; the same frames and
/// errors whether the input comes in one read or in small pieces; each frame takes exactly
/// its bytes; a frame encoded again decodes to itself. The first byte picks the advertised
/// SETTINGS_MAX_FRAME_SIZE (bit 0: the minimum or the maximum) and the size of the pieces.
pub fn h2_frame_decode(data: &[u8]) {
    use outrider_proxy::http::h2::frame::{self, Frame};
    let Some((&pick, input)) = data.split_first() else { return };
    let max = if pick & 1 == 0 { frame::DEFAULT_MAX_FRAME_SIZE } else { frame::MAX_MAX_FRAME_SIZE };
    let piece = usize::from(pick >> 1) + 1;
    let whole = h2_decode_all(input, max, input.len().max(1));
    let pieces = h2_decode_all(input, max, piece);
    assert_eq!(whole, pieces, "decoding in pieces of {piece} bytes differs from decoding the whole input");
    for f in whole.0.into_iter().flatten() {
        let mut buf = bytes::BytesMut::new();
        let want = match &f {
            Frame::Data { stream, payload, end_stream, .. } => {
                frame::encode_data(&mut buf, *stream, payload, *end_stream, max);
                Frame::Data {
                    stream: *stream,
                    payload: payload.clone(),
                    end_stream: *end_stream,
                    flow_len: payload.len() as u32,
                }
            }
            Frame::Headers { stream, block, end_stream, end_headers: true, priority: None } => {
                frame::encode_headers(&mut buf, *stream, block, *end_stream, max);
                f.clone()
            }
            Frame::Priority { stream, priority } => {
                frame::encode_priority(&mut buf, *stream, *priority);
                f.clone()
            }
            Frame::RstStream { stream, code } => {
                frame::encode_rst_stream(&mut buf, *stream, *code);
                f.clone()
            }
            Frame::Settings { ack: false, params } => {
                frame::encode_settings(&mut buf, params);
                f.clone()
            }
            Frame::Settings { ack: true, .. } => {
                frame::encode_settings_ack(&mut buf);
                f.clone()
            }
            Frame::Ping { ack, data } => {
                frame::encode_ping(&mut buf, *ack, *data);
                f.clone()
            }
            Frame::GoAway { last_stream, code, debug } if debug.len() <= 16_376 => {
                frame::encode_goaway(&mut buf, *last_stream, *code, debug);
                f.clone()
            }
            Frame::WindowUpdate { stream, increment } => {
                frame::encode_window_update(&mut buf, *stream, *increment);
                f.clone()
            }
            _ => continue,
        };
        let again = frame::decode(&mut buf, max);
        assert_eq!(again, Ok(Some(want)), "a frame encoded again");
        assert!(buf.is_empty(), "bytes left after decoding a frame encoded again");
    }
}

/// Header blocks through the proxy's own HPACK decoder (`http::h2::hpack`): never a panic or
/// an error outside `DecodeError`; the list size reported is the fields'; a decoder with a
/// tiny list size limit ends every block with the same table (the limit never desyncs it);
/// and the fields of every block that decodes, encoded again by our encoder, decode to
/// themselves (names, values, sensitivity, faults) with both ends' tables in step. The first
/// byte picks the table size we advertise; the rest is blocks, each after a length byte.
pub fn hpack_decode(data: &[u8]) {
    use outrider_proxy::http::h2::hpack::{Decoded, Decoder, Encoder, Field};
    let Some((&pick, mut rest)) = data.split_first() else { return };
    let table_size = [0, 64, 256, 4096][usize::from(pick & 3)];
    let mut decoder = Decoder::new(table_size);
    let mut limited = Decoder::new(table_size);
    let mut encoder = Encoder::new();
    let mut peer = Decoder::default();
    let entries = |d: &Decoder| d.table_entries().map(|(n, v)| (n.clone(), v.clone())).collect::<Vec<_>>();
    while let Some((&len, after)) = rest.split_first() {
        let len = usize::from(len).min(after.len());
        let block = bytes::Bytes::copy_from_slice(&after[..len]);
        rest = &after[len..];
        let mut fields: Vec<Field> = Vec::new();
        let outcome = match decoder.decode(&block, usize::MAX, |f| fields.push(f)) {
            Ok(outcome) => outcome,
            Err(_) => {
                // A connection error: the connection ends, and the other decoder must fail too.
                assert!(limited.decode(&block, 0, |_| {}).is_err(), "one decoder failed the block, not the other");
                return;
            }
        };
        let list_size: usize = fields.iter().map(Field::size).sum();
        assert_eq!(outcome, Decoded::Complete { list_size });
        assert!(decoder.table_size() <= decoder.table_capacity());
        let small = limited.decode(&block, 40, |f| assert!(f.size() <= 40)).expect("the same block decodes");
        let expected = if list_size > 40 { Decoded::TooLarge { list_size } } else { Decoded::Complete { list_size } };
        assert_eq!(small, expected);
        assert_eq!(entries(&limited), entries(&decoder), "the list size limit changed the table");
        let mut encoded = bytes::BytesMut::new();
        encoder.encode_fields(fields.iter().map(|f| (&f.name, &f.value[..], f.sensitive)), &mut encoded);
        let mut again = Vec::new();
        let _ = peer.decode(&encoded.freeze(), usize::MAX, |f| again.push(f)).expect("our own block decodes");
        assert_eq!(again, fields, "encoded and decoded again");
        assert_eq!(encoder.table_size(), peer.table_size());
    }
}

/// The authorization path normaliser: normalising is idempotent, and a normal path starts with
/// `/` and has no empty, `.` or `..` segment.
pub fn authz_path(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let normal = match outrider_proxy::authz::normalize_path(path) {
        Ok(Some(n)) => n,
        Ok(None) => path.to_owned(),
        Err(_) => return,
    };
    if normal != path {
        assert_eq!(
            outrider_proxy::authz::normalize_path(&normal),
            Ok(None),
            "normalising {path:?} twice changed it again (first: {normal:?})"
        );
        assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
        let inner = normal.trim_end_matches('/');
        assert!(
            inner.split('/').skip(1).all(|s| !s.is_empty() && s != "." && s != ".."),
            "{path:?} -> {normal:?} keeps an empty or dot segment"
        );
    }
}

/// The control plane's API, started once per process on loopback with a temp data dir.
struct Api {
    addr: std::net::SocketAddr,
    rt: tokio::runtime::Runtime,
    _running: outrider_control_plane::server::Running,
}

const API_TOKEN: &str = "fuzz-token";

/// The API closes a kept-alive connection idle this long (10 s by default): short, so the
/// replay test of a kept connection the API closed waits one second for it, not ten.
const API_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// The address of the API the `cp_api` target sends to (started on first use).
pub fn cp_api_address() -> std::net::SocketAddr {
    api().addr
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("outrider-fuzz-cp-{}", std::process::id()));
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let running = outrider_control_plane::server::start(outrider_control_plane::server::ServerConfig {
            xds: any,
            api: any,
            token: Some(API_TOKEN.into()),
            api_idle_timeout: API_IDLE_TIMEOUT,
            ..outrider_control_plane::server::ServerConfig::local(dir)
        })
        .expect("the control plane starts");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Api { addr: running.api_addr, rt, _running: running }
    })
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// The write and parse routes of the API, with a method each; the fuzzer picks one.
const ROUTES: [(&str, &str); 8] = [
    ("PUT", "/v1/policies"),
    ("POST", "/v1/validate"),
    ("POST", "/v1/tokens"),
    ("POST", "/v1/certificates"),
    ("POST", "/v1/endpoints"),
    ("DELETE", "/v1/policies/Service/fuzz"),
    ("DELETE", "/v1/endpoints/fuzz"),
    ("GET", "/v1/policies/Service/fuzz"),
];

/// Control plane API bodies: any body on any write route gets an answer, and never a 500 (a
/// 500 means a fault of the control plane itself, such as its disk; the data dir is fine here).
/// One keep-alive connection is reused across inputs, as a CLI would.
pub fn cp_api(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    let (method, path) = ROUTES[pick as usize % ROUTES.len()];
    let content_type = if pick & 0x80 != 0 { "application/json" } else { "application/yaml" };
    let api = api();
    thread_local! {
        static CONN: std::cell::RefCell<Option<Sender>> = const { std::cell::RefCell::new(None) };
    }
    let req = || {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "cp")
            .header(http::header::AUTHORIZATION, format!("Bearer {API_TOKEN}"))
            .header(http::header::CONTENT_TYPE, content_type)
            .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(rest)))
            .unwrap()
    };
    let status = api.rt.block_on(async {
        let fresh = || async {
            let tcp = tokio::net::TcpStream::connect(api.addr).await.expect("the API accepts");
            let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
            tokio::spawn(conn);
            send
        };
        let reused = CONN.with(|c| c.borrow_mut().take()).filter(|s| !s.is_closed());
        let kept = reused.is_some();
        let mut send = match reused {
            Some(s) => s,
            None => fresh().await,
        };
        let mut answer = match send.ready().await {
            Ok(()) => tokio::time::timeout(Duration::from_secs(30), send.send_request(req()))
                .await
                .expect("the API answers within 30 s"),
            Err(e) => Err(e),
        };
        // The API closes a keep-alive connection left idle (its header read timeout, here
        // `API_IDLE_TIMEOUT`); a fuzzer starved of CPU can reuse one after that and race the close. Such a failure is
        // the client's, and the input is sent again on a new connection: an input that gets
        // no answer on a fresh connection is still a finding.
        if kept && answer.as_ref().is_err_and(|e| e.is_incomplete_message() || e.is_closed() || e.is_canceled()) {
            send = fresh().await;
            send.ready().await.expect("a new API connection is usable");
            answer = tokio::time::timeout(Duration::from_secs(30), send.send_request(req()))
                .await
                .expect("the API answers within 30 s");
        }
        let resp = answer.expect("the API answers");
        let status = resp.status();
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        CONN.with(|c| *c.borrow_mut() = Some(send));
        status
    });
    assert_ne!(status, http::StatusCode::INTERNAL_SERVER_ERROR, "{method} {path} with {} body bytes", rest.len());
}

/// Load reports come from any client of the xDS port: any bytes decoded as a
/// `LoadStatsRequest` (the reporting node's cluster is the source service) are counted or
/// dropped, never a panic, and the aggregates stay readable.
pub fn load_report(data: &[u8]) {
    use outrider_control_plane::stats::{Labels, Stats};
    use prost::Message;
    static STATS: OnceLock<std::sync::Arc<Stats>> = OnceLock::new();
    let Ok(request) = envoy_types::pb::envoy::service::load_stats::v3::LoadStatsRequest::decode(data) else {
        return;
    };
    let stats = STATS.get_or_init(|| {
        let stats = Stats::new(Duration::from_secs(5), outrider_control_plane::metrics::Metrics::new());
        let set = outrider_xds::load_str(
            "mesh.yaml",
            "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  port: 80\n  endpoints:\n    - {address: \"127.0.0.1:1\", labels: {v: \"1\"}}\n    - {address: \"[::1]:2\", labels: {v: \"2\"}}\n",
        )
        .expect("a valid mesh");
        stats.update_mesh(&set);
        stats
    });
    let source = request.node.as_ref().map_or("", |n| n.cluster.as_str());
    stats.ingest("fuzz", source, &request.cluster_stats);
    let _ = stats.service("a", &Labels::new(), Duration::from_secs(60));
    let _ = stats.summary(Duration::from_secs(900));
    let _ = stats.since("a", &Labels::new(), &Default::default()).quantile_ms(0.99);
}
