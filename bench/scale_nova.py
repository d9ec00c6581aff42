#!/usr/bin/env python3
"""Issue 11 point 7, scale: check_nova_hypervisors with 300 hypervisors on a real Nova.

    .venv/bin/python bench/scale_nova.py [--nodes 300] [--runs 20] [--keep]

Starts a second local cloud beside the tests' one (tests/harness/cloud/start with its own
directory and ports, one ordinary compute), then one more nova-compute whose fake driver
reports --nodes nodes (tests/fixtures_cloud.py's ExtraCompute, as tests/test_nova_scale.py
does on the tests' cloud), which maps it and waits until Nova lists every hypervisor up and
Placement has an inventory for each; then runs bench/rebase_nova.py's
comparison against it (warm check vs the same-library script vs a fresh login), reports the
output size (NRPE carries 64 KB), the requests of one run, and how much of a run is the local
Placement's own time (its uwsgi log's request times). Stops all of it at the end (--keep:
leave it running). The tests' cloud is not touched.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, "tests", "harness", "cloud")
sys.path.insert(0, ROOT)
SCALE_ENV = {   # a second cloud: its own directory and ports (RabbitMQ's < 32768)
    "NLC_CLOUD_DIR": "/var/tmp/nlc-test/cloud-scale", "NCOMPUTE": "1",
    "NLC_KEYSTONE_PORT": "25000", "NLC_PLACEMENT_PORT": "28778", "NLC_NOVA_PORT": "28774",
    "NLC_IMAGE_PORT": "29292", "NLC_DB_PORT": "23306", "NLC_RABBIT_PORT": "6682",
    "NLC_RABBIT_DIST_PORT": "6683", "NLC_EPMD_PORT": "4479", "NLC_RABBIT_NODE": "nlcscale@localhost",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=300)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    env = dict(os.environ, **SCALE_ENV)
    cloud_dir = SCALE_ENV["NLC_CLOUD_DIR"]
    started = time.monotonic()
    proc = subprocess.run([os.path.join(HARNESS, "start")], env=env, stdin=subprocess.DEVNULL)
    if proc.returncode:
        raise SystemExit("the scale cloud did not start")
    print(f"scale cloud up in {time.monotonic() - started:.0f} s", flush=True)
    from tests.fixtures_cloud import Cloud, ExtraCompute
    cloud = Cloud(cloud_dir)
    # the one extra nova-compute whose fake driver reports --nodes nodes, as the tests' own
    extra = ExtraCompute(cloud, args.nodes, vcpus=32, memory_mb=131072, local_gb=1000)
    try:
        extra.start()
        print(f"{args.nodes + 1} hypervisors, every one with an inventory in Placement, "
              f"{time.monotonic() - started:.0f} s after the start ({extra.seconds['start']:.0f} s "
              f"for the extra nodes)", flush=True)
        scale_env = dict(os.environ, **cloud.env, NOVA_LIBVIRT_CHECKS_STATE_DIR=os.path.join(
            cloud_dir, "bench-state"))
        # one run alone: output size, requests, Placement's own share of the time
        check = [sys.executable, os.path.join(ROOT, "checks", "check_nova_hypervisors"), "-t", "60"]
        subprocess.run(check, env=scale_env, capture_output=True)           # warm the cache
        placement_log = os.path.join(cloud_dir, "log", "placement-uwsgi.log")
        offset = os.path.getsize(placement_log)
        t0 = time.perf_counter()
        out = subprocess.run(check + ["-vv"], env=scale_env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        with open(placement_log, errors="replace") as f:
            f.seek(offset)
            placement_ms = [int(m) for m in re.findall(r" in (\d+) msecs", f.read())]
        plain = subprocess.run(check + ["--perfdata-per-hypervisor"], env=scale_env,
                               capture_output=True, text=True)
        # the count from the -v source line: request lines past --max-output are cut
        counted = re.search(r"; (\d+) HTTP requests? in ", out.stdout)
        print(f"one warm run at -vv: {wall * 1000:.0f} ms wall, "
              f"{counted.group(1) if counted else '?'} HTTP requests; "
              f"Placement's uwsgi: {len(placement_ms)} requests, {sum(placement_ms)} ms summed "
              f"over its {os.environ.get('NLC_API_WORKERS', '2')} workers")
        print(f"output: {len(out.stdout.encode())} bytes at -vv, "
              f"{len(plain.stdout.encode())} bytes with --perfdata-per-hypervisor "
              f"(exit {plain.returncode}; NRPE carries 65536)")
        print(plain.stdout.splitlines()[0][:300])
        env_bench = dict(os.environ, **{k: v for k, v in SCALE_ENV.items()})
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "rebase_nova.py"),
                        "--runs", str(args.runs), "--timeout", "60"], env=env_bench)
        print(json.dumps({"nodes": args.nodes, "seconds": round(time.monotonic() - started)}))
    finally:
        if not args.keep:
            extra.remove()
            subprocess.run([os.path.join(HARNESS, "stop")], env=env)


if __name__ == "__main__":
    main()
