"""The learning controls (vl_tasks/controls.py) and the complementary-pair VQA world they are meant for."""
import collections
import json
import math

import pytest
import torch

from beit3_plugins.data import WorldConfig, generate_world
from beit3_plugins.data.readers import VqaRecord
from beit3_plugins.vl_tasks.controls import (ImageSwap, clearly_ahead, majority_blind, retrieval_blind, vqa_blind)
from beit3_plugins.vl_tasks.metrics import recall_at_k


def _vqa(qid, image_id, question, answer):
    return VqaRecord(question_id=qid, image_id=image_id, image_path=None, question=question, answers=[answer],
                     labels=[], scores=[], raw_answers=[answer] * 10, answer_type="other")


def test_vqa_blind_answers_each_question_with_its_most_frequent_training_answer():
    train = [_vqa(1, 1, "what color?", "red"), _vqa(2, 2, "what color?", "red"), _vqa(3, 3, "what color?", "blue"),
             _vqa(4, 1, "how many?", "2"), _vqa(5, 2, "how many?", "2")]
    val = [_vqa(10, 9, "what color?", "red"), _vqa(11, 8, "what color?", "blue"), _vqa(12, 9, "how many?", "3"),
           _vqa(13, 9, "unseen?", "red")]  # unseen question: the overall most frequent answer ("red", 2 x 10)
    assert vqa_blind(train, val)["vqa_accuracy"] == pytest.approx(50.0)


def test_retrieval_blind_is_the_best_recall_without_images():
    counts = [5] * 8
    blind = retrieval_blind(counts)
    assert blind["i2t_r1"] == pytest.approx(12.5) and blind["i2t_r10"] == 100.0
    assert blind["t2i_r5"] == pytest.approx(62.5)
    # a text-only score matrix (every image row the same) reaches it exactly, images in index order
    t2i = [i for i, c in enumerate(counts) for _ in range(c)]
    text_scores = torch.arange(len(t2i), 0, -1, dtype=torch.float32)
    order = torch.tensor([t2i.index(i) for i in range(8)])      # one text of each image ranked first
    text_scores[order] += 1000
    sim = text_scores.expand(8, -1)
    assert recall_at_k(sim, t2i) == pytest.approx(blind)


def test_majority_blind():
    assert majority_blind([0, 1, 1, 2], [1, 1, 0, 2]) == {"accuracy": 50.0}


class _Items(torch.utils.data.Dataset):
    def __init__(self, image_ids):
        self.records = [VqaRecord(question_id=i, image_id=m, image_path=None, question="q", answers=[], labels=[],
                                  scores=[]) for i, m in enumerate(image_ids)]

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        image_id = self.records[index].image_id
        return {"image": torch.full((1,), float(image_id)), "question_id": index}


def test_shuffled_images_move_every_image_and_keep_questions_of_one_image_together():
    ds = _Items([1, 1, 2, 3, 3, 3, 4])
    swapped = ImageSwap(ds, "shuffled", seed=0)
    shown = [float(swapped[i]["image"]) for i in range(len(ds))]
    assert all(s != r.image_id for s, r in zip(shown, ds.records))
    assert shown[0] == shown[1] and shown[3] == shown[4] == shown[5]
    assert sorted(set(shown)) == [1.0, 2.0, 3.0, 4.0]                 # a permutation of the distinct images
    assert [swapped[i]["question_id"] for i in range(len(ds))] == list(range(len(ds)))
    assert swapped.records is ds.records
    constant = ImageSwap(ds, "constant")
    assert {float(constant[i]["image"]) for i in range(len(ds))} == {1.0}


def test_clearly_ahead_needs_the_margin_over_blind_and_shuffled():
    controls = {"metric": "accuracy", "margin": 10.0, "model": {"accuracy": 70.0}, "blind": {"accuracy": 55.0},
                "shuffled": {"accuracy": 50.0}}
    assert clearly_ahead(controls)
    assert not clearly_ahead(controls, 64.0)
    assert not clearly_ahead({**controls, "shuffled": {"accuracy": 61.0}})


def test_complementary_vqa_pairs_the_images_and_leaves_the_question_prior_near_the_constant(tmp_path):
    cfg = WorldConfig.needs_the_image(seed=0, coco_train_images=64, coco_val_images=32)
    manifest = generate_world(tmp_path, cfg)
    for split in ("train", "val"):
        questions = json.loads(manifest.path(f"vqa_questions_{split}").read_text())["questions"]
        annotations = {a["question_id"]: a for a in
                       json.loads(manifest.path(f"vqa_annotations_{split}").read_text())["annotations"]}
        by_question = collections.defaultdict(list)
        for q in questions:
            by_question[q["question"]].append((q["image_id"], annotations[q["question_id"]]["multiple_choice_answer"]))
        asked = collections.Counter((q["image_id"], q["question"]) for q in questions)
        assert max(asked.values()) == 1
        pairs = collections.defaultdict(dict)       # (pair, question) -> {image: answer}
        first = min(q["image_id"] for q in questions)
        for question, seen in by_question.items():
            for image_id, answer in seen:
                pairs[((image_id - first) // 2, question)][image_id] = answer
        assert all(len(p) == 2 and len(set(p.values())) == 2 for p in pairs.values())
    # the exact question-only prior on val: right on half the yes/no questions (the other half get the partial
    # credit of the 0-2 disagreeing annotators, about 0.3 on average), so it stays far below a model that looks
    from beit3_plugins.data import AnswerVocab, read_vqa

    root = manifest.root
    vocab = AnswerVocab.from_annotations(manifest.path("vqa_annotations_train"))
    records = {s: read_vqa(manifest.path(f"vqa_questions_{s}"), manifest.path(f"vqa_annotations_{s}"),
                           f"{root}/coco/{s}2014", vocab, drop_out_of_vocab=False) for s in ("train", "val")}
    blind = vqa_blind(records["train"], records["val"])
    assert blind["vqa_accuracy_yes/no"] < 70.0 and blind["vqa_accuracy"] < 60.0, blind


def test_complementary_vqa_is_opt_in_and_checked():
    with pytest.raises(ValueError, match="needs vqa_complementary"):
        WorldConfig(vqa_questions="simple")
    with pytest.raises(ValueError, match="even"):
        WorldConfig(vqa_complementary=True, coco_val_images=15)
    assert not WorldConfig().vqa_complementary and math.isclose(WorldConfig().textured_fraction, 0.5)
