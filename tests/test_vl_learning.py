"""Every task learns on the shape world, on CPU, with the tiny backbone from scratch.

Thresholds and why they mean learning:
* VQA (held-out val questions): the best single constant answer scores 27.9% official accuracy on the
  default world's val split; the test requires 35%.
* retrieval (held-out Karpathy val, 8 images x 5 captions): chance text->image R@1 is 1/8 = 12.5%;
  the test requires 30%, and the mean of R@1/5/10 to exceed its chance value.
* image classification as retrieval over class names and the linear ImageNet head (train split, tiny set
  overfit; 3 shape classes, chance 33%): required 60%.
* NLVR2 (48 training pairs, overfit; chance 50%, balanced labels): required 75%.
* captioning (training images, overfit; a caption sharing no 4-gram scores BLEU-4 ~ 0): required
  BLEU-4 >= 10 and CIDEr > 20 with greedy decoding through the key/value cache.
* text classification (language-only path, held-out rows of a GLUE-style TSV built from the corpus:
  "does the sentence mention a red shape"; chance 50%, majority <= 75%): required 85%.
Steps are a few dozen to a couple of hundred per task (32 px images, 24-token texts).
"""
import csv
import random

import pytest

from beit3_plugins.data import read_text_lines
from beit3_plugins.vl_tasks.train import compose_config, run


def _run(task, root, spm, out, *extra):
    cfg = compose_config([f"task={task}", "model=beit3_tiny", "preset=cpu_tiny", f"data.root={root}",
                          f"data.tokenizer={spm}", f"train.output_dir={out}", "train.tensorboard=false", *extra])
    result = run(cfg)
    losses = [float(r["value"]) for r in csv.DictReader(open(out / "metrics.csv"))
              if r["split"] == "train" and r["name"] == "loss"]
    assert losses[-1] < losses[0], f"{task}: training loss did not fall ({losses[0]:.3f} -> {losses[-1]:.3f})"
    print(task, result["eval"], result["seconds"])
    return result["eval"]


def test_vqa_beats_the_best_constant_answer(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    ev = _run("vqa", root, tiny_spm, tmp_path, "train.epochs=12", "train.lr=5e-4", "train.head_lr_mult=10")
    assert ev["vqa_accuracy"] >= 35.0, ev


def test_retrieval_ranks_held_out_pairs_above_chance(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    ev = _run("retrieval", root, tiny_spm, tmp_path, "train.epochs=6")
    assert ev["t2i_r1"] >= 30.0, ev


def test_classification_as_image_text_retrieval_fits(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    ev = _run("image_text_classification", root, tiny_spm, tmp_path, "train.epochs=15", "train.eval_split=train",
              "train.batch_size=8")
    assert ev["accuracy"] >= 60.0, ev


def test_image_classification_linear_head_fits(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    ev = _run("image_classification", root, tiny_spm, tmp_path, "train.epochs=15", "train.eval_split=train",
              "train.batch_size=8", "task.label_smoothing=0.0")
    assert ev["accuracy"] >= 60.0, ev


def test_nlvr2_fits_its_training_pairs(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    ev = _run("nlvr2", root, tiny_spm, tmp_path, "train.epochs=25", "train.eval_split=train", "train.batch_size=8")
    assert ev["accuracy"] >= 75.0, ev


def test_captioning_generates_the_training_captions(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    ev = _run("captioning", root, tiny_spm, tmp_path, "train.epochs=6", "train.eval_split=train",
              "task.beam_size=1", "task.max_gen_len=16", "task.mask_prob=0.5")
    assert ev["bleu4"] >= 10.0 and ev["cider"] > 20.0, ev


def test_text_classification_language_only(data_world, tiny_spm, tmp_path):
    root, manifest = data_world
    lines = read_text_lines(manifest.path("text_corpus"))
    random.Random(0).shuffle(lines)
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    for name, rows in (("train.tsv", lines[:320]), ("dev.tsv", lines[320:])):
        with open(glue / name, "w") as handle:
            handle.write("sentence\tlabel\n")
            for line in rows:
                handle.write(f"{line}\t{int('red' in line.split())}\n")
    share = sum("red" in l.split() for l in lines[320:]) / len(lines[320:])
    assert 0.25 <= share <= 0.75
    ev = _run("text_classification", tmp_path, tiny_spm, tmp_path / "out", "train.epochs=6")
    assert ev["accuracy"] >= 85.0, ev
