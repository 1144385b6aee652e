"""Safe YAML loading that remembers where every value was written.

PyYAML's composer builds a node graph recursively (the C one crashes the process on a few tens of
thousands of nested brackets) and its constructor silently keeps the last of duplicate keys. So we
read libyaml's event stream (C speed, no recursion) and build plain Python data ourselves with an
explicit stack, which lets us, in one pass:

- report duplicate and non-string mapping keys with their lines;
- keep YAML 1.1 timestamps as the text the user wrote (the schema and `desired` parse them);
- bound nesting depth and alias expansion, so "billion laughs" documents are refused early;
- record the position of every mapping key and value, and of every sequence item.

Only the safe YAML tags are constructed; anything else is reported, never instantiated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import ScalarNode

from reconciler.model import Location, Problem

# PyYAML's stubs type the C and Python loaders apart; both offer the same methods used here.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_FILE_BYTES = 8 * 1024 * 1024
"""Desired files are hand-written; anything this large is a mistake or an attack."""

MAX_DEPTH = 64
"""A schedules file nests four levels deep; 64 leaves room and stops recursion-based attacks."""

ALIAS_EXPANSION_FACTOR = 10
"""Aliases may expand a document to at most this many times the nodes actually written."""

Pos = tuple[int, int]

MAX_INT_CHARS = 64
"""No value of a desired or config file needs more; Python refuses to turn an integer of over
4,300 digits into text (in any error message about it), and a hexadecimal one it takes can have
that many once converted."""

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"
_SCALAR_CONSTRUCTORS = {
    "tag:yaml.org,2002:int": yaml.constructor.SafeConstructor.construct_yaml_int,
    "tag:yaml.org,2002:float": yaml.constructor.SafeConstructor.construct_yaml_float,
    "tag:yaml.org,2002:bool": yaml.constructor.SafeConstructor.construct_yaml_bool,
    "tag:yaml.org,2002:null": yaml.constructor.SafeConstructor.construct_yaml_null,
}
_TYPE_NAMES = {
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:null": "null",
}


class YamlError(Exception):
    """A problem that stops reading the document; carries a 1-based position."""

    def __init__(self, message: str, line: int, col: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col


@dataclass
class YamlDocument:
    """Plain data plus the source position of every value in it."""

    file: str
    data: Any
    root: Pos
    mapping_positions: dict[int, dict[str, tuple[Pos, Pos]]] = field(default_factory=dict)
    sequence_positions: dict[int, list[Pos]] = field(default_factory=dict)
    scalar_tags: dict[tuple[int, str | int], str] = field(default_factory=dict)
    text: str = ""
    # Every container built, also those left out of `data` (the value of a refused key, a
    # merged mapping): the dicts above are keyed by id(), which must not be reused meanwhile.
    containers: list[Any] = field(default_factory=list, repr=False, compare=False)

    def locate(self, path: Sequence[str | int], *, at_key: bool = False) -> Location:
        """Where the value at `path` was written (or its key, with `at_key`).

        A path that leaves the data (a missing key) stops at the deepest container it reached,
        which is where a user would add the missing piece.
        """
        node: Any = self.data
        pos = self.root
        for depth, step in enumerate(path):
            last = depth == len(path) - 1
            if isinstance(node, dict) and isinstance(step, str):
                entry = self.mapping_positions.get(id(node), {}).get(step)
                if entry is None:
                    break
                pos = entry[0] if (last and at_key) else entry[1]
                node = node[step]
            elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
                items = self.sequence_positions.get(id(node), [])
                if step >= len(items):
                    break
                pos = items[step]
                node = node[step]
            else:
                break
        return Location(self.file, pos[0], pos[1])

    def char_at(self, location: Location) -> str:
        """The character at a location (to tell a quoted scalar from a plain one)."""
        lines = self.text.splitlines()
        if 0 < location.line <= len(lines):
            line = lines[location.line - 1]
            if 0 < location.col <= len(line):
                return line[location.col - 1]
        return ""

    def yaml_type(self, container: Any, key: str | int) -> str | None:
        """How YAML typed a scalar the user did not quote ("an integer" for `12:30`), if not str."""
        tag = self.scalar_tags.get((id(container), key))
        return _TYPE_NAMES.get(tag) if tag else None


class _Frame:
    __slots__ = ("anchor", "container", "is_map", "key", "key_pos", "merges", "nodes", "pos",
                 "positions")

    def __init__(self, container: Any, pos: Pos, anchor: str | None, nodes: int) -> None:
        self.container = container
        self.pos = pos
        self.anchor = anchor
        self.nodes = nodes  # expanded node count when the frame opened, to size anchored subtrees
        self.is_map = isinstance(container, dict)
        self.positions: Any = {} if self.is_map else []
        self.key: Any = _NO_KEY
        self.key_pos: Pos = (0, 0)
        self.merges: list[tuple[Any, Pos]] = []


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_NO_KEY = _Marker("no key")
_BAD_KEY = _Marker("bad key")
_MERGE_KEY = _Marker("<<")
_REFUSED = _Marker("refused")  # a scalar reported and not constructed; read as null


def _implicit_resolvers() -> tuple[dict[str, tuple[Any, ...]], tuple[Any, ...]]:
    """PyYAML's implicit resolvers of plain scalars, by first character, as `resolve` looks
    them up."""
    table = _BaseLoader.yaml_implicit_resolvers
    wildcard = tuple(table.get(None, ()))
    return {first: (*resolvers, *wildcard) for first, resolvers in table.items()
            if first is not None}, wildcard


_BY_FIRST, _WILDCARD = _implicit_resolvers()
# The fast path below resolves like `BaseResolver.resolve` only when no path resolvers are set.
_FAST_STRINGS = not _BaseLoader.yaml_path_resolvers


def _plain_is_str(text: str) -> bool:
    """Whether PyYAML reads this plain (unquoted) scalar as a string: what
    `BaseResolver.resolve` answers, without its call overhead."""
    for _tag, pattern in _BY_FIRST.get(text[:1], _WILDCARD):  # noqa: SIM110 - all() is slower
        if pattern.match(text):
            return False
    return True


def _pos(event: Event) -> Pos:
    mark: Any = event.start_mark
    return (mark.line + 1, mark.column + 1)


class _Builder:
    """Turns one document's events into data; problems that do not stop reading are collected."""

    def __init__(self, loader: Any, doc: YamlDocument, budget_base: int) -> None:
        self.loader = loader
        self.doc = doc
        self.problems: list[Problem] = []
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.open_anchors: set[str] = set()
        self.nodes = 0  # nodes as expanded through aliases
        self.written = 0  # nodes actually written
        self.budget_base = budget_base
        self.documents = 0

    def problem(self, pos: Pos, message: str) -> None:
        self.problems.append(Problem(self.doc.file, pos[0], pos[1], message))

    def build(self) -> Any:
        # The hot loop of every command: a schedules file is mostly plain and quoted string
        # scalars in block mappings, so those are placed here without the general path's calls
        # (loading 1,000 schedules' YAML takes a fifth less).
        get_event = self.loader.get_event
        stack = self.stack
        while True:
            event = get_event()
            kind = event.__class__
            if kind is ScalarEvent:
                self.written += 1
                self.nodes += 1
                text = event.value
                tag = event.tag
                if _FAST_STRINGS and (tag is None or tag == "!") and event.anchor is None \
                        and stack and (not event.implicit[0] or _plain_is_str(text)):
                    mark = event.start_mark
                    pos = (mark.line + 1, mark.column + 1)
                    frame = stack[-1]
                    if frame.is_map:
                        key = frame.key
                        if key is _NO_KEY:
                            frame.key = text
                            frame.key_pos = pos
                        elif key.__class__ is str and key not in frame.container:
                            frame.key = _NO_KEY
                            frame.container[key] = text
                            frame.positions[key] = (frame.key_pos, pos)
                        else:
                            self.set_item(frame, text, pos, None)
                    else:
                        frame.container.append(text)
                        frame.positions.append(pos)
                    continue
                value, tag = self.scalar(event)
                if event.anchor is not None:
                    self.anchors[event.anchor] = (value, 1)
                self.add(value, _pos(event), tag, text)
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                self.open(event)
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                self.close()
            elif kind is AliasEvent:
                self.alias(event)
            elif kind is DocumentStartEvent:
                self.documents += 1
                if self.documents > 1:
                    raise YamlError(
                        "more than one YAML document in this file; use one document per file",
                        *_pos(event),
                    )
            elif event is None or kind is StreamEndEvent:
                return self.doc.data

    def open(self, event: MappingStartEvent | SequenceStartEvent) -> None:
        pos = _pos(event)
        if len(self.stack) >= MAX_DEPTH:
            raise YamlError(f"nesting deeper than {MAX_DEPTH} levels", *pos)
        tag = event.tag
        if tag is not None and tag not in ("!", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"):
            self.problem(pos, f"unsupported YAML tag {tag!r}; only plain data is allowed")
        self.written += 1
        self.nodes += 1
        container: Any = {} if isinstance(event, MappingStartEvent) else []
        self.doc.containers.append(container)
        if event.anchor is not None:
            self.open_anchors.add(event.anchor)
        self.stack.append(_Frame(container, pos, event.anchor, self.nodes))

    def close(self) -> None:
        frame = self.stack.pop()
        if frame.merges:
            self.merge(frame)
        value = frame.container
        if isinstance(value, dict):
            self.doc.mapping_positions[id(value)] = frame.positions
        else:
            self.doc.sequence_positions[id(value)] = frame.positions
        if frame.anchor is not None:
            self.open_anchors.discard(frame.anchor)
            self.anchors[frame.anchor] = (value, self.nodes - frame.nodes + 1)
        self.add(value, frame.pos, None, None)

    def alias(self, event: AliasEvent) -> None:
        pos = _pos(event)
        name = event.anchor
        if name in self.open_anchors:
            raise YamlError(f"alias *{name} refers to its own enclosing node", *pos)
        if name not in self.anchors:
            raise YamlError(f"alias *{name} has no anchor &{name} before it", *pos)
        value, size = self.anchors[name]
        self.written += 1
        self.nodes += size
        if self.nodes > ALIAS_EXPANSION_FACTOR * self.written + self.budget_base:
            raise YamlError(
                f"aliases expand this document beyond {ALIAS_EXPANSION_FACTOR}x its written size "
                f"(alias *{name}); refusing a possible alias bomb",
                *pos,
            )
        self.add(value, pos, None, None)

    def scalar(self, event: ScalarEvent) -> tuple[Any, str | None]:
        """The value and, for scalars YAML did not read as a string, their tag."""
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.loader.resolve(ScalarNode, event.value, event.implicit)
        if tag in (_STR, _TIMESTAMP):
            # Timestamps stay as written: `desired` parses them and insists on an offset.
            return event.value, None
        if tag == _INT and len(event.value) > MAX_INT_CHARS:
            self.problem(_pos(event), f"an integer of {len(event.value)} characters is too "
                         f"large (at most {MAX_INT_CHARS})")
            return _REFUSED, None
        construct = _SCALAR_CONSTRUCTORS.get(tag)
        if construct is not None:
            node = ScalarNode(tag, event.value, None, None, event.style)
            return construct(self.loader, node), tag
        if tag == _MERGE:
            return _MERGE_KEY, None
        self.problem(_pos(event), f"unsupported YAML tag {tag!r}; only plain data is allowed")
        return _REFUSED, None

    def add(self, value: Any, pos: Pos, tag: str | None, text: str | None) -> None:
        """Place a finished value: as the root, a list item, a mapping key or a mapping value."""
        if value is _REFUSED:
            # Already reported: as a key it is left out, as a value it stands as null.
            value = _BAD_KEY if self.stack and self.stack[-1].is_map \
                and self.stack[-1].key is _NO_KEY else None
        if not self.stack:
            self.doc.data = value
            self.doc.root = pos
            return
        frame = self.stack[-1]
        container = frame.container
        if not frame.is_map:
            if tag is not None:
                self.doc.scalar_tags[(id(container), len(container))] = tag
            container.append(value)
            frame.positions.append(pos)
        elif frame.key is _NO_KEY:
            frame.key = self.mapping_key(value, pos, tag, text)
            frame.key_pos = pos
        else:
            self.set_item(frame, value, pos, tag)

    def set_item(self, frame: _Frame, value: Any, pos: Pos, tag: str | None) -> None:
        key = frame.key
        frame.key = _NO_KEY
        if key is _MERGE_KEY:
            frame.merges.append((value, pos))
        elif key is _BAD_KEY:
            return
        elif key in frame.container:  # merges come at close: until then, all explicit
            first = frame.positions[key][0]
            self.problem(
                frame.key_pos,
                f"duplicate key {key!r} (first at line {first[0]}); each key may appear once",
            )
        else:
            frame.container[key] = value
            frame.positions[key] = (frame.key_pos, pos)
            if tag is not None:
                self.doc.scalar_tags[(id(frame.container), key)] = tag

    def mapping_key(self, value: Any, pos: Pos, tag: str | None, text: str | None) -> Any:
        if value is _MERGE_KEY or value is _BAD_KEY:
            return value
        if text is None:
            self.problem(pos, "mapping keys must be plain strings, not lists or mappings")
            return _BAD_KEY
        if tag is not None:
            kind = _TYPE_NAMES.get(tag, "a non-string")
            self.problem(
                pos,
                f"key {text!r} is read as {kind}; mapping keys must be strings "
                f'(quote it: "{text}")',
            )
            return _BAD_KEY
        return value

    def merge(self, frame: _Frame) -> None:
        """YAML merge keys (`<<: *defaults`): explicit keys win, then earlier merges."""
        container = frame.container
        for value, pos in frame.merges:
            sources = value if isinstance(value, list) else [value]
            for source in sources:
                if not isinstance(source, dict):
                    self.problem(pos, "a merge key '<<' needs a mapping or a list of mappings")
                    continue
                positions = self.doc.mapping_positions.get(id(source), {})
                for key, item in source.items():
                    if key not in container:
                        container[key] = item
                        frame.positions[key] = positions.get(key, (pos, pos))


def load_yaml(file: str, raw: bytes) -> tuple[YamlDocument | None, list[Problem]]:
    """Read one YAML file's bytes; on a fatal problem the document is None."""
    doc = YamlDocument(file=file, data=None, root=(1, 1))
    if len(raw) > MAX_FILE_BYTES:
        size = len(raw) / (1024 * 1024)
        return None, [
            Problem(file, 1, 1, f"file is {size:.1f} MiB; desired files are limited to "
                    f"{MAX_FILE_BYTES // (1024 * 1024)} MiB")
        ]
    try:
        text = _decode(raw)
    except YamlError as exc:
        return None, [Problem(file, exc.line, exc.col, exc.message)]
    doc.text = text
    loader = _BaseLoader(text)
    builder = _Builder(loader, doc, budget_base=10_000)
    try:
        doc.data = builder.build()
    except YamlError as exc:
        return None, [*builder.problems, Problem(file, exc.line, exc.col, exc.message)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        return None, [*builder.problems, Problem(file, line, col, f"YAML syntax: {message}")]
    except yaml.reader.ReaderError as exc:
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return None, [
            *builder.problems,
            Problem(file, line, col,
                    f"character U+{code:04X} is not allowed in YAML ({exc.reason})"),
        ]
    except yaml.YAMLError as exc:
        return None, [*builder.problems, Problem(file, 1, 1, f"YAML: {exc}")]
    finally:
        loader.dispose()
    return doc, builder.problems


def _decode(raw: bytes) -> str:
    """UTF-8 (with or without BOM), or UTF-16/32 with a BOM as YAML allows; else a located error."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-32" if raw[:4] in (b"\xff\xfe\x00\x00",) else "utf-16")
        except UnicodeDecodeError as exc:
            raise YamlError(f"not valid UTF-16: {exc.reason}", 1, 1) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlError(
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8", line, col
        ) from None
