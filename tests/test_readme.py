"""The README is the user's door: it must name every model the zoo registers and give the test command CI runs."""
import re

import collab_zoo

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_registered_model_is_in_the_readme():
    missing = [name for name in collab_zoo.list_models() if f"`{name}`" not in README]
    assert not missing, f"README's model table lacks {missing}"


def test_ci_runs_exactly_the_readmes_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    test_command = ci_lines[-1]
    assert "pytest" in test_command
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    assert any(test_command in block.splitlines() for block in blocks), \
        f"README gives no '{test_command}' in a bash block"


def test_readme_install_command_uses_the_constraints_file():
    assert 'pip install -c constraints.txt' in README


def test_readme_results_section_is_what_the_benchmark_files_say():
    """The numbers in the README come from benchmarks/results/*.json through benchmarks/tables.py, never by hand."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import tables
    finally:
        sys.path.pop(0)
    assert tables.section() in README, "README's results section is stale: run python benchmarks/tables.py --write"
