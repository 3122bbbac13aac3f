"""What each method costs, as ratios against its plain backbone (or timm), measured inside one run.

    python benchmarks/cost.py [--quick]        # writes benchmarks/results/cost.json

- train step: time, training memory (parameters + gradients + saved activations) and FLOPs of every
  collaborative model over its plain backbone, same batch;
- eval: time over the plain backbone (an exported DKS model must be 1.00x);
- DCL: params and forward/train-step time of dcl_alexnet over alexnet_caffe (the paper: 16.82 % fewer
  parameters, 6.13 % less training time);
- complementary: eval of complementary_resnet50_x4 over four separate resnet50 forwards;
- loading: create_model(pretrained=True) from a warm Hub cache over timm's own load of the same weights;
- train.py throughput over a bare accelerate loop on the same model and data.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Tuple

import torch

from common import (ROOT, forward_flops, paired_ratio, train_step_flops, training_memory_bytes,  # noqa: E402
                    write_result)

import collab_zoo  # noqa: E402
import timm  # noqa: E402
from collab_zoo.contract import (complete_round_of, heads_of, num_rounds_of,  # noqa: E402
                                 training_round_of)

# (method model, plain baseline, input size, kwargs for both): every registered family.
PAIRS: List[Tuple[str, str, int, Dict[str, Any]]] = [
    ("dks_resnet18", "resnet18", 224, {}),
    ("dks_resnet32", "cifar_resnet32", 32, {}),
    ("dks_wrn28_4", "wrn28_4", 32, {}),
    ("dks_densenet40_k12", "densenet40_k12", 32, {}),
    ("dks_mobilenet", "mobilenet_cifar", 32, {}),
    ("cldl_nin", "nin", 32, {}),
    ("cldl_vgg11", "vgg11", 224, {}),
    ("cldl_googlenet", "googlenet", 224, {}),
    ("dcl_lenet", "lenet", 28, {}),
    ("dcl_lenet_cifar", "lenet_cifar", 32, {}),
    ("dcl_bignet", "bignet", 24, {}),
    ("dcl_wrn16", "wrn16_4", 32, {}),
    ("dcl_alexnet", "alexnet_caffe", 227, {}),
    ("complementary_resnet56_x4", "cifar_resnet56", 32, {}),
]


def _inputs(model, size: int, batch: int):
    chans = model.pretrained_cfg["input_size"][0]
    return torch.randn(batch, chans, size, size), torch.randint(0, model.num_classes, (batch,))


def _step(model, images, target, optimizer):
    """One optimizer step as train.py takes it: on the first round's module with the round's loss (the
    whole model for most methods, one member for boosting)."""
    round_ = training_round_of(model, 0)
    module, loss_fn = round_.module, round_.loss

    def run():
        module.train()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(module(images), target)[0]
        loss.backward()
        optimizer.step()
    return run


def _round_params(model):
    return training_round_of(model, 0).module.parameters()


def _eval(model, images):
    def run():
        model.eval()
        with torch.no_grad():
            model(images)
    return run


def _loss_only(model):
    fn = training_round_of(model, 0).loss
    return lambda outputs, target: fn(outputs, target)[0]


def _round_module(model):
    return training_round_of(model, 0).module


def _complete_every_round(model, images, target) -> None:
    """Eval cost is that of the finished model: a boosting ensemble with all its rounds, so every member runs.
    Rounds are completed through the contract with held-out predictions (here: this batch)."""
    for index in range(num_rounds_of(model)):
        round_ = training_round_of(model, index)
        round_.module.eval()
        with torch.no_grad():
            heads = heads_of(round_.module(images))
        complete_round_of(model, index, heads, target)


def train_and_eval_pairs(quick: bool) -> List[Dict[str, Any]]:
    rows = []
    for method, plain, size, kwargs in PAIRS:
        if quick and size > 64:
            size = 64 if "alexnet" not in plain else 227
        # Small inputs get bigger batches, so a step lasts long enough for the timer to resolve it.
        batch = (8 if quick else 16) if size > 64 else (16 if quick else 64)
        torch.manual_seed(0)
        m = collab_zoo.create_model(method, num_classes=100, **kwargs)
        b = collab_zoo.create_model(plain, num_classes=100, **kwargs)
        images, target = _inputs(b, size, batch)
        _complete_every_round(m, images, target)
        row: Dict[str, Any] = dict(method=method, baseline=plain, input=size, batch=batch,
                                   params=sum(p.numel() for p in m.parameters()),
                                   baseline_params=sum(p.numel() for p in b.parameters()))
        row["train_flops_ratio"] = round(train_step_flops(_round_module(m), images, target, _loss_only(m)) /
                                         train_step_flops(b, images, target, _loss_only(b)), 4)
        row["eval_flops_ratio"] = round(forward_flops(m, images) / forward_flops(b, images), 4)
        batch_of = lambda images=images, target=target: (images, target)  # noqa: E731
        mem_m = training_memory_bytes(_round_module(m), batch_of, _loss_only(m))
        mem_b = training_memory_bytes(b, batch_of, _loss_only(b))
        row["train_memory_ratio"] = round(mem_m["total"] / mem_b["total"], 4)
        row["train_memory_bytes"], row["baseline_train_memory_bytes"] = mem_m["total"], mem_b["total"]
        opt_m = torch.optim.SGD(_round_params(m), lr=1e-3, momentum=0.9)
        opt_b = torch.optim.SGD(b.parameters(), lr=1e-3, momentum=0.9)
        repeats = 3 if quick else (5 if size > 64 else 9)
        row["train_step_time"] = paired_ratio(_step(b, images, target, opt_b), _step(m, images, target, opt_m),
                                              repeats=repeats, warmup=1)
        row["eval_time"] = paired_ratio(_eval(b, images), _eval(m, images), repeats=repeats, warmup=1)
        if hasattr(m, "export"):
            plain_copy = m.export()
            row["exported_eval_time"] = paired_ratio(_eval(b, images), _eval(plain_copy, images),
                                                     repeats=repeats, warmup=1)
        print(f"{method:28s} train x{row['train_step_time']['ratio']:.2f} (FLOPs x{row['train_flops_ratio']:.2f}, "
              f"memory x{row['train_memory_ratio']:.2f})  eval x{row['eval_time']['ratio']:.2f}"
              + (f"  exported eval x{row['exported_eval_time']['ratio']:.2f}" if "exported_eval_time" in row else ""),
              flush=True)
        rows.append(row)
        del m, b
    return rows


def dcl_alexnet(quick: bool) -> Dict[str, Any]:
    torch.manual_seed(0)
    dcl = collab_zoo.create_model("dcl_alexnet")
    base = collab_zoo.create_model("alexnet_caffe")
    batch = 4 if quick else 16
    images, target = torch.randn(batch, 3, 227, 227), torch.randint(0, 1000, (batch,))
    weights = lambda m: sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight"))  # noqa: E731
    out = dict(batch=batch, params=sum(p.numel() for p in dcl.parameters()),
               baseline_params=sum(p.numel() for p in base.parameters()),
               weights_removed=weights(base) - weights(dcl))
    out["params_ratio"] = round(out["params"] / out["baseline_params"], 4)
    out["forward_time"] = paired_ratio(_eval(base, images), _eval(dcl, images), repeats=3 if quick else 7)
    opt_d = torch.optim.SGD(dcl.parameters(), lr=1e-3, momentum=0.9)
    opt_b = torch.optim.SGD(base.parameters(), lr=1e-3, momentum=0.9)
    out["train_step_time"] = paired_ratio(_step(base, images, target, opt_b), _step(dcl, images, target, opt_d),
                                          repeats=3 if quick else 7)
    out["paper"] = dict(params_ratio=51.86 / 62.35, train_time_ratio=5.67 / 6.04)
    print(f"dcl_alexnet: params x{out['params_ratio']:.4f}, forward x{out['forward_time']['ratio']:.3f}, "
          f"train step x{out['train_step_time']['ratio']:.3f} (paper: x{out['paper']['params_ratio']:.4f}, "
          f"x{out['paper']['train_time_ratio']:.3f})", flush=True)
    return out


def complementary_ensemble(quick: bool) -> Dict[str, Any]:
    """complementary_resnet50_x4 in eval against four separate resnet50 forwards of the same weights."""
    torch.manual_seed(0)
    ensemble = collab_zoo.create_model("complementary_resnet50_x4")
    for t in range(4):  # as if all four rounds were complete
        ensemble.gammas[t] = 0.3 + 0.1 * t
    ensemble.rounds_completed.fill_(4)
    singles = []
    for member in ensemble.members:
        net = timm.create_model("resnet50")
        net.load_state_dict(member.state_dict())
        singles.append(net.eval())
    size = 128 if quick else 224
    images = torch.randn(4 if quick else 8, 3, size, size)

    def four_forwards():
        with torch.no_grad():
            for net in singles:
                net(images)
    out = dict(input=size, batch=images.shape[0])
    out["eval_time"] = paired_ratio(four_forwards, _eval(ensemble, images), repeats=3 if quick else 7)
    print(f"complementary_resnet50_x4 eval over 4 x resnet50: x{out['eval_time']['ratio']:.3f}", flush=True)
    return out


def loading(quick: bool) -> Dict[str, Any]:
    """create_model(pretrained=True) from a warm Hub cache (sha256 checked) over timm's load of the same file."""
    import subprocess

    code = r"""
import json, os, sys, tempfile, socket, time
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
os.environ.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_CACHE=tempfile.mkdtemp(), HF_TOKEN="hf_bench",
                  HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, os.path.join(sys.argv[1], "benchmarks"))
from collab_zoo.loopback_hub import LoopbackHub
hub = LoopbackHub(port=port).start()
import torch, timm, collab_zoo
from common import paired_ratio
torch.manual_seed(0)
model = collab_zoo.create_model("dks_resnet50")
info = collab_zoo.push_to_hub(model, "bench/dks_resnet50")
folder = collab_zoo.save_for_hub(model, tempfile.mkdtemp())
sha = json.load(open(folder / "config.json"))["collab_zoo"]["sha256"]
config = json.load(open(os.path.join(sys.argv[1], "hub_configs", "dks_resnet50.in1k.json")))
config.update(model="dks_resnet50.bench", hf_hub_id="bench/dks_resnet50", revision=info.oid, sha256=sha)
collab_zoo.register_hub_config(config)
from timm.models._hub import load_state_dict_from_hf
def zoo():
    return collab_zoo.create_model("dks_resnet50.bench", pretrained=True)
def plain():
    # The same model built the same way, its weights fetched and loaded by timm's own Hub loader instead.
    model = collab_zoo.create_model("dks_resnet50")
    state = load_state_dict_from_hf(f"bench/dks_resnet50@{info.oid}", "model.safetensors")
    model.load_state_dict({f"backbone.{k}" if not k.startswith("backbone.") else k: v for k, v in state.items()},
                          strict=False)
    return model
zoo()
result = paired_ratio(plain, zoo, repeats=int(sys.argv[2]), warmup=1)
from collab_zoo.weights import sha256_of
path = next(p for p in __import__("pathlib").Path(os.environ["HF_HUB_CACHE"]).rglob("model.safetensors"))
start = time.perf_counter(); sha256_of(path); result["sha256_seconds"] = round(time.perf_counter() - start, 4)
result["file_mb"] = round(path.stat().st_size / 1e6, 1)
print(json.dumps(result))
"""
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), "3" if quick else "7"], capture_output=True,
                         text=True, timeout=1800, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"create_model(pretrained=True) warm cache over timm's load: x{result['ratio']:.3f}", flush=True)
    return dict(note="both build dks_resnet50 and read the same warm-cache safetensors; the zoo's path checks the "
                     "file's sha256 and header and loads strictly with its key checks, timm's "
                     "load_state_dict_from_hf just reads it", time=result)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller inputs and fewer repeats")
    parser.add_argument("--only", nargs="*", default=None,
                        help="pairs, dcl_alexnet, complementary, loading (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    parts = args.only or ["pairs", "dcl_alexnet", "complementary", "loading"]
    result: Dict[str, Any] = dict(quick=args.quick)
    if "pairs" in parts:
        result["pairs"] = train_and_eval_pairs(args.quick)
    if "dcl_alexnet" in parts:
        result["dcl_alexnet"] = dcl_alexnet(args.quick)
    if "complementary" in parts:
        result["complementary_resnet50_x4"] = complementary_ensemble(args.quick)
    if "loading" in parts:
        result["pretrained_loading"] = loading(args.quick)
    path = write_result("cost" if not args.only else "cost_" + "_".join(parts), result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
