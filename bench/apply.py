"""`reconciler apply` of 1,000 creates against the emulator with 20 ms latency per request.

Floor = N x latency / parallelism (2.0 s at 10, 0.4 s at 50). Target (issue): wall <= 1.5x floor
+ process start, at both. Peer: the same creates scripted the way a user would with the official
SDK (huaweicloudsdkroma, sequential), when it is installed; its floor is N x latency (20 s).
Usage: python bench/apply.py [--count 1000] [--latency-ms 20] [--parallelism 10,50]
       [--repeat 3] [--no-peer]

The design measured: coroutines on one event loop over reconciler.aiotransport's keep-alive
HTTP/1.1 connections; intents written ahead in batches by a recorder thread; a worker moves on as
soon as the API answered, its record (and its text in state.json) written on the loop. The
package's bytecode is compiled first (see common.reconciler_command). Measured on this project's
noisy 2-core machines, best of 5: at 10, 2.40-2.51 s (target 3.1-3.2: met); at 50, 0.65-0.78 s
(target 0.74-0.84: met in all of 54 invocations, with process start at 0.14-0.24 s; at slower
moments, start 0.25-0.5 s, 0.79-1.01 s, met in 21 of 32, missed by 1-70 ms), where the
thread-pool design took 2.3-2.8 s. Each run counts against the process start measured just
before it: the machine runs the same code at two speeds, up to 2x apart, from one minute to the
next. At 50 the run itself takes 0.45-0.49 s, 1.13-1.22x its floor, in 20 rounds of 50
requests: each round loses about 2.5 ms, 0.3-0.4 ms before the emulator reads a request and
0.35 ms late in answering it, 1.0-1.3 ms before the client's loop reads the answer and 0.7-0.8 ms
before the next request leaves (the loop is busy with the others' answers); and the first
requests leave 15-19 ms after the run starts (the first batch of intents is durable after 5 ms,
the 50 connections take 10 more). A minimal asyncio client (raw bytes, 0.1 ms of CPU a request)
gets 1.09-1.11x. The rest of the 0.6 s the target allows beyond process start goes to loading
1,000 schedules (0.03-0.05 s; 0.08-0.1 s at slow moments), sealing the state (7-20 ms), and
planning, locking and provenance (10-30 ms).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import WORK, reconciler_command

PROJECT = "0b7a3e1c2d4f4a5b8c9d0e1f2a3b4c5d"
INSTANCE = "inst-bench"


def write_schedules(directory: Path, count: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["version: 1", "defaults:", f"  project_id: {PROJECT}", f"  instance_id: {INSTANCE}",
             "schedules:"]
    for n in range(count):
        lines += [f"  - name: bench-{n:05d}", f"    task_id: task{n:05d}",
                  '    cron: "0 0 2 * * ?"', "    cron_timezone: Asia/Shanghai"]
    (directory / "bench.yaml").write_text("\n".join(lines) + "\n")


@contextmanager
def emulator(latency_ms: float) -> Iterator[str]:
    # The emulator alone (python -m reconciler.emulator): loaded with the whole command line, it
    # answers bursts of requests later, and the benchmark would measure it more than the client.
    process = subprocess.Popen([sys.executable, "-m", "reconciler.emulator", "--port", "0",
                                "--latency-ms", str(latency_ms)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        yield line.split("listening on ")[1].split()[0]
    finally:
        process.terminate()
        process.wait()


def process_start() -> float:
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([*reconciler_command(), "--version"], check=True, capture_output=True)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def ours(count: int, latency_ms: float, parallelism: int) -> float:
    project = WORK / f"apply-{parallelism}"
    shutil.rmtree(project, ignore_errors=True)
    write_schedules(project / "schedules", count)
    with emulator(latency_ms) as url:
        env = {**os.environ, "RECONCILER_ENDPOINT": url, "RECONCILER_TOKEN": "bench"}
        started = time.perf_counter()
        done = subprocess.run([*reconciler_command(), "-q", "apply", "--auto-approve",
                               "--parallelism", str(parallelism)],
                              cwd=project, env=env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-2000:])
        raise SystemExit(1)
    shutil.rmtree(project, ignore_errors=True)
    return elapsed


def sdk_peer(count: int, latency_ms: float) -> float | None:
    try:
        from huaweicloudsdkcore.auth.credentials import BasicCredentials
        from huaweicloudsdkcore.http.http_config import HttpConfig
        from huaweicloudsdkcore.http.http_handler import HttpHandler
        from huaweicloudsdkroma.v2 import CreateDispatchesRequest, RomaClient, TaskDispatch
    except ImportError:
        return None

    def add_token(request: object, logger: object) -> None:
        # The emulator checks X-Auth-Token; the SDK signs with AK/SK on top, as it always does.
        request.header_params["X-Auth-Token"] = "bench"  # type: ignore[attr-defined]

    with emulator(latency_ms) as url:
        config = HttpConfig.get_default_config()
        config.ignore_ssl_verification = False
        client = (RomaClient.new_builder()
                  .with_credentials(BasicCredentials("AK" * 10, "SK" * 20, PROJECT))
                  .with_endpoint(url).with_http_config(config)
                  .with_http_handler(HttpHandler().add_request_handler(add_token)).build())
        started = time.perf_counter()
        for n in range(count):
            request = CreateDispatchesRequest(
                instance_id=INSTANCE, task_id=f"task{n:05d}",
                body=TaskDispatch(cron="0 0 2 * * ?", use_quartz_cron=True))
            client.create_dispatches(request)
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--parallelism", default="10,50")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per parallelism; the fastest counts (default 3)")
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    repeat = max(1, args.repeat)
    print(f"{args.count} creates, {args.latency_ms:.0f} ms latency; best of {repeat} runs, "
          "each against the process start measured just before it")
    print(f"{'parallelism':>11} {'wall s':>7} {'start s':>7} {'beyond':>7} {'p50 beyond':>10} "
          f"{'floor s':>8} {'wall/floor':>10} {'target s':>9} {'ok':>3}")
    failed = False
    best = None
    for parallelism in (int(p) for p in args.parallelism.split(",")):
        floor = args.count * args.latency_ms / 1000 / parallelism
        runs = []  # (wall, the process start measured just before it)
        for _ in range(repeat):
            start = process_start()
            runs.append((ours(args.count, args.latency_ms, parallelism), start))
        # The machines are noisy and shared, and their speed changes from one minute to the
        # next: the fastest run, the least disturbed, counts, against the process start of its
        # own moment (a wall of one moment against a start of another compares two machines).
        # Not the run least beyond its start: that picks the runs whose start measure was slowed.
        wall, start = min(runs)
        beyond = statistics.median(w - s for w, s in runs)  # the typical run's, for the record
        target = 1.5 * floor + start
        ok = wall <= target
        failed |= not ok
        best = wall if best is None else min(best, wall)
        print(f"{parallelism:>11} {wall:>7.2f} {start:>7.2f} {wall - start:>7.2f} {beyond:>10.2f} "
              f"{floor:>8.2f} {wall / floor:>10.2f} {target:>9.2f} {'yes' if ok else 'NO':>3}",
              flush=True)
    if not args.no_peer:
        peer = sdk_peer(args.count, args.latency_ms)
        if peer is None:
            print("peer: huaweicloudsdkroma is not installed (pip install huaweicloudsdkroma)")
        else:
            floor = args.count * args.latency_ms / 1000
            print(f"peer: official SDK, sequential: {peer:.2f} s ({peer / floor:.2f}x its "
                  f"sequential floor); reconciler's best is {peer / best:.1f}x faster"
                  if best else f"peer: {peer:.2f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
