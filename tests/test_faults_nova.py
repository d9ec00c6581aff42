"""The fault matrix of check_nova_hypervisors (docs/faults-nova.md), one test per row.

Hostile input: every option value (hypothesis, in-process); Nova and Placement answers from a
stand-in server (hypothesis: malformed JSON, missing fields, nulls, wrong types, NaN, huge
numbers, huge lists, unexpected microversion answers), hypervisor names of any Unicode.
Faults, with the real Keystone, nova-api and Placement of the test harness: Keystone stopped,
slow, answering 500, refusing (revoked) the cached token; nova-api or Placement stopped in the
middle of a run; a peer that accepts and never answers. Security: the token cache private and
never followed through a symlink or another user's directory; no token, password or
application-credential secret in the output at any -v level, even when a service echoes them.

How the faults are made. The catalog holds the real URLs and the check has no endpoint
override for password logins, so the faults that need a man in the middle use HTTP proxies in
this process: OS_AUTH_URL points at a proxy in front of the real Keystone, which rewrites the
URLs in Keystone's answers (its version document, the token's catalog) so that the check
reaches Nova (and, where a row needs it, Placement) through proxies of their own. A proxy can
delay, answer a chosen request itself (500), hold a request unanswered, or run a hook between
the upstream's answer and its own: that is where the real nova-api or Placement is stopped
"mid-run". A stopped nova-api behind the Nova proxy is mirrored by the proxy closing its port
(refused, as the real one). Nova's and Placement's own token checks still go to the real
Keystone (their keystonemiddleware does not know the proxy).

Every test that stops a service restores it (mutable_cloud, also on failure); token counting
uses a Keystone user of the test's own (keystone_user). A test that asserts behaviour the
product did not have says "Product bug (fixed)" in its docstring; docs/faults-nova.md has them.
"""
import contextlib
import http.server
import json
import math
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

from tests.conftest import service_unavailable
from hypothesis import HealthCheck, event, given, settings, strategies as st

from nova_libvirt_checks import hypervisors as hv_check, plugin
from nova_libvirt_checks.thresholds import format_range
from tests.checkrun import ROOT, Result, assert_plugin_output
from tests.helpers import OPTION_SPECIALS, option_value_failures, parse_option
from tests.stub_openstack import StubOpenStack

CHECK = os.path.join(ROOT, "checks", "check_nova_hypervisors")
SAFE_LABEL = re.compile(r"[A-Za-z0-9_.-]+")
INF = float("inf")


# =====================================================================================
# Running the check
# =====================================================================================

def run(env, *args, timeout=60, secrets=(), state_dir=None, umask=None):
    """The check as the scheduler runs it (a process of its own), with `env` only (plus PATH).
    Whatever the outcome, no secret of `secrets`, nor any token cached in `state_dir`, may be
    in its output."""
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    full.update(env)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, CHECK, *[str(a) for a in args]], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
    result = Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
    assert_no_secret(result, list(secrets) + cached_tokens(state_dir or env.get(
        "NOVA_LIBVIRT_CHECKS_STATE_DIR")))
    return result


def cached_tokens(state_dir):
    """Every token in the token cache files of `state_dir`."""
    tokens = []
    if not state_dir or not os.path.isdir(state_dir):
        return tokens
    for name in os.listdir(state_dir):
        if name.startswith("token-") and name.endswith(".json"):
            try:
                with open(os.path.join(state_dir, name)) as handle:
                    tokens.append(json.loads(json.load(handle)["auth_state"])["auth_token"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
    return tokens


def assert_no_secret(result, secrets):
    text = result.stdout + result.stderr
    for secret in secrets:
        if secret:
            assert secret not in text, f"secret {secret[:4]}... in the output:\n{text}"


def status(result):
    """The status text of a run (first line, without perfdata), also at -vvv."""
    return result.status_line.split(" | ", 1)[0]


def assert_unknown_line(result, *words, timeout=None):
    """UNKNOWN, one line (the traceback of -vvv aside), every word in it, within `timeout`."""
    text = status(result)
    assert result.returncode == 3, result.stdout
    assert text.startswith("HYPERVISORS UNKNOWN - "), result.stdout
    assert result.stderr == "", result.stderr
    if not any(line.startswith("Traceback") for line in result.lines):
        assert_plugin_output(result, 3)
        assert len(result.lines) == 1, result.stdout
    for word in words:
        assert word in text, (word, result.stdout)
    if timeout is not None:
        assert result.elapsed < timeout + 1.0, (result.elapsed, result.stdout)
    return text


def token_file(state_dir):
    files = [f for f in os.listdir(state_dir) if f.startswith("token-") and f.endswith(".json")]
    assert len(files) == 1, files
    return os.path.join(state_dir, files[0])


def read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def run_inprocess(argv):
    """What plugin.run does, in this process (hypothesis needs the speed): parse, run the
    nagiosplugin Check and fit its answer (plugin.report_of), render. An exception that is not a CheckError is what the
    operator would read as 'internal error'."""
    try:
        args = hv_check.build_parser(argv).parse_args(argv)
        report = plugin.report_of(hv_check.NAME, hv_check.make_check(args), args,
                                  hv_check.lighter_perfdata)
    except plugin.CheckError as exc:
        report = plugin.Report(exc.state, str(exc))
    except Exception as exc:  # noqa: BLE001 - becomes the 'internal error' line, as in main()
        report = plugin.Report(plugin.UNKNOWN, f"internal error: {type(exc).__name__}: {exc}")
    return Result(report.state, plugin.render(hv_check.NAME, report), "", 0.0)


def assert_sound_output(result):
    """The protocol (a well-formed status line, valid perfdata), printable lines only, unique
    and safe labels, sane numbers, and never an internal error."""
    assert_plugin_output(result)
    assert "internal error" not in result.text, result.stdout
    for line in result.lines:
        assert all(c.isprintable() for c in line), repr(line)
    tokens = result.status_line.split(" | ", 1)[1].split(" ") if " | " in result.status_line else []
    labels = [t.split("=", 1)[0] for t in tokens]
    assert len(labels) == len(set(labels)), labels
    assert all(SAFE_LABEL.fullmatch(label) for label in labels), labels
    values = result.values()
    for value in values.values():
        assert math.isfinite(value) and value >= 0, result.status_line
    for resource in ("vcpus", "memory", "disk"):
        if f"{resource}_capacity" in values:
            # bounds only: the numbers themselves are compared with oracle_totals (computed
            # from the answers the fake cloud was given), never with each other
            used, cap = values[f"{resource}_used"], values[f"{resource}_capacity"]
            assert max(0, cap - used) <= values[f"{resource}_free"] <= cap, result.status_line
            assert 0 <= values[f"{resource}_used_pct"], result.status_line


# =====================================================================================
# Hostile input 1: option values
# =====================================================================================

PARSER = hv_check.build_parser([])
THRESHOLD = re.compile(r"@?(?:(?:~|-?\d+(?:\.\d+)?)?:)?(?:-?\d+(?:\.\d+)?)?")
INTERFACES = {"public", "internal", "admin", "publicURL", "internalURL", "adminURL"}


def _sane_range(rng):
    assert not (math.isnan(rng.start) or math.isnan(rng.end)), rng
    assert rng.start <= rng.end and rng.start != INF and rng.end != -INF, rng
    assert THRESHOLD.fullmatch(format_range(rng)), format_range(rng)


def _limit(value):
    name, rng = value[-1]
    _sane_range(rng)
    if name.endswith("_free"):
        assert name[:-5] in hv_check.RESOURCES
        assert rng.invert or rng.end == INF, (name, rng)       # alerts on less left, not more
    else:
        assert name in hv_check.RESOURCES


def _count_range(rng):
    _sane_range(rng)


def _fits(rng):
    _sane_range(rng)
    assert rng.invert or rng.end == INF, rng


def _regex(value):
    assert isinstance(value[-1], re.Pattern)


def _timeout(value):
    assert math.isfinite(value) and 0 < value <= 86400, value


def _interface(value):
    assert value in INTERFACES, value


def _text(value):
    assert isinstance(value, str)


def _names(value):
    assert isinstance(value[-1], str) and value[-1].strip(), value


# (option, namespace attribute, what an accepted value must be)
OPTIONS = [
    ("--warning", "warning", _limit),
    ("--critical", "critical", _limit),
    ("--hypervisor-warning", "hypervisor_warning", _limit),
    ("--hypervisor-critical", "hypervisor_critical", _limit),
    ("--down-warning", "down_warning", _count_range),
    ("--down-critical", "down_critical", _count_range),
    ("--disabled-warning", "disabled_warning", _count_range),
    ("--disabled-critical", "disabled_critical", _count_range),
    ("--flavor", "flavor", _names),
    ("--flavor-warning", "flavor_warning", _fits),
    ("--flavor-critical", "flavor_critical", _fits),
    ("--aggregate", "aggregate", _names),
    ("--availability-zone", "availability_zone", _names),
    ("--hypervisor", "hypervisor", _regex),
    ("--exclude-hypervisor", "exclude_hypervisor", _regex),
    ("--source", "source", lambda v: v in ("auto", "placement", "nova")),
    ("--nova-microversion", "nova_microversion", lambda v: v in ("auto", "2.53", "2.1")),
    ("--timeout", "timeout", _timeout),
    ("--os-interface", "os_interface", _interface),
    ("--os-region-name", "os_region_name", _text),
    ("--os-cloud", "os_cloud", _text),
    ("--state-dir", "state_dir", _text),
]
OPTION_IDS = [option for option, _, _ in OPTIONS]

# the shared hostile values, and this check's own (sizes, interfaces, microversions)
SPECIALS = OPTION_SPECIALS + ["64Gi", "64Gi:", "public", "internal", "admin", "internalURL",
                              "bogus", "2.53", "2.60", "placement"]
LIMIT_SPECS = ["", "80", "80%", "80%%", "@90:95%", "10:5%", "-5%", "~:80%", "nan%", "inf%",
               "9" * 400 + "%", "64Gi", "64Gi:", "64:", "@10:20Gi", "~:64Gi", "16:", "1e3:",
               "\u0661\u0662%", "5B%", "5%/s", "64GiB:", "64Gi/s:", "x"]
LIMIT_NAMES = ["vcpus", "memory", "disk", "vcpus_free", "memory_free", "disk_free", "cpu",
               "VCPUS", "_free", "memory_used", ""]


def _values_for(option):
    values = list(SPECIALS)
    if option in ("--warning", "--critical", "--hypervisor-warning", "--hypervisor-critical"):
        values += [f"{name}={spec}" for name in LIMIT_NAMES for spec in LIMIT_SPECS]
    return values


def test_every_option_value_is_refused_naming_the_option_or_means_something_sane():
    """Fixed hostile values for every option: refused as a UsageError naming the option (exit
    3, one line), or accepted as a sane value; never another exception, never a warning.
    Product bugs (fixed): '--hypervisor [[a]' printed a FutureWarning on stderr; any
    --os-interface was accepted (a typo then read as 'no compute endpoint' in the catalog);
    --flavor '' was accepted."""
    failures = option_value_failures(PARSER, [(option, attribute, valid, _values_for(option))
                                              for option, attribute, valid in OPTIONS])
    assert not failures, f"{len(failures)} values:\n" + "\n".join(failures)


RANGE_TEXT = st.from_regex(
    r"\A@?(~|[-+]?[0-9]{0,4}(\.[0-9]{0,3})?)?:?[-+]?[0-9]{0,4}(\.[0-9]{0,3})?"
    r"(k|K|M|G|T|P|Ki|Mi|Gi|Ti|Pi|%|s|B|q)?B?(/s)?%?\Z", fullmatch=True)
OPTION_TEXT = st.one_of(st.text(max_size=40), RANGE_TEXT,
                        st.builds("{}={}".format, st.sampled_from(LIMIT_NAMES), RANGE_TEXT),
                        st.sampled_from(SPECIALS))


@pytest.mark.parametrize("option, attribute, valid", OPTIONS, ids=OPTION_IDS)
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(value=OPTION_TEXT)
def test_any_option_value_property(option, attribute, valid, value):
    """Property (hypothesis, derandomized: the same examples every run): whatever the text,
    the option is refused naming itself, or the accepted value is sane."""
    accepted = parse_option(PARSER, option, attribute, value)
    if accepted is not None:
        valid(accepted)


@pytest.mark.parametrize("args, option", [
    (["-w", "vcpus=" + "9" * 400 + "%"], "-w/--warning"),
    (["-c", "memory_free=1e999Gi:"], "-c/--critical"),
    (["--hypervisor-critical", "disk=nan%"], "--hypervisor-critical"),
    (["-w", "vcpus=80%|forged=1\nHYPERVISORS OK"], "-w/--warning"),
    (["--down-critical", "inf"], "--down-critical"),
    (["--disabled-critical", "2:1"], "--disabled-critical"),
    (["--flavor", "m1", "--flavor-warning", "~:3"], "--flavor-warning"),
    (["--exclude-hypervisor", "(?<"], "--exclude-hypervisor"),
    (["--nova-microversion", "2.60"], "--nova-microversion"),
    (["-t", "nan"], "-t/--timeout"),
    (["--no-such-option"], "--no-such-option"),
    # product bugs (fixed; docs/faults-nova.md):
    (["--hypervisor", "[[a]"], "--hypervisor"),                     # FutureWarning on stderr
    (["--os-interface", "pubilc"], "--os-interface"),               # read as a catalog problem
    (["--flavor-critical", "5:"], "--flavor-critical"),             # without --flavor: ignored
    (["--flavor", ""], "--flavor"),                                 # asked Nova for ''
], ids=lambda v: None if isinstance(v, list) else v)
def test_invalid_option_value_is_one_unknown_line_naming_the_option(tmp_path, args, option):
    """End to end, as the scheduler sees it: exit 3, one line 'invalid argument' naming the
    option, nothing on stderr, and no login (Keystone here is a port nobody listens on: a
    value wrongly accepted would say 'cannot connect to Keystone' instead)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"OS_AUTH_URL": f"http://127.0.0.1:{port}/v3", "OS_USERNAME": "u",
           "OS_PASSWORD": "option-test-secret", "OS_PROJECT_NAME": "p",
           "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_DOMAIN_NAME": "Default",
           "NOVA_LIBVIRT_CHECKS_STATE_DIR": str(tmp_path / "state")}
    result = run(env, *args, secrets=["option-test-secret"])
    assert_unknown_line(result, "invalid argument", option)
    assert not os.path.exists(tmp_path / "state")                  # nothing done at all


def test_unknown_auth_type_is_one_unknown_line_naming_the_option(tmp_path):
    result = run({"NOVA_LIBVIRT_CHECKS_STATE_DIR": str(tmp_path)}, "--os-auth-type", "kerberos5")
    assert_unknown_line(result, "--os-auth-type", "kerberos5")


# =====================================================================================
# Hostile input 2: Nova and Placement answers (a stand-in server)
# =====================================================================================
# keystoneauth's `none` auth type with --os-endpoint sends every service to the stand-in (no
# cloud involved). Answers are (status, body bytes); bodies are made with json.dumps, which
# writes NaN and Infinity as Python's json (and so requests) reads them back.

def _uuid(i):
    return f"00000000-0000-4000-8000-{i:012d}"


def dumps(document):
    return json.dumps(document).encode()


NOT_ACCEPTABLE = (406, dumps({"computeFault": {"code": 406, "message": "Version 2.53 is not "
                                                "supported by the API. Minimum is 2.1 and maximum is 2.25."}}))


class FakeCloud(StubOpenStack):
    """Nova and Placement answering from `self.scenario`:
    pages: [(status, body)] for successive GET /os-hypervisors/detail (the last one repeats);
    old_nova: answer microversion 2.53 with 406; providers, flavors, aggregates, services:
    (status, body); inventories, usages: {provider uuid: (status, body)}."""

    def __init__(self):
        self.scenario = {}
        self.pages_served = 0
        super().__init__()

    def load(self, scenario):
        self.scenario = scenario
        self.reset()
        self.pages_served = 0

    def answer(self, path, version):
        s = self.scenario
        path = urllib.parse.urlsplit(path).path
        if path.endswith("/os-hypervisors/detail"):
            if s.get("old_nova") and version == "compute 2.53":
                return NOT_ACCEPTABLE
            pages = s["pages"]
            page = pages[min(self.pages_served, len(pages) - 1)]
            self.pages_served += 1
            return page
        match = re.search(r"/resource_providers/([^/]+)/(inventories|usages)$", path)
        if match:
            return s.get(match.group(2), {}).get(urllib.parse.unquote(match.group(1)),
                                                 (404, b'{"errors": [{"status": 404}]}'))
        for key, suffix in (("providers", "/resource_providers"), ("flavors", "/flavors/detail"),
                            ("aggregates", "/os-aggregates"),
                            ("services", "/os-services")):
            if path.endswith(suffix):
                return s.get(key, (404, b"{}"))
        return 404, b"{}"

    def run(self, tmp_path, *args, timeout=60):
        env = {"NOVA_LIBVIRT_CHECKS_STATE_DIR": str(tmp_path / "state")}
        return run(env, *self.argv(*args), timeout=timeout)


@pytest.fixture(scope="module")
def fake_cloud():
    fake = FakeCloud()
    yield fake
    fake.close()


def hv_record(i, name=None, state="up", status="enabled", vcpus=16, vcpus_used=4,
              memory_mb=65536, memory_mb_used=8192, local_gb=500, local_gb_used=100,
              reason=None):
    name = f"hv{i}" if name is None else name
    return {"id": _uuid(i), "hypervisor_hostname": name, "state": state, "status": status,
            "service": {"host": name, "id": i, "disabled_reason": reason},
            "vcpus": vcpus, "vcpus_used": vcpus_used, "memory_mb": memory_mb,
            "memory_mb_used": memory_mb_used, "local_gb": local_gb, "local_gb_used": local_gb_used}


def inventory(vcpus=16, memory_mb=65536, disk_gb=500, ratio=4.0, reserved_mb=512):
    def record(total, reserved=0, allocation_ratio=1.0):
        return {"total": total, "reserved": reserved, "allocation_ratio": allocation_ratio,
                "min_unit": 1, "max_unit": total, "step_size": 1}
    return {"resource_provider_generation": 1, "inventories": {
        "VCPU": record(vcpus, 0, ratio), "MEMORY_MB": record(memory_mb, reserved_mb),
        "DISK_GB": record(disk_gb)}}


def usages(vcpus=4, memory_mb=8192, disk_gb=100):
    return {"resource_provider_generation": 1,
            "usages": {"VCPU": vcpus, "MEMORY_MB": memory_mb, "DISK_GB": disk_gb}}


def flavor(name="m1", vcpus=2, ram=2048, disk=20, **extra):
    return dict({"id": f"id-{name}", "name": name, "vcpus": vcpus, "ram": ram, "disk": disk,
                 "OS-FLV-EXT-DATA:ephemeral": 0, "swap": "", "extra_specs": {}}, **extra)


def healthy(n=3):
    """A small consistent cloud: n hypervisors, their providers, one flavor, one aggregate and
    one availability zone with all of them."""
    records = [hv_record(i) for i in range(1, n + 1)]
    return {
        "records": records,
        "pages": [(200, dumps({"hypervisors": records}))],
        "providers": (200, dumps({"resource_providers": [
            {"uuid": r["id"], "name": r["hypervisor_hostname"]} for r in records]})),
        "inventories": {r["id"]: (200, dumps(inventory())) for r in records},
        "usages": {r["id"]: (200, dumps(usages())) for r in records},
        "flavors": (200, dumps({"flavors": [flavor()]})),
        "aggregates": (200, dumps({"aggregates": [{"name": "agg", "hosts": [
            r["hypervisor_hostname"] for r in records]}]})),
        "services": (200, dumps({"services": [
            {"binary": "nova-compute", "host": r["hypervisor_hostname"], "zone": "az",
             "status": "enabled", "state": "up"} for r in records]})),
    }


# ------------------------------------------------------------ the oracle: usable data or not

def valid_count(value):
    """What the check may count: a JSON number, not a boolean, finite, 0 <= value <= 2**53."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and 0 <= value <= 2**53        # NaN fails both; math.isfinite overflows on huge ints


def _json(answer):
    status, body = answer
    if status != 200:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def legacy_usable(record):
    return all(valid_count(record.get(key)) for key in (
        "vcpus", "vcpus_used", "memory_mb", "memory_mb_used", "local_gb", "local_gb_used"))


def placement_usable(scenario, uuid):
    inv = _json(scenario["inventories"].get(uuid, (404, b"")))
    use = _json(scenario["usages"].get(uuid, (404, b"")))
    if not isinstance(inv, dict) or not isinstance(use, dict):
        return False
    inventories, used = inv.get("inventories"), use.get("usages")
    if not isinstance(inventories, dict) or not isinstance(used, dict):
        return False
    for rec in inventories.values():
        if not isinstance(rec, dict) or not valid_count(rec.get("total")):
            return False
        for key in ("reserved", "min_unit", "max_unit", "step_size"):
            if key in rec and rec[key] is not None and not valid_count(rec[key]):
                return False
        ratio = rec.get("allocation_ratio")
        if ratio is not None and not (valid_count(ratio) and ratio > 0):
            return False
    return all(valid_count(v) for v in used.values())


UNITS = {"vcpus": ("VCPU", "vcpus", "vcpus_used", 1),
         "memory": ("MEMORY_MB", "memory_mb", "memory_mb_used", 2**20),
         "disk": ("DISK_GB", "local_gb", "local_gb_used", 2**30)}


def oracle_totals(scenario, source):
    """{resource: (used, capacity, free, % used)} in base units, by hand from the answers the
    fake cloud serves (healthy() and its changes): over the up-and-enabled hypervisors whose
    data is usable; Placement capacity (total - reserved) x ratio; free summed host by host."""
    found = {r: [0, 0, 0] for r in UNITS}
    for record in scenario["records"]:
        if record.get("state") != "up" or record.get("status") != "enabled":
            continue
        if source == "nova":
            if not legacy_usable(record):
                continue
            amounts = {r: (record[u], record[t]) for r, (_rc, t, u, _n) in UNITS.items()}
        else:
            uuid = record["id"]
            if uuid not in scenario["inventories"]:      # integer ids: the provider by name
                listed = _json(scenario["providers"])["resource_providers"]
                uuid = next(p["uuid"] for p in listed
                            if p["name"] == record["hypervisor_hostname"])
            if not placement_usable(scenario, uuid):
                continue
            inv = _json(scenario["inventories"][uuid])["inventories"]
            use = _json(scenario["usages"][uuid])["usages"]
            amounts = {}
            for r, (rc, _t, _u, _n) in UNITS.items():
                if rc in inv:
                    i = inv[rc]
                    ratio = 1.0 if i.get("allocation_ratio") is None else i["allocation_ratio"]
                    amounts[r] = (use.get(rc, 0),
                                  max(0, int((i["total"] - (i.get("reserved") or 0)) * ratio)))
        for r, (used, cap) in amounts.items():
            unit = UNITS[r][3]
            found[r][0] += used * unit
            found[r][1] += cap * unit
            found[r][2] += max(0, cap - used) * unit
    return {r: (u, c, f, round(100 * u / c, 2) if c > 0 else 100) for r, (u, c, f) in found.items()}


def hypervisor_list(scenario):
    """The records of the first page if it is a well-formed list of objects, else None."""
    body = _json(scenario["pages"][0])
    if not isinstance(body, dict) or not isinstance(body.get("hypervisors"), list):
        return None
    records = body["hypervisors"]
    if not all(isinstance(r, dict) for r in records):
        return None
    return records


# ------------------------------------------------------------ hypothesis strategies

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70),
    st.sampled_from([10**400, -1, 0, 2**53 + 1, 1e308, -0.0, 0.5]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.sampled_from(["12", "", "up", "enabled", "\u00b2", "NaN"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
DELETE = object()
RAW_BODIES = [b"", b"{", b"null", b"[]", b'"text"', b"<html>502 Bad Gateway</html>",
              b"[" * 50000 + b"]" * 50000, b"\xff\xfe\x00garbage", b'{"a": 1' + b"0" * 5000 + b"}",
              b"1" * 5000]
STATUSES = [200, 200, 200, 200, 204, 302, 400, 401, 403, 404, 406, 409, 413, 429, 500, 502, 503]
HV_FIELDS = [("id",), ("hypervisor_hostname",), ("state",), ("status",), ("service",),
             ("service", "host"), ("service", "disabled_reason"), ("vcpus",), ("vcpus_used",),
             ("memory_mb",), ("memory_mb_used",), ("local_gb",), ("local_gb_used",)]
INV_FIELDS = [("inventories",)] + [("inventories", rc) for rc in ("VCPU", "MEMORY_MB", "DISK_GB")] + [
    ("inventories", rc, key) for rc in ("VCPU", "MEMORY_MB", "DISK_GB")
    for key in ("total", "reserved", "allocation_ratio", "min_unit", "max_unit", "step_size")] + [
    ("inventories", "CUSTOM_GPU")]
USE_FIELDS = [("usages",)] + [("usages", rc) for rc in ("VCPU", "MEMORY_MB", "DISK_GB", "CUSTOM_GPU")]
FLAVOR_FIELDS = [("name",), ("vcpus",), ("ram",), ("disk",), ("swap",), ("OS-FLV-EXT-DATA:ephemeral",),
                 ("extra_specs",), ("extra_specs", "resources:VCPU"), ("extra_specs", "resources:CUSTOM_GPU")]
HOSTILE_NAMES = st.one_of(st.text(max_size=30), st.sampled_from([
    "a|b", "x\nHYPERVISORS OK - forged | forged=1", "\x00\x1b[31m", "\u202egnp.exe", "\ud800",
    "\u2028\u2029", "compute 1", "=", "'", "", " ", "a" * 300, "\U0001f4a3\u6771\u4eac"]))


@st.composite
def mutated(draw, document, fields):
    """`document` with a few of `fields` (paths) deleted or replaced by junk."""
    document = json.loads(json.dumps(document))
    for path in draw(st.sets(st.sampled_from(fields), max_size=2)):
        parent = document
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        value = draw(st.one_of(st.just(DELETE), JUNK))
        if value is DELETE:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = value
    return document


@st.composite
def answer(draw, document, fields):
    """Mostly a 200 with the (mutated) document; sometimes another status, junk, or raw bytes."""
    kind = draw(st.sampled_from(["doc"] * 6 + ["junk", "raw", "status"]))
    if kind == "junk":
        return 200, dumps(draw(JUNK))
    if kind == "raw":
        return 200, draw(st.sampled_from(RAW_BODIES))
    body = dumps(draw(mutated(document, fields)))
    return (draw(st.sampled_from(STATUSES)) if kind == "status" else 200), body


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 4))
    names = draw(st.lists(HOSTILE_NAMES, min_size=n, max_size=n))
    records = []
    for i, name in enumerate(names, 1):
        record = hv_record(i, name=name, state=draw(st.sampled_from(["up", "up", "down"])),
                           status=draw(st.sampled_from(["enabled", "enabled", "disabled"])),
                           reason=draw(st.one_of(st.none(), HOSTILE_NAMES)))
        records.append(draw(st.one_of(st.just(record), mutated(record, HV_FIELDS))))
    origins = [_uuid(i) for i in range(1, n + 1)]
    if draw(st.booleans()) and draw(st.booleans()):
        records.insert(draw(st.integers(0, len(records))), draw(JUNK))     # not an object
    body = {"hypervisors": records}
    links = draw(st.sampled_from([None] * 8 + [[{"rel": "next", "href": "x"}], "next", 5,
                                              [{"rel": "self"}], [None]]))
    if links is not None:
        body["hypervisors_links"] = links
    page = draw(st.sampled_from([None] * 3 + ["mutated"]))
    page = (200, dumps(body)) if page is None else draw(
        answer(body, [("hypervisors",), ("hypervisors_links",)]))
    uuids = [_uuid(i) for i in range(1, n + 1)]
    return {
        "records": records,
        "origins": origins,
        "pages": [page],
        "old_nova": draw(st.booleans()) and draw(st.booleans()),
        "providers": draw(answer({"resource_providers": [
            {"uuid": u, "name": name} for u, name in zip(uuids, names)]},
            [("resource_providers",)])),
        "inventories": {u: draw(answer(inventory(), INV_FIELDS)) for u in uuids},
        "usages": {u: draw(answer(usages(), USE_FIELDS)) for u in uuids},
        "flavors": draw(answer({"flavors": [draw(mutated(flavor(), FLAVOR_FIELDS)), draw(JUNK)]},
                               [("flavors",)])),
        "aggregates": draw(answer({"aggregates": [{"name": "agg", "hosts": names}, draw(JUNK)]},
                                  [("aggregates",)])),
        "services": draw(answer({"services": [
            {"binary": "nova-compute", "host": name, "zone": "az"} for name in names]
            + [{"binary": "nova-compute", "host": draw(JUNK), "zone": draw(JUNK)}]},
            [("services",)])),
    }


OPTIONAL_ARGS = st.lists(st.sampled_from([
    ("--source", "nova"), ("--source", "placement"), ("--nova-microversion", "2.1"),
    ("--flavor", "m1"), ("--aggregate", "agg"), ("--availability-zone", "az"),
    ("--perfdata-per-hypervisor",), ("-v",), ("-vv",), ("--hypervisor-critical", "vcpus=90%"),
    ("-w", "memory_free=1Gi:"), ("--hypervisor-warning", "disk_free=1Gi:")]), max_size=4, unique=True)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenario=scenarios(), extra=OPTIONAL_ARGS)
def test_any_nova_and_placement_answer_property(fake_cloud, scenario, extra):
    """Property (hypothesis, derandomized): whatever Nova and Placement answer (missing fields,
    nulls, wrong types, NaN, Infinity, 400-digit numbers, junk bodies, deep nesting, any status,
    pages that never end, hostile names), the check gives a sound answer: the protocol, one
    status line, valid unique perfdata, sane numbers, never an internal error; UNKNOWN when
    Nova's hypervisor list itself is unusable or no hypervisor has usable data; OK only when
    every hypervisor's data was usable and the counts are right.
    Product bugs (fixed) it found: TypeError/AttributeError/ValueError/OverflowError escaping
    as 'internal error' (strings, lists, NaN, huge numbers in Nova or Placement fields, a
    non-object service, a non-list of links), RecursionError on deeply nested JSON, a 'next'
    link that repeats paging until the deadline (then blaming Nova for not answering), wrong
    types counted as numbers (true as 1, strings repeated as sequences)."""
    fake_cloud.load(scenario)
    args = [arg for option in extra for arg in option]
    result = run_inprocess(fake_cloud.argv("-t", "5", *args))
    assert_sound_output(result)
    code = result.returncode
    event(f"exit {code}: {re.sub(r'[0-9a-f-]{36}|[0-9]+', 'N', result.text)[22:60]}")
    records = hypervisor_list(scenario)
    sources = [option[1] for option in extra if option[0] == "--source"]
    nova_source = bool(sources) and sources[-1] == "nova"
    if records is None:
        assert code == 3, result.stdout                 # Nova's list is unusable
        return
    links = json.loads(scenario["pages"][0][1]).get("hypervisors_links")
    if isinstance(links, list) and any(isinstance(link, dict) and link.get("rel") == "next"
                                       for link in links):
        assert code == 3, result.stdout                 # the next page repeats this one
        return
    if not records:
        assert code == 3, result.stdout
        return
    # at 2.53 the id is the provider's uuid; junk ids are looked up by name, which leads to the
    # same provider: the data of record i is provider i's either way
    usable = [legacy_usable(r) if nova_source else placement_usable(scenario, uuid)
              for r, uuid in zip(records, scenario["origins"])]
    selecting = {"--aggregate", "--availability-zone"} & {option[0] for option in extra}
    if code == 0 and not selecting:
        assert all(usable), result.stdout               # OK only from usable data
        values = result.values()
        assert values["hypervisors"] == len(records)
        assert values["hypervisors_usable"] == sum(
            1 for r in records if r.get("state") == "up" and r.get("status") == "enabled")
    if not any(usable) and not selecting:
        assert code == 3, result.stdout                 # nothing to judge from


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(HOSTILE_NAMES, min_size=1, max_size=5),
       reasons=st.lists(st.one_of(st.none(), HOSTILE_NAMES), min_size=5, max_size=5),
       states=st.lists(st.sampled_from([("up", "enabled"), ("down", "enabled"),
                                        ("up", "disabled")]), min_size=5, max_size=5))
def test_any_hypervisor_name_property(fake_cloud, names, reasons, states):
    """Property: hypervisor names (and disabled reasons) of any Unicode, control characters,
    newlines, `|`, lone surrogates, bidi overrides, empty, 300 characters, twins: one status
    line, exactly one line per hypervisor at -v, every line printable, no forged perfdata,
    labels safe and unique. Product bug (fixed): two hypervisors of the same name shared
    perfdata labels (--perfdata-per-hypervisor)."""
    scenario = healthy(0)
    records = [hv_record(i, name=name, state=states[i - 1][0], status=states[i - 1][1],
                         reason=reasons[i - 1]) for i, name in enumerate(names, 1)]
    scenario["pages"] = [(200, dumps({"hypervisors": records}))]
    scenario["inventories"] = {r["id"]: (200, dumps(inventory())) for r in records}
    scenario["usages"] = {r["id"]: (200, dumps(usages())) for r in records}
    fake_cloud.load(scenario)
    result = run_inprocess(fake_cloud.argv("-v", "--perfdata-per-hypervisor",
                                           "--disabled-warning", "0"))
    assert_sound_output(result)
    hv_lines = [line for line in result.lines[1:] if re.match(r"(OK|WARNING|CRITICAL|UNKNOWN): ", line)]
    assert len(hv_lines) == len(names), result.stdout
    others = [line for line in result.lines[1:] if line not in hv_lines]
    assert all(line.startswith(("cloud ", "source: ", "connection: ")) for line in others), others
    assert result.status_line.count(" | ") == 1
    bases = {label.rsplit(".", 1)[0] for label in result.perfdata if "." in label}
    assert len(bases) == len(names), (bases, names)
    down = sum(1 for s in states[:len(names)] if s[0] == "down")
    assert result.returncode == (2 if down else 1 if any(
        s[1] == "disabled" for s in states[:len(names)]) else 0), result.stdout


# ------------------------------------------------------------ fixed cases, end to end

def with_record(i, **fields):
    def change(s):
        for r in s["records"]:
            if r["id"] == _uuid(i):
                r.update(fields)
        s["pages"] = [(200, dumps({"hypervisors": s["records"]}))]
    return change


def with_inventory(i, rc, **fields):
    def change(s):
        doc = inventory()
        doc["inventories"][rc].update(fields)
        s["inventories"][_uuid(i)] = (200, dumps(doc))
    return change


def with_answer(key, status, body, i=None):
    def change(s):
        if i is None:
            s[key] = (status, body)
        else:
            s[key][_uuid(i)] = (status, body)
    return change


def with_pages(*pages):
    def change(s):
        s["pages"] = list(pages)
    return change


def integer_ids(s):       # a 2.53 request answered as 2.1 would (integer ids)
    for n, r in enumerate(s["records"], 1):
        r["id"] = n
    s["pages"] = [(200, dumps({"hypervisors": s["records"]}))]


def without_usage_fields(s):     # as Nova >= 2.88 answers
    for r in s["records"]:
        for key in ("vcpus", "vcpus_used", "memory_mb", "memory_mb_used", "local_gb", "local_gb_used"):
            del r[key]
    s["pages"] = [(200, dumps({"hypervisors": s["records"]}))]


def old_nova(s):
    s["old_nova"] = True


def nothing_acceptable(s):
    s["old_nova"] = True
    s["pages"] = [(406, NOT_ACCEPTABLE[1])]


def endless_pages(s):
    s["pages"] = [(200, dumps({"hypervisors": s["records"],
                               "hypervisors_links": [{"rel": "next", "href": "..."}]}))]


def with_flavor(**fields):
    def change(s):
        s["flavors"] = (200, dumps({"flavors": [flavor(**fields)]}))
    return change


def with_json_text(key, text, i=None):
    if key == "pages":
        return with_pages((200, text.encode()))
    return with_answer(key, 200, text.encode(), i)


HV2_WARNING = "1 hypervisor without usable data in {src}: hv2"
# (id, change, args, exit, words in the status line)
ANSWER_CASES = [
    ("nova-html-200", with_pages((200, b"<html>a proxy's error page</html>")), [], 3,
     ["Nova answered GET /os-hypervisors/detail with malformed JSON (HTTP 200, application/json)"]),
    ("nova-empty-200", with_pages((200, b"")), [], 3, ["with malformed JSON"]),
    ("nova-deep-nesting", with_pages((200, b"[" * 100000 + b"]" * 100000)), [], 3,
     ["Nova answered GET /os-hypervisors/detail with malformed JSON"]),
    ("nova-5000-digit-number", with_pages((200, b'{"hypervisors": [], "n": 1' + b"0" * 5000 + b"}")),
     [], 3, ["with malformed JSON"]),
    ("nova-list-not-a-list", with_pages((200, b'{"hypervisors": {"hv1": {}}}')), [], 3,
     ["Nova answered GET /os-hypervisors/detail without a 'hypervisors' list"]),
    ("nova-null-list", with_pages((200, b'{"hypervisors": null}')), [], 3, ["without a 'hypervisors' list"]),
    ("nova-record-not-an-object", with_pages((200, b'{"hypervisors": [1, "hv", null]}')), [], 3,
     ["Nova answered GET /os-hypervisors/detail with 3 hypervisor records that are not objects"]),
    ("nova-empty-list", with_pages((200, b'{"hypervisors": []}')), [], 3,
     ["no hypervisor matches the selection (all; 0 hypervisors in all)"]),
    ("nova-pages-never-end", endless_pages, [], 3,
     ["Nova's hypervisor list does not end: the page after marker 00000000-0000-4000-8000-000000000003 "
      "repeats it"]),
    ("nova-links-not-a-list", with_pages((200, dumps({"hypervisors": healthy()["records"],
                                                      "hypervisors_links": 5}))), [], 0,
     ["3 of 3 hypervisors up and enabled"]),
    ("state-null", with_record(2, state=None), [], 2,
     ["1 of 3 hypervisors down: hv2"]),
    ("state-and-status-junk", with_record(2, state=1, status=["enabled"]), ["-v"], 0,
     ["2 of 3 hypervisors up and enabled (1 disabled)"]),
    ("service-not-an-object", with_record(2, service="compute2"), [], 0,
     ["3 of 3 hypervisors up and enabled"]),
    ("name-number", with_record(2, hypervisor_hostname=42, service=None), ["-v"], 0,
     ["3 of 3 hypervisors up and enabled"]),
    ("legacy-string", with_record(2, vcpus_used="4"), ["--source", "nova"], 1,
     [HV2_WARNING.format(src="Nova") + ' (vcpus_used "4")']),
    ("legacy-null", with_record(2, memory_mb=None), ["--source", "nova"], 1,
     [HV2_WARNING.format(src="Nova") + " (memory_mb null)"]),
    ("legacy-true", with_record(2, local_gb=True), ["--source", "nova"], 1,
     [HV2_WARNING.format(src="Nova") + " (local_gb true)"]),
    ("legacy-nan", with_json_text("pages", '{"hypervisors": [{"id": 1, "hypervisor_hostname": "hv1", '
                                  '"state": "up", "status": "enabled", "vcpus": NaN, "vcpus_used": 1,'
                                  ' "memory_mb": 1, "memory_mb_used": 1, "local_gb": 1, '
                                  '"local_gb_used": 1}]}'), ["--source", "nova"], 3,
     ["1 hypervisor without usable data in Nova: hv1 (vcpus NaN)"]),
    ("legacy-negative", with_record(2, vcpus_used=-3), ["--source", "nova"], 1,
     [HV2_WARNING.format(src="Nova") + " (vcpus_used -3)"]),
    ("legacy-400-digits", with_record(2, memory_mb=10**400), ["--source", "nova"], 1,
     [HV2_WARNING.format(src="Nova") + " (memory_mb 1000000000"]),
    ("nova-2.88-answer", without_usage_fields, ["--source", "nova"], 3,
     ["3 hypervisors without usable data in Nova: hv1 (vcpus missing), hv2 (vcpus missing), "
      "hv3 (vcpus missing)"]),
    ("inventory-total-string", with_inventory(2, "VCPU", total="16"), [], 1,
     [HV2_WARNING.format(src="Placement") + ' (VCPU total "16")']),
    ("inventory-ratio-nan", with_json_text("inventories", '{"inventories": {"VCPU": {"total": 8, '
                                           '"allocation_ratio": NaN}}}', 2), [], 1,
     [HV2_WARNING.format(src="Placement") + " (VCPU allocation_ratio NaN)"]),
    ("inventory-ratio-infinity", with_json_text("inventories", '{"inventories": {"VCPU": {"total": 8, '
                                                '"allocation_ratio": Infinity}}}', 2), [], 1,
     [HV2_WARNING.format(src="Placement") + " (VCPU allocation_ratio Infinity)"]),
    ("inventory-ratio-zero", with_inventory(2, "MEMORY_MB", allocation_ratio=0), [], 1,
     [HV2_WARNING.format(src="Placement") + " (MEMORY_MB allocation_ratio 0)"]),
    ("inventory-reserved-over-total", with_inventory(2, "DISK_GB", reserved=900), ["-v"], 0,
     ["3 of 3 hypervisors up and enabled"]),
    ("inventory-not-an-object", with_answer("inventories", 200, b'{"inventories": []}', 2), [], 1,
     [HV2_WARNING.format(src="Placement") + " (inventories not an object)"]),
    ("usages-list", with_answer("usages", 200, b"[]", 2), [], 1,
     [HV2_WARNING.format(src="Placement") + " (usages not an object)"]),
    ("usage-string", with_answer("usages", 200, b'{"usages": {"VCPU": "4"}}', 2), [], 1,
     [HV2_WARNING.format(src="Placement") + ' (VCPU usage "4")']),
    ("usages-404", with_answer("usages", 404, b"{}", 2), [], 1,
     [HV2_WARNING.format(src="Placement") + " (no resource provider)"]),
    ("all-placement-junk", lambda s: s["inventories"].update(
        {_uuid(i): (200, b'{"inventories": "x"}') for i in (1, 2, 3)}), [], 3,
     ["3 hypervisors without usable data in Placement: hv1 (inventories not an object), hv2"]),
    ("placement-406", with_answer("inventories", 406, dumps({"errors": [{
        "status": 406, "title": "Not Acceptable", "detail": "Unacceptable version header: 1.0"}]}), 1),
     [], 3, ["Placement answered HTTP 406 for GET /resource_providers/"
             "00000000-0000-4000-8000-000000000001/inventories: Unacceptable version header: 1.0"]),
    ("old-nova-2.1", old_nova, ["-v"], 0, ["3 of 3 hypervisors up and enabled"]),
    ("nova-406-at-every-version", nothing_acceptable, [], 3,
     ["Nova answered HTTP 406 for GET /os-hypervisors/detail: Version 2.53 is not supported"]),
    ("integer-ids-at-2.53", integer_ids, [], 0, ["3 of 3 hypervisors up and enabled"]),
    ("provider-list-junk", lambda s: (integer_ids(s), s.update(providers=(200, b'{"resource_providers":'
                                                                           b' [1, null, {"uuid": 5}]}'))),
     [], 3, ["3 hypervisors without usable data in Placement: hv1 (no resource provider)"]),
    ("flavor-vcpus-string", with_flavor(vcpus="2"), ["--flavor", "m1"], 3,
     ['Nova\'s flavor \'m1\' has an unusable vcpus: "2"']),
    ("flavor-swap-superscript", with_flavor(swap="\u00b2"), ["--flavor", "m1"], 3,
     ['Nova\'s flavor \'m1\' has an unusable swap: "\u00b2"']),
    ("flavor-extra-spec-superscript", with_flavor(extra_specs={"resources:VCPU": "\u00b2"}),
     ["--flavor", "m1"], 3, ['Nova\'s flavor \'m1\' has an unusable resources:VCPU: "\u00b2"']),
    ("flavor-extra-specs-list", with_flavor(extra_specs=["resources:VCPU"]), ["--flavor", "m1"], 3,
     ['Nova\'s flavor \'m1\' has an unusable extra_specs: ["resources:VCPU"]']),
    ("flavor-list-junk", with_answer("flavors", 200, b'{"flavors": [1, null, "m1"]}'),
     ["--flavor", "m1"], 3, ["Nova answered GET /flavors/detail?is_public=None with malformed JSON or a document "
                             "that is not the expected list"]),
    ("flavor-list-empty", with_answer("flavors", 200, b'{"flavors": []}'),
     ["--flavor", "m1"], 3, ["no flavor named 'm1' in Nova (known: none)"]),
    ("aggregates-junk", with_answer("aggregates", 200, b'{"aggregates": [7]}'),
     ["--aggregate", "agg"], 3, ["Nova answered GET /os-aggregates with malformed JSON or a "
                                 "document that is not the expected list"]),
    ("aggregate-hosts-junk", with_answer("aggregates", 200, b'{"aggregates": [{"name": "agg", '
                                                            b'"hosts": "hv1"}]}'),
     ["--aggregate", "agg"], 3, ['Nova\'s host aggregate \'agg\' has unusable hosts: "hv1"']),
    ("services-junk", with_answer("services", 200, b'{"services": [{"host": "hv1", "zone": 5}, '
                                                  b'{"host": 3, "zone": "az"}]}'),
     ["--availability-zone", "az"], 3, ["no availability zone named 'az' (known: none)"]),
    ("services-not-objects", with_answer("services", 200, b'{"services": [3]}'),
     ["--availability-zone", "az"], 3,
     ["Nova answered GET /os-services with malformed JSON or a document that is not the "
      "expected list"]),
    ("error-detail-hostile", with_pages((500, dumps({"computeFault": {"code": 500, "message":
                                                     "boom\nHYPERVISORS OK - fine | x=1"}}))), [], 3,
     ["Nova failed: HTTP 500 for GET /os-hypervisors/detail: boom HYPERVISORS OK - fine \u00a6 x=1"]),
    ("leftover-redirect", with_pages((302, b'{"hypervisors": []}')), [], 3,
     ["Nova answered HTTP 302 for GET /os-hypervisors/detail"]),
    ("no-content", with_pages((204, b"")), [], 3,
     ["Nova answered GET /os-hypervisors/detail with malformed JSON (HTTP 204"]),
    ("keystone-style-503", with_pages((503, dumps({"message": "The server is currently unavailable."
                                                   "<br /><br />\nThe Keystone service is temporarily "
                                                   "unavailable.\n\n", "code": "503 Service Unavailable",
                                                   "title": "Service Unavailable"}))), [], 3,
     ["Nova failed: HTTP 503 for GET /os-hypervisors/detail: The server is currently unavailable. "
      "The Keystone service is temporarily unavailable."]),
]


@pytest.mark.parametrize("change, args, code, words", [c[1:] for c in ANSWER_CASES],
                         ids=[c[0] for c in ANSWER_CASES])
def test_hostile_answer_fixed_cases(fake_cloud, change, args, code, words):
    """One row each of the doc's 'Nova and Placement answers' table (in-process: the output is
    the one main() prints; test_hostile_names_end_to_end and test_huge_lists_... run a process). Product bugs (fixed) among them: internal errors (strings, NaN,
    Infinity, huge numbers, non-objects, deep nesting), paging forever, a record that is not
    an object silently dropped, a malformed resource silently left out of the totals, a
    Keystone-style 503 body reduced to nothing, '\u00b2' as a number."""
    scenario = healthy()
    change(scenario)
    fake_cloud.load(scenario)
    started = time.monotonic()
    result = run_inprocess(fake_cloud.argv(*args))
    assert_sound_output(result)
    assert result.returncode == code, result.stdout
    for word in words:
        assert word in result.text, (word, result.stdout)
    assert time.monotonic() - started < 3
    if code in (0, 1, 2) and "vcpus_used" in result.values():
        source = "nova" if "--source" in args and args[args.index("--source") + 1] == "nova" \
            else "placement"
        values = result.values()
        for resource, (used, cap, free, pct) in oracle_totals(scenario, source).items():
            if f"{resource}_capacity" in values:
                assert (values[f"{resource}_used"], values[f"{resource}_capacity"],
                        values[f"{resource}_free"], values[f"{resource}_used_pct"]) \
                    == (used, cap, free, pct), (resource, result.stdout)


def test_huge_lists_give_the_right_totals(fake_cloud, tmp_path):
    """5000 hypervisors (legacy fields), 300 with Placement (600 provider requests), and an
    inventory of 10000 resource classes: exact totals, well within the timeout."""
    n = 5000
    scenario = healthy(0)
    records = [hv_record(i, vcpus_used=i % 7) for i in range(1, n + 1)]
    scenario["pages"] = [(200, dumps({"hypervisors": records}))]
    fake_cloud.load(scenario)
    result = fake_cloud.run(tmp_path, "--source", "nova")
    assert_sound_output(result)
    assert result.returncode == 0, result.stdout[:500]
    values = result.values()
    assert values["hypervisors"] == n and values["vcpus_capacity"] == 16 * n
    assert values["vcpus_used"] == sum(i % 7 for i in range(1, n + 1))
    assert len(result.stdout) < 2000                  # the long output names problems only
    assert result.elapsed < 5, result.elapsed

    n = 300
    scenario = healthy(n)
    big = inventory()
    big["inventories"].update({f"CUSTOM_C{i}": {"total": 1, "reserved": 0, "allocation_ratio": 1.0}
                               for i in range(10000)})
    scenario["inventories"][_uuid(1)] = (200, dumps(big))
    fake_cloud.load(scenario)
    result = fake_cloud.run(tmp_path, "-t", "20")
    assert_sound_output(result)
    assert result.returncode == 0, result.stdout[:500]
    values = result.values()
    assert values["hypervisors"] == n and values["vcpus_capacity"] == 64 * n
    assert values["memory_capacity"] == (65536 - 512) * n * 2**20
    assert result.elapsed < 10, result.elapsed


def test_hostile_names_end_to_end(fake_cloud, tmp_path):
    """The nastiest names through a real process and its UTF-8 output (lone surrogate, NUL,
    newline, `|`, bidi, 300 characters), a down one in the status line."""
    names = ["evil | name\nHYPERVISORS OK - forged | forged=1", "\ud800\x00\x1b[2J", "\u202egnp",
             "L" * 300, "twin", "twin"]
    scenario = healthy(0)
    records = [hv_record(i, name=name, state="down" if i == 1 else "up") for i, name in enumerate(names, 1)]
    scenario["pages"] = [(200, dumps({"hypervisors": records}))]
    scenario["inventories"] = {r["id"]: (200, dumps(inventory())) for r in records}
    scenario["usages"] = {r["id"]: (200, dumps(usages())) for r in records}
    fake_cloud.load(scenario)
    result = fake_cloud.run(tmp_path, "-v", "--perfdata-per-hypervisor")
    assert_sound_output(result)
    assert result.returncode == 2, result.stdout
    assert result.text.startswith("HYPERVISORS CRITICAL - 1 of 6 hypervisors down: evil \u00a6 name?"
                                  "HYPERVISORS OK - forged \u00a6 forged=1 - "), result.text
    assert "forged" not in result.perfdata
    assert len(result.lines) == 1 + 3 + 6 + 2
    assert any(line.startswith("OK: ???[2J [up, enabled]") for line in result.lines), result.stdout
    assert any(line.startswith("OK: ?gnp [up, enabled]") for line in result.lines), result.stdout
    assert len({label.rsplit(".", 1)[0] for label in result.perfdata if "." in label}) == 6


# =====================================================================================
# Faults, with the real Keystone, nova-api and Placement
# =====================================================================================

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date",
              "proxy-connection", "te", "trailer", "upgrade"}


class Proxy:
    """An HTTP proxy in this process in front of `upstream` (a real service of the cloud).

    delay: seconds before each request is forwarded; answer(method, path, headers, body):
    an own (status, body[, content type]) instead of forwarding, or None; rewrite: {bytes: bytes} replaced in
    the upstream's answers; hook(method, path): run after the upstream answered and before
    the proxy does (a real daemon is stopped there); stall(): accept and never answer;
    close_port() / reopen(): the port refuses connections, as a stopped daemon's, and back."""

    def __init__(self, upstream):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.delay = 0
        self.answer = None
        self.rewrite = {}
        self.hook = None
        self.gzip = False           # compress answers for clients that accept gzip
        self.gzipped = 0
        self.stalled = threading.Event()
        self.released = threading.Event()
        self.seen = []
        self.port = 0
        self._start()

    def _start(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                proxy._relay(self)

            do_POST = do_DELETE = do_HEAD = do_PUT = do_PATCH = do_GET

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self.server = server
        self.port = server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

    def _relay(self, handler):
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        self.seen.append((handler.command, handler.path))
        if self.stalled.is_set():
            self.released.wait(60)         # accepted, read, never answered
            handler.close_connection = True
            return
        if self.delay:
            time.sleep(self.delay)
        own = self.answer and self.answer(handler.command, handler.path, handler.headers, body)
        if own:
            status, data = own[:2]
            headers = [("Content-Type", own[2] if len(own) > 2 else "application/json")]
        else:
            import requests
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Host"] = self.upstream.netloc
            headers["Accept-Encoding"] = "identity"     # the proxy compresses, if it does
            try:
                response = requests.request(
                    handler.command, f"{self.upstream.scheme}://{self.upstream.netloc}"
                    f"{handler.path}", data=body or None, headers=headers, timeout=30,
                    allow_redirects=False)
                data = response.content
            except requests.exceptions.RequestException:
                handler.close_connection = True     # as the daemon would: no answer at all
                return
            status = response.status_code
            headers = [(k, v) for k, v in response.headers.items()
                       if k.lower() not in HOP_BY_HOP]
            for old, new in self.rewrite.items():
                data = data.replace(old, new)
            if self.gzip and "gzip" in (handler.headers.get("Accept-Encoding") or ""):
                import gzip
                data = gzip.compress(data)
                headers = [(k, v) for k, v in headers if k.lower() != "content-encoding"]
                headers.append(("Content-Encoding", "gzip"))
                self.gzipped += 1
            if self.hook:
                self.hook(handler.command, handler.path)
        handler.send_response(status)
        for key, value in headers:
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)

    def stall(self):
        self.released.clear()
        self.stalled.set()

    def unstall(self):
        self.stalled.clear()
        self.released.set()

    def close_port(self):
        self.server.shutdown()
        self.server.socket.close()

    def reopen(self):
        self._start()

    def close(self):
        self.unstall()
        with contextlib.suppress(OSError):
            self.close_port()


class ProxiedCloud:
    """Proxies in front of the real Keystone, Nova and Placement; Keystone's answers are
    rewritten so that the check logs in through the Keystone proxy and finds Nova (and
    Placement, if `placement` is true) behind their proxies in the catalog."""

    def __init__(self, cloud, user, state_dir, placement=True):
        self.cloud, self.user, self.state_dir = cloud, user, state_dir
        real = {name: urllib.parse.urlsplit(url) for name, url in (
            ("keystone", cloud.keystone_url), ("nova", cloud.nova_url),
            ("placement", cloud.placement_url))}
        self.keystone = Proxy(f"http://{real['keystone'].netloc}")
        self.nova = Proxy(f"http://{real['nova'].netloc}")
        self.placement = Proxy(f"http://{real['placement'].netloc}")
        self.keystone.rewrite = {f"http://{real['keystone'].netloc}".encode(): self.keystone.url.encode(),
                                 f"http://{real['nova'].netloc}".encode(): self.nova.url.encode()}
        if placement:
            self.keystone.rewrite[f"http://{real['placement'].netloc}".encode()] = \
                self.placement.url.encode()
        self.auth_url = f"{self.keystone.url}/v3"
        self.env = dict(user.env, OS_AUTH_URL=self.auth_url, NOVA_LIBVIRT_CHECKS_STATE_DIR=state_dir)

    def run(self, *args, timeout=60):
        return run(self.env, *args, timeout=timeout, secrets=[self.user.password])

    def logins(self):
        return self.user.token_requests()

    def close(self):
        for proxy in (self.keystone, self.nova, self.placement):
            proxy.close()


@pytest.fixture
def proxied(cloud, keystone_user, tmp_path):
    made = []

    def make(placement=True):
        made.append(ProxiedCloud(cloud, keystone_user, str(tmp_path / f"state{len(made)}"),
                                 placement=placement))
        return made[-1]
    yield make
    for proxied_cloud in made:
        proxied_cloud.close()


def user_env(cloud, user, state_dir):
    return dict(user.env, NOVA_LIBVIRT_CHECKS_STATE_DIR=state_dir)


def unvalidated_cached_token(env):
    """Log in and cache the token without any service seeing it (--os-region-name nowhere:
    no endpoint, so no request after the login), so that no keystonemiddleware of Nova or
    Placement has it in its cache of validated tokens: the next run's fate is decided by
    Keystone, not by a worker that remembers the token."""
    result = run(env, "--os-region-name", "nowhere")
    assert_unknown_line(result, "no compute endpoint")
    return token_file(env["NOVA_LIBVIRT_CHECKS_STATE_DIR"])


def test_keystone_stopped(mutable_cloud, keystone_user, tmp_path):
    """Keystone stopped (the real one: its port refuses). Without a cached token: UNKNOWN,
    'cannot connect to Keystone', at once. With one: the check does not need Keystone, but
    Nova does (keystonemiddleware validates every token there): Nova's 503 is shown with
    its reason. Product bug (fixed): the reason (a top-level "message" with HTML breaks)
    was dropped, leaving 'Nova failed: HTTP 503 for GET /os-hypervisors/detail'. The cache is
    left as it was; once Keystone is back the next run is OK on the same cached token."""
    cloud = mutable_cloud
    cached_env = user_env(cloud, keystone_user, str(tmp_path / "cached"))
    fresh_env = user_env(cloud, keystone_user, str(tmp_path / "fresh"))
    path = unvalidated_cached_token(cached_env)
    cache = read_bytes(path)
    with cloud.service_stopped("keystone"):
        fresh = run(fresh_env, "-vvv", secrets=[keystone_user.password])
        cached = run(cached_env, "-t", "10", secrets=[keystone_user.password])
    assert_unknown_line(fresh, f"cannot connect to Keystone at {cloud.keystone_url}: connection refused",
                        timeout=10)
    assert not os.path.exists(str(tmp_path / "fresh")) or cached_tokens(str(tmp_path / "fresh")) == []
    assert_unknown_line(cached, "Nova failed: HTTP 503 for GET /os-hypervisors/detail: The server is "
                        "currently unavailable. Please try again at a later time. The Keystone service "
                        "is temporarily unavailable.", timeout=10)
    assert read_bytes(path) == cache
    before = keystone_user.token_requests()
    again = run(cached_env, "-v", secrets=[keystone_user.password])
    assert_plugin_output(again, 0)
    assert "token reused from the cache" in again.stdout
    assert keystone_user.token_requests() == before
    assert read_bytes(path) == cache


def test_keystone_slow(proxied, tmp_path):
    """Keystone slow (a proxy delaying each answer): slower than -t is UNKNOWN naming
    Keystone, within -t, and no token is cached; within -t it is merely slower; with a cached
    token a slow Keystone does not slow the check at all (Nova's own token checks go to the
    real Keystone here)."""
    p = proxied()
    p.keystone.delay = 0.5
    ok = p.run("-v")
    assert_plugin_output(ok, 0)
    assert "new token" in ok.stdout and ok.elapsed >= 1.0          # version document + login
    cache = read_bytes(token_file(p.state_dir))
    p.keystone.delay = 5
    slow = run(dict(p.env, NOVA_LIBVIRT_CHECKS_STATE_DIR=str(tmp_path / "other")), "-t", "2",
               secrets=[p.user.password])
    assert_unknown_line(slow, f"Keystone at {p.auth_url} did not answer within the timeout of 2 s",
                        timeout=2)
    assert cached_tokens(str(tmp_path / "other")) == []
    before = p.logins()
    cached = p.run("-t", "10", "-v")                  # one Keystone round trip would take 5 s
    assert_plugin_output(cached, 0)
    assert "token reused from the cache" in cached.stdout and cached.elapsed < 4.5
    assert p.logins() == before and read_bytes(token_file(p.state_dir)) == cache


KEYSTONE_500 = dumps({"error": {"code": 500, "title": "Internal Server Error", "message":
                                "An unexpected error prevented the server from fulfilling your request."}})


def test_keystone_answering_500(proxied):
    """Keystone answering 500 to the login (POST /v3/auth/tokens): UNKNOWN naming the login,
    the status and Keystone's reason, at every -v level, within -t; nothing cached. A 500 to
    the version document (GET /v3) alone costs nothing: keystoneauth takes the version from
    the URL and logs in (OK). The next normal run logs in once and is OK."""
    p = proxied()
    p.keystone.answer = lambda method, path, headers, body: (
        (500, KEYSTONE_500) if method == "POST" and "/auth/tokens" in path else None)
    for verbosity in ("-v", "-vvv"):
        result = p.run(verbosity)
        assert_unknown_line(result, f"login to {p.auth_url} failed: HTTP 500: An unexpected error "
                            "prevented the server from fulfilling your request.", timeout=10)
    assert cached_tokens(p.state_dir) == []
    p.keystone.answer = lambda method, path, headers, body: (
        (500, KEYSTONE_500) if method == "GET" and path.rstrip("/").endswith("/v3") else None)
    before = p.logins()
    result = p.run("-vv")
    assert_plugin_output(result, 0)
    assert f"request: GET {p.auth_url} -> 500" in result.stdout, result.stdout
    assert p.logins() - before == 1
    p.keystone.answer = None
    assert_plugin_output(p.run(), 0)
    assert p.logins() - before == 1                     # and that token is reused


def test_keystone_refusing_the_cached_token(proxied, cloud):
    """The cached token revoked in Keystone (as by a password change or `openstack token
    revoke`): Nova answers 401, the check logs in once more and is OK, and caches the new
    token. If Keystone then fails the new login (500), UNKNOWN says so, and the cache keeps
    the old file untouched (no half-written state); the next normal run is OK with one login."""
    p = proxied()
    path = unvalidated_cached_token(p.env)
    revoked = cached_tokens(p.state_dir)[0]
    r = cloud.admin_session().delete(f"{cloud.keystone_url}/auth/tokens", raise_exc=False,
                                     headers={"X-Subject-Token": revoked})
    assert r.status_code == 204, r.text
    cache = read_bytes(path)
    p.keystone.answer = lambda method, path_, headers, body: (
        (500, KEYSTONE_500) if method == "POST" and "/auth/tokens" in path_ else None)
    failed = p.run("-vv")
    assert_unknown_line(failed, f"login to {p.auth_url} failed: HTTP 500")
    assert read_bytes(path) == cache
    p.keystone.answer = None
    before = p.logins()
    result = p.run("-vv")
    assert_plugin_output(result, 0)
    requests_ = [line for line in result.lines if line.startswith("request:")]
    assert "/os-hypervisors/detail -> 401" in requests_[0], result.stdout
    assert p.logins() - before == 1
    assert cached_tokens(p.state_dir) not in ([], [revoked])
    assert_plugin_output(p.run(), 0)
    assert p.logins() - before == 1                     # the new token is the cached one


def test_placement_stopped_mid_run(mutable_cloud, proxied):
    """The real Placement stopped after Nova listed the hypervisors, before the check asks
    Placement: UNKNOWN naming Placement and 'connection refused', within -t; the cached token
    untouched; once Placement is back, the next run is OK without a new login."""
    cloud = mutable_cloud
    p = proxied(placement=False)                 # the catalog's Placement is the real one
    assert_plugin_output(p.run(), 0)
    cache, before = read_bytes(token_file(p.state_dir)), p.logins()

    def stop_placement(method, path):
        if "/os-hypervisors/detail" in path:
            p.nova.hook = None
            cloud.stop_service("placement")
    p.nova.hook = stop_placement
    try:
        result = p.run("-t", "20", "-vvv")
    finally:
        cloud.start_service("placement")
    assert_unknown_line(result, "cannot connect to Placement (GET /resource_providers/",
                        "/inventories): connection refused", timeout=20)
    assert read_bytes(token_file(p.state_dir)) == cache
    assert_plugin_output(p.run(), 0)
    assert p.logins() == before


def test_nova_api_stopped_mid_run(mutable_cloud, proxied):
    """The real nova-api stopped after it listed the hypervisors, before the check's next Nova
    call (the flavor, with --flavor): UNKNOWN naming Nova and 'connection refused', within
    -t; the cached token untouched; once nova-api is back, the next run is OK without a new
    login. (Nova is reached through its proxy, which closes its port as nova-api stops.)"""
    cloud = mutable_cloud
    p = proxied()
    assert_plugin_output(p.run("--flavor", "m1.small"), 0)
    cache, before = read_bytes(token_file(p.state_dir)), p.logins()

    def stop_nova(method, path):
        if "/os-hypervisors/detail" in path:
            p.nova.hook = None
            cloud.stop_service("nova-api")
            p.nova.close_port()
    p.nova.hook = stop_nova
    try:
        result = p.run("-t", "20", "--flavor", "m1.small")
    finally:
        cloud.start_service("nova-api")
        p.nova.reopen()
    assert_unknown_line(result, "cannot connect to Nova (GET /flavors/detail?is_public=None): "
                        "connection refused", timeout=20)
    assert read_bytes(token_file(p.state_dir)) == cache
    assert_plugin_output(p.run("--flavor", "m1.small"), 0)
    assert p.logins() == before


@pytest.mark.parametrize("service", ["nova", "placement"])
def test_peer_that_accepts_and_never_answers(proxied, service):
    """Nova, or Placement after Nova answered, accepts the connection and never answers:
    UNKNOWN naming the service and the request, within -t (the check's own message, before
    the watchdog's); the cache untouched; the next run OK on the cached token. (Keystone:
    test_nova_hypervisors.py test_stalled_keystone_is_unknown_within_the_timeout.)"""
    p = proxied()
    assert_plugin_output(p.run(), 0)
    cache, before = read_bytes(token_file(p.state_dir)), p.logins()
    getattr(p, service).stall()
    try:
        result = p.run("-t", "4")
    finally:
        getattr(p, service).unstall()
    if service == "nova":
        assert_unknown_line(result, "Nova (GET /os-hypervisors/detail) did not answer within the "
                            "timeout of 4 s", timeout=4)
    else:
        assert_unknown_line(result, "Placement (GET /resource_providers/", "did not answer within the "
                            "timeout of 4 s", timeout=4)
    assert read_bytes(token_file(p.state_dir)) == cache
    assert_plugin_output(p.run(), 0)
    assert p.logins() == before


# =====================================================================================
# Security
# =====================================================================================

def test_token_cache_is_private_whatever_the_umask(cloud, keystone_user, tmp_path):
    """umask 000: the state directory is still created 0700, the token and lock files 0600."""
    state_dir = str(tmp_path / "state")
    result = run(user_env(cloud, keystone_user, state_dir), umask=0, secrets=[keystone_user.password])
    assert_plugin_output(result, 0)
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    files = sorted(os.listdir(state_dir))
    assert len(files) == 2 and files[1] == files[0] + ".lock", files
    for name in files:
        assert stat.S_IMODE(os.stat(os.path.join(state_dir, name)).st_mode) == 0o600, name


def test_state_directory_symlink_is_refused_not_followed(cloud, keystone_user, tmp_path):
    """The state directory is a symlink (to a directory of ours, even): refused with a note
    (once), nothing written in the target, the check logs in each time and answers."""
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "state"
    link.symlink_to(target)
    result = run(user_env(cloud, keystone_user, str(link)), secrets=[keystone_user.password])
    assert_plugin_output(result, 0)
    notes = [line for line in result.lines if "refusing state directory" in line]
    assert notes == [f"refusing state directory {link}: it is a symlink"], result.stdout
    assert os.listdir(target) == []


def test_state_directory_of_another_user_is_refused(cloud, keystone_user, tmp_path):
    """The state directory belongs to another user (nobody; world-writable even, as one
    planted in /var/tmp could be): refused, nothing written there."""
    if os.geteuid() != 0:
        service_unavailable("needs root to make a directory of another user")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)
    os.chmod(foreign, 0o777)
    tmp_path.chmod(0o755)
    result = run(user_env(cloud, keystone_user, str(foreign)), secrets=[keystone_user.password])
    assert_plugin_output(result, 0)
    assert f"refusing state directory {foreign}: owned by uid 65534, not by us (uid 0)" in result.stdout
    assert os.listdir(foreign) == []


def test_token_file_of_another_user_or_symlinked_lock_is_refused(cloud, keystone_user, tmp_path):
    """A token file owned by someone else in our directory is not read (it could hold a token
    of their choosing) and is replaced by ours; a lock file that is a symlink is not followed
    (its target untouched) and the check says the token was not saved. Product bug (fixed):
    that 'state not saved' note was added after the output was made, so never shown, and
    a state directory problem was noted twice (on load and on save)."""
    state_dir = str(tmp_path / "state")
    env = user_env(cloud, keystone_user, state_dir)
    assert_plugin_output(run(env), 0)
    path = token_file(state_dir)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
        result = run(env, secrets=[keystone_user.password])
        assert_plugin_output(result, 0)
        assert f"refusing state file {path}: not a regular file of ours" in result.stdout
        assert os.stat(path).st_uid == 0                       # replaced by a file of ours
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.unlink(path + ".lock")
    os.symlink(victim, path + ".lock")
    os.unlink(path)
    result = run(env, secrets=[keystone_user.password])
    assert_plugin_output(result, 0)
    assert f"state not saved: {path}.lock: Too many levels of symbolic links" in result.stdout
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o644


def test_secrets_echoed_by_a_service_never_reach_the_output(proxied, cloud, keystone_user):
    """A service (or a proxy's error page) that echoes what it was sent: Nova's 500 quoting
    the X-Auth-Token, Keystone's 500 quoting the login request with the password, and the same
    for an application credential's secret. None of it reaches the output, at -v, -vv or
    -vvv (tracebacks included). Product bug (fixed): the error detail was shown verbatim."""
    p = proxied()
    p.nova.answer = lambda method, path, headers, body: (
        500, dumps({"computeFault": {"code": 500, "message":
                                     f"token {headers.get('X-Auth-Token')} not accepted"}}))
    for verbosity in ("-v", "-vv", "-vvv"):
        result = p.run(verbosity)
        assert_unknown_line(result, "Nova failed: HTTP 500 for GET /os-hypervisors/detail: token "
                            "*** not accepted")
    # the token across the point where a long detail is cut: no part of it may remain
    p.nova.answer = lambda method, path, headers, body: (
        500, dumps({"computeFault": {"code": 500, "message": "x" * 150 + headers.get("X-Auth-Token")}}))
    result = p.run("-vvv")
    assert_unknown_line(result, "Nova failed: HTTP 500", "xxx***")
    token = cached_tokens(p.state_dir)[0]
    assert not any(token[i:i + 12] in result.stdout for i in range(len(token) - 12)), result.stdout
    p.nova.answer = None
    echo = lambda method, path, headers, body: (                          # noqa: E731
        (500, dumps({"error": {"code": 500, "message": f"cannot handle {body.decode()}"}}))
        if method == "POST" else None)
    p.keystone.answer = echo
    fresh = dict(p.env, NOVA_LIBVIRT_CHECKS_STATE_DIR=p.state_dir + "-fresh")
    for verbosity in ("-v", "-vvv"):
        result = run(fresh, verbosity, secrets=[keystone_user.password])
        assert_unknown_line(result, f"login to {p.auth_url} failed: HTTP 500: cannot handle")
        assert '"password": "***"' in status(result), result.stdout
    cred = keystone_user.app_credential()
    app_env = {"OS_AUTH_TYPE": "v3applicationcredential", "OS_AUTH_URL": p.auth_url,
               "OS_APPLICATION_CREDENTIAL_ID": cred["id"],
               "OS_APPLICATION_CREDENTIAL_SECRET": cred["secret"],
               "NOVA_LIBVIRT_CHECKS_STATE_DIR": p.state_dir + "-app"}
    for verbosity in ("-v", "-vvv"):
        result = run(app_env, verbosity, secrets=[cred["secret"]])
        assert_unknown_line(result, f"login to {p.auth_url} failed: HTTP 500: cannot handle")
    p.keystone.answer = None
    wrong = dict(app_env, OS_APPLICATION_CREDENTIAL_SECRET="wrong-secret-8d1f")
    result = run(wrong, "-vvv", secrets=[cred["secret"], "wrong-secret-8d1f"])
    assert_unknown_line(result, "refused (HTTP 401)", f"application credential {cred['id']}")


def test_clouds_yaml_per_service_settings_and_gzip(cloud, keystone_user, tmp_path):
    """clouds.yaml's per-service settings are honoured: compute_endpoint_override and
    placement_endpoint_override send every Nova and Placement call to proxies in front of the
    real services (the catalog names the real ones), which answer gzip-compressed: the
    answers are read all the same, with the exact numbers."""
    import yaml
    nova, placement = Proxy(cloud.nova_url), Proxy(cloud.placement_url)
    try:
        nova.gzip = placement.gzip = True
        clouds = {"clouds": {"nlc-over": {
            "auth_type": "password", "region_name": cloud.env["OS_REGION_NAME"],
            "auth": {"auth_url": cloud.keystone_url, "username": keystone_user.name,
                     "password": keystone_user.password, "project_name": "admin",
                     "user_domain_name": "Default", "project_domain_name": "Default"},
            "compute_endpoint_override": f"{nova.url}/v2.1",
            "placement_endpoint_override": placement.url,
            "placement_interface": "internal"}}}
        path = tmp_path / "clouds.yaml"
        path.write_text(yaml.safe_dump(clouds))
        env = {"OS_CLIENT_CONFIG_FILE": str(path), "OS_CLIENT_SECURE_FILE": str(tmp_path / "none"),
               "NOVA_LIBVIRT_CHECKS_STATE_DIR": str(tmp_path / "state")}
        result = run(env, "--os-cloud", "nlc-over", "-vv", "--flavor", "m1.small",
                     secrets=[keystone_user.password])
        assert result.returncode == 0, result.stdout
        hosts = cloud.expected["hosts"]
        values = result.values()
        for resource, (rc, _t, _u, unit) in UNITS.items():
            inv = [h["placement"][rc] for h in hosts.values()]
            assert values[f"{resource}_used"] == sum(i["used"] for i in inv) * unit
            assert values[f"{resource}_capacity"] == sum(i["capacity"] for i in inv) * unit
        requests_ = [line for line in result.lines if line.startswith("request: GET")]
        assert requests_ and all(nova.url in line or placement.url in line
                                 for line in requests_ if "/v3" not in line), result.stdout
        assert any(p.startswith("/v2.1/os-hypervisors/detail") for _m, p in nova.seen)
        assert any(p.endswith("/usages") for _m, p in placement.seen)
        assert nova.gzipped and placement.gzipped
    finally:
        nova.close()
        placement.close()


# The secrets of issue 11, exactly: a password with " and \ (JSON-escaped in a login body:
# Pa\"ss\\w0rd-Xy), a non-ASCII one (p\u00e4ssw...), an application-credential secret likewise,
# one cut apart by markup, and one under 4 characters.
ECHOED_SECRETS = [
    ("password", 'Pa"ss\\w0rd-Xy'),
    ("password", "p\u00e4ssw\u00f6rt-\u00dfecret"),
    ("application_credential", 'Ap"p\\Cr\u00e9d-S3cret'),
    ("password", "Geheim<i>Wort</i>Lang-42"),
    ("password", "Xy1"),
]


def _echo(kind):
    """Keystone's stand-in for the login: answers POST /v3/auth/tokens itself with an error
    that quotes the request body back - as JSON, or as an HTML page with the body raw,
    URL-encoded and HTML-escaped."""
    def answer(method, path, headers, body):
        if method != "POST":
            return None
        text = body.decode("utf-8")
        if kind == "json":
            return 400, dumps({"error": {"code": 400, "title": "Bad Request",
                                         "message": f"cannot handle {text}"}})
        login = json.loads(text)["auth"]["identity"]
        secret = (login.get("password", {}).get("user", {}).get("password")
                  or login.get("application_credential", {}).get("secret"))
        page = (f"<html><head><title>400 Bad Request</title></head><body><h1>Bad Request</h1>"
                f"<p>cannot handle {text}</p><p>form: secret={urllib.parse.quote(secret)}"
                f"&amp;plus={urllib.parse.quote_plus(secret)}</p><pre>{html_escape(secret)}"
                f"</pre><p>{secret}</p></body></html>")
        return 400, page.encode("utf-8"), "text/html; charset=utf-8"
    return answer


def html_escape(text):
    import html
    return html.escape(text)


def _fragments(secret):
    """The secret and the pieces of it that markup could leave (4 characters and more)."""
    pieces = [piece for piece in re.split(r"<[^>]*>", secret) if len(piece) >= 4]
    return [secret] + pieces


@pytest.mark.parametrize("kind", ["json", "html"])
@pytest.mark.parametrize("auth, secret", ECHOED_SECRETS,
                         ids=["quote-backslash", "non-ascii", "app-credential", "markup", "short"])
def test_no_secret_in_any_form_when_keystone_quotes_the_login(proxied, auth, secret, kind):
    """Product bug (fixed): Connection.clean replaced only the exact secret, after the HTML
    tag stripping, and never one under 4 characters. Now: no secret raw, JSON-escaped
    (ASCII or not), URL-encoded, HTML-escaped or cut apart by markup, at -v, -vv and -vvv.
    Keystone here is the real one behind a stand-in proxy that answers the login itself with
    the request body quoted back: the real Keystone never quotes a password (which is why the
    stand-in), but a proxy or an older server in front of it may."""
    p = proxied(placement=False)
    p.keystone.answer = _echo(kind)
    env = {"OS_AUTH_URL": p.auth_url, "NOVA_LIBVIRT_CHECKS_STATE_DIR": p.state_dir + "-echo"}
    if auth == "password":
        env.update(OS_USERNAME="nlc-echo", OS_PASSWORD=secret, OS_PROJECT_NAME="admin",
                   OS_USER_DOMAIN_NAME="Default", OS_PROJECT_DOMAIN_NAME="Default")
    else:
        env.update(OS_AUTH_TYPE="v3applicationcredential",
                   OS_APPLICATION_CREDENTIAL_ID="0123456789abcdef",
                   OS_APPLICATION_CREDENTIAL_SECRET=secret)
    import html
    forms = set()
    for fragment in _fragments(secret):
        escaped = json.dumps(fragment)[1:-1]
        forms |= {fragment, escaped, json.dumps(fragment, ensure_ascii=False)[1:-1],
                  urllib.parse.quote(fragment), urllib.parse.quote(fragment, safe=""),
                  urllib.parse.quote_plus(fragment), html.escape(fragment), html.escape(escaped)}
    for verbosity in ("-v", "-vv", "-vvv"):
        result = run(env, verbosity, secrets=sorted(forms))
        assert_unknown_line(result, f"login to {p.auth_url} failed: HTTP 400")
        assert len(result.lines) == 1 or verbosity == "-vvv", result.stdout
        if len(secret) >= 6:        # long enough to be found: the rest of the text is kept
            assert "cannot handle" in status(result) and "***" in status(result), result.stdout
        else:                       # too short to find safely: the service's text withheld
            assert "withheld" in status(result), result.stdout


def test_cached_token_never_reaches_the_output(cloud, keystone_user, tmp_path):
    """The token cache's content (the token, and a mangled copy of it) never reaches the
    output: every run of this file checks the tokens cached in its state directory; here the
    cache is also damaged in ways that make the check talk about it, at -vvv."""
    state_dir = str(tmp_path / "state")
    env = user_env(cloud, keystone_user, state_dir)
    assert_plugin_output(run(env), 0)
    path = token_file(state_dir)
    token = cached_tokens(state_dir)[0]
    document = json.loads(read_bytes(path))
    state = json.loads(document["auth_state"])
    state["body"]["token"]["expires_at"] = f"not a date {token}"
    document["auth_state"] = json.dumps(state)
    with open(path, "w") as handle:
        json.dump(document, handle)
    for content in (None, json.dumps({"version": 1, "auth_state": token}).encode(),
                    token.encode() + b"\xff"):
        if content is not None:
            with open(path, "wb") as handle:
                handle.write(content)
        result = run(env, "-vvv", secrets=[token, keystone_user.password])
        assert result.returncode == 0, result.stdout
