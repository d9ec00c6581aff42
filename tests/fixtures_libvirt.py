"""Real libvirtd with QEMU guests for the tests (pytest plugin, listed in tests/conftest.py).

The daemon and the guests are managed by tests/harness/libvirt/start and .../stop (bash, usable
by hand too: `make sandbox`); this module drives those scripts. They run as root, without systemd:

    virtlogd + libvirtd (our libvirtd.conf: read-only socket /run/libvirt/libvirt-sock-ro open to
    every user without auth, read-write socket root only), pid files and libvirtd.log in
    WORKDIR/run; two TCG guests (see tests/harness/libvirt/domain_xml.py) doing continuous disk
    I/O (~0.5 MB/s read + write on vda) and network I/O (~6 kB/s each way on their tap):
      instance-00000001  nova:name web-01, project acme, user alice, Nova namespace 1.1
      instance-00000002  nova:name db-01,  project beta, user bob,   Nova namespace 1.0

WORKDIR is $NLC_LIBVIRT_WORKDIR or /var/tmp/nlc-test/libvirt. The daemon and guests are left
running after the session (reruns take < 1 s); NLC_LIBVIRT_STOP_AT_END=1 stops them at the end.

Fixtures
    libvirtd (session) -> LibvirtHarness     daemon + guests running, or service_unavailable()
    libvirtd_down (function) -> LibvirtHarness   libvirtd stopped for the test (guests keep
                                                 running), started again afterwards; tests
                                                 that use it one after another share one stop

LibvirtHarness attributes: uri ("qemu:///system"), ro_socket, rw_socket, workdir, guests (list
of dicts from WORKDIR/guests.json: name, uuid, nova_name, nova_ns, nova_version, tenant_name,
tenant_uuid, user_name, user_uuid, flavor{name,memory,disk,swap,ephemeral,vcpus}, tap, mac,
host_ip, guest_ip, disk_target, disk, serial_log, ...), harness_dir.
LibvirtHarness methods (module-level functions of the same names exist too):
    guest(name) -> dict                 by libvirt name, nova name or uuid
    daemon_running() -> bool            libvirtd answers on the read-only socket
    stop_daemon()                       stop libvirtd only (see below)
    start_daemon()                      start libvirtd again (reconnects to the running guests)
    daemon_stopped()                    context manager: stop_daemon() ... start_daemon()
    restart_guest(name) -> dict         destroy + start; returns when the guest is ready again:
                                        new QEMU process, so its block/net counters restarted
                                        from zero (small but non-zero on return)
    destroy_guest(name)                 power off (stays defined: state "shut off"); ensure()
                                        or restart_guest() brings it back
    ensure()                            run the start script again (idempotent, < 1 s if all runs)
    open_ro() -> libvirt.virConnect     read-only connection (close it, or use `with`)
    domain_stats(active_only=True) -> {name: stats}   getAllDomainStats() of our guests
    serial_log(name) -> str
run_as_nagios(argv, env=None, timeout=60, cwd="/") -> CompletedProcess   argv as user nagios
                                    (tests/helpers.py, imported here for the tests)

Why stop_daemon() stops only libvirtd: that is what happens on a compute node when libvirtd
dies or is restarted. QEMU processes survive it and the next libvirtd reconnects to them, so the
guests keep running and their counters keep growing. While it is down, the sockets are gone:
clients fail with VIR_ERR_SYSTEM_ERROR (38) "Failed to connect socket to
'/var/run/libvirt/libvirt-sock-ro': No such file or directory". Stopping it takes ~1 s,
starting it again ~0.3 s.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time

import pytest

from tests.conftest import is_root, service_unavailable
from tests.helpers import SYSTEM_PATH, run_as_nagios  # noqa: F401 - run_as_nagios: for the tests

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS_DIR = os.path.join(HERE, "harness", "libvirt")
START = os.path.join(HARNESS_DIR, "start")
STOP = os.path.join(HARNESS_DIR, "stop")
WORKDIR = os.environ.get("NLC_LIBVIRT_WORKDIR", "/var/tmp/nlc-test/libvirt")
URI = "qemu:///system"
RO_SOCKET = "/run/libvirt/libvirt-sock-ro"
RW_SOCKET = "/run/libvirt/libvirt-sock"
NOVA_NS_1_1 = "http://openstack.org/xmlns/libvirt/nova/1.1"
NOVA_NS_1_0 = "http://openstack.org/xmlns/libvirt/nova/1.0"
READY_MARKER = "NLC-READY"
STOP_AT_END = os.environ.get("NLC_LIBVIRT_STOP_AT_END", "").lower() in ("1", "true", "yes")


class HarnessError(RuntimeError):
    """A harness script failed; the message carries its output."""


def _script_env() -> dict:
    env = dict(os.environ)
    env["NLC_LIBVIRT_WORKDIR"] = WORKDIR
    env["PATH"] = SYSTEM_PATH + ":" + env.get("PATH", "")
    return env


def _run_script(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=_script_env(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise HarnessError(f"{' '.join(argv)} timed out after {timeout} s\n"
                           f"--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}") from None
    if proc.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed (exit {proc.returncode})\n"
                           f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
    return proc


def _virsh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-q", "-c", URI, *args], capture_output=True, text=True,
                          timeout=timeout, env=_script_env(), stdin=subprocess.DEVNULL)


# ------------------------------------------------------------------------------ functions
def start_harness(timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the start script (idempotent): daemons + guests running and ready."""
    return _run_script([START], timeout)


def stop_harness(timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the stop script: guests destroyed and undefined, our daemons stopped."""
    return _run_script([STOP], timeout)


def daemon_running(timeout: float = 10) -> bool:
    """libvirtd answers on the read-only socket (what an unprivileged check sees)."""
    if not os.path.exists(RO_SOCKET):
        return False
    try:
        return subprocess.run(["virsh", "-r", "-c", URI, "version"], capture_output=True,
                              timeout=timeout, env=_script_env(),
                              stdin=subprocess.DEVNULL).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def stop_daemon(timeout: float = 120) -> None:
    """Stop libvirtd only (ours). The guests' QEMU processes keep running; the sockets are
    removed. Raises HarnessError if libvirtd was not started by the harness."""
    _run_script([STOP, "--daemon-only"], timeout)


def start_daemon(timeout: float = 300) -> None:
    """Start virtlogd/libvirtd if they are down and wait until libvirtd answers; it reconnects
    to the guests that kept running."""
    _run_script([START, "--daemon-only"], timeout)


def load_guests(workdir: str = WORKDIR) -> list[dict]:
    with open(os.path.join(workdir, "guests.json")) as f:
        return json.load(f)


def guest(name: str, workdir: str = WORKDIR) -> dict:
    """A guest's dict by libvirt name, nova name or uuid."""
    for g in load_guests(workdir):
        if name in (g["name"], g["nova_name"], g["uuid"]):
            return g
    raise KeyError(name)


def destroy_guest(name: str) -> None:
    """Power a guest off (it stays defined, state 'shut off')."""
    g = guest(name)
    proc = _virsh("destroy", g["name"])
    if proc.returncode != 0 and "not running" not in proc.stderr:
        raise HarnessError(f"virsh destroy {g['name']}: {proc.stderr.strip()}")


def restart_guest(name: str, timeout: float = 300) -> dict:
    """Destroy + start a guest; returns (its dict) once it printed its ready marker again.
    It is a new QEMU process: block/net/cpu counters restarted from zero."""
    g = guest(name)
    destroy_guest(g["name"])
    start_harness(timeout)
    return g


def serial_log(name: str) -> str:
    with open(guest(name)["serial_log"], errors="replace") as f:
        return f.read()


def open_ro(uri: str = URI):
    """A read-only libvirt connection (libvirt-python), libvirt's stderr error printing off."""
    import libvirt
    libvirt.registerErrorHandler(lambda *a: None, None)
    return libvirt.openReadOnly(uri)


def domain_stats(active_only: bool = True, workdir: str = WORKDIR) -> dict[str, dict]:
    """{libvirt name: getAllDomainStats() dict} for our guests, over the read-only socket."""
    import libvirt
    ours = {g["name"] for g in load_guests(workdir)}
    flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE if active_only else 0
    conn = open_ro()
    try:
        return {dom.name(): stats for dom, stats in conn.getAllDomainStats(flags=flags)
                if dom.name() in ours}
    finally:
        conn.close()


# ------------------------------------------------------------------------------ harness object
class LibvirtHarness:
    uri = URI
    ro_socket = RO_SOCKET
    rw_socket = RW_SOCKET
    harness_dir = HARNESS_DIR

    def __init__(self, workdir: str = WORKDIR):
        self.workdir = workdir
        self.guests = load_guests(workdir)

    def __repr__(self):
        return f"LibvirtHarness(uri={self.uri!r}, workdir={self.workdir!r}, " \
               f"guests={[g['name'] for g in self.guests]})"

    def guest(self, name: str) -> dict:
        for g in self.guests:
            if name in (g["name"], g["nova_name"], g["uuid"]):
                return g
        raise KeyError(name)

    @staticmethod
    def daemon_running() -> bool:
        return daemon_running()

    @staticmethod
    def stop_daemon() -> None:
        stop_daemon()

    @staticmethod
    def start_daemon() -> None:
        start_daemon()

    @contextlib.contextmanager
    def daemon_stopped(self):
        """libvirtd down inside the block (guests keep running), up again afterwards."""
        stop_daemon()
        try:
            yield self
        finally:
            start_daemon()

    def restart_guest(self, name: str, timeout: float = 300) -> dict:
        return restart_guest(self.guest(name)["name"], timeout)

    def destroy_guest(self, name: str) -> None:
        destroy_guest(self.guest(name)["name"])

    def ensure(self) -> None:
        start_harness()

    @staticmethod
    def open_ro(uri: str = URI):
        return open_ro(uri)

    def domain_stats(self, active_only: bool = True) -> dict[str, dict]:
        return domain_stats(active_only, self.workdir)

    def serial_log(self, name: str) -> str:
        with open(self.guest(name)["serial_log"], errors="replace") as f:
            return f.read()


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def libvirtd():
    """Real libvirtd + the two QEMU guests, running and ready (see the module docstring)."""
    if not is_root():
        service_unavailable("the real libvirtd harness needs root")
    if not os.path.exists("/dev/net/tun"):
        service_unavailable("no /dev/net/tun: the guests' tap interfaces cannot be created")
    t0 = time.monotonic()
    try:
        proc = start_harness()
    except HarnessError as e:
        service_unavailable(f"tests/harness/libvirt/start failed:\n{e}")
    harness = LibvirtHarness(WORKDIR)
    harness.start_output = proc.stdout
    harness.start_seconds = time.monotonic() - t0
    yield harness
    _end_outage()          # a run stopped (-x, Ctrl-C) while libvirtd_down held libvirtd
    if STOP_AT_END:
        stop_harness()


# The test pytest runs after the current one (pytest_runtest_protocol below), so that an
# outage can be held over consecutive tests that all need it.
_next_test = None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    global _next_test
    _next_test = nextitem


class _Outage:
    """libvirtd stopped by libvirtd_down, until the teardown of the last of the consecutive
    tests that use it (or the end of the session)."""
    held = False


@pytest.fixture
def libvirtd_down(libvirtd):
    """libvirtd stopped for this test (guests keep running), started again afterwards. Tests
    that use this fixture one after another share one stop (each stop and start costs ~0.5 s):
    it is started again in the teardown of the last of them, failed or not, before any test
    that does not ask for it (and at the end of the session, whatever happened)."""
    if not _Outage.held:
        libvirtd.stop_daemon()
        _Outage.held = True
    yield libvirtd
    if _next_test is None or "libvirtd_down" not in getattr(_next_test, "fixturenames", ()):
        _end_outage()


def _end_outage():
    if _Outage.held:
        start_daemon()
        _Outage.held = False
