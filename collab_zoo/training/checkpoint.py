"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A resumable checkpoint (``checkpoints/last``) is a folder: ``model.safetensors`` (the full model, training heads
included), ``optimizer.safetensors`` + the optimizer's non-tensor state, the scheduler, the loss scaler, the EMA
weights, ``state.json`` (counters, settings) and one ``rank<r>.json`` per process (its random generators and the
epoch's running sums). It is written into a temporary folder and published with a rename, so a run killed at any
moment leaves the previous checkpoint intact; resuming from a checkpoint someone else wrote never executes code
from it.

Weight checkpoints (``checkpoints/best``, ``checkpoints/epoch-<n>``) hold the model's and EMA's weights and the
metrics they scored. ``CheckpointHistory`` keeps the N best epoch checkpoints by the evaluation metric, as timm's
``CheckpointSaver`` does with ``--checkpoint-hist``; timm's class itself is not used because it writes its
checkpoints with ``torch.save`` (pickle), which this project never reads back.
"""
from __future__ import annotations

import glob
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import IncompatibleConfigError

__all__ = ["flatten_state", "unflatten_state", "save_tensors_and_json", "load_tensors_and_json", "rng_state",
           "restore_rng_state", "publish_folder", "latest_checkpoint", "CHECKPOINT_FORMAT", "write_checkpoint",
           "write_weights", "CheckpointHistory", "find_checkpoint_weights", "expand_checkpoint_pattern"]

CHECKPOINT_FORMAT = 2
_TENSOR = "__tensor__"
_TUPLE = "__tuple__"


def flatten_state(obj: Any, prefix: str = "") -> Tuple[Any, Dict[str, Tensor]]:
    """Split a nested state (dicts, lists, tuples, tensors, numbers, strings) into JSON and named tensors."""
    tensors: Dict[str, Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, Tensor):
            tensors[path] = value.detach().cpu().contiguous()
            return {_TENSOR: path}
        if isinstance(value, np.ndarray):
            tensors[path] = torch.from_numpy(value.astype(np.int64) if value.dtype.kind in "ui" else value.copy())
            return {_TENSOR: path, "numpy": str(value.dtype)}
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, (str, int)):
                    raise TypeError(f"state key {key!r} at {path or '<root>'} is neither str nor int")
            return {"__dict__": [[k, walk(v, f"{path}.{k}" if path else str(k))] for k, v in value.items()]}
        if isinstance(value, tuple):
            return {_TUPLE: [walk(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        if isinstance(value, (np.integer, np.floating)):
            return value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"cannot store {type(value).__name__} at {path or '<root>'} in a checkpoint")

    return walk(obj, prefix), tensors


def unflatten_state(tree: Any, tensors: Dict[str, Tensor]) -> Any:
    if isinstance(tree, dict):
        if _TENSOR in tree:
            tensor = tensors[tree[_TENSOR]]
            return tensor.numpy().astype(tree["numpy"]) if "numpy" in tree else tensor
        if _TUPLE in tree:
            return tuple(unflatten_state(v, tensors) for v in tree[_TUPLE])
        if "__dict__" in tree:
            return {k: unflatten_state(v, tensors) for k, v in tree["__dict__"]}
        return {k: unflatten_state(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    return tree


def _save_tensors(tensors: Dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save

    # Cloning breaks storage shared between tensors (tied weights), which safetensors rejects. The bytes are
    # written with open(), not save_file, which creates its files 0600 whatever the user's umask says.
    data = save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})
    with open(path, "wb") as f:
        f.write(data)


def save_tensors_and_json(folder: Path, name: str, state: Any) -> None:
    tree, tensors = flatten_state(state)
    if tensors:
        _save_tensors(tensors, folder / f"{name}.safetensors")
    (folder / f"{name}.json").write_text(json.dumps(tree))


def load_tensors_and_json(folder: Path, name: str) -> Any:
    from ..weights import load_safetensors_file

    tree = json.loads((folder / f"{name}.json").read_text())
    path = folder / f"{name}.safetensors"
    tensors = load_safetensors_file(path) if path.exists() else {}
    return unflatten_state(tree, tensors)


def rng_state() -> Dict[str, Any]:
    state: Dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["cuda"]])


def publish_folder(tmp: Path, final: Path) -> None:
    """Replace ``final`` by ``tmp`` with renames only; a crash in between leaves ``final`` or its backup."""
    backup = final.with_name(final.name + ".previous")
    if backup.exists():
        shutil.rmtree(backup)
    if final.exists():
        os.replace(final, backup)
    os.replace(tmp, final)
    if backup.exists():
        shutil.rmtree(backup, ignore_errors=True)


def write_checkpoint(root: Path, *, rank: int, is_main: bool, barrier: Callable[[], None],
                     rank_state: Dict[str, Any], model_state: Optional[Dict[str, Tensor]] = None,
                     optimizer_state: Optional[Dict[str, Any]] = None, scheduler_state: Optional[Dict[str, Any]] = None,
                     scaler_state: Optional[Dict[str, Any]] = None, ema_state: Optional[Dict[str, Tensor]] = None,
                     state: Optional[Dict[str, Any]] = None, name: str = "last") -> Path:
    """Write the resumable checkpoint ``root/name`` atomically. Every process calls this (``barrier`` is the
    processes' rendezvous): each writes its own ``rank<r>`` file, the main process everything else."""
    tmp = root / f".incoming-{name}"
    barrier()
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    save_tensors_and_json(tmp, f"rank{rank}", rank_state)
    if is_main:
        _save_tensors(model_state, tmp / "model.safetensors")
        save_tensors_and_json(tmp, "optimizer", optimizer_state)
        save_tensors_and_json(tmp, "scheduler", scheduler_state or {})
        if scaler_state is not None:
            save_tensors_and_json(tmp, "scaler", scaler_state)
        if ema_state is not None:
            _save_tensors(ema_state, tmp / "ema.safetensors")
        (tmp / "state.json").write_text(json.dumps({"format": CHECKPOINT_FORMAT, **(state or {})}, indent=2))
    barrier()
    if is_main:
        publish_folder(tmp, root / name)
    barrier()
    return root / name


def write_weights(folder: Path, model_state: Dict[str, Tensor], metrics: Dict[str, Any],
                  ema_state: Optional[Dict[str, Tensor]] = None) -> Path:
    """A weights-only checkpoint (best, or one kept by --checkpoint-hist), published by rename."""
    tmp = folder.with_name(f".incoming-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _save_tensors(model_state, tmp / "model.safetensors")
    if ema_state is not None:
        _save_tensors(ema_state, tmp / "ema.safetensors")
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    publish_folder(tmp, folder)
    return folder


class CheckpointHistory:
    """The ``max_history`` best epoch checkpoints by a metric, best first, as timm's CheckpointSaver keeps them:
    an epoch's checkpoint is written when fewer are kept or it beats the worst kept one, which is then removed.
    The list is part of the run's progress, so a resumed run keeps the same set."""

    def __init__(self, root: Path, max_history: int, decreasing: bool, entries: Optional[List[List[Any]]] = None):
        self.root = Path(root)
        self.max_history = int(max_history)
        self.decreasing = bool(decreasing)
        self.entries: List[List[Any]] = [list(e) for e in (entries or [])]  # [metric, folder name]

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.decreasing else a > b

    def offer(self, name: str, metric: float, model_state: Dict[str, Tensor], metrics: Dict[str, Any],
              ema_state: Optional[Dict[str, Tensor]] = None) -> bool:
        """Keep this epoch's weights if they rank among the best; returns whether they were kept."""
        if self.max_history <= 0:
            return False
        if len(self.entries) >= self.max_history and not self._better(metric, self.entries[-1][0]):
            return False
        write_weights(self.root / name, model_state, metrics, ema_state)
        self.entries = [e for e in self.entries if e[1] != name] + [[metric, name]]
        self.entries.sort(key=lambda e: e[0], reverse=not self.decreasing)
        for _, dropped in self.entries[self.max_history:]:
            shutil.rmtree(self.root / dropped, ignore_errors=True)
        self.entries = self.entries[: self.max_history]
        return True


def latest_checkpoint(path: Path) -> Path:
    """The checkpoint folder to resume from: ``path`` itself, or ``path/last`` (or its backup) for a run folder."""
    path = Path(path)
    candidates = [path, path / "checkpoints" / "last", path / "checkpoints" / "last.previous",
                  path / "last", path / "last.previous"]
    for candidate in candidates:
        if (candidate / "state.json").is_file():
            return candidate
    raise IncompatibleConfigError(
        f"--resume {path}: no checkpoint there (expected a folder with state.json, or a run folder with "
        "checkpoints/last). Checkpoints are written every --recovery-interval steps and at each epoch end.")


def _run_state_near(folder: Path) -> Optional[Dict[str, Any]]:
    """The run's saved settings, from the checkpoint folder or its run's checkpoints/last."""
    for candidate in (folder / "state.json", folder.parent / "last" / "state.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


def find_checkpoint_weights(path: Path, use_ema: bool = False) -> Tuple[Path, Optional[Dict[str, Any]]]:
    """(weights file, the run's saved state or None) for a safetensors file, a checkpoint folder or a run folder
    (its best checkpoint, else its last). ``use_ema`` picks the EMA weights a run with --model-ema saved."""
    path = Path(path)
    wanted = "ema.safetensors" if use_ema else "model.safetensors"
    if path.is_file():
        if path.suffix != ".safetensors":
            raise IncompatibleConfigError(
                f"{path} is not a safetensors file; only safetensors weights are read (never pickles). Convert "
                "it once with safetensors.torch.save_file, or python -m collab_zoo.convert for the papers' files.")
        if use_ema:
            raise IncompatibleConfigError(f"--use-ema needs a checkpoint folder (with ema.safetensors), got the "
                                          f"file {path}.")
        return path, None
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {path} does not exist.")
    for folder in (path, path / "checkpoints" / "best", path / "checkpoints" / "last"):
        if (folder / "model.safetensors").is_file():
            if not (folder / wanted).is_file():
                raise IncompatibleConfigError(
                    f"{folder} has no EMA weights (ema.safetensors): the run was trained without --model-ema. "
                    "Drop --use-ema to evaluate its weights.")
            return folder / wanted, _run_state_near(folder)
    raise FileNotFoundError(f"--checkpoint {path}: no model.safetensors there (nor in checkpoints/best or last).")


def expand_checkpoint_pattern(pattern: str) -> List[str]:
    """A --checkpoint with wildcards: every match, in natural order; a plain path as is."""
    if not any(ch in pattern for ch in "*?["):
        return [pattern]
    from timm.utils import natural_key

    matches = sorted(glob.glob(pattern), key=natural_key)
    if not matches:
        raise FileNotFoundError(f"--checkpoint {pattern}: the pattern matches nothing.")
    return matches
