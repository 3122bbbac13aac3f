"""BigNet: the DCL paper's "BigNet" (Wang et al. 2017, Sec. 4.2.1, ref. [29]), nagadomi's "very deep" CIFAR-10
model from his Kaggle CIFAR-10 entry, on 24x24 crops.

    2 x conv3x3@64  - maxpool 2/2 - dropout 0.25
    2 x conv3x3@128 - maxpool 2/2 - dropout 0.25
    4 x conv3x3@256 - maxpool 2/2 - dropout 0.25          24 -> 12 -> 6 -> 3
    fc1: conv3x3@1024, no padding, on the 3x3 map - ReLU - dropout 0.5     (the first "fully connected" layer)
    fc2: conv1x1@1024 - ReLU - dropout 0.5
    fc:  1024 -> classes

Every convolution is followed by a ReLU. With 10 classes that is 5,745,738 parameters (5,742,272 weights),
the paper's 5.74M; DCL on ``fc1`` (2 branches of 256 filters) brings the weights to 5,086,912, the paper's
5.09M and "11.41% fewer". The original is fully convolutional and its 1x1 output is the prediction; here
the map after ``fc2`` is averaged before the classifier, which is the same network on 24x24 inputs and also
accepts larger ones (a 32x32 image gives a 2x2 map). Weights start from Torch7's defaults, which are
PyTorch's (uniform in +-1/sqrt(fan_in) for weights and biases).
"""
from collections import OrderedDict
from typing import List, Tuple

from torch import Tensor, nn

from ..builder import build_zoo_model
from ..contract import exempt_from_conformance
from ..registry import base_cfg, zoo_default_cfgs, zoo_model
from .lenet import FC_READS_WHOLE_MAP, ConvFcNet

__all__ = ["BigNet", "CIFAR10_MEAN", "CIFAR10_STD"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class BigNet(ConvFcNet):
    head_layers = ("fc1", "act1", "drop_fc1", "fc2", "act2", "drop_fc2")

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: Tuple[int, ...] = (64, 128, 256),
                 depths: Tuple[int, ...] = (2, 2, 4), hidden: int = 1024, drop_rate: float = 0.5,
                 conv_drop_rate: float = 0.25):
        super().__init__()
        self.drop_rate, self.conv_drop_rate = drop_rate, conv_drop_rate
        layers: List[Tuple[str, nn.Module]] = []
        self.feature_info = []
        points = []
        prev = in_chans
        for stage, (width, depth) in enumerate(zip(widths, depths), start=1):
            for i in range(1, depth + 1):
                layers.append((f"conv{stage}_{i}", nn.Conv2d(prev, width, 3, 1, 1)))
                layers.append((f"relu{stage}_{i}", nn.ReLU(inplace=True)))
                prev = width
            layers.append((f"pool{stage}", nn.MaxPool2d(2, 2)))
            layers.append((f"drop{stage}", nn.Dropout(conv_drop_rate)))
            points.append(f"drop{stage}")
            self.feature_info.append(dict(num_chs=width, reduction=2 ** stage, module=f"features.drop{stage}"))
        self.features = nn.Sequential(OrderedDict(layers))
        self.feature_points = tuple(points)
        self.num_features = prev
        self.head_hidden_size = hidden
        self.fc1 = nn.Conv2d(prev, hidden, 3, 1, 0)
        self.act1 = nn.ReLU(inplace=True)
        self.drop_fc1 = nn.Dropout(drop_rate)
        self.fc2 = nn.Conv2d(hidden, hidden, 1)
        self.act2 = nn.ReLU(inplace=True)
        self.drop_fc2 = nn.Dropout(drop_rate)
        self._init_classifier(num_classes)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.drop_fc1(self.act1(self.fc1(x)))
        x = self.drop_fc2(self.act2(self.fc2(x)))
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)


default_cfgs = zoo_default_cfgs({
    "bignet": base_cfg("features.conv1_1", "fc", num_classes=10, input_size=(3, 24, 24), mean=CIFAR10_MEAN,
                       std=CIFAR10_STD, crop_pct=0.75, pool_size=(3, 3)),
})


@zoo_model
def bignet(pretrained: bool = False, **kwargs) -> BigNet:
    """nagadomi's very deep CIFAR-10 network on 24x24 crops (5.74M parameters with 10 classes)."""
    return build_zoo_model(BigNet, "bignet", pretrained, **kwargs)


# fc1 is a 3x3 convolution over the whole 3x3 map (a fully connected layer), pooled only after fc2.
exempt_from_conformance("bignet", "default_cfg:unpooled", FC_READS_WHOLE_MAP)
