"""Finding, checking and loading pretrained weights. Safetensors only: nothing loaded here is unpickled.

Where weights may come from depends on where the model came from (its pretrained_cfg ``source``):

* ``hf-hub:org/repo[@rev]``: only a ``.safetensors`` file inside that repo, at that revision. Fields of the
  repo's config.json that name another place (``file``, ``url``, ``state_dict``, another ``hf_hub_id``, a file
  name with ``..``) are ignored or refused; the file is checked against the hash the Hub serves as its ETag.
* ``local-dir:/folder``: only a ``.safetensors`` file inside that folder (never its pytorch_model.bin), checked
  against the sha256 its config.json records when it records one (``save_for_hub`` always does).
* a registry name (``arch.tag``): the copy the package ships (``collab_zoo/pretrained/``) or the tag's pinned
  repo and revision, checked against the tag's sha256 either way; or what the caller names in
  ``pretrained_cfg_overlay`` (an in-memory ``state_dict``, a ``file`` or folder).

Hub files go through huggingface_hub's cache. A damaged cached file is evicted so that the next call
downloads it again instead of failing forever. A Hub that does not answer within ``hub_timeout()`` seconds
($COLLAB_ZOO_HUB_TIMEOUT, else HF_HUB_ETAG_TIMEOUT, else 10) is reported at once (or a cached copy is used)
instead of the client's minutes of retries.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from torch import Tensor, nn

from .errors import (ChecksumMismatchError, CorruptWeightsError, HubUnreachableError, IncompatibleConfigError,
                     InvalidHubIdError, InvalidModelConfigError, NoPretrainedWeightsError, StateDictMismatchError,
                     UnsafeWeightsError)

_logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS_NAME = "model.safetensors"
_HEX40 = re.compile(r"^[0-9a-f]{40}$")

__all__ = ["LoadReport", "load_pretrained_weights", "load_safetensors_file", "sha256_of", "download_weights",
           "download_file", "split_hub_id", "check_safetensors_header", "hub_timeout", "read_model_config",
           "resolve_weights", "adapt_input_channels", "HUB_TIMEOUT_ENV"]


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
        if header_len > size - 8 or first not in (b"{", b"["):  # "[": JSON, of the wrong shape (below)
            magic = head[:2]
            if magic == b"PK" or head[:1] == b"\x80":
                raise UnsafeWeightsError(
                    f"{path} is a pickle/torch.save file, not safetensors. collab_zoo never unpickles weights it "
                    "loads. Convert it once with `python -m collab_zoo.convert ...` (README, 'Publishing weights') or "
                    "`safetensors.torch.save_file(state_dict, 'model.safetensors')` in a trusted session.")
            raise CorruptWeightsError(f"{path} is not a valid safetensors file (bad header).")
        header = first + f.read(header_len - 1)
    try:
        meta = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptWeightsError(f"{path} has a damaged safetensors header ({e}).") from None
    problem = _header_shape_problem(meta)
    if problem:
        raise CorruptWeightsError(
            f"{path} is not a valid safetensors file: its header is JSON but not a tensor table ({problem}). "
            "Write the file with safetensors' save_file, or re-download it.")
    end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        raise CorruptWeightsError(
            f"{path} is truncated or padded: its header promises {8 + header_len + end} bytes, the file has {size}.")


def _header_shape_problem(meta: Any) -> Optional[str]:
    """What makes a parsed safetensors header something other than {name: {dtype, shape, data_offsets}}."""
    if not isinstance(meta, dict):
        return f"the header is a JSON {type(meta).__name__}, not an object"
    for name, entry in meta.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                return "'__metadata__' must map names to strings"
            continue
        if not isinstance(entry, dict):
            return f"tensor '{name}' is described by a {type(entry).__name__}, not an object"
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str):
            return f"tensor '{name}' has no dtype"
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                   for d in shape):
            return f"tensor '{name}' has no valid shape"
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            return f"tensor '{name}' has no valid data_offsets"
    return None


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


HUB_TIMEOUT_ENV = "COLLAB_ZOO_HUB_TIMEOUT"
_DEFAULT_HUB_TIMEOUT = 10.0


def hub_timeout() -> float:
    """Seconds the Hub may take to answer a file's metadata request before collab_zoo reports it silent.

    $COLLAB_ZOO_HUB_TIMEOUT, else huggingface_hub's HF_HUB_ETAG_TIMEOUT when set, else 10. (Left to itself, a
    client of a Hub that accepts connections but never answers retries for minutes before saying anything.)
    """
    raw = os.environ.get(HUB_TIMEOUT_ENV, "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise IncompatibleConfigError(
                f"{HUB_TIMEOUT_ENV}={raw!r} is not a number of seconds above 0; set it to e.g. 10, or unset it.")
        return value
    if os.environ.get("HF_HUB_ETAG_TIMEOUT", "").strip():
        from huggingface_hub import constants

        return float(constants.HF_HUB_ETAG_TIMEOUT)
    return _DEFAULT_HUB_TIMEOUT


def check_hub_id(repo: str, revision: Optional[str] = None) -> None:
    """Refuse a malformed repo id (or revision) with a message instead of huggingface_hub's validation error."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise InvalidHubIdError(
            f"'{repo}' is not a valid Hub repo id: {str(e).splitlines()[0]} A repo id is 'owner/name' (letters, "
            "digits, '-', '_', '.'), optionally followed by '@revision', as in 'hf-hub:owner/name@main'.") from None
    if revision is not None and (not revision or any(c.isspace() for c in revision)):
        raise InvalidHubIdError(
            f"'{repo}@{revision}' names no valid revision: give a branch, tag or 40-hex commit id after '@'.")


def check_repo_filename(filename: Any, where: str) -> str:
    """A file name inside a repo or folder: relative, no '..', no backslash. Returns it."""
    bad = (not isinstance(filename, str) or not filename or filename.startswith(("/", "~")) or "\\" in filename
           or ":" in filename or any(part in ("", ".", "..") for part in filename.split("/")))
    if bad:
        raise InvalidHubIdError(
            f"{where} names the weight file {filename!r}, which is not a plain file name inside the repo or "
            "folder (no absolute paths, '..', '~' or drive letters). Weights are read only from inside it.")
    return filename


def _unreachable_message(repo: str, revision: Optional[str], filename: str, reason: str) -> str:
    from huggingface_hub import constants

    return (
        f"Could not fetch '{filename}' of Hub repo '{repo}' (revision {revision or 'main'}) from "
        f"{constants.ENDPOINT}: {reason}. Nothing usable is cached under {constants.HF_HUB_CACHE}.\n"
        "What to do: check the network or HF_ENDPOINT; or pass a local copy with "
        "pretrained_cfg_overlay=dict(file='/path/to/model.safetensors') or the name 'local-dir:/path/to/folder'; "
        "or, once the file is cached, set HF_HUB_OFFLINE=1 to load it without the network.")


def _hub_silence(repo: str, revision: Optional[str], filename: str, timeout: float) -> Optional[str]:
    """None if the Hub answers a metadata request for the file within ``timeout`` (any answer, 404 included);
    else why not. One request, no retries: hf_hub_download's own retries take minutes on a silent server."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision), timeout=timeout)
    except HfHubHTTPError:
        return None  # an answer (missing repo, file, revision...): hf_hub_download reports it precisely
    except Exception as e:  # requests, httpx or httpx2 transport errors, by client generation
        reason = str(e).split("\n")[0] or type(e).__name__
        if "timed out" in reason.lower() or "timeout" in type(e).__name__.lower():
            return (f"no answer within {timeout:g} s (a timeout you can raise with {HUB_TIMEOUT_ENV}=SECONDS "
                    "or HF_HUB_ETAG_TIMEOUT)")
        return reason
    return None


def _cached_copy(repo: str, revision: Optional[str], filename: str, cache_dir) -> Optional[Path]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hf_errors

    try:
        return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except (hf_errors.LocalEntryNotFoundError, hf_errors.EntryNotFoundError, OSError, ValueError):
        return None


def download_file(hub_id: str, filename: str, cache_dir: Optional[os.PathLike] = None,
                  timeout: Optional[float] = None) -> Path:
    """One file of a Hub repo through huggingface_hub's cache, with errors that say what to do.

    A commit-pinned file already cached is used without the network. Otherwise the Hub gets ``timeout``
    seconds (default ``hub_timeout()``) to answer; a silent Hub means the cached copy (with a warning) or
    HubUnreachableError, within seconds.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub import errors as hf_errors

    repo, revision = split_hub_id(hub_id)
    check_hub_id(repo, revision)
    check_repo_filename(filename, f"'{hub_id}'")
    if not constants.HF_HUB_OFFLINE:
        if revision is not None and _HEX40.match(revision):
            cached = _cached_copy(repo, revision, filename, cache_dir)
            if cached is not None:
                return cached
        timeout = hub_timeout() if timeout is None else timeout
        silence = _hub_silence(repo, revision, filename, timeout)
        if silence is not None:
            cached = _cached_copy(repo, revision, filename, cache_dir)
            if cached is not None:
                _logger.warning("The Hub at %s did not answer (%s); using the cached copy of '%s' of '%s'.",
                                constants.ENDPOINT, silence, filename, hub_id)
                return cached
            raise HubUnreachableError(_unreachable_message(repo, revision, filename, silence))
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
        hint = (" The zoo loads safetensors weights only; a repo with just a pickle needs converting first."
                if filename.endswith(".safetensors") else
                " A timm or collab_zoo model repo has a config.json next to its weights; this repo is not one."
                if filename == "config.json" else "")
        raise NoPretrainedWeightsError(
            f"Hub repo '{repo}' (revision {revision or 'main'}) has no file '{filename}'.{hint}") from None
    except hf_errors.HFValidationError as e:
        raise InvalidHubIdError(f"'{hub_id}': {str(e).splitlines()[0]}") from None
    except (OSError, hf_errors.HfHubHTTPError) as e:
        raise HubUnreachableError(_unreachable_message(repo, revision, filename, str(e).split("\n")[0])) from None


def download_weights(hub_id: str, filename: str, cache_dir: Optional[os.PathLike] = None,
                     timeout: Optional[float] = None) -> Path:
    """``download_file`` for a weight file, which must be safetensors; returns the cached file's path."""
    if not str(filename).endswith(".safetensors"):
        raise UnsafeWeightsError(
            f"Refusing to download '{filename}' from '{split_hub_id(hub_id)[0]}': only .safetensors weights are "
            "loaded.")
    return download_file(hub_id, filename, cache_dir=cache_dir, timeout=timeout)


def _verify_download(path: Path, expected_sha256: Optional[str], origin: str, evict: bool = True) -> None:
    """Check a file against its pinned sha256 (else the Hub's ETag); a mismatching cached file is evicted."""
    if expected_sha256 is not None:
        actual = sha256_of(path)
        if actual != expected_sha256 and not evict:
            raise ChecksumMismatchError(
                f"{origin}: sha256 {actual} does not match the pinned {expected_sha256}. The installed file was "
                "changed or damaged; reinstall collab-zoo (pip install --force-reinstall collab-zoo).")
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


# --- a model folder's config.json --------------------------------------------------------------------------------

# Constructor arguments that would name a weight source of their own (a file, a URL, another model's weights,
# e.g. the complementary ensemble's first_member_weights). A config.json's model_args describe the architecture
# only; weights come from the repo or folder itself.
_SOURCE_WORDS = {"weights", "weight", "checkpoint", "ckpt", "pretrained", "file", "url"}
_PLACE_WORDS = {"path", "dir", "folder"}


def names_weight_source(key: str, value: Any) -> bool:
    """True for a model argument that points at weights or files (``first_member_weights``, ``checkpoint_path``,
    any path- or URL-like string), as opposed to one that shapes the architecture (``drop_path_rate``)."""
    words = set(re.split(r"[_\W]+", key.lower()))
    if words & _SOURCE_WORDS:
        return True
    if isinstance(value, str):
        if words & _PLACE_WORDS:
            return True
        text = value.strip().lower()
        return "://" in text or text.startswith(("/", "~", "hf-hub:", "local-dir:", "hf_hub:")) or "\\" in text
    return False

# Arguments the factory itself passes; a config.json naming them would collide with the caller's.
_RESERVED_ARGS = {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "checkpoint_path",
                  "features_only", "out_indices", "feature_cls", "feature_cfg", "scriptable", "exportable", "no_jit",
                  "pretrained_model_args"}
# Fields of a pretrained_cfg that say where weights live: set by the loader, never taken from a config.json.
SOURCE_FIELDS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source")


def read_model_config(data: bytes, origin: str) -> Dict[str, Any]:
    """Parse and check a timm/collab_zoo ``config.json``; every problem is an InvalidModelConfigError.

    Returns {architecture, num_classes, num_features, pretrained_cfg, model_args, collab_zoo}, with the
    pretrained_cfg limited to timm's fields and stripped of every field that names a weight location
    (``SOURCE_FIELDS``; a checked ``hf_hub_filename`` is kept): the caller sets them from the repo or folder.
    """
    import dataclasses

    import timm
    from timm.models import PretrainedCfg

    def fail(problem: str):
        raise InvalidModelConfigError(
            f"{origin}: {problem}. A model's config.json is written by collab_zoo.save_for_hub, train.py or "
            "timm's save_for_hf; write it again, or fix that field by hand.")

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(f"is not UTF-8 text (byte {e.start})")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        fail(f"is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})")
    if not isinstance(cfg, dict):
        fail(f"must be a JSON object, not a {type(cfg).__name__}")
    if "pretrained_cfg" not in cfg:  # timm's older single-dict layout
        cfg = {"architecture": cfg.get("architecture"), "num_features": cfg.get("num_features"),
               "pretrained_cfg": {k: v for k, v in cfg.items() if k not in ("architecture", "num_features")}}
    architecture = cfg.get("architecture")
    if not isinstance(architecture, str) or not architecture or any(c in architecture for c in "/:\\ "):
        fail(f"field 'architecture' must name a registered model (e.g. \"dks_resnet32\"), not {architecture!r}")
    pretrained_cfg = cfg["pretrained_cfg"]
    if not isinstance(pretrained_cfg, dict):
        fail(f"field 'pretrained_cfg' must be an object, not a {type(pretrained_cfg).__name__}")
    model_args = cfg.get("model_args") or {}
    if not isinstance(model_args, dict):
        fail(f"field 'model_args' must be an object, not a {type(model_args).__name__}")
    for key in model_args:
        if key in _RESERVED_ARGS:
            fail(f"field 'model_args.{key}' is the caller's to set, not a config.json's")
        if names_weight_source(key, model_args[key]):
            fail(f"field 'model_args.{key}' would name a weight source outside the repo or folder, whose weights "
                 "are its own .safetensors file")
    num_classes = cfg.get("num_classes", pretrained_cfg.get("num_classes"))
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                    or num_classes < 0):
        fail(f"field 'num_classes' must be a whole number >= 0, not {num_classes!r}")
    num_features = cfg.get("num_features")
    if num_features is not None and (not isinstance(num_features, int) or isinstance(num_features, bool)):
        fail(f"field 'num_features' must be a whole number, not {num_features!r}")
    filename = pretrained_cfg.get("hf_hub_filename")
    if filename is not None:
        try:
            check_repo_filename(filename, "its pretrained_cfg.hf_hub_filename")
        except InvalidHubIdError as e:
            fail(f"field 'pretrained_cfg.hf_hub_filename' is refused: {e}")
        if not filename.endswith(".safetensors"):
            fail(f"field 'pretrained_cfg.hf_hub_filename' names '{filename}'; only .safetensors weights are loaded")
    for key in ("input_size", "test_input_size", "min_input_size"):
        size = pretrained_cfg.get(key)
        if size is not None and (not isinstance(size, (list, tuple)) or len(size) != 3
                                 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                            for v in size)):
            fail(f"field 'pretrained_cfg.{key}' must be [channels, height, width], not {size!r}")
    for key in ("mean", "std"):
        values = pretrained_cfg.get(key)
        if values is not None and (not isinstance(values, (list, tuple)) or not values
                                   or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              for v in values)):
            fail(f"field 'pretrained_cfg.{key}' must be a list of numbers, not {values!r}")
    known = {f.name for f in dataclasses.fields(PretrainedCfg)}
    unknown = sorted(k for k in pretrained_cfg if k not in known)
    if unknown:
        _logger.warning("%s: ignoring pretrained_cfg fields this timm (%s) does not know: %s.", origin,
                        timm.__version__, ", ".join(unknown))
    ignored = sorted(k for k in SOURCE_FIELDS if k != "hf_hub_filename" and pretrained_cfg.get(k))
    if ignored:
        _logger.warning("%s: ignoring pretrained_cfg %s: weights come only from the repo or folder itself.",
                        origin, ", ".join(ignored))
    cleaned = {k: v for k, v in pretrained_cfg.items() if k in known and k not in SOURCE_FIELDS}
    if filename is not None:
        cleaned["hf_hub_filename"] = filename
    if num_classes is not None:
        cleaned["num_classes"] = num_classes
    for key, value in list(cleaned.items()):
        if isinstance(value, list):
            cleaned[key] = tuple(value)
    zoo = cfg.get("collab_zoo") if isinstance(cfg.get("collab_zoo"), dict) else {}
    return {"architecture": architecture, "num_classes": num_classes, "num_features": num_features,
            "pretrained_cfg": cleaned, "model_args": dict(model_args), "collab_zoo": zoo}


def _folder_config(folder: Path) -> Optional[Dict[str, Any]]:
    path = folder / "config.json"
    if not path.is_file():
        return None
    return read_model_config(path.read_bytes(), str(path))


# --- resolving and loading ------------------------------------------------------------------------------------

def _weights_in_folder(folder: Path, filename: Optional[str]) -> Path:
    """The safetensors file a folder holds: ``filename`` (checked to stay inside), else its only one."""
    name = check_repo_filename(filename or DEFAULT_WEIGHTS_NAME, f"folder {folder}")
    candidate = folder / name
    if candidate.is_file():
        if not name.endswith(".safetensors"):
            raise UnsafeWeightsError(f"Refusing {candidate}: only .safetensors weights are loaded.")
        return candidate
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pth", ".pt", ".tar"))
    hint = (f" It holds {', '.join(pickles)}, which collab_zoo never unpickles: convert it once with "
            "`python -m collab_zoo.convert` in a session you trust." if pickles else "")
    raise NoPretrainedWeightsError(f"No '{name}' in {folder}.{hint}")


def _check_folder_pin(folder: Path, weights: Path) -> None:
    """A folder written by save_for_hub records its weights' sha256 in config.json: check the file against it."""
    config = _folder_config(folder)
    expected = (config or {}).get("collab_zoo", {}).get("sha256")
    if not isinstance(expected, str):
        return
    actual = sha256_of(weights)
    if actual != expected:
        raise ChecksumMismatchError(
            f"{weights}: sha256 {actual} does not match the {expected} its config.json records. The file was "
            "changed or replaced after the folder was written; write the folder again (save_for_hub or train.py), "
            "or restore the original file.")


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


def _ignored_fields(cfg: Dict[str, Any], fields: Tuple[str, ...], origin: str) -> None:
    named = [k for k in fields if cfg.get(k)]
    if named:
        _logger.warning("%s: ignoring pretrained_cfg %s: its weights come only from inside it.", origin,
                        ", ".join(named))


def _from_hub(hub_id: str, filename: Optional[str], expected_sha256: Optional[str], cache_dir
              ) -> Tuple[Dict[str, Tensor], str, str]:
    filename = filename or DEFAULT_WEIGHTS_NAME
    repo, revision = split_hub_id(hub_id)
    path = download_weights(hub_id, filename, cache_dir=cache_dir)
    origin = f"'{filename}' of '{repo}'@{revision or 'main'}"
    _verify_download(path, expected_sha256, origin)
    try:
        state_dict = load_safetensors_file(path)
    except CorruptWeightsError as e:
        _evict_cached(path)
        raise CorruptWeightsError(f"{e} The cached copy was removed; the next call downloads it again.") from None
    return state_dict, "hf-hub", f"{repo}@{revision or 'main'}/{filename}"


def _from_folder(folder: Path, filename: Optional[str], kind: str) -> Tuple[Dict[str, Tensor], str, str]:
    if not folder.is_dir():
        raise FileNotFoundError(f"Model folder {folder} does not exist.")
    path = _weights_in_folder(folder, filename)
    check_safetensors_header(path)
    _check_folder_pin(folder, path)
    return load_safetensors_file(path), kind, str(path)


def _from_package(config) -> Tuple[Dict[str, Tensor], str, str]:
    """A tag's weights as the package ships them, checked against the tag's sha256 as a download is."""
    path = config.packaged_path
    if not path.is_file():
        raise NoPretrainedWeightsError(
            f"'{config.name}' ships its weights as {path}, which this installation lacks. Reinstall collab-zoo "
            "(pip install --force-reinstall collab-zoo); a source checkout has them under collab_zoo/pretrained/.")
    check_safetensors_header(path)
    _verify_download(path, config.sha256, f"'{config.name}' ({path})", evict=False)
    return load_safetensors_file(path), "package", str(path)


def resolve_weights(cfg: Dict[str, Any], cache_dir: Optional[os.PathLike] = None
                    ) -> Tuple[Dict[str, Tensor], str, str]:
    """(state_dict, source kind, location) for a pretrained_cfg, downloaded and checked.

    The cfg's ``source`` decides what may be read (see the module docstring): a model that came from a Hub
    repo or a folder gets its weights from inside that repo or folder and nowhere else, whatever its
    config.json says; only a registry name or the caller's own overlay may name a file or a state_dict.
    """
    from .registry import get_hub_config

    source = cfg.get("source")
    if source == "hf-hub":
        hub_id = cfg.get("hf_hub_id")  # set by timm (or the factory) from the name the caller gave
        if not hub_id:
            raise NoPretrainedWeightsError("An hf-hub: model's pretrained_cfg lost its repo id (hf_hub_id).")
        _ignored_fields(cfg, ("file", "url", "state_dict"), f"hf-hub:{hub_id}")
        return _from_hub(hub_id, cfg.get("hf_hub_filename"), None, cache_dir)
    if source == "local-dir":
        folder = Path(cfg.get("file") or "")
        _ignored_fields(cfg, ("url", "state_dict", "hf_hub_id"), f"local-dir:{folder}")
        return _from_folder(folder, cfg.get("hf_hub_filename"), "local-dir")

    if cfg.get("state_dict") is not None:
        return dict(cfg["state_dict"]), "state_dict", "in-memory state_dict"
    filename = cfg.get("hf_hub_filename")
    file = cfg.get("file")
    config = get_hub_config(f"{cfg.get('architecture')}.{cfg.get('tag')}") if cfg.get("tag") else None
    if file and config is not None and config.packaged_file and file == str(config.packaged_path):
        return _from_package(config)
    if file:
        path = Path(file)
        if path.is_dir():
            return _from_folder(path, filename, "file")
        if not path.is_file():
            raise FileNotFoundError(f"Pretrained weight file {path} does not exist.")
        return load_safetensors_file(path), "file", str(path)
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        raise NoPretrainedWeightsError(_pending_message(cfg))
    repo, revision = split_hub_id(hub_id)
    pinned = config is not None and config.published and (config.hf_hub_id, config.revision, config.filename) == (
        repo, revision, filename or DEFAULT_WEIGHTS_NAME)
    return _from_hub(hub_id, filename, config.sha256 if pinned else None, cache_dir)


def adapt_input_channels(weight: Tensor, in_chans: int) -> Tensor:
    """A first convolution's weights [O, I, kh, kw] for ``in_chans`` input channels, by timm's rule
    (``timm.models.adapt_input_conv``): to one channel the filters are summed; to more they are repeated
    across the new channels and scaled by I / in_chans, so an image whose channels are all equal gives the
    same response. timm's rule is written for a 3-channel checkpoint; its ``base_chans`` is set to the
    checkpoint's own count here, so a 1-channel digits checkpoint adapts to RGB input the same way."""
    from timm.models import adapt_input_conv

    return adapt_input_conv(in_chans, weight, base_chans=weight.shape[1])


def _adapt_first_conv(model: nn.Module, state_dict: Dict[str, Tensor], first_convs, report: LoadReport) -> None:
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
        state_dict[key] = adapt_input_channels(state_dict[key], want[1])
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
