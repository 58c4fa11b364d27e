"""Every published fine-tuning recipe (base and large) is a config that composes with the released
hyper-parameters and trains a few steps on the data world with the tiny model (only size/steps overridden).

Published values: microsoft/unilm beit3/get_started/get_started_for_*.md and beit3/README.md (docs/recipes.md)."""
import json
import os
from pathlib import Path

import pytest

from beit3_plugins.vl_tasks.train import CONFIG_DIR, compose_config, run

pytestmark = [pytest.mark.slow]

# recipe -> (task, model, {dotted key: published value})
PUBLISHED = {
    "beit3_base_vqa": ("vqa", "beit3_base", {"task.image_size": 480, "train.lr": 3e-5, "train.layer_decay": 1.0,
                       "train.epochs": 10, "train.warmup_epochs": 1, "train.drop_path": 0.1, "train.weight_decay": 0.01,
                       "train.head_lr_mult": 20.0, "train.batch_size": 16, "train.randaug": True,
                       "task.train_splits": ["train", "trainable_val"], "task.holdout_images": 1000}),
    "beit3_large_vqa": ("vqa", "beit3_large", {"task.image_size": 480, "train.lr": 2e-5, "train.drop_path": 0.15,
                        "train.layer_decay": 1.0, "train.head_lr_mult": 20.0, "train.batch_size": 16,
                        "train.betas": [0.9, 0.98]}),
    "beit3_large_vqa_768_vg": ("vqa", "beit3_large", {"task.image_size": 768, "train.lr": 2e-5,
                               "task.train_splits": ["train", "trainable_val", "vg"]}),
    "beit3_base_captioning": ("captioning", "beit3_base", {"task.image_size": 480, "train.lr": 4e-5,
                              "train.epochs": 10, "train.warmup_epochs": 1, "train.drop_path": 0.1,
                              "train.weight_decay": 0.05, "train.batch_size": 32, "task.max_text_len": 32,
                              "task.mask_prob": 0.7, "task.label_smoothing": 0.1, "task.drop_worst_ratio": 0.2,
                              "task.drop_worst_after": 12000, "task.beam_size": 3, "task.length_penalty": 0.6}),
    "beit3_large_captioning": ("captioning", "beit3_large", {"train.lr": 8e-6, "task.drop_worst_after": 12000,
                               "task.length_penalty": 0.6}),
    "beit3_base_nocaps": ("captioning", "beit3_base", {"train.lr": 1e-5, "task.eval_dataset": "nocaps"}),
    "beit3_large_nocaps": ("captioning", "beit3_large", {"train.lr": 8e-6, "task.eval_dataset": "nocaps"}),
    "beit3_base_retrieval_coco": ("retrieval", "beit3_base", {"task.image_size": 384, "train.lr": 2e-4,
                                  "train.layer_decay": 0.65, "train.epochs": 15, "train.warmup_epochs": 3,
                                  "train.drop_path": 0.2, "train.batch_size": 192}),
    "beit3_large_retrieval_coco": ("retrieval", "beit3_large", {"train.lr": 5e-5, "train.layer_decay": 0.85,
                                   "train.epochs": 15, "train.warmup_epochs": 3, "train.batch_size": 96}),
    "beit3_base_retrieval_flickr30k": ("retrieval", "beit3_base", {"task.dataset": "flickr30k", "train.lr": 1e-4,
                                       "train.epochs": 20, "train.warmup_epochs": 5}),
    "beit3_large_retrieval_flickr30k": ("retrieval", "beit3_large", {"task.dataset": "flickr30k", "train.lr": 5e-5,
                                        "train.layer_decay": 0.85, "train.epochs": 20, "train.warmup_epochs": 5}),
    "beit3_base_nlvr2": ("nlvr2", "beit3_base", {"train.lr": 7e-4, "train.layer_decay": 0.65, "train.epochs": 20,
                         "train.warmup_epochs": 5, "train.drop_path": 0.2, "train.weight_decay": 0.2,
                         "train.batch_size": 32}),
    "beit3_large_nlvr2": ("nlvr2", "beit3_large", {"train.lr": 3e-4, "train.layer_decay": 0.85,
                          "train.drop_path": 0.2, "train.weight_decay": 0.2}),
    "beit3_base_imagenet": ("image_classification", "beit3_base", {"train.lr": 7e-4, "train.layer_decay": 0.65,
                            "train.epochs": 50, "train.warmup_epochs": 5, "train.drop_path": 0.15,
                            "train.batch_size": 128, "train.mixup": 0.8, "train.cutmix": 1.0,
                            "task.label_smoothing": 0.1}),
    "beit3_large_imagenet": ("image_classification", "beit3_large", {"train.lr": 2e-4, "train.layer_decay": 0.8,
                             "train.drop_path": 0.25, "train.batch_size": 128, "train.mixup": 0.8}),
    # intermediate stages (issue 13): the ImageNet-1k recipe from a 21k checkpoint with the head replaced,
    # and the contrastive stage on pretraining pairs at the _itc_ files' 224 px
    "beit3_base_in1k_from_in21k": ("image_classification", "beit3_base", {"train.lr": 7e-4, "train.layer_decay": 0.65,
                                   "train.epochs": 50, "train.drop_path": 0.15, "train.mixup": 0.8,
                                   "model.replace_heads": ["classifier"]}),
    "beit3_large_in1k_from_in21k": ("image_classification", "beit3_large", {"train.lr": 2e-4, "train.layer_decay": 0.8,
                                    "train.drop_path": 0.25, "model.replace_heads": ["classifier"]}),
    "beit3_base_retrieval_itc_stage": ("retrieval", "beit3_base", {"task.image_size": 224,
                                       "task.pairs_json": "coco/annotations/captions_train2014.json",
                                       "task.pairs_image_dir": "coco/train2014"}),
    "beit3_large_retrieval_itc_stage": ("retrieval", "beit3_large", {"task.image_size": 224, "train.lr": 5e-5,
                                        "train.layer_decay": 0.85}),
}


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return list(node) if hasattr(node, "__len__") and not isinstance(node, str) else node


def test_every_recipe_file_is_listed():
    assert {p.stem for p in (CONFIG_DIR / "recipe").glob("*.yaml")} == set(PUBLISHED)


@pytest.mark.parametrize("recipe", sorted(PUBLISHED))
def test_recipe_composes_with_the_published_values(recipe):
    task, model, values = PUBLISHED[recipe]
    cfg = compose_config([f"recipe={recipe}", "data.root=/data", "data.tokenizer=/beit3.spm"])
    assert cfg.task.name == task and cfg.model.name == model
    for key, value in values.items():
        assert _get(cfg, key) == (pytest.approx(value) if isinstance(value, float) else value), key
    if model == "beit3_large":
        assert cfg.train.activation_checkpointing


def _world_with_extras(root: Path, tmp: Path) -> Path:
    """The data world (its NoCaps in the official files) plus Visual Genome QA (question_answers.json over the
    world's train images), linked into a private root."""
    private = tmp / "root"
    private.mkdir()
    for child in root.iterdir():
        os.symlink(child, private / child.name)
    questions = json.loads((root / "coco/vqa/v2_OpenEnded_mscoco_train2014_questions.json").read_text())["questions"]
    annotations = {a["question_id"]: a for a in json.loads(
        (root / "coco/vqa/v2_mscoco_train2014_annotations.json").read_text())["annotations"]}
    (private / "visual_genome" / "images").mkdir(parents=True)
    vg = {}
    for q in questions[:24]:
        image = root / "coco" / "train2014" / f"COCO_train2014_{q['image_id']:012d}.jpg"
        link = private / "visual_genome" / "images" / f"{q['image_id']}.jpg"
        if not link.exists():
            os.symlink(image, link)
        vg.setdefault(q["image_id"], []).append({"qa_id": 10 ** 7 + q["question_id"], "image_id": q["image_id"],
                                                 "question": q["question"],
                                                 "answer": annotations[q["question_id"]]["multiple_choice_answer"]})
    (private / "visual_genome" / "question_answers.json").write_text(
        json.dumps([{"id": i, "qas": qas} for i, qas in vg.items()]))
    return private


@pytest.mark.parametrize("recipe", ["beit3_large_vqa_768_vg", "beit3_base_nocaps",
                                    "beit3_large_retrieval_coco", "beit3_large_nlvr2", "beit3_large_imagenet"])
def test_recipe_trains_a_few_steps_on_the_data_world(recipe, data_world, tiny_spm, tmp_path):
    root, _ = data_world
    world = _world_with_extras(root, tmp_path)
    out = run(compose_config([f"recipe={recipe}", "model=beit3_tiny", "preset=cpu_tiny", f"data.root={world}",
                              f"data.tokenizer={tiny_spm}", f"train.output_dir={tmp_path / 'out'}",
                              "train.max_steps=2", "train.tensorboard=false", "task.eval_batch_size=8",
                              # memory switch, not a hyper-parameter; on main at 22:40 the backbone's activation
                              # checkpointing fails in backward with a padding mask (reported to the lead)
                              "train.activation_checkpointing=false"]
                             + {"vqa": ["task.holdout_images=2"], "captioning": ["task.max_gen_len=6"]}.get(
                                 PUBLISHED[recipe][0], [])))
    assert out["steps"] == 2 and out["eval"]
