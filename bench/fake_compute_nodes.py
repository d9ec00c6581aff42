"""nova-compute with the stock fake driver reporting FAKE_NODES nodes from one service (as
nova's own functional tests do with its set-nodes hook), each sized by FAKE_VCPUS /
FAKE_MEMORY_MB / FAKE_LOCAL_GB: many hypervisors from one process, for bench/scale_nova.py.
Usage: the arguments of nova-compute."""
import os
import sys

from nova.cmd import compute  # first: applies nova's eventlet monkey patching
from nova.virt import fake

for attr, var in (("vcpus", "FAKE_VCPUS"), ("memory_mb", "FAKE_MEMORY_MB"),
                  ("local_gb", "FAKE_LOCAL_GB")):
    if os.environ.get(var):
        setattr(fake.FakeDriver, attr, int(os.environ[var]))
COUNT = int(os.environ.get("FAKE_NODES", "300"))


def init_host(self, host):
    self._host = host
    self._set_nodes([f"{host}-node{i:03d}" for i in range(1, COUNT + 1)])


fake.FakeDriver.init_host = init_host

if __name__ == "__main__":
    sys.exit(compute.main())
