"""Prediction visualisation: ground truth (left) next to predictions (right), one PNG per image."""
from __future__ import annotations

import os
from typing import List

import numpy as np
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils.visualizer import Visualizer

__all__ = ["visualize_predictions"]


@torch.no_grad()
def visualize_predictions(cfg, model: torch.nn.Module, dataset_name: str, out_dir: str, max_images: int = 4,
                          score_threshold: float = 0.5) -> List[str]:
    """Run ``model`` on the first ``max_images`` images of ``dataset_name``; write PNGs; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    metadata = MetadataCatalog.get(dataset_name)
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    was_training = model.training
    model.eval()
    paths = []
    try:
        for record in DatasetCatalog.get(dataset_name)[:max_images]:
            image = utils.read_image(record["file_name"], format=cfg.INPUT.FORMAT)
            height, width = image.shape[:2]
            resized = resize.get_transform(image).apply_image(image)
            tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
            instances = model([{"image": tensor, "height": height, "width": width}])[0]["instances"].to("cpu")
            instances = instances[instances.scores >= score_threshold]
            rgb = utils.convert_image_to_rgb(image, cfg.INPUT.FORMAT)
            truth = Visualizer(rgb, metadata, scale=2.0).draw_dataset_dict(record).get_image()
            predicted = Visualizer(rgb, metadata, scale=2.0).draw_instance_predictions(instances).get_image()
            path = os.path.join(out_dir, os.path.splitext(os.path.basename(record["file_name"]))[0] + ".png")
            Image.fromarray(np.concatenate([truth, predicted], axis=1)).save(path)
            paths.append(path)
    finally:
        model.train(was_training)
    return paths
