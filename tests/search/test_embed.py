"""`beit3-plugins embed` over the data world's image folder and tar shards: one run, a run killed after its
first unit and resumed, and a 2-process torchrun give the same files; bad images are counted skips with
reasons; texts from a text file, a CSV and a parquet column embed alike."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from beit3_plugins.search import EmbedConfig, EmbeddingSet, run_embed

def _corpus(data_world, world_shards, tmp_path):
    """A copy of coco/train2014 plus two bad files and an escaping symlink, and the pair shards."""
    root, _ = data_world
    folder = tmp_path / "photos"
    shutil.copytree(root / "coco" / "train2014", folder / "train")
    (folder / "bad" ).mkdir()
    (folder / "bad" / "not_an_image.jpg").write_bytes(b"this is text, not a JPEG")
    good = sorted((folder / "train").iterdir())[0]
    (folder / "bad" / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    outside = tmp_path / "outside.jpg"
    shutil.copy(good, outside)
    os.symlink(outside, folder / "bad" / "escape.jpg")
    return [str(folder), world_shards["pair"]]


def _embed(out, inputs, spec, *extra, torchrun=False):
    """``python -m beit3_plugins.search.embed`` (what ``beit3-plugins embed`` runs), or the same under torchrun."""
    args = ["--out", str(out), "--images", *inputs, "--model", spec.model, "--like", spec.like,
            "--backbone", spec.backbone, "--image-size", str(spec.image_size), "--tokenizer", spec.tokenizer,
            "--batch-size", "8", "--unit-size", "16", "--workers", "2", "--save-dtype", "float32", "--no-progress",
            *extra]
    module = ["-m", "beit3_plugins.search.embed"]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29781",
               *module, *args]
    else:
        cmd = [sys.executable, *module, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())
            if p.name.startswith("unit-") or p.name in ("summary.json", "manifest.json")}


@pytest.mark.slow
@pytest.mark.subprocess
def test_resumed_and_two_process_runs_equal_one_run(data_world, world_shards, retrieval_spec, tmp_path):
    inputs = _corpus(data_world, world_shards, tmp_path)
    one = _embed(tmp_path / "one", inputs, retrieval_spec)
    assert one.returncode == 0, one.stderr[-3000:]
    ref = _files(tmp_path / "one")
    data = EmbeddingSet.load(tmp_path / "one")
    manifest = data.manifest
    n_units = len(manifest["units"])
    assert n_units >= 5 and any(u["kind"] == "shard" for u in manifest["units"])
    assert np.allclose(np.linalg.norm(data.embeddings, axis=1), 1.0, atol=1e-5)
    # the bad files are skips with their reasons; every other image is a row, once
    reasons = {Path(s["source"]).name: s["reason"] for s in data.skips}
    assert reasons == {"not_an_image.jpg": "corrupt_image", "truncated.jpg": "corrupt_image",
                       "escape.jpg": "outside_root"}, data.skips
    planned = sum(u["count"] for u in manifest["units"])
    assert len(data) + len(data.skips) == planned and len(set(data.ids.tolist())) == len(data)
    assert json.loads(ref["summary.json"])["skip_reasons"] == {"corrupt_image": 2, "outside_root": 1}
    shard_rows = [i for i, s in enumerate(data.sources) if "#" in s]
    assert shard_rows and all(data.captions[i] for i in shard_rows)       # captions from KEY.txt
    assert all(data.widths[i] > 0 and data.heights[i] > 0 for i in range(len(data)))

    killed = _embed(tmp_path / "resumed", inputs, retrieval_spec, "--debug-kill-after-units", "2")
    assert killed.returncode != 0
    written = sorted(p.name for p in (tmp_path / "resumed").glob("unit-*.npy"))
    assert len(written) == 2 < n_units
    resumed = _embed(tmp_path / "resumed", inputs, retrieval_spec)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["units_done_before"] == 2
    assert _files(tmp_path / "resumed") == ref

    two = _embed(tmp_path / "two", inputs, retrieval_spec, torchrun=True)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _files(tmp_path / "two") == ref


@pytest.mark.slow
def test_a_different_run_into_the_same_folder_is_refused(data_world, retrieval_spec, tmp_path):
    root, _ = data_world
    texts = tmp_path / "a.txt"
    texts.write_text("a red circle\na blue square\n")
    run_embed(EmbedConfig(out=str(tmp_path / "out"), model=retrieval_spec, texts=[str(texts)], progress=False))
    texts2 = tmp_path / "b.txt"
    texts2.write_text("a green triangle\n")
    with pytest.raises(ValueError, match="another run"):
        run_embed(EmbedConfig(out=str(tmp_path / "out"), model=retrieval_spec, texts=[str(texts2)], progress=False))


@pytest.mark.slow
def test_texts_from_lines_csv_and_parquet_embed_alike(retrieval_spec, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = ["a red circle", "two blue squares", "a green triangle above a circle"]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n\n")
    (tmp_path / "t.csv").write_text("id,caption\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)))
    pq.write_table(pa.table({"caption": texts, "n": [1, 2, 3]}), tmp_path / "t.parquet")
    got = {}
    for name in ("t.txt", "t.csv", "t.parquet"):
        out = tmp_path / name.replace(".", "_")
        run_embed(EmbedConfig(out=str(out), model=retrieval_spec, texts=[str(tmp_path / name)], text_column="caption",
                              save_dtype="float32", unit_size=2, progress=False))
        got[name] = EmbeddingSet.load(out)
        assert got[name].captions == texts and got[name].ids.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(got["t.txt"].embeddings, got["t.csv"].embeddings)
    np.testing.assert_array_equal(got["t.txt"].embeddings, got["t.parquet"].embeddings)
    with pytest.raises(ValueError, match="no column 'text'"):
        run_embed(EmbedConfig(out=str(tmp_path / "bad"), model=retrieval_spec, texts=[str(tmp_path / "t.csv")],
                              text_column="text", progress=False))
