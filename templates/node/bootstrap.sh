#!/bin/sh
# chocoimg: an HA server decides how its K3s starts, by discovery, never by which stick it
# is (a re-flashed first server must not start a second cluster):
#   - etcd data on disk: start K3s as it is (K3s ignores cluster-init and server then);
#   - a verified server of this cluster answers over mDNS (same TXT rule and proof as
#     nodo1's, plus the server proof only a holder of the server token can make, and the
#     CA the laptop recorded when the seed carries one): join it, with the secure server
#     token pinning its CA;
#   - nothing verified answers for a whole browse window: only the designated init
#     server, and only when the seed carries no recorded CA, starts the cluster
#     (cluster-init); every other server waits (the timer runs this again).
# The decision goes into a K3s config drop-in; then K3s starts. etcd takes one learner at
# a time: a second server joining while one is pending fails and K3s retries.
set -eu
PROG=chocoimg-bootstrap
CLUSTER={{ cluster | sh }}
NODE={{ node | sh }}
# "yes" on the designated init server (the profile's first server), else empty.
INIT_SERVER={{ init_server | sh }}
TOKEN_FILE="${CHOCOIMG_AGENT_TOKEN_FILE:-/etc/chocoimg/agent-token}"
CLUSTER_CA_FILE="${CHOCOIMG_CLUSTER_CA_FILE:-{{ cluster_ca_path }}}"
DROPIN="${CHOCOIMG_K3S_CONFIG_DIR:-/etc/rancher/k3s/config.yaml.d}/50-chocoimg-bootstrap.yaml"
ETCD_WAL_DIR="${CHOCOIMG_ETCD_WAL_DIR:-{{ etcd_wal_dir }}}"
SYSTEMCTL="${CHOCOIMG_SYSTEMCTL:-systemctl}"
# How long nothing verified must answer before the init server starts the cluster.
WINDOW="${CHOCOIMG_BROWSE_WINDOW:-180}"
PAUSE="${CHOCOIMG_PAUSE:-5}"

{% include "lib.sh" %}
{% include "ha-server.sh" %}

if [ -d "$ETCD_WAL_DIR" ]; then
    if $SYSTEMCTL is-active --quiet k3s; then
        log "etcd data on disk and k3s runs: nothing to decide"
    else
        log "etcd data on disk ($ETCD_WAL_DIR): starting k3s as it is (it ignores cluster-init and server now)"
        $SYSTEMCTL start --no-block k3s
    fi
    exit 0
fi

token=$(cat "$TOKEN_FILE")
if ! is_sha256 "$server_token"; then
    log "no server token in $K3S_CONFIG; cannot join or start a cluster"
    exit 1
fi
RECORDED_CA=""
if [ -f "$CLUSTER_CA_FILE" ]; then
    RECORDED_CA=$(tr -d ' \n' <"$CLUSTER_CA_FILE")
    if ! is_sha256 "$RECORDED_CA"; then
        log "$CLUSTER_CA_FILE is not a CA hash (64 hex digits); refusing to decide. Rebuild this server's stick"
        exit 1
    fi
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

{% include "browse.sh" %}

# Picks "ADDRESS CA" of the member to join from the verified answers on stdin: with a
# recorded CA only servers serving it; without one, the only CA announced (several: two
# clusters exist, refuse to pick and say so); the lowest address among them.
choose_member() {
    sort -u >"$tmp/answers"
    if [ -n "$RECORDED_CA" ]; then
        others=$(awk -v ca="$RECORDED_CA" '$2 != ca { print $1 }' "$tmp/answers" | tr '\n' ' ')
        [ -z "$others" ] ||
            log "servers of cluster $CLUSTER at ${others% } serve another CA than the one the laptop recorded ($RECORDED_CA); not joining them" >&2
        awk -v ca="$RECORDED_CA" '$2 == ca' "$tmp/answers" >"$tmp/candidates"
    elif [ "$(cut -d' ' -f2 "$tmp/answers" | sort -u | wc -l)" -gt 1 ]; then
        log "servers of cluster $CLUSTER with valid proofs but different CAs answer ($(tr '\n' ',' <"$tmp/answers" | sed 's/,$//')): two clusters exist. Not joining either; run \`chocoimg discover\` on the laptop, then rebuild this server's stick (it then joins the recorded CA)" >&2
        return 1
    else
        cp "$tmp/answers" "$tmp/candidates"
    fi
    [ -s "$tmp/candidates" ] || return 1
    sort -t. -k1,1n -k2,2n -k3,3n -k4,4n "$tmp/candidates" | head -n 1
}

# Puts $tmp/dropin in place and (re)starts k3s when it changed; $1 says what it decides.
apply() {
    if cmp -s "$tmp/dropin" "$DROPIN"; then
        if $SYSTEMCTL is-active --quiet k3s; then
            log "$1; k3s runs with it (until etcd data is on disk: a join refused while another server is a learner is retried by K3s)"
        else
            log "$1; starting k3s"
            $SYSTEMCTL start --no-block k3s
        fi
        return
    fi
    # Secrets inside: private from the first byte.
    (
        umask 077
        mkdir -p "$(dirname "$DROPIN")"
        cp "$tmp/dropin" "$DROPIN.tmp"
    )
    mv "$DROPIN.tmp" "$DROPIN"
    log "$1; starting k3s"
    # Restart: a k3s still trying an earlier decision must take this one.
    $SYSTEMCTL restart --no-block k3s
}

started=$(date +%s)
seen=""
while :; do
    verified_answers >"$tmp/found"
    [ ! -s "$tmp/found" ] || seen=yes
    if pick=$(choose_member <"$tmp/found"); then
        address=${pick% *}
        ca=${pick#* }
        cat >"$tmp/dropin" <<YAML
# Written by chocoimg-bootstrap: the member this server joins, and the secure server token
# (it pins the cluster's CA). K3s ignores both once etcd data is on disk.
server: "https://$address:6443"
token: "K10$ca::server:$server_token"
YAML
        apply "joining the member of cluster $CLUSTER at $address (proof and server proof verified, ca $ca)"
        exit 0
    fi
    if [ $(($(date +%s) - started)) -ge "$WINDOW" ]; then
        break
    fi
    sleep "$PAUSE"
done

if [ -n "$RECORDED_CA" ]; then
    log "waiting for a verified server of cluster $CLUSTER serving the recorded CA $RECORDED_CA (none answered for ${WINDOW}s); this server never starts a new cluster. The timer retries"
    exit 1
fi
if [ -n "$seen" ]; then
    log "verified servers answered but none could be picked (see above); not starting a cluster. The timer retries"
    exit 1
fi
if [ -z "$INIT_SERVER" ]; then
    log "waiting for a verified server of cluster $CLUSTER (none answered for ${WINDOW}s); only the first server may start the cluster. The timer retries"
    exit 1
fi
cat >"$tmp/dropin" <<YAML
# Written by chocoimg-bootstrap: no verified server of cluster $CLUSTER answered within the
# browse window, so this designated init server starts the cluster (K3s ignores this once
# etcd data is on disk).
cluster-init: true
YAML
apply "no verified server of cluster $CLUSTER answered for ${WINDOW}s: $NODE starts the cluster (cluster-init)"
