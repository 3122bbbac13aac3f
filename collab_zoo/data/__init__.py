"""Data for train.py and validate.py: the built-in sets (no download) and ImageFolder trees.

``build_data(spec)`` returns a ``DataBundle``: train and evaluation datasets, class names, and the data config
(input size, mean/std, interpolation, crop) a model trained on it should record in its pretrained_cfg.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.utils.data import Dataset, Subset

from ..errors import IncompatibleConfigError
from .builtin import TensorImageDataset, channel_stats, digits_split, make_multidigit, upsample

__all__ = ["DataSpec", "DataBundle", "build_data", "BUILTIN", "heldout_split", "DataError"]

BUILTIN = ("digits", "multidigit-II", "multidigit-III")


class DataError(IncompatibleConfigError):
    """The data a command was pointed at is missing, empty, unreadable or does not fit the model."""


@dataclass
class DataSpec:
    dataset: str = "digits"
    data_dir: Optional[str] = None
    input_size: Optional[int] = None         # built-in sets: square side; folders: from the model's cfg if None
    in_chans: Optional[int] = None
    md_level: int = 1
    md_train_size: int = 10_000
    md_test_size: int = 2_000
    seed: int = 0
    augment: bool = True
    train_split: str = "train"
    val_split: str = "val"
    skip_bad_images: bool = False
    model_data_config: Dict[str, Any] = field(default_factory=dict)  # the model's resolved data config


@dataclass
class DataBundle:
    train: Optional[Dataset]
    eval: Dataset
    class_names: List[str]
    data_config: Dict[str, Any]
    skipped: int = 0
    eval_transform: Any = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def train_without_augmentation(self) -> Dataset:
        """The training images as evaluation sees them (for predictions on a held-out part of them)."""
        if isinstance(self.train, TensorImageDataset):
            plain = copy.copy(self.train)
            plain.shift = 0
            return plain
        plain = copy.copy(self.train)
        plain.inner = copy.copy(self.train.inner)
        plain.inner.transform = self.eval_transform
        return plain


def _builtin(spec: DataSpec, need_train: bool) -> DataBundle:
    if spec.dataset == "digits":
        size = spec.input_size or 32
        train_raw, test_raw = digits_split("train"), digits_split("test")
        train_images, train_labels = upsample(train_raw.images, size), train_raw.labels
        test_images, test_labels = upsample(test_raw.images, size), test_raw.labels
        class_names = [str(i) for i in range(10)]
        shift = max(1, size // 16)
    else:
        num_digits = 2 if spec.dataset == "multidigit-II" else 3
        size = spec.input_size or 28
        train_images, train_labels = make_multidigit(num_digits, spec.md_level, "train", spec.md_train_size,
                                                     spec.seed, size)
        test_images, test_labels = make_multidigit(num_digits, spec.md_level, "test", spec.md_test_size,
                                                   spec.seed + 1, size)
        class_names = [str(i).zfill(num_digits) for i in range(10 ** num_digits)]
        shift = 0  # the layouts already jitter; shifting would move digits out of the number's box
    mean, std = channel_stats(train_images)
    channels = spec.in_chans or 1
    if channels not in (1, 3):
        raise DataError(f"{spec.dataset} is grayscale: in_chans must be 1 (or 3 to replicate it), got {channels}.")
    mean, std = mean * channels, std * channels
    train = TensorImageDataset(train_images, train_labels, mean, std, shift=shift if spec.augment else 0,
                               channels=channels, class_names=class_names) if need_train else None
    test = TensorImageDataset(test_images, test_labels, mean, std, channels=channels, class_names=class_names)
    config = dict(input_size=(channels, size, size), mean=mean, std=std, interpolation="bilinear", crop_pct=1.0,
                  crop_mode="center", label_names=tuple(class_names))
    return DataBundle(train, test, class_names, config)


def _check_folder(root: Path, split: str) -> Path:
    folder = root / split
    if not root.exists():
        raise DataError(f"--data-dir {root} does not exist. Give a folder holding '{split}/<class>/<image>' trees, "
                        "or use a built-in set: --dataset digits.")
    if not folder.is_dir():
        raise DataError(f"{root} has no '{split}' folder. Expected {root}/{split}/<class name>/<images> "
                        f"(and {root}/val/... for evaluation); --train-split/--val-split name other folders.")
    classes = [d for d in folder.iterdir() if d.is_dir()]
    if not classes:
        raise DataError(f"{folder} has no class folders: put each class's images in {folder}/<class name>/.")
    if not any(any(f.is_file() for f in d.iterdir()) for d in classes):
        raise DataError(f"{folder} has class folders but no images in them.")
    return folder


def _readable(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:
        return False


class _ReportingImageFolder(Dataset):
    """torchvision's ImageFolder, but an unreadable file fails with its name (or was dropped up front)."""

    def __init__(self, folder: Path, transform, skip_bad: bool, class_names: Optional[List[str]] = None):
        from torchvision.datasets import ImageFolder

        self.inner = ImageFolder(str(folder), transform=transform)
        if class_names is not None and self.inner.classes != class_names:
            raise DataError(f"{folder} has classes {self.inner.classes[:10]}..., the training split "
                            f"{class_names[:10]}...: the splits must hold the same class folders.")
        self.skipped = 0
        if skip_bad:
            good = [(p, c) for p, c in self.inner.samples if _readable(p)]
            self.skipped = len(self.inner.samples) - len(good)
            self.inner.samples = self.inner.imgs = good
            self.inner.targets = [c for _, c in good]
        self.class_names = list(self.inner.classes)

    @property
    def targets(self) -> List[int]:
        return self.inner.targets

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int):
        path = self.inner.samples[index][0]
        try:
            return self.inner[index]
        except Exception as e:
            raise DataError(f"Cannot read image {path}: {type(e).__name__}: {e}. Fix or remove the file, or pass "
                            "--skip-bad-images to drop unreadable files (they are counted and reported).") from e


def _image_folder(spec: DataSpec, need_train: bool) -> DataBundle:
    from timm.data import create_transform

    if not spec.data_dir:
        raise DataError("--dataset imagefolder needs --data-dir.")
    root = Path(spec.data_dir)
    config = dict(spec.model_data_config)
    if spec.input_size:
        config["input_size"] = (config.get("input_size", (3,))[0], spec.input_size, spec.input_size)
    if spec.in_chans:
        config["input_size"] = (spec.in_chans, *config["input_size"][1:])
    eval_tf = create_transform(**_transform_args(config), is_training=False)
    train = None
    class_names = None
    skipped = 0
    if need_train:
        train_folder = _check_folder(root, spec.train_split)
        train_tf = create_transform(**_transform_args(config), is_training=spec.augment)
        train = _ReportingImageFolder(train_folder, train_tf, spec.skip_bad_images)
        class_names, skipped = train.class_names, train.skipped
    eval_folder = _check_folder(root, spec.val_split)
    evaluation = _ReportingImageFolder(eval_folder, eval_tf, spec.skip_bad_images, class_names)
    skipped += evaluation.skipped
    if (train is not None and len(train) == 0) or len(evaluation) == 0:
        raise DataError(f"No readable images under {root} ({skipped} unreadable files were skipped).")
    config["label_names"] = tuple(evaluation.class_names)
    return DataBundle(train, evaluation, evaluation.class_names, config, skipped, eval_tf)


def _transform_args(config: Dict[str, Any]) -> Dict[str, Any]:
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    return {k: config[k] for k in keys if k in config}


def build_data(spec: DataSpec, need_train: bool = True) -> DataBundle:
    if spec.dataset in BUILTIN:
        return _builtin(spec, need_train)
    if spec.dataset in ("imagefolder", "folder", ""):
        return _image_folder(spec, need_train)
    raise DataError(f"Unknown --dataset {spec.dataset!r}: use one of {', '.join(BUILTIN)} or 'imagefolder' "
                    "with --data-dir.")


def heldout_split(bundle: DataBundle, fraction: float, seed: int) -> Tuple[Subset, Subset]:
    """Stratified (train, held-out) split of the training set, fixed by the seed; the held-out part is seen
    without augmentation.

    Class-level boosting measures each round's per-class error on data the round did not train on; training
    error goes to zero on small sets (the paper holds out 5,000 of CIFAR-100's 50,000 images).
    """
    if not 0 < fraction < 1:
        raise DataError(f"--heldout-frac must be between 0 and 1, got {fraction}.")
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
    train, heldout = Subset(bundle.train, kept), Subset(bundle.train_without_augmentation(), sorted(held))
    train.targets = targets[kept].tolist()
    heldout.targets = targets[sorted(held)].tolist()
    return train, heldout
