"""Hub I/O through the real huggingface_hub client against the loopback Hub (see conftest.py)."""
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import timm
import torch
import yaml

import collab_zoo
from collab_zoo.errors import (ChecksumMismatchError, CorruptWeightsError, NoPretrainedWeightsError, StateDictMismatchError, UnsafeWeightsError)

from conftest import subprocess_env

ARCH = "dks_resnet32"  # small, and has training-only heads, so it exercises the most of the weight code


def _unique_repo() -> str:
    return f"tester/{ARCH}-{uuid.uuid4().hex[:8]}"


def _model(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return collab_zoo.create_model(ARCH, num_classes=10, **kwargs).eval()


def _inputs():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _config_for(repo: str, revision: str, sha256: str, tag: str, num_classes: int = 10) -> dict:
    """A hub config in the same format as hub_configs/, pointing at the loopback Hub."""
    return {
        "model": f"{ARCH}.{tag}", "hf_hub_id": repo, "revision": revision, "filename": "model.safetensors",
        "sha256": sha256, "num_classes": num_classes, "label_names_source": "digits 0-9", "dataset": "test",
        "input_size": [3, 32, 32], "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "license": "apache-2.0",
        "paper": {"title": "Deeply-supervised Knowledge Synergy", "id": "arXiv:1906.00675"},
        "reported_metrics": {}, "origin": {"url": "loopback test"},
    }


def _publish(model, repo: str, tag: str, tmp_path: Path):
    commit = collab_zoo.push_to_hub(model, repo, quiet=True)
    folder = collab_zoo.save_for_hub(model, tmp_path / f"local-{tag}")
    sha = json.loads((folder / "config.json").read_text())["collab_zoo"]["sha256"]
    config = _config_for(repo, commit, sha, tag)
    collab_zoo.register_hub_config(config)
    return commit, sha, config


def test_save_for_hub_writes_weights_timm_config_and_model_card(tmp_path):
    model = _model()
    folder = collab_zoo.save_for_hub(model, tmp_path / "out", metrics={"top1": 97.5}, datasets=["digits"])
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == ARCH and config["num_classes"] == 10
    assert config["num_features"] == model.num_features
    assert config["model_args"]["num_classes"] == 10
    assert config["pretrained_cfg"]["num_classes"] == 10 and "hf_hub_id" not in config["pretrained_cfg"]
    assert config["collab_zoo"]["training_heads_included"] is False
    card = (folder / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "timm" and "dks" in meta["tags"] and "arxiv:1906.00675" in meta["tags"]
    assert meta["datasets"] == ["digits"] and meta["metrics"] == ["accuracy"]
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 97.5
    from safetensors.torch import load_file
    keys = load_file(folder / "model.safetensors").keys()
    assert keys and not any(k.startswith("aux_heads") for k in keys), "inference needs no auxiliary heads"


def test_the_model_card_passes_huggingface_hub_validation_with_full_metadata(hub, tmp_path):
    from huggingface_hub import ModelCard

    repo = _unique_repo()
    folder = collab_zoo.save_for_hub(_model(), tmp_path / "card", metrics={"top1": 91.25, "top5": 99.5},
                                     datasets=["cifar100"], base_model="hf-hub:tester/parent@main", repo_id=repo)
    card = ModelCard.load(folder / "README.md", ignore_metadata_errors=False)  # parses model-index strictly
    data = card.data
    assert data.license == "apache-2.0" and data.library_name == "timm" and data.base_model == "tester/parent"
    assert data.datasets == ["uoft-cs/cifar100"] and "collab_zoo" in data.tags and "dks" in data.tags
    results = {r.metric_name: r for r in data.eval_results}
    top1 = results["Top-1 accuracy (%)"]
    assert (top1.task_type, top1.dataset_type, top1.dataset_name, top1.metric_type, top1.metric_value) == (
        "image-classification", "uoft-cs/cifar100", "CIFAR-100", "accuracy", 91.25)
    assert results["Top-5 accuracy (%)"].metric_value == 99.5
    assert f'create_model("hf-hub:{repo}", pretrained=True)' in card.text and "import collab_zoo" in card.text
    assert "Plain timm users" in card.text and "Unknown model" in card.text


def test_a_free_text_licence_is_other_with_a_name(tmp_path):
    from huggingface_hub import ModelCard

    folder = collab_zoo.save_for_hub(_model(), tmp_path / "m", license="unspecified (no LICENSE upstream)")
    data = ModelCard.load(folder / "README.md").data
    assert data.license == "other" and data.license_name == "unspecified-no-license-upstream"


def test_a_fine_tune_names_its_base_model_in_card_and_config(tmp_path):
    folder = collab_zoo.save_for_hub(_model(), tmp_path / "tuned", base_model="tester/parent-model")
    meta = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    assert meta["base_model"] == "tester/parent-model"
    assert json.loads((folder / "config.json").read_text())["collab_zoo"]["base_model"] == "tester/parent-model"


def test_written_files_follow_the_umask_like_a_plain_open(tmp_path):
    import os
    from collab_zoo.hub import atomic_write_bytes

    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "shared.bin", b"x")
        with open(tmp_path / "plain.bin", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    mode = (tmp_path / "shared.bin").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.bin").stat().st_mode & 0o777 == 0o640


def test_saved_model_loads_back_from_local_dir_with_identical_outputs(tmp_path):
    model = _model(seed=3)
    folder = collab_zoo.save_for_hub(model, tmp_path / "m", keep_training_heads=True)
    x = _inputs()
    for create in (collab_zoo.create_model, timm.create_model):
        loaded = create(f"local-dir:{folder}", pretrained=True).eval()
        assert torch.equal(loaded(x), model(x))
        # With the heads kept, the training outputs match too.
        loaded.train(), model.train()
        torch.manual_seed(0)
        a = loaded.forward_heads(x)
        model.eval(), loaded.eval()
        assert len(a) == 3


def test_a_non_finite_buffer_is_never_written_or_pushed(hub, tmp_path):
    from collab_zoo.errors import NonFiniteError
    model = _model()
    bn_var = next(name for name, _ in model.named_buffers() if name.endswith("running_var"))
    model.get_buffer(bn_var).fill_(float("inf"))
    with pytest.raises(NonFiniteError, match=bn_var.replace(".", r"\.")):
        collab_zoo.save_for_hub(model, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing may be written for a diverged model"
    repo = _unique_repo()
    with pytest.raises(NonFiniteError):
        collab_zoo.push_to_hub(model, repo, quiet=True)
    from huggingface_hub import HfApi
    assert not HfApi().repo_exists(repo), "a refused push must not even create the repo"


def test_push_pull_with_pinned_revision_and_sha256(hub, tmp_path):
    repo = _unique_repo()
    first = _model(seed=1)
    oid, sha, _ = _publish(first, repo, "pinned", tmp_path)
    # A later commit on main must not change what the pinned tag loads.
    second = _model(seed=2)
    collab_zoo.push_to_hub(second, repo)
    x = _inputs()
    pinned = collab_zoo.create_model(f"{ARCH}.pinned", pretrained=True).eval()
    assert torch.equal(pinned(x), first(x))
    latest = collab_zoo.create_model(f"hf-hub:{repo}", pretrained=True).eval()
    assert torch.equal(latest(x), second(x))
    at_commit = timm.create_model(f"hf-hub:{repo}@{oid}", pretrained=True).eval()
    assert torch.equal(at_commit(x), first(x))
    report = pinned.pretrained_load_report
    assert report.source == "hf-hub" and oid in report.location
    assert any(k.startswith("aux_heads.0") for k in report.initialised)


def test_offline_reload_from_cache_and_offline_miss(hub, tmp_path):
    repo = _unique_repo()
    model = _model(seed=4)
    _, _, config = _publish(model, repo, "offline", tmp_path)
    collab_zoo.create_model(f"{ARCH}.offline", pretrained=True)  # fills the cache
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / f"{ARCH}.offline.json").write_text(json.dumps(config))
    x = _inputs()
    torch.save({"x": x, "y": model(x)}, tmp_path / "expected.pt")
    requests_before = len(hub.requests)
    code = f"""
import torch, collab_zoo
model = collab_zoo.create_model("{ARCH}.offline", pretrained=True).eval()
expected = torch.load(r"{tmp_path / 'expected.pt'}")
assert torch.equal(model(expected["x"]), expected["y"])
try:
    collab_zoo.create_model("hf-hub:tester/never-downloaded", pretrained=True)
except collab_zoo.HubUnreachableError as e:
    print("MISS", e)
"""
    env = subprocess_env(HF_HUB_OFFLINE="1", COLLAB_ZOO_HUB_CONFIGS=str(config_dir))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(hub.requests) == requests_before, "offline mode must not touch the network"
    miss = out.stdout[out.stdout.index("MISS"):]
    assert "HF_HUB_OFFLINE" in miss and "local-dir:" in miss and "pretrained_cfg_overlay" in miss


def _cached_weights(hf_cache: Path, repo: str) -> Path:
    folder = hf_cache / f"models--{repo.replace('/', '--')}"
    return next(folder.glob("snapshots/*/model.safetensors"))


def test_corrupted_cache_is_detected_evicted_and_redownloaded(hub, hf_cache, tmp_path):
    repo = _unique_repo()
    model = _model(seed=5)
    _publish(model, repo, "corrupt", tmp_path)
    collab_zoo.create_model(f"{ARCH}.corrupt", pretrained=True)
    blob = _cached_weights(hf_cache, repo).resolve()
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2])  # a truncated file, as a killed download or full disk leaves it
    with pytest.raises(ChecksumMismatchError, match="next call downloads it again"):
        collab_zoo.create_model(f"{ARCH}.corrupt", pretrained=True)
    assert not blob.exists(), "the damaged copy must leave the cache"
    gets = sum(1 for m, p in hub.requests if m == "GET" and p.endswith(f"{repo}/resolve/" + p.split("/resolve/")[-1]))
    again = collab_zoo.create_model(f"{ARCH}.corrupt", pretrained=True).eval()
    assert torch.equal(again(_inputs()), model(_inputs()))
    assert sum(1 for m, p in hub.requests if m == "GET" and repo in p and p.endswith("model.safetensors")) >= 2
    assert gets >= 1


def test_unpinned_download_is_checked_against_the_hub_etag(hub, hf_cache, tmp_path):
    repo = _unique_repo()
    collab_zoo.push_to_hub(_model(seed=6), repo)
    collab_zoo.create_model(f"hf-hub:{repo}", pretrained=True)
    blob = _cached_weights(hf_cache, repo).resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # same length, one flipped byte: only a hash notices
    blob.write_bytes(bytes(data))
    with pytest.raises(CorruptWeightsError, match="damaged"):
        collab_zoo.create_model(f"hf-hub:{repo}", pretrained=True)
    collab_zoo.create_model(f"hf-hub:{repo}", pretrained=True)  # re-downloaded, fine again


def test_sha256_mismatch_with_the_hub_config(hub, tmp_path):
    repo = _unique_repo()
    commit = collab_zoo.push_to_hub(_model(seed=7), repo, quiet=True)
    collab_zoo.register_hub_config(_config_for(repo, commit, "0" * 64, "badsha"))
    with pytest.raises(ChecksumMismatchError, match="does not match the pinned"):
        collab_zoo.create_model(f"{ARCH}.badsha", pretrained=True)


def test_missing_file_repo_and_revision(hub, tmp_path):
    from huggingface_hub import HfApi

    repo = _unique_repo()
    api = HfApi()
    api.create_repo(repo)
    folder = collab_zoo.save_for_hub(_model(), tmp_path / "m")
    # A repo with a config and a pickle only: the zoo refuses to fall back to the pickle.
    torch.save(_model().state_dict(), tmp_path / "pytorch_model.bin")
    api.upload_file(path_or_fileobj=str(folder / "config.json"), path_in_repo="config.json", repo_id=repo)
    api.upload_file(path_or_fileobj=str(tmp_path / "pytorch_model.bin"), path_in_repo="pytorch_model.bin",
                    repo_id=repo)
    with pytest.raises(NoPretrainedWeightsError, match="The zoo loads safetensors weights only"):
        collab_zoo.create_model(f"hf-hub:{repo}", pretrained=True)
    with pytest.raises(NoPretrainedWeightsError, match="does not exist"):
        collab_zoo.create_model("hf-hub:tester/no-such-repo", pretrained=True)
    with pytest.raises(NoPretrainedWeightsError, match="no revision"):
        collab_zoo.create_model(f"hf-hub:{repo}@{'f' * 40}", pretrained=True)


def test_a_pickle_is_never_loaded(tmp_path):
    path = tmp_path / "weights.safetensors"  # the name lies; the content is a torch.save pickle
    torch.save(_model().state_dict(), path)
    with pytest.raises(UnsafeWeightsError, match="never unpickles"):
        collab_zoo.create_model(ARCH, pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path)))


def test_local_file_truncated(tmp_path):
    folder = collab_zoo.save_for_hub(_model(), tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(CorruptWeightsError, match="is truncated or padded: its header promises"):
        collab_zoo.create_model(f"local-dir:{folder}", pretrained=True)


def test_other_class_count_reinitialises_every_head_and_says_so(tmp_path, caplog):
    model = _model(seed=8)
    folder = collab_zoo.save_for_hub(model, tmp_path / "m", keep_training_heads=True)
    with caplog.at_level("INFO", logger="collab_zoo.weights"):
        tuned = collab_zoo.create_model(ARCH, pretrained=True, num_classes=7,
                                        pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors")))
    report = tuned.pretrained_load_report
    for head in ("aux_heads.0.fc", "aux_heads.1.fc", "backbone.fc"):
        assert f"{head}.weight" in report.initialised and f"{head}.bias" in report.initialised
    assert "Initialised fresh" in caplog.text and "backbone.fc.weight" in caplog.text
    # Everything else came from the checkpoint.
    own = model.state_dict()
    for key, value in tuned.state_dict().items():
        if key not in report.initialised:
            assert torch.equal(value, own[key]), key


def test_in_chans_adapts_the_first_convolution(tmp_path):
    folder = collab_zoo.save_for_hub(_model(), tmp_path / "m")
    gray = collab_zoo.create_model(ARCH, pretrained=True, num_classes=10, in_chans=1,
                                   pretrained_cfg_overlay=dict(file=str(folder)))
    assert gray.backbone.stem[0].weight.shape[1] == 1
    assert any("backbone.stem.0.weight" in line for line in gray.pretrained_load_report.adapted)
    gray.eval()(torch.randn(2, 1, 32, 32))


def test_foreign_keys_are_an_error_that_names_them(tmp_path):
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in _model().hub_state_dict().items()}
    state["backbone.extra.weight"] = torch.zeros(3)
    del state["backbone.stem.1.weight"]
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(StateDictMismatchError) as e:
        collab_zoo.create_model(ARCH, pretrained=True, num_classes=10,
                                pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors")))
    assert "backbone.extra.weight" in str(e.value) and "backbone.stem.1.weight" in str(e.value)


def test_local_dir_without_config_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_for_hub"):
        collab_zoo.create_model(f"local-dir:{tmp_path}")


def test_hub_unreachable_error_mentions_the_ways_out(tmp_path):
    """A Hub that refuses connections, nothing cached: the error says how to pass a file or go offline."""
    from collab_zoo.loopback_hub import free_port

    code = """
import collab_zoo
try:
    collab_zoo.create_model("hf-hub:tester/unreachable", pretrained=True)
except collab_zoo.HubUnreachableError as e:
    print("UNREACHABLE", e)
"""
    env = subprocess_env(HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", HF_HUB_ETAG_TIMEOUT="1",
                         HF_HUB_DOWNLOAD_TIMEOUT="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "UNREACHABLE" in out.stdout, out.stderr[-2000:]
    assert "HF_HUB_OFFLINE" in out.stdout and "pretrained_cfg_overlay" in out.stdout


def test_the_loopback_hub_answers_every_call_this_client_generation_makes(hub, tmp_path):
    """CI runs this at the newest and the oldest supported huggingface_hub: each must need no other route."""
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    repo = _unique_repo()
    unrouted_before = len(hub.unrouted)
    first = collab_zoo.push_to_hub(_model(seed=9), repo, quiet=True)
    api.upload_file(path_or_fileobj=b"notes", path_in_repo="docs/notes.txt", repo_id=repo)
    info = api.model_info(repo)
    assert info.sha != first and {s.rfilename for s in info.siblings} == {
        "README.md", "config.json", "model.safetensors", "docs/notes.txt"}
    assert api.model_info(repo, revision=first).sha == first
    assert sorted(api.list_repo_files(repo)) == ["README.md", "config.json", "docs/notes.txt", "model.safetensors"]
    assert sorted(api.list_repo_files(repo, revision=first)) == ["README.md", "config.json", "model.safetensors"]
    local = hf_hub_download(repo, "config.json", revision=first, cache_dir=tmp_path / "cache")
    assert json.loads(Path(local).read_text())["architecture"] == ARCH
    assert hub.unrouted[unrouted_before:] == []


def test_push_returns_and_prints_the_commit_and_a_pinned_download_is_byte_identical(hub, tmp_path, capsys):
    import re
    from huggingface_hub import hf_hub_download

    repo = _unique_repo()
    first = _model(seed=10)
    commit = collab_zoo.push_to_hub(first, repo)
    assert isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{40}", commit)
    printed = capsys.readouterr().out
    assert commit in printed and commit.commit_url in printed and f"hf-hub:{repo}@{commit}" in printed
    collab_zoo.push_to_hub(_model(seed=11), repo, quiet=True)  # main moves on
    assert capsys.readouterr().out == ""
    local = collab_zoo.save_for_hub(first, tmp_path / "local")
    pulled = hf_hub_download(repo, "model.safetensors", revision=commit, cache_dir=tmp_path / "cache")
    assert Path(pulled).read_bytes() == (local / "model.safetensors").read_bytes()
    x = _inputs()
    assert torch.equal(collab_zoo.create_model(f"hf-hub:{repo}@{commit}", pretrained=True).eval()(x), first(x))


def test_plain_timm_loads_a_zoo_repo_once_collab_zoo_is_imported(hub):
    repo = _unique_repo()
    model = _model(seed=12)
    collab_zoo.push_to_hub(model, repo, quiet=True)
    code = f"""
import timm
try:
    timm.create_model("hf-hub:{repo}", pretrained=True)
except RuntimeError as e:
    print("WITHOUT", e)
import collab_zoo
model = timm.create_model("hf-hub:{repo}", pretrained=True)
print("WITH", model.pretrained_cfg["architecture"], model.pretrained_load_report.source)
"""
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "WITHOUT Unknown model" in out.stdout
    assert f"WITH {ARCH} hf-hub" in out.stdout
