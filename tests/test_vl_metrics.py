"""Metric implementations against cases computed by hand from the metric definitions."""
import math

import numpy as np
import pytest

from beit3_plugins.registry import METRICS
from beit3_plugins.vl_tasks.metrics import (accuracy, bleu, caption_metrics, caption_tokenize, cider, meteor,
                                            meteor_available, recall_at_k, spice, spice_available, vqa_accuracy,
                                            vqa_question_accuracy)


def test_metrics_are_registered():
    assert {"vqa_accuracy", "recall_at_k", "bleu", "cider", "meteor", "spice", "accuracy"} <= set(METRICS.names())


def test_vqa_accuracy_leave_one_out():
    # 2 of 10 annotators said "2": 8 subsets hold both (2/3), 2 subsets hold one (1/3) -> (8*2/3 + 2*1/3)/10 = 0.6
    answers = ["2"] * 2 + ["3"] * 8
    assert vqa_question_accuracy("2", answers) == pytest.approx(0.6)
    # 3 annotators: 7 subsets keep 3 matches (1.0), 3 subsets keep 2 (2/3) -> 0.9
    assert vqa_question_accuracy("yes", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    assert vqa_question_accuracy("yes", ["yes"] * 4 + ["no"] * 6) == pytest.approx(1.0)
    assert vqa_question_accuracy("blue", ["red"] * 10) == 0.0


def test_vqa_accuracy_normalises_like_the_official_evaluation():
    # number words -> digits, articles dropped, punctuation stripped, contractions restored
    assert vqa_question_accuracy("Two", ["2"] * 10) == 1.0
    assert vqa_question_accuracy("a red circle.", ["red circle"] * 10) == 1.0
    assert vqa_question_accuracy("dont", ["don't"] * 10) == 1.0
    out = vqa_accuracy({1: "two", 2: "no"}, {1: ["2"] * 10, 2: ["yes"] * 10})
    assert out["vqa_accuracy"] == pytest.approx(50.0)
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


def test_caption_tokenize_and_accuracy():
    assert caption_tokenize("A Red, circle!  and a dog's toy.") == ["a", "red", "circle", "and", "a", "dog's", "toy"]
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0])["accuracy"] == 50.0
    with pytest.raises(ValueError):
        accuracy([], [])


def test_meteor_runs_the_real_scorer():
    """setup_env.sh installs pycocoevalcap (the METEOR 1.5 jar); this machine image has Java."""
    assert meteor_available(), "METEOR needs Java and pycocoevalcap (installed by tools/setup_env.sh)"
    refs = {1: ["a red circle on the left"], 2: ["a green triangle near a yellow circle"]}
    exact = meteor({1: "a red circle on the left"}, {1: refs[1]})["meteor"]
    unrelated = meteor({2: "two blue squares"}, {2: refs[2]})["meteor"]
    partial = meteor({2: "a green triangle near two blue squares"}, {2: refs[2]})["meteor"]
    assert exact == pytest.approx(100.0) and unrelated == 0.0 and 0.0 < partial < 100.0
    assert "meteor" in caption_metrics({1: "a red circle on the left"}, {1: refs[1]})


def test_spice_without_its_parser_models_names_what_is_missing():
    """SPICE's Stanford CoreNLP jars are a first-use download, impossible offline: a clear error, and the
    caption metrics go on without it."""
    assert not spice_available()
    with pytest.raises(ImportError, match="Stanford CoreNLP"):
        spice({1: "a red circle"}, {1: ["a red circle"]})
    assert "spice" not in caption_metrics({1: "a red circle"}, {1: ["a red circle"]})
