//! The proxy's HTTP/1.1 client, seen from raw upstreams: a response streamed while the request
//! is still being uploaded, an early answer to an upload, and pooled connections the upstream
//! closed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use outrider_tests::ProxyHarness;
use outrider_tests::client::fed;
use outrider_tests::policy::{docs, service};
use outrider_tests::raw::{Reader, read_request_head};
use outrider_tests::upstream;
use outrider_tests::wait;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_streams_back_while_the_request_body_is_still_being_sent() {
    // The upstream answers at once and echoes the (chunked) request body's bytes as its own
    // chunked body, as they arrive: each echo needs the proxy to carry the request and the
    // response at the same time.
    let up = upstream::duplex_echo("duplex").await;
    let proxy = ProxyHarness::start(&docs(&[service("duplex").port(8080).endpoint(up.addr).yaml()])).await;

    let io = TokioIo::new(TcpStream::connect(proxy.addrs.outbound).await.unwrap());
    let (mut sender, conn) = http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let (tx, body) = fed();
    let req = hyper::Request::post("http://duplex:8080/echo").header("host", "duplex:8080").body(body).unwrap();
    tx.send(Bytes::from_static(b"one")).unwrap();
    let resp = wait::within("the response head, before the upload ends", sender.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut resp = resp.into_body();
    let mut next = async || {
        let frame = wait::within("an echoed chunk", resp.frame()).await;
        frame.map(|f| f.unwrap().into_data().unwrap())
    };
    assert_eq!(next().await.unwrap(), "one");
    tx.send(Bytes::from_static(b"two")).unwrap();
    assert_eq!(next().await.unwrap(), "two");
    drop(tx);
    assert_eq!(next().await, None, "the response ends after the request does");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_reaches_the_client_while_it_is_still_uploading() {
    let up = upstream::scripted("early", |mut s| async move {
        if read_request_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big!")
                .await;
        }
    })
    .await;
    let proxy = ProxyHarness::start(&docs(&[service("early").port(8080).endpoint(up.addr).yaml()])).await;

    let mut c = Reader::new(TcpStream::connect(proxy.addrs.outbound).await.unwrap());
    // 64 MiB announced, 64 KiB sent: the answer must come without the rest.
    c.io.write_all(b"POST /up HTTP/1.1\r\nhost: early:8080\r\ncontent-length: 67108864\r\n\r\n").await.unwrap();
    c.io.write_all(&[b'x'; 64 * 1024]).await.unwrap();
    let head = c.head().await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_a_pooled_connection_the_upstream_closed_unanswered_is_sent_again_on_a_new_one() {
    // Each connection answers its first request, then reads the next request's head and
    // closes without an answer: the second GET meets a closed pooled connection.
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let up = upstream::scripted("flaky", move |mut s| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            if read_request_head(&mut s).await {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                read_request_head(&mut s).await;
            }
        }
    })
    .await;
    let proxy = ProxyHarness::start(&docs(&[service("flaky").port(8080).endpoint(up.addr).yaml()])).await;
    for _ in 0..3 {
        let r = proxy.get("http://flaky:8080/again").await;
        r.assert_status(200);
        assert_eq!(r.body, "ok");
    }
    // Requests 2 and 3 each met a pooled connection that closed unanswered, and were sent
    // again on a new one.
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_the_upstream_closes_leaves_the_pool_without_a_request() {
    // The upstream answers one request, then closes the connection when told to (as a server
    // with a short keep-alive timeout does). No idle timeout is set (the default is an hour).
    let close = Arc::new(tokio::sync::Notify::new());
    let told = close.clone();
    let up = upstream::scripted("closer", move |mut s| {
        let told = told.clone();
        async move {
            if read_request_head(&mut s).await {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                told.notified().await;
            }
        }
    })
    .await;
    let proxy = ProxyHarness::start(&docs(&[service("closer").port(8080).endpoint(up.addr).yaml()])).await;
    proxy.get("http://closer:8080/").await.assert_status(200);
    let idle = async || proxy.admin("GET", "/clusters").await.text();
    assert!(idle().await.contains("\"idle_http1_connections\": 1"), "{}", idle().await);
    close.notify_one();
    wait::wait_until("the closed connection to leave the pool", || async {
        idle().await.contains("\"idle_http1_connections\": 0")
    })
    .await;
}
