//! Micro-benchmarks of the HPACK codec (`outrider_proxy::http::h2::hpack`): a browser-like
//! request block decoded on a new connection (every string a literal, Huffman-coded, indexed)
//! and again on a warm one (every field from the dynamic table), and a response encoded on a
//! new and on a warm connection.
//!
//! Run: `cargo bench -p outrider-benches --bench hpack`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use outrider_proxy::http::h2::hpack::{Decoded, Decoder, Encoder, Pseudo};

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "user-agent",
        HeaderValue::from_static("Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0"),
    );
    h.insert("accept", HeaderValue::from_static("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"));
    h.insert("accept-language", HeaderValue::from_static("en-US,en;q=0.5"));
    h.insert("accept-encoding", HeaderValue::from_static("gzip, deflate, br, zstd"));
    h.insert("cookie", HeaderValue::from_static("session=4f2a9c1e8b7d6a5f3e2d1c0b; theme=dark"));
    h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
    h
}

fn request_pseudo() -> Pseudo<'static> {
    Pseudo::Request {
        method: &Method::GET,
        scheme: "https",
        authority: Some("shop.example.com"),
        path: "/catalog/items?page=2",
        protocol: None,
    }
}

fn response_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("content-length", HeaderValue::from_static("1532"));
    h.insert("date", HeaderValue::from_static("Sun, 06 Dec 2026 04:41:00 GMT"));
    h.insert("server", HeaderValue::from_static("outrider"));
    let mut id = HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736");
    id.set_sensitive(true);
    h.insert("x-request-id", id);
    h
}

fn encode(e: &mut Encoder, pseudo: Pseudo<'_>, headers: &HeaderMap) -> Bytes {
    let mut dst = BytesMut::new();
    e.encode(pseudo, headers, &mut dst);
    dst.freeze()
}

fn decode(c: &mut Criterion) {
    let headers = request_headers();
    let mut e = Encoder::new();
    let first = encode(&mut e, request_pseudo(), &headers);
    let again = encode(&mut e, request_pseudo(), &headers);
    c.bench_function("hpack decode request, new connection", |b| {
        b.iter(|| {
            let mut d = Decoder::default();
            let mut n = 0;
            let out = d.decode(black_box(&first), 16 << 10, |f| n += f.value.len()).unwrap();
            assert!(matches!(out, Decoded::Complete { .. }));
            black_box(n)
        })
    });
    let mut d = Decoder::default();
    let _ = d.decode(&first, 16 << 10, |_| {}).unwrap();
    c.bench_function("hpack decode request, warm table", |b| {
        b.iter(|| {
            let mut n = 0;
            let out = d.decode(black_box(&again), 16 << 10, |f| n += f.value.len()).unwrap();
            assert!(matches!(out, Decoded::Complete { .. }));
            black_box(n)
        })
    });
}

fn encode_response(c: &mut Criterion) {
    let headers = response_headers();
    let pseudo = Pseudo::Response { status: StatusCode::OK };
    c.bench_function("hpack encode response, new connection", |b| {
        b.iter(|| {
            let mut e = Encoder::new();
            black_box(encode(&mut e, pseudo, black_box(&headers)))
        })
    });
    let mut e = Encoder::new();
    encode(&mut e, pseudo, &headers);
    let mut dst = BytesMut::with_capacity(1024);
    c.bench_function("hpack encode response, warm table", |b| {
        b.iter(|| {
            dst.clear();
            e.encode(pseudo, black_box(&headers), &mut dst);
            black_box(dst.len())
        })
    });
}

criterion_group!(benches, decode, encode_response);
criterion_main!(benches);
