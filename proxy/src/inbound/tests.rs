//! Node mode's inbound side fails closed until the workload's service has its inbound config.
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
