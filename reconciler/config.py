"""Settings from `reconciler.yaml`, the environment and flags, in that order of strength.

Precedence: flags > environment (`RECONCILER_*`) > file > defaults. Secrets are never read from
the file, so it can be committed; `auth` only chooses the method.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from reconciler.model import Problem, ReconcilerError
from reconciler.userfiles import NotAFile, read_regular_file
from reconciler.yamlsource import MAX_FILE_BYTES, YamlDocument, load_yaml

CONFIG_NAME = "reconciler.yaml"
BACKENDS = ("local", "postgres")
AUTH_METHODS = ("token", "aksk", "password")
DEFAULT_STATE_PATH = ".reconciler/state.json"
DEFAULT_PARALLELISM = 10


class ConfigError(ReconcilerError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class StateSettings:
    backend: str = "local"
    path: str = DEFAULT_STATE_PATH
    dsn: str | None = None
    workspace: str = "default"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a command needs to know about where things are; no secrets."""

    base: Path
    schedules: tuple[str, ...] = ("schedules",)
    state: StateSettings = field(default_factory=StateSettings)
    endpoint: str | None = None
    region: str | None = None
    iam_endpoint: str | None = None
    parallelism: int = DEFAULT_PARALLELISM
    auth: str | None = None
    config_file: str | None = None

    def state_path(self) -> Path:
        return self.base / self.state.path


_FILE_KEYS = ("schedules", "state", "endpoint", "region", "iam_endpoint", "parallelism",
              "auth")
_STATE_KEYS = ("backend", "path", "dsn", "workspace")


def load_settings(
    base: Path, config_file: str | None, environ: Mapping[str, str]
) -> Settings:
    """Defaults, then the config file, then the environment. Flags are applied by the caller."""
    settings = Settings(base=base)
    path = Path(config_file) if config_file else base / CONFIG_NAME
    if not path.is_absolute():
        path = base / path
    if config_file or path.is_file():
        settings = _apply_file(settings, path, shown=config_file or CONFIG_NAME)
    return _apply_environment(settings, environ)


def _apply_file(settings: Settings, path: Path, shown: str) -> Settings:
    try:
        raw = read_regular_file(path, MAX_FILE_BYTES)
    except NotAFile as exc:
        raise ConfigError([Problem(shown, 0, 0, f"cannot read config: it {exc}")]) from None
    except OSError as exc:
        raise ConfigError([Problem(shown, 0, 0, f"cannot read config: {exc.strerror}")]) from None
    doc, problems = load_yaml(shown, raw)
    if doc is None or problems:
        raise ConfigError(problems)
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError([Problem.at(doc.locate([]), "the config file must be a mapping")])
    problems = _unknown(doc, [], data, _FILE_KEYS)
    values: dict[str, Any] = {"config_file": shown}

    def expect(name: str, kinds: type | tuple[type, ...], what: str) -> Any:
        value = data.get(name)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            problems.append(Problem.at(doc.locate([name]), f"{name} must be {what}"))
            return None
        return value

    schedules = data.get("schedules")
    if isinstance(schedules, str):
        values["schedules"] = (schedules,)
    elif isinstance(schedules, list) and schedules and all(isinstance(s, str) for s in schedules):
        values["schedules"] = tuple(schedules)
    elif schedules is not None:
        problems.append(Problem.at(doc.locate(["schedules"]),
                                   "schedules must be a path or a non-empty list of paths"))
    for name in ("endpoint", "region", "iam_endpoint"):
        value = expect(name, str, "a string")
        if value is not None:
            values[name] = value
    parallelism = expect("parallelism", int, "an integer")
    if parallelism is not None:
        if 1 <= parallelism <= 256:
            values["parallelism"] = parallelism
        else:
            problems.append(Problem.at(doc.locate(["parallelism"]),
                                       "parallelism must be between 1 and 256"))
    auth = expect("auth", str, "one of " + ", ".join(AUTH_METHODS))
    if auth is not None:
        if auth in AUTH_METHODS:
            values["auth"] = auth
        else:
            problems.append(Problem.at(doc.locate(["auth"]),
                                       f"auth must be one of {', '.join(AUTH_METHODS)}, "
                                       f"got {auth!r}"))
    state = data.get("state")
    if state is not None:
        if isinstance(state, dict):
            problems.extend(_unknown(doc, ["state"], state, _STATE_KEYS))
            values["state"] = _state_from(doc, state, settings.state, problems)
        else:
            problems.append(Problem.at(doc.locate(["state"]), "state must be a mapping"))
    if problems:
        raise ConfigError(problems)
    return replace(settings, **values)


def _state_from(
    doc: YamlDocument, data: dict[str, Any], current: StateSettings, problems: list[Problem]
) -> StateSettings:
    values: dict[str, str] = {}
    for name in _STATE_KEYS:
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            problems.append(Problem.at(doc.locate(["state", name]),
                                       f"state.{name} must be a non-empty string"))
        elif name == "backend" and value not in BACKENDS:
            problems.append(Problem.at(doc.locate(["state", name]),
                                       f"state.backend must be one of {', '.join(BACKENDS)}, "
                                       f"got {value!r}"))
        elif name == "path" and (problem := state_path_problem(value)) is not None:
            problems.append(Problem.at(doc.locate(["state", name]), f"state.path {problem}"))
        elif name == "dsn" and dsn_has_password(value):
            problems.append(Problem.at(doc.locate(["state", name]),
                                       "state.dsn must not contain a password; put it in "
                                       "RECONCILER_STATE_DSN, PGPASSWORD or ~/.pgpass"))
        else:
            values[name] = value
    return replace(current, **values)


def state_path_problem(path: str) -> str | None:
    """Why `path` cannot be the local state file: the journal, lock and history beside it are
    named after its file name, which a path ending in a directory does not have."""
    name = Path(path).name
    if not name or name in (".", "..") or path.endswith(("/", os.sep)):
        return f"must name a file, not a directory (got {path!r})"
    return None


_CONNINFO_PAIR = re.compile(r"\s*([^\s=]+)\s*=\s*(?:'(?:[^'\\]|\\.)*'|(?:[^\s\\]|\\.)*)", re.S)


def dsn_has_password(dsn: str) -> bool:
    """Whether a libpq DSN carries a password (or an SSL key's `sslpassword`): in a URI's user
    info or query string, or as a key=value pair, read by libpq's quoting rules (psycopg, which
    could parse it, is an optional extra)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        userinfo = parts.netloc.rpartition("@")[0]
        query = parse_qsl(parts.query, keep_blank_values=True)
        return ":" in userinfo or any("password" in name for name, _ in query)
    keys, position = [], 0
    while position < len(dsn.rstrip()) and (pair := _CONNINFO_PAIR.match(dsn, position)):
        keys.append(pair.group(1))
        position = pair.end()
    if position < len(dsn.rstrip()):
        return "password" in dsn  # not a valid DSN: libpq will say so; be cautious meanwhile
    return any("password" in key for key in keys)


def _unknown(
    doc: YamlDocument, path: list[str | int], data: dict[str, Any], allowed: tuple[str, ...]
) -> list[Problem]:
    problems = []
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(Problem.at(
                doc.locate([*path, key], at_key=True),
                f"unknown key {key!r}{hint} (allowed: {', '.join(allowed)})",
            ))
    return problems


def _apply_environment(settings: Settings, environ: Mapping[str, str]) -> Settings:
    def env(name: str) -> str | None:
        value = environ.get(name)
        return value if value else None

    values: dict[str, Any] = {}
    if (schedules := env("RECONCILER_SCHEDULES")) is not None:
        values["schedules"] = tuple(p for p in schedules.split(os.pathsep) if p)
    for name in ("endpoint", "region", "auth"):
        if (value := env(f"RECONCILER_{name.upper()}")) is not None:
            values[name] = value
    # The SDK's own name for it is honoured too, below ours.
    if (iam := env("RECONCILER_IAM_ENDPOINT") or env("HUAWEICLOUD_SDK_IAM_ENDPOINT")) is not None:
        values["iam_endpoint"] = iam
    if (auth := values.get("auth")) is not None and auth not in AUTH_METHODS:
        raise ReconcilerError(
            f"RECONCILER_AUTH must be one of {', '.join(AUTH_METHODS)}, got {auth!r}"
        )
    if (parallelism := env("RECONCILER_PARALLELISM")) is not None:
        values["parallelism"] = parse_parallelism(parallelism, "RECONCILER_PARALLELISM")
    state_values: dict[str, str] = {}
    for name in _STATE_KEYS:
        if (value := env(f"RECONCILER_STATE_{name.upper()}")) is not None:
            state_values[name] = value
    if (backend := state_values.get("backend")) is not None and backend not in BACKENDS:
        raise ReconcilerError(
            f"RECONCILER_STATE_BACKEND must be one of {', '.join(BACKENDS)}, got {backend!r}"
        )
    if (path := state_values.get("path")) is not None and \
            (problem := state_path_problem(path)) is not None:
        raise ReconcilerError(f"RECONCILER_STATE_PATH {problem}")
    if state_values:
        values["state"] = replace(settings.state, **state_values)
    return replace(settings, **values)


def parse_parallelism(text: str, source: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ReconcilerError(f"{source} must be an integer, got {text!r}") from None
    if not 1 <= value <= 256:
        raise ReconcilerError(f"{source} must be between 1 and 256, got {value}")
    return value
