"""train.py and validate.py, as importable functions (the scripts at the repository root only call these).

A failure ends with one paragraph saying what went wrong and what to do, never a traceback, and an exit code
that tells the kind:

====  ==========================================================================================================
 0    done
 2    bad input: a flag (argparse's code), a -c file, the data, a checkpoint or weights file (missing, torn,
      damaged, another model's), an output folder already holding a run or in use by another train.py
 3    non-finite: training went NaN/inf (the loss, or any weight or buffer after a step) and stopped, or weights
      about to be saved, published or loaded hold NaN/inf; checkpoints/last keeps the last finite state
 4    a write failed (disk full, read-only folder, file-size limit); the previous checkpoint is whole
130   Ctrl-C (SIGINT): checkpoints/last holds where training stopped (``--resume`` continues)
143   SIGTERM: the same as Ctrl-C (128 + the signal's number, as a shell reports a signal)
====  ==========================================================================================================

An exit code of 1 with a traceback is a bug in collab_zoo: please report it.
"""
from __future__ import annotations

import copy
import csv
import errno
import io
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..errors import CollabZooError, NonFiniteError, RunWriteError
from .args import MAIN_JOB, ConfigFileError, parse_args, parse_validate_args

__all__ = ["train_main", "validate_main", "validate_models", "EXIT_BAD_INPUT", "EXIT_NONFINITE",
           "EXIT_WRITE_FAILED", "EXIT_INTERRUPTED", "EXIT_TERMINATED"]

_logger = logging.getLogger("collab_zoo.train")

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_WRITE_FAILED = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
# OS errors that mean "this could not be written here" rather than a bug.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


def _setup_logging(main_process: bool) -> None:
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING, format="%(message)s", force=True)
    for noisy in ("httpx", "httpx2", "timm", "huggingface_hub", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _is_main_process() -> bool:
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) in ("0", "")


def _plain(message: str) -> str:
    """One paragraph: an error re-raised from a DataLoader worker carries the worker's traceback in its text; its
    last line is the message."""
    if "Traceback (most recent call last)" in message:
        lines = [line for line in message.splitlines() if line.strip()]
        message = re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1].strip()) if lines else message
    return " ".join(message.split())


def _error(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"error: {_plain(message)}", file=sys.stderr)
    return code


def _failure_code(error: BaseException) -> Optional[int]:
    """The exit code for an error a user can act on (None: a bug, left to Python's traceback)."""
    if isinstance(error, NonFiniteError):
        return EXIT_NONFINITE
    if isinstance(error, RunWriteError):
        return EXIT_WRITE_FAILED
    if isinstance(error, (CollabZooError, FileNotFoundError, NotADirectoryError)):
        return EXIT_BAD_INPUT
    if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
        return EXIT_WRITE_FAILED
    return None


def _write_failure_message(error: OSError) -> str:
    return (f"could not write {error.filename or 'a file'} ({error.strerror or error}). Free disk space, fix the "
            "folder's permissions, or write somewhere else.")


def train_main(argv: List[str]) -> int:
    """Train, and with --baseline train the baseline the same way; print the comparison. Exit code 2 on bad input,
    130 when interrupted (checkpoints/last then holds where it stopped)."""
    from .engine import TrainingInterrupted, run_training
    from .report import comparison_table

    main_job = not argv
    if main_job:
        argv = list(MAIN_JOB)
    _setup_logging(_is_main_process())
    try:
        args = parse_args(argv)
    except ConfigFileError as e:
        return _error(str(e))
    except SystemExit as e:  # argparse: --help (0) or a bad flag (2, its message already printed)
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    if main_job:
        _logger.info("No arguments: the built-in main job (%s).", " ".join(MAIN_JOB))
    try:
        results = [run_training(args)]
        if args.baseline and not args.resume:
            baseline = copy.deepcopy(args)
            baseline.model, baseline.model_kwargs = args.baseline, {}
            baseline.experiment = f"{args.experiment}-baseline-{args.baseline}"
            results.append(run_training(baseline))
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        return EXIT_TERMINATED if e.signum == signal.SIGTERM else EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted before training started (or at a second Ctrl-C): nothing more was saved.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        code = _failure_code(e)
        if code is None:
            raise
        is_write = code == EXIT_WRITE_FAILED and not isinstance(e, CollabZooError)
        return _error(_write_failure_message(e) if is_write else str(e), code)
    if _is_main_process():
        print()
        print(comparison_table(results))
        print(f"\nRun folder: {results[0]['run_dir']} (summary.csv, training_curves.png, results.json, hub/)")
        if len(results) > 1:
            gain = results[0]["top1"] - results[1]["top1"]
            print(f"{results[0]['model']} vs {results[1]['model']}: {gain:+.2f} points top-1 "
                  f"(one seed; benchmarks/ has the multi-seed numbers)")
            out = Path(args.output) / f"{args.experiment}-comparison.json"
            from ..hub import atomic_write_text

            try:
                atomic_write_text(out, json.dumps(results, indent=2))
            except OSError as e:
                return _error(_write_failure_message(e), EXIT_WRITE_FAILED)
    return 0


# --- validate.py ---------------------------------------------------------------------------------------------------

def _first_conv_key(model: nn.Module) -> Optional[str]:
    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(first, (list, tuple)):
        first = first[0] if first else None
    return f"{first}.weight" if first else None


def _load_checkpoint_weights(model: nn.Module, weights: Path, name: str) -> List[str]:
    """Load a checkpoint strictly, adapting the first convolution to the model's input channels; returns notes."""
    from ..errors import IncompatibleConfigError
    from ..integrity import check_finite
    from ..weights import adapt_input_channels, load_safetensors_file

    state = load_safetensors_file(weights)
    check_finite(state, f"--checkpoint {weights}")
    own = model.state_dict()
    notes = []
    key = _first_conv_key(model)
    if key and key in state and key in own and state[key].shape != own[key].shape \
            and state[key].shape[0] == own[key].shape[0] and state[key].shape[2:] == own[key].shape[2:]:
        notes.append(f"{key}: {state[key].shape[1]} -> {own[key].shape[1]} input channels")
        state[key] = adapt_input_channels(state[key], own[key].shape[1])
    missing = [k for k in own if k not in state]
    if missing:
        raise IncompatibleConfigError(f"{weights} lacks {len(missing)} of {name}'s tensors (e.g. {missing[:3]}).")
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if shapes:
        raise IncompatibleConfigError(f"{weights} does not fit {name}: {'; '.join(shapes[:5])}. Check --num-classes, "
                                      "--in-chans and --model-kwargs against the run that wrote it.")
    model.load_state_dict(state, strict=True)
    return notes


def _builtin_class_count(dataset: str) -> Optional[int]:
    from ..data import builtin_num_classes

    return builtin_num_classes(dataset)


def _build_for_validation(name: str, args, checkpoint: Optional[str], data_classes: Optional[int]
                          ) -> Tuple[nn.Module, Optional[Dict[str, Any]], List[str]]:
    from ..errors import IncompatibleConfigError
    from ..factory import create_model
    from .checkpoint import find_checkpoint_weights

    kwargs = dict(args.model_kwargs or {})
    if args.gp is not None:
        kwargs["global_pool"] = args.gp
    num_classes = args.num_classes
    in_chans = args.in_chans or (args.input_size[0] if args.input_size else None)
    weights, state = None, None
    if checkpoint:
        weights, state = find_checkpoint_weights(Path(checkpoint), use_ema=args.use_ema)
        if state is not None:
            saved = state["args"]
            if name != saved["model"]:
                raise IncompatibleConfigError(f"--checkpoint {checkpoint} was trained as {saved['model']}, not {name}.")
            kwargs = {**saved.get("model_kwargs", {}), **kwargs}
            saved_chans = saved.get("in_chans") or (saved.get("input_size") or [None])[0]
            if saved_chans is None and _builtin_class_count(saved.get("dataset")) is not None:
                saved_chans = 1
            in_chans = in_chans or saved_chans
        num_classes = num_classes or data_classes
    elif args.use_ema:
        raise IncompatibleConfigError("--use-ema picks the EMA weights of a --checkpoint; give one.")
    model = create_model(name, pretrained=args.pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    notes: List[str] = []
    if weights is not None:
        notes = _load_checkpoint_weights(model, weights, name)
    return model, state, notes


def _reported_heads(model: nn.Module) -> Tuple[List[str], List[int], List[str]]:
    """Every head's name, the indices of those whose classifier came from the weights, and the names of the ones
    left out: a Hub folder
    of a DKS model carries only the main path, so its auxiliary heads are built fresh and mean nothing."""
    from ..contract import head_names_of

    names = list(head_names_of(model))
    report = getattr(model, "pretrained_load_report", None)
    fresh = set(report.initialised) if report is not None else set()
    classifiers = list(model.classifier_names()) if hasattr(model, "classifier_names") else []
    if not fresh or len(classifiers) != len(names):
        return names, list(range(len(names))), []
    kept = [i for i, c in enumerate(classifiers) if f"{c}.weight" not in fresh]
    left_out = [names[i] for i in range(len(names)) if i not in kept]
    return names, kept, left_out


def _validation_data(args, name: str, model: nn.Module, state: Optional[Dict[str, Any]]):
    """The data to evaluate ``model`` on, through timm's eval transform of the right data config."""
    from timm.data import resolve_data_config

    from ..data import DataSpec, build_data, resolve_dataset_name
    from .engine import _input_channels

    dataset = resolve_dataset_name(args.dataset, args.data_dir)
    chans = _input_channels(model, args)
    builtin = _builtin_class_count(dataset) is not None
    saved = (state or {}).get("args", {})
    size = args.input_size or args.img_size
    if builtin and size is None:
        size = saved.get("input_size") or saved.get("img_size") or model.pretrained_cfg.get("input_size", [None])[-1]
    spec = DataSpec(dataset=dataset, data_dir=args.data_dir, input_size=size, in_chans=chans,
                    md_level=args.md_level, md_test_size=args.md_test_size, seed=args.seed, val_split=args.split,
                    skip_bad_images=args.skip_bad_images, class_map=args.class_map, input_img_mode=args.input_img_mode,
                    download=args.dataset_download, val_num_samples=args.num_samples, input_key=args.input_key,
                    target_key=args.target_key)
    bundle = build_data(spec, need_train=False)
    base = dict(bundle.data_config) if builtin else dict(model.pretrained_cfg)
    overrides = dict(in_chans=chans, interpolation=args.interpolation or None, mean=args.mean, std=args.std,
                     crop_pct=args.crop_pct, crop_mode=args.crop_mode)
    if not builtin:
        overrides.update(input_size=args.input_size, img_size=args.img_size)
    config = resolve_data_config(overrides, pretrained_cfg=base)
    config["input_size"] = (chans, *tuple(config["input_size"])[1:])
    bundle.apply_data_config(config)
    return bundle


def _validate_one(name: str, checkpoint: Optional[str], args, device: torch.device, world: int, rank: int
                  ) -> Dict[str, Any]:
    from ..data import DataError, resolve_dataset_name
    from .evaluate import evaluate, score_loss
    from .loader import make_eval_loader

    dataset = resolve_dataset_name(args.dataset, args.data_dir)
    data_classes = _builtin_class_count(dataset)
    if data_classes is None and checkpoint:
        from ..data import DataSpec, build_data

        data_classes = build_data(DataSpec(dataset=dataset, data_dir=args.data_dir, val_split=args.split,
                                           class_map=args.class_map), need_train=False).num_classes or None
    model, state, notes = _build_for_validation(name, args, checkpoint, data_classes)
    bundle = _validation_data(args, name, model, state)
    if bundle.num_classes and model.num_classes != bundle.num_classes:
        raise DataError(f"{name} predicts {model.num_classes} classes, the data has {bundle.num_classes}: "
                        "evaluate it on data with its classes, or fine-tune it first (train.py --num-classes).")
    head_names, head_indices, left_out = _reported_heads(model)
    if left_out and _is_main_process():
        _logger.info("%s: heads %s are not in the weights (built fresh), so they are not reported.", name,
                     ", ".join(left_out))
    for note in notes:
        _logger.info("%s: adapted %s.", name, note)
    model = model.to(device).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = make_eval_loader(bundle.eval, args, bundle, device, world, rank, args.batch_size)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16 if args.amp_dtype == "bfloat16"
                                       else torch.float16)) if args.amp else None
    result = evaluate(model, loader, bundle.num_classes or model.num_classes, head_names, device=device,
                      loss_fn=score_loss, head_indices=head_indices, channels_last=args.channels_last,
                      **({"autocast": autocast} if autocast else {}))
    class_names = bundle.class_names or [str(i) for i in range(model.num_classes)]
    row: Dict[str, Any] = dict(model=name, dataset=dataset or args.data_dir, images=result.count, **result.as_dict(),
                               per_class_top1=dict(zip(class_names, [round(v, 2) for v in result.per_class])),
                               skipped_images=bundle.skipped)
    if checkpoint:
        row["checkpoint"] = str(checkpoint)
        row["weights"] = "ema" if args.use_ema else "model"
    if left_out:
        row["heads_not_in_weights"] = left_out
    if _is_main_process():
        heads = ", ".join(f"{k[5:]} {v:.2f}" for k, v in row.items() if k.startswith("top1_"))
        top5 = f" top-5 {row['top5']:.2f}%" if row.get("top5") is not None else ""
        where = f" ({checkpoint}{', EMA' if args.use_ema else ''})" if checkpoint else ""
        print(f"{name}{where}: top-1 {row['top1']:.2f}%{top5} loss {row['loss']:.4f} on {result.count} images"
              + (f" (heads: {heads})" if heads else ""))
    return row


def validate_models(args) -> List[Dict[str, Any]]:
    from accelerate import PartialState

    from .checkpoint import expand_checkpoint_pattern

    if args.device_modules:
        import importlib

        for module in args.device_modules:
            importlib.import_module(module)
    state = PartialState(cpu=args.cpu or not torch.cuda.is_available())
    checkpoints = expand_checkpoint_pattern(args.checkpoint) if args.checkpoint else [None]
    results = []
    for name in args.model:
        for checkpoint in checkpoints:
            results.append(_validate_one(name, checkpoint, args, state.device, state.num_processes,
                                         state.process_index))
    return results


def _write_results(path: Path, results: List[Dict[str, Any]], fmt: str) -> None:
    from ..hub import atomic_write_text

    if fmt == "json":
        atomic_write_text(path, json.dumps(results, indent=2))
        return
    columns: List[str] = []
    for r in results:
        columns += [k for k in r if k not in columns and k != "per_class_top1"]
    rows = []
    for r in results:
        row = {k: (json.dumps(r[k]) if isinstance(r.get(k), (list, dict)) else r.get(k, "")) for k in columns}
        row["per_class_top1"] = json.dumps(r.get("per_class_top1", {}))
        rows.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns + ["per_class_top1"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def validate_main(argv: List[str]) -> int:
    """Evaluate; exit code 2 on bad input (a torn or damaged checkpoint included), 3 for non-finite weights, 4
    when the results file cannot be written, 130 when interrupted."""
    _setup_logging(_is_main_process())
    try:
        args = parse_validate_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    fmt = None
    if args.results_file:
        fmt = args.results_format or Path(args.results_file).suffix.lstrip(".")
        if fmt not in ("json", "csv"):
            return _error(f"--results-file must end in .json or .csv (or give --results-format csv|json), got "
                          f"{args.results_file}.")
    try:
        results = validate_models(args)
    except KeyboardInterrupt:
        print("interrupted: no results written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        code = _failure_code(e)
        if code is None:
            raise
        return _error(str(e), code)
    if args.results_file and _is_main_process():
        try:
            _write_results(Path(args.results_file), results, fmt)
        except OSError as e:
            return _error(f"--results-file: {_write_failure_message(e)}", EXIT_WRITE_FAILED)
    return 0
