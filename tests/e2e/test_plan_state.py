"""The real CLI in a subprocess: plan, show, and the state commands on the local backend."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from reconciler.state.base import Provenance, Record
from reconciler.state.local import LocalBackend
from reconciler.validate import load_desired
from tests.e2e.conftest import Project


def record_all(project: Project, skip: int = 0) -> None:
    """Record the desired schedules (but the first `skip`) as an apply would have."""
    desired = load_desired(["schedules"], project.root)
    backend = LocalBackend(project.state_path)
    who = Provenance("test", "2026-11-29T00:00:00Z", "tester")
    with backend.write_session(who) as session:
        for n, schedule in enumerate(desired.schedules[skip:]):
            session.put(Record(schedule.key, schedule.name, f"{schedule.location.file}:"
                               f"{schedule.location.line}", f"d{n:04d}", schedule.spec))
        session.commit("recorded by the test")


def test_plan_on_empty_state(project: Project) -> None:
    result = project.run("plan")
    assert result.code == 0, result.err
    assert result.out.startswith("Plan: 11 to create, 0 to update, 0 to import, 0 unchanged, "
                                 "0 orphaned.\n")
    assert "+ create orders-nightly  (schedules/sales/orders.yaml:9)" in result.out
    assert "at 02:00 every day (Asia/Shanghai)" in result.out
    assert not project.state_path.exists()  # plan never writes state


def test_detailed_exitcode(project: Project) -> None:
    assert project.run("plan", "--detailed-exitcode").code == 2
    record_all(project)
    result = project.run("plan", "--detailed-exitcode")
    assert result.code == 0
    assert "No changes." in result.out


def test_plan_json_and_markdown(project: Project) -> None:
    record_all(project, skip=2)
    document = json.loads(project.run("plan", "--format", "json").out)
    assert document["summary"]["create"] == 2
    assert document["summary"]["noop"] == 9
    assert document["state"]["serial"] == 1
    markdown = project.run("plan", "--format", "markdown").out
    assert "<details><summary>2 to create</summary>" in markdown


def test_saved_plan_shows_the_same(project: Project) -> None:
    saved = project.run("plan", "--out", "plan.json")
    assert saved.code == 0
    assert "reconciler apply plan.json" in saved.err
    shown = project.run("show", "plan.json")
    assert shown.code == 0
    # The fire times depend on the clock; the rest is the same text.
    first = [line for line in saved.out.splitlines() if "next:" not in line]
    second = [line for line in shown.out.splitlines() if "next:" not in line]
    assert first == second
    assert json.loads(project.run("show", "plan.json", "--format", "json").out)["summary"][
        "create"] == 11


def test_update_and_orphan(project: Project) -> None:
    record_all(project)
    orders = project.root / "schedules/sales/orders.yaml"
    orders.write_text(orders.read_text().replace('cron: "0 0 2 * * ?"', 'cron: "0 0 3 * * ?"'))
    returns = project.root / "schedules/sales/returns.yaml"
    returns.unlink()
    result = project.run("plan", "--no-color")
    assert result.out.startswith("Plan: 0 to create, 1 to update, 0 to import, 8 unchanged, "
                                 "2 orphaned.")
    assert 'cron: "0 0 2 * * ?" → "0 0 3 * * ?"' in result.out
    assert "reconciler state rm " in result.out


def test_invalid_desired_files_stop_the_plan(project: Project) -> None:
    (project.root / "schedules/bad.yaml").write_text("version: 1\nschedules: [\n")
    result = project.run("plan")
    assert result.code == 1
    assert result.out == ""
    assert result.err.startswith("schedules/bad.yaml:")


def test_state_commands(project: Project) -> None:
    record_all(project)
    listing = project.run("state", "list")
    assert listing.code == 0
    assert len(listing.out.splitlines()) == 11
    shown = json.loads(project.run("state", "show", "orders-nightly").out)
    assert shown["spec"]["cron"] == "0 0 2 * * ?"
    assert shown["fingerprint"].startswith("sha256:")
    removed = project.run("state", "rm", "orders-nightly", env={"GITHUB_ACTIONS": "true",
                          "GITHUB_ACTOR": "octocat", "GITHUB_SHA": "abc123",
                          "GITHUB_RUN_ID": "77", "GITHUB_REPOSITORY": "acme/schedules"})
    assert removed.code == 0, removed.err
    assert "Removed orders-nightly" in removed.out
    assert len(project.run("state", "list").out.splitlines()) == 10
    history = project.run("state", "history").out.splitlines()
    assert len(history) == 2
    assert history[1].startswith("2\t")
    assert "state rm\toctocat (GitHub Actions) abc123" in history[1]
    missing = project.run("state", "show", "nope")
    assert missing.code == 1
    assert "no recorded dispatch" in missing.err


def test_state_lock_and_force_unlock(project: Project) -> None:
    record_all(project)
    assert project.run("state", "lock").out == "No lock is held.\n"
    lock = {
        "lock_id": "lock-1", "operation": "apply", "who": "ci", "host": "elsewhere", "pid": 1,
        "created": "2026-11-29T00:00:00Z", "heartbeat": "2026-11-29T00:00:00Z",
        "ci_job": "https://ci.example/job/9", "lease_seconds": 60,
    }
    (project.root / ".reconciler/state.lock").write_text(json.dumps(lock))
    shown = project.run("state", "lock")
    assert shown.out.startswith("Lock lock-1 held by ci on elsewhere (pid 1) since "
                                "2026-11-29T00:00:00Z")
    assert "stale" in shown.out
    refused = project.run("state", "rm", "orders-nightly")
    assert refused.code == 1
    assert "state is locked" in refused.err
    assert "force-unlock lock-1" in refused.err
    assert project.run("force-unlock", "wrong").code == 1
    assert project.run("force-unlock", "lock-1").code == 0
    key = json.loads(project.run("state", "show", "orders-nightly").out)["key"]
    twice = project.run("state", "rm", "orders-nightly", key)  # one record named two ways
    assert twice.code == 0, twice.err
    assert twice.out.count("Removed orders-nightly") == 1
    assert project.run("state", "history").out.splitlines()[-1].endswith(
        f"forgot 1: orders-nightly ({key})")


def test_now_is_not_needed_for_json(project: Project) -> None:
    # JSON output carries no fire times, so two plans of the same inputs only differ in time.
    first = json.loads(project.run("plan", "--format", "json").out)
    second = json.loads(project.run("plan", "--format", "json").out)
    first.pop("created_at")
    second.pop("created_at")
    assert first == second
    assert datetime.now(UTC).year >= 2026
