//! `loadtest --open-loop-to ADDR` (what benches/ambient/compare.sh runs inside a workload's
//! namespace): one open loop against a real HTTP/1.1 server on loopback, its result as one JSON
//! line. Checks the counts, never a speed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;

/// A keep-alive HTTP/1.1 server on 127.0.0.1 answering every GET with `status` (a thread per
/// connection; it lives as long as the test process).
fn server(status: u16) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || serve(conn, status));
        }
    });
    addr
}

fn serve(conn: TcpStream, status: u16) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    loop {
        // A request: its head up to the empty line (GETs have no body).
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line != "\r\n" {
            continue;
        }
        let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
        if w.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn open_loop(addr: SocketAddr) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--open-loop-to", &addr.to_string(), "--rates", "200", "--duration", "1"])
        .args(["--open-connections", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "loadtest failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn an_open_loop_sends_rate_times_duration_requests_and_prints_their_latency() {
    let addr = server(200);
    let v = open_loop(addr);
    assert_eq!(v["addr"], addr.to_string());
    assert_eq!(v["rate"], 200);
    assert_eq!(v["requests"], 200, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    let p50 = v["latency"]["p50_us"].as_f64().unwrap();
    let p99 = v["latency"]["p99_us"].as_f64().unwrap();
    assert!(p50 > 0.0 && p99 >= p50, "{v}");
}

#[test]
fn answers_that_are_not_2xx_count_as_errors_not_as_requests() {
    let v = open_loop(server(503));
    assert_eq!(v["requests"], 0, "{v}");
    assert_eq!(v["errors"], 200, "{v}");
}
