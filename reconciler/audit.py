"""State versions and what changed between them: the audit trail behind `reconciler state diff`.

A version is named by a history serial (`"12"`), a state file (`"old/state.json"`) or a state
file as committed in git (`"git:REV"`, read with `git show`, no checkout). Two versions are
compared record by record with deepdiff; the result is a typed `StateDiff` that the renderers in
`reconciler.render.diff` turn into text or JSON. Nothing here prints.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.model import SPEC_FIELDS, DispatchKey
from reconciler.state.base import Provenance, Record, Snapshot, StateBackend, StateError
from reconciler.state.snapshot import MAX_STATE_BYTES, parse_snapshot
from reconciler.userfiles import NotAFile, read_regular_file

GIT_PREFIX = "git:"
GIT_TIMEOUT = 30.0
IGNORED_FIELDS = ("version", "fingerprint")
"""Left out of every comparison: `version` is the serial a record last changed in (it differs
whenever anything is re-recorded), and `fingerprint` is a hash of `spec`, so it changes exactly
when a `spec.*` field does and would only repeat that change as an opaque hash."""
_SPEC_ORDER = ("use_quartz_cron", *SPEC_FIELDS)


@dataclass(frozen=True, slots=True)
class VersionMeta:
    """Which state a side of a diff is: its serial, lineage and who wrote it (if recorded)."""

    serial: int
    lineage: str
    provenance: Provenance | None


@dataclass(frozen=True, slots=True)
class FieldDiff:
    """One changed field of a record. `field` is a dotted path (`spec.cron`); a field that is
    absent on one side has `None` there (a spec field that is not sent is absent)."""

    field: str
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class KeyChange:
    """One key that was added to, removed from, or changed in the state.

    `name` and `dispatch_id` are the newer side's (the old side's for a removal). For an
    addition every field is listed with `old=None`, for a removal with `new=None`."""

    key: DispatchKey
    name: str
    dispatch_id: str
    fields: tuple[FieldDiff, ...]


@dataclass(frozen=True, slots=True)
class StateDiff:
    """The differences between two state versions, each list sorted by key."""

    old_label: str
    new_label: str
    old_meta: VersionMeta
    new_meta: VersionMeta
    added: tuple[KeyChange, ...]
    removed: tuple[KeyChange, ...]
    changed: tuple[KeyChange, ...]

    @property
    def lineage_changed(self) -> bool:
        """Both sides are real states (not "no state yet") of different lineages: they are
        not two versions of one state, so the diff compares unrelated records."""
        old, new = self.old_meta.lineage, self.new_meta.lineage
        return bool(old) and bool(new) and old != new

    @property
    def total(self) -> int:
        return len(self.added) + len(self.removed) + len(self.changed)

    @property
    def has_changes(self) -> bool:
        return self.total > 0


# -- resolving a version ---------------------------------------------------------------------


def resolve_version(
    spec: str | None, backend: StateBackend, repo_dir: Path, state_path: Path
) -> tuple[Snapshot, str]:
    """The snapshot `spec` names and a label for it.

    - `None`: the current state (`backend.read()`, including actions recorded by a run that has
      not committed; its label then ends in ", uncommitted");
    - digits: that serial from the backend's history; `0` is the empty state before the first
      serial;
    - `git:REV`: the state file as committed at git revision REV (`git show`, no checkout) in
      the repository containing `repo_dir`; `state_path` is where the configured state file is
      (absolute, or relative to the current directory, as `Settings.state_path()` gives it);
    - anything else: a path to a state JSON file, relative to `repo_dir`.

    Raises `StateError` (a `ReconcilerError`, so one line and exit 1 in the CLI) naming the
    version when it does not exist or cannot be read: an unknown serial, a missing or invalid
    file, no git or no repository, an unknown revision, a revision without the state file.
    """
    if spec is None:
        return _current(backend)
    if spec.isascii() and spec.isdigit():
        serial = int(spec)
        if serial == 0:
            return Snapshot(lineage="", serial=0), "serial 0"
        return backend.read_serial(serial), f"serial {serial}"
    if spec.startswith(GIT_PREFIX):
        return _from_git(spec[len(GIT_PREFIX):], repo_dir, state_path)
    return _from_file(spec, repo_dir)


def resolve_pair(
    old: str | None, new: str | None, backend: StateBackend, repo_dir: Path, state_path: Path
) -> tuple[tuple[Snapshot, str], tuple[Snapshot, str]]:
    """The two versions `state diff [OLD] [NEW]` compares.

    NEW defaults to the current state. OLD defaults to the serial before the current one (the
    empty state when the current serial is 1); with no state at all that is an error."""
    newer = resolve_version(new, backend, repo_dir, state_path)
    if old is not None:
        return resolve_version(old, backend, repo_dir, state_path), newer
    current = newer[0] if new is None else backend.read()
    if current.serial == 0:
        raise StateError(f"{backend.describe()}: there is no state yet, so no version to diff")
    try:
        return resolve_version(str(current.serial - 1), backend, repo_dir, state_path), newer
    except StateError as error:
        raise StateError(f"{error}; name the version to compare with: a serial from "
                         "`state history`, a state file or git:REV") from None


def diff_versions(
    old: str | None, new: str | None, backend: StateBackend, repo_dir: Path, state_path: Path
) -> StateDiff:
    """`resolve_pair` then `diff_snapshots`: what `reconciler state diff [OLD] [NEW]` shows."""
    (old_snap, old_label), (new_snap, new_label) = resolve_pair(
        old, new, backend, repo_dir, state_path
    )
    return diff_snapshots(old_snap, new_snap, old_label=old_label, new_label=new_label)


def _current(backend: StateBackend) -> tuple[Snapshot, str]:
    snap = backend.read()
    label = f"serial {snap.serial}"
    # Beyond the newest sealed serial: actions of a running (or killed) write session. A state
    # without any history (a state file committed without its history) says nothing either way.
    history = backend.history()
    if history and snap.serial > history[-1].serial:
        label += ", uncommitted"
    return snap, label


def _from_file(spec: str, repo_dir: Path) -> tuple[Snapshot, str]:
    path = repo_dir / spec
    try:
        data = read_regular_file(path, MAX_STATE_BYTES)
    except FileNotFoundError:
        raise StateError(f"{spec}: no such state file") from None
    except NotAFile as error:
        raise StateError(f"{spec}: {error}, not a state file") from None
    except OSError as error:
        raise StateError(f"{spec}: cannot read: {error.strerror}") from None
    return parse_snapshot(data, spec), spec


def _git(repo_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", *args], cwd=repo_dir, capture_output=True,
                              timeout=GIT_TIMEOUT, check=False)
    except FileNotFoundError:
        raise StateError("git:REV needs git, which is not installed") from None
    except subprocess.TimeoutExpired:
        raise StateError(f"git {args[0]} took longer than {GIT_TIMEOUT:g}s") from None
    except OSError as error:
        raise StateError(f"cannot run git: {error.strerror}") from None


def _stderr(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = result.stderr.decode(errors="replace").strip().splitlines()
    return lines[0] if lines else f"exit status {result.returncode}"


def _from_git(rev: str, repo_dir: Path, state_path: Path) -> tuple[Snapshot, str]:
    shown = f"{GIT_PREFIX}{rev}"
    if not repo_dir.is_dir():
        raise StateError(f"{shown}: {repo_dir} is not a directory")
    if not rev or rev.startswith("-"):
        raise StateError(f"{shown}: expected git:REV with a revision such as HEAD~1, "
                         "a branch, a tag or a commit id")
    top = _git(repo_dir, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise StateError(f"{shown}: {repo_dir} is not in a git repository ({_stderr(top)})")
    root = Path(os.fsdecode(top.stdout.strip())).resolve()
    absolute = state_path.resolve()
    try:
        relative = absolute.relative_to(root).as_posix()
    except ValueError:
        raise StateError(f"{shown}: the state file {absolute} is outside the git "
                         f"repository {root}") from None
    commit = _git(repo_dir, "rev-parse", "--verify", "--quiet", "--end-of-options",
                  f"{rev}^{{commit}}")
    if commit.returncode != 0:
        raise StateError(f"{shown}: unknown git revision {rev!r}")
    sha = commit.stdout.decode("ascii", errors="replace").strip()
    where = f"{shown}:{relative}"
    blob = _git(repo_dir, "show", "--no-textconv", f"{sha}:{relative}")
    if blob.returncode != 0:
        raise StateError(f"{where}: the state file is not in revision {rev} "
                         f"({sha[:12]}): {_stderr(blob)}")
    return parse_snapshot(blob.stdout, where), f"{shown} ({sha[:12]})"


# -- comparing -------------------------------------------------------------------------------


def diff_snapshots(
    old: Snapshot, new: Snapshot, *, old_label: str | None = None, new_label: str | None = None
) -> StateDiff:
    """Every key added, removed or changed from `old` to `new`, field by field.

    Records are compared as `Record.to_json()` without `IGNORED_FIELDS`; intents (transient
    guards of in-flight creates) are not compared. Snapshots of different lineages are compared
    all the same and flagged by `StateDiff.lineage_changed`. Labels default to "serial N".
    """
    added: list[KeyChange] = []
    removed: list[KeyChange] = []
    changed: list[KeyChange] = []
    for key in sorted(set(old.records) | set(new.records)):
        before, after = old.records.get(key), new.records.get(key)
        if before is None and after is not None:
            fields = tuple(FieldDiff(path, None, value)
                           for path, value in _flatten(_comparable(after)))
            added.append(KeyChange(key, after.name, after.dispatch_id, fields))
        elif after is None and before is not None:
            fields = tuple(FieldDiff(path, value, None)
                           for path, value in _flatten(_comparable(before)))
            removed.append(KeyChange(key, before.name, before.dispatch_id, fields))
        elif before is not None and after is not None:
            fields = _field_diffs(_comparable(before), _comparable(after))
            if fields:
                changed.append(KeyChange(key, after.name, after.dispatch_id, fields))
    return StateDiff(
        old_label=old_label if old_label is not None else f"serial {old.serial}",
        new_label=new_label if new_label is not None else f"serial {new.serial}",
        old_meta=_meta(old),
        new_meta=_meta(new),
        added=tuple(added),
        removed=tuple(removed),
        changed=tuple(changed),
    )


def _meta(snap: Snapshot) -> VersionMeta:
    return VersionMeta(snap.serial, snap.lineage, snap.provenance)


def _comparable(record: Record) -> dict[str, Any]:
    data = record.to_json()
    for name in IGNORED_FIELDS:
        data.pop(name, None)
    return data


def _flatten(value: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str, Any]]:
    """Leaf fields as (dotted path, value), in the record's own order."""
    if isinstance(value, Mapping) and (value or not prefix):
        for name, item in value.items():
            yield from _flatten(item, (*prefix, name))
    else:
        yield _path(prefix), value


def _path(parts: tuple[str | int, ...] | list[str | int]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _field_diffs(old: dict[str, Any], new: dict[str, Any]) -> tuple[FieldDiff, ...]:
    if old == new:
        return ()
    # Imported here, not with the module: deepdiff takes 30-50 ms to import, and every command
    # line imports this module, while only `state diff` compares records.
    from deepdiff import DeepDiff  # noqa: PLC0415

    # threshold 0: always report single fields, never a whole `spec` that changed form
    report = DeepDiff(old, new, view="tree", verbose_level=2, threshold_to_diff_deeper=0)
    found: dict[str, FieldDiff] = {}
    for levels in report.values():
        for level in levels:
            path = _path(level.path(output_format="list"))
            found[path] = FieldDiff(path, _present(level.t1), _present(level.t2))
    # The record's field order (name, source, dispatch_id, spec.*, dates, who) reads best, and
    # within `spec` the request body's order, whichever side has the field.
    top: dict[str, int] = {}
    for name in (*new, *old):
        top.setdefault(name, len(top))

    def rank(change: FieldDiff) -> tuple[int, int, str]:
        head, _, rest = change.field.partition(".")
        inner = _SPEC_ORDER.index(rest) if head == "spec" and rest in _SPEC_ORDER else 0
        return top.get(head, len(top)), inner, change.field

    return tuple(sorted(found.values(), key=rank))


def _present(value: Any) -> Any:
    from deepdiff.helper import NotPresent  # noqa: PLC0415  (see _field_diffs)

    return None if isinstance(value, NotPresent) else value
