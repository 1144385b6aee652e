"""A snapshot as bytes, the same for every backend.

The local backend writes these bytes to `state.json` and, gzip-compressed, to its history; the
postgres backend stores the compressed bytes as a history row. One encoding means that a state
migrated between backends is the same down to the byte, and that `format_version` is checked
the same way wherever a snapshot is read from (a file, a history row, a git revision).
"""

from __future__ import annotations

import gzip
import json
import operator
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from reconciler.model import SPEC_FIELDS, DispatchKey, ReconcilerError, Spec
from reconciler.state.base import (
    FORMAT_VERSION,
    Intent,
    Provenance,
    Record,
    Snapshot,
    StateError,
    int_field,
    text_field,
)

MAX_STATE_BYTES = 1024 * 1024 * 1024
"""A state of 100,000 dispatches is about 70 MiB and its journal as much again; a file far
larger is not one of ours (and reading it whole could exhaust memory)."""


MALFORMED = (ReconcilerError, KeyError, TypeError, ValueError, AttributeError, RecursionError)
"""What reading a well-formed JSON document of the wrong shape can raise (and json.loads, for
one nested deeper than it parses)."""


def pretty_json(data: Any) -> bytes:
    """Deterministic JSON: sorted keys, 2-space indent, a trailing newline; diffs well in git.

    The text of `json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False)`, written by
    `_indented` for the plain dicts, lists, strings, ints, bools and None a snapshot is made of:
    json's own indenting encoder is pure Python (the C one takes no indent here) and took 22-35
    ms of every commit of 1,000 records, `_indented` 13-21 ms. Anything else in `data` (a float,
    a tuple, a subclass, a non-string key) is left to json.dumps, whole.
    """
    text = _plain_text(data)
    if text is None:
        return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
    return text


def _plain_text(data: Any) -> bytes | None:
    """`data` as `pretty_json` writes it, by `_indented`; None when it is not all plain."""
    parts: list[str] = []
    try:
        _indented(data, "\n", parts.append)
    except (_Unplain, RecursionError, TypeError):
        return None
    parts.append("\n")
    return "".join(parts).encode()


class _Unplain(Exception):
    """A value `_indented` leaves to json.dumps."""


def _indented(value: Any, newline: str, write: Callable[[str], object]) -> None:
    """`value` as json.dumps writes it with indent=2; `newline` is a line break followed by the
    current indentation. The dict and list branches are spelled out apart on purpose: merged
    through a list of (label, item) pairs they cost most of what this function saves."""
    kind = type(value)
    if kind is str:
        write(_string(value))
    elif kind is dict:
        if not value:
            write("{}")
            return
        inner = newline + "  "
        separator = "{" + inner
        for key in sorted(value):
            if type(key) is not str:
                raise _Unplain
            write(separator)
            write(_string(key))
            write(": ")
            _indented(value[key], inner, write)
            separator = "," + inner
        write(newline + "}")
    elif kind is list:
        if not value:
            write("[]")
            return
        inner = newline + "  "
        separator = "[" + inner
        for item in value:
            write(separator)
            _indented(item, inner, write)
            separator = "," + inner
        write(newline + "]")
    elif value is None:
        write("null")
    elif value is True:
        write("true")
    elif value is False:
        write("false")
    elif kind is int:
        write(int.__repr__(value))
    elif kind is _Templated:
        write(value.text if value.newline == newline else _record_text(value.record, newline))
    else:
        raise _Unplain


class _Templated:
    """A record to write from its template, where it stands in the document, or as `text` if
    written ahead at that indentation (only `snapshot_bytes` puts these in a document)."""

    __slots__ = ("newline", "record", "text")

    def __init__(self, record: Record, text: str = "", newline: str = "") -> None:
        self.record = record
        self.text = text
        self.newline = newline


# Where a record stands in a snapshot's document: {"dispatches": {KEY: RECORD}}.
_RECORD_NEWLINE = "\n    "


def record_texts(record: Record) -> tuple[str, str] | None:
    """The record's text as `snapshot_bytes` writes it among a snapshot's dispatches, and as
    compact JSON with sorted keys (a journal line's); None when a value of it is left to json
    (a float read back from an old state file).

    For a writer to encode its records as they come (between API answers) rather than all at
    its commit, which then takes them from `snapshot_bytes`'s `written`. Each value is escaped
    once for both texts; the compact one's spec is the text its fingerprint hashes."""
    try:
        values = _record_values(record)
    except _Unplain:
        return None
    pretty = _record_template(_RECORD_NEWLINE) % (
        *values[:_SPEC_AT], _spec_text(record.spec, _RECORD_NEWLINE + "  "), *values[_SPEC_AT:])
    compact = _COMPACT_RECORD % (*values[:_SPEC_AT], record.spec.canonical, *values[_SPEC_AT:])
    return pretty, compact


# json's own string encoder for ensure_ascii=False (the C one where it is built).
_string: Callable[[str], str] = json.encoder.encode_basestring

# `Record.to_json()`'s keys but "spec" in sorted order, each with how to read its value off the
# record; and where "spec", a mapping, goes among them. (tests/test_snapshot_json.py checks that
# the two write the same.)
_RECORD_FIELDS: tuple[tuple[str, Callable[[Record], Any]], ...] = tuple(
    (name, operator.attrgetter(name)) for name in sorted((
        "name", "source", "dispatch_id", "fingerprint", "created_date", "last_modified_date",
        "applied_at", "applied_by", "commit", "ci_job", "version")))
_SPEC_AT = sorted([*(name for name, _ in _RECORD_FIELDS), "spec"]).index("spec")
_RECORD_KEYS = sorted([*(name for name, _ in _RECORD_FIELDS), "spec"])
_RECORD_TEMPLATES: dict[str, str] = {}
_COMPACT_RECORD = "{" + ",".join(f"{_string(key)}:%s" for key in _RECORD_KEYS) + "}"


def _record_template(newline: str) -> str:
    template = _RECORD_TEMPLATES.get(newline)
    if template is None:
        inner = newline + "  "
        template = _RECORD_TEMPLATES[newline] = (
            "{" + inner + ("," + inner).join(f"{_string(key)}: %s" for key in _RECORD_KEYS)
            + newline + "}")
    return template


def _record_values(record: Record) -> list[str]:
    """The JSON text of each of the record's fields but its spec, in `_RECORD_FIELDS` order;
    _Unplain for a value of another type than json would write as these do (a float, a
    subclass)."""
    return [_scalar(read(record)) for _, read in _RECORD_FIELDS]


def _record_text(record: Record, newline: str) -> str:
    """`_indented(record.to_json(), newline, ...)`'s text, from a template of the record's
    fixed keys: without building the dict, sorting its keys and walking it, the state of 1,000
    records is encoded in 22 ms rather than 34 (medians)."""
    values = _record_values(record)
    return _record_template(newline) % (
        *values[:_SPEC_AT], _spec_text(record.spec, newline + "  "), *values[_SPEC_AT:])


# `Spec.body()`'s keys in sorted order, each with its label: the body holds use_quartz_cron and
# every field that is not None.
_SPEC_LABELS = tuple((name, _string(name) + ": ")
                     for name in sorted((*SPEC_FIELDS, "use_quartz_cron")))


def _spec_text(spec: Spec, newline: str) -> str:
    """`_indented(spec.body(), newline, ...)`'s text, from the fields themselves: the body's
    dict, sorted and walked, took more than half of each record's encoding."""
    inner = newline + "  "
    items = []
    for name, label in _SPEC_LABELS:
        value = getattr(spec, name)
        if value is not None:
            items.append(inner + label + _scalar(value))
    return "{" + ",".join(items) + newline + "}"


def _scalar(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return _string(value)
    if value is None:
        return "null"
    if kind is int:
        return int.__repr__(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    raise _Unplain


def snapshot_document(snap: Snapshot, record: Callable[[Record], Any] = Record.to_json
                      ) -> dict[str, Any]:
    """`snap` as plain data; its records as `record` gives them."""
    return {
        "format_version": FORMAT_VERSION,
        "lineage": snap.lineage,
        "serial": snap.serial,
        "provenance": snap.provenance.to_json() if snap.provenance else None,
        "summary": snap.summary,
        "dispatches": {str(key): record(value) for key, value in snap.records.items()},
        "intents": {str(key): intent.to_json() for key, intent in snap.intents.items()},
    }


def snapshot_bytes(snap: Snapshot,
                   written: Mapping[DispatchKey, tuple[Record, str]] | None = None) -> bytes:
    """The state file's content for `snap`: `pretty_json(snapshot_document(snap))`, with the
    records, nearly all of it, written by `_record_text`; or taken from `written`, the
    `record_texts` of records by key, where that is the text of the very record in `snap`."""
    def templated(record: Record) -> _Templated:
        known = written.get(record.key) if written else None
        if known is not None and known[0] is record:
            return _Templated(record, known[1], _RECORD_NEWLINE)
        return _Templated(record)

    text = _plain_text(snapshot_document(snap, templated))
    return text if text is not None else pretty_json(snapshot_document(snap))


def pack(data: bytes) -> bytes:
    """Compressed for history; mtime=0 so that the same snapshot always gives the same bytes.

    Level 3, not 6: a state of 1,000 records is 687 KB, 16.4 KB at level 3 in 1.6 ms, 13.4 KB
    at level 6 in 4.8 ms; and the history's copy is what a commit waits for last."""
    return gzip.compress(data, compresslevel=3, mtime=0)


def unpack(packed: bytes, where: str) -> bytes:
    try:
        return gzip.decompress(packed)
    except (OSError, EOFError, zlib.error) as error:
        raise StateError(f"{where}: cannot read: {error}") from None


def parse_snapshot(data: bytes, where: str) -> Snapshot:
    """A snapshot from its bytes; `where` names their origin in errors."""
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as error:
        raise StateError(f"{where}: not valid JSON: {error.msg} at line {error.lineno} "
                         f"column {error.colno}") from None
    except ValueError as error:
        raise StateError(f"{where}: not valid JSON: {error}") from None
    except RecursionError:
        raise StateError(f"{where}: not a state file (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise StateError(f"{where}: not a state file (expected a JSON object)")
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StateError(f"{where}: not a state file (no valid format_version)")
    if version > FORMAT_VERSION:
        raise StateError(f"{where} has format_version {version}, newer than this reconciler "
                         f"understands ({FORMAT_VERSION}); upgrade reconciler to use it")
    try:
        keys = {name: DispatchKey.parse(name) for name in (*doc["dispatches"], *doc["intents"])}
        provenance = doc.get("provenance")
        serial = int_field(doc, "serial")
        if serial < 0:
            raise ValueError(f"serial {serial} is negative")
        return Snapshot(
            lineage=text_field(doc, "lineage"),
            serial=serial,
            records={keys[k]: Record.from_json(keys[k], v) for k, v in doc["dispatches"].items()},
            intents={keys[k]: Intent.from_json(keys[k], v) for k, v in doc["intents"].items()},
            provenance=Provenance.from_json(provenance) if provenance else None,
            summary=str(doc.get("summary", "")),
        )
    except MALFORMED as error:
        raise StateError(f"{where}: malformed state: {error!r}") from None


def check_sequence(previous: Snapshot | None, snap: Snapshot) -> None:
    """Refuse a history to import whose serials do not ascend within one lineage."""
    if previous is not None and (snap.lineage != previous.lineage
                                 or snap.serial <= previous.serial):
        raise StateError(f"serial {snap.serial} (lineage {snap.lineage}) does not follow "
                         f"serial {previous.serial} (lineage {previous.lineage})")
    if snap.serial < 1 or not snap.lineage:
        raise StateError(f"serial {snap.serial} (lineage {snap.lineage!r}) is not a sealed "
                         "serial")
