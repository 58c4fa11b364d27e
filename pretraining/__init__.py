"""Masked data modeling pretraining (BEiT-3, VL-BEiT) and VLMo objectives, framework-free.

``masking`` (token and block-wise patch masking), ``vqkd`` (BEiT v2 visual tokenizer), ``objectives``
(heads, losses, stagewise freezing, export), ``data`` (sample builders over text lines, image folders and
caption files). The fairseq adapter is ``beit3_plugins.pretraining.fairseq_plugin``.
"""
from .masking import (IGNORE_INDEX, BlockMaskingConfig, BlockMaskingGenerator, TokenMaskingConfig,  # noqa: F401
                      block_shapes, mask_tokens)
from .objectives import (MIM_TARGETS, STAGES, MaskedDataModel, apply_stage, export_state_dict,  # noqa: F401
                         gather_with_grad, masked_token_loss, patch_pixel_targets, sample_hard_negatives,
                         stage_trainable)
from .vqkd import VQKDConfig, VQKDTokenizer, build_vqkd, checkpoint_filter_fn  # noqa: F401
