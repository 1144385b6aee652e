"""The compiled schema validator cached between runs: used only when trusted."""

from __future__ import annotations

import os
from pathlib import Path

import fastjsonschema
import pytest

from reconciler import schema
from reconciler.schema_cache import cache_dir, compiled_validator

GOOD = {"version": 1, "schedules": [{"name": "a", "task_id": "t1", "project_id": "p",
                                     "instance_id": "i", "cron": "0 0 2 * * ?"}]}
BAD = {"version": 1, "schedules": [{"name": "a", "cron": 5}]}


def accepts(validate: object, document: object) -> bool:
    try:
        validate(document)  # type: ignore[operator]
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def build(directory: Path | None) -> object:
    return compiled_validator(schema.schema_text(), schema.schema(), directory)


def cached_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("validator-*.marshal"))


def test_the_cached_validator_is_used_and_judges_like_a_fresh_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = build(tmp_path)
    [stored] = cached_files(tmp_path)
    assert stored.stat().st_mode & 0o777 == 0o600
    assert tmp_path.stat().st_mode & 0o022 == 0

    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError("compiled although a trusted copy was cached")

    monkeypatch.setattr(fastjsonschema, "compile_to_code", refuse)
    cached = build(tmp_path)
    for document in (GOOD, BAD, {"version": 2}, {}, []):
        assert accepts(cached, document) == accepts(fresh, document)
    assert accepts(cached, GOOD)
    assert not accepts(cached, BAD)


@pytest.mark.parametrize("loosen", ["file", "directory"])
def test_a_copy_others_may_write_is_not_trusted(tmp_path: Path, loosen: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    build(tmp_path)
    [stored] = cached_files(tmp_path)
    # What another user could have put there: a copy that would run their code.
    (stored if loosen == "file" else tmp_path).chmod(0o666 if loosen == "file" else 0o777)
    compiled: list[bool] = []
    original = fastjsonschema.compile_to_code

    def counting(*args: object, **kwargs: object) -> str:
        compiled.append(True)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fastjsonschema, "compile_to_code", counting)
    assert accepts(build(tmp_path), GOOD)
    assert compiled == [True]


def test_a_symlinked_copy_is_not_followed(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    build(tmp_path)
    [stored] = cached_files(tmp_path)
    target = tmp_path / "elsewhere"
    stored.rename(target)
    stored.symlink_to(target)
    compiled: list[bool] = []
    original = fastjsonschema.compile_to_code
    monkeypatch.setattr(fastjsonschema, "compile_to_code",
                        lambda *a, **k: compiled.append(True) or original(*a, **k))
    assert accepts(build(tmp_path), GOOD)
    assert compiled == [True]


@pytest.mark.parametrize("content", [b"", b"\x00garbage", b"\xe3" * 100])
def test_a_corrupt_copy_is_compiled_again_and_replaced(tmp_path: Path, content: bytes) -> None:
    build(tmp_path)
    [stored] = cached_files(tmp_path)
    stored.write_bytes(content)
    assert accepts(build(tmp_path), GOOD)
    assert stored.read_bytes() != content


def test_an_unwritable_cache_only_means_compiling(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    assert accepts(build(blocked / "reconciler"), GOOD)
    assert not accepts(build(None), BAD)


def test_a_changed_schema_gets_its_own_copy(tmp_path: Path) -> None:
    text = schema.schema_text()
    compiled_validator(text, schema.schema(), tmp_path)
    compiled_validator(text + "\n", schema.schema(), tmp_path)
    assert len(cached_files(tmp_path)) == 2


def test_where_the_cache_lives() -> None:
    assert cache_dir({"XDG_CACHE_HOME": "/x/cache", "HOME": "/home/u"}) == Path(
        "/x/cache/reconciler")
    assert cache_dir({"HOME": "/home/u"}) == Path("/home/u/.cache/reconciler")
    assert cache_dir({"XDG_CACHE_HOME": "relative", "HOME": "/home/u"}) == Path(
        "/home/u/.cache/reconciler")
    assert cache_dir({}) is None
    assert cache_dir({"HOME": "/home/u", "RECONCILER_NO_CACHE": "1"}) is None
    assert cache_dir({"HOME": "/home/u", "RECONCILER_NO_CACHE": "0"}) is not None


def test_the_process_validator_comes_from_the_cache(tmp_path: Path) -> None:
    assert os.environ["XDG_CACHE_HOME"]  # set by conftest: the tests' own cache
    assert schema.is_valid(GOOD)
    assert not schema.is_valid(BAD)
    assert cached_files(Path(os.environ["XDG_CACHE_HOME"]) / "reconciler")


def test_temporary_files_left_by_a_killed_writer_are_swept(tmp_path: Path) -> None:
    old = tmp_path / ".validator-killed"
    recent = tmp_path / ".validator-being-written"
    for path in (old, recent):
        path.write_bytes(b"half")
    os.utime(old, (0, 0))
    build(tmp_path)  # stores a copy, and sweeps on the way
    assert not old.exists()
    assert recent.exists()
    assert cached_files(tmp_path)
