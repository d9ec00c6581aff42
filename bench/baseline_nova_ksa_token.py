"""Reference (no target): the saved-token calls of baseline_nova_token.py made through
keystoneauth1 instead of the standard library - a v3 Password plugin whose auth state
(token + catalog) is saved with get_auth_state() and restored with set_auth_state(), and a
keystoneauth1 Session for the two GETs. The difference from baseline_nova_token.py is what
keystoneauth1 (import, plugin, session) costs.
"""
import os
import sys

from keystoneauth1 import session
from keystoneauth1.identity import v3

env = os.environ
cache = sys.argv[1]
auth = v3.Password(auth_url=env["OS_AUTH_URL"], username=env["OS_USERNAME"],
                   password=env["OS_PASSWORD"], project_name=env["OS_PROJECT_NAME"],
                   user_domain_name=env.get("OS_USER_DOMAIN_NAME", "Default"),
                   project_domain_name=env.get("OS_PROJECT_DOMAIN_NAME", "Default"))
try:
    with open(cache) as saved:
        previous = saved.read()
    auth.set_auth_state(previous)            # ignored by keystoneauth1 when (nearly) expired
except OSError:
    previous = None
sess = session.Session(auth=auth)
where = {"service_type": "compute", "interface": env.get("OS_INTERFACE", "public"),
         "region_name": env.get("OS_REGION_NAME")}
headers = {"OpenStack-API-Version": "compute 2.1", "X-OpenStack-Nova-API-Version": "2.1"}
hypervisors = sess.get("/os-hypervisors/detail", endpoint_filter=where, headers=headers).json()["hypervisors"]
stats = sess.get("/os-hypervisors/statistics", endpoint_filter=where,
                 headers=headers).json()["hypervisor_statistics"]
state = auth.get_auth_state()
if state != previous:
    tmp = cache + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        out.write(state)
    os.replace(tmp, cache)
up = sum(1 for h in hypervisors if h["state"] == "up")
print(f"{len(hypervisors)} hypervisors ({up} up), vCPUs {stats['vcpus_used']}/{stats['vcpus']}, "
      f"RAM {stats['memory_mb_used']}/{stats['memory_mb']} MB")
