//! The HTTP/1.1 server on real sockets (and a real TLS session), driven by raw bytes.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::drain::Drain;

type Fut = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// Answers `path=<path> body=<request body>`, reading the whole request body.
fn echo(req: Request<Body>) -> Fut {
    Box::pin(async move {
        let path = req.uri().path().to_string();
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Ok(Response::new(Body::full(format!("path={path} body={}", String::from_utf8_lossy(&body)))))
    })
}

/// Answers `path=<path>` without reading the request body.
fn ignore_body(req: Request<Body>) -> Fut {
    let path = req.uri().path().to_string();
    Box::pin(async move { Ok(Response::new(Body::full(format!("path={path}")))) })
}

/// Streams the request body back as the response body (its length unknown when chunked).
fn stream_back(req: Request<Body>) -> Fut {
    Box::pin(async move { Ok(Response::new(req.into_body())) })
}

const LIMITS: Limits = Limits { header_read_timeout: Duration::from_secs(30), max_header_size: 64 * 1024 };

/// One request read and answered on `conn` (as the connection's loop does), which stays open.
async fn serve_one_kept_alive<I: Io>(conn: &Arc<Conn<I>>, handler: &Arc<fn(Request<Body>) -> Fut>, drain: &Drain) {
    let head = read_head(conn, &LIMITS, &mut Wait::new(&drain.signal(), LIMITS.header_read_timeout), false)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        exchange(conn, head, handler, &drain.signal(), LIMITS.header_read_timeout).await,
        Next::KeepAlive
    ));
}

/// A connected pair: the caller's socket and the server's.
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (server, _) = l.accept().await.unwrap();
    (client, server)
}

/// Serve `stream` with `handler` on a task of its own.
fn spawn<S>(stream: TcpStream, handler: S, limits: Limits, drain: &Drain) -> tokio::task::JoinHandle<()>
where
    S: Fn(Request<Body>) -> Fut + Send + Sync + 'static,
{
    tokio::spawn(serve(stream, Arc::new(handler), limits, drain.signal()))
}

/// A response as the client read it.
#[derive(Debug)]
struct Resp {
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads responses off a client socket, framed by content-length, chunked or the close.
struct Client<C> {
    io: C,
    buf: Vec<u8>,
}

impl<C: AsyncRead + AsyncWrite + Unpin> Client<C> {
    fn new(io: C) -> Self {
        Self { io, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// Read more; false at the end of file.
    async fn more(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = self.io.read(&mut chunk).await.unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn response(&mut self) -> Resp {
        self.response_to(false).await
    }

    async fn response_to(&mut self, head_request: bool) -> Resp {
        let end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            assert!(self.more().await, "closed before a response head: {:?}", String::from_utf8_lossy(&self.buf));
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut resp = Resp { head, body: Vec::new() };
        let status = resp.status();
        if head_request || status < 200 || status == 204 || status == 304 {
            return resp;
        }
        if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                assert!(self.more().await, "closed inside a body");
            }
            resp.body = self.buf.drain(..len).collect();
        } else if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    assert!(self.more().await, "closed inside a chunked body");
                };
                let size = usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).unwrap(), 16).unwrap();
                self.buf.drain(..line_end + 2);
                if size == 0 {
                    while !self.buf.starts_with(b"\r\n") && self.buf.windows(4).all(|w| w != b"\r\n\r\n") {
                        assert!(self.more().await);
                    }
                    let t = if self.buf.starts_with(b"\r\n") {
                        2
                    } else {
                        self.buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
                    };
                    let trailers = String::from_utf8_lossy(&self.buf[..t]).into_owned();
                    self.buf.drain(..t);
                    resp.head.push_str("\r\n--trailers--\r\n");
                    resp.head.push_str(trailers.trim_end());
                    break;
                }
                while self.buf.len() < size + 2 {
                    assert!(self.more().await);
                }
                resp.body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
        } else {
            while self.more().await {}
            resp.body = std::mem::take(&mut self.buf);
        }
        resp
    }

    /// Everything until the close: must be nothing.
    async fn closed(&mut self) {
        while self.more().await {}
        assert!(self.buf.is_empty(), "bytes before the close: {:?}", String::from_utf8_lossy(&self.buf));
    }
}

async fn client_and_server<S>(handler: S) -> (Client<TcpStream>, tokio::task::JoinHandle<()>, Drain)
where
    S: Fn(Request<Body>) -> Fut + Send + Sync + 'static,
{
    let (client, stream) = pair().await;
    let drain = Drain::new();
    let task = spawn(stream, handler, LIMITS, &drain);
    (Client::new(client), task, drain)
}

/// A served connection whose header read timeout is 5 s (for the tests on a paused clock).
async fn with_short_timeout<S>(handler: S) -> (Client<TcpStream>, tokio::task::JoinHandle<()>, Drain, Limits)
where
    S: Fn(Request<Body>) -> Fut + Send + Sync + 'static,
{
    let (client, stream) = pair().await;
    let drain = Drain::new();
    let limits = Limits { header_read_timeout: Duration::from_secs(5), ..LIMITS };
    let task = spawn(stream, handler, limits, &drain);
    (Client::new(client), task, drain, limits)
}

/// What a refused head is answered with, and that nothing reached the handler.
async fn refused(request: &[u8]) -> (u16, usize) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let (mut c, task, _drain) = client_and_server(move |req| {
        seen.fetch_add(1, Ordering::Relaxed);
        echo(req)
    })
    .await;
    c.send(request).await;
    let resp = c.response().await;
    assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
    c.closed().await;
    task.await.unwrap();
    (resp.status(), calls.load(Ordering::Relaxed))
}

#[tokio::test]
async fn keep_alive_serves_requests_one_after_another_holding_no_buffer_between() {
    let (client, stream) = pair().await;
    let conn = new_conn(stream);
    let handler: Arc<fn(Request<Body>) -> Fut> = Arc::new(echo);
    let drain = Drain::new();
    let mut c = Client::new(client);
    for (path, body) in [("/a", ""), ("/b", "hello"), ("/c", "")] {
        let req = if body.is_empty() {
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
        } else {
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        };
        c.send(req.as_bytes()).await;
        serve_one_kept_alive(&conn, &handler, &drain).await;
        let resp = c.response().await;
        assert_eq!((resp.status(), resp.text()), (200, format!("path={path} body={body}")));
        assert!(resp.header("date").is_some(), "{resp:?}");
        assert_eq!(resp.header("connection"), None);
        // Between requests: no buffer.
        assert_eq!(lock(&conn).buf.capacity(), 0);
    }
}

/// Over mutual TLS (a peer proxy's `outrider-http1` connection): between requests neither the
/// server nor the TLS stream holds a buffer, and the session serves request after request.
#[tokio::test]
async fn an_mtls_connection_holds_no_buffer_between_requests() {
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
    let mut c = Client::new(client.unwrap());
    let conn = new_conn(tls.unwrap());
    let handler: Arc<fn(Request<Body>) -> Fut> = Arc::new(echo);
    let drain = Drain::new();
    for path in ["/a", "/b", "/c"] {
        c.send(format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi").as_bytes()).await;
        serve_one_kept_alive(&conn, &handler, &drain).await;
        assert_eq!(c.response().await.text(), format!("path={path} body=hi"));
        let s = lock(&conn);
        assert_eq!(s.buf.capacity(), 0);
        assert_eq!(s.io.as_ref().unwrap().buffered(), 0, "{:?}", s.io);
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (mut c, task, _drain) = client_and_server(echo).await;
    c.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\nPOST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcPOST /4 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\nGET /5 HTTP/1.1\r\nHo").await;
    for expected in ["path=/1 body=", "path=/2 body=", "path=/3 body=abc", "path=/4 body=de"] {
        assert_eq!(c.response().await.text(), expected);
    }
    // The rest of a head that came in part.
    c.send(b"st: x\r\n\r\n").await;
    assert_eq!(c.response().await.text(), "path=/5 body=");
    c.io.shutdown().await.unwrap();
    c.closed().await;
    task.await.unwrap();
}

#[tokio::test]
async fn request_bodies_by_length_and_chunked_with_trailers_arrive_whole() {
    let (mut c, task, _drain) = client_and_server(|req: Request<Body>| -> Fut {
        Box::pin(async move {
            let collected = req.into_body().collect().await.unwrap();
            let trailers = collected.trailers().map(|t| format!("{t:?}")).unwrap_or_default();
            let body = collected.to_bytes();
            Ok(Response::new(Body::full(format!("{} {trailers}", body.len()))))
        })
    })
    .await;
    let big = "x".repeat(300_000);
    c.send(format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{big}", big.len()).as_bytes()).await;
    assert_eq!(c.response().await.text(), "300000 ");
    c.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nx-sum: 19\r\n\r\n")
        .await;
    assert_eq!(c.response().await.text(), r#"19 {"x-sum": "19"}"#);
    drop(c);
    task.await.unwrap();
}

/// A chunked request streamed back: the response is chunked too, and its first bytes reach
/// the client before the request has ended (full duplex on one connection).
#[tokio::test]
async fn a_streamed_request_body_streams_back_while_it_arrives() {
    let (mut c, task, _drain) = client_and_server(stream_back).await;
    c.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n").await;
    // The response head and the first chunk come while the request is still open.
    while !c.buf.windows(5).any(|w| w == b"first") {
        assert!(c.more().await);
    }
    assert!(String::from_utf8_lossy(&c.buf).contains("transfer-encoding: chunked"));
    c.send(b"6\r\nsecond\r\n0\r\n\r\n").await;
    let resp = c.response().await;
    assert_eq!(resp.text(), "firstsecond");
    // And the connection goes on.
    c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok").await;
    let resp = c.response().await;
    assert_eq!((resp.text().as_str(), resp.header("content-length")), ("ok", Some("2")));
    drop(c);
    task.await.unwrap();
}

#[tokio::test]
async fn framing_that_could_smuggle_a_request_is_refused() {
    for (what, req, status) in [
        (
            "transfer-encoding beside content-length",
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            400,
        ),
        ("transfer-encoding in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("chunked not last", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        ("an unknown coding", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (
            "chunked twice",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            501,
        ),
        ("two content-lengths", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
        ("a content-length list", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\nab", 400),
        ("a signed content-length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\na", 400),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
        ("a space before the colon", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n", 400),
        ("a bare LF in a field", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
        ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", 400),
        ("a target with a space", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ] {
        assert_eq!(refused(req).await, (status, 0), "{what}");
    }
}

#[tokio::test]
async fn equal_content_lengths_are_one() {
    let (mut c, task, _drain) = client_and_server(echo).await;
    c.send(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc").await;
    assert_eq!(c.response().await.text(), "path=/e body=abc");
    drop(c);
    task.await.unwrap();
}

#[tokio::test]
async fn a_malformed_chunked_body_fails_the_body_and_closes_the_connection() {
    for bad in [&b"zz\r\n"[..], b"3\r\nabcX\r\n", b"3 x\r\nabc\r\n", b"11111111111111111\r\n"] {
        let (mut c, task, _drain) = client_and_server(|req: Request<Body>| -> Fut {
            Box::pin(async move {
                let status = match req.into_body().collect().await {
                    Ok(_) => StatusCode::OK,
                    Err(_) => StatusCode::BAD_REQUEST,
                };
                let mut resp = Response::new(Body::Empty);
                *resp.status_mut() = status;
                Ok(resp)
            })
        })
        .await;
        c.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").await;
        c.send(bad).await;
        let resp = c.response().await;
        assert_eq!(resp.status(), 400, "{bad:?}");
        assert_eq!(resp.header("connection"), Some("close"), "{bad:?}");
        c.closed().await;
        task.await.unwrap();
    }
}

#[tokio::test]
async fn heads_too_large_or_with_too_many_fields_get_431() {
    let long = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(70 * 1024));
    assert_eq!(refused(long.as_bytes()).await, (431, 0));
    let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(refused(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).await, (431, 0));
    // A head that never ends is refused once it passes the limit, not buffered on.
    let (c, task, _drain) = client_and_server(echo).await;
    let (mut read, mut write) = c.io.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
        let field = format!("X-A: {}\r\n", "a".repeat(1000));
        for _ in 0..1000 {
            if write.write_all(field.as_bytes()).await.is_err() {
                return;
            }
        }
        panic!("1 MB of head was read on");
    });
    let mut got = Vec::new();
    let _ = read.read_to_end(&mut got).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 431 "), "{:?}", String::from_utf8_lossy(&got));
    task.await.unwrap();
    writer.await.unwrap();
}

#[tokio::test]
async fn expect_100_continue_is_answered_when_the_body_is_first_read() {
    let (mut c, task, _drain) = client_and_server(echo).await;
    c.send(b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n").await;
    let interim = c.response().await;
    assert_eq!(interim.status(), 100, "{interim:?}");
    c.send(b"hello").await;
    assert_eq!(c.response().await.text(), "path=/up body=hello");
    drop(c);
    task.await.unwrap();
}

/// A handler that answers without reading the body: no `100 Continue` is sent, and the client,
/// which was never told to go on, cannot be trusted to send the body or not: the connection
/// closes after the answer.
#[tokio::test]
async fn an_early_answer_to_expect_100_continue_forgoes_it_and_closes() {
    let (mut c, task, _drain) = client_and_server(ignore_body).await;
    c.send(b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n").await;
    let resp = c.response().await;
    assert_eq!((resp.status(), resp.text().as_str()), (200, "path=/up"));
    assert_eq!(resp.header("connection"), Some("close"));
    c.closed().await;
    task.await.unwrap();
}

#[tokio::test]
async fn a_small_unread_body_is_dropped_and_a_large_one_closes_the_connection() {
    let (mut c, task, _drain) = client_and_server(ignore_body).await;
    let small = "s".repeat(10_000);
    c.send(format!("POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{small}", small.len()).as_bytes())
        .await;
    assert_eq!(c.response().await.text(), "path=/small");
    c.send(b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n").await;
    assert_eq!(c.response().await.text(), "path=/chunked");
    // The unread bodies were never taken for requests.
    c.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.text(), "path=/next");
    c.send(b"POST /large HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nxyz").await;
    let resp = c.response().await;
    assert_eq!(resp.text(), "path=/large");
    c.closed().await;
    task.await.unwrap();
}

/// An unread body the client trickles (or stops sending) is waited for at most the header read
/// timeout after the response: then the connection closes.
#[tokio::test(start_paused = true)]
async fn an_unread_body_that_stops_coming_closes_the_connection_after_the_header_read_timeout() {
    let (mut c, task, _drain, _) = with_short_timeout(ignore_body).await;
    c.send(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten..").await;
    assert_eq!(c.response().await.text(), "path=/p");
    tokio::time::timeout(Duration::from_secs(3600), c.closed()).await.expect("closed");
    task.await.unwrap();
}

/// A client that goes away while its request is handled cancels it: the handler's future is
/// dropped (what releases the upstream request, its `maxRequests` slot and so on).
#[tokio::test]
async fn a_client_that_closes_cancels_its_request() {
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let started = Arc::new(tokio::sync::Notify::new());
    let (d, s) = (dropped.clone(), started.clone());
    let (mut c, task, _drain) = client_and_server(move |_req| -> Fut {
        let guard = Dropped(d.clone());
        let s = s.clone();
        Box::pin(async move {
            s.notify_one();
            std::future::pending::<()>().await;
            drop(guard);
            unreachable!()
        })
    })
    .await;
    c.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await;
    started.notified().await;
    assert!(!dropped.load(Ordering::SeqCst));
    drop(c);
    task.await.unwrap();
    assert!(dropped.load(Ordering::SeqCst), "the handler's future was dropped");
}

#[tokio::test]
async fn responses_are_framed_by_what_they_are() {
    let (mut c, task, _drain) = client_and_server(|req: Request<Body>| -> Fut {
        let status = req.uri().path()[1..].parse().unwrap_or(200);
        Box::pin(async move {
            let mut resp = Response::new(Body::full("body"));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
            resp.headers_mut().insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("x-private"));
            Ok(resp)
        })
    })
    .await;
    c.send(b"GET /200 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let resp = c.response().await;
    assert_eq!((resp.header("content-length"), resp.text().as_str()), (Some("4"), "body"));
    assert_eq!(resp.header("transfer-encoding"), None, "the handler's own coding is not the framing: {resp:?}");
    assert_eq!(resp.header("connection"), None, "{resp:?}");
    c.send(b"HEAD /200 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let resp = c.response_to(true).await;
    assert_eq!(resp.status(), 200);
    for status in ["204", "304"] {
        c.send(format!("GET /{status} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await;
        let resp = c.response().await;
        assert_eq!(resp.status().to_string(), status);
        assert_eq!(resp.header("content-length"), None, "{resp:?}");
    }
    // Nothing of a body was sent after those: the next response parses.
    c.send(b"GET /201 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.status(), 201);
    drop(c);
    task.await.unwrap();
}

/// A body of unknown length in a response: chunked to an HTTP/1.1 client, with its trailers
/// only if the client said `TE: trailers`; to an HTTP/1.0 client, delimited by the close.
#[tokio::test]
async fn a_body_of_unknown_length_is_chunked_or_ends_with_the_close() {
    #[derive(Debug)]
    struct Unknown(Vec<Frame<Bytes>>);
    impl codec::Http1Body for Unknown {
        fn poll_frame(&mut self, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, codec::Error>>> {
            Poll::Ready((!self.0.is_empty()).then(|| Ok(self.0.remove(0))))
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::default()
        }
    }
    let handler = |_req| -> Fut {
        let mut t = HeaderMap::new();
        t.insert("x-t", HeaderValue::from_static("1"));
        let frames = vec![Frame::data(Bytes::from("ab")), Frame::data(Bytes::from("cd")), Frame::trailers(t)];
        Box::pin(async move { Ok(Response::new(Body::http1(Box::new(Unknown(frames))))) })
    };
    let (mut c, task, _drain) = client_and_server(handler).await;
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let resp = c.response().await;
    assert_eq!(resp.text(), "abcd");
    assert!(resp.head.ends_with("--trailers--\r\n"), "no trailers without TE: trailers: {resp:?}");
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n").await;
    let resp = c.response().await;
    assert!(resp.head.ends_with("x-t: 1"), "{resp:?}");
    drop(c);
    task.await.unwrap();

    let (mut c, task, _drain) = client_and_server(handler).await;
    c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
    let resp = c.response().await;
    assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
    assert_eq!(resp.text(), "abcd");
    task.await.unwrap();
}

#[tokio::test]
async fn http10_keeps_alive_only_when_asked() {
    let (mut c, task, _drain) = client_and_server(echo).await;
    c.send(b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
    let resp = c.response().await;
    assert_eq!((resp.header("connection"), resp.text().as_str()), (Some("keep-alive"), "path=/k body="));
    c.send(b"GET /c HTTP/1.0\r\n\r\n").await;
    let resp = c.response().await;
    assert_eq!((resp.header("connection"), resp.text().as_str()), (Some("close"), "path=/c body="));
    c.closed().await;
    task.await.unwrap();
    // HTTP/1.1 with `Connection: close`.
    let (mut c, task, _drain) = client_and_server(echo).await;
    c.send(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(c.response().await.header("connection"), Some("close"));
    c.closed().await;
    task.await.unwrap();
}

/// A `101` hands the connection to the request's [`OnUpgrade`], with the bytes the client sent
/// after its head already (they were read with it).
#[tokio::test]
async fn an_upgrade_hands_over_the_connection_with_the_bytes_read_after_the_head() {
    let (mut c, task, _drain) = client_and_server(|mut req: Request<Body>| -> Fut {
        let on = OnUpgrade::take(&mut req).expect("an upgrade request");
        tokio::spawn(async move {
            let mut up = on.await.unwrap();
            let mut got = [0u8; 9];
            up.read_exact(&mut got).await.unwrap();
            up.write_all(&got).await.unwrap();
        });
        Box::pin(async move {
            let mut resp = Response::new(Body::Empty);
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            resp.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("echo"));
            Ok(resp)
        })
    })
    .await;
    c.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly").await;
    let resp = c.response().await;
    assert_eq!(
        (resp.status(), resp.header("upgrade"), resp.header("connection")),
        (101, Some("echo"), Some("upgrade"))
    );
    c.send(b"late").await;
    while c.buf.len() < 9 {
        assert!(c.more().await);
    }
    assert_eq!(&c.buf[..], b"earlylate");
    task.await.unwrap();
}

/// An upgrade request answered with something else goes on as an ordinary request.
#[tokio::test]
async fn an_upgrade_refused_leaves_the_connection_as_it_was() {
    let (mut c, task, _drain) = client_and_server(echo).await;
    c.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n").await;
    assert_eq!(c.response().await.text(), "path=/ws body=");
    c.send(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.text(), "path=/after body=");
    drop(c);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_closes_after_the_header_read_timeout() {
    let (mut c, task, drain, limits) = with_short_timeout(echo).await;
    c.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.text(), "path=/a body=");
    // Part of a head, then silence: 408 at the deadline, and closed.
    c.send(b"GET /b HTTP/1.1\r\n").await;
    let resp = tokio::time::timeout(Duration::from_secs(3600), c.response()).await.expect("answered");
    assert_eq!((resp.status(), resp.header("connection")), (408, Some("close")));
    c.closed().await;
    task.await.unwrap();
    // Nothing at all: closed silently at the deadline.
    let (client, stream) = pair().await;
    let task = spawn(stream, echo, limits, &drain);
    let mut c = Client::new(client);
    tokio::time::timeout(Duration::from_secs(3600), c.closed()).await.expect("closed");
    task.await.unwrap();
}

#[tokio::test]
async fn drain_closes_an_idle_connection_and_closes_a_busy_one_after_its_response() {
    let (mut c, task, drain) = client_and_server(echo).await;
    c.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.text(), "path=/a body=");
    drain.start();
    c.closed().await;
    task.await.unwrap();

    let (started, release) = (Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new()));
    let (s, r) = (started.clone(), release.clone());
    let (mut c, task, drain) = client_and_server(move |req| -> Fut {
        let (s, r) = (s.clone(), r.clone());
        Box::pin(async move {
            s.notify_one();
            r.notified().await;
            echo(req).await
        })
    })
    .await;
    c.send(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // The request is in the handler when the drain starts.
    started.notified().await;
    drain.start();
    release.notify_one();
    let resp = c.response().await;
    assert_eq!((resp.text().as_str(), resp.header("connection")), ("path=/busy body=", Some("close")));
    c.closed().await;
    task.await.unwrap();
}

/// A connection that arrives while the proxy drains (the listeners still accept until the
/// endpoint is withdrawn): its request is answered with `Connection: close`, then it ends.
#[tokio::test]
async fn a_connection_accepted_while_draining_is_answered_once_and_closed() {
    let (client, stream) = pair().await;
    let drain = Drain::new();
    drain.start();
    let task = spawn(stream, echo, LIMITS, &drain);
    let mut c = Client::new(client);
    c.send(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let resp = c.response().await;
    assert_eq!((resp.text().as_str(), resp.header("connection")), ("path=/late body=", Some("close")));
    c.closed().await;
    task.await.unwrap();
}

/// What an idle connection's task holds besides the connection's shared state and what it
/// waits with (its timer and the drain's watch, boxed): 568 bytes in a debug build when
/// written.
#[tokio::test]
async fn an_idle_connections_future_stays_small() {
    const MAX: usize = 640;
    let (_client, stream) = pair().await;
    let drain = Drain::new();
    let fut = serve(stream, Arc::new(echo), LIMITS, drain.signal());
    let size = std::mem::size_of_val(&fut);
    assert!(size <= MAX, "an HTTP/1.1 connection's future takes {size} bytes (at most {MAX})");
}
