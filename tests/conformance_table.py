"""Family-by-family pass counts of tests/test_conformance.py, as a Markdown table for the README.

    python tests/conformance_table.py            # both groups (default and slow)
    python tests/conformance_table.py default    # the default group only ("-m 'not slow'")
    python tests/conformance_table.py slow -x    # the slow group; anything after the group goes to pytest

Each row counts the registered models a family passed on, those written exemptions excuse (the check ran and
failed, as its exemption says it must: strict xfail), and those it failed on; the exemptions are listed below
the table with their reasons.
"""
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
GROUPS = {"all": "slow or not slow", "default": "not slow", "slow": "slow"}


class _Counts:
    """A pytest plugin that files every conformance test's outcome under its family."""

    def __init__(self):
        self.outcomes = defaultdict(lambda: defaultdict(list))

    def pytest_runtest_logreport(self, report):
        name = report.nodeid.split("::")[-1]
        if not name.startswith("test_") or "[" not in name:
            return
        family, model = name[len("test_"):].split("[", 1)
        model = model.rstrip("]")
        if report.when == "call":
            if hasattr(report, "wasxfail"):
                outcome = "exempt" if report.skipped else "failed"   # an xpass of a strict xfail is a failure
            else:
                outcome = report.outcome
            self.outcomes[family][outcome].append(model)
        elif report.failed:  # set-up or tear-down error
            self.outcomes[family]["failed"].append(model)
        elif report.when == "setup" and report.skipped:
            self.outcomes[family]["skipped"].append(model)


def table(outcomes) -> str:
    lines = ["| family | passed | exempt | failed | of |", "|---|---|---|---|---|"]
    for family, by_outcome in outcomes.items():
        counts = {k: len(v) for k, v in by_outcome.items()}
        total = sum(counts.values())
        lines.append(f"| {family} | {counts.get('passed', 0)} | {counts.get('exempt', 0)} | "
                     f"{counts.get('failed', 0)} | {total} |")
    return "\n".join(lines)


def main(argv) -> int:
    group = argv[0] if argv and argv[0] in GROUPS else "all"
    extra = argv[1:] if argv and argv[0] in GROUPS else argv
    counts = _Counts()
    start = time.perf_counter()
    code = pytest.main([str(HERE / "test_conformance.py"), "-q", "-p", "no:cacheprovider", "-m", GROUPS[group],
                        *extra], plugins=[counts])
    elapsed = time.perf_counter() - start
    print()
    print(table(counts.outcomes))
    failed = {f: sorted(o["failed"]) for f, o in counts.outcomes.items() if o.get("failed")}
    if failed:
        print("\nFailures:")
        for family, models in failed.items():
            print(f"- {family}: {', '.join(models)}")
    from collab_zoo.contract import conformance_exemptions

    exemptions = conformance_exemptions()
    if exemptions:
        print("\nExemptions:")
        for model, entry in sorted(exemptions.items()):
            for check, reason in entry.items():
                print(f"- `{model}`, {check}: {reason}")
    print(f"\n({group} group, {elapsed:.0f} s)")
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
