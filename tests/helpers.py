"""Helpers shared by the test files (one of each, here): polling instead of sleeping, and the
apt installer for tools a test needs. The check runner and the plugin-output parser are in
tests/checkrun.py, the independent measurement of rates in tests/oracle.py, the libvirt
harness (run_as_nagios included) in tests/fixtures_libvirt.py; the state_dir fixture is in
tests/conftest.py."""
import os
import subprocess
import time

APT_GET = ["apt-get", "-o", "DPkg::Lock::Timeout=900"]
APT_INSTALL = [*APT_GET, "install", "-y", "-qq", "--no-install-recommends"]


def wait_until(predicate, timeout, what, interval=0.05):
    """Poll `predicate()` until it returns something true (returned); fail after `timeout` s
    saying `what` did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(interval)


def wait_for_growth(harness, keys, names=None, timeout=30):
    """Poll the guests' getAllDomainStats until each of `keys` grew in each guest (`names`,
    default all); returns (stats before, stats after)."""
    before = harness.domain_stats()
    names = names or list(before)

    def grown():
        after = harness.domain_stats()
        return after if all(after[n][k] > before[n][k] for n in names for k in keys) else None
    return before, wait_until(grown, timeout, f"counters {keys} of {names} growing", interval=0.1)


def apt_install(*packages):
    """apt-get install the Debian packages (as root), updating the lists once if the first try
    fails; returns the CompletedProcess of the last try."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run([*APT_INSTALL, *packages], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        subprocess.run([*APT_GET, "update", "-qq"], capture_output=True, env=env)
        proc = subprocess.run([*APT_INSTALL, *packages], capture_output=True, text=True, env=env)
    return proc
