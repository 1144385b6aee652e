"""The local backend's journal: its lines as written, and read back.

`state.journal` holds a header line (the lineage, the serial it continues and the serial it
makes, the provenance of the session) and then one JSON line per recorded action: `put`,
`remove`, `intent`, `clear_intent`. Reading it back drops a last line cut short by a kill (its
call never returned); replaying it applies the actions onto the snapshot it continues.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler import compact_json
from reconciler.model import DispatchKey
from reconciler.state.base import Intent, Provenance, Record, Snapshot, StateError
from reconciler.state.snapshot import MALFORMED, MAX_STATE_BYTES, record_texts
from reconciler.userfiles import NotAFile, read_regular_file


def json_line(data: Any) -> bytes:
    return (compact_json.dumps(data, sort_keys=True) + "\n").encode()


def put_entry(record: Record) -> tuple[bytes, str | None]:
    """The journal line that puts `record`, and the record's text in state.json (None when a
    value of it is left to json, which then writes the line too).

    Both from one template of the record's keys: building the entry's dicts and sorting them
    took most of the CPU of recording a create's result. The state.json text is made now,
    between API answers, rather than at the commit: 1,000 records took 17-25 ms of every
    commit to encode."""
    key = str(record.key)
    texts = record_texts(record)
    if texts is None:
        return json_line({"op": "put", "key": key, "record": record.to_json()}), None
    pretty, compact = texts
    line = f'{{"key":{compact_json.dumps(key)},"op":"put","record":{compact}}}\n'
    return line.encode(), pretty


@dataclass(frozen=True, slots=True)
class Journal:
    """A parsed journal: its header and its complete entries with their line numbers."""

    lineage: str
    base_serial: int
    serial: int
    provenance: Provenance
    entries: tuple[tuple[int, dict[str, Any]], ...]


def read_journal(path: Path) -> Journal | None:
    try:
        data = read_regular_file(path, MAX_STATE_BYTES)
    except FileNotFoundError:
        return None
    except NotAFile as error:
        raise StateError(f"{path}: {error}, not a journal") from None
    except OSError as error:
        raise StateError(f"{path}: cannot read: {error.strerror}") from None
    return parse_journal(data, path)


def read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def parse_journal(data: bytes, path: Path) -> Journal | None:
    *complete, tail = data.split(b"\n")
    # A non-empty tail is a line cut short by a kill: its `put` never returned, so it is dropped.
    # A complete but invalid last line is treated the same way; anywhere else it is corruption.
    lines: list[tuple[int, dict[str, Any]]] = []
    for number, raw in enumerate(complete, 1):
        try:
            item = json.loads(raw)
            if not isinstance(item, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError) as error:
            if number == len(complete) and not tail:
                break
            raise StateError(f"{path}:{number}: corrupt journal line: {error}") from None
        lines.append((number, item))
    if not lines:
        return None  # the header was never completed, so nothing was recorded
    head = lines[0][1]
    try:
        return Journal(str(head["lineage"]), int(head["base_serial"]), int(head["serial"]),
                        Provenance.from_json(head["provenance"]), tuple(lines[1:]))
    except MALFORMED as error:
        raise StateError(f"{path}:1: corrupt journal header: {error!r}") from None


def replay(journal: Journal, path: Path, base: Snapshot, summary: str) -> Snapshot:
    records, intents = dict(base.records), dict(base.intents)
    for number, entry in journal.entries:
        try:
            op, key = entry["op"], DispatchKey.parse(entry["key"])
            if op == "put":
                records[key] = Record.from_json(key, entry["record"])
                intents.pop(key, None)
            elif op == "remove":
                records.pop(key, None)
            elif op == "intent":
                intents[key] = Intent.from_json(key, entry["intent"])
            elif op == "clear_intent":
                intents.pop(key, None)
            else:
                raise ValueError(f"unknown op {op!r}")
        except MALFORMED as error:
            raise StateError(f"{path}:{number}: corrupt journal entry: {error}") from None
    return Snapshot(journal.lineage, journal.serial, records, intents, journal.provenance, summary)
