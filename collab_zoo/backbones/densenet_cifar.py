"""DenseNets for CIFAR (Huang et al.): three dense blocks joined by transitions.

Original DenseNet (``bc=False``): (L - 4) / 3 layers per block, each BN-ReLU-conv3x3 adding k channels, a
16-channel stem, transitions keeping the width. DenseNet-BC (``bc=True``): (L - 4) / 6 bottleneck layers
(BN-ReLU-conv1x1 to 4k, BN-ReLU-conv3x3 to k), a 2k-channel stem, transitions halving the width.

A stage here is [transition +] dense block, so every stage after the first starts by down-sampling, the
layout DKS attaches its heads to. The DKS paper's DenseNet-40-12 / 100-12 baselines (24.91 / 20.92 % error on
CIFAR-100) sit where the original DenseNets do (24.42 / 20.20 in Huang et al.), not DenseNet-BC-100-12
(22.27), so the plain names are the original design and ``densenet_bc100_k12`` the BC one.
"""
from typing import List, Tuple

import torch
from torch import Tensor, nn

from ..builder import build_zoo_model
from ..registry import cifar_cfg, zoo_default_cfgs, zoo_model
from .staged import StagedNet, init_conv_bn

__all__ = ["CifarDenseNet"]


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth: int, bottleneck: bool, dropout: float = 0.0):
        super().__init__()
        layers: List[nn.Module] = []
        channels = in_channels
        if bottleneck:
            layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, 4 * growth, 1, bias=False)]
            channels = 4 * growth
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, growth, 3, 1, 1, bias=False)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class Transition(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
                         nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.AvgPool2d(2))


class CifarDenseNet(StagedNet):
    def __init__(self, depth: int = 40, growth_rate: int = 12, bc: bool = False, num_classes: int = 100,
                 in_chans: int = 3, dropout: float = 0.0, drop_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        per_layer = 6 if bc else 3
        if (depth - 4) % per_layer != 0:
            raise ValueError(f"DenseNet{'-BC' if bc else ''} depth must be {per_layer}n+4, got {depth}.")
        self.depth, self.growth_rate, self.bc, self.dropout = depth, growth_rate, bc, dropout
        self.compression = 0.5 if bc else 1.0
        n = (depth - 4) // per_layer
        stem_channels = 2 * growth_rate if bc else 16
        self.stem = nn.Conv2d(in_chans, stem_channels, 3, 1, 1, bias=False)
        self.feature_info = [dict(num_chs=stem_channels, reduction=1, module="stem")]
        stages, channels = [], stem_channels
        for i in range(3):
            stage, channels = self.make_stage(i, channels, n)
            stages.append(stage)
            self.feature_info.append(dict(num_chs=channels, reduction=2 ** i, module=f"stages.{i}"))
        self.stages = nn.ModuleList(stages)
        self.final_norm = self.make_final_norm(channels)
        self._init_head(channels, num_classes, drop_rate, global_pool)
        init_conv_bn(self)

    def stage_blocks(self) -> List[int]:
        return [sum(isinstance(m, DenseLayer) for m in s.modules()) for s in self.stages]

    def make_stage(self, index: int, in_channels: int, blocks: int, width_mult: float = 1.0) -> Tuple[nn.Module, int]:
        growth = int(round(self.growth_rate * width_mult))
        layers: List[nn.Module] = []
        channels = in_channels
        if index > 0:
            out = int(channels * self.compression)
            layers.append(Transition(channels, out))
            channels = out
        for _ in range(blocks):
            layers.append(DenseLayer(channels, growth, self.bc, self.dropout))
            channels += growth
        stage = nn.Sequential(*layers)
        init_conv_bn(stage)
        return stage, channels

    def make_final_norm(self, channels: int) -> nn.Module:
        return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


default_cfgs = zoo_default_cfgs({
    "densenet40_k12": cifar_cfg("stem", "fc", pool_size=(8, 8)),
    "densenet100_k12": cifar_cfg("stem", "fc", pool_size=(8, 8)),
    "densenet_bc100_k12": cifar_cfg("stem", "fc", pool_size=(8, 8)),
})


@zoo_model
def densenet40_k12(pretrained: bool = False, **kwargs) -> CifarDenseNet:
    """DenseNet (L=40, k=12) for CIFAR; ``bc=True`` for the BC variant."""
    return build_zoo_model(CifarDenseNet, "densenet40_k12", pretrained, **dict(dict(depth=40, growth_rate=12), **kwargs))


@zoo_model
def densenet100_k12(pretrained: bool = False, **kwargs) -> CifarDenseNet:
    """DenseNet (L=100, k=12) for CIFAR; ``bc=True`` for the BC variant."""
    return build_zoo_model(CifarDenseNet, "densenet100_k12", pretrained,
                           **dict(dict(depth=100, growth_rate=12), **kwargs))


@zoo_model
def densenet_bc100_k12(pretrained: bool = False, **kwargs) -> CifarDenseNet:
    """DenseNet-BC (L=100, k=12) for CIFAR; the complementary-networks paper's DenseNet-BC (k=12)."""
    return build_zoo_model(CifarDenseNet, "densenet_bc100_k12", pretrained,
                           **dict(dict(depth=100, growth_rate=12, bc=True), **kwargs))
