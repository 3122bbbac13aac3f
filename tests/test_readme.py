"""The README is the user's door: it must name every model the zoo registers and give the test command CI runs."""
import re

import collab_zoo

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_registered_model_is_in_the_readme():
    missing = [name for name in collab_zoo.list_models() if f"`{name}`" not in README]
    assert not missing, f"README's model table lacks {missing}"


def _readme_bash_lines():
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines()]


def test_ci_runs_exactly_the_readmes_test_commands():
    """CI runs the README's test command as written, and the slow group the README names next to it."""
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    pytest_lines = [line for line in ci_lines if line.startswith("python -m pytest")]
    assert pytest_lines and pytest_lines[0] == "python -m pytest -q", pytest_lines
    readme_lines = _readme_bash_lines()
    for command in pytest_lines:
        assert command in readme_lines, f"README gives no '{command}' in a bash block, but CI runs it"


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
