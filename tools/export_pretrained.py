#!/usr/bin/env python
"""Export a fairseq BEiT-3 pretraining checkpoint to the backbone checkpoint the other plugins load.

    python tools/export_pretrained.py checkpoints/checkpoint_last.pt backbone.pth
    # same as: beit3-plugins export-pretrained checkpoints/checkpoint_last.pt backbone.pth
"""
import sys

from beit3_plugins.pretraining.fairseq_plugin.export import cli_main

if __name__ == "__main__":
    sys.exit(cli_main())
