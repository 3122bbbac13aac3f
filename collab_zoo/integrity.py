"""Finiteness of tensors that are about to be written, published or trained on.

A run that diverges can leave weights that still load and still produce numbers: a BatchNorm ``running_var`` at
infinity, an optimizer's momentum full of NaN. Nothing this project writes (checkpoints, the best weights, a Hub
folder, a push) may hold such values, so every writer asks ``check_finite`` first. This is the lowest layer
(torch and errors only), so the Hub writer and the training loop can both use it.

Integer and boolean tensors (``num_batches_tracked``, random generator states) are always finite and are skipped.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import torch
from torch import Tensor

from .errors import NonFiniteError

__all__ = ["check_finite", "nonfinite_tensors", "describe_nonfinite", "named_tensors_in"]

_SHOWN = 5  # tensors named in a message; the count says how many more


def _checked(tensor: Any) -> bool:
    return isinstance(tensor, Tensor) and (tensor.is_floating_point() or tensor.is_complex()) and tensor.numel() > 0


def nonfinite_tensors(named_tensors: Mapping[str, Tensor]) -> List[str]:
    """The names of the floating-point tensors that hold NaN or infinity, in the mapping's order.

    One flag per tensor is computed on the tensor's own device and the flags are read back together, so a model
    on a GPU costs one synchronisation, not one per tensor."""
    by_device: Dict[torch.device, List[Tuple[str, Tensor]]] = {}
    for name, tensor in named_tensors.items():
        if _checked(tensor):
            by_device.setdefault(tensor.device, []).append((name, tensor))
    bad = set()
    for items in by_device.values():
        with torch.no_grad():
            flags = torch.stack([torch.isfinite(t.detach()).all() for _, t in items])
        if bool(flags.all()):
            continue
        bad.update(name for (name, _), ok in zip(items, flags.tolist()) if not ok)
    return [name for name in named_tensors if name in bad]


def describe_nonfinite(name: str, tensor: Tensor) -> str:
    """``name (3 NaN, 1 +inf of 64 values)``."""
    t = tensor.detach()
    parts = []
    nan = int(torch.isnan(t).sum())
    pos = int(torch.isposinf(t).sum()) if not t.is_complex() else 0
    neg = int(torch.isneginf(t).sum()) if not t.is_complex() else 0
    for count, label in ((nan, "NaN"), (pos, "+inf"), (neg, "-inf")):
        if count:
            parts.append(f"{count} {label}")
    if not parts:  # complex infinities
        parts.append(f"{int((~torch.isfinite(t)).sum())} non-finite")
    return f"{name} ({', '.join(parts)} of {t.numel()} values)"


def check_finite(named_tensors: Mapping[str, Tensor], what: str) -> None:
    """Raise ``NonFiniteError`` naming the first non-finite tensors of ``named_tensors``; ``what`` says what they
    are (e.g. "the Hub folder's weights") and starts the message."""
    bad = nonfinite_tensors(named_tensors)
    if not bad:
        return
    shown = "; ".join(describe_nonfinite(name, named_tensors[name]) for name in bad[:_SHOWN])
    more = f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
    raise NonFiniteError(
        f"{what}: {len(bad)} tensor{'s hold' if len(bad) != 1 else ' holds'} NaN or infinity: {shown}{more}. Nothing "
        "non-finite is saved, published or loaded. Values like these come from a training run that diverged "
        "(too high a learning rate, no gradient clipping).", bad)


def named_tensors_in(state: Any, prefix: str = "") -> Dict[str, Tensor]:
    """Every tensor inside a nested state (an optimizer's or scheduler's state_dict: dicts, lists, tuples),
    named by its path, e.g. ``state.3.momentum_buffer``."""
    found: Dict[str, Tensor] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, Tensor):
            found[path] = value
        elif isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{path}.{i}" if path else str(i))

    walk(state, prefix)
    return found
