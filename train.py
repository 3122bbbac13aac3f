#!/usr/bin/env python3
"""Train any collab_zoo (or timm) model: `python train.py --help`; no arguments runs the built-in main job.

    python train.py                                   # DKS vs. plain ResNet-32 on the built-in digits
    python train.py --model cldl_nin --dataset digits --epochs 20
    accelerate launch --multi_gpu --num_processes 2 train.py --model dks_resnet32 --dataset digits
"""
import sys

from collab_zoo.training.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
