"""Complementary deep networks: Algorithm 1's formulas against hand arithmetic, the edges the released code
leaves open, the Eq. 9 ensemble, rounds and their resumption, the authors' round files, an end-to-end run."""
import io
import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

import collab_zoo
from collab_zoo import convert
from collab_zoo.contract import TrainingRound
from collab_zoo.errors import IncompatibleConfigError, StateDictMismatchError
from collab_zoo.hub import hub_config_json, save_for_hub
from collab_zoo.methods import complementary as cm

# Five held-out images of three classes; the hand computations below use only math and loops.
LOGITS = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 3.0], [0.5, 0.0, 1.0]]
TARGETS = [0, 1, 1, 2, 0]


def _softmax_row(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def _mlp_ensemble(**kwargs):
    torch.manual_seed(0)
    return collab_zoo.create_model("complementary_mlp_x4", **kwargs)


# --- Eq. 4: per-class error -------------------------------------------------------------------------------------

def test_soft_class_error_is_eq4_by_hand():
    probs = [_softmax_row(r) for r in LOGITS]
    expected = []
    for c in range(3):
        own = [1 - p[c] for p, y in zip(probs, TARGETS) if y == c]
        other = [p[c] for p, y in zip(probs, TARGETS) if y != c]
        expected.append(0.5 * (sum(own) / len(own) + sum(other) / len(other)))
    stats = cm.heldout_class_stats(torch.tensor(LOGITS), torch.tensor(TARGETS), "soft")
    assert stats.error.tolist() == pytest.approx(expected, abs=1e-12)
    assert stats.count.tolist() == [2, 2, 1]
    chunked = cm.heldout_class_stats(torch.tensor(LOGITS), torch.tensor(TARGETS), "soft", chunk_size=2)
    assert chunked.error.tolist() == pytest.approx(expected, abs=1e-12)


def test_hard_class_error_is_the_class_miss_rate():
    # argmax per row: 0, 1, 0 (first of a tie), 2, 2 -> class 0: 1 of 2 right, class 1: 1 of 2, class 2: 1 of 1.
    stats = cm.heldout_class_stats(torch.tensor(LOGITS), torch.tensor(TARGETS), "hard")
    assert stats.error.tolist() == [0.5, 0.5, 0.0]
    assert stats.accuracy.tolist() == [0.5, 0.5, 1.0]
    assert stats.top1 == pytest.approx(3 / 5)


# --- Eq. 5, 8, 6, 7, 9 --------------------------------------------------------------------------------------------

def test_weighted_error_gamma_and_importance_update_by_hand():
    errors = torch.tensor([0.1, 0.4, 0.7], dtype=torch.float64)
    phi = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    assert cm.normalise_importance(phi).tolist() == [0.25, 0.5, 0.25]
    eps = cm.weighted_error(errors, phi)
    assert eps == pytest.approx(0.25 * 0.1 + 0.5 * 0.4 + 0.25 * 0.7)                        # 0.4
    gamma = cm.boosting_gamma(eps, mu=0.7)
    assert gamma.value == pytest.approx(0.28 / 0.72) and not gamma.clamped and not gamma.floored
    g = 0.28 / 0.72
    for exponent, scale in (("paper", 0.7), ("code", 1.0)):
        raw = [0.25 * g ** (1 - scale * 0.1), 0.5 * g ** (1 - scale * 0.4), 0.25 * g ** (1 - scale * 0.7)]
        expected = [r / sum(raw) for r in raw]
        updated = cm.update_importance(phi, errors, gamma.value, mu=0.7, exponent=exponent)
        assert updated.tolist() == pytest.approx(expected, rel=1e-12)
        assert float(updated.sum()) == pytest.approx(1.0)
    # Relative to the easiest class, the hardest one gains importance: gamma < 1 and a larger exponent cut.
    updated = cm.update_importance(phi, errors, g)
    assert float(updated[2] / updated[0]) > float(phi[2] / phi[0])


def test_ensemble_weights_are_log_inverse_gammas_normalised():
    weights = cm.member_weights_from_gammas([0.25, 0.5])
    assert weights.tolist() == pytest.approx([math.log(4) / math.log(8), math.log(2) / math.log(8)])
    logits = [torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]])]
    p1, p2 = _softmax_row([1.0, 0.0, -1.0]), _softmax_row([0.0, 2.0, 0.0])
    mixed = [(math.log(4) * a + math.log(2) * b) / math.log(8) for a, b in zip(p1, p2)]
    out = cm.ensemble_log_probs(logits, [0.25, 0.5])
    assert out.exp()[0].tolist() == pytest.approx(mixed, rel=1e-6)
    with pytest.raises(IncompatibleConfigError, match=r"\(0, 1\)"):
        cm.member_weights_from_gammas([0.5, 1.0])


# --- the edges ------------------------------------------------------------------------------------------------------

def test_a_class_without_heldout_images_takes_the_weighted_mean_error():
    logits = torch.tensor(LOGITS + [[0.0, 0.0, 0.0]])[:, :3]
    logits = torch.cat([logits, torch.zeros(len(logits), 1)], dim=1)                    # 4 classes, 3 present
    targets = torch.tensor(TARGETS + [2])
    stats = cm.heldout_class_stats(logits, targets)
    assert stats.measured.tolist() == [True, True, True, False]
    phi = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    filled = cm.fill_unmeasured(stats.error, stats.measured, phi)
    e = stats.error.tolist()
    mean = (0.1 * e[0] + 0.2 * e[1] + 0.3 * e[2]) / 0.6
    assert filled.tolist()[:3] == e[:3] and filled[3].item() == pytest.approx(mean)
    # The fill leaves eps_t what it is over the measured classes alone.
    assert cm.weighted_error(filled, phi) == pytest.approx(cm.weighted_error(stats.error[:3], phi[:3]))

    model = _mlp_ensemble(num_classes=4)
    log = model.complete_round(0, (logits,), targets)
    assert log["unmeasured_classes"] == 1
    for name in model.ROUND_STATE:
        value = getattr(model, name)
        assert not (value.is_floating_point() and bool(torch.isnan(value).any())), name
    assert model.class_measured[0].tolist() == [True, True, True, False]


def test_too_few_classes_or_soft_targets_in_the_heldout_split_are_errors():
    model = _mlp_ensemble()
    with pytest.raises(IncompatibleConfigError, match="at least two classes"):
        model.complete_round(0, (torch.randn(6, 10),), torch.full((6,), 3))
    with pytest.raises(IncompatibleConfigError, match="class indices"):
        model.complete_round(0, (torch.randn(6, 10),), torch.softmax(torch.randn(6, 10), -1))
    with pytest.raises(IncompatibleConfigError, match="held-out"):
        model.complete_round(0)
    assert int(model.rounds_completed) == 0


def test_zero_error_is_floored_to_a_finite_weight_and_leaves_importance_alone():
    gamma = cm.boosting_gamma(0.0, mu=0.7)
    assert gamma.floored and gamma.value == pytest.approx(0.7e-6 / (1 - 0.7e-6))
    phi = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    assert cm.update_importance(phi, torch.zeros(3, dtype=torch.float64), gamma.value).tolist() == pytest.approx(
        phi.tolist())
    model = _mlp_ensemble(error="hard")
    targets = torch.arange(20) % 10
    perfect = F.one_hot(targets, 10).float() * 50.0
    log = model.complete_round(0, (perfect,), targets)
    assert log["error_floored"] == 1 and math.isfinite(log["member_weight"]) and log["member_weight"] > 0
    assert model.importance[1].tolist() == pytest.approx([0.1] * 10)
    model.eval()
    assert bool(torch.isfinite(model(torch.randn(2, 1, 28, 28))).all())


def test_a_member_with_mu_eps_at_least_half_is_clamped_or_refused():
    with pytest.raises(IncompatibleConfigError, match=r"mu < 0\.625"):
        cm.boosting_gamma(0.8, mu=0.7, on_weak="raise")
    clamped = cm.boosting_gamma(0.8, mu=0.7)
    assert clamped.clamped and clamped.value == cm.WEAK_MEMBER_GAMMA and -math.log(clamped.value) > 0

    targets = torch.arange(20) % 10
    wrong = F.one_hot((targets + 1) % 10, 10).float() * 50.0                             # every image missed
    model = _mlp_ensemble(error="hard")
    log = model.complete_round(0, (wrong,), targets)
    assert log["gamma_clamped"] == 1 and 0 < log["member_weight"] < 0.01
    strict = _mlp_ensemble(error="hard", on_weak="raise")
    with pytest.raises(IncompatibleConfigError, match="non-positive|<= 0"):
        strict.complete_round(0, (wrong,), targets)
    assert int(strict.rounds_completed) == 0 and strict.gammas.tolist() == [1.0] * 4


def test_bad_options_and_out_of_order_rounds_are_errors():
    for kwargs, message in ((dict(mu=0.0), "mu"), (dict(error="top1"), "error"), (dict(exponent="x"), "exponent"),
                            (dict(objective="ce"), "objective"), (dict(on_weak="skip"), "on_weak")):
        with pytest.raises(IncompatibleConfigError, match=message):
            _mlp_ensemble(**kwargs)
    model = _mlp_ensemble()
    with pytest.raises(IncompatibleConfigError, match="in order"):
        model.training_round(1)
    with pytest.raises(IndexError):
        model.training_round(4)
    with pytest.raises(IncompatibleConfigError, match="4 members"):
        collab_zoo.create_model("complementary_mlp_x4", tau=3)


# --- the objectives -------------------------------------------------------------------------------------------------

def test_margin_objective_is_eq2_3_by_hand():
    logits = [[1.0, 0.5, -0.5], [0.2, 0.1, 2.0]]
    targets = [0, 2]
    phi = [1.0, 2.0, 1.0]
    varphi = [v / sum(phi) for v in phi]
    for frequency in (None, [0.5, 0.25, 0.25]):
        f = frequency or [1 / 3] * 3
        omegas = []
        for row, y in zip(logits, targets):
            log_p = [math.log(p) for p in _softmax_row(row)]
            own = varphi[y] / f[y] * log_p[y]
            other = sum(varphi[l] / (1 - f[l]) * log_p[l] for l in range(3) if l != y)
            omegas.append(own - other)
        expected = -sum(omegas) / len(omegas)
        loss, parts = cm.margin_objective(torch.tensor(logits), torch.tensor(targets), torch.tensor(phi),
                                          None if frequency is None else torch.tensor(frequency))
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        assert parts["total"].item() == pytest.approx(expected, rel=1e-5)


def test_margin_objective_with_uniform_importance_is_the_linear_logit_margin():
    # The log-partition cancels: Omega_i = z_y - mean_{l != y} z_l (see the module docstring).
    z = torch.randn(6, 5)
    y = torch.randint(0, 5, (6,))
    loss, _ = cm.margin_objective(z, y, torch.ones(5))
    own = z.gather(1, y[:, None]).squeeze(1)
    others = (z.sum(1) - own) / 4
    assert loss.item() == pytest.approx(-(own - others).mean().item(), abs=1e-5)


def test_objectives_take_soft_targets_linearly_and_weighted_ce_matches_pytorch():
    torch.manual_seed(1)
    z = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 3, 3, 1])
    w = torch.tensor([1.0, 0.5, 2.0, 1.5, 1.0])
    loss, _ = cm.weighted_cross_entropy(z, y, w)
    assert loss.item() == pytest.approx(F.cross_entropy(z, y, weight=w).item(), rel=1e-6)
    assert cm.weighted_cross_entropy(z, y, 3 * w)[0].item() == pytest.approx(loss.item(), rel=1e-6)
    one_hot = F.one_hot(y, 5).float()
    for objective in cm.OBJECTIVES:
        hard, _ = cm.class_weighted_loss(objective, z, y, w)
        assert cm.class_weighted_loss(objective, z, one_hot, w)[0].item() == pytest.approx(hard.item(), rel=1e-6)
    # Mixup of two targets: the margin objective is linear in the indicator, so the loss mixes too.
    other = torch.tensor([2, 2, 0, 4])
    mixed = 0.3 * one_hot + 0.7 * F.one_hot(other, 5).float()
    expected = 0.3 * cm.margin_objective(z, y, w)[0] + 0.7 * cm.margin_objective(z, other, w)[0]
    assert cm.margin_objective(z, mixed, w)[0].item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert z.grad is not None and bool(torch.isfinite(z.grad).all())
    assert cm.margin_objective(z.to(torch.bfloat16), y, w)[0].dtype == torch.float32


# --- the ensemble model ---------------------------------------------------------------------------------------------

def test_eval_output_is_the_log_of_eq9_over_completed_members():
    model = _mlp_ensemble().eval()
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        # Before any round completes: the member of the round in progress alone.
        assert torch.allclose(model(x), F.log_softmax(model.members[0](x), -1), atol=1e-6)
        model.gammas.copy_(torch.tensor([0.2, 0.5, 0.3, 0.9]))
        model.rounds_completed.fill_(3)
        calls = []
        handle = model.members[3].register_forward_hook(lambda *a: calls.append(1))
        out = model(x)
        handle.remove()
        probs = [F.softmax(model.members[t](x).double(), -1) for t in range(3)]
        alpha = [math.log(1 / g) for g in (0.2, 0.5, 0.3)]
        direct = sum(a * p for a, p in zip(alpha, probs)) / sum(alpha)
    assert not calls, "a member whose round is not complete is not run"
    assert torch.allclose(out.double().exp(), direct, atol=1e-6)
    assert torch.allclose(model.predict(model.forward_heads(x)), out, atol=1e-6)
    assert torch.allclose(model.forward_head(model.forward_features(x)), out, atol=1e-6)
    assert model.forward_features(x).shape == (5, 4 * 300) and model.num_features == 1200


def test_the_default_objective_is_the_released_codes_weighted_cross_entropy():
    assert _mlp_ensemble().objective == "weighted_ce"
    assert _mlp_ensemble(objective="margin").objective == "margin"


def test_train_mode_gives_every_member_and_trains_only_the_current_one():
    model = _mlp_ensemble().train()
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    outputs = model(x)
    assert isinstance(outputs, tuple) and len(outputs) == 4 and model.head_names[-1] == "member4"
    assert [m.training for m in model.members] == [True, False, False, False]
    assert outputs[0].requires_grad and not any(o.requires_grad for o in outputs[1:])
    total, parts = model.collab_loss(outputs, y)
    round_loss, _ = model.training_round(0).loss(outputs[0], y)
    assert total.item() == pytest.approx(round_loss.item()) and "member1_weighted_ce" in parts
    total.backward()
    assert model.members[0].fc.weight.grad is not None and model.members[1].fc.weight.grad is None
    assert model.leaves_parameters_unused


def test_rounds_follow_the_contract_and_resume_through_the_state_dict():
    a = _mlp_ensemble()
    assert a.num_rounds == 4
    first = a.training_round(0)
    assert isinstance(first, TrainingRound) and first.module is a.members[0]
    assert first.head_names == ("member1",) and first.needs_heldout
    g = torch.Generator().manual_seed(3)
    held = [(torch.randn(40, 10, generator=g), torch.arange(40) % 10) for _ in range(2)]
    log0 = a.complete_round(0, (held[0][0],), held[0][1])
    assert set(log0) >= {"gamma", "member_weight", "weighted_error", "hard_classes", "always_hard_fraction_bound"}
    assert int(a.current_round) == 1 and [m.training for m in a.members] == [False, True, False, False]
    state = a.state_dict()
    for name in a.ROUND_STATE:
        assert isinstance(state[name], torch.Tensor), name

    torch.manual_seed(99)
    b = collab_zoo.create_model("complementary_mlp_x4")
    b.load_state_dict(state)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    la, _ = a.training_round(1).loss(a.members[1](x), y)
    lb, _ = b.training_round(1).loss(b.members[1](x), y)
    assert la.item() == pytest.approx(lb.item()) and torch.equal(a.importance[1], b.importance[1])
    log_a = a.complete_round(1, (held[1][0],), held[1][1])
    log_b = b.complete_round(1, (held[1][0],), held[1][1])
    assert log_a == pytest.approx(log_b)
    for name in a.ROUND_STATE:
        assert torch.equal(getattr(a, name), getattr(b, name)), name

    # Completing round 1 again replaces it and forgets what came after.
    a.complete_round(0, (held[1][0],), held[1][1])
    assert int(a.rounds_completed) == 1 and a.gammas[1].item() == 1.0


def test_reset_classifier_and_a_checkpoint_for_another_class_count_start_the_record_afresh(tmp_path):
    model = _mlp_ensemble()
    model.complete_round(0, (torch.randn(30, 10),), torch.arange(30) % 10)
    save_for_hub(model, tmp_path / "hub")
    other = collab_zoo.create_model("complementary_mlp_x4", pretrained=True, num_classes=5,
                                    pretrained_cfg_overlay=dict(file=str(tmp_path / "hub" / "model.safetensors")))
    assert other.importance.shape == (5, 5) and int(other.rounds_completed) == 0
    assert torch.equal(other.members[2].hidden_layers[0].weight, model.members[2].hidden_layers[0].weight)
    model.reset_classifier(7)
    assert [m.num_classes for m in model.members] == [7] * 4 and model.importance.shape == (5, 7)
    assert int(model.rounds_completed) == 0 and model.classifier_names()[-1] == "members.3.fc"


def test_saved_ensemble_loads_back_with_its_round_state(tmp_path):
    torch.manual_seed(0)
    model = collab_zoo.create_model("complementary", member="mlp_mnist", tau=2, num_classes=3, in_chans=1,
                                    img_size=(1, 4), hidden=8, mu=0.6)
    model.complete_round(0, (torch.randn(12, 3),), torch.arange(12) % 3)
    save_for_hub(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_args"]["member"] == "mlp_mnist" and config["model_args"]["tau"] == 2
    loaded = collab_zoo.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    assert loaded.mu == 0.6 and int(loaded.rounds_completed) == 1
    x = torch.randn(3, 1, 1, 4)
    assert torch.allclose(loaded(x), model.eval()(x))


def test_write_figures_draws_importance_and_class_accuracy(tmp_path):
    model = _mlp_ensemble()
    assert [p.name for p in model.write_figures(tmp_path / "before")] == ["complementary_importance.png"]
    for t in range(2):
        model.complete_round(t, (torch.randn(50, 10),), torch.arange(50) % 10)
    paths = model.write_figures(tmp_path)
    assert [p.name for p in paths] == ["complementary_importance.png", "complementary_class_accuracy.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


# --- registered models and backbones --------------------------------------------------------------------------------

def test_registered_ensembles_members_and_parameter_counts():
    counts = {}
    for name in ("complementary_resnet50_x4", "complementary_densenet121_x4", "complementary_alexnet_x4",
                 "complementary_resnet56_x4", "complementary_densenet_bc_k12_x4", "complementary_mlp_x4"):
        assert name in collab_zoo.list_models("complementary_*")
        with torch.device("meta"):
            model = timm.create_model(name)
        assert model.tau == 4 and len(model.members) == 4 and model.gammas.shape == (4,)
        counts[name] = sum(p.numel() for p in model.parameters())
    with torch.device("meta"):
        assert counts["complementary_resnet50_x4"] == 4 * sum(p.numel() for p in timm.create_model("resnet50").parameters())
        resnet56 = timm.create_model("complementary_resnet56_x4")
    assert counts["complementary_mlp_x4"] == 4 * (784 * 300 + 300 + 300 * 10 + 10)
    assert counts["complementary_alexnet_x4"] == 4 * 61_100_840
    assert resnet56.num_classes == 100 and resnet56.members[0].shortcut == "conv"
    with torch.device("meta"):
        generic = collab_zoo.create_model("complementary", member="resnet18", tau=3, num_classes=10)
    assert generic.tau == 3 and generic.classifier_names() == ("members.0.fc", "members.1.fc", "members.2.fc")


def test_alexnet_is_torchvisions_and_takes_its_weights():
    torch.manual_seed(0)
    reference = torchvision.models.alexnet()
    ours = collab_zoo.create_model("alexnet").eval()
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 96, 96)
    assert torch.allclose(ours(x), reference.eval()(x), atol=1e-5)
    assert ours.forward_head(ours.forward_features(x), pre_logits=True).shape == (1, 4096)
    levels = ours.forward_intermediates(x, intermediates_only=True)
    assert [f.shape[1] for f in levels] == [i["num_chs"] for i in ours.feature_info]
    ours.reset_classifier(10)
    assert ours(x).shape == (1, 10) and ours.get_classifier(name_only=True) == "classifier.6"


def test_mlp_is_lecun_1998s_784_300_10():
    mlp = collab_zoo.create_model("mlp_mnist")
    assert [tuple(p.shape) for p in mlp.parameters()] == [(300, 784), (300,), (10, 300), (10,)]
    assert float(mlp.hidden_layers[0].weight.detach().abs().max()) <= 2.4 / 784
    assert mlp(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(IncompatibleConfigError, match="784"):
        mlp(torch.randn(2, 1, 32, 32))
    released = collab_zoo.create_model("mlp_mnist", hidden=50, act="relu")
    assert sum(p.numel() for p in released.parameters()) == 784 * 50 + 50 + 50 * 10 + 10


def test_first_member_can_start_from_given_weights(tmp_path):
    from safetensors.torch import save_file

    source = collab_zoo.create_model("mlp_mnist")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model = collab_zoo.create_model("complementary_mlp_x4", first_member_weights=str(tmp_path / "w.safetensors"))
    assert torch.equal(model.members[0].fc.weight, source.fc.weight)
    assert not torch.equal(model.members[1].fc.weight, source.fc.weight)
    with pytest.raises(IncompatibleConfigError, match="neither a file nor a timm tag"):
        collab_zoo.create_model("complementary_mlp_x4", first_member_weights=str(tmp_path / "missing.bin"))


# --- the authors' files ---------------------------------------------------------------------------------------------

def _as_numpy_1x_pickle(path: Path) -> None:
    """Rewrite a torch.save archive as numpy 1.x writes it (the released files predate numpy 2's module path)."""
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for info, data in entries:
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            archive.writestr(info.filename, data)
    path.write_bytes(buffer.getvalue())


@pytest.fixture(scope="module")
def released_rounds(tmp_path_factory):
    """Four round files in the authors' format: real resnet50 state_dicts behind 'module.', numpy betas and
    per-class accuracies, and distributions chained by their update rule (mean 1)."""
    folder = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    base = timm.create_model("resnet50").state_dict()
    betas = [0.31, 0.27, 0.35, 0.29]
    rng = np.random.default_rng(0)
    distribution = np.ones(1000, dtype=np.float32)
    paths, states = [], []
    for t, beta in enumerate(betas):
        # Distinct members: their own last convolution and classifier.
        state = dict(base)
        for key in ("layer4.2.conv3.weight", "fc.weight", "fc.bias"):
            state[key] = base[key] + 0.05 * torch.randn_like(base[key])
        accuracy = rng.uniform(0.2, 1.0, 1000)
        record = {"beta": np.float64(beta), "model": {f"module.{k}": v for k, v in state.items()},
                  "distribution": torch.from_numpy(distribution.copy()), "ap": accuracy,
                  "loss": (np.float64(1.2), np.float64(0.1)), "classerr": [np.float64(24.0)]}
        path = folder / f"e{t + 1}" / "weak-learner.pth.tar"
        path.parent.mkdir()
        torch.save(record, path)
        if t == 0:
            _as_numpy_1x_pickle(path)
        paths.append(path)
        states.append(state)
        following = distribution * np.power(beta, accuracy)
        distribution = (following / following.sum() * 1000).astype(np.float32)
    return dict(paths=paths, states=states, betas=betas, folder=folder)


def test_converter_reads_the_authors_rounds_into_the_resnet50_ensemble(released_rounds, tmp_path):
    out = tmp_path / "complementary_resnet50_x4.in1k"
    code = convert.main(["complementary", "--arch", "resnet50", "--src", *map(str, released_rounds["paths"]),
                         "--out", str(out)])
    assert code == 0 and (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "complementary_resnet50_x4"
    assert config["model_args"]["error"] == "hard" and config["model_args"]["exponent"] == "code"

    model = collab_zoo.create_model("complementary_resnet50_x4", pretrained=True,
                                    pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"))).eval()
    assert model.gammas.tolist() == pytest.approx(released_rounds["betas"])
    assert int(model.rounds_completed) == 4
    assert model.importance[0].tolist() == pytest.approx([1e-3] * 1000)
    # Four timm resnet50s from the same weights and the four gammas: Eq. 9 computed directly.
    x = torch.randn(2, 3, 64, 64)
    member = timm.create_model("resnet50").eval()
    with torch.no_grad():
        probs = []
        for state in released_rounds["states"]:
            member.load_state_dict(state)
            probs.append(F.softmax(member(x).double(), -1))
        alpha = [math.log(1 / b) for b in released_rounds["betas"]]
        direct = sum(a * p for a, p in zip(alpha, probs)) / sum(alpha)
        out_probs = model(x).double().exp()
    assert torch.allclose(out_probs, direct, atol=1e-5)


def test_converter_refuses_rounds_out_of_order_or_malformed(released_rounds, tmp_path):
    paths = released_rounds["paths"]
    with pytest.raises(IncompatibleConfigError, match="not round 1"):
        cm.convert_complementary("resnet50", [paths[1], paths[0], paths[2], paths[3]], tmp_path / "a")
    with pytest.raises(IncompatibleConfigError, match="out of order"):
        cm.convert_complementary("resnet50", [paths[0], paths[2], paths[1], paths[3]], tmp_path / "b")
    with pytest.raises(IncompatibleConfigError, match="not registered"):
        cm.convert_complementary("resnet50", paths[:3], tmp_path / "c")
    bad = tmp_path / "bad.pth"
    torch.save({"beta": 1.5, "model": {}, "distribution": torch.ones(1000)}, bad)
    with pytest.raises(IncompatibleConfigError, match=r"outside \(0, 1\)"):
        cm.read_complementary_round(bad)
    torch.save({"model": {}}, bad)
    assert convert.main(["complementary", "--arch", "resnet50", "--src", str(bad), str(bad), str(bad), str(bad),
                         "--out", str(tmp_path / "d")]) == 2
    torch.save({"beta": 0.3, "model": {"module.fc.weight": torch.zeros(2, 2)}, "distribution": torch.ones(1000)}, bad)
    with pytest.raises(StateDictMismatchError, match="resnet50"):
        cm.convert_complementary("resnet50", [bad] * 4, tmp_path / "e")


def test_hub_config_names_the_authors_release_and_the_papers_numbers():
    config = collab_zoo.get_hub_config("complementary_resnet50_x4.in1k")
    assert not config.published and config.origin["url"] == "https://github.com/qychen13/DifficultyAwareEmbedding"
    assert config.reported_metrics["complementary"]["T4"] == {"top1_err": 22.12, "top5_err": 6.79}
    assert (config.crop_mode, config.interpolation, config.crop_pct) == ("center", "bilinear", 0.875)
    assert "collab_zoo.convert complementary" in config.origin["convert"]


# --- end to end -----------------------------------------------------------------------------------------------------

def _rings(n, generator):
    """Four classes in 2-D: a broad one in the middle, three tight ones around it (the middle one is hard)."""
    centres = torch.tensor([[0.0, 0.0], [2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    scales = torch.tensor([1.3, 0.5, 0.5, 0.5])
    y = torch.arange(n) % 4
    x = centres[y] + scales[y, None] * torch.randn(n, 2, generator=generator)
    return x.view(n, 1, 1, 2), y


@pytest.fixture
def one_thread():
    # Hundreds of tiny steps: a second thread only adds synchronisation (about 10x slower on a busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("settings", [dict(error="hard", exponent="code"), dict(error="soft", exponent="paper")],
                         ids=["released-code", "paper-error-and-update"])
def test_round_two_raises_the_accuracy_of_round_ones_hardest_class(settings, one_thread):
    g = torch.Generator().manual_seed(0)
    (x_train, y_train), (x_held, y_held), (x_test, y_test) = _rings(1200, g), _rings(800, g), _rings(2000, g)
    torch.manual_seed(0)
    model = collab_zoo.create_model("complementary", member="mlp_mnist", tau=2, num_classes=4, in_chans=1,
                                    img_size=(1, 2), hidden=16, act="relu", objective="weighted_ce", **settings)
    test_accuracy = []
    for t in range(model.num_rounds):
        step = model.training_round(t)
        optimizer = torch.optim.Adam(step.module.parameters(), lr=0.03)
        step.module.train()
        for _ in range(150):
            loss, _ = step.loss(step.module(x_train), y_train)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        step.module.eval()
        with torch.no_grad():
            model.complete_round(t, (step.module(x_held),), y_held)
            test_accuracy.append(cm.heldout_class_stats(step.module(x_test), y_test, "hard").accuracy)
    hardest = int(torch.argmin(test_accuracy[0]))
    assert hardest == 0
    assert float(model.importance[1][hardest]) > 0.25 + 0.03
    assert float(test_accuracy[1][hardest]) > float(test_accuracy[0][hardest]) + 0.02
    model.eval()
    with torch.no_grad():
        ensemble = float((model(x_test).argmax(-1) == y_test).float().mean())
    assert ensemble > 0.8


def test_layer_decay_scales_every_member_over_its_own_depth():
    """timm's layer-wise decay on an ensemble: each member is decayed over its own depth, not as if the members
    were stacked, so the same parameter of every member gets the same scale and every stem the lowest."""
    import timm.optim

    model = collab_zoo.create_model("complementary", member="cifar_resnet20", tau=3, num_classes=10)
    optimizer = timm.optim.create_optimizer_v2(model, opt="sgd", lr=0.1, layer_decay=0.75)
    scale = {id(p): group["lr_scale"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    for name in (n for n in named if n.startswith("members.0.")):
        rest = name[len("members.0."):]
        assert {scale[id(named[f"members.{i}.{rest}"])] for i in range(3)} == {scale[id(named[name])]}, rest
    lowest = min(scale.values())
    assert lowest > 0.75 ** 20  # one member's depth, not three stacked
    assert {scale[id(named[f"members.{i}.stem.0.weight"])] for i in range(3)} == {lowest}
    assert {scale[id(named[f"members.{i}.fc.weight"])] for i in range(3)} == {1.0}


def test_an_exported_ensemble_follows_the_boosting_state_it_is_given():
    """torch.export of the eval model computes Eq. 9 from the round buffers inside the graph: exported before
    any round completes, it gives the trained ensemble's answer once the trained state is loaded into it."""
    model = collab_zoo.create_model("complementary_mlp_x4").eval()
    x = torch.randn(3, 1, 28, 28)
    program = torch.export.export(model, (x,))
    torch.manual_seed(0)
    for index in range(2):
        with torch.no_grad():
            heldout = model.forward_heads(torch.randn(40, 1, 28, 28))
        model.complete_round(index, heldout, torch.arange(40) % 10)
    exported = program.module()
    exported.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x))
    assert int(model.rounds_completed) == 2 and bool((model.member_weights()[:2] > 0).all())


# --- the margin objective with the training set's class frequencies (issue 18) ----------------------------------------

# An imbalanced training set: 6 images of class 0, 3 of class 1, 1 of class 2.
IMBALANCED_TARGETS = [0, 1, 0, 2, 0, 1, 0, 0, 1, 0]
IMBALANCED_LOGITS = [[1.0, 0.2, -0.3], [0.1, 0.9, 0.0], [2.0, -1.0, 0.5], [0.3, 0.3, 0.8], [0.0, 0.5, 0.1],
                     [-0.2, 1.1, 0.4], [1.5, 0.0, 0.0], [0.7, 0.6, -0.5], [0.2, 0.4, 0.3], [0.9, -0.4, 0.6]]


def _tiny_ensemble(**kwargs):
    torch.manual_seed(0)
    return collab_zoo.create_model("complementary", member="mlp_mnist", tau=2, num_classes=3, in_chans=1,
                                   img_size=(1, 4), hidden=8, **kwargs)


def _omega_by_class(logits, targets, importance):
    """Eq. 2-3 as the paper writes them: per class, the mean log-probability on its own images minus the mean on
    the other images, weighted by the normalised importance (no per-image rewriting)."""
    varphi = [v / sum(importance) for v in importance]
    log_p = [[math.log(p) for p in _softmax_row(row)] for row in logits]
    omega = 0.0
    for c in range(len(importance)):
        own = [lp[c] for lp, y in zip(log_p, targets) if y == c]
        other = [lp[c] for lp, y in zip(log_p, targets) if y != c]
        omega += varphi[c] * (sum(own) / len(own) - sum(other) / len(other))
    return omega


def test_margin_objective_uses_the_training_sets_class_frequencies_known_answer():
    importance = [1.0, 2.0, 3.0]
    model = _tiny_ensemble(objective="margin")
    assert model.set_class_counts(IMBALANCED_TARGETS).tolist() == [6, 3, 1]
    with torch.no_grad():
        model.importance[0] = torch.tensor(importance) / 6
    logits, targets = torch.tensor(IMBALANCED_LOGITS), torch.tensor(IMBALANCED_TARGETS)
    loss, parts = model.training_round(0).loss(logits, targets)
    # On the whole training set the loss is -Omega exactly.
    expected = -_omega_by_class(IMBALANCED_LOGITS, IMBALANCED_TARGETS, importance)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert set(parts) == {"member1_own_log_conf", "member1_other_log_conf", "total"}
    # Assuming balanced classes would give another number: the frequencies matter here.
    balanced, _ = cm.margin_objective(logits, targets, torch.tensor(importance))
    assert abs(balanced.item() - expected) > 0.05
    # The class_frequency argument of margin_objective gives the same known answer.
    direct, _ = cm.margin_objective(logits, targets, torch.tensor(importance), torch.tensor([6.0, 3.0, 1.0]))
    assert direct.item() == pytest.approx(expected, rel=1e-5)


def test_class_counts_come_from_the_rounds_loader_dataset_or_targets_and_travel_with_the_model(tmp_path):
    model = _tiny_ensemble(objective="margin")
    x = torch.randn(10, 1, 1, 4)
    targets = torch.tensor(IMBALANCED_TARGETS)
    plain_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, targets), batch_size=3)

    class Labelled(torch.utils.data.Dataset):  # what collab_zoo's and torchvision's datasets expose
        targets = IMBALANCED_TARGETS

        def __len__(self):
            return 10

        def __getitem__(self, i):
            return x[i], self.targets[i]

    for source in (IMBALANCED_TARGETS, targets, plain_loader, Labelled(),
                   torch.utils.data.DataLoader(Labelled(), batch_size=4)):
        fresh = _tiny_ensemble(objective="margin")
        assert fresh.set_class_counts(source).tolist() == [6, 3, 1], type(source).__name__
        assert fresh.class_counts.tolist() == [6, 3, 1]

    with pytest.raises(IncompatibleConfigError, match="set_class_counts"):
        model.training_round(0).loss(torch.randn(4, 3), targets[:4])
    model.set_class_counts(targets)
    save_for_hub(model, tmp_path)
    loaded = collab_zoo.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert loaded.class_counts.tolist() == [6, 3, 1] and loaded.objective == "margin"
    # A file written before the counts were kept loads with none given.
    older = {k: v for k, v in model.state_dict().items() if k != "class_counts"}
    assert model.remap_pretrained_keys(older)["class_counts"].tolist() == [0, 0, 0]
    # A class without training images has no own-image mean in Eq. 3.
    model.set_class_counts([0, 1, 1, 0])
    with pytest.raises(IncompatibleConfigError, match="every class needs training images"):
        model.training_round(0).loss(torch.randn(4, 3), targets[:4])
    with pytest.raises(IncompatibleConfigError, match="class indices"):
        model.set_class_counts(torch.softmax(torch.randn(4, 3), -1))


def test_weighted_ce_needs_no_class_counts():
    model = _tiny_ensemble()
    loss, _ = model.training_round(0).loss(torch.tensor(IMBALANCED_LOGITS), torch.tensor(IMBALANCED_TARGETS))
    assert bool(torch.isfinite(loss)) and model.training_class_frequency() is None


# --- method options against independent statements (issue 22) ----------------------------------------------------

def _soft_errors_by_hand(logits, targets, classes):
    probs = [_softmax_row(r) for r in logits]
    errors = []
    for c in range(classes):
        own = [1 - p[c] for p, y in zip(probs, targets) if y == c]
        other = [p[c] for p, y in zip(probs, targets) if y != c]
        errors.append(0.5 * (sum(own) / len(own) + sum(other) / len(other)))
    return errors


def _hard_errors_by_hand(logits, targets, classes):
    errors = []
    for c in range(classes):
        rows = [r for r, y in zip(logits, targets) if y == c]
        errors.append(sum(1 for r in rows if max(range(classes), key=lambda k: (r[k], -k)) != c) / len(rows))
    return errors


SECOND_LOGITS = [[2.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 1.2, 1.0], [0.0, 0.0, 0.3], [0.1, 0.3, 0.0]]


@pytest.mark.parametrize("error,exponent,mu", [("soft", "paper", 0.7), ("hard", "code", 0.7), ("soft", "code", 0.5)])
def test_two_rounds_of_bookkeeping_follow_algorithm_1_by_hand(error, exponent, mu):
    model = _tiny_ensemble(error=error, exponent=exponent, mu=mu)
    by_hand = _soft_errors_by_hand if error == "soft" else _hard_errors_by_hand
    phi = [1 / 3] * 3
    gammas = []
    for t, logits in enumerate((LOGITS, SECOND_LOGITS)):
        assert int(model.current_round) == t and int(model.rounds_completed) == t
        assert model.importance[t].tolist() == pytest.approx(phi, rel=1e-6)
        errors = by_hand(logits, TARGETS, 3)
        eps = sum(p * e for p, e in zip(phi, errors))
        gamma = mu * eps / (1 - mu * eps)
        scale = mu if exponent == "paper" else 1.0
        raw = [p * gamma ** (1 - scale * e) for p, e in zip(phi, errors)]
        following = [r / sum(raw) for r in raw]

        log = model.complete_round(t, (torch.tensor(logits),), torch.tensor(TARGETS))
        assert model.class_error[t].tolist() == pytest.approx(errors, abs=1e-6)
        assert float(model.weighted_errors[t]) == pytest.approx(eps, rel=1e-6)
        assert float(model.gammas[t]) == pytest.approx(gamma, rel=1e-6) and log["gamma"] == pytest.approx(gamma)
        assert log["member_weight"] == pytest.approx(math.log(1 / gamma))
        assert log["hard_classes"] == sum(e > 1 / (2 * mu) for e in errors)
        assert model.importance[t + 1].tolist() == pytest.approx(following, rel=1e-5)
        gammas.append(gamma)
        phi = following
    # Round bookkeeping: two of two rounds done, the last member stays current, F weighs log(1/gamma_t) / Z.
    assert int(model.rounds_completed) == 2 and int(model.current_round) == 1
    alphas = [math.log(1 / g) for g in gammas]
    assert model.member_weights().tolist() == pytest.approx([a / sum(alphas) for a in alphas])
    model.train()
    assert [m.training for m in model.members] == [False, True]


def test_redoing_a_round_discards_what_followed_it():
    model = _tiny_ensemble(error="hard")
    with pytest.raises(IncompatibleConfigError, match="in order"):
        model.complete_round(1, (torch.tensor(LOGITS),), torch.tensor(TARGETS))
    model.complete_round(0, (torch.tensor(LOGITS),), torch.tensor(TARGETS))
    model.complete_round(1, (torch.tensor(SECOND_LOGITS),), torch.tensor(TARGETS))
    model.complete_round(0, (torch.tensor(SECOND_LOGITS),), torch.tensor(TARGETS))
    errors = _hard_errors_by_hand(SECOND_LOGITS, TARGETS, 3)
    assert model.class_error[0].tolist() == pytest.approx(errors)
    assert model.gammas[1].item() == 1.0 and model.class_error[1].tolist() == [0.0, 0.0, 0.0]
    assert int(model.rounds_completed) == 1 and int(model.current_round) == 1
    assert model.member_weights().tolist() == [1.0, 0.0]


def test_each_round_trains_with_its_own_importance_row():
    """Round t's loss reads importance row t: torch's class-weighted cross-entropy with that row's weights."""
    model = _tiny_ensemble()
    model.complete_round(0, (torch.tensor(LOGITS),), torch.tensor(TARGETS))
    z, y = torch.tensor(SECOND_LOGITS), torch.tensor(TARGETS)
    row1 = model.importance[1].clone()
    assert not torch.allclose(row1, model.importance[0])
    loss, parts = model.training_round(1).loss(z, y)
    assert loss.item() == pytest.approx(F.cross_entropy(z, y, weight=row1).item(), rel=1e-6)
    assert set(parts) == {"member2_weighted_ce", "total"}
    # Per-image weights (what a composed member's own loss gets): the class importance over the batch mean, and
    # for a soft target its expectation under the target.
    weights = cm.importance_sample_weights(y, row1)
    raw = [row1[t].item() for t in TARGETS]
    assert weights.tolist() == pytest.approx([r / (sum(raw) / len(raw)) for r in raw], rel=1e-6)
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    raw = [0.5 * row1[0].item() + 0.5 * row1[1].item(), row1[2].item()]
    assert cm.importance_sample_weights(soft, row1).tolist() == pytest.approx(
        [r / (sum(raw) / 2) for r in raw], rel=1e-6)
    # A caller's own sample weights multiply the image terms: here doubling every image doubles the loss.
    doubled, _ = model.training_round(1).loss(z, y, sample_weight=torch.full((5,), 2.0))
    assert doubled.item() == pytest.approx(2 * loss.item(), rel=1e-6)


# --- the checks and the round record, stated by hand (mutation survivors, issue 22) -------------------------------

def _four_class_ensemble(**kwargs):
    torch.manual_seed(0)
    return collab_zoo.create_model("complementary", member="mlp_mnist", tau=3, num_classes=4, in_chans=1,
                                   img_size=(1, 4), hidden=8, **kwargs)


def _scores_right_on(targets, wrong, classes=4):
    """Held-out scores that put 50 on the true class, or on the next class for the images listed in ``wrong``."""
    rows = []
    for i, y in enumerate(targets):
        row = [0.0] * classes
        row[(y + 1) % classes if i in wrong else y] = 50.0
        rows.append(row)
    return torch.tensor(rows)


def test_the_round_log_is_every_figure_by_hand(caplog):
    import logging
    model = _four_class_ensemble(error="hard")
    targets = [0, 0, 1, 1, 2, 2, 3, 3]
    mu, threshold = 0.7, 0.5 / 0.7
    # Round 1: both images of class 0 missed -> errors [1, 0, 0, 0], eps = 1/4.
    with caplog.at_level(logging.INFO):
        log1 = model.complete_round(0, (_scores_right_on(targets, {0, 1}),), torch.tensor(targets))
    assert not [r for r in caplog.records if "again" in r.getMessage()]
    g1 = mu * 0.25 / (1 - mu * 0.25)
    raw = [0.25 * g1 ** (1 - mu * e) for e in (1.0, 0.0, 0.0, 0.0)]
    following = [r / sum(raw) for r in raw]
    assert log1["round"] == 1 and log1["gamma"] == pytest.approx(g1, rel=1e-12)
    assert log1["member_weight"] == pytest.approx(math.log(1 / g1), rel=1e-12)
    assert log1["weighted_error"] == pytest.approx(0.25, rel=1e-12)
    assert log1["member_heldout_top1"] == pytest.approx(6 / 8) and log1["mean_class_error"] == pytest.approx(0.25)
    assert log1["hard_classes"] == 1 and log1["always_hard_classes"] == 1 and log1["unmeasured_classes"] == 0
    assert log1["always_hard_fraction_bound"] == pytest.approx(2 * math.sqrt(g1) / (1 + g1), rel=1e-6)  # float32 gammas
    assert log1["importance_max_over_min"] == pytest.approx(max(following) / min(following), rel=1e-9)
    assert log1["error_floored"] == 0 and log1["gamma_clamped"] == 0
    assert model.importance[1].tolist() == pytest.approx(following, rel=1e-6)
    # Round 2, by all three members' heads: class 0 missed again, class 1 once -> errors [1, 1/2, 0, 0] weighted by
    # round 2's importance; class 0 is hard in both rounds, class 1 only now.
    scores = _scores_right_on(targets, {0, 1, 2})
    log2 = model.complete_round(1, (torch.zeros(8, 4), scores, torch.zeros(8, 4)), torch.tensor(targets))
    eps2 = following[0] * 1.0 + following[1] * 0.5
    g2 = mu * eps2 / (1 - mu * eps2)
    assert log2["round"] == 2 and log2["weighted_error"] == pytest.approx(eps2, rel=1e-6)
    assert log2["hard_classes"] == 1 and log2["always_hard_classes"] == 1
    assert log2["mean_class_error"] == pytest.approx(1.5 / 4)
    assert log2["always_hard_fraction_bound"] == pytest.approx(
        (2 * math.sqrt(g1) / (1 + g1)) * (2 * math.sqrt(g2) / (1 + g2)), rel=1e-6)
    assert threshold == pytest.approx(0.5 / model.mu)


def test_a_class_is_hard_only_above_one_over_two_mu_and_always_hard_only_where_measured():
    model = _four_class_ensemble(error="hard", mu=0.5)                       # threshold 1: no class is hard
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    log = model.complete_round(0, (_scores_right_on(targets.tolist(), {0, 1}),), targets)
    assert log["hard_classes"] == 0 and log["always_hard_classes"] == 0
    # Class 3 has no held-out image in round 1: its filled error does not make it "always hard".
    model = _four_class_ensemble(error="hard", mu=0.2)                     # threshold 2.5: none hard either
    log = model.complete_round(0, (_scores_right_on([0, 0, 1, 2], {0, 1}),), torch.tensor([0, 0, 1, 2]))
    assert log["unmeasured_classes"] == 1 and model.class_measured[0].tolist() == [True, True, True, False]


def test_completing_a_round_needs_both_logits_and_targets_and_two_measured_classes():
    model = _mlp_ensemble()
    with pytest.raises(IncompatibleConfigError, match="held-out split and their class indices"):
        model.complete_round(0, (torch.randn(4, 10),))
    with pytest.raises(IncompatibleConfigError, match="held-out split and their class indices"):
        model.complete_round(0, heldout_targets=torch.arange(4))
    with pytest.raises(IncompatibleConfigError, match="held-out logits have 5 classes; the ensemble has 10"):
        model.complete_round(0, (torch.randn(4, 5),), torch.arange(4))
    # Exactly two classes is enough.
    log = model.complete_round(0, (torch.randn(6, 10),), torch.tensor([0, 1, 0, 1, 0, 1]))
    assert log["unmeasured_classes"] == 8 and int(model.rounds_completed) == 1


def test_min_error_floors_a_perfect_member_at_the_ensembles_own_floor():
    model = _mlp_ensemble(error="hard", min_error=0.01)
    targets = torch.arange(20) % 10
    log = model.complete_round(0, (F.one_hot(targets, 10).float() * 50,), targets)
    assert log["error_floored"] == 1
    assert log["gamma"] == pytest.approx(0.7 * 0.01 / (1 - 0.7 * 0.01), rel=1e-12)


def test_a_clamped_weak_member_and_a_redone_round_are_logged_in_words(caplog):
    import logging
    model = _mlp_ensemble(error="hard")
    targets = torch.arange(20) % 10
    wrong = F.one_hot((targets + 1) % 10, 10).float() * 50.0
    with caplog.at_level(logging.INFO):
        model.complete_round(0, (wrong,), targets)
    assert ("Round 1: mu * eps_t = 0.7000 >= 1/2 (gamma_t would be >= 1); gamma_t clamped to 0.999, so member 1 "
            "is all but left out of the ensemble. Train it further or lower mu below 0.5000.") in caplog.messages
    caplog.clear()
    with caplog.at_level(logging.INFO):
        model.training_round(1)
        assert not caplog.messages
        model.training_round(0)
        model.complete_round(0, (wrong,), targets)
    assert ("Round 1 is already complete; completing it again replaces it and discards the rounds after it."
            in caplog.messages)
    assert "Round 1 is completed again: its record is replaced, later rounds are discarded." in caplog.messages


def test_a_round_says_what_it_trains_and_which_round_it_is():
    model = _mlp_ensemble(objective="margin")
    first = model.training_round(0)
    assert first.index == 0 and first.head_names == ("member1",)
    assert first.description == ("complementary round 1/4: member 1 with the margin objective, classes weighted by "
                                 "importance row 0")
    model.complete_round(0, (torch.randn(20, 10),), torch.arange(20) % 10)
    second = model.training_round(1)
    assert second.index == 1 and second.module is model.members[1] and second.head_names == ("member2",)
    assert second.description.startswith("complementary round 2/4: member 2 with")
    with pytest.raises(IndexError, match=r"this ensemble has 4 rounds \(0\.\.3\); asked for round 4"):
        model.training_round(4)
    with pytest.raises(IncompatibleConfigError,
                       match=r"round 3 \(member 4\) needs the importance that completing round 1 gives"):
        model.training_round(3)


def test_complete_round_reads_the_right_members_scores_from_every_head():
    model = _mlp_ensemble(error="hard")
    targets = torch.arange(20) % 10
    right, wrong = F.one_hot(targets, 10).float() * 50, F.one_hot((targets + 1) % 10, 10).float() * 50
    model.complete_round(0, (right,), targets)
    # Member 2's scores are the second of the ensemble's four heads.
    log = model.complete_round(1, (wrong, right, wrong, wrong), targets)
    assert log["member_heldout_top1"] == 1.0
    with pytest.raises(IncompatibleConfigError, match="complete_round takes member 3's held-out scores .* its 1 "
                                                      "heads, or all 4 heads of the ensemble; got 2 tensors"):
        model.complete_round(2, (right, right), targets)


def test_the_graph_member_weights_equal_the_eager_ones_in_every_state():
    model = _mlp_ensemble()
    expected = {(0, 0): [1.0, 0, 0, 0], (0, 2): [0, 0, 1.0, 0]}
    g = [0.2, 0.5, 0.3, 0.9]
    alpha = [math.log(1 / v) for v in g]
    expected[(1, 1)] = [1.0, 0, 0, 0]
    expected[(2, 2)] = [alpha[0] / sum(alpha[:2]), alpha[1] / sum(alpha[:2]), 0, 0]
    expected[(4, 3)] = [a / sum(alpha) for a in alpha]
    with torch.no_grad():
        for (completed, current), weights in expected.items():
            model.gammas.copy_(torch.tensor([v if i < completed else 1.0 for i, v in enumerate(g)]))
            model.rounds_completed.fill_(completed)
            model.current_round.fill_(current)
            in_graph = model._member_weights_in_graph()
            assert in_graph.dtype == torch.float64
            assert in_graph.tolist() == pytest.approx(weights, rel=1e-6), (completed, current)
            assert model.member_weights().tolist() == pytest.approx(weights, rel=1e-6)


def test_the_per_class_error_checks_its_input():
    logits = torch.tensor(LOGITS)
    with pytest.raises(IncompatibleConfigError, match="error must be one of"):
        cm.heldout_class_stats(logits, torch.tensor(TARGETS), "top1")
    with pytest.raises(IncompatibleConfigError, match="the held-out split is empty"):
        cm.heldout_class_stats(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(IncompatibleConfigError, match="5 integer class indices"):
        cm.heldout_class_stats(logits, torch.tensor(TARGETS, dtype=torch.float32))
    with pytest.raises(IncompatibleConfigError, match="Evaluate the held-out split without mixing"):
        cm.heldout_class_stats(logits, torch.softmax(logits, -1))
    for bad, shown in (([0, 1, 1, 2, -1], r"-1\.\.2"), ([0, 1, 1, 2, 3], r"0\.\.3"), ([-2] * 5, r"-2\.\.-2")):
        with pytest.raises(IncompatibleConfigError, match=rf"must lie in \[0, 3\), got {shown}"):
            cm.heldout_class_stats(logits, torch.tensor(bad))
    # int32 class indices and a single image are fine.
    stats = cm.heldout_class_stats(logits, torch.tensor(TARGETS, dtype=torch.int32), "hard")
    assert stats.error.tolist() == [0.5, 0.5, 0.0]
    one = cm.heldout_class_stats(logits[:1], torch.tensor([0]), "hard")
    assert one.count.tolist() == [1, 0, 0] and one.error.tolist() == [0.0, 0.0, 0.0]


def test_soft_error_of_a_class_with_one_other_image_by_hand():
    # Two images, classes 0 and 1: each class has exactly one image of another class.
    logits = [[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]]
    probs = [_softmax_row(r) for r in logits]
    expected = [0.5 * ((1 - probs[0][0]) + probs[1][0]), 0.5 * ((1 - probs[1][1]) + probs[0][1]), 0.0]
    stats = cm.heldout_class_stats(torch.tensor(logits), torch.tensor([0, 1]))
    assert stats.error.tolist() == pytest.approx(expected, abs=1e-12)


def test_weighted_error_accepts_rounding_and_refuses_errors_outside_zero_one():
    half = torch.tensor([1.0, 1.0], dtype=torch.float64)
    assert cm.weighted_error(torch.tensor([1 + 5e-10, 0.0], dtype=torch.float64), half) == 0.5
    assert cm.weighted_error(torch.tensor([-5e-10, 1.0], dtype=torch.float64), half) == 0.5
    assert cm.weighted_error(torch.tensor([-1e-9, 1.0], dtype=torch.float64), half) == 0.5
    assert cm.weighted_error(torch.tensor([1 + 1e-9, 0.0], dtype=torch.float64), half) == 0.5
    for bad in ([1.5, 0.0], [-0.5, 0.0], [float("nan"), 0.0], [1 + 3e-9, 0.0], [-3e-9, 0.0]):
        with pytest.raises(IncompatibleConfigError, match=r"per-class errors must lie in \[0, 1\]"):
            cm.weighted_error(torch.tensor(bad, dtype=torch.float64), half)


def test_margin_objective_by_hand_with_sample_weights_two_classes_and_its_parts():
    logits = [[1.0, -1.0], [0.5, 0.25], [-0.5, 2.0]]
    targets = [0, 0, 1]
    phi = [3.0, 1.0]
    s = [2.0, 0.0, 1.0]
    counts = torch.tensor([2, 1])                                  # f = [2/3, 1/3], given as integer counts
    f = [2 / 3, 1 / 3]
    varphi = [v / sum(phi) for v in phi]
    own_terms, other_terms = [], []
    for row, y in zip(logits, targets):
        log_p = [math.log(p) for p in _softmax_row(row)]
        own_terms.append(varphi[y] / f[y] * log_p[y])
        other_terms.append(sum(varphi[l] / (1 - f[l]) * log_p[l] for l in range(2) if l != y))
    mean = lambda terms: sum(w * t for w, t in zip(s, terms)) / len(terms)
    loss, parts = cm.margin_objective(torch.tensor(logits), torch.tensor(targets), torch.tensor(phi, dtype=torch.float64),
                                      counts, torch.tensor(s))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(-(mean(own_terms) - mean(other_terms)), rel=1e-5)
    assert parts["own_log_conf"].item() == pytest.approx(mean(own_terms), rel=1e-5)
    assert parts["other_log_conf"].item() == pytest.approx(mean(other_terms), rel=1e-5)
    assert parts["total"].item() == pytest.approx(loss.item())
    plain = cm.class_weighted_loss("margin", torch.tensor(logits), torch.tensor(targets), torch.tensor(phi),
                                   counts, torch.tensor(s))[0]
    assert plain.item() == pytest.approx(loss.item(), rel=1e-6)
    with pytest.raises(IncompatibleConfigError, match="needs at least two classes"):
        cm.margin_objective(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), torch.ones(1))
    with pytest.raises(IncompatibleConfigError, match="positive for every class and below 1"):
        cm.margin_objective(torch.zeros(2, 2), torch.tensor([0, 1]), torch.ones(2), torch.tensor([1.0, 1e-30]))
    with pytest.raises(IncompatibleConfigError, match="objective must be one of"):
        cm.class_weighted_loss("ce", torch.zeros(2, 2), torch.tensor([0, 1]), torch.ones(2))


def test_weighted_ce_by_hand_with_sample_weights_soft_targets_and_float64_inputs():
    logits = [[1.0, 0.0, -1.0], [0.0, 0.5, 0.0]]
    q = [[0.25, 0.75, 0.0], [0.0, 0.0, 1.0]]
    w = [1.0, 2.0, 4.0]
    s = [3.0, 0.5]
    terms = [-sum(qi[l] * w[l] * math.log(_softmax_row(row)[l]) for l in range(3)) for row, qi in zip(logits, q)]
    norm = sum(qi[l] * w[l] for qi in q for l in range(3))
    loss, parts = cm.weighted_cross_entropy(torch.tensor(logits), torch.tensor(q, dtype=torch.float64),
                                            torch.tensor(w, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(sum(si * t for si, t in zip(s, terms)) / norm, rel=1e-6)
    assert parts["weighted_ce"].item() == pytest.approx(loss.item())
    routed = cm.class_weighted_loss("weighted_ce", torch.tensor(logits), torch.tensor(q), torch.tensor(w),
                                    None, torch.tensor(s))[0]
    assert routed.item() == pytest.approx(loss.item(), rel=1e-6)
    with pytest.raises(IncompatibleConfigError, match="soft targets have 4 columns for 3 classes"):
        cm.weighted_cross_entropy(torch.tensor(logits), torch.full((2, 4), 0.25), torch.tensor(w))
    for bad in (torch.ones(2, 1), torch.ones(3)):
        with pytest.raises(IncompatibleConfigError,
                           match=rf"one weight per sample, shape \[2\]; got {re.escape(str(tuple(bad.shape)))}"):
            cm.weighted_cross_entropy(torch.tensor(logits), torch.tensor([0, 1]), torch.tensor(w), bad)


def test_importance_sample_weights_by_hand():
    importance = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    weights = cm.importance_sample_weights(torch.tensor([0, 1, 1, 2]), importance)
    raw = [0.5, 0.25, 0.25, 0.25]
    assert weights.dtype == torch.float32
    assert weights.tolist() == pytest.approx([r / (sum(raw) / 4) for r in raw], rel=1e-6)
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    raw = [0.375, 0.25]
    assert cm.importance_sample_weights(soft, importance).tolist() == pytest.approx(
        [r / (sum(raw) / 2) for r in raw], rel=1e-6)


def test_the_round_loss_and_collab_loss_pass_sample_weights_on():
    model = _mlp_ensemble()
    torch.manual_seed(2)
    logits, target = torch.randn(3, 10), torch.tensor([1, 4, 4])
    s = torch.tensor([2.0, 0.5, 1.0])
    importance = model.importance[0].tolist()
    terms = [-importance[y] * math.log(_softmax_row(row)[y]) for row, y in zip(logits.tolist(), target.tolist())]
    expected = sum(si * t for si, t in zip(s.tolist(), terms)) / sum(importance[y] for y in target.tolist())
    loss, parts = model.training_round(0).loss(logits, target, s)
    assert loss.item() == pytest.approx(expected, rel=1e-6) and parts["total"].item() == pytest.approx(expected, rel=1e-6)
    heads = (logits, torch.randn(3, 10), torch.randn(3, 10), torch.randn(3, 10))
    assert model.collab_loss(heads, target, s)[0].item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(IncompatibleConfigError, match=r"collab_loss expects the 4 heads of a train-mode forward "
                                                      r"\(member1, member2, member3, member4\), got 3"):
        model.collab_loss(heads[:3], target)
    with pytest.raises(IncompatibleConfigError, match=r"expected the 4 heads of forward_heads "
                                                      r"\(member1, member2, member3, member4\), got 2"):
        model.member_scores(heads[:2])
    with pytest.raises(IncompatibleConfigError, match="one gamma per member"):
        cm.ensemble_log_probs([logits], [0.5, 0.5])


def test_class_counts_prefer_the_datasets_targets_and_take_arrays():
    class Five(torch.utils.data.Dataset):
        targets = [0, 0, 1, 1, 2]

        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.zeros(1), self.targets[i]

    # The loader would drop the last image; the dataset's targets still count it.
    loader = torch.utils.data.DataLoader(Five(), batch_size=2, drop_last=True)
    assert cm.class_counts_of(loader, 3).tolist() == [2, 2, 1]
    assert cm.class_counts_of(np.array([0, 1, 1]), 3).tolist() == [1, 2, 0]
    with pytest.raises(IncompatibleConfigError, match="class counts come from class indices, .* got object"):
        cm.class_counts_of(object(), 3)


def test_training_class_frequency_is_counts_over_their_sum():
    model = _mlp_ensemble(objective="margin")
    with pytest.raises(IncompatibleConfigError, match="Eq. 2-3 with the training set's class frequencies R_l / R"):
        model.training_class_frequency()
    model.set_class_counts(torch.arange(10))                   # one image of each class
    frequency = model.training_class_frequency()
    assert frequency.dtype == torch.float64 and frequency.tolist() == pytest.approx([0.1] * 10)
    model.set_class_counts(torch.tensor([0, 0, 0, 1]))
    assert model.training_class_frequency().tolist() == pytest.approx([0.75, 0.25] + [0.0] * 8)



# --- figures: what write_figures draws, read back from the figures themselves -----------------------------------

# Held-out images per class as (right, wrong): a right image scores 50 on its own class, a wrong one 50 on the
# next class. Round 1: class 7 has no held-out image; accuracies 0.75, 0, 1, 0.25, 0, 0.5, 0.25, -, 1, 0.5.
_ROUND1 = [(3, 1), (0, 2), (2, 0), (1, 3), (0, 2), (1, 1), (1, 3), (0, 0), (2, 0), (1, 1)]
# Hardest first, ties in class order, the unmeasured class 7 last.
_ROUND1_ORDER = [1, 4, 3, 6, 5, 9, 0, 2, 8, 7]
# Round 2: class 3 has no held-out image; class 0 all wrong, class 7 half right, the rest right.
_ROUND2 = [(0, 2), (1, 0), (1, 0), (0, 0), (1, 0), (1, 0), (1, 0), (1, 1), (1, 0), (1, 0)]
_ROUND3 = [(1, 0)] * 10  # every class right
_ROUND4 = [(1, 0) if c % 2 == 0 else (0, 1) for c in range(10)]  # even classes right, odd wrong
_RANKED_BY = "classes ranked by member 1's held-out accuracy (hardest first)"


def _heldout(spec):
    num_classes = len(spec)
    logits, targets = [], []
    for c, (right, wrong) in enumerate(spec):
        for k in range(right + wrong):
            row = [0.0] * num_classes
            row[c if k < right else (c + 1) % num_classes] = 50.0
            logits.append(row)
            targets.append(c)
    return torch.tensor(logits), torch.tensor(targets)


def _complete(model, t, spec):
    logits, targets = _heldout(spec)
    model.complete_round(t, (logits,), targets)


def _record_savefig(monkeypatch):
    """Wraps Figure.savefig: records (figure, path, keyword arguments), then saves as usual."""
    from matplotlib.figure import Figure

    saved = []
    original = Figure.savefig

    def recording(self, fname, *args, **kwargs):
        saved.append((self, Path(fname), dict(kwargs)))
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    return saved


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _check_frame(fig, ax, path, kwargs, labels):
    """What both figures share: size, Agg canvas, dpi 100, 1-wide lines, a small legend of the line labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.font_manager import FontProperties

    assert tuple(fig.get_size_inches()) == (8.0, 4.5)
    assert isinstance(fig.canvas, FigureCanvasAgg)
    assert kwargs.get("dpi") == 100
    assert _png_size(path) == (800, 450)  # 8 x 4.5 inches at 100 dpi, whatever the rc defaults say
    assert [line.get_label() for line in ax.get_lines()] == labels
    assert [line.get_linewidth() for line in ax.get_lines()] == [1.0] * len(labels)
    legend = ax.get_legend()
    assert legend is not None
    assert [text.get_text() for text in legend.get_texts()] == labels
    small = FontProperties(size="small").get_size_in_points()
    assert small < FontProperties(size="medium").get_size_in_points()
    assert [text.get_fontsize() for text in legend.get_texts()] == pytest.approx([small] * len(labels))


def test_difficulty_order_ranks_by_member_1_accuracy_hardest_first():
    model = _mlp_ensemble()
    order, label = model._difficulty_order()
    assert order.tolist() == list(range(10)) and label == "class index"
    _complete(model, 0, _ROUND1)
    assert model.class_measured[0].tolist() == [c != 7 for c in range(10)]
    order, label = model._difficulty_order()
    assert order.tolist() == _ROUND1_ORDER and label == _RANKED_BY
    # Later rounds change nothing: the ranking is member 1's.
    _complete(model, 1, _ROUND2)
    order, label = model._difficulty_order()
    assert order.tolist() == _ROUND1_ORDER and label == _RANKED_BY


def test_difficulty_order_keeps_ties_in_class_order_and_unmeasured_last():
    model = _mlp_ensemble(num_classes=40)
    with torch.no_grad():
        model.class_accuracy[0] = torch.tensor([1.0] * 20 + [0.0] * 20)
        model.class_measured[0] = torch.tensor([c not in (5, 25) for c in range(40)])
        model.rounds_completed.fill_(1)
    order, label = model._difficulty_order()
    expected = [c for c in range(20, 40) if c != 25] + [c for c in range(20) if c != 5] + [5, 25]
    assert order.tolist() == expected and label == _RANKED_BY


def test_write_figures_before_any_round_draws_the_uniform_importance(tmp_path, monkeypatch):
    import matplotlib

    saved = _record_savefig(monkeypatch)
    model = _mlp_ensemble()
    with matplotlib.rc_context({"figure.figsize": (3.0, 3.0), "figure.dpi": 50, "savefig.dpi": 72,
                                "lines.linewidth": 3.0, "legend.fontsize": "large"}):
        paths = model.write_figures(tmp_path / "nested" / "figures")
    assert paths == [tmp_path / "nested" / "figures" / "complementary_importance.png"]
    assert len(saved) == 1
    fig, path, kwargs = saved[0]
    assert path == paths[0] and path.is_file()
    ax = fig.axes[0]
    _check_frame(fig, ax, path, kwargs, ["round 1 (uniform)"])
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == list(range(10))
    assert list(line.get_ydata()) == pytest.approx([1.0] * 10)  # 1/10 each, times 10 classes
    assert line.get_marker() == "o"
    assert ax.get_xlabel() == "class index"
    assert ax.get_ylabel() == "importance x N (mean 1)"
    assert ax.get_title() == "Class importance each round trains with"


def test_write_figures_importance_and_accuracy_after_two_rounds(tmp_path, monkeypatch):
    saved = _record_savefig(monkeypatch)
    model = _mlp_ensemble()
    _complete(model, 0, _ROUND1)
    _complete(model, 1, _ROUND2)
    paths = model.write_figures(tmp_path / "a" / "b")
    assert [p.name for p in paths] == ["complementary_importance.png", "complementary_class_accuracy.png"]
    assert [p for _, p, _ in saved] == paths
    ax = saved[0][0].axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["round 1 (uniform)", "round 2", "round 3"]
    ax = saved[1][0].axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["member 1", "member 2"]


def test_write_figures_after_every_round_draws_ranked_importance_and_masked_accuracy(tmp_path, monkeypatch):
    import matplotlib

    model = _mlp_ensemble()
    for t, spec in enumerate((_ROUND1, _ROUND2, _ROUND3, _ROUND4)):
        _complete(model, t, spec)
    saved = _record_savefig(monkeypatch)
    with matplotlib.rc_context({"figure.figsize": (3.0, 3.0), "figure.dpi": 50, "savefig.dpi": 72,
                                "lines.linewidth": 3.0, "legend.fontsize": "large"}):
        paths = model.write_figures(tmp_path / "x" / "y")
    assert paths == [tmp_path / "x" / "y" / "complementary_importance.png",
                     tmp_path / "x" / "y" / "complementary_class_accuracy.png"]
    assert [p for _, p, _ in saved] == paths and all(p.is_file() for p in paths)
    order = _ROUND1_ORDER

    # Importance: the uniform row, the rows rounds 2-4 trained with, and the row after round 4; x N = 10.
    fig, path, kwargs = saved[0]
    ax = fig.axes[0]
    _check_frame(fig, ax, path, kwargs, ["round 1 (uniform)", "round 2", "round 3", "round 4", "after round 4"])
    lines = ax.get_lines()
    for row, line in enumerate(lines):
        expected = [float(model.importance[row, c]) * 10 for c in order]
        assert list(line.get_xdata()) == list(range(10))
        assert list(line.get_ydata()) == pytest.approx(expected, rel=1e-12)
        assert line.get_marker() == "o"
    assert list(lines[0].get_ydata()) == pytest.approx([1.0] * 10)
    # The rounds moved weight between classes, so the ranking shows in the drawn rows.
    assert len({round(v, 9) for v in lines[1].get_ydata()}) > 2
    assert ax.get_xlabel() == _RANKED_BY
    assert ax.get_ylabel() == "importance x N (mean 1)"
    assert ax.get_title() == "Class importance each round trains with"

    # Held-out accuracy, ranked as above; NaN where the round had no image of the class.
    nan = float("nan")
    expected = [
        [0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 1.0, 1.0, nan],   # member 1: class 7 unmeasured
        [1.0, 1.0, nan, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.5],      # member 2: class 3 unmeasured
        [1.0] * 10,                                             # member 3: all right
        [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0],      # member 4: even classes right
    ]
    fig, path, kwargs = saved[1]
    ax = fig.axes[0]
    _check_frame(fig, ax, path, kwargs, ["member 1", "member 2", "member 3", "member 4"])
    for line, want in zip(ax.get_lines(), expected):
        assert list(line.get_xdata()) == list(range(10))
        np.testing.assert_array_equal(np.asarray(line.get_ydata(), dtype=float), np.array(want))
        assert line.get_marker() == "o"
    assert ax.get_xlabel() == _RANKED_BY
    assert ax.get_ylabel() == "held-out top-1 accuracy"
    assert ax.get_ylim() == pytest.approx((-0.02, 1.02))
    assert ax.get_title() == "Each class's held-out accuracy, per round"


@pytest.mark.parametrize("num_classes, marker", [(30, "o"), (31, "None")])
def test_write_figures_marks_points_up_to_30_classes(tmp_path, monkeypatch, num_classes, marker):
    saved = _record_savefig(monkeypatch)
    model = _mlp_ensemble(num_classes=num_classes)
    model.write_figures(tmp_path)
    (line,) = saved[0][0].axes[0].get_lines()
    assert line.get_marker() == marker
    assert list(line.get_xdata()) == list(range(num_classes))


def test_write_figures_with_one_class_and_with_none(tmp_path):
    one = _mlp_ensemble(num_classes=1)
    assert one.write_figures(tmp_path / "one") == [tmp_path / "one" / "complementary_importance.png"]
    model = _mlp_ensemble()
    model.reset_classifier(0)
    assert model.num_classes == 0
    assert model.write_figures(tmp_path / "none" / "deeper") == []
    assert not (tmp_path / "none").exists()



# --- building: first_member_weights, pretrained_cfg names ------------------------------------------------------------

def test_first_member_true_or_a_tag_of_its_architecture_asks_timm_for_pretrained_weights(monkeypatch, tmp_path):
    """True means the member's timm default weights, a string '<arch>.<tag>' that is not a path a timm tag: both
    go to timm.create_model(pretrained=True) with the member's class count, channels and arguments (spied here, so
    no download); a local file whose name happens to look like a tag is read as a file."""
    from safetensors.torch import save_file

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(5)
    source = timm.create_model("mlp_mnist")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, "mlp_mnist.safetensors")
    torch.manual_seed(6)
    file_member = timm.create_model("mlp_mnist")
    calls = []
    stand_in = torch.nn.Identity()

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return stand_in

    monkeypatch.setattr(timm, "create_model", spy)
    member = torch.nn.Linear(2, 2)
    for weights in (True, "mlp_mnist.some_tag", "mlp_mnist.tag.v2"):
        assert cm._load_first_member(member, "mlp_mnist", weights, 7, 2, {"hidden": 8}) is stand_in
    asked = dict(pretrained=True, num_classes=7, in_chans=2, hidden=8)
    assert calls == [(("mlp_mnist",), asked), (("mlp_mnist.some_tag",), asked), (("mlp_mnist.tag.v2",), asked)]

    # A file in the working directory named like a tag of the architecture: it exists, so it is a file.
    calls.clear()
    member = file_member
    loaded = cm._load_first_member(member, "mlp_mnist", "mlp_mnist.safetensors", 10, 1, {})
    assert calls == [] and loaded is member
    for name, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_first_member_weights_from_a_folder_or_a_state_dict_and_the_refusals(monkeypatch, tmp_path):
    from safetensors.torch import save_file

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(1)
    source = timm.create_model("mlp_mnist")
    folder = tmp_path / "hub"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(folder / "model.safetensors"))
    # A folder (as a Path) holding model.safetensors, and a state_dict: the member takes exactly those weights.
    for weights in (folder, str(folder), source.state_dict()):
        torch.manual_seed(2)
        member = timm.create_model("mlp_mnist")
        assert cm._load_first_member(member, "mlp_mnist", weights, 10, 1, {}) is member
        for name, value in source.state_dict().items():
            assert torch.equal(member.state_dict()[name], value), (type(weights).__name__, name)

    # A state_dict for another class count: the hidden layer is taken, the classifier starts fresh (the member's own).
    torch.manual_seed(3)
    four = timm.create_model("mlp_mnist", num_classes=4)
    torch.manual_seed(4)
    member = timm.create_model("mlp_mnist")
    own_fc = member.fc.weight.detach().clone()
    cm._load_first_member(member, "mlp_mnist", four.state_dict(), 10, 1, {})
    assert torch.equal(member.hidden_layers[0].weight, four.hidden_layers[0].weight)
    assert torch.equal(member.fc.weight, own_fc)

    # A plain module without a pretrained_cfg takes a state_dict too.
    linear = torch.nn.Linear(3, 2)
    cm._load_first_member(linear, "linear", {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, 2, 3, {})
    assert linear.weight.tolist() == [[1.0] * 3] * 2 and linear.bias.tolist() == [0.0, 0.0]

    # Weights of another shape: the error says where they came from and which architecture they do not fit.
    narrow = timm.create_model("mlp_mnist", hidden=50).state_dict()
    with pytest.raises(StateDictMismatchError,
                       match=r"^Weights from first_member_weights \(state_dict\) do not fit MLP \(mlp_mnist\)"):
        cm._load_first_member(timm.create_model("mlp_mnist"), "mlp_mnist", narrow, 10, 1, {})
    with pytest.raises(IncompatibleConfigError,
                       match=r"^first_member_weights must be True, a timm tag, a path or a state_dict; got int\.$"):
        cm._load_first_member(timm.create_model("mlp_mnist"), "mlp_mnist", 3, 10, 1, {})
    # A tag of another architecture is neither a file nor a tag of this one.
    with pytest.raises(IncompatibleConfigError,
                       match=r"^first_member_weights='resnet18\.a1_in1k' is neither a file nor a timm tag of "
                             r"'mlp_mnist' \(e\.g\. 'mlp_mnist\.<tag>'\)"):
        cm._load_first_member(timm.create_model("mlp_mnist"), "mlp_mnist", "resnet18.a1_in1k", 10, 1, {})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IncompatibleConfigError, match="neither a file nor a timm tag"):
        cm._load_first_member(timm.create_model("mlp_mnist"), "mlp_mnist", empty, 10, 1, {})


def test_first_member_weights_for_rgb_are_adapted_to_the_members_channels_by_its_first_conv():
    """The member's pretrained_cfg names its first convolution (stem.0): 3-channel weights given to a 1-channel
    member are summed over the input channels (timm's rule), not refused."""
    torch.manual_seed(0)
    source = timm.create_model("cifar_resnet20")
    member = timm.create_model("cifar_resnet20", in_chans=1)
    cm._load_first_member(member, "cifar_resnet20", source.state_dict(), 10, 1, {})
    w = source.stem[0].weight.detach()
    assert member.stem[0].weight.shape == (16, 1, 3, 3)
    assert torch.allclose(member.stem[0].weight, w[:, 0:1] + w[:, 1:2] + w[:, 2:3], atol=1e-6)
    assert torch.equal(member.fc.weight, source.fc.weight)


def test_registered_variants_name_every_members_first_conv_and_classifier():
    expected = {
        "complementary_resnet50_x4": ("conv1", "fc", (7, 7), (3, 224, 224)),
        "complementary_densenet121_x4": ("features.conv0", "classifier", (7, 7), (3, 224, 224)),
        "complementary_alexnet_x4": ("features.0", "classifier.6", (6, 6), (3, 224, 224)),
        "complementary_resnet56_x4": ("stem.0", "fc", (8, 8), (3, 32, 32)),
        "complementary_densenet_bc_k12_x4": ("stem", "fc", (8, 8), (3, 32, 32)),
        "complementary_mlp_x4": ("hidden_layers.0", "fc", None, (1, 28, 28)),
    }
    for name, (conv, classifier, pool, size) in expected.items():
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        assert cfg["first_conv"] == tuple(f"members.{i}.{conv}" for i in (0, 1, 2, 3)), name
        assert cfg["classifier"] == tuple(f"members.{i}.{classifier}" for i in (0, 1, 2, 3)), name
        assert cfg.get("pool_size") == pool and tuple(cfg["input_size"]) == size, name
    mlp = timm.models.get_pretrained_cfg("complementary_mlp_x4").to_dict()
    assert mlp["first_conv"] == ("members.0.hidden_layers.0", "members.1.hidden_layers.0",
                                 "members.2.hidden_layers.0", "members.3.hidden_layers.0")
    assert mlp["classifier"] == ("members.0.fc", "members.1.fc", "members.2.fc", "members.3.fc")
    # The names are modules of the built ensembles.
    for name in ("complementary_mlp_x4", "complementary_alexnet_x4"):
        with torch.device("meta"):
            model = timm.create_model(name)
        modules = dict(model.named_modules())
        for module in model.pretrained_cfg["first_conv"] + model.pretrained_cfg["classifier"]:
            assert module in modules, (name, module)


def test_prefixed_names_go_member_by_member_and_the_generic_ensemble_uses_them():
    assert cm._prefixed(None, 3) is None
    assert cm._prefixed("fc", 2) == ("members.0.fc", "members.1.fc")
    assert cm._prefixed(("head", "head_dist"), 2) == (
        "members.0.head", "members.0.head_dist", "members.1.head", "members.1.head_dist")
    assert cm._prefixed(["a"], 3) == ("members.0.a", "members.1.a", "members.2.a")
    with torch.device("meta"):
        model = collab_zoo.create_model("complementary", member="deit_tiny_distilled_patch16_224", tau=2)
    assert model.pretrained_cfg["classifier"] == (
        "members.0.head", "members.0.head_dist", "members.1.head", "members.1.head_dist")
    assert model.pretrained_cfg["first_conv"] == ("members.0.patch_embed.proj", "members.1.patch_embed.proj")


# --- timm's interface -----------------------------------------------------------------------------------------------

def test_channel_dim_is_the_last_for_nhwc_members_and_token_sequences_else_one():
    nchw, nhwc = torch.nn.Identity(), torch.nn.Identity()
    nhwc.output_fmt = "NHWC"
    dim = cm.ComplementaryEnsemble._channel_dim
    assert dim(nchw, torch.zeros(2, 5)) == 1          # pooled [B, C]
    assert dim(nchw, torch.zeros(2, 5, 3, 3)) == 1    # NCHW map
    assert dim(nchw, torch.zeros(2, 7, 5)) == -1      # tokens [B, L, C]
    assert dim(nhwc, torch.zeros(2, 3, 3, 5)) == -1   # NHWC map
    assert dim(nhwc, torch.zeros(2, 5)) == -1


def test_forward_head_gives_the_eq9_mixture_of_every_completed_member():
    model = _mlp_ensemble().eval()
    x = torch.randn(3, 1, 28, 28)
    gammas = [0.2, 0.5, 0.3, 0.9]
    with torch.no_grad():
        model.gammas.copy_(torch.tensor(gammas))
        model.rounds_completed.fill_(4)
        features = model.forward_features(x)
        out = model.forward_head(features)
        pre = model.forward_head(features, pre_logits=True)
        logits = [model.members[t](x).double() for t in range(4)]
        hidden = [model.members[t].forward_features(x) for t in range(4)]
    # Eq. 9 by hand: weights log(1/gamma_t) / sum, a mixture of the members' softmax probabilities, its log.
    alpha = [math.log(1 / g) for g in gammas]
    for b in range(3):
        mixed = [sum(a / sum(alpha) * math.exp(l[b, c]) / sum(math.exp(v) for v in l[b].tolist())
                     for a, l in zip(alpha, logits)) for c in range(10)]
        assert out[b].tolist() == pytest.approx([math.log(m) for m in mixed], abs=1e-5)
    # pre_logits: the members' 300 hidden units side by side, member by member.
    assert pre.shape == (3, 1200)
    for t in range(4):
        assert torch.allclose(pre[:, 300 * t:300 * (t + 1)], hidden[t])


def test_forward_head_of_a_one_class_ensemble_is_log_one():
    model = _mlp_ensemble(num_classes=1).eval()
    with torch.no_grad():
        out = model.forward_head(model.forward_features(torch.randn(2, 1, 28, 28)))
    assert out.shape == (2, 1) and out.abs().max().item() < 1e-6


def test_reset_classifier_to_no_classes_resets_every_member_and_the_record(caplog):
    import logging

    model = _mlp_ensemble()
    model.complete_round(0, (torch.randn(30, 10),), torch.arange(30) % 10)
    with caplog.at_level(logging.INFO, logger="collab_zoo.methods.complementary"):
        model.reset_classifier(0)
    assert "reset_classifier: the boosting record of 1 completed round(s) is cleared." in caplog.messages
    assert model.num_classes == 0 and [m.num_classes for m in model.members] == [0, 0, 0, 0]
    assert all(isinstance(m.fc, torch.nn.Identity) for m in model.members)
    assert model.importance.shape == (5, 0) and int(model.rounds_completed) == 0
    model.eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        features = model.forward_features(x)
        hidden = torch.cat([m.forward_features(x) for m in model.members], dim=1)
        assert torch.allclose(model.forward_head(features), hidden) and features.shape == (2, 1200)


def test_nhwc_members_are_joined_on_the_last_dim_and_reset_classifier_passes_the_pool_on():
    """Swin members give NHWC maps: features side by side on the last dim; after reset_classifier(0, '') the head
    neither pools nor classifies, so forward_head gives the unpooled maps back."""
    torch.manual_seed(0)
    model = collab_zoo.create_model("complementary", member="swin_tiny_patch4_window7_224", tau=2, num_classes=3,
                                    img_size=32, window_size=4, embed_dim=8, depths=(2,), num_heads=(1,)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        own = [m.forward_features(x) for m in model.members]
        assert own[0].shape == (2, 8, 8, 8)
        assert torch.equal(features, torch.cat(own, dim=3))
        assert model.forward_head(features).shape == (2, 3)
        pooled = model.forward_head(features, pre_logits=True)
        assert torch.allclose(pooled, torch.cat([m.forward_head(f, pre_logits=True) for m, f in zip(model.members, own)],
                                                dim=1))
        model.reset_classifier(0, "")
        assert model.num_classes == 0 and [m.num_classes for m in model.members] == [0, 0]
        assert torch.equal(model.forward_head(features), features)


# --- weights: a checkpoint for another class count ------------------------------------------------------------------

def test_remap_pretrained_keys_keeps_the_checkpoint_and_starts_the_record_fresh_for_another_class_count(caplog):
    import logging

    model = _mlp_ensemble()
    state = model.state_dict()
    older = {k: v for k, v in state.items() if k != "class_counts"}
    remapped = model.remap_pretrained_keys(older)
    assert set(remapped) == set(state) and remapped["class_counts"].tolist() == [0] * 10
    for name, value in older.items():
        assert remapped[name] is value, name

    seven = _mlp_ensemble(num_classes=7)
    with caplog.at_level(logging.INFO, logger="collab_zoo.methods.complementary"):
        fresh = seven.remap_pretrained_keys(dict(state))
    assert "The checkpoint's boosting record is for 10 classes; it starts fresh for 7." in caplog.messages
    assert fresh["importance"].shape == (5, 7) and fresh["importance"].flatten().tolist() == pytest.approx([1 / 7] * 35)
    assert fresh["gammas"].tolist() == [1.0] * 4 and fresh["class_counts"].tolist() == [0] * 7
    assert fresh["members.1.hidden_layers.0.weight"] is state["members.1.hidden_layers.0.weight"]


# --- the authors' round files ---------------------------------------------------------------------------------------

def test_released_numpy_globals_allow_every_numeric_dtype_under_both_module_paths_without_numpy_core():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy 2 warns on its deprecated numpy.core; the reader takes numpy._core
        allowed = cm._released_numpy_globals()
    assert np.ndarray in allowed and np.dtype in allowed
    for code in "?bBhHiIlLqQefdgFD":
        assert type(np.dtype(code)) in allowed, code
    named = {name for entry in allowed if isinstance(entry, tuple) for name in entry[1:]}
    assert named == {"numpy.core.multiarray.scalar", "numpy.core.multiarray._reconstruct",
                     "numpy._core.multiarray.scalar", "numpy._core.multiarray._reconstruct"}


def test_a_round_file_is_read_into_exact_float64_numbers(tmp_path):
    path = tmp_path / "round.pth"
    weight, bias = torch.randn(4, 3), torch.randn(4)
    torch.save({"beta": 0.3, "model": {"module.fc.weight": weight, "fc.bias": bias},
                "distribution": [0.1, 0.2, 0.3, 0.4], "ap": [0.9, 0.5, 0.25, 0.7],
                "counts": np.arange(4, dtype=np.uint32), "half": np.float16(0.5), "pair": np.zeros(2, np.complex64)},
               path)
    record = cm.read_complementary_round(path)
    assert record["path"] == path and record["gamma"] == 0.3
    assert record["distribution"].dtype == torch.float64 and record["distribution"].tolist() == [0.1, 0.2, 0.3, 0.4]
    assert record["accuracy"].dtype == torch.float64 and record["accuracy"].tolist() == [0.9, 0.5, 0.25, 0.7]
    assert set(record["state_dict"]) == {"fc.weight", "fc.bias"}
    assert torch.equal(record["state_dict"]["fc.weight"], weight) and torch.equal(record["state_dict"]["fc.bias"], bias)
    torch.save({"beta": np.float32(0.25), "model": {}, "distribution": np.ones(3, np.float32)}, path)
    record = cm.read_complementary_round(path)
    assert record["gamma"] == 0.25 and record["accuracy"] is None and record["distribution"].tolist() == [1.0] * 3


def test_numbers_and_vectors_of_the_wrong_shape_or_kind_are_errors():
    where = Path("round.pth")
    assert cm._as_number(0.3, "beta", where) == 0.3
    assert cm._as_number(torch.tensor([[0.5]]), "beta", where) == 0.5
    assert cm._as_number(np.float32(0.25), "beta", where) == 0.25
    for bad in ("abc", None, [0.2, 0.3], [], float("nan"), float("inf")):
        with pytest.raises(IncompatibleConfigError, match=r": 'beta' should be one finite number, got "):
            cm._as_number(bad, "beta", where)
    vector = cm._as_vector([0.1, 0.2], "ap", where)
    assert vector.dtype == torch.float64 and vector.tolist() == [0.1, 0.2]
    assert cm._as_vector(np.array([[1, 2], [3, 4]]), "ap", where).tolist() == [1.0, 2.0, 3.0, 4.0]
    for bad in ("abc", [[1, 2], [3]], {"a": 1}):
        with pytest.raises(IncompatibleConfigError, match=r": 'ap' should be a vector of per-class numbers\.$"):
            cm._as_vector(bad, "ap", where)


def test_malformed_round_files_are_refused_with_what_is_wrong(tmp_path):
    path = tmp_path / "round.pth"
    good = {"beta": 0.3, "model": {"fc.bias": torch.zeros(4)}, "distribution": torch.ones(4), "ap": torch.ones(4)}
    cases = [
        ([3, 1], r"is not a complementary-networks round file: it needs \['beta', 'model', 'distribution'\], "
                 r"it has list\.$"),
        ({"zeta": 1, "model": {}}, r"is not a complementary-networks round file: it needs \['beta', 'model', "
                                   r"'distribution'\], it has \['model', 'zeta'\]\.$"),
        (dict(good, beta="abc"), r": 'beta' should be one finite number, got 'abc'\.$"),
        (dict(good, beta=[0.2, 0.3]), r": 'beta' should be one finite number, got \[0\.2, 0\.3\]\.$"),
        (dict(good, beta=float("nan")), r": 'beta' should be one finite number, got nan\.$"),
        (dict(good, beta=0.0), r": beta \(gamma_t\) = 0\.0 is outside \(0, 1\)"),
        (dict(good, beta=1.0), r": beta \(gamma_t\) = 1\.0 is outside \(0, 1\)"),
        (dict(good, distribution="abc"), r": 'distribution' should be a vector of per-class numbers\.$"),
        (dict(good, distribution=torch.tensor([1.0, 0.0, 1.0, 1.0])),
         r": 'distribution' must hold positive finite class weights\.$"),
        (dict(good, distribution=torch.tensor([1.0, -1.0, 1.0, 1.0])),
         r": 'distribution' must hold positive finite class weights\.$"),
        (dict(good, distribution=torch.tensor([1.0, math.inf, 1.0, 1.0])),
         r": 'distribution' must hold positive finite class weights\.$"),
        (dict(good, ap="abc"), r": 'ap' should be a vector of per-class numbers\.$"),
        (dict(good, ap=torch.ones(3)), r": 'ap' has 3 classes, 'distribution' 4\.$"),
    ]
    for obj, message in cases:
        torch.save(obj, path)
        with pytest.raises(IncompatibleConfigError, match=message):
            cm.read_complementary_round(path)


def _round(name, distribution, accuracy=None, gamma=0.3):
    return {"path": Path(name), "distribution": torch.tensor(distribution, dtype=torch.float64),
            "accuracy": None if accuracy is None else torch.tensor(accuracy, dtype=torch.float64), "gamma": gamma}


def _authors_update(distribution, accuracy, beta):
    """The released code's update by hand: w * beta ** ap (an unmeasured class counts as right), mean 1."""
    raw = [w * beta ** (1.0 if math.isnan(a) else a) for w, a in zip(distribution, accuracy)]
    return [r * len(raw) / sum(raw) for r in raw]


def test_round_order_checks_uniform_first_weights_and_each_update_by_hand():
    # Round 1's weights are uniform up to 1e-4 of their mean, whatever the mean.
    cm._check_round_order([_round("r1", [2.0, 2.0, 2.0001, 2.0])])
    cm._check_round_order([_round("r1", [0.01] * 4)])
    for spread in ([0.01, 0.01, 0.010002, 0.01], [1.0, 1.0, 1.001, 1.0]):
        with pytest.raises(IncompatibleConfigError, match=r"was trained with non-uniform class weights, so it is "
                           r"not round 1\. Give the round files in order: --src ROUND1 ROUND2 ROUND3 ROUND4\.$"):
            cm._check_round_order([_round("r1", spread)])

    # A chain by the update rule passes, an unmeasured (NaN) class counting as right.
    first_ap = [0.5, math.nan, 0.8, 0.9]
    second = _authors_update([1.0] * 4, first_ap, 0.3)
    second_ap = [0.6, 0.7, 0.2, 0.95]
    third = _authors_update(second, second_ap, 0.25)
    chain = [_round("r1", [1.0] * 4, first_ap, 0.3), _round("r2", second, second_ap, 0.25), _round("r3", third)]
    cm._check_round_order(chain)
    out_of_order = (r"'s class weights are not the update of .* by its beta and per-class accuracy: the files are "
                    r"out of order or from different runs\. Give them in round order\.$")
    # One class's weight off by 1 %: not this chain.
    off = list(third)
    off[2] *= 1.01
    with pytest.raises(IncompatibleConfigError, match=out_of_order):
        cm._check_round_order(chain[:2] + [_round("r3", off)])
    # A round without its accuracy cannot be checked against the next, but the rounds after it still are.
    unchecked = [_round("r1", [1.0] * 4), _round("r2", [3.0, 1.0, 1.0, 1.0], second_ap, 0.25), _round("r3", off)]
    with pytest.raises(IncompatibleConfigError, match=out_of_order):
        cm._check_round_order(unchecked)
    cm._check_round_order(unchecked[:2] + [_round("r3", _authors_update([3.0, 1.0, 1.0, 1.0], second_ap, 0.25))])


def test_rounds_with_different_class_counts_are_refused(tmp_path):
    paths = []
    for t, classes in enumerate((3, 4, 4, 4)):
        path = tmp_path / f"round{t + 1}.pth"
        torch.save({"beta": 0.3, "model": {"fc.bias": torch.zeros(classes)}, "distribution": torch.ones(classes)},
                   path)
        paths.append(path)
    with pytest.raises(IncompatibleConfigError, match=r" has 4 classes, round 1 3\.$"):
        cm.convert_complementary("resnet50", paths, tmp_path / "out")


def test_converter_records_every_rounds_weights_and_the_importance_after_the_last_by_hand(monkeypatch, tmp_path):
    """Four round files (a NaN accuracy for a class without held-out images, a round without 'ap'), converted with
    a small member standing in for resnet50 (the factory is spied on: same arguments, an MLP ensemble): the Hub
    file's round buffers are the files' numbers."""
    import collab_zoo.factory
    from safetensors.torch import load_file

    real_create = collab_zoo.factory.create_model
    asked = []

    def stand_in(name, **kwargs):
        asked.append((name, kwargs))
        return real_create("complementary_mlp_x4", **kwargs)

    monkeypatch.setattr(collab_zoo.factory, "create_model", stand_in)
    betas = [0.3, 0.25, 0.2, 0.35]
    aps = [[0.9, 0.5, math.nan, 0.7], None, [0.6, 0.8, 0.4, 0.9], [0.5, math.nan, 0.75, 1.0]]
    distributions = [[1.0] * 4, _authors_update([1.0] * 4, aps[0], betas[0]), [0.5, 1.5, 1.0, 1.0]]
    distributions.append(_authors_update(distributions[2], aps[2], betas[2]))
    torch.manual_seed(0)
    states, paths = [], []
    for t in range(4):
        state = timm.create_model("mlp_mnist", num_classes=4, hidden=300).state_dict()
        record = {"beta": np.float64(betas[t]), "model": {f"module.{k}": v for k, v in state.items()},
                  "distribution": torch.tensor(distributions[t], dtype=torch.float32)}
        if aps[t] is not None:
            record["ap"] = np.array(aps[t])
        path = tmp_path / f"round{t + 1}.pth"
        torch.save(record, path)
        states.append(state)
        paths.append(path)
    out = tmp_path / "out"
    cm.convert_complementary("resnet50", paths, out)
    assert asked == [("complementary_resnet50_x4.in1k",
                      dict(num_classes=4, error="hard", exponent="code", objective="weighted_ce"))]
    saved = load_file(str(out / "model.safetensors"))
    for t in range(4):
        for name, value in states[t].items():
            assert torch.equal(saved[f"members.{t}.{name}"], value), (t, name)
    assert saved["gammas"].tolist() == pytest.approx(betas)
    assert int(saved["rounds_completed"]) == 4 and int(saved["current_round"]) == 3
    importance = saved["importance"].double()
    for t in range(4):
        total = sum(distributions[t])
        assert importance[t].tolist() == pytest.approx([d / total for d in distributions[t]], rel=1e-6)
    # After the last round: its weights updated by its beta and accuracy (NaN = right), normalised.
    after = _authors_update(distributions[3], aps[3], betas[3])
    assert importance[4].tolist() == pytest.approx([a / 4 for a in after], rel=1e-6)
    # The per-class record: accuracy (0 where unmeasured), error 1 - accuracy (0 where unmeasured), measured.
    assert saved["class_accuracy"][0].tolist() == pytest.approx([0.9, 0.5, 0.0, 0.7])
    assert saved["class_error"][0].tolist() == pytest.approx([0.1, 0.5, 0.0, 0.3])
    assert saved["class_measured"][0].tolist() == [True, True, False, True]
    assert saved["class_accuracy"][1].tolist() == [0.0] * 4 and saved["class_measured"][1].tolist() == [False] * 4
    assert saved["class_accuracy"][3].tolist() == pytest.approx([0.5, 0.0, 0.75, 1.0])
    assert saved["class_error"][3].tolist() == pytest.approx([0.5, 0.0, 0.25, 0.0])
    assert saved["class_measured"][3].tolist() == [True, False, True, True]
    # Weighted error: the normalised weights times the measured classes' errors; without 'ap', from gamma = m/(1-m),
    # m = 0.7 eps.
    weighted = saved["weighted_errors"].double().tolist()
    assert weighted[0] == pytest.approx(0.25 * 0.1 + 0.25 * 0.5 + 0.25 * 0.3, rel=1e-6)
    assert weighted[1] == pytest.approx(0.25 / 1.25 / 0.7, rel=1e-6)
    d2 = distributions[2]
    assert weighted[2] == pytest.approx(sum(w / sum(d2) * (1 - a) for w, a in zip(d2, aps[2])), rel=1e-6)
    d3 = distributions[3]
    assert weighted[3] == pytest.approx((d3[0] * 0.5 + d3[2] * 0.25) / sum(d3), rel=1e-6)


def test_converter_without_the_last_rounds_accuracy_keeps_its_weights_as_the_final_importance(monkeypatch, tmp_path):
    import collab_zoo.factory
    from safetensors.torch import load_file

    real_create = collab_zoo.factory.create_model
    monkeypatch.setattr(collab_zoo.factory, "create_model",
                        lambda name, **kwargs: real_create("complementary_mlp_x4", **kwargs))
    torch.manual_seed(0)
    state = timm.create_model("mlp_mnist", num_classes=3).state_dict()
    last = [2.0, 0.5, 0.5]
    paths = []
    for t, distribution in enumerate(([1.0] * 3, [1.0, 1.0, 1.0], [0.5, 2.0, 0.5], last)):
        path = tmp_path / f"round{t + 1}.pth"
        torch.save({"beta": 0.4, "model": state, "distribution": torch.tensor(distribution)}, path)
        paths.append(path)
    cm.convert_complementary("resnet50", paths, tmp_path / "out")
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert saved["importance"][4].tolist() == pytest.approx([2 / 3, 1 / 6, 1 / 6])
    assert saved["importance"][3].tolist() == pytest.approx([2 / 3, 1 / 6, 1 / 6])
    assert saved["weighted_errors"].tolist() == pytest.approx([0.4 / 1.4 / 0.7] * 4)
    assert saved["class_measured"].tolist() == [[False] * 3] * 4


def test_the_converted_folder_carries_the_papers_numbers_and_is_pushed_and_pinned(monkeypatch, tmp_path, hub):
    """The Hub folder's card names the source round files and the paper's T=4 error rates; with a repo it is
    pushed, and the hub config given is pinned to the pushed commit and the weights' sha256 (the small member
    stands in for resnet50 as in the tests above)."""
    import uuid

    import collab_zoo.factory
    from huggingface_hub import HfApi

    real_create = collab_zoo.factory.create_model
    monkeypatch.setattr(collab_zoo.factory, "create_model",
                        lambda name, **kwargs: real_create("complementary_mlp_x4", **kwargs))
    torch.manual_seed(0)
    state = timm.create_model("mlp_mnist", num_classes=3).state_dict()
    paths = []
    for t in range(4):
        path = tmp_path / f"weak{t + 1}.pth"
        torch.save({"beta": 0.4, "model": state, "distribution": torch.ones(3)}, path)
        paths.append(path)
    pin = tmp_path / "complementary_resnet50_x4.in1k.json"
    pin.write_text(json.dumps({"architecture": "complementary_resnet50_x4", "status": "to convert"}))
    repo = f"test/complementary-{uuid.uuid4().hex[:8]}"
    result = cm.convert_complementary("resnet50", paths, tmp_path / "out", push=repo, hub_config=pin)
    card = (tmp_path / "out" / "README.md").read_text()
    assert ("4 complementary resnet50 networks trained by the paper's authors in class-level boosting rounds "
            "(converted from weak1.pth, weak2.pth, weak3.pth, weak4.pth)") in card
    assert "22.12" in card and "6.79" in card
    assert "Embedding Complementary Deep Networks for Image Classification" in card
    assert result["model"] == "complementary_resnet50_x4.in1k" and result["repo"] == repo
    pinned = json.loads(pin.read_text())
    assert (pinned["hf_hub_id"], pinned["revision"], pinned["sha256"]) == (repo, result["revision"], result["sha256"])
    assert "status" not in pinned
    files = HfApi().list_repo_files(repo, revision=result["revision"])
    assert {"model.safetensors", "config.json", "README.md"} <= set(files)
    with pytest.raises(IncompatibleConfigError, match="--write-hub-config needs --push-to-hub"):
        cm.convert_complementary("resnet50", paths, tmp_path / "again", hub_config=pin)


def test_the_converters_command_line_needs_the_arch_and_the_round_files(tmp_path, capsys):
    round_file = str(tmp_path / "round1.pth")
    for argv, missing in ((["complementary", "--src", round_file], "--arch"),
                          (["complementary", "--arch", "resnet50"], "--src"),
                          (["complementary", "--arch", "resnet18", "--src", round_file], "invalid choice: 'resnet18'")):
        with pytest.raises(SystemExit) as exit_info:
            convert.main(argv + ["--out", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        assert missing in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert.main(["complementary", "--help"])
    shown = capsys.readouterr().out
    assert "--src ROUND [ROUND ...]" in shown
    assert "one weak-learner file per round, in round order (ROUND1 ROUND2 ROUND3 ROUND4)" in " ".join(shown.split())


# --- the checks' boundaries (survivors of the mutation run's last pass) ----------------------------------------------

def test_boosting_gamma_at_the_edges_of_its_checks():
    for eps in (1.5, 2.0, -0.1, float("nan")):
        with pytest.raises(IncompatibleConfigError, match=r"eps_t must lie in \[0, 1\]"):
            cm.boosting_gamma(eps, mu=0.7)
    for min_error in (0.0, 0.8):                               # 1/(2 mu) = 0.714...
        with pytest.raises(IncompatibleConfigError, match=r"min_error must lie in \(0, 1/\(2 mu\)\)"):
            cm.boosting_gamma(0.3, mu=0.7, min_error=min_error)
    with pytest.raises(IncompatibleConfigError, match=r"min_error must lie in"):
        cm.boosting_gamma(0.3, mu=0.5, min_error=1.0)          # exactly 1/(2 mu)
    assert cm.boosting_gamma(0.3, mu=0.7, min_error=0.5).error == 0.5      # 0.5 < 1/(2 mu): a valid floor
    assert not cm.boosting_gamma(1e-6, mu=0.7).floored                     # at the floor, not below it
    exact = cm.boosting_gamma(1.0, mu=0.5)                                 # mu eps_t = 1/2 exactly: gamma_t = 1
    assert exact.clamped and exact.value == cm.WEAK_MEMBER_GAMMA
    plain = cm.boosting_gamma(0.4, mu=0.7)
    assert plain.error == 0.4 and plain.value == pytest.approx(0.28 / 0.72) and not plain.floored


def test_gammas_and_importance_at_the_edges_of_their_checks():
    phi = torch.tensor([0.5, 0.5], dtype=torch.float64)
    for gamma in (0.0, 1.0, 1.5):
        with pytest.raises(IncompatibleConfigError, match=r"gamma_t must lie in \(0, 1\)"):
            cm.update_importance(phi, torch.zeros(2), gamma)
    with pytest.raises(IncompatibleConfigError, match=r"every gamma_t must lie in \(0, 1\)"):
        cm.member_weights_from_gammas([0.0, 0.5])
    for bad in ([float("nan"), 1.0], [float("inf"), 1.0], [-1.0, 2.0]):
        with pytest.raises(IncompatibleConfigError, match="class importance must be finite and non-negative"):
            cm.normalise_importance(torch.tensor(bad))
    with pytest.raises(IncompatibleConfigError, match="class importance is zero for every class"):
        cm.normalise_importance(torch.zeros(3))
    assert cm.normalise_importance(torch.tensor([0.0, 1.0, 3.0])).tolist() == [0.0, 0.25, 0.75]
    with pytest.raises(IncompatibleConfigError, match=r"min_error must lie in"):
        _mlp_ensemble(min_error=0.0)


def test_class_counts_of_an_empty_loader_without_targets_is_an_error_in_words():
    class Empty(torch.utils.data.Dataset):
        def __len__(self):
            return 0

        def __getitem__(self, i):
            raise IndexError(i)

    with pytest.raises(IncompatibleConfigError, match="class indices"):
        cm.class_counts_of(torch.utils.data.DataLoader(Empty(), batch_size=2), 3)


def test_always_hard_counts_a_class_hard_in_every_round_even_when_another_class_was_not_measured():
    model = _four_class_ensemble(error="hard")
    targets = [0, 0, 1, 1, 2, 2, 3, 3]
    model.complete_round(0, (_scores_right_on(targets, {0, 1}),), torch.tensor(targets))
    # Round 2 has no image of class 3; class 0 is missed again.
    log = model.complete_round(1, (torch.zeros(6, 4), _scores_right_on(targets[:6], {0, 1}), torch.zeros(6, 4)),
                               torch.tensor(targets[:6]))
    assert log["unmeasured_classes"] == 1 and log["always_hard_classes"] == 1


def test_get_classifier_is_the_last_members_head():
    model = _mlp_ensemble()
    assert model.get_classifier() is model.members[3].fc
    assert model.get_classifier(name_only=True) == "members.3.fc"


# --- the members' eval forwards ------------------------------------------------------------------------------------

def _forward_calls(model):
    """How many times each member's own forward ran (a vmapped forward runs the first member's module once)."""
    calls = [0] * model.tau
    for i, member in enumerate(model.members):
        member.register_forward_hook(lambda module, args, out, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def test_scores_of_members_without_indices_gives_every_members_own_logits_in_order():
    model = _mlp_ensemble().eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        scores = model.scores_of_members(x)
        own = [m(x) for m in model.members]
        assert len(scores) == 4 and all(torch.equal(s, o) for s, o in zip(scores, own))
        assert [torch.equal(s, o) for s, o in zip(model.scores_of_members(x, [2, 0]), (own[2], own[0]))] == [True] * 2


def test_batched_runs_the_members_as_one_vmapped_forward_and_separate_one_by_one():
    x = torch.randn(3, 1, 28, 28)
    results = {}
    for mode in ("batched", "separate", "auto"):
        model = _mlp_ensemble(ensemble_forward=mode).eval()
        calls = _forward_calls(model)
        with torch.no_grad():
            results[mode] = model.scores_of_members(x)
        # vmap calls the first member's module once with the stacked parameters of all four; the CPU's "auto" is
        # the separate forwards (one member, or a batch of one member, is never batched).
        assert calls == ([1, 0, 0, 0] if mode == "batched" else [1, 1, 1, 1]), mode
        calls[:] = [0] * 4
        with torch.no_grad():
            model.scores_of_members(x, [1])
        assert calls == [0, 1, 0, 0], mode
    for mode in ("batched", "auto"):
        for a, b in zip(results[mode], results["separate"]):
            torch.testing.assert_close(a, b)


def test_batched_refuses_members_that_cannot_be_vmapped_in_words():
    torch.manual_seed(0)
    members = [timm.create_model("mlp_mnist", hidden=h) for h in (8, 16)]
    model = cm.ComplementaryEnsemble(members, ensemble_forward="batched").eval()
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(IncompatibleConfigError,
                       match=r"ensemble_forward='batched': these members cannot run as one vmapped forward "
                             r"\(stack expects each tensor to be equal size.*\)\. Use ensemble_forward='separate'"):
        model.scores_of_members(x)
    model.train()
    with pytest.raises(IncompatibleConfigError, match="members in training mode update their statistics"):
        model.scores_of_members(x)
    separate = cm.ComplementaryEnsemble(members, ensemble_forward="separate").eval()
    with torch.no_grad():
        assert [s.shape for s in separate.scores_of_members(x)] == [(2, 10), (2, 10)]


def test_the_cached_member_weights_follow_a_round_buffer_replaced_by_a_new_tensor():
    """The cache of F's members is keyed by the buffers' identity as well as their versions: a buffer assigned
    anew (version 0 again) is seen."""
    model = _mlp_ensemble().eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        first = model(x)                                                   # round 1 alone: member 1's scores
        assert torch.allclose(first, F.log_softmax(model.members[0](x), -1), atol=1e-6)
        model.gammas = torch.tensor([0.5, 0.2, 1.0, 1.0])
        model.rounds_completed = torch.tensor(2)
        mixed = model(x)
    alpha = [math.log(2.0), math.log(5.0)]
    probs = [F.softmax(model.members[t](x).double(), -1) for t in range(2)]
    expected = torch.log((alpha[0] * probs[0] + alpha[1] * probs[1]) / sum(alpha))
    assert torch.allclose(mixed.double(), expected, atol=1e-5)


def test_a_one_class_ensemble_scores_log_one_and_a_zero_class_one_gives_its_features():
    x = torch.randn(2, 1, 28, 28)
    one = _mlp_ensemble(num_classes=1).eval()
    with torch.no_grad():
        out = one(x)
    assert out.shape == (2, 1) and out.abs().max().item() < 1e-6
    none = _mlp_ensemble(num_classes=0).eval()
    with torch.no_grad():
        features = none(x)
        hidden = torch.cat([m.forward_features(x) for m in none.members], dim=1)
    assert features.shape == (2, 1200) and torch.allclose(features, hidden)


def test_round_counters_and_class_counts_are_integers_that_half_precision_cannot_round():
    model = _mlp_ensemble()
    for name in ("rounds_completed", "current_round", "class_counts"):
        assert getattr(model, name).dtype == torch.long, name
    model.class_counts.copy_(torch.tensor([2049] * 5 + [1] * 5))
    model.half()
    assert model.class_counts.dtype == torch.long and model.class_counts.tolist() == [2049] * 5 + [1] * 5
    assert model.rounds_completed.dtype == torch.long and model.current_round.dtype == torch.long
    assert model.gammas.dtype == torch.float16


# --- timm's feature interfaces with image members --------------------------------------------------------------------

def _vit_ensemble(**kwargs):
    """Two 3-block ViTs on 32x32 images (16 patch tokens and a class token; 16 channels each)."""
    torch.manual_seed(0)
    return collab_zoo.create_model("complementary", member="vit_tiny_patch16_224", tau=2, num_classes=3, img_size=32,
                                   patch_size=8, embed_dim=16, depth=3, num_heads=2, **kwargs).eval()


def test_forward_intermediates_passes_every_argument_on_and_joins_channels():
    model = _vit_ensemble()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for kwargs in (dict(), dict(indices=[0]), dict(indices=[0, 2], norm=True),
                       dict(indices=1, stop_early=True, norm=True), dict(indices=[1], output_fmt="NLC")):
            final, levels = model.forward_intermediates(x, **kwargs)
            own = [m.forward_intermediates(x, **kwargs) for m in model.members]
            tokens = kwargs.get("output_fmt") == "NLC"
            # The final features are tokens [B, 17, C] whatever the levels' format: channels last.
            assert torch.equal(final, torch.cat([o[0] for o in own], dim=-1)), kwargs
            assert len(levels) == len(own[0][1]), kwargs
            for level, (a, b) in zip(levels, zip(own[0][1], own[1][1])):
                assert torch.equal(level, torch.cat([a, b], dim=-1 if tokens else 1)), kwargs
                assert level.shape == ((2, 16, 32) if tokens else (2, 32, 4, 4)), kwargs
            only = model.forward_intermediates(x, intermediates_only=True, **kwargs)
            assert len(only) == len(levels) and all(torch.equal(a, b) for a, b in zip(only, levels)), kwargs
        # The arguments matter for these members, so each comparison above checks that it was passed on.
        plain = model.forward_intermediates(x, indices=[0])
        assert not torch.equal(plain[1][0], model.forward_intermediates(x, indices=[0], norm=True)[1][0])
        assert not torch.equal(plain[0], model.forward_intermediates(x, indices=[0], stop_early=True)[0])
        assert torch.equal(plain[0], model.forward_intermediates(x)[0])
        assert len(model.forward_intermediates(x)[1]) == 3 and len(model.forward_intermediates(x, indices=2)[1]) == 2


def _mambaout_ensemble(**kwargs):
    """Two one-block-per-stage MambaOuts (8 channels each): NHWC maps."""
    torch.manual_seed(0)
    return collab_zoo.create_model("complementary", member="mambaout_femto", tau=2, num_classes=3,
                                   depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), **kwargs).eval()


def test_forward_intermediates_of_nhwc_members_joins_their_maps_on_the_last_dim():
    model = _mambaout_ensemble()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for fmt, dim in (("NHWC", -1), ("NCHW", 1)):
            final, levels = model.forward_intermediates(x, output_fmt=fmt)
            own = [m.forward_intermediates(x, output_fmt=fmt) for m in model.members]
            assert torch.equal(final, torch.cat([o[0] for o in own], dim=-1)) and final.shape == (2, 1, 1, 16)
            for level, a, b in zip(levels, own[0][1], own[1][1]):
                assert torch.equal(level, torch.cat([a, b], dim=dim)), fmt
            assert levels[1].shape == ((2, 4, 4, 16) if fmt == "NHWC" else (2, 16, 4, 4))
        # features_only with timm's FX extractor: the members' NHWC maps side by side on the last dim too.
        fx = _mambaout_ensemble(features_only=True, feature_cls="fx")
        maps = fx(x)
        assert [m.shape for m in maps] == [(2, 8, 8, 16), (2, 4, 4, 16), (2, 2, 2, 16), (2, 1, 1, 16)]
        for level, a, b in zip(maps, own[0][1], own[1][1]):     # own: the NCHW levels of the same weights
            assert torch.allclose(level, torch.cat([a, b], dim=1).permute(0, 2, 3, 1), atol=1e-6)


def test_fx_features_of_vit_members_join_their_tokens_on_channels():
    """timm's FX extractor gives a ViT's blocks as tokens [B, 17, 16]: the ensemble's levels are [B, 17, 32]."""
    x = torch.randn(2, 3, 32, 32)
    plain = _vit_ensemble()
    fx = _vit_ensemble(features_only=True, feature_cls="fx")
    with torch.no_grad():
        maps = fx(x)
        # The same weights' blocks, as forward_intermediates gives them in tokens (with the class token).
        own = [m.forward_intermediates(x, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True)
               for m in plain.members]
    assert [m.shape for m in maps] == [(2, 17, 32)] * 3 and fx.feature_info.channels() == [32, 32, 32]
    for level, a, b in zip(maps, own[0], own[1]):
        expected = torch.cat([torch.cat([a[1], a[0]], dim=1), torch.cat([b[1], b[0]], dim=1)], dim=-1)
        assert torch.allclose(level, expected, atol=1e-6)


def test_prune_intermediate_layers_passes_its_arguments_to_every_member():
    model = _vit_ensemble()
    assert model.prune_intermediate_layers() == [2]
    for member in model.members:
        assert len(member.blocks) == 3 and member.num_classes == 0
        assert isinstance(member.norm, torch.nn.LayerNorm)
    model = _vit_ensemble()
    assert model.prune_intermediate_layers([0], prune_norm=True, prune_head=False) == [0]
    for member in model.members:
        assert len(member.blocks) == 1 and member.num_classes == 3
        assert isinstance(member.norm, torch.nn.Identity)
    model = _vit_ensemble()
    assert model.prune_intermediate_layers(2, prune_head=False) == [1, 2]
    assert all(m.num_classes == 3 and isinstance(m.norm, torch.nn.LayerNorm) for m in model.members)


def test_fx_features_are_the_members_levels_side_by_side_whichever_way_fx_is_asked_for():
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    plain = collab_zoo.create_model("complementary", member="resnet18", tau=2, num_classes=5).eval()
    with torch.no_grad():
        expected = [torch.cat(level, dim=1) for level in zip(
            *[m.forward_intermediates(x, indices=[1, 3], intermediates_only=True) for m in plain.members])]
    # The levels asked for as out_indices, or inside feature_cfg beside feature_cls (the rest of it is kept).
    for asked in (dict(feature_cls="fx", out_indices=(1, 3)), dict(feature_cls="FX", out_indices=(1, 3)),
                  dict(feature_cfg=dict(feature_cls="fx", out_indices=(1, 3)))):
        torch.manual_seed(0)
        model = collab_zoo.create_model("complementary", member="resnet18", tau=2, num_classes=5, features_only=True,
                                        **asked).eval()
        assert isinstance(model, cm.EnsembleFeatureGraph), asked
        assert len(model.members) == 2 and all(type(m).__name__ == "FeatureGraphNet" for m in model.members)
        assert model.feature_info.channels() == [128, 512] and model.feature_info.reduction() == [4, 16]
        assert model.feature_info.out_indices == (1, 3)
        with torch.no_grad():
            maps = model(x)
        assert len(maps) == 2 and all(torch.equal(a, b) for a, b in zip(maps, expected)), asked
    # The registered variants too; without 'fx', timm's own feature wrapper.
    fx = collab_zoo.create_model("complementary_resnet56_x4", features_only=True, feature_cls="fx")
    assert isinstance(fx, cm.EnsembleFeatureGraph) and fx.feature_info.channels()[-1] == 4 * 64
    default = collab_zoo.create_model("complementary", member="resnet18", tau=2, features_only=True)
    assert not isinstance(default, cm.EnsembleFeatureGraph)


# --- the builder: what config.json records, and the members' arguments ---------------------------------------------

def test_config_json_records_the_generic_ensembles_defaults_and_every_argument_given(tmp_path):
    """What config.json's model_args must hold to build the same ensemble again: every argument the caller gave
    (timm's create_model records those) and the defaults the builder filled in (member, tau, in_chans)."""
    torch.manual_seed(0)
    model = collab_zoo.create_model("complementary", member="resnet18", num_classes=5)
    assert hub_config_json(model)["model_args"] == dict(member="resnet18", tau=4, in_chans=3, num_classes=5)
    model = collab_zoo.create_model("complementary", tau=1, num_classes=5)         # the default member, ResNet-50
    assert hub_config_json(model)["model_args"] == dict(member="resnet50", tau=1, in_chans=3, num_classes=5)
    torch.manual_seed(0)
    model = collab_zoo.create_model("complementary", member="resnet18", tau=3, num_classes=5, in_chans=1, mu=0.6,
                                    error="hard", member_kwargs=dict(drop_rate=0.25), global_pool="max")
    assert hub_config_json(model)["model_args"] == dict(
        member="resnet18", tau=3, in_chans=1, num_classes=5, mu=0.6, error="hard",
        member_kwargs=dict(drop_rate=0.25), global_pool="max")
    for member in model.members:
        assert member.conv1.weight.shape[1] == 1 and member.drop_rate == 0.25 and member.num_classes == 5
        assert member.global_pool.pool_type == "max"
    save_for_hub(model, tmp_path / "hub")
    again = collab_zoo.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True)
    assert again.tau == 3 and again.mu == 0.6 and again.error == "hard"
    assert again.members[2].conv1.weight.shape[1] == 1 and again.members[0].drop_rate == 0.25
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), again.eval()(x))


def test_a_variant_builds_its_own_member_with_the_arguments_given_and_records_its_channels():
    variant = collab_zoo.create_model("complementary_resnet56_x4", num_classes=7)
    assert hub_config_json(variant)["model_args"] == dict(in_chans=3, num_classes=7)
    assert all(m.num_classes == 7 and m.stem[0].weight.shape[1] == 3 for m in variant.members)
    changed = collab_zoo.create_model("complementary_resnet56_x4", num_classes=7, shortcut="pad", in_chans=1,
                                      objective="margin")
    assert hub_config_json(changed)["model_args"] == dict(in_chans=1, num_classes=7, shortcut="pad",
                                                          objective="margin")
    assert changed.objective == "margin"
    assert all(m.stem[0].weight.shape[1] == 1 for m in changed.members)
    # The variant's own shortcut (1x1 projections at the two downsampling stages, 'conv') unless told otherwise.
    def projections(member):
        return sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for m in member.modules())
    assert projections(variant.members[0]) == 2 and projections(changed.members[0]) == 0
    # A variant's member may be named as long as it is its own.
    assert collab_zoo.create_model("complementary_mlp_x4", member="mlp_mnist").tau == 4
    with pytest.raises(IncompatibleConfigError, match="complementary_mlp_x4's members are 'mlp_mnist'"):
        collab_zoo.create_model("complementary_mlp_x4", member="resnet18")


def test_a_pretrained_ensemble_takes_its_own_weights_and_ignores_first_member_weights(tmp_path):
    """pretrained=True loads the whole ensemble's weights, so first_member_weights (a training start) has nothing
    to do: not even a missing file is looked at."""
    for name, kwargs in (("complementary_mlp_x4", {}), ("complementary", dict(member="mlp_mnist", tau=2))):
        torch.manual_seed(1)
        source = collab_zoo.create_model(name, **kwargs)
        save_for_hub(source, tmp_path / name)
        torch.manual_seed(2)
        loaded = collab_zoo.create_model(name, pretrained=True, first_member_weights="nowhere/missing.safetensors",
                                         pretrained_cfg_overlay=dict(file=str(tmp_path / name / "model.safetensors")),
                                         **kwargs)
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), (name, key)
    with pytest.raises(IncompatibleConfigError, match="is neither a file nor a timm tag of 'mlp_mnist'"):
        collab_zoo.create_model("complementary_mlp_x4", first_member_weights="nowhere/missing.safetensors")


def test_first_member_weights_reach_the_builders_first_member_only(monkeypatch, tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("resnet18", num_classes=5, in_chans=1)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    model = collab_zoo.create_model("complementary", member="resnet18", tau=2, num_classes=5, in_chans=1,
                                    first_member_weights=state)
    for name, value in state.items():
        assert torch.equal(model.members[0].state_dict()[name], value), name
    assert not torch.equal(model.members[1].conv1.weight, state["conv1.weight"])
    assert "first_member_weights" not in hub_config_json(model)["model_args"]
    # True asks timm for the member's own pretrained weights with the builder's class count, channels and
    # member arguments (timm.create_model is spied on here: no download).
    real = timm.create_model
    asked = []

    def spy(name, **kwargs):
        if kwargs.get("pretrained"):
            asked.append((name, kwargs))
            kwargs = dict(kwargs, pretrained=False)
        return real(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    collab_zoo.create_model("complementary", member="resnet18", tau=2, num_classes=5, in_chans=1,
                            first_member_weights=True, drop_rate=0.1)
    assert asked == [("resnet18", dict(pretrained=True, num_classes=5, in_chans=1, drop_rate=0.1))]
