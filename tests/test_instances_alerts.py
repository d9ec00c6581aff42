"""check_libvirt_instances on real QEMU guests: alerts an operator can trust (issue 10).

- A guest paused on an I/O error (its qcow2 on a tmpfs that is full) is CRITICAL by default,
  named with its tenant, the reason and the failing disk; with the shipped NRPE command too.
- A suspended guest (`virsh suspend`) is OK by default, WARNING when asked (paused:user).

The extra guests are transient domains named nlc-ioerr-*, made here from the harness's guest
kernel and initramfs (tests/harness/libvirt: build_guest.sh, domain_xml.py) with little RAM,
shared by the tests of this module and destroyed afterwards, even on failure.
"""
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from tests.checkrun import ROOT, assert_plugin_output, run_check
from tests.conftest import TEST_ROOT, is_root, service_unavailable
from tests.fixtures_libvirt import HARNESS_DIR, URI, WORKDIR

sys.path.insert(0, HARNESS_DIR)
import domain_xml  # noqa: E402  (the harness's guest definitions)

PREFIX = "nlc-ioerr-"
FULL = PREFIX + "full"
SUSPENDED = PREFIX + "suspended"
NRPE_FILE = os.path.join(ROOT, "icinga", "nrpe", "nova-libvirt-checks.cfg")


def _libvirt():
    import libvirt
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _remove_ours(conn):
    libvirt = _libvirt()
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(PREFIX):
            try:
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefine()
            except libvirt.libvirtError:
                pass


def _guest_xml(name, index, workdir, memory_mib, serial_log):
    """The harness's guest (kernel, initramfs doing disk and network I/O, Nova metadata),
    smaller, with a disk that stops the guest on a write error instead of failing the write."""
    guest = {
        "index": index, "name": name, "uuid": f"8f2b7c1e-4a3d-4e5f-9b6a-0c1d2e3fe{index:03d}",
        "nova_ns": domain_xml.NOVA_NS_1_1, "nova_name": "acc-vm", "tenant_name": "nlc-ioerr",
        "tenant_uuid": "10e0000000000000000000000000e001", "user_name": "carol",
        "user_uuid": "ca401000000000000000000000000001",
        "flavor": {"name": "m1.nano", "memory": memory_mib, "disk": 1, "swap": 0, "ephemeral": 0, "vcpus": 1},
        "image_uuid": "6b1e0f3a-2c4d-4e8f-a0b1-c2d3e4f5a6b7",
        "port_uuid": f"e0e0e0e0-0000-4000-8000-000000000{index:03d}", "mac": f"fa:16:3e:4e:0e:{index:02x}",
        "creation_time": "2026-01-01 00:00:00", "nova_package": "27.1.0",
    }
    xml = domain_xml.domain_xml(guest, workdir, os.path.join(WORKDIR, "guest"))
    xml = xml.replace("<driver name='qemu' type='qcow2' cache='none'/>",      # tmpfs has no O_DIRECT
                      "<driver name='qemu' type='qcow2' cache='writeback' error_policy='stop' "
                      "rerror_policy='stop'/>")
    info = domain_xml.guest_info(guest, workdir, os.path.join(WORKDIR, "guest"))
    return xml.replace(info["serial_log"], serial_log), info["disk"]


@pytest.fixture(scope="module")
def io_error_guests(libvirtd):
    """(full, suspended): a guest paused on an I/O error, its qcow2 on a full 4 MiB tmpfs, and
    a guest suspended as `virsh suspend` does. Removed afterwards whatever happens."""
    if not is_root():
        service_unavailable("mounting a tmpfs and creating domains needs root")
    libvirt = _libvirt()
    # QEMU runs as its own user: under the harness's world-readable root, not pytest's 0700 tmp
    os.makedirs(TEST_ROOT, exist_ok=True)
    base = pathlib.Path(tempfile.mkdtemp(prefix=PREFIX, dir=TEST_ROOT))
    os.chmod(base, 0o755)
    mount = base / "disk"
    (mount).mkdir()
    conn = libvirt.open(URI)
    _remove_ours(conn)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "nlc-ioerr", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        service_unavailable(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        os.mkdir(mount / "run")
        xml, disk = _guest_xml(FULL, 120, str(mount), 80, str(base / "full.serial"))
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "64M"], check=True)
        # fill the tmpfs: the guest's first write needs new qcow2 clusters, which cannot be had
        subprocess.run(["dd", "if=/dev/zero", f"of={mount}/filler", "bs=64k"], capture_output=True)
        full = conn.createXML(xml, libvirt.VIR_DOMAIN_START_AUTODESTROY)
        suspended = conn.createXML(f"""<domain type='qemu'><name>{SUSPENDED}</name>
            <uuid>8f2b7c1e-4a3d-4e5f-9b6a-0c1d2e3fe202</uuid><memory unit='MiB'>16</memory>
            <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>
            <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
            <video><model type='none'/></video></devices></domain>""",
            libvirt.VIR_DOMAIN_START_AUTODESTROY)
        suspended.suspend()
        deadline = time.monotonic() + 120
        while full.state(0) != [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR]:
            assert time.monotonic() < deadline, f"{FULL} did not pause on an I/O error: {full.state(0)}"
            time.sleep(0.2)
        yield full, suspended
    finally:
        _remove_ours(conn)
        conn.close()
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def check(tmp_path, *args):
    return run_check("check_libvirt_instances", "--state-dir", str(tmp_path / "state"), *args)


def nrpe_arguments(command):
    """The arguments of `command[NAME]=...` in the shipped NRPE file."""
    with open(NRPE_FILE) as handle:
        for line in handle:
            if line.startswith(f"command[{command}]="):
                return shlex.split(line.split("=", 1)[1])[1:]
    raise AssertionError(f"no command[{command}] in {NRPE_FILE}")


@pytest.mark.parametrize("mode", ["bulk", "per-domain"])
def test_guest_paused_on_io_error_is_critical_by_default(io_error_guests, tmp_path, mode):
    full, _ = io_error_guests
    libvirt = _libvirt()
    # what libvirt says (virsh domstate --reason, virsh domblkerror)
    assert full.state(0) == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR]
    assert full.diskErrors(0) == {"vda": libvirt.VIR_DOMAIN_DISK_ERROR_NO_SPACE}
    result = check(tmp_path, "--domain", f"^{FULL}$", "--stats-mode", mode)
    assert_plugin_output(result, 2)
    assert result.text == ("INSTANCES CRITICAL - 1 of 1 instance over limits: acc-vm (nlc-ioerr) "
                           "paused: I/O error on vda: no space"), result.stdout
    assert re.match(rf"CRITICAL: acc-vm \(nlc-ioerr\) \[{FULL} \S+, paused \(I/O error\)\]: "
                    r"paused: I/O error on vda: no space$", result.lines[1]), result.stdout


def test_shipped_nrpe_command_finds_the_io_error(io_error_guests, tmp_path):
    args = nrpe_arguments("check_libvirt_instances")
    result = check(tmp_path, *args, "--domain", f"^({FULL}|{SUSPENDED})$")
    assert_plugin_output(result, 2)
    assert "1 of 2 instances over limits: acc-vm (nlc-ioerr) paused: I/O error on vda: no space" in result.text


def test_suspended_guest_is_ok_by_default(io_error_guests, tmp_path):
    _, suspended = io_error_guests
    libvirt = _libvirt()
    assert suspended.state(0) == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]
    result = check(tmp_path, "--domain", f"^{SUSPENDED}$")
    assert_plugin_output(result, 0)
    assert "1 instance within limits (1 paused)" in result.text
    assert f"{SUSPENDED}" in result.lines[1] and "paused (user)]" in result.lines[1]
    assert "an alarm only if asked" in result.lines[1]
    asked = check(tmp_path, "--domain", f"^{SUSPENDED}$", "--state-warning", "paused:user")
    assert_plugin_output(asked, 1)
    assert asked.text.startswith(f"INSTANCES WARNING - 1 of 1 instance over limits: {SUSPENDED} (not Nova) "
                                 "paused: user"), asked.text
    # asking for another reason does not catch it
    other = check(tmp_path, "--domain", f"^{SUSPENDED}$", "--state-critical", "paused:migration")
    assert_plugin_output(other, 0)
