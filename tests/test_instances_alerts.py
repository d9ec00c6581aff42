"""check_libvirt_instances on real QEMU guests: alerts an operator can trust (issue 10).

- A guest paused on an I/O error (its qcow2 on a tmpfs that is full) is CRITICAL by default,
  named with its tenant, the reason and the failing disk; with the shipped NRPE command too.
- A suspended guest (`virsh suspend`) is OK by default, WARNING when asked (paused:user).
- Services with different selections, run a moment apart on one state file, and an operator's
  manual run: every rate covers at least --min-window and matches an independent measurement.

The extra guests are transient domains named nlc-ioerr-*, made here from the harness's guest
kernel and initramfs (tests/harness/libvirt: build_guest.sh, domain_xml.py) with little RAM,
shared by the tests of this module and destroyed afterwards, even on failure.
"""
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
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


# ---------------------------------------------------------------- honest windows

class IndependentSampler(threading.Thread):
    """getAllDomainStats of the harness's guests every ~40 ms on its own connection, each
    record stamped with time.monotonic() (the check's clock) at the middle of the call."""
    GROUPS = ("VIR_DOMAIN_STATS_CPU_TOTAL", "VIR_DOMAIN_STATS_VCPU", "VIR_DOMAIN_STATS_INTERFACE",
              "VIR_DOMAIN_STATS_BLOCK")

    def __init__(self, uuids):
        super().__init__(daemon=True)
        self.uuids = uuids
        self.series = {uuid: [] for uuid in uuids}       # uuid -> [(t, {metric: total})]
        self.stop = threading.Event()
        self.failure = None

    def run(self):
        libvirt = _libvirt()
        conn = libvirt.openReadOnly(URI)
        groups = 0
        for name in self.GROUPS:
            groups |= getattr(libvirt, name)
        try:
            doms = [conn.lookupByUUIDString(uuid) for uuid in self.uuids]
            while not self.stop.is_set():
                before = time.monotonic()
                records = conn.domainListGetStats(doms, groups, 0)
                when = (before + time.monotonic()) / 2
                for dom, record in records:
                    self.series[dom.UUIDString()].append((when, self.totals(record)))
                time.sleep(0.04)
        except Exception as exc:        # noqa: BLE001 - reported by the test
            self.failure = exc
        finally:
            conn.close()

    @staticmethod
    def totals(record):
        def total(kind, *fields):
            return sum(record.get(f"{kind}.{i}.{f}", 0) for i in range(record.get(f"{kind}.count", 0))
                       for f in fields)
        return {"cpu": record["cpu.time"], "vcpus": record["vcpu.current"],
                "disk_read_bytes": total("block", "rd.bytes"), "disk_write_bytes": total("block", "wr.bytes"),
                "disk_read_ops": total("block", "rd.reqs"), "disk_write_ops": total("block", "wr.reqs"),
                "net_rx_bytes": total("net", "rx.bytes"), "net_tx_bytes": total("net", "tx.bytes"),
                "net_rx_packets": total("net", "rx.pkts"), "net_tx_packets": total("net", "tx.pkts"),
                "net_errors": total("net", "rx.errs", "tx.errs"), "net_drops": total("net", "rx.drop", "tx.drop")}

    def at(self, uuid, when):
        """Every total linearly interpolated at `when` between the samples around it."""
        series = self.series[uuid]
        for (t0, v0), (t1, v1) in zip(series, series[1:]):
            if t0 <= when <= t1:
                share = (when - t0) / (t1 - t0) if t1 > t0 else 0
                return {k: v0[k] + (v1[k] - v0[k]) * share for k in v0}
        raise AssertionError(f"no independent samples around t={when:.3f} for {uuid}")

    def around(self, uuid, when):
        """The independent samples just before and just after `when`."""
        series = self.series[uuid]
        for (t0, v0), (t1, v1) in zip(series, series[1:]):
            if t0 <= when <= t1:
                return v0, v1
        raise AssertionError(f"no independent samples around t={when:.3f} for {uuid}")

    def rates(self, uuid, start, end):
        """{metric: (interpolated, lowest, highest)} per second over [start, end]: interpolated
        between the samples around each end, and the bounds the samples around them allow
        (counters only grow: a burst of I/O between two samples falls on either side)."""
        (a0, a1), (b0, b1) = self.around(uuid, start), self.around(uuid, end)
        a, b = self.at(uuid, start), self.at(uuid, end)
        window = end - start
        result = {}
        for k in a:
            if k == "vcpus":
                continue
            scale = window * (1e9 * b["vcpus"] / 100 if k == "cpu" else 1)
            result[k] = ((b[k] - a[k]) / scale, (b0[k] - a1[k]) / scale, (b1[k] - a0[k]) / scale)
        return result


def _stored_times(state_dir):
    """{uuid: [sample time]} of every sample in the check's state file."""
    paths = [os.path.join(state_dir, n) for n in os.listdir(state_dir) if n.endswith(".json")]
    with open(paths[0]) as handle:
        document = json.load(handle)
    times = {uuid: [e["t"] for e in entries] for uuid, entries in document.get("history", {}).items()}
    for uuid, entry in document["samples"].items():
        times.setdefault(uuid, []).append(entry["t"])
    return times, {uuid: entry["t"] for uuid, entry in document["samples"].items()}


def test_interleaved_selections_keep_honest_windows(libvirtd, tmp_path):
    """Two services with different selections (--tenant acme, --tenant beta) 0.3 s apart, five
    rounds, and an operator's manual run in between (a third selection: both guests by
    --domain), all sharing one state file: every rate covers at least --min-window and is
    within +-50 % of getAllDomainStats over the same window (its ends read from the state
    file: the check's own samples). Every run selects only the harness's two guests, so other
    domains on the host (this module's I/O-error guest, other tests') cannot change its outcome."""
    min_window = 4.0
    state_dir = str(tmp_path / "state")
    guests = {g["uuid"]: g for g in libvirtd.guests}
    ours = ("--domain", "^(" + "|".join(re.escape(g["name"]) for g in libvirtd.guests) + ")$")
    sampler = IndependentSampler(sorted(guests))
    sampler.start()
    time.sleep(0.3)
    runs = []

    def run(*selection):
        before, _ = _stored_times(state_dir) if os.path.isdir(state_dir) else ({}, {})
        result = check(tmp_path, "-v", "--top", "20", "--min-window", f"{min_window:g}", *selection)
        assert_plugin_output(result, 0)
        _, latest = _stored_times(state_dir)
        runs.append((selection, result, before, latest))

    try:
        for round_number in range(5):
            started = time.monotonic()
            run(*ours, "--tenant", "^acme$")
            time.sleep(0.3)
            run(*ours, "--tenant", "^beta$")
            if round_number == 2:
                time.sleep(1.1)
                run(*ours)                              # the operator, by hand
            time.sleep(max(0.0, started + min_window + 0.5 - time.monotonic()))
        time.sleep(0.3)
    finally:
        sampler.stop.set()
        sampler.join()
    assert sampler.failure is None, sampler.failure

    checked, deviations, windows = 0, {}, []
    for number, (selection, result, before, latest) in enumerate(runs):
        for line in result.lines[1:]:
            match = re.match(r"OK: (\S+) \((\w+)\) \[\S+ (\S+), running\]: .*; rates over ([\d.]+) s(?:;|$)", line)
            if not match:
                continue
            name, _tenant, uuid, window = match.group(1), match.group(2), match.group(3), float(match.group(4))
            end = latest[uuid]
            start = min(before.get(uuid, []), key=lambda t: abs(end - window - t), default=None)
            if start is None or abs(end - window - start) > 0.006:
                # not against a stored sample: only a service's first run may sample twice itself
                assert number < 2 and window < min_window, (line, before.get(uuid))
                continue
            assert end - start >= min_window, line
            windows.append(end - start)
            independent = sampler.rates(uuid, start, end)
            prefix = f"{name}_{uuid.replace('-', '')[:8]}."
            values = {label[len(prefix):]: value for label, value in result.values().items()
                      if label.startswith(prefix) and label[len(prefix):] in independent}
            assert len(values) == len(independent), (values, independent)
            for metric, value in values.items():
                truth, lowest, highest = independent[metric]
                if truth:
                    deviations.setdefault(metric, []).append(abs(value - truth) / truth)
                # within +-50 % of what the independent samples around the window's ends allow
                assert 0.5 * lowest - 0.1 <= value <= 1.5 * highest + 0.1, (
                    f"run {number} {selection} {name} {metric}: check {value} vs getAllDomainStats "
                    f"{truth:.2f} ({lowest:.2f}..{highest:.2f}) over {end - start:.2f} s")
            checked += 1
    assert windows, "no instance window compared:\n" + "\n".join(r.stdout for _, r, _, _ in runs)
    print(f"{checked} windows of {min(windows):.2f}-{max(windows):.2f} s; largest deviation from "
          "getAllDomainStats: " + ", ".join(f"{m} {max(d):.1%}" for m, d in deviations.items()))
    assert checked >= 2 * 4 + 2, f"only {checked} instance windows compared"
