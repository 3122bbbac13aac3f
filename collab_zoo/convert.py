"""Turn the papers' released checkpoints into Hub folders (safetensors + config.json + model card).

    python -m collab_zoo.convert dks --arch resnet50 --src resnet50_dks.pth --out dks_resnet50.in1k \
        [--push-to-hub collab-zoo/dks_resnet50.in1k] [--write-hub-config hub_configs/dks_resnet50.in1k.json]

The released files are ``torch.save`` pickles. They are read here, and only here, with
``torch.load(weights_only=True)``: PyTorch's restricted unpickler, which rebuilds tensors and plain
containers and refuses every other object, so a hostile file cannot run code. Everything the zoo loads
afterwards is the safetensors file this writes. ``--write-hub-config`` pins the uploaded commit and the
file's sha256 into the tag's hub config.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import Tensor

from .errors import IncompatibleConfigError, StateDictMismatchError
from .hub import atomic_write_text, push_to_hub, save_for_hub
from .weights import DEFAULT_WEIGHTS_NAME, sha256_of

_logger = logging.getLogger(__name__)

__all__ = ["read_torch_checkpoint", "strip_prefix", "convert_dks", "main", "CONVERTERS"]


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


CONVERTERS: Dict[str, Callable[..., Dict[str, Any]]] = {"dks": convert_dks}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m collab_zoo.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="method", required=True)
    dks = sub.add_parser("dks", help="the DKS authors' ImageNet ResNets")
    dks.add_argument("--arch", required=True, choices=["resnet18", "resnet50", "resnet152"])
    dks.add_argument("--src", required=True, type=Path, help="the downloaded .pth file")
    for p in (dks,):
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
        else:
            result = CONVERTERS[args.method](args)
    except (FileNotFoundError, IncompatibleConfigError, StateDictMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
