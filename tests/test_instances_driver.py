"""check_libvirt_instances on libvirt's test driver (per-domain path, Nova metadata variants).

The test driver's counters grow with the wall clock at fixed rates, the same for every domain:
disk read 50 kB/s, disk write 25 kB/s, net rx 100 kB/s, net tx 50 kB/s, 1 s of CPU per second.
"""
import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.checkrun import NODE_URI, ROOT, assert_plugin_output, run_check
from tests.oracle import (CounterRecorder, assert_rates_match, bases_by_uuid, measure_twice,
                          per_domain_reader)


def check(state_dir, *args, **kwargs):
    return run_check("check_libvirt_instances", "-U", NODE_URI, "--state-dir", state_dir, *args, **kwargs)


def test_first_run_without_interval_says_collecting_baseline(state_dir):
    result = check(state_dir, "--interval", "0")
    assert_plugin_output(result, 0)
    assert "9 instances within limits" in result.text and "collecting baseline" in result.text
    assert result.values()["instances"] == 9
    files = os.listdir(state_dir)
    assert any(f.endswith(".json") for f in files)
    for name in files:
        assert os.stat(os.path.join(state_dir, name)).st_mode & 0o777 == 0o600
    assert os.stat(state_dir).st_mode & 0o777 == 0o700


@pytest.fixture
def node_recorder():
    """The test's own readings of the test driver's counters (per-domain calls, as the driver
    has no bulk stats), on a connection of its own; its in-process calls take ~1 ms, hence the
    small slack."""
    import libvirt
    conn = libvirt.openReadOnly(NODE_URI)
    uuids = [d.UUIDString() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]
    with CounterRecorder(per_domain_reader(conn, uuids), min_slack=0.05) as recorder:
        recorder.conn, recorder.uuids = conn, uuids
        yield recorder
    conn.close()


def flavor_vcpus(conn, uuid):
    """The vCPUs a domain's CPU % is of: its Nova flavor's, else libvirt's count."""
    from lxml import etree
    dom = conn.lookupByUUIDString(uuid)
    vcpus = etree.fromstring(dom.XMLDesc(0)).xpath("string(//*[local-name()='flavor']/*[local-name()='vcpus'])")
    return int(vcpus) if vcpus.isdigit() else dom.info()[3]


def test_rates_from_the_previous_run_match_the_tests_own_measurement(state_dir, node_recorder):
    """Every per-instance figure and every total.* against the test's own readings over the
    window the check recorded (tests/oracle.py); the driver's counters are functions of the
    wall clock (disk read 50 kB/s, write 25 kB/s, net rx 100 kB/s, tx 50 kB/s, 1 s of CPU
    per second, error and drop counters stepping each second or so)."""
    rec = node_recorder
    result, starts, ends = measure_twice(lambda *a: check(state_dir, "--perfdata", "all", "--min-window", "0", *a),
                                         state_dir, rec, window=3.0)
    assert_plugin_output(result, 0)
    vcpus = {u: flavor_vcpus(rec.conn, u) for u in rec.uuids}
    bases = bases_by_uuid(result, rec.uuids)
    assert set(bases) == set(rec.uuids), (bases, result.stdout)
    checked = assert_rates_match(result, rec, bases, starts, ends, vcpus, rec.conn.getInfo()[2])
    web = [b for u, b in bases.items() if b.startswith("web-01_")]
    assert len(web) == 2 and all(checked[f"{b}.disk_write_bytes"][1] > 0 for b in web)


def test_rates_within_one_run_match_the_tests_own_measurement(state_dir, node_recorder):
    """With no previous sample the check samples twice within the run (--interval apart). The
    window's start is not recorded, so only the counters linear in time are compared, with the
    test's own rate over its whole recording, within 5 %: a per-domain sample reads the CPU
    time first and is stamped after its device calls, and on a loaded machine (load average
    10 on 2 cores) that skewed a 1 s window by up to 25 ms."""
    rec = node_recorder
    result = check(state_dir, "--perfdata", "all", "--interval", "1")
    assert_plugin_output(result, 0)
    assert "collecting baseline" not in result.stdout
    rec.wait_past(time.monotonic())
    (t_a, first), (t_b, last) = rec.readings[0], rec.readings[-1]
    values = result.values()
    for uuid, base in bases_by_uuid(result, rec.uuids).items():
        for metric in ("cpu", "disk_read_bytes", "disk_write_bytes", "disk_read_ops", "disk_write_ops",
                       "net_rx_bytes", "net_tx_bytes", "net_rx_packets", "net_tx_packets"):
            expected = (last[uuid][metric] - first[uuid][metric]) / (t_b - t_a)
            if metric == "cpu":
                expected = expected / 1e9 / flavor_vcpus(rec.conn, uuid) * 100
            assert abs(values[f"{base}.{metric}"] - expected) <= 0.05 * expected, (base, metric, expected)


def test_threshold_names_the_instance_and_tenant(state_dir):
    result = check(state_dir, "-w", "disk_write_bytes=20K", "-c", "disk_write_bytes=1M", "--tenant", "^acme$")
    assert_plugin_output(result, 1)
    assert result.text.startswith("INSTANCES WARNING - 2 of 3 instances over limits: ")
    assert "web-01 (acme) disk write 25 kB/s > 20 kB/s" in result.text
    assert "O'Brien \"db\" = primary (acme) disk write" in result.text
    assert "web-01 (beta)" not in result.stdout
    assert result.lines[1].startswith("WARNING: ")
    assert any(line.startswith("OK: stopped-01 (acme)") and "not running" in line for line in result.lines)
    critical = check(state_dir, "-c", "cpu=90", "--name", "^web-01$")
    assert_plugin_output(critical, 2)
    assert "1 of 2 instances over limits: web-01 (beta) CPU" in critical.text


def test_metadata_variants_and_labels(state_dir):
    result = check(state_dir, "--top", "20")
    assert_plugin_output(result, 0)
    out = result.stdout
    for title in ("web-01 (acme)", "web-01 (beta)", "O'Brien \"db\" = primary (acme)",
                  "データベース 東京 (Größe GmbH)", "legacy-01 (old-tenant)", "orphan-01 (no owner)",
                  "plain-domain (not Nova)", "stopped-01 (acme)", "paused-01 (beta)"):
        assert title in out, title
    instance_labels = {label.rsplit(".", 1)[0] for label in result.perfdata if "." in label
                       and not label.startswith("total.")}
    assert len(instance_labels) == 8          # the 7 running and the paused one have rates
    again = check(state_dir, "--top", "20")
    assert set(again.perfdata) == set(result.perfdata)   # stable from run to run
    assert list(again.perfdata) == list(result.perfdata)  # and in the same order


def test_selection(state_dir):
    def titles(*args):
        result = check(state_dir, "--top", "50", *args)
        assert_plugin_output(result)
        return {line.split(": ", 1)[1].split(" [")[0] for line in result.lines[1:] if ": " in line}
    assert titles("--skip-non-nova") >= {"web-01 (acme)"} and "plain-domain (not Nova)" not in titles("--skip-non-nova")
    assert titles("--tenant", "acme", "--exclude-name", "stopped") == {"web-01 (acme)", "O'Brien \"db\" = primary (acme)"}
    assert titles("--domain", "^plain-domain$") == {"plain-domain (not Nova)"}
    assert titles("--tenant", "5aab62ea1ad85083a41008c2524ea6ae") == {"web-01 (beta)", "paused-01 (beta)"}
    none = check(state_dir, "--tenant", "^nobody$")
    assert_plugin_output(none, 0)
    assert "no instances match the selection" in none.text


def test_state_thresholds(state_dir):
    result = check(state_dir, "--state-critical", "paused,crashed", "--state-warning", "shutoff")
    assert_plugin_output(result, 2)
    assert "paused-01 (beta) paused" in result.text
    assert "stopped-01 (acme) shut off" in result.text


def test_totals(state_dir):
    result = check(state_dir, "--total-critical", "net_rx_bytes=500K")
    assert_plugin_output(result, 2)
    # 8 domains with live counters (7 running, 1 paused) at 100 kB/s each
    shown = re.search(r"host total net rx (\d+) kB/s > 500 kB/s", result.text)
    assert shown and abs(int(shown[1]) - 800) <= 8, result.text
    assert result.perfdata["total.net_rx_bytes"].split(";")[2] == "500000"


@pytest.mark.parametrize("args, option", [
    (["-w", "disk_write_bytes=fast"], "-w/--warning"), (["-w", "diskwrite=1M"], "-w/--warning"),
    (["-c", "cpu"], "-c/--critical"), (["--tenant", "("], "--tenant"), (["--state-warning", "sleepy"], "--state-warning"),
    (["--top", "0"], "--top"), (["--interval", "-1"], "--interval"), (["--perfdata", "some"], "--perfdata"),
])
def test_invalid_arguments(state_dir, args, option):
    result = check(state_dir, *args)
    assert_plugin_output(result, 3)
    assert option in result.text and len(result.lines) == 1


@pytest.mark.parametrize("args, option, name", [
    (["-w", "cpu=80", "-w", "cpu=90"], "-w/--warning", "cpu"),
    (["-c", "disk_write_bytes=1M", "--critical", "disk_write_bytes=1M"], "-c/--critical", "disk_write_bytes"),
    (["--total-warning", "cpu=150", "-w", "cpu=80", "--total-warning", "cpu=180"], "--total-warning", "cpu"),
])
def test_a_metric_given_twice_is_an_invalid_argument(state_dir, args, option, name):
    """`-w cpu=80 -w cpu=90` is a mistake, not "the last one wins"."""
    result = check(state_dir, *args)
    assert_plugin_output(result, 3)
    assert result.stdout == (f"INSTANCES UNKNOWN - invalid argument: argument {option}: "
                             f"{name} given twice: one range per name\n")
    assert not os.path.exists(state_dir)                 # nothing measured, nothing kept


def test_a_bound_under_a_microunit_is_kept(state_dir):
    """-w METRIC=0.0000001 is that in perfdata and in the breach text, never 0 or 1e-07."""
    result = check(state_dir, "--interval", "0.2", "-w", "disk_read_bytes=0.0000001",
                   "-w", "disk_read_latency=0.0000001", "--total-warning", "cpu=0.0000002")
    assert_plugin_output(result, 1)
    assert "disk read 50 kB/s > 0.0000001 B/s" in result.text, result.text
    # perfdata numbers: assert_plugin_output; the words, without the (hex) ids in brackets
    words = re.sub(r"\[[^]]*\]", "", "\n".join([result.text] + result.lines[1:]))
    assert not re.search(r"\d[eE][-+]?\d", words), words
    reads = [t for label, t in result.perfdata.items()
             if label.endswith(".disk_read_bytes") and not label.startswith("total.")]
    assert reads and all(t.split(";")[1] == "0.0000001" for t in reads), reads
    assert result.perfdata["total.cpu"].split(";")[1] == "0.0000002"


def test_output_is_bounded(state_dir):
    result = check(state_dir, "--max-output", "1500")
    assert_plugin_output(result, 0)
    assert len(result.stdout.encode()) <= 1500
    assert "total.disk_write_bytes" in result.perfdata


def test_garbage_state_file_means_a_fresh_start(state_dir):
    check(state_dir, "--interval", "0")
    path = [os.path.join(state_dir, f) for f in os.listdir(state_dir) if f.endswith(".json")][0]
    with open(path, "w") as handle:
        handle.write("\x00garbage{")
    result = check(state_dir)
    assert_plugin_output(result, 0)
    assert "starting afresh" in result.text and "within limits" in result.text
    assert json.load(open(path))["version"] == 1     # rewritten whole


def test_counter_going_backwards_gives_no_negative_rate_or_spike(state_dir):
    check(state_dir, "--interval", "0")
    path = [os.path.join(state_dir, f) for f in os.listdir(state_dir) if f.endswith(".json")][0]
    document = json.load(open(path))
    for sample in document["samples"].values():      # as if every counter had been far higher
        sample["c"] = {key: value * 10 for key, value in sample["c"].items()}
    json.dump(document, open(path, "w"))
    result = check(state_dir)
    assert_plugin_output(result, 0)
    for label, value in result.values().items():
        assert value >= 0, label
        if label.endswith("disk_write_bytes") and not label.startswith("total."):
            assert value < 30_000, (label, value)


def test_unusable_state_dir_still_measures(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = check(str(blocker / "state"))     # a path under a regular file cannot be a directory
    assert_plugin_output(result, 0)
    assert "cannot create state directory" in result.text and "within limits" in result.text


def test_concurrent_runs_share_one_state_file(state_dir):
    check(state_dir, "--interval", "0")
    argv = [sys.executable, os.path.join(ROOT, "checks", "check_libvirt_instances"), "-U", NODE_URI,
            "--state-dir", state_dir]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(12)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert all(err == "" for _, err in outputs)
    path = [os.path.join(state_dir, f) for f in os.listdir(state_dir) if f.endswith(".json")][0]
    assert len(json.load(open(path))["samples"]) == 8        # every active domain, none lost


def test_a_domain_recreated_under_the_same_id_gets_all_its_metrics_or_none(state_dir):
    """libvirtd hands out domain ids from 1 again after its own restart: a re-created domain can
    carry the same uuid and id as the stored sample, with most counters smaller and some (error
    counters at 0) equal. It must not report the half of its metrics whose counters did not go
    back: it is measured afresh within the run, with its whole metric set."""
    reference = check(state_dir + "-ref")
    check(state_dir, "--interval", "0")
    path = [os.path.join(state_dir, f) for f in os.listdir(state_dir) if f.endswith(".json")][0]
    document = json.load(open(path))
    for sample in document["samples"].values():
        sample["c"] = {key: value * 10 if not key.endswith(("errors", "drops")) else value
                       for key, value in sample["c"].items()}
    json.dump(document, open(path, "w"))
    result = check(state_dir)
    assert_plugin_output(result, 0)
    assert set(result.perfdata) == set(reference.perfdata)
    assert "collecting baseline" not in result.stdout and "no rates" not in result.stdout
