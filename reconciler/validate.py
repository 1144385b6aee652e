"""Desired files → normalised schedules and every problem, located at `file:line:col`.

Each file goes through: safe YAML loading (yamlsource), the JSON Schema (the single source of
truth for shapes, ranges and keys), then the checks a schema cannot express: Quartz cron, time
zones, ISO times, ids that come from defaults, and uniqueness across files. All problems of all
files are collected; a schedule with any problem is left out of the result.
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
from reconciler.yamlsource import YamlDocument, load_yaml


@dataclass(frozen=True, slots=True)
class DesiredState:
    """What the desired files ask for, and whatever is wrong with them."""

    schedules: tuple[Schedule, ...]
    files: tuple[SourceFile, ...]
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def load_desired(paths: Sequence[str], base: Path) -> DesiredState:
    """Read, check and normalise every desired file below `paths` (relative to `base`)."""
    files, missing = desired.find_files(paths, base)
    problems = [Problem(path, 0, 0, "no such file or directory") for path in missing]
    schedules: list[Schedule] = []
    sources: list[SourceFile] = []
    for path in files:
        display = _display(path, base)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            problems.append(Problem(display, 0, 0, f"cannot read: {exc.strerror}"))
            continue
        sources.append(SourceFile(display, hashlib.sha256(raw).hexdigest()))
        file_schedules, file_problems = check_file(display, raw)
        schedules.extend(file_schedules)
        problems.extend(file_problems)
    if not files and not missing:
        shown = ", ".join(paths)
        problems.append(Problem(shown, 0, 0, "no *.yaml or *.yml files found"))
    unique, duplicate_problems = _unique(schedules)
    problems.extend(duplicate_problems)
    return DesiredState(tuple(unique), tuple(sources), tuple(sorted(set(problems))))


def _display(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def check_file(file: str, raw: bytes) -> tuple[list[Schedule], list[Problem]]:
    doc, problems = load_yaml(file, raw)
    if doc is None:
        return [], problems
    data = doc.data
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {_json_type(data)}"
        problems.append(Problem.at(doc.locate([]), f"the document is {what}; expected a mapping "
                                   "with 'version' and 'schedules'"))
        return [], problems
    bad_paths: set[tuple[str | int, ...]] = set()
    if not schema.is_valid(data):
        for error in schema.validator().iter_errors(data):
            for location, message in _explain(doc, error):
                problem = Problem.at(location, message)
                if problem not in problems:  # one form rule can fail on two keys at once
                    problems.append(problem)
            bad_paths.add(tuple(error.absolute_path)[:3])
    defaults = data.get("defaults")
    if not isinstance(defaults, dict):
        defaults = {}
    defaults_flagged = {p[1] for p in bad_paths if p[:1] == ("defaults",) and len(p) >= 2}
    entries = data.get("schedules")
    schedules: list[Schedule] = []
    if not isinstance(entries, list):
        return schedules, problems
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        path: list[str | int] = ["schedules", index]
        schema_flagged = {p[2] for p in bad_paths if p[:2] == ("schedules", index) and len(p) == 3}
        written = desired.merged(entry, defaults)
        entry_problems = _check_schedule(doc, path, entry, defaults, written=written,
                                         schema_flagged=schema_flagged | defaults_flagged)
        problems.extend(entry_problems)
        if entry_problems or any(p[:2] == ("schedules", index) for p in bad_paths):
            continue
        if any(p[:1] == ("defaults",) for p in bad_paths):
            continue
        key, spec = desired.normalise(written)
        schedules.append(Schedule(entry["name"], key, spec, doc.locate(path)))
    return schedules, problems


def _check_schedule(
    doc: YamlDocument,
    path: list[str | int],
    entry: dict[str, Any],
    defaults: dict[str, Any],
    *,
    written: dict[str, Any],
    schema_flagged: set[str | int],
) -> list[Problem]:
    """The rules a schema cannot say, on one schedule (`written`: merged with its file's
    defaults).

    Fields the schema already reported are skipped, so one mistake gives one message.
    """
    problems: list[Problem] = []
    full = {k: v for k, v in written.items() if k not in schema_flagged} if schema_flagged \
        else written

    def at(name: str, message: str) -> None:
        where = [*path, name] if name in entry else (["defaults", name] if name in defaults
                                                     else path)
        problems.append(Problem.at(doc.locate(where), message))

    for name in ("project_id", "instance_id"):
        if name not in written:
            at(name, f"{name} is required (on the schedule or in the file's defaults)")
    text = full.get("cron")
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
    zone = full.get("cron_timezone")
    if isinstance(zone, str) and not _known_zone(zone):
        hint = _did_you_mean(zone, available_timezones())
        at("cron_timezone", f"unknown time zone {zone!r}{hint}; use an IANA name such as "
           "Asia/Shanghai or Europe/Berlin")
    start = full.get("start_datetime")
    if start is not None and isinstance(start, (str, int)):
        try:
            desired.parse_start_datetime(start)
        except ValueError as exc:
            at("start_datetime", str(exc))
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


def _unique(schedules: Iterable[Schedule]) -> tuple[list[Schedule], list[Problem]]:
    """Names and task keys must be unique across all files; both places are named."""
    by_name: dict[str, Schedule] = {}
    by_key: dict[DispatchKey, Schedule] = {}
    unique: list[Schedule] = []
    problems: list[Problem] = []
    for schedule in schedules:
        first_name = by_name.get(schedule.name)
        first_key = by_key.get(schedule.key)
        if first_name is not None:
            problems.append(Problem.at(
                schedule.location,
                f"duplicate name {schedule.name!r}: also at {first_name.location}",
            ))
        if first_key is not None:
            problems.append(Problem.at(
                schedule.location,
                f"task {schedule.key} already has a schedule ({first_key.name!r} at "
                f"{first_key.location}); the API keeps one schedule per task",
            ))
        if first_name is None and first_key is None:
            by_name[schedule.name] = schedule
            by_key[schedule.key] = schedule
            unique.append(schedule)
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
