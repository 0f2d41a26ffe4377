#!/usr/bin/python3
"""Browses _k3s._tcp with python-zeroconf (a second mDNS implementation) on one IPv4
interface and prints what it resolved as JSON. Run only inside a test's namespace."""
import json
import sys
import time

from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf

ip, timeout = sys.argv[1], float(sys.argv[2])
TYPE = "_k3s._tcp.local."
zc = Zeroconf(interfaces=[ip], ip_version=IPVersion.V4Only)
names = set()


class Listener(ServiceListener):
    def add_service(self, zc, type_, name):
        names.add(name)

    def update_service(self, zc, type_, name):
        names.add(name)

    def remove_service(self, zc, type_, name):
        pass


ServiceBrowser(zc, TYPE, Listener())
deadline = time.monotonic() + timeout
while time.monotonic() < deadline and not names:
    time.sleep(0.05)
time.sleep(0.5)
out = []
for name in sorted(names):
    info = zc.get_service_info(TYPE, name, timeout=2000)
    if info is None:
        continue
    out.append({
        "name": name,
        "addresses": info.parsed_addresses(),
        "port": info.port,
        "txt": {k.decode(): (v or b"").decode() for k, v in info.properties.items()},
    })
zc.close()
print(json.dumps(out))
