"""``collab_zoo.create_model``: timm's ``create_model`` with errors a user can act on.

The zoo's entrypoints live in timm's registry, so the real work is timm's and ``build_zoo_model``'s; this
layer checks the name, tag and weights up front and turns the Hub's failures into messages that say what
to do. It builds timm's own architectures too (the baselines), with the same checks.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import timm
from torch import nn

from .errors import HubUnreachableError, NoPretrainedWeightsError, UnknownModelError
from .registry import is_zoo_model, tags_of, unknown_model_error, unknown_tag_error
from .weights import _pending_message, _unreachable_message, split_hub_id

_logger = logging.getLogger(__name__)

__all__ = ["create_model"]


def _check_registry_name(name: str, pretrained: bool, overlay: Optional[Dict[str, Any]]) -> None:
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise unknown_model_error(name)
    if tag and tag not in tags_of(arch):
        raise unknown_tag_error(arch, tag)
    if not pretrained or not is_zoo_model(arch):
        return
    if overlay and any(overlay.get(k) for k in ("file", "state_dict", "hf_hub_id", "url")):
        return
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    if cfg is None or not cfg.has_weights:
        raise NoPretrainedWeightsError(_pending_message({"architecture": arch, "tag": cfg.tag if cfg else tag}))


def _create_from_hub(name: str, **kwargs) -> nn.Module:
    """``hf-hub:org/repo[@rev]``: timm fetches config.json; map the Hub's failures to our errors."""
    from huggingface_hub import errors as hf_errors

    repo, revision = split_hub_id(name.split(":", 1)[1])
    try:
        return timm.create_model(name, **kwargs)
    except hf_errors.LocalEntryNotFoundError:
        raise HubUnreachableError(_unreachable_message(repo, revision, "config.json", "not reachable")) from None
    except hf_errors.RepositoryNotFoundError:
        raise NoPretrainedWeightsError(f"Hub repo '{repo}' does not exist or is private.") from None
    except hf_errors.RevisionNotFoundError:
        raise NoPretrainedWeightsError(f"Hub repo '{repo}' has no revision '{revision}'.") from None
    except hf_errors.EntryNotFoundError:
        raise NoPretrainedWeightsError(
            f"Hub repo '{repo}' has no config.json: it is not a timm/collab_zoo model folder.") from None
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise UnknownModelError(
                f"{name}: its config.json names an architecture that is not registered ({e}). "
                "If it is a zoo model, `import collab_zoo` registers it; otherwise install the package "
                "that defines it.") from None
        raise


def create_model(
        model_name: str,
        pretrained: bool = False,
        num_classes: Optional[int] = None,
        in_chans: Optional[int] = None,
        pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
        **kwargs,
) -> nn.Module:
    """Create a zoo (or timm) model by name: ``arch``, ``arch.tag``, ``hf-hub:org/repo``, ``local-dir:/path``.

    ``pretrained=True`` downloads the tag's safetensors through huggingface_hub's cache at its pinned
    revision and checks its sha256 (``HF_HUB_OFFLINE=1`` loads from the cache only).
    ``num_classes`` other than the weights' re-initialises every head's classifier (logged);
    ``in_chans`` adapts the first convolution. Extra keyword arguments go to the model's constructor.
    """
    if not isinstance(model_name, str) or not model_name:
        raise UnknownModelError(f"Model name must be a non-empty string, got {model_name!r}.")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if pretrained_cfg_overlay:
        kwargs["pretrained_cfg_overlay"] = dict(pretrained_cfg_overlay)

    source, _, rest = model_name.partition(":")
    if rest and source == "hf-hub":
        return _create_from_hub(model_name, pretrained=pretrained, **kwargs)
    if rest and source == "local-dir":
        from pathlib import Path

        if not (Path(rest) / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_name}: no config.json in {rest}. A model folder is written by collab_zoo.save_for_hub, "
                "train.py (its hub/ output) or `python -m collab_zoo.convert`.")
        return timm.create_model(model_name, pretrained=pretrained, **kwargs)
    _check_registry_name(model_name, pretrained, pretrained_cfg_overlay)
    return timm.create_model(model_name, pretrained=pretrained, **kwargs)
