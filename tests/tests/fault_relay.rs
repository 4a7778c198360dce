//! The network fault injector (`outrider_tests::fault`) does what the chaos tests rely on:
//! relays faithfully when healthy, and each fault has the effect it names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::ErrorKind;
use std::time::Duration;

use outrider_tests::fault::{self, OnConnect};
use outrider_tests::upstream::{self, tcp::DEFAULT_TRAILER};
use outrider_tests::{eventually, wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A payload whose corruption or reordering would show.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Write `data`, half-close, read until EOF; the echo server answers `data` + its trailer.
async fn echo_round_trip(addr: std::net::SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let mut got = Vec::new();
    let (wrote, read) = tokio::join!(write, r.read_to_end(&mut got));
    wrote?;
    read?;
    Ok(got)
}

fn expected_echo(data: &[u8]) -> Vec<u8> {
    [data, DEFAULT_TRAILER].concat()
}

/// Read until EOF or error; what arrived and how it ended.
async fn read_until_end(s: &mut TcpStream) -> (Vec<u8>, Option<ErrorKind>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Some(e.kind())),
        }
    }
}

#[tokio::test]
async fn healthy_relay_passes_bytes_both_ways_and_half_close() {
    let echo = upstream::tcp_echo().start().await;
    let relay = fault::relay(echo.addr).await;
    let data = payload(1 << 20);
    let got = wait::within("the echo through the relay", echo_round_trip(relay.addr, &data)).await.unwrap();
    assert_eq!(got, expected_echo(&data), "the relay corrupted, reordered or cut the stream");
    assert_eq!(relay.bytes_up(), data.len() as u64);
    eventually!("the relay to count the reply", relay.bytes_down() == got.len() as u64);
    eventually!("the finished connection to be closed", relay.open() == 0);
    assert_eq!((relay.accepted(), relay.forwarded(), relay.resets()), (1, 1, 0));
}

#[tokio::test]
async fn delay_holds_every_chunk_and_keeps_order() {
    let echo = upstream::tcp_echo().start().await;
    let relay = fault::relay(echo.addr).await;
    let delay = Duration::from_millis(150);
    relay.set(|f| f.delay = delay);
    let data = payload(64 * 1024);
    let start = Instant::now();
    let got = wait::within("the delayed echo", echo_round_trip(relay.addr, &data)).await.unwrap();
    // A lower bound the relay guarantees (each way holds the bytes `delay`), not a timing race.
    assert!(start.elapsed() >= delay * 2, "a round trip through a {delay:?} relay took {:?}", start.elapsed());
    assert_eq!(got, expected_echo(&data));
}

#[tokio::test]
async fn bandwidth_limit_paces_the_stream() {
    let echo = upstream::tcp_echo().start().await;
    let relay = fault::relay(echo.addr).await;
    relay.set(|f| f.bandwidth = Some(64 * 1024));
    let data = payload(32 * 1024);
    let start = Instant::now();
    let got = wait::within("the throttled echo", echo_round_trip(relay.addr, &data)).await.unwrap();
    // 32 KiB at 64 KiB/s is at least 0.5 s the first way (read pacing is a lower bound).
    assert!(start.elapsed() >= Duration::from_millis(450), "32 KiB at 64 KiB/s took {:?}", start.elapsed());
    assert_eq!(got, expected_echo(&data));
}

#[tokio::test]
async fn reset_all_resets_open_connections_on_both_sides() {
    let echo = upstream::tcp_echo().start().await;
    let relay = fault::relay(echo.addr).await;
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    wait::within("the echo", s.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"ping");
    eventually!("the upstream to hold the connection", echo.open_connections() == 1);
    relay.reset_all();
    let (rest, ended) = wait::within("the reset to reach the client", read_until_end(&mut s)).await;
    assert_eq!((rest.as_slice(), ended), (&b""[..], Some(ErrorKind::ConnectionReset)));
    eventually!("the upstream side to be closed too", echo.open_connections() == 0);
    assert_eq!(relay.resets(), 1);
    // New connections are relayed as before.
    let got = wait::within("an echo after the reset", echo_round_trip(relay.addr, b"again")).await.unwrap();
    assert_eq!(got, expected_echo(b"again"));
}

#[tokio::test]
async fn reset_after_down_cuts_the_reply_mid_way_with_an_rst() {
    let echo = upstream::tcp_echo().start().await;
    let relay = fault::relay(echo.addr).await;
    relay.set(|f| f.reset_after_down = Some(1000));
    let data = payload(64 * 1024);
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    let (mut r, mut w) = s.split();
    let _ = tokio::join!(w.write_all(&data), async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let ended = loop {
            match wait::within("the cut reply", r.read(&mut buf)).await {
                Ok(0) => break None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Some(e.kind()),
            }
        };
        assert_eq!(ended, Some(ErrorKind::ConnectionReset), "the reply must end in a reset, not a clean EOF");
        assert!(got.len() <= 1000, "{} bytes passed a reset after 1000", got.len());
        assert_eq!(got, data[..got.len()], "the bytes before the reset must be the reply's");
    });
    eventually!("the relay to count the reset", relay.resets() == 1);
    assert_eq!(relay.bytes_down(), 1000);
}

#[tokio::test]
async fn stalled_direction_is_not_read_until_healed_and_nothing_is_lost() {
    let echo = upstream::tcp_echo().start().await;
    let relay = fault::relay(echo.addr).await;
    relay.set(|f| f.stall_up = true);
    let data = payload(32 << 20);
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    let (mut r, mut w) = s.split();
    let written = std::sync::atomic::AtomicUsize::new(0);
    let writer = async {
        for chunk in data.chunks(64 * 1024) {
            w.write_all(chunk).await.unwrap();
            written.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
        }
        w.shutdown().await.unwrap();
    };
    let checker = async {
        // The client fills the socket buffers and then blocks: 32 MiB cannot all be buffered.
        eventually!("the client to have written something", written.load(std::sync::atomic::Ordering::SeqCst) > 0);
        assert_eq!(relay.bytes_up(), 0, "a stalled direction relayed bytes");
        assert!(written.load(std::sync::atomic::Ordering::SeqCst) < data.len(), "32 MiB fit in the buffers");
        relay.heal();
        let mut got = Vec::new();
        wait::within("the echo after healing", r.read_to_end(&mut got)).await.unwrap();
        got
    };
    let ((), got) = wait::within("the stalled exchange", async { tokio::join!(writer, checker) }).await;
    assert_eq!(got, expected_echo(&data), "bytes held during the stall were lost or reordered");
}

#[tokio::test]
async fn connect_faults_never_reach_the_target() {
    let echo = upstream::tcp_echo().start().await;
    let relay = fault::relay(echo.addr).await;

    relay.set(|f| f.on_connect = OnConnect::Reset);
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    let (_, ended) = wait::within("the reset", read_until_end(&mut s)).await;
    assert_eq!(ended, Some(ErrorKind::ConnectionReset));

    relay.set(|f| f.on_connect = OnConnect::Close);
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    assert_eq!(wait::within("the close", read_until_end(&mut s)).await, (vec![], None));

    relay.set(|f| {
        f.on_connect = OnConnect::Forward;
        f.drop_rate = 1.0;
    });
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    let (_, ended) = wait::within("the dropped connection", read_until_end(&mut s)).await;
    assert_eq!(ended, Some(ErrorKind::ConnectionReset));

    relay.set(|f| {
        f.on_connect = OnConnect::Blackhole;
        f.drop_rate = 0.0;
    });
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(b"anyone?").await.unwrap();
    eventually!("the relay to accept the black-holed connection", relay.accepted() == 4);
    let mut buf = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await.is_err(),
        "a black-holed connection answered"
    );
    relay.reset_all();
    let (_, ended) = wait::within("the black hole to be reset", read_until_end(&mut s)).await;
    assert_eq!(ended, Some(ErrorKind::ConnectionReset));

    assert_eq!(echo.connections(), 0, "a connection the relay refused reached the target");
    assert_eq!(relay.forwarded(), 0);
    assert_eq!(relay.resets(), 3);
}

#[tokio::test]
async fn target_down_resets_the_client() {
    let relay = fault::relay(upstream::closed_port()).await;
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    let (_, ended) = wait::within("the reset", read_until_end(&mut s)).await;
    assert_eq!(ended, Some(ErrorKind::ConnectionReset));
}
