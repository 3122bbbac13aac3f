"""Methods compose: complementary ensembles whose members are DKS, CLDL or DCL models, trained with their own loss
weighted by class importance and combined by their own inference rules; every method x member pair the registry
can express either trains or refuses at construction with a message. Known answers come from hand arithmetic and
from the members themselves, run on their own."""
import math

import pytest
import torch
import torch.nn.functional as F

import collab_zoo
from collab_zoo.errors import CollabZooError, IncompatibleConfigError
from collab_zoo.hub import save_for_hub
from collab_zoo.methods import complementary as cm

# Small members of each method, their input and the kwargs that keep them tiny.
MEMBERS = {
    "dks_resnet20": ((3, 32, 32), {}),
    "cldl_nin_mnist": ((1, 28, 28), {}),
    "dcl_lenet_cifar": ((3, 32, 32), {}),
}
NUM_CLASSES = 5
TARGETS = [0, 3, 3, 1, 4, 0]
IMPORTANCE = [0.1, 0.3, 0.15, 0.25, 0.2]


def _ensemble(member, tau=2, **kwargs):
    torch.manual_seed(0)
    return collab_zoo.create_model("complementary", member=member, tau=tau, num_classes=NUM_CLASSES, **kwargs)


def _batch(member, n=len(TARGETS)):
    shape, _ = MEMBERS[member]
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1)), torch.tensor(TARGETS[:n])


@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_the_members_own_loss_terms_are_the_composed_parts_weighted_by_class_importance(member):
    model = _ensemble(member)
    with torch.no_grad():
        model.importance[0] = torch.tensor(IMPORTANCE)
    x, y = _batch(member)
    model.train()
    outputs = model(x)
    total, parts = model.collab_loss(outputs, y)

    # The weights by hand: each image's class importance over the batch's mean class importance.
    raw = [IMPORTANCE[t] for t in TARGETS]
    weights = torch.tensor([r / (sum(raw) / len(raw)) for r in raw])
    own_heads = outputs[:model.heads_per_member[0]]
    own_total, own_parts = model.members[0].collab_loss(own_heads, y, sample_weight=weights)
    assert set(parts) == {f"member1_{k}" for k in own_parts if k != "total"} | {"total"}
    assert total.item() == pytest.approx(own_total.item(), rel=1e-6)
    for name, value in own_parts.items():
        if name != "total":
            assert parts[f"member1_{name}"].item() == pytest.approx(value.item(), rel=1e-6), name
    # The weighting is there: without it the member's loss is another number.
    assert abs(model.members[0].collab_loss(own_heads, y)[0].item() - total.item()) > 1e-4
    total.backward()
    assert all(p.grad is None for p in model.members[1].parameters())
    assert any(p.grad is not None for p in model.members[0].parameters())
    # The round's loss (what CollabTask trains with) is the same objective on the member's own output.
    step = model.training_round(0)
    assert step.module is model.members[0] and step.head_names == model.head_names[:model.heads_per_member[0]]
    assert step.loss(own_heads, y)[0].item() == pytest.approx(total.item(), rel=1e-6)


def test_a_dcl_members_weighted_cross_entropy_is_the_released_codes_class_weighted_loss():
    """DCL's loss is one cross-entropy: importance-weighted per image it must be torch's class-weighted CE."""
    model = _ensemble("dcl_lenet_cifar")
    with torch.no_grad():
        model.importance[0] = torch.tensor(IMPORTANCE)
    x, y = _batch("dcl_lenet_cifar")
    model.train()
    outputs = model(x)
    total, parts = model.collab_loss(outputs, y)
    expected = F.cross_entropy(outputs[0].detach(), y, weight=torch.tensor(IMPORTANCE))
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert "member1_ce" in parts


@pytest.mark.parametrize("member", ["cldl_nin_mnist", "dks_resnet20"])
def test_composed_eval_is_the_weighted_ensemble_of_the_members_own_inference(member):
    model = _ensemble(member, tau=3)
    gammas = [0.2, 0.45, 0.3]
    with torch.no_grad():
        model.gammas.copy_(torch.tensor(gammas))
        model.rounds_completed.fill_(3)
    model.eval()
    x, _ = _batch(member, 4)
    with torch.no_grad():
        out = model(x)
        # Each member on its own, by its own rule (CLDL: Eq. 9's -S(y); DKS: the main head), then Eq. 9 by hand.
        probs = [F.softmax(m.eval()(x).double(), dim=-1) for m in model.members]
        alphas = [math.log(1 / g) for g in gammas]
        direct = sum(a * p for a, p in zip(alphas, probs)) / sum(alphas)
        assert torch.allclose(out.double().exp(), direct, atol=1e-6)
        assert torch.allclose(model.predict(model.forward_heads(x)), out, atol=1e-6)
        if member.startswith("cldl"):
            # Not the main heads: mixing those gives another answer, so the check above has teeth.
            mains = [F.softmax(m.forward_heads(x)[-1].double(), -1) for m in model.members]
            by_main = sum(a * p for a, p in zip(alphas, mains)) / sum(alphas)
            assert (by_main - direct).abs().max() > 1e-4


def test_a_round_is_measured_by_its_members_own_inference_rule():
    """complete_round takes the member's heads (CollabTask's held-out pass), the member's scores, or the
    whole ensemble's heads, and measures Eq. 4 on the member's own scores in each case."""
    model = _ensemble("cldl_nin_mnist")
    model.eval()
    x = torch.randn(20, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    y = torch.arange(20) % NUM_CLASSES
    with torch.no_grad():
        heads = model.members[0].forward_heads(x)
        scores = model.members[0](x)
        everything = model.forward_heads(x)
    expected = cm.heldout_class_stats(scores, y).error
    for given in (heads, (scores,), everything):
        copy = _ensemble("cldl_nin_mnist")
        copy.complete_round(0, given, y)
        assert torch.allclose(copy.class_error[0].double(), expected, atol=1e-6)
    with pytest.raises(IncompatibleConfigError, match="heads"):
        model.complete_round(0, heads[:2], y)


def test_the_batched_forward_gives_the_separate_forwards_scores():
    for member, in_chans in (("cifar_resnet20", 3), ("dks_resnet20", 3)):
        separate = _ensemble(member, tau=3, ensemble_forward="separate")
        batched = _ensemble(member, tau=3, ensemble_forward="batched")
        batched.load_state_dict(separate.state_dict())
        for model in (separate, batched):
            with torch.no_grad():
                model.gammas.copy_(torch.tensor([0.3, 0.2, 0.4]))
                model.rounds_completed.fill_(3)
            model.eval()
        x = torch.randn(3, in_chans, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(batched(x), separate(x), rtol=1e-5, atol=1e-5)
        # The batched path keeps the graph: gradients reach every member's own parameters.
        batched(x).sum().backward()
        assert all(m.fc.weight.grad is not None if hasattr(m, "fc") else True for m in batched.members)
        assert all(any(p.grad is not None for p in m.parameters()) for m in batched.members)
    # "auto" picks separate forwards on the CPU.
    auto = _ensemble("cifar_resnet20", tau=2)
    assert auto.ensemble_forward == "auto" and not auto._batched(torch.zeros(1, device="cpu"), 2)


def test_a_sample_weight_multiplies_the_class_importance_weight_of_a_members_own_loss():
    """collab_loss(outputs, target, sample_weight): each image's weight is its class importance over the batch
    mean, times its sample weight; a DCL member's loss is one cross-entropy, so the total is by hand."""
    model = _ensemble("dcl_lenet_cifar")
    with torch.no_grad():
        model.importance[0] = torch.tensor(IMPORTANCE)
    x, y = _batch("dcl_lenet_cifar")
    sample_weight = torch.tensor([0.5, 2.0, 1.0, 0.0, 3.0, 1.5])
    model.train()
    outputs = model(x)
    total, parts = model.collab_loss(outputs, y, sample_weight=sample_weight)
    raw = [IMPORTANCE[t] for t in TARGETS]
    ce = F.cross_entropy(outputs[0].detach(), y, reduction="none").tolist()
    expected = sum(r / (sum(raw) / len(raw)) * s * c for r, s, c in zip(raw, sample_weight.tolist(), ce)) / len(ce)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert parts["total"].item() == pytest.approx(expected, rel=1e-5)
    # The round's loss takes the same weights (what CollabTask trains with).
    step = model.training_round(0)
    assert step.loss(outputs[:1], y, sample_weight)[0].item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(IncompatibleConfigError, match="sample_weight"):
        model.collab_loss(outputs, y, sample_weight=torch.ones(4))


class _OwnLossNet(torch.nn.Module):
    """A member network of some method with its own loss and no classifier_names (only get_classifier)."""

    num_classes = NUM_CLASSES

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(4, NUM_CLASSES)

    def forward(self, x):
        return self.head(x.flatten(1)[:, :4])

    def get_classifier(self, name_only=False):
        return "head" if name_only else self.head

    def collab_loss(self, outputs, target, sample_weight=None):
        return F.cross_entropy(outputs[-1], target), {}


def test_classifier_names_are_each_members_own_heads():
    model = _ensemble("dks_resnet20")
    assert model.classifier_names() == tuple(
        f"members.{i}.{name}" for i in range(2) for name in ("aux_heads.0.fc", "aux_heads.1.fc", "backbone.fc"))
    plain = _ensemble("cifar_resnet20")
    assert plain.classifier_names() == ("members.0.fc", "members.1.fc")
    custom = cm.ComplementaryEnsemble([_OwnLossNet(), _OwnLossNet()])
    assert custom.member_has_own_loss == (True, True)
    assert custom.classifier_names() == ("members.0.head", "members.1.head")


def test_the_training_members_deterministic_mode_and_unused_branches_are_the_ensembles():
    """A stochastic 3-branch DCL member draws 2 branches per step: the third is unused in that step, and the
    ensemble's deterministic mode is the training member's (all branches fused)."""
    model = _ensemble("dcl_lenet_cifar", branches=3, mode="stochastic")
    x, _ = _batch("dcl_lenet_cifar")
    for active in (0, 1):
        with torch.no_grad():
            model.current_round.fill_(active)
        member = model.members[active]
        dcl = [m for m in member.modules() if hasattr(m, "branches") and hasattr(m, "last_active")]
        assert len(dcl) == 1 and dcl[0].mode == "stochastic"
        model.train()
        torch.manual_seed(active)
        model(x)
        idle = [i for i in range(3) if i not in dcl[0].last_active]
        assert len(idle) == 1
        unused = model.parameters_left_unused()
        other = {f"members.{1 - active}.{n}" for n, _ in model.members[1 - active].named_parameters()}
        own_idle = {n for n in unused if n.startswith(f"members.{active}.")}
        assert other <= unused and own_idle and all(f".branches.{idle[0]}." in n for n in own_idle)
        with model.deterministic_mode():
            assert dcl[0].mode == "deterministic"
            assert all(m.mode == "stochastic" for m in model.members[1 - active].modules() if hasattr(m, "last_active"))
            model(x)
            assert sorted(dcl[0].last_active) == [0, 1, 2]
        assert dcl[0].mode == "stochastic"


def test_combinations_boosting_cannot_honour_fail_at_construction():
    with pytest.raises(IncompatibleConfigError, match="margin"):
        _ensemble("dcl_lenet_cifar", objective="margin")
    with pytest.raises(IncompatibleConfigError, match="rounds of its own"):
        _ensemble("complementary_mlp_x4")

    class OldLoss(torch.nn.Module):  # a method whose collab_loss predates per-sample weights
        num_classes = NUM_CLASSES

        def collab_loss(self, outputs, target):
            return outputs[-1].sum(), {}

    with pytest.raises(IncompatibleConfigError, match="sample_weight"):
        cm.ComplementaryEnsemble([OldLoss(), OldLoss()])


# --- every method x member pair the registry can express --------------------------------------------------------

# One small member of each registered family (the plain networks are a family too), and the generic entrypoint of
# every method that takes a network as an argument.
FAMILY_MEMBERS = {
    "plain": "cifar_resnet20",
    "dks_": "dks_resnet20",
    "cldl_": "cldl_nin_mnist",
    "dcl_": "dcl_lenet_cifar",
    "complementary_": "complementary_mlp_x4",
}
METHODS = {"dks": "backbone", "cldl": "backbone", "complementary": "member"}
# Boosting composes every single-round method; the rest of the table is each method's own to settle.
MUST_BUILD = {("complementary", m) for f, m in FAMILY_MEMBERS.items() if f != "complementary_"}


def _family(name):
    return next((prefix for prefix in FAMILY_MEMBERS if prefix != "plain" and name.startswith(prefix)), "plain")


def test_the_walk_covers_every_registered_family():
    families = {_family(name) for name in collab_zoo.list_models()}
    assert families == set(FAMILY_MEMBERS)
    assert {_family(m) for m in FAMILY_MEMBERS.values()} == set(FAMILY_MEMBERS)
    for method in METHODS:
        assert method in collab_zoo.list_models()


@pytest.mark.parametrize("member", sorted(FAMILY_MEMBERS.values()))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_member_pair_trains_or_refuses_at_construction(method, member):
    kwargs = {METHODS[method]: member}
    if method == "complementary":
        kwargs["tau"] = 2
    torch.manual_seed(0)
    try:
        model = collab_zoo.create_model(method, num_classes=NUM_CLASSES, **kwargs)
    except CollabZooError as error:
        assert (method, member) not in MUST_BUILD, f"{method} of {member} must compose: {error}"
        message = str(error)
        assert len(message) > 40 and any(word in message for word in (member, "member", "backbone")), message
        return
    shape = tuple(model.pretrained_cfg["input_size"])
    x, y = torch.randn(2, *shape), torch.tensor([1, 3])
    model.train()
    loss, parts = model.collab_loss(model(x), y)
    assert bool(torch.isfinite(loss)) and parts
    loss.backward()
    assert any(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        scores = model(x)
    assert scores.shape == (2, NUM_CLASSES) and bool(torch.isfinite(scores).all())


def test_a_composed_round_runs_through_collab_task_and_the_hub_folder_keeps_inference_only(tmp_path):
    """CollabTask (what train.py runs) trains the DKS member with its own loss and measures the round on the
    member's own inference; the Hub folder drops the members' DKS heads and loads back to the same answers."""
    from collab_zoo.training.task import CollabTask

    model = _ensemble("dks_resnet20")
    x, y = torch.randn(10, 3, 32, 32), torch.arange(10) % NUM_CLASSES
    task = CollabTask(model, round_index=0, verbose=False)
    assert task.head_names == ("member1_aux_stage1", "member1_aux_stage2", "member1_main")
    result = task(x, y)
    assert {"member1_ce_main", "member1_synergy"} <= set(result) and result["loss"].requires_grad
    result["loss"].backward()
    loader = [(x[:5], y[:5]), (x[5:], y[5:])]
    task.complete_round(loader)
    with torch.no_grad():
        expected = cm.heldout_class_stats(model.members[0].eval()(x), y).error
    assert torch.allclose(model.class_error[0].double(), expected, atol=1e-6)

    from safetensors.torch import load_file

    save_for_hub(model, tmp_path)
    keys = load_file(str(tmp_path / "model.safetensors")).keys()
    assert not any(".aux_heads." in k for k in keys) and any(k.startswith("members.1.backbone.") for k in keys)
    loaded = collab_zoo.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
