"""Deep Collaborative Learning (Wang, Xie, Zhang, Zhang, Yuille; "Deep Collaborative Learning for Visual
Recognition", 2017).

DCL replaces one large layer -- ``K1 -> K2`` channels, kernel ``u x u``, ``z = relu(theta^T x)`` -- by a
two-stage module whose vocabulary grows exponentially with its number of branches while its size grows
linearly (Sec. 3.1):

    branch construction   y_t = theta_t * x                 T branches, K1 -> M_t channels, the replaced
                                                            layer's kernel, stride, padding and dilation
    concept fusion        v_t = relu(W_t^T relu(y_t))       per position, M_t -> K2 (a 1x1 conv / linear)
                          z   = (prod_t v_t + eps) ** (1/T),   eps = 10 ** -T

Expanding the product (Sec. 3.2) shows each output unit as a weighted sum over all ``prod_t M_t``
*compositions* of one filter per branch, each firing only where all of its filters fire, for
``(u^2 K1 + K2) sum_t M_t`` parameters instead of ``u^2 K1 K2`` (Sec. 3.4).

**Training with T > 2** (Sec. 3.5). ``mode="deterministic"`` ("D") fuses all T branches at every step.
``mode="stochastic"`` ("S") draws 2 of the T branches per training step (from torch's RNG, so a seeded run
repeats) and trains only those: the others are not even run, so their parameters get no gradient
(``leaves_parameters_unused`` is True on such models, for data-parallel wrappers), and optimizers skip them
for that step (no weight decay or momentum either): "only the parameters in the active branches" train.
Each DCL module draws for itself; under data parallelism each process draws from its own RNG, so processes
seeded differently train different pairs on their shares of the batch. At test time the output is the
expectation over the draw, the mean of the fused response over all ``C(T, 2)`` pairs; every branch runs
once and the pairs are fused from those responses. With T = 2 the two modes are the same network.

Where the paper is silent, and what this module does:

* **eps sits inside the root**, ``(prod v + eps) ** (1/T)``. The paper adds eps "to avoid numerical
  instability in gradient computation": ``d/dP P**(1/T)`` is infinite at ``P = 0``, and only an eps inside
  the root bounds it (by ``eps**(1/T - 1) / T``); an eps outside would leave the gradient infinite where any
  branch is silent. ``eps = 10**-T`` then makes the floor ``eps**(1/T) = 0.1`` the same for every T,
  which reads as the reason for that choice. A fused pair (stochastic mode) is a 2-branch DCL and uses
  ``10**-2``. ``eps=`` overrides it.
* **A ReLU follows each branch's filters** (``y_t = relu(theta_t * x)``; ``branch_act=False`` removes it).
  Sec. 3.1 writes ``y = theta^T x``, but Sec. 3.2 expands the fused unit into ``prod_t relu(theta_t^T x)`` and
  reads it as "all T filters are fired", which needs the rectifier, and Sec. 3.3 counts DCL as added depth;
  without it the two stages of a branch collapse into one low-rank linear map.
* **Initialisation of the mappings** (``mapping_init``). The paper gives none. With signed weights each
  ``v_t`` is zero at about half of the units, and a fused unit sits at the floor (no gradient into any branch)
  unless every branch is positive there: ~75% of the units for T = 2, ~87% for T = 3, at the start. By default
  (``"positive"``) each ``W_t`` keeps its drawn magnitudes (the backbone's initialiser) with the signs dropped
  and scaled by ``1 / sqrt(M_t)`` (a sum of M_t positive terms grows like M_t, a signed one like its root),
  so ``v_t > 0`` wherever any of the branch's filters fires and training starts off the floor; the signs are
  free to change from the first step. ``mapping_init="signed"`` keeps the weights as drawn.
* **Biases** follow the replaced layer (a layer with a bias gives branches and mappings with biases, as
  Caffe's layers have); the paper's equations omit every bias, the replaced layer's included. The paper's
  sizes count weights only, so neither choice moves them.
* **Numerics**: the fusion runs through its own autograd function. Responses of float32's range (float32,
  bfloat16, float16) are multiplied in float64, where up to 8 of them cannot overflow (3.4e38**8 < 1.8e308):
  responses up to float32's limit fuse exactly, zero responses give exactly the floor, and the gradient
  ``dz/dv_t = (1/T) (P + eps)**(1/T - 1) prod_{s != t} v_s`` is formed from prefix and suffix products, without
  the ``0 * inf`` a naive autograd graph hits at a silent branch. float64 responses, and more than 8 branches,
  take the same formulas in the log domain (``logaddexp``), which cannot overflow at all but costs more than
  the layer it replaces on a CPU; both give the same values (tested to 1e-6 relative). A per-factor derivative
  above ``e**64`` (~6e27; reached only at a (nearly) silent branch while the others exceed ~1e13 for T = 3,
  and such a silent branch's ReLU discards it anyway) is capped there, so it cannot overflow downstream.
  Results come back in the input's dtype, so bf16 autocast works.

Where the paper puts DCL (Sec. 4): the *first fully connected layer*. Registered, each next to its plain
baseline (see ``complexity_rows``; ``python -m collab_zoo.methods.dcl`` prints them all):

* ``dcl_lenet`` (vs ``lenet``): the multi-digit MNIST LeNet, ``variant`` one of the paper's A2, A3D, A3S
  (DCL on FC500) or B2, B3D, B3S (DCL on the output layer), branches of 1/5 of the replaced layer's filters
  (Sec. 4.1.2). Default A3S, the option Sec. 4.1.3 keeps as best.
* ``dcl_lenet_cifar`` (vs ``lenet_cifar``): FC512 -> 2 branches of 128 (1/4, Sec. 4.2.1).
* ``dcl_bignet`` (vs ``bignet``): BigNet's 256 -> 1024 conv3x3 on the 3x3 map -> 2 branches of 256;
  5,742,272 -> 5,086,912 weights with 10 classes (the paper's 5.74M -> 5.09M, 11.41% fewer).
* ``dcl_wrn16`` (vs ``wrn16_4``; ``widen_factor=8`` vs ``wrn16_8``). A WRN has no hidden FC layer: its only
  FC is the classifier after global pooling. We replace the *last block's first 3x3 convolution*
  (``stages.2.1.conv0``, 64k -> 64k filters) by 2 branches of 1/4 of its filters. Why this layer: DCL
  replaces layers whose output next meets a ReLU (the paper's FC layers, ``z = relu(theta^T x)``), and this
  convolution's output goes through BN and ReLU before anything else. The block's *second* convolution, of
  the same size, feeds the residual sum directly: there the fused output, at least 0.1 everywhere, could
  only add to the sum (``replace_with_dcl`` warns about such layers). It is also the network's largest
  filter bank at the top, the kind of layer DCL is for ("a convolutional layer with a large number of
  filters, e.g. the fully connected layers"); 1/4 of a 10-way classifier (SVHN, CIFAR-10) is not a whole
  number of filters; and the paper's own study (Sec. 4.1.3) found DCL on the output layer unstable and kept
  only the hidden position. Sizes (10 classes): WRN-16-4 replaces 589,824 weights by 2 x (9 x 256 x 64 +
  64 x 256) = 327,680, 2,748,890 -> 2,486,746 parameters (9.55% fewer weights); WRN-16-8 replaces 2,359,296
  by 1,310,720, 10,961,370 -> 9,912,794. ``layer="fc"`` gives the literal reading (the classifier, ceil(K/4)
  filters per branch). The width is not stated. WRN-16-4 is the default: the narrower of the two WRN-16s,
  and the paper's WRN errors (5.54 / 25.52 on CIFAR-10 / 100) are high for a WRN-16, which argues against the
  wider one. ``widen_factor=8`` builds the WRN-16-8 version.
* ``dcl_alexnet`` (vs ``alexnet_caffe``): fc6 (9216 -> 4096) -> 2 branches of 1024: exactly 10,485,760 fewer
  weights, the paper's 16.82%.

DCL models have one head: train mode returns a 1-tuple, ``collab_loss`` is cross-entropy (``{"ce": ...}``).
``replace_with_dcl(model, "fc6", branches=2, width=1024)`` puts a DCL module into any model in place of a
named ``nn.Linear`` or ``nn.Conv2d``; ``DCLModel(backbone, layer, ...)`` wraps the result in the contract.

**timm's interface.** ``DCLModule`` is registered as an FX leaf (timm's ``register_notrace_module``): a traced
model calls it whole, so a stochastic draw happens at run time, not once at tracing. Its eval forward is
TorchScript-able and exportable; the fusion's values come from one function whether or not autograd runs
through the ``autograd.Function``. ``deterministic_mode()`` fuses every branch for a training step
(the "D" counterpart of an "S" model); ``parameters_left_unused()`` names the branches a step did not draw.
"""

if __name__ == "__main__":  # ``python -m collab_zoo.methods.dcl``: use the package's copy, registered once
    from collab_zoo.methods.dcl import main

    raise SystemExit(main())

import contextlib
import math
import operator
import re
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import timm
import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.flop_counter import FlopCounterMode

from ..backbones.bignet import CIFAR10_MEAN, CIFAR10_STD
from ..backbones.staged import StagedNet, init_conv_bn
from ..builder import build_zoo_model
from ..contract import (BackboneWrapper, Heads, LossParts, classifier_module_name, cross_entropy_loss, heads_of,
                        inherit_conformance_exemptions, is_tracing)
from ..errors import IncompatibleConfigError
from ..registry import base_cfg, cifar_cfg, mnist_cfg, zoo_default_cfgs, zoo_model

__all__ = [
    "DCLModule", "DCLBranch", "DCLModel", "replace_with_dcl", "dcl_fuse", "dcl_fuse_pairs", "default_eps",
    "branch_widths", "lenet_variant", "MODES", "ComplexityRow", "complexity_rows", "format_complexity_table", "main",
]

MODES = ("deterministic", "stochastic")
MAPPING_INITS = ("positive", "signed")
# Per-factor derivatives of the fusion are capped at e**64 (~6e27): far beyond any useful gradient, and
# small enough that an upstream gradient times it stays finite in float32 and bfloat16.
_LOG_GRAD_CAP = 64.0
_GRAD_CAP = math.exp(_LOG_GRAD_CAP)


# --- concept fusion ------------------------------------------------------------------------------------------

def default_eps(num_factors: int) -> float:
    """The paper's eps = 10**-T for a fusion of T factors (so the floor eps**(1/T) is 0.1 for every T)."""
    return 10.0 ** (-num_factors)


# Inputs of at most float32's range (float32, bfloat16, float16: max ~3.4e38) multiply exactly in float64 for up
# to 8 factors (3.4e38 ** 8 ~ 1.8e307 < float64's ~1.8e308); wider inputs or more factors take the log domain.
# The bound is written inline below: TorchScript cannot read a module-level int.


def _fuses_linearly(factors: Tensor) -> bool:
    return factors.dtype != torch.float64 and factors.shape[0] <= 8


def _exclusive_sum(logs: Tensor) -> Tensor:
    """``sum_{s != t} logs[s]`` for every t, without subtracting (``-inf - -inf`` would be nan)."""
    zero = torch.zeros_like(logs[:1])
    before = torch.cumsum(torch.cat([zero, logs[:-1]]), dim=0)
    after = torch.cumsum(torch.cat([logs[1:], zero]).flip(0), dim=0).flip(0)
    return before + after


def _exclusive_product(values: Tensor) -> Tensor:
    """``prod_{s != t} values[s]`` for every t, from prefix and suffix products (no division: 0 / 0 at a silent
    branch would be nan)."""
    if values.shape[0] == 2:  # the paper's usual two branches: the product of the others is the other one
        return values.flip(0)
    one = torch.ones_like(values[:1])
    before = torch.cumprod(torch.cat([one, values[:-1]]), dim=0)
    after = torch.cumprod(torch.cat([values[1:], one]).flip(0), dim=0).flip(0)
    return before * after


def _root_of_product_logs(factors: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """The log-domain forward: ``log v_t`` and ``log(prod v + eps)``, in float64 (float32 logs of values near
    float32's limit would lose five digits of the result)."""
    logs = torch.log(factors.to(torch.float64))                                        # -inf where v_t = 0
    log_eps = torch.tensor(math.log(eps), dtype=logs.dtype, device=logs.device)
    log_total = torch.logaddexp(logs.sum(0), log_eps)                            # log(prod v + eps)
    return logs, log_total


def _is_float32_pair(factors: Tensor) -> bool:
    return factors.shape[0] == 2 and factors.dtype == torch.float32


def _may_branch_on_values() -> bool:
    """Eager code and TorchScript may choose a formula from the values; a graph torch.compile or torch.export
    traces cannot (a data-dependent branch breaks it), so it takes the formula that is right for every value."""
    if torch.jit.is_scripting():
        return True
    else:
        return not (torch.compiler.is_compiling() or torch.compiler.is_exporting())


def _pair_products_fit(factors: Tensor) -> bool:
    """Whether every product of two of these float32 responses fits float32: each at most 2**63, so a product
    is at most 2**126 (float32 ends below 2**128). Asked only of CPU tensors: on an accelerator, reading a value
    makes the host wait for the device (once per layer and step), which costs more than the general formula;
    meta tensors (FLOP and shape counts) have no values."""
    if factors.device.type != "cpu" or not _may_branch_on_values():
        return False
    return bool(factors.amax() <= 2.0 ** 63)


def _root_of_members(first: Tensor, second: Tensor, eps: float, products_fit: bool) -> Tensor:
    """``(v_i v_j + eps) ** (1/2)`` of float32 responses, in float32, within a few float32 rounding steps of the
    float64 value. Where the products fit float32 (every ordinary response), ``sqrt(v_i v_j + eps)``: one
    multiply, add and root, a third of the time of the general form, which matters because the stochastic
    mode's test-time mean runs it for every pair on every evaluation. Otherwise ``hypot(sqrt(v_i) sqrt(v_j),
    sqrt(eps))``, which never forms the product. The autograd pair, the no-grad pair and the test-time mean all
    come here, so they give the same values."""
    if products_fit:
        return torch.mul(first, second).add_(eps).sqrt_()
    return _hypot_floor(first.sqrt() * second.sqrt(), eps)


def _root_of_pair(factors: Tensor, eps: float) -> Tensor:
    """``(v_0 v_1 + eps) ** (1/2)`` of two float32 responses stacked on dim 0 (see ``_root_of_members``); on
    LeNet's FC500 float64 casts and ``pow`` would cost about a tenth of the whole forward."""
    return _root_of_members(factors[0], factors[1], eps, _pair_products_fit(factors))


def _hypot_floor(root_of_product: Tensor, eps: float) -> Tensor:
    return torch.hypot(root_of_product, torch.full_like(root_of_product[:1], math.sqrt(eps)))


def _root_of_product_value(factors: Tensor, eps: float) -> Tensor:
    """``(prod v + eps) ** (1/T)``: two float32 factors by ``_root_of_pair``; otherwise in float64 linearly where
    the product cannot overflow, else from logs. One function for the autograd path, the no-grad path and
    TorchScript."""
    num = factors.shape[0]
    if _is_float32_pair(factors):
        return _root_of_pair(factors, eps)
    if _fuses_linearly(factors):
        return (factors.to(torch.float64).prod(0) + eps).pow(1.0 / num)
    _, log_total = _root_of_product_logs(factors, eps)
    return torch.exp(log_total / num)


class _RootOfProduct(torch.autograd.Function):
    """``(prod_t v_t + eps) ** (1/T)`` over dim 0 of non-negative ``factors`` [T, ...], with the derivative
    ``dz/dv_t = (1/T) (P + eps)**(1/T - 1) prod_{s != t} v_s`` computed directly (no ``0 * inf`` at a silent
    branch) and capped at e**64 per factor: linearly in float64 for up to 8 factors of float32's range, from
    logs otherwise (float64 inputs, whose products could overflow even float64)."""

    @staticmethod
    def forward(ctx, factors: Tensor, eps: float) -> Tensor:
        ctx.factor_dtype = factors.dtype
        ctx.pair = _is_float32_pair(factors)
        ctx.linear = _fuses_linearly(factors)
        num = factors.shape[0]
        if ctx.pair:
            # The output itself is not saved: a caller may change it in place (an inplace ReLU after the layer);
            # backward recomputes it from the factors, by the same formula.
            ctx.eps = eps
            ctx.save_for_backward(factors)
            return _root_of_pair(factors, eps)
        if ctx.linear:
            wide = factors.to(torch.float64)
            total = wide.prod(0) + eps
            ctx.save_for_backward(wide, total)
            return total.pow(1.0 / num)
        logs, log_total = _root_of_product_logs(factors, eps)
        ctx.save_for_backward(logs, log_total)
        return torch.exp(log_total / num)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_fused: Tensor):
        if ctx.pair:
            # T = 2: dz/dv_t = (1/2) (P + eps)**(-1/2) v_other = v_other / (2 z); z >= sqrt(eps) > 0, and a
            # quotient past float32's range becomes inf, which the cap brings back.
            (saved,) = ctx.saved_tensors
            factor_grad = (saved.flip(0) / (2.0 * _root_of_pair(saved, ctx.eps))).clamp_(max=_GRAD_CAP)
        else:
            saved, total = ctx.saved_tensors
            num = saved.shape[0]
            if ctx.linear:
                factor_grad = (_exclusive_product(saved) * (total.pow(1.0 / num - 1.0) / num)).clamp_(
                    max=_GRAD_CAP)
            else:
                # log dz/dv_t = log(1/T) + (1/T - 1) log(P + eps) + sum_{s != t} log v_s
                log_grad = _exclusive_sum(saved) + (1.0 / num - 1.0) * total - math.log(num)
                factor_grad = torch.exp(log_grad.clamp(max=_LOG_GRAD_CAP))
        return (grad_fused.to(factor_grad.dtype).unsqueeze(0) * factor_grad).to(ctx.factor_dtype), None


def _as_factors(responses: Union[Tensor, Sequence[Tensor]]) -> Tensor:
    return responses if isinstance(responses, Tensor) else torch.stack(list(responses))


def _root_of_product(factors: Tensor, eps: float) -> Tensor:
    """Through the autograd Function when a gradient will flow, else its forward alone (the same values; what
    TorchScript, torch.export and an inference pass run)."""
    if torch.jit.is_scripting():
        return _root_of_product_value(factors, eps)
    else:
        if factors.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_exporting():
            return _RootOfProduct.apply(factors, eps)
        return _root_of_product_value(factors, eps)


def dcl_fuse(responses: Union[Tensor, Sequence[Tensor]], eps: Optional[float] = None) -> Tensor:
    """DCL's concept fusion ``(prod_t v_t + eps) ** (1/T)`` of T non-negative responses (a sequence, or a
    tensor with the branches on dim 0); eps defaults to 10**-T. Returns the responses' dtype."""
    factors = _as_factors(responses)
    eps = default_eps(factors.shape[0]) if eps is None else float(eps)
    return _root_of_product(factors, eps).to(factors.dtype)


def _pair_indices(num: int) -> Tuple[List[int], List[int]]:
    """First and second members of every pair i < j, in itertools.combinations order."""
    first: List[int] = []
    second: List[int] = []
    for i in range(num):
        for j in range(i + 1, num):
            first.append(i)
            second.append(j)
    return first, second


def _fuse_pairs(factors: Tensor, eps: float) -> Tensor:
    first, second = _pair_indices(factors.shape[0])
    first_index = torch.tensor(first, dtype=torch.long, device=factors.device)
    second_index = torch.tensor(second, dtype=torch.long, device=factors.device)
    if factors.dtype == torch.float32 and not (factors.requires_grad and torch.is_grad_enabled()):
        # No gradient wanted (an inference pass): the pairs' members picked out once and fused by the function
        # the autograd path's _root_of_pair calls, deciding from the same values (every response belongs to a
        # pair), so the same results without stacking the pairs first.
        return _root_of_members(factors.index_select(0, first_index), factors.index_select(0, second_index), eps,
                                _pair_products_fit(factors)).mean(0)
    pairs = torch.stack([factors.index_select(0, first_index), factors.index_select(0, second_index)])
    return _root_of_product(pairs, eps).mean(0).to(factors.dtype)


def dcl_fuse_pairs(responses: Union[Tensor, Sequence[Tensor]], eps: Optional[float] = None) -> Tensor:
    """The stochastic mode's test-time output: the mean over all C(T, 2) pairs (i < j) of
    ``(v_i v_j + eps) ** (1/2)``, eps defaulting to 10**-2, from one response per branch."""
    factors = _as_factors(responses)
    if factors.shape[0] < 2:
        raise IncompatibleConfigError(f"fusing pairs needs at least 2 branch responses, got {factors.shape[0]}.")
    eps = default_eps(2) if eps is None else float(eps)
    return _fuse_pairs(factors, eps)


# --- the module ----------------------------------------------------------------------------------------------

def branch_widths(out_channels: int, branches: int, width: Union[int, Sequence[int], None] = None,
                  width_ratio: Optional[float] = None) -> List[int]:
    """Filters per branch (M_t): ``width`` (one int for all, or one per branch) or ``width_ratio`` of the
    replaced layer's ``out_channels``, rounded up (1/4 of 10 classes is 3 filters)."""
    if branches < 2:
        raise IncompatibleConfigError(f"DCL fuses at least 2 branches, got branches={branches}.")
    if (width is None) == (width_ratio is None):
        raise IncompatibleConfigError(
            "give DCL exactly one of width (filters per branch, e.g. width=1024) or width_ratio (a fraction of "
            f"the replaced layer's {out_channels} filters, e.g. width_ratio=0.25); got width={width!r}, "
            f"width_ratio={width_ratio!r}.")
    if width_ratio is not None:
        if not 0 < width_ratio <= 1:
            raise IncompatibleConfigError(f"width_ratio must be in (0, 1], got {width_ratio}.")
        widths = [max(1, math.ceil(out_channels * width_ratio - 1e-9))] * branches
    elif isinstance(width, int):
        widths = [width] * branches
    else:
        widths = [int(w) for w in width]
        if len(widths) != branches:
            raise IncompatibleConfigError(f"width lists {len(widths)} branch widths for branches={branches}.")
    if any(w < 1 for w in widths):
        raise IncompatibleConfigError(f"every branch needs at least one filter, got widths {widths}.")
    return widths


class DCLBranch(nn.Module):
    """One branch: the filters ``theta_t`` (the replaced layer's geometry, M_t outputs), then the per-position
    mapping ``W_t`` to K2 channels; ``v_t = relu(W_t relu(theta_t * x))``."""

    def __init__(self, filters: nn.Module, mapping: nn.Module, branch_act: bool = True):
        super().__init__()
        self.filters = filters
        self.mapping = mapping
        self.branch_act = branch_act

    def forward(self, x: Tensor) -> Tensor:
        y = self.filters(x)
        if self.branch_act:
            y = F.relu(y)
        return F.relu(self.mapping(y))


@register_notrace_module  # FX calls it whole: a stochastic draw must happen when the graph runs
class DCLModule(nn.Module):
    """A DCL module in place of a ``K1 -> K2`` linear layer (``kernel_size=None``, inputs ``[..., K1]``) or 2-d
    convolution (inputs ``[B, K1, H, W]``). ``widths``: the filters of each branch, M_1..M_T."""

    __jit_unused_properties__ = ["num_branches", "widths", "leaves_branches_unused"]

    def __init__(self, in_channels: int, out_channels: int, widths: Sequence[int], *,
                 kernel_size: Union[int, Tuple[int, int], None] = None, stride: Union[int, Tuple[int, int]] = 1,
                 padding: Union[int, str, Tuple[int, int]] = 0, dilation: Union[int, Tuple[int, int]] = 1,
                 padding_mode: str = "zeros", mode: str = "deterministic", eps: Optional[float] = None,
                 branch_act: bool = True, bias: bool = True, mapping_init: str = "positive", device=None,
                 dtype=None):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise IncompatibleConfigError(f"DCL needs at least 2 branches of at least 1 filter each, got {widths}.")
        if mode not in MODES:
            raise IncompatibleConfigError(f"DCL mode must be one of {MODES} (the paper's D and S), got {mode!r}.")
        if eps is not None and not eps > 0:
            raise IncompatibleConfigError(f"eps must be positive (it bounds the root's gradient), got {eps}.")
        if mapping_init not in MAPPING_INITS:
            raise IncompatibleConfigError(f"mapping_init must be one of {MAPPING_INITS}, got {mapping_init!r}.")
        self.mapping_init = mapping_init
        self.in_channels, self.out_channels = in_channels, out_channels
        if isinstance(kernel_size, int):
            kernel_size = (kernel_size, kernel_size)
        self.kernel_size = None if kernel_size is None else tuple(kernel_size)
        self.mode, self.eps, self.branch_act = mode, eps, branch_act
        factory = dict(device=device, dtype=dtype)
        branches = []
        for width in widths:
            if kernel_size is None:
                filters = nn.Linear(in_channels, width, bias=bias, **factory)
                mapping = nn.Linear(width, out_channels, bias=bias, **factory)
            else:
                filters = nn.Conv2d(in_channels, width, kernel_size, stride, padding, dilation, bias=bias,
                                    padding_mode=padding_mode, **factory)
                mapping = nn.Conv2d(width, out_channels, 1, bias=bias, **factory)
            branches.append(DCLBranch(filters, mapping, branch_act))
        self.branches = nn.ModuleList(branches)
        self.last_active: Tuple[int, ...] = tuple(range(len(widths)))
        self.apply_mapping_init()

    @torch.no_grad()
    def apply_mapping_init(self) -> None:
        """``mapping_init="positive"``: each mapping ``W_t`` keeps its initial magnitudes with the signs dropped,
        so ``v_t = relu(W_t relu(theta_t x))`` is positive wherever any of the branch's filters fires (scaled by
        ``1 / sqrt(M_t)`` to keep the responses' size). With signed
        weights each v_t is zero for about half of the units, and a fused unit is at the floor (0.1) unless every
        branch is positive there: about 75% (T = 2) or 87% (T = 3) of the units at the start, which get no
        gradient into any branch. ``"signed"`` keeps the initialisation as drawn. Call again after re-drawing
        the weights (``DCLModel`` does, after the backbone's own initialisation)."""
        if self.mapping_init == "positive":
            for branch in self.branches:
                weight = branch.mapping.weight
                # A sum of M_t positive terms grows like M_t where a signed one grows like sqrt(M_t): dividing by
                # sqrt(M_t) keeps the responses at about the scale the signed weights give.
                weight.abs_().div_(math.sqrt(weight.shape[1]))

    @classmethod
    def replacing(cls, layer: nn.Module, branches: int = 2, width: Union[int, Sequence[int], None] = None,
                  width_ratio: Optional[float] = None, mode: str = "deterministic", eps: Optional[float] = None,
                  branch_act: bool = True, bias: Optional[bool] = None, mapping_init: str = "positive"
                  ) -> "DCLModule":
        """A DCL module with the geometry of ``layer`` (an ``nn.Linear`` or ungrouped ``nn.Conv2d``), on its
        device and dtype. ``bias=None`` keeps the layer's choice."""
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):  # before reading .weight, which other layers lack
            raise IncompatibleConfigError(f"DCL replaces an nn.Linear or nn.Conv2d; got {type(layer).__name__}.")
        factory = dict(device=layer.weight.device, dtype=layer.weight.dtype)
        bias = (layer.bias is not None) if bias is None else bias
        if isinstance(layer, nn.Linear):
            widths = branch_widths(layer.out_features, branches, width, width_ratio)
            return cls(layer.in_features, layer.out_features, widths, mode=mode, eps=eps, branch_act=branch_act,
                       bias=bias, mapping_init=mapping_init, **factory)
        if layer.groups != 1:
            raise IncompatibleConfigError(
                f"DCL branches are dense convolutions; this Conv2d has groups={layer.groups}. Replace an "
                "ungrouped convolution (e.g. build AlexNet with grouped=False).")
        widths = branch_widths(layer.out_channels, branches, width, width_ratio)
        return cls(layer.in_channels, layer.out_channels, widths, kernel_size=layer.kernel_size,
                   stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                   padding_mode=layer.padding_mode, mode=mode, eps=eps, branch_act=branch_act, bias=bias,
                   mapping_init=mapping_init, **factory)

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    @property
    def widths(self) -> List[int]:
        return [b.mapping.in_features if isinstance(b.mapping, nn.Linear) else b.mapping.in_channels
                for b in self.branches]

    @property
    def leaves_branches_unused(self) -> bool:
        """A stochastic training step runs 2 of the T branches; with T > 2 the rest get no gradient."""
        return self.mode == "stochastic" and self.num_branches > 2

    def fusion_eps(self, num_factors: int) -> float:
        return default_eps(num_factors) if self.eps is None else self.eps

    def responses(self, x: Tensor, indices: Optional[Iterable[int]] = None) -> Tensor:
        """The branch responses v_t, stacked on dim 0 (every branch, or those listed)."""
        indices = range(self.num_branches) if indices is None else indices
        return torch.stack([self.branches[i](x) for i in indices])

    def draw_pair(self) -> Tuple[int, int]:
        """Two distinct branches, from torch's default CPU generator (``torch.manual_seed`` repeats them)."""
        first, second = torch.randperm(self.num_branches, device="cpu")[:2].tolist()
        return (first, second) if first < second else (second, first)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._fuse_all(x)
        else:
            if self.mode == "stochastic" and self.training:
                self.last_active = self.draw_pair()
                return dcl_fuse(self.responses(x, self.last_active), self.fusion_eps(2))
            self.last_active = tuple(range(self.num_branches))
            return self._fuse_all(x)

    def _fuse_all(self, x: Tensor) -> Tensor:
        """Every branch: the deterministic fusion, or the stochastic mode's test-time mean over all pairs."""
        outputs: List[Tensor] = []
        for branch in self.branches:
            outputs.append(branch(x))
        responses = torch.stack(outputs)
        eps = self.eps
        if self.mode == "stochastic":
            return _fuse_pairs(responses, default_eps(2) if eps is None else eps)
        num = len(outputs)
        factors = responses
        return _root_of_product(factors, default_eps(num) if eps is None else eps).to(factors.dtype)

    def extra_repr(self) -> str:
        kind = "linear" if self.kernel_size is None else f"conv {self.kernel_size}"
        eps = "10^-T" if self.eps is None else f"{self.eps:g}"
        return (f"{self.in_channels} -> {self.out_channels}, {kind}, widths={self.widths}, mode={self.mode}, "
                f"eps={eps}, branch_act={self.branch_act}, mapping_init={self.mapping_init}")


def _named_replaceable_layers(model: nn.Module) -> List[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n]


_SUMS = {operator.add, operator.iadd, torch.add, "add", "add_"}


def feeds_a_sum(model: nn.Module, name: str) -> Optional[bool]:
    """Whether the output of the layer ``name`` goes straight into an addition (a residual sum) in ``model``'s
    forward, read from a torch.fx trace; None where the model does not trace."""
    try:
        graph = torch.fx.Tracer().trace(model)
    except Exception:  # data-dependent control flow, shape checks on real values: no answer
        return None
    for node in graph.nodes:
        if node.op == "call_module" and node.target == name:
            return any((user.op in ("call_function", "call_method")) and user.target in _SUMS for user in node.users)
    return None


def replace_with_dcl(model: nn.Module, name: str, branches: int = 2, width: Union[int, Sequence[int], None] = None,
                     width_ratio: Optional[float] = None, mode: str = "deterministic", eps: Optional[float] = None,
                     branch_act: bool = True, bias: Optional[bool] = None, mapping_init: str = "positive"
                     ) -> DCLModule:
    """Put a DCL module in place of the ``nn.Linear`` / ``nn.Conv2d`` called ``name`` (a dotted module name)
    inside ``model``, in place; returns the new module (freshly initialised, on the layer's device/dtype).

    ``replace_with_dcl(model, "fc6", branches=2, width=1024)``. A stochastic module with more than 2
    branches marks ``model.leaves_parameters_unused = True`` (the contract's flag for data-parallel wrappers).

    Warns when the layer's output feeds a sum directly (a residual block's last convolution): the fused
    output is at least the floor ``eps ** (1/T)`` (0.1) everywhere, so such a branch can only add to the sum,
    where the replaced layer could also subtract. DCL belongs where the output next meets a ReLU (or BN and
    ReLU), as the paper's FC layers do.
    """
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        candidates = _named_replaceable_layers(model)
        shown = ", ".join(candidates[-12:])
        raise IncompatibleConfigError(
            f"{type(model).__name__} has no layer named {name!r}. Its Linear/Conv2d layers include (last "
            f"{min(12, len(candidates))}): {shown}.") from None
    if isinstance(layer, DCLModule):
        raise IncompatibleConfigError(f"{name!r} is already a DCL module.")
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        raise IncompatibleConfigError(
            f"{name!r} is a {type(layer).__name__}; DCL replaces an nn.Linear or nn.Conv2d. Candidates: "
            f"{', '.join(_named_replaceable_layers(model)[-12:])}.")
    if feeds_a_sum(model, name):
        warnings.warn(f"DCL in place of {name!r}: that layer's output goes straight into a sum (a residual "
                      "connection). DCL's fused output is at least its floor (0.1) everywhere, so there it can only "
                      "add; replace a layer whose output next goes through a ReLU or BatchNorm + ReLU instead (in a "
                      "pre-activation block, its first convolution).", UserWarning, stacklevel=2)
    module = DCLModule.replacing(layer, branches, width, width_ratio, mode, eps, branch_act, bias, mapping_init)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
    if module.leaves_branches_unused and not isinstance(getattr(type(model), "leaves_parameters_unused", None),
                                                       property):
        model.leaves_parameters_unused = True
    return module


# --- the model -----------------------------------------------------------------------------------------------


def _initialise_like_backbone(backbone: nn.Module, layer: str, module: nn.Module) -> None:
    """New DCL layers start the way the backbone starts its own (Caffe fillers, He-normal, ...)."""
    init_layer = getattr(backbone, "init_layer", None)
    if callable(init_layer):
        init_layer(module, layer)
    elif isinstance(backbone, StagedNet):
        init_conv_bn(module)
    # Anything else keeps PyTorch's default initialisation of the new layers.


class DCLModel(BackboneWrapper):
    """A network with one layer replaced by a DCL module; ``backbone`` keeps its key names under ``backbone.``.

    Single head, cross-entropy. When the replaced layer is the classifier (LeNet's B variants), the
    classifier is a DCL module: ``reset_classifier`` rebuilds it for the new class count, and
    ``classifier_names`` lists all of its layers.
    """

    head_names = ("main",)
    __jit_unused_properties__ = BackboneWrapper.__jit_unused_properties__ + ["dcl_module", "leaves_parameters_unused"]

    def __init__(self, backbone: nn.Module, layer: str, branches: int = 2,
                 width: Union[int, Sequence[int], None] = None, width_ratio: Optional[float] = None,
                 mode: str = "deterministic", eps: Optional[float] = None, branch_act: bool = True,
                 bias: Optional[bool] = None, mapping_init: str = "positive"):
        super().__init__()
        self.backbone = backbone
        self.layer = layer
        self.dcl_options = dict(branches=branches, width=width, width_ratio=width_ratio, mode=mode, eps=eps,
                                branch_act=branch_act, bias=bias, mapping_init=mapping_init)
        self.replaces_classifier = layer == classifier_module_name(backbone)
        if self.replaces_classifier and getattr(backbone, "num_classes", 1) <= 0:
            raise IncompatibleConfigError(
                f"DCL on the classifier ({layer!r}) needs num_classes > 0; this model was built without a classifier.")
        self._install()

    def _install(self) -> None:
        module = replace_with_dcl(self.backbone, self.layer, **self.dcl_options)
        _initialise_like_backbone(self.backbone, self.layer, module)
        module.apply_mapping_init()  # after the backbone's own initialisation drew the weights anew

    @property
    def dcl_module(self) -> Optional[DCLModule]:
        """The DCL module (None once the layer is pruned away, e.g. for ``features_only``)."""
        try:
            module = self.backbone.get_submodule(self.layer)
        except AttributeError:
            return None
        return module if isinstance(module, DCLModule) else None

    @property
    def leaves_parameters_unused(self) -> bool:  # the contract's flag, from the module's current mode
        module = self.dcl_module
        return module is not None and module.leaves_branches_unused

    # -- timm's interface: the backbone's (BackboneWrapper), plus the DCL layer when it is the classifier ----
    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        if self.replaces_classifier and num_classes > 0:
            self._install()

    def classifier_names(self) -> Tuple[str, ...]:
        module = self.dcl_module
        if self.replaces_classifier and module is not None:
            return tuple(f"backbone.{self.layer}.branches.{i}.{part}"
                         for i in range(module.num_branches) for part in ("filters", "mapping"))
        name = self.get_classifier(name_only=True)
        return (name,) if name else ()

    def _dcl_modules(self) -> List[Tuple[str, "DCLModule"]]:
        return [(name, m) for name, m in self.named_modules() if isinstance(m, DCLModule)]

    @contextlib.contextmanager
    def deterministic_mode(self):
        """Fuse every branch in each training step (the paper's "D" counterpart of an "S" model)."""
        modes = [(m, m.mode) for _, m in self._dcl_modules()]
        try:
            for module, _ in modes:
                module.mode = "deterministic"
            yield
        finally:
            for module, mode in modes:
                module.mode = mode

    def parameters_left_unused(self) -> Set[str]:
        """The branches the last forward did not run (a stochastic step's undrawn ones)."""
        unused: Set[str] = set()
        for name, module in self._dcl_modules():
            for index, branch in enumerate(module.branches):
                if index not in module.last_active:
                    unused |= {f"{name}.branches.{index}.{p}" for p, _ in branch.named_parameters()}
        return unused

    # -- the contract -------------------------------------------------------------------------------------
    def forward_heads(self, x: Tensor) -> Heads:
        return (self.backbone(x),)

    def forward_inference(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def collab_loss(self, outputs: Heads, target: Tensor,
                    sample_weight: Optional[Tensor] = None) -> Tuple[Tensor, LossParts]:
        """Cross-entropy of the one head. Its only term is per-sample, reduced with ``weighted_mean`` under
        ``sample_weight`` ([B]); DCL has no term that is not per-sample."""
        heads = heads_of(outputs)
        if len(heads) != 1:
            raise IncompatibleConfigError(f"DCL models have one head; collab_loss got {len(heads)} outputs.")
        if sample_weight is not None and sample_weight.shape != (target.shape[0],):
            raise IncompatibleConfigError(
                f"sample_weight must hold one weight per sample, shape [{target.shape[0]}]; got "
                f"{tuple(sample_weight.shape)}.")
        return cross_entropy_loss(heads, target, sample_weight)


# --- the paper's LeNet variants ------------------------------------------------------------------------------

_LENET_LAYERS = {"A": "fc1", "B": "fc"}
_VARIANT = re.compile(r"^([AB])(\d+)([DS]?)$")


def lenet_variant(variant: str) -> Dict[str, Any]:
    """The paper's DCL-A2 ... DCL-B3S (Sec. 4.1.2) as ``layer``, ``branches`` and ``mode``: A = FC500, B = the
    output layer; 2 = two branches, 3D / 3S = three, deterministic / stochastic (A4S etc. also parse)."""
    match = _VARIANT.match(str(variant).upper())
    if not match:
        raise IncompatibleConfigError(
            f"unknown DCL LeNet variant {variant!r}; the paper's are A2, A3D, A3S (DCL on FC500) and B2, B3D, B3S "
            "(DCL on the output layer).")
    position, branches, strategy = match.group(1), int(match.group(2)), match.group(3)
    if branches < 2:
        raise IncompatibleConfigError(f"variant {variant!r}: DCL needs at least 2 branches.")
    if branches > 2 and not strategy:
        raise IncompatibleConfigError(
            f"variant {variant!r}: with {branches} branches say D (deterministic) or S (stochastic), e.g. "
            f"{position}{branches}S.")
    mode = "stochastic" if strategy == "S" else "deterministic"
    return dict(layer=_LENET_LAYERS[position], branches=branches, mode=mode)


# --- registration --------------------------------------------------------------------------------------------

default_cfgs = zoo_default_cfgs({
    # pool_size: the backbone's unpooled features at the default input size, timm's meaning
    "dcl_lenet": mnist_cfg("backbone.features.conv1", "backbone.fc", num_classes=100, fixed_input_size=True,
                           pool_size=(4, 4)),
    "dcl_lenet_cifar": cifar_cfg("backbone.features.conv1", "backbone.fc", fixed_input_size=True, pool_size=(4, 4)),
    "dcl_bignet": base_cfg("backbone.features.conv1_1", "backbone.fc", num_classes=10, input_size=(3, 24, 24),
                           mean=CIFAR10_MEAN, std=CIFAR10_STD, crop_pct=0.75, pool_size=(3, 3)),
    "dcl_wrn16": cifar_cfg("backbone.stem", "backbone.fc", pool_size=(8, 8)),
    "dcl_alexnet": base_cfg("backbone.features.conv1", "backbone.fc8", input_size=(3, 227, 227),
                            crop_pct=227 / 256, fixed_input_size=True, pool_size=(6, 6)),
})

_DCL_OPTIONS = ("layer", "branches", "width", "width_ratio", "mode", "eps", "branch_act", "bias", "mapping_init")


class _DCLBuilder:
    """Builds the baseline from the entrypoint's other keyword arguments, then puts DCL into it."""

    def __init__(self, baseline: str, dcl_defaults: Dict[str, Any]):
        self.baseline, self.dcl_defaults = baseline, dcl_defaults

    def __call__(self, num_classes: int, in_chans: int = 3, **kwargs) -> DCLModel:
        chosen = {k: kwargs.pop(k) for k in list(kwargs) if k in _DCL_OPTIONS}
        options = dict(self.dcl_defaults)
        if "width" in chosen:
            options.pop("width_ratio", None)
        if "width_ratio" in chosen:
            options.pop("width", None)
        options.update(chosen)
        backbone = timm.create_model(self.baseline, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                     **kwargs)
        return DCLModel(backbone, **options)


def _build(variant: str, baseline: str, pretrained: bool, dcl_defaults: Dict[str, Any], **kwargs) -> DCLModel:
    return build_zoo_model(_DCLBuilder(baseline, dcl_defaults), variant, pretrained, **kwargs)


@zoo_model
def dcl_lenet(pretrained: bool = False, variant: str = "A3S", **kwargs) -> DCLModel:
    """Multi-digit MNIST LeNet with DCL; ``variant`` is the paper's A2, A3D, A3S (default), B2, B3D or B3S.
    Branches have 1/5 of the replaced layer's filters (100 of FC500's 500)."""
    options = lenet_variant(variant)
    clash = sorted(set(options) & set(kwargs))
    if clash:
        raise IncompatibleConfigError(
            f"dcl_lenet takes its layer, branch count and mode from variant={variant!r}; drop {clash} or pick "
            "another variant (A2, A3D, A3S, B2, B3D, B3S).")
    return _build("dcl_lenet", "lenet", pretrained, dict(options, width_ratio=1 / 5), **kwargs)


@zoo_model
def dcl_lenet_cifar(pretrained: bool = False, **kwargs) -> DCLModel:
    """SVHN/CIFAR LeNet with FC512 replaced by 2 DCL branches of 128 filters (1/4)."""
    return _build("dcl_lenet_cifar", "lenet_cifar", pretrained, dict(layer="fc1", branches=2, width_ratio=1 / 4),
                  **kwargs)


@zoo_model
def dcl_bignet(pretrained: bool = False, **kwargs) -> DCLModel:
    """BigNet with its first FC (the 256 -> 1024 conv3x3 on the 3x3 map) replaced by 2 branches of 256."""
    return _build("dcl_bignet", "bignet", pretrained, dict(layer="fc1", branches=2, width_ratio=1 / 4), **kwargs)


@zoo_model
def dcl_wrn16(pretrained: bool = False, **kwargs) -> DCLModel:
    """WRN-16-4 (``widen_factor=8``: WRN-16-8) with the last block's first 3x3 conv (``stages.2.1.conv0``, whose
    output goes through BN and ReLU) replaced by 2 DCL branches of 1/4 of its filters; ``layer="fc"`` puts DCL on
    the classifier instead (see the module docstring)."""
    return _build("dcl_wrn16", "wrn16_4", pretrained,
                  dict(layer="stages.2.1.conv0", branches=2, width_ratio=1 / 4), **kwargs)


@zoo_model
def dcl_alexnet(pretrained: bool = False, **kwargs) -> DCLModel:
    """Caffe AlexNet (ungrouped) with fc6 replaced by 2 DCL branches of 1024 filters (51,898,728 parameters)."""
    return _build("dcl_alexnet", "alexnet_caffe", pretrained, dict(layer="fc6", branches=2, width=1024), **kwargs)


# Each variant is its baseline with one layer replaced, so it shares the baseline's written conformance exemptions.
for _variant, _baseline in (("dcl_lenet", "lenet"), ("dcl_lenet_cifar", "lenet_cifar"), ("dcl_bignet", "bignet"),
                            ("dcl_wrn16", "wrn16_4"), ("dcl_alexnet", "alexnet_caffe")):
    inherit_conformance_exemptions(_variant, _baseline)


# --- sizes and FLOPs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ComplexityRow:
    """One baseline / DCL pair: parameters (all, and weights = parameters of 2+ dims, the paper's count) and
    forward FLOPs per image (FlopCounterMode: 2 per multiply-add of convs and matmuls; the fusion's few
    elementwise operations are not counted). ``dcl_train_flops`` is a training-mode forward, which runs
    only 2 branches in stochastic mode."""

    baseline: str
    model: str
    config: str
    num_classes: int
    input_size: Tuple[int, int, int]
    baseline_params: int
    dcl_params: int
    baseline_weights: int
    dcl_weights: int
    baseline_flops: int
    dcl_flops: int
    dcl_train_flops: int

    @property
    def weight_reduction(self) -> float:
        """Fraction of the baseline's weights DCL removes (the paper's "16.82% fewer" for AlexNet)."""
        return 1.0 - self.dcl_weights / self.baseline_weights


# (baseline, its kwargs, DCL model, the DCL model's extra kwargs)
COMPLEXITY_PAIRS: Tuple[Tuple[str, Dict[str, Any], str, Dict[str, Any]], ...] = (
    *(("lenet", {}, "dcl_lenet", {"variant": v}) for v in ("A2", "A3D", "A3S", "B2", "B3D", "B3S")),
    ("lenet_cifar", {}, "dcl_lenet_cifar", {}),
    ("bignet", {}, "dcl_bignet", {}),
    ("wrn16_4", {}, "dcl_wrn16", {}),
    ("wrn16_8", {}, "dcl_wrn16", {"widen_factor": 8}),
    ("alexnet_caffe", {}, "dcl_alexnet", {}),
)


def _param_counts(model: nn.Module) -> Tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.dim() > 1)


def forward_flops(model: nn.Module, x: Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


def complexity_rows(pairs: Sequence[Tuple[str, Dict[str, Any], str, Dict[str, Any]]] = COMPLEXITY_PAIRS,
                    device: Union[str, torch.device] = "meta") -> List[ComplexityRow]:
    """Parameters and forward FLOPs of every baseline / DCL pair, at each model's default input size and class
    count. On the meta device (the default) nothing is allocated or computed, so this takes seconds."""
    rows = []
    for baseline_name, baseline_kwargs, model_name, dcl_kwargs in pairs:
        with torch.device(device):
            baseline = timm.create_model(baseline_name, **baseline_kwargs)
            model = timm.create_model(model_name, **baseline_kwargs, **dcl_kwargs)
        input_size = tuple(model.pretrained_cfg["input_size"])
        x = torch.zeros(1, *input_size, device=device)
        base_params, base_weights = _param_counts(baseline)
        params, weights = _param_counts(model)
        base_flops = forward_flops(baseline.eval(), x)
        eval_flops = forward_flops(model.eval(), x)
        train_flops = forward_flops(model.train(), x)
        config = ", ".join(f"{k}={v}" for k, v in dcl_kwargs.items()) or "default"
        rows.append(ComplexityRow(baseline_name, model_name, config, model.num_classes, input_size, base_params,
                                  params, base_weights, weights, base_flops, eval_flops, train_flops))
    return rows


def format_complexity_table(rows: Sequence[ComplexityRow]) -> str:
    header = ("baseline", "DCL model", "config", "classes", "input", "params", "DCL params", "weights -%",
              "MFLOPs", "DCL MFLOPs", "DCL train")
    lines = [header]
    for r in rows:
        lines.append((r.baseline, r.model, r.config, str(r.num_classes), "x".join(map(str, r.input_size)),
                      f"{r.baseline_params:,}", f"{r.dcl_params:,}", f"{100 * r.weight_reduction:.2f}",
                      f"{r.baseline_flops / 1e6:,.1f}", f"{r.dcl_flops / 1e6:,.1f}", f"{r.dcl_train_flops / 1e6:,.1f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) if i < 5 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def main() -> int:
    print("DCL: parameters and forward FLOPs per image, each baseline against its DCL model")
    print(format_complexity_table(complexity_rows()))
    print("weights -% = share of the baseline's weights (tensors of 2+ dims) DCL removes; FLOPs count 2 per "
          "multiply-add; 'DCL train' is a training-mode forward (2 branches in stochastic mode).")
    return 0
