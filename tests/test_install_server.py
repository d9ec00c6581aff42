"""A monitoring server installs check_nova_hypervisors with pip, without gcc or libvirt-dev
(issue 11, point 6).

The base install requires libvirt-python, which PyPI has as an sdist only (building it needs
gcc and libvirt-dev), so that `pip install nova-libvirt-checks` on a compute node gives the
libvirt checks. A server gets there without a compiler through Debian's binary bindings: `apt
install python3-libvirt python3-lxml`, a venv made with `--system-site-packages`, then `pip
install 'nova-libvirt-checks[nova]'`. Debian's python3-libvirt carries libvirt_python-*.egg-info,
which pip counts as the installed `libvirt-python` distribution, so the requirement is met and
nothing is built. Every other dependency of the [nova] extra (cryptography, cffi, psutil, PyYAML,
msgpack, charset-normalizer: the ones with C code) comes as a manylinux wheel.

The test does exactly that, from this tree, with no compiler reachable (PATH is the venv's bin/
only, CC and CXX are /bin/false), and reads pip's installation report: nothing installed from an
sdist but this tree (pure Python), libvirt-python and lxml not installed at all. The console
scripts then answer the real local cloud (openrc) and the real libvirtd, the same numbers as
the checkout's venv. The checkout's constraints.txt pins the PyPI versions, so its lines for
the two libraries apt provides are left out (an operator has no constraints file: pip keeps
what satisfies the requirement). pip's own cache is used (`make venv` fills it; a wheel pip once
built from an sdist would still be reported with the sdist's URL, so the cache cannot hide a
build). About 20 s, 15 of them pip.
"""
import json
import os
import re
import shutil
import subprocess

import pytest

from tests.checkrun import Result, assert_plugin_output
from tests.conftest import ROOT, is_root, service_unavailable
from tests.helpers import apt_install

SYSTEM_PYTHON = "/usr/bin/python3"
DIST_PACKAGES = "/usr/lib/python3/dist-packages"
# Debian package -> the distribution pip must find installed (and must not build or fetch)
FROM_APT = {"python3-libvirt": "libvirt-python", "python3-lxml": "lxml"}
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "x86_64-linux-gnu-gcc")
CHECKOUT_PYTHON = os.path.join(ROOT, ".venv", "bin", "python")


def run(argv, env, timeout=300):
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr, 0)


def debian_version(package):
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", package],
                          capture_output=True, text=True)
    status, _, version = proc.stdout.partition(" ")
    return re.sub(r"^\d+:", "", version).split("-")[0] if status == "installed" else None


@pytest.fixture(scope="module")
def debian_bindings():
    """python3-libvirt and python3-lxml (the Makefile installs them; apt here if missing)."""
    if None in map(debian_version, FROM_APT):
        if not is_root():
            service_unavailable(f"{' and '.join(FROM_APT)} are not installed (needs root for apt)")
        proc = apt_install(*FROM_APT)
        if proc.returncode != 0:
            service_unavailable(f"apt-get install {' '.join(FROM_APT)}: {proc.stderr[-500:]}")
    return {dist: debian_version(package) for package, dist in FROM_APT.items()}


@pytest.fixture(scope="module")
def server_venv(debian_bindings, tmp_path_factory):
    """The server route: a --system-site-packages venv of Debian's python3 with this tree's
    [nova] extra pip-installed, no compiler reachable. Returns (venv dir, pip's report)."""
    home = tmp_path_factory.mktemp("server-venv")
    venv = home / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, capture_output=True)
    bin_dir = str(venv / "bin")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(PATH=bin_dir, CC="/bin/false", CXX="/bin/false", LANG="C.UTF-8")
    assert [c for c in COMPILERS if shutil.which(c, path=env["PATH"])] == []
    constraints = home / "constraints.txt"
    with open(os.path.join(ROOT, "constraints.txt")) as pinned:
        constraints.write_text("".join(line for line in pinned
                                       if line.split("==")[0].strip() not in FROM_APT.values()))
    report = home / "pip-report.json"
    pip = run([f"{bin_dir}/python", "-m", "pip", "install", "--disable-pip-version-check",
               "-c", str(constraints), "--report", str(report), f"{ROOT}[nova]"], env)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    for dist in FROM_APT.values():
        assert re.search(rf"Requirement already satisfied: {dist}\S* in {DIST_PACKAGES}",
                         pip.stdout, re.I), pip.stdout
    return venv, env, json.loads(report.read_text())


def test_pip_builds_nothing_and_takes_debians_bindings(server_venv, debian_bindings):
    venv, env, report = server_venv
    installed = {item["metadata"]["name"].lower(): item for item in report["install"]}
    assert "python-novaclient" in installed and "keystoneauth1" in installed
    assert not set(FROM_APT.values()) & set(installed), sorted(installed)
    # a wheel for everything but this tree (pure Python): no sdist was built, none could be
    ours = installed.pop("nova-libvirt-checks")["download_info"]
    assert ours["url"] == f"file://{ROOT}" and "dir_info" in ours, ours
    sdists = {name: item["download_info"]["url"] for name, item in installed.items()
              if not item["download_info"]["url"].endswith(".whl")}
    assert sdists == {}
    # the venv's python finds Debian's bindings, in Debian's versions
    probe = ("import importlib.metadata as md, json, libvirt, lxml, sys\n"
             "print(json.dumps({'files': [libvirt.__file__, lxml.__file__], 'versions': "
             "{d: md.version(d) for d in sys.argv[1:]}}))")
    out = run([str(venv / "bin" / "python"), "-c", probe, *FROM_APT.values()], env)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert all(path.startswith(DIST_PACKAGES + "/") for path in found["files"]), found
    assert found["versions"] == debian_bindings


def test_server_check_answers_the_real_cloud(server_venv, cloud, tmp_path):
    """check_nova_hypervisors, the console script of the server venv, with openrc's OS_*
    variables: OK, and the same numbers as the checkout's venv."""
    venv, env, _ = server_venv
    args = ["-w", "vcpus=80%", "-c", "vcpus=95%", "--perfdata-per-hypervisor"]
    check_env = dict(env, **cloud.env, NOVA_LIBVIRT_CHECKS_STATE_DIR=str(tmp_path / "state"))
    server = run([str(venv / "bin" / "check_nova_hypervisors"), *args], check_env, timeout=60)
    assert_plugin_output(server, 0)
    hosts = len(cloud.hosts)
    assert server.text.startswith(f"HYPERVISORS OK - {hosts} of {hosts} hypervisors up and enabled")
    checkout = run([CHECKOUT_PYTHON, os.path.join(ROOT, "checks", "check_nova_hypervisors"), *args],
                   dict(check_env, NOVA_LIBVIRT_CHECKS_STATE_DIR=str(tmp_path / "state2")), timeout=60)
    assert checkout.returncode == 0, checkout
    assert server.text == checkout.text
    assert server.values() == checkout.values()


def test_server_venv_runs_check_libvirtd(server_venv, libvirtd):
    """The same venv serves the libvirt checks (Debian's python3-libvirt) on the real libvirtd."""
    venv, env, _ = server_venv
    result = run([str(venv / "bin" / "check_libvirtd"), "-U", libvirtd.uri], env, timeout=60)
    assert_plugin_output(result, 0)
    assert result.text.startswith(f"LIBVIRTD OK - {libvirtd.uri} answered in "), result.stdout
    assert result.values()["domains_running"] >= len(libvirtd.guests)
