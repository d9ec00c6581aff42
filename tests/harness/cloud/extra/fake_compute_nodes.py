"""nova-compute for an extra host of a running cloud: tests/harness/cloud/fake_compute.py (the
stock fake driver, sized from FAKE_VCPUS / FAKE_MEMORY_MB / FAKE_LOCAL_GB) reporting FAKE_NODES
nodes, <host>-node001 ..., from one service through the fake driver's set-nodes hook, as nova's
own functional tests do. Started by tests/fixtures_cloud.py's ExtraCompute (the 300-hypervisor
test, bench/scale_nova.py), never by `start`: this folder is outside the files whose change
rebuilds the cloud. Usage: the arguments of nova-compute."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fake_compute import compute, fake  # noqa: E402 - nova's eventlet patching, the sizes

COUNT = int(os.environ["FAKE_NODES"])


def init_host(self, host):
    self._host = host
    self._set_nodes([f"{host}-node{i:03d}" for i in range(1, COUNT + 1)])


fake.FakeDriver.init_host = init_host

if __name__ == "__main__":
    sys.exit(compute.main())
