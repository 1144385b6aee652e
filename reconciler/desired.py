"""Desired state: finding the YAML files and turning a schedule into the exact API request body.

`normalise` is the one place that decides what is sent: fingerprints, plans and requests all go
through it, so two spellings of the same schedule can never look different to the planner.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from reconciler import cron
from reconciler.model import DispatchKey, Spec

MIN_START_MS = 946_684_800_000
MAX_START_MS = 2_147_512_447_000
DEFAULT_PATHS = ("schedules",)
YAML_SUFFIXES = (".yaml", ".yml")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A desired file as read: its display path and a digest of its bytes (for stale plans)."""

    path: str
    sha256: str


def find_files(paths: Iterable[str], base: Path) -> tuple[list[Path], list[str]]:
    """All YAML files below `paths` (files given directly are taken as they are), sorted.

    Returns the files (and whatever else was named directly) and the paths that do not exist.
    """
    found: set[Path] = set()
    missing: list[str] = []
    for given in paths:
        path = base / given
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            found.update(
                p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file()
            )
        elif path.exists():  # named directly but not a file (a device, a FIFO): said on reading
            found.add(path)
        else:
            missing.append(given)
    return sorted(found, key=lambda p: p.as_posix()), missing


def parse_start_datetime(value: object) -> int:
    """ISO-8601 with an explicit offset, or epoch milliseconds, to epoch milliseconds.

    Raises ValueError with a message fit for a user.
    """
    if isinstance(value, bool):
        raise ValueError("start_datetime must be a time, not a boolean")
    if isinstance(value, float):
        # JSON Schema counts 1796054400000.0 as an integer, so this is the check that says no.
        raise ValueError(
            f"start_datetime {value!r} is a decimal number; write epoch milliseconds as a whole "
            "number without a decimal point, or an ISO-8601 time with an offset"
        )
    if isinstance(value, int):
        millis = value
    elif isinstance(value, str):
        text = value.strip()
        # ASCII only: str.isdigit() also accepts digits such as '²' that int() refuses.
        if text.isascii() and text.isdigit():
            millis = int(text)
        else:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(
                    f"start_datetime {value!r} is not an ISO-8601 time "
                    "(e.g. 2026-12-01T00:00:00+08:00) or epoch milliseconds"
                ) from None
            if moment.tzinfo is None or moment.utcoffset() is None:
                raise ValueError(
                    f"start_datetime {value!r} has no UTC offset; add one "
                    "(e.g. +08:00 or Z) so it means the same time everywhere"
                )
            millis = round(moment.timestamp() * 1000)
    else:
        raise ValueError("start_datetime must be an ISO-8601 time or epoch milliseconds")
    if not MIN_START_MS <= millis <= MAX_START_MS:
        raise ValueError(
            f"start_datetime {value!r} is outside the API's range "
            "2000-01-01T00:00:00Z .. 2038-01-19T11:14:07Z "
            f"({MIN_START_MS}..{MAX_START_MS} ms)"
        )
    return millis


def merged(entry: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A schedule with its file's defaults under it; cron_timezone only reaches cron schedules."""
    result = dict(entry)
    for name, value in defaults.items():
        if name == "cron_timezone" and "cron" not in entry:
            continue
        result.setdefault(name, value)
    return result


def normalise(entry: Mapping[str, Any]) -> tuple[DispatchKey, Spec]:
    """The key and exact request body of a valid, merged schedule entry."""
    key = DispatchKey(entry["project_id"], entry["instance_id"], entry["task_id"])
    start = entry.get("start_datetime")
    cron_text = entry.get("cron")
    interval = entry.get("dispatch_interval")
    spec = Spec(
        cron=cron.normalise(cron_text) if cron_text is not None else None,
        cron_timezone=entry.get("cron_timezone"),
        period=entry.get("period"),
        dispatch_interval=int(interval) if interval is not None else None,
        start_datetime=parse_start_datetime(start) if start is not None else None,
        remark=entry.get("remark") or None,  # an empty remark is the same as none
    )
    return key, spec
