"""check_libvirt_instances' pressure metrics on real QEMU guests: disk latency through a slow
disk, CPU delay of a vCPU that shares a host CPU with a busy process, and swap/major-fault rates
only where the guest sends balloon statistics. Every value is compared with getAllDomainStats
deltas read by the test around the check's window (see Window).

Guests of this module (transient, name prefix nlc-metrics-, destroyed at the end even on failure;
the harness's kernel and initrd from tests/harness/libvirt/build_guest.sh, whose /init loops on
vda: 8 x 64 KiB written + fsync, read back with O_DIRECT, 1 s pause):
  nlc-metrics-slowdisk  vda an NBD export of nbdkit's memory plugin behind its delay filter
                        (150 ms per read and per write), on a unix socket;
                        a balloon without a stats period (libvirt keeps showing the guest's
                        figures of boot, never updated); user-mode network (no tap)
  nlc-metrics-busy      a raw file disk, `idle=poll` on the kernel command line so that its vCPU
                        is always runnable (it costs a host CPU while it lives: only the tests
                        that need it start it); balloon statistics every second
The ordinary guest is the harness's web-01 (qcow2 on the host's disk), only read.
"""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.checkrun import assert_plugin_output, run_check
from tests.conftest import is_root, service_unavailable
from tests.fixtures_libvirt import HARNESS_DIR, URI, open_ro

from nova_libvirt_checks.rates import STALE_GUEST_STATS, rates, slowest_disk

sys.path.insert(0, HARNESS_DIR)
import domain_xml  # noqa: E402  (the harness's domain builder)

DELAY_MS = 150
SLOW, BUSY, ORDINARY = "nlc-metrics-slowdisk", "nlc-metrics-busy", "instance-00000001"
NAMES = "^(nlc-metrics-(slowdisk|busy)|instance-00000001)$"


# ---------------------------------------------------------------- guests

def _guest_xml(name, workdir, guestdir, disk, balloon_period, extra_cmdline=""):
    """The harness's guest (its builder, its kernel and initramfs in `guestdir`), 128 MiB, on
    QEMU's user-mode network."""
    return domain_xml.build_domain(
        name, guestdir, memory_mib=128, disk=disk, nic=domain_xml.user_nic(),
        cmdline=domain_xml.guest_cmdline("10.0.2.15", "10.0.2.2", extra=extra_cmdline),
        serial=domain_xml.file_console(os.path.join(workdir, name + ".serial")),
        balloon_period=balloon_period)


def slow_guest_xml(workdir, guestdir, socket):
    return _guest_xml(SLOW, workdir, guestdir, domain_xml.nbd_disk(socket), balloon_period=None)


def busy_guest_xml(workdir, guestdir, image):
    return _guest_xml(BUSY, workdir, guestdir, domain_xml.file_disk(image, "raw"), balloon_period=1,
                      extra_cmdline="idle=poll")


def harness_guestdir(libvirtd):
    """Where the harness's kernel and initramfs are (the standing guests boot them too)."""
    return os.path.dirname(libvirtd.guest("web-01")["kernel"])


@contextlib.contextmanager
def _running(xml, name, workdir):
    """A transient domain, up once its /init printed NLC-READY; destroyed (so gone) afterwards,
    on a fresh connection: libvirtd may have been restarted meanwhile (fault tests)."""
    _destroy(name)                                   # left over from an interrupted run
    try:
        conn = _connect()
        try:
            conn.createXML(xml, 0)     # may fail yet start the domain (libvirtd restarting)
        finally:
            conn.close()
        serial = os.path.join(workdir, name + ".serial")
        deadline = time.monotonic() + 120
        while not _ready(serial):
            assert time.monotonic() < deadline, f"{name} not ready in 120 s:\n{_tail(serial)}"
            time.sleep(0.2)
        yield name
    finally:
        _destroy(name)


def _connect():
    import libvirt
    libvirt.registerErrorHandler(lambda *_: None, None)
    return libvirt.open(URI)


def _destroy(name, patience=60):
    """Destroy the domain if it exists, waiting out a libvirtd restart."""
    import libvirt
    deadline = time.monotonic() + patience
    while True:
        try:
            conn = _connect()
            try:
                conn.lookupByName(name).destroy()
            finally:
                conn.close()
            return
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _ready(path):
    with contextlib.suppress(FileNotFoundError):
        with open(path, errors="replace") as handle:
            return "NLC-READY" in handle.read()
    return False


def _tail(path):
    with contextlib.suppress(FileNotFoundError):
        with open(path, errors="replace") as handle:
            return handle.read()[-2000:]
    return "(no serial log)"


@pytest.fixture(scope="module")
def workdir(libvirtd):
    if not is_root():
        service_unavailable("guests of their own need root (a read-write libvirt connection)")
    if not shutil.which("nbdkit"):
        service_unavailable("nbdkit is not installed (Makefile APT_SERVICES)")
    path = tempfile.mkdtemp(prefix="nlc-metrics-", dir="/var/tmp")
    os.chmod(path, 0o755)            # QEMU runs as libvirt-qemu
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def slow_guest(libvirtd, workdir):
    socket = os.path.join(workdir, "slow.sock")
    nbdkit = subprocess.Popen(["nbdkit", "--foreground", "--exit-with-parent", "--unix", socket,
                               "--filter=delay", "memory", "64M", f"rdelay={DELAY_MS}ms",
                               f"wdelay={DELAY_MS}ms"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(socket):
            assert nbdkit.poll() is None, nbdkit.stderr.read().decode(errors="replace")
            assert time.monotonic() < deadline, "nbdkit did not create its socket in 20 s"
            time.sleep(0.05)
        os.chmod(socket, 0o666)      # connecting needs write permission; QEMU is libvirt-qemu
        xml = slow_guest_xml(workdir, harness_guestdir(libvirtd), socket)
        with _running(xml, SLOW, workdir) as name:
            yield name
    finally:
        nbdkit.kill()
        nbdkit.wait()


@pytest.fixture(scope="module")
def busy_guest(libvirtd, workdir):
    image = os.path.join(workdir, "busy.raw")
    with open(image, "wb") as handle:
        handle.truncate(64 * 2**20)
    xml = busy_guest_xml(workdir, harness_guestdir(libvirtd), image)
    with _running(xml, BUSY, workdir) as name:
        yield name


# ---------------------------------------------------------------- independent measurement

def raw_stats():
    """(monotonic time, {name: getAllDomainStats record}) of the running domains."""
    conn = open_ro()
    try:
        before = time.monotonic()
        records = conn.getAllDomainStats(flags=0x1)       # VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
        return (before + time.monotonic()) / 2, {dom.name(): stats for dom, stats in records}
    finally:
        conn.close()


class Window:
    """The check's window bracketed by independent samples: `outer` from before its baseline run
    to after its measuring run, `inner` from after the first to before the second. Whatever
    moment within a run the check read its counters, its deltas lie between the inner and the
    outer ones: a ratio of two deltas lies between inner/outer and outer/inner."""

    def __init__(self):
        self.samples = [raw_stats()]

    def mark(self):
        self.samples.append(raw_stats())

    def _delta(self, name, key_of, pair):
        (_, old), (_, new) = pair
        return sum(new[name].get(k, 0) - old[name].get(k, 0) for k in key_of(new[name]))

    def bounds(self, name, numerator, denominator, scale=1.0):
        """(low, high) of numerator/denominator deltas (functions of a record giving its keys;
        denominator None: the elapsed seconds)."""
        outer, inner = (self.samples[0], self.samples[-1]), (self.samples[1], self.samples[-2])
        num = [self._delta(name, numerator, pair) for pair in (inner, outer)]
        if denominator is None:
            den = [inner[1][0] - inner[0][0], outer[1][0] - outer[0][0]]
        else:
            den = [self._delta(name, denominator, pair) for pair in (inner, outer)]
        assert den[0] > 0, f"{name}: nothing happened in the window"
        return num[0] / den[1] * scale, num[1] / den[0] * scale

    def delta(self, name, key):
        return self.samples[-1][1][name].get(key, 0) - self.samples[0][1][name].get(key, 0)


def block_keys(kind):
    return lambda record: [f"block.{i}.{kind}" for i in range(record.get("block.count", 0))]


def vcpu_delay_keys(record):
    return [f"vcpu.{i}.delay" for i in range(record.get("vcpu.maximum", 0))]


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def check(state_dir, *args):
    """The check on this module's guests; --min-window 1: its window is the one between two
    runs a few seconds apart (Window), not an in-run baseline."""
    return run_check("check_libvirt_instances", "--state-dir", state_dir, "--min-window", "1",
                     "--domain", NAMES, *args)


def label_of(result, domain):
    line = next(line for line in result.lines if f"[{domain} " in line)
    uuid = line.split(f"[{domain} ", 1)[1].split(",")[0]
    prefix = next(k.rsplit(".", 1)[0] for k in result.perfdata if k.endswith("_" + uuid.replace("-", "")[:8] + ".cpu"))
    return prefix, line


def values_of(result, domain):
    prefix, line = label_of(result, domain)
    return {k.rsplit(".", 1)[1]: v for k, v in result.values().items() if k.startswith(prefix + ".")}, line


def measure(state_dirs, settle, *args):
    """Baseline runs, `settle()` (waits while the guests work), measuring runs; the window."""
    window = Window()
    for state_dir, extra in state_dirs:
        assert_plugin_output(check(state_dir, "--interval", "0", *extra, *args))
    window.mark()
    settle(window)
    window.mark()
    results = [check(state_dir, "-v", *extra, *args) for state_dir, extra in state_dirs]
    window.mark()
    for result in results:
        assert_plugin_output(result, 0)
    return window, results


def within(value, bounds, slack=0.02):
    low, high = bounds
    return low * (1 - slack) - 1e-3 <= value <= high * (1 + slack) + 1e-3


# ---------------------------------------------------------------- tests

def test_slow_disk_latency_is_the_delay_and_an_ordinary_disk_far_below(slow_guest, tmp_path):
    modes = [(str(tmp_path / "bulk"), ["--stats-mode", "bulk"]),
             (str(tmp_path / "per-domain"), ["--stats-mode", "per-domain"])]

    def settle(window):
        start = window.samples[-1][1][SLOW]
        keys = block_keys("wr.reqs")(start)
        wait_for(lambda: sum(raw_stats()[1][SLOW][k] - start[k] for k in keys) >= 2, 30,
                 "two writes to the slow disk")

    window, results = measure(modes, settle)
    for result in results:
        slow, line = values_of(result, SLOW)
        ordinary, _ = values_of(result, ORDINARY)
        for metric, kind in (("disk_read_latency", "rd"), ("disk_write_latency", "wr"),
                             ("disk_flush_latency", "fl")):
            for name, values in ((SLOW, slow), (ORDINARY, ordinary)):
                bounds = window.bounds(name, block_keys(f"{kind}.times"), block_keys(f"{kind}.reqs"), 1e-6)
                assert within(values[metric], bounds), (name, metric, values[metric], bounds, result.stdout)
        for metric in ("disk_read_latency", "disk_write_latency"):
            assert DELAY_MS * 0.8 <= slow[metric] <= DELAY_MS * 1.2, (metric, slow, line)
            assert ordinary[metric] < DELAY_MS / 10, (metric, ordinary)
        assert "slowest disk vda: read 1" in line and " ms, write 1" in line, line
        assert "disk read latency 1" in line
    bulk, per_domain = (values_of(r, SLOW)[0] for r in results)
    assert "cpu_delay" in bulk and "cpu_delay" not in per_domain      # vcpu.N.delay: bulk stats only


@contextlib.contextmanager
def sharing_one_host_cpu(name, seconds):
    """The named domain's vCPU threads (read from /proc: QEMU names them "CPU N/TCG") and a busy
    process, niced to -10 so that it wins most of the CPU (about 90 % against a vCPU in
    libvirt's cgroup of weight 1024), pinned to the same host CPU; the
    threads' affinity restored and the busy process group killed afterwards (it ends by itself
    after `seconds` anyway)."""
    with open(f"/run/libvirt/qemu/{name}.pid") as handle:
        pid = int(handle.read())
    threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")
               if open(f"/proc/{pid}/task/{t}/comm").read().startswith("CPU ")]
    assert threads, f"no vCPU thread in QEMU process {pid}"
    cpu = max(os.sched_getaffinity(0))
    before = {t: os.sched_getaffinity(t) for t in threads}
    busy = None
    try:
        for thread in threads:
            os.sched_setaffinity(thread, {cpu})
        busy = subprocess.Popen(["timeout", str(seconds), "nice", "-n", "-10", "taskset", "-c", str(cpu),
                                 "sh", "-c", "while :; do :; done"], start_new_session=True)
        # with autogroups (Debian's default), a task's nice counts only within its session's
        # group: the new session's group gets the nice
        with contextlib.suppress(FileNotFoundError):
            with open(f"/proc/{busy.pid}/autogroup", "w") as handle:
                handle.write("-10")
        yield
    finally:
        if busy:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(busy.pid, signal.SIGKILL)      # timeout and its child, the loop
            busy.wait()
        for thread, cpus in before.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(thread, cpus)


def test_cpu_delay_rises_when_the_vcpu_shares_a_host_cpu(busy_guest, tmp_path):
    delays = {}
    for phase in ("alone", "sharing"):
        state_dir = str(tmp_path / phase)
        sharing = sharing_one_host_cpu(busy_guest, 30) if phase == "sharing" else contextlib.nullcontext()
        with sharing:
            window, (result,) = measure([(state_dir, [])], lambda window: time.sleep(3))
        values, line = values_of(result, BUSY)
        bounds = window.bounds(BUSY, vcpu_delay_keys, None, 100 / 1e9)
        assert within(values["cpu_delay"], bounds), (phase, values["cpu_delay"], bounds, line)
        assert "CPU delay" in line
        delays[phase] = values["cpu_delay"]
    assert delays["sharing"] >= 80 and delays["sharing"] >= delays["alone"] + 15, delays


def test_swap_and_faults_only_from_guests_that_send_balloon_statistics(slow_guest, busy_guest, tmp_path):
    """Last in this module: the slow guest's figures of boot must be older than the sampler's
    limit for live statistics (STALE_GUEST_STATS, 60 s) first."""
    boot_figures = raw_stats()[1][SLOW]["balloon.last-update"]
    wait_for(lambda: time.time() - boot_figures > STALE_GUEST_STATS + 1, STALE_GUEST_STATS + 30,
             "the slow guest's balloon figures of boot to age")
    state_dir = str(tmp_path / "state")
    window, (result,) = measure([(state_dir, [])], lambda window: wait_for(
        lambda: raw_stats()[1][BUSY]["balloon.last-update"] - window.samples[-1][1][BUSY]["balloon.last-update"] >= 2,
        20, "two balloon statistics updates of the busy guest"))
    busy, _ = values_of(result, BUSY)
    seconds = window.bounds(BUSY, lambda r: ["balloon.last-update"], None)
    assert seconds[1] > 0
    for metric, key, factor in (("mem_swap_in", "balloon.swap_in", 1024), ("mem_swap_out", "balloon.swap_out", 1024),
                                ("mem_major_faults", "balloon.major_fault", 1)):
        assert metric in busy, (metric, result.stdout)
        bounds = window.bounds(BUSY, lambda r, k=key: [k], lambda r: ["balloon.last-update"], factor)
        assert within(busy[metric], bounds), (metric, busy[metric], bounds)
    # libvirt still shows the slow guest's figures of boot, never updated: no rates from them
    slow, line = values_of(result, SLOW)
    assert "balloon.swap_in" in window.samples[-1][1][SLOW]
    assert window.delta(SLOW, "balloon.last-update") == 0
    assert not {"mem_swap_in", "mem_swap_out", "mem_major_faults"} & set(slow), line
    assert "swap in" not in line and "major faults" not in line


def test_slowest_disk_is_the_one_with_the_longest_average_request():
    """Arithmetic only (the guests above have one disk each)."""
    class Sample:
        id, time = 7, 12.0
        counters = {"disk:vda:rd_ops": 110, "disk:vda:rd_times": 1_000_000 + 100 * 2_000_000,
                    "disk:vdb:rd_ops": 12, "disk:vdb:rd_times": 2 * 150_000_000,
                    "disk:vdb:wr_ops": 5, "disk:vdb:wr_times": 4 * 100_000_000,
                    "disk:vdc:rd_ops": 50, "disk:vdc:rd_times": 0}
    previous = {"t": 10.0, "id": 7, "c": {"disk:vda:rd_ops": 10, "disk:vda:rd_times": 1_000_000,
                                          "disk:vdb:rd_ops": 10, "disk:vdb:rd_times": 0,
                                          "disk:vdb:wr_ops": 1, "disk:vdb:wr_times": 0,
                                          "disk:vdc:rd_ops": 50, "disk:vdc:rd_times": 0}}
    assert slowest_disk(previous, Sample()) == ("vdb", {"disk_read_latency": 150.0, "disk_write_latency": 100.0})
    assert slowest_disk({**previous, "c": Sample.counters}, Sample()) is None


def test_a_guest_reboot_loses_only_the_swap_rates():
    """Arithmetic only: the guest's own counters start again when it reboots inside the same
    QEMU (same libvirt id); the host's counters go on."""
    now = int(time.time())

    class Sample:
        id, time = 7, 12.0
        counters = {"cpu": 3_000_000_000, "disk:vda:rd_bytes": 5000, "cpu_delay": 600_000_000,
                    "mem:swap_in": 0, "mem:major_fault": 3, "mem:last_update": now}
    previous = {"t": 10.0, "id": 7, "c": {"cpu": 1_000_000_000, "disk:vda:rd_bytes": 1000, "cpu_delay": 0,
                                          "mem:swap_in": 4096, "mem:major_fault": 900,
                                          "mem:last_update": now - 10}}
    assert rates(previous, Sample(), 1) == {"cpu": 100.0, "disk_read_bytes": 2000.0, "cpu_delay": 30.0}
    later = {**previous, "c": {**previous["c"], "mem:swap_in": 0, "mem:major_fault": 1}}
    assert rates(later, Sample(), 1)["mem_major_faults"] == 0.2


def test_the_test_driver_gives_no_latency_delay_or_swap(tmp_path):
    """libvirt's test driver: no blockStatsFlags, no vCPU delay, balloon figures that never
    change (last_update fixed): the pressure metrics are absent, not 0."""
    state_dir = str(tmp_path / "state")
    run_check("check_libvirt_instances", "-U", "test:///default", "--state-dir", state_dir, "--interval", "0")
    result = run_check("check_libvirt_instances", "-U", "test:///default", "--state-dir", state_dir)
    assert_plugin_output(result, 0)
    metrics = {label.rsplit(".", 1)[1] for label in result.perfdata if "." in label}
    assert "disk_read_bytes" in metrics and "cpu" in metrics
    assert not metrics & {"disk_read_latency", "disk_write_latency", "disk_flush_latency", "cpu_delay",
                          "mem_swap_in", "mem_swap_out", "mem_major_faults"}, metrics


def test_pnp4nagios_draws_the_pressure_metrics_with_their_thresholds(libvirtd, icinga_tools, tmp_path):
    """The PNP stand-in of tests/test_icinga.py (one RRD per label, our template run by php-cli,
    rrdtool drawing): every label on a graph, latency thresholds in ms, cpu_delay in %."""
    from tests.test_icinga import ICINGA, Pnp, assert_graphed, ensure_php
    ensure_php()
    state_dir = str(tmp_path / "state")
    harness_guests = ("--state-dir", state_dir, "--min-window", "1", "--domain", "^instance-0000000[12]$")
    assert_plugin_output(run_check("check_libvirt_instances", "--interval", "0", *harness_guests))
    start = raw_stats()[1][ORDINARY]
    wait_for(lambda: all(raw_stats()[1][ORDINARY][k] > start[k]
                         for k in ("block.0.rd.reqs", "block.0.wr.reqs", "block.0.fl.reqs")), 20,
             "a read, a write and a flush of the ordinary guest")
    result = run_check("check_libvirt_instances", "-w", "disk_write_latency=20", "-c", "cpu_delay=30",
                       *harness_guests)
    assert_plugin_output(result, 0)
    perf = result.status_line.split(" | ", 1)[1]
    now = int(time.time())
    line = "\t".join(f"{key}::{value}" for key, value in (
        ("DATATYPE", "SERVICEPERFDATA"), ("TIMET", now), ("HOSTNAME", "compute"),
        ("SERVICEDESC", "libvirt-instances"), ("SERVICEPERFDATA", perf),
        ("SERVICECHECKCOMMAND", "libvirt_instances"), ("SERVICESTATE", "OK")))
    pnp = Pnp(str(tmp_path / "perfdata"), os.path.join(ICINGA, "pnp4nagios", "check_commands"),
              os.path.join(ICINGA, "pnp4nagios", "templates"))
    out = tmp_path / "graphs"
    out.mkdir()
    rendered = assert_graphed(pnp, line, str(out), [now - 600 + 60 * k for k in range(10)])
    titles = rendered["ds_name"]
    for title in ("by instance: disk read latency", "by instance: disk write latency",
                  "by instance: disk flush latency", "by instance: CPU delay (runnable, waiting for a host CPU)",
                  "by instance: swap in", "by instance: major page faults",
                  "total: CPU delay of instances (% of the host's CPUs)", "total: swap, all instances"):
        assert title in titles, (title, titles)
    joined = " ".join(rendered["def"])
    assert 'HRULE:20#FFC000:"warning above 20 ms' in joined
    assert 'HRULE:30#FF0000:"critical above 30%' in joined
