//! Node mode's inbound side fails closed until the workload's service has its inbound config;
//! the size of an mTLS connection's state.
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

/// An mTLS connection's state lives in one box for the connection's life (a parked HTTP/1.1
/// connection keeps its TLS session there, and nothing of hyper): the handshake, TCP and
/// HTTP/2 paths must not be held inline beside it, nor the TLS stream twice. 1,888 bytes in a
/// debug build when written (a TLS stream is 1,216), from 9,264 with the TCP path inline.
#[tokio::test]
async fn an_mtls_connections_state_stays_small() {
    const MAX: usize = 2048;
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
