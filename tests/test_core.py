"""Unit tests of the shared core: ranges and units, labels, output, the deadline, errors."""
import json
import os
import re
import subprocess
import sys
import threading

import pytest
from hypothesis import given, strategies as st

from nova_libvirt_checks import perfdata, plugin, sizes, thresholds
from nova_libvirt_checks.state import StateFile, file_for, private_dir
from tests.checkrun import PERFDATA_TOKEN, ROOT


# ---------------------------------------------------------------- ranges and units

@pytest.mark.parametrize("text, inside, outside", [
    ("10", [0, 10], [-1, 10.5]),
    ("10:", [10, 1e12], [9.99]),
    ("~:10", [-1e9, 10], [10.01]),
    ("10:20", [10, 15, 20], [9, 21]),
    ("@10:20", [9, 21], [10, 15, 20]),
    ("50M", [50_000_000], [50_000_001]),
    ("1Ki:2Mi", [1024, 2 * 2**20], [1023, 2 * 2**20 + 1]),
    ("1.5G", [1.5e9], [1.5e9 + 1]),
    ("100MB/s", [1e8], [1e8 + 1]),
])
def test_ranges_with_units(text, inside, outside):
    rng = thresholds.parse_range(text)
    for value in inside:
        assert rng.match(value), (text, value)
    for value in outside:
        assert not rng.match(value), (text, value)


def test_time_units():
    assert thresholds.parse_range("500ms", thresholds.TIME_UNITS).end == 0.5
    assert thresholds.parse_range("2m", thresholds.TIME_UNITS).end == 120


@pytest.mark.parametrize("text", ["", "x", "10:5", "1:2:3", "@", "1e5", "--1", "10 20", "nan",
                                  "inf", "5X", "10%%", "M"])
def test_invalid_ranges_are_rejected(text):
    with pytest.raises(ValueError):
        thresholds.parse_range(text)


@given(st.text(max_size=20))
def test_any_text_parses_or_raises_valueerror(text):
    try:
        rng = thresholds.parse_range(text)
    except ValueError:
        return
    assert rng.start <= rng.end
    # what parsed prints back as a valid perfdata threshold
    assert re.fullmatch(r"@?(?:(?:~|-?\d+(?:\.\d+)?)?:)?(?:-?\d+(?:\.\d+)?)?", thresholds.format_range(rng))


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15))
def test_numbers_never_use_exponents(value):
    text = thresholds.format_number(value)
    assert re.fullmatch(r"-?\d+(\.\d+)?", text), text
    # 6 decimals, or 6 significant digits below 0.1: a non-zero number never prints as 0
    assert abs(float(text) - value) <= max(5e-7, abs(value) * 5e-6), (value, text)
    assert (float(text) == 0) == (value == 0), (value, text)


@pytest.mark.parametrize("value, text", [
    (1e-7, "0.0000001"), (-4.9e-7, "-0.00000049"), (1.234567891e-7, "0.000000123457"),
    (0.0123456789, "0.0123457"), (0.123456789, "0.123457"), (123.4567891, "123.456789"),
    (5e-7, "0.0000005"), (2.5, "2.5"), (-0.0, "0"), (1e20, "100000000000000000000"),
])
def test_numbers_keep_small_values(value, text):
    assert thresholds.format_number(value) == text


def test_a_tiny_bound_stays_a_bound():
    """`-w 0.0000001` is that, in the judging, in perfdata and in the breach text."""
    rng = thresholds.parse_range("0.0000001", thresholds.TIME_UNITS)
    assert rng.end == 1e-7 and not rng.match(2e-7)
    assert thresholds.format_range(rng) == "0.0000001"
    assert thresholds.describe_breach(0.0001, rng) == "0.0001 > 0.0000001"
    assert thresholds.format_range(thresholds.parse_range("@1us:2us", thresholds.TIME_UNITS)) == \
        "@0.000001:0.000002"


def _named_range_parser():
    parser = plugin.ArgumentParser("check_x", "test")
    limits = thresholds.named_range_type({"cpu", "memory"}, lambda _name: thresholds.PLAIN_UNITS)
    for flag, option in (("-w", "--warning"), ("-c", "--critical")):
        parser.add_argument(flag, option, type=limits, action=thresholds.OncePerName, default=[])
    return parser


def test_named_ranges_append_once_per_name():
    args = _named_range_parser().parse_args(["-w", "cpu=80", "--warning", "memory=90:", "-c", "cpu=95"])
    assert [(name, thresholds.format_range(rng)) for name, rng in args.warning] == \
        [("cpu", "80"), ("memory", "90:")]
    assert [name for name, _ in args.critical] == ["cpu"]
    assert _named_range_parser().parse_args([]).warning == []


@pytest.mark.parametrize("argv", [["-w", "cpu=80", "-w", "cpu=90"], ["-w", "cpu=80", "--warning", "cpu=80"],
                                  ["-c", "memory=1", "-w", "cpu=1", "-c", "memory=@2:3"]])
def test_a_name_given_twice_is_an_invalid_argument(argv):
    """`-w cpu=80 -w cpu=90` is a mistake: keeping either value silently would hide it."""
    with pytest.raises(plugin.UsageError) as error:
        _named_range_parser().parse_args(argv)
    option = "-w/--warning" if argv[0] == "-w" else "-c/--critical"
    name = argv[1].split("=")[0]
    assert str(error.value) == f"invalid argument: argument {option}: {name} given twice: one range per name"


def test_breach():
    warn, crit = thresholds.parse_range("10"), thresholds.parse_range("20")
    assert thresholds.breach(5, warn, crit) == (0, None)
    assert thresholds.breach(15, warn, crit) == (1, warn)
    assert thresholds.breach(25, warn, crit) == (2, crit)
    assert thresholds.breach(25) == (0, None)


@pytest.mark.parametrize("value, unit, text", [
    (0, "B/s", "0 B/s"), (999, "B/s", "999 B/s"), (1500, "B/s", "1.5 kB/s"),
    (1.5e6, "B/s", "1.5 MB/s"), (123.4e9, "B", "123 GB"), (2e12, "B", "2 TB"),
    (1500, "", "1.5k"), (12e6, "", "12M"), (0.25, "", "0.25"),
    (1e-7, "B/s", "0.0000001 B/s"), (1.23456e-4, "", "0.000123"),   # never an exponent
])
def test_decimal_sizes_for_people(value, unit, text):
    assert sizes.decimal(value, unit) == text


def test_binary_sizes_for_people():
    assert [sizes.size(v) for v in (0, 40 * 2**30, 2.5 * 2**30, 512 * 2**20, 20 * 2**20, 1.5 * 2**20,
                                    5000, 11.7 * 2**40)] == \
        ["0 GiB", "40 GiB", "2.5 GiB", "512 MiB", "20 MiB", "1.5 MiB", "0.00477 MiB", "11.7 TiB"]


def test_milliseconds_for_people():
    assert [sizes.milliseconds(v) for v in (150, 0.21, 1e-7, 0)] == ["150 ms", "0.21 ms", "0.0000001 ms", "0 ms"]


def test_percent_for_people():
    assert [sizes.percent(v) for v in (85, 2.5, 0, 0.0123, 1e-7, 0.05)] == \
        ["85%", "2.5%", "0%", "0.012%", "0.0000001%", "0.1%"]


def test_seconds_for_people():
    assert [sizes.seconds(v) for v in (2, 0.5123, 1.5, 3.02197, 1e-7, 1.23456e-4, 0)] == \
        ["2 s", "0.512 s", "1.500 s", "3.022 s", "0.0000001 s", "0.000123 s", "0 s"]


# ---------------------------------------------------------------- perfdata labels

LABEL = re.compile(r"[A-Za-z0-9_.-]+")


@given(st.text())
def test_any_name_gives_a_valid_stable_label(name):
    made = perfdata.label(name)
    assert LABEL.fullmatch(made)
    assert perfdata.label(name) == made
    assert PERFDATA_TOKEN.fullmatch(perfdata.token(made, 1.5, "B", None, None, 0))


@given(st.lists(st.text(), unique=True, max_size=30))
def test_labels_of_distinct_names_are_distinct_and_order_independent(names):
    labels = perfdata.Labels(names)
    made = [labels[n] for n in names]
    assert len(set(made)) == len(names)
    again = perfdata.Labels(list(reversed(names)))
    assert [again[n] for n in names] == made


def test_names_that_fold_alike_get_different_labels():
    names = ["web 01", "web_01", "web/01", "web=01", "web'01", "wéb 01", "web\n01"]
    assert len({perfdata.label(n) for n in names}) == len(names)
    assert perfdata.label("web_01") == "web_01"


def test_labels_with_ids_name_and_uuid_digits_widened_only_on_collision():
    web1, web2 = "e2ed1d65-6d99-5003-96ee-bfc1f3561ee7", "e2ed1d65-aaaa-5003-96ee-bfc1f3561ee7"
    other = "37c85347-db33-5802-ab13-36230b8ec021"
    labels = perfdata.labels_with_ids([(web2, "web-01"), (other, "web 01"), (web1, "web-01")])
    assert labels == {web1: "web-01_e2ed1d65", web2: "web-01_e2ed1d65aaaa",
                      other: perfdata.label("web 01") + "_37c85347"}
    # the same label for an instance whatever else is there
    assert perfdata.labels_with_ids([(web1, "web-01")])[web1] == labels[web1]


@given(st.lists(st.tuples(st.uuids().map(str), st.text(max_size=10)), unique_by=lambda p: p[0],
                max_size=20))
def test_labels_with_ids_are_valid_distinct_and_order_independent(pairs):
    labels = perfdata.labels_with_ids(pairs)
    assert len(set(labels.values())) == len(pairs)
    assert all(LABEL.fullmatch(made) for made in labels.values())
    assert perfdata.labels_with_ids(list(reversed(pairs))) == labels


def test_labels_by_name_add_the_id_only_where_names_repeat():
    labels = perfdata.labels_by_name([("a", "cmp1", 1), ("b", "cmp2", 2), ("c", "cmp2", 3),
                                      ("d", "cmp2", 3)])
    assert labels["a"] == "cmp1"
    assert labels["b"] == perfdata.label("cmp2 2") and labels["c"] == perfdata.label("cmp2 3")
    assert labels["d"] == perfdata.label("cmp2 3 #2")


@given(st.lists(st.tuples(st.text(max_size=6), st.integers(0, 3)), max_size=20))
def test_labels_by_name_are_valid_and_distinct(items):
    labels = perfdata.labels_by_name((n, name, ident) for n, (name, ident) in enumerate(items))
    assert len(set(labels.values())) == len(items)
    assert all(LABEL.fullmatch(made) for made in labels.values())


def test_perfdata_token_format():
    warn = thresholds.parse_range("10")
    crit = thresholds.parse_range("@1Ki:2Ki")
    assert perfdata.token("a", 1.25, "s", warn, crit, 0) == "a=1.25s;10;@1024:2048;0"
    assert perfdata.token("b", 3) == "b=3"
    assert perfdata.token("c", 1e-7, "", None, None, 0, 100) == "c=0.0000001;;;0;100"
    assert perfdata.token("d", 0.5, "s", thresholds.parse_range("0.0000001")) == "d=0.5s;0.0000001"


# ---------------------------------------------------------------- plugin output

@given(st.text())
def test_plain_text_cannot_break_the_output(text):
    safe = plugin.plain(text)
    assert "|" not in safe and "\n" not in safe and "\r" not in safe
    rendered = plugin.render("X", plugin.Report(0, safe, [safe]))
    assert rendered.count("\n") == 2


def test_render_status_perfdata_and_long_output():
    report = plugin.Report(1, "disk | full\nforged=1", ["line\nwith newline"], ["a=1"])
    out = plugin.render("CHECK", report)
    first, second = out.splitlines()
    assert first == "CHECK WARNING - disk \u00a6 full?forged=1 | a=1"
    assert second == "line?with newline"


# ---------------------------------------------------------------- the deadline and errors

def _run(code, *args, timeout=30):
    """Run a tiny check program (on plugin.run) in a subprocess."""
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "lib"))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


HANG = """
import socket
import nagiosplugin
from nova_libvirt_checks import plugin
class Hung(nagiosplugin.Resource):
    def probe(self):
        # blocked in C (a recv that never returns), like libvirt on a daemon that never answers
        a, b = socket.socketpair()
        a.recv(1)
        yield nagiosplugin.Metric("never", 0)
parser = plugin.ArgumentParser("check_x", "test")
plugin.run("X", parser, lambda args: nagiosplugin.Check(Hung()), timeout_state=plugin.CRITICAL,
           timeout_message=lambda args: f"no answer within {args.timeout:g} s")
"""


def test_deadline_fires_while_blocked_in_a_c_call():
    import time
    started = time.monotonic()
    proc = _run(HANG, "-t", "1")
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc
    assert proc.stdout == "X CRITICAL - no answer within 1 s\n"
    assert elapsed < 1 + 1.0


# ---------------------------------------------------------------- the nagiosplugin adapter

MODEL = """
import sys
import nagiosplugin
from nova_libvirt_checks import plugin, thresholds

class Pool(nagiosplugin.Resource):
    def probe(self):
        mode = sys.argv[-1]
        if mode == "empty":
            return []
        if mode == "ours":
            raise plugin.CheckError("pool unreachable", plugin.CRITICAL)
        if mode == "theirs":
            raise nagiosplugin.CheckError("pool half read")
        if mode == "hang":
            import socket
            a, b = socket.socketpair()
            a.recv(1)
        # yielded in this order on purpose: not alphabetical
        return [nagiosplugin.Metric("zeta", 1e-7, "s", min=0),
                nagiosplugin.Metric("alpha.web-01", 12345678901234.5, "B", min=0, max=2**60),
                nagiosplugin.Metric("mid", 7, context="mid")]

class PoolSummary(nagiosplugin.Summary):
    def __init__(self, verbose):
        self.level = verbose
    def ok(self, results):
        return "pool fine | forged=1\\nSECOND LINE"
    def problem(self, results):
        return "; ".join(str(r) for r in results if r.state != nagiosplugin.Ok)
    def verbose(self, results):
        details = ["detail one", "detail two"] if self.level else []
        return details + [f"offender: {r.metric.name}" for r in results
                          if r.state != nagiosplugin.Ok and r.metric]

def make_check(args):
    return nagiosplugin.Check(
        Pool(), plugin.ThresholdContext("zeta"), plugin.ThresholdContext("alpha.web-01"),
        plugin.ThresholdContext("mid", thresholds.parse_range("5"), thresholds.parse_range("@~:-1"),
                                what="mid count"),
        PoolSummary(args.verbose))

def only_mid(args, pairs):
    yield [tok for metric, tok in pairs if metric.name == "mid"], "(perfdata cut)"

parser = plugin.ArgumentParser("check_x", "test")
parser.add_argument("mode")
parser.add_argument("--max-output", type=int)
plugin.run("X", parser, make_check, timeout_state=plugin.CRITICAL,
           timeout_message=lambda args: f"no answer within {args.timeout:g} s",
           lighter_perfdata=only_mid)
"""


def test_adapter_output_keeps_order_labels_and_plain_numbers():
    """nagiosplugin sorts perfdata, quotes labels with . or -, prints 1e-07, and moves perfdata
    to the last line at -v; the adapter keeps probe order, bare labels, plain numbers, first line.
    The Summary chooses the long output of each -v level, -v 0 included."""
    proc = _run(MODEL, "-v", "fine")
    assert proc.returncode == 1 and proc.stderr == "", proc
    first, *rest = proc.stdout.splitlines()
    assert first == ("X WARNING - mid count 7 > 5 | zeta=0.0000001s;;;0 "
                     "alpha.web-01=12345678901234.5B;;;0;1152921504606846976 mid=7;5;@~:-1")
    assert rest == ["detail one", "detail two", "offender: mid"]
    assert _run(MODEL, "fine").stdout.splitlines()[1:] == ["offender: mid"]
    for tok in first.split(" | ")[1].split():
        assert PERFDATA_TOKEN.fullmatch(tok), tok


def test_adapter_status_text_is_made_plain():
    code = MODEL.replace('nagiosplugin.Metric("mid", 7', 'nagiosplugin.Metric("mid", 3')
    proc = _run(code, "fine")
    assert proc.returncode == 0
    assert proc.stdout.startswith("X OK - pool fine \u00a6 forged=1?SECOND LINE | zeta=0.0000001s")
    assert proc.stdout.count("\n") == 1


def test_adapter_fits_the_output_to_max_output_lighter_perfdata_first():
    assert _run(MODEL, "--max-output", "1000", "fine").stdout == _run(MODEL, "fine").stdout
    proc = _run(MODEL, "--max-output", "100", "fine")
    assert proc.stdout == "X WARNING - mid count 7 > 5 | mid=7;5;@~:-1\noffender: mid\n(perfdata cut)\n"


@pytest.mark.parametrize("mode, code, line", [
    ("ours", 2, "X CRITICAL - pool unreachable"),
    ("theirs", 3, "X UNKNOWN - pool half read"),
    ("empty", 3, "X UNKNOWN - no check results"),
])
def test_adapter_errors_in_probe_are_one_line(mode, code, line):
    """Our CheckError ends the check with its state; nagiosplugin's is an UNKNOWN result; a
    resource without metrics is UNKNOWN, and nagiosplugin's log warning about it stays off stderr."""
    proc = _run(MODEL, mode)
    assert (proc.returncode, proc.stdout, proc.stderr) == (code, line + "\n", "")


def test_adapter_deadline_fires_while_blocked_in_a_c_call():
    proc = _run(MODEL, "-t", "1", "hang")
    assert (proc.returncode, proc.stdout) == (2, "X CRITICAL - no answer within 1 s\n")


def test_adapter_bad_argument_is_unknown_not_2():
    proc = _run(MODEL, "-t", "x", "fine")
    assert proc.returncode == 3 and proc.stdout.startswith("X UNKNOWN - invalid argument: ")
    assert proc.stderr == ""


BROKEN = """
import nagiosplugin
from nova_libvirt_checks import plugin
class Broken(nagiosplugin.Resource):
    def probe(self):
        raise KeyError("boom")
plugin.run("X", plugin.ArgumentParser("check_x", "test"), lambda args: nagiosplugin.Check(Broken()))
"""


def test_internal_error_is_one_unknown_line_without_traceback():
    proc = _run(BROKEN)
    assert proc.returncode == 3
    assert proc.stdout == "X UNKNOWN - internal error: KeyError: 'boom'\n"
    proc = _run(BROKEN, "-vvv")
    assert proc.returncode == 3
    assert "Traceback" in proc.stdout and proc.stdout.startswith("X UNKNOWN - internal error")


@pytest.mark.parametrize("args, needle", [
    (["-t", "0"], "-t/--timeout"), (["-t", "abc"], "-t/--timeout"), (["--bogus"], "--bogus"),
    (["-t"], "-t/--timeout"), (["extra"], "extra"),
])
def test_bad_arguments_end_as_unknown_naming_the_argument(args, needle):
    proc = _run(BROKEN, *args)
    assert proc.returncode == 3
    assert proc.stdout.startswith("X UNKNOWN - invalid argument: ")
    assert needle in proc.stdout and proc.stdout.count("\n") == 1
    assert proc.stderr == ""


def test_help_and_version_exit_3():
    help_ = _run(BROKEN, "-h")
    assert help_.returncode == 3 and "usage: check_x" in help_.stdout
    version = _run(BROKEN, "-V")
    assert version.returncode == 3 and re.fullmatch(r"check_x \(nova-libvirt-checks\) \S+\n", version.stdout)


# ---------------------------------------------------------------- state files

def test_state_dir_is_private_and_symlinks_are_refused(tmp_path):
    path = private_dir(str(tmp_path / "state"))
    assert os.stat(path).st_mode & 0o777 == 0o700
    os.symlink(path, tmp_path / "link")
    with pytest.raises(Exception, match="symlink"):
        private_dir(str(tmp_path / "link"))


def test_state_file_roundtrip_mode_and_garbage(tmp_path):
    store = StateFile(file_for("x", "uri", str(tmp_path / "s")))
    assert store.load() == {}
    store.update(lambda doc: dict(doc, a=1))
    assert store.load() == {"a": 1}
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    with open(store.path, "w") as handle:
        handle.write("{not json")
    fresh = StateFile(store.path)
    assert fresh.load() == {} and "starting afresh" in fresh.notes[0]
    fresh.update(lambda doc: dict(doc, b=2))
    assert json.load(open(store.path)) == {"b": 2}


def test_state_file_symlink_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text('{"secret": 1}')
    store = StateFile(file_for("x", "uri", str(tmp_path / "s")))
    os.makedirs(os.path.dirname(store.path), exist_ok=True)
    os.symlink(target, store.path)
    assert store.load() == {} and "symlink" in store.notes[0]


def test_concurrent_updates_are_merged(tmp_path):
    path = file_for("x", "uri", str(tmp_path / "s"))

    def add(key):
        StateFile(path, lock_wait=10).update(lambda doc: dict(doc, **{key: True}))
    workers = [threading.Thread(target=add, args=(f"k{i}",)) for i in range(20)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert StateFile(path).load() == {f"k{i}": True for i in range(20)}


def test_fit_keeps_output_within_the_limit_lightest_first():
    lines = [f"line {i} " + "x" * 90 for i in range(5000)]
    report = plugin.Report(2, "summary", list(lines), ["a=1"] * 2000)
    fitted = plugin.fit("X", report, 8000, [(["a=1"] * 10, "(perfdata cut)")])
    out = plugin.render("X", fitted).encode()
    assert len(out) <= 8000
    assert fitted.long_output == lines[:len(fitted.long_output)] and fitted.long_output
    assert fitted.perfdata == ["a=1"] * 10
    tiny = plugin.fit("X", plugin.Report(0, "s" * 5000, [], ["b=2"]), 100)
    assert len(plugin.render("X", tiny).encode()) <= 100 and tiny.perfdata == []
