"""train.py's command line: timm's flag names where timm has one, and the papers' recipes as presets.

A ``--recipe`` sets defaults (optimizer, schedule, epochs, batch size...) from a paper; any flag given on the
command line wins over it. With no arguments at all, train.py runs the built-in main job (``MAIN_JOB``).
"""
from __future__ import annotations

import argparse
import ast
from typing import Any, Dict, List, Optional

__all__ = ["RECIPES", "MAIN_JOB", "build_parser", "parse_args", "ParseKwargs"]

# Each recipe is what its paper states; what a paper leaves open is left at the script's defaults.
RECIPES: Dict[str, Dict[str, Any]] = {
    # The built-in main job and small-scale runs on CPU: short, cosine schedule.
    "digits": dict(dataset="digits", epochs=30, batch_size=64, lr=0.05, opt="momentum", momentum=0.9,
                   weight_decay=5e-4, sched="cosine", warmup_epochs=1, min_lr=0.0),
    "multidigit": dict(dataset="multidigit-II", epochs=15, batch_size=128, lr=0.02, opt="momentum", momentum=0.9,
                       weight_decay=5e-4, sched="cosine", warmup_epochs=1, min_lr=0.0),
    # DKS (Sun et al. 2019, Sec. 4.1-4.2).
    "dks-cifar-resnet": dict(opt="momentum", momentum=0.9, batch_size=64, weight_decay=1e-4, epochs=200, lr=0.1,
                             sched="step", decay_epochs=60, decay_rate=0.1, warmup_epochs=0),
    "dks-cifar-mobilenet": dict(opt="momentum", momentum=0.9, batch_size=64, weight_decay=1e-4, epochs=200, lr=0.1,
                                sched="step", decay_epochs=60, decay_rate=0.1, warmup_epochs=0),
    "dks-cifar-densenet": dict(opt="nesterov", momentum=0.9, batch_size=64, weight_decay=1e-4, epochs=300, lr=0.1,
                               sched="multistep", decay_milestones=[150, 225], decay_rate=0.1, warmup_epochs=0),
    "dks-cifar-wrn": dict(opt="momentum", momentum=0.9, batch_size=128, weight_decay=5e-4, epochs=200, lr=0.1,
                          sched="multistep", decay_milestones=[60, 120, 160], decay_rate=0.2, warmup_epochs=0),
    "dks-imagenet": dict(opt="momentum", momentum=0.9, batch_size=256, weight_decay=1e-4, epochs=100, lr=0.1,
                         sched="step", decay_epochs=30, decay_rate=0.1, warmup_epochs=0),
    # DCL (Wang et al. 2017, Sec. 4.2): LeNet on SVHN/CIFAR 120 + 20 + 10 epochs at 1e-3/1e-4/1e-5;
    # AlexNet as Caffe: lr 0.01, momentum 0.9, wd 5e-4, batch 256, /10 every 100k of 450k iterations (~20 of 90 epochs).
    "dcl-lenet-cifar": dict(opt="momentum", momentum=0.9, lr=1e-3, epochs=150, sched="multistep",
                            decay_milestones=[120, 140], decay_rate=0.1, warmup_epochs=0),
    "dcl-alexnet": dict(opt="momentum", momentum=0.9, lr=0.01, weight_decay=5e-4, batch_size=256, epochs=90,
                        sched="step", decay_epochs=20, decay_rate=0.1, warmup_epochs=0),
    # Complementary networks (Chen et al. 2019, Sec. 4), per round: CIFAR lr 0.1 /10 at 150 and 225 of 300;
    # ImageNet lr 0.1 /10 at 30 and 60; MNIST lr 0.01 for 120 epochs.
    "complementary-cifar": dict(opt="momentum", momentum=0.9, lr=0.1, epochs=300, sched="multistep",
                                decay_milestones=[150, 225], decay_rate=0.1, warmup_epochs=0),
    "complementary-imagenet": dict(opt="momentum", momentum=0.9, lr=0.1, epochs=90, sched="multistep",
                                   decay_milestones=[30, 60], decay_rate=0.1, warmup_epochs=0),
    "complementary-mnist": dict(opt="momentum", momentum=0.9, lr=0.01, epochs=120, sched="none", warmup_epochs=0),
}

# `python train.py` with no arguments: DKS on He et al.'s CIFAR ResNet-20 against the same network trained
# plainly, on the built-in two-digit numbers (100 classes, 5,000 training images, 16x16), a few minutes on a
# laptop CPU. (The 10-class digits set is too easy to tell methods apart: both reach ~99 %.)
MAIN_JOB: List[str] = ["--model", "dks_resnet20", "--baseline", "cifar_resnet20", "--recipe", "multidigit",
                       "--dataset", "multidigit-II", "--md-level", "3", "--md-train-size", "5000",
                       "--input-size", "16", "--seed", "0"]


class ParseKwargs(argparse.Action):
    """``--model-kwargs pairs=top_down temperature=2`` -> {'pairs': 'top_down', 'temperature': 2}."""

    def __call__(self, parser, namespace, values, option_string=None):
        kwargs = {}
        for item in values:
            if "=" not in item:
                parser.error(f"{option_string} takes key=value pairs, got {item!r}")
            key, value = item.split("=", 1)
            try:
                kwargs[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                kwargs[key] = value
        setattr(namespace, self.dest, kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train any collab_zoo (or timm) model through the model contract; "
                    "`accelerate launch train.py ...` for several processes. No arguments: the built-in main job.")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="dks_resnet32", help="architecture, arch.tag, hf-hub:org/repo or local-dir:DIR")
    g.add_argument("--pretrained", action="store_true", help="start from the model's published (or given) weights")
    g.add_argument("--pretrained-file", default=None, help="start from this safetensors file instead of the Hub's")
    g.add_argument("--num-classes", type=int, default=None, help="default: the data's class count")
    g.add_argument("--in-chans", type=int, default=None, help="default: the data's channel count")
    g.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs, help="method options, key=value")
    g.add_argument("--baseline", default=None, help="after training, train this model the same way and compare")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits", help="digits, multidigit-II, multidigit-III, or imagefolder")
    g.add_argument("--data-dir", default=None, help="ImageFolder root holding train/ and val/")
    g.add_argument("--train-split", default="train")
    g.add_argument("--val-split", default="val")
    g.add_argument("--input-size", type=int, default=None, help="square input side (built-ins: 32 digits, 28 multi)")
    g.add_argument("--md-level", type=int, default=1, help="multi-digit layout level (II: 1-5, III: 1-10)")
    g.add_argument("--md-train-size", type=int, default=10_000)
    g.add_argument("--md-test-size", type=int, default=2_000)
    g.add_argument("--heldout-frac", type=float, default=0.1,
                   help="share of the training set held out when a method measures errors there (boosting)")
    g.add_argument("--no-aug", action="store_true", help="no training augmentation")
    g.add_argument("--skip-bad-images", action="store_true", help="drop unreadable images (counted) instead of failing")
    g.add_argument("-j", "--workers", type=int, default=0, help="data loading processes")
    g = p.add_argument_group("optimisation")
    g.add_argument("--recipe", default=None, choices=sorted(RECIPES), help="a paper's settings as defaults")
    g.add_argument("--epochs", type=int, default=30, help="epochs per round")
    g.add_argument("-b", "--batch-size", type=int, default=64, help="per-process batch size")
    g.add_argument("--lr", type=float, default=0.05)
    g.add_argument("--opt", default="momentum", help="any timm optimizer: momentum, nesterov, adamw, lamb, ...")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--clip-grad", type=float, default=None)
    g.add_argument("--sched", default="cosine", help="cosine, step, multistep, plateau, none")
    g.add_argument("--decay-epochs", type=float, default=30)
    g.add_argument("--decay-milestones", type=int, nargs="+", default=[30, 60])
    g.add_argument("--decay-rate", type=float, default=0.1)
    g.add_argument("--warmup-epochs", type=int, default=1)
    g.add_argument("--warmup-lr", type=float, default=1e-5)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--grad-accum-steps", type=int, default=1)
    g.add_argument("--smoothing", type=float, default=0.0, help="label smoothing")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0: off)")
    g.add_argument("--mixup-prob", type=float, default=1.0)
    g.add_argument("--mixup-switch-prob", type=float, default=0.5)
    g.add_argument("--model-ema", action="store_true",
                   help="keep an EMA of the weights, evaluate it every epoch, and end each round with the EMA weights")
    g.add_argument("--model-ema-decay", type=float, default=0.998)
    g = p.add_argument_group("hardware")
    g.add_argument("--amp", action="store_true", help="mixed precision (bf16 unless --amp-dtype float16)")
    g.add_argument("--amp-dtype", default="bfloat16", choices=["bfloat16", "float16"])
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--torchcompile", nargs="?", const="inductor", default=None, help="torch.compile backend")
    g.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    g = p.add_argument_group("output")
    g.add_argument("--output", default="output", help="runs are written under OUTPUT/EXPERIMENT")
    g.add_argument("--experiment", default=None, help="run folder name (default: time-model-dataset)")
    g.add_argument("--resume", default=None, help="a run folder or checkpoint folder to continue exactly")
    g.add_argument("--checkpoint-interval", type=int, default=0,
                   help="also checkpoint every N optimizer steps (0: at epoch ends only)")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--log-with", default="auto", help="accelerate trackers: auto (TensorBoard if installed), none, ...")
    g.add_argument("--log-interval", type=int, default=20, help="progress-bar refresh, in steps")
    g.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the final Hub folder to REPO")
    g.add_argument("--keep-training-heads", action="store_true", help="keep training-only heads in the Hub folder")
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.recipe:
        parser.set_defaults(**RECIPES[known.recipe])
    return parser.parse_args(argv)
