"""What every zoo network shares for timm's interface: a global pool that can be switched off, gradient
checkpointing over a network's own segments, layer groups for timm's layer decay, and the parameters weight
decay leaves alone.

No ``from __future__ import annotations`` in this package: TorchScript and FX read the annotations of the
modules' methods as objects, and string annotations break both (``torch.jit.script`` cannot resolve them, and
an FX graph re-emitted from them cannot be scripted).
"""
import contextlib
from functools import partial
from typing import ContextManager, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import torch
import torch.utils.checkpoint
from timm.layers import SelectAdaptivePool2d
from torch import Tensor, nn

from ..errors import IncompatibleConfigError

__all__ = ["check_pooling_fits", "global_pool_layer", "TrainingHooks", "checkpoint_layers", "checkpoint_stage",
           "run_layers", "run_segments", "split_at", "sequential_group_matcher"]


def check_pooling_fits(pool_type: str, num_classes: int) -> None:
    """No pooling (``''``) leaves an NCHW map, which only a model without a classifier can return."""
    if not pool_type and num_classes > 0:
        raise IncompatibleConfigError(
            f"global_pool='' (no pooling) leaves an unpooled feature map that a {num_classes}-class linear "
            "classifier cannot read; use it with num_classes=0, or keep a pool type such as 'avg'.")


def global_pool_layer(pool_type: str, num_classes: int) -> SelectAdaptivePool2d:
    """timm's global pooling before a linear classifier. ``''`` switches pooling off and leaves the NCHW map
    unflattened, as timm's own classifiers do."""
    check_pooling_fits(pool_type, num_classes)
    return SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))


class TrainingHooks:
    """timm's training hooks shared by the zoo's networks (each sets ``self.grad_checkpointing = False`` in its
    constructor, which its forward reads, and implements ``group_matcher``)."""

    grad_checkpointing: bool

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the network's segments in the backward pass instead of storing their activations."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> Set[str]:
        """Biases and normalisation parameters (every 1-D parameter). timm's optimizer factory already spares
        these by their shape; naming them makes the hook right for parameter groups built by hand too."""
        return {name for name, p in self.named_parameters() if p.ndim <= 1}


def checkpoint_layers(layers: Sequence[nn.Module], x: Tensor) -> Tensor:
    """``layers`` in turn as one checkpointed segment: run without keeping activations, run again in the
    backward pass. The segment must start at a layer that does not write into its input (a convolution,
    linear layer or pooling), so that the second run reads what the first one read.

    Not timm's ``checkpoint``: BatchNorm's running statistics would be updated by both runs (as they are under
    timm's own checkpointing), so a model trained with checkpointing would end with other statistics than one
    trained without. The second run here puts them back as it found them, which needs the non-reentrant
    implementation's ``context_fn``; dropout draws the same masks in both runs (``preserve_rng_state``).
    """
    return torch.utils.checkpoint.checkpoint(run_layers, layers, x, use_reentrant=False,
                                             context_fn=partial(_contexts_keeping_statistics, layers))


def run_layers(layers: Sequence[nn.Module], x: Tensor) -> Tensor:
    for layer in layers:
        x = layer(x)
    return x


def run_segments(segments: Sequence[Sequence[nn.Module]], x: Tensor) -> Tensor:
    """Each segment in turn, checkpointed (``checkpoint_layers``)."""
    for segment in segments:
        x = checkpoint_layers(segment, x)
    return x


def checkpoint_stage(stage: nn.Module, x: Tensor) -> Tensor:
    """One stage checkpointed block by block if it is a Sequential (as timm's ``checkpoint_seq`` does), else whole."""
    if isinstance(stage, nn.Sequential):
        return run_segments([[block] for block in stage], x)
    return checkpoint_layers([stage], x)


@contextlib.contextmanager
def _running_statistics_kept(layers: Sequence[nn.Module]) -> Iterator[None]:
    buffers = [b for layer in layers for m in layer.modules() if getattr(m, "track_running_stats", False)
               for b in m.buffers(recurse=False)]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)


def _contexts_keeping_statistics(layers: Sequence[nn.Module]) -> Tuple[ContextManager, ContextManager]:
    # (around the first run, around the recomputation)
    return contextlib.nullcontext(), _running_statistics_kept(layers)


def split_at(layers: nn.Sequential, ends: Sequence[str]) -> List[List[nn.Module]]:
    """``layers``' children in runs that each end at one of ``ends`` (names), plus any trailing run."""
    segments: List[List[nn.Module]] = [[]]
    for name, layer in layers.named_children():
        segments[-1].append(layer)
        if name in ends:
            segments.append([])
    return [s for s in segments if s]


def sequential_group_matcher(prefix: str, layers: nn.Sequential, ends: Sequence[str],
                             coarse: bool) -> Dict[str, object]:
    """timm's ``group_matcher`` for a plain stack of named layers ``{prefix}.{name}``: the first layer with
    parameters is the stem; each later one is a block of its own (``coarse``: the run ending at one of
    ``ends``, i.e. one feature level). Anything unmatched (the head) is grouped last by timm."""
    escaped = prefix.replace(".", r"\.")
    weighted = [name for name, layer in layers.named_children() if any(True for _ in layer.parameters())]
    run_of: Dict[str, int] = {}
    run = 0
    for name, _ in layers.named_children():
        run_of[name] = run
        if name in ends:
            run += 1
    stem, rest = weighted[0], weighted[1:]
    group_of = {name: (run_of[name] if coarse else index) for index, name in enumerate(rest)}
    blocks: List[Tuple[str, Optional[Tuple[int, ...]]]] = [
        (rf"^{escaped}\.{name}\.", (group_of[name],)) for name in rest]
    return dict(stem=rf"^{escaped}\.{stem}\.", blocks=blocks)
