"""`reconciler state migrate` on a real PostgreSQL server: local → postgres → local, and every
refusal as one located line with exit 1."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.state.base import Provenance
from reconciler.state.local import LocalBackend
from reconciler.state.postgres import PostgresBackend
from tests.conftest import REPO
from tests.state_helpers.history import build_local_history, commit_session, rec, state_files

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, environ=env or {}, now=lambda: NOW)
    return code, out.getvalue(), err.getvalue()


def refused(result: tuple[int, str, str], message: str) -> str:
    """Assert exit 1, no traceback, and a last line `error: ...` saying `message`; that line."""
    code, out, err = result
    assert code == 1, (out, err)
    assert "Traceback" not in err
    line = err.splitlines()[-1]
    assert line.startswith("error: "), err
    assert message in line, err
    return line


def dead_port() -> int:
    with socket.socket() as probe:  # a port nothing listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project whose configured (local, default path) state has 4 serials of history."""
    build_local_history(tmp_path / ".reconciler" / "state.json")
    return tmp_path


def use_postgres(project: Path, workspace: str) -> None:
    (project / "reconciler.yaml").write_text(
        f"state:\n  backend: postgres\n  workspace: {workspace}\n")


def test_local_to_postgres_to_local_round_trip(project: Path, pg_dsn: str) -> None:
    source = LocalBackend(project / ".reconciler" / "state.json")
    files = state_files(project / ".reconciler")
    env = {"RECONCILER_STATE_DSN": pg_dsn}

    code, out, err = run("-C", str(project), "state", "migrate", "--to", "postgres",
                         "--to-workspace", "prod", env=env)
    assert code == 0, err
    lineage = source.read().lineage
    assert out.splitlines() == [
        f"Migrated state {lineage} at serial 4: 4 dispatches, 1 pending create intent, "
        "4 history entries copied.",
        f"  from {source.path}",
        f"  to   {PostgresBackend(pg_dsn, 'prod').describe()}",
        "Verified: the target's state and every serial of its history match the source; the "
        "source is unchanged.",
    ]
    assert "state: {backend: postgres, workspace: prod}" in err
    assert state_files(project / ".reconciler") == files  # the source is untouched
    pg = PostgresBackend(pg_dsn, "prod")
    assert pg.read() == source.read()
    assert pg.history() == source.history()
    for serial in range(1, 5):
        assert pg.read_serial(serial) == source.read_serial(serial)

    # the project now uses the copy; the other commands see the same state there
    use_postgres(project, "prod")
    code, out, _ = run("-C", str(project), "state", "history", env=env)
    assert code == 0
    assert [line.split("\t")[0] for line in out.splitlines()] == ["1", "2", "3", "4"]
    assert run("-C", str(project), "state", "lock", env=env)[1] == "No lock is held.\n"

    code, out, err = run("-C", str(project), "state", "migrate", "--to", "local",
                         "--to-path", "back/state.json", env=env)
    assert code == 0, err
    assert out.startswith(f"Migrated state {lineage} at serial 4: ")
    assert "state: {backend: local, path: back/state.json}" in err
    # byte for byte: the snapshot, every history file and the index
    assert state_files(project / "back") == files
    assert pg.read() == source.read()
    # and the copy is a working state: the next serial follows on
    assert commit_session(LocalBackend(project / "back" / "state.json"), rec("g")) == 5


def test_refuses_a_target_holding_a_state(project: Path, pg_dsn: str) -> None:
    env = {"RECONCILER_STATE_DSN": pg_dsn}
    taken = PostgresBackend(pg_dsn, "taken")
    commit_session(taken, rec("z"))
    argv = ("-C", str(project), "state", "migrate", "--to", "postgres")
    refused(run(*argv, "--to-workspace", "taken", env=env),
            f"workspace taken already holds another state (lineage {taken.read().lineage}, "
            "serial 1); migrate only into an empty one")
    assert [h.serial for h in taken.history()] == [1]

    assert run(*argv, "--to-workspace", "copy", env=env)[0] == 0
    # Again (a run stopped while it checked its copy, say): the copy is checked, not made again.
    code, out, err = run(*argv, "--to-workspace", "copy", env=env)
    assert code == 0, err
    assert out.startswith("Nothing to copy: the target already holds this state.")
    assert "Verified:" in out
    # the same database spelt as a URI: the source itself, identical, nothing written
    uri = "postgresql://postgres@127.0.0.1:{}/{}".format(
        *(part.split("=")[1] for part in pg_dsn.split() if part.startswith(("port", "dbname"))))
    use_postgres(project, "copy")
    code, out, _ = run("-C", str(project), "state", "migrate", "--to", "postgres", "--to-dsn",
                       uri, env=env)
    assert code == 0
    assert out.startswith("Nothing to copy")


def test_refuses_the_configured_state_itself(project: Path) -> None:
    refused(run("-C", str(project), "state", "migrate", "--to", "local"),
            "the target is the configured state itself; give --to-path to name another")
    refused(run("-C", str(project), "state", "migrate", "--to", "local", "--to-path",
                "./.reconciler/../.reconciler/state.json"), "the configured state itself")
    use_postgres(project, "prod")
    refused(run("-C", str(project), "state", "migrate", "--to", "postgres",
                env={"RECONCILER_STATE_DSN": "host=db.invalid dbname=x"}),
            "give --to-workspace or --to-dsn to name another")


@pytest.mark.parametrize("where", ["--to-dsn", "RECONCILER_STATE_DSN"])
def test_unreachable_dsn_is_one_line_without_the_password(project: Path, where: str) -> None:
    dsn = f"postgresql://ci:s3cret-pw@127.0.0.1:{dead_port()}/x?connect_timeout=3"
    argv = ["-C", str(project), "state", "migrate", "--to", "postgres"]
    env = {}
    if where == "--to-dsn":
        argv += ["--to-dsn", dsn]
    else:
        env["RECONCILER_STATE_DSN"] = dsn
    code, out, err = run(*argv, env=env)
    line = refused((code, out, err), "cannot connect")
    assert "s3cret" not in out + err
    assert "127.0.0.1" in line
    warned = "warning: --to-dsn holds a password" in err
    assert warned == (where == "--to-dsn")
    assert len(err.splitlines()) == 1 + warned


def test_invalid_dsn_and_usage_errors(project: Path) -> None:
    argv = ("-C", str(project), "state", "migrate")
    err = refused(run(*argv, "--to", "postgres", "--to-dsn", "host=h password='s3cret-pw"),
                  "not a valid PostgreSQL connection string")
    assert "s3cret" not in err
    refused(run(*argv, "--to", "postgres"), "--to postgres needs a DSN: --to-dsn DSN, "
                                            "RECONCILER_STATE_DSN, or state.dsn")
    refused(run(*argv, "--to", "local", "--to-dsn", "host=h", "--to-path", "x.json"),
            "--to-dsn and --to-workspace are for --to postgres")
    refused(run(*argv, "--to", "postgres", "--to-dsn", "host=h", "--to-path", "x.json"),
            "--to-path is for --to local")
    refused(run(*argv, "--to", "mysql"), "invalid choice: 'mysql'")
    refused(run(*argv), "the following arguments are required: --to")


def test_refuses_an_empty_or_locked_source(tmp_path: Path, project: Path) -> None:
    refused(run("-C", str(tmp_path / "nowhere"), "state", "migrate", "--to", "local"),
            "not a directory")
    (tmp_path / "empty").mkdir()
    refused(run("-C", str(tmp_path / "empty"), "state", "migrate", "--to", "local",
                "--to-path", "copy.json"), "there is no state to migrate")
    source = LocalBackend(project / ".reconciler" / "state.json", host="runner-7", pid=4242)
    holder = Provenance(operation="apply", time="t", actor="bob", ci_job="job-42")
    with source.write_session(holder):
        refused(run("-C", str(project), "state", "migrate", "--to", "local", "--to-path",
                    "copy.json"), "state is locked: lock")
    # the target was checked empty, then the source's lock refused: the target is untouched
    assert not (project / "copy.json").exists()
    (project / "a-file").write_text("")
    refused(run("-C", str(project), "state", "migrate", "--to", "local", "--to-path",
                "a-file/state.json"), "a-file/state.json: cannot read: Not a directory")


def test_without_psycopg_the_error_says_what_to_install(project: Path) -> None:
    code = ("import sys; sys.modules['psycopg'] = None\n"
            "from reconciler.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run(
        [sys.executable, "-c", code, "-C", str(project), "state", "migrate", "--to",
         "postgres", "--to-dsn", "host=127.0.0.1 dbname=x"],
        capture_output=True, text=True, cwd=REPO, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1
    assert done.stderr.startswith("error: the postgres state backend needs psycopg 3: "
                                  "pip install 'reconciler[postgres]'")
    assert "Traceback" not in done.stderr


def test_help_explains_migrate_and_postgres_force_unlock(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run("state", "migrate", "--help")[0] == 0
    text = capsys.readouterr().out
    for part in ("--to {local,postgres}", "--to-path PATH", "--to-dsn DSN",
                 "--to-workspace NAME", "--lock-timeout SECONDS", "leave the source as it",
                 "PGPASSWORD", "reconciler state migrate --to postgres --to-workspace prod"):
        assert part in " ".join(text.split()) or part in text, part
    assert run("force-unlock", "--help")[0] == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Postgres backend: the holder's database session is ended" in text
    assert "advisory lock" in text
