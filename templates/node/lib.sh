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

# A bring-up stage announcement's proof, as src/proof.rs's stage_proof: HMAC-SHA256(key =
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

# True when $1 is 64 lowercase hex digits (a SHA-256).
is_sha256() {
    [ "${#1}" -eq 64 ] || return 1
    case $1 in *[!0-9a-f]*) return 1 ;; esac
}
{% endraw %}# --- end of shared part ---