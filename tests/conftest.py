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
