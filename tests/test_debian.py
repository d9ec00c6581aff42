"""The Debian packages, as an operator gets them: built by `make deb` (once per session, lintian
without errors), installed with apt on this machine (Debian 12's python3-nagiosplugin,
python3-libvirt, python3-lxml, python3-keystoneauth1, python3-novaclient, python3-openstacksdk
and /usr/bin/python3: no venv, no compiler), run as the nagios user against the real services:
check_libvirtd and check_libvirt_instances through the installed /etc/nagios/nrpe.d file and a
real NRPE daemon, check_nova_hypervisors against the real local cloud (openrc and clouds.yaml).
Their answers are compared with the same checks run from the checkout's venv (the pinned PyPI
libraries). Finally the packages are purged (also when a test fails) and nothing may be left.

Needs root (apt, dpkg); fails in CI without it. The packages are installed system-wide for the
length of this module: tests elsewhere that include <plugins-contrib> together with
icinga/icinga2/commands.conf would see the CheckCommands twice while it runs, so a lock file
keeps two sessions of this module apart and the install window is kept short.
"""
import fcntl
import filecmp
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import CHECKS, ROOT, TEST_ROOT, is_root, service_unavailable
from tests.helpers import steady_labels
from tests.fixtures_icinga import (APT_INSTALL, DAEMON_ENV, icinga2_validate, private_dir,
                                   run_as_nagios, split_perfdata)

PACKAGES = ("nova-libvirt-checks-common", "nova-libvirt-checks-compute", "nova-libvirt-checks-server")
PLUGIN_DIR = "/usr/lib/nagios/plugins"
NRPE_FILE = "/etc/nagios/nrpe.d/nova-libvirt-checks.cfg"
ICINGA2_FILE = "/usr/share/icinga2/include/plugins-contrib.d/nova-libvirt-checks.conf"
SHARE = "/usr/share/nova-libvirt-checks"
DIST_PACKAGES = "/usr/lib/python3/dist-packages"
MODULE_DIR = f"{DIST_PACKAGES}/nova_libvirt_checks"
COMPUTE_CHECKS = ("check_libvirtd", "check_libvirt_instances")
# Debian package -> Python distribution, for the libraries the installed checks must use
DEBIAN_LIBRARIES = {"python3-nagiosplugin": "nagiosplugin", "python3-libvirt": "libvirt-python",
                    "python3-lxml": "lxml", "python3-keystoneauth1": "keystoneauth1",
                    "python3-novaclient": "python-novaclient", "python3-openstacksdk": "openstacksdk"}
VENV_PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
APT_ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive")


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)


def perfdata(text):
    """{label: value} of a plugin's output (the perfdata after the first '|')."""
    first = text.split("\n", 1)[0]
    values = {}
    for token in split_perfdata(first.split("|", 1)[1] if "|" in first else ""):
        label, rest = token.rsplit("=", 1)
        values[label.strip("'")] = float(re.match(r"-?[\d.]+", rest)[0])
    return values


def deb_field(deb, field):
    return run(["dpkg-deb", "-f", deb, field], check=True).stdout.strip()


def deb_files(deb):
    listing = run(["dpkg-deb", "-c", deb], check=True).stdout
    return {line.split(None, 5)[5].lstrip(".") for line in listing.splitlines()}


def installed_packages():
    proc = run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n"] + list(PACKAGES))
    return [line.split()[0] for line in proc.stdout.splitlines() if line.split()[1:] != ["not-installed"]]


def purge():
    present = installed_packages()
    if present:
        proc = run(["apt-get", "-o", "DPkg::Lock::Timeout=900", "purge", "-y", "-qq"] + present, env=APT_ENV)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def debs():
    """`make deb` into a private directory: {package: path of its .deb}; lintian's findings
    printed (errors fail `make deb` itself)."""
    if not is_root():
        service_unavailable("building and installing the Debian packages needs root")
    os.makedirs(TEST_ROOT, exist_ok=True)
    out = tempfile.mkdtemp(prefix="deb-", dir=TEST_ROOT)
    try:
        proc = run(["make", "-C", ROOT, "deb", f"DEBDIR={out}"])
        if proc.returncode != 0:
            pytest.fail(f"make deb failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", pytrace=False)
        findings = [line for line in (proc.stdout + proc.stderr).splitlines()
                    if re.match(r"[EWIPX]: nova-libvirt-checks", line)]
        print("lintian:", *(findings or ["(nothing)"]), sep="\n  ", file=sys.stderr)
        found = {name.split("_")[0]: os.path.join(out, name) for name in os.listdir(out)
                 if name.endswith(".deb")}
        assert sorted(found) == sorted(PACKAGES), found
        yield {"dir": out, "lintian": findings, **found}
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(debs, libvirtd, cloud, icinga_tools):
    """The three packages installed with apt (and python3-openstacksdk, which -server
    recommends); purged afterwards, even when a test failed."""
    lock = open(os.path.join(TEST_ROOT, "debian-packages.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        purge()  # a crashed earlier run
        for check in COMPUTE_CHECKS + ("check_nova_hypervisors",):
            path = f"{PLUGIN_DIR}/{check}"
            assert not os.path.lexists(path), (
                f"{path} exists (make install with the default PLUGINDIR?): installing the package "
                f"would replace it and purging would remove it; remove it first")
        argv = APT_INSTALL + [debs[p] for p in PACKAGES] + ["python3-openstacksdk"]
        proc = run(argv, env=APT_ENV)
        if proc.returncode != 0:  # stale package lists on a fresh machine
            run(["apt-get", "-o", "DPkg::Lock::Timeout=900", "update", "-qq"], env=APT_ENV)
            proc = run(argv, env=APT_ENV)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert sorted(installed_packages()) == sorted(PACKAGES)
        yield
    finally:
        try:
            purge()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()


def test_packages_contents_and_dependencies(debs):
    assert not [f for f in debs["lintian"] if f.startswith("E: ")]
    common, compute, server = (debs[p] for p in PACKAGES)
    version = deb_field(common, "Version")
    # a compute node gets python3-libvirt, python3-lxml, python3-nagiosplugin, nothing else
    assert deb_field(compute, "Depends") == (f"nova-libvirt-checks-common (= {version}), python3, "
                                             f"python3-libvirt, python3-lxml")
    assert re.fullmatch(r"python3-nagiosplugin, python3:any( \(>= [\d.~]+\))?",
                        deb_field(common, "Depends")), deb_field(common, "Depends")
    assert deb_field(server, "Depends") == (f"nova-libvirt-checks-common (= {version}), python3, "
                                            f"python3-keystoneauth1, python3-novaclient")
    assert deb_field(server, "Recommends") == "python3-openstacksdk"
    for deb in (common, compute, server):
        assert deb_field(deb, "Architecture") == "all"
        assert not [f for f in deb_files(deb) if f.startswith(("/usr/bin/", "/usr/local/"))]

    assert f"{MODULE_DIR}/plugin.py" in deb_files(common) and ICINGA2_FILE in deb_files(common)
    assert {f"{PLUGIN_DIR}/{c}" for c in COMPUTE_CHECKS} | {NRPE_FILE} <= deb_files(compute)
    conffiles = run(["dpkg-deb", "--info", compute, "conffiles"], check=True).stdout.split()
    assert conffiles == [NRPE_FILE]
    shared = {f"{PLUGIN_DIR}/check_nova_hypervisors", f"{SHARE}/nagios/commands.cfg",
              f"{SHARE}/nagios/services.cfg", f"{SHARE}/pnp4nagios/list-stale-rrds"}
    shared |= {f"{SHARE}/pnp4nagios/templates/{n}" for n in os.listdir(f"{ROOT}/icinga/pnp4nagios/templates")}
    shared |= {f"{SHARE}/pnp4nagios/check_commands/{n}"
               for n in os.listdir(f"{ROOT}/icinga/pnp4nagios/check_commands")}
    assert shared <= deb_files(server)


def test_installed_files_are_the_repository_files(installed):
    """The module, the monitoring files and the checks as installed: the executables run
    /usr/bin/python3 and put nothing on sys.path; the NRPE file's paths exist."""
    for name in os.listdir(f"{ROOT}/lib/nova_libvirt_checks"):
        if name.endswith(".py"):
            assert filecmp.cmp(f"{ROOT}/lib/nova_libvirt_checks/{name}", f"{MODULE_DIR}/{name}", shallow=False)
    assert filecmp.cmp(f"{ROOT}/icinga/icinga2/commands.conf", ICINGA2_FILE, shallow=False)
    assert filecmp.cmp(f"{ROOT}/icinga/nrpe/nova-libvirt-checks.cfg", NRPE_FILE, shallow=False)
    assert filecmp.cmp(f"{ROOT}/icinga/nagios/commands.cfg", f"{SHARE}/nagios/commands.cfg", shallow=False)
    for check in COMPUTE_CHECKS + ("check_nova_hypervisors",):
        with open(f"{PLUGIN_DIR}/{check}") as f:
            text = f.read()
        assert text.startswith("#!/usr/bin/python3\n") and "sys.path" not in text
        assert os.stat(f"{PLUGIN_DIR}/{check}").st_mode & 0o777 == 0o755
    commands = nrpe_commands(NRPE_FILE)
    assert commands and all(os.access(line.split()[0], os.X_OK) for line in commands.values())


def nrpe_commands(path):
    with open(path) as f:
        return dict(re.findall(r"^command\[([^\]]+)\]=(.+)$", f.read(), re.M))


def test_installed_checks_use_debians_libraries(installed):
    """As nagios, /usr/bin/python3 imports our module and the five libraries from Debian's
    packages, in Debian's versions."""
    probe = ("import importlib, importlib.metadata as md, json, sys\n"
             "mods = {m: importlib.import_module(m).__file__ for m in sys.argv[1].split(',')}\n"
             "dists = {d: md.version(d) for d in sys.argv[2].split(',')}\n"
             "print(json.dumps([mods, dists]))\n")
    mods = "nova_libvirt_checks,nagiosplugin,libvirt,lxml,keystoneauth1,novaclient,openstack"
    proc = run_as_nagios(["/usr/bin/python3", "-c", probe, mods, ",".join(DEBIAN_LIBRARIES.values())])
    assert proc.returncode == 0, proc.stderr
    files, versions = json.loads(proc.stdout)
    assert all(path.startswith(DIST_PACKAGES + "/") for path in files.values()), files
    for package, dist in DEBIAN_LIBRARIES.items():
        debian = run(["dpkg-query", "-W", "-f", "${Version}", package], check=True).stdout
        upstream = re.sub(r"^\d+:", "", debian).split("-")[0]
        assert versions[dist] == upstream, (package, debian, versions[dist])


def test_compute_checks_through_installed_nrpe_file(installed, libvirtd, monitoring_daemons):
    """A real NRPE daemon reading the installed /etc/nagios/nrpe.d file runs every command of it
    as nagios; the answers match the checks run from the checkout's venv (PyPI libraries)."""
    nrpe = monitoring_daemons.nrpe(NRPE_FILE)
    commands = nrpe_commands(NRPE_FILE)
    assert set(commands) >= {"check_libvirtd", "check_libvirt_instances"}
    answers = {}
    for command in commands:
        proc = nrpe.check(command, ["-t", "30"])  # as our Icinga 2 and Nagios commands
        answers[command] = proc
        assert proc.returncode == 0, (command, proc.stdout, proc.stderr, nrpe.log_text()[-2000:])
    first = answers["check_libvirtd"].stdout
    assert first.startswith("LIBVIRTD OK - qemu:///system answered in "), first
    venv = run([VENV_PYTHON, f"{CHECKS}/check_libvirtd"] + commands["check_libvirtd"].split()[1:])
    assert venv.returncode == 0, venv
    assert set(perfdata(first)) == set(perfdata(venv.stdout))
    assert perfdata(first)["domains_running"] >= len(libvirtd.guests)

    instances = answers["check_libvirt_instances"].stdout
    assert instances.startswith("INSTANCES OK - "), instances
    for guest in libvirtd.guests:
        assert f"{guest['nova_name']} ({guest['tenant_name']}) [{guest['name']} {guest['uuid']}" in instances
    venv = run([VENV_PYTHON, f"{CHECKS}/check_libvirt_instances", "--interval", "1"])
    assert venv.returncode == 0, venv
    # the same instances, metrics and labels from Debian's libraries as from PyPI's (the disk
    # latencies aside: they exist only for a window in which the disk had requests, issue 13)
    assert set(steady_labels(perfdata(instances))) == set(steady_labels(perfdata(venv.stdout)))
    totals_only = answers.get("check_libvirt_instances_1k")
    if totals_only is not None:
        assert len(totals_only.stdout.encode()) <= 1000
        assert all(k.startswith("total.") or k.startswith("instances") for k in perfdata(totals_only.stdout))


def test_read_only_access_refused_names_read_only_settings(installed):
    """A read-only socket the nagios user may not open (a real libvirt client error, EACCES):
    UNKNOWN, with the read-only socket's settings in the hint, not --read-write's."""
    private = tempfile.mkdtemp(prefix="deb-sock-", dir=TEST_ROOT)  # 0700, root's
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(os.path.join(private, "libvirt-sock-ro"))
        sock.listen()
        uri = f"qemu:///system?socket={private}/libvirt-sock-ro"
        proc = run_as_nagios([f"{PLUGIN_DIR}/check_libvirtd", "-U", uri])
    finally:
        sock.close()
        shutil.rmtree(private)
    assert proc.returncode == 3, proc
    assert proc.stdout.count("\n") == 1 and proc.stderr == ""
    assert proc.stdout.startswith(f"LIBVIRTD UNKNOWN - access to {uri} refused: ")
    assert "Permission denied" in proc.stdout and "auth_unix_ro" in proc.stdout
    assert "org.libvirt.unix.monitor" in proc.stdout and "--read-write" not in proc.stdout


def test_server_check_against_the_real_cloud(installed, cloud, nagios_tmp_path):
    """check_nova_hypervisors as nagios with Debian's keystoneauth1/novaclient (openrc) and
    openstacksdk 0.101 (clouds.yaml): the same numbers as from the venv's PyPI libraries."""
    args = ["--no-token-cache", "-w", "vcpus=80%", "-c", "vcpus=95%", "--perfdata-per-hypervisor"]
    debian = run_as_nagios([f"{PLUGIN_DIR}/check_nova_hypervisors"] + args, env=cloud.env)
    pypi = run([VENV_PYTHON, f"{CHECKS}/check_nova_hypervisors"] + args, env=dict(DAEMON_ENV, **cloud.env))
    assert debian.returncode == 0 and debian.stderr == "", debian
    assert pypi.returncode == 0, pypi
    hosts = len(cloud.hosts)
    assert debian.stdout.startswith(f"HYPERVISORS OK - {hosts} of {hosts} hypervisors up and enabled")
    assert debian.stdout.split("|")[0] == pypi.stdout.split("|")[0]
    assert perfdata(debian.stdout) == perfdata(pypi.stdout)

    nagios = pwd.getpwnam("nagios")
    files = {}
    for var, source in (("OS_CLIENT_CONFIG_FILE", cloud.clouds_yaml), ("OS_CLIENT_SECURE_FILE", cloud.secure_yaml)):
        files[var] = os.path.join(nagios_tmp_path, os.path.basename(source))
        shutil.copyfile(source, files[var])
        os.chown(files[var], nagios.pw_uid, nagios.pw_gid)
        os.chmod(files[var], 0o600)
    by_name = run_as_nagios([f"{PLUGIN_DIR}/check_nova_hypervisors", "--os-cloud", "nlc"] + args, env=files)
    assert by_name.returncode == 0 and by_name.stderr == "", by_name
    assert perfdata(by_name.stdout) == perfdata(debian.stdout)


def test_icinga2_reads_the_installed_checkcommands(installed):
    """`include <plugins-contrib>` brings our CheckCommands: services using them validate
    without any file of ours in the configuration."""
    names = re.findall(r'^object CheckCommand "([^"]+)"', open(ICINGA2_FILE).read(), re.M)
    assert {"libvirtd", "libvirt_instances", "nova_hypervisors"} <= set(names)
    conf = os.path.join(private_dir("deb-i2"), "services.conf")
    with open(conf, "w") as f:
        f.write('object Host "compute-1" {\n  check_command = "dummy"\n  address = "127.0.0.1"\n}\n')
        for name in names:
            f.write(f'object Service "{name}" {{\n  host_name = "compute-1"\n'
                    f'  check_command = "{name}"\n}}\n')
    try:
        proc = icinga2_validate([conf])
    finally:
        shutil.rmtree(os.path.dirname(conf))
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_purge_leaves_nothing(installed):
    """Last test of the module: purge removes every file, the NRPE conffile included."""
    purge()
    assert installed_packages() == []
    left = [p for p in [NRPE_FILE, ICINGA2_FILE, MODULE_DIR, SHARE]
            + [f"{PLUGIN_DIR}/{c}" for c in COMPUTE_CHECKS + ("check_nova_hypervisors",)]
            if os.path.lexists(p)]
    assert left == []
