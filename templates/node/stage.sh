#!/bin/sh
# chocoimg: announces this node's bring-up stage over mDNS (_chocoimg-node._tcp), so
# `chocoimg watch` on the laptop sees each node come up. The TXT record is public: the
# cluster, this node, its stage, the time it entered the stage (Unix seconds) and, when
# failed, a short reason, with an HMAC proof keyed with the agent token that binds them
# all (src/proof.rs, StageClaim). Never a secret.
#
#   stage.sh STAGE [REASON]  record STAGE and announce it (first boot's steps)
#   stage.sh installed       right after K3s's install script: work out the stage from K3s
#   stage.sh                 the same, later (the timer): starting, running, joined, failed
set -eu
PROG=chocoimg-stage
CLUSTER={{ cluster | sh }}
NODE={{ node | sh }}
ROLE={{ role | sh }}
STAGES={{ stages | join(" ") | sh }}
MAX_REASON={{ max_reason }}
TOKEN_FILE="${CHOCOIMG_AGENT_TOKEN_FILE:-/etc/chocoimg/agent-token}"
SERVICES_DIR="${CHOCOIMG_AVAHI_SERVICES:-/etc/avahi/services}"
STATE_DIR="${CHOCOIMG_STATE_DIR:-/var/lib/chocoimg}"
UNITS_DIR="${CHOCOIMG_UNITS_DIR:-/etc/systemd/system}"
DROPIN="${CHOCOIMG_K3S_CONFIG_DIR:-/etc/rancher/k3s/config.yaml.d}/50-chocoimg-join.yaml"
SYSTEMCTL="${CHOCOIMG_SYSTEMCTL:-systemctl}"
K3S="${CHOCOIMG_K3S:-/usr/local/bin/k3s}"
NO_SERVER_MINUTES="${CHOCOIMG_NO_SERVER_MINUTES:-15}"
{% if ha_server %}ETCD_WAL_DIR="${CHOCOIMG_ETCD_WAL_DIR:-{{ etcd_wal_dir }}}"
BOOTSTRAP_DROPIN="${CHOCOIMG_K3S_CONFIG_DIR:-/etc/rancher/k3s/config.yaml.d}/50-chocoimg-bootstrap.yaml"
{% endif %}SERVICE_FILE="$SERVICES_DIR/chocoimg-node.service"
STATE_FILE="$STATE_DIR/stage"

{% include "lib.sh" %}

if [ "$ROLE" = server ]; then
    UNIT=k3s
    # K3s's own admin kubeconfig (root-only), the default of `k3s kubectl`.
    KUBECONFIG_ARG=""
else
    UNIT=k3s-agent
    # The agent's kubelet credentials: the node authorizer lets a node read its own Node.
    KUBECONFIG_ARG="--kubeconfig=/var/lib/rancher/k3s/agent/kubelet.kubeconfig"
fi
NO_SERVER_REASON="no verified master1 found for $NO_SERVER_MINUTES minutes"

# The recorded stage: three lines (stage, since, reason), or nothing yet.
stage=""
since=0
reason=""
if [ -f "$STATE_FILE" ]; then
    {
        read -r stage || true
        read -r since || true
        read -r reason || true
    } <"$STATE_FILE"
fi
case $since in '' | *[!0-9]*) since=0 ;; esac

# Records stage $1 (reason $2) and announces it. The time is the one the node entered
# the stage, and never goes back (the clock may step back at the first time sync; the
# laptop takes an older time for a replay).
announce() {
    new_reason=$(printf '%s' "$2" | tr -cd 'A-Za-z0-9 .,:()/_+-' | cut -c "1-$MAX_REASON")
    if [ "$1" = failed ] && [ -z "$new_reason" ]; then
        new_reason="unknown"
    fi
    [ "$1" = failed ] || new_reason=""
    if [ "$1" != "$stage" ] || [ "$new_reason" != "$reason" ]; then
        now=$(date +%s)
        [ "$now" -gt "$since" ] || now=$since
        stage=$1
        since=$now
        reason=$new_reason
        mkdir -p "$STATE_DIR"
        printf '%s\n%s\n%s\n' "$stage" "$since" "$reason" >"$STATE_FILE.tmp"
        mv "$STATE_FILE.tmp" "$STATE_FILE"
        log "stage $stage${reason:+: $reason}"
    fi
    proof=$(chocoimg_stage_proof "$CLUSTER" "$NODE" "$stage" "$since" "$reason" "$(cat "$TOKEN_FILE")")
    if ! is_sha256 "$proof"; then
        log "could not compute the proof (is python3 installed?)"
        exit 1
    fi
    set -- txtvers=1 "cluster=$CLUSTER" "node=$NODE" "stage=$stage" "since=$since"
    [ -z "$reason" ] || set -- "$@" "reason=$reason"
    tmp=$(mktemp)
    avahi_service _chocoimg-node._tcp 0 "$@" "proof=$proof" >"$tmp"
    replace_service_file "$tmp" "$SERVICE_FILE" || true
    rm -f "$tmp"
}

# True when K3s's unit failed or keeps failing (it restarts forever: Restart=always).
# Read from `show`, not is-failed's exit code: systemctl outside a booted systemd (a
# chroot) ignores is-failed and exits 0.
unit_failing() {
    state=$($SYSTEMCTL show --property=ActiveState --value "$UNIT.service" 2>/dev/null) || state=""
    restarts=$($SYSTEMCTL show --property=NRestarts --value "$UNIT.service" 2>/dev/null) || restarts=0
    case $restarts in '' | *[!0-9]*) restarts=0 ;; esac
    [ "$state" = failed ] || { [ "$state" != active ] && [ "$restarts" -ge 3 ]; }
}

# True when the K3s API says this node is Ready.
node_ready() {
    # shellcheck disable=SC2086 # KUBECONFIG_ARG is one word or none
    ready=$("$K3S" kubectl $KUBECONFIG_ARG --request-timeout=5s get node "$NODE" \
        -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) || ready=""
    [ "$ready" = True ]
}

{% if ha_server %}# An HA server's bootstrap, when it says more than K3s does: no decision yet (waiting for
# a verified member), or joining a member until this node is Ready. False otherwise.
bootstrap_stage() {
    if [ ! -d "$ETCD_WAL_DIR" ] && [ ! -f "$BOOTSTRAP_DROPIN" ]; then
        announce waiting-for-server ""
    elif grep -q '^server:' "$BOOTSTRAP_DROPIN" 2>/dev/null && ! node_ready; then
        announce joining ""
    else
        return 1
    fi
}

{% endif %}# The stage, worked out from K3s. $1 = "installed" right after the install script.
observe() {
    case $stage in
    first-boot | installing-k3s)
        # Still installing (first boot's own steps move on from here).
        if [ "$1" != installed ]; then
            announce "$stage" ""
            return
        fi
        ;;
    esac
    if [ ! -f "$UNITS_DIR/$UNIT.service" ]; then
        announce failed "K3s install failed: no $UNIT.service"
{% if ha_server %}    elif [ "$ROLE" = server ] && bootstrap_stage; then
        :
{% endif %}    elif [ "$ROLE" = server ]; then
        if unit_failing; then
            announce failed "K3s unit $UNIT.service failed"
        elif node_ready; then
            announce k3s-running ""
        else
            announce starting-k3s ""
        fi
    elif [ ! -f "$DROPIN" ]; then
        # No verified master1 yet (the join service writes the drop-in when it finds one).
        if [ "$stage" = failed ] && [ "$reason" = "$NO_SERVER_REASON" ]; then
            announce failed "$reason"
        elif [ "$stage" = waiting-for-server ] &&
            [ $(($(date +%s) - since)) -ge $((NO_SERVER_MINUTES * 60)) ]; then
            announce failed "$NO_SERVER_REASON"
        else
            announce waiting-for-server ""
        fi
    elif unit_failing; then
        announce failed "K3s unit $UNIT.service failed"
    elif node_ready; then
        announce joined ""
    else
        announce joining ""
    fi
}

case ${1:-} in
'') observe "" ;;
installed) observe installed ;;
*)
    case " $STAGES " in
    *" $1 "*) announce "$1" "${2:-}" ;;
    *)
        log "unknown stage $1 (one of: $STAGES)"
        exit 2
        ;;
    esac
    ;;
esac
