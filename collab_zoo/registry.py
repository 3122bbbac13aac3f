"""The zoo's model registry, layered on timm's.

Every zoo architecture is registered in timm's own registry (so ``timm.create_model`` builds it after
``import collab_zoo``); this module additionally remembers which names are ours, and turns the JSON files
in ``hub_configs/`` (one per pretrained tag) into timm ``PretrainedCfg`` entries.

A hub config describes where a tag's weights live on the Hugging Face Hub (repo, pinned revision, file,
sha256) and everything a user needs to use them (preprocessing, labels, licence, paper, the paper's numbers).
A tag whose revision or sha256 is still ``null`` is *pending*: its config is registered (so the tag's
preprocessing is known), but it is not listed as pretrained and ``pretrained=True`` says how to convert
the original release instead of downloading.

A tag with a ``packaged_file`` ships its weights inside the package (``collab_zoo/pretrained/``), so it loads
offline on a fresh install; the file is checked against the config's sha256 exactly as a Hub download is.
These are the zoo's own small models, trained by ``train.py`` on the built-in data; the config records the
command and seed that made each one and the accuracy ``validate.py`` measured (``reported_metrics``).

This module sits below the backbones and methods (they import it to register) and never imports them.
Importing any ``collab_zoo.*`` module runs ``collab_zoo/__init__`` first, which imports them, so every caller
already sees the full registry.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import timm
from timm.models import PretrainedCfg, generate_default_cfgs, register_model

__all__ = [
    "HubConfig", "HubConfigError", "HubConfigWarning", "hub_configs", "get_hub_config", "register_hub_config", "zoo_default_cfgs", "zoo_model",
    "list_models", "list_pretrained", "is_model", "is_zoo_model", "get_pretrained_cfg", "closest_model_names",
    "tags_of",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_ZOO_MODELS: Dict[str, Callable[..., Any]] = {}

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class HubConfigError(ValueError):
    """A file in hub_configs/ is malformed."""


@dataclass(frozen=True)
class HubConfig:
    """One pretrained tag, as written in ``hub_configs/<arch>.<tag>.json``."""

    name: str                      # "arch.tag"
    hf_hub_id: str                 # "org/repo" on the Hugging Face Hub
    revision: Optional[str]        # 40-hex commit the weights are pinned to (None: pending upload)
    filename: str                  # weight file inside the repo, always a .safetensors
    sha256: Optional[str]          # sha256 of that file (None: pending upload)
    num_classes: int
    label_names_source: str
    input_size: Tuple[int, int, int]
    interpolation: str
    crop_pct: float
    crop_mode: str
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    license: str
    paper: Dict[str, str]
    reported_metrics: Dict[str, Any]
    origin: Dict[str, str]
    dataset: str = "imagenet-1k"
    notes: Tuple[str, ...] = field(default_factory=tuple)
    packaged_file: Optional[str] = None  # a file in collab_zoo/pretrained/ holding the weights (None: Hub only)
    label_names: Optional[Tuple[str, ...]] = None

    @property
    def architecture(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def published(self) -> bool:
        """Weights can be loaded: pinned on the Hub, or shipped in the package, and hashed either way."""
        return self.sha256 is not None and (self.revision is not None or self.packaged_file is not None)

    @property
    def packaged_path(self) -> Optional[Path]:
        """Where the package's copy of the weights is (whether or not it exists); None for a Hub-only tag."""
        return PRETRAINED_DIR / self.packaged_file if self.packaged_file else None

    @property
    def pinned_hub_id(self) -> str:
        """timm's ``repo@revision`` spelling, which its loaders also understand."""
        return f"{self.hf_hub_id}@{self.revision}" if self.revision else self.hf_hub_id

    def to_pretrained_cfg(self, base: Dict[str, Any]) -> Dict[str, Any]:
        """The timm pretrained_cfg of this tag, on top of the architecture's ``base`` cfg."""
        cfg = dict(base)
        cfg.update(
            hf_hub_id=self.pinned_hub_id if self.revision and self.sha256 else None,
            # A shipped copy comes first: it needs no network. weights.resolve_weights checks it against sha256.
            file=str(self.packaged_path) if self.packaged_file and self.sha256 else None,
            hf_hub_filename=self.filename,
            num_classes=self.num_classes,
            input_size=tuple(self.input_size),
            interpolation=self.interpolation,
            crop_pct=self.crop_pct,
            crop_mode=self.crop_mode,
            mean=tuple(self.mean),
            std=tuple(self.std),
            license=self.license,
            paper_name=self.paper.get("title"),
            paper_ids=self.paper.get("id"),
            origin_url=self.origin.get("url"),
            description=self.origin.get("description"),
            notes=tuple(self.notes) or None,
        )
        if self.label_names:
            cfg["label_names"] = tuple(self.label_names)
        return cfg


_KINDS = {str: "a string", int: "a whole number", list: "a list", dict: "an object", (int, float): "a number"}
_REQUIRED = {
    "model": str, "hf_hub_id": str, "filename": str, "num_classes": int, "label_names_source": str,
    "input_size": list, "interpolation": str, "crop_pct": (int, float), "crop_mode": str, "mean": list,
    "std": list, "license": str, "paper": dict, "reported_metrics": dict, "origin": dict,
}
_CROP_MODES = ("center", "squash", "border")
# The package's shipped weights (package data; see pyproject.toml).
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def _is_kind(value: Any, kind) -> bool:
    if isinstance(value, bool):  # JSON true/false is not a number here
        return kind is bool
    return isinstance(value, kind)


def _is_number(value: Any) -> bool:
    return _is_kind(value, (int, float))


def _parse_hub_config(path: str, data: Any) -> HubConfig:
    from .weights import check_hub_id, check_repo_filename

    def fail(message: str):
        raise HubConfigError(f"{path}: {message}")

    if not isinstance(data, dict):
        fail(f"must be a JSON object, not a {type(data).__name__}.")
    for key, kind in _REQUIRED.items():
        if key not in data:
            fail(f"missing required field '{key}'.")
        if not _is_kind(data[key], kind):
            fail(f"field '{key}' should be {_KINDS[kind]}, got {json.dumps(data[key])[:60]}.")
    for key in ("revision", "sha256"):
        if key not in data:
            fail(f"missing field '{key}' (write null while the upload is pending).")
        if data[key] is not None and not isinstance(data[key], str):
            fail(f"field '{key}' should be a string or null, got {json.dumps(data[key])[:60]}.")
    name = data["model"]
    if "." not in name:
        fail(f"field 'model' must be 'architecture.tag', got '{name}'.")
    if Path(path).name != f"{name}.json":
        fail(f"file name must be '{name}.json' to match its 'model' field.")
    revision, sha256 = data["revision"], data["sha256"]
    if revision is not None and not _HEX40.match(revision):
        fail("field 'revision' must be a 40-hex commit id (a branch name is not a pin).")
    if sha256 is not None and not _HEX64.match(sha256):
        fail("field 'sha256' must be 64 lowercase hex digits.")
    try:
        check_hub_id(data["hf_hub_id"])
    except ValueError as e:
        fail(f"field 'hf_hub_id': {e}")
    try:
        check_repo_filename(data["filename"], "field 'filename'")
    except ValueError as e:
        fail(str(e))
    if not data["filename"].endswith(".safetensors"):
        fail("field 'filename' must be a .safetensors file; pickles are never loaded.")
    if data["num_classes"] < 1:
        fail("field 'num_classes' must be 1 or more.")
    size = data["input_size"]
    if len(size) != 3 or not all(_is_kind(v, int) and v > 0 for v in size):
        fail("field 'input_size' must be [channels, height, width] (three whole numbers above 0).")
    for key in ("mean", "std"):
        if len(data[key]) != size[0] or not all(_is_number(v) for v in data[key]):
            fail(f"field '{key}' must be {size[0]} numbers, one per input channel.")
    if not all(v > 0 for v in data["std"]):
        fail("field 'std' must be above 0 for every channel.")
    if not data["crop_pct"] > 0:
        fail("field 'crop_pct' must be above 0.")
    if data["crop_mode"] not in _CROP_MODES:
        fail(f"field 'crop_mode' must be one of {', '.join(_CROP_MODES)}, got '{data['crop_mode']}'.")
    notes = data.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        fail("field 'notes' must be a list of strings.")
    if not isinstance(data.get("dataset", ""), str):
        fail("field 'dataset' must be a string.")
    packaged = data.get("packaged_file")
    if packaged is not None:
        try:
            check_repo_filename(packaged, "field 'packaged_file'")
        except ValueError as e:
            fail(str(e))
        if "/" in packaged or not packaged.endswith(".safetensors"):
            fail("field 'packaged_file' must be the name of a .safetensors file in collab_zoo/pretrained/.")
        if sha256 is None:
            fail("field 'packaged_file' needs the file's 'sha256': shipped weights are checked like downloads.")
        if not (PRETRAINED_DIR / packaged).is_file():
            fail(f"field 'packaged_file' names '{packaged}', which this installation lacks ({PRETRAINED_DIR}).")
    labels = data.get("label_names")
    if labels is not None and (not isinstance(labels, list) or len(labels) != data["num_classes"]
                               or not all(isinstance(v, str) for v in labels)):
        fail(f"field 'label_names' must be a list of {data['num_classes']} strings, one per class.")
    return HubConfig(
        name=name,
        hf_hub_id=data["hf_hub_id"],
        revision=revision,
        filename=data["filename"],
        sha256=sha256,
        num_classes=data["num_classes"],
        label_names_source=data["label_names_source"],
        input_size=tuple(size),
        interpolation=data["interpolation"],
        crop_pct=float(data["crop_pct"]),
        crop_mode=data["crop_mode"],
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        license=data["license"],
        paper=dict(data["paper"]),
        reported_metrics=dict(data["reported_metrics"]),
        origin=dict(data["origin"]),
        dataset=data.get("dataset", "imagenet-1k"),
        notes=tuple(notes),
        packaged_file=packaged,
        label_names=tuple(labels) if labels is not None else None,
    )


def _parse_hub_config_bytes(path: str, raw: bytes) -> HubConfig:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HubConfigError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8 JSON.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise HubConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from None
    return _parse_hub_config(path, data)


EXTRA_CONFIGS_ENV = "COLLAB_ZOO_HUB_CONFIGS"


class HubConfigWarning(UserWarning):
    """A hub config file was skipped (the message names the file and the field)."""


_PACKAGED: set = set()  # names of the package's own tags (hub_configs/), the only ones that can be a default


def _hub_config_files() -> List[Tuple[str, bytes]]:
    """(display path, bytes) of every hub config: the package's own (display path 'hub_configs/<file>'), then
    any in $COLLAB_ZOO_HUB_CONFIGS."""
    files: List[Tuple[str, bytes]] = []
    packaged = resources.files("collab_zoo").joinpath("hub_configs")
    if packaged.is_dir():
        entries = [p for p in packaged.iterdir() if p.name.endswith(".json")]
        files += sorted((f"hub_configs/{p.name}", p.read_bytes()) for p in entries)
    else:
        # Source checkout (editable install or running from the repository): hub_configs/ is a sibling.
        source_dir = Path(__file__).resolve().parent.parent / "hub_configs"
        if source_dir.is_dir():
            files += sorted((f"hub_configs/{p.name}", p.read_bytes()) for p in source_dir.glob("*.json"))
    # A private zoo's own configs (one folder or several, os.pathsep-separated), for weights of your own.
    for folder in filter(None, os.environ.get(EXTRA_CONFIGS_ENV, "").split(os.pathsep)):
        if not Path(folder).is_dir():
            warnings.warn(f"{EXTRA_CONFIGS_ENV} names {folder}, which is not a folder; it is skipped.",
                          HubConfigWarning, stacklevel=2)
            continue
        for p in sorted(Path(folder).glob("*.json")):
            try:
                files.append((str(p), p.read_bytes()))
            except OSError as e:
                warnings.warn(f"{p}: cannot be read ({e.strerror}); this tag is skipped.", HubConfigWarning,
                              stacklevel=2)
    return files


@lru_cache(maxsize=None)
def hub_configs() -> Dict[str, HubConfig]:
    """All valid hub configs, keyed by 'arch.tag'.

    A malformed file never breaks ``import collab_zoo``: it is skipped with one HubConfigWarning that names
    the file and the field.
    """
    configs = {}
    for path, raw in _hub_config_files():
        try:
            config = _parse_hub_config_bytes(path, raw)
        except HubConfigError as e:
            warnings.warn(f"{e} This tag is skipped until the file is fixed.", HubConfigWarning, stacklevel=2)
            continue
        configs[config.name] = config
        if path.startswith("hub_configs/"):
            _PACKAGED.add(config.name)
    return configs


def get_hub_config(name: str) -> Optional[HubConfig]:
    """The hub config of 'arch.tag', or of the architecture's default tag; None if it has none."""
    configs = hub_configs()
    if name in configs:
        return configs[name]
    arch, _, tag = name.partition(".")
    if tag:
        return None
    default = timm.models.get_pretrained_cfg(arch, allow_unregistered=True)
    if default is not None and default.tag and f"{arch}.{default.tag}" in configs:
        return configs[f"{arch}.{default.tag}"]
    return None


_BASE_CFGS: Dict[str, Dict[str, Any]] = {}


def _arch_cfgs(arch: str, base: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    tagged = sorted((c for c in hub_configs().values() if c.architecture == arch), key=lambda c: c.tag)
    cfgs = {arch: dict(base)}  # the untagged cfg: the bare name's default unless the package ships a tag
    cfgs.update({c.name: c.to_pretrained_cfg(base) for c in tagged})
    return cfgs


def _default_tag(arch: str) -> str:
    """The package's own first tag of ``arch`` (as resnet50 defaults to resnet50.a1_in1k in timm), else none.

    Only a tag for the inputs and classes the architecture is defined for can be the default, and only one the
    package ships: the built-in-digits tag ``dks_resnet20.digits`` (1 channel, 16x16) must not turn
    ``create_model("dks_resnet20")`` into a 1-channel model, nor may a tag registered at run time or from
    $COLLAB_ZOO_HUB_CONFIGS.
    """
    base = _BASE_CFGS.get(arch, {})

    def fits(config: HubConfig) -> bool:
        return (config.num_classes == base.get("num_classes")
                and tuple(config.input_size) == tuple(base.get("input_size", ())))

    shipped = sorted(c.tag for c in hub_configs().values()
                     if c.architecture == arch and c.name in _PACKAGED and fits(c))
    return shipped[0] if shipped else ""


def _generate(cfgs: Dict[str, Dict[str, Any]], archs: Iterable[str]):
    out = generate_default_cfgs(cfgs)
    for arch in archs:
        # timm puts the first tag with weights first; the default is ours to choose (see _default_tag).
        # With no tag fit to be the default, the untagged cfg ("") stays first, though timm would put a tag
        # with weights there.
        tags, default = out[arch].tags, _default_tag(arch)
        first = default if default in tags else ""
        if first in tags:
            tags.remove(first)
            tags.appendleft(first)
    return out


def zoo_default_cfgs(base_cfgs: Dict[str, Dict[str, Any]]):
    """timm ``default_cfgs`` for a module's architectures, with their hub-config tags folded in.

    ``base_cfgs`` maps each architecture to its untagged cfg (input size, mean/std, first conv, classifier
    names). Its hub-config tags are registered beside it; the package's own first tag (sorted) is the bare
    name's default, as ``resnet50`` defaults to ``resnet50.a1_in1k`` in timm (see ``_default_tag``).
    """
    cfgs: Dict[str, Dict[str, Any]] = {}
    for arch, base in base_cfgs.items():
        _BASE_CFGS[arch] = dict(base)
        cfgs.update(_arch_cfgs(arch, base))
    return _generate(cfgs, base_cfgs)


def register_hub_config(config: Union[HubConfig, Dict[str, Any], os.PathLike]) -> HubConfig:
    """Add (or replace) a pretrained tag at run time, e.g. for weights you pushed to your own repo.

    Accepts a HubConfig, a dict in the hub_configs/ JSON format, or the path of such a JSON file. The
    architecture is re-registered with timm (its public ``register_model``) so the tag resolves there too.
    """
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise HubConfigError(f"{path}: cannot be read ({e.strerror}).") from None
        config = _parse_hub_config_bytes(str(path), raw)
    elif isinstance(config, dict):
        config = _parse_hub_config(f"{config.get('model')}.json", config)
    arch = config.architecture
    if arch not in _ZOO_MODELS:
        raise unknown_model_error(arch)
    hub_configs()[config.name] = config
    fn = _ZOO_MODELS[arch]
    module = sys.modules[fn.__module__]
    module.default_cfgs.update(_generate(_arch_cfgs(arch, _BASE_CFGS[arch]), [arch]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm warns on every re-registration; this one is deliberate
        register_model(fn)
    return config


def zoo_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register an entrypoint in timm's registry and remember it as a zoo model."""
    register_model(fn)
    _ZOO_MODELS[fn.__name__] = fn
    return fn


def is_zoo_model(name: str) -> bool:
    return name.split(".", 1)[0] in _ZOO_MODELS


def is_model(name: str) -> bool:
    """True for any architecture timm can build after ``import collab_zoo`` (zoo or timm's own)."""
    return timm.is_model(name)


def _match(names: Iterable[str], pattern: str) -> List[str]:
    names = list(names)
    if not pattern:
        return names
    return [n for n in names if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n.split(".", 1)[0], pattern)]


def list_models(pattern: str = "", include_timm: bool = False) -> List[str]:
    """Zoo architectures matching a wildcard pattern (``list_models("dks_*")``).

    With ``include_timm`` the pattern also runs over timm's own models, as ``timm.list_models`` does.
    """
    if include_timm:
        return timm.list_models(pattern or "*")
    return sorted(_match(_ZOO_MODELS, pattern), key=_natural_key)


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name.lower())]


def list_pretrained(pattern: str = "", include_pending: bool = False) -> List[str]:
    """'arch.tag' names whose weights load: pinned on the Hub or shipped in the package (and, on request, the
    tags pending upload)."""
    names = [c.name for c in hub_configs().values() if c.published or include_pending]
    return sorted(_match(names, pattern), key=_natural_key)


def tags_of(arch: str) -> List[str]:
    """Every registered tag of an architecture (published or pending)."""
    return sorted(n.split(".", 1)[1] for n in timm.models.get_arch_pretrained_cfgs(arch) if "." in n)


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """timm ``PretrainedCfg`` of 'arch' or 'arch.tag'; see ``get_hub_config`` for sha256, metrics, licence."""
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise unknown_model_error(name)
    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError:
        raise unknown_tag_error(arch, tag) from None
    return cfg


def closest_model_names(name: str, n: int = 5) -> List[str]:
    arch = name.split(".", 1)[0]
    zoo = difflib.get_close_matches(arch, list(_ZOO_MODELS), n=n, cutoff=0.5)
    rest = difflib.get_close_matches(arch, timm.list_models(), n=n, cutoff=0.6)
    return list(dict.fromkeys(zoo + rest))[:n]


def unknown_model_error(name: str):
    from .errors import UnknownModelError

    hint = closest_model_names(name)
    msg = f"Unknown model '{name}'."
    if hint:
        msg += f" Closest names: {', '.join(hint)}."
    msg += " See collab_zoo.list_models() for the zoo, timm.list_models() for timm's own."
    return UnknownModelError(msg)


def unknown_tag_error(arch: str, tag: str):
    from .errors import UnknownTagError

    tags = tags_of(arch)
    if tags:
        available = ", ".join(f"{arch}.{t}" for t in tags)
        return UnknownTagError(f"Unknown pretrained tag '{tag}' for '{arch}'. Available: {available}.")
    return UnknownTagError(f"'{arch}' has no pretrained tags; use the bare name '{arch}'.")


CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def base_cfg(first_conv: str, classifier, *, num_classes: int = 1000, input_size=(3, 224, 224),
             mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct: float = 0.875, interpolation: str = "bilinear",
             **extra) -> Dict[str, Any]:
    """An architecture's untagged pretrained_cfg (no weights): what its inputs and heads look like."""
    return dict(first_conv=first_conv, classifier=classifier, num_classes=num_classes, input_size=tuple(input_size),
                mean=tuple(mean), std=tuple(std), crop_pct=crop_pct, interpolation=interpolation, **extra)


def cifar_cfg(first_conv: str, classifier, num_classes: int = 100, **extra) -> Dict[str, Any]:
    """32x32 CIFAR inputs, CIFAR-100 statistics, no crop at test time."""
    return base_cfg(first_conv, classifier, num_classes=num_classes, input_size=(3, 32, 32), mean=CIFAR100_MEAN,
                    std=CIFAR100_STD, crop_pct=1.0, **extra)


MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


def mnist_cfg(first_conv: str, classifier, num_classes: int = 10, size: int = 28, **extra) -> Dict[str, Any]:
    """Single-channel digit images (MNIST, the built-in digits sets), MNIST statistics, no crop."""
    return base_cfg(first_conv, classifier, num_classes=num_classes, input_size=(1, size, size), mean=MNIST_MEAN,
                    std=MNIST_STD, crop_pct=1.0, **extra)
