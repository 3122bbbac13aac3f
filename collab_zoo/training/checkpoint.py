"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder: ``model.safetensors`` (the full model, training heads included), ``optimizer.safetensors``
+ the optimizer's non-tensor state, the scheduler, the grad scaler, the EMA weights, counters, and one
``rng_rank<r>.json`` per process. It is written into a temporary folder and published with a rename, so a run
killed at any moment leaves the previous checkpoint intact; resuming from a checkpoint someone else wrote never
executes code from it.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import IncompatibleConfigError

__all__ = ["flatten_state", "unflatten_state", "save_tensors_and_json", "load_tensors_and_json", "rng_state",
           "restore_rng_state", "publish_folder", "latest_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 1
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


def save_tensors_and_json(folder: Path, name: str, state: Any) -> None:
    from safetensors.torch import save_file

    tree, tensors = flatten_state(state)
    if tensors:
        save_file(tensors, str(folder / f"{name}.safetensors"))
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
        "checkpoints/last). Checkpoints are written every --checkpoint-interval steps and at each epoch end.")
