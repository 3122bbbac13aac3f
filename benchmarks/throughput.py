"""train.py's training throughput against a bare accelerate loop on the same model and data, in one run.

    python benchmarks/throughput.py [--quick]     # writes benchmarks/results/throughput.json

The bare loop is what a user would write from accelerate's examples: prepare the model, optimizer and a
shuffled DataLoader, then forward, loss, backward, step. train.py adds the contract's loss parts, per-head
accuracy, deterministic sharding, the scheduler and its logging; its own clock (train_seconds measured
around the training batches only) is compared with the bare loop's, alternating the two.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from typing import Any, Dict

import torch

from common import write_result  # noqa: E402

import collab_zoo  # noqa: E402
from collab_zoo.contract import loss_of  # noqa: E402
from collab_zoo.data import DataSpec, build_data  # noqa: E402
from collab_zoo.training.args import parse_args  # noqa: E402
from collab_zoo.training.engine import run_training  # noqa: E402


def bare_loop(model_name: str, epochs: int, batch: int, input_size: int) -> float:
    """Images per second of a minimal accelerate training loop."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    bundle = build_data(DataSpec(dataset="digits", input_size=input_size, in_chans=1))
    torch.manual_seed(0)
    model = collab_zoo.create_model(model_name, num_classes=10, in_chans=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=batch, shuffle=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    loss_fn = loss_of(accelerator.unwrap_model(model))
    seen, elapsed = 0, 0.0
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for images, target in loader:
            loss, _ = loss_fn(model(images), target)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seen += len(target)
        elapsed += time.perf_counter() - start
    return seen / elapsed


def train_py(model_name: str, epochs: int, batch: int, input_size: int, out: str) -> float:
    args = parse_args(["--model", model_name, "--dataset", "digits", "--input-size", str(input_size), "--epochs",
                       str(epochs), "-b", str(batch), "--output", out, "--log-with", "none", "--cpu"])
    args.experiment = f"bench-{time.time_ns()}"
    return run_training(args)["train_images_per_second"]


def main(argv=None) -> int:
    import os

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="dks_resnet32")
    args = parser.parse_args(argv)
    os.environ["COLLAB_ZOO_NO_PROGRESS"] = "1"
    epochs, repeats, size = (1, 2, 16) if args.quick else (2, 4, 16)
    bare, engine = [], []
    with tempfile.TemporaryDirectory() as out:
        bare_loop(args.model, 1, 64, size)  # warm-up: imports, allocator, thread pools
        for i in range(repeats):
            if i % 2 == 0:
                bare.append(bare_loop(args.model, epochs, 64, size))
                engine.append(train_py(args.model, epochs, 64, size, out))
            else:
                engine.append(train_py(args.model, epochs, 64, size, out))
                bare.append(bare_loop(args.model, epochs, 64, size))
    ratios = sorted(e / b for e, b in zip(engine, bare))
    result: Dict[str, Any] = dict(model=args.model, dataset="digits", input_size=size, batch=64, epochs=epochs,
                                  train_py_images_per_second=[round(v, 1) for v in engine],
                                  bare_images_per_second=[round(v, 1) for v in bare],
                                  ratio=round(statistics.median(ratios), 4),
                                  ratio_min=round(ratios[0], 4), ratio_max=round(ratios[-1], 4))
    print(f"train.py / bare accelerate loop, images per second: x{result['ratio']:.3f} "
          f"(range {result['ratio_min']:.3f}-{result['ratio_max']:.3f})")
    print(f"wrote {write_result('throughput', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
