"""Shared pytest wiring.

Real services (libvirtd with QEMU guests, the local OpenStack cloud, Icinga 2 / Nagios / NRPE)
are started by session fixtures in the tests/fixtures_*.py plugins below. A test that needs a
service it cannot get fails under `make test` (which exports NLC_REQUIRE_SERVICES=1) and in CI
(CI=true); there, any other skip (pytest.skip, importorskip, a skip marker) fails too. A plain
`pytest` elsewhere skips it, with the reason printed (-ra).
"""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKS = os.path.join(ROOT, "checks")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# `make test` and CI: every service is installed and started, so nothing may be skipped
REQUIRE_SERVICES = IN_CI or os.environ.get("NLC_REQUIRE_SERVICES", "").lower() in ("1", "true", "yes")

pytest_plugins = [
    "tests.fixtures_libvirt",
    "tests.fixtures_cloud",
    "tests.fixtures_icinga",
]


def service_unavailable(reason):
    """A needed real service cannot be had: fail under `make test` and in CI, skip (reason
    printed) elsewhere."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service unavailable (NLC_REQUIRE_SERVICES/CI): {reason}", pytrace=False)
    pytest.skip(f"service unavailable: {reason}")


def _skip_reason(report):
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _no_skip_under_make_test(report):
    """Under `make test`/CI a skip is a failure, whoever raised it (importorskip at import
    time included); an expected failure (xfail) stays what it is."""
    if REQUIRE_SERVICES and report.skipped and not hasattr(report, "wasxfail"):
        report.longrepr = f"skipped, but NLC_REQUIRE_SERVICES/CI forbids skips: {_skip_reason(report)}"
        report.outcome = "failed"


# the fixtures that start or install something real (every other fixture needing a service
# depends on one of them); a test using none of them is marked `offline`
SERVICE_FIXTURES = {"libvirtd", "cloud", "icinga_tools", "installed_plugins",
                    "libfaketime", "strace", "wallclock_shim", "small_tmpfs"}


def pytest_configure(config):
    config.addinivalue_line("markers", "offline: needs no real service, no apt, no root: "
                            "`pytest -m offline` is the fast loop (set by tests/conftest.py)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.offline)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _no_skip_under_make_test(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _no_skip_under_make_test(outcome.get_result())


def is_root():
    return os.geteuid() == 0


TEST_ROOT = os.environ.get("NLC_TEST_ROOT", "/var/tmp/nlc-test")


@pytest.fixture
def state_dir(tmp_path):
    """A fresh --state-dir for check_libvirt_instances (not created: the check makes it 0700)."""
    return str(tmp_path / "state")


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
    stamp, tree = os.path.join(prefix, ".nlc-installed-tree"), _installed_tree_id()
    links = all(os.path.exists(os.path.join(plugins, c)) for c in os.listdir(CHECKS))
    with open(stamp) if os.path.exists(stamp) else open(os.devnull) as handle:
        if handle.read() == tree and links and _installed_library_is_ours(prefix):
            return plugins               # this very tree is installed already (~10 s saved)
    proc = subprocess.run(["make", "-C", ROOT, "install", f"PREFIX={prefix}", f"PLUGINDIR={plugins}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"make install failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}", pytrace=False)
    with open(stamp, "w") as handle:
        handle.write(tree)
    return plugins


def _installed_library_is_ours(prefix):
    """The installed package's files are this tree's lib/ (another checkout sharing
    NLC_TEST_ROOT may have installed its own since)."""
    import filecmp
    import glob
    ours = os.path.join(ROOT, "lib", "nova_libvirt_checks")
    installed = glob.glob(os.path.join(prefix, "lib", "python3*", "site-packages", "nova_libvirt_checks"))
    if len(installed) != 1:
        return False
    names = sorted(f for f in os.listdir(ours) if f.endswith(".py"))
    if names != sorted(f for f in os.listdir(installed[0]) if f.endswith(".py")):
        return False
    _, mismatch, errors = filecmp.cmpfiles(ours, installed[0], names, shallow=False)
    return not mismatch and not errors


def _installed_tree_id():
    """What `make install` installs, as one digest: the source tree's files (lib/, checks/,
    setup.py, constraints.txt, the Makefile, the NRPE file it writes) by path and content, and
    the checkout it is from."""
    import hashlib
    digest = hashlib.sha256(ROOT.encode())
    paths = [os.path.join(ROOT, f) for f in ("setup.py", "constraints.txt", "Makefile",
                                             "icinga/nrpe/nova-libvirt-checks.cfg")]
    for top in ("lib", "checks"):
        for directory, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.endswith(".egg-info"))
            paths += [os.path.join(directory, f) for f in sorted(files) if not f.endswith(".pyc")]
    for path in paths:
        digest.update(os.path.relpath(path, ROOT).encode() + b"\0")
        with open(path, "rb") as handle:
            digest.update(handle.read() + b"\0")
    return digest.hexdigest()
