"""The wheel carries the schema, and an installed (non-editable) copy validates files with it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(REPO)],
        check=True, capture_output=True,
    )
    (built,) = out.glob("reconciler-*.whl")
    return built


def test_wheel_contains_the_schema(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        packaged = json.loads(archive.read("reconciler/schema/schedules.schema.json"))
    assert packaged == json.loads((REPO / "schema/schedules.schema.json").read_text())
    assert "reconciler/cli/__init__.py" in names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)


def test_installed_wheel_validates(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True,
    )
    project = tmp_path / "project"
    shutil.copytree(REPO / "schedules", project / "schedules")
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import reconciler; assert reconciler.__file__.startswith(sys.argv[1]);"
        "from reconciler.cli import main; sys.exit(main(['-C', sys.argv[2], 'validate']))"
    )
    # Run from a directory with no schema/ nearby, so only the packaged copy can be found.
    result = subprocess.run([sys.executable, "-c", script, str(target), str(project)],
                            cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "schedules: valid." in result.stdout
