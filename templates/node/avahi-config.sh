#!/bin/sh
# chocoimg: runs before avahi-daemon starts (ExecStartPre). Writes Avahi's configuration
# so mDNS runs over IPv4 on the LAN interface only: the default route's device, never
# K3s's cni0, flannel.1 or veth* interfaces. The LAN interface's name is only known here.
set -eu
PROG=chocoimg-avahi-config
CONF="${CHOCOIMG_AVAHI_CONF:-/etc/avahi/avahi-daemon.conf}"
WAIT_SECONDS="${CHOCOIMG_WAIT_SECONDS:-30}"

{% include "lib.sh" %}

lan_interface() {
    ip -4 route show default 2>/dev/null |
        awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }'
}

waited=0
iface=$(lan_interface)
while [ -z "$iface" ] && [ "$waited" -lt "$WAIT_SECONDS" ]; do
    sleep 1
    waited=$((waited + 1))
    iface=$(lan_interface)
done
if [ -n "$iface" ]; then
    allow="allow-interfaces=$iface"
    log "mDNS on $iface (the default route's interface), IPv4 only"
else
    allow="# no default route within ${WAIT_SECONDS}s: every interface but K3s's own"
    log "no default route within ${WAIT_SECONDS}s; mDNS on every interface except K3s's"
fi

cat >"$CONF.tmp" <<CONF
# Written by chocoimg-avahi-config at every avahi-daemon start; edits are lost.
[server]
use-ipv4=yes
use-ipv6=no
$allow
deny-interfaces=cni0,flannel.1,kube-ipvs0
enable-dbus=yes

[wide-area]
enable-wide-area=no

[publish]
publish-aaaa-on-ipv4=no
publish-workstation=no
publish-hinfo=no

[reflector]
enable-reflector=no
CONF
mv "$CONF.tmp" "$CONF"
