#!/usr/bin/python3
"""A stand-in for a K3s server (or agent) of an HA cluster with embedded etcd, started by
the tests' systemctl stand-in as `k3s` (`k3s-agent`) in a node's network namespace.

Why a stand-in: no real K3s (nor its embedded etcd) can run in the tests. It models what
chocoimg's bootstrap must get right, as K3s and etcd do it (K3s docs datastore/ha-embedded
and cli/token; k3s pkg/etcd, pkg/cluster; etcd's learner rules):
  - it reads config.yaml, then config.yaml.d/*.yaml in name order (later keys win);
  - etcd data on disk (db/etcd/member/wal): starts from it, ignoring cluster-init and
    server; db/etcd/name is written at every start, as K3s does, joined or not;
  - `cluster-init: true`: a new cluster with a new CA (a fresh certificate, openssl);
  - `server: https://ADDR:6443` with `token: K10<ca hash>::server:<token>`: fetches
    /cacerts over HTTPS from that member, refuses a CA whose hash differs from the
    token's, then asks the member for the bootstrap data (the CA, with the token) and to
    add it to etcd as a learner. A member refuses a second learner while one is pending
    ("too many learner members in cluster"): this process then exits 1, and the unit's
    restart loop (Restart=always) tries again;
  - a learner is promoted to voting member after --promote-after seconds; only then does
    its /readyz answer 200 (with the admin client certificate, as K3s wants);
  - the member list is replicated to every member over HTTPS (newest revision wins), so
    it survives any one member being wiped;
  - neither cluster-init, server nor etcd data: K3s would start a single-server SQLite
    datastore, which an HA server must never do: logged as a failure;
  - agent: checks the server's CA against its K10 token and registers with
    `node:<agent token>`.
Every event goes to --journal (shared by the test's nodes) as "<time> <node> <event>",
among them the SHA-256 of every credential a request to this server carried.
Simplification: a server rejoining under its old name replaces its old member entry
(K3s names members <hostname>-<random>, leaving a stale one to remove by hand)."""
import argparse
import base64
import glob
import hashlib
import http.client
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

import yaml

p = argparse.ArgumentParser()
p.add_argument("--role", choices=["server", "agent"], required=True)
p.add_argument("--name", required=True)
p.add_argument("--address", required=True)
p.add_argument("--config", required=True)
p.add_argument("--config-dir", required=True)
p.add_argument("--data-dir", required=True)
p.add_argument("--journal", required=True)
p.add_argument("--promote-after", type=float, default=2.0)
args = p.parse_args()

PORT = 6443
TLS = os.path.join(args.data_dir, "server", "tls")
ETCD = os.path.join(args.data_dir, "server", "db", "etcd")
# K3s takes etcd as initialized once the WAL folder exists (pkg/etcd IsInitialized); it
# writes db/etcd/name at every start before that, a refused join included.
WAL = os.path.join(ETCD, "member", "wal")
STATE = os.path.join(ETCD, "member", "members.json")


def journal(event):
    with open(args.journal, "a") as f:
        f.write("%.3f %s %s\n" % (time.time(), args.name, event))


def die(why):
    journal("failed: " + why)
    print(why, file=sys.stderr, flush=True)
    sys.exit(1)


def load_config():
    cfg = {}
    files = [args.config] + sorted(glob.glob(os.path.join(args.config_dir, "*.yaml")))
    for path in files:
        if os.path.exists(path):
            with open(path) as f:
                cfg.update(yaml.safe_load(f) or {})
    return cfg


def openssl(*a):
    subprocess.run(["openssl", *a], cwd=TLS, check=True, capture_output=True)


def issue(name, subject, ext):
    """A key and certificate `name` signed by the cluster CA in TLS."""
    with open(os.path.join(TLS, name + ".cnf"), "w") as f:
        f.write("[x]\n" + ext + "\n")
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", name + ".key")
    openssl("req", "-new", "-key", name + ".key", "-subj", subject, "-out", name + ".csr")
    openssl("x509", "-req", "-in", name + ".csr", "-CA", "server-ca.crt", "-CAkey",
            "server-ca.key", "-CAcreateserial", "-days", "30", "-extfile", name + ".cnf",
            "-extensions", "x", "-out", name + ".crt")


def node_certs():
    """This node's serving certificate and the admin client certificate."""
    issue("serving-kube-apiserver", "/CN=k3s",
          "subjectAltName=IP:127.0.0.1,IP:%s" % args.address)
    issue("client-admin", "/O=system:masters/CN=system:admin",
          "extendedKeyUsage=clientAuth")


def ca_bytes():
    with open(os.path.join(TLS, "server-ca.crt"), "rb") as f:
        return f.read()


def ca_hash():
    return hashlib.sha256(ca_bytes()).hexdigest()


def insecure():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def request(host, method, path, ctx, auth=None, body=None, timeout=5):
    conn = http.client.HTTPSConnection(host, PORT, context=ctx, timeout=timeout)
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def parse_token(token, user):
    """(ca hash or None, password) of a K3s token for `user`."""
    token = str(token)
    if token.startswith("K10"):
        ca, _, rest = token[3:].partition("::")
        who, _, password = rest.partition(":")
        if who != user:
            die("the token is for %r, not %r" % (who, user))
        return ca, password
    return None, token


def fetch_ca(host, want):
    """The member's /cacerts, checked against the token's CA hash, like K3s does."""
    try:
        status, cacerts = request(host, "GET", "/cacerts", insecure())
    except OSError as e:
        die("cannot reach https://%s:%d/cacerts: %s" % (host, PORT, e))
    got = hashlib.sha256(cacerts).hexdigest()
    if want is not None and got != want:
        die("token CA hash does not match the Cluster CA certificate hash (%s != %s)" % (want, got))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=cacerts.decode())
    return ctx, got


class Members:
    """The replicated member list: {name: {address, learner, since}} at revision rev."""

    def __init__(self, members, rev):
        self.lock = threading.Lock()
        self.members = members
        self.rev = rev

    def save(self):
        tmp = STATE + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"rev": self.rev, "members": self.members}, f)
        os.replace(tmp, STATE)

    def snapshot(self):
        return {"rev": self.rev, "members": json.loads(json.dumps(self.members))}

    def adopt(self, snap):
        with self.lock:
            if snap["rev"] > self.rev:
                self.members, self.rev = snap["members"], snap["rev"]
                self.save()

    def change(self, fn):
        """Applies fn(members) under the lock; saves and replicates when it returns True."""
        with self.lock:
            if not fn(self.members):
                return False
            self.rev += 1
            self.save()
            snap = self.snapshot()
        threading.Thread(target=replicate, args=(snap,), daemon=True).start()
        return True


def replicate(snap):
    for name, m in snap["members"].items():
        if name == args.name:
            continue
        try:
            request(m["address"], "POST", "/v1-k3s/members", client_ctx,
                    auth="server:" + server_password, body=snap, timeout=2)
        except OSError:
            pass  # down: it catches up from the next change


def promoter():
    """etcd promotes a learner once it has caught up: here, after --promote-after."""
    while True:
        time.sleep(0.2)
        promoted = []

        def promote(members):
            for name, m in members.items():
                if m["learner"] and time.time() - m["since"] >= args.promote_after:
                    m["learner"] = False
                    promoted.append(name)
            return bool(promoted)

        if members.change(promote):
            for name in promoted:
                journal("promoted %s" % name)


class Handler(http.server.BaseHTTPRequestHandler):
    def send(self, code, body, ctype="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def authorized(self, user, password):
        got = self.headers.get("Authorization", "")
        want = "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()
        return got == want

    def note_credentials(self):
        """Journals which credentials reached this server, as a hash (never the secret), so
        a test can tell that a rogue never received the server token."""
        got = self.headers.get("Authorization", "")
        if got.startswith("Basic "):
            user, _, password = base64.b64decode(got[6:]).decode(errors="replace").partition(":")
            journal("received %s credentials sha256:%s" % (
                user, hashlib.sha256(password.encode()).hexdigest()))

    def body(self):
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def do_GET(self):
        self.note_credentials()
        if self.path == "/cacerts":
            return self.send(200, ca_bytes(), "text/plain")
        if self.path == "/ping":
            return self.send(200, b"pong", "text/plain")
        if self.path == "/readyz":
            if not self.connection.getpeercert():
                return self.send(401, b'{"code":401}')
            me = members.members.get(args.name)
            if me is None or me["learner"]:
                return self.send(500, b"[-]etcd failed: not a voting member yet", "text/plain")
            return self.send(200, b"ok", "text/plain")
        if self.path == "/v1-k3s/server-bootstrap":
            if not self.authorized("server", server_password):
                return self.send(401, b'{"code":401}')
            with open(os.path.join(TLS, "server-ca.key")) as f:
                key = f.read()
            return self.send(200, json.dumps({"ca": ca_bytes().decode(), "key": key}).encode())
        return self.send(404, b'{"code":404}')

    def do_POST(self):
        self.note_credentials()
        if self.path == "/v1-k3s/agent-join":
            if not self.authorized("node", agent_password):
                return self.send(401, b'{"code":401}')
            journal("agent %s joined here (ca %s)" % (self.body()["name"], ca_hash()))
            return self.send(200, b"{}")
        if not self.authorized("server", server_password):
            return self.send(401, b'{"code":401}')
        if self.path == "/v1-k3s/members":
            members.adopt(self.body())
            return self.send(200, b"{}")
        if self.path == "/v1-k3s/member-add":
            new = self.body()
            pending = []

            def add(ms):
                pending.extend(n for n, m in ms.items() if m["learner"] and n != new["name"])
                if pending:
                    return False
                ms[new["name"]] = {"address": new["address"], "learner": True,
                                   "since": time.time()}
                return True

            if not members.change(add):
                journal("refused learner %s: %s is a learner" % (new["name"], ",".join(pending)))
                return self.send(409, b'{"error":"etcdserver: too many learner members in cluster"}')
            journal("added learner %s" % new["name"])
            return self.send(200, json.dumps(members.snapshot()).encode())
        return self.send(404, b'{"code":404}')

    def log_message(self, fmt, *a):
        sys.stderr.write(fmt % a + "\n")


def agent(cfg):
    url = urllib.parse.urlsplit(cfg.get("server", ""))
    if not url.hostname:
        die("no server to join")
    want, password = parse_token(cfg.get("token", ""), "node")
    ctx, got = fetch_ca(url.hostname, want)
    status, _ = request(url.hostname, "POST", "/v1-k3s/agent-join", ctx,
                        auth="node:" + password, body={"name": args.name})
    if status != 200:
        die("server %s refused the agent (%d)" % (url.hostname, status))
    journal("agent running, server %s, ca %s" % (url.hostname, got))
    while True:
        time.sleep(3600)


cfg = load_config()
if args.role == "agent":
    agent(cfg)
os.makedirs(ETCD, exist_ok=True)
with open(os.path.join(ETCD, "name"), "w") as f:
    f.write(args.name)

# The server token is the same in every form (plain in config.yaml, K10 in a join).
server_password = parse_token(cfg.get("token", ""), "server")[1]
agent_password = str(cfg.get("agent-token", ""))
client_ctx = insecure()
if os.path.isdir(WAL):
    with open(STATE) as f:
        state = json.load(f)
    members = Members(state["members"], state["rev"])
    journal("started from etcd data on disk (ca %s)" % ca_hash())
elif cfg.get("server"):
    url = urllib.parse.urlsplit(str(cfg["server"]))
    want = parse_token(cfg.get("token", ""), "server")[0]
    ctx, got = fetch_ca(url.hostname, want)
    status, body = request(url.hostname, "GET", "/v1-k3s/server-bootstrap", ctx,
                           auth="server:" + server_password)
    if status != 200:
        die("%s refused the bootstrap data (%d): wrong token" % (url.hostname, status))
    bootstrap = json.loads(body)
    status, body = request(url.hostname, "POST", "/v1-k3s/member-add", ctx,
                           auth="server:" + server_password,
                           body={"name": args.name, "address": args.address})
    if status != 200:
        die("joining %s: %s" % (url.hostname, body.decode(errors="replace")))
    os.makedirs(TLS, exist_ok=True)
    with open(os.path.join(TLS, "server-ca.crt"), "w") as f:
        f.write(bootstrap["ca"])
    with open(os.path.join(TLS, "server-ca.key"), "w") as f:
        f.write(bootstrap["key"])
    node_certs()
    snap = json.loads(body)
    os.makedirs(WAL)
    members = Members(snap["members"], snap["rev"])
    members.save()
    journal("joined %s as a learner (ca %s)" % (url.hostname, got))
elif cfg.get("cluster-init"):
    os.makedirs(TLS, exist_ok=True)
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "server-ca.key")
    openssl("req", "-x509", "-new", "-key", "server-ca.key", "-days", "30", "-subj",
            "/CN=k3s-server-ca@%d" % time.time_ns(), "-out", "server-ca.crt")
    node_certs()
    os.makedirs(WAL)
    members = Members({args.name: {"address": args.address, "learner": False,
                                    "since": time.time()}}, 1)
    members.save()
    journal("cluster-init (ca %s)" % ca_hash())
else:
    die("neither cluster-init nor server nor etcd data: K3s would start SQLite")

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(os.path.join(TLS, "serving-kube-apiserver.crt"),
                    os.path.join(TLS, "serving-kube-apiserver.key"))
ctx.load_verify_locations(os.path.join(TLS, "server-ca.crt"))
ctx.verify_mode = ssl.CERT_OPTIONAL  # like K3s: /cacerts and /ping need no certificate
http.server.ThreadingHTTPServer.allow_reuse_address = True
srv = http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
threading.Thread(target=promoter, daemon=True).start()
journal("serving on %s:%d" % (args.address, PORT))
srv.serve_forever()
