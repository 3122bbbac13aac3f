"""Deeply-supervised Knowledge Synergy (Sun, Yao, Zhou, Zhao; CVPR 2019; arXiv:1906.00675).

Auxiliary classifiers sit on intermediate stages of a backbone. Training minimises cross-entropy on every
head plus a *synergy* term in which each head learns to match the (detached) probabilities of the others:

    L = sum_m alpha_m CE(z_m, y) + sum_{(m, n) in B} beta_mn H(p_m, p_n),   H(p, q) = -sum_k p_k log q_k

with B the pair set: ``bidirectional`` (all ordered pairs; the paper's default), ``top_down`` (deeper heads
teach shallower ones), ``bottom_up`` (the reverse) or ``none`` (plain deep supervision, the paper's "DS").
The auxiliary heads are dropped at inference: ``model.eval()(x)`` runs only the backbone, and
``model.export()`` hands back the plain timm model.

**Auxiliary heads** follow the paper's rule (Sec. 3.2): built of the backbone's own block type, with as many
down-samplings between input and head as the main path, then global pooling and one FC. The supplement with the
per-network tables is not available; ``aux=`` chooses the head kind:

* ``"blocks"`` (default): the released design. A head copies the stages after its attach point (fresh weights).
  Where the authors' code defines the layout it is used as is (``RELEASED_LAYOUTS``; blocks per copied stage,
  head after stage 2 / head after stage 3): DHM's ResNet-18 [1, 2] / [2], ResNet-50 [3, 2] / [3], ResNet-152
  [18, 2] / [3], CIFAR ResNet-32 [5, 3] / [5], ResNet-110 [9, 9] / [18]; the DKS code's WRN-d-k [n, n // 2] / [n];
  the head nearest the output at double width. Elsewhere the general rule (``default_head_layout``): the head
  nearest the output copies the last stage at full depth and double width, every other copied stage is at half
  depth (rounded up) and the backbone's width; it gives DHM's ResNet-50/152/110 layouts exactly.
* ``"narrow"``: the same blocks at half the width (Table 3's "narrow blocks"; our reading: every width halved).
* ``"shallow"``: one block per copied stage at the same width (Table 3's "shallow blocks"; our reading).
* ``"ap_2fc"``: global average pooling, FC + ReLU, FC (Table 3's AP+2FC); hidden width = the backbone's final
  width (our reading, the supplement gives none).
* ``"ap_conv_2fc"``: average pooling by the down-sampling the main path still does after the attach point (so
  the equal-down-sampling rule holds), a 3x3 conv + BN + ReLU to the final width, global pooling, two FCs
  (Table 3's AP+1Conv+2FC; our reading of its order and widths).

Head parameters (training minus exported parameters; blocks / ap_2fc / ap_conv_2fc / narrow / shallow), pinned
by tests/test_dks.py: ResNet-18 (1000 classes) 41,794,000 / 1,223,632 / 3,322,832 / 11,575,504 / 18,194,896;
ResNet-50 74,965,968 / 7,247,824 / 40,810,448 / 21,771,728 / 32,592,848; ResNet-152 91,723,728 / 7,247,824 /
40,810,448 / 25,972,688 / 32,592,848; with 100 classes: ResNet-20 957,128 / 16,200 / 49,224 / 255,176 / 273,736;
ResNet-32 1,677,640 / 16,200 / 49,224 / 435,720 / 273,736; ResNet-110 6,036,296 / 16,200 / 49,224 / 1,527,560 /
273,736; WRN-28-4 20,471,368 / 101,064 / 626,376 / 5,324,872 / 4,242,504; WRN-28-10 127,609,480 (20,145,060 +
107,464,420, the released code's) / 436,680 / 3,716,040 / 33,110,920 / 26,211,720; DenseNet-40-12 1,703,720 /
298,568 / 2,364,744 / 845,408 / 304,088; DenseNet-100-12 11,494,120 / 1,619,048 / 15,415,464 / 5,501,608 /
1,333,688; MobileNet 6,791,112 / 993,480 / 9,386,184 / 2,089,160 / 2,032,584.

**Any model with stages** (``create_model("dks", backbone=...)``): timm ResNets as above; any other timm or zoo
model with ``feature_info`` (ConvNeXt, EfficientNet, RegNet, MobileNetV3, ViT, the DCL networks, ...) gets heads
that are a fresh build of the backbone with everything up to the attach point removed: exactly its own later
blocks (so its down-samplings), closing layers and classifier head. Attach points are feature levels; by default
the last two levels that end before a down-sampling (the paper's CIFAR rule), or a third and two thirds of the
depth on a network that never down-samples (ViT). The training forward reads them with forward hooks that are
removed when it returns, so the backbone, and ``export()``, stay the plain network. Such heads come only in the
``"blocks"`` kind (other kinds need stages that can be rebuilt at another depth or width). A backbone with
several heads or rounds (CLDL, complementary) or with stochastic DCL branches is refused at construction.

timm's training hooks: ``group_matcher`` is the backbone's (stem, stages), the auxiliary heads grouped with the
classifier, so layer-wise decay never gives them a larger learning rate than the main classifier;
``set_grad_checkpointing`` checkpoints the stages and the heads of a training forward.
"""
import copy
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from timm.models import checkpoint, checkpoint_seq
from torch import Tensor, nn

from ..backbones.staged import StagedNet
from ..builder import build_zoo_model
from ..convert import (add_hub_arguments, as_state_dict, check_state_dict_keys, finish_hub_folder,
                       read_torch_checkpoint, register_converter, strip_prefix)
from ..contract import (BackboneWrapper, Heads, LossParts, classifier_module_name, forward_heads_of, head_names_of,
                        inherit_conformance_exemptions, is_tracing, model_display_name, weighted_mean,
                        check_single_objective)
from ..errors import IncompatibleConfigError
from ..registry import base_cfg, cifar_cfg, zoo_default_cfgs, zoo_model

__all__ = ["DKSModel", "AuxHead", "PooledHead", "DonorHead", "dks_loss", "pair_mask", "PAIR_SETS", "AUX_KINDS",
           "RELEASED_LAYOUTS", "default_head_layout", "convert_dks"]

PAIR_SETS = ("bidirectional", "top_down", "bottom_up", "none")
DIVERGENCES = ("cross_entropy", "kl")


# --- the loss ----------------------------------------------------------------------------------------------------

def pair_mask(num_heads: int, pairs: str, device=None) -> Tensor:
    """[teacher, student] mask of the pair set B; heads ordered shallow to deep, main last."""
    if pairs not in PAIR_SETS:
        raise IncompatibleConfigError(f"pairs must be one of {PAIR_SETS}, got {pairs!r}.")
    idx = torch.arange(num_heads, device=device)
    teacher, student = idx[:, None], idx[None, :]
    if pairs == "bidirectional":
        return teacher != student
    if pairs == "top_down":
        return teacher > student
    if pairs == "bottom_up":
        return teacher < student
    return torch.zeros(num_heads, num_heads, dtype=torch.bool, device=device)


def dks_loss(heads: Sequence[Tensor], target: Tensor, pairs: str = "bidirectional", temperature: float = 1.0,
             alpha: Optional[Sequence[float]] = None, beta: Optional[Union[float, Tensor]] = None,
             divergence: str = "cross_entropy", head_names: Optional[Sequence[str]] = None,
             sample_weight: Optional[Tensor] = None) -> Tuple[Tensor, LossParts]:
    """The DKS objective over all heads at once (one batched contraction, no loop over pairs).

    ``alpha``: per-head CE weights (default 1). ``beta``: a scalar or an [M, M] teacher-by-student matrix
    (default 1). ``divergence="kl"`` is the released code's ``KL(p_m || p_n)`` with its 1e-8 smoothing: the
    same gradient as the paper's cross-entropy, a value lower by the teachers' entropy. No T^2 factor, as in
    the released code. Computed in float32 so that bf16 or extreme logits stay finite.

    ``sample_weight`` ([B], optional): both terms are per-sample (each head's cross-entropy, and each sample's
    sum over pairs of its pairwise divergence), so each is reduced with ``weighted_mean``; DKS has no term that is
    not per-sample. A sample of weight 0 drops out of every term (its teachers' probabilities included, which
    only ever act on that same sample).
    """
    if divergence not in DIVERGENCES:
        raise IncompatibleConfigError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}.")
    if temperature <= 0:
        raise IncompatibleConfigError(f"temperature must be positive, got {temperature}.")
    logits = torch.stack([h.float() for h in heads])                      # [M, B, K]
    num_heads = logits.shape[0]
    names = list(head_names) if head_names is not None else [f"head{i}" for i in range(num_heads)]
    alpha_t = logits.new_tensor(alpha if alpha is not None else [1.0] * num_heads)
    if alpha_t.numel() != num_heads:
        raise IncompatibleConfigError(f"alpha needs one weight per head ({num_heads}), got {alpha_t.numel()}.")

    if sample_weight is not None and tuple(sample_weight.shape) != (logits.shape[1],):
        raise IncompatibleConfigError(
            f"sample_weight must hold one weight per sample, shape [{logits.shape[1]}]; got "
            f"{tuple(sample_weight.shape)}.")
    ce = torch.stack([weighted_mean(F.cross_entropy(z, target, reduction="none"), sample_weight)
                      for z in logits])                                   # [M]
    total = (alpha_t * ce).sum()
    parts: LossParts = {f"ce_{n}": c.detach() for n, c in zip(names, ce)}

    mask = pair_mask(num_heads, pairs, device=logits.device)
    if mask.any():
        log_p = F.log_softmax(logits / temperature, dim=-1)              # [M, B, K]
        teacher = log_p.detach().exp()
        if divergence == "cross_entropy":
            # H(p_m, p_n) for every (teacher m, student n) pair and sample.
            pairwise = -torch.einsum("mbk,nbk->mnb", teacher, log_p)
        else:
            smoothed_t = teacher + 1e-8
            smoothed_s = (log_p.exp() + 1e-8).log()
            neg_entropy = (smoothed_t * smoothed_t.log()).sum(-1)                   # [M, B]
            cross = torch.einsum("mbk,nbk->mnb", smoothed_t, smoothed_s)
            pairwise = neg_entropy[:, None, :] - cross
        if beta is None:
            weights = mask.float()
        else:
            beta_t = torch.as_tensor(beta, dtype=logits.dtype, device=logits.device)
            weights = mask.float() * (beta_t if beta_t.dim() else beta_t.expand(num_heads, num_heads))
        per_sample = torch.einsum("mn,mnb->b", weights, pairwise)                  # [B]
        synergy = weighted_mean(per_sample, sample_weight)
        total = total + synergy
        parts["synergy"] = synergy.detach()
    parts["total"] = total.detach()
    return total, parts


# --- auxiliary heads ---------------------------------------------------------------------------------------------

AUX_KINDS = ("blocks", "ap_2fc", "ap_conv_2fc", "narrow", "shallow")

# Per-network head layouts the authors' released code defines (blocks per copied stage, width multipliers), for the
# default two heads. WRN: the DKS code (head 1: n blocks at 32k then n // 2 at 64k; head 2: n blocks at 128k).
# ResNets: the DHM code the DKS supplement's design became (see the module docstring).
RELEASED_LAYOUTS: Dict[str, Tuple[List[List[int]], List[List[float]]]] = {
    "resnet18": ([[1, 2], [2]], [[1.0, 1.0], [2.0]]),
    "resnet50": ([[3, 2], [3]], [[1.0, 1.0], [2.0]]),
    "resnet152": ([[18, 2], [3]], [[1.0, 1.0], [2.0]]),
    "cifar_resnet32": ([[5, 3], [5]], [[1.0, 1.0], [2.0]]),
    "cifar_resnet110": ([[9, 9], [18]], [[1.0, 1.0], [2.0]]),
    "wrn28_4": ([[4, 2], [4]], [[1.0, 1.0], [2.0]]),
    "wrn28_10": ([[4, 2], [4]], [[1.0, 1.0], [2.0]]),
}


class AuxHead(nn.Module):
    """Stages copied from the backbone, its closing norm, global pooling and one FC."""

    def __init__(self, stages: nn.Module, final_norm: nn.Module, num_features: int, num_classes: int):
        super().__init__()
        self.stages = stages
        self.final_norm = final_norm
        self.num_features = num_features
        self.global_pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)
        self.fc = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def classifier_name(self) -> str:
        return "fc"

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.global_pool(self.final_norm(self.stages(x))))


class PooledHead(nn.Module):
    """Table 3's simpler heads. ``ap_2fc``: global average pooling, FC + ReLU, FC. ``ap_conv_2fc``: average
    pooling down to the main path's resolution (kernel = stride = the down-sampling the head would otherwise miss,
    so the equal-down-sampling rule still holds), one 3x3 conv + BN + ReLU, then the same pooling and two FCs.
    The supplement gives no widths: the conv and the hidden FC take the backbone's final width (``hidden``)."""

    def __init__(self, in_channels: int, hidden: int, num_classes: int, pool_stride: Optional[int] = None):
        super().__init__()
        self.hidden = hidden
        if pool_stride is None:
            self.pre = nn.Identity()
            width = in_channels
        else:
            self.pre = nn.Sequential(nn.AvgPool2d(pool_stride, pool_stride),
                                     nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
                                     nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
            width = hidden
        self.global_pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    def classifier_name(self) -> str:
        return "fc"

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.hidden, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.act(self.fc1(self.global_pool(self.pre(x)))))


class DonorHead(nn.Module):
    """A fresh copy of the backbone with everything up to the attach point removed: the backbone's own later
    blocks, its closing layers and its own classifier head (any model with ``feature_info``)."""

    def __init__(self, donor: nn.Module):
        super().__init__()
        self.donor = donor

    def classifier_name(self) -> str:
        name = classifier_module_name(self.donor)
        if name is None:
            raise IncompatibleConfigError(f"{type(self.donor).__name__} does not name its classifier.")
        return f"donor.{name}"

    def reset_classifier(self, num_classes: int) -> None:
        self.donor.reset_classifier(num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.donor.forward_head(self.donor.forward_features(x))


def default_head_layout(stage_blocks: Sequence[int],
                        attach: Sequence[int]) -> Tuple[List[List[int]], List[List[float]]]:
    """Blocks and width multipliers of the stages each head copies, for networks the released code does not
    define: the head nearest the output copies its later stages, the intermediate ones at half depth (rounded
    up) and the last at full depth and double width; every other head copies its later stages at half depth
    (rounded up) and the backbone's width. (This reproduces DHM's ResNet-50, ResNet-152 and ResNet-110 layouts;
    its ResNet-18 and ResNet-32 ones, which differ, are in RELEASED_LAYOUTS.)"""
    last = len(stage_blocks) - 1
    nearest = max(attach)
    blocks, widths = [], []
    for a in attach:
        later = list(range(a + 1, last + 1))
        full_last = a == nearest
        blocks.append([stage_blocks[i] if (full_last and i == last) else math.ceil(stage_blocks[i] / 2) for i in later])
        widths.append([2.0 if (full_last and i == last) else 1.0 for i in later])
    return blocks, widths


class _StagedView:
    """Stages of one of the zoo's StagedNet backbones."""

    generic = False

    def __init__(self, backbone: StagedNet):
        self.backbone = backbone
        self.stage_names = [f"stage{i + 1}" for i in range(len(backbone.stages))]

    def stem(self, x: Tensor) -> Tensor:
        return self.backbone.stem(x)

    def stages(self) -> List[nn.Module]:
        return list(self.backbone.stages)

    def final(self, x: Tensor) -> Tensor:
        return self.backbone.final_norm(x)

    def stage_blocks(self) -> List[int]:
        return self.backbone.stage_blocks()

    def stage_channels(self) -> List[int]:
        return [info["num_chs"] for info in self.backbone.feature_info]

    def reduction_after(self, stage: int) -> int:
        """How much more the main path down-samples after stage ``stage``."""
        info = self.backbone.feature_info
        return int(info[-1]["reduction"]) // int(info[stage + 1]["reduction"])

    def build_head(self, after: int, blocks: Sequence[int], widths: Sequence[float], num_classes: int) -> AuxHead:
        channels = self.stage_channels()[after + 1]
        built = []
        for index, (b, w) in enumerate(zip(blocks, widths), start=after + 1):
            stage, channels = self.backbone.make_stage(index, channels, b, w)
            built.append(stage)
        final = self.backbone.make_final_norm(channels) if built else nn.Identity()
        return AuxHead(nn.Sequential(*built), final, channels, num_classes)


class _TimmResNetView:
    """Stages of a timm ResNet-family model (resnet*, resnext*, seresnet*, resnet*d, ...).

    A head's stages are taken from a *donor*: the same timm architecture built with other block counts
    (``layers``) and widths (``channels``), so block type, attention, down-sampling style and the rest of
    its configuration match the backbone exactly.
    """

    generic = False
    stage_names = ["layer1", "layer2", "layer3", "layer4"]

    def __init__(self, backbone: nn.Module, arch: str, donor_kwargs: Dict[str, Any]):
        self.backbone = backbone
        self.arch = arch
        self.donor_kwargs = donor_kwargs

    def stem(self, x: Tensor) -> Tensor:
        b = self.backbone
        return b.maxpool(b.act1(b.bn1(b.conv1(x))))

    def stages(self) -> List[nn.Module]:
        return [getattr(self.backbone, n) for n in self.stage_names]

    def final(self, x: Tensor) -> Tensor:
        return x

    def stage_blocks(self) -> List[int]:
        return [len(s) for s in self.stages()]

    def stage_channels(self) -> List[int]:
        return [info["num_chs"] for info in self.backbone.feature_info]

    def reduction_after(self, stage: int) -> int:
        info = self.backbone.feature_info
        return int(info[-1]["reduction"]) // int(info[stage + 1]["reduction"])

    def build_head(self, after: int, blocks: Sequence[int], widths: Sequence[float], num_classes: int) -> AuxHead:
        expansion = type(self.stages()[-1][0]).expansion
        planes = [self.stage_channels()[i + 1] // expansion for i in range(4)]
        layers = self.stage_blocks()
        for offset, (b, w) in enumerate(zip(blocks, widths)):
            i = after + 1 + offset
            layers[i], planes[i] = b, int(round(planes[i] * w))
        donor = timm.create_model(self.arch, pretrained=False, num_classes=0, layers=tuple(layers),
                                  channels=tuple(planes), **self.donor_kwargs)
        copied = [getattr(donor, self.stage_names[i]) for i in range(after + 1, 4)]
        return AuxHead(nn.Sequential(*copied), nn.Identity(), planes[3] * expansion, num_classes)


def _drop_through(module: nn.Module, path: Sequence[str]) -> None:
    """Replace, in registration order, every submodule up to and including ``path`` by an identity: what the
    forward runs before the attach point. (timm models and the zoo's networks register their layers in the order
    their forward runs them.)"""
    for name, child in list(module.named_children()):
        if name == path[0]:
            if len(path) == 1:
                setattr(module, name, nn.Identity())
            else:
                _drop_through(child, path[1:])
            return
        setattr(module, name, nn.Identity())
    raise IncompatibleConfigError(f"{type(module).__name__} has no submodule {path[0]!r} (named by feature_info).")


def _keep_output(store: Dict[int, Tensor], level: int):
    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        store[level] = output
    return hook


class _FeatureLevelView:
    """Any model with timm's ``feature_info`` (ConvNeXt, EfficientNet, RegNet, MobileNetV3, ViT, ..., and the
    zoo's own networks, DCL ones included). Attach points are feature levels (``feature_info`` indices or module
    names); a head is a ``DonorHead``: a freshly built copy of the backbone from the level's next block on, so it
    has exactly the main path's later blocks (and therefore its down-samplings) and its own classifier head.
    The training forward reads the attach points with forward hooks, removed again when it returns, so the
    backbone (and ``export()``) is the plain network."""

    generic = True

    def __init__(self, backbone: nn.Module, arch: Optional[str], donor_kwargs: Dict[str, Any]):
        info = getattr(backbone, "feature_info", None)
        if not info:
            raise IncompatibleConfigError(
                f"DKS needs a backbone with stages: one with timm's feature_info (any model that supports "
                f"features_only), a zoo StagedNet or a timm ResNet; {type(backbone).__name__} has no feature_info.")
        info = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        for method in ("forward_features", "forward_head", "reset_classifier"):
            if not hasattr(backbone, method):
                raise IncompatibleConfigError(
                    f"DKS builds its heads from the backbone's later blocks and its own head: "
                    f"{type(backbone).__name__} lacks timm's {method}().")
        self.backbone, self.arch, self.donor_kwargs = backbone, arch, donor_kwargs
        self.stage_names = [str(i["module"]) for i in info]
        self.reductions = [int(i.get("reduction", 1)) for i in info]
        for name in self.stage_names:
            backbone.get_submodule(name)  # a feature_info that names a missing module fails here, not in training

    def stages(self) -> List[str]:
        return self.stage_names

    def default_attach(self) -> Tuple[int, ...]:
        """The paper's rule (a head after each stage that ends before a down-sampling), the last two such levels;
        a backbone that never down-samples (ViT) gets heads at a third and two thirds of its depth."""
        ends = [i for i in range(len(self.reductions) - 1) if self.reductions[i + 1] > self.reductions[i]]
        if len(ends) >= 2:
            return tuple(ends[-2:])
        count = len(self.stage_names)
        picks = sorted({count // 3, (2 * count) // 3} - {count - 1})
        if not picks:
            raise IncompatibleConfigError(
                f"{type(self.backbone).__name__} has {count} feature level(s): no room for an auxiliary head.")
        return tuple(picks)

    def _fresh_copy(self) -> nn.Module:
        if self.arch is not None:
            return timm.create_model(self.arch, pretrained=False, num_classes=self.backbone.num_classes,
                                     **self.donor_kwargs)
        donor = copy.deepcopy(self.backbone)
        for module in donor.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return donor

    def build_donor_head(self, level: int) -> DonorHead:
        donor = self._fresh_copy()
        _drop_through(donor, self.stage_names[level].split("."))
        if hasattr(donor, "_pos_embed"):
            # A ViT's tokens at the attach point already carry the class token and position embedding.
            for name in ("cls_token", "reg_token", "pos_embed"):
                if getattr(donor, name, None) is not None:
                    setattr(donor, name, None)
        return DonorHead(donor)

    def forward_heads(self, x: Tensor, attach: Sequence[int], heads: nn.ModuleList) -> Heads:
        taps: Dict[int, Tensor] = {}
        handles = [self.backbone.get_submodule(self.stage_names[level]).register_forward_hook(_keep_output(taps, level))
                   for level in attach]
        try:
            main = forward_heads_of(self.backbone, x)[-1]
        finally:
            for handle in handles:
                handle.remove()
        return (*[head(taps[level]) for level, head in zip(attach, heads)], main)


def _check_backbone_composes(backbone: nn.Module) -> None:
    """DKS adds heads to a network with one head trained in one round, whose training step runs every parameter."""
    check_single_objective(backbone, "DKS", "dks_resnet20")
    if getattr(backbone, "leaves_parameters_unused", False):
        raise IncompatibleConfigError(
            f"{model_display_name(backbone)} leaves some parameters unused in a training step (stochastic DCL "
            "branches); DKS heads copy the backbone's later blocks, stochastic layers included, and each copy would "
            "draw its own branches. Build it with mode='deterministic' to put DKS on it.")


def _view_of(backbone: nn.Module, arch: Optional[str], donor_kwargs: Dict[str, Any]):
    if isinstance(backbone, StagedNet):
        return _StagedView(backbone)
    if isinstance(backbone, timm.models.ResNet):
        if arch is None:
            raise IncompatibleConfigError("DKS on a timm ResNet needs its timm architecture name (arch=...).")
        return _TimmResNetView(backbone, arch, donor_kwargs)
    return _FeatureLevelView(backbone, arch, donor_kwargs)


# --- the model ---------------------------------------------------------------------------------------------------

class DKSModel(BackboneWrapper):
    """A backbone with DKS auxiliary heads. ``backbone`` keeps its own key names under ``backbone.``.

    ``aux`` (see the module docstring): ``"blocks"`` (default), ``"narrow"``, ``"shallow"``, ``"ap_2fc"``,
    ``"ap_conv_2fc"``. ``attach``: stage indices or names (StagedNet, timm ResNet), feature levels
    (``feature_info`` indices or module names) on any other backbone; None = the network's default.
    """

    training_only_prefixes = ("aux_heads",)

    def __init__(self, backbone: nn.Module, arch: Optional[str] = None,
                 attach: Optional[Sequence[Union[int, str]]] = None,
                 head_blocks: Optional[Sequence[Sequence[int]]] = None,
                 head_widths: Optional[Sequence[Sequence[float]]] = None, aux: str = "blocks",
                 pairs: str = "bidirectional", temperature: float = 1.0, alpha: Optional[Sequence[float]] = None,
                 beta: Optional[float] = None, divergence: str = "cross_entropy",
                 donor_kwargs: Optional[Dict[str, Any]] = None):
        super().__init__()
        if aux == "simple":
            raise IncompatibleConfigError(
                f"aux='simple' (pool + one FC) is gone: it was none of the paper's Table 3 heads. Choose one of "
                f"{AUX_KINDS}: 'blocks' (the designed heads, default), 'ap_2fc', 'ap_conv_2fc', 'narrow', 'shallow'.")
        if aux not in AUX_KINDS:
            raise IncompatibleConfigError(f"aux must be one of {AUX_KINDS}, got {aux!r}.")
        pair_mask(2, pairs)  # validates the name early
        if divergence not in DIVERGENCES:
            raise IncompatibleConfigError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}.")
        _check_backbone_composes(backbone)
        self.backbone = backbone
        self.arch = arch
        self.pairs, self.temperature, self.divergence, self.aux = pairs, float(temperature), divergence, aux
        self.beta = beta
        self._view = _view_of(backbone, arch, dict(donor_kwargs or {}))
        num_stages = len(self._view.stages())
        if attach is None:
            attach = self._view.default_attach() if self._view.generic else (num_stages - 3, num_stages - 2)
        self.attach = tuple(self._stage_index(a, num_stages) for a in attach)
        if list(self.attach) != sorted(set(self.attach)) or not self.attach:
            raise IncompatibleConfigError(f"attach points must be distinct and in order, got {list(attach)}.")
        if alpha is not None and len(alpha) != len(self.attach) + 1:
            raise IncompatibleConfigError(f"alpha needs {len(self.attach) + 1} weights (aux heads + main).")
        self.alpha = tuple(alpha) if alpha is not None else None
        num_classes = backbone.num_classes
        self.head_blocks, self.head_widths = None, None
        if self._view.generic:
            # Name only what was asked for: the default aux='blocks' is what such a backbone gets.
            asked = [f"aux={aux!r}"] * (aux != "blocks") + ["head_blocks"] * (head_blocks is not None) \
                + ["head_widths"] * (head_widths is not None)
            if asked:
                listed = asked[0] if len(asked) == 1 else f"{', '.join(asked[:-1])} and {asked[-1]}"
                raise IncompatibleConfigError(
                    f"on {type(backbone).__name__} DKS heads are copies of the backbone's own later blocks "
                    f"(aux='blocks'); {listed} need{'s' if len(asked) == 1 else ''} a backbone whose "
                    "stages can be rebuilt at another depth or width: a zoo StagedNet (CIFAR ResNet, WRN, DenseNet, "
                    "MobileNet) or a timm ResNet.")
            heads = [self._view.build_donor_head(a) for a in self.attach]
        elif aux in ("ap_2fc", "ap_conv_2fc"):
            if head_blocks is not None or head_widths is not None:
                raise IncompatibleConfigError(f"aux={aux!r} heads copy no blocks: drop head_blocks/head_widths.")
            channels = self._view.stage_channels()
            heads = [PooledHead(channels[a + 1], channels[-1], num_classes,
                                self._view.reduction_after(a) if aux == "ap_conv_2fc" else None) for a in self.attach]
        else:
            head_blocks, head_widths = self._layout(head_blocks, head_widths, num_stages)
            if aux == "narrow":
                head_widths = [[w / 2 for w in ws] for ws in head_widths]
            elif aux == "shallow":
                head_blocks = [[1 for _ in bs] for bs in head_blocks]
            self.head_blocks, self.head_widths = head_blocks, head_widths
            heads = [self._view.build_head(a, b, w, num_classes)
                     for a, b, w in zip(self.attach, head_blocks, head_widths)]
        self.aux_heads = nn.ModuleList(heads)
        # A wrapped zoo network (DCL) names its levels under its own "backbone." prefix, which says nothing here.
        self.head_names = tuple("aux_" + self._view.stage_names[a].removeprefix("backbone.").replace(".", "_")
                                for a in self.attach) + ("main",)

    def _layout(self, head_blocks, head_widths, num_stages: int):
        """The blocks/widths each head copies: given, the released code's for this network, or the general rule."""
        released = RELEASED_LAYOUTS.get(self.arch or "")
        default_attach = (num_stages - 3, num_stages - 2)
        if released is not None and self.attach == default_attach:
            default_blocks, default_widths = released
        else:
            default_blocks, default_widths = default_head_layout(self._view.stage_blocks(), self.attach)
        blocks = [list(b) for b in head_blocks] if head_blocks is not None else [list(b) for b in default_blocks]
        widths = [list(w) for w in head_widths] if head_widths is not None else [list(w) for w in default_widths]
        if len(blocks) != len(self.attach) or len(widths) != len(self.attach):
            raise IncompatibleConfigError(
                f"head_blocks and head_widths need one entry per head ({len(self.attach)}); got {len(blocks)} and "
                f"{len(widths)}.")
        for a, b, w in zip(self.attach, blocks, widths):
            expected = num_stages - 1 - a
            if len(b) != expected or len(w) != expected:
                raise IncompatibleConfigError(
                    f"the head after {self._view.stage_names[a]} copies {expected} later stage(s); got blocks {b} "
                    f"and widths {w}.")
        return blocks, widths

    def _stage_index(self, point: Union[int, str], num_stages: int) -> int:
        if isinstance(point, str):
            if point not in self._view.stage_names:
                raise IncompatibleConfigError(f"unknown attach point {point!r}; stages: {self._view.stage_names}.")
            point = self._view.stage_names.index(point)
        if not 0 <= point < num_stages - 1:
            raise IncompatibleConfigError(
                f"attach point {point} must be a stage before the last (0..{num_stages - 2}); a head after the "
                "last stage would be the main head.")
        return point

    # -- timm's interface: the main path is the backbone's (BackboneWrapper); the heads are ours -------------
    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new class count for every head, main and auxiliary."""
        super().reset_classifier(num_classes, global_pool)
        for head in self.aux_heads:
            head.reset_classifier(num_classes)

    def classifier_names(self) -> Tuple[str, ...]:
        return tuple(f"aux_heads.{i}.{head.classifier_name()}" for i, head in enumerate(self.aux_heads)) + (
            self.get_classifier(name_only=True),)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        self.aux_heads = nn.ModuleList()  # a feature extractor needs no auxiliary heads
        return super().prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)

    # -- the contract -------------------------------------------------------------------------------------
    def _run(self, module: nn.Module, x: Tensor) -> Tensor:
        """A stage or head, checkpointed block by block when grad checkpointing is on."""
        if self.grad_checkpointing and torch.is_grad_enabled() and not is_tracing():
            return checkpoint_seq(module, x) if isinstance(module, nn.Sequential) else checkpoint(module, x)
        return module(x)

    def forward_heads(self, x: Tensor) -> Heads:
        view = self._view
        if view.generic:
            return view.forward_heads(x, self.attach, self.aux_heads)
        x = view.stem(x)
        aux_logits: List[Tensor] = []
        heads_by_stage = dict(zip(self.attach, self.aux_heads))
        for i, stage in enumerate(view.stages()):
            x = self._run(stage, x)
            if i in heads_by_stage:
                aux_logits.append(self._run(heads_by_stage[i], x))
        main = self.backbone.forward_head(view.final(x))
        return (*aux_logits, main)

    def forward_inference(self, x: Tensor) -> Tensor:
        # The auxiliary heads are not needed to predict: the plain backbone's forward, nothing more.
        return self.backbone(x)

    def collab_loss(self, outputs: Heads, target: Tensor,
                    sample_weight: Optional[Tensor] = None) -> Tuple[Tensor, LossParts]:
        """Eq. 4 over every head (``dks_loss``). Under ``sample_weight`` ([B]) each head's cross-entropy and each
        sample's synergy sum are reduced with ``weighted_mean``; DKS has no term that is not per-sample."""
        if len(outputs) != len(self.head_names):
            raise IncompatibleConfigError(
                f"DKS expects {len(self.head_names)} head outputs (train-mode forward), got {len(outputs)}.")
        return dks_loss(outputs, target, self.pairs, self.temperature, self.alpha, self.beta, self.divergence,
                        self.head_names, sample_weight)

    # -- weights (a bare backbone checkpoint loads under backbone.; the heads, training-only, start fresh) ---
    def export(self) -> nn.Module:
        """The plain backbone, for deployment: identical eval outputs, timm's own key names."""
        plain = copy.deepcopy(self.backbone)
        cfg = dict(getattr(self.backbone, "pretrained_cfg", {}) or {})
        mine = dict(getattr(self, "pretrained_cfg", {}) or {})
        for key in ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std", "label_names", "license",
                    "paper_name", "paper_ids", "origin_url", "description", "notes"):
            if mine.get(key) is not None:
                cfg[key] = mine[key]
        for key in ("hf_hub_id", "hf_hub_filename", "url", "file", "state_dict", "source", "tag"):
            cfg.pop(key, None)
        # What the copied network has, whatever either cfg says.
        cfg["num_classes"] = plain.num_classes
        plain.pretrained_cfg = plain.default_cfg = cfg
        return plain


# --- registration ------------------------------------------------------------------------------------------------

# pool_size: the backbone's unpooled feature map at the default input (timm's meaning): 7x7 for the ImageNet
# ResNets at 224, 8x8 for the CIFAR networks at 32 (stride 4), 2x2 for the CIFAR MobileNet (stride 16).
def _imagenet_cfg() -> Dict[str, Any]:
    return base_cfg("backbone.conv1", "backbone.fc", pool_size=(7, 7))


def _cifar_cfg(first_conv: str = "backbone.stem.0", pool_size=(8, 8)) -> Dict[str, Any]:
    return cifar_cfg(first_conv, "backbone.fc", pool_size=pool_size)


default_cfgs = zoo_default_cfgs({
    "dks": _imagenet_cfg(),
    "dks_resnet18": _imagenet_cfg(),
    "dks_resnet50": _imagenet_cfg(),
    "dks_resnet152": _imagenet_cfg(),
    "dks_resnet20": _cifar_cfg(),
    "dks_resnet32": _cifar_cfg(),
    "dks_resnet110": _cifar_cfg(),
    "dks_wrn28_4": _cifar_cfg("backbone.stem"),
    "dks_wrn28_10": _cifar_cfg("backbone.stem"),
    "dks_densenet40_k12": _cifar_cfg("backbone.stem"),
    "dks_densenet100_k12": _cifar_cfg("backbone.stem"),
    "dks_mobilenet": _cifar_cfg(pool_size=(2, 2)),
})

_DKS_ARGS = ("attach", "head_blocks", "head_widths", "aux", "pairs", "temperature", "alpha", "beta", "divergence")


class _DKSBuilder:
    """Turns an entrypoint's keyword arguments into backbone arguments and DKS arguments."""

    def __init__(self, backbone: str, backbone_defaults: Dict[str, Any], dks_defaults: Dict[str, Any]):
        self.backbone, self.backbone_defaults, self.dks_defaults = backbone, backbone_defaults, dks_defaults

    def __call__(self, num_classes: int = 1000, in_chans: int = 3, backbone_kwargs: Optional[Dict[str, Any]] = None,
                 **kwargs) -> DKSModel:
        dks_args = dict(self.dks_defaults)
        dks_args.update({k: kwargs.pop(k) for k in list(kwargs) if k in _DKS_ARGS})
        block_args = dict(self.backbone_defaults)
        block_args.update(backbone_kwargs or {})
        block_args.update(kwargs)
        backbone = timm.create_model(self.backbone, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                     **block_args)
        donor_kwargs = {k: v for k, v in block_args.items() if k not in ("drop_rate", "global_pool")}
        return DKSModel(backbone, arch=self.backbone, donor_kwargs=donor_kwargs, **dks_args)


def _build(variant: str, backbone: str, pretrained: bool, backbone_defaults: Optional[Dict[str, Any]] = None,
           dks_defaults: Optional[Dict[str, Any]] = None, **kwargs) -> DKSModel:
    builder = _DKSBuilder(backbone, dict(backbone_defaults or {}), dict(dks_defaults or {}))
    return build_zoo_model(builder, variant, pretrained, **kwargs)


@zoo_model
def dks(pretrained: bool = False, backbone: str = "resnet50", **kwargs) -> DKSModel:
    """DKS on any timm or zoo model with stages: ``create_model("dks", backbone="convnext_atto", num_classes=10)``.

    timm ResNets get heads after layer2 and layer3 built by the released design; any other model with
    ``feature_info`` gets heads that copy its own later blocks (see the module docstring); DCL networks included.
    The model's input size, normalisation and first-conv/classifier names come from the backbone's config."""
    if not isinstance(backbone, str) or not timm.is_model(backbone):
        raise IncompatibleConfigError(f"backbone {backbone!r} is not a timm model name (see timm.list_models()).")
    reference = timm.models.get_pretrained_cfg(backbone)
    if reference is not None and kwargs.get("pretrained_cfg") is None:
        prefixed = lambda v: f"backbone.{v}" if isinstance(v, str) else (  # noqa: E731
            type(v)(f"backbone.{x}" for x in v) if isinstance(v, (tuple, list)) else v)
        overlay = dict(first_conv=prefixed(reference.first_conv), classifier=prefixed(reference.classifier),
                       input_size=reference.input_size, pool_size=reference.pool_size, mean=reference.mean,
                       std=reference.std, crop_pct=reference.crop_pct, interpolation=reference.interpolation,
                       num_classes=reference.num_classes)
        overlay = {k: v for k, v in overlay.items() if v is not None}
        overlay.update(kwargs.pop("pretrained_cfg_overlay", None) or {})
        kwargs["pretrained_cfg_overlay"] = overlay
    return _build("dks", backbone, pretrained, **kwargs)


@zoo_model
def dks_resnet18(pretrained: bool = False, **kwargs) -> DKSModel:
    """ResNet-18 (timm) with DKS heads after layer2 and layer3."""
    return _build("dks_resnet18", "resnet18", pretrained, dks_defaults=dict(attach=(1, 2)), **kwargs)


@zoo_model
def dks_resnet50(pretrained: bool = False, **kwargs) -> DKSModel:
    """ResNet-50 (timm) with DKS heads after layer2 and layer3."""
    return _build("dks_resnet50", "resnet50", pretrained, dks_defaults=dict(attach=(1, 2)), **kwargs)


@zoo_model
def dks_resnet152(pretrained: bool = False, **kwargs) -> DKSModel:
    """ResNet-152 (timm) with DKS heads after layer2 and layer3."""
    return _build("dks_resnet152", "resnet152", pretrained, dks_defaults=dict(attach=(1, 2)), **kwargs)


@zoo_model
def dks_resnet20(pretrained: bool = False, **kwargs) -> DKSModel:
    """CIFAR ResNet-20 with DKS heads after stages 1 and 2 (the built-in main job's model: quick on a CPU)."""
    return _build("dks_resnet20", "cifar_resnet20", pretrained, dks_defaults=dict(attach=(0, 1)), **kwargs)


@zoo_model
def dks_resnet32(pretrained: bool = False, **kwargs) -> DKSModel:
    """CIFAR ResNet-32 with DKS heads after stages 1 and 2."""
    return _build("dks_resnet32", "cifar_resnet32", pretrained, dks_defaults=dict(attach=(0, 1)), **kwargs)


@zoo_model
def dks_resnet110(pretrained: bool = False, **kwargs) -> DKSModel:
    """CIFAR ResNet-110 with DKS heads after stages 1 and 2."""
    return _build("dks_resnet110", "cifar_resnet110", pretrained, dks_defaults=dict(attach=(0, 1)), **kwargs)


@zoo_model
def dks_wrn28_4(pretrained: bool = False, **kwargs) -> DKSModel:
    """WRN-28-4 with the released code's DKS heads."""
    return _build("dks_wrn28_4", "wrn28_4", pretrained, **kwargs)


@zoo_model
def dks_wrn28_10(pretrained: bool = False, **kwargs) -> DKSModel:
    """WRN-28-10 with the released code's DKS heads (main 36.5M, heads 20.1M and 107.5M parameters)."""
    return _build("dks_wrn28_10", "wrn28_10", pretrained, **kwargs)


@zoo_model
def dks_densenet40_k12(pretrained: bool = False, **kwargs) -> DKSModel:
    """DenseNet (L=40, k=12) for CIFAR with DKS heads after dense blocks 1 and 2; ``bc=True`` for DenseNet-BC."""
    return _build("dks_densenet40_k12", "densenet40_k12", pretrained, dks_defaults=dict(attach=(0, 1)), **kwargs)


@zoo_model
def dks_densenet100_k12(pretrained: bool = False, **kwargs) -> DKSModel:
    """DenseNet (L=100, k=12) for CIFAR with DKS heads after dense blocks 1 and 2; ``bc=True`` for DenseNet-BC."""
    return _build("dks_densenet100_k12", "densenet100_k12", pretrained, dks_defaults=dict(attach=(0, 1)), **kwargs)


@zoo_model
def dks_mobilenet(pretrained: bool = False, **kwargs) -> DKSModel:
    """The deep-mutual-learning CIFAR MobileNet with DKS heads after its 8x8 and 4x4 stages."""
    return _build("dks_mobilenet", "mobilenet_cifar", pretrained, dks_defaults=dict(attach=(2, 3)), **kwargs)


# Each variant runs its backbone's forward at inference, so it shares the backbone's written conformance exemptions.
for _variant, _backbone in (("dks_resnet18", "resnet18"), ("dks_resnet50", "resnet50"), ("dks_resnet152", "resnet152"),
                            ("dks_resnet20", "cifar_resnet20"), ("dks_resnet32", "cifar_resnet32"),
                            ("dks_resnet110", "cifar_resnet110"), ("dks_wrn28_4", "wrn28_4"), ("dks_wrn28_10", "wrn28_10"),
                            ("dks_densenet40_k12", "densenet40_k12"), ("dks_densenet100_k12", "densenet100_k12"),
                            ("dks_mobilenet", "mobilenet_cifar"), ("dks", "resnet50")):
    inherit_conformance_exemptions(_variant, _backbone)


# --- the authors' released ImageNet weights ----------------------------------------------------------------------

def convert_dks(arch: str, src: Path, out: Path, push: Optional[str] = None, hub_config: Optional[Path] = None,
                num_classes: int = 1000) -> Dict[str, Any]:
    """The DKS authors' ImageNet file (bare state_dict, torchvision names, ``module.`` prefix, read only with
    PyTorch's weights-only unpickler) -> Hub folder of ``dks_<arch>`` holding the backbone only (the heads were
    not released)."""
    from ..factory import create_model
    from ..registry import get_hub_config

    variant = f"dks_{arch}"
    state_dict = strip_prefix(as_state_dict(read_torch_checkpoint(src), src))
    reference = timm.create_model(arch, pretrained=False, num_classes=num_classes).state_dict()
    check_state_dict_keys(state_dict, reference, f"The checkpoint is not a timm/torchvision '{arch}' state_dict")
    tag_name = f"{variant}.in1k"
    model = create_model(tag_name, num_classes=num_classes)
    model.backbone.load_state_dict(state_dict, strict=True)
    config = get_hub_config(tag_name)
    metrics = None
    if config is not None:
        dks = config.reported_metrics.get("dks", {})
        metrics = {f"paper_{k}": v for k, v in dks.items()}
    description = (f"ResNet backbone trained with Deeply-supervised Knowledge Synergy by the paper's authors "
                   f"(converted from {Path(src).name}); auxiliary heads are not included.")
    return finish_hub_folder(out, model, tag_name, push, hub_config, description, metrics)


def _converter_arguments(parser) -> None:
    parser.add_argument("--arch", required=True, choices=["resnet18", "resnet50", "resnet152"])
    parser.add_argument("--src", required=True, type=Path, help="the downloaded .pth file")
    add_hub_arguments(parser)


register_converter("dks", "the DKS authors' ImageNet ResNets", _converter_arguments,
                   lambda args: convert_dks(args.arch, args.src, args.out, args.push_to_hub, args.write_hub_config))
