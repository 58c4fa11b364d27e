"""The task plugins learn on the shape world, on CPU, with the tiny backbone from scratch.

Every task that sees images is held to controls computed on its evaluation split (vl_tasks/controls.py, with
``train.controls=true``): the blind baseline (the best question-/text-only predictor built from the training
split) and the same trained model with the images shuffled across the split. The model must beat both by
``controls.margin``: 3 standard errors of the headline metric (binomial at p = 0.5 for accuracies, 50 / sqrt(n)
points; for retrieval's r_mean the bound (50 / sqrt(images) + 50 / sqrt(texts)) / 2; for CIDEr the per-image
spread of the model's scores, sqrt(2) * std / sqrt(images)), so a blind model passes by luck about once in 700
runs. Negative control: the same model fed one constant image (a blind model) must fail that assertion.
Measured (model / blind / shuffled / constant, margin; 2-core CPU shared with other jobs):

* VQA (WorldConfig.needs_the_image(for_vqa=True): "simple" questions in VQA v2 complementary pairs, 644
  training / 256 held-out val questions): 81.1 / 53.7 / 48.4 / 49.1, margin 9.4 (16 epochs, 640 steps). On the
  default world's questions the same trainer reaches the question-only prior (55-57) and no more: model,
  shuffled and constant images scored identically.
* retrieval (needs_the_image(): 128 training images, held-out Karpathy val of 32 images x 5 captions): r_mean
  47.0 / 16.7 / 10.7 / 12.5, margin 19.2 (15 epochs).
* image classification, linear head (training images, tiny-set fit; 3 shape classes, chance 33.3%):
  required 45% [50%] - shape identity at 64 px is slow to learn from scratch.
* captioning (needs_the_image(for_captioning=True): one shape per image, every caption names its colour and kind
  in one of five frames - "a red circle", "a picture of ...", "a small red circle", "an image of a small ...",
  "a drawing of ..." - all five per image, so the frames get zero idf in CIDEr-D and a single caption fits one
  colour-kind pair in twelve; 128 training / 128 held-out Karpathy val images; 64 px, lr 1e-3, mask_prob 0.9,
  24 epochs, 960 steps): CIDEr 271.9 / 93.3 (blind caption "a drawing of a green circle") / 87.6 / 92.9,
  margin 67.5; 146 s of training, 234 s for the whole test. The model mostly names the colour right and
  guesses the kind; decoding is greedy. Training seed 1: 298.6 / 93.3 / 94.6 / 84.6, margin 69.4; the demo's
  300-piece tokenizer: 310.4 / 93.3 / 105.9 / 92.9, margin 75.7. Shorter runs: 16 epochs 202.2 (seed 42) and
  175.3 (seed 1, margin 58.8), 20 epochs 282.8 (seed 42) but 89.0 for seed 1 (its greedy captions garbled),
  so shorter runs are not stable across seeds at lr 1e-3; lr 3e-4 does not learn the language in 16 epochs
  (CIDEr 9.5). On
  needs_the_image()'s scenes (1-3 shapes, the 8-template grammar with counts and generic frames) the blind
  caption "two shapes one of them is a red triangle" out-scored the model: 43.9 / 88.1 / 37.4 / 36.7,
  margin 26.4 (10 epochs, 32 val images).
* text classification (language-only path, held-out rows of a GLUE-style TSV built from the corpus:
  "does the sentence mention red"; chance 50%): required 85%.
* NLVR2 reads the sentence (800 training pairs of the "presence" statements: is a red shape in the left /
  right / both / at least one image; held-out dev as contrast pairs: 100 image pairs with red in exactly
  one image, each judged by "the left image contains a red shape" and by "the right image ...", one true
  and one false): a model that ignores the sentence, or the images, scores exactly 50% there; the standard
  error of a coin on 200 items is 3.5 points; required 75% [16 epochs: 97.5%, 95.5% and 96% with training
  seeds 42, 1, 2; 12 epochs: 82%; 8 epochs: 52.5%] and the controls (blind = the most frequent label of
  each sentence, 50%; margin 10.6). The released head init (0.001) leaves a model trained from scratch at
  exactly 50%; the test uses task.head_init_scale=1.0.
* image classification as image-to-text retrieval over class-name prompts (held-out val, 96 images of a
  world with the 12 "<colour>_<shape>" classes, 64 training images per class; chance 8.3%, a rule that
  gets the colour right and guesses the shape 33.3%; the standard error of chance on 96 images is 2.8
  points): required 30% [20 epochs at lr 3e-4: 50%] and the controls [47.9 / blind (majority class) 8.3 /
  shuffled 6.3 / constant 8.3, margin 15.3]. At lr 1e-3 (the preset) the class-text embeddings collapse onto one vector within ~15 steps
  and the loss stays at ln 12.
"""
import csv
import random

import pytest

from beit3_plugins.data import WorldConfig, generate_world, read_text_lines
from beit3_plugins.vl_tasks.controls import clearly_ahead
from beit3_plugins.vl_tasks.train import compose_config, run

pytestmark = [pytest.mark.slow]


def _run(task, root, spm, out, *extra, full=False):
    cfg = compose_config([f"task={task}", "model=beit3_tiny", "preset=cpu_tiny", f"data.root={root}",
                          f"data.tokenizer={spm}", f"train.output_dir={out}", "train.tensorboard=false",
                          f"train.controls={str(full).lower()}", *extra])
    result = run(cfg)
    losses = [float(r["value"]) for r in csv.DictReader(open(out / "metrics.csv"))
              if r["split"] == "train" and r["name"] == "loss"]
    assert losses[-1] < losses[0], f"{task}: training loss did not fall ({losses[0]:.3f} -> {losses[-1]:.3f})"
    print(task, result["eval"], result.get("controls"), result["seconds"])
    return result if full else result["eval"]


def _assert_needs_the_image(result):
    """The model beats the blind baseline and the shuffled-image control by ``controls.margin`` (3 standard
    errors of the headline metric: binomial at p = 0.5 for accuracies, its bound for retrieval's r_mean, the
    per-image spread for CIDEr); the same trained model fed one constant image must not (negative control:
    it shows the assertion can fail)."""
    c = result["controls"]
    metric = c["metric"]
    table = {k: round(c[k][metric], 2) for k in ("model", "blind", "shuffled", "constant")}
    assert clearly_ahead(c), f"{result['task']}: not {c['margin']:.1f} points ahead of the controls: {table}"
    assert not clearly_ahead(c, c["constant"][metric]), f"negative control passed: {table}"


def test_vqa_needs_the_image(tiny_spm, tmp_path):
    root = tmp_path / "world"
    generate_world(root, WorldConfig.needs_the_image(for_vqa=True, seed=0))
    result = _run("vqa", root, tiny_spm, tmp_path / "out", "train.epochs=16", "train.lr=3e-4",
                  "train.eval_every_epochs=0", "task.min_answer_count=1", full=True)
    _assert_needs_the_image(result)


def test_retrieval_needs_the_image(tiny_spm, tmp_path):
    root = tmp_path / "world"
    generate_world(root, WorldConfig.needs_the_image(seed=0))
    result = _run("retrieval", root, tiny_spm, tmp_path / "out", "train.epochs=15", "train.lr=3e-4",
                  "train.eval_every_epochs=0", full=True)
    _assert_needs_the_image(result)


def test_image_classification_linear_head_fits(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    ev = _run("image_classification", root, tiny_spm, tmp_path, "train.epochs=15", "train.eval_split=train",
              "train.batch_size=8", "task.label_smoothing=0.0", "task.image_size=64")
    assert ev["accuracy"] >= 45.0, ev


def test_captioning_needs_the_image(tiny_spm, tmp_path):
    root = tmp_path / "world"
    generate_world(root, WorldConfig.needs_the_image(for_captioning=True, seed=0))
    result = _run("captioning", root, tiny_spm, tmp_path / "out", "train.epochs=24", "task.image_size=64",
                  "task.beam_size=1", "task.max_gen_len=16", "task.mask_prob=0.9", "train.eval_every_epochs=0",
                  full=True)
    _assert_needs_the_image(result)


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
    result = _run("nlvr2", root, tiny_spm, tmp_path / "out", "train.epochs=16", "train.lr=3e-4",
                  "task.head_init_scale=1.0", full=True)
    assert result["eval"]["accuracy"] >= 75.0, result["eval"]
    _assert_needs_the_image(result)


def test_image_classification_as_retrieval_over_class_names(tiny_spm, tmp_path):
    root = tmp_path / "world"
    manifest = generate_world(root, WorldConfig(seed=0, formats=("imagenet",), imagenet_classes="kind_color",
                                                imagenet_train_per_class=64, imagenet_val_per_class=8))
    assert len(manifest.classes["imagenet"]) == 12
    result = _run("image_text_classification", root, tiny_spm, tmp_path / "out", "train.epochs=20",
                  "train.lr=3e-4", "train.eval_every_epochs=0", full=True)
    assert result["eval"]["accuracy"] >= 30.0, result["eval"]
    _assert_needs_the_image(result)
