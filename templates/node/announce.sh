#!/bin/sh
# chocoimg: master1 announces its K3s server over mDNS (_k3s._tcp, port 6443) once K3s
# answers. The TXT record is public: cluster, role, K3s version, the SHA-256 of the CA
# that /cacerts serves, and an HMAC proof keyed with the agent token. Never a secret.
set -eu
PROG=chocoimg-announce
CLUSTER={{ cluster | sh }}
K3S_VERSION={{ k3s_version | sh }}
TOKEN_FILE="${CHOCOIMG_AGENT_TOKEN_FILE:-/etc/chocoimg/agent-token}"
SERVICES_DIR="${CHOCOIMG_AVAHI_SERVICES:-/etc/avahi/services}"
K3S_URL="${CHOCOIMG_K3S_URL:-https://127.0.0.1:6443}"
WAIT_SECONDS="${CHOCOIMG_WAIT_SECONDS:-300}"
SERVICE_FILE="$SERVICES_DIR/chocoimg-k3s.service"

{% include "lib.sh" %}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# K3s answers /cacerts without credentials once its API is up. Bounded wait; the timer
# runs this again later.
waited=0
until curl -ksSf --max-time 5 -o "$tmp/cacerts" "$K3S_URL/cacerts" 2>/dev/null; do
    if [ "$waited" -ge "$WAIT_SECONDS" ]; then
        log "K3s did not answer at $K3S_URL/cacerts within ${WAIT_SECONDS}s; not announcing yet (the timer retries)"
        exit 1
    fi
    sleep 2
    waited=$((waited + 2))
done

ca=$(sha256sum "$tmp/cacerts" | cut -d' ' -f1)
proof=$(chocoimg_proof "$CLUSTER" "$ca" "$(cat "$TOKEN_FILE")")
if ! is_sha256 "$proof"; then
    log "could not compute the proof (is python3 installed?)"
    exit 1
fi

cat >"$tmp/service" <<XML
<?xml version="1.0" standalone='no'?>
<!DOCTYPE service-group SYSTEM "avahi-service.dtd">
<!-- Written by chocoimg-announce. Public values only: never put a secret here. -->
<service-group>
  <name replace-wildcards="yes">%h</name>
  <service protocol="ipv4">
    <type>_k3s._tcp</type>
    <port>6443</port>
    <txt-record>txtvers=1</txt-record>
    <txt-record>cluster=$CLUSTER</txt-record>
    <txt-record>role=server</txt-record>
    <txt-record>k3s=$K3S_VERSION</txt-record>
    <txt-record>ca=$ca</txt-record>
    <txt-record>proof=$proof</txt-record>
  </service>
</service-group>
XML

# Avahi re-announces on every change of the file: touch it only when the CA changed.
if cmp -s "$tmp/service" "$SERVICE_FILE"; then
    log "already announcing cluster $CLUSTER (ca $ca)"
    exit 0
fi
mkdir -p "$SERVICES_DIR"
cp "$tmp/service" "$SERVICES_DIR/.chocoimg-k3s.tmp"
chmod 0644 "$SERVICES_DIR/.chocoimg-k3s.tmp"
mv "$SERVICES_DIR/.chocoimg-k3s.tmp" "$SERVICE_FILE"
log "announcing cluster $CLUSTER over mDNS: _k3s._tcp port 6443, K3s $K3S_VERSION, ca $ca"
