//! Node mode's inbound side fails closed until the workload's service has its inbound config;
//! the size of an mTLS connection's state; an HBONE tunnel's trace context as the default parent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Inbound;
use crate::authz::InboundPolicy;
use crate::http::server::{HttpServer, ServerLimits};
use crate::state::{Snapshot, Store};
use crate::telemetry::access::Recorder;
use crate::telemetry::metrics::Metrics;
use crate::tls::Mode;
use crate::transport::socket::SocketOptions;

/// One plaintext connection through `inbound` to the app listening on `app`: whether the app
/// got it (`serve` has returned by then, so a forwarded connection is already queued).
async fn app_reached(inbound: &Arc<Inbound>, app: &TcpListener) -> bool {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(front.local_addr().unwrap()).await.unwrap();
    let (stream, peer) = front.accept().await.unwrap();
    client.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    let drain = crate::drain::Drain::new();
    let serving = tokio::spawn(inbound.clone().serve(stream, peer, drain.signal()));
    // Either the app accepts the forwarded connection, or the proxy closes the client's.
    let mut buf = [0u8; 64];
    tokio::select! {
        accepted = app.accept() => {
            accepted.unwrap();
            serving.abort();
            true
        }
        read = client.read(&mut buf) => {
            // Closed (or reset: the request was not read) without an answer.
            assert!(matches!(read, Ok(0) | Err(_)), "refused without an answer: {read:?}");
            serving.await.unwrap();
            // The proxy did not forward it either (it would be queued by now).
            let queued = tokio::time::timeout(Duration::ZERO, app.accept()).await;
            assert!(queued.is_err(), "the connection was forwarded although refused");
            false
        }
    }
}

#[tokio::test]
async fn a_node_workload_refuses_inbound_until_its_services_inbound_config_arrives() {
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let store = Arc::new(Store::new());
    // Config is there (outbound and other services' inbound), but not reviews's own.
    let mut snapshot = Snapshot::default();
    snapshot.inbound.insert(Arc::from("other"), Arc::new(InboundPolicy { mode: Mode::Permissive, filters: vec![] }));
    store.apply(snapshot);
    let inbound = |required| {
        Arc::new(
            Inbound::new(
                Arc::new(Recorder::new(Metrics::new(), false)),
                HttpServer::new(&ServerLimits::default()),
                Some(app.local_addr().unwrap().port()),
                Arc::from("reviews"),
                SocketOptions::default(),
                store.clone(),
                Arc::default(),
            )
            .requiring_policy(required),
        )
    };
    let node = inbound(true);
    assert!(!app_reached(&node, &app).await, "node mode: no inbound config yet, no connection");
    // A sidecar keeps its behaviour: no inbound config is permissive.
    assert!(app_reached(&inbound(false), &app).await);

    // reviews's inbound config arrives (permissive): the workload serves.
    let mut snapshot = Snapshot::default();
    snapshot.inbound.insert(Arc::from("reviews"), Arc::new(InboundPolicy { mode: Mode::Permissive, filters: vec![] }));
    store.apply(snapshot);
    assert!(app_reached(&node, &app).await);
}

/// An mTLS connection's state lives in one box for the connection's life (an idle HTTP/1.1
/// connection's TLS session is in its server's shared state, beside it): the handshake, TCP
/// and HTTP/2 paths must not be held inline, nor a slot for the TLS stream. 792 bytes in a debug
/// build (a TLS stream is 1,216), from 1,448 with the TCP path awaited where the stream was
/// bound, and 9,264 with the TCP path inline.
#[tokio::test]
async fn an_mtls_connections_state_stays_small() {
    const MAX: usize = 1024;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (stream, peer) = l.accept().await.unwrap();
    let ca = crate::tls::tests::TestCa::new();
    let mesh = crate::mesh::Mesh::new(ca.store("spiffe://td/ns/a/sa/b")).unwrap();
    let inbound = Arc::new(Inbound::new(
        Arc::new(Recorder::new(Metrics::new(), false)),
        HttpServer::new(&ServerLimits::default()),
        Some(1),
        Arc::from("svc"),
        SocketOptions::default(),
        Arc::new(Store::new()),
        Arc::default(),
    ));
    let drain = crate::drain::Drain::new();
    let state = inbound.serve_mesh(stream, peer, 1, &mesh, None, drain.signal());
    let size = std::mem::size_of_val(&state);
    assert!(size <= MAX, "an mTLS connection's state takes {size} bytes (at most {MAX})");
}

/// Requests in an HBONE tunnel: one without trace context of its own continues the `CONNECT`'s
/// (its span's parent, the app's `traceparent` in that trace); one with its own keeps it.
#[tokio::test]
async fn a_tunnels_traceparent_is_the_parent_of_requests_without_their_own() {
    use crate::http::server::Downstream;
    use crate::telemetry::trace::{Sampler, Tracer};
    const TUNNEL: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const OWN: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = app.local_addr().unwrap().port();
    // The app answers each request with the `traceparent` it was given.
    tokio::spawn(async move {
        while let Ok((mut s, _)) = app.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        buf.drain(..end + 4);
                        let tp = head.lines().find_map(|l| l.strip_prefix("traceparent: ")).unwrap_or("").to_owned();
                        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{tp}", tp.len());
                        s.write_all(answer.as_bytes()).await.unwrap();
                    }
                }
            });
        }
    });
    let metrics = Metrics::new();
    let (tracer, mut queue) = Tracer::new(Sampler::default(), false, None, 16, 1, metrics.clone());
    let mut recorder = Recorder::new(metrics, false);
    recorder.tracer = Some(tracer);
    let inbound = Arc::new(Inbound::new(
        Arc::new(recorder),
        HttpServer::new(&ServerLimits::default()),
        Some(port),
        Arc::from("reviews"),
        SocketOptions::default(),
        Arc::new(Store::new()),
        Arc::default(),
    ));
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(front.local_addr().unwrap()).await.unwrap();
    let (stream, peer) = front.accept().await.unwrap();
    let drain = crate::drain::Drain::new();
    let parent = http::HeaderValue::from_static(TUNNEL);
    tokio::spawn(inbound.serve_http(
        Downstream::<TcpStream>::Plain(stream),
        peer,
        port,
        None,
        Some(parent),
        drain.signal(),
    ));
    let mut answers = String::new();
    for own in [None, Some(OWN)] {
        let extra = own.map(|tp| format!("traceparent: {tp}\r\n")).unwrap_or_default();
        client.write_all(format!("GET / HTTP/1.1\r\nhost: a\r\n{extra}\r\n").as_bytes()).await.unwrap();
        let mut chunk = [0u8; 4096];
        let n = client.read(&mut chunk).await.unwrap();
        answers.push_str(&String::from_utf8_lossy(&chunk[..n]));
        answers.push('\n');
    }
    let tunnel_trace = [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36];
    let first = queue.rx.recv().await.unwrap();
    assert_eq!(first.trace_id, tunnel_trace, "the span continues the tunnel's trace");
    assert_eq!(first.parent, Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]), "under the tunnel's span");
    let second = queue.rx.recv().await.unwrap();
    assert_ne!(second.trace_id, tunnel_trace, "a request with its own context keeps it");
    assert!(answers.contains("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "the app is in the tunnel's trace: {answers}");
    assert!(answers.contains("00-0af7651916cd43dd8448eb211c80319c-"), "and in the request's own: {answers}");
}
