"""Proves the Icinga 2 / Nagios 4 / NRPE harness (tests/fixtures_icinga.py) with stand-in plugins.

The stand-ins are written by the tests into a directory the nagios user can execute from; the
object and command files are written here too, exactly the way the project's icinga/ files will be
passed to the harness later.
"""
import os

import pytest

from tests import fixtures_icinga as fi

DUMMY = """#!/bin/sh
echo 'DUMMY WARNING - x | a=1;2;3;0;10'
exit 1
"""
MULTI = """#!/bin/sh
echo 'DUMMY OK - first line | a=1;2;3;0;10'
echo 'second line'
echo 'third line | b=2s;;;0; c=3%;80;90;0;100'
exit 0
"""
BAD_PERF = """#!/bin/sh
echo 'DUMMY OK - bad perfdata | x=1,5 good=2'
exit 0
"""
HOST = "compute-test"


def _write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


@pytest.fixture
def plugin_dir(nagios_tmp_path):
    d = os.path.join(nagios_tmp_path, "plugins")
    os.mkdir(d)
    os.chmod(d, 0o755)
    _write(os.path.join(d, "check_dummy"), DUMMY, 0o755)
    _write(os.path.join(d, "check_dummy_multiline"), MULTI, 0o755)
    _write(os.path.join(d, "check_bad_perf"), BAD_PERF, 0o755)
    return d


@pytest.fixture
def nrpe_command_file(nagios_tmp_path, plugin_dir):
    """What our icinga/ NRPE command file will look like: command[...] lines, arguments inline."""
    return _write(os.path.join(nagios_tmp_path, "nrpe_commands.cfg"),
                  f"command[check_dummy]={plugin_dir}/check_dummy\n"
                  f"command[check_dummy_multiline]={plugin_dir}/check_dummy_multiline\n")


ICINGA_OBJECTS = """
object CheckCommand "nlc_stand_in" {
  import "plugin-check-command"
  command = [ NlcStandInPluginDir + "/$nlc_plugin$" ]
}
apply Service "direct-dummy" {
  check_command = "nlc_stand_in"
  vars.nlc_plugin = "check_dummy"
  assign where host.vars.nova_compute
}
apply Service "direct-bad-perf" {
  check_command = "nlc_stand_in"
  vars.nlc_plugin = "check_bad_perf"
  assign where host.vars.nova_compute
}
apply Service "passive-probe" {
  check_command = "dummy"
  enable_active_checks = false
  assign where host.vars.nova_compute
}
apply Service "nrpe-" for (cmd in [ "check_dummy", "check_dummy_multiline" ]) {
  check_command = "nrpe"
  vars.nrpe_command = cmd
  assign where host.vars.os == "Linux" && host.vars.nrpe_port
}
"""

NAGIOS_OBJECTS = """
define command {
  command_name nlc_stand_in
  command_line $USER2$/$ARG1$
}
define command {
  command_name nlc_check_nrpe
  command_line $USER1$/check_nrpe -H $HOSTADDRESS$ -p $_HOSTNRPE_PORT$ -c $ARG1$
}
define service {
  use                 generic-service
  hostgroup_name      nova-compute
  service_description direct-dummy
  check_command       nlc_stand_in!check_dummy
}
define service {
  use                 generic-service
  hostgroup_name      nova-compute
  service_description nrpe-check_dummy_multiline
  check_command       nlc_check_nrpe!check_dummy_multiline
}
"""


# ---------------------------------------------------------------- no daemon

def test_split_perfdata():
    assert fi.split_perfdata("a=1;2;3;0;10  'a b'=1.5s;1;2;0; 'it''s x'=3\nc=4") == \
        ["a=1;2;3;0;10", "'a b'=1.5s;1;2;0;", "'it''s x'=3", "c=4"]
    assert fi.split_perfdata("  ") == []


def test_icinga2_parse_perfdata(icinga_tools):
    v = fi.icinga2_parse_perfdata("'a b'=1.5s;1;2;0;")
    assert (v["label"], v["value"], v["unit"], v["warn"], v["crit"], v["min"], v["max"]) == \
        ("a b", 1.5, "seconds", 1, 2, 0, None)
    assert fi.icinga2_parse_perfdata("x=1,5") is None
    got = fi.icinga2_parse_perfdata_many(fi.split_perfdata("a=1;2;3;0;10 m=1.5MB u=U"))
    assert [g and (g["label"], g["value"]) for g in got] == [("a", 1), ("m", 1500000), None]


def test_icinga2_validate(icinga_tools, nagios_tmp_path):
    conf = os.path.join(nagios_tmp_path, "conf")
    os.mkdir(conf)
    _write(os.path.join(conf, "objects.conf"), ICINGA_OBJECTS)
    fi.icinga2_host_conf(conf, nrpe_port=5666)
    cache_before = sorted(os.listdir("/var/cache/icinga2")) if os.path.isdir("/var/cache/icinga2") else None

    ok = fi.icinga2_validate([conf], {"NlcStandInPluginDir": "/x/plugins"})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Instantiated 5 Services" in ok.stdout and "Instantiated 1 Host" in ok.stdout

    no_const = fi.icinga2_validate([conf], {})
    assert no_const.returncode == 1 and "NlcStandInPluginDir" in no_const.stdout

    _write(os.path.join(conf, "broken.conf"),
           'object CheckCommand "typo" {\n  import "plugin-check-command"\n  command = [ "/bin/true" ]\n'
           '  argumnets = { "-x" = "$x$" }\n}\n')
    bad = fi.icinga2_validate([conf], {"NlcStandInPluginDir": "/x/plugins"})
    assert bad.returncode == 1 and "broken.conf" in bad.stdout and "argumnets" in bad.stdout
    if cache_before is not None:
        assert sorted(os.listdir("/var/cache/icinga2")) == cache_before


def test_nagios_validate(icinga_tools, nagios_tmp_path, plugin_dir):
    objs = _write(os.path.join(nagios_tmp_path, "objects.cfg"), NAGIOS_OBJECTS)
    host = fi.nagios_host_cfg(nagios_tmp_path, HOST, hostgroups=["nova-compute"], custom_vars={"NRPE_PORT": 5666})
    ok = fi.nagios_validate([objs, host], {"USER2": plugin_dir})
    assert ok.returncode == 0, ok.stdout
    assert "Checked 2 services" in ok.stdout

    _write(os.path.join(nagios_tmp_path, "broken.cfg"),
           "define service {\n  use generic-service\n  host_name compute-test\n"
           "  service_description broken\n  check_command no_such_command\n}\n")
    bad = fi.nagios_validate([objs, host, os.path.join(nagios_tmp_path, "broken.cfg")])
    assert bad.returncode != 0 and "no_such_command" in bad.stdout


# ---------------------------------------------------------------- NRPE

def test_nrpe_same_as_direct_run(icinga_tools, plugin_dir, nrpe_command_file):
    with fi.nrpe_daemon(nrpe_command_file, command_timeout=10) as nrpe:
        for cmd in ("check_dummy", "check_dummy_multiline"):
            direct = fi.run_as_nagios([os.path.join(plugin_dir, cmd)])
            via = nrpe.check(cmd)
            assert (via.stdout, via.returncode) == (direct.stdout, direct.returncode), cmd
        assert nrpe.check("check_dummy").returncode == 1
        assert "first line" in nrpe.check("check_dummy_multiline").stdout.splitlines()[0]
        # Debian's NRPE has no command-argument support: any -a is refused
        refused = nrpe.check("check_dummy", ["-a", "x"])
        assert refused.returncode == 3 and "DUMMY" not in refused.stdout
        assert "Command 'nope' not defined" in nrpe.check("nope").stdout
        pid = nrpe.pid
    assert not fi._alive(pid)
    assert fi.check_nrpe(None, nrpe.port, ["-t", "2"]).returncode != 0


# ---------------------------------------------------------------- Icinga 2 daemon

def test_icinga2_daemon_end_to_end(icinga_tools, nagios_tmp_path, plugin_dir, nrpe_command_file):
    conf = os.path.join(nagios_tmp_path, "conf")
    os.mkdir(conf)
    os.chmod(conf, 0o755)
    _write(os.path.join(conf, "objects.conf"), ICINGA_OBJECTS)
    with fi.nrpe_daemon(nrpe_command_file) as nrpe:
        fi.icinga2_host_conf(conf, HOST, nrpe_port=nrpe.port)
        with fi.icinga2_daemon([conf], {"NlcStandInPluginDir": plugin_dir}) as i2:
            assert i2.services(HOST) == [f"{HOST}!{s}" for s in
                                         ("direct-bad-perf", "direct-dummy", "nrpe-check_dummy",
                                          "nrpe-check_dummy_multiline", "passive-probe")]
            res = i2.force_checks([(HOST, "nrpe-check_dummy"), (HOST, "nrpe-check_dummy_multiline"),
                                   (HOST, "direct-dummy"), (HOST, "direct-bad-perf")])
            r = res[f"{HOST}!nrpe-check_dummy"]
            assert (r["exit_status"], r["state"]) == (1, 1)
            assert r["output"].rstrip() == "DUMMY WARNING - x"
            assert r["performance_data"] == ["a=1;2;3;0;10"]
            assert r["command"][0].endswith("/check_nrpe") and "check_dummy" in r["command"]
            assert str(nrpe.port) in r["command"]

            m = res[f"{HOST}!nrpe-check_dummy_multiline"]
            assert m["exit_status"] == 0
            assert m["output"].splitlines()[0].rstrip() == "DUMMY OK - first line"
            assert "second line" in m["output"]
            # Icinga 2.13 quirk: the space after '|' on a long-output line becomes part of the label
            # (Nagios-guideline output, but Icinga makes it ' b'). Our checks must write '|b=' there.
            assert m["performance_data"] == ["a=1;2;3;0;10", "' b'=2s;;;0;", "c=3%;80;90;0;100"]

            d = res[f"{HOST}!direct-dummy"]
            assert (d["exit_status"], d["output"].rstrip()) == (1, "DUMMY WARNING - x")
            assert d["command"] == [os.path.join(plugin_dir, "check_dummy")]

            # PerfdataWriter: PNP4Nagios bulk format, visible after a rotation
            line = i2.perfdata_lines("nrpe-check_dummy", HOST)[0]
            f = fi.parse_pnp_line(line)
            assert (f["DATATYPE"], f["SERVICEPERFDATA"], f["SERVICESTATE"], f["HOSTSTATE"],
                    f["SERVICECHECKCOMMAND"]) == ("SERVICEPERFDATA", "a=1;2;3;0;10", "WARNING", "UP", "nrpe")

            # Icinga parsed our perfdata without complaint; the positive control did warn
            assert i2.perfdata_warnings(HOST, "nrpe-check_dummy_multiline") == []
            assert i2.perfdata_warnings(HOST, "nrpe-check_dummy") == []
            warn = i2.perfdata_warnings(HOST, "direct-bad-perf")
            assert len(warn) == 1 and "x=1,5" in warn[0]
            # the values as Icinga parsed them (InfluxdbWriter -> in-process sink)
            pts = {p["tags"]["metric"]: p["fields"] for p in i2.metrics(HOST, "nrpe-check_dummy_multiline")}
            assert pts["a"] == {"value": 1, "warn": 2, "crit": 3, "min": 0, "max": 10}
            assert pts["c"]["unit"] == "percent" and pts[" b"]["unit"] == "seconds"
            assert not [w for w in i2.log_warnings() if "direct-bad-perf" not in w]

            # Icinga's own output/perfdata splitter without a plugin: '|d=' on a long-output line is fine
            p = i2.submit_plugin_output(HOST, "passive-probe", 2, "X CRITICAL - y | 'a b'=1;2;3 c=4\nlong |d=5")
            assert (p["state"], p["output"], p["performance_data"]) == \
                (2, "X CRITICAL - y \nlong ", ["'a b'=1;2;3", "c=4", "d=5"])

            # force again: a second, newer result
            again = i2.force_check(HOST, "direct-dummy")
            assert again["execution_start"] > d["execution_start"]
            pid = i2.pid
        assert not fi._alive(pid)


def test_icinga2_daemon_bad_config_fails_loudly(icinga_tools, nagios_tmp_path, tmp_path):
    _write(os.path.join(nagios_tmp_path, "bad.conf"), 'object Host "h" { check_command = "nope" }\n')
    with pytest.raises(fi.HarnessError, match="(?s)exited with rc.*nope"):
        with fi.icinga2_daemon([os.path.join(nagios_tmp_path, "bad.conf")]):
            pass
    # pytest's tmp_path (0700) is unusable for the nagios user: said clearly, before starting anything
    _write(tmp_path / "ok.conf", "")
    with pytest.raises(fi.HarnessError, match="not accessible to user 'nagios'"):
        with fi.icinga2_daemon([str(tmp_path / "ok.conf")]):
            pass


# ---------------------------------------------------------------- Nagios 4 daemon

def test_nagios_daemon_end_to_end(icinga_tools, monitoring_daemons, nagios_tmp_path, plugin_dir,
                                  nrpe_command_file):
    nrpe = monitoring_daemons.nrpe(nrpe_command_file)
    objs = _write(os.path.join(nagios_tmp_path, "objects.cfg"), NAGIOS_OBJECTS)
    host = fi.nagios_host_cfg(nagios_tmp_path, HOST, hostgroups=["nova-compute"],
                              custom_vars={"NRPE_PORT": nrpe.port})
    ng = monitoring_daemons.nagios([objs, host], {"USER2": plugin_dir})
    res = ng.force_checks([(HOST, "direct-dummy"), (HOST, "nrpe-check_dummy_multiline")])

    d = res[f"{HOST}!direct-dummy"]
    assert (d["state"], d["output"], d["perfdata"], d["long_output"]) == (1, "DUMMY WARNING - x", "a=1;2;3;0;10", "")
    m = res[f"{HOST}!nrpe-check_dummy_multiline"]
    assert (m["state"], m["output"]) == (0, "DUMMY OK - first line")
    assert m["long_output"].splitlines() == ["second line", "third line "]
    assert fi.split_perfdata(m["perfdata"]) == ["a=1;2;3;0;10", "b=2s;;;0;", "c=3%;80;90;0;100"]

    f = fi.parse_pnp_line(ng.perfdata_lines("nrpe-check_dummy_multiline", HOST)[0])
    assert f["SERVICECHECKCOMMAND"] == "nlc_check_nrpe!check_dummy_multiline"
    assert f["SERVICESTATE"] == "OK" and f["SERVICEPERFDATA"].startswith("a=1;2;3;0;10")


# ---------------------------------------------------------------- crash safety

def test_cleanup_stale_stops_orphaned_daemon(icinga_tools, nrpe_command_file):
    """A test process that died without its teardown leaves a daemon; the next session removes it."""
    cm = fi.nrpe_daemon(nrpe_command_file)
    nrpe = cm.__enter__()
    try:
        dead = fi.subprocess.Popen(["true"])
        dead.wait()
        with open(os.path.join(nrpe.base, fi.OWNER_FILE), "w") as f:
            f.write(f"{dead.pid} 1\n")  # owner gone
        assert nrpe.base in fi.cleanup_stale()
        assert not fi._alive(nrpe.pid) and not os.path.exists(nrpe.base)
    finally:
        cm.__exit__(None, None, None)
