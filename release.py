#!/usr/bin/env python3
"""Publish a train.py run folder to the Hugging Face Hub: `python release.py --help`.

    python release.py output/<run> --repo me/dks_resnet20-digits                      # prints URL and commit id
    python release.py output/<run> --repo me/dks_resnet20-digits --write-hub-config digits   # and pin the tag
    python release.py output/<run> --package digits       # maintainers: ship it in collab_zoo/pretrained/
"""
import sys

from collab_zoo.training.release import release_main

if __name__ == "__main__":
    sys.exit(release_main(sys.argv[1:]))
