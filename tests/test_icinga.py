"""icinga/: Icinga 2, Nagios Core, NRPE and PNP4Nagios integration, proven with the real daemons.

What is real here:
- `icinga2 daemon -C` with the ITL, and a real Icinga 2 daemon (REST API, PerfdataWriter in
  PNP4Nagios bulk format, InfluxdbWriter whose parser reports bad perfdata) running the
  committed icinga/icinga2/*.conf: checks through NRPE (ITL `nrpe`), and through
  command_endpoint - the daemon's own endpoint stands in for the agent on the compute node, so
  the same CheckCommand runs with the same arguments, only on this machine;
- `nagios4 -v`, with the harness's base objects and with Debian's stock /etc/nagios4 config,
  and a real Nagios 4 daemon running the committed icinga/nagios/*.cfg;
- Debian's NRPE daemon (nrpe_user nagios, no command arguments) with the committed NRPE file,
  its plugin directory /usr/lib/nagios/plugins/ replaced by where `make install` put the checks
  for the test (fixture installed_plugins), and check_nrpe (v4 and -2 packets);
- the checks as installed, run as user nagios, against the real libvirtd with two QEMU guests
  and the real Keystone/Nova/Placement; Icinga 2's own perfdata parser;
- php-cli (Debian) running the graph templates, Perl RRDs and rrdtool (what PNP4Nagios uses)
  making the RRD files and drawing the graphs.
What stands in: PNP4Nagios itself, which Debian 12 does not package. `Pnp` below does what its
process_perfdata.pl does with a perfdata line (template and check_commands/*.cfg chosen by
SERVICECHECKCOMMAND, RRD_STORAGE_TYPE MULTIPLE file names, DATATYPE, USE_MIN_ON_CREATE, range
thresholds) and what its web front end does with a template (per-data-source arrays, then
`rrdtool -` fed the template's opt and def), written from its documented behaviour.
"""
import importlib.machinery
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from tests import fixtures_icinga as fi
from tests.conftest import ROOT, service_unavailable
from tests.helpers import apt_install, steady_labels

ICINGA = os.path.join(ROOT, "icinga")
NRPE_FILE = os.path.join(ICINGA, "nrpe", "nova-libvirt-checks.cfg")
SYSTEM_PLUGINS = "/usr/lib/nagios/plugins/"
PLUGINS = {"libvirtd": "check_libvirtd", "libvirt_instances": "check_libvirt_instances",
           "nova_hypervisors": "check_nova_hypervisors"}
STATUS_NAMES = {"libvirtd": "LIBVIRTD", "libvirt_instances": "INSTANCES",
                "nova_hypervisors": "HYPERVISORS"}
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
SI_PREFIX = re.compile(r"(#) ?[kMGTP]?(B/s|/s|GiB|TiB)")


def generator():
    """icinga/generate as a module (it has no .py suffix)."""
    path = os.path.join(ICINGA, "generate")
    loader = importlib.machinery.SourceFileLoader("nlc_icinga_generate", path)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def write(path, text, mode=0o644):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def nrpe_commands(text=None):
    """{name: command line} of the NRPE file."""
    text = read(NRPE_FILE) if text is None else text
    return dict(re.findall(r"^command\[([^\]]+)\]=(.*)$", text, re.M))


def icinga2_objects(text):
    """{CheckCommand name: body} of an Icinga 2 file (our simple generated layout)."""
    return dict(re.findall(r'^object CheckCommand "([^"]+)" \{\n(.*?)^\}', text, re.M | re.S))


def tokens(perfdata):
    """[(label, value, uom, warn, crit, min, max)] of a perfdata string."""
    out = []
    for tok in fi.split_perfdata(perfdata):
        label, _, rest = tok.rpartition("=")
        fields = rest.split(";") + [""] * 5
        m = re.fullmatch(r"(-?[\d.]+)([a-zA-Z%]*)", fields[0])
        assert m, f"malformed perfdata value in {tok!r}"
        out.append((label.strip("'"), float(m[1]), m[2], *fields[1:5]))
    return out


def shape(output):
    """A plugin output with the measured numbers taken out: two runs on an unchanged host give
    the same shape (status line text, long output, perfdata labels, units and thresholds)."""
    lines = output.rstrip("\n").split("\n")
    first, _, perf = lines[0].partition(" | ")

    # without the disk latencies, as in labels_of(): they exist only for a window in which the
    # disk had requests of that kind (issue 13), so two runs a moment apart may differ
    def plain(text):
        return LATENCY.sub("", SI_PREFIX.sub(r"\1 \2", NUMBER.sub("#", text)))
    return ([plain(first)] + [plain(line) for line in lines[1:]],
            [(t[0], t[2], t[3], t[4], t[5], t[6]) for t in tokens(perf) if not t[0].endswith("_latency")])


LATENCY = re.compile(r", disk (?:read|write|flush) latency # ms")


def labels_of(perfdata_list):
    """The labels in order, without the disk latencies: those exist only for a window in which
    the disk had requests (issue 13), so runs a moment apart may have them or not."""
    return steady_labels(t.split("=", 1)[0].strip("'") for t in perfdata_list)


def plugin_argv(command_line, plugin_dir):
    """An NRPE command line with the installed plugin directory."""
    argv = shlex.split(command_line)
    assert argv[0].startswith(SYSTEM_PLUGINS), argv[0]
    return [os.path.join(plugin_dir, argv[0][len(SYSTEM_PLUGINS):])] + argv[1:]


@pytest.fixture(scope="module")
def deployed(icinga_tools, installed_plugins):
    """icinga/ copied where the nagios user can read it (as an operator copies the files), the
    NRPE file `make install` wrote for the installed plugins (which the session's `nrpe`
    serves). Yields {"dir", "nrpe_file", "plugins"}."""
    base = fi.private_dir("icinga-files")
    try:
        target = os.path.join(base, "icinga")
        shutil.copytree(ICINGA, target, ignore=shutil.ignore_patterns("__pycache__"))
        for root, _dirs, files in os.walk(base):
            os.chmod(root, 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        nrpe_file = fi.installed_nrpe_file(installed_plugins)
        assert read(nrpe_file) == read(NRPE_FILE).replace(SYSTEM_PLUGINS, installed_plugins + "/")
        yield {"dir": target, "nrpe_file": nrpe_file, "plugins": installed_plugins}
    finally:
        fi._rmtree(base)


# ================================================================ kept in sync with the code

def test_generated_files_match_the_argument_parsers():
    """The committed CheckCommands, Nagios commands and PNP4Nagios files are what icinga/generate
    makes from the checks' argument parsers now: an option added to a check without
    regenerating fails here."""
    generated = generator().outputs()
    stale = [rel for rel, text in generated.items()
             if not os.path.exists(os.path.join(ICINGA, rel))
             or read(os.path.join(ICINGA, rel)) != text]
    assert not stale, f"out of date, run `.venv/bin/python icinga/generate`: {stale}"
    # and nothing generated is left over from a check or command that went away
    on_disk = {os.path.relpath(os.path.join(d, f), ICINGA)
               for d, _, files in os.walk(ICINGA) for f in files
               if "GENERATED by icinga/generate" in "".join(read(os.path.join(d, f)).splitlines(True)[:2])}
    assert on_disk == set(generated)
    # the script's own check mode agrees
    proc = subprocess.run([sys.executable, os.path.join(ICINGA, "generate"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_option_of_every_check_is_an_argument_of_its_checkcommand():
    """Read independently of the generator: each option of each check's parser (for
    check_nova_hypervisors those of the password and application-credential auth types) is an
    argument of its CheckCommand, -v is -v/-vv/-vvv, and a secret is in `env`, not an argument."""
    gen = generator()
    objects = icinga2_objects(read(os.path.join(ICINGA, "icinga2", "commands.conf")))
    with gen.clean_environment():
        secrets = gen.secret_envvars()
        for command in PLUGINS:
            body = objects[command]
            keys = set(re.findall(r'^\t\t"(-[^"]+)" = \{', body, re.M))
            env = dict(re.findall(r'^\t\t(OS_\w+) = "\$([a-z_]+)\$"', body, re.M))
            for parser in gen.parsers(command):
                for action in parser._actions:
                    strings = action.option_strings
                    if "--help" in strings or "--version" in strings:
                        continue
                    if action.dest in secrets:
                        assert env.get(secrets[action.dest]) == f"{command}_{action.dest}", strings
                        assert not keys & set(strings), f"secret {strings} on the command line"
                    elif action.dest == "verbose":
                        assert {"-v", "-vv", "-vvv"} <= keys
                    else:
                        assert keys & set(strings), f"{command}: no argument for {strings}"
                        # a flag (no value) is set_if, an option with a value passes it
                        key = "set_if" if action.nargs == 0 else "value"
                        assert f'{key} = "${command}_{action.dest}$"' in body, strings


def test_checkcommand_defaults_are_valid_arguments():
    """The defaults a CheckCommand carries (vars.<command>_<option>) parse as arguments of the
    check, as Icinga would pass them."""
    gen = generator()
    with gen.clean_environment():
        for command, defaults in gen.DEFAULTS.items():
            actions = {a.dest: a for p in gen.parsers(command) for a in p._actions}
            argv = []
            for dest, value in defaults.items():
                option = gen.key_of(actions[dest])
                for v in (value if isinstance(value, list) else [value]):
                    argv += [option, v]
            gen.parsers(command)[0].parse_args(argv)


def test_nrpe_command_file():
    """Every NRPE command runs one of our checks from /usr/lib/nagios/plugins with arguments its
    parser accepts, in plain words (NRPE runs the line with /bin/sh), and keeps its output within
    what its client carries; every NRPE command our Icinga 2 and Nagios definitions ask for
    exists."""
    gen = generator()
    commands = nrpe_commands()
    limits = {"check_libvirtd": None, "check_libvirt_instances": 65000,
              "check_libvirt_instances_8k": 8000, "check_libvirt_instances_1k": 1000}
    assert set(commands) == set(limits)
    with gen.clean_environment():
        for name, line in commands.items():
            assert not re.search(r"[`$&|;<>()\\\"'*?{}\[\]]", line), line
            argv = shlex.split(line)
            plugin = os.path.basename(argv[0])
            assert argv[0] == SYSTEM_PLUGINS + plugin and plugin in PLUGINS.values()
            command = next(c for c, p in PLUGINS.items() if p == plugin)
            args = gen.parsers(command)[0].parse_args(argv[1:])
            assert args.timeout <= 20
            if limits[name] is not None:
                assert args.max_output <= limits[name], (name, args.max_output)
    conf = read(os.path.join(ICINGA, "icinga2", "commands.conf"))
    wanted = set(re.findall(r'vars\.nrpe_command = "([^"]+)"', conf))
    nagios = read(os.path.join(ICINGA, "nagios", "commands.cfg"))
    wanted |= set(re.findall(r"check_nrpe .* -c (\S+)$", nagios, re.M))
    assert wanted and wanted <= set(commands), wanted - set(commands)


# ================================================================ configuration checks

def _validation_hosts(directory):
    """Hosts for every apply rule: NRPE, agent (zone and endpoint), cloud by clouds.yaml, cloud
    by openrc variables through an agent."""
    return write(os.path.join(directory, "hosts.conf"), """
object Endpoint "master1" { }
object Zone "master" { endpoints = [ "master1" ] }
object Endpoint "compute2" { }
object Zone "compute2" { endpoints = [ "compute2" ]; parent = "master" }
object Host "compute1" {
  check_command = "dummy"; address = "192.0.2.11"; zone = "master"
  vars.nova_compute = true
}
object Host "compute2" {
  check_command = "dummy"; address = "192.0.2.12"; zone = "master"
  vars.nova_compute = true; vars.agent_endpoint = name
  vars.libvirt_instances_critical = [ "cpu=99", "disk_write_bytes=200M" ]
}
object Host "cloud1" {
  check_command = "dummy"; zone = "master"
  vars.nova_hypervisors_os_cloud = "monitoring"
}
object Host "cloud2" {
  check_command = "dummy"; zone = "master"; vars.agent_endpoint = "compute2"
  vars.nova_hypervisors_os_auth_url = "https://keystone.example.org:5000/v3"
  vars.nova_hypervisors_os_password = "not on any command line"
}
""")


def test_icinga2_config_validates_with_the_itl(icinga_tools, nagios_tmp_path):
    """`icinga2 daemon -C`: our files alone, with hosts for every rule (2 services per compute
    node, 1 per cloud), and with the plugin directory constant overridden first."""
    conf = os.path.join(ICINGA, "icinga2")
    alone = fi.icinga2_validate([conf])
    assert alone.returncode == 0, alone.stdout
    hosts = _validation_hosts(nagios_tmp_path)
    full = fi.icinga2_validate([conf, hosts])
    assert full.returncode == 0, full.stdout
    assert "Instantiated 6 Services" in full.stdout, full.stdout
    assert not [line for line in full.stdout.splitlines() if "warning/" in line], full.stdout
    other = fi.icinga2_validate([conf, hosts], {"NovaLibvirtChecksPluginDir": "/opt/nlc/plugins"})
    assert other.returncode == 0, other.stdout


def _nagios_hosts(directory, nrpe_port=5666, cloud="monitoring"):
    return write(os.path.join(directory, "hosts.cfg"), f"""
define host {{
  use        nova-compute-node
  host_name  compute-test
  address    127.0.0.1
  _NRPE_PORT {nrpe_port}
}}
define host {{
  use        openstack-cloud
  host_name  cloud-test
  address    127.0.0.1
  _OS_CLOUD  {cloud}
}}
""")


def test_nagios_objects_validate(icinga_tools, nagios_tmp_path):
    """`nagios4 -v`: with the harness's base objects, and dropped into Debian's stock
    /etc/nagios4/nagios.cfg (its templates, its /etc/nagios-plugins/config commands) with no
    warning: no name clashes, nothing to rewrite."""
    ours = [os.path.join(ICINGA, "nagios", "commands.cfg"), os.path.join(ICINGA, "nagios", "services.cfg")]
    hosts = _nagios_hosts(nagios_tmp_path)
    result = fi.nagios_validate(ours + [hosts])
    assert result.returncode == 0, result.stdout
    assert "Checked 3 services" in result.stdout, result.stdout

    stock = "/etc/nagios4/nagios.cfg"
    if not os.path.exists(stock):
        service_unavailable(f"{stock} (package nagios4-common) is missing")
    main = write(os.path.join(nagios_tmp_path, "nagios.cfg"),
                 read(stock) + "".join(f"\ncfg_file={path}" for path in ours + [hosts]) + "\n")
    result = subprocess.run(["nagios4", "-v", main], capture_output=True, text=True,
                            env=fi.DAEMON_ENV, cwd="/", timeout=60)
    assert result.returncode == 0, result.stdout
    assert "Total Warnings: 0" in result.stdout and "Total Errors:   0" in result.stdout, result.stdout


# ================================================================ PNP4Nagios (stand-in)

PHP_DRIVER = r"""<?php
/* Runs a PNP4Nagios graph template as PNP's Data_Model::includeTemplate() does: the data
   sources' XML tags as 1-based arrays ($NAME[1], $RRDFILE[1], ...), the NAGIOS_* macros,
   $hostname, $servicedesc; $def, $opt, $ds_name start as FALSE. Any PHP notice fails. */
error_reporting(E_ALL);
set_error_handler(function ($no, $text, $file, $line) {
    fwrite(STDERR, "PHP error $no: $text in $file:$line\n");
    exit(70);
});
$nlc_input = json_decode(file_get_contents($argv[1]), true);
foreach ($nlc_input['datasources'] as $nlc_k => $nlc_ds) {
    foreach ($nlc_ds as $nlc_tag => $nlc_value) {
        if (!isset($$nlc_tag) || !is_array($$nlc_tag)) { $$nlc_tag = array(); }
        ${$nlc_tag}[$nlc_k + 1] = $nlc_value;
    }
}
foreach ($nlc_input['macros'] as $nlc_key => $nlc_value) { ${"NAGIOS_" . $nlc_key} = $nlc_value; }
$hostname = $nlc_input['macros']['HOSTNAME'];
$servicedesc = $nlc_input['macros']['SERVICEDESC'];
$rrdfile = $RRDFILE[1];
$def = FALSE; $opt = FALSE; $ds_name = FALSE;
ob_start();
include($nlc_input['template']);
$nlc_printed = ob_get_clean();
echo json_encode(array('def' => $def, 'opt' => $opt, 'ds_name' => $ds_name, 'printed' => $nlc_printed));
"""

PERL_RRDS = r"""
use strict; use warnings; use RRDs; use JSON::PP;
open(my $fh, '<', $ARGV[0]) or die "$ARGV[0]: $!"; local $/; my $spec = decode_json(<$fh>);
for my $r (@{$spec->{rrds}}) {
    if (! -e $r->{file}) {
        RRDs::create($r->{file}, @{$spec->{rra}}, "DS:1:$r->{dstype}:$r->{heartbeat}:$r->{min}:U",
                     "--start=$spec->{start}", "--step=60");
        my $e = RRDs::error(); die "RRDs::create $r->{file}: $e\n" if $e;
    }
    for my $t (@{$spec->{times}}) {
        RRDs::update($r->{file}, "$t:$r->{value}");
        my $e = RRDs::error(); die "RRDs::update $r->{file}: $e\n" if $e;
    }
}
print "ok\n";
"""


def ensure_php():
    if shutil.which("php"):
        return
    if os.geteuid() != 0:
        service_unavailable("php-cli is missing and we are not root to install it")
    proc = apt_install("php-cli")
    if not shutil.which("php"):
        service_unavailable(f"apt-get install php-cli failed: {proc.stderr[-500:]}")


def _cleanup(text):
    """PNP's name cleaning of hosts, services, labels and templates."""
    return re.sub(r"[ :/\\]", "_", text)


class Pnp:
    """What PNP4Nagios 0.6 does with a perfdata line and a graph template (see the module
    docstring): RRD files in `rrd_dir`, check_commands/*.cfg in `cfg_dir`, templates in
    `template_dir`."""

    RRA = ["RRA:AVERAGE:0.5:1:2880", "RRA:AVERAGE:0.5:5:2880", "RRA:MAX:0.5:1:2880",
           "RRA:MIN:0.5:1:2880"]
    UOM2TYPE = {"c": "DERIVE", "d": "DERIVE"}

    def __init__(self, rrd_dir, cfg_dir, template_dir):
        self.rrd_dir, self.cfg_dir, self.template_dir = rrd_dir, cfg_dir, template_dir

    @staticmethod
    def read_cfg(path):
        """PNP's reading of a check_commands file: comments and spaces go, KEY=VALUE stays."""
        settings = {}
        for line in read(path).splitlines():
            if line.startswith("#") or not line.strip():
                continue
            line = line.split("#", 1)[0].replace(" ", "")
            if "=" in line:
                key, value = line.split("=", 1)
                settings[key] = value
        return settings

    def settings_for(self, check_command):
        """(template name, settings) for a SERVICECHECKCOMMAND, following CUSTOM_TEMPLATE."""
        parts = check_command.split("!")
        template = _cleanup(parts[0]).strip()
        settings = {}
        for _round in (1, 2):
            path = os.path.join(self.cfg_dir, f"{template}.cfg")
            settings = self.read_cfg(path) if os.path.exists(path) else {}
            custom = settings.get("CUSTOM_TEMPLATE")
            if not custom:
                break
            keys = [int(k) for k in custom.split(",") if k.isdigit() and int(k) < len(parts)]
            if not keys:
                break
            template = "_".join(parts[k].strip() for k in keys)
        return template, settings

    def template_file(self, template):
        """PNP's recursive template search: the longest existing a_b_c prefix wins."""
        found, prefix = None, ""
        for piece in template.split("_"):
            prefix = piece if not prefix else f"{prefix}_{piece}"
            path = os.path.join(self.template_dir, f"{prefix}.php")
            if os.path.exists(path):
                found = path
        return found or os.path.join(self.template_dir, "default.php")

    @staticmethod
    def parse(perfdata):
        """The data sources of a perfdata string, with PNP's tags."""
        sources = []
        for tok in fi.split_perfdata(perfdata.replace(",", ".")):
            m = re.fullmatch(r"([^=]+)=([\d.\-]+)([\w/%]*)((?:;[^;]*){0,4})", tok)
            assert m, f"PNP would reject perfdata token {tok!r}"
            fields = (m[4][1:].split(";") if m[4] else []) + [""] * 4
            ds = {"LABEL": m[1].replace("'", ""), "ACT": m[2],
                  "UNIT": "%%" if m[3] == "%" else m[3], "MIN": fields[2], "MAX": fields[3],
                  "_uom": m[3]}
            ds["NAME"] = _cleanup(re.sub(r"[/\\]", "_", ds["LABEL"]))
            for key, value in (("WARN", fields[0]), ("CRIT", fields[1])):
                ds.update({key: value, f"{key}_MIN": "", f"{key}_MAX": "", f"{key}_RANGE_TYPE": ""})
                rng = re.fullmatch(r"([\d.\-~@]+)?:([\d.\-~@]+)?", value)
                if rng:
                    low = rng[1] or ""
                    ds.update({key: "", f"{key}_MIN": low.lstrip("@"), f"{key}_MAX": rng[2] or "",
                               f"{key}_RANGE_TYPE": "inside" if low.startswith("@") else "outside"})
                else:
                    ds[key] = value.replace("~", "").replace("@", "")
            sources.append(ds)
        return sources

    def process(self, line, times):
        """One PerfdataWriter / Nagios bulk line: RRD files created and updated at `times` with
        the line's values. Returns (template file, data sources with PNP's XML tags, macros)."""
        fields = fi.parse_pnp_line(line)
        host, service = _cleanup(fields["HOSTNAME"]), _cleanup(fields["SERVICEDESC"])
        template, settings = self.settings_for(fields["SERVICECHECKCOMMAND"])
        storage = settings.get("RRD_STORAGE_TYPE", "SINGLE").upper()
        assert storage == "MULTIPLE", (fields["SERVICECHECKCOMMAND"], settings)
        types = settings.get("DATATYPE", "").upper().split(",")
        os.makedirs(os.path.join(self.rrd_dir, host), exist_ok=True)
        sources, rrds = self.parse(fields["SERVICEPERFDATA"]), []
        for count, ds in enumerate(sources):
            dstype = self.UOM2TYPE.get(ds.pop("_uom"), "GAUGE")
            if len(types) > count and types[count] in ("GAUGE", "COUNTER", "DERIVE", "ABSOLUTE"):
                dstype = types[count]
            elif types[0] in ("GAUGE", "COUNTER", "DERIVE", "ABSOLUTE") and len(types) == 1:
                dstype = types[0]
            rrd_min = ds["MIN"] if settings.get("USE_MIN_ON_CREATE") == "1" and ds["MIN"] != "" \
                else ("0" if dstype == "DERIVE" else "U")
            path = os.path.join(self.rrd_dir, host, f"{service}_{ds['NAME']}.rrd")
            ds.update({"TEMPLATE": template, "RRDFILE": path, "RRD_STORAGE_TYPE": storage,
                       "RRD_HEARTBEAT": settings.get("RRD_HEARTBEAT", "8640"), "IS_MULTI": "0",
                       "DS": "1", "_dstype": dstype})
            rrds.append({"file": path, "dstype": dstype, "heartbeat": ds["RRD_HEARTBEAT"],
                         "min": rrd_min, "value": ds["ACT"]})
        spec = os.path.join(self.rrd_dir, "rrds.json")
        write(spec, json.dumps({"rrds": rrds, "rra": self.RRA, "start": times[0] - 60,
                                "times": times}))
        proc = subprocess.run(["perl", "-e", PERL_RRDS, spec], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        macros = {"HOSTNAME": host, "SERVICEDESC": service, "DISP_HOSTNAME": fields["HOSTNAME"],
                  "DISP_SERVICEDESC": fields["SERVICEDESC"], "TIMET": fields.get("TIMET", ""),
                  "CHECK_COMMAND": fields["SERVICECHECKCOMMAND"]}
        return self.template_file(template), sources, macros

    def render(self, template_file, sources, macros):
        """Run the template with php-cli: {'def': [...], 'opt': [...], 'ds_name': [...]}."""
        public = [{k: v for k, v in ds.items() if not k.startswith("_")} for ds in sources]
        data = os.path.join(self.rrd_dir, "template-input.json")
        driver = os.path.join(self.rrd_dir, "driver.php")
        write(data, json.dumps({"datasources": public, "macros": macros, "template": template_file}))
        write(driver, PHP_DRIVER)
        proc = subprocess.run(["php", "-d", "display_errors=stderr", driver, data],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and not proc.stderr, (template_file, proc.stdout, proc.stderr)
        result = json.loads(proc.stdout)
        assert result["printed"] == "", result["printed"]
        for key in ("def", "opt", "ds_name"):
            value = result[key]
            result[key] = [value[k] for k in sorted(value, key=int)] if isinstance(value, dict) \
                else list(value or [])
        assert result["def"] and len(result["def"]) == len(result["opt"]), result
        return result

    def graph(self, rendered, start, end, out_dir):
        """Draw every graph as PNP does (`rrdtool -` reading `graph - <timerange> <opt> <def>`),
        into PNG files. Returns [(ds_name, png path, rrd files used)]."""
        lines, drawn = [], []
        for n, (opt, defs) in enumerate(zip(rendered["opt"], rendered["def"])):
            png = os.path.join(out_dir, f"graph{n}.png")
            lines.append(f"graph {png} --start {start} --end {end} --width 500 --height 120 {opt} {defs}")
            files = set(re.findall(r"DEF:[\w-]+=([^:]+):", defs))
            name = rendered["ds_name"][n] if n < len(rendered["ds_name"]) else str(n)
            drawn.append((name, png, files))
        proc = subprocess.run(["rrdtool", "-"], input="\n".join(lines) + "\n", capture_output=True,
                              text=True, timeout=120)
        answers = [line for line in proc.stdout.splitlines() if line.startswith(("OK", "ERROR"))]
        assert proc.returncode == 0 and len(answers) == len(lines) and \
            all(a.startswith("OK") for a in answers), (proc.stdout, proc.stderr, lines)
        for _name, png, _files in drawn:
            with open(png, "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
        return drawn


def assert_graphed(pnp, line, out_dir, times):
    """A perfdata line goes through the PNP stand-in: one RRD per label (MULTIPLE), every label
    drawn by the template, nothing left to the template's catch-all, rates with units."""
    template_file, sources, macros = pnp.process(line, times)
    assert os.path.dirname(template_file) == pnp.template_dir and \
        not template_file.endswith("default.php"), template_file
    rendered = pnp.render(template_file, sources, macros)
    drawn = pnp.graph(rendered, times[0] - 60, times[-1] + 60, out_dir)
    used = set().union(*(files for _n, _p, files in drawn))
    files = {ds["RRDFILE"] for ds in sources}
    assert len(files) == len(sources), "two labels share an RRD file"
    assert files <= used, f"labels not drawn: {sorted(files - used)}"
    assert used <= files, f"template reads RRD files of no label: {sorted(used - files)}"
    assert "other values" not in [name for name, _p, _f in drawn], "labels the template does not know"
    assert all(ds["_dstype"] == "GAUGE" for ds in sources)
    return rendered


def test_pnp4nagios_files(icinga_tools):
    """Each command name that a PerfdataWriter or Nagios writes as SERVICECHECKCOMMAND has its
    check_commands/*.cfg (PNP's reading: MULTIPLE storage, a valid DATATYPE, no unknown key) and
    reaches one of our graph templates; every template is valid PHP."""
    ensure_php()
    pnp = Pnp("/nonexistent", os.path.join(ICINGA, "pnp4nagios", "check_commands"),
              os.path.join(ICINGA, "pnp4nagios", "templates"))
    names = set(icinga2_objects(read(os.path.join(ICINGA, "icinga2", "commands.conf"))))
    nagios = set(re.findall(r"command_name\s+(\S+)", read(os.path.join(ICINGA, "nagios", "commands.cfg"))))
    assert names == nagios
    known = {"RRD_STORAGE_TYPE", "DATATYPE", "USE_MIN_ON_CREATE", "USE_MAX_ON_CREATE",
             "RRD_HEARTBEAT", "CUSTOM_TEMPLATE"}
    for name in names:
        template, settings = pnp.settings_for(f"{name}!--some -args")
        assert template == name and set(settings) <= known, (name, settings)
        assert settings["RRD_STORAGE_TYPE"] == "MULTIPLE"
        assert all(t in ("GAUGE", "COUNTER", "DERIVE", "ABSOLUTE") for t in settings["DATATYPE"].split(","))
        path = pnp.template_file(template)
        assert os.path.basename(path) == f"{name}.php", path
    for php in os.listdir(pnp.template_dir):
        lint = subprocess.run(["php", "-l", os.path.join(pnp.template_dir, php)],
                              capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr


# ================================================================ perfdata of the checks

def _state_cases(cloud_env):
    wrong = dict(cloud_env, OS_PASSWORD="certainly-not-the-password")
    hv = ["--flavor", "m1.small", "--perfdata-per-hypervisor", "--down-critical", "1000"]
    return [
        ("libvirtd", 0, ["-w", "1", "-c", "5"], None),
        ("libvirtd", 1, ["--domains-warning", "running=0"], None),
        ("libvirtd", 2, ["--domains-critical", "running=0"], None),
        ("libvirtd", 3, ["--read-write"], None),
        ("libvirt_instances", 0, [], None),
        ("libvirt_instances", 1, ["-w", "cpu=0"], None),
        ("libvirt_instances", 2, ["-c", "cpu=0", "--total-warning", "disk_read_bytes=0"], None),
        ("libvirt_instances", 3, ["-U", "qemu:///system?socket=/nonexistent"], None),
        ("nova_hypervisors", 0, hv, cloud_env),
        ("nova_hypervisors", 1, hv + ["-w", "vcpus_free=1000000:"], cloud_env),
        ("nova_hypervisors", 2, hv + ["-c", "memory_free=1000Ti:", "-w", "vcpus=0%"], cloud_env),
        ("nova_hypervisors", 3, hv + ["--no-token-cache"], wrong),
    ]


def test_perfdata_in_every_state_parses_and_keeps_its_labels(icinga_tools, installed_plugins,
                                                             libvirtd, cloud):
    """Each check, installed and run as user nagios (as NRPE and Icinga run it), in each state
    OK/WARNING/CRITICAL/UNKNOWN: every perfdata token parses with Icinga 2's own parser (and
    PNP's), and two runs on an unchanged host give the same labels in the same order."""
    cases = _state_cases(cloud.env)
    runs = []
    for command, state, args, env in cases:
        argv = [os.path.join(installed_plugins, PLUGINS[command])] + args
        first, second = fi.run_as_nagios(argv, env=env), fi.run_as_nagios(argv, env=env)
        for proc in (first, second):
            assert proc.returncode == state, (command, args, proc.stdout, proc.stderr)
            word = ["OK", "WARNING", "CRITICAL", "UNKNOWN"][state]
            assert proc.stdout.startswith(f"{STATUS_NAMES[command]} {word} - "), proc.stdout
            assert proc.stderr == "" and "Traceback" not in proc.stdout
            assert "|" not in "".join(proc.stdout.splitlines(True)[1:]), "perfdata after line 1"
        perf = [p.stdout.splitlines()[0].partition(" | ")[2] for p in (first, second)]
        assert labels_of(fi.split_perfdata(perf[0])) == labels_of(fi.split_perfdata(perf[1])), \
            (command, args)
        if state != 3:
            assert perf[0], (command, args, first.stdout)
        runs.append((command, state, perf[0]))
    assert "certainly-not-the-password" not in "".join(p for _c, _s, p in runs)

    all_tokens = [tok for _c, _s, perf in runs for tok in fi.split_perfdata(perf)]
    parsed = fi.icinga2_parse_perfdata_many(all_tokens)
    rejected = [tok for tok, value in zip(all_tokens, parsed) if value is None]
    assert not rejected, f"Icinga 2 rejects {rejected}"
    for tok, value in zip(all_tokens, parsed):
        assert value["label"] == tok.split("=", 1)[0].strip("'")
        assert not tok.split("=", 1)[1].split(";")[0].endswith("c"), "a raw counter: type it in PNP"
    for _c, _s, perf in runs:
        Pnp.parse(perf)


def test_labels_stay_while_another_libvirt_client_polls(icinga_tools, installed_plugins, libvirtd):
    """A compute node has other libvirt clients asking for block and balloon stats (nova-compute,
    ceilometer, collectd; or several of our own checks scheduled at once): one holds a domain's
    job for a few milliseconds now and then. check_libvirt_instances, run as nagios as a
    scheduler runs it, keeps every label of every instance in every run meanwhile - a label
    that comes and goes is a gap in each graph and an alert that cannot fire."""
    import libvirt
    state_dir = fi.private_dir("labels-state")
    if os.geteuid() == 0:
        shutil.chown(state_dir, fi.NAGIOS_USER, fi.NAGIOS_USER)
    os.chmod(state_dir, 0o700)
    groups = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_BALLOON
              | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK)
    stop, polls = [], []

    def other_client():
        conn = libvirt.openReadOnly(libvirtd.uri)
        try:
            while not stop:
                conn.getAllDomainStats(groups, 0)
                polls.append(1)
        finally:
            conn.close()
    import threading
    poller = threading.Thread(target=other_client, daemon=True)
    argv = [os.path.join(installed_plugins, "check_libvirt_instances"), "--state-dir", state_dir]
    try:
        baseline = fi.run_as_nagios(argv)          # first run: samples twice within the run
        poller.start()
        runs = [fi.run_as_nagios(argv) for _ in range(6)]
    finally:
        stop.append(1)
        poller.join(10)
        fi._rmtree(state_dir)
    assert polls, "the other client never got an answer"
    expected = labels_of(fi.split_perfdata(baseline.stdout.splitlines()[0].partition(" | ")[2]))
    for guest in libvirtd.guests:
        for metric in ("cpu", "memory", "disk_read_bytes", "disk_write_ops", "net_tx_bytes"):
            assert any(label.startswith(guest["nova_name"] + "_") and label.endswith("." + metric)
                       for label in expected), (guest["nova_name"], metric, expected)
    lost = []
    for run in runs:
        assert run.returncode == 0, run.stdout
        got = labels_of(fi.split_perfdata(run.stdout.splitlines()[0].partition(" | ")[2]))
        if got != expected:
            lost.append(sorted(set(expected) - set(got)))
    assert not lost, f"labels lost in {len(lost)} of {len(runs)} runs: {lost}"


# ================================================================ NRPE

def test_nrpe_answers_as_a_direct_run(icinga_tools, deployed, nrpe, libvirtd):
    """A real NRPE daemon with our command file: check_nrpe gives each check's status line, long
    output, perfdata (labels, units, thresholds) and exit code as a direct run as nagios does
    (the measured numbers differ from run to run); each answer fits its client (the 1k command
    through v2 packets); the default command through v2 packets shows why that one exists."""
    commands = nrpe_commands(read(deployed["nrpe_file"]))
    for name, line in nrpe_commands().items():
        argv = plugin_argv(line, deployed["plugins"])
        assert argv == shlex.split(commands[name])
        extra = ["-2"] if name.endswith("_1k") else []
        direct = fi.run_as_nagios(argv)
        via = nrpe.check(name, ["-t", "30"] + extra)
        assert (via.returncode, via.stderr) == (direct.returncode, ""), (name, via.stdout, direct.stdout)
        assert via.returncode == 0, via.stdout
        assert shape(via.stdout) == shape(direct.stdout), name
        limit = {"check_libvirt_instances_8k": 8000, "check_libvirt_instances_1k": 1000}.get(name, 65000)
        assert len(via.stdout.encode()) <= limit, name
        if name == "check_libvirt_instances":
            assert len(via.stdout.splitlines()) == 3, "status line and one line per instance"
    # the positive control: the 60000-byte command through v2 packets is cut at 1024 bytes,
    # perfdata and all (the exit code survives)
    full = fi.run_as_nagios(plugin_argv(nrpe_commands()["check_libvirt_instances"], deployed["plugins"]))
    cut = nrpe.check("check_libvirt_instances", ["-t", "30", "-2"])
    assert cut.returncode == full.returncode == 0
    assert len(cut.stdout) <= 1024 < len(full.stdout)


# ================================================================ Icinga 2 end to end

ICINGA_HOSTS = """
object Host "compute-nrpe" {{
  check_command = "dummy"; address = "127.0.0.1"
  vars.nova_compute = true
  vars.nrpe_port = {nrpe_port}
}}
object Host "compute-agent" {{
  check_command = "dummy"; address = "127.0.0.1"; zone = ZoneName
  vars.nova_compute = true
  vars.agent_endpoint = NodeName
  vars.libvirtd_verbose_level = 1
}}
object Host "compute-agent-warning" {{
  check_command = "dummy"; address = "127.0.0.1"; zone = ZoneName
  vars.nova_compute = true
  vars.agent_endpoint = NodeName
  vars.libvirtd_domains_warning = [ "running=0" ]
  vars.libvirt_instances_warning = [ "cpu=0" ]
}}
object Host "compute-agent-critical" {{
  check_command = "dummy"; address = "127.0.0.1"; zone = ZoneName
  vars.nova_compute = true
  vars.agent_endpoint = NodeName
  vars.libvirtd_domains_critical = [ "running=0" ]
  vars.libvirt_instances_critical = [ "cpu=0", "memory=0" ]
  vars.libvirt_instances_state_critical = [ ]
}}
object Host "compute-agent-unknown" {{
  check_command = "dummy"; address = "127.0.0.1"; zone = ZoneName
  vars.nova_compute = true
  vars.agent_endpoint = NodeName
  vars.libvirtd_read_write = true
  vars.libvirt_instances_connect = "qemu:///system?socket=/nonexistent"
}}
object Host "cloud-password" {{
  check_command = "dummy"
  vars.nova_hypervisors_os_auth_url = {auth_url}
  vars.nova_hypervisors_os_username = {username}
  vars.nova_hypervisors_os_password = {password}
  vars.nova_hypervisors_os_project_name = {project}
  vars.nova_hypervisors_os_user_domain_name = {user_domain}
  vars.nova_hypervisors_os_project_domain_name = {project_domain}
  vars.nova_hypervisors_os_region_name = {region}
  vars.nova_hypervisors_flavor = [ "m1.small", "m1.large" ]
  vars.nova_hypervisors_perfdata_per_hypervisor = true
  vars.nova_hypervisors_down_critical = "1000"
  vars.nova_hypervisors_warning = [ "vcpus_free=1000000:" ]
  vars.nova_hypervisors_state_dir = {state_dir}
}}
object Host "cloud-appcred" {{
  check_command = "dummy"
  vars.nova_hypervisors_os_auth_type = "v3applicationcredential"
  vars.nova_hypervisors_os_auth_url = {auth_url}
  vars.nova_hypervisors_os_application_credential_id = {appcred_id}
  vars.nova_hypervisors_os_application_credential_secret = {appcred_secret}
  vars.nova_hypervisors_down_critical = "1000"
  vars.nova_hypervisors_state_dir = {state_dir}
}}
object Host "cloud-yaml" {{
  check_command = "dummy"
  vars.nova_hypervisors_os_cloud = "nlc"
  vars.nova_hypervisors_os_client_config_file = {clouds_yaml}
  vars.nova_hypervisors_os_client_secure_file = {secure_yaml}
  vars.nova_hypervisors_down_critical = "1000"
  vars.nova_hypervisors_critical = [ "memory_free=1000Ti:" ]
  vars.nova_hypervisors_state_dir = {state_dir}
}}
object Host "cloud-wrong-password" {{
  check_command = "dummy"
  vars.nova_hypervisors_os_auth_url = {auth_url}
  vars.nova_hypervisors_os_username = {username}
  vars.nova_hypervisors_os_password = "certainly-not-the-password"
  vars.nova_hypervisors_os_project_name = {project}
  vars.nova_hypervisors_os_user_domain_name = {user_domain}
  vars.nova_hypervisors_os_project_domain_name = {project_domain}
  vars.nova_hypervisors_no_token_cache = true
  vars.nova_hypervisors_state_dir = {state_dir}
}}
"""
# host -> {service: expected state}
ICINGA_EXPECTED = {
    "compute-nrpe": {"libvirtd": 0, "libvirt-instances": 0},
    "compute-agent": {"libvirtd": 0, "libvirt-instances": 0},
    "compute-agent-warning": {"libvirtd": 1, "libvirt-instances": 1},
    "compute-agent-critical": {"libvirtd": 2, "libvirt-instances": 2},
    "compute-agent-unknown": {"libvirtd": 3, "libvirt-instances": 3},
    "cloud-password": {"nova-hypervisors": 1},
    "cloud-appcred": {"nova-hypervisors": 0},
    "cloud-yaml": {"nova-hypervisors": 2},
    "cloud-wrong-password": {"nova-hypervisors": 3},
}
SECRETS = ("password", "appcred_secret", "certainly-not-the-password")


@pytest.fixture(scope="module")
def icinga_run(icinga_tools, deployed, nrpe, libvirtd, cloud):
    """NRPE with our command file, Icinga 2 with our icinga2/*.conf and the hosts above; every
    service forced twice. Yields {"first", "second", "daemon", "secrets", "nrpe"}."""
    base = fi.private_dir("icinga-e2e")
    state_dir = os.path.join(base, "state")
    os.mkdir(state_dir)
    os.chmod(state_dir, 0o700)
    if os.geteuid() == 0:
        shutil.chown(state_dir, fi.NAGIOS_USER, fi.NAGIOS_USER)
    hosts_dir = os.path.join(base, "hosts")
    os.mkdir(hosts_dir)
    os.chmod(hosts_dir, 0o755)
    env, appcred = cloud.env, cloud.expected["application_credential"]
    secrets = {"password": env["OS_PASSWORD"], "appcred_secret": appcred["secret"]}
    lit = fi.icinga2_literal
    try:
        write(os.path.join(hosts_dir, "hosts.conf"), ICINGA_HOSTS.format(
            nrpe_port=nrpe.port, auth_url=lit(env["OS_AUTH_URL"]), username=lit(env["OS_USERNAME"]),
            password=lit(secrets["password"]), project=lit(env["OS_PROJECT_NAME"]),
            user_domain=lit(env["OS_USER_DOMAIN_NAME"]),
            project_domain=lit(env["OS_PROJECT_DOMAIN_NAME"]),
            region=lit(env["OS_REGION_NAME"]), appcred_id=lit(appcred["id"]),
            appcred_secret=lit(secrets["appcred_secret"]), clouds_yaml=lit(cloud.clouds_yaml),
            secure_yaml=lit(cloud.secure_yaml), state_dir=lit(state_dir)))
        conf = os.path.join(deployed["dir"], "icinga2")
        with fi.icinga2_daemon([conf, hosts_dir],
                               {"NovaLibvirtChecksPluginDir": deployed["plugins"]}) as i2:
            pairs = [(h, s) for h, services in ICINGA_EXPECTED.items() for s in services]
            started = time.monotonic()
            first = i2.force_checks(pairs, timeout=120)
            second = i2.force_checks(pairs, timeout=120)
            yield {"first": first, "second": second, "daemon": i2, "secrets": secrets,
                   "nrpe": nrpe, "pairs": pairs, "seconds": time.monotonic() - started}
    finally:
        fi._rmtree(base)


def test_icinga2_schedules_every_check_through_nrpe_and_the_agent(icinga_run, deployed):
    """Icinga 2 with our files schedules every service the apply rules give: compute nodes
    through NRPE and through the agent (command_endpoint), the cloud with a password, an
    application credential or clouds.yaml; states follow the host's thresholds (defaults of the
    CheckCommand overridden per host); secrets never reach the command line."""
    i2 = icinga_run["daemon"]
    expected = {f"{h}!{s}" for h, services in ICINGA_EXPECTED.items() for s in services}
    assert set(i2.services()) == expected
    for key, result in icinga_run["first"].items():
        host, service = key.split("!")
        want = ICINGA_EXPECTED[host][service]
        assert (result["exit_status"], result["state"]) == (want, want), (key, result["output"])
        name = {"libvirtd": "LIBVIRTD", "libvirt-instances": "INSTANCES",
                "nova-hypervisors": "HYPERVISORS"}[service]
        assert result["output"].startswith(f"{name} {['OK', 'WARNING', 'CRITICAL', 'UNKNOWN'][want]} - "), \
            (key, result["output"])
        argv = result["command"]
        assert not any(secret in " ".join(argv) for secret in icinga_run["secrets"].values())
        assert "certainly-not-the-password" not in " ".join(argv) + result["output"]
        if host == "compute-nrpe":
            assert argv[0].endswith("/check_nrpe") and argv[argv.index("-c") + 1] == \
                {"libvirtd": "check_libvirtd", "libvirt-instances": "check_libvirt_instances"}[service]
            assert argv[argv.index("-t") + 1] == "30"
        else:
            plugin = {"libvirtd": "check_libvirtd", "libvirt-instances": "check_libvirt_instances",
                      "nova-hypervisors": "check_nova_hypervisors"}[service]
            assert argv[0] == os.path.join(deployed["plugins"], plugin), argv
    first = icinga_run["first"]
    # the CheckCommand's defaults, and the host's verbose level as -v
    assert sorted(first["compute-agent!libvirtd"]["command"][1:]) == \
        sorted(["--critical", "5", "--domains-critical", "crashed=0", "--warning", "1", "-v"])
    assert "connection: read-only" in first["compute-agent!libvirtd"]["output"]
    crit = first["compute-agent-critical!libvirt-instances"]["command"]
    assert "--state-critical" not in crit and crit.count("--critical") == 2
    pw = first["cloud-password!nova-hypervisors"]
    assert "--perfdata-per-hypervisor" in pw["command"] and pw["command"].count("--flavor") == 2
    assert "room for" in pw["output"]


def test_icinga2_parses_all_perfdata_without_a_warning(icinga_run):
    """Icinga 2 parsed every perfdata token of every check in every state (its InfluxdbWriter
    logs any token it rejects), logged no warning at all, and the labels are the same in the
    second round of checks as in the first."""
    i2 = icinga_run["daemon"]
    for host in ICINGA_EXPECTED:
        assert i2.perfdata_warnings(host) == [], host
    assert i2.log_warnings() == []
    for key, first in icinga_run["first"].items():
        second = icinga_run["second"][key]
        assert labels_of(first["performance_data"]) == labels_of(second["performance_data"]), key
        if first["state"] != 3:
            assert first["performance_data"], key
    # what Icinga understood of one check: the values as numbers, with units and thresholds
    points = {p["tags"]["metric"]: p["fields"] for p in i2.metrics("compute-nrpe", "libvirtd")}
    assert points["time"]["unit"] == "seconds" and points["time"]["warn"] == 1 and points["time"]["crit"] == 5
    assert points["domains_running"]["value"] == 2


def test_icinga2_knows_every_option_as_an_argument(icinga_run, deployed):
    """The CheckCommands as the running Icinga 2 has them (REST API): an argument for every
    option of each check's parser, the secrets in env."""
    gen = generator()
    i2 = icinga_run["daemon"]
    rows = i2.api("GET", "/objects/checkcommands", {"attrs": ["arguments", "env", "command"],
                                                    "filter": "match(\"*\", checkcommand.name)"})
    commands = {r["name"]: r["attrs"] for r in rows["results"]}
    with gen.clean_environment():
        secrets = gen.secret_envvars()
        for command in PLUGINS:
            attrs = commands[command]
            assert attrs["command"] == [os.path.join(deployed["plugins"], PLUGINS[command])]
            keys = set(attrs["arguments"])
            for parser in gen.parsers(command):
                for action in parser._actions:
                    if {"--help", "--version"} & set(action.option_strings):
                        continue
                    if action.dest in secrets:
                        assert attrs["env"][secrets[action.dest]] == f"${command}_{action.dest}$"
                    elif action.dest == "verbose":
                        assert {"-v", "-vv", "-vvv"} <= keys
                    else:
                        assert keys & set(action.option_strings), (command, action.option_strings)
    assert commands["nrpe_libvirtd"]["arguments"]["-c"]["value"] == "$nrpe_command$"


def test_pnp4nagios_graphs_icinga2_perfdata(icinga_run, tmp_path):
    """The PerfdataWriter lines (PNP4Nagios bulk format) of every check with perfdata go through
    the PNP stand-in: check_commands/<command>.cfg found by SERVICECHECKCOMMAND (nrpe_libvirtd,
    libvirt_instances, nova_hypervisors, ...), one RRD per label made with Perl RRDs, our
    template run by php-cli, every graph drawn by rrdtool, every label on a graph."""
    ensure_php()
    i2 = icinga_run["daemon"]
    pnp = Pnp(str(tmp_path / "perfdata"), os.path.join(ICINGA, "pnp4nagios", "check_commands"),
              os.path.join(ICINGA, "pnp4nagios", "templates"))
    now = int(time.time())
    times = [now - 1800 + 60 * k for k in range(30)]
    seen = set()
    for host, services in ICINGA_EXPECTED.items():
        for service, state in services.items():
            if state == 3:
                continue
            lines = i2.perfdata_lines(service, host)
            fields = fi.parse_pnp_line(lines[-1])
            seen.add(fields["SERVICECHECKCOMMAND"])
            out = tmp_path / f"{host}-{service}"
            out.mkdir()
            rendered = assert_graphed(pnp, lines[-1], str(out), times)
            joined = " ".join(rendered["def"])
            if service == "libvirt-instances":
                assert "B/s" in joined and "web-01_" in joined and "db-01_" in joined
                if host == "compute-nrpe":           # -w disk_read_bytes=100M in the NRPE file
                    assert 'HRULE:100000000#FFC000:"warning above 100 MB/s' in joined
            if service == "libvirtd" and host in ("compute-nrpe", "compute-agent"):
                assert 'HRULE:1#FFC000:"warning above 1 s' in joined and "HRULE:5#FF0000" in joined
            if host == "cloud-password":
                assert "compute1" in joined and "m1.small" in joined and "m1.large" in joined
    assert seen == {"nrpe_libvirtd", "nrpe_libvirt_instances", "libvirtd", "libvirt_instances",
                    "nova_hypervisors"}


# ================================================================ Nagios 4 end to end

def test_nagios_schedules_the_nrpe_checks_and_graphs(icinga_tools, deployed, nrpe, libvirtd,
                                                     monitoring_daemons, nagios_tmp_path, tmp_path):
    """A real Nagios 4 with our commands.cfg and services.cfg and a host that only says
    `use nova-compute-node`: both NRPE services run (Nagios' NRPE command asks for the 8 KB
    variant), their perfdata goes through the PNP stand-in; the cloud service expands the host's
    _OS_CLOUD into the check's arguments."""
    ensure_php()
    nagios_dir = os.path.join(deployed["dir"], "nagios")
    hosts = _nagios_hosts(nagios_tmp_path, nrpe.port, cloud="nlc-no-such-cloud")
    # one plugin directory for $USER1$, as on Debian: check_nrpe and our checks
    plugin_dir = os.path.join(nagios_tmp_path, "plugins")
    os.mkdir(plugin_dir)
    os.chmod(plugin_dir, 0o755)
    for path in [fi.CHECK_NRPE] + [os.path.join(deployed["plugins"], p) for p in PLUGINS.values()]:
        os.symlink(path, os.path.join(plugin_dir, os.path.basename(path)))
    ng = monitoring_daemons.nagios([os.path.join(nagios_dir, "commands.cfg"),
                                    os.path.join(nagios_dir, "services.cfg"), hosts],
                                   {"USER1": plugin_dir})
    res = ng.force_checks([("compute-test", "libvirtd"), ("compute-test", "libvirt-instances"),
                           ("cloud-test", "nova-hypervisors")])
    lv, inst = res["compute-test!libvirtd"], res["compute-test!libvirt-instances"]
    assert (lv["state"], inst["state"]) == (0, 0), (lv["output"], inst["output"])
    assert lv["output"].startswith("LIBVIRTD OK - ") and inst["output"].startswith("INSTANCES OK - ")
    assert len(inst["long_output"].splitlines()) == 2
    assert inst["check_command"] == "nrpe_libvirt_instances"
    hv = res["cloud-test!nova-hypervisors"]
    assert hv["state"] == 3 and "nlc-no-such-cloud" in hv["output"], hv["output"]
    pnp = Pnp(str(tmp_path / "perfdata"), os.path.join(ICINGA, "pnp4nagios", "check_commands"),
              os.path.join(ICINGA, "pnp4nagios", "templates"))
    now = int(time.time())
    times = [now - 600 + 60 * k for k in range(10)]
    for service in ("libvirtd", "libvirt-instances"):
        line = ng.perfdata_lines(service, "compute-test")[-1]
        out = tmp_path / service
        out.mkdir()
        assert_graphed(pnp, line, str(out), times)
