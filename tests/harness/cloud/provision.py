"""Provision the freshly started test cloud and describe it for the tests.

Creates the flavors m1.small/medium/large/xlarge, the host aggregate agg-big (availability zone
az-big, host compute2), boots servers pinned to hosts (compute API 2.74 `host`) so that hypervisor
usage is known exactly, creates an application credential for admin, waits until nova and
placement both report exactly the expected usage, then writes into $NLC_CLOUD_DIR:
  openrc       OS_* variables for admin (password auth)
  clouds.yaml  cloud `nlc` (password; the password itself is in secure.yaml) and cloud
               `nlc-appcred` (application credential; secret in secure.yaml)
  secure.yaml
  cloud.json   the expected numbers per host, derived from what the cloud was given (host sizes,
               flavors booted, nova.conf reservations and allocation ratios), not read back
Env: set by `start` (NLC_* from cloud.env, NCOMPUTE)."""
import json
import os
import sys
import time

from keystoneauth1 import session
from keystoneauth1.identity import v3

env = os.environ
CLOUD = env["NLC_CLOUD_DIR"]
IMAGE_ID = "11111111-2222-3333-4444-555555555555"  # any id: the image stand-in serves them all
FLAVORS = {  # name: vcpus, ram MB, disk GB
    "m1.small": (1, 2048, 20),
    "m1.medium": (2, 4096, 40),
    "m1.large": (4, 8192, 80),
    "m1.xlarge": (8, 16384, 160),
}
BOOTS = {  # host: flavors of the servers pinned to it
    "compute1": ["m1.small", "m1.large", "m1.xlarge"],   # 13 vCPU of 32
    "compute2": ["m1.medium", "m1.large"],               # 6 of 64
    "compute3": ["m1.xlarge", "m1.xlarge", "m1.small"],  # 17 of 16: over-committed (ratio 4.0)
}
AGGREGATES = {"agg-big": {"availability_zone": "az-big", "hosts": ["compute2"]}}
DEFAULT_AZ = "nova"
READER = {"username": "nlc-reader", "password": "nlc-reader-secret", "project_name": "admin"}
APP_CRED_NAME = "nlc-check"

HOSTS = json.load(open(os.path.join(CLOUD, "etc", "hosts.json")))
CPU_RATIO = float(env["NLC_CPU_ALLOCATION_RATIO"])
DISK_RATIO = float(env["NLC_DISK_ALLOCATION_RATIO"])
RESERVED_MB = int(env["NLC_RESERVED_HOST_MEMORY_MB"])

sess = session.Session(auth=v3.Password(
    auth_url=env["NLC_KEYSTONE_URL"], username="admin", password=env["NLC_ADMIN_PASSWORD"],
    project_name="admin", user_domain_name="Default", project_domain_name="Default"))


def nova(method, path, mv="2.74", **kw):
    r = sess.request(path, method, endpoint_filter={"service_type": "compute", "interface": "public"},
                     headers={"OpenStack-API-Version": f"compute {mv}"}, raise_exc=True, **kw)
    return r.json() if r.content else None


def placement(path):
    return sess.get(path, endpoint_filter={"service_type": "placement", "interface": "public"},
                    headers={"OpenStack-API-Version": "placement 1.39"}).json()


def log(msg):
    print(f"{msg}", flush=True)


# ------------------------------------------------------------------ expected numbers
def expected_hosts():
    hosts = {}
    host_az = {h: DEFAULT_AZ for h in HOSTS}
    host_aggs = {h: [] for h in HOSTS}
    for agg, spec in AGGREGATES.items():
        for h in spec["hosts"]:
            if h in HOSTS:
                host_az[h] = spec["availability_zone"]
                host_aggs[h].append(agg)
    for h, size in HOSTS.items():
        flavors = BOOTS.get(h, [])
        used_vcpus = sum(FLAVORS[f][0] for f in flavors)
        used_mem = sum(FLAVORS[f][1] for f in flavors)
        used_disk = sum(FLAVORS[f][2] for f in flavors)
        ratios = {"VCPU": CPU_RATIO, "MEMORY_MB": float(size["ram_allocation_ratio"]),
                  "DISK_GB": DISK_RATIO}
        inv = {"VCPU": (size["vcpus"], 0, used_vcpus),
               "MEMORY_MB": (size["memory_mb"], RESERVED_MB, used_mem),
               "DISK_GB": (size["local_gb"], 0, used_disk)}
        hosts[h] = {
            # what the fake driver was sized to
            "vcpus": size["vcpus"], "memory_mb": size["memory_mb"], "local_gb": size["local_gb"],
            "servers": len(flavors), "flavors": flavors,
            # usage by the servers (what Placement /usages reports)
            "used_vcpus": used_vcpus, "used_memory_mb": used_mem, "used_local_gb": used_disk,
            # nova.conf of this host
            "reserved_host_memory_mb": RESERVED_MB, "reserved_host_disk_mb": 0,
            "reserved_host_cpus": 0, "cpu_allocation_ratio": CPU_RATIO,
            "ram_allocation_ratio": ratios["MEMORY_MB"], "disk_allocation_ratio": DISK_RATIO,
            "availability_zone": host_az[h], "aggregates": host_aggs[h],
            # legacy /os-hypervisors fields (microversion < 2.88); memory_mb_used includes the
            # host memory reservation, vcpus_used and local_gb_used do not (none reserved)
            "legacy": {
                "vcpus": size["vcpus"], "memory_mb": size["memory_mb"], "local_gb": size["local_gb"],
                "vcpus_used": used_vcpus, "memory_mb_used": used_mem + RESERVED_MB,
                "local_gb_used": used_disk, "free_ram_mb": size["memory_mb"] - used_mem - RESERVED_MB,
                "free_disk_gb": size["local_gb"] - used_disk, "running_vms": len(flavors),
                "state": "up", "status": "enabled", "hypervisor_type": "fake",
            },
            # Placement: capacity = (total - reserved) * allocation_ratio
            "placement": {rc: {"total": t, "reserved": r, "allocation_ratio": ratios[rc],
                               "used": u, "capacity": int((t - r) * ratios[rc])}
                          for rc, (t, r, u) in inv.items()},
        }
    return hosts


def expected_statistics(hosts):
    keys = ("vcpus", "vcpus_used", "memory_mb", "memory_mb_used", "local_gb", "local_gb_used",
            "free_ram_mb", "free_disk_gb", "running_vms")
    stats = {k: sum(h["legacy"][k] for h in hosts.values()) for k in keys}
    stats["count"] = len(hosts)
    return stats


# ------------------------------------------------------------------ provisioning
def create_flavors():
    have = {f["name"]: f for f in nova("GET", "/flavors?is_public=None")["flavors"]}
    out = {}
    for name, (vcpus, ram, disk) in FLAVORS.items():
        f = have.get(name) or nova("POST", "/flavors", json={"flavor": {
            "name": name, "vcpus": vcpus, "ram": ram, "disk": disk}})["flavor"]
        out[name] = {"id": f["id"], "vcpus": vcpus, "ram": ram, "disk": disk}
    return out


def create_aggregates():
    out = {}
    for name, spec in AGGREGATES.items():
        hosts = [h for h in spec["hosts"] if h in HOSTS]
        if not hosts:
            continue
        agg = nova("POST", "/os-aggregates", json={"aggregate": {
            "name": name, "availability_zone": spec["availability_zone"]}})["aggregate"]
        for h in hosts:
            agg = nova("POST", f"/os-aggregates/{agg['id']}/action",
                       json={"add_host": {"host": h}})["aggregate"]
        out[name] = {"id": agg["id"], "uuid": agg["uuid"], "hosts": sorted(agg["hosts"]),
                     "availability_zone": agg["availability_zone"]}
    return out


def boot_servers(flavors):
    wanted = {}
    for host, names in BOOTS.items():
        if host not in HOSTS:
            continue
        for i, fl in enumerate(names, 1):
            name = f"vm-{host}-{i}-{fl.split('.')[1]}"
            srv = nova("POST", "/servers", json={"server": {
                "name": name, "imageRef": IMAGE_ID, "flavorRef": flavors[fl]["id"],
                "networks": "none", "host": host}})["server"]
            wanted[srv["id"]] = {"name": name, "host": host, "flavor": fl}
    deadline = time.time() + 180
    while True:
        # NB: GET /servers/detail and /servers/<id> need neutron (security groups), which this
        # cloud does not have: only the plain list works, so filter it by status.
        active = {s["id"] for s in nova("GET", "/servers?status=ACTIVE&limit=1000")["servers"]}
        error = {s["id"] for s in nova("GET", "/servers?status=ERROR&limit=1000")["servers"]}
        if error & wanted.keys():
            raise SystemExit(f"servers went to ERROR: {[wanted[i]['name'] for i in error & wanted.keys()]}"
                             " (see nova-conductor/nova-scheduler/nova-compute logs)")
        if wanted.keys() <= active:
            return wanted
        if time.time() > deadline:
            raise SystemExit(f"servers not ACTIVE after 180 s: {len(active & wanted.keys())}/{len(wanted)}")
        time.sleep(0.5)


def observed(hosts):
    """What nova (2.1) and placement report now, in the shape of `hosts`."""
    hv = {h["hypervisor_hostname"]: h for h in nova("GET", "/os-hypervisors/detail", mv="2.1")["hypervisors"]}
    rps = {rp["name"]: rp["uuid"] for rp in placement("/resource_providers")["resource_providers"]}
    out = {}
    for name in hosts:
        if name not in hv or name not in rps:
            out[name] = None
            continue
        inv = placement(f"/resource_providers/{rps[name]}/inventories")["inventories"]
        use = placement(f"/resource_providers/{rps[name]}/usages")["usages"]
        out[name] = {
            "legacy": {k: hv[name].get(k) for k in hosts[name]["legacy"]},
            "placement": {rc: {"total": inv[rc]["total"], "reserved": inv[rc]["reserved"],
                               "allocation_ratio": inv[rc]["allocation_ratio"], "used": use.get(rc, 0),
                               "capacity": int((inv[rc]["total"] - inv[rc]["reserved"]) * inv[rc]["allocation_ratio"])}
                          for rc in hosts[name]["placement"] if rc in inv},
            "uuid": rps[name], "hypervisor_id": hv[name]["id"],
        }
    return out


def wait_until_reported(hosts):
    deadline = time.time() + 90
    while True:
        seen = observed(hosts)
        diff = {h: {"expected": {"legacy": hosts[h]["legacy"], "placement": hosts[h]["placement"]},
                    "seen": seen[h]}
                for h in hosts
                if seen[h] is None or seen[h]["legacy"] != hosts[h]["legacy"]
                or seen[h]["placement"] != hosts[h]["placement"]}
        if not diff:
            return seen
        if time.time() > deadline:
            raise SystemExit("nova/placement do not report the expected numbers:\n"
                             + json.dumps(diff, indent=1, sort_keys=True))
        time.sleep(0.5)


def create_app_credential():
    user_id = sess.get_user_id()
    r = sess.post(f"/users/{user_id}/application_credentials",
                  endpoint_filter={"service_type": "identity", "interface": "public"},
                  json={"application_credential": {
                      "name": APP_CRED_NAME, "description": "nlc test cloud: app-credential auth"}})
    ac = r.json()["application_credential"]
    return {"id": ac["id"], "name": ac["name"], "secret": ac["secret"], "user_id": user_id,
            "project_id": ac["project_id"], "roles": sorted(x["name"] for x in ac["roles"])}


def write(path, text, mode=0o644):
    # world-readable on purpose: checks run by NRPE as the unprivileged nagios user read them
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def yaml_dump(data):
    import yaml
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=False)


def main():
    t0 = time.time()
    flavors = create_flavors()
    aggregates = create_aggregates()
    log(f"flavors {sorted(flavors)}; aggregates {sorted(aggregates)} ({time.time() - t0:.1f}s)")
    servers = boot_servers(flavors)
    log(f"{len(servers)} servers ACTIVE ({time.time() - t0:.1f}s)")
    hosts = expected_hosts()
    seen = wait_until_reported(hosts)
    for h in hosts:
        hosts[h]["resource_provider_uuid"] = seen[h]["uuid"]
        hosts[h]["hypervisor_id_2_1"] = seen[h]["hypervisor_id"]
        hosts[h]["server_names"] = sorted(s["name"] for s in servers.values() if s["host"] == h)
    log(f"nova and placement report the expected usage ({time.time() - t0:.1f}s)")
    app_cred = create_app_credential()
    nova_versions = sess.get(env["NLC_NOVA_URL"] + "/", authenticated=False).json()["version"]

    auth_base = {"auth_url": env["NLC_KEYSTONE_URL"], "user_domain_name": "Default",
                 "project_domain_name": "Default"}
    openrc = {"OS_AUTH_URL": env["NLC_KEYSTONE_URL"], "OS_USERNAME": "admin",
              "OS_PASSWORD": env["NLC_ADMIN_PASSWORD"], "OS_PROJECT_NAME": "admin",
              "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_DOMAIN_NAME": "Default",
              "OS_REGION_NAME": env["NLC_REGION"], "OS_IDENTITY_API_VERSION": "3",
              "OS_INTERFACE": "public"}
    common = {"region_name": env["NLC_REGION"], "interface": "public", "identity_api_version": 3}
    clouds = {"clouds": {
        "nlc": {"auth_type": "password", "auth": dict(auth_base, username="admin", project_name="admin"),
                **common},
        "nlc-appcred": {"auth_type": "v3applicationcredential",
                        "auth": {"auth_url": env["NLC_KEYSTONE_URL"],
                                 "application_credential_id": app_cred["id"]}, **common},
        "nlc-reader": {"auth_type": "password",
                       "auth": dict(auth_base, username=READER["username"],
                                    project_name=READER["project_name"]), **common},
    }}
    secure = {"clouds": {
        "nlc": {"auth": {"password": env["NLC_ADMIN_PASSWORD"]}},
        "nlc-appcred": {"auth": {"application_credential_secret": app_cred["secret"]}},
        "nlc-reader": {"auth": {"password": READER["password"]}},
    }}
    files = {k: os.path.join(CLOUD, v) for k, v in (
        ("openrc", "openrc"), ("clouds_yaml", "clouds.yaml"), ("secure_yaml", "secure.yaml"),
        ("token_log", "log/keystone-tokens.log"), ("keystone_request_log", "log/keystone-uwsgi.log"))}
    expected = {
        "ncompute": len(hosts),
        "region": env["NLC_REGION"],
        "urls": {"keystone": env["NLC_KEYSTONE_URL"], "nova": env["NLC_NOVA_URL"],
                 "placement": env["NLC_PLACEMENT_URL"], "image": env["NLC_IMAGE_URL"]},
        "files": files,
        "openrc": openrc,
        "admin": {"username": "admin", "password": env["NLC_ADMIN_PASSWORD"], "project_name": "admin"},
        "reader": READER,
        "application_credential": app_cred,
        "nova_microversions": {"min": nova_versions["min_version"], "max": nova_versions["version"]},
        "service_down_time": int(env["NLC_SERVICE_DOWN_TIME"]),
        "report_interval": int(env["NLC_REPORT_INTERVAL"]),
        "default_availability_zone": DEFAULT_AZ,
        "flavors": flavors,
        "aggregates": aggregates,
        "servers": {sid: s for sid, s in sorted(servers.items(), key=lambda kv: kv[1]["name"])},
        "hosts": hosts,
        "statistics": expected_statistics(hosts),
    }
    write(files["openrc"], "".join(f"export {k}={v}\n" for k, v in openrc.items()))
    write(files["clouds_yaml"], yaml_dump(clouds))
    write(files["secure_yaml"], yaml_dump(secure))
    write(os.path.join(CLOUD, "cloud.json"), json.dumps(expected, indent=1) + "\n", 0o644)
    log(f"wrote openrc, clouds.yaml, secure.yaml, cloud.json ({time.time() - t0:.1f}s)")


if __name__ == "__main__":
    sys.exit(main())
