"""Shared pytest wiring.

Real services (libvirtd with QEMU guests, the local OpenStack cloud, Icinga 2 / Nagios / NRPE)
are started by session fixtures in the tests/fixtures_*.py plugins below. A test that needs a
service it cannot get fails in CI (CI=true) and is skipped with the reason printed elsewhere.
"""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKS = os.path.join(ROOT, "checks")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytest_plugins = [
    "tests.fixtures_libvirt",
    "tests.fixtures_cloud",
    "tests.fixtures_icinga",
]


def service_unavailable(reason):
    """A needed real service cannot be had: fail in CI, skip (reason printed) elsewhere."""
    if IN_CI:
        pytest.fail(f"required service unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"not in CI, service unavailable: {reason}")


def is_root():
    return os.geteuid() == 0


TEST_ROOT = os.environ.get("NLC_TEST_ROOT", "/var/tmp/nlc-test")


@pytest.fixture(scope="session")
def installed_plugins():
    """The checks installed as an operator does (`make install`), where the unprivileged
    nagios user (NRPE's) can run them: a venv and plugin links under NLC_TEST_ROOT."""
    import subprocess
    if not is_root():
        service_unavailable("installing the plugins for the nagios user needs root")
    prefix, plugins = f"{TEST_ROOT}/install", f"{TEST_ROOT}/plugins"
    os.makedirs(TEST_ROOT, exist_ok=True)
    os.chmod(TEST_ROOT, 0o755)
    proc = subprocess.run(["make", "-C", ROOT, "install", f"PREFIX={prefix}", f"PLUGINDIR={plugins}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"make install failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}", pytrace=False)
    return plugins
