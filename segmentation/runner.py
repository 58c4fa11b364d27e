"""``Beit3Runner``: mmengine's ``Runner`` that checks ``work_dir`` before it builds anything.

mmengine's ``Runner.__init__`` creates ``work_dir`` with ``os.makedirs`` (a path under a regular file is a
bare ``NotADirectoryError`` from deep inside the runner) and a full disk shows only when the first
``iter_N.pth`` is written, after thousands of iterations. This runner first runs
:func:`beit3_plugins.io_checks.prepare_output_dir` on ``work_dir`` (delete the temporaries of saves a
killed run left, create it, write 1 MiB, delete), so the
run stops at once with an ``OutputDirError`` naming ``work_dir``. Selected by ``runner_type = 'Beit3Runner'``
in ``configs/_base_/seg_runtime.py``; mmseg's ``tools/train.py`` builds it through ``RUNNERS``. It also
registers :class:`ModelDescriptionHook`: every checkpoint carries the backbone's self-description.
"""
from __future__ import annotations

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from beit3_plugins.io_checks import prepare_output_dir

__all__ = ["Beit3Runner", "ModelDescriptionHook"]


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


@RUNNERS.register_module()
class Beit3Runner(Runner):
    """``Runner`` whose ``work_dir`` is probed before the model, data and hooks are built."""

    def __init__(self, *args, work_dir: str, **kwargs) -> None:
        if is_main_process():
            prepare_output_dir(work_dir, setting="work_dir")
        super().__init__(*args, work_dir=work_dir, **kwargs)
        self.register_hook(ModelDescriptionHook())
