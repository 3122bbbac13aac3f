"""Mutation testing of the modules users' numbers come from, with mutmut 3 (a dev-only tool: `pip install
mutmut==3.8.1`; it is not a dependency of collab_zoo and not part of the default test command).

    nice -n 10 python benchmarks/mutation.py                      # the training modules, at HEAD
    nice -n 10 python benchmarks/mutation.py registry weights     # chosen modules
    python benchmarks/mutation.py --commit <sha> methods-dks      # a committed state of the tree
    python benchmarks/mutation.py methods-dks --rerun-open        # what the recorded run left open, newer tests
    python benchmarks/mutation.py methods-dks --by-hand '_cifar_cfg' --by-hand-tests tests/test_dks.py -k cfg

Each module is mutated in its own copy of a committed tree (``git archive <commit>`` under /tmp), so nothing
tracked in the checkout changes and work in progress elsewhere in the tree is not measured; mutmut's
configuration is written into the copy's setup.cfg. Each module runs against a FAST selection of tests (the files
that state its known answers), listed in MODULES; the rest of the suite may kill more.

Two behaviour-preserving rewrites are applied to the copy before mutating, because mutmut 3 skips every function
that carries a decorator other than @staticmethod/@classmethod: a module-level ``@torch.no_grad()`` decorator is
moved below its function as ``f = torch.no_grad()(f)`` (the same function object results), so ``evaluate()`` is
mutated too. ``@property`` and other decorated methods stay skipped (listed under ``not_mutated``).

Results go to benchmarks/results/mutation.json: per module killed / survived / no-tests / timeout / total, the
score (killed / (total - no_tests)), and each survivor with its diff line, classified:
  * ``message-text``: the mutant only changes the wording inside a string literal of a message (help text, log or
    error wording) - non-equivalent, but checking every word of every message is not worth a test;
  * ``other``: everything else, each listed with its reason in benchmarks/results/MUTATION.md.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "mutation.json"
KNOWN = "tests/test_known_answers.py"

# name -> (module path, fast test selection)
MODULES: Dict[str, Dict[str, Any]] = {
    "evaluate": dict(path="collab_zoo/training/evaluate.py", tests=[KNOWN]),
    # The parser's help text is hundreds of string literals: lines that are only help text are not mutated
    # (a flag's name, type and default on the add_argument line still are).
    "args": dict(path="collab_zoo/training/args.py",
                 tests=[KNOWN, "tests/test_train.py::test_every_flag_has_help_text_and_timm_helpers_are_used"],
                 skip_lines=[r"^\s*help=", r'^\s*f?"[^"]*"\)*,?\s*$'],
                 # The parser builders are flag declarations (~2,000 mutants: names, help, defaults); mutmut 3
                 # copies a function per mutant, which makes a 28 MB module. Their defaults and types are pinned by
                 # the known-answer tests; mutation covers the checking and merging logic.
                 skip_functions=["build_parser", "build_validate_parser", "_add_data_arguments",
                                 "_add_input_arguments"]),
    "checkpoint": dict(path="collab_zoo/training/checkpoint.py", tests=[KNOWN]),
    "data": dict(path="collab_zoo/data/builtin.py", tests=["tests/test_data.py"]),
    # Tests that run collab_zoo in a child process are left out: a mutant is switched on only inside mutmut's
    # own process, so they cannot see it (and the wheel build takes a minute per mutant).
    "registry": dict(path="collab_zoo/registry.py",
                     tests=["tests/test_registry.py",
                            "--deselect=tests/test_registry.py::test_hub_configs_ship_in_a_non_editable_wheel"]),
    # Downloads, hash checks, eviction and the Hub's error messages are stated in test_hub.py as well.
    "weights": dict(path="collab_zoo/weights.py",
                    tests=["tests/test_weights.py", "tests/test_hub.py",
                           "--deselect=tests/test_weights.py::"
                           "test_a_silent_hub_is_reported_within_the_timeout_or_the_cache_is_used",
                           "--deselect=tests/test_hub.py::test_offline_reload_from_cache_and_offline_miss",
                           "--deselect=tests/test_hub.py::test_hub_unreachable_error_mentions_the_ways_out",
                           "--deselect=tests/test_hub.py::test_plain_timm_loads_a_zoo_repo_once_collab_zoo_is_imported"]),
    "methods-dks": dict(path="collab_zoo/methods/dks.py", tests=["tests/test_dks.py"]),
    # TorchScript cannot compile mutmut's trampolines: the scripted-walk test runs in --by-hand checks only.
    "methods-cldl": dict(path="collab_zoo/methods/cldl.py",
                         tests=["tests/test_cldl.py",
                                "--deselect=tests/test_cldl.py::test_every_scripted_walk_gives_the_eager_scores"]),
    "methods-dcl": dict(path="collab_zoo/methods/dcl.py", tests=["tests/test_dcl.py"]),
    # Composed members (their own losses, the batched forward) are stated in test_composition.py, timm's
    # interface in the conformance and contract checks of the registered MLP ensemble (its strict FX-features
    # xfail left out: an xfail cannot kill a mutant).
    "methods-complementary": dict(
        path="collab_zoo/methods/complementary.py",
        tests=["tests/test_complementary.py", "tests/test_composition.py",
               "--deselect=tests/test_composition.py::test_every_method_member_pair_trains_or_refuses_at_construction"]
        + [f"tests/test_conformance.py::test_{name}[complementary_mlp_x4]"
           for name in ("forward", "backward", "default_cfg", "features_only", "forward_intermediates", "fx_forward",
                        "fx_backward", "training_hooks")]
        + ["tests/test_contract.py::test_a_plain_loss_on_the_train_output_says_what_to_do[complementary_mlp_x4]",
           "tests/test_contract.py::test_the_train_output_is_still_a_tuple_of_heads[complementary_mlp_x4]",
           "tests/test_task.py::test_task_loss_is_collab_loss_and_the_loop_trains_and_evaluates[complementary]"]),
}
DEFAULT = ["evaluate", "args", "checkpoint"]

# Dump statuses and diffs from inside the copy (mutmut reads its config from the working directory).
_DUMP = r"""
import json, sys
from pathlib import Path
from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
path = Path(sys.argv[1])
m = SourceFileMutationData(path=path)
m.load()
out = {}
for key, code in m.exit_code_by_key.items():
    status = status_by_exit_code[code]
    diff = get_diff_for_mutant(key, path=path) if status != "killed" else ""
    out[key] = dict(status=status, diff=diff)
print(json.dumps(out))
"""


def _commit(ref: str) -> str:
    return subprocess.check_output(["git", "-C", str(ROOT), "rev-parse", ref], text=True).strip()


def _copy_tree(commit: str, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"git archive {commit} failed")


def _undecorate_no_grad(source: str) -> str:
    """``@torch.no_grad()`` on a module-level function, moved below it as an assignment (same function)."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    edits = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and len(node.decorator_list) == 1 \
                and ast.unparse(node.decorator_list[0]) == "torch.no_grad()":
            edits.append((node.decorator_list[0].lineno, node.end_lineno, node.name))
    for deco_line, end_line, name in reversed(edits):
        lines.insert(end_line, f"\n\n{name} = torch.no_grad()({name})\n")
        del lines[deco_line - 1]
    return "".join(lines)


def _fence_functions(source: str, names: List[str]) -> str:
    """Comment lines around the named module-level functions telling mutmut to leave them alone (comments only:
    the code is unchanged)."""
    if not names:
        return source
    lines = source.splitlines(keepends=True)
    spans = [(n.lineno - len(n.decorator_list), n.end_lineno) for n in ast.parse(source).body
             if isinstance(n, ast.FunctionDef) and n.name in names]
    for start, end in sorted(spans, reverse=True):
        lines.insert(end, "# pragma: no mutate end\n")
        lines.insert(start - 1, "# pragma: no mutate start\n")
    return "".join(lines)


def _decorated(source: str) -> List[str]:
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.decorator_list:
            kinds = {ast.unparse(d) for d in node.decorator_list}
            if not kinds <= {"staticmethod", "classmethod"}:
                names.append(f"{node.name} (@{', @'.join(sorted(kinds))})")
    return names


_STRING_CHANGE = re.compile(r"""(['"])XX|XX(['"])""")


def _classify(diff: str) -> str:
    removed = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    if len(removed) == 1 and len(added) == 1:
        before, after = removed[0], added[0]
        if _STRING_CHANGE.search(after) and _STRING_CHANGE.sub(r"\1\2", after) == before:
            return "message-text"
        # A string's case changed (mutmut's lower/upper mutation of a literal) and nothing else.
        if before.lower() == after.lower() and before != after and ('"' in before or "'" in before):
            return "message-text"
    return "other"


def _cfg_list(key: str, values: List[str]) -> str:
    """A setup.cfg list (one value per indented line); nothing when empty."""
    return f"{key}=\n" + "".join(f"    {v}\n" for v in values) if values else ""


def _refresh_tests(tree: Path, tests_commit: str) -> None:
    """The copy's tests (and mutmut's copy of them) from ``tests_commit``; the mutated module stays as it was."""
    for folder in (tree / "tests", tree / "mutants" / "tests"):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", tests_commit, "tests"], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "--strip-components=1", "-C", str(folder)], stdin=archive.stdout, check=True)
        archive.wait()
    # Which tests reach which function is measured again, so the new tests are run against the mutants.
    (tree / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)


def run_module(name: str, commit: str, work: Path, max_children: int, limit_s: int,
               carry_on: bool = False, recheck_survivors: bool = False) -> Dict[str, Any]:
    spec = MODULES[name]
    tree = work / name
    if (carry_on or recheck_survivors) and (tree / "mutants").is_dir():
        # A run stopped by its time limit: mutmut checks only the mutants it has not checked yet. With
        # recheck_survivors, the tests come from ``commit`` and the survivors so far are run again first.
        tests_commit, commit = commit, (tree / ".mutation-commit").read_text().strip()
        original = subprocess.check_output(["git", "-C", str(ROOT), "show", f"{commit}:{spec['path']}"], text=True)
        result = {}
        if recheck_survivors:
            _refresh_tests(tree, tests_commit)
            _write_config(spec, tree)   # the selection may have changed with the tests (a new deselect)
            (tree / ".mutation-tests-commit").write_text(tests_commit)
            result = _run_mutmut(name, spec, tree, commit, original, max_children, limit_s, only_survivors=True)
        if carry_on:
            result = _run_mutmut(name, spec, tree, commit, original, max_children, limit_s)
        return result
    original = _prepare_copy(spec, commit, tree)
    return _run_mutmut(name, spec, tree, commit, original, max_children, limit_s)


def rerun_open(name: str, recorded: Dict[str, Any], tests_commit: str, work: Path, max_children: int,
               limit_s: int) -> Dict[str, Any]:
    """The mutants a recorded run left open (not checked when its time ran out, or survived), run again on a fresh
    copy of the module at the recorded commit with the tests from ``tests_commit``; everything the recorded run
    killed stays killed. For a run whose kept copy is gone (``--carry-on`` needs it)."""
    spec = MODULES[name]
    tree = work / name
    commit = recorded["commit"]
    original = _prepare_copy(spec, commit, tree)
    _refresh_tests(tree, tests_commit)
    shutil.rmtree(tree / "mutants")  # mutmut makes its own copy, of the refreshed tests too
    (tree / ".mutation-tests-commit").write_text(tests_commit)
    previous = {s["mutant"]: s for s in recorded["survivors"]}
    prefix = _mutant_key_prefix(spec)
    open_names = [prefix + m for m, s in previous.items() if s["status"] in ("not checked", "survived", "no tests")]
    fresh = _run_mutmut(name, spec, tree, commit, original, max_children, limit_s, names=open_names)
    if fresh["total"] != recorded["total"]:
        raise SystemExit(f"{name}: the fresh copy has {fresh['total']} mutants, the recorded run {recorded['total']}; "
                         "not the same module or mutmut version: run it whole instead.")
    # The fresh run reports every mutant it did not run as not checked: those the recorded run killed are killed.
    again = {s["mutant"]: s for s in fresh["survivors"]}
    # A mutant still open: its new status, or the recorded one where the fresh run did not get to it.
    survivors = [previous[m] if again[m]["status"] == "not checked" else again[m]
                 for m in sorted(set(again) & set(previous), key=_natural)]
    return dict(fresh, **_tally(recorded["total"], survivors),
                survivors=survivors, seconds=round(recorded.get("seconds", 0) + fresh["seconds"], 1),
                rerun_open=dict(tests_commit=tests_commit, rerun=len(open_names), seconds=fresh["seconds"]))


def _prepare_copy(spec: Dict[str, Any], commit: str, tree: Path) -> str:
    """A copy of the tree at ``commit`` with the module made ready for mutmut and its configuration written; returns
    the module's source as committed."""
    _copy_tree(commit, tree)
    (tree / ".mutation-commit").write_text(commit)
    target = tree / spec["path"]
    original = target.read_text()
    target.write_text(_fence_functions(_undecorate_no_grad(original), spec.get("skip_functions", [])))
    _write_config(spec, tree)
    return original


def _write_config(spec: Dict[str, Any], tree: Path) -> None:
    """mutmut's configuration in the copy's setup.cfg: the module, its test selection, the lines it skips."""
    selection = "\n    ".join(spec["tests"])
    (tree / "setup.cfg").write_text(
        "[mutmut]\n"
        "source_paths=collab_zoo\n"
        f"only_mutate={spec['path']}\n"
        f"pytest_add_cli_args_test_selection=\n    {selection}\n"
        "pytest_add_cli_args=\n    -p\n    no:cacheprovider\n"
        "also_copy=\n    tests\n    train.py\n    validate.py\n    hub_configs\n"
        + _cfg_list("do_not_mutate_patterns", spec.get("skip_lines", [])))


def _run_mutmut(name: str, spec: Dict[str, Any], tree: Path, commit: str, original: str, max_children: int,
                limit_s: int, only_survivors: bool = False, names: Optional[List[str]] = None) -> Dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    names = list(names or [])
    if only_survivors:
        meta = json.loads((tree / "mutants" / (spec["path"] + ".meta")).read_text())
        # survived (0), and those no selected test reached (33): new tests may reach them
        names = [key for key, code in meta["exit_code_by_key"].items() if code in (0, 33)]
    started = time.time()
    log = tree / "mutmut-run.log"
    with open(log, "a") as out:
        try:
            proc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children),
                                   *names],
                                  cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=limit_s)
            interrupted = proc.returncode != 0
        except subprocess.TimeoutExpired:
            interrupted = True
    elapsed = time.time() - started
    dump = subprocess.run([sys.executable, "-c", _DUMP, spec["path"]], cwd=tree, env=env, capture_output=True,
                          text=True)
    if dump.returncode != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"{name}: mutmut produced no results.\n{dump.stderr[-2000:]}\n--- run log ---\n{tail}")
    mutants = json.loads(dump.stdout)
    survivors = []
    for key, m in sorted(mutants.items(), key=lambda kv: _natural(kv[0])):
        if m["status"] != "killed":
            changed = [line for line in m["diff"].splitlines() if line.startswith("+") and not line.startswith("+++")]
            survivors.append(dict(mutant=key.split(".")[-1], status=m["status"], kind=_classify(m["diff"]),
                                  change=" / ".join(s.strip() for s in changed)[:300]))
    return dict(
        module=spec["path"], tests=spec["tests"],
        tests_commit=(tree / ".mutation-tests-commit").read_text().strip()
        if (tree / ".mutation-tests-commit").exists() else commit, skipped_lines=spec.get("skip_lines", []),
        skipped_functions=spec.get("skip_functions", []), commit=commit, seconds=round(elapsed, 1),
        interrupted=interrupted, total=len(mutants), **_tally(len(mutants), survivors),
        not_mutated=_decorated(_undecorate_no_grad(original)),
        survivors=survivors,
    )


def _tally(total: int, survivors: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Counts and scores of a module whose ``survivors`` list every mutant not killed."""
    counts: Dict[str, int] = {"killed": total - len(survivors)}
    for s in survivors:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    killed, no_tests = counts["killed"], counts.get("no tests", 0)
    text = sum(1 for s in survivors if s["kind"] == "message-text" and s["status"] == "survived")
    tested = max(total - no_tests, 1)
    return dict(killed=killed, survived=counts.get("survived", 0), no_tests=no_tests,
                timeout=counts.get("timeout", 0), other=counts, score=round(killed / tested, 4),
                survived_message_text=text, score_without_message_text=round(killed / max(tested - text, 1), 4))


def _mutant_key_prefix(spec: Dict[str, Any]) -> str:
    """What mutmut puts before a recorded mutant name: the module's dotted path."""
    return spec["path"][:-len(".py")].replace("/", ".") + "."


# The lines each named mutant removes, read from a kept copy's mutants/ (run inside that copy).
_REMOVED_LINES = r"""
import json, sys
from pathlib import Path
from mutmut.mutation.diff_apply import get_diff_for_mutant
path, prefix = Path(sys.argv[1]), sys.argv[2]
out = {}
for name in sys.argv[3:]:
    diff = get_diff_for_mutant(prefix + name, path=path)
    out[name] = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
print(json.dumps(out))
"""


def _function_spans(source: str) -> Dict[str, tuple]:
    """mutmut's name for each function and method (``x_f``, ``x\u01c1Class\u01c1method``) -> its line span."""
    spans = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            spans[f"x_{node.name}"] = (node.lineno, node.end_lineno)
        elif isinstance(node, ast.ClassDef):
            spans.update({f"x\u01c1{node.name}\u01c1{f.name}": (f.lineno, f.end_lineno) for f in node.body
                          if isinstance(f, ast.FunctionDef)})
    return spans


def check_by_hand(name: str, recorded: Dict[str, Any], pattern: str, tests_commit: str, work: Path,
                  pytest_args: List[str]) -> Dict[str, Any]:
    """Recorded survivors whose name matches ``pattern``, each written into the module's source by hand and tested
    in a fresh process, at ``tests_commit`` (source and tests). For functions that run while the module is imported
    (a table of cfgs): mutmut switches a mutant on only after the import, so its "survived" there says nothing; and
    for survivors of a recorded run whose tests have since grown. Only one-line changes are placed: the recorded
    change is the new line, the line it replaced is the most similar line of its function at the recorded commit,
    and that line must appear exactly once in the same function at ``tests_commit`` (else "not placed"). With a kept
    copy of the recorded commit in ``work``, the replaced line is mutmut's own diff's instead of the most similar,
    and a statement mutmut rewrote over several lines is not placed (check it in the kept copy's trampoline)."""
    import difflib

    spec = MODULES[name]
    tree = work / f"{name}-by-hand"
    _copy_tree(tests_commit, tree)
    then = subprocess.check_output(["git", "-C", str(ROOT), "show", f"{recorded['commit']}:{spec['path']}"],
                                   text=True)
    then_lines, then_spans = then.splitlines(), _function_spans(then)
    kept = work / name
    removed: Dict[str, List[str]] = {}
    if (kept / "mutants").is_dir() and (kept / ".mutation-commit").read_text().strip() == recorded["commit"]:
        # A kept copy of the same commit: mutmut's own diff says which line each mutant replaced.
        names = [s["mutant"] for s in recorded["survivors"] if re.search(pattern, s["mutant"])]
        removed = json.loads(subprocess.run([sys.executable, "-c", _REMOVED_LINES, spec["path"],
                                             _mutant_key_prefix(spec), *names],
                                            cwd=kept, capture_output=True, text=True, check=True).stdout)
    target = tree / spec["path"]
    original = target.read_text()
    lines, spans = original.splitlines(keepends=True), _function_spans(original)
    selection = pytest_args or [t for t in spec["tests"] if not t.startswith("--")]
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def run_tests() -> int:
        return subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *selection],
                              cwd=tree, env=env, capture_output=True, timeout=1800).returncode

    if run_tests() != 0:
        raise SystemExit(f"{name}: {' '.join(selection)} fails on the unmutated copy; a kill would mean nothing.")
    verdicts: Dict[str, str] = {}
    for survivor in recorded["survivors"]:
        change = survivor["change"]
        # "no tests": code the selection reaches only where mutmut cannot switch a mutant on (a scripted walk).
        if (survivor["status"] not in ("survived", "no tests") or not re.search(pattern, survivor["mutant"])
                or " / " in change):
            continue
        function = survivor["mutant"].rsplit("__mutmut_", 1)[0]
        new = change[1:].strip() if change.startswith("+") else change.strip()
        if survivor["mutant"] in removed and len(removed[survivor["mutant"]]) != 1:
            # mutmut rewrote a statement spanning several lines: one line in its place would be a syntax error (a
            # false kill) or land on another line (a false survivor). Such a mutant is checked through mutmut's
            # own trampoline in the kept copy instead.
            verdicts[survivor["mutant"]] = "not placed"
            print(f"  {survivor['mutant']}: not placed (a change over several lines)", flush=True)
            continue
        if len(removed.get(survivor["mutant"], [])) == 1:
            replaced = removed[survivor["mutant"]][0].strip()
        else:
            first, last = then_spans[function]
            replaced = max((then_lines[i].strip() for i in range(first - 1, last)),
                           key=lambda line: difflib.SequenceMatcher(None, line, new).ratio())
        first, last = spans.get(function, (1, 0))
        found = [i for i in range(first - 1, last) if lines[i].strip() == replaced]
        if len(found) != 1:
            verdicts[survivor["mutant"]] = "not placed"
        else:
            at = found[0]
            indent = lines[at][:len(lines[at]) - len(lines[at].lstrip())]
            target.write_text("".join(lines[:at] + [f"{indent}{new}\n"] + lines[at + 1:]))
            try:
                code = run_tests()
            finally:
                target.write_text(original)
            # pytest: 0 all passed; 1 a test failed; 2-4 the module could not even be imported or collected.
            verdicts[survivor["mutant"]] = "survived" if code == 0 else "killed"
        print(f"  {survivor['mutant']}: {verdicts[survivor['mutant']]} by hand", flush=True)
    return dict(pattern=pattern, tests=selection, commit=tests_commit, verdicts=verdicts)


def _natural(key: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("modules", nargs="*", default=DEFAULT, help=f"from: {', '.join(MODULES)} (default: "
                                                              f"{' '.join(DEFAULT)})")
    p.add_argument("--commit", default="HEAD", help="the committed state to mutate (default: HEAD)")
    p.add_argument("--max-children", type=int, default=2, help="mutants run at once")
    p.add_argument("--limit-s", type=int, default=840, help="wall-clock limit per module (a run stopped there is "
                                                            "recorded as interrupted)")
    p.add_argument("--work", default=None, help="folder for the copies (default: a new one under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the copies (mutants/ and the run log); without it a run "
                                                       "removes only the copies it made")
    p.add_argument("--carry-on", action="store_true",
                   help="with --work of a kept run stopped by --limit-s: check only the mutants not checked yet")
    p.add_argument("--recheck-survivors", action="store_true",
                   help="with --work of a kept run: take the tests from --commit and run the survivors again")
    p.add_argument("--rerun-open", action="store_true",
                   help="without a kept copy: run again what the recorded run (in --out) left open - not checked or "
                        "survived - at its commit, with the tests from --commit")
    p.add_argument("--by-hand", default=None, metavar="REGEX",
                   help="apply the recorded survivors whose name matches REGEX to the source by hand and test them "
                        "(for code that runs at import, where mutmut cannot switch a mutant on)")
    p.add_argument("--by-hand-tests", nargs=argparse.REMAINDER, default=[],
                   help="with --by-hand, last: the pytest arguments to run (default: the module's selection)")
    p.add_argument("--out", default=str(RESULTS), help="results JSON, merged per module")
    args = p.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        p.error(f"unknown module(s) {unknown}; choose from {', '.join(MODULES)}")
    try:
        import mutmut  # noqa: F401
    except ImportError:
        p.error("mutmut is not installed: pip install mutmut==3.8.1 (a dev-only tool)")
    commit = _commit(args.commit)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="collab-zoo-mutation-"))
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results.setdefault("modules", {})
    try:
        for name in args.modules:
            print(f"{name}: {'checking by hand' if args.by_hand else 'mutating'} {MODULES[name]['path']} at "
                  f"{commit[:12]} ...", flush=True)
            if args.by_hand:
                if name not in results["modules"]:
                    p.error(f"--by-hand: {out} records no run of {name}")
                recorded = results["modules"][name]
                # One record per check (pattern, tests, verdicts); later checks add to the earlier ones.
                recorded.setdefault("by_hand", []).append(
                    check_by_hand(name, recorded, args.by_hand, commit, work, args.by_hand_tests))
                out.write_text(json.dumps(results, indent=2) + "\n")
                continue
            if args.rerun_open:
                if name not in results["modules"]:
                    p.error(f"--rerun-open: {out} records no run of {name}")
                result = rerun_open(name, results["modules"][name], commit, work, args.max_children, args.limit_s)
            else:
                result = run_module(name, commit, work, args.max_children, args.limit_s, args.carry_on,
                                    args.recheck_survivors)
            previous = results["modules"].get(name, {})
            if previous.get("by_hand") and previous.get("commit") == result.get("commit"):
                # The same mutants: the checks made by hand still hold, and only they record those verdicts.
                result["by_hand"] = previous["by_hand"]
            results["modules"][name] = result
            import mutmut

            results["tool"] = f"mutmut {getattr(mutmut, '__version__', '3.8.1')}"
            out.write_text(json.dumps(results, indent=2) + "\n")
            print(f"{name}: {result['killed']}/{result['total']} killed, {result['survived']} survived "
                  f"({result['survived_message_text']} message text), {result['no_tests']} not reached by the "
                  f"selected tests; score {result['score']:.1%} ({result['score_without_message_text']:.1%} without "
                  f"message text) in {result['seconds']:.0f} s", flush=True)
    finally:
        if not args.keep:
            # Only the copies this run made: a --work folder may hold another run's kept copy (the one --by-hand
            # reads mutmut's diffs from, or a run to --carry-on).
            for name in args.modules:
                shutil.rmtree(work / (f"{name}-by-hand" if args.by_hand else name), ignore_errors=True)
            if not args.work:
                shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
