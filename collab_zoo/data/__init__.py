"""Data for train.py and validate.py: timm's datasets and transforms, and the built-in sets as image sources.

Every source hands out (PIL image, class index) pairs, as an image folder does: a folder or ``.tar`` split read
through timm's readers (``timm.data.create_dataset``), any other map-style set ``create_dataset`` makes
(``torch/...``, ``hfds/...``), or a built-in set (``digits``, ``multidigit-II``, ``multidigit-III``, ``mnist5k``,
``mnist-II``, ``mnist-III``; no download, built once and then read from the on-disk cache, see ``builtin``).
``ImageSamples`` views a source through its own transform (timm's ``create_transform``; ``create_loader`` sets
it), optionally a subset of it (a process's shard, a held-out part), and can draw each sample's random
augmentation from (seed, epoch, index) alone, so the order of loading, the worker processes and an interrupted
epoch cannot change what a sample looks like.

``build_data(spec)`` opens the data and returns a ``DataBundle``: the training and evaluation views, class
names, and, once known, the data config (input size, mean/std, interpolation, crop) the transforms follow and a
model trained on it records. Built-in sets know their own config; for other data it comes from the model's
pretrained_cfg and the command line (``timm.data.resolve_data_config``), applied with ``apply_data_config``.
"""
from __future__ import annotations

import contextlib
import copy
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from ..errors import IncompatibleConfigError
from .builtin import (LEVELS, BuiltinImages, cached_arrays, channel_stats, make_multidigit, source_split, to_uint8,
                      upsample)

__all__ = ["DataSpec", "DataBundle", "ImageSamples", "build_data", "BUILTIN", "FOLDER_NAMES", "heldout_split",
           "builtin_num_classes", "builtin_split",
           "DataError", "resolve_dataset_name", "TIMM_TRAIN_AUGMENTATION", "BUILTIN_TRAIN_AUGMENTATION",
           "seed_all", "preserved_rng", "sample_key"]

BUILTIN = ("digits", "multidigit-II", "multidigit-III", "mnist5k", "mnist-II", "mnist-III")
# Single digits: the digit source each set is; multi-digit sets: (digit source, digits per number).
_SINGLE_DIGIT = {"digits": "digits", "mnist5k": "mnist"}
_MULTI_DIGIT = {"multidigit-II": ("digits", 2), "multidigit-III": ("digits", 3), "mnist-II": ("mnist", 2),
                "mnist-III": ("mnist", 3)}
FOLDER_NAMES = ("", "folder", "imagefolder")
_TRAIN_NAMES = ("train", "training")
_EVAL_NAMES = ("validation", "val", "valid", "eval", "evaluation", "test")

# Training augmentation when no flag says otherwise: timm's train.py defaults for image data; for the built-in
# digits no flips, colour jitter or zoom (a mirrored 2 is not a 2; the numbers fill their frame), only their own
# small shift (digits) or nothing (multi-digit: the layouts already jitter).
TIMM_TRAIN_AUGMENTATION: Dict[str, Any] = dict(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, vflip=0.0,
                                               color_jitter=0.4, train_interpolation="random")
BUILTIN_TRAIN_AUGMENTATION: Dict[str, Any] = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, vflip=0.0,
                                                  color_jitter=None, train_interpolation=None)


class DataError(IncompatibleConfigError):
    """The data a command was pointed at is missing, empty, unreadable or does not fit the model."""


def resolve_dataset_name(dataset: Optional[str], data_dir: Optional[str]) -> str:
    """No --dataset: a folder dataset when --data-dir is given (as timm), else the built-in digits."""
    if dataset is None:
        return "" if data_dir else "digits"
    return "" if dataset in FOLDER_NAMES else dataset


@dataclass
class DataSpec:
    dataset: Optional[str] = "digits"       # built-in name, '' / 'folder' / 'imagefolder', or timm's 'torch/...'
    data_dir: Optional[str] = None
    input_size: Union[int, Sequence[int], None] = None   # built-ins: the side they are made at (C H W allowed)
    in_chans: Optional[int] = None
    md_level: int = 1
    md_train_size: int = 10_000
    md_test_size: int = 2_000
    seed: int = 0
    augment: bool = True
    train_split: str = "train"
    val_split: str = "validation"
    skip_bad_images: bool = False
    model_data_config: Dict[str, Any] = field(default_factory=dict)  # a resolved data config to apply at once
    class_map: str = ""
    input_img_mode: Optional[str] = None
    download: bool = False
    train_num_samples: Optional[int] = None
    val_num_samples: Optional[int] = None
    input_key: Optional[str] = None
    target_key: Optional[str] = None
    cache_dir: Optional[str] = None          # built-in sets' cache (None: $COLLAB_ZOO_CACHE or the user cache)


def builtin_num_classes(name: Optional[str]) -> Optional[int]:
    """The class count of a built-in set (None for any other name)."""
    if name in _SINGLE_DIGIT:
        return 10
    if name in _MULTI_DIGIT:
        return 10 ** _MULTI_DIGIT[name][1]
    return None


# --- sampling each sample's augmentation from (seed, epoch, index) ----------------------------------------------

def seed_all(key: int) -> None:
    """Seed Python's, numpy's and torch's CPU generators from one key."""
    random.seed(key)
    np.random.seed(key % (2 ** 32))
    torch.random.default_generator.manual_seed(key)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Python's, numpy's and torch's CPU generator states restored after the block, whatever it drew."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


def sample_key(seed: int, epoch: int, index: int) -> int:
    return ((int(seed) * 1_000_003 + int(epoch)) * 2_147_483_647 + int(index)) % (2 ** 63)


# --- sources -----------------------------------------------------------------------------------------------------

class _ReaderSource:
    """Image files through timm's reader (a folder of class folders, or a tar): (PIL image, class index).

    timm's ImageDataset replaces an unreadable file by the next one with a warning; here it is an error that
    names the file (or, with --skip-bad-images, it is dropped up front and counted), so a broken data set is
    never trained on silently.
    """

    def __init__(self, reader, mode: str = "RGB"):
        self.reader = reader
        self.mode = mode
        by_index = sorted(self.class_to_idx.items(), key=lambda kv: kv[1])
        self.class_names = [str(name) for name, _ in by_index]

    @property
    def class_to_idx(self) -> Dict[str, int]:
        # timm's folder reader calls it class_to_idx, its tar reader class_name_to_idx.
        mapping = getattr(self.reader, "class_to_idx", None)
        return dict(mapping if mapping is not None else self.reader.class_name_to_idx)

    @property
    def targets(self) -> List[int]:
        targets = getattr(self.reader, "targets", None)
        if targets is not None:
            return [int(t) for t in targets]
        return [int(t) for _, t in self.reader.samples]

    def __len__(self) -> int:
        return len(self.reader)

    def describe(self, index: int) -> str:
        try:
            return str(self.reader.filename(index, absolute=True))
        except Exception:
            return f"sample {index}"

    def _open(self, index: int, draft: bool = False):
        from PIL import Image

        handle, target = self.reader[index]
        with contextlib.closing(handle) if hasattr(handle, "close") else contextlib.nullcontext(handle) as f:
            image = Image.open(f)
            if draft:
                # A JPEG decoded at 1/8 scale still reads every byte of its data: truncation shows, for a
                # fraction of a full decode's time.
                image.draft("RGB" if self.mode == "RGB" else "L", (1, 1))
            image = to_mode(image, self.mode)  # decodes the pixels while the file is open
        return image, int(target)

    def __getitem__(self, index: int):
        try:
            return self._open(index)
        except Exception as e:
            raise DataError(f"Cannot read image {self.describe(index)}: {type(e).__name__}: {e}. Fix or remove the "
                            "file, or pass --skip-bad-images to drop unreadable files (they are counted and "
                            "reported).") from e

    def readable(self, index: int) -> bool:
        try:
            self._open(index, draft=True)
            return True
        except Exception:
            return False


def to_mode(image, mode: str):
    """``image.convert(mode)``, as timm's readers do, except for 16- and 32-bit grey images (16-bit PNGs, TIFFs),
    which PIL's convert clips to white: their full range is scaled to 8 bits first."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        from PIL import Image

        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if image.mode == "I" and values.max(initial=0) > 65535:
            top = float(values.max())
        image = Image.fromarray(np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8), mode="L")
    return image.convert(mode)


class _DatasetSource:
    """Any other map-style data set from timm's create_dataset (``torch/...``, ``hfds/...``), read without its
    own transform."""

    def __init__(self, dataset, mode: str = "RGB"):
        self.dataset = dataset
        if hasattr(dataset, "transform"):
            dataset.transform = None
        self.mode = mode
        classes = getattr(dataset, "classes", None)
        reader = getattr(dataset, "reader", None)
        if classes is None and reader is not None and getattr(reader, "class_to_idx", None):
            classes = [n for n, _ in sorted(reader.class_to_idx.items(), key=lambda kv: kv[1])]
        self.class_names = [str(c) for c in classes] if classes is not None else None

    @property
    def targets(self) -> List[int]:
        targets = getattr(self.dataset, "targets", None)
        if targets is not None:
            return [int(t) for t in targets]
        return [int(self.dataset[i][1]) for i in range(len(self.dataset))]

    def __len__(self) -> int:
        return len(self.dataset)

    def describe(self, index: int) -> str:
        return f"sample {index} of {type(self.dataset).__name__}"

    def __getitem__(self, index: int):
        item = self.dataset[index]
        image, target = item[0], item[1]
        if hasattr(image, "convert"):
            image = image.convert(self.mode)
        return image, int(target)

    def readable(self, index: int) -> bool:
        try:
            self[index]
            return True
        except Exception:
            return False


class ImageSamples(Dataset):
    """A view of an image source through this view's own ``transform`` (and, for training, ``augment`` before it):
    ``view[i]`` -> (transformed image, class index). ``indices`` selects a subset (a shard, a held-out part).

    After ``set_epoch(epoch, seed)`` each sample's random draws are seeded from (seed, epoch, source index), so
    they are the same whichever worker loads the sample, in whatever order, and after a resume mid-epoch.
    """

    def __init__(self, source, indices: Optional[Sequence[int]] = None, transform=None, augment=None,
                 class_names: Optional[List[str]] = None):
        self.source = source
        self.indices = list(range(len(source))) if indices is None else [int(i) for i in indices]
        self.transform = transform
        self.augment = augment
        self.class_names = class_names if class_names is not None else getattr(source, "class_names", None)
        self.seed: Optional[int] = None
        self.epoch = 0
        # Whether the caller restores the random generators around each batch (a training loader does, once per
        # batch: saving numpy's state costs more than loading a small image, so not once per sample).
        self.rng_guarded = False

    def view(self, indices: Optional[Sequence[int]] = None, transform: Any = "same", augment: Any = "same"
             ) -> "ImageSamples":
        """Another view of the same source: a subset of this view's samples, another transform."""
        chosen = self.indices if indices is None else [self.indices[i] for i in indices]
        out = ImageSamples(self.source, chosen, self.transform if transform == "same" else transform,
                           self.augment if augment == "same" else augment, self.class_names)
        out.seed, out.epoch, out.rng_guarded = self.seed, self.epoch, self.rng_guarded
        return out

    def set_epoch(self, epoch: int, seed: Optional[int] = None) -> None:
        self.epoch = int(epoch)
        if seed is not None:
            self.seed = int(seed)

    @property
    def targets(self) -> List[int]:
        all_targets = self.source.targets
        return [all_targets[i] for i in self.indices]

    @property
    def labels(self) -> torch.Tensor:
        return torch.as_tensor(self.targets)

    def __len__(self) -> int:
        return len(self.indices)

    def _apply(self, image):
        if self.augment is not None:
            image = self.augment(image)
        if self.transform is not None:
            image = self.transform(image)
        return image

    def __getitem__(self, i: int):
        index = self.indices[i]
        image, target = self.source[index]
        if self.seed is None:
            return self._apply(image), target
        if self.rng_guarded:
            seed_all(sample_key(self.seed, self.epoch, index))
            return self._apply(image), target
        with preserved_rng():
            seed_all(sample_key(self.seed, self.epoch, index))
            return self._apply(image), target


# --- the bundle --------------------------------------------------------------------------------------------------

@dataclass
class DataBundle:
    train: Optional[Any]                 # ImageSamples, or timm's IterableImageDataset for streamed sets
    eval: Any
    class_names: List[str]
    data_config: Dict[str, Any]
    skipped: int = 0
    builtin: bool = False
    augment_defaults: Dict[str, Any] = field(default_factory=lambda: dict(TIMM_TRAIN_AUGMENTATION))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def map_style(self) -> bool:
        return isinstance(self.eval, ImageSamples) and (self.train is None or isinstance(self.train, ImageSamples))

    @property
    def eval_transform(self):
        return getattr(self.eval, "transform", None)

    def apply_data_config(self, config: Dict[str, Any]) -> None:
        """Use ``config`` (timm's data config) from now on: colour mode, and timm's default train / eval
        transforms on the views (a loader built with create_loader replaces them with its own)."""
        from timm.data import create_transform

        config = dict(config)
        channels = int(config["input_size"][0])
        for key in ("mean", "std"):
            values = tuple(float(v) for v in config[key])
            if len(values) != channels:  # a 1-channel model's statistics for 3-channel input, or the reverse
                values = (float(np.mean(values)),) * channels
            config[key] = values
        self.data_config = {**self.data_config, **config}
        mode = "L" if channels == 1 else "RGB"
        for view in (self.train, self.eval):
            source = getattr(view, "source", None)
            if source is not None:
                source.mode = mode
        args = {k: config[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
                if k in config}
        if isinstance(self.eval, ImageSamples) or hasattr(self.eval, "transform"):
            self.eval.transform = create_transform(**args, is_training=False)
        if self.train is not None and hasattr(self.train, "transform"):
            train_args = dict(args)
            augment = self.augment_defaults
            train_args.update(scale=augment["scale"], ratio=augment["ratio"], hflip=augment["hflip"],
                              vflip=augment["vflip"], color_jitter=augment["color_jitter"])
            if augment.get("train_interpolation"):
                train_args["interpolation"] = augment["train_interpolation"]
            train_args.pop("crop_pct", None)
            train_args.pop("crop_mode", None)
            self.train.transform = create_transform(**train_args, is_training=True)

    def train_without_augmentation(self) -> ImageSamples:
        """The training images as evaluation sees them (for predictions on a held-out part of them)."""
        if not isinstance(self.train, ImageSamples):
            raise DataError("This data set is streamed (an iterable data set): a held-out part of it cannot be set "
                            "aside. Use a folder or another map-style data set for methods that hold images out.")
        return self.train.view(transform=self.eval_transform, augment=None)


# --- built-in sets -----------------------------------------------------------------------------------------------

def _square_side(input_size) -> Optional[int]:
    if input_size is None:
        return None
    if isinstance(input_size, int):
        return input_size
    size = tuple(input_size)
    if len(size) == 1:
        return int(size[0])
    if len(size) == 3 and size[1] != size[2]:
        raise DataError(f"The built-in sets are square: --input-size {size} has {size[1]}x{size[2]}; use equal "
                        "height and width.")
    return int(size[-1])


def builtin_split(name: str, split: str, size: int, level: int = 1, count: int = 0, seed: int = 0,
                  cache_dir: Optional[str] = None) -> Tuple[np.ndarray, torch.Tensor]:
    """One split of a built-in set as [N, size, size] uint8 grey levels and [N] labels, from the cache when it
    holds them. Multi-digit sets depend on (level, count, seed); the test split is drawn with seed + 1."""
    if name in _SINGLE_DIGIT:
        key: Dict[str, Any] = dict(name=name, split=split, size=size)

        def build():
            data = source_split(_SINGLE_DIGIT[name], split)
            return dict(images=to_uint8(upsample(data.images, size)), labels=data.labels.numpy())
    else:
        source, num_digits = _MULTI_DIGIT[name]
        key = dict(name=name, split=split, size=size, level=level, count=count, seed=seed)

        def build():
            images, labels = make_multidigit(num_digits, level, split, count, seed + (split == "test"), size,
                                             source=source)
            return dict(images=to_uint8(images), labels=labels.numpy())
    arrays = cached_arrays(key, build, cache_dir)
    return arrays["images"], torch.from_numpy(arrays["labels"].astype(np.int64))


def _builtin(spec: DataSpec, need_train: bool) -> DataBundle:
    from torchvision.transforms import RandomCrop

    name = spec.dataset
    side = _square_side(spec.input_size)
    if name in _MULTI_DIGIT:
        levels = len(LEVELS[_MULTI_DIGIT[name][1]])
        if not 1 <= spec.md_level <= levels:
            raise DataError(f"--md-level {spec.md_level}: {name} has levels 1 to {levels}.")
    if name in _SINGLE_DIGIT:
        size = side or (32 if name == "digits" else 28)
        split_args: Dict[str, Any] = dict(size=size, cache_dir=spec.cache_dir)
        train_u8, train_labels = builtin_split(name, "train", **split_args)
        test_u8, test_labels = builtin_split(name, "test", **split_args)
        class_names = [str(i) for i in range(10)]
        shift = max(1, size // 16)
    else:
        num_digits = _MULTI_DIGIT[name][1]
        size = side or 28
        split_args = dict(size=size, level=spec.md_level, seed=spec.seed, cache_dir=spec.cache_dir)
        train_u8, train_labels = builtin_split(name, "train", count=spec.md_train_size, **split_args)
        test_u8, test_labels = builtin_split(name, "test", count=spec.md_test_size, **split_args)
        class_names = [str(i).zfill(num_digits) for i in range(10 ** num_digits)]
        shift = 0  # the layouts already jitter; shifting would move digits out of the number's box
    channels = spec.in_chans
    if channels is None and spec.input_size is not None and not isinstance(spec.input_size, int) \
            and len(tuple(spec.input_size)) == 3:
        channels = int(tuple(spec.input_size)[0])
    channels = channels or 1
    if channels not in (1, 3):
        raise DataError(f"{name} is grayscale: in_chans must be 1 (or 3 to replicate it), got {channels}.")
    mean, std = channel_stats(torch.from_numpy(train_u8).float()[:, None] / 255.0)
    mean, std = mean * channels, std * channels
    test = ImageSamples(BuiltinImages(test_u8, test_labels, class_names))
    train = None
    if need_train:
        # The digits' own augmentation: pad by `shift` pixels and crop back (a small translation), before timm's.
        augment = RandomCrop(size, padding=shift) if shift and spec.augment else None
        train = ImageSamples(BuiltinImages(train_u8, train_labels, class_names), augment=augment)
    config = dict(input_size=(channels, size, size), mean=mean, std=std, interpolation="bilinear", crop_pct=1.0,
                  crop_mode="center", label_names=tuple(class_names))
    bundle = DataBundle(train, test, class_names, {}, builtin=True,
                        augment_defaults=dict(BUILTIN_TRAIN_AUGMENTATION))
    bundle.apply_data_config(config)
    return bundle


# --- folders, tars and timm's other sources ----------------------------------------------------------------------

def _split_root(root: Path, split: str) -> Path:
    """The folder (or .tar) holding one split: ``root/split``, or one of timm's synonyms for it."""
    names = [split]
    if split in _TRAIN_NAMES:
        names += [n for n in _TRAIN_NAMES if n != split]
    elif split in _EVAL_NAMES:
        names += [n for n in _EVAL_NAMES if n != split]
    for name in names:
        for candidate in (root / name, root / f"{name}.tar"):
            if candidate.exists():
                return candidate
    tried = ", ".join(f"{n}/" for n in names)
    raise DataError(f"{root} has no '{split}' split (looked for {tried} and .tar files of those names). Expected "
                    f"{root}/{split}/<class name>/<images>; --train-split / --val-split name other folders.")


def _check_split_folder(folder: Path) -> None:
    if folder.suffix == ".tar":
        return
    classes = [d for d in folder.iterdir() if d.is_dir()]
    if not classes:
        raise DataError(f"{folder} has no class folders: put each class's images in {folder}/<class name>/.")
    if not any(any(f.is_file() for f in d.rglob("*")) for d in classes):
        raise DataError(f"{folder} has class folders but no images in them.")


def _open_reader_split(spec: DataSpec, split: str, class_map) -> _ReaderSource:
    from timm.data import create_dataset

    root = Path(spec.data_dir)
    folder = _split_root(root, split)
    _check_split_folder(folder)
    # A tar's index is never cached: timm keeps that cache (for tars over 10 GB) as a pickle next to the data.
    extra = dict(cache_tarinfo=False) if folder.suffix == ".tar" else dict(input_key=spec.input_key)
    try:
        dataset = create_dataset("", root=str(folder), split=split, search_split=False, class_map=class_map,
                                 input_img_mode=spec.input_img_mode or "RGB", **extra)
    except RuntimeError as e:  # timm's reader: "Found 0 images in subfolders of ..."
        raise DataError(f"{folder}: {e}") from None
    return _ReaderSource(dataset.reader, spec.input_img_mode or "RGB")


def _class_folders(folder: Path) -> Optional[set]:
    """The class folders of a split folder that hold at least one file (None for a tar)."""
    if not folder.is_dir():
        return None
    return {d.name for d in folder.iterdir() if d.is_dir() and any(f.is_file() for f in d.rglob("*"))}


def _drop_unreadable(view: ImageSamples) -> int:
    keep = [i for i in view.indices if view.source.readable(i)]
    skipped = len(view.indices) - len(keep)
    view.indices = keep
    return skipped


def _folder(spec: DataSpec, need_train: bool) -> DataBundle:
    if not spec.data_dir:
        raise DataError("A folder data set needs --data-dir: a folder holding train/ and validation/ (or val/) "
                        "class folders. Without --data-dir, --dataset digits (built in) needs no files.")
    root = Path(spec.data_dir)
    if not root.exists():
        raise DataError(f"--data-dir {root} does not exist. Give a folder holding 'train/<class>/<image>' and "
                        "'val/<class>/<image>' trees, or use a built-in set: --dataset digits.")
    if root.is_file():
        raise DataError(f"--data-dir {root} is a file. Give the folder that holds the splits (train/ and val/, "
                        "each a folder of class folders or a .tar of them), so training and evaluation images "
                        "stay apart.")
    class_map = spec.class_map or None
    train = None
    skipped = 0
    if need_train:
        train = ImageSamples(_open_reader_split(spec, spec.train_split, class_map))
        class_map = class_map or train.source.class_to_idx
    evaluation = ImageSamples(_open_reader_split(spec, spec.val_split, class_map))
    train_folders = _class_folders(Path(train.source.reader.root)) if train is not None and hasattr(
        train.source.reader, "root") else None
    eval_folders = _class_folders(Path(evaluation.source.reader.root)) if hasattr(
        evaluation.source.reader, "root") else None
    if train_folders is not None and eval_folders is not None and eval_folders - train_folders:
        # timm's reader, given the training split's classes, would drop these images without a word.
        missing = sorted(eval_folders - train_folders)
        raise DataError(f"The evaluation split has classes the training split lacks ({missing[:10]}): the splits "
                        "must hold the same class folders.")
    if train is not None and evaluation.source.class_names != train.class_names:
        missing = sorted(set(evaluation.source.class_names) - set(train.class_names))
        raise DataError(f"The evaluation split has classes the training split lacks ({missing[:10]}): the splits "
                        "must hold the same class folders.")
    if spec.skip_bad_images:
        skipped = (_drop_unreadable(train) if train is not None else 0) + _drop_unreadable(evaluation)
    if (train is not None and len(train) == 0) or len(evaluation) == 0:
        raise DataError(f"No readable images under {root} ({skipped} unreadable files were skipped).")
    class_names = (train or evaluation).class_names
    bundle = DataBundle(train, evaluation, class_names, {"label_names": tuple(class_names)}, skipped)
    if spec.model_data_config:
        bundle.apply_data_config(spec.model_data_config)
    return bundle


def _timm_dataset(spec: DataSpec, need_train: bool) -> DataBundle:
    """``torch/...``, ``hfds/...``, ``hfids/...``, ``tfds/...``, ``wds/...``: timm's create_dataset as is."""
    from timm.data import create_dataset

    def make(split: str, training: bool, num_samples):
        try:
            return create_dataset(spec.dataset, root=spec.data_dir, split=split, is_training=training,
                                  class_map=spec.class_map or None, download=spec.download, seed=spec.seed,
                                  input_img_mode=spec.input_img_mode or "RGB", input_key=spec.input_key,
                                  target_key=spec.target_key, num_samples=num_samples)
        except (AssertionError, RuntimeError, OSError, ValueError, ImportError) as e:
            raise DataError(f"--dataset {spec.dataset} (split {split}, --data-dir {spec.data_dir}): "
                            f"{type(e).__name__}: {e}") from None

    def wrap(dataset):
        if isinstance(dataset, IterableDataset):
            return dataset
        return ImageSamples(_DatasetSource(dataset, spec.input_img_mode or "RGB"))

    train = wrap(make(spec.train_split, True, spec.train_num_samples)) if need_train else None
    evaluation = wrap(make(spec.val_split, False, spec.val_num_samples))
    class_names = getattr(evaluation, "class_names", None) or getattr(train, "class_names", None) or []
    bundle = DataBundle(train, evaluation, list(class_names), {"label_names": tuple(class_names)})
    if spec.model_data_config:
        bundle.apply_data_config(spec.model_data_config)
    return bundle


def build_data(spec: DataSpec, need_train: bool = True) -> DataBundle:
    spec = copy.copy(spec)
    spec.dataset = resolve_dataset_name(spec.dataset, spec.data_dir)
    if spec.dataset in BUILTIN:
        if spec.data_dir:
            raise DataError(f"--dataset {spec.dataset} is built in and reads no files, but --data-dir "
                            f"{spec.data_dir} was given: drop --dataset to train on the folder, or drop --data-dir.")
        return _builtin(spec, need_train)
    if spec.dataset == "":
        return _folder(spec, need_train)
    if "/" in spec.dataset:
        return _timm_dataset(spec, need_train)
    raise DataError(f"Unknown --dataset {spec.dataset!r}: use a built-in set ({', '.join(BUILTIN)}), a folder "
                    "(--data-dir DIR, no --dataset), or one of timm's sources (torch/NAME, hfds/NAME, wds/NAME...).")


def heldout_split(bundle: DataBundle, fraction: float, seed: int) -> Tuple[ImageSamples, ImageSamples]:
    """Stratified (train, held-out) split of the training set, fixed by the seed; the held-out part is seen
    without augmentation.

    Class-level boosting measures each round's per-class error on data the round did not train on; training
    error goes to zero on small sets (the paper holds out 5,000 of CIFAR-100's 50,000 images).
    """
    if not 0 < fraction < 1:
        raise DataError(f"--heldout-frac must be between 0 and 1, got {fraction}.")
    plain = bundle.train_without_augmentation()
    targets = torch.as_tensor(bundle.train.targets)
    generator = torch.Generator().manual_seed(seed)
    held: List[int] = []
    for c in torch.unique(targets).tolist():
        idx = torch.nonzero(targets == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        count = max(1, int(round(len(idx) * fraction))) if len(idx) > 1 else 0
        held.extend(idx[:count].tolist())
    held_set = set(held)
    kept = [i for i in range(len(targets)) if i not in held_set]
    return bundle.train.view(kept), plain.view(sorted(held))

