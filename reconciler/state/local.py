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

A writer whose lock was forced away (`force-unlock`) may still be running; it is fenced off.
The lock belongs to whoever created the file now at `state.lock` (each writer keeps its own open,
so its inode cannot be reused and mistaken for another's). After writing a journal line, a
session checks that the lock file and the journal at their paths are still its own: if so, the
next writer, who reads the journal only once it holds the lock, will find the line; if not, the
call fails with `LockLost` (the line is then kept or not, and the caller must assume not). A
commit, and the deletion of a journal, check the same before they act, under an exclusive `flock`
of the journal that the next writer also takes to seal what it finds: so a writer forced away
never seals a serial over the next writer's, nor deletes its journal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.model import DispatchKey
from reconciler.state.base import (
    HistoryEntry,
    Intent,
    LockInfo,
    LockLost,
    Provenance,
    Record,
    Session,
    Snapshot,
    StateError,
)
from reconciler.state.files import (
    Background,
    atomic_write,
    disk_errors,
    fsync_dir,
    identity,
    is_at,
    write_all,
)
from reconciler.state.journal import (
    Journal,
    json_line,
    parse_journal,
    put_entry,
    read_fd,
    read_journal,
    replay,
)
from reconciler.state.lockfile import UNREADABLE_LOCK_ID, HeldLock, LockFile
from reconciler.state.snapshot import (
    MALFORMED,
    MAX_STATE_BYTES,
    check_sequence,
    pack,
    parse_snapshot,
    snapshot_bytes,
    unpack,
)
from reconciler.userfiles import NotAFile, read_regular_file

__all__ = ["UNREADABLE_LOCK_ID", "LocalBackend"]

# fdatasync skips the inode's timestamps, which recovery does not need; fsync where it is absent.
_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


class LocalBackend:
    """State in local files (see the module docstring); one writer at a time, any number of
    readers, and nothing acknowledged is lost to a kill at any instant."""

    def __init__(self, path: Path, *, now: Callable[[], datetime] | None = None,
                 host: str | None = None, pid: int | None = None,
                 lease_seconds: float = 60.0) -> None:
        """`now` must return timezone-aware times; `host`, `pid` default to this process's."""
        self.path = Path(path)
        if self.path.is_symlink():
            # Written through, as Terraform's local backend does: replacing the link with a
            # file would leave its target behind, and two links to one state must share its
            # lock, journal and history, which live beside the file.
            self.path = self.path.resolve()
        self.journal_path = self.path.with_suffix(".journal")
        self.lock_path = self.path.with_suffix(".lock")
        self.history_dir = self.path.with_suffix(".history")
        self.now: Callable[[], datetime] = now or (lambda: datetime.now(UTC))
        self.host = host if host is not None else socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self.lease_seconds = lease_seconds
        self._lock = LockFile(self.lock_path, now=self.now, host=self.host, pid=self.pid,
                              lease_seconds=lease_seconds)

    def describe(self) -> str:
        return str(self.path)

    # -- reading ------------------------------------------------------------------------------

    def read(self) -> Snapshot:
        """The sealed snapshot with any pending journal replayed on top; modifies no file.

        With pending actions the result carries the journal's serial and provenance: the
        snapshot the next writer will seal them as."""
        for _ in range(5):
            snap, journal = self._load(), read_journal(self.journal_path)
            # A writer may have sealed a serial and started the next journal between the two
            # reads; reading the snapshot again then gives a matching pair.
            if journal is None or journal.base_serial <= snap.serial:
                break
        if journal is None or not self._pending(snap, journal) or not journal.entries:
            return snap
        summary = f"{len(journal.entries)} recorded actions not yet committed"
        return replay(journal, self.journal_path, snap, summary)

    def _load(self) -> Snapshot:
        try:
            data = read_regular_file(self.path, MAX_STATE_BYTES)
        except FileNotFoundError:
            return Snapshot(lineage="", serial=0)
        except NotAFile as error:  # a FIFO would make every command wait for ever
            raise StateError(f"{self.path}: {error}, not a state file") from None
        except OSError as error:
            raise StateError(f"{self.path}: cannot read: {error.strerror}") from None
        return parse_snapshot(data, str(self.path))

    def _pending(self, snap: Snapshot, journal: Journal) -> bool:
        """Whether the journal's actions are still to be applied to `snap` (else folded)."""
        if snap.lineage and journal.lineage != snap.lineage:
            raise StateError(f"{self.journal_path} belongs to state lineage {journal.lineage}, "
                             f"but {self.path} has lineage {snap.lineage}")
        if journal.base_serial > snap.serial:
            raise StateError(f"{self.journal_path} continues serial {journal.base_serial}, but "
                             f"{self.path} is at serial {snap.serial}: was it replaced?")
        if journal.base_serial == snap.serial:
            return True
        # Behind the state: folded by its own commit (whose deletion of it was lost), which left
        # the state at the journal's serial, sealed by the same run; or nothing in it to lose.
        if not journal.entries or (journal.serial == snap.serial
                                   and journal.provenance == snap.provenance):
            return False
        who = journal.provenance
        raise StateError(
            f"{self.journal_path} holds {len(journal.entries)} actions of an interrupted run "
            f"({who.operation} by {who.actor} at {who.time}) that continue serial "
            f"{journal.base_serial}, never sealed, but {self.path} is at serial {snap.serial} "
            "from other runs: it was replaced (by a git pull?). Restore the state file that "
            "run started from, or move the journal aside to give its actions up")

    # -- writing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def write_session(self, provenance: Provenance, *,
                      lock_timeout: float = 0.0) -> Iterator[Session]:
        """Lock, seal an interrupted session if there is one, then yield a new session.

        Without `commit` (an exception) the session's actions stay in the journal for the next
        writer to seal; the lock is always released."""
        with self._locked(provenance, lock_timeout) as lock:
            with disk_errors("open a write session", self.journal_path):
                session = _LocalSession(self, lock, self._recover(lock), provenance)
            try:
                yield session
            finally:
                session.close()

    @contextlib.contextmanager
    def _locked(self, provenance: Provenance, lock_timeout: float) -> Iterator[HeldLock]:
        """The state lock, held for the block; released however it ends."""
        with disk_errors("take the state lock", self.lock_path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = self._lock.acquire(provenance, lock_timeout)
        try:
            yield lock
        finally:
            lock.release()

    def _recover(self, lock: HeldLock) -> Snapshot:
        """Seal the journal a previous writer left, if it holds actions; then delete it.

        Under the journal's flock: a writer forced away from the lock may be committing this
        very journal, and holds the flock while it checks the lock and seals; so this reads the
        journal after such a commit (and finds it folded), or the commit finds the lock gone."""
        try:
            fd = os.open(self.journal_path, os.O_RDWR)
        except FileNotFoundError:
            return self._load()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not lock.mine():
                raise LockLost(self.describe(), "seal an interrupted run")
            snap = self._load()  # after the flock: the old writer may just have committed
            journal = parse_journal(read_fd(fd), self.journal_path)
            if journal is not None and self._pending(snap, journal) and journal.entries:
                count = len(journal.entries)
                summary = f"recovered {count} recorded actions from an interrupted run"
                snap = replay(journal, self.journal_path, snap, summary)
                self._seal(snap)
            # Sealed now, or folded earlier, or empty: either way nothing in it is still needed.
            if is_at(str(self.journal_path), identity(fd)):
                self.journal_path.unlink()
                fsync_dir(self.path.parent)
        finally:
            os.close(fd)  # and with it the flock
        return snap

    def _seal(self, snap: Snapshot,
              written: Mapping[DispatchKey, tuple[Record, str]] | None = None,
              ready: Callable[[], object] | None = None) -> None:
        """Write `snap` as the next serial: history, index, then state.json; `written` as for
        `snapshot_bytes`; `ready` must return before state.json is replaced (or raise)."""
        # History before state.json: once state.json shows a serial, its history is complete.
        # The history is compressed and written in a thread (zlib and fsync let go of the GIL)
        # while state.json's new content goes to disk beside it, to take its place once the
        # history is durable: 4-8 ms of each commit of 1,000 records here.
        data = snapshot_bytes(snap, written)
        self.history_dir.mkdir(exist_ok=True)
        history = Background(functools.partial(self._write_history, snap, data))

        def before_replace() -> None:
            history.result()
            if ready is not None:
                ready()

        try:
            atomic_write(self.path, data, before_replace=before_replace)
        finally:
            history.wait()  # never left running: an error here still lets it end first

    def _write_history(self, snap: Snapshot, data: bytes) -> None:
        atomic_write(self._history_file(snap.serial), pack(data))
        self._append_index(snap)

    def import_snapshots(self, snapshots: Iterable[Snapshot], provenance: Provenance, *,
                         lock_timeout: float = 0.0) -> None:
        """Under the lock, seal the given serials (ascending, one lineage) in turn, exactly as
        their commits would have; refused unless there is no state yet. For
        `reconciler.state.migrate`. A copy that fails half way keeps the serials sealed so far:
        the target must be emptied before another try."""
        with self._locked(provenance, lock_timeout) as lock, \
                disk_errors("import the state", self.path):
            self._import(lock, snapshots)

    def _import(self, lock: HeldLock, snapshots: Iterable[Snapshot]) -> None:
        if self._recover(lock).serial or self.history():
            raise StateError(f"{self.describe()} already has a state; migrate only into an "
                             "empty one")
        previous: Snapshot | None = None
        for snap in snapshots:
            check_sequence(previous, snap)
            if not lock.mine():
                raise LockLost(self.describe(), f"import serial {snap.serial}")
            self._seal(snap)
            previous = snap

    def _append_index(self, snap: Snapshot) -> None:
        provenance = snap.provenance.to_json() if snap.provenance else None
        entry = {"serial": snap.serial, "provenance": provenance, "summary": snap.summary}
        fd = os.open(self.history_dir / "index.jsonl", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            # A line torn by an earlier crash must not swallow this one.
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            write_all(fd, (b"\n" if torn else b"") + json_line(entry))
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- locking ------------------------------------------------------------------------------

    def current_lock(self) -> tuple[LockInfo, str | None] | None:
        """The lock holder and why the lock is stale, if it is; None if not locked."""
        return self._lock.current()

    def force_unlock(self, lock_id: str) -> LockInfo:
        """Remove the lock if `lock_id` names it; returns who held it."""
        return self._lock.force_unlock(lock_id)

    # -- history ------------------------------------------------------------------------------

    def _history_file(self, serial: int) -> Path:
        return self.history_dir / f"{serial:08d}.json.gz"

    def history(self) -> list[HistoryEntry]:
        """Every sealed serial, ascending (the last index line for a serial wins)."""
        try:
            data = read_regular_file(self.history_dir / "index.jsonl", MAX_STATE_BYTES)
        except FileNotFoundError:
            return []
        except NotAFile as error:
            raise StateError(f"{self.history_dir / 'index.jsonl'}: {error}, not a history "
                             "index") from None
        except OSError as error:  # the history directory is a file, say
            raise StateError(f"{self.history_dir}: cannot read the history: "
                             f"{error.strerror}") from None
        sealed = self._load().serial
        entries: dict[int, HistoryEntry] = {}
        for raw in data.splitlines():
            try:
                item = json.loads(raw)
                entry = HistoryEntry(int(item["serial"]),
                                     Provenance.from_json(item["provenance"] or {}),
                                     str(item["summary"]))
            except MALFORMED:
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
            packed = path.read_bytes()
        except OSError as error:
            raise StateError(f"{path}: cannot read: {error.strerror}") from None
        return parse_snapshot(unpack(packed, str(path)), str(path))

class _LocalSession:
    """A write session: each action is one journal line, durable when the call returns.

    Safe to call from several threads: a lock orders the lines, and an intent's fdatasync runs
    outside it, so concurrent creates share flushes instead of queueing for each other's.
    Every write is fenced (see the module docstring): refused with `LockLost` once the lock was
    forced away.
    """

    serial: int
    quick_puts = True  # a record is one appended line; only intents are flushed

    def __init__(self, backend: LocalBackend, lock: HeldLock, base: Snapshot,
                 provenance: Provenance) -> None:
        self._backend = backend
        self._held = lock
        self._base = base
        self._provenance = provenance
        self.serial = base.serial + 1
        self._lineage = base.lineage or str(uuid.uuid4())
        self._records = dict(base.records)
        self._written: dict[DispatchKey, tuple[Record, str]] = {}  # for snapshot_bytes
        self._intents = dict(base.intents)
        self._actions = 0
        self._committed = False
        self._closed = False
        self._lock = threading.Lock()
        self._path = str(backend.journal_path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
        try:
            self._fd = os.open(self._path, flags, 0o644)
        except FileExistsError:
            # only the journal of a writer that took the lock from this one can be there
            raise LockLost(backend.describe(), "start a write session") from None
        self._identity = identity(self._fd)
        header = {"lineage": self._lineage, "base_serial": base.serial, "serial": self.serial,
                  "provenance": provenance.to_json()}
        # The journal's length as far as whole lines go: where a failed write is cut back to.
        self._length = 0
        self._unusable: str | None = None  # why no more lines may be written, once so
        try:
            head = json_line(header)
            write_all(self._fd, head)
            self._length = len(head)
            _datasync(self._fd)
            self._check_held("start a write session", maybe_done=True)
        except BaseException:
            self.close()
            raise
        fsync_dir(backend.journal_path.parent)

    def _check_held(self, doing: str, *, maybe_done: bool = False) -> None:
        """Refuse unless the lock and the journal at their paths are still this session's."""
        if not (self._held.mine() and is_at(self._path, self._identity)):
            raise LockLost(self._backend.describe(), doing, maybe_done=maybe_done)

    @contextlib.contextmanager
    def _fenced(self, doing: str) -> Iterator[None]:
        """`_check_held` and what follows, with the journal's flock held throughout, so that
        the next writer cannot start sealing this journal in between."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._check_held(doing)
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _append(self, entry: dict[str, Any], apply: Callable[[], object]) -> None:
        """Write one line, then update the in-memory view, in the same order for all threads."""
        self._append_all([(entry, apply)])

    def _append_all(self, entries: Sequence[tuple[dict[str, Any], Callable[[], object]]]) -> None:
        """Write the entries' lines in one write, then update the in-memory view."""
        self._append_lines([(json_line(entry), apply) for entry, apply in entries])

    def _append_lines(self, lines: Sequence[tuple[bytes, Callable[[], object]]]) -> None:
        data = b"".join(line for line, _ in lines)
        with self._lock:
            if self._closed:
                raise StateError("the write session is closed")
            if self._unusable is not None:
                raise StateError(self._unusable)
            with disk_errors("record an action", self._backend.journal_path):
                try:
                    write_all(self._fd, data)
                except OSError:
                    self._cut_back()
                    raise
            self._length += len(data)
            # After the write, not before: see the module docstring.
            self._check_held("record an action", maybe_done=True)
            self._actions += len(lines)
            for _, apply in lines:
                apply()

    def _cut_back(self) -> None:
        """After a failed write (a full disk), remove what part of it was written: the next
        line appended to half a line would be garbage, and so would every line after it. If
        that fails too, nothing more is written in this session; what was is kept."""
        try:
            os.ftruncate(self._fd, self._length)
        except OSError as exc:
            self._unusable = (f"{self._path}: a failed write could not be undone "
                              f"({exc.strerror or exc}); this run records nothing more, and the "
                              "next one seals what it recorded before")

    def put(self, record: Record) -> None:
        """Record a dispatch (stored with `version` = this session's serial); clears its intent."""
        self.put_many([record])

    def put_many(self, records: Sequence[Record]) -> None:
        """`put` for several dispatches, in one write."""
        if not records:
            return
        serial = self.serial
        stored = [record if record.version == serial else dataclasses.replace(
            record, version=serial) for record in records]
        lines: list[tuple[bytes, Callable[[], object]]] = []
        written: list[tuple[Record, str]] = []
        for record in stored:
            line, text = put_entry(record)
            lines.append((line, functools.partial(self._store, record)))
            if text is not None:
                written.append((record, text))
        self._append_lines(lines)
        for record, pretty in written:
            self._written[record.key] = (record, pretty)

    def _store(self, record: Record) -> None:
        self._records[record.key] = record
        self._intents.pop(record.key, None)

    def remove(self, key: DispatchKey) -> None:
        """Forget a dispatch; a key not in the state is not an error."""
        self._append({"op": "remove", "key": str(key)}, lambda: self._records.pop(key, None))

    def intend(self, intent: Intent) -> None:
        """Durable even across a power loss before it returns: it guards a create."""
        self.intend_many([intent])

    def intend_many(self, intents: Sequence[Intent]) -> None:
        """Several intents in one write, made durable by one fdatasync."""
        if not intents:
            return
        self._append_all([({"op": "intent", "key": str(i.key), "intent": i.to_json()},
                           functools.partial(self._intents.__setitem__, i.key, i))
                          for i in intents])
        _datasync(self._fd)

    def clear_intent(self, key: DispatchKey) -> None:
        self._append({"op": "clear_intent", "key": str(key)},
                     lambda: self._intents.pop(key, None))

    def commit(self, summary: str) -> Snapshot:
        """Seal the session as serial+1; with no actions, leave the serial alone.

        Call it once every thread using the session has finished."""
        if self._closed:
            raise StateError("the write session is closed")
        with disk_errors("commit", self._backend.path), self._fenced("commit"):
            if not self._actions:
                snap = self._base
            else:
                # The journal is synced while the snapshot is encoded (fdatasync lets go of the
                # GIL), and must be before state.json is replaced: a commit either seals the
                # serial or leaves a durable journal to recover it from, never both.
                synced = Background(functools.partial(_datasync, self._fd))
                try:
                    snap = Snapshot(self._lineage, self.serial, dict(self._records),
                                    dict(self._intents), self._provenance, summary)
                    self._backend._seal(snap, self._written, synced.result)
                finally:
                    synced.wait()  # the journal's fd is closed next: never under the thread
                self._committed = True
        self.close()
        return snap

    def close(self) -> None:
        """End the session; an uncommitted journal with actions is kept for recovery.

        Never deletes a journal that is not this session's own (a writer that took the lock
        over may have one at the same path by now)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if self._actions > 0 and not self._committed:
                _datasync(self._fd)
                return
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            if is_at(self._path, self._identity):
                # Not synced: should the deletion be lost, the next writer finds the journal
                # folded into state.json already, and deletes it (see _recover).
                self._backend.journal_path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # and with it the flock
