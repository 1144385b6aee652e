from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Project:
    """A temporary working directory with a copy of the bundled schedules."""

    root: Path

    def run(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 120,
            stdin: str | None = None) -> Result:
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith(("RECONCILER_", "HUAWEICLOUD_SDK_", "GITHUB_", "GITLAB_",
                                        "CI"))}
        environ.update(env or {})
        done = subprocess.run([sys.executable, "-m", "reconciler", *argv], cwd=self.root,
                              capture_output=True, text=True, env=environ, timeout=timeout,
                              input=stdin, check=False)
        return Result(done.returncode, done.stdout, done.stderr)

    @property
    def state_path(self) -> Path:
        return self.root / ".reconciler" / "state.json"


@pytest.fixture
def project(tmp_path: Path) -> Project:
    shutil.copytree(REPO / "schedules", tmp_path / "schedules")
    return Project(tmp_path)
