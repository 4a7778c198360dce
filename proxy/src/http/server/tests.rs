//! The HTTP/2 side of the server (the HTTP/1.1 side is tested in `h1`).
use tokio::net::TcpListener;

use super::*;
use crate::drain::Drain;

fn echo(req: Request<Body>) -> std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>> {
    Box::pin(async move { Ok(Response::new(req.into_body())) })
}

/// An HTTP/2 connection's state (hyper's connection, the frame guard) lives in one box for the
/// connection's life: nothing it only needs for a moment may be held inline beside it. 2,352
/// bytes in a debug build when written, from 6,432 with the 4 KiB buffer of the rejection of a
/// bad preface inline.
#[tokio::test]
async fn an_http2_connections_state_stays_small() {
    const MAX: usize = 3072;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (stream, _) = l.accept().await.unwrap();
    let server = HttpServer::new(&ServerLimits::default());
    let drain = Drain::new();
    let state = server.serve_h2(stream, Arc::new(echo), drain.signal());
    let size = std::mem::size_of_val(&state);
    assert!(size <= MAX, "an HTTP/2 connection's state takes {size} bytes (at most {MAX})");
}
