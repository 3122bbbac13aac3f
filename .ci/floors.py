"""The declared minimum versions, for CI's second run (see .ci/run).

    python .ci/floors.py [--keep NAME ...]   print pip constraints pinning each dependency to its ">=" floor
    python .ci/floors.py --check [--keep ...] check that the installed versions are those floors

Reads pyproject.toml's dependencies and the "test" extra. Every requirement must declare a floor: a range
whose bottom is never installed is a range nobody tested. --keep leaves a package out.
"""
import argparse
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.version import Version  # installed with huggingface_hub, accelerate and matplotlib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._\-]*)\s*(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)\s*(?:[,;].*)?$")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_floors() -> dict:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("test", []))
    floors, missing = {}, []
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        if match is None:
            missing.append(requirement)
            continue
        floors[_normal(match.group(1))] = match.group(2)
    if missing:
        sys.exit(f"pyproject.toml: every requirement needs a '>=' floor that CI installs; these have none: {missing}")
    return floors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", nargs="*", default=[], help="packages left at the version already installed")
    parser.add_argument("--check", action="store_true", help="check the installed versions instead of printing")
    args = parser.parse_args()
    keep = {_normal(name) for name in args.keep}
    floors = {name: floor for name, floor in declared_floors().items() if name not in keep}
    if not args.check:
        print("\n".join(f"{name}=={floor}" for name, floor in sorted(floors.items())))
        return 0
    wrong = []
    for name, floor in sorted(floors.items()):
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "not installed"
        print(f"{name:16s} floor {floor:10s} installed {installed}")
        if installed == "not installed" or Version(installed) != Version(floor):
            wrong.append(name)
    if wrong:
        print(f"not at the declared floor: {', '.join(wrong)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
