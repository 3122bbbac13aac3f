"""Collaborative Layer-wise Discriminative Learning (Jin, Chen, Dong, Feng, Yan; ECCV 2016; arXiv:1607.05440).

Several classifiers ("heads") sit on several layers of one network. Each head's loss is its cross-entropy
scaled by how badly the *other* heads do on the sample, so a head cares less about samples its companions
already classify and more about those they miss (paper Eq. 1, 3, 4):

    l_m = T_m * C_m,    C_m = -log p_m(y),    T_m = prod_{t != m} (1 - p_t(y)) ** (1 / (M - 1))

    L = sum_m lambda_m * l_m                   (weight decay is the optimizer's; the paper: M = 3,
                                                lambda = (0.3, 0.3, 1.0), the main head last)

``T_m`` is a constant in back-propagation (Sec. 3.2 and the supplement: its true gradient has a
``(1 - p)^((M-2)/(M-1))`` denominator that explodes when a companion is confident), so
``grad L = sum_m lambda_m * T_m * grad C_m``. Variants (``loss=``):

* ``"cldl"``: every head looks at all others (above);
* ``"cldl_minus"``: CLDL- (Sec. 3.5), one-directional: ``T_m = prod_{t < m} (1 - p_t(y)) ** (1 / (m - 1))``,
  ``T_1 = 1``; a head only looks at the heads below it;
* ``"ds"``: every ``T_m = 1``: deep supervision with the same heads, the paper's DSN* baseline (and, on
  GoogLeNet, GoogLeNet's own 0.3-weighted auxiliary losses).

With ``M = 1`` all three are the plain softmax loss.

**Inference** (Eq. 9) picks the label that minimises the training objective:

    y* = argmin_y S(y),    S(y) = sum_m lambda_m * T_m(y) * (-log p_m(y)),

``T_m(y)`` taken from the companions' probabilities of the *candidate* ``y`` (with the variant's companion
set). Top-k = the k smallest ``S``. In eval mode the model returns ``-S`` as its ``[B, K]`` scores, so
ordinary top-k code ranks by the paper's rule; ``inference="main"`` returns the main head's logits instead
(and runs only the backbone). ``head_probabilities(x)`` gives every head's softmax for analysis.

**Numerics.** ``log(1 - p_k)`` is ``logsumexp_{j != k} z_j - logsumexp_j z_j``. It is evaluated for all K
classes at once: literally (masking the class out) for the argmax class, the only one whose ``p`` can reach
1; as ``log1p(-p_k)`` for every other class, exact there because such a ``p_k`` is at most 1/2. So a
companion that is certain (``p = 1`` in float32) gives ``T = exp(-large) = 0``, never ``log(0)``. ``T`` is
``exp`` of the mean of those logs. Everything runs in float32, whatever the heads' dtype.

**Soft targets** (mixup, cutmix, label smoothing): the loss is the expectation of the per-label loss under
the target distribution, ``l_m = sum_y q(y) * T_m(y) * C_m(y)``; a one-hot ``q`` gives the hard-label loss,
and a two-label mixup gives ``lam * l(a) + (1 - lam) * l(b)``, the usual mixup objective.

**Where the heads go** (Sec. 4.2): from the top, one head every ``V = ceil((L / M) ** gamma)`` weight layers,
``gamma = 0.8``: head m sits on weight layer ``r_m = L - (M - m) * V``; ``r_M = L`` is the network's own
classifier. A head on weight layer r reads ``X(r)``, the output of that layer *with the activation, pooling
and dropout that follow it* (the paper's ``X(l) = f(W(l) * X(l-1))``, f a composite of those).
NIN (L = 9): ``(3, 6, 9)``, after each mlpconv block; ``M = 1..5`` give ``(9)``, ``(5, 9)``, ``(3, 6, 9)``,
``(3, 5, 7, 9)``, ``(1, 3, 5, 7, 9)``. VGG counts its convolutions and three FC layers: VGG-11 (L = 11)
``(5, 8, 11)``, VGG-16 (L = 16) ``(8, 12, 16)``. GoogLeNet does not use the formula: CLDL keeps its two
auxiliary classifiers (after inception 4a and 4d) and only swaps their loss.

**Heads** (Sec. 4.2). NIN: one mlpconv layer with K output channels, then global average pooling; its
shape is not given, so it copies the network's last mlpconv block (CIFAR: conv 3x3 192, cccp 192, cccp K;
MNIST: conv 5x5 128, cccp 96, cccp K; ReLU after each, as in NIN). VGG: "two fully connected layers", sizes
not given: global average pooling, FC 1024 + ReLU, dropout 0.5, FC K (``head_hidden``, ``head_drop``), after
the multi-layer heads of DAG-CNN / Hypercolumn the paper cites. GoogLeNet: its own auxiliary classifiers.

**Any timm model** (``create_model("cldl", backbone="resnet50")``): L counts every convolution and linear
layer of the model (in registration order, classifier included); the formula gives ``r_m``; a head reads the
output of the *deepest feature stage (timm's feature_info) that ends at or before weight layer r_m*, so it
never sees deeper features than the formula asks for, and gets the two-FC head. For ResNet-50 (L = 54,
V = 11, r = 32, 43) that is after layer2 and layer3. ``head_stages=`` names the stages directly.
VGG, NIN and GoogLeNet backbones get their exact layer-wise placement as above.

**GoogLeNet: ours against the paper's.** ``cldl_googlenet`` is torchvision's GoogLeNet, 13,004,888 parameters
with its two auxiliary classifiers (1000 classes); the paper trained Caffe's BVLC GoogLeNet, 13,378,280. The
difference, 373,392, is entirely torchvision's deviations: BatchNorm after every convolution and no convolution
biases (+15,072 BN weights and biases, -7,536 biases), 3x3 instead of 5x5 kernels in every inception module's
"5x5" branch (-16 x 23,808 = -380,928), and no LRN (no parameters). The auxiliary classifiers (5x5/3 average
pooling, 1x1 conv 128, FC 1024, dropout 0.7, FC) have the same shapes in both. A Caffe-exact GoogLeNet is not
built here; numbers from ``cldl_googlenet`` are for this BN variant.

**Any zoo or timm network** with ``feature_info`` (ConvNeXt, EfficientNet, RegNet, MobileNetV3, ViT, the DCL
networks, ...): companion heads always read distinct stages. From the deepest companion down, each reads the
deepest stage ending at or before its weight layer and before the stage of the next deeper companion, so two
formula layers inside one long stage (ConvNeXt-atto: r = 23 and 32 both inside stage 2) give two stages; where
none is left, construction fails and names the stage ends. A backbone with several heads or rounds of its own
(DKS, complementary) is refused: its objective would be dropped. A stochastic DCL backbone's unused branches are
passed on (``leaves_parameters_unused``, ``parameters_left_unused``, ``deterministic_mode``).

Registered: ``cldl_nin``, ``cldl_nin_mnist``, ``cldl_googlenet``, ``cldl_vgg11``, ``cldl_vgg16`` and ``cldl``.
The plain networks are ``nin``, ``nin_mnist``, ``googlenet`` (collab_zoo.backbones) and timm's ``vgg11``/``vgg16``.
A checkpoint of the plain backbone (e.g. torchvision's GoogLeNet through ``convert_torchvision_googlenet``,
or timm's VGG as safetensors) loads into the CLDL model; the companion heads then keep their fresh start.
No code was released with the paper.

**timm's interface.** The eval forward is TorchScript-able (a scripted model walks its backbone with the same
operations), FX-traceable and exportable; after ``reset_classifier(0)`` it returns the backbone's features,
as a timm model does. ``group_matcher`` is the backbone's, the companion heads grouped with the classifier;
``set_grad_checkpointing`` checkpoints the walk segment by segment.
"""
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import timm
import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from timm.models import checkpoint_seq
from torch import Tensor, nn

from ..backbones.googlenet import AUX_TAPS, GoogLeNet
from ..backbones.nin import NIN_LAYOUTS, NetworkInNetwork
from ..builder import build_zoo_model
from ..convert import read_torch_checkpoint, register_converter, strip_prefix
from ..contract import (BackboneWrapper, Heads, LossParts, deterministic_mode_of, exempt_from_conformance,
                        inherit_conformance_exemptions, is_soft_target, is_tracing, parameters_left_unused_of,
                        weighted_mean, check_single_objective)
from ..errors import IncompatibleConfigError, StateDictMismatchError
from ..registry import base_cfg, cifar_cfg, mnist_cfg, zoo_default_cfgs, zoo_model

_logger = logging.getLogger(__name__)

__all__ = [
    "CLDLModel", "LOSS_VARIANTS", "INFERENCE_RULES", "head_positions", "default_lambdas", "modulation_exponents",
    "log_one_minus_softmax", "candidate_losses", "cldl_loss", "cldl_scores", "MlpConvHead", "FCHead",
    "convert_torchvision_googlenet",
]

LOSS_VARIANTS = ("cldl", "cldl_minus", "ds")
INFERENCE_RULES = ("cldl", "main")
DEFAULT_GAMMA = 0.8


# --- where the heads go ------------------------------------------------------------------------------------------

def _spacing(num_layers: int, num_heads: int, gamma: float) -> int:
    """V = ceil((L / M) ** gamma). The power can be an integer that floating point lands just above
    (32 ** 0.8 = 16.000000000000004), which a bare ceil would turn into 17."""
    return math.ceil((num_layers / num_heads) ** gamma - 1e-9)


def head_positions(num_layers: int, num_heads: int, gamma: float = DEFAULT_GAMMA) -> Tuple[int, ...]:
    """Weight-layer index of each head, ``r_m = L - (M - m) * ceil((L / M) ** gamma)``, main head last."""
    if num_heads < 1:
        raise IncompatibleConfigError(f"CLDL needs at least one head, got num_heads={num_heads}.")
    if num_layers < 1:
        raise IncompatibleConfigError(f"the network needs at least one weight layer, got L={num_layers}.")
    if gamma <= 0:
        raise IncompatibleConfigError(f"gamma must be positive (the paper uses 0.8), got {gamma}.")
    spacing = _spacing(num_layers, num_heads, gamma)
    layers = tuple(num_layers - (num_heads - m) * spacing for m in range(1, num_heads + 1))
    if layers[0] < 1:
        fitting = [m for m in range(1, num_layers + 1)
                   if num_layers - (m - 1) * _spacing(num_layers, m, gamma) >= 1]
        raise IncompatibleConfigError(
            f"{num_heads} heads do not fit a network of {num_layers} weight layers: one every V={spacing} layers "
            f"from the top puts the first at layer {layers[0]}. Head counts that fit: {fitting}; or give the "
            "layers yourself with head_layers=(...).")
    return layers


def default_lambdas(num_heads: int) -> Tuple[float, ...]:
    """The paper's (0.3, 0.3, 1.0), generalised: 0.3 for every companion head, 1.0 for the main head."""
    return (0.3,) * (num_heads - 1) + (1.0,)


def _check_lambdas(lambdas: Optional[Sequence[float]], num_heads: int) -> Tuple[float, ...]:
    if lambdas is None:
        return default_lambdas(num_heads)
    values = tuple(float(v) for v in lambdas)
    if len(values) != num_heads:
        raise IncompatibleConfigError(
            f"lambdas needs one weight per head ({num_heads}, main head last), got {len(values)}: {list(values)}.")
    if not all(v > 0 and math.isfinite(v) for v in values):
        raise IncompatibleConfigError(f"every lambda must be a positive number (the paper's lambda_m in R+), got "
                                      f"{list(values)}.")
    return values


# --- the loss and the inference rule -----------------------------------------------------------------------------

def _check_variant(variant: str) -> None:
    if variant not in LOSS_VARIANTS:
        raise IncompatibleConfigError(
            f"loss must be one of {LOSS_VARIANTS} ('cldl': every head sees all others; 'cldl_minus': CLDL-, "
            f"only lower heads; 'ds': deep supervision, T = 1), got {variant!r}.")


def modulation_exponents(num_heads: int, variant: str = "cldl", device=None) -> Tensor:
    """[M, M] matrix E with ``log T_m = sum_t E[m, t] * log(1 - p_t(y))``: the variant's companion sets."""
    _check_variant(variant)
    return _exponents(num_heads, variant, device)


# The unchecked cores below are what the models run, eager or scripted: TorchScript compiles them, and FX and
# torch.export trace them (no Python test on a tensor's value or shape). The public functions check and call them.

def _exponents(num_heads: int, variant: str, device: Optional[torch.device]) -> Tensor:
    idx = torch.arange(num_heads, device=device)
    head, companion = idx[:, None], idx[None, :]
    if variant == "cldl":
        mask = head != companion
        count = torch.full((num_heads, 1), float(max(num_heads - 1, 1)), device=device)
    elif variant == "cldl_minus":
        mask = companion < head
        count = idx[:, None].clamp(min=1).float()
    else:
        return torch.zeros(num_heads, num_heads, device=device)
    return mask.float() / count


def log_one_minus_softmax(logits: Tensor) -> Tensor:
    """``log(1 - softmax(logits))`` over the last axis, for every class, finite even where p rounds to 1.

    ``log(1 - p_k) = logsumexp_{j != k} z_j - logsumexp_j z_j``. Only the argmax class can have p near 1;
    it gets that formula literally. Every other class has ``p_k <= 1/2``, where ``log1p(-p_k)`` is exact.
    Needs at least two classes.
    """
    if logits.shape[-1] < 2:
        raise IncompatibleConfigError("CLDL needs at least two classes: with one, 1 - p is always 0.")
    return _log_one_minus_softmax(logits)


def _log_one_minus_softmax(logits: Tensor) -> Tensor:
    z = logits.detach().float()
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    top = z.argmax(dim=-1, keepdim=True)
    others = z.scatter(-1, top, float("-inf"))
    log_q_top = torch.logsumexp(others, dim=-1, keepdim=True) - lse
    log_q = torch.log1p(-(z - lse).exp())
    return log_q.scatter(-1, top, log_q_top)


def candidate_losses(heads: Union[Sequence[Tensor], Tensor], variant: str = "cldl") -> Tuple[Tensor, Tensor]:
    """``(T_m(y) * C_m(y), T_m(y))`` for every head m, sample and candidate label y, each ``[M, B, K]`` in float32.

    ``T`` is detached: the loss's gradient is ``T * grad C``. Eq. 9's ``S(y)`` and the training loss (at the
    target, or its expectation under a soft target) are both read from these.
    """
    logits = heads.float() if isinstance(heads, Tensor) else torch.stack([h.float() for h in heads])
    if logits.dim() != 3:
        raise IncompatibleConfigError(f"expected per-head logits [M, B, K], got shape {tuple(logits.shape)}.")
    if logits.shape[-1] < 2:
        raise IncompatibleConfigError("CLDL needs at least two classes: with one, 1 - p is always 0.")
    return _candidate_losses(logits, modulation_exponents(logits.shape[0], variant, device=logits.device))


def _candidate_losses(logits: Tensor, exponents: Tensor) -> Tuple[Tensor, Tensor]:
    log_companions = torch.einsum("mt,tbk->mbk", exponents, _log_one_minus_softmax(logits))
    modulation = log_companions.exp().detach()
    confidence = -F.log_softmax(logits, dim=-1)
    return modulation * confidence, modulation


def _at_target(values: Tensor, target: Tensor) -> Tensor:
    """[M, B, K] -> [M, B]: the value at each sample's label, or its expectation under a soft target."""
    if is_soft_target(target):
        if target.shape != values.shape[1:]:
            raise IncompatibleConfigError(
                f"soft targets must be [B, K] = {tuple(values.shape[1:])}, got {tuple(target.shape)}.")
        return (values * target.float()).sum(dim=-1)
    if target.dim() != 1 or target.shape[0] != values.shape[1]:
        raise IncompatibleConfigError(
            f"targets must be class indices [B] or probability rows [B, K]; got shape {tuple(target.shape)} "
            f"for a batch of {values.shape[1]}.")
    index = target.long().view(1, -1, 1).expand(values.shape[0], -1, 1)
    return values.gather(-1, index).squeeze(-1)


def cldl_loss(heads: Sequence[Tensor], target: Tensor, lambdas: Optional[Sequence[float]] = None,
              variant: str = "cldl", head_names: Optional[Sequence[str]] = None,
              sample_weight: Optional[Tensor] = None) -> Tuple[Tensor, LossParts]:
    """``L = sum_m lambda_m * mean_batch(T_m * C_m)`` with the variant's T (see the module docstring).

    ``sample_weight`` ([B], optional): every term of L is per-sample (head m's ``T_m * C_m`` on each sample), so
    each head's batch mean is ``weighted_mean``; the reported ``ce_<name>`` is weighted the same way. ``T_m`` of a
    sample is read from the companions' probabilities *of that sample*, so a sample of weight 0 drops out of the
    loss entirely. ``t_<name>`` is a diagnostic, not a loss term: the plain batch mean of T, unweighted. CLDL has
    no term that is not per-sample (weight decay is the optimizer's).

    ``parts``: per head ``ce_<name>`` (C, unscaled), ``t_<name>`` (mean T), ``loss_<name>`` (T * C), and ``total``.
    """
    num_heads = len(heads)
    names = list(head_names) if head_names is not None else [f"head{i}" for i in range(num_heads)]
    weights = _check_lambdas(lambdas, num_heads)
    per_candidate, modulation = candidate_losses(heads, variant)
    if sample_weight is not None and tuple(sample_weight.shape) != (per_candidate.shape[1],):
        raise IncompatibleConfigError(
            f"sample_weight must hold one weight per sample, shape [{per_candidate.shape[1]}]; got "
            f"{tuple(sample_weight.shape)}.")
    at_target = _at_target(per_candidate, target)                                         # [M, B]
    head_losses = torch.stack([weighted_mean(at_target[m], sample_weight) for m in range(num_heads)])  # [M]
    total = (per_candidate.new_tensor(weights) * head_losses).sum()
    with torch.no_grad():
        confidence = -F.log_softmax(torch.stack([h.float() for h in heads]), dim=-1)
        ce_at_target = _at_target(confidence, target)
        ce = torch.stack([weighted_mean(ce_at_target[m], sample_weight) for m in range(num_heads)])
        mean_t = _at_target(modulation, target).mean(dim=-1)
    parts: LossParts = {}
    for i, name in enumerate(names):
        parts[f"ce_{name}"] = ce[i]
        parts[f"t_{name}"] = mean_t[i]
        parts[f"loss_{name}"] = head_losses[i].detach()
    parts["total"] = total.detach()
    return total, parts


def cldl_scores(heads: Sequence[Tensor], lambdas: Optional[Sequence[float]] = None,
                variant: str = "cldl") -> Tensor:
    """Eq. 9's ``S(y)`` for every candidate label at once, ``[B, K]``: the predicted label has the smallest."""
    per_candidate, _ = candidate_losses(heads, variant)
    weights = per_candidate.new_tensor(_check_lambdas(lambdas, per_candidate.shape[0]))
    return torch.einsum("m,mbk->bk", weights, per_candidate)


@register_notrace_function  # a graph leaf, so FX records a call TorchScript can compile (not Tensor.new_tensor)
def weights_like(like: Tensor, values: List[float]) -> Tensor:
    """The per-head lambdas as a tensor of ``like``'s dtype and device."""
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def _scores(logits: Tensor, exponents: Tensor, weights: Tensor) -> Tensor:
    """``S(y)`` from stacked float32 logits [M, B, K], the variant's exponents and the lambdas."""
    per_candidate, _ = _candidate_losses(logits, exponents)
    return torch.einsum("m,mbk->bk", weights, per_candidate)


# --- heads ---------------------------------------------------------------------------------------------------------

class MlpConvHead(nn.Module):
    """NIN's companion classifier: one mlpconv layer (conv, cccp, cccp to K channels, ReLU after each) and
    global average pooling."""

    def __init__(self, in_channels: int, kernel_size: int, padding: int, widths: Sequence[int], num_classes: int):
        super().__init__()
        self.kernel_size, self.padding, self.widths = kernel_size, padding, tuple(widths)
        self.conv = nn.Conv2d(in_channels, widths[0], kernel_size, padding=padding)
        self.cccp1 = nn.Conv2d(widths[0], widths[1], 1)
        self.act = nn.ReLU(inplace=True)
        self.cccp2 = self._classifier(num_classes)
        for m in (self.conv, self.cccp1, self.cccp2):
            _init_conv(m)

    def _classifier(self, num_classes: int) -> nn.Module:
        return nn.Conv2d(self.widths[1], num_classes, 1) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        self.cccp2 = self._classifier(num_classes)
        _init_conv(self.cccp2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.cccp1(self.act(self.conv(x))))
        return self.act(self.cccp2(x)).mean(dim=(2, 3))


class FCHead(nn.Module):
    """Two fully connected layers on globally pooled features: FC + ReLU, dropout, FC to the classes."""

    def __init__(self, in_features: int, hidden: int, num_classes: int, drop_rate: float = 0.5):
        super().__init__()
        self.hidden = hidden
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate)
        self.fc2 = self._classifier(num_classes)
        _init_linear(self.fc1)
        _init_linear(self.fc2)

    def _classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.hidden, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        self.fc2 = self._classifier(num_classes)
        _init_linear(self.fc2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.act(self.fc1(spatial_mean(x)))))


@register_notrace_function  # its branch is on the input's rank, which FX cannot see
def spatial_mean(x: Tensor) -> Tensor:
    """Mean over every axis after the channels; an already pooled [B, C] passes through."""
    if x.dim() > 2:
        return x.mean(dim=[d for d in range(2, x.dim())])
    return x


@register_notrace_function  # its branch is on the input's size, which FX cannot see
def pool_up_to(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """timm's VGG feeds fc6 (a 7x7 convolution) maps smaller than 7x7 pooled up to 7x7; the walk does the same."""
    if x.shape[-2] < size[0] or x.shape[-1] < size[1]:
        x = F.adaptive_avg_pool2d(x, (max(size[0], x.shape[-2]), max(size[1], x.shape[-1])))
    return x


def _run_segment(modules: Sequence[nn.Module], x: Tensor, checkpointed: bool) -> Tensor:
    """Modules in order; under grad checkpointing as one recomputed segment."""
    if checkpointed:
        return checkpoint_seq(list(modules), x, every=len(modules))
    for module in modules:
        x = module(x)
    return x


def _init_conv(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(m.bias)


def _init_linear(m: nn.Module) -> None:
    # VGG's own initialisation of its FC layers (timm and the original Caffe models).
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0.0, 0.01)
        nn.init.zeros_(m.bias)


# --- how each kind of backbone is walked -------------------------------------------------------------------------

def _is_weight_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))


def _walk_sequential(layers: nn.Sequential, x: Tensor, checkpointed: bool = False) -> Iterator[Tensor]:
    """X(r) after each weight layer of a plain chain: the layer and the activation, pooling and dropout
    that follow it, up to the next weight layer. Each such segment is one unit of grad checkpointing (an
    in-place activation stays inside the segment that made its input)."""
    segment: List[nn.Module] = []
    has_weight = False
    for layer in layers:
        if has_weight and _is_weight_layer(layer):
            x = _run_segment(segment, x, checkpointed)
            yield x
            segment, has_weight = [], False
        segment.append(layer)
        has_weight = has_weight or _is_weight_layer(layer)
    if segment:
        x = _run_segment(segment, x, checkpointed)
    yield x


@dataclass(frozen=True)
class Placement:
    """Where the companion heads read the network. ``layers``: every head's weight layer ``r_m`` (main last),
    None where the paper does not use the formula (GoogLeNet); ``taps``: the view's read point of each
    companion head; ``names``: the companion heads' names."""

    num_layers: Optional[int]
    layers: Optional[Tuple[int, ...]]
    taps: Tuple[Any, ...]
    names: Tuple[str, ...]


class _LayerwiseView(ABC):
    """A plain chain of weight layers (NIN, VGG): a companion head can sit on any of them."""

    def __init__(self, backbone: nn.Module):
        self.backbone = backbone

    @abstractmethod
    def weight_layers(self) -> List[nn.Module]:
        """The network's weight layers in order, 1..L."""

    @abstractmethod
    def walk(self, x: Tensor, checkpointed: bool = False) -> Iterator[Tensor]:
        """X(1), ..., X(L); X(L) is the main head's logits."""

    @abstractmethod
    def build_head(self, layer: int, num_classes: int, hidden: int, drop_rate: float) -> nn.Module:
        """The paper's companion head for weight layer ``layer`` (mlpconv for NIN, two FC layers for VGG)."""

    @property
    def num_layers(self) -> int:
        return len(self.weight_layers())

    def channels_after(self, layer: int) -> int:
        module = self.weight_layers()[layer - 1]
        return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features

    def place(self, num_heads: int, gamma: float, head_layers: Optional[Sequence[int]],
              head_stages: Optional[Sequence[Any]]) -> Placement:
        if head_stages is not None:
            raise IncompatibleConfigError(
                f"{type(self.backbone).__name__} places heads on weight layers: use head_layers=(...), "
                "not head_stages.")
        total = self.num_layers
        if head_layers is None:
            layers = head_positions(total, num_heads, gamma)
        else:
            layers = tuple(int(r) for r in head_layers)
            if not layers or layers[-1] != total or list(layers) != sorted(set(layers)) or layers[0] < 1:
                raise IncompatibleConfigError(
                    f"head_layers must be increasing weight-layer indices in 1..{total}, ending with {total} (the "
                    f"network's own classifier); got {list(head_layers)}.")
        return Placement(total, layers, layers[:-1], tuple(f"aux_layer{r}" for r in layers[:-1]))

    def build_aux_heads(self, placement: Placement, num_classes: int, hidden: int, drop_rate: float) -> List[nn.Module]:
        return [self.build_head(r, num_classes, hidden, drop_rate) for r in placement.taps]

    def forward_heads(self, x: Tensor, placement: Placement, aux_heads: nn.ModuleList,
                      checkpointed: bool = False) -> Heads:
        heads_at = dict(zip(placement.taps, aux_heads))
        outputs: List[Tensor] = []
        features = x
        for layer, features in enumerate(self.walk(x, checkpointed), start=1):
            if layer in heads_at:
                outputs.append(heads_at[layer](features))
        return (*outputs, features)

    def tap_positions(self, taps: Sequence[int]) -> Tuple[List[int], List[int]]:
        """Where a scripted walk reads each tap: indices into ``backbone.features`` after which X(r) is complete,
        and (VGG) the fully connected layers beyond them, 1 = fc6, 2 = fc7."""
        weight_at = [i for i, layer in enumerate(self.backbone.features) if _is_weight_layer(layer)]
        in_features, beyond = [], []
        for r in taps:
            if r < len(weight_at):
                in_features.append(weight_at[r] - 1)     # X(r) ends where weight layer r + 1 begins
            elif r == len(weight_at):
                in_features.append(len(self.backbone.features) - 1)
            else:
                beyond.append(r - len(weight_at))
        return in_features, beyond


class _NINView(_LayerwiseView):
    """NIN: its eight feature convolutions, then the classifier cccp with ReLU and global pooling."""

    def weight_layers(self) -> List[nn.Module]:
        return list(self.backbone.weight_layers())

    def walk(self, x: Tensor, checkpointed: bool = False) -> Iterator[Tensor]:
        features = x
        for features in _walk_sequential(self.backbone.features, x, checkpointed):
            yield features
        yield self.backbone.forward_head(features)

    def build_head(self, layer: int, num_classes: int, hidden: int, drop_rate: float) -> nn.Module:
        kernel, padding, widths = NIN_LAYOUTS[self.backbone.layout][-1]
        return MlpConvHead(self.channels_after(layer), kernel, padding, widths, num_classes)


class _VGGView(_LayerwiseView):
    """timm's VGG: the convolutions of ``features``, then fc6 and fc7 (``pre_logits``, as convolutions) and
    fc8 (``head.fc``): 8 + 3 weight layers for VGG-11, 13 + 3 for VGG-16, as the paper counts them.
    Inputs from 32x32 up work (five 2x2 poolings; fc6 then reads a 1x1 map pooled up to 7x7, as in timm)."""

    def __init__(self, backbone: nn.Module):
        super().__init__(backbone)
        mlp = getattr(backbone, "pre_logits", None)
        if not all(hasattr(mlp, name) for name in ("fc1", "act1", "drop", "fc2", "act2")):
            raise IncompatibleConfigError(
                "this VGG has no fc6/fc7 (its pre_logits was pruned); CLDL needs the full network.")

    def weight_layers(self) -> List[nn.Module]:
        convs = [m for m in self.backbone.features if _is_weight_layer(m)]
        mlp = self.backbone.pre_logits
        return convs + [mlp.fc1, mlp.fc2, self.backbone.head.fc]

    def walk(self, x: Tensor, checkpointed: bool = False) -> Iterator[Tensor]:
        features = x
        for features in _walk_sequential(self.backbone.features, x, checkpointed):
            yield features
        mlp = self.backbone.pre_logits
        x = pool_up_to(features, tuple(mlp.fc1.kernel_size))
        x = mlp.drop(mlp.act1(mlp.fc1(x)))
        yield x
        x = mlp.act2(mlp.fc2(x))
        yield x
        yield self.backbone.head(x)

    def build_head(self, layer: int, num_classes: int, hidden: int, drop_rate: float) -> nn.Module:
        return FCHead(self.channels_after(layer), hidden, num_classes, drop_rate)


class _StageView:
    """Any timm model with ``feature_info`` and ``forward_intermediates``: heads read feature-stage outputs."""

    def __init__(self, backbone: nn.Module):
        if not (hasattr(backbone, "forward_intermediates") and getattr(backbone, "feature_info", None)):
            raise IncompatibleConfigError(
                f"CLDL on {type(backbone).__name__} needs timm's feature_info and forward_intermediates to read "
                "intermediate stages; this model has neither. Pick a timm model that supports features_only.")
        self.backbone = backbone
        self.stage_names = [str(info["module"]) for info in backbone.feature_info]
        self.stage_layers = self._weight_layers_to_stage_ends()
        self.num_layers = sum(1 for m in backbone.modules() if _is_weight_layer(m))

    def _weight_layers_to_stage_ends(self) -> List[int]:
        names, positions = [], []
        for i, (name, module) in enumerate(self.backbone.named_modules()):
            names.append(name)
            if _is_weight_layer(module):
                positions.append(i)
        ends = []
        for stage in self.stage_names:
            inside = [i for i, n in enumerate(names) if n == stage or n.startswith(stage + ".")]
            if not inside:
                raise IncompatibleConfigError(
                    f"feature_info names module {stage!r}, which {type(self.backbone).__name__} does not have.")
            ends.append(sum(1 for p in positions if p <= max(inside)))
        return ends

    def _stage_index(self, stage: Any) -> int:
        if isinstance(stage, str):
            if stage not in self.stage_names:
                raise IncompatibleConfigError(f"unknown stage {stage!r}; this backbone's stages: {self.stage_names}.")
            return self.stage_names.index(stage)
        index = int(stage)
        if not 0 <= index < len(self.stage_names):
            raise IncompatibleConfigError(f"stage index {index} out of range 0..{len(self.stage_names) - 1}.")
        return index

    def place(self, num_heads: int, gamma: float, head_layers: Optional[Sequence[int]],
              head_stages: Optional[Sequence[Any]]) -> Placement:
        if head_stages is not None:
            if head_layers is not None:
                raise IncompatibleConfigError("give head_layers or head_stages, not both.")
            taps = tuple(self._stage_index(s) for s in head_stages)
            layers = None
        else:
            if head_layers is None:
                layers = head_positions(self.num_layers, num_heads, gamma)
            else:
                layers = tuple(int(r) for r in head_layers)
                if not layers or layers[-1] != self.num_layers or list(layers) != sorted(set(layers)):
                    raise IncompatibleConfigError(
                        f"head_layers must be increasing weight-layer indices ending with {self.num_layers} "
                        f"(this backbone's L); got {list(head_layers)}.")
            taps = self._distinct_stages_before(layers[:-1])
        if list(taps) != sorted(set(taps)):
            raise IncompatibleConfigError(
                f"two companion heads would read the same feature stage (stages {[self.stage_names[t] for t in taps]} "
                f"for weight layers {list(layers) if layers else '-'}); this backbone has {len(self.stage_names)} "
                "stages. Use fewer heads or name the stages with head_stages=(...).")
        # A wrapped zoo network (DCL) names its stages under its own "backbone." prefix, which says nothing here.
        names = tuple("aux_" + self.stage_names[t].removeprefix("backbone.").replace(".", "_") for t in taps)
        return Placement(self.num_layers, layers, taps, names)

    def _distinct_stages_before(self, layers: Sequence[int]) -> Tuple[int, ...]:
        """From the deepest companion down: each reads the deepest feature stage that ends at or before its weight
        layer and lies before the stage the next deeper companion reads. Two formula layers inside one stage (a
        backbone with few, long stages: ConvNeXt, RegNet) thus give two distinct stages, the shallower head
        moving one stage down; where no stage is left, the construction fails and says so."""
        taps: List[int] = []
        limit = len(self.stage_layers)
        for layer in reversed(list(layers)):
            candidates = [i for i, end in enumerate(self.stage_layers) if end <= layer and i < limit]
            if not candidates:
                raise IncompatibleConfigError(
                    f"no feature stage is left for a companion head at weight layer {layer}: this backbone's stages "
                    f"{self.stage_names} end at weight layers {self.stage_layers}, and each companion needs its own "
                    "stage at or before its layer. Use fewer heads (num_heads=...) or name the stages with "
                    "head_stages=(...).")
            limit = candidates[-1]
            taps.insert(0, limit)
        return tuple(taps)

    def build_aux_heads(self, placement: Placement, num_classes: int, hidden: int, drop_rate: float) -> List[nn.Module]:
        return [FCHead(int(self.backbone.feature_info[t]["num_chs"]), hidden, num_classes, drop_rate)
                for t in placement.taps]

    def forward_heads(self, x: Tensor, placement: Placement, aux_heads: nn.ModuleList,
                      checkpointed: bool = False) -> Heads:
        # forward_intermediates checkpoints as the backbone's own grad_checkpointing says (set with the model's).
        if not placement.taps:
            return (self.backbone(x),)
        final, features = self.backbone.forward_intermediates(x, indices=list(placement.taps))
        return (*[head(f) for head, f in zip(aux_heads, features)], self.backbone.forward_head(final))


class _GoogLeNetView:
    """GoogLeNet keeps its own auxiliary classifiers (after inception 4a and 4d); they live in the backbone."""

    def __init__(self, backbone: GoogLeNet):
        if backbone.aux1 is None or backbone.aux2 is None:
            raise IncompatibleConfigError(
                "CLDL on GoogLeNet uses its auxiliary classifiers; build it with aux_logits=True.")
        self.backbone = backbone

    def place(self, num_heads: int, gamma: float, head_layers: Optional[Sequence[int]],
              head_stages: Optional[Sequence[Any]]) -> Placement:
        if num_heads != 3 or head_layers is not None or head_stages is not None:
            raise IncompatibleConfigError(
                "CLDL-GoogLeNet keeps GoogLeNet's own two auxiliary classifiers (after inception 4a and 4d) plus "
                "the main one: exactly 3 heads, placed by the network, not by head_layers/head_stages. For "
                "other placements use create_model('cldl', backbone=...) on a timm model.")
        return Placement(None, None, tuple(tap for _, tap in AUX_TAPS), tuple(f"aux_{tap}" for _, tap in AUX_TAPS))

    def build_aux_heads(self, placement: Placement, num_classes: int, hidden: int, drop_rate: float) -> List[nn.Module]:
        return []

    def forward_heads(self, x: Tensor, placement: Placement, aux_heads: nn.ModuleList,
                      checkpointed: bool = False) -> Heads:
        net = self.backbone
        readers = {tap: getattr(net, name) for name, tap in AUX_TAPS}
        outputs: List[Tensor] = []
        x = net._transform_input(x)
        for name, module in net.trunk():
            x = _run_segment([module], x, checkpointed)
            if name in readers:
                outputs.append(readers[name](x))
        return (*outputs, net.forward_head(x))


def _view_for(backbone: nn.Module):
    if isinstance(backbone, NetworkInNetwork):
        return _NINView(backbone)
    if isinstance(backbone, timm.models.VGG):
        return _VGGView(backbone)
    if isinstance(backbone, GoogLeNet):
        return _GoogLeNetView(backbone)
    return _StageView(backbone)


# --- the model ---------------------------------------------------------------------------------------------------

class CLDLModel(BackboneWrapper):
    """A backbone (its keys under ``backbone.``) with CLDL companion heads (``aux_heads.<i>``, or the backbone's
    own auxiliary classifiers for GoogLeNet). Heads are ordered shallow to deep, the main head last.

    ``num_heads`` (M, with the main head), ``gamma``: the placement formula; ``head_layers``: the weight layers
    yourself (main last); ``head_stages``: feature stages of a generic timm backbone. ``lambdas``: per-head
    weights (default 0.3 per companion, 1.0 main). ``loss``: ``"cldl"``, ``"cldl_minus"`` or ``"ds"``.
    ``inference``: ``"cldl"`` (Eq. 9 with the same variant's T) or ``"main"``. ``head_hidden``/``head_drop``:
    the two-FC heads' width and dropout (VGG and generic backbones).
    """

    __jit_unused_properties__ = BackboneWrapper.__jit_unused_properties__ + ["head_layers", "training_only_prefixes",
                                                                             "leaves_parameters_unused"]
    # The scripted walk's plan (set in __init__ for the backbone kinds it knows, see _scripted_heads); typed
    # here because an empty list tells TorchScript nothing.
    _feature_taps: List[int]
    _vgg_fc_taps: List[int]
    _resnet_taps: List[int]
    _lambda_list: List[float]

    def __init__(self, backbone: nn.Module, num_heads: int = 3, lambdas: Optional[Sequence[float]] = None,
                 loss: str = "cldl", inference: str = "cldl", gamma: float = DEFAULT_GAMMA,
                 head_layers: Optional[Sequence[int]] = None, head_stages: Optional[Sequence[Any]] = None,
                 head_hidden: int = 1024, head_drop: float = 0.5):
        super().__init__()
        _check_variant(loss)
        if inference not in INFERENCE_RULES:
            raise IncompatibleConfigError(
                f"inference must be 'cldl' (the paper's Eq. 9 over all heads) or 'main' (the last head only), "
                f"got {inference!r}.")
        num_classes = int(getattr(backbone, "num_classes", 0))
        if num_classes == 1:
            raise IncompatibleConfigError("CLDL needs a classifier with at least two classes (or none, "
                                          "num_classes=0, for a feature extractor), got 1.")
        if head_layers is not None:
            num_heads = len(head_layers)
        elif head_stages is not None:
            num_heads = len(head_stages) + 1
        self.backbone = backbone
        self.loss, self.inference, self.gamma = loss, inference, float(gamma)
        check_single_objective(backbone, "CLDL", "cldl_nin")
        self._view = _view_for(backbone)
        self.placement = self._view.place(int(num_heads), self.gamma, head_layers, head_stages)
        self.num_heads = len(self.placement.taps) + 1
        self.lambdas = _check_lambdas(lambdas, self.num_heads)
        self.aux_heads = nn.ModuleList(
            self._view.build_aux_heads(self.placement, num_classes, int(head_hidden), float(head_drop)))
        self.head_names = self.placement.names + ("main",)
        self._plan_scripted_walk()

    @property
    def leaves_parameters_unused(self) -> bool:  # the contract's flag: a stochastic DCL backbone's, passed on
        return bool(getattr(self.backbone, "leaves_parameters_unused", False))

    def deterministic_mode(self):
        return deterministic_mode_of(self.backbone)

    def parameters_left_unused(self) -> Set[str]:
        return {f"backbone.{name}" for name in parameters_left_unused_of(self.backbone)}

    def _plan_scripted_walk(self) -> None:
        """Record, as plain attributes TorchScript can read, where the scripted walk taps the backbone."""
        self._lambda_list = [float(v) for v in self.lambdas]
        view = self._view
        if isinstance(view, _GoogLeNetView):
            self._googlenet_taps = True
        elif isinstance(view, _LayerwiseView):
            self._feature_taps, beyond = view.tap_positions(self.placement.taps)
            if isinstance(view, _VGGView):
                self._vgg_fc_taps = beyond
                kernel = view.backbone.pre_logits.fc1.kernel_size
                self._fc6_kernel = (int(kernel[0]), int(kernel[1]))
        elif isinstance(self.backbone, timm.models.ResNet):
            self._resnet_taps = [int(t) for t in self.placement.taps]

    def extra_repr(self) -> str:
        where = f"head_layers={self.placement.layers} of L={self.placement.num_layers}" if self.placement.layers \
            else f"heads={self.head_names}"
        return f"loss={self.loss}, inference={self.inference}, lambdas={self.lambdas}, {where}"

    @property
    def head_layers(self) -> Optional[Tuple[int, ...]]:
        """Weight-layer index of every head, main last (None where the network places them: GoogLeNet)."""
        return self.placement.layers

    def _aux_prefixes(self) -> Tuple[str, ...]:
        if isinstance(self._view, _GoogLeNetView):
            return tuple(f"backbone.{name}" for name, _ in AUX_TAPS)
        return ("aux_heads",)

    @property
    def training_only_prefixes(self) -> Tuple[str, ...]:
        # Eq. 9 needs every head; only a model that predicts with its main head can ship without the others.
        return self._aux_prefixes() if self.inference == "main" else ()

    # -- timm's interface: the main path is the backbone's (BackboneWrapper); the heads are ours -------------
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint the walk segment by segment; a generic backbone's forward_intermediates checkpoints itself
        (its own flag). The layer-wise walks of NIN, VGG and GoogLeNet do it here, whatever the backbone says
        (timm's VGG refuses grad checkpointing for its own forward)."""
        self.grad_checkpointing = enable
        if isinstance(self._view, _StageView):
            self.backbone.set_grad_checkpointing(enable)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new class count for every head, the main one and each companion."""
        super().reset_classifier(num_classes, global_pool)
        for head in self.aux_heads:
            head.reset_classifier(num_classes)

    def classifier_names(self) -> Tuple[str, ...]:
        if isinstance(self._view, _GoogLeNetView):
            companions = tuple(f"backbone.{name}.fc2" for name, _ in AUX_TAPS)
        else:
            companions = tuple(f"aux_heads.{i}.{'cccp2' if isinstance(h, MlpConvHead) else 'fc2'}"
                               for i, h in enumerate(self.aux_heads))
        return companions + (self.get_classifier(name_only=True),)

    # -- the contract -------------------------------------------------------------------------------------
    def forward_heads(self, x: Tensor) -> Heads:
        checkpointed = self.grad_checkpointing and torch.is_grad_enabled() and not is_tracing()
        return self._view.forward_heads(x, self.placement, self.aux_heads, checkpointed)

    def collab_loss(self, outputs: Heads, target: Tensor,
                    sample_weight: Optional[Tensor] = None) -> Tuple[Tensor, LossParts]:
        """``cldl_loss`` with this model's lambdas and variant. Under ``sample_weight`` ([B]) every head's
        per-sample ``T_m * C_m`` is reduced with ``weighted_mean``; CLDL has no term that is not per-sample."""
        if len(outputs) != self.num_heads:
            raise IncompatibleConfigError(
                f"CLDL expects {self.num_heads} head outputs (the train-mode forward), got {len(outputs)}.")
        return cldl_loss(outputs, target, self.lambdas, self.loss, self.head_names, sample_weight)

    def predict(self, heads: Heads) -> Tensor:
        """``-S(y)`` of Eq. 9 (larger is better) or, with ``inference="main"``, the main head's logits."""
        if self.inference == "main":
            return heads[-1]
        if len(heads) != self.num_heads:
            raise IncompatibleConfigError(f"CLDL predicts from its {self.num_heads} heads' logits, got {len(heads)}.")
        logits = torch.stack([h.float() for h in heads])
        exponents = _exponents(len(heads), self.loss, logits.device)
        return -_scores(logits, exponents, weights_like(logits, list(self.lambdas)))

    def forward_inference(self, x: Tensor) -> Tensor:
        if self.inference == "main" or self.backbone.num_classes == 0:
            # The companions are not needed (or, without classifiers, have nothing to score): the plain
            # network's forward, which after reset_classifier(0) gives its features as a timm model does.
            return self.backbone(x)
        if torch.jit.is_scripting():
            logits = torch.stack([h.float() for h in self._scripted_heads(x)])
            exponents = _exponents(len(self._lambda_list), self.loss, logits.device)
            return -_scores(logits, exponents, weights_like(logits, self._lambda_list))
        else:
            return self.predict(self.forward_heads(x))

    # -- the scripted walk: the same operations as the views' walks, spelled out for TorchScript ------------
    def _scripted_heads(self, x: Tensor) -> List[Tensor]:
        # hasattr on a module is settled when TorchScript compiles, so only the backbone's own walk is built.
        if hasattr(self, "_googlenet_taps"):
            return self._googlenet_heads(x)
        elif hasattr(self, "_vgg_fc_taps"):
            return self._vgg_heads(x)
        elif hasattr(self, "_feature_taps"):
            return self._nin_heads(x)
        elif hasattr(self, "_resnet_taps"):
            return self._resnet_heads(x)
        else:
            raise RuntimeError("TorchScript runs CLDL on NIN, VGG, GoogLeNet and ResNet-family backbones; this "
                               "backbone's walk is Python only (FX and torch.export trace it).")

    def _companions(self, taps: List[Tensor], main: Tensor) -> List[Tensor]:
        heads: List[Tensor] = []
        position = 0
        for head in self.aux_heads:
            heads.append(head(taps[position]))
            position += 1
        heads.append(main)
        return heads

    def _feature_walk(self, x: Tensor, taps: List[Tensor]) -> Tensor:
        index = 0
        for layer in self.backbone.features:
            x = layer(x)
            if index in self._feature_taps:
                taps.append(x)
            index += 1
        return x

    def _nin_heads(self, x: Tensor) -> List[Tensor]:
        taps: List[Tensor] = []
        x = self._feature_walk(x, taps)
        return self._companions(taps, self.backbone.forward_head(x))

    def _vgg_heads(self, x: Tensor) -> List[Tensor]:
        taps: List[Tensor] = []
        x = self._feature_walk(x, taps)
        x = pool_up_to(x, self._fc6_kernel)
        x = self.backbone.pre_logits.drop(self.backbone.pre_logits.act1(self.backbone.pre_logits.fc1(x)))
        if 1 in self._vgg_fc_taps:
            taps.append(x)
        x = self.backbone.pre_logits.act2(self.backbone.pre_logits.fc2(x))
        if 2 in self._vgg_fc_taps:
            taps.append(x)
        return self._companions(taps, self.backbone.head(x))

    def _googlenet_heads(self, x: Tensor) -> List[Tensor]:
        net = self.backbone
        heads: List[Tensor] = []
        x = net._transform_input(x)
        x = net.maxpool1(net.conv1(x))
        x = net.maxpool2(net.conv3(net.conv2(x)))
        x = net.maxpool3(net.inception3b(net.inception3a(x)))
        x = net.inception4a(x)
        if net.aux1 is not None:
            heads.append(net.aux1(x))
        x = net.inception4d(net.inception4c(net.inception4b(x)))
        if net.aux2 is not None:
            heads.append(net.aux2(x))
        x = net.maxpool4(net.inception4e(x))
        x = net.inception5b(net.inception5a(x))
        heads.append(net.forward_head(x))
        return heads

    def _resnet_heads(self, x: Tensor) -> List[Tensor]:
        net = self.backbone
        taps: List[Tensor] = []
        x = net.act1(net.bn1(net.conv1(x)))
        if 0 in self._resnet_taps:
            taps.append(x)
        x = net.maxpool(x)
        x = net.layer1(x)
        if 1 in self._resnet_taps:
            taps.append(x)
        x = net.layer2(x)
        if 2 in self._resnet_taps:
            taps.append(x)
        x = net.layer3(x)
        if 3 in self._resnet_taps:
            taps.append(x)
        x = net.layer4(x)
        return self._companions(taps, net.forward_head(x))

    @torch.no_grad()
    def head_probabilities(self, x: Tensor) -> Tensor:
        """Every head's softmax, ``[M, B, K]`` (main last), for analysing which head knows which sample."""
        return torch.stack([F.softmax(h.float(), dim=-1) for h in self.forward_heads(x)])

    @torch.no_grad()
    def modulation(self, heads: Heads, target: Tensor) -> Tensor:
        """``T_m`` at the target of every head and sample, ``[M, B]``: how much each head is asked to learn it."""
        return _at_target(candidate_losses(heads, self.loss)[1], target)

    # -- weights ------------------------------------------------------------------------------------------
    def remap_pretrained_keys(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """A checkpoint of the plain backbone loads into ``backbone.``, through the backbone's own remap (the
        GoogLeNet baseline drops torchvision's untrained auxiliary classifiers there)."""
        if not any(k.startswith("backbone.") for k in state_dict) and hasattr(self.backbone, "remap_pretrained_keys"):
            state_dict = self.backbone.remap_pretrained_keys(dict(state_dict))
        return super().remap_pretrained_keys(state_dict)

    def optional_checkpoint_keys(self, state_dict: Dict[str, Tensor]) -> set:
        """A checkpoint without any companion head (a bare backbone) leaves them all at their fresh
        initialisation, reported by the loader; train them before relying on Eq. 9 inference."""
        prefixes = self._aux_prefixes()
        in_head = lambda k: any(k == p or k.startswith(p + ".") for p in prefixes)  # noqa: E731
        optional = super().optional_checkpoint_keys(state_dict)
        if not any(in_head(k) for k in state_dict):
            optional |= {k for k in self.state_dict() if in_head(k)}
            if self.inference != "main":
                _logger.warning(
                    "The checkpoint has no companion heads: they start untrained, and Eq. 9 inference uses every "
                    "head. Train them (train.py) before evaluating with inference=%r, or predict with "
                    "inference='main'.", self.inference)
        return optional


# --- registration ------------------------------------------------------------------------------------------------

default_cfgs = zoo_default_cfgs({
    # pool_size: the backbone's unpooled features at the default input size, timm's meaning
    "cldl": base_cfg("backbone.conv1", "backbone.fc", pool_size=(7, 7)),
    "cldl_nin": cifar_cfg("backbone.features.conv1", "backbone.cccp6", pool_size=(8, 8)),
    "cldl_nin_mnist": mnist_cfg("backbone.features.conv1", "backbone.cccp6", pool_size=(7, 7)),
    "cldl_googlenet": base_cfg("backbone.conv1.conv", "backbone.fc", pool_size=(7, 7)),
    "cldl_vgg11": base_cfg("backbone.features.0", "backbone.head.fc", pool_size=(7, 7)),
    "cldl_vgg16": base_cfg("backbone.features.0", "backbone.head.fc", pool_size=(7, 7)),
})

_CLDL_ARGS = ("num_heads", "lambdas", "loss", "inference", "gamma", "head_layers", "head_stages", "head_hidden",
              "head_drop")


def _make_backbone(name: str, num_classes: int, in_chans: int, kwargs: Dict[str, Any]) -> nn.Module:
    if name == "googlenet":
        # The registered baseline refuses auxiliary classifiers; CLDL needs them, so build the class itself.
        return GoogLeNet(num_classes=num_classes, in_chans=in_chans, aux_logits=True, **kwargs)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


class _CLDLBuilder:
    """Turns an entrypoint's keyword arguments into backbone arguments and CLDL arguments, and records them
    (``_model_args``) so that ``save_for_hub`` writes a config.json that rebuilds the same model."""

    def __init__(self, backbone: str, backbone_defaults: Dict[str, Any], record_backbone: bool):
        self.backbone, self.backbone_defaults, self.record_backbone = backbone, backbone_defaults, record_backbone

    def __call__(self, num_classes: int = 1000, in_chans: int = 3, backbone_kwargs: Optional[Dict[str, Any]] = None,
                 **kwargs) -> CLDLModel:
        cldl_args = {k: kwargs.pop(k) for k in list(kwargs) if k in _CLDL_ARGS}
        block_args = dict(self.backbone_defaults)
        block_args.update(backbone_kwargs or {})
        block_args.update(kwargs)
        model = CLDLModel(_make_backbone(self.backbone, num_classes, in_chans, block_args), **cldl_args)
        recorded = dict(backbone=self.backbone) if self.record_backbone else {}
        recorded.update(in_chans=in_chans, **cldl_args, **kwargs)
        if backbone_kwargs:
            recorded["backbone_kwargs"] = dict(backbone_kwargs)
        model._model_args = recorded
        return model


def _build(variant: str, backbone: str, pretrained: bool, backbone_defaults: Optional[Dict[str, Any]] = None,
           record_backbone: bool = False, **kwargs) -> CLDLModel:
    builder = _CLDLBuilder(backbone, dict(backbone_defaults or {}), record_backbone)
    return build_zoo_model(builder, variant, pretrained, **kwargs)


def _prefixed(value: Any) -> Any:
    if isinstance(value, str):
        return f"backbone.{value}"
    if isinstance(value, (tuple, list)):
        return type(value)(f"backbone.{v}" for v in value)
    return value


@zoo_model
def cldl(pretrained: bool = False, backbone: str = "resnet50", **kwargs) -> CLDLModel:
    """CLDL on any timm model: ``create_model("cldl", backbone="convnext_tiny", num_heads=3)``.

    NIN, VGG and GoogLeNet backbones get the paper's layer-wise placement; other models get two-FC heads on
    the deepest feature stage at or before each head's weight layer (see the module docstring). The model's
    input size, normalisation and first-conv/classifier names come from the backbone's timm config."""
    if not isinstance(backbone, str) or not timm.is_model(backbone):
        raise IncompatibleConfigError(f"backbone {backbone!r} is not a timm model name (see timm.list_models()).")
    reference = timm.models.get_pretrained_cfg(backbone)
    # A saved model (local-dir:, hf-hub:) brings its own pretrained_cfg; the backbone's defaults only fill in
    # a fresh build.
    if reference is not None and kwargs.get("pretrained_cfg") is None:
        overlay = dict(first_conv=_prefixed(reference.first_conv), classifier=_prefixed(reference.classifier),
                       input_size=reference.input_size, pool_size=reference.pool_size, mean=reference.mean,
                       std=reference.std,
                       crop_pct=reference.crop_pct, interpolation=reference.interpolation,
                       num_classes=reference.num_classes)
        overlay = {k: v for k, v in overlay.items() if v is not None}
        overlay.update(kwargs.pop("pretrained_cfg_overlay", None) or {})
        kwargs["pretrained_cfg_overlay"] = overlay
    return _build("cldl", backbone, pretrained, record_backbone=True, **kwargs)


@zoo_model
def cldl_nin(pretrained: bool = False, **kwargs) -> CLDLModel:
    """NIN for CIFAR-100 with CLDL heads on weight layers (3, 6, 9): after each mlpconv block."""
    return _build("cldl_nin", "nin", pretrained, **kwargs)


@zoo_model
def cldl_nin_mnist(pretrained: bool = False, **kwargs) -> CLDLModel:
    """NIN for MNIST with CLDL heads on weight layers (3, 6, 9)."""
    return _build("cldl_nin_mnist", "nin_mnist", pretrained, **kwargs)


@zoo_model
def cldl_googlenet(pretrained: bool = False, **kwargs) -> CLDLModel:
    """GoogLeNet (torchvision's, with BatchNorm: 13,004,888 parameters) whose two auxiliary classifiers are trained
    with the CLDL loss. Not the paper's Caffe GoogLeNet (13,378,280): see the module docstring for the difference."""
    return _build("cldl_googlenet", "googlenet", pretrained, **kwargs)


@zoo_model
def cldl_vgg11(pretrained: bool = False, **kwargs) -> CLDLModel:
    """timm's VGG-11 with two-FC CLDL heads on weight layers (5, 8, 11); dropout 0.5 in fc6/fc7 as in VGG."""
    return _build("cldl_vgg11", "vgg11", pretrained, backbone_defaults=dict(drop_rate=0.5), **kwargs)


@zoo_model
def cldl_vgg16(pretrained: bool = False, **kwargs) -> CLDLModel:
    """timm's VGG-16 with two-FC CLDL heads on weight layers (8, 12, 16); dropout 0.5 in fc6/fc7 as in VGG."""
    return _build("cldl_vgg16", "vgg16", pretrained, backbone_defaults=dict(drop_rate=0.5), **kwargs)


# timm's VGG pools after fc6/fc7 (its ConvMlp), and timm skips the unpooled-forward check for it (EARLY_POOL_MODELS).
for _variant in ("cldl_vgg11", "cldl_vgg16"):
    exempt_from_conformance(
        _variant, "default_cfg:unpooled",
        "timm's VGG keeps fc6/fc7 (a 7x7 and a 1x1 convolution) between its features and the pooling, so after "
        "reset_classifier(0, '') the forward ends in 1x1 maps, not pool_size; timm skips this check for VGG "
        "(EARLY_POOL_MODELS in its tests/test_models.py)")
# Each variant walks its backbone, so it shares the backbone's written conformance exemptions.
for _variant, _backbone in (("cldl_nin", "nin"), ("cldl_nin_mnist", "nin_mnist"), ("cldl_googlenet", "googlenet"),
                            ("cldl_vgg11", "vgg11"), ("cldl_vgg16", "vgg16"), ("cldl", "resnet50")):
    inherit_conformance_exemptions(_variant, _backbone)


# --- starting from torchvision's ImageNet GoogLeNet -------------------------------------------------------------

_GOOGLENET_ARCHS = ("cldl_googlenet", "googlenet")


def _read_googlenet_weights(src: Path) -> Dict[str, Tensor]:
    from ..weights import load_safetensors_file

    if src.suffix == ".safetensors":
        state = load_safetensors_file(src)
    else:
        state = read_torch_checkpoint(src)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise IncompatibleConfigError(f"{src} is not a state_dict (a mapping of names to tensors).")
    return strip_prefix(dict(state))


def convert_torchvision_googlenet(src_file: Union[str, Path], out_dir: Union[str, Path],
                                  arch: str = "cldl_googlenet") -> Dict[str, Any]:
    """torchvision's released GoogLeNet weights (``googlenet-1378be20.pth``, read with
    ``torch.load(weights_only=True)``, or a safetensors file of the same state_dict) -> a Hub folder of ``arch``.

    The trunk and main classifier come from the file. torchvision says its file's auxiliary classifiers are
    not trained, so they are left out: ``cldl_googlenet`` starts them fresh, ``googlenet`` has none. The
    folder's config sets ``transform_input=True`` (what the ported weights expect) and, for
    ``cldl_googlenet``, ``inference="main"`` until the companions are trained: evaluated as is, it is
    torchvision's GoogLeNet. Returns ``{"out", "sha256", "model"}``.
    """
    from ..factory import create_model
    from ..hub import save_for_hub
    from ..weights import DEFAULT_WEIGHTS_NAME, sha256_of

    if arch not in _GOOGLENET_ARCHS:
        raise IncompatibleConfigError(f"arch must be one of {_GOOGLENET_ARCHS}, got {arch!r}.")
    src, out = Path(src_file), Path(out_dir)
    state = _read_googlenet_weights(src)
    aux_names = {name for name, _ in AUX_TAPS}
    trunk = {k: v for k, v in state.items() if k.split(".", 1)[0] not in aux_names}
    if "fc.weight" not in trunk:
        raise StateDictMismatchError(f"{src} has no 'fc.weight': it is not a torchvision GoogLeNet state_dict.")
    num_classes = int(trunk["fc.weight"].shape[0])
    with torch.device("meta"):
        reference = GoogLeNet(num_classes=num_classes, aux_logits=False).state_dict()
    missing = sorted(set(reference) - set(trunk))
    unexpected = sorted(set(trunk) - set(reference))
    shapes = [k for k in reference if k in trunk and trunk[k].shape != reference[k].shape]
    if missing or unexpected or shapes:
        raise StateDictMismatchError(
            f"{src} is not a torchvision GoogLeNet state_dict: missing {missing[:10]}, unexpected {unexpected[:10]}, "
            f"shape mismatches {shapes[:10]}.")

    model_args: Dict[str, Any] = dict(transform_input=True)
    if arch == "cldl_googlenet":
        model_args["inference"] = "main"
    model = create_model(arch, num_classes=num_classes, **model_args)
    target = model.backbone if arch == "cldl_googlenet" else model
    missing_after, unexpected_after = target.load_state_dict(trunk, strict=False)
    if unexpected_after or any(k.split(".", 1)[0] not in aux_names for k in missing_after):
        raise StateDictMismatchError(
            f"{src} did not fill {arch}: missing {missing_after}, unexpected {unexpected_after}.")
    description = (f"torchvision's ImageNet GoogLeNet (converted from {src.name}) as `{arch}`. "
                   + ("Its auxiliary classifiers start fresh (torchvision's are untrained) and the model predicts "
                      "with the main head until they are trained with the CLDL loss; then set inference='cldl'."
                      if arch == "cldl_googlenet" else "Auxiliary classifiers off."))
    save_for_hub(model, out, model_args=model_args, description=description, datasets=["imagenet-1k"],
                 keep_training_heads=True)
    return {"out": str(out), "sha256": sha256_of(out / DEFAULT_WEIGHTS_NAME), "model": arch}


def _converter_arguments(parser) -> None:
    parser.add_argument("--src", required=True, type=Path, help="googlenet-1378be20.pth (or a safetensors of it)")
    parser.add_argument("--arch", default="cldl_googlenet", choices=list(_GOOGLENET_ARCHS))
    parser.add_argument("--out", required=True, type=Path, help="folder to write the Hub files to")


register_converter("torchvision-googlenet", "torchvision's ImageNet GoogLeNet, as a starting point for cldl_googlenet",
                   _converter_arguments, lambda args: convert_torchvision_googlenet(args.src, args.out, arch=args.arch))
