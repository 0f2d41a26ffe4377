# --- shared by chocoimg's node scripts (rendered in, not sourced) ---
{% raw %}
# One clear line in the journal.
log() {
    printf '%s: %s\n' "$PROG" "$*"
}

# The announcement proof, as src/proof.rs computes it:
# HMAC-SHA256(key = agent token, msg = "chocoimg/v1|<cluster>|<ca>") in hex.
chocoimg_proof() {
    printf '%s' "chocoimg/v1|$1|$2" |
        openssl dgst -sha256 -mac HMAC -macopt "key:$3" |
        sed 's/^.*= *//'
}

# True when $1 is 64 lowercase hex digits (a SHA-256).
is_sha256() {
    [ "${#1}" -eq 64 ] || return 1
    case $1 in *[!0-9a-f]*) return 1 ;; esac
}
{% endraw %}# --- end of shared part ---