"""Baseline for check_libvirtd: the leanest Python doing the same work.

Opens the URI read-only, asks the libvirt and hypervisor versions, lists the domains and
prints one line. No argument parsing, no thresholds, no perfdata, no error handling.

    python baseline_libvirtd.py [URI]        (default qemu:///system)
"""
import sys

import libvirt

uri = sys.argv[1] if len(sys.argv) > 1 else "qemu:///system"
conn = libvirt.openReadOnly(uri)
lib, hv = conn.getLibVersion(), conn.getVersion()
domains = conn.listAllDomains(0)
print(f"{uri}: libvirt {lib}, {conn.getType()} {hv}, {len(domains)} domains")
