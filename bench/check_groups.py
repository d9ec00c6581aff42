#!/usr/bin/env python3
"""The stats groups and flags check_libvirt_instances passes to the bulk stats call.

Read from the library itself, not copied: the check's Sampler is handed a connection that
records its getAllDomainStats call and stops it there. So the same-groups baseline of the
qemu-scale bench (baseline_instances.py --groups ... --flags ...) asks exactly what the check
asks, also after groups are added to lib/nova_libvirt_checks/domstats.py.

Prints one line of JSON: {"groups": ["state", "cpu-total", ...], "flags": ["nowait"]}, the
names `virsh domstats` uses (--state, --cpu-total, ..., --nowait).
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), os.pardir, "lib"))
import libvirt  # noqa: E402
from nova_libvirt_checks.domstats import Sampler  # noqa: E402

GROUP_PREFIX = "VIR_DOMAIN_STATS_"
FLAG_PREFIX = "VIR_CONNECT_GET_ALL_DOMAINS_STATS_"


class Asked(Exception):
    pass


class RecordingConnection:
    def getAllDomainStats(self, stats, flags=0):      # noqa: N802 - libvirt's name
        raise Asked(stats, flags)


def names(mask, prefix):
    """Bit names of `mask` among libvirt's constants with that prefix (virsh spelling)."""
    bits = {getattr(libvirt, n): n[len(prefix):].lower().replace("_", "-")
            for n in dir(libvirt) if n.startswith(prefix)}
    found = [name for bit, name in sorted(bits.items()) if bit and mask & bit == bit
             and bin(bit).count("1") == 1]
    rest = mask & ~sum(bit for bit, name in bits.items() if name in found)
    if rest:
        raise SystemExit(f"check_groups: unknown bits {rest:#x} under {prefix}")
    return found


def bulk_call():
    try:
        Sampler(libvirt, RecordingConnection(), mode="bulk").sample()
    except Asked as asked:
        stats, flags = asked.args
        return {"groups": names(stats, GROUP_PREFIX), "flags": names(flags, FLAG_PREFIX)}
    raise SystemExit("check_groups: the check's Sampler made no getAllDomainStats call")


if __name__ == "__main__":
    print(json.dumps(bulk_call()))
