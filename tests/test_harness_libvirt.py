"""The real-libvirtd harness works: guests run, do I/O, carry Nova metadata, and an unprivileged
user sees all of it over the read-only socket. Disruptive helpers (daemon stop, guest restart)
run last."""
import os

import libvirt
import pytest
from lxml import etree

from tests.fixtures_libvirt import NOVA_NS_1_0, NOVA_NS_1_1, run_as_nagios
from tests.helpers import wait_for_growth, wait_until

COUNTERS = ("block.0.rd.bytes", "block.0.wr.bytes", "net.0.rx.bytes", "net.0.tx.bytes")


def test_guests_json_matches_libvirt(libvirtd):
    assert [g["name"] for g in libvirtd.guests] == ["instance-00000001", "instance-00000002"]
    assert {g["nova_ns"] for g in libvirtd.guests} == {NOVA_NS_1_1, NOVA_NS_1_0}
    conn = libvirtd.open_ro()
    try:
        for g in libvirtd.guests:
            dom = conn.lookupByUUIDString(g["uuid"])
            assert dom.name() == g["name"]
            assert dom.isActive()
            assert dom.info()[0] == libvirt.VIR_DOMAIN_RUNNING
            assert f"dev='{g['tap']}'" in dom.XMLDesc(0)
    finally:
        conn.close()
    assert libvirtd.guest("web-01")["tenant_name"] == "acme"
    assert libvirtd.guest("db-01")["user_name"] == "bob"


def test_guests_do_disk_and_network_io(libvirtd):
    before, after = wait_for_growth(libvirtd, COUNTERS)
    for name, st in after.items():
        assert st["block.count"] == 1 and st["block.0.name"] == "vda"
        assert st["net.count"] == 1 and st["net.0.name"] == libvirtd.guest(name)["tap"]
        assert st["state.state"] == libvirt.VIR_DOMAIN_RUNNING
        assert st["cpu.time"] > 0
        assert st["balloon.maximum"] == 256 * 1024
        for k in COUNTERS:
            assert st[k] > 0, (name, k)


def test_nova_metadata_readable_read_only(libvirtd):
    conn = libvirtd.open_ro()
    try:
        for g in libvirtd.guests:
            dom = conn.lookupByName(g["name"])
            # libvirt returns the element WITHOUT namespace (XMLDesc keeps prefix and xmlns)
            md = etree.fromstring(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, g["nova_ns"]))
            assert md.tag == "instance"
            assert md.findtext("name") == g["nova_name"]
            assert md.find("owner/project").text == g["tenant_name"]
            assert md.find("owner/project").get("uuid") == g["tenant_uuid"]
            assert md.find("owner/user").text == g["user_name"]
            assert md.find("flavor").get("name") == g["flavor"]["name"]
            assert int(md.findtext("flavor/vcpus")) == g["flavor"]["vcpus"]
            assert f'xmlns:nova="{g["nova_ns"]}"' in dom.XMLDesc(0)
            other = NOVA_NS_1_0 if g["nova_ns"] == NOVA_NS_1_1 else NOVA_NS_1_1
            with pytest.raises(libvirt.libvirtError) as err:
                dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, other)
            assert err.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA
    finally:
        conn.close()


def test_nagios_user_reads_stats_over_read_only_socket(libvirtd):
    proc = run_as_nagios(["virsh", "-r", "-c", libvirtd.uri, "domstats", "--list-active",
                          "--block", "--interface"])
    assert proc.returncode == 0, proc.stderr
    for g in libvirtd.guests:
        assert f"Domain: '{g['name']}'" in proc.stdout
    assert "block.0.wr.bytes=" in proc.stdout and "net.0.rx.bytes=" in proc.stdout
    # the read-write socket is root's only
    rw = run_as_nagios(["virsh", "-c", libvirtd.uri, "version"])
    assert rw.returncode != 0 and "Permission denied" in rw.stderr


def test_nagios_user_reads_stats_with_libvirt_python(libvirtd, installed_plugins):
    # the installed venv (make install), not this checkout's: a checkout under /root is not
    # readable by nagios
    python = os.path.join(os.path.dirname(installed_plugins), "install", "bin", "python")
    code = ("import libvirt; c = libvirt.openReadOnly('qemu:///system'); "
            "print(sorted((d.name(), s['block.0.wr.bytes'] > 0, s['net.0.tx.bytes'] > 0) "
            "for d, s in c.getAllDomainStats(flags=libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)))")
    proc = run_as_nagios([python, "-c", code])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str([(g["name"], True, True) for g in libvirtd.guests])


def test_daemon_stop_keeps_guests_running(libvirtd):
    before = libvirtd.domain_stats()
    qemu_pids = {g["name"]: _qemu_pid(g["name"]) for g in libvirtd.guests}
    with libvirtd.daemon_stopped():
        assert not libvirtd.daemon_running()
        assert not os.path.exists(libvirtd.ro_socket)
        with pytest.raises(libvirt.libvirtError) as err:
            libvirtd.open_ro()
        assert err.value.get_error_code() == libvirt.VIR_ERR_SYSTEM_ERROR
        assert "No such file or directory" in str(err.value)
        for pid in qemu_pids.values():
            os.kill(pid, 0)                      # QEMU survives libvirtd
    assert libvirtd.daemon_running()
    after = libvirtd.domain_stats()              # libvirtd reconnected: same guests, same counters
    assert sorted(after) == sorted(before)
    for name in after:
        assert after[name]["block.0.wr.bytes"] >= before[name]["block.0.wr.bytes"]


def _qemu_pid(name):
    with open(f"/run/libvirt/qemu/{name}.pid") as f:
        return int(f.read())


def test_restart_guest_resets_counters(libvirtd):
    name = "instance-00000002"
    before = wait_until(lambda: (s := libvirtd.domain_stats()[name])["block.0.wr.bytes"] >= 4 << 20 and s,
                        60, f"{name} writing 4 MiB", interval=0.2)
    pid = _qemu_pid(name)
    libvirtd.restart_guest(name)
    assert _qemu_pid(name) != pid
    assert "NLC-READY" in libvirtd.serial_log(name)
    after = libvirtd.domain_stats()[name]
    assert after["state.state"] == libvirt.VIR_DOMAIN_RUNNING
    # counters restarted with the new QEMU process; the ready marker comes after one disk round
    assert 0 < after["block.0.wr.bytes"] < before["block.0.wr.bytes"], (before, after)
    assert after["net.0.tx.bytes"] > 0
