#!/usr/bin/env python3
"""A tiny HTTP server that answers every GET with its version, to see a canary split work:

    python3 examples/version-server.py 9081 v1 &

listens on 127.0.0.1:9081 and answers "v1". Used by the README's "Try it with curl".
"""
import http.server
import sys

port, version = int(sys.argv[1]), sys.argv[2]
body = (version + "\n").encode()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the proxy's pool expects

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
