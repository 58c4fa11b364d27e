"""VLMo's text tokenizer: BERT-uncased WordPiece, through Hugging Face ``tokenizers``.

The released VLMo (microsoft/unilm ``vlmo/``) tokenizes with ``BertTokenizer.from_pretrained("bert-base-uncased")``:
BERT's normaliser (clean control characters, space around CJK characters, lower case, strip accents), BERT's
pre-tokeniser (split on white space and punctuation), greedy longest-match-first WordPiece with ``##``
continuations and ``[UNK]`` for words longer than 100 characters or without a match. A sequence is ``[CLS]``
+ tokens[:max_length - 2] + ``[SEP]``, then ``[PAD]``; the padding mask is True at pads (the backbone's
convention). Ids are the line numbers of ``vocab.txt`` (bert-base-uncased: 30522 lines, VLMo's vocab_size).

Why ``tokenizers``: it is Hugging Face's maintained Rust implementation of exactly these BERT components
(``BertNormalizer``, ``BertPreTokenizer``, ``models.WordPiece``), needs no network and no ``transformers``;
the tests check its ids against ``transformers.BertTokenizer``, the slow pure-Python reference.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List

from beit3_plugins.registry import TOKENIZERS
from beit3_plugins.tokenizer import SequenceTokenizer

__all__ = ["WordPieceTokenizerConfig", "BertWordPieceTokenizer", "BERT_SPECIAL_TOKENS"]

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass
class WordPieceTokenizerConfig:
    model_path: str = ""      # BERT's vocab.txt (one piece per line; bert-base-uncased for the VLMo files)
    max_length: int = 40      # sequence length including [CLS] and [SEP] (VLMo's max_text_len)
    lowercase: bool = True    # uncased BERT (VLMo); False for cased vocabularies (then accents are kept)


@TOKENIZERS.register("wordpiece", config=WordPieceTokenizerConfig)
class BertWordPieceTokenizer(SequenceTokenizer):
    """BERT WordPiece with the interface of :class:`~beit3_plugins.tokenizer.Beit3Tokenizer` (``encode``,
    ``encode_batch``, ``decode``, ``vocab_size``, ``pad_id``, ``mask_id``, ``special_ids``).

    Args:
        cfg: a :class:`WordPieceTokenizerConfig`, or simply the vocab path.
    """

    config_type = WordPieceTokenizerConfig
    file_description = "WordPiece vocabulary (BERT's vocab.txt)"
    file_is_text = True

    def _load(self, vocab_text: str, name: str) -> None:
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

        self._source = vocab_text
        pieces = vocab_text.split("\n")
        if pieces and pieces[-1] == "":
            pieces = pieces[:-1]
        vocab: Dict[str, int] = {}
        for index, piece in enumerate(pieces):
            vocab.setdefault(piece.rstrip("\r"), index)   # first occurrence wins, as BertTokenizer's reader
        missing = [t for t in BERT_SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"{name}: not a BERT vocabulary, it lacks {missing}")
        self._vocab = vocab
        self._pieces = pieces
        self._tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        self._tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                          strip_accents=None, lowercase=self.cfg.lowercase)
        self._tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self.pad_id, self.unk_id = vocab["[PAD]"], vocab["[UNK]"]
        self.bos_id, self.eos_id, self.mask_id = vocab["[CLS]"], vocab["[SEP]"], vocab["[MASK]"]

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        """Lines of vocab.txt (30522 for bert-base-uncased)."""
        return len(self._pieces)

    @property
    def special_ids(self) -> Dict[str, int]:
        return {t: self._vocab[t] for t in BERT_SPECIAL_TOKENS}

    def piece_to_id(self, piece: str) -> int:
        return self._vocab.get(piece, self.unk_id)

    def id_to_piece(self, token_id: int) -> str:
        self._check_range(token_id)
        return self._pieces[token_id]

    # ------------------------------------------------------------------ encoding
    def tokenize(self, text: str) -> List[int]:
        """WordPiece ids of ``text`` without [CLS], [SEP] or truncation."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=False).ids

    def pieces(self, text: str) -> List[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens


    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (list, numpy or torch), ``##`` continuations joined; [CLS]/[SEP]/[PAD] (and
        [MASK] unless ``skip_special_tokens=False``) dropped."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        dropped = {self.bos_id, self.eos_id, self.pad_id} | ({self.mask_id} if skip_special_tokens else set())
        words: List[str] = []
        for token_id in ids:
            token_id = int(token_id)
            self._check_range(token_id)
            if token_id in dropped:
                continue
            piece = self._pieces[token_id]
            if piece.startswith("##") and words:
                words[-1] += piece[2:]
            else:
                words.append(piece)
        return " ".join(words)

    def __repr__(self) -> str:
        return (f"BertWordPieceTokenizer({self.cfg.model_path!r}, vocab_size={self.vocab_size}, "
                f"max_length={self.max_length})")
