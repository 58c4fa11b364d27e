"""Issue 13's two intermediate fine-tuning stages, chained on generated data with the tiny model.

* ImageNet-21k -> 1k: a classifier trained on a 12-class world (the "21k" stage) starts a 3-class run (the
  "1k" stage). The head cannot load (12 vs 3 rows): without ``model.replace_heads`` that is a shape-mismatch
  error naming the file; with it (``recipe=beit3_base_in1k_from_in21k`` sets ``[classifier]``) the head keeps
  its fresh init, the report says so, and the backbone is the first stage's.
* Image-text contrastive stage: ``recipe=beit3_base_retrieval_itc_stage`` trains retrieval on the world's COCO
  captions pairs file; its ``last.pt`` starts ``recipe=beit3_base_retrieval_coco`` with every tensor (backbone
  and contrastive heads, logit scale included) equal to the first stage's.
"""
import json

import pytest
import torch

from beit3_plugins.checkpoint import CheckpointMismatchError, safe_load
from beit3_plugins.data import WorldConfig, generate_world
from beit3_plugins.vl_tasks.train import _tokenizer, build_model, build_task, compose_config, run

pytestmark = [pytest.mark.slow]

TINY = ["model=beit3_tiny", "preset=cpu_tiny", "train.tensorboard=false", "train.activation_checkpointing=false"]


def _cfg(recipe_or_task, root, spm, out, *extra):
    return compose_config([recipe_or_task, *TINY, f"data.root={root}", f"data.tokenizer={spm}",
                           f"train.output_dir={out}", *extra])


def _model_from(cfg):
    task, _ = build_task(cfg)
    task.setup(cfg.data.root, _tokenizer(cfg, task))
    return build_model(cfg, task, torch.device("cpu"))


def test_in1k_stage_replaces_the_in21k_head_and_keeps_its_backbone(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    world21k = tmp_path / "world21k"
    manifest = generate_world(world21k, WorldConfig(seed=1, formats=("imagenet",), imagenet_classes="kind_color",
                                                    imagenet_train_per_class=2, imagenet_val_per_class=1))
    assert len(manifest.classes["imagenet"]) == 12
    stage1 = tmp_path / "in21k"
    run(_cfg("task=image_classification", world21k, tiny_spm, stage1, "train.max_steps=2", "train.batch_size=8"))
    first = safe_load(stage1 / "checkpoints" / "last.pt")["model"]
    assert first["classifier.head.weight"].shape[0] == 12
    ckpt = stage1 / "checkpoints" / "last.pt"

    with pytest.raises(CheckpointMismatchError, match=r"(?s)last\.pt: .*classifier\.head\.weight"):
        _model_from(_cfg("recipe=beit3_base_imagenet", root, tiny_spm, tmp_path / "refused",
                         f"model.checkpoint={ckpt}"))
    with pytest.raises(ValueError, match="not modules of this task model"):
        _model_from(_cfg("recipe=beit3_base_in1k_from_in21k", root, tiny_spm, tmp_path / "typo",
                         f"model.checkpoint={ckpt}", "model.replace_heads=[clasifier]"))

    cfg = _cfg("recipe=beit3_base_in1k_from_in21k", root, tiny_spm, tmp_path / "in1k", f"model.checkpoint={ckpt}",
               "train.max_steps=2", "train.batch_size=8")
    assert list(cfg.model.replace_heads) == ["classifier"]
    model, report = _model_from(cfg)
    assert model.classifier.head.weight.shape[0] == 3
    assert "classifier.head.weight" in report.missing and "classifier.head.weight" not in report.loaded
    assert any("replaced heads" in note and "classifier.head.weight" in note for note in report.notes)
    backbone = [k for k in first if k.startswith("backbone.")]
    assert backbone and all(k in report.loaded for k in backbone)
    own = model.state_dict()
    for key in backbone:
        assert torch.equal(own[key], first[key]), key
    out = run(cfg)
    assert out["steps"] == 2 and "accuracy" in out["eval"]
    assert "replaced heads" in (tmp_path / "in1k" / "load_report.txt").read_text()


def test_itc_stage_on_pretraining_pairs_feeds_retrieval_fine_tuning(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    stage1 = tmp_path / "itc"
    cfg1 = _cfg("recipe=beit3_base_retrieval_itc_stage", root, tiny_spm, stage1, "train.max_steps=3")
    assert cfg1.task.pairs_json == "coco/annotations/captions_train2014.json"
    task, _ = build_task(cfg1)
    task.setup(root, None)
    pairs = task.build_dataset("train")
    assert type(pairs).__name__ == "CocoCaptionPairsDataset"
    annotations = json.loads((root / "coco/annotations/captions_train2014.json").read_text())["annotations"]
    assert len(pairs) == len(annotations) > 0          # one item per (image, caption) pair of the file
    assert pairs[0]["caption"] in {a["caption"] for a in annotations}
    out1 = run(cfg1)
    assert out1["steps"] == 3 and "r_mean" in out1["eval"]
    first = safe_load(stage1 / "checkpoints" / "last.pt")["model"]
    heads = [k for k in first if not k.startswith("backbone.")]
    assert {"contrastive.logit_scale", "contrastive.vision_head.weight"} <= set(heads)

    cfg2 = _cfg("recipe=beit3_base_retrieval_coco", root, tiny_spm, tmp_path / "coco",
                f"model.checkpoint={stage1 / 'checkpoints' / 'last.pt'}", "train.max_steps=1")
    assert not cfg2.task.get("pairs_json")
    model, report = _model_from(cfg2)
    own = model.state_dict()
    assert set(first) <= set(report.loaded)
    for key, value in first.items():
        assert torch.equal(own[key], value), key
    out2 = run(cfg2)
    assert out2["steps"] == 1 and "r_mean" in out2["eval"]

    # at another resolution (the published chain: ITC at 224 px, retrieval at 384) the vision positions are
    # resampled like a released file's; the heads still load unchanged
    larger, report = _model_from(_cfg("recipe=beit3_base_retrieval_coco", root, tiny_spm, tmp_path / "coco48",
                                      f"model.checkpoint={stage1 / 'checkpoints' / 'last.pt'}", "task.image_size=48"))
    assert larger.backbone.vision_pos_embed.shape[1] > first["backbone.vision_pos_embed"].shape[1]
    assert any("vision positions resampled" in note for note in report.notes), report.notes
    for key in heads:
        assert torch.equal(larger.state_dict()[key], first[key]), key
