"""check_libvirt_instances on libvirt's test driver (per-domain path, Nova metadata variants).

The test driver's counters grow with the wall clock at fixed rates, the same for every domain:
disk read 50 kB/s, disk write 25 kB/s, net rx 100 kB/s, net tx 50 kB/s, 1 s of CPU per second.
"""
import json
import os
import subprocess
import sys

import pytest

from tests.checkrun import NODE_URI, ROOT, assert_plugin_output, run_check


@pytest.fixture
def state_dir(tmp_path):
    return str(tmp_path / "state")


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


def test_rates_within_one_run_and_from_the_previous_run(state_dir):
    for _ in range(2):      # first: sampled twice within the run; second: against the first
        result = check(state_dir, "--perfdata", "all")
        assert_plugin_output(result, 0)
        values = result.values()
        web = [label for label in values if label.startswith("web-01_") and label.endswith(".disk_write_bytes")]
        assert len(web) == 2
        for label in web:
            assert 20_000 < values[label] < 30_000
        assert 40_000 < values[web[0].replace("disk_write", "disk_read")] < 60_000
        assert 80_000 < values[web[0].replace("disk_write_bytes", "net_rx_bytes")] < 120_000
        # 1 s of CPU per second on 2 vCPUs (web-01 of acme) is 50 %
        cpus = sorted(values[label.replace("disk_write_bytes", "cpu")] for label in web)
        assert 40 < cpus[0] < 60 and 90 < cpus[1] < 110


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
    assert "host total net rx 700 kB/s > 500 kB/s" in result.text or "host total net rx" in result.text
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
