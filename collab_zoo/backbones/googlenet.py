"""GoogLeNet (Inception v1; Szegedy et al., CVPR 2015): torchvision's implementation with timm's interface.

``GoogLeNet`` subclasses ``torchvision.models.GoogLeNet``, so its modules and state_dict keys are torchvision's
(``conv1.conv.weight``, ``inception4a.branch1.conv.weight``, ``aux1.fc2.weight``, ``fc.weight``, ...) and
torchvision's released ImageNet weights load into it unchanged. On top it adds what timm expects
(``forward_features``, ``forward_head``, ``reset_classifier``, ``get_classifier``, ``num_features``,
``feature_info``, ``forward_intermediates``), and ``forward`` always returns the main logits: torchvision's
forward returns a named tuple ``(logits, aux2, aux1)`` in training, which would put the main head first.

The registered baseline ``googlenet`` has its two auxiliary classifiers switched off. The auxiliary
classifiers are torchvision's ``InceptionAux``: average pooling to 4x4 (avg-pool 5x5/3 at 224 pixels),
1x1 conv 128 with BatchNorm and ReLU, FC 1024 + ReLU, dropout 0.7, FC K; they sit after inception 4a and 4d.
``cldl_googlenet`` (collab_zoo.methods.cldl) trains them with the CLDL loss.

Two ways torchvision's network differs from the paper's (and Caffe's), kept because its weights were trained
so: every convolution is followed by BatchNorm (the auxiliary classifiers' 1x1 conv too), and the "5x5" branch
of each inception block is a 3x3 convolution (a long-standing torchvision quirk, pytorch/vision#906).

torchvision's ImageNet weights expect ``transform_input=True`` (inputs normalised with the ImageNet mean and
std are re-normalised the way the ported weights were trained); models trained from scratch leave it off.
"""
from typing import Dict, List, Optional, Tuple, Union

import torch
import torchvision
from timm.models._features import feature_take_indices
from torch import Tensor, nn
from torchvision.models.googlenet import BasicConv2d

from ..builder import build_zoo_model
from ..errors import IncompatibleConfigError
from ..registry import base_cfg, zoo_default_cfgs, zoo_model
from .common import TrainingHooks, check_pooling_fits, checkpoint_layers, global_pool_layer, run_segments

__all__ = ["GoogLeNet", "TRUNK", "AUX_TAPS"]

# Execution order of the main path's modules.
TRUNK = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
         "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
         "inception5a", "inception5b")
# Where each auxiliary classifier reads the trunk.
AUX_TAPS = (("aux1", "inception4a"), ("aux2", "inception4d"))


def _init_like_torchvision(module: nn.Module) -> None:
    # torchvision's own scheme (truncated normal, std 0.01), for layers replaced after construction.
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class GoogLeNet(TrainingHooks, torchvision.models.GoogLeNet):
    """torchvision's GoogLeNet with timm's interface; ``aux_logits`` keeps the two auxiliary classifiers.

    ``set_grad_checkpointing`` recomputes each trunk module (convolution, pooling, inception block) in the
    backward pass. Layer decay: conv1-3 are the stem, each inception block a block (``coarse``: inception 3,
    4 and 5), an auxiliary classifier shares the group of the block it reads, ``fc`` is the head.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = False,
                 transform_input: bool = False, drop_rate: float = 0.2, aux_drop_rate: float = 0.7,
                 global_pool: str = "avg"):
        if transform_input and in_chans != 3:
            raise IncompatibleConfigError(
                f"transform_input re-normalises three RGB channels; it cannot be used with in_chans={in_chans}.")
        super().__init__(num_classes=max(num_classes, 1), aux_logits=aux_logits, transform_input=transform_input,
                         init_weights=True, dropout=drop_rate, dropout_aux=aux_drop_rate)
        if in_chans != 3:
            self.conv1 = BasicConv2d(in_chans, 64, kernel_size=7, stride=2, padding=3)
            _init_like_torchvision(self.conv1)
        self.num_features = self.head_hidden_size = self.fc.in_features
        self.num_classes = num_classes
        self.grad_checkpointing = False
        self.avgpool = global_pool_layer(global_pool, num_classes)
        if num_classes == 0:
            self._reset_linear_classifiers(0)
        self.feature_info = [
            dict(num_chs=64, reduction=2, module="conv1"),
            dict(num_chs=192, reduction=4, module="conv3"),
            dict(num_chs=480, reduction=8, module="inception3b"),
            dict(num_chs=832, reduction=16, module="inception4e"),
            dict(num_chs=1024, reduction=32, module="inception5b"),
        ]

    def _reset_linear_classifiers(self, num_classes: int) -> None:
        def fresh(in_features: int) -> nn.Module:
            layer = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()
            _init_like_torchvision(layer)
            return layer

        self.fc = fresh(self.num_features)
        for name, _ in AUX_TAPS:
            aux = getattr(self, name)
            if aux is not None:
                aux.fc2 = fresh(aux.fc1.out_features)

    # -- timm's interface ---------------------------------------------------------------------------------
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new class count for the main classifier and, where present, both auxiliary ones."""
        if global_pool is not None:
            self.avgpool = global_pool_layer(global_pool, num_classes)
        else:
            check_pooling_fits(self.avgpool.pool_type, num_classes)
        self.num_classes = num_classes
        self._reset_linear_classifiers(num_classes)

    def classifier_names(self) -> Tuple[str, ...]:
        aux = tuple(f"{name}.fc2" for name, _ in AUX_TAPS if getattr(self, name) is not None)
        return aux + ("fc",)

    def trunk(self) -> List[Tuple[str, nn.Module]]:
        """(name, module) of the main path in execution order, input transform excluded."""
        return [(name, getattr(self, name)) for name in TRUNK]

    def group_matcher(self, coarse: bool = False) -> Dict[str, object]:
        blocks = [name for name in TRUNK if name.startswith("inception")]
        group_of = {name: (int(name[len("inception")]) if coarse else i) for i, name in enumerate(blocks)}
        group_of.update({aux: group_of[tap] for aux, tap in AUX_TAPS})
        return dict(stem=r"^conv[123]\.", blocks=[(rf"^{name}\.", (group,)) for name, group in group_of.items()])

    def forward_features(self, x: Tensor) -> Tensor:
        x = self._transform_input(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return run_segments([[module] for _, module in self.trunk()], x)
        # TRUNK, spelled out: TorchScript cannot look modules up by name.
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4c(self.inception4b(self.inception4a(x)))
        x = self.maxpool4(self.inception4e(self.inception4d(x)))
        return self.inception5b(self.inception5a(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.dropout(self.avgpool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: Optional[Union[int, List[int]]] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Outputs of conv1, conv3, inception 3b, 4e and 5b (feature_info order)."""
        if output_fmt != "NCHW":
            raise ValueError("GoogLeNet intermediates are NCHW only.")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        tap_names = [info["module"] for info in self.feature_info]
        intermediates = []
        x = self._transform_input(x)
        for name, module in self.trunk():
            x = checkpoint_layers([module], x) if self.grad_checkpointing else module(x)
            if name in tap_names:
                position = tap_names.index(name)
                if position in take:
                    intermediates.append(x)
                if stop_early and position == max_index:
                    break
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Trunk modules after the deepest level asked for become identities, and the classifiers go (their
        inputs are gone) -- what features_only keeps."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        last = TRUNK.index(str(self.feature_info[max_index]["module"]))
        for name in TRUNK[last + 1:]:
            setattr(self, name, nn.Identity())
        if prune_head:
            for name, _ in AUX_TAPS:
                setattr(self, name, None)
            self.reset_classifier(0, "")
        return take

    def remap_pretrained_keys(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """torchvision's released file carries both auxiliary classifiers; a model without them drops those
        keys, as torchvision does when it builds its own aux-free GoogLeNet from that file."""
        absent = [name for name, _ in AUX_TAPS if getattr(self, name) is None]
        return {k: v for k, v in state_dict.items() if k.split(".", 1)[0] not in absent}


default_cfgs = zoo_default_cfgs({"googlenet": base_cfg("conv1.conv", "fc", pool_size=(7, 7))})


@zoo_model
def googlenet(pretrained: bool = False, **kwargs) -> GoogLeNet:
    """GoogLeNet (torchvision's), auxiliary classifiers off: the CLDL paper's ImageNet baseline."""
    if kwargs.get("aux_logits"):
        raise IncompatibleConfigError(
            "The 'googlenet' baseline has no auxiliary classifiers. GoogLeNet trained with its auxiliary "
            "classifiers is create_model('cldl_googlenet', loss='ds') (softmax losses weighted 0.3, 0.3, 1), "
            "or with the CLDL loss create_model('cldl_googlenet').")
    kwargs.pop("aux_logits", None)
    return build_zoo_model(GoogLeNet, "googlenet", pretrained, **kwargs)
