#!/usr/bin/env python3
"""Evaluate models with timm's command line: `python validate.py --model local-dir:output/RUN/hub --pretrained`.

Top-1, top-5, loss, each head's top-1 and per-class accuracy; several models in one call; a run's checkpoints
(`--checkpoint 'output/RUN/checkpoints/epoch-*'`, `--use-ema`); --results-file x.json|x.csv. `--help` for more.
"""
import sys

from collab_zoo.training.cli import validate_main

if __name__ == "__main__":
    sys.exit(validate_main(sys.argv[1:]))
