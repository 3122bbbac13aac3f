"""timm's conformance families, run on every registered zoo model.

timm's own tests/test_models.py holds each of its models to a set of check families (forward, backward,
default cfg, features, TorchScript, FX, ...). A timm user expects the same of ours, so each family below runs
over ``collab_zoo.list_models()``: a model registered later is covered without editing this file.

* Inputs are small: each model's fixed input size, else its default clamped to ``TARGET_SIZE`` (CIFAR and
  MNIST models keep theirs). The default-cfg family runs at the default input size, where ``pool_size`` is
  defined, as timm's does.
* Families that script, export or compile, and every family on models of more than ``HEAVY_PARAMS``
  parameters or ``HEAVY_MODULES`` modules (the ImageNet-sized networks, the deepest CIFAR ones and the
  ensembles of them, whose graphs take long to trace), are marked ``slow``: ``python -m pytest -q -m slow``
  runs them (CI runs both groups).
* Written exemptions (``collab_zoo.contract.exempt_from_conformance``, next to the model's registration) turn
  a family into a strict xfail: it still runs and must fail, so an exemption no longer needed is reported.
  The two sub-checks timm skips for some kinds of model (``default_cfg:unpooled``, ``default_cfg:spatial``)
  switch the default-cfg check to what timm runs on that kind instead.

``python tests/conformance_table.py`` runs this file and prints the family-by-family pass counts.
"""
import contextlib
import copy
import fnmatch
import math
from collections import Counter
from functools import lru_cache
from typing import Dict, List, Set, Tuple

import pytest
import torch

import collab_zoo
import timm
import timm.optim
from collab_zoo.contract import (CONFORMANCE_CHECKS, conformance_exemptions, deterministic_mode_of, forward_heads_of,
                                 loss_of, num_rounds_of, parameters_left_unused_of, training_round_of,
                                 complete_round_of)

try:
    from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names
except ImportError:  # pragma: no cover - torchvision is a dependency
    NodePathTracer = None

# torchvision notes, for every traced model, that its train and eval graphs differ; they do by design here.
pytestmark = pytest.mark.filterwarnings("ignore:.*obtained by tracing the model in:UserWarning")

MODELS: List[str] = collab_zoo.list_models()
TARGET_SIZE = 64            # the largest side an ImageNet-sized model is run at, outside the default-cfg family
HEAVY_PARAMS = 10_000_000   # models larger than this, or deeper than HEAVY_MODULES, run in the slow group only
HEAVY_MODULES = 200
NUM_CLASSES_BWD = 42        # timm's backward tests build with 42 classes, so a head that ignores num_classes shows


# --- which models, which marks -------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def model_size(model_name: str) -> Tuple[int, int]:
    """Parameters and modules of the default build, counted on the meta device (nothing is allocated)."""
    try:
        with torch.device("meta"):
            model = timm.create_model(model_name)
    except Exception:  # a model that cannot build shows up in the families themselves, in the default group
        return 0, 0
    return sum(p.numel() for p in model.parameters()), len(list(model.modules()))


def is_heavy(model_name: str) -> bool:
    params, modules = model_size(model_name)
    return params > HEAVY_PARAMS or modules > HEAVY_MODULES


def cases(family: str, slow_family: bool = False) -> List:
    """One pytest param per registered model for ``family``, with its slow mark and written exemption."""
    params = []
    for name in MODELS:
        marks = []
        if slow_family or is_heavy(name):
            marks.append(pytest.mark.slow)
        reason = conformance_exemptions(name).get(family)
        if reason:
            marks.append(pytest.mark.xfail(strict=True, reason=f"exempt from {family}: {reason}"))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def exempt(model_name: str, check: str) -> bool:
    return check in conformance_exemptions(model_name)


# --- shared helpers ------------------------------------------------------------------------------------------

def input_size(model, target: int = TARGET_SIZE) -> Tuple[int, ...]:
    """timm's rule: a fixed size is kept; otherwise the default, each side capped at ``target`` (or the
    model's ``min_input_size`` when the default is above the target)."""
    cfg = model.pretrained_cfg
    size = tuple(cfg["input_size"])
    if cfg.get("fixed_input_size"):
        return size
    if max(size[1:]) > target:
        if cfg.get("min_input_size"):
            return tuple(cfg["min_input_size"])
        return (size[0], *(min(s, target) for s in size[1:]))
    return size


def as_tensor(outputs) -> torch.Tensor:
    """timm's tests concatenate a tuple output (several heads) along the batch."""
    if isinstance(outputs, dict):
        outputs = tuple(outputs.values())
    if isinstance(outputs, (tuple, list)):
        return torch.cat(tuple(outputs))
    return outputs


def spatial_resolutions(model, x: torch.Tensor) -> int:
    """Distinct spatial sizes (above 1x1) among the 4-d outputs of every module in one eval forward."""
    sizes: Set[Tuple[int, int]] = set()

    def record(module, args, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-1] * output.shape[-2] > 1:
            sizes.add(tuple(output.shape[-2:]))

    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return len(sizes)


def check_feature_maps(outputs, channels, reductions, size, batch):
    assert len(outputs) == len(channels), f"{len(outputs)} feature maps for {len(channels)} feature_info levels"
    for expected, reduction, out in zip(channels, reductions, outputs):
        assert out.shape[1] == expected, f"channels {out.shape[1]} != feature_info {expected}"
        assert out.shape[2] <= math.ceil(size[-2] / reduction) + 1
        assert out.shape[3] <= math.ceil(size[-1] / reduction) + 1
        assert out.shape[0] == batch
        assert torch.isfinite(out).all()


@lru_cache(maxsize=None)
def resolutions_of(model_name: str, size: Tuple[int, ...]) -> int:
    torch.manual_seed(0)
    return spatial_resolutions(timm.create_model(model_name), torch.randn(1, *size))


def check_levels(model_name: str, num_levels: int, size) -> None:
    """timm asks at least 3 feature levels of every model it tests; we ask it of every net with 3 resolutions."""
    resolutions = resolutions_of(model_name, tuple(size))
    if resolutions >= 3:
        assert num_levels >= 3, f"{num_levels} feature levels on a network with {resolutions} resolutions"


def tracer_kwargs() -> Dict:
    return dict(leaf_modules=timm.models.get_notrace_modules(),
                autowrap_functions=timm.models.get_notrace_functions(), param_shapes_constant=True)


def fx_extractor(model, train: bool = False):
    """torchvision's feature extractor returning the model's outputs: in eval the last node, in train every
    node the forward returns (all heads), found by tracing the train-mode graph."""
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs())
    train_return = [train_nodes[-1]]
    if train:
        was_training = model.training
        model.train()
        tracer = NodePathTracer(**tracer_kwargs())
        graph = tracer.trace(model)
        model.train(was_training)
        output = next(n for n in reversed(graph.nodes) if n.op == "output")
        returned: List = []
        torch.fx.node.map_arg(output.args, returned.append)
        train_return = [tracer.node_to_qualname[n] for n in returned]
    return create_feature_extractor(model, train_return_nodes=train_return, eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs())


def names_with_grad(model) -> Set[str]:
    return {n for n, p in model.named_parameters() if p.grad is not None}


def backward_of(model, outputs) -> Set[str]:
    """timm's backward check: the (concatenated) outputs' mean backward; returns the parameters with a gradient."""
    out = as_tensor(outputs)
    assert out.shape[-1] == NUM_CLASSES_BWD
    assert torch.isfinite(out).all(), "output included NaN or inf"
    out.mean().backward()
    names = names_with_grad(model)
    model.zero_grad(set_to_none=True)
    return names


# --- forward -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_name", cases("forward"))
def test_forward(model_name):
    """Eval forward gives [B, num_classes] finite scores; grad checkpointing, where supported, changes nothing."""
    torch.manual_seed(0)
    model = timm.create_model(model_name).eval()
    x = torch.randn(1, *input_size(model))
    with torch.no_grad():
        outputs = model(x)
    assert isinstance(outputs, torch.Tensor), f"eval forward returned {type(outputs).__name__}, not a tensor"
    assert outputs.shape == (1, model.num_classes)
    assert torch.isfinite(outputs).all()
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
        with torch.no_grad():
            again = model(x)
        torch.testing.assert_close(again, outputs, rtol=1e-4, atol=1e-5)


# --- backward ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_name", cases("backward"))
def test_backward(model_name):
    """Every parameter gets a gradient, round by round: in the deterministic mode every parameter the round
    trains; in a stochastic mode exactly those of the parts drawn, every part drawn in time, and an eval
    output that does not depend on the draw. Over all rounds every parameter trains."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=NUM_CLASSES_BWD)
    x = torch.randn(2, *input_size(model))
    every = {n for n, p in model.named_parameters() if p.requires_grad}
    trained: Set[str] = set()
    rounds = num_rounds_of(model)
    for index in range(rounds):
        round_ = training_round_of(model, index)
        round_params = {id(p) for p in round_.module.parameters()}
        model.train()
        with deterministic_mode_of(model):
            outputs = model(x)
            left_out = parameters_left_unused_of(model)
        got = backward_of(model, outputs)
        assert got == every - left_out, (
            f"round {index}: no gradient for {sorted(every - left_out - got)[:8]}; unexpected gradient for "
            f"{sorted(got & left_out)[:8]}")
        by_id = {id(p): n for n, p in model.named_parameters()}
        assert {by_id[i] for i in round_params if i in by_id} <= got, "the round's module does not train in full"
        trained |= got

        # A model with a deterministic mode besides its own runs its own mode too (see below).
        if not isinstance(deterministic_mode_of(model), contextlib.nullcontext):
            check_stochastic_mode(model, x, every, left_out, got)

        if index + 1 < rounds:
            model.eval()
            with torch.no_grad():
                heldout = forward_heads_of(model, torch.randn(4, *x.shape[1:]))
            complete_round_of(model, index, heldout, torch.arange(4) % NUM_CLASSES_BWD)
    assert trained == every, f"never trained in any round: {sorted(every - trained)[:8]}"


def check_stochastic_mode(model, x, every: Set[str], deterministic_left_out: Set[str], deterministic: Set[str]):
    """The model's own training mode: where it leaves out more than its deterministic mode (a stochastic draw),
    each step trains exactly what it drew, every part is drawn in time, and the eval output does not depend
    on the draws."""
    model.train()
    outputs = model(x)
    drawn_out = parameters_left_unused_of(model)
    step = backward_of(model, outputs)
    assert step == every - drawn_out
    if drawn_out == deterministic_left_out:
        return
    drawn = set(step)
    for _ in range(11):
        outputs = model(x)
        drawn_out = parameters_left_unused_of(model)
        step = backward_of(model, outputs)
        assert drawn_out > deterministic_left_out and step == every - drawn_out
        drawn |= step
    assert drawn == deterministic, f"never drawn in 12 steps: {sorted(deterministic - drawn)[:8]}"
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


# --- default cfg ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_name", cases("default_cfg"))
def test_default_cfg(model_name):
    """timm's test_model_default_cfgs: cfg names, unpooled forward_features matching pool_size, pre-logits of
    head_hidden_size, reset_classifier(0) pooled and reset_classifier(0, '') unpooled."""
    torch.manual_seed(0)
    model = timm.create_model(model_name).eval()
    cfg = model.pretrained_cfg
    for key in ("input_size", "first_conv", "classifier", "pool_size", "num_classes"):
        assert key in cfg, f"pretrained_cfg lacks {key!r}"
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    state_dict = model.state_dict()
    spatial = not exempt(model_name, "default_cfg:spatial")
    unpooled = spatial and not exempt(model_name, "default_cfg:unpooled")
    size = tuple(cfg["input_size"])
    x = torch.randn(1, *size)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        if spatial:
            pool_size = cfg["pool_size"]
            assert pool_size is not None and features.dim() == 4, f"features {tuple(features.shape)}, pool_size {pool_size}"
            assert tuple(features.shape[-2:]) == tuple(pool_size), f"unpooled {tuple(features.shape)} != pool_size {pool_size}"
            assert features.shape[1] == model.num_features
        else:
            assert features.shape[-1 if features.dim() == 3 else 1] == model.num_features
        assert pre_logits.shape == (1, model.head_hidden_size)

        model.reset_classifier(0)
        assert model.num_classes == 0
        pooled = model(x)
        assert isinstance(pooled, torch.Tensor) and pooled.shape == pre_logits.shape, (
            f"forward after reset_classifier(0): {getattr(pooled, 'shape', type(pooled))}, pre-logits {pre_logits.shape}")

        if unpooled:
            model.reset_classifier(0, "")
            out = model(x)
            assert out.dim() == 4 and tuple(out.shape[-2:]) == tuple(cfg["pool_size"]), tuple(out.shape)
            fresh = timm.create_model(model_name, num_classes=0, global_pool="").eval()
            out = fresh(x)
            assert out.dim() == 4 and tuple(out.shape[-2:]) == tuple(cfg["pool_size"]), tuple(out.shape)
        elif spatial:
            model.reset_classifier(0, "")  # timm skips the shape check for early-pooling heads, not the call

    if cfg.get("num_classes"):
        classifier = cfg["classifier"]
        for name in (classifier,) if isinstance(classifier, str) else classifier:
            assert f"{name}.weight" in state_dict, f"classifier {name} not in the state_dict"
    first_conv = cfg["first_conv"]
    for name in (first_conv,) if isinstance(first_conv, str) else first_conv:
        assert f"{name}.weight" in state_dict, f"first_conv {name} not in the state_dict"


# --- features ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_name", cases("features_only"))
def test_features_only(model_name):
    """``features_only=True``: one map per feature_info level with its channels and reduction; at least three
    levels wherever the network has three resolutions."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    size = input_size(model)
    with torch.no_grad():
        outputs = model(torch.randn(1, *size))
    check_feature_maps(outputs, channels, reductions, size, 1)
    check_levels(model_name, len(channels), size)


@pytest.mark.parametrize("model_name", cases("forward_intermediates"))
def test_forward_intermediates(model_name):
    """``forward_intermediates``: every feature_info level, a final map equal to forward_features, unchanged
    under grad checkpointing."""
    torch.manual_seed(0)
    model = timm.create_model(model_name).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    size = input_size(model)
    x = torch.randn(1, *size)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x, output_fmt="NCHW")
        check_feature_maps(intermediates, info.channels(), info.reduction(), size, 1)
        torch.testing.assert_close(final, model.forward_features(x))
        if hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
            again, _ = model.forward_intermediates(x, output_fmt="NCHW")
            torch.testing.assert_close(again, final, rtol=1e-4, atol=1e-5)
    check_levels(model_name, len(info.channels()), size)


@pytest.mark.parametrize("model_name", cases("features_fx"))
def test_features_fx(model_name):
    """``features_only=True, feature_cls='fx'``: timm's FX feature extractor on the feature_info levels."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, features_only=True, feature_cls="fx").eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    size = input_size(model)
    with torch.no_grad():
        outputs = model(torch.randn(1, *size))
    check_feature_maps(list(outputs.values()) if isinstance(outputs, dict) else outputs, channels, reductions,
                       size, 1)


# --- FX ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_name", cases("fx_forward"))
def test_fx_forward(model_name):
    """Symbolic tracing (timm's notrace leaves) gives a graph whose eval output equals the module's exactly."""
    torch.manual_seed(0)
    model = timm.create_model(model_name).eval()
    x = torch.randn(1, *input_size(model))
    with torch.inference_mode():
        expected = as_tensor(model(x))
        traced = fx_extractor(model)
        got = as_tensor(traced(x))
    assert torch.equal(got, expected)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("model_name", cases("fx_backward"))
def test_fx_backward(model_name):
    """The train-mode graph returns every head, and every parameter the step trains gets a gradient."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=NUM_CLASSES_BWD).train()
    x = torch.randn(2, *input_size(model))
    with deterministic_mode_of(model):
        traced = fx_extractor(model, train=True).train()
        outputs = traced(x)
        left_out = parameters_left_unused_of(model)
    expected_heads = len(getattr(model, "head_names", ("main",)))
    assert len(outputs) == expected_heads, f"{len(outputs)} outputs for {expected_heads} heads"
    every = {n for n, _ in traced.named_parameters()}
    got = backward_of(traced, outputs)
    assert got == every - left_out, f"no gradient for {sorted(every - left_out - got)[:8]}"


# --- training hooks ------------------------------------------------------------------------------------------

def _training_step(model, x, y, seed: int = 1):
    torch.manual_seed(seed)
    outputs = model(x)
    loss, _ = loss_of(model)(outputs, y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _calls_per_module(model) -> Tuple[Counter, List]:
    calls: Counter = Counter()
    handles = [m.register_forward_hook(lambda mod, a, o, name=name: calls.update([name]))
               for name, m in model.named_modules() if name]
    return calls, handles


@pytest.mark.parametrize("model_name", cases("training_hooks"))
def test_training_hooks(model_name):
    """timm's training hooks: ``group_matcher`` places every parameter (stem first, classifier last) for
    layer-wise decay, ``no_weight_decay`` names real parameters, and ``set_grad_checkpointing`` recomputes
    in a real training step without changing its loss or gradients."""
    torch.manual_seed(0)
    model = timm.create_model(model_name)
    names = [n for n, _ in model.named_parameters()]
    for coarse in (True, False):
        layer_of = timm.models.group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)
        assert set(layer_of) == set(names), f"group_matcher(coarse={coarse}) misses {set(names) - set(layer_of)}"
    first_conv = model.pretrained_cfg["first_conv"]
    first_conv = (first_conv,) if isinstance(first_conv, str) else tuple(first_conv)
    classifiers = tuple(getattr(model, "classifier_names", lambda: ())()) or (model.pretrained_cfg["classifier"],)
    layer_of = timm.models.group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    top = max(layer_of.values())
    for conv in first_conv:
        assert layer_of[f"{conv}.weight"] == 0, f"first conv {conv} is in layer group {layer_of[f'{conv}.weight']}"
    main_classifier = classifiers[-1] if not isinstance(classifiers[-1], (tuple, list)) else classifiers[-1][-1]
    assert layer_of[f"{main_classifier}.weight"] == top, "the classifier is not in the last layer group"

    no_decay = model.no_weight_decay()
    assert isinstance(no_decay, (set, frozenset, list, tuple))
    for pattern in no_decay:
        assert any(n == pattern or n.startswith(f"{pattern}.") or fnmatch.fnmatch(n, pattern)
                   for n in names), f"no_weight_decay names {pattern!r}, which is no parameter"

    optimizer = timm.optim.create_optimizer_v2(model, opt="sgd", lr=0.1, weight_decay=1e-4, layer_decay=0.75)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len([p for p in model.parameters()
                                                                         if p.requires_grad])

    # grad checkpointing in a training step: same loss and gradients, and something is recomputed
    small = torch.randn(2, *input_size(model))
    target = torch.arange(2) % max(model.num_classes, 1)
    model.train()
    reference = copy.deepcopy(model)
    ref_calls, handles = _calls_per_module(reference)
    ref_loss, ref_grads = _training_step(reference, small, target)
    for h in handles:
        h.remove()
    model.set_grad_checkpointing(True)
    calls, handles = _calls_per_module(model)
    loss, grads = _training_step(model, small, target)
    for h in handles:
        h.remove()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-3, atol=1e-5, msg=name)
    assert any(calls[n] > ref_calls[n] for n in calls), "set_grad_checkpointing(True) recomputed nothing"


# --- slow: TorchScript, FX then TorchScript, export, compile ------------------------------------------------

@pytest.mark.parametrize("model_name", cases("torchscript", slow_family=True))
def test_torchscript(model_name):
    """Built under ``timm.set_scriptable(True)``, the eval model scripts and gives the module's output."""
    torch.manual_seed(0)
    with timm.set_scriptable(True):
        model = timm.create_model(model_name).eval()
    x = torch.randn(1, *input_size(model))
    scripted = torch.jit.script(model)
    with torch.no_grad():
        got, expected = scripted(x), model(x)
    assert got.shape == (1, model.num_classes)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_name", cases("fx_torchscript", slow_family=True))
def test_fx_torchscript(model_name):
    """The FX graph of the eval model scripts too."""
    torch.manual_seed(0)
    with timm.set_scriptable(True):
        model = timm.create_model(model_name).eval()
    x = torch.randn(1, *input_size(model))
    scripted = torch.jit.script(fx_extractor(model))
    with torch.inference_mode():
        got, expected = as_tensor(scripted(x)), model(x)
    assert got.shape == (1, model.num_classes)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_name", cases("export", slow_family=True))
def test_export(model_name):
    """``torch.export.export(model.eval(), (x,))`` and the exported program gives the module's output."""
    torch.manual_seed(0)
    model = timm.create_model(model_name).eval()
    x = torch.randn(1, *input_size(model))
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        got, expected = program.module()(x), model(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_name", cases("compile", slow_family=True))
def test_compile(model_name):
    """``torch.compile`` of the eval model captures it in one graph and gives the module's output."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = timm.create_model(model_name).eval()
    x = torch.randn(1, *input_size(model))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        got, expected = compiled(x), model(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# --- the exemptions themselves -------------------------------------------------------------------------------

def test_exemptions_name_registered_models_known_checks_and_reasons():
    for model_name, entry in conformance_exemptions().items():
        assert model_name in MODELS, f"exemption for unregistered model {model_name}"
        for check, reason in entry.items():
            assert check in CONFORMANCE_CHECKS and reason.strip()
