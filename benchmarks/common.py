"""Shared pieces of the benchmarks: what a result was measured on, paired timing, memory and FLOP counts, output.

Times on a shared machine are noisy, so nothing here reports a bare time as a result: two callables are
timed in alternation (A B, B A, A B, ...) inside one process after a warm-up, and the result is the median
of the per-pair ratios candidate/baseline with the interquartile range (25th-75th percentile) next to it.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
RESULTS_ROOT = ROOT / "benchmarks" / "results"
# A smoke run (--quick) writes beside, never over, the numbers the README quotes (results/quick/ is git-ignored).
RESULTS = RESULTS_ROOT / ("quick" if "--quick" in sys.argv else "")
sys.path.insert(0, str(ROOT))

__all__ = ["ROOT", "RESULTS", "RESULTS_ROOT", "results_dir", "machine", "run_metadata", "machine_cores",
           "paired_stats", "paired_ratio", "training_memory_bytes", "forward_flops", "train_step_flops",
           "write_json_atomic", "write_result"]

# The libraries whose versions decide the numbers.
LIBRARIES = ("torch", "timm", "accelerate", "huggingface_hub", "safetensors", "numpy")


def results_dir(quick: bool) -> Path:
    return RESULTS_ROOT / "quick" if quick else RESULTS_ROOT


def machine_cores() -> int:
    """The cores this process may run on (the affinity mask, which a container or taskset may narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gb() -> Optional[float]:
    try:
        with open("/proc/meminfo") as f:
            return round(int(f.readline().split()[1]) / 1024 ** 2, 1)
    except (OSError, ValueError, IndexError):
        return None


def git_state() -> Dict[str, Any]:
    """The commit the code was at and whether the tree had changes (a dirty tree's numbers are not the commit's)."""
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    # Results files are what the benchmarks write, not code: a run that starts while an earlier one's file is still
    # uncommitted (cost.py at 2 threads after 1) measures the commit all the same.
    changed = [line[3:] for line in (status or "").splitlines()
               if line.strip() and not line[3:].startswith("benchmarks/results/")]
    return dict(commit=commit.strip() if commit else None, dirty=bool(changed) if status is not None else None,
                changed_paths=changed[:50])


def _versions() -> Dict[str, Optional[str]]:
    import importlib

    versions: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", None)
        except ImportError:
            versions[name] = None
    return versions


def _gpu() -> Optional[Dict[str, Any]]:
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return dict(name=props.name, count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
                memory_gb=round(props.total_memory / 1024 ** 3, 1), cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version())


def load_average() -> Optional[List[float]]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine() -> Dict[str, Any]:
    """What the numbers were measured on: the machine, the libraries, the code, and how busy the machine was."""
    gpu = _gpu()
    return dict(**_versions(), platform=platform.platform(), cpu_model=_cpu_model(), cpu_count=os.cpu_count(),
                cores=machine_cores(), memory_gb=_memory_gb(), torch_threads=torch.get_num_threads(), gpu=gpu,
                cuda=gpu["name"] if gpu else None, load_average=load_average(),
                date=time.strftime("%Y-%m-%d %H:%M:%S"), **git_state())


def run_metadata(script: Optional[str] = None, argv: Optional[Sequence[str]] = None, **extra: Any) -> Dict[str, Any]:
    """machine() plus the exact command: the process's command line as typed (interpreter included), or,
    where a script's main(argv) was called from other code, that script with those arguments."""
    process = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    command = process if argv is None or script is None else shlex.join(["python", f"benchmarks/{script}", *argv])
    return dict(machine(), command=command, process_command=process, cwd=os.getcwd(), **extra)


# --- paired timing ---------------------------------------------------------------------------------------------------

def _quartiles(values: Sequence[float]) -> List[float]:
    """25th, 50th and 75th percentile, interpolating linearly between order statistics (numpy's default)."""
    if len(values) == 1:
        return [values[0]] * 3
    return statistics.quantiles(values, n=4, method="inclusive")


def paired_stats(baseline_times: Sequence[float], candidate_times: Sequence[float], number: int = 1
                 ) -> Dict[str, Any]:
    """Statistics of the paired ratios candidate_i / baseline_i: median, quartiles and their spread (IQR).
    ``number`` is how many calls each timed sample made; the medians in seconds are per call."""
    if len(baseline_times) != len(candidate_times) or not baseline_times:
        raise ValueError("need the same positive number of baseline and candidate times")
    ratios = sorted(c / b for b, c in zip(baseline_times, candidate_times))
    q1, median, q3 = _quartiles(ratios)
    return dict(ratio=round(median, 4), ratio_q1=round(q1, 4), ratio_q3=round(q3, 4), iqr=round(q3 - q1, 4),
                repeats=len(ratios), number=number,
                baseline_seconds=round(statistics.median(baseline_times) / number, 6),
                candidate_seconds=round(statistics.median(candidate_times) / number, 6))


def cuda_sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], number: int, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    sync()
    return time.perf_counter() - start


def paired_ratio(baseline: Callable[[], Any], candidate: Callable[[], Any], repeats: int = 20, warmup: int = 2,
                 min_sample_seconds: float = 0.0, sync: Callable[[], None] = cuda_sync) -> Dict[str, Any]:
    """Time ``baseline`` and ``candidate`` in alternation and summarise the paired ratios (paired_stats).

    Warm-up calls come first (allocator, thread pools, lazy initialisation). Each pair runs in the order
    A B, then B A, and so on, so a slow drift of the machine weighs on both sides alike. A call shorter than
    ``min_sample_seconds`` is repeated inside each timed sample (as timeit does), so the clock and the
    launch overhead of a tiny model do not decide the ratio."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    for _ in range(warmup):
        baseline()
        candidate()
    number = 1
    if min_sample_seconds > 0:
        slowest = max(_timed(baseline, 1, sync), _timed(candidate, 1, sync))
        number = max(1, math.ceil(min_sample_seconds / max(slowest, 1e-9)))
    base_times: List[float] = []
    cand_times: List[float] = []
    for i in range(repeats):
        if i % 2 == 0:
            base_times.append(_timed(baseline, number, sync))
            cand_times.append(_timed(candidate, number, sync))
        else:
            cand_times.append(_timed(candidate, number, sync))
            base_times.append(_timed(baseline, number, sync))
    return paired_stats(base_times, cand_times, number)


def with_flops(stats: Dict[str, Any], flops_ratio: Optional[float]) -> Dict[str, Any]:
    """A time ratio next to the FLOP ratio of the same comparison, and their quotient: 1.0 means the
    candidate costs exactly its extra arithmetic; above 1 is overhead the FLOPs do not explain."""
    out = dict(stats, flops_ratio=None if flops_ratio is None else round(flops_ratio, 4))
    out["time_over_flops"] = None if not flops_ratio else round(stats["ratio"] / flops_ratio, 4)
    return out


# --- memory and FLOPs ------------------------------------------------------------------------------------------------

def training_memory_bytes(model: nn.Module, make_batch: Callable[[], Any], loss_fn: Callable[[Any, Any], Any],
                          autocast: Optional[Callable[[], Any]] = None) -> Dict[str, int]:
    """Memory one training step needs, counted exactly: parameters, their gradients, and every tensor autograd
    saves for the backward pass (the activations). CPU allocators report no peak; this count does not
    depend on the allocator or on what else runs."""
    import contextlib

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
        with (autocast() if autocast else contextlib.nullcontext()):
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


# --- output ----------------------------------------------------------------------------------------------------------

def write_json_atomic(path: Path, payload: Dict[str, Any]) -> Path:
    """Write through a temporary file and a rename, so a run killed mid-write leaves the previous file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def write_result(name: str, payload: Dict[str, Any]) -> Path:
    return write_json_atomic(RESULTS / f"{name}.json", dict(payload, machine=run_metadata()))


def train_run(model: str, kwargs: Dict[str, Any], data: Sequence[str], seed: int, out: str,
              extra: Sequence[str] = ()) -> Dict[str, Any]:
    """One train.py run in this process (its results.json as a dict), in a run folder of its own under ``out``."""
    from collab_zoo.training.args import parse_args
    from collab_zoo.training.engine import run_training

    argv = ["--model", model, "--seed", str(seed), "--output", out, "--log-with", "none", "--cpu", *data, *extra]
    if kwargs:
        argv += ["--model-kwargs", *[f"{k}={v!r}" for k, v in kwargs.items()]]
    args = parse_args(argv)
    args.experiment = f"{model}-{seed}-{time.time_ns()}"
    return run_training(args)


def seed_summary(values: Sequence[float], digits: int = 3) -> Dict[str, Any]:
    """Mean, sample standard deviation and the values of one figure over seeds."""
    values = list(values)
    return dict(mean=round(statistics.mean(values), digits),
                std=round(statistics.stdev(values), digits) if len(values) > 1 else 0.0,
                values=[round(v, digits) for v in values])
