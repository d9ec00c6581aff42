"""Where check_libvirt_instances' time goes on a URI, call by call (diagnostics for results.md).

    python bench/rpc_costs.py URI [REPEAT]

Times (median of REPEAT passes, ms): opening the connection, one bulk stats call, and for the
per-domain path (drivers without bulk counters: test driver, LXC) each kind of call over all
domains, then the same per-domain calls sequentially and from 8 threads (libvirt-python
releases the GIL during a call, and the remote driver multiplexes calls on one connection).
"""
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from xml.etree import ElementTree

import libvirt

NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
uri = sys.argv[1]
repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 3
results = {}


def timed(name, function):
    started = time.perf_counter()
    value = function()
    results.setdefault(name, []).append((time.perf_counter() - started) * 1000)
    return value


for _ in range(repeat):
    conn = timed("open (read-only)", lambda: libvirt.openReadOnly(uri))
    timed("getAllDomainStats (1 bulk call)", lambda: conn.getAllDomainStats(0, 0))
    domains = conn.listAllDomains(0)
    infos = timed(f"info() x {len(domains)}", lambda: [d.info() for d in domains])
    active = [d for d, info in zip(domains, infos) if info[0] == 1]
    devices = {}
    for dom in active:
        root = ElementTree.fromstring(dom.XMLDesc(0))
        devices[dom] = ([t.get("dev") for t in root.iterfind("devices/disk/target")],
                        [t.get("dev") for t in root.iterfind("devices/interface/target")])
    n_disks = sum(len(disks) for disks, _ in devices.values())
    n_nics = sum(len(nics) for _, nics in devices.values())
    timed(f"blockStats() x {n_disks}", lambda: [d.blockStats(x) for d in active for x in devices[d][0]])
    timed(f"interfaceStats() x {n_nics}", lambda: [d.interfaceStats(x) for d in active for x in devices[d][1]])
    timed(f"memoryStats() x {len(active)}", lambda: [d.memoryStats() for d in active])
    timed(f"metadata() x {len(domains)}",
          lambda: [d.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NOVA_NS, 0) for d in domains])

    def per_domain(dom):
        dom.info()
        for disk in devices[dom][0]:
            dom.blockStats(disk)
        for nic in devices[dom][1]:
            dom.interfaceStats(nic)
        dom.memoryStats()

    timed("per-domain path, sequential", lambda: [per_domain(d) for d in active])

    def threaded():
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(per_domain, active))
    timed("per-domain path, 8 threads", threaded)
    conn.close()

width = max(len(name) for name in results)
print(f"{uri} ({repeat} passes, median ms)")
for name, values in results.items():
    print(f"  {name:{width}s} {statistics.median(values):8.1f}")
