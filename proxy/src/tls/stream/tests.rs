//! The stream against itself, against tokio-rustls (rustls' buffered API) and against OpenSSL.
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::*;
use crate::tls::tests::TestCa;
use crate::tls::{ALPN_OUTRIDER_HTTP1, Identity};

const SERVER: &str = "spiffe://outrider.local/ns/default/sa/server";
const CLIENT: &str = "spiffe://outrider.local/ns/default/sa/client";

struct Configs {
    ca: TestCa,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

fn configs() -> Configs {
    let ca = TestCa::new();
    let server = crate::tls::server_config(ca.store(SERVER), crate::tls::Mode::Strict).unwrap();
    let client =
        crate::tls::client_config_alpn(ca.store(CLIENT), Identity::parse(SERVER).unwrap(), ALPN_OUTRIDER_HTTP1)
            .unwrap();
    Configs { ca, server, client }
}

/// A loopback TCP pair; `small`: 4 KiB socket buffers, so that large writes fill them.
async fn tcp_pair(small: bool) -> (TcpStream, TcpStream) {
    let listener = TcpSocket::new_v4().unwrap();
    if small {
        listener.set_recv_buffer_size(4096).unwrap();
    }
    listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.listen(1).unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    if small {
        socket.set_send_buffer_size(4096).unwrap();
    }
    let (client, server) = tokio::join!(socket.connect(addr), listener.accept());
    (client.unwrap(), server.unwrap().0)
}

fn name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
}

/// Ours on both sides.
async fn ours(small: bool) -> (ClientStream<TcpStream>, ServerStream<TcpStream>) {
    let c = configs();
    let (tcp_c, tcp_s) = tcp_pair(small).await;
    let (client, server) =
        tokio::join!(Connector::from(c.client).connect(name(), tcp_c), Acceptor::from(c.server).accept(tcp_s));
    (client.unwrap(), server.unwrap())
}

/// One read, polled once: `None` when it is pending.
fn read_now<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Option<std::io::Result<usize>> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut rb = ReadBuf::new(buf);
    match Pin::new(r).poll_read(&mut cx, &mut rb) {
        Poll::Ready(r) => Some(r.map(|()| rb.filled().len())),
        Poll::Pending => None,
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The client sends `data` and shuts down; the server echoes every byte back and shuts down
/// once it reads the end; the client reads the echo to its end. Both ways at once.
async fn echo<C, S>(client: C, server: S, data: Vec<u8>)
where
    C: AsyncRead + AsyncWrite + Send + 'static,
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let server = tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(server);
        let n = tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
        n
    });
    let (mut r, mut w) = tokio::io::split(client);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for piece in sent.chunks(100_000) {
            w.write_all(piece).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    assert_eq!(server.await.unwrap(), data.len() as u64);
    assert!(got == data, "the echo differs: {} bytes of {}", got.len(), data.len());
}

#[tokio::test]
async fn eight_mib_both_ways_at_once_through_small_socket_buffers() {
    let (client, server) = ours(true).await;
    echo(client, server, pattern(8 * 1024 * 1024 + 13)).await;
}

#[tokio::test]
async fn it_speaks_to_rustls_buffered_streams_both_ways() {
    // Our server, tokio-rustls' client.
    let c = configs();
    let (tcp_c, tcp_s) = tcp_pair(true).await;
    let (client, server) = tokio::join!(
        tokio_rustls::TlsConnector::from(c.client.clone()).connect(name(), tcp_c),
        Acceptor::from(c.server.clone()).accept(tcp_s)
    );
    echo(client.unwrap(), server.unwrap(), pattern(3 * 1024 * 1024)).await;
    // Our client, tokio-rustls' server.
    let (tcp_c, tcp_s) = tcp_pair(true).await;
    let (client, server) = tokio::join!(
        Connector::from(c.client).connect(name(), tcp_c),
        tokio_rustls::TlsAcceptor::from(c.server).accept(tcp_s)
    );
    echo(client.unwrap(), server.unwrap(), pattern(3 * 1024 * 1024)).await;
}

#[tokio::test]
async fn the_handshake_gives_the_peers_identity_and_the_alpn_id() {
    let (client, server) = ours(false).await;
    let peer = crate::tls::peer_identity(server.get_ref().1).expect("the client's certificate");
    assert_eq!(peer.as_str(), CLIENT);
    assert_eq!(server.get_ref().1.alpn_protocol(), Some(ALPN_OUTRIDER_HTTP1));
    assert_eq!(crate::tls::peer_identity(client.get_ref().1).unwrap().as_str(), SERVER);
    assert_eq!(client.get_ref().1.alpn_protocol(), Some(ALPN_OUTRIDER_HTTP1));
}

#[tokio::test]
async fn an_idle_stream_holds_no_buffer() {
    let (mut client, mut server) = ours(false).await;
    // The server's session tickets came after the handshake: taken in by a read.
    assert!(read_now(&mut client, &mut [0u8; 16]).is_none());
    let request = pattern(100_000);
    client.write_all(&request).await.unwrap();
    client.flush().await.unwrap();
    let mut got = vec![0u8; request.len()];
    server.read_exact(&mut got).await.unwrap();
    assert!(got == request);
    server.write_all(b"done").await.unwrap();
    server.flush().await.unwrap();
    let mut done = [0u8; 4];
    client.read_exact(&mut done).await.unwrap();
    assert_eq!(&done, b"done");
    // Both wait for more: nothing is held, on either side.
    assert!(read_now(&mut server, &mut [0u8; 16]).is_none());
    assert!(read_now(&mut client, &mut [0u8; 16]).is_none());
    assert_eq!(server.buffered(), 0, "{server:?}");
    assert_eq!(client.buffered(), 0, "{client:?}");
    // And they go on.
    client.write_all(b"again").await.unwrap();
    client.flush().await.unwrap();
    let mut again = [0u8; 5];
    server.read_exact(&mut again).await.unwrap();
    assert_eq!(&again, b"again");
}

#[tokio::test]
async fn a_reader_with_a_small_buffer_gets_every_byte_in_order() {
    let (mut client, mut server) = ours(false).await;
    let data = pattern(200_000);
    // Writes of up to 48 KiB (three records each), read 7 bytes at a time: each record is
    // decrypted once and what does not fit waits for the next read.
    server.write_all(&data).await.unwrap();
    server.flush().await.unwrap();
    let mut got = Vec::new();
    let mut small = [0u8; 7];
    while got.len() < data.len() {
        let n = client.read(&mut small).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&small[..n]);
    }
    assert!(got == data);
    assert!(read_now(&mut client, &mut small).is_none());
    assert_eq!(client.buffered(), 0, "{client:?}");
}

#[tokio::test]
async fn a_vectored_write_sends_every_slice_in_order() {
    let (mut client, mut server) = ours(false).await;
    let head = b"POST / HTTP/1.1\r\ncontent-length: 70000\r\n\r\n".to_vec();
    let body = pattern(70_000);
    let mut want = head.clone();
    want.extend_from_slice(&body);
    let mut sent = 0;
    while sent < want.len() {
        // The slices left of the head and the body, as an HTTP/1.1 writer gives them.
        let (h, b) = if sent < head.len() { (&head[sent..], &body[..]) } else { (&[][..], &body[sent - head.len()..]) };
        let slices = [std::io::IoSlice::new(h), std::io::IoSlice::new(b)];
        let n = client.write_vectored(&slices).await.unwrap();
        assert!(n > 0 && n <= MAX_PLAIN);
        sent += n;
    }
    client.flush().await.unwrap();
    let mut got = vec![0u8; want.len()];
    server.read_exact(&mut got).await.unwrap();
    assert!(got == want);
}

#[tokio::test]
async fn close_notify_is_the_end_and_a_bare_close_is_a_truncation() {
    let (mut client, mut server) = ours(false).await;
    server.shutdown().await.unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(client.read(&mut buf).await.unwrap(), 0, "close_notify reads as the end");
    // The client can still send after the server's close_notify (half-closed).
    client.write_all(b"late").await.unwrap();
    client.flush().await.unwrap();
    let mut late = [0u8; 4];
    server.read_exact(&mut late).await.unwrap();
    assert_eq!(&late, b"late");

    // A peer whose socket closes without close_notify.
    let c = configs();
    let (tcp_c, tcp_s) = tcp_pair(false).await;
    let (client, server) = tokio::join!(
        Connector::from(c.client).connect(name(), tcp_c),
        tokio_rustls::TlsAcceptor::from(c.server).accept(tcp_s)
    );
    let mut client = client.unwrap();
    let (tcp, _) = server.unwrap().into_inner();
    drop(tcp);
    let e = client.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
}

#[tokio::test]
async fn a_refused_client_certificate_reaches_the_client_as_an_alert() {
    let c = configs();
    // A client with no certificate of its own.
    let mut anonymous = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::hbone::tests::AnyServer))
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![ALPN_OUTRIDER_HTTP1.to_vec()];
    let (tcp_c, tcp_s) = tcp_pair(false).await;
    let client = tokio::spawn(async move {
        // TLS 1.3: the client's side completes before the server judges its certificate; the
        // server's alert is what the client reads next.
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(anonymous)).connect(name(), tcp_c).await?;
        let mut buf = [0u8; 1];
        tls.read(&mut buf).await
    });
    let e = Acceptor::from(c.server).accept(tcp_s).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    let client_error = client.await.unwrap().unwrap_err().to_string();
    assert!(client_error.contains("CertificateRequired"), "the client saw: {client_error}");
}

#[tokio::test]
async fn bytes_that_are_not_tls_fail_the_handshake() {
    let c = configs();
    let (mut tcp_c, tcp_s) = tcp_pair(false).await;
    tcp_c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let e = Acceptor::from(c.server).accept(tcp_s).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    // And one that closes mid-handshake.
    let c = configs();
    let (tcp_c, tcp_s) = tcp_pair(false).await;
    drop(tcp_c);
    let e = Acceptor::from(c.server).accept(tcp_s).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
}

#[tokio::test]
async fn a_key_update_from_the_peer_is_answered_and_data_flows_on() {
    // rustls' buffered client asks for a key update (and for ours in return) between writes.
    let c = configs();
    let (tcp_c, tcp_s) = tcp_pair(false).await;
    let (client, server) = tokio::join!(
        tokio_rustls::TlsConnector::from(c.client).connect(name(), tcp_c),
        Acceptor::from(c.server).accept(tcp_s)
    );
    let (mut client, mut server) = (client.unwrap(), server.unwrap());
    for round in 0..3u8 {
        client.write_all(&[round; 1000]).await.unwrap();
        client.flush().await.unwrap();
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(&[round + 10; 1000]).await.unwrap();
        client.flush().await.unwrap();
        let mut got = vec![0u8; 2000];
        server.read_exact(&mut got).await.unwrap();
        assert!(got[..1000].iter().all(|b| *b == round) && got[1000..].iter().all(|b| *b == round + 10));
        server.write_all(&[round + 20; 3000]).await.unwrap();
        server.flush().await.unwrap();
        let mut back = vec![0u8; 3000];
        client.read_exact(&mut back).await.unwrap();
        assert!(back.iter().all(|b| *b == round + 20));
    }
}

/// `openssl s_client` against our server: a real, independent TLS 1.3 stack, with mutual
/// TLS (our server checks its certificate), ALPN and a key update it asks for (`K`).
#[tokio::test]
async fn openssl_s_client_talks_to_our_server_across_a_key_update() {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        // CI installs it (the Debian package); OUTRIDER_REQUIRE_ALL=1 makes its absence fail.
        assert!(std::env::var("OUTRIDER_REQUIRE_ALL").as_deref() != Ok("1"), "openssl is required");
        eprintln!("SKIP: interoperability with OpenSSL's s_client needs `openssl` on PATH");
        return;
    }
    let c = configs();
    let dir = std::env::temp_dir().join(format!("outrider-tls-stream-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir(&dir).unwrap();
    let (chain, key) = c.ca.leaf_with_uris(&[CLIENT]);
    std::fs::write(dir.join("client.der"), &chain[0]).unwrap();
    std::fs::write(dir.join("client.key"), key.secret_der()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = Acceptor::from(c.server).accept(tcp).await.unwrap();
        let peer = crate::tls::peer_identity(tls.get_ref().1).map(|p| p.as_str().to_owned());
        // Answers each line reversed until the client closes.
        let mut lines = tokio::io::BufReader::new(tls);
        let mut line = String::new();
        while lines.read_line(&mut line).await.unwrap_or(0) > 0 {
            let reply: String = line.trim_end().chars().rev().collect();
            lines.get_mut().write_all(format!("{reply}\n").as_bytes()).await.unwrap();
            lines.get_mut().flush().await.unwrap();
            line.clear();
        }
        peer
    });
    let mut child = tokio::process::Command::new("openssl")
        .current_dir(&dir)
        .args(["s_client", "-connect", &addr.to_string(), "-tls1_3", "-alpn", "outrider-http1/1"])
        .args(["-cert", "client.der", "-certform", "DER", "-key", "client.key", "-keyform", "DER"])
        // (It does not judge our server's SPIFFE certificate: this is about the stream.)
        .args(["-no_ign_eof"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // s_client says on stderr when it sent a key update.
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (updated, mut updates) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            eprintln!("s_client (stderr): {line}");
            if line == "KEYUPDATE" {
                let _ = updated.send(());
            }
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Each line sent comes back reversed; a line that does not fails within the deadline.
    let deadline = std::time::Duration::from_secs(
        std::env::var("OUTRIDER_TEST_DEADLINE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60),
    );
    let mut expect = async |sent: &str| {
        let want: String = sent.chars().rev().collect();
        let found = async {
            while let Some(line) = stdout.next_line().await.unwrap() {
                if line == want {
                    return true;
                }
            }
            false
        };
        match tokio::time::timeout(deadline, found).await {
            Ok(true) => {}
            Ok(false) => panic!("s_client ended before printing {want:?}"),
            Err(_) => panic!("s_client did not print {want:?} within {deadline:?}"),
        }
    };
    stdin.write_all(b"hello outrider\n").await.unwrap();
    expect("hello outrider").await;
    // `K`: a key update, asking for ours in return. (A command is a read of stdin of its own:
    // the next line waits until it was sent.)
    stdin.write_all(b"K\n").await.unwrap();
    tokio::time::timeout(deadline, updates.recv()).await.expect("s_client's key update").unwrap();
    stdin.write_all(b"after the update\n").await.unwrap();
    expect("after the update").await;
    stdin.write_all(b"K\n").await.unwrap();
    tokio::time::timeout(deadline, updates.recv()).await.expect("s_client's key update").unwrap();
    stdin.write_all(b"and once more\n").await.unwrap();
    expect("and once more").await;
    drop(stdin);
    let peer = tokio::time::timeout(deadline, server).await.expect("the server's side ends").unwrap();
    assert_eq!(peer.as_deref(), Some(CLIENT));
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_peer_not_yet_authenticated_gets_no_pooled_buffer() {
    // Part of a record (a ClientHello that never ends): the server holds what came and room
    // for 4 KiB more, not a 64 KiB buffer, for as long as the handshake's timeout allows.
    let c = configs();
    let (mut tcp_c, tcp_s) = tcp_pair(false).await;
    tcp_c.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00]).await.unwrap();
    let mut handshake = Acceptor::from(c.server).accept(tcp_s);
    let held = |h: &Handshake<TcpStream, UnbufferedServerConnection>| match &h.0 {
        Some(Ok(s)) => s.buffered(),
        _ => panic!("the handshake ended"),
    };
    // Polled until it has read the bytes and waits for more.
    let mut cx = Context::from_waker(Waker::noop());
    while held(&handshake) == 0 {
        assert!(Pin::new(&mut handshake).poll(&mut cx).is_pending());
        tokio::task::yield_now().await;
    }
    assert!(Pin::new(&mut handshake).poll(&mut cx).is_pending());
    assert!(held(&handshake) <= 7 + READ_MIN, "{} bytes held", held(&handshake));
}

#[tokio::test]
async fn records_split_at_every_boundary_arrive_whole() {
    // A pipe that passes 7 bytes at a time: every record (and the handshake) arrives in pieces
    // cut at every offset, so partial records are kept, joined and moved to the buffer's front.
    // Its reader and writer are two tasks (`echo` splits both ends), which hung while a read
    // also wrote what a write had left: it took the writer's wake-up.
    let c = configs();
    let (a, b) = tokio::io::duplex(7);
    let (client, server) =
        tokio::join!(Connector::from(c.client).connect(name(), a), Acceptor::from(c.server).accept(b));
    echo(client.unwrap(), server.unwrap(), pattern(200_003)).await;
}
