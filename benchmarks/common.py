"""Shared pieces of the benchmarks: the machine description, paired timing, memory and FLOP counts, output.

Times on a shared machine are noisy, so nothing here reports a bare time as a result: two callables are
timed in alternation (A, B, A, B, ...) inside one process and the result is the median of the per-pair
ratios B/A, with the spread (25th-75th percentile) next to it.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
# A smoke run (--quick) writes beside, never over, the numbers the README quotes.
RESULTS = ROOT / "benchmarks" / "results" / ("quick" if "--quick" in sys.argv else "")
sys.path.insert(0, str(ROOT))

__all__ = ["machine", "paired_ratio", "training_memory_bytes", "forward_flops", "write_result", "ROOT", "RESULTS"]


def machine() -> Dict[str, Any]:
    """What the numbers were measured on."""
    import accelerate
    import huggingface_hub
    import timm

    info: Dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "timm": timm.__version__, "accelerate": accelerate.__version__, "huggingface_hub": huggingface_hub.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 1024 ** 2, 1)
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
            info["cpu_model"] = names[0] if names else None
    except OSError:
        pass
    return info


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def paired_ratio(baseline: Callable[[], Any], candidate: Callable[[], Any], repeats: int = 7,
                 warmup: int = 2) -> Dict[str, float]:
    """Median of candidate/baseline time ratios over alternating runs, with quartiles and the medians."""
    for _ in range(warmup):
        baseline(), candidate()
    base_times: List[float] = []
    cand_times: List[float] = []
    for i in range(repeats):
        order = (baseline, candidate) if i % 2 == 0 else (candidate, baseline)
        for fn in order:
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            (base_times if fn is baseline else cand_times).append(time.perf_counter() - start)
    ratios = sorted(c / b for b, c in zip(base_times, cand_times))
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else [ratios[0], statistics.median(ratios), ratios[-1]]
    return dict(ratio=round(statistics.median(ratios), 4), ratio_q1=round(q[0], 4), ratio_q3=round(q[-1], 4),
                baseline_seconds=round(statistics.median(base_times), 5),
                candidate_seconds=round(statistics.median(cand_times), 5), repeats=repeats)


def training_memory_bytes(model: nn.Module, make_batch: Callable[[], Any], loss_fn: Callable[[Any, Any], Any]) -> Dict[str, int]:
    """Memory one training step needs, counted exactly: parameters, their gradients, and every tensor autograd
    saves for the backward pass (the activations). CPU allocators report no peak; this count does not
    depend on the allocator or on what else runs."""
    saved = 0
    seen = set()

    def pack(tensor):
        nonlocal saved
        key = (tensor.untyped_storage().data_ptr(), tensor.dtype, tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            saved += tensor.numel() * tensor.element_size()
        return tensor

    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    images, target = make_batch()
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = model(images)
        loss = loss_fn(outputs, target)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return dict(parameters=params, gradients=trainable, saved_activations=saved, total=params + trainable + saved)


def forward_flops(model: nn.Module, images: torch.Tensor, train: bool = False) -> int:
    """FLOPs of one forward pass in the given mode (the library's counter: 2 per multiply-add)."""
    from collab_zoo.methods.dcl import forward_flops as count_forward_flops

    model.train(train)
    return count_forward_flops(model, images)


def train_step_flops(model: nn.Module, images: torch.Tensor, target: torch.Tensor, loss_fn) -> int:
    """FLOPs of a forward and backward pass in train mode."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        loss = loss_fn(model(images), target)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def write_result(name: str, payload: Dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = dict(payload, machine=machine())
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
