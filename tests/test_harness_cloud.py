"""The local test cloud (tests/harness/cloud) is real and reports exactly what it was given.

Read through keystoneauth1 + python-novaclient from the project's venv, as the checks do.
Expected numbers come from cloud.json, which `start` derives from the host sizes, flavors booted,
reservations and allocation ratios it configured (not from what the APIs report).
"""
import os
import subprocess
import time
import uuid

import pytest
import requests
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3
from novaclient import client as nova_client

from tests.fixtures_cloud import START

LEGACY = ("vcpus", "memory_mb", "local_gb", "vcpus_used", "memory_mb_used", "local_gb_used",
          "free_ram_mb", "free_disk_gb", "running_vms", "state", "status", "hypervisor_type")


def nova(cloud, microversion):
    return nova_client.Client(microversion, session=cloud.admin_session())


def hypervisors(cloud, microversion):
    return {h.hypervisor_hostname: h.to_dict() for h in nova(cloud, microversion).hypervisors.list(detailed=True)}


def test_hypervisors_legacy_fields_at_2_1(cloud):
    hv = hypervisors(cloud, "2.1")
    assert sorted(hv) == cloud.hosts == [f"compute{i}" for i in range(1, cloud.expected["ncompute"] + 1)]
    for host, exp in cloud.expected["hosts"].items():
        assert {k: hv[host][k] for k in LEGACY} == exp["legacy"], host
        assert isinstance(hv[host]["id"], int)
        assert isinstance(hv[host]["cpu_info"], str)
    # the over-committed host: 17 vCPUs placed on 16 physical
    assert (hv["compute3"]["vcpus"], hv["compute3"]["vcpus_used"]) == (16, 17)
    # memory_mb_used includes reserved_host_memory_mb, vcpus/disk have no reservation
    assert hv["compute1"]["memory_mb_used"] == 2048 + 8192 + 16384 + 512


def test_hypervisors_at_2_53_and_2_88(cloud):
    hv53 = hypervisors(cloud, "2.53")
    for host, exp in cloud.expected["hosts"].items():
        assert uuid.UUID(hv53[host]["id"]) and uuid.UUID(hv53[host]["service"]["id"])
        assert hv53[host]["service"]["host"] == host
        assert isinstance(hv53[host]["cpu_info"], dict)
        assert {k: hv53[host][k] for k in LEGACY} == exp["legacy"]
    hv88 = hypervisors(cloud, "2.88")
    for host in cloud.hosts:
        assert "vcpus" not in hv88[host] and "memory_mb_used" not in hv88[host]
        assert (hv88[host]["state"], hv88[host]["status"]) == ("up", "enabled")
        assert "uptime" in hv88[host]
    # statistics is gone from 2.88 on (404; novaclient refuses before asking)
    r = cloud.nova("GET", "/os-hypervisors/statistics", microversion="2.88")
    assert r.status_code == 404


def test_statistics(cloud):
    stats = nova(cloud, "2.1").hypervisor_stats.statistics().to_dict()
    exp = cloud.expected["statistics"]
    assert {k: stats[k] for k in exp} == exp
    assert exp["vcpus"] == 32 + 64 + 16 and exp["vcpus_used"] == 13 + 6 + 17


def test_placement_inventories_and_usages(cloud):
    rps = {rp["name"]: rp for rp in cloud.placement("GET", "/resource_providers").json()["resource_providers"]}
    for host, exp in cloud.expected["hosts"].items():
        rp = rps[host]
        assert rp["uuid"] == exp["resource_provider_uuid"]
        inv = cloud.placement("GET", f"/resource_providers/{rp['uuid']}/inventories").json()["inventories"]
        use = cloud.placement("GET", f"/resource_providers/{rp['uuid']}/usages").json()["usages"]
        for rc, e in exp["placement"].items():
            assert (inv[rc]["total"], inv[rc]["reserved"], inv[rc]["allocation_ratio"], use[rc]) == \
                (e["total"], e["reserved"], e["allocation_ratio"], e["used"]), (host, rc)
    c2 = cloud.expected["hosts"]["compute2"]["placement"]["MEMORY_MB"]
    assert (c2["allocation_ratio"], c2["capacity"]) == (1.5, int((262144 - 512) * 1.5))


def test_aggregate_and_availability_zones(cloud):
    agg = cloud.expected["aggregates"]["agg-big"]
    aggs = {a.name: a for a in nova(cloud, "2.53").aggregates.list()}
    assert aggs["agg-big"].hosts == ["compute2"] and aggs["agg-big"].uuid == agg["uuid"]
    assert aggs["agg-big"].availability_zone == "az-big"
    r = cloud.placement("GET", f"/resource_providers?member_of={agg['uuid']}")
    assert [rp["name"] for rp in r.json()["resource_providers"]] == ["compute2"]
    zones = cloud.nova("GET", "/os-availability-zone/detail").json()["availabilityZoneInfo"]
    compute_zones = {z["zoneName"]: sorted(h for h, svcs in (z["hosts"] or {}).items() if "nova-compute" in svcs)
                     for z in zones}
    assert compute_zones["az-big"] == ["compute2"]
    assert compute_zones["nova"] == sorted(h for h in cloud.hosts if h != "compute2")


def _password_session(cloud, password=None, user=None):
    e = user.env if user else cloud.env
    return ks_session.Session(auth=v3.Password(
        auth_url=e["OS_AUTH_URL"], username=e["OS_USERNAME"], password=password or e["OS_PASSWORD"],
        project_name=e["OS_PROJECT_NAME"], user_domain_name="Default", project_domain_name="Default"))


def test_token_requests_count_exactly_the_tokens_issued(cloud, keystone_user):
    user = keystone_user
    ac = user.app_credential()                       # one login as the user
    assert user.token_requests() == 1
    s1 = _password_session(cloud, user=user)
    token = s1.get_token()
    s1.get_token()                                   # cached in the session: no new request
    nova_client.Client("2.1", session=s1).hypervisors.list()    # uses the same token
    _password_session(cloud, user=user).get_token()  # a second session: a second token
    with pytest.raises(ks_exc.Unauthorized):
        _password_session(cloud, user=user, password="wrong").get_token()
    s3 = ks_session.Session(auth=v3.ApplicationCredential(
        auth_url=cloud.keystone_url, application_credential_id=ac["id"],
        application_credential_secret=ac["secret"]))
    nova_client.Client("2.1", session=s3).hypervisors.list()
    # validating a token is a GET: not counted
    r = requests.get(cloud.keystone_url + "/auth/tokens",
                     headers={"X-Auth-Token": token, "X-Subject-Token": token}, timeout=10)
    assert r.status_code == 200
    assert user.token_requests() == 1 + 2 + 1
    assert user.token_requests(method="password") == 3
    assert user.token_requests(method="application_credential") == 1
    assert user.token_requests(status=401) == 1
    # the env of the user works the way a check uses OS_* variables
    assert user.env["OS_USERNAME"] == user.name and user.env["OS_AUTH_URL"] == cloud.keystone_url


def test_token_log_agrees_with_keystone_request_log(cloud):
    def both():
        for _ in range(20):     # read until stable (a service user may log in meanwhile)
            a, b = cloud.token_requests(), cloud.request_log_token_issues()
            if a == b:
                return a, b
            time.sleep(0.1)
        return a, b
    a0, b0 = both()
    assert a0 == b0
    for _ in range(3):
        _password_session(cloud).get_token()
    a1, b1 = both()
    assert a1 == b1 and a1 - a0 >= 3


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")   # openstacksdk influxdb notice
def test_clouds_yaml_password_app_credential_and_reader(cloud):
    import openstack.config
    cfg = openstack.config.OpenStackConfig(config_files=[cloud.clouds_yaml],
                                           secure_files=[cloud.secure_yaml])
    for name in ("nlc", "nlc-appcred"):
        sess = cfg.get_one(cloud=name).get_session()
        hv = nova_client.Client("2.1", session=sess).hypervisors.list()
        assert sorted(h.hypervisor_hostname for h in hv) == cloud.hosts, name
    # a user without the admin role may not list hypervisors
    reader = cfg.get_one(cloud="nlc-reader").get_session()
    r = reader.get(cloud.nova_url + "/os-hypervisors", raise_exc=False)
    assert r.status_code == 403
    env = cloud.env
    assert env["OS_USERNAME"] == "admin" and env["OS_IDENTITY_API_VERSION"] == "3"
    with open(cloud.openrc) as f:
        assert f"export OS_AUTH_URL={cloud.keystone_url}\n" in f.read()


def test_force_down_and_disable_are_undone(mutable_cloud):
    cloud = mutable_cloud

    def state():
        return {h: (v["state"], v["status"], v["service"].get("disabled_reason"))
                for h, v in hypervisors(cloud, "2.53").items()}
    assert set(state().values()) == {("up", "enabled", None)}
    with cloud.forced_down("compute1"), cloud.disabled("compute3", "maintenance (nlc test)"):
        s = state()
        assert s["compute1"][0] == "down"
        assert s["compute3"][1:] == ("disabled", "maintenance (nlc test)")
        stats = nova(cloud, "2.1").hypervisor_stats.statistics().to_dict()
        assert stats["count"] == cloud.expected["ncompute"] - 1      # disabled: not counted
    assert set(state().values()) == {("up", "enabled", None)}
    # and without the context managers: Cloud.reset (mutable_cloud's teardown) puts it back
    cloud.disable("compute2", "left disabled on purpose")
    cloud.force_down("compute2")
    assert state()["compute2"] == ("down", "disabled", "left disabled on purpose")
    cloud.reset()
    assert state()["compute2"] == ("up", "enabled", None)
    svc = cloud.compute_services()["compute2"]
    assert (svc["status"], svc["forced_down"], svc["state"]) == ("enabled", False, "up")


@pytest.mark.parametrize("name", ["nova-api", "placement", "keystone"])
def test_stop_and_restart_api_service(mutable_cloud, name):
    cloud = mutable_cloud
    url = {"nova-api": cloud.nova_url, "placement": cloud.placement_url,
           "keystone": cloud.keystone_url}[name]
    with cloud.service_stopped(name):
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=5)
        assert not cloud.service_running(name)
    assert requests.get(url, timeout=5).status_code < 500
    # and it serves authenticated requests again (keystone: a new token; others: the old one)
    assert len(nova(cloud, "2.53").hypervisors.list()) == cloud.expected["ncompute"]
    if name == "keystone":
        assert _password_session(cloud).get_token()


def test_second_start_is_a_fast_no_op(cloud):
    r = subprocess.run([START], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "already running and healthy" in r.stdout
    # no timing asserted here (speed belongs in bench/): "already running and healthy" says
    # that nothing was started
    assert os.path.exists(os.path.join(cloud.dir, "cloud.json"))
