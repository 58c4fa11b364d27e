"""The task plugins learn on the shape world, on CPU, with the tiny backbone from scratch.

Thresholds and why they mean learning (measured values on the default world in brackets):
* VQA (held-out val questions): the best single constant answer scores 27.9% official accuracy on the
  default world's val split; required 35% [48.9%].
* retrieval (held-out Karpathy val, 8 images x 5 captions): the mean of R@1/5/10 over both directions
  for a random ranking is computed exactly below (~53%); required chance + 8 points and image->text
  R@1 >= 25% (chance 12.5%) [r_mean 68.3, i2t R@1 37.5].
* image classification, linear head (training images, tiny-set fit; 3 shape classes, chance 33.3%):
  required 45% [50%] - shape identity at 64 px is slow to learn from scratch.
* captioning (training images; an untrained model scores BLEU-1 ~10 and CIDEr ~0): required BLEU-1 >= 30
  and CIDEr >= 15 with greedy decoding through the key/value cache [47.6 / 27.1].
* text classification (language-only path, held-out rows of a GLUE-style TSV built from the corpus:
  "does the sentence mention red"; chance 50%): required 85%.
* NLVR2 reads the sentence (800 training pairs of the "presence" statements: is a red shape in the left /
  right / both / at least one image; held-out dev as contrast pairs: 100 image pairs with red in exactly
  one image, each judged by "the left image contains a red shape" and by "the right image ...", one true
  and one false): a model that ignores the sentence, or the images, scores exactly 50% there; the standard
  error of a coin on 200 items is 3.5 points; required 75% [16 epochs: 97.5%, 95.5% and 96% with training
  seeds 42, 1, 2; 12 epochs: 82%; 8 epochs: 52.5%]. The released head init (0.001) leaves a model trained
  from scratch at exactly 50%; the test uses task.head_init_scale=1.0.
* image classification as image-to-text retrieval over class-name prompts (held-out val, 96 images of a
  world with the 12 "<colour>_<shape>" classes, 64 training images per class; chance 8.3%, a rule that
  gets the colour right and guesses the shape 33.3%; the standard error of chance on 96 images is 2.8
  points): required 30% [20 epochs at lr 3e-4: 50%]. At lr 1e-3 (the preset) the class-text embeddings
  collapse onto one vector within ~15 steps and the loss stays at ln 12.
"""
import csv
import math
import random

import pytest

from beit3_plugins.data import WorldConfig, generate_world, read_text_lines
from beit3_plugins.vl_tasks.train import compose_config, run

pytestmark = [pytest.mark.slow]


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
    ev = _run("vqa", root, tiny_spm, tmp_path, "train.epochs=12", "train.lr=5e-4", "train.head_lr_mult=10",
              "task.min_answer_count=1")  # the official 9 drops colours seen 7-8 times in this tiny world
    assert ev["vqa_accuracy"] >= 35.0, ev


def test_retrieval_ranks_held_out_pairs_above_chance(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    ev = _run("retrieval", root, tiny_spm, tmp_path, "train.epochs=15", "train.lr=3e-4")
    n_img, per = 8, 5
    n_txt = n_img * per
    chance = [k / n_img * 100 for k in (1, 5, 10)]                      # text -> image
    chance += [100 * (1 - math.comb(n_txt - per, k) / math.comb(n_txt, k)) for k in (1, 5, 10)]  # image -> text
    assert ev["r_mean"] >= sum(chance) / 6 + 8.0, (ev, chance)
    assert ev["i2t_r1"] >= 25.0, ev


def test_image_classification_linear_head_fits(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    ev = _run("image_classification", root, tiny_spm, tmp_path, "train.epochs=15", "train.eval_split=train",
              "train.batch_size=8", "task.label_smoothing=0.0", "task.image_size=64")
    assert ev["accuracy"] >= 45.0, ev


def test_captioning_generates_the_training_captions(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    ev = _run("captioning", root, tiny_spm, tmp_path, "train.epochs=10", "train.eval_split=train", "task.image_size=64",
              "task.beam_size=1", "task.max_gen_len=16", "task.mask_prob=0.5")
    assert ev["bleu1"] >= 30.0 and ev["cider"] >= 15.0, ev


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


def test_nlvr2_reads_the_sentence_on_held_out_contrast_pairs(tiny_spm, tmp_path):
    root = tmp_path / "world"
    manifest = generate_world(root, WorldConfig(seed=0, formats=("nlvr2",), nlvr2_statements="presence",
                                                nlvr2_eval_contrast=True, nlvr2_train_sets=200,
                                                nlvr2_eval_sets=50))
    assert manifest.counts["nlvr2_dev"] == 200 and manifest.counts["nlvr2_dev_true"] == 100
    ev = _run("nlvr2", root, tiny_spm, tmp_path / "out", "train.epochs=16", "train.lr=3e-4",
              "task.head_init_scale=1.0")
    assert ev["accuracy"] >= 75.0, ev


def test_image_classification_as_retrieval_over_class_names(tiny_spm, tmp_path):
    root = tmp_path / "world"
    manifest = generate_world(root, WorldConfig(seed=0, formats=("imagenet",), imagenet_classes="kind_color",
                                                imagenet_train_per_class=64, imagenet_val_per_class=8))
    assert len(manifest.classes["imagenet"]) == 12
    ev = _run("image_text_classification", root, tiny_spm, tmp_path / "out", "train.epochs=20", "train.lr=3e-4",
              "train.eval_every_epochs=0")
    assert ev["accuracy"] >= 30.0, ev
