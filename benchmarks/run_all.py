"""Run every benchmark and reproduction; results land in benchmarks/results/ with the machine description.

    python benchmarks/run_all.py            # the full set (about three hours on a quiet 2-core CPU), then
                                            # rewrites README.md's results section from the new JSON
    python benchmarks/run_all.py --quick    # a smoke run of each (numbers not for citing; results/quick/)

cost.py measures at 1 thread and at all cores (train.py's throughput is one of its rows); gpu.py measures on
the GPU when there is one and says "no GPU" otherwise. Timing needs a quiet machine: cost.py --check then
lists each target with PASS or FAIL and flags rows that started on a busy machine.
"""
import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    quick = ["--quick"] if args.quick else []
    steps = [["cost.py", *quick], ["gpu.py", *quick], ["reproduce.py", *quick], ["cost.py", "--check", *quick]]
    if not args.quick:  # smoke numbers never reach the README
        steps.append(["tables.py", "--write"])
    for step in steps:
        print(f"\n### {' '.join(step)}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / step[0]), *step[1:]], cwd=HERE)
        if code != 0:
            print(f"{step[0]} failed with exit code {code}", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
