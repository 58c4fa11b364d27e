"""Training through the real entry (`python -m beit3_plugins.detection.train`, which `tools/train_net.py` runs) on
the data world's COCO instances: overfitting a handful of images, `--eval-only` reproducing the trained run,
`--resume` after a kill.

Threads: the runs use one intra-op thread (OMP_NUM_THREADS=1). On this shared 2-core machine two OpenMP
threads spin against each other and make a step several times slower, not faster.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parents[2]
TRAIN_NET = ["-m", "beit3_plugins.detection.train"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# Overfitting budget: 8 images of 128 px with 1-4 shapes each (21 shapes, 3 classes), 160 iterations of
# batch 4 (80 passes over each image). Chance is ~0 box AP (random boxes rarely reach IoU 0.5). Measured on
# this setup: box AP 63 / AP50 87 after 75 iterations, 87 / 100 after 150, 96 / 100 after 225. The
# thresholds ask for a detector that finds every shape (AP50 >= 95) and localises most of them at the
# strict IoUs too (AP >= 70, masks >= 60), with margin for run-to-run variation across machines.
OVERFIT_IMAGES = 8
OVERFIT_ITERS = 160
MIN_BOX_AP = 70.0
MIN_BOX_AP50 = 95.0
MIN_MASK_AP = 60.0


def _subset(src: Path, dst: Path, n: int) -> Path:
    data = json.loads(src.read_text())
    data["images"] = data["images"][:n]
    keep = {img["id"] for img in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    dst.write_text(json.dumps(data))
    return dst


def _dataset_opts(root: Path, json_file: Path, name: str):
    entry = json.dumps([[name, str(json_file), "coco/train2017"]])
    return ["DATASETS.ROOT", str(root), "DATASETS.COCO_INSTANCES", entry,
            "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)", "INPUT.LSJ.ENABLED", "False"]


def _run(args, cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *TRAIN_NET, *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"detection trainer failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def _load_train_net():
    from beit3_plugins.detection import train

    return train


@pytest.fixture(scope="module")
def det_world(data_world, tmp_path_factory):
    root, manifest = data_world
    subset = _subset(manifest.path("instances_train"), tmp_path_factory.mktemp("det") / "train8.json",
                     OVERFIT_IMAGES)
    return root, subset


@pytest.fixture(scope="module")
def overfit_run(det_world, tmp_path_factory):
    root, subset = det_world
    out = tmp_path_factory.mktemp("overfit")
    # run from an unrelated directory: the entry finds detection/*.yaml inside the installed package
    _run(["--config-file", "detection/cascade_beit3_tiny.yaml", "--visualize", "2", "OUTPUT_DIR", str(out),
          "SOLVER.MAX_ITER", str(OVERFIT_ITERS), "SOLVER.STEPS", f"({OVERFIT_ITERS * 5 // 6},)",
          "SOLVER.CHECKPOINT_PERIOD", "100000", *_dataset_opts(root, subset, "world_train8")], cwd=out, timeout=900)
    return out, json.loads((out / "eval_results.json").read_text())


def test_overfits_a_handful_of_world_images(overfit_run):
    out, results = overfit_run
    box, mask = results["bbox"], results["segm"]
    assert box["AP"] >= MIN_BOX_AP and box["AP50"] >= MIN_BOX_AP50, box
    assert mask["AP"] >= MIN_MASK_AP, mask
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [r["total_loss"] for r in records if "total_loss" in r]
    assert losses[-1] < losses[0], losses
    assert sorted((out / "visualization").glob("*.png")), "no visualisation written"
    assert (out / "model_final.pth").exists()


def test_eval_only_reproduces_the_trained_run(overfit_run, det_world, tmp_path):
    out, trained = overfit_run
    root, subset = det_world
    _run(["--config-file", str(ROOT / "detection" / "cascade_beit3_tiny.yaml"), "--eval-only",
          "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path),
          *_dataset_opts(root, subset, "world_train8")], cwd=ROOT)
    again = json.loads((tmp_path / "eval_results.json").read_text())
    assert again == trained


def test_resume_after_kill_continues_exactly(det_world, tmp_path):
    """A run killed (SIGKILL) after its first checkpoint and resumed with --resume ends with exactly the
    weights of a run that went straight through."""
    root, subset = det_world
    opts = ["SOLVER.MAX_ITER", "10", "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.WARMUP_ITERS", "2",
            "SOLVER.STEPS", "(6,)", "DATASETS.TEST", "()", "INPUT.LSJ.ENABLED", "True",
            "DATASETS.ROOT", str(root), "DATASETS.COCO_INSTANCES", json.dumps([["world_resume", str(subset),
                                                                               "coco/train2017"]]),
            "DATASETS.TRAIN", "('world_resume',)"]
    config = "detection/cascade_beit3_tiny.yaml"
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, *TRAIN_NET, "--config-file", config, "OUTPUT_DIR", str(killed),
                             *opts], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tag = killed / "last_checkpoint"
    deadline = time.time() + 300
    while not (tag.exists() and tag.read_text().strip() == "model_0000002.pth"):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model_final.pth").exists(), "the run finished before the kill; nothing was tested"

    train_net = _load_train_net()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight = tmp_path / "straight"
        train_net.cli(["--config-file", config, "OUTPUT_DIR", str(straight), *opts])
        train_net.cli(["--config-file", config, "--resume", "OUTPUT_DIR", str(killed), *opts])
    finally:
        torch.set_num_threads(threads)
    log = (killed / "log.txt").read_text()
    assert "Loading from" in log and "model_0000002.pth" in log
    a = torch.load(straight / "model_final.pth", weights_only=True)["model"]
    b = torch.load(killed / "model_final.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"resumed weights differ from the straight run: {differing[:5]}"
    # and training did change the weights (the comparison is not between two untouched models)
    first = torch.load(killed / "model_0000002.pth", weights_only=True)["model"]
    assert not torch.equal(first["backbone.net.beit3.layers.0.attn.qkv.vision.weight"],
                           b["backbone.net.beit3.layers.0.attn.qkv.vision.weight"])


def test_lazyconfig_twin_builds_the_same_detector_and_reproduces_its_numbers(overfit_run, det_world, tmp_path):
    """detection/configs/cascade_beit3_tiny.py (ViTDet-style LazyConfig) evaluates the yacs-trained weights
    to the same AP, then trains a few steps through the same entry."""
    out, trained = overfit_run
    root, subset = det_world
    config = "detection/configs/cascade_beit3_tiny.py"
    data = [f"datasets.root={root}", f"datasets.coco_instances={json.dumps([['world_train8', str(subset), 'coco/train2017']])}",
            "dataloader.test.dataset.names=world_train8", "dataloader.train.dicts.names=world_train8"]
    _run(["--config-file", config, "--eval-only", f"train.init_checkpoint={out / 'model_final.pth'}",
          f"train.output_dir={tmp_path / 'eval'}", *data], cwd=tmp_path)
    assert json.loads((tmp_path / "eval" / "eval_results.json").read_text()) == trained
    _run(["--config-file", config, "train.max_iter=4", "train.eval_period=0", f"train.output_dir={tmp_path / 'train'}",
          "lr_multiplier.scheduler.milestones=[3]", "lr_multiplier.scheduler.num_updates=4", *data], cwd=tmp_path)
    records = [json.loads(line) for line in (tmp_path / "train" / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in records if "total_loss" in r][-1] == 3
    assert (tmp_path / "train" / "model_final.pth").exists()
    assert json.loads((tmp_path / "train" / "eval_results.json").read_text())["bbox"]["AP"] is not None


# ---------------------------------------------------------------------------------------------- protocols
def test_multiscale_flip_tta_through_detectron2(overfit_run, det_world, tmp_path):
    """``--tta`` evaluates with detectron2's GeneralizedRCNNWithTTA (TEST.AUG: two scales x flip) after the
    plain evaluation, in both config systems: the plain numbers are unchanged, the TTA numbers come from four
    passes per image and the yacs and LazyConfig paths give the same TTA numbers on the same weights."""
    out, trained = overfit_run
    root, subset = det_world
    # the yacs run the way a user reproduces Table 5: the detection_user table of `beit3-plugins benchmark` on
    # the trained file, with an experiment config (a small yacs delta) naming the data
    config = tmp_path / "world_train8.yaml"
    config.write_text(f"_BASE_: {ROOT / 'detection' / 'cascade_beit3_tiny.yaml'}\nDATASETS:\n"
                      f"  COCO_INSTANCES: {json.dumps([['world_train8', str(subset), 'coco/train2017']])}\n"
                      "  TRAIN: ('world_train8',)\n  TEST: ('world_train8',)\nINPUT:\n  LSJ:\n    ENABLED: False\n")
    bench = tmp_path / "benchmark"
    proc = subprocess.run([sys.executable, "-m", "beit3_plugins.cli", "benchmark", "run", "detection_user",
                           "--data-root", str(root), "--model", f"{out / 'model_final.pth'}=beit3_giant",
                           "--detection-config", str(config), "--out", str(bench), "--no-progress"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (work,) = (bench / "work").iterdir()
    yacs = json.loads((work / "eval_results.json").read_text())
    assert {k: yacs[k] for k in trained} == trained
    assert {"bbox_TTA", "segm_TTA"} <= set(yacs)
    assert "test-time augmentation: sizes (96, 128), max 128, flip True" in (work / "command.log").read_text()
    rows = {r["metric"]: r for r in csv.DictReader((bench / "detection_user.csv").open())}
    assert float(rows["bbox_AP"]["ours"]) == pytest.approx(yacs["bbox_TTA"]["AP"], abs=0.01), rows
    assert float(rows["segm_AP"]["ours"]) == pytest.approx(yacs["segm_TTA"]["AP"], abs=0.01), rows
    assert float(rows["bbox_AP"]["reported"]) == 63.7 and "Table 5" in rows["bbox_AP"]["source"], rows
    assert yacs["bbox_TTA"]["AP50"] >= MIN_BOX_AP50 - 5 and yacs["segm_TTA"]["AP"] >= MIN_MASK_AP - 10, yacs
    assert yacs["bbox_TTA"] != yacs["bbox"]                      # another inference, not a copy
    data = [f"datasets.root={root}",
            f"datasets.coco_instances={json.dumps([['world_train8', str(subset), 'coco/train2017']])}",
            "dataloader.test.dataset.names=world_train8", "dataloader.train.dicts.names=world_train8"]
    _run(["--config-file", "detection/configs/cascade_beit3_tiny.py", "--eval-only", "--tta",
          f"train.init_checkpoint={out / 'model_final.pth'}", f"train.output_dir={tmp_path / 'lazy'}", *data],
         cwd=tmp_path)
    lazy = json.loads((tmp_path / "lazy" / "eval_results.json").read_text())
    assert lazy["bbox_TTA"] == yacs["bbox_TTA"] and lazy["segm_TTA"] == yacs["segm_TTA"]


def test_tta_sizes_must_fit_the_square_padding():
    from beit3_plugins.detection.tta import check_tta_sizes

    check_tta_sizes((96, 128), 128, 128)
    with pytest.raises(ValueError, match="exceed MODEL.SFP.SQUARE_PAD 128"):
        check_tta_sizes((128, 160), 160, 128)
    check_tta_sizes((1600,), 1600, 0)                           # no padding constraint


def _objects365_world(root: Path, subset: Path, dst: Path) -> Path:
    """A box-only COCO-format json as Objects365 v2 ships (other category ids and names, no masks) over the
    world's images, laid out as cascade_beit3_*objects365.yaml expects under DATASETS.ROOT."""
    data = json.loads(subset.read_text())
    data["categories"] = [{"id": c["id"] + 100, "name": f"o365_{c['name']}"} for c in data["categories"]]
    for ann in data["annotations"]:
        ann["category_id"] += 100
        ann.pop("segmentation", None)
    (dst / "objects365" / "annotations").mkdir(parents=True)
    (dst / "objects365" / "annotations" / "zhiyuan_objv2_train.json").write_text(json.dumps(data))
    (dst / "objects365" / "annotations" / "zhiyuan_objv2_val.json").write_text(json.dumps(data))
    (dst / "objects365" / "train").symlink_to(root / "coco" / "train2017")
    (dst / "objects365" / "val").symlink_to(root / "coco" / "train2017")
    return dst


def test_objects365_intermediate_stage_then_coco(det_world, tmp_path):
    """Objects365 stage (box only, 365 classes) then COCO from its detector: the recipes' deltas equal the
    full-size ones, both stages train through train_net, the COCO stage starts from every Objects365 tensor but
    the three replaced classifiers, and without MODEL.REPLACE_HEADS the class mismatch is an error."""
    from detectron2.config import get_cfg

    import beit3_plugins.detection as det

    root, subset = det_world
    o365_root = _objects365_world(root, subset, tmp_path / "data")

    def load(name):
        cfg = get_cfg()
        det.add_beit3_config(cfg)
        cfg.merge_from_file(str(ROOT / "detection" / name))
        return cfg

    for key in ("MODEL.MASK_ON", "MODEL.ROI_HEADS.NUM_CLASSES", "DATASETS.COCO_INSTANCES", "DATASETS.TRAIN"):
        get = lambda cfg: eval("cfg." + key)  # noqa: E731, S307 - dotted yacs key
        assert get(load("cascade_beit3_objects365.yaml")) == get(load("cascade_beit3_tiny_objects365.yaml")), key
    assert (load("cascade_beit3_coco_from_objects365.yaml").MODEL.REPLACE_HEADS ==
            load("cascade_beit3_tiny_coco_from_objects365.yaml").MODEL.REPLACE_HEADS)

    stage1, stage2 = tmp_path / "o365", tmp_path / "coco"
    short = ["SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(5,)", "SOLVER.WARMUP_ITERS", "1",
             "SOLVER.CHECKPOINT_PERIOD", "100000", "INPUT.LSJ.ENABLED", "False"]
    train_net = _load_train_net()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_net.cli(["--config-file", "detection/cascade_beit3_tiny_objects365.yaml", "OUTPUT_DIR", str(stage1),
                       "DATASETS.ROOT", str(o365_root), *short])
        coco = ["DATASETS.ROOT", str(root), "DATASETS.COCO_INSTANCES",
                json.dumps([["world_coco8", str(subset), "coco/train2017"]]), "DATASETS.TRAIN", "('world_coco8',)",
                "DATASETS.TEST", "('world_coco8',)", "MODEL.WEIGHTS", str(stage1 / "model_final.pth")]
        train_net.cli(["--config-file", "detection/cascade_beit3_tiny_coco_from_objects365.yaml",
                       "OUTPUT_DIR", str(stage2), *coco, *short])
    finally:
        torch.set_num_threads(threads)
    o365 = torch.load(stage1 / "model_final.pth", weights_only=True)["model"]
    assert o365["roi_heads.box_predictor.0.cls_score.weight"].shape[0] == 366
    assert not any(k.startswith("roi_heads.mask_head") for k in o365)        # box-only stage
    results = json.loads((stage1 / "eval_results.json").read_text())
    assert "bbox" in results and "segm" not in results
    log = (stage2 / "log.txt").read_text()
    assert "MODEL.REPLACE_HEADS: 6 tensors not loaded" in log
    assert "segm" in json.loads((stage2 / "eval_results.json").read_text())       # COCO stage has masks again

    # the initial load in isolation: everything but the classifiers comes from the Objects365 detector
    cfg = load("cascade_beit3_tiny_coco_from_objects365.yaml")
    cfg.MODEL.DEVICE = "cpu"
    model = det.Beit3DetectionTrainer.build_model(cfg)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    det.SafeDetectionCheckpointer(model, replace_heads=cfg.MODEL.REPLACE_HEADS).resume_or_load(
        str(stage1 / "model_final.pth"), resume=False)
    now = model.state_dict()
    for key in ("backbone.net.beit3.layers.1.attn.qkv.vision.weight", "roi_heads.box_predictor.2.bbox_pred.weight",
                "proposal_generator.rpn_head.conv.conv0.weight"):
        assert key in o365 and torch.equal(now[key], o365[key]), key
    assert now["roi_heads.box_predictor.0.cls_score.weight"].shape[0] == 4
    assert torch.equal(now["roi_heads.box_predictor.0.cls_score.weight"],
                       fresh["roi_heads.box_predictor.0.cls_score.weight"])
    from beit3_plugins.checkpoint import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match=r"model_final.pth: tensors of the wrong shape"):
        det.SafeDetectionCheckpointer(model).resume_or_load(str(stage1 / "model_final.pth"), resume=False)


VLMO_ITERS = 40


def test_vlmo_backbone_trains_through_train_net(det_world, tmp_path):
    """VLMo (relative position bias, shared attention, VL experts) as the ViTDet backbone through the real
    entry: initialised from a VLMo-layout file made at 64 px (its relative table is resampled to the
    detector's 16 x 16 grid, the report says so), the pruned language branch and heads reported, and the
    loss falls over a short run on the world images."""
    from beit3_plugins.registry import BACKBONES

    root, subset = det_world
    torch.manual_seed(0)
    source = BACKBONES.build("vlmo_tiny")
    weights = tmp_path / "vlmo_tiny_export.pth"
    torch.save({"model": {**source.state_dict(), "itm_head.weight": torch.zeros(2, 64)}}, weights)
    out = tmp_path / "run"
    _run(["--config-file", "detection/cascade_beit3_tiny.yaml", "OUTPUT_DIR", str(out), "MODEL.BEIT3.NAME", "vlmo_tiny",
          "MODEL.BEIT3.WEIGHTS", str(weights), "SOLVER.MAX_ITER", str(VLMO_ITERS), "SOLVER.STEPS", "(1000,)",
          "SOLVER.CHECKPOINT_PERIOD", "100000", *_dataset_opts(root, subset, "world_train8_vlmo")], cwd=tmp_path,
         timeout=600)
    report = json.loads((out / "backbone_init_report.json").read_text())
    assert not report["missing"] and not report["unexpected"], report
    assert "layers.3.ffn.vl.fc1.weight" in report["pruned"] and "text_embed.weight" in report["pruned"]
    assert report["heads"] == ["itm_head.weight"]
    assert any("relative position bias resampled from a 8x8 to a 16x16" in n for n in report["notes"])
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [r["total_loss"] for r in records if "total_loss" in r]
    assert len(losses) >= 2 and losses[-1] < 0.8 * losses[0], losses
