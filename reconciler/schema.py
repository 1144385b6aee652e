"""The JSON Schema of desired files: found, loaded and compiled once per process.

`schema/schedules.schema.json` in the repository is the single source of truth; the wheel carries
a copy inside the package (see pyproject.toml), and a source checkout or editable install reads the
repository file directly.

Two validators come from that one schema. `is_valid` uses fastjsonschema, which compiles the
schema to Python code: measured on 100 generated schedules it takes 4.7 ms where jsonschema's
reused Draft202012Validator takes 99 ms, and jsonschema alone kept `validate` from its target.
Only a document that fails is then explained by jsonschema, whose errors carry the paths and
keywords the messages are made from. The compiled validator is cached between runs
(`reconciler.schema_cache`). The schema keeps to keywords both implement the same way in
draft 7 and 2020-12 ($ref to $defs, if/then, anyOf, boolean subschemas, const, enum, pattern,
ranges), and a property test checks that the two validators agree. Its cross-field rules are
phrased so that a cron schedule fails no subschema: fastjsonschema raises an exception for each
failed branch, and five per schedule took most of its time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastjsonschema

from reconciler.schema_cache import cache_dir, compiled_validator

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

SCHEMA_NAME = "schedules.schema.json"


@cache
def schema_text() -> str:
    """The schema file's text, read once per process (the cache key and the parse share it)."""
    here = Path(__file__).resolve().parent
    # A package on disk (the usual install) or a checkout: read as a plain file, without
    # importlib.resources, whose readers (and zipfile) take 10-15 ms to import.
    for path in (here / "schema" / SCHEMA_NAME, here.parent / "schema" / SCHEMA_NAME):
        if path.is_file():
            return path.read_text(encoding="utf-8")
    from importlib import resources  # noqa: PLC0415 - a zipped package only

    return resources.files("reconciler").joinpath("schema", SCHEMA_NAME).read_text(
        encoding="utf-8")


@cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(schema_text())
    return loaded


@cache
def validator() -> Draft202012Validator:
    """One compiled validator per process: building one per document costs ~40x more.

    Imported on first use: only documents that fail the fast path need it.
    """
    from jsonschema import Draft202012Validator  # noqa: PLC0415 - deferred: ~130 ms import

    return Draft202012Validator(schema())


@cache
def _compiled() -> Callable[[Any], Any]:
    return compiled_validator(schema_text(), schema(), cache_dir(os.environ))


def is_valid(document: Any) -> bool:
    """Whether a whole desired file's data satisfies the schema (fast path)."""
    try:
        _compiled()(document)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def known_keys(section: str) -> tuple[str, ...]:
    """The keys the schema allows in `file`, `defaults` or `schedule`."""
    root = schema()
    if section == "file":
        return tuple(root["properties"])
    if section == "defaults":
        return tuple(root["properties"]["defaults"]["properties"])
    return tuple(root["$defs"]["schedule"]["properties"])
