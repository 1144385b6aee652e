"""State versions and their diffs: resolution (serial, file, git:REV), deepdiff, rendering.

Golden files are regenerated on purpose only: UPDATE_GOLDEN=1 pytest tests/test_audit.py
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from reconciler.audit import (
    FieldDiff,
    StateDiff,
    diff_snapshots,
    diff_versions,
    resolve_pair,
    resolve_version,
)
from reconciler.model import ReconcilerError, Spec
from reconciler.render import diff as render_diff
from reconciler.state.base import Provenance, Record, Snapshot, StateError
from reconciler.state.local import LocalBackend
from tests.factories import HOURLY, NIGHTLY, key, record, snapshot

GOLDEN = Path(__file__).parent / "golden"

ALICE = Provenance(operation="apply", time="2026-11-29T10:00:00Z", actor="alice <a@x>",
                   commit="1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", host="laptop")
OCTOCAT = Provenance(operation="apply", time="2026-11-29T11:00:00Z",
                     actor="octocat (GitHub Actions)",
                     commit="9f8e7d6c5b4a39281706f5e4d3c2b1a098765432",
                     ci_job="https://github.com/acme/s/actions/runs/77", host="runner-1")


def golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(actual, encoding="utf-8")
    assert actual == path.read_text(encoding="utf-8")


def applied(rec: Record, who: Provenance, **changes: object) -> Record:
    """`rec` as an apply by `who` would re-record it."""
    return dataclasses.replace(rec, applied_at=who.time, applied_by=who.actor,
                               commit=who.commit, ci_job=who.ci_job, **changes)  # type: ignore[arg-type]


def sample() -> StateDiff:
    """One of each: added, changed in one field, changed in many (cron → period), removed."""
    stock = applied(record("t2", NIGHTLY, name="stock-every-6h"), ALICE)
    switch = applied(record("t4", NIGHTLY, name="billing"), ALICE)
    old = dataclasses.replace(
        snapshot(stock, switch, applied(record("t3", HOURLY, name="old-task",
                                               dispatch_id="d-9"), ALICE),
                 lineage="5d1c0ffe-0000-4000-8000-000000000001", serial=3),
        provenance=ALICE,
    )
    new = dataclasses.replace(
        snapshot(
            applied(record("t1", NIGHTLY, name="orders-nightly", dispatch_id="d-123"), OCTOCAT),
            # only the version differs from the old record: not a change
            dataclasses.replace(stock, spec=dataclasses.replace(NIGHTLY, cron="0 0 3 * * ?"),
                                version=4),
            applied(switch, OCTOCAT, spec=HOURLY, last_modified_date=1764500000000, version=4),
            lineage="5d1c0ffe-0000-4000-8000-000000000001", serial=4,
        ),
        provenance=OCTOCAT,
    )
    return diff_snapshots(old, new)


# -- comparing and rendering -----------------------------------------------------------------


def test_text_golden() -> None:
    golden("diff.txt", render_diff.text(sample()))


def test_json_golden() -> None:
    golden("diff.json", render_diff.as_json(sample()))


def test_no_differences_golden() -> None:
    snap = dataclasses.replace(snapshot(record("t1")), provenance=ALICE)
    later = dataclasses.replace(snap, serial=4, provenance=OCTOCAT,
                                records={key("t1"): dataclasses.replace(record("t1"), version=4)})
    diff = diff_snapshots(snap, later)
    assert not diff.has_changes
    golden("diff-empty.txt", render_diff.text(diff))


def test_sample_is_typed_and_sorted() -> None:
    diff = sample()
    assert [c.name for c in diff.added] == ["orders-nightly"]
    assert [c.name for c in diff.removed] == ["old-task"]
    assert [str(c.key) for c in diff.changed] == ["proj1/inst1/t2", "proj1/inst1/t4"]
    stock = diff.changed[0]
    assert stock.fields == (FieldDiff("spec.cron", "0 0 2 * * ?", "0 0 3 * * ?"),)
    switch = {f.field: (f.old, f.new) for f in diff.changed[1].fields}
    assert switch["spec.use_quartz_cron"] == (True, False)
    assert switch["spec.cron"] == ("0 0 2 * * ?", None)
    assert switch["spec.period"] == (None, "HOUR")
    assert switch["applied_by"] == ("alice <a@x>", "octocat (GitHub Actions)")
    assert "version" not in switch
    assert "fingerprint" not in switch
    added = {f.field: (f.old, f.new) for f in diff.added[0].fields}
    assert added["dispatch_id"] == (None, "d-123")
    assert added["spec.cron"] == (None, "0 0 2 * * ?")
    assert diff.removed[0].dispatch_id == "d-9"
    assert not diff.lineage_changed


def test_json_document_shape() -> None:
    doc = json.loads(render_diff.as_json(sample()))
    assert doc["format_version"] == 1
    assert doc["summary"] == {"added": 1, "changed": 2, "removed": 1, "total": 4}
    assert doc["old"]["serial"] == 3
    assert doc["new"]["provenance"]["ci_job"] == "https://github.com/acme/s/actions/runs/77"
    assert doc["changed"][0]["fields"] == [
        {"field": "spec.cron", "old": "0 0 2 * * ?", "new": "0 0 3 * * ?"}]


def test_different_lineages_are_compared_and_flagged() -> None:
    old = snapshot(record("t1"), lineage="lin-a", serial=7)
    new = snapshot(record("t1", HOURLY), lineage="lin-b", serial=2)
    diff = diff_snapshots(old, new)
    assert diff.lineage_changed
    assert len(diff.changed) == 1
    rendered = render_diff.text(diff)
    assert "the lineages differ (lin-a → lin-b)" in rendered
    assert json.loads(render_diff.as_json(diff))["lineage_changed"] is True


def test_from_no_state_is_not_a_lineage_change() -> None:
    diff = diff_snapshots(Snapshot(lineage="", serial=0), snapshot(record("t1"), serial=1))
    assert not diff.lineage_changed
    assert [c.name for c in diff.added] == ["s-t1"]
    assert render_diff.text(diff).startswith("State diff: serial 0 (no state) → serial 1\n")


def test_summary_line_is_singular_for_one_change() -> None:
    diff = diff_snapshots(snapshot(), snapshot(record("t1")))
    assert render_diff.summary_line(diff) == "1 change: 1 added, 0 changed, 0 removed."


def test_color_only_when_asked() -> None:
    assert "\033[" not in render_diff.text(sample())
    assert "\033[32m+ orders-nightly" in render_diff.text(sample(), color=True)


# -- resolving versions from a local backend -------------------------------------------------


def write(backend: LocalBackend, who: Provenance, *records: Record, forget: tuple[str, ...] = ()
          ) -> int:
    with backend.write_session(who) as session:
        for rec in records:
            session.put(rec)
        for task in forget:
            session.remove(key(task))
        return session.commit("test").serial


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / ".reconciler" / "state.json"


@pytest.fixture
def backend(state_path: Path) -> LocalBackend:
    """Three serials: t1 added; t1's cron changed and t2 added; t1 forgotten."""
    local = LocalBackend(state_path)
    write(local, ALICE, record("t1"))
    write(local, ALICE, record("t1", Spec(cron="0 0 5 * * ?")), record("t2", HOURLY))
    write(local, OCTOCAT, forget=("t1",))
    return local


def test_serial_and_current(backend: LocalBackend, tmp_path: Path, state_path: Path) -> None:
    snap, label = resolve_version("1", backend, tmp_path, state_path)
    assert (snap.serial, label, list(snap.records)) == (1, "serial 1", [key("t1")])
    snap, label = resolve_version(None, backend, tmp_path, state_path)
    assert (snap.serial, label, list(snap.records)) == (3, "serial 3", [key("t2")])
    snap, label = resolve_version("0", backend, tmp_path, state_path)
    assert (snap.serial, snap.lineage, label, dict(snap.records)) == (0, "", "serial 0", {})


def test_default_is_previous_serial_against_current(backend: LocalBackend, tmp_path: Path,
                                                    state_path: Path) -> None:
    diff = diff_versions(None, None, backend, tmp_path, state_path)
    assert (diff.old_label, diff.new_label) == ("serial 2", "serial 3")
    assert [c.name for c in diff.removed] == ["s-t1"]
    assert not diff.added
    assert not diff.changed
    assert diff.new_meta.provenance == OCTOCAT


def test_one_version_against_current(backend: LocalBackend, tmp_path: Path,
                                     state_path: Path) -> None:
    diff = diff_versions("1", None, backend, tmp_path, state_path)
    assert [c.name for c in diff.added] == ["s-t2"]
    assert [c.name for c in diff.removed] == ["s-t1"]
    diff = diff_versions("1", "2", backend, tmp_path, state_path)
    assert [f.field for f in diff.changed[0].fields] == ["spec.cron", "spec.cron_timezone",
                                                         "spec.remark"]


def test_first_serial_is_diffed_against_no_state(tmp_path: Path, state_path: Path) -> None:
    local = LocalBackend(state_path)
    write(local, ALICE, record("t1"))
    diff = diff_versions(None, None, local, tmp_path, state_path)
    assert (diff.old_label, diff.new_label) == ("serial 0", "serial 1")
    assert [c.name for c in diff.added] == ["s-t1"]


def test_uncommitted_actions_are_labelled(backend: LocalBackend, tmp_path: Path,
                                          state_path: Path) -> None:
    with backend.write_session(ALICE) as session:
        session.put(record("t9"))
        snap, label = resolve_version(None, backend, tmp_path, state_path)
    assert (snap.serial, label) == (4, "serial 4, uncommitted")


def test_no_state_yet_is_an_error(tmp_path: Path, state_path: Path) -> None:
    with pytest.raises(StateError, match="there is no state yet"):
        resolve_pair(None, None, LocalBackend(state_path), tmp_path, state_path)


def test_default_without_history_names_the_alternatives(backend: LocalBackend, tmp_path: Path,
                                                        state_path: Path) -> None:
    """A state file committed without its history: the previous serial is not available."""
    for path in backend.history_dir.iterdir():
        path.unlink()
    assert resolve_version(None, backend, tmp_path, state_path)[1] == "serial 3"
    with pytest.raises(StateError, match=r"serial 2 is not in the history of .*; name the "
                       r"version to compare with: a serial from `state history`, a state file "
                       r"or git:REV$"):
        diff_versions(None, None, backend, tmp_path, state_path)


def test_docs_show_the_golden_text() -> None:
    guide = Path(__file__).resolve().parent.parent / "docs" / "gitops.md"
    assert (GOLDEN / "diff.txt").read_text(encoding="utf-8") in guide.read_text(encoding="utf-8")


def test_unknown_serial(backend: LocalBackend, tmp_path: Path, state_path: Path) -> None:
    with pytest.raises(StateError, match="serial 99 is not in the history"):
        resolve_version("99", backend, tmp_path, state_path)


def test_state_file_path_relative_to_repo_dir(backend: LocalBackend, tmp_path: Path,
                                              state_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "state.json").write_bytes(state_path.read_bytes())
    write(backend, ALICE, record("t3"))
    snap, label = resolve_version("old/state.json", backend, tmp_path, state_path)
    assert (snap.serial, label) == (3, "old/state.json")
    diff = diff_versions("old/state.json", None, backend, tmp_path, state_path)
    assert [c.name for c in diff.added] == ["s-t3"]
    assert render_diff.text(diff).startswith("State diff: old/state.json, serial 3 (")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"^missing\.json: no such state file$"),
        (b"{not json", r"^bad\.json: not valid JSON: .* at line 1 column 2$"),
        (b"[1, 2]", r"^bad\.json: not a state file \(expected a JSON object\)$"),
        (b'{"format_version": 1}', r"^bad\.json: malformed state: "),
        (b'{"format_version": 99}', r"^bad\.json has format_version 99, newer than"),
    ],
)
def test_bad_state_files(backend: LocalBackend, tmp_path: Path, state_path: Path,
                         content: bytes | None, message: str) -> None:
    name = "missing.json"
    if content is not None:
        name = "bad.json"
        (tmp_path / name).write_bytes(content)
    with pytest.raises(StateError, match=message):
        resolve_version(name, backend, tmp_path, state_path)


def test_a_directory_is_not_a_state_file(backend: LocalBackend, tmp_path: Path,
                                         state_path: Path) -> None:
    with pytest.raises(StateError, match="is a directory"):
        resolve_version(".reconciler", backend, tmp_path, state_path)


# -- git:REV ---------------------------------------------------------------------------------


@pytest.fixture
def isolated_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user or system git config (signing, hooks, templates) and no repository above."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(name, raising=False)


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return result.stdout.strip()


@pytest.fixture
def git_repo(isolated_git: None, tmp_path: Path) -> Path:
    """A repository whose `ops/` holds the config dir; state.json committed after each of three
    sessions (t1 added; t1's cron changed and t2 added; t1 forgotten, t3 added)."""
    root = tmp_path / "repo"
    ops = root / "ops"
    ops.mkdir(parents=True)
    git(root, "init", "--quiet")
    git(root, "config", "user.name", "Alice")
    git(root, "config", "user.email", "a@x")
    (root / "README").write_text("no state yet\n")
    git(root, "add", "README")
    git(root, "commit", "--quiet", "-m", "initial")
    local = LocalBackend(ops / ".reconciler" / "state.json")
    sessions: list[tuple[Provenance, tuple[Record, ...], tuple[str, ...]]] = [
        (ALICE, (record("t1"),), ()),
        (ALICE, (record("t1", Spec(cron="0 0 5 * * ?")), record("t2", HOURLY)), ()),
        (OCTOCAT, (record("t3"),), ("t1",)),
    ]
    for who, records, forget in sessions:
        serial = write(local, who, *records, forget=forget)
        git(root, "add", "ops/.reconciler/state.json")
        git(root, "commit", "--quiet", "-m", f"state serial {serial}")
    return ops


def test_git_revisions(git_repo: Path) -> None:
    state = git_repo / ".reconciler" / "state.json"
    backend = LocalBackend(state)
    diff = diff_versions("git:HEAD~2", "git:HEAD", backend, git_repo, state)
    head = git(git_repo, "rev-parse", "HEAD")
    assert diff.new_label == f"git:HEAD ({head[:12]})"
    assert diff.old_label.startswith("git:HEAD~2 (")
    assert (diff.old_meta.serial, diff.new_meta.serial) == (1, 3)
    assert [c.name for c in diff.added] == ["s-t2", "s-t3"]
    assert [c.name for c in diff.removed] == ["s-t1"]
    assert not diff.changed
    assert diff.new_meta.provenance == OCTOCAT

    diff = diff_versions("git:HEAD~2", "git:HEAD~1", backend, git_repo, state)
    assert [c.name for c in diff.changed] == ["s-t1"]
    assert diff.changed[0].fields[0] == FieldDiff("spec.cron", "0 0 2 * * ?", "0 0 5 * * ?")
    assert render_diff.text(diff).startswith(
        f"State diff: {diff.old_label}, serial 1 (2026-11-29T10:00:00Z, apply by alice <a@x>,")


def test_git_revision_against_current_by_default(git_repo: Path) -> None:
    state = git_repo / ".reconciler" / "state.json"
    backend = LocalBackend(state)
    write(backend, ALICE, record("t4"))  # not committed to git
    diff = diff_versions("git:HEAD", None, backend, git_repo, state)
    assert diff.new_label == "serial 4"
    assert [c.name for c in diff.added] == ["s-t4"]


def test_git_state_file_not_in_revision(git_repo: Path) -> None:
    state = git_repo / ".reconciler" / "state.json"
    with pytest.raises(StateError, match=r"git:HEAD~3:ops/\.reconciler/state\.json: the state "
                       r"file is not in revision HEAD~3 \("):
        resolve_version("git:HEAD~3", LocalBackend(state), git_repo, state)


def test_git_unknown_revision(git_repo: Path) -> None:
    state = git_repo / ".reconciler" / "state.json"
    backend = LocalBackend(state)
    with pytest.raises(ReconcilerError, match=r"^git:no-such-branch: unknown git revision"):
        resolve_version("git:no-such-branch", backend, git_repo, state)
    for rev in ("", "--output=x"):
        with pytest.raises(ReconcilerError, match="expected git:REV with a revision"):
            resolve_version(f"git:{rev}", backend, git_repo, state)


def test_git_invalid_state_at_revision(git_repo: Path) -> None:
    state = git_repo / ".reconciler" / "state.json"
    state.write_text("{oops")
    git(git_repo, "commit", "--quiet", "-am", "broken")
    with pytest.raises(StateError, match=r"^git:HEAD:ops/\.reconciler/state\.json: not valid "
                       "JSON"):
        resolve_version("git:HEAD", LocalBackend(state), git_repo, state)


def test_git_not_a_repository(isolated_git: None, tmp_path: Path, state_path: Path) -> None:
    with pytest.raises(ReconcilerError, match=r"^git:HEAD: .* is not in a git repository"):
        resolve_version("git:HEAD", LocalBackend(state_path), tmp_path, state_path)


def test_git_state_file_outside_the_repository(git_repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "state.json"
    with pytest.raises(ReconcilerError, match="is outside the git repository"):
        resolve_version("git:HEAD", LocalBackend(outside), git_repo, outside)


def test_git_with_paths_relative_to_the_working_directory(
        git_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As `reconciler -C ops state diff git:HEAD~1` passes them: repo_dir `ops`, and the state
    path `ops/.reconciler/state.json` relative to where the process runs."""
    monkeypatch.chdir(git_repo.parent)
    state = Path("ops/.reconciler/state.json")
    diff = diff_versions("git:HEAD~1", None, LocalBackend(state), Path("ops"), state)
    assert [c.name for c in diff.added] == ["s-t3"]
    assert [c.name for c in diff.removed] == ["s-t1"]
