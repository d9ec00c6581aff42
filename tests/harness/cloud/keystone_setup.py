"""Keystone contents of the test cloud (after `keystone-manage bootstrap` made admin/admin and the
identity endpoint): the service project with the nova and placement service users, the catalog
entries for compute, placement and image (the image-service stand-in), and a non-admin user
nlc-reader (role reader on project admin) for permission tests.  Idempotent.
Env: NLC_KEYSTONE_URL NLC_ADMIN_PASSWORD NLC_SERVICE_PASSWORD NLC_REGION NLC_NOVA_URL
     NLC_PLACEMENT_URL NLC_IMAGE_URL"""
import os

from keystoneauth1 import session
from keystoneauth1.identity import v3

READER = ("nlc-reader", "nlc-reader-secret")
env = os.environ
sess = session.Session(auth=v3.Password(
    auth_url=env["NLC_KEYSTONE_URL"], username="admin", password=env["NLC_ADMIN_PASSWORD"],
    project_name="admin", user_domain_id="default", project_domain_id="default"))
IDENTITY = {"endpoint_filter": {"service_type": "identity", "interface": "public"}}


def get(path):
    return sess.get(path, **IDENTITY).json()


def find_or_create(collection, key, body, **filters):
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    found = get(f"/{collection}?{query}")[collection]
    if found:
        return found[0]
    return sess.post(f"/{collection}", json={key: body}, **IDENTITY).json()[key]


def grant(project, user, role):
    sess.put(f"/projects/{project['id']}/users/{user['id']}/roles/{role['id']}", **IDENTITY)


roles = {name: find_or_create("roles", "role", {"name": name}, name=name)
         for name in ("admin", "service", "reader")}
service = find_or_create("projects", "project", {"name": "service", "domain_id": "default"},
                         name="service")
admin_project = find_or_create("projects", "project", {"name": "admin", "domain_id": "default"},
                               name="admin")
for name in ("nova", "placement"):
    user = find_or_create("users", "user", {"name": name, "password": env["NLC_SERVICE_PASSWORD"],
                                            "domain_id": "default"}, name=name)
    grant(service, user, roles["admin"])
    grant(service, user, roles["service"])
reader = find_or_create("users", "user", {"name": READER[0], "password": READER[1],
                                          "domain_id": "default"}, name=READER[0])
grant(admin_project, reader, roles["reader"])

for stype, name, url in (("compute", "nova", env["NLC_NOVA_URL"]),
                         ("placement", "placement", env["NLC_PLACEMENT_URL"]),
                         ("image", "glance", env["NLC_IMAGE_URL"])):
    svc = find_or_create("services", "service", {"type": stype, "name": name}, type=stype)
    have = {e["interface"] for e in get(f"/endpoints?service_id={svc['id']}")["endpoints"]}
    for interface in ("public", "internal", "admin"):
        if interface not in have:
            sess.post("/endpoints", json={"endpoint": {
                "service_id": svc["id"], "interface": interface, "url": url,
                "region_id": env["NLC_REGION"]}}, **IDENTITY)
print("keystone setup done; service project", service["id"])
