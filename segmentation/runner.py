"""``Beit3Runner``: mmengine's ``Runner`` that checks ``work_dir`` before it builds anything.

mmengine's ``Runner.__init__`` creates ``work_dir`` with ``os.makedirs`` (a path under a regular file is a
bare ``NotADirectoryError`` from deep inside the runner) and a full disk shows only when the first
``iter_N.pth`` is written, after thousands of iterations. This runner first runs
:func:`beit3_plugins.io_checks.prepare_output_dir` on ``work_dir`` (delete the temporaries of saves a
killed run left, create it, write 1 MiB, delete), so the
run stops at once with an ``OutputDirError`` naming ``work_dir``. Selected by ``runner_type = 'Beit3Runner'``
in ``configs/_base_/seg_runtime.py``; mmseg's ``tools/train.py`` builds it through ``RUNNERS``.
"""
from __future__ import annotations

from mmengine.dist import is_main_process
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from beit3_plugins.io_checks import prepare_output_dir

__all__ = ["Beit3Runner"]


@RUNNERS.register_module()
class Beit3Runner(Runner):
    """``Runner`` whose ``work_dir`` is probed before the model, data and hooks are built."""

    def __init__(self, *args, work_dir: str, **kwargs) -> None:
        if is_main_process():
            prepare_output_dir(work_dir, setting="work_dir")
        super().__init__(*args, work_dir=work_dir, **kwargs)
