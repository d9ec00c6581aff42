"""Both libvirt checks against a real libvirtd with two real QEMU guests doing disk and network
I/O (tests/harness/libvirt): web-01 of tenant acme (Nova metadata 1.1) and db-01 of tenant beta
(Nova metadata 1.0). Also as the unprivileged nagios user, through the read-only socket."""
import os
import socket

import pytest

from tests.checkrun import assert_plugin_output, run_check
from tests.helpers import steady_labels, wait_for_growth
from tests.oracle import (CounterRecorder, assert_rates_match, bulk_reader, label_base,
                          measure_twice)
from tests.fixtures_libvirt import RO_SOCKET, run_as_nagios


GUESTS = "^instance-0000000[12]$"


def instances(state_dir, *args, **kwargs):
    # runs a moment apart compare with each other (--min-window 0), as the tests here expect
    return run_check("check_libvirt_instances", "--state-dir", state_dir, "--min-window", "0", *args, **kwargs)


def guest_labels(result):
    return {label.rsplit(".", 1)[0] for label in result.perfdata if "." in label and not label.startswith("total.")}


# ---------------------------------------------------------------- check_libvirtd

def test_libvirtd_ok_through_the_read_only_socket(libvirtd):
    result = run_check("check_libvirtd", "-U", libvirtd.uri, "-w", "2", "-c", "5")
    assert_plugin_output(result, 0)
    assert result.text.startswith(f"LIBVIRTD OK - {libvirtd.uri} answered in ")
    assert "QEMU" in result.text and "libvirt 9." in result.text
    assert result.values()["domains_running"] >= 2


def test_libvirtd_ok_as_the_nagios_user(libvirtd, installed_plugins):
    proc = run_as_nagios([f"{installed_plugins}/check_libvirtd", "--domains-critical", "crashed=0"])
    assert proc.returncode == 0, proc
    assert proc.stdout.startswith("LIBVIRTD OK - qemu:///system answered in ") and proc.stderr == ""


def test_read_write_refused_for_nagios_is_unknown_with_a_hint(libvirtd, installed_plugins):
    proc = run_as_nagios([f"{installed_plugins}/check_libvirtd", "--read-write"])
    assert proc.returncode == 3, proc
    assert proc.stdout.count("\n") == 1
    assert "access to qemu:///system refused" in proc.stdout and "Permission denied" in proc.stdout
    assert "auth_unix_rw" in proc.stdout and "org.libvirt.unix.manage" in proc.stdout
    assert "no --read-write" not in proc.stdout and "auth_unix_ro" not in proc.stdout


def test_libvirtd_stopped_is_critical_at_once(libvirtd_down):
    result = run_check("check_libvirtd", "-t", "10")
    assert_plugin_output(result, 2)
    assert "socket missing, libvirtd is not running" in result.text
    assert result.elapsed < 1.5


def test_stale_socket_is_critical(libvirtd_down):
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(RO_SOCKET)                # left behind by a crashed daemon: nobody listens
    sock.close()
    try:
        result = run_check("check_libvirtd")
        assert_plugin_output(result, 2)
        assert "connection refused, libvirtd is not running (stale socket)" in result.text
        assert result.elapsed < 1.5
    finally:
        os.unlink(RO_SOCKET)


# ---------------------------------------------------------------- check_libvirt_instances

@pytest.mark.parametrize("mode", ["bulk", "per-domain"])
def test_every_number_matches_the_tests_own_measurement(libvirtd, state_dir, mode):
    """Each guest's CPU, memory, disk and network figures and every total.* against the test's
    own getAllDomainStats readings over the window the check recorded (tests/oracle.py)."""
    uuids = [g["uuid"] for g in libvirtd.guests]
    with libvirtd.open_ro() as conn, CounterRecorder(bulk_reader(conn, uuids)) as recorder:
        host_cpus = conn.getInfo()[2]
        result, starts, ends = measure_twice(
            lambda *a: instances(state_dir, "--stats-mode", mode, "--domain", GUESTS, *a),
            state_dir, recorder)
    assert_plugin_output(result, 0)
    assert "2 instances within limits (2 running)" in result.text
    assert "web-01 (acme)" in result.stdout and "db-01 (beta)" in result.stdout
    vcpus = {g["uuid"]: g["flavor"]["vcpus"] for g in libvirtd.guests}
    bases = {g["uuid"]: label_base(g["nova_name"], g["uuid"]) for g in libvirtd.guests}
    checked = assert_rates_match(result, recorder, bases, starts, ends, vcpus, host_cpus,
                                 ("cpu_delay",) if mode == "per-domain" else ())   # vcpu.N.delay: bulk only
    print("\n".join(f"{k}: {v}" for k, v in checked.items()))
    for base in bases.values():        # the guests do I/O: no figure is a trivial 0
        for metric in ("cpu", "memory", "disk_read_bytes", "disk_write_bytes", "disk_write_ops",
                       "net_rx_bytes", "net_tx_bytes", "net_rx_packets"):
            assert checked[f"{base}.{metric}"][1] > 0, (base, metric, result.stdout)


def test_threshold_below_the_measured_rate_names_the_instance(libvirtd, state_dir):
    instances(state_dir, "--interval", "0")
    # web-01 wrote and sent since that sample (its disk I/O comes in bursts ~1 s apart)
    wait_for_growth(libvirtd, ("block.0.wr.bytes", "net.0.tx.bytes"), ["instance-00000001"])
    result = instances(state_dir, "-w", "disk_write_bytes=1K", "-c", "net_tx_bytes=1",
                       "--name", "^web-01$")
    assert_plugin_output(result, 2)
    assert result.text.startswith("INSTANCES CRITICAL - 1 of 1 instance over limits: web-01 (acme) ")
    assert "net tx" in result.text and "> 1 B/s" in result.text
    assert "disk write" in result.text and "> 1 kB/s" in result.text


def test_both_stats_paths_give_the_same_metrics(libvirtd, state_dir):
    labels = {}
    for mode in ("bulk", "per-domain"):
        instances(state_dir + mode, "--stats-mode", mode, "--interval", "0")
        wait_for_growth(libvirtd, ("block.0.rd.reqs", "block.0.wr.reqs", "net.0.rx.pkts", "net.0.tx.pkts"))
        result = instances(state_dir + mode, "--stats-mode", mode, "--domain", "^instance-0000000[12]$", "-v")
        assert_plugin_output(result, 0)
        assert f"stats: {mode} path" in result.stdout
        # cpu_delay: bulk stats only (vcpu.N.delay); swap and faults: only when the guest sent
        # its balloon statistics (every 5 s here) within the window
        labels[mode] = {k for k in result.perfdata if not k.endswith(("cpu_delay", "mem_swap_in",
                                                                      "mem_swap_out", "mem_major_faults"))}
    assert labels["bulk"] == labels["per-domain"]
    assert any(k.endswith("disk_flush_latency") for k in labels["per-domain"])


def test_restarted_guest_gives_no_negative_rate_or_spike(libvirtd, state_dir):
    instances(state_dir, "--interval", "0", "--name", "^web-01$")
    libvirtd.restart_guest("web-01")
    result = instances(state_dir, "--name", "^web-01$")
    assert_plugin_output(result, 0)
    values = result.values()
    assert all(value >= 0 for value in values.values()), values
    assert all(value < 50e6 for label, value in values.items() if label.endswith("_bytes")), values


def test_rates_go_on_across_a_libvirtd_restart(libvirtd, state_dir):
    instances(state_dir, "--interval", "0")
    with libvirtd.daemon_stopped():
        down = instances(state_dir, "-t", "5")
        assert_plugin_output(down, 3)
        assert "socket missing" in down.text
    result = instances(state_dir, "--interval", "0", "--domain", "^instance-0000000[12]$")
    assert_plugin_output(result, 0)
    assert "collecting baseline" not in result.stdout      # the samples from before still count
    assert all(v >= 0 for v in result.values().values())


def test_nagios_user_gets_the_same_results_read_only(libvirtd, installed_plugins, state_dir):
    args = ["--domain", "^instance-0000000[12]$", "--interval", "1"]
    proc = run_as_nagios([f"{installed_plugins}/check_libvirt_instances", *args])
    assert proc.returncode == 0, proc
    assert proc.stderr == ""
    root = instances(state_dir, *args)
    first = proc.stdout.splitlines()[0]
    assert first.split(";")[0].split(" | ")[0].split(";")[0].startswith("INSTANCES OK - 2 instances within limits")
    nagios_labels = {token.split("=")[0] for token in first.split(" | ", 1)[1].split()}
    # the same labels (the disk latencies aside: steady_labels), so the same graphs
    assert set(steady_labels(nagios_labels)) == set(steady_labels(root.perfdata))
    assert "web-01 (acme)" in proc.stdout and "db-01 (beta)" in proc.stdout
