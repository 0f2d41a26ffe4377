# {% if role == "server" %}This server's{% else %}nodo1's{% endif %} reading of the answers, by the rule the laptop applies too (announcement.py).
JUDGE="$(dirname "$0")/announcement.py"
TAB=$(printf '\t')

# Prints "ADDRESS CA" for every answer whose TXT is verified and whose address serves
# that CA, and logs why the others are ignored.
# avahi-browse -p lines: =;iface;proto;name;type;domain;host;address;port;"k=v" ...
verified_answers() {
    timeout 20 avahi-browse -rptk _k3s._tcp 2>"$tmp/browse.err" >"$tmp/browse" || true
{% if role == "server" %}    # The tokens go to python through the environment only (not its command line). A
    # server checks the server proof too: it hands the server token to what it joins.
    CHOCOIMG_HMAC_KEY="$token" CHOCOIMG_SERVER_HMAC_KEY="$server_token" \
        /usr/bin/python3 "$JUDGE" "$CLUSTER" <"$tmp/browse" >"$tmp/judged"
{% else %}    # The agent token goes to python through the environment only (not its command line).
    CHOCOIMG_HMAC_KEY="$token" /usr/bin/python3 "$JUDGE" "$CLUSTER" <"$tmp/browse" >"$tmp/judged"
{% endif %}    while IFS="$TAB" read -r verdict address ca name why; do
        if [ "$verdict" != verified ]; then
            log "ignoring $name at $address: $why" >&2
        elif why=$(/usr/bin/python3 "$JUDGE" prove "$address" "$ca"); then
            printf '%s %s\n' "$address" "$ca"
        else
            log "ignoring $name at $address: its proof checks, but $why" >&2
        fi
    done <"$tmp/judged" | sort -u
}