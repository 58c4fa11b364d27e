"""Caption generation as the released BEiT-3 fine-tuning code decodes, with the backbone's key/value cache.

Masked-token decoding (BEiT-3 / UniLM): the image and ``[<s>, <mask>]`` are encoded once under the UniLM mask;
each later step feeds ``[last token, <mask>]`` through :meth:`forward_text_step`, reads the next-token
distribution at the ``<mask>`` and keeps only the real token's keys/values (the ``<mask>`` is a query slot).

The search follows the official ``CaptioningHandler.eval_batch`` (microsoft/unilm ``beit3/``) decision for
decision, so captions agree token for token (``tests/support/golden/captioning`` holds its outputs):

* ``max_len`` is the text length the model was trained with (``--num_max_bpe_tokens``, 32 for COCO) and counts
  ``<s>``, the ``<mask>`` slot and ``</s>``: at most ``max_len - 3`` caption tokens. When the next step would
  reach ``max_len`` every candidate closes its beam without its last word.
* Each step looks at the best ``3 * beam_size`` continuations over all beams of an image (only beam 0 is live
  at the start); one ending in ``</s>`` closes a hypothesis, the others refill the beams.
* A closed hypothesis scores ``logprob / (tokens + 2) ** length_penalty`` (the official length counts ``<s>`` and
  the ``<mask>`` slot), so an immediate ``</s>`` is an empty caption of length 2. An image is finished once its
  best closed score beats what the live beams could reach at full length, ``best / (max_len - 1) ** alpha``.
* Nothing is banned: ``<pad>``, ``<mask>`` or unused embedding rows can be produced and are dropped when
  decoding to text, as the official ``skip_special_tokens`` does. ``banned_ids`` / ``vocab_limit`` / ``min_len``
  are opt-in departures (default off).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from beit3_plugins.backbones.multiway import unilm_attention_mask

__all__ = ["generate", "CANDIDATES_PER_BEAM"]

#: continuations examined per beam and step (``TOPN_PER_BEAM`` of the official search)
CANDIDATES_PER_BEAM = 3


def _drop_last(past_kv):
    return [(k[:, :, :-1], v[:, :, :-1]) for k, v in past_kv]


def _reorder(past_kv, index: Tensor):
    return [(k.index_select(0, index), v.index_select(0, index)) for k, v in past_kv]


class _BestHypothesis:
    """The best closed hypothesis of one image (the official search keeps one)."""

    def __init__(self, max_len: int, length_penalty: float) -> None:
        self.full_length = max_len - 1
        self.alpha = length_penalty
        self.score: Optional[float] = None
        self.tokens: List[int] = []

    def add(self, tokens: List[int], logprob: float) -> None:
        score = logprob / (len(tokens) + 2) ** self.alpha
        if self.score is None or score > self.score:
            self.score, self.tokens = score, tokens

    def is_done(self, best_live_logprob: float) -> bool:
        return self.score is not None and self.score >= best_live_logprob / self.full_length ** self.alpha


@torch.no_grad()
def generate(model, image: Tensor, bos_id: int, eos_id: int, mask_id: int, max_len: int, beam_size: int = 3,
             length_penalty: float = 0.6, pad_id: int = 1, banned_ids: Tuple[int, ...] = (),
             vocab_limit: Optional[int] = None, min_len: int = 0) -> List[List[int]]:
    """Caption token ids (without ``<s>``/``</s>``) of each image; ``model`` has ``backbone`` and ``mlm_head``.

    ``max_len`` is the official text length (see the module docstring); ``pad_id`` only fills finished beams.
    """
    if max_len < 3:
        raise ValueError(f"max_len counts <s>, the <mask> slot and </s>; it must be at least 3, got {max_len}")
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    backbone, head = model.backbone, model.mlm_head
    bsz, device, k = image.shape[0], image.device, beam_size
    vocab = head.out_features

    def next_logprobs(hidden: Tensor, generated: int) -> Tensor:
        logp = torch.log_softmax(head(hidden).float(), dim=-1)
        if banned_ids:
            logp[:, list(banned_ids)] = -float("inf")
        if vocab_limit is not None:
            logp[:, vocab_limit:] = -float("inf")
        if generated < min_len:
            logp[:, eos_id] = -float("inf")
        return logp

    # first step: image + [<s>, <mask>], encoded once per image, then copied to its beams
    ids = torch.tensor([[bos_id, mask_id]], device=device).expand(bsz, 2)
    num_vision = backbone.embed_image(image[:1])[0].shape[1]
    out = backbone.forward_fused(image, ids, attn_mask=unilm_attention_mask(num_vision, 2, device), use_cache=True)
    rows = torch.arange(bsz, device=device).repeat_interleave(k)
    past = _reorder(_drop_last(out.past_kv), rows)
    logp = next_logprobs(out.hidden[:, -1], 0).index_select(0, rows)        # (B*k, V)

    beam_scores = torch.zeros(bsz, k, device=device)
    beam_scores[:, 1:] = -1e9                                                # only beam 0 is live at first
    beam_scores = beam_scores.view(-1)
    tokens: List[List[int]] = [[] for _ in range(bsz * k)]                  # caption so far of each beam
    best = [_BestHypothesis(max_len, length_penalty) for _ in range(bsz)]
    done = [False] * bsz
    step_mask = torch.tensor([[False, True], [False, False]], device=device)  # a token may not see <mask>
    cur_len = 2                                                              # <s> + the <mask> slot
    while True:
        last_step = cur_len + 1 == max_len
        cand = (logp + beam_scores[:, None]).view(bsz, k * vocab)
        top_scores, top_idx = cand.topk(CANDIDATES_PER_BEAM * k, dim=1, largest=True, sorted=True)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        next_beams: List[Tuple[float, int, int]] = []
        for b in range(bsz):
            done[b] = done[b] or best[b].is_done(max(top_scores[b]))
            if done[b]:
                next_beams += [(0.0, pad_id, 0)] * k
                continue
            refill: List[Tuple[float, int, int]] = []
            for score, idx in zip(top_scores[b], top_idx[b]):
                src, word = b * k + idx // vocab, idx % vocab
                if word == eos_id or last_step:
                    best[b].add(list(tokens[src]), score)
                else:
                    refill.append((score, word, src))
                if len(refill) == k:
                    break
            next_beams += refill or [(0.0, pad_id, 0)] * k
        if last_step or all(done):
            break
        beam_scores = torch.tensor([s for s, _, _ in next_beams], device=device)
        words = torch.tensor([w for _, w, _ in next_beams], device=device)
        index = torch.tensor([r for _, _, r in next_beams], device=device)
        tokens = [tokens[r] + [w] for _, w, r in next_beams]
        past = _reorder(past, index)
        feed = torch.stack([words, torch.full_like(words, mask_id)], 1)
        blocked = torch.cat([torch.zeros(2, past[0][0].shape[2], dtype=torch.bool, device=device), step_mask], 1)
        out = backbone.forward_text_step(feed, past, position_start=cur_len - 1, attn_mask=blocked)
        past = _drop_last(out.past_kv)
        cur_len += 1
        logp = next_logprobs(out.hidden[:, -1], cur_len - 2)
    return [hyp.tokens for hyp in best]
