"""The one contract every zoo model keeps, so train.py and validate.py never special-case a method.

* eval mode: ``model(x)`` -> ``[B, num_classes]`` scores, ranked by the method's own inference rule;
* train mode: ``model(x)`` -> tuple of per-head logits, main head last;
* ``model.collab_loss(outputs, target)`` -> ``(total, parts)``, ``parts`` a dict of named scalars;
* ``model.forward_heads(x)`` gives the per-head logits in any mode and ``model.predict(heads)`` applies the
  inference rule to them, so an evaluator gets every head's accuracy and the method's answer from one pass;
* training happens in one or more *rounds* (``num_rounds``, ``training_round``, ``complete_round``):
  one for most methods, tau for class-level boosting, each round naming the module to optimise and its loss.

Plain timm models (the baselines) keep the same contract through the module-level helpers below: one
"main" head, cross-entropy, one round. The helpers are the only place that looks at which kind a model is.
"""
from __future__ import annotations

import contextlib
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Heads = Tuple[Tensor, ...]
LossParts = Dict[str, Tensor]
LossFn = Callable[[Any, Tensor], Tuple[Tensor, LossParts]]

__all__ = [
    "CollabModel", "BackboneWrapper", "classifier_module_name", "TrainingRound", "Heads", "cross_entropy_loss", "heads_of", "head_names_of", "loss_of",
    "num_rounds_of", "training_round_of", "complete_round_of", "forward_heads_of", "predict_of", "write_figures_of",
    "scores_and_heads", "deterministic_mode_of", "parameters_left_unused_of", "CONFORMANCE_FAMILIES",
    "CONFORMANCE_CHECKS", "exempt_from_conformance", "conformance_exemptions",
    "target_probability", "is_soft_target",
]


@dataclass
class TrainingRound:
    """What to optimise in one round of training.

    ``module`` is what the optimizer sees and what a data-parallel wrapper wraps; in train mode its forward
    returns head logits (a tensor or a tuple). ``loss(outputs, target)`` is the round's objective.
    ``needs_heldout``: the round ends with ``complete_round`` fed predictions on a held-out split.
    """

    index: int
    module: nn.Module
    loss: LossFn
    head_names: Tuple[str, ...]
    needs_heldout: bool = False
    description: str = ""


def is_soft_target(target: Tensor) -> bool:
    """Mixup/cutmix and label smoothing give probability rows instead of class indices."""
    return target.is_floating_point() and target.dim() == 2


def target_probability(probs: Tensor, target: Tensor) -> Tensor:
    """p(y|x) per sample: the target class's probability, or its expectation under a soft target."""
    if is_soft_target(target):
        return (probs * target).sum(dim=-1)
    return probs.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)


def cross_entropy_loss(outputs: Union[Tensor, Sequence[Tensor]], target: Tensor) -> Tuple[Tensor, LossParts]:
    """The plain objective: cross-entropy on the (single or main) head; hard or soft targets."""
    logits = heads_of(outputs)[-1]
    loss = F.cross_entropy(logits.float(), target)
    return loss, {"ce": loss.detach()}


class CollabModel(nn.Module, metaclass=ABCMeta):
    """Base of every zoo model with several heads or a non-standard inference rule.

    Subclasses implement ``forward_heads`` and ``collab_loss`` and set ``head_names``; they override
    ``predict`` when inference combines heads, and ``forward_inference`` when it can skip work (DKS runs
    only the main path). Weight handling hooks: ``training_only_prefixes`` names submodules that inference
    does not need (dropped from Hub files unless asked, initialised fresh when absent from a checkpoint),
    ``classifier_names`` every head's classifier (dropped when fine-tuning to another class count), and
    ``remap_pretrained_keys`` maps a foreign key layout (e.g. a bare timm backbone) onto the model's.
    """

    head_names: Tuple[str, ...] = ("main",)
    training_only_prefixes: Tuple[str, ...] = ()
    num_rounds: int = 1
    # True when a training step may leave some parameters without a gradient (stochastic branches), so a
    # data-parallel wrapper must look for unused parameters instead of waiting for their gradients.
    leaves_parameters_unused: bool = False

    # -- the contract -------------------------------------------------------------------------------------
    @abstractmethod
    def forward_heads(self, x: Tensor) -> Heads:
        """Per-head logits, main head last, in any mode."""

    @abstractmethod
    def collab_loss(self, outputs: Heads, target: Tensor) -> Tuple[Tensor, LossParts]:
        """The method's training objective: ``(total, parts)``."""

    def predict(self, heads: Heads) -> Tensor:
        """The method's inference rule applied to per-head logits; the main head by default."""
        return heads[-1]

    def forward_inference(self, x: Tensor) -> Tensor:
        return self.predict(self.forward_heads(x))

    def forward(self, x: Tensor) -> Union[Heads, Tensor]:
        if self.training:
            return self.forward_heads(x)
        return self.forward_inference(x)

    # -- rounds -------------------------------------------------------------------------------------------
    def training_round(self, index: int) -> TrainingRound:
        if index != 0:
            raise IndexError(f"{type(self).__name__} trains in a single round; asked for round {index}.")
        return TrainingRound(index, self, self.collab_loss, tuple(self.head_names))

    def complete_round(self, index: int, heldout_logits: Optional[Heads] = None,
                       heldout_targets: Optional[Tensor] = None) -> Dict[str, Any]:
        """Called after round ``index``; returns anything worth logging."""
        return {}

    def write_figures(self, output_dir) -> list:
        """Method-specific pictures a training run should leave behind (e.g. importance per round); paths."""
        return []

    # -- parts of the network a training step leaves out by design -------------------------------------------
    def deterministic_mode(self) -> ContextManager[None]:
        """A context in which every random choice of a training step takes its deterministic counterpart, so
        that every parameter the round trains takes part in each step (DCL: all branches fused instead of a
        drawn pair). Methods without such choices need nothing: the default changes nothing."""
        return contextlib.nullcontext()

    def parameters_left_unused(self) -> Set[str]:
        """Names of the parameters the last train-mode forward left out by design (a stochastic draw's idle
        branches, the members of other boosting rounds): they get no gradient from that step."""
        return set()

    # -- weights ------------------------------------------------------------------------------------------
    def classifier_names(self) -> Tuple[str, ...]:
        """Module names of every head's final classifier, main head last."""
        name = self.get_classifier(name_only=True) if hasattr(self, "get_classifier") else None
        return (name,) if isinstance(name, str) else ()

    def is_training_only_key(self, key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in self.training_only_prefixes)

    def optional_checkpoint_keys(self, state_dict: Dict[str, Tensor]) -> set:
        """Keys a checkpoint (already remapped) may lack: they keep this model's fresh initialisation and the
        loader reports them as initialised. By default the training-only heads; a method whose extra heads
        are needed at inference can still accept a checkpoint of its bare backbone by saying so here."""
        return {k for k in self.state_dict() if self.is_training_only_key(k)}

    def hub_state_dict(self, keep_training_heads: bool = False) -> Dict[str, Tensor]:
        """The tensors a Hub file carries: what inference needs, unless the training heads are wanted."""
        state = self.state_dict()
        if keep_training_heads:
            return state
        return {k: v for k, v in state.items() if not self.is_training_only_key(k)}

    def remap_pretrained_keys(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return state_dict


def classifier_module_name(network: nn.Module) -> Optional[str]:
    """The name of a timm-style network's final classifier module (``fc``, ``head.fc``, ...)."""
    try:
        name = network.get_classifier(name_only=True)
    except (TypeError, AttributeError):  # many timm models: get_classifier() takes no argument; the cfg names it
        name = (getattr(network, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(name, (tuple, list)):
        name = name[0] if name else None
    return name if isinstance(name, str) else None


class BackboneWrapper(CollabModel):
    """A CollabModel whose main path is a timm-style network kept at ``self.backbone`` (DKS, CLDL, DCL).

    timm's interface passes through to the backbone under the ``backbone.`` prefix, and a checkpoint of the
    bare backbone (its own key names) loads under that prefix. Subclasses add their heads, extend
    ``reset_classifier`` to reach them, and list them in ``classifier_names``.
    """

    backbone: nn.Module

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    @property
    def num_features(self) -> int:
        return self.backbone.num_features

    @property
    def head_hidden_size(self) -> int:
        return getattr(self.backbone, "head_hidden_size", self.backbone.num_features)

    @property
    def feature_info(self):
        return [dict(info, module=f"backbone.{info['module']}") for info in self.backbone.feature_info]

    def get_classifier(self, name_only: bool = False):
        if name_only:
            name = classifier_module_name(self.backbone)
            return f"backbone.{name}" if name else None
        return self.backbone.get_classifier()

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is None:
            self.backbone.reset_classifier(num_classes)
        else:
            self.backbone.reset_classifier(num_classes, global_pool)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.backbone.forward_head(x, pre_logits=pre_logits)

    def forward_intermediates(self, x: Tensor, **kwargs):
        return self.backbone.forward_intermediates(x, **kwargs)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        if hasattr(self.backbone, "prune_intermediate_layers"):
            return self.backbone.prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        # A backbone that cannot drop its unused layers keeps them; the feature wrapper needs the indices.
        from timm.models._features import feature_take_indices

        return feature_take_indices(len(self.backbone.feature_info), indices)[0]

    def remap_pretrained_keys(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """A bare backbone checkpoint (its own key names) loads under ``backbone.``."""
        if any(k.startswith("backbone.") for k in state_dict):
            return state_dict
        return {f"backbone.{k}": v for k, v in state_dict.items()}


# --- helpers that give plain timm models the same contract ---------------------------------------------------

def heads_of(outputs: Union[Tensor, Sequence[Tensor]]) -> Heads:
    if isinstance(outputs, Tensor):
        return (outputs,)
    return tuple(outputs)


def head_names_of(model: nn.Module) -> Tuple[str, ...]:
    return tuple(getattr(model, "head_names", ("main",)))


def loss_of(model: nn.Module) -> LossFn:
    return getattr(model, "collab_loss", cross_entropy_loss)


def num_rounds_of(model: nn.Module) -> int:
    return int(getattr(model, "num_rounds", 1))


def training_round_of(model: nn.Module, index: int) -> TrainingRound:
    if isinstance(model, CollabModel) or hasattr(model, "training_round"):
        return model.training_round(index)
    if index != 0:
        raise IndexError(f"{type(model).__name__} trains in a single round; asked for round {index}.")
    return TrainingRound(index, model, cross_entropy_loss, ("main",))


def complete_round_of(model: nn.Module, index: int, heldout_logits: Optional[Heads] = None,
                      heldout_targets: Optional[Tensor] = None) -> Dict[str, Any]:
    fn = getattr(model, "complete_round", None)
    return fn(index, heldout_logits, heldout_targets) if fn is not None else {}


def forward_heads_of(model: nn.Module, x: Tensor) -> Heads:
    fn = getattr(model, "forward_heads", None)
    return fn(x) if fn is not None else (model(x),)


def predict_of(model: nn.Module, heads: Heads) -> Tensor:
    fn = getattr(model, "predict", None)
    return fn(heads) if fn is not None else heads[-1]


def deterministic_mode_of(model: nn.Module) -> ContextManager[None]:
    fn = getattr(model, "deterministic_mode", None)
    return fn() if fn is not None else contextlib.nullcontext()


def parameters_left_unused_of(model: nn.Module) -> Set[str]:
    fn = getattr(model, "parameters_left_unused", None)
    return set(fn()) if fn is not None else set()


def write_figures_of(model: nn.Module, output_dir) -> list:
    fn = getattr(model, "write_figures", None)
    return list(fn(output_dir)) if fn is not None else []


@torch.no_grad()
def scores_and_heads(model: nn.Module, x: Tensor) -> Tuple[Tensor, Heads]:
    """One pass giving the method's scores and every head's logits (for per-head accuracy)."""
    heads = forward_heads_of(model, x)
    return predict_of(model, heads), heads


# --- timm's conformance families, and the written exemptions from them ----------------------------------------

# The families of checks timm's own tests/test_models.py runs on its models; tests/test_conformance.py runs them on
# every registered zoo model. Two checks inside "default_cfg" are listed on their own because timm itself skips
# them for some kinds of model: "default_cfg:unpooled" (a forward without pooling; timm skips it for models that
# pool before layers of their head, EARLY_POOL_MODELS such as VGG) and "default_cfg:spatial" (pool_size and
# unpooled NCHW features; timm runs its non-spatial variant on MLP-like models, NON_STD_FILTERS).
CONFORMANCE_FAMILIES: Tuple[str, ...] = (
    "forward", "backward", "default_cfg", "features_only", "forward_intermediates", "fx_forward", "fx_backward",
    "features_fx", "training_hooks", "torchscript", "fx_torchscript", "export", "compile",
)
CONFORMANCE_CHECKS: Tuple[str, ...] = CONFORMANCE_FAMILIES + ("default_cfg:unpooled", "default_cfg:spatial")

_CONFORMANCE_EXEMPTIONS: Dict[str, Dict[str, str]] = {}


def exempt_from_conformance(model_name: str, checks: Union[str, Sequence[str]], reason: str) -> None:
    """Record, next to a model's registration, that a conformance family cannot apply to it, and why.

    Only where timm exempts the same kind of backbone from the same family (its EXCLUDE_JIT_FILTERS,
    NON_STD_FILTERS, EARLY_POOL_MODELS, ...): the reason names that precedent. The conformance tests read
    these; an exempted check is still run and must fail (strict xfail), so an exemption that is no longer
    needed shows up.
    """
    checks = (checks,) if isinstance(checks, str) else tuple(checks)
    unknown = [c for c in checks if c not in CONFORMANCE_CHECKS]
    if unknown:
        raise ValueError(f"unknown conformance check(s) {unknown}; known: {list(CONFORMANCE_CHECKS)}.")
    if not reason or not reason.strip():
        raise ValueError(f"an exemption of {model_name} from {list(checks)} needs its reason.")
    entry = _CONFORMANCE_EXEMPTIONS.setdefault(model_name, {})
    for check in checks:
        entry[check] = reason.strip()


def conformance_exemptions(model_name: Optional[str] = None) -> Dict[str, Any]:
    """``{check: reason}`` of one model, or ``{model: {check: reason}}`` of all when no name is given."""
    if model_name is None:
        return {name: dict(entry) for name, entry in _CONFORMANCE_EXEMPTIONS.items()}
    return dict(_CONFORMANCE_EXEMPTIONS.get(model_name.split(".", 1)[0], {}))
