"""Run every benchmark and reproduction; results land in benchmarks/results/ with the machine description.

    python benchmarks/run_all.py            # the full set (about two hours on a 2-core laptop CPU), then
                                            # rewrites README.md's results section from the new JSON
    python benchmarks/run_all.py --quick    # a smoke run of each (minutes; numbers not for citing)
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
    steps = [["cost.py", *quick], ["throughput.py", *quick], ["reproduce.py", *quick]]
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
