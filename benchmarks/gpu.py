"""What each method costs on a GPU, with mixed precision, at the papers' input sizes: one command.

    python benchmarks/gpu.py                 # every row on cuda:0 with bfloat16 AMP -> benchmarks/results/gpu.json
    python benchmarks/gpu.py --check         # issue 15's targets, PASS or FAIL, from gpu.json
    python benchmarks/gpu.py --device cpu --quick --only dcl_lenet   # the same code path on the CPU, tiny sizes

Without a GPU it prints "no GPU" and exits 0 (nothing written). The rows are cost.py's, measured the same way
(>= 20 paired repeats, median and IQR, time next to FLOP ratio): every method model over its plain backbone
(train step and eval, with the peak CUDA memory of a step), complementary_resnet50_x4 over four separate
resnet50 forwards, and train.py's time per image over a bare accelerate loop (both with --amp). Batches are
128 at CIFAR/MNIST sizes and 64 at ImageNet sizes; cuDNN autotuning is on and warm-up runs first.
"""
from __future__ import annotations

import argparse
import sys
from typing import List

import torch

import cost  # noqa: E402  (cost imports common, which puts the repository on sys.path)
from common import results_dir  # noqa: E402

# The GPU rows: cost.py's, less those that measure the CPU or the disk (Hub loading, data building) and the
# 1,000-class AlexNet (dcl_alexnet, the row at the paper's input size, is among the pairs).
ROWS: List[str] = [p[0] for p in cost.PAIRS] + ["complementary_resnet50_x4", "train_py_throughput"]
DEFAULT_PATH = "gpu.json"


def parse_rows(names) -> List[str]:
    if not names:
        return list(ROWS)
    chosen: List[str] = []
    for name in names:
        expanded = [p[0] for p in cost.PAIRS] if name == "pairs" else ROWS if name == "all" else [name]
        unknown = [n for n in expanded if n not in ROWS]
        if unknown:
            raise SystemExit(f"gpu.py: unknown row {unknown[0]!r}; rows are: {', '.join(ROWS)} (or: pairs, all)")
        chosen += [n for n in expanded if n not in chosen]
    return chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cost.add_common_options(parser)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (to test this script)")
    parser.add_argument("--amp-dtype", default="bfloat16", choices=["bfloat16", "float16", "none"],
                        help="autocast dtype; none measures float32")
    args = parser.parse_args(argv)
    path = args.out or results_dir(args.quick) / DEFAULT_PATH
    if args.list:
        print("\n".join(ROWS))
        return 0
    if args.check:
        return cost.check(path)
    names = parse_rows(args.only)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise SystemExit(f"gpu.py: --device {args.device!r} is not a device; give cuda, cuda:N or cpu") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no GPU: torch.cuda.is_available() is False, so there is nothing to measure (gpu.json not written). "
              "Run this on a machine with an NVIDIA GPU, or pass --device cpu to test the script.")
        return 0
    if device.type not in ("cuda", "cpu"):
        raise SystemExit(f"gpu.py: --device {args.device} is neither cuda nor cpu")
    amp = None if args.amp_dtype == "none" else args.amp_dtype
    if amp == "float16" and device.type == "cpu":
        raise SystemExit("gpu.py: float16 autocast needs a GPU; on the CPU use --amp-dtype bfloat16 or none")
    if device.type == "cuda":
        # An index makes every later call (synchronize, peak memory, train.py's accelerator) use this GPU.
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # the papers' frameworks autotune too; warm-up absorbs the search
    s = cost.settings_from(args, "gpu.py", argv, device=str(device), amp_dtype=amp,
                           extra=dict(cudnn_benchmark=torch.backends.cudnn.benchmark))
    key = f"{device.type},amp={amp or 'float32'}"
    config = (key, dict(device=str(device), amp_dtype=amp, threads=torch.get_num_threads(),
                        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None), lambda: None)
    failed = cost.run_rows(names, [config], s, path, fresh=args.fresh, resume=args.resume)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
