"""Training checkpoints without pickle, written whole or not at all, and checked when read.

A resumable checkpoint (``checkpoints/last``) is a folder: ``model.safetensors`` (the full model, training heads
included), ``optimizer.safetensors`` + the optimizer's non-tensor state, the scheduler, the loss scaler, the EMA
weights, ``state.json`` (counters, settings) and one ``rank<r>.json`` per process (its random generators and the
epoch's running sums). Weight checkpoints (``checkpoints/best``, ``checkpoints/epoch-<n>``) hold the model's
and EMA's weights, the metrics they scored (``metrics.json``) and the run's model settings (``run.json``).

Every checkpoint folder is written the same way:

1. nothing non-finite: the weights, buffers, EMA and optimizer state are checked first (``integrity``), and a
   checkpoint that would hold NaN or infinity is not written at all;
2. aside: into ``.incoming-<name>`` next to it, every file flushed to disk (fsync);
3. ``manifest.json`` last: each file's size and sha256;
4. published by one atomic directory exchange (Linux ``renameat2(RENAME_EXCHANGE)``), then the old version is
   removed. Where the file system cannot exchange directories, the old version is first renamed to
   ``<name>.previous``, which readers fall back to, so a kill at any instant leaves a whole checkpoint readable.

Readers (``--resume``, ``validate.py --checkpoint``, ``--initial-checkpoint``) check every file against the
manifest before using any of it and refuse a torn or edited folder with what to do. Folders written before
manifests existed (checkpoint format 2) still load, with a warning that their files cannot be checked.

``CheckpointHistory`` keeps the N best epoch checkpoints by the evaluation metric, as timm's ``CheckpointSaver``
does with ``--checkpoint-hist``; timm's class itself is not used because it writes with ``torch.save`` (pickle),
which this project never reads back, and its files are neither hashed nor published atomically.
"""
from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import CorruptCheckpointError, IncompatibleConfigError, RunWriteError
from ..integrity import check_finite, named_tensors_in

__all__ = ["flatten_state", "unflatten_state", "save_tensors_and_json", "rng_state", "restore_rng_state",
           "publish_folder", "latest_checkpoint", "run_folder_of", "CHECKPOINT_FORMAT", "MANIFEST",
           "write_checkpoint", "write_weights", "CheckpointHistory", "CheckpointFolder", "find_checkpoint_weights",
           "expand_checkpoint_pattern", "verify_checkpoint", "fsync_folder", "WRITE_DELAY_ENV"]

_logger = logging.getLogger("collab_zoo.train")

CHECKPOINT_FORMAT = 3           # 3: manifest.json, run.json in weight folders, no absolute paths
_LEGACY_FORMATS = (2,)          # read with a warning: no manifest to check the files against
MANIFEST = "manifest.json"
INCOMING = ".incoming-"
PREVIOUS = ".previous"
# Seconds to sleep after each checkpoint file is written. Only delays (nothing else changes): the tests use it to
# land SIGTERM / SIGKILL while a checkpoint is being written.
WRITE_DELAY_ENV = "COLLAB_ZOO_TEST_WRITE_DELAY"
_TENSOR = "__tensor__"
_TUPLE = "__tuple__"


# --- nested state <-> JSON + named tensors ---------------------------------------------------------------------

def flatten_state(obj: Any, prefix: str = "") -> Tuple[Any, Dict[str, Tensor]]:
    """Split a nested state (dicts, lists, tuples, tensors, numbers, strings) into JSON and named tensors."""
    tensors: Dict[str, Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, Tensor):
            tensors[path] = value.detach().cpu().contiguous()
            return {_TENSOR: path}
        if isinstance(value, np.ndarray):
            tensors[path] = torch.from_numpy(value.astype(np.int64) if value.dtype.kind in "ui" else value.copy())
            return {_TENSOR: path, "numpy": str(value.dtype)}
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, (str, int)):
                    raise TypeError(f"state key {key!r} at {path or '<root>'} is neither str nor int")
            return {"__dict__": [[k, walk(v, f"{path}.{k}" if path else str(k))] for k, v in value.items()]}
        if isinstance(value, tuple):
            return {_TUPLE: [walk(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        if isinstance(value, (np.integer, np.floating)):
            return value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"cannot store {type(value).__name__} at {path or '<root>'} in a checkpoint")

    return walk(obj, prefix), tensors


def unflatten_state(tree: Any, tensors: Dict[str, Tensor]) -> Any:
    if isinstance(tree, dict):
        if _TENSOR in tree:
            tensor = tensors[tree[_TENSOR]]
            return tensor.numpy().astype(tree["numpy"]) if "numpy" in tree else tensor
        if _TUPLE in tree:
            return tuple(unflatten_state(v, tensors) for v in tree[_TUPLE])
        if "__dict__" in tree:
            return {k: unflatten_state(v, tensors) for k, v in tree["__dict__"]}
        return {k: unflatten_state(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    return tree


# --- writing files durably -----------------------------------------------------------------------------------------

def _write_delay() -> float:
    try:
        return max(0.0, float(os.environ.get(WRITE_DELAY_ENV, "0") or 0))
    except ValueError:
        return 0.0


def _write_file(path: Path, data: bytes) -> Dict[str, Any]:
    """Write ``data`` to ``path`` and flush it to disk; returns its manifest entry. open() (not mkstemp or
    safetensors' save_file, which create 0600 files) gives the permissions the user's umask says."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    delay = _write_delay()
    if delay:
        time.sleep(delay)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _tensor_bytes(tensors: Dict[str, Tensor]) -> bytes:
    from safetensors.torch import save

    # Cloning breaks storage shared between tensors (tied weights), which safetensors rejects.
    return save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


def save_tensors_and_json(folder: Path, name: str, state: Any) -> Dict[str, Dict[str, Any]]:
    """``name.json`` (structure and plain values) and ``name.safetensors`` (its tensors, if any); returns the
    files' manifest entries."""
    tree, tensors = flatten_state(state)
    entries = {}
    if tensors:
        entries[f"{name}.safetensors"] = _write_file(folder / f"{name}.safetensors", _tensor_bytes(tensors))
    entries[f"{name}.json"] = _write_file(folder / f"{name}.json", json.dumps(tree).encode())
    return entries


def _sha256_file(path: Path) -> Tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _write_manifest(folder: Path, entries: Dict[str, Dict[str, Any]]) -> None:
    """manifest.json, written after every other file: files another process wrote are hashed from disk."""
    files = dict(entries)
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != MANIFEST and path.name not in files:
            size, sha = _sha256_file(path)
            files[path.name] = {"size": size, "sha256": sha}
    manifest = {"format": CHECKPOINT_FORMAT, "files": dict(sorted(files.items()))}
    _write_file(folder / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def fsync_folder(folder: Path) -> None:
    """Make a folder's entries (new files, renames) durable. Some file systems cannot sync a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    renameat2 = getattr(_libc, "renameat2", None) if _libc else None
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def publish_folder(tmp: Path, final: Path) -> None:
    """Replace ``final`` by the complete folder ``tmp``. Readers see the old version or the new one, never a mix:
    an atomic exchange where the system has one, else renames through ``<final>.previous``, which readers use
    while ``final`` is missing."""
    fsync_folder(tmp)
    parent = final.parent
    backup = final.with_name(final.name + PREVIOUS)
    if final.exists():
        if _exchange(tmp, final):
            fsync_folder(parent)
            _remove_stale(tmp)
            _remove_stale(backup)
            return
        _remove_stale(backup, ignore_errors=False)
        os.replace(final, backup)
        fsync_folder(parent)
    os.replace(tmp, final)
    fsync_folder(parent)
    _remove_stale(backup)


def _remove_stale(path: Path, ignore_errors: bool = True) -> None:
    """Remove an old version, a staging folder a killed write left, or a plain file that stood where a checkpoint
    folder goes (a swap moves it to the staging name: left there, it would block every later write)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=ignore_errors)
        return
    try:
        path.unlink(missing_ok=True)
    except OSError:
        if not ignore_errors:
            raise


def _fresh_incoming(final: Path) -> Path:
    """The staging folder for ``final``, emptied: a run killed while writing leaves one behind, which only this
    run (it holds the run folder's lock) may remove."""
    tmp = final.with_name(INCOMING + final.name)
    _remove_stale(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _write_failed(final: Path, error: OSError) -> RunWriteError:
    reason = error.strerror or str(error)
    code = errno.errorcode.get(error.errno, "") if error.errno else ""
    return RunWriteError(
        f"Could not write the checkpoint {final.name} ({reason}{', ' + code if code else ''}, at {error.filename or final}). "
        f"Nothing was replaced: the previous {final.name}, if there was one, is whole and unchanged. Free disk space "
        "or fix the folder's permissions, then continue the run with --resume.")


def _gate(what: str, model_state: Optional[Dict[str, Tensor]], ema_state: Optional[Dict[str, Tensor]] = None,
          optimizer_state: Optional[Dict[str, Any]] = None) -> None:
    if model_state is not None:
        check_finite(model_state, f"{what}: the model's weights and buffers")
    if ema_state is not None:
        check_finite(ema_state, f"{what}: the EMA weights")
    if optimizer_state is not None:
        check_finite(named_tensors_in(optimizer_state.get("state", {}), "optimizer.state"),
                     f"{what}: the optimizer's state")


def write_checkpoint(root: Path, *, rank: int, is_main: bool, barrier: Callable[[], None],
                     rank_state: Dict[str, Any], model_state: Optional[Dict[str, Tensor]] = None,
                     optimizer_state: Optional[Dict[str, Any]] = None, scheduler_state: Optional[Dict[str, Any]] = None,
                     scaler_state: Optional[Dict[str, Any]] = None, ema_state: Optional[Dict[str, Tensor]] = None,
                     state: Optional[Dict[str, Any]] = None, name: str = "last") -> Path:
    """Write the resumable checkpoint ``root/name`` whole or not at all. Every process calls this (``barrier`` is
    the processes' rendezvous): each writes its own ``rank<r>`` files, the main process everything else, the
    manifest and the publishing rename. Raises NonFiniteError (nothing written) or RunWriteError."""
    final = root / name
    if is_main:
        _gate(f"checkpoints/{name}", model_state, ema_state, optimizer_state)
    tmp = root / f"{INCOMING}{name}"
    barrier()
    try:
        if is_main:
            root.mkdir(parents=True, exist_ok=True)
            _fresh_incoming(final)
        barrier()
        entries = save_tensors_and_json(tmp, f"rank{rank}", rank_state)
        if is_main:
            entries["model.safetensors"] = _write_file(tmp / "model.safetensors", _tensor_bytes(model_state))
            entries.update(save_tensors_and_json(tmp, "optimizer", optimizer_state))
            entries.update(save_tensors_and_json(tmp, "scheduler", scheduler_state or {}))
            if scaler_state is not None:
                entries.update(save_tensors_and_json(tmp, "scaler", scaler_state))
            if ema_state is not None:
                entries["ema.safetensors"] = _write_file(tmp / "ema.safetensors", _tensor_bytes(ema_state))
            body = json.dumps({"format": CHECKPOINT_FORMAT, **(state or {})}, indent=2)
            entries["state.json"] = _write_file(tmp / "state.json", body.encode())
        barrier()
        if is_main:
            _write_manifest(tmp, entries)
            publish_folder(tmp, final)
    except OSError as e:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(final, e) from None
    barrier()
    return final


def write_weights(folder: Path, model_state: Dict[str, Tensor], metrics: Dict[str, Any],
                  ema_state: Optional[Dict[str, Tensor]] = None, run: Optional[Dict[str, Any]] = None) -> Path:
    """A weights-only checkpoint (best, or one kept by --checkpoint-hist), whole or not at all. ``run``: the
    settings that rebuild the model (model name, options, channels), kept in run.json."""
    _gate(f"checkpoints/{folder.name}", model_state, ema_state)
    tmp = folder.with_name(INCOMING + folder.name)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _fresh_incoming(folder)
        entries = {"model.safetensors": _write_file(tmp / "model.safetensors", _tensor_bytes(model_state))}
        if ema_state is not None:
            entries["ema.safetensors"] = _write_file(tmp / "ema.safetensors", _tensor_bytes(ema_state))
        entries["metrics.json"] = _write_file(tmp / "metrics.json", json.dumps(metrics, indent=2).encode())
        body = json.dumps({"format": CHECKPOINT_FORMAT, "args": run or {}}, indent=2)
        entries["run.json"] = _write_file(tmp / "run.json", body.encode())
        _write_manifest(tmp, entries)
        publish_folder(tmp, folder)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(folder, e) from None
    return folder


def rng_state() -> Dict[str, Any]:
    state: Dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["cuda"]])


class CheckpointHistory:
    """The ``max_history`` best epoch checkpoints by a metric, best first, as timm's CheckpointSaver keeps them:
    an epoch's checkpoint is written when fewer are kept or it beats the worst kept one, which is then removed.
    The list is part of the run's progress, so a resumed run keeps the same set."""

    def __init__(self, root: Path, max_history: int, decreasing: bool, entries: Optional[List[List[Any]]] = None):
        self.root = Path(root)
        self.max_history = int(max_history)
        self.decreasing = bool(decreasing)
        self.entries: List[List[Any]] = [list(e) for e in (entries or [])]  # [metric, folder name]

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.decreasing else a > b

    def offer(self, name: str, metric: float, model_state: Dict[str, Tensor], metrics: Dict[str, Any],
              ema_state: Optional[Dict[str, Tensor]] = None, run: Optional[Dict[str, Any]] = None) -> bool:
        """Keep this epoch's weights if they rank among the best; returns whether they were kept."""
        if self.max_history <= 0:
            return False
        if len(self.entries) >= self.max_history and not self._better(metric, self.entries[-1][0]):
            return False
        write_weights(self.root / name, model_state, metrics, ema_state, run)
        self.entries = [e for e in self.entries if e[1] != name] + [[metric, name]]
        self.entries.sort(key=lambda e: e[0], reverse=not self.decreasing)
        for _, dropped in self.entries[self.max_history:]:
            shutil.rmtree(self.root / dropped, ignore_errors=True)
        self.entries = self.entries[: self.max_history]
        return True


# --- reading: every file checked against the manifest ----------------------------------------------------------

def _read_json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpointError(f"{path} is damaged: {what} is not valid JSON ({e}).") from None


def _declared_format(folder: Path) -> Optional[int]:
    """The format a folder's state.json or run.json says it was written in, if either can be read."""
    for name in ("state.json", "run.json"):
        path = folder / name
        if path.is_file():
            try:
                value = json.loads(path.read_bytes().decode("utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(value, dict) and isinstance(value.get("format"), int):
                return value["format"]
    return None


_warned_legacy: set = set()


def verify_checkpoint(folder: Path) -> Optional[Dict[str, Any]]:
    """Check every file of a checkpoint folder against its manifest; returns the manifest, or None for a folder
    written before manifests existed (loaded with a warning). Raises CorruptCheckpointError saying what is wrong."""
    folder = Path(folder)
    path = folder / MANIFEST
    redo = ("Resume from or evaluate another checkpoint of the run (checkpoints/last, checkpoints/best, "
            "checkpoints/epoch-*), or restore the folder from a backup; never edit a checkpoint's files by hand.")
    if not path.is_file():
        declared = _declared_format(folder)
        if declared is not None and declared >= 3:
            raise CorruptCheckpointError(
                f"{folder} is incomplete: it has no {MANIFEST}, which every checkpoint of format {declared} has, so "
                f"its files cannot be trusted. {redo}")
        if (folder / "config.json").is_file() and not any(
                (folder / n).is_file() for n in ("state.json", "metrics.json", "run.json")):
            raise IncompatibleConfigError(
                f"{folder} is a Hub folder, not a training checkpoint: load it with --model local-dir:{folder} "
                "--pretrained (its config.json holds the model's settings and the weights' sha256).")
        if not ((folder / "state.json").is_file() or (folder / "model.safetensors").is_file()):
            raise CorruptCheckpointError(f"{folder} is not a checkpoint folder (no {MANIFEST}, state.json or "
                                         f"model.safetensors). {redo}")
        if str(folder) not in _warned_legacy:
            _warned_legacy.add(str(folder))
            _logger.warning("%s was written before checkpoints had a manifest (format 2): its files cannot be "
                            "checked for damage. It is used as it is.", folder)
        return None
    manifest = _read_json_file(path, MANIFEST)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get("sha256"), str)
            for e in files.values()):
        raise CorruptCheckpointError(f"{path} is damaged: it does not list files with their size and sha256. {redo}")
    for name, entry in files.items():
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise CorruptCheckpointError(f"{path} names {name!r}, which is not a file of the folder. {redo}")
        file = folder / name
        if not file.is_file():
            raise CorruptCheckpointError(f"{folder} is torn or damaged: {name} is missing (the manifest lists it). "
                                         f"{redo}")
        size = file.stat().st_size
        if size != entry["size"]:
            raise CorruptCheckpointError(
                f"{folder} is torn or damaged: {name} has {size} bytes, its manifest says {entry['size']}. {redo}")
        if _sha256_file(file)[1] != entry["sha256"]:
            raise CorruptCheckpointError(
                f"{folder} is damaged: {name}'s sha256 differs from the one its manifest recorded when it was written. "
                f"{redo}")
    return manifest


class CheckpointFolder:
    """A checkpoint folder whose files were checked against its manifest; only listed files are read."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.manifest = verify_checkpoint(self.path)

    @property
    def legacy(self) -> bool:
        return self.manifest is None

    def has(self, name: str) -> bool:
        if self.manifest is not None:
            return name in self.manifest["files"]
        return (self.path / name).is_file()

    def file(self, name: str) -> Path:
        if not self.has(name):
            raise CorruptCheckpointError(f"{self.path} has no {name}: it is not a complete checkpoint of this kind.")
        return self.path / name

    def json(self, name: str) -> Any:
        return _read_json_file(self.file(name), name)

    def tensors(self, name: str) -> Dict[str, Tensor]:
        from ..weights import load_safetensors_file

        return load_safetensors_file(self.file(name))

    def state(self, name: str) -> Any:
        """What ``save_tensors_and_json(folder, name, ...)`` wrote."""
        tree = self.json(f"{name}.json")
        tensors = self.tensors(f"{name}.safetensors") if self.has(f"{name}.safetensors") else {}
        try:
            return unflatten_state(tree, tensors)
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptCheckpointError(f"{self.path}: {name}.json does not match its tensors ({e}).") from None

    def run_state(self) -> Dict[str, Any]:
        """state.json of a resumable checkpoint, with the fields resuming needs."""
        state = self.json("state.json")
        needed = ("progress", "args", "world_size", "experiment")
        if not isinstance(state, dict) or any(k not in state for k in needed) or not isinstance(
                state.get("args"), dict) or not isinstance(state.get("progress"), dict):
            missing = [k for k in needed if not isinstance(state, dict) or k not in state]
            raise CorruptCheckpointError(
                f"{self.path}/state.json is damaged: it lacks {', '.join(missing) or 'well-formed fields'}. Resume "
                "from another copy of the run, or start a new run (--initial-checkpoint takes the weights).")
        return state


def _is_checkpoint(folder: Path) -> bool:
    return folder.is_dir() and any((folder / n).is_file() for n in (MANIFEST, "state.json", "model.safetensors",
                                                                     "run.json"))


def _with_previous(folder: Path) -> Optional[Path]:
    """``folder``, or while a non-atomic publish is between its two renames, ``folder.previous``."""
    if _is_checkpoint(folder):
        return folder
    backup = folder.with_name(folder.name + PREVIOUS)
    if not folder.exists() and _is_checkpoint(backup):
        return backup
    return None


def latest_checkpoint(path: Path) -> CheckpointFolder:
    """The checked checkpoint to resume from: ``path`` itself, or a run folder's ``checkpoints/last``."""
    path = Path(path)
    if not path.exists():
        raise IncompatibleConfigError(f"--resume {path}: no such folder. Give a run folder (it holds "
                                      "checkpoints/last) or a checkpoint folder.")
    for candidate in (path, path / "checkpoints" / "last", path / "last"):
        folder = _with_previous(candidate)
        if folder is None:
            continue
        checked = CheckpointFolder(folder)
        if not checked.has("state.json"):
            raise IncompatibleConfigError(
                f"--resume {path}: {folder} holds weights only (a best or epoch checkpoint), not a resumable state. "
                f"Resume the run folder (its checkpoints/last), or start a new run from these weights with "
                f"--initial-checkpoint {folder}.")
        return checked
    raise IncompatibleConfigError(
        f"--resume {path}: no checkpoint there (expected a folder with state.json, or a run folder with "
        "checkpoints/last). Checkpoints are written every --recovery-interval steps and at each epoch end.")


def run_folder_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (``RUN/checkpoints/last`` -> ``RUN``): a resumed run writes there,
    wherever the run was first started, so a copied run folder continues in the copy."""
    checkpoint = Path(checkpoint)
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    raise IncompatibleConfigError(
        f"--resume {checkpoint}: this checkpoint is not inside a run folder (RUN/checkpoints/{checkpoint.name}), so "
        "there is no run to continue. Resume the run folder, or keep checkpoints in their run's checkpoints/ folder.")


def _run_settings(folder: CheckpointFolder) -> Optional[Dict[str, Any]]:
    """The settings that built the checkpoint's model: its own run.json or state.json, else (older runs) the
    run's checkpoints/last."""
    for name in ("run.json", "state.json"):
        if folder.has(name):
            value = folder.json(name)
            if isinstance(value, dict) and isinstance(value.get("args"), dict) and value["args"]:
                return value
    last = folder.path.parent / "last" / "state.json"
    if folder.path.parent.name == "checkpoints" and last.is_file():
        try:
            value = json.loads(last.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return value if isinstance(value, dict) and isinstance(value.get("args"), dict) else None
    return None


def find_checkpoint_weights(path: Path, use_ema: bool = False) -> Tuple[Path, Optional[Dict[str, Any]]]:
    """(weights file, the run's saved settings or None) for a safetensors file, a checkpoint folder or a run
    folder (its best checkpoint; its last, with a warning, when no epoch has finished). The folder is checked
    against its manifest first. ``use_ema`` picks the EMA weights a run with --model-ema saved."""
    path = Path(path)
    wanted = "ema.safetensors" if use_ema else "model.safetensors"
    if path.is_file():
        if path.suffix != ".safetensors":
            raise IncompatibleConfigError(
                f"{path} is not a safetensors file; only safetensors weights are read (never pickles). Convert "
                "it once with safetensors.torch.save_file, or python -m collab_zoo.convert for the papers' files.")
        if use_ema:
            raise IncompatibleConfigError(f"--use-ema needs a checkpoint folder (with ema.safetensors), got the "
                                          f"file {path}.")
        return path, None
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {path} does not exist.")
    folder = _with_previous(path)
    if folder is None:
        best = _with_previous(path / "checkpoints" / "best")
        last = _with_previous(path / "checkpoints" / "last")
        folder = best or last
        if folder is not None and best is None:
            _logger.warning("%s has no checkpoints/best (no epoch of the run finished its evaluation): using "
                            "checkpoints/last, where the run stopped.", path)
    if folder is None:
        raise FileNotFoundError(f"--checkpoint {path}: no model.safetensors there (nor in checkpoints/best or last).")
    checked = CheckpointFolder(folder)
    if not checked.has("model.safetensors"):
        raise CorruptCheckpointError(f"{folder} has no model.safetensors: it is not a complete checkpoint.")
    if not checked.has(wanted):
        raise IncompatibleConfigError(
            f"{folder} has no EMA weights (ema.safetensors): the run was trained without --model-ema. "
            "Drop --use-ema to evaluate its weights.")
    return folder / wanted, _run_settings(checked)


def expand_checkpoint_pattern(pattern: str) -> List[str]:
    """A --checkpoint with wildcards: every match, in natural order; a plain path as is. Staging folders of a
    checkpoint being written (``.incoming-*``) never match."""
    if not any(ch in pattern for ch in "*?["):
        return [pattern]
    from timm.utils import natural_key

    found = glob.glob(pattern)
    # A folder's ".previous" twin exists only while a publish is between two renames: the folder itself counts.
    matches = sorted((m for m in found if not Path(m).name.startswith(INCOMING)
                      and not (m.endswith(PREVIOUS) and m[: -len(PREVIOUS)] in found)), key=natural_key)
    if not matches:
        raise FileNotFoundError(f"--checkpoint {pattern}: the pattern matches nothing.")
    return matches
