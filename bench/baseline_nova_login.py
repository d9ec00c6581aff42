"""Baseline for check_nova_hypervisors: the way existing Nova plugins do it.

A fresh Keystone password login on every run (keystoneauth1 v3 Password, credentials from the
OS_* variables of an openrc), then the hypervisor list (detailed) and the statistics through
python-novaclient; prints one line.
"""
import os

from keystoneauth1 import session
from keystoneauth1.identity import v3
from novaclient import client

env = os.environ
auth = v3.Password(auth_url=env["OS_AUTH_URL"], username=env["OS_USERNAME"],
                   password=env["OS_PASSWORD"], project_name=env["OS_PROJECT_NAME"],
                   user_domain_name=env.get("OS_USER_DOMAIN_NAME", "Default"),
                   project_domain_name=env.get("OS_PROJECT_DOMAIN_NAME", "Default"))
nova = client.Client("2.1", session=session.Session(auth=auth),
                     region_name=env.get("OS_REGION_NAME"), endpoint_type=env.get("OS_INTERFACE", "public"))
hypervisors = nova.hypervisors.list(detailed=True)
stats = nova.hypervisors.statistics()
up = sum(1 for h in hypervisors if h.state == "up")
print(f"{len(hypervisors)} hypervisors ({up} up), vCPUs {stats.vcpus_used}/{stats.vcpus}, "
      f"RAM {stats.memory_mb_used}/{stats.memory_mb} MB")
