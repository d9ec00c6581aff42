"""Baseline for check_libvirt_instances: the leanest Python doing the same work.

One bulk stats call (virConnectGetAllDomainStats, all groups) and every domain's Nova
metadata read with dom.metadata() (namespace nova/1.1, else nova/1.0 as Nova <= 22 wrote it);
prints one line. No state file, no rates, no caching, no XML parsing.

    python baseline_instances.py [URI] [--groups G,G...] [--flags F,F...] [--per-domain]
                                                          (default qemu:///system)

--groups: only these stats groups (virsh domstats' names: state, cpu-total, balloon, vcpu,
interface, block, ...) instead of all; --flags: the call's flags by the same kind of name
(nowait, backing, ...). bench/run passes the check's own (bench/check_groups.py).

--per-domain (a reference for drivers whose bulk call has no counters: the test driver, LXC):
the counters the check reads there, without any cache: for every domain its XML (Nova metadata
and device names, parsed with the standard library), and for every running one info(),
blockStats() per disk, interfaceStats() per interface and memoryStats().
"""
import sys

import libvirt

NOVA_NAMESPACES = ("http://openstack.org/xmlns/libvirt/nova/1.1",
                   "http://openstack.org/xmlns/libvirt/nova/1.0")

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def bits(option, prefix):
    """The libvirt constants named by the comma list after `option`, or'ed (0 without it)."""
    if option not in sys.argv:
        return 0
    names = sys.argv[sys.argv.index(option) + 1].split(",")
    return sum(getattr(libvirt, prefix + n.strip().upper().replace("-", "_")) for n in names if n.strip())


stats = bits("--groups", "VIR_DOMAIN_STATS_")
flags = bits("--flags", "VIR_CONNECT_GET_ALL_DOMAINS_STATS_")
args = [a for i, a in enumerate(sys.argv[1:], 1)
        if not a.startswith("--") and sys.argv[i - 1] not in ("--groups", "--flags")]
uri = args[0] if args else "qemu:///system"
conn = libvirt.openReadOnly(uri)
records = conn.getAllDomainStats(stats, flags)
named = counters = 0
if "--per-domain" in sys.argv[1:]:
    from xml.etree import ElementTree
    for dom, stats in records:
        root = ElementTree.fromstring(dom.XMLDesc(0))
        if any(root.find(f"metadata/{{{ns}}}instance") is not None for ns in NOVA_NAMESPACES):
            named += 1
        if stats.get("state.state") != libvirt.VIR_DOMAIN_RUNNING:
            continue
        counters += len(dom.info())
        for target in root.iterfind("devices/disk/target"):
            counters += len(dom.blockStats(target.get("dev")))
        for target in root.iterfind("devices/interface/target"):
            counters += len(dom.interfaceStats(target.get("dev")))
        counters += len(dom.memoryStats())
else:
    for dom, stats in records:
        counters += len(stats)
        for namespace in NOVA_NAMESPACES:
            try:
                if dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, namespace, 0):
                    named += 1
                break
            except libvirt.libvirtError:
                pass
print(f"{uri}: {len(records)} domains, {named} with Nova metadata, {counters} counters")
