"""Refresh (GET) of 1,000 tasks against the emulator at 20 ms latency with parallelism 50.

Floor = N x latency / parallelism = 0.4 s. Target (issue): <= 1.5x the floor. Measured two
ways: the refresh step alone (`reconciler.refresh.read_live`, in this process), and the whole
`reconciler plan --refresh` command (process start, validation and rendering included).
Usage: python bench/refresh.py [--count 1000] [--latency-ms 20] [--parallelism 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

from apply import INSTANCE, PROJECT, emulator, write_schedules
from common import WORK, reconciler_command

from reconciler.auth import TokenAuth
from reconciler.client import DispatchClient
from reconciler.model import DispatchKey
from reconciler.refresh import read_live


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--parallelism", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    floor = args.count * args.latency_ms / 1000 / args.parallelism
    keys = [DispatchKey(PROJECT, INSTANCE, f"task{n:05d}") for n in range(args.count)]
    project = WORK / "refresh"
    shutil.rmtree(project, ignore_errors=True)
    write_schedules(project / "schedules", args.count)
    with emulator(args.latency_ms) as url:
        steps = []
        for _ in range(args.repeat):
            with DispatchClient(url, TokenAuth("bench")) as client:
                started = time.perf_counter()
                live, failures = read_live(client, keys, args.parallelism)
                steps.append(time.perf_counter() - started)
            if failures or len(live) != args.count:
                sys.stderr.write(f"refresh failed: {failures[:3]}\n")
                return 1
        env = {**os.environ, "RECONCILER_ENDPOINT": url, "RECONCILER_TOKEN": "bench",
               "RECONCILER_PARALLELISM": str(args.parallelism)}
        commands = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            done = subprocess.run([*reconciler_command(), "plan", "--refresh"], cwd=project,
                                  env=env, capture_output=True, text=True, check=False)
            commands.append(time.perf_counter() - started)
            if done.returncode != 0:
                sys.stderr.write(done.stderr[-2000:])
                return 1
    shutil.rmtree(project, ignore_errors=True)
    step, command = statistics.median(steps), statistics.median(commands)
    print(f"{args.count} GETs, {args.latency_ms:.0f} ms latency, parallelism "
          f"{args.parallelism}: floor {floor:.2f} s")
    print(f"refresh step: {step:.2f} s = {step / floor:.2f}x floor "
          f"(target 1.5x: {'met' if step <= 1.5 * floor else 'NOT met'})")
    print(f"whole `plan --refresh`: {command:.2f} s")
    return 0 if step <= 1.5 * floor else 1


if __name__ == "__main__":
    sys.exit(main())
