"""The contract's own pieces: the train-mode output and its error, timm group matchers, the exemption record."""
import copy
import pickle

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

import collab_zoo
from collab_zoo.contract import (CONFORMANCE_CHECKS, TrainHeads, conformance_exemptions, exempt_from_conformance,
                                 group_ordinals, inherit_conformance_exemptions, is_tracing, prefixed_group_matcher)
from collab_zoo.errors import CollabZooError, TrainOutputNotATensorError

# One small model per method (DCL's single head is a 1-tuple in training, by the contract).
SMALL = ["dks_resnet20", "cldl_nin_mnist", "dcl_lenet", "complementary_mlp_x4"]


def _train_outputs(name):
    torch.manual_seed(0)
    model = collab_zoo.create_model(name).train()
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    with torch.no_grad():  # (deepcopy and pickle refuse tensors inside an autograd graph)
        return model, model(x)


@pytest.mark.parametrize("name", SMALL)
def test_a_plain_loss_on_the_train_output_says_what_to_do(name):
    """F.cross_entropy and timm's soft-target / label-smoothing losses on the tuple of heads raise an error that
    names the model, says the forward returns every head, and points to collab_loss, CollabTask and train.py."""
    model, outputs = _train_outputs(name)
    target = torch.tensor([1, 2])
    soft = F.one_hot(target, model.num_classes).float()
    for misuse in (lambda: F.cross_entropy(outputs, target), lambda: SoftTargetCrossEntropy()(outputs, soft),
                   lambda: LabelSmoothingCrossEntropy(0.1)(outputs, target), lambda: outputs.log_softmax(-1),
                   lambda: torch.nn.CrossEntropyLoss()(outputs, target)):
        with pytest.raises(TrainOutputNotATensorError) as caught:
            misuse()
        message = str(caught.value)
        for needed in (name, "every head", "collab_loss", "CollabTask", "train.py"):
            assert needed in message, f"{needed!r} missing from: {message}"
        assert isinstance(caught.value, (CollabZooError, TypeError, AttributeError))


@pytest.mark.parametrize("name", SMALL)
def test_the_train_output_is_still_a_tuple_of_heads(name):
    model, outputs = _train_outputs(name)
    assert isinstance(outputs, tuple) and len(outputs) == len(model.head_names)
    assert torch.cat(outputs).shape[0] == 2 * len(outputs) and torch.stack(outputs).shape[0] == len(outputs)
    loss, parts = model.collab_loss(outputs, torch.tensor([1, 2]))
    assert torch.isfinite(loss) and parts
    assert tuple(copy.deepcopy(outputs))[0].shape == outputs[0].shape
    again = pickle.loads(pickle.dumps(outputs))
    assert isinstance(again, TrainHeads) and again.model_name == outputs.model_name
    # Library probes for named tuples and arrays get a plain AttributeError (hasattr is False).
    assert not hasattr(outputs, "_fields") and not hasattr(outputs, "__array__")
    assert type(outputs)(iter(outputs)).misuse_error("x").args  # rebuilt by type(obj)(items), still explains


def test_eval_output_is_one_tensor_and_nothing_traces_outside_a_tracer():
    model = collab_zoo.create_model("dks_resnet20").eval()
    assert isinstance(model(torch.randn(1, 3, 32, 32)), torch.Tensor)
    assert not is_tracing()


@pytest.mark.parametrize("arch", ["resnet18", "vgg11", "convnext_atto"])
def test_group_ordinals_order_parameters_as_timms_own_matcher(arch):
    """The function form of a timm group_matcher gives timm's group_parameters the same layer of every parameter."""
    model = timm.create_model(arch)
    for coarse in (True, False):
        matcher = model.group_matcher(coarse=coarse)
        assert timm.models.group_parameters(model, group_ordinals(matcher), reverse=True) == \
            timm.models.group_parameters(model, matcher, reverse=True)


def test_prefixed_group_matcher_puts_foreign_parameters_with_the_classifier():
    matcher = prefixed_group_matcher(timm.create_model("resnet18").group_matcher(), "backbone.")
    assert matcher("backbone.conv1.weight") == (0.0,)
    assert matcher("backbone.layer2.1.conv1.weight") == (1.0, 2.0, 1.0)
    assert matcher("aux_heads.0.fc.weight") == matcher("backbone.fc.weight") == (float("inf"),)


def test_exemptions_are_checked_and_inherited():
    with pytest.raises(ValueError, match="unknown conformance check"):
        exempt_from_conformance("dks_resnet20", "no_such_family", "a reason")
    with pytest.raises(ValueError, match="needs its reason"):
        exempt_from_conformance("dks_resnet20", "torchscript", " ")
    inherit_conformance_exemptions("dcl_lenet", "lenet")  # as registered
    assert conformance_exemptions("dcl_lenet") == {
        check: f"as its backbone lenet: {reason}" for check, reason in conformance_exemptions("lenet").items()}
    for entry in conformance_exemptions().values():
        assert set(entry) <= set(CONFORMANCE_CHECKS)
