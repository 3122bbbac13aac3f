"""``CollabTask``: a timm training task for collaborative models, so any loop that drives a
``timm.task.TrainingTask`` (timm's own ``train.py``, a user's loop, collab_zoo's engine) trains them.

A collaborative model returns every head's logits in training and has its own objective
(``model.collab_loss``); a loss that expects one tensor cannot take that. The task closes the gap the way timm's
tasks do: ``task(input, target)`` runs the train-mode forward and returns a dict with

* ``loss``: the objective of the round being trained (``collab_loss`` for one-round methods),
* ``output``: ``[B, C]`` scores of the method's inference rule on the same forward, detached, for metrics,
* every named part of the loss (``ce_main``, ``synergy``, ...), as the model's objective reports them.

Targets may be class indices or probability rows (mixup / cutmix, or ``smoothing`` > 0, which turns class
indices into smoothed rows here since the model's objective, not a criterion, consumes them).

Rounds. Most methods train in one round. Class-level boosting (the complementary networks) trains one member per
round, and a round ends by measuring that member on held-out images. A ``CollabTask`` trains exactly one round,
``round_index`` (default: the first round the model has not completed); its trainable module is that round's
module (the member, for boosting), and ``complete_round(heldout_loader)`` ends it. The next round is a new task:
``CollabTask(model, round_index=r + 1)``, with a new optimizer, as the round starts from scratch.

Distributed, EMA and compile follow timm's tasks: ``prepare_distributed`` wraps the trainable module in DDP and
tells DDP to look for parameters a step leaves without gradient when the model says it may
(``leaves_parameters_unused``); ``setup_ema`` / ``update_ema`` keep an EMA of the trainable module (call it before
``prepare_distributed``, as timm's train.py does); ``compile`` compiles the trainable module, which is also the
eval model (the contract's eval-mode forward is the method's inference rule).

Needs timm 1.0.31 or newer (``timm.task`` with the EMA, compile, eval-model and evaluator hooks).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..contract import (complete_round_of, forward_heads_of, heads_of, is_soft_target, num_rounds_of, predict_of,
                        training_round_of)

_logger = logging.getLogger(__name__)

__all__ = ["CollabTask", "MIN_TIMM_FOR_TASKS"]

MIN_TIMM_FOR_TASKS = "1.0.31"


def _training_task_base():
    import timm

    message = (f"collab_zoo.CollabTask needs timm >= {MIN_TIMM_FOR_TASKS} (timm.task.TrainingTask with setup_ema, "
               f"compile, get_eval_model and create_evaluator); this environment has timm {timm.__version__}. "
               f"Upgrade with: pip install -U 'timm>={MIN_TIMM_FOR_TASKS}'.")
    try:
        from timm.task import TrainingTask
    except ImportError:
        raise ImportError(message) from None
    if not all(hasattr(TrainingTask, name) for name in ("setup_ema", "compile", "get_eval_model", "no_sync",
                                                         "create_evaluator")):
        raise ImportError(message)
    return TrainingTask


TrainingTask = _training_task_base()


class CollabTask(TrainingTask):
    """A ``timm.task.TrainingTask`` that trains one round of a collaborative (or plain timm) model.

    Args:
        model: a zoo model (or any timm classifier: then one round, cross-entropy, one head).
        round_index: the round to train; default the first round the model has not completed (0 for
            one-round methods).
        smoothing: label smoothing applied to class-index targets (soft targets pass unchanged; with mixup,
            let ``timm.data.Mixup(label_smoothing=...)`` smooth instead).
        device, dtype, verbose: as for every timm task.

    ``task(input, target)`` -> ``{"loss", "output", <loss parts>}``; see the module docstring.
    """

    def __init__(self, model: nn.Module, *, round_index: Optional[int] = None, smoothing: float = 0.0,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None, verbose: bool = True):
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        if not 0.0 <= float(smoothing) < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}.")
        self.model = model
        self.num_rounds = num_rounds_of(model)
        if round_index is None:
            # A model that records finished rounds (boosting) continues with the first unfinished one.
            round_index = min(int(getattr(model, "rounds_completed", 0)), self.num_rounds - 1)
        self.round = training_round_of(model, int(round_index))
        self.round_index = self.round.index
        self.smoothing = float(smoothing)
        self.trainable_module = self.round.module
        self._whole_model = self.round.module is model
        if verbose:
            _logger.info("%s", self.describe())

    # -- what this task trains --------------------------------------------------------------------------------
    @property
    def head_names(self) -> Tuple[str, ...]:
        return tuple(self.round.head_names)

    @property
    def needs_heldout(self) -> bool:
        return bool(self.round.needs_heldout)

    def describe(self) -> str:
        name = (getattr(self.model, "pretrained_cfg", None) or {}).get("architecture") or type(self.model).__name__
        text = (f"CollabTask: {name}, round {self.round_index + 1} of {self.num_rounds}, heads {self.head_names}"
                + (f" ({self.round.description})" if self.round.description else ""))
        if self.num_rounds > 1:
            text += (". This task trains this round only: end it with task.complete_round(heldout_loader), then "
                     f"train CollabTask(model, round_index={self.round_index + 1}) with a new optimizer"
                     if self.round_index + 1 < self.num_rounds else
                     ". This is the last round: end it with task.complete_round(heldout_loader)")
        return text

    def extra_repr(self) -> str:
        return f"round={self.round_index + 1}/{self.num_rounds}, heads={self.head_names}, smoothing={self.smoothing}"

    # -- timm's task hooks ---------------------------------------------------------------------------------
    @property
    def leaves_parameters_unused(self) -> bool:
        """Whether a training step may leave parameters of the trainable module without a gradient."""
        return bool(getattr(self.round.module, "leaves_parameters_unused", False))

    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs) -> "CollabTask":
        """Wrap the trainable module in DDP; unused parameters are searched for when the model may leave some."""
        from torch.nn.parallel import DistributedDataParallel

        ddp_kwargs.setdefault("find_unused_parameters", self.leaves_parameters_unused)
        self.trainable_module = DistributedDataParallel(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        return self

    def compile(self, backend: str = "inductor", mode: Optional[str] = None, **compile_kwargs) -> nn.Module:
        """Compile the trainable module; it is also the eval model (eval mode runs the inference rule)."""
        self.trainable_module = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        self.eval_model = self.trainable_module
        return self.trainable_module

    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> Dict[str, Any]:
        """When the round trains a part of the model (a boosting member), a checkpoint of the eval model alone
        would lose the rest (finished members, the class importance): the whole model travels as task state."""
        if self._whole_model or ema:
            return {}
        return {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()}}

    def load_task_state(self, state: Optional[Dict[str, Any]], strict: bool = True, module: Optional[nn.Module] = None,
                        ema: bool = False) -> None:
        if state and "model" in state and not ema:
            round_module = self.round.module
            keep = {k: v.detach().clone() for k, v in round_module.state_dict().items()}
            self.model.load_state_dict(state["model"], strict=strict)
            round_module.load_state_dict(keep)  # the eval model's own entry is the newer one

    # -- the step -------------------------------------------------------------------------------------------
    def _targets(self, target: Tensor, num_classes: int) -> Tensor:
        if self.smoothing <= 0 or is_soft_target(target):
            return target
        rows = F.one_hot(target.long(), num_classes).to(torch.float32)
        return rows * (1.0 - self.smoothing) + self.smoothing / num_classes

    def forward(self, input: Tensor, target: Tensor) -> Dict[str, Tensor]:
        outputs = self.trainable_module(input)
        heads = heads_of(outputs)
        loss, parts = self.round.loss(outputs, self._targets(target, heads[-1].shape[-1]))
        with torch.no_grad():
            # The whole model's inference rule over its heads; a round that trains one member scores with it.
            scores = predict_of(self.model, heads) if self._whole_model else heads[-1]
        result: Dict[str, Tensor] = {"loss": loss, "output": scores.detach()}
        for name, value in parts.items():
            if name == "total":
                continue  # the same number as "loss"
            result[name if name not in ("loss", "output") else f"{name}_part"] = value
        return result

    # -- the end of a round -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_heldout(self, loader: Iterable, ema: bool = False) -> Tuple[Tuple[Tensor, ...], Tensor]:
        """Every head's logits of the round's module (or its EMA) on ``loader`` and the targets, gathered from
        every process when torch.distributed runs (each process passes its own shard)."""
        from timm.utils import unwrap_model

        # unwrap_model reaches through DDP, torch.compile and ModelEmaV3 to the module itself.
        module = unwrap_model(self.get_trainable_module(ema=True) if ema else self.round.module)
        was_training = module.training
        module.eval()
        head_rows, target_rows = [], []
        try:
            for batch in loader:
                images, target = batch[0], batch[1]
                heads = forward_heads_of(module, images.to(self.device))
                head_rows.append([h.float() for h in heads])
                target_rows.append(target.to(self.device))
        finally:
            module.train(was_training)
        if not head_rows:
            raise ValueError("predict_heldout got an empty loader: the round needs held-out images to measure.")
        heads = tuple(torch.cat(column) for column in zip(*head_rows))
        targets = torch.cat(target_rows)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            heads = tuple(_gather_rows(h) for h in heads)
            targets = _gather_rows(targets)
        return heads, targets

    def complete_round(self, loader: Optional[Iterable] = None, *, logits: Optional[Tuple[Tensor, ...]] = None,
                       targets: Optional[Tensor] = None, use_ema: bool = False) -> Dict[str, Any]:
        """End this round: a round that measures itself on held-out images (``needs_heldout``) gets the module's
        predictions on ``loader`` (or the given ``logits``/``targets``). Returns what the method logs."""
        if self.needs_heldout and logits is None:
            if loader is None:
                raise ValueError(
                    f"round {self.round_index + 1} of {self.num_rounds} ends with predictions on held-out images: "
                    "pass task.complete_round(heldout_loader), images the round did not train on.")
            logits, targets = self.predict_heldout(loader, ema=use_ema)
        return complete_round_of(self.model, self.round_index, logits, targets)


def _gather_rows(tensor: Tensor) -> Tensor:
    """Every process's rows of ``tensor``, in rank order (shards may differ in length)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    length = torch.tensor([tensor.shape[0]], device=tensor.device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length)
    longest = int(max(int(n) for n in lengths))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(n)] for part, n in zip(parts, lengths)])
