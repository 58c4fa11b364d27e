import pickle

import numpy as np
import pytest
import sentencepiece as spm

from beit3_plugins.cli import main as cli_main
from beit3_plugins.data import read_text_lines
from beit3_plugins.registry import TOKENIZERS, UnknownComponentError
from beit3_plugins.tokenizer import Beit3Tokenizer, SentencePieceTokenizerConfig, train_sentencepiece


@pytest.fixture(scope="module")
def tok(tiny_spm):
    return Beit3Tokenizer(SentencePieceTokenizerConfig(model_path=str(tiny_spm), max_length=16))


@pytest.fixture(scope="module")
def raw_sp(tiny_spm):
    return spm.SentencePieceProcessor(model_file=str(tiny_spm))


@pytest.fixture(scope="module")
def corpus(data_world):
    return read_text_lines(data_world[1].path("text_corpus"))


def test_special_ids_follow_fairseq(tok, raw_sp):
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.num_pieces == raw_sp.get_piece_size() == 128
    assert tok.vocab_size == 130  # pieces + pad + mask (as 64000 pieces -> 64002 for beit3.spm)
    assert tok.mask_id == tok.vocab_size - 1 == 129
    assert [tok.piece_to_id(p) for p in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 129]
    assert [tok.id_to_piece(i) for i in (0, 1, 2, 3, 129)] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    # the trained model has XLM-R's layout, which the shift relies on
    assert (raw_sp.unk_id(), raw_sp.bos_id(), raw_sp.eos_id(), raw_sp.pad_id()) == (0, 1, 2, -1)


def test_pieces_are_raw_ids_shifted_by_one(tok, raw_sp, corpus):
    for line in corpus[:50]:
        raw = raw_sp.encode(line, out_type=int)
        assert 0 not in raw  # the corpus is fully covered
        assert tok.tokenize(line) == [i + 1 for i in raw]
    for sp_id in range(3, raw_sp.get_piece_size()):
        piece = raw_sp.id_to_piece(sp_id)
        assert tok.piece_to_id(piece) == sp_id + 1
        assert tok.id_to_piece(sp_id + 1) == piece
    # a character the model never saw is sentencepiece's unk (0), i.e. fairseq <unk> (3)
    assert raw_sp.encode("Q", out_type=int)[-1] == 0
    assert tok.tokenize("Q")[-1] == tok.unk_id


def test_encode_layout_and_padding(tok):
    enc = tok.encode("a red circle")
    tokens = tok.tokenize("a red circle")
    assert len(enc.input_ids) == 16
    assert enc.input_ids[: len(tokens) + 2] == [0] + tokens + [2]
    assert enc.input_ids[len(tokens) + 2:] == [1] * (16 - len(tokens) - 2)
    assert enc.padding_mask == [False] * (len(tokens) + 2) + [True] * (16 - len(tokens) - 2)
    assert enc.num_tokens == len(tokens) + 2 and not enc.truncated and enc.num_dropped == 0
    unpadded = tok.encode("a red circle", pad=False)
    assert unpadded.input_ids == [0] + tokens + [2] and not any(unpadded.padding_mask)


def test_truncation_is_reported(tok):
    text = "a large yellow circle, a small red square and a small blue triangle on a textured background"
    tokens = tok.tokenize(text)
    assert len(tokens) > 14
    enc = tok.encode(text)
    assert enc.input_ids == [0] + tokens[:14] + [2]
    assert enc.truncated and enc.num_dropped == len(tokens) - 14
    assert not any(enc.padding_mask)
    exact = tok.encode(text, max_length=len(tokens) + 2)  # exactly fits: not truncated
    assert not exact.truncated and exact.input_ids[-1] == 2
    with pytest.raises(ValueError, match="max_length"):
        tok.encode(text, max_length=1)


def test_batch_encoding(tok):
    texts = ["a red circle", "there are three shapes in the image on a textured background and more", "a"]
    batch = tok.encode_batch(texts, max_length=10)
    assert batch.input_ids.shape == (3, 10) and batch.input_ids.dtype == np.int64
    assert batch.padding_mask.dtype == bool
    np.testing.assert_array_equal(batch.padding_mask, batch.input_ids == 1)
    assert batch.truncated.tolist() == [False, True, False] and batch.num_truncated == 1
    for row, text in zip(batch.input_ids, texts):
        assert row.tolist() == tok.encode(text, max_length=10).input_ids
    longest = tok(["a red circle", "a"], padding="longest")
    assert longest.input_ids.shape[1] == len(tok.tokenize("a red circle")) + 2
    tensors = batch.to_torch()
    assert str(tensors["input_ids"].dtype) == "torch.int64" and str(tensors["padding_mask"].dtype) == "torch.bool"
    with pytest.raises(ValueError, match="padding"):
        tok.encode_batch(texts, padding="nope")


def test_decode_round_trip(tok, corpus):
    for line in corpus[:100]:
        assert tok.decode(tok.encode(line, max_length=64).input_ids) == line
    ids = tok.encode("a red circle").input_ids
    assert tok.decode(np.array(ids)) == "a red circle"
    masked = [0] + tok.tokenize("a red") + [tok.mask_id] + [2]
    assert tok.decode(masked) == "a red"
    assert tok.decode(masked, skip_special_tokens=False) == "a red <mask>"
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])


def test_registry_build_and_pickle(tiny_spm):
    built = TOKENIZERS.build({"name": "sentencepiece", "model_path": str(tiny_spm), "max_length": 8})
    assert isinstance(built, Beit3Tokenizer) and built.max_length == 8
    clone = pickle.loads(pickle.dumps(built))
    assert clone.encode("a blue square").input_ids == built.encode("a blue square").input_ids
    with pytest.raises(UnknownComponentError, match="sentencepiece"):
        TOKENIZERS.build("sentencepeice")


def test_bad_models_are_refused(tmp_path, data_world):
    with pytest.raises(FileNotFoundError, match="sentencepiece model"):
        Beit3Tokenizer(str(tmp_path / "missing.spm"))
    junk = tmp_path / "junk.spm"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        Beit3Tokenizer(str(junk))
    # a model with another special-id layout would break the shift: refuse it
    spm.SentencePieceTrainer.train(input=str(data_world[1].path("text_corpus")), model_prefix=str(tmp_path / "bert"),
                                   vocab_size=64, model_type="bpe", pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                   minloglevel=2)
    with pytest.raises(ValueError, match="layout"):
        Beit3Tokenizer(str(tmp_path / "bert.model"))


def test_training_is_deterministic_and_cli(tmp_path, data_world, tiny_spm):
    corpus = data_world[1].path("text_corpus")
    again = train_sentencepiece(corpus, tmp_path / "again", 128)
    pieces = [[(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
              for sp in (spm.SentencePieceProcessor(model_file=str(p)) for p in (again, tiny_spm))]
    assert pieces[0] == pieces[1]  # the files differ only in the recorded input/output paths
    assert cli_main(["train-spm", str(corpus), str(tmp_path / "cli"), "--vocab-size", "64"]) == 0
    assert Beit3Tokenizer(str(tmp_path / "cli.model")).num_pieces == 64
    with pytest.raises(FileNotFoundError, match="corpus"):
        train_sentencepiece(tmp_path / "none.txt", tmp_path / "x", 64)
