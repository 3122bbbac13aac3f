"""Evaluation through the contract: the method's scores and every head's logits from one pass.

Counts (correct answers per head, per class) are summed across processes with ``accelerator.reduce``, so a
sharded evaluation gives exactly the single-process numbers: no duplicated padding samples are counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..contract import forward_heads_of, head_names_of, predict_of

__all__ = ["EvalResult", "evaluate", "gather_rows", "predict_all"]


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
        out = {f"{prefix}top1": self.top1}
        if self.top5 is not None:
            out[f"{prefix}top5"] = self.top5
        out.update({f"{prefix}top1_{name}": v for name, v in self.head_top1.items()})
        if self.loss is not None:
            out[f"{prefix}loss"] = self.loss
        return out


def _topk_hits(scores: Tensor, target: Tensor, k: int) -> Tensor:
    k = min(k, scores.shape[-1])
    return (scores.topk(k, dim=-1).indices == target[:, None]).any(dim=-1)


@torch.no_grad()
def evaluate(model: nn.Module, loader, accelerator, num_classes: int,
             head_names: Optional[Sequence[str]] = None) -> EvalResult:
    """Top-1/top-5 of the method's scores, each head's top-1 and per-class top-1 over ``loader`` (this rank's shard)."""
    was_training = model.training
    model.eval()
    names = list(head_names or head_names_of(model))
    device = accelerator.device
    hits1 = torch.zeros((), dtype=torch.long, device=device)
    hits5 = torch.zeros((), dtype=torch.long, device=device)
    head_hits = torch.zeros(len(names), dtype=torch.long, device=device)
    class_hits = torch.zeros(num_classes, dtype=torch.long, device=device)
    class_count = torch.zeros(num_classes, dtype=torch.long, device=device)
    seen = torch.zeros((), dtype=torch.long, device=device)
    for images, target in loader:
        images, target = images.to(device), target.to(device)
        with accelerator.autocast():
            heads = forward_heads_of(model, images)
            scores = predict_of(model, heads)
        top1 = scores.argmax(dim=-1) == target
        hits1 += top1.sum()
        hits5 += _topk_hits(scores, target, 5).sum()
        for i, logits in enumerate(heads[: len(names)]):
            head_hits[i] += (logits.argmax(dim=-1) == target).sum()
        class_hits += torch.bincount(target[top1], minlength=num_classes)
        class_count += torch.bincount(target, minlength=num_classes)
        seen += len(target)
    totals = [accelerator.reduce(t, reduction="sum") for t in (hits1, hits5, head_hits, class_hits, class_count, seen)]
    hits1, hits5, head_hits, class_hits, class_count, seen = totals
    model.train(was_training)
    n = max(int(seen), 1)
    per_class = (class_hits.float() / class_count.clamp_min(1).float() * 100).tolist()
    return EvalResult(
        count=int(seen),
        top1=100.0 * int(hits1) / n,
        top5=100.0 * int(hits5) / n if num_classes > 5 else None,
        head_top1={name: 100.0 * int(h) / n for name, h in zip(names, head_hits.tolist())},
        per_class=per_class,
    )


def gather_rows(accelerator, tensor: Tensor) -> Tensor:
    """Concatenate every process's rows (shards may differ in length by one)."""
    if accelerator.num_processes == 1:
        return tensor
    length = torch.tensor([tensor.shape[0]], device=tensor.device)
    lengths = accelerator.gather(length).tolist()
    padded = accelerator.pad_across_processes(tensor, dim=0)
    gathered = accelerator.gather(padded)
    width = padded.shape[0]
    return torch.cat([gathered[i * width: i * width + n] for i, n in enumerate(lengths)])


@torch.no_grad()
def predict_all(model: nn.Module, loader, accelerator) -> Tuple[Tuple[Tensor, ...], Tensor]:
    """Every head's logits and the targets over a sharded loader, gathered on every process (in shard order)."""
    was_training = model.training
    model.eval()
    heads_out: List[List[Tensor]] = []
    targets: List[Tensor] = []
    for images, target in loader:
        images = images.to(accelerator.device)
        with accelerator.autocast():
            heads = forward_heads_of(model, images)
        if not heads_out:
            heads_out = [[] for _ in heads]
        for store, logits in zip(heads_out, heads):
            store.append(logits.float())
        targets.append(target.to(accelerator.device))
    model.train(was_training)
    gathered = tuple(gather_rows(accelerator, torch.cat(h)) for h in heads_out)
    return gathered, gather_rows(accelerator, torch.cat(targets))
