"""The training loop behind train.py: any zoo or timm model, one ``CollabTask`` per round, timm's loop shape.

Each round of training is a ``CollabTask`` (one round for most methods, tau for class-level boosting): the task
names the module to optimise and returns the round's loss, the method's scores and the loss parts; the loop
around it is timm's (``task(input, target)``, backward, optimizer step, EMA update, ``distribute_bn``, evaluation,
``update_summary``, timm's optimizers and schedulers). A round that asks for it ends with the module's
predictions on a held-out part of the training set (``task.complete_round``). Nothing here knows which method
it is training.

Processes: ``python train.py`` is one process; ``accelerate launch [--multi_gpu] train.py`` (or torchrun) gives
DDP across GPUs or, with the CPU forced, across CPU processes (gloo); the task wraps its module in DDP. Data is
sharded by (seed, epoch) and every sample's augmentation is a function of (seed, epoch, index), so a run
resumed from a checkpoint, even mid-epoch, continues exactly as if it had never stopped.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..contract import head_names_of, num_rounds_of, write_figures_of
from ..data import DataBundle, DataError, DataSpec, build_data, heldout_split, resolve_dataset_name
from ..errors import (CorruptCheckpointError, IncompatibleConfigError, NonFiniteError, RunFolderBusyError,
                      RunWriteError)
from ..factory import create_model
from ..hub import atomic_write_text, push_to_hub, save_for_hub
from ..integrity import check_finite, describe_nonfinite, named_tensors_in, nonfinite_tensors
from .checkpoint import (_LEGACY_FORMATS, CHECKPOINT_FORMAT, INCOMING, CheckpointFolder, CheckpointHistory,
                         find_checkpoint_weights, fsync_folder, latest_checkpoint, publish_folder, restore_rng_state,
                         rng_state, run_folder_of, write_checkpoint, write_weights)
from .evaluate import EvalResult, evaluate
from .loader import batches_per_epoch, guarded_batches, make_eval_loader, make_train_loader
from .report import SummaryWriter, plot_training_curves
from .task import CollabTask

_logger = logging.getLogger("collab_zoo.train")

__all__ = ["Progress", "run_training", "TrainingInterrupted", "RUN_SETTINGS"]

# Settings that change the computation: a resumed run must keep them as the checkpoint recorded them.
# (--epochs may change: it extends, or shortens, the run.)
_FIXED_ON_RESUME = ("model", "dataset", "data_dir", "num_classes", "in_chans", "input_size", "img_size",
                    "model_kwargs", "batch_size", "grad_accum_steps", "seed", "md_level", "md_train_size",
                    "md_test_size", "heldout_frac", "opt", "lr", "lr_base", "weight_decay", "sched", "mixup",
                    "cutmix", "smoothing", "aa", "reprob", "scale", "ratio", "hflip", "color_jitter", "drop",
                    "drop_path", "pretrained", "pretrained_path", "initial_checkpoint")
# Settings a resumed run takes from its own command line rather than from the checkpoint.
_TAKEN_ON_RESUME = ("resume", "workers", "log_with", "log_wandb", "push_to_hub", "log_interval", "output", "cpu",
                    "device", "recovery_interval", "no_resume_opt", "pin_mem", "explicit", "skip_nonfinite_steps")
# What rebuilds a checkpoint's model (validate.py --checkpoint reads them from the weights folder's run.json).
RUN_SETTINGS = ("model", "model_kwargs", "num_classes", "in_chans", "input_size", "img_size", "dataset", "gp",
                "drop", "drop_path", "drop_block", "bn_momentum", "bn_eps")


class TrainingInterrupted(Exception):
    """Ctrl-C (SIGINT) or SIGTERM stopped training; ``checkpoints/last`` holds where it stopped. ``signal`` is the
    signal's number."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


@dataclass
class Progress:
    round: int = 0           # round being trained
    epoch: int = 0           # epoch (within the round) being trained
    batch: int = 0           # batches of that epoch already done
    step: int = 0            # optimizer steps in this round
    global_step: int = 0     # optimizer steps in the whole run
    best_metric: Optional[float] = None
    best_round: int = -1
    best_epoch: int = -1
    train_seconds: float = 0.0        # time spent training, over every call of train.py that ran this run
    images_seen: int = 0
    rounds_log: List[Dict[str, Any]] = field(default_factory=list)
    history: List[List[Any]] = field(default_factory=list)   # --checkpoint-hist: [metric, folder] best first
    nonfinite_skips: List[Dict[str, Any]] = field(default_factory=list)  # --skip-nonfinite-steps: what was skipped


class _Interrupt:
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler's or a shutdown's stop) set a flag the loop reads after each
    optimizer step: the run saves checkpoints/last there and stops. A checkpoint being written is finished first,
    because the flag is only read between steps. A second Ctrl-C stops at once."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.signum = signal.SIGINT
        self._previous: Dict[int, Any] = {}

    def __enter__(self):
        def handler(signum, frame):
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested = True
            self.signum = signum

        for signum in self._SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, handler)
            except ValueError:  # not the main thread: no handler, the signal behaves as Python's default
                pass
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        return False


class _ProgressLines:
    """A progress bar on a terminal; elsewhere (a log file, a pipe) one line every ``interval`` steps."""

    def __init__(self, enabled: bool, total: int, initial: int, desc: str, interval: int):
        self.enabled, self.total, self.done, self.desc = enabled, total, initial, desc
        self.interval = max(1, int(interval))
        self.bar = None
        self.started = time.perf_counter()
        if enabled and sys.stdout.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, loss: float, loss_avg: float, lr: float, images: int) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if self.done % self.interval == 0:
                self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
            return
        if self.done % self.interval == 0 or self.done == self.total:
            rate = images / max(time.perf_counter() - self.started, 1e-9)
            _logger.info("%s [%d/%d]  loss %.4g (%.4g)  lr %.3e  %.1f img/s", self.desc, self.done, self.total,
                         loss, loss_avg, lr, rate)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _explicit_flags(args) -> set:
    return set(getattr(args, "explicit", None) or ())


class _Run:
    """State of one training run (the method's, or the baseline's)."""

    def __init__(self, args):
        from accelerate import PartialState
        from accelerate.utils import set_seed

        self.args = args
        if getattr(args, "device_modules", None):
            import importlib

            for module in args.device_modules:
                importlib.import_module(module)
        self.processes = PartialState(cpu=args.cpu or not torch.cuda.is_available())
        self.device = self.processes.device
        self.world, self.rank = self.processes.num_processes, self.processes.process_index
        self.is_main = self.processes.is_main_process
        self.amp_dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
        if args.amp and self.amp_dtype == torch.float16 and self.device.type != "cuda":
            raise IncompatibleConfigError("--amp-dtype float16 needs a GPU; on the CPU use bfloat16 (the default).")
        self.progress = Progress()
        self.partial: Dict[str, Any] = {}
        self.resume_dir: Optional[CheckpointFolder] = None   # the checked checkpoint a resumed run starts from
        self.resume_run: Optional[Path] = None                # ...and the run folder it belongs to
        self.saved_epochs: Optional[int] = None
        self.last_saved: Optional[str] = None                 # where checkpoints/last stands, for messages
        self._lock_fd: Optional[int] = None
        if args.resume:
            self.resume_dir = latest_checkpoint(Path(args.resume))
            self._adopt_saved_args()
        else:
            _check_output_writable(Path(args.output))
        args.dataset = resolve_dataset_name(args.dataset, args.data_dir)
        set_seed(args.seed)
        self.bundle = self._open_data()
        self.model, self.base_model = self._build_model()
        self._configure_data()
        self._check_input_fits(self.model)
        self._check_eval_metric()
        self._check_batch_fits()
        self.out = self._output_dir()
        try:
            self.ckpt_root = self.out / "checkpoints"
            self.acc = self._trackers()
            self.summary = SummaryWriter(self.out / "summary.csv", log_wandb=self._wandb_ready()) if self.is_main else None
        except BaseException:
            self.release()
            raise
        self.interrupt = _Interrupt()

    # -- set-up ----------------------------------------------------------------------------------------------
    def _adopt_saved_args(self) -> None:
        state = self.resume_dir.run_state()
        if state.get("format") != CHECKPOINT_FORMAT and state.get("format") not in _LEGACY_FORMATS:
            raise IncompatibleConfigError(
                f"{self.resume_dir.path} was written in checkpoint format {state.get('format')}; this version reads "
                f"formats {', '.join(map(str, (*_LEGACY_FORMATS, CHECKPOINT_FORMAT)))}. Use the collab_zoo version "
                "that wrote it, or start a new run from its weights with --initial-checkpoint.")
        # The run folder is the one the checkpoint lives in, wherever the run was started: a copied run folder
        # continues in the copy and never writes into the original.
        self.resume_run = run_folder_of(self.resume_dir.path)
        saved = state["args"]
        explicit = _explicit_flags(self.args)
        for key in _FIXED_ON_RESUME:
            mine = getattr(self.args, key, None)
            if key in explicit and _comparable(mine) != _comparable(saved.get(key)):
                raise IncompatibleConfigError(
                    f"--resume: --{key.replace('_', '-')} {mine!r} differs from the checkpoint's {saved.get(key)!r}. "
                    "A resumed run keeps the settings it was started with; start a new run to change them.")
        if state.get("world_size") != self.processes.num_processes:
            raise IncompatibleConfigError(
                f"--resume: the checkpoint was written by {state.get('world_size')} process(es), this run has "
                f"{self.processes.num_processes}. An exact resume needs the same number (each keeps its own RNG state).")
        keep = {k: getattr(self.args, k) for k in _TAKEN_ON_RESUME if hasattr(self.args, k)}
        epochs = self.args.epochs if "epochs" in explicit else None
        for key, value in saved.items():
            setattr(self.args, key, tuple(value) if key == "input_size" and value is not None else value)
        for key, value in keep.items():
            setattr(self.args, key, value)
        self.args.experiment = self.resume_run.name
        self.args.output = str(self.resume_run.parent)
        try:
            self.progress = Progress(**state["progress"])
            self.saved_epochs = int(saved["epochs"])
        except (TypeError, ValueError, KeyError) as e:
            raise CorruptCheckpointError(
                f"{self.resume_dir.path}/state.json is damaged: its progress or settings do not read back ({e}). "
                "Resume from another copy of the run, or start a new run with --initial-checkpoint.") from None
        self.last_saved = _position(self.progress)
        if epochs is not None and epochs != self.saved_epochs:
            done = self.progress.epoch
            if epochs < done:
                raise IncompatibleConfigError(
                    f"--resume with --epochs {epochs}: the run has already trained {done} epochs of this round.")
            _logger.info("Extending the run from %d to %d epochs (per round): the learning-rate schedule is "
                         "recomputed over %d epochs, as timm's train.py does on resume.", self.saved_epochs, epochs,
                         epochs)
            self.args.epochs = epochs

    def _data_spec(self) -> DataSpec:
        a = self.args
        return DataSpec(dataset=a.dataset, data_dir=a.data_dir, input_size=a.input_size or a.img_size,
                        in_chans=a.in_chans, md_level=a.md_level, md_train_size=a.md_train_size,
                        md_test_size=a.md_test_size, seed=a.seed, augment=not a.no_aug, train_split=a.train_split,
                        val_split=a.val_split, skip_bad_images=a.skip_bad_images, class_map=a.class_map,
                        input_img_mode=a.input_img_mode, download=a.dataset_download,
                        train_num_samples=a.train_num_samples, val_num_samples=a.val_num_samples,
                        input_key=a.input_key, target_key=a.target_key)

    def _open_data(self) -> DataBundle:
        return build_data(self._data_spec())

    def _build_model(self) -> Tuple[nn.Module, Optional[str]]:
        a = self.args
        data_classes = self.bundle.num_classes or a.num_classes
        if not data_classes:
            raise DataError(f"--dataset {a.dataset} does not say how many classes it has: pass --num-classes.")
        if a.num_classes is not None and self.bundle.num_classes and a.num_classes != self.bundle.num_classes:
            raise DataError(f"--num-classes {a.num_classes} but the data has {self.bundle.num_classes} classes.")
        overlay = dict(file=a.pretrained_path) if a.pretrained_path else None
        kwargs = dict(a.model_kwargs or {})
        flag_kwargs = dict(drop_rate=a.drop, drop_path_rate=a.drop_path, drop_block_rate=a.drop_block,
                           global_pool=a.gp, bn_momentum=a.bn_momentum, bn_eps=a.bn_eps)
        kwargs.update({k: v for k, v in flag_kwargs.items() if v is not None})
        in_chans = a.in_chans or (a.input_size[0] if a.input_size else None)
        if in_chans is None and self.bundle.builtin:
            in_chans = self.bundle.data_config["input_size"][0]
        pretrained = a.pretrained or bool(a.pretrained_path)
        try:
            if a.pretrained and a.num_classes is None:
                model = create_model(a.model, pretrained=True, in_chans=in_chans, pretrained_cfg_overlay=overlay,
                                     **kwargs)
                if model.num_classes != data_classes:
                    raise DataError(
                        f"The pretrained {a.model} has {model.num_classes} classes, the data {data_classes}. "
                        f"Pass --num-classes {data_classes} to fine-tune (every head's classifier starts fresh).")
            else:
                model = create_model(a.model, pretrained=pretrained, num_classes=data_classes, in_chans=in_chans,
                                     pretrained_cfg_overlay=overlay, **kwargs)
        except TypeError as e:
            raise IncompatibleConfigError(_options_message(a.model, kwargs, flag_kwargs, e)) from None
        if a.initial_checkpoint and self.resume_dir is None:  # a resumed run's weights come from its checkpoint
            self._load_initial_checkpoint(model)
        if pretrained:
            self._log_new_heads(model)
        if a.grad_checkpointing and hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        if a.sync_bn and self.world > 1:
            from timm.layers import convert_sync_batchnorm

            if self.device.type != "cuda":
                raise IncompatibleConfigError(
                    "--sync-bn needs GPUs (torch's SyncBatchNorm runs on CUDA only). Across CPU processes, --dist-bn "
                    "reduce (the default) averages the BatchNorm statistics after every epoch instead.")
            model = convert_sync_batchnorm(model)
            a.dist_bn = ""  # synchronised statistics need no averaging afterwards
        return model, _base_model_of(a)

    def _load_initial_checkpoint(self, model: nn.Module) -> None:
        from ..weights import load_safetensors_file

        weights, _ = find_checkpoint_weights(Path(self.args.initial_checkpoint))
        state = load_safetensors_file(weights)
        check_finite(state, f"--initial-checkpoint {weights}")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise IncompatibleConfigError(
                f"--initial-checkpoint {weights} does not fit {self.args.model} (missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}). For weights of another class count or layout use --pretrained-path, which adapts "
                "the heads and the first convolution.")
        _logger.info("Loaded --initial-checkpoint %s (%d tensors).", weights, len(state))

    def _log_new_heads(self, model: nn.Module) -> None:
        report = getattr(model, "pretrained_load_report", None)
        if report is None:
            return
        fresh = set(report.initialised)
        names = list(head_names_of(model))
        classifiers = list(model.classifier_names()) if hasattr(model, "classifier_names") else []
        new = [h for h, c in zip(names[-len(classifiers):], classifiers) if f"{c}.weight" in fresh] if classifiers else []
        if new:
            _logger.info("Fine-tuning from %s: new heads for %d classes (initialised fresh): %s.", report.location,
                         model.num_classes, ", ".join(new))
        for line in report.adapted:
            _logger.info("Adapted %s", line)

    def _configure_data(self) -> None:
        """The data config: the built-in set's own, or the model's pretrained_cfg; flags override either (timm's
        resolve_data_config). The saved model then describes the data it was trained on."""
        from timm.data import resolve_data_config

        a, model, bundle = self.args, self.model, self.bundle
        chans = _input_channels(model, a)
        base = dict(bundle.data_config) if bundle.builtin else dict(model.pretrained_cfg)
        overrides = dict(in_chans=chans, interpolation=a.interpolation or None, mean=a.mean, std=a.std,
                         crop_pct=a.crop_pct)
        if not bundle.builtin:
            overrides.update(input_size=a.input_size, img_size=a.img_size)
        try:
            config = resolve_data_config(overrides, pretrained_cfg=base)
        except AssertionError:
            raise IncompatibleConfigError(f"--mean/--std need 1 or {chans} values (the input channels).") from None
        config["input_size"] = (chans, *tuple(config["input_size"])[1:])
        bundle.apply_data_config(config)
        cfg = dict(model.pretrained_cfg)
        cfg.update(bundle.data_config)
        cfg["num_classes"] = model.num_classes
        model.pretrained_cfg = model.default_cfg = cfg
        if self.is_main:
            _logger.info("Data: %s, %d classes, %s images for training, %s for evaluation; input %s, mean %s, std %s.",
                         a.dataset or f"folder {a.data_dir}", bundle.num_classes or model.num_classes,
                         _length(bundle.train), _length(bundle.eval), bundle.data_config["input_size"],
                         _rounded(bundle.data_config["mean"]), _rounded(bundle.data_config["std"]))

    def _check_input_fits(self, model: nn.Module) -> None:
        """One evaluation sample through the model before any work: a fixed-size network (LeNet, AlexNet,
        an MLP) given another input size fails here, with what to do, not in the first training step."""
        try:
            image, _ = self.bundle.eval[0]
        except (TypeError, IndexError):
            return  # a streamed data set: nothing to index
        image = torch.as_tensor(image)
        if image.dtype == torch.uint8:
            image = image.float()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(image[None])
        except RuntimeError as e:
            size = tuple(image.shape)
            default = tuple(model.pretrained_cfg.get("input_size", ()))
            raise IncompatibleConfigError(
                f"{self.args.model} cannot take the data's {size} inputs ({str(e).splitlines()[0]}). Its default "
                f"input is {default}: pass --img-size {default[-1] if default else '...'}, or build it for this "
                f"size if it has the option (--model-kwargs img_size={size[-1]}).") from None
        finally:
            model.train(was_training)

    def _output_dir(self) -> Path:
        from accelerate.utils import broadcast_object_list

        a = self.args
        if a.experiment is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            dataset = a.dataset or "folder"
            name = [f"{stamp}-{''.join(c if c.isalnum() else '_' for c in a.model)}-{dataset.replace('/', '_')}"]
            broadcast_object_list(name)
            a.experiment = name[0]
        out = self.resume_run if self.resume_run is not None else Path(a.output) / a.experiment
        if self.is_main:
            with _writing(f"the run folder {out}"):
                out.mkdir(parents=True, exist_ok=True)
            # One writer per run folder: a second train.py with the same --output/--experiment (or a second
            # --resume of the run) stops here instead of mixing its checkpoints into this one's.
            self._lock_fd = _lock_run_folder(out)
            if not a.resume and (out / "checkpoints").exists():
                self.release()
                raise IncompatibleConfigError(
                    f"{out} already holds a run. Continue it with --resume {out}, or choose another --experiment.")
            if not a.resume:
                import yaml

                with _writing(f"the run folder {out}"):
                    # A run that stopped before its first checkpoint left nothing to continue; its log goes too.
                    (out / "summary.csv").unlink(missing_ok=True)
                    atomic_write_text(out / "args.yaml", yaml.safe_dump(_jsonable_args(a), default_flow_style=False))
        self.processes.wait_for_everyone()
        return out

    def release(self) -> None:
        """Give up the run folder's lock (the process's end does it too, whatever ends it)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _check_eval_metric(self) -> None:
        """--eval-metric is checked before any work (it is first used after the first epoch)."""
        name = self.args.eval_metric
        if num_rounds_of(self.model) > 1 and name.startswith("top1_"):
            return  # each round has its own heads; checked when the round's first epoch is evaluated
        known = ["top1", "loss", *(["top5"] if self.model.num_classes > 5 else []),
                 *(f"top1_{h}" for h in head_names_of(self.model))]
        if name not in known:
            raise IncompatibleConfigError(f"--eval-metric {name!r} is not measured for {self.args.model}; choose "
                                          f"from {', '.join(known)}.")

    def _wandb_ready(self) -> bool:
        if not self.args.log_wandb or not self.is_main:
            return False
        try:
            import wandb
        except ImportError:
            _logger.warning("--log-wandb: wandb is not installed, metrics are not logged to it (pip install wandb).")
            return False
        wandb.init(project=None, name=self.args.experiment, config=_tracker_config(self.args))
        return True

    def _trackers(self):
        """An Accelerator for accelerate's trackers (TensorBoard...), nothing else: the task does DDP."""
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState

        log_with = self.args.log_with
        if log_with == "auto":
            try:
                import tensorboard  # noqa: F401
                log_with = "tensorboard"
            except ImportError:
                log_with = None
        elif log_with in ("none", ""):
            log_with = None
        # accelerate keeps its settings in a process-wide singleton; one process may run several trainings.
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        acc = Accelerator(cpu=self.device.type == "cpu", log_with=log_with, project_dir=str(self.out), rng_types=[])
        if self.is_main:
            acc.init_trackers(self.args.experiment, config=_tracker_config(self.args))
        return acc

    def barrier(self) -> None:
        self.processes.wait_for_everyone()

    def autocast(self):
        if not self.args.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _state_json(self) -> Dict[str, Any]:
        # No path to the run itself (--output, --resume): the run folder is wherever this checkpoint is found, so a
        # copied run resumes in the copy.
        args = {k: v for k, v in _jsonable_args(self.args).items() if k not in ("output", "resume")}
        return dict(progress=asdict(self.progress), args=args, experiment=self.args.experiment,
                    world_size=self.world, head_names=list(head_names_of(self.model)),
                    written=time.strftime("%Y-%m-%d %H:%M:%S"))

    def _save_checkpoint(self, task: CollabTask, optimizer, scheduler, scaler) -> None:
        ema = task.get_trainable_module(ema=True)
        self._agreed_finite_or_raise("checkpoints/last", {
            **self.model.state_dict(),
            **({f"ema.{k}": v for k, v in ema.module.state_dict().items()} if ema is not None else {}),
            **named_tensors_in(optimizer.state_dict().get("state", {}), "optimizer.state")})
        write_checkpoint(
            self.ckpt_root, rank=self.rank, is_main=self.is_main, barrier=self.barrier,
            rank_state=dict(rng=rng_state(), partial=self.partial),
            model_state=self.model.state_dict() if self.is_main else None,
            optimizer_state=optimizer.state_dict() if self.is_main else None,
            scheduler_state=scheduler.state_dict() if scheduler is not None and self.is_main else None,
            scaler_state=scaler.state_dict() if scaler is not None and self.is_main else None,
            ema_state=ema.module.state_dict() if ema is not None and self.is_main else None,
            state=self._state_json() if self.is_main else None)
        self.last_saved = _position(self.progress)

    def _agreed_finite_or_raise(self, what: str, tensors: Dict[str, torch.Tensor]) -> None:
        """check_finite on every process at once: all of them stop, or none (a checkpoint is a collective write)."""
        bad = nonfinite_tensors(tensors)
        if self._agreed(not bad):
            return
        if bad:
            check_finite({k: tensors[k] for k in bad}, what)
        raise NonFiniteError(f"{what}: another process's copy holds NaN or infinity, so nothing was written.")

    def _agreed(self, ok: bool) -> bool:
        """Whether ``ok`` holds on every process (one all-reduce when there are several)."""
        if self.world == 1:
            return ok
        flag = torch.tensor([0.0 if ok else 1.0], device=self.device)
        torch.distributed.all_reduce(flag)
        return bool(flag.item() == 0)

    def _load_model_state(self) -> None:
        state = self.resume_dir.tensors("model.safetensors")
        check_finite(state, f"--resume {self.resume_dir.path}")
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise IncompatibleConfigError(
                f"--resume {self.resume_dir.path}: its weights do not fit {self.args.model} (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}).")

    def _load_round_state(self, task: CollabTask, optimizer, scheduler, scaler) -> None:
        folder, p, a = self.resume_dir, self.progress, self.args
        self.resume_dir = None  # consumed
        rank_state = folder.state(f"rank{self.rank}")
        if p.epoch == 0 and p.batch == 0 and p.step == 0:
            # A checkpoint taken between rounds: the new round starts with a fresh optimizer and schedule.
            restore_rng_state(rank_state["rng"])
            return
        if not a.no_resume_opt:
            optimizer.load_state_dict(folder.state("optimizer"))
            if scaler is not None and folder.has("scaler.json"):
                scaler.load_state_dict(folder.state("scaler"))
        if scheduler is not None:
            if self.saved_epochs == a.epochs:
                scheduler.load_state_dict(folder.state("scheduler"))
            else:  # a longer (or shorter) run: the schedule over the new length, at the point reached
                scheduler.step(p.epoch)
                scheduler.step_update(num_updates=p.step)
        ema = task.get_trainable_module(ema=True)
        if ema is not None and folder.has("ema.safetensors"):
            ema.module.load_state_dict(folder.tensors("ema.safetensors"))
        self.partial = rank_state["partial"]
        restore_rng_state(rank_state["rng"])

    # -- one round -------------------------------------------------------------------------------------------
    def _learning_rate(self) -> float:
        """--lr, or --lr-base scaled by the global batch size as timm's train.py computes it (inline in its
        script; timm has no library function for it)."""
        a = self.args
        if a.lr is not None:
            return a.lr
        global_batch = a.batch_size * self.world * a.grad_accum_steps
        ratio = global_batch / a.lr_base_size
        scale = a.lr_base_scale or ("sqrt" if any(o in a.opt.lower() for o in ("ada", "lamb")) else "linear")
        if scale == "sqrt":
            ratio = ratio ** 0.5
        lr = a.lr_base * ratio
        if self.is_main:
            _logger.info("Learning rate %.4g from --lr-base %g and the global batch of %d (%s scaling).", lr,
                         a.lr_base, global_batch, scale)
        return lr

    def _make_optimizer(self, module: nn.Module, updates_per_epoch: int):
        from timm.optim import create_optimizer_v2, optimizer_kwargs
        from timm.scheduler import create_scheduler_v2, scheduler_kwargs

        a = self.args
        settings = argparse_namespace(a, lr=self._learning_rate())
        optimizer = create_optimizer_v2(module, **optimizer_kwargs(cfg=settings), **(a.opt_kwargs or {}))
        scheduler = None
        if a.sched not in ("none", "constant", "const", ""):
            kwargs = scheduler_kwargs(settings, decreasing_metric=a.eval_metric == "loss")
            if a.sched == "plateau":
                kwargs["step_on_epochs"] = True  # timm's plateau scheduler follows the metric, once an epoch
            scheduler, _ = create_scheduler_v2(optimizer, **kwargs, updates_per_epoch=updates_per_epoch)
        return optimizer, scheduler

    def train(self) -> Dict[str, Any]:
        a, p = self.args, self.progress
        from timm.data import Mixup

        mixup = None
        if a.mixup > 0 or a.cutmix > 0 or a.cutmix_minmax is not None:
            # In the loop, not timm's collate: the draws come from the process's numpy generator, which a
            # checkpoint saves, so a resumed run mixes the same pairs.
            mixup = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, cutmix_minmax=a.cutmix_minmax,
                          prob=a.mixup_prob, switch_prob=a.mixup_switch_prob, mode=a.mixup_mode,
                          label_smoothing=a.smoothing, num_classes=self.model.num_classes)
        if self.resume_dir is not None:
            self._load_model_state()
            if self.summary is not None:
                self.summary.keep_epochs_before(self._summary_epoch(p.round, p.epoch))
        self.model.to(self.device)
        if a.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.is_main:
            _logger.info("Run folder: %s", self.out)
        eval_loader = make_eval_loader(self.bundle.eval, a, self.bundle, self.device, self.world, self.rank,
                                       a.validation_batch_size)
        rounds = num_rounds_of(self.model)
        with self.interrupt:
            while p.round < rounds:
                self._train_round(p.round, rounds, mixup, eval_loader)
        return self._finish(eval_loader)

    def _train_round(self, index: int, rounds: int, mixup, eval_loader) -> None:
        a, p = self.args, self.progress
        task = CollabTask(self.model, round_index=index, smoothing=0.0 if mixup is not None else a.smoothing,
                          device=self.device, verbose=self.is_main)
        train_set, heldout = self.bundle.train, None
        if task.needs_heldout:
            train_set, heldout = heldout_split(self.bundle, a.heldout_frac, a.seed)
            if getattr(self.model, "objective", None) == "margin" and hasattr(self.model, "set_class_counts"):
                self.model.set_class_counts(train_set)  # Eq. 3 divides by the training set's class counts
        batches = batches_per_epoch(len(train_set), a.batch_size, self.world)
        updates_per_epoch = math.ceil(batches / a.grad_accum_steps)
        optimizer, scheduler = self._make_optimizer(task.get_trainable_module(), updates_per_epoch)
        scaler = None
        if a.amp and self.amp_dtype == torch.float16 and self.device.type == "cuda":
            from timm.utils import NativeScaler

            scaler = NativeScaler(device=self.device.type)
        if a.model_ema:
            task.setup_ema(decay=a.model_ema_decay, use_warmup=a.model_ema_warmup)
        if a.torchcompile:
            task.compile(backend=a.torchcompile, mode=a.torchcompile_mode)
        if self.world > 1:
            task.prepare_distributed(device_ids=[self.device] if self.device.type == "cuda" else None,
                                     broadcast_buffers=not a.no_ddp_bb)
        if self.resume_dir is not None:
            self._load_round_state(task, optimizer, scheduler, scaler)
        history = CheckpointHistory(self.ckpt_root, a.checkpoint_hist if rounds == 1 else 0,
                                    decreasing=a.eval_metric == "loss", entries=p.history)
        while p.epoch < a.epochs:
            if mixup is not None and a.mixup_off_epoch and p.epoch >= a.mixup_off_epoch:
                mixup.mixup_enabled = False
            train_stats = self._train_epoch(task, optimizer, scheduler, scaler, train_set, mixup)
            module = task.get_trainable_module()
            if self.world > 1 and a.dist_bn in ("broadcast", "reduce"):
                from timm.utils import distribute_bn

                distribute_bn(module, self.world, a.dist_bn == "reduce")
                if task.has_ema():
                    distribute_bn(task.get_trainable_module(ema=True), self.world, a.dist_bn == "reduce")
            result = self._evaluate(task.round.module, eval_loader, task)
            metrics = result.as_dict()
            ema_result = None
            if task.has_ema():
                ema_result = self._evaluate(task.get_trainable_module(ema=True).module, eval_loader, task)
                metrics.update(ema_result.as_dict("ema_"))
            scored = ema_result or result
            metric = self._metric(scored, task)
            if scheduler is not None:
                scheduler.step(p.epoch + 1, metric)
            self._log_epoch(index, rounds, train_stats, metrics)
            improved = rounds == 1 and (p.best_metric is None or _better(metric, p.best_metric, a.eval_metric))
            if improved:
                p.best_metric, p.best_epoch, p.best_round = metric, p.epoch, index
            if self.is_main and rounds == 1:
                # The weights that scored the metric (the EMA's, with --model-ema) are the ones a Hub folder gets.
                weights = "ema" if ema_result is not None else "model"
                info = dict(epoch=p.epoch, round=index, metric=a.eval_metric, value=metric,
                            **_prefixed(metrics, "eval_"))
                ema_state = task.get_trainable_module(ema=True).module.state_dict() if task.has_ema() else None
                run = {k: v for k, v in _jsonable_args(a).items() if k in RUN_SETTINGS}
                history.offer(f"epoch-{p.epoch}", metric, self.model.state_dict(), info, ema_state, run)
                p.history = history.entries
                if improved:
                    write_weights(self.ckpt_root / "best", self.model.state_dict(), {**info, "hub_weights": weights},
                                  ema_state, run)
            p.epoch += 1
            p.batch = 0
            self._save_checkpoint(task, optimizer, scheduler, scaler)
        if task.has_ema():
            # The EMA weights are the round's result: they answer the held-out set and join the ensemble.
            task.round.module.load_state_dict(task.get_trainable_module(ema=True).module.state_dict())
        if task.needs_heldout and heldout is not None:
            held_loader = make_eval_loader(heldout, a, self.bundle, self.device, self.world, self.rank,
                                           a.validation_batch_size)
            info = task.complete_round(held_loader)
            p.rounds_log.append({**_scalars(info), "round": index + 1})
            if self.is_main:
                _logger.info("round %d done: %s", index + 1, _scalars(info))
        p.round += 1
        p.epoch = p.step = 0
        if p.round < rounds:
            self._save_checkpoint(task, optimizer, scheduler, scaler)

    def _check_batch_fits(self) -> None:
        """BatchNorm in training mode needs two or more samples a batch; say so before any work, not at the first
        step (a last batch of one sample joins the one before it: see loader.batches_per_epoch)."""
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
            return
        train_set = self.bundle.train
        try:
            per_process = math.ceil(len(train_set) / self.world)
        except TypeError:
            return  # streamed
        if self.args.batch_size < 2:
            raise IncompatibleConfigError(
                f"-b {self.args.batch_size}: {self.args.model} has BatchNorm, which cannot train on batches of one "
                "sample. Use -b 2 or more (with --grad-accum-steps to keep the memory of a small batch).")
        if per_process < 2:
            raise DataError(
                f"The training split has {len(train_set)} image(s) for {self.world} process(es): {self.args.model} "
                "has BatchNorm, which needs batches of two or more. Add training images.")

    def _metric(self, result: EvalResult, task: CollabTask) -> float:
        name = self.args.eval_metric
        values = result.as_dict()
        if name not in values:
            raise IncompatibleConfigError(
                f"--eval-metric {name!r} is not measured here; choose from {', '.join(sorted(values))}.")
        return float(values[name])

    def _evaluate(self, module: nn.Module, loader, task: CollabTask) -> EvalResult:
        loss = task.round.loss

        def objective(heads, scores, target):
            return loss(tuple(heads), target)[0]

        return evaluate(module, loader, self.model.num_classes, task.head_names, device=self.device,
                        autocast=self.autocast, loss_fn=objective, channels_last=self.args.channels_last)

    def _train_epoch(self, task: CollabTask, optimizer, scheduler, scaler, train_set, mixup) -> Dict[str, float]:
        from timm.utils import dispatch_clip_grad

        a, p = self.args, self.progress
        started = time.perf_counter()
        loader, total_batches = make_train_loader(train_set, a, self.bundle, self.device, self.world, self.rank,
                                                  p.epoch, p.batch)
        module = task.get_trainable_module()
        module.train()
        if p.batch == 0 or not self.partial:
            self.partial = dict(sums={}, hits=0.0, seen=0, lr_sum=0.0, updates=0)
        sums = self.partial["sums"]
        accum = a.grad_accum_steps
        prefetched = not a.no_prefetcher
        multi_round = num_rounds_of(self.model) > 1
        label = (f"round {p.round + 1} " if multi_round else "") + f"epoch {p.epoch + 1}/{a.epochs}"
        lines = _ProgressLines(self.is_main, total_batches, p.batch, label, a.log_interval)
        seen_here = 0
        first_batch = p.batch
        skip_allowed = bool(a.skip_nonfinite_steps)
        problem: Optional[str] = None   # what went non-finite in the current optimizer step
        snapshot = None                 # the state before it, with --skip-nonfinite-steps
        try:
            for i, (images, target) in enumerate(guarded_batches(loader), start=p.batch):
                if not prefetched:
                    images, target = images.to(self.device), target.to(self.device)
                if a.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                hard = target
                if mixup is not None:
                    if len(hard) % 2 == 0:
                        images, target = mixup(images, target)
                    else:
                        # timm's Mixup pairs samples and needs an even batch (timm drops the last partial batch;
                        # this loop keeps it): an odd one gets Mixup's targets with nothing mixed.
                        from timm.data.mixup import mixup_target

                        target = mixup_target(target, self.model.num_classes, 1.0, mixup.label_smoothing)
                need_update = (i + 1) % accum == 0 or i + 1 == total_batches
                if i == first_batch or i % accum == 0:  # an optimizer step's first batch
                    problem = None
                    snapshot = self._snapshot(optimizer, scaler) if skip_allowed else None
                sync = contextlib.nullcontext() if need_update or self.world == 1 else task.no_sync()
                with sync:
                    with self.autocast():
                        result = task(images, target)
                    loss = result["loss"]
                    loss_finite = self._agreed(bool(torch.isfinite(loss.detach())))
                    if problem is None and not loss_finite:
                        problem = _loss_problem(loss)
                        if not skip_allowed:
                            raise self._nonfinite_stop(problem, i, total_batches)
                    if problem is None:  # a step already found bad is not computed further: it will be undone
                        clip = task.get_clip_parameters(exclude_head="agc" in a.clip_mode) if a.clip_grad else None
                        if scaler is not None:
                            scaler(loss / accum, optimizer, clip_grad=a.clip_grad, clip_mode=a.clip_mode,
                                   parameters=clip, need_update=need_update)
                        else:
                            (loss / accum).backward()
                            if need_update:
                                if a.clip_grad:
                                    dispatch_clip_grad(clip, value=a.clip_grad, mode=a.clip_mode)
                                optimizer.step()
                if need_update and problem is None:
                    # The step's result, buffers included (BatchNorm's running statistics change in every
                    # training forward): a model that went non-finite is never trained on or saved.
                    problem = self._weights_problem()
                    if problem is not None and not skip_allowed:
                        raise self._nonfinite_stop(problem, i, total_batches)
                n = len(hard)
                if loss_finite:  # a non-finite loss would poison the epoch's averages
                    self.partial["hits"] += float((result["output"].argmax(-1) == hard).sum())
                    self.partial["seen"] += n
                    sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * n
                    for key, value in result.items():
                        if key not in ("loss", "output"):
                            sums[key] = sums.get(key, 0.0) + float(value.detach()) * n
                seen_here += n
                p.batch = i + 1
                lr = sum(g["lr"] for g in optimizer.param_groups) / len(optimizer.param_groups)
                lines.update(float(loss.detach()), sums.get("loss", 0.0) / max(self.partial["seen"], 1), lr,
                             seen_here * self.world)
                if not need_update:
                    continue
                skipped = problem is not None
                if skipped:
                    self._skip_step(problem, snapshot, optimizer, scaler, i, total_batches)
                optimizer.zero_grad(set_to_none=True)
                # A skipped step still counts as one of the schedule's steps (as timm's loss scaler's skipped steps
                # do): the learning rate follows the schedule the run was started with, never lowered on its own.
                p.step += 1
                p.global_step += 1
                self.partial["lr_sum"] += lr
                self.partial["updates"] += 1
                if scheduler is not None:
                    scheduler.step_update(num_updates=p.step, metric=sums.get("loss", 0.0) / max(self.partial["seen"], 1))
                if not skipped:
                    task.update_ema(step=p.step)
                if self._stop_requested():
                    p.train_seconds += time.perf_counter() - started
                    p.images_seen += seen_here * self.world
                    self._save_checkpoint(task, optimizer, scheduler, scaler)
                    how = "interrupted" if self.interrupt.signum == signal.SIGINT else "terminated (SIGTERM)"
                    raise TrainingInterrupted(
                        f"{how}: saved {self.ckpt_root / 'last'} at round {p.round + 1} epoch {p.epoch + 1} "
                        f"batch {p.batch}/{total_batches}; continue with: python train.py --resume {self.out}",
                        self.interrupt.signum)
                if a.recovery_interval and p.global_step % a.recovery_interval == 0 and p.batch < total_batches:
                    p.train_seconds += time.perf_counter() - started
                    p.images_seen += seen_here * self.world
                    started, seen_here = time.perf_counter(), 0
                    self._save_checkpoint(task, optimizer, scheduler, scaler)
        finally:
            lines.close()
        p.train_seconds += time.perf_counter() - started
        p.images_seen += seen_here * self.world
        return self._epoch_stats()

    # -- non-finite steps ----------------------------------------------------------------------------------------
    def _weights_problem(self) -> Optional[str]:
        """What is non-finite in the model's weights and buffers after a step (None: nothing), agreed by every
        process."""
        state = self.model.state_dict()
        bad = nonfinite_tensors(state)
        if self._agreed(not bad):
            return None
        if not bad:
            return "another process's weights or buffers became non-finite"
        shown = "; ".join(describe_nonfinite(k, state[k]) for k in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        return f"{len(bad)} weight/buffer tensor{'s' if len(bad) > 1 else ''} became non-finite: {shown}{more}"

    def _snapshot(self, optimizer, scaler) -> Dict[str, Any]:
        """The model's weights and buffers, the optimizer's and the scaler's state before a step, to undo it."""
        return dict(model={k: v.detach().clone() for k, v in self.model.state_dict().items()},
                    optimizer=copy.deepcopy(optimizer.state_dict()),
                    scaler=copy.deepcopy(scaler.state_dict()) if scaler is not None else None)

    def _where(self, batch_index: int, total_batches: int) -> str:
        p = self.progress
        round_text = f"round {p.round + 1} " if num_rounds_of(self.model) > 1 else ""
        return (f"{round_text}epoch {p.epoch + 1}, optimizer step {p.global_step + 1} (batch {batch_index + 1} of "
                f"{total_batches})")

    def _nonfinite_stop(self, problem: str, batch_index: int, total_batches: int) -> NonFiniteError:
        a = self.args
        if a.skip_nonfinite_steps:
            hint = (f"{len(self.progress.nonfinite_skips)} step(s) were already skipped, the most "
                    f"--skip-nonfinite-steps {a.skip_nonfinite_steps} allows. Lower --lr or add --clip-grad")
        else:
            hint = ("Lower --lr, add --clip-grad, check the data, or pass --skip-nonfinite-steps N to skip up to N "
                    "such steps")
        if self.last_saved is None:
            saved = "No checkpoint had been written yet, so the run folder holds no weights"
            follow = "then start the run again (the same --experiment may be reused)"
        else:
            saved = f"checkpoints/last still holds the last finite state ({self.last_saved})"
            follow = f"then python train.py --resume {self.out} continues from it"
        return NonFiniteError(
            f"Training went non-finite at {self._where(batch_index, total_batches)}: {problem}. The run stopped "
            f"without saving anything from this step. {saved}. {hint}; {follow}.")

    def _skip_step(self, problem: str, snapshot: Dict[str, Any], optimizer, scaler, batch_index: int,
                   total_batches: int) -> None:
        """Undo a non-finite step (--skip-nonfinite-steps): weights, buffers, optimizer and scaler as before it."""
        a, p = self.args, self.progress
        if len(p.nonfinite_skips) >= a.skip_nonfinite_steps:
            raise self._nonfinite_stop(problem, batch_index, total_batches)
        self.model.load_state_dict(snapshot["model"])
        optimizer.load_state_dict(copy.deepcopy(snapshot["optimizer"]))
        if scaler is not None and snapshot["scaler"] is not None:
            scaler.load_state_dict(copy.deepcopy(snapshot["scaler"]))
        where = self._where(batch_index, total_batches)
        p.nonfinite_skips.append(dict(round=p.round + 1, epoch=p.epoch + 1, step=p.global_step + 1,
                                      batch=batch_index + 1, problem=problem))
        if self.is_main:
            _logger.warning("Skipped %s: %s. Weights, buffers and optimizer state are back as they were before it "
                            "(%d of --skip-nonfinite-steps %d used).", where, problem, len(p.nonfinite_skips),
                            a.skip_nonfinite_steps)

    def _stop_requested(self) -> bool:
        flag = self.interrupt.requested
        if self.world == 1:
            return flag
        # Every process must stop at the same step (the checkpoint is a collective write).
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(value)
        return bool(value.item() > 0)

    def _epoch_stats(self) -> Dict[str, float]:
        part = self.partial
        part["sums"].setdefault("loss", 0.0)  # every step of the epoch may have been skipped as non-finite
        names = sorted(part["sums"])
        values = torch.tensor([part["seen"], part["hits"], part["lr_sum"], part["updates"]] +
                              [part["sums"][k] for k in names], dtype=torch.float64, device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(values)
        seen, hits, lr_sum, updates = values[:4].tolist()
        n = max(seen, 1.0)
        stats = {"loss": float(values[4 + names.index("loss")]) / n}
        stats.update({k: float(v) / n for k, v in zip(names, values[4:].tolist()) if k != "loss"})
        stats["top1"] = 100.0 * hits / n
        stats["lr"] = lr_sum / max(updates, 1.0)
        self.partial = {}
        return stats

    def _summary_epoch(self, round_index: int, epoch: int) -> int:
        return round_index * self.args.epochs + epoch

    def _log_epoch(self, round_index: int, rounds: int, train: Dict[str, float], metrics: Dict[str, float]) -> None:
        p = self.progress
        lr = train.pop("lr")
        train = ({"round": round_index + 1} if rounds > 1 else {}) | train
        row_epoch = self._summary_epoch(round_index, p.epoch)
        scalars = {**{f"train_{k}": v for k, v in train.items()}, **{f"eval_{k}": v for k, v in metrics.items()},
                   "lr": lr, "epoch": row_epoch}
        self.acc.log(scalars, step=p.global_step)
        if self.is_main:
            with _writing(f"{self.out / 'summary.csv'}"):
                self.summary.write(row_epoch, train, metrics, lr)
            heads = " ".join(f"{k[5:]}={v:.2f}" for k, v in metrics.items() if k.startswith("top1_"))
            prefix = f"round {round_index + 1} " if rounds > 1 else ""
            _logger.info("%sepoch %d/%d: train loss %.4f | eval loss %.4f, top-1 %.2f%% (%s)%s | lr %.3g", prefix,
                         p.epoch + 1, self.args.epochs, train["loss"], metrics.get("loss", math.nan),
                         metrics["top1"], heads,
                         f" | EMA top-1 {metrics['ema_top1']:.2f}%" if "ema_top1" in metrics else "", lr)

    # -- the end -----------------------------------------------------------------------------------------------
    def _finish(self, eval_loader) -> Dict[str, Any]:
        a, p = self.args, self.progress
        final = evaluate(self.model, eval_loader, self.model.num_classes, device=self.device, autocast=self.autocast,
                         channels_last=a.channels_last)
        digests = _rank_digests(self.model)
        params = sum(t.numel() for t in self.model.parameters())
        training_only = getattr(self.model, "is_training_only_key", lambda key: False)
        inference_params = sum(t.numel() for n, t in self.model.named_parameters() if not training_only(n))
        results = dict(model=a.model, dataset=a.dataset or a.data_dir, seed=a.seed, epochs=a.epochs,
                       rounds=num_rounds_of(self.model), processes=self.world, **final.as_dict(),
                       per_class_top1=final.per_class, eval_images=final.count, train_seconds=round(p.train_seconds, 2),
                       train_images_per_second=round(p.images_seen / p.train_seconds, 2) if p.train_seconds else None,
                       params=params, inference_params=inference_params, rounds_log=p.rounds_log,
                       rank_digests=digests, ranks_in_sync=len(set(digests)) == 1,
                       skipped_images=self.bundle.skipped, base_model=self.base_model,
                       nonfinite_steps_skipped=len(p.nonfinite_skips), nonfinite_skips=p.nonfinite_skips)
        hub_metrics = {"top1": final.top1, **({"top5": final.top5} if final.top5 is not None else {})}
        hub_note = "the final model"
        best = self.ckpt_root / "best"
        if self.is_main and best.is_dir() and num_rounds_of(self.model) == 1:
            # The Hub folder (and --push-to-hub) carries the best checkpoint, as timm's model_best; checked
            # against its manifest first.
            checked = CheckpointFolder(best)
            info = checked.json("metrics.json")
            state = checked.tensors("ema.safetensors" if info.get("hub_weights") == "ema" else "model.safetensors")
            check_finite(state, f"{best}")
            self.model.load_state_dict(state)
            prefix = "eval_ema_" if info.get("hub_weights") == "ema" else "eval_"
            hub_metrics = {k[len(prefix):]: v for k, v in info.items()
                           if k.startswith(prefix) and k[len(prefix):] in ("top1", "top5")}
            results["best"] = dict(epoch=info["epoch"] + 1, metric=info["metric"], value=info["value"],
                                   weights=info.get("hub_weights"), **{k: v for k, v in info.items()
                                                                      if k.startswith("eval_")})
            hub_note = f"the best epoch ({info['epoch'] + 1} of {a.epochs}, by {info['metric']})"
        if self.is_main:
            # Paths inside the run folder are relative to it: a copied or moved run folder stays whole.
            with _writing(f"{self.out / 'results.json'}"):
                atomic_write_text(self.out / "results.json", json.dumps(results, indent=2))
            with _writing(f"the figures in {self.out}"):
                figures = [plot_training_curves(self.out / "summary.csv", self.out / "training_curves.png")]
                figures += list(write_figures_of(self.model, self.out))
            results["figures"] = [_relative_to(f, self.out) for f in figures]
            description = (f"Trained with collab_zoo's train.py on {a.dataset or 'an image folder'} ({a.epochs} epochs "
                           f"per round, seed {a.seed}); these are the weights of {hub_note}, measured on its "
                           f"{final.count} evaluation images.")
            datasets = [a.dataset] if a.dataset else []
            # Nothing non-finite is published, and the Hub folder appears whole or not at all (written aside,
            # then exchanged for the old one, as checkpoints are).
            check_finite(self.model.state_dict(), "the run's Hub folder")
            hub_dir, incoming = self.out / "hub", self.out / f"{INCOMING}hub"
            with _writing(f"the Hub folder {hub_dir}"):
                shutil.rmtree(incoming, ignore_errors=True)
                try:
                    save_for_hub(self.model, incoming, keep_training_heads=a.keep_training_heads,
                                 metrics=hub_metrics, datasets=datasets, description=description,
                                 base_model=self.base_model, repo_id=a.push_to_hub)
                    publish_folder(incoming, hub_dir)
                finally:
                    shutil.rmtree(incoming, ignore_errors=True)
            if a.push_to_hub:
                commit = push_to_hub(self.model, a.push_to_hub, keep_training_heads=a.keep_training_heads,
                                     metrics=hub_metrics, datasets=datasets, description=description,
                                     base_model=self.base_model)
                results["pushed"] = dict(repo=a.push_to_hub, revision=str(commit), weights=hub_note)
            with _writing(f"{self.out / 'results.json'}"):
                atomic_write_text(self.out / "results.json", json.dumps(results, indent=2))
        results["run_dir"] = str(self.out)  # for the caller; the file itself names no absolute path
        self.barrier()
        self.acc.end_training()
        if self._wandb_ready_flag():
            import wandb

            wandb.finish()
        return results

    def _wandb_ready_flag(self) -> bool:
        return bool(self.summary is not None and self.summary.log_wandb)


# --- helpers ---------------------------------------------------------------------------------------------------------

def argparse_namespace(args, **changes):
    import copy

    updated = copy.copy(args)
    for key, value in changes.items():
        setattr(updated, key, value)
    return updated


def _position(progress: Progress) -> str:
    """Where a checkpoint stands, for messages: 'round 1 epoch 2 after optimizer step 40'."""
    return (f"round {progress.round + 1} epoch {progress.epoch + 1} batch {progress.batch}, after optimizer step "
            f"{progress.global_step}")


def _loss_problem(loss: torch.Tensor) -> str:
    value = float(loss.detach().float()) if loss.numel() == 1 else "non-finite"
    return f"the loss became {value}"


_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG, errno.EIO}


@contextlib.contextmanager
def _writing(what: str):
    """OSError while writing ``what`` -> RunWriteError, a message saying what could not be written and why."""
    try:
        yield
    except RunWriteError:
        raise
    except OSError as e:
        reason = e.strerror or str(e)
        code = errno.errorcode.get(e.errno, "") if e.errno else ""
        raise RunWriteError(
            f"Could not write {what} ({reason}{', ' + code if code else ''}). Files already complete there were left "
            "as they were. Free disk space, fix the folder's permissions, or choose another --output; a run that "
            "had saved a checkpoint continues with --resume.") from None


def _check_output_writable(output: Path) -> None:
    """Fail before loading data or building a model when --output cannot be created or written."""
    existing = output.absolute()
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except OSError as e:  # a folder on the way cannot be searched
        raise RunWriteError(f"Cannot reach --output {output} ({e.strerror or e}). Choose another --output, or fix "
                            "the folders' permissions.") from None
    if not existing.is_dir():
        raise IncompatibleConfigError(f"--output {output}: {existing} is a file, not a folder. Choose a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunWriteError(f"Cannot write the run under --output {output}: {existing} is not writable (permission "
                            "denied). Choose another --output, or fix the folder's permissions.")


def _lock_run_folder(out: Path) -> Optional[int]:
    """An exclusive lock on the run folder for this process's life (released however it ends, SIGKILL too)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the 'already holds a run' check still applies
        return None
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunFolderBusyError(
            f"{out} is being written by another train.py right now (it holds the run folder's lock). Wait for it "
            "to end, or give this run another --experiment.") from None
    return fd


def _relative_to(path, root: Path) -> str:
    path = Path(path)
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _comparable(value):
    return list(value) if isinstance(value, tuple) else value


def _better(value: float, best: float, metric: str) -> bool:
    return value < best if metric == "loss" else value > best


def _prefixed(values: Dict[str, float], prefix: str) -> Dict[str, float]:
    return {f"{prefix}{k}": v for k, v in values.items()}


def _length(dataset) -> str:
    try:
        return f"{len(dataset):,}"
    except TypeError:
        return "streamed"


def _rounded(values) -> Tuple[float, ...]:
    return tuple(round(float(v), 4) for v in values)


def _input_channels(model: nn.Module, args) -> int:
    """The channels the model was built for: the flag, else its first convolution's, else its cfg's."""
    if args.input_size:
        return int(args.input_size[0])
    if args.in_chans:
        return int(args.in_chans)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    first = cfg.get("first_conv")
    if isinstance(first, (list, tuple)):
        first = first[0] if first else None
    if first:
        try:
            weight = model.get_submodule(first).weight
            if weight.ndim == 4:  # a Linear first layer (an MLP) has in_features, not channels
                return int(weight.shape[1])
        except (AttributeError, IndexError):
            pass
    return int(cfg.get("input_size", (3,))[0])


def _options_message(model: str, kwargs: Dict[str, Any], flag_kwargs: Dict[str, Any], error: TypeError) -> str:
    flags = {"drop_rate": "--drop", "drop_path_rate": "--drop-path", "drop_block_rate": "--drop-block",
             "global_pool": "--gp", "bn_momentum": "--bn-momentum", "bn_eps": "--bn-eps"}
    text = str(error)
    for key, flag in flags.items():
        if f"'{key}'" in text and flag_kwargs.get(key) is not None:
            return (f"{flag} is not an option of {model} ({text}); drop the flag, or use a model that takes it "
                    "(timm's ResNets, ViTs...).")
    user = {k: v for k, v in kwargs.items() if k not in flags}
    return f"--model-kwargs {user} do not fit {model}: {text}. See the model's docstring for its options."


def _base_model_of(args) -> Optional[str]:
    """What a fine-tune started from, for its model card: a Hub repo (with the revision when one is pinned), a
    local folder, a tag's repo, a file."""
    if args.pretrained:
        source, _, rest = args.model.partition(":")
        if rest and source == "hf-hub":
            return rest  # org/repo, or org/repo@revision as the user pinned it
        if rest and source == "local-dir":
            return str(Path(rest).resolve())
        try:
            from timm.models import get_pretrained_cfg

            cfg = get_pretrained_cfg(args.model, allow_unregistered=True)
            hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        except Exception:
            hub_id = None
        return hub_id or args.model
    if args.pretrained_path:
        return str(Path(args.pretrained_path).resolve())
    if args.initial_checkpoint:
        return str(Path(args.initial_checkpoint).resolve())
    return None


def _jsonable_args(args) -> Dict[str, Any]:
    out = {}
    for k, v in vars(args).items():
        if k == "explicit":
            continue
        if isinstance(v, tuple):
            v = list(v)
        if isinstance(v, (str, int, float, bool, list, dict, type(None))):
            out[k] = v
    return out


def _tracker_config(args) -> Dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in vars(args).items()}


def _scalars(info: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for key, value in (info or {}).items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float, str, bool)):
            out[key] = value
    return out


def _rank_digests(model: nn.Module) -> List[str]:
    """Every process's hash of its final weights: equal when data parallelism kept the replicas in step."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                      if value.numel() else b"")
    mine = digest.hexdigest()
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        every: List[Optional[str]] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(every, mine)
        return [str(d) for d in every]
    return [mine]


def run_training(args) -> Dict[str, Any]:
    """Train ``args.model`` as ``args`` says; returns the final results (also in RUN/results.json)."""
    run = _Run(args)
    try:
        return run.train()
    finally:
        run.release()
