"""The JSON Schema of desired files: found, loaded and compiled once per process.

`schema/schedules.schema.json` in the repository is the single source of truth; the wheel carries
a copy inside the package (see pyproject.toml), and a source checkout or editable install reads the
repository file directly.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_NAME = "schedules.schema.json"


def schema_text() -> str:
    packaged = resources.files("reconciler").joinpath("schema", SCHEMA_NAME)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(__file__).resolve().parent.parent / "schema" / SCHEMA_NAME
    return checkout.read_text(encoding="utf-8")


@cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(schema_text())
    return loaded


@cache
def validator() -> Draft202012Validator:
    """One compiled validator per process: building one per document costs ~40x more."""
    return Draft202012Validator(schema())


def known_keys(section: str) -> tuple[str, ...]:
    """The keys the schema allows in `file`, `defaults` or `schedule`."""
    root = schema()
    if section == "file":
        return tuple(root["properties"])
    if section == "defaults":
        return tuple(root["properties"]["defaults"]["properties"])
    return tuple(root["$defs"]["schedule"]["properties"])
