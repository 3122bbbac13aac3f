"""The CIFAR MobileNet of deep mutual learning (Zhang et al. 2018; 3.3M parameters on CIFAR-100).

MobileNet-v1's thirteen depthwise-separable blocks (64, 128/2, 128, 256/2, 256, 512/2, 5 x 512, 1024/2,
1024) after a stride-1 3x3 stem of 32 channels, so a 32x32 image ends at 2x2. Stages split at each
down-sampling: [64] [128, 128] [256, 256] [512 x 6] [1024, 1024].
"""
from typing import List, Sequence, Tuple

from torch import nn

from ..builder import build_zoo_model
from ..registry import cifar_cfg, zoo_default_cfgs, zoo_model
from .staged import StagedNet, init_conv_bn

__all__ = ["CifarMobileNet"]

# (channels, blocks) per stage; each stage after the first starts with a stride-2 block.
STAGES = ((64, 1), (128, 2), (256, 2), (512, 6), (1024, 2))


class SeparableBlock(nn.Sequential):
    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class CifarMobileNet(StagedNet):
    def __init__(self, num_classes: int = 100, in_chans: int = 3, width_mult: float = 1.0,
                 stages: Sequence[Tuple[int, int]] = STAGES, drop_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        self.stage_spec = tuple((int(round(c * width_mult)), b) for c, b in stages)
        stem_channels = int(round(32 * width_mult))
        self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_channels, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True))
        self.feature_info = [dict(num_chs=stem_channels, reduction=1, module="stem")]
        built, channels = [], stem_channels
        for i, (_, blocks) in enumerate(self.stage_spec):
            stage, channels = self.make_stage(i, channels, blocks)
            built.append(stage)
            self.feature_info.append(dict(num_chs=channels, reduction=2 ** i, module=f"stages.{i}"))
        self.stages = nn.ModuleList(built)
        self.final_norm = nn.Identity()
        self._init_head(channels, num_classes, drop_rate, global_pool)
        init_conv_bn(self)

    def stage_blocks(self) -> List[int]:
        return [len(s) for s in self.stages]

    def make_stage(self, index: int, in_channels: int, blocks: int, width_mult: float = 1.0) -> Tuple[nn.Module, int]:
        channels = int(round(self.stage_spec[index][0] * width_mult))
        stride = 1 if index == 0 else 2
        stage = nn.Sequential(*[SeparableBlock(in_channels if b == 0 else channels, channels, stride if b == 0 else 1)
                                for b in range(blocks)])
        init_conv_bn(stage)
        return stage, channels


default_cfgs = zoo_default_cfgs({"mobilenet_cifar": cifar_cfg("stem.0", "fc", pool_size=(2, 2))})


@zoo_model
def mobilenet_cifar(pretrained: bool = False, **kwargs) -> CifarMobileNet:
    """MobileNet for CIFAR as in deep mutual learning; the DKS paper's MobileNet baseline."""
    return build_zoo_model(CifarMobileNet, "mobilenet_cifar", pretrained, **kwargs)
