"""Bad input to the detection plugin fails early with a message that says what to fix."""
import json
import shutil
from pathlib import Path

import pytest
import torch

import beit3_plugins.detection as det
from beit3_plugins.registry import UnknownComponentError


def _cfg(**changes):
    from detectron2.config import get_cfg

    cfg = det.add_beit3_config(get_cfg())
    cfg.merge_from_file(str(Path(det.__file__).parent / "cascade_beit3_tiny.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list([x for kv in changes.items() for x in kv])
    return cfg


def test_unknown_backbone_name_lists_what_exists():
    from detectron2.modeling import build_model

    with pytest.raises(UnknownComponentError, match="beit3_tiny"):
        build_model(_cfg(**{"MODEL.BEIT3.NAME": "beit3_tiyn"}))


def test_image_size_and_soft_nms_method_are_checked():
    from detectron2.modeling import build_model

    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        build_model(_cfg(**{"MODEL.BEIT3.IMG_SIZE": 100}))
    with pytest.raises(ValueError, match="unknown soft-NMS method"):
        build_model(_cfg(**{"MODEL.ROI_HEADS.SOFT_NMS.METHOD": "softer"}))


def test_dataset_registration_errors(data_world, tmp_path):
    root, manifest = data_world
    with pytest.raises(FileNotFoundError, match="DATASETS.ROOT"):
        det.register_coco_datasets([["det_missing", "nope.json", "coco/train2017"]], str(root))
    with pytest.raises(ValueError, match="name, json_file, image_root"):
        det.register_coco_datasets([["only_a_name"]], str(root))
    train = ["det_inputs_train", "coco/annotations/instances_train2017.json", "coco/train2017"]
    assert det.register_coco_datasets([train], str(root)) == ["det_inputs_train"]
    assert det.register_coco_datasets([train], str(root)) == ["det_inputs_train"]  # same files: no-op
    with pytest.raises(ValueError, match="already registered with other files"):
        det.register_coco_datasets([[train[0], "coco/annotations/instances_val2017.json", "coco/val2017"]],
                                   str(root))


def test_corrupt_training_image_is_named(data_world, tmp_path):
    from detectron2.data import get_detection_dataset_dicts

    root, manifest = data_world
    images = tmp_path / "images"
    shutil.copytree(manifest.path("det_images_train"), images)
    data = json.loads(manifest.path("instances_train").read_text())
    broken = images / data["images"][0]["file_name"]
    broken.write_bytes(broken.read_bytes()[:200])  # truncated JPEG
    (tmp_path / "ann.json").write_text(json.dumps(data))
    det.register_coco_datasets([["det_corrupt", str(tmp_path / "ann.json"), str(images)]])
    cfg = _cfg(**{"DATASETS.TRAIN": ("det_corrupt",), "SOLVER.IMS_PER_BATCH": len(data["images"])})
    dicts = get_detection_dataset_dicts(["det_corrupt"])
    loader = det.build_resumable_train_loader(dicts, det.build_train_mapper(cfg), len(dicts), seed=0)
    with pytest.raises(RuntimeError, match=broken.name):
        next(iter(loader))


def test_eval_only_without_weights_is_refused(tmp_path):
    from beit3_plugins.detection import train as train_net

    args = train_net.build_parser().parse_args(
        ["--config-file", "detection/cascade_beit3_tiny.yaml", "--eval-only", "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(ValueError, match="MODEL.WEIGHTS"):
        train_net.main(args)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        train_net.resolve_config_path("detection/no_such.yaml")


def test_pickled_detector_checkpoints_are_refused(tmp_path):
    from beit3_plugins.checkpoint import CheckpointMismatchError

    model = torch.nn.Linear(2, 2)
    (tmp_path / "model.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointMismatchError, match="pickled checkpoints are not loaded"):
        det.SafeDetectionCheckpointer(model).load(str(tmp_path / "model.pkl"))
    torch.save({"model": model.state_dict(), "extra": Path("/")}, tmp_path / "model.pth")
    with pytest.raises(CheckpointMismatchError, match="weights-only"):
        det.SafeDetectionCheckpointer(model).load(str(tmp_path / "model.pth"))


def _perfect_predictions(records):
    """The kept ground truth boxes as detections with score 1 (what a perfect detector outputs)."""
    from detectron2.structures import Boxes, BoxMode, Instances

    outputs = []
    for record in records:
        instances = Instances((record["height"], record["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]], dtype=torch.long)
        outputs.append({"instances": instances})
    return [{"image_id": r["image_id"]} for r in records], outputs


def test_evaluation_ground_truth_is_what_the_loader_kept(data_world, tmp_path):
    """Annotations the checked loader skips (a NaN box, one without ``bbox``) are not in the evaluation ground
    truth either: detectron2's own COCOEvaluator, reading the original json, crashes on the missing box
    (and without it scores the NaN box as a missed object); ours scores a perfect detector at AP 100."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import COCOEvaluator

    _, manifest = data_world
    data = json.loads(manifest.path("instances_val").read_text())
    data["annotations"][0]["bbox"] = [1.0, 2.0, float("nan"), 4.0]
    del data["annotations"][1]["bbox"]
    path = tmp_path / "instances_val_damaged.json"
    path.write_text(json.dumps(data))
    name = "damaged_val"
    det.register_coco_datasets([[name, str(path), str(manifest.path("det_images_val"))]])
    try:
        records = DatasetCatalog.get(name)
        assert MetadataCatalog.get(name).skipped_annotations == {"bbox missing or not 4 finite numbers": 2}
        assert sum(len(r["annotations"]) for r in records) == len(data["annotations"]) - 2
        inputs, outputs = _perfect_predictions(records)

        ours = det.CheckedCOCOEvaluator(name, tasks=("bbox",), distributed=False, output_dir=str(tmp_path / "eval"))
        ours.reset()
        ours.process(inputs, outputs)
        assert ours.evaluate()["bbox"]["AP"] == pytest.approx(100.0)
        assert (tmp_path / "eval" / f"{name}_checked_gt.json").is_file()
        again = det.CheckedCOCOEvaluator(name, tasks=("bbox",), distributed=False, output_dir=str(tmp_path / "e2"))
        again.reset()
        again.process(inputs, outputs)
        assert again.evaluate()["bbox"]["AP"] == pytest.approx(100.0)
        assert not (tmp_path / "e2" / f"{name}_checked_gt.json").exists()   # the next evaluation reuses it
        assert json.loads(path.read_text())["annotations"][1].get("bbox") is None   # the user's file is untouched

        stock = COCOEvaluator(name, tasks=("bbox",), distributed=False, output_dir=str(tmp_path / "stock"))
        stock.reset()
        stock.process(inputs, outputs)
        with pytest.raises(KeyError, match="bbox"):
            stock.evaluate()
    finally:
        for catalog_name in (name, f"{name}_checked"):
            DatasetCatalog.pop(catalog_name, None)
            MetadataCatalog.pop(catalog_name, None)
