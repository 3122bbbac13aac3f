"""LeNet as the DCL paper uses it (Wang et al. 2017, Sec. 4.1.2 and 4.2.1), and the base of the zoo's
conv-then-fully-connected networks (LeNet, BigNet, Caffe AlexNet).

``lenet`` -- the multi-digit MNIST baseline, ``C5@20-MP2S2-C5@50-MP2S2-FC500-D0.5-OUT`` on 28x28 grayscale
digits, 100 classes by default (two-digit numbers; 1000 for the three-digit sets). Whether ReLUs follow the
convolutions is not written. The 20/50/500 layout is exactly Caffe's LeNet example (the authors work in
Caffe: their AlexNet is Caffe's, Sec. 4.2.2), and that network has *no* activation after its two
convolutions -- the max-poolings are its only non-linearity before ``ip1``, which is followed by a ReLU.
The LeNet of LeCun et al. 1998, which the paper cites, squashes every layer with a scaled tanh instead.
We follow Caffe -- no ReLU after the convolutions -- and ``conv_act=True`` adds one after each.

``lenet_cifar`` -- the SVHN/CIFAR variant, ``C5(P2)@32-MP3(S2)-C5(P2)@64-MP3(S2)-C5(P2)@128-MP3(S2)-FC512-
D0.5-OUT`` on 32x32 RGB. Its conv-5-pad-2 / max-pool-3-stride-2 pattern is Caffe's CIFAR-10 examples',
which put a ReLU after every convolution, so this one has them (``conv_act=False`` removes them).

Both: Caffe's pooling rounds the output size up (ceil mode; 32 -> 16 -> 8 -> 4 here), the hidden FC layer
has a ReLU (DCL replaces exactly such a ``relu(W x)`` layer), and weights start from Caffe's "xavier"
filler (uniform in +-sqrt(3 / fan_in)) with zero biases, as in Caffe's LeNet. ``drop_rate`` is the
paper's D0.5 before the classifier. The FC layers read a fixed-size map, so the input size is fixed
(``img_size`` sets it; the pretrained cfg says ``fixed_input_size``).
"""
import math
from abc import ABCMeta, abstractmethod
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from ..builder import build_zoo_model
from ..contract import exempt_from_conformance
from ..errors import IncompatibleConfigError
from ..registry import cifar_cfg, mnist_cfg, zoo_default_cfgs, zoo_model
from .common import (TrainingHooks, checkpoint_layers, run_layers, run_segments, sequential_group_matcher,
                     split_at)

__all__ = ["ConvFcNet", "LeNet", "pooled_size", "caffe_xavier_init", "FC_READS_WHOLE_MAP"]

# Why a conv-then-fully-connected net is exempt from timm's unpooled forward (reset_classifier(0, '')).
FC_READS_WHOLE_MAP = (
    "its fully connected layers read the whole feature map, so there is no global pooling to switch off and "
    "the forward after reset_classifier(0, '') still ends in vectors; timm skips this check for the same kind "
    "of head (EARLY_POOL_MODELS, e.g. VGG)")


def pooled_size(size: int, kernel: int, stride: int) -> int:
    """Output length of an unpadded pooling in ceil mode (Caffe's rounding; PyTorch's ``ceil_mode=True``)."""
    out = math.ceil((size - kernel) / stride) + 1
    if (out - 1) * stride >= size:  # the last window must start inside the input
        out -= 1
    return out


def as_pair(size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise IncompatibleConfigError(f"img_size must be an int or (height, width), got {size}.")
    return size


def caffe_xavier_init(module: nn.Module) -> None:
    """Caffe's "xavier" filler on every conv and linear layer: U(+-sqrt(3 / fan_in)), zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            bound = math.sqrt(3.0 / fan_in)
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConvFcNet(TrainingHooks, nn.Module, metaclass=ABCMeta):
    """Convolutions in ``features`` (an ``nn.Sequential`` with named children), then fully connected layers.

    Subclasses build ``features``, name in ``feature_points`` the children whose outputs are the feature
    maps ``feature_info`` describes (the last is ``forward_features``' output), set ``head_hidden_size``
    (the width ``forward_head(pre_logits=True)`` returns) and implement ``forward_head``. The classifier is
    the attribute ``classifier_name``. This gives them timm's interface, ``features_only`` included.

    Like timm's VGG, the fully connected layers read the whole feature map, so there is no global pooling to
    switch off: ``reset_classifier(0, '')`` leaves them in place and the model still returns vectors.
    ``set_grad_checkpointing`` recomputes ``features`` level by level (the runs ending at the feature points)
    in the backward pass. Layer decay: the first layer is the stem, each later layer of ``features`` a block
    (``coarse``: each feature level), and the fully connected layers form the head, as timm groups VGG.
    """

    classifier_name: str = "fc"
    # Attributes that make up the fully connected head before the classifier (dropped by prune_head).
    head_layers: Tuple[str, ...] = ()

    def __init__(self):
        super().__init__()
        self.grad_checkpointing = False

    def _init_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        setattr(self, self.classifier_name,
                nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity())

    @abstractmethod
    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """The fully connected layers on ``forward_features``' output."""

    # -- timm's interface ---------------------------------------------------------------------------------
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return self.classifier_name if name_only else getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool not in (None, ""):
            raise IncompatibleConfigError(
                f"{type(self).__name__} has no global pooling (its fully connected layers read the whole feature "
                f"map); call reset_classifier(num_classes) without global_pool, not with {global_pool!r}.")
        self._init_classifier(num_classes)

    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return sequential_group_matcher("features", self.features, self.feature_points, coarse)

    def _level_runs(self) -> List[List[nn.Module]]:
        """``features`` in runs, one per feature level. Each starts at a convolution or a pooling, never at an
        in-place activation, so each can be a checkpointed segment."""
        return split_at(self.features, self.feature_points)

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return run_segments(self._level_runs(), x)
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: Optional[Union[int, List[int]]] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """The outputs of the ``feature_points`` layers (``feature_info`` order)."""
        if output_fmt != "NCHW":
            raise IncompatibleConfigError(f"{type(self).__name__} intermediates are NCHW only, not {output_fmt!r}.")
        take, max_index = feature_take_indices(len(self.feature_points), indices)
        intermediates = []
        for i, run in enumerate(self._level_runs()):
            x = checkpoint_layers(run, x) if self.grad_checkpointing else run_layers(run, x)
            if i in take:
                intermediates.append(x)
            if stop_early and i == max_index:
                break
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take, max_index = feature_take_indices(len(self.feature_points), indices)
        names = [name for name, _ in self.features.named_children()]
        keep = names[:names.index(self.feature_points[max_index]) + 1]
        self.features = nn.Sequential(OrderedDict((n, getattr(self.features, n)) for n in keep))
        self.feature_points = self.feature_points[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_head:
            for name in self.head_layers:
                setattr(self, name, nn.Identity())
            self._init_classifier(0)
        return take


class LeNet(ConvFcNet):
    """Conv(k, pad)-[ReLU]-MaxPool stages, then FC-ReLU-Dropout and the classifier.

    Feature levels (``feature_info``): every pooling's output. A LeNet with fewer than three poolings (the
    MNIST one) also gives the first convolution's full-resolution output (after its ReLU if any) as its first
    level, the way timm's nets give their stem's, so it too has the three levels timm expects of a network
    with three resolutions: ``lenet`` 24x24, 12x12 and 4x4 on 28x28 digits. (Nets with three poolings keep
    their levels, and their ``out_indices``, as they were.)
    """

    head_layers = ("fc1", "act1", "drop1")

    def __init__(self, channels: Sequence[int] = (20, 50), hidden: int = 500, num_classes: int = 100,
                 in_chans: int = 1, img_size: Union[int, Sequence[int]] = 28, kernel_size: int = 5,
                 conv_padding: int = 0, pool_kernel: int = 2, pool_stride: int = 2, conv_act: bool = False,
                 drop_rate: float = 0.5):
        super().__init__()
        self.channels, self.conv_act, self.drop_rate = tuple(channels), conv_act, drop_rate
        height, width = as_pair(img_size)
        layers: List[Tuple[str, nn.Module]] = []
        self.feature_info = []
        points = []
        prev, reduction = in_chans, 1
        for i, ch in enumerate(self.channels, start=1):
            layers.append((f"conv{i}", nn.Conv2d(prev, ch, kernel_size, 1, conv_padding)))
            if conv_act:
                layers.append((f"act{i}", nn.ReLU(inplace=True)))
            if i == 1 and len(self.channels) < 3:
                points.append(layers[-1][0])
                self.feature_info.append(dict(num_chs=ch, reduction=1, module=f"features.{layers[-1][0]}"))
            layers.append((f"pool{i}", nn.MaxPool2d(pool_kernel, pool_stride, ceil_mode=True)))
            height = pooled_size(height + 2 * conv_padding - kernel_size + 1, pool_kernel, pool_stride)
            width = pooled_size(width + 2 * conv_padding - kernel_size + 1, pool_kernel, pool_stride)
            if height < 1 or width < 1:
                raise IncompatibleConfigError(f"img_size {img_size} is too small for {len(self.channels)} conv stages.")
            reduction *= pool_stride
            points.append(f"pool{i}")
            self.feature_info.append(dict(num_chs=ch, reduction=reduction, module=f"features.pool{i}"))
            prev = ch
        self.features = nn.Sequential(OrderedDict(layers))
        self.feature_points = tuple(points)
        self.feature_map_size = (height, width)
        self.num_features = prev
        self.head_hidden_size = hidden
        self.fc1 = nn.Linear(prev * height * width, hidden)
        self.act1 = nn.ReLU(inplace=True)
        self.drop1 = nn.Dropout(drop_rate)
        self._init_classifier(num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        caffe_xavier_init(self)

    def _init_classifier(self, num_classes: int) -> None:
        super()._init_classifier(num_classes)
        caffe_xavier_init(self.fc)

    def init_layer(self, module: nn.Module, name: str) -> None:
        """Initialise a layer put in later (e.g. a DCL module in place of ``name``) like the rest: Caffe xavier."""
        caffe_xavier_init(module)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.drop1(self.act1(self.fc1(torch.flatten(x, 1))))
        return x if pre_logits else self.fc(x)


default_cfgs = zoo_default_cfgs({
    "lenet": mnist_cfg("features.conv1", "fc", num_classes=100, fixed_input_size=True, pool_size=(4, 4)),
    "lenet_cifar": cifar_cfg("features.conv1", "fc", fixed_input_size=True, pool_size=(4, 4)),
})


@zoo_model
def lenet(pretrained: bool = False, **kwargs) -> LeNet:
    """The DCL paper's multi-digit MNIST LeNet, C5@20-MP2S2-C5@50-MP2S2-FC500-D0.5-OUT (28x28x1, 100 classes;
    476,170 parameters)."""
    return build_zoo_model(LeNet, "lenet", pretrained, **kwargs)


exempt_from_conformance("lenet", "default_cfg:unpooled", FC_READS_WHOLE_MAP)


@zoo_model
def lenet_cifar(pretrained: bool = False, **kwargs) -> LeNet:
    """The DCL paper's SVHN/CIFAR LeNet, C5(P2)@32-MP3(S2)-C5(P2)@64-MP3(S2)-C5(P2)@128-MP3(S2)-FC512-D0.5-OUT."""
    args = dict(channels=(32, 64, 128), hidden=512, num_classes=100, in_chans=3, img_size=32, conv_padding=2,
                pool_kernel=3, pool_stride=2, conv_act=True)
    args.update(kwargs)
    return build_zoo_model(LeNet, "lenet_cifar", pretrained, **args)


exempt_from_conformance("lenet_cifar", "default_cfg:unpooled", FC_READS_WHOLE_MAP)
