"""README.md as something that runs: its code blocks, its generated passages, its section names.

    python tests/readme_runner.py                  # list the README's blocks: section, language, how each is run
    python tests/readme_runner.py --write          # rewrite the README's generated passages from their sources
    python tests/readme_runner.py --record-main-job  # run `python train.py` (minutes), keep its printed figures
                                                   # in benchmarks/results/main_job.json, then --write

tests/test_readme.py runs every block through this module:

* ``python`` blocks run as they are, each in a fresh namespace, in an empty working folder (Hub calls go to the
  loopback Hub the test session points HF_ENDPOINT at).
* ``bash`` blocks run line by line (a trailing backslash continues a line) in a working folder that holds
  links to the repository's scripts, a small ImageFolder tree as ``data/`` and whatever the block's earlier
  lines wrote. Only what the README documents as a placeholder is filled in, and epochs are shortened:
  ``<run>`` is the run folder the latest ``train.py`` line made (``output/<run>``), ``<other-run>`` the one
  before it; a new run trains ``SHORT_EPOCHS`` epochs, a ``--resume`` extends to one more. Nothing else in a
  command is changed. ``python train.py`` with no arguments (the main job) cannot be shortened: it runs whole,
  in the slow group, and must print what main_job.json records.
* A block whose nearest preceding line is ``<!-- file: NAME -->`` is written to NAME in the working folder
  (a config file a later command reads), and ``<!-- not run: REASON -->`` is the only way to leave one out.

Generated passages sit between ``<!-- generated:NAME:begin -->`` and ``<!-- generated:NAME:end -->``: their text
comes from a results file or from the code (GENERATORS), so the README cannot quote a number nobody measured.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAIN_JOB_RESULTS = ROOT / "benchmarks" / "results" / "main_job.json"
SHORT_EPOCHS = 1
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.*?)\s*-->$")
FILE = re.compile(r"^<!--\s*file:\s*(\S+)\s*-->$")
FENCE = re.compile(r"^```(\w*)\s*$")
# Links in the working folder of a bash block, so commands read as the README writes them (`python train.py`).
SCRIPTS = ("train.py", "validate.py", "benchmarks", "hub_configs")


@dataclass
class Block:
    language: str
    code: str
    line: int                      # 1-based line of the opening fence
    section: str                   # the nearest heading above it
    not_run: Optional[str] = None  # the reason given by a "not run" marker
    file_name: Optional[str] = None

    @property
    def name(self) -> str:
        return f"README.md:{self.line} ({self.section}, {self.language})"

    def commands(self) -> List[str]:
        """Shell lines, continuations joined, blank lines and whole-line comments left out."""
        joined, pending = [], ""
        for raw in self.code.splitlines():
            line = raw.rstrip()
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line = pending + line
            pending = ""
            if line.strip() and not line.strip().startswith("#"):
                joined.append(line.strip())
        return joined


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def headings(text: str) -> List[str]:
    """Every Markdown heading's text (outside code blocks)."""
    found, in_code = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.append(line.lstrip("#").strip())
    return found


def blocks(text: str) -> List[Block]:
    result: List[Block] = []
    lines = text.splitlines()
    section, i = "", 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        if fence and fence.group(1):
            start, body = i, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            previous = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            not_run, file_name = NOT_RUN.match(previous), FILE.match(previous)
            result.append(Block(fence.group(1), "\n".join(body) + "\n", start + 1, section,
                                not_run.group(1) if not_run else None, file_name.group(1) if file_name else None))
        elif fence:  # an unlabelled fence: skip its body (layout pictures)
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                i += 1
        i += 1
    return result


# --- generated passages --------------------------------------------------------------------------------------

def _main_job_passage() -> str:
    record = json.loads(MAIN_JOB_RESULTS.read_text())
    method, baseline = record["runs"]
    gain = method["top1"] - baseline["top1"]
    minutes = (method["train_seconds"] + baseline["train_seconds"]) / 60
    return (f"Recorded run (seed {method['seed']}, commit {record['commit']}, {record['machine']}): "
            f"`{method['model']}` "
            f"{method['top1']:.2f} % against `{baseline['model']}` {baseline['top1']:.2f} % top-1 "
            f"({gain:+.2f} points), {minutes:.0f} minutes of training. The figures are the ones `python train.py` "
            f"printed, kept in `benchmarks/results/main_job.json` (`python tests/readme_runner.py "
            f"--record-main-job` runs it again and rewrites this line); the slow test group runs the main job and "
            f"checks it still prints them.")


def _requirement_floors() -> Dict[str, str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for requirement in project["dependencies"]:
        name, floor = re.match(r"^\s*([A-Za-z0-9._\-]+)\s*>=\s*([^,;\s]+)", requirement).groups()
        floors[name] = floor
    return floors


def _pins() -> Dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, pin = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name).lower()] = pin.strip()
    return pins


def _tested_range_passage() -> str:
    pins = _pins()
    lines = ["| dependency | floor (CI's second run) | ceiling (CI's first run, `constraints.txt`) |",
             "|---|---|---|"]
    for name, floor in _requirement_floors().items():
        ceiling = pins.get(re.sub(r"[-_.]+", "-", name).lower(), "not pinned")
        lines.append(f"| {name} | {floor} | {ceiling} |")
    return "\n".join(lines)


def _conformance_passage() -> str:
    import collab_zoo
    from collab_zoo.contract import CONFORMANCE_FAMILIES, conformance_exemptions

    models = collab_zoo.list_models()
    exemptions = conformance_exemptions()
    slow = {"torchscript", "fx_torchscript", "export", "compile"}
    lines = ["| family | models it runs on | pass (or the suite fails) | exempt (runs, must fail) | test group |",
             "|---|---|---|---|---|"]
    for family in CONFORMANCE_FAMILIES:
        exempt = sum(1 for m in models if family in exemptions.get(m, {}))
        lines.append(f"| {family} | {len(models)} | {len(models) - exempt} | {exempt} | "
                     f"{'slow' if family in slow else 'default (largest models: slow)'} |")
    lines.append("")
    lines.append("Exemptions, each written next to the model's registration with timm's precedent:")
    lines.append("")
    by_check: Dict[str, List[str]] = {}
    for model in sorted(exemptions):
        for check in exemptions[model]:
            by_check.setdefault(check, []).append(f"`{model}`")
    notes = {"default_cfg:unpooled": "the forward after `reset_classifier(0, '')` still ends in vectors, because "
                                     "fully connected layers read the whole map (timm skips this check for the "
                                     "same kind of head, its EARLY_POOL_MODELS such as VGG); the rest of "
                                     "default_cfg runs",
             "default_cfg:spatial": "no spatial stages, so no `pool_size` or unpooled map; timm's non-spatial "
                                    "default-cfg check runs instead (its NON_STD_FILTERS: MLP-type models)",
             "features_fx": "graph-based feature extraction returns the hidden layers' vectors, not maps (timm keeps "
                            "MLP-type models out of its feature-extraction tests); `features_only=True` works"}
    for check, names in by_check.items():
        lines.append(f"- {check}: {', '.join(names)}: {notes.get(check, 'see its registration')}.")
    return "\n".join(lines)


def _recipes_passage() -> str:
    from collab_zoo.training.args import RECIPES

    def flag(key, value) -> str:
        value = " ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value
        return f"--{key.replace('_', '-')} {value}"

    return "\n".join(f"- `{name}`: `{' '.join(flag(k, v) for k, v in settings.items())}`"
                     for name, settings in RECIPES.items())


def _pretrained_passage() -> str:
    """The shipped tags, from their hub_configs/ files (accuracy measured by validate.py on the shipped file)."""
    methods = {"dks": "DKS (backbone only)", "cldl": "CLDL (Eq. 9)", "dcl": "DCL",
               "complementary": "complementary, 4 rounds"}
    rows = ["| tag | method | input | top-1 / top-5 (%) | trained by |", "|---|---|---|---|---|"]
    for path in sorted((ROOT / "hub_configs").glob("*.json")):
        cfg = json.loads(path.read_text())
        if not cfg.get("packaged_file"):
            continue
        metrics, origin = cfg["reported_metrics"], cfg["origin"]
        size = "x".join(str(v) for v in cfg["input_size"])
        rows.append(f"| `{cfg['model']}` | {methods[cfg['model'].split('_')[0]]} | {size} | "
                    f"{metrics['top1']:.2f} / {metrics['top5']:.2f} | `{origin['command']}` |")
    return "\n".join(rows)


GENERATORS: Dict[str, Callable[[], str]] = {
    "main-job": _main_job_passage,
    "pretrained": _pretrained_passage,
    "recipes": _recipes_passage,
    "tested-range": _tested_range_passage,
    "conformance": _conformance_passage,
}


def _region_pattern(name: str) -> "re.Pattern":
    return re.compile(rf"(<!-- generated:{re.escape(name)}:begin -->\n)(.*?)\n?(<!-- generated:{re.escape(name)}:end -->)",
                      re.S)


def generated_region(text: str, name: str) -> Optional[str]:
    match = _region_pattern(name).search(text)
    return match.group(2) if match else None


def write_generated(text: str, names=None) -> str:
    for name in names or GENERATORS:
        if generated_region(text, name) is None:
            raise SystemExit(f"README.md lacks the markers of the generated passage {name!r}")
        content = GENERATORS[name]()
        text = _region_pattern(name).sub(lambda m: f"{m.group(1)}{content}\n{m.group(3)}", text, count=1)
    return text


# --- bash blocks ----------------------------------------------------------------------------------------------

def make_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 6, side: int = 40) -> Path:
    """A small ImageFolder tree (train/ and val/ of RGB PNGs) standing in for the README's ``data/``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", max(2, per_class // 2))):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (side, side, 3)) + 60 * k  # classes differ in brightness
                Image.fromarray(pixels.astype("uint8")).save(folder / f"{i}.png")
    return root


def _is_train_line(words: List[str]) -> bool:
    return "train.py" in words and (len(words) > words.index("train.py") + 1)


@dataclass
class ShellSession:
    """A user's shell in a scratch folder: the repository's scripts linked in, ``data/`` made, runs remembered."""

    workdir: Path
    env: Dict[str, str]
    runs: List[str] = field(default_factory=list)

    @classmethod
    def start(cls, workdir: Path, env: Dict[str, str]) -> "ShellSession":
        workdir.mkdir(parents=True, exist_ok=True)
        for name in SCRIPTS:
            link = workdir / name
            if not link.exists():
                link.symlink_to(ROOT / name)
        make_image_folder(workdir / "data")
        env = dict(env)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.setdefault("COLLAB_ZOO_NO_PROGRESS", "1")
        return cls(workdir, env)

    def prepared(self, command: str) -> str:
        """The command with the documented placeholders filled in and a shortened run."""
        if "<run>" in command or "<other-run>" in command:
            if len(self.runs) < (2 if "<other-run>" in command else 1):
                raise AssertionError(f"`{command}` names a run no earlier train.py line of its block made")
            command = command.replace("<other-run>", self.runs[-2] if len(self.runs) > 1 else "")
            command = command.replace("<run>", self.runs[-1])
        unknown = re.findall(r"<[A-Za-z][\w-]*>", command)
        if unknown:
            raise AssertionError(f"`{command}` holds {unknown}, which no README placeholder names; mark the block "
                                 "<!-- not run: why --> or use <run> / <other-run> / data/")
        words = shlex.split(command, comments=True)
        if _is_train_line(words):
            epochs = SHORT_EPOCHS + 1 if "--resume" in words else SHORT_EPOCHS
            if "--epochs" in words:
                command = re.sub(r"--epochs\s+\d+", f"--epochs {epochs}", command)
            else:
                command = re.sub(r"(\s+#.*)?$", lambda m: f" --epochs {epochs}{m.group(0)}", command, count=1)
        return command

    def run(self, command: str, timeout: float = 3600) -> subprocess.CompletedProcess:
        ready = self.prepared(command)
        output = self.workdir / "output"
        before = set(os.listdir(output)) if output.is_dir() else set()
        proc = subprocess.run(["bash", "-c", ready], cwd=self.workdir, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if output.is_dir():
            made = sorted(n for n in set(os.listdir(output)) - before if (output / n).is_dir())
            self.runs.extend(made)
        proc.args = ready
        return proc


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the README's generated passages")
    parser.add_argument("--record-main-job", action="store_true",
                        help="run the main job and keep its printed figures, then rewrite the README")
    parser.add_argument("--from-run", nargs=3, metavar=("STDOUT", "COMPARISON_JSON", "COMMIT"),
                        help="with --record-main-job: keep a main job run earlier (its printed output, the "
                             "comparison JSON it wrote, the commit it ran at) instead of running it")
    args = parser.parse_args(argv)
    if args.record_main_job:
        if args.from_run:
            record_main_job(Path(args.from_run[0]).read_text(), Path(args.from_run[1]), args.from_run[2])
        else:
            record_main_job()
        args.write = True
    if args.write:
        README.write_text(write_generated(readme_text()), encoding="utf-8")
        print(f"rewrote the generated passages of {README}")
        return 0
    for block in blocks(readme_text()):
        how = (f"not run: {block.not_run}" if block.not_run else f"written to {block.file_name}" if block.file_name
               else "run")
        print(f"{block.name}: {how}")
    return 0


def _machine() -> str:
    import platform

    import torch

    return f"{os.cpu_count()} CPU cores, torch {torch.__version__}, Python {platform.python_version()}"


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return out.stdout.strip() + ("+uncommitted changes" if dirty else "") if out.returncode == 0 else "unknown"


def record_main_job(stdout: Optional[str] = None, comparison: Optional[Path] = None, commit: Optional[str] = None
                    ) -> Dict:
    """Run ``python train.py`` exactly as the README gives it and keep what it printed and wrote (or keep a run
    made earlier: its printed output and the ``*-comparison.json`` it wrote)."""
    with tempfile.TemporaryDirectory(prefix="collab-zoo-main-job-") as tmp:
        if stdout is None:
            commit = _commit()
            proc = subprocess.run([sys.executable, str(ROOT / "train.py")], cwd=tmp, capture_output=True, text=True,
                                  env=dict(os.environ, COLLAB_ZOO_NO_PROGRESS="1"))
            if proc.returncode != 0:
                raise SystemExit(f"the main job failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            stdout, comparison = proc.stdout, next(Path(tmp, "output").glob("*-comparison.json"))
        runs = json.loads(Path(comparison).read_text())
    record = dict(command="python train.py", commit=commit or "unknown", machine=_machine(),
                  printed=main_job_figures(stdout),
                  runs=[{k: v for k, v in run.items() if not isinstance(v, (dict, list)) and k != "run_dir"}
                        for run in runs])
    MAIN_JOB_RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {MAIN_JOB_RESULTS}: {record['printed']}")
    return record


def main_job_figures(stdout: str) -> Dict[str, str]:
    """The top-1 row of the main job's printed comparison, as printed (``{model: "92.35"}``)."""
    lines = stdout.splitlines()
    header = next(i for i in range(len(lines) - 1)
                  if lines[i].strip() and lines[i + 1].startswith("top-1 accuracy"))
    models, values = lines[header].split(), lines[header + 1].split()[-len(lines[header].split()):]
    return dict(zip(models, values))


if __name__ == "__main__":
    sys.exit(main())
