"""pytest plugin: the project's real local OpenStack cloud (tests/harness/cloud).

Session fixture ``cloud`` runs ``tests/harness/cloud/start`` (a no-op of ~1 s when the cloud is
already up and healthy, ~45-60 s from scratch with the cloud venv kept, well under 4 min on a
fresh machine) and returns a :class:`Cloud`.  The cloud is left running after the session (set
NLC_CLOUD_STOP_AT_END=1 to stop it).  Function fixture ``mutable_cloud`` is the same object, and
after the test puts every compute service back to enabled / not forced down and restarts any
stopped API service, so tests that change cloud state can run in any order.

Token counting: keystone runs behind tests/harness/cloud/keystone_wsgi.py, which writes one JSON
line per POST /v3/auth/tokens (status, auth methods, user, project) to log/keystone-tokens.log;
``Cloud.token_requests(user=NAME)`` counts issued tokens (HTTP 201) for one user.  The cloud is
shared (service users log in in the background; on a dev machine other people's tests and checks
use admin too), so a test that counts tokens should use its own user: function fixture
``keystone_user`` makes a fresh admin user (``.env`` = OS_* variables, ``.name``, ``.password``,
``.app_credential()``) and deletes it afterwards.

Many hypervisors: :class:`ExtraCompute` adds one more nova-compute whose fake driver reports
many nodes to a running cloud, and removes it (tests/test_nova_scale.py, bench/scale_nova.py);
``Cloud.reset()`` removes one that a killed session left behind.
"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, "tests", "harness", "cloud")
START = os.path.join(HARNESS, "start")
STOP = os.path.join(HARNESS, "stop")
SERVICE = os.path.join(HARNESS, "service")
EXTRA_COMPUTE = os.path.join(HARNESS, "extra", "fake_compute_nodes.py")
RESTARTABLE = ("keystone", "placement", "nova-api", "image-stub", "nova-conductor", "nova-scheduler")
COMPUTE_MV = "2.53"     # os-services by UUID, forced_down and disabled_reason in one PUT


def _tail(text, lines=40):
    return "\n".join((text or "").rstrip().splitlines()[-lines:])


def cloud_setting(name):
    """A setting (NLC_CLOUD_DIR, NLC_CLOUD_VENV...) as the harness resolves it (cloud.env holds
    the defaults, the environment overrides them)."""
    out = subprocess.run(["bash", "-c", f'. "$1/cloud.env" && printf %s "${name}"', "_", HARNESS],
                         capture_output=True, text=True, check=True)
    return out.stdout


def cloud_dir():
    return cloud_setting("NLC_CLOUD_DIR")


class CloudError(RuntimeError):
    pass


class Cloud:
    """The running test cloud, described by $NLC_CLOUD_DIR/cloud.json (written by start)."""

    def __init__(self, directory):
        self.dir = directory
        with open(os.path.join(directory, "cloud.json")) as f:
            self.expected = json.load(f)
        e = self.expected
        self.env = dict(e["openrc"])                    # OS_* variables (admin, password auth)
        self.keystone_url = e["urls"]["keystone"]
        self.nova_url = e["urls"]["nova"]
        self.placement_url = e["urls"]["placement"]
        self.openrc = e["files"]["openrc"]
        self.clouds_yaml = e["files"]["clouds_yaml"]    # clouds: nlc, nlc-appcred, nlc-reader
        self.secure_yaml = e["files"]["secure_yaml"]    # their password / secret
        self.token_log = e["files"]["token_log"]
        self.keystone_request_log = e["files"]["keystone_request_log"]
        self.hosts = sorted(e["hosts"])
        self._session = None
        self._service_ids = {}

    # ------------------------------------------------------------------ sessions / requests
    def admin_session(self, new=False):
        """keystoneauth1 Session for admin/admin (password).  The same one is returned each time
        (so it costs at most one token per pytest session) unless new=True."""
        from keystoneauth1 import session
        from keystoneauth1.identity import v3
        if new or self._session is None:
            e = self.env
            auth = v3.Password(auth_url=e["OS_AUTH_URL"], username=e["OS_USERNAME"],
                               password=e["OS_PASSWORD"], project_name=e["OS_PROJECT_NAME"],
                               user_domain_name=e["OS_USER_DOMAIN_NAME"],
                               project_domain_name=e["OS_PROJECT_DOMAIN_NAME"])
            sess = session.Session(auth=auth)
            if new:
                return sess
            self._session = sess
        return self._session

    def nova(self, method, path, microversion="2.1", **kw):
        """Call the compute API as admin; returns the requests Response (no raise)."""
        return self.admin_session().request(
            self.nova_url + path, method, raise_exc=False,
            headers={"OpenStack-API-Version": f"compute {microversion}"}, **kw)

    def placement(self, method, path, microversion="1.39", **kw):
        return self.admin_session().request(
            self.placement_url + path, method, raise_exc=False,
            headers={"OpenStack-API-Version": f"placement {microversion}"}, **kw)

    # ------------------------------------------------------------------ token counting
    def token_log_entries(self):
        """Every POST /v3/auth/tokens keystone answered, oldest first (dicts: status, methods,
        user, user_id, project, app_cred, t, ms)."""
        try:
            with open(self.token_log) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def token_requests(self, user=None, method=None, status=201):
        """Number of POST /v3/auth/tokens keystone has answered so far with `status` (201 = a
        token was issued; None = any), optionally only for `user` (name; app-credential logins
        count for the credential's owner) and/or auth `method` ("password",
        "application_credential", "token").  Take a count before and after the code under test."""
        n = 0
        for e in self.token_log_entries():
            if status is not None and e.get("status") != status:
                continue
            if user is not None and e.get("user") != user:
                continue
            if method is not None and method not in (e.get("methods") or ()):
                continue
            n += 1
        return n

    def request_log_token_issues(self):
        """Cross-check: POST /v3/auth/tokens answered 201, counted in keystone's uwsgi request log
        (all users)."""
        n = 0
        try:
            with open(self.keystone_request_log, errors="replace") as f:
                for line in f:
                    if "POST /v3/auth/tokens " in line and "(HTTP/1.1 201)" in line:
                        n += 1
        except FileNotFoundError:
            pass
        return n

    # ------------------------------------------------------------------ keystone users
    def keystone(self, method, path, **kw):
        r = self.admin_session().request(self.keystone_url + path, method, raise_exc=False, **kw)
        if r.status_code >= 400:
            raise CloudError(f"{method} {path}: {r.status_code} {r.text[:200]}")
        return r.json() if r.content else None

    def create_user(self, role="admin", project="admin", prefix="nlc-t"):
        """A new keystone user with `role` on `project` (domain Default); see KeystoneUser."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        password = uuid.uuid4().hex
        project_id = self.keystone("GET", f"/projects?name={project}")["projects"][0]["id"]
        role_id = self.keystone("GET", f"/roles?name={role}")["roles"][0]["id"]
        user = self.keystone("POST", "/users", json={"user": {
            "name": name, "password": password, "domain_id": "default"}})["user"]
        self.keystone("PUT", f"/projects/{project_id}/users/{user['id']}/roles/{role_id}")
        return KeystoneUser(self, user["id"], name, password, project)

    def delete_user(self, user_id):
        self.keystone("DELETE", f"/users/{user_id}")

    # ------------------------------------------------------------------ compute services
    def compute_services(self):
        r = self.nova("GET", "/os-services?binary=nova-compute", microversion=COMPUTE_MV)
        if r.status_code != 200:
            raise CloudError(f"GET /os-services: {r.status_code} {r.text[:200]}")
        return {s["host"]: s for s in r.json()["services"]}

    def _service_id(self, host):
        if host not in self._service_ids:
            self._service_ids.update({h: s["id"] for h, s in self.compute_services().items()})
        if host not in self._service_ids:
            raise CloudError(f"no nova-compute service on host {host!r} (hosts: {self.hosts})")
        return self._service_ids[host]

    def _put_service(self, host, body):
        r = self.nova("PUT", f"/os-services/{self._service_id(host)}", microversion=COMPUTE_MV, json=body)
        if r.status_code != 200:
            raise CloudError(f"PUT /os-services ({host}) {body}: {r.status_code} {r.text[:200]}")
        return r.json()["service"]

    # Changes a test makes are recorded in $NLC_CLOUD_DIR/run/held/<key> with the test process's
    # pid: reset() (also run by every new pytest session) leaves changes of other live processes
    # alone, and `start` waits for a service stopped by a live process instead of rebuilding.
    def _held(self, key):
        return os.path.join(self.dir, "run", "held", key)

    def _hold(self, key):
        os.makedirs(os.path.dirname(self._held(key)), exist_ok=True)
        with open(self._held(key), "w") as f:
            f.write(str(os.getpid()))

    def _release(self, key):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._held(key))

    def _held_by_other(self, key):
        try:
            with open(self._held(key)) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return False
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    def force_down(self, host, down=True):
        """Mark the host's nova-compute service forced_down (state 'down' at once) or undo it."""
        if down:
            self._hold(f"forced_down-{host}")
        svc = self._put_service(host, {"forced_down": bool(down)})
        if not down:
            self._release(f"forced_down-{host}")
        return svc

    def disable(self, host, reason="nlc test"):
        """Disable the host's nova-compute service with `reason` (hypervisor status 'disabled')."""
        self._hold(f"disabled-{host}")
        return self._put_service(host, {"status": "disabled", "disabled_reason": reason})

    def enable(self, host):
        svc = self._put_service(host, {"status": "enabled"})
        self._release(f"disabled-{host}")
        return svc

    @contextlib.contextmanager
    def forced_down(self, host):
        self.force_down(host, True)
        try:
            yield
        finally:
            self.force_down(host, False)

    @contextlib.contextmanager
    def disabled(self, host, reason="nlc test"):
        self.disable(host, reason)
        try:
            yield
        finally:
            self.enable(host)

    # ------------------------------------------------------------------ processes
    def _service(self, action, name):
        if name not in RESTARTABLE:
            raise ValueError(f"service must be one of {RESTARTABLE}, not {name!r}")
        r = subprocess.run([SERVICE, action, name], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, NLC_HOLDER_PID=str(os.getpid())))
        if r.returncode:
            raise CloudError(f"service {action} {name} failed:\n{_tail(r.stdout + r.stderr)}")

    def stop_service(self, name):
        """Stop "nova-api", "placement" or "keystone" (also image-stub, nova-conductor,
        nova-scheduler): its whole process group; connections are refused afterwards."""
        self._service("stop", name)

    def start_service(self, name):
        """Start it again; returns once it answers HTTP."""
        self._service("start", name)

    def service_running(self, name):
        return subprocess.run([SERVICE, "status", name], capture_output=True).returncode == 0

    @contextlib.contextmanager
    def service_stopped(self, name):
        self.stop_service(name)
        try:
            yield
        finally:
            self.start_service(name)

    def reset(self):
        """Back to the state start left: every restartable service running, every compute
        service enabled and not forced down - except what another live test process changed."""
        for name in RESTARTABLE:
            if not self.service_running(name) and not self._held_by_other(name):
                self.start_service(name)
        for host, svc in self.compute_services().items():
            if svc.get("forced_down") and not self._held_by_other(f"forced_down-{host}"):
                self.force_down(host, False)
            if svc.get("status") != "enabled" and not self._held_by_other(f"disabled-{host}"):
                self.enable(host)
        self.remove_extra_computes()

    def remove_extra_computes(self):
        """Remove what an ExtraCompute left behind, held by no live process (killed mid-test)."""
        for host in self.compute_services():
            key = f"compute-{host}"
            if host.startswith(ExtraCompute.PREFIX) and not self._held_by_other(key) \
                    and not self._held_here(key):
                remove_extra_compute(self, host)

    def _held_here(self, key):
        try:
            with open(self._held(key)) as f:
                return f.read().strip() == str(os.getpid())
        except OSError:
            return False


# Flavors that boot nothing, made for the flavor-room oracle: what Nova's scheduler asks of
# Placement for them is not just vcpus/ram/disk. Made by the fixture `extra_flavors` (not by
# provision.py: a change of the harness files rebuilds the shared cloud, see start).
EXTRA_FLAVORS = {  # name: vcpus, ram MB, root disk GB, ephemeral GB, swap MB, extra specs
    "nlc.spec": (2, 1024, 10, 0, 0, {"resources:VCPU": "6", "resources:DISK_GB": "0"}),
    "nlc.swap": (1, 512, 5, 15, 1536, {}),
    "nlc.big-eph": (4, 4096, 100, 300, 0, {"resources:MEMORY_MB": "3000"}),
}


def ensure_flavors(cloud, flavors=EXTRA_FLAVORS):
    """Create the flavors (idempotent: one of the same name and definition is kept, another
    replaced); returns {name: id}."""
    mv = "2.61"                      # flavors listed with their extra specs
    r = cloud.nova("GET", "/flavors/detail?is_public=None", microversion=mv)
    if r.status_code != 200:
        raise CloudError(f"GET /flavors/detail: {r.status_code} {r.text[:200]}")
    have = {f["name"]: f for f in r.json()["flavors"]}
    ids = {}
    for name, (vcpus, ram, disk, ephemeral, swap, specs) in flavors.items():
        f = have.get(name)
        same = f is not None and (f["vcpus"], f["ram"], f["disk"],
                                  f.get("OS-FLV-EXT-DATA:ephemeral"), f.get("swap") or 0,
                                  f.get("extra_specs") or {}) == (vcpus, ram, disk, ephemeral,
                                                                  swap, specs)
        if f is not None and not same:
            cloud.nova("DELETE", f"/flavors/{f['id']}")
        if not same:
            r = cloud.nova("POST", "/flavors", microversion=mv, json={"flavor": {
                "name": name, "vcpus": vcpus, "ram": ram, "disk": disk,
                "OS-FLV-EXT-DATA:ephemeral": ephemeral, "swap": swap}})
            if r.status_code != 200:
                raise CloudError(f"POST /flavors {name}: {r.status_code} {r.text[:200]}")
            f = r.json()["flavor"]
            if specs:
                r = cloud.nova("POST", f"/flavors/{f['id']}/os-extra_specs", microversion=mv,
                               json={"extra_specs": specs})
                if r.status_code != 200:
                    raise CloudError(f"extra specs of {name}: {r.status_code} {r.text[:200]}")
        ids[name] = f["id"]
    return ids


class KeystoneUser:
    """A user made by Cloud.create_user: `env` holds its OS_* variables (password auth)."""

    def __init__(self, cloud, user_id, name, password, project):
        self.cloud, self.id, self.name, self.password, self.project = cloud, user_id, name, password, project
        self.env = dict(cloud.env, OS_USERNAME=name, OS_PASSWORD=password, OS_PROJECT_NAME=project)

    def session(self):
        from keystoneauth1 import session
        from keystoneauth1.identity import v3
        return session.Session(auth=v3.Password(
            auth_url=self.cloud.keystone_url, username=self.name, password=self.password,
            project_name=self.project, user_domain_name="Default", project_domain_name="Default"))

    def app_credential(self, name=None):
        """Create an application credential for this user (logs in once as the user: that
        token counts in token_requests(user=self.name)); returns {"id", "secret", ...}."""
        sess = self.session()
        r = sess.post(f"{self.cloud.keystone_url}/users/{self.id}/application_credentials",
                      json={"application_credential": {"name": name or f"{self.name}-ac"}})
        return r.json()["application_credential"]

    def token_requests(self, **kw):
        return self.cloud.token_requests(user=self.name, **kw)


class ExtraCompute:
    """One more nova-compute on a running cloud, its fake driver reporting `nodes` nodes of
    one size (tests/harness/cloud/extra/fake_compute_nodes.py): many hypervisors from one
    process. Its host is `nlc-extra-XXXXXX` (new each time: Nova keeps deleted compute nodes,
    and their UUIDs follow from the node names), its nodes `<host>-node001`...

    `start()` launches it (pid file beside the cloud's own services: `stop` and a rebuild end
    it too), maps it to cell1 and waits until Nova lists every node and Placement has an
    inventory for each. `remove()` ends it and deletes its compute service: Nova deletes the
    compute nodes, their resource providers and the host mapping, and any provider left is
    deleted here; the cloud is as cloud.json describes it again. A process that dies inside
    leaves it held (run/held): the next `Cloud.reset()` removes it (`remove_extra_computes`).
    """

    PREFIX = "nlc-extra-"

    def __init__(self, cloud, nodes, vcpus, memory_mb, local_gb, ram_allocation_ratio=1.0):
        self.cloud, self.nodes = cloud, nodes
        self.sizes = {"vcpus": vcpus, "memory_mb": memory_mb, "local_gb": local_gb,
                      "ram_allocation_ratio": ram_allocation_ratio}
        self.host = f"{self.PREFIX}{uuid.uuid4().hex[:6]}"
        self.names = [f"{self.host}-node{i:03d}" for i in range(1, nodes + 1)]
        self.seconds = {}                               # start, remove: how long they took

    def _path(self, *parts):
        return os.path.join(self.cloud.dir, *parts)

    def start(self, timeout=900):
        t0 = time.monotonic()
        self.cloud._hold(f"compute-{self.host}")
        venv = cloud_setting("NLC_CLOUD_VENV")
        state = self._path("data", self.host)
        os.makedirs(state, exist_ok=True)
        conf = self._path("etc", "nova", f"{self.host}.conf")
        with open(conf, "w") as f:
            # no update_available_resource periodic: it would re-report every node each minute,
            # loading Placement under the check; the start-up pass reports them all
            f.write(f"[DEFAULT]\nhost = {self.host}\nstate_path = {state}\n"
                    f"ram_allocation_ratio = {self.sizes['ram_allocation_ratio']}\n"
                    f"update_resources_interval = -1\n")
        nova_conf = ["--config-file", self._path("etc", "nova", "nova.conf")]
        name = f"nova-compute-{self.host}"
        with open(self._path("log", f"{name}.out"), "ab") as out:
            proc = subprocess.Popen(
                [f"{venv}/bin/python", EXTRA_COMPUTE, *nova_conf, "--config-file", conf,
                 "--log-file", self._path("log", f"{name}.log")],
                env=dict(os.environ, FAKE_NODES=str(self.nodes), FAKE_VCPUS=str(self.sizes["vcpus"]),
                         FAKE_MEMORY_MB=str(self.sizes["memory_mb"]),
                         FAKE_LOCAL_GB=str(self.sizes["local_gb"])),
                stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
        with open(self._path("run", f"{name}.pid"), "w") as f:
            f.write(str(proc.pid))
        self.proc = proc
        deadline = time.monotonic() + timeout
        mapped = False
        while True:
            if proc.poll() is not None:
                raise CloudError(f"{name} exited {proc.returncode}: see {self._path('log', name + '.log')}")
            if not mapped and self.host in self.cloud.compute_services():
                # the API lists a node only once its host is mapped to a cell
                r = subprocess.run([f"{venv}/bin/nova-manage", *nova_conf, "cell_v2",
                                    "discover_hosts", "--by-service"], capture_output=True, text=True)
                if r.returncode:
                    raise CloudError(f"discover_hosts: {_tail(r.stdout + r.stderr)}")
                mapped = True
            # up: nova-compute reports its state only once every node is registered, so
            # after ~60 s of registering (service_down_time) it is down for a moment
            listed = [h for h in self.hypervisors() if h["state"] == "up"]
            providers = self.providers(with_inventory=True)
            if len(listed) == len(providers) == self.nodes:
                break
            if time.monotonic() > deadline:
                raise CloudError(f"{self.host}: {len(listed)} of {self.nodes} nodes listed up by "
                                 f"Nova, {len(providers)} with an inventory in Placement after "
                                 f"{timeout} s")
            time.sleep(1)
        self.seconds["start"] = time.monotonic() - t0

    def hypervisors(self):
        """Nova's hypervisors of this host (2.53: paged by marker, 1000 at most a page)."""
        found, marker = [], ""
        while True:
            r = self.cloud.nova("GET", f"/os-hypervisors/detail?limit=1000{marker}", microversion="2.53")
            if r.status_code != 200:
                raise CloudError(f"GET /os-hypervisors/detail: {r.status_code} {r.text[:200]}")
            page = r.json()["hypervisors"]
            found += [h for h in page if h["service"]["host"] == self.host]
            if len(page) < 1000:
                return found
            marker = f"&marker={page[-1]['id']}"

    def providers(self, with_inventory=False):
        """Placement's resource providers of this host's nodes (by name)."""
        query = "?resources=VCPU:1,MEMORY_MB:1,DISK_GB:1" if with_inventory else ""
        r = self.cloud.placement("GET", f"/resource_providers{query}")
        if r.status_code != 200:
            raise CloudError(f"GET /resource_providers: {r.status_code} {r.text[:200]}")
        return [p for p in r.json()["resource_providers"] if p["name"].startswith(f"{self.host}-node")]

    def remove(self):
        t0 = time.monotonic()
        remove_extra_compute(self.cloud, self.host, getattr(self, "proc", None))
        self.seconds["remove"] = time.monotonic() - t0

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc):
        self.remove()


def remove_extra_compute(cloud, host, proc=None):
    """End an ExtraCompute's process, delete its compute service (with it Nova deletes the
    compute nodes, their resource providers and the host mapping), delete any provider of its
    nodes Placement still has, and its files."""
    pid_file = os.path.join(cloud.dir, "run", f"nova-compute-{host}.pid")
    with contextlib.suppress(OSError, ValueError):
        with open(pid_file) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:      # that process, not a reused pid
            ours = host.encode() in f.read()
        if ours:
            os.killpg(pid, signal.SIGKILL)                  # the fake driver holds nothing
            if proc is not None:
                proc.wait()
            wait_until_gone = time.monotonic() + 10
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < wait_until_gone:
                time.sleep(0.1)
    service = cloud.compute_services().get(host)
    if service is not None:
        r = cloud.nova("DELETE", f"/os-services/{service['id']}", microversion=COMPUTE_MV)
        if r.status_code not in (204, 404):
            raise CloudError(f"DELETE /os-services ({host}): {r.status_code} {r.text[:200]}")
    r = cloud.placement("GET", "/resource_providers")
    for p in r.json()["resource_providers"] if r.status_code == 200 else ():
        if p["name"].startswith(f"{host}-node"):
            cloud.placement("DELETE", f"/resource_providers/{p['uuid']}")
    for path in (pid_file, os.path.join(cloud.dir, "etc", "nova", f"{host}.conf")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    shutil.rmtree(os.path.join(cloud.dir, "data", host), ignore_errors=True)
    cloud._release(f"compute-{host}")


@pytest.fixture(scope="session")
def cloud():
    from tests.conftest import service_unavailable
    t0 = time.monotonic()
    try:
        r = subprocess.run([START], capture_output=True, text=True, timeout=900,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        service_unavailable(f"test cloud: {START} could not run: {exc}")
    if r.returncode != 0:
        service_unavailable(f"test cloud: {START} exited {r.returncode} after "
                            f"{time.monotonic() - t0:.0f} s:\n{_tail(r.stdout + r.stderr)}")
    try:
        c = Cloud(cloud_dir())
        c.reset()   # a previous session may have been killed inside a state-changing test
    except Exception as exc:  # noqa: BLE001 - any failure here means no usable cloud
        service_unavailable(f"test cloud started but is not usable: {type(exc).__name__}: {exc}")
    yield c
    if os.environ.get("NLC_CLOUD_STOP_AT_END", "") in ("1", "true", "yes"):
        subprocess.run([STOP], capture_output=True, timeout=300)


@pytest.fixture(scope="session")
def extra_flavors(cloud):
    """EXTRA_FLAVORS, made in the cloud (they boot nothing: no host's usage changes): their
    definitions, as given to Nova."""
    ensure_flavors(cloud)
    return EXTRA_FLAVORS


@pytest.fixture
def keystone_user(cloud):
    """A fresh user with the admin role on project admin, deleted after the test; count its
    tokens with keystone_user.token_requests() (exact: nobody else logs in as it)."""
    user = cloud.create_user()
    yield user
    cloud.delete_user(user.id)


@pytest.fixture
def mutable_cloud(cloud):
    """The cloud, for a test that changes its state; put back afterwards (Cloud.reset)."""
    yield cloud
    cloud.reset()
