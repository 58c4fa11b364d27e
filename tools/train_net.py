#!/usr/bin/env python
"""``python tools/train_net.py --config-file detection/cascade_beit3.yaml ...``: detectron2's usual command,
kept for a checkout; the trainer is ``python -m beit3_plugins.detection.train`` (beit3_plugins/detection/train.py)."""
from beit3_plugins.detection.train import cli

if __name__ == "__main__":
    cli()
