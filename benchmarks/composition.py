"""Methods composed: what a complementary ensemble costs at inference, and a miniature of boosting DKS members.

    python benchmarks/composition.py forward [--quick]    # ensemble eval over separate member forwards
    python benchmarks/composition.py train [--quick]      # complementary x3 of dks_resnet20 vs of cifar_resnet20

``forward`` -> results/composition_forward.json: a complementary x4 ensemble in eval mode (every round complete, so
all four members and the Eq. 9 mixing run) against four separate forwards of the same member networks, timed in
alternation (paired ratios, median and quartiles; at 1 thread unless ``--threads``), for each of the ensemble's
member paths: ``separate`` (the CPU's choice under ``ensemble_forward="auto"``) and ``batched`` (one forward
vmapped over the stacked members, CUDA's choice). Issue 15's target: the chosen path <= 1.05x.

``train`` -> results/composition.json (``--quick``: results/composition_quick.json): complementary x3 of DKS ResNet-20 members (each round trains the member
with DKS's own loss, importance-weighted per image) against complementary x3 of plain CIFAR ResNet-20 members
(the released code's weighted cross-entropy), on the built-in digits, 3 seeds, same schedule; the test top-1 of
each round's member and of the ensemble after every round. Reported whatever comes out.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import paired_ratio, results_dir, run_metadata, write_json_atomic  # noqa: E402

import collab_zoo  # noqa: E402

# (ensemble, input shape, batch, paths to time); ResNet-50 only in full runs and only by separate forwards
# (the batched path is several times slower on a CPU: the ResNet-56 row shows it at a fraction of the time).
FORWARD_ROWS = [
    ("complementary_mlp_x4", (1, 28, 28), 16, ("separate", "batched")),
    ("complementary_resnet56_x4", (3, 32, 32), 16, ("separate", "batched")),
    ("complementary_resnet50_x4", (3, 128, 128), 4, ("separate",)),
]


def _finished_ensemble(name: str, path: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = collab_zoo.create_model(name, ensemble_forward=path)
    with torch.no_grad():
        model.gammas.copy_(torch.tensor([0.3, 0.35, 0.4, 0.45]))
        model.rounds_completed.fill_(4)
    return model.eval()


def forward_row(name: str, shape, batch: int, paths, repeats: int, device: str) -> Dict[str, Any]:
    row: Dict[str, Any] = dict(model=name, input=list(shape), batch=batch, device=device)
    images = torch.randn(batch, *shape, device=device)
    for path in paths:
        ensemble = _finished_ensemble(name, path).to(device)
        singles = [copy.deepcopy(member).eval() for member in ensemble.members]

        def separate_forwards():
            with torch.no_grad():
                for net in singles:
                    net(images)

        def ensemble_eval():
            with torch.no_grad():
                ensemble(images)

        with torch.no_grad():
            reference = _finished_ensemble(name, "separate").to(device)
            assert torch.allclose(ensemble(images), reference(images), atol=1e-4)
        row[path] = paired_ratio(separate_forwards, ensemble_eval, repeats=repeats, warmup=2, min_sample_seconds=0.05)
        print(f"{name} {path}: x{row[path]['ratio']} (IQR {row[path]['ratio_q1']}-{row[path]['ratio_q3']})",
              flush=True)
    return row


def run_forward(args) -> Path:
    torch.set_num_threads(args.threads)
    repeats = 5 if args.quick else 20
    cuda = args.device.startswith("cuda")
    rows = [forward_row(name, shape, batch, ("separate", "batched") if cuda else paths, repeats, args.device)
            for name, shape, batch, paths in FORWARD_ROWS if not (args.quick and name == "complementary_resnet50_x4")]
    payload = dict(what="complementary x4 eval over four separate forwards of its members (paired ratios)",
                   target="<= 1.05 by the path ensemble_forward='auto' picks on this device (cpu: separate, "
                          "cuda: batched)",
                   threads=args.threads, repeats=repeats, rows=rows, machine=run_metadata())
    name = "composition_forward" + ("_cuda" if cuda else "")
    path = results_dir(args.quick) / f"{name}.json"
    write_json_atomic(path, payload)
    print(f"wrote {path}")
    return path


# --- the training miniature -----------------------------------------------------------------------------------------

def _loaders(quick: bool):
    """The built-in digits (train.py's ``--dataset digits``: scikit-learn's real 8x8 digits, its fixed 1,438 / 359
    split) upsampled to 32x32, 3 channels; 300 training images held out for the rounds' per-class errors."""
    from collab_zoo.data.builtin import digits_split, upsample

    def tensors(split):
        data = digits_split(split)
        images = (upsample(data.images, 32) - 0.5) / 0.5
        return images.expand(-1, 3, -1, -1).contiguous(), data.labels

    (x, y), test = tensors("train"), tensors("test")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))  # one split for every seed
    held, train = order[:300], order[300:]
    if quick:
        train = train[:500]
    return (x[train], y[train]), (x[held], y[held]), test


def _top1(scores: torch.Tensor, y: torch.Tensor) -> float:
    return round(100.0 * float((scores.argmax(-1) == y).float().mean()), 2)


def _predict(module: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        return torch.cat([module(x[i:i + batch]) for i in range(0, len(x), batch)])


def train_ensemble(member: str, seed: int, epochs: int, quick: bool) -> Dict[str, Any]:
    (x_train, y_train), (x_held, y_held), (x_test, y_test) = _loaders(quick)
    torch.manual_seed(seed)
    model = collab_zoo.create_model("complementary", member=member, tau=3, num_classes=10)
    record: Dict[str, Any] = dict(member=member, seed=seed, rounds=[])
    started = time.perf_counter()
    for t in range(model.num_rounds):
        step = model.training_round(t)
        module = step.module
        steps_per_epoch = max(1, len(x_train) // 64)
        # AdamW at a constant rate: SGD with a one-cycle peak of 0.1 diverged to chance in a few dozen steps.
        optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3, weight_decay=5e-4)
        generator = torch.Generator().manual_seed(seed * 100 + t)
        for _ in range(epochs):
            module.train()
            order = torch.randperm(len(x_train), generator=generator)
            for b in range(steps_per_epoch):
                idx = order[b * 64:(b + 1) * 64]
                loss, _ = step.loss(module(x_train[idx]), y_train[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        log = model.complete_round(t, (_predict(module, x_held),), y_held)
        record["rounds"].append(dict(round=t + 1, member_top1=_top1(_predict(module, x_test), y_test),
                                     ensemble_top1=_top1(_predict(model, x_test), y_test),
                                     gamma=round(log["gamma"], 5), weighted_error=round(log["weighted_error"], 5)))
        print(f"{member} seed {seed} round {t + 1}: {record['rounds'][-1]}", flush=True)
    record["seconds"] = round(time.perf_counter() - started, 1)
    return record


def run_train(args) -> Path:
    torch.set_num_threads(args.threads)
    epochs = 5 if args.quick else 12
    runs: List[Dict[str, Any]] = []
    for seed in range(3):
        for member in ("dks_resnet20", "cifar_resnet20"):
            runs.append(train_ensemble(member, seed, epochs, args.quick))
    summary = {}
    for member in ("dks_resnet20", "cifar_resnet20"):
        finals = [r["rounds"][-1]["ensemble_top1"] for r in runs if r["member"] == member]
        firsts = [r["rounds"][0]["member_top1"] for r in runs if r["member"] == member]
        summary[member] = dict(ensemble_top1_mean=round(statistics.mean(finals), 2),
                               ensemble_top1_sd=round(statistics.stdev(finals), 2), ensemble_top1=finals,
                               round1_member_top1_mean=round(statistics.mean(firsts), 2))
    payload = dict(what="complementary x3 (tau=3) of dks_resnet20 vs cifar_resnet20 on the built-in digits (10 "
                        "classes, 32x32; 1,138 train / 300 held-out / 359 test images, 500 train with --quick)",
                   epochs_per_round=epochs, batch=64, optimizer="AdamW lr 2e-3, weight decay 5e-4",
                   seeds=[0, 1, 2], threads=args.threads, summary=summary, runs=runs, machine=run_metadata())
    # A quick run is recorded too, under its own name (results/quick/ is git-ignored).
    path = results_dir(False) / ("composition_quick.json" if args.quick else "composition.json")
    write_json_atomic(path, payload)
    print(f"wrote {path}: {summary}")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["forward", "train"])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer repeats / epochs, results/quick/")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="forward only: cuda times both member paths on the GPU "
                        "(results/composition_forward_cuda.json)")
    args = parser.parse_args(argv)
    (run_forward if args.what == "forward" else run_train)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
