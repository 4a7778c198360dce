// Command istio-hbone drives Istio's own Go HBONE implementation (istio.io/istio/pkg/hbone)
// against Outrider, for tests/tests/hbone_istio.rs. Two modes:
//
//	istio-hbone dial  -proxy IP:PORT -target IP:PORT -cert C -key K -root R -server-id SPIFFE
//	                  [-bulk N] [-streams N -streams-target IP:PORT] [-raw-target IP:PORT] [-pause]
//	istio-hbone serve -listen IP:PORT -cert C -key K -root R
//
// dial: hbone.NewDialer with mutual TLS (the workload certificate C/K; the server's chain must
// verify against R and carry exactly the URI SAN -server-id), one CONNECT to -target, then a
// fixed exchange with the echo destination behind the server (see dialExchange), after which
// it waits for its stdin to close. -raw-target adds a half-close from the client's side, which
// Istio's Dialer cannot make, on the HTTP/2 transport it is built on (see rawHalfClose). serve:
// hbone.NewServer on a TLS listener that requires a client certificate from R; each CONNECT
// is reported on stdout and then handled by Istio's handler (it dials the authority).
//
// Output is one line per fact, "key value", flushed as it happens; errors end with
// "error <message>" and exit status 1.
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"istio.io/istio/pkg/hbone"
	istiolog "istio.io/istio/pkg/log"
)

// The destination half-closes its side once it has echoed this line (tests/tests/hbone_istio.rs).
const halfCloseMarker = "half-close\n"

// Bounds a hung exchange; the Rust test bounds the whole process too.
const exchangeLimit = 60 * time.Second

var out sync.Mutex

func say(key string, format string, args ...any) {
	out.Lock()
	defer out.Unlock()
	fmt.Printf("%s %s\n", key, fmt.Sprintf(format, args...))
}

func fail(format string, args ...any) {
	say("error", format, args...)
	os.Exit(1)
}

func main() {
	// Istio's log (the hbone scope logs each CONNECT) to stderr: stdout is for the facts above.
	opts := istiolog.DefaultOptions()
	opts.OutputPaths = []string{"stderr"}
	opts.ErrorOutputPaths = []string{"stderr"}
	if err := istiolog.Configure(opts); err != nil {
		fail("configuring Istio's log: %v", err)
	}
	if len(os.Args) < 2 {
		fail("usage: istio-hbone dial|serve [flags]")
	}
	switch os.Args[1] {
	case "dial":
		dial(os.Args[2:])
	case "serve":
		serve(os.Args[2:])
	default:
		fail("unknown mode %q (dial or serve)", os.Args[1])
	}
}

// Credentials: the certificate and key PEM files, and the roots to verify the peer with.
func credentials(certFile, keyFile, rootFile string) (tls.Certificate, *x509.CertPool) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		fail("loading %s and %s: %v", certFile, keyFile, err)
	}
	pem, err := os.ReadFile(rootFile)
	if err != nil {
		fail("reading %s: %v", rootFile, err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		fail("no certificate in %s", rootFile)
	}
	return cert, roots
}

// The URI SANs of a certificate, as strings.
func uris(c *x509.Certificate) []string {
	var s []string
	for _, u := range c.URIs {
		s = append(s, u.String())
	}
	return s
}

func dial(args []string) {
	fs := flag.NewFlagSet("dial", flag.ExitOnError)
	proxy := fs.String("proxy", "", "the HBONE server, IP:PORT")
	target := fs.String("target", "", "the CONNECT authority, IP:PORT")
	certFile := fs.String("cert", "", "client certificate chain (PEM)")
	keyFile := fs.String("key", "", "client key (PEM)")
	rootFile := fs.String("root", "", "trusted roots (PEM)")
	serverID := fs.String("server-id", "", "the SPIFFE ID the server's certificate must carry")
	bulk := fs.Int("bulk", 1<<20, "bytes sent (and read back) in the bulk step")
	streams := fs.Int("streams", 0, "tunnels opened at once to -streams-target first, on the same dialer")
	streamsTarget := fs.String("streams-target", "", "the CONNECT authority of the -streams tunnels")
	rawTarget := fs.String("raw-target", "", "the CONNECT authority of the raw half-close step (last)")
	pause := fs.Bool("pause", false, "after the first echo, print `paused` and wait for a line on stdin")
	_ = fs.Parse(args)

	cert, roots := credentials(*certFile, *keyFile, *rootFile)
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		// Verification by SPIFFE ID instead of host name, in VerifyConnection (as Istio's own
		// clients verify a workload by its identity, not a DNS name).
		InsecureSkipVerify: true, // nolint: gosec // the chain and SAN are verified below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the server sent no certificate")
			}
			leaf := cs.PeerCertificates[0]
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{
				Roots:         roots,
				Intermediates: inter,
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			}); err != nil {
				return fmt.Errorf("server chain: %v", err)
			}
			got := uris(leaf)
			if len(got) != 1 || got[0] != *serverID {
				return fmt.Errorf("server identity %v, want exactly %s", got, *serverID)
			}
			say("server-id", "%s", got[0])
			say("tls", "version=%s alpn=%s cipher=%s", tls.VersionName(cs.Version), cs.NegotiatedProtocol,
				tls.CipherSuiteName(cs.CipherSuite))
			return nil
		},
	}
	d := hbone.NewDialer(hbone.Config{ProxyAddress: *proxy, TLS: cfg})
	if *streams > 0 {
		concurrent(d, *streamsTarget, *streams)
	}
	conn, err := d.Dial("tcp", *target)
	if err != nil {
		fail("dial %s via %s: %v", *target, *proxy, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(exchangeLimit))
	dialExchange(conn, *bulk, *pause)
	if *rawTarget != "" {
		rawHalfClose(cfg, *proxy, *rawTarget)
	}
	say("done", "ok")
	// Held open until stdin closes: Istio's dialer sends its last frames (END_STREAM) from
	// goroutines of its own, which must not die with the process before the test has seen them.
	_, _ = io.Copy(io.Discard, stdin)
}

// The test's commands (a line to resume after -pause), then its closing.
var stdin = bufio.NewReader(os.Stdin)

// concurrent opens n tunnels at once (one dialer: Istio's transport multiplexes them as
// streams of one connection), each a line and its echo, then closed.
func concurrent(d hbone.Dialer, target string, n int) {
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			errs <- func() error {
				conn, err := d.Dial("tcp", target)
				if err != nil {
					return fmt.Errorf("dial %s: %v", target, err)
				}
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(exchangeLimit))
				line := []byte(fmt.Sprintf("stream %d\n", i))
				if _, err := conn.Write(line); err != nil {
					return err
				}
				back := make([]byte, len(line))
				if _, err := io.ReadFull(conn, back); err != nil {
					return err
				}
				if !bytes.Equal(back, line) {
					return fmt.Errorf("stream %d: echo %q", i, back)
				}
				return nil
			}()
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			fail("concurrent tunnels: %v", err)
		}
	}
	say("streams", "%d", n)
}

// rawHalfClose: one CONNECT on golang.org/x/net/http2's Transport set up as Istio's dialer
// sets it up, but keeping the request body's writer, which Istio's Dialer does not hand out:
// a line, then the body closed (END_STREAM, a half-close), then the answer read to its end.
func rawHalfClose(cfg *tls.Config, proxy, target string) {
	t := &http2.Transport{TLSClientConfig: cfg}
	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodConnect, "https://"+proxy, pr)
	if err != nil {
		fail("raw request: %v", err)
	}
	req.Host = target
	resp, err := t.RoundTrip(req)
	if err != nil {
		fail("raw CONNECT to %s via %s: %v", target, proxy, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fail("raw CONNECT answered %s", resp.Status)
	}
	if _, err := pw.Write([]byte("raw\n")); err != nil {
		fail("raw write: %v", err)
	}
	_ = pw.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fail("raw read after the half-close: %v", err)
	}
	say("raw", "%q", body)
}

// dialExchange: a line and its echo (then, with pause, a wait for the test's go-ahead); -bulk bytes written while they are read back; then the
// half-close marker, after which the destination answers "bye" and closes its side, which must
// read as EOF after exactly the marker's echo and "bye". Last, a write after that EOF.
func dialExchange(conn net.Conn, bulk int, pause bool) {
	hello := []byte("hello from istio's dialer\n")
	if _, err := conn.Write(hello); err != nil {
		fail("write: %v", err)
	}
	back := make([]byte, len(hello))
	if _, err := io.ReadFull(conn, back); err != nil {
		fail("read the echo: %v", err)
	}
	say("echo", "%q", back)
	if pause {
		say("paused", "ok")
		if _, err := stdin.ReadString('\n'); err != nil {
			fail("waiting to resume: %v", err)
		}
	}

	data := make([]byte, bulk)
	for i := range data {
		data[i] = byte(i % 251)
	}
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(data)
		werr <- err
	}()
	got := make([]byte, bulk)
	if _, err := io.ReadFull(conn, got); err != nil {
		fail("read the bulk echo: %v", err)
	}
	if err := <-werr; err != nil {
		fail("bulk write: %v", err)
	}
	if !bytes.Equal(got, data) {
		fail("the bulk echo differs from what was sent")
	}
	say("bulk", "%d", bulk)

	if _, err := conn.Write([]byte(halfCloseMarker)); err != nil {
		fail("write the marker: %v", err)
	}
	tail, err := io.ReadAll(conn)
	if err != nil {
		fail("read to EOF: %v", err)
	}
	say("tail", "%q", tail)
	say("eof", "ok")
	if _, err := conn.Write([]byte("after eof\n")); err != nil {
		say("write-after-eof", "%v", err)
	} else {
		say("write-after-eof", "ok")
	}
}

func serve(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", "", "IP:PORT to listen on (port 0: any)")
	certFile := fs.String("cert", "", "server certificate chain (PEM)")
	keyFile := fs.String("key", "", "server key (PEM)")
	rootFile := fs.String("root", "", "trusted roots for client certificates (PEM)")
	_ = fs.Parse(args)

	cert, roots := credentials(*certFile, *keyFile, *rootFile)
	// As Istio's test echo server sets up its HBONE port (a TLS listener offering h2),
	// plus a required client certificate, as an HBONE server requires one.
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2"},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    roots,
		MinVersion:   tls.VersionTLS12,
	}
	l, err := tls.Listen("tcp", *listen, cfg)
	if err != nil {
		fail("listen on %s: %v", *listen, err)
	}
	s := hbone.NewServer()
	inner := s.Handler
	s.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var peer []string
		version, alpn := "", ""
		if r.TLS != nil {
			version, alpn = tls.VersionName(r.TLS.Version), r.TLS.NegotiatedProtocol
			if len(r.TLS.PeerCertificates) > 0 {
				peer = uris(r.TLS.PeerCertificates[0])
			}
		}
		say("request", "method=%s authority=%s proto=%s tls=%s alpn=%s peer=%s forwarded=%s traceparent=%s",
			r.Method, r.Host, r.Proto, version, alpn, strings.Join(peer, ","),
			strconv.Quote(r.Header.Get("Forwarded")), strconv.Quote(r.Header.Get("Traceparent")))
		inner.ServeHTTP(w, r)
	})
	say("listening", "%s", l.Addr())
	if err := s.Serve(l); err != nil {
		fail("serve: %v", err)
	}
}
