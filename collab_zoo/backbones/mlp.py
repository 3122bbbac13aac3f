"""The MNIST multi-layer perceptron of LeCun, Bottou, Bengio and Haffner (1998), registered as ``mlp_mnist``.

The complementary-networks paper's Table 1 ensembles an "MLP [19]" on MNIST, [19] being LeCun et al. 1998,
and reports 4.73 % test error for one network (T = 1). That is the 1998 paper's fully connected net with
two layers of weights and 300 hidden units, 4.7 % (its Sec. III-C; the 1000-unit net gets 4.5 %, the
300-100 three-layer net 3.05 %). So the default layout is that net:

    28 x 28 pixels (784) -> 300 hidden units -> 10 outputs,   238,510 parameters,

with the squashing function and initialisation of the 1998 paper's Appendix A: ``f(a) = 1.7159 tanh(2a / 3)``,
weights uniform in ``+-2.4 / fan_in`` (biases zero). The paper trained it with a mean-squared error
against target codes; here it is an ordinary logit classifier, trained with the method's loss.

Other layouts: ``hidden=(300, 100)`` is the 1998 three-layer net, and ``hidden=50, act="relu"`` the MLP in
the complementary paper's released code (784-50-10, ReLU), a smaller net than the cited one whose error
the paper's T = 1 figure repeats.
``img_size`` may be a pair (H, W) for non-square inputs.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..builder import build_zoo_model
from ..errors import IncompatibleConfigError
from ..registry import mnist_cfg, zoo_default_cfgs, zoo_model

__all__ = ["MLP", "ScaledTanh"]

ACTIVATIONS = ("tanh", "relu")


class ScaledTanh(nn.Module):
    """LeCun's sigmoid: ``1.7159 tanh(2a / 3)``, chosen so that f(+-1) = +-1 and the gain near 0 is about 1."""

    def forward(self, x: Tensor) -> Tensor:
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


def _pair(size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise IncompatibleConfigError(f"img_size must be an int or (height, width), got {size}.")
    return size


class MLP(nn.Module):
    """Fully connected layers on the flattened image, then a linear classifier ``fc``."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: Union[int, Sequence[int]] = 28,
                 hidden: Union[int, Sequence[int]] = 300, act: str = "tanh", drop_rate: float = 0.0,
                 global_pool: Optional[str] = None):
        super().__init__()
        if act not in ACTIVATIONS:
            raise IncompatibleConfigError(f"act must be one of {ACTIVATIONS}, got {act!r}.")
        if global_pool not in (None, "", "avg"):
            raise IncompatibleConfigError(f"an MLP has no pooling; got global_pool={global_pool!r}.")
        widths = (hidden,) if isinstance(hidden, int) else tuple(int(h) for h in hidden)
        if not widths or any(w <= 0 for w in widths):
            raise IncompatibleConfigError(f"hidden must give one or more positive layer widths, got {hidden!r}.")
        height, width = _pair(img_size)
        self.in_chans, self.img_size, self.hidden, self.act = in_chans, (height, width), widths, act
        self.in_features = in_chans * height * width
        layers = []
        fan_in = self.in_features
        for w in widths:
            layers += [nn.Linear(fan_in, w), ScaledTanh() if act == "tanh" else nn.ReLU(inplace=True)]
            fan_in = w
        self.hidden_layers = nn.Sequential(*layers)
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = fan_in
        self.drop_rate = drop_rate
        self.head_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(fan_in, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=fan_in, reduction=1, module="hidden_layers")]
        self.init_weights()

    def init_weights(self) -> None:
        """LeCun et al. 1998, Appendix A: weights uniform in +-2.4 / fan_in."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                bound = 2.4 / m.in_features
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    # -- timm's interface ---------------------------------------------------------------------------------
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool not in (None, "", "avg"):
            raise IncompatibleConfigError(f"an MLP has no pooling; got global_pool={global_pool!r}.")
        self.num_classes = num_classes
        if num_classes > 0:
            self.fc = nn.Linear(self.num_features, num_classes)
            bound = 2.4 / self.num_features
            nn.init.uniform_(self.fc.weight, -bound, bound)
            nn.init.zeros_(self.fc.bias)
        else:
            self.fc = nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise IncompatibleConfigError(
                f"this MLP takes {self.in_features} values per image (in_chans={self.in_chans}, "
                f"img_size={self.img_size}), got {x.shape[1]}; build it with the in_chans and img_size of your data.")
        return self.hidden_layers(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = zoo_default_cfgs({
    "mlp_mnist": mnist_cfg("hidden_layers.0", "fc"),
})


@zoo_model
def mlp_mnist(pretrained: bool = False, **kwargs) -> MLP:
    """LeCun et al. 1998's 784-300-10 MNIST net (4.7 % error there); the complementary paper's "MLP [19]"."""
    return build_zoo_model(MLP, "mlp_mnist", pretrained, **kwargs)
