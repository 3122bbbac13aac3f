#!/usr/bin/env python3
"""Train any collab_zoo (or timm) model with timm's command line: `python train.py --help`.

    python train.py                                   # the main job: DKS vs. plain ResNet-20, built-in data
    python train.py --model cldl_nin --dataset digits --epochs 20
    python train.py --model resnet18 --data-dir data --input-size 3 64 64 --aa rand-m9-mstd0.5 -c cfg.yaml
    python train.py --model hf-hub:org/repo --pretrained --num-classes 3 --data-dir data   # fine-tune
    accelerate launch --multi_gpu --num_processes 2 train.py --model dks_resnet32 --dataset digits
"""
import sys

from collab_zoo.training.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
