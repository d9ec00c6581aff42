#!/usr/bin/env python3
"""The test guests of the real-libvirtd harness: their definitions, domain XML and guests.json.

Single source of truth for what the start script defines and what the tests expect.

usage:
  domain_xml.py names                         libvirt names, one per line
  domain_xml.py xml NAME WORKDIR GUESTDIR     domain XML of one guest
  domain_xml.py json WORKDIR GUESTDIR         guests.json (list of dicts, see guest_info())
  domain_xml.py prepare WORKDIR GUESTDIR      for the start script, in one go: (re)write
        WORKDIR/guests.json if changed, write WORKDIR/run/NAME.want.xml (domain XML plus a comment
        naming the guest image build, GUESTDIR/build.stamp), print "NAME TAP HOST_IP PREFIX" lines

Guests are TCG (<domain type='qemu'>): KVM is not reliably usable on the test machines. Each has
a qcow2 virtio disk (vda), a virtio NIC on a libvirt-managed tap (<interface type='ethernet'>)
whose host side libvirt configures as 169.254.<100+i>.2/24 (link-local, never leaves the host),
a serial console logged to a file (ready marker "NLC-READY"), a virtio balloon with a 5 s stats
period (balloon.* guest stats), and Nova metadata in the 1.1 (Nova >= 23) or 1.0 namespace.
Stdlib only: run with any python3.
"""
import json
import os
import sys
from xml.sax.saxutils import escape, quoteattr

NOVA_NS_1_1 = "http://openstack.org/xmlns/libvirt/nova/1.1"
NOVA_NS_1_0 = "http://openstack.org/xmlns/libvirt/nova/1.0"
READY_MARKER = "NLC-READY"

GUESTS = [
    {
        "index": 1,
        "name": "instance-00000001",
        "uuid": "8f2b7c1e-4a3d-4e5f-9b6a-0c1d2e3f4a01",
        "nova_ns": NOVA_NS_1_1,
        "nova_name": "web-01",
        "tenant_name": "acme",
        "tenant_uuid": "3c5e7a9b1d2f4e6a8b0c2d4e6f8a0b1c",
        "user_name": "alice",
        "user_uuid": "a11ce0000e5a4b6c8d0e2f4a6b8c0d1e",
        "flavor": {"name": "m1.tiny", "memory": 256, "disk": 1, "swap": 0,
                   "ephemeral": 0, "vcpus": 1},
        "image_uuid": "6b1e0f3a-2c4d-4e8f-a0b1-c2d3e4f5a6b7",
        "port_uuid": "51f0e2d3-c4b5-4a69-8778-695a4b3c2d01",
        "mac": "fa:16:3e:4e:00:01",
        "creation_time": "2024-03-01 10:00:00",
        "nova_package": "27.1.0",
    },
    {
        "index": 2,
        "name": "instance-00000002",
        "uuid": "8f2b7c1e-4a3d-4e5f-9b6a-0c1d2e3f4a02",
        "nova_ns": NOVA_NS_1_0,            # the schema written by Nova <= 22 (Victoria)
        "nova_name": "db-01",
        "tenant_name": "beta",
        "tenant_uuid": "b37a0000c1d24e3f8a5b6c7d8e9f0a1b",
        "user_name": "bob",
        "user_uuid": "b0b00000d1e24f3a8b5c6d7e8f9a0b1c",
        "flavor": {"name": "m1.tiny", "memory": 256, "disk": 1, "swap": 0,
                   "ephemeral": 0, "vcpus": 1},
        "image_uuid": "6b1e0f3a-2c4d-4e8f-a0b1-c2d3e4f5a6b7",
        "port_uuid": "72a1b3c4-d5e6-4f70-8192-a3b4c5d6e702",
        "mac": "fa:16:3e:4e:00:02",
        "creation_time": "2020-11-15 08:30:00",
        "nova_package": "22.4.0",
    },
]


def _guest(name):
    for g in GUESTS:
        if g["name"] == name:
            return g
    raise SystemExit(f"domain_xml.py: unknown guest {name!r}")


def guest_info(g, workdir, guestdir):
    """Everything a test may want to know about a guest (written to WORKDIR/guests.json)."""
    i = g["index"]
    run = os.path.join(workdir, "run")
    info = {k: v for k, v in g.items() if k != "index"}
    info.update({
        "nova_version": g["nova_ns"].rsplit("/", 1)[1],
        "tap": "tap" + g["port_uuid"][:11],       # Nova's naming: tap + first 11 chars of port id
        "host_ip": f"169.254.{100 + i}.2",
        "guest_ip": f"169.254.{100 + i}.15",
        "prefix": 24,
        "disk_target": "vda",
        "disk": os.path.join(run, g["name"] + ".qcow2"),
        "serial_log": os.path.join(run, g["name"] + ".serial"),
        "kernel": os.path.join(guestdir, "vmlinuz"),
        "initrd": os.path.join(guestdir, "initrd.img"),
        "memory_mib": g["flavor"]["memory"],
        "vcpus": g["flavor"]["vcpus"],
    })
    return info


def nova_metadata(g, guest_ip):
    """The <nova:instance> element Nova writes into a domain's <metadata>, for identity `g`
    (keys as in GUESTS) whose port has `guest_ip`."""
    f = g["flavor"]
    ports = ""
    if g["nova_ns"] == NOVA_NS_1_1:    # <nova:ports> appeared with the 1.1 schema
        ports = f"""
      <nova:ports>
        <nova:port uuid={quoteattr(g["port_uuid"])}>
          <nova:ip type="fixed" address={quoteattr(guest_ip)} ipVersion="4"/>
        </nova:port>
      </nova:ports>"""
    return f"""<nova:instance xmlns:nova={quoteattr(g["nova_ns"])}>
      <nova:package version={quoteattr(g["nova_package"])}/>
      <nova:name>{escape(g["nova_name"])}</nova:name>
      <nova:creationTime>{escape(g["creation_time"])}</nova:creationTime>
      <nova:flavor name={quoteattr(f["name"])}>
        <nova:memory>{f["memory"]}</nova:memory>
        <nova:disk>{f["disk"]}</nova:disk>
        <nova:swap>{f["swap"]}</nova:swap>
        <nova:ephemeral>{f["ephemeral"]}</nova:ephemeral>
        <nova:vcpus>{f["vcpus"]}</nova:vcpus>
      </nova:flavor>
      <nova:owner>
        <nova:user uuid={quoteattr(g["user_uuid"])}>{escape(g["user_name"])}</nova:user>
        <nova:project uuid={quoteattr(g["tenant_uuid"])}>{escape(g["tenant_name"])}</nova:project>
      </nova:owner>
      <nova:root type="image" uuid={quoteattr(g["image_uuid"])}/>{ports}
    </nova:instance>"""


# ---------------------------------------------------------------- one builder for every domain
# The harness's guests, the bench's scale domains (bench/qemu_domains.py) and the tests' own
# guests (tests/test_instances_pressure.py, ...) are all this TCG domain booting the harness's
# kernel and initramfs; they differ only in the parts below.

def guest_cmdline(guest_ip, gateway, prefix=24, extra=""):
    """The kernel command line the harness's /init reads (build_guest.sh): its disk loop
    (8 x 64 KiB, 1 s pause) and the guest's address on its NIC; `extra`: more kernel options."""
    return " ".join(filter(None, (
        "console=ttyS0 quiet panic=-1 tsc=unstable clocksource=hpet", extra,
        f"nlc_sleep=1 nlc_count=8 nlc_ip={guest_ip}/{prefix} nlc_gw={gateway}")))


def file_disk(path, image_format="qcow2"):
    """vda: an image file of the host, uncached (as Nova's default cache='none')."""
    return f"""<disk type='file' device='disk'>
      <driver name='qemu' type='{image_format}' cache='none'/>
      <source file={quoteattr(path)}/>
      <target dev='vda' bus='virtio'/>
    </disk>"""


def nbd_disk(socket):
    """vda: a raw NBD export on a unix socket (e.g. nbdkit, to slow the disk down)."""
    return f"""<disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source protocol='nbd'>
        <host transport='unix' socket={quoteattr(socket)}/>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>"""


def tap_nic(mac, tap, host_ip=None, prefix=24):
    """A virtio NIC on a tap libvirt makes (<interface type='ethernet'>), as Nova plugs OVS or
    Linux-bridge ports: net.* stats exist. With `host_ip`, libvirt gives the tap's host side
    that address (the guest's gateway)."""
    source = ""
    if host_ip:
        source = f"""
      <source>
        <ip address='{host_ip}' prefix='{prefix}'/>
      </source>"""
    return f"""<interface type='ethernet'>
      <mac address='{mac}'/>{source}
      <target dev='{tap}' managed='yes'/>
      <model type='virtio'/>
    </interface>"""


def user_nic():
    """A virtio NIC on QEMU's user-mode network (no tap on the host)."""
    return """<interface type='user'>
      <model type='virtio'/>
    </interface>"""


def file_console(path):
    """The serial console, written to a file (where /init prints its ready marker)."""
    return f"""<serial type='file'>
      <source path={quoteattr(path)}/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path={quoteattr(path)}/>
      <target type='serial' port='0'/>
    </console>"""


NULL_SERIAL = "<serial type='null'/>"


def build_domain(name, guestdir, *, memory_mib, cmdline, disk, nic, serial, balloon_period,
                 vcpus=1, uuid=None, metadata=None):
    """Domain XML of a TCG guest booting the harness's kernel and initramfs (from `guestdir`,
    made by build_guest.sh). The parts that differ: `disk`, `nic` and `serial` (the functions
    above, or XML of the same shape), `cmdline` (guest_cmdline()), `balloon_period` (seconds
    between the guest's balloon statistics; None: the guest sends none), `metadata` (e.g.
    nova_metadata()); without `uuid` libvirt makes one."""
    uuid_line = f"\n  <uuid>{uuid}</uuid>" if uuid else ""
    metadata_block = f"\n  <metadata>\n    {metadata}\n  </metadata>" if metadata else ""
    balloon = "<memballoon model='virtio'/>"
    if balloon_period:
        balloon = f"""<memballoon model='virtio'>
      <stats period='{balloon_period}'/>
    </memballoon>"""
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>{uuid_line}{metadata_block}
  <memory unit='MiB'>{memory_mib}</memory>
  <currentMemory unit='MiB'>{memory_mib}</currentMemory>
  <vcpu placement='static'>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(os.path.join(guestdir, "vmlinuz"))}</kernel>
    <initrd>{escape(os.path.join(guestdir, "initrd.img"))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {disk}
    {nic}
    {serial}
    {balloon}
    <video>
      <model type='none'/>
    </video>
  </devices>
</domain>
"""


def domain_xml(g, workdir, guestdir):
    """Domain XML of harness guest `g` (one of GUESTS)."""
    info = guest_info(g, workdir, guestdir)
    return build_domain(
        g["name"], guestdir, uuid=g["uuid"], metadata=nova_metadata(g, info["guest_ip"]),
        memory_mib=info["memory_mib"], vcpus=info["vcpus"],
        cmdline=guest_cmdline(info["guest_ip"], info["host_ip"], info["prefix"]),
        disk=file_disk(info["disk"]), nic=tap_nic(g["mac"], info["tap"], info["host_ip"], info["prefix"]),
        serial=file_console(info["serial_log"]), balloon_period=5)


def _write_if_changed(path, text):
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except FileNotFoundError:
        pass
    with open(path + ".new", "w") as f:
        f.write(text)
    os.chmod(path + ".new", 0o644)
    os.replace(path + ".new", path)


def prepare(workdir, guestdir):
    with open(os.path.join(guestdir, "build.stamp")) as f:
        stamp = f.read().strip()
    infos = [guest_info(g, workdir, guestdir) for g in GUESTS]
    _write_if_changed(os.path.join(workdir, "guests.json"), json.dumps(infos, indent=2) + "\n")
    for g, info in zip(GUESTS, infos):
        _write_if_changed(os.path.join(workdir, "run", g["name"] + ".want.xml"),
                          domain_xml(g, workdir, guestdir) + f"<!-- guest image: {stamp} -->\n")
        print(g["name"], info["tap"], info["host_ip"], info["prefix"])


def main(argv):
    if len(argv) == 2 and argv[1] == "names":
        print("\n".join(g["name"] for g in GUESTS))
    elif len(argv) == 5 and argv[1] == "xml":
        sys.stdout.write(domain_xml(_guest(argv[2]), argv[3], argv[4]))
    elif len(argv) == 4 and argv[1] == "json":
        json.dump([guest_info(g, argv[2], argv[3]) for g in GUESTS], sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif len(argv) == 4 and argv[1] == "prepare":
        prepare(argv[2], argv[3])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
