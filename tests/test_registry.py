"""The registry: zoo names in timm's registry, tags from hub_configs/, and the errors a user can act on."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import collab_zoo
from collab_zoo.errors import NoPretrainedWeightsError, UnknownModelError, UnknownTagError
from collab_zoo.registry import (EXTRA_CONFIGS_ENV, HubConfigError, HubConfigWarning, _hub_config_files,
                                 _parse_hub_config, base_cfg, cifar_cfg, closest_model_names, get_hub_config,
                                 hub_configs, mnist_cfg, zoo_default_cfgs)

from conftest import ROOT, subprocess_env


def test_list_models_lists_the_zoo_and_timm_builds_every_one():
    names = collab_zoo.list_models()
    assert "dks_resnet50" in names and "cifar_resnet32" in names and "dks" in names
    assert not any(n.startswith("resnet") for n in names), "timm's own models are not zoo models"
    # On the meta device construction allocates nothing, so every architecture can be checked quickly.
    for name in names:
        with torch.device("meta"):
            model = timm.create_model(name)
        assert model.pretrained_cfg["architecture"] == name
        assert collab_zoo.is_zoo_model(name) and collab_zoo.is_model(name)


def test_list_models_patterns_and_timm_passthrough():
    assert collab_zoo.list_models("dks_resnet1*") == ["dks_resnet18", "dks_resnet110", "dks_resnet152"]
    assert "resnet50" in collab_zoo.list_models("resnet5*", include_timm=True)
    assert collab_zoo.is_model("resnet50") and not collab_zoo.is_zoo_model("resnet50")


def test_every_hub_config_names_a_registered_architecture_and_its_tag_resolves():
    assert hub_configs(), "hub_configs/ should ship the DKS authors' tags"
    for name, config in hub_configs().items():
        assert collab_zoo.is_zoo_model(config.architecture), name
        cfg = collab_zoo.get_pretrained_cfg(name)
        assert cfg.tag == config.tag and cfg.num_classes == config.num_classes
        assert cfg.crop_mode == config.crop_mode and cfg.interpolation == config.interpolation
        assert config.tag in collab_zoo.tags_of(config.architecture)


def test_dks_tag_carries_the_authors_preprocessing():
    cfg = collab_zoo.get_pretrained_cfg("dks_resnet50")  # the default tag
    assert cfg.tag == "in1k"
    # Square 256 bicubic resize, centre crop 224: timm's 'squash' mode at crop_pct 224/256.
    assert (cfg.crop_mode, cfg.interpolation, cfg.crop_pct, cfg.input_size) == ("squash", "bicubic", 0.875, (3, 224, 224))
    config = collab_zoo.get_hub_config("dks_resnet50.in1k")
    assert config.reported_metrics["dks"] == {"top1_err": 23.53, "top5_err": 6.40}
    assert config.paper["id"] == "arXiv:1906.00675"


def test_pending_tags_are_not_listed_as_pretrained():
    assert "dks_resnet50.in1k" in collab_zoo.list_pretrained(include_pending=True)
    published = collab_zoo.list_pretrained()
    for name in published:
        assert collab_zoo.get_hub_config(name).published


def test_unknown_model_names_the_closest_ones():
    with pytest.raises(UnknownModelError, match="dks_resnet50") as e:
        collab_zoo.create_model("dks_resnet5")
    assert "Closest names" in str(e.value)
    with pytest.raises(UnknownModelError):
        collab_zoo.get_pretrained_cfg("no_such_model_at_all")


def test_unknown_tag_lists_the_available_tags():
    with pytest.raises(UnknownTagError, match=r"dks_resnet50\.in1k"):
        collab_zoo.create_model("dks_resnet50.in21k")
    with pytest.raises(UnknownTagError, match="no pretrained tags"):
        collab_zoo.create_model("cifar_resnet32.in1k")


def test_pretrained_for_a_pending_tag_says_how_to_convert():
    with pytest.raises(NoPretrainedWeightsError) as e:
        collab_zoo.create_model("dks_resnet50", pretrained=True)
    message = str(e.value)
    assert "pending" in message and "python -m collab_zoo.convert dks --arch resnet50" in message
    assert "local-dir:" in message


def test_pretrained_for_an_architecture_without_weights_says_which_have_them():
    with pytest.raises(NoPretrainedWeightsError) as e:
        collab_zoo.create_model("cifar_resnet32", pretrained=True)
    assert "no published pretrained weights" in str(e.value)
    assert "list_pretrained" in str(e.value) or "published" in str(e.value)
    # timm's own entry point gives the same answer: the check lives in the zoo's builder.
    with pytest.raises(NoPretrainedWeightsError):
        timm.create_model("cifar_resnet32", pretrained=True)


def _valid_config(**changes):
    data = json.loads((ROOT / "hub_configs" / "dks_resnet18.in1k.json").read_text())
    data.update(changes)
    return data


@pytest.mark.parametrize("changes, message", [
    ({"revision": "main"}, "40-hex"),
    ({"sha256": "abc"}, "64 lowercase hex"),
    ({"filename": "pytorch_model.bin"}, "must be a .safetensors file; pickles are never loaded"),
    ({"input_size": [224, 224]}, "input_size"),
])
def test_malformed_hub_configs_are_refused(changes, message):
    with pytest.raises(HubConfigError, match=message):
        _parse_hub_config("dks_resnet18.in1k.json", _valid_config(**changes))


def test_hub_config_file_name_must_match_its_model():
    with pytest.raises(HubConfigError, match="file name"):
        _parse_hub_config("other.json", _valid_config())
    data = _valid_config()
    del data["license"]
    with pytest.raises(HubConfigError, match="license"):
        _parse_hub_config("dks_resnet18.in1k.json", data)


def test_hub_configs_ship_in_a_non_editable_wheel(tmp_path):
    """Build the wheel, install it into a bare folder and read the tags from there, outside the repo."""
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(wheel_dir.glob("collab_zoo-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # The shipped weights load from the installed package, offline, sha256-checked.
    code = ("import collab_zoo, json; m = collab_zoo.create_model('dks_resnet20.digits', pretrained=True); "
            "print(json.dumps([collab_zoo.__file__, collab_zoo.list_pretrained(include_pending=True), "
            "m.pretrained_load_report.source, m.pretrained_load_report.location]))")
    env = subprocess_env(PYTHONPATH=str(site), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    location, tags, source, weights = json.loads(out.stdout.strip().splitlines()[-1])
    assert location.startswith(str(site)), location
    assert "dks_resnet50.in1k" in tags and "dks_resnet20.digits" in tags
    assert source == "package" and weights.startswith(str(site)), weights
    import zipfile

    packaged = {Path(n).name for n in zipfile.ZipFile(wheel).namelist() if n.startswith("collab_zoo/pretrained/")}
    shipped = {c.packaged_file for c in hub_configs().values() if c.packaged_file}
    assert shipped and shipped <= packaged, shipped - packaged


def _write_extra_configs(folder):
    """One valid hub config and three broken ones, as a private zoo's COLLAB_ZOO_HUB_CONFIGS folder might hold."""
    folder.mkdir()
    good = _valid_config(model="dks_resnet20.extra")
    (folder / "dks_resnet20.extra.json").write_text(json.dumps(good))
    latin1 = dict(good, model="dks_resnet20.latin1", label_names_source="chiffres 0-9, \u00e9crits \u00e0 la main")
    (folder / "dks_resnet20.latin1.json").write_bytes(json.dumps(latin1, ensure_ascii=False).encode("latin-1"))
    (folder / "dks_resnet20.truncated.json").write_text(json.dumps(good)[:-20])
    (folder / "dks_resnet20.badtype.json").write_text(json.dumps(dict(good, model="dks_resnet20.badtype",
                                                                      num_classes="ten")))


def test_broken_hub_config_files_warn_once_each_and_never_break_import(tmp_path):
    folder = tmp_path / "configs"
    _write_extra_configs(folder)
    code = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import collab_zoo
    from collab_zoo.registry import HubConfigWarning
    tags = collab_zoo.list_pretrained(include_pending=True)
print(json.dumps([tags, [str(w.message) for w in caught if issubclass(w.category, HubConfigWarning)]]))
"""
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(COLLAB_ZOO_HUB_CONFIGS=str(folder)),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    tags, messages = json.loads(out.stdout.strip().splitlines()[-1])
    assert "dks_resnet20.extra" in tags and "dks_resnet50.in1k" in tags
    assert not any(t.startswith(("dks_resnet20.latin1", "dks_resnet20.truncated", "dks_resnet20.badtype"))
                   for t in tags)
    assert len(messages) == 3 and all("is skipped" in m for m in messages)
    assert sum("not UTF-8" in m for m in messages) == 1
    assert sum("not valid JSON" in m for m in messages) == 1
    assert sum("field 'num_classes'" in m and "whole number" in m for m in messages) == 1


def test_registering_a_broken_hub_config_file_is_a_clear_error(tmp_path):
    folder = tmp_path / "configs"
    _write_extra_configs(folder)
    with pytest.raises(HubConfigError, match="not valid JSON"):
        collab_zoo.register_hub_config(folder / "dks_resnet20.truncated.json")
    with pytest.raises(HubConfigError, match="not UTF-8"):
        collab_zoo.register_hub_config(folder / "dks_resnet20.latin1.json")


@pytest.mark.parametrize("changes, message", [
    ({"revision": 123}, "string or null"),
    ({"num_classes": True}, "whole number"),
    ({"mean": [0.5]}, "one per input channel"),
    ({"crop_mode": "zoom"}, "crop_mode"),
    ({"hf_hub_id": "not a repo"}, "hf_hub_id"),
    ({"filename": "../model.safetensors"}, "plain file name"),
    ({"packaged_file": "../model.safetensors", "sha256": "b" * 64}, "plain file name"),
    ({"packaged_file": "absent.safetensors", "sha256": "b" * 64}, "this installation lacks"),
    ({"packaged_file": "dks_resnet20.digits.safetensors"}, "needs the file's 'sha256'"),
    ({"label_names": ["a", "b"]}, "label_names"),
])
def test_hub_config_fields_of_the_wrong_kind_are_named(changes, message):
    with pytest.raises(HubConfigError, match=message):
        _parse_hub_config("dks_resnet18.in1k.json", _valid_config(**changes))


def test_a_tag_registered_at_run_time_never_changes_the_bare_names_defaults():
    before = collab_zoo.get_pretrained_cfg("dks_resnet110")
    collab_zoo.register_hub_config(_valid_config(
        model="dks_resnet110.private1ch", input_size=[1, 8, 8], mean=[0.5], std=[0.25], num_classes=10,
        revision="a" * 40, sha256="b" * 64))
    assert "private1ch" in collab_zoo.tags_of("dks_resnet110")
    assert collab_zoo.get_pretrained_cfg("dks_resnet110.private1ch").input_size == (1, 8, 8)
    after = collab_zoo.get_pretrained_cfg("dks_resnet110")
    assert (after.tag, after.input_size, after.num_classes) == (before.tag, before.input_size, before.num_classes)
    assert collab_zoo.create_model("dks_resnet110").pretrained_cfg["input_size"] == before.input_size
    assert collab_zoo.get_pretrained_cfg("dks_resnet50").tag == "in1k"  # a shipped tag stays the default


# --- known answers, in this process (the subprocess tests above cannot see a change made in this one) -------------

def test_hub_config_files_are_the_shipped_ones_then_each_extra_folder_in_order(tmp_path, monkeypatch):
    first, second, missing = tmp_path / "first", tmp_path / "second", tmp_path / "missing"
    first.mkdir()
    second.mkdir()
    (first / "z.json").write_bytes(b"z")
    (first / "a.json").write_bytes(b"a")
    (first / "notes.txt").write_bytes(b"not a config")
    (second / "b.json").write_bytes(b"b")
    monkeypatch.setenv(EXTRA_CONFIGS_ENV, os.pathsep.join([str(first), "", str(missing), str(second)]))
    with pytest.warns(HubConfigWarning) as caught:
        files = _hub_config_files()
    assert [str(w.message) for w in caught] == [
        f"{EXTRA_CONFIGS_ENV} names {missing}, which is not a folder; it is skipped."]
    shipped = [(f"hub_configs/{p.name}", p.read_bytes()) for p in sorted((ROOT / "hub_configs").glob("*.json"))]
    assert len(shipped) == 8
    assert files == shipped + [(str(first / "a.json"), b"a"), (str(first / "z.json"), b"z"),
                               (str(second / "b.json"), b"b")]


def test_reading_the_configs_skips_each_broken_file_with_one_warning(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    _write_extra_configs(folder)
    monkeypatch.setenv(EXTRA_CONFIGS_ENV, str(folder))
    with pytest.warns(HubConfigWarning) as caught:
        configs = hub_configs.__wrapped__()  # the uncached read, as at import
    messages = [str(w.message) for w in caught]
    shipped = {p.name[:-len(".json")] for p in (ROOT / "hub_configs").glob("*.json")}
    assert set(configs) == shipped | {"dks_resnet20.extra"}
    assert configs["dks_resnet20.extra"].num_classes == _valid_config()["num_classes"]
    assert len(messages) == 3 and all(m.endswith("This tag is skipped until the file is fixed.") for m in messages)
    assert sorted(m.split(":")[0] for m in messages) == sorted(
        str(folder / f"dks_resnet20.{kind}.json") for kind in ("badtype", "latin1", "truncated"))


def test_get_hub_config_answers_for_tags_defaults_and_strangers():
    shipped = hub_configs()["dks_resnet50.in1k"]
    assert get_hub_config("dks_resnet50.in1k") is shipped
    assert get_hub_config("dks_resnet50") is shipped, "the bare name gives its default tag's config"
    assert get_hub_config("dks_resnet50.nope") is None
    assert get_hub_config("cifar_resnet32") is None, "an architecture without tags"
    assert get_hub_config("resnet50") is None, "timm's own default tag is not a zoo config"
    assert get_hub_config("no_such_arch") is None


def test_get_pretrained_cfg_refuses_an_unknown_tag_naming_the_architecture_and_the_tag():
    with pytest.raises(UnknownTagError) as e:
        collab_zoo.get_pretrained_cfg("dks_resnet50.in21k")
    assert str(e.value) == "Unknown pretrained tag 'in21k' for 'dks_resnet50'. Available: dks_resnet50.in1k."
    with pytest.raises(UnknownTagError) as e:
        collab_zoo.get_pretrained_cfg("cifar_resnet32.in1k")
    assert str(e.value) == "'cifar_resnet32' has no pretrained tags; use the bare name 'cifar_resnet32'."


def test_unknown_tag_lists_every_tag_comma_separated():
    for tag in ("aa1", "aa2"):
        collab_zoo.register_hub_config(_valid_config(model=f"dks_resnet110.{tag}", revision="a" * 40,
                                                     sha256="b" * 64))
    with pytest.raises(UnknownTagError) as e:
        collab_zoo.get_pretrained_cfg("dks_resnet110.nope")
    assert "Available: dks_resnet110.aa1, dks_resnet110.aa2" in str(e.value)


def test_unknown_model_message_names_five_closest_names_from_the_architecture():
    closest = ["dks_resnet50", "dks_resnet152", "dks_resnet32", "dks_resnet20", "dks_resnet18"]
    assert closest_model_names("dks_resnet5.in1k") == closest, "the tag is left out of the comparison"
    with pytest.raises(UnknownModelError) as e:
        collab_zoo.get_pretrained_cfg("dks_resnet5")
    assert str(e.value) == ("Unknown model 'dks_resnet5'. Closest names: " + ", ".join(closest) + ". See "
                            "collab_zoo.list_models() for the zoo, timm.list_models() for timm's own.")


def test_list_pretrained_is_in_natural_order_and_filters_by_architecture():
    assert collab_zoo.list_pretrained("dks_resnet1[58]*", include_pending=True) == ["dks_resnet18.in1k",
                                                                                    "dks_resnet152.in1k"]
    everything = collab_zoo.list_pretrained(include_pending=True)
    assert set(everything) >= {"dks_resnet20.digits", "dks_resnet50.in1k", "dcl_lenet.digits"}


def test_registering_from_a_path_names_the_file_and_an_unknown_architecture(tmp_path):
    absent = tmp_path / "absent.json"
    with pytest.raises(HubConfigError) as e:
        collab_zoo.register_hub_config(absent)
    assert str(e.value) == f"{absent}: cannot be read (No such file or directory)."
    folder = tmp_path / "configs"
    _write_extra_configs(folder)
    with pytest.raises(HubConfigError) as e:
        collab_zoo.register_hub_config(folder / "dks_resnet20.truncated.json")
    assert str(e.value).startswith(f"{folder / 'dks_resnet20.truncated.json'}: ")
    with pytest.raises(UnknownModelError, match=r"^Unknown model 'no_such_arch'\."):
        collab_zoo.register_hub_config(_valid_config(model="no_such_arch.in1k"))


def test_the_cfg_helpers_give_timms_fields_for_each_input_kind():
    extra = dict(pool_size=(7, 7))
    assert base_cfg("conv1", "fc", **extra) == dict(
        first_conv="conv1", classifier="fc", num_classes=1000, input_size=(3, 224, 224),
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_pct=0.875, interpolation="bilinear",
        pool_size=(7, 7))
    assert cifar_cfg("stem", ("fc", "aux")) == dict(
        first_conv="stem", classifier=("fc", "aux"), num_classes=100, input_size=(3, 32, 32),
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), crop_pct=1.0, interpolation="bilinear")
    assert mnist_cfg("conv", "out", num_classes=100, size=16) == dict(
        first_conv="conv", classifier="out", num_classes=100, input_size=(1, 16, 16), mean=(0.1307,),
        std=(0.3081,), crop_pct=1.0, interpolation="bilinear")
    assert mnist_cfg("conv", "out")["input_size"] == (1, 28, 28) and mnist_cfg("conv", "out")["num_classes"] == 10


def test_a_tags_pretrained_cfg_is_the_base_with_the_json_fields_on_top():
    data = _valid_config()
    config = _parse_hub_config("dks_resnet18.in1k.json", data)
    base = dict(first_conv="conv1", classifier="fc", num_classes=1, input_size=(3, 1, 1), custom="kept")
    published = data["revision"] is not None and data["sha256"] is not None
    expected = dict(
        first_conv="conv1", classifier="fc", custom="kept",
        hf_hub_id=f"{data['hf_hub_id']}@{data['revision']}" if published else None, file=None,
        hf_hub_filename=data["filename"], num_classes=data["num_classes"], input_size=tuple(data["input_size"]),
        interpolation=data["interpolation"], crop_pct=data["crop_pct"], crop_mode=data["crop_mode"],
        mean=tuple(data["mean"]), std=tuple(data["std"]), license=data["license"],
        paper_name=data["paper"].get("title"), paper_ids=data["paper"].get("id"),
        origin_url=data["origin"].get("url"), description=data["origin"].get("description"),
        notes=tuple(data.get("notes", ())) or None)
    assert config.to_pretrained_cfg(base) == expected
    pinned = _parse_hub_config("dks_resnet18.in1k.json", dict(data, revision="c" * 40, sha256="d" * 64,
                                                               label_names=[str(i) for i in range(1000)]))
    cfg = pinned.to_pretrained_cfg(base)
    assert cfg["hf_hub_id"] == f"{data['hf_hub_id']}@{'c' * 40}" and cfg["file"] is None
    assert cfg["label_names"] == tuple(str(i) for i in range(1000))
    shipped = hub_configs()["dcl_lenet.digits"]
    cfg = shipped.to_pretrained_cfg({})
    assert cfg["file"] == str(ROOT / "collab_zoo" / "pretrained" / shipped.packaged_file)
    assert cfg["hf_hub_id"] is None, "a shipped tag not yet on the Hub names no repo"


def test_zoo_default_cfgs_folds_in_tags_and_picks_only_a_fitting_shipped_default():
    from collab_zoo.registry import _BASE_CFGS

    out = zoo_default_cfgs({name: dict(_BASE_CFGS[name]) for name in ("dks_resnet50", "dks_resnet20")})
    assert out["dks_resnet50"].tags[0] == "in1k", "the shipped ImageNet tag is the bare name's default"
    assert out["dks_resnet50"].cfgs["in1k"].hf_hub_filename == hub_configs()["dks_resnet50.in1k"].filename
    assert out["dks_resnet50"].cfgs[""].num_classes == _BASE_CFGS["dks_resnet50"]["num_classes"]
    # dks_resnet20.digits is 1x16x16 with 100 classes: not what dks_resnet20 is defined for, so never its default
    assert out["dks_resnet20"].tags[0] == "" and "digits" in out["dks_resnet20"].tags
    assert out["dks_resnet20"].cfgs["digits"].input_size == tuple(hub_configs()["dks_resnet20.digits"].input_size)


def test_is_zoo_model_reads_the_architecture_before_the_tag():
    assert collab_zoo.is_zoo_model("dks_resnet50") and collab_zoo.is_zoo_model("dks_resnet50.in1k")
    assert collab_zoo.is_zoo_model("dks_resnet50.any.thing")
    assert not collab_zoo.is_zoo_model("resnet50.a1_in1k") and not collab_zoo.is_zoo_model("in1k")


def test_without_extra_folders_only_the_shipped_configs_are_read_and_an_unreadable_file_is_skipped(
        tmp_path, monkeypatch):
    monkeypatch.delenv(EXTRA_CONFIGS_ENV, raising=False)
    shipped = [(f"hub_configs/{p.name}", p.read_bytes()) for p in sorted((ROOT / "hub_configs").glob("*.json"))]
    assert _hub_config_files() == shipped
    (tmp_path / "folder.json").mkdir()  # matches *.json but cannot be read as a file
    monkeypatch.setenv(EXTRA_CONFIGS_ENV, str(tmp_path))
    with pytest.warns(HubConfigWarning) as caught:
        assert _hub_config_files() == shipped
    assert [str(w.message) for w in caught] == [
        f"{tmp_path / 'folder.json'}: cannot be read (Is a directory); this tag is skipped."]


def test_patterns_match_the_architecture_of_a_tagged_name():
    assert collab_zoo.list_pretrained("dks_resnet18", include_pending=True) == ["dks_resnet18.in1k"]
    timm_fives = collab_zoo.list_models("resnet5*", include_timm=True)
    assert "resnet50" in timm_fives and "vit_base_patch16_224" not in timm_fives
    assert cifar_cfg("a", "b", pool_size=(8, 8))["pool_size"] == (8, 8)
    assert mnist_cfg("a", "b", pool_size=(4, 4))["pool_size"] == (4, 4)


def test_a_parsed_config_keeps_every_field_of_its_json():
    data = _valid_config(dataset="digits", notes=["one", "two"])
    config = _parse_hub_config("dks_resnet18.in1k.json", data)
    assert (config.label_names_source, config.reported_metrics, config.dataset, config.notes, config.paper,
            config.origin) == (data["label_names_source"], data["reported_metrics"], "digits", ("one", "two"),
                               data["paper"], data["origin"])
    plain = dict(_valid_config())
    plain.pop("dataset", None)
    assert _parse_hub_config("dks_resnet18.in1k.json", plain).dataset == "imagenet-1k"
    shipped = hub_configs()["dcl_lenet.digits"]
    assert shipped.packaged_file == json.loads((ROOT / "hub_configs" / "dcl_lenet.digits.json").read_text())[
        "packaged_file"]
    assert _parse_hub_config("dks_resnet18.in1k.json", _valid_config(num_classes=1, label_names=None)) \
        .num_classes == 1, "one class is allowed"


_LONG = "x" * 100


@pytest.mark.parametrize("data, message", [
    ([1, 2], "must be a JSON object, not a list."),
    ({"num_classes": _LONG}, f"field 'num_classes' should be a whole number, got {json.dumps(_LONG)[:60]}."),
    ({"revision": None, "drop": "revision"}, "missing field 'revision' (write null while the upload is pending)."),
    ({"revision": [1] * 40}, f"field 'revision' should be a string or null, got {json.dumps([1] * 40)[:60]}."),
    ({"model": "nodot"}, "field 'model' must be 'architecture.tag', got 'nodot'."),
    ({"num_classes": 0}, "field 'num_classes' must be 1 or more."),
    ({"input_size": [3, 0, 224]}, "field 'input_size' must be [channels, height, width] (three whole numbers "
                                  "above 0)."),
    ({"input_size": [3, -1, 224]}, "field 'input_size' must be [channels, height, width] (three whole numbers "
                                   "above 0)."),
    ({"mean": [0.5]}, "field 'mean' must be 3 numbers, one per input channel."),
    ({"std": [0.2, 0.0, 0.2]}, "field 'std' must be above 0 for every channel."),
    ({"crop_pct": 0}, "field 'crop_pct' must be above 0."),
    ({"notes": "text"}, "field 'notes' must be a list of strings."),
    ({"dataset": 5}, "field 'dataset' must be a string."),
    ({"packaged_file": "weights.bin", "sha256": "b" * 64},
     "field 'packaged_file' must be the name of a .safetensors file in collab_zoo/pretrained/."),
    ({"packaged_file": "absent.safetensors"},
     "field 'packaged_file' needs the file's 'sha256': shipped weights are checked like downloads."),
])
def test_each_refusal_of_a_hub_config_says_exactly_what_is_wrong(data, message):
    name = "dks_resnet18.in1k"
    if isinstance(data, dict):
        changes = dict(data)
        drop = changes.pop("drop", None)
        name = "nodot" if changes.get("model") == "nodot" else name
        data = _valid_config(**changes)
        if drop:
            del data[drop]
    with pytest.raises(HubConfigError) as e:
        _parse_hub_config(f"{name}.json", data)
    assert str(e.value) == f"{name}.json: {message}"


def test_a_bad_file_name_in_a_config_names_its_field():
    for field, extra in (("filename", {}), ("packaged_file", {"sha256": "b" * 64})):
        with pytest.raises(HubConfigError) as e:
            _parse_hub_config("dks_resnet18.in1k.json", _valid_config(**{field: "../x.safetensors"}, **extra))
        assert str(e.value).startswith(f"dks_resnet18.in1k.json: field '{field}'"), str(e.value)


def test_a_dotted_tag_is_one_tag_and_names_match_by_their_first_dot():
    collab_zoo.register_hub_config(_valid_config(model="dks_resnet110.v1.5", revision="a" * 40, sha256="b" * 64))
    assert "v1.5" in collab_zoo.tags_of("dks_resnet110")
    assert "dks_resnet110.v1.5" in collab_zoo.list_pretrained("dks_resnet110")
    assert closest_model_names("dks_resnet5.v1.5") == closest_model_names("dks_resnet5")
    assert len(collab_zoo.list_models(include_timm=True)) > 1000, "no pattern: every timm model"


def test_optional_fields_may_be_left_out_and_a_shipped_file_is_kept(recwarn, monkeypatch):
    data = _valid_config()
    data.pop("notes", None)
    assert _parse_hub_config("dks_resnet18.in1k.json", data).notes == ()
    shipped = json.loads((ROOT / "hub_configs" / "dcl_lenet.digits.json").read_text())
    assert _parse_hub_config("dcl_lenet.digits.json", shipped).packaged_file == shipped["packaged_file"]
    monkeypatch.delenv(EXTRA_CONFIGS_ENV, raising=False)
    _hub_config_files()
    assert not [w for w in recwarn if issubclass(w.category, HubConfigWarning)], "no folder set: nothing to warn"
