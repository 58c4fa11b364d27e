"""The pretraining layer's child of the root ``TOKENIZERS`` registry: the BEiT v2 VQ-KD visual tokenizers.

``vqkd_*`` register here, so ``TOKENIZERS.build("vqkd_base")`` on the root works in a fresh process whatever
was imported before (the root finds this child through the ``beit3_plugins`` entry point in ``setup.py``).
"""
from beit3_plugins.registry import TOKENIZERS as ROOT_TOKENIZERS
from beit3_plugins.registry import Registry

TOKENIZERS = Registry("tokenizer", parent=ROOT_TOKENIZERS, scope="pretraining",
                      locations=["beit3_plugins.pretraining.vqkd"])

__all__ = ["TOKENIZERS"]
