"""The training loop behind train.py: any zoo or timm model, through the model contract, on accelerate.

One loop serves every method. Training happens in rounds (one for most methods, tau for class-level boosting);
each round names the module to optimise and its loss (``contract.training_round_of``), and a round that asks
for it ends with predictions on a held-out part of the training set (``complete_round_of``). Nothing here
knows which method it is training.

Processes: ``python train.py`` is one process; ``accelerate launch [--multi_gpu] train.py`` gives DDP across
GPUs or, with the CPU forced, across CPU processes (gloo). Data is sharded with DistributedSampler; every
shard and every augmentation is a function of (seed, epoch, index), so a run resumed from a checkpoint
continues exactly as if it had never stopped.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Subset

from ..contract import (complete_round_of, head_names_of, heads_of, is_soft_target, num_rounds_of,
                        training_round_of, write_figures_of)
from ..data import DataBundle, DataError, DataSpec, build_data, heldout_split
from ..errors import IncompatibleConfigError
from ..factory import create_model
from ..hub import atomic_write_text, push_to_hub, save_for_hub
from .checkpoint import (CHECKPOINT_FORMAT, latest_checkpoint, load_tensors_and_json, publish_folder,
                         restore_rng_state, rng_state, save_tensors_and_json)
from .evaluate import EvalResult, evaluate, predict_all
from .report import SummaryWriter, plot_training_curves

_logger = logging.getLogger("collab_zoo.train")

__all__ = ["Progress", "make_accelerator", "run_training"]

# Settings that change the computation: a resumed run must keep them as the checkpoint recorded them.
_FIXED_ON_RESUME = ("model", "dataset", "data_dir", "num_classes", "in_chans", "input_size", "model_kwargs",
                    "batch_size", "grad_accum_steps", "seed", "md_level", "md_train_size", "md_test_size",
                    "heldout_frac", "opt", "lr", "weight_decay", "sched", "mixup", "cutmix", "smoothing")


@dataclass
class Progress:
    round: int = 0          # round being trained
    epoch: int = 0          # epoch (within the round) being trained
    batch: int = 0          # batches of that epoch already done
    step: int = 0           # optimizer steps in this round
    global_step: int = 0    # optimizer steps in the whole run
    best_top1: float = -1.0
    best_round: int = -1
    best_epoch: int = -1


def make_accelerator(args, find_unused_parameters: bool = False):
    """The run's Accelerator: devices, DDP, mixed precision, trackers, torch.compile."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cpu = args.cpu or not torch.cuda.is_available()
    precision = "no"
    if args.amp:
        precision = "bf16" if args.amp_dtype == "bfloat16" else "fp16"
        if precision == "fp16" and cpu:
            raise IncompatibleConfigError("--amp-dtype float16 needs a GPU; on the CPU use bfloat16 (the default).")
    log_with = args.log_with
    if log_with == "auto":
        try:
            import tensorboard  # noqa: F401
            log_with = "tensorboard"
        except ImportError:
            log_with = None
    elif log_with in ("none", ""):
        log_with = None
    # accelerate keeps its settings (mixed precision above all) in a process-wide singleton and refuses to change
    # them. One process may run several trainings in turn (tests, benchmarks, a notebook), so each run starts
    # from fresh settings. PartialState, which holds the process group, is kept: DDP stays initialised.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        log_with=log_with,
        project_dir=args.output,
        dynamo_backend=args.torchcompile.upper() if args.torchcompile else None,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
        rng_types=[],  # no hidden RNG broadcasts: every random draw is seeded explicitly (exact resume)
    )


# --- data loading --------------------------------------------------------------------------------------------------

def _dataset_of(dataset):
    return dataset.dataset if isinstance(dataset, Subset) else dataset


def _train_loader(dataset, args, accelerator, epoch: int, skip_batches: int) -> Tuple[DataLoader, int]:
    base = _dataset_of(dataset)
    if hasattr(base, "set_epoch"):
        base.set_epoch(epoch, args.seed)
    sampler = DistributedSampler(dataset, num_replicas=accelerator.num_processes, rank=accelerator.process_index,
                                 shuffle=True, seed=args.seed, drop_last=False)
    sampler.set_epoch(epoch)
    batches = list(BatchSampler(sampler, args.batch_size, drop_last=False))
    loader = DataLoader(dataset, batch_sampler=batches[skip_batches:], num_workers=args.workers,
                        pin_memory=accelerator.device.type == "cuda")
    return loader, len(batches)


def _eval_loader(dataset, args, accelerator) -> DataLoader:
    indices = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    return DataLoader(Subset(dataset, indices), batch_size=max(args.batch_size, 64), shuffle=False,
                      num_workers=args.workers)


# --- the run -----------------------------------------------------------------------------------------------------

class _Run:
    """State of one training run (the method's, or the baseline's)."""

    def __init__(self, args):
        from accelerate import PartialState
        from accelerate.utils import set_seed

        self.args = args
        # Process facts first; the Accelerator itself waits for the model (DDP options depend on it).
        self.processes = PartialState(cpu=args.cpu or not torch.cuda.is_available())
        self.progress = Progress()
        self.partial: Dict[str, Any] = {}
        self.resume_dir: Optional[Path] = None
        if args.resume:
            self.resume_dir = latest_checkpoint(Path(args.resume))
            self._adopt_saved_args()
        set_seed(args.seed)
        self.bundle = self._build_data()
        self.model = self._build_model()
        self.acc = make_accelerator(args, getattr(self.model, "leaves_parameters_unused", False))
        self.out = self._output_dir()
        self.ckpt_root = self.out / "checkpoints"
        self.summary = SummaryWriter(self.out / "summary.csv") if self.acc.is_main_process else None
        self.ema = None
        self.train_seconds = 0.0

    # -- set-up ----------------------------------------------------------------------------------------------
    def _adopt_saved_args(self) -> None:
        state = json.loads((self.resume_dir / "state.json").read_text())
        if state.get("format") != CHECKPOINT_FORMAT:
            raise IncompatibleConfigError(f"{self.resume_dir} was written by another checkpoint format "
                                          f"({state.get('format')}); this version reads format {CHECKPOINT_FORMAT}.")
        saved = state["args"]
        from .args import build_parser

        defaults = vars(build_parser().parse_args([]))
        for key in _FIXED_ON_RESUME:
            mine = getattr(self.args, key, None)
            if mine != defaults.get(key) and mine != saved.get(key):
                raise IncompatibleConfigError(
                    f"--resume: --{key.replace('_', '-')} {mine!r} differs from the checkpoint's {saved.get(key)!r}. "
                    "A resumed run keeps the settings it was started with; start a new run to change them.")
        if state.get("world_size") != self.processes.num_processes:
            raise IncompatibleConfigError(
                f"--resume: the checkpoint was written by {state.get('world_size')} process(es), this run has "
                f"{self.processes.num_processes}. An exact resume needs the same number (each keeps its own RNG state).")
        keep = {k: getattr(self.args, k) for k in ("resume", "workers", "log_with", "push_to_hub", "log_interval",
                                                   "output", "cpu")}
        for key, value in saved.items():
            setattr(self.args, key, value)
        for key, value in keep.items():
            setattr(self.args, key, value)
        self.args.experiment = state["experiment"]
        self.args.output = str(Path(state["run_dir"]).parent) if Path(state["run_dir"]).exists() else self.args.output
        self.progress = Progress(**state["progress"])

    def _build_data(self) -> DataBundle:
        a = self.args
        spec = DataSpec(dataset=a.dataset, data_dir=a.data_dir, input_size=a.input_size, in_chans=a.in_chans,
                        md_level=a.md_level, md_train_size=a.md_train_size, md_test_size=a.md_test_size,
                        seed=a.seed, augment=not a.no_aug, train_split=a.train_split, val_split=a.val_split,
                        skip_bad_images=a.skip_bad_images)
        if a.dataset not in ("imagefolder", "folder"):
            return build_data(spec)
        from timm.data import resolve_data_config

        cfg = resolve_data_config(pretrained_cfg=_pretrained_cfg_of(a.model))
        spec.model_data_config = cfg
        return build_data(spec)

    def _build_model(self) -> nn.Module:
        a = self.args
        data_classes = self.bundle.num_classes
        if a.num_classes is not None and a.num_classes != data_classes:
            raise DataError(f"--num-classes {a.num_classes} but the data has {data_classes} classes.")
        overlay = dict(file=a.pretrained_file) if a.pretrained_file else None
        kwargs = dict(a.model_kwargs or {})
        in_chans = a.in_chans or self.bundle.data_config["input_size"][0]
        try:
            if a.pretrained and a.num_classes is None:
                model = create_model(a.model, pretrained=True, in_chans=in_chans, pretrained_cfg_overlay=overlay,
                                     **kwargs)
                if model.num_classes != data_classes:
                    raise DataError(
                        f"The pretrained {a.model} has {model.num_classes} classes, the data {data_classes}. "
                        f"Pass --num-classes {data_classes} to fine-tune (every head's classifier starts fresh).")
            else:
                model = create_model(a.model, pretrained=a.pretrained or bool(a.pretrained_file),
                                     num_classes=data_classes, in_chans=in_chans, pretrained_cfg_overlay=overlay,
                                     **kwargs)
        except TypeError as e:
            raise IncompatibleConfigError(
                f"--model-kwargs {kwargs} do not fit {a.model}: {e}. See the model's docstring for its options.") from None
        self._check_input_fits(model)
        # The saved model should describe the data it was trained on, not the architecture's defaults.
        cfg = dict(model.pretrained_cfg)
        cfg.update(self.bundle.data_config)
        cfg["num_classes"] = data_classes
        model.pretrained_cfg = model.default_cfg = cfg
        if a.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _check_input_fits(self, model: nn.Module) -> None:
        """One evaluation sample through the model before any work: a fixed-size network (LeNet, AlexNet,
        an MLP) given another input size fails here, with what to do, not in the first training step."""
        image, _ = self.bundle.eval[0]
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
                f"input is {default}: pass --input-size {default[-1] if default else '...'}, or build it for this "
                f"size if it has the option (--model-kwargs img_size={size[-1]}).") from None
        finally:
            model.train(was_training)

    def _output_dir(self) -> Path:
        from accelerate.utils import broadcast_object_list

        a = self.args
        if a.experiment is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            name = [f"{stamp}-{''.join(c if c.isalnum() else '_' for c in a.model)}-{a.dataset}"]
            broadcast_object_list(name)
            a.experiment = name[0]
        out = Path(a.output) / a.experiment
        if self.processes.is_main_process:
            if not a.resume and (out / "checkpoints").exists():
                raise IncompatibleConfigError(
                    f"{out} already holds a run. Continue it with --resume {out}, or choose another --experiment.")
            out.mkdir(parents=True, exist_ok=True)
        self.processes.wait_for_everyone()
        return out

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _save_checkpoint(self, optimizer, scheduler) -> None:
        """Write ``checkpoints/last`` atomically: every process writes its RNG state, the main one the rest."""
        acc = self.acc
        tmp = self.ckpt_root / ".incoming"
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        save_tensors_and_json(tmp, f"rank{acc.process_index}", dict(rng=rng_state(), partial=self.partial))
        if acc.is_main_process:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(tmp / "model.safetensors"))
            save_tensors_and_json(tmp, "optimizer", optimizer.state_dict())
            save_tensors_and_json(tmp, "scheduler", scheduler.state_dict() if scheduler is not None else {})
            if acc.scaler is not None:
                save_tensors_and_json(tmp, "scaler", acc.scaler.state_dict())
            if self.ema is not None:
                save_file({k: v.contiguous() for k, v in self.ema.module.state_dict().items()},
                          str(tmp / "ema.safetensors"))
            state = dict(format=CHECKPOINT_FORMAT, progress=asdict(self.progress), args=_jsonable_args(self.args),
                         experiment=self.args.experiment, run_dir=str(self.out), world_size=acc.num_processes,
                         head_names=list(head_names_of(self.model)), written=time.strftime("%Y-%m-%d %H:%M:%S"))
            (tmp / "state.json").write_text(json.dumps(state, indent=2))
        acc.wait_for_everyone()
        if acc.is_main_process:
            publish_folder(tmp, self.ckpt_root / "last")
        acc.wait_for_everyone()

    def _save_best(self, result: EvalResult) -> None:
        if not self.acc.is_main_process:
            return
        from safetensors.torch import save_file

        tmp = self.ckpt_root / ".incoming-best"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(tmp / "model.safetensors"))
        (tmp / "metrics.json").write_text(json.dumps(dict(round=self.progress.round, epoch=self.progress.epoch,
                                                          **result.as_dict("val_")), indent=2))
        publish_folder(tmp, self.ckpt_root / "best")

    def _load_model_state(self) -> None:
        from ..weights import load_safetensors_file

        state = load_safetensors_file(self.resume_dir / "model.safetensors")
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise IncompatibleConfigError(
                f"--resume {self.resume_dir}: its weights do not fit {self.args.model} (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}).")

    def _load_round_state(self, optimizer, scheduler) -> None:
        folder = self.resume_dir
        p = self.progress
        if p.epoch == 0 and p.batch == 0 and p.step == 0:
            # A checkpoint taken between rounds: the new round starts with a fresh optimizer and schedule.
            rank_state = load_tensors_and_json(folder, f"rank{self.acc.process_index}")
            restore_rng_state(rank_state["rng"])
            self.resume_dir = None
            return
        optimizer.load_state_dict(load_tensors_and_json(folder, "optimizer"))
        if scheduler is not None:
            scheduler.load_state_dict(load_tensors_and_json(folder, "scheduler"))
        if self.acc.scaler is not None and (folder / "scaler.json").exists():
            self.acc.scaler.load_state_dict(load_tensors_and_json(folder, "scaler"))
        if self.ema is not None and (folder / "ema.safetensors").exists():
            from ..weights import load_safetensors_file

            self.ema.module.load_state_dict(load_safetensors_file(folder / "ema.safetensors"))
        rank_state = load_tensors_and_json(folder, f"rank{self.acc.process_index}")
        self.partial = rank_state["partial"]
        restore_rng_state(rank_state["rng"])
        self.resume_dir = None  # consumed

    # -- one round -------------------------------------------------------------------------------------------
    def _make_optimizer(self, module: nn.Module, steps_per_epoch: int):
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2

        a = self.args
        optimizer = create_optimizer_v2(module, opt=a.opt, lr=a.lr, weight_decay=a.weight_decay, momentum=a.momentum)
        scheduler = None
        if a.sched not in ("none", "constant", "const"):
            scheduler, _ = create_scheduler_v2(
                optimizer, sched=a.sched, num_epochs=a.epochs, decay_epochs=a.decay_epochs,
                decay_milestones=a.decay_milestones, decay_rate=a.decay_rate, min_lr=a.min_lr,
                warmup_lr=a.warmup_lr, warmup_epochs=a.warmup_epochs, step_on_epochs=False,
                updates_per_epoch=steps_per_epoch)
        return optimizer, scheduler

    def _soft_targets(self, target: torch.Tensor) -> torch.Tensor:
        if self.args.smoothing <= 0 or is_soft_target(target):
            return target
        k = self.bundle.num_classes
        return F.one_hot(target, k).float() * (1 - self.args.smoothing) + self.args.smoothing / k

    def train(self) -> Dict[str, Any]:
        a, acc = self.args, self.acc
        from timm.data import Mixup
        from timm.utils import ModelEmaV3

        mixup = None
        if a.mixup > 0 or a.cutmix > 0:
            mixup = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, prob=a.mixup_prob,
                          switch_prob=a.mixup_switch_prob, label_smoothing=a.smoothing,
                          num_classes=self.bundle.num_classes)
        if self.resume_dir is not None:
            self._load_model_state()
        if acc.is_main_process:
            acc.init_trackers(a.experiment, config=_tracker_config(a))
            _logger.info("Run folder: %s", self.out)
        eval_loader = _eval_loader(self.bundle.eval, a, acc)
        started = time.time()
        images_seen = 0
        rounds = num_rounds_of(self.model)
        round_logs: List[Dict[str, Any]] = []
        while self.progress.round < rounds:
            rnd = training_round_of(self.model, self.progress.round)
            train_set, heldout = self.bundle.train, None
            if rnd.needs_heldout:
                train_set, heldout = heldout_split(self.bundle, a.heldout_frac, a.seed)
            steps_per_epoch = math.ceil(math.ceil(len(train_set) / acc.num_processes / a.batch_size) / a.grad_accum_steps)
            module = rnd.module
            optimizer, scheduler = self._make_optimizer(module, steps_per_epoch)
            module_p, optimizer_p = acc.prepare(module, optimizer)
            self.ema = ModelEmaV3(acc.unwrap_model(module_p), decay=a.model_ema_decay) if a.model_ema else None
            if self.resume_dir is not None:
                self._load_round_state(optimizer_p, scheduler)
            while self.progress.epoch < a.epochs:
                seen, epoch_stats = self._train_epoch(rnd, module_p, optimizer_p, scheduler, train_set, mixup)
                images_seen += seen
                if scheduler is not None:
                    scheduler.step(self.progress.epoch + 1)
                _sync_buffers(acc, acc.unwrap_model(module_p))
                result = evaluate(acc.unwrap_model(module_p), eval_loader, acc, self.bundle.num_classes,
                                  rnd.head_names)
                row = dict(round=self.progress.round + 1, epoch=self.progress.epoch + 1,
                           lr=optimizer_p.param_groups[0]["lr"], **epoch_stats, **result.as_dict("val_"))
                if self.ema is not None:
                    ema_result = evaluate(self.ema.module, eval_loader, acc, self.bundle.num_classes, rnd.head_names)
                    row.update(ema_result.as_dict("val_ema_"))
                self._log_epoch(row)
                improved = result.top1 > self.progress.best_top1 and rounds == 1
                if improved:
                    self.progress.best_top1, self.progress.best_epoch = result.top1, self.progress.epoch
                    self.progress.best_round = self.progress.round
                self.progress.epoch += 1
                self.progress.batch = 0
                self._save_checkpoint(optimizer_p, scheduler)
                if improved:
                    self._save_best(result)
            if self.ema is not None:
                # The EMA weights are the round's result: they answer the held-out set and join the ensemble.
                acc.unwrap_model(module_p).load_state_dict(self.ema.module.state_dict())
            if rnd.needs_heldout and heldout is not None:
                logits, targets = predict_all(acc.unwrap_model(module_p), _eval_loader(heldout, a, acc), acc)
                info = complete_round_of(self.model, self.progress.round, logits, targets)
                round_logs.append({**_scalars(info), "round": self.progress.round + 1})
                if acc.is_main_process:
                    _logger.info("round %d done: %s", self.progress.round + 1, _scalars(info))
            self.progress.round += 1
            self.progress.epoch = self.progress.step = 0
            if self.progress.round < rounds:
                self._save_checkpoint(optimizer_p, scheduler)
        return self._finish(eval_loader, time.time() - started, images_seen, round_logs)

    def _train_epoch(self, rnd, module_p, optimizer, scheduler, train_set, mixup) -> Tuple[int, Dict[str, float]]:
        a, acc, p = self.args, self.acc, self.progress
        started = time.perf_counter()
        loader, total_batches = _train_loader(train_set, a, acc, p.epoch, p.batch)
        module_p.train()
        if p.batch == 0 or not self.partial:
            self.partial = dict(sums={}, head_hits=[0.0] * len(rnd.head_names), seen=0)
        sums, head_hits = self.partial["sums"], self.partial["head_hits"]
        accum = a.grad_accum_steps
        bar = _progress_bar(acc, total_batches, p.batch, f"round {p.round + 1} epoch {p.epoch + 1}/{a.epochs}")
        for i, (images, target) in enumerate(loader, start=p.batch):
            images, target = images.to(acc.device), target.to(acc.device)
            if a.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            hard = target
            if mixup is not None:
                images, target = mixup(images, target)
            target = self._soft_targets(target)
            sync = (i + 1) % accum == 0 or i + 1 == total_batches
            with (contextlib.nullcontext() if sync else acc.no_sync(module_p)):
                with acc.autocast():
                    outputs = module_p(images)
                    loss, parts = rnd.loss(outputs, target)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss became {loss.item()} at round {p.round + 1} epoch {p.epoch + 1} batch {i}: lower --lr, "
                        "add --clip-grad, or check the data. The last good checkpoint is in checkpoints/last.")
                acc.backward(loss / accum)
            for j, logits in enumerate(heads_of(outputs)):
                head_hits[j] += float((logits.argmax(-1) == hard).sum())
            self.partial["seen"] += len(hard)
            # The loss that was optimised, whatever the method calls its parts (it may have no "total").
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * len(hard)
            for key, value in parts.items():
                if key != "total":
                    sums[key] = sums.get(key, 0.0) + float(value) * len(hard)
            if sync:
                if a.clip_grad:
                    acc.clip_grad_norm_(module_p.parameters(), a.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                p.step += 1
                p.global_step += 1
                if scheduler is not None:
                    scheduler.step_update(num_updates=p.step)
                if self.ema is not None:
                    self.ema.update(acc.unwrap_model(module_p), step=p.step)
            p.batch = i + 1
            if bar is not None:
                bar.update(1)
                if (i + 1) % a.log_interval == 0:
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if sync and a.checkpoint_interval and p.global_step % a.checkpoint_interval == 0 and p.batch < total_batches:
                self._save_checkpoint(optimizer, scheduler)
        if bar is not None:
            bar.close()
        self.train_seconds += time.perf_counter() - started
        totals = torch.tensor([self.partial["seen"]] + head_hits, device=acc.device, dtype=torch.float64)
        self.partial = {}
        part_names = sorted(sums)
        part_sums = torch.tensor([sums[k] for k in part_names], device=acc.device, dtype=torch.float64)
        totals, part_sums = acc.reduce(totals, "sum"), acc.reduce(part_sums, "sum")
        n = max(float(totals[0]), 1.0)
        stats = {f"train_{k}": float(v) / n for k, v in zip(part_names, part_sums.tolist())}
        stats.update({f"train_top1_{name}": 100.0 * float(h) / n for name, h in zip(rnd.head_names, totals[1:].tolist())})
        return int(totals[0]), stats

    def _log_epoch(self, row: Dict[str, Any]) -> None:
        self.acc.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=self.progress.global_step)
        if self.acc.is_main_process:
            self.summary.write(row)
            heads = " ".join(f"{k[9:]}={v:.2f}" for k, v in row.items() if k.startswith("val_top1_"))
            _logger.info("round %d epoch %d: train loss %.4f | val top-1 %.2f%% (%s)", row["round"], row["epoch"],
                         row["train_loss"], row["val_top1"], heads)

    # -- the end -----------------------------------------------------------------------------------------------
    def _finish(self, eval_loader, seconds: float, images_seen: int, round_logs) -> Dict[str, Any]:
        a, acc = self.args, self.acc
        self.model.to(acc.device)
        _sync_buffers(acc, self.model)
        final = evaluate(self.model, eval_loader, acc, self.bundle.num_classes)
        digests = _rank_digests(acc, self.model)
        params = sum(p.numel() for p in self.model.parameters())
        training_only = getattr(self.model, "is_training_only_key", lambda key: False)
        inference_params = sum(p.numel() for n, p in self.model.named_parameters() if not training_only(n))
        results = dict(model=a.model, dataset=a.dataset, seed=a.seed, epochs=a.epochs, rounds=num_rounds_of(self.model),
                       processes=acc.num_processes, **final.as_dict(), per_class_top1=final.per_class,
                       eval_images=final.count, train_seconds=round(seconds, 2),
                       train_images_per_second=round(images_seen / self.train_seconds, 2) if self.train_seconds else None,
                       params=params, inference_params=inference_params, rounds_log=round_logs,
                       rank_digests=digests, ranks_in_sync=len(set(digests)) == 1, run_dir=str(self.out),
                       skipped_images=self.bundle.skipped)
        if acc.is_main_process:
            atomic_write_text(self.out / "results.json", json.dumps(results, indent=2))
            figures = [str(plot_training_curves(self.out / "summary.csv", self.out / "training_curves.png"))]
            figures += [str(f) for f in write_figures_of(self.model, self.out)]
            results["figures"] = figures
            metrics = {"top1": final.top1, **({"top5": final.top5} if final.top5 is not None else {})}
            description = (f"Trained with collab_zoo's train.py on {a.dataset} ({a.epochs} epochs per round, seed "
                           f"{a.seed}); measured on its {final.count} evaluation images.")
            save_for_hub(self.model, self.out / "hub", keep_training_heads=a.keep_training_heads, metrics=metrics,
                         datasets=[a.dataset], description=description)
            if a.push_to_hub:
                info = push_to_hub(self.model, a.push_to_hub, keep_training_heads=a.keep_training_heads,
                                   metrics=metrics, datasets=[a.dataset], description=description)
                results["pushed"] = dict(repo=a.push_to_hub, revision=info.oid)
            atomic_write_text(self.out / "results.json", json.dumps(results, indent=2))
        acc.wait_for_everyone()
        acc.end_training()
        return results


# --- helpers ---------------------------------------------------------------------------------------------------------

def _pretrained_cfg_of(name: str) -> Dict[str, Any]:
    from ..registry import get_pretrained_cfg

    if ":" in name:
        return {}
    return get_pretrained_cfg(name).to_dict()


def _jsonable_args(args) -> Dict[str, Any]:
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))}


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


def _sync_buffers(accelerator, model: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics). DDP broadcasts them at the start of each
    forward, so after the last step each rank holds statistics of its own shard; evaluation and the saved
    model must not depend on which rank they come from."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import broadcast

    with torch.no_grad():
        for buffer in model.buffers():
            buffer.copy_(broadcast(buffer.detach().clone(), from_process=0))


def _rank_digests(accelerator, model: nn.Module) -> List[str]:
    """Every process's hash of its final weights: equal when data parallelism kept the replicas in step."""
    from accelerate.utils import gather_object

    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                      if value.numel() else b"")
    return list(gather_object([digest.hexdigest()]))


def _progress_bar(accelerator, total: int, initial: int, desc: str):
    if not accelerator.is_main_process:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                disable=os.environ.get("COLLAB_ZOO_NO_PROGRESS") == "1")


def run_training(args) -> Dict[str, Any]:
    """Train ``args.model`` as ``args`` says; returns the final results (also in RUN/results.json)."""
    return _Run(args).train()
