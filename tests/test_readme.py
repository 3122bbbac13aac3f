"""The README is the user's door, and it cannot drift: its blocks run, its numbers come from their sources, the
sections other files point at exist, it names every model and gives the commands CI runs.

The blocks run through tests/readme_runner.py (python blocks as they are; bash blocks with the documented
placeholders filled in and epochs shortened). Python blocks run in the default group; bash blocks train, so they
run in the slow group (`python -m pytest -q -m slow`, which CI runs), the main job among them.
"""
import json
import re
import subprocess

import pytest

import collab_zoo

from conftest import ROOT, subprocess_env

import readme_runner
from readme_runner import ShellSession, blocks, generated_region, headings

README = readme_runner.readme_text()
BLOCKS = blocks(README)
MAIN_JOB = "python train.py"


def _is_main_job(block) -> bool:
    return block.commands() == [MAIN_JOB]


def _params(language):
    chosen = [b for b in BLOCKS if b.language == language and b.not_run is None and b.file_name is None]
    marks = [pytest.mark.slow] if language == "bash" else []
    return [pytest.param(b, id=f"line{b.line}", marks=marks) for b in chosen if not _is_main_job(b)]


# --- what the README names -----------------------------------------------------------------------------------

def test_every_registered_model_is_in_the_readme():
    missing = [name for name in collab_zoo.list_models() if f"`{name}`" not in README]
    assert not missing, f"README's model table lacks {missing}"


def _readme_bash_lines():
    return [line for block in BLOCKS if block.language == "bash" for line in block.commands()]


def _ci_lines():
    return [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]


def test_ci_runs_exactly_the_readmes_test_commands():
    """CI runs the README's test command as written, and the slow group the README names next to it."""
    pytest_lines = [line for line in _ci_lines() if line.startswith("python -m pytest")]
    assert pytest_lines and pytest_lines[0] == "python -m pytest -q", pytest_lines
    readme_lines = _readme_bash_lines()
    for command in pytest_lines:
        assert command in readme_lines, f"README gives no '{command}' in a bash block, but CI runs it"
    readme_pytest = [line for line in readme_lines if line.startswith("python -m pytest")]
    assert set(readme_pytest) <= set(pytest_lines), f"README gives test commands CI does not run: {readme_pytest}"


def test_readme_install_is_the_install_ci_runs():
    """The README's install line is CI's, but editable (CI installs the wheel, as a user of a release would)."""
    install = next(line for line in _readme_bash_lines() if "pip install" in line)
    readme_pip = re.search(r"pip install .*$", install).group(0)
    assert "-c constraints.txt" in readme_pip
    assert any(line.endswith(readme_pip.replace("-e ", "")) for line in _ci_lines()), (readme_pip, _ci_lines())


def test_every_block_runs_or_says_why_not():
    """A block is run (python, bash), written as a file a later command reads, or marked not run with a reason."""
    for block in BLOCKS:
        if block.not_run is not None:
            assert block.not_run.strip(), f"{block.name}: a 'not run' marker needs its reason"
        elif block.file_name is None:
            assert block.language in ("python", "bash"), f"{block.name}: no runner for {block.language!r}"
    reasons = [b.not_run for b in BLOCKS if b.not_run is not None]
    assert len(reasons) < len(BLOCKS) / 3, f"most of the README is left unrun: {reasons}"


# --- numbers and references come from their sources ----------------------------------------------------------

def test_readme_results_section_is_what_the_benchmark_files_say():
    """The numbers in the README come from benchmarks/results/*.json through benchmarks/tables.py, never by hand."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import tables
    finally:
        sys.path.pop(0)
    assert tables.section() in README, "README's results section is stale: run python benchmarks/tables.py --write"


@pytest.mark.parametrize("name", sorted(readme_runner.GENERATORS))
def test_generated_passage_is_what_its_source_says(name):
    current = generated_region(README, name)
    assert current is not None, f"README lacks the generated passage {name!r}"
    assert current == readme_runner.GENERATORS[name](), \
        f"README's {name!r} passage is stale: run python tests/readme_runner.py --write"


def test_main_job_passage_quotes_what_the_main_job_printed():
    record = json.loads(readme_runner.MAIN_JOB_RESULTS.read_text())
    assert record["command"] == MAIN_JOB
    passage = generated_region(README, "main-job")
    for model, printed in record["printed"].items():
        assert f"`{model}` {printed} %" in passage, (model, printed)


def test_reproduced_prose_quotes_only_figures_the_tables_give():
    """The prose under the results tables may only repeat figures the generated tables hold."""
    results = README.split("<!-- results:begin -->", 1)[1].split("<!-- results:end -->", 1)[0]
    prose = README.split("### What reproduced at this scale", 1)[1].split("\n## ", 1)[0]
    typed = [n for n in re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", prose)
             if not re.search(rf"(?<![\w.]){re.escape(n)}(?![\d])", results)]
    assert not typed, f"figures typed into the prose that no results table gives: {typed}"


def _tracked_files():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:  # a source tree without git: every text file
        return [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts]
    return out.stdout.split()


# (README, "Install"), (README, 'Publishing weights'), README section "Install"
SECTION_REFERENCE = re.compile(r"README(?:\.md)?(?:,\s*|\s+section\s+)([\"'])([^\"'\n]+)\1")
# The README's own tests name it as a variable and quote its generated passages' names.
ABOUT_THE_README = {"tests/test_readme.py", "tests/readme_runner.py"}
# Mutation results quote mutated source lines (a message upper-cased, say): not references anyone follows.
NOT_REFERENCES = {"benchmarks/results/mutation.json"}


def test_section_references_across_the_repository_exist():
    """`(README, "Install")` in a comment, an error message or a config names a section the README has."""
    titles = set(headings(README))
    broken = []
    for path in _tracked_files():
        if path == "README.md" or path in ABOUT_THE_README | NOT_REFERENCES or not (ROOT / path).is_file():
            continue
        try:
            text = (ROOT / path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for match in SECTION_REFERENCE.finditer(text):
            if match.group(2) not in titles:
                broken.append(f"{path}: {match.group(0)}")
    assert not broken, f"references to README sections that do not exist: {broken}"


def _anchor(title: str) -> str:
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def test_readme_links_to_its_own_sections_resolve():
    anchors = {_anchor(title) for title in headings(README)}
    links = re.findall(r"\]\(#([^)]+)\)", README)
    assert links, "the README links none of its sections"
    missing = [link for link in links if link not in anchors]
    assert not missing, f"links to sections that do not exist: {missing}"


def test_the_sections_other_files_and_issues_need_exist():
    titles = set(headings(README))
    for title in ("Install", "Publishing weights", "Pretrained weights", "What we promise",
                  "Using the zoo from timm's scripts and your own loop", "Conformance with timm", "Results"):
        assert title in titles, title


def test_every_recipe_is_listed():
    from collab_zoo.training.args import RECIPES

    missing = [name for name in RECIPES if f"`{name}`" not in README]
    assert not missing, missing


# --- the blocks run ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("block", _params("python"))
def test_python_block_runs(block, hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the block writes where a user's working folder would be
    exec(compile(block.code, block.name, "exec"), {"__name__": "__readme__"})


def _files_before(block):
    """The file blocks of the same section that come before ``block`` (a config its commands read)."""
    return [b for b in BLOCKS if b.file_name and b.section == block.section and b.line < block.line]


def _run_block(block, workdir):
    session = ShellSession.start(workdir, subprocess_env(OMP_NUM_THREADS="2"))
    for file_block in _files_before(block):
        (workdir / file_block.file_name).write_text(file_block.code)
    outputs = []
    for command in block.commands():
        proc = session.run(command)
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, f"{block.name}: `{proc.args}` exited {proc.returncode}:\n" \
                                     f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        assert "Traceback" not in proc.stderr, f"{block.name}: `{proc.args}` printed a traceback:\n{proc.stderr}"
    return session, outputs


@pytest.mark.parametrize("block", _params("bash"))
def test_bash_block_runs(block, hub, tmp_path):
    _run_block(block, tmp_path)


@pytest.mark.slow
def test_main_job_prints_what_the_readme_quotes(hub, tmp_path):
    """`python train.py` as the README gives it, whole (it cannot be shortened): it prints the recorded figures."""
    block = next(b for b in BLOCKS if _is_main_job(b))
    assert block.not_run is None
    _, outputs = _run_block(block, tmp_path)
    record = json.loads(readme_runner.MAIN_JOB_RESULTS.read_text())
    printed = readme_runner.main_job_figures(outputs[0])
    assert printed.keys() == record["printed"].keys()
    # Seed 0 gives the same figures run after run on one machine; another CPU may pick other kernels (AVX-512 vs
    # AVX2 reductions sum in another order), so a CI machine is held to half a point, not to the last digit.
    drift = {m: abs(float(printed[m]) - float(v)) for m, v in record["printed"].items()}
    assert max(drift.values()) <= 0.5, \
        f"the main job now prints {printed}, the README quotes {record['printed']}: run python tests/readme_runner.py --record-main-job"


def test_shell_runner_fills_only_the_documented_placeholders(tmp_path):
    """The runner's own rules, on commands the README could hold."""
    session = ShellSession(tmp_path, {}, runs=["first", "second"])
    assert session.prepared("python train.py --model x --epochs 30") == "python train.py --model x --epochs 1"
    assert session.prepared("python train.py --model x  # note") == "python train.py --model x --epochs 1  # note"
    assert session.prepared("python train.py --resume output/<run> --epochs 40") == \
        "python train.py --resume output/second --epochs 2"
    assert session.prepared("python validate.py --model local-dir:output/<other-run>/hub") == \
        "python validate.py --model local-dir:output/first/hub"
    assert session.prepared(MAIN_JOB) == MAIN_JOB
    with pytest.raises(AssertionError, match="placeholder"):
        session.prepared("python train.py --push-to-hub <org>/repo")
    with pytest.raises(AssertionError, match="no earlier"):
        ShellSession(tmp_path, {}).prepared("python train.py --resume output/<run>")
