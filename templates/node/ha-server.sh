# --- shared by an HA server's bootstrap and announce (rendered in, not sourced) ---
{% raw %}
# The server token, from K3s's own config (root-only): a joining server's join token
# carries it, and it keys the server proof.
K3S_CONFIG="${CHOCOIMG_K3S_CONFIG:-/etc/rancher/k3s/config.yaml}"
server_token=$(sed -n 's/^token: *"\{0,1\}\([0-9a-f]*\)"\{0,1\} *$/\1/p' "$K3S_CONFIG")

# The server proof an HA server announces beside the agent one (TXT sproof), as
# src/proof.rs's server_proof: HMAC-SHA256(key = server token,
# msg = "chocoimg/v1/server|<cluster>|<ca>"). A joining server hands the server token to
# the member it joins, so it joins only one proving it holds that token already: the agent
# token, on every stick, cannot make this proof. Arguments: cluster ca server-token.
chocoimg_server_proof() {
    chocoimg_hmac "chocoimg/v1/server|$1|$2" "$3"
}
{% endraw %}# --- end of the HA servers' part ---
