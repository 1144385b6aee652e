from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler import __version__
from reconciler.cli import main
from tests.conftest import HEADER, REPO
from tests.factories import python_output

FIXED_NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, environ=env or {}, now=lambda: FIXED_NOW)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "schedules", tmp_path / "schedules")
    return tmp_path


BAD = HEADER + "  - name: a\n    task_id: t1\n    cron: '0 0 25 * * ?'\n    crn: x\n"


@pytest.fixture
def bad_project(tmp_path: Path) -> Path:
    (tmp_path / "schedules").mkdir()
    (tmp_path / "schedules" / "bad.yaml").write_text(BAD)
    return tmp_path


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--version")[0] == 0
    assert __version__ in capsys.readouterr().out
    for command in ("validate", "plan", "show", "state", "schema", "force-unlock"):
        assert run(command, "--help")[0] == 0
        assert "usage: reconciler" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["validate", "--format", "xml"], ["plan", "--bogus"],
     ["state"], ["show"]],
)
def test_usage_errors_exit_1_not_2(argv: list[str]) -> None:
    code, _, err = run(*argv)
    assert code == 1
    assert "reconciler" in err
    assert "Traceback" not in err


def test_validate_bundled_example(project: Path) -> None:
    code, out, err = run("-C", str(project), "validate")
    assert code == 0, err
    assert out.startswith("4 files, ")
    assert out.endswith(" schedules: valid.\n")


def test_validate_text_problems_on_stderr(bad_project: Path) -> None:
    code, out, err = run("-C", str(bad_project), "validate")
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith("schedules/bad.yaml:8:16: cron: hour field")
    assert lines[1].startswith("schedules/bad.yaml:9:5: unknown key 'crn'; did you mean 'cron'?")
    assert lines[-1] == "2 problems in 1 file."


def test_validate_json(bad_project: Path) -> None:
    code, out, _ = run("-C", str(bad_project), "validate", "--format", "json")
    assert code == 1
    document = json.loads(out)
    assert document["valid"] is False
    assert [(p["line"], p["col"]) for p in document["problems"]] == [(8, 16), (9, 5)]


def test_validate_github_annotations(bad_project: Path) -> None:
    code, out, _ = run("-C", str(bad_project), "validate", "--format", "github")
    assert code == 1
    first = out.splitlines()[0]
    assert first.startswith("::error file=schedules/bad.yaml,line=8,col=16,")
    assert "::cron: hour field" in first


def test_github_escaping() -> None:
    from reconciler.model import Problem
    from reconciler.render.problems import github

    line = github([Problem("a,b:c.yaml", 1, 2, "50% bad\nnext")])
    assert line == "::error file=a%2Cb%3Ac.yaml,line=1,col=2,title=reconciler validate::" \
        "50%25 bad%0Anext\n"


def test_validate_sarif(bad_project: Path) -> None:
    code, out, _ = run("-C", str(bad_project), "validate", "--format", "sarif")
    assert code == 1
    log = json.loads(out)
    assert log["version"] == "2.1.0"
    results = log["runs"][0]["results"]
    assert len(results) == 2
    region = results[0]["locations"][0]["physicalLocation"]["region"]
    assert region == {"startLine": 8, "startColumn": 16}
    assert results[0]["ruleId"] == log["runs"][0]["tool"]["driver"]["rules"][0]["id"]


def test_validate_explicit_paths_and_config(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.yaml").write_text(
        HEADER + "  - name: a\n    task_id: t1\n    cron: '0 0 2 * * ?'\n")
    assert run("-C", str(tmp_path), "validate", "elsewhere/x.yaml")[0] == 0
    assert run("-C", str(tmp_path), "validate")[0] == 1  # no schedules/ here
    (tmp_path / "reconciler.yaml").write_text("schedules: [elsewhere]\n")
    assert run("-C", str(tmp_path), "validate")[0] == 0
    env = {"RECONCILER_SCHEDULES": "missing"}
    code, _, err = run("-C", str(tmp_path), "validate", env=env)
    assert code == 1
    assert "missing: no such file or directory" in err


def test_config_unknown_key_is_located(tmp_path: Path) -> None:
    (tmp_path / "reconciler.yaml").write_text("schedules: [x]\nstate:\n  bakend: local\n")
    code, _, err = run("-C", str(tmp_path), "validate")
    assert code == 1
    assert err.startswith("reconciler.yaml:3:3: unknown key 'bakend'; did you mean 'backend'?")


def test_config_rejects_password_in_dsn(tmp_path: Path) -> None:
    (tmp_path / "reconciler.yaml").write_text(
        "state:\n  dsn: postgresql://u:secret@db/x\n")
    code, _, err = run("-C", str(tmp_path), "validate")
    assert code == 1
    assert "must not contain a password" in err
    assert "secret" not in err


def test_missing_directory() -> None:
    code, _, err = run("-C", "/nonexistent/dir", "validate")
    assert code == 1
    assert "not a directory" in err


def test_schema_command_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run("schema")
    assert code == 0
    assert json.loads(out) == json.loads((REPO / "schema/schedules.schema.json").read_text())


def test_python_dash_m_entry_point(project: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "reconciler", "-C", str(project), "validate"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_the_command_collects_garbage_less_often_than_a_library_would() -> None:
    # In a process of its own: freezing the test process's objects would outlive the test.
    code = ("import gc\n"
            "import reconciler.cli as cli\n"
            "before = gc.get_threshold()\n"
            "def main():\n"
            "    print(before[0], gc.get_threshold()[0], gc.get_freeze_count() > 0)\n"
            "    return 0\n"
            "cli.main = main\n"
            "cli.run()\n")
    assert python_output(code).split() == ["700", "10000", "True"]


def _command_ending_with(code: int, output: str) -> list[str]:
    """A `reconciler` process whose command writes the value of the expression `output` to
    stdout and returns `code`."""
    return [sys.executable, "-c",
            "import sys\n"
            "import reconciler.cli as cli\n"
            "def main():\n"
            f"    sys.stdout.write({output})\n"
            f"    return {code}\n"
            "cli.main = main\n"
            "cli.run()\n"
            "print('run() returned')\n"]


# Buffered as on a user's machine, where the streams are flushed only at the end.
_BUFFERED = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}


def test_the_process_ends_with_the_commands_exit_code_and_all_its_output() -> None:
    # More than the stream's buffer and the pipe's.
    result = subprocess.run(_command_ending_with(2, "'line\\n' * 50_000"), env=_BUFFERED,
                            capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (2, "line\n" * 50_000, "")


def test_output_nobody_reads_any_more_ends_the_process_with_1_and_no_traceback() -> None:
    process = subprocess.Popen(_command_ending_with(0, "'done\\n'"), env=_BUFFERED,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.close()  # the reader has gone before the command's output is flushed
    error = process.stderr.read()
    process.stderr.close()
    assert (process.wait(timeout=60), error) == (1, b"")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_output_that_cannot_be_written_is_said_in_one_line() -> None:
    with open("/dev/full", "w") as full:  # every write fails: no space left on device
        result = subprocess.run(_command_ending_with(0, "'done\\n'"), env=_BUFFERED,
                                stdout=full, stderr=subprocess.PIPE, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot write the output: ")
    assert len(result.stderr.splitlines()) == 1


def test_under_a_profiler_the_interpreter_ends_as_usual() -> None:
    # Profilers, tracers and coverage write their results at exit (here: an atexit handler).
    command = _command_ending_with(0, "'done\\n'")
    command[2] = ("import atexit, sys\n"
                  "atexit.register(lambda: print('results written'))\n"
                  "sys.setprofile(lambda *args: None)\n" + command[2])
    result = subprocess.run(command, env=_BUFFERED, capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout) == (0, "done\nresults written\n")


def test_the_command_line_leaves_heavy_libraries_to_the_commands_that_use_them() -> None:
    # Every command, --version included, pays for what `reconciler.cli` imports.
    loaded = python_output(
        "import sys, reconciler.cli\n"
        "print(sorted(m for m in ('deepdiff', 'jsonschema', 'psycopg') if m in sys.modules))")
    assert loaded.strip() == "[]"


def test_validate_json_counts_the_entries_written_also_when_invalid(bad_project: Path) -> None:
    (bad_project / "schedules" / "more.yaml").write_text(
        HEADER + "".join(f"  - name: m{n}\n    task_id: m{n}\n    period: DAY\n"
                         f"    dispatch_interval: {99 if n == 0 else 1}\n" for n in range(3)))
    code, out, _ = run("-C", str(bad_project), "validate", "--format", "json")
    assert code == 1
    document = json.loads(out)
    assert document["files"] == 2
    assert document["schedules"] == 4  # one in bad.yaml, three in more.yaml


def test_records_carry_the_time_they_were_applied_not_the_commands_start(
        project: Path) -> None:
    # Each call of the clock a minute later: the start, the plan, then the apply itself.
    moments = (FIXED_NOW + timedelta(minutes=n) for n in range(1000))
    code = main(["-C", str(project), "apply", "--auto-approve", "--emulator"],
                stdout=io.StringIO(), stderr=io.StringIO(), environ={},
                now=lambda: next(moments))
    assert code == 0
    state = json.loads((project / ".reconciler" / "state.json").read_text())
    applied = {record["applied_at"] for record in state["dispatches"].values()}
    assert len(applied) == 1
    assert applied.pop() > "2026-11-29T12:01:00Z"  # after the start and the plan


def test_a_state_that_cannot_be_sealed_still_gets_the_summary(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reconciler.state import local
    from reconciler.state.base import StateError

    def full_disk(self: object, summary: str) -> None:
        raise StateError("state.json: cannot seal: No space left on device")

    monkeypatch.setattr(local._LocalSession, "commit", full_disk)
    code, _, err = run("-C", str(project), "-q", "apply", "--auto-approve", "--emulator")
    assert code == 1
    assert err.splitlines()[-2:] == [
        "Apply finished, but its state could not be sealed: 11 created, 0 failed.",
        "error: state.json: cannot seal: No space left on device",
    ]
