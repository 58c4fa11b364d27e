"""``pipeline("shape-colors", model=NAME)``: image -> {colour: probability} over the task's sigmoid outputs.

Registered in beit3-plugins' ``PIPELINES`` registry when the ``beit3_plugins`` entry point imports this
module; the model comes from the zoo entry's task (``shape_colors``) like every built-in pipeline's.
"""
from __future__ import annotations

from beit3_plugins.pipelines.base import PIPELINES, Pipeline, as_list, chunks

COLORS = ("red", "green", "blue", "yellow")


@PIPELINES.register("shape-colors")
class ShapeColorsPipeline(Pipeline):
    task_kinds = ("shape_colors",)

    def __call__(self, image):
        images, single = as_list(image)
        out = []
        with self.inference(), self.autocast():
            for batch in chunks(images, self.batch_size):
                for row in self.model.logits(self.images(batch)).float().sigmoid().tolist():
                    out.append(dict(zip(COLORS, row)))
        return out[0] if single else out
