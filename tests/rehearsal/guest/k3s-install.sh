#!/bin/sh
# A STAND-IN for K3s's install.sh, put on the rehearsal's CIDATA stick as `k3s/install.sh`
# (the real script is not ours to ship in the repo, and it installs a K3s that cannot run
# here). It does what the seed relies on, as the real one does with
# INSTALL_K3S_SKIP_DOWNLOAD=true: takes /usr/local/bin/k3s as installed, writes the
# k3s.service or k3s-agent.service unit (Type=notify, restart always, no start timeout),
# enables it, and starts it (blocking until K3s reports ready) unless
# INSTALL_K3S_SKIP_START=true.
set -eu
BIN=/usr/local/bin/k3s
[ "${INSTALL_K3S_SKIP_DOWNLOAD:-}" = true ] || { echo "[ERROR] the rehearsal installs from the stick only" >&2; exit 1; }
[ -x "$BIN" ] || { echo "[ERROR] $BIN is not executable" >&2; exit 1; }
# shellcheck disable=SC2086 # the command and its flags, as install.sh splits them
set -- ${INSTALL_K3S_EXEC:-server}
case $1 in
    server) name=k3s; desc="Lightweight Kubernetes" ;;
    agent) name=k3s-agent; desc="Lightweight Kubernetes" ;;
    *) echo "[ERROR] INSTALL_K3S_EXEC must start with server or agent" >&2; exit 1 ;;
esac
unit=/etc/systemd/system/$name.service
echo "[INFO]  systemd: Creating service file $unit"
cat >"$unit" <<UNIT
[Unit]
Description=$desc
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/systemd/system/$name.service.env
KillMode=process
Delegate=yes
LimitNOFILE=1048576
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStart=$BIN $*
UNIT
: >"/etc/systemd/system/$name.service.env"
chmod 0600 "/etc/systemd/system/$name.service.env"
echo "[INFO]  systemd: Enabling $name unit"
systemctl enable "$name.service" >/dev/null 2>&1
systemctl daemon-reload
if [ "${INSTALL_K3S_SKIP_START:-}" = true ]; then
    exit 0
fi
echo "[INFO]  systemd: Starting $name"
systemctl restart "$name.service"
