"""The vision-language layer's children of the root ``TASKS``, ``HEADS`` and ``METRICS`` registries.

Each child names the modules of this layer whose import registers its built-ins (``locations``); the
roots reach them through the ``beit3_plugins`` entry point in ``setup.py`` without naming this package.
"""
from beit3_plugins.registry import HEADS as ROOT_HEADS
from beit3_plugins.registry import METRICS as ROOT_METRICS
from beit3_plugins.registry import TASKS as ROOT_TASKS
from beit3_plugins.registry import Registry

_PACKAGE = "beit3_plugins.vl_tasks"
TASKS = Registry("task", parent=ROOT_TASKS, scope="vl_tasks",
                 locations=[f"{_PACKAGE}.{m}" for m in ("vqa", "nlvr2", "retrieval", "captioning", "classification")])
HEADS = Registry("head", parent=ROOT_HEADS, scope="vl_tasks", locations=[f"{_PACKAGE}.heads"])
METRICS = Registry("metric", parent=ROOT_METRICS, scope="vl_tasks", locations=[f"{_PACKAGE}.metrics"])

__all__ = ["TASKS", "HEADS", "METRICS"]
