"""DKS: the loss against hand arithmetic, detached teachers, pair sets, heads, export, the authors' weights."""
import hashlib
import json
import math
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F

import collab_zoo
from collab_zoo.errors import IncompatibleConfigError
from collab_zoo.methods.dks import DKSModel, dks_loss, pair_mask

from conftest import ROOT, subprocess_env

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small inputs: extra intra-op threads only contend for a shared machine's cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


DKS_MODELS = ["dks_resnet18", "dks_resnet50", "dks_resnet152", "dks_resnet20", "dks_resnet32", "dks_resnet110", "dks_wrn28_4",
              "dks_wrn28_10", "dks_densenet40_k12", "dks_densenet100_k12", "dks_mobilenet"]


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def _hand_loss(heads, target, pairs, temperature=1.0, alpha=None, beta=1.0):
    """The paper's Eq. 4 in plain Python: sum of CE plus sum over B of -sum_k p_m^k log p_n^k, batch-averaged."""
    m_count, batch = len(heads), len(target)
    alpha = alpha or [1.0] * m_count
    total = 0.0
    for m in range(m_count):
        total += alpha[m] * sum(-math.log(_softmax(heads[m][b])[target[b]]) for b in range(batch)) / batch
    for t in range(m_count):
        for s in range(m_count):
            keep = {"bidirectional": t != s, "top_down": t > s, "bottom_up": t < s, "none": False}[pairs]
            if not keep:
                continue
            h = 0.0
            for b in range(batch):
                p_t = _softmax([v / temperature for v in heads[t][b]])
                p_s = _softmax([v / temperature for v in heads[s][b]])
                h += -sum(pt * math.log(ps) for pt, ps in zip(p_t, p_s))
            total += beta * h / batch
    return total


HEADS = [[[0.2, -1.0, 0.5], [1.5, 0.3, -0.2]],
         [[-0.4, 0.9, 0.1], [0.0, 2.0, -1.0]],
         [[1.1, 0.2, -0.3], [-0.5, 0.4, 0.8]]]
TARGET = [2, 1]


@pytest.mark.parametrize("pairs", ["bidirectional", "top_down", "bottom_up", "none"])
def test_loss_matches_hand_arithmetic_for_each_pair_set(pairs):
    heads = [torch.tensor(h) for h in HEADS]
    total, parts = dks_loss(heads, torch.tensor(TARGET), pairs=pairs)
    assert total.item() == pytest.approx(_hand_loss(HEADS, TARGET, pairs), rel=1e-5)
    assert ("synergy" in parts) == (pairs != "none")


def test_temperature_and_weights():
    heads = [torch.tensor(h) for h in HEADS]
    alpha = [0.5, 2.0, 1.0]
    total, _ = dks_loss(heads, torch.tensor(TARGET), temperature=3.0, alpha=alpha, beta=0.25)
    assert total.item() == pytest.approx(_hand_loss(HEADS, TARGET, "bidirectional", 3.0, alpha, 0.25), rel=1e-5)


def _hand_weighted_loss(heads, target, weights, pairs="bidirectional"):
    """Eq. 4 with per-sample weights, in plain Python: every term is a per-sample quantity, each scaled by the
    sample's weight and averaged over the batch (sum_b w_b * l_b / B, the contract's weighted mean)."""
    m_count, batch = len(heads), len(target)
    total = 0.0
    for b in range(batch):
        sample = 0.0
        for m in range(m_count):
            sample += -math.log(_softmax(heads[m][b])[target[b]])
        for t in range(m_count):
            for s in range(m_count):
                keep = {"bidirectional": t != s, "top_down": t > s, "bottom_up": t < s, "none": False}[pairs]
                if keep:
                    p_t, p_s = _softmax(heads[t][b]), _softmax(heads[s][b])
                    sample += -sum(pt * math.log(ps) for pt, ps in zip(p_t, p_s))
        total += weights[b] * sample
    return total / batch


@pytest.mark.parametrize("divergence", ["cross_entropy", "kl"])
def test_sample_weights_of_one_change_nothing(divergence):
    heads = [torch.tensor(h) for h in HEADS]
    plain = dks_loss(heads, torch.tensor(TARGET), divergence=divergence)
    weighted = dks_loss(heads, torch.tensor(TARGET), divergence=divergence, sample_weight=torch.ones(2))
    assert weighted[0].item() == pytest.approx(plain[0].item(), rel=1e-6)
    rounded = lambda parts: {k: round(v.item(), 5) for k, v in parts.items()}  # noqa: E731
    assert rounded(weighted[1]) == rounded(plain[1])


@pytest.mark.parametrize("pairs", ["bidirectional", "top_down", "none"])
def test_sample_weights_known_answer(pairs):
    heads = [torch.tensor(h) for h in HEADS]
    total, _ = dks_loss(heads, torch.tensor(TARGET), pairs=pairs, sample_weight=torch.tensor([2.0, 0.5]))
    assert total.item() == pytest.approx(_hand_weighted_loss(HEADS, TARGET, [2.0, 0.5], pairs), rel=1e-5)
    # A zero weight removes the sample from every term: half (1 of B=2) of sample 0's loss alone, as in the hand value.
    dropped, _ = dks_loss(heads, torch.tensor(TARGET), pairs=pairs, sample_weight=torch.tensor([1.0, 0.0]))
    alone = _hand_loss([[h[0]] for h in HEADS], TARGET[:1], pairs)
    assert dropped.item() == pytest.approx(alone / 2, rel=1e-5)


def test_model_collab_loss_takes_sample_weights():
    torch.manual_seed(0)
    model = collab_zoo.create_model("dks_resnet20", num_classes=4).train()
    heads = model(torch.randn(3, 3, 16, 16))
    target = torch.tensor([0, 1, 2])
    raw = [[row.tolist() for row in h.detach()] for h in heads]
    weights = [0.0, 1.5, 1.0]
    total, parts = model.collab_loss(heads, target, sample_weight=torch.tensor(weights))
    assert total.item() == pytest.approx(_hand_weighted_loss(raw, target.tolist(), weights), rel=1e-4)
    assert set(parts) == {"ce_aux_stage1", "ce_aux_stage2", "ce_main", "synergy", "total"}
    with pytest.raises(IncompatibleConfigError, match="one weight per sample"):
        model.collab_loss(heads, target, sample_weight=torch.ones(2))


def test_beta_matrix_weights_each_ordered_pair():
    """beta as a teacher-by-student matrix: each ordered pair's H(p_m, p_n) times beta[m][n], by hand."""
    heads = [torch.tensor(h) for h in HEADS]
    beta = [[0.0, 0.5, 2.0], [1.0, 0.0, 0.25], [3.0, 0.1, 0.0]]
    total, parts = dks_loss(heads, torch.tensor(TARGET), beta=torch.tensor(beta))
    ce = sum(-math.log(_softmax(HEADS[m][b])[TARGET[b]]) for m in range(3) for b in range(2)) / 2
    synergy = sum(beta[t][s] * -sum(pt * math.log(ps) for pt, ps in zip(_softmax(HEADS[t][b]), _softmax(HEADS[s][b])))
                  for t in range(3) for s in range(3) if t != s for b in range(2)) / 2
    assert total.item() == pytest.approx(ce + synergy, rel=1e-5)
    assert parts["synergy"].item() == pytest.approx(synergy, rel=1e-5)


def test_released_code_kl_value_by_hand():
    """divergence='kl': the released code's KL(p_m || p_n) with 1e-8 added to both distributions, batch-averaged."""
    heads = [torch.tensor(h) for h in HEADS]
    _, parts = dks_loss(heads, torch.tensor(TARGET), divergence="kl")
    expected = 0.0
    for t in range(3):
        for s in range(3):
            if t == s:
                continue
            for b in range(2):
                p_t = [v + 1e-8 for v in _softmax(HEADS[t][b])]
                p_s = [v + 1e-8 for v in _softmax(HEADS[s][b])]
                expected += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s)) / 2
    assert parts["synergy"].item() == pytest.approx(expected, rel=1e-4)


def test_pair_masks():
    assert pair_mask(3, "bidirectional").sum() == 6  # the paper: 3 heads, 6 ordered pairs
    assert pair_mask(3, "top_down").tolist() == [[False] * 3, [True, False, False], [True, True, False]]
    assert pair_mask(3, "bottom_up").tolist() == [[False, True, True], [False, False, True], [False] * 3]
    with pytest.raises(IncompatibleConfigError):
        pair_mask(3, "sideways")


def test_teachers_are_detached():
    """Top-down: the main head only teaches, so the synergy term sends it no gradient; bottom-up likewise the
    shallowest head. Bidirectional: head n's gradient is sum over teachers m of (p_n - p_m) / B, nothing else."""
    base = [torch.tensor(h) for h in HEADS]
    for pairs, silent in (("top_down", 2), ("bottom_up", 0)):
        heads = [h.clone().requires_grad_() for h in base]
        total, parts = dks_loss(heads, torch.tensor(TARGET), pairs=pairs)
        ce = sum(F.cross_entropy(h, torch.tensor(TARGET)) for h in heads)
        (total - ce).backward()
        assert torch.count_nonzero(heads[silent].grad) == 0
    heads = [h.clone().requires_grad_() for h in base]
    total, _ = dks_loss(heads, torch.tensor(TARGET))
    (total - sum(F.cross_entropy(h, torch.tensor(TARGET)) for h in heads)).backward()
    probs = [F.softmax(h, -1) for h in base]
    for n in range(3):
        expected = sum(probs[n] - probs[m] for m in range(3) if m != n) / len(TARGET)
        assert torch.allclose(heads[n].grad, expected, atol=1e-6)


def test_released_code_kl_has_the_same_gradient_and_a_lower_value():
    base = [torch.tensor(h) for h in HEADS]
    grads = {}
    values = {}
    for divergence in ("cross_entropy", "kl"):
        heads = [h.clone().requires_grad_() for h in base]
        total, parts = dks_loss(heads, torch.tensor(TARGET), divergence=divergence)
        total.backward()
        grads[divergence] = torch.stack([h.grad for h in heads])
        values[divergence] = parts["synergy"].item()
    assert torch.allclose(grads["cross_entropy"], grads["kl"], atol=1e-5)
    assert values["kl"] < values["cross_entropy"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("divergence", ["cross_entropy", "kl"])
def test_extreme_logits_stay_finite(dtype, divergence):
    torch.manual_seed(0)
    heads = [(torch.randn(4, 10).sign() * 1e4).to(dtype).requires_grad_() for _ in range(3)]
    total, parts = dks_loss(heads, torch.randint(0, 10, (4,)), divergence=divergence)
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    assert all(torch.isfinite(h.grad).all() for h in heads)


def test_soft_targets_from_mixup():
    heads = [torch.tensor(h) for h in HEADS]
    soft = F.one_hot(torch.tensor(TARGET), 3).float()
    assert dks_loss(heads, soft)[0].item() == pytest.approx(dks_loss(heads, torch.tensor(TARGET))[0].item(), rel=1e-6)


def _input_for(name):
    return torch.randn(2, 3, 64, 64) if name in ("dks_resnet18", "dks_resnet50", "dks_resnet152") else \
        torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("name", DKS_MODELS)
def test_every_variant_trains_exports_and_keeps_timms_interface(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5)
    x, y = _input_for(name), torch.tensor([1, 3])
    model.train()
    heads = model(x)
    assert isinstance(heads, tuple) and len(heads) == 3 and all(h.shape == (2, 5) for h in heads)
    loss, parts = model.collab_loss(heads, y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert set(parts) >= {"synergy", "total", "ce_main"}
    model.eval()
    with torch.no_grad():
        scores = model(x)
        exported = model.export().eval()
        assert torch.equal(exported(x), scores)
        assert torch.equal(model.forward_head(model.forward_features(x)), scores)
    assert model.get_classifier(name_only=True) == "backbone.fc" and model.num_features == exported.num_features
    model.reset_classifier(7)
    model.train()
    assert all(h.shape == (2, 7) for h in model(x))
    features = timm.create_model(name, num_classes=5, features_only=True)
    maps = features(x)
    assert [m.shape[1] for m in maps] == [info["num_chs"] for info in features.feature_info.get_dicts()]


def test_eval_runs_the_backbone_only():
    model = collab_zoo.create_model("dks_resnet32", num_classes=5).eval()
    calls = []
    for head in model.aux_heads:
        head.register_forward_hook(lambda *a: calls.append(1))
    model(torch.randn(2, 3, 32, 32))
    assert calls == []


def test_export_loads_strictly_into_timm():
    model = collab_zoo.create_model("dks_resnet18", num_classes=10).eval()
    plain = timm.create_model("resnet18", num_classes=10)
    plain.load_state_dict(model.export().state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(plain.eval()(x), model(x))
    assert model.export().pretrained_cfg["architecture"] == "resnet18"


def test_pretrained_file_of_timm_resnet50_weights_gives_timms_outputs(tmp_path):
    """The issue's 'done when': a safetensors of a timm resnet50 state_dict loads into dks_resnet50."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = timm.create_model("resnet50").eval()
    save_file(reference.state_dict(), tmp_path / "resnet50.safetensors")
    model = collab_zoo.create_model("dks_resnet50", pretrained=True,
                                    pretrained_cfg_overlay=dict(file=str(tmp_path / "resnet50.safetensors"))).eval()
    x = torch.randn(2, 3, 96, 96)
    assert torch.equal(model(x), reference(x))
    initialised = model.pretrained_load_report.initialised
    assert initialised and all(k.startswith("aux_heads.") for k in initialised)


def test_fine_tuning_keeps_the_backbone_and_starts_fresh_heads(tmp_path, caplog):
    from safetensors.torch import save_file

    reference = timm.create_model("resnet50")
    save_file(reference.state_dict(), tmp_path / "w.safetensors")
    with caplog.at_level("INFO", logger="collab_zoo.weights"):
        model = collab_zoo.create_model("dks_resnet50", pretrained=True, num_classes=10,
                                        pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors")))
    report = model.pretrained_load_report
    assert "backbone.fc.weight" in report.initialised and "aux_heads.1.fc.weight" in report.initialised
    assert torch.equal(model.backbone.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)
    assert "backbone.fc.weight" in caplog.text
    assert model.backbone.fc.out_features == 10 and all(h.fc.out_features == 10 for h in model.aux_heads)


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_wrn_heads_match_the_released_code():
    with torch.device("meta"):
        model = timm.create_model("dks_wrn28_10", num_classes=100)
    assert (_count(model.backbone), _count(model.aux_heads[0]), _count(model.aux_heads[1])) == (
        36_536_884, 20_145_060, 107_464_420)


def test_default_heads_follow_the_papers_rule_on_resnet18():
    with torch.device("meta"):
        model = timm.create_model("dks_resnet18", num_classes=1000)
    after_layer2, after_layer3 = model.aux_heads
    # After layer2: 1 BasicBlock @256, then 2 @512; after layer3: 2 BasicBlocks @1024 (double width).
    assert [len(s) for s in after_layer2.stages] == [1, 2]
    assert [s[0].conv1.out_channels for s in after_layer2.stages] == [256, 512]
    assert [len(s) for s in after_layer3.stages] == [2] and after_layer3.stages[0][0].conv1.out_channels == 1024
    assert type(after_layer2.stages[0][0]) is type(model.backbone.layer3[0])


def test_dks_on_any_timm_resnet_family_model():
    with torch.device("meta"):
        d = collab_zoo.create_model("dks", backbone="resnet50d", num_classes=10)
    # resnet50d down-samples its shortcut with average pooling; the heads' blocks must too.
    shortcut = d.aux_heads[0].stages[0][0].downsample
    assert isinstance(shortcut[0], torch.nn.AvgPool2d)
    model = collab_zoo.create_model("dks", backbone="resnet34", num_classes=4, attach=("layer3",), aux="ap_2fc")
    assert model.head_names == ("aux_layer3", "main")
    model.train()
    heads = model(torch.randn(2, 3, 64, 64))
    model.collab_loss(heads, torch.tensor([0, 1]))[0].backward()
    with pytest.raises(IncompatibleConfigError, match="attach point"):
        collab_zoo.create_model("dks", backbone="resnet34", attach=("layer4",))


def test_simple_heads_are_gone_with_a_message_naming_the_choices():
    with pytest.raises(IncompatibleConfigError, match="'blocks'.*'ap_2fc', 'ap_conv_2fc', 'narrow', 'shallow'"):
        collab_zoo.create_model("dks_resnet20", aux="simple")
    with pytest.raises(IncompatibleConfigError, match="aux must be one of"):
        collab_zoo.create_model("dks_resnet20", aux="deep")


# Head parameters = training parameters - exported backbone parameters, per aux kind. The "blocks" column of the
# five DHM-defined ResNets is issue 18's table (DHM's definitions, computed independently); WRN-28-10's is the
# released DKS code's (20,145,060 + 107,464,420). The rest are this zoo's rule, pinned so that a layout change shows.
HEAD_COUNTS = {  # name: (classes, {aux: head parameters})
    "dks_resnet18": (1000, dict(blocks=41_794_000, ap_2fc=1_223_632, ap_conv_2fc=3_322_832, narrow=11_575_504,
                                shallow=18_194_896)),
    "dks_resnet50": (1000, dict(blocks=74_965_968, ap_2fc=7_247_824, ap_conv_2fc=40_810_448, narrow=21_771_728,
                                shallow=32_592_848)),
    "dks_resnet152": (1000, dict(blocks=91_723_728, ap_2fc=7_247_824, ap_conv_2fc=40_810_448, narrow=25_972_688,
                                 shallow=32_592_848)),
    "dks_resnet20": (100, dict(blocks=957_128, ap_2fc=16_200, ap_conv_2fc=49_224, narrow=255_176, shallow=273_736)),
    "dks_resnet32": (100, dict(blocks=1_677_640, ap_2fc=16_200, ap_conv_2fc=49_224, narrow=435_720, shallow=273_736)),
    "dks_resnet110": (100, dict(blocks=6_036_296, ap_2fc=16_200, ap_conv_2fc=49_224, narrow=1_527_560,
                                shallow=273_736)),
    "dks_wrn28_4": (100, dict(blocks=20_471_368, ap_2fc=101_064, ap_conv_2fc=626_376, narrow=5_324_872,
                              shallow=4_242_504)),
    "dks_wrn28_10": (100, dict(blocks=127_609_480, ap_2fc=436_680, ap_conv_2fc=3_716_040, narrow=33_110_920,
                               shallow=26_211_720)),
    "dks_densenet40_k12": (100, dict(blocks=1_703_720, ap_2fc=298_568, ap_conv_2fc=2_364_744, narrow=845_408,
                                     shallow=304_088)),
    "dks_densenet100_k12": (100, dict(blocks=11_494_120, ap_2fc=1_619_048, ap_conv_2fc=15_415_464,
                                      narrow=5_501_608, shallow=1_333_688)),
    "dks_mobilenet": (100, dict(blocks=6_791_112, ap_2fc=993_480, ap_conv_2fc=9_386_184, narrow=2_089_160,
                                shallow=2_032_584)),
}


def test_every_registered_dks_model_has_its_head_counts_pinned():
    assert set(collab_zoo.list_models("dks_*")) == set(HEAD_COUNTS)


@pytest.mark.parametrize("name", sorted(HEAD_COUNTS))
def test_head_parameter_counts_per_aux_kind(name):
    classes, expected = HEAD_COUNTS[name]
    found = {}
    for aux in expected:
        with torch.device("meta"):
            model = collab_zoo.create_model(name, num_classes=classes, aux=aux)
        found[aux] = _count(model) - _count(model.export())
    assert found == expected
    assert len(set(found.values())) == len(found)


def test_issue_18_layouts_head_by_head():
    """DHM's per-head counts from issue 18 (head after stage 2 / after stage 3)."""
    expected = {"dks_resnet18": (1000, [9_825_768, 31_968_232]), "dks_resnet50": (1000, [16_297_960, 58_668_008]),
                "dks_resnet152": (1000, [33_055_720, 58_668_008]), "dks_resnet32": (100, [298_212, 1_379_428]),
                "dks_resnet110": (100, [816_356, 5_219_940])}
    for name, (classes, per_head) in expected.items():
        with torch.device("meta"):
            model = collab_zoo.create_model(name, num_classes=classes)
        assert [_count(h) for h in model.aux_heads] == per_head, name


def test_head_kinds_against_their_definitions():
    """Each kind built as its definition says, checked by hand arithmetic on ResNet-32 (16/32/64 channels, 10
    classes), not by the code that builds it."""
    k = 10
    ap = collab_zoo.create_model("dks_resnet32", num_classes=k, aux="ap_2fc")
    # AP + FC(C -> 64) + ReLU + FC(64 -> K) on stage 1 (16 ch) and stage 2 (32 ch).
    assert [_count(h) for h in ap.aux_heads] == [16 * 64 + 64 + 64 * k + k, 32 * 64 + 64 + 64 * k + k]
    conv = collab_zoo.create_model("dks_resnet32", num_classes=k, aux="ap_conv_2fc")
    # AP by the down-sampling the main path still does (x4 after stage 1, x2 after stage 2), 3x3 conv to 64 + BN,
    # then FC 64 -> 64, FC 64 -> K.
    assert [h.pre[0].stride for h in conv.aux_heads] == [4, 2]
    assert [_count(h) for h in conv.aux_heads] == [c * 64 * 9 + 2 * 64 + 64 * 64 + 64 + 64 * k + k for c in (16, 32)]
    x = torch.randn(2, 3, 32, 32)
    conv.train()
    assert all(h.shape == (2, k) for h in conv(x))
    blocks = collab_zoo.create_model("dks_resnet32", num_classes=k)
    narrow = collab_zoo.create_model("dks_resnet32", num_classes=k, aux="narrow")
    shallow = collab_zoo.create_model("dks_resnet32", num_classes=k, aux="shallow")
    # blocks: [[5 @32, 3 @64], [5 @128]]; narrow: the same at half width; shallow: one block per stage, same width.
    layout = lambda m: [[(len(s), s[0].conv1.out_channels) for s in h.stages] for h in m.aux_heads]  # noqa: E731
    assert layout(blocks) == [[(5, 32), (3, 64)], [(5, 128)]]
    assert layout(narrow) == [[(5, 16), (3, 32)], [(5, 64)]]
    assert layout(shallow) == [[(1, 32), (1, 64)], [(1, 128)]]


def test_default_attach_points_and_layout_rule():
    model = collab_zoo.create_model("dks_resnet20", num_classes=10)
    # ResNet-20 (n=3) is not in DHM's tables: half depth (rounded up) for the earlier head, full depth at double
    # width for the head nearest the output.
    assert [[(len(s), s[0].conv1.out_channels) for s in h.stages] for h in model.aux_heads] == [
        [(2, 32), (2, 64)], [(3, 128)]]
    assert model.head_names == ("aux_stage1", "aux_stage2", "main")


GENERIC = [("convnext_atto", {}, ("aux_stages_1", "aux_stages_2"), ["stem", "stages.0", "stages.1", "stages.2"]),
           ("efficientnet_b0", {}, ("aux_blocks_2", "aux_blocks_4"),
            ["conv_stem", "bn1"] + [f"blocks.{i}" for i in range(5)]),
           ("regnety_002", {}, ("aux_s2", "aux_s3"), ["stem", "s1", "s2", "s3"]),
           ("mobilenetv3_small_050", {}, ("aux_blocks_1", "aux_blocks_3"),
            ["conv_stem", "bn1"] + [f"blocks.{i}" for i in range(4)]),
           ("vit_tiny_patch16_224", dict(img_size=32), ("aux_blocks_4", "aux_blocks_8"),
            ["cls_token", "pos_embed", "patch_embed"] + [f"blocks.{i}" for i in range(9)])]


def _train_eval_export(model, reference_name, reference_kwargs, x, y):
    """One training step (every parameter gets a gradient, no hook left behind), then eval and export: the
    exported network is exactly the backbone (keys, values and outputs), and loads strictly into a fresh build."""
    model.train()
    heads = model(x)
    assert len(heads) == len(model.head_names) and all(h.shape == (x.shape[0], 5) for h in heads)
    loss, parts = model.collab_loss(heads, y)
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert all(not m._forward_hooks for m in model.backbone.modules())
    assert {f"ce_{n}" for n in model.head_names} <= set(parts) and "synergy" in parts
    model.eval()
    exported = model.export().eval()
    mine, theirs = model.backbone.state_dict(), exported.state_dict()
    assert list(mine) == list(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    fresh = timm.create_model(reference_name, num_classes=5, **reference_kwargs).eval()
    fresh.load_state_dict(theirs, strict=True)
    with torch.no_grad():
        scores = model(x)
        assert torch.equal(exported(x), scores) and torch.equal(fresh(x), scores)
    return exported


@pytest.mark.parametrize("backbone,kwargs,names,before_last_head", GENERIC, ids=[g[0] for g in GENERIC])
def test_dks_on_timm_families_trains_evaluates_and_exports(backbone, kwargs, names, before_last_head):
    torch.manual_seed(0)
    model = collab_zoo.create_model("dks", backbone=backbone, num_classes=5, **kwargs)
    assert model.head_names == names + ("main",)
    _train_eval_export(model, backbone, kwargs, torch.randn(2, 3, 32, 32), torch.tensor([1, 3]))
    # The last head is the backbone's own later blocks, closing layers and head: exactly the backbone's tensors
    # outside what runs up to the attach point (listed by hand above), with the same shapes.
    dropped = tuple(before_last_head)
    expected = {k: v.shape for k, v in model.backbone.state_dict().items()
                if not any(k == d or k.startswith(d + ".") for d in dropped)}
    assert {k: v.shape for k, v in model.aux_heads[-1].donor.state_dict().items()} == expected


@pytest.mark.parametrize("name", ["dcl_wrn16", "dcl_lenet_cifar"])
def test_dks_on_dcl_networks_exports_the_dcl_network(name):
    from collab_zoo.methods.dcl import DCLModel, DCLModule

    torch.manual_seed(0)
    model = collab_zoo.create_model("dks", backbone=name, num_classes=5)
    assert len(model.head_names) == 3
    exported = _train_eval_export(model, name, {}, torch.randn(2, 3, 32, 32), torch.tensor([0, 4]))
    assert isinstance(exported, DCLModel) and any(isinstance(m, DCLModule) for m in exported.modules())
    assert not any(n.startswith("aux_heads") for n in exported.state_dict())


@pytest.mark.parametrize("kwargs,message", [
    (dict(backbone="cldl_nin"),
     "DKS adds heads to a network with one head trained in one round; cldl_nin has heads ['aux_layer3', "
     "'aux_layer6', 'main'] and 1 round(s), with an objective of its own that DKS would override. Put DKS inside "
     "instead (e.g. complementary with member='dks_resnet20')."),
    (dict(backbone="dcl_lenet"),  # A3S: stochastic branches
     "dcl_lenet leaves some parameters unused in a training step (stochastic DCL branches); DKS heads copy the "
     "backbone's later blocks, stochastic layers included, and each copy would draw its own branches. Build it with "
     "mode='deterministic' to put DKS on it."),
    (dict(backbone="convnext_atto", aux="narrow"),
     "on ConvNeXt DKS heads are copies of the backbone's own later blocks (aux='blocks'); aux='narrow' needs a "
     "backbone whose stages can be rebuilt at another depth or width: a zoo StagedNet (CIFAR ResNet, WRN, DenseNet, "
     "MobileNet) or a timm ResNet."),
    (dict(backbone="convnext_atto", head_widths=[[1.0], [1.0]]),
     "on ConvNeXt DKS heads are copies of the backbone's own later blocks (aux='blocks'); head_widths needs a "
     "backbone whose stages can be rebuilt at another depth or width: a zoo StagedNet (CIFAR ResNet, WRN, DenseNet, "
     "MobileNet) or a timm ResNet."),
    (dict(backbone="convnext_atto", aux="shallow", head_blocks=[[1], [1]], head_widths=[[1.0], [1.0]]),
     "on ConvNeXt DKS heads are copies of the backbone's own later blocks (aux='blocks'); aux='shallow', head_blocks "
     "and head_widths need a backbone whose stages can be rebuilt at another depth or width: a zoo StagedNet (CIFAR "
     "ResNet, WRN, DenseNet, MobileNet) or a timm ResNet."),
    (dict(backbone="no_such_net"), "backbone 'no_such_net' is not a timm model name (see timm.list_models())."),
], ids=["several-heads", "stochastic-dcl", "narrow-on-donor", "widths-on-donor", "all-on-donor", "unknown"])
def test_combinations_that_cannot_be_honoured_fail_at_construction(kwargs, message):
    with pytest.raises(IncompatibleConfigError) as refused:
        collab_zoo.create_model("dks", num_classes=5, **kwargs)
    assert str(refused.value) == message


def test_export_is_independent_of_the_training_model():
    """export() hands over a copy: changing one never changes the other."""
    model = collab_zoo.create_model("dks", backbone="convnext_atto", num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x).clone()
        exported = model.export()
        for p in exported.parameters():
            p.zero_()
        assert torch.equal(model(x), before)
        for p in model.parameters():
            p.add_(1.0)
        assert all(torch.count_nonzero(p) == 0 for p in exported.parameters())


def test_configurable_heads():
    model = collab_zoo.create_model("dks_resnet32", num_classes=10, head_blocks=[[1, 1], [2]],
                                    head_widths=[[0.5, 1.0], [1.0]], pairs="top_down", temperature=2.0)
    assert [len(s) for s in model.aux_heads[0].stages] == [1, 1]
    assert model.aux_heads[0].stages[0][0].conv1.out_channels == 16
    with pytest.raises(IncompatibleConfigError, match="copies 2 later stage"):
        collab_zoo.create_model("dks_resnet32", head_blocks=[[1], [2]], head_widths=[[1.0], [1.0]])


# ResNet-32: three stages, so heads attach after stage1 or stage2 (0..1); the head after stage1 copies two stages.
@pytest.mark.parametrize("kwargs,message", [
    (dict(head_blocks=[[1, 1]], head_widths=[[1.0, 1.0], [1.0]]),
     "head_blocks and head_widths need one entry per head (2); got 1 and 2."),
    (dict(head_blocks=[[1, 1], [2]], head_widths=[[1.0, 1.0]]),
     "head_blocks and head_widths need one entry per head (2); got 2 and 1."),
    (dict(head_blocks=[[1, 1], [2]], head_widths=[[1.0], [1.0]]),
     "the head after stage1 copies 2 later stage(s); got blocks [1, 1] and widths [1.0]."),
    (dict(head_blocks=[[1], [2]], head_widths=[[1.0, 1.0], [1.0]]),
     "the head after stage1 copies 2 later stage(s); got blocks [1] and widths [1.0, 1.0]."),
    (dict(attach=["stage9"]), "unknown attach point 'stage9'; stages: ['stage1', 'stage2', 'stage3']."),
    (dict(attach=[2]), "attach point 2 must be a stage before the last (0..1); a head after the last stage would be "
                       "the main head."),
    (dict(attach=[-1]), "attach point -1 must be a stage before the last (0..1); a head after the last stage would "
                        "be the main head."),
    (dict(attach=[1, 0]), "attach points must be distinct and in order, got [1, 0]."),
    (dict(attach=[0, 0]), "attach points must be distinct and in order, got [0, 0]."),
    (dict(attach=[]), "attach points must be distinct and in order, got []."),
    (dict(alpha=[1.0, 1.0]), "alpha needs 3 weights (aux heads + main)."),
    (dict(aux="simple"), "aux='simple' (pool + one FC) is gone: it was none of the paper's Table 3 heads. Choose one "
                         "of ('blocks', 'ap_2fc', 'ap_conv_2fc', 'narrow', 'shallow'): 'blocks' (the designed heads, "
                         "default), 'ap_2fc', 'ap_conv_2fc', 'narrow', 'shallow'."),
    (dict(pairs="sideways"),
     "pairs must be one of ('bidirectional', 'top_down', 'bottom_up', 'none'), got 'sideways'."),
    (dict(divergence="l2"), "divergence must be one of ('cross_entropy', 'kl'), got 'l2'."),
    (dict(aux="ap_2fc", head_widths=[[1.0, 1.0], [1.0]]),
     "aux='ap_2fc' heads copy no blocks: drop head_blocks/head_widths."),
    (dict(aux="ap_conv_2fc", head_blocks=[[1, 1], [1]]),
     "aux='ap_conv_2fc' heads copy no blocks: drop head_blocks/head_widths."),
], ids=["fewer-blocks", "fewer-widths", "short-widths", "short-blocks", "unknown-stage", "last-stage", "negative",
        "out-of-order", "repeated", "none", "alpha", "simple", "pairs", "divergence", "widths-for-pooled", "blocks-for-pooled"])
def test_a_head_layout_that_does_not_fit_is_refused_in_its_own_words(kwargs, message):
    with pytest.raises(IncompatibleConfigError) as refused:
        collab_zoo.create_model("dks_resnet32", num_classes=10, **kwargs)
    assert str(refused.value) == message


def test_heads_on_a_timm_resnet_are_built_with_the_backbones_block_arguments():
    """The heads copy the backbone's own block type: a ResNet built with SiLU gets SiLU blocks in its heads."""
    model = collab_zoo.create_model("dks_resnet18", num_classes=5, act_layer="silu")
    assert type(model.backbone.layer3[0].act1) is torch.nn.SiLU
    assert [type(head.stages[0][0].act1) for head in model.aux_heads] == [torch.nn.SiLU] * 2


def test_head_names_say_where_each_head_sits():
    """'aux_' and the attach point's name, dots as underscores, without the wrapper's 'backbone.' prefix (a DCL
    network keeps its timm-style network under .backbone); the main head last."""
    assert collab_zoo.create_model("dks_resnet20").head_names == ("aux_stage1", "aux_stage2", "main")
    assert collab_zoo.create_model("dks", backbone="convnext_atto", num_classes=5).head_names == (
        "aux_stages_1", "aux_stages_2", "main")
    assert collab_zoo.create_model("dks", backbone="dcl_lenet_cifar", mode="deterministic").head_names == (
        "aux_features_pool1", "aux_features_pool2", "main")


def test_a_timm_resnet_given_as_a_module_needs_its_architecture_name():
    """The heads are rebuilt from the architecture (timm.create_model(arch, layers=..., channels=...))."""
    with pytest.raises(IncompatibleConfigError) as refused:
        DKSModel(timm.create_model("resnet18", num_classes=5))
    assert str(refused.value) == "DKS on a timm ResNet needs its timm architecture name (arch=...)."


@pytest.mark.parametrize("name,kwargs", [("dks_resnet20", {}), ("dks_resnet18", {}),
                                         ("dks", {"backbone": "resnet18"})])
def test_in_chans_reaches_the_backbones_first_conv(name, kwargs):
    model = collab_zoo.create_model(name, num_classes=5, in_chans=1, **kwargs).train()
    assert model.get_submodule(model.pretrained_cfg["first_conv"]).in_channels == 1
    assert [tuple(h.shape) for h in model(torch.randn(2, 1, 32, 32))] == [(2, 5)] * 3


def _authors_file(tmp_path, arch="resnet18"):
    """A file in the authors' release format: torchvision names behind DataParallel's 'module.' prefix."""
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None).eval()
    path = tmp_path / f"{arch}_dks.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    return net, path


def test_converter_turns_the_authors_file_into_a_loadable_hub_folder(tmp_path, hub, capsys):
    """In this process (convert.main, as the command line calls it), so that the converter's own code is what
    runs; the refusal below runs `python -m collab_zoo.convert` itself."""
    from collab_zoo import convert

    net, path = _authors_file(tmp_path)
    out = tmp_path / "dks_resnet18.in1k"
    config_path = tmp_path / "dks_resnet18.in1k.json"
    config_path.write_text((ROOT / "hub_configs" / "dks_resnet18.in1k.json").read_text())
    repo = "tester/dks_resnet18-authors"
    code = convert.main(["dks", "--arch", "resnet18", "--src", str(path), "--out", str(out), "--push-to-hub", repo,
                         "--write-hub-config", str(config_path)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = json.loads(printed[printed.index("{"):])
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert {k: summary[k] for k in ("out", "model", "repo", "sha256")} == {
        "out": str(out), "model": "dks_resnet18.in1k", "repo": repo, "sha256": digest}
    # The card: the paper's Table 2 figures for DKS (hub config), and where the weights came from.
    card = (out / "README.md").read_text()
    assert "| paper_top1_err | 28.68 |" in card and "| paper_top5_err | 9.55 |" in card
    assert "(converted from resnet18_dks.pth); auxiliary heads are not included." in card
    assert json.loads((out / "config.json").read_text())["architecture"] == "dks_resnet18"
    x = torch.randn(2, 3, 64, 64)
    expected = net(x)
    local = collab_zoo.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert torch.allclose(local(x), expected, atol=1e-5)
    # The written hub config pins what was pushed; the registry then downloads and verifies it.
    pinned = json.loads(config_path.read_text())
    assert pinned["revision"] == summary["revision"] and pinned["sha256"] == summary["sha256"]
    collab_zoo.register_hub_config(config_path)
    from_hub = collab_zoo.create_model("dks_resnet18.in1k", pretrained=True).eval()
    assert torch.allclose(from_hub(x), expected, atol=1e-5)
    assert from_hub.pretrained_cfg["crop_mode"] == "squash"


def test_converter_refuses_a_file_of_another_architecture(tmp_path):
    _, path = _authors_file(tmp_path, "resnet18")
    result = subprocess.run([sys.executable, "-m", "collab_zoo.convert", "dks", "--arch", "resnet50", "--src",
                             str(path), "--out", str(tmp_path / "o")], env=subprocess_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and "Is --arch right?" in result.stderr
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_converter_refusals_say_what_the_file_is_not(tmp_path, capsys):
    from collab_zoo import convert

    _, path = _authors_file(tmp_path, "resnet18")
    assert convert.main(["dks", "--arch", "resnet50", "--src", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "error: The checkpoint is not a timm/torchvision 'resnet50' state_dict: missing [" in capsys.readouterr().err
    listed = tmp_path / "a_list.pth"
    torch.save([torch.zeros(1)], listed)
    assert convert.main(["dks", "--arch", "resnet18", "--src", str(listed), "--out", str(tmp_path / "o")]) == 2
    assert f"error: {listed} is not a state_dict (a mapping of names to tensors)." in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,words", [
    (["--src", "w.pth"], "the following arguments are required: --arch"),
    (["--arch", "resnet18"], "the following arguments are required: --src"),
    (["--arch", "resnet34", "--src", "w.pth"], "argument --arch: invalid choice: 'resnet34'"),
    (["--arch", "resnet50"], "the following arguments are required: --src"),  # a valid --arch, so --src is next
    (["--arch", "resnet152"], "the following arguments are required: --src"),
])
def test_converter_names_a_missing_or_unknown_argument(tmp_path, capsys, argv, words):
    """The authors released ResNet-18, -50 and -152 only (each accepted); both flags are required."""
    from collab_zoo import convert

    with pytest.raises(SystemExit) as stopped:
        convert.main(["dks", *argv, "--out", str(tmp_path / "o")])
    assert stopped.value.code == 2 and words in capsys.readouterr().err


def test_layer_decay_never_scales_a_head_above_the_main_classifier():
    """timm's layer-wise decay on DKS: the stem gets the lowest scale, and every auxiliary head trains at most at
    the main classifier's scale (grouped with the head, never deeper than it)."""
    import timm.optim

    model = collab_zoo.create_model("dks_resnet20")
    optimizer = timm.optim.create_optimizer_v2(model, opt="sgd", lr=0.1, layer_decay=0.75)
    scale = {id(p): group["lr_scale"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    classifier = scale[id(named["backbone.fc.weight"])]
    assert classifier == 1.0
    heads = [scale[id(p)] for n, p in named.items() if n.startswith("aux_heads.")]
    assert heads and max(heads) <= classifier
    assert scale[id(named["backbone.stem.0.weight"])] == min(scale.values()) < classifier


@pytest.mark.parametrize("name,kwargs,classifiers,in_features", [
    ("dks_resnet20", {}, ("aux_heads.0.fc", "aux_heads.1.fc", "backbone.fc"), (64, 128, 64)),  # AuxHead
    ("dks_resnet20", {"aux": "ap_2fc"}, ("aux_heads.0.fc", "aux_heads.1.fc", "backbone.fc"), (64, 64, 64)),
    ("dks_resnet20", {"aux": "ap_conv_2fc"}, ("aux_heads.0.fc", "aux_heads.1.fc", "backbone.fc"), (64, 64, 64)),
    ("dks", {"backbone": "convnext_atto"},  # DonorHead: the copied backbone's own head
     ("aux_heads.0.donor.head.fc", "aux_heads.1.donor.head.fc", "backbone.head.fc"), (320, 320, 320)),
], ids=["blocks", "ap_2fc", "ap_conv_2fc", "donor"])
def test_every_kind_of_head_names_and_resets_its_own_classifier(name, kwargs, classifiers, in_features):
    """classifier_names lists each head's last layer (what fine-tuning to a new class count drops), and
    reset_classifier gives every head, not only the main one, a fresh layer of the new width on the same inputs
    (in_features: the released widths, 128 = the second head's doubled final stage; ap heads' hidden = 64)."""
    model = collab_zoo.create_model(name, num_classes=5, **kwargs)
    assert model.classifier_names() == classifiers
    layers = [model.get_submodule(n) for n in classifiers]
    assert [(type(m), m.in_features, m.out_features) for m in layers] == [(torch.nn.Linear, f, 5) for f in in_features]
    model.reset_classifier(7)
    renewed = [model.get_submodule(n) for n in classifiers]
    assert [(type(m), m.in_features, m.out_features) for m in renewed] == [(torch.nn.Linear, f, 7) for f in in_features]
    assert not any(new is old for new, old in zip(renewed, layers))
    model.reset_classifier(0)
    assert all(type(model.get_submodule(n)) is torch.nn.Identity for n in classifiers)
    model.train()
    assert [tuple(h.shape) for h in model(torch.randn(2, 3, 32, 32))] == [(2, f) for f in in_features]


def test_donor_heads_keep_average_pooling_and_no_dropout_whatever_the_main_head_is_given():
    """drop_rate and global_pool are the main classifier's options; the auxiliary heads (the paper's: global
    average pooling, then one FC) are built without them."""
    model = collab_zoo.create_model("dks", backbone="convnext_atto", num_classes=5, drop_rate=0.5, global_pool="max")
    assert (model.backbone.head.global_pool.pool_type, model.backbone.head.drop.p) == ("max", 0.5)
    assert [(h.donor.head.global_pool.pool_type, h.donor.head.drop.p) for h in model.aux_heads] == [("avg", 0.0)] * 2


def test_a_donor_head_whose_network_names_no_classifier_is_refused():
    model = collab_zoo.create_model("dks", backbone="convnext_atto", num_classes=5)
    model.aux_heads[0].donor.pretrained_cfg = {}  # ConvNeXt's get_classifier() takes no name: the cfg names it
    with pytest.raises(IncompatibleConfigError) as refused:
        model.classifier_names()
    assert str(refused.value) == "ConvNeXt does not name its classifier."


# Read off timm's convention by hand: the stem's conv, the main classifier, and the unpooled map at the default
# input (ImageNet ResNets 224 -> 7x7; CIFAR networks 32 -> 8x8; the CIFAR MobileNet down-samples 16x -> 2x2).
CFG_NAMES = {
    "dks_resnet18": ("backbone.conv1", (7, 7), 224), "dks_resnet50": ("backbone.conv1", (7, 7), 224),
    "dks_resnet152": ("backbone.conv1", (7, 7), 224), "dks_resnet20": ("backbone.stem.0", (8, 8), 32),
    "dks_resnet32": ("backbone.stem.0", (8, 8), 32), "dks_resnet110": ("backbone.stem.0", (8, 8), 32),
    "dks_wrn28_4": ("backbone.stem", (8, 8), 32), "dks_wrn28_10": ("backbone.stem", (8, 8), 32),
    "dks_densenet40_k12": ("backbone.stem", (8, 8), 32), "dks_densenet100_k12": ("backbone.stem", (8, 8), 32),
    "dks_mobilenet": ("backbone.stem.0", (2, 2), 32),
}


@pytest.mark.parametrize("name", DKS_MODELS)
def test_pretrained_cfg_names_the_first_conv_the_classifier_and_the_unpooled_map(name):
    first_conv, pool_size, side = CFG_NAMES[name]
    with torch.device("meta"):  # shapes only: no weights are drawn
        model = collab_zoo.create_model(name)
        cfg = model.pretrained_cfg
        features = model.forward_features(torch.empty(1, 3, side, side))
    assert (cfg["first_conv"], cfg["classifier"], cfg["pool_size"], cfg["input_size"]) == (
        first_conv, "backbone.fc", pool_size, (3, side, side))
    assert type(model.get_submodule(first_conv)) is torch.nn.Conv2d
    assert type(model.get_submodule("backbone.fc")) is torch.nn.Linear
    assert tuple(features.shape[-2:]) == pool_size


@pytest.mark.parametrize("name", ["dks_resnet20", "dks_resnet18"])
def test_grad_checkpointing_recomputes_in_backward_and_changes_no_gradient(name):
    """With checkpointing on, a stage block and a head start twice per step (forward, then again in backward);
    off, once. The gradients are the same either way (eval-mode BN: no running statistics move). Pre-hooks:
    torch stops a recomputation as soon as it has the tensors backward needs, before the module returns."""
    model = collab_zoo.create_model(name, num_classes=5).eval()
    block = model.backbone.stages[1][0] if name == "dks_resnet20" else model.backbone.layer2[0]
    calls = {"block": 0, "head": 0}
    block.register_forward_pre_hook(lambda *a: calls.__setitem__("block", calls["block"] + 1))
    model.aux_heads[0].fc.register_forward_pre_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 4])
    grads = []
    for enable, runs in ((False, 1), (True, 2)):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        calls.update(block=0, head=0)
        model.collab_loss(model.forward_heads(x), y)[0].backward()
        assert calls == {"block": runs, "head": runs}, (enable, calls)
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


@pytest.mark.parametrize("name,reference", [("dks_resnet18", "resnet18"), ("dks_densenet40_k12", "densenet40_k12")])
def test_prune_intermediate_layers_defaults_are_timms(name, reference):
    """Called bare, the DKS model prunes its backbone as timm's own call with timm's defaults (the last level,
    keep the final norm, drop the head) prunes the plain network, and drops the auxiliary heads; called with
    arguments, it passes each one on."""
    model = collab_zoo.create_model(name, num_classes=5)
    plain = timm.create_model(reference, num_classes=5)
    assert model.prune_intermediate_layers() == plain.prune_intermediate_layers(1, prune_norm=False, prune_head=True)
    assert str(model.backbone) == str(plain) and len(model.aux_heads) == 0
    model = collab_zoo.create_model(name, num_classes=5)
    plain = timm.create_model(reference, num_classes=5)
    assert (model.prune_intermediate_layers(2, prune_norm=True, prune_head=False)
            == plain.prune_intermediate_layers(2, prune_norm=True, prune_head=False))
    assert str(model.backbone) == str(plain) and len(model.aux_heads) == 0


def test_reset_classifier_passes_the_pooling_to_the_backbone():
    model = collab_zoo.create_model("dks_resnet18", num_classes=5)
    model.reset_classifier(7, "max")
    assert model.backbone.global_pool.pool_type == "max" and model.backbone.fc.out_features == 7
    x = torch.randn(1, 3, 64, 64)
    features = model.forward_features(x)
    assert torch.allclose(model.forward_head(features, pre_logits=True), features.amax(dim=(2, 3)))


@pytest.mark.parametrize("name,pre", [
    # The head after a stage pools by what the main path still down-samples after it (kernel = stride), then a
    # 3x3 conv to the final width: resnet20 stages at strides 1, 2, 4 (16, 32, 64 channels); resnet18's layer2
    # and layer3 at 8 and 16 of 32 (128, 256 of 512 channels).
    ("dks_resnet20", [(4, 16, 64), (2, 32, 64)]),
    ("dks_resnet18", [(4, 128, 512), (2, 256, 512)]),
])
def test_ap_conv_2fc_heads_pool_by_the_missing_down_sampling(name, pre):
    model = collab_zoo.create_model(name, num_classes=5, aux="ap_conv_2fc")
    for head, (stride, cin, width) in zip(model.aux_heads, pre):
        pool, conv, norm, act = head.pre
        assert (type(pool), pool.kernel_size, pool.stride) == (torch.nn.AvgPool2d, stride, stride)
        assert type(pool.kernel_size) is int
        assert (type(conv), conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding, conv.bias) == (
            torch.nn.Conv2d, cin, width, (3, 3), (1, 1), None)
        assert (type(norm), norm.num_features, type(act)) == (torch.nn.BatchNorm2d, width, torch.nn.ReLU)
        assert (head.fc1.in_features, head.fc1.out_features, head.fc.in_features) == (width, width, width)
    model.train()
    side = 32 if name == "dks_resnet20" else 64
    assert [tuple(h.shape) for h in model(torch.randn(2, 3, side, side))] == [(2, 5)] * 3


@pytest.mark.parametrize("aux", ["blocks", "ap_2fc"])
def test_one_class_is_a_classifier_and_zero_is_none(aux):
    """num_classes=1 (a single logit) still gets a Linear in every head; 0 leaves features, at build and reset."""
    one = collab_zoo.create_model("dks_resnet20", num_classes=1, aux=aux)
    assert [type(h.fc) for h in one.aux_heads] == [torch.nn.Linear] * 2
    assert [h.fc.out_features for h in one.aux_heads] == [1, 1]
    zero = collab_zoo.create_model("dks_resnet20", num_classes=0, aux=aux)
    assert [type(h.fc) for h in zero.aux_heads] == [torch.nn.Identity] * 2
    zero.reset_classifier(1)
    assert [h.fc.out_features for h in zero.aux_heads] == [1, 1]


def _small_vit(depth):
    return dict(img_size=32, patch_size=8, embed_dim=32, num_heads=2, depth=depth, reg_tokens=2)


def test_a_backbone_that_never_down_samples_gets_heads_at_a_third_and_two_thirds():
    """ViT blocks keep one resolution: heads go after blocks count//3 and 2*count//3, never after the last."""
    attach = {depth: collab_zoo.create_model("dks", backbone="vit_tiny_patch16_224", num_classes=5,
                                             backbone_kwargs=_small_vit(depth)).attach for depth in (2, 3, 4, 6)}
    assert attach == {2: (0,), 3: (1,), 4: (1, 2), 6: (2, 4)}
    with pytest.raises(IncompatibleConfigError) as refused:
        collab_zoo.create_model("dks", backbone="vit_tiny_patch16_224", num_classes=5, backbone_kwargs=_small_vit(1))
    assert str(refused.value) == "VisionTransformer has 1 feature level(s): no room for an auxiliary head."


def test_vit_donor_heads_do_not_add_the_tokens_twice():
    """The tokens at a ViT attach point already carry the class and register tokens and the position embedding:
    the donor head's copies of all three are removed, and its logits are the later blocks, norm and head run
    directly on the tapped tokens."""
    torch.manual_seed(0)
    model = collab_zoo.create_model("dks", backbone="vit_tiny_patch16_224", num_classes=5,
                                    backbone_kwargs=_small_vit(3)).eval()
    donor = model.aux_heads[0].donor
    assert (donor.cls_token, donor.reg_token, donor.pos_embed) == (None, None, None)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.backbone.blocks[1](model.backbone.blocks[0](model.backbone._pos_embed(
            model.backbone.patch_embed(x))))
        assert tokens.shape[1] == 1 + 2 + 16
        expected = donor.head(donor.fc_norm(donor.norm(donor.blocks[2](tokens))[:, 0]))
        assert torch.allclose(model.forward_heads(x)[0], expected, atol=1e-5)


def test_donor_heads_take_the_backbone_arguments_and_fresh_weights():
    """A named timm backbone's donors are built from the name with the same arguments (ConvNeXt layer scale 0.5
    here, timm's default is 1e-6); a backbone handed over as a module is deep-copied and re-initialised, and the
    backbone itself is left whole."""
    named = collab_zoo.create_model("dks", backbone="convnext_atto", num_classes=5,
                                    backbone_kwargs=dict(ls_init_value=0.5))
    gammas = [p for n, p in named.aux_heads[0].donor.named_parameters() if n.endswith("gamma")]
    assert gammas and all(torch.all(g == 0.5) for g in gammas)

    torch.manual_seed(0)
    backbone = timm.create_model("convnext_atto", num_classes=5).eval()
    reference = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = DKSModel(backbone)
    assert model.arch is None
    assert all(torch.equal(v, reference[k]) for k, v in backbone.state_dict().items())
    assert all(not isinstance(m, torch.nn.Identity) for m in (backbone.stem, *backbone.stages))
    donor = dict(model.aux_heads[-1].donor.named_parameters())
    convs = [n for n, p in donor.items() if p.dim() == 4]
    assert convs and not any(torch.equal(donor[n], reference[n]) for n in convs)
    assert not any(donor[n].data_ptr() == p.data_ptr() for n, p in backbone.named_parameters() if n in donor)


def test_a_module_without_timms_feature_interface_is_refused_by_name():
    class NoLevels(torch.nn.Module):
        num_classes = 5

    class LevelsOnly(torch.nn.Module):
        num_classes = 5

        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 3)
            self.feature_info = [dict(module="a", num_chs=4, reduction=1), dict(module="b", num_chs=4, reduction=2)]

    with pytest.raises(IncompatibleConfigError) as refused:
        DKSModel(NoLevels())
    assert str(refused.value) == (
        "DKS needs a backbone with stages: one with timm's feature_info (any model that supports features_only), "
        "a zoo StagedNet or a timm ResNet; NoLevels has no feature_info.")
    with pytest.raises(IncompatibleConfigError) as refused:
        DKSModel(LevelsOnly())
    assert str(refused.value) == ("DKS builds its heads from the backbone's later blocks and its own head: "
                                  "LevelsOnly lacks timm's forward_features().")


def test_dks_loss_refusals_say_what_was_wrong():
    heads, target = [torch.tensor(h) for h in HEADS], torch.tensor(TARGET)
    cases = [
        (dict(divergence="js"), "divergence must be one of ('cross_entropy', 'kl'), got 'js'."),
        (dict(temperature=0.0), "temperature must be positive, got 0.0."),
        (dict(alpha=[1.0, 1.0]), "alpha needs one weight per head (3), got 2."),
        (dict(sample_weight=torch.ones(3)), "sample_weight must hold one weight per sample, shape [2]; got (3,)."),
    ]
    for kwargs, message in cases:
        with pytest.raises(IncompatibleConfigError) as refused:
            dks_loss(heads, target, **kwargs)
        assert str(refused.value) == message


def test_collab_loss_uses_the_models_alpha_beta_temperature_and_pairs():
    """A model built with its own loss options computes Eq. 4 with them (hand arithmetic, as above)."""
    model = collab_zoo.create_model("dks_resnet20", num_classes=3, alpha=[0.5, 0.25, 1.0], beta=0.3,
                                    temperature=2.0, pairs="top_down")
    heads = tuple(torch.tensor(h) for h in HEADS)
    total, _ = model.collab_loss(heads, torch.tensor(TARGET))
    expected = _hand_loss(HEADS, TARGET, "top_down", temperature=2.0, alpha=[0.5, 0.25, 1.0], beta=0.3)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(IncompatibleConfigError) as refused:
        model.collab_loss(heads[1:], torch.tensor(TARGET))
    assert str(refused.value) == "DKS expects 3 head outputs (train-mode forward), got 2."


def test_export_carries_the_trained_models_preprocessing_and_drops_where_its_weights_came_from():
    """The exported backbone is described by the DKS model's own cfg (a fine-tuned or downloaded model's
    preprocessing, labels and provenance), and forgets the file or repo the DKS weights were read from: its
    weights are the ones it holds now."""
    model = collab_zoo.create_model("dks_resnet20", num_classes=3)
    carried = dict(input_size=(3, 40, 40), interpolation="bicubic", crop_pct=0.8, crop_mode="squash",
                   mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), num_classes=3, label_names=["a", "b", "c"],
                   license="mit", paper_name="Deeply-supervised Knowledge Synergy", paper_ids="arXiv:1906.00675",
                   origin_url="https://example.org/origin", description="fine-tuned", notes="a note")
    dropped = dict(hf_hub_id="someone/dks", hf_hub_filename="model.safetensors", url="https://example.org/w",
                   file="/tmp/w.safetensors", state_dict={"x": 1}, source="hf-hub", tag="ft")
    # A value equal to the backbone's own would pass without being carried.
    assert all(model.backbone.pretrained_cfg.get(k) != v for k, v in carried.items())
    model.pretrained_cfg = dict(model.pretrained_cfg, **carried)
    model.backbone.pretrained_cfg = dict(model.backbone.pretrained_cfg, **dropped, first_conv="stem.0")
    cfg = model.export().pretrained_cfg
    assert {k: cfg.get(k) for k in carried} == carried
    assert not set(cfg) & set(dropped)
    assert cfg["first_conv"] == "stem.0"  # the backbone's own names stay
