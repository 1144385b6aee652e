"""The `local` state backend: a JSON snapshot, an append-only journal, a history and a lock file.

Next to the snapshot file (by default `.reconciler/state.json`):

- `state.json`: the last sealed serial, as deterministic JSON so that a commit of it diffs well;
- `state.journal`: the actions of the current (or an interrupted) write session, one JSON line
  each, appended with one `os.write`, so an action is kept once `put` returns even if the process
  is killed the next instant;
- `state.history/`: every sealed serial as `NNNNNNNN.json.gz`, and `index.jsonl` describing them;
- `state.lock`: the single writer's lock, kept fresh by a heartbeat thread.

A session is sealed (by `commit`, or by the next writer if the run died) in this order: history
file, index line, `state.json`, then the journal is deleted. The journal's header names the serial
it was based on, so a crash between any two steps leaves either the old snapshot and a journal
that still applies to it, or the new snapshot and a journal recognisably folded into it already.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import gzip
import json
import os
import socket
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.model import DispatchKey, ReconcilerError
from reconciler.provenance import utc_iso
from reconciler.state.base import (
    FORMAT_VERSION,
    HistoryEntry,
    Intent,
    LockHeld,
    LockInfo,
    Provenance,
    Record,
    Session,
    Snapshot,
    StateError,
)

UNREADABLE_LOCK_ID = "unreadable"
"""The id reported for a lock file whose content cannot be read; `force_unlock` accepts it."""

_MALFORMED = (ReconcilerError, KeyError, TypeError, ValueError, AttributeError)


def _pretty(data: Any) -> bytes:
    return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def _line(data: Any) -> bytes:
    return (json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            + "\n").encode()


# fdatasync skips the inode's timestamps, which recovery does not need; fsync where it is absent.
_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def _write_all(fd: int, data: bytes) -> None:
    # One write per line; the loop only matters for a short write (disk full, signal).
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(directory: Path) -> None:
    # A rename or unlink survives a power loss only once the directory itself is synced.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: readers see the old content or the new, never a mix."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_dir(path.parent)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _snapshot_json(snap: Snapshot) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "lineage": snap.lineage,
        "serial": snap.serial,
        "provenance": snap.provenance.to_json() if snap.provenance else None,
        "summary": snap.summary,
        "dispatches": {str(key): record.to_json() for key, record in snap.records.items()},
        "intents": {str(key): intent.to_json() for key, intent in snap.intents.items()},
    }


def parse_snapshot(data: bytes, where: str) -> Snapshot:
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as error:
        raise StateError(f"{where}: not valid JSON: {error.msg} at line {error.lineno} "
                         f"column {error.colno}") from None
    except ValueError as error:
        raise StateError(f"{where}: not valid JSON: {error}") from None
    if not isinstance(doc, dict):
        raise StateError(f"{where}: not a state file (expected a JSON object)")
    version = doc.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise StateError(f"{where}: not a state file (no valid format_version)")
    if version > FORMAT_VERSION:
        raise StateError(f"{where} has format_version {version}, newer than this reconciler "
                         f"understands ({FORMAT_VERSION}); upgrade reconciler to use it")
    try:
        keys = {name: DispatchKey.parse(name) for name in (*doc["dispatches"], *doc["intents"])}
        provenance = doc.get("provenance")
        return Snapshot(
            lineage=str(doc["lineage"]),
            serial=int(doc["serial"]),
            records={keys[k]: Record.from_json(keys[k], v) for k, v in doc["dispatches"].items()},
            intents={keys[k]: Intent.from_json(keys[k], v) for k, v in doc["intents"].items()},
            provenance=Provenance.from_json(provenance) if provenance else None,
            summary=str(doc.get("summary", "")),
        )
    except _MALFORMED as error:
        raise StateError(f"{where}: malformed state: {error!r}") from None


@dataclass(frozen=True, slots=True)
class _Journal:
    """A parsed journal: its header and its complete entries with their line numbers."""

    lineage: str
    base_serial: int
    serial: int
    provenance: Provenance
    entries: tuple[tuple[int, dict[str, Any]], ...]


def _read_journal(path: Path) -> _Journal | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    *complete, tail = data.split(b"\n")
    # A non-empty tail is a line cut short by a kill: its `put` never returned, so it is dropped.
    # A complete but invalid last line is treated the same way; anywhere else it is corruption.
    lines: list[tuple[int, dict[str, Any]]] = []
    for number, raw in enumerate(complete, 1):
        try:
            item = json.loads(raw)
            if not isinstance(item, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            if number == len(complete) and not tail:
                break
            raise StateError(f"{path}:{number}: corrupt journal line: {error}") from None
        lines.append((number, item))
    if not lines:
        return None  # the header was never completed, so nothing was recorded
    head = lines[0][1]
    try:
        return _Journal(str(head["lineage"]), int(head["base_serial"]), int(head["serial"]),
                        Provenance.from_json(head["provenance"]), tuple(lines[1:]))
    except _MALFORMED as error:
        raise StateError(f"{path}:1: corrupt journal header: {error!r}") from None


def _replay(journal: _Journal, path: Path, base: Snapshot, summary: str) -> Snapshot:
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
        except _MALFORMED as error:
            raise StateError(f"{path}:{number}: corrupt journal entry: {error}") from None
    return Snapshot(journal.lineage, journal.serial, records, intents, journal.provenance, summary)


class LocalBackend:
    """State in local files (see the module docstring); one writer at a time, any number of
    readers, and nothing acknowledged is lost to a kill at any instant."""

    def __init__(self, path: Path, *, now: Callable[[], datetime] | None = None,
                 host: str | None = None, pid: int | None = None,
                 lease_seconds: float = 60.0) -> None:
        """`now` must return timezone-aware times; `host`, `pid` default to this process's."""
        self.path = Path(path)
        self.journal_path = self.path.with_suffix(".journal")
        self.lock_path = self.path.with_suffix(".lock")
        self.history_dir = self.path.with_suffix(".history")
        self.now: Callable[[], datetime] = now or (lambda: datetime.now(UTC))
        self.host = host if host is not None else socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self.lease_seconds = lease_seconds

    def describe(self) -> str:
        return str(self.path)

    # -- reading ------------------------------------------------------------------------------

    def read(self) -> Snapshot:
        """The sealed snapshot with any pending journal replayed on top; modifies no file.

        With pending actions the result carries the journal's serial and provenance: the
        snapshot the next writer will seal them as."""
        for _ in range(5):
            snap, journal = self._load(), _read_journal(self.journal_path)
            # A writer may have sealed a serial and started the next journal between the two
            # reads; reading the snapshot again then gives a matching pair.
            if journal is None or journal.base_serial <= snap.serial:
                break
        if journal is None or not self._pending(snap, journal) or not journal.entries:
            return snap
        summary = f"{len(journal.entries)} recorded actions not yet committed"
        return _replay(journal, self.journal_path, snap, summary)

    def _load(self) -> Snapshot:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return Snapshot(lineage="", serial=0)
        except OSError as error:
            raise StateError(f"{self.path}: cannot read: {error.strerror}") from None
        return parse_snapshot(data, str(self.path))

    def _pending(self, snap: Snapshot, journal: _Journal) -> bool:
        """Whether the journal's actions are still to be applied to `snap` (else folded)."""
        if snap.lineage and journal.lineage != snap.lineage:
            raise StateError(f"{self.journal_path} belongs to state lineage {journal.lineage}, "
                             f"but {self.path} has lineage {snap.lineage}")
        if journal.base_serial > snap.serial:
            raise StateError(f"{self.journal_path} continues serial {journal.base_serial}, but "
                             f"{self.path} is at serial {snap.serial}: was it replaced?")
        return journal.base_serial == snap.serial

    # -- writing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def write_session(self, provenance: Provenance, *,
                      lock_timeout: float = 0.0) -> Iterator[Session]:
        """Lock, seal an interrupted session if there is one, then yield a new session.

        Without `commit` (an exception) the session's actions stay in the journal for the next
        writer to seal; the lock is always released."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self._acquire(provenance, lock_timeout)
        try:
            session = _LocalSession(self, self._recover(), provenance)
            try:
                yield session
            finally:
                session.close()
        finally:
            lock.release()

    def _recover(self) -> Snapshot:
        snap = self._load()
        journal = _read_journal(self.journal_path)
        if journal is not None and self._pending(snap, journal) and journal.entries:
            count = len(journal.entries)
            summary = f"recovered {count} recorded actions from an interrupted run"
            snap = _replay(journal, self.journal_path, snap, summary)
            self._seal(snap)
        # Sealed now, or folded earlier, or empty: either way nothing in it is still needed.
        if self.journal_path.exists():
            self.journal_path.unlink()
            _fsync_dir(self.path.parent)
        return snap

    def _seal(self, snap: Snapshot) -> None:
        # History before state.json: once state.json shows a serial, its history is complete.
        data = _pretty(_snapshot_json(snap))
        self.history_dir.mkdir(exist_ok=True)
        # mtime=0: the same snapshot always gives the same bytes
        packed = gzip.compress(data, compresslevel=6, mtime=0)
        _atomic_write(self._history_file(snap.serial), packed)
        self._append_index(snap)
        _atomic_write(self.path, data)

    def _append_index(self, snap: Snapshot) -> None:
        provenance = snap.provenance.to_json() if snap.provenance else None
        entry = {"serial": snap.serial, "provenance": provenance, "summary": snap.summary}
        fd = os.open(self.history_dir / "index.jsonl", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            # A line torn by an earlier crash must not swallow this one.
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            _write_all(fd, (b"\n" if torn else b"") + _line(entry))
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- history ------------------------------------------------------------------------------

    def _history_file(self, serial: int) -> Path:
        return self.history_dir / f"{serial:08d}.json.gz"

    def history(self) -> list[HistoryEntry]:
        """Every sealed serial, ascending (the last index line for a serial wins)."""
        try:
            data = (self.history_dir / "index.jsonl").read_bytes()
        except FileNotFoundError:
            return []
        sealed = self._load().serial
        entries: dict[int, HistoryEntry] = {}
        for raw in data.splitlines():
            try:
                item = json.loads(raw)
                entry = HistoryEntry(int(item["serial"]),
                                     Provenance.from_json(item["provenance"] or {}),
                                     str(item["summary"]))
            except _MALFORMED:
                continue  # torn by a crash; the serial is re-sealed and indexed again
            # A serial above state.json's was indexed by a run killed before sealing it.
            if entry.serial <= sealed:
                entries[entry.serial] = entry
        return [entries[serial] for serial in sorted(entries)]

    def read_serial(self, serial: int) -> Snapshot:
        """The snapshot sealed as `serial`."""
        path = self._history_file(serial)
        if serial < 1 or serial > self._load().serial or not path.exists():
            raise StateError(f"serial {serial} is not in the history of {self.path}")
        try:
            data = gzip.decompress(path.read_bytes())
        except (OSError, EOFError, zlib.error) as error:
            raise StateError(f"{path}: cannot read: {error}") from None
        return parse_snapshot(data, str(path))

    # -- locking ------------------------------------------------------------------------------

    def _acquire(self, provenance: Provenance, timeout: float) -> _HeldLock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                held = self.current_lock()
                remaining = deadline - time.monotonic()
                if held is not None and remaining <= 0:
                    raise LockHeld(*held) from None
                time.sleep(max(0.0, min(0.05, remaining)))
                continue
            stamp = utc_iso(self.now())
            info = LockInfo(str(uuid.uuid4()), provenance.operation, _os_user(), self.host,
                            self.pid, stamp, stamp, provenance.ci_job)
            try:
                _write_all(fd, self._lock_bytes(info))
                os.fsync(fd)
            except BaseException:
                self.lock_path.unlink(missing_ok=True)
                raise
            finally:
                os.close(fd)
            return _HeldLock(self, info)

    def _lock_bytes(self, info: LockInfo) -> bytes:
        return _pretty({**dataclasses.asdict(info), "lease_seconds": self.lease_seconds})

    def _read_lock(self) -> tuple[LockInfo, float] | None:
        try:
            with self.lock_path.open("rb") as handle:
                data, mtime = handle.read(), os.fstat(handle.fileno()).st_mtime
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(data)
            info = LockInfo(str(doc["lock_id"]), str(doc["operation"]), str(doc["who"]),
                            str(doc["host"]), int(doc["pid"]), str(doc["created"]),
                            str(doc["heartbeat"]), doc.get("ci_job"))
            return info, float(doc.get("lease_seconds", self.lease_seconds))
        except _MALFORMED:
            # Created (O_EXCL) but not written yet, or its writer died in between: its age is
            # the file's, so it turns stale after a lease like any other.
            stamp = utc_iso(datetime.fromtimestamp(mtime, UTC))
            unknown = "unknown"
            info = LockInfo(UNREADABLE_LOCK_ID, unknown, unknown, unknown, 0, stamp, stamp)
            return info, self.lease_seconds

    def current_lock(self) -> tuple[LockInfo, str | None] | None:
        """The lock holder and why the lock is stale: its process is gone from this host, or
        its heartbeat is older than its lease. None if the state is not locked."""
        held = self._read_lock()
        if held is None:
            return None
        info, lease = held
        if info.host == self.host and info.pid > 0:
            try:
                os.kill(info.pid, 0)
            except ProcessLookupError:
                return info, f"process {info.pid} is not running on this host"
            except PermissionError:
                pass  # alive, owned by another user
        try:
            beat = datetime.fromisoformat(info.heartbeat)
        except ValueError:
            return info, f"its heartbeat {info.heartbeat!r} is not a time"
        if beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        age = (self.now() - beat).total_seconds()
        if age > lease:
            return info, f"no heartbeat for {age:.0f}s (lease {lease:g}s)"
        return info, None

    def force_unlock(self, lock_id: str) -> LockInfo:
        """Remove the lock if `lock_id` names it; returns who held it."""
        held = self._read_lock()
        if held is None:
            raise StateError(f"{self.lock_path}: the state is not locked")
        info = held[0]
        if info.lock_id != lock_id:
            raise StateError(f"lock id does not match: held by {info.describe()}")
        self.lock_path.unlink(missing_ok=True)
        return info


class _HeldLock:
    """The lock this process holds; a daemon thread refreshes its heartbeat every lease/4."""

    def __init__(self, backend: LocalBackend, info: LockInfo) -> None:
        self._backend = backend
        self.info = info
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="state-lock-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _mine(self) -> bool:
        held = self._backend._read_lock()
        return held is not None and held[0].lock_id == self.info.lock_id

    def _beat(self) -> None:
        while not self._stop.wait(self._backend.lease_seconds / 4):
            # Forced away (force-unlock): never overwrite the next holder's lock.
            if not self._mine():
                return
            self.info = dataclasses.replace(self.info, heartbeat=utc_iso(self._backend.now()))
            with contextlib.suppress(OSError):
                _atomic_write(self._backend.lock_path, self._backend._lock_bytes(self.info))

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._mine():
            self._backend.lock_path.unlink(missing_ok=True)


class _LocalSession:
    """A write session: each action is one journal line, durable when the call returns.

    Safe to call from several threads: a lock orders the lines, and an intent's fdatasync runs
    outside it, so concurrent creates share flushes instead of queueing for each other's.
    """

    serial: int

    def __init__(self, backend: LocalBackend, base: Snapshot, provenance: Provenance) -> None:
        self._backend = backend
        self._base = base
        self._provenance = provenance
        self.serial = base.serial + 1
        self._lineage = base.lineage or str(uuid.uuid4())
        self._records = dict(base.records)
        self._intents = dict(base.intents)
        self._actions = 0
        self._committed = False
        self._closed = False
        self._lock = threading.Lock()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
        self._fd = os.open(backend.journal_path, flags, 0o644)
        header = {"lineage": self._lineage, "base_serial": base.serial, "serial": self.serial,
                  "provenance": provenance.to_json()}
        _write_all(self._fd, _line(header))
        _datasync(self._fd)
        _fsync_dir(backend.journal_path.parent)

    def _append(self, entry: dict[str, Any], apply: Callable[[], object]) -> None:
        """Write one line, then update the in-memory view, in the same order for all threads."""
        line = _line(entry)
        with self._lock:
            if self._closed:
                raise StateError("the write session is closed")
            _write_all(self._fd, line)
            self._actions += 1
            apply()

    def put(self, record: Record) -> None:
        """Record a dispatch (stored with `version` = this session's serial); clears its intent."""
        record = dataclasses.replace(record, version=self.serial)

        def apply() -> None:
            self._records[record.key] = record
            self._intents.pop(record.key, None)

        self._append({"op": "put", "key": str(record.key), "record": record.to_json()}, apply)

    def remove(self, key: DispatchKey) -> None:
        """Forget a dispatch; a key not in the state is not an error."""
        self._append({"op": "remove", "key": str(key)}, lambda: self._records.pop(key, None))

    def intend(self, intent: Intent) -> None:
        """Durable even across a power loss before it returns: it guards a create."""
        self._append({"op": "intent", "key": str(intent.key), "intent": intent.to_json()},
                     lambda: self._intents.__setitem__(intent.key, intent))
        _datasync(self._fd)

    def clear_intent(self, key: DispatchKey) -> None:
        self._append({"op": "clear_intent", "key": str(key)},
                     lambda: self._intents.pop(key, None))

    def commit(self, summary: str) -> Snapshot:
        """Seal the session as serial+1; with no actions, leave the serial alone.

        Call it once every thread using the session has finished."""
        if self._closed:
            raise StateError("the write session is closed")
        if not self._actions:
            self.close()
            return self._base
        _datasync(self._fd)
        snap = Snapshot(self._lineage, self.serial, dict(self._records), dict(self._intents),
                        self._provenance, summary)
        self._backend._seal(snap)
        self._committed = True
        self.close()
        return snap

    def close(self) -> None:
        """End the session; an uncommitted journal with actions is kept for recovery."""
        if self._closed:
            return
        self._closed = True
        keep = self._actions > 0 and not self._committed
        if keep:
            _datasync(self._fd)
        os.close(self._fd)
        if not keep:
            self._backend.journal_path.unlink(missing_ok=True)
            _fsync_dir(self._backend.journal_path.parent)
