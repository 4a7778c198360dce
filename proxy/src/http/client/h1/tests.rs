//! The HTTP/1.1 client against raw upstreams on loopback sockets: what it writes, how it frames
//! what it reads, and when a connection goes back to the pool.
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::http::Body;
use crate::http::body::BodyError;

/// Collects the connections given back.
#[derive(Debug, Clone, Default)]
struct Back(Arc<Mutex<Vec<Conn<()>>>>);

impl Return<()> for Back {
    fn give_back(self, conn: Conn<()>) {
        self.0.lock().unwrap().push(conn);
    }
}

impl Back {
    fn take(&self) -> Option<Conn<()>> {
        self.0.lock().unwrap().pop()
    }
}

/// An upstream that reads one request head (and `body` more bytes), answers `answer`, and
/// then waits for the client to close; what it read comes back.
async fn upstream(answer: &'static [u8], body: usize) -> (Conn<()>, tokio::task::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let got = read_request(&mut s, body).await;
        s.write_all(answer).await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        got
    });
    (Conn::new(TcpStream::connect(addr).await.unwrap(), ()), server)
}

/// Read a request head and `body` more bytes.
async fn read_request(s: &mut TcpStream, body: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
            && got.len() >= end + 4 + body
        {
            return got;
        }
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0, "the client closed mid-request: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).header("host", "svc").body(Body::Empty).unwrap()
}

async fn send(conn: Conn<()>, req: Request<Body>, back: &Back) -> Result<Response<Body>, Error> {
    match exchange(conn, Outgoing::new(req)?, back.clone()).await {
        Ok(r) => Ok(r),
        Err(Failed::Stale(..)) => panic!("a fresh connection cannot be stale"),
        Err(Failed::Error(e)) => Err(e),
    }
}

/// The body's data and trailers, or the error that ended it.
async fn collect(resp: Response<Body>) -> Result<(Vec<u8>, Option<HeaderMap>), BodyError> {
    let mut body = resp.into_body();
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    Ok((data, trailers))
}

#[tokio::test]
async fn a_get_is_written_as_it_is_and_its_connection_goes_back_after_the_body() {
    let (conn, server) = upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\nx-a: 2\r\n\r\nhello", 0).await;
    let back = Back::default();
    let req = Request::get("/p?q=1").header("host", "svc").header("x-b", "v").body(Body::Empty).unwrap();
    let resp = send(conn, req, &back).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let values: Vec<_> = resp.headers().get_all("x-a").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert_eq!(values, ["1", "2"]);
    assert!(back.take().is_none(), "given back before its body was read");
    let (data, trailers) = collect(resp).await.unwrap();
    assert_eq!(data, b"hello");
    assert!(trailers.is_none());
    let mut conn = back.take().expect("the connection goes back once the body has ended");
    assert!(conn.buf.capacity() == 0, "an idle connection holds no read buffer");
    assert!(conn.is_idle_and_open());
    drop(conn);
    assert_eq!(server.await.unwrap(), b"GET /p?q=1 HTTP/1.1\r\nhost: svc\r\nx-b: v\r\n\r\n");
}

#[tokio::test]
async fn a_chunked_response_gives_its_data_and_trailers() {
    let (conn, _server) = upstream(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1 \r\n!\r\n0\r\nx-t: done\r\n\r\n",
        0,
    )
    .await;
    let back = Back::default();
    let resp = send(conn, get("/"), &back).await.unwrap();
    let (data, trailers) = collect(resp).await.unwrap();
    assert_eq!(data, b"hello!");
    assert_eq!(trailers.unwrap()["x-t"], "done");
    assert!(back.take().is_some(), "a clean chunked response leaves the connection reusable");
}

#[tokio::test]
async fn transfer_encoding_wins_over_content_length_and_the_connection_is_not_reused() {
    let (conn, _server) = upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        0,
    )
    .await;
    let back = Back::default();
    let resp = send(conn, get("/"), &back).await.unwrap();
    assert!(resp.headers().get("content-length").is_none(), "a content-length beside chunked is dropped");
    assert_eq!(collect(resp).await.unwrap().0, b"ok");
    assert!(back.take().is_none(), "RFC 9112 §6.1: closed after such a response");
}

#[tokio::test]
async fn informational_heads_are_skipped() {
    let (conn, _server) = upstream(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
        0,
    )
    .await;
    let back = Back::default();
    let resp = send(conn, get("/"), &back).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().get("link").is_none());
    assert!(back.take().is_some(), "an empty body ends at once");
}

#[tokio::test]
async fn endless_informational_heads_are_an_error() {
    let mut answer = Vec::new();
    for _ in 0..=MAX_INFORMATIONAL {
        answer.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    answer.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    let (conn, _server) = upstream(Box::leak(answer.into_boxed_slice()), 0).await;
    assert!(matches!(send(conn, get("/"), &Back::default()).await, Err(Error::Invalid(_))));
    // As many as allowed are fine.
    let mut answer = Vec::new();
    for _ in 0..MAX_INFORMATIONAL {
        answer.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    answer.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    let (conn, _server) = upstream(Box::leak(answer.into_boxed_slice()), 0).await;
    assert_eq!(send(conn, get("/"), &Back::default()).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_101_to_a_request_without_an_upgrade_is_an_error() {
    let (conn, _server) = upstream(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n", 0).await;
    let e = send(conn, get("/"), &Back::default()).await.unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
}

#[tokio::test]
async fn head_204_and_304_have_no_body_whatever_they_say() {
    for (method, answer) in [
        ("HEAD", &b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"[..]),
        ("GET", b"HTTP/1.1 204 No Content\r\ncontent-length: 10\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n"),
    ] {
        let answer: &'static [u8] = Box::leak(answer.to_vec().into_boxed_slice());
        let (conn, _server) = upstream(answer, 0).await;
        let back = Back::default();
        let req = Request::builder().method(method).uri("/").body(Body::Empty).unwrap();
        let resp = send(conn, req, &back).await.unwrap();
        assert!(resp.body().is_end_stream(), "{method} {}", resp.status());
        if method == "HEAD" {
            assert_eq!(resp.headers()["content-length"], "1000", "a HEAD response keeps its length");
        }
        assert_eq!(collect(resp).await.unwrap().0, b"");
        let conn = back.take().expect("reusable");
        assert!(conn.buf.is_empty());
    }
}

#[tokio::test]
async fn a_body_without_length_is_read_to_the_close_and_the_connection_not_reused() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        read_request(&mut s, 0).await;
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\nall of ").await.unwrap();
        s.write_all(b"it").await.unwrap();
    });
    let back = Back::default();
    let resp = send(Conn::new(TcpStream::connect(addr).await.unwrap(), ()), get("/"), &back).await.unwrap();
    assert_eq!(collect(resp).await.unwrap().0, b"all of it");
    assert!(back.take().is_none());
}

#[tokio::test]
async fn bad_framing_in_a_response_head_is_an_error() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx: a\r\n folded\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
    ] {
        let (conn, _server) = upstream(Box::leak(answer.to_vec().into_boxed_slice()), 0).await;
        let r = send(conn, get("/"), &Back::default()).await;
        assert!(r.is_err(), "accepted {:?}", String::from_utf8_lossy(answer));
    }
    // Equal values, listed or repeated, are one length.
    let (conn, _server) = upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\ncontent-length: 2\r\n\r\nok", 0).await;
    let resp = send(conn, get("/"), &Back::default()).await.unwrap();
    assert_eq!(collect(resp).await.unwrap().0, b"ok");
}

#[tokio::test]
async fn a_head_too_large_or_with_too_many_fields_is_an_error() {
    let mut big = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
    big.resize(big.len() + MAX_HEAD_BYTES, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    let (conn, _server) = upstream(Box::leak(big.into_boxed_slice()), 0).await;
    assert!(matches!(send(conn, get("/"), &Back::default()).await, Err(Error::HeadTooLarge)));

    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"content-length: 0\r\n\r\n");
    let (conn, _server) = upstream(Box::leak(many.into_boxed_slice()), 0).await;
    assert!(matches!(send(conn, get("/"), &Back::default()).await, Err(Error::Head(httparse::Error::TooManyHeaders))));
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_and_closes_the_connection() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        ] {
            let (mut s, _) = l.accept().await.unwrap();
            read_request(&mut s, 0).await;
            s.write_all(answer).await.unwrap();
        }
    });
    for expected in ["ClosedInBody", "ClosedInChunked"] {
        let back = Back::default();
        let resp = send(Conn::new(TcpStream::connect(addr).await.unwrap(), ()), get("/"), &back).await.unwrap();
        let e = collect(resp).await.unwrap_err();
        assert!(format!("{e:?}").contains(expected), "{e:?}");
        assert!(back.take().is_none());
    }
}

#[test]
fn chunk_size_lines_are_read_strictly() {
    assert_eq!(chunk_size(b"1a\r\n").unwrap(), Some((4, 26)));
    assert_eq!(chunk_size(b"A;name=\"v\"\r\n").unwrap(), Some((12, 10)));
    assert_eq!(chunk_size(b"5 \t;x\r\n").unwrap(), Some((7, 5)));
    assert_eq!(chunk_size(b"ffffffffffffffff\r\n").unwrap(), Some((18, u64::MAX)));
    assert_eq!(chunk_size(b"5").unwrap(), None, "incomplete");
    for bad in [
        &b"\r\n"[..],
        b"x\r\n",
        b"-1\r\n",
        b"0x5\r\n",
        b"5\n",
        b"5 6\r\n",
        b"1ffffffffffffffff\r\n",
        b"5;a\nb\r\n",
        b"5;\x01\r\n",
    ] {
        assert!(chunk_size(bad).is_err(), "accepted {:?}", String::from_utf8_lossy(bad));
    }
    let long = vec![b'1'; MAX_CHUNK_LINE];
    assert!(chunk_size(&long).is_err());
}

#[tokio::test]
async fn a_missing_crlf_after_chunk_data_is_an_error() {
    let (conn, _server) = upstream(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n", 0).await;
    let resp = send(conn, get("/"), &Back::default()).await.unwrap();
    assert!(matches!(collect(resp).await, Err(BodyError::Http1(Error::Chunked(_)))));
}

#[tokio::test]
async fn connection_close_http10_and_extra_bytes_keep_a_connection_out_of_the_pool() {
    for (answer, reused) in [
        (&b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"[..], false),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
        (b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok", true),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n", false),
    ] {
        let (conn, _server) = upstream(Box::leak(answer.to_vec().into_boxed_slice()), 0).await;
        let back = Back::default();
        let resp = send(conn, get("/"), &back).await.unwrap();
        assert_eq!(collect(resp).await.unwrap().0, b"ok");
        assert_eq!(back.take().is_some(), reused, "{:?}", String::from_utf8_lossy(answer));
    }
}

#[tokio::test]
async fn a_connection_field_of_framing_only_stays_out_of_the_map_and_one_naming_fields_stays_for_the_strip() {
    // Keep-alive or close only: read for the framing (a close keeps the connection out of the
    // pool), not handed on.
    for (answer, reused) in [
        (&b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 2\r\n\r\nok"[..], true),
        (b"HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\ncontent-length: 2\r\n\r\nok", false),
    ] {
        let (conn, _server) = upstream(Box::leak(answer.to_vec().into_boxed_slice()), 0).await;
        let back = Back::default();
        let resp = send(conn, get("/"), &back).await.unwrap();
        assert!(resp.headers().get(header::CONNECTION).is_none(), "{:?}", resp.headers());
        assert_eq!(collect(resp).await.unwrap().0, b"ok");
        assert_eq!(back.take().is_some(), reused, "{:?}", String::from_utf8_lossy(answer));
    }
    // A token naming another field: the field stays, so the hop-by-hop strip removes what it
    // names; the framing (close) is read all the same.
    let (conn, _server) = upstream(
        b"HTTP/1.1 200 OK\r\nconnection: close, x-hop\r\nx-hop: 1\r\nx-keep: 2\r\ncontent-length: 2\r\n\r\nok",
        0,
    )
    .await;
    let back = Back::default();
    let mut resp = send(conn, get("/"), &back).await.unwrap();
    assert_eq!(resp.headers()[header::CONNECTION], "close, x-hop");
    crate::http::headers::strip_hop_by_hop(resp.headers_mut(), false);
    assert!(resp.headers().get("x-hop").is_none() && resp.headers().get(header::CONNECTION).is_none());
    assert_eq!(resp.headers()["x-keep"], "2");
    assert_eq!(collect(resp).await.unwrap().0, b"ok");
    assert!(back.take().is_none(), "closed by the upstream's connection: close");
}

#[tokio::test]
async fn a_custom_reason_phrase_is_kept() {
    let (conn, _server) = upstream(b"HTTP/1.1 200 Fine Thanks\r\ncontent-length: 0\r\n\r\n", 0).await;
    let resp = send(conn, get("/"), &Back::default()).await.unwrap();
    let reason = resp.extensions().get::<hyper::ext::ReasonPhrase>().unwrap();
    assert_eq!(reason.as_bytes(), b"Fine Thanks");
}

#[tokio::test]
async fn request_bodies_are_framed_by_their_length_or_chunked() {
    // A body of known length without a content-length gets one.
    let (conn, server) = upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 5).await;
    let req = Request::post("/").body(Body::full("hello")).unwrap();
    send(conn, req, &Back::default()).await.unwrap();
    assert_eq!(server.await.unwrap(), b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello");

    // A declared length is kept; a transfer-encoding from the caller is replaced by ours.
    let (conn, server) = upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 5).await;
    let req = Request::put("/").header("content-length", "5").body(Body::full("hello")).unwrap();
    send(conn, req, &Back::default()).await.unwrap();
    assert_eq!(server.await.unwrap(), b"PUT / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello");

    let (conn, server) = upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 15).await;
    let req = Request::post("/")
        .header("transfer-encoding", "gzip, chunked")
        .header("content-length", "99")
        .body(Body::full("hello"))
        .unwrap();
    send(conn, req, &Back::default()).await.unwrap();
    assert_eq!(server.await.unwrap(), b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
}

#[tokio::test]
async fn a_body_that_disagrees_with_its_content_length_is_an_error() {
    let (conn, _server) = upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 0).await;
    let req = Request::post("/").header("content-length", "3").body(Body::full("hello")).unwrap();
    let e = send(conn, req, &Back::default()).await.unwrap_err();
    assert!(matches!(e, Error::RequestLength("longer")), "{e}");

    let req = Request::post("/").header("content-length", "3").body(Body::Empty).unwrap();
    assert!(matches!(Outgoing::new(req), Err(Error::RequestLength("shorter"))));
}

#[tokio::test]
async fn a_reused_connection_closed_before_the_response_hands_back_only_a_resendable_request() {
    for (req, resendable) in [(get("/"), true), (Request::post("/").body(Body::full("x")).unwrap(), false)] {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            read_request(&mut s, 0).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
            // The next request on this connection: read its head, then close without an answer.
            read_request(&mut s, 0).await;
        });
        let back = Back::default();
        send(Conn::new(TcpStream::connect(addr).await.unwrap(), ()), get("/"), &back).await.unwrap();
        let conn = back.take().unwrap();
        match exchange(conn, Outgoing::new(req).unwrap(), back.clone()).await {
            Err(Failed::Stale(out, ())) => {
                assert!(resendable);
                assert!(out.resendable && out.head.starts_with(b"GET / HTTP/1.1\r\n"));
            }
            Err(Failed::Error(e)) => assert!(!resendable, "{e}"),
            Ok(_) => panic!("answered"),
        }
    }
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_seen_as_closed() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        read_request(&mut s, 0).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        close_rx.await.unwrap();
        drop(s);
        closed_tx.send(()).unwrap();
    });
    let back = Back::default();
    send(Conn::new(TcpStream::connect(addr).await.unwrap(), ()), get("/"), &back).await.unwrap();
    let mut conn = back.take().unwrap();
    assert!(conn.is_idle_and_open());
    close_tx.send(()).unwrap();
    closed_rx.await.unwrap();
    // The reactor learns of the FIN when it next polls; wait for the socket to turn readable.
    tcp_of(&conn).readable().await.unwrap();
    assert!(!conn.is_idle_and_open());
}

#[tokio::test]
async fn an_early_answer_is_read_while_the_request_body_is_still_going_out() {
    // The server reads the head only, answers, and closes; the body (larger than the socket
    // buffers, of unknown length) cannot all be written.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        read_request(&mut s, 0).await;
        s.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!")
            .await
            .unwrap();
        // Read a little more, then close with data unread (a reset).
        let _ = s.read(&mut [0u8; 1024]).await;
    });
    let big = Bytes::from(vec![b'x'; 16 << 20]);
    let req = Request::post("/").body(Body::full(big)).unwrap();
    let back = Back::default();
    let resp = send(Conn::new(TcpStream::connect(addr).await.unwrap(), ()), req, &back).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(collect(resp).await.unwrap().0, b"big!");
    assert!(back.take().is_none());
}

#[test]
fn numbers_are_written_in_decimal_and_hex() {
    for n in [0u64, 7, 10, 255, 4096, u64::MAX] {
        assert_eq!(itoa(n, &mut [0; 20]), n.to_string().as_bytes());
        assert_eq!(hex(n, &mut [0; 18]), format!("{n:x}\r\n").as_bytes());
    }
}

#[tokio::test]
async fn large_bodies_arrive_whole_over_many_reads() {
    let pattern: Vec<u8> = (0..300 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let mut by_length = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", pattern.len()).into_bytes();
    by_length.extend_from_slice(&pattern);
    let mut chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for piece in pattern.chunks(100 * 1024 + 7) {
        chunked.extend_from_slice(format!("{:X}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    for answer in [by_length, chunked] {
        let (conn, _server) = upstream(Box::leak(answer.into_boxed_slice()), 0).await;
        let back = Back::default();
        let resp = send(conn, get("/"), &back).await.unwrap();
        assert_eq!(collect(resp).await.unwrap().0, pattern);
        assert!(back.take().is_some());
    }
}

/// A request body fed by the test, one piece at a time.
#[derive(Debug)]
struct Fed(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

impl Http1Body for Fed {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
    fn is_end_stream(&self) -> bool {
        false
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A mutual-TLS client and server pair on loopback (the server's side accepted), with small
/// socket buffers so that large writes fill them.
async fn tls_pair() -> (Either, tokio_rustls::server::TlsStream<TcpStream>) {
    use crate::tls::tests::TestCa;
    let ca = TestCa::new();
    let server_id = "spiffe://outrider.local/ns/default/sa/server";
    let server_cfg = crate::tls::server_config(ca.store(server_id), crate::tls::Mode::Strict).unwrap();
    let expected = crate::tls::Identity::parse(server_id).unwrap();
    let client_cfg = crate::tls::client_config_alpn(
        ca.store("spiffe://outrider.local/ns/default/sa/client"),
        expected,
        crate::tls::ALPN_OUTRIDER_HTTP1,
    )
    .unwrap();
    let listener = tokio::net::TcpSocket::new_v4().unwrap();
    listener.set_recv_buffer_size(4096).unwrap();
    listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.listen(1).unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        tokio_rustls::TlsAcceptor::from(server_cfg).accept(s).await.unwrap()
    });
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    // The proxy's client stream against rustls' buffered server.
    let client = crate::tls::stream::Connector::from(client_cfg).connect(name, tcp).await.unwrap();
    (Either::Tls(Box::new(client)), server.await.unwrap())
}

#[tokio::test]
async fn over_tls_what_the_session_holds_goes_out_while_the_body_pauses() {
    // 4 MiB through 4 KiB socket buffers: the last write leaves encrypted bytes in the TLS
    // session, and the body then pauses (the caller waits for the answer). The server answers
    // only once it has all 4 MiB, so the request hangs unless the client flushes the session.
    const PIECE: usize = 4 * 1024 * 1024;
    let (client, mut server) = tls_pair().await;
    let server = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut b = vec![0u8; 64 * 1024];
        // The head, the chunk-size line and the piece.
        let want = |got: &[u8]| {
            got.windows(4).position(|w| w == b"\r\n\r\n").is_some_and(|end| {
                let rest = &got[end + 4..];
                rest.windows(2).position(|w| w == b"\r\n").is_some_and(|line| rest.len() >= line + 2 + PIECE)
            })
        };
        while !want(&got) {
            let n = server.read(&mut b).await.unwrap();
            assert!(n > 0, "the client closed before the piece arrived whole");
            got.extend_from_slice(&b[..n]);
        }
        server.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
        server.flush().await.unwrap();
        server
    });
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(Bytes::from(vec![b'x'; PIECE])).unwrap();
    let req = Request::post("/up").header("host", "svc").body(Body::http1(Box::new(Fed(rx)))).unwrap();
    let back = Back::default();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(20), send(Conn::new(client, ()), req, &back))
        .await
        .expect("the answer, which needs every byte of the piece at the server")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(tx);
    let (data, _) = collect(resp).await.unwrap();
    assert_eq!(data, b"ok");
    drop(server.await.unwrap());
}

#[tokio::test]
async fn over_tls_an_idle_connection_is_open_until_the_server_closes_it() {
    let (client, mut server) = tls_pair().await;
    let mut conn = Conn::new(client, ());
    assert!(conn.is_idle_and_open(), "a quiet session is open");
    assert!(conn.is_idle_and_open(), "and stays so when looked at again");
    // The server's close_notify, then its end of the stream.
    server.shutdown().await.unwrap();
    tcp_of(&conn).readable().await.unwrap();
    assert!(!conn.is_idle_and_open(), "a close_notify closes it");
}

/// The TCP socket under a test connection.
fn tcp_of<G>(conn: &Conn<G>) -> &TcpStream {
    match &conn.io {
        Either::Plain(s) => s,
        Either::Tls(s) => s.get_ref().0,
        Either::Hbone(_) => unreachable!("no HBONE in these tests"),
    }
}
