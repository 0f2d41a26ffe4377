#!/usr/bin/env bash
# Discovery benchmark: time to the first verified answer of `chocoimg discover --first`
# next to avahi-browse's first resolved answer, on the same private LAN of network
# namespaces (master1's Avahi publishing a valid announcement; the "laptop" browses).
# Each run is cold: a new chocoimg process, and a freshly restarted Avahi for
# avahi-browse. Runs are 1.5 s apart (Avahi does not repeat an answer within 1 s).
# Prints one line per tool with the median and the spread. Needs root, iproute2,
# avahi-daemon, avahi-utils, dbus, openssl, ssh-keygen, /usr/bin/python3.
#
#   bench/discover.sh [RUNS]          (default 10; CHOCOIMG_BIN to pick the binary)
# NETWORK RULE: everything happens inside namespaces this script creates and deletes.
set -euo pipefail
RUNS=${1:-10}
cd "$(dirname "$0")/.."
BIN=${CHOCOIMG_BIN:-}
if [ -z "$BIN" ]; then
	cargo build --release --quiet
	BIN=$PWD/target/release/chocoimg
fi
for tool in ip unshare avahi-daemon avahi-browse dbus-daemon openssl ssh-keygen /usr/bin/python3; do
	command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/install-test-deps.sh" >&2; exit 1; }
done

ID="chcbench$$"
WORK=$(mktemp -d "/tmp/$ID.XXXX")
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	for ns in "$ID-m" "$ID-l" "$ID-br"; do ip netns del "$ns" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT

# --- the LAN: a bridge namespace, master1 at 10.99.0.1, the laptop at 10.99.0.2
ip netns add "$ID-br"
ip -n "$ID-br" link add br0 type bridge
ip -n "$ID-br" link set br0 up
n=0
for host in m l; do
	n=$((n + 1))
	ip netns add "$ID-$host"
	ip -n "$ID-$host" link add eth0 type veth peer name "p$n" netns "$ID-br"
	ip -n "$ID-br" link set "p$n" master br0 up
	ip -n "$ID-$host" link set lo up
	ip -n "$ID-$host" addr add "10.99.0.$n/24" dev eth0
	ip -n "$ID-$host" link set eth0 multicast on up
	ip -n "$ID-$host" route add default dev eth0
done

start_dbus() { # HOST
	local d="$WORK/$1"
	mkdir -p "$d"
	cat >"$d/dbus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path=$d/bus</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/>
<allow receive_sender="*"/></policy></busconfig>
EOF
	ip netns exec "$ID-$1" dbus-daemon --config-file="$d/dbus.conf" --nofork --nopidfile 2>/dev/null &
	PIDS+=($!)
	for _ in $(seq 100); do [ -S "$d/bus" ] && break; sleep 0.05; done
}

start_avahi() { # HOST HOSTNAME -> sets AVAHI_PID
	local d="$WORK/$1"
	mkdir -p "$d/services" "$d/run"
	printf '[server]\nuse-ipv4=yes\nuse-ipv6=no\nallow-interfaces=eth0\n[wide-area]\nenable-wide-area=no\n[publish]\npublish-workstation=no\npublish-aaaa-on-ipv4=no\n' >"$d/avahi.conf"
	: >"$d/avahi.log"
	DBUS_SYSTEM_BUS_ADDRESS="unix:path=$d/bus" ip netns exec "$ID-$1" \
		unshare --mount --uts --propagation private sh -c \
		"hostname $2; mkdir -p /run/avahi-daemon; mount --bind $d/services /etc/avahi/services; mount --bind $d/run /run/avahi-daemon; exec avahi-daemon --no-drop-root --no-chroot --no-rlimits -f $d/avahi.conf" \
		2>"$d/avahi.log" &
	AVAHI_PID=$!
	PIDS+=("$AVAHI_PID")
	for _ in $(seq 300); do grep -q "Server startup complete" "$d/avahi.log" && return 0; sleep 0.02; done
	echo "avahi-daemon on $1 did not start: $(cat "$d/avahi.log")" >&2
	exit 1
}

# --- a cluster identity: profile, operator key, secrets (agent token) on the laptop
CLUSTER=benchcluster
ssh-keygen -q -t ed25519 -N '' -f "$WORK/id_ed25519"
cat >"$WORK/profile.yaml" <<EOF
cluster: {name: $CLUSTER}
ssh: {user: bench, public_key: $WORK/id_ed25519.pub}
nodes:
  - {hostname: master1, role: server}
  - {hostname: nodo1, role: agent}
EOF
# The cluster's secrets as chocoimg makes them (render creates them; the agent token keys the proof).
CHOCOIMG_OUT="$WORK/out" HOME="$WORK" "$BIN" -p "$WORK/profile.yaml" render --all --out "$WORK/seed" >/dev/null
TOKEN=$(sed -n 's/^agent_token: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$WORK/out/$CLUSTER/secrets.yaml")
[ -n "$TOKEN" ] || { echo "no agent_token in $WORK/out/$CLUSTER/secrets.yaml" >&2; exit 1; }
# A real CA and a server certificate: an address counts as verified only once it serves
# the announced CA at /cacerts and completes TLS on 6443 with it (the K3s stand-in).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench-ca \
	-keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=master1 \
	-keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial \
	-days 2 -extfile <(printf "subjectAltName=DNS:master1\nbasicConstraints=CA:FALSE\n") \
	-out "$WORK/server.crt" 2>/dev/null
CA=$(sha256sum <"$WORK/ca.crt" | cut -d' ' -f1)
PROOF=$(printf '%s' "chocoimg/v1|$CLUSTER|$CA" | openssl dgst -sha256 -mac HMAC -macopt "key:$TOKEN" | sed 's/^.*= *//')

# --- master1 announces
start_dbus m
start_avahi m master1
cat >"$WORK/m/services/k3s.service" <<EOF
<?xml version="1.0" standalone='no'?>
<!DOCTYPE service-group SYSTEM "avahi-service.dtd">
<service-group><name replace-wildcards="yes">%h</name>
<service protocol="ipv4"><type>_k3s._tcp</type><port>6443</port>
<txt-record>txtvers=1</txt-record><txt-record>cluster=$CLUSTER</txt-record>
<txt-record>role=server</txt-record><txt-record>k3s=v1.28.15+k3s1</txt-record>
<txt-record>ca=$CA</txt-record><txt-record>proof=$PROOF</txt-record>
</service></service-group>
EOF
ip netns exec "$ID-m" /usr/bin/python3 "$PWD/tests/support/k3s_standin.py" --bind 0.0.0.0 --port 6443 \
	--cert "$WORK/server.crt" --key "$WORK/server.key" --cacerts "$WORK/ca.crt" >/dev/null 2>&1 &
PIDS+=($!)
sleep 2 # probing and the first announcements

start_dbus l

# --- the runs (timing in python: first matching line of each tool's output)
export BIN ID WORK CLUSTER RUNS
export CHOCOIMG_PROFILE="$WORK/profile.yaml" CHOCOIMG_OUT="$WORK/out" HOME="$WORK"
results="$WORK/results"
: >"$results"
for i in $(seq "$RUNS"); do
	sleep 1.5
	/usr/bin/python3 - chocoimg >>"$results" <<'EOF'
import json, os, subprocess, sys, time
t0 = time.monotonic()
out = subprocess.run(["ip", "netns", "exec", os.environ["ID"] + "-l", os.environ["BIN"],
                      "discover", "--first", "--json", "--timeout", "5"],
                     capture_output=True, text=True)
wall = (time.monotonic() - t0) * 1000
found = [s for s in json.loads(out.stdout or "[]") if s["verdict"] == "verified"]
if out.returncode != 0 or not found:
    print("chocoimg-miss", round(wall)); sys.exit()
print("chocoimg-wall", round(wall)); print("chocoimg-first", found[0]["elapsed_ms"])
EOF
	sleep 1.5
	# avahi-browse needs a local daemon: a fresh one each run, so its cache is cold.
	[ -n "${AVAHI_PID:-}" ] && [ "$i" -gt 1 ] && { kill "$AVAHI_PID"; wait "$AVAHI_PID" 2>/dev/null || true; }
	start_avahi l laptop
	DBUS_SYSTEM_BUS_ADDRESS="unix:path=$WORK/l/bus" /usr/bin/python3 - avahi >>"$results" <<'EOF'
import os, subprocess, time
t0 = time.monotonic()
p = subprocess.Popen(["ip", "netns", "exec", os.environ["ID"] + "-l", "avahi-browse", "-rpk",
                      "_k3s._tcp"], stdout=subprocess.PIPE, text=True)
hit = None
for line in p.stdout:
    if line.startswith("=;") and "cluster=" + os.environ["CLUSTER"] in line:
        hit = (time.monotonic() - t0) * 1000
        break
    if time.monotonic() - t0 > 5:
        break
p.kill(); p.wait()
print("avahi-browse-first", round(hit) if hit else "miss")
EOF
done

/usr/bin/python3 - "$results" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    k, v = line.split()
    rows.setdefault(k, []).append(v)
def show(key, label):
    vals = [int(v) for v in rows.get(key, []) if v != "miss"]
    miss = len(rows.get(key, [])) - len(vals)
    if not vals:
        print(f"{label:<52} no answer in {miss} runs"); return
    print(f"{label:<52} median {statistics.median(vals):6.0f} ms  "
          f"(min {min(vals)}, max {max(vals)}, runs {len(vals)}, misses {miss})")
show("chocoimg-first", "chocoimg discover: first verified answer (in-process)")
show("chocoimg-wall", "chocoimg discover --first: whole process")
show("avahi-browse-first", "avahi-browse -rpk: first resolved answer")
print("chocoimg misses:", len(rows.get("chocoimg-miss", [])))
EOF
