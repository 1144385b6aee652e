"""`reconciler validate` against check-jsonschema on the same generated files, in the same run.

Target (issue): 10k schedules in at most 0.25x check-jsonschema's time; 100k validated with peak
memory under 1 GB. Usage: python bench/validate.py [--sizes 1000,10000,100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys

from common import REPO, WORK, generate, median_run, reconciler_command


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--peer-max", type=int, default=10_000,
                        help="largest size to run check-jsonschema on (it is slow)")
    args = parser.parse_args()
    peer = shutil.which("check-jsonschema")
    schema = str(REPO / "schema" / "schedules.schema.json")
    failed = False
    print(f"{'schedules':>10} {'reconciler s':>13} {'peak MiB':>9} {'check-jsonschema s':>19} "
          f"{'ratio':>7}")
    for size in (int(s) for s in args.sizes.split(",")):
        directory = WORK / f"validate-{size}"
        shutil.rmtree(directory, ignore_errors=True)
        files = generate(size, directory)
        ours = median_run([*reconciler_command(), "validate", str(directory)], args.repeat)
        failed |= ours.returncode != 0
        theirs_text, ratio_text = "-", "-"
        if peer and size <= args.peer_max:
            theirs = median_run([peer, "--schemafile", schema, *map(str, files)], args.repeat)
            failed |= theirs.returncode != 0
            theirs_text = f"{theirs.seconds:.2f}"
            ratio_text = f"{ours.seconds / theirs.seconds:.3f}"
        print(f"{size:>10} {ours.seconds:>13.2f} {ours.peak_mib:>9.0f} {theirs_text:>19} "
              f"{ratio_text:>7}", flush=True)
        shutil.rmtree(directory, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
