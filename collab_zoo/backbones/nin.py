"""Network in Network (Lin, Chen, Yan; ICLR 2014), as in the authors' Caffe configuration files.

Three *mlpconv* blocks, each a spatial convolution followed by two 1x1 convolutions ("cccp" layers in Caffe),
every one of them followed by ReLU. The first two blocks end in ceil-mode 3x3/2 pooling and dropout 0.5; the
last block's second cccp has one channel per class and, after its ReLU, global average pooling gives the
logits. No fully connected layer and no normalisation. Nine weight layers (the CLDL paper's L = 9).

    block        CIFAR-100 (``nin``, 3x32x32)        MNIST (``nin_mnist``, 1x28x28)
    mlpconv 1    conv 5x5 p2 192, cccp 160, cccp 96  conv 5x5 p2 96, cccp 64, cccp 48
                 maxpool 3/2, dropout 0.5            maxpool 3/2, dropout 0.5
    mlpconv 2    conv 5x5 p2 192, cccp 192, cccp 192 conv 5x5 p2 128, cccp 96, cccp 48
                 maxpool 3/2, dropout 0.5            maxpool 3/2, dropout 0.5
    mlpconv 3    conv 3x3 p1 192, cccp 192, cccp K   conv 5x5 p2 128, cccp 96, cccp K
    parameters   984,356 (K = 100)                   349,674 (K = 10)

The Caffe CIFAR-10 model average-pools after the second block; ``second_pool="avg"`` gives that.
Module names follow Caffe's (``features.conv1``, ``features.cccp1``, ..., ``cccp6``), so the timm view is:
``forward_features`` ends after ``cccp5`` (``num_features`` channels), the classifier is ``cccp6``, and
``forward_head`` applies it, its ReLU and the global pooling. ``forward_head(x, pre_logits=True)`` returns the
pooled ``cccp5`` features: NIN classifies per position before pooling, so that vector is an embedding of the
image rather than the classifier's literal input.
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from ..builder import build_zoo_model
from ..errors import IncompatibleConfigError
from ..registry import cifar_cfg, mnist_cfg, zoo_default_cfgs, zoo_model
from .common import (TrainingHooks, check_pooling_fits, checkpoint_layers, global_pool_layer, run_layers,
                     run_segments, sequential_group_matcher, split_at)

__all__ = ["NetworkInNetwork", "NIN_LAYOUTS"]

# Per block: (spatial kernel, padding, (conv width, cccp width, cccp width)); the last block's final width is
# the class count, so it is left out here.
NIN_LAYOUTS: Dict[str, Tuple[Tuple[int, int, Tuple[int, ...]], ...]] = {
    "cifar": ((5, 2, (192, 160, 96)), (5, 2, (192, 192, 192)), (3, 1, (192, 192))),
    "mnist": ((5, 2, (96, 64, 48)), (5, 2, (128, 96, 48)), (5, 2, (128, 96))),
}

# Caffe's layer names, block by block: the spatial conv, then two cccp layers.
_WEIGHT_NAMES = (("conv1", "cccp1", "cccp2"), ("conv2", "cccp3", "cccp4"), ("conv3", "cccp5"))


def _init_weights(module: nn.Module) -> None:
    # He initialisation for a plain ReLU network without normalisation: keeps the activation scale through
    # the nine layers, so training starts without the warm-up Caffe's small Gaussians needed.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)


class NetworkInNetwork(TrainingHooks, nn.Module):
    """NIN with timm's interface. ``layout`` is ``"cifar"`` or ``"mnist"`` (see the module docstring).

    ``set_grad_checkpointing`` recomputes each mlpconv block in the backward pass. Layer decay: ``conv1`` is
    the stem, each later weight layer of ``features`` a block (``coarse``: each mlpconv block), ``cccp6`` the head.
    """

    def __init__(self, num_classes: int = 100, in_chans: int = 3, layout: str = "cifar", drop_rate: float = 0.5,
                 second_pool: str = "max", global_pool: str = "avg"):
        super().__init__()
        if layout not in NIN_LAYOUTS:
            raise IncompatibleConfigError(f"NIN layout must be one of {sorted(NIN_LAYOUTS)}, got {layout!r}.")
        if second_pool not in ("max", "avg"):
            raise IncompatibleConfigError(f"second_pool must be 'max' or 'avg' (Caffe CIFAR-10), got {second_pool!r}.")
        self.layout, self.drop_rate, self.second_pool = layout, drop_rate, second_pool
        spec = NIN_LAYOUTS[layout]
        layers = OrderedDict()
        self.feature_info = []
        channels, reduction = in_chans, 1
        for block, ((kernel, padding, widths), names) in enumerate(zip(spec, _WEIGHT_NAMES), start=1):
            for index, (name, width) in enumerate(zip(names, widths)):
                size, pad = (kernel, padding) if index == 0 else (1, 0)
                layers[name] = nn.Conv2d(channels, width, size, padding=pad)
                layers[f"relu_{name}"] = nn.ReLU(inplace=True)
                channels = width
            if block < len(spec):
                pool = nn.AvgPool2d if (block == 2 and second_pool == "avg") else nn.MaxPool2d
                layers[f"pool{block}"] = pool(3, stride=2, ceil_mode=True)
                layers[f"drop{block}"] = nn.Dropout(drop_rate)
                reduction *= 2
                last = f"drop{block}"
            else:
                last = f"relu_{names[-1]}"
            self.feature_info.append(dict(num_chs=channels, reduction=reduction, module=f"features.{last}"))
        self.features = nn.Sequential(layers)
        self.num_features = self.head_hidden_size = channels
        self.num_classes = num_classes
        self.grad_checkpointing = False
        self.global_pool = global_pool_layer(global_pool, num_classes)
        self.cccp6 = self._classifier(num_classes)
        self.head_act = nn.ReLU(inplace=True)
        _init_weights(self)

    def _classifier(self, num_classes: int) -> nn.Module:
        return nn.Conv2d(self.num_features, num_classes, 1) if num_classes > 0 else nn.Identity()

    # -- timm's interface ---------------------------------------------------------------------------------
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return "cccp6" if name_only else self.cccp6

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            self.global_pool = global_pool_layer(global_pool, num_classes)
        else:
            check_pooling_fits(self.global_pool.pool_type, num_classes)
        self.num_classes = num_classes
        self.cccp6 = self._classifier(num_classes)
        _init_weights(self.cccp6)

    def _block_ends(self) -> List[str]:
        return [str(info["module"]).split(".", 1)[1] for info in self.feature_info]

    def group_matcher(self, coarse: bool = False) -> Dict[str, object]:
        return sequential_group_matcher("features", self.features, self._block_ends(), coarse)

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            # Each block starts at its spatial convolution, so recomputing it reads what it first read.
            return run_segments(split_at(self.features, self._block_ends()), x)
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if pre_logits:
            return self.global_pool(x)
        return self.global_pool(self.head_act(self.cccp6(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: Optional[Union[int, List[int]]] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """The output of each mlpconv block (after its pooling and dropout), in feature_info order."""
        if output_fmt != "NCHW":
            raise ValueError("NIN intermediates are NCHW only.")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates = []
        for position, block in enumerate(split_at(self.features, self._block_ends())):
            x = checkpoint_layers(block, x) if self.grad_checkpointing else run_layers(block, x)
            if position in take:
                intermediates.append(x)
            if stop_early and position == max_index:
                break
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the blocks after the deepest level asked for (and the classifier) -- what features_only keeps."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        last = self._block_ends()[max_index]
        names = [name for name, _ in self.features.named_children()]
        kept = names[:names.index(last) + 1]
        self.features = nn.Sequential(OrderedDict((name, getattr(self.features, name)) for name in kept))
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def weight_layers(self) -> Sequence[nn.Conv2d]:
        """The nine convolutions in execution order, the classifier last."""
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        return (*convs, self.cccp6)


default_cfgs = zoo_default_cfgs({
    "nin": cifar_cfg("features.conv1", "cccp6", pool_size=(8, 8)),
    "nin_mnist": mnist_cfg("features.conv1", "cccp6", pool_size=(7, 7)),
})


@zoo_model
def nin(pretrained: bool = False, **kwargs) -> NetworkInNetwork:
    """Network in Network for CIFAR-100 (984,356 parameters with 100 classes)."""
    return build_zoo_model(NetworkInNetwork, "nin", pretrained, layout="cifar", **kwargs)


@zoo_model
def nin_mnist(pretrained: bool = False, **kwargs) -> NetworkInNetwork:
    """Network in Network for MNIST (349,674 parameters with 10 classes)."""
    return build_zoo_model(NetworkInNetwork, "nin_mnist", pretrained, layout="mnist", **kwargs)
