"""Incremental decoding with the key/value cache equals a full forward under the captioning mask."""
import pytest
import torch

from beit3_plugins.backbones import Routing
from beit3_plugins.registry import BACKBONES


def unilm_mask(n_img, n_txt):
    """True = blocked: image<->image full, text->image full, text->text causal, image->text blocked."""
    n = n_img + n_txt
    blocked = torch.zeros(n, n, dtype=torch.bool)
    blocked[:n_img, n_img:] = True
    blocked[n_img:, n_img:] = torch.triu(torch.ones(n_txt, n_txt, dtype=torch.bool), diagonal=1)
    return blocked


def model_and_inputs(name, text_len=7):
    torch.manual_seed(0)
    model = BACKBONES.build(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    image = torch.randn(2, 3, 64, 64)
    ids = torch.randint(4, 1000, (2, text_len))
    return model, image, ids


@pytest.mark.parametrize("name", ["beit3_tiny", "vlmo_tiny"])
def test_token_by_token_decoding_matches_the_full_forward(name):
    model, image, ids = model_and_inputs(name)
    n_img, n_txt = 1 + 8 * 8, ids.shape[1]
    with torch.no_grad():
        full = model.forward_fused(image, ids, attn_mask=unilm_mask(n_img, n_txt)).hidden
        first = model.forward_fused(image, ids[:, :1], attn_mask=unilm_mask(n_img, 1), use_cache=True)
        states, past = [first.hidden], first.past_kv
        for t in range(1, n_txt):
            out = model.forward_text_step(ids[:, t:t + 1], past, position_start=t)
            assert out.hidden.shape == (2, 1, 64)
            states.append(out.hidden)
            past = out.past_kv
    steps = torch.cat(states, 1)
    assert (steps[:, :n_img] - full[:, :n_img]).abs().max() < 1e-5   # image states are text-independent
    assert (steps[:, n_img:] - full[:, n_img:]).abs().max() < 1e-5
    # the cache holds every token seen so far, per layer
    assert len(past) == model.cfg.depth
    assert past[0][0].shape == (2, model.cfg.num_heads, n_img + n_txt, 64 // model.cfg.num_heads)


def test_multi_token_steps_with_a_causal_mask_inside_the_step():
    model, image, ids = model_and_inputs("beit3_tiny", text_len=6)
    n_img = 1 + 8 * 8
    with torch.no_grad():
        full = model.forward_fused(image, ids, attn_mask=unilm_mask(n_img, 6)).hidden[:, n_img:]
        first = model.forward_fused(image, ids[:, :2], attn_mask=unilm_mask(n_img, 2), use_cache=True)
        n_past = n_img + 2
        step_mask = torch.zeros(4, n_past + 4, dtype=torch.bool)
        step_mask[:, n_past:] = torch.triu(torch.ones(4, 4, dtype=torch.bool), diagonal=1)
        rest = model.forward_text_step(ids[:, 2:], first.past_kv, position_start=2, attn_mask=step_mask)
    got = torch.cat([first.hidden[:, n_img:], rest.hidden], 1)
    assert (got - full).abs().max() < 1e-5


def test_text_only_decoding_and_padded_cache_entries():
    """Text-only generation (fused=False) matches the causal full forward; cached keys marked as padding
    are ignored."""
    model, _, ids = model_and_inputs("beit3_tiny", text_len=5)
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    with torch.no_grad():
        full = model.forward_text(ids, attn_mask=causal).hidden
        prompt = model.encode(model.embed_text(ids[:, :4]), routing=Routing.text(),
                              attn_mask=causal[:4, :4], use_cache=True)
        step = model.forward_text_step(ids[:, 4:], prompt.past_kv, position_start=4, fused=False)
    assert (step.hidden[:, 0] - full[:, 4]).abs().max() < 1e-5
    # a cached key marked as padding is ignored: changing its value does not change the result
    past = [(k.clone(), v.clone()) for k, v in prompt.past_kv]
    pad = torch.zeros(2, 4, dtype=torch.bool)
    pad[:, 0] = True
    with torch.no_grad():
        a = model.forward_text_step(ids[:, 4:], past, 4, past_padding_mask=pad, fused=False).hidden
        for k, v in past:
            k[:, :, 0] += 3.0
            v[:, :, 0] -= 3.0
        b = model.forward_text_step(ids[:, 4:], past, 4, past_padding_mask=pad, fused=False).hidden
    assert (a - b).abs().max() < 1e-6
    assert (a - step.hidden).abs().max() > 1e-4  # and masking it did change what the token attends to
