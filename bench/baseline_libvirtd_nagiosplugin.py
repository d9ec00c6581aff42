"""Baseline for check_libvirtd with the same libraries: the leanest nagiosplugin check doing the
same work (the design card builds every check on nagiosplugin; bench/baseline_libvirtd.py is
the same work without it).

A Resource opens the URI read-only, asks the libvirt and hypervisor versions and the host name,
counts the domains by state (one bulk call, as the check does) and yields the time and the
count as Metrics; ScalarContexts without thresholds; nagiosplugin's own Check.main prints.
No argument parsing, no deadline thread, no output limits.

    python baseline_libvirtd_nagiosplugin.py [URI]        (default qemu:///system)
"""
import sys
import time

import libvirt
import nagiosplugin


class Libvirtd(nagiosplugin.Resource):
    def __init__(self, uri):
        self.uri = uri

    def probe(self):
        started = time.perf_counter()
        conn = libvirt.openReadOnly(self.uri)
        conn.getLibVersion(), conn.getType(), conn.getVersion(), conn.getHostname()
        stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
        yield nagiosplugin.Metric("time", round(time.perf_counter() - started, 6), "s", min=0)
        yield nagiosplugin.Metric("domains", len(stats), min=0)


nagiosplugin.Check(Libvirtd(sys.argv[1] if len(sys.argv) > 1 else "qemu:///system"),
                   nagiosplugin.ScalarContext("time"), nagiosplugin.ScalarContext("domains")).main()
