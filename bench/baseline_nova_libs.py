"""Baseline for check_nova_hypervisors: a script with the same libraries making the same calls.

keystoneauth1 Session (auth state restored from its own cache file unless --fresh, saved when
it changed), the hypervisor list through python-novaclient at 2.53 (the raw answer, as the
check reads it to follow the "next" links), each hypervisor's inventories and usages through
a keystoneauth Adapter for Placement (8 threads); prints one line. Credentials: the OS_*
variables of an openrc.
"""
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from keystoneauth1 import adapter, session
from keystoneauth1.identity import v3
from novaclient import client

env = os.environ
fresh = "--fresh" in sys.argv
cache = env.get("NLC_BASELINE_CACHE", "/tmp/nlc-baseline-auth-state.json")
auth = v3.Password(auth_url=env["OS_AUTH_URL"], username=env["OS_USERNAME"],
                   password=env["OS_PASSWORD"], project_name=env["OS_PROJECT_NAME"],
                   user_domain_name=env.get("OS_USER_DOMAIN_NAME", "Default"),
                   project_domain_name=env.get("OS_PROJECT_DOMAIN_NAME", "Default"))
loaded = None
if not fresh and os.path.exists(cache):
    with open(cache) as f:
        loaded = f.read()
    auth.set_auth_state(loaded)
sess = session.Session(auth=auth)
region, interface = env.get("OS_REGION_NAME"), env.get("OS_INTERFACE", "public")
nova = client.Client("2.53", session=sess, region_name=region, endpoint_type=interface)
_resp, body = nova.client.get("/os-hypervisors/detail")
hypervisors = body["hypervisors"]
placement = adapter.Adapter(sess, service_type="placement", region_name=region,
                            interface=interface, default_microversion="1.0")


def provider(uuid):
    return (placement.get(f"/resource_providers/{uuid}/inventories").json(),
            placement.get(f"/resource_providers/{uuid}/usages").json())


with ThreadPoolExecutor(max_workers=8) as pool:
    answers = list(pool.map(provider, [h["id"] for h in hypervisors]))
used = sum(use["usages"].get("VCPU", 0) for _inv, use in answers)
state = auth.get_auth_state()
if not fresh and state != loaded:
    with open(cache, "w") as f:
        f.write(state)
    os.chmod(cache, 0o600)
print(json.dumps({"hypervisors": len(hypervisors), "vcpus_used": used}))
