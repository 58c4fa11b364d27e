"""``data check`` / ``data prepare`` and the official VQA answer list against outputs of the official code.

The goldens in tests/support/golden/official_data were written by microsoft/unilm ``beit3/datasets.py`` itself
(its README says how) on the inputs of tests/support/official_data.py.
"""
import json
import shutil
from pathlib import Path

import pytest

from beit3_plugins.cli import main as cli
from beit3_plugins.data import AnswerVocab, WorldConfig, generate_world, read_vqa
from beit3_plugins.data.official import (BENCHMARKS, DataCheckError, beit3_normalize_word, check, prepare,
                                         vqa_eval_normalize, vqa_target_score)
from official_data import ANSWER_FORMS, GOLDEN, WORLD, write_crafted_vqa


@pytest.fixture(scope="module")
def official_world(tmp_path_factory):
    """The golden world, prepared by ``data prepare`` with the committed tokenizer and the official settings."""
    root = tmp_path_factory.mktemp("official_world")
    generate_world(root, WorldConfig(**WORLD))
    result = prepare(root, sentencepiece=GOLDEN / "tiny.spm")
    return root, result


def _lines(path: Path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_normalize_word_equals_the_official_function():
    golden = json.loads((GOLDEN / "normalize_word.json").read_text(encoding="utf-8"))
    assert sorted(golden) == sorted(ANSWER_FORMS)
    assert {a: beit3_normalize_word(a) for a in ANSWER_FORMS} == golden
    # the two official procedures share their string rules; where they apply differs (see answers.py)
    assert all(vqa_eval_normalize(a) == golden[a] for a in ANSWER_FORMS)
    assert [vqa_target_score(n) for n in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]


def test_answer_list_of_crafted_annotations_is_the_official_one(tmp_path):
    root = write_crafted_vqa(tmp_path / "crafted")
    vocab = AnswerVocab.from_annotations([root / "vqa/v2_mscoco_train2014_annotations.json",
                                          root / "vqa/v2_mscoco_val2014_annotations.json"])
    vocab.save(tmp_path / "answer2label.txt")
    golden = GOLDEN / "crafted" / "answer2label.txt"
    assert (tmp_path / "answer2label.txt").read_bytes() == golden.read_bytes()
    # first appearance, not frequency: the list is neither sorted by count nor by text
    assert vocab.answers != sorted(vocab.answers)
    assert len(vocab) < len({beit3_normalize_word(a) for a in ANSWER_FORMS})  # rare answers (< 9) left out
    # targets: raw annotator answers matched against the list (a raw "Yes" is not the listed "yes")
    records = read_vqa(root / "vqa/v2_OpenEnded_mscoco_train2014_questions.json",
                       root / "vqa/v2_mscoco_train2014_annotations.json", vocab=vocab)
    by_id = {r.question_id: r for r in records}
    for r in records:
        counts = {a: r.raw_answers.count(a) for a in r.raw_answers}
        expected = [(vocab.index[a], vqa_target_score(n)) for a, n in counts.items() if a in vocab]
        assert list(zip(r.labels, r.scores)) == expected
    assert any(r.raw_answers[0] not in vocab and r.multiple_choice_answer in vocab for r in by_id.values())


def test_prepare_writes_what_the_official_make_dataset_index_writes(official_world):
    root, result = official_world
    golden = GOLDEN / "world"
    compared = 0
    for folder in sorted(p for p in golden.iterdir() if p.is_dir()):
        for expected in sorted(folder.iterdir()):
            ours = root / folder.name / expected.name
            assert ours.is_file(), f"data prepare did not write {folder.name}/{expected.name}"
            if expected.name.startswith("vqa."):
                # the official code orders images by an unseeded shuffle: same items, order aside
                key = lambda item: item["qid"]  # noqa: E731
                assert sorted(_lines(ours), key=key) == sorted(_lines(expected), key=key), expected.name
            else:
                assert ours.read_bytes() == expected.read_bytes(), f"{folder.name}/{expected.name} differs"
            compared += 1
    assert compared == 23
    derived = {f"{b.folder}/{name}" for b in BENCHMARKS.values() for name in b.derived}
    assert derived == set(result.written)  # every derived file the layout names, and nothing else


def test_official_text_segments_are_what_our_tokenizer_encodes(official_world):
    """Question/caption token ids of the official indexes (XLMRobertaTokenizer) equal Beit3Tokenizer's, and the
    official ``_get_text_segment`` sequence (bos + ids[:max_len - 2] + eos) equals ``encode``'s."""
    from beit3_plugins.tokenizer import Beit3Tokenizer

    tok = Beit3Tokenizer(GOLDEN / "tiny.spm")
    root, _ = official_world
    questions = {q["question_id"]: q["question"] for q in json.loads(
        (root / "coco/vqa/v2_OpenEnded_mscoco_train2014_questions.json").read_text())["questions"]}
    items = _lines(GOLDEN / "world/coco/vqa.train.jsonl")
    assert items and any(len(item["text_segment"]) > 6 for item in items)
    for item in items:
        text, ids = questions[item["qid"]], item["text_segment"]
        assert tok.tokenize(text) == ids
        for max_len in (8, 64):  # truncated and padded
            official = [tok.bos_id] + ids[:max_len - 2] + [tok.eos_id]
            enc = tok.encode(text, max_length=max_len)
            assert enc.input_ids == official + [tok.pad_id] * (max_len - len(official))
            assert enc.padding_mask == [False] * len(official) + [True] * (max_len - len(official))


def test_check_passes_on_the_world_and_counts(official_world, capsys, tmp_path):
    root, _ = official_world
    report = check(root)
    assert report.ok, report.format()
    vqa = report["vqav2"]
    counts = {f.path: f.count for f in vqa.files}
    assert counts["coco/train2014"] == WORLD["coco_train_images"] and counts["coco/test2015"] == 4
    assert vqa.images_expected == 24 + 8 + 4 and all(vqa.derived.values())
    assert cli(["data", "check", str(root), "-b", "nlvr2:dev", "-b", "imagenet", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "nlvr2/dev (16 images)" in out and "flickr30k" not in out
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["ok"] and [b["name"] for b in written["benchmarks"]] == ["nlvr2", "imagenet"]
    assert written["benchmarks"][0]["splits"] == ["dev"]


def test_check_names_every_missing_and_damaged_file(official_world, tmp_path, capsys):
    src, _ = official_world
    root = tmp_path / "damaged"
    shutil.copytree(src, root)
    (root / "coco/vqa/v2_OpenEnded_mscoco_test-dev2015_questions.json").unlink()            # missing file
    (root / "flickr30k/dataset_flickr30k.json").write_text('{"images": [')                    # broken json
    jpeg = sorted((root / "coco/val2014").glob("*.jpg"))[1]
    jpeg.write_bytes(jpeg.read_bytes()[:300])                                                  # truncated image
    gone = sorted((root / "nlvr2/dev").glob("*.png"))[0]
    gone.unlink()                                                                              # referred image
    shutil.rmtree(root / "nocaps/test")                                                        # missing folder
    (root / "coco/answer2label.txt").write_text('{"answer": "yes", "label": 0}\n{"answer": "no", "la')  # cut
    report = check(root)
    assert not report.ok
    problems = "\n".join(report.problems())
    for name in ("v2_OpenEnded_mscoco_test-dev2015_questions.json", "dataset_flickr30k.json", jpeg.name,
                 gone.name, "nocaps/test", "coco/answer2label.txt: "):
        assert name in problems, name
    assert "s3.amazonaws.com/cvmlp/vqa/mscoco/vqa/v2_Questions_Test_mscoco.zip" in problems  # the download link
    assert report["imagenet"].ok and report["coco_retrieval"].images_damaged == [
        (jpeg.relative_to(root).as_posix(), report["coco_retrieval"].images_damaged[0][1])]
    with pytest.raises(DataCheckError, match="dataset_flickr30k.json"):
        report.raise_for_problems()
    assert cli(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert all(name in out for name in (jpeg.name, gone.name, "dataset_flickr30k.json"))
    with pytest.raises(DataCheckError, match=gone.name):  # nothing is built over damaged data
        prepare(root, ["nlvr2"], sentencepiece=GOLDEN / "tiny.spm")
    # a cut derived file (a killed prepare) is rebuilt, not a blocker
    shutil.copy(src / "coco/vqa/v2_OpenEnded_mscoco_test-dev2015_questions.json", root / "coco/vqa")
    shutil.copy(src / "coco/val2014" / jpeg.name, jpeg)
    prepare(root, ["vqav2"], sentencepiece=GOLDEN / "tiny.spm")
    assert check(root, ["vqav2"]).ok and (root / "coco/answer2label.txt").read_bytes() == (
        src / "coco/answer2label.txt").read_bytes()
    assert cli(["data", "prepare", str(root), "-b", "nlvr2", "--sentencepiece", str(GOLDEN / "tiny.spm")]) == 1
    assert gone.name in capsys.readouterr().out


def test_prepare_needs_the_tokenizer_for_text_indexes(official_world, tmp_path):
    root, _ = official_world
    with pytest.raises(ValueError, match="sentencepiece"):
        prepare(root, ["vqav2"])
    with pytest.raises(KeyError, match="unknown benchmark"):
        check(root, ["vqa"])
    with pytest.raises(KeyError, match="no split"):
        check(root, ["nlvr2:test"])
    with pytest.raises(FileNotFoundError):
        check(tmp_path / "nowhere")


def test_flat_imagenet_val_is_named_and_needs_the_devkit(official_world, tmp_path):
    src, _ = official_world
    root = tmp_path / "flat"
    shutil.copytree(src / "imagenet", root / "imagenet")
    val = root / "imagenet" / "val"
    for image in list(val.rglob("*.JPEG")):  # the val download as it comes: no class folders
        image.rename(val / image.name)
    for folder in [p for p in val.iterdir() if p.is_dir()]:
        folder.rmdir()
    status = {f.path: f for f in check(root, ["imagenet"]).benchmarks[0].files}["imagenet/val"]
    assert status.status == "malformed" and "6 images lie flat" in status.detail
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_devkit_t12.tar.gz"):
        prepare(root, ["imagenet"])
