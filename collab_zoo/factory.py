"""``collab_zoo.create_model``: timm's ``create_model`` with errors a user can act on.

The zoo's entrypoints live in timm's registry, so the real work is timm's and ``build_zoo_model``'s; this
layer checks the name, tag and weights up front and turns the Hub's failures into messages that say what
to do. It builds timm's own architectures too (the baselines), with the same checks.

``hf-hub:`` and ``local-dir:`` names are read here, not by timm's loaders: config.json is fetched with the
zoo's time-out, checked against the hash the Hub serves and parsed with field-level errors; fields naming a
weight location are dropped; the weights are pinned to the commit the config came from and read only from
inside the repo or folder, as safetensors (for timm's own architectures too, whose timm loader would fall back
to a folder's pytorch_model.bin).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

import timm
from torch import nn

from .errors import NoPretrainedWeightsError, UnknownModelError
from .registry import is_zoo_model, tags_of, unknown_model_error, unknown_tag_error
from .weights import (_HEX40, _pending_message, _verify_download, check_hub_id, download_file, read_model_config,
                      resolve_weights, split_hub_id)

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


def _config_from_hub(hub_id: str, cache_dir) -> Dict[str, Any]:
    """config.json of ``org/repo[@rev]`` and the pretrained_cfg that pins its weights to the same commit."""
    repo, revision = split_hub_id(hub_id)
    check_hub_id(repo, revision)
    path = download_file(hub_id, "config.json", cache_dir=cache_dir)
    _verify_download(path, None, f"config.json of '{hub_id}'")
    config = read_model_config(path.read_bytes(), f"hf-hub:{hub_id} config.json")
    # The cache keeps each file under snapshots/<commit>/: the weights are read at that commit, so a push
    # between the two downloads cannot pair this config with other weights.
    commit = path.parent.name if _HEX40.match(path.parent.name) else revision
    config["pretrained_cfg"].update(source="hf-hub", hf_hub_id=f"{repo}@{commit}" if commit else repo)
    return config


def _config_from_folder(folder: str) -> Dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"local-dir:{folder}: no config.json in {folder}. A model folder is written by collab_zoo.save_for_hub, "
            "train.py (its hub/ output) or `python -m collab_zoo.convert`.")
    config = read_model_config(path.read_bytes(), str(path))
    config["pretrained_cfg"].update(source="local-dir", file=str(Path(folder)))
    return config


def _unregistered_architecture(name: str, config: Dict[str, Any]) -> UnknownModelError:
    arch = config["architecture"]
    if config["collab_zoo"]:
        written_by = config["collab_zoo"].get("version")
        return UnknownModelError(
            f"{name}: its config.json names '{arch}', a collab_zoo architecture"
            + (f" (written by collab_zoo {written_by})" if written_by else "")
            + " that this installed collab_zoo does not register. Upgrade it: pip install -U collab-zoo.")
    hint = unknown_model_error(arch)
    return UnknownModelError(
        f"{name}: its config.json names the architecture '{arch}', which is not registered. {hint} If another "
        "package defines it, import that package first.")


def _create_from_config(name: str, config: Dict[str, Any], pretrained: bool, kwargs: Dict[str, Any]) -> nn.Module:
    arch = config["architecture"]
    if not timm.is_model(arch):
        raise _unregistered_architecture(name, config)
    cfg = dict(config["pretrained_cfg"], architecture=arch)
    overlay = kwargs.pop("pretrained_cfg_overlay", None)
    if overlay:
        cfg.update(overlay)  # the caller's own choice, trusted as any overlay is
    model_kwargs = dict(config["model_args"])
    model_kwargs.update(kwargs)  # the caller's arguments win over the saved ones, as in timm
    if not pretrained or is_zoo_model(arch):
        # A zoo entrypoint loads through collab_zoo.weights, which honours the cfg's source.
        return timm.create_model(arch, pretrained=pretrained, pretrained_cfg=cfg, **model_kwargs)
    # timm's own architecture: hand timm the checked tensors, so its loader neither downloads nor unpickles.
    state_dict, _, location = resolve_weights(cfg, cache_dir=model_kwargs.get("cache_dir"))
    origin = {k: cfg.get(k) for k in ("source", "file", "hf_hub_id")}
    loading_cfg = dict(cfg, source=None, file=None, hf_hub_id=None, url=None, state_dict=state_dict)
    model = timm.create_model(arch, pretrained=True, pretrained_cfg=loading_cfg, **model_kwargs)
    for target in {id(model.pretrained_cfg): model.pretrained_cfg,
                   id(getattr(model, "default_cfg", None)): getattr(model, "default_cfg", None)}.values():
        if isinstance(target, dict):
            target.update(origin, state_dict=None)
    _logger.info("Loaded %d tensors from %s.", len(state_dict), location)
    return model


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
        return _create_from_config(model_name, _config_from_hub(rest, kwargs.get("cache_dir")), pretrained, kwargs)
    if rest and source == "local-dir":
        return _create_from_config(model_name, _config_from_folder(rest), pretrained, kwargs)
    _check_registry_name(model_name, pretrained, pretrained_cfg_overlay)
    return timm.create_model(model_name, pretrained=pretrained, **kwargs)
