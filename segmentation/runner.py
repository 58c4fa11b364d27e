"""``Beit3Runner``: mmengine's ``Runner`` that checks ``work_dir`` and the dataset before it builds anything.

mmengine's ``Runner.__init__`` creates ``work_dir`` with ``os.makedirs`` (a path under a regular file is a
bare ``NotADirectoryError`` from deep inside the runner) and a full disk shows only when the first
``iter_N.pth`` is written, after thousands of iterations. This runner first runs
:func:`beit3_plugins.io_checks.prepare_output_dir` on ``work_dir`` (delete the temporaries of saves a
killed run left, create it, write 1 MiB, delete), so the run stops at once with an ``OutputDirError`` naming
``work_dir``. Then the image and annotation folders of every split the run reads (:func:`dataset_inputs`)
must be on disk: if not, one message names each missing folder, ``data_root`` / ``$ADE20K_ROOT`` and the
``beit3-plugins data check`` command, and the process exits with status 2 and no traceback (before the
model is built; ``BEIT3_DEBUG=1`` shows the traceback). Selected by ``runner_type = 'Beit3Runner'`` in
``configs/_base_/seg_runtime.py``; mmseg's ``tools/train.py`` / ``tools/test.py`` build it through ``RUNNERS``.
It also registers :class:`ModelDescriptionHook`: every checkpoint carries the backbone's self-description.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional, Tuple

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from beit3_plugins.input_checks import exit_on_missing_data, require_paths
from beit3_plugins.io_checks import prepare_output_dir

__all__ = ["Beit3Runner", "ModelDescriptionHook", "dataset_inputs"]


class ModelDescriptionHook(Hook):
    """Adds the backbone's description (``beit3_plugins.zoo.ModelConfig``) to every checkpoint the runner
    saves, so ``build_backbone(..., pretrained="iter_N.pth")`` and ``beit3-plugins save`` read it alone."""

    priority = "VERY_LOW"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        from beit3_plugins.backbones import backbone_model_config

        try:
            checkpoint["model_config"] = backbone_model_config(runner.model, task="segmentation",
                                                               trained_by="mmseg").to_dict()
        except TypeError:  # no Multiway Transformer in this model
            pass


def _split_inputs(split: str, loader: Optional[dict]) -> List[Tuple[str, str, str]]:
    dataset = (loader or {}).get("dataset") or {}
    root = dataset.get("data_root") or ""
    prefix = dataset.get("data_prefix") or {}
    return [(os.path.join(root, prefix[key]), "dir", f"{split} {key}")
            for key in ("img_path", "seg_map_path") if prefix.get(key)]


def dataset_inputs(train_dataloader=None, val_dataloader=None, test_dataloader=None,
                   testing: bool = False) -> List[Tuple[str, str, str]]:
    """``(folder, "dir", role)`` of the splits a run reads: the test split for mmseg's ``tools/test.py``,
    else the train and validation splits."""
    if testing:
        return _split_inputs("test", test_dataloader)
    return _split_inputs("train", train_dataloader) + _split_inputs("val", val_dataloader)


@RUNNERS.register_module()
class Beit3Runner(Runner):
    """``Runner`` whose ``work_dir`` and data folders are checked before the model, data and hooks are built."""

    def __init__(self, *args, work_dir: str, **kwargs) -> None:
        if is_main_process():
            prepare_output_dir(work_dir, setting="work_dir")
        testing = os.path.basename(sys.argv[0]) == "test.py"  # mmseg's tools/test.py reads only the test split
        inputs = dataset_inputs(kwargs.get("train_dataloader"), kwargs.get("val_dataloader"),
                                kwargs.get("test_dataloader"), testing=testing)
        roots = sorted({((kwargs.get(f"{s}_dataloader") or {}).get("dataset") or {}).get("data_root") or ""
                        for s in ("train", "val", "test")} - {""})
        with exit_on_missing_data():
            require_paths("segmentation dataset", inputs,
                          f"$ADE20K_ROOT (read when the config loads) or the config key data_root, e.g. "
                          f"--cfg-options train_dataloader.dataset.data_root=... (now {', '.join(roots) or 'unset'})")
        super().__init__(*args, work_dir=work_dir, **kwargs)
        self.register_hook(ModelDescriptionHook())
