"""check_nova_hypervisors against the real local cloud (tests/harness/cloud).

Every expected number is derived from cloud.json (what the cloud was given: host sizes,
reservations, allocation ratios, the servers booted), never read back from the APIs. The check
runs as a subprocess, as Nagios runs it, with the cloud's OS_* variables and a private state
directory per test.
"""
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import service_unavailable
from tests.helpers import split_perfdata
from tests.stub_openstack import StubOpenStack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(ROOT, "checks", "check_nova_hypervisors")
UNIT = {"vcpus": 1, "memory": 2**20, "disk": 2**30}
CLASS = {"vcpus": "VCPU", "memory": "MEMORY_MB", "disk": "DISK_GB"}
LEGACY = {"vcpus": ("vcpus_used", "vcpus"), "memory": ("memory_mb_used", "memory_mb"),
          "disk": ("local_gb_used", "local_gb")}


# ---------------------------------------------------------------- helpers

class Result:
    def __init__(self, proc, elapsed):
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.elapsed = elapsed
        self.lines = proc.stdout.splitlines()
        first = self.lines[0] if self.lines else ""
        self.status, _, perf = first.partition(" | ")
        self.perf = parse_perfdata(perf)

    def __repr__(self):
        return f"exit {self.code} after {self.elapsed:.2f} s:\n{self.stdout}{self.stderr}"


def parse_perfdata(text):
    """{label: (value, uom, warn, crit, min, max)} with numbers as floats (tokens split by the
    shared splitter, tests/helpers.py)."""
    out = {}
    for item in split_perfdata(text):
        name, _, rest = item.rpartition("=")
        fields = rest.split(";") + [""] * 4
        raw = fields[0]
        number = raw.rstrip("%B")
        out[name.strip("'").replace("''", "'")] = (float(number), raw[len(number):]) + tuple(fields[1:5])
    return out


def value(result, name):
    assert name in result.perf, f"no perfdata {name!r} in {result!r}"
    return result.perf[name][0]


def base_env(cloud, state_dir, **extra):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "NOVA_LIBVIRT_CHECKS_STATE_DIR": state_dir}
    env.update(cloud.env)
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def run(cloud, state_dir, *args, env=None, timeout=30):
    started = time.monotonic()
    proc = subprocess.run([sys.executable, CHECK] + [str(a) for a in args], cwd=ROOT,
                          env=env or base_env(cloud, state_dir), capture_output=True, text=True,
                          timeout=timeout)
    return Result(proc, time.monotonic() - started)


def hosts(cloud):
    return cloud.expected["hosts"]


def placement_totals(cloud, names=None):
    """{resource: (used, capacity, free)} in base units (count, bytes) over the named hosts;
    free is counted host by host: the sum of max(0, capacity - used)."""
    chosen = [h for name, h in hosts(cloud).items() if names is None or name in names]
    inventory = {r: [h["placement"][CLASS[r]] for h in chosen] for r in UNIT}
    return {r: (sum(i["used"] for i in inventory[r]) * UNIT[r],
                sum(i["capacity"] for i in inventory[r]) * UNIT[r],
                sum(max(0, i["capacity"] - i["used"]) for i in inventory[r]) * UNIT[r])
            for r in UNIT}


def legacy_totals(cloud, names=None):
    chosen = [h["legacy"] for name, h in hosts(cloud).items() if names is None or name in names]
    return {r: (sum(h[LEGACY[r][0]] for h in chosen) * UNIT[r],
                sum(h[LEGACY[r][1]] for h in chosen) * UNIT[r],
                sum(max(0, h[LEGACY[r][1]] - h[LEGACY[r][0]]) for h in chosen) * UNIT[r])
            for r in UNIT}


def placement_fits(cloud, flavor, names=None):
    f = cloud.expected["flavors"][flavor]
    need = {"VCPU": f["vcpus"], "MEMORY_MB": f["ram"], "DISK_GB": f["disk"]}
    total = 0
    for name, h in hosts(cloud).items():
        if names is None or name in names:
            total += min((inv["capacity"] - inv["used"]) // need[rc]
                         for rc, inv in h["placement"].items())
    return total


def legacy_fits(cloud, flavor):
    f = cloud.expected["flavors"][flavor]
    need = {"vcpus": f["vcpus"], "memory": f["ram"], "disk": f["disk"]}
    total = 0
    for h in hosts(cloud).values():
        leg = h["legacy"]
        total += max(0, min((leg[LEGACY[r][1]] - leg[LEGACY[r][0]]) // need[r] for r in need))
    return total


def assert_totals(result, totals):
    for resource, (used, capacity, free) in totals.items():
        assert value(result, f"{resource}_used") == used, (resource, result)
        assert value(result, f"{resource}_capacity") == capacity, (resource, result)
        assert value(result, f"{resource}_free") == free, (resource, result)
        assert float(result.perf[f"{resource}_used"][5]) == capacity      # max = capacity
        assert value(result, f"{resource}_used_pct") == round(100 * used / capacity, 2)


def token_file(state_dir):
    files = [f for f in os.listdir(state_dir) if f.startswith("token-") and f.endswith(".json")]
    assert len(files) == 1, files
    return os.path.join(state_dir, files[0])


def edit_cached_token(state_dir, change):
    path = token_file(state_dir)
    with open(path) as f:
        document = json.load(f)
    state = json.loads(document["auth_state"])
    change(state)
    document["auth_state"] = json.dumps(state)
    with open(path, "w") as f:
        json.dump(document, f)


def run_with_a_refused_cached_token(cloud, state_dir, env, user):
    """A run (-vv) whose cached token Nova refuses: OK, after exactly one new login of `user`
    (the 401 first, then one token request). Returns (the run's Result, user's token count
    before it)."""
    before = user.token_requests()
    r = run(cloud, state_dir, "-vv", env=env)
    assert r.code == 0, r
    assert user.token_requests() - before == 1
    requests_ = [line for line in r.lines if line.startswith("request:")]
    assert "/os-hypervisors/detail -> 401" in requests_[0], r
    assert sum("auth/tokens -> 201" in line for line in requests_) == 1, r
    return r, before


class StalledPeer:
    """A TCP socket that accepts connections and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


# ---------------------------------------------------------------- capacity and usage

def test_placement_totals_exact(cloud, state_dir):
    r = run(cloud, state_dir, "--perfdata-per-hypervisor")
    assert r.code == 0, r
    assert r.status.startswith("HYPERVISORS OK - 3 of 3 hypervisors up and enabled"), r
    assert r.status.endswith("[placement]"), r
    assert_totals(r, placement_totals(cloud))
    assert value(r, "hypervisors") == 3 and value(r, "hypervisors_usable") == 3
    assert value(r, "hypervisors_down") == 0 and value(r, "hypervisors_disabled") == 0
    for name, h in hosts(cloud).items():
        for resource in UNIT:
            inv = h["placement"][CLASS[resource]]
            token = r.perf[f"{name}.{resource}_used"]
            assert token[0] == inv["used"] * UNIT[resource], (name, resource, r)
            assert float(token[5]) == inv["capacity"] * UNIT[resource], (name, resource, r)
    assert len(r.lines) == 4            # the three cloud totals; no hypervisor has a problem


def test_overcommitted_host(cloud, state_dir):
    """compute3 holds 17 vCPUs on 16 physical ones, at cpu_allocation_ratio 4.0."""
    c3 = hosts(cloud)["compute3"]
    assert c3["placement"]["VCPU"]["used"] == 17 and c3["vcpus"] == 16
    assert c3["placement"]["VCPU"]["allocation_ratio"] == 4.0
    r = run(cloud, state_dir, "--hypervisor", "^compute3$", "-v")
    assert r.code == 0, r
    assert value(r, "vcpus_used") == 17 and value(r, "vcpus_capacity") == 64
    assert value(r, "vcpus_used_pct") == round(100 * 17 / 64, 2)
    assert "vCPUs 17/64 (27%)" in r.stdout, r
    legacy = run(cloud, state_dir, "--hypervisor", "^compute3$", "--source", "nova", "-v")
    assert legacy.code == 0, legacy
    assert value(legacy, "vcpus_used") == 17 and value(legacy, "vcpus_capacity") == 16
    assert value(legacy, "vcpus_free") == 0                  # never negative
    assert value(legacy, "vcpus_used_pct") == round(100 * 17 / 16, 2)
    assert "vCPUs 17/16 (106%)" in legacy.stdout, legacy


def test_free_is_summed_host_by_host_beside_an_overcommitted_host(cloud, state_dir):
    """Product bug (fixed): cloud free was total capacity - total used, so compute3's
    over-commit (17 vCPUs on 16 in Nova's legacy fields) ate compute2's room: 57 free where
    58 vCPUs can still be placed. Free is the sum over hosts of max(0, capacity - used), as
    the flavor room counts it."""
    legacy = {name: h["legacy"] for name, h in hosts(cloud).items()}
    chosen = ["compute2", "compute3"]
    assert legacy["compute3"]["vcpus_used"] > legacy["compute3"]["vcpus"]     # over-committed
    naive = sum(legacy[n]["vcpus"] - legacy[n]["vcpus_used"] for n in chosen)
    free = sum(max(0, legacy[n]["vcpus"] - legacy[n]["vcpus_used"]) for n in chosen)
    assert free == naive + 1
    args = ("--source", "nova", "--hypervisor", "^compute[23]$", "--flavor", "m1.small")
    r = run(cloud, state_dir, *args, "-w", f"vcpus_free={free}:")
    assert r.code == 0, r
    assert value(r, "vcpus_free") == free, r
    assert f"vCPUs {free} free" not in r.status
    r = run(cloud, state_dir, *args, "-w", f"vcpus_free={free + 1}:")
    assert r.code == 1 and f"cloud vCPUs {free} free < {free + 1}" in r.status, r
    # consistent with the flavor room: what fits of a 1-vCPU flavor is within the free vCPUs,
    # and by vCPUs alone exactly the free ones (compute3 has no room left)
    small = cloud.expected["flavors"]["m1.small"]
    c2 = legacy["compute2"]
    room = min((c2["vcpus"] - c2["vcpus_used"]) // small["vcpus"],
               (c2["memory_mb"] - c2["memory_mb_used"]) // small["ram"],
               (c2["local_gb"] - c2["local_gb_used"]) // small["disk"])
    assert value(r, "fits_m1.small") == room <= free, r


@pytest.mark.parametrize("microversion", ["2.1", "2.53"])
def test_legacy_fields_exact(cloud, state_dir, microversion):
    r = run(cloud, state_dir, "--source", "nova", "--nova-microversion", microversion, "-v")
    assert r.code == 0, r
    assert r.status.endswith("[nova]"), r
    assert f"Nova microversion {microversion}" in r.stdout, r
    assert_totals(r, legacy_totals(cloud))


def test_legacy_and_placement_agree_where_they_should(cloud, state_dir):
    placement = run(cloud, state_dir, "--source", "placement")
    auto = run(cloud, state_dir)
    v21 = run(cloud, state_dir, "--source", "nova", "--nova-microversion", "2.1")
    v253 = run(cloud, state_dir, "--source", "nova", "--nova-microversion", "2.53")
    assert placement.code == auto.code == v21.code == v253.code == 0
    assert placement.perf == auto.perf                      # auto picks Placement here
    assert v21.perf == v253.perf                            # same legacy fields at both
    # what instances use: the same in both, but for memory
    assert value(placement, "vcpus_used") == value(v21, "vcpus_used")
    assert value(placement, "disk_used") == value(v21, "disk_used")
    # Nova's memory_mb_used includes each host's reserved memory; Placement does not
    reserved = sum(h["reserved_host_memory_mb"] for h in hosts(cloud).values()) * 2**20
    assert reserved > 0
    assert value(v21, "memory_used") - value(placement, "memory_used") == reserved
    # capacity: Nova's is physical; Placement's is (total - reserved) x allocation ratio
    assert value(v21, "vcpus_capacity") == sum(h["vcpus"] for h in hosts(cloud).values()) * 1
    assert value(placement, "vcpus_capacity") == sum(
        h["vcpus"] * h["cpu_allocation_ratio"] for h in hosts(cloud).values())
    assert value(placement, "disk_capacity") == value(v21, "disk_capacity")   # ratio 1.0, none reserved


def test_thresholds_on_percent_and_free(cloud, state_dir):
    (vused, vcap, vfree), (_mused, _mcap, mfree), _disk = placement_totals(cloud).values()
    pct = 100 * vused / vcap
    below, above = math.floor(pct * 10) / 10, math.ceil(pct * 10) / 10 + 0.1
    r = run(cloud, state_dir, "-w", f"vcpus={below}%", "-c", f"vcpus={above}%")
    assert r.code == 1, r
    assert f"cloud vCPUs {pct:.1f}% used > {below:g}%" in r.status, r
    assert r.perf["vcpus_used_pct"][2:4] == (f"{below:g}", f"{above:g}")
    r = run(cloud, state_dir, "-c", f"vcpus={below}%")
    assert r.code == 2, r
    free_gib = mfree / 2**30
    r = run(cloud, state_dir, "-c", f"memory_free={math.ceil(free_gib) + 1}Gi:")
    assert r.code == 2 and "cloud memory" in r.status and "free <" in r.status, r
    r = run(cloud, state_dir, "-c", f"memory_free={math.floor(free_gib) - 1}Gi:",
            "-w", f"vcpus_free={vfree - 1}:")
    assert r.code == 0, r


def test_per_hypervisor_limits_name_the_worst(cloud, state_dir):
    pct = {name: 100 * h["placement"]["MEMORY_MB"]["used"] / h["placement"]["MEMORY_MB"]["capacity"]
           for name, h in hosts(cloud).items()}
    limit = 50
    over = sorted(n for n, p in pct.items() if p > limit)
    assert over == ["compute3"]
    r = run(cloud, state_dir, "--hypervisor-critical", f"memory={limit}%")
    assert r.code == 2, r
    assert f"1 of 3 hypervisors over limits: compute3 memory {pct['compute3']:.1f}% used > 50%" \
        in r.status, r
    assert any(line.startswith("CRITICAL: compute3 [up, enabled]") for line in r.lines), r
    assert not any("compute1" in line for line in r.lines[1:]), r


def test_flavor_room_counted_host_by_host(cloud, state_dir):
    r = run(cloud, state_dir, "--flavor", "m1.xlarge", "--flavor", "m1.small")
    assert r.code == 0, r
    for flavor in ("m1.xlarge", "m1.small"):
        expected = placement_fits(cloud, flavor)
        assert value(r, f"fits_{flavor}") == expected, (flavor, r)
        assert f"room for {expected} more {flavor}" in r.status, r
    # host by host is less than the cloud's free total divided by the flavor
    _v, (_mused, _mcap, mfree), _d = placement_totals(cloud).values()
    assert placement_fits(cloud, "m1.xlarge") < mfree // (16384 * 2**20)
    legacy = run(cloud, state_dir, "--flavor", "m1.xlarge", "--source", "nova")
    assert value(legacy, "fits_m1.xlarge") == legacy_fits(cloud, "m1.xlarge"), legacy
    enough = placement_fits(cloud, "m1.xlarge")
    r = run(cloud, state_dir, "--flavor", "m1.xlarge", "--flavor-warning", f"{enough + 1}:")
    assert r.code == 1 and f"room for {enough} more m1.xlarge, fewer than {enough + 1}" in r.status, r
    flavor_id = cloud.expected["flavors"]["m1.xlarge"]["id"]
    r = run(cloud, state_dir, "--flavor", flavor_id, "--flavor-critical", f"{enough + 1}:")
    assert r.code == 2, r
    r = run(cloud, state_dir, "--flavor", "no-such-flavor")
    assert r.code == 3 and "no flavor named 'no-such-flavor'" in r.status, r


def scheduler_needs(definition):
    """What Nova's scheduler asks of Placement for a flavor, by hand from its definition:
    VCPU, MEMORY_MB, DISK_GB = root + ephemeral + swap (MiB rounded up to GiB), then the
    resources:CLASS=N extra specs (0: none of that class)."""
    vcpus, ram, disk, ephemeral, swap, specs = definition
    needs = {"VCPU": vcpus, "MEMORY_MB": ram, "DISK_GB": disk + ephemeral + -(-swap // 1024)}
    for key, amount in specs.items():
        needs[key.split(":", 1)[1]] = int(amount)
    return {rc: n for rc, n in needs.items() if n}


def room_by_hand(cloud, needs, source):
    """{host: instances that still fit} from cloud.json's inventories (Placement: max_unit is
    the host's total, as Nova's driver reports it) or Nova's legacy fields."""
    rooms = {}
    for name, h in hosts(cloud).items():
        counts = []
        for rc, need in needs.items():
            if source == "placement":
                inv = h["placement"][rc]
                counts.append(0 if need > inv["total"]
                              else max(0, (inv["capacity"] - inv["used"]) // need))
            else:
                resource = {v: k for k, v in CLASS.items()}[rc]
                used, total = (h["legacy"][key] for key in LEGACY[resource])
                counts.append(max(0, (total - used) // need))
        rooms[name] = min(counts)
    return rooms


@pytest.mark.parametrize("source", ["placement", "nova"])
def test_flavor_room_with_extra_specs_swap_and_ephemeral(cloud, extra_flavors, state_dir, source):
    """Flavor room, per host and in all, for flavors whose needs are not just vcpus/ram/disk
    (resources:CLASS=N extra specs, swap, ephemeral disk), compared with numbers made by hand
    from what the cloud was given (cloud.json and the flavors' definitions)."""
    args = [a for name in extra_flavors for a in ("--flavor", name)]
    r = run(cloud, state_dir, "-v", "--source", source, "--flavor-critical", "0:", *args)
    assert r.code == 0, r
    assert f"[{source}]" in r.status, r
    for name, definition in extra_flavors.items():
        needs = scheduler_needs(definition)
        rooms = room_by_hand(cloud, needs, source)
        assert value(r, f"fits_{name}") == sum(rooms.values()), (name, rooms, r)
        shown = ", ".join(f"{rc} {n}" for rc, n in sorted(needs.items()))
        assert f"flavor {name} ({shown}): room for {sum(rooms.values())} more" in r.stdout, r
        for host, n in rooms.items():
            line = next(line for line in r.lines if line.startswith(f"OK: {host} ["))
            assert f"room for {n} {name}" in line, (host, name, n, line)
    # the definitions do matter: without extra specs, swap and ephemeral the room differs
    plain = {name: room_by_hand(cloud, {"VCPU": d[0], "MEMORY_MB": d[1], "DISK_GB": d[2]}, source)
             for name, d in extra_flavors.items()}
    assert any(sum(plain[name].values()) != value(r, f"fits_{name}") for name in extra_flavors)


def test_per_hypervisor_percentages_exact(cloud, state_dir):
    """Each hypervisor's used and % used, from cloud.json: Placement used / ((total -
    reserved) x ratio); Nova's legacy used / total (no ratio, memory used with the reservation)."""
    for source in ("placement", "nova"):
        r = run(cloud, state_dir, "--perfdata-per-hypervisor", "--source", source)
        assert r.code == 0, r
        for name, h in hosts(cloud).items():
            for resource in UNIT:
                if source == "placement":
                    inv = h["placement"][CLASS[resource]]
                    used, capacity = inv["used"], inv["capacity"]
                else:
                    used, capacity = (h["legacy"][key] for key in LEGACY[resource])
                assert value(r, f"{name}.{resource}_used") == used * UNIT[resource], (name, r)
                assert value(r, f"{name}.{resource}_used_pct") == round(100 * used / capacity, 2), \
                    (source, name, resource, r)


def test_selection_by_aggregate_zone_and_name(cloud, state_dir):
    agg = cloud.expected["aggregates"]["agg-big"]
    r = run(cloud, state_dir, "--aggregate", "agg-big")
    assert r.code == 0 and value(r, "hypervisors") == len(agg["hosts"]), r
    assert_totals(r, placement_totals(cloud, agg["hosts"]))
    default_az = [n for n, h in hosts(cloud).items()
                  if h["availability_zone"] == cloud.expected["default_availability_zone"]]
    r = run(cloud, state_dir, "--availability-zone", cloud.expected["default_availability_zone"])
    assert r.code == 0 and value(r, "hypervisors") == len(default_az), r
    assert_totals(r, placement_totals(cloud, default_az))
    r = run(cloud, state_dir, "--availability-zone", agg["availability_zone"], "--source", "nova")
    assert_totals(r, legacy_totals(cloud, agg["hosts"]))
    r = run(cloud, state_dir, "--hypervisor", "compute[13]", "--exclude-hypervisor", "1$")
    assert value(r, "hypervisors") == 1 and value(r, "vcpus_capacity") == 64, r
    for args, words in ((["--aggregate", "nope"], "no host aggregate named 'nope' (known: agg-big)"),
                        (["--availability-zone", "nope"], "no availability zone named 'nope'"),
                        (["--hypervisor", "^nothing$"], "no hypervisor matches the selection")):
        r = run(cloud, state_dir, *args)
        assert r.code == 3 and words in r.status and len(r.lines) == 1, r


def test_down_and_disabled_hypervisors(mutable_cloud, state_dir):
    cloud = mutable_cloud
    with cloud.forced_down("compute3"), cloud.disabled("compute1", reason="nlc maintenance"):
        r = run(cloud, state_dir, "--flavor", "m1.xlarge")
        assert r.code == 2, r
        assert r.status.startswith(
            "HYPERVISORS CRITICAL - 1 of 3 hypervisors down: compute3 - "
            "1 of 3 hypervisors up and enabled (1 down, 1 disabled)"), r
        assert value(r, "hypervisors_down") == 1 and value(r, "hypervisors_disabled") == 1
        assert value(r, "hypervisors_usable") == 1
        assert_totals(r, placement_totals(cloud, ["compute2"]))       # only the usable one
        assert value(r, "fits_m1.xlarge") == placement_fits(cloud, "m1.xlarge", ["compute2"])
        assert "CRITICAL: compute3 [down, enabled]" in r.stdout, r
        assert "OK: compute1 [up, disabled, reason: nlc maintenance]" in r.stdout, r
        r = run(cloud, state_dir, "--down-warning", "0", "--disabled-warning", "0")
        assert r.code == 1, r
        assert "1 of 3 hypervisors down: compute3" in r.status, r
        assert "1 of 3 hypervisors disabled: compute1" in r.status, r
        r = run(cloud, state_dir, "--down-critical", "2", "--hypervisor", "compute[23]")
        assert r.code == 0 and value(r, "hypervisors") == 2, r
    r = run(cloud, state_dir)
    assert r.code == 0 and value(r, "hypervisors_usable") == 3, r
    # a limit broken by none: no empty list of names ("0 of 3 hypervisors disabled:  -")
    r = run(cloud, state_dir, "--disabled-warning", "@0")
    assert r.code == 1 and r.status.startswith(
        "HYPERVISORS WARNING - 0 of 3 hypervisors disabled - 3 of 3 hypervisors up and enabled"), r


def test_disabled_host_keeps_its_availability_zone(mutable_cloud, state_dir):
    """Product bug (fixed): zone members came from /os-availability-zone/detail, which lists
    enabled services only: a disabled host vanished from its zone (counts, perfdata,
    --disabled-warning), and a zone whose hosts were all disabled gave "no hypervisor
    matches". The zone is now each compute service's (microversion 2.53)."""
    cloud = mutable_cloud
    big = cloud.expected["aggregates"]["agg-big"]
    zone = big["availability_zone"]
    only = big["hosts"]
    assert len(only) == 1
    default = cloud.expected["default_availability_zone"]
    in_default = sorted(n for n, h in hosts(cloud).items() if h["availability_zone"] == default)
    with cloud.disabled(only[0], reason="nlc zone test"):
        r = run(cloud, state_dir, "--availability-zone", zone, "--disabled-warning", "0")
        assert r.code == 1, r
        assert f"1 of 1 hypervisor disabled: {only[0]}" in r.status, r
        assert value(r, "hypervisors") == 1 and value(r, "hypervisors_disabled") == 1, r
        assert value(r, "hypervisors_usable") == 0, r
        assert "no usable capacity" in r.status, r
    with cloud.disabled(in_default[0], reason="nlc zone test"):
        r = run(cloud, state_dir, "--availability-zone", default, "-v")
        assert r.code == 0, r
        assert value(r, "hypervisors") == len(in_default), r
        assert value(r, "hypervisors_disabled") == 1, r
        assert f"OK: {in_default[0]} [up, disabled, reason: nlc zone test]" in r.stdout, r
        assert_totals(r, placement_totals(cloud, in_default[1:]))


# ---------------------------------------------------------------- the token cache

def test_token_reused_across_runs(cloud, keystone_user, state_dir):
    env = base_env(cloud, state_dir, **keystone_user.env)
    runs = 5
    before = keystone_user.token_requests()
    results = [run(cloud, state_dir, "-v", env=env)]
    written = os.stat(token_file(state_dir)).st_mtime_ns
    results += [run(cloud, state_dir, "-v", env=env) for _ in range(runs - 1)]
    after = keystone_user.token_requests()
    assert os.stat(token_file(state_dir)).st_mtime_ns == written     # unchanged: not rewritten
    assert all(r.code == 0 for r in results), results
    assert after - before == 1, f"{runs} runs issued {after - before} tokens"
    assert "new token" in results[0].stdout
    assert all("token reused from the cache" in r.stdout for r in results[1:])
    assert os.stat(state_dir).st_mode & 0o777 == 0o700
    assert os.stat(token_file(state_dir)).st_mode & 0o777 == 0o600


def test_each_identity_and_scope_has_its_own_cached_token(cloud, keystone_user, state_dir):
    """The token file is found by keystoneauth's cache id (auth URL, credentials, scope): two
    users, or one user in two scopes, never share a token; each reuses its own."""
    env = base_env(cloud, state_dir, **keystone_user.env)
    before = keystone_user.token_requests()
    assert run(cloud, state_dir, env=env).code == 0
    assert run(cloud, state_dir).code == 0                            # admin
    scoped = dict(env, OS_PROJECT_DOMAIN_NAME=None, OS_PROJECT_DOMAIN_ID="default")
    assert run(cloud, state_dir, env={k: v for k, v in scoped.items() if v}).code == 0
    tokens = [f for f in os.listdir(state_dir) if f.startswith("token-") and f.endswith(".json")]
    assert len(tokens) == 3, tokens
    assert keystone_user.token_requests() - before == 2
    for again in (env, None, {k: v for k, v in scoped.items() if v}):
        r = run(cloud, state_dir, "-v", env=again)
        assert r.code == 0 and "token reused from the cache" in r.stdout, r
    assert keystone_user.token_requests() - before == 2


def test_rejected_cached_token_means_one_new_login(cloud, keystone_user, state_dir):
    env = base_env(cloud, state_dir, **keystone_user.env)
    assert run(cloud, state_dir, env=env).code == 0

    def reject(state):     # a well-formed token keystone never issued, still "valid" by its expiry
        state["auth_token"] = "gAAAAABnot-a-token-keystone-issued" + "x" * 150
    edit_cached_token(state_dir, reject)
    _, before = run_with_a_refused_cached_token(cloud, state_dir, env, keystone_user)
    assert run(cloud, state_dir, env=env).code == 0
    assert keystone_user.token_requests() - before == 1      # the new one was kept


def test_expired_cached_token_means_one_new_login(cloud, keystone_user, state_dir):
    env = base_env(cloud, state_dir, **keystone_user.env)
    assert run(cloud, state_dir, env=env).code == 0

    def expire(state):
        state["body"]["token"]["expires_at"] = "2001-01-01T00:00:00.000000Z"
    edit_cached_token(state_dir, expire)
    before = keystone_user.token_requests()
    r = run(cloud, state_dir, "-vv", env=env)
    assert r.code == 0, r
    assert keystone_user.token_requests() - before == 1
    assert "-> 401" not in r.stdout, r                 # not even tried: it had expired


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]",
                                     b'{"version": 1, "cache_id": "x", "auth_state": "{}"}'])
def test_corrupted_cache_means_one_new_login(cloud, keystone_user, state_dir, content):
    env = base_env(cloud, state_dir, **keystone_user.env)
    assert run(cloud, state_dir, env=env).code == 0
    with open(token_file(state_dir), "wb") as f:
        f.write(content)
    before = keystone_user.token_requests()
    r = run(cloud, state_dir, env=env)
    assert r.code == 0, r
    assert keystone_user.token_requests() - before == 1
    assert run(cloud, state_dir, env=env).code == 0
    assert keystone_user.token_requests() - before == 1


def test_cached_token_file_is_never_followed_as_a_symlink(cloud, state_dir, tmp_path):
    assert run(cloud, state_dir).code == 0
    path = token_file(state_dir)
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    os.unlink(path)
    os.symlink(target, path)
    r = run(cloud, state_dir)
    assert r.code == 0, r
    assert target.read_text() == "precious"
    assert not os.path.islink(path)                    # replaced by a real file of ours


# ---------------------------------------------------------------- credentials

def test_clouds_yaml_password_and_application_credential(cloud, state_dir):
    env = base_env(cloud, state_dir)
    for key in list(env):
        if key.startswith("OS_"):
            del env[key]
    env.update(OS_CLIENT_CONFIG_FILE=cloud.clouds_yaml, OS_CLIENT_SECURE_FILE=cloud.secure_yaml)
    r = run(cloud, state_dir, "--os-cloud", "nlc", env=env)
    assert r.code == 0, r
    assert_totals(r, placement_totals(cloud))
    r = run(cloud, state_dir, "-v", env=dict(env, OS_CLOUD="nlc-appcred"))    # $OS_CLOUD
    assert r.code == 0, r
    assert_totals(r, placement_totals(cloud))
    assert f"application credential {cloud.expected['application_credential']['id']}" in r.stdout
    r = run(cloud, state_dir, "--os-cloud", "no-such-cloud", env=env)
    assert r.code == 3 and "no-such-cloud" in r.status and len(r.lines) == 1, r


def test_application_credential_from_the_environment(cloud, keystone_user, state_dir):
    cred = keystone_user.app_credential()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "NOVA_LIBVIRT_CHECKS_STATE_DIR": state_dir,
           "OS_AUTH_TYPE": "v3applicationcredential", "OS_AUTH_URL": cloud.env["OS_AUTH_URL"],
           "OS_APPLICATION_CREDENTIAL_ID": cred["id"],
           "OS_APPLICATION_CREDENTIAL_SECRET": cred["secret"],
           "OS_REGION_NAME": cloud.env["OS_REGION_NAME"]}
    logins = lambda: sum(1 for e in cloud.token_log_entries()   # noqa: E731
                         if e.get("app_cred") == cred["id"] and e.get("status") == 201)
    before = logins()
    for _ in range(3):
        r = run(cloud, state_dir, "-v", env=env)
        assert r.code == 0, r
        assert_totals(r, placement_totals(cloud))
    assert logins() - before == 1
    assert f"application credential {cred['id']}" in r.stdout, r


def test_wrong_password_is_unknown_in_one_line(cloud, state_dir):
    r = run(cloud, state_dir, env=base_env(cloud, state_dir, OS_PASSWORD="wrong-pass-5e3a"))
    assert r.code == 3, r
    assert len(r.lines) == 1 and r.stderr == "", r
    assert r.status.startswith("HYPERVISORS UNKNOWN - login to ") and "HTTP 401" in r.status, r
    assert "wrong-pass-5e3a" not in r.stdout


def test_no_secret_in_output_at_any_verbosity(cloud, state_dir):
    password = cloud.env["OS_PASSWORD"]
    cred_secret = cloud.expected["application_credential"]["secret"]
    wrong = "wrong-pass-77c1"
    outputs = []
    for verbosity in ("-v", "-vv", "-vvv"):
        outputs.append(run(cloud, state_dir, verbosity))
        outputs.append(run(cloud, state_dir, verbosity,
                           env=base_env(cloud, state_dir, OS_PASSWORD=wrong)))
        outputs.append(run(cloud, state_dir, verbosity, "--os-cloud", "nlc-appcred",
                           env=dict(base_env(cloud, state_dir),
                                    OS_CLIENT_CONFIG_FILE=cloud.clouds_yaml,
                                    OS_CLIENT_SECURE_FILE=cloud.secure_yaml)))
        outputs.append(run(cloud, state_dir, verbosity, "--os-region-name", "nowhere"))
    outputs.append(run(cloud, state_dir, "--help"))
    tokens = []
    for name in os.listdir(state_dir):
        if name.startswith("token-") and name.endswith(".json"):
            with open(os.path.join(state_dir, name)) as f:
                tokens.append(json.loads(json.load(f)["auth_state"])["auth_token"])
    assert len(tokens) == 2                            # password and application credential
    assert any(r.code == 0 for r in outputs) and any(r.code == 3 for r in outputs)
    for r in outputs:
        text = r.stdout + r.stderr
        for secret in [password, cred_secret, wrong] + tokens:
            assert secret not in text, (secret[:4] + "...", r)


# ---------------------------------------------------------------- failures

def test_nova_api_stopped_is_unknown_within_the_timeout(mutable_cloud, state_dir):
    cloud = mutable_cloud
    assert run(cloud, state_dir).code == 0             # a cached token: Keystone is not the issue
    with cloud.service_stopped("nova-api"):
        r = run(cloud, state_dir, "-t", "5")
        assert r.code == 3, r
        assert r.elapsed < 6, r
        assert len(r.lines) == 1 and "Nova" in r.status, r
        assert "connection refused" in r.status, r
    assert run(cloud, state_dir).code == 0


def test_stalled_keystone_is_unknown_within_the_timeout(cloud, state_dir):
    peer = StalledPeer()
    try:
        env = base_env(cloud, state_dir, OS_AUTH_URL=f"http://127.0.0.1:{peer.port}/v3")
        r = run(cloud, state_dir, "-t", "3", env=env)
    finally:
        peer.close()
    assert r.code == 3, r
    assert r.elapsed < 3 + 1, r
    assert len(r.lines) == 1 and f"127.0.0.1:{peer.port}" in r.status, r
    assert "did not answer within the timeout of 3 s" in r.status, r


def test_keystone_unreachable_is_unknown(cloud, state_dir):
    with socket.socket() as s:                         # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run(cloud, state_dir, env=base_env(cloud, state_dir,
                                           OS_AUTH_URL=f"http://127.0.0.1:{port}/v3"))
    assert r.code == 3 and len(r.lines) == 1, r
    assert "cannot connect to Keystone" in r.status and "connection refused" in r.status, r


def test_endpoint_missing_from_the_catalog(cloud, state_dir):
    r = run(cloud, state_dir, "--os-region-name", "nowhere")
    assert r.code == 3 and len(r.lines) == 1, r
    assert "no compute endpoint (public, region nowhere) in the Keystone catalog" in r.status, r
    r = run(cloud, state_dir, "--os-region-name", "nowhere", "--source", "placement")
    assert r.code == 3 and "no placement endpoint" in r.status, r


def test_missing_credentials(cloud, state_dir):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NOVA_LIBVIRT_CHECKS_STATE_DIR": state_dir}
    r = run(cloud, state_dir, env=env)
    assert r.code == 3 and len(r.lines) == 1 and "OS_AUTH_URL" in r.status, r


def test_forbidden_user_is_unknown(cloud, state_dir):
    reader = cloud.expected["reader"]
    env = base_env(cloud, state_dir, OS_USERNAME=reader["username"], OS_PASSWORD=reader["password"],
                   OS_PROJECT_NAME=reader["project_name"])
    r = run(cloud, state_dir, env=env)
    assert r.code == 3 and len(r.lines) == 1, r
    assert "HTTP 403" in r.status and "os-hypervisors" in r.status, r


@pytest.mark.parametrize("args, option", [
    (["-w", "vcpus=80"], "-w/--warning"),                    # % used needs its %
    (["-c", "memory_free=64Gi"], "-c/--critical"),           # would alert on MORE free
    (["-c", "memory_free=64:"], "-c/--critical"),            # a size needs a unit
    (["-w", "cpus=80%"], "-w/--warning"),
    (["-w", "vcpus=eighty%"], "-w/--warning"),
    (["--hypervisor-warning", "disk_free=5%"], "--hypervisor-warning"),
    (["-w", "vcpus=80%", "-c", "vcpus=90%", "-w", "vcpus=85%"], "-w/--warning: vcpus given twice"),
    (["--hypervisor-critical", "memory_free=1Gi:", "--hypervisor-critical", "memory_free=2Gi:"],
     "--hypervisor-critical: memory_free given twice"),
    (["--flavor", "m1.small", "--flavor-critical", "3"], "--flavor-critical"),
    (["--down-critical", "x"], "--down-critical"),
    (["--disabled-warning", "1:0:"], "--disabled-warning"),
    (["--hypervisor", "comp("], "--hypervisor"),
    (["--source", "magic"], "--source"),
    (["-t", "0"], "-t/--timeout"),
])
def test_invalid_arguments_are_unknown_naming_the_option(cloud, keystone_user, state_dir, args, option):
    before = keystone_user.token_requests()
    r = run(cloud, state_dir, *args, env=base_env(cloud, state_dir, **keystone_user.env))
    assert r.code == 3, r
    assert len(r.lines) == 1 and r.status.startswith("HYPERVISORS UNKNOWN - invalid argument"), r
    assert option in r.status, r
    assert keystone_user.token_requests() == before        # no login for a bad command line


def test_module_imports_cheaply():
    code = ("import sys; sys.path.insert(0, 'lib'); import nova_libvirt_checks.hypervisors; "
            "import nova_libvirt_checks.openstack; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('keystoneauth1', 'novaclient', 'openstack', 'requests')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out


def test_without_the_nova_extra_the_check_names_the_pip_command(tmp_path):
    """A host with the base install only (nagiosplugin, and here not even libvirt-python or
    lxml, which this check does not use): a real venv without keystoneauth1,
    python-novaclient and openstacksdk. The console script answers UNKNOWN in one line naming
    the pip command of the [nova] extra; --help still works."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check", "-c", os.path.join(ROOT, "constraints.txt")]
    for args in (["nagiosplugin"], ["--no-deps", ROOT]):
        out = subprocess.run(pip + args, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
    check = str(venv / "bin" / "check_nova_hypervisors")
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import keystoneauth1"],
                           capture_output=True)
    assert probe.returncode != 0                         # really without the libraries
    env = {"PATH": "/usr/bin:/bin", "OS_AUTH_URL": "http://127.0.0.1:9/v3",
           "NOVA_LIBVIRT_CHECKS_STATE_DIR": str(tmp_path / "state")}
    r = subprocess.run([check], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 3 and r.stderr == "", r
    assert r.stdout == ("HYPERVISORS UNKNOWN - the OpenStack libraries are not installed "
                        "(keystoneauth1, python-novaclient, openstacksdk): pip install "
                        "'nova-libvirt-checks[nova]'\n"), r.stdout
    r = subprocess.run([check, "--help"], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 3 and "--os-cloud" in r.stdout, r


# ---------------------------------------------------------------- answers the real cloud never gives
# The stand-in server (tests/stub_openstack.py) for what a healthy Nova / Placement cannot be
# made to do on demand (a 5xx, malformed JSON, a Nova older than 2.53, pages of hypervisors).

class StubCloud(StubOpenStack):
    def __init__(self, hypervisors=3, max_microversion="2.104", page_size=1000, fail=None,
                 tls=None):
        self.hypervisors = [{"id": f"00000000-0000-4000-8000-{i:012d}", "name": f"hv{i}",
                             "vcpus": 8, "used": i} for i in range(1, hypervisors + 1)]
        self.max_microversion = max_microversion
        self.page_size = page_size
        self.fail = fail or {}          # path fragment -> (status, body bytes)
        super().__init__(tls=tls)

    def answer(self, path, version):
        for fragment, (status, body) in self.fail.items():
            if fragment in path:
                return status, body
        if "/os-hypervisors/detail" in path:
            wanted = version.split()[-1] if version.startswith("compute") else "2.1"
            if tuple(map(int, wanted.split("."))) > tuple(map(int, self.max_microversion.split("."))):
                return 406, json.dumps({"computeFault": {"code": 406, "message": (
                    f"Version {wanted} is not supported by the API. Minimum is 2.1 and maximum "
                    f"is {self.max_microversion}.")}}).encode()
            legacy = wanted == "2.1"
            start = 0
            if "marker=" in path:
                marker = path.split("marker=")[1]
                start = [h["id"] for h in self.hypervisors].index(marker) + 1
            page = self.hypervisors if legacy else self.hypervisors[start:start + self.page_size]
            body = {"hypervisors": [{
                "id": i + 1 if legacy else h["id"], "hypervisor_hostname": h["name"],
                "state": "up", "status": "enabled",
                "service": {"host": h["name"], "id": 1, "disabled_reason": None},
                "vcpus": h["vcpus"], "vcpus_used": h["used"], "memory_mb": 1024,
                "memory_mb_used": 512, "local_gb": 10, "local_gb_used": 1}
                for i, h in enumerate(page)]}
            if not legacy and start + self.page_size < len(self.hypervisors):
                body["hypervisors_links"] = [{"rel": "next", "href": "..."}]
            return 200, json.dumps(body).encode()
        if path.endswith("/resource_providers"):
            return 200, json.dumps({"resource_providers": [
                {"uuid": h["id"], "name": h["name"]} for h in self.hypervisors]}).encode()
        for h in self.hypervisors:
            if h["id"] in path and path.endswith("/inventories"):
                return 200, json.dumps({"inventories": {"VCPU": {
                    "total": h["vcpus"], "reserved": 0, "allocation_ratio": 2.0, "min_unit": 1,
                    "max_unit": h["vcpus"], "step_size": 1}}}).encode()
            if h["id"] in path and path.endswith("/usages"):
                return 200, json.dumps({"usages": {"VCPU": h["used"]}}).encode()
        return 404, b'{"error": "not found"}'

    def run(self, tmp_path, *args):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "NOVA_LIBVIRT_CHECKS_STATE_DIR": str(tmp_path / "state")}
        started = time.monotonic()
        proc = subprocess.run([sys.executable, CHECK, *self.argv(*args)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=30)
        return Result(proc, time.monotonic() - started)


@pytest.fixture
def stub():
    made = []

    def make(**kwargs):
        made.append(StubCloud(**kwargs))
        return made[-1]
    yield make
    for s in made:
        s.close()


def test_stub_nova_5xx_is_unknown(stub, tmp_path):
    s = stub(fail={"/os-hypervisors/detail": (500, json.dumps(
        {"computeFault": {"code": 500, "message": "Unexpected API Error."}}).encode())})
    r = s.run(tmp_path)
    assert r.code == 3 and len(r.lines) == 1, r
    assert r.status == ("HYPERVISORS UNKNOWN - Nova failed: HTTP 500 for GET /os-hypervisors/detail: "
                        "Unexpected API Error."), r


def test_stub_placement_5xx_is_unknown(stub, tmp_path):
    s = stub(fail={"/usages": (503, b'{"errors": [{"status": 503, "title": "Service Unavailable",'
                                     b' "detail": "placement is resting"}]}')})
    r = s.run(tmp_path)
    assert r.code == 3 and len(r.lines) == 1, r
    assert "Placement failed: HTTP 503 for GET /resource_providers/" in r.status, r
    assert "placement is resting" in r.status, r


def test_stub_malformed_json_is_unknown(stub, tmp_path):
    s = stub(fail={"/os-hypervisors/detail": (200, b"<html>a proxy's error page</html>")})
    r = s.run(tmp_path)
    assert r.code == 3 and len(r.lines) == 1, r
    assert "Nova answered GET /os-hypervisors/detail with malformed JSON" in r.status, r
    s = stub(fail={"/os-hypervisors/detail": (200, b'{"hypervisors": "not a list"}')})
    r = s.run(tmp_path)
    assert r.code == 3 and "without a 'hypervisors' list" in r.status, r


def test_stub_old_nova_falls_back_to_2_1(stub, tmp_path):
    s = stub(max_microversion="2.25")
    r = s.run(tmp_path, "-v")
    assert r.code == 0, r
    assert "Nova microversion 2.1" in r.stdout, r
    # ids are integers at 2.1: Placement providers are found by name
    assert value(r, "vcpus_used") == 1 + 2 + 3 and value(r, "vcpus_capacity") == 3 * 16, r
    versions = [(headers["OpenStack-API-Version"], headers["X-OpenStack-Nova-API-Version"])
                for path, headers in s.headers_seen if "os-hypervisors" in path]
    # novaclient sends 2.1 in the legacy header alone (OpenStack-API-Version exists from 2.27)
    assert versions == [("compute 2.53", "2.53"), (None, "2.1")], s.headers_seen


def test_stub_pages_of_hypervisors(stub, tmp_path):
    s = stub(hypervisors=5, page_size=2)
    r = s.run(tmp_path, "--perfdata-per-hypervisor")
    assert r.code == 0, r
    assert value(r, "hypervisors") == 5 and value(r, "vcpus_used") == 15, r
    assert all(f"hv{i}.vcpus_used" in r.perf for i in range(1, 6)), r
    assert len([p for p, _v in s.seen if "os-hypervisors" in p]) == 3, s.seen


# ---------------------------------------------------------------- output size (--max-output)

def test_output_bounded_with_thousands_of_hypervisors(stub, tmp_path):
    """4000 hypervisors with --perfdata-per-hypervisor would be ~700 KB: the output stays
    within --max-output (default 60000, under NRPE's 64 KB), the per-hypervisor perfdata goes
    first and says so, the cloud's perfdata and the totals stay exact."""
    n = 4000
    s = stub(hypervisors=n)
    r = s.run(tmp_path, "--source", "nova", "--perfdata-per-hypervisor")
    assert r.code == 0, r.stdout[:300]
    assert len(r.stdout.encode()) <= 60000, len(r.stdout.encode())
    assert value(r, "hypervisors") == n and value(r, "vcpus_used") == n * (n + 1) / 2
    assert value(r, "vcpus_capacity") == 8 * n
    assert not any("." in label for label in r.perf), list(r.perf)[:20]
    assert r.lines[-1] == "(per-hypervisor perfdata left out to stay under 60000 bytes)", r.lines[-3:]
    # -v: one line per hypervisor, cut from the end
    r = s.run(tmp_path, "--source", "nova", "--perfdata-per-hypervisor", "-v", "--max-output", "20000")
    assert r.code == 0 and 10000 < len(r.stdout.encode()) <= 20000, len(r.stdout.encode())
    assert value(r, "hypervisors") == n and "vcpus_used_pct" in r.perf
    # an NRPE v2 client: 1 KB, the status line (clipped) first
    r = s.run(tmp_path, "--source", "nova", "--perfdata-per-hypervisor", "-v", "--max-output", "1000")
    assert r.code == 0 and len(r.stdout.encode()) <= 1000, r
    assert r.status.startswith("HYPERVISORS OK - 4000 of 4000 hypervisors up and enabled"), r
    # where it fits, nothing is left out
    small = stub(hypervisors=20)
    r = small.run(tmp_path, "--source", "nova", "--perfdata-per-hypervisor")
    assert r.code == 0 and all(f"hv{i}.vcpus_used" in r.perf for i in range(1, 21)), r
    assert not any("left out" in line for line in r.lines), r


@pytest.mark.parametrize("text", ["0", "-5", "1e3", "lots", ""])
def test_max_output_must_be_a_positive_number(tmp_path, text):
    proc = subprocess.run([sys.executable, CHECK, "--max-output", text], cwd=ROOT, capture_output=True,
                          text=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                          "NOVA_LIBVIRT_CHECKS_STATE_DIR": str(tmp_path)})
    assert proc.returncode == 3 and proc.stdout.count("\n") == 1, proc
    assert proc.stdout.startswith("HYPERVISORS UNKNOWN - invalid argument: argument --max-output"), proc


# ---------------------------------------------------------------- the token cache, refused; TLS

def test_revoked_cached_token_means_one_fresh_login(cloud, keystone_user, tmp_path):
    """The cached token revoked in Keystone (as by a password change): Nova answers 401, the
    keystoneauth Session logs in exactly once and repeats the call; the new token is cached,
    and the next run reuses it without a login. (The token is cached by a run no service saw
    it in, so that no keystonemiddleware still remembers it as valid.)"""
    state_dir = str(tmp_path / "state")
    env = dict(keystone_user.env, PATH=os.environ.get("PATH", "/usr/bin:/bin"),
               NOVA_LIBVIRT_CHECKS_STATE_DIR=state_dir)
    r = run(cloud, state_dir, "--os-region-name", "nowhere", env=env)
    assert r.code == 3 and "no compute endpoint" in r.status, r
    with open(token_file(state_dir)) as f:
        revoked = json.loads(json.load(f)["auth_state"])["auth_token"]
    answer = cloud.admin_session().delete(f"{cloud.keystone_url}/auth/tokens", raise_exc=False,
                                          headers={"X-Subject-Token": revoked})
    assert answer.status_code == 204, answer.text
    r, before = run_with_a_refused_cached_token(cloud, state_dir, env, keystone_user)
    assert "new token; calls through a keystoneauth session" in r.stdout, r
    assert revoked not in r.stdout
    r = run(cloud, state_dir, "-v", env=env)
    assert r.code == 0 and "token reused from the cache" in r.stdout, r
    assert keystone_user.token_requests() - before == 1


def _certificate(tmp_path, san=True):
    cert, key = str(tmp_path / f"cert{san}.pem"), str(tmp_path / f"key{san}.pem")
    extra = ["-addext", "subjectAltName=IP:127.0.0.1"] if san else []
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1"] + extra, check=True,
                   capture_output=True)
    return cert, key


def test_tls_as_requests_verifies_it(stub, tmp_path):
    """HTTPS: the --os-cacert bundle, or no verification with --insecure; a certificate of an
    unknown CA is a one-line UNKNOWN naming TLS. A certificate with a CN and no subjectAltName
    gets the same answer on every run (there is one way to make the calls now, not a first
    and a warm one that differed): refused by urllib3 2 (the pinned libraries); urllib3 1.26
    (Debian 12's) still matches the CN."""
    if not shutil.which("openssl"):
        service_unavailable("no openssl to make a certificate")
    cert, key = _certificate(tmp_path)
    s = stub(tls=(cert, key))
    for args in (["--os-cacert", cert], ["--insecure"]):
        r = s.run(tmp_path, "-v", *args)
        assert r.code == 0 and value(r, "vcpus_used") == 6, r
    r = s.run(tmp_path)
    assert r.code == 3 and len(r.lines) == 1, r
    assert r.status.startswith("HYPERVISORS UNKNOWN - TLS failed with Nova (GET /os-hypervisors/"
                               "detail): "), r
    cn_cert, cn_key = _certificate(tmp_path, san=False)
    s = stub(tls=(cn_cert, cn_key))
    runs = [s.run(tmp_path, "--os-cacert", cn_cert) for _ in range(2)]
    assert runs[0].code == runs[1].code and runs[0].status == runs[1].status, runs
    import urllib3
    if int(urllib3.__version__.split(".")[0]) >= 2:
        assert runs[0].code == 3 and "TLS failed with Nova" in runs[0].status, runs[0]
