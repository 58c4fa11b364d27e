"""Caption generation: greedy decoding with and without the key/value cache (same tokens, timed).
"""
from __future__ import annotations


import torch

from beit3_plugins.backbones import unilm_attention_mask
from bench.common import interleaved_times, median
from bench.settings import Setting, Row, MismatchError


def generate(model, image, steps: int, use_cache: bool, bos: int = 0) -> torch.Tensor:
    """Greedy caption decoding (tied word-embedding head). With the cache, image and earlier tokens are
    encoded once; without it, the whole sequence is re-encoded under the UniLM mask at every step."""
    ids = torch.full((image.shape[0], 1), bos, dtype=torch.long, device=image.device)
    head = model.text_embed.weight
    if use_cache:
        out = model.forward_fused(image, ids, attn_mask=unilm_attention_mask(model.cfg.grid_size ** 2 + 1, 1, image.device),
                                  use_cache=True)
        past = out.past_kv
        for t in range(1, steps + 1):
            nxt = (out.hidden[:, -1] @ head.T).argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            if t == steps:
                break
            out = model.forward_text_step(nxt, past, position_start=t)
            past = out.past_kv
        return ids
    n_img = model.cfg.grid_size ** 2 + 1
    for t in range(1, steps + 1):
        out = model.forward_fused(image, ids, attn_mask=unilm_attention_mask(n_img, ids.shape[1], image.device))
        nxt = (out.hidden[:, -1] @ head.T).argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return ids


def generation_case(models, s: Setting) -> Row:
    ours = models.ours.eval()
    g = torch.Generator().manual_seed(0)
    image = torch.randn(s.gen_batch, 3, s.img_size, s.img_size, generator=g)
    with torch.no_grad():
        fns = {"ours+kv-cache": lambda: generate(ours, image, s.gen_tokens, True),
               "ours recompute": lambda: generate(ours, image, s.gen_tokens, False)}
        same = torch.equal(fns["ours+kv-cache"](), fns["ours recompute"]())
        if not same:
            raise MismatchError("generation with and without the key/value cache produced different tokens")
        times = interleaved_times(fns, repeats=max(2, s.repeats // 2), warmup=0)
    return Row(f"caption generation, {s.gen_tokens} tokens", s.gen_batch, "fp32",
               {k: median(v) for k, v in times.items()}, {"tokens equal": 0.0})
