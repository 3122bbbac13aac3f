"""Finding, checking and loading pretrained weights. Safetensors only: nothing loaded here is unpickled.

A weight source is resolved from a model's pretrained_cfg (in this order): an in-memory ``state_dict``,
a ``local-dir:`` folder, a ``file`` (file or folder), or a Hub repo (``hf_hub_id``, ``repo@revision``
pins a commit). Hub files go through huggingface_hub's cache; each file is checked against the sha256
its hub config pins, or else against the content hash the Hub served as its ETag. A damaged cached file is
evicted so that the next call downloads it again instead of failing forever.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from torch import Tensor, nn

from .errors import (ChecksumMismatchError, CorruptWeightsError, HubUnreachableError, NoPretrainedWeightsError,
                     StateDictMismatchError, UnsafeWeightsError)

_logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS_NAME = "model.safetensors"

__all__ = ["LoadReport", "load_pretrained_weights", "load_safetensors_file", "sha256_of", "download_weights",
           "split_hub_id", "check_safetensors_header"]


@dataclass
class LoadReport:
    source: str
    location: str
    loaded: List[str] = field(default_factory=list)
    initialised: List[str] = field(default_factory=list)
    adapted: List[str] = field(default_factory=list)


def split_hub_id(hub_id: str) -> Tuple[str, Optional[str]]:
    repo, _, revision = hub_id.partition("@")
    return repo, (revision or None)


def sha256_of(path: os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _git_blob_sha1(path: os.PathLike) -> str:
    size = os.path.getsize(path)
    digest = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_safetensors_header(path: os.PathLike) -> None:
    """Refuse anything that is not a complete safetensors file before handing it to the parser.

    The format is an 8-byte little-endian header length, a JSON header, then the tensor bytes; a pickle
    (or a torch zip archive) fails the first test, a truncated download the last.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptWeightsError(f"{path} is empty or truncated ({size} bytes); it is not a safetensors file.")
        (header_len,) = struct.unpack("<Q", head)
        first = f.read(1)
        if header_len > size - 8 or first != b"{":
            magic = head[:2]
            if magic == b"PK" or head[:1] == b"\x80":
                raise UnsafeWeightsError(
                    f"{path} is a pickle/torch.save file, not safetensors. collab_zoo never unpickles weights it "
                    "loads. Convert it once with `python -m collab_zoo.convert ...` (see README) or "
                    "`safetensors.torch.save_file(state_dict, 'model.safetensors')` in a trusted session.")
            raise CorruptWeightsError(f"{path} is not a valid safetensors file (bad header).")
        header = first + f.read(header_len - 1)
    try:
        meta = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptWeightsError(f"{path} has a damaged safetensors header ({e}).") from None
    end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        raise CorruptWeightsError(
            f"{path} is truncated or padded: its header promises {8 + header_len + end} bytes, the file has {size}.")


def load_safetensors_file(path: os.PathLike) -> Dict[str, Tensor]:
    from safetensors.torch import load_file

    check_safetensors_header(path)
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error type for malformed content
        raise CorruptWeightsError(f"{path} could not be parsed as safetensors: {e}") from None


# --- the Hub ---------------------------------------------------------------------------------------------------

def _evict_cached(path: Path) -> None:
    """Remove a cached Hub file (the snapshot link and the blob it points to)."""
    try:
        blob = path.resolve()
        if blob != path and blob.exists():
            blob.unlink()
        if path.is_symlink() or path.exists():
            path.unlink()
    except OSError as e:
        _logger.warning("Could not remove damaged cached file %s: %s", path, e)


def _expected_from_etag(path: Path) -> Optional[Tuple[str, str]]:
    """The Hub names cached blobs by ETag: sha256 for LFS files, git blob sha1 for small ones."""
    name = path.resolve().name
    if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
        return "sha256", name
    if len(name) == 40 and all(c in "0123456789abcdef" for c in name):
        return "sha1", name
    return None


def _unreachable_message(repo: str, revision: Optional[str], filename: str, reason: str) -> str:
    from huggingface_hub import constants

    return (
        f"Could not fetch '{filename}' of Hub repo '{repo}' (revision {revision or 'main'}) from "
        f"{constants.ENDPOINT}: {reason}. Nothing usable is cached under {constants.HF_HUB_CACHE}.\n"
        "What to do: check the network or HF_ENDPOINT; or pass a local copy with "
        "pretrained_cfg_overlay=dict(file='/path/to/model.safetensors') or the name 'local-dir:/path/to/folder'; "
        "or, once the file is cached, set HF_HUB_OFFLINE=1 to load it without the network.")


def download_weights(hub_id: str, filename: str, cache_dir: Optional[os.PathLike] = None) -> Path:
    """hf_hub_download with errors that say what to do; returns the cached file's path."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub import errors as hf_errors

    repo, revision = split_hub_id(hub_id)
    if not filename.endswith(".safetensors"):
        raise UnsafeWeightsError(
            f"Refusing to download '{filename}' from '{repo}': only .safetensors weights are loaded.")
    try:
        return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir))
    except hf_errors.LocalEntryNotFoundError as e:
        reason = "offline mode (HF_HUB_OFFLINE=1) and not cached" if constants.HF_HUB_OFFLINE else str(e).split("\n")[0]
        raise HubUnreachableError(_unreachable_message(repo, revision, filename, reason)) from None
    except hf_errors.RepositoryNotFoundError:
        raise NoPretrainedWeightsError(
            f"Hub repo '{repo}' does not exist (or is private) at {constants.ENDPOINT}. "
            "Check the repo id, or log in with `hf auth login` for a private repo.") from None
    except hf_errors.RevisionNotFoundError:
        raise NoPretrainedWeightsError(
            f"Hub repo '{repo}' has no revision '{revision}'. The pinned commit may have been rewritten; "
            "check the hub config or pass the revision you want.") from None
    except hf_errors.EntryNotFoundError:
        raise NoPretrainedWeightsError(
            f"Hub repo '{repo}' (revision {revision or 'main'}) has no file '{filename}'. "
            "The zoo loads safetensors weights only; a repo with just a pickle needs converting first.") from None
    except (OSError, hf_errors.HfHubHTTPError) as e:
        raise HubUnreachableError(_unreachable_message(repo, revision, filename, str(e).split("\n")[0])) from None


def _verify_download(path: Path, expected_sha256: Optional[str], origin: str) -> None:
    if expected_sha256 is not None:
        actual = sha256_of(path)
        if actual != expected_sha256:
            _evict_cached(path)
            raise ChecksumMismatchError(
                f"{origin}: sha256 {actual} does not match the pinned {expected_sha256}. The file may be "
                "truncated, damaged, or not the one the hub config describes. The cached copy was removed; "
                "the next call downloads it again. If it mismatches again, the repo changed: report it.")
        return
    expected = _expected_from_etag(path)
    if expected is None:
        return
    kind, value = expected
    actual = sha256_of(path) if kind == "sha256" else _git_blob_sha1(path)
    if actual != value:
        _evict_cached(path)
        raise CorruptWeightsError(
            f"{origin}: the cached file is damaged ({kind} {actual}, the Hub served {value}). "
            "It was removed from the cache; the next call downloads it again.")


# --- resolving and loading ------------------------------------------------------------------------------------

def _weights_in_folder(folder: Path, filename: Optional[str]) -> Path:
    candidate = folder / (filename or DEFAULT_WEIGHTS_NAME)
    if candidate.is_file():
        return candidate
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pth", ".pt", ".tar"))
    hint = f" It holds {', '.join(pickles)}: convert it with `python -m collab_zoo.convert`." if pickles else ""
    raise NoPretrainedWeightsError(f"No '{filename or DEFAULT_WEIGHTS_NAME}' in {folder}.{hint}")


def _pending_message(cfg: Dict[str, Any]) -> str:
    from .registry import get_hub_config, list_pretrained, tags_of

    arch = cfg.get("architecture") or "this model"
    tag = cfg.get("tag")
    config = get_hub_config(f"{arch}.{tag}") if tag else None
    if config is not None and not config.published:
        origin = config.origin
        return (
            f"'{config.name}' has a hub config but its Hub upload is pending (no pinned revision/sha256 yet). "
            f"Its weights come from {origin.get('url', 'the original release')}. Convert that file with "
            f"`{origin.get('convert', 'python -m collab_zoo.convert')}`, then load it with "
            f"create_model('local-dir:OUT_DIR') or pretrained_cfg_overlay=dict(file='OUT_DIR/model.safetensors').")
    tags = tags_of(arch) if arch != "this model" else []
    published = list_pretrained()
    msg = f"'{arch}' has no published pretrained weights"
    msg += f" (its tags: {', '.join(tags)})." if tags else "."
    msg += (f" Zoo models with published weights: {', '.join(published)}." if published
            else " No zoo weights are published on the Hub yet; see `collab_zoo.list_pretrained(include_pending=True)`.")
    msg += " Train it with train.py, or pass your own weights with pretrained_cfg_overlay=dict(file=...)."
    return msg


def resolve_weights(cfg: Dict[str, Any], cache_dir: Optional[os.PathLike] = None
                    ) -> Tuple[Dict[str, Tensor], str, str]:
    """(state_dict, source kind, location) for a pretrained_cfg, downloaded and checked."""
    from .registry import get_hub_config

    if cfg.get("state_dict") is not None:
        return dict(cfg["state_dict"]), "state_dict", "in-memory state_dict"
    filename = cfg.get("hf_hub_filename")
    file = cfg.get("file")
    if file:
        path = Path(file)
        if path.is_dir():
            path = _weights_in_folder(path, filename)
        elif not path.is_file():
            raise FileNotFoundError(f"Pretrained weight file {path} does not exist.")
        return load_safetensors_file(path), "file", str(path)
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        raise NoPretrainedWeightsError(_pending_message(cfg))
    filename = filename or DEFAULT_WEIGHTS_NAME
    repo, revision = split_hub_id(hub_id)
    path = download_weights(hub_id, filename, cache_dir=cache_dir)
    config = get_hub_config(f"{cfg.get('architecture')}.{cfg.get('tag')}") if cfg.get("tag") else None
    pinned = config is not None and config.published and (config.hf_hub_id, config.revision, config.filename) == (
        repo, revision, filename)
    origin = f"'{filename}' of '{repo}'@{revision or 'main'}"
    _verify_download(path, config.sha256 if pinned else None, origin)
    try:
        state_dict = load_safetensors_file(path)
    except CorruptWeightsError as e:
        _evict_cached(path)
        raise CorruptWeightsError(f"{e} The cached copy was removed; the next call downloads it again.") from None
    return state_dict, "hf-hub", f"{repo}@{revision or 'main'}/{filename}"


def _adapt_first_conv(model: nn.Module, state_dict: Dict[str, Tensor], first_convs, report: LoadReport) -> None:
    from timm.models import adapt_input_conv

    if not first_convs:
        return
    if isinstance(first_convs, str):
        first_convs = (first_convs,)
    own = model.state_dict()
    for name in first_convs:
        key = f"{name}.weight"
        if key not in state_dict or key not in own:
            continue
        have, want = state_dict[key].shape, own[key].shape
        if have == want or len(have) != 4 or have[0] != want[0] or have[2:] != want[2:]:
            continue
        state_dict[key] = adapt_input_conv(want[1], state_dict[key])
        report.adapted.append(f"{key}: {have[1]} -> {want[1]} input channels")


def _drop_mismatched_classifiers(model: nn.Module, state_dict: Dict[str, Tensor], report: LoadReport) -> None:
    names = model.classifier_names() if hasattr(model, "classifier_names") else ()
    if not names:
        name = model.get_classifier(name_only=True) if hasattr(model, "get_classifier") else None
        names = (name,) if isinstance(name, str) else ()
    own = model.state_dict()
    heads_differ = any(
        f"{n}.weight" in state_dict and f"{n}.weight" in own and state_dict[f"{n}.weight"].shape != own[f"{n}.weight"].shape
        for n in names)
    if not heads_differ:
        return
    # Another class count: every head's classifier starts fresh, not only the mismatched ones.
    for n in names:
        for suffix in (".weight", ".bias"):
            if state_dict.pop(n + suffix, None) is not None:
                report.initialised.append(n + suffix)


def load_state_dict_into(model: nn.Module, state_dict: Dict[str, Tensor], cfg: Dict[str, Any],
                         report: LoadReport) -> LoadReport:
    """Fit a state_dict to the model (key layout, class count, input channels) and load it strictly."""
    if hasattr(model, "remap_pretrained_keys"):
        state_dict = model.remap_pretrained_keys(dict(state_dict))
    _drop_mismatched_classifiers(model, state_dict, report)
    _adapt_first_conv(model, state_dict, cfg.get("first_conv"), report)

    own = model.state_dict()
    shape_errors = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                    for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    unexpected = sorted(k for k in state_dict if k not in own)
    missing = sorted(k for k in own if k not in state_dict)
    dropped = set(report.initialised)
    optional = model.optional_checkpoint_keys(state_dict) if hasattr(model, "optional_checkpoint_keys") else set()
    fresh = [k for k in missing if k in dropped or k in optional]
    really_missing = [k for k in missing if k not in fresh]
    if shape_errors or unexpected or really_missing:
        parts = []
        if shape_errors:
            parts.append("shape mismatches: " + "; ".join(shape_errors[:20]))
        if really_missing:
            parts.append(f"missing keys ({len(really_missing)}): " + ", ".join(really_missing[:20]))
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:20]))
        raise StateDictMismatchError(
            f"Weights from {report.location} do not fit {type(model).__name__} "
            f"({cfg.get('architecture', '?')}): " + " | ".join(parts) +
            ". Check that the architecture and its arguments match the checkpoint's config.json.")
    model.load_state_dict(state_dict, strict=False)
    report.loaded = sorted(state_dict)
    report.initialised = sorted(set(report.initialised) | set(fresh))
    return report


def summarize_keys(keys: List[str], limit: int = 8) -> str:
    """Key names, collapsed to their module where a module contributes many (``aux_heads.0.* (48 tensors)``)."""
    groups: Dict[str, List[str]] = {}
    for key in keys:
        parts = key.split(".")
        module = ".".join(parts[:2]) if len(parts) > 2 else key
        groups.setdefault(module, []).append(key)
    shown: List[str] = []
    for module, names in groups.items():
        shown += names if len(names) <= 4 else [f"{module}.* ({len(names)} tensors)"]
    return ", ".join(shown[:limit]) + (f", and {len(shown) - limit} more" if len(shown) > limit else "")


def load_pretrained_weights(model: nn.Module, cfg: Optional[Dict[str, Any]] = None,
                            cache_dir: Optional[os.PathLike] = None) -> LoadReport:
    """Load the weights a pretrained_cfg points at into ``model``; log what was initialised or adapted."""
    cfg = dict(cfg or getattr(model, "pretrained_cfg", {}) or {})
    state_dict, source, location = resolve_weights(cfg, cache_dir=cache_dir)
    report = LoadReport(source=source, location=location)
    load_state_dict_into(model, state_dict, cfg, report)
    _logger.info("Loaded %d tensors from %s.", len(report.loaded), location)
    if report.initialised:
        _logger.info("Initialised fresh (not in the checkpoint, or another class count): %s",
                     summarize_keys(report.initialised))
    for line in report.adapted:
        _logger.info("Adapted %s", line)
    model.pretrained_load_report = report
    return report
