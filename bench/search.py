"""Search benchmarks: ``embed`` throughput against the bare model forward, and a load test of ``serve``.

``python -m bench.search [--backbone beit3_base] [--images 96] [--requests 96] [--seconds 60] [--out FILE]``

1. **embed vs bare forward**: ``--images`` camera-like 640x480 JPEGs are embedded by ``run_embed`` (2 loader
   workers decoding + transforming, batch 16, the model in the main process); the bare forward then runs
   ``embed_images`` over the same batches already decoded in memory. busy = bare forward time / embed wall
   time (target >= 90%: the loader keeps the model fed).
2. **load test**: ``beit3-plugins serve`` in a child process on 127.0.0.1 over those images, random weights in
   the released shapes of ``--backbone``; text queries (``POST /api/search/text``) from 1, 8 and 32
   concurrent client threads, at most ``--requests`` requests or ``--seconds`` seconds per level, with dynamic
   batching (5 ms window, up to 32) and without (``--max-batch 1``). Reports throughput and p50 / p95 latency.

Writes the markdown table to ``bench/search.md`` (or ``--out``) and into docs/benchmarks.md between the
``search:start`` / ``search:end`` markers. Random weights: throughput does not depend on what the model knows.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

if __package__ in (None, ""):  # `python bench/search.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
LIKE = "beit3_base_itc_patch16_224"


def _camera_images(folder: Path, n: int) -> None:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = np.linspace(0, 255, 640, dtype=np.float32)[None, :, None] * rng.uniform(0.3, 1.0, (1, 1, 3))
        pixels = np.clip(base + rng.normal(0, 12, (480, 640, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.integers(0, 560), rng.integers(0, 400)
            draw.ellipse([x, y, x + rng.integers(20, 80), y + rng.integers(20, 80)],
                         fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        image.save(folder / f"img_{i:05d}.jpg", quality=90)


def _model_file(folder: Path, backbone: str, size: int):
    """A random-weight retrieval checkpoint of ``backbone`` (our task-checkpoint layout) and a tokenizer."""
    from beit3_plugins.pipelines.factory import build_task_model
    from beit3_plugins.registry import BACKBONES
    from beit3_plugins.search import ModelSpec
    from beit3_plugins.tokenizer import train_sentencepiece
    from beit3_plugins.zoo import get_pretrained

    corpus = folder / "corpus.txt"
    words = ["red", "blue", "green", "circle", "square", "triangle", "a", "two", "small", "large", "left", "of"]
    rng = np.random.default_rng(0)
    corpus.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(400)))
    spm = train_sentencepiece(corpus, folder / "spm", 64)
    entry = get_pretrained(LIKE)
    torch.manual_seed(0)
    model = build_task_model(entry, BACKBONES.build(backbone, img_size=size, normalize_output=True))
    path = folder / "retrieval.pt"
    torch.save({"model": model.state_dict()}, path)
    return ModelSpec(str(path), like=LIKE, backbone=backbone, image_size=size, tokenizer=str(spm))


def embed_vs_forward(spec, images: Path, out: Path, batch: int = 16, workers: int = 2) -> Dict[str, float]:
    from beit3_plugins.search import EmbedConfig, run_embed
    from beit3_plugins.search.embed import _batch_plan, _collate, _UnitImages
    from beit3_plugins.search.model import load_embedder
    from beit3_plugins.search.sources import plan_image_units

    stats = run_embed(EmbedConfig(out=str(out), model=spec, images=[str(images)], batch_size=batch, workers=workers,
                                  device="cpu", progress=False))
    pipe = load_embedder(spec, device="cpu")
    units = plan_image_units([str(images)], 10000)
    data = _UnitImages(units, pipe.transform)
    batches = [_collate([data[i] for i in idx])["pixels"] for idx in _batch_plan(units, batch)]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for pixels in batches:
            pipe.model.embed_images(pixels)
    bare = time.perf_counter() - t0
    n = sum(len(b) for b in batches)
    return {"images": n, "batch": batch, "workers": workers, "embed_seconds": stats["seconds"],
            "embed_images_per_s": n / stats["seconds"], "bare_seconds": bare, "bare_images_per_s": n / bare,
            "busy": bare / stats["seconds"], "model_seconds_inside_embed": stats["model_seconds"]}


def _start_server(folder: Path, port: int, max_batch: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "beit3_plugins.search.serve", "--images", str(folder), "--port", str(port),
           "--max-batch", str(max_batch), "--batch-window-ms", "5", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import requests

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited: {proc.stderr.read()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/api/info", timeout=2).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("serve did not come up in 300 s")


def load_level(url: str, clients: int, requests_total: int, seconds: float) -> Dict[str, float]:
    """``clients`` threads sending text queries until ``requests_total`` are done or ``seconds`` have passed."""
    import requests

    queries = [f"a {c} {s} left of a {c2} {s2}" for c in ("red", "blue", "green") for s in ("circle", "square")
               for c2 in ("green", "red") for s2 in ("triangle", "circle")]
    latencies: List[float] = []
    errors = [0]
    lock = threading.Lock()
    issued = [0]
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        session = requests.Session()
        while True:
            with lock:
                if issued[0] >= requests_total or time.monotonic() > deadline:
                    return
                issued[0] += 1
                q = queries[issued[0] % len(queries)]
            t0 = time.perf_counter()
            r = session.post(url + "/api/search/text", json={"query": q, "k": 10}, timeout=120)
            dt = time.perf_counter() - t0
            with lock:
                if r.ok:
                    latencies.append(dt)
                else:
                    errors[0] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "errors": errors[0], "seconds": wall,
            "throughput": len(latencies) / wall, "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p95_ms": float(np.percentile(lat, 95)) if len(lat) else float("nan")}


def load_test(folder: Path, requests_total: int, seconds: float, levels=(1, 8, 32)) -> List[Dict[str, float]]:
    import socket

    rows = []
    for batching, max_batch in (("on", 32), ("off", 1)):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        proc = _start_server(folder, port, max_batch)
        try:
            url = f"http://127.0.0.1:{port}"
            load_level(url, 2, 8, 30)                           # warm-up
            for clients in levels:
                rows.append({"batching": batching, **load_level(url, clients, max(requests_total, clients), seconds)})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return rows


def table(info: Dict, embed: Dict[str, float], load: List[Dict[str, float]]) -> str:
    lines = [f"Machine: {info['machine']}; model: {info['backbone']} at {info['size']} px, random weights, fp32, CPU.",
             "The machine is shared (see its load average above): the loader workers, the model and other jobs "
             "compete for its cores.", "",
             "**embed vs bare forward** (same batches). model share = time inside the model forward / embed wall "
             "time (the loader keeps the model fed when it is near 100%); bare ratio = bare forward time / embed "
             "wall time (target >= 90%; below it when decoding workers take cores from the model, or the load "
             "changed between the two passes).", "",
             "| images | batch | loader workers | embed | bare forward | model share of embed | bare ratio |",
             "|---|---|---|---|---|---|---|",
             f"| {embed['images']} | {embed['batch']} | {embed['workers']} | {embed['embed_images_per_s']:.2f} img/s "
             f"({embed['embed_seconds']:.1f} s) | {embed['bare_images_per_s']:.2f} img/s "
             f"({embed['bare_seconds']:.1f} s) "
             f"| {100 * embed['model_seconds_inside_embed'] / embed['embed_seconds']:.0f}% "
             f"| {100 * embed['busy']:.0f}% |", "",
             "**serve load test** (text queries, `POST /api/search/text`, k=10, 127.0.0.1; dynamic batching: 5 ms "
             "window, up to 32; off = `--max-batch 1`)", "",
             "| dynamic batching | clients | requests | throughput | p50 latency | p95 latency | errors |",
             "|---|---|---|---|---|---|---|"]
    for r in load:
        lines.append(f"| {r['batching']} | {r['clients']} | {r['requests']} | {r['throughput']:.1f} req/s | "
                     f"{r['p50_ms']:.0f} ms | {r['p95_ms']:.0f} ms | {r['errors']} |")
    return "\n".join(lines) + "\n"


def _update_docs(text: str) -> None:
    docs = REPO / "docs" / "benchmarks.md"
    start, end = "<!-- search:start -->", "<!-- search:end -->"
    body = docs.read_text()
    block = f"{start}\n{text}{end}"
    if start in body:
        body = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, body, flags=re.S)
    else:
        body = body.rstrip("\n") + ("\n\n## Search: embed throughput and serve load test (`python -m bench.search`)"
                                    "\n\n" + block + "\n")
    docs.write_text(body)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="beit3_base")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--requests", type=int, default=96, help="requests per concurrency level (at most)")
    parser.add_argument("--seconds", type=float, default=60.0, help="time per concurrency level (at most)")
    parser.add_argument("--out", help="markdown file (default bench/search.md; docs/benchmarks.md is updated too)")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--render", help="only re-render the table of a saved bench/search.json")
    args = parser.parse_args(argv)
    if args.render:
        record = json.loads(Path(args.render).read_text())
        text = table(record["info"], record["embed"], record["load"])
        print(text)
        if not args.no_docs:
            _update_docs(text)
        return 0
    from bench.common import machine_info

    machine = machine_info()
    info = {"machine": ", ".join(f"{k} {v}" for k, v in machine.items()), "backbone": args.backbone, "size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _camera_images(tmp / "photos", args.images)
        spec = _model_file(tmp, args.backbone, args.size)
        embed = embed_vs_forward(spec, tmp / "photos", tmp / "emb")
        print(json.dumps(embed), flush=True)
        from beit3_plugins.search import build_and_save

        build_and_save(tmp / "emb")
        load = load_test(tmp / "emb", args.requests, args.seconds)
    text = table(info, embed, load)
    print(text)
    out = Path(args.out) if args.out else Path(__file__).with_name("search.md")
    out.write_text("## Search (`python -m bench.search`)\n\n" + text)
    record = {"info": info, "embed": embed, "load": load}
    Path(str(out).replace(".md", ".json")).write_text(json.dumps(record, indent=1))
    if not args.no_docs:
        _update_docs(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
