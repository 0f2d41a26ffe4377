#!/usr/bin/python3
"""chocoimg: nodo1's reading of the _k3s._tcp answers that `avahi-browse -rptk` prints,
by the same rule as the laptop's (src/cluster/txt.rs; tests/data/txt-cases.json drives
both, so the same bytes get the same verdict on either side).

Usage: announcement.py CLUSTER < avahi-browse output. The agent token comes from the
environment (CHOCOIMG_HMAC_KEY), never from the command line, which every local process
can read. An HA server also gives the server token (CHOCOIMG_SERVER_HMAC_KEY): then an
answer is verified only when its server proof (TXT sproof) checks too, since that server
hands the server token to the member it joins. Prints one line per resolved IPv4 answer:
VERDICT <tab> ADDRESS <tab> CA <tab> NAME <tab> WHY
with VERDICT one of verified, foreign-cluster, forged, malformed, and CA "-" unless
verified (the shell reads these lines with IFS=tab, which merges empty fields).

announcement.py prove ADDRESS CA: exit 0 when ADDRESS serves the CA whose hash is CA at
/cacerts and completes TLS on 6443 with that CA as the only root (as the laptop checks:
anyone can copy an announcement and /cacerts, only master1 holds the CA's key); else
prints why and exits 1."""
import hashlib
import hmac
import http.client
import ipaddress
import os
import re
import ssl
import sys

API_PORT = 6443

# The keys of master1's announcement; one of them twice (in any case) is malformed.
SERVER_KEYS = ("txtvers", "cluster", "role", "k3s", "ca", "proof", "sproof")
PROOF_VERSION = "chocoimg/v1"


class Malformed(Exception):
    pass


def unescape(text):
    """Undoes avahi's escapes: a backslash then three decimal digits is that byte, a
    backslash then any other character is that character."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            digits = text[i + 1:i + 4]
            if len(digits) == 3 and digits.isdigit() and int(digits) < 256:
                out.append(int(digits))
                i += 4
                continue
            if i + 1 >= len(text):
                raise Malformed("a backslash ends the text")
            out += text[i + 1].encode("utf-8", "surrogateescape")
            i += 2
            continue
        out += c.encode("utf-8", "surrogateescape")
        i += 1
    return bytes(out)


def txt_strings(field):
    """The TXT strings of avahi-browse's last field: "k=v" "k=v" ..., each quoted, with
    quotes and backslashes escaped by a backslash and other odd bytes as \\DDD."""
    strings = []
    i = 0
    while i < len(field):
        if field[i] == " ":
            i += 1
            continue
        if field[i] != '"':
            raise Malformed("a TXT string that is not quoted")
        j = i + 1
        while j < len(field) and field[j] != '"':
            j += 2 if field[j] == "\\" else 1
        if j >= len(field):
            raise Malformed("a TXT string without its closing quote")
        strings.append(unescape(field[i + 1:j]))
        i = j + 1
    return strings


def read_txt(strings, used=SERVER_KEYS):
    """RFC 6763 keys (case-insensitive, up to the first '='); a string with an empty key
    is ignored; a key we use twice, or with a value that is not UTF-8, is malformed."""
    values = {}
    for s in strings:
        key, eq, value = s.partition(b"=")
        if not key:
            continue
        name = key.lower().decode("latin-1")
        if name not in used:
            continue
        if name in values:
            raise Malformed("the key %r appears more than once" % name)
        try:
            values[name] = value.decode("utf-8") if eq else None
        except UnicodeDecodeError:
            raise Malformed("the value of %r is not UTF-8" % name)
    return values


def is_sha256_hex(s):
    return s is not None and re.fullmatch("[0-9a-f]{64}", s) is not None


def hmac_hex(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


def judge(strings, cluster, token, server_token=None):
    """(verdict, why, ca) for one server announcement's TXT strings; with server_token,
    its server proof must check too."""
    try:
        txt = read_txt(strings)
    except Malformed as e:
        return "malformed", "malformed announcement (%s)" % e, ""
    ca, proof = txt.get("ca"), txt.get("proof")
    if txt.get("cluster") != cluster:
        cluster_named = txt.get("cluster")
        return "foreign-cluster", "it announces another cluster (%s)" % (
            "none" if cluster_named is None else cluster_named), ""
    if txt.get("txtvers") != "1" or txt.get("role") != "server":
        return "forged", "forged announcement (not txtvers=1 role=server)", ""
    if not (is_sha256_hex(ca) and is_sha256_hex(proof)):
        return "forged", "forged announcement (its proof does not check)", ""
    want = hmac_hex(token, "%s|%s|%s" % (PROOF_VERSION, cluster, ca))
    if not hmac.compare_digest(want, proof):
        return "forged", "forged announcement (its proof does not check)", ""
    if server_token is not None:
        # As src/proof.rs's server_proof: the agent token, on every stick, cannot make it.
        sproof = txt.get("sproof")
        want = hmac_hex(server_token, "%s/server|%s|%s" % (PROOF_VERSION, cluster, ca))
        if not (is_sha256_hex(sproof) and hmac.compare_digest(want, sproof)):
            return "forged", ("forged announcement (its server proof does not check with this "
                              "cluster's server token: it may hold the agent token only, and "
                              "joining it would hand it the server token)"), ""
    return "verified", "", ca


def printable(name):
    """A name for the journal: one line, no tabs."""
    return re.sub(r"[\x00-\x1f\x7f]", "?", name.decode("utf-8", "replace"))


def get(address, path, context):
    conn = http.client.HTTPSConnection(address, API_PORT, context=context, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read(1 << 20)
        if resp.status != 200:
            raise OSError("%s answered %d" % (path, resp.status))
        return body
    finally:
        conn.close()


def prove(address, ca):
    """None when ADDRESS holds the CA announced as CA, else why not."""
    anyone = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anyone.check_hostname = False
    anyone.verify_mode = ssl.CERT_NONE
    try:
        cacerts = get(address, "/cacerts", anyone)
    except (OSError, ssl.SSLError) as e:
        return "nothing answers at https://%s:%d/cacerts (%s)" % (address, API_PORT, e)
    if hashlib.sha256(cacerts).hexdigest() != ca:
        return "it serves another CA than the one announced"
    # Only that CA as root. The name is not checked: K3s's certificate may not name an
    # address DHCP gave master1 since K3s started; holding the CA's key is the proof.
    only_ca = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    only_ca.check_hostname = False
    only_ca.verify_mode = ssl.CERT_REQUIRED
    try:
        only_ca.load_verify_locations(cadata=cacerts.decode("ascii", "replace"))
        get(address, "/ping", only_ca)
    except (OSError, ssl.SSLError, ValueError) as e:
        return "its TLS does not chain to the announced CA (%s)" % e
    return None


def main():
    if sys.argv[1:2] == ["prove"]:
        why = prove(sys.argv[2], sys.argv[3])
        if why:
            print(why)
            sys.exit(1)
        return
    cluster = sys.argv[1]
    token = os.environb[b"CHOCOIMG_HMAC_KEY"]
    server_token = os.environb.get(b"CHOCOIMG_SERVER_HMAC_KEY")
    for line in sys.stdin.buffer.read().decode("utf-8", "surrogateescape").splitlines():
        # =;iface;proto;name;type;domain;host;address;port;"k=v" ... (the TXT may hold ';')
        fields = line.split(";", 9)
        if len(fields) != 10 or fields[0] != "=" or fields[2] != "IPv4":
            continue
        try:
            name = printable(unescape(fields[3]))
        except Malformed:
            name = "?"
        address = fields[7]
        try:
            if not isinstance(ipaddress.ip_address(address), ipaddress.IPv4Address):
                continue
        except ValueError:
            continue
        try:
            verdict, why, ca = judge(txt_strings(fields[9]), cluster, token, server_token)
        except Malformed as e:
            verdict, why, ca = "malformed", "malformed announcement (%s)" % e, ""
        print("\t".join((verdict, address, ca or "-", name, why)))


if __name__ == "__main__":
    main()
