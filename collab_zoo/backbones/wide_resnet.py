"""Wide residual networks for CIFAR (Zagoruyko & Komodakis): WRN-d-k, n = (d - 4) / 6 pre-activation basic
blocks per stage at 16k / 32k / 64k channels, a 1x1 projection where the shape changes, optional dropout
between the two convolutions, and a final BN-ReLU before pooling.
"""
from typing import List, Tuple

from torch import Tensor, nn

from ..builder import build_zoo_model
from ..registry import cifar_cfg, zoo_default_cfgs, zoo_model
from .staged import StagedNet, init_conv_bn

__all__ = ["WideResNet", "PreActBlock"]


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3; the projection reads the activated input."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_channels)
        self.conv0 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.act = nn.ReLU(inplace=False)
        self.project = (nn.Conv2d(in_channels, channels, 1, stride, bias=False)
                        if in_channels != channels or stride != 1 else None)

    def forward(self, x: Tensor) -> Tensor:
        activated = self.act(self.bn0(x))
        out = self.conv0(activated)
        out = self.conv1(self.drop(self.act(self.bn1(out))))
        return out + (self.project(activated) if self.project is not None else x)


class WideResNet(StagedNet):
    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 100, in_chans: int = 3,
                 dropout: float = 0.0, drop_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (16, 22, 28, 40, ...), got {depth}.")
        self.depth, self.widen_factor, self.dropout = depth, widen_factor, dropout
        self.widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        n = (depth - 4) // 6
        self.stem = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.feature_info = [dict(num_chs=16, reduction=1, module="stem")]
        stages, channels = [], 16
        for i in range(3):
            stage, channels = self.make_stage(i, channels, n)
            stages.append(stage)
            self.feature_info.append(dict(num_chs=channels, reduction=2 ** i, module=f"stages.{i}"))
        self.stages = nn.ModuleList(stages)
        self.final_norm = self.make_final_norm(channels)
        self._init_head(channels, num_classes, drop_rate, global_pool)
        init_conv_bn(self)

    def stage_blocks(self) -> List[int]:
        return [len(s) for s in self.stages]

    def make_stage(self, index: int, in_channels: int, blocks: int, width_mult: float = 1.0) -> Tuple[nn.Module, int]:
        channels = int(round(self.widths[index] * width_mult))
        stride = 1 if index == 0 else 2
        stage = nn.Sequential(*[
            PreActBlock(in_channels if b == 0 else channels, channels, stride if b == 0 else 1, self.dropout)
            for b in range(blocks)])
        init_conv_bn(stage)
        return stage, channels

    def make_final_norm(self, channels: int) -> nn.Module:
        return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


default_cfgs = zoo_default_cfgs({
    "wrn16_4": cifar_cfg("stem", "fc", pool_size=(8, 8)),
    "wrn16_8": cifar_cfg("stem", "fc", pool_size=(8, 8)),
    "wrn28_4": cifar_cfg("stem", "fc", pool_size=(8, 8)),
    "wrn28_10": cifar_cfg("stem", "fc", pool_size=(8, 8)),
})


@zoo_model
def wrn16_4(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-16-4 for CIFAR (2.77M parameters with 100 classes)."""
    return build_zoo_model(WideResNet, "wrn16_4", pretrained, **dict(dict(depth=16, widen_factor=4), **kwargs))


@zoo_model
def wrn16_8(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-16-8 for CIFAR (11.0M parameters with 100 classes)."""
    return build_zoo_model(WideResNet, "wrn16_8", pretrained, **dict(dict(depth=16, widen_factor=8), **kwargs))


@zoo_model
def wrn28_4(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-28-4 for CIFAR."""
    return build_zoo_model(WideResNet, "wrn28_4", pretrained, **dict(dict(depth=28, widen_factor=4), **kwargs))


@zoo_model
def wrn28_10(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-28-10 for CIFAR (36.5M parameters with 100 classes); dropout=0.3 gives the paper's dropout variant."""
    return build_zoo_model(WideResNet, "wrn28_10", pretrained, **dict(dict(depth=28, widen_factor=10), **kwargs))
