"""Turn the papers' released checkpoints into Hub folders (safetensors + config.json + model card).

    python -m collab_zoo.convert dks --arch resnet50 --src resnet50_dks.pth --out dks_resnet50.in1k \
        [--push-to-hub collab-zoo/dks_resnet50.in1k] [--write-hub-config hub_configs/dks_resnet50.in1k.json]
    python -m collab_zoo.convert complementary --arch resnet50 --src e1/weak-learner.pth.tar \
        e2/weak-learner.pth.tar e3/weak-learner.pth.tar e4/weak-learner.pth.tar --out complementary_resnet50_x4.in1k
    python -m collab_zoo.convert torchvision-googlenet --src googlenet-1378be20.pth --out cldl_googlenet_tv

The released files are ``torch.save`` pickles. They are read here, and only here, with
``torch.load(weights_only=True)``: PyTorch's restricted unpickler, which rebuilds tensors and plain
containers and refuses every other object, so a hostile file cannot run code (the complementary authors'
files also hold numpy numbers and arrays, which are allowed, by name, while those files are read: each
rebuilds a number or an array from raw bytes and calls nothing else). Everything the zoo loads
afterwards is the safetensors file this writes. ``--write-hub-config`` pins the uploaded commit and the
file's sha256 into the tag's hub config.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from .errors import IncompatibleConfigError, StateDictMismatchError
from .hub import atomic_write_text, push_to_hub, save_for_hub
from .weights import DEFAULT_WEIGHTS_NAME, sha256_of

_logger = logging.getLogger(__name__)

__all__ = ["read_torch_checkpoint", "strip_prefix", "convert_dks", "read_complementary_round", "convert_complementary",
           "main"]


def read_torch_checkpoint(path: Path) -> Any:
    """A released ``torch.save`` file, through PyTorch's restricted (weights-only) unpickler."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise IncompatibleConfigError(
            f"{path} could not be read as a weights-only torch checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). It holds objects other than tensors and plain "
            "containers, which the converter refuses to unpickle.") from None


def strip_prefix(state_dict: Dict[str, Tensor], prefix: str = "module.") -> Dict[str, Tensor]:
    """DataParallel saves every key behind ``module.``; drop it where present."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def _as_state_dict(obj: Any, path: Path) -> Dict[str, Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise IncompatibleConfigError(f"{path} is not a state_dict (a mapping of names to tensors).")
    return dict(obj)


def _check_backbone_keys(state_dict: Dict[str, Tensor], arch: str, num_classes: int) -> None:
    import timm

    reference = timm.create_model(arch, pretrained=False, num_classes=num_classes).state_dict()
    missing = sorted(set(reference) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(reference))
    shapes = [k for k in reference if k in state_dict and reference[k].shape != state_dict[k].shape]
    if missing or unexpected or shapes:
        raise StateDictMismatchError(
            f"The checkpoint is not a timm/torchvision '{arch}' state_dict: missing {missing[:10]}, "
            f"unexpected {unexpected[:10]}, shape mismatches {shapes[:10]}. Is --arch right?")


def _finish(out: Path, model, tag_name: str, push: Optional[str], hub_config: Optional[Path],
            description: str, metrics: Optional[Dict[str, float]]) -> Dict[str, Any]:
    save_for_hub(model, out, description=description, metrics=metrics, datasets=["imagenet-1k"])
    digest = sha256_of(out / DEFAULT_WEIGHTS_NAME)
    result: Dict[str, Any] = {"out": str(out), "sha256": digest, "model": tag_name}
    if push:
        info = push_to_hub(model, push, description=description, metrics=metrics, datasets=["imagenet-1k"])
        result.update(repo=push, revision=info.oid)
    if hub_config is not None:
        if not push:
            raise IncompatibleConfigError("--write-hub-config needs --push-to-hub: a pin names an uploaded commit.")
        config = json.loads(hub_config.read_text())
        config.update(hf_hub_id=push, revision=result["revision"], sha256=digest)
        config.pop("status", None)
        atomic_write_text(hub_config, json.dumps(config, indent=2) + "\n")
        result["hub_config"] = str(hub_config)
    return result


def convert_dks(arch: str, src: Path, out: Path, push: Optional[str] = None, hub_config: Optional[Path] = None,
                num_classes: int = 1000) -> Dict[str, Any]:
    """The DKS authors' ImageNet file (bare state_dict, torchvision names, ``module.`` prefix) -> Hub folder
    of ``dks_<arch>`` holding the backbone only (the heads were not released)."""
    from .factory import create_model
    from .registry import get_hub_config

    variant = f"dks_{arch}"
    state_dict = strip_prefix(_as_state_dict(read_torch_checkpoint(src), src))
    _check_backbone_keys(state_dict, arch, num_classes)
    tag_name = f"{variant}.in1k"
    model = create_model(tag_name, num_classes=num_classes)
    missing, unexpected = model.backbone.load_state_dict(state_dict, strict=True)
    config = get_hub_config(tag_name)
    metrics = None
    if config is not None:
        dks = config.reported_metrics.get("dks", {})
        metrics = {f"paper_{k}": v for k, v in dks.items()}
    description = (f"ResNet backbone trained with Deeply-supervised Knowledge Synergy by the paper's authors "
                   f"(converted from {Path(src).name}); auxiliary heads are not included.")
    return _finish(out, model, tag_name, push, hub_config, description, metrics)


# --- complementary deep networks ------------------------------------------------------------------------------

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
    with torch.serialization.safe_globals(_released_numpy_globals()):
        obj = read_torch_checkpoint(path)
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
    state_dict = strip_prefix(_as_state_dict(obj["model"], path))
    return {"path": Path(path), "gamma": beta, "distribution": distribution, "accuracy": accuracy,
            "state_dict": state_dict}


def _check_round_order(rounds: List[Dict[str, Any]]) -> None:
    """Round 1 trains with uniform importance, and where a file records its per-class accuracy, the next
    file's distribution must be the released code's update of this one's (Eq. 6 with exponent 1 - eps)."""
    from .methods.complementary import normalise_importance, update_importance

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


def _check_member_keys(state_dict: Dict[str, Tensor], reference: Dict[str, Tensor], arch: str, path: Path) -> None:
    missing = sorted(set(reference) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(reference))
    shapes = [k for k in reference if k in state_dict and reference[k].shape != state_dict[k].shape]
    if missing or unexpected or shapes:
        raise StateDictMismatchError(
            f"{path}: 'model' is not a timm/torchvision '{arch}' state_dict: missing {missing[:10]}, unexpected "
            f"{unexpected[:10]}, shape mismatches {shapes[:10]}. Is --arch right?")


def convert_complementary(arch: str, srcs: List[Path], out: Path, push: Optional[str] = None,
                          hub_config: Optional[Path] = None) -> Dict[str, Any]:
    """The complementary authors' per-round files (round order) -> Hub folder of ``complementary_<arch>_x<n>``:
    the members, their gammas, and the importance and per-class record of each round."""
    from .factory import create_model
    from .methods.complementary import normalise_importance, update_importance
    from .registry import get_hub_config, is_zoo_model

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
        _check_member_keys(r["state_dict"], member.state_dict(), arch, r["path"])
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
    return _finish(out, model, tag_name, push, hub_config, description, metrics)




def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m collab_zoo.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="method", required=True)
    dks = sub.add_parser("dks", help="the DKS authors' ImageNet ResNets")
    dks.add_argument("--arch", required=True, choices=["resnet18", "resnet50", "resnet152"])
    dks.add_argument("--src", required=True, type=Path, help="the downloaded .pth file")
    comp = sub.add_parser("complementary", help="the complementary-networks authors' ImageNet ResNet-50 rounds")
    comp.add_argument("--arch", required=True, choices=["resnet50"])
    comp.add_argument("--src", required=True, nargs="+", type=Path, metavar="ROUND",
                      help="one weak-learner file per round, in round order (ROUND1 ROUND2 ROUND3 ROUND4)")
    tv = sub.add_parser("torchvision-googlenet",
                        help="torchvision's ImageNet GoogLeNet, as a starting point for cldl_googlenet")
    tv.add_argument("--src", required=True, type=Path, help="googlenet-1378be20.pth (or a safetensors of it)")
    tv.add_argument("--arch", default="cldl_googlenet", choices=["cldl_googlenet", "googlenet"])
    tv.add_argument("--out", required=True, type=Path, help="folder to write the Hub files to")
    for p in (dks, comp):
        p.add_argument("--out", required=True, type=Path, help="folder to write the Hub files to")
        p.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload as one commit to REPO")
        p.add_argument("--write-hub-config", default=None, type=Path, metavar="JSON",
                       help="pin the pushed commit and sha256 into this hub config")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)
    try:
        if args.method == "dks":
            result = convert_dks(args.arch, args.src, args.out, args.push_to_hub, args.write_hub_config)
        elif args.method == "complementary":
            result = convert_complementary(args.arch, args.src, args.out, args.push_to_hub, args.write_hub_config)
        elif args.method == "torchvision-googlenet":
            from .methods.cldl import convert_torchvision_googlenet

            result = convert_torchvision_googlenet(args.src, args.out, arch=args.arch)
    except (FileNotFoundError, IncompatibleConfigError, StateDictMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
