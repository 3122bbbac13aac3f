"""Publishing a training run: ``python release.py RUN --repo org/name``.

A run folder written by train.py holds ``hub/`` (the best checkpoint's weights, config.json and a card), the
run's ``results.json``, ``summary.csv``, ``args.yaml`` and its figures. A release uploads all of that to a Hub
repo as one commit, with the card rewritten for that repo (licence, library, tags, datasets, base_model,
model-index, a usage snippet naming the repo), prints the repo URL and the commit id and returns the id.
``--write-hub-config TAG`` then pins the commit and the weights' sha256 in ``hub_configs/<arch>.<TAG>.json``,
so ``create_model("<arch>.<TAG>", pretrained=True)`` downloads exactly this upload.

``--package TAG`` is the maintainers' way to ship a small model inside the package instead: the weights are
copied to ``collab_zoo/pretrained/`` and the tag's hub config records them with their sha256, the command that
trained them and the accuracy validate.py measures on the shipped file.

Nothing is published that does not check out: the weights must match the sha256 their config.json records and
be finite, and config.json must be one the zoo's loaders accept.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import CollabZooError

__all__ = ["RunRelease", "read_run", "release_run", "package_run", "hub_config_for_run", "write_hub_config",
           "release_main", "RUN_FILES"]

_logger = logging.getLogger("collab_zoo.release")

# What a release carries beside the Hub folder, when the run has it.
RUN_FILES = ("results.json", "summary.csv", "args.yaml")
BUILTIN_DATASETS = ("digits", "multidigit-II", "multidigit-III")
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the repository, when running from a checkout


class ReleaseError(CollabZooError, ValueError):
    """A run folder cannot be released as it is (the message says what is missing or wrong)."""


@dataclass
class RunRelease:
    """A run folder, checked: its Hub folder's config and weights, and its results."""

    folder: Path
    hub: Path
    config: Dict[str, Any]     # hub/config.json as written (what is uploaded)
    results: Dict[str, Any]
    sha256: str

    @property
    def architecture(self) -> str:
        return self.config["architecture"]

    @property
    def metrics(self) -> Dict[str, float]:
        """top-1 / top-5 of the weights in hub/: the best epoch's when the run kept one, else the final ones."""
        best = self.results.get("best") or {}
        source = {k[len("eval_"):]: v for k, v in best.items() if k.startswith("eval_")} if best else self.results
        return {k: float(source[k]) for k in ("top1", "top5") if isinstance(source.get(k), (int, float))}

    @property
    def figures(self) -> List[Path]:
        named = [self.folder / f for f in self.results.get("figures", [])]
        found = named or sorted(self.folder.glob("*.png"))
        return [f for f in found if f.is_file() and f.resolve().is_relative_to(self.folder.resolve())]

    def describe(self) -> str:
        r = self.results
        best = r.get("best")
        which = (f"the best epoch ({best['epoch']} of {r.get('epochs')}, by {best.get('metric', 'top1')})"
                 if best else "the final model")
        data = r.get("dataset") or "an image folder"
        return (f"Trained with collab_zoo's train.py on {data} ({r.get('epochs')} epochs per round, seed "
                f"{r.get('seed')}); these are the weights of {which}. The run's results.json, summary.csv, "
                "args.yaml and training curves are in this repo.")


def read_run(run: Path) -> RunRelease:
    """Check a run folder before anything is published from it."""
    from ..integrity import check_finite
    from ..weights import DEFAULT_WEIGHTS_NAME, load_safetensors_file, read_model_config, sha256_of

    run = Path(run)
    if not run.is_dir():
        raise ReleaseError(f"{run} is not a folder. Give the run folder train.py printed (output/<run>).")
    hub = run / "hub"
    weights, config_path, results_path = hub / DEFAULT_WEIGHTS_NAME, hub / "config.json", run / "results.json"
    for path, what in ((weights, "the best checkpoint's weights"), (config_path, "its config.json"),
                       (results_path, "the run's results")):
        if not path.is_file():
            raise ReleaseError(f"{run} has no {path.relative_to(run)} ({what}): it is not a finished train.py run "
                               "folder. Let the run finish (or --resume it), then release it.")
    raw = config_path.read_bytes()
    read_model_config(raw, str(config_path))  # the loaders' own checks: what they would refuse is not published
    config = json.loads(raw)
    recorded = (config.get("collab_zoo") or {}).get("sha256")
    actual = sha256_of(weights)
    if recorded != actual:
        raise ReleaseError(f"{weights} has sha256 {actual}, but {config_path} records {recorded}: the folder was "
                           "changed after train.py wrote it. Re-run validate.py on it or train again.")
    check_finite(load_safetensors_file(weights), f"Refusing to release {weights}")
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReleaseError(f"{results_path} is damaged ({e}); it cannot describe the release.") from None
    return RunRelease(folder=run, hub=hub, config=config, results=results, sha256=actual)


def _card(run: RunRelease, repo_id: Optional[str], license_: Optional[str], train_command: Optional[str]) -> str:
    from ..hub import model_card

    results = run.results
    datasets = [results["dataset"]] if isinstance(results.get("dataset"), str) else []
    base = results.get("base_model") or (run.config.get("collab_zoo") or {}).get("base_model")
    text = model_card(run.config, run.metrics, datasets, run.describe(), base_model=base, repo_id=repo_id,
                      license_=license_)
    lines = ["## Training run", ""]
    if train_command:
        lines += ["```bash", train_command, "```", ""]
    lines += [f"`args.yaml` holds every setting (`python train.py -c args.yaml` repeats the run); "
              f"`results.json` the final and best evaluation (top-1, top-5, each head, per class); `summary.csv` "
              "each epoch's losses and accuracies; the figures the curves.", ""]
    return text.rstrip("\n") + "\n\n" + "\n".join(lines)


def _stage(run: RunRelease, folder: Path, repo_id: Optional[str], license_: Optional[str],
           train_command: Optional[str]) -> List[str]:
    """Copy what a release uploads into ``folder``; returns the file names."""
    from ..hub import atomic_write_text

    names = []
    for name in ("model.safetensors", "config.json"):
        shutil.copyfile(run.hub / name, folder / name)
        names.append(name)
    atomic_write_text(folder / "README.md", _card(run, repo_id, license_, train_command))
    names.append("README.md")
    for name in RUN_FILES:
        if (run.folder / name).is_file():
            shutil.copyfile(run.folder / name, folder / name)
            names.append(name)
    for figure in run.figures:
        shutil.copyfile(figure, folder / figure.name)
        names.append(figure.name)
    return names


def release_run(run: Path, repo_id: str, *, revision: Optional[str] = None, private: Optional[bool] = None,
                token: Optional[str] = None, license: Optional[str] = None, commit_message: Optional[str] = None,
                train_command: Optional[str] = None, quiet: bool = False):
    """Upload a run folder's best weights, card, results and curves as one commit; returns the commit id
    (a ``collab_zoo.hub.PushedCommit``: a str with ``commit_url`` and ``repo_url``)."""
    from huggingface_hub import HfApi

    from ..hub import upload_as_one_commit
    from ..weights import check_hub_id

    check_hub_id(repo_id)
    checked = read_run(run)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        files = _stage(checked, Path(tmp), repo_id, license, train_command)
        commit = upload_as_one_commit(
            api, repo_id, tmp, private=private, revision=revision,
            commit_message=commit_message or f"Release {checked.folder.name} from collab_zoo")
    message = (f"Released {checked.folder} to {commit.repo_url}\n  commit {commit}  ({commit.commit_url})\n"
               f"  files: {', '.join(files)}\n"
               f"  load exactly this upload: collab_zoo.create_model(\"hf-hub:{repo_id}@{commit}\", pretrained=True)")
    _logger.info(message)
    if not quiet:
        print(message, flush=True)
    return commit


# --- hub configs ---------------------------------------------------------------------------------------------

def _validate_flags(run: RunRelease, args: Dict[str, Any]) -> List[str]:
    """validate.py's data flags that rebuild the run's evaluation set (the built-in sets are generated from
    the seed and these sizes). The input channels are named: validate.py reads them off a first layer, which
    for an MLP is its in_features."""
    results = run.results
    dataset = results.get("dataset")
    if dataset not in BUILTIN_DATASETS:
        return []
    flags = ["--dataset", dataset, "--seed", str(results.get("seed", args.get("seed", 42))),
             "--in-chans", str(run.config["pretrained_cfg"]["input_size"][0])]
    if dataset.startswith("multidigit"):
        flags += ["--md-level", str(args.get("md_level", 1)), "--md-test-size", str(args.get("md_test_size", 2000))]
    return flags


def _run_args(run: Path) -> Dict[str, Any]:
    path = run / "args.yaml"
    if not path.is_file():
        return {}
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def hub_config_for_run(run: RunRelease, tag: str, *, hf_hub_id: str, revision: Optional[str] = None,
                       packaged_file: Optional[str] = None, license: Optional[str] = None,
                       train_command: Optional[str] = None, measured: Optional[Dict[str, Any]] = None
                       ) -> Dict[str, Any]:
    """The hub_configs/ entry of ``<arch>.<tag>`` for a checked run: where its weights are (a pinned Hub
    commit, or a file the package ships), their sha256, preprocessing, labels, licence, paper, and how they
    were made and measured."""
    from ..hub import PROJECT_LICENSE, paper_of

    cfg = run.config["pretrained_cfg"]
    arch = run.architecture
    paper_id, paper_title = paper_of(arch)
    args = _run_args(run.folder)
    results = run.results
    seed = results.get("seed", args.get("seed"))
    labels = cfg.get("label_names")
    dataset = results.get("dataset") or "imagefolder"
    validate = measured.get("command") if measured else None
    metrics = {"source": (f"validate.py on these exact weights, the run's {results.get('eval_images')} evaluation "
                          "images (command below)" if validate else
                          f"train.py's evaluation of these weights ({results.get('eval_images')} images)"),
               **(measured or {}).get("metrics", run.metrics)}
    if validate:
        metrics["validate"] = validate
    config = {
        "model": f"{arch}.{tag}",
        "hf_hub_id": hf_hub_id,
        "revision": revision,
        "filename": "model.safetensors",
        "sha256": run.sha256,
        "num_classes": run.config["num_classes"],
        "dataset": dataset,
        "label_names_source": (f"the built-in '{dataset}' set's class names (collab_zoo.data)"
                               if dataset in BUILTIN_DATASETS else f"the class folders of {dataset}"),
        "input_size": list(cfg["input_size"]),
        "interpolation": cfg.get("interpolation", "bilinear"),
        "crop_pct": cfg.get("crop_pct", 1.0),
        "crop_mode": cfg.get("crop_mode", "center"),
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "license": license or PROJECT_LICENSE,
        "paper": {k: v for k, v in (("title", paper_title), ("id", paper_id),
                                    ("url", f"https://arxiv.org/abs/{paper_id.split(':', 1)[1]}" if paper_id else None))
                  if v},
        "reported_metrics": metrics,
        "origin": {
            "description": run.describe().split(" The run's")[0],
            "command": train_command or f"python train.py -c args.yaml  (the run's args.yaml, seed {seed})",
            "seed": str(seed),
            "trained_with": f"collab_zoo {(run.config.get('collab_zoo') or {}).get('version') or 'source checkout'}",
        },
        "notes": [],
    }
    if labels and len(labels) == config["num_classes"]:
        config["label_names"] = list(labels)
    if not (run.config.get("collab_zoo") or {}).get("training_heads_included", True):
        config["notes"].append("Only what inference needs is stored: the training-only auxiliary heads are not.")
    if packaged_file:
        config["packaged_file"] = packaged_file
        config["notes"].append("Shipped inside the package (collab_zoo/pretrained/): loads offline, checked "
                               "against sha256.")
    return config


def write_hub_config(config: Dict[str, Any], folder: Path) -> Path:
    """Write ``<folder>/<model>.json`` (checked by the registry's own parser first)."""
    from ..hub import atomic_write_text
    from ..registry import _parse_hub_config

    path = Path(folder) / f"{config['model']}.json"
    _parse_hub_config(str(path), config)
    atomic_write_text(path, json.dumps(config, indent=2) + "\n")
    return path


def _default_hub_configs_dir() -> Path:
    folder = SOURCE_ROOT / "hub_configs"
    if not folder.is_dir():
        raise ReleaseError("No hub_configs/ folder next to this collab_zoo (not a source checkout): give "
                           "--hub-configs-dir, e.g. a folder you point COLLAB_ZOO_HUB_CONFIGS at.")
    return folder


def measure_tag(name: str, flags: List[str]) -> Dict[str, Any]:
    """validate.py on a registered tag's weights with the run's data flags: its top-1/top-5 and the command."""
    from .args import parse_validate_args
    from .cli import validate_models

    argv = ["--model", name, "--pretrained", *flags]
    result = validate_models(parse_validate_args(argv))[0]
    metrics = {k: round(float(result[k]), 2) for k in ("top1", "top5") if result.get(k) is not None}
    return {"metrics": metrics, "command": "python validate.py " + shlex.join(argv)}


def package_run(run: Path, tag: str, *, train_command: Optional[str] = None, license: Optional[str] = None,
                pretrained_dir: Optional[Path] = None, hub_configs_dir: Optional[Path] = None) -> Path:
    """Ship a run's weights in the package as ``<arch>.<tag>``: copy them to collab_zoo/pretrained/, write the
    tag's hub config, measure the shipped file with validate.py and record that. Returns the config's path."""
    from ..registry import PRETRAINED_DIR, hub_configs, register_hub_config

    checked = read_run(run)
    name = f"{checked.architecture}.{tag}"
    pretrained_dir = Path(pretrained_dir or PRETRAINED_DIR)
    pretrained_dir.mkdir(parents=True, exist_ok=True)
    packaged = f"{name}.safetensors"
    shutil.copyfile(checked.hub / "model.safetensors", pretrained_dir / packaged)
    folder = Path(hub_configs_dir or _default_hub_configs_dir())
    hub_id = f"collab-zoo/{name}"
    config = hub_config_for_run(checked, tag, hf_hub_id=hub_id, packaged_file=packaged, license=license,
                                train_command=train_command)
    register_hub_config(config)
    measured = measure_tag(name, _validate_flags(checked, _run_args(checked.folder)))
    config = hub_config_for_run(checked, tag, hf_hub_id=hub_id, packaged_file=packaged, license=license,
                                train_command=train_command, measured=measured)
    path = write_hub_config(config, folder)
    hub_configs.cache_clear()
    return path


# --- the command line ----------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="release.py",
        description="Publish a train.py run folder (its best checkpoint, model card, results.json, summary.csv, "
                    "args.yaml and curves) to a Hugging Face Hub repo as one commit; prints the URL and the commit "
                    "id. Or, with --package, ship it inside collab_zoo as a tag.")
    p.add_argument("run", help="the run folder train.py printed (output/<run>)")
    p.add_argument("--repo", metavar="ORG/NAME", help="the Hub repo to release to (created if missing)")
    p.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    p.add_argument("--private", action="store_true", default=None, help="create the repo private")
    p.add_argument("--license", default=None, help="Hub licence id for the card (default: apache-2.0, the project's)")
    p.add_argument("--train-command", default=None, metavar="TEXT",
                   help="the command that trained the run, for the card and hub config (default: args.yaml)")
    p.add_argument("--write-hub-config", metavar="TAG", default=None,
                   help="after the push, pin the commit and sha256 as tag TAG in hub_configs/<arch>.<TAG>.json "
                        "(rewrites that tracked file in a source checkout)")
    p.add_argument("--hub-configs-dir", default=None, metavar="DIR",
                   help="where --write-hub-config/--package write (default: the checkout's hub_configs/)")
    p.add_argument("--package", metavar="TAG", default=None,
                   help="instead of pushing: ship the weights in collab_zoo/pretrained/ as tag TAG, measured by "
                        "validate.py (maintainers)")
    return p


def release_main(argv: Optional[List[str]] = None) -> int:
    """release.py: exit 0 with the commit id printed; 2 for a bad run folder, repo id or flag; 3 for non-finite
    weights; 4 when the Hub is unreachable or refuses the upload."""
    from huggingface_hub.errors import HfHubHTTPError

    from ..errors import HubUnreachableError, NonFiniteError

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    if bool(args.repo) == bool(args.package):
        parser.print_usage(sys.stderr)
        print("release.py: error: give --repo ORG/NAME to push, or --package TAG to ship in the package.",
              file=sys.stderr)
        return 2
    try:
        if args.package:
            path = package_run(Path(args.run), args.package, train_command=args.train_command, license=args.license,
                               hub_configs_dir=args.hub_configs_dir)
            print(f"Packaged {args.run} as {path.stem}; wrote {path} (a tracked file: commit it with "
                  f"collab_zoo/pretrained/{path.stem}.safetensors).")
            return 0
        commit = release_run(Path(args.run), args.repo, revision=args.revision, private=args.private,
                             license=args.license, train_command=args.train_command)
        if args.write_hub_config:
            checked = read_run(Path(args.run))
            folder = Path(args.hub_configs_dir) if args.hub_configs_dir else _default_hub_configs_dir()
            config = hub_config_for_run(checked, args.write_hub_config, hf_hub_id=args.repo, revision=str(commit),
                                        license=args.license, train_command=args.train_command)
            path = write_hub_config(config, folder)
            print(f"Pinned {config['model']} to {args.repo}@{commit} (sha256 {checked.sha256}): rewrote {path}, a "
                  "tracked file when it is the checkout's hub_configs/; review and commit it.")
        print(commit)
        return 0
    except NonFiniteError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 3
    except HubUnreachableError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 4
    except (CollabZooError, FileNotFoundError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except (HfHubHTTPError, OSError) as e:
        print(f"error: the release could not be uploaded: {' '.join(str(e).split()[:60])}. Check the network, "
              "HF_ENDPOINT and your token (`hf auth login`).", file=sys.stderr)
        return 4
