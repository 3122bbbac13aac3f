"""Embedding complementary deep networks (Chen, Zhang, Yu, Fan; CVPR 2019): boosting over classes.

``tau`` networks are trained one after another. Each round weights the *classes* by an importance that
grows for the classes the networks so far got wrong on a held-out split, so the next network works harder on
them; the ensemble weights each network by how good it was. Algorithm 1, in the paper's equations:

    phi_1(C_l) = 1 / N                                                  importance of each of N classes
    for t = 1 .. tau:
        varphi_t(C_l) = phi_t(C_l) / sum_j phi_t(C_j)                   normalise (Eq. 7)
        train f_t to maximise  Omega_t = sum_l varphi_t(C_l) xi_lt      (Eq. 2)
            xi_lt = 1/R_l     sum_{i: y_i = l}  log p_t(C_l | x_i)
                  - 1/(R-R_l) sum_{i: y_i != l} log p_t(C_l | x_i)      (Eq. 3)
        per-class error on held-out images, soft (Eq. 4):
            eps_t(C_l) = 1/2 [ 1/R_l sum_{y_i = l} (1 - p_t(C_l|x_i)) + 1/(R-R_l) sum_{y_i != l} p_t(C_l|x_i) ]
        weighted error   eps_t = sum_l varphi_t(C_l) eps_t(C_l)         (Eq. 5)
        gamma_t = mu eps_t / (1 - mu eps_t)                              (Eq. 8; mu = 0.7)
        phi_{t+1}(C_l) = phi_t(C_l) * gamma_t ** (1 - mu eps_t(C_l))     (Eq. 6)
    F(x) = 1/Z sum_t log(1/gamma_t) f_t(x),   Z = sum_t log(1/gamma_t),   f_t = softmax probabilities   (Eq. 9)

The functions below are those lines, one each: ``heldout_class_stats`` (Eq. 4, or the hard error),
``weighted_error`` (Eq. 5), ``boosting_gamma`` (Eq. 8), ``update_importance`` (Eq. 6 then Eq. 7),
``normalise_importance`` (Eq. 7), ``margin_objective`` (Eq. 2-3), ``ensemble_log_probs`` (Eq. 9).

**Paper and released code** (qychen13/DifficultyAwareEmbedding). The defaults follow the paper; each place the
code differs is an option with a name:

- ``error="soft"`` (Eq. 4) or ``"hard"``: the class's top-1 miss rate on held-out images, what the code
  measures (its "AP" meter is per-class top-1 accuracy). The paper prints the hard error with a 1/R
  normaliser; that would scale every class error by about 1/N and make the paper's hard-class threshold
  1/(2 mu) meaningless, so it is read as 1/R_l, as the code computes it.
- ``exponent="paper"``, ``gamma ** (1 - mu eps_t(C_l))``, or ``"code"``, ``gamma ** (1 - eps_t(C_l))``.
- ``objective="weighted_ce"`` (the default; see below why) is the code's ``cross_entropy(weight=importance)``,
  which divides by the batch's summed weight (for soft targets the same ratio is taken, so a one-hot soft
  target gives exactly the hard-target value); ``objective="margin"`` is the paper's Eq. 2-3.
- The code weighs members by ``-log2 gamma_t`` instead of ``log(1/gamma_t)``: a constant factor, the same F.

**The margin objective on a mini-batch.** Eq. 2-3 are sums over the whole training set. Written per image,
``Omega = sum_i [ varphi_{y_i} / R_{y_i} log p(y_i|x_i) - sum_{l != y_i} varphi_l / (R - R_l) log p(C_l|x_i) ]``,
so with class frequencies ``f_l = R_l / R`` the batch mean of
``omega_i = sum_l q_il varphi_l / f_l log p_il - sum_l (1 - q_il) varphi_l / (1 - f_l) log p_il``
(``q_i`` the one-hot or soft target) is ``Omega`` itself on the whole training set (``omega_i`` is R times
the image's term), and an unbiased estimate of it on any batch drawn uniformly from the training set. The
frequencies are the training set's (``set_class_counts``, below), never assumed: with balanced classes
(``f_l = 1/N``) the own-class weights are ``N varphi_l`` and the other-class weights ``N varphi_l / (N - 1)``;
on an imbalanced set a rare class's own images weigh ``varphi_l / f_l``, more.

What Eq. 3 amounts to, written in the logits z: ``omega_i = sum_l a_il z_l - c_{y_i} logsumexp(z_i)`` with
``c_y = varphi_y / f_y - sum_{l != y} varphi_l / (1 - f_l)``, for balanced classes
``N varphi_y - N (1 - varphi_y) / (N - 1)``. With uniform importance (round 1) and balanced classes ``c_y = 0``: the
log-partition cancels and the objective is the plain logit margin ``z_y - mean_{l != y} z_l``, linear and
unbounded in the logits, blind to the probabilities; in later rounds the log-partition comes back with a
positive weight for important classes and a negative one (a reward for a larger partition) for the others.
Weight decay keeps the logits finite. On a toy problem with one broad class surrounded by tight ones
(the end-to-end test's data), networks trained with it never predict the broad class, where the released
code's ``weighted_ce`` (bounded below by 0, and the objective behind the paper's reported numbers) learns
it. So the default is ``weighted_ce``, an exception to the zoo's paper-first rule with the paper's own
warrant: Sec. 3.1 says that when the second term of Eq. 3 is negligible, maximising Eq. 2 "is equivalent to
maximizing the weighted likelihood", which is what ``weighted_ce`` does. ``objective="margin"`` gives Eq. 2-3
as written, for study.

**Edges the released code leaves open**, each given a defined answer (never NaN, never a member weight <= 0):

- a class with no held-out images has no error to measure: it takes the importance-weighted mean error of
  the measured classes, which leaves ``eps_t`` unchanged and moves its importance like an average class's.
  Fewer than two measured classes is an error (Eq. 4's second mean needs images of other classes).
- ``eps_t = 0`` (a perfect held-out score) would give ``gamma_t = 0``, an infinite member weight and an
  all-zero importance; ``eps_t`` is floored at ``min_error`` (1e-6): member weight ``log(1/gamma_t)`` about
  14.2, importance unchanged (every class then has the same multiplier).
- ``mu eps_t >= 1/2`` makes ``gamma_t >= 1``, a member weight ``<= 0`` and an importance update that favours
  the easy classes (Sec. 3.3 requires ``mu < 1/(2 eps_t)``). ``on_weak="clamp"`` (default) sets
  ``gamma_t = 1 - 1e-3``: the member's weight, 0.001, leaves it out of the ensemble in effect while Z stays
  positive, the importance barely moves, and a warning is logged. ``on_weak="raise"`` stops with an error
  that names the largest usable mu.

**The model.** ``ComplementaryEnsemble`` holds ``members`` (the tau networks) and, as buffers (so one
``state_dict`` resumes a run between or within rounds): ``gammas`` (one per member; 1 until its round
completes), ``importance`` ([tau + 1, N], normalised; row t trains member t + 1, the last row is the
importance after the last round), the held-out record of each round (``class_error``, ``class_accuracy``,
``class_measured``, ``weighted_errors``), ``rounds_completed`` and ``current_round``.

- eval ``model(x)`` -> ``log F(x)`` over the members whose round is complete (the others are not run);
  before any round completes, the member of the round in progress alone, so validating during round 1
  reports that network. Log-probabilities rank as F does and feed an NLL directly.
- rounds: ``num_rounds = tau``; ``training_round(t)`` gives member t, its class-weighted loss reading
  ``importance[t]`` at call time, ``head_names=("member{t+1}",)``, ``needs_heldout=True``;
  ``complete_round(t, (logits,), targets)`` computes Eq. 4-8 on the held-out predictions, stores them and
  returns a dict for the log (gamma, member weight, weighted error, hard classes, the Sec. 3.3 bound on
  always-hard classes, ...). Completing an earlier round again replaces it and discards the later ones.
  Each member is initialised independently at construction (each round starts from scratch);
  ``first_member_weights`` starts round 1 from given weights (the released ResNet-50 run starts from
  torchvision's ImageNet ResNet-50: ``first_member_weights="resnet50.tv_in1k"``).
- train ``model(x)`` -> every member's logits (main = last). Only the member of the round in progress
  trains: the others run in eval mode without gradient (a finished member never changes in boosting, a
  future one starts from scratch at its round), and ``collab_loss`` is the round in progress's
  class-weighted objective on its member's logits. A trainer that optimises the whole model with
  ``collab_loss`` therefore trains exactly the current round.
- ``write_figures(dir)``: the importance after each round and each class's held-out accuracy per round
  (the paper's Fig. 2a-b / 3a-b), classes ranked by their round-1 accuracy.

**Members of any method (composition).** A member is any zoo or timm model trained in one round: a plain
network, or a DKS, CLDL or DCL model. A member with its own ``collab_loss`` trains with it in its round, every
image weighted by its class's importance: ``sample_weight = varphi_t(C_{y_i}) / mean_batch varphi_t(C_y)`` (a soft
target's expectation of varphi), so that with hard targets a cross-entropy term reduced by the contract's
``weighted_mean`` is exactly the released code's weighted cross-entropy. The member's method decides which of
its terms are per-sample and takes the weight there (its docstring says how it treats the others); the
weights average 1 over the batch, so a term that is not per-sample keeps its scale relative to the weighted
ones, and boosting adds nothing else to it. The loss parts keep the member's own names, prefixed
``member<t>_`` (``member1_ce_main``, ``member1_synergy``, ...). The ensemble combines each member's eval-mode
scores, its own inference rule (DKS's main head, CLDL's Eq. 9 scores ``-S(y)``, DCL's fused network), read as
logits: ``f_t = softmax(scores)`` in Eq. 4 and Eq. 9. ``forward_heads`` shows every head of every member
(``member1_aux_layer2``, ..., ``member1_main``; a plain member is one head, ``member1``), ``predict`` applies
each member's rule to its heads, and a round's module is the member itself (its heads, its inference rule).
What cannot be honoured is an error at construction: a member whose ``collab_loss`` takes no
``sample_weight``, a member that trains in several rounds itself (an ensemble of ensembles), and
``objective="margin"`` with a member that has its own loss (Eq. 2-3 replace a single network's loss; they
cannot be laid over another method's).

**The members' eval forward** (``ensemble_forward``): ``"separate"`` runs the members one after another,
``"batched"`` as one forward vmapped over their stacked weights (``torch.func``), ``"auto"`` (default) the
first on the CPU, where it is faster, and the second on CUDA. Both give the same scores.

**The training set's class frequencies** (the margin objective, Eq. 3): ``model.set_class_counts(source)``
records R_l from the round's training loader, its dataset (``targets``) or its targets, in the ``class_counts``
buffer (saved with the model); ``objective="margin"`` without them is an error, not a silent balanced
assumption. ``weighted_ce`` does not use them.

**timm's interface.** ``forward_features`` puts the members' features side by side (``num_features`` is their
sum), ``forward_head`` splits them back. A traced, scripted, exported or compiled model computes Eq. 9 from
the round buffers inside the graph, running every member (a member outside F gets weight 0), so the graph
holds for any boosting state loaded into it; an eager forward runs only the members F uses. In training a
traced graph detaches the members of other rounds. Layer-wise decay groups each member over its own depth,
so every member's stem gets the same (lowest) learning-rate scale; ``features_only=True`` concatenates each
level of the members' pyramids, ``feature_cls='fx'`` through timm's FX extractor on every member.

Registered: ``complementary_resnet50_x4`` (timm resnet50), ``complementary_densenet121_x4`` (timm
densenet121), ``complementary_alexnet_x4`` (torchvision's AlexNet) on ImageNet; ``complementary_resnet56_x4``
(CIFAR ResNet-56 with 1x1 projection shortcuts, as the released code) and
``complementary_densenet_bc_k12_x4`` (DenseNet-BC-100, k = 12) on CIFAR-100; ``complementary_mlp_x4``
(LeCun et al.'s 784-300-10 MLP) on MNIST; and ``complementary``, any timm model times any tau:
``create_model("complementary", member="resnet18", tau=3)``.
"""
import contextlib
import inspect
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple, Union

import timm
import torch
import torch.nn.functional as F
from timm.models import FeatureInfo
from timm.models._features_fx import FeatureGraphNet
from torch import Tensor, nn

from ..builder import build_zoo_model
from ..convert import (add_hub_arguments, as_state_dict, check_state_dict_keys, finish_hub_folder,
                       read_torch_checkpoint, register_converter, strip_prefix)
from ..contract import (CollabModel, Heads, LossParts, TrainingRound, classifier_module_name,
                        deterministic_mode_of, forward_heads_of, group_ordinals, head_names_of, heads_of,
                        inherit_conformance_exemptions, is_soft_target, is_tracing, model_display_name, num_rounds_of,
                        parameters_left_unused_of, predict_of, weighted_mean)
from ..errors import IncompatibleConfigError
from ..registry import base_cfg, cifar_cfg, mnist_cfg, zoo_default_cfgs, zoo_model

_logger = logging.getLogger(__name__)

__all__ = [
    "ComplementaryEnsemble", "ClassStats", "Gamma", "heldout_class_stats", "fill_unmeasured", "weighted_error",
    "boosting_gamma", "update_importance", "normalise_importance", "member_weights_from_gammas",
    "ensemble_log_probs", "margin_objective", "weighted_cross_entropy", "class_weighted_loss",
    "importance_sample_weights", "class_counts_of", "ENSEMBLE_FORWARDS", "ERROR_KINDS", "EXPONENTS", "OBJECTIVES",
    "ON_WEAK", "DEFAULT_MU", "MIN_ERROR", "WEAK_MEMBER_GAMMA",
    "EnsembleFeatureGraph", "read_complementary_round", "convert_complementary",
]

ERROR_KINDS = ("soft", "hard")
EXPONENTS = ("paper", "code")
OBJECTIVES = ("margin", "weighted_ce")
ON_WEAK = ("clamp", "raise")
ENSEMBLE_FORWARDS = ("auto", "separate", "batched")
DEFAULT_MU = 0.7
MIN_ERROR = 1e-6
WEAK_MEMBER_GAMMA = 1.0 - 1e-3


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise IncompatibleConfigError(f"{name} must be one of {tuple(choices)}, got {value!r}.")


def _check_mu(mu: float) -> float:
    mu = float(mu)
    if not (math.isfinite(mu) and mu > 0):
        raise IncompatibleConfigError(f"mu must be a positive number (the paper uses 0.7, Sec. 3.3), got {mu}.")
    return mu


# --- Eq. 4: per-class error on held-out images -------------------------------------------------------------------

@dataclass
class ClassStats:
    """Per-class results of one network on held-out images (float64, CPU).

    ``error`` is eps_t(C_l) and ``accuracy`` the top-1 recall, both 0 where ``measured`` is False (no held-out
    image of that class; see ``fill_unmeasured``). ``count`` is R_l.
    """

    error: Tensor
    accuracy: Tensor
    count: Tensor
    measured: Tensor

    @property
    def top1(self) -> float:
        """The network's overall held-out top-1 accuracy."""
        return float((self.accuracy * self.count).sum() / self.count.sum().clamp(min=1))


def _class_indices(targets: Tensor, num_samples: int, num_classes: int) -> Tensor:
    if is_soft_target(targets):
        raise IncompatibleConfigError(
            "held-out targets must be class indices: per-class errors count the images of each class, and a soft "
            "(mixup/cutmix) target has no single class. Evaluate the held-out split without mixing.")
    targets = targets.reshape(-1)
    if targets.is_floating_point() or targets.numel() != num_samples:
        raise IncompatibleConfigError(
            f"held-out targets must be {num_samples} integer class indices (one per logits row), got "
            f"{tuple(targets.shape)} of {targets.dtype}.")
    targets = targets.detach().to("cpu", torch.long)
    if num_samples and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise IncompatibleConfigError(
            f"held-out targets must lie in [0, {num_classes}), got {int(targets.min())}..{int(targets.max())}.")
    return targets


def heldout_class_stats(logits: Tensor, targets: Tensor, kind: str = "soft", chunk_size: int = 8192) -> ClassStats:
    """eps_t(C_l) for every class from one network's held-out logits [R, N] and class indices [R].

    ``kind="soft"`` is Eq. 4: half the mean missing probability on the class's own images plus half the mean
    probability the class takes on other images. ``kind="hard"`` is the class's top-1 miss rate
    ``1/R_l sum_{y_i = l} 1(yhat_i != l)`` (the released code). Sums run in float64 over chunks of rows, so an
    ImageNet-sized held-out set does not need an [R, N] float64 copy.
    """
    _check_choice("error", kind, ERROR_KINDS)
    if logits.dim() != 2:
        raise IncompatibleConfigError(f"held-out logits must be [images, classes], got {tuple(logits.shape)}.")
    num_samples, num_classes = logits.shape
    if num_samples == 0:
        raise IncompatibleConfigError("the held-out split is empty: per-class errors need held-out images.")
    targets = _class_indices(targets, num_samples, num_classes)
    dtype = torch.float64
    own_missing = torch.zeros(num_classes, dtype=dtype)        # sum over own images of 1 - p(C_l|x)
    other_mass = torch.zeros(num_classes, dtype=dtype)         # sum over other images of p(C_l|x)
    correct = torch.zeros(num_classes, dtype=dtype)
    for start in range(0, num_samples, chunk_size):
        z = logits[start:start + chunk_size].detach().to("cpu", dtype)
        y = targets[start:start + chunk_size]
        p = torch.softmax(z, dim=-1)
        p_own = p.gather(1, y[:, None]).squeeze(1)
        own_missing.index_add_(0, y, 1.0 - p_own)
        other_mass += p.sum(0) - torch.zeros(num_classes, dtype=dtype).index_add_(0, y, p_own)
        correct.index_add_(0, y, (z.argmax(dim=-1) == y).to(dtype))
    count = torch.bincount(targets, minlength=num_classes).to(dtype)
    own_missing.clamp_(min=0.0)  # 1 - p rounds to a hair below 0 when p rounds to a hair above 1
    measured = count > 0
    own_count = count.clamp(min=1)
    other_count = (num_samples - count).clamp(min=1)
    accuracy = torch.where(measured, correct / own_count, torch.zeros_like(count))
    if kind == "hard":
        error = torch.where(measured, 1.0 - accuracy, torch.zeros_like(count))
    else:
        error = torch.where(measured, 0.5 * (own_missing / own_count + other_mass / other_count),
                            torch.zeros_like(count))
    return ClassStats(error=error, accuracy=accuracy, count=count.long(), measured=measured)


def fill_unmeasured(errors: Tensor, measured: Tensor, importance: Tensor) -> Tensor:
    """A class without held-out images takes the importance-weighted mean error of the measured classes.

    That mean is eps_t computed over the measured classes alone, so filling leaves ``weighted_error``
    unchanged, and the class's importance moves as an average class's would.
    """
    if bool(measured.all()):
        return errors
    varphi = normalise_importance(importance)[measured]
    mean = (varphi * errors[measured]).sum() / varphi.sum()
    return torch.where(measured, errors, mean.expand_as(errors))


# --- Eq. 5, 8, 6, 7 ----------------------------------------------------------------------------------------------

def normalise_importance(importance: Tensor) -> Tensor:
    """Eq. 7: varphi(C_l) = phi(C_l) / sum_j phi(C_j). Importance must be finite, >= 0, not all zero."""
    importance = importance.to(torch.float64)
    if not bool(torch.isfinite(importance).all()) or bool((importance < 0).any()):
        raise IncompatibleConfigError("class importance must be finite and non-negative.")
    total = importance.sum()
    if not bool(total > 0):
        raise IncompatibleConfigError("class importance is zero for every class; nothing would be trained.")
    return importance / total


def weighted_error(errors: Tensor, importance: Tensor) -> float:
    """Eq. 5: eps_t = sum_l varphi_t(C_l) eps_t(C_l), with varphi_t the normalised importance."""
    errors = errors.to(torch.float64)
    if not bool(torch.isfinite(errors).all()) or bool((errors < -1e-9).any()) or bool((errors > 1 + 1e-9).any()):
        raise IncompatibleConfigError("per-class errors must lie in [0, 1].")
    errors = errors.clamp(0.0, 1.0)
    return float((normalise_importance(importance) * errors).sum())


class Gamma(NamedTuple):
    """gamma_t and how it was reached: ``error`` is the eps_t it used (after the floor)."""

    value: float
    error: float
    floored: bool
    clamped: bool


def boosting_gamma(eps: float, mu: float = DEFAULT_MU, on_weak: str = "clamp", min_error: float = MIN_ERROR) -> Gamma:
    """Eq. 8: gamma_t = mu eps_t / (1 - mu eps_t), kept inside (0, 1).

    ``eps < min_error`` is floored at ``min_error`` (eps_t = 0 would give gamma_t = 0, an infinite member
    weight). ``mu * eps >= 1/2`` (gamma_t >= 1, a member weight <= 0) gives ``WEAK_MEMBER_GAMMA`` under
    ``on_weak="clamp"`` and an error under ``on_weak="raise"``.
    """
    mu = _check_mu(mu)
    _check_choice("on_weak", on_weak, ON_WEAK)
    eps = float(eps)
    if not (math.isfinite(eps) and 0.0 <= eps <= 1.0):
        raise IncompatibleConfigError(f"the weighted error eps_t must lie in [0, 1], got {eps}.")
    if not 0.0 < min_error < 0.5 / mu:
        raise IncompatibleConfigError(f"min_error must lie in (0, 1/(2 mu)) = (0, {0.5 / mu:.4g}), got {min_error}.")
    floored = eps < min_error
    used = max(eps, min_error)
    scaled = mu * used
    if scaled >= 0.5:
        if on_weak == "raise":
            raise IncompatibleConfigError(
                f"mu * eps_t = {mu} * {used:.4f} = {scaled:.4f} >= 1/2, so gamma_t = {scaled / (1 - scaled):.4f} >= 1 "
                f"and this member's ensemble weight log(1/gamma_t) would be <= 0 (the paper needs mu < 1/(2 eps_t), "
                f"Sec. 3.3). Use mu < {0.5 / used:.4f}, train the member further, or pass on_weak='clamp' to keep it "
                "with a negligible weight.")
        return Gamma(WEAK_MEMBER_GAMMA, used, floored, True)
    return Gamma(scaled / (1.0 - scaled), used, floored, False)


def update_importance(importance: Tensor, errors: Tensor, gamma: float, mu: float = DEFAULT_MU,
                      exponent: str = "paper") -> Tensor:
    """Eq. 6 then Eq. 7: phi_{t+1}(C_l) = phi_t(C_l) gamma_t ** (1 - mu eps_t(C_l)), normalised.

    ``exponent="code"`` is the released code's ``gamma_t ** (1 - eps_t(C_l))``. Since gamma_t < 1, a class with
    a larger error gets a larger multiplier. The update is scale-free, so the normalised importance of the
    previous round is as good an input as the unnormalised one, and its output sums to 1.
    """
    _check_choice("exponent", exponent, EXPONENTS)
    mu = _check_mu(mu)
    if not 0.0 < gamma < 1.0:
        raise IncompatibleConfigError(f"gamma_t must lie in (0, 1), got {gamma}.")
    scale = mu if exponent == "paper" else 1.0
    phi = normalise_importance(importance)
    following = phi * torch.pow(torch.tensor(gamma, dtype=torch.float64), 1.0 - scale * errors.to(torch.float64))
    return normalise_importance(following)


# --- Eq. 9: the ensemble ------------------------------------------------------------------------------------------

def member_weights_from_gammas(gammas: Union[Tensor, Sequence[float]]) -> Tensor:
    """Eq. 9's weights: log(1/gamma_t) / Z, Z = sum_t log(1/gamma_t) (float64)."""
    gammas = torch.as_tensor(gammas, dtype=torch.float64).detach().cpu().reshape(-1)
    if gammas.numel() == 0:
        raise IncompatibleConfigError("an ensemble needs at least one member with a gamma.")
    if not bool(((gammas > 0) & (gammas < 1)).all()):
        raise IncompatibleConfigError(
            f"every gamma_t must lie in (0, 1) for a positive member weight log(1/gamma_t); got {gammas.tolist()}.")
    weights = -torch.log(gammas)
    return weights / weights.sum()


def _mix_log_probs(member_logits: Sequence[Tensor], weights: Tensor) -> Tensor:
    """log sum_t w_t softmax(z_t), computed as a logsumexp of log w_t + log_softmax(z_t) (float32)."""
    return _mix_with_log_weights(member_logits, torch.log(weights))


def _mix_with_log_weights(member_logits: Sequence[Tensor], log_weights: Tensor) -> Tensor:
    # One log_softmax over the stacked members: a small ensemble's eval is otherwise dominated by per-op overhead.
    log_p = F.log_softmax(torch.stack([z.float() for z in member_logits]), dim=-1)          # [T, B, N]
    log_w = log_weights.to(device=log_p.device, dtype=log_p.dtype)
    return torch.logsumexp(log_p + log_w.view(-1, *([1] * (log_p.dim() - 1))), dim=0)


def ensemble_log_probs(member_logits: Sequence[Tensor], gammas: Union[Tensor, Sequence[float]]) -> Tensor:
    """log F(x), F(x) = 1/Z sum_t log(1/gamma_t) softmax(f_t(x)) (Eq. 9), from each member's logits."""
    if len(member_logits) != len(torch.as_tensor(gammas).reshape(-1)):
        raise IncompatibleConfigError("ensemble_log_probs needs one gamma per member's logits.")
    return _mix_log_probs(member_logits, member_weights_from_gammas(gammas))


# --- Eq. 2-3 and the released code's loss -------------------------------------------------------------------------

def _target_rows(target: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    if is_soft_target(target):
        if target.shape[-1] != num_classes:
            raise IncompatibleConfigError(f"soft targets have {target.shape[-1]} columns for {num_classes} classes.")
        return target.to(dtype)
    return F.one_hot(target.long(), num_classes).to(dtype)


def _check_sample_weight(sample_weight: Optional[Tensor], batch: int) -> Optional[Tensor]:
    if sample_weight is None:
        return None
    if sample_weight.dim() != 1 or sample_weight.shape[0] != batch:
        raise IncompatibleConfigError(
            f"sample_weight must be one weight per sample, shape [{batch}]; got {tuple(sample_weight.shape)}.")
    return sample_weight


def margin_objective(logits: Tensor, target: Tensor, importance: Tensor, class_frequency: Optional[Tensor] = None,
                     sample_weight: Optional[Tensor] = None) -> Tuple[Tensor, LossParts]:
    """-Omega_t (Eq. 2-3) estimated on a batch; hard or soft targets.

    Per image, ``omega_i = sum_l q_il varphi_l / f_l log p_il - sum_l (1 - q_il) varphi_l / (1 - f_l) log p_il``
    (``f_l`` = R_l / R, the training set's class frequencies; uniform when not given); the loss is
    ``-weighted_mean(omega, sample_weight)``. The indicator 1(y_i = C_l) enters linearly, so a soft target's
    probabilities take its place.
    """
    z = logits.float()
    num_classes = z.shape[-1]
    if num_classes < 2:
        raise IncompatibleConfigError("the margin objective needs at least two classes.")
    sample_weight = _check_sample_weight(sample_weight, z.shape[0])
    log_p = F.log_softmax(z, dim=-1)
    q = _target_rows(target, num_classes, z.dtype)
    varphi = importance.to(device=z.device, dtype=z.dtype)
    varphi = varphi / varphi.sum()
    if class_frequency is None:
        frequency = torch.full_like(varphi, 1.0 / num_classes)
    else:
        frequency = class_frequency.to(device=z.device, dtype=torch.float64)
        frequency = (frequency / frequency.sum()).to(z.dtype)
        if bool((frequency <= 0).any()) or bool((frequency >= 1).any()):
            raise IncompatibleConfigError(
                "class frequencies must be positive for every class and below 1: the margin objective (Eq. 3) "
                "averages over each class's own images and over the other classes' images, so every class needs "
                "training images and at least two classes must have them.")
    own = (q * log_p * (varphi / frequency)).sum(-1)
    other = ((1.0 - q) * log_p * (varphi / (1.0 - frequency))).sum(-1)
    omega = own - other
    loss = -weighted_mean(omega, sample_weight)
    return loss, {"own_log_conf": weighted_mean(own, sample_weight).detach(),
                  "other_log_conf": weighted_mean(other, sample_weight).detach(), "total": loss.detach()}


def weighted_cross_entropy(logits: Tensor, target: Tensor, importance: Tensor,
                           sample_weight: Optional[Tensor] = None) -> Tuple[Tensor, LossParts]:
    """The released code's loss: cross-entropy with class weights = importance, divided by the batch's
    summed weight, ``sum_i s_i sum_l q_il w_l (-log p_il) / sum_i sum_l q_il w_l`` (for hard targets and no
    ``sample_weight`` exactly ``F.cross_entropy(logits, target, weight=importance)``). ``sample_weight`` s_i
    scales each image's term, as the contract's ``weighted_mean`` does (not renormalised)."""
    z = logits.float()
    sample_weight = _check_sample_weight(sample_weight, z.shape[0])
    log_p = F.log_softmax(z, dim=-1)
    q = _target_rows(target, z.shape[-1], z.dtype)
    weighted_q = q * importance.to(device=z.device, dtype=z.dtype)
    per_sample = -(weighted_q * log_p).sum(-1)
    if sample_weight is not None:
        per_sample = per_sample * sample_weight.to(per_sample.dtype)
    loss = per_sample.sum() / weighted_q.sum()
    return loss, {"weighted_ce": loss.detach(), "total": loss.detach()}


def class_weighted_loss(objective: str, logits: Tensor, target: Tensor, importance: Tensor,
                        class_frequency: Optional[Tensor] = None, sample_weight: Optional[Tensor] = None
                        ) -> Tuple[Tensor, LossParts]:
    """The round's training objective by name: ``"margin"`` (paper) or ``"weighted_ce"`` (released code)."""
    _check_choice("objective", objective, OBJECTIVES)
    if objective == "margin":
        return margin_objective(logits, target, importance, class_frequency, sample_weight)
    return weighted_cross_entropy(logits, target, importance, sample_weight)


def importance_sample_weights(target: Tensor, importance: Tensor) -> Tensor:
    """Each image's weight in a composed member's round: its class's importance (a soft target's expectation
    of it, ``sum_l q_il varphi_l``), divided by the batch mean so that the weights average 1.

    With hard targets, ``weighted_mean(ce_i, w)`` is then exactly the released code's weighted cross-entropy,
    ``sum_i varphi_{y_i} ce_i / sum_i varphi_{y_i}``; and a member's terms that are not per-sample keep their
    scale relative to the weighted ones."""
    varphi = importance.detach().to(device=target.device, dtype=torch.float32)
    if is_soft_target(target):
        raw = target.detach().float() @ varphi
    else:
        raw = varphi[target.long()]
    return raw / raw.mean().clamp(min=torch.finfo(raw.dtype).tiny)


def class_counts_of(source: Any, num_classes: int) -> Tensor:
    """R_l, the number of images of each class, from a training set: a tensor or sequence of class indices, a
    dataset with ``targets`` (every collab_zoo and torchvision dataset), or a loader (its dataset's ``targets``,
    else the targets of every batch it yields, read once)."""
    targets: Any = source
    if isinstance(source, torch.utils.data.DataLoader):
        targets = getattr(source.dataset, "targets", None)
        if targets is None:
            targets = torch.cat([torch.as_tensor(batch[1]).reshape(-1) for batch in source]) if len(source) else []
    elif not isinstance(source, (Tensor, list, tuple)) and hasattr(source, "targets"):
        targets = source.targets
    try:
        targets = torch.as_tensor(targets)
    except (TypeError, ValueError, RuntimeError):
        raise IncompatibleConfigError(
            f"class counts come from class indices, a dataset with `targets` or a loader; got "
            f"{type(source).__name__}.") from None
    if is_soft_target(targets):
        raise IncompatibleConfigError("class counts need class indices, not soft (mixup/cutmix) targets.")
    return torch.bincount(_class_indices(targets, targets.numel(), num_classes), minlength=num_classes)


# --- the model -----------------------------------------------------------------------------------------------------

def _main_logits(output: Union[Tensor, Sequence[Tensor]]) -> Tensor:
    return heads_of(output)[-1]


class _RoundObjective:
    """Round t's loss, reading the model's importance row at call time (so it follows device moves).

    A plain member: the class-weighted objective on its logits. A member with its own ``collab_loss`` (DKS,
    CLDL, DCL, ...): that loss, every image weighted by its class's importance (``importance_sample_weights``).
    Part names are the objective's or the member's own, prefixed ``member<t>_``."""

    def __init__(self, model: "ComplementaryEnsemble", index: int):
        self.model, self.index = model, index

    def __call__(self, outputs: Union[Tensor, Sequence[Tensor]], target: Tensor,
                 sample_weight: Optional[Tensor] = None) -> Tuple[Tensor, LossParts]:
        model, index = self.model, self.index
        if model.member_has_own_loss[index]:
            weights = importance_sample_weights(target, model.importance[index])
            if sample_weight is not None:
                weights = weights * _check_sample_weight(sample_weight, weights.shape[0]).to(weights)
            loss, parts = model.members[index].collab_loss(heads_of(outputs), target, sample_weight=weights)
        else:
            loss, parts = class_weighted_loss(model.objective, _main_logits(outputs), target, model.importance[index],
                                              model.training_class_frequency(), sample_weight)
        named = {f"member{index + 1}_{k}" if k != "total" else k: v for k, v in parts.items()}
        named.setdefault("total", loss.detach())
        return loss, named


def _member_has_own_loss(member: nn.Module, objective: str) -> bool:
    """Whether a member trains with its own ``collab_loss`` (weighted per sample by the round's class importance)
    or with the round's class-weighted objective (a plain network); an error for a member boosting cannot train
    as asked, so that no combination falls back to another loss without saying so."""
    name = model_display_name(member)
    rounds = num_rounds_of(member)
    if rounds != 1:
        raise IncompatibleConfigError(
            f"member {name} trains in {rounds} rounds of its own, but a boosting round trains its member in one: "
            "an ensemble of boosting ensembles is not defined. Use a single-round model as the member (a plain "
            "network, or a DKS, CLDL or DCL model).")
    loss = getattr(member, "collab_loss", None)
    if loss is None:
        return False
    parameters = inspect.signature(loss).parameters
    if "sample_weight" not in parameters and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        raise IncompatibleConfigError(
            f"member {name}'s collab_loss takes no sample_weight, so a boosting round cannot weight its loss by "
            "class importance (it would have to drop the member's own objective for plain cross-entropy, which "
            "this zoo does not do silently). Its method needs collab_loss(outputs, target, sample_weight=None) "
            "with contract.weighted_mean; until then use a plain network as the member.")
    if objective == "margin":
        raise IncompatibleConfigError(
            f"objective='margin' (Eq. 2-3) replaces the loss of a single-head network; member {name} trains with "
            "its own collab_loss, which a round can only weight per image by class importance. Use "
            "objective='weighted_ce' (the default: the member's own loss, importance-weighted), or a plain "
            "network as the member for the margin objective.")
    return True


class ComplementaryEnsemble(CollabModel):
    """tau networks trained in class-level boosting rounds, combined by Eq. 9. See the module docstring."""

    __jit_unused_properties__ = ["tau", "num_classes", "num_features", "head_hidden_size", "feature_info",
                                 "training_only_prefixes"]
    leaves_parameters_unused = True
    # The buffers that carry the boosting run from round to round (and through a checkpoint).
    ROUND_STATE = ("gammas", "importance", "class_error", "class_accuracy", "class_measured", "weighted_errors",
                   "rounds_completed", "current_round", "class_counts")

    def __init__(self, members: Sequence[nn.Module], mu: float = DEFAULT_MU, error: str = "soft",
                 exponent: str = "paper", objective: str = "weighted_ce", on_weak: str = "clamp",
                 min_error: float = MIN_ERROR, ensemble_forward: str = "auto"):
        super().__init__()
        members = list(members)
        if not members:
            raise IncompatibleConfigError("a complementary ensemble needs at least one member (tau >= 1).")
        classes = {int(m.num_classes) for m in members}
        if len(classes) != 1:
            raise IncompatibleConfigError(f"every member must have the same number of classes, got {sorted(classes)}.")
        for name, value, choices in (("error", error, ERROR_KINDS), ("exponent", exponent, EXPONENTS),
                                     ("objective", objective, OBJECTIVES), ("on_weak", on_weak, ON_WEAK),
                                     ("ensemble_forward", ensemble_forward, ENSEMBLE_FORWARDS)):
            _check_choice(name, value, choices)
        self.mu = _check_mu(mu)
        boosting_gamma(0.0, self.mu, on_weak, min_error)  # validates min_error against mu
        self.error, self.exponent, self.objective, self.on_weak = error, exponent, objective, on_weak
        self.min_error = float(min_error)
        self.ensemble_forward = ensemble_forward
        self._batched_refused = False
        self.member_has_own_loss = tuple(_member_has_own_loss(m, objective) for m in members)
        self.members = nn.ModuleList(members)
        self.num_rounds = len(members)
        # A member with its own heads shows them all (member<t>_<head>); a plain member is one head, member<t>.
        names: List[str] = []
        counts: List[int] = []
        for index, (member, own) in enumerate(zip(members, self.member_has_own_loss)):
            member_names = head_names_of(member) if own else ("main",)
            counts.append(len(member_names))
            names += [f"member{index + 1}"] if len(member_names) == 1 else [
                f"member{index + 1}_{h}" for h in member_names]
        self.heads_per_member = tuple(counts)
        self.head_names = tuple(names)
        self._register_round_state(classes.pop())

    def _register_round_state(self, num_classes: int) -> None:
        tau = len(self.members)
        columns = max(num_classes, 0)
        device = next(iter(self.members.parameters()), torch.empty(0)).device
        fill = 1.0 / columns if columns else 0.0
        state = {
            "gammas": torch.ones(tau, device=device),
            "importance": torch.full((tau + 1, columns), fill, device=device),
            "class_error": torch.zeros(tau, columns, device=device),
            "class_accuracy": torch.zeros(tau, columns, device=device),
            "class_measured": torch.zeros(tau, columns, dtype=torch.bool, device=device),
            "weighted_errors": torch.zeros(tau, device=device),
            "rounds_completed": torch.zeros((), dtype=torch.long, device=device),
            "current_round": torch.zeros((), dtype=torch.long, device=device),
            # R_l of the training set, for the margin objective (0 everywhere: not given yet); integers, so that
            # model.half() cannot round them.
            "class_counts": torch.zeros(columns, dtype=torch.long, device=device),
        }
        for name, value in state.items():
            self.register_buffer(name, value)

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, mu={self.mu}, error={self.error!r}, exponent={self.exponent!r}, "
                f"objective={self.objective!r}, on_weak={self.on_weak!r}, ensemble_forward={self.ensemble_forward!r}")

    # -- sizes --------------------------------------------------------------------------------------------
    @property
    def tau(self) -> int:
        return len(self.members)

    @property
    def num_classes(self) -> int:
        return int(self.members[0].num_classes)

    @property
    def num_features(self) -> int:
        """Channels of ``forward_features``: every member's features side by side."""
        return sum(int(m.num_features) for m in self.members)

    @property
    def head_hidden_size(self) -> int:
        return sum(int(getattr(m, "head_hidden_size", m.num_features)) for m in self.members)

    @property
    def feature_info(self) -> List[Dict[str, Any]]:
        """The first member's levels, each with every member's channels (``forward_intermediates`` concatenates)."""
        return [dict(info, num_chs=info["num_chs"] * self.tau, module=f"members.0.{info['module']}")
                for info in self.members[0].feature_info]

    # -- which members count ------------------------------------------------------------------------------
    def _active_index(self) -> int:
        return int(self.current_round)

    def member_weights(self) -> Tensor:
        """The weight of each member in F (float64, CPU): log(1/gamma_t) / Z over the completed rounds, 0 for the
        others; before any round completes, 1 for the member of the round in progress."""
        weights = torch.zeros(self.tau, dtype=torch.float64)
        completed = int(self.rounds_completed)
        if completed == 0:
            weights[self._active_index()] = 1.0
        else:
            weights[:completed] = member_weights_from_gammas(self.gammas[:completed])
        return weights

    def train(self, mode: bool = True) -> "ComplementaryEnsemble":
        """Only the member of the round in progress follows ``mode``; the others stay in eval mode."""
        super().train(mode)
        if self.current_round.is_meta:
            return self
        active = self._active_index()
        for index, member in enumerate(self.members):
            if index != active:
                member.train(False)
        return self

    # -- the contract -------------------------------------------------------------------------------------
    def _member_heads(self, index: int, x: Tensor) -> List[Tensor]:
        member = self.members[index]
        if self.member_has_own_loss[index]:
            return list(forward_heads_of(member, x))
        return [_main_logits(member(x))]

    def forward_heads(self, x: Tensor) -> Heads:
        """Every member's heads side by side (``head_names``): a plain member's logits, or all heads of a member
        with its own (the logits its own inference rule reads). In training, the members of other rounds run in
        eval mode without gradient."""
        active = self._active_index()
        outputs: List[Tensor] = []
        for index in range(self.tau):
            if self.training and index != active:
                if is_tracing():  # a graph cannot hold no_grad around a call; detaching cuts the same gradient
                    outputs += [h.detach() for h in self._member_heads(index, x)]
                else:
                    with torch.no_grad():
                        outputs += self._member_heads(index, x)
            else:
                outputs += self._member_heads(index, x)
        return tuple(outputs)

    def member_scores(self, heads: Heads) -> List[Tensor]:
        """Each member's scores by its own inference rule (CLDL's Eq. 9, DKS's main head, a plain network's
        logits), from the heads of ``forward_heads``."""
        if len(heads) != sum(self.heads_per_member):
            raise IncompatibleConfigError(
                f"expected the {sum(self.heads_per_member)} heads of forward_heads ({', '.join(self.head_names)}), "
                f"got {len(heads)}.")
        scores: List[Tensor] = []
        start = 0
        for index, count in enumerate(self.heads_per_member):
            chunk = tuple(heads[start:start + count])
            start += count
            scores.append(predict_of(self.members[index], chunk) if self.member_has_own_loss[index] else chunk[0])
        return scores

    def _used_members(self) -> Tuple[List[int], Tensor]:
        """The members F uses and their log weights, recomputed only when the round buffers change (their
        versions count every in-place write, load_state_dict's included): reading them costs a small
        ensemble's eval more than its mixing does."""
        buffers = (self.gammas, self.rounds_completed, self.current_round)
        key = tuple((id(b), b._version, b.dtype) for b in buffers)
        cached = self.__dict__.get("_used_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        weights = self.member_weights()
        used = [i for i, w in enumerate(weights.tolist()) if w > 0]
        value = (used, torch.log(weights[used]).float())
        self.__dict__["_used_cache"] = (key, value)
        return value

    def predict(self, heads: Heads) -> Tensor:
        scores = self.member_scores(heads)
        used, log_weights = self._used_members()
        return _mix_with_log_weights([scores[i] for i in used], log_weights)

    def forward_inference(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._log_f_in_graph(x)
        else:
            if self.num_classes <= 0:
                return self.forward_head(self.forward_features(x), pre_logits=True)
            if is_tracing():
                return self._log_f_in_graph(x)
            return self._log_f_of_used_members(x)

    def _log_f_of_used_members(self, x: Tensor) -> Tensor:
        used, log_weights = self._used_members()
        return _mix_with_log_weights(self.scores_of_members(x, used), log_weights)

    # -- the members' eval forwards: one after another, or batched over members ------------------------------
    def _batched(self, x: Tensor, count: int) -> bool:
        """Whether to run the members as one batched (vmapped) forward. "auto": on CUDA, where one launch per
        layer for all members can beat one per member; on the CPU separate forwards are faster (a batched
        convolution becomes a grouped one there: benchmarks/results/composition_forward.json)."""
        if count < 2 or self.ensemble_forward == "separate":
            return False
        if self.ensemble_forward == "batched":
            return True
        return x.device.type == "cuda" and not self._batched_refused

    def scores_of_members(self, x: Tensor, indices: Optional[Sequence[int]] = None) -> List[Tensor]:
        """Eval-mode scores of the members ``indices`` (default: all) on ``x``, each by its own inference rule;
        the same values by either path (``ensemble_forward``)."""
        indices = list(range(self.tau)) if indices is None else list(indices)
        if self._batched(x, len(indices)):
            try:
                return self._batched_scores(x, indices)
            except (RuntimeError, ValueError, NotImplementedError) as error:
                if self.ensemble_forward == "batched":
                    raise IncompatibleConfigError(
                        f"ensemble_forward='batched': these members cannot run as one vmapped forward ({error}). "
                        "Use ensemble_forward='separate' (or 'auto').") from error
                self._batched_refused = True
                _logger.info("The members cannot run as one vmapped forward (%s); running them one by one.", error)
        return [_main_logits(self.members[i](x)) for i in indices]

    def _batched_scores(self, x: Tensor, indices: Sequence[int]) -> List[Tensor]:
        from torch.func import functional_call, vmap

        members = [self.members[i] for i in indices]
        if any(m.training for m in members):
            raise RuntimeError("members in training mode update their statistics and cannot be batched")
        carrier = members[0]
        named = [dict(m.named_parameters()) for m in members]
        buffers = [dict(m.named_buffers()) for m in members]
        if any(n.keys() != named[0].keys() for n in named) or any(b.keys() != buffers[0].keys() for b in buffers):
            raise RuntimeError("the members differ in their parameters")
        # torch.stack keeps the autograd graph: gradients still reach each member's own parameters.
        params = {k: torch.stack([n[k] for n in named]) for k in named[0]}
        stacked_buffers = {k: torch.stack([b[k] for b in buffers]) for k in buffers[0]}

        def run(p: Dict[str, Tensor], b: Dict[str, Tensor], inputs: Tensor) -> Tensor:
            return _main_logits(functional_call(carrier, (p, b), (inputs,)))

        return list(vmap(run, in_dims=(0, 0, None))(params, stacked_buffers, x).unbind(0))

    def _member_weights_in_graph(self) -> Tensor:
        """``member_weights()`` from the round buffers with tensor operations only (float64, the buffers'
        device): what a traced or scripted graph computes, for whatever boosting state it is given."""
        gammas = self.gammas.to(torch.float64)
        index = torch.arange(gammas.shape[0], device=gammas.device)
        completed = index < self.rounds_completed
        raw = torch.where(completed, -torch.log(gammas), torch.zeros_like(gammas))
        mixed = raw / raw.sum()
        alone = (index == self.current_round).to(torch.float64)
        return torch.where(self.rounds_completed > 0, mixed, alone)

    def _log_f_in_graph(self, x: Tensor) -> Tensor:
        """log F(x) over every member, a member outside F weighted 0 (log weight -inf): the same values as
        the eager forward, which runs only the members F uses."""
        log_probs: List[Tensor] = []
        for member in self.members:
            log_probs.append(F.log_softmax(member(x).float(), dim=-1))
        log_p = torch.stack(log_probs)                                                        # [T, B, N]
        log_w = torch.log(self._member_weights_in_graph().to(device=log_p.device, dtype=log_p.dtype))
        return torch.logsumexp(log_p + log_w.view(-1, 1, 1), dim=0)

    def parameters_left_unused(self) -> Set[str]:
        """Every member but the one whose round is in progress (boosting trains one network per round), and
        what that member's own step leaves out (e.g. a stochastic DCL draw's idle branches)."""
        active = self._active_index()
        unused = {f"members.{i}.{name}" for i, member in enumerate(self.members) if i != active
                  for name, _ in member.named_parameters()}
        return unused | {f"members.{active}.{name}" for name in parameters_left_unused_of(self.members[active])}

    def deterministic_mode(self):
        """The deterministic counterpart of the training member's random choices (its own deterministic_mode)."""
        return deterministic_mode_of(self.members[self._active_index()])

    def collab_loss(self, outputs: Heads, target: Tensor,
                    sample_weight: Optional[Tensor] = None) -> Tuple[Tensor, LossParts]:
        """The round in progress's objective on its member's heads (see ``_RoundObjective``); ``sample_weight``
        multiplies the class-importance weighting per image."""
        outputs = heads_of(outputs)
        if len(outputs) != len(self.head_names):
            raise IncompatibleConfigError(
                f"collab_loss expects the {len(self.head_names)} heads of a train-mode forward "
                f"({', '.join(self.head_names)}), got {len(outputs)}.")
        active = self._active_index()
        start = sum(self.heads_per_member[:active])
        own = outputs[start:start + self.heads_per_member[active]]
        return _RoundObjective(self, active)(own, target, sample_weight)

    # -- the training set's class frequencies (the margin objective) --------------------------------------------
    def set_class_counts(self, source: Any) -> Tensor:
        """Record R_l, the training set's images per class, which the margin objective (Eq. 3) divides by: from
        the round's training loader, its dataset, or its targets (``class_counts_of``). Returns the counts."""
        counts = class_counts_of(source, self.num_classes)
        with torch.no_grad():
            self.class_counts.copy_(counts.to(self.class_counts.device))
        return counts

    def training_class_frequency(self) -> Optional[Tensor]:
        """f_l = R_l / R for the margin objective (None for weighted_ce, which does not use it)."""
        if self.objective != "margin":
            return None
        counts = self.class_counts
        if not bool((counts > 0).any()):
            raise IncompatibleConfigError(
                "objective='margin' estimates Eq. 2-3 with the training set's class frequencies R_l / R, and none "
                "were given: call model.set_class_counts(train_loader) (or its dataset, or its targets) before "
                "training a round.")
        return counts.to(torch.float64) / counts.sum()

    @property
    def training_only_prefixes(self) -> Tuple[str, ...]:
        """The members' own training-only parts (e.g. DKS's auxiliary heads): the ensemble's inference, each
        member's inference rule, does not need them."""
        return tuple(f"members.{i}.{prefix}" for i, member in enumerate(self.members)
                     for prefix in getattr(member, "training_only_prefixes", ()))

    # -- rounds -------------------------------------------------------------------------------------------
    def _check_round(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < self.tau:
            raise IndexError(f"this ensemble has {self.tau} rounds (0..{self.tau - 1}); asked for round {index}.")
        completed = int(self.rounds_completed)
        if index > completed:
            raise IncompatibleConfigError(
                f"round {index} (member {index + 1}) needs the importance that completing round {completed} gives; "
                f"{completed} round(s) are complete. Train and complete the rounds in order.")
        return index

    def training_round(self, index: int) -> TrainingRound:
        index = self._check_round(index)
        if index < int(self.rounds_completed):
            _logger.info("Round %d is already complete; completing it again replaces it and discards the rounds "
                         "after it.", index + 1)
        with torch.no_grad():
            self.current_round.fill_(index)
        self.train(self.training)
        start = sum(self.heads_per_member[:index])
        objective = (f"its own collab_loss, each image weighted by its class's importance (row {index})"
                     if self.member_has_own_loss[index] else
                     f"the {self.objective} objective, classes weighted by importance row {index}")
        return TrainingRound(
            index=index, module=self.members[index], loss=_RoundObjective(self, index),
            head_names=tuple(self.head_names[start:start + self.heads_per_member[index]]), needs_heldout=True,
            description=f"complementary round {index + 1}/{self.tau}: member {index + 1} with {objective}")

    def _round_logits(self, index: int, heldout_logits: Union[Tensor, Sequence[Tensor]]) -> Tensor:
        """Member ``index``'s held-out scores by its own inference rule, from: one tensor (those scores), the
        member's heads (what ``training_round(index).module`` gives; its ``predict`` applies), or every head of
        the ensemble's ``forward_heads``."""
        heads = heads_of(heldout_logits)
        count = self.heads_per_member[index]
        if len(heads) == 1:
            return heads[0]
        if len(heads) == sum(self.heads_per_member):
            start = sum(self.heads_per_member[:index])
            heads = heads[start:start + count]
        if len(heads) == count:
            return predict_of(self.members[index], tuple(heads)) if self.member_has_own_loss[index] else heads[0]
        raise IncompatibleConfigError(
            f"complete_round takes member {index + 1}'s held-out scores (a tuple with one tensor), its {count} "
            f"heads, or all {sum(self.heads_per_member)} heads of the ensemble; got {len(heads)} tensors.")

    @torch.no_grad()
    def _forget_rounds_after(self, index: int) -> None:
        """Round ``index`` is being redone: what came after it no longer follows from it."""
        self.gammas[index + 1:] = 1.0
        if self.importance.shape[1]:
            self.importance[index + 2:] = 1.0 / self.importance.shape[1]
        self.class_error[index + 1:] = 0.0
        self.class_accuracy[index + 1:] = 0.0
        self.class_measured[index + 1:] = False
        self.weighted_errors[index + 1:] = 0.0

    def complete_round(self, index: int, heldout_logits: Optional[Heads] = None,
                       heldout_targets: Optional[Tensor] = None) -> Dict[str, Any]:
        """Eq. 4-8 on member ``index``'s held-out predictions: stores gamma_t, the next importance and the
        round's per-class record; returns the numbers worth logging."""
        index = self._check_round(index)
        if heldout_logits is None or heldout_targets is None:
            raise IncompatibleConfigError(
                "complete_round needs the member's logits on the held-out split and their class indices "
                "(the round has needs_heldout=True): per-class errors are measured there, not on training data.")
        stats = heldout_class_stats(self._round_logits(index, heldout_logits), heldout_targets, self.error)
        if stats.error.numel() != self.num_classes:
            raise IncompatibleConfigError(
                f"held-out logits have {stats.error.numel()} classes; the ensemble has {self.num_classes}.")
        measured = int(stats.measured.sum())
        if measured < 2:
            raise IncompatibleConfigError(
                f"the held-out split has images of {measured} class(es); per-class errors (Eq. 4) compare each class's "
                "own images with other classes' images, so it needs at least two classes, and ideally all of them.")
        importance = self.importance[index].detach().to("cpu", torch.float64)
        errors = fill_unmeasured(stats.error, stats.measured, importance)
        eps = weighted_error(errors, importance)
        gamma = boosting_gamma(eps, self.mu, self.on_weak, self.min_error)
        if gamma.clamped:
            _logger.warning(
                "Round %d: mu * eps_t = %.4f >= 1/2 (gamma_t would be >= 1); gamma_t clamped to %.4g, so member %d "
                "is all but left out of the ensemble. Train it further or lower mu below %.4f.",
                index + 1, self.mu * gamma.error, gamma.value, index + 1, 0.5 / gamma.error)
        following = update_importance(importance, errors, gamma.value, self.mu, self.exponent)
        if index < int(self.rounds_completed):
            _logger.warning("Round %d is completed again: its record is replaced, later rounds are discarded.",
                            index + 1)
            self._forget_rounds_after(index)
        with torch.no_grad():
            self.gammas[index] = gamma.value
            self.importance[index + 1] = following.to(self.importance)
            self.class_error[index] = errors.to(self.class_error)
            self.class_accuracy[index] = stats.accuracy.to(self.class_accuracy)
            self.class_measured[index] = stats.measured.to(self.class_measured.device)
            self.weighted_errors[index] = eps
            self.rounds_completed.fill_(index + 1)
            self.current_round.fill_(min(index + 1, self.tau - 1))
        self.train(self.training)
        return self._round_log(index, stats, errors, eps, gamma, following)

    def _round_log(self, index: int, stats: ClassStats, errors: Tensor, eps: float, gamma: Gamma,
                   following: Tensor) -> Dict[str, Any]:
        threshold = 0.5 / self.mu  # Sec. 3.3: a class is hard when eps_t(C_l) > 1/(2 mu)
        history = self.class_error[:index + 1].detach().cpu().double()
        seen = self.class_measured[:index + 1].detach().cpu().all(dim=0)
        always_hard = int(((history.min(dim=0).values > threshold) & seen).sum())
        gammas = self.gammas[:index + 1].detach().cpu().double()
        # Eq. 16 with gamma_t = m / (1 - m), m = mu eps_t: 2 sqrt(m (1 - m)) = 2 sqrt(gamma_t) / (1 + gamma_t).
        bound = float(torch.prod(2.0 * gammas.sqrt() / (1.0 + gammas)).clamp(max=1.0))
        return {
            "round": index + 1,
            "gamma": gamma.value,
            "member_weight": -math.log(gamma.value),
            "weighted_error": eps,
            "member_heldout_top1": stats.top1,
            "mean_class_error": float(errors[stats.measured].mean()),
            "hard_classes": int((errors[stats.measured] > threshold).sum()),
            "always_hard_classes": always_hard,
            "always_hard_fraction_bound": bound,
            "unmeasured_classes": int((~stats.measured).sum()),
            "importance_max_over_min": float(following.max() / following.min().clamp(min=1e-300)),
            "error_floored": int(gamma.floored),
            "gamma_clamped": int(gamma.clamped),
        }

    # -- timm's interface ---------------------------------------------------------------------------------
    @staticmethod
    def _channel_dim(member: nn.Module, features: Tensor) -> int:
        # NCHW maps and pooled [B, C] vectors put channels at 1; token sequences and NHWC maps at the end.
        if getattr(member, "output_fmt", "NCHW") == "NHWC" or features.dim() == 3:
            return -1
        return 1

    def forward_features(self, x: Tensor) -> Tensor:
        """Every member's features, concatenated along the channel dimension (member order)."""
        features = [m.forward_features(x) for m in self.members]
        return torch.cat(features, dim=self._channel_dim(self.members[0], features[0]))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Split the concatenated features back per member; their pre-logits side by side (pooled, or the
        unpooled maps after ``reset_classifier(0, '')``), or Eq. 9."""
        sizes = [int(m.num_features) for m in self.members]
        chunks = torch.split(x, sizes, dim=self._channel_dim(self.members[0], x))
        outputs = [_main_logits(m.forward_head(c, pre_logits=pre_logits)) for m, c in zip(self.members, chunks)]
        if pre_logits or self.num_classes <= 0:
            return torch.cat(outputs, dim=self._channel_dim(self.members[0], outputs[0]))
        # Each member's own forward_head: for a member whose inference reads heads on earlier layers (CLDL's
        # Eq. 9), that is its main head; model(x) applies the full rule.
        used, log_weights = self._used_members()
        return _mix_with_log_weights([outputs[i] for i in used], log_weights)

    def forward_intermediates(self, x: Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Each level of the members' feature pyramids, concatenated along channels (``feature_info``)."""
        if not all(hasattr(m, "forward_intermediates") for m in self.members):
            raise IncompatibleConfigError(
                f"{type(self.members[0]).__name__} members have no forward_intermediates, so the ensemble has no "
                "feature pyramid; use forward_features, or a member network that timm can take features from.")
        # The levels come in the asked format (channels at 1 for NCHW, last for NHWC and NLC tokens); the final
        # features in the member's own (a ViT's tokens, a MambaOut's NHWC map), joined as forward_features joins.
        dim = 1 if output_fmt == "NCHW" else -1
        results = [m.forward_intermediates(x, indices=indices, norm=norm, stop_early=stop_early,
                                           output_fmt=output_fmt, intermediates_only=intermediates_only)
                   for m in self.members]
        if intermediates_only:
            return [torch.cat(level, dim=dim) for level in zip(*results)]
        finals, levels = zip(*results)
        final_dim = self._channel_dim(self.members[0], finals[0])
        return torch.cat(finals, dim=final_dim), [torch.cat(level, dim=dim) for level in zip(*levels)]

    # -- timm's training hooks ----------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        """Each member grouped over its own depth: ``members.<i>.<name>`` takes the group the member's own
        matcher gives ``<name>``, so layer-wise decay scales every member alike (not as if stacked)."""
        member_ordinal = group_ordinals(self.members[0].group_matcher(coarse=coarse))

        def ordinal(name: str) -> Tuple[float, ...]:
            parts = name.split(".", 2)
            if len(parts) == 3 and parts[0] == "members":
                return member_ordinal(parts[2])
            return (math.inf,)
        return ordinal

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for member in self.members:
            member.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {f"members.{i}.{name}" for i, member in enumerate(self.members)
                for name in getattr(member, "no_weight_decay", lambda: set())()}

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        take = None
        for member in self.members:
            take = member.prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        return take

    def get_classifier(self, name_only: bool = False):
        """The main (last) member's classifier; ``classifier_names`` lists every member's."""
        last = self.members[-1]
        return f"members.{self.tau - 1}.{classifier_module_name(last)}" if name_only else last.get_classifier()

    def classifier_names(self) -> Tuple[str, ...]:
        """Every classifier of every member: a plain member's one, each head's of a member with several."""
        names: List[str] = []
        for i, member in enumerate(self.members):
            # classifier_module_name: many timm models' get_classifier() takes no name_only (DenseNet among them).
            own = tuple(member.classifier_names()) if self.member_has_own_loss[i] and hasattr(
                member, "classifier_names") else (classifier_module_name(member),)
            names += [f"members.{i}.{name}" for name in own if name]
        return tuple(names)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier for every member. The members' outputs change, so the boosting record (gammas,
        importance, per-class history) starts over: rounds run again from round 1."""
        for member in self.members:
            if global_pool is None:
                member.reset_classifier(num_classes)
            else:
                member.reset_classifier(num_classes, global_pool)
        if int(self.rounds_completed):
            _logger.info("reset_classifier: the boosting record of %d completed round(s) is cleared.",
                         int(self.rounds_completed))
        self._register_round_state(num_classes)

    # -- weights ------------------------------------------------------------------------------------------
    def remap_pretrained_keys(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """A checkpoint for another class count: its per-class boosting record cannot apply, so the round state
        starts fresh (rounds run again from round 1, from the checkpoint's member weights)."""
        theirs = state_dict.get("importance")
        if theirs is not None and "class_counts" not in state_dict:
            # Written before the ensemble kept its training set's class counts: not given, as for a new model.
            state_dict = dict(state_dict, class_counts=torch.zeros_like(self.class_counts))
        if theirs is not None and tuple(theirs.shape) != tuple(self.importance.shape):
            _logger.info("The checkpoint's boosting record is for %s classes; it starts fresh for %d.",
                         theirs.shape[-1], self.num_classes)
            state_dict = dict(state_dict)
            fresh = self.state_dict()
            for name in self.ROUND_STATE:
                state_dict[name] = fresh[name]
        return state_dict

    # -- figures ------------------------------------------------------------------------------------------
    def _difficulty_order(self) -> Tuple[Tensor, str]:
        if int(self.rounds_completed) == 0:
            return torch.arange(self.num_classes), "class index"
        first = self.class_accuracy[0].detach().cpu().double()
        first = torch.where(self.class_measured[0].detach().cpu(), first, torch.full_like(first, 2.0))
        return torch.argsort(first, stable=True), "classes ranked by member 1's held-out accuracy (hardest first)"

    def write_figures(self, output_dir) -> List[Path]:
        """PNGs of the importance after each round and of each class's held-out accuracy per round."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        num_classes = self.num_classes
        if num_classes <= 0:
            return []
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        completed = int(self.rounds_completed)
        order, axis_label = self._difficulty_order()
        ranks = list(range(num_classes))
        marker = "o" if num_classes <= 30 else None
        paths: List[Path] = []

        fig = Figure(figsize=(8, 4.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        importance = self.importance.detach().cpu().double() * num_classes
        for row in range(completed + 1):
            label = "round 1 (uniform)" if row == 0 else (
                f"round {row + 1}" if row < self.tau else f"after round {self.tau}")
            ax.plot(ranks, importance[row][order].tolist(), marker=marker, linewidth=1, label=label)
        ax.set_xlabel(axis_label)
        ax.set_ylabel("importance x N (mean 1)")
        ax.set_title("Class importance each round trains with")
        ax.legend(fontsize="small")
        path = output_dir / "complementary_importance.png"
        fig.savefig(path, dpi=100)
        paths.append(path)

        if completed:
            fig = Figure(figsize=(8, 4.5))
            FigureCanvasAgg(fig)
            ax = fig.add_subplot()
            for row in range(completed):
                accuracy = self.class_accuracy[row].detach().cpu().double()
                shown = torch.where(self.class_measured[row].detach().cpu(), accuracy,
                                    torch.full_like(accuracy, float("nan")))
                ax.plot(ranks, shown[order].tolist(), marker=marker, linewidth=1, label=f"member {row + 1}")
            ax.set_xlabel(axis_label)
            ax.set_ylabel("held-out top-1 accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title("Each class's held-out accuracy, per round")
            ax.legend(fontsize="small")
            path = output_dir / "complementary_class_accuracy.png"
            fig.savefig(path, dpi=100)
            paths.append(path)
        return paths


# --- building and registration -----------------------------------------------------------------------------------

_ENSEMBLE_ARGS = ("mu", "error", "exponent", "objective", "on_weak", "min_error", "ensemble_forward")


def _load_first_member(member: nn.Module, arch: str, weights: Any, num_classes: int, in_chans: int,
                       member_kwargs: Dict[str, Any]) -> nn.Module:
    """Round 1's network from given weights: True (the member's timm pretrained default), a timm tag of the
    member's architecture ("resnet50.tv_in1k"), a safetensors file or folder, or a state_dict."""
    from ..weights import DEFAULT_WEIGHTS_NAME, LoadReport, load_safetensors_file, load_state_dict_into

    if weights is True or (isinstance(weights, str) and not os.path.exists(weights)
                           and weights.split(".", 1)[0] == arch):
        name = arch if weights is True else weights
        return timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_chans, **member_kwargs)
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights)
        if path.is_dir():
            path = path / DEFAULT_WEIGHTS_NAME
        if not path.is_file():
            raise IncompatibleConfigError(
                f"first_member_weights={str(weights)!r} is neither a file nor a timm tag of '{arch}' "
                f"(e.g. '{arch}.<tag>'); give a .safetensors file, a folder holding {DEFAULT_WEIGHTS_NAME}, or a tag.")
        state_dict, location = load_safetensors_file(path), str(path)
    elif isinstance(weights, dict):
        state_dict, location = weights, "first_member_weights (state_dict)"
    else:
        raise IncompatibleConfigError(
            f"first_member_weights must be True, a timm tag, a path or a state_dict; got {type(weights).__name__}.")
    report = LoadReport(source="first_member_weights", location=location)
    load_state_dict_into(member, state_dict, dict(getattr(member, "pretrained_cfg", {}) or {}), report)
    return member


class _ComplementaryBuilder:
    """Splits an entrypoint's keyword arguments into ensemble arguments and member arguments."""

    def __init__(self, member: str, tau: int, member_defaults: Dict[str, Any], generic: bool):
        self.member, self.tau, self.member_defaults, self.generic = member, tau, member_defaults, generic

    def __call__(self, num_classes: int = 1000, in_chans: int = 3, member_kwargs: Optional[Dict[str, Any]] = None,
                 first_member_weights: Any = None, **kwargs) -> ComplementaryEnsemble:
        ensemble_args = {k: kwargs.pop(k) for k in list(kwargs) if k in _ENSEMBLE_ARGS}
        member_args = dict(self.member_defaults)
        member_args.update(member_kwargs or {})
        member_args.update(kwargs)
        members = [timm.create_model(self.member, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                     **member_args) for _ in range(self.tau)]
        if first_member_weights is not None and first_member_weights is not False:
            members[0] = _load_first_member(members[0], self.member, first_member_weights, num_classes, in_chans,
                                            member_args)
        model = ComplementaryEnsemble(members, **ensemble_args)
        # What config.json needs to build the same ensemble again (timm's hf-hub:/local-dir: loaders). timm's
        # create_model adds every keyword argument it was given to _model_args; the builder adds the defaults it
        # filled in, which the caller did not pass.
        model._model_args = dict(in_chans=in_chans)
        if self.generic:
            model._model_args.update(member=self.member, tau=self.tau)
        return model


def _prefixed(names: Union[str, Sequence[str], None], tau: int) -> Optional[Tuple[str, ...]]:
    if names is None:
        return None
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"members.{i}.{n}" for i in range(tau) for n in names)


def _ensemble_cfg(cfg_fn, first_conv: str, classifier: str, tau: int = 4, **kwargs) -> Dict[str, Any]:
    return cfg_fn(_prefixed(first_conv, tau), _prefixed(classifier, tau), **kwargs)


class EnsembleFeatureGraph(nn.Module):
    """``features_only=True, feature_cls='fx'`` for an ensemble: timm's FX feature extractor on every member,
    each level's maps concatenated along channels, as the ensemble's ``feature_info`` describes them."""

    def __init__(self, model: "ComplementaryEnsemble", out_indices: Sequence[int]):
        super().__init__()
        out_indices = tuple(out_indices)
        self.members = nn.ModuleList([FeatureGraphNet(m, out_indices=out_indices) for m in model.members])
        self.feature_info = FeatureInfo(model.feature_info, out_indices)
        # The FX extractor returns a member's maps in its own layout (a MambaOut's NHWC, a ViT's tokens).
        self.channels_last = getattr(model.members[0], "output_fmt", "NCHW") == "NHWC"

    def forward(self, x: Tensor) -> List[Tensor]:
        levels = [member(x) for member in self.members]
        return [torch.cat(maps, dim=-1 if self.channels_last or maps[0].dim() == 3 else 1) for maps in zip(*levels)]


def _ensemble_features(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """timm's ``feature_cls='fx'`` means, for an ensemble, the FX extractor on each member."""
    feature_cfg = dict(kwargs.get("feature_cfg") or {})
    if str(kwargs.get("feature_cls") or feature_cfg.get("feature_cls") or "").lower() == "fx":
        feature_cfg.pop("feature_cls", None)
        kwargs = dict(kwargs, feature_cls=EnsembleFeatureGraph, feature_cfg=feature_cfg)
    return kwargs


_MEMBERS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    # variant: (member architecture, member arguments the paper's setting fixes)
    "complementary_resnet50_x4": ("resnet50", {}),
    "complementary_densenet121_x4": ("densenet121", {}),
    "complementary_alexnet_x4": ("alexnet", {}),
    "complementary_resnet56_x4": ("cifar_resnet56", {"shortcut": "conv"}),
    "complementary_densenet_bc_k12_x4": ("densenet_bc100_k12", {}),
    "complementary_mlp_x4": ("mlp_mnist", {}),
}

default_cfgs = zoo_default_cfgs({
    # pool_size: the members' unpooled features at the default input size (the MLP has none)
    "complementary": _ensemble_cfg(base_cfg, "conv1", "fc", pool_size=(7, 7)),
    "complementary_resnet50_x4": _ensemble_cfg(base_cfg, "conv1", "fc", pool_size=(7, 7)),
    "complementary_densenet121_x4": _ensemble_cfg(base_cfg, "features.conv0", "classifier", pool_size=(7, 7)),
    "complementary_alexnet_x4": _ensemble_cfg(base_cfg, "features.0", "classifier.6", pool_size=(6, 6)),
    "complementary_resnet56_x4": _ensemble_cfg(cifar_cfg, "stem.0", "fc", pool_size=(8, 8)),
    "complementary_densenet_bc_k12_x4": _ensemble_cfg(cifar_cfg, "stem", "fc", pool_size=(8, 8)),
    "complementary_mlp_x4": _ensemble_cfg(mnist_cfg, "hidden_layers.0", "fc"),
})


def _build_variant(variant: str, pretrained: bool, **kwargs) -> ComplementaryEnsemble:
    member, member_defaults = _MEMBERS[variant]
    if pretrained:
        kwargs.pop("first_member_weights", None)  # the ensemble's own weights replace every member's
    tau = kwargs.pop("tau", 4)
    if tau != 4:
        raise IncompatibleConfigError(
            f"{variant} has 4 members; for another count use create_model('complementary', member='{member}', "
            f"tau={tau}).")
    if "member" in kwargs and kwargs.pop("member") != member:
        raise IncompatibleConfigError(f"{variant}'s members are '{member}'; use 'complementary' for another member.")
    return build_zoo_model(_ComplementaryBuilder(member, 4, member_defaults, generic=False), variant, pretrained,
                           **_ensemble_features(kwargs))


@zoo_model
def complementary(pretrained: bool = False, member: str = "resnet50", tau: int = 4, **kwargs) -> ComplementaryEnsemble:
    """Any timm model times any tau: ``create_model("complementary", member="resnet18", tau=3, num_classes=10)``.
    Input size, normalisation and class count default to the member's own pretrained_cfg."""
    if not isinstance(member, str) or not timm.is_model(member):
        raise IncompatibleConfigError(f"member {member!r} is not a timm (or collab_zoo) architecture name.")
    if not isinstance(tau, int) or tau < 1:
        raise IncompatibleConfigError(f"tau (the number of networks and rounds) must be a positive int, got {tau!r}.")
    member_cfg = timm.models.get_pretrained_cfg(member, allow_unregistered=True)
    overlay: Dict[str, Any] = {}
    if member_cfg is not None:
        cfg = member_cfg.to_dict()
        overlay = {k: cfg[k] for k in ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation",
                                       "num_classes", "pool_size") if cfg.get(k) is not None}
        overlay.update(first_conv=_prefixed(cfg.get("first_conv"), tau),
                       classifier=_prefixed(cfg.get("classifier"), tau))
    overlay.update(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if pretrained:
        kwargs.pop("first_member_weights", None)  # the ensemble's own weights replace every member's
    return build_zoo_model(_ComplementaryBuilder(member, tau, {}, generic=True), "complementary", pretrained,
                           pretrained_cfg_overlay=overlay, **_ensemble_features(kwargs))


@zoo_model
def complementary_resnet50_x4(pretrained: bool = False, **kwargs) -> ComplementaryEnsemble:
    """4 x ResNet-50 (timm) on ImageNet; the paper's 22.12 % top-1 error at T = 4 (the authors' release)."""
    return _build_variant("complementary_resnet50_x4", pretrained, **kwargs)


@zoo_model
def complementary_densenet121_x4(pretrained: bool = False, **kwargs) -> ComplementaryEnsemble:
    """4 x DenseNet-121 (timm) on ImageNet; the paper's 22.32 % top-1 error at T = 4."""
    return _build_variant("complementary_densenet121_x4", pretrained, **kwargs)


@zoo_model
def complementary_alexnet_x4(pretrained: bool = False, **kwargs) -> ComplementaryEnsemble:
    """4 x AlexNet (torchvision's layout) on ImageNet; the paper's 39.23 % top-1 error at T = 4."""
    return _build_variant("complementary_alexnet_x4", pretrained, **kwargs)


@zoo_model
def complementary_resnet56_x4(pretrained: bool = False, **kwargs) -> ComplementaryEnsemble:
    """4 x CIFAR ResNet-56 with 1x1 projection shortcuts (the released code's) on CIFAR-100; 24.15 % at T = 4."""
    return _build_variant("complementary_resnet56_x4", pretrained, **kwargs)


@zoo_model
def complementary_densenet_bc_k12_x4(pretrained: bool = False, **kwargs) -> ComplementaryEnsemble:
    """4 x DenseNet-BC (L = 100, k = 12) on CIFAR-100; the paper's 26.64 % at T = 4."""
    return _build_variant("complementary_densenet_bc_k12_x4", pretrained, **kwargs)


@zoo_model
def complementary_mlp_x4(pretrained: bool = False, **kwargs) -> ComplementaryEnsemble:
    """4 x LeCun et al.'s 784-300-10 MLP on MNIST; the paper's 1.86 % at T = 4."""
    return _build_variant("complementary_mlp_x4", pretrained, **kwargs)


# --- the authors' released rounds ---------------------------------------------------------------------------------

def _released_numpy_globals() -> List[Any]:
    """The numpy objects in the complementary authors' round files (``beta`` is a numpy float64, ``ap`` an
    array), under numpy 1.x's module path (the files date from 2019) and numpy 2's."""
    import numpy as np

    multiarray = (getattr(np, "_core", None) or np.core).multiarray
    allowed: List[Any] = [np.ndarray, np.dtype]
    allowed += list({type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFD"})
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray.scalar, f"{module}.scalar"), (multiarray._reconstruct, f"{module}._reconstruct")]
    return allowed


def _as_number(value: Any, what: str, path: Path) -> float:
    try:
        number = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        number = torch.empty(0)
    if number.numel() != 1 or not bool(torch.isfinite(number).all()):
        raise IncompatibleConfigError(f"{path}: '{what}' should be one finite number, got {value!r}.")
    return float(number[0])


def _as_vector(value: Any, what: str, path: Path) -> Tensor:
    try:
        vector = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise IncompatibleConfigError(f"{path}: '{what}' should be a vector of per-class numbers.") from None
    return vector


def read_complementary_round(path: Path) -> Dict[str, Any]:
    """One round file of the complementary authors: ``beta`` (gamma_t), ``model`` (a torchvision state_dict,
    maybe behind ``module.``), ``distribution`` (the class weights it was trained with, mean 1) and, when
    present, ``ap`` (its per-class top-1 accuracy on their held-out images)."""
    obj = read_torch_checkpoint(path, allowed_globals=_released_numpy_globals())
    required = ("beta", "model", "distribution")
    if not isinstance(obj, dict) or any(k not in obj for k in required):
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise IncompatibleConfigError(
            f"{path} is not a complementary-networks round file: it needs {list(required)}, it has {keys}.")
    beta = _as_number(obj["beta"], "beta", path)
    if not 0.0 < beta < 1.0:
        raise IncompatibleConfigError(
            f"{path}: beta (gamma_t) = {beta} is outside (0, 1), so its member weight log(1/gamma_t) would not be positive.")
    distribution = _as_vector(obj["distribution"], "distribution", path)
    if not bool(torch.isfinite(distribution).all()) or not bool((distribution > 0).all()):
        raise IncompatibleConfigError(f"{path}: 'distribution' must hold positive finite class weights.")
    accuracy = obj.get("ap")
    if accuracy is not None:
        accuracy = _as_vector(accuracy, "ap", path)
        if accuracy.numel() != distribution.numel():
            raise IncompatibleConfigError(
                f"{path}: 'ap' has {accuracy.numel()} classes, 'distribution' {distribution.numel()}.")
    state_dict = strip_prefix(as_state_dict(obj["model"], path))
    return {"path": Path(path), "gamma": beta, "distribution": distribution, "accuracy": accuracy,
            "state_dict": state_dict}


def _check_round_order(rounds: List[Dict[str, Any]]) -> None:
    """Round 1 trains with uniform importance, and where a file records its per-class accuracy, the next
    file's distribution must be the released code's update of this one's (Eq. 6 with exponent 1 - eps)."""
    first = rounds[0]["distribution"]
    if float((first.max() - first.min()) / first.mean()) > 1e-4:
        raise IncompatibleConfigError(
            f"{rounds[0]['path']} was trained with non-uniform class weights, so it is not round 1. "
            "Give the round files in order: --src ROUND1 ROUND2 ROUND3 ROUND4.")
    for previous, current in zip(rounds, rounds[1:]):
        if previous["accuracy"] is None:
            continue
        expected = update_importance(previous["distribution"], 1.0 - previous["accuracy"].nan_to_num(1.0),
                                     previous["gamma"], exponent="code")
        actual = normalise_importance(current["distribution"])
        if float(((expected - actual).abs() / actual).max()) > 1e-3:
            raise IncompatibleConfigError(
                f"{current['path']}'s class weights are not the update of {previous['path']}'s by its beta and "
                "per-class accuracy: the files are out of order or from different runs. Give them in round order.")


def convert_complementary(arch: str, srcs: List[Path], out: Path, push: Optional[str] = None,
                          hub_config: Optional[Path] = None) -> Dict[str, Any]:
    """The complementary authors' per-round files (round order) -> Hub folder of ``complementary_<arch>_x<n>``:
    the members, their gammas, and the importance and per-class record of each round."""
    from ..factory import create_model
    from ..registry import get_hub_config, is_zoo_model

    variant = f"complementary_{arch}_x{len(srcs)}"
    if not is_zoo_model(variant):
        raise IncompatibleConfigError(
            f"{len(srcs)} round file(s) for {arch} would make '{variant}', which is not registered; the authors "
            f"released 4 rounds (complementary_{arch}_x4).")
    rounds = [read_complementary_round(Path(src)) for src in srcs]
    num_classes = rounds[0]["distribution"].numel()
    for r in rounds:
        if r["distribution"].numel() != num_classes:
            raise IncompatibleConfigError(f"{r['path']} has {r['distribution'].numel()} classes, round 1 {num_classes}.")
    _check_round_order(rounds)

    tag_name = f"{variant}.in1k"
    # The authors' settings, recorded in config.json: hard per-class error, the code's exponent, weighted CE.
    model = create_model(tag_name, num_classes=num_classes, error="hard", exponent="code", objective="weighted_ce")
    for member, r in zip(model.members, rounds):
        check_state_dict_keys(r["state_dict"], member.state_dict(),
                              f"{r['path']}: 'model' is not a timm/torchvision '{arch}' state_dict")
        member.load_state_dict(r["state_dict"], strict=True)
    last = rounds[-1]
    if last["accuracy"] is not None:
        after_last = update_importance(last["distribution"], 1.0 - last["accuracy"].nan_to_num(1.0), last["gamma"],
                                       exponent="code")
    else:
        after_last = normalise_importance(last["distribution"])  # unknown without its accuracy: kept as it was
    with torch.no_grad():
        for t, r in enumerate(rounds):
            model.gammas[t] = r["gamma"]
            model.importance[t] = normalise_importance(r["distribution"]).to(model.importance)
            accuracy = r["accuracy"]
            if accuracy is not None:
                measured = torch.isfinite(accuracy)
                accuracy = accuracy.nan_to_num(0.0)
                model.class_accuracy[t] = accuracy.to(model.class_accuracy)
                model.class_error[t] = torch.where(measured, 1.0 - accuracy, torch.zeros_like(accuracy)).to(model.class_error)
                model.class_measured[t] = measured
                model.weighted_errors[t] = float((normalise_importance(r["distribution"])[measured]
                                                  * (1.0 - accuracy[measured])).sum())
            else:
                # gamma = m / (1 - m) with m = mu eps_t, the authors' mu being 0.7.
                model.weighted_errors[t] = r["gamma"] / (1.0 + r["gamma"]) / model.mu
        model.importance[len(rounds)] = after_last.to(model.importance)
        model.rounds_completed.fill_(len(rounds))
        model.current_round.fill_(len(rounds) - 1)
    config = get_hub_config(tag_name)
    metrics = None
    if config is not None:
        reported = config.reported_metrics.get("complementary", {}).get(f"T{len(rounds)}", {})
        metrics = {f"paper_{k}": v for k, v in reported.items()}
    description = (f"{len(rounds)} complementary {arch} networks trained by the paper's authors in class-level "
                   f"boosting rounds (converted from {', '.join(Path(s).name for s in srcs)}), with their gammas "
                   "and the class importance of every round.")
    return finish_hub_folder(out, model, tag_name, push, hub_config, description, metrics)


def _converter_arguments(parser) -> None:
    parser.add_argument("--arch", required=True, choices=["resnet50"])
    parser.add_argument("--src", required=True, nargs="+", type=Path, metavar="ROUND",
                        help="one weak-learner file per round, in round order (ROUND1 ROUND2 ROUND3 ROUND4)")
    add_hub_arguments(parser)


register_converter(
    "complementary", "the complementary-networks authors' ImageNet ResNet-50 rounds", _converter_arguments,
    lambda args: convert_complementary(args.arch, args.src, args.out, args.push_to_hub, args.write_hub_config))


# An ensemble runs its members side by side, so it shares its member's written conformance exemptions.
for _variant, (_member, _) in _MEMBERS.items():
    inherit_conformance_exemptions(_variant, _member)
inherit_conformance_exemptions("complementary", "resnet50")
