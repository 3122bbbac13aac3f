"""The plain networks of collab_zoo/backbones: what timm's interface means on each of them, beyond the
registry-wide families of tests/test_conformance.py (feature levels, pooling switched off, gradient
checkpointing over several training steps, layer decay by depth, weight decay, the MLP's input check)."""
import copy

import pytest
import timm
import timm.optim
import torch
from torch import nn

import collab_zoo
from collab_zoo.backbones.googlenet import GoogLeNet
from collab_zoo.contract import conformance_exemptions
from collab_zoo.errors import IncompatibleConfigError

PLAIN = [name for name in collab_zoo.list_models()
         if timm.models.model_entrypoint(name).__module__.startswith("collab_zoo.backbones.")]


def small_input(model, batch: int = 2, side: int = 64) -> torch.Tensor:
    """The model's default input, each side capped at ``side`` unless its size is fixed."""
    cfg = model.pretrained_cfg
    size = tuple(cfg["input_size"])
    if not cfg.get("fixed_input_size") and max(size[1:]) > side:
        size = (size[0], side, side)
    return torch.randn(batch, *size)


def test_the_plain_networks_are_the_backbone_modules_registrations():
    assert {"cifar_resnet20", "wrn28_10", "densenet_bc100_k12", "mobilenet_cifar", "nin", "googlenet", "lenet",
            "bignet", "alexnet", "alexnet_caffe", "mlp_mnist"} <= set(PLAIN)
    assert not any(name.startswith(("dks", "cldl", "dcl", "complementary")) for name in PLAIN)


@pytest.mark.parametrize("name, params", [
    ("cifar_resnet20", 275_572), ("wrn16_4", 2_772_020), ("densenet40_k12", 1_060_132),
    ("mobilenet_cifar", 3_309_476), ("nin", 984_356), ("nin_mnist", 349_674), ("googlenet", 6_624_904),
    ("lenet", 476_170), ("lenet_cifar", 1_359_012), ("bignet", 5_745_738), ("alexnet", 61_100_840),
    ("alexnet_caffe", 62_378_344), ("mlp_mnist", 238_510),
])
def test_parameter_counts_and_first_and_last_keys_stay_as_released(name, params):
    """Weights and converters depend on the layouts: timm's interface added no parameter and renamed no key."""
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    keys = list(model.state_dict())
    cfg = model.pretrained_cfg
    assert keys[0] == f"{cfg['first_conv']}.weight" and keys[-1] == f"{cfg['classifier']}.bias"


def test_lenet_has_three_feature_levels_and_the_three_pooling_nets_keep_theirs():
    """The MNIST LeNet passes three resolutions (24, 12, 4 pixels) and gives all three; nets with three
    poolings keep their levels, so their out_indices mean what they meant."""
    expected = {
        "lenet": [(20, 24, 24), (20, 12, 12), (50, 4, 4)],
        "lenet_cifar": [(32, 16, 16), (64, 8, 8), (128, 4, 4)],
        "bignet": [(64, 12, 12), (128, 6, 6), (256, 3, 3)],
        "nin_mnist": [(48, 14, 14), (48, 7, 7), (96, 7, 7)],
    }
    for name, shapes in expected.items():
        model = timm.create_model(name, features_only=True).eval()
        with torch.no_grad():
            maps = model(small_input(model, 1))
        assert [tuple(m.shape[1:]) for m in maps] == shapes, name
    assert [i["module"] for i in timm.create_model("lenet").feature_info] == [
        "features.conv1", "features.pool1", "features.pool2"]


def test_mlp_levels_are_one_by_one_maps_one_per_hidden_layer():
    """No spatial stages: each hidden layer sees the whole image, so its level is a 1 x 1 map."""
    model = timm.create_model("mlp_mnist", hidden=(30, 20)).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        final, levels = model.forward_intermediates(x)
        assert [tuple(level.shape) for level in levels] == [(2, 30, 1, 1), (2, 20, 1, 1)]
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        torch.testing.assert_close(levels[-1].flatten(1), final, rtol=0, atol=0)
        features = timm.create_model("mlp_mnist", hidden=(30, 20), features_only=True, out_indices=(0,))
        assert [tuple(m.shape) for m in features(x)] == [(2, 30, 1, 1)]
    with pytest.raises(IncompatibleConfigError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NLC")
    # What timm's families cannot ask of a net without feature maps is written next to its registration.
    assert set(conformance_exemptions("mlp_mnist")) == {"default_cfg:spatial", "features_fx"}


@pytest.mark.parametrize("name", ["cifar_resnet20", "nin_mnist", "lenet", "bignet", "mlp_mnist", "googlenet",
                                  "alexnet"])
def test_intermediates_by_index_stop_early_and_prune_agree_with_the_full_pass(name):
    torch.manual_seed(0)
    model = timm.create_model(name, **({"hidden": (30, 20, 10)} if name == "mlp_mnist" else {})).eval()
    x = small_input(model, 1)
    with torch.no_grad():
        final, every = model.forward_intermediates(x)
        for index in range(len(every)):
            alone = model.forward_intermediates(x, indices=[index], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(alone[0], every[index], rtol=0, atol=0)
        pruned = copy.deepcopy(model)
        taken = pruned.prune_intermediate_layers([0, 1])
        assert list(taken) == [0, 1]
        _, first_two = pruned.forward_intermediates(x, indices=[0, 1])
        for got, want in zip(first_two, every[:2]):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["cifar_resnet20", "wrn16_4", "nin_mnist", "googlenet"])
def test_global_pool_switched_off_leaves_maps_and_a_classifier_needs_it_back(name):
    model = timm.create_model(name).eval()
    x = small_input(model, 1, side=32)
    with torch.no_grad():
        features = model.forward_features(x)
        model.reset_classifier(0, "")
        torch.testing.assert_close(model(x), features, rtol=0, atol=0)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), features, rtol=0, atol=0)
    with pytest.raises(IncompatibleConfigError, match="num_classes=0"):
        model.reset_classifier(10)
    model.reset_classifier(10, "avg")
    assert model(x).shape == (1, 10)
    with pytest.raises(IncompatibleConfigError, match="global_pool=''"):
        timm.create_model(name, global_pool="")


def test_googlenet_forward_features_runs_the_trunk_in_order():
    """forward_features spells TRUNK out (TorchScript cannot look modules up by name): the two must agree."""
    model = GoogLeNet(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y = x
        for _, module in model.trunk():
            y = module(y)
        torch.testing.assert_close(model.forward_features(x), y, rtol=0, atol=0)


# The ways the networks checkpoint: block by block with BatchNorm (StagedNet), feature level by level with dropout
# inside (NIN) and after (LeNet), hidden layer by hidden layer (MLP). tests/test_conformance.py checks the
# gradients of one step on every registered model.
@pytest.mark.parametrize("name", ["cifar_resnet20", "nin_mnist", "lenet", "mlp_mnist"])
def test_grad_checkpointing_trains_exactly_as_without_it(name):
    """Training steps with checkpointing end at the same weights and BatchNorm statistics as without it
    (dropout draws the same masks; the recomputation leaves running statistics alone), and the checkpointed
    segments really run twice."""
    torch.manual_seed(0)
    plain = timm.create_model(name, num_classes=5).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    data = [(small_input(plain, side=32), torch.randint(0, 5, (2,))) for _ in range(2)]
    forwards = {}
    for key, model in (("plain", plain), ("checkpointed", checkpointed)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        calls = []
        handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in model.modules()
                   if isinstance(m, (nn.Conv2d, nn.Linear))]
        torch.manual_seed(1)
        for x, y in data:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        for handle in handles:
            handle.remove()
        forwards[key] = len(calls)
    assert forwards["checkpointed"] > forwards["plain"], "nothing was recomputed"
    reference = plain.state_dict()
    for key, value in checkpointed.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0, msg=key)


def layer_scales(model, decay: float = 0.75):
    optimizer = timm.optim.create_optimizer_v2(model, opt="sgd", lr=1.0, layer_decay=decay)
    scale_of = {id(p): group["lr_scale"] for group in optimizer.param_groups for p in group["params"]}
    return {name: scale_of[id(p)] for name, p in model.named_parameters()}


@pytest.mark.parametrize("name, depth_order", [
    ("cifar_resnet20", ["stem.0", "stages.0.0.conv1", "stages.0.2.conv2", "stages.1.0.conv1", "stages.2.2.bn2",
                        "fc"]),
    ("densenet40_k12", ["stem", "stages.0.0.body.2", "stages.1.0.2", "stages.2.11.body.2", "final_norm.0", "fc"]),
    ("lenet", ["features.conv1", "features.conv2", "fc1", "fc"]),
    ("bignet", ["features.conv1_1", "features.conv1_2", "features.conv3_4", "fc1", "fc2", "fc"]),
    ("nin_mnist", ["features.conv1", "features.cccp1", "features.conv3", "features.cccp5", "cccp6"]),
    ("googlenet", ["conv1.conv", "inception3a.branch1.conv", "inception4e.branch2.0.conv", "inception5b.branch4.1.conv",
                   "fc"]),
    ("mlp_mnist", ["hidden_layers.0", "fc"]),
])
def test_layer_decay_scales_grow_with_depth_to_one_at_the_head(name, depth_order):
    """timm's layer decay (create_optimizer_v2(layer_decay=0.75)) from group_matcher: the stem gets the
    smallest scale, each block a larger one the deeper it sits, and the head (with any fully connected layers
    before the classifier, as timm groups VGG's) exactly 1."""
    scales = layer_scales(timm.create_model(name))
    ordered = [scales[f"{layer}.weight"] for layer in depth_order]
    assert ordered == sorted(ordered), dict(zip(depth_order, ordered))
    assert ordered[0] < ordered[-1] == 1.0
    assert min(scales.values()) == ordered[0], "the stem is the shallowest group"


def test_layer_decay_steps_once_per_block_and_coarse_groups_follow_stages():
    model = timm.create_model("cifar_resnet20")
    scales = layer_scales(model)
    assert scales["stem.0.weight"] == pytest.approx(0.75 ** 10)     # stem, 9 blocks, head
    assert scales["stages.2.2.conv1.weight"] == pytest.approx(0.75)
    coarse = timm.models.group_parameters(model, model.group_matcher(coarse=True), reverse=True)
    assert coarse["stem.0.weight"] < coarse["stages.0.2.conv1.weight"] == coarse["stages.0.0.bn1.bias"]
    assert coarse["stages.0.0.conv1.weight"] < coarse["stages.1.0.conv1.weight"] < coarse["fc.weight"]


def test_googlenet_auxiliary_classifiers_share_the_group_of_the_block_they_read():
    model = GoogLeNet(num_classes=10, aux_logits=True)
    layer_of = timm.models.group_parameters(model, model.group_matcher(), reverse=True)
    assert layer_of["aux1.fc2.weight"] == layer_of["inception4a.branch1.conv.weight"]
    assert layer_of["aux2.conv.conv.weight"] == layer_of["inception4d.branch1.conv.weight"]
    assert layer_of["aux2.fc2.weight"] < layer_of["fc.weight"]


@pytest.mark.parametrize("name", ["cifar_resnet20", "lenet", "nin_mnist", "mlp_mnist"])
def test_no_weight_decay_names_the_biases_and_norms_and_the_optimizer_spares_them(name):
    model = timm.create_model(name)
    names = model.no_weight_decay()
    assert names == {n for n, p in model.named_parameters() if p.ndim == 1} and names
    optimizer = timm.optim.create_optimizer_v2(model, opt="sgd", lr=0.1, weight_decay=1e-4)
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    for n, p in model.named_parameters():
        assert decay_of[id(p)] == (0.0 if n in names else 1e-4), n


def test_mlp_input_check_survives_fx_and_torchscript():
    """The MLP checks its input width in a function FX keeps as a call (timm's register_notrace_function), so
    the traced and the scripted model still refuse a wrong image size with the same advice."""
    model = timm.create_model("mlp_mnist").eval()
    wrong = torch.randn(1, 1, 32, 32)
    with pytest.raises(IncompatibleConfigError, match="784 values per image"):
        model(wrong)
    from torchvision.models.feature_extraction import create_feature_extractor
    traced = create_feature_extractor(model, return_nodes=["fc"], tracer_kwargs=dict(
        autowrap_functions=timm.models.get_notrace_functions()))
    digits = torch.randn(1, 1, 28, 28)
    torch.testing.assert_close(traced(digits)["fc"], model(digits), rtol=0, atol=0)
    with pytest.raises(IncompatibleConfigError, match="784 values per image"):
        traced(wrong)
    with timm.set_scriptable(True):
        scripted = torch.jit.script(timm.create_model("mlp_mnist").eval())
    with pytest.raises(torch.jit.Error, match="784 values per image"):
        scripted(wrong)
