//! The size of a connection's task. A parked HTTP/1.1 connection holds its task (the future
//! `accept_loop` spawns) and the socket, nothing else; the task is as large as the largest
//! state of that future, so a large future held inline anywhere in it (TLS, detection, TCP
//! proxying, hyper's connections, an `async` block awaiting a future it captured) is paid by
//! every idle connection. These bounds fail when one is inlined again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::http::server::{HttpServer, ServerLimits};
use crate::telemetry::access::Recorder;

/// The most a plaintext connection's task may take (bytes; 888 in a debug build when written,
/// from about 11,000 before the large branches were boxed and the task stopped holding its
/// future twice).
const TASK_MAX: usize = 1024;

/// An accepted server-side socket (and its client, which must stay open).
async fn accepted(l: &TcpListener) -> (TcpStream, SocketAddr, TcpStream) {
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (stream, peer) = l.accept().await.unwrap();
    (stream, peer, client)
}

fn live(drain: &Drain) -> Live {
    let slots = Arc::new(tokio::sync::Semaphore::new(1));
    Live { open: Default::default(), _guard: drain.signal().track(), _slot: slots.try_acquire_owned().unwrap() }
}

fn recorder() -> Arc<Recorder> {
    Arc::new(Recorder::new(Metrics::new(), false))
}

#[tokio::test]
async fn an_outbound_connections_task_stays_small() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outbound = Arc::new(Outbound {
        store: Arc::new(Store::new()),
        recorder: recorder(),
        server: HttpServer::new(&ServerLimits::default()),
        socket: Default::default(),
        mesh: Arc::default(),
    });
    let drain = Drain::new();
    let (stream, peer, _client) = accepted(&l).await;
    let task = connection_task(outbound.serve(stream, peer, drain.signal()), live(&drain));
    let size = std::mem::size_of_val(&task);
    assert!(size <= TASK_MAX, "an outbound connection's task takes {size} bytes (at most {TASK_MAX})");
}

#[tokio::test]
async fn an_inbound_connections_task_stays_small() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inbound = Arc::new(Inbound::new(
        recorder(),
        HttpServer::new(&ServerLimits::default()),
        Some(1),
        Arc::from("svc"),
        Default::default(),
        Arc::new(Store::new()),
        Arc::default(),
    ));
    let drain = Drain::new();
    let (stream, peer, _client) = accepted(&l).await;
    let task = connection_task(inbound.serve(stream, peer, drain.signal()), live(&drain));
    let size = std::mem::size_of_val(&task);
    assert!(size <= TASK_MAX, "an inbound connection's task takes {size} bytes (at most {TASK_MAX})");
}
