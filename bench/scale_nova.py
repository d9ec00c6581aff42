#!/usr/bin/env python3
"""Issue 11 point 7, scale: check_nova_hypervisors with 300 hypervisors on a real Nova.

    .venv/bin/python bench/scale_nova.py [--nodes 300] [--runs 20] [--keep]

Starts a second local cloud beside the tests' one (tests/harness/cloud/start with its own
directory and ports, one ordinary compute), then one more nova-compute whose fake driver
reports --nodes nodes (bench/fake_compute_nodes.py), maps it, waits until Nova lists every
hypervisor and Placement has an inventory for each; then runs bench/rebase_nova.py's
comparison against it (warm check vs the same-library script vs a fresh login), reports the
output size (NRPE carries 64 KB), the requests of one run, and how much of a run is the local
Placement's own time (its uwsgi log's request times). Stops all of it at the end (--keep:
leave it running). The tests' cloud is not touched.
"""
import argparse
import json
import os
import re
import signal
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
    venv = env.get("NLC_CLOUD_VENV", "/var/tmp/nlc-test/cloud-venv")
    conf = os.path.join(cloud_dir, "etc", "nova", "scale.conf")
    state = os.path.join(cloud_dir, "data", "scale")
    os.makedirs(state, exist_ok=True)
    with open(conf, "w") as f:
        f.write(f"[DEFAULT]\nhost = scale\nstate_path = {state}\n")
    nova_conf = os.path.join(cloud_dir, "etc", "nova", "nova.conf")
    log = open(os.path.join(cloud_dir, "log", "nova-compute-scale.out"), "ab")
    compute = subprocess.Popen(
        [f"{venv}/bin/python", os.path.join(ROOT, "bench", "fake_compute_nodes.py"),
         "--config-file", nova_conf, "--config-file", conf, "--log-file",
         os.path.join(cloud_dir, "log", "nova-compute-scale.log")],
        env=dict(env, FAKE_NODES=str(args.nodes), FAKE_VCPUS="32", FAKE_MEMORY_MB="131072",
                 FAKE_LOCAL_GB="1000"), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        start_new_session=True)
    try:
        from tests.fixtures_cloud import Cloud
        cloud = Cloud(cloud_dir)
        want = args.nodes + 1
        deadline = time.monotonic() + 900
        while True:
            # the new host must be mapped to cell1 before Nova lists its hypervisors
            subprocess.run([f"{venv}/bin/nova-manage", "--config-file", nova_conf, "cell_v2",
                            "discover_hosts"], env=env, capture_output=True)
            hv = cloud.nova("GET", "/os-hypervisors?limit=1000", microversion="2.53").json()
            providers = cloud.placement("GET", "/resource_providers?resources=VCPU:1").json()
            n, p = len(hv.get("hypervisors", [])), len(providers.get("resource_providers", []))
            if n >= want and p >= want:
                break
            if compute.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"only {n} hypervisors, {p} providers with room")
            time.sleep(3)
        print(f"{n} hypervisors, {p} providers with inventories, "
              f"{time.monotonic() - started:.0f} s after the start", flush=True)
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
        os.killpg(compute.pid, signal.SIGTERM)
        compute.wait(60)
        if not args.keep:
            subprocess.run([os.path.join(HARNESS, "stop")], env=env)


if __name__ == "__main__":
    main()
