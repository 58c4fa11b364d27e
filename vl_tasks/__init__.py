"""Vision-language task plugins (installed as ``beit3_plugins.vl_tasks``): VQA v2, NLVR2, retrieval,
captioning, image / text classification, their heads, losses and metrics, and the Hydra trainer
(``python -m beit3_plugins.vl_tasks.train``). Importing registers every built-in task in ``TASKS`` and
every head in ``HEADS``; only torch and timm are imported (Hydra only by the trainer)."""
from . import heads, metrics  # noqa: F401  (register HEADS / METRICS)
from .base import EmptySplitError, TaskConfigBase, TaskModel, VlTask  # noqa: F401
from .vqa import VqaTask, VqaTaskConfig  # noqa: F401
from .nlvr2 import Nlvr2Task, Nlvr2TaskConfig  # noqa: F401
from .retrieval import RetrievalTask, RetrievalTaskConfig  # noqa: F401
from .captioning import CaptioningTask, CaptioningTaskConfig  # noqa: F401
from .classification import (ImageClassificationTask, ImageTextClassificationTask,  # noqa: F401
                             TextClassificationTask)
