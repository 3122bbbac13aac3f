"""CLDL: the loss and its gradient against hand arithmetic, Eq. 9 against brute force, head placement,
NIN/GoogLeNet/VGG models, numerics at certainty, soft targets, weights in and out."""
import hashlib
import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import collab_zoo
from collab_zoo.errors import IncompatibleConfigError, StateDictMismatchError
from collab_zoo.methods.cldl import (CLDLModel, candidate_losses, cldl_loss, cldl_scores,
                                     convert_torchvision_googlenet, head_positions, log_one_minus_softmax)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The inputs here are tiny: extra intra-op threads only contend for a shared machine's cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --- plain-Python reference arithmetic (independent of the module under test) --------------------------------------


def _softmax(row):
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def _hand_t(p_at_label, m, variant):
    """T_m from every head's probability of one label: Eq. 4 (cldl), Sec. 3.5 (cldl_minus), or 1 (ds)."""
    count = len(p_at_label)
    if variant == "ds":
        return 1.0
    companions = [t for t in range(count) if t != m] if variant == "cldl" else list(range(m))
    if not companions:
        return 1.0
    product = 1.0
    for t in companions:
        product *= 1.0 - p_at_label[t]
    return product ** (1.0 / len(companions))


def _hand_loss(heads, target, lambdas, variant):
    batch = len(target)
    total = 0.0
    for m in range(len(heads)):
        acc = 0.0
        for b in range(batch):
            probs = [_softmax(h[b]) for h in heads]
            y = target[b]
            acc += _hand_t([p[y] for p in probs], m, variant) * -math.log(probs[m][y])
        total += lambdas[m] * acc / batch
    return total


def _hand_s(heads, b, y, lambdas, variant):
    """Eq. 9's S(y) for sample b, one candidate label at a time."""
    probs = [_softmax(h[b]) for h in heads]
    return sum(lambdas[m] * _hand_t([p[y] for p in probs], m, variant) * -math.log(probs[m][y])
               for m in range(len(heads)))


HEADS4 = [[[0.2, -1.0, 0.5, 1.3], [1.5, 0.3, -0.2, 0.0], [0.1, 0.1, 2.2, -0.7]],
          [[-0.4, 0.9, 0.1, 0.3], [0.0, 2.0, -1.0, 0.6], [1.2, -0.3, 0.4, 0.9]],
          [[1.1, 0.2, -0.3, -0.8], [-0.5, 0.4, 0.8, 1.9], [0.3, 0.7, -1.1, 0.2]],
          [[0.6, -0.2, 0.9, 0.1], [0.2, -1.4, 0.5, 0.3], [-0.9, 1.6, 0.4, 0.0]]]
TARGET = [2, 1, 0]
LAMBDAS = {2: [0.3, 1.0], 3: [0.3, 0.3, 1.0], 4: [0.2, 0.5, 0.7, 1.0]}


@pytest.mark.parametrize("variant", ["cldl", "cldl_minus", "ds"])
@pytest.mark.parametrize("num_heads", [2, 3, 4])
def test_loss_matches_hand_arithmetic(num_heads, variant):
    raw = HEADS4[:num_heads]
    heads = [torch.tensor(h) for h in raw]
    total, parts = cldl_loss(heads, torch.tensor(TARGET), LAMBDAS[num_heads], variant)
    assert total.item() == pytest.approx(_hand_loss(raw, TARGET, LAMBDAS[num_heads], variant), rel=1e-5)
    assert parts["total"].item() == pytest.approx(total.item())
    # The unscaled cross-entropy of each head is logged alongside.
    assert parts["ce_head0"].item() == pytest.approx(F.cross_entropy(heads[0], torch.tensor(TARGET)).item(), rel=1e-6)


def _hand_weighted_loss(heads, target, lambdas, variant, weights):
    """The loss with per-sample weights: each head's per-sample T_m * C_m scaled by the sample's weight, then
    averaged over the batch (sum_b w_b * l_b / B)."""
    batch = len(target)
    total = 0.0
    for m in range(len(heads)):
        for b in range(batch):
            probs = [_softmax(h[b]) for h in heads]
            y = target[b]
            loss = _hand_t([p[y] for p in probs], m, variant) * -math.log(probs[m][y])
            total += lambdas[m] * weights[b] * loss / batch
    return total


@pytest.mark.parametrize("variant", ["cldl", "cldl_minus", "ds"])
def test_sample_weights_known_answer(variant):
    heads = [torch.tensor(h) for h in HEADS4[:3]]
    target = torch.tensor(TARGET)
    plain, plain_parts = cldl_loss(heads, target, LAMBDAS[3], variant)
    ones, ones_parts = cldl_loss(heads, target, LAMBDAS[3], variant, sample_weight=torch.ones(3))
    assert ones.item() == pytest.approx(plain.item(), rel=1e-6)
    assert all(ones_parts[k].item() == pytest.approx(v.item(), rel=1e-6) for k, v in plain_parts.items())
    weights = [0.5, 0.0, 2.0]
    total, _ = cldl_loss(heads, target, LAMBDAS[3], variant, sample_weight=torch.tensor(weights))
    by_hand = _hand_weighted_loss(HEADS4[:3], TARGET, LAMBDAS[3], variant, weights)
    assert total.item() == pytest.approx(by_hand, rel=1e-5)
    # Weight 0 on samples 1 and 2: only sample 0 is left, in every head's term (T_m included): its own loss / B.
    dropped, _ = cldl_loss(heads, target, LAMBDAS[3], variant, sample_weight=torch.tensor([1.0, 0.0, 0.0]))
    alone = _hand_loss([[h[0]] for h in HEADS4[:3]], TARGET[:1], LAMBDAS[3], variant)
    assert dropped.item() == pytest.approx(alone / 3, rel=1e-5)
    with pytest.raises(IncompatibleConfigError, match="one weight per sample"):
        cldl_loss(heads, target, LAMBDAS[3], variant, sample_weight=torch.ones(2))


def test_model_collab_loss_takes_sample_weights():
    torch.manual_seed(0)
    model = collab_zoo.create_model("cldl_nin_mnist", num_classes=4).train()
    heads = model(torch.randn(2, 1, 28, 28))
    raw = [[row.tolist() for row in h.detach()] for h in heads]
    total, _ = model.collab_loss(heads, torch.tensor([1, 3]), sample_weight=torch.tensor([0.25, 1.0]))
    assert total.item() == pytest.approx(
        _hand_weighted_loss(raw, [1, 3], [0.3, 0.3, 1.0], "cldl", [0.25, 1.0]), rel=1e-4)


def test_paper_default_weights_and_single_head_is_softmax_loss():
    heads = [torch.tensor(h) for h in HEADS4[:3]]
    assert cldl_loss(heads, torch.tensor(TARGET))[0].item() == pytest.approx(
        _hand_loss(HEADS4[:3], TARGET, [0.3, 0.3, 1.0], "cldl"), rel=1e-5)
    one = [torch.tensor(HEADS4[0])]
    assert cldl_loss(one, torch.tensor(TARGET))[0].item() == pytest.approx(
        F.cross_entropy(one[0], torch.tensor(TARGET)).item(), rel=1e-6)


@pytest.mark.parametrize("variant", ["cldl", "cldl_minus"])
@pytest.mark.parametrize("num_heads", [3, 4])
def test_gradient_is_lambda_times_t_times_gradient_of_c(num_heads, variant):
    """T is held constant: d l / d z_m = lambda_m * T_m * (softmax(z_m) - onehot(y)) / B, nothing from T."""
    raw = HEADS4[:num_heads]
    lambdas = LAMBDAS[num_heads]
    heads = [torch.tensor(h, requires_grad=True) for h in raw]
    cldl_loss(heads, torch.tensor(TARGET), lambdas, variant)[0].backward()
    batch = len(TARGET)
    for m in range(num_heads):
        expected = torch.zeros(batch, 4)
        for b in range(batch):
            probs = [_softmax(h[b]) for h in raw]
            t = _hand_t([p[TARGET[b]] for p in probs], m, variant)
            for k in range(4):
                grad_c = probs[m][k] - (1.0 if k == TARGET[b] else 0.0)
                expected[b, k] = lambdas[m] * t * grad_c / batch
        assert torch.allclose(heads[m].grad, expected, atol=1e-6), m
    # Differentiating through T gives another answer: head 0's logits move its companions' T.
    full = [torch.tensor(h, requires_grad=True) for h in raw]
    probs = [F.softmax(h, -1).gather(-1, torch.tensor(TARGET)[:, None]).squeeze(-1) for h in full]
    through_t = 0.0
    for m in range(num_heads):
        companions = [t for t in range(num_heads) if (t != m if variant == "cldl" else t < m)]
        t_m = torch.stack([1 - probs[t] for t in companions]).prod(0) ** (1 / len(companions)) if companions else 1.0
        through_t = through_t + lambdas[m] * (t_m * -torch.log(probs[m])).mean()
    through_t.backward()
    assert through_t.item() == pytest.approx(_hand_loss(raw, TARGET, lambdas, variant), rel=1e-5)
    assert not torch.allclose(full[0].grad, heads[0].grad, atol=1e-4)


@pytest.mark.parametrize("variant", ["cldl", "cldl_minus", "ds"])
def test_inference_ranks_by_brute_force_s(variant):
    torch.manual_seed(0)
    num_classes, batch = 9, 5
    heads = [torch.randn(batch, num_classes) * 2 for _ in range(3)]
    raw = [h.tolist() for h in heads]
    lambdas = [0.3, 0.3, 1.0]
    scores = cldl_scores(heads, lambdas, variant)
    for b in range(batch):
        brute = [_hand_s(raw, b, y, lambdas, variant) for y in range(num_classes)]
        assert scores[b].tolist() == pytest.approx(brute, rel=1e-5)
        assert int(scores[b].argmin()) == min(range(num_classes), key=brute.__getitem__)
        smallest_five = sorted(range(num_classes), key=brute.__getitem__)[:5]
        assert (-scores[b]).topk(5).indices.tolist() == smallest_five


def test_eval_mode_returns_minus_s_and_top5_is_the_five_smallest():
    torch.manual_seed(1)
    model = collab_zoo.create_model("cldl_nin", num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        scores = model(x)
        heads = model.forward_heads(x)
    assert scores.shape == (3, 10)
    raw = [h.tolist() for h in heads]
    for b in range(3):
        brute = [_hand_s(raw, b, y, [0.3, 0.3, 1.0], "cldl") for y in range(10)]
        assert (-scores[b]).tolist() == pytest.approx(brute, rel=1e-4, abs=1e-5)
        assert scores[b].topk(5).indices.tolist() == sorted(range(10), key=brute.__getitem__)[:5]
    assert torch.equal(model.predict(heads), scores)


def test_main_head_option_and_head_probabilities():
    torch.manual_seed(2)
    plain_rule = collab_zoo.create_model("cldl_nin", num_classes=10).eval()
    main_rule = collab_zoo.create_model("cldl_nin", num_classes=10, inference="main").eval()
    main_rule.load_state_dict(plain_rule.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(main_rule(x), plain_rule.backbone(x))
        assert torch.allclose(main_rule(x), plain_rule.forward_heads(x)[-1], atol=1e-6)
        assert not torch.allclose(plain_rule(x), main_rule(x))
    probs = plain_rule.head_probabilities(x)
    assert probs.shape == (3, 2, 10) and torch.allclose(probs.sum(-1), torch.ones(3, 2), atol=1e-5)
    assert main_rule.training_only_prefixes == ("aux_heads",) and plain_rule.training_only_prefixes == ()


def test_head_placement_formula():
    assert head_positions(9, 3) == (3, 6, 9)                # NIN
    assert head_positions(11, 3) == (5, 8, 11)              # VGG-11
    assert head_positions(16, 3) == (8, 12, 16)             # VGG-16
    assert [head_positions(9, m) for m in range(1, 6)] == [(9,), (5, 9), (3, 6, 9), (3, 5, 7, 9), (1, 3, 5, 7, 9)]
    # (64 / 2) ** 0.8 is exactly 16; floating point gives 16.000000000000004, which must not become 17.
    assert head_positions(64, 2) == (48, 64)
    with pytest.raises(IncompatibleConfigError, match="Head counts that fit"):
        head_positions(9, 6)


def test_models_put_heads_where_the_paper_does():
    with torch.device("meta"):
        for name, layers, total in (("cldl_vgg11", (5, 8, 11), 11), ("cldl_vgg16", (8, 12, 16), 16)):
            model = timm.create_model(name, num_classes=10)
            assert model.head_layers == layers and model.placement.num_layers == total
            assert model.head_names == (f"aux_layer{layers[0]}", f"aux_layer{layers[1]}", "main")
    # NIN: M = 1..5 for the paper's Fig. 3; heads on any weight layer, including inside a block.
    x = torch.randn(2, 3, 32, 32)
    for m, layers in zip(range(1, 6), [(9,), (5, 9), (3, 6, 9), (3, 5, 7, 9), (1, 3, 5, 7, 9)]):
        model = collab_zoo.create_model("cldl_nin", num_classes=10, num_heads=m)
        assert model.head_layers == layers and len(model.aux_heads) == m - 1
        assert model.lambdas == (0.3,) * (m - 1) + (1.0,)
        outputs = model.train()(x)
        assert len(outputs) == m and all(o.shape == (2, 10) for o in outputs)
    # Layer 5 of NIN is the first cccp of the second block (192 channels); layer 1 is conv1 (192).
    assert model.aux_heads[0].conv.in_channels == 192
    assert collab_zoo.create_model("cldl_nin", num_classes=10).aux_heads[0].conv.in_channels == 96
    custom = collab_zoo.create_model("cldl_nin", num_classes=10, head_layers=(2, 7, 9), lambdas=(0.5, 0.5, 1.0))
    assert custom.head_layers == (2, 7, 9) and custom.head_names == ("aux_layer2", "aux_layer7", "main")


def test_generic_timm_backbone_maps_weight_layers_to_stages():
    with torch.device("meta"):
        resnet = timm.create_model("cldl", backbone="resnet50")
    # L = 53 convolutions + fc = 54, V = ceil(18 ** 0.8) = 11: r = (32, 43, 54). layer2 ends at weight layer 24,
    # layer3 at 43: the deepest stage ending at or before each r.
    assert resnet.placement.num_layers == 54 and resnet.head_layers == (32, 43, 54)
    assert resnet.head_names == ("aux_layer2", "aux_layer3", "main")
    named = collab_zoo.create_model("cldl", backbone="test_resnet", num_classes=5, head_stages=("layer1", "layer3"))
    assert named.head_names == ("aux_layer1", "aux_layer3", "main")
    with pytest.raises(IncompatibleConfigError, match="same feature stage"):
        collab_zoo.create_model("cldl", backbone="test_resnet", num_classes=5, head_stages=("layer2", "layer2"))


def test_companion_heads_take_distinct_stages_on_few_stage_backbones():
    with torch.device("meta"):
        model = timm.create_model("cldl", backbone="convnext_atto", num_classes=10)
    # ConvNeXt-atto, depths (2, 2, 6, 2): stem conv 1, each block dwconv + 2 linear = 3, a downsampling conv before
    # stages 1-3, the classifier: L = 1 + 3 * 12 + 3 + 1 = 41; stages end at layers 7, 14, 33, 40.
    # V = ceil((41 / 3) ** 0.8) = 9, r = (23, 32, 41). r = 32 reads the deepest stage ending by 32 (stages.1, at 14);
    # r = 23 would read it too, so it takes the stage below: stages.0.
    assert model.placement.num_layers == 41 and model.head_layers == (23, 32, 41)
    assert model._view.stage_layers == [7, 14, 33, 40]
    assert model.head_names == ("aux_stages_0", "aux_stages_1", "main")
    with pytest.raises(IncompatibleConfigError, match="no feature stage is left"):
        collab_zoo.create_model("cldl", backbone="convnext_atto", num_classes=10, num_heads=5)


FAMILIES = [("convnext_atto", {}), ("efficientnet_b0", {}), ("regnety_002", {}), ("mobilenetv3_small_050", {}),
            ("vit_tiny_patch16_224", dict(img_size=32)), ("dcl_wrn16", {}), ("dcl_lenet_cifar", {})]


@pytest.mark.parametrize("backbone,kwargs", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_cldl_on_timm_families_and_dcl_networks(backbone, kwargs):
    """A training step reaches every parameter; eval ranks labels by Eq. 9 computed by hand from the heads."""
    torch.manual_seed(0)
    model = collab_zoo.create_model("cldl", backbone=backbone, num_classes=5, **kwargs)
    assert len(model.head_names) == 3 and len(set(model.placement.taps)) == 2
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    model.train()
    heads = model(x)
    loss, parts = model.collab_loss(heads, y)
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.eval()
    with torch.no_grad():
        scores = model(x)
        raw = [[row.tolist() for row in h] for h in model.forward_heads(x)]
    for b in range(2):
        by_hand = [_hand_s(raw, b, label, [0.3, 0.3, 1.0], "cldl") for label in range(5)]
        assert scores[b].tolist() == pytest.approx([-v for v in by_hand], rel=1e-4, abs=1e-5)


def test_cldl_composes_only_with_single_head_networks_and_passes_on_stochastic_branches():
    with pytest.raises(IncompatibleConfigError, match="one head trained in one round"):
        collab_zoo.create_model("cldl", backbone="dks_resnet20", num_classes=5)
    model = collab_zoo.create_model("cldl", backbone="dcl_lenet", num_classes=5)   # A3S: one pair drawn per step
    assert model.leaves_parameters_unused
    model.train()
    model(torch.randn(2, 1, 28, 28))
    unused = model.parameters_left_unused()
    assert len(unused) == 4 and all(n.startswith("backbone.backbone.fc1.branches.") for n in unused)
    with model.deterministic_mode():
        model(torch.randn(2, 1, 28, 28))
        assert model.parameters_left_unused() == set()


def test_googlenet_differs_from_the_papers_caffe_googlenet_exactly_as_documented():
    with torch.device("meta"):
        model = collab_zoo.create_model("cldl_googlenet", num_classes=1000)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(c.bias is None for c in convs) and len(bns) == len(convs)
    # Caffe's "5x5" branches, (in, out) per inception module 3a..5b, are 3x3 here.
    five = [(16, 32), (32, 96), (16, 48), (24, 64), (24, 64), (32, 64), (32, 128), (32, 128), (48, 128)]
    five_here = [c for c in convs if "branch3.1" in _name_of(model, c)]
    assert sorted((c.in_channels, c.out_channels) for c in five_here) == sorted(five)
    assert all(c.kernel_size == (3, 3) for c in five_here)
    channels = sum(c.out_channels for c in convs)
    caffe = 13_378_280
    expected = caffe - 16 * sum(i * o for i, o in five) - channels + 2 * channels
    assert sum(p.numel() for p in model.parameters()) == expected == 13_004_888


def _name_of(model, module):
    return next(n for n, m in model.named_modules() if m is module)


def test_fc_head_width_and_dropout_options():
    """head_hidden / head_drop: a companion is pool, FC(C -> hidden) + ReLU, dropout, FC(hidden -> K); counted by
    hand on VGG-11 (heads at weight layers 5 and 8: conv outputs of 512 channels)."""
    with torch.device("meta"):
        model = collab_zoo.create_model("cldl_vgg11", num_classes=10, head_hidden=256, head_drop=0.2)
    assert model.head_layers == (5, 8, 11)
    assert [sum(p.numel() for p in h.parameters()) for h in model.aux_heads] == [512 * 256 + 256 + 256 * 10 + 10] * 2
    assert all(h.drop.p == 0.2 for h in model.aux_heads)


def test_plain_nin_parameter_counts():
    assert sum(p.numel() for p in timm.create_model("nin").parameters()) == 984_356
    assert sum(p.numel() for p in timm.create_model("nin_mnist").parameters()) == 349_674
    assert timm.create_model("nin_mnist").pretrained_cfg["input_size"] == (1, 28, 28)
    with torch.device("meta"):
        assert sum(p.numel() for p in timm.create_model("googlenet").parameters()) == 6_624_904


def test_log_one_minus_softmax_is_exact_and_finite():
    torch.manual_seed(3)
    logits = torch.randn(6, 12) * 6
    reference = torch.log1p(-F.softmax(logits.double(), -1)).float()
    assert torch.allclose(log_one_minus_softmax(logits), reference, atol=1e-5)
    certain = torch.zeros(1, 10)
    certain[0, 4] = 1e4  # p = 1 in float32
    value = log_one_minus_softmax(certain)
    assert torch.isfinite(value).all()
    assert value[0, 4].item() == pytest.approx(math.log(9) - 1e4, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", ["cldl", "cldl_minus"])
def test_certain_companion_keeps_loss_and_gradients_finite(dtype, variant):
    target = torch.tensor([1, 4, 7, 0])
    certain = torch.zeros(4, 10)
    certain[torch.arange(4), target] = 1e4                 # head 0 is sure of the right label
    torch.manual_seed(4)
    raw = [certain, torch.randn(4, 10), torch.randn(4, 10).sign() * 1e4]   # head 2 sure of random labels
    heads = [h.to(dtype).requires_grad_() for h in raw]
    total, parts = cldl_loss(heads, target, variant=variant)
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    assert all(torch.isfinite(h.grad).all() for h in heads)
    # Every head whose companions include head 0 gets T = 0: no gradient at all.
    assert torch.count_nonzero(heads[1].grad) == 0 and torch.count_nonzero(heads[2].grad) == 0
    scores = cldl_scores([h.detach() for h in heads], variant=variant)
    assert torch.isfinite(scores).all()


def test_variants_modulate_as_defined():
    model_minus = collab_zoo.create_model("cldl_nin", num_classes=10, loss="cldl_minus")
    model_ds = collab_zoo.create_model("cldl_nin", num_classes=10, loss="ds")
    heads = tuple(torch.tensor(h) for h in HEADS4[:3])
    target = torch.tensor(TARGET)
    t_minus = model_minus.modulation(heads, target)
    assert torch.equal(t_minus[0], torch.ones(3))            # the lowest head looks at no one
    p0 = F.softmax(heads[0], -1)[torch.arange(3), target]
    assert torch.allclose(t_minus[1], 1 - p0)                # head 2 looks only at head 1
    assert torch.equal(model_ds.modulation(heads, target), torch.ones(3, 3))
    loss_ds, _ = model_ds.collab_loss(heads, target)
    expected = sum(w * F.cross_entropy(h, target) for w, h in zip((0.3, 0.3, 1.0), heads))
    assert loss_ds.item() == pytest.approx(expected.item(), rel=1e-6)


def test_soft_targets_are_the_expected_loss():
    heads = [torch.tensor(h) for h in HEADS4[:3]]
    hard = torch.tensor(TARGET)
    one_hot = F.one_hot(hard, 4).float()
    assert cldl_loss(heads, one_hot)[0].item() == pytest.approx(cldl_loss(heads, hard)[0].item(), rel=1e-6)
    other = torch.tensor([0, 3, 3])
    mixed = 0.7 * one_hot + 0.3 * F.one_hot(other, 4).float()
    expected = 0.7 * _hand_loss(HEADS4[:3], TARGET, [0.3, 0.3, 1.0], "cldl") + \
        0.3 * _hand_loss(HEADS4[:3], other.tolist(), [0.3, 0.3, 1.0], "cldl")
    assert cldl_loss(heads, mixed)[0].item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(IncompatibleConfigError, match="soft targets"):
        cldl_loss(heads, torch.ones(3, 5) / 5)


def _input_for(name):
    if name == "cldl_nin_mnist":
        return torch.randn(2, 1, 28, 28)
    return torch.randn(2, 3, 32, 32)


CLDL_MODELS = [("cldl_nin", {}), ("cldl_nin_mnist", {}), ("cldl_googlenet", {}), ("cldl_vgg11", {}),
               ("cldl_vgg16", {}), ("cldl", dict(backbone="test_resnet")), ("cldl", dict(backbone="test_vit"))]


@pytest.mark.parametrize("name,extra", CLDL_MODELS, ids=[n + "-" + e.get("backbone", "") for n, e in CLDL_MODELS])
def test_every_model_trains_a_step_evaluates_and_resets_every_head(name, extra):
    torch.manual_seed(0)
    model = collab_zoo.create_model(name, num_classes=5, **extra)
    size = model.pretrained_cfg["input_size"] if name == "cldl" else None
    x = torch.randn(2, *size) if size else _input_for(name)
    y = torch.tensor([1, 3])
    model.train()
    heads = model(x)
    assert isinstance(heads, tuple) and len(heads) == 3 and all(h.shape == (2, 5) for h in heads)
    loss, parts = model.collab_loss(heads, y)
    loss.backward()
    assert torch.isfinite(loss) and set(parts) >= {"total", "ce_main", "t_main", "loss_main"}
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        scores = model(x)
        heads = model.forward_heads(x)
        assert scores.shape == (2, 5) and torch.equal(scores, model.predict(heads))
        assert torch.allclose(scores, -cldl_scores(heads), atol=1e-6)
        # The layer-by-layer walk that feeds the companions ends exactly where the plain network does.
        assert torch.allclose(model.forward_head(model.forward_features(x)), heads[-1], atol=1e-5)
    model.reset_classifier(7)
    modules = dict(model.named_modules())
    for classifier in model.classifier_names():
        layer = modules[classifier]
        assert (layer.out_features if hasattr(layer, "out_features") else layer.out_channels) == 7, classifier
    if not name.startswith("cldl_vgg"):  # VGG's forward costs seconds here; its classifiers were checked above
        with torch.no_grad():
            assert model(x).shape == (2, 7)
            assert all(h.shape == (2, 7) for h in model.train()(x))


def test_googlenet_baseline_is_torchvisions_with_timms_interface():
    import torchvision

    torch.manual_seed(5)
    reference = torchvision.models.GoogLeNet(num_classes=10, aux_logits=True, init_weights=True).eval()
    model = collab_zoo.create_model("googlenet", num_classes=10, pretrained=True,
                                    pretrained_cfg_overlay=dict(state_dict=reference.state_dict())).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-6)
    assert model.aux1 is None and model.get_classifier(name_only=True) == "fc" and model.num_features == 1024
    assert model.train()(x).shape == (2, 10), "never torchvision's (logits, aux2, aux1) tuple"
    with pytest.raises(IncompatibleConfigError, match="cldl_googlenet"):
        collab_zoo.create_model("googlenet", aux_logits=True)


def _torchvision_googlenet(num_classes=10):
    import torchvision

    torch.manual_seed(6)
    net = torchvision.models.GoogLeNet(num_classes=num_classes, aux_logits=True, transform_input=True,
                                       init_weights=True)
    for module in net.modules():  # non-trivial BatchNorm statistics, so a mis-mapped key would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
        # torchvision's own initialisation (std 0.01) lets the signal die out over 22 layers: the logits would
        # be the biases', the same for any input (a missing transform_input changed them by 1e-8). He-scaled
        # weights keep the output a function of the input.
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=module.in_features ** -0.5)
    return net.eval()


def test_converter_starts_cldl_googlenet_from_torchvision_weights(tmp_path):
    reference = _torchvision_googlenet()
    torch.save(reference.state_dict(), tmp_path / "googlenet.pth")
    result = convert_torchvision_googlenet(tmp_path / "googlenet.pth", tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architecture"] == "cldl_googlenet" and result["sha256"] == config["collab_zoo"]["sha256"]
    assert config["model_args"]["transform_input"] is True and config["model_args"]["inference"] == "main"
    model = collab_zoo.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    assert model.backbone.transform_input
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)
        reference.transform_input = False    # the check above can see the input transform
        assert not torch.allclose(model(x), reference(x), atol=1e-2)
        reference.transform_input = True
    trunk = model.backbone.state_dict()
    for key, value in reference.state_dict().items():
        if not key.startswith("aux"):
            assert torch.equal(trunk[key], value), key
    # The auxiliary classifiers are present (fresh) and train with the CLDL loss.
    model.train()
    heads = model(x)
    assert len(heads) == 3
    model.collab_loss(heads, torch.tensor([0, 9]))[0].backward()
    assert model.backbone.aux1.fc2.weight.grad is not None


def test_converter_reads_safetensors_and_writes_the_plain_baseline(tmp_path):
    from safetensors.torch import save_file

    reference = _torchvision_googlenet()
    save_file(reference.state_dict(), tmp_path / "googlenet.safetensors")
    # Through the command line, as a user runs it.
    from collab_zoo.convert import main as convert_main

    assert convert_main(["torchvision-googlenet", "--src", str(tmp_path / "googlenet.safetensors"), "--arch",
                         "googlenet", "--out", str(tmp_path / "plain")]) == 0
    model = collab_zoo.create_model(f"local-dir:{tmp_path / 'plain'}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)
    save_file({"fc.weight": torch.zeros(10, 1024)}, tmp_path / "partial.safetensors")
    with pytest.raises(StateDictMismatchError, match="not a torchvision GoogLeNet"):
        convert_torchvision_googlenet(tmp_path / "partial.safetensors", tmp_path / "bad")


def test_saved_model_round_trips_with_its_configuration(tmp_path):
    torch.manual_seed(7)
    model = collab_zoo.create_model("cldl_nin", num_classes=10, num_heads=4, loss="cldl_minus",
                                    lambdas=(0.2, 0.4, 0.6, 1.0)).eval()
    folder = collab_zoo.save_for_hub(model, tmp_path / "nin")
    loaded = collab_zoo.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert loaded.head_layers == (3, 5, 7, 9) and loaded.loss == "cldl_minus" and loaded.lambdas == model.lambdas
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))

    generic = collab_zoo.create_model("cldl", backbone="test_resnet", num_classes=4).eval()
    folder = collab_zoo.save_for_hub(generic, tmp_path / "generic")
    again = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x), generic(x))


def test_backbone_checkpoint_loads_and_main_only_models_ship_without_companions(tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(8)
    plain = timm.create_model("nin", num_classes=10).eval()
    save_file(plain.state_dict(), tmp_path / "nin.safetensors")
    model = collab_zoo.create_model("cldl_nin", num_classes=10, inference="main", pretrained=True,
                                    pretrained_cfg_overlay=dict(file=str(tmp_path / "nin.safetensors"))).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    folder = collab_zoo.save_for_hub(model, tmp_path / "main-only")
    assert not any(k.startswith("aux_heads") for k in load_file(folder / "model.safetensors"))
    # The full rule needs every head: a file without the companions loads (to continue training), with the
    # companions reported as initialised and a warning that Eq. 9 inference needs them trained.
    with caplog.at_level("WARNING", logger="collab_zoo.methods.cldl"):
        full = collab_zoo.create_model("cldl_nin", num_classes=10, pretrained=True,
                                       pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors")))
    assert ("The checkpoint has no companion heads: they start untrained, and Eq. 9 inference uses every head. Train "
            "them (train.py) before evaluating with inference='cldl', or predict with inference='main'.") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="collab_zoo.methods.cldl"):   # the main rule needs no companion
        collab_zoo.create_model("cldl_nin", num_classes=10, inference="main", pretrained=True,
                                pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors")))
    assert "start untrained" not in caplog.text
    assert any(k.startswith("aux_heads.0") for k in full.pretrained_load_report.initialised)
    assert not any(k.startswith("backbone.") for k in full.pretrained_load_report.initialised)


def test_bad_configurations_say_what_to_do():
    with pytest.raises(IncompatibleConfigError, match="cldl_minus"):
        collab_zoo.create_model("cldl_nin", loss="cldl-")
    with pytest.raises(IncompatibleConfigError, match="inference"):
        collab_zoo.create_model("cldl_nin", inference="vote")
    with pytest.raises(IncompatibleConfigError, match="one weight per head"):
        collab_zoo.create_model("cldl_nin", lambdas=(0.3, 1.0))
    with pytest.raises(IncompatibleConfigError, match="positive"):
        collab_zoo.create_model("cldl_nin", lambdas=(0.3, -0.3, 1.0))
    with pytest.raises(IncompatibleConfigError, match="Head counts that fit"):
        collab_zoo.create_model("cldl_nin", num_heads=6)
    with pytest.raises(IncompatibleConfigError, match="ending with 9"):
        collab_zoo.create_model("cldl_nin", head_layers=(3, 6))
    with pytest.raises(IncompatibleConfigError, match="exactly 3 heads"):
        collab_zoo.create_model("cldl_googlenet", num_heads=4)
    with pytest.raises(IncompatibleConfigError, match="two classes"):
        collab_zoo.create_model("cldl_nin", num_classes=1)
    with pytest.raises(IncompatibleConfigError, match="not a timm model"):
        collab_zoo.create_model("cldl", backbone="no_such_net")
    model = collab_zoo.create_model("cldl_nin", num_classes=10)
    with pytest.raises(IncompatibleConfigError, match="3 head outputs"):
        model.collab_loss((torch.zeros(2, 10),), torch.tensor([0, 1]))


def test_registered_names():
    for name in ("cldl", "cldl_nin", "cldl_nin_mnist", "cldl_googlenet", "cldl_vgg11", "cldl_vgg16", "nin",
                 "nin_mnist", "googlenet"):
        assert collab_zoo.is_zoo_model(name) and timm.is_model(name)
    assert not collab_zoo.is_zoo_model("vgg16"), "VGG is timm's own"
    assert isinstance(collab_zoo.create_model("cldl_nin_mnist"), CLDLModel)
    assert collab_zoo.create_model("cldl_nin_mnist").pretrained_cfg["input_size"] == (1, 28, 28)


def test_candidate_losses_hold_t_constant():
    heads = torch.tensor(HEADS4[:3], requires_grad=True)
    per_candidate, modulation = candidate_losses(heads)
    assert not modulation.requires_grad and per_candidate.requires_grad
    assert per_candidate.shape == modulation.shape == (3, 3, 4)


def test_features_only_and_bf16_autocast():
    for name, channels in (("cldl_nin", [96, 192, 192]), ("googlenet", [64, 192, 480, 832, 1024]),
                           ("cldl_googlenet", [64, 192, 480, 832, 1024])):
        features = timm.create_model(name, features_only=True).eval()
        maps = features(torch.randn(2, 3, 32, 32))
        assert [m.shape[1] for m in maps] == channels == features.feature_info.channels()
    model = collab_zoo.create_model("cldl_nin", num_classes=10).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        heads = model(torch.randn(2, 3, 32, 32))
        loss, parts = model.collab_loss(heads, torch.tensor([3, 8]))
    loss.backward()
    assert heads[0].dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_without_classifiers_the_eval_forward_gives_the_backbones_features():
    """timm's meaning of reset_classifier(0) / (0, ''): pooled pre-logits, then unpooled maps (Eq. 9 has nothing
    to score without classifiers)."""
    model = collab_zoo.create_model("cldl_nin_mnist").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        features = model.forward_features(x)
        model.reset_classifier(0)
        assert model(x).shape == model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size)
        model.reset_classifier(0, "")
        assert model(x).shape == features.shape


# --- known answers for the options and refusals the mutation run found unchecked (issue 22) -----------------------

def test_head_positions_refuse_in_their_own_words_and_list_the_head_counts_that_fit():
    assert head_positions(1, 1) == (1,)
    assert head_positions(2, 2, gamma=0.1) == (1, 2)
    cases = [((9, 0), "CLDL needs at least one head, got num_heads=0."),
             ((0, 3), "the network needs at least one weight layer, got L=0."),
             ((9, 3, 0.0), "gamma must be positive (the paper uses 0.8), got 0.0."),
             # M = 9 fits again: V = ceil(1 ** 0.8) = 1 puts a head on every layer, the first at layer 1.
             ((9, 6), "6 heads do not fit a network of 9 weight layers: one every V=2 layers from the top puts the "
                      "first at layer -1. Head counts that fit: [1, 2, 3, 4, 5, 9]; or give the layers yourself "
                      "with head_layers=(...).")]
    for args, message in cases:
        with pytest.raises(IncompatibleConfigError) as refused:
            head_positions(*args)
        assert str(refused.value) == message


def test_loss_functions_refuse_bad_shapes_in_their_own_words():
    two_classes = "CLDL needs at least two classes: with one, 1 - p is always 0."
    with pytest.raises(IncompatibleConfigError) as refused:
        candidate_losses(torch.zeros(2, 3))
    assert str(refused.value) == "expected per-head logits [M, B, K], got shape (2, 3)."
    for bad in (lambda: candidate_losses(torch.zeros(2, 3, 1)), lambda: log_one_minus_softmax(torch.zeros(2, 3, 1))):
        with pytest.raises(IncompatibleConfigError) as refused:
            bad()
        assert str(refused.value) == two_classes
    # The class axis is the last one: one sample (B = 1) or one head is no refusal; two classes are enough.
    per_candidate, modulation = candidate_losses(torch.zeros(2, 1, 2))
    assert per_candidate.shape == modulation.shape == (2, 1, 2)
    assert torch.allclose(per_candidate, torch.full((2, 1, 2), 0.5 * math.log(2)))   # T = 1/2, C = log 2
    assert torch.allclose(log_one_minus_softmax(torch.zeros(1, 1, 2)), torch.full((1, 1, 2), math.log(0.5)))
    heads = [torch.tensor(h) for h in HEADS4[:3]]
    with pytest.raises(IncompatibleConfigError) as refused:
        cldl_loss(heads, torch.full((3, 5), 0.2))
    assert str(refused.value) == "soft targets must be [B, K] = (3, 4), got (3, 5)."
    with pytest.raises(IncompatibleConfigError) as refused:
        cldl_loss(heads, torch.tensor([0, 1]))
    assert str(refused.value) == ("targets must be class indices [B] or probability rows [B, K]; got shape (2,) "
                                  "for a batch of 3.")
    with pytest.raises(IncompatibleConfigError) as refused:
        cldl_loss(heads, torch.tensor(TARGET), sample_weight=torch.ones(2))
    assert str(refused.value) == "sample_weight must hold one weight per sample, shape [3]; got (2,)."


def test_logged_cross_entropy_is_weighted_by_the_sample_weights():
    heads = [torch.tensor(h) for h in HEADS4[:3]]
    weights = [0.5, 0.0, 2.0]
    _, parts = cldl_loss(heads, torch.tensor(TARGET), LAMBDAS[3], sample_weight=torch.tensor(weights))
    for m, name in enumerate(["head0", "head1", "head2"]):
        ce = [-math.log(_softmax(HEADS4[m][b])[TARGET[b]]) for b in range(3)]
        by_hand = sum(w * c for w, c in zip(weights, ce)) / 3      # mean(w_i * l_i), not renormalised by sum(w)
        assert parts[f"ce_{name}"].item() == pytest.approx(by_hand, rel=1e-5)


def test_the_main_rule_predicts_with_the_last_head_whatever_the_others_say():
    model = collab_zoo.create_model("cldl_nin", num_classes=4, inference="main")
    heads = (torch.zeros(1, 4), torch.tensor([[5.0, 0.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0, 0.0]]))
    assert model.predict(heads) is heads[-1]
    eq9 = collab_zoo.create_model("cldl_nin", num_classes=4)
    with pytest.raises(IncompatibleConfigError) as refused:
        eq9.predict(heads[:2])
    assert str(refused.value) == "CLDL predicts from its 3 heads' logits, got 2."


def test_head_placement_options_refuse_in_their_own_words():
    cases = [
        (("cldl_nin", dict(head_layers=(3, 2, 9))),
         "head_layers must be increasing weight-layer indices in 1..9, ending with 9 (the network's own "
         "classifier); got [3, 2, 9]."),
        (("cldl_nin", dict(head_layers=(0, 5, 9))),
         "head_layers must be increasing weight-layer indices in 1..9, ending with 9 (the network's own "
         "classifier); got [0, 5, 9]."),
        (("cldl_nin", dict(head_stages=("layer1",))),
         "NetworkInNetwork places heads on weight layers: use head_layers=(...), not head_stages."),
        (("cldl", dict(backbone="test_resnet", head_layers=(3, 2, 16))),
         "head_layers must be increasing weight-layer indices ending with 16 (this backbone's L); got [3, 2, 16]."),
        (("cldl", dict(backbone="test_resnet", head_layers=(3, 8))),
         "head_layers must be increasing weight-layer indices ending with 16 (this backbone's L); got [3, 8]."),
        (("cldl", dict(backbone="test_resnet", head_stages=(1,), head_layers=(3, 16))),
         "give head_layers or head_stages, not both."),
        (("cldl", dict(backbone="test_resnet", head_stages=(5,))), "stage index 5 out of range 0..4."),
        (("cldl", dict(backbone="test_resnet", head_stages=(-1,))), "stage index -1 out of range 0..4."),
        (("cldl", dict(backbone="test_resnet", head_stages=("layerX",))),
         "unknown stage 'layerX'; this backbone's stages: ['act1', 'layer1', 'layer2', 'layer3', 'layer4']."),
    ]
    for (name, kwargs), message in cases:
        with pytest.raises(IncompatibleConfigError) as refused:
            collab_zoo.create_model(name, num_classes=5, **kwargs)
        assert str(refused.value) == message, kwargs
    # Valid explicit placements: NIN's layer 1 and the generic backbone's first and last stages (by index or name).
    assert collab_zoo.create_model("cldl_nin", num_classes=5, head_layers=(1, 9)).head_layers == (1, 9)
    for stages in ((0, 4), ("act1", "layer4")):
        model = collab_zoo.create_model("cldl", backbone="test_resnet", num_classes=5, head_stages=stages)
        assert model.placement.taps == (0, 4) and model.head_names == ("aux_act1", "aux_layer4", "main")
        assert len(model.aux_heads) == 2 and model.num_heads == 3


# VGG's fc6/fc7 are built at 1/16 of their width below (timm's mlp_ratio): the same walk, a 15x faster build.
# The scripted walks (CLDLModel._scripted_heads and the per-network walks under it) run only under TorchScript,
# which cannot compile mutmut's trampolines: benchmarks/mutation.py deselects this test and checks those mutants
# with --by-hand instead.
SCRIPTED = [("cldl_nin", dict(num_classes=10), 32), ("cldl_nin", dict(num_classes=10, head_layers=(1, 8, 9)), 32),
            ("cldl_nin", dict(num_classes=10, loss="cldl_minus", lambdas=(0.2, 0.5, 1.0)), 32),
            ("cldl_nin", dict(num_classes=10, inference="main"), 32),
            # VGG-11: heads on the last convolution (layer 8), fc6 (9) and fc7 (10).
            ("cldl_vgg11", dict(num_classes=10, head_layers=(8, 9, 10, 11), mlp_ratio=1 / 16), 32),
            ("cldl_vgg11", dict(num_classes=10, head_layers=(9, 11), mlp_ratio=1 / 16), 32),   # fc6 alone
            ("cldl_vgg11", dict(num_classes=10, head_layers=(1, 11), mlp_ratio=1 / 16), 32),   # after a max-pool
            ("cldl_googlenet", dict(num_classes=10), 32),
            ("cldl", dict(backbone="test_resnet", num_classes=5), 64),
            ("cldl", dict(backbone="test_resnet", num_classes=5, head_stages=(0, 1, 2, 3)), 64),
            ("cldl", dict(backbone="test_resnet", num_classes=5, head_stages=(0, 2)), 64)]   # every other tap


def test_every_scripted_walk_gives_the_eager_scores():
    for name, kwargs, size in SCRIPTED:
        torch.manual_seed(0)
        with timm.set_scriptable(True):
            model = collab_zoo.create_model(name, **kwargs).eval()
        scripted = torch.jit.script(model)
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            eager = model(x)
            torch.testing.assert_close(scripted(x), eager, rtol=1e-5, atol=1e-5, msg=f"{name} {kwargs}")
            if model.inference == "cldl":   # Eq. 9 from the eager heads, not the main head's logits
                assert not torch.allclose(eager, model.forward_heads(x)[-1])
    # A backbone without a scripted walk scripts, and says at the call what TorchScript runs and what traces it.
    with timm.set_scriptable(True):
        other = torch.jit.script(collab_zoo.create_model("cldl", backbone="convnext_atto", num_classes=5).eval())
    with pytest.raises(Exception) as refused:
        other(torch.randn(1, 3, 32, 32))
    assert ("RuntimeError: TorchScript runs CLDL on NIN, VGG, GoogLeNet and ResNet-family backbones; this backbone's "
            "walk is Python only (FX and torch.export trace it).") in str(refused.value)


def test_converter_writes_what_each_architecture_needs_and_returns_where(tmp_path, capsys):
    """Through convert.main, as the command line runs it: the default --arch is cldl_googlenet; the folder's
    config and card say how the weights were made; every auxiliary classifier is shipped (fresh) so that
    fine-tuning starts from the same file."""
    from safetensors.torch import load_file

    from collab_zoo import convert

    reference = _torchvision_googlenet()
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "wrapped.pth")   # a training script's wrapper
    assert convert.main(["torchvision-googlenet", "--src", str(tmp_path / "wrapped.pth"),
                         "--out", str(tmp_path / "cldl")]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{"):])
    digest = hashlib.sha256((tmp_path / "cldl" / "model.safetensors").read_bytes()).hexdigest()
    assert summary == {"out": str(tmp_path / "cldl"), "sha256": digest, "model": "cldl_googlenet"}
    config = json.loads((tmp_path / "cldl" / "config.json").read_text())
    assert config["architecture"] == "cldl_googlenet"
    assert config["model_args"] == {"transform_input": True, "inference": "main", "num_classes": 10, "in_chans": 3}
    card = (tmp_path / "cldl" / "README.md").read_text()
    assert ("torchvision's ImageNet GoogLeNet (converted from wrapped.pth) as `cldl_googlenet`. Its auxiliary "
            "classifiers start fresh (torchvision's are untrained) and the model predicts with the main head "
            "until they are trained with the CLDL loss; then set inference='cldl'.") in card
    assert "imagenet-1k" in card
    shipped = load_file(tmp_path / "cldl" / "model.safetensors")
    assert any(k.startswith("backbone.aux1.") for k in shipped) and any(k.startswith("backbone.aux2.") for k in shipped)
    for key, value in reference.state_dict().items():
        if not key.startswith("aux"):
            assert torch.equal(shipped[f"backbone.{key}"], value), key

    assert convert.main(["torchvision-googlenet", "--src", str(tmp_path / "wrapped.pth"), "--arch", "googlenet",
                         "--out", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config["architecture"] == "googlenet"
    assert config["model_args"] == {"transform_input": True, "num_classes": 10}
    assert ("torchvision's ImageNet GoogLeNet (converted from wrapped.pth) as `googlenet`. Auxiliary classifiers "
            "off.") in (tmp_path / "plain" / "README.md").read_text()
    assert not any(k.startswith("aux") for k in load_file(tmp_path / "plain" / "model.safetensors"))


@pytest.mark.parametrize("argv,words", [
    (["--out", "o"], "the following arguments are required: --src"),
    (["--src", "w.pth"], "the following arguments are required: --out"),
    (["--src", "w.pth", "--arch", "vgg16", "--out", "o"], "argument --arch: invalid choice: 'vgg16'"),
])
def test_converter_names_a_missing_or_unknown_argument(capsys, argv, words):
    from collab_zoo import convert

    with pytest.raises(SystemExit) as stopped:
        convert.main(["torchvision-googlenet", *argv])
    assert stopped.value.code == 2 and words in capsys.readouterr().err


def test_converter_refusals_say_what_the_file_is_not(tmp_path, capsys):
    from safetensors.torch import save_file

    from collab_zoo import convert

    listed = tmp_path / "a_list.pth"
    torch.save([torch.zeros(1)], listed)
    save_file({"conv1.conv.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "no_fc.safetensors")
    reference = _torchvision_googlenet().state_dict()
    save_file({**reference, "fc.weight": torch.zeros(10, 512)}, tmp_path / "narrow.safetensors")
    cases = [
        (listed, f"error: {listed} is not a state_dict (a mapping of names to tensors)."),
        (tmp_path / "no_fc.safetensors",
         f"error: {tmp_path / 'no_fc.safetensors'} has no 'fc.weight': it is not a torchvision GoogLeNet state_dict."),
        (tmp_path / "narrow.safetensors",
         f"error: {tmp_path / 'narrow.safetensors'} is not a torchvision GoogLeNet state_dict: missing [], "
         "unexpected [], shape mismatches ['fc.weight']."),
    ]
    for src, message in cases:
        assert convert.main(["torchvision-googlenet", "--src", str(src), "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(IncompatibleConfigError) as refused:
        convert_torchvision_googlenet(listed, tmp_path / "o", arch="cldl_nin")
    assert str(refused.value) == "arch must be one of ('cldl_googlenet', 'googlenet'), got 'cldl_nin'."


def _calls(module):
    """Counts the forward calls of ``module`` (a recomputed segment calls it again in the backward pass). A pre-hook:
    torch's checkpoint stops recomputing once it has what the backward needs, which can be before the call returns."""
    counter = {"n": 0}
    module.register_forward_pre_hook(lambda *_: counter.__setitem__("n", counter["n"] + 1))
    return counter


@pytest.mark.parametrize("name,first", [("cldl_nin", "backbone.features.conv1"),
                                        ("cldl_vgg11", "backbone.features.0"),
                                        ("cldl_googlenet", "backbone.conv1")])
def test_grad_checkpointing_recomputes_the_walk_only_when_asked_and_gives_the_same_gradients(name, first):
    torch.manual_seed(3)
    # VGG's fc6/fc7 at 1/16 of their 4096 width (timm's mlp_ratio): the walk is the same, the build 15x faster.
    model = collab_zoo.create_model(name, num_classes=5, **({"mlp_ratio": 1 / 16} if name == "cldl_vgg11" else {}))
    model.train()
    for m in model.modules():          # dropout off: both passes must see the same network
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    calls = _calls(model.get_submodule(first))
    # The walk's last segment (after its last weight layer) is checkpointed too.
    last_calls = _calls([m for m in model.backbone.features if isinstance(m, torch.nn.Conv2d)][-1]) \
        if name != "cldl_googlenet" else None
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 4])
    grads = {}
    for enabled in (False, True):
        model.set_grad_checkpointing(enabled)
        model.zero_grad()
        calls["n"] = 0
        heads = model(x)
        model.collab_loss(heads, y)[0].backward()
        # Off: one forward call; on: the segment holding the first layer runs again in the backward pass.
        assert calls["n"] == (2 if enabled else 1), (enabled, calls["n"])
        if last_calls is not None:
            assert last_calls["n"] == (2 if enabled else 1), (enabled, last_calls["n"])
            last_calls["n"] = 0
        grads[enabled] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys()
    for key in grads[False]:
        torch.testing.assert_close(grads[True][key], grads[False][key], rtol=1e-4, atol=1e-6, msg=key)
    # Without a gradient to compute nothing is recomputed, whatever the switch says.
    calls["n"] = 0
    with torch.no_grad():
        model(x)
    assert calls["n"] == 1


def test_companion_heads_are_built_and_initialised_as_stated():
    torch.manual_seed(0)
    nin = collab_zoo.create_model("cldl_nin", num_classes=10)
    # NIN's companions copy its last mlpconv block (3x3 conv, pad 1, 192, 192) on the tapped layer's channels.
    for head, channels in zip(nin.aux_heads, (96, 192)):
        assert head.conv.weight.shape == (192, channels, 3, 3) and head.conv.padding == (1, 1)
        assert head.cccp1.weight.shape == (192, 192, 1, 1) and head.cccp2.weight.shape == (10, 192, 1, 1)
        for conv in (head.conv, head.cccp1, head.cccp2):      # He (fan-in) normal, zero bias
            fan_in = conv.weight[0].numel()
            assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.15)
            assert torch.count_nonzero(conv.bias) == 0
    mnist = collab_zoo.create_model("cldl_nin_mnist", num_classes=10)
    assert mnist.aux_heads[0].conv.weight.shape[1:] == (mnist.aux_heads[0].conv.in_channels, 5, 5)
    # FC companions: two FC layers, VGG's own N(0, 0.01) initialisation, zero bias, dropout 0.5 by default.
    generic = collab_zoo.create_model("cldl", backbone="test_resnet", num_classes=7, head_hidden=2048)
    for head in generic.aux_heads:
        for fc in (head.fc1, head.fc2):
            assert fc.weight.mean().abs().item() < 2e-3 and fc.weight.std().item() == pytest.approx(0.01, rel=0.1)
            assert torch.count_nonzero(fc.bias) == 0
        assert head.drop.p == 0.5 and head.fc2.out_features == 7
    assert all(h.drop.p == 0.3 for h in collab_zoo.create_model("cldl", backbone="test_resnet", num_classes=7,
                                                                 head_drop=0.3).aux_heads)
    from collab_zoo.methods.cldl import FCHead

    assert FCHead(8, 4, 3).drop.p == 0.5 and FCHead(8, 4, 1).fc2.out_features == 1
    # reset_classifier re-initialises every companion's classifier the same way; 0 classes leaves none (timm).
    nin.reset_classifier(4)
    assert nin.aux_heads[0].cccp2.weight.shape == (4, 192, 1, 1)
    assert torch.count_nonzero(nin.aux_heads[0].cccp2.bias) == 0
    generic.reset_classifier(3)
    assert generic.aux_heads[0].fc2.out_features == 3
    assert generic.aux_heads[0].fc2.weight.std().item() == pytest.approx(0.01, rel=0.3)
    assert torch.count_nonzero(generic.aux_heads[0].fc2.bias) == 0
    for model, classifier in ((nin, "cccp2"), (generic, "fc2")):
        model.reset_classifier(0)
        assert all(isinstance(getattr(h, classifier), torch.nn.Identity) for h in model.aux_heads)


def test_vgg_companions_on_fc6_and_fc7_read_4096_features():
    with torch.device("meta"):
        model = collab_zoo.create_model("cldl_vgg11", num_classes=10, head_layers=(8, 9, 10, 11), head_hidden=64)
    assert [h.fc1.in_features for h in model.aux_heads] == [512, 4096, 4096]
    assert model.head_names == ("aux_layer8", "aux_layer9", "aux_layer10", "main")


def test_lambdas_must_be_positive_and_reach_the_loss_and_the_scores():
    with pytest.raises(IncompatibleConfigError) as refused:
        collab_zoo.create_model("cldl_nin", lambdas=(0.0, 0.3, 1.0))
    assert str(refused.value) == ("every lambda must be a positive number (the paper's lambda_m in R+), got "
                                  "[0.0, 0.3, 1.0].")
    lambdas = [0.2, 0.5, 1.0]
    heads = [torch.tensor(h) for h in HEADS4[:3]]
    scores = cldl_scores(heads, lambdas)
    for b in range(3):
        assert scores[b].tolist() == pytest.approx([_hand_s(HEADS4[:3], b, y, lambdas, "cldl") for y in range(4)],
                                                   rel=1e-5)
    model = collab_zoo.create_model("cldl_nin", num_classes=4, lambdas=lambdas)
    total, _ = model.collab_loss(tuple(heads), torch.tensor(TARGET))
    assert total.item() == pytest.approx(_hand_loss(HEADS4[:3], TARGET, lambdas, "cldl"), rel=1e-5)


def test_input_channels_reach_every_backbone_and_the_saved_arguments():
    assert collab_zoo.create_model("cldl_nin").backbone.features.conv1.in_channels == 3
    assert collab_zoo.create_model("cldl_nin", in_chans=1).backbone.features.conv1.in_channels == 1
    googlenet = collab_zoo.create_model("cldl_googlenet", num_classes=10, in_chans=1)
    assert googlenet.backbone.conv1.conv.in_channels == 1
    generic = collab_zoo.create_model("cldl", backbone="test_resnet", num_classes=5, in_chans=2,
                                      backbone_kwargs=dict(drop_rate=0.1), num_heads=2)
    assert generic.backbone.conv1[0].in_channels == 2 and generic.backbone.drop_rate == 0.1
    assert generic._model_args == {"backbone": "test_resnet", "in_chans": 2, "num_heads": 2,
                                   "backbone_kwargs": {"drop_rate": 0.1}, "num_classes": 5}
    assert collab_zoo.create_model("cldl_nin", num_classes=10, loss="ds")._model_args == {"in_chans": 3, "loss": "ds",
                                                                                          "num_classes": 10}
    from collab_zoo.methods.cldl import _prefixed

    assert _prefixed("conv1") == "backbone.conv1" and _prefixed(("a", "b")) == ("backbone.a", "backbone.b")
    assert _prefixed(["a"]) == ["backbone.a"] and _prefixed(None) is None


def test_a_single_head_generic_model_is_its_backbone():
    torch.manual_seed(0)
    model = collab_zoo.create_model("cldl", backbone="test_resnet", num_classes=5, num_heads=1).eval()
    assert len(model.aux_heads) == 0 and model.head_names == ("main",)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        (main,) = model.forward_heads(x)
        assert torch.equal(main, model.backbone(x))


def test_a_bare_googlenet_file_fills_the_trunk_and_its_auxiliary_classifiers(tmp_path):
    from safetensors.torch import save_file

    reference = _torchvision_googlenet()
    save_file(reference.state_dict(), tmp_path / "googlenet.safetensors")
    model = collab_zoo.create_model("cldl_googlenet", num_classes=10, transform_input=True, pretrained=True,
                                    pretrained_cfg_overlay=dict(file=str(tmp_path / "googlenet.safetensors")))
    loaded = model.backbone.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_generic_backbones_take_explicit_layers_gamma_and_name_their_heads_by_stage():
    def placed(**kwargs):
        return collab_zoo.create_model("cldl", backbone="test_resnet", num_classes=5, **kwargs).placement

    # test_resnet: L = 16 weight layers; stages act1, layer1-4 end at weight layers 1, 6, 11, 15 (and the fc).
    assert placed(head_layers=(8, 12, 16)).taps == (2, 3)
    assert placed(gamma=0.5).layers == (10, 13, 16)          # V = ceil((16 / 3) ** 0.5) = 3
    assert collab_zoo.create_model("cldl_nin", num_classes=5, gamma=0.5).head_layers == (5, 7, 9)   # V = 2
    with pytest.raises(IncompatibleConfigError) as refused:
        placed(head_layers=(3, 16, 17))
    assert str(refused.value) == ("head_layers must be increasing weight-layer indices ending with 16 (this "
                                  "backbone's L); got [3, 16, 17].")
    assert collab_zoo.create_model("cldl", backbone="test_resnet", num_classes=5).aux_heads[0].fc1.out_features == 1024
    # A wrapped zoo network names its stages under its own "backbone."; the head names leave that out. LeNet's
    # stages are its pooling layers, each ending right after a convolution.
    lenet = collab_zoo.create_model("cldl", backbone="dcl_lenet_cifar", num_classes=5)
    assert lenet._view.stage_layers == [1, 2, 3] and lenet.head_layers == (2, 5, 8)
    assert lenet.head_names == ("aux_features_pool2", "aux_features_pool3", "main")


def test_backbones_cldl_cannot_use_are_refused_in_its_own_words():
    with pytest.raises(IncompatibleConfigError) as refused:
        collab_zoo.create_model("cldl", backbone="dks_resnet20", num_classes=5)
    assert str(refused.value) == (
        "CLDL adds heads to a network with one head trained in one round; dks_resnet20 has heads ['aux_stage1', "
        "'aux_stage2', 'main'] and 1 round(s), with an objective of its own that CLDL would override. Put CLDL inside "
        "instead (e.g. complementary with member='cldl_nin').")
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    with pytest.raises(IncompatibleConfigError) as refused:
        CLDLModel(plain)
    assert str(refused.value) == (
        "CLDL on Sequential needs timm's feature_info and forward_intermediates to read intermediate stages; this "
        "model has neither. Pick a timm model that supports features_only.")
    googlenet = timm.create_model("googlenet", num_classes=5)          # the baseline: no auxiliary classifiers
    half = collab_zoo.create_model("cldl_googlenet", num_classes=5).backbone
    half.aux2 = None
    for backbone in (googlenet, half):
        with pytest.raises(IncompatibleConfigError) as refused:
            CLDLModel(backbone)
        assert str(refused.value) == ("CLDL on GoogLeNet uses its auxiliary classifiers; build it with "
                                      "aux_logits=True.")
    with pytest.raises(IncompatibleConfigError) as refused:
        collab_zoo.create_model("cldl_googlenet", num_classes=5, head_layers=(1, 2, 3))
    assert str(refused.value).startswith("CLDL-GoogLeNet keeps GoogLeNet's own two auxiliary classifiers (after "
                                         "inception 4a and 4d) plus the main one: exactly 3 heads")
    with torch.device("meta"):
        vgg = timm.create_model("vgg11", num_classes=5)
    vgg.pre_logits = torch.nn.Identity()
    with pytest.raises(IncompatibleConfigError) as refused:
        CLDLModel(vgg)
    assert str(refused.value) == "this VGG has no fc6/fc7 (its pre_logits was pruned); CLDL needs the full network."
