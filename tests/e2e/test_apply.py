"""`reconciler apply` in a subprocess against the emulator in another: exactly once, always."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import HEADER
from tests.e2e.conftest import Project, Result
from tests.e2e.emulator_proc import EmulatorProcess, emulator

TOKEN = "test-token-5f2c"


def apply(project: Project, emu: EmulatorProcess, *argv: str) -> Result:
    env = {"RECONCILER_ENDPOINT": emu.url, "RECONCILER_TOKEN": TOKEN}
    return project.run("apply", "--auto-approve", *argv, env=env)


def write_many(project: Project, count: int, name: str = "many.yaml") -> list[str]:
    lines = [HEADER]
    keys = []
    for n in range(count):
        lines.append(f"  - name: gen-{n:04d}\n    task_id: gen{n:04d}\n"
                     f"    period: HOUR\n    dispatch_interval: {1 + n % 59}\n")
        keys.append(f"proj1/inst1/gen{n:04d}")
    (project.root / "schedules" / name).write_text("".join(lines))
    return keys


def test_creates_exactly_the_missing_and_rerun_calls_nothing(project: Project) -> None:
    with emulator() as emu:
        first = apply(project, emu)
        assert first.code == 0, first.err
        assert "Apply complete: 11 created, 0 failed." in first.out
        assert sorted(emu.posts().values()) == [1] * 11
        state = json.loads(project.state_path.read_text())
        assert {d["dispatch_id"] for d in state["dispatches"].values()} == {
            d["dispatch_id"] for d in emu.dispatches().values()}
        before = emu.calls()
        second = apply(project, emu)
        assert second.code == 0
        assert "No changes." in second.out
        assert emu.calls() == before

        keys = write_many(project, 5)
        third = apply(project, emu)
        assert third.code == 0, third.err
        posts = emu.posts()
        assert all(posts[k] == 1 for k in keys)
        assert sum(posts.values()) == 16

        orders = project.root / "schedules/sales/orders.yaml"
        orders.write_text(orders.read_text().replace('"0 0 2 * * ?"', '"0 0 3 * * ?"'))
        calls = emu.calls()
        fourth = apply(project, emu)
        assert fourth.code == 0, fourth.err
        after = emu.calls()
        changed = {k: {m: n - calls.get(k, {}).get(m, 0) for m, n in v.items()
                       if n != calls.get(k, {}).get(m, 0)} for k, v in after.items()}
        changed = {k: v for k, v in changed.items() if v}
        assert list(changed.values()) == [{"PUT": 1}]
        assert next(iter(changed)).endswith("/15366328208d4d77b76532fe9f4006a6")


def test_dropped_responses_never_duplicate(project: Project) -> None:
    keys = write_many(project, 60)
    with emulator("--drop-after-create-rate", "0.3", "--seed", "7") as emu:
        for _attempt in range(10):
            result = apply(project, emu, "--parallelism", "8")
            if result.code == 0:
                break
        assert result.code == 0, result.err
        posts = emu.posts()
        assert all(posts[k] == 1 for k in keys), posts
        assert len(emu.dispatches()) == 71
        state = json.loads(project.state_path.read_text())
        assert len(state["dispatches"]) == 71
        assert state["intents"] == {}


@pytest.mark.slow
def test_kill_9_during_creates_then_rerun(project: Project) -> None:
    keys = write_many(project, 200)
    rng = random.Random(11)
    with emulator("--latency-ms", "20") as emu:
        env = {"RECONCILER_ENDPOINT": emu.url, "RECONCILER_TOKEN": TOKEN}
        for _round in range(5):
            process = subprocess.Popen(
                [sys.executable, "-m", "reconciler", "apply", "--auto-approve",
                 "--parallelism", "10"],
                cwd=project.root, env={**project_env(), **env},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(0.3, 0.9))
            process.send_signal(signal.SIGKILL)
            process.wait()
            lock = project.root / ".reconciler/state.lock"
            if lock.exists():
                lock_id = json.loads(lock.read_text() or "{}").get("lock_id", "unreadable")
                assert project.run("force-unlock", lock_id).code == 0
        final = apply(project, emu, "--parallelism", "10")
        assert final.code == 0, final.err
        posts = emu.posts()
        assert all(posts[k] == 1 for k in keys), {k: v for k, v in posts.items() if v != 1}
        remote = emu.dispatches()
        state = json.loads(project.state_path.read_text())["dispatches"]
        assert len(state) == 211
        for k in keys:
            assert state[k]["dispatch_id"] == remote[k]["dispatch_id"]


def project_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}


@pytest.mark.parametrize(
    ("fault", "times", "expected"),
    [
        ("status:400", 1, "HTTP 400 EMU.400: injected"),
        ("status:404", 1, "HTTP 404 EMU.404: injected"),
        ("throttle", 10, "HTTP 429"),
        ("status:500", 10, "HTTP 500 EMU.500: injected"),
    ],
)
def test_api_errors_are_shown_with_code_and_message(project: Project, fault: str, times: int,
                                                    expected: str) -> None:
    key = "0b7a3e1c2d4f4a5b8c9d0e1f2a3b4c5d/8d7b3c62-7f1e-4c8e-9a51-3b1c0de3f4a2/" \
        "15366328208d4d77b76532fe9f4006a6"
    with emulator() as emu:
        emu.fault(key, fault, times)
        result = apply(project, emu)
        assert result.code == 1
        assert expected in result.err, result.err
        assert "orders-nightly" in result.err
        assert "Apply finished with errors: 10 created, 1 failed." in result.err
        assert "Traceback" not in result.err
        state = json.loads(project.state_path.read_text())
        assert len(state["dispatches"]) == 10


def test_wrong_token_is_401_with_a_hint(project: Project) -> None:
    with emulator("--token", "right") as emu:
        result = apply(project, emu)
        assert result.code == 1
        assert "HTTP 401 APIGW.0301" in result.err
        assert TOKEN not in result.err + result.out
        assert not any(emu.dispatches())


def test_missing_token(project: Project) -> None:
    with emulator() as emu:
        result = project.run("apply", "--auto-approve", env={"RECONCILER_ENDPOINT": emu.url})
        assert result.code == 1
        assert "RECONCILER_TOKEN" in result.err


def test_no_tty_without_auto_approve_refuses(project: Project) -> None:
    with emulator() as emu:
        result = project.run("apply", env={"RECONCILER_ENDPOINT": emu.url,
                                           "RECONCILER_TOKEN": TOKEN})
        assert result.code == 1
        assert "--auto-approve" in result.err
        assert not emu.dispatches()


def test_saved_plan_refused_after_state_changed(project: Project) -> None:
    with emulator() as emu:
        assert project.run("plan", "--out", "p.json").code == 0
        assert apply(project, emu).code == 0
        env = {"RECONCILER_ENDPOINT": emu.url, "RECONCILER_TOKEN": TOKEN}
        stale = project.run("apply", "p.json", env=env)
        assert stale.code == 1
        assert "stale" in stale.err
        assert sum(emu.posts().values()) == 11


def test_saved_plan_applies_when_fresh(project: Project) -> None:
    with emulator() as emu:
        assert project.run("plan", "--out", "p.json").code == 0
        env = {"RECONCILER_ENDPOINT": emu.url, "RECONCILER_TOKEN": TOKEN}
        result = project.run("apply", "p.json", env=env)
        assert result.code == 0, result.err
        assert len(emu.dispatches()) == 11


def test_built_in_emulator_first_run(project: Project) -> None:
    first = project.run("apply", "--emulator", "--auto-approve")
    assert first.code == 0, first.err
    assert "11 created" in first.out
    assert (project.root / ".reconciler/emulator.json").exists()
    second = project.run("apply", "--emulator", "--auto-approve")
    assert second.code == 0
    assert "No changes." in second.out


def test_secrets_never_in_state_plan_or_output(project: Project, tmp_path: Path) -> None:
    with emulator() as emu:
        env = {"RECONCILER_ENDPOINT": emu.url, "RECONCILER_TOKEN": TOKEN}
        plan = project.run("plan", "--out", "p.json", env=env)
        result = project.run("apply", "p.json", "-v", env=env)
        assert result.code == 0
        texts = [plan.out, plan.err, result.out, result.err,
                 (project.root / "p.json").read_text()]
        texts += [p.read_text(errors="replace") for p in (project.root / ".reconciler").rglob("*")
                  if p.is_file() and p.suffix != ".gz"]
        assert not any(TOKEN in text for text in texts)


def test_report_file_has_one_line_per_action(project: Project) -> None:
    key = "0b7a3e1c2d4f4a5b8c9d0e1f2a3b4c5d/8d7b3c62-7f1e-4c8e-9a51-3b1c0de3f4a2/" \
        "15366328208d4d77b76532fe9f4006a6"
    with emulator() as emu:
        emu.fault(key, "status:400")
        result = apply(project, emu, "--report", "report.jsonl")
        assert result.code == 1
    lines = [json.loads(line) for line in
             (project.root / "report.jsonl").read_text().splitlines()]
    assert len(lines) == 11
    failed = [line for line in lines if not line["ok"]]
    assert len(failed) == 1
    assert failed[0]["key"] == key
    assert failed[0]["http_status"] == 400
    assert "EMU.400" in failed[0]["error"]
    created = [line for line in lines if line["ok"]]
    assert all(line["http_status"] == 200 and line["dispatch_id"] for line in created)
    assert all(line["request_body"]["use_quartz_cron"] in (True, False) for line in lines)
    assert all(line["action"] == "create" and line["duration_s"] >= 0 for line in lines)
    assert TOKEN not in (project.root / "report.jsonl").read_text()


def test_state_history_and_diff_after_applies(project: Project) -> None:
    with emulator() as emu:
        assert apply(project, emu).code == 0
        orders = project.root / "schedules/sales/orders.yaml"
        orders.write_text(orders.read_text().replace('"0 0 2 * * ?"', '"0 0 3 * * ?"'))
        assert apply(project, emu).code == 0
    history = project.run("state", "history").out.splitlines()
    assert [line.split("\t")[0] for line in history] == ["1", "2"]
    diff = project.run("state", "diff")
    assert diff.code == 0, diff.err
    assert '~ orders-nightly' in diff.out
    assert '"0 0 2 * * ?" → "0 0 3 * * ?"' in diff.out
    document = json.loads(project.run("state", "diff", "0", "2", "--format", "json").out)
    assert document["summary"]["added"] == 11
