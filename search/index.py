"""``beit3-plugins index`` / ``query``: a FAISS index over an ``embed`` folder, and nearest-neighbour queries.

The rule (not autofaiss: its latest release, 2.18, requires numpy<2 while this stack runs numpy 2, so it does
not install cleanly here; docs/search.md):

- up to ``exact_threshold`` vectors (default 200k): ``IndexFlatIP``, exact inner product (= cosine: the
  embeddings are L2-normalised). Brute force over 200k x 768 fp32 is ~600 MB and a few ms per query batch.
- above it, inverted lists with ``nlist = 4 * sqrt(n)`` centroids (at least 39 training points per centroid,
  FAISS's own minimum), trained on a sample of at most ``256 * nlist`` vectors;

  * ``IVF{nlist},Flat`` when the raw vectors fit the memory budget (``n * d * 4`` bytes + ids),
  * else ``IVF{nlist},PQ{m}`` (8 bits per code) with the largest ``m`` dividing ``d`` whose codes
    (``n * (m + 8)`` bytes) fit the budget;

  then ``nprobe`` is doubled from 1 until recall@10 against exact search on a held-out sample reaches
  ``target_recall`` (default 0.95) or every list is probed.
- every build reports recall@10 on the held-out queries (1.0 for the exact index) and the index's size.

faiss-gpu, where installed with a GPU, builds and searches on the GPU; the stored index is the CPU one.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .store import EmbeddingSet

__all__ = ["IndexConfig", "build_index", "SearchIndex", "Searcher", "index_main", "query_main", "INDEX_FILE",
           "recall_at_k"]

INDEX_FILE = "index.faiss"
REPORT_FILE = "index.json"


@dataclasses.dataclass
class IndexConfig:
    exact_threshold: int = 200_000
    memory_budget: int = 4 << 30          # bytes the approximate index may hold
    target_recall: float = 0.95
    sample: int = 1000                    # held-out queries for recall@10
    seed: int = 0


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - the [search] extra installs it
        raise ImportError("beit3-plugins index needs faiss: pip install 'beit3-plugins[search]' (faiss-cpu)") from exc
    return faiss


def _gpu(index):
    faiss = _faiss()
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_all_gpus(index)
    return index


def recall_at_k(approx: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Mean share of the exact top-k ids that the approximate top-k finds."""
    hits = [len(set(a[:k]) & set(e[:k]) - {-1}) / max(1, min(k, (e[:k] >= 0).sum())) for a, e in zip(approx, exact)]
    return float(np.mean(hits)) if hits else 1.0


def _factory(n: int, d: int, cfg: IndexConfig) -> str:
    nlist = int(max(1, min(4 * math.sqrt(n), (n - min(cfg.sample, n // 2)) // 39)))
    if n * d * 4 + n * 8 <= cfg.memory_budget:
        return f"IVF{nlist},Flat"
    for m in sorted((m for m in range(1, d + 1) if d % m == 0), reverse=True):
        if n * (m + 8) <= cfg.memory_budget:
            return f"IVF{nlist},PQ{m}"
    raise MemoryError(f"{n} vectors do not fit {cfg.memory_budget} bytes even as 1-byte PQ codes")


def build_index(vectors: np.ndarray, cfg: IndexConfig = IndexConfig()) -> "tuple[Any, Dict[str, Any]]":
    """(CPU FAISS index over ``vectors`` (ids = row numbers), report with kind, recall@10, bytes, seconds)."""
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    exact = faiss.IndexFlatIP(d)
    exact.add(vectors)
    queries = vectors[rng.choice(n, size=min(cfg.sample, n), replace=False)] if n else vectors
    report: Dict[str, Any] = {"vectors": n, "dim": d, "exact_threshold": cfg.exact_threshold,
                              "memory_budget": cfg.memory_budget, "held_out_queries": len(queries)}
    if n <= cfg.exact_threshold:
        index, report["factory"], report["recall_at_10"] = exact, "Flat (IndexFlatIP)", 1.0
    else:
        factory = _factory(n, d, cfg)
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        nlist = faiss.extract_index_ivf(index).nlist
        if hasattr(index, "do_polysemous_training"):   # minutes of annealing for Hamming filtering we do not use
            index.do_polysemous_training = False
        held_out = set(rng.choice(n, size=min(cfg.sample, n // 2), replace=False).tolist())
        train_rows = np.array([i for i in rng.permutation(n)[:256 * nlist + len(held_out)] if i not in held_out])
        queries = vectors[sorted(held_out)]
        trainer = _gpu(index)
        trainer.train(vectors[train_rows])
        index = faiss.index_gpu_to_cpu(trainer) if trainer is not index else index
        index.add(vectors)
        _, truth = _gpu(exact).search(queries, 10)
        ivf = faiss.extract_index_ivf(index)
        nprobe, recall = 1, 0.0
        while True:
            ivf.nprobe = nprobe
            _, found = index.search(queries, 10)
            recall = recall_at_k(found, truth)
            if recall >= cfg.target_recall or nprobe >= nlist:
                break
            nprobe = min(nlist, nprobe * 2)
        report.update(factory=factory, nlist=nlist, nprobe=nprobe, recall_at_10=recall,
                      target_recall=cfg.target_recall)
    report["index_bytes"] = int(faiss.serialize_index(index).nbytes)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return index, report


class SearchIndex:
    """An index with the metadata of its rows: ``search(vectors, k)`` -> rows with scores."""

    def __init__(self, folder, index=None, report: Optional[Dict[str, Any]] = None) -> None:
        faiss = _faiss()
        self.folder = Path(folder)
        self.data = EmbeddingSet.load(self.folder)
        if index is None:
            if not (self.folder / INDEX_FILE).is_file():
                raise FileNotFoundError(f"{self.folder}: no {INDEX_FILE}; run beit3-plugins index {self.folder}")
            index = faiss.read_index(str(self.folder / INDEX_FILE))
            report = json.loads((self.folder / REPORT_FILE).read_text())
        if index.ntotal != len(self.data):
            raise ValueError(f"{self.folder}: the index holds {index.ntotal} vectors, the embeddings {len(self.data)}; "
                             "rebuild it (beit3-plugins index)")
        self.index, self.report = _gpu(index), report or {}

    @property
    def kind(self) -> str:
        return self.data.kind

    def search(self, vectors, k: int = 10) -> List[List[Dict[str, Any]]]:
        vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(-1, self.data.embeddings.shape[1]))
        k = max(1, min(int(k), len(self.data)))
        scores, rows = self.index.search(vectors, k)
        return [[{**self.data.row(int(r)), "score": float(s)} for s, r in zip(srow, rrow) if r >= 0]
                for srow, rrow in zip(scores, rows)]


def build_and_save(folder, cfg: IndexConfig = IndexConfig()) -> Dict[str, Any]:
    from beit3_plugins.checkpoint import atomic_write

    faiss = _faiss()
    data = EmbeddingSet.load(folder)
    index, report = build_index(data.embeddings, cfg)
    report["kind"] = data.kind
    buffer = faiss.serialize_index(index)
    atomic_write(str(Path(folder) / INDEX_FILE), lambda h: h.write(buffer.tobytes()))
    atomic_write(str(Path(folder) / REPORT_FILE), lambda h: h.write(json.dumps(report, indent=1).encode("utf-8")))
    return report


class Searcher:
    """A model and the indexes over its embeddings: text -> images, image -> images, image -> texts."""

    def __init__(self, images: Optional[SearchIndex] = None, texts: Optional[SearchIndex] = None, embedder=None,
                 **model_kwargs: Any) -> None:
        from .model import load_embedder

        if images is None and texts is None:
            raise ValueError("a Searcher needs an image index, a text index or both")
        for idx, kind in ((images, "image"), (texts, "text")):
            if idx is not None and idx.kind != kind:
                raise ValueError(f"{idx.folder} holds {idx.kind} embeddings, expected {kind}")
        self.images, self.texts = images, texts
        self.embedder = embedder or load_embedder((images or texts).data.model, **model_kwargs)

    def _need(self, idx, what: str) -> SearchIndex:
        if idx is None:
            raise ValueError(f"no {what} index loaded")
        return idx

    def text_to_images(self, texts: Sequence[str], k: int = 10):
        return self._need(self.images, "image").search(self.embedder.embed_texts(list(texts)).cpu().numpy(), k)

    def image_to_images(self, images: Sequence[Any], k: int = 10):
        return self._need(self.images, "image").search(self.embedder.embed_images(list(images)).cpu().numpy(), k)

    def image_to_texts(self, images: Sequence[Any], k: int = 10):
        return self._need(self.texts, "text").search(self.embedder.embed_images(list(images)).cpu().numpy(), k)


def index_main(argv: Optional[Sequence[str]] = None) -> int:
    """Build a FAISS index over embedding shards and report its recall@10 and memory."""
    parser = argparse.ArgumentParser(prog="beit3-plugins index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="embed output folders (index.faiss + index.json written there)")
    parser.add_argument("--exact-threshold", type=int, default=IndexConfig.exact_threshold)
    parser.add_argument("--memory-budget", type=float, default=IndexConfig.memory_budget / 2 ** 30,
                        help="GiB the approximate index may hold")
    parser.add_argument("--target-recall", type=float, default=IndexConfig.target_recall)
    parser.add_argument("--sample", type=int, default=IndexConfig.sample, help="held-out queries for recall@10")
    args = parser.parse_args(argv)
    cfg = IndexConfig(args.exact_threshold, int(args.memory_budget * 2 ** 30), args.target_recall, args.sample)
    for folder in args.folders:
        print(json.dumps({"folder": folder, **build_and_save(folder, cfg)}))
    return 0


def query_main(argv: Optional[Sequence[str]] = None) -> int:
    """Query an index: text -> images, image -> images, image -> texts."""
    parser = argparse.ArgumentParser(prog="beit3-plugins query",
                                     description="nearest neighbours: text -> images, image -> images, image -> texts")
    parser.add_argument("--image-index", help="embed folder of images (indexed)")
    parser.add_argument("--text-index", help="embed folder of texts (indexed)")
    parser.add_argument("--text", nargs="+", default=[], help="query texts (-> images)")
    parser.add_argument("--image", nargs="+", default=[], help="query images (-> images and/or texts)")
    parser.add_argument("--to", choices=["images", "texts"], default="images", help="what --image queries search")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--device")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    if not (args.text or args.image):
        parser.error("give --text or --image queries")
    searcher = Searcher(SearchIndex(args.image_index) if args.image_index else None,
                        SearchIndex(args.text_index) if args.text_index else None, device=args.device,
                        dtype=args.dtype)
    out: Dict[str, Any] = {}
    try:
        if args.text:
            out["text_to_images"] = dict(zip(args.text, searcher.text_to_images(args.text, args.k)))
        if args.image:
            found = (searcher.image_to_images if args.to == "images" else searcher.image_to_texts)(args.image, args.k)
            out[f"image_to_{args.to}"] = dict(zip(args.image, found))
    except ValueError as exc:
        parser.error(str(exc))
    print(json.dumps(out))
    return 0
