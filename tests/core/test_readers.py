import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from beit3_plugins.data import (AnswerVocab, CorruptImageError, SkipCounter, beit3_normalize_word, generate_world,
                                load_image, read_ade20k, read_coco_captions, read_coco_instances,
                                read_image_folder, read_json, read_jsonl, read_karpathy, read_nlvr2,
                                read_text_lines, read_vqa, vqa_target_score, WorldConfig)
from beit3_plugins.registry import DATASETS, UnknownComponentError


# ---------------------------------------------------------------------------------------------- errors
def test_missing_files_name_path_and_expected_content(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json: VQA v2 questions file"):
        read_vqa(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="NLVR2 split file"):
        read_nlvr2(tmp_path / "dev.json")
    with pytest.raises(FileNotFoundError, match="text corpus"):
        read_text_lines(tmp_path / "corpus.txt")
    with pytest.raises(FileNotFoundError, match="one sub-folder per class"):
        read_image_folder(tmp_path / "imagenet")
    with pytest.raises(FileNotFoundError, match="ADE20K training images"):
        read_ade20k(tmp_path)


def test_corrupt_json_names_file_line_and_column(tmp_path):
    bad = tmp_path / "captions.json"
    bad.write_text('{"images": [],\n "annotations": [1, 2,, 3]}')
    with pytest.raises(ValueError, match=r"captions\.json: invalid JSON in COCO captions file .* line 2 column"):
        read_coco_captions(bad)
    lines = tmp_path / "train.json"
    lines.write_text('{"identifier": "train-0-0-0", "sentence": "s", "label": "True"}\n{"identifier": \n')
    with pytest.raises(ValueError, match=r"train\.json: invalid JSON .* line 2"):
        read_nlvr2(lines)
    wrong = tmp_path / "questions.json"
    wrong.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="missing key.*questions"):
        read_vqa(wrong)
    with pytest.raises(ValueError, match="is a list, not an object"):
        (tmp_path / "l.json").write_text("[1]\n")
        read_jsonl(tmp_path / "l.json")
    assert read_json(tmp_path / "l.json") == [1]


def test_bad_nlvr2_label_is_reported_with_record_number(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text('{"identifier": "dev-0-0-0", "sentence": "s", "label": "True"}\n'
                    '{"identifier": "dev-0-1-0", "sentence": "s", "label": "maybe"}\n')
    with pytest.raises(ValueError, match="record 2 has label 'maybe'"):
        read_nlvr2(path)


# ---------------------------------------------------------------------------------------------- images
def test_corrupt_and_missing_images_are_counted_skips(tmp_path, data_world):
    _, manifest = data_world
    good = next(manifest.path("coco_images_train").glob("*.jpg"))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG not really")
    assert load_image(good).size == (64, 64) and load_image(good).mode == "RGB"
    with pytest.raises(CorruptImageError, match="truncated.jpg"):
        load_image(truncated)
    with pytest.raises(FileNotFoundError, match="absent.jpg"):
        load_image(tmp_path / "absent.jpg")
    skips = SkipCounter()
    assert load_image(truncated, skips) is None and load_image(garbage, skips) is None
    assert load_image(tmp_path / "absent.jpg", skips) is None
    assert skips.count("corrupt_image") == 2 and skips.count("missing_image") == 1 and skips.total == 3
    assert "garbage.png" in skips.report() and "missing_image: 1" in skips.report()


def test_dataset_survives_corrupt_images(tmp_path):
    manifest = generate_world(tmp_path, WorldConfig(formats=("coco",), coco_train_images=6, coco_val_images=2,
                                                    num_corrupt_images=2))
    assert len(manifest.corrupt_files) == 2
    ds = DATASETS.build({"name": "karpathy_captions", "json": str(manifest.path("karpathy_coco")),
                         "image_root": str(manifest.path("coco_root")), "splits": ["train"]})
    assert len(ds) == 30
    items = [ds[i] for i in range(len(ds))]  # a whole epoch: no crash
    assert all(item["image"].size == (64, 64) for item in items)
    bad_ids = {int(p.rsplit("_", 1)[1][:-4]) for p in manifest.corrupt_files}
    assert not bad_ids & {item["image_id"] for item in items}  # replaced by the next readable record
    assert ds.skips.count("corrupt_image") == 10  # 2 images x 5 captions, each counted once
    corrupt_bytes = (tmp_path / manifest.corrupt_files[0]).read_bytes()
    for record in ds.images:  # every image unreadable: a clear error, not a hang
        Path(record.image_path).write_bytes(corrupt_bytes)
    with pytest.raises(RuntimeError, match=r"no readable record(?s:.*)30 records unreadable(?s:.*)corrupt_image"):
        ds[0]


# ---------------------------------------------------------------------------------------------- VQA
def test_vqa_score_and_normalisation():
    assert [vqa_target_score(n) for n in range(7)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0]
    assert beit3_normalize_word("Two") == "2"
    assert beit3_normalize_word("a Dog.") == "dog"
    assert beit3_normalize_word("yes!") == "yes"
    assert beit3_normalize_word("the red-ish one") == "red ish 1"  # as the official glossary does
    assert beit3_normalize_word("dont know") == "don't know"


def _write_vqa(tmp_path, answers_per_question):
    questions = [{"image_id": 7, "question": f"q{i}?", "question_id": 7000 + i}
                 for i in range(len(answers_per_question))]
    annotations = [{"question_id": 7000 + i, "image_id": 7, "question_type": "what", "answer_type": "other",
                    "multiple_choice_answer": answers[0],
                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                for j, a in enumerate(answers)]}
                   for i, answers in enumerate(answers_per_question)]
    q = tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json"
    a = tmp_path / "v2_mscoco_val2014_annotations.json"
    q.write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
    a.write_text(json.dumps({"annotations": annotations}))
    return q, a


def test_vqa_soft_targets_and_out_of_vocab(tmp_path):
    q, a = _write_vqa(tmp_path, [
        ["2"] * 3 + ["two"] + ["3"] * 2 + ["4"] + ["red"] * 3,   # raw answers count: "two" is not "2"
        ["blue"] * 10,                                          # all outside the vocabulary below
    ])
    vocab = AnswerVocab(["2", "3", "4", "red"])
    skips = SkipCounter()
    records = read_vqa(q, a, image_dir=tmp_path / "val2014", vocab=vocab, skips=skips)
    first = records[0]
    assert dict(zip(first.labels, first.scores)) == {0: 0.9, 1: 0.6, 2: 0.3, 3: 0.9}
    np.testing.assert_allclose(first.dense_target(4), [0.9, 0.6, 0.3, 0.9])
    assert first.image_path.endswith("val2014/COCO_val2014_000000000007.jpg")
    assert records[1].labels == [] and skips.count("vqa_answers_out_of_vocab") == 1
    dropped = read_vqa(q, a, vocab=vocab, drop_out_of_vocab=True, skips=SkipCounter())
    assert [r.question_id for r in dropped] == [7000]
    test_only = read_vqa(q)  # test-dev: questions only
    assert [r.labels for r in test_only] == [[], []]
    with pytest.raises(ValueError, match="AnswerVocab"):
        read_vqa(q, a)


def test_vqa_missing_annotation_is_an_error(tmp_path):
    q, a = _write_vqa(tmp_path, [["yes"] * 10, ["no"] * 10])
    data = json.loads(a.read_text())
    data["annotations"].pop()
    a.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"no annotation for 1 question.*7001"):
        read_vqa(q, a, vocab=AnswerVocab(["yes"]))


def test_answer_vocab_from_world_save_and_load(tmp_path, data_world):
    _, manifest = data_world
    vocab = AnswerVocab.from_annotations(manifest.path("vqa_annotations_train"), min_count=1)
    assert {"yes", "no", "0", "1", "2", "3", "red", "green", "blue", "yellow", "circle", "square",
            "triangle"} <= set(vocab.answers)
    vocab.save(tmp_path / "answer2label.txt")
    first = json.loads((tmp_path / "answer2label.txt").read_text().splitlines()[0])
    assert first == {"answer": vocab.answers[0], "label": 0}
    assert AnswerVocab.load(tmp_path / "answer2label.txt").answers == vocab.answers
    (tmp_path / "answers.json").write_text(json.dumps(["yes", "no"]))
    assert AnswerVocab.load(tmp_path / "answers.json").index == {"yes": 0, "no": 1}
    majority = [a["multiple_choice_answer"] for a in json.loads(
        manifest.path("vqa_annotations_train").read_text())["annotations"]]
    assert vocab.answers == list(dict.fromkeys(majority))  # order of first appearance
    common = AnswerVocab.from_annotations(manifest.path("vqa_annotations_train"))  # the official 9
    assert common.answers == [a for a in vocab.answers if majority.count(a) >= 9] and len(common) < len(vocab)
    records = read_vqa(manifest.path("vqa_questions_val"), manifest.path("vqa_annotations_val"),
                       manifest.path("coco_images_val"), vocab)
    assert len(records) == manifest.counts["vqa_val_questions"]
    for r in records:
        assert r.labels and max(r.scores) == 1.0  # 6+ of 10 annotators agree on the true answer
        assert r.scores[r.labels.index(vocab.index[r.multiple_choice_answer])] == 1.0
        assert load_image(r.image_path) is not None


# ---------------------------------------------------------------------------------------------- others
def test_caption_readers(data_world):
    _, manifest = data_world
    coco = read_coco_captions(manifest.path("coco_captions_val"), manifest.path("coco_images_val"))
    assert len(coco) == 16 and all(len(r.captions) == 5 for r in coco)
    assert [r.image_id for r in coco] == sorted(r.image_id for r in coco)
    train = read_karpathy(manifest.path("karpathy_coco"), manifest.path("coco_root"), "train")
    evaluation = read_karpathy(manifest.path("karpathy_coco"), manifest.path("coco_root"), ["val", "test"])
    assert len(train) == 48 and len(evaluation) == 16
    assert {r.image_id for r in evaluation} == {r.image_id for r in coco}
    assert all(load_image(r.image_path) is not None for r in train[:5])
    flickr = read_karpathy(manifest.path("karpathy_flickr"), manifest.path("flickr_images"), "test")
    assert len(flickr) == 8 and all(load_image(r.image_path) is not None for r in flickr)
    with pytest.raises(ValueError, match="unknown Karpathy split"):
        read_karpathy(manifest.path("karpathy_coco"), splits="dev")
    lines = read_text_lines(manifest.path("text_corpus"))
    assert len(lines) == manifest.counts["text_lines"] and all(line.strip() == line for line in lines)


def test_nlvr2_reader_paths(data_world):
    _, manifest = data_world
    train = read_nlvr2(manifest.path("nlvr2_train"), manifest.path("nlvr2_images_train"))
    dev = read_nlvr2(manifest.path("nlvr2_dev"), manifest.path("nlvr2_images_dev"))
    assert len(train) == 48 and len(dev) == 16
    assert sum(r.label for r in train) == 24
    for record in train + dev:
        assert load_image(record.left_path) is not None and load_image(record.right_path) is not None
    assert "/images/train/" in train[0].left_path and train[0].left_path.endswith("-img0.png")


def test_image_folder_coco_instances_and_ade(tmp_path, data_world):
    _, manifest = data_world
    records, classes = read_image_folder(manifest.path("imagenet_train"))
    assert classes == ["circle", "square", "triangle"] and len(records) == 48
    assert [sum(r.label == i for r in records) for i in range(3)] == [16, 16, 16]
    with pytest.raises(FileNotFoundError, match="hexagon"):
        read_image_folder(manifest.path("imagenet_train"), classes=["circle", "hexagon"])
    images, categories = read_coco_instances(manifest.path("instances_val"), manifest.path("det_images_val"))
    assert [c["name"] for c in categories] == ["circle", "square", "triangle"]
    assert len(images) == 8 and sum(len(r.annotations) for r in images) == manifest.counts["det_val_instances"]
    assert all(load_image(r.image_path).size == (128, 128) for r in images)
    ade_root = tmp_path / "ade"
    shutil.copytree(manifest.path("ade_root"), ade_root)
    next((ade_root / "annotations" / "validation").glob("*.png")).unlink()
    skips = SkipCounter()
    pairs = read_ade20k(ade_root, "validation", skips)
    assert len(pairs) == 7 and skips.count("missing_label_map") == 1
    with pytest.raises(FileNotFoundError, match="label map"):
        read_ade20k(ade_root, "validation")


def test_registered_datasets(data_world):
    _, manifest = data_world
    assert {"vqa_v2", "nlvr2", "karpathy_captions", "text_corpus", "imagenet_folder"} <= set(DATASETS.names())
    vqa = DATASETS.build({"name": "vqa_v2", "questions": str(manifest.path("vqa_questions_train")),
                          "annotations": str(manifest.path("vqa_annotations_train")),
                          "image_dir": str(manifest.path("coco_images_train")), "drop_out_of_vocab": True,
                          "answer_list_from": [str(manifest.path("vqa_annotations_train")),
                                               str(manifest.path("vqa_annotations_val"))], "min_answer_count": 1})
    item = vqa[0]
    assert set(item) == {"image", "question", "labels", "scores", "question_id"} and item["image"].size == (64, 64)
    assert len(vqa) == manifest.counts["vqa_train_questions"] and len(vqa.vocab) == 13
    nlvr2 = DATASETS.build({"name": "nlvr2", "jsonl": str(manifest.path("nlvr2_dev")),
                            "image_dir": str(manifest.path("nlvr2_images_dev"))})
    assert {nlvr2[i]["label"] for i in range(len(nlvr2))} == {0, 1}
    text = DATASETS.build({"name": "text_corpus", "path": str(manifest.path("text_corpus"))})
    assert text[-1]["text"] == read_text_lines(manifest.path("text_corpus"))[-1]
    per_image = DATASETS.build({"name": "karpathy_captions", "json": str(manifest.path("karpathy_flickr")),
                                "image_root": str(manifest.path("flickr_images")), "splits": ["val"],
                                "per_caption": False})
    assert len(per_image) == 8 and len(per_image[0]["captions"]) == 5
    folder = DATASETS.build({"name": "imagenet_folder", "root": str(manifest.path("imagenet_val"))})
    assert folder.classes == ["circle", "square", "triangle"] and folder[11]["label"] == 2
    with pytest.raises(IndexError):
        folder[12]
    with pytest.raises(UnknownComponentError, match="nlvr2"):
        DATASETS.build({"name": "nlvr", "jsonl": "x"})
    with pytest.raises(TypeError, match="no field"):
        DATASETS.build({"name": "nlvr2", "json": "x"})


def test_importing_data_does_not_import_torch():
    code = "import sys, beit3_plugins.data; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
