"""Desired files → normalised schedules and every problem, located at `file:line:col`.

Each file goes through: safe YAML loading (yamlsource), the JSON Schema (the single source of
truth for shapes, ranges and keys), then the checks a schema cannot express: Quartz cron, time
zones, ISO times, ids that come from defaults, and uniqueness across files. All problems of all
files are collected; a schedule with any problem is left out of the result.

Nothing here depends on the clock: the same files are valid or not on any day, so a commit that
passed CI does not fail it later. (A cron whose year field has passed is valid; `plan` shows it
never firing again.)
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

from reconciler import cron, desired, schema
from reconciler.desired import SourceFile
from reconciler.model import DispatchKey, Location, Problem, Schedule
from reconciler.userfiles import NotAFile, read_regular_file
from reconciler.yamlsource import MAX_FILE_BYTES, YamlDocument, load_yaml


@dataclass(frozen=True, slots=True)
class DesiredState:
    """What the desired files ask for, and whatever is wrong with them."""

    schedules: tuple[Schedule, ...]  # only the valid ones
    files: tuple[SourceFile, ...]
    problems: tuple[Problem, ...]
    # Schedule entries written in the files, valid or not: what a report of an invalid run
    # counts, where `schedules` would say 0 for a file whose every entry has a mistake.
    entries: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def load_desired(paths: Sequence[str], base: Path) -> DesiredState:
    """Read, check and normalise every desired file below `paths` (relative to `base`)."""
    files, missing = desired.find_files(paths, base)
    problems = [Problem(path, 0, 0, "no such file or directory") for path in missing]
    entries: list[_Entry] = []
    written = 0
    sources: list[SourceFile] = []
    for path in files:
        display = _display(path, base)
        try:
            # One byte over the limit: load_yaml reports the size of a file just too large.
            raw = read_regular_file(path, MAX_FILE_BYTES + 1)
        except NotAFile as exc:
            problems.append(Problem(display, 0, 0, f"cannot read: it {exc}"))
            continue
        except OSError as exc:
            problems.append(Problem(display, 0, 0, f"cannot read: {exc.strerror}"))
            continue
        sources.append(SourceFile(display, hashlib.sha256(raw).hexdigest()))
        checked = _check_file(display, raw)
        entries.extend(checked.entries)
        problems.extend(checked.problems)
        written += checked.written
    if not files and not missing:
        shown = ", ".join(paths)
        problems.append(Problem(shown, 0, 0, "no *.yaml or *.yml files found"))
    unique, duplicate_problems = _unique(entries)
    problems.extend(duplicate_problems)
    return DesiredState(tuple(unique), tuple(sources), tuple(sorted(set(problems))), written)


@dataclass(frozen=True, slots=True)
class _Entry:
    """One schedule entry: its name and task key where those fields are themselves valid (the
    uniqueness checks need no more), and the schedule only if all of the entry is valid."""

    location: Location
    name: str | None
    key: DispatchKey | None
    schedule: Schedule | None


@dataclass(frozen=True, slots=True)
class _FileResult:
    entries: list[_Entry]
    problems: list[Problem]
    written: int  # items of the file's `schedules` list


def _display(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def check_file(file: str, raw: bytes) -> tuple[list[Schedule], list[Problem]]:
    """One file's valid schedules and problems (uniqueness across files is `load_desired`'s)."""
    checked = _check_file(file, raw)
    schedules = [entry.schedule for entry in checked.entries if entry.schedule is not None]
    return schedules, checked.problems


def _check_file(file: str, raw: bytes) -> _FileResult:
    doc, problems = load_yaml(file, raw)
    if doc is None:
        return _FileResult([], problems, 0)
    data = doc.data
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {_json_type(data)}"
        problems.append(Problem.at(doc.locate([]), f"the document is {what}; expected a mapping "
                                   "with 'version' and 'schedules'"))
        return _FileResult([], problems, 0)
    bad_paths: set[tuple[str | int, ...]] = set()
    if not schema.is_valid(data):
        # A value the loader refused (an unsupported tag, an oversized integer) was read as
        # null: its problem is said, the schema's about that null would say it again.
        refused = {(p.line, p.col) for p in problems}
        said = set(problems)  # a set: a file of thousands of bad entries has as many problems
        for error in schema.validator().iter_errors(data):
            for location, message in _explain(doc, error):
                problem = Problem.at(location, message)
                # (and one form rule can fail on two keys at once)
                if problem not in said and (problem.line, problem.col) not in refused:
                    problems.append(problem)
                    said.add(problem)
            bad_paths.add(tuple(error.absolute_path)[:3])
    defaults = data.get("defaults")
    if not isinstance(defaults, dict):
        defaults = {}
    defaults_flagged = {p[1] for p in bad_paths if p[:1] == ("defaults",) and len(p) >= 2}
    defaults_problems = _check_defaults(doc, defaults, defaults_flagged)
    problems.extend(defaults_problems)
    # A schedule under a wrong default is wrong too (the problem is reported once, there).
    defaults_ok = not defaults_problems and not any(p[:1] == ("defaults",) for p in bad_paths)
    # Schema errors by entry index: the keys they flag (one mistake gives one message), and
    # the entries with any error at all. Built once: a file can hold thousands of entries.
    flagged_keys: dict[int, set[str | int]] = {}
    for bad in bad_paths:
        if len(bad) >= 2 and bad[0] == "schedules" and isinstance(bad[1], int):
            keys = flagged_keys.setdefault(bad[1], set())
            if len(bad) == 3:
                keys.add(bad[2])
    raw_entries = data.get("schedules")
    if not isinstance(raw_entries, list):
        return _FileResult([], problems, 0)
    entries: list[_Entry] = []
    for index, entry in enumerate(raw_entries):
        if not isinstance(entry, dict):
            continue
        path: list[str | int] = ["schedules", index]
        flagged = flagged_keys.get(index, set())
        written = desired.merged(entry, defaults)
        entry_problems = _check_schedule(doc, path, entry, written=written, flagged=flagged)
        problems.extend(entry_problems)
        location = doc.locate(path)
        if not entry_problems and index not in flagged_keys and defaults_ok:
            key, spec = desired.normalise(written)
            schedule = Schedule(entry["name"], key, spec, location)
            entries.append(_Entry(location, schedule.name, key, schedule))
            continue
        name = entry.get("name")
        entries.append(_Entry(
            location,
            name if isinstance(name, str) and "name" not in flagged else None,
            _valid_key(written, entry, flagged, defaults_flagged),
            None,
        ))
    return _FileResult(entries, problems, len(raw_entries))


# The values a schema cannot judge; checked the same way on a schedule and in defaults.
_VALUE_CHECKED = ("cron_timezone", "start_datetime")


def _value_problem(name: str, value: Any) -> str | None:
    """What is wrong with a `cron_timezone` or `start_datetime` the schema let through."""
    if name == "cron_timezone":
        if isinstance(value, str) and not _known_zone(value):
            hint = _did_you_mean(value, available_timezones())
            return (f"unknown time zone {value!r}{hint}; use an IANA name such as "
                    "Asia/Shanghai or Europe/Berlin")
        return None
    try:
        desired.parse_start_datetime(value)
    except ValueError as exc:
        return str(exc)
    return None


def _check_defaults(doc: YamlDocument, defaults: dict[str, Any],
                    flagged: set[str | int]) -> list[Problem]:
    """Every value written in defaults is checked, whether or not a schedule uses it: the
    schema already does so for the others, and a default is one edit away from being used."""
    problems = []
    for name in _VALUE_CHECKED:
        if name in defaults and name not in flagged:
            message = _value_problem(name, defaults[name])
            if message:
                problems.append(Problem.at(doc.locate(["defaults", name]), message))
    return problems


def _valid_key(written: dict[str, Any], entry: dict[str, Any], flagged: set[str | int],
               defaults_flagged: set[str | int]) -> DispatchKey | None:
    """The entry's task key if each of its parts is valid where it was written, else None."""
    parts: list[str] = []
    for name in ("project_id", "instance_id", "task_id"):
        if name in entry:
            bad = name in flagged
        elif name in schema.known_keys("defaults"):
            bad = name in defaults_flagged
        else:
            return None  # only in defaults, where the key is not allowed (reported there)
        value = written.get(name)
        if bad or not isinstance(value, str):
            return None
        parts.append(value)
    return DispatchKey(*parts)


def _check_schedule(
    doc: YamlDocument,
    path: list[str | int],
    entry: dict[str, Any],
    *,
    written: dict[str, Any],
    flagged: set[str | int],
) -> list[Problem]:
    """The rules a schema cannot say, on one schedule (`written`: merged with its file's
    defaults, whose own values `_check_defaults` judges).

    Fields the schema already reported are skipped, so one mistake gives one message.
    """
    problems: list[Problem] = []

    def at(name: str, message: str) -> None:
        where = [*path, name] if name in entry else path
        problems.append(Problem.at(doc.locate(where), message))

    for name in ("project_id", "instance_id"):
        if name not in written:
            at(name, f"{name} is required (on the schedule or in the file's defaults)")
    text = entry.get("cron") if "cron" not in flagged else None
    if isinstance(text, str):
        try:
            expression = cron.parse(text)
        except cron.CronError as exc:
            where = doc.locate([*path, "cron"])
            shift = 1 if doc.char_at(where) in ("'", '"') else 0
            problems.append(Problem(where.file, where.line, where.col + shift + exc.position,
                                    f"cron: {exc.message}"))
        else:
            reason = expression.never_fires_reason()
            if reason:
                at("cron", f"cron {text!r} never fires: {reason}")
    for name in _VALUE_CHECKED:
        # Any type the schema let through, floats included: normalise must never meet a
        # value that was not checked here (1796054400000.0 is an integer to JSON Schema).
        if name in entry and name not in flagged:
            message = _value_problem(name, entry[name])
            if message:
                at(name, message)
    quartz = entry.get("use_quartz_cron")
    if isinstance(quartz, bool) and quartz != ("cron" in entry):
        form = "cron" if "cron" in entry else "period"
        at("use_quartz_cron", f"use_quartz_cron: {str(quartz).lower()} contradicts the {form} "
           "form; leave it out, it is derived")
    return problems


_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*")


@cache
def _known_zone(name: str) -> bool:
    """Known to the zone database: looked up by name, which costs less than listing them all."""
    if not _ZONE_NAME.fullmatch(name) or name in ("localtime", "posixrules", "Factory"):
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _unique(entries: Iterable[_Entry]) -> tuple[list[Schedule], list[Problem]]:
    """Names and task keys must be unique across all files; both places are named.

    Every entry whose name or key is valid takes part, also one with other problems, so that
    one run reports all of them. The first entry to use a name or key keeps it.
    """
    by_name: dict[str, _Entry] = {}
    by_key: dict[DispatchKey, _Entry] = {}
    unique: list[Schedule] = []
    problems: list[Problem] = []
    for entry in entries:
        duplicate = False
        if entry.name is not None:
            first = by_name.setdefault(entry.name, entry)
            if first is not entry:
                duplicate = True
                problems.append(Problem.at(
                    entry.location, f"duplicate name {entry.name!r}: also at {first.location}"))
        if entry.key is not None:
            first = by_key.setdefault(entry.key, entry)
            if first is not entry:
                duplicate = True
                named = f"{first.name!r} at " if first.name is not None else "at "
                problems.append(Problem.at(
                    entry.location,
                    f"task {entry.key} already has a schedule ({named}{first.location}); the API "
                    "keeps one schedule per task",
                ))
        if entry.schedule is not None and not duplicate:
            unique.append(entry.schedule)
    return unique, problems


_PATTERN_RULES = {
    "^[A-Za-z0-9_-]{1,64}$": "ids are 1-64 characters of A-Z a-z 0-9 _ -",
    "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$": "names are 1-128 letters, digits, '.', '_' or '-', "
    "starting with a letter or digit",
}
_FORM_RULES = {
    0: "period needs dispatch_interval",
    1: "dispatch_interval needs period",
    2: "cron_timezone is only for cron schedules; add cron or remove cron_timezone",
    3: "use either cron, or period with dispatch_interval, not both",
    4: "a schedule needs either cron, or period with dispatch_interval",
}


def _explain(doc: YamlDocument, error: ValidationError) -> list[tuple[Location, str]]:
    """Turn one schema error into messages a person can act on, at the right place."""
    path = list(error.absolute_path)
    schema_path = list(error.absolute_schema_path)
    name = str(path[-1]) if path and isinstance(path[-1], str) else _section(path)
    # jsonschema types these as possibly unset; a reported error always has them.
    instance: Any = error.instance
    expected: Any = error.validator_value
    subschema: Any = error.schema
    keyword = error.validator
    here = doc.locate(path)
    if keyword == "additionalProperties":
        allowed = schema.known_keys(_section(path))
        out = []
        for extra in sorted(set(instance) - set(allowed)):
            out.append((doc.locate([*path, extra], at_key=True),
                        f"unknown key {extra!r}{_did_you_mean(extra, allowed)}"
                        f" (allowed: {', '.join(allowed)})"))
        return out
    if "allOf" in schema_path:
        rule = schema_path[schema_path.index("allOf") + 1]
        if isinstance(rule, int) and rule in _FORM_RULES:
            # Shown at the schedule, also when the rule's error is about one key of it.
            at = path[:2] if path[:1] == ["schedules"] else path
            entry = _value_at(doc.data, at)
            return [(doc.locate(at), f"{_FORM_RULES[rule]} (schedule {_name_of(entry)})")]
    if keyword == "required":
        missing = str(expected[0]) if len(expected) == 1 else ""
        for key in expected:
            if key not in instance:
                missing = str(key)
                break
        return [(here, f"missing required key {missing!r} in {_section(path)}")]
    if keyword == "type":
        got = _json_type(instance)
        hint = ""
        container = _parent(doc.data, path)
        yaml_type = doc.yaml_type(container, path[-1]) if path and container is not None else None
        if yaml_type and expected == "string":
            hint = f"; YAML read the unquoted value as {yaml_type}, quote it"
        return [(here, f"{name} must be {_article(expected)}, got {got} {instance!r}{hint}")]
    if keyword == "enum":
        options = [str(option) for option in expected]
        return [(here, f"{name} must be one of {', '.join(options)}, got {instance!r}"
                 f"{_did_you_mean(str(instance), options)}")]
    if keyword == "const":
        return [(here, f"{name} must be {expected!r}, got {instance!r}")]
    if keyword in ("minimum", "maximum"):
        bounds = _bounds(subschema)
        return [(here, f"{name} must be between {bounds}, got {instance!r}")]
    if keyword == "maxLength":
        return [(here, f"{name} is {len(instance)} characters; at most "
                 f"{expected} allowed")]
    if keyword == "minLength":
        return [(here, f"{name} must be at least {expected} characters")]
    if keyword == "pattern":
        rule = _PATTERN_RULES.get(expected, f"must match {expected}")
        return [(here, f"{name} {instance!r} is not valid: {rule}")]
    if keyword == "anyOf" and name == "start_datetime":
        return [(here, f"start_datetime {instance!r} must be an ISO-8601 time with an offset or "
                 f"epoch milliseconds in {desired.MIN_START_MS}..{desired.MAX_START_MS}")]
    return [(here, f"{name}: {error.message}")]


def _section(path: Sequence[str | int]) -> str:
    if not path:
        return "file"
    if path[0] == "defaults":
        return "defaults"
    if path[0] == "schedules" and len(path) >= 2:
        return "schedule"
    return str(path[0])


def _parent(data: Any, path: Sequence[str | int]) -> Any:
    return _value_at(data, path[:-1])


def _value_at(data: Any, path: Sequence[str | int]) -> Any:
    node = data
    for step in path:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _name_of(entry: Any) -> str:
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        return repr(entry["name"])
    return "without a name"


def _bounds(subschema: dict[str, Any]) -> str:
    return f"{subschema.get('minimum')} and {subschema.get('maximum')}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _article(expected: Any) -> str:
    names = {"object": "a mapping", "array": "a list", "integer": "an integer",
             "string": "a string", "boolean": "true or false", "number": "a number"}
    if isinstance(expected, list):
        return " or ".join(names.get(str(e), str(e)) for e in expected)
    return names.get(str(expected), str(expected))


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
