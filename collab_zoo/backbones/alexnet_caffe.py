"""AlexNet as Caffe ships it (``bvlc_alexnet``), the DCL paper's ImageNet baseline (Wang et al. 2017, Sec. 4.2.2):

    C11(S4)@96 - ReLU - LRN - MP3(S2) - C5(P2)@256 - ReLU - LRN - MP3(S2) - C3(P1)@384 - ReLU -
    C3(P1)@384 - ReLU - C3(P1)@256 - ReLU - MP3(S2) - FC4096 - ReLU - D0.5 - FC4096 - ReLU - D0.5 - FC1000

on 227x227 crops (55 -> 27 -> 13 -> 6). LRN: 5 channels, alpha 1e-4, beta 0.75, k 1 (Caffe divides alpha by
the window size, as ``nn.LocalResponseNorm`` does). Pooling rounds up, as Caffe's does. The convolutions are
ungrouped by default: 62,378,344 parameters with 1000 classes, the paper's "62.35M" (Caffe's own file groups
conv2, conv4 and conv5 in two, ``grouped=True``: 60,965,224). This is not torchvision's AlexNet
(64/192/384/256/256 filters, 61.1M parameters).

Layer names are Caffe's (``features.conv1`` ... ``fc6``, ``fc7``, ``fc8``) and weights start from
``bvlc_alexnet``'s fillers: Gaussian std 0.01 (0.005 for fc6 and fc7), biases 0.1 on conv2, conv4, conv5,
fc6 and fc7, zero elsewhere. The rule goes by the top-level layer name, so a layer that replaces fc6 (a
DCL module) is initialised like fc6. ``drop_rate`` is the D0.5 after fc6 and fc7.
"""
from collections import OrderedDict
from typing import Sequence, Union

import torch
from torch import Tensor, nn

from ..builder import build_zoo_model
from ..contract import exempt_from_conformance
from ..errors import IncompatibleConfigError
from ..registry import base_cfg, zoo_default_cfgs, zoo_model
from .lenet import FC_READS_WHOLE_MAP, ConvFcNet, as_pair, pooled_size

__all__ = ["AlexNetCaffe"]

# bvlc_alexnet's fillers, by top-level layer: (weight std, bias value).
_CAFFE_FILLERS = {
    "conv1": (0.01, 0.0), "conv2": (0.01, 0.1), "conv3": (0.01, 0.0), "conv4": (0.01, 0.1), "conv5": (0.01, 0.1),
    "fc6": (0.005, 0.1), "fc7": (0.005, 0.1), "fc8": (0.01, 0.0),
}


class AlexNetCaffe(ConvFcNet):
    classifier_name = "fc8"
    head_layers = ("fc6", "relu6", "drop6", "fc7", "relu7", "drop7")

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, img_size: Union[int, Sequence[int]] = 227,
                 grouped: bool = False, drop_rate: float = 0.5):
        super().__init__()
        self.grouped, self.drop_rate = grouped, drop_rate
        groups = 2 if grouped else 1
        lrn = dict(size=5, alpha=1e-4, beta=0.75, k=1.0)
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_chans, 96, 11, 4)), ("relu1", nn.ReLU(inplace=True)),
            ("norm1", nn.LocalResponseNorm(**lrn)), ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
            ("conv2", nn.Conv2d(96, 256, 5, 1, 2, groups=groups)), ("relu2", nn.ReLU(inplace=True)),
            ("norm2", nn.LocalResponseNorm(**lrn)), ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
            ("conv3", nn.Conv2d(256, 384, 3, 1, 1)), ("relu3", nn.ReLU(inplace=True)),
            ("conv4", nn.Conv2d(384, 384, 3, 1, 1, groups=groups)), ("relu4", nn.ReLU(inplace=True)),
            ("conv5", nn.Conv2d(384, 256, 3, 1, 1, groups=groups)), ("relu5", nn.ReLU(inplace=True)),
            ("pool5", nn.MaxPool2d(3, 2, ceil_mode=True)),
        ]))
        self.feature_points = ("pool1", "pool2", "pool5")
        self.feature_info = [dict(num_chs=96, reduction=8, module="features.pool1"),
                             dict(num_chs=256, reduction=16, module="features.pool2"),
                             dict(num_chs=256, reduction=32, module="features.pool5")]
        self.feature_map_size = tuple(self._pool5_size(s) for s in as_pair(img_size))
        self.num_features = 256
        self.head_hidden_size = 4096
        self.fc6 = nn.Linear(256 * self.feature_map_size[0] * self.feature_map_size[1], 4096)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(drop_rate)
        self.fc7 = nn.Linear(4096, 4096)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(drop_rate)
        self._init_classifier(num_classes)
        self.init_weights()

    @staticmethod
    def _pool5_size(size: int) -> int:
        size = (size - 11) // 4 + 1
        for _ in range(3):  # conv2..conv5 keep the size; three poolings shrink it
            size = pooled_size(size, 3, 2)
        if size < 1:
            raise IncompatibleConfigError("AlexNet needs inputs of at least 39x39 pixels (227x227 in the paper); "
                                          "pass a larger img_size.")
        return size

    def init_weights(self) -> None:
        for name, layer in self.features.named_children():
            self.init_layer(layer, name)
        for name in ("fc6", "fc7", "fc8"):
            self.init_layer(getattr(self, name), name)

    @torch.no_grad()
    def init_layer(self, module: nn.Module, name: str) -> None:
        """bvlc_alexnet's filler for the layer called ``name`` (Caffe's or ``features.<caffe name>``), applied
        to every conv / linear in ``module`` -- also to a module that replaces that layer."""
        std, bias = _CAFFE_FILLERS.get(name.rpartition(".")[2], (0.01, 0.0))
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.constant_(m.bias, bias)

    def _init_classifier(self, num_classes: int) -> None:
        super()._init_classifier(num_classes)
        self.init_layer(self.fc8, "fc8")

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.drop6(self.relu6(self.fc6(torch.flatten(x, 1))))
        x = self.drop7(self.relu7(self.fc7(x)))
        return x if pre_logits else self.fc8(x)


default_cfgs = zoo_default_cfgs({
    "alexnet_caffe": base_cfg("features.conv1", "fc8", input_size=(3, 227, 227), crop_pct=227 / 256,
                              fixed_input_size=True, pool_size=(6, 6)),
})


@zoo_model
def alexnet_caffe(pretrained: bool = False, **kwargs) -> AlexNetCaffe:
    """Caffe's AlexNet, ungrouped (62,378,344 parameters with 1000 classes); ``grouped=True`` for Caffe's groups."""
    return build_zoo_model(AlexNetCaffe, "alexnet_caffe", pretrained, **kwargs)


exempt_from_conformance("alexnet_caffe", "default_cfg:unpooled", FC_READS_WHOLE_MAP)
