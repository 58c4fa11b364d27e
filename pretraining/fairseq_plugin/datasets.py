"""fairseq dataset that gives every batch all three data kinds in fixed proportions.

One dataset index is a *unit*: ``per_unit[kind]`` examples of each kind (paper: 1 image, 1 text, 1 pair,
so ``--batch-size 2048`` = 2048 + 2048 + 2048). Each kind walks its own per-epoch permutation and wraps
around, so the smaller corpora repeat within an epoch. The epoch order of a kind is a
:class:`~beit3_plugins.pretraining.shards.BlockOrder` (shuffled blocks, shuffled inside a block; a block is
a shard for sharded sources), built once per epoch: no per-item work grows with the corpus. Randomness
(order, crops, masks) is a pure function of (seed, epoch, index), so fairseq's iterator position in the
checkpoint is the stream position: a resumed run sees exactly the batches an uninterrupted one sees, with
any number of ranks and loader workers (fairseq gives each rank and worker disjoint indices).

Skipped items are counted per worker; each sample carries the counts its loading added (``skips``), the
collater sums them per batch, and the task logs them, so counts from forked workers are not lost.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
from fairseq.data import FairseqDataset

from beit3_plugins.pretraining.data import collate_images, collate_pairs, collate_text
from beit3_plugins.pretraining.shards import BlockOrder

__all__ = ["MixedModalityDataset", "BinarizedTextSource", "KINDS"]

KINDS = ("text", "image", "pair")
_COLLATE = {"text": collate_text, "image": collate_images, "pair": collate_pairs}


class MixedModalityDataset(FairseqDataset):
    def __init__(self, sources: Dict[str, Tuple[object, int]], seed: int, pad_id: int = 1, shuffle: bool = True,
                 epoch_units: int = 0, resample: bool = False, skips=None):
        unknown = sorted(set(sources) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown data kind(s) {unknown}; kinds are {list(KINDS)}")
        self.sources = {k: v for k, v in sources.items() if v[1] > 0}
        if not self.sources:
            raise ValueError("no data kind has a positive per-unit count")
        self.seed, self.pad_id, self.shuffle = seed, pad_id, shuffle
        self.epoch = 1
        self.round_to = 1
        self.natural_units = int(epoch_units) if epoch_units > 0 else max(
            -(-len(src) // n) for src, n in self.sources.values())
        self.skips = skips
        self.orders = {kind: BlockOrder(len(src), getattr(src, "block_size", 4096), seed, KINDS.index(kind),
                                        shuffle=shuffle, resample=resample)
                       for kind, (src, _) in self.sources.items()}

    # ------------------------------------------------------------------ fairseq protocol
    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return False  # permutations depend on the epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for order in self.orders.values():
            order.set_epoch(epoch)

    def set_round_to(self, multiple: int) -> None:
        """Round the epoch up to whole batches on every rank (VLMo gathers need equal batch sizes)."""
        self.round_to = max(1, int(multiple))

    def __len__(self) -> int:
        return -(-self.natural_units // self.round_to) * self.round_to

    def num_tokens(self, index: int) -> int:
        return 1

    def num_tokens_vec(self, indices):
        return np.ones(len(indices), dtype=np.int64)

    def size(self, index: int) -> int:
        return 1

    def ordered_indices(self):
        return np.arange(len(self), dtype=np.int64)

    @property
    def supports_prefetch(self) -> bool:
        return False

    # ------------------------------------------------------------------ items
    def __getitem__(self, index: int) -> Dict[str, List[dict]]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index), 7])
        before = dict(self.skips.counts) if self.skips is not None else {}
        out: Dict[str, List[dict]] = {"id": int(index)}
        for kind, (source, per_unit) in self.sources.items():
            order = self.orders[kind]
            order.set_epoch(self.epoch)
            out[kind] = [source.get(order.position(index * per_unit + j), rng) for j in range(per_unit)]
        if self.skips is not None:
            out["skips"] = {k: n - before.get(k, 0) for k, n in self.skips.counts.items() if n != before.get(k, 0)}
        return out

    def collater(self, samples: List[Dict]) -> Dict:
        if not samples:
            return {}
        net_input = {}
        count = 0
        for kind in self.sources:
            items = [it for s in samples for it in s[kind]]
            net_input[kind] = _COLLATE[kind](items, self.pad_id) if kind != "image" else _COLLATE[kind](items)
            count += len(items)
        skips: Dict[str, int] = {}
        for s in samples:
            for reason, n in s.get("skips", {}).items():
                skips[reason] = skips.get(reason, 0) + n
        return {"id": torch.tensor([s["id"] for s in samples]), "net_input": net_input, "nsentences": count,
                "ntokens": count, "skips": skips}


class BinarizedTextSource:
    """MLM examples from ``fairseq-preprocess`` output (``PREFIX.bin`` / ``PREFIX.idx``, mmap): O(1) random
    access, nothing read into memory. The ``dict.txt`` beside it must be the tokenizer's own (written by
    ``beit3-plugins make-shards --fairseq-dict``), so fairseq ids are the tokenizer's ids; checked at start."""

    block_size = 4096

    def __init__(self, prefix: str, tokenizer, max_len: int, model_vocab_size: int, masking, skips) -> None:
        import os

        from fairseq.data import MMapIndexedDataset

        from beit3_plugins.pretraining.data import EmptyCorpusError, _TextEncoder, _TextMasker

        if not MMapIndexedDataset.exists(prefix):
            raise FileNotFoundError(f"{prefix}: no fairseq mmap dataset ({prefix}.bin / {prefix}.idx)")
        dict_path = os.path.join(os.path.dirname(prefix), "dict.txt")
        if not os.path.isfile(dict_path):
            raise FileNotFoundError(f"{dict_path}: fairseq-preprocess's dictionary is missing beside {prefix}")
        with open(dict_path, encoding="utf-8") as handle:
            pieces = [line.rsplit(" ", 1)[0] for _, line in zip(range(200), handle)]
        expected = [tokenizer.id_to_piece(4 + i) for i in range(min(len(pieces), tokenizer.num_pieces - 3))]
        if pieces[: len(expected)] != expected:
            raise ValueError(f"{dict_path}: not the tokenizer's dictionary (ids would not match); binarize with "
                             f"fairseq-preprocess --srcdict from `beit3-plugins make-shards --fairseq-dict SPM`")
        self.data = MMapIndexedDataset(prefix)
        if not len(self.data):
            raise EmptyCorpusError(f"{prefix}: no sentences")
        self.tokenizer, self.max_len, self.skips = tokenizer, max_len, skips
        _TextEncoder(tokenizer, max_len, model_vocab_size, skips)      # vocabulary check
        self.mask_text = _TextMasker(tokenizer, masking)

    def __len__(self) -> int:
        return len(self.data)

    def get(self, index: int, rng) -> Dict[str, np.ndarray]:
        tokens = self.data[int(index) % len(self.data)].numpy().astype(np.int64)
        if len(tokens) and tokens[-1] == self.tokenizer.eos_id:
            tokens = tokens[:-1]
        if len(tokens) > self.max_len - 2:
            self.skips.add("truncated_text", f"sentence {index}")
            tokens = tokens[: self.max_len - 2]
        ids = np.concatenate([[self.tokenizer.bos_id], tokens, [self.tokenizer.eos_id]]).astype(np.int64)
        inputs, targets = self.mask_text(ids, rng)
        return {"ids": inputs, "targets": targets}
