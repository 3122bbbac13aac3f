"""Releasing: a train.py run folder to a Hub repo (release.py) with a full card and the run's files, pinned by
commit; and the tags the package ships, which load offline and reproduce their recorded accuracy."""
import json
import re
import shlex
import uuid
from pathlib import Path

import pytest
import torch

import collab_zoo
from collab_zoo.errors import ChecksumMismatchError
from collab_zoo.registry import hub_configs
from collab_zoo.training.args import parse_validate_args
from collab_zoo.training.cli import train_main, validate_models
from collab_zoo.training.release import release_main

SMALL_RUN = ["--dataset", "digits", "--img-size", "8", "-b", "64", "--lr", "0.05", "--warmup-epochs", "0",
             "--log-with", "none", "--model", "dks_resnet20", "--epochs", "1", "--seed", "3"]
METHODS = ("dks", "cldl", "dcl", "complementary")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished train.py run (1 epoch of DKS ResNet-20 on 8x8 digits)."""
    out = tmp_path_factory.mktemp("runs")
    assert train_main(["--output", str(out), "--experiment", "digits-dks", *SMALL_RUN]) == 0
    return out / "digits-dks"


def _repo() -> str:
    return f"tester/release-{uuid.uuid4().hex[:8]}"


def _pushed(capsys, *argv) -> tuple:
    assert release_main([*map(str, argv)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    commit = out.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{40}", commit), out
    return commit, out


def test_release_uploads_the_run_as_one_pinned_commit_with_a_full_card(run, hub, tmp_path, capsys):
    from huggingface_hub import HfApi, ModelCard, hf_hub_download

    repo = _repo()
    command = "python train.py " + shlex.join(SMALL_RUN)
    commit, printed = _pushed(capsys, run, "--repo", repo, "--train-command", command)
    assert f"{hub.url}/{repo}" in printed and commit in printed and f"hf-hub:{repo}@{commit}" in printed

    files = sorted(HfApi().list_repo_files(repo, revision=commit))
    assert files == sorted(["README.md", "config.json", "model.safetensors", "results.json", "summary.csv",
                            "args.yaml", "training_curves.png"])
    # main moves on; the pinned commit still serves the first release, byte for byte.
    _pushed(capsys, run, "--repo", repo, "--license", "mit")
    for name, local in (("model.safetensors", run / "hub" / "model.safetensors"),
                        ("config.json", run / "hub" / "config.json"), ("results.json", run / "results.json"),
                        ("summary.csv", run / "summary.csv"), ("training_curves.png", run / "training_curves.png")):
        pulled = hf_hub_download(repo, name, revision=commit, cache_dir=tmp_path / "cache")
        assert Path(pulled).read_bytes() == local.read_bytes(), name

    # Parsed strictly, as test_hub's card test does: ModelCard.validate() posts to huggingface.co itself in
    # huggingface_hub 0.34 (our floor), whatever HF_ENDPOINT says, and this machine has no route there.
    card = ModelCard.load(hf_hub_download(repo, "README.md", revision=commit, cache_dir=tmp_path / "cache"),
                          ignore_metadata_errors=False)
    data = card.data.to_dict()
    results = json.loads((run / "results.json").read_text())
    assert data["license"] == "apache-2.0" and data["library_name"] == "timm"
    assert {"collab_zoo", "dks", "arxiv:1906.00675", "image-classification"} <= set(data["tags"])
    assert data["datasets"] == ["digits"]
    top1 = [m for m in data["model-index"][0]["results"][0]["metrics"] if m["name"].startswith("Top-1")][0]
    assert top1["value"] == pytest.approx(results["best"]["eval_top1"])
    assert f'create_model("hf-hub:{repo}", pretrained=True)' in card.text and "import collab_zoo" in card.text
    assert command in card.text
    later = ModelCard.load(hf_hub_download(repo, "README.md", cache_dir=tmp_path / "cache"))
    assert later.data.license == "mit"

    released = collab_zoo.create_model(f"hf-hub:{repo}@{commit}", pretrained=True).eval()
    local = collab_zoo.create_model(f"local-dir:{run / 'hub'}", pretrained=True).eval()
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(released(x), local(x))


def test_write_hub_config_pins_the_release_as_a_tag(run, hub, tmp_path, capsys):
    repo, tag = _repo(), f"r{uuid.uuid4().hex[:6]}"
    configs = tmp_path / "hub_configs"
    configs.mkdir()
    commit, printed = _pushed(capsys, run, "--repo", repo, "--write-hub-config", tag, "--hub-configs-dir", configs)
    path = configs / f"dks_resnet20.{tag}.json"
    assert f"rewrote {path}" in printed and "tracked file" in printed
    config = json.loads(path.read_text())
    sha = json.loads((run / "hub" / "config.json").read_text())["collab_zoo"]["sha256"]
    assert (config["hf_hub_id"], config["revision"], config["sha256"]) == (repo, commit, sha)
    assert config["input_size"] == [1, 8, 8] and config["num_classes"] == 10 and len(config["label_names"]) == 10
    collab_zoo.register_hub_config(path)
    assert f"dks_resnet20.{tag}" in collab_zoo.list_pretrained()
    model = collab_zoo.create_model(f"dks_resnet20.{tag}", pretrained=True).eval()
    assert model.pretrained_load_report.location == f"{repo}@{commit}/model.safetensors"
    x = torch.randn(2, 1, 8, 8)
    local = collab_zoo.create_model(f"local-dir:{run / 'hub'}", pretrained=True).eval()
    assert torch.equal(model(x), local(x))


def test_a_run_changed_after_training_or_a_bad_request_is_refused(run, hub, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    weights = copy / "hub" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    assert release_main([str(copy), "--repo", _repo()]) == 2
    err = capsys.readouterr().err
    assert "records" in err and "changed after train.py wrote it" in err
    (copy / "hub" / "model.safetensors").unlink()
    assert release_main([str(copy), "--repo", _repo()]) == 2
    assert "not a finished train.py run folder" in capsys.readouterr().err
    assert release_main([str(run)]) == 2
    assert "--repo ORG/NAME" in capsys.readouterr().err
    assert release_main([str(run), "--repo", "not a repo id"]) == 2
    assert "not a valid Hub repo id" in capsys.readouterr().err


# --- the tags the package ships ----------------------------------------------------------------------------------

def _shipped():
    return [c for c in hub_configs().values() if c.packaged_file]


def test_shipped_tags_cover_every_method_and_are_listed():
    shipped = _shipped()
    assert {collab_zoo.registry.is_zoo_model(c.architecture) for c in shipped} == {True}
    methods = {c.architecture.split("_", 1)[0] for c in shipped}
    assert set(METHODS) <= methods, methods
    listed = collab_zoo.list_pretrained()
    total = 0
    for config in shipped:
        assert config.name in listed and config.published
        assert config.packaged_path.is_file()
        assert config.reported_metrics["validate"].startswith(f"python validate.py --model {config.name} ")
        assert config.origin["command"].startswith("python train.py ") and config.origin["seed"].isdigit()
        assert config.license and config.label_names and len(config.label_names) == config.num_classes
        total += config.packaged_path.stat().st_size
    assert total < 10 * 2 ** 20, f"shipped weights total {total / 2 ** 20:.1f} MB"


@pytest.mark.parametrize("name", sorted(c.name for c in _shipped()))
def test_a_shipped_tag_reproduces_its_recorded_accuracy(name):
    config = collab_zoo.get_hub_config(name)
    argv = shlex.split(config.reported_metrics["validate"])[2:]  # after "python validate.py"
    result = validate_models(parse_validate_args(argv))[0]
    assert result["top1"] == pytest.approx(config.reported_metrics["top1"], abs=0.5)
    assert collab_zoo.create_model(name, pretrained=True).pretrained_load_report.source == "package"


def test_shipped_weights_are_checked_against_their_sha256():
    config = _shipped()[0]
    raw = json.loads((Path(collab_zoo.__file__).parent.parent / "hub_configs" / f"{config.name}.json").read_text())
    wrong = dict(raw, model=f"{config.architecture}.wrongsha", sha256="0" * 64)
    collab_zoo.register_hub_config(wrong)
    with pytest.raises(ChecksumMismatchError, match="reinstall"):
        collab_zoo.create_model(f"{config.architecture}.wrongsha", pretrained=True)


def test_fine_tuning_from_a_shipped_tag_names_it_as_the_base_model(tmp_path):
    from PIL import Image

    name = "dcl_lenet.digits"
    for split in ("train", "val"):
        for k, c in enumerate(("cat", "dog", "owl")):
            folder = tmp_path / "data" / split / c
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (20, 20), (i * 40, 60 + 70 * k, 50)).save(folder / f"{i}.png")
    argv = ["--model", name, "--pretrained", "--num-classes", "3", "--data-dir", str(tmp_path / "data"),
            "--epochs", "1", "-b", "4", "--lr", "0.01", "--log-with", "none", "--output", str(tmp_path / "runs"),
            "--experiment", "tuned"]
    assert train_main(argv) == 0
    hub_dir = tmp_path / "runs" / "tuned" / "hub"
    config = json.loads((hub_dir / "config.json").read_text())
    assert config["collab_zoo"]["base_model"] == name and config["num_classes"] == 3
    assert f"Fine-tuned from: `{name}`" in (hub_dir / "README.md").read_text()
