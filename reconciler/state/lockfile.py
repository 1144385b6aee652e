"""The local backend's lock file: one writer at a time, its holder named, stale when dead.

`state.lock` holds who took it (id, user, host, pid, operation, CI job, times) as JSON, kept fresh
by a heartbeat thread every lease/4. It is stale when its process is gone from this host or its
heartbeat is older than its lease. The lock belongs to whoever created the file now at the path:
the holder keeps its file open, so the inode cannot be reused and mistaken for another's, and
`HeldLock.mine()` tells whether it was forced away. A lock file is written as a draft beside it
and linked into place; drafts that a killed writer left are swept by the next holder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from reconciler.provenance import utc_iso
from reconciler.state.base import LockHeld, LockInfo, Provenance, StateError, current_user
from reconciler.state.files import (
    fsync_dir,
    identity,
    is_at,
    remove_leftovers,
    write_all,
    write_temp,
)
from reconciler.state.heartbeat import Heartbeat
from reconciler.state.snapshot import MALFORMED, pretty_json
from reconciler.userfiles import NotAFile, read_regular_file

UNREADABLE_LOCK_ID = "unreadable"
"""The id reported for a lock file whose content cannot be read; `force_unlock` accepts it."""

MAX_LOCK_BYTES = 64 * 1024
"""A lock is a few hundred bytes; read no more of whatever else sits at its path."""

DRAFT_MAX_AGE = 60.0
"""Seconds after which a lock draft is swept away: a draft lives for milliseconds, between its
writing and its linking into place, so an older one was left by a writer killed meanwhile."""


class LockFile:
    """The lock file at `path`, for a process on `host` with `pid`."""

    def __init__(self, path: Path, *, now: Callable[[], datetime], host: str, pid: int,
                 lease_seconds: float) -> None:
        self.path = path
        self.now = now
        self.host = host
        self.pid = pid
        self.lease_seconds = lease_seconds

    def acquire(self, provenance: Provenance, timeout: float) -> HeldLock:
        """Take the lock, waiting up to `timeout` s; LockHeld naming the holder otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            held_lock = self._try(provenance)
            if held_lock is not None:
                return held_lock
            held = self.current()
            remaining = deadline - time.monotonic()
            if held is not None and remaining <= 0:
                raise LockHeld(*held)
            time.sleep(max(0.0, min(0.05, remaining)))

    def _try(self, provenance: Provenance) -> HeldLock | None:
        """Take the lock if it is free. The lock file appears with its content already written
        (written beside it, then hard-linked into place, which fails if a lock exists): a
        writer killed at any instant leaves either no lock or a complete one, whose dead pid
        makes it stale at once, never an empty file that would block everyone for a lease."""
        stamp = utc_iso(self.now())
        info = LockInfo(str(uuid.uuid4()), provenance.operation, current_user(), self.host,
                        self.pid, stamp, stamp, provenance.ci_job)
        draft = self.path.with_name(f".{self.path.name}.{info.lock_id}")
        fd = os.open(draft, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, self.content(info))
            os.fsync(fd)
            os.link(draft, self.path)
        except (FileExistsError, FileNotFoundError):  # taken; or our draft swept as stale
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        finally:
            draft.unlink(missing_ok=True)
        fsync_dir(self.path.parent)
        # Drafts that writers killed while locking left behind: swept by the holder.
        remove_leftovers(self.path.parent, f".{self.path.name}.*", DRAFT_MAX_AGE)
        return HeldLock(self, fd, info)

    def content(self, info: LockInfo) -> bytes:
        return pretty_json({**dataclasses.asdict(info), "lease_seconds": self.lease_seconds})

    def _read_lock(self) -> tuple[LockInfo, float] | None:
        try:
            data = read_regular_file(self.path, MAX_LOCK_BYTES)
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:
            return None
        except NotAFile as error:
            raise StateError(f"{self.path}: {error}, not a lock file; remove it if no run is "
                             "in progress") from None
        except OSError as error:
            raise StateError(f"{self.path}: cannot read the lock: {error.strerror}") from None
        try:
            doc = json.loads(data)
            info = LockInfo(str(doc["lock_id"]), str(doc["operation"]), str(doc["who"]),
                            str(doc["host"]), int(doc["pid"]), str(doc["created"]),
                            str(doc["heartbeat"]), doc.get("ci_job"))
            return info, float(doc.get("lease_seconds", self.lease_seconds))
        except MALFORMED:
            # Not written by this tool (locks appear complete; see _try), or damaged:
            # its age is the file's, so it turns stale after a lease like any other.
            stamp = utc_iso(datetime.fromtimestamp(mtime, UTC))
            unknown = "unknown"
            info = LockInfo(UNREADABLE_LOCK_ID, unknown, unknown, unknown, 0, stamp, stamp)
            return info, self.lease_seconds

    def current(self) -> tuple[LockInfo, str | None] | None:
        """The lock holder and why the lock is stale: its process is gone from this host, or
        its heartbeat is older than its lease. None if the state is not locked."""
        held = self._read_lock()
        if held is None:
            return None
        info, lease = held
        return info, info.stale_reason(lease=lease, host=self.host, now=self.now())

    def force_unlock(self, lock_id: str) -> LockInfo:
        """Remove the lock if `lock_id` names it; returns who held it."""
        held = self._read_lock()
        if held is None:
            raise StateError(f"{self.path}: the state is not locked")
        info = held[0]
        if info.lock_id != lock_id:
            raise StateError(f"lock id does not match: held by {info.describe()}")
        self.path.unlink(missing_ok=True)
        return info


class HeldLock:
    """The lock this process holds: the lock file it created, kept open.

    The lock is ours while the file at `state.lock` is the one we hold open (see the module
    docstring); a daemon thread refreshes its heartbeat every lease/4 by replacing it with a new
    file, which then becomes the one we hold."""

    def __init__(self, lock: LockFile, fd: int, info: LockInfo) -> None:
        self._lock = lock
        self._path = str(lock.path)
        self._fd = fd
        self._identity = identity(fd)
        self.info = info
        # orders the heartbeat's swap of the file against `mine` from the session's threads
        self._mutex = threading.Lock()
        self._heartbeat = Heartbeat(lock.lease_seconds / 4, self._beat)
        self._heartbeat.start()

    def mine(self) -> bool:
        """Whether this process still holds the lock (it was not forced away)."""
        with self._mutex:
            return is_at(self._path, self._identity)

    def _beat(self) -> bool:
        return self._refresh(dataclasses.replace(self.info, heartbeat=utc_iso(self._lock.now())))

    def _refresh(self, info: LockInfo) -> bool:
        """Replace the lock file with one holding `info`; False once the lock is not ours."""
        path = self._lock.path
        try:
            fd, temp = write_temp(path, self._lock.content(info))
        except OSError:
            return True  # a full disk, say: the next beat tries again
        with self._mutex:
            # Forced away: never replace the next holder's lock. (Were the lock forced and
            # taken between this check and the rename, the next holder would find its file
            # replaced and be refused at its next write: fenced, not overwritten.)
            if not is_at(self._path, self._identity):
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                return False
            try:
                os.replace(temp, path)
            except OSError:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                return True
            os.close(self._fd)
            self._fd, self._identity, self.info = fd, identity(fd), info
        fsync_dir(path.parent)
        return True

    def release(self) -> None:
        self._heartbeat.stop()
        with self._mutex:
            if is_at(self._path, self._identity):
                self._lock.path.unlink(missing_ok=True)
            os.close(self._fd)
