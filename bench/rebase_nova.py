#!/usr/bin/env python3
"""Issue 11 point 7, re-based: check_nova_hypervisors against scripts with the same libraries.

    .venv/bin/python bench/rebase_nova.py [--runs 20]

Against the running local cloud (tests/harness/cloud), as a Keystone user of its own (made
and deleted here), so that its tokens can be counted exactly. Three commands, run in
interleaved rounds (so that the cloud's load hits all alike), each `--runs` times, timed from
spawn to exit:
- check:  checks/check_nova_hypervisors, warm (its token cache primed by one run before);
- libs:   bench/baseline_nova_libs.py, the same libraries making the same calls (session
          restored from saved auth state, novaclient, a Placement Adapter), warm too;
- fresh:  bench/baseline_nova_libs.py --fresh, a fresh login per run with novaclient.
Prints medians, the ratios (targets: check <= 1.2x libs; check >= 2.5x faster than fresh),
the tokens the check's runs issued (target: 1 for all, counting the priming run), and the
HTTP requests of one check run (-vv). A separate script: bench/run belongs to issue 14.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.fixtures_cloud import Cloud, cloud_dir  # noqa: E402


def timed(argv, env):
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 1, 2):
        raise SystemExit(f"{argv}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return elapsed, proc.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--timeout", default="10", help="the check's -t")
    args = parser.parse_args()
    cloud = Cloud(cloud_dir())
    user = cloud.create_user(prefix="nlc-bench")
    python = sys.executable
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, **user.env, NOVA_LIBVIRT_CHECKS_STATE_DIR=f"{tmp}/state",
                       NLC_BASELINE_CACHE=f"{tmp}/baseline-state.json")
            commands = {
                "check": [python, "checks/check_nova_hypervisors", "-t", args.timeout],
                "libs": [python, "bench/baseline_nova_libs.py"],
                "fresh": [python, "bench/baseline_nova_libs.py", "--fresh"],
            }
            before = user.token_requests()
            timed(commands["check"], env)                       # prime the token cache
            timed(commands["libs"], env)
            times = {name: [] for name in commands}
            check_tokens = 0
            for _ in range(args.runs):
                for name, argv in commands.items():
                    start_tokens = user.token_requests()
                    elapsed, _out = timed(argv, env)
                    times[name].append(elapsed)
                    if name == "check":
                        check_tokens += user.token_requests() - start_tokens
            _elapsed, out = timed(commands["check"] + ["-vv"], env)
            requests_ = [line for line in out.splitlines() if line.startswith("request:")]
            # the count from the -v source line: request lines past --max-output are cut
            counted = re.search(r"; (\d+) HTTP requests? in ", out)
            hypervisors = out.split(" hypervisors up and enabled")[0].split(" of ")[-1]
            median = {name: statistics.median(values) for name, values in times.items()}
            print(f"{args.runs} runs each, interleaved; {hypervisors} hypervisors; medians:")
            for name, value in median.items():
                print(f"  {name:6s} {value * 1000:7.1f} ms  (min {min(times[name]) * 1000:.1f}, "
                      f"max {max(times[name]) * 1000:.1f})")
            print(f"check / libs  = {median['check'] / median['libs']:.2f}x (target <= 1.2x)")
            print(f"fresh / check = {median['fresh'] / median['check']:.2f}x faster (target "
                  f">= 2.5x)")
            print(f"tokens issued by the check's {args.runs} warm runs: {check_tokens} "
                  f"(+1 by the priming run); all tokens of this user: "
                  f"{user.token_requests() - before}")
            print(f"HTTP requests of one warm check run: "
                  f"{counted.group(1) if counted else len(requests_)}")
            for line in requests_[:12]:
                print(f"  {line}")
    finally:
        cloud.delete_user(user.id)


if __name__ == "__main__":
    main()
