"""check_nova_hypervisors with 300 more hypervisors on the real local cloud (issue 11).

For this module one more nova-compute joins the shared cloud (fixtures_cloud.ExtraCompute: the
stock fake driver reporting 300 nodes through its set-nodes hook), and leaves it at the end,
failed or not: its compute service deleted, and with it the compute nodes, their resource
providers and the host mapping, so the tests after this one find cloud.json's world again
(the fixture checks it). A session killed inside leaves it to the next Cloud.reset().

Expected numbers are hand arithmetic on what the harness gave the fake driver (sizes, the
allocation ratios and reservation of cloud.json) and on cloud.json's own hosts, checked first
against Placement's raw answers for a sample of the new providers; --source nova against the
sums of Nova's raw hypervisor list. Cost: about 1.5-2 min on 2 cores, nearly all of it Nova
registering the 300 nodes (~80 s: one nova-compute, ~0.25 s a node) and deleting them (~15 s);
the four runs of the check take ~15 s.
"""
import random

import pytest

from tests.fixtures_cloud import ExtraCompute
from tests.test_nova_hypervisors import (CLASS, UNIT, base_env, placement_fits, placement_totals,
                                         run, value)

NODES = 300
SIZE = {"vcpus": 8, "memory_mb": 16384, "local_gb": 200}
NRPE_MAX = 65536


@pytest.fixture(scope="module")
def extra(cloud):
    with ExtraCompute(cloud, NODES, **SIZE) as compute:
        yield compute
    assert not compute.hypervisors() and not compute.providers(), "extra nodes left behind"
    assert sorted(cloud.compute_services()) == cloud.hosts
    print(f"\n{NODES} nodes: registered in {compute.seconds['start']:.0f} s, "
          f"removed in {compute.seconds['remove']:.0f} s")


def setting(cloud, name):
    """A setting every host of cloud.json shares (allocation ratios, reservations)."""
    values = {h[name] for h in cloud.expected["hosts"].values()}
    assert len(values) == 1, (name, values)
    return values.pop()


def node_inventory(cloud):
    """{class: (capacity, used)} of each new node, from what the harness gave its driver."""
    mib = setting(cloud, "reserved_host_memory_mb")
    return {"VCPU": (int(SIZE["vcpus"] * setting(cloud, "cpu_allocation_ratio")), 0),
            "MEMORY_MB": (int((SIZE["memory_mb"] - mib) * 1.0), 0),     # ExtraCompute's ram ratio
            "DISK_GB": (int(SIZE["local_gb"] * setting(cloud, "disk_allocation_ratio")), 0)}


def expected_totals(cloud):
    """{resource: (used, capacity, free)}: cloud.json's hosts plus the new nodes, free counted
    host by host."""
    base, node = placement_totals(cloud), node_inventory(cloud)
    out = {}
    for resource, (used, capacity, free) in base.items():
        cap, use = node[CLASS[resource]]
        out[resource] = (used + NODES * use * UNIT[resource],
                         capacity + NODES * cap * UNIT[resource],
                         free + NODES * max(0, cap - use) * UNIT[resource])
    return out


def test_placement_agrees_with_what_the_harness_gave(cloud, extra):
    assert len(extra.hypervisors()) == NODES
    for p in random.sample(extra.providers(), 5):
        inventories = cloud.placement("GET", f"/resource_providers/{p['uuid']}/inventories").json()
        usages = cloud.placement("GET", f"/resource_providers/{p['uuid']}/usages").json()
        got = {rc: (int((i["total"] - i["reserved"]) * i["allocation_ratio"]),
                    usages["usages"].get(rc, 0))
               for rc, i in inventories["inventories"].items()}
        assert got == node_inventory(cloud), p


def test_300_hypervisors_counted_and_summed(cloud, extra, keystone_user, state_dir):
    """Every hypervisor counted, totals, free room and flavor room exact, the output within
    --max-output (per-hypervisor perfdata left out, and said, where it would not fit), and
    one token for every run."""
    env = base_env(cloud, state_dir, **keystone_user.env)
    hosts = NODES + len(cloud.hosts)
    want = expected_totals(cloud)
    small = cloud.expected["flavors"]["m1.small"]
    need = {"VCPU": small["vcpus"], "MEMORY_MB": small["ram"], "DISK_GB": small["disk"]}
    fits = placement_fits(cloud, "m1.small") + NODES * min(
        (cap - use) // need[rc] for rc, (cap, use) in node_inventory(cloud).items())
    before = keystone_user.token_requests()

    # the default --max-output (60000, under NRPE's 64 KB): the per-hypervisor perfdata goes
    r = run(cloud, state_dir, "-t", "60", "--perfdata-per-hypervisor", "--flavor", "m1.small",
            env=env, timeout=120)
    assert r.code == 0, r
    assert r.status.startswith(f"HYPERVISORS OK - {hosts} of {hosts} hypervisors up and enabled"), r
    assert value(r, "hypervisors") == value(r, "hypervisors_usable") == hosts
    for resource, (used, capacity, free) in want.items():
        assert (value(r, f"{resource}_used"), value(r, f"{resource}_capacity"),
                value(r, f"{resource}_free")) == (used, capacity, free), (resource, r)
    assert value(r, "fits_m1.small") == fits, r
    assert len(r.stdout.encode()) <= 60000
    assert not any("." in label for label in r.perf if label != "fits_m1.small"), r
    assert r.lines[-1] == "(per-hypervisor perfdata left out to stay under 60000 bytes)", r

    # room enough: each hypervisor's own perfdata, exact; more than NRPE could carry
    r = run(cloud, state_dir, "-t", "60", "--perfdata-per-hypervisor", "--max-output", "10000000",
            env=env, timeout=120)
    assert r.code == 0 and len(r.stdout.encode()) > NRPE_MAX, len(r.stdout.encode())
    node = node_inventory(cloud)
    inventories = {name: node for name in extra.names}
    inventories.update({name: {rc: (i["capacity"], i["used"]) for rc, i in h["placement"].items()}
                        for name, h in cloud.expected["hosts"].items()})
    assert {label.split(".")[0] for label in r.perf if "." in label} == set(inventories)
    for name, inventory in inventories.items():
        for resource, rc in CLASS.items():
            capacity, used = inventory[rc]
            token = r.perf[f"{name}.{resource}_used"]
            assert (token[0], float(token[5])) == (used * UNIT[resource], capacity * UNIT[resource])
            assert value(r, f"{name}.{resource}_used_pct") == round(100 * used / capacity, 2)

    # a third of them: all their perfdata within NRPE's 64 KB, nothing left out
    r = run(cloud, state_dir, "-t", "60", "--perfdata-per-hypervisor", "--max-output", NRPE_MAX,
            r"--hypervisor=-node(0\d\d|100)$", env=env, timeout=120)
    assert r.code == 0 and len(r.stdout.encode()) <= NRPE_MAX, r
    assert value(r, "hypervisors") == 100
    assert {label.split(".")[0] for label in r.perf if "." in label} == set(extra.names[:100])
    assert not any("left out" in line for line in r.lines), r

    # Nova's legacy fields: the sums of its raw hypervisor list
    listed = cloud.nova("GET", "/os-hypervisors/detail?limit=1000", microversion="2.53").json()
    listed = listed["hypervisors"]
    assert len(listed) == hosts
    r = run(cloud, state_dir, "-t", "60", "--source", "nova", env=env, timeout=120)
    assert r.code == 0 and value(r, "hypervisors") == hosts, r
    for resource, (used, total) in {"vcpus": ("vcpus_used", "vcpus"),
                                    "memory": ("memory_mb_used", "memory_mb"),
                                    "disk": ("local_gb_used", "local_gb")}.items():
        assert value(r, f"{resource}_used") == sum(h[used] for h in listed) * UNIT[resource]
        assert value(r, f"{resource}_capacity") == sum(h[total] for h in listed) * UNIT[resource]
        assert value(r, f"{resource}_free") == sum(
            max(0, h[total] - h[used]) for h in listed) * UNIT[resource], (resource, r)

    assert keystone_user.token_requests() - before == 1, "one token for the four runs"
