"""Reading an ``embed`` output folder back: embeddings in unit order, the metadata table, the skips."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from .embed import MANIFEST, unit_name
from .model import ModelSpec

__all__ = ["EmbeddingSet", "IncompleteEmbeddingsError"]


class IncompleteEmbeddingsError(RuntimeError):
    """Some units of the folder are not written yet (the embed run is unfinished)."""


@dataclasses.dataclass
class EmbeddingSet:
    folder: Path
    manifest: Dict[str, Any]
    embeddings: np.ndarray            # (N, D) float32, L2-normalised
    ids: np.ndarray                   # (N,) int64
    sources: List[str]
    captions: List[str]
    widths: np.ndarray
    heights: np.ndarray
    skips: List[Dict[str, Any]]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def model(self) -> ModelSpec:
        return ModelSpec(**self.manifest["model"])

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, i: int) -> Dict[str, Any]:
        return {"id": int(self.ids[i]), "source": self.sources[i], "caption": self.captions[i],
                "width": int(self.widths[i]), "height": int(self.heights[i])}

    @classmethod
    def load(cls, folder) -> "EmbeddingSet":
        import pyarrow.parquet as pq

        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise FileNotFoundError(f"{folder}: no {MANIFEST}; not an embed output folder")
        manifest = json.loads((folder / MANIFEST).read_text())
        missing = [u["index"] for u in manifest["units"] if not (folder / f"{unit_name(u['index'])}.npy").is_file()]
        if missing:
            raise IncompleteEmbeddingsError(f"{folder}: {len(missing)} of {len(manifest['units'])} units are not "
                                            f"written (first: {unit_name(missing[0])}); rerun the same embed command")
        arrays, ids, sources, captions, widths, heights, skips = [], [], [], [], [], [], []
        for u in manifest["units"]:
            base = folder / unit_name(u["index"])
            arrays.append(np.load(str(base) + ".npy").astype(np.float32))
            table = pq.read_table(str(base) + ".parquet").to_pydict()
            ids += table["id"]
            sources += table["source"]
            captions += table["caption"]
            widths += table["width"]
            heights += table["height"]
            skips += [json.loads(line) for line in Path(str(base) + ".skips.jsonl").read_text().splitlines()]
        dim = int(manifest["dim"])
        emb = np.concatenate(arrays) if arrays else np.zeros((0, dim), np.float32)
        if len(emb) != len(ids):
            raise ValueError(f"{folder}: {len(emb)} embeddings but {len(ids)} metadata rows")
        return cls(folder, manifest, np.ascontiguousarray(emb), np.asarray(ids, np.int64), sources, captions,
                   np.asarray(widths, np.int32), np.asarray(heights, np.int32), skips)
