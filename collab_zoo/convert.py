"""Turn the papers' released checkpoints into Hub folders (safetensors + config.json + model card).

    python -m collab_zoo.convert dks --arch resnet50 --src resnet50_dks.pth --out dks_resnet50.in1k \
        [--push-to-hub collab-zoo/dks_resnet50.in1k] [--write-hub-config hub_configs/dks_resnet50.in1k.json]
    python -m collab_zoo.convert complementary --arch resnet50 --src e1/weak-learner.pth.tar \
        e2/weak-learner.pth.tar e3/weak-learner.pth.tar e4/weak-learner.pth.tar --out complementary_resnet50_x4.in1k
    python -m collab_zoo.convert torchvision-googlenet --src googlenet-1378be20.pth --out cldl_googlenet_tv

This module holds what every converter shares; each paper's conversion lives in its method's module
(``collab_zoo.methods.dks``, ``.complementary``, ``.cldl``), which registers it here as a subcommand when
imported (``register_converter``). So the methods import this module, never the other way round.

The released files are ``torch.save`` pickles. They are read here, and only here, with
``torch.load(weights_only=True)``: PyTorch's restricted unpickler, which rebuilds tensors and plain
containers and refuses every other object, so a hostile file cannot run code. A converter may allow a few
more plain objects by name while it reads (the complementary authors' numpy numbers and arrays). Files are
read only from paths the user names on the command line. Everything the zoo loads afterwards is the
safetensors file a converter writes. ``--write-hub-config`` pins the uploaded commit and the file's sha256
into the tag's hub config.
"""
if __name__ == "__main__":  # ``python -m collab_zoo.convert``: the package's copy, where the methods registered
    from collab_zoo.convert import main

    raise SystemExit(main())

import argparse
import json
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from .errors import IncompatibleConfigError, StateDictMismatchError
from .hub import atomic_write_text, push_to_hub, save_for_hub
from .weights import DEFAULT_WEIGHTS_NAME, sha256_of

_logger = logging.getLogger(__name__)

# `python -m collab_zoo.convert` runs this file after `import collab_zoo` has imported it (the methods register
# their converters here at import); runpy warns about exactly that, and the __main__ block above hands over to
# the imported copy, so the warning says nothing a user can act on.
warnings.filterwarnings("ignore", message=r"'collab_zoo\.convert' found in sys\.modules", category=RuntimeWarning)

__all__ = ["read_torch_checkpoint", "strip_prefix", "as_state_dict", "check_state_dict_keys", "finish_hub_folder",
           "add_hub_arguments", "Converter", "register_converter", "converters", "main"]


# --- reading a released file ------------------------------------------------------------------------------------

def read_torch_checkpoint(path: Path, allowed_globals: Sequence[Any] = ()) -> Any:
    """A released ``torch.save`` file, through PyTorch's restricted (weights-only) unpickler.

    ``allowed_globals``: further plain objects the file may hold, by name (``torch.serialization.safe_globals``).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist.")
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise IncompatibleConfigError(
            f"{path} could not be read as a weights-only torch checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). It holds objects other than tensors and plain "
            "containers, which the converter refuses to unpickle.") from None


def strip_prefix(state_dict: Dict[str, Tensor], prefix: str = "module.") -> Dict[str, Tensor]:
    """DataParallel saves every key behind ``module.``; drop it where present."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def as_state_dict(obj: Any, path: Path) -> Dict[str, Tensor]:
    """The state_dict in a released file: the object itself or its ``"state_dict"`` entry."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise IncompatibleConfigError(f"{path} is not a state_dict (a mapping of names to tensors).")
    return dict(obj)


def check_state_dict_keys(state_dict: Dict[str, Tensor], reference: Dict[str, Tensor], what: str) -> None:
    """The file's keys and shapes are exactly the reference network's, or an error that names the difference."""
    missing = sorted(set(reference) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(reference))
    shapes = [k for k in reference if k in state_dict and reference[k].shape != state_dict[k].shape]
    if missing or unexpected or shapes:
        raise StateDictMismatchError(
            f"{what}: missing {missing[:10]}, unexpected {unexpected[:10]}, shape mismatches {shapes[:10]}. "
            "Is --arch right?")


# --- writing the Hub folder -------------------------------------------------------------------------------------

def finish_hub_folder(out: Path, model, tag_name: str, push: Optional[str], hub_config: Optional[Path],
                      description: str, metrics: Optional[Dict[str, float]]) -> Dict[str, Any]:
    """Write the Hub folder, optionally push it and pin the pushed commit and sha256 into the tag's hub config."""
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


def add_hub_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out``, ``--push-to-hub`` and ``--write-hub-config``, the options of a converter that publishes."""
    parser.add_argument("--out", required=True, type=Path, help="folder to write the Hub files to")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload as one commit to REPO")
    parser.add_argument("--write-hub-config", default=None, type=Path, metavar="JSON",
                        help="pin the pushed commit and sha256 into this hub config")


# --- the converters' registry and the command line ---------------------------------------------------------------

@dataclass(frozen=True)
class Converter:
    """One ``python -m collab_zoo.convert`` subcommand: its options, and the conversion, which returns what to
    print (a JSON-able dict)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Dict[str, Any]]


_CONVERTERS: Dict[str, Converter] = {}


def register_converter(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                       run: Callable[[argparse.Namespace], Dict[str, Any]]) -> Converter:
    """Add (or replace) a subcommand; a method module calls this when it is imported."""
    converter = Converter(name, help, add_arguments, run)
    _CONVERTERS[name] = converter
    return converter


def converters() -> Dict[str, Converter]:
    return dict(_CONVERTERS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m collab_zoo.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="method", required=True)
    for converter in _CONVERTERS.values():
        converter.add_arguments(sub.add_parser(converter.name, help=converter.help))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not _CONVERTERS:
        print("error: no converters are registered; they come with `import collab_zoo`.", file=sys.stderr)
        return 2
    args = _parser().parse_args(argv)
    try:
        result = _CONVERTERS[args.method].run(args)
    except (FileNotFoundError, IncompatibleConfigError, StateDictMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0
