"""Pipeline overhead over the raw model forward at batch 8 (target: at most 10%).

Each case times the same batch two ways, interleaved: the pipeline call on user inputs (PIL images of a
camera-like 640x480 size, question strings) - image transform, tokenisation, stacking, device transfer,
output formatting included - and the task model's own method on the already prepared tensors. Random
weights in the released shapes (no download): ``beit3_base`` at 224 px by default, ``--smoke`` uses
``beit3_tiny`` at 64 px (there the forward is so small that the overhead share is not meaningful).
``python -m bench.pipelines [--smoke] [--out FILE]`` prints a markdown table and writes it to FILE (default
``bench/pipelines.md``, which ``python -m bench.run_all`` appends to its report; ``--smoke`` writes only to
an explicit FILE, its numbers mean nothing).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np
import torch

from beit3_plugins.registry import BACKBONES
from beit3_plugins.zoo import TokenizerSpec, ZooEntry, ZooFile
from bench.common import interleaved_times, median

BATCH = 8


@dataclass
class OverheadRow:
    task: str
    backbone: str
    raw: float
    pipeline: float
    preparation: float   # the pipeline's input conversion alone (transform, tokenise, stack)

    @property
    def overhead(self) -> float:
        return self.pipeline / self.raw - 1.0

    def cells(self) -> List[str]:
        share = self.preparation / self.raw
        return [self.task, self.backbone, str(BATCH), f"{self.raw * 1000:.1f} ms", f"{self.pipeline * 1000:.1f} ms",
                f"{100 * self.overhead:+.1f}%", f"{self.preparation * 1000:.1f} ms ({100 * share:.1f}%)",
                "yes" if share <= 0.10 else "NO"]


def _tokenizer(folder: Path):
    from beit3_plugins.tokenizer import Beit3Tokenizer, train_sentencepiece

    corpus = folder / "corpus.txt"
    words = ["red", "blue", "green", "circle", "square", "triangle", "what", "colour", "is", "the", "how", "many"]
    rng = np.random.default_rng(0)
    corpus.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(400)))
    return Beit3Tokenizer(str(train_sentencepiece(corpus, folder / "spm", 64)))


def measure(smoke: bool = False, repeats: int = 5) -> List[OverheadRow]:
    from PIL import Image

    from beit3_plugins.pipelines import PIPELINES
    from beit3_plugins.pipelines.factory import build_task_model
    from beit3_plugins.transforms import build_image_transform
    from beit3_plugins.vl_tasks.base import encode_texts

    backbone_name, size = ("beit3_tiny", 64) if smoke else ("beit3_base", 224)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(BATCH)]
    questions = [f"what colour is the {w}?" for w in ("circle", "square", "triangle", "shape") * 2]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tok = _tokenizer(Path(tmp))
        for task, kind, head in (("image-embedding", "retrieval", {}), ("vqa", "vqa", {"num_answers": 3129})):
            entry = ZooEntry(f"bench_{kind}", "beit3", kind, ZooFile("file:///dev/null"), backbone=backbone_name,
                             image_size=size, normalize_output=kind != "vqa",
                             tokenizer=TokenizerSpec("sentencepiece", max_length=64), head=head)
            torch.manual_seed(0)
            model = build_task_model(entry, BACKBONES.build(backbone_name, **entry.backbone_overrides())).eval()
            model.zoo_entry = entry
            transform = build_image_transform("vl", train=False, image_size=size)
            extra = {"answers": [f"a{i}" for i in range(3129)]} if task == "vqa" else {}
            pipe = PIPELINES[task](model, transform, tok, device=torch.device("cpu"), dtype=torch.float32,
                                   batch_size=BATCH, **extra)
            pixels = torch.stack([transform(im) for im in images])
            ids, pad = encode_texts(tok, questions, 64)
            if task == "vqa":
                def raw():
                    with torch.inference_mode():
                        model.logits(pixels, ids, pad)

                def piped():
                    pipe(images, questions)

                def prepare():
                    pipe.images(images), pipe.texts(questions)
            else:
                def raw():
                    with torch.inference_mode():
                        model.embed_images(pixels)

                def piped():
                    pipe(images)

                def prepare():
                    pipe.images(images)
            times = interleaved_times({"raw": raw, "pipeline": piped, "prepare": prepare}, repeats)
            rows.append(OverheadRow(task, backbone_name, median(times["raw"]), median(times["pipeline"]),
                                    median(times["prepare"])))
    return rows


def table(rows: List[OverheadRow]) -> str:
    head = ["pipeline", "backbone", "batch", "raw model forward", "pipeline call", "end-to-end overhead",
            "input preparation alone (share of forward)", "<= 10%"]
    lines = ["Pipeline on 640x480 PIL images (+ question strings) vs the task model's method on prepared tensors; "
             "medians, interleaved; random weights, fp32, CPU. The end-to-end difference of two multi-second "
             "calls is at the mercy of machine load; the preparation column times the pipeline's extra work "
             "directly, and the target is judged on it.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r.cells()) + " |" for r in rows]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="also write the table to this markdown file (default: bench/pipelines.md, "
                                      "not with --smoke)")
    args = parser.parse_args(argv)
    if args.out is None and not args.smoke:
        args.out = str(Path(__file__).with_name("pipelines.md"))
    text = table(measure(args.smoke, args.repeats))
    print(text)
    if args.out:
        Path(args.out).write_text("## Inference pipeline overhead (`python -m bench.pipelines`)\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
