"""train.py's training throughput against a bare accelerate loop on the same model and data, in one run.

    python benchmarks/throughput.py [--quick] [cost.py's options]   # = cost.py --only train_py_throughput

The measurement is one row of cost.py (CPU, per thread count) and of gpu.py (GPU, AMP); this module holds
its two sides. The bare loop is what a user would write from accelerate's examples: prepare the model,
optimizer and a shuffled DataLoader, then forward, loss, backward, step. train.py adds the contract's loss
parts, per-head accuracy, deterministic sharding, the scheduler and its logging; its own clock
(train_seconds, measured around the training batches only) is set against the bare loop's, the two run
in alternation.
"""
from __future__ import annotations

import sys
import tempfile
import time
from typing import Any, Dict, Optional

import torch

from common import paired_stats  # noqa: E402  (puts the repository on sys.path)

import collab_zoo  # noqa: E402
from collab_zoo.contract import loss_of  # noqa: E402
from collab_zoo.data import DataSpec, build_data  # noqa: E402
from collab_zoo.training.args import parse_args  # noqa: E402
from collab_zoo.training.engine import run_training  # noqa: E402

# accelerate's names for the AMP dtypes train.py's --amp-dtype takes.
_PRECISION = {None: "no", "bfloat16": "bf16", "float16": "fp16"}


def _fresh_accelerate_state() -> None:
    """accelerate keeps its settings (mixed precision above all) in a process-wide singleton; the two sides
    alternate in one process, so each bare run starts from fresh settings, as train.py's engine does."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def bare_loop(model_name: str, epochs: int, batch: int, input_size: int, device: str = "cpu",
              amp_dtype: Optional[str] = None) -> float:
    """Images per second of a minimal accelerate training loop (timed around the training batches)."""
    from accelerate import Accelerator

    _fresh_accelerate_state()
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=_PRECISION[amp_dtype])
    bundle = build_data(DataSpec(dataset="digits", input_size=input_size, in_chans=1))
    torch.manual_seed(0)
    model = collab_zoo.create_model(model_name, num_classes=10, in_chans=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=batch, shuffle=True,
                                         pin_memory=accelerator.device.type == "cuda")
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    loss_fn = loss_of(accelerator.unwrap_model(model))
    seen, elapsed = 0, 0.0
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for images, target in loader:
            with accelerator.autocast():
                loss, _ = loss_fn(model(images), target)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seen += len(target)
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - start
    return seen / elapsed


def train_py(model_name: str, epochs: int, batch: int, input_size: int, out: str, device: str = "cpu",
             amp_dtype: Optional[str] = None) -> float:
    """Images per second train.py's engine reports for the same model, data, batch and epochs."""
    argv = ["--model", model_name, "--dataset", "digits", "--input-size", str(input_size), "--epochs", str(epochs),
            "-b", str(batch), "--output", out, "--log-with", "none"]
    if device == "cpu":
        argv.append("--cpu")
    if amp_dtype:
        argv += ["--amp", "--amp-dtype", amp_dtype]
    args = parse_args(argv)
    args.experiment = f"bench-{time.time_ns()}"
    return run_training(args)["train_images_per_second"]


def measure(model_name: str = "dks_resnet32", epochs: int = 2, batch: int = 64, input_size: int = 16,
            repeats: int = 20, device: str = "cpu", amp_dtype: Optional[str] = None) -> Dict[str, Any]:
    """Paired runs, alternating which side goes first; the ratio is train.py's time per image over the bare
    loop's (above 1: train.py is slower), with the images per second of both sides."""
    threads = torch.get_num_threads()
    bare, engine = [], []
    with tempfile.TemporaryDirectory() as out:
        bare_loop(model_name, 1, batch, input_size, device, amp_dtype)  # warm-up: imports, allocator, thread pools
        train_py(model_name, 1, batch, input_size, out, device, amp_dtype)
        for i in range(repeats):
            sides = [lambda: bare.append(bare_loop(model_name, epochs, batch, input_size, device, amp_dtype)),
                     lambda: engine.append(train_py(model_name, epochs, batch, input_size, out, device, amp_dtype))]
            for side in (sides if i % 2 == 0 else sides[::-1]):
                side()
    if torch.get_num_threads() != threads:  # neither side may change the setting the row is measured at
        raise RuntimeError(f"a training run changed torch's thread count from {threads} to {torch.get_num_threads()}")
    stats = paired_stats([1 / v for v in bare], [1 / v for v in engine])
    return dict(model=model_name, dataset="digits", input_size=input_size, batch=batch, epochs=epochs, device=device,
                amp_dtype=amp_dtype, time_per_image=stats,
                train_py_images_per_second=[round(v, 1) for v in engine],
                bare_images_per_second=[round(v, 1) for v in bare])


if __name__ == "__main__":
    import cost

    sys.exit(cost.main(["--only", "train_py_throughput", *sys.argv[1:]]))
