"""torchvision's AlexNet, registered into timm's registry as ``alexnet`` with timm's interface.

This is the single-tower AlexNet of torchvision (Krizhevsky 2014, "One weird trick": 64/192/384/256/256
convolutions, 61,100,840 parameters with 1000 classes), the network the complementary-networks paper
ensembles on ImageNet: its T = 1 top-1 error, 43.71 %, is where torchvision's AlexNet sits (43.45 %), not
the Caffe two-tower layout (``alexnet_caffe``, 96/256/384/384/256), which is another module's.

The class is torchvision's own (a dependency, not a copy), so its key names are torchvision's and
torchvision's ImageNet weights load into it unchanged once converted to safetensors. What is added is timm's
interface: ``forward_features`` (the convolutional trunk, 256 x 6 x 6 at 224 px), ``forward_head``
(pooling to 6 x 6 and the three fully connected layers; ``pre_logits`` stops before the last),
``get_classifier``/``reset_classifier`` (``classifier.6``), ``feature_info`` and ``forward_intermediates``
(after each convolution's ReLU).
"""
from typing import Dict, List, Optional, Tuple, Union

import torch
import torchvision
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from ..builder import build_zoo_model
from ..contract import exempt_from_conformance
from ..errors import IncompatibleConfigError
from ..registry import base_cfg, zoo_default_cfgs, zoo_model
from .common import (TrainingHooks, checkpoint_layers, run_layers, run_segments, sequential_group_matcher,
                     split_at)

__all__ = ["AlexNet"]

# Index in ``features`` of the ReLU after each convolution, its channels and its stride from the input.
_CONV_OUTPUTS: Tuple[Tuple[int, int, int], ...] = ((1, 64, 4), (4, 192, 8), (7, 384, 16), (9, 256, 16), (11, 256, 16))


class AlexNet(TrainingHooks, torchvision.models.AlexNet):
    """torchvision's AlexNet with timm's interface. ``drop_rate`` is the dropout before fc6 and fc7.

    Like timm's VGG, the fully connected layers read a fixed 6 x 6 map, so ``reset_classifier(0, '')`` keeps
    them and the model still returns vectors. ``set_grad_checkpointing`` recomputes the trunk convolution by
    convolution in the backward pass. Layer decay: ``features.0`` is the stem, each later convolution a block,
    the fully connected layers the head (timm's grouping of VGG).
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5,
                 global_pool: Optional[str] = None):
        super().__init__(num_classes=max(num_classes, 1), dropout=drop_rate)
        if global_pool not in (None, "", "avg"):
            raise IncompatibleConfigError(
                f"AlexNet pools its last feature map to 6 x 6 before fc6 (9216 inputs); global_pool={global_pool!r} "
                "would change fc6's input size. Leave global_pool unset.")
        if in_chans != 3:
            first = self.features[0]
            self.features[0] = nn.Conv2d(in_chans, first.out_channels, first.kernel_size, first.stride, first.padding)
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.num_features = _CONV_OUTPUTS[-1][1]
        self.head_hidden_size = self.classifier[4].out_features
        self.feature_info = [dict(num_chs=c, reduction=r, module=f"features.{i}") for i, c, r in _CONV_OUTPUTS]
        if num_classes <= 0:
            self.reset_classifier(0)

    # -- timm's interface ---------------------------------------------------------------------------------
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return "classifier.6" if name_only else self.classifier[6]

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool not in (None, "", "avg"):
            raise IncompatibleConfigError(f"AlexNet has no global pooling to change (got global_pool={global_pool!r}).")
        self.num_classes = num_classes
        self.classifier[6] = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def _level_ends(self) -> List[str]:
        return [str(position) for position, _, _ in _CONV_OUTPUTS[:len(self.feature_info)]]

    def group_matcher(self, coarse: bool = False) -> Dict[str, object]:
        return sequential_group_matcher("features", self.features, self._level_ends(), coarse)

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            # Each run starts at a pooling or a convolution, so recomputing it reads what it first read.
            return run_segments(split_at(self.features, self._level_ends()), x)
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        # classifier[:6] one layer at a time: a slice is a new Sequential, which TorchScript and FX cannot follow.
        x = self.classifier[2](self.classifier[1](self.classifier[0](x)))  # dropout, fc6, ReLU
        x = self.classifier[5](self.classifier[4](self.classifier[3](x)))  # dropout, fc7, ReLU
        return x if pre_logits else self.classifier[6](x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: Optional[Union[int, List[int]]] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """The output of each convolution (after its ReLU), feature_info order; then the trunk's output."""
        if output_fmt != "NCHW":
            raise IncompatibleConfigError("AlexNet intermediates are NCHW only.")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates = []
        for level, run in enumerate(split_at(self.features, self._level_ends())):
            x = checkpoint_layers(run, x) if self.grad_checkpointing else run_layers(run, x)
            if level in take:
                intermediates.append(x)
            if stop_early and level == max_index:
                break
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take, max_index = feature_take_indices(len(_CONV_OUTPUTS), indices)
        self.features = self.features[:_CONV_OUTPUTS[max_index][0] + 1]
        if prune_head:
            # What follows the kept convolutions no longer fits their output: the whole head goes.
            self.avgpool = nn.Identity()
            self.classifier = nn.Sequential(*[nn.Identity() for _ in range(7)])
            self.num_classes = 0
        return take


default_cfgs = zoo_default_cfgs({
    "alexnet": base_cfg("features.0", "classifier.6", pool_size=(6, 6)),
})


@zoo_model
def alexnet(pretrained: bool = False, **kwargs) -> AlexNet:
    """torchvision's AlexNet (61.1M parameters); the complementary-networks paper's ImageNet AlexNet."""
    return build_zoo_model(AlexNet, "alexnet", pretrained, **kwargs)


exempt_from_conformance(
    "alexnet", "default_cfg:unpooled",
    "fc6 reads the trunk's map pooled to a fixed 6 x 6 (9216 inputs), not a global pool, so there is no pooling "
    "to switch off and the forward after reset_classifier(0, '') still ends in vectors; timm skips this check "
    "for the same kind of head (EARLY_POOL_MODELS, e.g. VGG)")
