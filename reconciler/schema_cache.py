"""The schema's compiled validator, cached between runs.

fastjsonschema turns the schema into Python source (about 20 ms) that must then be compiled
(another 20 to 30 ms): together about a tenth of a `reconciler plan` on a small repository, paid
again by every command. The code object is the same for as long as the schema, fastjsonschema
and the Python version are, so it is kept, marshalled, in the user's cache directory
(`$XDG_CACHE_HOME/reconciler`, else `~/.cache/reconciler`) under a name made of their digest.

A cached file is only trusted when it is a regular file owned by this user that no one else may
write, in a directory that no one else may write: unmarshalling and running it is running code.
Anything wrong with the cache (missing, foreign, corrupt, unwritable) just means compiling again.
`RECONCILER_NO_CACHE=1` turns the cache off.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import CodeType

import fastjsonschema
from fastjsonschema.ref_resolver import RefResolver

from reconciler.state.files import remove_leftovers

_FORMAT = "1"
_TEMP_PREFIX = ".validator-"
_TEMP_MAX_AGE = 3600.0  # a temporary file lives for milliseconds; older ones were left by a kill


def cache_dir(environ: Mapping[str, str]) -> Path | None:
    """Where compiled validators are kept, or None when caching is off or there is no home."""
    if environ.get("RECONCILER_NO_CACHE", "").strip() not in ("", "0"):
        return None
    base = environ.get("XDG_CACHE_HOME", "").strip()
    if base and os.path.isabs(base):
        return Path(base) / "reconciler"
    home = environ.get("HOME", "").strip()
    return Path(home) / ".cache" / "reconciler" if home and os.path.isabs(home) else None


def compiled_validator(schema_text: str, schema: object,
                       directory: Path | None) -> Callable[[object], object]:
    """fastjsonschema's validator for `schema` (parsed from `schema_text`), from the cache when
    a trusted copy is there, else compiled and, when possible, stored for the next run."""
    name = "validator-" + hashlib.sha256("\0".join(
        (_FORMAT, fastjsonschema.VERSION, sys.implementation.cache_tag or "", sys.version,
         schema_text)).encode()).hexdigest()[:40] + ".marshal"
    code = _load(directory / name) if directory is not None else None
    if code is None:
        source = fastjsonschema.compile_to_code(schema)  # type: ignore[arg-type]
        code = compile(source, "<reconciler schema validator>", "exec")
        if directory is not None:
            _store(directory, name, code)
    namespace: dict[str, object] = {}
    exec(code, namespace)  # noqa: S102 - fastjsonschema's own output, compiled or trusted
    # The entry point is named after the schema's $id, as fastjsonschema.compile finds it.
    validate = namespace[RefResolver.from_schema(schema).get_scope_name()]  # type: ignore[arg-type]
    if not callable(validate):
        raise TypeError("fastjsonschema's code has no validator")
    return validate


def _private(info: os.stat_result) -> bool:
    return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _load(path: Path) -> CodeType | None:
    try:
        if not _private(os.stat(path.parent)):
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or not _private(info):
            return None
        with os.fdopen(os.dup(fd), "rb") as file:
            data = file.read()
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        code = marshal.loads(data)  # noqa: S302 - our own file, checked as trusted above
    except (EOFError, ValueError, TypeError):
        return None
    return code if isinstance(code, CodeType) else None


def _store(directory: Path, name: str, code: CodeType) -> None:
    """Write atomically (a reader sees the whole file or none); failures are ignored."""
    with contextlib.suppress(OSError):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(os.stat(directory)):
            return
        remove_leftovers(directory, _TEMP_PREFIX + "*", _TEMP_MAX_AGE)
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(marshal.dumps(code))
            os.replace(temporary, directory / name)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
