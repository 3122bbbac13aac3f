"""What each method costs, as ratios against its plain backbone (or timm), measured side by side in one run.

    python benchmarks/cost.py                      # every row, at 1 thread and at all cores -> results/cost.json
    python benchmarks/cost.py --only dcl_lenet     # one row (or several); rows measured before stay in the file
    python benchmarks/cost.py --threads 1          # one thread count (the other's rows stay)
    python benchmarks/cost.py --resume             # the rows the file lacks (a run that stopped, or was split)
    python benchmarks/cost.py --fresh              # start the file over instead of merging into it
    python benchmarks/cost.py --check              # each of issue 15's targets, PASS or FAIL, from the file
    python benchmarks/cost.py --quick ...          # a smoke run: small inputs, 3 repeats, results/quick/

Rows (``--list`` prints them):
- one per method model over its plain backbone, same batch: train step time, training memory (parameters +
  gradients + saved activations) and FLOPs; eval time; an exported DKS model's eval time (must be 1.00x);
- dcl_alexnet_paper: params and forward/train-step time of dcl_alexnet over alexnet_caffe at 1,000 classes
  (the paper: 16.82 % fewer parameters, 6.13 % less training time);
- complementary_resnet50_x4: its eval over four separate resnet50 forwards of the same weights;
- pretrained_loading: create_model(pretrained=True) from a warm Hub cache over timm's own load of the same file;
- train_py_throughput: train.py's time per image over a bare accelerate loop's, same model and data;
- builtin_data: seconds a fresh process spends building a built-in data set (the second time: any cache warm).

Every time is the median of >= 20 paired ratios (candidate/baseline, alternating, after a warm-up) with the
25th-75th percentile, and sits next to the FLOP ratio of the same comparison: time/FLOPs near 1 means a
method costs what its arithmetic costs. The file records the commit, the command, threads, batch, load
average, library versions and CPU model of every run that wrote into it; each row names its run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from common import (ROOT, forward_flops, load_average, machine_cores, paired_ratio,  # noqa: E402
                    results_dir, run_metadata, train_step_flops, training_memory_bytes, with_flops,
                    write_json_atomic)

import collab_zoo  # noqa: E402
import timm  # noqa: E402
from collab_zoo.contract import (complete_round_of, heads_of, num_rounds_of,  # noqa: E402
                                 training_round_of)

FORMAT = 2  # format 1 (before issue 15): one "pairs" list, 2 threads only, no commit; tables.py still reads it

# (method model, plain baseline, input size): every registered family, at its paper's input size.
PAIRS: List[Tuple[str, str, int]] = [
    ("dks_resnet18", "resnet18", 224),
    ("dks_resnet32", "cifar_resnet32", 32),
    ("dks_wrn28_4", "wrn28_4", 32),
    ("dks_densenet40_k12", "densenet40_k12", 32),
    ("dks_mobilenet", "mobilenet_cifar", 32),
    ("cldl_nin", "nin", 32),
    ("cldl_vgg11", "vgg11", 224),
    ("cldl_googlenet", "googlenet", 224),
    ("dcl_lenet", "lenet", 28),
    ("dcl_lenet_cifar", "lenet_cifar", 32),
    ("dcl_bignet", "bignet", 24),
    ("dcl_wrn16", "wrn16_4", 32),
    ("dcl_alexnet", "alexnet_caffe", 227),
    ("complementary_resnet56_x4", "cifar_resnet56", 32),
]
OTHER_ROWS = ["dcl_alexnet_paper", "complementary_resnet50_x4", "pretrained_loading", "train_py_throughput",
              "builtin_data"]
ROWS = [p[0] for p in PAIRS] + OTHER_ROWS
GROUPS = {"pairs": [p[0] for p in PAIRS], "all": ROWS}
DEFAULT_PATH = "cost.json"


@dataclass
class Settings:
    """How a run measures: the device, the AMP dtype (None: float32), repeats, and the quick (smoke) sizes."""
    quick: bool = False
    repeats: int = 20
    warmup: int = 2
    device: str = "cpu"
    amp_dtype: Optional[str] = None
    # A call shorter than this is repeated inside each timed sample (see common.paired_ratio).
    min_sample_seconds: float = 0.05
    batch: Optional[int] = None  # None: the per-size default below
    extra: Dict[str, Any] = field(default_factory=dict)
    script: Optional[str] = None  # what ran, for the record: the script and the argv its main() was given
    argv: Optional[List[str]] = None

    def batch_for(self, size: int) -> int:
        if self.batch:
            return self.batch
        if self.device != "cpu" and not self.quick:
            return 64 if size > 64 else 128
        # Small inputs get bigger batches, so a step lasts long enough for the timer to resolve it.
        return (8 if self.quick else 16) if size > 64 else (16 if self.quick else 64)

    def size_for(self, plain: str, size: int) -> int:
        # AlexNet's fully connected layers fix its input at 227; quick runs shrink every other large input.
        return size if not self.quick or size <= 64 or "alexnet" in plain else 64

    def autocast(self):
        if not self.amp_dtype:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=getattr(torch, self.amp_dtype))

    def scaler(self):
        """float16 on a GPU needs loss scaling to train; bfloat16 and float32 do not."""
        if self.amp_dtype == "float16" and torch.device(self.device).type == "cuda":
            return torch.amp.GradScaler("cuda")
        return None

    def sync(self) -> None:
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()

    def time(self, baseline: Callable[[], Any], candidate: Callable[[], Any], flops_ratio: Optional[float],
             repeats: Optional[int] = None) -> Dict[str, Any]:
        stats = paired_ratio(baseline, candidate, repeats=repeats or self.repeats, warmup=self.warmup,
                             min_sample_seconds=self.min_sample_seconds, sync=self.sync)
        return with_flops(stats, flops_ratio)


# --- the measured callables ------------------------------------------------------------------------------------------

def _inputs(model, size: int, batch: int, device: str):
    chans = model.pretrained_cfg["input_size"][0]
    return (torch.randn(batch, chans, size, size, device=device),
            torch.randint(0, model.num_classes, (batch,), device=device))


def _optimizer(params):
    # lr 0 keeps the weights fixed, so every repeat does the same arithmetic on the same numbers (no drift
    # towards denormals or a diverging loss on random labels); SGD still runs every one of its updates.
    return torch.optim.SGD(params, lr=0.0, momentum=0.9)


def _round(model):
    """The first round's module and loss, as train.py trains it (the whole model for most methods, one member
    for boosting)."""
    return training_round_of(model, 0)


def _step(model, images, target, s: Settings):
    round_ = _round(model)
    module, loss_fn = round_.module, round_.loss
    optimizer, scaler = _optimizer(module.parameters()), s.scaler()

    def run():
        module.train()
        optimizer.zero_grad(set_to_none=True)
        with s.autocast():
            loss = loss_fn(module(images), target)[0]
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    return run


def _eval(model, images, s: Settings):
    def run():
        model.eval()
        with torch.no_grad(), s.autocast():
            model(images)
    return run


def _loss_only(model):
    fn = _round(model).loss
    return lambda outputs, target: fn(outputs, target)[0]


def _complete_every_round(model, images, target) -> None:
    """Eval cost is that of the finished model: a boosting ensemble with all its rounds, so every member runs.
    Rounds are completed through the contract with held-out predictions (here: this batch)."""
    for index in range(num_rounds_of(model)):
        round_ = training_round_of(model, index)
        round_.module.eval()
        with torch.no_grad():
            heads = heads_of(round_.module(images))
        complete_round_of(model, index, heads, target)


def _cuda_peak_bytes(step: Callable[[], Any]) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def _free(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# --- the rows --------------------------------------------------------------------------------------------------------

def measure_pair(method: str, plain: str, size: int, s: Settings) -> Dict[str, Any]:
    size = s.size_for(plain, size)
    batch = s.batch_for(size)
    torch.manual_seed(0)
    m = collab_zoo.create_model(method, num_classes=100).to(s.device)
    b = collab_zoo.create_model(plain, num_classes=100).to(s.device)
    images, target = _inputs(b, size, batch, s.device)
    _complete_every_round(m, images, target)
    row: Dict[str, Any] = dict(method=method, baseline=plain, input=size, batch=batch,
                               params=sum(p.numel() for p in m.parameters()),
                               baseline_params=sum(p.numel() for p in b.parameters()))
    train_flops = (train_step_flops(_round(m).module, images, target, _loss_only(m)) /
                   train_step_flops(b, images, target, _loss_only(b)))
    eval_flops = forward_flops(m, images) / forward_flops(b, images)
    row.update(train_flops_ratio=round(train_flops, 4), eval_flops_ratio=round(eval_flops, 4))
    batch_of = lambda: (images, target)  # noqa: E731
    mem_m = training_memory_bytes(_round(m).module, batch_of, _loss_only(m), s.autocast)
    mem_b = training_memory_bytes(b, batch_of, _loss_only(b), s.autocast)
    row.update(train_memory_ratio=round(mem_m["total"] / mem_b["total"], 4), train_memory_bytes=mem_m["total"],
               baseline_train_memory_bytes=mem_b["total"])
    step_m, step_b = _step(m, images, target, s), _step(b, images, target, s)
    if torch.device(s.device).type == "cuda":
        step_m(), step_b()  # the optimizer's state exists before the peak is read
        row["cuda_peak_memory_ratio"] = round(_cuda_peak_bytes(step_m) / _cuda_peak_bytes(step_b), 4)
    row["train_step_time"] = s.time(step_b, step_m, train_flops)
    row["eval_time"] = s.time(_eval(b, images, s), _eval(m, images, s), eval_flops)
    if hasattr(m, "export"):
        exported = m.export().to(s.device)
        export_flops = forward_flops(exported, images) / forward_flops(b, images)
        row["exported_eval_time"] = s.time(_eval(b, images, s), _eval(exported, images, s), export_flops)
    del m, b
    _free(s.device)
    return row


def dcl_alexnet_paper(s: Settings) -> Dict[str, Any]:
    """The DCL paper's own AlexNet comparison: 1,000 classes, the paper's widths."""
    torch.manual_seed(0)
    dcl = collab_zoo.create_model("dcl_alexnet").to(s.device)
    base = collab_zoo.create_model("alexnet_caffe").to(s.device)
    batch = s.batch or (4 if s.quick else 16)
    images = torch.randn(batch, 3, 227, 227, device=s.device)
    target = torch.randint(0, 1000, (batch,), device=s.device)
    weights = lambda m: sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight"))  # noqa: E731
    out = dict(input=227, batch=batch, params=sum(p.numel() for p in dcl.parameters()),
               baseline_params=sum(p.numel() for p in base.parameters()), weights_removed=weights(base) - weights(dcl))
    out["params_ratio"] = round(out["params"] / out["baseline_params"], 4)
    eval_flops = forward_flops(dcl, images) / forward_flops(base, images)
    train_flops = (train_step_flops(dcl, images, target, _loss_only(dcl)) /
                   train_step_flops(base, images, target, _loss_only(base)))
    out["forward_time"] = s.time(_eval(base, images, s), _eval(dcl, images, s), eval_flops)
    out["train_step_time"] = s.time(_step(base, images, target, s), _step(dcl, images, target, s), train_flops)
    out["paper"] = dict(params_ratio=51.86 / 62.35, train_time_ratio=5.67 / 6.04)
    del dcl, base
    _free(s.device)
    return out


def complementary_ensemble(s: Settings) -> Dict[str, Any]:
    """complementary_resnet50_x4 in eval against four separate resnet50 forwards of the same weights."""
    torch.manual_seed(0)
    ensemble = collab_zoo.create_model("complementary_resnet50_x4")
    for t in range(4):  # as if all four rounds were complete
        ensemble.gammas[t] = 0.3 + 0.1 * t
    ensemble.rounds_completed.fill_(4)
    ensemble.to(s.device)
    singles = []
    for member in ensemble.members:
        net = timm.create_model("resnet50")
        net.load_state_dict(member.state_dict())
        singles.append(net.to(s.device).eval())
    size = 128 if s.quick else 224
    batch = s.batch or (4 if s.quick else 8)
    images = torch.randn(batch, 3, size, size, device=s.device)

    def four_forwards():
        with torch.no_grad(), s.autocast():
            for net in singles:
                net(images)
    flops = forward_flops(ensemble, images) / sum(forward_flops(net, images) for net in singles)
    out = dict(input=size, batch=batch, eval_time=s.time(four_forwards, _eval(ensemble, images, s), flops))
    singles.clear()  # free the GPU memory before the next row
    del ensemble
    _free(s.device)
    return out


_LOADING = r"""
import json, os, sys, tempfile, socket, time
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
os.environ.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_CACHE=tempfile.mkdtemp(), HF_TOKEN="hf_bench",
                  HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
root, repeats, warmup, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, root); sys.path.insert(0, os.path.join(root, "benchmarks"))
from collab_zoo.loopback_hub import LoopbackHub
hub = LoopbackHub(port=port).start()
import torch, timm, collab_zoo
torch.set_num_threads(threads)
from common import paired_ratio
torch.manual_seed(0)
model = collab_zoo.create_model("dks_resnet50")
info = collab_zoo.push_to_hub(model, "bench/dks_resnet50")
folder = collab_zoo.save_for_hub(model, tempfile.mkdtemp())
sha = json.load(open(folder / "config.json"))["collab_zoo"]["sha256"]
config = json.load(open(os.path.join(root, "hub_configs", "dks_resnet50.in1k.json")))
config.update(model="dks_resnet50.bench", hf_hub_id="bench/dks_resnet50", revision=info.oid, sha256=sha)
collab_zoo.register_hub_config(config)
from timm.models._hub import load_state_dict_from_hf
def zoo():
    return collab_zoo.create_model("dks_resnet50.bench", pretrained=True)
def plain():
    # The same model built the same way, its weights fetched and loaded by timm's own Hub loader instead.
    model = collab_zoo.create_model("dks_resnet50")
    state = load_state_dict_from_hf(f"bench/dks_resnet50@{info.oid}", "model.safetensors")
    model.load_state_dict({f"backbone.{k}" if not k.startswith("backbone.") else k: v for k, v in state.items()},
                          strict=False)
    return model
zoo()
result = paired_ratio(plain, zoo, repeats=repeats, warmup=warmup)
from collab_zoo.weights import sha256_of
path = next(p for p in __import__("pathlib").Path(os.environ["HF_HUB_CACHE"]).rglob("model.safetensors"))
start = time.perf_counter(); sha256_of(path); result["sha256_seconds"] = round(time.perf_counter() - start, 4)
result["file_mb"] = round(path.stat().st_size / 1e6, 1)
print(json.dumps(result))
"""


def _python(code: str, *args: str, timeout: int = 1800) -> str:
    """Run ``code`` in a fresh interpreter; its last stdout line is the answer."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return out.stdout.strip().splitlines()[-1]


def loading(s: Settings) -> Dict[str, Any]:
    """create_model(pretrained=True) from a warm Hub cache (sha256 checked) over timm's load of the same file."""
    result = json.loads(_python(_LOADING, str(ROOT), str(s.repeats), str(s.warmup), str(torch.get_num_threads())))
    return dict(note="both build dks_resnet50 and read the same warm-cache safetensors; the zoo's path checks the "
                     "file's sha256 and header and loads strictly with its key checks, timm's "
                     "load_state_dict_from_hf just reads it", time=with_flops(result, None))


def throughput(s: Settings) -> Dict[str, Any]:
    import throughput as tp

    # A GPU goes through an epoch of the small built-in set in a fraction of a second: more epochs per run.
    epochs = 1 if s.quick else 2 if s.device == "cpu" else 5
    batch = s.batch or (64 if s.device == "cpu" else 128)
    size = 16 if s.device == "cpu" else 32
    return tp.measure("dks_resnet32", epochs=epochs, batch=batch, input_size=size, repeats=s.repeats,
                      device=s.device, amp_dtype=s.amp_dtype)


_DATA_BUILD = r"""
import sys, time
import torch
torch.set_num_threads(int(sys.argv[2]))
from collab_zoo.data import DataSpec, build_data
spec = DataSpec(**__import__("json").loads(sys.argv[1]))
start = time.perf_counter()
build_data(spec)
print(time.perf_counter() - start)
"""

# The built-in sets the reproductions use: the default one, and the largest (issue 15: 3.6 s to regenerate).
DATA_SPECS = {"digits 32x32": dict(dataset="digits", input_size=32),
              "multidigit-III level 5, 10,000 + 2,000 images at 28x28":
                  dict(dataset="multidigit-III", md_level=5, md_train_size=10000, md_test_size=2000, input_size=28)}


def builtin_data(s: Settings) -> Dict[str, Any]:
    """Seconds build_data takes in a fresh process (what a second `python train.py` spends building data):
    one run first, which fills any cache, then the median of the runs after it."""
    runs = 2 if s.quick else 5
    threads = str(torch.get_num_threads())
    out: Dict[str, Any] = dict(note="seconds inside build_data in a fresh interpreter, after one earlier run "
                                    "(imports of torch and collab_zoo excluded)", runs=runs, sets={})
    for label, spec in DATA_SPECS.items():
        first = float(_python(_DATA_BUILD, json.dumps(spec), threads))
        later = [float(_python(_DATA_BUILD, json.dumps(spec), threads)) for _ in range(runs)]
        out["sets"][label] = dict(spec=spec, first_seconds=round(first, 4),
                                  seconds=round(statistics.median(later), 4),
                                  all_seconds=[round(v, 4) for v in later])
    return out


def measure_row(name: str, s: Settings) -> Dict[str, Any]:
    pairs = {p[0]: p for p in PAIRS}
    if name in pairs:
        return measure_pair(*pairs[name], s)
    return {"dcl_alexnet_paper": dcl_alexnet_paper, "complementary_resnet50_x4": complementary_ensemble,
            "pretrained_loading": loading, "train_py_throughput": throughput,
            "builtin_data": builtin_data}[name](s)


def summary_line(name: str, row: Dict[str, Any]) -> str:
    """One printed line per row: each time ratio with its IQR and, in brackets, its FLOP ratio."""
    parts = []
    for key, label in (("train_step_time", "train"), ("eval_time", "eval"), ("exported_eval_time", "exported eval"),
                       ("forward_time", "forward"), ("time", "time"), ("time_per_image", "time/image")):
        if key in row:
            st = row[key]
            flops = f" (FLOPs x{st['flops_ratio']:.2f})" if st.get("flops_ratio") else ""
            parts.append(f"{label} x{st['ratio']:.3f} [{st['ratio_q1']:.3f}-{st['ratio_q3']:.3f}]{flops}")
    if "train_memory_ratio" in row:
        parts.append(f"memory x{row['train_memory_ratio']:.2f}")
    for label, entry in row.get("sets", {}).items():
        parts.append(f"{label}: {entry['seconds']:.3f} s (first {entry['first_seconds']:.3f} s)")
    return f"{name:28s} " + "  ".join(parts)


# --- the results file ------------------------------------------------------------------------------------------------

def new_document() -> Dict[str, Any]:
    return dict(format=FORMAT, runs={}, configs={})


def load_document(path: Path) -> Optional[Dict[str, Any]]:
    """The results file if it is in this format; None if it is missing or older."""
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    return doc if doc.get("format") == FORMAT else None


def run_rows(names: List[str], configs: List[Tuple[str, Dict[str, Any], Callable[[], None]]], s: Settings,
             path: Path, fresh: bool = False, resume: bool = False) -> int:
    """Measure ``names`` under each config (key, settings to record, function that applies them), writing the
    file after every row so a stopped run keeps what it measured. A row measured again replaces its old
    entry; the others stay, each naming the run (commit, command) it came from, unless ``fresh``. Returns
    the number of rows that failed."""
    doc = None if fresh else load_document(path)
    if doc is None:
        if not fresh and path.exists():
            print(f"{path} was written by the old cost.py (no commit, no thread counts): starting a new file",
                  flush=True)
        doc = new_document()
    run_id = stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    while run_id in doc["runs"]:  # two runs in one second from one process (main() called twice)
        run_id = f"{stem}-{len(doc['runs'])}"
    doc["runs"][run_id] = run_metadata(s.script, s.argv, quick=s.quick, repeats=s.repeats, warmup=s.warmup,
                                       batch=s.batch or "per input size (each row's batch)", device=s.device,
                                       amp_dtype=s.amp_dtype, min_sample_seconds=s.min_sample_seconds,
                                       rows=names, configs=[c[0] for c in configs], **s.extra)
    failed = []
    for key, recorded, apply in configs:
        apply()
        config = doc["configs"].setdefault(key, dict(settings=recorded, rows={}))
        config["settings"] = recorded
        for name in names:
            if resume and name in config["rows"]:
                continue
            load = load_average()
            started = time.time()
            try:
                row = measure_row(name, s)
            except Exception:  # one broken row must not cost the rows around it; the exit code reports it
                traceback.print_exc()
                failed.append(f"{key}/{name}")
                continue
            row.update(run=run_id, load_average_at_start=load, seconds=round(time.time() - started, 1))
            config["rows"][name] = row
            write_json_atomic(path, doc)
            print(f"[{key}] {summary_line(name, row)}", flush=True)
    doc["runs"][run_id]["failed_rows"] = failed
    write_json_atomic(path, doc)
    print(f"wrote {path}" + (f"; FAILED rows: {', '.join(failed)}" if failed else ""), flush=True)
    return len(failed)


def thread_configs(threads: List[int]) -> List[Tuple[str, Dict[str, Any], Callable[[], None]]]:
    return [(f"threads={t}", dict(device="cpu", threads=t), lambda t=t: torch.set_num_threads(t)) for t in threads]


# --- issue 15's targets ----------------------------------------------------------------------------------------------

def _fmt(st: Dict[str, Any]) -> str:
    return f"x{st['ratio']:.3f} [IQR {st['ratio_q1']:.3f}-{st['ratio_q3']:.3f}, n={st['repeats']}]"


def targets(rows: Dict[str, Dict[str, Any]]) -> List[Tuple[Optional[bool], str, str]]:
    """(passed, target, measured) for each of issue 15's done-when targets this config's rows can answer;
    passed is None where the row is missing."""
    out: List[Tuple[Optional[bool], str, str]] = []

    def at_most(label: str, row: Optional[Dict[str, Any]], key: str, limit: float, of_flops: bool = False) -> None:
        if row is None or key not in row:
            out.append((None, label, "not measured"))
            return
        st = row[key]
        bound = limit * st["flops_ratio"] if of_flops else limit
        detail = _fmt(st) + (f", FLOPs x{st['flops_ratio']:.3f} -> limit {bound:.3f}" if of_flops else "")
        out.append((st["ratio"] <= bound, label, detail))

    dcl = [p for p in PAIRS if p[0].startswith("dcl_")]
    at_most("dcl_lenet eval <= 1.20x lenet", rows.get("dcl_lenet"), "eval_time", 1.20)
    for method, plain, _ in dcl:
        for key, what in (("eval_time", "eval"), ("train_step_time", "train step")):
            at_most(f"{method} {what} <= 1.10x its FLOP ratio over {plain}", rows.get(method), key, 1.10, True)
    for method, plain, _ in (p for p in PAIRS if p[0].startswith("dks_")):
        row = rows.get(method)
        at_most(f"{method} train step <= 1.10x its FLOP ratio over {plain}", row, "train_step_time", 1.10, True)
        label = f"{method} exported eval 1.00x +-3% of {plain}"
        if row is None or "exported_eval_time" not in row:
            out.append((None, label, "not measured"))
        else:
            st = row["exported_eval_time"]
            out.append((0.97 <= st["ratio"] <= 1.03, label, _fmt(st)))
    at_most("cldl_nin eval <= 1.25x nin", rows.get("cldl_nin"), "eval_time", 1.25)
    at_most("complementary_resnet50_x4 eval <= 1.05x four resnet50 forwards", rows.get("complementary_resnet50_x4"),
            "eval_time", 1.05)
    data = rows.get("builtin_data")
    for label in DATA_SPECS:
        entry = (data or {}).get("sets", {}).get(label)
        text = f"a second fresh-process build of {label} < 0.2 s"
        out.append((None, text, "not measured") if entry is None else
                   (entry["seconds"] < 0.2, text, f"{entry['seconds']:.3f} s (first {entry['first_seconds']:.3f} s)"))
    return out


def _timings(row: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [v for v in row.values() if isinstance(v, dict) and "repeats" in v and "ratio" in v]


def provenance(doc: Dict[str, Any], rows: Dict[str, Dict[str, Any]],
               threads: Optional[int] = None) -> List[Tuple[Optional[bool], str, str]]:
    """Whether the numbers are citable: >= 20 repeats, a recorded commit, a clean tree, a full (not quick) run."""
    runs = [doc["runs"].get(r.get("run"), {}) for r in rows.values()]
    few = sorted(name for name, row in rows.items() if any(t["repeats"] < 20 for t in _timings(row)))
    commits = sorted({r.get("commit") or "none" for r in runs})
    out = [(not few, "every timed comparison has >= 20 paired repeats", "all do" if not few else f"fewer in {few}"),
           (all(r.get("commit") for r in runs), "every row records its commit", ", ".join(c[:12] for c in commits)),
           (not any(r.get("dirty") for r in runs), "every row was measured on a clean tree",
            "clean" if not any(r.get("dirty") for r in runs) else "dirty tree in some runs"),
           (not any(r.get("quick") for r in runs), "no row comes from a --quick smoke run",
            "none" if not any(r.get("quick") for r in runs) else "some rows are --quick")]
    cores = max((r.get("cores") or 1 for r in runs), default=1)
    # The 1-minute load at a row's start still holds the previous row's own threads: a run at 2 threads loads 2
    # cores by itself. Quiet means nothing else ran: at most this run's threads (else half the cores) plus 0.5.
    limit = (threads if threads else 0.5 * cores) + 0.5
    busy = sorted(n for n, row in rows.items() if (row.get("load_average_at_start") or [0])[0] > limit)
    out.append((not busy, f"the machine was quiet at each row's start (1-min load <= {limit:g}: this run's "
                f"threads + 0.5)", "yes" if not busy else f"busy before {busy}"))
    return out


def check_report(doc: Dict[str, Any], path: Path) -> str:
    lines = [f"{path}: issue 15's targets (a report of the measured numbers, not a test)"]
    word = {True: "PASS", False: "FAIL", None: "----"}
    for key, config in doc["configs"].items():
        rows = config["rows"]
        lines += ["", f"[{key}] {len(rows)} rows"]
        for passed, label, detail in targets(rows) + provenance(doc, rows, config["settings"].get("threads")):
            lines.append(f"  {word[passed]}  {label}: {detail}")
    return "\n".join(lines)


def check(path: Path) -> int:
    doc = load_document(path)
    if doc is None:
        print(f"{path}: missing, or written by the old cost.py (no commit, no thread counts); measure first "
              f"(python benchmarks/cost.py, or gpu.py for gpu.json)", file=sys.stderr)
        return 2
    print(check_report(doc, path))
    return 0


# --- command line ----------------------------------------------------------------------------------------------------

def parse_rows(names: Optional[List[str]]) -> List[str]:
    if not names:
        return list(ROWS)
    chosen: List[str] = []
    for name in names:
        expanded = GROUPS.get(name, [name])
        unknown = [n for n in expanded if n not in ROWS]
        if unknown:
            raise SystemExit(f"cost.py: unknown row {unknown[0]!r}; rows are: {', '.join(ROWS)} (or: pairs, all)")
        chosen += [n for n in expanded if n not in chosen]
    return chosen


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smoke run: small inputs, 3 repeats, results/quick/")
    parser.add_argument("--only", nargs="+", default=None, metavar="ROW",
                        help="measure only these rows (see --list; or: pairs, all)")
    parser.add_argument("--resume", action="store_true", help="measure only the rows the results file lacks")
    parser.add_argument("--fresh", action="store_true",
                        help="start the results file over (default: merge, replacing the rows measured again)")
    parser.add_argument("--repeats", type=int, default=None, help="paired repeats per comparison (default 20; "
                                                                  "--quick: 3)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls of each side (default 2; --quick: 1)")
    parser.add_argument("--batch", type=int, default=None, help="one batch size for every row (default: per size)")
    parser.add_argument("--out", type=Path, default=None, help="results file (default benchmarks/results/NAME.json)")
    parser.add_argument("--check", action="store_true", help="print each target PASS/FAIL from the results file")
    parser.add_argument("--list", action="store_true", help="print the row names and exit")


def settings_from(args, script: str, argv: Optional[List[str]], **kw) -> Settings:
    repeats = args.repeats or (3 if args.quick else 20)
    if repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    return Settings(quick=args.quick, repeats=repeats, warmup=warmup, batch=args.batch, script=script,
                    argv=None if argv is None else list(argv), **kw)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(parser)
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help=f"torch thread counts to measure at (default: 1 and this machine's {machine_cores()})")
    args = parser.parse_args(argv)
    path = args.out or results_dir(args.quick) / DEFAULT_PATH
    if args.list:
        print("\n".join(ROWS))
        return 0
    if args.check:
        return check(path)
    names = parse_rows(args.only)
    threads = args.threads or sorted({1, machine_cores()})
    if any(t < 1 for t in threads):
        raise SystemExit("--threads takes positive counts")
    s = settings_from(args, "cost.py", argv, extra=dict(threads=threads))
    failed = run_rows(names, thread_configs(threads), s, path, fresh=args.fresh, resume=args.resume)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
