"""Two CI runners, each with its own checkout, apply at the same moment against one API and one
PostgreSQL state: every dispatch is created (and updated) exactly once, whoever wins the lock."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from reconciler.model import DispatchKey
from reconciler.state.postgres import PostgresBackend
from tests.conftest import HEADER, REPO
from tests.e2e.emulator_proc import EmulatorProcess, emulator

TOKEN = "runner-token"
GENERATED = 40


def checkout(root: Path, workspace: str) -> Path:
    """A runner's working copy: the bundled schedules plus generated ones, state in postgres."""
    root.mkdir()
    shutil.copytree(REPO / "schedules", root / "schedules")
    lines = [HEADER] + [f"  - name: gen-{n:03d}\n    task_id: gen{n:03d}\n"
                        f"    period: HOUR\n    dispatch_interval: {1 + n % 59}\n"
                        for n in range(GENERATED)]
    (root / "schedules" / "generated.yaml").write_text("".join(lines))
    (root / "reconciler.yaml").write_text(
        f"state:\n  backend: postgres\n  workspace: {workspace}\n")
    return root


def apply_at_once(runners: list[Path], emu: EmulatorProcess, dsn: str) -> list[str]:
    """Start `apply` in every checkout at the same moment; their outputs once all ended."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RECONCILER_", "GITHUB_", "GITLAB_", "CI"))}
    env.update({"RECONCILER_ENDPOINT": emu.url, "RECONCILER_TOKEN": TOKEN,
                "RECONCILER_STATE_DSN": dsn, "PYTHONPATH": str(REPO)})
    procs = [subprocess.Popen([sys.executable, "-m", "reconciler", "apply", "--auto-approve",
                               "--parallelism", "4", "--lock-timeout", "60"],
                              cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for root in runners]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output
    return outputs


def test_two_runners_applying_at_once_never_duplicate(
        tmp_path: Path, pg_dsn: str, pg_workspace: str) -> None:
    runners = [checkout(tmp_path / name, pg_workspace) for name in ("runner-1", "runner-2")]
    backend = PostgresBackend(pg_dsn, pg_workspace)
    with emulator("--latency-ms", "20") as emu:
        outputs = apply_at_once(runners, emu, pg_dsn)
        posts = emu.posts()
        assert len(posts) == 11 + GENERATED
        assert set(posts.values()) == {1}, {k: n for k, n in posts.items() if n != 1}
        assert sum("Apply complete: 51 created, 0 failed." in out for out in outputs) == 1, (
            outputs)
        state = backend.read()
        remote = emu.dispatches()
        assert {str(k) for k in state.records} == set(remote)
        for key, record in state.records.items():
            assert record.dispatch_id == remote[str(key)]["dispatch_id"]
        assert not state.intents

        # both checkouts pull the same change: one PUT, by whichever runner gets there first
        for root in runners:
            generated = root / "schedules" / "generated.yaml"
            generated.write_text(generated.read_text().replace(
                "task_id: gen007\n    period: HOUR\n    dispatch_interval: 8",
                "task_id: gen007\n    period: HOUR\n    dispatch_interval: 9"))
        apply_at_once(runners, emu, pg_dsn)
        changed = DispatchKey("proj1", "inst1", "gen007")
        puts = {k: c["PUT"] for k, c in emu.calls().items() if c.get("PUT")}
        assert puts == {str(changed): 1}
        assert set(emu.posts().values()) == {1}
    assert backend.read().records[changed].spec.dispatch_interval == 9
    assert backend.current_lock() is None
