"""train.py's and validate.py's command lines: timm's flags with timm's meaning, and the papers' recipes.

Every flag timm's ``train.py`` / ``validate.py`` has that makes sense here keeps timm's name and meaning; where
the default differs (this project's runs are small and often on a CPU) the help says so. ``-c FILE`` reads a YAML
file of settings and flags on the command line win over it, as in timm's ``train.py``. ``--recipe`` sets a
paper's settings (optimizer, schedule, epochs, batch size...) as defaults, below the YAML file and the flags.
With no arguments at all, train.py runs the built-in main job (``MAIN_JOB``).
"""
from __future__ import annotations

import argparse
import logging
import math
from typing import Any, Dict, List, Optional, Tuple

from timm.utils import ParseKwargs

__all__ = ["RECIPES", "MAIN_JOB", "build_parser", "parse_args", "build_validate_parser", "parse_validate_args",
           "ParseKwargs", "ConfigFileError"]

_logger = logging.getLogger("collab_zoo.train")

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
                       "--img-size", "16", "--seed", "0"]


class ConfigFileError(ValueError):
    """A -c/--config file that cannot be read or holds a value of the wrong kind."""


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one short paragraph: the full usage of train.py is a page long, and the
    message, not the usage, says what to change. Exit code 2, as argparse's."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n(python {self.prog} --help describes every flag)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is empty (the help then says what happens when the flag is not given)."""

    def _get_help_string(self, action):
        if action.default in (None, "", False, [], {}):
            return action.help or ""
        return super()._get_help_string(action)


def _add_data_arguments(p: argparse.ArgumentParser, training: bool) -> None:
    g = p.add_argument_group("Dataset parameters")
    p.add_argument("data", nargs="?", metavar="DIR", default=None,
                   help="path to the data set (positional, deprecated as in timm: use --data-dir)")
    g.add_argument("--data-dir", metavar="DIR", default=None,
                   help="root of a folder data set: DIR/train/<class>/<images> and DIR/validation/ (or val/, valid/, "
                        "eval/, test/); a split may also be a .tar of its class folders. Without --dataset this "
                        "means a folder data set")
    g.add_argument("--dataset", metavar="NAME", default=None,
                   help="'digits', 'multidigit-II', 'multidigit-III', 'mnist5k', 'mnist-II', 'mnist-III' (built in, no download), empty or 'folder' "
                        "(an image folder or tar under --data-dir), or timm's '<type>/<name>' (torch/cifar10, "
                        "hfds/..., wds/...). Default: a folder when --data-dir is given, else digits")
    if training:
        g.add_argument("--train-split", metavar="NAME", default="train", help="data set train split")
        g.add_argument("--val-split", metavar="NAME", default="validation",
                       help="data set validation split (for folders, val/, valid/, eval/ and test/ are found too)")
        g.add_argument("--train-num-samples", type=int, default=None, metavar="N",
                       help="number of samples in the train split, for iterable data sets (timm)")
        g.add_argument("--val-num-samples", type=int, default=None, metavar="N",
                       help="number of samples in the validation split, for iterable data sets (timm)")
    else:
        g.add_argument("--split", metavar="NAME", default="validation",
                       help="the split to evaluate (for folders, val/, valid/, eval/ and test/ are found too)")
        g.add_argument("--num-samples", type=int, default=None, metavar="N",
                       help="number of samples in the split, for iterable data sets (timm)")
    g.add_argument("--dataset-download", action="store_true", default=False,
                   help="allow timm's torch/ and tfds/ data sets to download (this project's built-ins need none)")
    g.add_argument("--class-map", default="", type=str, metavar="FILENAME",
                   help="file mapping class (folder) names to indices (default: sorted folder names)")
    g.add_argument("--input-img-mode", default=None, type=str,
                   help="image colour mode the data set converts to (default: L for 1-channel models, else RGB)")
    g.add_argument("--input-key", default=None, type=str, help="data set key for input images (hfds, wds)")
    g.add_argument("--target-key", default=None, type=str, help="data set key for target labels (hfds, wds)")
    g.add_argument("--md-level", type=int, default=1, help="multi-digit layout level (multidigit-II / mnist-II: 1-5, -III: 1-10; "
                                                           "mnist-II level N = the paper's MNIST-II-0N)")
    if training:
        g.add_argument("--md-train-size", type=int, default=10_000, help="multi-digit training images to generate")
    g.add_argument("--md-test-size", type=int, default=2_000, help="multi-digit evaluation images to generate")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="drop unreadable image files (counted in results.json) instead of stopping at the first")
    if training:
        g.add_argument("--heldout-frac", type=float, default=0.1,
                       help="share of the training set held out where a method measures itself there (boosting)")


def _add_input_arguments(g) -> None:
    g.add_argument("--img-size", type=int, default=None, metavar="N",
                   help="image size (default: the model's; the built-in sets are made at this side: 32 digits, "
                        "28 multi-digit)")
    g.add_argument("--in-chans", type=int, default=None, metavar="N",
                   help="image input channels (default: the data's for built-in sets, else the model's); a "
                        "checkpoint with another count has its first convolution adapted, as in timm")
    g.add_argument("--input-size", default=None, nargs="+", type=int, metavar="N",
                   help="all input dimensions, C H W (e.g. --input-size 3 224 224), overriding --img-size and "
                        "--in-chans; a single N is kept as a shorthand for --img-size N")
    g.add_argument("--crop-pct", default=None, type=float, metavar="N",
                   help="evaluation centre-crop fraction (default: the model's)")
    g.add_argument("--mean", type=float, nargs="+", default=None, metavar="MEAN",
                   help="normalisation mean per channel (default: the model's, or the built-in set's)")
    g.add_argument("--std", type=float, nargs="+", default=None, metavar="STD",
                   help="normalisation standard deviation per channel (default: the model's, or the built-in set's)")
    g.add_argument("--interpolation", default="", type=str, metavar="NAME",
                   help="image resize interpolation (overrides the model's)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="train.py", formatter_class=_HelpFormatter,
        description="Train any collab_zoo (or timm) model through the model contract; `accelerate launch "
                    "train.py ...` for several processes. No arguments: the built-in main job.")
    p.add_argument("-c", "--config", default="", type=str, metavar="FILE",
                   help="YAML file of settings (names as the flags', e.g. 'lr: 0.1'); flags on the command line "
                        "win over it, as in timm's train.py")
    _add_data_arguments(p, training=True)

    g = p.add_argument_group("Model parameters")
    g.add_argument("--model", default="dks_resnet32", type=str, metavar="MODEL",
                   help="architecture, arch.tag, hf-hub:org/repo or local-dir:DIR")
    g.add_argument("--pretrained", action="store_true", default=False,
                   help="start from the model's published (or hf-hub:/local-dir:) weights")
    g.add_argument("--pretrained-path", "--pretrained-file", dest="pretrained_path", default=None, type=str,
                   help="load this safetensors file as if it were the pretrained weights (heads adapted to the "
                        "class count, first convolution to the channels)")
    g.add_argument("--initial-checkpoint", default="", type=str, metavar="PATH",
                   help="load these weights into the model after it is built (a safetensors file, a train.py run "
                        "or checkpoint folder); every key must fit")
    g.add_argument("--resume", default="", type=str, metavar="PATH",
                   help="a run folder or checkpoint folder to continue exactly; with --epochs N a finished run is "
                        "extended to N epochs")
    g.add_argument("--no-resume-opt", action="store_true", default=False,
                   help="with --resume, start a fresh optimizer and loss scaler (the resume is then not exact)")
    g.add_argument("--num-classes", type=int, default=None, metavar="N",
                   help="number of classes; default: the data's. With --pretrained weights for another count, "
                        "every head's classifier starts fresh")
    g.add_argument("--gp", default=None, type=str, metavar="POOL",
                   help="global pool type (fast, avg, max, avgmax, avgmaxc) for models that take it")
    _add_input_arguments(g)
    g.add_argument("-b", "--batch-size", type=int, default=64, metavar="N",
                   help="input batch size per process (timm's default: 128)")
    g.add_argument("-vb", "--validation-batch-size", type=int, default=None, metavar="N",
                   help="validation batch size (default: the larger of --batch-size and 64)")
    g.add_argument("--channels-last", action="store_true", default=False, help="use the channels_last memory layout")
    g.add_argument("--grad-accum-steps", type=int, default=1, metavar="N",
                   help="number of batches whose gradients are accumulated per optimizer step")
    g.add_argument("--grad-checkpointing", action="store_true", default=False,
                   help="gradient checkpointing through model blocks, for models that support it")
    g.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs,
                   help="model options as key=value (method options: pairs=top_down temperature=2, tau=4 ...)")
    g.add_argument("--baseline", default=None,
                   help="after training, train this model the same way and print the two side by side")
    g.add_argument("--torchcompile", nargs="?", type=str, default=None, const="inductor",
                   help="torch.compile the trainable module with this backend (default when given: inductor)")
    g.add_argument("--torchcompile-mode", type=str, default=None, help="torch.compile mode")

    g = p.add_argument_group("Device parameters")
    g.add_argument("--device", default=None, type=str,
                   help="'cpu' to run on the CPU; default: the GPU accelerate assigns when one is present")
    g.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present (same as --device cpu)")
    g.add_argument("--amp", action="store_true", default=False, help="mixed precision training (torch.autocast)")
    g.add_argument("--amp-dtype", default="bfloat16", choices=["bfloat16", "float16"],
                   help="lower precision AMP dtype; float16 (timm's default) needs a GPU and uses a loss scaler")
    g.add_argument("--no-ddp-bb", action="store_true", default=False,
                   help="do not broadcast buffers in DDP (timm's flag)")
    g.add_argument("--device-modules", default=None, type=str, nargs="+",
                   help="Python modules to import first (device back ends, or packages that register models)")
    g.add_argument("--local_rank", default=0, type=int,
                   help="accepted for launchers that pass it; the rank comes from the environment")

    g = p.add_argument_group("Optimizer parameters")
    g.add_argument("--opt", default="momentum", type=str, metavar="OPTIMIZER",
                   help="any timm optimizer: momentum (SGD with momentum), sgd/nesterov (Nesterov SGD), adamw, "
                        "lamb, ... (timm's default: sgd)")
    g.add_argument("--opt-eps", default=None, type=float, metavar="EPSILON", help="optimizer epsilon")
    g.add_argument("--opt-betas", default=None, type=float, nargs="+", metavar="BETA", help="optimizer betas")
    g.add_argument("--momentum", type=float, default=0.9, metavar="M", help="optimizer momentum")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (timm's default: 2e-5)")
    g.add_argument("--clip-grad", type=float, default=None, metavar="NORM",
                   help="clip gradients at this norm (or value, see --clip-mode)")
    g.add_argument("--clip-mode", type=str, default="norm", help='gradient clipping mode: "norm", "value" or "agc"')
    g.add_argument("--layer-decay", type=float, default=None, help="layer-wise learning-rate decay")
    g.add_argument("--opt-kwargs", nargs="*", default={}, action=ParseKwargs,
                   help="further optimizer arguments as key=value")

    g = p.add_argument_group("Learning rate schedule parameters")
    g.add_argument("--sched", type=str, default="cosine", metavar="SCHEDULER",
                   help="timm scheduler: cosine, tanh, step, multistep, plateau, poly, none")
    g.add_argument("--sched-on-updates", action=argparse.BooleanOptionalAction, default=True,
                   help="step the schedule at every optimizer update rather than at epoch ends (timm's default is "
                        "per epoch; short runs want per update). plateau always steps per epoch, on --eval-metric")
    g.add_argument("--lr", type=float, default=None, metavar="LR",
                   help="learning rate; overrides --lr-base (default: --lr-base scaled by the global batch size)")
    g.add_argument("--lr-base", type=float, default=0.2, metavar="LR",
                   help="base learning rate: lr = lr_base * global_batch_size / lr_base_size (timm's default: 0.1; "
                        "this one gives 0.05 at the default batch of 64)")
    g.add_argument("--lr-base-size", type=int, default=256, metavar="DIV",
                   help="base learning rate batch size (divisor)")
    g.add_argument("--lr-base-scale", type=str, default="", metavar="SCALE",
                   help='how lr follows the batch size: "linear", "sqrt" (default: sqrt for adaptive optimizers, '
                        "else linear)")
    g.add_argument("--lr-noise", type=float, nargs="+", default=None, metavar="pct, pct",
                   help="learning rate noise on/off epoch percentages")
    g.add_argument("--lr-noise-pct", type=float, default=0.67, metavar="PERCENT", help="learning rate noise limit")
    g.add_argument("--lr-noise-std", type=float, default=1.0, metavar="STDDEV", help="learning rate noise std-dev")
    g.add_argument("--lr-cycle-mul", type=float, default=1.0, metavar="MULT", help="learning rate cycle length multiplier")
    g.add_argument("--lr-cycle-decay", type=float, default=0.5, metavar="MULT", help="decay of each learning rate cycle")
    g.add_argument("--lr-cycle-limit", type=int, default=1, metavar="N", help="learning rate cycle limit")
    g.add_argument("--lr-k-decay", type=float, default=1.0, help="learning rate k-decay for cosine/poly")
    g.add_argument("--warmup-lr", type=float, default=1e-5, metavar="LR", help="warmup learning rate")
    g.add_argument("--min-lr", type=float, default=0.0, metavar="LR", help="lower lr bound for cyclic schedulers")
    g.add_argument("--epochs", type=int, default=30, metavar="N",
                   help="epochs to train (per round for multi-round methods; timm's default: 300)")
    g.add_argument("--decay-milestones", default=[30, 60], type=int, nargs="+", metavar="MILESTONES",
                   help="epochs at which multistep decays the lr")
    g.add_argument("--decay-epochs", type=float, default=30, metavar="N", help="epoch interval at which step decays")
    g.add_argument("--warmup-epochs", type=int, default=1, metavar="N",
                   help="epochs of lr warmup (timm's default: 5)")
    g.add_argument("--warmup-prefix", action="store_true", default=False, help="exclude warmup from the decay schedule")
    g.add_argument("--cooldown-epochs", type=int, default=0, metavar="N",
                   help="epochs at min_lr after a cyclic schedule ends (added to --epochs)")
    g.add_argument("--patience-epochs", type=int, default=10, metavar="N", help="patience of the plateau scheduler")
    g.add_argument("--decay-rate", "--dr", type=float, default=0.1, metavar="RATE", help="lr decay rate")

    g = p.add_argument_group("Augmentation and regularization parameters")
    g.add_argument("--no-aug", action="store_true", default=False, help="no training augmentation at all")
    g.add_argument("--train-crop-mode", type=str, default=None, help="training crop mode: rrc, rkrc, rkrr (timm)")
    g.add_argument("--scale", type=float, nargs="+", default=None, metavar="PCT",
                   help="random resized crop scale range (default: timm's 0.08 1.0 for image data; 1 1 for the "
                        "built-in sets)")
    g.add_argument("--ratio", type=float, nargs="+", default=None, metavar="RATIO",
                   help="random resized crop aspect ratio range (default: timm's 3/4 4/3; 1 1 for built-ins)")
    g.add_argument("--hflip", type=float, default=None,
                   help="horizontal flip probability (default: timm's 0.5 for image data; 0 for built-in digits)")
    g.add_argument("--vflip", type=float, default=None, help="vertical flip probability (default: 0)")
    g.add_argument("--color-jitter", type=float, default=None, metavar="PCT",
                   help="colour jitter factor (default: timm's 0.4 for image data; off for the built-ins)")
    g.add_argument("--color-jitter-prob", type=float, default=None, metavar="PCT",
                   help="probability of applying any colour jitter")
    g.add_argument("--grayscale-prob", type=float, default=None, metavar="PCT",
                   help="probability of random grayscale conversion")
    g.add_argument("--gaussian-blur-prob", type=float, default=None, metavar="PCT",
                   help="probability of gaussian blur")
    g.add_argument("--aa", type=str, default=None, metavar="NAME",
                   help='AutoAugment / RandAugment policy, e.g. "rand-m9-mstd0.5", "v0", "augmix-m5-w4-d2"')
    g.add_argument("--reprob", type=float, default=0.0, metavar="PCT", help="random erasing probability")
    g.add_argument("--remode", type=str, default="pixel", help='random erasing mode: "const", "rand", "pixel"')
    g.add_argument("--recount", type=int, default=1, help="random erasing count")
    g.add_argument("--resplit", action="store_true", default=False,
                   help="do not random-erase the first (clean) augmentation split")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha, mixup enabled if > 0")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha, cutmix enabled if > 0")
    g.add_argument("--cutmix-minmax", type=float, nargs="+", default=None,
                   help="cutmix min/max ratio, overrides alpha and enables cutmix if set")
    g.add_argument("--mixup-prob", type=float, default=1.0,
                   help="probability of performing mixup or cutmix when either or both is enabled")
    g.add_argument("--mixup-switch-prob", type=float, default=0.5,
                   help="probability of switching to cutmix when both mixup and cutmix are enabled")
    g.add_argument("--mixup-mode", type=str, default="batch", help='how to apply mixup/cutmix: "batch", "pair", "elem"')
    g.add_argument("--mixup-off-epoch", default=0, type=int, metavar="N",
                   help="turn mixup off from this epoch on (0: never)")
    g.add_argument("--smoothing", type=float, default=0.0, help="label smoothing (timm's default: 0.1)")
    g.add_argument("--train-interpolation", type=str, default=None,
                   help="training interpolation: random, bilinear, bicubic (default: timm's random for image data)")
    g.add_argument("--drop", type=float, default=None, metavar="PCT", help="dropout rate, for models that take it")
    g.add_argument("--drop-path", type=float, default=None, metavar="PCT",
                   help="drop path (stochastic depth) rate, for models that take it")
    g.add_argument("--drop-block", type=float, default=None, metavar="PCT",
                   help="drop block rate, for models that take it")

    g = p.add_argument_group("Batch norm parameters")
    g.add_argument("--bn-momentum", type=float, default=None, help="BatchNorm momentum override, for models that take it")
    g.add_argument("--bn-eps", type=float, default=None, help="BatchNorm epsilon override, for models that take it")
    g.add_argument("--sync-bn", action="store_true", help="synchronised BatchNorm across GPU processes (CUDA only)")
    g.add_argument("--dist-bn", type=str, default="reduce",
                   help='after each epoch, "reduce" (average) or "broadcast" BatchNorm statistics across processes, '
                        'or "" to leave them')

    g = p.add_argument_group("Model exponential moving average parameters")
    g.add_argument("--model-ema", action="store_true", default=False,
                   help="keep an EMA of the weights, evaluate it every epoch, and end each round with the EMA weights")
    g.add_argument("--model-ema-decay", type=float, default=0.998,
                   help="EMA decay per optimizer step (timm's default 0.9998 suits long runs)")
    g.add_argument("--model-ema-warmup", action="store_true", help="warm up the EMA decay (timm's ModelEmaV3)")

    g = p.add_argument_group("Miscellaneous parameters")
    g.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                   help="a paper's settings as defaults (below -c and the command line)")
    g.add_argument("--seed", type=int, default=42, metavar="S", help="random seed (also generates the multi-digit sets)")
    g.add_argument("--worker-seeding", type=str, default="all",
                   help="worker seed mode (timm); each sample's augmentation is seeded from (seed, epoch, index) anyway")
    g.add_argument("--skip-nonfinite-steps", type=int, default=0, metavar="N",
                   help="skip up to N optimizer steps whose loss, weights or buffers go non-finite (NaN/inf), undoing "
                        "each (weights, buffers, optimizer state) and logging it; one more stops the run. 0: the first "
                        "one stops it (exit code 3). checkpoints/last always holds the last finite state")
    g.add_argument("--log-interval", type=int, default=20, metavar="N",
                   help="optimizer steps between progress lines (a progress bar on a terminal)")
    g.add_argument("--recovery-interval", "--checkpoint-interval", dest="recovery_interval", type=int, default=0,
                   metavar="N", help="also write checkpoints/last every N optimizer steps, resumable mid-epoch "
                                     "(0: at epoch ends only)")
    g.add_argument("--checkpoint-hist", type=int, default=10, metavar="N",
                   help="number of epoch checkpoints to keep, the best by --eval-metric (checkpoints/epoch-*)")
    g.add_argument("-j", "--workers", type=int, default=0, metavar="N",
                   help="data loading processes (timm's default: 4)")
    g.add_argument("--pin-mem", action="store_true", default=False, help="pin CPU memory in the DataLoader")
    g.add_argument("--no-prefetcher", action="store_true", default=False,
                   help="disable timm's prefetcher (which normalises and random-erases batches on the device)")
    g.add_argument("--output", default="output", type=str, metavar="PATH",
                   help="runs are written under OUTPUT/EXPERIMENT")
    g.add_argument("--experiment", default=None, type=str, metavar="NAME",
                   help="run folder name (default: time-model-dataset)")
    g.add_argument("--eval-metric", default="top1", type=str, metavar="EVAL_METRIC",
                   help="metric choosing the best checkpoint and driving --sched plateau: top1, top5, loss, or "
                        "top1_<head>")
    g.add_argument("--log-wandb", action="store_true", default=False,
                   help="log metrics to Weights & Biases (needs wandb installed)")
    g.add_argument("--log-with", default="auto",
                   help="accelerate trackers: auto (TensorBoard if installed), none, tensorboard, wandb, ...")
    g.add_argument("--push-to-hub", default=None, metavar="REPO",
                   help="upload the run's Hub folder (the best checkpoint's weights) to this Hub repo")
    g.add_argument("--keep-training-heads", action="store_true",
                   help="keep training-only heads (DKS auxiliaries) in the Hub folder")
    return p


def _config_keys(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if action.dest != "help"}


def _read_config(path: str, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    import yaml

    try:
        with open(path, "rb") as f:
            loaded = yaml.safe_load(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigFileError(f"-c/--config {path}: no such file.") from None
    except IsADirectoryError:
        raise ConfigFileError(f"-c/--config {path} is a folder; give the YAML file.") from None
    except OSError as e:
        raise ConfigFileError(f"-c/--config {path} cannot be read ({e.strerror or e}).") from None
    except UnicodeDecodeError:
        raise ConfigFileError(f"-c/--config {path} is not UTF-8 text; save the YAML file as UTF-8.") from None
    except yaml.YAMLError as e:
        raise ConfigFileError(f"-c/--config {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigFileError(f"-c/--config {path} must map setting names to values (e.g. 'lr: 0.1'), "
                              f"got a {type(loaded).__name__}.")
    known = _config_keys(parser)
    settings, ignored = {}, []
    for key, value in loaded.items():
        dest = str(key).replace("-", "_")
        if dest not in known or dest in ("config", "help"):
            ignored.append(str(key))
            continue
        action = known[dest]
        if value is not None and isinstance(action, ParseKwargs):
            if not isinstance(value, dict):
                raise ConfigFileError(f"-c/--config {path}: {key} must map option names to values (e.g. "
                                      f"'{key}: {{tau: 3}}'), got {value!r}.")
        elif value is not None and action.nargs in ("+", "*") and not isinstance(value, (list, tuple, dict)):
            value = [value]
        if value is not None and action.nargs in ("+", "*") and not isinstance(action, ParseKwargs):
            if not isinstance(value, (list, tuple)):
                raise ConfigFileError(f"-c/--config {path}: {key} must be a list, got {value!r}.")
            for item in value:
                _check_config_value(path, key, item, action)
        elif value is not None and not isinstance(action, ParseKwargs):
            _check_config_value(path, key, value, action)
        settings[dest] = value
    if ignored:
        # A timm args.yaml carries settings of timm's own script this one does not have: say so, do not fail.
        _logger.warning("-c/--config %s: settings train.py does not have, ignored: %s", path, ", ".join(ignored))
    return settings


def _check_config_value(path: str, key: str, value: Any, action: argparse.Action) -> None:
    if action.type is None and action.nargs == 0:  # a switch (store_true / store_false)
        if not isinstance(value, bool):
            raise ConfigFileError(f"-c/--config {path}: {key} is a switch and must be true or false, got {value!r}.")
        return
    wanted = action.type if isinstance(action.type, type) else None
    if wanted is not None:
        fits = isinstance(value, wanted) and not (wanted is not bool and isinstance(value, bool))
        if wanted is float and isinstance(value, int) and not isinstance(value, bool):
            fits = True
        if not fits:
            raise ConfigFileError(f"-c/--config {path}: {key} must be {wanted.__name__}, got {value!r}.")
    if action.choices is not None and value not in action.choices:
        raise ConfigFileError(f"-c/--config {path}: {key} must be one of {', '.join(map(str, action.choices))}, "
                              f"got {value!r}.")


# --- every number checked before any work ------------------------------------------------------------------------

def _at_least(n):
    return (lambda v: v >= n), f"at least {n}"


def _above(n):
    return (lambda v: v > n), f"greater than {n}"


def _within(lo, hi, hi_open=False):
    if hi_open:
        return (lambda v: lo <= v < hi), f"in [{lo}, {hi})"
    return (lambda v: lo <= v <= hi), f"between {lo} and {hi}"


# (dest, flag, (test, requirement)); a value left at None (unset) is not checked; lists are checked item by item.
_COMMON_RULES = [
    ("batch_size", "-b/--batch-size", _at_least(1)),
    ("workers", "-j/--workers", _at_least(0)),
    ("img_size", "--img-size", _at_least(1)),
    ("in_chans", "--in-chans", _at_least(1)),
    ("input_size", "--input-size", _at_least(1)),
    ("num_classes", "--num-classes", _at_least(1)),
    ("crop_pct", "--crop-pct", _above(0)),
    ("std", "--std", _above(0)),
    ("mean", "--mean", ((lambda v: True), "a finite number")),
    ("md_level", "--md-level", _at_least(1)),
    ("md_train_size", "--md-train-size", _at_least(1)),
    ("md_test_size", "--md-test-size", _at_least(1)),
    ("seed", "--seed", _within(0, 2 ** 32 - 1)),
    ("train_num_samples", "--train-num-samples", _at_least(1)),
    ("val_num_samples", "--val-num-samples", _at_least(1)),
    ("num_samples", "--num-samples", _at_least(1)),
    ("log_freq", "--log-freq", _at_least(1)),
]
_TRAIN_RULES = [
    ("epochs", "--epochs", _at_least(1)),
    ("validation_batch_size", "-vb/--validation-batch-size", _at_least(1)),
    ("grad_accum_steps", "--grad-accum-steps", _at_least(1)),
    ("lr", "--lr", _at_least(0)),
    ("lr_base", "--lr-base", _above(0)),
    ("lr_base_size", "--lr-base-size", _at_least(1)),
    ("min_lr", "--min-lr", _at_least(0)),
    ("warmup_lr", "--warmup-lr", _at_least(0)),
    ("weight_decay", "--weight-decay", _at_least(0)),
    ("momentum", "--momentum", _within(0, 1)),
    ("opt_eps", "--opt-eps", _above(0)),
    ("opt_betas", "--opt-betas", _within(0, 1, hi_open=True)),
    ("clip_grad", "--clip-grad", _above(0)),
    ("layer_decay", "--layer-decay", _within(0, 1)),
    ("warmup_epochs", "--warmup-epochs", _at_least(0)),
    ("cooldown_epochs", "--cooldown-epochs", _at_least(0)),
    ("patience_epochs", "--patience-epochs", _at_least(0)),
    ("decay_epochs", "--decay-epochs", _above(0)),
    ("decay_milestones", "--decay-milestones", _at_least(1)),
    ("decay_rate", "--decay-rate", _above(0)),
    ("lr_cycle_mul", "--lr-cycle-mul", _above(0)),
    ("lr_cycle_decay", "--lr-cycle-decay", _above(0)),
    ("lr_cycle_limit", "--lr-cycle-limit", _at_least(1)),
    ("lr_k_decay", "--lr-k-decay", _above(0)),
    ("lr_noise", "--lr-noise", _at_least(0)),
    ("lr_noise_pct", "--lr-noise-pct", _at_least(0)),
    ("lr_noise_std", "--lr-noise-std", _at_least(0)),
    ("model_ema_decay", "--model-ema-decay", _within(0, 1, hi_open=True)),
    ("smoothing", "--smoothing", _within(0, 1, hi_open=True)),
    ("mixup", "--mixup", _at_least(0)),
    ("cutmix", "--cutmix", _at_least(0)),
    ("cutmix_minmax", "--cutmix-minmax", _within(0, 1)),
    ("mixup_prob", "--mixup-prob", _within(0, 1)),
    ("mixup_switch_prob", "--mixup-switch-prob", _within(0, 1)),
    ("mixup_off_epoch", "--mixup-off-epoch", _at_least(0)),
    ("reprob", "--reprob", _within(0, 1)),
    ("recount", "--recount", _at_least(1)),
    ("scale", "--scale", _above(0)),
    ("ratio", "--ratio", _above(0)),
    ("hflip", "--hflip", _within(0, 1)),
    ("vflip", "--vflip", _within(0, 1)),
    ("color_jitter", "--color-jitter", _at_least(0)),
    ("color_jitter_prob", "--color-jitter-prob", _within(0, 1)),
    ("grayscale_prob", "--grayscale-prob", _within(0, 1)),
    ("gaussian_blur_prob", "--gaussian-blur-prob", _within(0, 1)),
    ("drop", "--drop", _within(0, 1, hi_open=True)),
    ("drop_path", "--drop-path", _within(0, 1, hi_open=True)),
    ("drop_block", "--drop-block", _within(0, 1, hi_open=True)),
    ("bn_momentum", "--bn-momentum", _within(0, 1)),
    ("bn_eps", "--bn-eps", _above(0)),
    ("heldout_frac", "--heldout-frac", _within(0, 1, hi_open=True)),
    ("log_interval", "--log-interval", _at_least(1)),
    ("recovery_interval", "--recovery-interval", _at_least(0)),
    ("checkpoint_hist", "--checkpoint-hist", _at_least(0)),
    ("skip_nonfinite_steps", "--skip-nonfinite-steps", _at_least(0)),
]
# (dest, flag, allowed values) for strings timm would only reject deep inside a run.
_TRAIN_CHOICES = [
    ("clip_mode", "--clip-mode", ("norm", "value", "agc")),
    ("mixup_mode", "--mixup-mode", ("batch", "pair", "elem")),
    ("remode", "--remode", ("const", "rand", "pixel")),
    ("dist_bn", "--dist-bn", ("reduce", "broadcast", "")),
    ("worker_seeding", "--worker-seeding", ("all", "part")),
    ("lr_base_scale", "--lr-base-scale", ("", "linear", "sqrt")),
    ("sched", "--sched", ("cosine", "tanh", "step", "multistep", "plateau", "poly", "rsqrt", "constant", "const",
                          "none", "")),
    ("eval_metric", "--eval-metric", None),  # checked once the model's heads are known
    ("train_crop_mode", "--train-crop-mode", (None, "rrc", "rkrc", "rkrr")),
    ("interpolation", "--interpolation", ("", "nearest", "bilinear", "bicubic", "box", "hamming", "lanczos",
                                          "random")),
    ("train_interpolation", "--train-interpolation", (None, "nearest", "bilinear", "bicubic", "box", "hamming",
                                                      "lanczos", "random")),
]


def _values(value) -> List[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_numbers(args: argparse.Namespace, parser: argparse.ArgumentParser, rules, from_config=()) -> None:
    for dest, flag, (test, requirement) in rules:
        value = getattr(args, dest, None)
        if value is None:
            continue
        where = " (set in the -c/--config file)" if dest in from_config else ""
        for item in _values(value):
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                parser.error(f"{flag}{where} must be a number, got {item!r}.")
            if isinstance(item, float) and not math.isfinite(item):
                parser.error(f"{flag}{where} must be a finite number, got {item}.")
            if not test(item):
                shown = " ".join(map(str, _values(value))) if isinstance(value, (list, tuple)) else value
                parser.error(f"{flag}{where} must be {requirement}, got {shown}.")


def _check_train_choices(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    for dest, flag, allowed in _TRAIN_CHOICES:
        value = getattr(args, dest, None)
        if allowed is not None and value not in allowed:
            shown = ", ".join(repr(v) if v in ("", None) else str(v) for v in allowed if v is not None)
            parser.error(f"{flag} {value!r} is not one of {shown}.")
    _check_optimizer(args.opt, parser)
    for name in ("scale", "ratio", "cutmix_minmax"):
        value = getattr(args, name, None)
        if value is not None and len(value) == 2 and value[0] > value[1]:
            parser.error(f"--{name.replace('_', '-')} takes min then max, got {value[0]} > {value[1]}.")
    if args.cutmix_minmax is not None and len(args.cutmix_minmax) != 2:
        parser.error(f"--cutmix-minmax takes two numbers (min max), got {args.cutmix_minmax}.")
    if args.lr_noise is not None and len(args.lr_noise) > 2:
        parser.error(f"--lr-noise takes one or two epoch fractions, got {args.lr_noise}.")
    _check_run_name(args.experiment, parser)


def _check_optimizer(name: str, parser: argparse.ArgumentParser) -> None:
    from timm.optim import list_optimizers

    known = list_optimizers()
    base = name.lower()
    base = base[len("lookahead_"):] if base.startswith("lookahead_") else base
    if base not in known:
        import difflib

        close = difflib.get_close_matches(base, known, n=3)
        parser.error(f"--opt {name!r} is not one of timm's optimizers"
                     + (f"; did you mean {', '.join(close)}?" if close else
                        " (e.g. momentum, sgd, adamw, lamb; timm.optim.list_optimizers() lists them all)."))


def _check_run_name(experiment: Optional[str], parser: argparse.ArgumentParser) -> None:
    if experiment is None:
        return
    if not experiment or experiment in (".", "..") or "/" in experiment or "\\" in experiment \
            or experiment.startswith("."):
        parser.error(f"--experiment {experiment!r} must be a plain folder name (no '/', not starting with '.'): "
                     "the run folder is created under --output.")


def _normalise_sizes(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    size = getattr(args, "input_size", None)
    if size is not None:
        size = list(size)
        if len(size) == 1:
            args.img_size, args.input_size = int(size[0]), None
        elif len(size) == 3:
            args.input_size = tuple(int(v) for v in size)
        else:
            parser.error(f"--input-size takes C H W (e.g. 3 224 224) or a single side, got {size}.")
    for name in ("scale", "ratio"):
        value = getattr(args, name, None)
        if value is not None and len(value) != 2:
            parser.error(f"--{name} takes two numbers (min max), got {value}.")


def _split_config_and_recipe(argv: Optional[List[str]]) -> Tuple[argparse.Namespace, List[str]]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config", default="")
    pre.add_argument("--recipe", default=None)
    return pre.parse_known_args(argv)


def _given_on_command_line(argv: Optional[List[str]]) -> List[str]:
    """The settings the command line names itself (not defaults): a resumed run may refuse or adopt them."""
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    given, _ = probe.parse_known_args(argv)
    return sorted(vars(given))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse train.py's command line: defaults < --recipe < -c FILE < flags."""
    parser = build_parser()
    early, _ = _split_config_and_recipe(argv)
    settings = _read_config(early.config, parser) if early.config else {}
    recipe = early.recipe or settings.get("recipe")
    if recipe:
        if recipe not in RECIPES:
            parser.error(f"--recipe {recipe!r}: choose from {', '.join(sorted(RECIPES))}.")
        parser.set_defaults(**RECIPES[recipe])
    if settings:
        parser.set_defaults(**settings)
    args = parser.parse_args(argv)
    if args.data and not args.data_dir:
        args.data_dir = args.data
    if args.device is not None and args.device.split(":")[0] == "cpu":
        args.cpu = True
    given = set(_given_on_command_line(argv))
    from_config = set(settings) - given
    _normalise_sizes(args, parser)
    _check_numbers(args, parser, _COMMON_RULES + _TRAIN_RULES, from_config)
    _check_train_choices(args, parser)
    args.explicit = sorted(given | set(settings))
    return args


# --- validate.py -------------------------------------------------------------------------------------------------

def build_validate_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="validate.py", formatter_class=_HelpFormatter,
                                description="Evaluate one or more models: top-1, top-5, loss, each head's top-1 "
                                            "and per-class accuracy.")
    _add_data_arguments(p, training=False)
    g = p.add_argument_group("Model parameters")
    g.add_argument("--model", "-m", nargs="+", required=True, metavar="NAME",
                   help="architecture(s), arch.tag, hf-hub:org/repo or local-dir:DIR; several are evaluated in turn")
    g.add_argument("--pretrained", action="store_true", help="load the model's published (or Hub folder's) weights")
    g.add_argument("--checkpoint", default="", type=str, metavar="PATH",
                   help="weights to evaluate: a safetensors file, a checkpoint folder, a train.py run folder (its "
                        "best checkpoint), or a wildcard pattern matching several (each is evaluated)")
    g.add_argument("--use-ema", action="store_true", help="evaluate the checkpoint's EMA weights (runs with --model-ema)")
    g.add_argument("--num-classes", type=int, default=None, help="number of classes (default: the model's, or "
                                                                   "the data's with --checkpoint)")
    g.add_argument("--gp", default=None, type=str, metavar="POOL", help="global pool type, for models that take it")
    _add_input_arguments(g)
    g.add_argument("--crop-mode", default=None, type=str, help="evaluation crop mode: squash, border, center")
    g.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs, help="model options as key=value")
    g = p.add_argument_group("Evaluation parameters")
    g.add_argument("--seed", type=int, default=42, help="random seed (the multi-digit sets are generated from it)")
    g.add_argument("-b", "--batch-size", type=int, default=128, metavar="N", help="mini-batch size")
    g.add_argument("-j", "--workers", type=int, default=0, metavar="N", help="data loading processes")
    g.add_argument("--log-freq", default=10, type=int, metavar="N", help="batches between progress lines")
    g.add_argument("--amp", action="store_true", help="mixed precision evaluation")
    g.add_argument("--amp-dtype", default="bfloat16", choices=["bfloat16", "float16"], help="AMP dtype")
    g.add_argument("--channels-last", action="store_true", default=False, help="use the channels_last memory layout")
    g.add_argument("--no-prefetcher", action="store_true", default=False, help="disable timm's prefetcher")
    g.add_argument("--pin-mem", action="store_true", default=False, help="pin CPU memory in the DataLoader")
    g.add_argument("--device", default=None, type=str, help="'cpu' to run on the CPU")
    g.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    g.add_argument("--device-modules", default=None, type=str, nargs="+", help="Python modules to import first")
    g.add_argument("--results-file", default="", type=str, metavar="FILENAME",
                   help="write the results here; .json or .csv (or as --results-format says)")
    g.add_argument("--results-format", default=None, type=str,
                   help="results file format, csv or json (default: from the file's suffix)")
    return p


def parse_validate_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = build_validate_parser()
    args = parser.parse_args(argv)
    if args.data and not args.data_dir:
        args.data_dir = args.data
    if args.device is not None and args.device.split(":")[0] == "cpu":
        args.cpu = True
    _normalise_sizes(args, parser)
    _check_numbers(args, parser, _COMMON_RULES)
    return args
