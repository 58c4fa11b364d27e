"""BERT WordPiece (VLMo's tokenizer) through ``tokenizers``, checked against ``transformers.BertTokenizer``,
the slow pure-Python reference implementation of BERT-uncased's algorithm, on the same small vocabulary."""
import pickle

import pytest

from beit3_plugins.registry import TOKENIZERS
from beit3_plugins.wordpiece import BertWordPieceTokenizer, WordPieceTokenizerConfig

transformers = pytest.importorskip("transformers")  # the reference; in the test extra, so present in CI

PIECES = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "dog", "dogs", "cat", "run",
          "##ning", "##s", "##ed", "play", "un", "##aff", "##able", "cafe", ",", ".", "!", "?", "'", "-", "2",
          "##0", "##1", "man", "woman", "is", "on", "grass", "东", "京", "é", "naive", "resume", "hello", "##llo",
          "he", "two", "red", "##dish", "ball"]
TEXTS = [
    "The dog is running on the grass.",
    "Two DOGS played, unaffable!",
    "A café in 东京 - naïve résumé?",
    "reddish ball 2010 hello-he's",
    "zebra xylophone",                 # no pieces: [UNK] per word
    "  \t multiple   spaces\n and\u0000 control chars ",
    "a" * 120,                          # longer than 100 characters: one [UNK]
    "",
]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("wp") / "vocab.txt"
    path.write_text("\n".join(PIECES) + "\n", encoding="utf-8")
    return path


def test_ids_equal_bert_uncased_reference(vocab):
    ours = BertWordPieceTokenizer(WordPieceTokenizerConfig(model_path=str(vocab), max_length=12))
    ref = transformers.BertTokenizer(str(vocab), do_lower_case=True)
    for text in TEXTS:
        assert ours.tokenize(text) == ref.convert_tokens_to_ids(ref.tokenize(text)), text
        expected = ref(text, max_length=12, truncation=True, padding="max_length")
        enc = ours.encode(text)
        assert enc.input_ids == expected["input_ids"], text
        assert enc.padding_mask == [not m for m in expected["attention_mask"]], text
    assert ours.tokenize("The dog is running") == [7, 8, 31, 11, 12]   # greedy longest-match-first
    batch = ours.encode_batch(TEXTS, padding="longest")
    assert batch.input_ids.shape == (len(TEXTS), 12) and batch.num_truncated == 1
    assert (batch.input_ids[:, 0] == ref.cls_token_id).all()


def test_registered_picklable_decodes_and_rejects_bad_vocab(vocab, tmp_path):
    tok = TOKENIZERS.build("wordpiece", model_path=str(vocab), max_length=16)
    assert isinstance(tok, BertWordPieceTokenizer) and tok.vocab_size == len(PIECES)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 2, 3, 4, 5)
    clone = pickle.loads(pickle.dumps(tok))
    ids = clone.encode("Dogs running on the grass").input_ids
    assert ids == tok.encode("Dogs running on the grass").input_ids
    assert tok.decode(ids) == "dogs running on the grass"
    bad = tmp_path / "vocab.txt"
    bad.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lacks"):
        BertWordPieceTokenizer(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        BertWordPieceTokenizer(str(tmp_path / "missing.txt"))
