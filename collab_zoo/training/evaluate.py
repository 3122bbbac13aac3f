"""Evaluation through the contract: the method's scores and every head's logits from one pass.

Counts (correct answers per head, per class) and the loss sum are summed across processes (torch.distributed),
so a sharded evaluation gives exactly the single-process numbers: each process evaluates its own shard and no
padding sample is counted twice. timm's ClassificationEvaluator scores one output; this one also scores every
head and every class from the same pass, which is what a collaborative model's evaluation is for.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..contract import forward_heads_of, head_names_of, predict_of

__all__ = ["EvalResult", "evaluate", "score_loss", "all_reduce_sum"]

# (heads, scores, target) -> the batch's mean loss.
EvalLoss = Callable[[Sequence[Tensor], Tensor, Tensor], Tensor]


@dataclass
class EvalResult:
    count: int
    top1: float
    top5: Optional[float]
    head_top1: Dict[str, float]
    per_class: List[float]
    loss: Optional[float] = None
    extra: Dict[str, float] = field(default_factory=dict)

    def as_dict(self, prefix: str = "") -> Dict[str, float]:
        out: Dict[str, float] = {}
        if self.loss is not None:
            out[f"{prefix}loss"] = self.loss
        out[f"{prefix}top1"] = self.top1
        if self.top5 is not None:
            out[f"{prefix}top5"] = self.top5
        out.update({f"{prefix}top1_{name}": v for name, v in self.head_top1.items()})
        return out


def score_loss(heads: Sequence[Tensor], scores: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of the method's scores, the loss timm's validate.py reports."""
    return F.cross_entropy(scores.float(), target)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(tensor)
    return tensor


def _topk_hits(scores: Tensor, target: Tensor, k: int) -> Tensor:
    k = min(k, scores.shape[-1])
    return (scores.topk(k, dim=-1).indices == target[:, None]).any(dim=-1)


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, head_names: Optional[Sequence[str]] = None, *,
             device: Optional[torch.device] = None, autocast: Callable = contextlib.nullcontext,
             loss_fn: Optional[EvalLoss] = None, head_indices: Optional[Sequence[int]] = None,
             channels_last: bool = False) -> EvalResult:
    """Top-1/top-5 of the method's scores, each head's top-1, per-class top-1 and the mean ``loss_fn`` over
    ``loader`` (this process's shard), summed over every process.

    ``head_indices`` picks the heads to report (default: all, named by ``head_names``)."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    names = list(head_names or head_names_of(model))
    picked = list(head_indices) if head_indices is not None else list(range(len(names)))
    hits1 = torch.zeros((), dtype=torch.long, device=device)
    hits5 = torch.zeros((), dtype=torch.long, device=device)
    head_hits = torch.zeros(len(picked), dtype=torch.long, device=device)
    class_hits = torch.zeros(num_classes, dtype=torch.long, device=device)
    class_count = torch.zeros(num_classes, dtype=torch.long, device=device)
    seen = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for images, target in loader:
            images, target = images.to(device), target.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast():
                heads = forward_heads_of(model, images)
                scores = predict_of(model, heads)
                if loss_fn is not None:
                    loss_sum += loss_fn(heads, scores, target).double() * len(target)
            top1 = scores.argmax(dim=-1) == target
            hits1 += top1.sum()
            hits5 += _topk_hits(scores, target, 5).sum()
            for slot, i in enumerate(picked):
                head_hits[slot] += (heads[i].argmax(dim=-1) == target).sum()
            class_hits += torch.bincount(target[top1], minlength=num_classes)
            class_count += torch.bincount(target, minlength=num_classes)
            seen += len(target)
    finally:
        model.train(was_training)
    for t in (hits1, hits5, head_hits, class_hits, class_count, seen, loss_sum):
        all_reduce_sum(t)
    n = max(int(seen), 1)
    per_class = (class_hits.float() / class_count.clamp_min(1).float() * 100).tolist()
    return EvalResult(
        count=int(seen),
        top1=100.0 * int(hits1) / n,
        top5=100.0 * int(hits5) / n if num_classes > 5 else None,
        head_top1={names[i]: 100.0 * int(h) / n for i, h in zip(picked, head_hits.tolist())},
        per_class=per_class,
        loss=float(loss_sum) / n if loss_fn is not None else None,
    )
