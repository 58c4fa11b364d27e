"""ONNX export of the task models, checked against PyTorch with onnxruntime.

Exported graphs (batch size dynamic, text length dynamic, resolution fixed at the model's):

* dual encoder (``retrieval``: the ITC files and the retrieval fine-tunes): two graphs, as open_clip exports CLIP's towers, so an index embeds
  images and a query embeds text without the other tower: ``image_tower.onnx`` (pixels -> L2-normalised
  image embedding) and ``text_tower.onnx`` (ids, padding_mask -> text embedding);
* ``vqa``: (pixels, ids, padding_mask) -> answer logits; ``nlvr2``: (left, right, ids, padding_mask) ->
  2 logits; ``image_classification``: pixels -> class logits.

Not exportable: ``captioning``. Its answer is a beam search whose loop runs until every beam ends and whose
key/value cache grows by one position per generated token; a single static graph can hold one decoding
step at best, with the search loop left to the caller, which is not the pipeline's answer. ``pretrain``
files have no task head to run.

Exporter: ``torch.onnx.export(..., dynamo=False)`` (the TorchScript-based exporter). torch 2.14 makes
``dynamo=True`` the default; that path needs ``onnxscript`` and fails on this model's data-dependent
branches, while the TorchScript exporter traces the eval-mode forward as is (docs/zoo.md records the check).
Preprocessing stays outside the graph: the folder's ``config.json`` written beside the graphs says the
image transform and the tokenizer.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["export_onnx", "check_onnx", "example_inputs", "ONNX_TASKS", "NOT_EXPORTABLE", "export_cli"]

ONNX_TASKS = ("retrieval", "vqa", "nlvr2", "image_classification")
NOT_EXPORTABLE = {
    "captioning": "beam search with a key/value cache that grows per generated token is a data-dependent loop, "
                  "not one static graph",
    "pretrain": "a pretraining file has no task head",
}


class _Call(nn.Module):
    """One method of a task model as a module's forward (what the exporter traces)."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *inputs: Tensor) -> Tensor:
        return getattr(self.model, self.method)(*inputs)


# task -> [(graph name, model method, input names)]
_GRAPHS: Dict[str, List[Tuple[str, str, Tuple[str, ...]]]] = {
    "retrieval": [("image_tower", "embed_images", ("pixels",)),
                  ("text_tower", "embed_texts", ("ids", "padding_mask"))],
    "vqa": [("model", "logits", ("pixels", "ids", "padding_mask"))],
    "nlvr2": [("model", "logits", ("left", "right", "ids", "padding_mask"))],
    "image_classification": [("model", "logits", ("pixels",))],
}


def _task_of(model: nn.Module) -> str:
    entry = getattr(model, "zoo_entry", None)
    if entry is None:
        raise ValueError("export_onnx takes a model from create_model_and_transforms / pipeline (it needs its "
                         "description: task and resolution)")
    if entry.task in NOT_EXPORTABLE:
        raise ValueError(f"{entry.name}: {entry.task} cannot be exported to ONNX: {NOT_EXPORTABLE[entry.task]}")
    if entry.task not in _GRAPHS:
        raise ValueError(f"{entry.name}: no ONNX export for task {entry.task!r}; exportable: {', '.join(ONNX_TASKS)}")
    return entry.task


def example_inputs(model: nn.Module, batch: int = 2, text_len: int = 8, seed: int = 0) -> Dict[str, Tensor]:
    """Random inputs of every graph input name: pixels in the normalised range, token ids, a padding mask
    whose last row pads its second half."""
    gen = torch.Generator().manual_seed(seed)
    cfg = model.backbone.cfg
    size = cfg.img_size
    pixels = lambda: torch.rand(batch, 3, size, size, generator=gen) * 2 - 1  # noqa: E731
    ids = torch.randint(4, cfg.vocab_size, (batch, text_len), generator=gen)
    pad = torch.zeros(batch, text_len, dtype=torch.long)
    pad[-1, text_len // 2:] = 1
    return {"pixels": pixels(), "left": pixels(), "right": pixels(), "ids": ids, "padding_mask": pad}


def export_onnx(model: nn.Module, folder: Union[str, os.PathLike], *, opset: int = 17) -> Dict[str, Path]:
    """Write the task's graph(s) into ``folder``; returns {graph name: path}."""
    task = _task_of(model)
    model = model.eval().float()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inputs = example_inputs(model)
    paths = {}
    for name, method, names in _GRAPHS[task]:
        axes = {n: ({0: "batch", 1: "text"} if n in ("ids", "padding_mask") else {0: "batch"}) for n in names}
        axes["output"] = {0: "batch"}
        path = folder / f"{name}.onnx"
        with torch.no_grad():
            torch.onnx.export(_Call(model, method), tuple(inputs[n] for n in names), str(path), input_names=list(names),
                              output_names=["output"], dynamic_axes=axes, opset_version=opset, dynamo=False)
        paths[name] = path
    return paths


def check_onnx(model: nn.Module, paths: Dict[str, Path], *, batch: int = 3, text_len: int = 11
               ) -> Dict[str, float]:
    """Max absolute difference between onnxruntime and PyTorch per graph, on inputs of another batch size
    and text length than the export's (so the dynamic axes are exercised)."""
    import onnxruntime as ort

    task = _task_of(model)
    inputs = example_inputs(model, batch=batch, text_len=text_len, seed=1)
    diffs = {}
    for name, method, names in _GRAPHS[task]:
        session = ort.InferenceSession(str(paths[name]), providers=["CPUExecutionProvider"])
        got = session.run(None, {n: inputs[n].numpy() for n in names})[0]
        with torch.no_grad():
            want = getattr(model, method)(*(inputs[n] for n in names)).float().numpy()
        if got.shape != want.shape:
            raise AssertionError(f"{name}: onnxruntime gave shape {got.shape}, PyTorch {want.shape}")
        diffs[name] = float(abs(got - want).max())
    return diffs


def export_cli(argv: Optional[Sequence[str]] = None) -> int:
    """``beit3-plugins export-onnx MODEL FOLDER``: export, check with onnxruntime, print the differences."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="beit3-plugins export-onnx", description=__doc__.splitlines()[0])
    p.add_argument("model", help="trainer checkpoint, model folder, hf-hub:org/name or zoo name")
    p.add_argument("folder", help="output folder for the .onnx graphs (and config.json)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    args = p.parse_args(argv)
    from beit3_plugins.zoo import CONFIG_NAME

    from .factory import create_model_and_transforms
    from .hub import model_config_of

    model = create_model_and_transforms(args.model)[0]
    start = time.perf_counter()
    paths = export_onnx(model, args.folder, opset=args.opset)
    model_config_of(model).write(Path(args.folder) / CONFIG_NAME)  # preprocessing and labels for the runtime
    report = {"graphs": {k: str(v) for k, v in paths.items()}, "seconds": round(time.perf_counter() - start, 1)}
    if not args.no_check:
        report["max_abs_diff"] = check_onnx(model, paths)
    print(json.dumps(report))
    return 0
