//! HBONE against Istio's own Go implementation (`istio.io/istio/pkg/hbone`, the package Istio's
//! integration tests use to talk to ztunnel), both ways, with real certificates from the
//! control plane's CA and real mutual TLS on loopback:
//! - Istio's dialer → Outrider's HBONE server (in-process, [`outrider_proxy::hbone::server`]),
//!   which splices each accepted `CONNECT` to the destination app, as node mode does;
//! - Outrider's HBONE client ([`outrider_proxy::hbone::client::Pool`]) → Istio's HBONE server,
//!   which dials the destination app itself.
//!
//! The Go side is `tests/interop/istio-hbone/` (see `outrider_tests::istio_hbone`); without Go
//! the tests skip (fail under `OUTRIDER_REQUIRE_ALL=1`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use outrider_proxy::hbone::client::{Pool, Target};
use outrider_proxy::hbone::server::{self, Connect};
use outrider_proxy::tls::{self, CertStore, Identity};
use outrider_proxy::transport::socket::SocketOptions;
use outrider_tests::control_plane::ControlPlane;
use outrider_tests::harness::TempDir;
use outrider_tests::istio_hbone::{self, Server};
use outrider_tests::mesh::{self, identity};
use outrider_tests::wait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The destination half-closes once it has echoed this (as the Go program sends it).
const MARKER: &[u8] = b"half-close\n";
const HELLO: &str = "hello from istio's dialer\n";
/// Bytes the bulk step sends each way: past the flow-control windows of both stacks (Outrider:
/// 4 MiB per stream, 16 MiB per connection; Go: 4 MiB client, 1 MiB server per stream), so
/// both sides stall on a window and are released by the other's WINDOW_UPDATEs.
const BULK: usize = 20 << 20;
/// Tunnels Istio's dialer opens at once before the main exchange.
const STREAMS: usize = 20;

fn go_program() -> Option<PathBuf> {
    match istio_hbone::binary() {
        Ok(bin) => Some(bin),
        Err(why) => {
            outrider_tests::skip(&why);
            None
        }
    }
}

/// What the destination app saw of its one connection.
#[derive(Debug)]
struct Delivered {
    /// Bytes received, all echoed.
    received: usize,
    /// Bytes that arrived after it had half-closed its side.
    after_half_close: usize,
    /// How its input ended: `eof` (a FIN), or the read error.
    ended: String,
}

/// A TCP echo app on `ip`: echoes each connection; once the input ends with [`MARKER`] or
/// ends (EOF), it sends `bye` and half-closes, and reads on until EOF. Reports each connection.
async fn echo_app(ip: IpAddr) -> (SocketAddr, mpsc::UnboundedReceiver<Delivered>) {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = l.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut seen, mut closed_at) = (Vec::new(), None::<usize>);
                let mut buf = vec![0u8; 64 << 10];
                let ended = loop {
                    match c.read(&mut buf).await {
                        Ok(0) => break "eof".to_owned(),
                        Ok(n) => {
                            seen.extend_from_slice(&buf[..n]);
                            if closed_at.is_none() {
                                c.write_all(&buf[..n]).await.unwrap();
                                if seen.ends_with(MARKER) {
                                    c.write_all(b"bye").await.unwrap();
                                    c.shutdown().await.unwrap();
                                    closed_at = Some(seen.len());
                                }
                            }
                        }
                        Err(e) => break format!("error: {e}"),
                    }
                };
                if closed_at.is_none() && ended == "eof" {
                    let _ = c.write_all(b"bye").await;
                    let _ = c.shutdown().await;
                }
                let received = seen.len();
                let after_half_close = closed_at.map_or(0, |at| received - at);
                let _ = tx.send(Delivered { received, after_half_close, ended });
            });
        }
    });
    (addr, rx)
}

/// What Outrider's HBONE server saw of one `CONNECT`, and how the spliced connection ended.
#[derive(Debug)]
struct Tunnelled {
    target: SocketAddr,
    peer: Identity,
    /// The HBONE connection's TCP peer: one value, one connection.
    remote: SocketAddr,
    forwarded_for: Option<SocketAddr>,
    /// `copy_bidirectional`'s result: bytes each way, or the error.
    relay: Result<(u64, u64), String>,
}

/// Outrider's HBONE server on `ip:15008` with `store`'s certificate: each checked `CONNECT` is
/// accepted and spliced to its target (the destination app), as node mode's inbound side does
/// for a TCP service.
async fn outrider_server(
    ip: IpAddr,
    store: Arc<CertStore>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Tunnelled>, outrider_proxy::drain::Drain) {
    let l = TcpListener::bind((ip, outrider_proxy::hbone::PORT)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::hbone_server_config(store).unwrap());
    let drain = outrider_proxy::drain::Drain::new();
    let signal = drain.signal();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = l.accept().await.unwrap();
            let local = tcp.local_addr().unwrap();
            let (acceptor, signal, tx) = (acceptor.clone(), signal.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let peer = tls::peer_identity(tls.get_ref().1).expect("a client certificate");
                server::serve(tls, local, remote, peer, signal, move |c: Connect| {
                    let tx = tx.clone();
                    async move {
                        let (target, peer, remote, forwarded_for) =
                            (c.target, c.peer.clone(), c.remote, c.forwarded_for);
                        let relay = match TcpStream::connect(target).await {
                            Ok(mut app) => {
                                let mut stream = c.accept().unwrap();
                                tokio::io::copy_bidirectional(&mut stream, &mut app).await.map_err(|e| e.to_string())
                            }
                            Err(e) => {
                                c.refuse(http::StatusCode::SERVICE_UNAVAILABLE);
                                Err(format!("connect to {target}: {e}"))
                            }
                        };
                        let _ = tx.send(Tunnelled { target, peer, remote, forwarded_for, relay });
                    }
                })
                .await;
            });
        }
    });
    (addr, rx, drain)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Certificates from one mesh CA: a store for Outrider's side as `ours` and PEM files (chain,
/// key, roots) for Istio's side as `theirs`. The control plane is kept for the test's length.
struct Certs {
    _dir: TempDir,
    _cp: ControlPlane,
    ours: Arc<CertStore>,
    cert: PathBuf,
    key: PathBuf,
    roots: PathBuf,
}

async fn certs(ours: &str, theirs: &str) -> Certs {
    let dir = TempDir::new("hbone-istio");
    let cp = mesh::control_plane(&dir.path().join("cp"), Duration::from_secs(3600));
    let store = mesh::mesh_store(&cp, ours).await;
    let (cert, key, roots) = mesh::mesh_pem_files(&cp, theirs, &dir).await;
    Certs { _dir: dir, _cp: cp, ours: store, cert, key, roots }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istios_dialer_tunnels_through_outriders_hbone_server() {
    let Some(bin) = go_program() else { return };
    // The destination workload (Outrider's side) at 127.0.0.71, Istio's dialer as `istio-client`.
    let workload = ip("127.0.0.71");
    let Certs { ours: store, cert, key, roots, .. } = &certs("reviews", "istio-client").await;
    let (app, mut delivered) = echo_app(workload).await;
    // A second app on the workload for the concurrent tunnels opened first.
    let (other, _) = echo_app(workload).await;
    // And a third for the half-close from the client's side, last.
    let (raw, mut raw_delivered) = echo_app(workload).await;
    let (hbone, mut tunnelled, _drain) = outrider_server(workload, store.clone()).await;
    let (hbone_s, app_s, other_s, raw_s) = (hbone.to_string(), app.to_string(), other.to_string(), raw.to_string());
    let creds = ["-cert", cert.to_str().unwrap(), "-key", key.to_str().unwrap(), "-root", roots.to_str().unwrap()];
    let reviews = identity("reviews");
    let bulk = BULK.to_string();
    let streams = STREAMS.to_string();
    let mut args = vec!["-proxy", &hbone_s, "-target", &app_s, "-server-id", &reviews, "-bulk", &bulk];
    args.extend(["-streams", &streams, "-streams-target", &other_s, "-raw-target", &raw_s]);
    args.extend(creds);

    let mut dial = istio_hbone::dial(&bin, &args);
    let run = dial.run().await;
    assert!(run.done(), "Istio's dialer failed (its log is above):\n{}", run.stdout);
    // Istio's side verified Outrider's certificate: chain to the mesh's root, SAN = reviews.
    assert_eq!(run.fact("server-id"), Some(reviews.as_str()));
    let hs = run.fact("tls").unwrap();
    assert!(hs.starts_with("version=TLS 1.3 alpn=h2 cipher=TLS_AES_"), "{hs}");
    assert_eq!(run.fact("streams"), Some(streams.as_str()), "{STREAMS} tunnels at once, each echoed");
    assert_eq!(run.fact("echo"), Some(format!("{HELLO:?}").as_str()));
    assert_eq!(run.fact("bulk"), Some(bulk.as_str()), "20 MiB each way, byte for byte");
    // The destination's half-close arrives as EOF after exactly its last bytes.
    assert_eq!(run.fact("tail"), Some(r#""half-close\nbye""#));
    assert_eq!(run.fact("eof"), Some("ok"));
    // Istio's dialer cannot half-close: its net.Pipe is closed whole at the server's END_STREAM
    // (so it then ends its own side; see docs/ambient.md).
    assert_eq!(run.fact("write-after-eof"), Some("io: read/write on closed pipe"));
    // On the HTTP/2 transport Istio's dialer is built on, keeping the request body's writer: the
    // client's END_STREAM reaches the app as a FIN, and the app's answer after it comes back.
    assert_eq!(run.fact("raw"), Some(r#""raw\nbye""#));

    let mut all = Vec::new();
    while all.len() < STREAMS + 2 {
        all.push(wait::within("the tunnels to end", tunnelled.recv()).await.unwrap());
    }
    let half = all.iter().position(|t| t.target == raw).unwrap();
    let half = all.remove(half);
    let remotes: std::collections::BTreeSet<SocketAddr> = all.iter().map(|t| t.remote).collect();
    assert_eq!(remotes.len(), 1, "Istio's dialer multiplexed its {} tunnels on one connection: {remotes:?}", all.len());
    assert_ne!(Some(&half.remote), remotes.first(), "the raw step dialled a transport of its own");
    assert_eq!(all.iter().filter(|t| t.target == other).count(), STREAMS);
    assert_eq!(half.relay, Ok((4, 7)), "`raw\\n` in, then `raw\\nbye` out after the half-close");
    let r = wait::within("the raw step's destination report", raw_delivered.recv()).await.unwrap();
    assert_eq!((r.received, r.ended.as_str()), (4, "eof"));
    let t = all.into_iter().find(|t| t.target == app).unwrap();
    assert_eq!(t.peer.as_str(), identity("istio-client"), "Outrider sees the client certificate's identity");
    assert_eq!(t.forwarded_for, None, "Istio's Go dialer sends no `forwarded` header");
    let sent = (HELLO.len() + BULK + MARKER.len()) as u64;
    assert_eq!(t.relay, Ok((sent, sent + 3)), "both directions ended cleanly (no reset), every byte relayed");
    let d = wait::within("the destination's report", delivered.recv()).await.unwrap();
    assert_eq!(d.received as u64, sent);
    assert_eq!((d.after_half_close, d.ended.as_str()), (0, "eof"), "Istio's dialer then ends its side with a FIN");
    assert!(dial.finish().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istios_dialer_and_outriders_server_refuse_what_they_must() {
    let Some(bin) = go_program() else { return };
    let workload = ip("127.0.0.72");
    let Certs { ours: store, cert, key, roots, .. } = &certs("reviews", "istio-client").await;
    let (app, _delivered) = echo_app(workload).await;
    let (hbone, mut tunnelled, _drain) = outrider_server(workload, store.clone()).await;
    let hbone_s = hbone.to_string();
    let dial = |target: String, server_id: String| {
        let (bin, hbone_s) = (bin.clone(), hbone_s.clone());
        let (cert, key, roots) = (cert.clone(), key.clone(), roots.clone());
        async move {
            let args = [
                "-proxy",
                &hbone_s,
                "-target",
                &target,
                "-server-id",
                &server_id,
                "-cert",
                cert.to_str().unwrap(),
                "-key",
                key.to_str().unwrap(),
                "-root",
                roots.to_str().unwrap(),
            ];
            let mut dial = istio_hbone::dial(&bin, &args);
            let run = dial.run().await;
            assert!(!dial.finish().await, "the dial should have failed:\n{}", run.stdout);
            run
        }
    };
    // Istio's side checks the server's SPIFFE ID (so the check of the test above is real).
    let wrong = dial(app.to_string(), identity("ratings")).await;
    let err = wrong.fact("error").unwrap();
    assert!(
        err.contains(&format!("server identity [{}], want exactly {}", identity("reviews"), identity("ratings"))),
        "{err}"
    );
    // Outrider's server refuses an authority that is not the dialled workload's IP (400) and its
    // own ports (503); Istio's dialer reports the status.
    let elsewhere = dial(SocketAddr::new(ip("127.0.0.1"), app.port()).to_string(), identity("reviews")).await;
    assert!(elsewhere.fact("error").unwrap().ends_with("round trip failed: 400 Bad Request"), "{}", elsewhere.stdout);
    let own = dial(SocketAddr::new(workload, 15001).to_string(), identity("reviews")).await;
    assert!(own.fact("error").unwrap().ends_with("round trip failed: 503 Service Unavailable"), "{}", own.stdout);
    assert!(tunnelled.try_recv().is_err(), "no refused CONNECT reached the handler");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outriders_client_tunnels_through_istios_hbone_server() {
    let Some(bin) = go_program() else { return };
    // Istio's server as the destination workload `istio-server` at 127.0.0.73; it dials the
    // CONNECT authority itself (the app at 127.0.0.1). Outrider's client is `productpage`.
    let Certs { ours, cert, key, roots, .. } = &certs("productpage", "istio-server").await;
    let mut istio = Server::start(
        &bin,
        &[
            "-listen",
            "127.0.0.73:0",
            "-cert",
            cert.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
            "-root",
            roots.to_str().unwrap(),
        ],
    )
    .await;
    let (app, mut delivered) = echo_app(ip("127.0.0.1")).await;
    let pool = Pool::new(ours.clone());
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let via = istio.addr;
    let target = |identity: Identity| Target {
        via,
        target: app,
        identity,
        source: Some("10.1.0.7:40000".parse().unwrap()),
        traceparent: Some(http::HeaderValue::from_static(traceparent)),
        baggage: None,
    };
    let server_id = Identity::parse(&identity("istio-server")).unwrap();
    let connect = |t: Target| {
        let pool = &pool;
        async move { pool.connect(&t, &SocketOptions::default(), wait::deadline()).await }
    };

    // Outrider's client checks Istio's server certificate: another identity is refused.
    let err = connect(target(Identity::parse(&identity("ratings")).unwrap())).await.unwrap_err().to_string();
    assert!(err.contains(&format!("peer identity is {server_id}")), "{err}");

    let stream = connect(target(server_id.clone())).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(stream);
    wr.write_all(HELLO.as_bytes()).await.unwrap();
    let mut back = vec![0u8; HELLO.len()];
    rd.read_exact(&mut back).await.unwrap();
    assert_eq!(back, HELLO.as_bytes());
    let data: Vec<u8> = (0..BULK).map(|i| (i % 251) as u8).collect();
    let mut got = vec![0u8; BULK];
    let (w, r) = tokio::join!(wr.write_all(&data), rd.read_exact(&mut got));
    w.unwrap();
    r.unwrap();
    assert!(got == data, "20 MiB each way, byte for byte");
    // Outrider half-closes (END_STREAM); Istio's server passes it on as a FIN, the app answers
    // `bye` and closes, and that arrives as EOF — the other direction stayed open.
    wr.shutdown().await.unwrap();
    let mut tail = Vec::new();
    rd.read_to_end(&mut tail).await.unwrap();
    assert_eq!(tail, b"bye");
    let d = wait::within("the destination's report", delivered.recv()).await.unwrap();
    assert_eq!((d.received, d.ended.as_str()), (HELLO.len() + BULK, "eof"));

    let request = istio.next_line().await;
    let app_s = app.to_string();
    let productpage = identity("productpage");
    let want = format!(
        "request method=CONNECT authority={app_s} proto=HTTP/2.0 tls=TLS 1.3 alpn=h2 peer={productpage} \
         forwarded=\"for=\\\"10.1.0.7:40000\\\"\" traceparent=\"{traceparent}\""
    );
    assert_eq!(request, want, "Istio's server sees Outrider's CONNECT, identity and headers");

    // A second tunnel shares the pooled connection: a second stream on it.
    let mut again = connect(target(server_id)).await.unwrap();
    again.write_all(b"again").await.unwrap();
    again.shutdown().await.unwrap();
    let mut answer = Vec::new();
    again.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"againbye");
    assert!(istio.next_line().await.starts_with("request method=CONNECT"));
    assert_eq!(pool.connections(), 1, "both tunnels on one HTTP/2 connection");
}

/// Outrider's drain (GOAWAY) with one of Istio's tunnels in flight: the tunnel carries on to its
/// end (the GOAWAY reaches Istio's transport before the bulk echo, which comes after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_istio_tunnel_outlives_outriders_drain() {
    let Some(bin) = go_program() else { return };
    let workload = ip("127.0.0.74");
    let Certs { ours: store, cert, key, roots, .. } = &certs("reviews", "istio-client").await;
    let (app, mut delivered) = echo_app(workload).await;
    let (hbone, mut tunnelled, drain) = outrider_server(workload, store.clone()).await;
    let (hbone_s, app_s, reviews, bulk) = (hbone.to_string(), app.to_string(), identity("reviews"), BULK.to_string());
    let mut dial = istio_hbone::dial(
        &bin,
        &[
            "-proxy",
            &hbone_s,
            "-target",
            &app_s,
            "-server-id",
            &reviews,
            "-bulk",
            &bulk,
            "-pause",
            "-cert",
            cert.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
            "-root",
            roots.to_str().unwrap(),
        ],
    );
    let paused = dial.until("paused").await;
    assert_eq!(paused.fact("paused"), Some("ok"), "{}", paused.stdout);
    drain.start();
    dial.resume().await;
    let run = dial.run().await;
    assert!(run.done(), "the in-flight tunnel broke at the drain (Istio's log is above):\n{}", run.stdout);
    assert_eq!(run.fact("bulk"), Some(bulk.as_str()));
    assert_eq!(run.fact("tail"), Some(r#""half-close\nbye""#));
    let t = wait::within("the tunnel to end", tunnelled.recv()).await.unwrap();
    let sent = (HELLO.len() + BULK + MARKER.len()) as u64;
    assert_eq!(t.relay, Ok((sent, sent + 3)));
    let d = wait::within("the destination's report", delivered.recv()).await.unwrap();
    assert_eq!((d.received as u64, d.ended.as_str()), (sent, "eof"));
    assert!(dial.finish().await);
}
