"""Pretraining data benchmark: loader cost per sample and memory as the corpus grows, loader throughput
against a ``beit3_base`` 224 px train step, start-up time against the number of shard names.

    python -m bench.pretrain_data [--quick] [--out bench/pretrain_data.md]

Corpus sizes 1e4..1e8 records are *synthetic manifests*: the shard list names one real WebDataset tar
(written here with ``make_shards.write_pair_shards``) many times, so the index arithmetic, the epoch
order and the shard switching are those of an N-record corpus while the disk holds one shard. Each
measurement runs in a fresh process (RSS is that process's, i.e. one rank's).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

PER_SHARD = 500
REPEATS = 3


def _write_corpus(root: Path) -> Dict[str, str]:
    """One real pair shard (PER_SHARD 224 px JPEGs with captions), a text shard and an spm model."""
    import numpy as np
    from PIL import Image

    from beit3_plugins.pretraining.make_shards import write_pair_shards, write_text_shards
    from beit3_plugins.tokenizer import train_sentencepiece

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pairs, words = [], ["red", "green", "blue", "circle", "square", "small", "large", "a", "the", "on", "left"]
    for i in range(PER_SHARD):
        path = images / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (256, 320, 3), dtype=np.uint8)).save(path, quality=85)
        pairs.append((str(path), " ".join(rng.choice(words, 10))))
    shard = write_pair_shards(pairs, root, PER_SHARD)[0]
    text = write_text_shards([c for _, c in pairs] * 2, root, 2 * PER_SHARD)[0]
    spm = train_sentencepiece(text, root / "spm", 64)
    return {"pair": shard, "text": text, "spm": str(spm)}


def _dataset(corpus: Dict[str, str], records: int, image_size: int = 224):
    """A mixed dataset over ``records`` pairs + texts (synthetic manifest) and half as many images."""
    from beit3_plugins.data.readers import SkipCounter
    from beit3_plugins.pretraining.data import (CropFlipAugment, ShardedImageSource, ShardedPairSource,
                                                ShardedTextSource)
    from beit3_plugins.pretraining.fairseq_plugin.datasets import MixedModalityDataset
    from beit3_plugins.pretraining.masking import BlockMaskingConfig
    from beit3_plugins.pretraining.shards import ShardSet
    from beit3_plugins.tokenizer import Beit3Tokenizer

    skips = SkipCounter()
    tok = Beit3Tokenizer(corpus["spm"])
    grid = (image_size // 16, image_size // 16)
    transform = CropFlipAugment(image_size)
    pair_names = [corpus["pair"]] * max(1, records // PER_SHARD)
    text_names = [corpus["text"]] * max(1, records // (2 * PER_SHARD))
    sources = {
        "pair": (ShardedPairSource(ShardSet(pair_names, "tar", skips, PER_SHARD), tok, 64, 64000, transform, grid,
                                   image_masking=BlockMaskingConfig()), 1),
        "image": (ShardedImageSource(ShardSet(pair_names[: max(1, len(pair_names) // 2)], "tar", skips, PER_SHARD),
                                     transform, grid), 1),
        "text": (ShardedTextSource(ShardSet(text_names, "text", skips, 2 * PER_SHARD), tok, 64, 64000), 1),
    }
    return MixedModalityDataset(sources, seed=1, skips=skips)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child_per_sample(corpus: Dict[str, str], records: int, items: int) -> Dict[str, float]:
    import numpy as np

    start = time.perf_counter()
    ds = _dataset(corpus, records)
    startup = time.perf_counter() - start
    rng = np.random.default_rng(records)
    # Each source's epoch order moves to a new block (= a new shard, whose index is scanned once) every
    # PER_SHARD units (text: 2 * PER_SHARD). A window that starts on a 2 * PER_SHARD boundary therefore pays
    # exactly one scan per source at every corpus size, as a long run does per block - provided the window's
    # shards are not the ones already cached (start-up scans shard 0; the warm-up runs on a twin dataset).
    # An unaligned short window would pay 0, 1 or 2 scans by chance of where it starts.
    _dataset(corpus, records)[1]                      # warm-up (imports, first decode) outside the window
    while True:
        first = 2 * PER_SHARD * int(rng.integers(1, len(ds) // (2 * PER_SHARD) - 1))
        orders = {kind: ds.orders[kind] for kind in ds.sources}
        shards = [orders[kind].block_at(first % orders[kind].n // orders[kind].block) * orders[kind].block
                  // src.shards.samples_per_shard for kind, (src, _) in ds.sources.items()]
        if 0 not in shards:
            break
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(first, first + items):
        ds[i]
    per_unit_cpu = (time.process_time() - cpu) / items    # CPU time: robust to other jobs on a shared machine
    per_unit = (time.perf_counter() - wall) / items
    return {"records": records, "startup_s": startup, "per_unit_ms": 1000 * per_unit_cpu,
            "per_unit_wall_ms": 1000 * per_unit, "rss_mb": _rss_mb()}


def child_throughput(corpus: Dict[str, str], units: int, batch: int) -> Dict[str, float]:
    import torch

    ds = _dataset(corpus, 10**6)
    loader = torch.utils.data.DataLoader(list(range(units)), batch_size=batch, num_workers=2, collate_fn=lambda ix: ds.collater([ds[i] for i in ix]),
                                         prefetch_factor=2, persistent_workers=False)
    it = iter(loader)
    next(it)                                         # worker start-up excluded
    t = time.perf_counter()
    n = 0
    for b in it:
        n += 1
    elapsed = time.perf_counter() - t
    return {"units_per_s": n * batch / elapsed, "workers": 2}


def child_train_step(batch: int) -> Dict[str, float]:
    """Units (1 image + 1 text + 1 pair, the paper's mix) per second of a beit3_base 224 px forward+backward."""
    import torch

    from beit3_plugins.backbones import build_backbone

    torch.manual_seed(0)
    model = build_backbone("beit3_base")
    images, ids = torch.randn(batch, 3, 224, 224), torch.randint(4, 1000, (batch, 64))

    def step():
        loss = model.forward_vision(images).hidden.float().mean() + model.forward_text(ids).hidden.float().mean()
        loss = loss + model.forward_fused(images, ids).text_tokens.float().mean()
        loss.backward()

    step()
    t = time.perf_counter()
    step()
    return {"units_per_s": batch / (time.perf_counter() - t), "batch": batch}


def child_startup(root: Path, corpus: Dict[str, str], shards: int) -> Dict[str, float]:
    """Brace expansion + missing-shard check + first-shard scan + epoch order for ``shards`` names."""
    from beit3_plugins.data.readers import SkipCounter
    from beit3_plugins.pretraining.shards import BlockOrder, ShardSet, expand_shards

    links = Path(root) / f"links{shards}"
    if not links.exists():
        links.mkdir()
        for i in range(shards):
            os.symlink(corpus["pair"], links / f"pairs-{i:06d}.tar")
    t = time.perf_counter()
    names = expand_shards(f"pairs-{{000000..{shards - 1:06d}}}.tar", str(links))
    shard_set = ShardSet(names, "tar", SkipCounter())
    BlockOrder(len(shard_set), shard_set.samples_per_shard, 1, 0)
    return {"shards": shards, "startup_s": time.perf_counter() - t}


def _child(what: str, *args) -> Dict[str, float]:
    threads = "1" if what == "child_per_sample" else os.environ.get("OMP_NUM_THREADS", "2")
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONWARNINGS": "ignore"}
    code = (f"import json, sys; from pathlib import Path; from bench.pretrain_data import *; "
            f"print('RESULT', json.dumps({what}(*json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two corpus sizes, small runs (smoke test)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("pretrain_data.md")))
    args = parser.parse_args(argv)
    sizes = [10**4, 10**6] if args.quick else [10**4, 10**5, 10**6, 10**7, 10**8]
    shard_counts = [10**2, 10**3] if args.quick else [10**2, 10**3, 10**4, 10**5]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = _write_corpus(root)
        # best of REPEATS fresh processes per size: one process's CPU time varies by about +-25% on this VM
        # (page faults, frequency), more than the effect measured
        repeats = 1 if args.quick else REPEATS
        per_sample = [min((_child("child_per_sample", corpus, n, 20 if args.quick else PER_SHARD)
                           for _ in range(repeats)), key=lambda r: r["per_unit_ms"]) for n in sizes]
        startup = [_child("child_startup", str(root), corpus, s) for s in shard_counts]
        throughput = _child("child_throughput", corpus, 16 if args.quick else 96, 8)
    step = _child("child_train_step", 2)
    times, rss = [r["per_unit_ms"] for r in per_sample], [r["rss_mb"] for r in per_sample]
    lines = ["## Pretraining data (`python -m bench.pretrain_data`)", "",
             f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; one process per row; a unit = 1 pair "
             "(224 px JPEG decode, crop, mask, tokenise) + 1 image + 1 text, the paper's mix; synthetic manifests "
             f"over one real {PER_SHARD}-sample tar.", "",
             "| records | per-unit load, CPU time | (wall) | RSS (one rank) | dataset start-up (incl. imports) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['records']:.0e} | {r['per_unit_ms']:.1f} ms | {r['per_unit_wall_ms']:.1f} ms | {r['rss_mb']:.0f} MB "
              f"| {r['startup_s']:.2f} s |" for r in per_sample]
    lines += ["", f"Per-unit time is CPU time of one single-threaded process, best of {repeats} processes (the machine "
                  "is shared; wall time is shown for reference); the window is one whole shard block per source.", f"Largest / smallest: time {max(times) / min(times):.2f}x, RSS {max(rss) / min(rss):.2f}x "
                  "(target <= 1.2x).", "",
              "| shard names | start-up (expand + check + first-shard scan + epoch order) |", "|---|---|"]
    lines += [f"| {r['shards']:.0e} | {r['startup_s']:.3f} s |" for r in startup]
    ratio = throughput["units_per_s"] / step["units_per_s"]
    lines += ["", "| loader, 2 workers | beit3_base 224 px train step (fwd+bwd, vision+text+fused) | ratio |",
              "|---|---|---|",
              f"| {throughput['units_per_s']:.1f} units/s | {step['units_per_s']:.2f} units/s (batch {step['batch']}) "
              f"| {ratio:.1f}x (target >= 2x) |", "",
              "The deterministic form of the flatness claim is `tests/pretraining/test_shards_data.py::"
              "test_shards_per_sample_cost_does_not_grow_with_corpus` (peak allocation per item, 1e4 vs 1e7 records); "
              "timings on a shared machine vary with its load (`uptime` at start: "
              f"{os.getloadavg()[0]:.1f}).", ""]
    Path(args.out).write_text("\n".join(lines))
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"per_sample": per_sample, "startup": startup, "throughput": throughput, "train_step": step}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
