//! The TCP leg's checks against real echo servers on loopback: the bench upstream's echo
//! passes; each way an echo can go wrong is a failure that says what went wrong.
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::soak::load::Session as _;

/// What a broken echo server does with a connection.
#[derive(Clone, Copy)]
enum Fault {
    /// Flips one byte of what it read.
    Corrupt,
    /// Echoes the first half, then closes.
    Short,
    /// Echoes, then adds a byte after the caller's EOF.
    Extra,
    /// Echoes the first read, then resets the connection (SO_LINGER 0).
    Reset,
}

async fn broken(fault: Fault) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(serve(s, fault));
        }
    });
    addr
}

async fn serve(mut s: TcpStream, fault: Fault) {
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).await.unwrap();
    match fault {
        Fault::Corrupt => {
            buf[n / 2] ^= 1;
            s.write_all(&buf[..n]).await.unwrap();
            let _ = s.read(&mut buf).await;
        }
        Fault::Short => {
            s.write_all(&buf[..n / 2]).await.unwrap();
        }
        Fault::Extra => {
            s.write_all(&buf[..n]).await.unwrap();
            while s.read(&mut buf).await.unwrap() > 0 {}
            s.write_all(b"!").await.unwrap();
        }
        Fault::Reset => {
            s.write_all(&buf[..n]).await.unwrap();
            s.set_zero_linger().unwrap();
        }
    }
}

fn echo_server() -> SocketAddr {
    crate::upstream::start().unwrap().echo
}

#[tokio::test]
async fn an_exchange_with_a_true_echo_passes() {
    let addr = echo_server();
    for i in 0..3 {
        exchange_with(addr, i).await.unwrap();
    }
}

#[tokio::test]
async fn a_corrupted_short_or_overlong_echo_fails_the_exchange() {
    for (fault, expected) in [
        (Fault::Corrupt, "corrupted echo: byte 512 of 1024 differs"),
        (Fault::Short, "the connection closed after 512 of 1024 echoed bytes"),
        (Fault::Extra, "1 bytes nobody sent came after the echo"),
    ] {
        let e = exchange_with(broken(fault).await, 7).await.unwrap_err();
        assert!(format!("{e:#}").contains(expected), "{e:#}");
    }
}

#[tokio::test]
async fn a_long_lived_connection_passes_on_a_true_echo_and_fails_on_a_reset() {
    let mut ok = Long::open_to(echo_server(), 1).await.unwrap();
    for _ in 0..3 {
        ok.exchange().await.unwrap();
    }
    ok.finish().await.unwrap();

    let mut conn = Long::open_to(broken(Fault::Reset).await, 2).await.unwrap();
    conn.exchange().await.unwrap();
    let e = loop {
        // The reset may land on the write or on the read of the next message.
        if let Err(e) = conn.exchange().await {
            break e;
        }
    };
    let text = format!("{e:#}");
    assert!(text.contains("message 2") && (text.contains("reset") || text.contains("Broken pipe")), "{text}");
}
