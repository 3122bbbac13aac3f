"""DCL (Deep Collaborative Learning): the module against its formula, the two training strategies, the
replacement helper, the paper's sizes, numerics, and every dcl_* model and baseline through the contract."""
import itertools
import math
import operator
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import collab_zoo
from collab_zoo.contract import CollabModel, head_names_of, heads_of, scores_and_heads, training_round_of
from collab_zoo.errors import IncompatibleConfigError
from collab_zoo.methods.dcl import (COMPLEXITY_PAIRS, DCLModule, complexity_rows, dcl_fuse, dcl_fuse_pairs,
                                    format_complexity_table, lenet_variant, replace_with_dcl)

from conftest import ROOT, subprocess_env


# --- independent arithmetic (numpy, float64) ----------------------------------------------------------------

def _np(t):
    return t.detach().double().numpy()


def _relu(a):
    return np.maximum(a, 0.0)


def _linear_responses(module: DCLModule, x: torch.Tensor) -> np.ndarray:
    """v_t = relu(W_t relu(theta_t x + b) + c) for every branch of a linear DCL module: [T, B, K2]."""
    out = []
    for branch in module.branches:
        y = _np(x) @ _np(branch.filters.weight).T + _np(branch.filters.bias)
        v = _relu(y) @ _np(branch.mapping.weight).T + _np(branch.mapping.bias)
        out.append(_relu(v))
    return np.stack(out)


def _conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """A direct loop convolution of one image [C, H, W] with filters [O, C, k, k]."""
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))
    k = w.shape[-1]
    height, width = (xp.shape[1] - k) // stride + 1, (xp.shape[2] - k) // stride + 1
    out = np.empty((w.shape[0], height, width))
    for i in range(height):
        for j in range(width):
            patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k]
            out[:, i, j] = np.tensordot(w, patch, axes=3) + b
    return out


# --- the module --------------------------------------------------------------------------------------------

def test_linear_module_matches_the_formula_with_unequal_branches():
    torch.manual_seed(0)
    module = DCLModule(6, 5, [3, 2, 4]).eval()          # deterministic, T = 3, eps = 1e-3
    x = torch.randn(7, 6)
    v = _linear_responses(module, x)
    expected = (v[0] * v[1] * v[2] + 1e-3) ** (1 / 3)
    got = _np(module(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert (v.prod(0) > 0).any() and (v.prod(0) == 0).any(), "the check should see both fired and silent units"
    assert np.allclose(got[v.prod(0) == 0], 0.1, rtol=1e-5), "a silent unit sits at the floor eps**(1/T) = 0.1"


def test_fusion_known_answers():
    """Numbers worked out by hand: (prod v + eps) ** (1/T), eps = 10**-T unless given; pairs averaged."""
    fuse = lambda values, **kw: dcl_fuse(torch.tensor(values, dtype=torch.float32)[:, None], **kw).item()
    assert fuse([2.0, 8.0]) == pytest.approx(math.sqrt(16.01), rel=1e-6)
    assert fuse([1.0, 2.0, 4.0]) == pytest.approx(8.001 ** (1 / 3), rel=1e-6)
    assert fuse([0.0, 5.0]) == pytest.approx(0.1, rel=1e-6)
    assert fuse([0.0, 0.0, 0.0, 0.0]) == pytest.approx(0.1, rel=1e-6)
    assert fuse([0.0, 5.0], eps=1e-4) == pytest.approx(0.01, rel=1e-6)
    pairs = dcl_fuse_pairs(torch.tensor([[1.0], [4.0], [9.0]])).item()
    assert pairs == pytest.approx((math.sqrt(4.01) + math.sqrt(9.01) + math.sqrt(36.01)) / 3, rel=1e-6)


def _constant_branches(module: DCLModule, values):
    """Every branch's response set to a constant (mapping weights zero, bias = the value)."""
    with torch.no_grad():
        for branch, value in zip(module.branches, values):
            branch.mapping.weight.zero_()
            branch.mapping.bias.fill_(value)


def test_each_mode_and_eps_infers_by_its_rule():
    x = torch.randn(5, 4)
    v = [1.0, 2.0, 4.0]
    deterministic = DCLModule(4, 3, [2, 2, 2])
    _constant_branches(deterministic, v)
    for train in (True, False):
        np.testing.assert_allclose(_np(deterministic.train(train)(x)), 8.001 ** (1 / 3), rtol=1e-6)

    stochastic = DCLModule(4, 3, [2, 2, 2], mode="stochastic")
    _constant_branches(stochastic, v)
    expected_eval = (math.sqrt(2.01) + math.sqrt(4.01) + math.sqrt(8.01)) / 3    # every pair, eps = 10**-2
    np.testing.assert_allclose(_np(stochastic.eval()(x)), expected_eval, rtol=1e-6)
    torch.manual_seed(14)
    for _ in range(6):
        out = stochastic.train()(x)
        i, j = stochastic.last_active
        np.testing.assert_allclose(_np(out), math.sqrt(v[i] * v[j] + 0.01), rtol=1e-6)

    own_eps = DCLModule(4, 3, [2, 2, 2], eps=1e-6, mode="stochastic").eval()
    _constant_branches(own_eps, [0.0, 0.0, 9.0])
    np.testing.assert_allclose(_np(own_eps(x)), 1e-3, rtol=1e-5)            # sqrt(0 + 1e-6) for every pair
    with torch.no_grad():
        deterministic.mode = "stochastic"     # the same weights read as an S model: the mean over pairs
        np.testing.assert_allclose(_np(deterministic.eval()(x)), expected_eval, rtol=1e-6)


# (model, kwargs, replaced layer, (filters weight shape, mapping weight shape) of every branch): the paper's
# branch sizes written out, not derived from the code: LeNet FC500 on 50 x 4 x 4 inputs, 1/5 -> 100 filters;
# B3S on the 100-way output, 20 each; CIFAR LeNet FC512 on 128 x 4 x 4 inputs, 1/4 -> 128; BigNet's 256 -> 1024 conv3x3, 256 each;
# AlexNet fc6 9216 -> 4096, 1024 each; WRN-16-4's 256 -> 256 conv3x3, 64 each; its 10-way fc, ceil(10/4) = 3.
BRANCH_SHAPES = [
    ("dcl_lenet", dict(variant="A2"), "fc1", [((100, 800), (500, 100))] * 2),
    ("dcl_lenet", dict(variant="A3D"), "fc1", [((100, 800), (500, 100))] * 3),
    ("dcl_lenet", dict(variant="B3S"), "fc", [((20, 500), (100, 20))] * 3),
    ("dcl_lenet_cifar", dict(num_classes=10), "fc1", [((128, 2048), (512, 128))] * 2),
    ("dcl_bignet", dict(), "fc1", [((256, 256, 3, 3), (1024, 256, 1, 1))] * 2),
    ("dcl_alexnet", dict(num_classes=10), "fc6", [((1024, 9216), (4096, 1024))] * 2),
    ("dcl_wrn16", dict(num_classes=10), "stages.2.1.conv0", [((64, 256, 3, 3), (256, 64, 1, 1))] * 2),
    ("dcl_wrn16", dict(num_classes=10, layer="fc"), "fc", [((3, 256), (10, 3))] * 2),
    ("dcl_wrn16", dict(num_classes=10, width=[16, 48]), "stages.2.1.conv0",
     [((16, 256, 3, 3), (256, 16, 1, 1)), ((48, 256, 3, 3), (256, 48, 1, 1))]),
]


@pytest.mark.parametrize("name,kwargs,layer,shapes", BRANCH_SHAPES,
                         ids=[f"{n}-{'-'.join(map(str, k.values())) or 'default'}" for n, k, _, _ in BRANCH_SHAPES])
def test_branch_widths_are_the_papers_filter_counts(name, kwargs, layer, shapes):
    with torch.device("meta"):
        model = collab_zoo.create_model(name, **kwargs)
    module = model.backbone.get_submodule(layer)
    assert isinstance(module, DCLModule)
    assert [(tuple(b.filters.weight.shape), tuple(b.mapping.weight.shape)) for b in module.branches] == shapes


def test_conv_module_matches_the_formula_and_keeps_the_replaced_geometry():
    torch.manual_seed(1)
    original = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    module = DCLModule.replacing(original, branches=2, width=[2, 3]).eval()
    x = torch.randn(2, 3, 5, 5)
    out = module(x)
    assert out.shape == original(x).shape == (2, 4, 3, 3)
    for n in range(2):
        v = []
        for branch in module.branches:
            y = _relu(_conv2d(_np(x[n]), _np(branch.filters.weight), _np(branch.filters.bias), 2, 1))
            w = _np(branch.mapping.weight)[:, :, 0, 0]
            v.append(_relu(np.einsum("oc,chw->ohw", w, y) + _np(branch.mapping.bias)[:, None, None]))
        np.testing.assert_allclose(_np(out[n]), np.sqrt(v[0] * v[1] + 1e-2), rtol=1e-5, atol=1e-7)


def test_without_branch_relu_a_branch_is_one_linear_map():
    torch.manual_seed(2)
    module = DCLModule(6, 5, [3, 3], branch_act=False).eval()
    x = torch.randn(4, 6)
    v = []
    for branch in module.branches:
        y = _np(x) @ _np(branch.filters.weight).T + _np(branch.filters.bias)
        v.append(_relu(y @ _np(branch.mapping.weight).T + _np(branch.mapping.bias)))
    np.testing.assert_allclose(_np(module(x)), np.sqrt(v[0] * v[1] + 1e-2), rtol=1e-5, atol=1e-7)


def test_fusion_gradient_is_the_formulas_derivative():
    torch.manual_seed(3)
    for num in (2, 3, 4):
        factors = (torch.rand(num, 3, 5, dtype=torch.float64) * 2 + 0.05).requires_grad_()
        assert torch.autograd.gradcheck(lambda f: dcl_fuse(f), (factors,))
        naive = (factors.prod(0) + 10.0 ** -num) ** (1 / num)
        weights = torch.randn(3, 5, dtype=torch.float64)
        expected, = torch.autograd.grad((naive * weights).sum(), factors)
        got, = torch.autograd.grad((dcl_fuse(factors) * weights).sum(), factors)
        torch.testing.assert_close(got, expected)


def _log_domain_fusion(factors: np.ndarray, eps: float):
    """The fusion and its capped per-factor derivative as the log-domain version computed them (numpy, float64):
    ``log z = log(prod v + eps) / T``; ``log dz/dv_t = sum_{s != t} log v_s + (1/T - 1) log(P + eps) - log T``,
    capped at 64."""
    num = factors.shape[0]
    with np.errstate(divide="ignore"):
        logs = np.log(factors)
    log_total = np.logaddexp(logs.sum(0), np.log(eps))
    others = np.stack([np.delete(logs, t, axis=0).sum(0) for t in range(num)])
    log_grad = np.minimum(others + (1.0 / num - 1.0) * log_total - np.log(num), 64.0)
    return np.exp(log_total / num), np.exp(log_grad)


@pytest.mark.parametrize("num,dtype", [(2, torch.float32), (3, torch.float32), (4, torch.float32),
                                       (8, torch.float32), (2, torch.bfloat16), (3, torch.bfloat16),
                                       (9, torch.float32),
                                       (3, torch.float64)])
def test_fast_fusion_equals_the_log_domain_version(num, dtype):
    """Values and gradients within 1e-6 relative of the log-domain formula, over silent, ordinary and huge
    responses (the capped derivative included)."""
    torch.manual_seed(30 + num)
    shape = (num, 6, 7)
    scale = torch.tensor([0.0, 1e-3, 1.0, 30.0, 1e12, 1e20])[torch.randint(0, 6, shape)]
    factors = (torch.rand(shape) * scale).to(dtype)
    factors[:, 0, 0] = 0.0                                   # every branch silent: the floor
    factors[0, 1, :] = 0.0                                   # one branch silent, others huge: the cap
    factors[1:, 1, :] = 1e30
    eps = 10.0 ** -num
    expected, expected_grad = _log_domain_fusion(_np(factors), eps)
    assert expected_grad.max() == pytest.approx(np.exp(64.0)), "the case reaches the cap"
    leaf = factors.clone().requires_grad_()
    fused = dcl_fuse(leaf)
    upstream = torch.rand(fused.shape, dtype=torch.float64)
    (fused.double() * upstream).sum().backward()
    rtol = 1e-6 if dtype != torch.bfloat16 else 8e-3   # bf16 results are rounded to its 8-bit mantissa
    np.testing.assert_allclose(_np(fused), expected, rtol=rtol, atol=0)
    np.testing.assert_allclose(_np(leaf.grad), (upstream.numpy() * expected_grad), rtol=max(rtol, 1e-6), atol=0)
    with torch.no_grad():
        np.testing.assert_allclose(_np(dcl_fuse(factors)), _np(fused), rtol=0, atol=0)


def test_pairs_mean_equals_float64_arithmetic_over_silent_ordinary_and_huge_responses():
    """The stochastic mode's test-time mean, in float32 with and without a gradient, within 1e-6 relative of
    ``mean_{i<j} sqrt(v_i v_j + eps)`` done in float64 (products up to 1e60, past float32's range)."""
    torch.manual_seed(41)
    shape = (4, 5, 6)
    scale = torch.tensor([0.0, 1e-3, 1.0, 30.0, 1e12, 1e30])[torch.randint(0, 6, shape)]
    factors = torch.rand(shape) * scale
    factors[:, 0, 0] = 0.0
    wide = _np(factors)
    expected = np.mean([np.sqrt(wide[i] * wide[j] + 1e-2) for i, j in itertools.combinations(range(4), 2)], axis=0)
    assert expected.max() > 1e25, "the case has pairs whose float32 product would overflow"
    with torch.no_grad():
        fast = dcl_fuse_pairs(factors)
    leaf = factors.clone().requires_grad_()
    through_autograd = dcl_fuse_pairs(leaf)
    through_autograd.sum().backward()
    assert fast.dtype == torch.float32 and torch.isfinite(leaf.grad).all()
    np.testing.assert_allclose(_np(fast), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(through_autograd.detach(), fast, rtol=0, atol=0)


def test_ordinary_float32_pairs_take_the_short_formula_and_keep_float64_values_and_gradients():
    """Pairs whose product fits float32 (every response at most 2**63) are fused as sqrt(v_i v_j + eps); the
    values and gradients stay within 1e-6 relative of float64 arithmetic, the no-grad mean equals the autograd
    one exactly, and the switch sits where the float32 product stops fitting: two responses of 2**63 fuse to
    2**63 by the short formula, two of 2**64 (product 2**128, past float32) to 2**64 by the general one."""
    torch.manual_seed(42)
    factors = torch.rand(3, 5, 6) * torch.tensor([0.0, 1e-3, 1.0, 30.0, 1e6])[torch.randint(0, 5, (3, 5, 6))]
    wide = _np(factors)
    expected = np.mean([np.sqrt(wide[i] * wide[j] + 1e-2) for i, j in itertools.combinations(range(3), 2)], axis=0)
    with torch.no_grad():
        fast = dcl_fuse_pairs(factors)
    leaf = factors.clone().requires_grad_()
    through_autograd = dcl_fuse_pairs(leaf)
    through_autograd.sum().backward()
    np.testing.assert_allclose(_np(fast), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(through_autograd.detach(), fast, rtol=0, atol=0)
    # d/dv_t of mean_{i<j} sqrt(v_i v_j + eps): the sum over t's pairs of v_other / (2 z), divided by 3
    expected_grad = np.zeros_like(wide)
    for i, j in itertools.combinations(range(3), 2):
        z = np.sqrt(wide[i] * wide[j] + 1e-2)
        expected_grad[i] += wide[j] / (2 * z) / 3
        expected_grad[j] += wide[i] / (2 * z) / 3
    np.testing.assert_allclose(_np(leaf.grad), expected_grad, rtol=1e-6, atol=0)
    for power in (63, 64):
        pair = torch.full((2, 3), 2.0 ** power)
        with torch.no_grad():
            assert dcl_fuse(pair).tolist() == [2.0 ** power] * 3, f"two responses of 2**{power}"
        assert dcl_fuse(pair.clone().requires_grad_()).tolist() == [2.0 ** power] * 3


def test_stochastic_training_trains_exactly_two_branches_per_step():
    torch.manual_seed(4)
    module = DCLModule(6, 5, [3, 3, 3, 3], mode="stochastic").train()
    calls = [0] * 4
    for i, branch in enumerate(module.branches):
        branch.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    x = torch.randn(8, 6)
    seen = set()
    for _ in range(12):
        module.zero_grad(set_to_none=True)
        calls[:] = [0] * 4
        out = module(x)
        out.sum().backward()
        active = module.last_active
        assert len(set(active)) == 2
        trained = {i for i, b in enumerate(module.branches) if all(p.grad is not None for p in b.parameters())}
        untouched = {i for i, b in enumerate(module.branches) if all(p.grad is None for p in b.parameters())}
        assert trained == set(active) and untouched == set(range(4)) - set(active)
        assert calls == [1 if i in active else 0 for i in range(4)], "the idle branches are not run at all"
        v = _linear_responses(module, x)
        np.testing.assert_allclose(_np(out), np.sqrt(v[active[0]] * v[active[1]] + 1e-2), rtol=1e-5, atol=1e-7)
        seen.add(active)
    assert len(seen) >= 3, "the pair is redrawn every step"

    def pairs(seed):
        torch.manual_seed(seed)
        return [module(x) is not None and module.last_active for _ in range(8)]

    assert pairs(123) == pairs(123), "a seeded run draws the same branches"


def test_stochastic_eval_is_the_mean_over_all_pairs_from_one_pass_per_branch():
    torch.manual_seed(5)
    module = DCLModule(6, 5, [2, 3, 4, 5], mode="stochastic").eval()
    calls = [0] * 4
    for i, branch in enumerate(module.branches):
        branch.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    x = torch.randn(9, 6)
    out = module(x)
    assert calls == [1, 1, 1, 1]
    v = _linear_responses(module, x)
    brute = np.mean([np.sqrt(v[i] * v[j] + 1e-2) for i, j in itertools.combinations(range(4), 2)], axis=0)
    np.testing.assert_allclose(_np(out), brute, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(dcl_fuse_pairs(module.responses(x)), out)


def test_deterministic_mode_trains_all_branches_and_two_branch_modes_agree():
    torch.manual_seed(6)
    module = DCLModule(6, 5, [3, 3, 3]).train()
    x = torch.randn(5, 6)
    module(x).sum().backward()
    assert all(p.grad is not None for p in module.parameters())
    torch.testing.assert_close(module.train()(x), module.eval()(x))
    assert not module.leaves_branches_unused

    pair = DCLModule(6, 5, [3, 3], mode="deterministic")
    stochastic = DCLModule(6, 5, [3, 3], mode="stochastic")
    stochastic.load_state_dict(pair.state_dict())
    for train in (True, False):
        torch.testing.assert_close(stochastic.train(train)(x), pair.train(train)(x))
    assert not stochastic.leaves_branches_unused, "with T = 2 both branches train every step"


def test_zero_and_huge_branch_responses_keep_loss_and_gradients_finite():
    cases = {"silent": (-1e3, -1e3, -1e3), "huge": (1e20, 1e20, 1e20), "mixed": (-1e3, 1e18, 1e18)}
    x = torch.randn(4, 6)
    target = torch.tensor([0, 1, 2, 1])
    for mode in ("deterministic", "stochastic"):
        for name, biases in cases.items():
            torch.manual_seed(7)
            dcl = DCLModule(6, 5, [3, 3, 3], mode=mode)
            with torch.no_grad():
                for branch, b in zip(dcl.branches, biases):
                    branch.mapping.weight.mul_(1e-3)
                    branch.mapping.bias.fill_(b)   # the response is ~b where b > 0, exactly 0 where b < 0
            model = nn.Sequential(dcl, nn.Linear(5, 3))
            for train in (True, False):
                model.train(train).zero_grad(set_to_none=True)
                z = dcl(x)
                loss = F.cross_entropy(model(x).float(), target)
                loss.backward()
                assert torch.isfinite(z).all() and torch.isfinite(loss), (mode, name, train)
                for p in model.parameters():
                    assert p.grad is None or torch.isfinite(p.grad).all(), (mode, name, train)
                if name == "silent":
                    torch.testing.assert_close(z, torch.full_like(z, 0.1))
                if name == "huge" and mode == "deterministic":
                    torch.testing.assert_close(z, torch.full_like(z, 1e20), rtol=1e-4, atol=0)
    v = torch.full((3, 2), 1e20)
    assert torch.isinf((v.prod(0) + 1e-3) ** (1 / 3)).all(), "the naive float32 product would overflow here"


def test_runs_under_bf16_autocast():
    torch.manual_seed(8)
    conv = DCLModule.replacing(nn.Conv2d(4, 8, 3, padding=1), branches=3, width=4, mode="stochastic")
    x = torch.randn(2, 4, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for train in (True, False):
            out = conv.train(train)(x)
            assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()

    model = collab_zoo.create_model("dcl_lenet", variant="A3S", num_classes=10).train()
    images, target = torch.randn(2, 1, 28, 28), torch.tensor([3, 7])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(images)
        loss, parts = model.collab_loss(outputs, target)
    assert outputs[0].dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model.eval()(images)
    assert scores.shape == (2, 10) and torch.isfinite(scores.float()).all()


# --- the replacement helper --------------------------------------------------------------------------------

def test_replace_with_dcl_in_a_timm_resnet():
    torch.manual_seed(9)
    model = timm.create_model("resnet18", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    features_before = model.eval().forward_features(x).shape
    head = replace_with_dcl(model, "fc", branches=2, width=16)
    assert isinstance(model.fc, DCLModule) and head.widths == [16, 16] and head.kernel_size is None
    conv = replace_with_dcl(model, "layer4.0.conv1", branches=3, width=64, mode="stochastic")
    assert isinstance(model.layer4[0].conv1, DCLModule)
    filters = conv.branches[0].filters
    assert (filters.kernel_size, filters.stride, filters.padding) == ((3, 3), (2, 2), (1, 1))
    assert filters.bias is None, "the replaced conv has no bias, so neither do its branches"
    assert model.leaves_parameters_unused, "a stochastic 3-branch module leaves branches without gradient"
    assert model.eval().forward_features(x).shape == features_before
    scores = model(x)
    assert scores.shape == (2, 10) and torch.isfinite(scores).all()
    loss = F.cross_entropy(model.train()(x), torch.tensor([1, 2]))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


class _DCLLeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, DCLModule) or super().is_leaf_module(m, qualname)


def _consumers(model: nn.Module, name: str):
    """What takes the output of the module ``name`` in ``model``'s traced forward: module names or functions."""
    graph = _DCLLeafTracer().trace(model)
    node = next(n for n in graph.nodes if n.op == "call_module" and n.target == name)
    return [u.target for u in node.users]


@pytest.mark.parametrize("widen,params,weights", [(4, 2_486_746, 2_483_120), (8, 9_912_794, 9_905_584)])
def test_wrn16_puts_dcl_where_bn_and_relu_follow_never_into_a_residual_sum(widen, params, weights):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the default placement raises no "feeds a sum" warning
        model = collab_zoo.create_model("dcl_wrn16", widen_factor=widen, num_classes=10)
    assert model.layer == "stages.2.1.conv0"
    assert _consumers(model.backbone, "stages.2.1.conv0") == ["stages.2.1.bn1"]
    base = timm.create_model(f"wrn16_{widen}", num_classes=10)
    assert _consumers(base, "stages.2.1.conv1") == [operator.add], "the other conv of the block feeds the sum"
    k = 64 * widen
    dcl_weights = 2 * (9 * k * (k // 4) + (k // 4) * k)
    assert sum(p.numel() for p in model.dcl_module.parameters()) == dcl_weights
    assert sum(p.numel() for p in model.parameters()) == params
    assert sum(p.numel() for p in model.parameters() if p.dim() > 1) == weights
    assert weights == sum(p.numel() for p in base.parameters() if p.dim() > 1) - 9 * k * k + dcl_weights

    literal = collab_zoo.create_model("dcl_wrn16", widen_factor=widen, num_classes=10, layer="fc")
    assert literal.dcl_module is literal.backbone.fc and literal.dcl_module.widths == [3, 3]


def test_replace_with_dcl_warns_when_the_layer_feeds_a_sum():
    import warnings

    model = timm.create_model("wrn16_4", num_classes=10)
    with pytest.warns(UserWarning, match="goes straight into a sum"):
        replace_with_dcl(model, "stages.2.1.conv1", branches=2, width_ratio=0.25)
    resnet = timm.create_model("resnet18", num_classes=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        replace_with_dcl(resnet, "layer4.1.conv1", branches=2, width=64)   # BN + ReLU follow
        replace_with_dcl(resnet, "layer4.1.conv2", branches=2, width=64)   # BN follows, then the sum
        replace_with_dcl(resnet, "fc", branches=2, width=4)


@pytest.mark.parametrize("variant", ["A2", "A3D"])
def test_positive_mapping_init_starts_fused_units_off_the_floor(variant):
    torch.manual_seed(13)
    x = torch.randn(64, 1, 28, 28)
    fused = {}
    share_at_floor = {}
    for init in ("positive", "signed"):
        model = collab_zoo.create_model("dcl_lenet", variant=variant, num_classes=100, mapping_init=init).eval()
        model.dcl_module.register_forward_hook(lambda m, i, out: fused.__setitem__("z", out.detach()))
        with torch.no_grad():
            model(x)
        share_at_floor[init] = float(((fused["z"] - 0.1).abs() < 1e-6).float().mean())
        signs = [bool((b.mapping.weight >= 0).all()) for b in model.dcl_module.branches]
        assert all(signs) == (init == "positive")
    # signed weights: a unit is off the floor only where every branch is positive, ~1/2**T of them
    assert share_at_floor["signed"] > 0.6 and share_at_floor["positive"] < 0.01, share_at_floor
    with pytest.raises(IncompatibleConfigError, match="mapping_init"):
        DCLModule(4, 4, [2, 2], mapping_init="zero")


def test_replace_with_dcl_says_what_is_wrong():
    model = timm.create_model("resnet18", num_classes=10)
    with pytest.raises(IncompatibleConfigError, match="no layer named 'fc6'.*layer4"):
        replace_with_dcl(model, "fc6", width=8)
    with pytest.raises(IncompatibleConfigError, match="BatchNorm2d"):
        replace_with_dcl(model, "bn1", width=8)
    with pytest.raises(IncompatibleConfigError, match="exactly one of width"):
        replace_with_dcl(model, "fc")
    with pytest.raises(IncompatibleConfigError, match="exactly one of width"):
        replace_with_dcl(model, "fc", width=8, width_ratio=0.5)
    with pytest.raises(IncompatibleConfigError, match="at least 2 branches"):
        replace_with_dcl(model, "fc", branches=1, width=8)
    with pytest.raises(IncompatibleConfigError, match="mode must be one of"):
        replace_with_dcl(model, "fc", width=8, mode="random")
    with pytest.raises(IncompatibleConfigError, match="groups=2"):
        DCLModule.replacing(nn.Conv2d(4, 4, 3, groups=2), width=2)
    replace_with_dcl(model, "fc", width=8)
    with pytest.raises(IncompatibleConfigError, match="already a DCL module"):
        replace_with_dcl(model, "fc", width=8)


# --- sizes (the paper's numbers) -----------------------------------------------------------------------------

def _counts(name, **kwargs):
    with torch.device("meta"):
        model = collab_zoo.create_model(name, **kwargs)
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.dim() > 1)


def test_alexnet_sizes():
    params, weights = _counts("alexnet_caffe")
    assert params == 62_378_344
    assert _counts("alexnet_caffe", grouped=True)[0] == 60_965_224
    dcl_params, dcl_weights = _counts("dcl_alexnet")
    assert weights - dcl_weights == 10_485_760                       # fc6: 9216*4096 -> 2*(9216*1024 + 1024*4096)
    assert round(100 * (weights - dcl_weights) / weights, 1) == 16.8  # the paper: 16.82% fewer


def test_bignet_sizes():
    params, weights = _counts("bignet", num_classes=10)
    assert params == 5_745_738 and round(params / 1e6, 2) == 5.75 and round(weights / 1e6, 2) == 5.74
    dcl_params, dcl_weights = _counts("dcl_bignet", num_classes=10)
    assert dcl_weights == 5_086_912 and round(dcl_params / 1e6, 2) == 5.09
    assert round(100 * (1 - dcl_weights / weights), 2) == 11.41       # the paper's "11.41% fewer"


def test_lenet_and_wrn_sizes_follow_the_cost_formula():
    # Sec. 3.4: a DCL module has (u^2 K1 + K2) sum_t M_t weights in place of u^2 K1 K2.
    _, lenet_weights = _counts("lenet", num_classes=100)
    for variant, (k1, k2) in {"A2": (800, 500), "A3D": (800, 500), "B2": (500, 100), "B3S": (500, 100)}.items():
        branches = lenet_variant(variant)["branches"]
        _, weights = _counts("dcl_lenet", variant=variant, num_classes=100)
        assert lenet_weights - weights == k1 * k2 - (k1 + k2) * branches * (k2 // 5), variant
    for widen in (4, 8):
        _, wrn = _counts(f"wrn16_{widen}")
        _, dcl = _counts("dcl_wrn16", widen_factor=widen)
        c = 64 * widen
        assert wrn - dcl == 9 * c * c - (9 * c + c) * 2 * (c // 4), widen


# --- models through the contract -----------------------------------------------------------------------------

CONTRACT_CASES = [
    ("lenet", {}, (2, 1, 28, 28)),
    *(("dcl_lenet", {"variant": v}, (2, 1, 28, 28)) for v in ("A2", "A3D", "A3S", "B2", "B3D", "B3S")),
    ("lenet_cifar", {}, (2, 3, 32, 32)),
    ("dcl_lenet_cifar", {}, (2, 3, 32, 32)),
    ("bignet", {}, (2, 3, 24, 24)),
    ("dcl_bignet", {}, (2, 3, 24, 24)),
    ("wrn16_4", {}, (2, 3, 16, 16)),   # global pooling: any size works, and 16x16 keeps the test quick
    ("dcl_wrn16", {}, (2, 3, 16, 16)),
    ("dcl_wrn16", {"layer": "fc"}, (2, 3, 16, 16)),
    ("alexnet_caffe", {"num_classes": 10}, (1, 3, 227, 227)),
    ("dcl_alexnet", {"num_classes": 10}, (1, 3, 227, 227)),
]


@pytest.mark.parametrize("name,kwargs,shape", CONTRACT_CASES,
                         ids=[f"{n}-{'-'.join(map(str, k.values())) or 'default'}" for n, k, _ in CONTRACT_CASES])
def test_model_trains_a_step_and_evaluates_through_the_contract(name, kwargs, shape):
    torch.manual_seed(10)
    model = collab_zoo.create_model(name, **kwargs)
    num_classes = model.num_classes
    x = torch.randn(*shape)
    target = torch.arange(shape[0]) % num_classes
    training = training_round_of(model, 0)
    module = training.module.train()
    outputs = module(x)
    heads = heads_of(outputs)
    assert len(heads) == len(head_names_of(model)) == 1 and heads[0].shape == (shape[0], num_classes)
    loss, parts = training.loss(outputs, target)
    assert set(parts) == {"ce"} and torch.isfinite(loss)
    before = [p.detach().clone() for p in model.parameters()]
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters())), "the step changed nothing"
    model.eval()
    scores, heads = scores_and_heads(model, x)
    assert scores.shape == (shape[0], num_classes) and torch.isfinite(scores).all()
    torch.testing.assert_close(model(x), scores)
    if name.startswith("dcl_"):
        assert isinstance(model, CollabModel) and isinstance(outputs, tuple) and len(outputs) == 1
        stochastic_three_branches = kwargs.get("variant") in ("A3S", "B3S")
        assert model.leaves_parameters_unused == stochastic_three_branches


def test_soft_targets_work_for_dcl_models():
    model = collab_zoo.create_model("dcl_lenet_cifar", num_classes=10).train()
    soft = torch.softmax(torch.randn(2, 10), dim=-1)
    loss, parts = model.collab_loss(model(torch.randn(2, 3, 32, 32)), soft)
    loss.backward()
    assert torch.isfinite(loss) and parts["ce"] == loss.detach()


def _per_sample_ce(logits: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """-log softmax(logits)[target] per sample, in numpy float64."""
    z = _np(logits)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(target)), target.numpy()]


def test_collab_loss_takes_per_sample_weights():
    torch.manual_seed(12)
    model = collab_zoo.create_model("dcl_lenet", variant="A2", num_classes=10).train()
    x, target = torch.randn(4, 1, 28, 28), torch.tensor([3, 1, 4, 1])
    outputs = model(x)
    per_sample = _per_sample_ce(outputs[0], target)

    plain, _ = model.collab_loss(outputs, target)
    ones, _ = model.collab_loss(outputs, target, sample_weight=torch.ones(4))
    np.testing.assert_allclose(plain.item(), per_sample.mean(), rtol=1e-5)
    assert ones.item() == pytest.approx(plain.item(), rel=1e-6)

    # mean(w_i * l_i), not renormalised: a zero weight drops a sample and its gradient, the others keep 1/B.
    weight = torch.tensor([0.0, 1.0, 2.0, 0.5])
    weighted, parts = model.collab_loss(outputs, target, sample_weight=weight)
    np.testing.assert_allclose(weighted.item(), (weight.numpy() * per_sample).sum() / 4, rtol=1e-5)
    assert parts["ce"] == weighted.detach()
    logits = outputs[0].detach().requires_grad_(True)
    model.collab_loss((logits,), target, sample_weight=weight)[0].backward()
    assert torch.all(logits.grad[0] == 0) and torch.all(logits.grad[1:].abs().sum(1) > 0)
    with pytest.raises(IncompatibleConfigError, match="one weight per sample"):
        model.collab_loss(outputs, target, sample_weight=torch.ones(3))


def test_dcl_classifier_resets_and_reloads_across_class_counts():
    torch.manual_seed(11)
    model = collab_zoo.create_model("dcl_lenet", variant="B3S", num_classes=100)
    head = model.get_classifier()
    assert isinstance(head, DCLModule) and head.widths == [20, 20, 20]
    assert model.get_classifier(name_only=True) == "backbone.fc"
    names = model.classifier_names()
    assert len(names) == 6 and all(isinstance(model.get_submodule(n), nn.Linear) for n in names)

    # Fine-tuning to 10 classes: every DCL classifier layer starts fresh, everything else loads.
    state = model.state_dict()
    tuned = collab_zoo.create_model("dcl_lenet", variant="B3S", num_classes=10, pretrained=True,
                                    pretrained_cfg_overlay=dict(state_dict=state))
    assert tuned.get_classifier().widths == [2, 2, 2] and tuned.get_classifier().out_channels == 10
    torch.testing.assert_close(tuned.backbone.fc1.weight, model.backbone.fc1.weight)
    assert tuned.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)

    model.reset_classifier(7)
    assert isinstance(model.get_classifier(), DCLModule) and model.get_classifier().out_channels == 7
    assert model.eval()(torch.randn(1, 1, 28, 28)).shape == (1, 7)


def test_variants_and_options_are_checked():
    assert lenet_variant("A3S") == dict(layer="fc1", branches=3, mode="stochastic")
    assert lenet_variant("b2") == dict(layer="fc", branches=2, mode="deterministic")
    for bad in ("C2", "A3", "A1", "A2X"):
        with pytest.raises(IncompatibleConfigError, match="variant"):
            lenet_variant(bad)
    with pytest.raises(IncompatibleConfigError, match="from variant"):
        collab_zoo.create_model("dcl_lenet", variant="A2", branches=3)
    with pytest.raises(IncompatibleConfigError, match="eps must be positive"):
        DCLModule(4, 4, [2, 2], eps=0.0)
    model = collab_zoo.create_model("dcl_alexnet", width=512, num_classes=10, img_size=99)
    assert model.dcl_module.widths == [512, 512]
    with pytest.raises(IncompatibleConfigError, match="at least 39x39"):
        collab_zoo.create_model("alexnet_caffe", img_size=32)


def test_registration_and_cfg_names_resolve():
    names = {"lenet", "lenet_cifar", "bignet", "alexnet_caffe", "dcl_lenet", "dcl_lenet_cifar", "dcl_bignet",
             "dcl_wrn16", "dcl_alexnet"}
    assert names <= set(collab_zoo.list_models())
    for name in names:
        with torch.device("meta"):
            model = timm.create_model(name)
        cfg = model.pretrained_cfg
        assert isinstance(model.get_submodule(cfg["first_conv"]), nn.Conv2d), name
        assert model.get_submodule(cfg["classifier"]) is model.get_classifier(), name
    features = timm.create_model("dcl_lenet_cifar", features_only=True, out_indices=(1, 2))
    assert [f.shape[1:] for f in features(torch.randn(1, 3, 32, 32))] == [(64, 8, 8), (128, 4, 4)]


def test_complexity_rows_and_the_command_line_table():
    pairs = [p for p in COMPLEXITY_PAIRS if p[2] in ("dcl_alexnet", "dcl_bignet") or p[3].get("variant") == "A3S"]
    rows = {(r.model, r.config): r for r in complexity_rows(pairs)}
    alexnet = rows["dcl_alexnet", "default"]
    assert alexnet.baseline_params == 62_378_344 and alexnet.baseline_weights - alexnet.dcl_weights == 10_485_760
    assert 0 < alexnet.dcl_flops < alexnet.baseline_flops and alexnet.input_size == (3, 227, 227)
    bignet = rows["dcl_bignet", "default"]
    assert (bignet.num_classes, bignet.baseline_weights, bignet.dcl_weights) == (10, 5_742_272, 5_086_912)
    a3s = rows["dcl_lenet", "variant=A3S"]
    assert a3s.dcl_train_flops < a3s.dcl_flops, "a stochastic training step runs 2 of the 3 branches"
    assert "dcl_bignet" in format_complexity_table(list(rows.values()))

    # The command line prints every pair (and registers the models once: the module guards its __main__).
    run = subprocess.run([sys.executable, "-m", "collab_zoo.methods.dcl"], cwd=ROOT, env=subprocess_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    table = [line.split()[1] for line in run.stdout.splitlines() if line.split()[:1] and line.split()[1:2]
             and line.split()[1].startswith("dcl_")]
    assert sorted(set(table)) == ["dcl_alexnet", "dcl_bignet", "dcl_lenet", "dcl_lenet_cifar", "dcl_wrn16"]
    assert len(table) == len(COMPLEXITY_PAIRS) and "62,378,344" in run.stdout and "51,898,728" in run.stdout


def test_a_traced_stochastic_model_draws_when_the_graph_runs():
    """DCLModule is one of timm's FX leaves: a graph traced in training draws its pair at every run, not once
    at tracing, and its deterministic mode fuses every branch."""
    import timm.layers

    class LeafTracer(torch.fx.Tracer):
        def is_leaf_module(self, module, name):
            return timm.layers.is_notrace_module(type(module)) or super().is_leaf_module(module, name)

    model = collab_zoo.create_model("dcl_lenet", num_classes=10).train()     # A3S: three branches, two drawn per step
    graph = torch.fx.GraphModule(model, LeafTracer().trace(model))
    layer = model.backbone.fc1
    x = torch.randn(2, 1, 28, 28)
    drawn = set()
    for seed in range(10):
        torch.manual_seed(seed)
        graph(x)
        drawn.add(layer.last_active)
    assert len(drawn) > 1 and all(len(pair) == 2 for pair in drawn)
    with model.deterministic_mode():
        graph(x)
        assert layer.last_active == (0, 1, 2) and not model.parameters_left_unused()
    assert layer.mode == "stochastic"


# --- known answers for the options and the report (from the mutation run's survivors) -------------------------

def test_pairs_and_fusion_take_a_list_or_a_tensor_and_their_own_eps():
    listed = dcl_fuse_pairs([torch.tensor([1.0]), torch.tensor([4.0]), torch.tensor([9.0])]).item()
    assert listed == pytest.approx((math.sqrt(4.01) + math.sqrt(9.01) + math.sqrt(36.01)) / 3, rel=1e-6)
    assert dcl_fuse_pairs(torch.tensor([[1.0], [4.0]]), eps=1e-4).item() == pytest.approx(math.sqrt(4.0001), rel=1e-6)
    assert dcl_fuse([torch.tensor([2.0]), torch.tensor([8.0])]).item() == pytest.approx(math.sqrt(16.01), rel=1e-6)
    with pytest.raises(IncompatibleConfigError) as e:
        dcl_fuse_pairs(torch.ones(1, 3))
    assert str(e.value) == "fusing pairs needs at least 2 branch responses, got 1."
    assert DCLModule(4, 3, [2, 2], eps=0.5).fusion_eps(2) == 0.5
    assert DCLModule(4, 3, [2, 2]).fusion_eps(3) == pytest.approx(1e-3)


def test_a_drawn_pair_is_two_distinct_branches_in_order():
    module = DCLModule(4, 3, [2, 2, 2, 2], mode="stochastic")
    torch.manual_seed(12)
    pairs = [module.draw_pair() for _ in range(40)]
    assert all(first < second for first, second in pairs)
    assert len(set(pairs)) == 6, "every pair of the four branches comes up"


def test_dcl_on_the_classifier_names_its_branches_and_rebuilds_for_any_class_count():
    on_classifier = collab_zoo.create_model("dcl_lenet", variant="B2", num_classes=10)
    assert on_classifier.classifier_names() == tuple(
        f"backbone.{on_classifier.layer}.branches.{i}.{part}" for i in (0, 1) for part in ("filters", "mapping"))
    on_classifier.reset_classifier(1)
    assert isinstance(on_classifier.dcl_module, DCLModule) and on_classifier.dcl_module.out_channels == 1
    on_classifier.reset_classifier(0)
    assert on_classifier.dcl_module is None and on_classifier.classifier_names() == ("backbone.fc",)
    inside = collab_zoo.create_model("dcl_lenet", variant="A2", num_classes=10)
    assert inside.classifier_names() == (inside.get_classifier(name_only=True),) == ("backbone.fc",)


def test_the_undrawn_branch_is_named_as_left_unused():
    model = collab_zoo.create_model("dcl_lenet", variant="A3S", num_classes=10).train()
    torch.manual_seed(13)
    model(torch.randn(2, 1, 28, 28))
    module = model.dcl_module
    (idle,) = set(range(3)) - set(module.last_active)
    prefix = f"backbone.{model.layer}.branches.{idle}"
    assert model.parameters_left_unused() == {f"{prefix}.{part}.{kind}" for part in ("filters", "mapping")
                                              for kind in ("weight", "bias")}
    model.eval()(torch.randn(2, 1, 28, 28))
    assert model.parameters_left_unused() == set()
    with pytest.raises(IncompatibleConfigError) as e:
        model.collab_loss((torch.zeros(2, 10), torch.zeros(2, 10)), torch.tensor([0, 1]))
    assert str(e.value) == "DCL models have one head; collab_loss got 2 outputs."


def test_the_complexity_table_prints_each_figure_as_computed():
    from collab_zoo.methods.dcl import ComplexityRow

    row = ComplexityRow(baseline="base", model="dcl_x", config="k=1, m=2", num_classes=10, input_size=(3, 8, 8),
                        baseline_params=1_234_567, dcl_params=1_000_000, baseline_weights=1000, dcl_weights=750,
                        baseline_flops=12_345_678, dcl_flops=2_500_000, dcl_train_flops=1_250_000)
    assert format_complexity_table([row]).splitlines() == [
        # text columns left-aligned, numbers right-aligned, each as wide as its widest cell, two spaces between
        "baseline  DCL model  config    classes  input     params  DCL params  weights -%  MFLOPs  DCL MFLOPs  "
        "DCL train",
        "-" * 111,
        "base      dcl_x      k=1, m=2  10       3x8x8  1,234,567   1,000,000       25.00    12.3         2.5  "
        "      1.2"]


# --- known answers from the second mutation pass: every option reaches the layer it names --------------------

def test_three_float32_factors_have_the_formulas_gradient_whatever_the_layout():
    """The linear (float64) path's gradient, on a layout whose second dimension is 2: the shortcut for two
    branches must look at the branch count, not at another dimension."""
    factors = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.5, 4.0]], requires_grad=True)
    dcl_fuse(factors, eps=1e-3).sum().backward()
    v = np.array([[1.0, 2.0], [3.0, 0.0], [0.5, 4.0]])
    total = v.prod(0) + 1e-3
    expected = np.stack([(1 / 3) * total ** (-2 / 3) * np.prod(np.delete(v, t, axis=0), axis=0) for t in range(3)])
    np.testing.assert_allclose(factors.grad.numpy(), expected, rtol=1e-6)


def test_fusion_stays_finite_and_exact_where_a_linear_product_would_not():
    # float64 inputs take the log domain: 1e200 * 1e200 would overflow float64
    wide = torch.full((2, 1), 1e200, dtype=torch.float64)
    assert dcl_fuse(wide).item() == pytest.approx(1e200, rel=1e-12)
    # nine float32 factors of 1e38: their product (1e342) is past float64's range, so more than 8 go by logs
    assert dcl_fuse(torch.full((9, 2), 1e38)).tolist() == pytest.approx([1e38, 1e38], rel=1e-6)
    # the log domain keeps float64's precision where the product and eps are of one size
    small = torch.tensor([[1e-4], [1e-4]], dtype=torch.float64)
    assert dcl_fuse(small, eps=1e-8).item() == pytest.approx(math.sqrt(2e-8), rel=1e-12)


def test_bfloat16_pairs_are_the_float64_mean_rounded_once():
    torch.manual_seed(14)
    responses = (torch.rand(3, 64) * 10).to(torch.bfloat16)
    v = responses.double().numpy()
    expected = np.mean([np.sqrt(v[i] * v[j] + 0.01) for i, j in itertools.combinations(range(3), 2)], axis=0)
    with torch.no_grad():
        fused = dcl_fuse_pairs(responses)
    assert fused.dtype == torch.bfloat16
    assert torch.equal(fused, torch.from_numpy(expected).to(torch.bfloat16))


def test_branch_widths_accept_their_bounds_and_name_what_is_refused():
    from collab_zoo.methods.dcl import branch_widths

    assert branch_widths(10, 2, width_ratio=1) == [10, 10]
    assert branch_widths(10, 3, width_ratio=0.001) == [1, 1, 1], "at least one filter, rounded up"
    assert branch_widths(10, 2, width=1) == [1, 1]
    assert branch_widths(10, 2, width=[1, 4]) == [1, 4]
    refusals = [(0, "width_ratio must be in (0, 1], got 0."), (1.5, "width_ratio must be in (0, 1], got 1.5.")]
    for ratio, message in refusals:
        with pytest.raises(IncompatibleConfigError) as e:
            branch_widths(10, 2, width_ratio=ratio)
        assert str(e.value) == message
    with pytest.raises(IncompatibleConfigError) as e:
        branch_widths(10, 2, width=[3, 3, 3])
    assert str(e.value) == "width lists 3 branch widths for branches=2."
    with pytest.raises(IncompatibleConfigError) as e:
        branch_widths(10, 2, width=0)
    assert str(e.value) == "every branch needs at least one filter, got widths [0, 0]."


def test_a_module_built_directly_has_the_arguments_it_was_given():
    from collab_zoo.methods.dcl import DCLBranch

    with pytest.raises(IncompatibleConfigError) as e:
        DCLModule(4, 3, [5])
    assert str(e.value) == "DCL needs at least 2 branches of at least 1 filter each, got [5]."
    assert DCLModule(4, 3, [1, 1]).widths == [1, 1]
    assert DCLModule(4, 3, [2, 2, 2]).last_active == (0, 1, 2), "before any forward, every branch counts as run"
    assert DCLBranch(nn.Linear(2, 2), nn.Linear(2, 2)).branch_act

    # an int kernel size, every other geometry argument left at nn.Conv2d's defaults
    plain = DCLModule(3, 4, [2, 2], kernel_size=3)
    assert plain.kernel_size == (3, 3)
    for branch in plain.branches:
        conv = branch.filters
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
        assert (conv.stride, conv.padding, conv.dilation, conv.padding_mode) == ((1, 1), (0, 0), (1, 1), "zeros")
    assert plain(torch.rand(1, 3, 7, 7)).shape == (1, 4, 5, 5)

    conv = DCLModule(3, 4, [2, 3], kernel_size=3, stride=2, padding=2, dilation=2, padding_mode="reflect",
                     bias=False, branch_act=False, dtype=torch.float64)
    for branch, width in zip(conv.branches, (2, 3)):
        f, m = branch.filters, branch.mapping
        assert (f.out_channels, f.stride, f.padding, f.dilation, f.padding_mode) == (width, (2, 2), (2, 2), (2, 2),
                                                                                     "reflect")
        assert m.kernel_size == (1, 1) and m.out_channels == 4
        assert f.bias is None and m.bias is None and not branch.branch_act
        assert f.weight.dtype == m.weight.dtype == torch.float64
    linear = DCLModule(4, 3, [2, 2], bias=False, dtype=torch.float64)
    for branch in linear.branches:
        assert branch.filters.bias is None and branch.mapping.bias is None
        assert branch.filters.weight.dtype == branch.mapping.weight.dtype == torch.float64

    assert conv.extra_repr() == ("3 -> 4, conv (3, 3), widths=[2, 3], mode=deterministic, eps=10^-T, "
                                 "branch_act=False, mapping_init=positive")
    assert DCLModule(4, 3, [2, 2], mode="stochastic", eps=0.5, mapping_init="signed").extra_repr() == (
        "4 -> 3, linear, widths=[2, 2], mode=stochastic, eps=0.5, branch_act=True, mapping_init=signed")


def test_a_modules_own_eps_reaches_every_fusion():
    x = torch.randn(2, 4)
    deterministic = DCLModule(4, 3, [2, 2], eps=0.5)
    _constant_branches(deterministic, [2.0, 3.0])
    assert deterministic(x).flatten().tolist() == pytest.approx([math.sqrt(6.5)] * 6, rel=1e-6)
    stochastic = DCLModule(4, 3, [2, 2, 2], mode="stochastic", eps=0.5).train()
    _constant_branches(stochastic, [2.0, 3.0, 5.0])
    torch.manual_seed(15)
    fused = stochastic(x)
    first, second = stochastic.last_active
    value = [2.0, 3.0, 5.0][first] * [2.0, 3.0, 5.0][second]
    assert fused.flatten().tolist() == pytest.approx([math.sqrt(value + 0.5)] * 6, rel=1e-6)


def test_replacing_a_layer_keeps_its_geometry_and_takes_every_option():
    linear = DCLModule.replacing(nn.Linear(6, 4, bias=False, dtype=torch.float64), width=2)
    assert linear.widths == [2, 2] and linear.eps is None and linear.branch_act
    assert linear.branches[0].filters.bias is None, "bias=None keeps the replaced layer's choice"
    assert linear.branches[0].filters.weight.dtype == torch.float64
    chosen = DCLModule.replacing(nn.Linear(6, 4, dtype=torch.float64), branches=3, width=2, eps=0.5,
                                 branch_act=False, bias=False, mapping_init="signed")
    assert (chosen.widths, chosen.eps, chosen.branch_act, chosen.mapping_init) == ([2, 2, 2], 0.5, False, "signed")
    assert all(b.filters.bias is None and b.mapping.bias is None and not b.branch_act for b in chosen.branches)
    assert chosen.branches[0].mapping.weight.dtype == torch.float64

    layer = nn.Conv2d(3, 8, 3, stride=2, padding=2, dilation=2, padding_mode="reflect", dtype=torch.float64)
    conv = DCLModule.replacing(layer, width=4, eps=0.5, branch_act=False, mapping_init="signed")
    assert (conv.kernel_size, conv.eps, conv.branch_act, conv.mapping_init) == ((3, 3), 0.5, False, "signed")
    for branch in conv.branches:
        f = branch.filters
        assert (f.stride, f.padding, f.dilation, f.padding_mode) == ((2, 2), (2, 2), (2, 2), "reflect")
        assert f.weight.dtype == branch.mapping.weight.dtype == torch.float64 and f.bias is not None
        assert not branch.branch_act
    x = torch.rand(1, 3, 11, 11, dtype=torch.float64)
    assert conv(x).shape == layer(x).shape
    with pytest.raises(IncompatibleConfigError) as e:
        DCLModule.replacing(nn.ReLU(), width=2)
    assert str(e.value) == "DCL replaces an nn.Linear or nn.Conv2d; got ReLU."


def test_replace_with_dcl_passes_its_options_and_lists_only_replaceable_layers():
    model = timm.create_model("resnet18", num_classes=10)
    layers = [n for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]
    assert len(layers) > 12
    with pytest.raises(IncompatibleConfigError) as e:
        replace_with_dcl(model, "fc6", width=8)
    assert str(e.value) == (f"ResNet has no layer named 'fc6'. Its Linear/Conv2d layers include (last 12): "
                            f"{', '.join(layers[-12:])}.")
    with pytest.raises(IncompatibleConfigError) as e:
        replace_with_dcl(model, "bn1", width=8)
    assert str(e.value) == ("'bn1' is a BatchNorm2d; DCL replaces an nn.Linear or nn.Conv2d. Candidates: "
                            f"{', '.join(layers[-12:])}.")

    module = replace_with_dcl(model, "fc", width=4)
    assert module.num_branches == 2 and module.branch_act and module.eps is None
    assert not getattr(model, "leaves_parameters_unused", False), "every branch of a deterministic module trains"
    module = replace_with_dcl(model, "layer4.1.conv1", width=4, eps=0.5, bias=True)
    assert module.eps == 0.5 and all(b.filters.bias is not None for b in module.branches)
    replace_with_dcl(model, "layer4.1.conv2", branches=3, width=4, mode="stochastic")
    assert model.leaves_parameters_unused

    wrn = timm.create_model("wrn16_4", num_classes=10)
    with pytest.warns(UserWarning, match="goes straight into a sum") as caught:
        replace_with_dcl(wrn, "stages.2.1.conv1", width_ratio=0.25)
    # the warning points out of the library, at the caller (not compared with __file__: under mutmut a
    # trampoline frame sits between the test and the function)
    assert not caught[0].filename.endswith((os.path.join("collab_zoo", "methods", "dcl.py"), "warnings.py"))


def test_feeds_a_sum_counts_only_additions():
    from collab_zoo.methods.dcl import feeds_a_sum

    class Activated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return torch.relu(self.conv(x))

    class AddedByMethod(Activated):
        def forward(self, x):
            return self.conv(x).add(x)

    assert feeds_a_sum(Activated(), "conv") is False
    assert feeds_a_sum(AddedByMethod(), "conv") is True


def test_a_dcl_model_takes_its_options_and_checks_its_classifier():
    from collab_zoo.methods.dcl import DCLModel

    torch.manual_seed(16)
    model = DCLModel(timm.create_model("lenet", num_classes=10), "fc", width=3, eps=0.5, bias=False,
                     branch_act=False)
    module = model.dcl_module
    assert (module.num_branches, module.eps, module.branch_act) == (2, 0.5, False)
    assert module.branches[0].filters.bias is None and not module.branches[0].branch_act
    model.reset_classifier(7)
    assert (model.dcl_module.out_channels, model.dcl_module.eps) == (7, 0.5)
    assert model.dcl_module.branches[1].mapping.bias is None

    with pytest.raises(IncompatibleConfigError) as e:
        DCLModel(timm.create_model("lenet", num_classes=0), "fc", width=2)
    assert str(e.value) == ("DCL on the classifier ('fc') needs num_classes > 0; this model was built without a "
                            "classifier.")
    assert DCLModel(timm.create_model("lenet", num_classes=1), "fc", width=2).dcl_module.out_channels == 1

    plain = DCLModel(nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), "1", width=2)
    assert plain.classifier_names() == (), "a backbone that names no classifier has none to list"

    wrn = collab_zoo.create_model("dcl_wrn16", num_classes=10)
    wrn.reset_classifier(5, global_pool="max")
    assert wrn.backbone.global_pool.pool_type == "max" and wrn.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_every_undrawn_branch_is_named_as_left_unused():
    model = collab_zoo.create_model("dcl_lenet", variant="A4S", num_classes=10).train()
    torch.manual_seed(17)
    model(torch.randn(2, 1, 28, 28))
    idle = set(range(4)) - set(model.dcl_module.last_active)
    assert len(idle) == 2
    assert model.parameters_left_unused() == {f"backbone.fc1.branches.{i}.{part}.{kind}" for i in idle
                                              for part in ("filters", "mapping") for kind in ("weight", "bias")}


def test_entry_points_pass_input_channels_and_either_width_option():
    one_channel = collab_zoo.create_model("dcl_wrn16", in_chans=1, num_classes=10)
    assert one_channel.backbone.stem.in_channels == 1
    assert one_channel.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 10)
    with torch.device("meta"):
        # dcl_alexnet's default is width=1024 and dcl_bignet's width_ratio=1/4: either option replaces the other
        assert collab_zoo.create_model("dcl_alexnet", width_ratio=0.25).dcl_module.widths == [1024, 1024]
        assert collab_zoo.create_model("dcl_bignet", width_ratio=0.5).dcl_module.widths == [512, 512]
        assert collab_zoo.create_model("dcl_bignet", width=7).dcl_module.widths == [7, 7]


def test_complexity_rows_build_each_side_with_its_own_arguments():
    from torch.utils.flop_counter import FlopCounterMode

    pairs = [("lenet", {"num_classes": 10}, "dcl_lenet", {"variant": "B2"}),
             ("wrn16_4", {}, "dcl_wrn16", {"widen_factor": 4, "width": 8})]
    lenet_row, wrn_row = complexity_rows(pairs)
    lenet = timm.create_model("lenet", num_classes=10)
    dcl = collab_zoo.create_model("dcl_lenet", variant="B2", num_classes=10)
    assert (lenet_row.num_classes, lenet_row.config) == (10, "variant=B2")
    assert lenet_row.baseline_params == sum(p.numel() for p in lenet.parameters())
    assert lenet_row.dcl_params == sum(p.numel() for p in dcl.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        lenet.eval()(torch.zeros(1, 1, 28, 28))
    assert lenet_row.baseline_flops == counter.get_total_flops(), "FLOPs of one image"
    assert wrn_row.config == "widen_factor=4, width=8"


def test_the_command_line_prints_the_table_between_its_two_sentences(capsys):
    from collab_zoo.methods.dcl import main

    assert main() == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "DCL: parameters and forward FLOPs per image, each baseline against its DCL model"
    assert lines[1].split()[:3] == ["baseline", "DCL", "model"] and set(lines[2]) == {"-"}
    assert len(lines) == 3 + len(COMPLEXITY_PAIRS) + 1
    assert lines[-1] == ("weights -% = share of the baseline's weights (tensors of 2+ dims) DCL removes; FLOPs "
                         "count 2 per multiply-add; 'DCL train' is a training-mode forward (2 branches in "
                         "stochastic mode).")


def test_an_exported_fusion_is_right_for_every_value_not_only_the_traced_ones():
    """torch.export cannot branch on values, so the exported pair fusion takes the general formula: responses of
    1e30, whose float32 product would overflow, still fuse to 1e30; ordinary ones match eager to float32
    rounding."""
    class Fuse(torch.nn.Module):
        def forward(self, responses):
            return dcl_fuse(responses)

    ordinary = torch.rand(2, 3) * 5
    program = torch.export.export(Fuse(), (ordinary,)).module()
    assert program(torch.full((2, 3), 1e30)).tolist() == pytest.approx([1e30] * 3, rel=1e-6)
    torch.testing.assert_close(program(ordinary), dcl_fuse(ordinary), rtol=1e-6, atol=0)
