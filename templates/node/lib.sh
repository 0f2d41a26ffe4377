# --- shared by chocoimg's node scripts (rendered in, not sourced) ---
{% raw %}
# One clear line in the journal.
log() {
    printf '%s: %s\n' "$PROG" "$*"
}

# The announcement proof, as src/proof.rs computes it:
# HMAC-SHA256(key = agent token, msg = "chocoimg/v1|<cluster>|<ca>") in hex. The key goes
# in through the environment (root-only in /proc), never on a command line, where any
# local process or a hostPID pod could read it (`openssl -macopt key:` would put it there).
chocoimg_proof() {
    chocoimg_hmac "chocoimg/v1|$1|$2" "$3"
}

# A bring-up stage announcement's proof, as src/proof.rs's StageClaim: HMAC-SHA256(key =
# agent token, msg = "chocoimg/v1/stage|<cluster>|<node>|<stage>|<since>|<reason>").
# Arguments: cluster node stage since reason token.
chocoimg_stage_proof() {
    chocoimg_hmac "chocoimg/v1/stage|$1|$2|$3|$4|$5" "$6"
}

# Hex HMAC-SHA256 of message $1 keyed with $2.
chocoimg_hmac() {
    printf '%s' "$1" |
        CHOCOIMG_HMAC_KEY="$2" /usr/bin/python3 -c 'import hashlib, hmac, os, sys
print(hmac.new(os.environb[b"CHOCOIMG_HMAC_KEY"], sys.stdin.buffer.read(), hashlib.sha256).hexdigest())'
}

# An Avahi static service file on stdout, published as this host's name over IPv4: type
# $1, port $2, then one TXT string per argument. Public values only.
avahi_service() {
    printf '%s\n' "<?xml version=\"1.0\" standalone='no'?>" \
        '<!DOCTYPE service-group SYSTEM "avahi-service.dtd">' \
        "<!-- Written by $PROG. Public values only: never put a secret here. -->" \
        '<service-group>' \
        '  <name replace-wildcards="yes">%h</name>' \
        '  <service protocol="ipv4">' \
        "    <type>$1</type>" \
        "    <port>$2</port>"
    shift 2
    for txt in "$@"; do
        printf '    <txt-record>%s</txt-record>\n' "$txt"
    done
    printf '%s\n' '  </service>' '</service-group>'
}

# Puts service file $1 in place as $2 (atomically, 0644) unless $2 already says the same:
# Avahi re-announces on every change. Avahi tells a changed file by its mtime in whole
# seconds, so each version gets a later second than the one before (two changes within
# one second would leave the first announced). False when nothing changed.
replace_service_file() {
    if cmp -s "$1" "$2"; then
        return 1
    fi
    mtime=$(date +%s)
    if [ -f "$2" ]; then
        old=$(stat -c %Y "$2")
        [ "$mtime" -gt "$old" ] || mtime=$((old + 1))
    fi
    mkdir -p "$(dirname "$2")"
    cp "$1" "$2.tmp"
    chmod 0644 "$2.tmp"
    touch -d "@$mtime" "$2.tmp"
    mv "$2.tmp" "$2"
}

# True when $1 is 64 lowercase hex digits (a SHA-256).
is_sha256() {
    [ "${#1}" -eq 64 ] || return 1
    case $1 in *[!0-9a-f]*) return 1 ;; esac
}
{% endraw %}# --- end of shared part ---