"""The fault matrix of the libvirt checks (docs/faults-libvirt.md), one test per row.

Hostile input: every option value, domain names and Nova metadata as libvirt hands them over
(tests/data/hostile-node.xml on the test driver, and a hostile-named QEMU domain on the real
daemon). Faults, with the real libvirtd of the test harness: stopped, restarted during a run,
hung (SIGSTOP), slow (a delaying proxy in front of its read-only socket); a guest destroyed or
restarted between listing and stats (a proxy holds the check's next call while the test acts);
50 concurrent runs on one state file; the state directory full (tmpfs), read-only, missing,
corrupt; the wall clock stepping (an LD_PRELOAD shim), both clocks faked (libfaketime).
Security: state files private, symlinks and other users' directories refused, read-only
libvirt (traced with strace), no shell, no NRPE arguments.

Every test restores what it changes (daemon running, guests running, mounts gone), also when it
fails. The harness guests are never touched: the guest destroyed or restarted mid-run is a
transient paused QEMU domain of this file's own. Tests that disturb libvirtd (stop, SIGSTOP)
keep it short (< 3 s). A test that asserts behaviour the product does not have yet says
"Product bug" in its docstring; the fixes are in docs/faults-libvirt.md.
"""
import ast
import collections
import contextlib
import glob
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nova_libvirt_checks import instances as instances_check, libvirtd as libvirtd_check, plugin
from nova_libvirt_checks.rates import METRICS
from nova_libvirt_checks.state import boot_id
from nova_libvirt_checks.thresholds import format_range
from tests.checkrun import NODE_URI, ROOT, Result, assert_plugin_output, run_check
from tests.conftest import TEST_ROOT, is_root, service_unavailable
from tests.fixtures_libvirt import NOVA_NS_1_1, RO_SOCKET, WORKDIR, run_as_nagios
from tests.helpers import OPTION_SPECIALS, apt_install, option_value_failures, parse_option
from tests.oracle import (ALL_METRICS, MEASURED_ELSEWHERE, SLACK_S, CounterRecorder, assert_rates_match,
                          bulk_reader, in_run_starts, label_base, recorded_sample_times)
from tests.oracle import read_state as state_document

HOSTILE_NODE = os.path.join(ROOT, "tests", "data", "hostile-node.xml")
HOSTILE_URI = "test://" + HOSTILE_NODE
GUESTS = "^instance-0000000[12]$"                       # the harness's two QEMU guests
CHECK_INSTANCES = os.path.join(ROOT, "checks", "check_libvirt_instances")
CHECK_LIBVIRTD = os.path.join(ROOT, "checks", "check_libvirtd")


def instances(state_dir, *args, **kwargs):
    # runs a moment apart compare with each other (--min-window 0), as the tests here expect
    return run_check("check_libvirt_instances", "--state-dir", state_dir, "--min-window", "0", *args, **kwargs)


def spawn(check, *args):
    """Start a check in the background (as the scheduler would); `finish()` collects it."""
    argv = [sys.executable, os.path.join(ROOT, "checks", check), *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    proc.started = time.monotonic()
    return proc


def finish(proc, timeout=60):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"check still running after {timeout} s: {out!r} {err!r}")
    return Result(proc.returncode, out, err, time.monotonic() - proc.started)


def state_path(directory):
    files = [f for f in os.listdir(directory) if f.endswith(".json")]
    assert len(files) == 1, files
    return os.path.join(directory, files[0])


def read_state(directory):
    with open(state_path(directory), "rb") as handle:
        return handle.read()


def assert_clean_lines(result):
    """Plugin output that no name can break: valid protocol, every line printable text."""
    assert_plugin_output(result)
    for line in result.lines:
        assert all(c.isprintable() for c in line), repr(line)
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", label) for label in result.perfdata), result.perfdata


def instance_bases(result):
    return {label.rsplit(".", 1)[0] for label in result.perfdata
            if "." in label and not label.startswith("total.")}


def node_xml(domains):
    """A test-driver node file with these (libvirt name, metadata XML or '') domains."""
    parts = ["<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads>"
             "<active>4</active><mhz>2000</mhz><model>x86_64</model></cpu><memory>16777216</memory>"]
    for n, (name, meta) in enumerate(domains, 1):
        parts.append(f"<domain type='test'><name>{name}</name><uuid>0000{n:04x}-f00d-4000-8000-00000000{n:04x}"
                     f"</uuid><metadata>{meta}</metadata><memory unit='MiB'>512</memory><vcpu>1</vcpu>"
                     "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
                     "<source file='/x'/><target dev='vda' bus='virtio'/></disk></devices></domain>")
    return "".join(parts) + "</node>"


def nova_xml(name, extra=""):
    return (f'<nova:instance xmlns:nova="{NOVA_NS_1_1}"><nova:name>{name}</nova:name>{extra}'
            '<nova:owner><nova:user uuid="u1">alice</nova:user><nova:project uuid="p1">acme'
            '</nova:project></nova:owner></nova:instance>')


# =====================================================================================
# Hostile input 1: option values
# =====================================================================================

INSTANCES_PARSER = instances_check.build_parser()
LIBVIRTD_PARSER = libvirtd_check.build_parser()
THRESHOLD = re.compile(r"@?(?:(?:~|-?\d+(?:\.\d+)?)?:)?(?:-?\d+(?:\.\d+)?)?")
INF = float("inf")


def _sane_range(rng):
    assert not (math.isnan(rng.start) or math.isnan(rng.end)), rng
    assert rng.start <= rng.end and rng.start != INF and rng.end != -INF, rng
    assert THRESHOLD.fullmatch(format_range(rng)), format_range(rng)


def _named_range(names):
    def check(value):
        name, rng = value[-1]
        assert name in names
        _sane_range(rng)
    return check


def _finite_non_negative(value):
    assert math.isfinite(value) and value >= 0, value


def _positive_int(value):
    assert isinstance(value, int) and value >= 1, value


def _timeout(value):
    assert math.isfinite(value) and 0 < value <= 86400, value


def _regex(value):
    assert isinstance(value[-1], re.Pattern)


def _states(value):
    assert value[-1] and set(value[-1]) <= set(instances_check.STATE_NAMES), value


def _any(_value):
    pass


# (parser, option, namespace attribute, what an accepted value must be)
OPTIONS = [
    ("instances", "--warning", "warning", _named_range(set(METRICS))),
    ("instances", "--critical", "critical", _named_range(set(METRICS))),
    ("instances", "--total-warning", "total_warning", _named_range(set(METRICS))),
    ("instances", "--total-critical", "total_critical", _named_range(set(METRICS))),
    ("instances", "--state-warning", "state_warning", _states),
    ("instances", "--state-critical", "state_critical", _states),
    ("instances", "--tenant", "tenant", _regex),
    ("instances", "--exclude-tenant", "exclude_tenant", _regex),
    ("instances", "--name", "name", _regex),
    ("instances", "--exclude-name", "exclude_name", _regex),
    ("instances", "--domain", "domain", _regex),
    ("instances", "--exclude-domain", "exclude_domain", _regex),
    ("instances", "--top", "top", _positive_int),
    ("instances", "--max-output", "max_output", _positive_int),
    ("instances", "--perfdata", "perfdata", lambda v: v in ("all", "offenders", "totals", "none")),
    ("instances", "--stats-mode", "stats_mode", lambda v: v in ("auto", "bulk", "per-domain")),
    ("instances", "--interval", "interval", _finite_non_negative),
    ("instances", "--max-age", "max_age", _finite_non_negative),
    ("instances", "--metadata-ttl", "metadata_ttl", _finite_non_negative),
    ("instances", "--timeout", "timeout", _timeout),
    ("instances", "--connect", "connect", _any),
    ("instances", "--state-dir", "state_dir", _any),
    ("libvirtd", "--warning", "warning", _sane_range),
    ("libvirtd", "--critical", "critical", _sane_range),
    ("libvirtd", "--domains-warning", "domains_warning", _named_range(set(libvirtd_check.COUNTED))),
    ("libvirtd", "--domains-critical", "domains_critical", _named_range(set(libvirtd_check.COUNTED))),
    ("libvirtd", "--timeout", "timeout", _timeout),
    ("libvirtd", "--connect", "connect", _any),
]
OPTION_IDS = [f"{check} {option}" for check, option, _, _ in OPTIONS]

RANGE_SPECIALS = ["", "5", "inf", "nan", "1e999", "9" * 400, "-" + "9" * 400 + ":", "10:5", "@",
                  "~:", "5%", "5B", "5/s", "50MiB/s", "\u0661\u0662", "x"]


def _values_for(check, option):
    values = list(OPTION_SPECIALS)
    if option in ("--warning", "--critical", "--total-warning", "--total-critical") and check == "instances":
        values += [f"{metric}={spec}" for metric in ("cpu", "disk_write_bytes", "net_errors")
                   for spec in RANGE_SPECIALS]
    if option in ("--domains-warning", "--domains-critical"):
        values += [f"{state}={spec}" for state in ("crashed", "total") for spec in RANGE_SPECIALS]
    if check == "libvirtd" and option in ("--warning", "--critical"):
        values += RANGE_SPECIALS
    return values


def parse_one(check, option, attribute, value):
    """Parse `option=value` as the check does: the accepted value, or None (a UsageError)."""
    return parse_option(INSTANCES_PARSER if check == "instances" else LIBVIRTD_PARSER, option,
                        attribute, value)


@pytest.mark.parametrize("check", ["instances", "libvirtd"])
def test_every_option_value_is_refused_naming_the_option_or_means_something_sane(check):
    """Fixed hostile values, every option of the check: refused as UsageError naming the
    option (exit 3, one line), or accepted as a sane value; never another exception, never a
    warning. Product bugs (see the doc): a 400-digit number raises OverflowError (ranges of
    both checks); 'inf'/'1e999' accepted by --interval/--max-age/--metadata-ttl; '[[a]'
    warns on stderr (every regex option)."""
    parser = INSTANCES_PARSER if check == "instances" else LIBVIRTD_PARSER
    failures = option_value_failures(parser, [(option, attribute, valid, _values_for(check, option))
                                              for name, option, attribute, valid in OPTIONS
                                              if name == check])
    assert not failures, f"{len(failures)} values:\n" + "\n".join(failures)


RANGE_TEXT = st.from_regex(
    r"\A@?(~|[-+]?[0-9]{0,4}(\.[0-9]{0,3})?)?:?[-+]?[0-9]{0,4}(\.[0-9]{0,3})?"
    r"(k|K|M|G|T|P|Ki|Mi|Gi|Ti|Pi|%|s|ms|us|m|min|h|q)?B?(/s)?\Z", fullmatch=True)
NAMES = st.sampled_from(sorted(METRICS) + sorted(libvirtd_check.COUNTED) + ["", "CPU", "bogus"])
OPTION_TEXT = st.one_of(st.text(max_size=40), RANGE_TEXT, st.builds("{}={}".format, NAMES, RANGE_TEXT),
                        st.sampled_from(OPTION_SPECIALS))


@pytest.mark.parametrize("check, option, attribute, valid", OPTIONS, ids=OPTION_IDS)
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(value=OPTION_TEXT)
def test_any_option_value_property(check, option, attribute, valid, value):
    """Property (hypothesis, derandomized: the same examples every run): whatever the text,
    the option is refused naming itself, or the accepted value is sane. Product bugs it finds:
    'INF' and '1E310' (a float overflowing to inf) accepted by --max-age and --metadata-ttl,
    '[[' warning on stderr (--domain)."""
    accepted = parse_one(check, option, attribute, value)
    if accepted is not None:
        valid(accepted)


@pytest.mark.parametrize("check, args, option", [
    ("check_libvirt_instances", ["--total-warning", "cpu=x"], "--total-warning"),
    ("check_libvirt_instances", ["--total-critical", "nosuch=1"], "--total-critical"),
    ("check_libvirt_instances", ["--exclude-tenant", "("], "--exclude-tenant"),
    ("check_libvirt_instances", ["--name", "*"], "--name"),
    ("check_libvirt_instances", ["--domain", "(?<"], "--domain"),
    ("check_libvirt_instances", ["--state-critical", ","], "--state-critical"),
    ("check_libvirt_instances", ["--stats-mode", "fast"], "--stats-mode"),
    ("check_libvirt_instances", ["--max-output", "-5"], "--max-output"),
    ("check_libvirt_instances", ["--max-age", "nan"], "--max-age"),
    ("check_libvirt_instances", ["--metadata-ttl", "-1"], "--metadata-ttl"),
    ("check_libvirt_instances", ["-t", "86401"], "-t/--timeout"),
    ("check_libvirt_instances", ["-w", "cpu=50%|forged=1\nCRITICAL"], "-w/--warning"),
    ("check_libvirtd", ["--domains-warning", "running=1M"], "--domains-warning"),
    ("check_libvirtd", ["-U"], "-U/--connect"),
    # product bugs (the doc has the fixes):
    ("check_libvirt_instances", ["-w", "cpu=" + "9" * 400], "-w/--warning"),          # OverflowError
    ("check_libvirtd", ["-c", "9" * 400], "-c/--critical"),                           # OverflowError
    ("check_libvirt_instances", ["--interval", "inf"], "--interval"),                  # accepted
    ("check_libvirt_instances", ["--max-age", "1e999"], "--max-age"),                  # accepted
    ("check_libvirt_instances", ["--interval", "6"], "--interval"),                    # >= -t/2: ignored
    ("check_libvirt_instances", ["-c", "cpu=95B"], "-c/--critical"),                   # bytes unit on %
    ("check_libvirt_instances", ["-w", "memory=80%/s"], "-w/--warning"),               # rate unit on %
    ("check_libvirtd", ["-w", "1B"], "-w/--warning"),                                  # bytes unit on s
    ("check_libvirt_instances", ["--name", "[[a]"], "--name"),                         # FutureWarning
], ids=lambda v: None if isinstance(v, list) else v)
def test_invalid_option_value_is_one_unknown_line_naming_the_option(state_dir, check, args, option):
    """End to end, as the scheduler sees it: exit 3, one line 'invalid argument' naming the
    option, nothing on stderr (the rows marked as product bugs fail until fixed)."""
    extra = [] if check == "check_libvirtd" else ["--state-dir", state_dir, "--interval", "0"]
    result = run_check(check, "-U", NODE_URI, *extra, *args)
    assert result.stderr == "", result.stderr
    assert_plugin_output(result, 3)
    assert len(result.lines) == 1, result.stdout
    assert "invalid argument" in result.text and option in result.text, result.text


def test_hostile_uri_stays_one_line(state_dir):
    """-U with a newline and a |: one line, no forged perfdata, and UNKNOWN (an invalid option
    value)."""
    uri = "test:///nonexistent/x.xml\nINSTANCES OK - forged | forged=1"
    for result in (instances(state_dir, "-U", uri), run_check("check_libvirtd", "-U", uri)):
        assert_clean_lines(result)
        assert len(result.lines) == 1 and result.perfdata == {}, result.stdout
        assert result.returncode == 3, result.stdout


def test_test_driver_file_missing_or_corrupt(state_dir, tmp_path):
    """test:///PATH names a file the test driver reads in this process: missing or corrupt is a
    configuration error (UNKNOWN, saying which), never "libvirtd is not answering", and
    nothing on stderr (libxml2 would print an I/O warning for a missing file)."""
    corrupt = tmp_path / "node.xml"
    corrupt.write_text("<node><domain type='test'><name>x</name>\n")
    for uri, said in ((f"test://{tmp_path}/missing.xml", f"no file {tmp_path}/missing.xml for libvirt's test driver"),
                      (f"test://{corrupt}", f"{corrupt}:2: Premature end of data")):
        for check, name, args in (("check_libvirtd", "LIBVIRTD", ()),
                                  ("check_libvirt_instances", "INSTANCES", ("--state-dir", state_dir))):
            result = run_check(check, "-U", uri, *args)
            assert result.stderr == "", result.stderr
            assert_plugin_output(result, 3)
            assert result.text.startswith(f"{name} UNKNOWN - cannot use {uri}: {said}"), result.text


# =====================================================================================
# Hostile input 2: names and metadata as libvirt hands them over
# =====================================================================================

def test_hostile_names_never_break_the_output(state_dir):
    """tests/data/hostile-node.xml: |, newlines, tabs, CR, DEL, C1 controls, U+2028/9, bidi
    overrides, zero-width characters, emoji, 2000-character libvirt names, names of nothing
    but |, twins, 240-deep metadata: one status line, one line per instance, printable text,
    valid unique labels, stable from run to run."""
    result = instances(state_dir, "-U", HOSTILE_URI, "--top", "50", "--interval", "0.2")
    assert_clean_lines(result)
    assert result.returncode == 0, result.stdout
    assert result.text.startswith("INSTANCES OK - 15 instances within limits (15 running)")
    assert len(result.lines) == 1 + 15                       # no name added or ended a line
    assert "forged=1" not in result.perfdata and "x=1" not in result.perfdata
    assert not any(line.startswith(("INSTANCES", "CRITICAL:", "UNKNOWN -")) for line in result.lines[1:])
    titles = {line.split(" [", 1)[0].split(": ", 1)[1] for line in result.lines[1:]}
    assert "evil \u00a6 name?INSTANCES OK - forged \u00a6 forged=1;0;0 (acme?CRITICAL: \u00a6 x=1)" in titles
    assert "ctl?tab?cr?del?nel?csi?ls?ps??end (tenant)" in titles
    assert "?10-bew? ?zero?width? e\u0301 \U0001f4a3 \u6771\u4eac (\u0634\u0631\u0643\u0629 ?\u0639\u0631\u0628\u064a\u0629)" in titles
    assert "plain\u00a6evil?UNKNOWN - forged ' = x (not Nova)" in titles   # libvirt name, no metadata
    assert "instance-h07 (not Nova)" in titles              # whitespace-only Nova name
    assert "instance-h12 (not Nova)" in titles              # unknown Nova namespace
    assert "deep-01 (acme)" in titles and "\u00a6\u00a6\u00a6 (acme)" in titles
    long_title = next(t for t in titles if t.startswith("LLLL"))
    assert long_title == "L" * 250 + "\u00a6tail (" + "P" * 255 + ")"   # fields cut to 255
    bases = instance_bases(result)
    assert len(bases) == 15                                   # twins and all: 15 distinct labels
    assert all(len(base) <= 40 + 1 + 8 for base in bases), bases
    again = instances(state_dir, "-U", HOSTILE_URI, "--top", "50")
    assert set(again.perfdata) == set(result.perfdata)


def test_hostile_names_keep_the_output_under_max_output(state_dir):
    """Product bug: the status line is never cut, so three offenders with long names (Nova
    fields are cut to 255 characters, libvirt names not at all) exceed --max-output 1000
    (3 KB here), which NRPE v2 clients truncate mid-line."""
    result = instances(state_dir, "-U", HOSTILE_URI, "-w", "cpu=50", "--max-output", "1000", "--interval", "0.2")
    assert_clean_lines(result)
    assert result.returncode == 1
    assert len(result.stdout.encode()) <= 1000, len(result.stdout.encode())


@pytest.mark.parametrize("junk_bytes, why", [(70 * 1024, "metadata over 64 KiB"),
                                              (5 * 1024 * 1024, "domain XML over 4 MiB")])
def test_huge_metadata_falls_back_to_the_libvirt_name(tmp_path, state_dir, junk_bytes, why):
    """Metadata as big as libvirt accepts (text nodes up to 10 MB): that domain is named by
    its libvirt name, its neighbours as usual, the check goes on."""
    node = tmp_path / "node.xml"
    node.write_text(node_xml([("huge-domain", nova_xml("huge", f"<nova:junk>{'x' * junk_bytes}</nova:junk>")),
                              ("normal-domain", nova_xml("normal-01"))]))
    result = instances(state_dir, "-U", f"test://{node}", "--interval", "0.2")
    assert_clean_lines(result)
    assert result.returncode == 0, result.stdout
    assert "huge-domain (not Nova)" in result.stdout and "normal-01 (acme)" in result.stdout, why
    assert result.elapsed < 5


def test_odd_numbers_in_metadata_do_not_stop_the_check(tmp_path, state_dir):
    """Product bug: <nova:vcpus>\u00b2</nova:vcpus> (a digit to str.isdigit(), not to int())
    raises ValueError in metadata.parse; the whole check ends 'UNKNOWN - internal error'.
    Expected: the field is ignored (or the domain falls back), the others are measured."""
    node = tmp_path / "node.xml"
    flavor = "<nova:flavor name='odd'><nova:vcpus>\u00b2</nova:vcpus><nova:memory>\u0661\u0662</nova:memory></nova:flavor>"
    node.write_text(node_xml([("odd-domain", nova_xml("odd-01", flavor)), ("normal-domain", nova_xml("normal-01"))]))
    result = instances(state_dir, "-U", f"test://{node}", "--interval", "0.2")
    assert_clean_lines(result)
    assert result.returncode == 0, result.stdout
    assert "normal-01 (acme)" in result.stdout
    assert "odd-01 (acme)" in result.stdout       # still named: only the odd fields are ignored


@pytest.mark.parametrize("doctype, reference", [
    ('<!DOCTYPE node [<!ENTITY e "EXPANDED">]>', "&e;"),
    ('<!DOCTYPE node [<!ENTITY e SYSTEM "file://{secret}">]>', "&e;"),
    ('<!DOCTYPE node [<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY a{i} "{("&a%s;" % (i - 1 if i > 1 else "")) * 10}">' for i in range(1, 10)) + "]>", "&a9;"),
], ids=["internal-entity", "external-entity", "billion-laughs"])
def test_entity_payloads_never_reach_the_check(tmp_path, state_dir, doctype, reference):
    """libvirt re-parses each domain of a node file without its DTD ("Entity 'e' not
    defined") and its libxml2 stops entity loops, so no entity payload reaches the check
    through libvirt: it says UNKNOWN in one line. The check's own parser, given such
    metadata directly, refuses it (tests/test_metadata.py: test_entity_expansion_is_not_performed,
    test_external_entity_is_not_read)."""
    secret = tmp_path / "secret"
    secret.write_text("TOP-SECRET-42")
    node = tmp_path / "node.xml"
    node.write_text('<?xml version="1.0"?>' + doctype.format(secret=secret)
                    + node_xml([("entity-domain", nova_xml(reference))]))
    result = instances(state_dir, "-U", f"test://{node}")
    assert_clean_lines(result)
    assert result.returncode == 3 and len(result.lines) == 1, result.stdout
    assert result.text.startswith(f"INSTANCES UNKNOWN - cannot use test://{node}: "), result.text
    assert "TOP-SECRET" not in result.stdout and "aaaaaaaaaaaaaaaaaaaa" not in result.stdout
    assert result.elapsed < 5


def test_catastrophic_regex_cannot_outlive_the_deadline(tmp_path, state_dir):
    """Product bug: a regular expression that backtracks exponentially on a (tenant-chosen)
    name runs inside `re` holding the GIL, so the watchdog thread cannot fire: -t 1 answers
    after ~25 s, and blames libvirtd. A SIGALRM handler would run (re checks for signals)."""
    node = tmp_path / "node.xml"
    node.write_text(node_xml([("redos-domain", nova_xml("a" * 30 + "!"))]))
    proc = spawn("check_libvirt_instances", "-U", f"test://{node}", "--state-dir", state_dir,
                 "--interval", "0", "--name", "^(a+)+$", "-t", "1")
    try:
        out, err = proc.communicate(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("-t 1 did not end the check within 3 s (regex backtracking holds the GIL)")
    assert proc.returncode == 3 and err == "" and out.startswith("INSTANCES UNKNOWN - "), out


# =====================================================================================
# Faults with the real libvirtd
# =====================================================================================

def libvirtd_pid():
    with open(os.path.join(WORKDIR, "run", "libvirtd.pid")) as handle:
        pid = int(handle.read().strip())
    with open(f"/proc/{pid}/comm") as handle:
        assert handle.read().strip() == "libvirtd"
    return pid


def wait_until_answering(libvirtd, seconds=30):
    deadline = time.monotonic() + seconds
    while not libvirtd.daemon_running():
        assert time.monotonic() < deadline, "libvirtd does not answer again"
        time.sleep(0.2)


@pytest.fixture
def guest_recorder(libvirtd):
    """The test's own readings of the harness guests' counters (tests/oracle.py) while it runs."""
    with libvirtd.open_ro() as conn, \
            CounterRecorder(bulk_reader(conn, [g["uuid"] for g in libvirtd.guests])) as recorder:
        recorder.host_cpus = conn.getInfo()[2]
        yield recorder


def assert_guests_measured(result, libvirtd, recorder, state_dir, starts):
    """Both harness guests have every metric, each (and each total.*) within the test's own
    measurement over the check's window (tests/oracle.py): it ends at the sample the check
    recorded in state_dir; `starts` is recorded_sample_times() from before the run when the
    run's rates are against that sample, or in_run_starts() when it sampled twice itself."""
    guests = {g["uuid"]: g for g in libvirtd.guests}
    ends = {u: t for u, t in recorded_sample_times(state_dir).items() if u in guests}
    if isinstance(starts, tuple):                  # (process start, --interval): sampled in-run
        starts = in_run_starts(ends, *starts)
    recorder.wait_past(max(ends.values()) + 2 + max((e - s for s, e in recorder.held_calls), default=0))
    # the per-domain path has no vcpu.N.delay: known from what the check's samples hold
    samples = state_document(state_dir).get("samples") or {}
    sampled = {key for u in guests for key in (samples.get(u) or {}).get("c", {})}
    assert_rates_match(result, recorder, {u: label_base(g["nova_name"], u) for u, g in guests.items()},
                       starts, ends, {u: g["flavor"]["vcpus"] for u, g in guests.items()},
                       recorder.host_cpus, () if "cpu_delay" in sampled else ("cpu_delay",))


@pytest.mark.parametrize("mode, second_sample", [("bulk", (344, 3)), ("per-domain", (273, 3))])
def test_libvirtd_restarted_during_a_run(libvirtd, guest_recorder, rpc_proxy, state_dir, mode, second_sample):
    """libvirtd stopped and started while a run waits between its two samples: the run ends
    UNKNOWN in one line (its connection is gone), within its timeout; the state written
    before is intact and the next run has its rates from it. Through a proxy that holds the
    run's second sample (its 3rd GetAllDomainStats / ListAllDomains call: the first run made
    the 1st) until libvirtd is back: the restart falls between the two samples, every time."""
    proxy = rpc_proxy(hold=second_sample)
    args = ("-U", proxy.uri, "--stats-mode", mode, "--domain", GUESTS)
    instances(state_dir, *args, "--interval", "0")
    before = read_state(state_dir)
    # --max-age 0: that sample is too old for this run, so it samples twice itself
    proc = spawn("check_libvirt_instances", "--state-dir", state_dir, *args,
                 "--interval", "0.5", "--max-age", "0", "-t", "10")
    try:
        assert proxy.held.wait(15), "the run never asked for its second sample"
        libvirtd.stop_daemon()
    finally:
        libvirtd.start_daemon()
        proxy.release()
    result = finish(proc)
    assert_clean_lines(result)
    assert result.returncode == 3 and len(result.lines) == 1, result.stdout
    print("OPERATOR SEES:", result.status_line.split(" | ")[0])
    assert result.text.startswith(f"INSTANCES UNKNOWN - reading domain stats from {proxy.uri} failed: "), \
        result.text
    assert result.elapsed < 10 + 1
    assert read_state(state_dir) == before
    starts = recorded_sample_times(state_dir)
    after = instances(state_dir, *args, "--interval", "0")
    assert_plugin_output(after, 0)
    assert "collecting baseline" not in after.stdout
    assert_guests_measured(after, libvirtd, guest_recorder, state_dir, starts)


def test_libvirtd_hung_is_answered_within_the_timeout(libvirtd, guest_recorder, state_dir):
    """libvirtd stopped with SIGSTOP: the kernel still accepts connections, nobody answers.
    check_libvirtd: CRITICAL; check_libvirt_instances: UNKNOWN; both within -t; state intact."""
    instances(state_dir, "--interval", "0", "--domain", GUESTS)
    before = read_state(state_dir)
    time.sleep(1)
    pid = libvirtd_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        procs = [spawn("check_libvirtd", "-t", "2"),
                 spawn("check_libvirt_instances", "--state-dir", state_dir, "--domain", GUESTS, "-t", "2")]
        daemon, inst = [finish(p, timeout=20) for p in procs]
    finally:
        os.kill(pid, signal.SIGCONT)
    assert_plugin_output(daemon, 2)
    assert daemon.text == "LIBVIRTD CRITICAL - qemu:///system: libvirtd did not answer within 2 s (hung daemon?)"
    assert_plugin_output(inst, 3)
    assert inst.text == ("INSTANCES UNKNOWN - qemu:///system: no answer from libvirtd within 2 s, "
                         "instances not measured")
    assert daemon.elapsed < 3 and inst.elapsed < 3
    assert read_state(state_dir) == before
    starts = recorded_sample_times(state_dir)
    wait_until_answering(libvirtd)
    # the test's own reading that waited out the hang says nothing of the next run's calls:
    # that run starts once the recorder reads promptly again (its slack, tests/oracle.py)
    guest_recorder.wait_past(time.monotonic() + 4 * SLACK_S)
    after = instances(state_dir, "--interval", "0", "--domain", GUESTS)
    assert_plugin_output(after, 0)
    assert "collecting baseline" not in after.stdout
    assert_guests_measured(after, libvirtd, guest_recorder, state_dir, starts)


class RpcProxy:
    """A Unix socket in front of libvirtd's read-only socket, for what libvirtd cannot be
    asked to do: delay every client message by `delay` seconds, or hold the `nth` client
    message of RPC procedure `proc` (hold=(proc, nth)) until the test calls release().

    libvirt RPC messages: 4-byte length (itself included), program, version, procedure, type,
    serial, status (4 bytes each), payload. Procedures used here: 16 virDomainGetInfo,
    14 virDomainGetXMLDesc, 273 virConnectListAllDomains, 344 virConnectGetAllDomainStats (a
    sample of all domains: its payload's domain list, at byte 28, is empty; the check's re-asks
    for domains NOWAIT left out send a list and are counted apart, as -344, so that "the 2nd
    sample" stays the 2nd sample whatever another client's jobs made the check re-ask).
    """

    def __init__(self, path, delay=0.0, hold=None, target=RO_SOCKET):
        self.path, self.delay, self.hold, self.target = path, delay, hold, target
        self.held = threading.Event()
        self.held_span = None       # (monotonic time held, time sent on): the check's call waited
        self._release = threading.Event()
        self._stop = threading.Event()
        self._count = collections.Counter()
        self._sockets = []
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(path)
        self._server.listen(64)
        self._server.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def uri(self):
        return f"qemu+unix:///system?socket={self.path}"

    def release(self):
        self._release.set()

    def close(self):
        self._stop.set()
        self._release.set()
        for sock in self._sockets + [self._server]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self):
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except (socket.timeout, OSError):
                continue
            upstream = socket.socket(socket.AF_UNIX)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client), daemon=True).start()

    def _requests(self, client, upstream):
        buffer = b""
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                buffer += data
                while len(buffer) >= 4 and len(buffer) >= struct.unpack(">I", buffer[:4])[0]:
                    length = max(struct.unpack(">I", buffer[:4])[0], 4)
                    message, buffer = buffer[:length], buffer[length:]
                    if len(message) >= 16:
                        proc = struct.unpack(">i", message[12:16])[0]
                        if proc == 344 and message[28:32] not in (b"", b"\0\0\0\0"):
                            proc = -344     # a re-ask for listed domains, not a sample of all
                        self._count[proc] += 1
                        if self.hold == (proc, self._count[proc]):
                            held_at = time.monotonic()
                            self.held.set()
                            self._release.wait(60)
                            self.held_span = (held_at, time.monotonic())
                    if self.delay:
                        time.sleep(self.delay)
                    upstream.sendall(message)
        except OSError:
            pass
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _replies(upstream, client):
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                client.sendall(data)
        except OSError:
            pass
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def rpc_proxy(tmp_path, libvirtd):
    made = []

    def make(**kwargs):
        proxy = RpcProxy(str(tmp_path / f"proxy-{len(made)}.sock"), **kwargs)
        made.append(proxy)
        return proxy
    yield make
    for proxy in made:
        proxy.close()


def test_slow_libvirtd(libvirtd, guest_recorder, rpc_proxy, state_dir):
    """Every request delayed 0.1 s: check_libvirtd WARNING on its response time, instances
    measured as usual. Delayed 1.5 s: both give their timeout verdict within -t 2."""
    slow = rpc_proxy(delay=0.1)
    daemon = run_check("check_libvirtd", "-U", slow.uri, "-w", "0.5", "-c", "30")
    assert_plugin_output(daemon, 1)
    print("OPERATOR SEES:", daemon.status_line.split(" | ")[0])
    assert re.match(r"LIBVIRTD WARNING - response time \d\.\d{3} s > 0.500 s - ", daemon.text), daemon.text
    assert daemon.values()["time"] > 0.5
    started = time.monotonic()
    inst = instances(state_dir, "-U", slow.uri, "--domain", GUESTS, "--interval", "0.5")
    assert_plugin_output(inst, 0)
    assert "2 instances within limits (2 running)" in inst.text
    assert_guests_measured(inst, libvirtd, guest_recorder, state_dir, (started, 0.5))

    crawling = rpc_proxy(delay=1.5)
    procs = [spawn("check_libvirtd", "-U", crawling.uri, "-t", "2"),
             spawn("check_libvirt_instances", "-U", crawling.uri, "--state-dir", state_dir, "-t", "2")]
    daemon, inst = [finish(p) for p in procs]
    assert_plugin_output(daemon, 2)
    assert daemon.text == f"LIBVIRTD CRITICAL - {crawling.uri}: libvirtd did not answer within 2 s (hung daemon?)"
    assert_plugin_output(inst, 3)
    assert inst.text == f"INSTANCES UNKNOWN - {crawling.uri}: no answer from libvirtd within 2 s, instances not measured"
    assert daemon.elapsed < 3 and inst.elapsed < 3


VICTIM_UUID = "5eed0000-0000-4000-8000-00000000fa01"
VICTIM_XML = f"""<domain type='qemu'>
  <name>nlc-fault-victim</name>
  <uuid>{VICTIM_UUID}</uuid>
  <metadata>
    <nova:instance xmlns:nova="{NOVA_NS_1_1}">
      <nova:name>victim | evil&#10;INSTANCES OK - forged</nova:name>
      <nova:owner><nova:user uuid="u9">mallory</nova:user><nova:project uuid="p9">acme&#10;|x=1</nova:project></nova:owner>
    </nova:instance>
  </metadata>
  <memory unit='MiB'>16</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator><memballoon model='none'/></devices>
</domain>"""
VICTIM_TITLE = "victim \u00a6 evil?INSTANCES OK - forged (acme?\u00a6x=1)"
WITH_VICTIM = "^(instance-0000000[12]|nlc-fault-victim)$"


@pytest.fixture
def victim(libvirtd):
    """A transient QEMU domain (paused, no OS, 16 MiB) with a hostile Nova name, to be
    destroyed (it vanishes) or re-created (new id) in the middle of a run. Never left behind."""
    import libvirt
    conn = libvirt.open(libvirtd.uri)

    class Victim:
        def create(self):
            return conn.createXML(VICTIM_XML, libvirt.VIR_DOMAIN_START_PAUSED).ID()

        def destroy(self):
            with contextlib.suppress(libvirt.libvirtError):
                conn.lookupByUUIDString(VICTIM_UUID).destroy()

    made = Victim()
    made.destroy()
    made.create()
    try:
        yield made
    finally:
        made.destroy()
        conn.close()


HELD_INTERVAL = 0.3


def run_held(rpc_proxy, recorder, state_dir, hold, action, *args):
    """A run through a proxy that holds the `hold` call; `action()` happens while it is held.
    The check stamps that call's counters at its middle, but libvirtd reads them only after the
    hold: the recorder is told, so that its bracket around the stamp spans the hold."""
    proxy = rpc_proxy(hold=hold)
    proc = spawn("check_libvirt_instances", "-U", proxy.uri, "--state-dir", state_dir,
                 "--domain", WITH_VICTIM, "--interval", str(HELD_INTERVAL), "-t", "20", *args)
    try:
        assert proxy.held.wait(15), "the run never made the call to hold"
        action()
    finally:
        proxy.release()
    result = finish(proc)
    if proxy.held_span:
        recorder.held_calls.append(proxy.held_span)
    return result, proxy


@pytest.mark.parametrize("mode, hold, where", [
    ("per-domain", (16, 1), "between listing (virConnectListAllDomains) and stats (virDomainGetInfo)"),
    ("bulk", (14, 1), "between stats (virConnectGetAllDomainStats) and naming (virDomainGetXMLDesc)"),
])
def test_guest_destroyed_between_listing_and_stats(libvirtd, guest_recorder, victim, rpc_proxy, state_dir,
                                                  mode, hold, where):
    """A guest that vanishes at that moment is simply not on the host: OK, the others measured."""
    started = time.monotonic()
    result, _ = run_held(rpc_proxy, guest_recorder, state_dir, hold, victim.destroy, "--stats-mode", mode)
    assert_clean_lines(result)
    assert result.returncode == 0, (where, result.stdout)
    assert result.text.startswith("INSTANCES OK - 2 instances within limits (2 running)"), result.text
    assert "victim" not in result.stdout
    assert_guests_measured(result, libvirtd, guest_recorder, state_dir, (started, HELD_INTERVAL))


def test_guest_destroyed_between_the_two_samples(libvirtd, guest_recorder, victim, rpc_proxy, state_dir):
    """Gone between the two samples of one run: named as vanished, the others measured: OK."""
    started = time.monotonic()
    result, _ = run_held(rpc_proxy, guest_recorder, state_dir, (344, 2), victim.destroy, "--stats-mode", "bulk")
    assert_clean_lines(result)
    assert result.returncode == 0, result.stdout
    print("OPERATOR SEES:", result.status_line.split(" | ")[0])
    assert f"1 not measured: {VICTIM_TITLE} vanished during the check" in result.text, result.text
    assert_guests_measured(result, libvirtd, guest_recorder, state_dir, (started, HELD_INTERVAL))


def test_guest_restarted_between_listing_and_stats(libvirtd, guest_recorder, victim, rpc_proxy, state_dir):
    """Re-created (same uuid, new id) after listing: no rate for it this run (never a
    negative one or a spike), the others measured; the next run has its rates."""
    def restart():
        victim.destroy()
        victim.create()
    started = time.monotonic()
    result, proxy = run_held(rpc_proxy, guest_recorder, state_dir, (16, 1), restart, "--stats-mode", "per-domain")
    assert_clean_lines(result)
    assert result.returncode == 0, result.stdout
    line = next(line for line in result.lines if VICTIM_TITLE in line)
    assert "no rates (restarted or counters reset during the check)" in line, line
    values = result.values()
    assert all(v >= 0 for v in values.values()), values
    assert all(v <= 100 for label, v in values.items() if label.endswith(".cpu")), values
    assert_guests_measured(result, libvirtd, guest_recorder, state_dir, (started, HELD_INTERVAL))
    time.sleep(0.5)
    again = instances(state_dir, "-U", proxy.uri, "--domain", WITH_VICTIM, "--interval", "0",
                      "--stats-mode", "per-domain")
    assert_clean_lines(again)
    victim_line = next(line for line in again.lines if VICTIM_TITLE in line)
    assert "CPU" in victim_line and "collecting baseline" not in victim_line, again.stdout


BUSY_UUID = "5eed0000-0000-4000-8000-00000000fa02"
BUSY_XML = VICTIM_XML.replace("nlc-fault-victim", "nlc-nowait-held").replace(VICTIM_UUID, BUSY_UUID) \
    .replace("<memballoon model='none'/>", "<memballoon model='virtio'/>") \
    .replace("victim | evil&#10;INSTANCES OK - forged", "held")
WITH_BUSY = "^(instance-0000000[12]|nlc-nowait-held)$"
BUSY_HOLD_MAX = 8            # s: the job is given back by then whatever happens to the test


@pytest.fixture
def job_held(libvirtd):
    """A transient paused QEMU domain of this test's own (nlc-nowait-held) whose job another
    client holds: its QEMU is stopped (SIGSTOP) and a thread of the test asks its memory stats,
    which takes the job and waits for the monitor. Only this domain waits; a detached process
    resumes QEMU after BUSY_HOLD_MAX s even if the test dies, and the fixture resumes it at once
    when done, then removes the domain. `release()` gives the job back earlier."""
    import libvirt
    conn = libvirt.open(libvirtd.uri)
    with contextlib.suppress(libvirt.libvirtError):
        conn.lookupByUUIDString(BUSY_UUID).destroy()
    dom = conn.createXML(BUSY_XML, libvirt.VIR_DOMAIN_START_PAUSED)
    with open(f"/run/libvirt/qemu/{dom.name()}.pid") as handle:
        pid = int(handle.read())
    resumer = subprocess.Popen(["sh", "-c", f"sleep {BUSY_HOLD_MAX}; kill -CONT {pid}"], start_new_session=True)
    os.kill(pid, signal.SIGSTOP)
    holder_conn = libvirt.openReadOnly(libvirtd.uri)

    def hold():
        with contextlib.suppress(libvirt.libvirtError):
            holder_conn.lookupByUUIDString(BUSY_UUID).memoryStats()
    holder = threading.Thread(target=hold, daemon=True)

    def release():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        if holder.is_alive():
            holder.join(10)

    def held():              # asks libvirt's own view of the monitor: takes no job
        return dom.controlInfo()[0] != libvirt.VIR_DOMAIN_CONTROL_OK

    try:
        holder.start()
        release.held = held
        yield release
    finally:
        release()
        resumer.kill()
        resumer.wait()
        with contextlib.suppress(libvirt.libvirtError):
            conn.lookupByUUIDString(BUSY_UUID).destroy()
        holder_conn.close()
        conn.close()


def test_a_domain_whose_job_stays_held_is_said_unmeasured(libvirtd, job_held, state_dir):
    """A domain whose job another client holds for long (a migration, a hung QEMU monitor, a
    dump): NOWAIT leaves its block and balloon fields out run after run; the check re-asks
    within its small budget, not at all once libvirt says the job is a long one (measured in
    docs/faults-libvirt.md, not timed here). Its line says its counters are unavailable because
    its job is held (no zero rates, no memory label); the other instances keep every label.
    Once the job is given back, the next run has it complete."""
    deadline = time.monotonic() + 3
    while not job_held.held():                 # the holder thread has the job (QEMU stopped)
        assert time.monotonic() < deadline, "the job was never taken"
        time.sleep(0.05)
    runs = [instances(state_dir, "--domain", WITH_BUSY, "--interval", "0.3", "-v") for _ in range(3)]
    assert job_held.held(), "the job was given back before the runs ended"
    for result in runs:
        assert_plugin_output(result, 0)
        line = next(text for text in result.stdout.splitlines() if "nlc-nowait-held" in text)
        assert instances_check.JOB_HELD in line, line
        perfdata = result.stdout.splitlines()[0].partition(" | ")[2]
        assert not re.search(r"held_5eed0000\.(memory|disk_\w+|mem_\w+)=", perfdata), perfdata
        for guest in libvirtd.guests:
            base = label_base(guest["nova_name"], guest["uuid"])
            for metric in ("memory", "disk_read_bytes", "disk_write_ops"):
                assert f"{base}.{metric}=" in perfdata, (base, metric, perfdata)
    job_held()
    again = instances(state_dir, "--domain", WITH_BUSY, "-v")
    assert_plugin_output(again, 0)
    assert instances_check.JOB_HELD not in again.stdout, again.stdout


def test_50_concurrent_runs_on_one_state_file(libvirtd, guest_recorder, state_dir):
    """50 real processes at once, one state file: all answer OK within -t, the file is valid
    JSON with both guests, no temporary file is left, the next run has its rates."""
    instances(state_dir, "--interval", "0", "--domain", GUESTS)
    time.sleep(1)
    procs = [spawn("check_libvirt_instances", "--state-dir", state_dir, "--domain", GUESTS, "-t", "20")
             for _ in range(50)]
    results = [finish(p, timeout=60) for p in procs]
    for result in results:
        assert_plugin_output(result, 0)
        assert "not saved" not in result.stdout and "afresh" not in result.stdout, result.stdout
        assert result.elapsed < 20
    assert sorted(os.listdir(state_dir)) == sorted([os.path.basename(state_path(state_dir)),
                                                    os.path.basename(state_path(state_dir)) + ".lock"])
    document = json.loads(read_state(state_dir))
    assert {g["uuid"] for g in libvirtd.guests} <= set(document["samples"])
    assert os.stat(state_path(state_dir)).st_mode & 0o777 == 0o600
    starts = recorded_sample_times(state_dir)
    after = instances(state_dir, "--interval", "0", "--domain", GUESTS)
    assert_plugin_output(after, 0)
    assert "collecting baseline" not in after.stdout
    assert_guests_measured(after, libvirtd, guest_recorder, state_dir, starts)
    print(f"50 concurrent runs: slowest {max(r.elapsed for r in results):.1f} s")


# ---------------------------------------------------------------- the clock

WALLCLOCK_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
/* the wall clock (CLOCK_REALTIME) shifted by $NLC_WALLCLOCK_SHIFT seconds, nothing else */
static long shift(void) { const char *s = getenv("NLC_WALLCLOCK_SHIFT"); return s ? atol(s) : 0; }
int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) ts->tv_sec += shift();
    return rc;
}
int gettimeofday(struct timeval *tv, void *tz) {
    static int (*real)(struct timeval *, void *);
    if (!real) real = dlsym(RTLD_NEXT, "gettimeofday");
    int rc = real(tv, tz);
    if (rc == 0 && tv) tv->tv_sec += shift();
    return rc;
}
time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
"""


@pytest.fixture(scope="session")
def wallclock_shim(tmp_path_factory):
    """An LD_PRELOAD library that steps only the wall clock (CLOCK_REALTIME), as NTP or an
    operator's `date -s` does. (libfaketime cannot: with FAKETIME_DONT_FAKE_MONOTONIC=1 its
    clock_nanosleep breaks every Python sleep with EINVAL, version 0.9.10.)"""
    if not shutil.which("gcc"):
        service_unavailable("gcc is needed to build the wall-clock shim")
    directory = tmp_path_factory.mktemp("wallclock")
    source, library = directory / "shim.c", directory / "wallclock.so"
    source.write_text(WALLCLOCK_SHIM)
    proc = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return str(library)


def test_wall_clock_stepping_back_and_forth_changes_nothing(libvirtd, guest_recorder, wallclock_shim, state_dir):
    """The second run's wall clock is a day behind (CLOCK_MONOTONIC untouched, as when NTP or
    an operator steps the clock), the third's is right again: each has its rates from the
    previous run's sample, plausible, never negative (the checks time with time.monotonic()
    and tell boots apart by /proc's boot_id)."""
    back = {"LD_PRELOAD": wallclock_shim, "NLC_WALLCLOCK_SHIFT": "-86400"}
    probe = subprocess.run([sys.executable, "-c", "import time; print(time.time(), time.monotonic())"],
                           capture_output=True, text=True, env=dict(os.environ, **back))
    wall, monotonic = map(float, probe.stdout.split())
    assert wall < time.time() - 86000 and abs(monotonic - time.monotonic()) < 5, probe.stdout
    instances(state_dir, "--interval", "0", "--domain", GUESTS)
    for env in (back, {}):
        time.sleep(1.5)       # the measurement window
        starts = recorded_sample_times(state_dir)
        result = instances(state_dir, "--interval", "0", "--domain", GUESTS, env=env)
        assert_plugin_output(result, 0)
        assert "collecting baseline" not in result.stdout, result.stdout
        assert_guests_measured(result, libvirtd, guest_recorder, state_dir, starts)


def apt_tool(package, find):
    """`find()` for a tool of a Debian package, installed (as root, with apt) if missing."""
    if not find() and is_root():
        apt_install(package)
    if not find():
        service_unavailable(f"Debian package {package} is not installed and cannot be")
    return find()


@pytest.fixture(scope="session")
def libfaketime():
    """libfaketime's preload library (Debian package faketime)."""
    return apt_tool("faketime", lambda: (glob.glob("/usr/lib/*/faketime/libfaketime.so.1") or [None])[0])


@pytest.fixture(scope="session")
def strace():
    return apt_tool("strace", lambda: shutil.which("strace"))


def test_faked_clocks_in_one_run_do_not_spoil_later_runs(libvirtd, guest_recorder, libfaketime, state_dir):
    """One run under libfaketime (FAKETIME=-1d, which also moves its CLOCK_MONOTONIC, here
    decades ahead): its previous sample looks ancient, so it samples twice itself, no wrong
    rate. Product bug: its sample, stamped in the 'future', is never replaced (_save keeps the
    newer-looking one), so every later normal run has no baseline ('collecting baseline' with
    --interval 0, an extra --interval of sleep otherwise). Expected: healed after one run."""
    faked = {"LD_PRELOAD": libfaketime, "FAKETIME": "-1d"}
    instances(state_dir, "--interval", "0", "--domain", GUESTS)
    time.sleep(1)
    result = instances(state_dir, "--interval", "0.5", "--domain", GUESTS, env=faked)
    assert_plugin_output(result, 0)
    # its samples are stamped with the faked CLOCK_MONOTONIC: no window to measure over, so
    # only that every metric is there and plausible (the next runs are measured exactly)
    for base in (label_base(g["nova_name"], g["uuid"]) for g in libvirtd.guests):
        printed = {lab.rpartition(".")[2]: v for lab, v in result.values().items() if lab.startswith(base + ".")}
        assert set(printed) - set(MEASURED_ELSEWHERE) == set(ALL_METRICS), (base, result.stdout)
        assert 0 < printed["cpu"] <= 100 and all(v >= 0 for v in printed.values()), (base, printed)
    normal = instances(state_dir, "--interval", "0", "--domain", GUESTS)
    assert_plugin_output(normal, 0)
    assert all(v >= 0 for v in normal.values().values())
    time.sleep(1)         # the measurement window
    starts = recorded_sample_times(state_dir)
    healed = instances(state_dir, "--interval", "0", "--domain", GUESTS)
    assert_plugin_output(healed, 0)
    assert "collecting baseline" not in healed.stdout, healed.stdout
    assert_guests_measured(healed, libvirtd, guest_recorder, state_dir, starts)


def test_a_run_without_rates_says_collecting_baseline(libvirtd, state_dir):
    """After any fault that costs the baseline (first run, state lost, restarted instance), a
    run with --interval 0 must say 'collecting baseline'. Product bug: with the balloon
    driver's memory gauge the instance has a value, so its line shows 'memory 12%' and neither
    it nor the status line says that the rates are missing."""
    result = instances(state_dir, "--interval", "0", "--domain", GUESTS)
    assert_plugin_output(result, 0)
    assert "collecting baseline" in result.text, result.stdout
    assert all("collecting baseline" in line for line in result.lines[1:]), result.stdout


def test_sample_from_the_future_heals_after_one_run(state_dir):
    """Product bug: a stored sample whose monotonic time lies ahead of now (the monotonic
    clock faked or reset within one boot id, a state file restored from a snapshot) is never
    replaced: _save keeps 'their' newer sample, so every later run has no baseline.
    Expected: that run answers 'collecting baseline', the next one has rates again."""
    instances(state_dir, "-U", NODE_URI, "--interval", "0")
    path = state_path(state_dir)
    document = json.load(open(path))
    for sample in document["samples"].values():
        sample["t"] += 1e6
    json.dump(document, open(path, "w"))
    first = instances(state_dir, "-U", NODE_URI, "--interval", "0")
    assert_plugin_output(first, 0)
    assert all(v >= 0 for v in first.values().values())
    time.sleep(0.3)
    second = instances(state_dir, "-U", NODE_URI, "--interval", "0")
    assert_plugin_output(second, 0)
    assert "collecting baseline" not in second.stdout, second.stdout


def test_another_boot_means_a_fresh_baseline(state_dir):
    """Samples of another boot (monotonic times not comparable) are not used: the run samples
    twice itself and rewrites the state for this boot."""
    instances(state_dir, "-U", NODE_URI, "--interval", "0")
    path = state_path(state_dir)
    document = json.load(open(path))
    document["boot"] = "another-boot"
    for sample in document["samples"].values():        # would be a spike if used
        sample["c"] = {key: 0 for key in sample["c"]}
    json.dump(document, open(path, "w"))
    result = instances(state_dir, "-U", NODE_URI, "--interval", "0.3")
    assert_plugin_output(result, 0)
    assert all(v < 30_000 for label, v in result.values().items() if label.endswith("disk_write_bytes")
               and not label.startswith("total.")), result.stdout
    assert json.load(open(path))["boot"] == boot_id()


# ---------------------------------------------------------------- the state directory

@pytest.fixture
def small_tmpfs(tmp_path):
    """A private tmpfs (mode 0700) of the given size, unmounted afterwards whatever happens."""
    if not is_root():
        service_unavailable("mounting a tmpfs needs root")
    mounted = []

    class Mount:
        def __init__(self):
            self.path = str(tmp_path / "mnt")
            os.mkdir(self.path)

        def mount(self, size):
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "nlc-faults",
                                   self.path], capture_output=True, text=True)
            if proc.returncode != 0:
                service_unavailable(f"cannot mount a tmpfs: {proc.stderr.strip()}")
            mounted.append(self.path)

        def remount(self, mode):
            subprocess.run(["mount", "-o", f"remount,{mode}", self.path], check=True)

    yield Mount()
    for path in mounted:
        if subprocess.run(["umount", path], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", path], capture_output=True)


def fill(directory):
    """Fill the file system of `directory` to the last byte."""
    fd = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (b"x" * 4096, b"x"):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk)
    finally:
        os.close(fd)


def test_state_directory_full(small_tmpfs):
    """No space left: the run measures against the previous sample and says 'state not saved:
    No space left on device' (OK); the old state file is intact, no temporary file is left;
    with space again the next run saves as usual."""
    small_tmpfs.mount("64k")
    state = os.path.join(small_tmpfs.path, "state")
    instances(state, "-U", NODE_URI, "--interval", "0")
    before = read_state(state)
    fill(small_tmpfs.path)
    time.sleep(0.2)
    result = instances(state, "-U", NODE_URI)
    assert_plugin_output(result, 0)
    assert result.text.startswith("INSTANCES OK - 9 instances within limits")
    print("OPERATOR SEES:", result.status_line.split(" | ")[0])
    assert "(state not saved: No space left on device)" in result.text, result.text
    assert "collecting baseline" not in result.stdout and result.values()["total.disk_write_bytes"] > 0
    assert read_state(state) == before
    assert not [f for f in os.listdir(state) if f.startswith(".tmp-")]
    os.unlink(os.path.join(small_tmpfs.path, "filler"))
    again = instances(state, "-U", NODE_URI, "--interval", "0")
    assert_plugin_output(again, 0)
    assert "not saved" not in again.stdout and "collecting baseline" not in again.stdout
    assert read_state(state) != before


def test_state_directory_read_only(small_tmpfs):
    """Read-only file system: measured against the previous sample, 'state not saved: ...:
    Read-only file system' (OK), state intact; a state directory that cannot even be created
    on it: measured within the run, with the reason; writable again: saved as usual."""
    small_tmpfs.mount("1m")
    state = os.path.join(small_tmpfs.path, "state")
    instances(state, "-U", NODE_URI, "--interval", "0")
    before = read_state(state)
    small_tmpfs.remount("ro")
    try:
        result = instances(state, "-U", NODE_URI)
        assert_plugin_output(result, 0)
        assert "within limits" in result.text and "collecting baseline" not in result.stdout
        print("OPERATOR SEES:", result.status_line.split(" | ")[0])
        assert re.search(r"\(state not saved: \S+\.lock: Read-only file system\)", result.text), result.text
        assert read_state(state) == before
        missing = instances(os.path.join(small_tmpfs.path, "missing"), "-U", NODE_URI, "--interval", "0.2")
        assert_plugin_output(missing, 0)
        assert "within limits" in missing.text and "collecting baseline" not in missing.stdout
        assert "cannot create state directory" in missing.text and "Read-only file system" in missing.text
    finally:
        small_tmpfs.remount("rw")
    again = instances(state, "-U", NODE_URI, "--interval", "0")
    assert_plugin_output(again, 0)
    assert "not saved" not in again.stdout and read_state(state) != before


def test_state_directory_missing(tmp_path, state_dir):
    """Deleted between two runs: re-created 0700, the run samples twice itself (OK, no
    note); its parent missing: measured all the same, with the reason."""
    instances(state_dir, "-U", NODE_URI, "--interval", "0")
    shutil.rmtree(state_dir)
    result = instances(state_dir, "-U", NODE_URI, "--interval", "0.2")
    assert_plugin_output(result, 0)
    assert "collecting baseline" not in result.stdout and "state" not in result.text
    assert os.stat(state_dir).st_mode & 0o777 == 0o700
    orphan = instances(str(tmp_path / "no" / "such" / "dir"), "-U", NODE_URI, "--interval", "0.2")
    assert_plugin_output(orphan, 0)
    assert "within limits" in orphan.text
    assert "cannot create state directory" in orphan.text and "No such file or directory" in orphan.text


def test_a_state_problem_is_told_once(tmp_path):
    """Product bug (cosmetic): the reason is noted when loading and again when saving, so
    the operator reads it twice in the status line."""
    result = instances(str(tmp_path / "no" / "such" / "dir"), "-U", NODE_URI, "--interval", "0.1")
    assert_plugin_output(result, 0)
    assert result.text.count("cannot create state directory") == 1, result.text


CORRUPTIONS = {
    "sample time a string": lambda d, u: d["samples"][u].__setitem__("t", "x"),
    "counters a list": lambda d, u: d["samples"][u].__setitem__("c", [1]),
    "counter a string": lambda d, u: d["samples"][u]["c"].__setitem__("cpu", "9"),
    "samples a list": lambda d, u: d.__setitem__("samples", [1]),
    "names a list": lambda d, u: d.__setitem__("names", [1]),
    "name entry without fields": lambda d, u: d["names"].__setitem__(u, {"id": d["names"][u]["id"]}),
    "name time a string": lambda d, u: d["names"][u].__setitem__("t", "x"),
    "nova fields unknown": lambda d, u: d["names"][u].__setitem__("nova", {"bogus": 1}),
    "disks not strings": lambda d, u: d["names"][u].__setitem__("disks", [1, None]),
}


def test_state_file_with_wrong_types_means_a_fresh_start(tmp_path):
    """Product bug: valid JSON with the wrong types (a damaged or hand-edited state file) ends
    every later run 'UNKNOWN - internal error: TypeError/AttributeError' until someone deletes
    it (6 of these 9 kinds). Expected, as for unparsable files: a fresh start, the file
    rewritten whole, the next run normal."""
    failures = []
    for corruption, damage in sorted(CORRUPTIONS.items()):
        state_dir = str(tmp_path / corruption.replace(" ", "-"))
        instances(state_dir, "-U", NODE_URI, "--interval", "0")
        path = state_path(state_dir)
        document = json.load(open(path))
        damage(document, sorted(document["samples"])[0])
        json.dump(document, open(path, "w"))
        result = instances(state_dir, "-U", NODE_URI, "--interval", "0.1")
        again = instances(state_dir, "-U", NODE_URI, "--interval", "0")
        if result.returncode != 0 or "within limits" not in result.text or again.returncode != 0 \
                or "collecting baseline" in again.stdout:
            failures.append(f"{corruption}: {result.status_line[:150]} / then: {again.status_line[:80]}")
    assert not failures, "\n".join(failures)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples=JSON, names=JSON, entry=JSON, name_entry=JSON)
def test_any_state_document_property(tmp_path, samples, names, entry, name_entry):
    """Property (hypothesis), in-process on test:///default: whatever JSON the state file of
    this boot holds, the check gives an answer (never an exception). Product bug: see above."""
    directory = tmp_path / "fuzz"
    directory.mkdir(mode=0o700, exist_ok=True)
    uuid = "6695eb01-f6a4-8304-79aa-97f2502e193f"               # the test driver's one domain
    args = instances_check.build_parser().parse_args(
        ["-U", "test:///default", "--state-dir", str(directory), "--interval", "0"])
    document = {"version": 1, "boot": boot_id(), "samples": samples, "names": names}
    if isinstance(samples, dict):
        samples[uuid] = entry
    if isinstance(names, dict):
        names[uuid] = name_entry
    from nova_libvirt_checks.state import file_for
    with open(file_for("instances", "test:///default", str(directory)), "w") as handle:
        json.dump(document, handle)
    report = plugin.report_of(instances_check.NAME, instances_check.make_check(args), args)
    assert report.state == plugin.OK, report.summary


def test_state_file_that_is_a_fifo_is_refused_at_once(state_dir):
    """Product bug: the state file is opened before it is checked to be a regular file; a FIFO
    there blocks the open until the deadline, which then blames libvirtd ('no answer from
    libvirtd within 2 s'). Expected: refused at once with a note (open with O_NONBLOCK)."""
    instances(state_dir, "-U", NODE_URI, "--interval", "0")
    path = state_path(state_dir)
    os.unlink(path)
    os.mkfifo(path, 0o600)
    result = instances(state_dir, "-U", NODE_URI, "--interval", "0.2", "-t", "2")
    assert_plugin_output(result)
    assert result.returncode == 0 and "within limits" in result.text, result.text
    assert result.elapsed < 1.5


# =====================================================================================
# Security
# =====================================================================================

def test_state_is_private_whatever_the_umask(state_dir):
    """umask 000: the directory is still created 0700, the state and lock files 0600."""
    argv = [sys.executable, CHECK_INSTANCES, "-U", NODE_URI, "--state-dir", state_dir, "--interval", "0"]
    proc = subprocess.run(argv, capture_output=True, text=True, preexec_fn=lambda: os.umask(0))
    assert proc.returncode == 0, proc
    assert os.stat(state_dir).st_mode & 0o777 == 0o700
    files = os.listdir(state_dir)
    assert len(files) == 2
    for name in files:
        assert os.stat(os.path.join(state_dir, name)).st_mode & 0o777 == 0o600, name


def test_loose_state_directory_of_ours_is_made_private(state_dir):
    os.mkdir(state_dir)
    os.chmod(state_dir, 0o777)
    result = instances(state_dir, "-U", NODE_URI, "--interval", "0")
    assert_plugin_output(result, 0)
    assert os.stat(state_dir).st_mode & 0o777 == 0o700


def test_state_directory_symlink_is_refused_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "state"
    link.symlink_to(target)
    result = instances(str(link), "-U", NODE_URI, "--interval", "0.2")
    assert_plugin_output(result, 0)
    assert f"refusing state directory {link}: it is a symlink" in result.text
    assert "within limits" in result.text and "collecting baseline" not in result.stdout
    assert os.listdir(target) == []


@pytest.mark.parametrize("which", ["state file", "lock file"])
def test_state_file_symlinks_are_not_followed(tmp_path, state_dir, which):
    """A symlink in place of the state file or its lock (pointing at a file of someone to
    harm): refused with a note, the target untouched, the check measures all the same."""
    instances(state_dir, "-U", NODE_URI, "--interval", "0")
    victim_file = tmp_path / "victim"
    victim_file.write_text("precious\n")
    path = state_path(state_dir) + (".lock" if which == "lock file" else "")
    os.unlink(path)
    os.symlink(victim_file, path)
    result = instances(state_dir, "-U", NODE_URI, "--interval", "0.2")
    assert_plugin_output(result, 0)
    assert "within limits" in result.text
    if which == "state file":
        assert f"refusing state file {path}: it is a symlink" in result.text
    else:
        assert f"state not saved: {path}: Too many levels of symbolic links" in result.text, result.text
    assert victim_file.read_text() == "precious\n"
    assert os.stat(victim_file).st_mode & 0o777 == 0o644


@pytest.fixture
def foreign_dirs():
    """Under NLC_TEST_ROOT (traversable by nagios): a directory and a symlink of root's."""
    base = os.path.join(TEST_ROOT, "faults-foreign")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(os.path.join(base, "root-dir"))
    os.chmod(base, 0o755)
    os.chmod(os.path.join(base, "root-dir"), 0o777)      # even writable for nagios: not its own
    os.symlink(os.path.join(base, "root-dir"), os.path.join(base, "root-link"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("entry, reason", [("root-dir", "owned by uid 0, not by us"),
                                           ("root-link", "it is a symlink")])
def test_state_directory_of_another_user_is_refused(libvirtd, installed_plugins, foreign_dirs, entry, reason):
    """As the nagios user, NOVA_LIBVIRT_CHECKS_STATE_DIR naming root's directory (or root's
    symlink), as another user could plant it in /var/tmp: refused, nothing written there; the
    instances are measured within the run."""
    path = os.path.join(foreign_dirs, entry)
    proc = run_as_nagios([f"{installed_plugins}/check_libvirt_instances", "--domain", GUESTS, "--interval", "0.3"],
                         env={"NOVA_LIBVIRT_CHECKS_STATE_DIR": path})
    assert proc.returncode == 0 and proc.stderr == "", proc
    first = proc.stdout.splitlines()[0]
    assert first.startswith("INSTANCES OK - 2 instances within limits"), first
    assert f"refusing state directory {path}: {reason}" in first, first
    assert os.listdir(os.path.join(foreign_dirs, "root-dir")) == []


def _strace(strace, argv, tmp_path):
    log = tmp_path / "strace.log"
    proc = subprocess.run([strace, "-f", "-qq", "-e", "trace=execve,connect", "-o", str(log), *argv],
                          capture_output=True, text=True, timeout=60)
    return proc, log.read_text()


@pytest.mark.parametrize("argv", [
    [CHECK_LIBVIRTD],
    [CHECK_INSTANCES, "--interval", "0.2", "--domain", GUESTS],
    [CHECK_LIBVIRTD, "-U", "qemu+unix:///system?socket=/nonexistent/sock"],
], ids=["check_libvirtd", "check_libvirt_instances", "check_libvirtd-unreachable"])
def test_read_only_socket_by_default_and_no_program_run(libvirtd, strace, tmp_path, argv):
    """Traced as root (who could use the read-write socket): the checks connect to the
    read-only socket only, and execute no program (no shell, no helper) but themselves."""
    env_argv = [sys.executable, *argv]
    if argv[0] == CHECK_INSTANCES:
        env_argv += ["--state-dir", str(tmp_path / "state")]
    proc, log = _strace(strace, env_argv, tmp_path)
    assert proc.returncode in (0, 2), proc
    execs = re.findall(r'execve\("([^"]+)"', log)
    assert execs == [sys.executable], execs
    sockets = re.findall(r'connect\(\d+, \{sa_family=AF_UNIX, sun_path="([^"]+)"', log)
    libvirt_sockets = [s for s in sockets if "libvirt" in s or "nonexistent" in s]
    assert libvirt_sockets, log
    assert all(s.endswith("libvirt-sock-ro") or s.startswith("/nonexistent") for s in libvirt_sockets), sockets
    assert not re.search(r"connect\(\d+, \{sa_family=AF_INET", log), "a network connection was made"


def test_no_shell_anywhere_in_the_code():
    """Nothing in the product runs a program through a shell (or at all, but the venv
    re-exec of launch.py, argv list only)."""
    offenders = []
    for path in sorted(glob.glob(os.path.join(ROOT, "lib", "nova_libvirt_checks", "*.py"))
                       + glob.glob(os.path.join(ROOT, "checks", "*"))):
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput") \
                        or any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                               for k in node.keywords):
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}: {ast.unparse(node)[:80]}")
                if name.startswith(("os.exec", "os.spawn", "subprocess.", "pty.")) and \
                        not path.endswith("launch.py"):
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert not offenders, offenders


def test_nrpe_files_pass_no_arguments_to_the_libvirt_checks():
    """The NRPE command definitions shipped in icinga/ give the libvirt checks fixed arguments:
    no $ARGn$ (which would need dont_blame_nrpe=1, i.e. arguments from the network), and plain
    words only, since NRPE hands the line to /bin/sh: no shell metacharacter to interpret."""
    files = [p for p in glob.glob(os.path.join(ROOT, "icinga", "**", "*"), recursive=True)
             if os.path.isfile(p) and "nrpe" in os.path.relpath(p, ROOT).lower()]
    commands = [(p, line) for p in files for line in open(p, errors="replace").read().splitlines()
                if re.match(r"\s*command\[", line) and "check_libvirt" in line]
    assert commands, "icinga/ has no NRPE command definition for the libvirt checks"
    for path, line in commands:
        command = line.split("]=", 1)[1]
        assert "$ARG" not in command.upper(), (path, line)
        assert not re.search(r"[;&|$`<>(){}\\\"'*?~!#]", command), (path, line)
        assert command.startswith("/"), (path, line)          # an absolute path, not $PATH
    for path in files:
        assert not re.search(r"^\s*dont_blame_nrpe\s*=\s*1", open(path, errors="replace").read(), re.M), path
