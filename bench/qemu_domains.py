#!/usr/bin/env python3
"""Real QEMU domains for the qemu-scale bench: made, counted and removed by bench/run.

Each domain is what a compute node's bulk stats call sees of a Nova instance: a transient
TCG domain started paused (`virsh create --paused`), 16 MiB, the harness's kernel and initrd
(tests/harness/libvirt/build_guest.sh), Nova 1.1 metadata, one qcow2 virtio disk of its own,
one virtio NIC on a libvirt-managed tap (<interface type='ethernet'>, as Nova plugs
OVS/Linux-bridge ports: net.* stats exist) and a virtio balloon with a stats period (balloon.*
as on a compute node). The XML comes from the harness's builder (tests/harness/libvirt/
domain_xml.py build_domain), as the test guests' does. Paused: no guest runs,
so 100 of them cost ~50 MiB RSS each and no CPU, while libvirtd answers every stats group.

Every name starts with PREFIX (`nlc-bench-`): `cleanup()` removes all such domains (and the
work directory's files) whoever left them, so an interrupted run is tidied by the next one.

    bench/qemu_domains.py create N      make N bench domains (root), print how long it took
    bench/qemu_domains.py cleanup       remove every nlc-bench-* domain and the disk files
    bench/qemu_domains.py list          the bench domains libvirtd has now
"""
import os
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests", "harness", "libvirt"))
import domain_xml  # noqa: E402  (the harness's domain builder: one source of truth)

PREFIX = "nlc-bench-"
URI = "qemu:///system"
LIBVIRT_WORKDIR = os.environ.get("NLC_LIBVIRT_WORKDIR", "/var/tmp/nlc-test/libvirt")
GUESTDIR = os.environ.get("NLC_LIBVIRT_GUESTDIR", os.path.join(LIBVIRT_WORKDIR, "guest"))
# outside the worktree: QEMU (user libvirt-qemu) must be able to reach the disks
WORKDIR = os.environ.get("NLC_BENCH_QEMU_DIR", "/var/tmp/nlc-test/bench-qemu")
MEMORY_MIB = 16
DESTROY_THREADS = 8
TENANTS = ("acme", "beta", "gamma", "delta", "epsilon")
NAMESPACE = uuid.UUID("5b2f1c3e-9d4a-4c6b-8e7f-0a1b2c3d4e5f")   # stable uuids per index


def identity(index):
    """The Nova-side identity of bench domain `index` (stable, so labels are the same run to run)."""
    tenant = TENANTS[index % len(TENANTS)]
    port = str(uuid.uuid5(NAMESPACE, f"port-{index}"))
    return {
        "index": index,
        "name": f"{PREFIX}{index:04d}",
        "uuid": str(uuid.uuid5(NAMESPACE, f"instance-{index}")),
        "nova_ns": domain_xml.NOVA_NS_1_1,
        # Nova display names as operators give them: a role, an environment, a number
        "nova_name": f"{tenant}-app-worker-{index:03d}",
        "tenant_name": tenant,
        "tenant_uuid": uuid.uuid5(NAMESPACE, f"tenant-{tenant}").hex,
        "user_name": f"{tenant}-deploy",
        "user_uuid": uuid.uuid5(NAMESPACE, f"user-{tenant}").hex,
        "flavor": {"name": "m1.micro", "memory": MEMORY_MIB, "disk": 1, "swap": 0,
                   "ephemeral": 0, "vcpus": 1},
        "image_uuid": "6b1e0f3a-2c4d-4e8f-a0b1-c2d3e4f5a6b7",
        "port_uuid": port,
        "mac": f"fa:16:3e:b0:{index // 256:02x}:{index % 256:02x}",
        "creation_time": "2026-01-01 00:00:00",
        "nova_package": "27.1.0",
        "tap": "tap" + port[:11],          # Nova's naming: tap + first 11 chars of the port id
        "disk": os.path.join(WORKDIR, f"{PREFIX}{index:04d}.qcow2"),
        "guest_ip": f"10.{index // 256}.{index % 256}.15",
    }


def xml(g):
    """Domain XML of bench domain `g` (identity()): the harness's builder, with no console
    and the balloon's stats period of a compute node."""
    return domain_xml.build_domain(
        g["name"], GUESTDIR, uuid=g["uuid"], metadata=domain_xml.nova_metadata(g, g["guest_ip"]),
        memory_mib=MEMORY_MIB, cmdline="console=ttyS0 quiet panic=-1",      # paused: never boots
        disk=domain_xml.file_disk(g["disk"]), nic=domain_xml.tap_nic(g["mac"], g["tap"]),
        serial=domain_xml.NULL_SERIAL, balloon_period=10)


def _libvirt():
    import libvirt
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def bench_domains(conn):
    return [d for d in conn.listAllDomains(0) if d.name().startswith(PREFIX)]


def cleanup(timeout=300):
    """Remove every nlc-bench-* domain (destroy; undefine a persistent one) and the disk files;
    returns how many domains were removed. libvirtd may be stopped and restarted meanwhile
    (other sessions' fault tests do that): each round opens a new connection, and rounds go on
    until no bench domain is left, or `timeout` seconds have passed (then RuntimeError)."""
    libvirt = _libvirt()
    deadline = time.monotonic() + timeout
    removed, last_error = 0, None

    def remove(dom):
        try:
            persistent = dom.isPersistent()      # a transient domain is gone once destroyed
            if dom.isActive():
                dom.destroy()
            if persistent:
                dom.undefine()
            return 1
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                nonlocal last_error
                last_error = f"{dom.name()}: {exc}"
            return 0

    while True:
        try:
            conn = libvirt.open(URI)
            try:
                left = bench_domains(conn)
                if not left:
                    break
                # a destroy takes 1-2 s (QEMU's exit, the tap's removal): in parallel, within
                # libvirtd's worker pool (max_workers 20 by default)
                with ThreadPoolExecutor(max_workers=DESTROY_THREADS) as pool:
                    removed += sum(pool.map(remove, left))
            finally:
                try:
                    conn.close()
                except libvirt.libvirtError:
                    pass
        except libvirt.libvirtError as exc:
            last_error = str(exc)
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench domains left after {timeout} s ({last_error}); "
                               f"remove them with: {os.path.abspath(__file__)} cleanup")
        time.sleep(0.5 if last_error is None else 3)
    if os.path.isdir(WORKDIR):
        for name in os.listdir(WORKDIR):
            if name.startswith(PREFIX):
                os.unlink(os.path.join(WORKDIR, name))
    return removed


class Fleet:
    """The bench domains of one run: grow(n) makes domains until n exist; close() removes all."""

    def __init__(self):
        self.libvirt = _libvirt()
        self.conn = self.libvirt.open(URI)
        self.count = 0
        self.create_seconds = []     # per domain

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.close()

    def prepare(self):
        """Leftovers of an earlier run removed; the empty qcow2 every disk is copied from."""
        for path in ("vmlinuz", "initrd.img"):
            if not os.path.exists(os.path.join(GUESTDIR, path)):
                raise RuntimeError(f"no guest kernel/initrd in {GUESTDIR} (the libvirt harness "
                                   "builds them: tests/harness/libvirt/start)")
        self.conn.close()
        left = cleanup()
        self.conn = self.libvirt.open(URI)
        os.makedirs(WORKDIR, exist_ok=True)
        os.chmod(WORKDIR, 0o755)
        template = os.path.join(WORKDIR, "template.qcow2")
        if not os.path.exists(template):
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", template + ".new", "64M"],
                           check=True)
            os.replace(template + ".new", template)
        self.template = template
        return left

    def grow(self, n):
        try:
            alive = self.conn.isAlive()
        except self.libvirt.libvirtError:
            alive = False
        if not alive:                 # libvirtd was restarted meanwhile (transient domains stay)
            self.conn = self.libvirt.open(URI)
        while self.count < n:
            g = identity(self.count)
            if not self._exists(g["name"]):     # else made just before libvirtd went away
                shutil.copyfile(self.template, g["disk"])
                started = time.perf_counter()
                self.conn.createXML(xml(g), self.libvirt.VIR_DOMAIN_START_PAUSED)
                self.create_seconds.append(time.perf_counter() - started)
            self.count += 1

    def _exists(self, name):
        try:
            self.conn.lookupByName(name)
            return True
        except self.libvirt.libvirtError as exc:
            if exc.get_error_code() == self.libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise

    def close(self):
        try:
            self.conn.close()
        except self.libvirt.libvirtError:
            pass                      # libvirtd was restarted meanwhile
        cleanup()


def main(argv):
    if len(argv) == 3 and argv[1] == "create":
        fleet = Fleet()
        fleet.prepare()
        started = time.perf_counter()
        fleet.grow(int(argv[2]))
        print(f"{fleet.count} domains in {time.perf_counter() - started:.1f} s "
              f"(cleanup: {sys.argv[0]} cleanup)")
        fleet.conn.close()
    elif len(argv) == 2 and argv[1] == "cleanup":
        print(f"removed {cleanup()} bench domains")
    elif len(argv) == 2 and argv[1] == "list":
        conn = _libvirt().openReadOnly(URI)
        print("\n".join(d.name() for d in bench_domains(conn)))
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
