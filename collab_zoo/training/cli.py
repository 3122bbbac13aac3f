"""train.py and validate.py, as importable functions (the scripts at the repository root only call these)."""
from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..errors import CollabZooError
from .args import MAIN_JOB, parse_args

__all__ = ["train_main", "validate_main", "build_validate_parser", "validate_models"]

_logger = logging.getLogger("collab_zoo.train")


def _setup_logging(main_process: bool) -> None:
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING, format="%(message)s", force=True)
    for noisy in ("httpx", "httpx2", "timm", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) in ("0", "")


def train_main(argv: List[str]) -> int:
    """Train, and with --baseline train the baseline the same way; print the comparison. Exit code 2 on bad input."""
    from .engine import run_training
    from .report import comparison_table

    main_job = not argv
    if main_job:
        argv = list(MAIN_JOB)
    args = parse_args(argv)
    _setup_logging(_is_main_process())
    if main_job:
        _logger.info("No arguments: the built-in main job (%s).", " ".join(MAIN_JOB))
    try:
        results = [run_training(args)]
        if args.baseline and not args.resume:
            baseline = copy.deepcopy(args)
            baseline.model, baseline.model_kwargs = args.baseline, {}
            baseline.experiment = f"{args.experiment}-baseline-{args.baseline}"
            results.append(run_training(baseline))
    except (CollabZooError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if _is_main_process():
        print()
        print(comparison_table(results))
        print(f"\nRun folder: {results[0]['run_dir']} (summary.csv, training_curves.png, results.json, hub/)")
        if len(results) > 1:
            gain = results[0]["top1"] - results[1]["top1"]
            print(f"{results[0]['model']} vs {results[1]['model']}: {gain:+.2f} points top-1 "
                  f"(one seed; benchmarks/ has the multi-seed numbers)")
            out = Path(args.output) / f"{args.experiment}-comparison.json"
            out.write_text(json.dumps(results, indent=2))
    return 0


# --- validate.py ---------------------------------------------------------------------------------------------------

def build_validate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="validate.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Evaluate one or more models: top-1, top-5, each head's top-1, per-class.")
    p.add_argument("--model", nargs="+", required=True,
                   help="architecture(s), arch.tag, hf-hub:org/repo or local-dir:DIR; several are evaluated in turn")
    p.add_argument("--pretrained", action="store_true", help="load the model's published weights")
    p.add_argument("--checkpoint", default=None,
                   help="weights to evaluate: a safetensors file, a checkpoint folder, or a train.py run folder")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--in-chans", type=int, default=None)
    p.add_argument("--model-kwargs", nargs="*", default={}, action=_kwargs_action())
    p.add_argument("--dataset", default="digits", help="digits, multidigit-II, multidigit-III, or imagefolder")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="val", help="the ImageFolder split to evaluate")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--md-level", type=int, default=1)
    p.add_argument("--md-test-size", type=int, default=2_000)
    p.add_argument("--seed", type=int, default=42, help="the multi-digit sets are generated from it")
    p.add_argument("-b", "--batch-size", type=int, default=128)
    p.add_argument("-j", "--workers", type=int, default=0)
    p.add_argument("--skip-bad-images", action="store_true")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--results-file", default=None, help="write results here: .json or .csv")
    p.add_argument("--cpu", action="store_true")
    return p


def _kwargs_action():
    from .args import ParseKwargs

    return ParseKwargs


def _checkpoint_weights(path: Path):
    """(weights file, run settings or None) for a safetensors file, checkpoint folder or run folder."""
    if path.is_file():
        return path, None
    for folder in (path, path / "checkpoints" / "best", path / "checkpoints" / "last"):
        if (folder / "model.safetensors").is_file():
            state = None
            for candidate in (folder / "state.json", folder.parent / "last" / "state.json"):
                if candidate.is_file():
                    state = json.loads(candidate.read_text())
                    break
            return folder / "model.safetensors", state
    raise FileNotFoundError(f"--checkpoint {path}: no model.safetensors there (nor in checkpoints/best or last).")


def _build_for_validation(name: str, args, data_classes: Optional[int]):
    from ..errors import IncompatibleConfigError
    from ..factory import create_model
    from ..weights import load_safetensors_file

    kwargs = dict(args.model_kwargs or {})
    num_classes, in_chans = args.num_classes, args.in_chans
    weights, state = (None, None)
    if args.checkpoint:
        weights, state = _checkpoint_weights(Path(args.checkpoint))
        if state is not None:
            saved = state["args"]
            if name != saved["model"]:
                raise IncompatibleConfigError(f"--checkpoint was trained as {saved['model']}, not {name}.")
            kwargs = {**saved.get("model_kwargs", {}), **kwargs}
            in_chans = in_chans or saved.get("in_chans")
    if args.checkpoint and num_classes is None:
        num_classes = data_classes
    model = create_model(name, pretrained=args.pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if weights is not None:
        state_dict = load_safetensors_file(weights)
        own = model.state_dict()
        missing = [k for k in own if k not in state_dict]
        if missing:
            raise IncompatibleConfigError(f"{weights} lacks {len(missing)} of {name}'s tensors (e.g. {missing[:3]}).")
        model.load_state_dict(state_dict, strict=True)
    return model


def validate_models(args) -> List[Dict[str, Any]]:
    from accelerate import Accelerator
    from timm.data import resolve_data_config

    from ..data import DataError, DataSpec, build_data
    from .engine import _eval_loader
    from .evaluate import evaluate

    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available(),
                              mixed_precision="bf16" if args.amp else "no")
    results = []
    for name in args.model:
        builtin = args.dataset != "imagefolder"
        spec = DataSpec(dataset=args.dataset, data_dir=args.data_dir, input_size=args.input_size,
                        in_chans=args.in_chans, md_level=args.md_level, md_test_size=args.md_test_size,
                        seed=args.seed, val_split=args.split, skip_bad_images=args.skip_bad_images)
        data_classes = None
        if builtin:
            bundle = build_data(spec, need_train=False)
            data_classes = bundle.num_classes
            model = _build_for_validation(name, _with(args, in_chans=args.in_chans or bundle.data_config["input_size"][0]),
                                          data_classes)
        else:
            model = _build_for_validation(name, args, data_classes)
            spec.model_data_config = resolve_data_config(model=model)
            bundle = build_data(spec, need_train=False)
            data_classes = bundle.num_classes
        if model.num_classes != bundle.num_classes:
            raise DataError(f"{name} predicts {model.num_classes} classes, the data has {bundle.num_classes}: "
                            "evaluate it on data with its classes, or fine-tune it first (train.py --num-classes).")
        model = model.to(accelerator.device).eval()
        loader = _eval_loader(bundle.eval, argparse.Namespace(batch_size=args.batch_size, workers=args.workers),
                              accelerator)
        result = evaluate(model, loader, accelerator, bundle.num_classes)
        row = dict(model=name, dataset=args.dataset, images=result.count, **result.as_dict(),
                   per_class_top1=dict(zip(bundle.class_names, [round(v, 2) for v in result.per_class])),
                   skipped_images=bundle.skipped)
        results.append(row)
        if accelerator.is_main_process:
            heads = ", ".join(f"{k[5:]} {v:.2f}" for k, v in row.items() if k.startswith("top1_"))
            top5 = f" top-5 {row['top5']:.2f}%" if row.get("top5") is not None else ""
            print(f"{name}: top-1 {row['top1']:.2f}%{top5} on {result.count} images (heads: {heads})")
    return results


def _with(args, **changes):
    updated = copy.copy(args)
    for key, value in changes.items():
        setattr(updated, key, value)
    return updated


def _write_results(path: Path, results: List[Dict[str, Any]]) -> None:
    from ..hub import atomic_write_text

    if path.suffix == ".json":
        atomic_write_text(path, json.dumps(results, indent=2))
        return
    if path.suffix != ".csv":
        raise ValueError(f"--results-file must end in .json or .csv, got {path.name}.")
    columns: List[str] = []
    for r in results:
        columns += [k for k in r if k not in columns and k != "per_class_top1"]
    rows = []
    for r in results:
        row = {k: r.get(k, "") for k in columns}
        row["per_class_top1"] = json.dumps(r.get("per_class_top1", {}))
        rows.append(row)
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns + ["per_class_top1"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def validate_main(argv: List[str]) -> int:
    args = build_validate_parser().parse_args(argv)
    _setup_logging(_is_main_process())
    if args.results_file and Path(args.results_file).suffix not in (".json", ".csv"):
        print(f"error: --results-file must end in .json or .csv, got {args.results_file}", file=sys.stderr)
        return 2
    try:
        results = validate_models(args)
    except (CollabZooError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.results_file and _is_main_process():
        _write_results(Path(args.results_file), results)
    return 0
