"""A password is never taken from reconciler.yaml's `state.dsn`, in any of libpq's spellings,
and never printed; RECONCILER_STATE_DSN may carry one."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from reconciler import config
from reconciler.cli import main


@pytest.mark.parametrize(("dsn", "has_password"), [
    ("postgresql://ci:s3cret@db/reconciler", True),
    ("postgres://ci:s3cret@db/reconciler", True),
    ("postgresql://ci:@db/reconciler", True),
    ("postgresql://db/reconciler?password=s3cret", True),
    ("postgresql://db/reconciler?sslmode=require&password=s3cret", True),
    ("postgresql://db/reconciler?sslpassword=s3cret", True),
    ("postgresql://db/reconciler?pass%77ord=s3cret", True),  # libpq decodes the name too
    ("host=db password=s3cret", True),
    ("host=db password = s3cret dbname=x", True),
    ("host=db password='s3 cret'", True),
    ("host=db sslpassword=s3cret", True),
    ("postgresql://ci@db:5432,db2:5433/reconciler?connect_timeout=3", False),
    ("postgresql://db/reconciler?passfile=/home/ci/.pgpass", False),
    ("host=db dbname=reconciler user=ci", False),
    ("host=db application_name='my password=x'", False),  # a quoted value
    ("host=db dbname='password='", False),
    ("host=db passfile=/home/ci/.pgpass", False),
    (r"host=db dbname=a\ password=b", False),
])
def test_dsn_has_password(dsn: str, has_password: bool) -> None:
    assert config.dsn_has_password(dsn) is has_password


def run(project: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["-C", str(project), "state", "list"], stdout=out, stderr=err,
                environ=env or {})
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("dsn", [
    "postgresql://db/reconciler?sslmode=require&password=s3cret",
    "host=db user=ci password=s3cret",
])
def test_password_in_the_config_file_is_refused_unprinted(tmp_path: Path, dsn: str) -> None:
    (tmp_path / "reconciler.yaml").write_text(
        f"state:\n  backend: postgres\n  dsn: '{dsn}'\n")
    code, out, err = run(tmp_path)
    assert code == 1
    assert err == ("reconciler.yaml:3:8: state.dsn must not contain a password; put it in "
                   "RECONCILER_STATE_DSN, PGPASSWORD or ~/.pgpass\n")
    assert "s3cret" not in out + err


def test_password_in_the_environment_is_accepted(tmp_path: Path) -> None:
    settings = config.load_settings(
        tmp_path, None, {"RECONCILER_STATE_DSN": "postgresql://ci:s3cret@db/x"})
    assert settings.state.dsn == "postgresql://ci:s3cret@db/x"
