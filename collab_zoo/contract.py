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

The train-mode tuple is a ``TrainHeads``: a tuple to everything that iterates it, and a clear error to code that
mistakes it for one tensor of logits (``F.cross_entropy(model(x), y)``). TorchScript, FX, export and compile
get a plain tuple, and a scripted model runs the inference rule.

(No ``from __future__ import annotations`` here or in the model modules: TorchScript reads the annotations of
the modules it compiles and cannot resolve them as strings.)
"""
import contextlib
import math
import re
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import IncompatibleConfigError, TrainOutputNotATensorError

Heads = Tuple[Tensor, ...]
LossParts = Dict[str, Tensor]
LossFn = Callable[[Any, Tensor], Tuple[Tensor, LossParts]]

__all__ = [
    "CollabModel", "BackboneWrapper", "classifier_module_name", "TrainingRound", "Heads", "cross_entropy_loss", "heads_of", "head_names_of", "loss_of",
    "num_rounds_of", "training_round_of", "complete_round_of", "forward_heads_of", "predict_of", "write_figures_of",
    "scores_and_heads", "deterministic_mode_of", "parameters_left_unused_of", "CONFORMANCE_FAMILIES",
    "CONFORMANCE_CHECKS", "exempt_from_conformance", "conformance_exemptions", "inherit_conformance_exemptions",
    "target_probability", "is_soft_target", "TrainHeads", "is_tracing", "group_ordinals", "prefixed_group_matcher",
    "model_display_name", "weighted_mean", "check_single_objective",
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


def weighted_mean(per_sample: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
    """The batch mean of a per-sample loss, each sample's term scaled by its weight when weights are given.

    This is how every ``collab_loss`` reduces its per-sample terms under ``sample_weight``: ``mean(w_i * l_i)``
    (not renormalised by ``sum(w)``, so a composing method, e.g. complementary boosting, sets the scale)."""
    if sample_weight is None:
        return per_sample.mean()
    return (per_sample * sample_weight.to(per_sample.dtype)).mean()


def cross_entropy_loss(outputs: Union[Tensor, Sequence[Tensor]], target: Tensor,
                       sample_weight: Optional[Tensor] = None) -> Tuple[Tensor, LossParts]:
    """The plain objective: cross-entropy on the (single or main) head; hard or soft targets."""
    logits = heads_of(outputs)[-1]
    loss = weighted_mean(F.cross_entropy(logits.float(), target, reduction="none"), sample_weight)
    return loss, {"ce": loss.detach()}


def is_tracing() -> bool:
    """True while FX, TorchScript tracing, dynamo (torch.compile) or torch.export records a forward: the
    graph must then hold plain Python structures and no value read out of a tensor."""
    fx = torch.fx._symbolic_trace
    symbolic = getattr(fx, "is_fx_symbolic_tracing", None) or fx.is_fx_tracing
    if torch.jit.is_tracing() or symbolic():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and (compiler.is_compiling() or getattr(compiler, "is_exporting", bool)()))


def check_single_objective(backbone: nn.Module, method: str, nested_example: str) -> None:
    """Refuse a backbone with several heads or training rounds: a method that adds heads (DKS, CLDL) replaces the
    network's objective with its own, so such a backbone's objective would be silently dropped."""
    names = head_names_of(backbone)
    rounds = num_rounds_of(backbone)
    if len(names) != 1 or rounds != 1:
        raise IncompatibleConfigError(
            f"{method} adds heads to a network with one head trained in one round; {model_display_name(backbone)} "
            f"has heads {list(names)} and {rounds} round(s), with an objective of its own that {method} would "
            f"override. Put {method} inside instead (e.g. complementary with member='{nested_example}').")


def model_display_name(model: nn.Module) -> str:
    """The registered architecture a model was built as (its pretrained_cfg), else its class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


class TrainHeads(tuple):
    """A train-mode output: every head's logits, main head last.

    To anything that iterates or indexes it (``collab_loss``, ``torch.cat``, DDP, accelerate) it is a tuple.
    Code that takes it for one tensor of logits, a loss written for single-head models, gets an error that says
    what the output is and what to use instead: torch functions reach ``__torch_function__``, tensor methods
    (``.log_softmax``, ``.argmax``) reach ``__getattr__``.
    """

    model_name = "this model"       # kept when a library rebuilds the tuple with type(obj)(items)
    head_names: Tuple[str, ...] = ()

    def __new__(cls, heads, model_name: Optional[str] = None, head_names: Optional[Sequence[str]] = None):
        obj = super().__new__(cls, heads)
        if model_name is not None:
            obj.model_name = model_name
        if head_names is not None:
            obj.head_names = tuple(head_names)
        return obj

    def __getnewargs__(self):
        return (tuple(self),)

    def misuse_error(self, used_as: str) -> TrainOutputNotATensorError:
        names = f" ({', '.join(self.head_names)})" if len(self.head_names) == len(self) else ""
        return TrainOutputNotATensorError(
            f"{self.model_name} returns every head's logits in training: a tuple of {len(self)} tensors{names}, main "
            f"head last, not one tensor, so it cannot be used as {used_as}. Train with the model's own objective: "
            "`loss, parts = model.collab_loss(outputs, target)`; in a timm training loop, "
            "`collab_zoo.CollabTask(model)` (a timm.task.TrainingTask) does this for you, and collab_zoo's "
            "train.py takes timm's flags. In eval mode the model returns one [B, num_classes] tensor.")

    def __getattr__(self, name: str):
        # Only the public tensor API: probes such as _fields or __array__ must keep getting a plain AttributeError.
        if not name.startswith("_") and hasattr(Tensor, name):
            raise self.misuse_error(f"a tensor (`.{name}`)")
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        culprit = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, TrainHeads)), None)
        plain = lambda a: tuple(a) if isinstance(a, TrainHeads) else a  # noqa: E731
        try:
            return func(*(plain(a) for a in args), **{k: plain(v) for k, v in kwargs.items()})
        except (TypeError, AttributeError):
            if culprit is None:
                raise
            name = getattr(func, "__name__", str(func))
            raise culprit.misuse_error(f"the tensor argument of `{name}`") from None


def group_ordinals(matcher: Union[Dict[str, Any], Callable[[str], Any]]) -> Callable[[str], Tuple[float, ...]]:
    """A timm ``group_matcher`` (a dict of regexes in group order, or a callable) as one function from a
    parameter name to the ordinal tuple timm's ``group_parameters`` sorts by: the group's position, then the
    regex's captured numbers and suffix; a name no regex matches goes last (``inf``), as in timm."""
    if callable(matcher) and not isinstance(matcher, dict):
        def from_callable(name: str) -> Tuple[float, ...]:
            value = matcher(name)
            return tuple(value) if isinstance(value, (tuple, list)) else (value,)
        return from_callable
    compiled = []
    for position, spec in enumerate(matcher.values()):
        if spec is None:
            continue
        if isinstance(spec, (tuple, list)):
            compiled += [(re.compile(pattern), position, tuple(suffix or ())) for pattern, suffix in spec]
        else:
            compiled.append((re.compile(spec), position, ()))

    def from_regexes(name: str) -> Tuple[float, ...]:
        for pattern, position, suffix in compiled:
            found = pattern.match(name)
            if found:
                numbers = tuple(float(g) for g in found.groups() if g is not None)
                return (float(position), *numbers, *(float(v) for v in suffix))
        return (math.inf,)
    return from_regexes


def prefixed_group_matcher(matcher, prefix: str) -> Callable[[str], Tuple[float, ...]]:
    """The group_matcher of a network kept under ``prefix`` (``"backbone."``), for the model holding it.
    Parameters outside the prefix (a method's extra heads) go with the classifier, in the last group."""
    inner = group_ordinals(matcher)

    def ordinal(name: str) -> Tuple[float, ...]:
        return inner(name[len(prefix):]) if name.startswith(prefix) else (math.inf,)
    return ordinal


# torch's tree utilities (DDP's output handling, torch.export, dynamo) see the heads inside, and rebuild a TrainHeads.
torch.utils._pytree.register_pytree_node(
    TrainHeads, lambda heads: (list(heads), (heads.model_name, heads.head_names)),
    lambda values, context: TrainHeads(values, *context),
    serialized_type_name="collab_zoo.contract.TrainHeads")


class CollabModel(nn.Module, metaclass=ABCMeta):
    """Base of every zoo model with several heads or a non-standard inference rule.

    Subclasses implement ``forward_heads`` and ``collab_loss`` and set ``head_names``; they override
    ``predict`` when inference combines heads, and ``forward_inference`` when it can skip work (DKS runs
    only the main path). Weight handling hooks: ``training_only_prefixes`` names submodules that inference
    does not need (dropped from Hub files unless asked, initialised fresh when absent from a checkpoint),
    ``classifier_names`` every head's classifier (dropped when fine-tuning to another class count), and
    ``remap_pretrained_keys`` maps a foreign key layout (e.g. a bare timm backbone) onto the model's.
    """

    # (No class annotations on these: TorchScript reads them and cannot express Tuple[str, ...].)
    head_names = ("main",)
    training_only_prefixes = ()
    num_rounds = 1
    # True when a training step may leave some parameters without a gradient (stochastic branches), so a
    # data-parallel wrapper must look for unused parameters instead of waiting for their gradients.
    leaves_parameters_unused = False

    def __init__(self):
        super().__init__()
        self.grad_checkpointing = False

    # -- the contract -------------------------------------------------------------------------------------
    @abstractmethod
    def forward_heads(self, x: Tensor) -> Heads:
        """Per-head logits, main head last, in any mode."""

    @abstractmethod
    def collab_loss(self, outputs: Heads, target: Tensor,
                    sample_weight: Optional[Tensor] = None) -> Tuple[Tensor, LossParts]:
        """The method's training objective: ``(total, parts)``.

        ``sample_weight`` ([B], optional) is given by a method that composes this model (complementary boosting
        weights each sample by its class's importance): every per-sample term is reduced with ``weighted_mean``;
        each method's docstring says how its terms that are not per-sample are treated."""

    def predict(self, heads: Heads) -> Tensor:
        """The method's inference rule applied to per-head logits; the main head by default."""
        return heads[-1]

    def forward_inference(self, x: Tensor) -> Tensor:
        return self.predict(self.forward_heads(x))

    def forward(self, x: Tensor):
        if torch.jit.is_scripting():
            # A scripted model is for deployment: it runs the inference rule. Training stays in Python.
            if self.training:
                raise RuntimeError("a scripted collab_zoo model runs inference only: call .eval() before scripting "
                                   "it, and train the Python module (model.collab_loss, train.py).")
            return self.forward_inference(x)
        else:
            if self.training:
                heads = self.forward_heads(x)
                if is_tracing():
                    return tuple(heads)
                return TrainHeads(heads, model_display_name(self), tuple(self.head_names))
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

    # TorchScript compiles a module's properties unless told otherwise; these are for Python callers only.
    __jit_unused_properties__ = ["num_classes", "num_features", "head_hidden_size", "feature_info"]

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

    # -- timm's training hooks, the backbone's under its prefix -------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        """The backbone's stem / stage groups; the method's extra heads go with the classifier."""
        return prefixed_group_matcher(self.backbone.group_matcher(coarse=coarse), "backbone.")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint the backbone's own forward (where it can) and the method's training forward."""
        self.grad_checkpointing = enable
        if hasattr(self.backbone, "set_grad_checkpointing"):
            self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        names = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{name}" for name in names}

    def remap_pretrained_keys(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """A bare backbone checkpoint (its own key names) loads under ``backbone.``."""
        if any(k.startswith("backbone.") for k in state_dict):
            return state_dict
        return {f"backbone.{k}": v for k, v in state_dict.items()}


# --- helpers that give plain timm models the same contract ---------------------------------------------------

def heads_of(outputs: Union[Tensor, Sequence[Tensor]]) -> Heads:
    # A tuple or list of heads, else one tensor (or an FX proxy standing for one, which cannot be iterated).
    if isinstance(outputs, (tuple, list)):
        return tuple(outputs)
    return (outputs,)


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
_EXEMPTIONS_INHERITED_FROM: Dict[str, str] = {}


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


def inherit_conformance_exemptions(model_name: str, backbone_name: str) -> None:
    """A method model built on ``backbone_name`` shares its backbone's written exemptions (resolved when read, so
    the order of registration does not matter); its own exemptions take precedence."""
    _EXEMPTIONS_INHERITED_FROM[model_name] = backbone_name


def conformance_exemptions(model_name: Optional[str] = None) -> Dict[str, Any]:
    """``{check: reason}`` of one model, or ``{model: {check: reason}}`` of all when no name is given."""
    if model_name is None:
        names = set(_CONFORMANCE_EXEMPTIONS) | set(_EXEMPTIONS_INHERITED_FROM)
        return {name: entry for name in sorted(names) if (entry := conformance_exemptions(name))}
    name = model_name.split(".", 1)[0]
    entry = dict(_CONFORMANCE_EXEMPTIONS.get(name, {}))
    backbone = _EXEMPTIONS_INHERITED_FROM.get(name)
    if backbone is not None and backbone != name:
        for check, reason in conformance_exemptions(backbone).items():
            entry.setdefault(check, f"as its backbone {backbone}: {reason}")
    return entry
