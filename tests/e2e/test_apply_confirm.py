"""`reconciler apply`'s confirmation: on a terminal only 'yes' applies, without one it refuses
unless --auto-approve, and the state lock is taken before anything is asked."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from reconciler.provenance import Provenance
from reconciler.state.local import LocalBackend
from tests.conftest import HEADER
from tests.e2e.conftest import Project, Result
from tests.e2e.emulator_proc import EmulatorProcess, emulator

TOKEN = "test-token-5f2c"
PROMPT = "Enter a value: "
HOLDER = Provenance("apply", "2026-12-03T00:00:00Z", "someone-else")


def on_terminal(project: Project, emu: EmulatorProcess, answer: str | None,
                *argv: str) -> Result:
    """Run apply with its standard streams on a pseudo-terminal; type `answer` at the prompt.

    The result's `out` holds everything the terminal showed (stdout and stderr)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("RECONCILER_", "CI"))}
    environ.update(RECONCILER_ENDPOINT=emu.url, RECONCILER_TOKEN=TOKEN, NO_COLOR="1")
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "reconciler", "apply", *argv],
                               cwd=project.root, env=environ, stdin=follower, stdout=follower,
                               stderr=follower, close_fds=True)
    os.close(follower)
    shown = b""
    answered = False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # EIO: the process closed the terminal's last descriptor
                    break
                if not chunk:
                    break
                shown += chunk
            if answer is not None and not answered and PROMPT.encode() in shown:
                os.write(leader, answer.encode() + b"\n")
                answered = True
            if process.poll() is not None and not ready:
                break
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    return Result(code, shown.decode(errors="replace").replace("\r\n", "\n"), "")


def test_on_a_terminal_only_yes_applies(project: Project) -> None:
    with emulator() as emu:
        declined = on_terminal(project, emu, "no")
        assert declined.code == 1
        assert "Plan: 11 to create" in declined.out
        assert "Apply cancelled." in declined.out
        assert emu.calls() == {}

        accepted = on_terminal(project, emu, "yes")
        assert accepted.code == 0, accepted.out
        assert "Apply complete: 11 created, 0 failed." in accepted.out
        assert sorted(emu.posts().values()) == [1] * 11


def test_without_a_terminal_it_refuses_unless_auto_approve(project: Project) -> None:
    with emulator() as emu:
        env = {"RECONCILER_ENDPOINT": emu.url, "RECONCILER_TOKEN": TOKEN}
        refused = project.run("apply", env=env, stdin="yes\n")
        assert refused.code == 1
        assert "refusing to apply without confirmation" in refused.err
        assert emu.calls() == {}
        assert project.run("apply", "--auto-approve", env=env, stdin="").code == 0
        assert sorted(emu.posts().values()) == [1] * 11


def test_a_held_lock_stops_apply_before_it_asks(project: Project) -> None:
    backend = LocalBackend(project.root / ".reconciler" / "state.json")
    with emulator() as emu, backend.write_session(HOLDER):
        blocked = on_terminal(project, emu, "yes")
        assert blocked.code == 1
        assert "locked" in blocked.out
        assert f"(pid {os.getpid()})" in blocked.out  # the holder: this test's process
        assert PROMPT not in blocked.out
        assert "Plan:" not in blocked.out  # nothing planned against a state being changed
        assert emu.calls() == {}


def test_a_saved_plan_for_another_state_is_refused_even_when_that_state_is_empty(
        project: Project, tmp_path: Path) -> None:
    with emulator() as emu:
        env = {"RECONCILER_ENDPOINT": emu.url, "RECONCILER_TOKEN": TOKEN}
        assert project.run("apply", "--auto-approve", env=env, stdin="").code == 0
        (project.root / "schedules" / "extra.yaml").write_text(
            HEADER + '  - name: extra\n    task_id: extra1\n    cron: "0 0 4 * * ?"\n'
            "    cron_timezone: UTC\n")
        saved = project.run("plan", "--out", "extra.plan", env=env)
        assert saved.code == 0, saved.err
        assert "1 to create" in saved.out
        calls = emu.calls()
        elsewhere = {**env, "RECONCILER_STATE_PATH": str(tmp_path / "elsewhere" / "state.json")}
        refused = project.run("apply", "extra.plan", env=elsewhere, stdin="")
        assert refused.code == 1
        assert "the saved plan is stale" in refused.err
        assert "this state is empty" in refused.err
        assert emu.calls() == calls


def test_a_plan_made_before_any_state_can_be_applied_again_after_it_created_nothing(
        project: Project) -> None:
    saved = project.run("plan", "--out", "first.plan")
    assert saved.code == 0, saved.err
    unreachable = {"RECONCILER_ENDPOINT": "http://127.0.0.1:9", "RECONCILER_TOKEN": TOKEN}
    failed = project.run("apply", "first.plan", env=unreachable, stdin="")
    assert failed.code == 1
    assert "0 failed" not in failed.err
    with emulator() as emu:
        env = {"RECONCILER_ENDPOINT": emu.url, "RECONCILER_TOKEN": TOKEN}
        again = project.run("apply", "first.plan", env=env, stdin="")
        assert again.code == 0, again.err
        assert "Apply complete: 11 created, 0 failed." in again.out
        assert sorted(emu.posts().values()) == [1] * 11
