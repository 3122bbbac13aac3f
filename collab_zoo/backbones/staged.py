"""A stem, a list of stages, a final norm, a pooled classifier: the shape of every CIFAR-style backbone here.

``StagedNet`` gives such a network timm's whole interface (``forward_features``, ``forward_head``,
``reset_classifier``, ``get_classifier``, ``num_features``, ``feature_info``, ``forward_intermediates``),
and one thing timm models lack: ``make_stage(index, in_channels, blocks, width_mult)``, a fresh copy of one of
its stages with another depth or width. DKS builds its auxiliary heads from those copies, so every head is
made of the backbone's own block type.
"""
from abc import ABCMeta, abstractmethod
from typing import Dict, List, Optional, Tuple, Union

import torch
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from .common import TrainingHooks, check_pooling_fits, checkpoint_stage, global_pool_layer

__all__ = ["StagedNet", "init_conv_bn"]


def init_conv_bn(module: nn.Module) -> None:
    """He-normal convolutions, unit BatchNorm, small linear layers: the CIFAR papers' initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=5 ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class StagedNet(TrainingHooks, nn.Module, metaclass=ABCMeta):
    """Subclasses set ``stem``, ``stages`` (ModuleList), ``final_norm`` and call ``_init_head``. (No class-level
    annotations of these submodules: TorchScript takes an annotated submodule for a module interface.)

    ``set_grad_checkpointing`` recomputes every block of every stage in the backward pass (timm's ResNets do
    the same); layer decay gives the stem, each block and the head (with the final norm) a depth of their own.
    """

    def __init__(self):
        super().__init__()
        self.grad_checkpointing = False

    def _init_head(self, num_features: int, num_classes: int, drop_rate: float = 0.0,
                   global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = num_features
        self.drop_rate = drop_rate
        self.global_pool = global_pool_layer(global_pool, num_classes)
        self.head_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    # -- what subclasses describe -------------------------------------------------------------------------
    @abstractmethod
    def stage_blocks(self) -> List[int]:
        """Blocks (or layers) in each stage."""

    def stage_channels(self) -> List[int]:
        """Output channels of the stem followed by each stage."""
        return [info["num_chs"] for info in self.feature_info]

    @abstractmethod
    def make_stage(self, index: int, in_channels: int, blocks: int, width_mult: float = 1.0) -> Tuple[nn.Module, int]:
        """A freshly initialised stage shaped like stage ``index`` (same stride and block type) taking
        ``in_channels``, with ``blocks`` blocks and ``width_mult`` times the width; returns (stage, out_channels)."""

    def make_final_norm(self, channels: int) -> nn.Module:
        """The norm/activation that closes the network before pooling (identity for post-activation nets)."""
        return nn.Identity()

    # -- timm's interface ---------------------------------------------------------------------------------
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            self.global_pool = global_pool_layer(global_pool, num_classes)
        else:
            check_pooling_fits(self.global_pool.pool_type, num_classes)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.stem(x)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_stage(stage, x)
            else:
                x = stage(x)
        return self.final_norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: Optional[Union[int, List[int]]] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stem and stage outputs (feature_info order); the last one optionally after the final norm."""
        if output_fmt != "NCHW":
            raise ValueError("StagedNet intermediates are NCHW only.")
        take, max_index = feature_take_indices(len(self.stages) + 1, indices)
        intermediates = []
        x = self.stem(x)
        if 0 in take:
            intermediates.append(x)
        last = len(self.stages)
        stages = self.stages[:max_index] if stop_early else self.stages
        for i, stage in enumerate(stages, start=1):
            x = checkpoint_stage(stage, x) if self.grad_checkpointing else stage(x)
            if i in take:
                intermediates.append(self.final_norm(x) if (norm and i == last) else x)
        if intermediates_only:
            return intermediates
        if not stop_early or max_index == last:
            x = self.final_norm(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take, max_index = feature_take_indices(len(self.stages) + 1, indices)
        self.stages = self.stages[:max_index]
        if prune_norm:
            self.final_norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def group_matcher(self, coarse: bool = False) -> Dict[str, object]:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")
