"""Records and a local state with a varied history, shared by the tests of migration."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.model import DispatchKey, Spec
from reconciler.state.base import Intent, Provenance, Record, StateBackend
from reconciler.state.local import LocalBackend

PROV = Provenance(operation="apply", time="2024-05-01T10:00:00Z", actor="alice", commit="abc",
                  ci_job="job-1", host="ci-1")
MIGRATE = Provenance(operation="state migrate", time="2024-06-01T00:00:00Z", actor="ops")


def key(task: str) -> DispatchKey:
    return DispatchKey("proj1", "inst1", task)


def rec(task: str, cron: str = "0 0 * * * ?") -> Record:
    return Record(key=key(task), name=f"job-{task}", source="schedules/a.yaml",
                  dispatch_id=f"d-{task}", spec=Spec(cron=cron, cron_timezone="UTC"))


def commit_session(backend: StateBackend, *records: Record, summary: str = "s",
                   provenance: Provenance = PROV) -> int:
    with backend.write_session(provenance) as session:
        for record in records:
            session.put(record)
        return session.commit(summary).serial


def interrupted_session(backend: StateBackend, *records: Record,
                        provenance: Provenance = PROV) -> None:
    """A session whose caller fails before commit, as a run that crashes does."""
    def run() -> None:
        with backend.write_session(provenance) as session:
            for record in records:
                session.put(record)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run()


def build_local_history(path: Path) -> LocalBackend:
    """A local state of 4 serials with puts, removes, an intent, an interrupted run and
    provenance; 4 dispatches and 1 intent at the end."""
    backend = LocalBackend(path)
    commit_session(backend, rec("a"), rec("b"), summary="first")
    with backend.write_session(Provenance(operation="import", time="t2", actor="bob")) as s:
        s.remove(key("a"))
        s.intend(Intent(key("c"), "i-c", "create", "t2", "sha256:1"))
        s.put(rec("d", cron="0 30 1 * * ?"))
        s.commit("second")
    interrupted_session(backend, rec("e"))
    commit_session(backend, rec("f"), summary="fourth")
    return backend


def state_files(directory: Path) -> dict[str, bytes]:
    """Every file below `directory` with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}
