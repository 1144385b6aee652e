"""Copying a state, with every serial of its history, from one backend to another.

`migrate(source, target)` works between any two backends (local ↔ postgres, or two of a kind):
the target ends with the same lineage, the same serials with their provenance and summaries, and
the same records and intents at each, and is verified to before it returns. The source is only
read; its lock is held during the copy so that no run writes a serial the copy would miss.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.state.base import HistoryEntry, Provenance, Snapshot, StateBackend, StateError


@dataclass(frozen=True, slots=True)
class Migration:
    """What was copied."""

    lineage: str
    serials: int
    """History entries copied (every serial the source sealed)."""
    last_serial: int
    records: int
    intents: int
    copied_before: bool = False
    """The target held this very state already, identical in every serial: nothing copied."""


def migrate(source: StateBackend, target: StateBackend, provenance: Provenance, *,
            lock_timeout: float = 0.0) -> Migration:
    """Copy the state and its whole history from `source` into the empty `target`, then check
    the copy serial by serial.

    Refused when the target holds another state, when the source has none, and when the source
    holds recorded actions of an interrupted run not sealed yet (the next write to it seals
    them). A target that holds this state already (a copy made before, by a run stopped while
    it checked the copy, say; or the source itself under another name) is checked instead, and
    refused unless it is identical in every serial. A failure during the copy leaves the source
    as it was; the target may then hold part of the copy (the local backend writes serial by
    serial) and must be emptied before a retry.
    """
    before = source.read()
    if before.serial == 0:
        raise StateError(f"{source.describe()}: there is no state to migrate")
    copied_before = _holds_this_state(target, before)
    # Checked before taking the source's lock too: taking it seals an interrupted run.
    _require_sealed(source, before, source.history())
    with source.write_session(provenance, lock_timeout=lock_timeout):
        current = source.read()
        history = source.history()
        _require_sealed(source, current, history)
        if not copied_before:
            snapshots = (source.read_serial(entry.serial) for entry in history)
            target.import_snapshots(snapshots, provenance, lock_timeout=lock_timeout)
        _verify(source, target, current, history, copied_before=copied_before)
    return Migration(current.lineage, len(history), current.serial, len(current.records),
                     len(current.intents), copied_before)


def _holds_this_state(target: StateBackend, source: Snapshot) -> bool:
    """False for an empty target, True for one holding the source's lineage; refused else."""
    found = target.read()
    if found.serial == 0 and not target.history():
        return False
    if found.lineage == source.lineage:
        return True
    raise StateError(f"{target.describe()} already holds another state (lineage "
                     f"{found.lineage or 'unknown'}, serial {found.serial}); migrate only into "
                     "an empty one")


def _require_sealed(source: StateBackend, current: Snapshot,
                    history: list[HistoryEntry]) -> None:
    """The current state must be the last serial of a history that has it, so the copy's
    serials are exactly the source's."""
    if not history:
        raise StateError(f"{source.describe()}: serial {current.serial} has no history to "
                         "migrate (was the state file copied without its history?)")
    if current.serial != history[-1].serial:
        raise StateError(f"{source.describe()}: serial {current.serial} holds recorded "
                         "actions of an interrupted run, not sealed yet; the next write "
                         "(apply, import or state rm) seals them; migrate after that")


def _verify(source: StateBackend, target: StateBackend, current: Snapshot,
            history: list[HistoryEntry], *, copied_before: bool = False) -> None:
    def differs(what: str) -> StateError:
        if copied_before:
            return StateError(f"{target.describe()} already holds this state (lineage "
                              f"{current.lineage}), but not as {source.describe()} has it: "
                              f"it differs in {what} (a copy made before and left incomplete, "
                              "or written to since); migrate only into an empty one")
        return StateError(f"the copy in {target.describe()} differs from "
                          f"{source.describe()} in {what}; the source is unchanged, empty the "
                          "target before trying again")

    if target.read() != current:
        raise differs("the current state")
    if target.history() != history:
        raise differs("the history")
    # One serial at a time: a long history of a large state need not fit in memory.
    for entry in history:
        if source.read_serial(entry.serial) != target.read_serial(entry.serial):
            raise differs(f"serial {entry.serial}")
