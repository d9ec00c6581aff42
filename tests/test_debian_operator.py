"""The operator's path without the packages, and the graphs after it (issue 12, point 3):

- `make install` writes an NRPE file whose paths are its PLUGINDIR, and a real NRPE serves it;
- PNP4Nagios's stock check_nrpe.cfg (CUSTOM_TEMPLATE = 1) names the template and its
  check_commands/*.cfg after the NRPE command: ours exist under every command name of the NRPE
  file, and real check output through real NRPE is graphed by the PNP stand-in of test_icinga;
- `check_nrpe -a` against Debian's NRPE ends in "Receive header underflow" (icinga/README.md);
- Icinga 2 agent hosts validate in the zones.d layout icinga/README.md shows, not in conf.d/;
- icinga/pnp4nagios/list-stale-rrds lists stale RRDs made with rrdtool, deletes only with
  --delete; an RRD with PNP's default RRAs is the 385 kB the docs say.
"""
import os
import re
import subprocess
import time

from tests.conftest import ROOT
from tests.fixtures_icinga import icinga2_validate, installed_nrpe_file
from tests.test_icinga import Pnp, assert_graphed

ICINGA = os.path.join(ROOT, "icinga")
NRPE_FILE = os.path.join(ICINGA, "nrpe", "nova-libvirt-checks.cfg")
LIST_STALE = os.path.join(ICINGA, "pnp4nagios", "list-stale-rrds")
# etc/check_commands/check_nrpe.cfg as PNP4Nagios ships it (sample-config), comments left out
STOCK_CHECK_NRPE_CFG = "CUSTOM_TEMPLATE = 1\n"
# PNP4Nagios's default RRAs (process_perfdata.pl @default_rrd_create, rra.cfg-sample)
PNP_RRAS = [f"RRA:{cf}:0.5:{steps}:{rows}" for cf in ("AVERAGE", "MAX", "MIN")
            for steps, rows in ((1, 2880), (5, 2880), (30, 4320), (360, 5840))]


def nrpe_commands(path):
    with open(path) as f:
        return dict(re.findall(r"^command\[([^\]]+)\]=(\S+)", f.read(), re.M))


def test_make_install_nrpe_file_serves_the_installed_checks(installed_plugins, libvirtd, nrpe,
                                                           tmp_path):
    """The NRPE file `make install` wrote (installed_plugins: PREFIX and PLUGINDIR under
    NLC_TEST_ROOT) names the checks where they are; a real NRPE (the session's, serving that
    file) runs each command as nagios; the answers go through PNP's check_nrpe.cfg to our
    templates and graphs."""
    written = installed_nrpe_file(installed_plugins)
    commands = nrpe_commands(written)
    assert list(commands) == list(nrpe_commands(NRPE_FILE))
    assert all(os.path.dirname(path) == installed_plugins for path in commands.values()), commands
    assert f"include={written}" in open(nrpe.cfg_path).read().splitlines()

    cfg_dir = tmp_path / "check_commands"
    cfg_dir.mkdir()
    (cfg_dir / "check_nrpe.cfg").write_text(STOCK_CHECK_NRPE_CFG)
    for name in os.listdir(os.path.join(ICINGA, "pnp4nagios", "check_commands")):
        (cfg_dir / name).write_text(open(os.path.join(ICINGA, "pnp4nagios", "check_commands", name)).read())
    pnp = Pnp(str(tmp_path / "perfdata"), str(cfg_dir), os.path.join(ICINGA, "pnp4nagios", "templates"))
    now = int(time.time())
    times = [now - 600 + 60 * k for k in range(10)]
    for command in commands:
        proc = nrpe.check(command, ["-t", "30"])  # as our Icinga 2 and Nagios commands
        assert proc.returncode == 0, (command, proc.stdout, nrpe.log_text()[-2000:])
        template, settings = pnp.settings_for(f"check_nrpe!{command}")
        assert template == command and settings["RRD_STORAGE_TYPE"] == "MULTIPLE", settings
        assert os.path.basename(pnp.template_file(template)) == f"{command}.php"
        output, _, perf = proc.stdout.partition("\n")[0].partition("|")
        line = "\t".join(["DATATYPE::SERVICEPERFDATA", f"TIMET::{now}", "HOSTNAME::compute-1",
                          f"SERVICEDESC::{command}", f"SERVICEPERFDATA::{perf.strip()}",
                          f"SERVICECHECKCOMMAND::check_nrpe!{command}", "SERVICESTATE::OK",
                          f"SERVICEOUTPUT::{output.strip()}"])
        out = tmp_path / f"graphs-{command}"
        out.mkdir()
        assert_graphed(pnp, line, str(out), times)
    # icinga/README.md: Debian's NRPE refuses arguments, and check_nrpe only sees a closed socket
    refusals = nrpe.log_text().count("Error: Request contained command arguments!")
    refused = nrpe.check("check_libvirtd", ["-a", "crashed=0"])
    assert refused.returncode == 3
    assert refused.stdout.startswith("CHECK_NRPE: Receive header underflow")
    # the session's NRPE: this very request's refusal (check_nrpe retries it as an older
    # packet: logged twice), not an earlier one
    assert nrpe.log_text().count("Error: Request contained command arguments!") > refusals


def make_rrd(path, last_update, value=1.0):
    start = last_update - 120
    subprocess.run(["rrdtool", "create", path, "--start", str(start), "--step", "60",
                    "DS:1:GAUGE:8640:0:U"] + PNP_RRAS, check=True)
    subprocess.run(["rrdtool", "update", path, f"{last_update}:{value}"], check=True)


def run_lister(*args):
    proc = subprocess.run([LIST_STALE, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc
    return proc


def test_list_stale_rrds_lists_and_deletes_only_when_asked(tmp_path):
    now = int(time.time())
    host = tmp_path / "compute-1"
    host.mkdir()
    fresh = host / "libvirt-instances_web-01_8f2b7c1e.cpu.rrd"
    gone = host / "libvirt-instances_old-vm_0badc0de.cpu.rrd"
    gone_hv = host / "nova-hypervisors_compute9_used.rrd"
    make_rrd(str(fresh), now - 60)
    make_rrd(str(gone), now - 40 * 86400)
    make_rrd(str(gone_hv), now - 31 * 86400)
    (host / "libvirt-instances.xml").write_text("<NAGIOS/>")
    # the size the README states: one data source, PNP's RRAs
    assert os.path.getsize(fresh) == 384952
    # a copy made now has a fresh mtime but the old last update: still stale
    os.utime(gone, None)

    listed = run_lister(str(tmp_path))
    lines = listed.stdout.splitlines()
    assert [line.split()[-1] for line in lines[:-1]] == [str(gone), str(gone_hv)]
    assert lines[-1].startswith("2 of 3 RRD files not updated for 30 days: 770 kB of 1.2 MB")
    assert "nothing deleted" in lines[-1]
    assert gone.exists() and gone_hv.exists() and fresh.exists()

    only = run_lister("--service", "^libvirt-instances_", "--days", "35", str(tmp_path))
    assert [line.split()[-1] for line in only.stdout.splitlines()[:-1]] == [str(gone)]

    run_lister("--delete", str(tmp_path))
    assert sorted(os.listdir(host)) == ["libvirt-instances.xml", fresh.name]


def test_list_stale_rrds_names_unreadable_files_and_bad_dirs(tmp_path):
    (tmp_path / "broken.rrd").write_text("not an rrd")
    proc = run_lister(str(tmp_path))
    assert "0 of 1 RRD files" in proc.stdout and "broken.rrd" in proc.stderr
    proc = subprocess.run([LIST_STALE, str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 2 and "no such directory" in proc.stderr


ZONES_CONF = """object Endpoint "nlc-test" { }
object Zone "master" { endpoints = [ "nlc-test" ] }
object Endpoint "compute2" { host = "192.0.2.12" }
object Zone "compute2" { endpoints = [ "compute2" ]; parent = "master" }
object Zone "global-templates" { global = true }
"""
AGENT_HOST = """object Host "compute2" {
  check_command = "dummy"
  address = "192.0.2.12"
  vars.nova_compute = true
  vars.agent_endpoint = name
}
"""


def test_icinga2_agent_hosts_validate_in_the_zones_d_layout(icinga_tools, nagios_tmp_path):
    """icinga/README.md's layout for agent hosts: zones.conf with the agent's Endpoint and Zone,
    hosts and services.conf in zones.d/master/, commands.conf in zones.d/global-templates/,
    validates; the same files in conf.d/ fail as a new user finds (no zone for the checkable)."""
    zones_d = os.path.join(nagios_tmp_path, "zones.d")
    for zone, name, text in (("master", "hosts.conf", AGENT_HOST),
                             ("master", "services.conf", open(f"{ICINGA}/icinga2/services.conf").read()),
                             ("global-templates", "commands.conf", open(f"{ICINGA}/icinga2/commands.conf").read())):
        os.makedirs(os.path.join(zones_d, zone), exist_ok=True)
        with open(os.path.join(zones_d, zone, name), "w") as f:
            f.write(text)
    zones_conf = os.path.join(nagios_tmp_path, "zones.conf")
    with open(zones_conf, "w") as f:
        f.write(ZONES_CONF + f'include_zones "nlc", "{zones_d}"\n')
    proc = icinga2_validate([zones_conf], {"ZoneName": "master"})
    assert proc.returncode == 0, proc.stdout[-3000:]

    conf_d = os.path.join(nagios_tmp_path, "conf.d")
    os.makedirs(conf_d)
    for zone, name in (("master", "hosts.conf"), ("master", "services.conf"),
                       ("global-templates", "commands.conf")):
        os.rename(os.path.join(zones_d, zone, name), os.path.join(conf_d, name))
    with open(zones_conf, "w") as f:
        f.write(ZONES_CONF)
    proc = icinga2_validate([zones_conf, conf_d], {"ZoneName": "master"})
    assert proc.returncode == 1
    assert "Checkable with command endpoint requires a zone" in proc.stdout
