#!/usr/bin/env python3
"""Evaluate models: `python validate.py --model local-dir:output/RUN/hub --dataset digits`; `--help` for more.

Top-1, top-5, each head's top-1 and per-class accuracy; several models in one call; --results-file x.json|x.csv.
"""
import sys

from collab_zoo.training.cli import validate_main

if __name__ == "__main__":
    sys.exit(validate_main(sys.argv[1:]))
