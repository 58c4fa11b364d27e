"""Masking for masked data modeling: BERT-style token masking and BEiT block-wise patch masking.

Sources: BERT (Devlin et al., 2019) for 15% / 80-10-10 token corruption; BEiT (Bao et al., 2021) for
block-wise masking; BEiT v2 (Peng et al., 2022) for hitting the exact number of masked patches; BEiT-3
(Wang et al., 2022) for the ratios (40% of patches, 15% of text tokens, 50% of text in image-text pairs).
Every function takes an explicit ``numpy.random.Generator`` so a data loader can seed it per sample
(epoch, index) and a resumed run reproduces the same masks.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["BlockMaskingConfig", "BlockMaskingGenerator", "TokenMaskingConfig", "mask_tokens", "IGNORE_INDEX",
           "block_shapes", "word_start_table"]

IGNORE_INDEX = -100  # target of tokens that are not predicted (torch's cross-entropy default)


@dataclasses.dataclass
class BlockMaskingConfig:
    """Block-wise masking: rectangles of >= ``min_block`` patches, aspect ratio in [min_aspect, 1/min_aspect]."""

    mask_ratio: float = 0.4
    min_block: int = 16          # BEiT's min_num_patches (for a 14x14 grid; use ~4 on tiny 8x8 grids)
    max_block: Optional[int] = None
    min_aspect: float = 0.3
    exact: bool = True           # BEiT v2: top up with random patches until exactly round(ratio * N)

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.min_block < 1:
            raise ValueError(f"min_block must be >= 1, got {self.min_block}")
        if not 0.0 < self.min_aspect <= 1.0:
            raise ValueError(f"min_aspect must be in (0, 1], got {self.min_aspect}")


class BlockMaskingGenerator:
    """Boolean (h, w) masks built from random rectangles (BEiT's block-wise masking).

    Rectangles are drawn with a target area in [min_block, remaining budget] and a log-uniform aspect
    ratio; a rectangle only counts the patches it newly covers. With ``exact`` the mask is topped up
    with random single patches (or trimmed) to exactly ``round(mask_ratio * h * w)`` patches.
    """

    def __init__(self, grid: Tuple[int, int], cfg: BlockMaskingConfig = BlockMaskingConfig()) -> None:
        self.height, self.width = int(grid[0]), int(grid[1])
        if self.height < 1 or self.width < 1:
            raise ValueError(f"patch grid must be positive, got {grid}")
        self.cfg = cfg
        self.num_patches = self.height * self.width
        self.num_masked = int(round(cfg.mask_ratio * self.num_patches))
        self.max_block = cfg.max_block or self.num_masked
        self.log_aspect = (math.log(cfg.min_aspect), math.log(1.0 / cfg.min_aspect))

    def __repr__(self) -> str:
        return (f"BlockMaskingGenerator(grid=({self.height}, {self.width}), masked={self.num_masked}, "
                f"min_block={self.cfg.min_block})")

    def _add_block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        for _ in range(10):
            area = rng.uniform(self.cfg.min_block, max(self.cfg.min_block, budget))
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 1 <= h < self.height and 1 <= w < self.width:
                top = int(rng.integers(0, self.height - h + 1))
                left = int(rng.integers(0, self.width - w + 1))
                region = mask[top: top + h, left: left + w]
                new = h * w - int(region.sum())
                if 0 < new <= budget:
                    region[:] = True
                    return new
        return 0

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < self.num_masked:
            budget = min(self.num_masked - count, self.max_block)
            added = self._add_block(mask, budget, rng)
            if added == 0:
                break
            count += added
        if self.cfg.exact:
            flat = mask.reshape(-1)
            if count < self.num_masked:
                free = np.flatnonzero(~flat)
                flat[rng.choice(free, self.num_masked - count, replace=False)] = True
            elif count > self.num_masked:  # cannot happen with the budget check; kept as a guard
                taken = np.flatnonzero(flat)
                flat[rng.choice(taken, count - self.num_masked, replace=False)] = False
        return mask


@dataclasses.dataclass
class TokenMaskingConfig:
    """BERT corruption: choose ``mask_prob`` of the real tokens; of those 80% <mask>, 10% random, 10% kept.

    ``whole_word`` (VLMo; BERT's whole-word masking) chooses whole words: every piece of a chosen word is
    predicted, none of an unchosen one. With sentencepiece a word starts at a piece beginning with "▁"
    (:func:`word_start_table`)."""

    mask_prob: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    whole_word: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.mask_token_prob < 0 or self.random_token_prob < 0 or \
                self.mask_token_prob + self.random_token_prob > 1.0 + 1e-9:
            raise ValueError("mask_token_prob + random_token_prob must be within [0, 1]")


SENTENCEPIECE_WORD_START = "\u2581"  # "▁": sentencepiece marks the piece that begins a word


def word_start_table(tokenizer) -> np.ndarray:
    """Bool per token id: True where the id begins a word (its sentencepiece piece starts with "▁") or is
    a special id. ``tokenizer`` needs ``vocab_size``, ``special_ids`` and ``id_to_piece``
    (:class:`beit3_plugins.tokenizer.Beit3Tokenizer`)."""
    table = np.ones(tokenizer.vocab_size, dtype=bool)
    specials = set(tokenizer.special_ids.values())
    for token_id in range(tokenizer.vocab_size):
        if token_id not in specials:
            table[token_id] = tokenizer.id_to_piece(token_id).startswith(SENTENCEPIECE_WORD_START)
    return table


def _choose_whole_words(candidates: np.ndarray, word_starts: np.ndarray, n: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Positions of whole words covering about ``n`` of the ``candidates`` (BERT's whole-word masking:
    words in random order, a word that would overshoot ``n`` is skipped; at least one word)."""
    words, current = [], []
    for pos in candidates:
        if current and (word_starts[pos] or pos != current[-1] + 1):
            words.append(current)
            current = []
        current.append(int(pos))
    words.append(current)
    chosen, count = [], 0
    for w in rng.permutation(len(words)):
        if count >= n:
            break
        if count + len(words[w]) > n and chosen:
            continue
        chosen.extend(words[w])
        count += len(words[w])
    return np.asarray(sorted(chosen), dtype=np.int64)


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, cfg: TokenMaskingConfig, mask_id: int,
                num_special: int, vocab_size: int, maskable: Optional[np.ndarray] = None,
                word_starts: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Corrupt one token sequence; return (input ids, targets with IGNORE_INDEX where nothing is predicted).

    ``maskable`` (bool, same length) marks the positions that may be chosen (default: ids >=
    ``num_special``, i.e. not <s>, <pad>, </s>, <unk>). Exactly ``max(1, round(mask_prob * n))`` of the
    ``n`` maskable positions are chosen, so short captions always train something. Random replacements
    are drawn from the ordinary pieces ``[num_special, vocab_size - 1)`` (never <mask> or specials).
    With ``cfg.whole_word``, ``word_starts`` (bool, same length; e.g. ``word_start_table(tok)[ids]``)
    marks word beginnings and whole words are chosen, about ``mask_prob * n`` positions in all.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if maskable is None:
        maskable = (ids >= num_special) & (ids != mask_id)
    candidates = np.flatnonzero(maskable)
    inputs = ids.copy()
    targets = np.full_like(ids, IGNORE_INDEX)
    if candidates.size == 0:
        return inputs, targets
    n = max(1, int(round(cfg.mask_prob * candidates.size)))
    if cfg.whole_word:
        if word_starts is None or len(word_starts) != len(ids):
            raise ValueError("whole-word masking needs word_starts (one bool per token)")
        chosen = _choose_whole_words(candidates, np.asarray(word_starts, dtype=bool), n, rng)
        n = chosen.size
    else:
        chosen = rng.choice(candidates, n, replace=False)
    targets[chosen] = ids[chosen]
    roll = rng.random(n)
    to_mask = chosen[roll < cfg.mask_token_prob]
    to_random = chosen[(roll >= cfg.mask_token_prob) & (roll < cfg.mask_token_prob + cfg.random_token_prob)]
    inputs[to_mask] = mask_id
    if to_random.size:
        inputs[to_random] = rng.integers(num_special, vocab_size - 1, size=to_random.size)
    return inputs, targets


def block_shapes(mask: np.ndarray) -> Sequence[Tuple[int, int]]:
    """Bounding-box (h, w) of each 4-connected masked component (used to check block statistics)."""
    seen = np.zeros_like(mask, dtype=bool)
    shapes = []
    H, W = mask.shape
    for r in range(H):
        for c in range(W):
            if mask[r, c] and not seen[r, c]:
                stack, rows, cols = [(r, c)], [], []
                seen[r, c] = True
                while stack:
                    y, x = stack.pop()
                    rows.append(y)
                    cols.append(x)
                    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                        ny, nx = y + dy, x + dx
                        if 0 <= ny < H and 0 <= nx < W and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
                shapes.append((max(rows) - min(rows) + 1, max(cols) - min(cols) + 1))
    return shapes
