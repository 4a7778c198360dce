//! HBONE's wire details against real TLS and a real HTTP/2 client (the `h2` crate), on
//! loopback.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use rcgen::ExtendedKeyUsagePurpose;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::client::{Pool, Target};
use super::server::{self, Connect};
use crate::tls::tests::TestCa;
use crate::tls::{CertStore, Identity};
use crate::transport::socket::SocketOptions;

const SERVER: &str = "spiffe://cluster.local/ns/shop/sa/reviews";
const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

/// What the server saw of one accepted `CONNECT`.
#[derive(Debug)]
struct Seen {
    target: SocketAddr,
    peer: Identity,
    forwarded_for: Option<SocketAddr>,
    traceparent: Option<String>,
    baggage: Option<String>,
}

/// An HBONE server on 127.0.0.1 presenting `store`: each accepted stream is read to its end
/// (the client's half-close), then answered `got:<bytes>` and closed.
async fn echo_server(store: Arc<CertStore>) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>, crate::drain::Drain) {
    echo_server_from(TcpListener::bind("127.0.0.1:0").await.unwrap(), store)
}

fn echo_server_from(
    l: TcpListener,
    store: Arc<CertStore>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>, crate::drain::Drain) {
    let addr = l.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::hbone_server_config(store).unwrap());
    let drain = crate::drain::Drain::new();
    let signal = drain.signal();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = l.accept().await.unwrap();
            let local = tcp.local_addr().unwrap();
            let acceptor = acceptor.clone();
            let signal = signal.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let peer = crate::tls::peer_identity(tls.get_ref().1).expect("a client certificate");
                server::serve(tls, local, remote, peer, signal, move |c: Connect| {
                    let tx = tx.clone();
                    async move {
                        let _ = tx.send(Seen {
                            target: c.target,
                            peer: c.peer.clone(),
                            forwarded_for: c.forwarded_for,
                            traceparent: c.traceparent.as_ref().map(|v| v.to_str().unwrap().to_owned()),
                            baggage: c.baggage.as_ref().map(|v| v.to_str().unwrap().to_owned()),
                        });
                        let mut s = c.accept().unwrap();
                        let mut got = Vec::new();
                        s.read_to_end(&mut got).await.unwrap();
                        // A test whose client leaves early (the resumption test) ends the stream
                        // under this answer: that is not this helper's failure.
                        if s.write_all(b"got:").await.is_err() || s.write_all(&got).await.is_err() {
                            return;
                        }
                        let _ = s.shutdown().await;
                    }
                })
                .await;
            });
        }
    });
    (addr, rx, drain)
}

fn target(via: SocketAddr, port: u16, identity: &str) -> Target {
    Target {
        via,
        target: SocketAddr::new(via.ip(), port),
        identity: Identity::parse(identity).unwrap(),
        source: Some("10.1.0.7:40000".parse().unwrap()),
        traceparent: Some(http::HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")),
        baggage: None,
    }
}

#[tokio::test]
async fn a_tunnel_carries_bytes_both_ways_across_a_half_close_with_the_source_identity() {
    let ca = TestCa::new();
    let (addr, mut seen, _drain) = echo_server(ca.store(SERVER)).await;
    let pool = Pool::new(ca.store(CLIENT));
    let t = target(addr, 8080, SERVER);
    for i in 0..3 {
        let mut s = pool.connect(&t, &SocketOptions::default(), Duration::from_secs(5)).await.unwrap();
        let msg = format!("hello {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        // Half-close: the server reads to its end, then still answers on the other direction.
        s.shutdown().await.unwrap();
        let mut back = String::new();
        s.read_to_string(&mut back).await.unwrap();
        assert_eq!(back, format!("got:{msg}"));
        let saw = seen.recv().await.unwrap();
        assert_eq!(saw.target, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(saw.peer.as_str(), CLIENT, "the receiver sees the source workload's identity");
        assert_eq!(saw.forwarded_for, Some("10.1.0.7:40000".parse().unwrap()));
        assert_eq!(saw.traceparent.as_deref(), Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
    }
    assert_eq!(pool.connections(), 1, "the three streams shared one pooled connection");
}

#[tokio::test]
async fn the_server_must_present_the_destination_workloads_identity() {
    let ca = TestCa::new();
    let (addr, _seen, _drain) = echo_server(ca.store(SERVER)).await;
    let pool = Pool::new(ca.store(CLIENT));
    let err = pool
        .connect(
            &target(addr, 8080, "spiffe://cluster.local/ns/shop/sa/ratings"),
            &SocketOptions::default(),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("peer identity is spiffe://cluster.local/ns/shop/sa/reviews"), "{msg}");
    // A certificate from another CA for the right identity is refused too.
    let foreign = Pool::new(TestCa::new().store(CLIENT));
    assert!(
        foreign.connect(&target(addr, 8080, SERVER), &SocketOptions::default(), Duration::from_secs(5)).await.is_err()
    );
}

/// TLS to `addr` with `config` (no SNI), then an HTTP/2 client connection.
async fn h2_client(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> Result<h2::client::SendRequest<Bytes>, String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (send, conn) = h2::client::handshake(tls).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}

async fn status_of(send: &mut h2::client::SendRequest<Bytes>, method: Method, uri: &str) -> StatusCode {
    let req = Request::builder().method(method).uri(uri).body(()).unwrap();
    let mut ready = send.clone().ready().await.unwrap();
    let (resp, _body) = ready.send_request(req, false).unwrap();
    resp.await.unwrap().status()
}

#[tokio::test]
async fn connect_requests_are_checked_authority_ip_port_and_method() {
    let ca = TestCa::new();
    let (addr, mut seen, _drain) = echo_server(ca.store(SERVER)).await;
    let config = crate::tls::hbone_client_config(ca.store(CLIENT), Identity::parse(SERVER).unwrap()).unwrap();
    let mut send = h2_client(config, addr).await.unwrap();
    // The authority's IP must be the one the client dialled (127.0.0.1).
    assert_eq!(status_of(&mut send, Method::CONNECT, "127.0.0.2:8080").await, StatusCode::BAD_REQUEST);
    assert_eq!(status_of(&mut send, Method::CONNECT, "reviews:8080").await, StatusCode::BAD_REQUEST);
    // The proxy's own ports are not targets.
    for port in [15001, 15006, 15008] {
        assert_eq!(
            status_of(&mut send, Method::CONNECT, &format!("127.0.0.1:{port}")).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "port {port}"
        );
    }
    // Only CONNECT is tunnelled.
    assert_eq!(status_of(&mut send, Method::GET, "http://127.0.0.1:8080/").await, StatusCode::BAD_REQUEST);
    assert!(seen.try_recv().is_err(), "none of these reached the handler");
    // And a good one on the same connection does.
    assert_eq!(status_of(&mut send, Method::CONNECT, "127.0.0.1:8080").await, StatusCode::OK);
    assert_eq!(seen.recv().await.unwrap().forwarded_for, None, "forwarded is optional");
}

#[tokio::test]
async fn the_handshake_needs_h2_aes_gcm_and_a_client_certificate_for_client_auth() {
    let ca = TestCa::new();
    let (addr, _seen, _drain) = echo_server(ca.store(SERVER)).await;
    let server = Identity::parse(SERVER).unwrap();
    let good = crate::tls::hbone_client_config(ca.store(CLIENT), server.clone()).unwrap();
    assert!(h2_client(good.clone(), addr).await.is_ok());

    // A client offering only http/1.1 is refused.
    let mut http1 = (*good).clone();
    http1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let err = h2_client(Arc::new(http1), addr).await.unwrap_err();
    assert!(err.contains("NoApplicationProtocol") || err.contains("no_application_protocol"), "{err}");

    // ChaCha20 only: no suite in common.
    let chacha = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256],
        ..rustls::crypto::ring::default_provider()
    });
    let mut weak = rustls::ClientConfig::builder_with_provider(chacha)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    weak.alpn_protocols = vec![b"h2".to_vec()];
    assert!(h2_client(Arc::new(weak), addr).await.is_err(), "a ChaCha20-only client is refused");

    // No client certificate, or one without the clientAuth usage: refused.
    let mut anonymous = rustls::ClientConfig::builder_with_provider(crate::tls::hbone_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![b"h2".to_vec()];
    assert!(first_request_fails(Arc::new(anonymous), addr).await, "no client certificate");
    let server_only = ca.store_with_usages(CLIENT, vec![ExtendedKeyUsagePurpose::ServerAuth]);
    let no_client_auth = crate::tls::hbone_client_config(server_only, server).unwrap();
    assert!(first_request_fails(no_client_auth, addr).await, "a certificate without clientAuth");
}

/// A TLS 1.2 ClientHello (legacy version 1.2, no `supported_versions`), otherwise complete
/// enough for a TLS 1.2 server to answer: ECDHE AES-GCM suites, x25519, signature schemes,
/// ALPN `h2`. (rustls is built without TLS 1.2 here, so the bytes are written by hand.)
fn tls12_client_hello() -> Vec<u8> {
    fn ext(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut e = kind.to_be_bytes().to_vec();
        e.extend((body.len() as u16).to_be_bytes());
        e.extend(body);
        e
    }
    let mut exts = ext(10, &[0, 2, 0, 0x1d]); // supported_groups: x25519
    exts.extend(ext(11, &[1, 0])); // ec_point_formats: uncompressed
    exts.extend(ext(13, &[0, 4, 4, 3, 8, 4])); // signature_algorithms
    exts.extend(ext(16, &[0, 3, 2, b'h', b'2'])); // ALPN: h2
    let mut hello = vec![3, 3];
    hello.extend([7u8; 32]); // random
    hello.push(0); // no session id
    hello.extend([0, 4, 0xc0, 0x2b, 0xc0, 0x2f]); // ECDHE-{ECDSA,RSA}-AES128-GCM-SHA256
    hello.extend([1, 0]); // no compression
    hello.extend((exts.len() as u16).to_be_bytes());
    hello.extend(exts);
    let len = hello.len() as u32;
    let mut handshake = vec![1];
    handshake.extend(&len.to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 3, 1];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

#[tokio::test]
async fn a_tls_1_2_only_client_is_refused() {
    let ca = TestCa::new();
    let (addr, _seen, _drain) = echo_server(ca.store(SERVER)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&tls12_client_hello()).await.unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    // An alert record (not a ServerHello): fatal, protocol_version.
    assert_eq!(answer.first(), Some(&0x15), "{answer:?}");
    assert_eq!(answer.get(5..7), Some(&[2u8, 70][..]), "{answer:?}");
}

#[tokio::test]
async fn a_second_handshake_is_a_full_one_no_session_resumption() {
    let ca = TestCa::new();
    let store = ca.store(SERVER);
    let config = crate::tls::hbone_server_config(store.clone()).unwrap();
    assert!(!config.session_storage.can_cache(), "no server-side session cache");
    assert!(!config.ticketer.enabled(), "no stateless tickets");
    assert_eq!(config.send_tls13_tickets, 0, "no TLS 1.3 tickets sent");
    let (addr, _seen, _drain) = echo_server(store).await;
    // A client that would resume if it could: the server must not let it.
    let mut resuming =
        (*crate::tls::hbone_client_config(ca.store(CLIENT), Identity::parse(SERVER).unwrap()).unwrap()).clone();
    resuming.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let resuming = Arc::new(resuming);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = tokio_rustls::TlsConnector::from(resuming.clone()).connect(name, tcp).await.unwrap();
        kinds.push(tls.get_ref().1.handshake_kind());
        // A whole exchange, so that any ticket the server sent has been read.
        let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        assert_eq!(status_of(&mut send, Method::CONNECT, "127.0.0.1:8080").await, StatusCode::OK);
    }
    assert_eq!(kinds, [Some(rustls::HandshakeKind::Full); 2]);
}

#[tokio::test]
async fn a_client_certificate_with_two_spiffe_uris_is_refused() {
    let ca = TestCa::new();
    let (addr, _seen, _drain) = echo_server(ca.store(SERVER)).await;
    let client = |uris: &[&str]| {
        let (chain, key) = ca.leaf_with_uris(uris);
        let mut c = rustls::ClientConfig::builder_with_provider(crate::tls::hbone_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer))
            .with_client_auth_cert(chain, key)
            .unwrap();
        c.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(c)
    };
    assert!(!first_request_fails(client(&[CLIENT]), addr).await, "one SPIFFE URI SAN is accepted");
    let two = client(&[CLIENT, "spiffe://cluster.local/ns/shop/sa/admin"]);
    assert!(first_request_fails(two, addr).await, "two SPIFFE URI SANs are refused");
}

/// Both sides' keepalive, seen from a raw HTTP/2 peer in paused time: the server PINGs every
/// 10 s while the peer answers, and drops the connection (GOAWAY, then closed) 20 s after a
/// PING the peer left unanswered.
#[tokio::test(start_paused = true)]
async fn pings_every_10_s_and_drops_a_peer_silent_for_20_s() {
    let (mut peer, io) = tokio::io::duplex(1 << 20);
    let addr: SocketAddr = "127.0.0.1:15008".parse().unwrap();
    let drain = crate::drain::Drain::new();
    let served = tokio::spawn(server::serve(
        io,
        addr,
        addr,
        Identity::parse(CLIENT).unwrap(),
        drain.signal(),
        |_: Connect| async {},
    ));
    // The client preface and an empty SETTINGS frame.
    peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    let start = tokio::time::Instant::now();
    let (mut pings, mut goaway) = (Vec::new(), None);
    loop {
        let mut head = [0u8; 9];
        if peer.read_exact(&mut head).await.is_err() {
            break;
        }
        let mut payload = vec![0u8; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
        peer.read_exact(&mut payload).await.unwrap();
        match (head[3], head[4]) {
            // A PING: the first three answered (an ACK with the same payload), then silence.
            (6, 0) => {
                pings.push(start.elapsed().as_secs());
                if pings.len() <= 3 {
                    let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                    ack.extend_from_slice(&payload);
                    peer.write_all(&ack).await.unwrap();
                }
            }
            (7, _) => goaway = Some(start.elapsed().as_secs()),
            _ => {}
        }
    }
    let closed = start.elapsed().as_secs();
    served.await.unwrap();
    assert_eq!(pings, [10, 20, 30, 40], "a PING every 10 s");
    assert_eq!(goaway, Some(60), "dropped 20 s after the unanswered PING");
    assert_eq!(closed, 60);
}

/// In TLS 1.3 the server checks the client certificate after the client finished: the refusal
/// shows on the first exchange.
async fn first_request_fails(config: Arc<rustls::ClientConfig>, addr: SocketAddr) -> bool {
    let Ok(mut send) = h2_client(config, addr).await else { return true };
    let req = Request::builder().method(Method::CONNECT).uri(addr.to_string()).body(()).unwrap();
    let Ok(mut ready) = send.clone().ready().await else { return true };
    let Ok((resp, _)) = ready.send_request(req, false) else { return true };
    let _ = &mut send;
    resp.await.is_err()
}

/// Accepts any server certificate (these tests are about the client side being refused).
#[derive(Debug)]
pub(crate) struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &crate::tls::provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        crate::tls::provider().signature_verification_algorithms.supported_schemes()
    }
}

#[test]
fn forwarded_carries_the_source_address() {
    let v4: SocketAddr = "10.1.0.7:40000".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::1]:4711".parse().unwrap();
    assert_eq!(super::forwarded_for(v4), "for=\"10.1.0.7:40000\"");
    assert_eq!(super::forwarded_for(v6), "for=\"[2001:db8::1]:4711\"");
    assert_eq!(super::parse_forwarded_for(&super::forwarded_for(v4)), Some(v4));
    assert_eq!(super::parse_forwarded_for(&super::forwarded_for(v6)), Some(v6));
    assert_eq!(super::parse_forwarded_for("proto=https; For=10.0.0.1"), Some("10.0.0.1:0".parse().unwrap()));
    assert_eq!(super::parse_forwarded_for("for=unknown"), None);
    assert_eq!(super::parse_forwarded_for("by=x"), None);
}

/// An HBONE echo server on port 15008 (the port the proxy's tunnels dial) of a loopback
/// address of its own, so tests may run side by side.
async fn echo_server_on_15008(
    store: Arc<CertStore>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>, crate::drain::Drain) {
    loop {
        let ip = std::net::Ipv4Addr::new(127, fastrand::u8(1..), fastrand::u8(..), fastrand::u8(1..255));
        if let Ok(l) = TcpListener::bind((ip, super::PORT)).await {
            return echo_server_from(l, store);
        }
    }
}

/// The proxy's own tunnels carry the `traceparent` and `baggage` of the HTTP request that opens
/// them (as its span's parent the request names the proxy's span), and a TCP connection's
/// tunnel carries neither.
#[tokio::test]
async fn the_proxys_tunnels_carry_the_opening_requests_trace_context() {
    use crate::http::client::{ConnectConfig, EndpointPool, UpstreamProtocol, connect_tcp_or_mesh};
    let ca = TestCa::new();
    let (addr, mut seen, _drain) = echo_server_on_15008(ca.store(SERVER)).await;
    let mesh = Arc::new(crate::mesh::Mesh::new(ca.store(CLIENT)).unwrap());
    let target = SocketAddr::new(addr.ip(), 8080);
    let cfg = ConnectConfig {
        timeout: Duration::from_secs(5),
        socket: SocketOptions::default(),
        limits: None,
        idle_timeout: None,
        mesh: Some(crate::mesh::MeshTarget {
            mesh,
            identity: Identity::parse(SERVER).unwrap(),
            hbone: Some(crate::mesh::Tunnel { source: Some("10.1.0.7:40000".parse().unwrap()) }),
        }),
    };
    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    // An HTTP request opens the endpoint's connection: its trace context rides on the CONNECT.
    let pool = Arc::new(EndpointPool::new(target));
    let req = Request::builder()
        .uri(format!("http://{target}/"))
        .header("traceparent", TP)
        .header("baggage", "k8s.namespace.name=shop")
        .body(crate::http::Body::Empty)
        .unwrap();
    let cfg2 = cfg.clone();
    let send = tokio::spawn(async move { pool.send(req, UpstreamProtocol::Http2, &cfg2).await.map(|_| ()) });
    let saw = seen.recv().await.unwrap();
    assert_eq!(saw.traceparent.as_deref(), Some(TP));
    assert_eq!(saw.baggage.as_deref(), Some("k8s.namespace.name=shop"));
    assert_eq!(saw.forwarded_for, Some("10.1.0.7:40000".parse().unwrap()));
    send.abort();
    // A TCP connection: no span, so no trace context on its CONNECT.
    let _tcp = connect_tcp_or_mesh(target, &cfg, crate::mesh::Carry::Tcp, None).await.unwrap();
    let saw = seen.recv().await.unwrap();
    assert_eq!((saw.traceparent, saw.baggage), (None, None));
}
