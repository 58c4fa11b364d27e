"""Backbones (installed as ``beit3_plugins.backbones``): the Multiway Transformer and its registered variants."""
from .multiway import (KVCache, Layout, Modality, MultiwayConfig, MultiwayOutput, MultiwayTransformer,  # noqa: F401
                       Routing)
from .vlmo import VlmoBaseConfig, VlmoLargeConfig, VlmoTinyConfig  # noqa: F401 - registers vlmo_*
from .beit3 import build_backbone, checkpoint_filter_fn, split_heads, to_released_state_dict  # noqa: F401
