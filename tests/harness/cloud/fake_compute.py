"""nova-compute for the test cloud: the real nova.cmd.compute service with the stock
nova.virt.fake.FakeDriver, whose advertised capacity is set from FAKE_VCPUS / FAKE_MEMORY_MB /
FAKE_LOCAL_GB (nova loads compute drivers only from the nova.virt namespace, so the stock driver
is sized instead of subclassed).  Usage: same arguments as nova-compute."""
import os
import sys

from nova.cmd import compute  # first: applies nova's eventlet monkey patching
from nova.virt import fake

for attr, var in (("vcpus", "FAKE_VCPUS"), ("memory_mb", "FAKE_MEMORY_MB"),
                  ("local_gb", "FAKE_LOCAL_GB")):
    if os.environ.get(var):
        setattr(fake.FakeDriver, attr, int(os.environ[var]))

if __name__ == "__main__":
    sys.exit(compute.main())
