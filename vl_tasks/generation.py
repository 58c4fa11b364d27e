"""Caption generation with the backbone's key/value cache (greedy and beam search).

Masked-token decoding as BEiT-3 / UniLM: the image and ``<s>`` are encoded once under the UniLM mask;
each step feeds ``[last token, <mask>]`` through :meth:`forward_text_step`, reads the next-token logits
at the ``<mask>`` and keeps only the real token's keys/values in the cache (the ``<mask>`` is a query
slot, never context).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from beit3_plugins.backbones import unilm_attention_mask as unilm_mask  # the backbone owns its mask rules

__all__ = ["unilm_mask", "generate"]


def _drop_last(past_kv):
    return [(k[:, :, :-1], v[:, :, :-1]) for k, v in past_kv]


def _reorder(past_kv, index: Tensor):
    return [(k.index_select(0, index), v.index_select(0, index)) for k, v in past_kv]


@torch.no_grad()
def generate(model, image: Tensor, bos_id: int, eos_id: int, mask_id: int, max_len: int, beam_size: int = 1,
             length_penalty: float = 0.0, min_len: int = 1, banned_ids: Tuple[int, ...] = (),
             vocab_limit: Optional[int] = None) -> List[List[int]]:
    """Token ids (without ``<s>``/``</s>``) of one caption per image.

    ``model`` has ``backbone`` and ``mlm_head``. ``max_len`` counts generated tokens. ``length_penalty``
    alpha scores a finished beam by ``logprob / len ** alpha``. ``vocab_limit`` bans ids the tokenizer does
    not have (the embedding table may have more rows, e.g. 64010 rows for 64002 ids).
    """
    backbone, head = model.backbone, model.mlm_head
    bsz, device = image.shape[0], image.device
    vocab = head.out_features

    def next_logprobs(hidden: Tensor, step: int) -> Tensor:
        logp = torch.log_softmax(head(hidden).float(), dim=-1)
        if banned_ids:
            logp[:, list(banned_ids)] = -float("inf")
        logp[:, mask_id] = -float("inf")
        if vocab_limit is not None:
            logp[:, vocab_limit:] = -float("inf")
        if step < min_len:
            logp[:, eos_id] = -float("inf")
        return logp

    # prefix: image + [<s>, <mask>]
    ids = torch.tensor([[bos_id, mask_id]], device=device).expand(bsz, 2)
    num_vision = backbone.embed_image(image[:1])[0].shape[1]
    out = backbone.forward_fused(image, ids, attn_mask=unilm_mask(num_vision, 2, device), use_cache=True)
    past = _drop_last(out.past_kv)
    logp = next_logprobs(out.hidden[:, -1], 0)                         # (B, V)
    step_mask = torch.tensor([[False, True], [False, False]], device=device)  # token may not see <mask>

    if beam_size <= 1:
        tokens = logp.argmax(-1, keepdim=True)                          # (B, 1)
        done = tokens[:, 0] == eos_id
        for step in range(1, max_len):
            if bool(done.all()):
                break
            feed = torch.cat([tokens[:, -1:], torch.full_like(tokens[:, -1:], mask_id)], 1)
            blocked = torch.cat([torch.zeros(2, past[0][0].shape[2], dtype=torch.bool, device=device), step_mask], 1)
            out = backbone.forward_text_step(feed, past, position_start=step, attn_mask=blocked)
            past = _drop_last(out.past_kv)
            nxt = next_logprobs(out.hidden[:, -1], step).argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            tokens = torch.cat([tokens, nxt[:, None]], 1)
            done |= nxt == eos_id
        return [_strip(row, eos_id) for row in tokens.tolist()]

    # beam search: (B * beam) hypotheses
    k = beam_size
    scores, first = logp.topk(k, dim=-1)                                 # (B, k)
    tokens = first.reshape(bsz * k, 1)
    scores = scores.reshape(bsz * k)
    past = _reorder(past, torch.arange(bsz, device=device).repeat_interleave(k))
    finished: List[List[Tuple[float, List[int]]]] = [[] for _ in range(bsz)]
    alive = torch.ones(bsz * k, dtype=torch.bool, device=device)

    def finish(row: int, seq: List[int], score: float) -> None:
        length = max(1, len(seq))
        finished[row // k].append((score / (length ** length_penalty), seq))

    for row in range(bsz * k):
        if tokens[row, 0].item() == eos_id:
            finish(row, [], scores[row].item())
            alive[row] = False
            scores[row] = -float("inf")
    for step in range(1, max_len):
        if not bool(alive.any()):
            break
        feed = torch.cat([tokens[:, -1:], torch.full_like(tokens[:, -1:], mask_id)], 1)
        blocked = torch.cat([torch.zeros(2, past[0][0].shape[2], dtype=torch.bool, device=device), step_mask], 1)
        out = backbone.forward_text_step(feed, past, position_start=step, attn_mask=blocked)
        past = _drop_last(out.past_kv)
        logp = next_logprobs(out.hidden[:, -1], step)                   # (B*k, V)
        cand = (scores[:, None] + logp).view(bsz, k * vocab)
        top_scores, top_idx = cand.topk(2 * k, dim=-1)                  # room for beams that finish
        new_rows, new_tokens, new_scores = [], [], []
        for b in range(bsz):
            kept = 0
            for s, idx in zip(top_scores[b].tolist(), top_idx[b].tolist()):
                if s == -float("inf"):
                    break
                src = b * k + idx // vocab
                tok = idx % vocab
                if tok == eos_id:
                    finish(src, tokens[src].tolist(), s)
                    continue
                new_rows.append(src)
                new_tokens.append(tok)
                new_scores.append(s)
                kept += 1
                if kept == k:
                    break
            while kept < k:  # pad dead beams
                new_rows.append(b * k)
                new_tokens.append(eos_id)
                new_scores.append(-float("inf"))
                kept += 1
        index = torch.tensor(new_rows, device=device)
        tokens = torch.cat([tokens.index_select(0, index), torch.tensor(new_tokens, device=device)[:, None]], 1)
        scores = torch.tensor(new_scores, device=device)
        alive = torch.isfinite(scores)
        past = _reorder(past, index)
        # stop a sentence once its best finished beam beats every alive beam (scores only fall)
        for b in range(bsz):
            if finished[b] and length_penalty == 0.0:
                best = max(f[0] for f in finished[b])
                if bool((scores[b * k:(b + 1) * k] <= best).all()):
                    scores[b * k:(b + 1) * k] = -float("inf")
                    alive[b * k:(b + 1) * k] = False
    results = []
    for b in range(bsz):
        if not finished[b]:  # ran out of length: take the best alive beam
            for row in range(b * k, (b + 1) * k):
                if torch.isfinite(scores[row]):
                    finish(row, tokens[row].tolist(), scores[row].item())
        if not finished[b]:
            finished[b].append((0.0, tokens[b * k].tolist()))
        results.append(_strip(max(finished[b], key=lambda f: f[0])[1], eos_id))
    return results


def _strip(seq: List[int], eos_id: int) -> List[int]:
    return seq[: seq.index(eos_id)] if eos_id in seq else seq
