#!/usr/bin/python3
"""Publishes _k3s._tcp services with python-zeroconf (a second mDNS implementation) on one
IPv4 interface, with TXT records given byte for byte (duplicates, odd bytes and all).
Run only inside a test's namespace. Usage: zeroconf_publish.py IP SERVICES.json [--no-probe]
SERVICES.json: [{"name": instance, "host": "x.local.", "port": 6443,
                 "txt_hex": [hex of each TXT string], "addresses": ["10.99.0.3" or "fd00::1"]}]
--no-probe: publish without probing for the names first (as a rogue would: it then
answers for names another responder already holds). Prints "published" when done and
answers queries until killed."""
import asyncio
import ipaddress
import json
import sys

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

ip, path = sys.argv[1], sys.argv[2]
no_probe = "--no-probe" in sys.argv[3:]


async def main():
    zc = AsyncZeroconf(interfaces=[ip], ip_version=IPVersion.V4Only)
    tasks = []
    for s in json.load(open(path)):
        txt = b"".join(bytes([len(b)]) + b for b in (bytes.fromhex(h) for h in s["txt_hex"]))
        info = AsyncServiceInfo(
            "_k3s._tcp.local.",
            "%s._k3s._tcp.local." % s["name"],
            port=s.get("port", 6443),
            properties=txt,
            server=s["host"],
            addresses=[ipaddress.ip_address(a).packed for a in s["addresses"]],
        )
        tasks.append(await zc.async_register_service(
            info, allow_name_change=False, cooperating_responders=no_probe))
    await asyncio.gather(*tasks)
    print("published", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
