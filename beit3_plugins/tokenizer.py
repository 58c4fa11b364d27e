"""BEiT-3 text tokenizer: a sentencepiece model with the fairseq / XLM-R id layout.

The released BEiT-3 tokenizes with XLM-R's tokenizer over ``beit3.spm``; ids follow fairseq's
dictionary: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, every sentencepiece piece shifted by one
(sentencepiece id 3 -> 4), and ``<mask>`` as the last id. For the released 64000-piece model that is
64002 ids of the 64010 text-embedding rows. A sequence is ``<s>`` + tokens[:max_length - 2] + ``</s>``,
then padding; the padding mask is True at pads (the backbone's key padding mask convention).

:func:`train_sentencepiece` trains a small model with XLM-R's special-id layout (unk=0, bos=1, eos=2,
no pad) so the same shift holds for models trained on our own corpora.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import sentencepiece as spm

from beit3_plugins.registry import TOKENIZERS

__all__ = ["SequenceTokenizer", "Beit3Tokenizer", "SentencePieceTokenizerConfig", "Encoding", "BatchEncoding",
           "train_sentencepiece", "FAIRSEQ_OFFSET", "cli_main"]

FAIRSEQ_OFFSET = 1  # fairseq id = sentencepiece id + 1 for every ordinary piece


@dataclasses.dataclass
class SentencePieceTokenizerConfig:
    model_path: str = ""     # a sentencepiece model (beit3.spm or one from train_sentencepiece)
    max_length: int = 64     # default sequence length including <s> and </s>


@dataclasses.dataclass
class Encoding:
    input_ids: List[int]
    padding_mask: List[bool]     # True = pad
    num_tokens: int              # real tokens including <s> and </s>
    truncated: bool              # the text had more than max_length - 2 tokens
    num_dropped: int = 0         # how many text tokens the truncation removed


@dataclasses.dataclass
class BatchEncoding:
    input_ids: np.ndarray        # (N, L) int64
    padding_mask: np.ndarray     # (N, L) bool, True = pad
    truncated: np.ndarray        # (N,) bool

    @property
    def num_truncated(self) -> int:
        return int(self.truncated.sum())

    def to_torch(self, device: Any = None) -> Dict[str, Any]:
        """``{"input_ids": LongTensor, "padding_mask": BoolTensor}`` (imports torch only here)."""
        import torch

        return {"input_ids": torch.as_tensor(self.input_ids, device=device),
                "padding_mask": torch.as_tensor(self.padding_mask, device=device)}


class SequenceTokenizer:
    """What every text tokenizer of this package shares: a sequence is the start id + tokens[:max_length - 2]
    + the end id, then padding (mask True at pads); batching, id range checks and pickling for data-loader
    workers. Subclasses give ``tokenize``, ``vocab_size``, ``bos_id`` / ``eos_id`` / ``pad_id`` and ``_load``
    (which keeps the file's content in ``self._source``)."""

    config_type: type             # the subclass's dataclass config (``model_path``, ``max_length``, ...)
    file_description: str         # how errors name the file, e.g. "sentencepiece model (e.g. beit3.spm)"
    file_is_text: bool = False    # read the file as UTF-8 text instead of bytes before ``_load``
    cfg: Any
    max_length: int
    _source: Any

    def __init__(self, cfg: Any) -> None:
        """``cfg`` is a ``config_type`` instance, or simply the file's path."""
        if not isinstance(cfg, self.config_type):
            cfg = self.config_type(model_path=str(cfg))
        if cfg.max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for the start and end ids), got {cfg.max_length}")
        self.cfg = cfg
        self.max_length = cfg.max_length
        path = Path(cfg.model_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: {self.file_description} not found")
        self._load(path.read_text(encoding="utf-8") if self.file_is_text else path.read_bytes(), str(path))

    def __getstate__(self) -> Dict[str, Any]:
        return {"cfg": self.cfg, "source": self._source}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.cfg = state["cfg"]
        self.max_length = self.cfg.max_length
        self._load(state["source"], self.cfg.model_path)

    def _check_range(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} outside the tokenizer's {self.vocab_size} ids")

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str, max_length: Optional[int] = None, pad: bool = True) -> Encoding:
        """start id + tokens[:max_length - 2] + end id, padded to ``max_length`` unless ``pad=False``."""
        max_length = self.max_length if max_length is None else max_length
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        tokens = self.tokenize(text)
        kept = tokens[: max_length - 2]
        ids = [self.bos_id] + kept + [self.eos_id]
        num_tokens = len(ids)
        if pad:
            ids = ids + [self.pad_id] * (max_length - num_tokens)
        return Encoding(input_ids=ids, padding_mask=[False] * num_tokens + [True] * (len(ids) - num_tokens),
                        num_tokens=num_tokens, truncated=len(kept) < len(tokens),
                        num_dropped=len(tokens) - len(kept))

    def encode_batch(self, texts: Sequence[str], max_length: Optional[int] = None,
                     padding: str = "max_length") -> BatchEncoding:
        """Encode many texts; ``padding="longest"`` pads to the longest sequence instead of max_length."""
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}")
        encodings = [self.encode(t, max_length, pad=False) for t in texts]
        length = self.max_length if max_length is None else max_length
        if padding == "longest":
            length = max((e.num_tokens for e in encodings), default=2)
        ids = np.full((len(encodings), length), self.pad_id, dtype=np.int64)
        mask = np.ones((len(encodings), length), dtype=bool)
        for row, enc in enumerate(encodings):
            ids[row, : enc.num_tokens] = enc.input_ids
            mask[row, : enc.num_tokens] = False
        return BatchEncoding(input_ids=ids, padding_mask=mask,
                             truncated=np.array([e.truncated for e in encodings], dtype=bool))

    __call__ = encode_batch


@TOKENIZERS.register("sentencepiece", config=SentencePieceTokenizerConfig)
class Beit3Tokenizer(SequenceTokenizer):
    """Sentencepiece with fairseq ids, as the released BEiT-3 uses.

    Args:
        cfg: a :class:`SentencePieceTokenizerConfig`, or simply the model path.
    """

    config_type = SentencePieceTokenizerConfig
    file_description = "sentencepiece model (e.g. beit3.spm)"
    bos_id = 0
    pad_id = 1
    eos_id = 2
    unk_id = 3

    def _load(self, proto: bytes, name: str) -> None:
        self._source = proto
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(proto)
        except Exception as exc:  # noqa: BLE001 - sentencepiece raises plain RuntimeError/OSError
            raise ValueError(f"{name}: not a sentencepiece model ({exc})") from None
        layout = (self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if layout != (0, 1, 2):
            raise ValueError(
                f"{name}: sentencepiece special ids (unk, bos, eos) are {layout}; the fairseq shift needs "
                "XLM-R's layout (0, 1, 2). Retrain with beit3_plugins.tokenizer.train_sentencepiece.")

    # ------------------------------------------------------------------ vocabulary
    @property
    def num_pieces(self) -> int:
        return self.sp.get_piece_size()

    @property
    def mask_id(self) -> int:
        return self.num_pieces + FAIRSEQ_OFFSET

    @property
    def vocab_size(self) -> int:
        """Number of ids in use (64002 for beit3.spm); the model's embedding may have more rows."""
        return self.num_pieces + FAIRSEQ_OFFSET + 1

    @property
    def special_ids(self) -> Dict[str, int]:
        return {"<s>": self.bos_id, "<pad>": self.pad_id, "</s>": self.eos_id, "<unk>": self.unk_id,
                "<mask>": self.mask_id}

    def piece_to_id(self, piece: str) -> int:
        if piece in self.special_ids:
            return self.special_ids[piece]
        sp_id = self.sp.piece_to_id(piece)
        return sp_id + FAIRSEQ_OFFSET if sp_id > 2 else self.unk_id

    def id_to_piece(self, token_id: int) -> str:
        for piece, special in self.special_ids.items():
            if token_id == special:
                return piece
        self._check_range(token_id)
        return self.sp.id_to_piece(token_id - FAIRSEQ_OFFSET)

    # ------------------------------------------------------------------ encoding
    def tokenize(self, text: str) -> List[int]:
        """Fairseq ids of ``text`` without <s>, </s> or truncation."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return [i + FAIRSEQ_OFFSET if i > 0 else self.unk_id for i in self.sp.encode(text, out_type=int)]

    def pieces(self, text: str) -> List[str]:
        return self.sp.encode(text, out_type=str)


    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (list, numpy or torch); <s>, </s>, <pad> (and <mask>) are dropped."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        sp_ids: List[int] = []
        out: List[str] = []
        for token_id in ids:
            token_id = int(token_id)
            self._check_range(token_id)
            if token_id in (self.bos_id, self.eos_id, self.pad_id):
                continue
            if token_id == self.mask_id:
                if not skip_special_tokens:
                    out.append(self.sp.decode(sp_ids))
                    out.append("<mask>")
                    sp_ids = []
                continue
            sp_ids.append(0 if token_id == self.unk_id else token_id - FAIRSEQ_OFFSET)
        out.append(self.sp.decode(sp_ids))
        return " ".join(part for part in out if part)

    def __repr__(self) -> str:
        return f"Beit3Tokenizer({self.cfg.model_path!r}, vocab_size={self.vocab_size}, max_length={self.max_length})"


def train_sentencepiece(corpus_path: Union[str, os.PathLike], out_prefix: Union[str, os.PathLike],
                        vocab_size: int, model_type: str = "bpe", character_coverage: float = 1.0,
                        seed_sentencepiece_size: int = 100000) -> Path:
    """Train a sentencepiece model with XLM-R's special ids (unk=0, <s>=1, </s>=2, no pad).

    ``vocab_size`` is an upper bound on tiny corpora (``hard_vocab_limit`` is off). Returns the path of
    ``<out_prefix>.model``; training is single-threaded and deterministic.
    """
    corpus = Path(corpus_path)
    if not corpus.is_file():
        raise FileNotFoundError(f"{corpus}: text corpus (one sentence per line) not found")
    if vocab_size < 8:
        raise ValueError(f"vocab_size must be >= 8, got {vocab_size}")
    with open(corpus, "rb") as handle:  # stops at the first line with text
        if not any(line.strip() for line in handle):
            raise ValueError(f"{corpus}: the text corpus is empty (no line with text); give one sentence per line")
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out_prefix), vocab_size=vocab_size, model_type=model_type,
        character_coverage=character_coverage, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        hard_vocab_limit=False, num_threads=1, shuffle_input_sentence=False, input_sentence_size=0,
        seed_sentencepiece_size=seed_sentencepiece_size, minloglevel=2,
    )
    return Path(f"{out_prefix}.model")


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """``beit3-plugins train-spm CORPUS OUT_PREFIX [--vocab-size N] [--model-type bpe|unigram]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="beit3-plugins train-spm", description=train_sentencepiece.__doc__)
    parser.add_argument("corpus", help="text file, one sentence per line")
    parser.add_argument("out_prefix", help="writes <out_prefix>.model and <out_prefix>.vocab")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--model-type", default="bpe", choices=["unigram", "bpe", "char", "word"])
    args = parser.parse_args(argv)
    try:
        path = train_sentencepiece(args.corpus, args.out_prefix, args.vocab_size, args.model_type)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    tokenizer = Beit3Tokenizer(str(path))
    print(f"wrote {path}: {tokenizer.num_pieces} pieces -> {tokenizer.vocab_size} fairseq ids "
          f"(<s>=0 <pad>=1 </s>=2 <unk>=3 <mask>={tokenizer.mask_id})")
    return 0
