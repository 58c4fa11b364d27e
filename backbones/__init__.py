"""Backbones (installed as ``beit3_plugins.backbones``): the Multiway Transformer, its registered variants,
checkpoint conversion and the parameter-group rules every trainer uses."""
from .multiway import (KVCache, Layout, Modality, MultiwayConfig, MultiwayOutput, MultiwayTransformer,  # noqa: F401
                       Routing, TokenParts, unilm_attention_mask)
from .variants import (Beit3BaseConfig, Beit3GiantConfig, Beit3LargeConfig, Beit3TinyConfig,  # noqa: F401
                       VlmoBaseConfig, VlmoBasePlusConfig, VlmoLargeConfig, VlmoTinyConfig,
                       VlmoTinyPlusConfig, backbone_model_config, build_backbone, describe_backbone, is_vlmo)
from .conversion import (ConvertedCheckpoint, checkpoint_filter_fn, convert_checkpoint,  # noqa: F401
                         detect_source_format, export_state_dict, find_backbone_prefix, load_pretrained,
                         size_hint, split_heads, to_released_state_dict)
from .param_groups import (backbone_at, layer_decay_settings, no_weight_decay_names,  # noqa: F401
                           param_groups_layer_decay)
