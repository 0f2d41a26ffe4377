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

{% include "lib.sh" %}{% if ha_server %}
{% include "ha-server.sh" %}{% endif %}

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
{% if ha_server %}
# In an HA cluster a server announces only once etcd has it as a voting member: a
# learner's API is not ready until etcd promotes it, and the next server must not join
# before that (etcd takes one learner at a time). /readyz needs the admin certificate.
TLS_DIR="${CHOCOIMG_K3S_TLS_DIR:-/var/lib/rancher/k3s/server/tls}"
until curl -sSf --max-time 5 --cacert "$tmp/cacerts" --cert "$TLS_DIR/client-admin.crt" \
    --key "$TLS_DIR/client-admin.key" -o /dev/null "$K3S_URL/readyz" 2>/dev/null; do
    if [ "$waited" -ge "$WAIT_SECONDS" ]; then
        log "K3s at $K3S_URL is not ready (not yet a voting etcd member?) within ${WAIT_SECONDS}s; not announcing yet (the timer retries)"
        exit 1
    fi
    sleep 2
    waited=$((waited + 2))
done
{% endif %}
ca=$(sha256sum "$tmp/cacerts" | cut -d' ' -f1)
proof=$(chocoimg_proof "$CLUSTER" "$ca" "$(cat "$TOKEN_FILE")")
if ! is_sha256 "$proof"; then
    log "could not compute the proof (is python3 installed?)"
    exit 1
fi

{% if ha_server %}# The server proof: the other servers join only a member that makes it (they hand it the
# server token).
if ! is_sha256 "$server_token"; then
    log "no server token in $K3S_CONFIG; not announcing (no server could join this one)"
    exit 1
fi
sproof=$(chocoimg_server_proof "$CLUSTER" "$ca" "$server_token")
if ! is_sha256 "$sproof"; then
    log "could not compute the server proof (is python3 installed?)"
    exit 1
fi
avahi_service _k3s._tcp 6443 txtvers=1 "cluster=$CLUSTER" role=server \
    "k3s=$K3S_VERSION" "ca=$ca" "proof=$proof" "sproof=$sproof" >"$tmp/service"
{% else %}avahi_service _k3s._tcp 6443 txtvers=1 "cluster=$CLUSTER" role=server \
    "k3s=$K3S_VERSION" "ca=$ca" "proof=$proof" >"$tmp/service"
{% endif %}if ! replace_service_file "$tmp/service" "$SERVICE_FILE"; then
    log "already announcing cluster $CLUSTER (ca $ca)"
    exit 0
fi
log "announcing cluster $CLUSTER over mDNS: _k3s._tcp port 6443, K3s $K3S_VERSION, ca $ca"
