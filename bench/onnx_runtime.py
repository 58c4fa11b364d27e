"""onnxruntime vs PyTorch on CPU for the exported graphs (``beit3-plugins export-onnx``).

Each case exports the task model (random weights in the released shapes, no download: ``beit3_base`` at
224 px; ``--smoke`` uses ``beit3_tiny`` at 64 px) with :func:`beit3_plugins.pipelines.onnx_export.export_onnx`
and times, interleaved, the same prepared batch through the PyTorch method the pipeline calls (fp32,
``torch.inference_mode``) and through an onnxruntime ``InferenceSession`` (CPU provider, default graph
optimisations). Preprocessing (image transform, tokeniser) is the same Python code on both sides and is left
out. ``python -m bench.onnx_runtime [--smoke] [--out FILE]`` prints a markdown table (default FILE:
``bench/onnx_runtime.md``; not written with ``--smoke``, whose numbers mean nothing).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import List

if __package__ in (None, ""):  # `python bench/onnx_runtime.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from beit3_plugins.registry import BACKBONES
from beit3_plugins.zoo import ZooEntry, ZooFile
from bench.common import interleaved_times, machine_info, median

CASES = (("retrieval", "image_tower", {}), ("retrieval", "text_tower", {}), ("vqa", "model", {"num_answers": 3129}))


def measure(smoke: bool = False, repeats: int = 5, batches=(1, 8)) -> List[List[str]]:
    """One row per (graph, batch); each row is printed as soon as it is measured (a loaded machine is slow)."""
    import onnxruntime as ort

    from beit3_plugins.pipelines.factory import build_task_model
    from beit3_plugins.pipelines.onnx_export import _GRAPHS, example_inputs, export_onnx

    backbone, size = ("beit3_tiny", 64) if smoke else ("beit3_base", 224)
    rows, exported = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, graph, head in CASES:
            entry = ZooEntry(f"bench_{kind}", "beit3", kind, ZooFile("file:///dev/null"), backbone=backbone,
                             image_size=size, normalize_output=kind != "vqa", head=head)
            torch.manual_seed(0)
            model = build_task_model(entry, BACKBONES.build(backbone, **entry.backbone_overrides())).eval()
            model.zoo_entry = entry
            if kind not in exported:  # both towers come from one export
                exported[kind] = export_onnx(model, Path(tmp) / kind)
            session = ort.InferenceSession(str(exported[kind][graph]), providers=["CPUExecutionProvider"])
            _, method, names = next(g for g in _GRAPHS[kind] if g[0] == graph)
            for batch in batches:
                inputs = example_inputs(model, batch=batch, text_len=32)
                args = tuple(inputs[n] for n in names)
                feed = {n: inputs[n].numpy() for n in names}

                def torch_call():
                    with torch.inference_mode():
                        return getattr(model, method)(*args)

                def ort_call():
                    return session.run(None, feed)[0]

                diff = float(abs(torch_call().numpy() - ort_call()).max())
                times = interleaved_times({"torch": torch_call, "ort": ort_call}, repeats)
                t, o = median(times["torch"]), median(times["ort"])
                rows.append([f"{kind} {graph}", backbone, str(batch), f"{t * 1000:.1f} ms", f"{o * 1000:.1f} ms",
                             f"{t / o:.2f}x", f"{diff:.1e}"])
                print("| " + " | ".join(rows[-1]) + " |", flush=True)
    return rows


def table(rows: List[List[str]], size: int = 224) -> str:
    info = machine_info()
    head = ["graph", "backbone", "batch", "PyTorch (fp32)", "onnxruntime (CPU)", "speed-up", "max abs diff"]
    lines = [f"Random weights, {size} px, 32 text tokens, prepared tensors, medians of interleaved repeats; "
             f"{info['cpu']} ({info['cores']} cores, load {info['load_average']}), {info['torch_threads']} torch "
             f"threads, torch {info['torch']}, onnxruntime {__import__('onnxruntime').__version__}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", help="also write the table here (default bench/onnx_runtime.md, not with --smoke)")
    args = parser.parse_args(argv)
    if args.out is None and not args.smoke:
        args.out = str(Path(__file__).with_name("onnx_runtime.md"))
    text = table(measure(args.smoke, args.repeats, tuple(args.batches)), 64 if args.smoke else 224)
    print(text)
    if args.out:
        Path(args.out).write_text("## ONNX Runtime vs PyTorch on CPU (`python -m bench.onnx_runtime`)\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
