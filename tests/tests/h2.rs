//! HTTP/2 through the outbound port: h2c prior knowledge to an h2 upstream, and
//! an HTTP/2 client to an HTTP/1.1 upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::Version;
use outrider_tests::ProxyHarness;
use outrider_tests::client::{self, request};
use outrider_tests::policy::{docs, service};
use outrider_tests::upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_to_h2_upstream() {
    let up = upstream::h2().name("h2-up").start().await;
    let proxy =
        ProxyHarness::start(&docs(&[service("echo2").protocol("http2").port(8080).endpoint(up.addr).yaml()])).await;
    let c = proxy.h2_client();

    let r = client::send(&c, client::get("http://echo2:8080/a?b=c")).await;
    r.assert_status(200);
    assert_eq!(r.version, Version::HTTP_2, "the client spoke HTTP/2 to the proxy");
    assert_eq!(r.upstream(), Some("h2-up"));
    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_2, "the proxy spoke HTTP/2 to the upstream");
    assert_eq!(seen.path, "/a?b=c");
    assert!(seen.header("x-request-id").is_some(), "the request id is added over HTTP/2 too");

    let body = "x".repeat(100_000);
    let r = client::send(&c, request("POST", "http://echo2:8080/post", body.clone())).await;
    r.assert_status(200);
    assert_eq!(r.echo().body.len(), body.len(), "a 100 kB body crosses both HTTP/2 hops intact");
    assert_eq!(up.last().body, body.as_bytes());

    // Concurrent streams on the one client connection.
    let replies = futures_util::future::join_all(
        (0..20).map(|i| client::send(&c, client::get(&format!("http://echo2:8080/c/{i}")))),
    )
    .await;
    for (i, r) in replies.iter().enumerate() {
        r.assert_status(200);
        assert_eq!(r.echo().path, format!("/c/{i}"));
    }
    assert_eq!(up.request_count(), 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_to_http1_upstream() {
    let up = upstream::http1().name("h1-up").start().await;
    let proxy =
        ProxyHarness::start(&docs(&[service("echo").protocol("http").port(8080).endpoint(up.addr).yaml()])).await;
    let c = proxy.h2_client();

    let r = client::send(&c, request("POST", "http://echo:8080/down", "over two protocols")).await;
    r.assert_status(200);
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.upstream(), Some("h1-up"));
    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_11, "an http service is spoken to in HTTP/1.1");
    assert_eq!(seen.header("host"), Some("echo:8080"), "the :authority becomes Host");
    assert_eq!(seen.body.as_ref(), b"over two protocols");
}

/// The HPACK representations of one header block (RFC 7541 §6), walked without decoding
/// names or values (Huffman-coded strings are skipped by their length).
#[derive(Debug, Default, PartialEq)]
struct Representations {
    indexed: usize,
    incremental: usize,
    without_indexing: usize,
    never_indexed: usize,
}

fn representations(block: &[u8]) -> Representations {
    // An N-bit prefix integer (RFC 7541 §5.1) at `*at`.
    fn int(b: &[u8], at: &mut usize, prefix: u8) -> usize {
        let max = (1usize << prefix) - 1;
        let mut n = usize::from(b[*at]) & max;
        *at += 1;
        if n == max {
            let mut shift = 0;
            loop {
                let byte = b[*at];
                *at += 1;
                n += usize::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
        }
        n
    }
    fn string(b: &[u8], at: &mut usize) {
        let len = int(b, at, 7);
        *at += len;
    }
    let mut r = Representations::default();
    let mut at = 0;
    while at < block.len() {
        let first = block[at];
        let (prefix, count) = match first {
            0x80.. => (7, &mut r.indexed),
            0x40..=0x7f => (6, &mut r.incremental),
            0x20..=0x3f => {
                int(block, &mut at, 5); // a dynamic table size update
                continue;
            }
            0x10..=0x1f => (4, &mut r.never_indexed),
            _ => (4, &mut r.without_indexing),
        };
        *count += 1;
        let name_index = int(block, &mut at, prefix);
        if prefix != 7 {
            if name_index == 0 {
                string(block, &mut at);
            }
            string(block, &mut at);
        }
    }
    r
}

/// Per-request unique values (the request id) go to an HTTP/2 upstream as never-indexed
/// literals, so a steady stream of requests adds nothing to the upstream connection's HPACK
/// dynamic table after the first: an indexed id would evict entries that repeat and make every
/// later encode walk the ids already in the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_never_enter_the_upstreams_hpack_table() {
    use outrider_tests::raw_h2::{Conn, Frame, flag, kind};
    use std::sync::{Arc, Mutex};

    let blocks: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen = blocks.clone();
    let up = upstream::scripted("h2-raw", move |s| {
        let seen = seen.clone();
        async move {
            let Some(mut conn) = Conn::accept(s).await else { return };
            while let Some(f) = conn.frame().await {
                match f.kind {
                    kind::SETTINGS if !f.has(flag::ACK) => conn.send(&Frame::settings_ack()).await,
                    kind::HEADERS => {
                        assert!(f.has(flag::END_HEADERS), "one frame per header block here: {f:?}");
                        assert_eq!(f.flags & (flag::PADDED | flag::PRIORITY), 0, "{f:?}");
                        seen.lock().unwrap().push(f.payload.clone());
                        // `:status: 200` (static index 8), no body.
                        let end = flag::END_HEADERS | flag::END_STREAM;
                        conn.send(&Frame::new(kind::HEADERS, end, f.stream, vec![0x88])).await;
                    }
                    _ => {}
                }
            }
        }
    })
    .await;
    let proxy =
        ProxyHarness::start(&docs(&[service("raw2").protocol("http2").port(8080).endpoint(up.addr).yaml()])).await;
    let c = proxy.client();
    for i in 0..3 {
        let mut req = client::get(&format!("http://raw2:8080/r/{i}"));
        if i == 2 {
            // A caller's own id is as unique as a generated one.
            req.headers_mut().insert("x-request-id", http::HeaderValue::from_static("caller-chosen-id-1"));
        }
        client::send(c, req).await.assert_status(200);
    }
    let blocks = blocks.lock().unwrap().clone();
    assert_eq!(blocks.len(), 3, "one HEADERS frame per request");
    assert_eq!(up.connections(), 1, "the three requests shared one upstream connection");
    for (i, block) in blocks.iter().enumerate() {
        let r = representations(block);
        assert_eq!(r.never_indexed, 1, "request {i}: the request id, never indexed: {r:?}");
        if i > 0 {
            assert_eq!(r.incremental, 0, "request {i} added to the upstream's dynamic table: {r:?}");
        }
    }
}
