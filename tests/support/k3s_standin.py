#!/usr/bin/python3
"""A TLS stand-in for the few K3s API endpoints chocoimg talks to (no real K3s can run in
the tests): /cacerts and /ping without credentials, like K3s; /version and
/api/v1/nodes only with a client certificate signed by --client-ca.
Prints "listening <port>" once it accepts connections."""
import argparse
import http.server
import json
import ssl
import sys

p = argparse.ArgumentParser()
p.add_argument("--bind", default="127.0.0.1")
p.add_argument("--port", type=int, default=0)
p.add_argument("--cert", required=True)
p.add_argument("--key", required=True)
p.add_argument("--cacerts", required=True, help="file served at /cacerts, byte for byte")
p.add_argument("--client-ca")
p.add_argument("--nodes", help="JSON file served at /api/v1/nodes")
args = p.parse_args()


class Handler(http.server.BaseHTTPRequestHandler):
    def send(self, code, body, ctype="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/cacerts":
            with open(args.cacerts, "rb") as f:
                return self.send(200, f.read(), "text/plain")
        if self.path == "/ping":
            return self.send(200, b"pong", "text/plain")
        if not self.connection.getpeercert():
            return self.send(401, b'{"kind":"Status","code":401,"message":"Unauthorized"}')
        if self.path == "/version":
            return self.send(200, b'{"gitVersion":"v1.28.15+k3s1"}')
        if self.path.startswith("/api/v1/nodes") and args.nodes:
            with open(args.nodes, "rb") as f:
                return self.send(200, f.read())
        return self.send(404, b'{"kind":"Status","code":404}')

    def log_message(self, fmt, *a):
        sys.stderr.write(fmt % a + "\n")


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(args.cert, args.key)
if args.client_ca:
    ctx.load_verify_locations(args.client_ca)
    ctx.verify_mode = ssl.CERT_OPTIONAL  # like K3s: /cacerts needs no certificate
srv = http.server.ThreadingHTTPServer((args.bind, args.port), Handler)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("listening", srv.server_address[1], flush=True)
srv.serve_forever()
