//! Parking plaintext HTTP/1.1 connections between requests, on real sockets with
//! hyper's real server connection.
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::drain::Drain;

type Handler =
    fn(Request<Incoming>) -> std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// Answers `path=<path> body=<request body>`, reading the whole request body.
fn echo(req: Request<Incoming>) -> std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>> {
    Box::pin(async move {
        let path = req.uri().path().to_string();
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Ok(Response::new(Body::full(format!("path={path} body={}", String::from_utf8_lossy(&body)))))
    })
}

/// A connected pair: the caller's socket and the server's.
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (server, _) = l.accept().await.unwrap();
    (client, server)
}

/// Read one response with a `content-length` and return its body.
async fn response(client: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("content-length");
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                buf.drain(..end + 4 + len);
                return body;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = client.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the response was complete");
        buf.extend_from_slice(&chunk[..n]);
    }
}

struct Server {
    server: HttpServer,
    handler: Arc<Handler>,
    exchange: Arc<Exchange>,
    drain: Drain,
    park_after: Duration,
}

impl Server {
    /// Parks after a short quiet period, so the tests below go through the timer.
    fn new() -> Self {
        Self::parking_after(Duration::from_millis(20))
    }

    fn parking_after(park_after: Duration) -> Self {
        Self {
            server: HttpServer::new(&ServerLimits { park_after, ..ServerLimits::default() }),
            handler: Arc::new(echo as Handler),
            exchange: Arc::new(Exchange::default()),
            drain: Drain::new(),
            park_after,
        }
    }

    fn io<I: Socket>(&self, stream: I) -> ParkIo<I> {
        ParkIo::new(stream, self.exchange.clone(), self.park_after)
    }

    /// One hyper connection: `Some` once it parked.
    async fn busy<I: Socket>(&self, io: ParkIo<I>) -> Option<ParkIo<I>> {
        self.server.h1_busy(io, &self.handler, &self.exchange, &mut self.drain.signal()).await
    }

    /// Wait, parked, until the caller sends more (or closes).
    async fn readable<I: Socket>(&self, io: &ParkIo<I>) {
        let woken = io.wait(Duration::from_secs(3600), &mut self.drain.signal()).await;
        assert!(matches!(woken, Woken::Readable), "{woken:?}");
    }
}

#[tokio::test]
async fn a_keep_alive_connection_parks_between_requests_and_serves_the_next() {
    let (mut client, stream) = pair().await;
    let s = Server::new();
    let mut buf = Vec::new();
    client.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    // Returns only once the response is out and the caller is silent: parked.
    let mut io = s.busy(s.io(stream)).await.expect("parked after the first request");
    assert_eq!(response(&mut client, &mut buf).await, "path=/a body=");
    assert_eq!(io.holds(), 0);
    for path in ["/b", "/c"] {
        client.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        s.readable(&io).await;
        io = s.busy(io).await.expect("parked again");
        assert_eq!(response(&mut client, &mut buf).await, format!("path={path} body="));
    }
    // The caller closes a parked connection: the next hyper connection ends without parking.
    client.shutdown().await.unwrap();
    s.readable(&io).await;
    assert!(s.busy(io).await.is_none());
}

/// With the old "park as soon as the caller is silent", the first `busy` returned after
/// `/a` and nothing served `/b`: the deadline below failed.
/// HTTP/1.1 over mutual TLS (a peer proxy's `outrider-http1` connection): parked between
/// requests like a plaintext one, the TLS session kept across hyper connections.
#[tokio::test]
async fn an_mtls_keep_alive_connection_parks_between_requests_and_keeps_its_session() {
    use crate::tls::tests::TestCa;
    let ca = TestCa::new();
    let server_id = "spiffe://td/ns/a/sa/server";
    let acceptor = crate::tls::stream::Acceptor::from(
        crate::tls::server_config(ca.store(server_id), crate::tls::Mode::Strict).unwrap(),
    );
    let client_config = crate::tls::client_config_alpn(
        ca.store("spiffe://td/ns/a/sa/client"),
        crate::tls::Identity::parse(server_id).unwrap(),
        crate::tls::ALPN_OUTRIDER_HTTP1,
    )
    .unwrap();
    let (client, stream) = pair().await;
    let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let (client, tls) =
        tokio::join!(tokio_rustls::TlsConnector::from(client_config).connect(name, client), acceptor.accept(stream));
    let (mut client, tls) = (client.unwrap(), tls.unwrap());
    let s = Server::new();
    let mut io = s.io(tls);
    for path in ["/a", "/b", "/c"] {
        client.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        client.flush().await.unwrap();
        s.readable(&io).await;
        // Returns only once the response is out and the caller is silent: parked.
        io = s.busy(io).await.expect("parked after the request");
        // Parked: neither hyper's buffers nor the TLS stream's are held.
        assert_eq!(io.get_ref().buffered(), 0, "{:?}", io.get_ref());
        let head = tls_response(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.ends_with(&format!("path={path} body=")), "{head}");
    }
    // The caller closes: the next hyper connection ends without parking.
    client.shutdown().await.unwrap();
    s.readable(&io).await;
    assert!(s.busy(io).await.is_none());
}

/// One response on a TLS client (head and body, which the tests keep under one read's size).
async fn tls_response(client: &mut tokio_rustls::client::TlsStream<TcpStream>) -> String {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = client.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the response was complete");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .expect("content-length");
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn a_busy_connection_keeps_its_hyper_connection_between_requests() {
    let (mut client, stream) = pair().await;
    let s = Server::parking_after(Duration::from_secs(3600));
    let io = s.io(stream);
    let serving = tokio::spawn(async move { s.busy(io).await.is_some() });
    let mut buf = Vec::new();
    for path in ["/a", "/b", "/c"] {
        client.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let body = tokio::time::timeout(Duration::from_secs(30), response(&mut client, &mut buf))
            .await
            .expect("answered by the same hyper connection");
        assert_eq!(body, format!("path={path} body="));
    }
    // Ended by the caller's end of file, not by parking.
    client.shutdown().await.unwrap();
    assert!(!serving.await.unwrap(), "parked within the quiet period");
}

#[tokio::test]
async fn a_connection_parks_once_quiet_even_after_requests_while_its_timer_ran() {
    let (mut client, stream) = pair().await;
    let s = Server::parking_after(Duration::from_millis(50));
    let io = s.io(stream);
    let exchange = s.exchange.clone();
    let serving = tokio::spawn(async move { s.busy(io).await });
    let mut buf = Vec::new();
    for path in ["/a", "/b", "/c"] {
        client.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        assert_eq!(response(&mut client, &mut buf).await, format!("path={path} body="));
    }
    let io = tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .expect("parked once the caller was silent")
        .unwrap()
        .expect("parked, not ended");
    assert_eq!(io.holds(), 0);
    assert_eq!(exchange.started.load(std::sync::atomic::Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_partly_arrived_pipelined_head_is_kept_for_the_next_connection() {
    let (mut client, stream) = pair().await;
    let s = Server::new();
    let mut buf = Vec::new();
    client.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHo").await.unwrap();
    let mut io = s.busy(s.io(stream)).await.expect("parked after /a");
    assert_eq!(response(&mut client, &mut buf).await, "path=/a body=");
    assert_eq!(io.holds(), "GET /b HTTP/1.1\r\nHo".len(), "hyper's unused bytes are handed back");
    client.write_all(b"st: x\r\n\r\n").await.unwrap();
    s.readable(&io).await;
    // Holding a partial head, the connection does not park again before that request.
    io = s.busy(io).await.expect("parked after /b");
    assert_eq!(response(&mut client, &mut buf).await, "path=/b body=");
    assert_eq!(io.holds(), 0);
}

#[tokio::test]
async fn a_connection_is_not_parked_after_a_request_with_a_body() {
    let (mut client, stream) = pair().await;
    let s = Server::new();
    let mut buf = Vec::new();
    client.write_all(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").await.unwrap();
    let serving = tokio::spawn(async move { s.busy(s.io(stream)).await.is_some() });
    assert_eq!(response(&mut client, &mut buf).await, "path=/p body=hello");
    // Had it parked, `busy` would have returned already, before this end of file.
    client.shutdown().await.unwrap();
    assert!(!serving.await.unwrap(), "parked after a request with a body");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_parking() {
    let (mut client, stream) = pair().await;
    let server = HttpServer::new(&ServerLimits::default());
    let drain = Drain::new();
    let signal = drain.signal();
    let serving = tokio::spawn(async move { server.serve_h1_parking(stream, Arc::new(echo), signal).await });
    let mut buf = Vec::new();
    client
        .write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\nPOST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .unwrap();
    for expected in ["path=/1 body=", "path=/2 body=", "path=/3 body=abc"] {
        assert_eq!(response(&mut client, &mut buf).await, expected);
    }
    client.write_all(b"GET /4 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(response(&mut client, &mut buf).await, "path=/4 body=");
    client.write_all(b"GET /5 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(response(&mut client, &mut buf).await, "path=/5 body=");
    client.shutdown().await.unwrap();
    serving.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_parked_connection_closes_after_the_header_read_timeout() {
    let (mut client, stream) = pair().await;
    let limits = ServerLimits { header_read_timeout: Duration::from_secs(5), ..ServerLimits::default() };
    let server = HttpServer::new(&limits);
    let drain = Drain::new();
    let signal = drain.signal();
    let serving = tokio::spawn(async move { server.serve_h1_parking(stream, Arc::new(echo), signal).await });
    let mut buf = Vec::new();
    client.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(response(&mut client, &mut buf).await, "path=/a body=");
    // Silent from now on: the proxy closes the connection (the paused clock jumps to its deadline).
    let mut rest = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3600), client.read(&mut rest)).await.expect("closed").unwrap();
    assert_eq!(n, 0, "nothing but the close");
    serving.await.unwrap();
}

#[tokio::test]
async fn drain_closes_an_idle_keep_alive_connection() {
    let (mut client, stream) = pair().await;
    let server = HttpServer::new(&ServerLimits::default());
    let drain = Drain::new();
    let signal = drain.signal();
    let serving = tokio::spawn(async move { server.serve_h1_parking(stream, Arc::new(echo), signal).await });
    let mut buf = Vec::new();
    client.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(response(&mut client, &mut buf).await, "path=/a body=");
    drain.start();
    let mut rest = [0u8; 64];
    assert_eq!(client.read(&mut rest).await.unwrap(), 0, "closed by the drain");
    serving.await.unwrap();
}

/// A connection that arrives while the proxy drains (the listeners still accept until the
/// endpoint is withdrawn): its request is answered with `Connection: close`, then it ends —
/// on the plaintext (parking) path and on the mTLS one alike.
#[tokio::test]
async fn a_connection_accepted_while_draining_is_answered_once_and_closed() {
    for parking in [true, false] {
        let (mut client, stream) = pair().await;
        let server = HttpServer::new(&ServerLimits::default());
        let drain = Drain::new();
        drain.start();
        let signal = drain.signal();
        let serving = tokio::spawn(async move {
            if parking {
                server.serve_h1_parking(stream, Arc::new(echo), signal).await
            } else {
                server.serve_h1(stream, Arc::new(echo), signal).await
            }
        });
        client.write_all(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before answering (parking: {parking})");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("\r\nconnection: close"), "told to close (parking: {parking}): {head}");
        assert_eq!(response(&mut client, &mut buf).await, "path=/late body=");
        let mut rest = [0u8; 64];
        assert_eq!(client.read(&mut rest).await.unwrap(), 0, "then closed (parking: {parking})");
        serving.await.unwrap();
    }
}

/// An HTTP/2 connection's state (hyper's connection, the frame guard) lives in one box for the
/// connection's life: nothing it only needs for a moment may be held inline beside it. 2,352
/// bytes in a debug build when written, from 6,432 with the 4 KiB buffer of the rejection of a
/// bad preface inline.
#[tokio::test]
async fn an_http2_connections_state_stays_small() {
    const MAX: usize = 3072;
    let (_client, stream) = pair().await;
    let server = HttpServer::new(&ServerLimits::default());
    let drain = Drain::new();
    let state = server.serve_h2(stream, Arc::new(echo), drain.signal());
    let size = std::mem::size_of_val(&state);
    assert!(size <= MAX, "an HTTP/2 connection's state takes {size} bytes (at most {MAX})");
}
