"""He et al.'s CIFAR ResNets (ResNet-20/32/44/56/110; depth 6n+2): three stages of n basic blocks at
16/32/64 channels. Shortcuts across a stride follow the paper's option A (subsample, zero-pad channels) by
default; ``shortcut="conv"`` gives option B (1x1 projection + BN), as in the complementary-networks code.
"""
from typing import List, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..builder import build_zoo_model
from ..registry import cifar_cfg, zoo_default_cfgs, zoo_model
from .staged import StagedNet, init_conv_bn

__all__ = ["CifarResNet", "BasicBlock"]


class PadShortcut(nn.Module):
    """Option A: take every other pixel, append zero channels. No parameters."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int = 1, shortcut: str = "pad"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)
        if stride == 1 and in_channels == channels:
            self.shortcut = nn.Identity()
        elif shortcut == "pad" and channels >= in_channels:
            self.shortcut = PadShortcut(stride, channels - in_channels)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class CifarResNet(StagedNet):
    def __init__(self, depth: int = 32, num_classes: int = 100, in_chans: int = 3, widths=(16, 32, 64),
                 shortcut: str = "pad", drop_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}.")
        if shortcut not in ("pad", "conv"):
            raise ValueError(f"shortcut must be 'pad' (option A) or 'conv' (option B), got {shortcut!r}.")
        self.depth, self.widths, self.shortcut = depth, tuple(widths), shortcut
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="stem")]
        stages, channels = [], widths[0]
        for i in range(len(widths)):
            stage, channels = self.make_stage(i, channels, n)
            stages.append(stage)
            self.feature_info.append(dict(num_chs=channels, reduction=2 ** i, module=f"stages.{i}"))
        self.stages = nn.ModuleList(stages)
        self.final_norm = nn.Identity()
        self._init_head(channels, num_classes, drop_rate, global_pool)
        init_conv_bn(self)

    def stage_blocks(self) -> List[int]:
        return [len(s) for s in self.stages]

    def make_stage(self, index: int, in_channels: int, blocks: int, width_mult: float = 1.0) -> Tuple[nn.Module, int]:
        channels = int(round(self.widths[index] * width_mult))
        stride = 1 if index == 0 else 2
        layers = [BasicBlock(in_channels if b == 0 else channels, channels, stride if b == 0 else 1, self.shortcut)
                  for b in range(blocks)]
        stage = nn.Sequential(*layers)
        init_conv_bn(stage)
        return stage, channels


def _cfg(**kwargs):
    return cifar_cfg("stem.0", "fc", pool_size=(8, 8), **kwargs)


default_cfgs = zoo_default_cfgs({
    "cifar_resnet20": _cfg(),
    "cifar_resnet32": _cfg(),
    "cifar_resnet44": _cfg(),
    "cifar_resnet56": _cfg(),
    "cifar_resnet110": _cfg(),
})


def _create(variant: str, depth: int, pretrained: bool, **kwargs) -> CifarResNet:
    return build_zoo_model(CifarResNet, variant, pretrained, depth=depth, **kwargs)


@zoo_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 for CIFAR (He et al. 2016, Sec. 4.2)."""
    return _create("cifar_resnet20", 20, pretrained, **kwargs)


@zoo_model
def cifar_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-32 for CIFAR; the DKS paper's ResNet (d=32) baseline."""
    return _create("cifar_resnet32", 32, pretrained, **kwargs)


@zoo_model
def cifar_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-44 for CIFAR."""
    return _create("cifar_resnet44", 44, pretrained, **kwargs)


@zoo_model
def cifar_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 for CIFAR; the complementary-networks paper's CIFAR-100 member (there with shortcut='conv')."""
    return _create("cifar_resnet56", 56, pretrained, **kwargs)


@zoo_model
def cifar_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-110 for CIFAR; the DKS paper's ResNet (d=110) baseline."""
    return _create("cifar_resnet110", 110, pretrained, **kwargs)
