"""Dual-encoder retrieval evaluation whose memory does not grow with N x M (chunked scoring).

The straightforward evaluation materialises the whole (images x texts) similarity matrix and sorts every
row and column (``beit3_plugins.vl_tasks.metrics.recall_at_k``): O(N*M) memory. Here the ranks are
computed one block of rows at a time, and only the rank of each ground truth is kept, so memory is
O(chunk * max(N, M)). Ties are broken exactly like the stable sort of the full version (the earlier index
ranks first), so both give identical recalls.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import Tensor


def _ranks_of_targets(scores: Tensor, targets: Tensor) -> Tensor:
    """Position of ``targets[r]`` in row r of ``scores`` sorted descending (stable)."""
    target_score = scores.gather(1, targets[:, None])
    columns = torch.arange(scores.shape[1], device=scores.device)
    better = (scores > target_score).sum(1)
    tied_before = ((scores == target_score) & (columns[None, :] < targets[:, None])).sum(1)
    return better + tied_before


@torch.no_grad()
def chunked_recall_at_k(image_emb: Tensor, text_emb: Tensor, text_to_image: Sequence[int],
                        ks: Sequence[int] = (1, 5, 10), chunk: int = 1024) -> Dict[str, float]:
    """R@K (in %) in both directions from (N, D) image and (M, D) text embeddings."""
    t2i = torch.as_tensor(text_to_image, dtype=torch.long, device=image_emb.device)
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    if n_img == 0 or n_txt == 0:
        raise ValueError("recall@K of an empty set of images or texts")
    if t2i.shape != (n_txt,):
        raise ValueError(f"text_to_image must have one entry per text ({n_txt}), got {tuple(t2i.shape)}")
    # text -> image: rank of each text's image among all images
    t2i_rank = torch.empty(n_txt, dtype=torch.long)
    for start in range(0, n_txt, chunk):
        scores = text_emb[start:start + chunk] @ image_emb.T
        t2i_rank[start:start + chunk] = _ranks_of_targets(scores, t2i[start:start + chunk]).cpu()
    # image -> text: best rank over the image's texts; texts are grouped by image to score only their rows
    i2t_rank = torch.full((n_img,), n_txt, dtype=torch.long)
    order = torch.argsort(t2i, stable=True)
    for start in range(0, n_txt, chunk):
        texts = order[start:start + chunk]
        images = t2i[texts]
        scores = image_emb[images] @ text_emb.T
        ranks = _ranks_of_targets(scores, texts).cpu()
        i2t_rank.scatter_reduce_(0, images.cpu(), ranks, reduce="amin")
    out: Dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * float((i2t_rank < k).float().mean())
        out[f"t2i_r{k}"] = 100.0 * float((t2i_rank < k).float().mean())
    out["r_mean"] = sum(out[f"i2t_r{k}"] + out[f"t2i_r{k}"] for k in ks) / (2 * len(ks))
    return out
