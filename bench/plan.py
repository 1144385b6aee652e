"""`reconciler plan` over 10k and 100k desired schedules with 90% already recorded in state.

Peer: `terraform plan` over the same number of `terraform_data` resources with 90% in its state,
measured in the same run when a `terraform` binary is on PATH (its state file is generated, as
applying 9,000 resources through Terraform would take many minutes).
Targets (issue): 10k plan <= 0.1x terraform plan; 100k within 10x the 10k time (linear).
Usage: python bench/plan.py [--sizes 10000,100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

from common import WORK, generate, median_run, reconciler_command

from reconciler.state.base import Provenance, Record
from reconciler.state.local import LocalBackend
from reconciler.validate import load_desired

RECORDED = 0.9


def prepare_state(project: Path) -> int:
    """Record 90% of the desired schedules, as an earlier apply would have."""
    desired = load_desired(["schedules"], project)
    assert not desired.problems, desired.problems[:3]
    backend = LocalBackend(project / ".reconciler" / "state.json")
    who = Provenance("bench", datetime.now(UTC).isoformat(), "bench")
    recorded = int(len(desired.schedules) * RECORDED)
    with backend.write_session(who) as session:
        for n, schedule in enumerate(desired.schedules[:recorded]):
            session.put(Record(schedule.key, schedule.name, f"{schedule.location.file}:"
                               f"{schedule.location.line}", f"dispatch-{n:08d}", schedule.spec,
                               1764547200000, 1764547200000, "2026-12-01T00:00:00Z", "bench"))
        session.commit("bench setup")
    return recorded


def prepare_terraform(directory: Path, count: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "main.tf").open("w") as config:
        for n in range(count):
            config.write(f'resource "terraform_data" "s{n}" {{\n  input = "sched-{n:06d}"\n}}\n')
    resources = []
    for n in range(int(count * RECORDED)):
        value = {"value": f"sched-{n:06d}", "type": "string"}
        resources.append({
            "mode": "managed", "type": "terraform_data", "name": f"s{n}",
            "provider": 'provider["terraform.io/builtin/terraform"]',
            "instances": [{"schema_version": 0, "sensitive_attributes": [], "attributes": {
                "id": str(uuid.uuid4()), "input": value, "output": value,
                "triggers_replace": None}}],
        })
    state = {"version": 4, "terraform_version": "1.11.4", "serial": 1,
             "lineage": str(uuid.uuid4()), "outputs": {}, "resources": resources,
             "check_results": None}
    (directory / "terraform.tfstate").write_text(json.dumps(state))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--peer-max", type=int, default=10_000)
    args = parser.parse_args()
    terraform = shutil.which("terraform")
    times: dict[int, float] = {}
    failed = False
    print(f"{'schedules':>10} {'reconciler s':>13} {'peak MiB':>9} {'terraform s':>12} "
          f"{'ratio':>7}")
    for size in (int(s) for s in args.sizes.split(",")):
        project = WORK / f"plan-{size}"
        shutil.rmtree(project, ignore_errors=True)
        generate(size, project / "schedules")
        prepare_state(project)
        command = [*reconciler_command(), "-C", str(project), "plan"]
        ours = median_run(command, args.repeat)
        failed |= ours.returncode != 0
        times[size] = ours.seconds
        peer_text, ratio_text = "-", "-"
        if terraform and size <= args.peer_max:
            tf_dir = WORK / f"terraform-{size}"
            shutil.rmtree(tf_dir, ignore_errors=True)
            prepare_terraform(tf_dir, size)
            peer = median_run([terraform, "plan", "-input=false", "-no-color", "-lock=false"],
                              args.repeat, cwd=tf_dir)
            failed |= peer.returncode != 0
            peer_text = f"{peer.seconds:.2f}"
            ratio_text = f"{ours.seconds / peer.seconds:.3f}"
            shutil.rmtree(tf_dir, ignore_errors=True)
        print(f"{size:>10} {ours.seconds:>13.2f} {ours.peak_mib:>9.0f} {peer_text:>12} "
              f"{ratio_text:>7}", flush=True)
        shutil.rmtree(project, ignore_errors=True)
    sizes = sorted(times)
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        print(f"scaling: {large // small}x the schedules took "
              f"{times[large] / times[small]:.1f}x the time")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
