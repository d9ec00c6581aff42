"""Baseline for check_nova_hypervisors: the leanest Python doing the same HTTP calls with a
saved token.

    python baseline_nova_token.py TOKENFILE [--placement]

Standard library only. The token and the endpoints are kept in TOKENFILE; while the token is
valid for another minute, a run is just GET /os-hypervisors/detail and
GET /os-hypervisors/statistics (compute API 2.1), one after the other. Otherwise (first run,
expired, or a 401) it logs in once with the OS_* password credentials (POST /v3/auth/tokens),
finds the endpoints in the catalog and saves them with the token (0600).

--placement: the calls check_nova_hypervisors makes instead: GET /os-hypervisors/detail at
2.53, then for each hypervisor GET /resource_providers/ID/inventories and .../usages from
Placement (sequentially).
"""
import json
import os
import sys
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

env = os.environ
cache = sys.argv[1]
PLACEMENT = "--placement" in sys.argv[2:]
NOVA_VERSION = "2.53" if PLACEMENT else "2.1"
HEADERS = {"compute": {"Accept": "application/json", "OpenStack-API-Version": f"compute {NOVA_VERSION}",
                       "X-OpenStack-Nova-API-Version": NOVA_VERSION},
           "placement": {"Accept": "application/json", "OpenStack-API-Version": "placement 1.0"}}


def login():
    body = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": env["OS_USERNAME"], "password": env["OS_PASSWORD"],
            "domain": {"name": env.get("OS_USER_DOMAIN_NAME", "Default")}}}},
        "scope": {"project": {"name": env["OS_PROJECT_NAME"],
                              "domain": {"name": env.get("OS_PROJECT_DOMAIN_NAME", "Default")}}}}}
    request = urllib.request.Request(env["OS_AUTH_URL"].rstrip("/") + "/auth/tokens",
                                     json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        token = response.headers["X-Subject-Token"]
        data = json.load(response)["token"]
    interface, region = env.get("OS_INTERFACE", "public"), env.get("OS_REGION_NAME")
    saved = {"token": token, "expires_at": data["expires_at"]}
    for service in ("compute", "placement"):
        saved[service] = next(e["url"] for s in data["catalog"] if s["type"] == service
                              for e in s["endpoints"] if e["interface"] == interface
                              and (not region or e["region_id"] == region)).rstrip("/")
    tmp = cache + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        json.dump(saved, out)
    os.replace(tmp, cache)
    return saved


def load():
    try:
        with open(cache) as saved_file:
            saved = json.load(saved_file)
        expires = datetime.fromisoformat(saved["expires_at"].replace("Z", "+00:00"))
        if expires - datetime.now(timezone.utc) > timedelta(minutes=1):
            return saved
    except (OSError, ValueError, KeyError):
        pass
    return None


def get(saved, path, service="compute"):
    request = urllib.request.Request(saved[service] + path,
                                     headers=dict(HEADERS[service], **{"X-Auth-Token": saved["token"]}))
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


saved = load() or login()
try:
    hypervisors = get(saved, "/os-hypervisors/detail")["hypervisors"]
except urllib.error.HTTPError as exc:
    if exc.code != 401:
        raise
    saved = login()
    hypervisors = get(saved, "/os-hypervisors/detail")["hypervisors"]
up = sum(1 for h in hypervisors if h["state"] == "up")
if PLACEMENT:
    used = total = 0
    for hv in hypervisors:
        vcpu = get(saved, f"/resource_providers/{hv['id']}/inventories", "placement")["inventories"]["VCPU"]
        used += get(saved, f"/resource_providers/{hv['id']}/usages", "placement")["usages"].get("VCPU", 0)
        total += int((vcpu["total"] - vcpu["reserved"]) * vcpu["allocation_ratio"])
    print(f"{len(hypervisors)} hypervisors ({up} up), vCPUs {used}/{total} (Placement)")
else:
    stats = get(saved, "/os-hypervisors/statistics")["hypervisor_statistics"]
    print(f"{len(hypervisors)} hypervisors ({up} up), vCPUs {stats['vcpus_used']}/{stats['vcpus']}, "
          f"RAM {stats['memory_mb_used']}/{stats['memory_mb']} MB")
