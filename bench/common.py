"""Shared helpers for the benchmarks: generated desired files, timing child processes."""

from __future__ import annotations

import compileall
import functools
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / "_work"
PER_FILE = 100
CRONS = (
    "0 0 2 * * ?",
    "0 0/15 9-18 ? * MON-FRI",
    "0 30 23 L * ?",
    "0 0 6 15W * ?",
    "0 0 8 ? * 6#3",
    "0 45 17 ? * 6L",
)


def generate(count: int, directory: Path) -> list[Path]:
    """`count` valid schedules, 100 per file, half cron and half period form."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for first in range(0, count, PER_FILE):
        lines = [
            "version: 1",
            "defaults:",
            "  project_id: 0b7a3e1c2d4f4a5b8c9d0e1f2a3b4c5d",
            f"  instance_id: inst-{first // 10_000:04d}",
            "  cron_timezone: Asia/Shanghai",
            "schedules:",
        ]
        for n in range(first, min(first + PER_FILE, count)):
            lines += [f"  - name: sched-{n:06d}", f"    task_id: task{n:028d}"]
            if n % 2:
                lines += [f'    cron: "{CRONS[n % len(CRONS)]}"', "    remark: generated"]
            else:
                lines += ["    period: HOUR", f"    dispatch_interval: {1 + n % 59}",
                          "    start_datetime: 2026-12-01T00:00:00+08:00"]
        path = directory / f"file-{first // PER_FILE:05d}.yaml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files.append(path)
    return files


@dataclass
class Run:
    seconds: float
    peak_mib: float
    returncode: int


def run(command: list[str], cwd: Path | None = None) -> Run:
    """Run a command; wall time and the child's peak RSS (from wait4)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and process.stderr is not None:
        sys.stderr.write(process.stderr.read().decode(errors="replace")[-2000:])
    return Run(elapsed, usage.ru_maxrss / 1024, code)


def median_run(command: list[str], repeat: int = 3, cwd: Path | None = None) -> Run:
    runs = [run(command, cwd) for _ in range(repeat)]
    seconds = statistics.median(r.seconds for r in runs)
    return Run(seconds, max(r.peak_mib for r in runs), max(r.returncode for r in runs))


def reconciler_command() -> list[str]:
    """How to run reconciler, its bytecode compiled first (once per benchmark process).

    pip compiles an installed package's modules; a source checkout (an editable install) gets
    its bytecode written on first import, unless PYTHONDONTWRITEBYTECODE is set, as it is on
    this project's machines, and then every process compiled every module again: 0.15 s of each
    0.55 s start here, which no installed reconciler pays, and which made process start and the
    runs measured against it vary by as much.
    """
    _compile_package()
    return [sys.executable, "-m", "reconciler"]


@functools.cache
def _compile_package() -> None:
    import reconciler

    compileall.compile_dir(Path(reconciler.__file__).parent, quiet=1)
