"""The reproduction harness's cost: its overhead over the bare evaluation loop (target <= 5 %), and the peak
memory of scoring a 25k-caption retrieval split (bounded: chunked similarity, never the 5k x 25k matrix).

* overhead: one retrieval cell on a Flickr30k-format split of the data world (``--images`` images, 5 captions
  each) with ``beit3_base`` at 224 px (random weights saved as a task checkpoint), timed two ways,
  interleaved: ``reproduction.runner.run_plan`` (Hydra config, the trainer's eval-only run, prediction file,
  cell JSON) against a bare script (build the task, model and dataset, load the weights, ``task.evaluate``).
* memory: in a fresh process, the retrieval task's ``score`` (``recall_at_k_chunked`` + each query's top 10)
  on random unit embeddings of 5000 images x 25000 captions (dim 768, the COCO Karpathy test size); peak RSS
  above the process after the embeddings exist, against the 500 MB one fp32 similarity matrix would take.

``python -m bench.reproduction [--images 64] [--repeats 2] [--out bench/reproduction.md]``; ``--smoke``
(beit3_tiny, 8 images, 2000 captions) only checks that it runs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/reproduction.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

REPO = Path(__file__).resolve().parent.parent


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def child_memory(images: int, captions: int, dim: int = 768) -> dict:
    from beit3_plugins.vl_tasks.retrieval import RetrievalTask, RetrievalTaskConfig

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(images, dim, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(captions, dim, generator=g), dim=-1)
    per = captions // images
    raw = {"image": img, "text": txt, "image_ids": list(range(images)), "texts": [""] * captions,
           "text_to_image": [i // per for i in range(captions)]}
    base = _peak_rss()
    start = time.perf_counter()
    metrics, _ = RetrievalTask(RetrievalTaskConfig()).score(raw, None)
    return {"images": images, "captions": captions, "seconds": time.perf_counter() - start,
            "peak_above_embeddings": max(0, _peak_rss() - base), "full_matrix_bytes": images * captions * 4,
            "r_mean": metrics["r_mean"]}


def _world(root: Path, images: int):
    from beit3_plugins.data import WorldConfig, generate_world
    from beit3_plugins.tokenizer import train_sentencepiece

    manifest = generate_world(root, WorldConfig(formats=("text", "flickr30k"), flickr_train_images=4,
                                                flickr_val_images=2, flickr_test_images=images))
    return train_sentencepiece(manifest.path("text_corpus"), root / "spm", 128)


def overhead(images: int, repeats: int, backbone: str, size: int) -> dict:
    from beit3_plugins.backbones import build_backbone
    from beit3_plugins.registry import TASKS, TOKENIZERS
    from beit3_plugins.reproduction.runner import RunConfig, plan, run_plan
    from beit3_plugins.vl_tasks.checkpoints import load_task_checkpoint
    from beit3_plugins.zoo import TokenizerSpec, ZooEntry, ZooFile, register_pretrained

    tmp = Path(tempfile.mkdtemp(prefix="bench_reproduction_"))
    spm = _world(tmp / "data", images)
    torch.manual_seed(0)
    task = TASKS.build({"name": "retrieval", "dataset": "flickr30k", "image_size": size, "rerank_k": 0})
    weights = tmp / "retrieval.pt"
    torch.save({"model": task.build_model(build_backbone(backbone, img_size=size)).state_dict()}, weights)
    register_pretrained(ZooEntry(name="bench_retrieval", family="beit3", task="retrieval",
                                 weights=ZooFile("file://" + str(weights)), backbone=backbone, image_size=size,
                                 tokenizer=TokenizerSpec("sentencepiece", ZooFile("file://" + str(spm)), 64)),
                        force=True)

    def bare() -> dict:
        t = TASKS.build({"name": "retrieval", "dataset": "flickr30k", "image_size": size, "rerank_k": 0})
        t.setup(tmp / "data", TOKENIZERS.build("sentencepiece", model_path=str(spm), max_length=64))
        model = t.build_model(build_backbone(backbone, img_size=size))
        load_task_checkpoint(model, str(weights))
        model.eval()
        with torch.no_grad():
            return t.evaluate(model, t.dataset("test", train=False), torch.device("cpu"))[0]

    def harness(i: int) -> dict:
        cfg = RunConfig(data_root=tmp / "data", out=tmp / f"out{i}", device="cpu", progress=False)
        results, errors = run_plan(plan("flickr30k_retrieval_test", ["bench_retrieval"]), cfg)
        if errors:
            raise RuntimeError(errors)
        return next(iter(results.values()))["metrics"]

    times = {"bare": [], "harness": []}
    for i in range(repeats):
        for name in ("bare", "harness"):
            start = time.perf_counter()
            metrics = bare() if name == "bare" else harness(i)
            times[name].append(time.perf_counter() - start)
            if name == "harness" and any(abs(metrics[k] - v) > 1e-9 for k, v in ref.items()):
                raise RuntimeError(f"harness and bare loop disagree: {metrics} vs {ref}")
            if name == "bare":
                ref = {k: v for k, v in metrics.items()}
    bare_s, harness_s = min(times["bare"]), min(times["harness"])
    return {"images": images, "captions": 5 * images, "backbone": backbone, "image_size": size,
            "bare_s": bare_s, "harness_s": harness_s, "overhead": harness_s / bare_s - 1, "times": times}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reproduction")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--child-memory", nargs=2, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_memory:
        print(json.dumps(child_memory(*args.child_memory)))
        return 0
    torch.set_num_threads(max(1, torch.get_num_threads()))
    backbone, size, images, captions = ("beit3_tiny", 64, 8, 2000) if args.smoke else \
        ("beit3_base", 224, args.images, 25000)
    over = overhead(images, 1 if args.smoke else args.repeats, backbone, size)
    child = subprocess.run([sys.executable, "-m", "bench.reproduction", "--child-memory", str(captions // 5),
                            str(captions)], cwd=REPO, capture_output=True, text=True, check=True)
    mem = json.loads(child.stdout.strip().splitlines()[-1])
    lines = ["## Reproduction harness (`python -m bench.reproduction`)", "",
             f"Overhead of one cell (`run_plan`: config, trainer eval-only run, prediction file, cell JSON) over a "
             f"bare evaluation script (build, load, `task.evaluate`), Flickr30k-format split of {over['images']} "
             f"images / {over['captions']} captions, {over['backbone']} at {over['image_size']} px, CPU, best of "
             f"{len(over['times']['bare'])}:", "",
             "| bare loop | harness | overhead |", "|---|---|---|",
             f"| {over['bare_s']:.2f} s | {over['harness_s']:.2f} s | {100 * over['overhead']:+.1f} % |", "",
             f"Scoring {mem['images']} images x {mem['captions']} captions (dim 768, `RetrievalTask.score`: chunked "
             f"recall + top-10 rankings): {mem['seconds']:.1f} s, peak RSS above the embeddings "
             f"{mem['peak_above_embeddings'] / 2**20:.0f} MiB (one fp32 similarity matrix: "
             f"{mem['full_matrix_bytes'] / 2**20:.0f} MiB).", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
