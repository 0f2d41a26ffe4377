#!/bin/sh
# chocoimg: nodo1 finds master1 over mDNS and points its K3s agent at it. Keeps only
# IPv4 answers of our cluster whose proof checks with the agent token; writes the
# server address and the secure K10 join token (pinning master1's CA) into a K3s config
# drop-in; starts k3s-agent, and restarts it only when that drop-in changed (master1
# got a new DHCP address, or a new CA). Runs at boot and on a timer.
set -eu
PROG=chocoimg-join
CLUSTER={{ cluster | sh }}
# A fixed server address from the profile skips discovery (empty: discover).
FIXED_SERVER={{ server_address | sh }}
TOKEN_FILE="${CHOCOIMG_AGENT_TOKEN_FILE:-/etc/chocoimg/agent-token}"
DROPIN="${CHOCOIMG_K3S_CONFIG_DIR:-/etc/rancher/k3s/config.yaml.d}/50-chocoimg-join.yaml"
SYSTEMCTL="${CHOCOIMG_SYSTEMCTL:-systemctl}"
TRIES="${CHOCOIMG_TRIES:-30}"
PAUSE="${CHOCOIMG_PAUSE:-3}"

{% include "lib.sh" %}

token=$(cat "$TOKEN_FILE")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

{% include "browse.sh" %}

# The IPv4 address of a name or address. K3s (a static binary) resolves names without
# nss-mdns, so a `.local` name must become an address here; the timer follows changes.
ipv4_of() {
    getent ahostsv4 "$1" | awk 'NR == 1 { print $1 }'
}

current_address() {
    [ -f "$DROPIN" ] || return 0
    sed -n 's|^server: "https://\(.*\):6443"$|\1|p' "$DROPIN"
}

# The CA hash the current drop-in trusts (empty before the first join).
current_ca() {
    [ -f "$DROPIN" ] || return 0
    sed -n 's|^token: "K10\([0-9a-f]*\)::.*|\1|p' "$DROPIN"
}

# Picks "ADDRESS CA" from the verified answers on stdin, never silently: one CA only (the
# one this node joined, or on a first join the only one announced); at several addresses,
# the current one if still there, else the lowest, and says so.
choose() {
    sort -u >"$tmp/answers"
    pinned=$(current_ca)
    if [ -n "$pinned" ]; then
        others=$(awk -v ca="$pinned" '$2 != ca { print $1 }' "$tmp/answers" | tr '\n' ' ')
        [ -z "$others" ] ||
            log "a server of cluster $CLUSTER with another CA answers at ${others% }; keeping the CA this node joined ($pinned). If master1 was reinstalled, delete $DROPIN" >&2
        awk -v ca="$pinned" '$2 == ca' "$tmp/answers" >"$tmp/candidates"
    elif [ "$(cut -d' ' -f2 "$tmp/answers" | sort -u | wc -l)" -gt 1 ]; then
        log "servers of cluster $CLUSTER with valid proofs but different CAs answer ($(tr '\n' ',' <"$tmp/answers" | sed 's/,$//')): a reinstalled or a stale master1? Not joining either until one remains (or set server_address in the profile)" >&2
        return 1
    else
        cp "$tmp/answers" "$tmp/candidates"
    fi
    [ -s "$tmp/candidates" ] || return 1
    pick=$(awk -v cur="$current" '$1 == cur' "$tmp/candidates" | head -n 1)
    [ -n "$pick" ] || pick=$(sort -t. -k1,1n -k2,2n -k3,3n -k4,4n "$tmp/candidates" | head -n 1)
    if [ "$(wc -l <"$tmp/candidates")" -gt 1 ]; then
        log "{% if ha %}servers answer{% else %}master1 answers{% endif %} at $(cut -d' ' -f1 "$tmp/candidates" | tr '\n' ' ')with the same CA; using ${pick% *}" >&2
    fi
    printf '%s\n' "$pick"
}

current=$(current_address)
address=""
ca=""
if [ -n "$FIXED_SERVER" ]; then
    log "using the fixed server address $FIXED_SERVER from the profile (no discovery)"
    try=1
    # No announcement to check: trust the CA the fixed address serves on first use, and
    # only that one after (the agent token must not go to whoever answers there later).
    until address=$(ipv4_of "$FIXED_SERVER") && [ -n "$address" ] &&
        curl -ksSf --max-time 10 -o "$tmp/cacerts" "https://$address:6443/cacerts" 2>/dev/null; do
        if [ "$try" -ge "$TRIES" ]; then
            log "K3s at $FIXED_SERVER:6443 (${address:-not resolved}) did not answer after $TRIES tries; the timer retries later"
            exit 1
        fi
        try=$((try + 1))
        sleep "$PAUSE"
    done
    [ "$address" = "$FIXED_SERVER" ] || log "$FIXED_SERVER is $address"
    ca=$(sha256sum "$tmp/cacerts" | cut -d' ' -f1)
    pinned=$(current_ca)
    if [ -n "$pinned" ] && [ "$ca" != "$pinned" ]; then
        log "K3s at $FIXED_SERVER serves CA $ca, not $pinned trusted on first use; refusing. If master1 was reinstalled, delete $DROPIN"
        exit 1
    fi
else
    try=1
    while :; do
        verified_answers >"$tmp/found"
        if pick=$(choose <"$tmp/found"); then
            address=${pick% *}
            ca=${pick#* }
            break
        fi
        if [ "$try" -ge "$TRIES" ]; then
            log "no verified _k3s._tcp announcement of cluster $CLUSTER after $TRIES tries ($(head -c 200 "$tmp/browse.err")); is {{ server_word }} up and on this LAN? The timer retries later"
            exit 1
        fi
        try=$((try + 1))
        sleep "$PAUSE"
    done
    log "found {{ server_word }} of cluster $CLUSTER at $address (proof verified, ca $ca)"
fi

# Secrets inside: private from the first byte.
umask 077
mkdir -p "$(dirname "$DROPIN")"
cat >"$tmp/dropin" <<YAML
# Written by chocoimg-join: where this agent's server is, and its join token.
server: "https://$address:6443"
token: "K10$ca::node:$token"
YAML

if cmp -s "$tmp/dropin" "$DROPIN"; then
    if $SYSTEMCTL is-active --quiet k3s-agent; then
        log "{{ server_word }} is still at $address; k3s-agent keeps running"
    else
        log "{{ server_word }} is at $address; starting k3s-agent"
        $SYSTEMCTL start --no-block k3s-agent
    fi
    exit 0
fi

cp "$tmp/dropin" "$DROPIN.tmp"
mv "$DROPIN.tmp" "$DROPIN"
if [ -n "$current" ]; then
    log "{{ server_word }} moved from $current to $address; restarting k3s-agent"
else
    log "joining {{ server_word }} at $address; starting k3s-agent"
fi
# Restart, not start, even when k3s-agent is not "active": an agent still starting never
# gets there while its old server address is gone, and a start would leave it there.
$SYSTEMCTL restart --no-block k3s-agent
