"""Bad values on the command line and in the environment: one clear line and exit 1, never an
internal error, and nothing written."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest

from reconciler.cli import main
from tests.conftest import REPO


def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, environ=env or {})
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "schedules", tmp_path / "project" / "schedules")
    return tmp_path / "project"


def assert_one_clear_line(code: int, err: str, *expected: str) -> None:
    assert code == 1
    assert "internal error" not in err
    assert "Traceback" not in err
    for text in expected:
        assert text in err


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e308", "soon", "86401"])
def test_lock_timeout_out_of_range(project: Path, value: str) -> None:
    code, _, err = run("-C", str(project), "state", "rm", "x", "--lock-timeout", value)
    assert_one_clear_line(code, err, "--lock-timeout")


@pytest.mark.parametrize("target", ["missing-dir/p.plan", "."])
def test_plan_out_where_it_cannot_be_written(project: Path, target: str) -> None:
    before = sorted(p.name for p in project.iterdir())
    code, _, err = run("-C", str(project), "plan", "--out", target)
    assert_one_clear_line(code, err, "cannot write the plan")
    assert sorted(p.name for p in project.iterdir()) == before  # no temp file left behind


@pytest.mark.parametrize("target", ["missing-dir/r.jsonl", "."])
def test_apply_report_where_it_cannot_be_written(project: Path, target: str) -> None:
    code, _, err = run("-C", str(project), "apply", "--auto-approve", "--report", target,
                       env={"RECONCILER_ENDPOINT": "http://127.0.0.1:9",
                            "RECONCILER_TOKEN": "t0ken-long-enough"})
    assert_one_clear_line(code, err, "--report", "cannot write")
    assert not (project / ".reconciler").exists()  # stopped before the lock: nothing written


@pytest.mark.parametrize("path", ["/", ".", "..", "state-dir/"])
def test_state_path_that_names_no_file(project: Path, path: str) -> None:
    code, _, err = run("-C", str(project), "plan", env={"RECONCILER_STATE_PATH": path})
    assert_one_clear_line(code, err, "RECONCILER_STATE_PATH must name a file")
    (project / "reconciler.yaml").write_text(f"state:\n  path: '{path}'\n")
    code, _, err = run("-C", str(project), "plan")
    assert_one_clear_line(code, err, "reconciler.yaml:2:9: state.path must name a file")


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:99999", "http://127.0.0.1:0"])
def test_endpoint_port_out_of_range(project: Path, endpoint: str) -> None:
    code, _, err = run("-C", str(project), "apply", "--auto-approve",
                       env={"RECONCILER_ENDPOINT": endpoint, "RECONCILER_TOKEN": "t0ken-long"})
    assert_one_clear_line(code, err, "port must be 1-65535")


@pytest.mark.parametrize("argv", [["emulator", "--port", "99999"],
                                  ["emulator", "--latency-ms", "-5"]])
def test_emulator_options_out_of_range(argv: list[str]) -> None:
    code, _, err = run(*argv)
    assert_one_clear_line(code, err, argv[1])


@pytest.mark.parametrize(("argv", "message"), [
    (["state", "diff", "/dev/zero"], "/dev/zero: is a device, a FIFO or a socket, not a state"),
    (["apply", "/dev/zero"], "/dev/zero: is a device, a FIFO or a socket, not a plan file"),
    (["--config", "/dev/zero", "plan"], "/dev/zero: cannot read config: it is a device"),
    (["state", "diff", "."], ": is a directory, not a state file"),
    (["validate", "/dev/null"], "/dev/null: cannot read: it is a device, a FIFO or a socket"),
])
def test_files_that_are_not_regular_files(project: Path, argv: list[str], message: str) -> None:
    code, _, err = run("-C", str(project), *argv)
    assert_one_clear_line(code, err, message)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("env", "coloured"), [
    ({}, True),
    ({"NO_COLOR": ""}, True),  # no-color.org: set and empty does not count
    ({"NO_COLOR": "1"}, False),
    ({"TERM": "dumb"}, False),
    ({"TERM": "xterm-256color"}, True),
])
def test_colour_on_a_terminal(project: Path, env: dict[str, str], coloured: bool) -> None:
    out = Terminal()
    assert main(["-C", str(project), "plan"], stdout=out, stderr=io.StringIO(),
                environ=env) == 0
    assert ("\033[" in out.getvalue()) is coloured


def test_validate_of_a_fifo_does_not_wait_for_a_writer(project: Path) -> None:
    os.mkfifo(project / "schedules" / "pipe.yaml")  # a directory's walk takes only files
    os.mkfifo(project / "named")
    outcome: list[tuple[int, str, str]] = []
    validating = threading.Thread(
        target=lambda: outcome.append(run("-C", str(project), "validate", "schedules", "named")),
        daemon=True)
    validating.start()
    validating.join(timeout=30)
    assert not validating.is_alive(), "validate waited for a writer of the FIFO"
    code, _, err = outcome[0]
    assert_one_clear_line(code, err, "named: cannot read: it is a device, a FIFO or a socket",
                          "1 problem in 4 files.")  # the four bundled files were read


def test_an_interrupt_exits_1_like_any_error(project: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("reconciler.cli.validate_cmd.load_desired", interrupted)
    code, _, err = run("-C", str(project), "validate")
    assert (code, err) == (1, "interrupted\n")


def _run_bounded(*argv: str) -> tuple[int, str, str]:
    """`run`, failing the test instead of hanging it when the command waits for ever."""
    outcome: list[tuple[int, str, str]] = []
    command = threading.Thread(target=lambda: outcome.append(run(*argv)), daemon=True)
    command.start()
    command.join(timeout=30)
    assert not command.is_alive(), f"{argv} hung"
    return outcome[0]


@pytest.mark.parametrize(("damage", "argv", "message"), [
    ("history-is-a-file", ["state", "history"], "cannot read the history"),
    ("journal-is-a-directory", ["state", "list"], "state.journal: is a directory"),
    ("lock-is-a-directory", ["state", "lock"], "state.lock: is a directory, not a lock file"),
    ("state-is-a-fifo", ["plan"], "state.json: is a device, a FIFO or a socket"),
    ("journal-is-a-fifo", ["state", "list"], "state.journal: is a device, a FIFO or a socket"),
])
def test_damaged_state_files_are_one_clear_line(project: Path, damage: str, argv: list[str],
                                                message: str) -> None:
    state = project / ".reconciler"
    state.mkdir()
    what, _, kind = damage.partition("-is-a-")
    path = state / {"history": "state.history", "journal": "state.journal",
                    "lock": "state.lock", "state": "state.json"}[what]
    if kind == "file":
        path.write_text("not a directory")
    elif kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)
    code, _, err = _run_bounded("-C", str(project), *argv)
    assert_one_clear_line(code, err, message)


def test_a_lock_of_an_impossible_process_is_stale(project: Path) -> None:
    state = project / ".reconciler"
    state.mkdir()
    (state / "state.lock").write_text(json.dumps({
        "lock_id": "l-1", "operation": "apply", "who": "x", "host": socket.gethostname(),
        "pid": 99999999999, "created": "2026-01-01T00:00:00Z",
        "heartbeat": "2099-01-01T00:00:00Z"}))
    code, out, err = run("-C", str(project), "state", "lock")
    assert code == 0, err
    assert "It looks stale: process 99999999999 cannot exist" in out


@pytest.mark.parametrize(("name", "argv", "message"), [
    ("deep.plan", ["apply", "deep.plan"], "deep.plan: not a plan file (nested too deeply)"),
    ("deep.json", ["state", "diff", "deep.json"], "deep.json: not a state file (nested too "
     "deeply)"),
])
def test_json_nested_beyond_what_python_parses(project: Path, name: str, argv: list[str],
                                               message: str) -> None:
    (project / name).write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = run("-C", str(project), *argv)
    assert_one_clear_line(code, err, message)
