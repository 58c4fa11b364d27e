"""Metrics against the official scorers (VQA evaluation script goldens, pycocoevalcap) and hand-computed cases."""
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from beit3_plugins.registry import METRICS
from beit3_plugins.vl_tasks.metrics import (accuracy, bleu, caption_metrics, caption_tokenize, cider, meteor,
                                            meteor_available, recall_at_k, spice, spice_available,
                                            tokenize_captions, vqa_accuracy, vqa_eval_normalize, vqa_question_accuracy)


def test_metrics_are_registered():
    assert {"vqa_accuracy", "recall_at_k", "bleu", "cider", "rouge_l", "meteor", "spice", "accuracy"} <= set(METRICS.names())


GOLDEN_VQA = Path(__file__).resolve().parents[1] / "support" / "golden" / "vqa_eval" / "crafted_cases.json"


def test_vqa_accuracy_equals_the_official_script_on_crafted_cases():
    """tests/support/golden/vqa_eval/crafted_cases.json: 41 crafted questions scored by the official VQA evaluation
    (GT-Vision-Lab/VQA @ a013f00, PythonEvaluationTools/vqaEvaluation/vqaEval.py run under python3 after
    print() edits, n=2 rounding): per-question accuracy, overall and per answer type."""
    golden = json.loads(GOLDEN_VQA.read_text())
    for case in golden["cases"]:
        ours = vqa_question_accuracy(case["prediction"], case["answers"])
        assert round(100 * ours, 2) == case["official_accuracy"], case
    preds = {c["question_id"]: c["prediction"] for c in golden["cases"]}
    answers = {c["question_id"]: c["answers"] for c in golden["cases"]}
    types = {c["question_id"]: c["answer_type"] for c in golden["cases"]}
    out = vqa_accuracy(preds, answers, answer_types=types)
    assert round(out["vqa_accuracy"], 2) == golden["overall"]
    for answer_type, value in golden["per_answer_type"].items():
        assert round(out[f"vqa_accuracy_{answer_type}"], 2) == value


def test_vqa_normalises_only_when_annotators_disagree():
    assert vqa_question_accuracy("yes.", ["yes"] * 10) == 0.0          # the script's rule
    assert vqa_question_accuracy("yes.", ["yes"] * 9 + ["no"]) == 1.0
    assert vqa_question_accuracy("Two", ["2"] * 10) == 0.0
    assert vqa_question_accuracy("Two", ["2"] * 9 + ["3"]) == 1.0
    # leave-one-out: 2 of 10 said "2" -> (8 * 2/3 + 2 * 1/3) / 10
    assert vqa_question_accuracy("2", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)
    assert vqa_eval_normalize("The Red-ish one") == "red ish 1"
    assert vqa_eval_normalize("dont know") == "don't know" and vqa_eval_normalize("its") == "its"
    with pytest.raises(KeyError, match="no annotations"):
        vqa_accuracy({3: "x"}, {1: ["x"]})
    with pytest.raises(ValueError, match="empty"):
        vqa_accuracy({}, {})


def test_recall_at_k_both_directions():
    # 2 images, 4 texts: texts 0,1 -> image 0; texts 2,3 -> image 1
    sim = np.array([[0.1, 0.9, 0.8, 0.0],    # image 0: best text 1 (own) -> rank 0
                    [0.2, 0.3, 0.1, 0.5]])   # image 1: order 3 (own) -> rank 0
    out = recall_at_k(sim, [0, 0, 1, 1], ks=(1, 2))
    assert out["i2t_r1"] == 100.0
    # text->image: text0 col [0.1, 0.2] -> image 1 first (miss at 1), text1 hit, text2 [0.8,0.1] miss, text3 hit
    assert out["t2i_r1"] == 50.0
    assert out["t2i_r2"] == 100.0
    sim[0] = [0.0, 0.1, 0.9, 0.8]            # image 0's own texts now rank 2 and 3
    out = recall_at_k(sim, [0, 0, 1, 1], ks=(1, 2, 3))
    assert (out["i2t_r1"], out["i2t_r2"], out["i2t_r3"]) == (50.0, 50.0, 100.0)
    with pytest.raises(ValueError, match="one entry per text"):
        recall_at_k(sim, [0, 1])


def test_bleu_hand_computed():
    # hyp "the cat sat on the mat" vs ref "the cat is on the mat" (6 tokens each, BP = 1)
    # p1 = 5/6, p2 = 3/5 (the cat, on the, the mat), p3 = 1/4 (on the mat), p4 = 0/3 -> tiny smoothing
    out = bleu({1: "The cat sat on the mat."}, {1: ["the cat is on the mat"]})
    assert out["bleu1"] == pytest.approx(100 * 5 / 6, rel=1e-6)
    assert out["bleu2"] == pytest.approx(100 * math.sqrt(5 / 6 * 3 / 5), rel=1e-6)
    assert out["bleu3"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3), rel=1e-6)
    assert out["bleu4"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 1 / 4 * 1e-15 / 3) ** 0.25, rel=1e-3)
    # identical sentences -> 100; brevity penalty for a short hypothesis: exp(1 - 4/2)
    assert bleu({1: "a red circle here"}, {1: ["a red circle here"]})["bleu4"] == pytest.approx(100.0)
    short = bleu({1: "a red"}, {1: ["a red circle here"]})
    assert short["bleu1"] == pytest.approx(100 * math.exp(1 - 4 / 2), rel=1e-6)
    # the closest reference length is used (ties -> shorter)
    assert bleu({1: "a red"}, {1: ["a red circle here", "a red x"]})["bleu1"] == pytest.approx(
        100 * math.exp(1 - 3 / 2), rel=1e-6)


def test_cider_hand_computed():
    # two images; hypothesis of image 1 equals its only reference. With 2 documents, an n-gram found in
    # both images' references has idf log(2) - log(2) = 0; "red" and "blue" appear in one: idf log 2.
    refs = {1: ["red circle"], 2: ["blue circle"]}
    out = cider({1: "red circle", 2: "green square"}, refs)
    # image 1: unigram vectors equal up to the zero-weight "circle" -> cos 1; bigram "red circle": cos 1
    # -> n=1: 1, n=2: 1, n=3/4: 0 (empty) -> mean 0.5; x10 / 1 ref = 5. image 2: no overlap -> 0.
    assert out["cider"] == pytest.approx(100 * (5.0 + 0.0) / 2)
    # length penalty: bigram counts differ by 1 -> exp(-1/72) on every n
    out = cider({1: "red circle red", 2: "blue circle"}, refs)
    assert 0 < out["cider"] < 100 * (5.0 + 5.0) / 2


def _caption_world(n_images=12, n_refs=5, seed=0):
    rng = random.Random(seed)
    words = ["a", "the", "red", "green", "dog", "cat", "circle", "square", "on", "near", "big", "small",
             "two", "is", "sitting", "left", "of", "man's", "don't", "grass"]

    def sentence():
        text = " ".join(rng.choice(words) for _ in range(rng.randint(4, 11)))
        return text.capitalize() + rng.choice([".", "", " .", "!", ","])

    refs = {100 + i: [sentence() for _ in range(n_refs)] for i in range(n_images)}
    preds = {k: (v[0] if i % 3 == 0 else sentence()) for i, (k, v) in enumerate(refs.items())}
    return preds, refs


def test_caption_metrics_equal_pycocoevalcap():
    """Our caption metrics are COCOEvalCap's steps (PTB tokenizer, then each scorer) on the same captions."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    preds, refs = _caption_world()
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": preds[k]}] for k in refs})
    expected = {f"bleu{n}": 100 * v for n, v in enumerate(Bleu(4).compute_score(gts, res, verbose=0)[0], 1)}
    expected["meteor"] = 100 * Meteor().compute_score(gts, res)[0]
    expected["rouge_l"] = 100 * Rouge().compute_score(gts, res)[0]
    expected["cider"] = 100 * Cider().compute_score(gts, res)[0]
    ours = caption_metrics(preds, refs)
    assert ours["ptb_tokenizer"] == 1.0
    assert ("spice" in ours) == spice_available()
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=1e-9), name
    assert 0 < ours["cider"] and ours["bleu4"] < 100
    # the Python stand-in (no Java) tokenises nearly all of them as PTB does (PTB keeps "a." after a word)
    gts_py, res_py, used = tokenize_captions(preds, refs, use_ptb=False)
    same = sum(a == b for k in refs for a, b in zip(gts_py[k] + res_py[k], gts[k] + res[k]))
    assert not used and same >= 0.9 * 6 * len(refs)
    assert cider(preds, refs, use_ptb=False)["cider"] == pytest.approx(ours["cider"], rel=0.05)


def test_caption_tokenize_and_accuracy():
    assert caption_tokenize("A Red, circle!  and a dog's toy.") == ["a", "red", "circle", "and", "a", "dog", "'s", "toy"]
    assert caption_tokenize("It don't fit") == ["it", "do", "n't", "fit"]
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0])["accuracy"] == 50.0
    with pytest.raises(ValueError):
        accuracy([], [])


def test_meteor_runs_the_real_scorer():
    """setup_env.sh installs pycocoevalcap (the METEOR 1.5 jar); this machine image has Java."""
    assert meteor_available(), "METEOR needs Java and pycocoevalcap (installed by tools/setup_env.sh)"
    refs = {1: ["a red circle on the left"], 2: ["a green triangle near a yellow circle"]}
    both = meteor({1: "a red circle on the left", 2: "two blue squares"}, refs)["meteor"]
    assert 0.0 < both < 100.0   # one exact, one unrelated caption (values checked against Meteor() above)


def test_spice_without_its_parser_models_names_what_is_missing():
    """SPICE's Stanford CoreNLP jars are a first-use download, impossible offline: a clear error (and
    caption_metrics goes on without it: see test_caption_metrics_equal_pycocoevalcap)."""
    assert not spice_available()
    with pytest.raises(ImportError, match="Stanford CoreNLP"):
        spice({1: "a red circle"}, {1: ["a red circle"]})
