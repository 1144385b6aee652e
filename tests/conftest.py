from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest

# The throwaway PostgreSQL server's fixtures (pg_server, pg_dsn, pg_workspace). pytest honours
# pytest_plugins only in the top-level conftest; the server starts only for a test that asks.
pytest_plugins = ("tests.pg",)

REPO = Path(__file__).resolve().parent.parent

# The tests (and the commands they start) keep their cached schema validator to themselves.
_CACHE = tempfile.mkdtemp(prefix="reconciler-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)

HEADER = """\
version: 1
defaults:
  project_id: proj1
  instance_id: inst1
schedules:
"""


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


@pytest.fixture
def repo() -> Path:
    return REPO
