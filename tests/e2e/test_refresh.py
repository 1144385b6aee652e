"""`plan --refresh`, `apply --refresh` and `import` against the emulator in a subprocess."""

from __future__ import annotations

import json

from tests.e2e.conftest import Project, Result
from tests.e2e.emulator_proc import EmulatorProcess, emulator

TOKEN = "refresh-token"
ORDERS = ("0b7a3e1c2d4f4a5b8c9d0e1f2a3b4c5d/8d7b3c62-7f1e-4c8e-9a51-3b1c0de3f4a2/"
          "15366328208d4d77b76532fe9f4006a6")


def run(project: Project, emu: EmulatorProcess, *argv: str) -> Result:
    return project.run(*argv, env={"RECONCILER_ENDPOINT": emu.url, "RECONCILER_TOKEN": TOKEN})


def recorded(project: Project) -> dict[str, dict[str, object]]:
    data: dict[str, dict[str, object]] = json.loads(project.state_path.read_text())["dispatches"]
    return data


def test_edited_outside_shows_drift_and_apply_reverts_it(project: Project) -> None:
    with emulator() as emu:
        assert run(project, emu, "apply", "--auto-approve").code == 0
        live = emu.dispatches()[ORDERS]
        emu.put(ORDERS, {**live, "cron": "0 0 5 * * ?", "remark": "changed in console"})
        offline = run(project, emu, "plan", "--detailed-exitcode")
        assert offline.code == 0  # without --refresh the state is all we compare with
        plan = run(project, emu, "plan", "--refresh", "--detailed-exitcode")
        assert plan.code == 2, plan.err
        assert "1 drifted" in plan.out
        assert "! drift orders-nightly" in plan.out
        assert 'cron: "0 0 2 * * ?" → "0 0 5 * * ?"' in plan.out
        before = emu.calls()[ORDERS]
        applied = run(project, emu, "apply", "--refresh", "--auto-approve")
        assert applied.code == 0, applied.err
        assert "reverted drift orders-nightly" in applied.out
        assert emu.calls()[ORDERS]["PUT"] == before.get("PUT", 0) + 1
        assert emu.calls()[ORDERS]["POST"] == 1
        assert emu.dispatches()[ORDERS]["cron"] == "0 0 2 * * ?"
        assert run(project, emu, "plan", "--refresh", "--detailed-exitcode").code == 0


def test_created_outside_is_imported_not_created_again(project: Project) -> None:
    with emulator() as emu:
        emu.put(ORDERS, {"cron": "0 0 2 * * ?", "cron_timezone": "Asia/Shanghai",
                         "use_quartz_cron": True, "remark": "nightly orders export"})
        dispatch_id = emu.dispatches()[ORDERS]["dispatch_id"]
        plan = run(project, emu, "plan", "--refresh")
        assert "1 to import" in plan.out
        assert "< import orders-nightly" in plan.out
        applied = run(project, emu, "apply", "--refresh", "--auto-approve")
        assert applied.code == 0, applied.err
        assert "imported orders-nightly" in applied.out
        assert emu.posts().get(ORDERS, 0) == 0
        assert recorded(project)[ORDERS]["dispatch_id"] == dispatch_id
        assert len(emu.dispatches()) == 11


def test_deleted_outside_is_created_again(project: Project) -> None:
    with emulator() as emu:
        assert run(project, emu, "apply", "--auto-approve").code == 0
        emu.delete(ORDERS)
        plan = run(project, emu, "plan", "--refresh")
        assert "the recorded dispatch no longer exists remotely" in plan.out
        assert plan.out.startswith("Plan: 1 to create")
        applied = run(project, emu, "apply", "--refresh", "--auto-approve")
        assert applied.code == 0, applied.err
        assert ORDERS in emu.dispatches()
        assert recorded(project)[ORDERS]["dispatch_id"] == emu.dispatches()[ORDERS]["dispatch_id"]


def test_unknown_task_is_a_problem_with_its_key(project: Project) -> None:
    with emulator() as emu:
        emu.unknown_task(ORDERS)
        plan = run(project, emu, "plan", "--refresh")
        assert plan.code == 1
        assert f"cannot read the live dispatch of {ORDERS}: HTTP 404 FDI.3180" in plan.err
        assert "Traceback" not in plan.err
        applied = run(project, emu, "apply", "--refresh", "--auto-approve")
        assert applied.code == 1
        assert "nothing was applied" in applied.err
        assert not emu.dispatches()


def test_import_one_and_all(project: Project) -> None:
    with emulator() as emu:
        emu.put(ORDERS, {"cron": "0 0 4 * * ?", "use_quartz_cron": True})
        other = ORDERS.replace("15366328208d4d77b76532fe9f4006a6",
                               "4c1d2e3f40516273a4b5c6d7e8f90a1b")
        emu.put(other, {"cron": "0 0/15 9-18 ? * MON-FRI", "use_quartz_cron": True,
                        "cron_timezone": "Asia/Shanghai", "remark": "incremental order sync"})
        wrong = run(project, emu, "import", ORDERS, "not-the-id")
        assert wrong.code == 1
        assert "nothing was imported" in wrong.err
        dispatch_id = emu.dispatches()[ORDERS]["dispatch_id"]
        one = run(project, emu, "import", "orders-nightly", str(dispatch_id))
        assert one.code == 0, one.err
        assert recorded(project)[ORDERS]["dispatch_id"] == dispatch_id
        again = run(project, emu, "import", ORDERS, str(dispatch_id))
        assert again.code == 1
        assert "already recorded" in again.err
        rest = run(project, emu, "import", "--all")
        assert rest.code == 0, rest.err
        assert "Imported 1. 9 desired tasks have no dispatch yet" in rest.out
        assert set(recorded(project)) == {ORDERS, other}
        history = run(project, emu, "state", "history").out.splitlines()
        assert [line.split("\t")[2] for line in history] == ["import", "import"]
        plan = run(project, emu, "plan")
        assert "1 to update" in plan.out  # the imported cron differs from the desired one
        assert not any(emu.posts().values())


def test_import_needs_a_desired_schedule(project: Project) -> None:
    with emulator() as emu:
        result = run(project, emu, "import", "p/i/t", "d1")
        assert result.code == 1
        assert "not in the desired files" in result.err
        assert run(project, emu, "import").code == 1
