"""The trust boundary and damaged inputs: weights come only as safetensors from inside the repo or folder named,
and every bad file or name is an error that says what is wrong (tests match the messages' own words)."""
import json
import pickle
import socket
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import collab_zoo
from collab_zoo.errors import (ChecksumMismatchError, CorruptWeightsError, HubUnreachableError,
                               IncompatibleConfigError, InvalidHubIdError, InvalidModelConfigError,
                               NoPretrainedWeightsError)
from collab_zoo.weights import load_safetensors_file

from conftest import subprocess_env

ZOO_ARCH = "dks_resnet20"   # the smallest zoo model with training-only heads
TIMM_ARCH = "test_resnet"   # one of timm's own architectures, small


def _zoo(seed: int):
    torch.manual_seed(seed)
    return collab_zoo.create_model(ZOO_ARCH, num_classes=10).eval()


def _timm(seed: int):
    torch.manual_seed(seed)
    return timm.create_model(TIMM_ARCH, num_classes=10).eval()


def _x():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _edit_config(folder: Path, edit) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


# --- safetensors files ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("header, words", [
    ([1, 2], "not an object"),
    ({"w": [0, 4]}, "not an object"),
    ({"w": {"dtype": "F32", "shape": [1]}}, "data_offsets"),
    ({"w": {"dtype": "F32", "shape": "one", "data_offsets": [0, 4]}}, "shape"),
    ({"w": {"shape": [1], "data_offsets": [0, 4]}}, "dtype"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, "data_offsets"),
    ({"__metadata__": {"format": 1}}, "__metadata__"),
])
def test_a_safetensors_header_of_the_wrong_shape_is_a_clear_error(tmp_path, header, words):
    raw = json.dumps(header).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    with pytest.raises(CorruptWeightsError, match="header is JSON but not a tensor table") as e:
        load_safetensors_file(path)
    assert words in str(e.value)
    with pytest.raises(CorruptWeightsError, match="not a tensor table"):
        collab_zoo.create_model(ZOO_ARCH, pretrained=True, num_classes=10,
                                pretrained_cfg_overlay=dict(file=str(path)))


# --- a folder's config.json ------------------------------------------------------------------------------------

def _set(path, value):
    def edit(config):
        target = config
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def _drop(key):
    return lambda config: config.pop(key)


@pytest.mark.parametrize("edit, words", [
    (_drop("architecture"), "architecture"),
    (_set(["architecture"], "../elsewhere"), "architecture"),
    (_set(["model_args"], [1, 2]), "model_args"),
    (_set(["model_args", "first_member_weights"], "/somewhere/else.safetensors"), "weight source"),
    (_set(["model_args", "pretrained"], True), "caller's to set"),
    (_set(["pretrained_cfg"], "resnet"), "pretrained_cfg"),
    (_set(["num_classes"], "ten"), "num_classes"),
    (_set(["pretrained_cfg", "input_size"], [32, 32]), "input_size"),
    (_set(["pretrained_cfg", "mean"], "grey"), "mean"),
    (_set(["pretrained_cfg", "hf_hub_filename"], "../outside/model.safetensors"), "refused"),
    (_set(["pretrained_cfg", "hf_hub_filename"], "/abs/model.safetensors"), "refused"),
    (_set(["pretrained_cfg", "hf_hub_filename"], "pytorch_model.bin"), "only .safetensors"),
])
def test_a_broken_config_json_names_the_field(tmp_path, edit, words):
    folder = collab_zoo.save_for_hub(_zoo(0), tmp_path / "m")
    _edit_config(folder, edit)
    with pytest.raises(InvalidModelConfigError, match="config.json is written by") as e:
        collab_zoo.create_model(f"local-dir:{folder}", pretrained=True)
    assert words in str(e.value)


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe{\x00}", "not UTF-8"),
    (b'{"architecture": "dks_resnet20",', "not valid JSON"),
    (b"[1, 2, 3]", "must be a JSON object"),
])
def test_a_config_json_that_is_not_a_json_object_is_a_clear_error(tmp_path, content, words):
    folder = collab_zoo.save_for_hub(_zoo(0), tmp_path / "m")
    (folder / "config.json").write_bytes(content)
    with pytest.raises(InvalidModelConfigError, match=words):
        collab_zoo.create_model(f"local-dir:{folder}", pretrained=True)


def test_save_for_hub_leaves_weight_sources_out_of_model_args(tmp_path):
    model = _zoo(0)
    model._model_args = dict(getattr(model, "_model_args", {}), first_member_weights="/data/start.safetensors")
    folder = collab_zoo.save_for_hub(model, tmp_path / "m")
    assert "first_member_weights" not in json.loads((folder / "config.json").read_text())["model_args"]
    with pytest.raises(ValueError, match="names weights or a file"):
        collab_zoo.save_for_hub(model, tmp_path / "n", model_args={"checkpoint_path": "/x.safetensors"})


# --- the trust boundary ------------------------------------------------------------------------------------------

def _point_elsewhere(other_weights: Path):
    def edit(config):
        config["pretrained_cfg"].update(file=str(other_weights), url="https://example.invalid/w.safetensors",
                                        hf_hub_id="tester/elsewhere", state_dict={"backbone.fc.bias": [0.0]})
    return edit


def test_config_fields_naming_other_weights_are_ignored_in_a_folder(tmp_path, caplog):
    own, other = _zoo(1), _zoo(2)
    folder = collab_zoo.save_for_hub(own, tmp_path / "own")
    elsewhere = collab_zoo.save_for_hub(other, tmp_path / "other") / "model.safetensors"
    _edit_config(folder, _point_elsewhere(elsewhere))
    x = _x()
    with caplog.at_level("WARNING"):
        for create in (collab_zoo.create_model, timm.create_model):
            loaded = create(f"local-dir:{folder}", pretrained=True).eval()
            assert torch.equal(loaded(x), own(x)), create
    assert "ignoring" in caplog.text


def test_config_fields_naming_other_weights_are_ignored_in_a_hub_repo(hub, tmp_path):
    from huggingface_hub import HfApi

    own, other = _zoo(3), _zoo(4)
    repo, other_repo = f"tester/own-{uuid.uuid4().hex[:8]}", f"tester/other-{uuid.uuid4().hex[:8]}"
    collab_zoo.push_to_hub(other, other_repo)
    folder = collab_zoo.save_for_hub(own, tmp_path / "own")
    elsewhere = collab_zoo.save_for_hub(other, tmp_path / "other") / "model.safetensors"

    def edit(config):
        _point_elsewhere(elsewhere)(config)
        config["pretrained_cfg"]["hf_hub_id"] = other_repo

    _edit_config(folder, edit)
    HfApi().create_repo(repo)
    HfApi().upload_folder(repo_id=repo, folder_path=str(folder))
    x = _x()
    for create in (collab_zoo.create_model, timm.create_model):
        loaded = create(f"hf-hub:{repo}", pretrained=True).eval()
        assert torch.equal(loaded(x), own(x)), create


def test_a_hub_config_json_cannot_name_a_file_outside_its_repo(hub, tmp_path):
    from huggingface_hub import HfApi

    repo = f"tester/escape-{uuid.uuid4().hex[:8]}"
    folder = collab_zoo.save_for_hub(_zoo(5), tmp_path / "m")
    _edit_config(folder, _set(["pretrained_cfg", "hf_hub_filename"], "../../other/model.safetensors"))
    HfApi().create_repo(repo)
    HfApi().upload_folder(repo_id=repo, folder_path=str(folder))
    with pytest.raises(InvalidModelConfigError, match="refused"):
        collab_zoo.create_model(f"hf-hub:{repo}", pretrained=True)


class _Trap:
    """Unpickling this creates a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("make", [_timm, _zoo], ids=["timm-architecture", "zoo-architecture"])
def test_a_folder_pickle_is_never_unpickled(tmp_path, make):
    folder = collab_zoo.save_for_hub(make(0), tmp_path / "m")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(NoPretrainedWeightsError, match="never unpickles"):
        collab_zoo.create_model(f"local-dir:{folder}", pretrained=True)
    assert not marker.exists()


def test_a_timm_architecture_from_a_folder_loads_through_the_checked_path(tmp_path):
    model = _timm(6)
    folder = collab_zoo.save_for_hub(model, tmp_path / "m")
    loaded = collab_zoo.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = _x()
    assert torch.equal(loaded(x), model(x))
    assert loaded.pretrained_cfg["source"] == "local-dir" and loaded.pretrained_cfg.get("state_dict") is None
    tuned = collab_zoo.create_model(f"local-dir:{folder}", pretrained=True, num_classes=3).eval()
    assert tuned(x).shape == (2, 3)


@pytest.mark.parametrize("make", [_timm, _zoo], ids=["timm-architecture", "zoo-architecture"])
def test_a_replaced_weight_file_fails_the_sha256_its_config_records(tmp_path, make):
    folder = collab_zoo.save_for_hub(make(7), tmp_path / "m")
    swapped = {k: v + 1 if v.is_floating_point() else v for k, v in load_file(folder / "model.safetensors").items()}
    save_file(swapped, folder / "model.safetensors")
    with pytest.raises(ChecksumMismatchError, match="does not match the .* its config.json records"):
        collab_zoo.create_model(f"local-dir:{folder}", pretrained=True)


# --- names and the network ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["hf-hub:not a repo", "hf-hub:owner/repo/extra", "hf-hub:owner/x--y",
                                  "hf-hub:owner/name@ main"])
def test_a_malformed_repo_id_is_a_clear_error(name):
    with pytest.raises(InvalidHubIdError, match="is not a valid Hub repo id|names no valid revision"):
        collab_zoo.create_model(name, pretrained=True)


def test_a_bad_hub_timeout_setting_is_a_clear_error(hub, monkeypatch):
    monkeypatch.setenv("COLLAB_ZOO_HUB_TIMEOUT", "soon")
    with pytest.raises(IncompatibleConfigError, match="not a number of seconds"):
        collab_zoo.create_model(f"hf-hub:tester/timeout-{uuid.uuid4().hex[:8]}", pretrained=True)


def test_a_silent_hub_is_reported_within_the_timeout_or_the_cache_is_used(hub, tmp_path):
    """A server that accepts connections and never answers: the cached repo loads, an uncached one fails fast."""
    repo = f"tester/silent-{uuid.uuid4().hex[:8]}"
    model = _zoo(8)
    collab_zoo.push_to_hub(model, repo)
    collab_zoo.create_model(f"hf-hub:{repo}", pretrained=True)  # fills the cache
    torch.save({"x": _x(), "y": model(_x())}, tmp_path / "expected.pt")
    code = f"""
import logging, torch, collab_zoo
logging.basicConfig(level=logging.WARNING)
expected = torch.load(r"{tmp_path / 'expected.pt'}")
model = collab_zoo.create_model("hf-hub:{repo}", pretrained=True).eval()
assert torch.equal(model(expected["x"]), expected["y"])
print("CACHED-LOADED")
try:
    collab_zoo.create_model("hf-hub:tester/never-cached", pretrained=True)
except collab_zoo.HubUnreachableError as e:
    print("SILENT", e)
"""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes the handshakes; nobody ever reads or answers
        url = "http://127.0.0.1:%d" % silent.getsockname()[1]
        env = subprocess_env(HF_ENDPOINT=url, COLLAB_ZOO_HUB_TIMEOUT="1")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "CACHED-LOADED" in out.stdout, out.stderr[-3000:]
    assert "did not answer" in out.stderr and "using the cached copy" in out.stderr
    silent_message = out.stdout[out.stdout.index("SILENT"):]
    assert "no answer within 1 s" in silent_message and "COLLAB_ZOO_HUB_TIMEOUT" in silent_message
    assert "HF_HUB_OFFLINE" in silent_message
    assert issubclass(HubUnreachableError, OSError)


def test_a_zoo_architecture_this_version_lacks_says_to_upgrade(tmp_path):
    folder = collab_zoo.save_for_hub(_zoo(9), tmp_path / "m")
    _edit_config(folder, _set(["architecture"], "dks_resnet9999"))
    with pytest.raises(collab_zoo.UnknownModelError, match="does not register.*pip install -U collab-zoo"):
        collab_zoo.create_model(f"local-dir:{folder}", pretrained=True)


# --- first-convolution adaptation ------------------------------------------------------------------------------

@pytest.mark.parametrize("in_chans", [1, 2, 4, 6])
def test_adapt_input_channels_follows_timm_from_three_channels(in_chans):
    from timm.models import adapt_input_conv

    from collab_zoo.weights import adapt_input_channels

    weight = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(in_chans)).half()
    adapted = adapt_input_channels(weight, in_chans)
    assert adapted.shape == (8, in_chans, 3, 3) and adapted.dtype == torch.half
    assert torch.equal(adapted, adapt_input_conv(in_chans, weight))


def test_adapt_input_channels_from_one_channel_keeps_a_grey_image_response():
    from collab_zoo.weights import adapt_input_channels

    weight = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    grey = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    rgb = adapt_input_channels(weight, 3)
    assert rgb.shape == (4, 3, 3, 3)
    expected = torch.nn.functional.conv2d(grey, weight)
    assert torch.allclose(torch.nn.functional.conv2d(grey.expand(1, 3, 8, 8), rgb), expected, atol=1e-5)
    assert torch.equal(adapt_input_channels(weight, 1), weight)


# --- known answers for the helpers the Hub tests reach only through a child process ------------------------------

def test_git_blob_sha1_and_the_etag_kind_are_gits_and_the_hubs(tmp_path):
    from collab_zoo.weights import _expected_from_etag, _git_blob_sha1

    small = tmp_path / "hello.txt"
    small.write_bytes(b"hello\n")
    assert _git_blob_sha1(small) == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object` of it
    lfs, blob, other = tmp_path / ("a" * 64), tmp_path / ("b" * 40), tmp_path / ("c" * 63)
    for path in (lfs, blob, other):
        path.write_bytes(b"x")
    assert _expected_from_etag(lfs) == ("sha256", "a" * 64)
    assert _expected_from_etag(blob) == ("sha1", "b" * 40)
    assert _expected_from_etag(other) is None
    upper = tmp_path / ("A" * 64)
    upper.write_bytes(b"x")
    assert _expected_from_etag(upper) is None, "the Hub's ETags are lowercase hex"
    for name in ("X" * 64, "X" * 40, "g" * 40):
        (tmp_path / name).write_bytes(b"x")
        assert _expected_from_etag(tmp_path / name) is None, name
    link = tmp_path / "snapshot-name"
    link.symlink_to(lfs)
    assert _expected_from_etag(link) == ("sha256", "a" * 64), "a snapshot link is judged by the blob it names"


def test_evicting_a_cached_file_removes_the_link_and_its_blob(tmp_path):
    from collab_zoo.weights import _evict_cached

    blob = tmp_path / "blobs" / ("d" * 64)
    blob.parent.mkdir()
    blob.write_bytes(b"weights")
    link = tmp_path / "snapshots" / "model.safetensors"
    link.parent.mkdir()
    link.symlink_to(blob)
    _evict_cached(link)
    assert not link.is_symlink() and not blob.exists()
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(b"w")
    _evict_cached(plain)
    assert not plain.exists()


def test_the_unreachable_message_names_the_file_repo_revision_and_ways_out():
    from huggingface_hub import constants

    from collab_zoo.weights import _unreachable_message

    message = _unreachable_message("org/repo", None, "model.safetensors", "connection refused")
    assert message.startswith(f"Could not fetch 'model.safetensors' of Hub repo 'org/repo' (revision main) from "
                              f"{constants.ENDPOINT}: connection refused. Nothing usable is cached under "
                              f"{constants.HF_HUB_CACHE}.\nWhat to do: ")
    for way_out in ("HF_ENDPOINT", "pretrained_cfg_overlay=dict(file='/path/to/model.safetensors')",
                    "'local-dir:/path/to/folder'", "HF_HUB_OFFLINE=1"):
        assert way_out in message
    assert "(revision " + "a" * 40 + ")" in _unreachable_message("org/repo", "a" * 40, "w.safetensors", "x")


def test_the_no_weights_message_for_a_pending_tag_and_for_an_untagged_architecture():
    from collab_zoo.registry import hub_configs
    from collab_zoo.weights import _pending_message

    pending = hub_configs()["dks_resnet50.in1k"]
    assert not pending.published
    message = _pending_message({"architecture": "dks_resnet50", "tag": "in1k"})
    assert message == (
        "'dks_resnet50.in1k' has a hub config but its Hub upload is pending (no pinned revision/sha256 yet). "
        f"Its weights come from {pending.origin['url']}. Convert that file with `{pending.origin['convert']}`, "
        "then load it with create_model('local-dir:OUT_DIR') or "
        "pretrained_cfg_overlay=dict(file='OUT_DIR/model.safetensors').")
    published = collab_zoo.list_pretrained()
    assert _pending_message({"architecture": "cifar_resnet32"}) == (
        f"'cifar_resnet32' has no published pretrained weights. Zoo models with published weights: "
        f"{', '.join(published)}. Train it with train.py, or pass your own weights with "
        "pretrained_cfg_overlay=dict(file=...).")
    tagged = _pending_message({"architecture": "dks_resnet20", "tag": "nope"})
    assert tagged.startswith(f"'dks_resnet20' has no published pretrained weights (its tags: "
                             f"{', '.join(collab_zoo.tags_of('dks_resnet20'))}). ")
    assert _pending_message({}).startswith("'this model' has no published pretrained weights. ")


def test_a_shipped_tag_loads_from_the_package_checked_and_a_missing_copy_says_reinstall(tmp_path):
    import dataclasses

    from collab_zoo.registry import hub_configs
    from collab_zoo.weights import _from_package

    shipped = hub_configs()["dcl_lenet.digits"]
    state_dict, source, location = _from_package(shipped)
    assert (source, location) == ("package", str(shipped.packaged_path))
    assert all(torch.equal(state_dict[k], v) for k, v in load_file(str(shipped.packaged_path)).items())
    missing = dataclasses.replace(shipped, packaged_file="absent.safetensors")
    with pytest.raises(NoPretrainedWeightsError) as e:
        _from_package(missing)
    assert str(e.value).startswith(f"'dcl_lenet.digits' ships its weights as {missing.packaged_path}, which this "
                                   "installation lacks. Reinstall collab-zoo")
    wrong_hash = dataclasses.replace(shipped, sha256="0" * 64)
    with pytest.raises(ChecksumMismatchError, match=r"'dcl_lenet\.digits'"):
        _from_package(wrong_hash)
    assert shipped.packaged_path.is_file(), "a shipped file is never evicted"


def _read(config, origin="cfg.json"):
    from collab_zoo.weights import read_model_config

    return read_model_config(json.dumps(config).encode(), origin)


def test_read_model_config_keeps_timms_fields_and_drops_every_weight_location(caplog):
    config = {"architecture": "dks_resnet20", "num_classes": 7, "num_features": 64,
              "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2],
                                 "crop_pct": 1.0, "hf_hub_filename": "w.safetensors", "url": "http://x/w.pth",
                                 "file": "/elsewhere/w.safetensors", "hf_hub_id": "other/repo", "source": "",
                                 "mystery": 1},
              "model_args": {"drop_path_rate": 0.1}, "collab_zoo": {"sha256": "f" * 64}}
    with caplog.at_level("WARNING", logger="collab_zoo"):
        got = _read(config)
    assert got == {"architecture": "dks_resnet20", "num_classes": 7, "num_features": 64,
                   "pretrained_cfg": {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2),
                                      "crop_pct": 1.0, "hf_hub_filename": "w.safetensors", "num_classes": 7},
                   "model_args": {"drop_path_rate": 0.1}, "collab_zoo": {"sha256": "f" * 64}}
    assert [r.getMessage() for r in caplog.records] == [
        f"cfg.json: ignoring pretrained_cfg fields this timm ({timm.__version__}) does not know: mystery.",
        "cfg.json: ignoring pretrained_cfg file, hf_hub_id, url: weights come only from the repo or folder itself."]


def test_read_model_config_reads_timms_older_single_dict_layout():
    got = _read({"architecture": "test_resnet", "num_features": 32, "num_classes": 5, "input_size": [3, 16, 16],
                 "collab_zoo": "not an object"})
    assert got == {"architecture": "test_resnet", "num_classes": 5, "num_features": 32,
                   "pretrained_cfg": {"num_classes": 5, "input_size": (3, 16, 16)}, "model_args": {},
                   "collab_zoo": {}}
    bare = _read({"architecture": "test_resnet", "pretrained_cfg": {}})
    assert bare == {"architecture": "test_resnet", "num_classes": None, "num_features": None, "pretrained_cfg": {},
                    "model_args": {}, "collab_zoo": {}}
    assert _read({"architecture": "test_resnet", "pretrained_cfg": {"num_classes": 0}})["num_classes"] == 0
    tiny = _read({"architecture": "test_resnet", "pretrained_cfg": {"input_size": [1, 1, 1]}})
    assert tiny["pretrained_cfg"]["input_size"] == (1, 1, 1), "one pixel, one channel is a size"


@pytest.mark.parametrize("config, problem", [
    ([1], "must be a JSON object, not a list"),
    ({"architecture": "a/b", "pretrained_cfg": {}},
     "field 'architecture' must name a registered model (e.g. \"dks_resnet32\"), not 'a/b'"),
    ({"architecture": "", "pretrained_cfg": {}},
     "field 'architecture' must name a registered model (e.g. \"dks_resnet32\"), not ''"),
    ({"architecture": "m", "pretrained_cfg": [1]}, "field 'pretrained_cfg' must be an object, not a list"),
    ({"architecture": "m", "pretrained_cfg": {}, "model_args": [1]},
     "field 'model_args' must be an object, not a list"),
    ({"architecture": "m", "pretrained_cfg": {}, "model_args": {"weights_dir": "/tmp"}},
     "field 'model_args.weights_dir' would name a weight source outside the repo or folder"),
    ({"architecture": "m", "pretrained_cfg": {}, "num_classes": -1},
     "field 'num_classes' must be a whole number >= 0, not -1"),
    ({"architecture": "m", "pretrained_cfg": {}, "num_classes": True},
     "field 'num_classes' must be a whole number >= 0, not True"),
    ({"architecture": "m", "pretrained_cfg": {}, "num_features": "64"},
     "field 'num_features' must be a whole number, not '64'"),
    ({"architecture": "m", "pretrained_cfg": {}, "num_features": False},
     "field 'num_features' must be a whole number, not False"),
    ({"architecture": "m", "pretrained_cfg": {"hf_hub_filename": "../w.safetensors"}},
     "field 'pretrained_cfg.hf_hub_filename' is refused: "),
    ({"architecture": "m", "pretrained_cfg": {"input_size": [3, 0, 32]}},
     "field 'pretrained_cfg.input_size' must be [channels, height, width], not [3, 0, 32]"),
    ({"architecture": "m", "pretrained_cfg": {"test_input_size": [3, True, 32]}},
     "field 'pretrained_cfg.test_input_size' must be [channels, height, width], not [3, True, 32]"),
    ({"architecture": "m", "pretrained_cfg": {}, "model_args": {"init": "/abs/w.safetensors"}},
     "field 'model_args.init' would name a weight source outside the repo or folder"),
    ({"architecture": "m", "pretrained_cfg": {"min_input_size": [3, 0, 1]}},
     "field 'pretrained_cfg.min_input_size' must be [channels, height, width], not [3, 0, 1]"),
    ({"architecture": "m", "pretrained_cfg": {"mean": []}}, "field 'pretrained_cfg.mean' must be a list of numbers, "
                                                            "not []"),
    ({"architecture": "m", "pretrained_cfg": {"std": [True]}}, "field 'pretrained_cfg.std' must be a list of "
                                                               "numbers, not [True]"),
])
def test_read_model_config_refusals_say_exactly_which_field(config, problem):
    with pytest.raises(InvalidModelConfigError) as e:
        _read(config, origin="repo/config.json")
    assert str(e.value).startswith(f"repo/config.json: {problem}")
    assert str(e.value).endswith("; write it again, or fix that field by hand.")


def _tensor_file(path: Path, value: float = 1.0) -> Path:
    save_file({"w": torch.full((2,), value)}, str(path))
    return path


def test_a_folder_gives_its_named_or_only_safetensors_file_and_says_what_else_it_holds(tmp_path, caplog):
    from collab_zoo.errors import UnsafeWeightsError
    from collab_zoo.weights import _weights_in_folder, resolve_weights

    only = tmp_path / "only"
    only.mkdir()
    _tensor_file(only / "weights.safetensors")
    assert _weights_in_folder(only, None) == only / "weights.safetensors"
    with caplog.at_level("WARNING", logger="collab_zoo"):
        state_dict, kind, location = resolve_weights({"source": "local-dir", "file": str(only),
                                                      "url": "http://x/w.pth"})
    assert (kind, location) == ("local-dir", str(only / "weights.safetensors")), "no config.json: no pin to check"
    assert torch.equal(state_dict["w"], torch.ones(2))
    assert [r.getMessage() for r in caplog.records] == [
        f"local-dir:{only}: ignoring pretrained_cfg url: its weights come only from inside it."]

    two = tmp_path / "two"
    two.mkdir()
    _tensor_file(two / "a.safetensors", 1.0)
    _tensor_file(two / "b.safetensors", 2.0)
    assert _weights_in_folder(two, "b.safetensors") == two / "b.safetensors"
    state_dict, _, location = resolve_weights({"source": "local-dir", "file": str(two),
                                               "hf_hub_filename": "b.safetensors"})
    assert location == str(two / "b.safetensors") and torch.equal(state_dict["w"], torch.full((2,), 2.0))
    with pytest.raises(NoPretrainedWeightsError) as e:
        _weights_in_folder(two, None)
    assert str(e.value) == f"No 'model.safetensors' in {two}."

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "w.bin").write_bytes(b"x")
    (pickled / "notes.txt").write_bytes(b"x")
    with pytest.raises(NoPretrainedWeightsError) as e:
        _weights_in_folder(pickled, None)
    assert str(e.value) == (f"No 'model.safetensors' in {pickled}. It holds w.bin, which collab_zoo never "
                            "unpickles: convert it once with `python -m collab_zoo.convert` in a session you trust.")
    for name in ("x.pth", "y.pt", "z.tar"):
        (pickled / name).write_bytes(b"x")
    with pytest.raises(NoPretrainedWeightsError) as e:
        _weights_in_folder(pickled, None)
    assert "It holds w.bin, x.pth, y.pt, z.tar, which" in str(e.value), "every pickle suffix is named"
    with pytest.raises(UnsafeWeightsError) as e:
        _weights_in_folder(pickled, "w.bin")
    assert str(e.value) == f"Refusing {pickled / 'w.bin'}: only .safetensors weights are loaded."
    with pytest.raises(InvalidHubIdError) as e:
        _weights_in_folder(pickled, "../w.safetensors")
    assert f"folder {pickled}" in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        resolve_weights({"source": "local-dir", "file": str(tmp_path / "absent")})
    assert str(e.value) == f"Model folder {tmp_path / 'absent'} does not exist."


def test_a_broken_folder_config_is_named_by_its_path(tmp_path):
    from collab_zoo.weights import resolve_weights

    folder = tmp_path / "folder"
    folder.mkdir()
    _tensor_file(folder / "model.safetensors")
    (folder / "config.json").write_text("[1]")
    with pytest.raises(InvalidModelConfigError) as e:
        resolve_weights({"source": "local-dir", "file": str(folder)})
    assert str(e.value).startswith(f"{folder / 'config.json'}: must be a JSON object, not a list.")
