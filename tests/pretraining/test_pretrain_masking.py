"""Masking statistics: block-wise patch masks (ratio, block shapes) and BERT token corruption (15%, 80/10/10)."""
import numpy as np
import pytest

from beit3_plugins.pretraining.masking import (IGNORE_INDEX, BlockMaskingConfig, BlockMaskingGenerator,
                                               TokenMaskingConfig, block_shapes, mask_tokens)


@pytest.mark.parametrize("grid,min_block", [((14, 14), 16), ((8, 8), 4), ((16, 16), 16)])
def test_block_mask_hits_exact_ratio(grid, min_block):
    gen = BlockMaskingGenerator(grid, BlockMaskingConfig(mask_ratio=0.4, min_block=min_block))
    rng = np.random.default_rng(0)
    n = grid[0] * grid[1]
    for _ in range(200):
        mask = gen(rng)
        assert mask.shape == grid and mask.dtype == bool
        assert int(mask.sum()) == round(0.4 * n)


def test_block_mask_is_blocky_not_random():
    """Masked patches come in blocks: far fewer connected components than independent masking gives,
    and the large components respect the aspect-ratio bound."""
    grid = (14, 14)
    gen = BlockMaskingGenerator(grid, BlockMaskingConfig(mask_ratio=0.4, min_block=16))
    rng = np.random.default_rng(1)
    block_components, random_components, wide = [], [], []
    for _ in range(100):
        mask = gen(rng)
        shapes = block_shapes(mask)
        block_components.append(len(shapes))
        wide.extend(max(h, w) / min(h, w) for h, w in shapes if h * w >= 16)
        random = np.zeros(196, dtype=bool)
        random[rng.choice(196, int(mask.sum()), replace=False)] = True
        random_components.append(len(block_shapes(random.reshape(grid))))
    assert np.mean(block_components) < 0.3 * np.mean(random_components)
    # union of overlapping rectangles may stretch a component, but most stay within 1/0.3 ~ 3.3
    assert np.median(wide) <= 1 / 0.3


def test_block_mask_is_seed_deterministic():
    gen = BlockMaskingGenerator((8, 8), BlockMaskingConfig(min_block=4))
    a = gen(np.random.default_rng([3, 1, 7]))
    b = gen(np.random.default_rng([3, 1, 7]))
    assert np.array_equal(a, b)


def test_block_mask_config_rejects_bad_ratio():
    with pytest.raises(ValueError, match="mask_ratio"):
        BlockMaskingConfig(mask_ratio=1.5)


def test_token_masking_statistics_15_80_10_10():
    vocab, mask_id, specials = 1000, 999, 4
    rng = np.random.default_rng(0)
    chosen = total = masked = randomised = kept = 0
    for _ in range(3000):
        length = int(rng.integers(10, 60))
        ids = np.concatenate([[0], rng.integers(specials, vocab - 1, size=length), [2]])
        inputs, targets = mask_tokens(ids, rng, TokenMaskingConfig(), mask_id, specials, vocab)
        sel = targets != IGNORE_INDEX
        assert targets[0] == IGNORE_INDEX and targets[-1] == IGNORE_INDEX  # <s>, </s> never predicted
        assert np.array_equal(targets[sel], ids[sel])
        assert np.array_equal(inputs[~sel], ids[~sel])                     # unchosen tokens untouched
        chosen += sel.sum()
        total += length
        masked += (inputs[sel] == mask_id).sum()
        changed = (inputs[sel] != mask_id) & (inputs[sel] != ids[sel])
        randomised += changed.sum()
        kept += (inputs[sel] == ids[sel]).sum()
        assert (inputs[sel][changed] >= specials).all() and (inputs[sel][changed] < vocab - 1).all()
    assert abs(chosen / total - 0.15) < 0.01
    assert abs(masked / chosen - 0.8) < 0.02
    # a random replacement equal to the original token (p ~ 1/995) counts as "kept"
    assert abs(randomised / chosen - 0.1) < 0.015
    assert abs(kept / chosen - 0.1) < 0.015


def test_pair_text_masking_50_percent_and_short_text_gets_one():
    rng = np.random.default_rng(0)
    ids = np.array([0, 10, 11, 12, 13, 14, 15, 16, 17, 2])
    _, targets = mask_tokens(ids, rng, TokenMaskingConfig(mask_prob=0.5), 99, 4, 100)
    assert (targets != IGNORE_INDEX).sum() == 4
    _, targets = mask_tokens(np.array([0, 10, 2]), rng, TokenMaskingConfig(), 99, 4, 100)
    assert (targets != IGNORE_INDEX).sum() == 1


def _words(word_starts, maskable):
    """Position lists of the words of one sequence (a word = a start piece and its continuation pieces)."""
    words, current = [], []
    for pos in np.flatnonzero(maskable):
        if current and (word_starts[pos] or pos != current[-1] + 1):
            words.append(current)
            current = []
        current.append(pos)
    return words + [current]


def test_whole_word_masking_statistics(data_world, tiny_spm):
    """VLMo's whole-word masking with the sentencepiece tokenizer: a word is a piece starting with "▁"
    plus the pieces that follow it; every piece of a chosen word is predicted, none of the others, ~15%
    of the tokens in all, 80/10/10 per piece. Piece masking on the same text does split words."""
    from beit3_plugins.pretraining.data import TextSource
    from beit3_plugins.pretraining.masking import word_start_table
    from beit3_plugins.tokenizer import Beit3Tokenizer

    world, manifest = data_world
    tok = Beit3Tokenizer(str(tiny_spm))
    table = word_start_table(tok)
    assert table[tok.piece_to_id("\u2581a")] and not table[tok.piece_to_id("re")]
    lines = [line for line in open(manifest.path("text_corpus")).read().splitlines() if line.strip()]
    texts = [" ".join(lines[i:i + 4]) for i in range(0, len(lines) - 4, 4)]
    source = TextSource(texts, tok, 128, tok.vocab_size, TokenMaskingConfig(whole_word=True))
    plain = TextSource(texts, tok, 128, tok.vocab_size, TokenMaskingConfig())
    rng = np.random.default_rng(0)
    chosen = total = masked = multi_piece_chosen = split_by_piece_masking = 0
    for index in range(len(texts)):
        ids = source.encode(texts[index])
        item = source.get(index, rng)
        sel = item["targets"] != IGNORE_INDEX
        assert np.array_equal(item["targets"][sel], ids[sel]) and np.array_equal(item["ids"][~sel], ids[~sel])
        words = _words(table[ids], ids >= 4)
        assert sum(len(w) for w in words) == len(ids) - 2
        for word in words:
            assert sel[word].all() or not sel[word].any(), (tok.decode(ids[word]), sel[word])
            multi_piece_chosen += len(word) > 1 and sel[word].all()
        plain_sel = plain.get(index, rng)["targets"] != IGNORE_INDEX
        split_by_piece_masking += sum(0 < plain_sel[w].sum() < len(w) for w in words)
        chosen += sel.sum()
        total += len(ids) - 2
        masked += (item["ids"][sel] == tok.mask_id).sum()
    assert multi_piece_chosen > 10 and split_by_piece_masking > 10
    assert abs(chosen / total - 0.15) < 0.02, chosen / total
    assert abs(masked / chosen - 0.8) < 0.05


def test_whole_word_masking_needs_word_starts():
    with pytest.raises(ValueError, match="word_starts"):
        mask_tokens(np.array([0, 10, 11, 2]), np.random.default_rng(0), TokenMaskingConfig(whole_word=True), 99, 4, 100)
