"""Writing models for the Hugging Face Hub and pushing them there.

A Hub folder holds ``model.safetensors``, a timm-compatible ``config.json`` (architecture, num_classes,
num_features, model_args, pretrained_cfg; zoo extras under ``collab_zoo``) and a model card ``README.md``
with Hub metadata. ``create_model("local-dir:DIR")`` and ``create_model("hf-hub:org/repo")`` read it back,
as does ``timm.create_model`` once collab_zoo is imported.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import torch
from timm.models import PretrainedCfg
from torch import nn

from .weights import DEFAULT_WEIGHTS_NAME, sha256_of

__all__ = ["save_for_hub", "push_to_hub", "hub_config_json", "atomic_write_bytes", "atomic_write_text"]

_PRETRAINED_FIELDS = {f.name for f in dataclasses.fields(PretrainedCfg)}
# Where the weights came from at load time says nothing about where the saved copy lives.
_SOURCE_FIELDS = {"url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source"}

_PAPER_TAGS = {
    "cldl": ("arxiv:1607.05440", "Collaborative Layer-wise Discriminative Learning in Deep Neural Networks"),
    "dcl": ("arxiv:1703.01229", "Deep Collaborative Learning for Visual Recognition"),
    "dks": ("arxiv:1906.00675", "Deeply-supervised Knowledge Synergy"),
    "complementary": (None, "Embedding Complementary Deep Networks for Image Classification"),
}


def _current_umask() -> int:
    # os.umask can only be read by setting it; Linux also reports it in /proc, which changes nothing.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: os.PathLike, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename: readers never see half a file.

    The file gets the permissions a plain ``open(path, "wb")`` would give (0666 less the umask), not
    mkstemp's private 0600, so a shared run folder or Hub folder stays readable by the group.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _save_safetensors(tensors: Dict[str, torch.Tensor], path: Path, metadata: Dict[str, str]) -> None:
    from safetensors.torch import save

    # Cloning breaks storage shared between tensors (tied or viewed weights), which safetensors rejects.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def _method_of(architecture: str) -> Optional[str]:
    prefix = architecture.split("_", 1)[0]
    return prefix if prefix in _PAPER_TAGS else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def hub_config_json(model: nn.Module, keep_training_heads: bool = False,
                    model_args: Optional[Dict[str, Any]] = None, extra: Optional[Dict[str, Any]] = None
                    ) -> Dict[str, Any]:
    """The config.json timm's ``hf-hub:``/``local-dir:`` loaders parse, plus a ``collab_zoo`` section."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    architecture = cfg.get("architecture") or type(model).__name__.lower()
    pretrained_cfg = {k: v for k, v in cfg.items()
                      if k in _PRETRAINED_FIELDS and k not in _SOURCE_FIELDS and v is not None}
    num_classes = int(getattr(model, "num_classes", pretrained_cfg.get("num_classes", 0)))
    if num_classes != pretrained_cfg.get("num_classes"):
        for key in ("label_names", "label_descriptions", "label_offset"):
            pretrained_cfg.pop(key, None)
    pretrained_cfg["num_classes"] = num_classes
    pretrained_cfg.pop("architecture", None)
    args = dict(getattr(model, "_model_args", {}) or {})
    args.update(model_args or {})
    args.pop("pretrained_cfg_overlay", None)
    args["num_classes"] = num_classes
    for key, value in args.items():
        try:
            json.dumps(_jsonable(value))
        except TypeError as e:
            raise ValueError(f"model argument {key}={value!r} cannot be written to config.json; pass "
                             f"model_args={{'{key}': <json value>}} to save_for_hub.") from e
    zoo = {
        "method": _method_of(architecture),
        "head_names": list(getattr(model, "head_names", ("main",))),
        "training_heads_included": bool(keep_training_heads) or not getattr(model, "training_only_prefixes", ()),
    }
    zoo.update(extra or {})
    return {
        "architecture": architecture,
        "num_classes": num_classes,
        "num_features": int(getattr(model, "num_features", 0)),
        "model_args": _jsonable(args),
        "pretrained_cfg": _jsonable(pretrained_cfg),
        "collab_zoo": _jsonable(zoo),
    }


def _model_card(config: Dict[str, Any], metrics: Optional[Dict[str, float]], datasets: Iterable[str],
                description: Optional[str], base_model: Optional[str] = None) -> str:
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.repocard_data import EvalResult

    architecture = config["architecture"]
    method = config["collab_zoo"].get("method")
    paper_tag, paper_title = _PAPER_TAGS.get(method, (None, None))
    tags = ["image-classification", "timm", "collab_zoo"] + ([method] if method else [])
    if paper_tag:
        tags.append(paper_tag)
    datasets = list(datasets)
    eval_results = None
    if metrics and datasets:
        eval_results = [EvalResult(task_type="image-classification", dataset_type=datasets[0],
                                   dataset_name=datasets[0], metric_type=name, metric_value=float(value))
                        for name, value in metrics.items()]
    license_ = config["pretrained_cfg"].get("license")
    data = ModelCardData(
        library_name="timm",
        license=license_ if license_ and " " not in license_ else None,
        tags=tags,
        datasets=datasets or None,
        metrics=sorted(metrics) if metrics else None,
        model_name=architecture,
        eval_results=eval_results,
        pipeline_tag="image-classification",
        base_model=base_model,
    )
    heads = ", ".join(config["collab_zoo"]["head_names"])
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {architecture}", "",
        description or f"A `{architecture}` model from collab_zoo.", "",
        f"- Paper: {paper_title}" + (f" ({paper_tag})" if paper_tag else "") if paper_title else "",
        f"- Classes: {config['num_classes']}; heads: {heads}",
        f"- Training-only heads included: {config['collab_zoo']['training_heads_included']}",
        f"- Fine-tuned from: `{base_model}`" if base_model else None,
        "",
    ]
    if metrics:
        lines += ["## Measured", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, (int, float)) else f"| {k} | {v} |"
                  for k, v in metrics.items()]
        lines.append("")
    lines += [
        "## Use", "", "```python", "import collab_zoo  # registers the zoo's architectures with timm",
        'model = collab_zoo.create_model("hf-hub:<this repo>", pretrained=True).eval()', "```", "",
        "Weights are safetensors; `config.json` is timm's format.", "",
    ]
    return ModelCard("\n".join(line for line in lines if line is not None)).content


def save_for_hub(model: nn.Module, save_directory: os.PathLike, *, keep_training_heads: bool = False,
                 model_args: Optional[Dict[str, Any]] = None, metrics: Optional[Dict[str, float]] = None,
                 datasets: Iterable[str] = (), description: Optional[str] = None,
                 extra_config: Optional[Dict[str, Any]] = None, base_model: Optional[str] = None) -> Path:
    """Write a Hub folder for ``model``: model.safetensors, config.json, README.md. Returns the folder.

    A model with training-only heads (DKS) stores only what inference needs unless ``keep_training_heads``.
    ``metrics`` (name -> value) and ``datasets`` go into the model card's metadata. ``base_model`` names the
    checkpoint a fine-tune started from (a Hub repo id such as ``org/repo``); the card's metadata and
    config.json's ``collab_zoo`` section carry it.
    """
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "hub_state_dict"):
        tensors = model.hub_state_dict(keep_training_heads=keep_training_heads)
    else:
        tensors = model.state_dict()
    config = hub_config_json(model, keep_training_heads, model_args, extra_config)
    if base_model:
        config["collab_zoo"]["base_model"] = base_model
    # One metadata key only: safetensors writes a multi-key map in random order, which would give the same
    # weights a different sha256 on every save.
    _save_safetensors(tensors, save_directory / DEFAULT_WEIGHTS_NAME, metadata={"format": "pt"})
    config["collab_zoo"]["sha256"] = sha256_of(save_directory / DEFAULT_WEIGHTS_NAME)
    atomic_write_text(save_directory / "config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(save_directory / "README.md", _model_card(config, metrics, datasets, description, base_model))
    return save_directory


def push_to_hub(model: nn.Module, repo_id: str, *, revision: Optional[str] = None, private: Optional[bool] = None,
                token: Optional[str] = None, commit_message: Optional[str] = None, keep_training_heads: bool = False,
                metrics: Optional[Dict[str, float]] = None, datasets: Iterable[str] = (),
                description: Optional[str] = None, model_args: Optional[Dict[str, Any]] = None,
                base_model: Optional[str] = None):
    """save_for_hub into a temporary folder and upload it as one commit. Returns huggingface_hub's CommitInfo.

    The commit id (``info.oid``) and the file's sha256 (``config.json`` -> ``collab_zoo.sha256``) are what a
    hub config pins.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_for_hub(model, tmp, keep_training_heads=keep_training_heads, metrics=metrics, datasets=datasets,
                     description=description, model_args=model_args, base_model=base_model)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision,
                                 commit_message=commit_message or f"Upload {repo_id} from collab_zoo")
