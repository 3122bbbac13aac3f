"""Writing models for the Hugging Face Hub and pushing them there.

A Hub folder holds ``model.safetensors``, a timm-compatible ``config.json`` (architecture, num_classes,
num_features, model_args, pretrained_cfg; zoo extras under ``collab_zoo``) and a model card ``README.md``
with Hub metadata. ``create_model("local-dir:DIR")`` and ``create_model("hf-hub:org/repo")`` read it back,
as does ``timm.create_model`` once collab_zoo is imported.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

import torch
from timm.models import PretrainedCfg
from torch import nn

from .integrity import check_finite
from .weights import DEFAULT_WEIGHTS_NAME, names_weight_source, sha256_of

__all__ = ["save_for_hub", "push_to_hub", "PushedCommit", "hub_config_json", "model_card", "paper_of",
           "atomic_write_bytes", "atomic_write_text"]

_logger = logging.getLogger(__name__)

_PRETRAINED_FIELDS = {f.name for f in dataclasses.fields(PretrainedCfg)}
# Where the weights came from at load time says nothing about where the saved copy lives.
_SOURCE_FIELDS = {"url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source"}
# Factory arguments, not constructor arguments: a config.json never carries them.
_CALLER_ARGS = {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "checkpoint_path",
                "features_only", "out_indices", "feature_cls", "feature_cfg", "scriptable", "exportable", "no_jit",
                "device", "dtype", "pretrained_model_args"}

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


def _package_version() -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("collab-zoo")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return None


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
    # Arguments that fetched the initial weights (a file, a tag, True for "the default weights") describe where
    # training started, not the architecture: the saved file holds the weights, and a loader refuses a
    # config.json whose model_args name a weight source.
    for key in [k for k, v in args.items() if k in _CALLER_ARGS or names_weight_source(k, v)]:
        args.pop(key)
    for key, value in (model_args or {}).items():
        if key in _CALLER_ARGS or names_weight_source(key, value):
            raise ValueError(f"model_args['{key}'] names weights or a file; config.json describes the architecture "
                             "only (the folder's model.safetensors holds the weights). Leave it out.")
        args[key] = value
    args["num_classes"] = num_classes
    for key, value in args.items():
        try:
            json.dumps(_jsonable(value))
        except TypeError as e:
            raise ValueError(f"model argument {key}={value!r} cannot be written to config.json; pass "
                             f"model_args={{'{key}': <json value>}} to save_for_hub.") from e
    zoo = {
        "version": _package_version(),
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


# Hub dataset ids of data sets a zoo model is commonly trained on; other names are written as given.
_HUB_DATASETS = {
    "imagenet-1k": ("ILSVRC/imagenet-1k", "ImageNet-1k"),
    "imagenet": ("ILSVRC/imagenet-1k", "ImageNet-1k"),
    "cifar10": ("uoft-cs/cifar10", "CIFAR-10"),
    "cifar-10": ("uoft-cs/cifar10", "CIFAR-10"),
    "cifar100": ("uoft-cs/cifar100", "CIFAR-100"),
    "cifar-100": ("uoft-cs/cifar100", "CIFAR-100"),
    "mnist": ("ylecun/mnist", "MNIST"),
    "svhn": ("ufldl-stanford/svhn", "SVHN"),
}
# metric key -> (model-index metric type, display name). Accuracies are in percent, as timm reports them.
_METRICS = {
    "top1": ("accuracy", "Top-1 accuracy (%)"),
    "top5": ("accuracy", "Top-5 accuracy (%)"),
    "loss": ("loss", "Loss"),
}
PROJECT_LICENSE = "apache-2.0"
_LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")


def _hub_dataset(name: str) -> Tuple[str, str]:
    return _HUB_DATASETS.get(name.lower().removeprefix("torch/").removeprefix("hfds/"), (name, name))


def _hub_repo_of(base_model: Optional[str]) -> Optional[str]:
    """The Hub repo id in a base-model reference ('org/repo', 'hf-hub:org/repo@rev'); None for a local path."""
    if not base_model:
        return None
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repo = base_model.removeprefix("hf-hub:").split("@", 1)[0]
    try:
        validate_repo_id(repo)
    except HFValidationError:
        return None
    return repo if "/" in repo else None


def _license_fields(license_: Optional[str]) -> Dict[str, Optional[str]]:
    """Card metadata for a licence: a Hub licence id as is; free text as 'other' with a name."""
    if not license_:
        return {"license": PROJECT_LICENSE}
    if _LICENSE_ID.match(license_):
        return {"license": license_}
    slug = re.sub(r"[^a-z0-9]+", "-", license_.lower()).strip("-")[:60] or "custom"
    return {"license": "other", "license_name": slug}


def paper_of(architecture: str) -> Tuple[Optional[str], Optional[str]]:
    """(arXiv id as the Hub writes it, title) of the paper a zoo architecture implements; (None, None) if none."""
    return _PAPER_TAGS.get(_method_of(architecture), (None, None))


def model_card(config: Dict[str, Any], metrics: Optional[Dict[str, float]], datasets: Iterable[str],
               description: Optional[str], base_model: Optional[str] = None, repo_id: Optional[str] = None,
               license_: Optional[str] = None) -> str:
    """README.md with Hub metadata (ModelCardData: licence, library, tags, Hub dataset ids, base_model and a
    model-index of the measured metrics) and a usage section that names the repo."""
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.repocard_data import EvalResult

    architecture = config["architecture"]
    method = config["collab_zoo"].get("method")
    paper_tag, paper_title = _PAPER_TAGS.get(method, (None, None))
    tags = ["image-classification", "timm", "collab_zoo"] + ([method] if method else [])
    if paper_tag:
        tags.append(paper_tag)
    hub_datasets = [_hub_dataset(name) for name in datasets]
    eval_results = None
    numeric = {k: float(v) for k, v in (metrics or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numeric and hub_datasets:
        dataset_id, dataset_name = hub_datasets[0]
        eval_results = [EvalResult(task_type="image-classification", task_name="Image Classification",
                                   dataset_type=dataset_id, dataset_name=dataset_name,
                                   metric_type=_METRICS.get(key, (key, key))[0],
                                   metric_name=_METRICS.get(key, (key, key))[1], metric_value=value)
                        for key, value in numeric.items()]
    licence = license_ or config["pretrained_cfg"].get("license")
    hub_base = _hub_repo_of(base_model)
    data = ModelCardData(
        library_name="timm",
        tags=tags,
        datasets=[d for d, _ in hub_datasets] or None,
        metrics=sorted({_METRICS.get(k, (k, k))[0] for k in numeric}) or None,
        model_name=repo_id or architecture,
        eval_results=eval_results,
        pipeline_tag="image-classification",
        base_model=hub_base,
        **_license_fields(licence),
    )
    name = f"hf-hub:{repo_id}" if repo_id else "local-dir:/path/to/this/folder"
    heads = ", ".join(config["collab_zoo"]["head_names"])
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {repo_id or architecture}", "",
        description or f"A `{architecture}` model from collab_zoo.", "",
        f"- Architecture: `{architecture}` (collab_zoo)",
        f"- Paper: {paper_title}" + (f" ({paper_tag})" if paper_tag else "") if paper_title else None,
        f"- Classes: {config['num_classes']}; heads: {heads}",
        f"- Training-only heads included: {config['collab_zoo']['training_heads_included']}",
        f"- Fine-tuned from: `{base_model}`" if base_model else None,
        f"- Licence: {licence or PROJECT_LICENSE + ' (collab_zoo default; no other licence was recorded)'}",
        "",
    ]
    if metrics:
        lines += ["## Measured", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, (int, float)) else f"| {k} | {v} |"
                  for k, v in metrics.items()]
        lines.append("")
    lines += [
        "## Use", "",
        "```python",
        "import collab_zoo  # registers the zoo's architectures with timm",
        f'model = collab_zoo.create_model("{name}", pretrained=True).eval()',
        "```", "",
        f"Plain timm users: `import collab_zoo` first (`pip install collab-zoo`), then "
        f'`timm.create_model("{name}", pretrained=True)` works as usual; without that import timm does not '
        f"know `{architecture}` and reports `Unknown model`.",
        "",
        "Weights are safetensors; `config.json` is timm's format (plus a `collab_zoo` section with the weights' "
        "sha256).", "",
    ]
    return ModelCard("\n".join(line for line in lines if line is not None)).content


def save_for_hub(model: nn.Module, save_directory: os.PathLike, *, keep_training_heads: bool = False,
                 model_args: Optional[Dict[str, Any]] = None, metrics: Optional[Dict[str, float]] = None,
                 datasets: Iterable[str] = (), description: Optional[str] = None,
                 extra_config: Optional[Dict[str, Any]] = None, base_model: Optional[str] = None,
                 repo_id: Optional[str] = None, license: Optional[str] = None) -> Path:
    """Write a Hub folder for ``model``: model.safetensors, config.json, README.md. Returns the folder.

    A model with training-only heads (DKS) stores only what inference needs unless ``keep_training_heads``.
    ``metrics`` (name -> value; top1/top5 in percent) and ``datasets`` (names such as ``imagenet-1k``, written
    as Hub dataset ids where known) go into the model card's metadata and model-index. ``base_model`` names the
    checkpoint a fine-tune started from (``org/repo``; a local path is kept in config.json and the card's text
    only). ``repo_id`` is the repo the folder is for (the card's usage snippet names it). ``license``: a Hub
    licence id; default the licence the weights' pretrained_cfg records, else the project's (apache-2.0).
    """
    save_directory = Path(save_directory)
    if hasattr(model, "hub_state_dict"):
        tensors = model.hub_state_dict(keep_training_heads=keep_training_heads)
    else:
        tensors = model.state_dict()
    # Checked before anything is written, so a diverged model never reaches a folder or a push.
    check_finite(tensors, f"Refusing to write the Hub folder {save_directory}")
    save_directory.mkdir(parents=True, exist_ok=True)
    config = hub_config_json(model, keep_training_heads, model_args, extra_config)
    if base_model:
        config["collab_zoo"]["base_model"] = base_model
    # One metadata key only: safetensors writes a multi-key map in random order, which would give the same
    # weights a different sha256 on every save.
    _save_safetensors(tensors, save_directory / DEFAULT_WEIGHTS_NAME, metadata={"format": "pt"})
    config["collab_zoo"]["sha256"] = sha256_of(save_directory / DEFAULT_WEIGHTS_NAME)
    atomic_write_text(save_directory / "config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(save_directory / "README.md",
                      model_card(config, metrics, datasets, description, base_model, repo_id, license))
    return save_directory


class PushedCommit(str):
    """The commit id of a push (a str: ``f"hf-hub:{repo}@{commit}"`` pins it), with its URLs as attributes.

    ``.oid`` is the id again, for code written against huggingface_hub's CommitInfo.
    """

    repo_id: str
    commit_url: str
    repo_url: str

    def __new__(cls, oid: str, repo_id: str, commit_url: str, repo_url: str):
        commit = super().__new__(cls, oid)
        commit.repo_id, commit.commit_url, commit.repo_url = repo_id, commit_url, repo_url
        return commit

    @property
    def oid(self) -> str:
        return str(self)


def upload_as_one_commit(api, repo_id: str, folder: os.PathLike, *, private: Optional[bool],
                         revision: Optional[str], commit_message: str) -> PushedCommit:
    """Create the repo if needed and upload ``folder`` as one commit; its id with the repo's URLs."""
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message)
    repo_url = str(getattr(info, "repo_url", "") or f"{api.endpoint}/{repo_id}")
    return PushedCommit(info.oid, repo_id, info.commit_url, repo_url)


def push_to_hub(model: nn.Module, repo_id: str, *, revision: Optional[str] = None, private: Optional[bool] = None,
                token: Optional[str] = None, commit_message: Optional[str] = None, keep_training_heads: bool = False,
                metrics: Optional[Dict[str, float]] = None, datasets: Iterable[str] = (),
                description: Optional[str] = None, model_args: Optional[Dict[str, Any]] = None,
                base_model: Optional[str] = None, license: Optional[str] = None, quiet: bool = False) -> PushedCommit:
    """save_for_hub into a temporary folder and upload it as one commit. Returns the commit id.

    The id is what a hub config pins (with the file's sha256, ``config.json`` -> ``collab_zoo.sha256``), and
    ``create_model(f"hf-hub:{repo_id}@{commit}")`` loads exactly this upload. The repo URL, the commit and the
    pinned name are logged and, unless ``quiet``, printed.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_for_hub(model, tmp, keep_training_heads=keep_training_heads, metrics=metrics, datasets=datasets,
                     description=description, model_args=model_args, base_model=base_model, repo_id=repo_id,
                     license=license)
        commit = upload_as_one_commit(api, repo_id, tmp, private=private, revision=revision,
                                      commit_message=commit_message or f"Upload {repo_id} from collab_zoo")
    message = (f"Pushed {repo_id} at commit {commit}\n  {commit.commit_url}\n"
               f"  load exactly this upload: collab_zoo.create_model(\"hf-hub:{repo_id}@{commit}\", pretrained=True)")
    _logger.info(message)
    if not quiet:
        print(message, flush=True)
    return commit
