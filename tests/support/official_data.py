"""Inputs of the official-data goldens (tests/support/golden/official_data): the small world they were made on,
crafted VQA annotations whose majority answers need the official normalisation, and the answer strings whose
official ``normalize_word`` output is stored. The golden maker and the tests build them from here, so both see
the same bytes."""
from __future__ import annotations

import json
import math
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden" / "official_data"

# a world small enough to commit the official indexes of; every benchmark folder in the official layout
WORLD = dict(seed=0, formats=("text", "coco", "vqa", "flickr30k", "nlvr2", "imagenet", "nocaps"),
             coco_train_images=24, coco_val_images=8, vqa_test_images=4, flickr_train_images=8,
             flickr_val_images=4, flickr_test_images=4, nlvr2_train_sets=3, nlvr2_eval_sets=2,
             imagenet_train_per_class=4, imagenet_val_per_class=2, nocaps_val_images=4, nocaps_test_images=4)
SPM_PIECES = 128

# majority answers as annotators write them: case, punctuation, number words, articles, contractions, commas
ANSWER_FORMS = [
    "yes", "Yes", "yes.", "no", "No!", "2", "two", "Two", "1,000", "1000", "dont know", "don't know",
    "the red one", "red one", "a dog", "Dog", "3.5", "red, white", "red white", "it's", "its", "t-shirt",
    "t shirt", "left/right", "(none)", "none", "0", "ten", "10", "hes", "he's", "what's", "whats", "blue.",
    "o'clock", "oclock", "ma'am", "maam", "#1", "@home", "x-ray", "X-Ray", "black & white", "black and white",
    "mid-air", "cant tell", "can't tell", "the", "a", "an apple", "APPLE", "couldn'tve", "couldnt've",
]


def write_crafted_vqa(root: Path) -> Path:
    """VQA v2 files (official layout under ``root``) whose majority answers repeat the ``ANSWER_FORMS`` 1-12
    times in a shuffled but fixed order; annotator answers mix raw forms. No images: only the answer list and
    the targets depend on them. Returns ``root``."""
    vqa = root / "vqa"
    vqa.mkdir(parents=True, exist_ok=True)
    for folder in ("train2014", "val2014", "test2015"):
        (root / folder).mkdir(exist_ok=True)
    order = []
    for i, form in enumerate(ANSWER_FORMS):
        order += [form] * (1 + (i * 7) % 12)
    assert math.gcd(37, len(order)) == 1  # so stepping by 37 is a permutation: first appearances interleave
    order = [order[(j * 37) % len(order)] for j in range(len(order))]
    split_at = (len(order) * 3) // 4
    for split, majority in (("train2014", order[:split_at]), ("val2014", order[split_at:])):
        base = 1 if split == "train2014" else 500001
        questions, annotations = [], []
        for n, answer in enumerate(majority):
            qid, image_id = (base + n) * 10, base + n // 3
            others = [ANSWER_FORMS[(n + k) % len(ANSWER_FORMS)] for k in range(4)]
            given = [answer] * 6 + others
            questions.append({"image_id": image_id, "question": f"question {qid}?", "question_id": qid})
            annotations.append({"question_id": qid, "image_id": image_id, "question_type": "what",
                                "answer_type": "other", "multiple_choice_answer": answer,
                                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                            for k, a in enumerate(given)]})
        (vqa / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(
            json.dumps({"data_subtype": split, "questions": questions}))
        (vqa / f"v2_mscoco_{split}_annotations.json").write_text(
            json.dumps({"data_subtype": split, "annotations": annotations}))
    for split in ("test2015", "test-dev2015"):
        (vqa / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(
            json.dumps({"data_subtype": split, "questions": []}))
    return root
